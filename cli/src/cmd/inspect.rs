//! `labspan inspect [LAB] [--json]`: deployed labs, their nodes, where they
//! run and whether their QEMU is alive.

use std::process::ExitCode;

use labspan_agent::vm::AccelChoice;
use serde::Serialize;

use crate::embedded::Embedded;
use crate::InvalidInput;

/// Arguments of `labspan inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Only this lab.
    pub lab: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Inspect the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<std::path::PathBuf>,
}

/// One node as `inspect` shows it.
#[derive(Serialize)]
struct NodeRow {
    lab: String,
    node: String,
    host: String,
    /// `running`, `dead` (its QEMU is gone) or `missing` (never started).
    state: &'static str,
    pid: Option<u32>,
    addresses: Vec<String>,
    console: String,
}

/// Runs `labspan inspect`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(cluster) = &args.cluster {
        let rt = tokio::runtime::Runtime::new()?;
        return rt.block_on(crate::remote::inspect(
            cluster,
            args.lab.as_deref(),
            args.json,
        ));
    }
    let env = Embedded::open(AccelChoice::Auto)?;
    let mut labs = env.store.all()?;
    if let Some(lab) = &args.lab {
        labs.retain(|name, _| name == lab);
        if labs.is_empty() {
            return Err(InvalidInput(format!(
                "lab \"{lab}\" is not deployed (see `labspan inspect`)"
            ))
            .into());
        }
    }
    let status = env.agent.status()?;
    let mut rows = Vec::new();
    for (name, record) in &labs {
        for (node, spec) in &record.lab.nodes {
            let vm = status.get(&(name.clone(), node.clone()));
            rows.push(NodeRow {
                lab: name.clone(),
                node: node.clone(),
                host: record.placement.get(node).cloned().unwrap_or_default(),
                state: match vm {
                    Some(Some(_)) => "running",
                    Some(None) => "dead",
                    None => "missing",
                },
                pid: vm.and_then(|v| v.as_ref()).map(|v| v.pid()),
                addresses: spec
                    .nics
                    .iter()
                    .flat_map(|(nic, n)| n.ip.iter().map(move |ip| format!("{nic}:{ip}")))
                    .collect(),
                console: format!("labspan console {name} {node}"),
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no lab is deployed");
        return Ok(ExitCode::SUCCESS);
    }
    let width = |f: fn(&NodeRow) -> usize, title: &str| {
        rows.iter().map(f).chain([title.len()]).max().unwrap_or(0)
    };
    let (wl, wn, wh) = (
        width(|r| r.lab.len(), "LAB"),
        width(|r| r.node.len(), "NODE"),
        width(|r| r.host.len(), "HOST"),
    );
    println!(
        "{:<wl$} {:<wn$} {:<wh$} {:<8} {:>8}  ADDRESSES",
        "LAB", "NODE", "HOST", "STATE", "PID"
    );
    for r in &rows {
        let pid = r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<wl$} {:<wn$} {:<wh$} {:<8} {:>8}  {}",
            r.lab,
            r.node,
            r.host,
            r.state,
            pid,
            r.addresses.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
