//! Images between hosts over QUIC: the image endpoint every agent serves
//! (agents fetch from it, admins push to it), and the fetch with retries
//! the agent runs before it launches VMs whose image it lacks. The stream
//! format is described in [`crate::msg`]; what is received is
//! checked by [`ImageStore::receive`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use labspan_proto::image::{ImageDigest, ImagePlan, ImageSource};
use labspan_proto::msg::{ErrorKind, ErrorReply, Role};
use labspan_transport::{
    finish, peer_identity_of, read_message_within, write_message, TransportError,
};
use prometheus_client::metrics::counter::Counter;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::endpoint::connect_image;
use crate::msg::{ImageReply, ImageRequest};
use crate::{Expected, Image, ImageError, ImageStore, ReceiveError};

/// Port of the image endpoint when `--image-listen` is not given.
pub const DEFAULT_IMAGE_PORT: u16 = 7102;
/// Attempts of one fetch: every source once, then again, up to this many.
pub const FETCH_ATTEMPTS: usize = 4;
/// Pause before attempt n (n ≥ 1) is n times this.
const RETRY_PAUSE: Duration = Duration::from_millis(300);
/// Largest envelope on an image stream (a file list, a few hundred bytes).
const MAX_ENVELOPE: usize = 1 << 20;
/// Bytes read from disk per write to the stream.
const CHUNK: usize = 1 << 20;
/// How often progress is reported during a transfer.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What went wrong in one exchange with one peer.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// Connecting or talking to the peer failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The stream broke while reading or writing.
    #[error("{doing}: {cause}")]
    Stream {
        doing: &'static str,
        cause: std::io::Error,
    },
    /// The peer refused, or answered something else.
    #[error("{0}")]
    Refused(String),
    /// What arrived is not the image that was asked for.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] ImageError),
}

/// Why an image could not be brought to this host.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No host that holds the image serves it.
    #[error(
        "image \"{image}\" (hash {hash}) is not on this host and no other host serves it: \
         start the agents with an image endpoint (`--image-listen`), or add the image here \
         with `labspan image push`"
    )]
    NoSource { image: String, hash: String },
    /// Every attempt failed; each is listed with its source.
    #[error("image \"{image}\" could not be fetched after {} attempts: {}", attempts.len(), attempts.join("; "))]
    Exhausted {
        image: String,
        attempts: Vec<String>,
    },
    /// The local store failed.
    #[error("image \"{image}\": {cause}")]
    Store { image: String, cause: ImageError },
    /// The client endpoint could not be made.
    #[error("cannot open the image client endpoint: {0}")]
    Endpoint(TransportError),
}

/// How far a transfer is.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub image: String,
    /// Host the bytes come from.
    pub from: String,
    pub bytes: u64,
    pub total: u64,
    /// Average rate since the transfer started, MiB/s.
    pub mib_per_s: f64,
}

/// Serves the images of `store` on `endpoint` until it is closed: agents
/// and admins may fetch, admins may push. `changed` is told of every pushed image.
pub fn serve(
    endpoint: Endpoint,
    store: ImageStore,
    changed: Arc<tokio::sync::Notify>,
) -> JoinHandle<()> {
    serve_with_checkpoints(endpoint, store, changed, None)
}

/// Where one file of a checkpoint this host holds is:
/// `(lab, checkpoint, node, kind)` gives its path, or why there is none.
/// The agent owns the layout of its state folder; the endpoint only serves.
pub type CheckpointFiles =
    Arc<dyn Fn(&str, &str, &str, &str) -> Result<PathBuf, String> + Send + Sync>;

/// [`serve`], and the checkpoint files `checkpoints` finds to other agents
/// (a second host copying them).
pub fn serve_with_checkpoints(
    endpoint: Endpoint,
    store: ImageStore,
    changed: Arc<tokio::sync::Notify>,
    checkpoints: Option<CheckpointFiles>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let (store, changed, checkpoints) =
                (store.clone(), changed.clone(), checkpoints.clone());
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => serve_connection(conn, store, changed, checkpoints).await,
                    Err(e) => tracing::info!(error = %e, "refused an image connection"),
                }
            });
        }
    })
}

