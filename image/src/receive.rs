//! Taking an image in from a byte stream (a peer's fetch answer or an
//! admin's push): every file is written under `tmp/` and hashed as it
//! arrives, checked against the offer, and the offer against the digest
//! the caller expects; only a complete, matching image is renamed into
//! `objects/` and named. Anything else leaves the store as it was.

use std::io;
use std::path::Path;

use labspan_proto::image::{content_digest, ImageDigest};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::digest::{check_hash, write_digest, DIGEST_FILE};
use super::{check_name, io_err, Image, ImageError, ImageStore, Manifest};

/// Size of one read from the stream.
const CHUNK: usize = 1 << 20;
/// A sender that sends nothing for this long is given up on (a live but
/// stuck peer would otherwise hold the host's plan forever).
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a received image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The bytes are not the image that was asked for; the text says what
    /// differs (which file, which size or hash).
    #[error("{0}")]
    Mismatch(String),
    /// The stream broke.
    #[error("the transfer broke after {got} of {size} bytes of {file}: {cause}")]
    Read {
        file: String,
        got: u64,
        size: u64,
        cause: io::Error,
    },
    /// The store could not take the image.
    #[error(transparent)]
    Store(#[from] ImageError),
}

/// What the receiver must end up with.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// Name to give the image.
    pub name: &'a str,
    /// Store hash it goes under.
    pub hash: &'a str,
    /// Content digest it must have.
    pub digest: &'a str,
}

