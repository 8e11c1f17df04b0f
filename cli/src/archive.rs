//! The lab archive of `labspan save` and `labspan load`: a
//! zstd-compressed tar whose first member, `labspan-archive.json`, names
//! the format and its version and lists every other member with its size
//! and sha256. A reader checks the version before anything else (a newer
//! archive is refused, not misread), then every member against the list,
//! and unpacks into a folder of its own that is removed on any failure:
//! nothing of a bad archive is left behind.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the first member says the archive is.
pub const FORMAT: &str = "labspan-lab-archive";
/// The version this build writes, and the newest it reads.
pub const VERSION: u32 = 1;
/// The first member of every archive.
pub const MANIFEST: &str = "labspan-archive.json";
/// Largest manifest read (a bigger one is not a labspan archive).
const MAX_MANIFEST: u64 = 16 << 20;

/// Why an archive cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Version check first: a newer labspan's archive may mean anything.
    #[error("{path}: archive format version {found} is newer than this labspan reads (up to {VERSION}): load it with a newer labspan", path = path.display())]
    Newer { path: PathBuf, found: u32 },
    #[error("{path}: not a labspan lab archive: {why}", path = path.display())]
    NotAnArchive { path: PathBuf, why: String },
    #[error("{path}: the archive is truncated: {why}", path = path.display())]
    Truncated { path: PathBuf, why: String },
    #[error("{path}: the archive is corrupt: {why}", path = path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("{what} {path}: {source}", path = path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One member listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub bytes: u64,
    pub sha256: String,
}

/// The first member: the format, its version, what the archive holds
/// (`content`, opaque here), and every other member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub content: serde_json::Value,
    /// Member path (relative, `/`-separated) → its size and hash.
    pub members: BTreeMap<String, Member>,
}

/// Only what every version has: read before the rest of the manifest.
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

/// An archive read and checked: its manifest, and its members unpacked
/// under `dir` (removed when this is dropped).
#[derive(Debug)]
pub struct Unpacked {
    pub manifest: Manifest,
    dir: tempfile::TempDir,
}

impl Unpacked {
    /// Where member `name` was unpacked.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { what, path, source }
}

/// A member name that stays inside the folder it is unpacked to.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != MANIFEST
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Size and sha256 of `path`.
fn hash_file(path: &Path) -> Result<Member, ArchiveError> {
    let mut f = BufReader::new(File::open(path).map_err(io_err("reading", path))?);
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut f, &mut hasher).map_err(io_err("reading", path))?;
    Ok(Member {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Writes an archive at `to` holding `content` and the files `members`
/// (member name → file). The archive appears whole or not at all: it is
/// written beside `to` and renamed over it once complete.
pub fn write(
    to: &Path,
    content: serde_json::Value,
    members: &BTreeMap<String, PathBuf>,
) -> Result<Manifest, ArchiveError> {
    let mut listed = BTreeMap::new();
    for (name, file) in members {
        if !safe_name(name) {
            return Err(ArchiveError::NotAnArchive {
                path: to.to_path_buf(),
                why: format!("member name {name:?} is not a relative path"),
            });
        }
        listed.insert(name.clone(), hash_file(file)?);
    }
    let manifest = Manifest {
        format: FORMAT.to_string(),
        version: VERSION,
        content,
        members: listed,
    };
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".labspan-save-")
        .tempfile_in(parent)
        .map_err(io_err("creating a file in", parent))?;
    let out = BufWriter::new(tmp.as_file());
    let zstd = zstd::Encoder::new(out, 3).map_err(io_err("compressing", to))?;
    let mut tar = tar::Builder::new(zstd);
    let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, json.as_slice())
        .map_err(io_err("writing", to))?;
    for (name, file) in members {
        let mut f = File::open(file).map_err(io_err("reading", file))?;
        tar.append_file(name, &mut f)
            .map_err(io_err("writing", to))?;
    }
    let zstd = tar.into_inner().map_err(io_err("writing", to))?;
    let mut out = zstd.finish().map_err(io_err("writing", to))?;
    out.flush().map_err(io_err("writing", to))?;
    drop(out);
    tmp.as_file().sync_all().map_err(io_err("writing", to))?;
    tmp.persist(to)
        .map_err(|e| io_err("writing", to)(e.error))?;
    Ok(manifest)
}

