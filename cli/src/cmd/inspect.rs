//! `labspan inspect [LAB] [--json]`: deployed labs, their nodes, where they
//! run and the lab's status, from the cluster (the embedded default's own
//! single-node cluster without `--cluster`).

use std::process::ExitCode;

use crate::embedded;

/// Arguments of `labspan inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Only this lab.
    pub lab: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Inspect the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<std::path::PathBuf>,
}

/// Runs `labspan inspect`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let inspect = async |file: &std::path::Path| {
        crate::remote::inspect(file, args.lab.as_deref(), args.json).await
    };
    if let Some(cluster) = &args.cluster {
        return rt.block_on(inspect(cluster));
    }
    rt.block_on(embedded::with_cluster(
        embedded::accel_from_env(),
        async |file| inspect(&file).await,
    ))
}
