//! The replicated cluster state and the pure function that applies a command.
//!
//! Every replica applies the same commands in the same order, so `apply` must
//! be deterministic: no clock, no randomness, no I/O. A command that is not
//! valid against the current state is *rejected* (its result says why) and
//! leaves the state untouched; it is still a committed log entry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use labspan_proto::checkpoint::Checkpoint;
use labspan_proto::codec::{self, CodecError};
use labspan_proto::lab::LabBundle;
use labspan_proto::msg::{LabOrigin, Role};
use serde::{Deserialize, Serialize};

mod bundles;
mod command;

pub use bundles::Bundles;
pub use command::{Applied, Command, CommandResult, Registration, Rejection};

/// Lowest VNI labspan hands out; lower ones are left to the site's own use.
pub const FIRST_VNI: u32 = 4096;
/// Highest VXLAN network identifier (24 bits).
pub const LAST_VNI: u32 = (1 << 24) - 1;

/// What a lab host offers to labs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub memory_mib: u64,
    /// vCPUs it runs for labs in all (its CPUs × its agent's overcommit).
    pub vcpus: u64,
}

/// A lab host, as registered by its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub capacity: Capacity,
    /// Free-form labels that placement hints select on.
    pub labels: BTreeSet<String>,
    /// Underlay address VXLAN packets to this host are sent to.
    pub vtep: IpAddr,
    /// False once heartbeats stopped (only transitions are logged).
    pub up: bool,
    /// Cordoned by an admin (`labspan host drain`): no new placements.
    #[serde(default)]
    pub cordoned: bool,
}

/// Where a lab is in its life: the wire type, so what the CLI matches on
/// is what the log holds.
pub use labspan_proto::msg::LabStatus;

/// A lab as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabRecord {
    /// The lab as submitted (opaque here: the lab file bundle, encoded by the CLI).
    pub spec: Vec<u8>,
    /// Segment key → VNI, stable for the life of the lab.
    pub vnis: BTreeMap<String, u32>,
    /// Node name → host name: every node of the spec, always.
    pub placement: BTreeMap<String, String>,
    pub status: LabStatus,
    /// Nodes being started on a new host after a host loss (cleared when
    /// the lab settles).
    pub moving: BTreeSet<String>,
    /// Who deployed the lab, from which file, and when.
    pub origin: Option<LabOrigin>,
    /// A live move of one of its nodes, recorded before anything is done:
    /// a new leader finishes or rolls back what it finds here.
    #[serde(default)]
    pub migration: Option<Box<Migration>>,
    /// Its checkpoints, by name.
    #[serde(default)]
    pub checkpoints: BTreeMap<String, Checkpoint>,
    /// A checkpoint or a reset in progress, recorded before any host is
    /// asked: a new leader ends what it finds here (see the coordinator's
    /// `service::checkpoints`).
    #[serde(default)]
    pub checkpoint_op: Option<Box<CheckpointOp>>,
    /// Node → the checkpoint it restarted from after its host was lost
    /// (`resilience.checkpoint_every`); a node that booted from its image
    /// after its last host loss is not here.
    #[serde(default)]
    pub restored_from: BTreeMap<String, String>,
}

/// A checkpoint or reset in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointOp {
    /// The checkpoint being taken, or reset to.
    pub name: String,
    pub kind: CheckpointOpKind,
}

/// What a [`CheckpointOp`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointOpKind {
    /// Taking a new checkpoint.
    Create,
    /// Bringing every VM back to an existing one.
    Reset,
}

/// A live move in progress: node, from, to, phase, and where its streams
/// meet (a port chosen by the leader that started it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub node: String,
    pub from: String,
    pub to: String,
    pub phase: MovePhase,
    /// RAM stream port on `to`'s VTEP address (NBD: the next one).
    pub port: u16,
}

/// How far a move got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovePhase {
    /// The destination is being readied; the source was not asked yet.
    Preparing,
    /// The source was asked to migrate the guest.
    Copying,
}

/// Everything the coordinators agree on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub hosts: BTreeMap<String, Host>,
    pub labs: BTreeMap<String, LabRecord>,
    /// VNI → (lab, segment) that holds it: the allocator's used set.
    pub vni_owners: BTreeMap<u32, (String, String)>,
    /// Join tokens by the SHA-256 (hex) of the token: the secret itself is
    /// never stored.
    pub tokens: BTreeMap<String, JoinToken>,
    /// Raft node id the next joining coordinator gets (0: not yet counted, 2 is next).
    pub next_node_id: u64,
    /// Coordinators being or already removed from the cluster: once such a
    /// name is no longer a member, a certificate naming it is refused,
    /// although the CA signed it. Joining again under the name admits it
    /// again.
    pub revoked: BTreeSet<String>,
    /// Each lab's spec, decoded: derived from `labs`, never serialized.
    #[serde(skip)]
    pub bundles: Bundles,
}

