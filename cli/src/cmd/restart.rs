//! `labspan restart LAB NODE`: restart one node's guest on purpose, keeping
//! its disk (its QEMU is ended and launched again from the same overlay).

use std::process::ExitCode;

use crate::embedded;

/// Arguments of `labspan restart`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab name.
    pub lab: String,
    /// Node name.
    pub node: String,
    /// Restart it on the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<std::path::PathBuf>,
}

/// Runs `labspan restart`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let restart =
        async |file: &std::path::Path| crate::remote::restart(file, &args.lab, &args.node).await;
    if let Some(cluster) = &args.cluster {
        return rt.block_on(restart(cluster));
    }
    rt.block_on(embedded::with_cluster(
        embedded::accel_from_env(),
        async |file| restart(&file).await,
    ))
}
