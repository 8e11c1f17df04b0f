//! A pre-vote for openraft 0.9, which has none (it arrives in 0.10): a
//! coordinator campaigns only when a majority of the voters, itself
//! included, has not heard a leader for a leader lease.
//!
//! Without it, a coordinator cut off from the others times out again and
//! again, raising its term each time; when it comes back, the leader's next
//! AppendEntries meets that higher term, the leader steps down and the
//! cluster elects again for nothing (openraft 0.9's leader lease protects
//! the vote path, not the AppendEntries reply). Here openraft's election
//! switch (`runtime_config().elect`) stays off until a round of
//! [`RaftRequest::PreVote`] finds a majority that would vote: a coordinator
//! that cannot reach a majority, or whose peers still hear a leader, never
//! raises its term.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::join_all;
use openraft::network::RPCOption;
use openraft::ServerState;

use super::network::{QuicNetwork, RaftReply, RaftRequest};
use super::{NodeId, TypeConfig};

/// How often a coordinator decides whether it may campaign.
const TICK: Duration = Duration::from_millis(100);
/// How long one pre-vote question may take (a peer that is cut off never answers).
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// When this coordinator last accepted entries (or a heartbeat) from a leader.
#[derive(Clone, Default)]
pub struct LeaderContact(Arc<Mutex<Option<Instant>>>);

impl LeaderContact {
    /// A leader was heard now.
    pub fn heard(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// How long ago a leader was last heard (`None`: never).
    pub fn since(&self) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|t| t.elapsed())
    }
}

/// Whether a voter would vote for a campaign now: it is not the leader and
/// has not heard one for `lease`.
pub fn would_vote(is_leader: bool, since_leader: Option<Duration>, lease: Duration) -> bool {
    !is_leader && since_leader.is_none_or(|d| d >= lease)
}

/// Whether `granted` would-votes (its own included) of `voters` make a majority.
pub fn majority(granted: usize, voters: usize) -> bool {
    granted * 2 > voters
}

/// What the gate found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Alone or leading: nothing to guard.
    Free,
    /// A leader is heard here, or no majority would vote.
    Hold,
    /// A majority has not heard a leader for the lease, in `term`.
    Won { term: u64 },
}

/// Keeps openraft's election switch on only while a campaign could win
/// (runs for the life of the coordinator), and campaigns at once when a
/// pre-vote majority says the leader is gone.
///
/// openraft's own timer waits for its leader lease plus a randomized
/// election timeout (2 s + 1-2 s with labspan's timing) after the last
/// heartbeat; the voters grant a vote once the lease alone has passed. The
/// pre-vote already proves that, so waiting for the timer added 1-2 s to
/// every failover for nothing.
pub async fn gate(
    raft: openraft::Raft<TypeConfig>,
    me: NodeId,
    network: QuicNetwork,
    contact: LeaderContact,
    lease: Duration,
) {
    let mut allowed = None;
    loop {
        let decision = decide(&raft, me, &network, &contact, lease).await;
        let may = decision != Decision::Hold;
        if allowed != Some(may) {
            tracing::debug!(may_campaign = may, "election switch");
            raft.runtime_config().elect(may);
            allowed = Some(may);
        }
        if let Decision::Won { term } = decision {
            campaign_now(&raft, me, &contact, lease, term).await;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// How long coordinator `me` lets the others go first: survivors that won
/// the same pre-vote would otherwise campaign together and split the vote.
/// Never zero: the voters' own lease (openraft's) is renewed a little
/// after they note the heartbeat the pre-vote looks at.
fn stagger(me: NodeId) -> Duration {
    STAGGER * (1 + u32::try_from(me % 4).unwrap_or(0))
}

/// Between two survivors' campaigns (more than a vote round on loopback or
/// a LAN, less than a gate tick).
const STAGGER: Duration = Duration::from_millis(25);

/// Starts an election after [`stagger`], unless meanwhile the term moved (a
/// survivor campaigned first and got this coordinator's vote) or a leader
/// was heard.
async fn campaign_now(
    raft: &openraft::Raft<TypeConfig>,
    me: NodeId,
    contact: &LeaderContact,
    lease: Duration,
    term: u64,
) {
    tokio::time::sleep(stagger(me)).await;
    let m = raft.metrics().borrow().clone();
    let still = m.current_term == term
        && m.state == ServerState::Follower
        && would_vote(false, contact.since(), lease);
    if still {
        tracing::info!(
            term,
            "no leader heard by a majority for the lease: campaigning now"
        );
        if let Err(e) = raft.trigger().elect().await {
            tracing::warn!(error = %e, "cannot start an election");
        }
    }
}

async fn decide(
    raft: &openraft::Raft<TypeConfig>,
    me: NodeId,
    network: &QuicNetwork,
    contact: &LeaderContact,
    lease: Duration,
) -> Decision {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    if voters.len() <= 1 || metrics.state == ServerState::Leader {
        return Decision::Free;
    }
    if !would_vote(false, contact.since(), lease) {
        return Decision::Hold;
    }
    let asks = voters
        .iter()
        .filter(|id| **id != me)
        .filter_map(|id| membership.get_node(id).map(|m| (*id, m.clone())))
        .map(|(id, member)| {
            let network = network.clone();
            async move {
                let link = network.link(id, &member);
                let option = RPCOption::new(ASK_TIMEOUT);
                matches!(
                    link.ask::<openraft::error::Infallible>(RaftRequest::PreVote, &option)
                        .await,
                    Ok(RaftReply::PreVote { grant: true })
                )
            }
        });
    let granted = 1 + join_all(asks).await.into_iter().filter(|g| *g).count();
    if !majority(granted, voters.len()) {
        return Decision::Hold;
    }
    if metrics.state == ServerState::Follower && voters.contains(&me) {
        Decision::Won {
            term: metrics.current_term,
        }
    } else {
        Decision::Free // A candidate already (openraft's timer) or a learner.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voter_that_hears_a_leader_or_leads_does_not_vote() {
        let lease = Duration::from_millis(300);
        assert!(!would_vote(true, None, lease));
        assert!(!would_vote(false, Some(Duration::from_millis(50)), lease));
        assert!(would_vote(false, Some(Duration::from_millis(300)), lease));
        assert!(would_vote(false, None, lease));
    }

    #[test]
    fn survivors_campaign_one_after_another_never_at_once() {
        let waits: Vec<Duration> = (1..=3).map(stagger).collect();
        assert!(waits.iter().all(|w| !w.is_zero()), "{waits:?}");
        assert!(waits[0] < waits[1] && waits[1] < waits[2], "{waits:?}");
    }

    #[test]
    fn a_campaign_needs_a_strict_majority() {
        assert!(!majority(1, 3));
        assert!(majority(2, 3));
        assert!(!majority(2, 4));
        assert!(majority(3, 5));
        assert!(majority(1, 1));
    }
}
