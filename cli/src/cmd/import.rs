//! `labspan import`: lab files from other tools' topologies.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use labspan_proto::clab;
use labspan_proto::names::valid;

use crate::InvalidInput;

/// `labspan import` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Turn a containerlab topology (FILE.clab.yml) into a lab file.
    Clab(ClabArgs),
}

/// Arguments of `labspan import clab`.
#[derive(clap::Args)]
pub struct ClabArgs {
    /// The containerlab topology.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Where to write the lab file [default: standard output].
    #[arg(short, long, value_name = "LAB_FILE")]
    output: Option<PathBuf>,
    /// The image of the nodes KEY matches: KEY is a node name, a
    /// containerlab image (alpine:3.20) or a kind (juniper_vmx, linux);
    /// IMAGE is a labspan image or a .qcow2 file. `linux` nodes default to
    /// `tiny`. Repeatable.
    #[arg(long = "image", value_name = "KEY=IMAGE")]
    images: Vec<String>,
    /// The lab's name [default: the topology's name].
    #[arg(long)]
    name: Option<String>,
}

/// Runs `labspan import ...`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Clab(a) => import_clab(a),
    }
}

fn import_clab(a: ClabArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| InvalidInput(format!("error: cannot read {}: {e}", a.file.display())))?;
    let (images, qcow2) = parse_images(&a.images).map_err(InvalidInput)?;
    let opts = clab::Options {
        file: a.file.display().to_string(),
        name: a.name,
        images,
    };
    let imported = clab::import(&text, &opts).map_err(|d| InvalidInput(d.to_string()))?;
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    let lab = &imported.lab;
    match &a.output {
        Some(path) => {
            labspan_proto::atomic::write(path, imported.text.as_bytes())
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "wrote {}: {} nodes, {} links, {} LANs",
                path.display(),
                lab.nodes.len(),
                lab.links.len(),
                lab.lans.len()
            );
        }
        None => std::io::stdout().write_all(imported.text.as_bytes())?,
    }
    let used: std::collections::BTreeSet<&str> =
        lab.nodes.values().map(|n| n.image.as_str()).collect();
    for (name, file) in &qcow2 {
        if used.contains(name.as_str()) {
            eprintln!(
                "import the image before `labspan up`: labspan image import {} --name {name}",
                file.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `KEY=IMAGE` pairs: KEY → image name, and the qcow2 files named (image
/// name → file), which the user still has to import.
#[allow(clippy::type_complexity)]
fn parse_images(
    pairs: &[String],
) -> Result<(BTreeMap<String, String>, BTreeMap<String, PathBuf>), String> {
    let mut images = BTreeMap::new();
    let mut files = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!(
                "error: --image {pair}: expected KEY=IMAGE, e.g. --image juniper_vmx=vmx-23.2"
            ));
        };
        if key.is_empty() || value.is_empty() {
            return Err(format!(
                "error: --image {pair}: KEY and IMAGE must not be empty"
            ));
        }
        let name = if value.ends_with(".qcow2") {
            let path = Path::new(value);
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            valid::image(&stem).map_err(|e| {
                format!(
                    "error: --image {pair}: the file's name gives {}; {}",
                    e.why, e.help
                )
            })?;
            files.insert(stem.clone(), path.to_path_buf());
            stem
        } else {
            valid::image(value)
                .map_err(|e| format!("error: --image {pair}: {}; {}", e.why, e.help))?;
            value.to_string()
        };
        if images.insert(key.to_string(), name).is_some() {
            return Err(format!("error: --image {key}=... is given twice"));
        }
    }
    Ok((images, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_flags_name_images_or_qcow2_files() {
        let pairs = [
            "juniper_vmx=/srv/images/vmx-23.2.qcow2".to_string(),
            "alpine:3.20=tiny".to_string(),
        ];
        let (images, files) = parse_images(&pairs).expect("valid flags");
        assert_eq!(images["juniper_vmx"], "vmx-23.2");
        assert_eq!(images["alpine:3.20"], "tiny");
        assert_eq!(
            files["vmx-23.2"],
            PathBuf::from("/srv/images/vmx-23.2.qcow2")
        );
        for bad in [
            "juniper_vmx",
            "=tiny",
            "linux=",
            "linux=../x",
            "linux=/x/.y.qcow2",
        ] {
            assert!(parse_images(&[bad.to_string()]).is_err(), "{bad} accepted");
        }
        let twice = ["a=b".to_string(), "a=c".to_string()];
        assert!(parse_images(&twice).is_err(), "a key given twice");
    }
}
