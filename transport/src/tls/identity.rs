//! Who is on the other end: the identity written into a member certificate,
//! and the CA fingerprint a joining member checks.

use labspan_proto::msg::Role;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

use super::{validate_name, TlsError};

/// Prefix of the SAN URI that carries a member's role and name.
const IDENTITY_PREFIX: &str = "labspan://role/";

/// A verified peer: the member name and role from its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub name: String,
    pub role: Role,
}

/// The SAN URI naming `role` and `name`.
pub(super) fn identity_uri(role: Role, name: &str) -> String {
    format!("{IDENTITY_PREFIX}{role}/{name}")
}

/// Reads the (name, role) of a member from its certificate (DER).
///
/// Call it only on a certificate rustls has verified against the cluster CA:
/// this function trusts what the certificate says.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| TlsError::BadCertificate {
            reason: e.to_string(),
        })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate {
            reason: e.to_string(),
        })?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|gn| match gn {
            GeneralName::URI(uri) if uri.starts_with(IDENTITY_PREFIX) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => parse_identity_uri(uri),
        _ => Err(TlsError::NoIdentity { found: uris.len() }),
    }
}

fn parse_identity_uri(uri: &str) -> Result<PeerIdentity, TlsError> {
    let bad = |reason: &str| TlsError::BadIdentity {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let rest = uri
        .strip_prefix(IDENTITY_PREFIX)
        .ok_or_else(|| bad("wrong prefix"))?;
    let (role, name) = rest
        .split_once('/')
        .ok_or_else(|| bad("expected ROLE/NAME"))?;
    let role: Role = role
        .parse()
        .map_err(|e: labspan_proto::msg::UnknownRole| bad(&e.to_string()))?;
    validate_name(name).map_err(|e| bad(&e.to_string()))?;
    Ok(PeerIdentity {
        name: name.to_string(),
        role,
    })
}

/// The fingerprint of a CA certificate: `sha256:` and 64 lowercase hex digits.
///
/// `labspan cluster token` prints it; a joining member compares it with the CA
/// the coordinator presents, like kubeadm's `--discovery-token-ca-cert-hash`.
pub fn ca_fingerprint(ca_cert_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(ca_cert_der)))
}

/// Refuses a CA whose fingerprint is not `expected` (case and the `sha256:` prefix are optional).
pub fn check_ca_fingerprint(ca_cert_der: &[u8], expected: &str) -> Result<(), TlsError> {
    let actual = ca_fingerprint(ca_cert_der);
    let want = expected.trim().to_ascii_lowercase();
    let want = want.strip_prefix("sha256:").unwrap_or(&want);
    if actual.strip_prefix("sha256:") == Some(want) {
        Ok(())
    } else {
        Err(TlsError::FingerprintMismatch {
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Test access to the URI parser.
#[cfg(test)]
pub(super) fn tests_parse(uri: &str) -> Result<PeerIdentity, TlsError> {
    parse_identity_uri(uri)
}
