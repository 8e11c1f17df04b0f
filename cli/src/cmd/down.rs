//! `labspan down LAB`: stop a lab and remove everything it made.

use std::process::ExitCode;

use labspan_agent::vm::AccelChoice;

use crate::embedded::Embedded;

/// Arguments of `labspan down`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab name (as in its file's `name:`).
    pub lab: String,
    /// Act on the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<std::path::PathBuf>,
}

/// Runs `labspan down`. Idempotent: a lab already gone is not an error, and
/// leftovers of an interrupted `up` (VM folders, interfaces) are removed too.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(cluster) = &args.cluster {
        return tokio::runtime::Runtime::new()?.block_on(crate::remote::down(cluster, &args.lab));
    }
    let env = Embedded::open(AccelChoice::Auto)?;
    let known = env.store.get(&args.lab)?.is_some();
    let rt = tokio::runtime::Runtime::new()?;
    let stopped = rt.block_on(env.agent.remove_lab(&args.lab))?;
    env.store.remove(&args.lab)?;
    if known || stopped > 0 {
        println!(
            "lab \"{}\" is down: {stopped} VM(s) stopped, its interfaces and VM folders removed",
            args.lab
        );
    } else {
        println!("lab \"{}\" is not deployed; nothing to do", args.lab);
    }
    Ok(ExitCode::SUCCESS)
}