async fn serve_connection(
    conn: Connection,
    store: ImageStore,
    changed: Arc<tokio::sync::Notify>,
    checkpoints: Option<CheckpointFiles>,
) {
    let peer = match peer_identity_of(&conn) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "image connection without a member identity");
            conn.close(1u32.into(), b"no labspan identity");
            return;
        }
    };
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (store, peer, changed) = (store.clone(), peer.clone(), changed.clone());
        let checkpoints = checkpoints.clone();
        tokio::spawn(async move {
            let who = format!("{} {}", peer.role, peer.name);
            let served = serve_stream(send, recv, &store, peer.role, &changed, &checkpoints).await;
            if let Err(e) = served {
                tracing::warn!(peer = who, error = %e, "image request failed");
            }
        });
    }
}

async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    store: &ImageStore,
    role: Role,
    changed: &tokio::sync::Notify,
    checkpoints: &Option<CheckpointFiles>,
) -> Result<(), AttemptError> {
    let refuse = |kind, msg: String| ImageReply::Error(ErrorReply::new(kind, msg));
    match read_message_within::<ImageRequest>(&mut recv, MAX_ENVELOPE).await? {
        ImageRequest::CheckpointFile {
            lab,
            name,
            node,
            kind,
        } if role == Role::Agent => {
            let file = match checkpoints {
                Some(find) => find(&lab, &name, &node, &kind),
                None => Err("this endpoint serves no checkpoints".to_string()),
            };
            let opened = match file {
                Ok(path) => tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display())),
                Err(why) => Err(why),
            };
            let bytes = match &opened {
                Ok(f) => f
                    .metadata()
                    .await
                    .map(|m| m.len())
                    .map_err(|e| e.to_string()),
                Err(why) => Err(why.clone()),
            };
            match (opened, bytes) {
                (Ok(mut file), Ok(bytes)) => {
                    write_message(&mut send, &ImageReply::CheckpointFile { bytes }).await?;
                    tokio::io::copy(&mut file, &mut send)
                        .await
                        .map_err(|cause| AttemptError::Stream {
                            doing: "sending a checkpoint file",
                            cause,
                        })?;
                }
                (Err(why), _) | (_, Err(why)) => {
                    let msg = format!(
                        "checkpoint {name:?} of lab {lab:?}: no {kind} file of node {node:?} here: {why}"
                    );
                    write_message(&mut send, &refuse(ErrorKind::NotFound, msg)).await?;
                }
            }
            Ok(finish(&mut send)?)
        }
        // Admins fetch too: `labspan save` puts images into its archive.
        ImageRequest::Get { hash } if matches!(role, Role::Agent | Role::Admin) => {
            send_image(&mut send, store, &hash).await
        }
        ImageRequest::Push { name, hash, digest } if role == Role::Admin => {
            let want = Expected {
                name: &name,
                hash: &hash,
                digest: &digest.digest,
            };
            let reply = match store.receive(want, &digest, &mut recv, &mut |_| {}).await {
                Ok(_) => {
                    tracing::info!(image = name, hash, "image pushed into the store");
                    changed.notify_one();
                    ImageReply::Stored { name, hash }
                }
                Err(e) => refuse(
                    ErrorKind::Invalid,
                    format!("image \"{name}\" was not stored: {e}"),
                ),
            };
            write_message(&mut send, &reply).await?;
            Ok(finish(&mut send)?)
        }
        other => {
            let what = match other {
                ImageRequest::Get { .. } => "fetch images (only agents and admins do)",
                ImageRequest::Push { .. } => "push images (only admins do)",
                ImageRequest::CheckpointFile { .. } => "copy checkpoints (only agents do)",
            };
            write_message(
                &mut send,
                &refuse(
                    ErrorKind::Forbidden,
                    format!("a member of role {role} may not {what}"),
                ),
            )
            .await?;
            Ok(finish(&mut send)?)
        }
    }
}

