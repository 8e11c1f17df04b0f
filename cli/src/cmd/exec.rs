//! `labspan exec`.

use std::process::ExitCode;

/// Arguments of `labspan exec`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `labspan exec`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("labspan exec is not implemented yet")
}
