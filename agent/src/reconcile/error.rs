//! Why the host could not be brought to its plan, and the progress events
//! a reconcile reports as it happens.

use std::path::PathBuf;
use std::time::Duration;

use labspan_proto::health::GuestState;
use labspan_proto::msg::ErrorKind;

use crate::net::NetError;
use crate::vm::{self, QgaError, VmError};
use labspan_image::ImageError;

/// Why the host could not be brought to its plan.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An image the plan uses could not be brought to this host.
    #[error("lab \"{lab}\": {cause}")]
    Fetch {
        lab: String,
        cause: Box<labspan_image::transfer::FetchError>,
    },
    /// A VM's image is not in the store.
    #[error("lab \"{lab}\": node \"{vm}\": {cause}")]
    Image {
        lab: String,
        vm: String,
        cause: ImageError,
    },
    /// The network could not be brought to the plan.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A VM could not be started, stopped or reached.
    #[error("lab \"{lab}\": {cause}")]
    Vm { lab: String, cause: Box<VmError> },
    /// A configuration step failed inside a guest.
    #[error("lab \"{lab}\": node \"{vm}\": {step} exited {code}: {stderr}")]
    Config {
        lab: String,
        vm: String,
        step: String,
        code: i32,
        stderr: String,
    },
    /// The state folder could not be read or written.
    #[error("{what} {path}: {cause}")]
    State {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// No such VM on this host.
    #[error("lab \"{lab}\" has no running node \"{vm}\" on this host (see `labspan inspect`)")]
    NoSuchVm { lab: String, vm: String },
    /// A live move of a guest failed (the source runs it on).
    #[error("lab \"{lab}\": {cause}")]
    Move {
        lab: String,
        cause: Box<vm::migrate::MoveError>,
    },
    /// A checkpoint or reset could not be done on this host.
    #[error("lab \"{lab}\": {why}")]
    Checkpoint { lab: String, why: String },
    /// A guest file's contents are not available on this host.
    #[error("lab \"{lab}\": node \"{vm}\": guest file {path}: {why}")]
    GuestFile {
        lab: String,
        vm: String,
        path: String,
        why: String,
    },
}

impl AgentError {
    pub(super) fn moving(lab: impl Into<String>, cause: vm::migrate::MoveError) -> AgentError {
        AgentError::Move {
            lab: lab.into(),
            cause: Box::new(cause),
        }
    }

    pub(super) fn vm(lab: impl Into<String>, cause: VmError) -> AgentError {
        AgentError::Vm {
            lab: lab.into(),
            cause: Box::new(cause),
        }
    }

    /// How a caller should class this error: an unknown VM, a guest command
    /// that ran out of time, or a failure on this host.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::NoSuchVm { .. } => ErrorKind::NotFound,
            AgentError::Vm { cause, .. } => match cause.as_ref() {
                VmError::Qga {
                    cause: QgaError::Unfinished { .. },
                    ..
                } => ErrorKind::TimedOut,
                _ => ErrorKind::Internal,
            },
            _ => ErrorKind::Internal,
        }
    }
}

/// Progress, reported as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// QEMU is being started for a VM.
    Launching { lab: String, vm: String },
    /// QEMU is being started to receive a guest moved from another host.
    Receiving { lab: String, vm: String },
    /// A moved guest arrived and runs here.
    Arrived { lab: String, vm: String },
    /// A guest whose host was lost runs here from a checkpoint of its lab.
    Restored {
        lab: String,
        vm: String,
        checkpoint: String,
    },
    /// A running VM was found and kept (same QEMU process).
    Adopted { lab: String, vm: String, pid: u32 },
    /// A VM's QEMU had died, or its definition changed; it is started again.
    Restarting {
        lab: String,
        vm: String,
        why: String,
    },
    /// The guest agent answered.
    Booted {
        lab: String,
        vm: String,
        after: Duration,
    },
    /// Addresses, files and exec lines are in place.
    Configured { lab: String, vm: String },
    /// The VM is up: its guest booted and is configured (or has no guest
    /// agent to wait for).
    Ready { lab: String, vm: String },
    /// A VM not in the plan was stopped and removed.
    Stopped { lab: String, vm: String },
    /// A guest failed (panicked, shut down, hung, lost its QEMU).
    Failed {
        lab: String,
        vm: String,
        state: GuestState,
        why: String,
    },
    /// A failed guest will be restarted after `delay`.
    BackingOff {
        lab: String,
        vm: String,
        delay: Duration,
    },
    /// A failed guest is left as it is.
    Left {
        lab: String,
        vm: String,
        why: String,
    },
    /// An image the lab uses is being fetched from another host
    /// (`bytes == total` when it is complete).
    Fetching {
        lab: String,
        image: String,
        from: String,
        bytes: u64,
        total: u64,
        mib_per_s: f64,
    },
    /// A fetch from `from` failed (`why`); the next attempt follows.
    FetchRetry {
        lab: String,
        image: String,
        from: String,
        why: String,
    },
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind_for_the_wire() {
        let timed_out = AgentError::vm(
            "lab",
            VmError::Qga {
                vm: "r1".into(),
                cause: QgaError::Unfinished {
                    command: "guest-exec".into(),
                    timeout: Duration::from_secs(3),
                },
            },
        );
        assert_eq!(timed_out.kind(), ErrorKind::TimedOut);
        let missing = AgentError::NoSuchVm {
            lab: "lab".into(),
            vm: "r9".into(),
        };
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        let closed = AgentError::vm(
            "lab",
            VmError::Qga {
                vm: "r1".into(),
                cause: QgaError::Closed {
                    what: "exec".into(),
                },
            },
        );
        assert_eq!(closed.kind(), ErrorKind::Internal);
    }

    #[test]
    fn a_cause_is_printed_once() {
        let e = AgentError::State {
            what: "writing",
            path: PathBuf::from("/x/vm.json"),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let cause = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        // The CLI prints a chain with `{:#}`: the message and every source.
        let mut chain = e.to_string();
        let mut next = std::error::Error::source(&e);
        while let Some(c) = next {
            chain.push_str(&format!(": {c}"));
            next = c.source();
        }
        assert_eq!(chain.matches(&cause).count(), 1, "{chain}");
    }
}