/// Answers a fetch: the offer, then every file of it.
async fn send_image(
    send: &mut SendStream,
    store: &ImageStore,
    hash: &str,
) -> Result<(), AttemptError> {
    if !store.has(hash) {
        let msg = format!("this host has no image with hash {hash}");
        write_message(
            send,
            &ImageReply::Error(ErrorReply::new(ErrorKind::NotFound, msg)),
        )
        .await?;
        return Ok(finish(send)?);
    }
    let digest = {
        let (store, hash) = (store.clone(), hash.to_string());
        tokio::task::spawn_blocking(move || store.digest(&hash))
            .await
            .map_err(|e| AttemptError::Refused(format!("digest task failed: {e}")))??
    };
    write_message(
        send,
        &ImageReply::Offer {
            hash: hash.to_string(),
            digest: digest.clone(),
        },
    )
    .await?;
    send_files(send, store, hash, &digest).await?;
    Ok(finish(send)?)
}

/// Writes every file of `digest` (from `objects/HASH`) to `send`, in order.
pub async fn send_files(
    send: &mut SendStream,
    store: &ImageStore,
    hash: &str,
    digest: &ImageDigest,
) -> Result<(), AttemptError> {
    let dir = store.object_dir(hash);
    let mut buf = vec![0u8; CHUNK];
    for f in &digest.files {
        let path = dir.join(&f.name);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(super::io_err("opening", &path))?;
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(super::io_err("reading", &path))?;
            if n == 0 {
                break;
            }
            send.write_all(&buf[..n])
                .await
                .map_err(|e| AttemptError::Stream {
                    doing: "sending image bytes",
                    cause: e.into(),
                })?;
        }
    }
    Ok(())
}

/// Fetches images this host lacks from the hosts that hold them.
pub struct Fetcher {
    endpoint: Endpoint,
    store: ImageStore,
    /// Image bytes received, failed attempts included (for `/metrics`).
    received: Counter,
}

impl Fetcher {
    /// A fetcher into `store` that dials from `endpoint` (see
    /// [`crate::endpoint::image_client_endpoint`]).
    pub fn new(endpoint: Endpoint, store: ImageStore) -> Fetcher {
        Fetcher {
            endpoint,
            store,
            received: Counter::default(),
        }
    }

