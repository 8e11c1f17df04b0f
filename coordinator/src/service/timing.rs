//! Every liveness duration of the control plane in one place: how often
//! agents heartbeat, how long an agent's lease lasts before it fences itself
//! (pauses its VMs), when the leader may call a silent host lost, and the
//! Raft timing between coordinators ([`RaftTiming`]).
//!
//! The safety rule between them is built in: a host is marked down (and its
//! nodes moved) only after `lease + fence_margin` of silence, so an agent cut
//! off from the quorum has paused its VMs before a copy starts elsewhere.
//! Agents are told `heartbeat` and `lease` by the leader in every
//! [`Reply::Lease`](labspan_proto::msg::Reply::Lease), so the two sides
//! cannot disagree.
//!
//! The leader's load is bounded too: with more hosts than
//! `max_heartbeats_per_s` × `heartbeat` it stretches the interval and the
//! lease in proportion ([`Timing::for_hosts`]), as Nomad does with its
//! `max_heartbeats_per_second`. A cluster of 10,000 hosts then heartbeats
//! every 10 s and detects a lost host in about 41 s (Kubernetes' node
//! grace period is 40 s), with the leader under a quarter of a core,
//! instead of needing two cores for 25,000 heartbeats a second
//! (docs/benchmarks.md).

use std::time::Duration;

use labspan_transport::IDLE_TIMEOUT;

/// The control plane's liveness settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often an agent heartbeats.
    pub heartbeat: Duration,
    /// How long one acknowledged heartbeat keeps an agent's VMs running,
    /// counted from when the agent sent it.
    pub lease: Duration,
    /// Time an agent has, after its lease lapsed, to pause its VMs before
    /// the leader may start them elsewhere (QMP `stop` takes milliseconds;
    /// the rest covers a loaded host's scheduling delays).
    pub fence_margin: Duration,
    /// How often the leader looks for silent hosts.
    pub monitor_every: Duration,
    /// How long a new leader waits for an agent it never heard of before
    /// it may mark its host down.
    pub new_leader_grace: Duration,
    /// At most this many heartbeats a second reach the leader: past
    /// `max_heartbeats_per_s × heartbeat` hosts, the heartbeat and the
    /// lease grow with the number of hosts ([`Timing::for_hosts`]).
    pub max_heartbeats_per_s: u32,
    /// Heartbeats and elections between coordinators.
    pub raft: RaftTiming,
}

/// Raft's timing between coordinators: what a failover takes, and what
/// stall of a loaded host it forgives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// How often the leader sends each follower a heartbeat.
    pub heartbeat: Duration,
    /// openraft draws each election timeout from `election_timeout_min
    /// .. election_timeout_max`.
    pub election_timeout_min: Duration,
    /// Also the leader lease (openraft 0.9 ties them): a follower that heard
    /// a leader this recently refuses to vote, and the campaign gate
    /// (`raft::campaign`) campaigns only when a majority has not heard one
    /// for as long. A failover takes about this long.
    pub election_timeout_max: Duration,
    /// How often the campaign gate looks again while it may not campaign
    /// (it also wakes when the lease runs out).
    pub gate_tick: Duration,
}

impl Default for RaftTiming {
    /// Production values (docs/benchmarks.md, "Leader failover after
    /// `kill -9`"): a failover in about 1 s, and no election in 10 minutes
    /// of a 2-core host loaded 7 times over. A 250 ms lease fails over in
    /// 260 ms, but such a host stalled a leader that long about once in 10
    /// minutes: set it where hosts are not so loaded.
    fn default() -> RaftTiming {
        RaftTiming {
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            gate_tick: Duration::from_millis(50),
        }
    }
}

impl RaftTiming {
    /// How long a follower must not have heard a leader before it votes.
    pub fn lease(&self) -> Duration {
        self.election_timeout_max
    }

