//! Real QUIC with mutual TLS on 127.0.0.1: who gets in, and what a bad
//! message does to its stream (and only to its stream).

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use labspan_proto::codec::{self, HEADER_LEN, MAX_MESSAGE_SIZE};
use labspan_proto::msg::{ErrorKind, ErrorReply, Reply, Request, Role};
use labspan_transport::tls::{self, ClusterCa, NodeCredential, PeerIdentity};
use labspan_transport::{self as transport, Service, StreamErrorCode, TransportError};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Answers pings and tells callers who they are.
struct Echo;

impl Service for Echo {
    type Request = Request;
    type Reply = Reply;

    async fn handle(&self, peer: &PeerIdentity, req: Request) -> Reply {
        match req {
            Request::Ping { nonce } => Reply::Pong { nonce },
            Request::WhoAmI => Reply::Identity {
                name: peer.name.clone(),
                role: peer.role,
            },
            _ => Reply::Error(ErrorReply::new(
                ErrorKind::Invalid,
                "echo answers Ping and WhoAmI",
            )),
        }
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A coordinator serving [`Echo`]; returns its address and the CA.
fn start_coordinator() -> Result<(ClusterCa, SocketAddr, Endpoint), Box<dyn std::error::Error>> {
    let ca = ClusterCa::generate("test")?;
    let me = ca.issue("c1", Role::Coordinator)?;
    let endpoint = transport::server_endpoint(loopback(), ca.cert(), &me)?;
    let addr = endpoint.local_addr()?;
    transport::serve(endpoint.clone(), Arc::new(Echo));
    Ok((ca, addr, endpoint))
}

async fn member_connection(
    ca: &ClusterCa,
    addr: SocketAddr,
    name: &str,
    role: Role,
) -> Result<Connection, Box<dyn std::error::Error>> {
    let cred = ca.issue(name, role)?;
    let endpoint = transport::client_endpoint(loopback(), ca.cert(), &cred)?;
    Ok(transport::connect(&endpoint, addr).await?)
}

/// Connects with a raw rustls config and sends one ping; Ok only if answered.
async fn ping_with(tls: rustls::ClientConfig, addr: SocketAddr) -> Result<Reply, TransportError> {
    let quic = QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| TransportError::Config(e.to_string()))?;
    let mut endpoint =
        Endpoint::client(loopback()).map_err(|cause| TransportError::Bind { addr, cause })?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport::transport_config());
    endpoint.set_default_client_config(cfg);
    let conn = transport::connect(&endpoint, addr).await?;
    transport::request(&conn, &Request::Ping { nonce: 1 }).await
}

/// The TLS alert that refused a handshake, as (close reason) text.
///
/// A TLS 1.3 client sends its certificate last, so the refusal reaches it
/// either while connecting or as the connection closing with a TLS alert
/// (a QUIC CRYPTO_ERROR, 0x100..=0x1ff) before any reply.
fn tls_refusal(result: &Result<Reply, TransportError>) -> Option<String> {
    use quinn::ConnectionError::{ConnectionClosed, TransportError as Transport};
    let (code, reason) = match result {
        Err(TransportError::Connection { cause: source, .. })
        | Err(TransportError::ConnectionLost(source)) => match source {
            ConnectionClosed(c) => (
                u64::from(c.error_code),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            Transport(e) => (u64::from(e.code), e.reason.clone()),
            _ => return None,
        },
        _ => return None,
    };
    (0x100..=0x1ff).contains(&code).then_some(reason)
}

fn rustls_client(
    ca: &ClusterCa,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.cert().clone())
        .expect("a CA made by rcgen is a valid root");
    rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_root_certificates(roots)
}

fn with_alpn(mut c: rustls::ClientConfig) -> rustls::ClientConfig {
    c.alpn_protocols = vec![tls::ALPN.to_vec()];
    c
}