    /// Image bytes this fetcher has received so far.
    /// The endpoint it dials from (checkpoint copies use it too).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn received_bytes(&self) -> u64 {
        self.received.get()
    }

    /// Makes `image.name` point at `image.hash` in the store, fetching the
    /// image first when it is not here: each source in turn, then again,
    /// [`FETCH_ATTEMPTS`] attempts in all.
    pub async fn ensure(
        &self,
        image: &ImagePlan,
        progress: &(dyn Fn(Progress) + Sync),
        retrying: &(dyn Fn(&str, &str) + Sync),
    ) -> Result<Image, FetchError> {
        let store_err = |cause| FetchError::Store {
            image: image.name.clone(),
            cause,
        };
        if self.store.has(&image.hash) {
            return self
                .store
                .name_hash(&image.name, &image.hash)
                .map_err(store_err);
        }
        if image.sources.is_empty() {
            return Err(FetchError::NoSource {
                image: image.name.clone(),
                hash: image.hash.clone(),
            });
        }
        let mut attempts = Vec::new();
        for n in 0..FETCH_ATTEMPTS {
            let source = &image.sources[n % image.sources.len()];
            if n > 0 {
                tokio::time::sleep(RETRY_PAUSE * n as u32).await;
            }
            match self.fetch_from(image, source, progress).await {
                Ok(img) => return Ok(img),
                Err(e) => {
                    let why = format!("from host {} ({}): {e}", source.host, source.addr);
                    tracing::warn!(
                        image = image.name,
                        attempt = n + 1,
                        error = why,
                        "image fetch failed"
                    );
                    retrying(&source.host, &why);
                    attempts.push(why);
                }
            }
        }
        Err(FetchError::Exhausted {
            image: image.name.clone(),
            attempts,
        })
    }

    /// One attempt from one source.
    async fn fetch_from(
        &self,
        image: &ImagePlan,
        source: &ImageSource,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Image, AttemptError> {
        let addr: SocketAddr = source
            .addr
            .parse()
            .map_err(|e| AttemptError::Refused(format!("image address {:?}: {e}", source.addr)))?;
        let conn = connect_image(&self.endpoint, addr).await?;
        let result = self.fetch_on(&conn, image, source, progress).await;
        conn.close(0u32.into(), b"done");
        result
    }

    async fn fetch_on(
        &self,
        conn: &Connection,
        image: &ImagePlan,
        source: &ImageSource,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Image, AttemptError> {
        let (mut send, mut recv) =
            conn.open_bi()
                .await
                .map_err(|e| TransportError::Connection {
                    peer: conn.remote_address(),
                    cause: e,
                })?;
        write_message(
            &mut send,
            &ImageRequest::Get {
                hash: image.hash.clone(),
            },
        )
        .await?;
        finish(&mut send)?;
        let offer = tokio::time::timeout(
            super::receive::STALL_TIMEOUT,
            read_message_within(&mut recv, MAX_ENVELOPE),
        )
        .await
        .map_err(|_| AttemptError::Refused("the host did not answer in time".into()))?;
        let digest = match offer? {
            ImageReply::Offer { hash, digest } if hash == image.hash => digest,
            ImageReply::Error(e) => return Err(AttemptError::Refused(e.message)),
            other => {
                return Err(AttemptError::Refused(format!(
                    "unexpected answer {other:?}"
                )))
            }
        };
        let want = Expected {
            name: &image.name,
            hash: &image.hash,
            digest: &image.digest,
        };
        let mut meter = Meter::new(&image.name, &source.host, digest.size(), progress);
        let mut counted = 0;
        let img = self
            .store
            .receive(want, &digest, &mut recv, &mut |bytes| {
                self.received.inc_by(bytes.saturating_sub(counted));
                counted = counted.max(bytes);
                meter.at(bytes);
            })
            .await?;
        meter.done();
        Ok(img)
    }
}

/// Turns byte counts into progress reports, at most one per [`PROGRESS_EVERY`].
struct Meter<'a> {
    image: &'a str,
    from: &'a str,
    total: u64,
    started: Instant,
    last: Instant,
    bytes: u64,
    report: &'a (dyn Fn(Progress) + Sync),
}

impl<'a> Meter<'a> {
    fn new(
        image: &'a str,
        from: &'a str,
        total: u64,
        report: &'a (dyn Fn(Progress) + Sync),
    ) -> Self {
        let now = Instant::now();
        Meter {
            image,
            from,
            total,
            started: now,
            last: now,
            bytes: 0,
            report,
        }
    }

    fn at(&mut self, bytes: u64) {
        self.bytes = bytes;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            self.emit();
        }
    }

    fn done(&mut self) {
        self.bytes = self.total;
        self.emit();
    }

    fn emit(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        (self.report)(Progress {
            image: self.image.to_string(),
            from: self.from.to_string(),
            bytes: self.bytes,
            total: self.total,
            mib_per_s: self.bytes as f64 / (1024.0 * 1024.0) / secs,
        });
    }
}

