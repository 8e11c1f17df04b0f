//! An admin's upload of an image to an agent's image endpoint.

use std::net::SocketAddr;

use labspan_transport::{
    finish, peer_identity_of, read_message_within, write_message, TransportError,
};
use quinn::Endpoint;

use super::{send_files, AttemptError, MAX_ENVELOPE};
use crate::endpoint::connect_image;
use crate::msg::{ImageReply, ImageRequest};
use crate::ImageStore;

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
