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

use crate::metrics::Listen;

/// `labspan agent ...`
#[derive(clap::Subcommand)]
pub enum Command {
    /// Join the cluster's leader and run this host's share of every lab.
    Run(RunArgs),
    /// Started by `agent run`: pauses this host's VMs when the agent that
    /// started it dies (its standard input reaches its end).
    #[command(hide = true)]
    Guard,
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
    /// MTU of the network between hosts (576 to 65535).
    #[arg(long, default_value_t = 1500, value_parser = underlay_mtu)]
    pub underlay_mtu: u32,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, env = "LABSPAN_ACCEL", default_value = "auto")]
    pub accel: AccelChoice,
    /// Where to serve this host's images to the other hosts (ip:port)
    /// [default: the VTEP address, port 7102].
    #[arg(long, value_name = "ADDR")]
    pub image_listen: Option<std::net::SocketAddr>,
    /// Where to serve Prometheus metrics (ip:port, `/metrics`)
    /// [default: the VTEP address, port 7181].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Offer only this much memory to labs (e.g. 8GiB; default: all of it).
    #[arg(long, value_parser = memory_mib)]
    pub memory: Option<u64>,
    /// Offer only this many CPUs to labs (default: all of them).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,
    /// vCPUs offered per CPU, a ratio in (0, 64]: lab guests mostly idle,
    /// so small machines run more of them than they have CPUs.
    #[arg(long, env = "LABSPAN_CPU_OVERCOMMIT", value_name = "F", value_parser = cpu_overcommit, default_value_t = labspan_agent::daemon::DEFAULT_CPU_OVERCOMMIT)]
    pub cpu_overcommit: f64,
}

/// A vCPU-per-CPU ratio, as hosts files take it.
pub fn cpu_overcommit(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 64.0 => Ok(f),
        _ => Err(format!(
            "\"{text}\" is not a ratio in (0, 64], e.g. 4 or 1.5"
        )),
    }
}

fn underlay_mtu(text: &str) -> Result<u32, String> {
    let mtu: u32 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number of bytes: {e}"))?;
    labspan_proto::plan::check_underlay_mtu(mtu)
}

fn memory_mib(text: &str) -> Result<u64, String> {
    match labspan_proto::lab::units::parse_memory_mib(text)? {
        0 => Err("memory must be more than 0".into()),
        mib => Ok(mib),
    }
}

/// This machine as `args` describe it: its memory and CPUs, or less where
/// the flags say so (several hosts sharing one machine, a host lending part
/// of itself).
fn host_info(args: &RunArgs) -> anyhow::Result<HostInfo> {
    let mut host = HostInfo::of_this_machine(args.vtep, args.underlay_mtu)
        .context("reading this host's memory and CPUs")?;
    if let Some(mib) = args.memory {
        if mib > host.memory_mib {
            return Err(anyhow::Error::new(crate::InvalidInput(format!(
                "--memory {mib}MiB is more than this machine has ({} MiB)",
                host.memory_mib
            ))));
        }
        host.memory_mib = mib;
    }
    if let Some(cpus) = args.cpus {
        host.cpus = cpus;
    }
    host.cpu_overcommit = args.cpu_overcommit;
    host.image_listen = Some(args.image_listen.unwrap_or(std::net::SocketAddr::new(
        args.vtep,
        labspan_image::transfer::DEFAULT_IMAGE_PORT,
    )));
    Ok(host)
}

/// Runs `labspan agent ...`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let args = match cmd {
        Command::Run(args) => args,
        Command::Guard => return guard(),
    };
    let cluster = ClusterFile::load(&args.data.join("agent.cluster"))?;
    let host = host_info(&args)?;
    let agent = Arc::new(Agent::new(labspan_agent::paths::state_dir(), args.accel));
    // Held until this process ends: its end is the guard's signal.
    let run = labspan_agent::fence::record_agent_run(&labspan_agent::paths::state_dir())
        .context("recording this agent's run in its state folder")?;
    let _lifeline = start_guard(&run)?;
    let listen = match args.metrics_listen {
        Some(addr) => Listen::Given(addr),
        None => Listen::Default(std::net::SocketAddr::new(
            args.vtep,
            labspan_agent::metrics::DEFAULT_PORT,
        )),
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let scraped = agent.clone();
        let served = crate::metrics::serve(
            "agent",
            listen,
            labspan_agent::metrics::CONTENT_TYPE,
            Arc::new(move || labspan_agent::metrics::render(&scraped)),
        )
        .await?;
        if let Some(addr) = served {
            eprintln!("agent: metrics on http://{addr}/metrics");
        }
        daemon::run(cluster, host, agent).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// How an agent tells its guard its run id.
const GUARD_RUN_ENV: &str = "LABSPAN_AGENT_RUN";

/// Starts `labspan agent guard` (see `labspan_agent::fence::guard`) with a
/// pipe as its standard input; returns the pipe's write end, which only
/// this process holds (std opens pipes close-on-exec, so no QEMU inherits
/// it). A guard that exits early is logged: a `kill -9` of the agent would
/// then leave its VMs running.
fn start_guard(run: &str) -> anyhow::Result<std::process::ChildStdin> {
    let exe = std::env::current_exe().context("finding this program to start its guard")?;
    let mut child = std::process::Command::new(exe)
        .args(["agent", "guard"])
        .env(GUARD_RUN_ENV, run)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("starting the agent's guard (labspan agent guard)")?;
    let lifeline = child
        .stdin
        .take()
        .context("the agent's guard has no standard input")?;
    std::thread::spawn(move || {
        let status = child.wait();
        tracing::error!(
            ?status,
            "the agent's guard exited: a kill -9 of this agent would now leave its VMs running"
        );
    });
    Ok(lifeline)
}

/// `labspan agent guard`: waits for the end of standard input, then
/// pauses every VM in the state folder.
fn guard() -> anyhow::Result<ExitCode> {
    let state = labspan_agent::paths::state_dir();
    // Without it (a guard started by hand), it defers to any agent that ran here.
    let run = std::env::var(GUARD_RUN_ENV).unwrap_or_default();
    let agent_gone = async {
        // Nothing is ever written: a read returns only at the pipe's end
        // (or on an error, which means the same here).
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf)
            .await
            .is_ok_and(|n| n > 0)
        {}
    };
    tokio::runtime::Runtime::new()?.block_on(labspan_agent::fence::guard(&state, &run, agent_gone));
    Ok(ExitCode::SUCCESS)
}
