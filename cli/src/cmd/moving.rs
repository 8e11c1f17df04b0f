//! `labspan move LAB NODE [--to HOST]` and `labspan host drain|uncordon
//! HOST`: running guests moved to another host without a restart (live
//! migration, disk included), each recorded in the cluster's log so that
//! a new leader finishes or rolls it back. A drain moves the nodes of a
//! few labs at once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use labspan_proto::msg::{MoveReport, Reply, Request};

use crate::follow::Following;
use crate::progress::{Mode, Renderer};
use crate::remote::{call, connect};
use crate::InvalidInput;

/// Arguments of `labspan move`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab name.
    pub lab: String,
    /// Node name.
    pub node: String,
    /// Host to move it to (default: the host placement chooses).
    #[arg(long)]
    pub to: Option<String>,
    /// Print the move's figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// The cluster (moves need one: the embedded default has one host).
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<PathBuf>,
}

/// `labspan host ...`.
#[derive(clap::Subcommand)]
pub enum HostCommand {
    /// Cordon a host (no new placements) and move every VM on it elsewhere.
    Drain(HostArgs),
    /// End a host's cordon: placement may use it again.
    Uncordon(HostArgs),
}

/// Arguments of `labspan host drain|uncordon`.
#[derive(clap::Args)]
pub struct HostArgs {
    /// Host name (as `labspan cluster status` shows it).
    pub host: String,
    /// Print each move's figures as JSON (drain).
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<PathBuf>,
}

fn cluster(file: Option<&Path>, what: &str) -> anyhow::Result<PathBuf> {
    match file {
        Some(f) => Ok(f.to_path_buf()),
        None => Err(InvalidInput(format!(
            "error: {what} needs a cluster (--cluster FILE or LABSPAN_CLUSTER): the embedded default has one host"
        ))
        .into()),
    }
}

/// Runs `labspan move`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = cluster(args.cluster.as_deref(), "labspan move")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // `--json` prints the figures alone, as one object, on stdout.
        let show = (!args.json).then(|| Renderer::new(Mode::pick(false)));
        let report = move_one(
            &file,
            &args.lab,
            &args.node,
            args.to.as_deref(),
            show.as_ref(),
        )
        .await;
        if let Some(show) = &show {
            show.finish();
        }
        print_move(&report?, args.json)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `labspan host drain|uncordon`.
