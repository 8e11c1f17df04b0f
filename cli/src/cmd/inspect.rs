//! `labspan inspect`.

use std::process::ExitCode;

/// Arguments of `labspan inspect`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `labspan inspect`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("labspan inspect is not implemented yet")
}
