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

/// TLS 1.2 handshake signature check with the one crypto provider, for
/// labspan's own certificate verifiers (the join endpoint here, the image
/// endpoint in labspan-image).
pub fn verify_tls12_signature(
    message: &[u8],
    cert: &rustls::pki_types::CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    let algs = crypto_provider().signature_verification_algorithms;
    rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
}

/// TLS 1.3 handshake signature check with the one crypto provider.
pub fn verify_tls13_signature(
    message: &[u8],
    cert: &rustls::pki_types::CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    let algs = crypto_provider().signature_verification_algorithms;
    rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
}

/// The signature schemes the one crypto provider verifies.
pub fn supported_verify_schemes() -> Vec<rustls::SignatureScheme> {
    crypto_provider()
        .signature_verification_algorithms
        .supported_schemes()
}
