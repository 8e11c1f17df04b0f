//! The image endpoint every agent serves (`labspan-image/1`), its TLS and
//! its QUIC endpoints: agents fetch images (and checkpoint files) from
//! each other, admins push images to an agent. What each role may ask is
//! decided where requests are served ([`crate::transfer`]).
//!
//! The client here does not check a server name (it reaches agents by
//! address, and any agent may serve an image): it checks that the
//! server's chain ends in the cluster CA with the clientAuth usage every
//! member certificate carries, and that the certificate names an agent. The server
//! requires a client certificate from the cluster CA as every endpoint does;
//! which role may do what is decided by the image service.

use std::net::SocketAddr;
use std::sync::Arc;

use labspan_proto::msg::Role;
use labspan_transport::tls::{
    client_config, crypto_provider, peer_identity, server_config, server_verifier, NodeCredential,
    ServerChainCheck, TlsError,
};
use labspan_transport::{quinn_client_config, transport_config, TransportError};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint};
use rustls::client::danger::ServerCertVerified;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN of the image endpoint: it speaks nothing else.
pub const IMAGE_ALPN: &[u8] = b"labspan-image/1";

/// The server name image clients send (not checked: see the module doc).
pub const AGENT_SERVER_NAME: &str = "agent.labspan";

/// Server side of the image endpoint: presents the agent's certificate and
/// requires a client certificate from the cluster CA.
pub fn image_server_config(
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = (*server_config(ca, me)?).clone();
    config.alpn_protocols = vec![IMAGE_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Client side: presents `me`, trusts a server only when its certificate
/// is an agent's from the cluster CA.
pub fn image_client_config(
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|cause| TlsError::Config {
        what: "trust the cluster CA".into(),
        cause,
    })?;
    let members = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(TlsError::Verifier)?;
    let mut config = (*client_config(ca, me)?).clone();
    config
        .dangerous()
        .set_certificate_verifier(server_verifier(AgentVerifier { members }));
    config.alpn_protocols = vec![IMAGE_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Accepts a server certificate that the cluster CA issued to an agent.
#[derive(Debug)]
struct AgentVerifier {
    /// Verifies chains of member certificates (clientAuth usage).
    members: Arc<dyn ClientCertVerifier>,
}

impl ServerChainCheck for AgentVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.members
            .verify_client_cert(end_entity, intermediates, now)?;
        let who = peer_identity(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if who.role != Role::Agent {
            return Err(rustls::Error::General(format!(
                "the image endpoint presents the certificate of {} {:?}, not of an agent",
                who.role, who.name
            )));
        }
        Ok(ServerCertVerified::assertion())
    }
}

/// An endpoint serving images on `addr` with the agent credential `me`.
pub fn image_server_endpoint(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Endpoint, TransportError> {
    let tls = image_server_config(ca, me).map_err(|e| TransportError::Config(e.to_string()))?;
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
    let tls = image_client_config(ca, me).map_err(|e| TransportError::Config(e.to_string()))?;
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