    fn validate(&self) -> Result<(), TimingError> {
        for (what, d) in [
            ("raft heartbeat", self.heartbeat),
            ("election timeout", self.election_timeout_min),
            ("gate tick", self.gate_tick),
        ] {
            if d.is_zero() {
                return Err(TimingError::Zero { what });
            }
        }
        if self.election_timeout_min < 2 * self.heartbeat
            || self.election_timeout_max <= self.election_timeout_min
        {
            return Err(TimingError::Election {
                heartbeat: self.heartbeat,
                min: self.election_timeout_min,
                max: self.election_timeout_max,
            });
        }
        Ok(())
    }
}

/// Why a [`Timing`] is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    /// A duration is zero.
    #[error("{what} must be more than 0")]
    Zero { what: &'static str },
    /// The lease does not outlast a few heartbeats.
    #[error("lease ({lease:?}) must be at least 2 heartbeats ({heartbeat:?} each): one late heartbeat must not fence a host")]
    LeaseTooShort {
        lease: Duration,
        heartbeat: Duration,
    },
    /// A new leader would mark hosts down before their agents can reach it.
    #[error("new-leader grace ({grace:?}) must be at least the detection time ({down:?})")]
    GraceTooShort { grace: Duration, down: Duration },
    /// Raft's election timeout does not outlast its heartbeats, or its range is empty.
    #[error("election timeout ({min:?}..{max:?}) must start at 2 Raft heartbeats ({heartbeat:?} each) or more and end after it starts")]
    Election {
        heartbeat: Duration,
        min: Duration,
        max: Duration,
    },
}

impl Default for Timing {
    /// Production values: a host cut off is marked down within 3 s
    /// (`host_down_after` + `monitor_every`), with 4 heartbeats per lease.
    fn default() -> Timing {
        let heartbeat = Duration::from_millis(400);
        let lease = Duration::from_millis(1600);
        let fence_margin = Duration::from_millis(900);
        Timing {
            heartbeat,
            lease,
            fence_margin,
            monitor_every: Duration::from_millis(200),
            // An agent notices the old leader is gone within the transport's
            // idle timeout, may spend as long again on a dead coordinator of
            // its list, then registers; a failover never restarts a VM.
            new_leader_grace: 2 * IDLE_TIMEOUT + lease + fence_margin,
            // 400 hosts heartbeat every 400 ms. With 10,000 agents
            // connected the leader used 23.7% of a core at this rate
            // (30.3% at 2,000 a second; docs/benchmarks.md).
            max_heartbeats_per_s: 1_000,
            raft: RaftTiming::default(),
        }
    }
}

impl Timing {
    /// Every duration of host loss divided by `factor` (tests of host loss,
    /// at a shorter scale); Raft's timing stays production's.
    pub fn scaled_down(factor: u32) -> Timing {
        let d = Timing::default();
        let f = factor.max(1);
        Timing {
            heartbeat: d.heartbeat / f,
            lease: d.lease / f,
            fence_margin: d.fence_margin / f,
            monitor_every: d.monitor_every / f,
            new_leader_grace: d.new_leader_grace / f,
            max_heartbeats_per_s: d.max_heartbeats_per_s,
            raft: d.raft,
        }
    }

    /// The timing the leader grants when the cluster has `hosts` hosts:
    /// this one while they send at most `max_heartbeats_per_s` heartbeats
    /// a second; past that, the heartbeat is stretched to `hosts /
    /// max_heartbeats_per_s` seconds, the lease by the same factor, and the
    /// new leader's grace by as much as the lease (so it still covers
    /// detection). The fence margin (time to pause VMs) stays.
    pub fn for_hosts(&self, hosts: usize) -> Timing {
        let rate = f64::from(self.max_heartbeats_per_s.max(1));
        // Hosts are counted far below 2^52: the conversion is exact.
        #[allow(clippy::cast_precision_loss)]
        let needed = Duration::from_secs_f64(hosts as f64 / rate);
        if needed <= self.heartbeat {
            return *self;
        }
        let factor = needed.as_secs_f64() / self.heartbeat.as_secs_f64();
        let lease = self.lease.mul_f64(factor);
        Timing {
            heartbeat: needed,
            lease,
            new_leader_grace: self.new_leader_grace + (lease - self.lease),
            ..*self
        }
    }

