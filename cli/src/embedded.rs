//! The embedded default: with no cluster file, `labspan up/down/inspect/exec`
//! run a single-node cluster inside the CLI process, on loopback: the
//! coordinator service (the code of `labspan coordinator run`) and this
//! machine's agent daemon (the code of `labspan agent run`, VTEP 127.0.0.1).
//! The command then goes through [`crate::remote`] exactly as with
//! `--cluster`, and the cluster stops when it is done. VMs outlive it: the
//! next command's agent adopts them.
//!
//! ```text
//! STATE/embedded/lock                   flock: one embedded command at a time
//! STATE/embedded/coordinator/           its data folder (`cluster init` layout)
//! STATE/embedded/coordinator/admin.cluster   the CLI's credential
//! STATE/embedded/agent/agent.cluster    the local agent's credential
//! STATE/embedded/agent/host             the host name it registers as
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use labspan_agent::daemon::{self, Hooks, HostInfo};
use labspan_agent::reconcile::{Agent, AgentError, Event};
use labspan_agent::vm::AccelChoice;
use labspan_coordinator::hosts::HostSpec;
use labspan_coordinator::placement::place_lab;
use labspan_coordinator::plan::{plan_lab, HostFabric, PlanInput, VXLAN_OVERHEAD};
use labspan_coordinator::service::{self, DataDir, Running, StartError};
use labspan_proto::lab::{LabBundle, LoadedLab};
use labspan_proto::msg::Role;
use labspan_proto::plan::HostPlan;
use labspan_transport::client::ClusterFile;
use labspan_transport::TransportError;

use crate::InvalidInput;

/// Guests on one machine have no underlay to share: give them a full
/// Ethernet MTU.
const LOCAL_UNDERLAY_MTU: u32 = 1500 + VXLAN_OVERHEAD;
/// The embedded coordinator's member name.
const COORDINATOR_NAME: &str = "embedded";
/// The embedded cluster's name (in its CA certificate).
const CLUSTER_NAME: &str = "labspan-embedded";
/// How long the single coordinator may take to elect itself.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long the agent may take to bring this host to its recorded plan
/// (it may have to boot VMs whose QEMU died meanwhile).
const CONVERGE_WAIT: Duration = Duration::from_secs(600);
/// Free-port picks tried before giving up.
const PORT_TRIES: usize = 32;

/// Receives the local agent's progress events.
pub type EventHook = Arc<dyn Fn(Event) + Send + Sync>;

/// The embedded cluster's files, under the state folder.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new() -> Layout {
        Layout {
            root: labspan_agent::paths::state_dir().join("embedded"),
        }
    }
    fn coordinator(&self) -> PathBuf {
        self.root.join("coordinator")
    }
    fn agent_file(&self) -> PathBuf {
        self.root.join("agent").join("agent.cluster")
    }
    fn host_file(&self) -> PathBuf {
        self.root.join("agent").join("host")
    }
    fn admin_file(&self) -> PathBuf {
        DataDir::at(&self.coordinator()).admin_file()
    }
}

/// The embedded cluster's files, initialized and locked for this command;
/// nothing runs yet.
pub struct Prepared {
    layout: Layout,
    /// This machine's host name in the cluster.
    pub host: String,
    _lock: File,
}

/// Takes the embedded lock (waiting for another embedded command to end)
/// and creates the embedded cluster on first use.
pub async fn prepare() -> anyhow::Result<Prepared> {
    let layout = Layout::new();
    std::fs::create_dir_all(&layout.root)
        .with_context(|| format!("creating {}", layout.root.display()))?;
    let path = layout.root.join("lock");
    let lock = tokio::task::spawn_blocking(move || lock_exclusive(&path)).await??;
    if !layout.coordinator().join("node.json").exists() {
        init_coordinator(&layout)?;
    }
    if !layout.agent_file().exists() || !layout.host_file().exists() {
        init_agent(&layout)?;
    }
    let host = std::fs::read_to_string(layout.host_file())
        .with_context(|| format!("reading {}", layout.host_file().display()))?
        .trim()
        .to_string();
    Ok(Prepared {
        layout,
        host,
        _lock: lock,
    })
}

