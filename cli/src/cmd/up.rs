//! `labspan up`.

use std::process::ExitCode;

/// Arguments of `labspan up`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `labspan up`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("labspan up is not implemented yet")
}
