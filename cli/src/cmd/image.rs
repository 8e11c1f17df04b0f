//! `labspan image`.

use std::process::ExitCode;

/// `labspan image` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Build an image (today: `tiny`).
    Build {},
}

/// Runs `labspan image ...`.
pub fn run(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("labspan image is not implemented yet")
}
