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

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::network::RPCOption;
use openraft::ServerState;

use super::network::{QuicNetwork, RaftReply, RaftRequest};
use super::{NodeId, TypeConfig};
use crate::service::RaftTiming;

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
    /// A majority has not heard a leader for the lease, in `term`; this
    /// coordinator comes `rank`-th among the survivors.
    Won { term: u64, rank: u32 },
}

/// Keeps openraft's election switch on only while a campaign could win
/// (runs for the life of the coordinator), and campaigns at once when a
/// pre-vote majority says the leader is gone.
///
/// openraft's own timer waits for its leader lease plus a randomized
/// election timeout after the last heartbeat; the voters grant a vote once
/// the lease alone has passed. The pre-vote already proves that, so waiting
/// for the timer would double every failover for nothing.
pub async fn gate(
    raft: openraft::Raft<TypeConfig>,
    me: NodeId,
    network: QuicNetwork,
    contact: LeaderContact,
    timing: RaftTiming,
) {
    let lease = timing.lease();
    let mut allowed = None;
    loop {
        let decision = decide(&raft, me, &network, &contact, lease).await;
        let may = decision != Decision::Hold;
        if allowed != Some(may) {
            tracing::debug!(may_campaign = may, "election switch");
            raft.runtime_config().elect(may);
            allowed = Some(may);
        }
        if let Decision::Won { term, rank } = decision {
            campaign_now(&raft, &contact, lease, term, stagger(rank, timing)).await;
        }
        tokio::time::sleep(next_look(contact.since(), lease, timing.gate_tick)).await;
    }
}

/// The peers heard the leader's last heartbeat a moment after this
/// coordinator did, or before: a pre-vote asked this long after our lease
/// ran out finds theirs out too.
const SLACK: Duration = Duration::from_millis(10);

/// How long the gate sleeps: a tick, but it wakes when the lease runs out
/// (a failover waits for no tick), and looks again soon for one tick after
/// that, in case a peer heard the last heartbeat later than this one did.
fn next_look(since_leader: Option<Duration>, lease: Duration, tick: Duration) -> Duration {
    match since_leader {
        Some(d) if d < lease => (lease - d + SLACK).min(tick),
        Some(d) if d < lease + tick => SLACK.min(tick),
        _ => tick,
    }
}

/// How long the survivor of `rank` lets those before it go first:
/// survivors that won the same pre-vote would otherwise campaign together
/// and split the vote. The first goes at once (the voters' openraft lease
/// ran out before their pre-vote said so: they note a heartbeat after
/// openraft does); each next one waits more than a gate tick (the first
/// wins its pre-vote within a tick of the others) and a vote round.
fn stagger(rank: u32, timing: RaftTiming) -> Duration {
    (timing.gate_tick + VOTE_ROUND) * rank
}

/// More than a vote round (a Raft RPC and a redb commit) on a loaded host.
const VOTE_ROUND: Duration = Duration::from_millis(25);

/// Where `me` comes among the voters other than the last leader it knew
/// (the one presumed gone), in id order.
fn rank(me: NodeId, voters: &[NodeId], last_leader: Option<NodeId>) -> u32 {
    let before = voters
        .iter()
        .filter(|id| Some(**id) != last_leader && **id < me)
        .count();
    u32::try_from(before).unwrap_or(u32::MAX)
}

/// Starts an election after `wait`, unless meanwhile the term moved (a
/// survivor campaigned first and got this coordinator's vote) or a leader
/// was heard.
async fn campaign_now(
    raft: &openraft::Raft<TypeConfig>,
    contact: &LeaderContact,
    lease: Duration,
    term: u64,
    wait: Duration,
) {
    tokio::time::sleep(wait).await;
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
    let mut asks: FuturesUnordered<_> = voters
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
        })
        .collect();
    // Count answers as they come: the dead leader never answers, and
    // waiting for its timeout would add it to every failover.
    let mut granted = 1;
    while !majority(granted, voters.len()) {
        match asks.next().await {
            Some(true) => granted += 1,
            Some(false) => {}
            None => return Decision::Hold,
        }
    }
    if metrics.state == ServerState::Follower && voters.contains(&me) {
        Decision::Won {
            term: metrics.current_term,
            rank: rank(me, &voters, metrics.current_leader),
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
        let timing = RaftTiming::default();
        // Leader 1 gone: 2 goes first, 3 after it.
        let voters = [1, 2, 3];
        assert_eq!(rank(2, &voters, Some(1)), 0);
        assert_eq!(rank(3, &voters, Some(1)), 1);
        // Leader 2 gone: 1 and 3.
        assert_eq!(rank(1, &voters, Some(2)), 0);
        assert_eq!(rank(3, &voters, Some(2)), 1);
        // No leader known: every voter has its own rank.
        assert_eq!(rank(3, &voters, None), 2);
        let waits: Vec<Duration> = (0..3).map(|r| stagger(r, timing)).collect();
        assert!(waits[0].is_zero(), "{waits:?}");
        // Each next survivor waits more than a tick, in which the one
        // before it finds its pre-vote won, plus a vote round.
        for pair in waits.windows(2) {
            assert!(
                pair[1] >= pair[0] + timing.gate_tick + VOTE_ROUND,
                "{waits:?}"
            );
        }
    }

    #[test]
    fn the_gate_wakes_when_the_lease_runs_out_and_looks_again_soon_after() {
        let (lease, tick) = (Duration::from_millis(250), Duration::from_millis(50));
        let ms = Duration::from_millis;
        // A leader heard just now: a tick.
        assert_eq!(next_look(Some(ms(10)), lease, tick), tick);
        // The lease runs out in 20 ms: wake then (and a little after).
        assert_eq!(next_look(Some(ms(230)), lease, tick), ms(20) + SLACK);
        // Just run out: look again soon, the peers' runs out too.
        assert_eq!(next_look(Some(ms(260)), lease, tick), SLACK);
        // Long gone, or never heard: a tick.
        assert_eq!(next_look(Some(ms(400)), lease, tick), tick);
        assert_eq!(next_look(None, lease, tick), tick);
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