impl ImageStore {
    /// Reads the files of `offer` from `stream` into the store as image
    /// `want.name`; `progress` hears the bytes received so far.
    pub async fn receive<R: AsyncRead + Unpin>(
        &self,
        want: Expected<'_>,
        offer: &ImageDigest,
        stream: &mut R,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Image, ReceiveError> {
        check_name(want.name)?;
        check_hash(want.hash)?;
        check_offer(want, offer)?;
        let work = self.work_dir("fetch")?;
        let staged = work.0.join("image");
        std::fs::create_dir_all(&staged).map_err(io_err("creating", &staged))?;
        let mut done = 0u64;
        for file in &offer.files {
            let (got, sha) = receive_file(
                stream,
                &staged.join(&file.name),
                &file.name,
                file.size,
                &mut |n| progress(done + n),
            )
            .await?;
            if got != file.size {
                return Err(ReceiveError::Mismatch(format!(
                    "{} is truncated: {got} of {} bytes arrived",
                    file.name, file.size
                )));
            }
            if sha != file.sha256 {
                return Err(ReceiveError::Mismatch(format!(
                    "{} is corrupt: its sha256 is {sha}, the offer says {}",
                    file.name, file.sha256
                )));
            }
            done += got;
        }
        expect_end(stream).await?;
        check_manifest(&staged, want.hash)?;
        write_digest(&staged, offer)?;
        Ok(self.install(&staged, want.hash, want.name)?)
    }
}

/// The offer lists safe, distinct file names with a manifest, and its
/// digest is both its own and the one expected.
fn check_offer(want: Expected<'_>, offer: &ImageDigest) -> Result<(), ReceiveError> {
    let mismatch = |s: String| Err(ReceiveError::Mismatch(s));
    let mut names: Vec<&str> = offer.files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() != offer.files.len() {
        return mismatch("the offer lists a file twice".into());
    }
    for name in &names {
        let safe = check_name(name).is_ok() && *name != DIGEST_FILE;
        if !safe {
            return mismatch(format!(
                "the offer lists a file named {name:?}, which is not a plain file name"
            ));
        }
    }
    if !names.contains(&"manifest.json") {
        return mismatch("the offer has no manifest.json".into());
    }
    let own = content_digest(&offer.files);
    if own != offer.digest {
        return mismatch(format!(
            "the offer's digest {} is not the digest of its own file list ({own})",
            offer.digest
        ));
    }
    if offer.digest != want.digest {
        return mismatch(format!(
            "the offered digest {} is not the expected {}",
            offer.digest, want.digest
        ));
    }
    Ok(())
}

/// Copies at most `size` bytes of `stream` into `path`, hashing them;
/// returns how many arrived (fewer when the stream ended) and their sha256.
async fn receive_file<R: AsyncRead + Unpin>(
    stream: &mut R,
    path: &Path,
    name: &str,
    size: u64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(u64, String), ReceiveError> {
    let mut out = tokio::fs::File::create(path)
        .await
        .map_err(io_err("creating", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < size {
        let want = usize::try_from(size - got).unwrap_or(CHUNK).min(CHUNK);
        let read = tokio::time::timeout(STALL_TIMEOUT, stream.read(&mut buf[..want]))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing arrived for {} s", STALL_TIMEOUT.as_secs()),
                ))
            });
        let n = read.map_err(|cause| ReceiveError::Read {
            file: name.to_string(),
            got,
            size,
            cause,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .await
            .map_err(io_err("writing", path))?;
        got += n as u64;
        progress(got);
    }
    out.sync_all().await.map_err(io_err("writing", path))?;
    Ok((got, hex::encode(h.finalize())))
}

/// Nothing may follow the last file.
async fn expect_end<R: AsyncRead + Unpin>(stream: &mut R) -> Result<(), ReceiveError> {
    let mut extra = [0u8; 1];
    match stream.read(&mut extra).await {
        Ok(0) => Ok(()),
        Ok(_) => Err(ReceiveError::Mismatch(
            "more bytes follow the last file of the offer".into(),
        )),
        Err(cause) => Err(ReceiveError::Read {
            file: "the end of the stream".into(),
            got: 0,
            size: 0,
            cause,
        }),
    }
}

/// The manifest must parse and name the hash the image goes under.
fn check_manifest(staged: &Path, hash: &str) -> Result<(), ReceiveError> {
    let path = staged.join("manifest.json");
    let bytes = std::fs::read(&path).map_err(io_err("reading", &path))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| ReceiveError::Mismatch(format!("manifest.json does not parse: {e}")))?;
    if manifest.hash != hash {
        return Err(ReceiveError::Mismatch(format!(
            "manifest.json says hash {}, expected {hash}",
            manifest.hash
        )));
    }
    manifest
        .check_files()
        .map_err(|e| ReceiveError::Mismatch(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::tests::store_with_image;

    /// The bytes a sender puts on the stream for `hash` of `store`, and its digest.
    fn stream_of(store: &ImageStore, hash: &str) -> (Vec<u8>, ImageDigest) {
        let d = store.digest(hash).expect("digest");
        let mut bytes = Vec::new();
        for f in &d.files {
            bytes.extend(std::fs::read(store.object_dir(hash).join(&f.name)).expect("read"));
        }
        (bytes, d)
    }

    fn empty_after(dst: &ImageStore) {
        assert!(!dst.root().join("names").exists(), "a name was written");
        let objects = dst.root().join("objects");
        let n = std::fs::read_dir(&objects).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "something was left in objects/");
        let tmp = std::fs::read_dir(dst.root().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(tmp, 0, "something was left in tmp/");
    }

    async fn receive(
        dst: &ImageStore,
        hash: &str,
        d: &ImageDigest,
        bytes: &[u8],
    ) -> Result<Image, ReceiveError> {
        let want = Expected {
            name: "y",
            hash,
            digest: &d.digest,
        };
        let mut reader = bytes;
        dst.receive(want, d, &mut reader, &mut |_| {}).await
    }

    #[tokio::test]
    async fn a_whole_image_lands_under_its_hash_and_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, hash) = store_with_image(&dir.path().join("src"));
        let (bytes, d) = stream_of(&src, &hash);
        let dst = ImageStore::at(dir.path().join("dst"));
        let img = receive(&dst, &hash, &d, &bytes).await.expect("received");
        assert_eq!(img.manifest.hash, hash);
        assert_eq!(dst.get("y").expect("named"), img);
        assert_eq!(dst.digest(&hash).expect("digest"), d);
        assert_eq!(
            super::super::digest::digest_folder(&img.dir).expect("digest"),
            d
        );
    }

    #[tokio::test]
    async fn a_manifest_with_a_kernel_outside_the_image_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, hash) = store_with_image(&dir.path().join("src"));
        // A peer whose store holds a doctored manifest (its digest made anew).
        let obj = src.object_dir(&hash);
        let path = obj.join("manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        m["kernel"] = "/etc/shadow".into();
        std::fs::write(&path, serde_json::to_vec(&m).expect("json")).expect("write");
        std::fs::remove_file(obj.join(super::super::digest::DIGEST_FILE)).ok();
        let (bytes, d) = stream_of(&src, &hash);
        let dst = ImageStore::at(dir.path().join("dst"));
        let err = receive(&dst, &hash, &d, &bytes).await.expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("manifest kernel \"/etc/shadow\" must be a plain file name"),
            "{msg}"
        );
        empty_after(&dst);
    }

    #[tokio::test]
    async fn a_corrupt_byte_names_the_file_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, hash) = store_with_image(&dir.path().join("src"));
        let (mut bytes, d) = stream_of(&src, &hash);
        bytes[10] ^= 0xff; // inside initrd.img, the first file
        let dst = ImageStore::at(dir.path().join("dst"));
        let err = receive(&dst, &hash, &d, &bytes).await.expect_err("corrupt");
        let msg = err.to_string();
        assert!(msg.contains("initrd.img is corrupt"), "{msg}");
        empty_after(&dst);
    }

    #[tokio::test]
    async fn a_truncated_stream_names_the_file_and_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, hash) = store_with_image(&dir.path().join("src"));
        let (bytes, d) = stream_of(&src, &hash);
        let dst = ImageStore::at(dir.path().join("dst"));
        let cut = &bytes[..bytes.len() - 5];
        let err = receive(&dst, &hash, &d, cut).await.expect_err("truncated");
        let last = d.files.last().expect("files");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{} is truncated", last.name)),
            "{msg}"
        );
        assert!(msg.contains(&format!("of {} bytes", last.size)), "{msg}");
        empty_after(&dst);
    }

    #[tokio::test]
    async fn a_wrong_size_or_digest_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, hash) = store_with_image(&dir.path().join("src"));
        let (bytes, d) = stream_of(&src, &hash);
        let dst = ImageStore::at(dir.path().join("dst"));
        // A sender that lies about a size, with a digest made to match its lie.
        let mut lie = d.clone();
        lie.files[0].size += 1;
        let lie = ImageDigest::of(lie.files);
        let want = Expected {
            name: "y",
            hash: &hash,
            digest: &d.digest,
        };
        let mut reader = &bytes[..];
        let err = dst
            .receive(want, &lie, &mut reader, &mut |_| {})
            .await
            .expect_err("wrong size");
        assert!(err.to_string().contains("is not the expected"), "{err}");
        // An offer whose digest is not that of its own list.
        let mut forged = d.clone();
        forged.files[0].size += 1;
        let err = receive(&dst, &hash, &forged, &bytes)
            .await
            .expect_err("forged");
        assert!(
            err.to_string()
                .contains("not the digest of its own file list"),
            "{err}"
        );
        // Extra bytes after the last file.
        let mut longer = bytes.clone();
        longer.push(0);
        let err = receive(&dst, &hash, &d, &longer).await.expect_err("longer");
        assert!(err.to_string().contains("more bytes follow"), "{err}");
        empty_after(&dst);
    }

    #[tokio::test]
    async fn unsafe_file_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, hash) = store_with_image(&dir.path().join("src"));
        let (bytes, d) = stream_of(&src, &hash);
        let mut files = d.files.clone();
        files[0].name = "../escape".into();
        let evil = ImageDigest::of(files);
        let dst = ImageStore::at(dir.path().join("dst"));
        let want = Expected {
            name: "y",
            hash: &hash,
            digest: &evil.digest,
        };
        let mut reader = &bytes[..];
        let err = dst
            .receive(want, &evil, &mut reader, &mut |_| {})
            .await
            .expect_err("unsafe");
        assert!(err.to_string().contains("not a plain file name"), "{err}");
        empty_after(&dst);
    }
}
