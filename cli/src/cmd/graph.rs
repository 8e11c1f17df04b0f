//! `labspan graph`.

use std::path::PathBuf;
use std::process::ExitCode;

use labspan_proto::lab::{self, graph, LoadError};

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
    /// The lab file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "dot")]
    format: Format,
    /// Place the lab on these hosts (see `labspan place`) and group nodes by host.
    #[arg(long, value_name = "HOSTS")]
    hosts: Option<PathBuf>,
}

/// Runs `labspan graph`: prints the drawing of a valid lab on stdout.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let lab = match lab::load(&args.file) {
        Ok(lab) => lab,
        Err(e @ (LoadError::Invalid(_) | LoadError::Read { .. })) => {
            return Err(anyhow::Error::new(InvalidInput(e.to_string())))
        }
    };
    let format = match args.format {
        Format::Dot => graph::Format::Dot,
        Format::Mermaid => graph::Format::Mermaid,
        Format::Json => graph::Format::Json,
    };
    let placement = match &args.hosts {
        Some(path) => Some(crate::cmd::place::place_on(&lab, path)?.nodes),
        None => None,
    };
    print!("{}", graph::render(&lab, format, placement.as_ref()));
    Ok(ExitCode::SUCCESS)
}
