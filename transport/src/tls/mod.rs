//! Cluster identity: the cluster CA, member certificates that name the member
//! and its role, and the rustls configurations every QUIC connection uses.
//!
//! Only the `ring` crypto provider is used (aws-lc-rs needs cmake and a long C
//! build). Every connection is mutual TLS 1.3: the server requires a client
//! certificate from the cluster CA, and the client requires a server
//! certificate for [`COORDINATOR_SERVER_NAME`], which only coordinator
//! certificates carry.

mod ca;
mod config;
mod identity;
mod join;
mod verifier;

pub use ca::{
    agent_host_name, cert_from_pem, cert_to_pem, check_request, member_subject, CertificateRequest,
    ClusterCa, NodeCredential,
};
pub use config::{client_config, crypto_provider, server_config, ALPN};
pub use identity::{ca_fingerprint, check_ca_fingerprint, peer_identity, PeerIdentity};
pub use join::{join_client_config, join_server_config, JOIN_ALPN};
pub use verifier::{server_verifier, ServerChainCheck};

/// DNS name every coordinator certificate carries and every client asks for:
/// clients reach coordinators by address, and any coordinator of the cluster
/// may answer, but an agent or admin certificate can never pose as a server.
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.labspan";

/// Why a certificate could not be made, loaded, or trusted.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A member name is not `[a-z0-9-]`, 1..=63 characters.
    #[error("invalid member name {name:?}: use 1 to 63 of a-z, 0-9 and '-'")]
    InvalidName { name: String },
    /// rcgen failed to build or sign a certificate.
    #[error("cannot {what}: {cause}")]
    Generate { what: String, cause: rcgen::Error },
    /// A PEM file or string does not hold what it should.
    #[error("cannot read {what} from PEM: {reason}")]
    Pem { what: String, reason: String },
    /// A peer's certificate cannot be parsed as X.509.
    #[error("peer certificate is not valid X.509: {reason}")]
    BadCertificate { reason: String },
    /// A peer's certificate carries no (or more than one) labspan identity.
    #[error("peer certificate names {found} labspan identities (expected exactly one `labspan://role/ROLE/NAME` URI)")]
    NoIdentity { found: usize },
    /// A labspan identity URI is malformed.
    #[error("peer certificate identity {uri:?} is invalid: {reason}")]
    BadIdentity { uri: String, reason: String },
    /// The connection has no peer certificate (it did not authenticate).
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The CA a coordinator presented is not the one the join command named.
    #[error("cluster CA fingerprint is {actual}, expected {expected}: refusing to join (check the fingerprint printed by `labspan cluster token`)")]
    FingerprintMismatch { expected: String, actual: String },
    /// rustls refused to build a configuration.
    #[error("cannot build TLS configuration: {what}: {cause}")]
    Config { what: String, cause: rustls::Error },
    /// rustls refused to build the client certificate verifier.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(rustls::server::VerifierBuilderError),
}

/// Checks a member name: it goes into URIs, file names and error messages.
pub fn validate_name(name: &str) -> Result<(), TlsError> {
    labspan_proto::names::valid::member(name).map_err(|_| TlsError::InvalidName {
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests;
