//! How each guest is doing, as its host's agent sees it: soft state the
//! agent sends the leader when it changes (like heartbeats, never a Raft
//! entry), shown by `labspan inspect`.

use serde::{Deserialize, Serialize};

/// What a guest is doing now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestState {
    /// Launched; its guest agent has not answered yet.
    #[default]
    Booting,
    /// Configured, and its guest agent answers.
    Ready,
    /// Its kernel panicked (pvpanic): QEMU holds it paused.
    Panicked,
    /// It rebooted or powered off from inside (a kernel panic without
    /// pvpanic reboots it): QEMU holds it stopped.
    ShutDown,
    /// Its guest agent stopped answering for longer than the grace period.
    Hung,
    /// Its QEMU process is gone.
    QemuGone,
    /// Waiting out the backoff before its next restart.
    BackingOff,
    /// Failed, and left as it is (`restart: never`, or `on-failure` gave up).
    Left,
}

impl GuestState {
    /// The state as `inspect` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::Booting => "booting",
            GuestState::Ready => "ready",
            GuestState::Panicked => "panicked",
            GuestState::ShutDown => "shut-down",
            GuestState::Hung => "hung",
            GuestState::QemuGone => "qemu-gone",
            GuestState::BackingOff => "backing-off",
            GuestState::Left => "left",
        }
    }

    /// Whether the guest has failed (is not booting or running).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            GuestState::Panicked
                | GuestState::ShutDown
                | GuestState::Hung
                | GuestState::QemuGone
                | GuestState::BackingOff
                | GuestState::Left
        )
    }
}

impl std::fmt::Display for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One guest's liveness, restarts and recent history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestHealth {
    pub lab: String,
    pub node: String,
    pub state: GuestState,
    /// Restarts since the node was deployed (its disk kept each time).
    pub restarts: u32,
    /// Why the guest last failed or was restarted.
    pub last_reason: Option<String>,
    /// When that was (seconds since the Unix epoch).
    pub last_at: Option<u64>,
    /// When the next restart is due, while backing off (Unix seconds).
    pub next_restart_at: Option<u64>,
    /// The latest lifecycle events, oldest first (`UNIX-SECS text`).
    pub events: Vec<String>,
    /// The last lines its serial console printed when it last failed.
    pub console: Vec<String>,
    /// Its QEMU process, while one runs.
    #[serde(default)]
    pub qemu: Option<QemuFacts>,
}

/// A running guest's QEMU process, as its agent sees it (`inspect --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuFacts {
    pub pid: u32,
    /// When the process started (seconds since the Unix epoch).
    pub started_at: u64,
    /// The sha256 of the image it was started from.
    pub image_hash: String,
}
