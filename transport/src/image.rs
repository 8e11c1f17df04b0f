//! QUIC endpoints of the image service agents run beside their control
//! connection (see [`crate::tls::image_server_config`]).

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint};
use rustls::pki_types::CertificateDer;

use crate::endpoint::quinn_client_config;
use crate::tls::{self, NodeCredential, AGENT_SERVER_NAME};
use crate::{transport_config, TransportError};

/// An endpoint serving images on `addr` with the agent credential `me`.
pub fn image_server_endpoint(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Endpoint, TransportError> {
    let tls =
        tls::image_server_config(ca, me).map_err(|e| TransportError::Config(e.to_string()))?;
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Endpoint::server(config, addr).map_err(|cause| TransportError::Bind { addr, cause })
}

/// An endpoint that dials agents' image endpoints, bound to `bind`.
pub fn image_client_endpoint(
    bind: SocketAddr,
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Endpoint, TransportError> {
    let tls =
        tls::image_client_config(ca, me).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut endpoint =
        Endpoint::client(bind).map_err(|cause| TransportError::Bind { addr: bind, cause })?;
    endpoint.set_default_client_config(quinn_client_config(tls)?);
    Ok(endpoint)
}

/// Connects to the image endpoint of an agent at `addr`.
pub async fn connect_image(
    endpoint: &Endpoint,
    addr: SocketAddr,
) -> Result<Connection, TransportError> {
    let connecting = endpoint
        .connect(addr, AGENT_SERVER_NAME)
        .map_err(|cause| TransportError::Connect { addr, cause })?;
    connecting
        .await
        .map_err(|cause| TransportError::Connection { peer: addr, cause })
}
