//! labspan's control-plane transport: the cluster identity ([`tls`]) and QUIC
//! over the mutual-TLS configs it builds.
//!
//! One connection per peer; one bidirectional stream per request. A stream
//! carries exactly one codec envelope each way, then FIN. A stream whose
//! request is malformed, truncated, oversized or of another version is reset
//! with a [`StreamErrorCode`]; the connection and the endpoint keep serving.

#![forbid(unsafe_code)]

pub mod client;
pub mod tls;

mod endpoint;
mod frame;
pub mod poll;
mod server;
mod splice;

pub use endpoint::{
    client_endpoint, connect, join_client_endpoint, join_server_endpoint, peer_identity_of,
    quinn_client_config, server_endpoint, transport_config, IDLE_TIMEOUT, KEEP_ALIVE_INTERVAL,
};
pub use frame::{
    expect_end, finish, read_frame, read_message, read_message_within, request, write_frame,
    write_message, StreamErrorCode,
};
pub use server::{answer, serve, serve_join, JoinService, Service, REQUEST_READ_TIMEOUT};
pub use splice::{splice, SPLICE_LINGER};

use labspan_proto::codec::CodecError;

/// Why a connection, a request or a reply failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS material could not be turned into a QUIC configuration.
    #[error("cannot build the QUIC configuration: {0}")]
    Config(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind a QUIC endpoint on {addr}: {cause}")]
    Bind {
        addr: std::net::SocketAddr,
        cause: std::io::Error,
    },
    /// The connection attempt could not start (bad address, endpoint closed).
    #[error("cannot connect to {addr}: {cause}")]
    Connect {
        addr: std::net::SocketAddr,
        cause: quinn::ConnectError,
    },
    /// The connection failed or was closed (handshake refused, peer gone, idle timeout).
    #[error("connection to {peer} failed: {cause}")]
    Connection {
        peer: std::net::SocketAddr,
        cause: quinn::ConnectionError,
    },
    /// The connection attempt got no answer in time (coordinator down?).
    #[error("no answer from {addr} within {} ms", after.as_millis())]
    Timeout {
        addr: std::net::SocketAddr,
        after: std::time::Duration,
    },
    /// The connection broke while a request was in flight (peer gone,
    /// idle timeout, or the server refused the client's certificate).
    #[error("connection lost: {0}")]
    ConnectionLost(quinn::ConnectionError),
    /// The peer's certificate does not name a labspan member.
    #[error("peer {peer} has no usable identity: {cause}")]
    Identity {
        peer: std::net::SocketAddr,
        cause: crate::tls::TlsError,
    },
    /// The peer reset the stream: it refused this request (see the code).
    #[error("the peer refused the request: {code}")]
    Refused { code: StreamErrorCode },
    /// The stream failed for another reason (connection lost, stream closed).
    #[error("stream failed while {doing}: {reason}")]
    Stream { doing: &'static str, reason: String },
    /// A message could not be encoded or decoded.
    #[error("bad message: {0}")]
    Codec(CodecError),
}

impl From<CodecError> for TransportError {
    fn from(e: CodecError) -> Self {
        TransportError::Codec(e)
    }
}

impl TransportError {
    /// What TLS refused, when this error is a handshake refusal (a
    /// certificate from another CA, an unknown or revoked member): retrying
    /// cannot help, so callers stop at once and say why.
    pub fn tls_refusal(&self) -> Option<String> {
        match self {
            TransportError::Connection { cause, .. } | TransportError::ConnectionLost(cause) => {
                tls_refusal(cause)
            }
            _ => None,
        }
    }
}

/// The TLS refusal behind a connection error: a close with a TLS alert
/// code (QUIC's crypto error range), sent by the peer or raised here.
pub fn tls_refusal(e: &quinn::ConnectionError) -> Option<String> {
    let (code, reason) = match e {
        quinn::ConnectionError::TransportError(t) => (u64::from(t.code), t.reason.clone()),
        quinn::ConnectionError::ConnectionClosed(c) => (
            u64::from(c.error_code),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        _ => return None,
    };
    if !(0x100..=0x1ff).contains(&code) {
        return None;
    }
    let alert = match code - 0x100 {
        40 => "handshake failure",
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired",
        46 => "certificate unknown (not signed by this cluster's CA?)",
        48 => "unknown CA (the certificate is from another cluster)",
        49 => "access denied",
        116 => "certificate required",
        _ => "TLS alert",
    };
    Some(if reason.is_empty() {
        alert.to_string()
    } else {
        format!("{alert}: {reason}")
    })
}
