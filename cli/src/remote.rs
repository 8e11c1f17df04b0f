//! The CLI against a cluster: when a cluster file is given (`--cluster FILE`
//! or `LABSPAN_CLUSTER`), `up`, `down`, `inspect` and `exec` send their
//! requests to a coordinator over QUIC with the file's certificate instead
//! of running the embedded default. Output has the same shape.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::verify::{CheckResult, GuestExec};
use anyhow::{bail, Context};
use labspan_agent::vm::ExecOutput;
use labspan_proto::codec;
use labspan_proto::health::GuestHealth;
use labspan_proto::lab::{LabBundle, LoadedLab};
use labspan_proto::msg::{
    ErrorKind, ErrorReply, ExecResult, LabReport, LabSource, LabStatus, NodeState, Reply, Request,
};
use labspan_proto::progress::{Phase, ProgressEvent};
use labspan_transport::client::{Client, ClientError, ClusterFile};
use labspan_transport::poll::Poll;

use crate::follow::Following;
use crate::progress::{Mode, Renderer};
use crate::InvalidInput;

/// How long one check command may run in the guest.
const CHECK_EXEC_TIMEOUT_SECS: u64 = 30;
/// How long `up` waits for the cluster to finish a deploy whose coordinator
/// was lost (a new leader resumes it once the agents found it): longer than
/// an agent waits for its guests to boot (`BOOT_TIMEOUT`, 300 s), so a
/// deploy that was only slow is not reported as lost.
const RESUME_WAIT: Duration = Duration::from_secs(360);
/// How often `up` then asks how the lab is.
const RESUME_POLL: Duration = Duration::from_secs(1);

/// Connects with the credential in the cluster file at `path`.
pub async fn connect(path: &Path) -> anyhow::Result<Client> {
    let file = load_cluster_file(path)?;
    Client::connect(&file)
        .await
        .with_context(|| format!("cluster file {}", path.display()))
}

/// Reads the cluster file; an unreadable one is the user's to fix (exit 2),
/// named with the flag or variable it came from, its cause said once.
pub fn load_cluster_file(path: &Path) -> anyhow::Result<ClusterFile> {
    let from = crate::origin::cluster();
    match ClusterFile::load(path) {
        Ok(file) => Ok(file),
        Err(ClientError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
            Err(InvalidInput(format!(
                "error: cluster file {} (from {from}) does not exist\n  \
                 hint: `labspan cluster init` or `deploy/cluster.sh up` makes one; \
                 without {from}, commands run on this machine",
                path.display()
            ))
            .into())
        }
        Err(ClientError::Io { cause, .. }) => Err(InvalidInput(format!(
            "error: cluster file {} (from {from}): {cause}",
            path.display()
        ))
        .into()),
        Err(e) => Err(InvalidInput(format!("error: {e} (from {from})")).into()),
    }
}

/// Sends `req` and turns a refusal into an error (invalid input → exit 2).
pub async fn call(client: &Client, req: &Request) -> anyhow::Result<Reply> {
    match client.request(req).await? {
        Reply::Error(e) => Err(refusal(e)),
        reply => Ok(reply),
    }
}

/// Opens a byte-stream request (console, capture): the stream, past the
/// coordinator's `Streaming` reply, and the client that must outlive it.
pub async fn open_stream(
    path: &Path,
    req: &Request,
) -> anyhow::Result<(Client, quinn::SendStream, quinn::RecvStream)> {
    let client = connect(path).await?;
    let (mut send, mut recv) = client.connection().open_bi().await?;
    labspan_transport::write_message(&mut send, req).await?;
    match labspan_transport::read_message::<Reply>(&mut recv).await? {
        Reply::Streaming => Ok((client, send, recv)),
        Reply::Error(e) => Err(refusal(e)),
        other => bail!("unexpected reply to a stream request: {other:?}"),
    }
}

