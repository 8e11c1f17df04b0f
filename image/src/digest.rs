//! Content digests of images: what a store hash cannot say (a built image's
//! hash is the hash of its recipe), the digest says of the bits: sha256 over
//! every file of the image folder (name, size, sha256 of its bytes, in name
//! order). Computed once per image and cached as `objects/HASH/digest.json`;
//! images stored before digests existed get theirs on first use.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use labspan_proto::image::{FileDigest, ImageDigest, ImageInfo};
use sha2::{Digest as _, Sha256};

use super::{io_err, ImageError, ImageStore};

/// The cache file in an image folder; the digest does not cover it.
pub const DIGEST_FILE: &str = "digest.json";

impl ImageStore {
    /// The content digest of the image at `objects/HASH`, from its cache, or
    /// computed (and cached) when the image has none yet.
    pub fn digest(&self, hash: &str) -> Result<ImageDigest, ImageError> {
        let dir = self.object_dir(hash);
        let cache = dir.join(DIGEST_FILE);
        match fs::read(&cache) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(d) => return Ok(d),
                // A damaged cache is recomputed, not trusted.
                Err(e) => {
                    tracing::warn!(path = %cache.display(), error = %e, "recomputing an unreadable digest cache")
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("reading", &cache)(e)),
        }
        let digest = digest_folder(&dir)?;
        write_digest(&dir, &digest)?;
        Ok(digest)
    }

    /// Every named image with its hash, digest and size: what this host
    /// reports to the leader (an unreadable image is logged and left out).
    pub fn inventory(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let mut out = Vec::new();
        for name in self.names()? {
            // One broken image must not hide the others from the cluster.
            let described = self
                .get(&name)
                .and_then(|image| Ok((self.digest(&image.manifest.hash)?, image)));
            let (digest, image) = match described {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(image = name, error = %e, "image left out of the inventory");
                    continue;
                }
            };
            out.push(ImageInfo {
                name,
                hash: image.manifest.hash.clone(),
                size: digest.size(),
                digest: digest.digest,
            });
        }
        Ok(out)
    }

    /// The folder of the image at `hash`.
    pub fn object_dir(&self, hash: &str) -> std::path::PathBuf {
        self.root.join("objects").join(hash)
    }

    /// True when `objects/HASH` holds a complete image.
    pub fn has(&self, hash: &str) -> bool {
        check_hash(hash).is_ok() && self.object_dir(hash).join("manifest.json").is_file()
    }
}

/// A store hash is a sha256 in hex: anything else is refused before it
/// becomes a path.
pub fn check_hash(hash: &str) -> Result<(), ImageError> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ImageError::BadName {
            name: hash.to_string(),
        })
    }
}

/// Writes `digest.json` into an image folder (write then rename).
pub(crate) fn write_digest(dir: &Path, digest: &ImageDigest) -> Result<(), ImageError> {
    let json = serde_json::to_vec_pretty(digest).map_err(|e| ImageError::Build {
        detail: e.to_string(),
    })?;
    let dst = dir.join(DIGEST_FILE);
    labspan_proto::atomic::write(&dst, &json).map_err(io_err("writing", &dst))
}

/// The digest of every regular file of `dir` but the cache and dotfiles.
pub fn digest_folder(dir: &Path) -> Result<ImageDigest, ImageError> {
    let entries = fs::read_dir(dir).map_err(io_err("listing image folder", dir))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("listing image folder", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name == DIGEST_FILE || name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = entry.metadata().map_err(io_err("reading", &path))?;
        if !meta.is_file() {
            return Err(ImageError::Build {
                detail: format!(
                    "image folder {} holds {name}, which is not a file; an image is flat files only",
                    dir.display()
                ),
            });
        }
        let (size, sha256) = hash_file(&path)?;
        files.push(FileDigest { name, size, sha256 });
    }
    Ok(ImageDigest::of(files))
}

/// Size and sha256 (hex) of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String), ImageError> {
    let mut f = fs::File::open(path).map_err(io_err("opening", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(h.finalize())))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{GuestKind, Manifest};

    /// A store with one committed image named `x` of two files.
    pub(crate) fn store_with_image(root: &Path) -> (ImageStore, String) {
        let store = ImageStore::at(root);
        let work = store.work_dir("t").expect("work dir");
        let staged = work.0.join("image");
        fs::create_dir_all(&staged).expect("mkdir");
        fs::write(staged.join("vmlinuz"), b"kernel bytes").expect("write");
        fs::write(staged.join("initrd.img"), vec![7u8; 3000]).expect("write");
        let hash = "a".repeat(64);
        let m = Manifest {
            name: "x".into(),
            hash: hash.clone(),
            kernel: Some("vmlinuz".into()),
            initrd: Some("initrd.img".into()),
            disk: None,
            cmdline: String::new(),
            guest: GuestKind {
                kind: "tiny".into(),
                guest_agent: true,
            },
            recipe: vec![],
        };
        store.commit(&staged, &m).expect("commit");
        (store, hash)
    }

    #[test]
    fn digest_covers_every_file_and_is_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, hash) = store_with_image(dir.path());
        let d = store.digest(&hash).expect("digest");
        let names: Vec<&str> = d.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["initrd.img", "manifest.json", "vmlinuz"]);
        assert_eq!(d.files[0].size, 3000);
        assert!(store.object_dir(&hash).join(DIGEST_FILE).is_file());
        // The cache answers from now on, even if a file changed under it.
        fs::write(store.object_dir(&hash).join("vmlinuz"), b"other").expect("write");
        assert_eq!(store.digest(&hash).expect("cached"), d);
        // Recomputed without the cache, the change shows.
        let fresh = digest_folder(&store.object_dir(&hash)).expect("digest");
        assert_ne!(fresh.digest, d.digest);
    }

    #[test]
    fn inventory_lists_names_hashes_digests_and_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, hash) = store_with_image(dir.path());
        let inv = store.inventory().expect("inventory");
        assert_eq!(inv.len(), 1);
        assert_eq!(inv[0].name, "x");
        assert_eq!(inv[0].hash, hash);
        assert_eq!(inv[0].digest, store.digest(&hash).expect("digest").digest);
        assert!(inv[0].size > 3000);
    }

    #[test]
    fn hashes_are_hex_only() {
        assert!(check_hash(&"0f".repeat(32)).is_ok());
        for bad in ["", "../../etc", &"g".repeat(64), &"a".repeat(63)] {
            assert!(check_hash(bad).is_err(), "{bad}");
        }
    }
}
