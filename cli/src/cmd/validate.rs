//! `labspan validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use labspan_proto::lab::{self, LoadError};

use crate::InvalidInput;

/// Arguments of `labspan validate`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab files to check; every problem in every file is reported.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// Runs `labspan validate`: `FILE: ok (...)` per valid file on stdout, every
/// problem of the others on stderr, exit status 2 if any file is invalid.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    for file in &args.files {
        // load_bundle also reads `files:` sources, so a missing one is caught now.
        match lab::load_bundle(file) {
            Ok(bundle) => {
                let lab = &bundle.lab;
                let segments = lab.links.len() + lab.lans.len();
                println!("{}: ok ({} nodes, {segments} segments)", file.display(), lab.nodes.len());
            }
            Err(LoadError::Invalid(d)) => problems.push(d.to_string()),
            Err(e @ LoadError::Read { .. }) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(anyhow::Error::new(InvalidInput(problems.join("\n"))))
}
