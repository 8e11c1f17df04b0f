//! Per-node progress of labs, as the leader streams it to whoever follows
//! a lab (`Request::Follow`): the leader's own steps (a node placed on a
//! host, lost with its host, being stopped) and what each agent reports of
//! its VMs (image fetched, QEMU started, guest agent up, configured).
//!
//! An agent sends its events to the leader (`Request::Progress`, soft state
//! like heartbeats, never logged); the leader names the host from the
//! agent's certificate, not from the event.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most events one `Request::Progress` may carry: an agent sends what it
/// has in batches, and a leader refuses a bigger one (a client bug, or
/// worse) with a clear error instead of fanning it out.
pub const MAX_BATCH: usize = 1024;

/// One step of one node of a lab (or of the lab as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressEvent {
    pub lab: String,
    /// The node, or `None` for the lab as a whole ([`Phase::Settled`],
    /// [`Phase::Removed`]).
    pub node: Option<String>,
    /// The host the step happened on (set by the leader; `None` for a
    /// step of the lab as a whole).
    pub host: Option<String>,
    pub phase: Phase,
    /// When it happened (Unix ms, on the clock of whoever saw it).
    pub at_unix_ms: u64,
}

/// Where a node is on its way up (or down).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Leader: the node is recorded on `host` (`from`: the host it left,
    /// when it moved).
    Placed { from: Option<String> },
    /// Agent: the image the node boots is being fetched from another host.
    Fetching {
        image: String,
        from: String,
        bytes: u64,
        total: u64,
    },
    /// Agent: a fetch failed; the next source is tried.
    FetchRetry {
        image: String,
        from: String,
        why: String,
    },
    /// Agent: QEMU started; the guest boots (until its guest agent answers).
    Booting,
    /// Agent: QEMU waits for the guest moved from another host.
    Receiving,
    /// Agent: after its host was lost, the guest was started on this one
    /// from `checkpoint` (its RAM, devices and disk), without a boot.
    Restored { checkpoint: String },
    /// Agent: a running QEMU was found and kept (same process).
    Kept { pid: u32 },
    /// Agent: QEMU died or the node's definition changed; started again.
    Restarting { why: String },
    /// Agent: the guest agent answered after `boot_ms`; addresses, files
    /// and exec lines are being put in place.
    Configuring { boot_ms: u64 },
    /// Agent: the node is up and configured.
    Running,
    /// Agent or leader: the node did not come up, or its guest failed.
    Failed { why: String },
    /// Agent: a failed guest is restarted after `delay_secs`.
    BackingOff { delay_secs: u64 },
    /// Agent: a failed guest is left as it is.
    Left { why: String },
    /// Leader: the node's host is down; the node waits for another host.
    Lost,
    /// Leader: the node is moving live to `host`.
    Moving,
    /// Leader: the lab is going down; the node is being stopped.
    Stopping,
    /// Agent: the node's VM is stopped and its files removed.
    Stopped,
    /// Leader, lab as a whole: a deploy, an edit or a recovery settled
    /// with this status (`Running`, `Failed: why`, ...).
    Settled { status: String },
    /// Leader, lab as a whole: the lab is gone from every host it ran on.
    Removed,
    /// Agent, source of a live move: the node's disk copied so far.
    CopyingDisk { done: u64, total: u64 },
    /// Agent, source of a live move: a pass over the guest's RAM (`sent`
    /// so far, `remaining` still dirty).
    CopyingRam {
        pass: u64,
        sent: u64,
        remaining: u64,
    },
    /// Agent, source of a live move: the guest is paused on both hosts
    /// while its last state crosses.
    SwitchingOver,
    /// The one who deployed (`up`): one of the lab's `verify` checks, run
    /// in this node, ended (`detail`: why it failed).
    Checked {
        check: String,
        passed: bool,
        detail: String,
    },
}

