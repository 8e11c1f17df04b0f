//! `labspan down LAB`: stop a lab and remove everything it made, showing
//! each node's progress.

use std::process::ExitCode;

use crate::embedded;
use crate::progress::{Mode, Renderer};

/// Arguments of `labspan down`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab name (as in its file's `name:`).
    pub lab: String,
    /// A lab that is not deployed is not an error (for scripts).
    #[arg(long)]
    pub ignore_missing: bool,
    /// Act on the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<std::path::PathBuf>,
    /// Progress and the result as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `labspan down`. A lab that is not deployed is an error (exit 2,
/// with the closest deployed name) unless `--ignore-missing`.
/// On the embedded default, leftovers of an interrupted `up` (VMs,
/// interfaces of a lab the cluster never recorded) are removed too: the
/// local agent brings the host to its recorded plan before anything else.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let show = Renderer::new(Mode::pick(args.json));
    let down = async |file: &std::path::Path| {
        crate::remote::down(file, &args.lab, args.ignore_missing, &show).await
    };
    if let Some(cluster) = &args.cluster {
        return rt.block_on(down(cluster));
    }
    rt.block_on(embedded::with_cluster(
        embedded::accel_from_env(),
        async |file| down(&file).await,
    ))
}
