//! `labspan exec LAB NODE -- CMD...`: run a command in a guest, with its
//! output and exit status.

use std::process::ExitCode;

use crate::embedded;

/// Arguments of `labspan exec`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab name.
    pub lab: String,
    /// Node name.
    pub node: String,
    /// Seconds the command may run.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The command, run with `sh -c` (words are joined with spaces, as ssh does).
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
    /// Run it on the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<std::path::PathBuf>,
}

/// Runs `labspan exec`; exits with the guest command's status.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cmd = args.cmd.join(" ");
    let rt = tokio::runtime::Runtime::new()?;
    let exec = async |file: &std::path::Path| {
        crate::remote::exec(file, &args.lab, &args.node, &cmd, args.timeout).await
    };
    if let Some(cluster) = &args.cluster {
        return rt.block_on(exec(cluster));
    }
    rt.block_on(embedded::with_cluster(
        embedded::accel_from_env(),
        async |file| exec(&file).await,
    ))
}
