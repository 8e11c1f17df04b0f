//! `labspan graph`.

use std::process::ExitCode;

/// Arguments of `labspan graph`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `labspan graph`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("labspan graph is not implemented yet")
}
