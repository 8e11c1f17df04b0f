//! Drawings of a lab: nodes, their NICs and the segments joining them, as
//! Graphviz dot, Mermaid or JSON. Given a placement (node → host), nodes are
//! grouped by host (dot clusters, Mermaid subgraphs, a `host` field in JSON).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::model::{Endpoint, Impairment, Lab};

/// Output format of `render`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Graphviz.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
    /// Machine-readable JSON.
    Json,
}

/// Node name → host name, once a placement exists.
pub type Hosts = BTreeMap<String, String>;

/// Draws `lab` in `format`, grouping nodes by host when `hosts` is given.
pub fn render(lab: &Lab, format: Format, hosts: Option<&Hosts>) -> String {
    match format {
        Format::Dot => dot(lab, hosts),
        Format::Mermaid => mermaid(lab, hosts),
        Format::Json => json(lab, hosts),
    }
}

/// Nodes grouped by host (`None`: not placed), in name order.
fn by_host<'a>(lab: &'a Lab, hosts: Option<&'a Hosts>) -> BTreeMap<Option<&'a str>, Vec<&'a str>> {
    let mut groups: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
    for name in lab.nodes.keys() {
        let host = hosts.and_then(|h| h.get(name)).map(String::as_str);
        groups.entry(host).or_default().push(name);
    }
    groups
}

/// `eth0 198.19.1.1/24` for a NIC label.
fn nic_label(lab: &Lab, e: &Endpoint) -> String {
    let ips = lab
        .nodes
        .get(&e.node)
        .and_then(|n| n.nics.get(&e.nic))
        .map(|n| &n.ip);
    let mut s = e.nic.clone();
    for ip in ips.into_iter().flatten() {
        let _ = write!(s, " {ip}");
    }
    s
}

/// `10ms ±1ms 0.5% 100Mbit`, or empty.
fn impairment_label(i: &Impairment) -> String {
    let mut parts = Vec::new();
    if let Some(d) = i.delay_us {
        parts.push(format!("{}ms", d as f64 / 1000.0));
    }
    if let Some(j) = i.jitter_us {
        parts.push(format!("±{}ms", j as f64 / 1000.0));
    }
    if let Some(l) = i.loss_percent {
        parts.push(format!("{l}% loss"));
    }
    if let Some(r) = i.rate_kbit {
        parts.push(format!("{}Mbit", r as f64 / 1000.0));
    }
    parts.join(" ")
}

/// A quoted dot / Mermaid string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn dot(lab: &Lab, hosts: Option<&Hosts>) -> String {
    let mut out = format!("graph {} {{\n  node [shape=box];\n", quote(&lab.name));
    for (i, (host, names)) in by_host(lab, hosts).into_iter().enumerate() {
        let indent = if host.is_some() { "    " } else { "  " };
        if let Some(h) = host {
            let _ = writeln!(out, "  subgraph cluster_{i} {{\n    label={};", quote(h));
        }
        for n in names {
            let _ = writeln!(out, "{indent}{};", quote(n));
        }
        if host.is_some() {
            out.push_str("  }\n");
        }
    }
    for link in &lab.links {
        let [a, b] = &link.endpoints;
        let imp = impairment_label(&link.impairment);
        let label = if imp.is_empty() {
            String::new()
        } else {
            format!(", label={}", quote(&imp))
        };
        let _ = writeln!(
            out,
            "  {} -- {} [taillabel={}, headlabel={}{label}];",
            quote(&a.node),
            quote(&b.node),
            quote(&nic_label(lab, a)),
            quote(&nic_label(lab, b)),
        );
    }
    for (name, lan) in &lab.lans {
        let id = quote(&format!("lan:{name}"));
        let _ = writeln!(out, "  {id} [shape=ellipse, label={}];", quote(name));
        for m in &lan.members {
            let _ = writeln!(
                out,
                "  {} -- {id} [taillabel={}];",
                quote(&m.node),
                quote(&nic_label(lab, m))
            );
        }
    }
    out.push_str("}\n");
    out
}

fn mermaid(lab: &Lab, hosts: Option<&Hosts>) -> String {
    // Mermaid ids cannot hold every character a name may; number them instead.
    let ids: BTreeMap<&str, String> = lab
        .nodes
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), format!("n{i}")))
        .collect();
    let id = |n: &str| ids.get(n).cloned().unwrap_or_default();
    let mut out = String::from("graph LR\n");
    for (i, (host, names)) in by_host(lab, hosts).into_iter().enumerate() {
        if let Some(h) = host {
            let _ = writeln!(out, "  subgraph h{i}[{}]", quote(h));
        }
        for n in names {
            let _ = writeln!(out, "  {}[{}]", id(n), quote(n));
        }
        if host.is_some() {
            out.push_str("  end\n");
        }
    }
    for link in &lab.links {
        let [a, b] = &link.endpoints;
        let mut label = format!("{} — {}", nic_label(lab, a), nic_label(lab, b));
        let imp = impairment_label(&link.impairment);
        if !imp.is_empty() {
            let _ = write!(label, " ({imp})");
        }
        let _ = writeln!(
            out,
            "  {} ---|{}| {}",
            id(&a.node),
            quote(&label),
            id(&b.node)
        );
    }
    for (i, (name, lan)) in lab.lans.iter().enumerate() {
        let _ = writeln!(out, "  lan{i}(({}))", quote(name));
        for m in &lan.members {
            let _ = writeln!(
                out,
                "  {} ---|{}| lan{i}",
                id(&m.node),
                quote(&nic_label(lab, m))
            );
        }
    }
    out
}

#[derive(Serialize)]
struct JsonGraph<'a> {
    lab: &'a str,
    nodes: Vec<JsonNode<'a>>,
    segments: Vec<JsonSegment>,
}

#[derive(Serialize)]
struct JsonNode<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    nics: Vec<JsonNic<'a>>,
}

#[derive(Serialize)]
struct JsonNic<'a> {
    name: &'a str,
    ip: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
}

#[derive(Serialize)]
struct JsonSegment {
    key: String,
    kind: &'static str,
    members: Vec<String>,
    #[serde(skip_serializing_if = "Impairment::is_none")]
    impairment: Impairment,
}

fn json(lab: &Lab, hosts: Option<&Hosts>) -> String {
    let nodes = lab
        .nodes
        .iter()
        .map(|(name, n)| JsonNode {
            name,
            host: hosts.and_then(|h| h.get(name)).map(String::as_str),
            nics: n
                .nics
                .iter()
                .map(|(k, nic)| JsonNic {
                    name: k,
                    ip: nic.ip.iter().map(|i| i.to_string()).collect(),
                    mtu: nic.mtu,
                })
                .collect(),
        })
        .collect();
    let segments = lab
        .segments()
        .into_iter()
        .map(|s| JsonSegment {
            kind: if s.key.starts_with("lan:") {
                "lan"
            } else {
                "link"
            },
            members: s.members.iter().map(|m| m.to_string()).collect(),
            key: s.key,
            impairment: s.impairment,
        })
        .collect();
    let graph = JsonGraph {
        lab: &lab.name,
        nodes,
        segments,
    };
    // Plain strings and numbers always serialize.
    serde_json::to_string_pretty(&graph).unwrap_or_default() + "\n"
}
