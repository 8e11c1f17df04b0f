//! The accept loop: every connection is authenticated, every stream is one
//! request handed to a [`Service`], and a bad stream never stops the others.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;

use super::frame::{read_frame, write_frame, StreamErrorCode};
use super::{peer_identity_of, TransportError};
use crate::tls::PeerIdentity;

/// How long a peer has to send a whole request once it opened its stream;
/// a stalled sender is cut off instead of holding a task forever.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection close code for a peer whose certificate names no member.
const CLOSE_NO_IDENTITY: u32 = 1;

/// What a server does with one authenticated request.
pub trait Service: Send + Sync + 'static {
    /// The request type, decoded with the codec.
    type Request: DeserializeOwned + Send + 'static;
    /// The reply type, encoded with the codec.
    type Reply: Serialize + Send + Sync + 'static;

    /// Answers `req` from `peer`; the role in `peer` decides what it may do.
    fn handle(
        &self,
        peer: &PeerIdentity,
        req: Self::Request,
    ) -> impl Future<Output = Self::Reply> + Send;
}

/// Serves `service` on `endpoint` until the endpoint is closed.
pub fn serve<S: Service>(endpoint: Endpoint, service: Arc<S>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => serve_connection(conn, service).await,
                    // Handshake refusals (no certificate, another CA) end here.
                    Err(e) => tracing::info!(%remote, error = %e, "refused a connection"),
                }
            });
        }
    })
}

async fn serve_connection<S: Service>(conn: Connection, service: Arc<S>) {
    let peer = match peer_identity_of(&conn) {
        Ok(peer) => Arc::new(peer),
        Err(e) => {
            tracing::warn!(error = %e, "closing a connection without a member identity");
            conn.close(VarInt::from_u32(CLOSE_NO_IDENTITY), b"no labspan identity");
            return;
        }
    };
    tracing::debug!(name = %peer.name, role = %peer.role, "member connected");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let (service, peer) = (service.clone(), peer.clone());
                tokio::spawn(async move { serve_stream(send, recv, &*service, &peer).await });
            }
            Err(e) => {
                tracing::debug!(name = %peer.name, reason = %e, "member disconnected");
                return;
            }
        }
    }
}

async fn serve_stream<S: Service>(
    mut send: SendStream,
    mut recv: RecvStream,
    service: &S,
    peer: &PeerIdentity,
) {
    let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame::<S::Request>(&mut recv));
    let req = match read.await {
        Ok(Ok(req)) => req,
        Ok(Err(e)) => return refuse(send, recv, peer, refusal_code(&e), &e),
        Err(_) => {
            let e = "request not received in time";
            return refuse(send, recv, peer, Some(StreamErrorCode::Timeout), &e);
        }
    };
    let reply = service.handle(peer, req).await;
    if let Err(e) = write_frame(&mut send, &reply).await {
        let code = match e {
            TransportError::Codec(_) => Some(StreamErrorCode::Internal),
            _ => None,
        };
        refuse(send, recv, peer, code, &e);
    }
}

/// The code to reset a stream with, or `None` when the peer is already gone.
fn refusal_code(e: &TransportError) -> Option<StreamErrorCode> {
    match e {
        TransportError::Codec(c) => Some(StreamErrorCode::for_codec_error(c)),
        _ => None,
    }
}

fn refuse(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: &PeerIdentity,
    code: Option<StreamErrorCode>,
    why: &dyn std::fmt::Display,
) {
    tracing::info!(name = %peer.name, role = %peer.role, error = %why, "refused a request");
    if let Some(code) = code {
        // Either may already be closed by the peer; nothing more to do then.
        let _ = recv.stop(code.to_varint());
        let _ = send.reset(code.to_varint());
    }
}