fn refusal(e: ErrorReply) -> anyhow::Error {
    match e.kind {
        ErrorKind::Invalid | ErrorKind::NotFound | ErrorKind::Conflict => {
            InvalidInput(format!("error: {}", e.message)).into()
        }
        ErrorKind::Forbidden => anyhow::anyhow!("refused: {}", e.message),
        // Only `exec` runs for a time the caller chose.
        ErrorKind::TimedOut => anyhow::anyhow!(
            "{}; give it longer with `labspan exec --timeout SECS`",
            e.message
        ),
        _ => anyhow::anyhow!("{}", e.message),
    }
}

/// Where a deploy comes from, and whether it may replace a lab of the
/// same name that another member or file deployed.
pub struct Deploy {
    source: LabSource,
    replace: bool,
}

impl Deploy {
    /// A deploy of the lab file at `file` from this machine.
    pub fn new(file: &Path, replace: bool) -> anyhow::Result<Deploy> {
        let file =
            std::path::absolute(file).with_context(|| format!("lab file {}", file.display()))?;
        let source = LabSource {
            file: file.display().to_string(),
            host: crate::embedded::host_name(),
        };
        Ok(Deploy { source, replace })
    }
}

/// `labspan up` (embedded default and cluster alike): deploy while
/// following the lab's progress on `show`, print the placement and VMs,
/// run `verify`.
pub async fn up(
    path: &Path,
    loaded: &LoadedLab,
    how: &Deploy,
    verify: bool,
    show: &Arc<Renderer>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let bundle = &loaded.bundle;
    let client = connect(path).await?;
    let name = bundle.lab.name.clone();
    upload_files(&client, loaded).await?;
    let bytes = codec::encode(bundle).context("encoding the lab bundle")?;
    show.expect(&name, bundle.lab.nodes.keys());
    let following = crate::follow::start_or_note(path, &name, show).await;
    let before = following.as_ref().map_or(0, Following::ends_seen);
    let deploy = deploy(path, client, &name, bytes, how).await;
    if let (Some(following), Ok(_)) = (following, &deploy) {
        following.stop_after_end(before).await;
    }
    show.finish();
    let (client, report) = deploy?;
    if show.mode() != Mode::Json {
        print_report(&report);
    }
    let mut ok = report.status == LabStatus::Running;
    if verify && ok && !bundle.lab.verify.is_empty() {
        let guests = ClusterGuests {
            client: &client,
            lab: &name,
        };
        ok = verify_and_report(&client, &guests, &bundle.lab, show).await;
    }
    client.close().await;
    Ok(crate::cmd::up::summary(&report, ok, started, show.mode()))
}

/// How long `up` waits for the cluster to take one check's result.
const REPORT_WAIT: Duration = Duration::from_secs(5);

/// Runs the lab's checks on the cluster and reports each result to it as
/// it ends (a `checked` step of its node), so that whoever follows the lab
/// (`labspan events`, the web view) sees the checks run. A cluster that
/// cannot take them (an older one) changes nothing: the checks count as
/// they ran.
async fn verify_and_report(
    client: &Client,
    guests: &ClusterGuests<'_>,
    lab: &labspan_proto::lab::Lab,
    show: &Renderer,
) -> bool {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<CheckResult>();
    let sender = async {
        while let Some(r) = rx.recv().await {
            let step = ProgressEvent {
                lab: lab.name.clone(),
                node: Some(r.node.clone()),
                host: None,
                phase: Phase::Checked {
                    check: r.name,
                    passed: r.passed,
                    detail: r.detail,
                },
                at_unix_ms: labspan_proto::progress::now_unix_ms(),
            };
            let req = Request::Progress { events: vec![step] };
            match tokio::time::timeout(REPORT_WAIT, client.request(&req)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "a check's result was not taken"),
                Err(_) => tracing::debug!("a check's result was not taken in time"),
            }
        }
    };
    let checks = async move {
        let report = move |r: &CheckResult| {
            let _ = tx.send(r.clone());
        };
        crate::guests::verify(guests, lab, show, &report).await
    };
    tokio::join!(checks, sender).0
}

