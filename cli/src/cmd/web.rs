//! `labspan web [--listen ADDR] [LAB]`: the cluster in a browser (docs/web.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::InvalidInput;

/// Arguments of `labspan web`.
#[derive(clap::Args)]
pub struct Args {
    /// Show only this lab (the hosts still count every lab's load).
    pub lab: Option<String>,
    /// Where the page is served; keep it on this machine (the page acts
    /// with your cluster certificate).
    #[arg(long, default_value = "127.0.0.1:7190")]
    pub listen: SocketAddr,
    /// The cluster to show.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<PathBuf>,
}

/// Runs `labspan web` until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(cluster) = args.cluster else {
        return Err(InvalidInput(
            "error: `labspan web` shows a cluster: give --cluster FILE or set LABSPAN_CLUSTER (the embedded default has no daemon to watch)".into(),
        )
        .into());
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        tokio::select! {
            served = crate::web::serve(cluster, args.listen, args.lab) => served,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