/// Opens (creating) `path` and holds an exclusive flock on it; the lock
/// goes with the process, however it ends.
fn lock_exclusive(path: &Path) -> anyhow::Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the embedded lock {}", path.display()))?;
    let flock = |how| {
        // SAFETY: flock on a descriptor this function owns.
        unsafe { libc::flock(file.as_raw_fd(), how) }
    };
    if flock(libc::LOCK_EX | libc::LOCK_NB) != 0 {
        eprintln!(
            "waiting for another labspan command on this machine (lock {})",
            path.display()
        );
        if flock(libc::LOCK_EX) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

/// First use: the CA, the coordinator's credential and the admin
/// credential, as `labspan cluster init` makes them, on a loopback port.
fn init_coordinator(layout: &Layout) -> anyhow::Result<()> {
    refuse_legacy_labs()?;
    let listen = free_loopback_port()?;
    DataDir::at(&layout.coordinator())
        .init(CLUSTER_NAME, COORDINATOR_NAME, listen)
        .context("creating the embedded cluster")?;
    Ok(())
}

/// Labs recorded by a labspan before the embedded cluster (STATE/labs/*.json):
/// the cluster does not know them, and its agent would stop their VMs.
fn refuse_legacy_labs() -> anyhow::Result<()> {
    let dir = labspan_agent::paths::state_dir().join("labs");
    let labs: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(String::from)
        })
        .collect();
    if labs.is_empty() {
        return Ok(());
    }
    Err(InvalidInput(format!(
        "error: {} records labs deployed by an older labspan ({}); this version would stop their VMs. \
         Take them down with the older labspan, or remove {} to let this one stop them",
        dir.display(),
        labs.join(", "),
        dir.display()
    ))
    .into())
}

/// The local agent's credential, issued directly by the embedded CA (what a
/// join token would have granted), and the host name it is issued for.
fn init_agent(layout: &Layout) -> anyhow::Result<()> {
    let (config, ca, _) = DataDir::at(&layout.coordinator()).load()?;
    let host = host_name();
    let cred = ca
        .issue(&host, Role::Agent)
        .with_context(|| format!("issuing the local agent's certificate for host {host:?}"))?;
    let file = ClusterFile {
        coordinators: vec![config.listen.to_string()],
        ca_pem: ca.cert_pem(),
        cert_pem: cred.cert_pem(),
        key_pem: cred.key_pem(),
    };
    let dir = layout.root.join("agent");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    file.save(&layout.agent_file())?;
    labspan_proto::atomic::write(&layout.host_file(), host.as_bytes())
        .with_context(|| format!("writing {}", layout.host_file().display()))?;
    Ok(())
}

/// A loopback port free for the API whose port + 1 (joins) is free too.
/// It is kept in the data folder so the Raft membership address stays true.
fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    for _ in 0..PORT_TRIES {
        let api = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a loopback port")?;
        let addr = api.local_addr().context("reading a loopback port")?;
        let Some(next) = addr.port().checked_add(1) else {
            continue;
        };
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, next)).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no free pair of loopback UDP ports for the embedded coordinator")
}

