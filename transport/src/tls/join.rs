//! TLS for joining: the one exchange a member makes before it has a
//! certificate. The server does not ask for a client certificate; the client
//! trusts the server only if the chain it shows ends in the CA whose
//! fingerprint the operator gave (`--ca-fingerprint`), as kubeadm's
//! `--discovery-token-ca-cert-hash` does.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::{
    ca_fingerprint, check_ca_fingerprint, crypto_provider, server_verifier, NodeCredential,
    ServerChainCheck, TlsError,
};

/// ALPN of the join exchange: a join endpoint speaks nothing else.
pub const JOIN_ALPN: &[u8] = b"labspan-join/1";

fn tls13_err(cause: rustls::Error) -> TlsError {
    TlsError::Config {
        what: "select TLS 1.3 with ring".into(),
        cause,
    }
}

/// Server side of joins: presents `me` followed by the CA certificate (so
/// the joiner can check the fingerprint), asks no client certificate.
pub fn join_server_config(
    ca: &CertificateDer<'static>,
    me: &NodeCredential,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls13_err)?
        .with_no_client_auth()
        .with_single_cert(vec![me.cert.clone(), ca.clone()], me.clone_key())
        .map_err(|cause| TlsError::Config {
            what: "use the coordinator certificate for joins".into(),
            cause,
        })?;
    config.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Client side of joins: no client certificate; the server must show a
/// coordinator certificate signed by the CA with fingerprint `fingerprint`.
pub fn join_client_config(fingerprint: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = FingerprintVerifier {
        fingerprint: fingerprint.to_string(),
    };
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls13_err)?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Trusts the CA certificate of the presented chain whose fingerprint is
/// the expected one, then verifies the chain against it as usual (names,
/// validity, signatures): the fingerprint replaces a trust store, nothing else.
#[derive(Debug)]
struct FingerprintVerifier {
    fingerprint: String,
}

impl FingerprintVerifier {
    fn inner(
        &self,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| check_ca_fingerprint(c, &self.fingerprint).is_ok())
            .ok_or_else(|| {
                let shown: Vec<String> = intermediates.iter().map(|c| ca_fingerprint(c)).collect();
                rustls::Error::General(format!(
                    "the coordinator's CA is not {} (it shows {shown:?}): check --ca-fingerprint",
                    self.fingerprint
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

impl ServerChainCheck for FingerprintVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The CA travels in the chain only so it can be recognised here.
        self.inner(intermediates)?
            .verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }
}
