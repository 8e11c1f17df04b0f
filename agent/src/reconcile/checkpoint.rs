//! This host's share of a lab checkpoint or reset: every VM of
//! the lab here paused at the leader's deadline, saved, resumed; or
//! restarted paused from a checkpoint, then resumed at the leader's
//! deadline. The VM-level steps are in `vm::checkpoint`.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use labspan_proto::checkpoint::{CheckpointFile, NodeCheckpoint};

use super::launch::vm_config;
use super::{Agent, AgentError};
use crate::paths;
use crate::vm::{self, checkpoint as ck};
use labspan_image::digest::hash_file;

/// The longest wait for a deadline the leader set (a farther one is a
/// clock that disagrees: the pause happens at once).
const MAX_DEADLINE_WAIT: Duration = Duration::from_secs(10);

/// In a checkpoint's folder: files of it were given by `labspan load`,
/// which records the checkpoint only once every host has its files. Such
/// a folder is kept when this host is told which checkpoints to keep
/// ([`Agent::checkpoint_keep`]) until the checkpoint is loaded here (the
/// load's reset, once it is recorded); a load that fails takes its lab
/// down, and the folder with it.
const GIVEN_FILE: &str = ".given";

/// Marks checkpoint `name` of `lab` as given by a load, before its files
/// are written: a host told meanwhile which checkpoints to keep keeps it.
pub fn mark_given(state: &std::path::Path, lab: &str, name: &str) -> std::io::Result<()> {
    let mark = given_mark(state, lab, name);
    if let Some(dir) = mark.parent() {
        fs::create_dir_all(dir)?;
    }
    labspan_proto::atomic::write(&mark, b"")
}

/// The [`GIVEN_FILE`] mark of checkpoint `name` of `lab`.
fn given_mark(state: &std::path::Path, lab: &str, name: &str) -> std::path::PathBuf {
    paths::lab_checkpoints_dir(state, lab)
        .join(name)
        .join(GIVEN_FILE)
}

/// What this host saved of a checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedShare {
    pub nodes: BTreeMap<String, NodeCheckpoint>,
    /// When the first VM paused and the last resumed (Unix ms).
    pub paused_at_unix_ms: u64,
    pub resumed_at_unix_ms: u64,
}

/// Unix time in ms on this host's clock.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn wait_until(unix_ms: u64) {
    let wait = Duration::from_millis(unix_ms.saturating_sub(now_unix_ms()));
    tokio::time::sleep(wait.min(MAX_DEADLINE_WAIT)).await;
}

impl Agent {
    fn checkpoint_err(&self, lab: &str, why: impl Into<String>) -> AgentError {
        AgentError::Checkpoint {
            lab: lab.to_string(),
            why: why.into(),
        }
    }

    /// The nodes of `lab` this host's last plan runs.
    fn planned_nodes(&self, lab: &str) -> Vec<String> {
        self.last_plan()
            .into_iter()
            .flat_map(|p| p.labs)
            .filter(|l| l.lab == lab)
            .flat_map(|l| l.vms.into_iter().map(|v| v.name))
            .collect()
    }

