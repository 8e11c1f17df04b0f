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

/// Keeps openraft's election switch on only while a campaign could win
/// (runs for the life of the coordinator).
pub async fn gate(
    raft: openraft::Raft<TypeConfig>,
    me: NodeId,
    network: QuicNetwork,
    contact: LeaderContact,
    lease: Duration,
) {
    let mut allowed = None;
    loop {
        let may = may_campaign(&raft, me, &network, &contact, lease).await;
        if allowed != Some(may) {
            tracing::debug!(may_campaign = may, "election switch");
            raft.runtime_config().elect(may);
            allowed = Some(may);
        }
        tokio::time::sleep(TICK).await;
    }
}

async fn may_campaign(
    raft: &openraft::Raft<TypeConfig>,
    me: NodeId,
    network: &QuicNetwork,
    contact: &LeaderContact,
    lease: Duration,
) -> bool {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    if voters.len() <= 1 || metrics.state == ServerState::Leader {
        return true;
    }
    if !would_vote(false, contact.since(), lease) {
        return false;
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
    majority(granted, voters.len())
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
    fn a_campaign_needs_a_strict_majority() {
        assert!(!majority(1, 3));
        assert!(majority(2, 3));
        assert!(!majority(2, 4));
        assert!(majority(3, 5));
        assert!(majority(1, 1));
    }
}