/// Uploads the lab's guest files to the cluster's file store; the deploy
/// names them by hash. A file the cluster holds already is sent again (it
/// costs one message; a cheaper "which do you lack" round trip is not worth
/// the protocol yet).
async fn upload_files(client: &Client, loaded: &LoadedLab) -> anyhow::Result<()> {
    let name = &loaded.bundle.lab.name;
    for (sha256, contents) in &loaded.contents {
        let req = Request::PutFile {
            contents: contents.clone(),
        };
        match client.request(&req).await? {
            Reply::FileStored { sha256: stored } if &stored == sha256 => {}
            Reply::FileStored { sha256: stored } => {
                bail!(
                    "lab {name:?}: the cluster stored a guest file as {stored}, expected {sha256}"
                )
            }
            Reply::Error(e) => return Err(refusal(e)),
            other => bail!("unexpected reply to PutFile: {other:?}"),
        }
    }
    Ok(())
}

/// Sends the deploy. If its coordinator is lost meanwhile (connection broken,
/// leader gone), reconnects to any coordinator of the cluster file and waits
/// until the cluster settles the lab (a new leader finishes the deploy); the
/// deploy is sent again only if the cluster does not hold this bundle.
///
/// A deploy is one log entry (spec, placement and `Deploying` together), so
/// finding this bundle stored means the deploy is in the log: it is done
/// once the lab's status is no longer `Deploying`.
async fn deploy(
    path: &Path,
    client: Client,
    name: &str,
    bytes: Vec<u8>,
    how: &Deploy,
) -> anyhow::Result<(Client, LabReport)> {
    let mut wait = Poll::new(RESUME_POLL, RESUME_WAIT).start();
    let req = Request::DeployLab {
        bundle: bytes.clone(),
        source: how.source.clone(),
        replace: how.replace,
    };
    let get = Request::GetLab { name: name.into() };
    let mut client = Some(client);
    let mut send = true;
    loop {
        if let Some(c) = client.take() {
            let asked = if send { &req } else { &get };
            match (send, c.request(asked).await) {
                (true, Ok(Reply::Deployed(r))) => return Ok((c, r)),
                (false, Ok(Reply::Lab { bundle, report })) if bundle == bytes => {
                    if report.status != LabStatus::Deploying {
                        return Ok((c, report));
                    }
                    client = Some(c); // A leader is settling it.
                }
                // The deploy never reached the log (or an older version did): send it again.
                (false, Ok(Reply::Lab { .. })) => {
                    (client, send) = (Some(c), true);
                    continue;
                }
                (false, Ok(Reply::Error(e))) if e.kind == ErrorKind::NotFound => {
                    (client, send) = (Some(c), true);
                    continue;
                }
                (_, Ok(Reply::Error(e))) if !coordinator_lost(e.kind) => return Err(refusal(e)),
                (_, Ok(Reply::Error(e))) => {
                    eprintln!(
                        "the deploy lost its leader ({}); waiting for the cluster to finish it",
                        e.message
                    );
                    (client, send) = (Some(c), false);
                }
                (_, Ok(other)) => bail!("unexpected reply: {other:?}"),
                (_, Err(e)) => {
                    if let Some(why) = e.tls_refusal() {
                        bail!("the cluster refused this member's certificate: {why}");
                    }
                    eprintln!("lost the coordinator during the deploy ({e}); waiting for the cluster to finish it");
                    // Dropped: the next round dials the cluster afresh.
                    send = false;
                }
            }
        }
        if !wait.pause().await {
            bail!("lab {name:?}: the cluster did not finish the deploy within {} s; see `labspan inspect {name}`", RESUME_WAIT.as_secs());
        }
        if client
            .as_ref()
            .is_none_or(|c| c.connection().close_reason().is_some())
        {
            match connect(path).await {
                Ok(c) => client = Some(c),
                Err(e) if is_refusal(&e) => return Err(e),
                Err(e) => {
                    eprintln!("no coordinator answered yet ({e:#}); retrying");
                    client = None;
                }
            }
        }
    }
}

/// Whether `e` is a refusal of this member's credential (retrying cannot help).
fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<labspan_transport::client::ClientError>()
            .is_some_and(|e| matches!(e, labspan_transport::client::ClientError::Refused { .. }))
    })
}

