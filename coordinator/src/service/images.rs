//! Images on the leader: the inventory each agent reports (soft state, kept
//! in memory like heartbeats and lost on a leader change, when agents
//! report again) and the image endpoints `labspan image push` uploads to.

use std::collections::BTreeSet;
use std::sync::Arc;

use labspan_proto::image::ImageInfo;
use labspan_proto::msg::{ErrorKind, HostImages, Reply};

use super::{error, lock, Inner};
use crate::images::Inventories;

/// Leader: agent `host` holds `images` and serves them at `addr`.
pub(super) fn inventory(
    inner: &Inner,
    host: &str,
    addr: Option<String>,
    images: Vec<ImageInfo>,
) -> Reply {
    tracing::debug!(host, images = images.len(), ?addr, "image inventory");
    lock(&inner.images).insert(
        host.to_string(),
        HostImages {
            host: host.to_string(),
            addr,
            images,
        },
    );
    Reply::Done
}

/// Leader: the image endpoints and inventories of the hosts that are up.
pub(super) async fn hosts(inner: &Arc<Inner>) -> Reply {
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let up = up_hosts(inner);
    let hosts: Vec<HostImages> = lock(&inner.images)
        .values()
        .filter(|h| up.contains(&h.host))
        .cloned()
        .collect();
    if hosts.is_empty() {
        return error(
            ErrorKind::Unavailable,
            "no lab host is up with its agent connected: start an agent \
             (`labspan agent run`) and try again",
        );
    }
    Reply::ImageHosts(hosts)
}

/// Names of the hosts marked up.
pub(super) fn up_hosts(inner: &Inner) -> BTreeSet<String> {
    inner
        .state
        .read()
        .state
        .hosts
        .iter()
        .filter(|(_, h)| h.up)
        .map(|(n, _)| n.clone())
        .collect()
}

/// A copy of every host's inventory.
pub(super) fn inventories(inner: &Inner) -> Inventories {
    lock(&inner.images).clone()
}
