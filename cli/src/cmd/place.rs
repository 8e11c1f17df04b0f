//! `labspan place`.

use std::process::ExitCode;

/// Arguments of `labspan place`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `labspan place`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("labspan place is not implemented yet")
}