impl Phase {
    /// The phase's name, one word (`placed`, `booting`, `running`, ...).
    pub fn word(&self) -> &'static str {
        match self {
            Phase::Placed { .. } => "placed",
            Phase::Fetching { .. } => "fetching",
            Phase::FetchRetry { .. } => "fetch-retry",
            Phase::Booting => "booting",
            Phase::Receiving => "receiving",
            Phase::Restored { .. } => "restored",
            Phase::Kept { .. } => "kept",
            Phase::Restarting { .. } => "restarting",
            Phase::Configuring { .. } => "configuring",
            Phase::Running => "running",
            Phase::Failed { .. } => "failed",
            Phase::BackingOff { .. } => "backing-off",
            Phase::Left { .. } => "left",
            Phase::Lost => "lost",
            Phase::Moving => "moving",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Settled { .. } => "settled",
            Phase::Removed => "removed",
            Phase::CopyingDisk { .. } => "copying-disk",
            Phase::CopyingRam { .. } => "copying-ram",
            Phase::SwitchingOver => "switching-over",
            Phase::Checked { .. } => "checked",
        }
    }

    /// Whether this phase ends a lab-wide operation (a deploy or a `down`).
    pub fn ends_lab_step(&self) -> bool {
        matches!(self, Phase::Settled { .. } | Phase::Removed)
    }

    /// Percent of an image fetched (`None` outside [`Phase::Fetching`]).
    pub fn percent(&self) -> Option<u8> {
        match self {
            Phase::Fetching { bytes, total, .. }
            | Phase::CopyingDisk {
                done: bytes, total, ..
            } => {
                let pct = (bytes.saturating_mul(100))
                    .checked_div(*total)
                    .unwrap_or(100);
                Some(u8::try_from(pct.min(100)).unwrap_or(100))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Phase {
    /// The phase for people: its word and what it knows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Placed { from: Some(from) } => write!(f, "placed (moved from {from})"),
            Phase::Fetching {
                image, from, total, ..
            } => write!(
                f,
                "fetching image {image} from {from}: {}% of {:.1} MiB",
                self.percent().unwrap_or(0),
                *total as f64 / 1_048_576.0
            ),
            Phase::FetchRetry { image, from, why } => {
                write!(
                    f,
                    "fetch of image {image} from {from} failed, retrying: {why}"
                )
            }
            Phase::Kept { pid } => write!(f, "kept (running, pid {pid})"),
            Phase::Restored { checkpoint } => {
                write!(f, "restored from checkpoint {checkpoint} (no boot)")
            }
            Phase::Restarting { why } => write!(f, "restarting: {why}"),
            Phase::Configuring { boot_ms } => write!(
                f,
                "configuring (guest agent up after {:.1} s)",
                *boot_ms as f64 / 1000.0
            ),
            Phase::Failed { why } => write!(f, "failed: {why}"),
            Phase::BackingOff { delay_secs } => write!(f, "restarting in {delay_secs} s"),
            Phase::Left { why } => write!(f, "left as it is: {why}"),
            Phase::Settled { status } => write!(f, "settled: {status}"),
            Phase::CopyingDisk { total, .. } => write!(
                f,
                "moving: disk {}% of {:.1} MiB",
                self.percent().unwrap_or(0),
                *total as f64 / 1_048_576.0
            ),
            Phase::CopyingRam {
                pass,
                sent,
                remaining,
            } => write!(
                f,
                "moving: RAM pass {pass}, {:.1} MiB sent, {:.1} MiB left",
                *sent as f64 / 1_048_576.0,
                *remaining as f64 / 1_048_576.0
            ),
            Phase::SwitchingOver => f.write_str("moving: switching over"),
            Phase::Checked {
                check,
                passed: true,
                ..
            } => write!(f, "check {check}: passed"),
            Phase::Checked { check, detail, .. } => {
                write!(f, "check {check}: failed: {detail}")
            }
            other => f.write_str(other.word()),
        }
    }
}

/// Now, in Unix ms (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::msg::{Reply, Request};

    fn event(phase: Phase) -> ProgressEvent {
        ProgressEvent {
            lab: "seen".into(),
            node: Some("a".into()),
            host: Some("host2".into()),
            phase,
            at_unix_ms: 1_700_000_000_000,
        }
    }

    fn every_phase() -> Vec<Phase> {
        vec![
            Phase::Placed { from: None },
            Phase::Placed {
                from: Some("host3".into()),
            },
            Phase::Fetching {
                image: "tiny".into(),
                from: "host1".into(),
                bytes: 5,
                total: 10,
            },
            Phase::FetchRetry {
                image: "tiny".into(),
                from: "host1".into(),
                why: "reset".into(),
            },
            Phase::Booting,
            Phase::Receiving,
            Phase::Restored {
                checkpoint: "auto-20261130-064802".into(),
            },
            Phase::Kept { pid: 7 },
            Phase::Restarting { why: "died".into() },
            Phase::Configuring { boot_ms: 1500 },
            Phase::Running,
            Phase::Failed { why: "x".into() },
            Phase::BackingOff { delay_secs: 4 },
            Phase::Left {
                why: "policy".into(),
            },
            Phase::Lost,
            Phase::Moving,
            Phase::Stopping,
            Phase::Stopped,
            Phase::Settled {
                status: "Running".into(),
            },
            Phase::Removed,
        ]
    }

    #[test]
    fn events_cross_the_wire_in_both_messages() -> Result<(), codec::CodecError> {
        let events: Vec<ProgressEvent> = every_phase().into_iter().map(event).collect();
        let req = Request::Progress {
            events: events.clone(),
        };
        assert_eq!(codec::decode::<Request>(&codec::encode(&req)?)?, req);
        for e in events {
            assert_eq!(codec::decode::<ProgressEvent>(&codec::encode(&e)?)?, e);
        }
        let follow = Request::Follow {
            lab: Some("seen".into()),
        };
        assert!(follow.is_stream());
        assert_eq!(codec::decode::<Request>(&codec::encode(&follow)?)?, follow);
        Ok(())
    }

    #[test]
    fn a_cut_or_foreign_event_is_a_codec_error_not_a_panic() -> Result<(), codec::CodecError> {
        let bytes = codec::encode(&event(Phase::Configuring { boot_ms: 3 }))?;
        for cut in 0..bytes.len() {
            assert!(codec::decode::<ProgressEvent>(&bytes[..cut]).is_err());
        }
        // Another message where an event is expected.
        let other = codec::encode(&Reply::Done)?;
        assert!(codec::decode::<ProgressEvent>(&other).is_err());
        Ok(())
    }

    #[test]
    fn new_requests_come_last_so_older_ones_keep_their_encoding() -> Result<(), codec::CodecError> {
        // bincode numbers variants in order: Progress and Follow were added
        // at the end of Request, so every older request encodes as before
        // and codec::VERSION stays. An older coordinator refuses the new
        // ones as malformed, which agents and `up` survive.
        let ping = codec::encode(&Request::Ping { nonce: 1 })?;
        assert_eq!(ping[codec::HEADER_LEN], 0, "Ping is variant 0");
        let progress = codec::encode(&Request::Progress { events: vec![] })?;
        let mut follow = codec::encode(&Request::Follow { lab: None })?;
        let index = follow[codec::HEADER_LEN];
        assert_eq!(index, progress[codec::HEADER_LEN] + 1);
        // Nothing after Follow: the next index is no request.
        follow[codec::HEADER_LEN] = index + 1;
        assert!(matches!(
            codec::decode::<Request>(&follow),
            Err(codec::CodecError::Malformed(_))
        ));
        Ok(())
    }

    #[test]
    fn phases_have_distinct_words_and_say_what_they_know() {
        let words: std::collections::BTreeSet<&str> =
            every_phase().iter().map(Phase::word).collect();
        assert_eq!(words.len(), every_phase().len() - 1, "Placed twice");
        let fetching = Phase::Fetching {
            image: "tiny".into(),
            from: "host1".into(),
            bytes: 3 * 1_048_576,
            total: 4 * 1_048_576,
        };
        assert_eq!(fetching.percent(), Some(75));
        assert_eq!(
            fetching.to_string(),
            "fetching image tiny from host1: 75% of 4.0 MiB"
        );
        let empty = Phase::Fetching {
            image: "x".into(),
            from: "h".into(),
            bytes: 0,
            total: 0,
        };
        assert_eq!(empty.percent(), Some(100));
        assert_eq!(Phase::Running.percent(), None);
        assert_eq!(
            Phase::Placed {
                from: Some("host3".into())
            }
            .to_string(),
            "placed (moved from host3)"
        );
        assert!(Phase::Removed.ends_lab_step());
        assert!(!Phase::Running.ends_lab_step());
    }
}
