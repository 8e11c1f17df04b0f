//! Messages of the control plane: who a member is, and what the CLI, agents
//! and coordinators say to each other. Bytes are made only by [`crate::codec`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a cluster member is; written into its certificate, it decides what
/// the member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Runs Raft and serves the API.
    Coordinator,
    /// Runs VMs on one lab host.
    Agent,
    /// A person or tool that may change the cluster (CLI).
    Admin,
    /// A person or tool that may only read.
    Viewer,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 4] = [Role::Coordinator, Role::Agent, Role::Admin, Role::Viewer];

    /// The lowercase name used in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of coordinator, agent, admin, viewer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected coordinator, agent, admin or viewer")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// A request sent on its own QUIC stream to a coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness probe; the reply echoes the nonce.
    Ping { nonce: u64 },
    /// Asks who the coordinator thinks the caller is (from its certificate).
    WhoAmI,
}

/// The reply to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to [`Request::Ping`].
    Pong { nonce: u64 },
    /// Answer to [`Request::WhoAmI`].
    Identity { name: String, role: Role },
    /// The request was understood and refused.
    Error(ErrorReply),
}

/// Why a coordinator refused a request, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

/// Broad class of a refusal, for programs that react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The caller's role may not do this.
    Forbidden,
    /// The request is well-formed but invalid (bad name, unknown lab, ...).
    Invalid,
    /// This coordinator is not the leader and could not forward.
    NotLeader,
    /// Something failed inside the coordinator.
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