#[tokio::test]
async fn member_with_ca_signed_certificate_gets_in_with_its_role() -> TestResult {
    let (ca, addr, _server) = start_coordinator()?;
    let conn = member_connection(&ca, addr, "host-1", Role::Agent).await?;
    let pong: Reply = transport::request(&conn, &Request::Ping { nonce: 42 }).await?;
    assert_eq!(pong, Reply::Pong { nonce: 42 });
    let who: Reply = transport::request(&conn, &Request::WhoAmI).await?;
    assert_eq!(
        who,
        Reply::Identity {
            name: "host-1".into(),
            role: Role::Agent
        }
    );
    // The client sees the server's identity too.
    let server = transport::peer_identity_of(&conn)?;
    assert_eq!(
        server,
        PeerIdentity {
            name: "c1".into(),
            role: Role::Coordinator
        }
    );
    Ok(())
}

#[tokio::test]
async fn every_role_is_read_back_from_its_certificate() -> TestResult {
    let (ca, addr, _server) = start_coordinator()?;
    for role in Role::ALL {
        let conn = member_connection(&ca, addr, "m-1", role).await?;
        let who: Reply = transport::request(&conn, &Request::WhoAmI).await?;
        assert_eq!(
            who,
            Reply::Identity {
                name: "m-1".into(),
                role
            }
        );
    }
    Ok(())
}

