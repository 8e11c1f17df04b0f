//! Join tokens and the join endpoint: a new member trades a one-time token
//! for a certificate signed by the cluster CA.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use labspan_proto::msg::{
    ErrorKind, ErrorReply, JoinGrant, JoinReply, JoinRequest, Reply, Request, Role,
};
use labspan_transport::tls::{self, validate_name};
use labspan_transport::JoinService;
use sha2::{Digest, Sha256};

use super::{error, Inner};
use crate::raft::{Applied, Command};

/// Prefix of every join token, so one is recognised in a shell history.
const TOKEN_PREFIX: &str = "lsj_";

/// The SHA-256 of a token: only this is stored in the cluster state.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 32 random bytes from the kernel, as a token.
fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// Leader: records a new token for `role`, valid `ttl_secs`.
pub(super) async fn create_token(inner: &Arc<Inner>, role: Role, ttl_secs: u64) -> Reply {
    let token = match new_token() {
        Ok(t) => t,
        Err(e) => {
            return error(
                ErrorKind::Internal,
                format!("cannot read /dev/urandom for a token: {e}"),
            )
        }
    };
    let expires_unix = now_unix().saturating_add(ttl_secs);
    let cmd = Command::AddToken {
        hash: token_hash(&token),
        role,
        expires_unix,
    };
    match inner.write(cmd).await {
        Ok(_) => Reply::Token {
            token,
            ca_fingerprint: tls::ca_fingerprint(inner.ca.cert()),
            expires_unix,
        },
        Err(e) => Reply::Error(e),
    }
}

/// Leader: consumes a token for member `name`.
pub(super) async fn use_token(inner: &Arc<Inner>, token: &str, name: &str) -> Reply {
    let cmd = Command::UseToken {
        hash: token_hash(token),
        name: name.to_string(),
        now_unix: now_unix(),
    };
    match inner.write(cmd).await {
        Ok(Applied::TokenUsed { role, node_id }) => Reply::TokenUsed { role, node_id },
        Ok(other) => error(
            ErrorKind::Internal,
            format!("unexpected result of UseToken: {other:?}"),
        ),
        Err(e) => Reply::Error(e),
    }
}

/// Serves the join endpoint of one coordinator.
pub(super) struct JoinHandler {
    pub(super) inner: Arc<Inner>,
}

impl JoinService for JoinHandler {
    type Request = JoinRequest;
    type Reply = JoinReply;

    async fn handle(&self, remote: SocketAddr, req: JoinRequest) -> JoinReply {
        let JoinRequest::Join {
            token,
            name,
            csr_pem,
        } = req;
        match self.grant(&token, &name, &csr_pem).await {
            Ok(grant) => {
                tracing::info!(%remote, name, role = %grant.role, "member joined");
                JoinReply::Joined(grant)
            }
            Err(e) => {
                tracing::warn!(%remote, name, error = %e.message, "join refused");
                JoinReply::Error(e)
            }
        }
    }
}

impl JoinHandler {
    async fn grant(&self, token: &str, name: &str, csr_pem: &str) -> Result<JoinGrant, ErrorReply> {
        validate_name(name).map_err(|e| ErrorReply::new(ErrorKind::Invalid, e.to_string()))?;
        // Checked before the token is spent on it.
        labspan_transport::tls::check_request(name, csr_pem)
            .map_err(|e| ErrorReply::new(ErrorKind::Invalid, error_chain(&e)))?;
        let inner = &self.inner;
        let used = Request::UseToken {
            token: token.to_string(),
            name: name.to_string(),
        };
        let (role, node_id) = match inner.dispatch(&inner.me(), used, true).await {
            Reply::TokenUsed { role, node_id } => (role, node_id),
            Reply::Error(e) => return Err(e),
            other => {
                return Err(ErrorReply::new(
                    ErrorKind::Internal,
                    format!("unexpected reply {other:?}"),
                ))
            }
        };
        let cert = inner.ca.sign_request(name, role, csr_pem).map_err(|e| {
            ErrorReply::new(
                ErrorKind::Internal,
                format!("cannot sign a certificate for {name}: {e}"),
            )
        })?;
        let membership = inner.raft.metrics().borrow().membership_config.clone();
        let coordinators = membership
            .membership()
            .nodes()
            .map(|(_, m)| m.addr.clone())
            .collect();
        Ok(JoinGrant {
            role,
            ca_pem: inner.ca.cert_pem(),
            cert_pem: labspan_transport::tls::cert_to_pem(&cert),
            ca_key_pem: (role == Role::Coordinator).then(|| inner.ca.key_pem()),
            node_id,
            coordinators,
        })
    }
}

/// An error and its causes on one line (rcgen's reason is in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