/// This machine's name (lower case, as `cluster join` names members).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_ascii_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Prepared {
    /// Refuses a lab with a node bigger than this machine (exit 2). The
    /// leader places it again, next to the other labs; this only answers
    /// before images are built. Returns the lab's placement on this host.
    pub fn fits(&self, bundle: &LabBundle) -> anyhow::Result<BTreeMap<String, String>> {
        let lab = &bundle.lab;
        let placement = place_lab(lab, &[self.capacity()?], &BTreeMap::new())
            .map_err(|e| InvalidInput(format!("lab \"{}\": {}", lab.name, e.on_cluster())))?;
        Ok(placement.nodes)
    }

    /// Refuses, changing nothing, a lab this host cannot run: a missing
    /// image, a foreign interface where the lab needs one of its own. The
    /// cluster would only record such a lab as failed; here the one host is
    /// at hand, so its agent checks the lab's plan first (exit 2).
    pub async fn check(
        &self,
        bundle: &LabBundle,
        placement: &BTreeMap<String, String>,
        agent: &Agent,
    ) -> anyhow::Result<()> {
        let hosts = BTreeMap::from([(self.host.clone(), local_fabric())]);
        let plans = plan_lab(&PlanInput {
            lab: &bundle.lab,
            files: &bundle.files,
            placement,
            hosts: &hosts,
            vnis: &BTreeMap::new(),
            arriving: None,
        })
        .map_err(|e| InvalidInput(e.to_string()))?;
        let plan = HostPlan {
            host: self.host.clone(),
            labs: plans.into_values().collect(),
            kept_checkpoints: Vec::new(),
            ..HostPlan::default()
        };
        agent.check(&plan).await.map_err(classify)
    }

    /// This machine, empty, as placement sees a host.
    fn capacity(&self) -> anyhow::Result<HostSpec> {
        let info = this_host()?;
        let mut host = HostSpec::new(&self.host, info.memory_mib, info.cpus);
        host.cpu_overcommit = info.cpu_overcommit;
        Ok(host)
    }

    /// Starts the coordinator and the agent, and returns once the agent has
    /// registered and brought this host to its recorded plan.
    pub async fn start(
        self,
        accel: AccelChoice,
        events: Option<EventHook>,
    ) -> anyhow::Result<Embedded> {
        let started = std::time::Instant::now();
        let coordinator = start_coordinator(&self.layout).await?;
        tracing::info!(after = ?started.elapsed(), "embedded coordinator leads");
        let (applied, mut seen) = tokio::sync::watch::channel(0u64);
        let hooks = Hooks {
            applied: Some(Arc::new(applied)),
            events,
            ..Hooks::default()
        };
        let agent = Arc::new(Agent::new(labspan_agent::paths::state_dir(), accel));
        let host = match this_host() {
            Ok(h) => h,
            Err(e) => {
                coordinator.shutdown().await;
                return Err(e);
            }
        };
        let file = ClusterFile::load(&self.layout.agent_file());
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                coordinator.shutdown().await;
                return Err(e.into());
            }
        };
        let task = tokio::spawn(daemon::run_with(file, host, agent, hooks.clone()));
        let embedded = Embedded {
            coordinator,
            agent: task,
            hooks,
            admin: self.layout.admin_file(),
            _prepared: self,
        };
        let converged = tokio::time::timeout(CONVERGE_WAIT, seen.wait_for(|n| *n > 0)).await;
        if !matches!(converged, Ok(Ok(_))) {
            embedded.stop().await;
            bail!(
                "the embedded cluster's agent did not bring this host to its plan within {} s (run with LABSPAN_LOG=info to see why)",
                CONVERGE_WAIT.as_secs()
            );
        }
        tracing::info!(after = ?started.elapsed(), "embedded cluster ready: the host is at its plan");
        Ok(embedded)
    }
}

/// The coordinator on its loopback port, once it leads. A port another
/// program took since `init` is replaced by a free one.
async fn start_coordinator(layout: &Layout) -> anyhow::Result<Running> {
    let dir = layout.coordinator();
    let running = match service::start(&dir).await {
        Err(StartError::Transport(TransportError::Bind { addr, .. })) => {
            move_port(layout, addr)?;
            service::start(&dir).await?
        }
        other => other?,
    };
    let mut metrics = running.raft.metrics();
    let leads = tokio::time::timeout(
        LEADER_WAIT,
        metrics.wait_for(|m| m.current_leader == Some(m.id)),
    )
    .await;
    if !matches!(leads, Ok(Ok(_))) {
        running.shutdown().await;
        bail!(
            "the embedded coordinator did not become leader within {} s",
            LEADER_WAIT.as_secs()
        );
    }
    Ok(running)
}

