//! Guest files by content hash, on disk: the coordinators' file store (what
//! `labspan up` uploads) and each agent's copy of the files its guests use.
//!
//! A file is `DIR/SHA256`, written under a temporary name and renamed, so a
//! reader never sees half a file; its name is checked against its contents
//! when it is read, so a damaged copy is refused rather than written into a
//! guest.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::image::sha256_hex;
use crate::lab::FileRef;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    /// The name is not a sha256 in lowercase hex (never a path).
    #[error("{0:?} is not a file hash (64 lowercase hex digits)")]
    BadHash(String),
    /// The stored copy does not have the contents its name says.
    #[error("stored file {path} is damaged (its contents hash to {found}); it was removed")]
    Damaged { path: PathBuf, found: String },
    /// The file system failed.
    #[error("{doing} {path}: {cause}")]
    Io {
        doing: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// Files by sha256 in one folder.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

/// True for 64 lowercase hex digits.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl FileStore {
    /// The store in `dir` (made on the first write).
    pub fn at(dir: PathBuf) -> FileStore {
        FileStore { dir }
    }

    fn path(&self, sha256: &str) -> Result<PathBuf, FileStoreError> {
        if !is_hash(sha256) {
            return Err(FileStoreError::BadHash(sha256.to_string()));
        }
        Ok(self.dir.join(sha256))
    }

    fn io(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileStoreError {
        let path = path.to_path_buf();
        move |cause| FileStoreError::Io { doing, path, cause }
    }

    /// Stores `contents` durably; returns its reference. Storing a file
    /// again is a no-op. Blocking (hash, write, fsync): async callers run it
    /// on a blocking thread.
    pub fn put(&self, contents: &[u8]) -> Result<FileRef, FileStoreError> {
        let file = FileRef::of(contents);
        let path = self.path(&file.sha256)?;
        if path.exists() {
            return Ok(file);
        }
        std::fs::create_dir_all(&self.dir).map_err(Self::io("cannot create", &self.dir))?;
        // Durable before it is acknowledged: the leader counts this copy
        // towards the majority a deploy relies on.
        crate::atomic::write(&path, contents).map_err(Self::io("cannot write", &path))?;
        Ok(file)
    }

    /// The contents of `sha256`, or `None` if not stored.
    pub fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>, FileStoreError> {
        let path = self.path(sha256)?;
        let contents = match std::fs::read(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io("cannot read", &path)(e)),
        };
        let found = sha256_hex(&contents);
        if found != sha256 {
            // Best effort: the next fetch brings a good copy.
            let _ = std::fs::remove_file(&path);
            return Err(FileStoreError::Damaged { path, found });
        }
        Ok(Some(contents))
    }

    /// True when `sha256` is stored (its contents are checked on [`get`](Self::get)).
    pub fn has(&self, sha256: &str) -> bool {
        self.path(sha256).is_ok_and(|p| p.exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_get_by_hash() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::TempDir::new()?;
        let store = FileStore::at(dir.path().join("files"));
        let file = store.put(b"hello")?;
        assert_eq!(file.size, 5);
        assert!(store.has(&file.sha256));
        assert_eq!(store.get(&file.sha256)?, Some(b"hello".to_vec()));
        assert_eq!(store.put(b"hello")?, file);
        assert_eq!(store.get(&sha256_hex(b"other"))?, None);
        Ok(())
    }

    #[test]
    fn a_name_that_is_not_a_hash_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::TempDir::new()?;
        let store = FileStore::at(dir.path().to_path_buf());
        for bad in ["../etc/passwd", "", &"A".repeat(64), &"a".repeat(63)] {
            assert!(
                matches!(store.get(bad), Err(FileStoreError::BadHash(_))),
                "{bad}"
            );
            assert!(!store.has(bad));
        }
        Ok(())
    }

    #[test]
    fn a_damaged_copy_is_refused_and_removed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::TempDir::new()?;
        let store = FileStore::at(dir.path().to_path_buf());
        let file = store.put(b"hello")?;
        std::fs::write(dir.path().join(&file.sha256), b"hellO")?;
        assert!(matches!(
            store.get(&file.sha256),
            Err(FileStoreError::Damaged { .. })
        ));
        assert!(!store.has(&file.sha256));
        Ok(())
    }
}