    /// Silence after which the leader marks a host down and moves its nodes.
    pub fn host_down_after(&self) -> Duration {
        self.lease + self.fence_margin
    }

    /// Checks the rules between the durations.
    pub fn validate(&self) -> Result<(), TimingError> {
        for (what, d) in [
            ("heartbeat", self.heartbeat),
            ("lease", self.lease),
            ("fence margin", self.fence_margin),
            ("monitor interval", self.monitor_every),
        ] {
            if d.is_zero() {
                return Err(TimingError::Zero { what });
            }
        }
        if self.max_heartbeats_per_s == 0 {
            return Err(TimingError::Zero {
                what: "heartbeats per second",
            });
        }
        if self.lease < 2 * self.heartbeat {
            return Err(TimingError::LeaseTooShort {
                lease: self.lease,
                heartbeat: self.heartbeat,
            });
        }
        if self.new_leader_grace < self.host_down_after() {
            return Err(TimingError::GraceTooShort {
                grace: self.new_leader_grace,
                down: self.host_down_after(),
            });
        }
        self.raft.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_detect_within_3_s_and_move_only_after_the_lease() {
        let t = Timing::default();
        assert_eq!(t.validate(), Ok(()));
        assert!(t.host_down_after() + t.monitor_every <= Duration::from_secs(3));
        assert!(t.host_down_after() > t.lease);
        assert_eq!(Timing::scaled_down(4).validate(), Ok(()));
    }

    #[test]
    fn past_the_heartbeat_budget_the_interval_and_the_lease_stretch_together() {
        let t = Timing::default();
        // 400 hosts at 400 ms: 1,000 heartbeats a second, the budget.
        assert_eq!(t.for_hosts(0), t);
        assert_eq!(t.for_hosts(400), t);
        let big = t.for_hosts(10_000);
        assert_eq!(big.heartbeat, Duration::from_secs(10));
        assert_eq!(big.lease, Duration::from_secs(40));
        assert_eq!(big.fence_margin, t.fence_margin);
        assert_eq!(big.monitor_every, t.monitor_every);
        // Still a valid timing: the grace covers the longer detection.
        assert_eq!(big.validate(), Ok(()));
        assert_eq!(
            big.new_leader_grace - big.host_down_after(),
            t.new_leader_grace - t.host_down_after()
        );
        // More hosts never shorten the lease.
        let mut last = t.lease;
        for hosts in (0..30_000).step_by(997) {
            let lease = t.for_hosts(hosts).lease;
            assert!(lease >= last, "{hosts} hosts: {lease:?} < {last:?}");
            last = lease;
        }
    }

    #[test]
    fn a_lease_of_one_heartbeat_or_a_short_grace_is_refused() {
        let t = Timing {
            lease: Duration::from_millis(400),
            ..Timing::default()
        };
        assert!(matches!(
            t.validate(),
            Err(TimingError::LeaseTooShort { .. })
        ));
        let t = Timing {
            new_leader_grace: Duration::from_secs(1),
            ..Timing::default()
        };
        assert!(matches!(
            t.validate(),
            Err(TimingError::GraceTooShort { .. })
        ));
        let t = Timing {
            heartbeat: Duration::ZERO,
            ..Timing::default()
        };
        assert_eq!(t.validate(), Err(TimingError::Zero { what: "heartbeat" }));
    }

    #[test]
    fn an_election_timeout_within_two_raft_heartbeats_or_an_empty_range_is_refused() {
        let raft = RaftTiming::default();
        for raft in [
            RaftTiming {
                election_timeout_min: raft.heartbeat,
                ..raft
            },
            RaftTiming {
                election_timeout_max: raft.election_timeout_min,
                ..raft
            },
        ] {
            let t = Timing {
                raft,
                ..Timing::default()
            };
            assert!(
                matches!(t.validate(), Err(TimingError::Election { .. })),
                "{raft:?}"
            );
        }
        let t = Timing {
            raft: RaftTiming {
                gate_tick: Duration::ZERO,
                ..raft
            },
            ..Timing::default()
        };
        assert_eq!(t.validate(), Err(TimingError::Zero { what: "gate tick" }));
    }
}