/// Rewrites the coordinator's address (node.json and both credentials) to a
/// free loopback port. Raft keeps the old address as the member's; a single
/// coordinator never dials itself, so only `cluster status` shows it.
fn move_port(layout: &Layout, taken: SocketAddr) -> anyhow::Result<()> {
    let listen = free_loopback_port()?;
    eprintln!("the embedded coordinator's port {taken} is taken; moving it to {listen}");
    let node = layout.coordinator().join("node.json");
    let text =
        std::fs::read_to_string(&node).with_context(|| format!("reading {}", node.display()))?;
    let mut config: service::NodeConfig =
        serde_json::from_str(&text).with_context(|| format!("reading {}", node.display()))?;
    config.listen = listen;
    let text = serde_json::to_vec_pretty(&config)?;
    labspan_transport::client::write_private(&node, &text)
        .with_context(|| format!("writing {}", node.display()))?;
    for path in [layout.admin_file(), layout.agent_file()] {
        let mut file = ClusterFile::load(&path)?;
        file.coordinators = vec![listen.to_string()];
        file.save(&path)?;
    }
    Ok(())
}

/// This machine as the agent announces it.
/// This machine as its embedded agent offers it; `LABSPAN_CPU_OVERCOMMIT`
/// sets the overcommit, as it does for `labspan agent run`.
fn this_host() -> anyhow::Result<HostInfo> {
    let mut host = HostInfo::of_this_machine(IpAddr::V4(Ipv4Addr::LOCALHOST), LOCAL_UNDERLAY_MTU)
        .context("reading this machine's memory and CPUs")?;
    if let Ok(text) = std::env::var("LABSPAN_CPU_OVERCOMMIT") {
        host.cpu_overcommit = crate::cmd::agent::cpu_overcommit(&text)
            .map_err(|e| InvalidInput(format!("LABSPAN_CPU_OVERCOMMIT: {e}")))?;
    }
    Ok(host)
}

fn local_fabric() -> HostFabric {
    HostFabric {
        vtep: IpAddr::V4(Ipv4Addr::LOCALHOST),
        underlay_mtu: LOCAL_UNDERLAY_MTU,
    }
}

/// The single-node cluster, running in this process.
pub struct Embedded {
    coordinator: Running,
    agent: tokio::task::JoinHandle<()>,
    hooks: Hooks,
    admin: PathBuf,
    _prepared: Prepared,
}

impl Embedded {
    /// The admin credential, for [`crate::remote`].
    pub fn cluster_file(&self) -> &Path {
        &self.admin
    }

    /// Stops the agent (after the host plan it may be applying) and the
    /// coordinator; the VMs keep running. The lock is released last.
    pub async fn stop(self) {
        let started = std::time::Instant::now();
        let _no_apply = self.hooks.apply_lock.lock().await;
        self.agent.abort();
        let _ = self.agent.await;
        self.coordinator.shutdown().await;
        tracing::info!(after = ?started.elapsed(), "embedded cluster stopped");
    }
}

/// Runs `command` against the embedded cluster (started for it, stopped
/// after it, whatever its outcome).
pub async fn with_cluster<T, F>(
    accel: AccelChoice,
    command: impl FnOnce(PathBuf) -> F,
) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    let cluster = prepare().await?.start(accel, None).await?;
    let result = command(cluster.cluster_file().to_path_buf()).await;
    cluster.stop().await;
    result
}

/// The accelerator the agent of a command without `--accel` uses.
pub fn accel_from_env() -> AccelChoice {
    std::env::var("LABSPAN_ACCEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// Turns the agent's input errors (missing image, foreign interface in the
/// way) into `InvalidInput`, so they exit 2.
pub fn classify(e: AgentError) -> anyhow::Error {
    match e {
        AgentError::Image { .. }
        | AgentError::Net(labspan_agent::net::NetError::Foreign { .. }) => {
            InvalidInput(format!("error: {e}; nothing was changed")).into()
        }
        other => other.into(),
    }
}

/// Loads a lab file and everything it copies into guests; a file that
/// cannot be read or is not a valid lab → exit 2, as `validate` does.
pub fn load(path: &Path) -> anyhow::Result<LoadedLab> {
    labspan_proto::lab::load_bundle(path).map_err(|e| match e {
        labspan_proto::lab::LoadError::Invalid(d) => InvalidInput(d.to_string()).into(),
        read @ labspan_proto::lab::LoadError::Read { .. } => {
            InvalidInput(format!("error: {read}")).into()
        }
    })
}
