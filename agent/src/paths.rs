//! Where the agent keeps its state: one folder, `$LABSPAN_STATE` or
//! `/var/lib/labspan`, holding images, lab records and one folder per VM.

use std::path::{Path, PathBuf};

/// Default state folder.
pub const DEFAULT_STATE: &str = "/var/lib/labspan";

/// Serial console socket in a VM's folder.
pub const CONSOLE_SOCKET: &str = "console.sock";

/// The state folder: `$LABSPAN_STATE`, else `/var/lib/labspan`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("LABSPAN_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE))
}

/// The interface being created, written down first (a kill between the
/// kernel's creation and the ownership alias must not orphan it).
pub fn net_journal(state: &Path) -> PathBuf {
    state.join("net-journal")
}

/// Folder of every VM of `lab`.
pub fn lab_vms_dir(state: &Path, lab: &str) -> PathBuf {
    state.join("vms").join(lab)
}

/// Folder of one VM: pidfile, sockets, overlay.
pub fn vm_dir(state: &Path, lab: &str, node: &str) -> PathBuf {
    lab_vms_dir(state, lab).join(node)
}

/// Folder of every checkpoint of `lab` on this host.
pub fn lab_checkpoints_dir(state: &Path, lab: &str) -> PathBuf {
    state.join("checkpoints").join(lab)
}

/// Folder of one node's share of checkpoint `name` of `lab`.
pub fn checkpoint_dir(state: &Path, lab: &str, name: &str, node: &str) -> PathBuf {
    lab_checkpoints_dir(state, lab).join(name).join(node)
}

/// Folder of a node's frozen disk layers: every checkpoint's disk, and the
/// running overlay, has its backing chain in here (it goes with the lab).
pub fn layers_dir(state: &Path, lab: &str, node: &str) -> PathBuf {
    lab_checkpoints_dir(state, lab).join(".layers").join(node)
}