/// True for a refusal that means the coordinator or its leader went away
/// mid-request (worth retrying elsewhere), not that the request was wrong.
fn coordinator_lost(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::NotLeader | ErrorKind::Unavailable)
}

fn print_report(report: &LabReport) {
    println!(
        "{:<12} {:<16} {:<8} {:>8}  CONSOLE",
        "NODE", "HOST", "STATE", "PID"
    );
    for (node, host) in &report.placement {
        let vm = report.vms.iter().find(|v| &v.vm == node);
        let state = match (vm, report.nodes.get(node)) {
            (Some(v), _) if v.error.is_some() => "FAILED".to_string(),
            (_, Some(NodeState::Running)) | (Some(_), None) => "ready".to_string(),
            (_, Some(other)) => other.to_string(),
            (None, None) => "-".to_string(),
        };
        let pid = vm.map_or("-".to_string(), |v| v.pid.to_string());
        println!(
            "{node:<12} {host:<16} {state:<8} {pid:>8}  labspan console {} {node}",
            report.lab
        );
        if let Some(e) = vm.and_then(|v| v.error.as_ref()) {
            println!("  {e}");
        }
    }
    if report.status != LabStatus::Running {
        println!("{}", report.status);
    }
}

/// Guests reached through the cluster: the coordinator forwards each
/// command to the agent of the VM's host.
struct ClusterGuests<'a> {
    client: &'a Client,
    lab: &'a str,
}

impl GuestExec for ClusterGuests<'_> {
    async fn exec(&self, node: &str, cmd: &str) -> Result<ExecOutput, String> {
        let req = Request::Exec {
            lab: self.lab.into(),
            node: node.into(),
            cmd: cmd.into(),
            timeout_secs: CHECK_EXEC_TIMEOUT_SECS,
        };
        match self.client.request(&req).await.map_err(|e| e.to_string())? {
            Reply::Exec(r) => Ok(output(r)),
            Reply::Error(e) => Err(e.message),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }
}

fn output(r: ExecResult) -> ExecOutput {
    ExecOutput {
        exit_code: r.exit_code,
        signal: None,
        stdout: r.stdout,
        stderr: r.stderr,
    }
}

