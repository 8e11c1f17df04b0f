//! `labspan place`: decide which host runs each node of a lab, and show what
//! that placement costs (tunnels, per-host memory and vCPUs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use labspan_coordinator::hosts::load_hosts;
use labspan_coordinator::placement::{format_mib, place_lab, Placement};
use labspan_proto::lab::{self, Lab};

use crate::InvalidInput;

/// Arguments of `labspan place`.
#[derive(clap::Args)]
pub struct Args {
    /// The lab file to place.
    #[arg(value_name = "LAB")]
    lab: PathBuf,
    /// The hosts file: `hosts: {NAME: {memory: 16GiB, cpus: 8, labels: [..]}}`.
    #[arg(long, value_name = "HOSTS")]
    hosts: PathBuf,
    /// Print JSON (`{"placement": {node: host}, "tunnels": N, ...}`) instead of tables.
    #[arg(long)]
    json: bool,
}

/// Runs `labspan place`. Bad files and labs that cannot be placed on these
/// hosts are invalid input (exit status 2).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let invalid = |msg: String| anyhow::Error::new(InvalidInput(msg));
    let lab = lab::load(&args.lab).map_err(|e| invalid(e.to_string()))?;
    let placement = place_on(&lab, &args.hosts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json(&lab, &placement))?);
    } else {
        print!("{}", table(&lab, &placement));
    }
    Ok(ExitCode::SUCCESS)
}

/// Places `lab` on the hosts of the hosts file at `path`; bad files and labs
/// that do not fit are invalid input.
pub fn place_on(lab: &Lab, path: &std::path::Path) -> anyhow::Result<Placement> {
    let invalid = |msg: String| anyhow::Error::new(InvalidInput(msg));
    let hosts = load_hosts(path).map_err(|e| invalid(e.to_string()))?;
    place_lab(lab, &hosts, &BTreeMap::new()).map_err(|e| {
        invalid(format!(
            "lab \"{}\": cannot place it on the hosts of {}: {e}",
            lab.name,
            path.display()
        ))
    })
}

/// The JSON form: the placement, its figures flattened next to it.
fn json(lab: &Lab, p: &Placement) -> serde_json::Value {
    let f = &p.figures;
    serde_json::json!({
        "lab": lab.name,
        "placement": p.nodes,
        "tunnels": f.tunnels,
        "spanning_segments": f.spanning_segments,
        "vxlan_devices": f.vxlan_devices,
        "weighted_cost": f.weighted_cost,
        "hosts": f.hosts,
    })
}

/// Two tables (nodes by host, then host use) and a summary line.
fn table(lab: &Lab, p: &Placement) -> String {
    let mut out = String::new();
    let w = p
        .nodes
        .keys()
        .map(String::len)
        .chain([4])
        .max()
        .unwrap_or(4);
    let hw = p
        .figures
        .hosts
        .keys()
        .map(String::len)
        .chain([4])
        .max()
        .unwrap_or(4);
    let _ = writeln!(
        out,
        "{:<w$}  {:<hw$}  {:>10}  {:>5}",
        "NODE", "HOST", "GUEST RAM", "VCPUS"
    );
    let mut by_host: Vec<(&String, &String)> = p.nodes.iter().collect();
    by_host.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
    for (node, host) in by_host {
        let (ram, cpus) = lab
            .nodes
            .get(node)
            .map_or((0, 0), |n| (n.memory_mib, n.cpus));
        let _ = writeln!(
            out,
            "{node:<w$}  {host:<hw$}  {:>10}  {cpus:>5}",
            format_mib(ram)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<hw$}  {:>5}  {:>24}  {:>13}",
        "HOST", "NODES", "MEMORY (with QEMU)", "VCPUS"
    );
    for (host, u) in &p.figures.hosts {
        let mem = format!(
            "{} / {}",
            format_mib(u.memory_mib + u.others_memory_mib),
            format_mib(u.memory_capacity_mib)
        );
        let cpus = format!("{} / {}", u.vcpus + u.others_vcpus, u.vcpu_capacity);
        let _ = writeln!(out, "{host:<hw$}  {:>5}  {mem:>24}  {cpus:>13}", u.nodes);
    }
    let f = &p.figures;
    let _ = writeln!(
        out,
        "\ntunnels: {} ({} of {} segments span hosts; {} VXLAN devices)",
        f.tunnels,
        f.spanning_segments,
        lab.links.len() + lab.lans.len(),
        f.vxlan_devices
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use labspan_coordinator::hosts::parse_hosts;

    const LAB: &str = "name: t\ndefaults: {image: tiny, memory: 1GiB, cpus: 1}\nnodes:\n  a: {nics: {eth0: {}}}\n  b: {nics: {eth0: {}, eth1: {}}}\n  c: {nics: {eth0: {}}}\nlinks:\n  - [a:eth0, b:eth0]\n  - [b:eth1, c:eth0]\n";
    const HOSTS: &str =
        "hosts:\n  h1: {memory: 3.5GiB, cpus: 2}\n  h2: {memory: 3.5GiB, cpus: 2}\n";

    #[test]
    fn table_and_json_show_placement_and_tunnels() {
        let lab = lab::parse("lab.yaml", LAB).expect("valid lab");
        let hosts = parse_hosts(HOSTS, "hosts.yaml").expect("valid hosts");
        let p = place_lab(&lab, &hosts, &BTreeMap::new()).expect("fits");
        // Each host takes two 1 GiB guests at most (2.5 GiB usable), so one
        // link must cross: exactly one tunnel.
        assert_eq!(p.figures.tunnels, 1);
        let t = table(&lab, &p);
        assert!(
            t.contains("tunnels: 1 (1 of 2 segments span hosts; 2 VXLAN devices)"),
            "{t}"
        );
        let j = json(&lab, &p);
        assert_eq!(j["tunnels"], 1);
        assert_eq!(j["placement"].as_object().map(|m| m.len()), Some(3));
    }
}