/// Reads and checks the archive at `path`, unpacking it into a new folder
/// under `scratch`. Any failure removes that folder.
pub fn read(path: &Path, scratch: &Path) -> Result<Unpacked, ArchiveError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let dir = tempfile::Builder::new()
        .prefix(".labspan-load-")
        .tempdir_in(scratch)
        .map_err(io_err("creating a folder in", scratch))?;
    let zstd = zstd::Decoder::new(BufReader::new(file)).map_err(io_err("reading", path))?;
    let mut tar = tar::Archive::new(zstd);
    let fail = |e: io::Error| stream_error(path, e);
    let mut entries = tar.entries().map_err(fail)?;
    let manifest = match entries.next() {
        None => {
            return Err(ArchiveError::NotAnArchive {
                path: path.to_path_buf(),
                why: "it is empty".into(),
            })
        }
        Some(first) => read_manifest(path, first.map_err(fail)?)?,
    };
    let mut seen = BTreeMap::new();
    for entry in entries {
        let mut entry = entry.map_err(fail)?;
        let name = entry.path().map_err(fail)?.to_string_lossy().into_owned();
        let corrupt = |why: String| ArchiveError::Corrupt {
            path: path.to_path_buf(),
            why,
        };
        let Some(want) = manifest.members.get(&name) else {
            return Err(corrupt(format!("member {name:?} is not in its manifest")));
        };
        if !safe_name(&name) || seen.contains_key(&name) {
            return Err(corrupt(format!("member {name:?} is repeated or unsafe")));
        }
        let to = dir.path().join(&name);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        let mut out = BufWriter::new(File::create(&to).map_err(io_err("creating", &to))?);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(fail)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err("writing", &to))?;
            bytes += n as u64;
        }
        out.flush().map_err(io_err("writing", &to))?;
        let got = Member {
            bytes,
            sha256: hex::encode(hasher.finalize()),
        };
        if got != *want {
            return Err(corrupt(format!(
                "member {name:?} holds {} bytes of sha256 {}, its manifest says {} bytes of sha256 {}",
                got.bytes, got.sha256, want.bytes, want.sha256
            )));
        }
        seen.insert(name, ());
    }
    if let Some(missing) = manifest.members.keys().find(|m| !seen.contains_key(*m)) {
        return Err(ArchiveError::Truncated {
            path: path.to_path_buf(),
            why: format!("it ends before member {missing:?}"),
        });
    }
    Ok(Unpacked { manifest, dir })
}

/// A failure to decompress or untar: where the stream stops short, the
/// archive was cut; anything else, it was damaged.
fn stream_error(path: &Path, e: io::Error) -> ArchiveError {
    let why = e.to_string();
    let cut = e.kind() == io::ErrorKind::UnexpectedEof
        || why.contains("unexpected end")
        || why.contains("incomplete");
    match cut {
        true => ArchiveError::Truncated {
            path: path.to_path_buf(),
            why,
        },
        false => ArchiveError::Corrupt {
            path: path.to_path_buf(),
            why,
        },
    }
}