#[tokio::test]
async fn client_without_certificate_is_refused() -> TestResult {
    let (ca, addr, _server) = start_coordinator()?;
    let tls = with_alpn(rustls_client(&ca).with_no_client_auth());
    let result = ping_with(tls, addr).await;
    let reason = tls_refusal(&result).ok_or(format!("expected a TLS refusal, got {result:?}"))?;
    assert!(reason.contains("no certificates"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn client_with_certificate_from_another_ca_is_refused() -> TestResult {
    let (ca, addr, _server) = start_coordinator()?;
    let rogue_ca = ClusterCa::generate("rogue")?;
    let rogue: NodeCredential = rogue_ca.issue("admin-1", Role::Admin)?;
    // It trusts the real CA (so it would accept the server) but presents a rogue certificate.
    let tls = with_alpn(
        rustls_client(&ca).with_client_auth_cert(vec![rogue.cert.clone()], rogue.clone_key())?,
    );
    let result = ping_with(tls, addr).await;
    let reason = tls_refusal(&result).ok_or(format!("expected a TLS refusal, got {result:?}"))?;
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn agent_certificate_cannot_pose_as_a_coordinator() -> TestResult {
    let ca = ClusterCa::generate("test")?;
    let agent = ca.issue("host-1", Role::Agent)?;
    // An agent's certificate lacks the coordinator server name: clients refuse it.
    let endpoint = transport::server_endpoint(loopback(), ca.cert(), &agent)?;
    let addr = endpoint.local_addr()?;
    transport::serve(endpoint.clone(), Arc::new(Echo));
    let admin = ca.issue("admin-1", Role::Admin)?;
    let client = transport::client_endpoint(loopback(), ca.cert(), &admin)?;
    let result = transport::connect(&client, addr)
        .await
        .map(|_| Reply::Pong { nonce: 0 });
    let reason = tls_refusal(&result).ok_or(format!("expected a TLS refusal, got {result:?}"))?;
    // It lacks both the serverAuth usage and the coordinator server name.
    assert!(reason.contains("invalid peer certificate"), "{reason}");
    Ok(())
}

/// Sends raw bytes on a new stream and reads the reply (or the refusal).
async fn send_raw(conn: &Connection, bytes: &[u8]) -> Result<Reply, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| TransportError::Stream {
        doing: "opening a stream",
        reason: e.to_string(),
    })?;
    // The server may stop the stream before everything is written.
    let written = send.write_all(bytes).await;
    let _ = send.finish();
    let reply = transport::read_frame(&mut recv).await;
    if reply.is_ok() {
        written.map_err(|e| TransportError::Stream {
            doing: "writing",
            reason: e.to_string(),
        })?;
    }
    reply
}

fn refused_with(result: Result<Reply, TransportError>, want: StreamErrorCode) {
    match result {
        Err(TransportError::Refused { code }) => assert_eq!(code, want),
        other => panic!("expected the stream to be refused with {want}, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_messages_fail_their_stream_and_the_connection_keeps_serving() -> TestResult {
    let (ca, addr, _server) = start_coordinator()?;
    let conn = member_connection(&ca, addr, "admin-1", Role::Admin).await?;
    let good = codec::encode(&Request::Ping { nonce: 7 })?;

    let mut garbage = good[..HEADER_LEN].to_vec();
    garbage.extend(std::iter::repeat_n(0xff, good.len() - HEADER_LEN));
    let mut wrong_version = good.clone();
    wrong_version[2..4].copy_from_slice(&9u16.to_be_bytes());
    let mut trailing = good.clone();
    trailing.push(0);
    let mut oversized = good[..HEADER_LEN].to_vec();
    oversized[4..8].copy_from_slice(&((MAX_MESSAGE_SIZE + 1) as u32).to_be_bytes());
    oversized.extend(vec![0u8; 64 * 1024]);

    let cases: [(&str, &[u8], StreamErrorCode); 6] = [
        ("garbage payload", &garbage, StreamErrorCode::Malformed),
        (
            "truncated payload",
            &good[..good.len() - 1],
            StreamErrorCode::Truncated,
        ),
        ("truncated header", &good[..3], StreamErrorCode::Truncated),
        (
            "wrong version",
            &wrong_version,
            StreamErrorCode::WrongVersion,
        ),
        ("trailing bytes", &trailing, StreamErrorCode::Malformed),
        ("oversized", &oversized, StreamErrorCode::Oversized),
    ];
    for (what, bytes, code) in cases {
        refused_with(send_raw(&conn, bytes).await, code);
        // Same connection, next stream: served as usual.
        let pong: Reply = transport::request(&conn, &Request::Ping { nonce: 8 })
            .await
            .map_err(|e| format!("after {what}: {e}"))?;
        assert_eq!(pong, Reply::Pong { nonce: 8 }, "after {what}");
    }
    // A raw but valid envelope is answered: the refusals above were about content.
    assert_eq!(send_raw(&conn, &good).await?, Reply::Pong { nonce: 7 });
    Ok(())
}

#[tokio::test]
async fn endpoint_keeps_accepting_after_refusing_a_handshake() -> TestResult {
    let (ca, addr, _server) = start_coordinator()?;
    let tls = with_alpn(rustls_client(&ca).with_no_client_auth());
    assert!(tls_refusal(&ping_with(tls, addr).await).is_some());
    let conn = member_connection(&ca, addr, "viewer-1", Role::Viewer).await?;
    let pong: Reply = transport::request(&conn, &Request::Ping { nonce: 3 }).await?;
    assert_eq!(pong, Reply::Pong { nonce: 3 });
    Ok(())
}

/// Answers with the length of the bytes it got.
struct Length;

impl Service for Length {
    type Request = Vec<u8>;
    type Reply = u64;

    async fn handle(&self, _peer: &PeerIdentity, req: Vec<u8>) -> u64 {
        req.len() as u64
    }
}

#[tokio::test]
async fn large_messages_cross_in_many_packets() -> TestResult {
    let ca = ClusterCa::generate("test")?;
    let me = ca.issue("c1", Role::Coordinator)?;
    let endpoint = transport::server_endpoint(loopback(), ca.cert(), &me)?;
    let addr = endpoint.local_addr()?;
    transport::serve(endpoint.clone(), Arc::new(Length));
    let conn = member_connection(&ca, addr, "admin-1", Role::Admin).await?;
    let big = vec![7u8; 4 * 1024 * 1024];
    let len: u64 = transport::request(&conn, &big).await?;
    assert_eq!(len, big.len() as u64);
    Ok(())
}