/// `labspan down` (embedded default and cluster alike), following the
/// lab's progress on `show`. An unknown lab is an error (exit 2, with the
/// closest deployed name) unless `ignore_missing`, for scripts.
pub async fn down(
    path: &Path,
    lab: &str,
    ignore_missing: bool,
    show: &Arc<Renderer>,
) -> anyhow::Result<ExitCode> {
    let client = connect(path).await?;
    let following = crate::follow::start_or_note(path, lab, show).await;
    let before = following.as_ref().map_or(0, Following::ends_seen);
    let reply = client
        .request(&Request::DeleteLab { name: lab.into() })
        .await;
    let (said, status) = match reply? {
        Reply::Done => {
            if let Some(following) = following {
                following.stop_after_end(before).await;
            }
            (format!("lab \"{lab}\" is down: its VMs stopped on every host, its interfaces and VM folders removed"), "down")
        }
        Reply::Error(e) if e.kind == ErrorKind::NotFound && ignore_missing => (
            format!("lab \"{lab}\" is not deployed; nothing to do"),
            "not deployed",
        ),
        Reply::Error(e) => return Err(refusal(e)),
        other => bail!("unexpected reply to DeleteLab: {other:?}"),
    };
    show.finish();
    match show.mode() {
        Mode::Json => println!(
            "{}",
            serde_json::json!({"lab": lab, "phase": "done", "status": status})
        ),
        _ => println!("{said}"),
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `labspan exec` on a cluster; exits with the guest command's status.
pub async fn exec(
    path: &Path,
    lab: &str,
    node: &str,
    cmd: &str,
    timeout_secs: u64,
) -> anyhow::Result<ExitCode> {
    let client = connect(path).await?;
    let req = Request::Exec {
        lab: lab.into(),
        node: node.into(),
        cmd: cmd.into(),
        timeout_secs,
    };
    let out = match call(&client, &req).await? {
        Reply::Exec(r) => r,
        other => bail!("unexpected reply to Exec: {other:?}"),
    };
    client.close().await;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    Ok(ExitCode::from(u8::try_from(out.exit_code).unwrap_or(255)))
}

/// Restarts one node's guest, keeping its disk.
pub async fn restart(path: &Path, lab: &str, node: &str) -> anyhow::Result<ExitCode> {
    let client = connect(path).await?;
    let req = Request::RestartNode {
        lab: lab.into(),
        node: node.into(),
    };
    match call(&client, &req).await? {
        Reply::Done => {}
        other => bail!("unexpected reply to RestartNode: {other:?}"),
    }
    client.close().await;
    println!("{lab}/{node}: restarted, disk kept (see `labspan inspect {lab}`)");
    Ok(ExitCode::SUCCESS)
}

/// The bundle and record of running lab `name` (unknown: exit 2, with the
/// closest deployed name).
pub async fn lab(path: &Path, name: &str) -> anyhow::Result<(LabBundle, LabReport)> {
    let client = connect(path).await?;
    let reply = call(&client, &Request::GetLab { name: name.into() }).await?;
    client.close().await;
    match reply {
        Reply::Lab { bundle, report } => Ok((codec::decode::<LabBundle>(&bundle)?, report)),
        other => bail!("unexpected reply to GetLab: {other:?}"),
    }
}

/// One node as `inspect` shows it on a cluster.
#[derive(serde::Serialize)]
struct NodeRow {
    lab: String,
    node: String,
    host: String,
    /// The node's own state (`running`, `lost`, `moving`, ...), or, for a
    /// running node whose agent said more, the guest's (`ready`, `panicked`).
    state: String,
    addresses: Vec<String>,
    console: String,
    /// The node's QEMU process, while one runs (as its agent last said).
    pid: Option<u32>,
    /// Seconds since that QEMU started.
    uptime_secs: Option<u64>,
    /// The sha256 of the image it runs.
    image_hash: Option<String>,
    /// Liveness, restarts, recent events and the console's last lines at
    /// the last failure.
    guest: Option<GuestHealth>,
    /// The checkpoint it restarted from after its host was lost
    /// (`resilience.checkpoint_every`); none when it booted.
    restored_from: Option<String>,
}

impl NodeRow {
    /// `N` restarts, or nothing.
    fn restarts(&self) -> String {
        self.guest
            .as_ref()
            .map_or(String::new(), |g| g.restarts.to_string())
    }

    /// The last failure or restart: its reason and how long ago, on one line.
    fn last(&self, now: u64) -> String {
        let Some(g) = &self.guest else {
            return String::new();
        };
        match (&g.last_reason, g.last_at) {
            (Some(why), Some(at)) => {
                format!("{} ({} ago)", one_line(why), ago(now.saturating_sub(at)))
            }
            (Some(why), None) => one_line(why),
            _ => String::new(),
        }
    }
}

/// Text on one line, for tables that scripts may read.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// One lab as `inspect --json` shows it.
#[derive(serde::Serialize)]
struct LabView {
    lab: String,
    /// `Running`, `Degraded: why`, ...: the lab's reason, once.
    status: String,
    /// Who deployed it, from which file and host, and when.
    origin: Option<labspan_proto::msg::LabOrigin>,
    nodes: Vec<NodeRow>,
}

/// `labspan inspect` on a cluster.
pub async fn inspect(path: &Path, only: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let client = connect(path).await?;
    let deployed: Vec<String> = match call(&client, &Request::Status).await? {
        Reply::Status(s) => s.labs.into_iter().map(|(name, _)| name).collect(),
        other => bail!("unexpected reply to Status: {other:?}"),
    };
    let labs: Vec<String> = (deployed.iter())
        .filter(|n| only.is_none_or(|o| o == *n))
        .cloned()
        .collect();
    if let (Some(lab), true) = (only, labs.is_empty()) {
        let hint =
            labspan_proto::suggest::hint(lab, deployed.iter().map(String::as_str), "deployed labs");
        return Err(InvalidInput(format!("error: lab \"{lab}\" is not deployed{hint}")).into());
    }
    let mut views = Vec::new();
    for name in labs {
        let (bundle, report) = match call(&client, &Request::GetLab { name: name.clone() }).await? {
            Reply::Lab { bundle, report } => (codec::decode::<LabBundle>(&bundle)?, report),
            other => bail!("unexpected reply to GetLab: {other:?}"),
        };
        views.push(LabView {
            lab: name,
            status: report.status.to_string(),
            origin: report.origin.clone(),
            nodes: node_rows(&bundle, &report),
        });
    }
    client.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else if views.is_empty() {
        println!("no lab is deployed");
    } else {
        print_views(&views);
    }
    Ok(ExitCode::SUCCESS)
}

/// Each lab's status (with its reason) and origin, once, above its rows.
fn print_views(views: &[LabView]) {
    let rows: Vec<&NodeRow> = views.iter().flat_map(|v| &v.nodes).collect();
    // Columns as wide as their longest value (lab names run long).
    let width = |f: fn(&NodeRow) -> usize, title: &str| {
        rows.iter()
            .map(|r| f(r))
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let wl = width(|r| r.lab.len(), "LAB");
    let wn = width(|r| r.node.len(), "NODE");
    let wh = width(|r| r.host.len(), "HOST");
    let ws = width(|r| r.state.len(), "STATE");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (i, v) in views.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("lab \"{}\" is {}", v.lab, one_line(&v.status));
        match &v.origin {
            Some(o) => println!("lab \"{}\" deployed by {o}", v.lab),
            None => println!("lab \"{}\": origin not recorded", v.lab),
        }
        println!(
            "{:<wl$} {:<wn$} {:<wh$} {:<ws$} {:>8}  {:<32}  LAST",
            "LAB", "NODE", "HOST", "STATE", "RESTARTS", "ADDRESSES"
        );
        for r in &v.nodes {
            println!(
                "{:<wl$} {:<wn$} {:<wh$} {:<ws$} {:>8}  {:<32}  {}",
                r.lab,
                r.node,
                r.host,
                r.state,
                r.restarts(),
                r.addresses.join(" "),
                r.last(now),
            );
        }
        for r in v.nodes.iter().filter(|r| r.restored_from.is_some()) {
            println!(
                "node \"{}\" restarted on {} from checkpoint \"{}\" after its host was lost",
                r.node,
                r.host,
                r.restored_from.as_deref().unwrap_or_default()
            );
        }
    }
}

/// A node's own state (`running`, `lost`, `moving`, ...), or, for a running
/// node whose agent said more, the guest's (`booting`, `ready`, `panicked`).
pub fn node_state(report: &LabReport, node: &str) -> String {
    let guest = report.guests.iter().find(|g| g.node == node);
    match (report.nodes.get(node), guest) {
        (Some(NodeState::Running) | None, Some(g)) => g.state.as_str().to_string(),
        (Some(own), _) => own.to_string(),
        (None, None) => NodeState::Starting.to_string(),
    }
}

fn node_rows(bundle: &LabBundle, report: &LabReport) -> Vec<NodeRow> {
    let hosts: &BTreeMap<String, String> = &report.placement;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    bundle
        .lab
        .nodes
        .iter()
        .map(|(node, spec)| {
            let guest = report.guests.iter().find(|g| &g.node == node).cloned();
            let qemu = guest.as_ref().and_then(|g| g.qemu.as_ref());
            NodeRow {
                lab: report.lab.clone(),
                node: node.clone(),
                host: hosts.get(node).cloned().unwrap_or_default(),
                pid: qemu.map(|q| q.pid),
                uptime_secs: qemu.map(|q| now.saturating_sub(q.started_at)),
                image_hash: qemu.map(|q| q.image_hash.clone()),
                state: node_state(report, node),
                restored_from: report.restored_from.get(node).cloned(),
                guest,
                addresses: spec
                    .nics
                    .iter()
                    .flat_map(|(nic, n)| n.ip.iter().map(move |ip| format!("{nic}:{ip}")))
                    .collect(),
                console: format!("labspan console {} {node}", report.lab),
            }
        })
        .collect()
}
