//! The lab file: its model, parser and validation.
//!
//! `parse` reads YAML with positions (marked-yaml), walks the tree by hand so
//! that every problem is reported with file, line, column and object path,
//! then checks cross-references; a `Lab` is returned only when none was found.

mod check;
mod emit;
mod model;
mod read;
pub mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::yaml::{Diagnostic, Diagnostics, Pos};
pub use emit::to_yaml;
pub use model::*;
pub use read::LAB_FILE_KEYS;

use crate::yaml::Sink;
use read::RawLab;

/// Largest total size of the files one lab copies into its guests (48 MiB).
///
/// The files live outside the Raft log, in the coordinators' file store, but
/// every coordinator keeps a copy and every host of the lab fetches them
/// before its guests are configured: the limit keeps a lab's deploy within
/// seconds and one user's lab from filling the coordinators' disks.
pub const MAX_LAB_FILES_SIZE: u64 = 48 * 1024 * 1024;

/// Largest single guest file (15 MiB): one file travels as one message,
/// under the codec's 16 MiB limit.
pub const MAX_FILE_SIZE: u64 = 15 * 1024 * 1024;

/// A lab as the cluster stores it: the lab, and every file its nodes copy
/// into guests by content hash (the contents are uploaded separately).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabBundle {
    /// The validated lab.
    pub lab: Lab,
    /// Host path as written in the lab file → the file it names.
    pub files: BTreeMap<String, FileRef>,
}

impl LabBundle {
    /// Total size of the lab's guest files (each distinct file once).
    pub fn files_size(&self) -> u64 {
        let distinct: BTreeMap<&str, u64> = self
            .files
            .values()
            .map(|f| (f.sha256.as_str(), f.size))
            .collect();
        distinct.values().sum()
    }
}

/// A guest file by content: what the Raft state and host plans hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRef {
    /// sha256 of the contents, lowercase hex.
    pub sha256: String,
    pub size: u64,
}

impl FileRef {
    /// The reference to `contents`.
    pub fn of(contents: &[u8]) -> FileRef {
        FileRef {
            sha256: crate::image::sha256_hex(contents),
            size: u64::try_from(contents.len()).unwrap_or(u64::MAX),
        }
    }
}

/// A lab file loaded from disk: its bundle, and the contents of its files
/// by sha256 (to upload before the bundle is deployed).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedLab {
    pub bundle: LabBundle,
    pub contents: BTreeMap<String, Vec<u8>>,
}

/// Why a lab file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The lab file itself could not be read.
    #[error("cannot read lab file {}: {cause}", path.display())]
    Read {
        /// The lab file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The lab file was read but is not a valid lab.
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
}

/// What a lab file's top level must be, said when it is not.
const LAB_FILE: crate::yaml::Shape = crate::yaml::Shape {
    what: "the lab file",
    start: "start with name: my-lab, then nodes:",
    no_anchors: "use defaults: for shared values",
};

/// Parses and validates a lab file's text; `file` is its name in messages.
pub fn parse(file: &str, text: &str) -> Result<Lab, Diagnostics> {
    parse_raw(file, text).map(|(lab, _)| lab)
}

/// Parses, validates, and keeps the positions of `files:` entries.
fn parse_raw(file: &str, text: &str) -> Result<(Lab, FilePositions), Diagnostics> {
    let mut sink = Sink::new(file);
    let Some(root) = crate::yaml::load(&mut sink, text, LAB_FILE) else {
        return Err(sink.finish());
    };
    let raw = read::read_lab(&mut sink, &root);
    check::check_lab(&mut sink, &raw);
    if !sink.is_clean() {
        return Err(sink.finish());
    }
    drop(root);
    Ok(build(raw))
}

/// Where each `files:` entry was written: (node, guest path) → position.
type FilePositions = BTreeMap<(String, String), Pos>;

/// Turns a raw lab that passed every check into the model (moving, not
/// copying: a lab may have 100,000 nodes).
fn build(raw: RawLab) -> (Lab, FilePositions) {
    let mut file_pos = FilePositions::new();
    let mut nodes = BTreeMap::new();
    for n in raw.nodes {
        for (guest, pos) in n.file_pos {
            file_pos.insert((n.name.clone(), guest), pos);
        }
        nodes.insert(n.name, n.node);
    }
    let mut add_nic = |e: &Endpoint| {
        if let Some(node) = nodes.get_mut(&e.node) {
            if !node.nics.contains_key(&e.nic) {
                node.nics.insert(e.nic.clone(), Nic::default());
            }
        }
    };
    let mut links = Vec::with_capacity(raw.links.len());
    for l in raw.links {
        if let Ok([a, b]) = <[read::RawEndpoint; 2]>::try_from(l.ends) {
            add_nic(&a.ep);
            add_nic(&b.ep);
            links.push(Link {
                endpoints: [a.ep, b.ep],
                impairment: l.impairment,
            });
        }
    }
    let mut lans = BTreeMap::new();
    for l in raw.lans {
        let members: Vec<Endpoint> = l.members.into_iter().map(|m| m.ep).collect();
        members.iter().for_each(&mut add_nic);
        lans.insert(l.name, Lan { members });
    }
    let group = |g: read::RawGroup| g.members.into_iter().map(|m| m.name).collect();
    let placement = PlacementHints {
        pin: raw.pins.into_iter().map(|(r, s)| (r.name, s)).collect(),
        together: raw.together.into_iter().map(group).collect(),
        spread: raw.spread.into_iter().map(group).collect(),
    };
    let verify = raw.verify.into_iter().map(|c| c.check).collect();
    (
        Lab {
            name: raw.name,
            nodes,
            links,
            lans,
            placement,
            verify,
            resilience: raw.resilience,
        },
        file_pos,
    )
}

