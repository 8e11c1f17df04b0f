//! How the CLI and agents reach a cluster: the cluster file (coordinator
//! addresses and this member's credential), a client that talks to any
//! coordinator, and the join exchange.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use labspan_proto::msg::{JoinReply, JoinRequest, Reply, Request};
use quinn::{Connection, Endpoint};
use serde::{Deserialize, Serialize};

use crate::tls::{self, NodeCredential};
use crate::{client_endpoint, connect, join_client_endpoint, request, TransportError};

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
    #[error("cluster file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The cluster file is not what `labspan cluster init` writes.
    #[error("cluster file {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// The credential in the cluster file is unusable.
    #[error("cluster credential: {0}")]
    Tls(#[from] tls::TlsError),
    /// No coordinator of the list answered.
    #[error("no coordinator answered (tried {tried}): {last}")]
    Unreachable {
        tried: String,
        #[source]
        last: Box<TransportError>,
    },
    /// Building the endpoint failed.
    #[error(transparent)]
    Transport(#[from] Box<TransportError>),
}

impl ClusterFile {
    /// Reads a cluster file.
    pub fn load(path: &Path) -> Result<ClusterFile, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::Io {
            path: path.into(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Invalid {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    /// Writes it, readable by its owner only (it holds a private key).
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let io = |source| ClientError::Io {
            path: path.into(),
            source,
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

/// Writes `bytes` to `path` with mode 0600 (created so, never world-readable).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

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

    /// Connects to the first of `addrs` that answers, with the credential of `file`.
    pub async fn connect_to(file: &ClusterFile, addrs: &[String]) -> Result<Client, ClientError> {
        let (ca, me) = file.credential()?;
        let mut last = None;
        for text in addrs {
            let addr: SocketAddr = match text.parse() {
                Ok(a) => a,
                Err(e) => {
                    last = Some(TransportError::Config(format!(
                        "coordinator address {text:?}: {e}"
                    )));
                    continue;
                }
            };
            let endpoint = client_endpoint(any_local(addr), &ca, &me).map_err(Box::new)?;
            match connect(&endpoint, addr).await {
                Ok(conn) => return Ok(Client { endpoint, conn }),
                Err(e) => last = Some(e),
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
        request(&self.conn, req).await
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
