//! Automatic checkpoints (`resilience: {checkpoint_every: 15m}` in the lab
//! file): the leader takes one of such a lab every period, through the
//! same path as `labspan checkpoint create` (one intent, a durable copy on
//! a second host), and keeps only the latest [`AUTO_KEEP`] of them.
//!
//! When the next one is due is read from the checkpoints recorded in Raft
//! (the newest automatic one's time plus the period), so a new leader
//! neither takes one twice nor forgets the schedule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use labspan_proto::msg::{LabStatus, Reply};

use super::super::{lock, Inner};
use crate::raft::{ClusterState, LabRecord};

/// Names of automatic checkpoints start with this; a user's may not.
pub const AUTO_PREFIX: &str = "auto-";

/// How many automatic checkpoints of a lab are kept (older ones are
/// deleted everywhere; a user's checkpoints are never pruned).
pub const AUTO_KEEP: usize = 3;

/// Labs whose turn was skipped (busy with a user's checkpoint, reset or
/// move), and until when (Unix seconds): they wait for the next period.
pub type Skipped = Arc<Mutex<HashMap<String, u64>>>;

/// Whether `name` is an automatic checkpoint's.
pub fn is_auto(name: &str) -> bool {
    name.starts_with(AUTO_PREFIX)
}

/// The name of an automatic checkpoint taken at `unix` (UTC):
/// `auto-YYYYMMDD-HHMMSS`.
pub fn auto_name(unix: u64) -> String {
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string();
    let digits: String = at.chars().filter(char::is_ascii_digit).collect();
    let (day, time) = digits.split_at(digits.len().min(8));
    format!("{AUTO_PREFIX}{day}-{time}")
}

/// The period of `lab`, if its file asks for automatic checkpoints.
pub fn period(state: &ClusterState, lab: &str) -> Option<Duration> {
    let bundle = state.bundle(lab)?.ok()?;
    bundle.lab.resilience.checkpoint_every
}

/// When the newest automatic checkpoint of `rec` was taken.
fn newest_auto(rec: &LabRecord) -> Option<u64> {
    (rec.checkpoints.values())
        .filter(|c| is_auto(&c.name))
        .map(|c| c.created_unix)
        .max()
}

/// The labs due for an automatic checkpoint at `now_unix`: those with a
/// period, running and not busy, whose newest automatic checkpoint is a
/// period old or that have none yet, and not skipped until later.
pub fn due(state: &ClusterState, now_unix: u64, skipped: &HashMap<String, u64>) -> Vec<String> {
    (state.labs.iter())
        .filter(|(name, rec)| {
            let Some(every) = period(state, name) else {
                return false;
            };
            let quiet = rec.status == LabStatus::Running
                && rec.checkpoint_op.is_none()
                && rec.migration.is_none()
                && rec.moving.is_empty()
                && (rec.placement.values()).all(|h| state.hosts.get(h).is_some_and(|h| h.up));
            let next = newest_auto(rec).map_or(0, |t| t.saturating_add(every.as_secs()));
            let skipped_until = skipped.get(*name).copied().unwrap_or(0);
            quiet && now_unix >= next && now_unix >= skipped_until
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The automatic checkpoints of `rec` to delete: all but the newest
/// [`AUTO_KEEP`].
pub fn to_prune(rec: &LabRecord) -> Vec<String> {
    let mut auto: Vec<(u64, &String)> = (rec.checkpoints.values())
        .filter(|c| is_auto(&c.name))
        .map(|c| (c.created_unix, &c.name))
        .collect();
    auto.sort();
    let extra = auto.len().saturating_sub(AUTO_KEEP);
    auto.into_iter()
        .take(extra)
        .map(|(_, n)| n.clone())
        .collect()
}

/// Leader, each monitor tick: takes the checkpoints that are due, then
/// prunes the older automatic ones of each lab it took one of.
pub(in crate::service) async fn run(inner: &Arc<Inner>, skipped: &Skipped) {
    let now = super::unix_ms() / 1000;
    let labs = {
        let skipped = lock(skipped);
        due(&inner.state.read().state, now, &skipped)
    };
    for lab in labs {
        if !inner.is_leader() {
            return;
        }
        let name = auto_name(now);
        match super::take(inner, &lab, &name).await {
            Reply::Checkpointed(c) => {
                tracing::info!(lab, name, copies = ?c.nodes.values().map(|n| &n.copies).collect::<Vec<_>>(), "automatic checkpoint taken");
            }
            Reply::Error(e) => {
                let every = period(&inner.state.read().state, &lab).unwrap_or_default();
                tracing::info!(
                    lab,
                    name,
                    why = e.message,
                    "automatic checkpoint skipped until the next period"
                );
                lock(skipped).insert(lab.clone(), now.saturating_add(every.as_secs()));
                continue;
            }
            other => tracing::warn!(lab, ?other, "unexpected answer to an automatic checkpoint"),
        }
        let old = (inner.state.read().state.labs.get(&lab))
            .map(to_prune)
            .unwrap_or_default();
        for name in old {
            if let Reply::Error(e) = super::delete(inner, &lab, &name).await {
                tracing::warn!(
                    lab,
                    name,
                    error = e.message,
                    "old automatic checkpoint not pruned"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
