//! The cluster CA (rcgen) and the member certificates it signs.

use labspan_proto::msg::Role;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use super::identity::identity_uri;
use super::{validate_name, TlsError, COORDINATOR_SERVER_NAME};

/// How long the cluster CA is valid.
const CA_VALIDITY: Duration = Duration::days(10 * 365);
/// How long a member certificate is valid; renewal is a re-join.
const MEMBER_VALIDITY: Duration = Duration::days(365);
/// Backdating that tolerates clocks a few minutes apart between members.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// The certificate authority of one cluster: it signs every member's certificate.
pub struct ClusterCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A member's certificate and private key (PKCS#8), as presented on connections.
#[derive(Debug)]
pub struct NodeCredential {
    /// The member certificate, signed by the cluster CA.
    pub cert: CertificateDer<'static>,
    /// The member's private key.
    pub key: PrivateKeyDer<'static>,
}

fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> TlsError {
    let what = what.into();
    move |cause| TlsError::Generate { what, cause }
}

impl ClusterCa {
    /// Creates a new CA for the cluster `cluster` (a fresh P-256 key).
    pub fn generate(cluster: &str) -> Result<Self, TlsError> {
        validate_name(cluster)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "labspan");
        dn.push(DnType::CommonName, format!("labspan cluster CA {cluster}"));
        params.distinguished_name = dn;
        // pathlen 0: the CA signs members only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let key = KeyPair::generate().map_err(gen_err("generate the CA key"))?;
        let cert = params
            .self_signed(&key)
            .map_err(gen_err("self-sign the cluster CA"))?;
        Ok(Self {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA saved with [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(gen_err("read the CA key PEM"))?;
        let cert =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| TlsError::Pem {
                what: "the CA certificate".into(),
                reason: e.to_string(),
            })?;
        let issuer =
            Issuer::from_ca_cert_der(&cert, key).map_err(gen_err("read the CA certificate"))?;
        Ok(Self { cert, issuer })
    }

    /// The CA certificate (DER), which every member trusts.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate as PEM, to save or hand to joining members.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// The CA private key as PEM; whoever holds it can mint members.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a certificate naming member `name` with `role`, with a key
    /// made here (the first coordinator's own, and the admin's, at `init`).
    ///
    /// The identity is the SAN URI `labspan://role/ROLE/NAME` (read back by
    /// [`super::peer_identity`]); coordinators also get the DNS name
    /// [`COORDINATOR_SERVER_NAME`] and the serverAuth usage so they can serve.
    pub fn issue(&self, name: &str, role: Role) -> Result<NodeCredential, TlsError> {
        let key = KeyPair::generate().map_err(gen_err(format!("generate a key for {name}")))?;
        let cert = self.sign(name, role, &key)?;
        Ok(NodeCredential {
            cert,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Signs the certificate request a joining member made with its own key
    /// ([`CertificateRequest::generate`]): the member's private key never
    /// leaves it. The request's signature is checked (it proves the member
    /// holds the key); only its public key is used: the name, role, usages
    /// and validity are the CA's, whatever the request asked for.
    pub fn sign_request(
        &self,
        name: &str,
        role: Role,
        csr_pem: &str,
    ) -> Result<CertificateDer<'static>, TlsError> {
        let csr = check_request(name, csr_pem)?;
        self.sign(name, role, &csr.public_key)
    }

    fn sign(
        &self,
        name: &str,
        role: Role,
        public_key: &impl PublicKeyData,
    ) -> Result<CertificateDer<'static>, TlsError> {
        let params = member_params(name, role)?;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(gen_err(format!("sign the certificate of {role} {name}")))?;
        Ok(cert.der().clone())
    }
}

/// Reads and checks a member's certificate request (its self-signature).
/// Checked before a join token is spent on it.
pub fn check_request(
    name: &str,
    csr_pem: &str,
) -> Result<CertificateSigningRequestParams, TlsError> {
    CertificateSigningRequestParams::from_pem(csr_pem).map_err(gen_err(format!(
        "read the certificate request of {name} (a PEM `CERTIFICATE REQUEST` signed by its own key)"
    )))
}

/// The DNS name agent `name`'s certificate carries, which a QEMU of
/// another agent checks when it opens a move's stream to it.
pub fn agent_host_name(name: &str) -> String {
    format!("{name}.agent.labspan")
}

/// The subject of `role` `name`'s certificate as GnuTLS writes it (QEMU
/// authorizes a TLS client by this string, `authz-simple`): the order of
/// [`member_params`]'s distinguished name.
pub fn member_subject(role: Role, name: &str) -> String {
    format!("O=labspan,OU={},CN={name}", role.as_str())
}

/// What every member certificate says: its identity, usages and validity.
fn member_params(name: &str, role: Role) -> Result<CertificateParams, TlsError> {
    validate_name(name)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "labspan");
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let uri = identity_uri(role, name)
        .try_into()
        .map_err(gen_err(format!("encode the identity of {name}")))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let server_name = match role {
        Role::Coordinator => Some(COORDINATOR_SERVER_NAME.to_string()),
        // An agent's QEMUs serve a moved guest's disk and RAM streams with
        // this certificate (QEMU's `tls-creds-x509`), and the other agent's
        // QEMU checks this name. GnuTLS, under QEMU, wants the
        // keyEncipherment usage of any TLS certificate whose key usages are
        // critical, as rcgen makes them.
        Role::Agent => {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
            Some(agent_host_name(name))
        }
        Role::Admin | Role::Viewer => None,
    };
    if let Some(server_name) = server_name {
        let dns = server_name
            .try_into()
            .map_err(gen_err(format!("encode the server name of {name}")))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + MEMBER_VALIDITY;
    Ok(params)
}

/// A joining member's own key and the certificate request it sends: the
/// key stays with the member.
pub struct CertificateRequest {
    key: KeyPair,
    /// The request (PEM), for [`ClusterCa::sign_request`].
    pub csr_pem: String,
}

impl CertificateRequest {
    /// A fresh key for member `name` and a request signed by it.
    pub fn generate(name: &str) -> Result<Self, TlsError> {
        validate_name(name)?;
        let key = KeyPair::generate().map_err(gen_err(format!("generate a key for {name}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        let csr = params
            .serialize_request(&key)
            .map_err(gen_err(format!("make the certificate request of {name}")))?;
        let csr_pem = csr
            .pem()
            .map_err(gen_err(format!("encode the certificate request of {name}")))?;
        Ok(Self { key, csr_pem })
    }

    /// The private key as PEM (PKCS#8), to save beside the certificate.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The credential once the CA signed the request: refused when the
    /// certificate is not for this key.
    pub fn credential(&self, cert_pem: &str) -> Result<NodeCredential, TlsError> {
        let cert = cert_from_pem(cert_pem, "the member certificate")?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert).map_err(|e| TlsError::BadCertificate {
                reason: e.to_string(),
            })?;
        if parsed.public_key().raw != self.key.subject_public_key_info().as_slice() {
            return Err(TlsError::BadCertificate {
                reason: "the certificate granted is not for the key this member made".into(),
            });
        }
        Ok(NodeCredential {
            cert,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der())),
        })
    }
}

impl NodeCredential {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// The private key as PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", self.key.secret_der())
    }

    /// Loads a credential saved with [`NodeCredential::cert_pem`] and [`NodeCredential::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let pem_err = |what: &str| {
            let what = what.to_string();
            move |e: rustls::pki_types::pem::Error| TlsError::Pem {
                what,
                reason: e.to_string(),
            }
        };
        Ok(Self {
            cert: CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(pem_err("the member certificate"))?,
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(pem_err("the member key"))?,
        })
    }

    /// A copy that can be moved into a rustls configuration.
    pub fn clone_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// A certificate (DER) as PEM.
pub fn cert_to_pem(der: &CertificateDer<'_>) -> String {
    pem_encode("CERTIFICATE", der)
}

/// Reads one certificate from PEM.
pub fn cert_from_pem(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// PEM-encodes DER bytes (RFC 7468: standard base64, 64 columns).
fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