/// A one-time join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// What the joiner becomes.
    pub role: Role,
    /// Seconds since the Unix epoch after which the token is refused.
    pub expires_unix: u64,
    /// Name of the member that used it, once used.
    pub used_by: Option<String>,
}

impl ClusterState {
    /// The decoded bundle of lab `name`, if the lab exists.
    pub fn bundle(&self, name: &str) -> Option<Result<Arc<LabBundle>, CodecError>> {
        let rec = self.labs.get(name)?;
        Some(self.bundles.of(name, &rec.spec))
    }

    /// Decodes every lab again (after the labs were read from a snapshot).
    pub fn decode_bundles(&mut self) {
        self.bundles = Bundles::decode_all(&self.labs);
    }

    /// Every guest file the stored labs name, by sha256.
    pub fn file_hashes(&self) -> BTreeSet<String> {
        self.labs
            .keys()
            .filter_map(|name| self.bundle(name)?.ok())
            .flat_map(|b| {
                b.files
                    .values()
                    .map(|f| f.sha256.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Applies `cmd`; on rejection the state is unchanged.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::RegisterHost {
                name,
                capacity,
                labels,
                vtep,
            } => {
                self.register_host(name, *capacity, labels, *vtep);
                Ok(Applied::Done)
            }
            Command::RegisterHosts { hosts } => {
                for r in hosts {
                    self.register_host(&r.name, r.capacity, &r.labels, r.vtep);
                }
                Ok(Applied::Done)
            }
            Command::SetHostUp { name, up } => {
                let host = self
                    .hosts
                    .get_mut(name)
                    .ok_or_else(|| Rejection::UnknownHost(name.clone()))?;
                host.up = *up;
                Ok(Applied::Done)
            }
            Command::RemoveHost { name } => self.remove_host(name),
            Command::DeployLab {
                name,
                spec,
                segments,
                placement,
                origin,
            } => self.deploy_lab(name, spec, segments, placement, origin),
            Command::MoveNodes {
                lab,
                placement,
                moved,
                restore,
            } => self.move_nodes(lab, placement, moved, restore),
            Command::SetLabStatus { lab, status } => {
                let rec = self.lab_mut(lab)?;
                if *status != LabStatus::Deploying {
                    rec.moving.clear();
                }
                rec.status = status.clone();
                Ok(Applied::Done)
            }
            Command::AddToken {
                hash,
                role,
                expires_unix,
            } => {
                let token = JoinToken {
                    role: *role,
                    expires_unix: *expires_unix,
                    used_by: None,
                };
                self.tokens.insert(hash.clone(), token);
                Ok(Applied::Done)
            }
            Command::UseToken {
                hash,
                name,
                now_unix,
            } => self.use_token(hash, name, *now_unix),
            Command::RevokeCoordinator { name } => {
                self.revoked.insert(name.clone());
                Ok(Applied::Done)
            }
            Command::BeginMove {
                lab,
                node,
                to,
                port,
            } => self.begin_move(lab, node, to, *port),
            Command::SetMovePhase { lab, phase } => {
                let rec = self.lab_mut(lab)?;
                let m = rec
                    .migration
                    .as_mut()
                    .ok_or_else(|| Rejection::NoMove(lab.clone()))?;
                m.phase = *phase;
                Ok(Applied::Done)
            }
            Command::EndMove { lab, done } => {
                let rec = self.lab_mut(lab)?;
                let m = rec
                    .migration
                    .take()
                    .ok_or_else(|| Rejection::NoMove(lab.clone()))?;
                if *done {
                    let Migration { node, to, .. } = *m;
                    rec.placement.insert(node, to);
                }
                Ok(Applied::Done)
            }
            Command::BeginCheckpoint { lab, name, kind } => self.begin_checkpoint(lab, name, *kind),
            Command::EndCheckpoint { lab, checkpoint } => {
                let rec = self.lab_mut(lab)?;
                rec.checkpoint_op
                    .take()
                    .ok_or_else(|| Rejection::NoCheckpointOp(lab.clone()))?;
                if let Some(c) = checkpoint {
                    rec.checkpoints.insert(c.name.clone(), c.as_ref().clone());
                }
                Ok(Applied::Done)
            }
            Command::DeleteCheckpoint { lab, name } => {
                let rec = self.lab_mut(lab)?;
                if let Some(op) = &rec.checkpoint_op {
                    if op.name == *name {
                        return Err(in_progress(lab, op));
                    }
                }
                rec.checkpoints
                    .remove(name)
                    .map(|_| Applied::Done)
                    .ok_or_else(|| unknown_checkpoint(lab, name, rec))
            }
            Command::CheckpointCopied {
                lab,
                name,
                node,
                host,
            } => {
                let rec = self.lab_mut(lab)?;
                let share = rec
                    .checkpoints
                    .get_mut(name)
                    .and_then(|c| c.nodes.get_mut(node));
                // Deleted meanwhile: the copy went with it.
                if let Some(share) = share {
                    if !share.copies.contains(host) {
                        share.copies.push(host.clone());
                    }
                }
                Ok(Applied::Done)
            }
            Command::Cordon { name, cordoned } => {
                let host = self
                    .hosts
                    .get_mut(name)
                    .ok_or_else(|| Rejection::UnknownHost(name.clone()))?;
                host.cordoned = *cordoned;
                Ok(Applied::Done)
            }
            Command::DeleteLab { name } => {
                self.labs
                    .remove(name)
                    .ok_or_else(|| Rejection::UnknownLab(name.clone()))?;
                self.bundles.0.remove(name);
                self.vni_owners.retain(|_, (lab, _)| lab != name);
                Ok(Applied::Done)
            }
        }
    }

    /// Adds host `name` or updates what it offers; it keeps its up/down
    /// mark and its cordon (a new host is up).
    fn register_host(
        &mut self,
        name: &str,
        capacity: Capacity,
        labels: &BTreeSet<String>,
        vtep: IpAddr,
    ) {
        let up = self.hosts.get(name).is_none_or(|h| h.up);
        let cordoned = self.hosts.get(name).is_some_and(|h| h.cordoned);
        let host = Host {
            capacity,
            labels: labels.clone(),
            vtep,
            up,
            cordoned,
        };
        self.hosts.insert(name.to_string(), host);
    }

    fn begin_move(&mut self, lab: &str, node: &str, to: &str, port: u16) -> CommandResult {
        if !self.hosts.contains_key(to) {
            return Err(Rejection::UnknownHost(to.to_string()));
        }
        let rec = self.lab_mut(lab)?;
        if let Some(m) = &rec.migration {
            return Err(Rejection::MoveInProgress {
                lab: lab.to_string(),
                node: m.node.clone(),
            });
        }
        if let Some(op) = &rec.checkpoint_op {
            return Err(in_progress(lab, op));
        }
        let from = rec
            .placement
            .get(node)
            .cloned()
            .ok_or_else(|| Rejection::BadPlacement {
                lab: lab.to_string(),
                reason: format!("node {node:?} is not in the lab"),
            })?;
        if from == to {
            return Err(Rejection::BadPlacement {
                lab: lab.to_string(),
                reason: format!("node {node:?} already runs on host {to:?}"),
            });
        }
        rec.migration = Some(Box::new(Migration {
            node: node.to_string(),
            from,
            to: to.to_string(),
            phase: MovePhase::Preparing,
            port,
        }));
        Ok(Applied::Done)
    }

    fn begin_checkpoint(&mut self, lab: &str, name: &str, kind: CheckpointOpKind) -> CommandResult {
        let rec = self.lab_mut(lab)?;
        if let Some(m) = &rec.migration {
            return Err(Rejection::MoveInProgress {
                lab: lab.to_string(),
                node: m.node.clone(),
            });
        }
        if let Some(op) = &rec.checkpoint_op {
            return Err(in_progress(lab, op));
        }
        let exists = rec.checkpoints.contains_key(name);
        match kind {
            CheckpointOpKind::Create if exists => {
                return Err(Rejection::CheckpointExists {
                    lab: lab.to_string(),
                    name: name.to_string(),
                })
            }
            CheckpointOpKind::Reset if !exists => return Err(unknown_checkpoint(lab, name, rec)),
            _ => {}
        }
        rec.checkpoint_op = Some(Box::new(CheckpointOp {
            name: name.to_string(),
            kind,
        }));
        Ok(Applied::Done)
    }

    fn use_token(&mut self, hash: &str, name: &str, now_unix: u64) -> CommandResult {
        let token = self.tokens.get(hash).ok_or(Rejection::UnknownToken)?;
        if let Some(by) = &token.used_by {
            return Err(Rejection::TokenUsed(by.clone()));
        }
        if now_unix > token.expires_unix {
            return Err(Rejection::TokenExpired);
        }
        let role = token.role;
        let node_id = (role == Role::Coordinator).then(|| {
            let id = self.next_node_id.max(2);
            self.next_node_id = id + 1;
            id
        });
        if let Some(token) = self.tokens.get_mut(hash) {
            token.used_by = Some(name.to_string());
        }
        if role == Role::Coordinator {
            self.revoked.remove(name);
        }
        Ok(Applied::TokenUsed { role, node_id })
    }

    fn lab_mut(&mut self, name: &str) -> Result<&mut LabRecord, Rejection> {
        self.labs
            .get_mut(name)
            .ok_or_else(|| Rejection::UnknownLab(name.to_string()))
    }

    fn remove_host(&mut self, name: &str) -> CommandResult {
        if !self.hosts.contains_key(name) {
            return Err(Rejection::UnknownHost(name.to_string()));
        }
        let user = self
            .labs
            .iter()
            .find(|(_, rec)| rec.placement.values().any(|h| h == name));
        if let Some((lab, _)) = user {
            return Err(Rejection::HostInUse {
                host: name.to_string(),
                lab: lab.clone(),
            });
        }
        self.hosts.remove(name);
        Ok(Applied::Done)
    }

    fn deploy_lab(
        &mut self,
        name: &str,
        spec: &[u8],
        segments: &BTreeSet<String>,
        placement: &BTreeMap<String, String>,
        origin: &Option<LabOrigin>,
    ) -> CommandResult {
        let bundle = decode_spec(name, spec)?;
        let nodes = bundle.lab.nodes.keys().cloned().collect();
        self.check_placement(name, &nodes, placement)?;
        let old_vnis = self
            .labs
            .get(name)
            .map(|r| r.vnis.clone())
            .unwrap_or_default();
        let kept: BTreeMap<String, u32> = old_vnis
            .into_iter()
            .filter(|(seg, _)| segments.contains(seg))
            .collect();
        let new_segments = segments.iter().filter(|s| !kept.contains_key(*s));
        // Allocate before freeing so a refused deploy leaves everything as it was.
        let mut vnis = self.allocate(name, new_segments)?;
        vnis.extend(kept);
        self.vni_owners
            .retain(|vni, (lab, _)| lab != name || vnis.values().any(|v| v == vni));
        // An edit keeps the lab's checkpoints (a reset checks they still fit).
        let (checkpoints, checkpoint_op, mut restored_from) = self
            .labs
            .get(name)
            .map(|r| {
                let r = r.clone();
                (r.checkpoints, r.checkpoint_op, r.restored_from)
            })
            .unwrap_or_default();
        restored_from.retain(|node, _| placement.contains_key(node));
        let record = LabRecord {
            spec: spec.to_vec(),
            vnis: vnis.clone(),
            placement: placement.clone(),
            status: LabStatus::Deploying,
            moving: BTreeSet::new(),
            origin: origin.clone(),
            migration: None,
            checkpoints,
            checkpoint_op,
            restored_from,
        };
        self.bundles.insert(name, &record.spec, bundle);
        self.labs.insert(name.to_string(), record);
        Ok(Applied::Vnis(vnis))
    }

    fn move_nodes(
        &mut self,
        lab: &str,
        placement: &BTreeMap<String, String>,
        moved: &BTreeSet<String>,
        restore: &BTreeMap<String, String>,
    ) -> CommandResult {
        let rec = self
            .labs
            .get(lab)
            .ok_or_else(|| Rejection::UnknownLab(lab.to_string()))?;
        let nodes: BTreeSet<String> = rec.placement.keys().cloned().collect();
        self.check_placement(lab, &nodes, placement)?;
        if let Some(node) = moved.iter().find(|n| !nodes.contains(*n)) {
            return Err(Rejection::BadPlacement {
                lab: lab.to_string(),
                reason: format!("moved node {node:?} is not in the lab"),
            });
        }
        let host_up = |node: &String| {
            let host = rec.placement.get(node)?;
            self.hosts
                .get(host)
                .is_some_and(|h| h.up)
                .then(|| (node.clone(), host.clone()))
        };
        if let Some((node, host)) = moved.iter().find_map(host_up) {
            return Err(Rejection::HostBackUp {
                lab: lab.to_string(),
                node,
                host,
            });
        }
        if let Some(node) = restore.keys().find(|n| !moved.contains(*n)) {
            return Err(Rejection::BadPlacement {
                lab: lab.to_string(),
                reason: format!("node {node:?} restarts from a checkpoint but is not moved"),
            });
        }
        let rec = self.lab_mut(lab)?;
        rec.placement = placement.clone();
        rec.status = LabStatus::Deploying;
        rec.moving = moved.clone();
        for node in moved {
            match restore.get(node) {
                Some(name) => rec.restored_from.insert(node.clone(), name.clone()),
                None => rec.restored_from.remove(node),
            };
        }
        Ok(Applied::Done)
    }

    /// A placement must name exactly the lab's nodes, each on a known host:
    /// then every lab in the state can be planned.
    fn check_placement(
        &self,
        lab: &str,
        nodes: &BTreeSet<String>,
        placement: &BTreeMap<String, String>,
    ) -> Result<(), Rejection> {
        if let Some((node, host)) = placement.iter().find(|(_, h)| !self.hosts.contains_key(*h)) {
            return Err(Rejection::PlacementOnUnknownHost {
                lab: lab.to_string(),
                node: node.clone(),
                host: host.clone(),
            });
        }
        let placed: BTreeSet<&String> = placement.keys().collect();
        if placed != nodes.iter().collect() {
            let missing: Vec<&String> = nodes.iter().filter(|n| !placed.contains(n)).collect();
            let extra: Vec<&&String> = placed.iter().filter(|n| !nodes.contains(**n)).collect();
            return Err(Rejection::BadPlacement {
                lab: lab.to_string(),
                reason: format!(
                    "the placement must name every node once (unplaced: {missing:?}, unknown: {extra:?})"
                ),
            });
        }
        Ok(())
    }

    /// Gives each of `segments` of `lab` the lowest free VNI, all or none.
    fn allocate<'a>(
        &mut self,
        lab: &str,
        segments: impl Iterator<Item = &'a String>,
    ) -> Result<BTreeMap<String, u32>, Rejection> {
        let segments: Vec<&String> = segments.collect();
        let free = lowest_free(&self.vni_owners, segments.len());
        if free.len() < segments.len() {
            return Err(Rejection::VnisExhausted {
                lab: lab.to_string(),
                needed: segments.len(),
                free: free.len(),
            });
        }
        let mut out = BTreeMap::new();
        for (seg, vni) in segments.into_iter().zip(free) {
            self.vni_owners.insert(vni, (lab.to_string(), seg.clone()));
            out.insert(seg.clone(), vni);
        }
        Ok(out)
    }
}

fn in_progress(lab: &str, op: &CheckpointOp) -> Rejection {
    Rejection::CheckpointInProgress {
        lab: lab.to_string(),
        name: op.name.clone(),
        doing: match op.kind {
            CheckpointOpKind::Create => "taking",
            CheckpointOpKind::Reset => "being reset to",
        }
        .to_string(),
    }
}

fn unknown_checkpoint(lab: &str, name: &str, rec: &LabRecord) -> Rejection {
    Rejection::UnknownCheckpoint {
        lab: lab.to_string(),
        name: name.to_string(),
        hint: labspan_proto::suggest::hint(
            name,
            rec.checkpoints.keys().map(String::as_str),
            "its checkpoints",
        ),
    }
}

/// The lab bundle `spec`.
fn decode_spec(lab: &str, spec: &[u8]) -> Result<Arc<LabBundle>, Rejection> {
    codec::decode::<LabBundle>(spec)
        .map(Arc::new)
        .map_err(|e| Rejection::BadSpec {
            lab: lab.to_string(),
            reason: e.to_string(),
        })
}

/// Up to `n` lowest VNIs in `FIRST_VNI..=LAST_VNI` not in `used`.
fn lowest_free(used: &BTreeMap<u32, (String, String)>, n: usize) -> Vec<u32> {
    lowest_free_in(used, n, FIRST_VNI, LAST_VNI)
}

/// Up to `n` lowest values in `first..=last` not in `used`.
fn lowest_free_in(
    used: &BTreeMap<u32, (String, String)>,
    n: usize,
    first: u32,
    last: u32,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(n.min(1024));
    let mut used_iter = used.keys().copied().peekable();
    let mut candidate = first;
    while out.len() < n && candidate <= last {
        // Skip used VNIs below the candidate, then test it.
        while used_iter.next_if(|&u| u < candidate).is_some() {}
        if used_iter.next_if_eq(&candidate).is_none() {
            out.push(candidate);
        }
        candidate += 1;
    }
    out
}

#[cfg(test)]
mod tests;