fn read_manifest<R: Read>(path: &Path, entry: tar::Entry<'_, R>) -> Result<Manifest, ArchiveError> {
    let not = |why: String| ArchiveError::NotAnArchive {
        path: path.to_path_buf(),
        why,
    };
    let name = entry
        .path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name != MANIFEST {
        return Err(not(format!("its first member is {name:?}, not {MANIFEST}")));
    }
    let mut json = Vec::new();
    entry
        .take(MAX_MANIFEST)
        .read_to_end(&mut json)
        .map_err(|e| stream_error(path, e))?;
    let header: Header = serde_json::from_slice(&json)
        .map_err(|e| not(format!("{MANIFEST} has no format and version: {e}")))?;
    if header.format != FORMAT {
        return Err(not(format!("its format is {:?}", header.format)));
    }
    if header.version > VERSION {
        return Err(ArchiveError::Newer {
            path: path.to_path_buf(),
            found: header.version,
        });
    }
    serde_json::from_slice(&json).map_err(|e| ArchiveError::Corrupt {
        path: path.to_path_buf(),
        why: format!("{MANIFEST}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::panic)]

    use super::*;

    /// A folder with two member files; their names and paths.
    fn sources(dir: &Path) -> BTreeMap<String, PathBuf> {
        let ram = dir.join("ram");
        // Not all zero: compressed, it still spans several zstd blocks.
        let data: Vec<u8> = (0..600_000u64).map(|i| (i * 7919 % 251) as u8).collect();
        fs::write(&ram, data).expect("ram");
        let lab = dir.join("lab.json");
        fs::write(&lab, br#"{"name":"t"}"#).expect("lab");
        BTreeMap::from([
            ("checkpoint/p/ram.state".to_string(), ram),
            ("lab.json".to_string(), lab),
        ])
    }

    fn written(dir: &Path) -> PathBuf {
        let to = dir.join("lab.labspan");
        write(&to, serde_json::json!({"lab": "t"}), &sources(dir)).expect("write");
        to
    }

    /// Nothing but the scratch folder's own files is left there.
    fn left_in(scratch: &Path) -> Vec<String> {
        fs::read_dir(scratch)
            .expect("scratch")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn an_archive_reads_back_as_written() {
        let dir = tempfile::tempdir().expect("tmp");
        let to = written(dir.path());
        let scratch = tempfile::tempdir().expect("tmp");
        let back = read(&to, scratch.path()).expect("read");
        assert_eq!(back.manifest.version, VERSION);
        assert_eq!(back.manifest.content["lab"], "t");
        let src = sources(dir.path());
        for (name, file) in &src {
            assert_eq!(
                fs::read(back.path(name)).expect("member"),
                fs::read(file).expect("source"),
                "{name}"
            );
        }
        drop(back);
        assert!(left_in(scratch.path()).is_empty());
    }

    #[test]
    fn a_newer_version_is_refused_before_anything_else() {
        let dir = tempfile::tempdir().expect("tmp");
        let to = dir.path().join("new.labspan");
        let manifest = serde_json::json!({
            "format": FORMAT, "version": VERSION + 1, "whatever": "comes next",
        });
        let mut tar = tar::Builder::new(zstd::Encoder::new(Vec::new(), 3).expect("zstd"));
        let json = serde_json::to_vec(&manifest).expect("json");
        let mut h = tar::Header::new_gnu();
        h.set_size(json.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, MANIFEST, json.as_slice())
            .expect("tar");
        let bytes = tar.into_inner().expect("tar").finish().expect("zstd");
        fs::write(&to, bytes).expect("write");
        let scratch = tempfile::tempdir().expect("tmp");
        match read(&to, scratch.path()) {
            Err(e @ ArchiveError::Newer { found, .. }) if found == VERSION + 1 => {
                assert!(e.to_string().contains("newer labspan"), "{e}")
            }
            other => panic!("a newer version read as {other:?}"),
        }
        assert!(left_in(scratch.path()).is_empty());
    }

    #[test]
    fn a_truncated_archive_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let to = written(dir.path());
        let whole = fs::read(&to).expect("archive");
        let scratch = tempfile::tempdir().expect("tmp");
        for keep in [whole.len() / 2, whole.len() - 10, 100] {
            fs::write(&to, &whole[..keep]).expect("cut");
            match read(&to, scratch.path()) {
                Err(ArchiveError::Truncated { .. }) => {}
                other => panic!("cut at {keep} of {}: {other:?}", whole.len()),
            }
            assert!(left_in(scratch.path()).is_empty(), "cut at {keep}");
        }
    }

    #[test]
    fn a_damaged_archive_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let to = written(dir.path());
        let whole = fs::read(&to).expect("archive");
        let scratch = tempfile::tempdir().expect("tmp");
        let mut bad = whole.clone();
        let at = bad.len() * 2 / 3;
        for b in &mut bad[at..at + 16] {
            *b ^= 0x5a;
        }
        fs::write(&to, &bad).expect("damage");
        match read(&to, scratch.path()) {
            Err(ArchiveError::Corrupt { .. } | ArchiveError::Truncated { .. }) => {}
            other => panic!("a damaged archive read as {other:?}"),
        }
        assert!(left_in(scratch.path()).is_empty());
        fs::write(&to, b"not an archive at all").expect("junk");
        assert!(matches!(
            read(&to, scratch.path()),
            Err(ArchiveError::Corrupt { .. } | ArchiveError::NotAnArchive { .. })
        ));
        assert!(left_in(scratch.path()).is_empty());
    }

    #[test]
    fn a_member_that_differs_from_its_manifest_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let to = dir.path().join("x.labspan");
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            content: serde_json::Value::Null,
            members: BTreeMap::from([(
                "a".to_string(),
                Member {
                    bytes: 3,
                    sha256: hex::encode(Sha256::digest(b"abc")),
                },
            )]),
        };
        let mut tar = tar::Builder::new(zstd::Encoder::new(Vec::new(), 3).expect("zstd"));
        for (name, data) in [
            (MANIFEST, serde_json::to_vec(&manifest).expect("json")),
            ("a", b"abd".to_vec()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_cksum();
            tar.append_data(&mut h, name, data.as_slice()).expect("tar");
        }
        fs::write(&to, tar.into_inner().expect("tar").finish().expect("zstd")).expect("write");
        let scratch = tempfile::tempdir().expect("tmp");
        match read(&to, scratch.path()) {
            Err(e @ ArchiveError::Corrupt { .. }) => {
                assert!(e.to_string().contains("member \"a\""), "{e}")
            }
            other => panic!("a changed member read as {other:?}"),
        }
        assert!(left_in(scratch.path()).is_empty());
    }
}
