//! Labs on the leader: store, place, allocate VNIs, plan every host and
//! push each host its complete plan; agents answer with each VM's outcome.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use labspan_proto::codec;
use labspan_proto::health::GuestHealth;
use labspan_proto::lab::LabBundle;
use labspan_proto::msg::{
    AgentReply, AgentRequest, ErrorKind, ErrorReply, LabOrigin, LabSource, Reply,
};
use labspan_proto::suggest;
use labspan_transport::tls::PeerIdentity;

use super::push::{push_plans, settle};
use super::{agents, decide, error, lock, Inner};
use crate::raft::{ClusterState, Command};

/// Leader: the bundle and record of lab `name` (linearizable).
pub(super) async fn get(inner: &Arc<Inner>, name: &str) -> Reply {
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let state = inner.state.read();
    match state.state.labs.get(name) {
        Some(rec) => Reply::Lab {
            bundle: rec.spec.clone(),
            report: decide::report(&state.state, name, rec, vec![], guests_of(inner, name, rec)),
        },
        None => Reply::Error(no_lab(&state.state, name)),
    }
}

/// The refusal for an unknown lab, with the closest deployed name or the list.
pub(super) fn no_lab(state: &ClusterState, name: &str) -> ErrorReply {
    let hint = suggest::hint(name, state.labs.keys().map(String::as_str), "deployed labs");
    ErrorReply::new(
        ErrorKind::NotFound,
        format!("lab {name:?} is not deployed{hint}"),
    )
}

/// What the agents last said of lab `name`'s guests: only what each node's
/// current host says (a node moved away leaves its old host's word behind).
pub(super) fn guests_of(
    inner: &Inner,
    name: &str,
    rec: &crate::raft::LabRecord,
) -> Vec<GuestHealth> {
    lock(&inner.guests)
        .iter()
        .flat_map(|(host, guests)| {
            guests.iter().filter(move |g| {
                g.lab == name && rec.placement.get(&g.node).is_some_and(|h| h == host)
            })
        })
        .cloned()
        .collect()
}

/// Leader: deploys (or updates) the lab in `bytes`, a codec-encoded bundle.
pub(super) async fn deploy(
    inner: &Arc<Inner>,
    caller: &PeerIdentity,
    bytes: Vec<u8>,
    source: LabSource,
    replace: bool,
) -> Reply {
    let bundle: LabBundle = match codec::decode(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return error(
                ErrorKind::Invalid,
                format!("the lab bundle does not decode: {e}"),
            )
        }
    };
    if let Err(why) = decide::revalidate(&bundle) {
        return error(ErrorKind::Invalid, why);
    }
    if let Err(why) = labspan_proto::lab::check_files_size(&bundle) {
        return error(ErrorKind::Invalid, why);
    }
    if let Err(refused) = super::files::check_uploaded(inner, &bundle).await {
        return refused;
    }
    if let Err(missing) = crate::images::check_lab(
        &bundle.lab,
        &super::images::inventories(inner),
        &super::images::up_hosts(inner),
        |name| labspan_proto::image::BUILTIN.contains(&name),
    ) {
        return error(ErrorKind::Invalid, missing.to_string());
    }
    let _one_at_a_time = match super::moves::lock_unmoving(inner, &bundle.lab.name).await {
        Ok(guard) => guard,
        Err(e) => return Reply::Error(e),
    };
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let name = bundle.lab.name.clone();
    let origin = LabOrigin {
        member: caller.name.clone(),
        source,
        deployed_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let capabilities = lock(&inner.capabilities).clone();
    // Decided under the read lock, without a copy of the state: copying
    // 500 labs cost every deploy milliseconds (docs/benchmarks.md, "State
    // at scale"). Nothing here awaits.
    let (cmd, hosts) = {
        let guard = inner.state.read();
        let state = &guard.state;
        let existing = state.labs.get(&name);
        if let Err(why) = decide::may_replace(
            &name,
            existing.and_then(|r| r.origin.as_ref()),
            &origin,
            replace,
        ) {
            return error(ErrorKind::Conflict, why);
        }
        let old_hosts = existing.into_iter().flat_map(|r| r.placement.values());
        let cmd = match decide::deploy_command(state, &capabilities, &bundle, bytes, Some(origin)) {
            Ok(cmd) => cmd,
            Err(why) => return error(ErrorKind::Invalid, why),
        };
        let Command::DeployLab { placement, .. } = &cmd else {
            return error(ErrorKind::Internal, "a deploy decided something else");
        };
        // A host that is down gets its plan when it registers again.
        let hosts: BTreeSet<String> = placement
            .values()
            .chain(old_hosts)
            .filter(|h| state.hosts.get(*h).is_some_and(|h| h.up))
            .cloned()
            .collect();
        (cmd, hosts)
    };
    if let Err(e) = inner.write(cmd).await {
        return Reply::Error(e);
    }
    let vms = match settle(inner, &name, &hosts).await {
        Ok(vms) => vms,
        Err(e) => return Reply::Error(e),
    };
    let state = inner.state.read();
    match state.state.labs.get(&name) {
        Some(rec) => {
            let guests = guests_of(inner, &name, rec);
            Reply::Deployed(decide::report(&state.state, &name, rec, vms, guests))
        }
        None => error(
            ErrorKind::Internal,
            format!("lab {name:?} vanished during its deploy"),
        ),
    }
}

