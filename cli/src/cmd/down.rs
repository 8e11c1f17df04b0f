//! `labspan down`.

use std::process::ExitCode;

/// Arguments of `labspan down`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `labspan down`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("labspan down is not implemented yet")
}
