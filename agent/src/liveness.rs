//! Each guest's liveness record and the restart policy over it. Pure: the
//! supervisor (`supervise`) observes, calls these, and carries out what
//! they decide, so the policy is tested here without QEMU.
//!
//! The record lives in the VM's folder (`health.json`) beside its disk, so
//! a restarted agent keeps each guest's restart count and backoff.

use labspan_proto::health::{GuestHealth, GuestState};
use labspan_proto::lab::RestartPolicy;
use serde::{Deserialize, Serialize};

/// First wait before restarting a failed guest; it doubles per failure.
pub const BACKOFF_BASE_SECS: u64 = 2;
/// The longest wait between restarts.
pub const BACKOFF_CAP_SECS: u64 = 60;
/// A guest ready this long has recovered: its backoff starts over.
pub const STABLE_AFTER_SECS: u64 = 60;
/// `on-failure` gives up after this many restarts in a row that never
/// made the guest ready.
pub const GIVE_UP_AFTER: u32 = 5;
/// Why a guest restarted on `labspan restart`.
pub const REQUESTED: &str = "requested (labspan restart)";
/// Events kept per guest.
const EVENTS_KEPT: usize = 20;

/// The wait before restart number `failures` (1 for the first failure).
pub fn backoff_secs(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_BASE_SECS << doublings).min(BACKOFF_CAP_SECS)
}

/// What to do about a guest now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It is fine, or already left alone.
    Nothing,
    /// Restart it now.
    Restart,
    /// Restart it at this time (Unix seconds).
    Wait { until: u64 },
    /// It is left as it is, for this reason.
    Leave { why: String },
}

/// One guest's liveness record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub state: GuestState,
    /// Restarts since the node was deployed.
    pub restarts: u32,
    /// Failures since it was last ready for [`STABLE_AFTER_SECS`]: the backoff.
    pub failures: u32,
    /// Restarts in a row that never made it ready.
    pub unready_restarts: u32,
    pub last_reason: Option<String>,
    pub last_at: Option<u64>,
    pub next_restart_at: Option<u64>,
    pub ready_since: Option<u64>,
    /// Since when its guest agent has not answered (unset when it answers).
    pub unanswered_since: Option<u64>,
    /// `UNIX-SECS text`, oldest first.
    pub events: Vec<String>,
    /// The console's last lines at the last failure.
    pub console: Vec<String>,
}

impl Health {
    fn event(&mut self, now: u64, text: String) {
        self.events.push(format!("{now} {text}"));
        let extra = self.events.len().saturating_sub(EVENTS_KEPT);
        self.events.drain(..extra);
    }

    /// QEMU was started for it.
    pub fn booting(&mut self, now: u64) {
        self.state = GuestState::Booting;
        self.unanswered_since = None;
        self.ready_since = None;
        self.event(now, "booting".into());
    }

    /// It is configured and its guest agent answers.
    pub fn ready(&mut self, now: u64) {
        self.answered(now);
        if self.state != GuestState::Ready {
            self.state = GuestState::Ready;
            self.ready_since = Some(now);
            self.unready_restarts = 0;
            self.event(now, "ready".into());
        }
    }

    /// Its guest agent answered a ping.
    pub fn answered(&mut self, now: u64) {
        self.unanswered_since = None;
        if self.state == GuestState::Hung {
            self.state = GuestState::Ready;
            self.event(now, "answers again".into());
        }
        if self
            .ready_since
            .is_some_and(|t| now.saturating_sub(t) >= STABLE_AFTER_SECS)
        {
            self.failures = 0;
        }
    }

    /// Its guest agent did not answer a ping; true once it has not answered
    /// for `grace_secs` (it is then hung).
    pub fn unanswered(&mut self, now: u64, grace_secs: u64) -> bool {
        let since = *self.unanswered_since.get_or_insert(now);
        now.saturating_sub(since) >= grace_secs
    }

    /// It failed (`state` is a failure) for `why`; a failure already
    /// recorded is not counted twice.
    pub fn fail(&mut self, state: GuestState, why: &str, now: u64, console: Vec<String>) {
        if self.state.is_failure() {
            return;
        }
        self.state = state;
        self.failures = self.failures.saturating_add(1);
        self.last_reason = Some(why.to_string());
        self.last_at = Some(now);
        self.next_restart_at = None;
        self.unanswered_since = None;
        self.console = console;
        self.event(now, format!("{state}: {why}"));
    }