/// Leader: stops lab `name` on its hosts and forgets it.
pub(super) async fn delete(inner: &Arc<Inner>, name: &str) -> Reply {
    let _one_at_a_time = match super::moves::lock_unmoving(inner, name).await {
        Ok(guard) => guard,
        Err(e) => return Reply::Error(e),
    };
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    // A host that is down stops the lab's VMs when it registers again.
    let hosts: Result<BTreeSet<String>, ErrorReply> = {
        let state = &inner.state.read().state;
        let up = |h: &&String| state.hosts.get(*h).is_some_and(|h| h.up);
        // Hosts holding copies of its checkpoints remove them too.
        let copies = |rec: &'_ crate::raft::LabRecord| -> Vec<String> {
            (rec.checkpoints.values())
                .flat_map(|c| c.nodes.values())
                .flat_map(|n| n.copies.clone())
                .collect()
        };
        (state.labs.get(name))
            .map(|rec| {
                let mut hosts: BTreeSet<String> =
                    rec.placement.values().filter(up).cloned().collect();
                hosts.extend(copies(rec).iter().filter(up).cloned());
                hosts
            })
            .ok_or_else(|| no_lab(state, name))
    };
    let hosts = match hosts {
        Ok(hosts) => hosts,
        Err(refused) => return Reply::Error(refused),
    };
    if let Err(e) = inner
        .write(Command::DeleteLab {
            name: name.to_string(),
        })
        .await
    {
        return Reply::Error(e);
    }
    let failed: Vec<String> = push_plans(inner, &hosts)
        .await
        .into_iter()
        .filter_map(|(h, r)| r.err().map(|e| format!("host {h}: {e}")))
        .collect();
    inner.lab_step(name, labspan_proto::progress::Phase::Removed);
    if failed.is_empty() {
        Reply::Done
    } else {
        error(
            ErrorKind::Unavailable,
            format!(
                "lab {name:?} is forgotten but not yet removed from: {}",
                failed.join("; ")
            ),
        )
    }
}

/// The host that runs `node` of `lab`, or the refusal saying which is
/// unknown (with the closest name, or the names there are).
pub(super) fn host_of(inner: &Inner, lab: &str, node: &str) -> Result<String, ErrorReply> {
    let state = &inner.state.read().state;
    let rec = state.labs.get(lab).ok_or_else(|| no_lab(state, lab))?;
    rec.placement.get(node).cloned().ok_or_else(|| {
        let hint = suggest::hint(node, rec.placement.keys().map(String::as_str), "its nodes");
        ErrorReply::new(
            ErrorKind::NotFound,
            format!("lab {lab:?} has no node {node:?}{hint}"),
        )
    })
}

/// Refuses a NIC that `node` of `lab` does not have, listing those it has
/// (the lab as deployed; the node is known to exist).
pub(super) fn check_nic(inner: &Inner, lab: &str, node: &str, nic: &str) -> Result<(), ErrorReply> {
    // The bundle the replica decoded when the lab was stored, not the
    // spec decoded again on every call.
    let Some(Ok(bundle)) = inner.state.read().state.bundle(lab) else {
        return Ok(());
    };
    let Some(n) = bundle.lab.nodes.get(node) else {
        return Ok(());
    };
    if n.nics.contains_key(nic) {
        return Ok(());
    }
    let hint = suggest::hint(nic, n.nics.keys().map(String::as_str), "its NICs");
    Err(ErrorReply::new(
        ErrorKind::NotFound,
        format!("node {node:?} of lab {lab:?} has no NIC {nic:?}{hint}"),
    ))
}

/// Leader: runs `cmd` in node `node` of `lab` through that host's agent.
pub(super) async fn exec(
    inner: &Arc<Inner>,
    lab: &str,
    node: &str,
    cmd: &str,
    timeout_secs: u64,
) -> Reply {
    let host = match host_of(inner, lab, node) {
        Ok(h) => h,
        Err(refused) => return Reply::Error(refused),
    };
    let req = AgentRequest::Exec {
        lab: lab.into(),
        node: node.into(),
        cmd: cmd.into(),
        timeout_secs,
    };
    match agents::request(inner, &host, &req).await {
        Ok(AgentReply::Exec(out)) => Reply::Exec(out),
        Ok(AgentReply::Error(e)) => Reply::Error(e),
        Ok(other) => error(
            ErrorKind::Internal,
            format!("unexpected agent reply {other:?}"),
        ),
        Err(e) => error(ErrorKind::Unavailable, e),
    }
}

/// Leader: restarts node `node` of `lab` through its host's agent, keeping
/// its disk.
pub(super) async fn restart(inner: &Arc<Inner>, lab: &str, node: &str) -> Reply {
    let host = match host_of(inner, lab, node) {
        Ok(h) => h,
        Err(refused) => return Reply::Error(refused),
    };
    let req = AgentRequest::Restart {
        lab: lab.into(),
        node: node.into(),
    };
    match agents::request(inner, &host, &req).await {
        Ok(AgentReply::Applied(_)) => Reply::Done,
        Ok(AgentReply::Error(e)) => Reply::Error(e),
        Ok(other) => error(
            ErrorKind::Internal,
            format!("unexpected agent reply {other:?}"),
        ),
        Err(e) => error(ErrorKind::Unavailable, e),
    }
}
