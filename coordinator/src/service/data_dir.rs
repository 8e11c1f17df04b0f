//! A coordinator's data folder: its identity, the cluster CA, and where it
//! listens, as `cluster init` or `cluster join` left them.
//!
//! ```text
//! DIR/node.json       id, name, listen address, bootstrap flag, peers
//! DIR/ca.pem ca.key   the cluster CA (every coordinator signs joins)
//! DIR/node.pem node.key  this coordinator's certificate
//! DIR/raft.redb       Raft log, vote and snapshots
//! DIR/admin.cluster   the CLI's credential (written by `cluster init` only)
//! ```
//! Keys are written with mode 0600.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use labspan_proto::msg::{JoinGrant, Role};
use labspan_transport::client::{write_private, ClusterFile};
use labspan_transport::tls::{self, CertificateRequest, ClusterCa, NodeCredential};
use serde::{Deserialize, Serialize};

use crate::raft::NodeId;

/// What `DIR/node.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Raft node id (1 for the coordinator that ran `cluster init`).
    pub id: NodeId,
    /// Member name, as in the certificate.
    pub name: String,
    /// API (and Raft) address; joins are answered on its port + 1.
    pub listen: SocketAddr,
    /// True for the first coordinator: it initializes the Raft cluster.
    pub bootstrap: bool,
    /// Coordinators to ask for membership when this one is not a voter yet.
    pub peers: Vec<String>,
}

/// Why a data folder could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// A file could not be read or written.
    #[error("coordinator data folder: {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// `init` or `join` on a folder that already holds a coordinator.
    #[error("{} already holds a coordinator (node.json exists): start it with `labspan coordinator run --data {}`, or use another folder", dir.display(), dir.display())]
    Exists { dir: PathBuf },
    /// A file is not what `init`/`join` wrote.
    #[error("coordinator data folder: {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// Certificates could not be made or read.
    #[error("coordinator data folder: {0}")]
    Tls(tls::TlsError),
    /// The join grant is not a coordinator's.
    #[error(
        "the join token was for role {role}, not coordinator: use it with `labspan agent run`"
    )]
    NotCoordinator { role: Role },
}

impl From<tls::TlsError> for DataDirError {
    fn from(e: tls::TlsError) -> Self {
        DataDirError::Tls(e)
    }
}

/// A coordinator's data folder.
pub struct DataDir {
    pub path: PathBuf,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |cause| DataDirError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

impl DataDir {
    /// The folder at `path` (nothing is read yet).
    pub fn at(path: &Path) -> DataDir {
        DataDir {
            path: path.to_path_buf(),
        }
    }

    /// The Raft store.
    pub fn raft_store(&self) -> PathBuf {
        self.path.join("raft.redb")
    }

    /// Guest files by hash (outside the Raft store: see `service::files`).
    pub fn file_store(&self) -> PathBuf {
        self.path.join("files")
    }

    /// The CLI credential `cluster init` writes.
    pub fn admin_file(&self) -> PathBuf {
        self.path.join("admin.cluster")
    }

    fn prepare(&self) -> Result<(), DataDirError> {
        std::fs::create_dir_all(&self.path).map_err(io_at(&self.path))?;
        if self.path.join("node.json").exists() {
            return Err(DataDirError::Exists {
                dir: self.path.clone(),
            });
        }
        Ok(())
    }

    /// First coordinator: creates the cluster CA, this coordinator's
    /// certificate (`name`, node id 1) and the admin credential, which it
    /// returns (also saved as `admin.cluster`).
    pub fn init(
        &self,
        cluster: &str,
        name: &str,
        listen: SocketAddr,
    ) -> Result<ClusterFile, DataDirError> {
        self.prepare()?;
        let ca = ClusterCa::generate(cluster)?;
        let me = ca.issue(name, Role::Coordinator)?;
        let admin = ca.issue("admin", Role::Admin)?;
        self.write_keys(&ca.cert_pem(), &ca.key_pem(), &me)?;
        let admin = ClusterFile {
            coordinators: vec![listen.to_string()],
            ca_pem: ca.cert_pem(),
            cert_pem: admin.cert_pem(),
            key_pem: admin.key_pem(),
        };
        let admin_path = self.admin_file();
        admin.save(&admin_path).map_err(|e| DataDirError::Invalid {
            path: admin_path,
            reason: e.to_string(),
        })?;
        let config = NodeConfig {
            id: 1,
            name: name.into(),
            listen,
            bootstrap: true,
            peers: vec![],
        };
        self.write_config(&config)?;
        Ok(admin)
    }

    /// A joining coordinator: saves what the cluster granted for the key of
    /// its `request`.
    pub fn save_grant(
        &self,
        name: &str,
        listen: SocketAddr,
        grant: &JoinGrant,
        request: &CertificateRequest,
    ) -> Result<NodeConfig, DataDirError> {
        let (Some(id), Some(ca_key)) = (grant.node_id, grant.ca_key_pem.as_ref()) else {
            return Err(DataDirError::NotCoordinator { role: grant.role });
        };
        self.prepare()?;
        let me = request.credential(&grant.cert_pem)?;
        self.write_keys(&grant.ca_pem, ca_key, &me)?;
        let config = NodeConfig {
            id,
            name: name.into(),
            listen,
            bootstrap: false,
            peers: grant.coordinators.clone(),
        };
        self.write_config(&config)?;
        Ok(config)
    }

    fn write_keys(
        &self,
        ca_pem: &str,
        ca_key: &str,
        me: &NodeCredential,
    ) -> Result<(), DataDirError> {
        for (file, text) in [
            ("ca.pem", ca_pem),
            ("ca.key", ca_key),
            ("node.pem", &me.cert_pem()),
            ("node.key", &me.key_pem()),
        ] {
            let path = self.path.join(file);
            write_private(&path, text.as_bytes()).map_err(io_at(&path))?;
        }
        Ok(())
    }

    fn write_config(&self, config: &NodeConfig) -> Result<(), DataDirError> {
        let path = self.path.join("node.json");
        let text = serde_json::to_vec_pretty(config).map_err(|e| DataDirError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&path, &text).map_err(io_at(&path))
    }

    /// Reads the node's configuration, the CA and its credential.
    pub fn load(&self) -> Result<(NodeConfig, ClusterCa, NodeCredential), DataDirError> {
        let read = |file: &str| {
            let path = self.path.join(file);
            std::fs::read_to_string(&path).map_err(|cause| DataDirError::Io { path, cause })
        };
        let path = self.path.join("node.json");
        let config: NodeConfig =
            serde_json::from_str(&read("node.json")?).map_err(|e| DataDirError::Invalid {
                path,
                reason: e.to_string(),
            })?;
        let ca = ClusterCa::from_pem(&read("ca.pem")?, &read("ca.key")?)?;
        let me = NodeCredential::from_pem(&read("node.pem")?, &read("node.key")?)?;
        Ok((config, ca, me))
    }
}
