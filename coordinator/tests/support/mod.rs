//! What the coordinator's Raft tests share.

use std::collections::{BTreeMap, BTreeSet};

use labspan_coordinator::raft::Command;
use labspan_proto::{codec, lab};

/// A lab with one node on h1 whose bundle is about `spec_len` bytes (a
/// guest file named by a long path: the bundle holds its hash, not its
/// contents).
pub fn deploy_lab(i: usize, spec_len: usize) -> Result<Command, String> {
    let name = format!("lab-{i:03}");
    let lab = lab::parse(
        &name,
        &format!("name: {name}\nnodes:\n  r1: {{image: tiny}}\n"),
    )
    .map_err(|d| d.to_string())?;
    let spec = codec::encode(&lab::LabBundle {
        lab,
        files: BTreeMap::from([(
            "p".repeat(spec_len),
            lab::FileRef::of(&[u8::try_from(i % 251).unwrap_or(0)]),
        )]),
    })
    .map_err(|e| e.to_string())?;
    Ok(Command::DeployLab {
        name,
        spec,
        segments: BTreeSet::from(["lan0".to_string()]),
        placement: BTreeMap::from([("r1".to_string(), "h1".to_string())]),
        origin: None,
    })
}
