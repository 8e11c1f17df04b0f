//! The accept loop: every connection is authenticated, every stream is one
//! request handed to a [`Service`], and a bad stream never stops the others.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::frame::{read_frame, write_frame, StreamErrorCode};
use crate::tls::PeerIdentity;
use crate::{peer_identity_of, TransportError};

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

    /// Called once for each authenticated connection, before its requests:
    /// a server that must later open streams towards the member (agents
    /// only dial out) keeps `conn` here.
    fn connected(&self, _peer: &PeerIdentity, _conn: &Connection) {}
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
    service.connected(&peer, &conn);
    let who = format!("{} ({})", peer.name, peer.role);
    serve_streams(conn, who, move |req| {
        let (service, peer) = (service.clone(), peer.clone());
        async move { service.handle(&peer, req).await }
    })
    .await;
}

/// What a join endpoint does with one request from a peer that has no
/// certificate yet (see [`crate::tls::join_server_config`]).
pub trait JoinService: Send + Sync + 'static {
    /// The request type, decoded with the codec.
    type Request: DeserializeOwned + Send + 'static;
    /// The reply type, encoded with the codec.
    type Reply: Serialize + Send + Sync + 'static;

    /// Answers `req` from the unauthenticated peer at `remote`.
    fn handle(
        &self,
        remote: SocketAddr,
        req: Self::Request,
    ) -> impl Future<Output = Self::Reply> + Send;
}

/// Serves `service` on a join endpoint until the endpoint is closed.
pub fn serve_join<S: JoinService>(endpoint: Endpoint, service: Arc<S>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => {
                        serve_streams(conn, remote.to_string(), move |req| {
                            let service = service.clone();
                            async move { service.handle(remote, req).await }
                        })
                        .await
                    }
                    Err(e) => tracing::info!(%remote, error = %e, "refused a join connection"),
                }
            });
        }
    })
}

/// Hands every stream of `conn` to `handle`, one task per stream.
async fn serve_streams<Req, Rep, F, Fut>(conn: Connection, who: String, handle: F)
where
    Req: DeserializeOwned + Send + 'static,
    Rep: Serialize + Send + Sync + 'static,
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Rep> + Send + 'static,
{
    let handle = Arc::new(handle);
    let who = Arc::new(who);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let (handle, who) = (handle.clone(), who.clone());
                tokio::spawn(async move { serve_stream(send, recv, &*handle, &who).await });
            }
            Err(e) => {
                tracing::debug!(peer = %who, reason = %e, "peer disconnected");
                return;
            }
        }
    }
}

async fn serve_stream<Req, Rep, F, Fut>(
    mut send: SendStream,
    mut recv: RecvStream,
    handle: &F,
    who: &str,
) where
    Req: DeserializeOwned,
    Rep: Serialize,
    F: Fn(Req) -> Fut,
    Fut: Future<Output = Rep>,
{
    let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame::<Req>(&mut recv));
    let req = match read.await {
        Ok(Ok(req)) => req,
        Ok(Err(e)) => return refuse(send, recv, who, refusal_code(&e), &e),
        Err(_) => {
            let e = "request not received in time";
            return refuse(send, recv, who, Some(StreamErrorCode::Timeout), &e);
        }
    };
    let reply = handle(req).await;
    if let Err(e) = write_frame(&mut send, &reply).await {
        let code = match e {
            TransportError::Codec(_) => Some(StreamErrorCode::Internal),
            _ => None,
        };
        refuse(send, recv, who, code, &e);
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
    who: &str,
    code: Option<StreamErrorCode>,
    why: &dyn std::fmt::Display,
) {
    tracing::info!(peer = %who, error = %why, "refused a request");
    if let Some(code) = code {
        // Either may already be closed by the peer; nothing more to do then.
        let _ = recv.stop(code.to_varint());
        let _ = send.reset(code.to_varint());
    }
}
