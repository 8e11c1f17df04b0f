//! The daemon's image duties: serve this host's images to the other agents
//! (and to admins pushing theirs), fetch the plan's images with the cluster
//! credential, and tell the leader what the store holds whenever it changes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use labspan_proto::image::ImageInfo;
use labspan_proto::msg::Request;
use labspan_transport::client::{any_local, ClusterFile};
use quinn::Endpoint;

use crate::endpoint::{image_client_endpoint, image_server_endpoint};
use crate::transfer::{self, CheckpointFiles, Fetcher};
use crate::ImageStore;

/// This host's image endpoint and what was last reported to the leader.
pub struct ImageService {
    store: ImageStore,
    /// `ip:port` other hosts reach the endpoint at (`None`: not serving).
    addr: Option<String>,
    /// Kept so the endpoint lives as long as the daemon.
    _server: Option<Endpoint>,
    /// Fetches images from the other hosts (`None`: no credential).
    fetcher: Option<Arc<Fetcher>>,
    last: Mutex<Option<Vec<ImageInfo>>>,
    /// Told when an image was pushed here: report it at once.
    changed: Arc<tokio::sync::Notify>,
}

impl ImageService {
    /// Starts serving `store` (and the files `checkpoints` finds) on
    /// `listen`, announced as `announce`, and makes a fetcher
    /// ([`ImageService::fetcher`]); failures are logged and leave that part
    /// off (the agent still runs labs from its own store).
    pub fn start(
        cluster: &ClusterFile,
        store: ImageStore,
        checkpoints: Option<CheckpointFiles>,
        listen: Option<SocketAddr>,
        announce: Option<SocketAddr>,
    ) -> ImageService {
        let credential = match cluster.credential() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "no credential for image transfers");
                None
            }
        };
        let mut server = None;
        let mut addr = None;
        let mut fetcher = None;
        let changed = Arc::new(tokio::sync::Notify::new());
        if let Some((ca, me)) = &credential {
            let bind = any_local(
                announce
                    .or(listen)
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            );
            match image_client_endpoint(bind, ca, me) {
                Ok(ep) => fetcher = Some(Arc::new(Fetcher::new(ep, store.clone()))),
                Err(e) => tracing::error!(error = %e, "cannot fetch images from other hosts"),
            }
            if let Some(listen) = listen {
                match image_server_endpoint(listen, ca, me) {
                    Ok(ep) => {
                        let bound = ep.local_addr().map(|a| a.port()).unwrap_or(listen.port());
                        let shown = announce.unwrap_or(listen);
                        addr = Some(SocketAddr::new(shown.ip(), bound).to_string());
                        transfer::serve_with_checkpoints(
                            ep.clone(),
                            store.clone(),
                            changed.clone(),
                            checkpoints,
                        );
                        tracing::info!(addr = addr.as_deref(), "serving images");
                        server = Some(ep);
                    }
                    Err(e) => tracing::error!(error = %e, %listen, "cannot serve images"),
                }
            }
        }
        ImageService {
            store,
            addr,
            _server: server,
            fetcher,
            last: Mutex::new(None),
            changed,
        }
    }

    /// Waits `period`, or less when an image was pushed here meanwhile.
    pub async fn pause(&self, period: std::time::Duration) {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = self.changed.notified() => {}
        }
    }

    /// What fetches the plan's images from the other hosts (`None` when
    /// this host has no credential or no client endpoint).
    pub fn fetcher(&self) -> Option<Arc<Fetcher>> {
        self.fetcher.clone()
    }

    /// The address other hosts reach this host's image endpoint at.
    pub fn addr(&self) -> Option<&str> {
        self.addr.as_deref()
    }

    /// The inventory request to send when the store changed since the last
    /// [`ImageService::sent`] (or `always`).
    pub async fn report(&self, always: bool) -> Option<Request> {
        let store = self.store.clone();
        let images = match tokio::task::spawn_blocking(move || store.inventory()).await {
            Ok(Ok(images)) => images,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the image store's inventory");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "inventory task failed");
                return None;
            }
        };
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if !always && last.as_ref() == Some(&images) {
            return None;
        }
        Some(Request::ImageInventory {
            addr: self.addr.clone(),
            images,
        })
    }

    /// Records that the leader accepted `req` (an inventory from `report`).
    pub fn sent(&self, req: &Request) {
        if let Request::ImageInventory { images, .. } = req {
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(images.clone());
        }
    }
}
