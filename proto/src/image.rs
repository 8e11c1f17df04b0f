//! Images between hosts, as the coordinator and the agents speak of them:
//! an image's content digest, what each host holds, and where a plan's
//! images come from. The image endpoint's own messages are
//! `labspan_image::msg`.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Images every agent builds by itself from Debian packages when no host
/// has them (`labspan image build NAME`); the agent's recipes are checked
/// against this list.
pub const BUILTIN: &[&str] = &["tiny", "tiny-router"];

/// One file of an image folder, as the digest covers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// File name in the image folder (no `/`).
    pub name: String,
    pub size: u64,
    /// sha256 of its bytes, lowercase hex.
    pub sha256: String,
}

/// What an image folder holds, and the digest over it all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDigest {
    /// sha256 over every file in name order (see [`content_digest`]), hex.
    pub digest: String,
    /// Every file, sorted by name.
    pub files: Vec<FileDigest>,
}

impl ImageDigest {
    /// The digest of `files` (sorted here), with the list.
    pub fn of(mut files: Vec<FileDigest>) -> ImageDigest {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        ImageDigest {
            digest: content_digest(&files),
            files,
        }
    }

    /// Total size of the files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// sha256 over each file's name, size and sha256, in the order given
/// (callers sort by name): two folders with the same files have the same
/// digest, whatever their store hash.
pub fn content_digest(files: &[FileDigest]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.size.to_be_bytes());
        h.update(f.sha256.as_bytes());
        h.update([0]);
    }
    hex_lower(&h.finalize())
}

/// sha256 of `bytes`, lowercase hex (how guest files are addressed).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_lower(&Sha256::digest(bytes))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One named image a host holds (its inventory entry).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    /// Its address in the host's store (`objects/HASH`).
    pub hash: String,
    /// Its content digest ([`ImageDigest::digest`]).
    pub digest: String,
    /// Bytes of all its files.
    pub size: u64,
}

/// A host's image endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageSource {
    /// The host's name (its agent certificate's name).
    pub host: String,
    /// `ip:port` of its image endpoint.
    pub addr: String,
}

/// An image a lab uses on a host, as the leader resolved it: the bits every
/// host of the lab runs, and where to fetch them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlan {
    /// The name VMs use (`VmPlan::image`).
    pub name: String,
    /// The store hash the name must point at.
    pub hash: String,
    /// The content digest a fetched copy must have.
    pub digest: String,
    pub size: u64,
    /// Hosts that hold it (never the host the plan is for).
    pub sources: Vec<ImageSource>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64, sha: &str) -> FileDigest {
        FileDigest {
            name: name.into(),
            size,
            sha256: sha.into(),
        }
    }

    #[test]
    fn digest_ignores_listing_order_and_sees_every_field() {
        let a = ImageDigest::of(vec![file("b", 1, "x"), file("a", 2, "y")]);
        let b = ImageDigest::of(vec![file("a", 2, "y"), file("b", 1, "x")]);
        assert_eq!(a, b);
        assert_eq!(a.size(), 3);
        for other in [
            vec![file("a", 2, "y"), file("c", 1, "x")],
            vec![file("a", 3, "y"), file("b", 1, "x")],
            vec![file("a", 2, "z"), file("b", 1, "x")],
            vec![file("a", 2, "y")],
        ] {
            assert_ne!(ImageDigest::of(other).digest, a.digest);
        }
    }
}
