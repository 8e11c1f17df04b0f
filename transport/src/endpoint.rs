//! Building quinn endpoints from the cluster TLS material, and connecting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, TransportConfig};
use rustls::pki_types::CertificateDer;

use crate::tls::{self, NodeCredential, PeerIdentity, COORDINATOR_SERVER_NAME};
use crate::TransportError;

/// How often an idle connection sends a keep-alive (well under [`IDLE_TIMEOUT`]).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a connection may be silent before it is considered dead; with
/// keep-alives, this is how long a vanished peer goes unnoticed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The QUIC transport settings every labspan connection uses.
pub fn transport_config() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    // 20 s fits in a QUIC varint of milliseconds; the conversion cannot fail.
    t.max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    Arc::new(t)
}

fn client_config(
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<quinn::ClientConfig, TransportError> {
    let tls = tls::client_config(ca, me).map_err(|e| TransportError::Config(e.to_string()))?;
    quinn_client_config(tls)
}

/// Wraps a rustls client configuration for quinn, with labspan's transport settings.
pub fn quinn_client_config(
    tls: Arc<rustls::ClientConfig>,
) -> Result<quinn::ClientConfig, TransportError> {
    let quic =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// An endpoint that accepts members' connections on `addr` (and can also
/// dial out, e.g. to other coordinators, with the same identity).
pub fn server_endpoint(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Endpoint, TransportError> {
    let tls = tls::server_config(ca, me).map_err(|e| TransportError::Config(e.to_string()))?;
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    let mut endpoint =
        Endpoint::server(config, addr).map_err(|cause| TransportError::Bind { addr, cause })?;
    endpoint.set_default_client_config(client_config(ca, me)?);
    Ok(endpoint)
}

/// An endpoint that only dials out (agents, the CLI), bound to `bind`.
pub fn client_endpoint(
    bind: SocketAddr,
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Endpoint, TransportError> {
    let mut endpoint =
        Endpoint::client(bind).map_err(|cause| TransportError::Bind { addr: bind, cause })?;
    endpoint.set_default_client_config(client_config(ca, me)?);
    Ok(endpoint)
}

/// Connects to the coordinator at `addr` and checks it is one.
///
/// The server certificate must carry [`COORDINATOR_SERVER_NAME`] (only
/// coordinator certificates do) and be signed by the cluster CA.
pub async fn connect(endpoint: &Endpoint, addr: SocketAddr) -> Result<Connection, TransportError> {
    let connecting = endpoint
        .connect(addr, COORDINATOR_SERVER_NAME)
        .map_err(|cause| TransportError::Connect { addr, cause })?;
    connecting
        .await
        .map_err(|cause| TransportError::Connection { peer: addr, cause })
}

/// The verified identity of the member at the other end of `conn`.
pub fn peer_identity_of(conn: &Connection) -> Result<PeerIdentity, TransportError> {
    let peer = conn.remote_address();
    let err = |cause| TransportError::Identity { peer, cause };
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| err(tls::TlsError::NoPeerCertificate))?;
    let leaf = certs
        .first()
        .ok_or_else(|| err(tls::TlsError::NoPeerCertificate))?;
    tls::peer_identity(leaf).map_err(err)
}

/// The endpoint on which a coordinator answers joins: it asks no client
/// certificate (joiners have none yet) and speaks only the join ALPN.
pub fn join_server_endpoint(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Endpoint, TransportError> {
    let tls = tls::join_server_config(ca, me).map_err(|e| TransportError::Config(e.to_string()))?;
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Endpoint::server(config, addr).map_err(|cause| TransportError::Bind { addr, cause })
}

/// A client endpoint for joining: no certificate; it trusts a coordinator
/// only under the CA whose fingerprint is `fingerprint`.
pub fn join_client_endpoint(
    bind: SocketAddr,
    fingerprint: &str,
) -> Result<Endpoint, TransportError> {
    let tls =
        tls::join_client_config(fingerprint).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut endpoint =
        Endpoint::client(bind).map_err(|cause| TransportError::Bind { addr: bind, cause })?;
    endpoint.set_default_client_config(quinn_client_config(tls)?);
    Ok(endpoint)
}
