//! rustls configurations for members: mutual TLS 1.3 against the cluster CA.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::{NodeCredential, TlsError};

/// ALPN protocol of labspan's control plane; bump with the codec's version
/// when a release cannot talk to the previous one.
pub const ALPN: &[u8] = b"labspan/1";

/// The one crypto provider labspan uses: `ring`.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|cause| TlsError::Config {
        what: "trust the cluster CA".into(),
        cause,
    })?;
    Ok(Arc::new(roots))
}

/// Server side (coordinators): presents `me`, requires and verifies a client
/// certificate signed by `ca`; connections without one fail the handshake.
pub fn server_config(
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(TlsError::Verifier)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|cause| TlsError::Config {
            what: "select TLS 1.3 with ring".into(),
            cause,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![me.cert.clone()], me.clone_key())
        .map_err(|cause| TlsError::Config {
            what: "use the member certificate as server certificate".into(),
            cause,
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Client side (every member): trusts only `ca` and presents `me`.
pub fn client_config(
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|cause| TlsError::Config {
            what: "select TLS 1.3 with ring".into(),
            cause,
        })?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(vec![me.cert.clone()], me.clone_key())
        .map_err(|cause| TlsError::Config {
            what: "use the member certificate as client certificate".into(),
            cause,
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}
