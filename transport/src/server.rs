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

use crate::frame::{expect_end, read_message, write_frame, StreamErrorCode};
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

    /// Whether `req` is a byte-stream request (a console, a capture): then
    /// [`Service::stream`] gets its QUIC stream instead of `handle`.
    fn is_stream(&self, _req: &Self::Request) -> bool {
        false
    }

    /// Serves a byte-stream request: writes its reply frame on `send`, then
    /// carries raw bytes both ways until either side finishes.
    fn stream(
        &self,
        _peer: &PeerIdentity,
        _req: Self::Request,
        _send: SendStream,
        _recv: RecvStream,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
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
    let who = Arc::new(format!("{} ({})", peer.name, peer.role));
    serve_streams(conn, who.to_string(), move |req, send, recv| {
        let (service, peer, who) = (service.clone(), peer.clone(), who.clone());
        async move {
            if service.is_stream(&req) {
                service.stream(&peer, req, send, recv).await;
            } else if let Some((send, recv)) = request_ended(send, recv, &who).await {
                let reply = service.handle(&peer, req).await;
                answer(send, recv, &who, &reply).await;
            }
        }
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
                        let who = remote.to_string();
                        serve_streams(conn, who.clone(), move |req, send, recv| {
                            let (service, who) = (service.clone(), who.clone());
                            async move {
                                if let Some((send, recv)) = request_ended(send, recv, &who).await {
                                    let reply = service.handle(remote, req).await;
                                    answer(send, recv, &who, &reply).await;
                                }
                            }
                        })
                        .await
                    }
                    Err(e) => tracing::info!(%remote, error = %e, "refused a join connection"),
                }
            });
        }
    })
}

/// Hands every stream of `conn`, with its decoded request, to `handle`,
/// one task per stream.
async fn serve_streams<Req, F, Fut>(conn: Connection, who: String, handle: F)
where
    Req: DeserializeOwned + Send + 'static,
    F: Fn(Req, SendStream, RecvStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
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

async fn serve_stream<Req, F, Fut>(send: SendStream, mut recv: RecvStream, handle: &F, who: &str)
where
    Req: DeserializeOwned,
    F: Fn(Req, SendStream, RecvStream) -> Fut,
    Fut: Future<Output = ()>,
{
    let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_message::<Req>(&mut recv));
    let req = match read.await {
        Ok(Ok(req)) => req,
        Ok(Err(e)) => return refuse(send, recv, who, refusal_code(&e), &e),
        Err(_) => {
            let e = "request not received in time";
            return refuse(send, recv, who, Some(StreamErrorCode::Timeout), &e);
        }
    };
    handle(req, send, recv).await;
}

/// The request's stream once its end came after the one message (a
/// request that is not a byte stream carries nothing more); `None` when
/// it was refused for trailing bytes or a broken stream.
async fn request_ended(
    send: SendStream,
    mut recv: RecvStream,
    who: &str,
) -> Option<(SendStream, RecvStream)> {
    let ended = tokio::time::timeout(REQUEST_READ_TIMEOUT, expect_end(&mut recv)).await;
    match ended {
        Ok(Ok(())) => Some((send, recv)),
        Ok(Err(e)) => {
            refuse(send, recv, who, refusal_code(&e), &e);
            None
        }
        Err(_) => {
            let e = "request not received in time";
            refuse(send, recv, who, Some(StreamErrorCode::Timeout), &e);
            None
        }
    }
}

/// Writes `reply` as the one answer of a request stream.
pub async fn answer<Rep: Serialize>(
    mut send: SendStream,
    recv: RecvStream,
    who: &str,
    reply: &Rep,
) {
    if let Err(e) = write_frame(&mut send, reply).await {
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
