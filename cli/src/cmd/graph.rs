//! `labspan graph FILE`: draw a lab file; `labspan graph LAB --cluster
//! FILE` (or with `LABSPAN_CLUSTER` set): draw a running lab where it runs,
//! nodes grouped by host and segments between hosts marked with their VNI.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use labspan_proto::lab::{self, LoadError};

use crate::graph;

use crate::InvalidInput;

/// Output format of `labspan graph`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    /// Graphviz (`| dot -Tsvg > lab.svg`).
    Dot,
    /// Mermaid flowchart (paste into Markdown).
    Mermaid,
    /// Nodes, NICs and segments as JSON.
    Json,
}

/// Arguments of `labspan graph`.
#[derive(clap::Args)]
pub struct Args {
    /// The lab file, or with a cluster the name of a running lab.
    #[arg(value_name = "FILE|LAB")]
    file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "dot")]
    format: Format,
    /// Place the lab on these hosts (see `labspan place`) and group nodes by host.
    #[arg(long, value_name = "HOSTS")]
    hosts: Option<PathBuf>,
    /// Draw the running lab of this name on the cluster this file names.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    cluster: Option<PathBuf>,
}

/// Runs `labspan graph`: prints the drawing of a valid lab on stdout.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let format = match args.format {
        Format::Dot => graph::Format::Dot,
        Format::Mermaid => graph::Format::Mermaid,
        Format::Json => graph::Format::Json,
    };
    if let Some(cluster) = &args.cluster {
        let from_env = crate::origin::cluster() == "LABSPAN_CLUSTER";
        // With the variable set for other commands, a file is still drawn as a file.
        if !(from_env && args.file.is_file()) {
            return running(cluster, &args, format);
        }
    }
    let lab = match lab::load(&args.file) {
        Ok(lab) => lab,
        Err(e @ (LoadError::Invalid(_) | LoadError::Read { .. })) => {
            return Err(anyhow::Error::new(InvalidInput(e.to_string())))
        }
    };
    let placement = match &args.hosts {
        Some(path) => Some(crate::cmd::place::place_on(&lab, path)?.nodes),
        None => None,
    };
    print!("{}", graph::render(&lab, format, placement.as_ref()));
    Ok(ExitCode::SUCCESS)
}

/// Draws running lab `args.file` (a lab name) as the cluster placed it.
fn running(cluster: &Path, args: &Args, format: graph::Format) -> anyhow::Result<ExitCode> {
    if args.hosts.is_some() {
        return Err(InvalidInput(
            "error: --hosts places a lab file; a running lab is drawn where it runs (drop --hosts)"
                .into(),
        )
        .into());
    }
    let name = args.file.to_string_lossy().to_string();
    if args.file.is_file() {
        return Err(InvalidInput(format!(
            "error: with --cluster, graph draws a running lab: give its name, not the file {name}"
        ))
        .into());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let (bundle, report) = rt.block_on(crate::remote::lab(cluster, &name))?;
    print!(
        "{}",
        graph::render_running(&bundle.lab, format, Some(&report.placement), &report.vnis)
    );
    Ok(ExitCode::SUCCESS)
}
