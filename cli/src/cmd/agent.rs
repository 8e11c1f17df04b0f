//! `labspan agent run --data DIR --vtep IP`: run this host's agent daemon.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use labspan_agent::daemon::{self, HostInfo};
use labspan_agent::reconcile::Agent;
use labspan_agent::vm::AccelChoice;
use labspan_transport::client::ClusterFile;

/// `labspan agent ...`
#[derive(clap::Subcommand)]
pub enum Command {
    /// Join the cluster's leader and run this host's share of every lab.
    Run(RunArgs),
}

/// Arguments of `labspan agent run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Data folder holding agent.cluster (from `labspan cluster join`).
    #[arg(long)]
    pub data: PathBuf,
    /// This host's address on the underlay (VXLAN tunnel endpoint).
    #[arg(long)]
    pub vtep: IpAddr,
    /// MTU of the network between hosts.
    #[arg(long, default_value_t = 1500)]
    pub underlay_mtu: u32,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, env = "LABSPAN_ACCEL", default_value = "auto")]
    pub accel: AccelChoice,
}

/// Runs `labspan agent ...`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Run(args) = cmd;
    let cluster = ClusterFile::load(&args.data.join("agent.cluster"))?;
    let host = HostInfo::of_this_machine(args.vtep, args.underlay_mtu)
        .context("reading this host's memory and CPUs")?;
    let agent = Arc::new(Agent::new(labspan_agent::paths::state_dir(), args.accel));
    tokio::runtime::Runtime::new()?.block_on(daemon::run(cluster, host, agent));
    Ok(ExitCode::SUCCESS)
}
