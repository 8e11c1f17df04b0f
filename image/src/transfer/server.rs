//! The image endpoint's server side: agents and admins fetch images (and
//! agents checkpoint files), admins push images; what each role may ask is
//! decided here.

use std::path::PathBuf;
use std::sync::Arc;

use labspan_proto::image::ImageDigest;
use labspan_proto::msg::{ErrorKind, ErrorReply, Role};
use labspan_transport::{finish, peer_identity_of, read_message_within, write_message};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use super::{AttemptError, CHUNK, MAX_ENVELOPE};
use crate::msg::{ImageReply, ImageRequest};
use crate::{Expected, ImageStore};

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
            .map_err(crate::io_err("opening", &path))?;
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(crate::io_err("reading", &path))?;
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
