//! `labspan validate`.

use std::process::ExitCode;

/// Arguments of `labspan validate`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `labspan validate`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("labspan validate is not implemented yet")
}
