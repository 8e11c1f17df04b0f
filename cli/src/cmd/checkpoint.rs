//! `labspan checkpoint create|list|delete LAB ...` and `labspan reset LAB
//! NAME`: a consistent cut of every VM of a running lab (RAM, devices and
//! disk, all paused at one deadline), and every VM back to it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use labspan_proto::checkpoint::{Checkpoint, ResetReport};
use labspan_proto::msg::{Reply, Request};

use crate::embedded;
use crate::remote::{call, connect};

/// `labspan checkpoint ...`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Pause every VM of a running lab at one instant, save each one's RAM,
    /// devices and disk, and resume them.
    Create(NameArgs),
    /// List a lab's checkpoints, oldest first.
    List(LabArgs),
    /// Remove a checkpoint from the record and from every host.
    Delete(NameArgs),
}

/// A lab and one of its checkpoints.
#[derive(clap::Args)]
pub struct NameArgs {
    /// Lab name.
    pub lab: String,
    /// Checkpoint name (lowercase letters, digits, '-' and '_').
    pub name: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Act on the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<PathBuf>,
}

/// A lab.
#[derive(clap::Args)]
pub struct LabArgs {
    /// Lab name.
    pub lab: String,
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
    /// Act on the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<PathBuf>,
}

/// Runs `f` against the cluster named, or the embedded default.
pub(crate) fn on_cluster(
    cluster: Option<&Path>,
    f: impl AsyncFnOnce(&Path) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    match cluster {
        Some(file) => rt.block_on(f(file)),
        None => rt.block_on(embedded::with_cluster(
            embedded::accel_from_env(),
            async |file| f(&file).await,
        )),
    }
}

async fn ask(file: &Path, req: Request) -> anyhow::Result<Reply> {
    let client = connect(file).await?;
    let reply = call(&client, &req).await;
    client.close().await;
    reply
}

/// Runs `labspan checkpoint ...`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Create(a) => on_cluster(a.cluster.as_deref(), async |file| {
            eprintln!(
                "{}: pausing every VM at once and saving checkpoint {:?}...",
                a.lab, a.name
            );
            let req = Request::CheckpointCreate {
                lab: a.lab.clone(),
                name: a.name.clone(),
            };
            match ask(file, req).await? {
                Reply::Checkpointed(c) => {
                    print_created(&a.lab, &c, a.json)?;
                    Ok(ExitCode::SUCCESS)
                }
                other => bail!("unexpected reply to CheckpointCreate: {other:?}"),
            }
        }),
        Command::List(a) => on_cluster(a.cluster.as_deref(), async |file| {
            match ask(file, Request::CheckpointList { lab: a.lab.clone() }).await? {
                Reply::Checkpoints(all) => {
                    print_list(&a.lab, &all, a.json)?;
                    Ok(ExitCode::SUCCESS)
                }
                other => bail!("unexpected reply to CheckpointList: {other:?}"),
            }
        }),
        Command::Delete(a) => on_cluster(a.cluster.as_deref(), async |file| {
            let req = Request::CheckpointDelete {
                lab: a.lab.clone(),
                name: a.name.clone(),
            };
            match ask(file, req).await? {
                Reply::Done => {
                    println!("{}: checkpoint {:?} deleted", a.lab, a.name);
                    Ok(ExitCode::SUCCESS)
                }
                other => bail!("unexpected reply to CheckpointDelete: {other:?}"),
            }
        }),
    }
}

/// Runs `labspan reset LAB NAME`.
pub fn run_reset(a: NameArgs) -> anyhow::Result<ExitCode> {
    on_cluster(a.cluster.as_deref(), async |file| {
        eprintln!("{}: every VM back to checkpoint {:?}...", a.lab, a.name);
        let req = Request::Reset {
            lab: a.lab.clone(),
            name: a.name.clone(),
        };
        match ask(file, req).await? {
            Reply::WasReset(r) => {
                print_reset(&r, a.json)?;
                Ok(ExitCode::SUCCESS)
            }
            other => bail!("unexpected reply to Reset: {other:?}"),
        }
    })
}

fn checkpoint_json(c: &Checkpoint) -> serde_json::Value {
    let nodes: serde_json::Map<String, serde_json::Value> = c
        .nodes
        .iter()
        .map(|(node, n)| {
            let files: Vec<serde_json::Value> = n
                .files
                .iter()
                .map(|f| serde_json::json!({"kind": f.kind, "sha256": f.sha256, "bytes": f.bytes}))
                .collect();
            let v = serde_json::json!({
                "host": n.host, "paused_ms": n.paused_ms, "files": files, "copies": n.copies,
            });
            (node.clone(), v)
        })
        .collect();
    serde_json::json!({
        "name": c.name,
        "created_unix": c.created_unix,
        "frozen_ms": c.frozen_ms,
        "total_ms": c.total_ms,
        "bytes": c.bytes(),
        "nodes": nodes,
    })
}

fn print_created(lab: &str, c: &Checkpoint, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&checkpoint_json(c))?);
        return Ok(());
    }
    let slowest = c.nodes.values().map(|n| n.paused_ms).max().unwrap_or(0);
    let copied = c.nodes.values().filter(|n| !n.copies.is_empty()).count();
    println!(
        "{lab}: checkpoint {:?} of {} nodes taken in {:.1} s: frozen {} ms (slowest VM paused {} ms), {} MiB; {copied} of {} nodes copied to a second host",
        c.name,
        c.nodes.len(),
        c.total_ms as f64 / 1000.0,
        c.frozen_ms,
        slowest,
        c.bytes() >> 20,
        c.nodes.len(),
    );
    Ok(())
}

fn print_list(lab: &str, all: &[Checkpoint], json: bool) -> anyhow::Result<()> {
    if json {
        let list: Vec<serde_json::Value> = all.iter().map(checkpoint_json).collect();
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("{lab}: no checkpoints (`labspan checkpoint create {lab} NAME` takes one)");
        return Ok(());
    }
    println!(
        "{:<24} {:<22} {:>6} {:>10} {:>9}",
        "NAME", "TAKEN", "NODES", "MiB", "FROZEN"
    );
    for c in all {
        println!(
            "{:<24} {:<22} {:>6} {:>10} {:>6} ms",
            c.name,
            c.taken_at(),
            c.nodes.len(),
            c.bytes() >> 20,
            c.frozen_ms
        );
    }
    Ok(())
}

fn print_reset(r: &ResetReport, json: bool) -> anyhow::Result<()> {
    if json {
        let v = serde_json::json!({
            "lab": r.lab, "checkpoint": r.checkpoint, "nodes": r.nodes,
            "total_ms": r.total_ms, "clock_not_set": r.clock_not_set,
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!(
        "{}: {} nodes back to checkpoint {:?} in {:.1} s",
        r.lab,
        r.nodes.len(),
        r.checkpoint,
        r.total_ms as f64 / 1000.0
    );
    if !r.clock_not_set.is_empty() {
        eprintln!(
            "{}: the clock of {:?} could not be set through the guest agent",
            r.lab, r.clock_not_set
        );
    }
    Ok(())
}
