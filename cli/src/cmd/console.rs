//! `labspan console`.

use std::process::ExitCode;

/// Arguments of `labspan console`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `labspan console`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("labspan console is not implemented yet")
}
