//! How the CLI and agents reach a cluster: the cluster file (coordinator
//! addresses and this member's credential), a client that talks to any
//! coordinator, and the join exchange.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use labspan_proto::msg::{JoinReply, JoinRequest, Reply, Request};
use quinn::{Connection, Endpoint};
use serde::{Deserialize, Serialize};

use crate::tls::{self, NodeCredential};
use crate::{client_endpoint, connect, join_client_endpoint, request, TransportError};

/// How long one dial may take before that coordinator counts as
/// unreachable (a dead coordinator never answers: QUIC would otherwise wait
/// for its idle timeout). Every coordinator is dialled at once, so a dead
/// one costs this much only when all are dead.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longer second round, for a machine so loaded that no handshake
/// finished within [`CONNECT_TIMEOUT`].
const SLOW_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The head start of the coordinator that answered last (usually the
/// leader, or one that forwards to it).
const OTHERS_AFTER: Duration = Duration::from_millis(100);

/// The coordinator that answered this process last.
static LAST_ANSWERED: Mutex<Option<String>> = Mutex::new(None);

/// A coordinator answers joins on its API port + 1 (see [`join_addr`]).
pub const JOIN_PORT_OFFSET: u16 = 1;

/// The join endpoint of the coordinator whose API listens on `api`.
pub fn join_addr(api: SocketAddr) -> SocketAddr {
    SocketAddr::new(api.ip(), api.port().wrapping_add(JOIN_PORT_OFFSET))
}

/// A member's way into the cluster, saved as JSON with mode 0600
/// (`DIR/admin.cluster` for the CLI, `DIR/agent.cluster` for an agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// API addresses (`ip:port`) of the coordinators.
    pub coordinators: Vec<String>,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why the cluster file or the cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster file could not be read or written.
    #[error("cluster file {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The cluster file is not what `labspan cluster init` writes.
    #[error("cluster file {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// The credential in the cluster file is unusable.
    #[error("cluster credential: {0}")]
    Tls(tls::TlsError),
    /// A coordinator refused this member's certificate during the TLS
    /// handshake: another cluster's CA, an unknown or a removed member.
    #[error("coordinator {addr} refused this member's certificate: {why}")]
    Refused { addr: SocketAddr, why: String },
    /// No coordinator of the list answered.
    #[error("no coordinator answered (tried {tried}): {last}")]
    Unreachable {
        tried: String,
        last: Box<TransportError>,
    },
    /// Building the endpoint failed.
    #[error(transparent)]
    Transport(#[from] Box<TransportError>),
}

impl From<tls::TlsError> for ClientError {
    fn from(e: tls::TlsError) -> Self {
        ClientError::Tls(e)
    }
}

impl ClusterFile {
    /// Reads a cluster file.
    pub fn load(path: &Path) -> Result<ClusterFile, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ClientError::Io {
            path: path.into(),
            cause,
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Invalid {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    /// Writes it, readable by its owner only (it holds a private key).
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let io = |cause| ClientError::Io {
            path: path.into(),
            cause,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        write_private(path, text.as_bytes()).map_err(io)
    }

    /// The CA certificate and this member's credential.
    pub fn credential(
        &self,
    ) -> Result<(rustls::pki_types::CertificateDer<'static>, NodeCredential), ClientError> {
        let ca = tls::cert_from_pem(&self.ca_pem, "the cluster CA certificate")?;
        Ok((ca, NodeCredential::from_pem(&self.cert_pem, &self.key_pem)?))
    }
}

pub use labspan_proto::atomic::write_private;

/// An unspecified local address of the same family as `peer`, for binding.
pub fn any_local(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// A connection to one coordinator of a cluster, with the member's certificate.
pub struct Client {
    endpoint: Endpoint,
    conn: Connection,
}

impl Client {
    /// Connects to the first coordinator of `file` that answers.
    pub async fn connect(file: &ClusterFile) -> Result<Client, ClientError> {
        Self::connect_to(file, &file.coordinators).await
    }

    /// Connects to whichever of `addrs` answers first, with the credential
    /// of `file`. Every address is dialled at once (the one that answered
    /// last gets a head start), each for at most [`CONNECT_TIMEOUT`]; a TLS
    /// refusal ends the attempt at once with [`ClientError::Refused`].
    pub async fn connect_to(file: &ClusterFile, addrs: &[String]) -> Result<Client, ClientError> {
        let (ca, me) = file.credential()?;
        let last_answered = LAST_ANSWERED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut targets = Vec::new();
        let mut last = None;
        for text in addrs {
            match text.parse::<SocketAddr>() {
                Ok(addr) => targets.push((text.clone(), addr)),
                Err(e) => {
                    last = Some(TransportError::Config(format!(
                        "coordinator address {text:?}: {e}"
                    )))
                }
            }
        }
        for timeout in [CONNECT_TIMEOUT, SLOW_CONNECT_TIMEOUT] {
            let mut dials: FuturesUnordered<_> = targets
                .iter()
                .map(|(text, addr)| {
                    let first =
                        last_answered.as_deref() == Some(text.as_str()) || last_answered.is_none();
                    let (ca, me, addr) = (&ca, &me, *addr);
                    async move {
                        if !first {
                            tokio::time::sleep(OTHERS_AFTER).await;
                        }
                        let endpoint = client_endpoint(any_local(addr), ca, me)?;
                        match tokio::time::timeout(timeout, connect(&endpoint, addr)).await {
                            Ok(Ok(conn)) => Ok((text, Client { endpoint, conn })),
                            Ok(Err(e)) => Err(e),
                            Err(_) => Err(TransportError::Timeout {
                                addr,
                                after: timeout,
                            }),
                        }
                    }
                })
                .collect();
            let mut timed_out = false;
            while let Some(result) = dials.next().await {
                match result {
                    Ok((text, client)) => {
                        *LAST_ANSWERED
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(text.clone());
                        return Ok(client);
                    }
                    Err(e) => {
                        if let (Some(why), &TransportError::Connection { peer, .. }) =
                            (e.tls_refusal(), &e)
                        {
                            return Err(ClientError::Refused { addr: peer, why });
                        }
                        timed_out |= matches!(e, TransportError::Timeout { .. });
                        last = Some(e);
                    }
                }
            }
            if !timed_out {
                break;
            }
        }
        Err(ClientError::Unreachable {
            tried: addrs.join(", "),
            last: Box::new(last.unwrap_or_else(|| {
                TransportError::Config("the cluster file lists no coordinator".into())
            })),
        })
    }

    /// Sends one request and waits for its reply.
    pub async fn request(&self, req: &Request) -> Result<Reply, TransportError> {
        request(&self.conn, req).await.map_err(|e| {
            // A server that refuses the client's certificate closes the
            // connection after the client's side of the handshake is done:
            // the first request is where that shows.
            match self.conn.close_reason() {
                Some(reason) if crate::tls_refusal(&reason).is_some() => {
                    TransportError::ConnectionLost(reason)
                }
                _ => e,
            }
        })
    }

    /// The connection (agents serve the coordinator's requests on it).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Closes the connection and waits until the peer knows.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}

/// Exchanges a join token for a credential at the coordinator whose API
/// listens on `api`, trusting it only under the CA with `fingerprint`.
pub async fn join(
    api: SocketAddr,
    fingerprint: &str,
    req: &JoinRequest,
) -> Result<JoinReply, TransportError> {
    let addr = join_addr(api);
    let endpoint = join_client_endpoint(any_local(addr), fingerprint)?;
    let conn = connect(&endpoint, addr).await?;
    let reply = request(&conn, req).await;
    conn.close(0u32.into(), b"joined");
    endpoint.wait_idle().await;
    reply
}
