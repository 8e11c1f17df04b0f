//! A writer for the cpio "newc" format, the one the kernel unpacks as an
//! initramfs. Written here rather than shelling out to `cpio` so that the
//! archive is reproducible (owner root, mtime 0, sorted entries) and one
//! fewer program has to be installed.

use std::io::{self, Write};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory (mode bits only, e.g. 0o755).
    Dir { path: String, mode: u32 },
    /// A regular file with its contents.
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    /// A symbolic link to `target`.
    Symlink { path: String, target: String },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Writes `entries` (in the order given; parents before children) and the
/// trailer to `out`.
pub fn write_archive<W: Write>(out: &mut W, entries: &[Entry]) -> io::Result<()> {
    for (i, e) in entries.iter().enumerate() {
        let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let (mode, data): (u32, &[u8]) = match e {
            Entry::Dir { mode, .. } => (S_IFDIR | mode, &[]),
            Entry::File { mode, data, .. } => (S_IFREG | mode, data),
            Entry::Symlink { target, .. } => (S_IFLNK | 0o777, target.as_bytes()),
        };
        let nlink = if matches!(e, Entry::Dir { .. }) { 2 } else { 1 };
        write_member(out, ino, mode, nlink, e.path(), data)?;
    }
    write_member(out, 0, 0, 1, "TRAILER!!!", &[])
}

fn write_member<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let size = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio member over 4 GiB"))?;
    let namesize = name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, 0, 0, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, header.len() + namesize)?;
    out.write_all(data)?;
    pad4(out, data.len())
}

fn pad4<W: Write>(out: &mut W, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_alignment() {
        let mut buf = Vec::new();
        let entries = [
            Entry::Dir {
                path: "bin".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "bin/x".into(),
                mode: 0o755,
                data: b"hello".to_vec(),
            },
            Entry::Symlink {
                path: "sh".into(),
                target: "bin/x".into(),
            },
        ];
        write_archive(&mut buf, &entries).expect("write to a Vec");
        assert!(buf.starts_with(b"070701"));
        assert_eq!(buf.len() % 4, 0);
        let text = String::from_utf8_lossy(&buf);
        // The directory's mode and the file's size are in the headers.
        assert!(text.contains(&format!("{:08x}", S_IFDIR | 0o755)));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn cpio_tool_reads_it_back() {
        // The system's cpio is the reference reader. This test is in the
        // `qemu` tier (`.config/nextest.toml`), whose machines have it.
        let mut buf = Vec::new();
        let entries = [
            Entry::Dir {
                path: "etc".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "etc/abc".into(),
                mode: 0o644,
                data: b"12345".to_vec(),
            },
        ];
        write_archive(&mut buf, &entries).expect("write to a Vec");
        let dir = tempfile::tempdir().expect("a temporary folder");
        let archive = dir.path().join("archive.cpio");
        std::fs::write(&archive, &buf).expect("write the archive");
        let listed = labspan_tool::stdout_of(
            std::process::Command::new("cpio")
                .args(["-t", "--quiet", "-F"])
                .arg(&archive),
        )
        .unwrap_or_else(|e| panic!("this test needs cpio (deploy/install-deps.sh): {e}"));
        assert_eq!(listed, "etc\netc/abc\n");
    }
}
