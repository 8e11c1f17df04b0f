//! One step of a reconcile: what the diff decides and an `NetOps` carries out.

use std::fmt;
use std::net::IpAddr;

use labspan_proto::lab::Impairment;

use super::state::LinkKind;

/// One change to the host's interfaces.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Delete an interface labspan owns.
    Delete {
        name: String,
    },
    /// Create an interface of `kind` (bridge, tap or VXLAN) with its alias
    /// and MTU, administratively down and on no bridge.
    Create {
        name: String,
        kind: LinkKind,
        alias: String,
        mtu: u32,
    },
    /// Set the alias (the ownership marker) of an owned interface.
    SetAlias {
        name: String,
        alias: String,
    },
    SetMtu {
        name: String,
        mtu: u32,
    },
    /// Make the interface a port of `master`, or of no bridge.
    SetMaster {
        name: String,
        master: Option<String>,
    },
    SetUp {
        name: String,
        up: bool,
    },
    /// Add an all-zeros FDB entry towards a remote VTEP (`self`, `append`).
    FdbAppend {
        device: String,
        remote: IpAddr,
    },
    /// Remove the all-zeros FDB entry towards one remote VTEP.
    FdbDelete {
        device: String,
        remote: IpAddr,
    },
    /// Apply an impairment on a tap's root qdisc (none: remove it).
    SetImpairment {
        name: String,
        /// The lab's name for the tap's NIC (`node:nic`), for errors.
        nic: String,
        impairment: Impairment,
    },
}

impl Action {
    /// The interface the action changes.
    pub fn object(&self) -> &str {
        match self {
            Action::Delete { name }
            | Action::Create { name, .. }
            | Action::SetAlias { name, .. }
            | Action::SetMtu { name, .. }
            | Action::SetMaster { name, .. }
            | Action::SetUp { name, .. }
            | Action::SetImpairment { name, .. } => name,
            Action::FdbAppend { device, .. } | Action::FdbDelete { device, .. } => device,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Delete { name } => write!(f, "delete {name}"),
            Action::Create {
                name,
                kind,
                alias,
                mtu,
            } => {
                write!(f, "create {name} ({kind}, mtu {mtu}, alias \"{alias}\")")
            }
            Action::SetAlias { name, alias } => write!(f, "set {name} alias \"{alias}\""),
            Action::SetMtu { name, mtu } => write!(f, "set {name} mtu {mtu}"),
            Action::SetMaster {
                name,
                master: Some(m),
            } => write!(f, "set {name} master {m}"),
            Action::SetMaster { name, master: None } => write!(f, "set {name} nomaster"),
            Action::SetUp { name, up } => {
                write!(f, "set {name} {}", if *up { "up" } else { "down" })
            }
            Action::FdbAppend { device, remote } => {
                write!(
                    f,
                    "fdb append 00:00:00:00:00:00 dev {device} dst {remote} self"
                )
            }
            Action::FdbDelete { device, remote } => {
                write!(
                    f,
                    "fdb del 00:00:00:00:00:00 dev {device} dst {remote} self"
                )
            }
            Action::SetImpairment {
                name, impairment, ..
            } => {
                write!(f, "set {name} impairment {impairment:?}")
            }
        }
    }
}
