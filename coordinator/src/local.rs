//! The embedded default's cluster state: the labs deployed on this machine,
//! one JSON record per lab under the state folder.
//!
//! This is the single-node stand-in for the replicated state; it holds the
//! same facts (lab spec, placement, host plans) so the code paths above it do
//! not change when the state moves into Raft.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use labspan_proto::lab::Lab;
use labspan_proto::plan::{HostPlan, LabPlan};
use serde::{Deserialize, Serialize};

/// Everything known about one deployed lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabRecord {
    pub lab: Lab,
    /// Node → host.
    pub placement: BTreeMap<String, String>,
    /// Host → that host's share of the lab.
    pub plans: BTreeMap<String, LabPlan>,
}

/// Errors of the local lab store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store folder or a record could not be read or written.
    #[error("lab store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A record is not valid JSON of the expected shape.
    #[error("lab store {path}: corrupt record ({source}); remove it to forget that lab")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Lab records in `DIR/labs/NAME.json`.
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// Opens (and creates) the store under the state folder `state_dir`.
    pub fn open(state_dir: &Path) -> Result<LocalStore, StoreError> {
        let dir = state_dir.join("labs");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(LocalStore { dir })
    }

    fn path(&self, lab: &str) -> PathBuf {
        self.dir.join(format!("{lab}.json"))
    }

    /// The record of `lab`, if it is deployed.
    pub fn get(&self, lab: &str) -> Result<Option<LabRecord>, StoreError> {
        let path = self.path(lab);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { path, source })
    }

    /// Every deployed lab, by name.
    pub fn all(&self) -> Result<BTreeMap<String, LabRecord>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut labs = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(lab) = name.strip_suffix(".json") {
                if let Some(record) = self.get(lab)? {
                    labs.insert(lab.to_string(), record);
                }
            }
        }
        Ok(labs)
    }

    /// Writes `record` atomically (write, fsync, rename).
    pub fn put(&self, record: &LabRecord) -> Result<(), StoreError> {
        let path = self.path(&record.lab.name);
        let tmp = path.with_extension("json.tmp");
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| io(io::Error::other(e)))?;
        let file = fs::File::create(&tmp).map_err(io)?;
        io::Write::write_all(&mut &file, &bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)
    }

    /// Forgets `lab` (no error if it was not deployed).
    pub fn remove(&self, lab: &str) -> Result<(), StoreError> {
        let path = self.path(lab);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// The plan of `host`: its share of every deployed lab.
    pub fn host_plan(&self, host: &str) -> Result<HostPlan, StoreError> {
        let labs = self
            .all()?
            .into_values()
            .filter_map(|mut r| r.plans.remove(host))
            .collect();
        Ok(HostPlan {
            host: host.to_string(),
            labs,
        })
    }
}
