use labspan_proto::msg::Role;

use super::*;

type TestResult = Result<(), TlsError>;

#[test]
fn issued_certificate_names_member_and_role() -> TestResult {
    let ca = ClusterCa::generate("lab")?;
    for role in Role::ALL {
        let cred = ca.issue("node-7", role)?;
        let id = peer_identity(&cred.cert)?;
        assert_eq!(
            id,
            PeerIdentity {
                name: "node-7".into(),
                role
            }
        );
    }
    Ok(())
}

#[test]
fn invalid_member_names_are_refused() {
    let ca = match ClusterCa::generate("lab") {
        Ok(ca) => ca,
        Err(e) => panic!("CA generation failed: {e}"),
    };
    for bad in ["", "Upper", "a/b", "x y", &"a".repeat(64)] {
        assert!(
            matches!(
                ca.issue(bad, Role::Agent),
                Err(TlsError::InvalidName { .. })
            ),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn certificate_without_identity_is_refused() -> TestResult {
    // A CA certificate carries no labspan identity URI.
    let ca = ClusterCa::generate("lab")?;
    assert!(matches!(
        peer_identity(ca.cert()),
        Err(TlsError::NoIdentity { found: 0 })
    ));
    assert!(matches!(
        peer_identity(b"not a certificate"),
        Err(TlsError::BadCertificate { .. })
    ));
    Ok(())
}

#[test]
fn identity_uris_are_checked() {
    assert!(identity::tests_parse("labspan://role/agent/h1").is_ok());
    for bad in [
        "labspan://role/root/h1",
        "labspan://role/agent",
        "labspan://role/agent/H 1",
    ] {
        assert!(
            matches!(
                identity::tests_parse(bad),
                Err(TlsError::BadIdentity { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn ca_and_credentials_survive_pem() -> TestResult {
    let ca = ClusterCa::generate("lab")?;
    let again = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem())?;
    assert_eq!(again.cert(), ca.cert());
    // A reloaded CA still signs certificates that the original CA's trust accepts.
    let cred = again.issue("c2", Role::Coordinator)?;
    let cred = NodeCredential::from_pem(&cred.cert_pem(), &cred.key_pem())?;
    assert_eq!(peer_identity(&cred.cert)?.role, Role::Coordinator);
    server_config(ca.cert(), &cred)?;
    client_config(ca.cert(), &cred)?;
    Ok(())
}

#[test]
fn fingerprint_identifies_the_ca() -> TestResult {
    let ca = ClusterCa::generate("lab")?;
    let other = ClusterCa::generate("lab")?;
    let fp = ca_fingerprint(ca.cert());
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64);
    check_ca_fingerprint(ca.cert(), &fp)?;
    check_ca_fingerprint(ca.cert(), &fp.to_uppercase().replace("SHA256:", ""))?;
    assert!(matches!(
        check_ca_fingerprint(other.cert(), &fp),
        Err(TlsError::FingerprintMismatch { .. })
    ));
    Ok(())
}

#[test]
fn configs_speak_labspan_alpn_only() -> TestResult {
    let ca = ClusterCa::generate("lab")?;
    let cred = ca.issue("c1", Role::Coordinator)?;
    assert_eq!(
        server_config(ca.cert(), &cred)?.alpn_protocols,
        vec![ALPN.to_vec()]
    );
    assert_eq!(
        client_config(ca.cert(), &cred)?.alpn_protocols,
        vec![ALPN.to_vec()]
    );
    Ok(())
}

#[test]
fn a_signed_request_names_what_the_ca_says_for_the_members_own_key() -> TestResult {
    let ca = ClusterCa::generate("lab")?;
    // The request asks nothing the CA would honour: the name and role in
    // the certificate are the CA's.
    let request = CertificateRequest::generate("asked-for")?;
    let cert = ca.sign_request("node-7", Role::Agent, &request.csr_pem)?;
    assert_eq!(
        peer_identity(&cert)?,
        PeerIdentity {
            name: "node-7".into(),
            role: Role::Agent
        }
    );
    let cred = request.credential(&cert_to_pem(&cert))?;
    assert_eq!(cred.cert, cert);
    // A certificate for another key is not this member's.
    let other = CertificateRequest::generate("node-7")?;
    assert!(matches!(
        other.credential(&cert_to_pem(&cert)),
        Err(TlsError::BadCertificate { .. })
    ));
    Ok(())
}

#[test]
fn requests_that_are_not_requests_are_refused() -> TestResult {
    let ca = ClusterCa::generate("lab")?;
    let cred = ca.issue("node-7", Role::Agent)?;
    for bad in ["", "not pem", &cred.cert_pem()] {
        assert!(
            matches!(
                ca.sign_request("node-7", Role::Agent, bad),
                Err(TlsError::Generate { .. })
            ),
            "{bad:?} signed"
        );
    }
    Ok(())
}

/// An agent's QEMUs serve a move's streams with its certificate: it names
/// the agent's host name and may serve; admin and viewer ones may not.
#[test]
fn agent_certificates_may_serve_a_move_under_their_host_name() -> TestResult {
    use x509_parser::extensions::GeneralName;
    let ca = ClusterCa::generate("lab")?;
    for role in Role::ALL {
        let cred = ca.issue("h1", role)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cred.cert).map_err(|e| {
            TlsError::BadCertificate {
                reason: e.to_string(),
            }
        })?;
        let dns: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let serves = cert
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|e| e.value.server_auth);
        let subject = cert.subject().to_string();
        match role {
            Role::Agent => {
                assert_eq!(dns, vec![agent_host_name("h1")]);
                assert!(serves);
                // x509-parser writes the subject as GnuTLS does, with spaces.
                assert_eq!(subject.replace(", ", ","), member_subject(role, "h1"));
            }
            Role::Coordinator => {
                assert_eq!(dns, vec![COORDINATOR_SERVER_NAME.to_string()]);
                assert!(serves);
            }
            Role::Admin | Role::Viewer => {
                assert!(dns.is_empty(), "{role}: {dns:?}");
                assert!(!serves, "{role}");
            }
        }
    }
    Ok(())
}