    /// What `policy` says to do now, recording a decision when it is new.
    pub fn next_step(&mut self, policy: RestartPolicy, now: u64) -> Decision {
        if !self.state.is_failure() || self.state == GuestState::Left {
            return Decision::Nothing;
        }
        let requested = self.last_reason.as_deref() == Some(REQUESTED);
        let give_up = match policy {
            _ if requested => None,
            RestartPolicy::Never => Some("restart: never".to_string()),
            RestartPolicy::OnFailure if self.unready_restarts >= GIVE_UP_AFTER => Some(format!(
                "restart: on-failure gave up after {} restarts that never made it ready",
                self.unready_restarts
            )),
            _ => None,
        };
        if let Some(why) = give_up {
            self.state = GuestState::Left;
            self.next_restart_at = None;
            self.event(now, format!("left as it is ({why})"));
            return Decision::Leave { why };
        }
        match self.next_restart_at {
            Some(at) if now >= at => Decision::Restart,
            Some(at) => Decision::Wait { until: at },
            None => {
                let delay = backoff_secs(self.failures);
                let at = now + delay;
                self.next_restart_at = Some(at);
                let n = self.restarts + 1;
                self.event(now, format!("backing off: restart {n} in {delay}s"));
                if self.state != GuestState::BackingOff {
                    // The failure itself stays in last_reason.
                    self.state = GuestState::BackingOff;
                }
                Decision::Wait { until: at }
            }
        }
    }

    /// It is being restarted (its disk kept) because of `why`.
    pub fn restarting(&mut self, why: &str, now: u64) {
        self.restarts = self.restarts.saturating_add(1);
        self.unready_restarts = self.unready_restarts.saturating_add(1);
        self.next_restart_at = None;
        self.last_reason = Some(why.to_string());
        self.last_at = Some(now);
        let n = self.restarts;
        self.event(now, format!("restart {n}: {why}"));
        self.booting(now);
    }

    /// Someone asked for a restart now: it is due at once, is not a
    /// failure, and the backoff starts over.
    pub fn requested(&mut self, now: u64) {
        self.failures = 0;
        self.unready_restarts = 0;
        self.state = GuestState::BackingOff;
        self.last_reason = Some(REQUESTED.into());
        self.last_at = Some(now);
        self.next_restart_at = Some(now);
        self.event(now, "restart requested".into());
    }