pub fn run_host(cmd: HostCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    match cmd {
        HostCommand::Drain(a) => {
            let file = cluster(a.cluster.as_deref(), "labspan host drain")?;
            rt.block_on(drain(&file, &a.host, a.json))
        }
        HostCommand::Uncordon(a) => {
            let file = cluster(a.cluster.as_deref(), "labspan host uncordon")?;
            rt.block_on(async {
                cordon(&file, &a.host, false).await?;
                println!("host {}: cordon ended, placement may use it again", a.host);
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

/// Moves `node` of `lab`; with `show`, the lab's steps (the disk copied,
/// each RAM pass, the switch-over, the node placed anew) are shown as they
/// happen, and the figures once it is done.
async fn move_one(
    file: &Path,
    lab: &str,
    node: &str,
    to: Option<&str>,
    show: Option<&Arc<Renderer>>,
) -> anyhow::Result<MoveReport> {
    let client = connect(file).await?;
    let whither = to.map_or("the host placement chooses".to_string(), |t| {
        format!("{t:?}")
    });
    eprintln!("{lab}/{node}: moving live to {whither} (disk, then RAM, then switch-over)...");
    let following = match show {
        Some(show) => crate::follow::start_or_note(file, lab, show).await,
        None => None,
    };
    let before = following.as_ref().map_or(0, Following::ends_seen);
    let req = Request::MoveNode {
        lab: lab.into(),
        node: node.into(),
        to: to.map(String::from),
    };
    let reply = call(&client, &req).await;
    client.close().await;
    if let (Some(following), Ok(_)) = (following, &reply) {
        // The move's end settles its lab: shown before the figures.
        following.stop_after_end(before).await;
    }
    match reply? {
        Reply::Moved(report) => Ok(report),
        other => bail!("unexpected reply to MoveNode: {other:?}"),
    }
}

fn print_move(r: &MoveReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&move_json(r))?);
        return Ok(());
    }
    let f = &r.figures;
    println!(
        "{}/{}: moved {} -> {} in {:.1} s: disk {} KiB in {} ms, RAM {} MiB in {} passes, downtime {} ms",
        r.lab,
        r.node,
        r.from,
        r.to,
        r.total_ms as f64 / 1000.0,
        f.disk_bytes / 1024,
        f.disk_ms,
        f.ram_bytes >> 20,
        f.ram_passes,
        f.downtime_ms
    );
    Ok(())
}

fn move_json(r: &MoveReport) -> serde_json::Value {
    let f = &r.figures;
    serde_json::json!({
        "lab": r.lab, "node": r.node, "from": r.from, "to": r.to,
        "total_ms": r.total_ms,
        "disk_bytes": f.disk_bytes, "disk_ms": f.disk_ms,
        "ram_bytes": f.ram_bytes, "ram_passes": f.ram_passes,
        "downtime_ms": f.downtime_ms, "migrate_ms": f.migrate_ms,
        "agent_total_ms": f.total_ms,
    })
}

async fn cordon(file: &Path, host: &str, cordoned: bool) -> anyhow::Result<()> {
    let client = connect(file).await?;
    let reply = call(
        &client,
        &Request::Cordon {
            host: host.into(),
            cordoned,
        },
    )
    .await;
    client.close().await;
    match reply? {
        Reply::Done => Ok(()),
        other => bail!("unexpected reply to Cordon: {other:?}"),
    }
}

/// The (lab, node) pairs placed on `host`.
async fn nodes_on(file: &Path, host: &str) -> anyhow::Result<Vec<(String, String)>> {
    let client = connect(file).await?;
    let status = match call(&client, &Request::Status).await? {
        Reply::Status(s) => s,
        other => bail!("unexpected reply to Status: {other:?}"),
    };
    let mut out = Vec::new();
    for (lab, _) in &status.labs {
        match call(&client, &Request::GetLab { name: lab.clone() }).await? {
            Reply::Lab { report, .. } => out.extend(
                report
                    .placement
                    .iter()
                    .filter(|(_, h)| h.as_str() == host)
                    .map(|(n, _)| (lab.clone(), n.clone())),
            ),
            other => bail!("unexpected reply to GetLab: {other:?}"),
        }
    }
    client.close().await;
    Ok(out)
}

/// How many labs a drain moves nodes of at once. One lab moves one node
/// at a time (its move is one record in the lab); moves of different labs
/// copy side by side, a few at a time so the hosts' links and CPUs are not
/// swamped by many copies at once.
const DRAIN_LABS_AT_ONCE: usize = 3;

/// Cordons `host`, then moves its nodes away: the nodes of one lab one
/// after the other, those of [`DRAIN_LABS_AT_ONCE`] labs at once.
async fn drain(file: &Path, host: &str, json: bool) -> anyhow::Result<ExitCode> {
    use futures::stream::{self, StreamExt};
    cordon(file, host, true).await?;
    eprintln!("host {host}: cordoned (no new placements)");
    let nodes = nodes_on(file, host).await?;
    let mut by_lab: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (lab, node) in &nodes {
        by_lab.entry(lab.clone()).or_default().push(node.clone());
    }
    let show = (!json).then(|| Renderer::new(Mode::pick(false)));
    let show = show.as_ref();
    let lab_moves = |(lab, lab_nodes): (String, Vec<String>)| async move {
        let mut out = Vec::new();
        for node in lab_nodes {
            let moved = move_one(file, &lab, &node, None, show).await;
            match &moved {
                Ok(r) if !json => print_move(r, false)?,
                Ok(_) => {}
                Err(e) => eprintln!("{lab}/{node}: not moved: {e:#}"),
            }
            out.push(moved);
        }
        anyhow::Ok(out)
    };
    let outcomes: Vec<_> = stream::iter(by_lab)
        .map(lab_moves)
        .buffer_unordered(DRAIN_LABS_AT_ONCE)
        .collect()
        .await;
    if let Some(show) = show {
        show.finish();
    }
    let mut failed = 0;
    let mut reports = Vec::new();
    for moved in outcomes
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
    {
        match moved {
            Ok(r) => reports.push(move_json(&r)),
            Err(_) => failed += 1,
        }
    }
    if json {
        println!("{}", serde_json::to_string(&reports)?);
    }
    if failed > 0 {
        eprintln!(
            "host {host}: {failed} of {} nodes could not be moved; it stays cordoned",
            nodes.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!(
        "host {host}: drained ({} nodes moved), cordoned until `labspan host uncordon {host}`",
        nodes.len()
    );
    Ok(ExitCode::SUCCESS)
}
