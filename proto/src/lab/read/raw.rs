//! The raw lab: what the walk read, with where each value was written.

use std::collections::BTreeMap;

use crate::lab::model::{Check, Endpoint, HostSelector, Impairment, Node, Resilience};
use crate::yaml::Pos;

/// A reference to a node by name, where it was written.
pub(crate) struct Ref {
    pub name: String,
    pub pos: Pos,
    pub path: String,
}

/// `node:nic` where it was written.
pub(crate) struct RawEndpoint {
    pub ep: Endpoint,
    pub pos: Pos,
    /// Index in its list; the path is `{list path}[index]`, built only on error.
    pub index: usize,
}

/// A node with the positions of the values checks point at.
pub(crate) struct RawNode {
    pub name: String,
    pub node: Node,
    /// NIC name → position and path of each `ip` entry, parallel to `Nic::ip`.
    pub ip_pos: BTreeMap<String, Vec<(Pos, String)>>,
    /// Guest path → position of the `files` entry.
    pub file_pos: BTreeMap<String, Pos>,
}

/// A link as written (any number of endpoints, checked later).
pub(crate) struct RawLink {
    pub pos: Pos,
    pub path: String,
    /// Path of the endpoint list: `links[0]` or `links[0].endpoints`.
    pub ends_path: String,
    /// The endpoints that parsed.
    pub ends: Vec<RawEndpoint>,
    /// How many endpoints were written; `None` when the list was unreadable
    /// (already reported), so the count is not checked again.
    pub written: Option<usize>,
    pub impairment: Impairment,
}

/// A LAN as written.
pub(crate) struct RawLan {
    pub name: String,
    pub pos: Pos,
    pub path: String,
    pub members: Vec<RawEndpoint>,
}

/// A `together` or `spread` group.
pub(crate) struct RawGroup {
    pub pos: Pos,
    pub path: String,
    pub members: Vec<Ref>,
}

/// A `verify` entry and the node names it refers to.
pub(crate) struct RawCheck {
    pub check: Check,
    /// Names that must be nodes (`from`, `node`).
    pub nodes: Vec<Ref>,
    /// `ping.to` when it is not an IP address, so it must be a node.
    pub to_node: Option<Ref>,
}

/// The whole lab as written, in file order.
#[derive(Default)]
pub(crate) struct RawLab {
    pub name: String,
    pub nodes: Vec<RawNode>,
    pub links: Vec<RawLink>,
    pub lans: Vec<RawLan>,
    pub pins: Vec<(Ref, HostSelector)>,
    pub together: Vec<RawGroup>,
    pub spread: Vec<RawGroup>,
    pub verify: Vec<RawCheck>,
    pub resilience: Resilience,
}