/// Reads a lab file as UTF-8 text.
fn read_text(path: &Path) -> Result<String, LoadError> {
    let bytes = std::fs::read(path).map_err(|cause| LoadError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let column = valid.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        LoadError::Invalid(Diagnostics(vec![Diagnostic {
            file: path.display().to_string(),
            line,
            column,
            path: String::new(),
            message: "the lab file is not UTF-8 text".into(),
            help: Some("save it as UTF-8".into()),
        }]))
    })
}

/// Reads and validates the lab file at `path`.
pub fn load(path: &Path) -> Result<Lab, LoadError> {
    let text = read_text(path)?;
    Ok(parse(&path.display().to_string(), &text)?)
}

/// Reads and validates the lab file at `path`, and every file its nodes copy
/// into guests (relative to the lab file's folder).
pub fn load_bundle(path: &Path) -> Result<LoadedLab, LoadError> {
    let text = read_text(path)?;
    let file = path.display().to_string();
    let (lab, file_pos) = parse_raw(&file, &text)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut sink = Sink::new(&file);
    let mut files = BTreeMap::new();
    let mut contents = BTreeMap::new();
    for (name, node) in &lab.nodes {
        for (guest, host) in &node.files {
            if files.contains_key(host) {
                continue;
            }
            let full = dir.join(host);
            let pos = file_pos
                .get(&(name.clone(), guest.clone()))
                .copied()
                .unwrap_or_default();
            let at = format!("nodes.{name}.files.{guest}");
            match std::fs::read(&full) {
                Ok(data) if data.len() as u64 > MAX_FILE_SIZE => {
                    let msg = format!(
                        "\"{host}\" is {}, over the limit of {} for one guest file",
                        shown_size(data.len() as u64),
                        shown_size(MAX_FILE_SIZE)
                    );
                    let help = "copy large data into the image instead (`labspan image build`)";
                    sink.error(pos, &at, msg, Some(help.into()));
                }
                Ok(data) => {
                    let file = FileRef::of(&data);
                    contents.insert(file.sha256.clone(), data);
                    files.insert(host.clone(), file);
                }
                Err(e) => {
                    let msg = format!("cannot read \"{host}\" ({}): {e}", full.display());
                    let help =
                        "create the file, or fix the path (relative to the lab file's folder)";
                    sink.error(pos, &at, msg, Some(help.into()));
                }
            }
        }
    }
    let bundle = LabBundle { lab, files };
    if let Err(e) = check_files_size(&bundle) {
        sink.error(
            Pos::default(),
            "files",
            e,
            Some("copy large data into the image instead (`labspan image build`)".into()),
        );
    }
    if !sink.is_clean() {
        return Err(sink.finish().into());
    }
    Ok(LoadedLab { bundle, contents })
}

/// `bytes` for a message: "48 MiB", "12.5 MiB", "300 bytes".
fn shown_size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    match bytes {
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b => format!("{b} bytes"),
    }
}

/// Refuses a lab whose guest files are over [`MAX_LAB_FILES_SIZE`] in
/// total or one of which is over [`MAX_FILE_SIZE`]; the message names the limit.
pub fn check_files_size(bundle: &LabBundle) -> Result<(), String> {
    let name = &bundle.lab.name;
    if let Some((host, f)) = bundle.files.iter().find(|(_, f)| f.size > MAX_FILE_SIZE) {
        return Err(format!(
            "lab \"{name}\": guest file \"{host}\" is {}, over the limit of {} for one guest file",
            shown_size(f.size),
            shown_size(MAX_FILE_SIZE)
        ));
    }
    let total = bundle.files_size();
    if total > MAX_LAB_FILES_SIZE {
        return Err(format!(
            "lab \"{name}\": its guest files total {}, over the limit of {} per lab",
            shown_size(total),
            shown_size(MAX_LAB_FILES_SIZE)
        ));
    }
    Ok(())
}