/// Uploads image `local` of `store` to the agent image endpoint at `addr`
/// (the caller holds an admin certificate), to be named `name` there;
/// returns the name of the agent that stored it.
pub async fn push(
    endpoint: &Endpoint,
    addr: SocketAddr,
    store: &ImageStore,
    local: &str,
    name: &str,
) -> Result<String, AttemptError> {
    let image = store.get(local)?;
    let hash = image.manifest.hash.clone();
    let digest = {
        let (store, hash) = (store.clone(), hash.clone());
        tokio::task::spawn_blocking(move || store.digest(&hash))
            .await
            .map_err(|e| AttemptError::Refused(format!("digest task failed: {e}")))??
    };
    let conn = connect_image(endpoint, addr).await?;
    let agent = peer_identity_of(&conn)
        .map(|p| p.name)
        .unwrap_or_else(|_| addr.to_string());
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| TransportError::Connection {
            peer: addr,
            cause: e,
        })?;
    let req = ImageRequest::Push {
        name: name.to_string(),
        hash: hash.clone(),
        digest: digest.clone(),
    };
    // A refusing agent answers at once and stops reading: its answer says
    // more than the failed write does.
    let sent = match write_message(&mut send, &req).await {
        Ok(()) => send_files(&mut send, store, &hash, &digest).await,
        Err(e) => Err(e.into()),
    }
    .and_then(|()| Ok(finish(&mut send)?));
    let reply = read_message_within::<ImageReply>(&mut recv, MAX_ENVELOPE)
        .await
        .map_err(AttemptError::from);
    conn.close(0u32.into(), b"done");
    let reply = match (reply, sent) {
        (Ok(reply), _) => reply,
        (Err(_), Err(e)) | (Err(e), Ok(())) => return Err(e),
    };
    match reply {
        ImageReply::Stored { .. } => Ok(agent),
        ImageReply::Error(e) => Err(AttemptError::Refused(format!(
            "host {agent}: {}",
            e.message
        ))),
        other => Err(AttemptError::Refused(format!(
            "host {agent}: unexpected answer {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use crate::endpoint::{image_client_endpoint, image_server_endpoint};
    use labspan_transport::tls::{ClusterCa, NodeCredential};

    use super::*;
    use crate::{GuestKind, Manifest};

    const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

    /// A store holding image `x`: a 5 MiB disk (several chunks) and a manifest.
    fn source_store(root: &std::path::Path) -> (ImageStore, String) {
        let store = ImageStore::at(root);
        let work = store.work_dir("t").expect("work dir");
        let staged = work.0.join("image");
        std::fs::create_dir_all(&staged).expect("mkdir");
        let disk: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(staged.join("disk.qcow2"), disk).expect("write");
        let hash = "b".repeat(64);
        let m = Manifest {
            name: "x".into(),
            hash: hash.clone(),
            kernel: None,
            initrd: None,
            disk: Some("disk.qcow2".into()),
            cmdline: String::new(),
            guest: GuestKind {
                kind: "imported".into(),
                guest_agent: true,
            },
            recipe: vec![],
        };
        store.commit(&staged, &m).expect("commit");
        (store, hash)
    }

    fn server(ca: &ClusterCa, me: &NodeCredential) -> (Endpoint, SocketAddr) {
        let ep = image_server_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), me)
            .expect("server endpoint");
        let addr = ep.local_addr().expect("bound");
        (ep, addr)
    }

    /// An image endpoint that offers the right digest, then sends the files
    /// with one byte flipped: what a bad disk or a broken path does.
    fn corrupting_server(ep: Endpoint, store: ImageStore) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let Ok(conn) = incoming.await else { continue };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(ImageRequest::Get { hash }) =
                        read_message_within(&mut recv, MAX_ENVELOPE).await
                    else {
                        continue;
                    };
                    let digest = store.digest(&hash).expect("digest");
                    let offer = ImageReply::Offer {
                        hash: hash.clone(),
                        digest: digest.clone(),
                    };
                    write_message(&mut send, &offer).await.expect("offer");
                    let mut bytes = Vec::new();
                    for f in &digest.files {
                        bytes.extend(
                            std::fs::read(store.object_dir(&hash).join(&f.name)).expect("read"),
                        );
                    }
                    bytes[1000] ^= 1;
                    let _ = send.write_all(&bytes).await;
                    let _ = send.finish();
                }
            }
        })
    }

    fn plan(hash: &str, digest: &str, sources: Vec<ImageSource>) -> ImagePlan {
        ImagePlan {
            name: "x".into(),
            hash: hash.into(),
            digest: digest.into(),
            size: 0,
            sources,
        }
    }

    #[tokio::test]
    async fn a_corrupt_source_is_detected_and_the_fetch_retries_elsewhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, hash) = source_store(&dir.path().join("src"));
        let digest = src.digest(&hash).expect("digest");
        let ca = ClusterCa::generate("t").expect("ca");
        let (bad_ep, bad_addr) = server(&ca, &ca.issue("host0", Role::Agent).expect("cert"));
        let (good_ep, good_addr) = server(&ca, &ca.issue("host1", Role::Agent).expect("cert"));
        let bad = corrupting_server(bad_ep.clone(), src.clone());
        let good = serve(good_ep.clone(), src.clone(), Default::default());
        let me = ca.issue("host2", Role::Agent).expect("cert");
        let client =
            image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &me).expect("client");
        let dst = ImageStore::at(dir.path().join("dst"));
        let fetcher = Fetcher::new(client, dst.clone());
        let sources = vec![
            ImageSource {
                host: "host0".into(),
                addr: bad_addr.to_string(),
            },
            ImageSource {
                host: "host1".into(),
                addr: good_addr.to_string(),
            },
        ];
        let seen = Mutex::new(Vec::new());
        let retries = Mutex::new(Vec::new());
        let img = fetcher
            .ensure(
                &plan(&hash, &digest.digest, sources),
                &|p| seen.lock().expect("lock").push(p),
                &|from, why| retries.lock().expect("lock").push(format!("{from}: {why}")),
            )
            .await
            .expect("fetched on the second attempt");
        let retries = retries.into_inner().expect("lock");
        assert_eq!(retries.len(), 1, "{retries:?}");
        assert!(retries[0].starts_with("host0: "), "{retries:?}");
        assert!(retries[0].contains("disk.qcow2 is corrupt"), "{retries:?}");
        assert_eq!(dst.get("x").expect("named"), img);
        assert_eq!(
            super::super::digest::digest_folder(&img.dir).expect("digest"),
            digest
        );
        let last = seen
            .into_inner()
            .expect("lock")
            .pop()
            .expect("progress reported");
        assert_eq!((last.from.as_str(), last.bytes), ("host1", digest.size()));
        // Already here: no transfer at all the second time.
        let again = fetcher
            .ensure(
                &plan(&hash, &digest.digest, vec![]),
                &|_| panic!("no transfer"),
                &|_, _| {},
            )
            .await
            .expect("present");
        assert_eq!(again, img);
        bad.abort();
        good.abort();
    }

    #[tokio::test]
    async fn every_attempt_failing_names_each_source_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, hash) = source_store(&dir.path().join("src"));
        let digest = src.digest(&hash).expect("digest");
        let ca = ClusterCa::generate("t").expect("ca");
        let (bad_ep, bad_addr) = server(&ca, &ca.issue("host0", Role::Agent).expect("cert"));
        let bad = corrupting_server(bad_ep.clone(), src.clone());
        let me = ca.issue("host2", Role::Agent).expect("cert");
        let client =
            image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &me).expect("client");
        let dst = ImageStore::at(dir.path().join("dst"));
        let sources = vec![ImageSource {
            host: "host0".into(),
            addr: bad_addr.to_string(),
        }];
        let err = Fetcher::new(client, dst.clone())
            .ensure(&plan(&hash, &digest.digest, sources), &|_| {}, &|_, _| {})
            .await
            .expect_err("every copy is corrupt");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("after {FETCH_ATTEMPTS} attempts")),
            "{msg}"
        );
        assert!(msg.contains("image \"x\""), "{msg}");
        assert!(msg.contains("from host host0"), "{msg}");
        assert!(!dst.root().join("names").exists());
        assert_eq!(
            std::fs::read_dir(dst.root().join("objects"))
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
        bad.abort();
    }

    #[tokio::test]
    async fn roles_decide_who_fetches_and_who_pushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, hash) = source_store(&dir.path().join("src"));
        let digest = src.digest(&hash).expect("digest");
        let ca = ClusterCa::generate("t").expect("ca");
        let dst = ImageStore::at(dir.path().join("dst"));
        let (ep, addr) = server(&ca, &ca.issue("host1", Role::Agent).expect("cert"));
        let task = serve(ep.clone(), dst.clone(), Default::default());
        let admin = ca.issue("alice", Role::Admin).expect("cert");
        let admin_ep =
            image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &admin).expect("client");
        // An admin pushes: the agent verifies and stores it.
        let host = push(&admin_ep, addr, &src, "x", "x").await.expect("pushed");
        assert_eq!(host, "host1");
        assert_eq!(dst.digest(&hash).expect("digest"), digest);
        assert_eq!(dst.get("x").expect("named").manifest.hash, hash);
        // An admin fetches (`labspan save`), a viewer may not; an agent
        // may not push.
        let sources = vec![ImageSource {
            host: "host1".into(),
            addr: addr.to_string(),
        }];
        let other = ImageStore::at(dir.path().join("other"));
        Fetcher::new(admin_ep.clone(), other.clone())
            .ensure(
                &plan(&hash, &digest.digest, sources.clone()),
                &|_| {},
                &|_, _| {},
            )
            .await
            .expect("an admin fetches");
        assert_eq!(other.digest(&hash).expect("digest"), digest);
        let viewer = ca.issue("bob", Role::Viewer).expect("cert");
        let viewer_ep =
            image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &viewer).expect("client");
        let err = Fetcher::new(viewer_ep.clone(), ImageStore::at(dir.path().join("v")))
            .ensure(&plan(&hash, &digest.digest, sources), &|_| {}, &|_, _| {})
            .await
            .expect_err("viewers do not fetch");
        assert!(err.to_string().contains("may not fetch"), "{err}");
        let agent = ca.issue("host2", Role::Agent).expect("cert");
        let agent_ep =
            image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &agent).expect("client");
        let err = push(&agent_ep, addr, &src, "x", "x")
            .await
            .expect_err("agents do not push");
        assert!(err.to_string().contains("may not push"), "{err}");
        // A server that is not an agent is not trusted by image clients.
        let (fake_ep, fake_addr) = server(&ca, &admin);
        let fake = serve(fake_ep.clone(), src.clone(), Default::default());
        let err = push(&admin_ep, fake_addr, &src, "x", "x")
            .await
            .expect_err("not an agent");
        assert!(matches!(err, AttemptError::Transport(_)), "{err}");
        task.abort();
        fake.abort();
    }

    /// Prints the rate of a 256 MiB fetch over loopback (a figure, not a
    /// check): `cargo test --release -p labspan-agent --lib throughput -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn throughput() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, hash) = source_store(&dir.path().join("src"));
        let big: Vec<u8> = (0..256 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(src.object_dir(&hash).join("disk.qcow2"), big).expect("write");
        std::fs::remove_file(src.object_dir(&hash).join(crate::digest::DIGEST_FILE)).ok();
        let started = std::time::Instant::now();
        let digest = src.digest(&hash).expect("digest");
        let hashing = started.elapsed();
        let ca = ClusterCa::generate("t").expect("ca");
        let (ep, addr) = server(&ca, &ca.issue("host1", Role::Agent).expect("cert"));
        let task = serve(ep.clone(), src.clone(), Default::default());
        let me = ca.issue("host2", Role::Agent).expect("cert");
        let client =
            image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &me).expect("client");
        let dst = ImageStore::at(dir.path().join("dst"));
        let sources = vec![ImageSource {
            host: "host1".into(),
            addr: addr.to_string(),
        }];
        let last = Mutex::new(None);
        Fetcher::new(client, dst)
            .ensure(
                &plan(&hash, &digest.digest, sources),
                &|p| *last.lock().expect("lock") = Some(p),
                &|_, _| {},
            )
            .await
            .expect("fetched");
        let p = last.into_inner().expect("lock").expect("progress");
        eprintln!(
            "digest of {} MiB: {:.2} s; fetch: {:.1} MiB/s",
            digest.size() >> 20,
            hashing.as_secs_f64(),
            p.mib_per_s
        );
        task.abort();
    }
}
