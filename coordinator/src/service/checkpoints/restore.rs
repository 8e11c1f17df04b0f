//! Host loss with durable checkpoints: the nodes a lost host ran restart
//! on their new hosts from the lab's latest checkpoint (when its file asks
//! for it, `resilience: {checkpoint_every}`), rather than boot from their
//! images. The checkpoint's files of each such node come from a host that
//! is up and holds them (the original or a durable copy) and are fetched
//! by the new host over the image transfer path when it lacks them.
//!
//! Choosing the checkpoint and where each node's files come from is pure
//! ([`choose`]); [`prepare`] copies what is missing and says which nodes
//! restart from it. The other nodes of the lab run on untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use labspan_proto::image::ImageSource;
use labspan_proto::msg::{AgentReply, AgentRequest};
use labspan_proto::progress::Phase;

use super::super::{agents, Inner};
use crate::raft::{ClusterState, Command};

/// Where one node's files of the chosen checkpoint come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Its new host holds them already (the original or a copy).
    Here,
    /// Fetched by its new host from this host, which holds them.
    From(String),
}

/// The checkpoint the moved nodes restart from, and where each one's
/// files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub checkpoint: String,
    pub sources: BTreeMap<String, Source>,
}

/// Decides how the nodes of `lab` in `moved` (node → new host) restart:
/// `Ok(None)` when the lab does not ask for checkpoints (they boot), the
/// latest checkpoint holding every one of them on a host that is up, or
/// why none can be used (they boot, and the leader says so).
pub fn choose(
    state: &ClusterState,
    lab: &str,
    moved: &BTreeMap<String, String>,
) -> Result<Option<Choice>, String> {
    if super::auto::period(state, lab).is_none() || moved.is_empty() {
        return Ok(None);
    }
    let Some(rec) = state.labs.get(lab) else {
        return Ok(None);
    };
    let up = |h: &String| state.hosts.get(h).is_some_and(|h| h.up);
    let mut newest_first: Vec<_> = rec.checkpoints.values().collect();
    newest_first.sort_by(|a, b| (b.created_unix, &b.name).cmp(&(a.created_unix, &a.name)));
    if newest_first.is_empty() {
        return Err("the lab has no checkpoint yet".into());
    }
    for ckpt in &newest_first {
        let sources: Option<BTreeMap<String, Source>> = (moved.iter())
            .map(|(node, to)| {
                let share = ckpt.nodes.get(node)?;
                let holders: Vec<&String> =
                    std::iter::once(&share.host).chain(&share.copies).collect();
                let source = if holders.contains(&to) {
                    Source::Here
                } else {
                    Source::From(holders.into_iter().find(|h| up(h))?.clone())
                };
                Some((node.clone(), source))
            })
            .collect();
        if let Some(sources) = sources {
            return Ok(Some(Choice {
                checkpoint: ckpt.name.clone(),
                sources,
            }));
        }
    }
    let nodes: BTreeSet<&String> = moved.keys().collect();
    Err(format!(
        "none of its {} checkpoints holds nodes {nodes:?} on a host that is up",
        newest_first.len()
    ))
}

/// Leader, before a host loss's move is recorded: the moved nodes of
/// `lab` (node → new host) that restart from a checkpoint, and which one
/// (node → checkpoint), once each one's files are on its new host. A node
/// whose files cannot be had boots from its image; the log and the node's
/// step say why.
pub(in crate::service) async fn prepare(
    inner: &Arc<Inner>,
    lab: &str,
    moved: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let choice = choose(&inner.state.read().state, lab, moved);
    let cold = |node: &str, why: &str| {
        tracing::warn!(
            lab,
            node,
            why,
            "lost node boots from its image: no usable checkpoint"
        );
        if let Some(to) = moved.get(node) {
            let why = format!("no usable checkpoint ({why}): booting from its image");
            inner.node_step(lab, node, to, Phase::Restarting { why });
        }
    };
    let choice = match choice {
        Ok(Some(c)) => c,
        Ok(None) => return BTreeMap::new(),
        Err(why) => {
            moved.keys().for_each(|n| cold(n, &why));
            return BTreeMap::new();
        }
    };
    let mut restore = BTreeMap::new();
    let mut fetches = Vec::new();
    let name = choice.checkpoint.as_str();
    for (node, source) in &choice.sources {
        let Some(to) = moved.get(node) else {
            continue;
        };
        match source {
            Source::Here => {
                restore.insert(node.clone(), choice.checkpoint.clone());
            }
            Source::From(holder) => fetches.push(async move {
                let fetched = fetch(inner, lab, name, node, to, holder).await;
                (node, fetched)
            }),
        }
    }
    for (node, fetched) in futures::future::join_all(fetches).await {
        match fetched {
            Ok(()) => {
                restore.insert(node.clone(), choice.checkpoint.clone());
            }
            Err(why) => cold(node, &why),
        }
    }
    restore
}

/// Has host `to` fetch node `node`'s files of checkpoint `name` of `lab`
/// from host `holder` (over the image transfer path, each file checked
/// against its hash), and records the copy; why it could not.
pub(in crate::service) async fn fetch(
    inner: &Arc<Inner>,
    lab: &str,
    name: &str,
    node: &str,
    to: &str,
    holder: &str,
) -> Result<(), String> {
    let files = (inner.state.read().state.labs.get(lab))
        .and_then(|r| r.checkpoints.get(name))
        .and_then(|c| c.nodes.get(node))
        .map(|n| n.files.clone())
        .ok_or_else(|| format!("checkpoint {name:?} of lab {lab:?} holds no node {node:?}"))?;
    let addr = (super::super::images::inventories(inner).get(holder))
        .and_then(|i| i.addr.clone())
        .ok_or_else(|| {
            format!("host {holder:?}, which holds its files, serves no image endpoint")
        })?;
    let req = AgentRequest::CheckpointCopy {
        lab: lab.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        files,
        from: ImageSource {
            host: holder.to_string(),
            addr,
        },
    };
    match agents::request(inner, to, &req).await {
        Ok(AgentReply::CheckpointCopied { bytes }) => {
            tracing::info!(
                lab,
                name,
                node,
                from = holder,
                to,
                bytes,
                "checkpoint fetched to the node's host"
            );
        }
        Ok(AgentReply::Error(e)) => return Err(e.message),
        Ok(other) => return Err(format!("host {to:?}: unexpected reply {other:?}")),
        Err(e) => return Err(e),
    }
    let copied = Command::CheckpointCopied {
        lab: lab.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        host: to.to_string(),
    };
    inner
        .write(copied)
        .await
        .map(|_| ())
        .map_err(|e| format!("its copy on {to:?} was not recorded: {}", e.message))
}

#[cfg(test)]
mod tests;
