//! `labspan events [LAB] [--json]`: each step of the cluster's labs as it
//! happens (placed, fetching, booting, configuring, running, lost,
//! stopping, ...), one line each, until stopped: what a deploy, a host
//! loss and its re-placements, or a `down` do, as another user sees them.

use std::process::ExitCode;

use crate::progress::{Mode, Renderer};
use crate::InvalidInput;

/// Arguments of `labspan events`.
#[derive(clap::Args)]
pub struct Args {
    /// Only this lab (it need not be deployed yet).
    pub lab: Option<String>,
    /// One JSON object per step on stdout.
    #[arg(long)]
    pub json: bool,
    /// Follow the cluster this file names.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<std::path::PathBuf>,
}

/// Runs `labspan events` until interrupted.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(cluster) = args.cluster else {
        return Err(InvalidInput(
            "error: labspan events follows a cluster (--cluster FILE or LABSPAN_CLUSTER); \
             the embedded default runs only while one command does, and that command \
             shows its own progress"
                .into(),
        )
        .into());
    };
    // Bars suit one deploy; a stream without end reads better as lines.
    let mode = if args.json { Mode::Json } else { Mode::Lines };
    let show = Renderer::new(mode);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let following = crate::follow::start(&cluster, args.lab.as_deref(), show).await?;
        following.forever().await;
        Ok(ExitCode::SUCCESS)
    })
}
