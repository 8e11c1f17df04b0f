//! `labspan coordinator run --data DIR`: run a coordinator until stopped.

use std::path::PathBuf;
use std::process::ExitCode;

use labspan_coordinator::service;
use tokio::signal::unix::{signal, SignalKind};

/// `labspan coordinator ...`
#[derive(clap::Subcommand)]
pub enum Command {
    /// Run the coordinator whose data folder is DIR (from `cluster init` or `cluster join`).
    Run(RunArgs),
}

/// Arguments of `labspan coordinator run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The coordinator's data folder.
    #[arg(long)]
    pub data: PathBuf,
}

/// Runs `labspan coordinator ...`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Run(args) = cmd;
    tokio::runtime::Runtime::new()?.block_on(async {
        let running = service::start(&args.data).await?;
        eprintln!(
            "coordinator listening on {} (joins on port + 1); stop with Ctrl-C or SIGTERM",
            running.addr
        );
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        running.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}