    /// The record as `inspect` shows it.
    pub fn report(&self, lab: &str, node: &str) -> GuestHealth {
        GuestHealth {
            lab: lab.to_string(),
            node: node.to_string(),
            state: self.state,
            restarts: self.restarts,
            last_reason: self.last_reason.clone(),
            last_at: self.last_at,
            next_restart_at: self.next_restart_at,
            events: self.events.clone(),
            console: self.console.clone(),
            qemu: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_guest() -> Health {
        let mut h = Health::default();
        h.booting(0);
        h.ready(10);
        h
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let waits: Vec<u64> = (1..=8).map(backoff_secs).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff_secs(u32::MAX), BACKOFF_CAP_SECS);
    }

    #[test]
    fn a_panic_is_restarted_after_the_backoff_and_recorded() {
        let mut h = ready_guest();
        h.fail(
            GuestState::Panicked,
            "kernel panic",
            20,
            vec!["Oops".into()],
        );
        assert_eq!(h.last_reason.as_deref(), Some("kernel panic"));
        assert_eq!(h.console, ["Oops"]);
        assert_eq!(
            h.next_step(RestartPolicy::OnFailure, 20),
            Decision::Wait { until: 22 }
        );
        assert_eq!(h.state, GuestState::BackingOff);
        assert_eq!(
            h.next_step(RestartPolicy::OnFailure, 21),
            Decision::Wait { until: 22 }
        );
        assert_eq!(h.next_step(RestartPolicy::OnFailure, 22), Decision::Restart);
        h.restarting("kernel panic", 22);
        assert_eq!((h.restarts, h.state), (1, GuestState::Booting));
        assert!(h
            .events
            .iter()
            .any(|e| e == "20 backing off: restart 1 in 2s"));
        assert!(h.events.iter().any(|e| e == "22 restart 1: kernel panic"));
    }

    #[test]
    fn repeated_failures_back_off_longer_until_the_guest_is_stable() {
        let mut h = ready_guest();
        let mut now = 20;
        let mut waits = Vec::new();
        for _ in 0..3 {
            h.fail(GuestState::Panicked, "panic", now, vec![]);
            let Decision::Wait { until } = h.next_step(RestartPolicy::Always, now) else {
                panic!("expected a wait");
            };
            waits.push(until - now);
            now = until;
            assert_eq!(h.next_step(RestartPolicy::Always, now), Decision::Restart);
            h.restarting("panic", now);
            h.ready(now + 1);
            now += 2;
        }
        assert_eq!(waits, [2, 4, 8]);
        // Ready for long enough: the next failure waits the least again.
        h.answered(now + STABLE_AFTER_SECS);
        h.fail(GuestState::Hung, "hung", now + STABLE_AFTER_SECS, vec![]);
        let at = now + STABLE_AFTER_SECS;
        assert_eq!(
            h.next_step(RestartPolicy::Always, at),
            Decision::Wait { until: at + 2 }
        );
    }

    #[test]
    fn never_leaves_the_guest_and_says_why() {
        let mut h = ready_guest();
        h.fail(GuestState::Panicked, "kernel panic", 20, vec![]);
        assert_eq!(
            h.next_step(RestartPolicy::Never, 20),
            Decision::Leave {
                why: "restart: never".into()
            }
        );
        assert_eq!(h.state, GuestState::Left);
        assert_eq!(h.last_reason.as_deref(), Some("kernel panic"));
        assert_eq!(h.next_step(RestartPolicy::Never, 500), Decision::Nothing);
        assert_eq!(h.restarts, 0);
    }

    #[test]
    fn on_failure_gives_up_on_a_guest_that_never_boots_and_always_does_not() {
        for (policy, gives_up) in [
            (RestartPolicy::OnFailure, true),
            (RestartPolicy::Always, false),
        ] {
            let mut h = Health::default();
            h.booting(0);
            let mut now = 0;
            let mut left = false;
            for _ in 0..(GIVE_UP_AFTER + 1) {
                h.fail(GuestState::QemuGone, "gone", now, vec![]);
                match h.next_step(policy, now) {
                    Decision::Leave { .. } => {
                        left = true;
                        break;
                    }
                    Decision::Wait { until } => now = until,
                    other => panic!("{other:?}"),
                }
                assert_eq!(h.next_step(policy, now), Decision::Restart);
                h.restarting("gone", now);
            }
            assert_eq!(left, gives_up, "{policy}");
        }
    }

    #[test]
    fn hung_only_after_the_grace_period_and_a_late_answer_clears_it() {
        let mut h = ready_guest();
        assert!(!h.unanswered(100, 20));
        assert!(!h.unanswered(119, 20));
        h.answered(119);
        assert!(!h.unanswered(130, 20), "the grace restarts after an answer");
        assert!(h.unanswered(150, 20));
        h.fail(GuestState::Hung, "no answer for 20s", 150, vec![]);
        assert_eq!(h.failures, 1);
        h.fail(GuestState::Hung, "no answer for 20s", 152, vec![]);
        assert_eq!(h.failures, 1, "one failure is counted once");
    }

    #[test]
    fn a_requested_restart_is_not_a_failure() {
        let mut h = ready_guest();
        h.fail(GuestState::Panicked, "panic", 20, vec![]);
        h.requested(21);
        assert_eq!(h.next_step(RestartPolicy::Never, 21), Decision::Restart);
        h.restarting(REQUESTED, 21);
        assert_eq!(
            (h.restarts, h.failures, h.state),
            (1, 0, GuestState::Booting)
        );
        assert_eq!(h.last_reason.as_deref(), Some(REQUESTED));
    }

    #[test]
    fn events_are_bounded() {
        let mut h = Health::default();
        for t in 0..100 {
            h.booting(t);
        }
        assert_eq!(h.events.len(), EVENTS_KEPT);
        assert_eq!(h.events.last().map(String::as_str), Some("99 booting"));
    }
}
