//! `labspan coordinator run --data DIR`: run a coordinator until stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use labspan_coordinator::metrics;
use labspan_coordinator::service::{self, RaftTiming, Timing};
use tokio::signal::unix::{signal, SignalKind};

use crate::metrics::Listen;

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
    /// Where to serve Prometheus metrics (ip:port, `/metrics`)
    /// [default: the API's address, port 7180].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub timing: TimingArgs,
}

/// Liveness settings (see docs/control-plane.md); defaults are production's.
/// Every coordinator of a cluster should run with the same ones.
#[derive(clap::Args)]
pub struct TimingArgs {
    /// How often agents heartbeat, in ms (agents learn it from the leader).
    #[arg(long, env = "LABSPAN_HEARTBEAT_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: Option<u64>,
    /// How long an agent keeps its VMs running without an acknowledged
    /// heartbeat, in ms; then it pauses them.
    #[arg(long, env = "LABSPAN_LEASE_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_ms: Option<u64>,
    /// Extra silence, in ms, before the leader marks a host down and moves
    /// its nodes (detection = lease + margin).
    #[arg(long, env = "LABSPAN_FENCE_MARGIN_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub fence_margin_ms: Option<u64>,
    /// How often the leader looks for silent hosts, in ms.
    #[arg(long, env = "LABSPAN_MONITOR_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub monitor_ms: Option<u64>,
    /// How long a new leader waits for agents it never heard of, in ms.
    #[arg(long, env = "LABSPAN_NEW_LEADER_GRACE_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub new_leader_grace_ms: Option<u64>,
    /// At most this many agent heartbeats a second reach the leader: with
    /// more hosts, the heartbeat and the lease stretch in proportion.
    #[arg(long, env = "LABSPAN_MAX_HEARTBEATS_PER_S", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_heartbeats_per_s: Option<u32>,
    /// How often the Raft leader heartbeats the other coordinators, in ms.
    #[arg(long, env = "LABSPAN_RAFT_HEARTBEAT_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub raft_heartbeat_ms: Option<u64>,
    /// Shortest Raft election timeout, in ms.
    #[arg(long, env = "LABSPAN_ELECTION_TIMEOUT_MIN_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub election_timeout_min_ms: Option<u64>,
    /// Longest Raft election timeout, in ms; also the leader lease, so
    /// about what a failover takes.
    #[arg(long, env = "LABSPAN_ELECTION_TIMEOUT_MAX_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub election_timeout_max_ms: Option<u64>,
    /// How often a follower checks whether it may campaign, in ms.
    #[arg(long, env = "LABSPAN_GATE_TICK_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub gate_tick_ms: Option<u64>,
}

impl TimingArgs {
    /// Production timing with the flags given applied; checked.
    pub fn timing(&self) -> anyhow::Result<Timing> {
        let d = Timing::default();
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        let t = Timing {
            heartbeat: ms(self.heartbeat_ms, d.heartbeat),
            lease: ms(self.lease_ms, d.lease),
            fence_margin: ms(self.fence_margin_ms, d.fence_margin),
            monitor_every: ms(self.monitor_ms, d.monitor_every),
            new_leader_grace: ms(self.new_leader_grace_ms, d.new_leader_grace),
            max_heartbeats_per_s: self.max_heartbeats_per_s.unwrap_or(d.max_heartbeats_per_s),
            raft: RaftTiming {
                heartbeat: ms(self.raft_heartbeat_ms, d.raft.heartbeat),
                election_timeout_min: ms(self.election_timeout_min_ms, d.raft.election_timeout_min),
                election_timeout_max: ms(self.election_timeout_max_ms, d.raft.election_timeout_max),
                gate_tick: ms(self.gate_tick_ms, d.raft.gate_tick),
            },
        };
        t.validate().map_err(|e| {
            anyhow::Error::new(crate::InvalidInput(format!("coordinator timing: {e}")))
        })?;
        Ok(t)
    }
}

/// Runs `labspan coordinator ...`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Run(args) = cmd;
    let timing = args.timing.timing()?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let running = service::start_with(&args.data, timing).await?;
        let listen = match args.metrics_listen {
            Some(addr) => Listen::Given(addr),
            None => Listen::Default(SocketAddr::new(running.addr.ip(), metrics::DEFAULT_PORT)),
        };
        let source = running.metrics.clone();
        let served = crate::metrics::serve(
            "coordinator",
            listen,
            metrics::CONTENT_TYPE,
            Arc::new(move || source.render()),
        )
        .await?;
        eprintln!(
            "coordinator listening on {} (joins on port + 1); stop with Ctrl-C or SIGTERM",
            running.addr
        );
        if let Some(addr) = served {
            eprintln!("metrics on http://{addr}/metrics");
        }
        let mut term = signal(SignalKind::terminate())?;
        let code = tokio::select! {
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
            _ = term.recv() => ExitCode::SUCCESS,
            why = running.raft_stopped() => {
                tracing::error!(reason = %why, data = %args.data.display(), "raft stopped; exiting so that this coordinator is started again once its disk is fixed");
                eprintln!("coordinator: raft stopped ({why}); is the disk of {} full? exiting", args.data.display());
                ExitCode::FAILURE
            }
        };
        running.shutdown().await;
        Ok(code)
    })
}