    /// Pauses every VM of `lab` here at `pause_at_unix_ms`, saves each as
    /// checkpoint `name`, resumes each as soon as it is saved. On failure
    /// every guest runs on and this host keeps nothing of `name`.
    pub async fn checkpoint_save(
        &self,
        lab: &str,
        name: &str,
        pause_at_unix_ms: u64,
    ) -> Result<SavedShare, AgentError> {
        let _one_at_a_time = self.checkpointing.lock().await;
        let mut vms = Vec::new();
        for node in self.planned_nodes(lab) {
            let dir = paths::vm_dir(&self.state, lab, &node);
            match vm::adopt(&dir).map_err(|cause| AgentError::vm(lab, cause))? {
                Some(v) => vms.push((node, v)),
                None => {
                    return Err(self.checkpoint_err(
                        lab,
                        format!("node \"{node}\" has no running QEMU on this host"),
                    ))
                }
            }
        }
        if vms.is_empty() {
            return Err(self.checkpoint_err(lab, "this host runs none of its nodes"));
        }
        let mut sessions = Vec::new();
        for (_, v) in &vms {
            sessions.push(
                ck::session(v)
                    .await
                    .map_err(|e| AgentError::moving(lab, e))?,
            );
        }
        wait_until(pause_at_unix_ms).await;
        let paused_at = now_unix_ms();
        let paused = join_all(sessions.iter_mut().map(ck::pause)).await;
        if let Some(Err(e)) = paused.into_iter().find(Result::is_err) {
            join_all(sessions.iter_mut().map(ck::resume)).await;
            return Err(AgentError::moving(lab, e));
        }
        let saves = sessions
            .iter_mut()
            .zip(&vms)
            .map(|(s, (node, v))| async move {
                let to = paths::checkpoint_dir(&self.state, lab, name, node);
                let layers = paths::layers_dir(&self.state, lab, node);
                let saved = ck::save(s, v, &to, &layers).await;
                let resumed = now_unix_ms();
                let saved = match saved {
                    Ok(saved) => ck::keep_disk(node, saved, &to).await,
                    Err(e) => Err(e),
                };
                (saved, resumed)
            });
        let saved = join_all(saves).await;
        let resumed_at = saved.iter().map(|(_, t)| *t).max().unwrap_or(paused_at);
        let mut nodes = BTreeMap::new();
        let mut failure = None;
        for ((node, _), (result, at)) in vms.iter().zip(saved) {
            match result {
                Ok(files) => {
                    nodes.insert(node.clone(), (files, at.saturating_sub(paused_at)));
                }
                Err(e) => failure = failure.or(Some(AgentError::moving(lab, e))),
            }
        }
        if let Some(e) = failure {
            // The save's own error says why; a drop that fails as well is
            // logged (the leader asks again, and a host back from a cut
            // is told which checkpoints to keep).
            if let Err(dropping) = self.checkpoint_drop(lab, name) {
                tracing::warn!(lab, name, error = %dropping, "failed checkpoint not removed");
            }
            return Err(e);
        }
        let mut share = SavedShare {
            nodes: BTreeMap::new(),
            paused_at_unix_ms: paused_at,
            resumed_at_unix_ms: resumed_at,
        };
        for (node, (saved, paused_ms)) in nodes {
            let mut files = vec![("ram", saved.ram)];
            files.extend(saved.disk.map(|d| ("disk", d)));
            let hashed = tokio::task::spawn_blocking(move || {
                files
                    .into_iter()
                    .map(|(kind, path)| {
                        hash_file(&path).map(|(bytes, sha256)| CheckpointFile {
                            kind: kind.to_string(),
                            sha256,
                            bytes,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| self.checkpoint_err(lab, format!("hashing its files: {e}")))?;
            let files = match hashed {
                Ok(f) => f,
                Err(e) => {
                    self.checkpoint_drop(lab, name)?;
                    return Err(self.checkpoint_err(lab, e.to_string()));
                }
            };
            share.nodes.insert(
                node,
                NodeCheckpoint {
                    host: String::new(),
                    files,
                    paused_ms,
                    copies: Vec::new(),
                },
            );
        }
        Ok(share)
    }

    /// Removes the checkpoints of every lab this host no longer runs a
    /// node of (a lab that went down, or moved away), but those it keeps
    /// copies of for other hosts.
    pub(super) fn prune_checkpoints(
        &self,
        plan: &labspan_proto::plan::HostPlan,
    ) -> Result<(), AgentError> {
        let root = self.state.join("checkpoints");
        let Ok(labs) = fs::read_dir(&root) else {
            return Ok(());
        };
        for entry in labs.flatten() {
            let lab = entry.file_name().to_string_lossy().into_owned();
            if plan.labs.iter().any(|l| l.lab == lab) || plan.kept_checkpoints.contains(&lab) {
                continue;
            }
            let dir = entry.path();
            fs::remove_dir_all(&dir).map_err(|cause| AgentError::State {
                what: "removing",
                path: dir,
                cause,
            })?;
        }
        Ok(())
    }

    /// Removes what this host holds of the checkpoints of `labs` that the
    /// cluster does not record (lab → checkpoint → nodes this host holds):
    /// a checkpoint that failed or was deleted while this host was cut off
    /// (the leader's drop could not reach it), a node's share it does not
    /// hold, an unfinished copy (`*.partial`, left by an agent that ended in
    /// the middle of one). The layer store stays: running disks sit on it,
    /// and so does a checkpoint a load is giving this host, not recorded
    /// yet ([`mark_given`]).
    pub fn checkpoint_keep(
        &self,
        labs: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
    ) -> Result<(), AgentError> {
        let remove = |path: &std::path::Path| {
            let done = match path.is_dir() {
                true => fs::remove_dir_all(path),
                false => fs::remove_file(path),
            };
            match done {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::State {
                    what: "removing",
                    path: path.to_path_buf(),
                    cause: e,
                }),
                _ => {
                    tracing::info!(path = %path.display(), "removed checkpoint files the cluster does not record");
                    Ok(())
                }
            }
        };
        for (lab, keep) in labs {
            let Ok(names) = fs::read_dir(paths::lab_checkpoints_dir(&self.state, lab)) else {
                continue;
            };
            for name in names.flatten() {
                let file_name = name.file_name().to_string_lossy().into_owned();
                // `.layers` (no checkpoint name starts with a dot), and
                // nothing that is not a checkpoint's folder.
                if file_name.starts_with('.') || !name.path().is_dir() {
                    continue;
                }
                let Some(nodes) = keep.get(&file_name) else {
                    if !name.path().join(GIVEN_FILE).exists() {
                        remove(&name.path())?;
                    }
                    continue;
                };
                for node in fs::read_dir(name.path()).into_iter().flatten().flatten() {
                    let node_name = node.file_name().to_string_lossy().into_owned();
                    if node_name.starts_with('.') {
                        continue;
                    }
                    if !nodes.contains(&node_name) {
                        remove(&node.path())?;
                        continue;
                    }
                    for file in fs::read_dir(node.path()).into_iter().flatten().flatten() {
                        if file.path().extension().is_some_and(|e| e == "partial") {
                            remove(&file.path())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes checkpoint `name` of `lab` from this host. Disk layers stay
    /// in the layer store: later disks are backed by them.
    pub fn checkpoint_drop(&self, lab: &str, name: &str) -> Result<(), AgentError> {
        let dir = paths::lab_checkpoints_dir(&self.state, lab).join(name);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::State {
                what: "removing",
                path: dir,
                cause: e,
            }),
            _ => Ok(()),
        }
    }

    /// Restarts `nodes` of `lab` here from checkpoint `name`, paused: each
    /// QEMU is ended, launched again as the last plan says with `-S
    /// -incoming`, and loads the saved state. Disks go back to the
    /// checkpoint's layer.
    pub async fn checkpoint_load(
        &self,
        lab: &str,
        name: &str,
        nodes: &[String],
    ) -> Result<(), AgentError> {
        let _one_at_a_time = self.checkpointing.lock().await;
        let plan = self
            .last_plan()
            .ok_or_else(|| self.checkpoint_err(lab, "this host has no plan yet"))?;
        let images = self.resolve_images(&plan)?;
        let lab_plan = plan
            .labs
            .iter()
            .find(|l| l.lab == lab)
            .ok_or_else(|| self.checkpoint_err(lab, "this host runs none of its nodes"))?;
        let default_accel = self.accel(&images).await?;
        let images = &images;
        let loads = nodes.iter().map(|node| async move {
            let vm_plan = lab_plan
                .vms
                .iter()
                .find(|v| v.name == *node)
                .ok_or_else(|| {
                    self.checkpoint_err(lab, format!("node \"{node}\" is not planned on this host"))
                })?;
            let image = images
                .get(&(lab.to_string(), node.clone()))
                .ok_or_else(|| self.checkpoint_err(lab, format!("node \"{node}\": no image")))?;
            let from = paths::checkpoint_dir(&self.state, lab, name, node);
            let ram = from.join(ck::RAM_FILE);
            if !ram.exists() {
                return Err(self.checkpoint_err(
                    lab,
                    format!(
                        "node \"{node}\": checkpoint \"{name}\" is not on this host ({} is missing)",
                        ram.display()
                    ),
                ));
            }
            // The running overlay goes over the layer store's link: it
            // outlives this checkpoint, which may be deleted.
            let layer = match image.disk_path() {
                Some(base) => {
                    let layers = paths::layers_dir(&self.state, lab, node);
                    let disk = from.join(ck::DISK_FILE);
                    Some(
                        ck::layer_of(node, &disk, &layers, &base)
                            .map_err(|e| AgentError::moving(lab, e))?,
                    )
                }
                None => None,
            };
            let dir = paths::vm_dir(&self.state, lab, node);
            // The same accelerator as it ran with: the saved state fits it.
            let accel = match vm::adopt(&dir).map_err(|c| AgentError::vm(lab, c))? {
                Some(old) => {
                    let accel = old.record().spec.accel;
                    old.halt().await.map_err(|c| AgentError::vm(lab, c))?;
                    accel
                }
                None => default_accel,
            };
            let cfg = vm_config(vm_plan, image, accel);
            let v = vm::launch_restored(&dir, &cfg, layer.as_deref(), &ram, name)
                .await
                .map_err(|e| AgentError::moving(lab, e))?;
            self.arrived_configured(vm_plan, &v)
        });
        join_all(loads)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        // Recorded (a reset loads only a recorded checkpoint): what a load
        // gave here is kept or dropped as any other checkpoint from now on.
        let given = given_mark(&self.state, lab, name);
        if let Err(e) = fs::remove_file(&given) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %given.display(), error = %e, "cannot remove a mark");
            }
        }
        Ok(())
    }

    /// Resumes every restored guest of `lab` here at `resume_at_unix_ms`,
    /// then sets each guest's clock through its guest agent; returns the
    /// guests whose clock could not be set.
    pub async fn checkpoint_resume(
        &self,
        lab: &str,
        resume_at_unix_ms: u64,
    ) -> Result<Vec<String>, AgentError> {
        let mut vms = Vec::new();
        for node in self.planned_nodes(lab) {
            let dir = paths::vm_dir(&self.state, lab, &node);
            if let Some(v) = vm::adopt(&dir).map_err(|cause| AgentError::vm(lab, cause))? {
                vms.push(v);
            }
        }
        let mut sessions = Vec::new();
        for v in &vms {
            sessions.push(
                ck::session(v)
                    .await
                    .map_err(|e| AgentError::moving(lab, e))?,
            );
        }
        wait_until(resume_at_unix_ms).await;
        let started = join_all(
            sessions
                .iter_mut()
                .zip(&vms)
                .map(|(s, v)| ck::start_loaded(s, v)),
        )
        .await;
        if let Some(Err(e)) = started.into_iter().find(Result::is_err) {
            return Err(AgentError::moving(lab, e));
        }
        let clocks = vms.iter().map(|v| async move {
            let has_agent = self
                .images
                .get(&v.record().image)
                .is_ok_and(|i| i.manifest.guest.guest_agent);
            match has_agent {
                true => ck::set_guest_time(v).await.err().map(|e| {
                    tracing::warn!(vm = v.name(), error = %e, "guest clock not set");
                    v.name().to_string()
                }),
                false => None,
            }
        });
        Ok(join_all(clocks).await.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)] // test support: failing loudly is its job

    use super::*;
    use crate::vm::accel::AccelChoice;

    fn file(state: &std::path::Path, path: &str) -> std::path::PathBuf {
        let path = state.join("checkpoints/lab").join(path);
        fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
        fs::write(&path, b"x").expect("write");
        path
    }

    #[test]
    fn a_returning_host_keeps_what_is_recorded_and_what_a_load_is_giving_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path();
        let agent = Agent::new(state.to_path_buf(), AccelChoice::Tcg);
        let kept = file(state, "rec/a/ram.state");
        let partial = file(state, "rec/a/ram.partial");
        let other_node = file(state, "rec/b/ram.state");
        let failed = file(state, "failed/a/ram.state");
        let layer = file(state, ".layers/a/layer-1.qcow2");
        mark_given(state, "lab", "loading").expect("mark");
        let given = file(state, "loading/a/ram.state");
        let keep = BTreeMap::from([(
            "lab".to_string(),
            BTreeMap::from([("rec".to_string(), vec!["a".to_string()])]),
        )]);
        agent.checkpoint_keep(&keep).expect("keep");
        assert!(kept.exists() && layer.exists() && given.exists());
        assert!(!partial.exists() && !other_node.exists() && !failed.exists());
        // A load that gave its files and was recorded: kept or not as any.
        fs::remove_file(given_mark(state, "lab", "loading")).expect("unmark");
        agent.checkpoint_keep(&keep).expect("keep");
        assert!(!given.exists());
    }
}
