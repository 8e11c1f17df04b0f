//! Drawings of a lab: nodes, their NICs and the segments joining them, as
//! Graphviz dot, Mermaid or JSON. Given a placement (node → host), nodes are
//! grouped by host (dot clusters, Mermaid subgraphs, a `host` field in JSON).
//! Given also the VNIs of a running lab, segments that cross hosts carry
//! theirs (`vxlan 10042`).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use labspan_proto::lab::{Endpoint, Impairment, Lab};

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

/// Segment key → VNI, as the cluster allocated them.
pub type Vnis = BTreeMap<String, u32>;

/// Draws `lab` in `format`, grouping nodes by host when `hosts` is given.
pub fn render(lab: &Lab, format: Format, hosts: Option<&Hosts>) -> String {
    render_running(lab, format, hosts, &Vnis::new())
}

/// Draws a running lab: nodes grouped by the host that runs them, and each
/// segment that spans hosts marked with its VNI.
pub fn render_running(lab: &Lab, format: Format, hosts: Option<&Hosts>, vnis: &Vnis) -> String {
    let cross = crossing(lab, hosts, vnis);
    match format {
        Format::Dot => dot(lab, hosts, &cross),
        Format::Mermaid => mermaid(lab, hosts, &cross),
        Format::Json => json(lab, hosts, &cross),
    }
}

/// Segment key → VNI of the segments whose members run on more than one host.
fn crossing(lab: &Lab, hosts: Option<&Hosts>, vnis: &Vnis) -> Vnis {
    let Some(hosts) = hosts else {
        return Vnis::new();
    };
    lab.segments()
        .into_iter()
        .filter(|s| {
            let mut on = s.members.iter().filter_map(|m| hosts.get(&m.node));
            let first = on.next();
            on.any(|h| Some(h) != first)
        })
        .filter_map(|s| vnis.get(&s.key).map(|v| (s.key, *v)))
        .collect()
}

/// The keys of the lab's links, in file order (as [`Lab::segments`] lists them).
fn link_keys(lab: &Lab) -> Vec<String> {
    lab.segments()
        .into_iter()
        .take(lab.links.len())
        .map(|s| s.key)
        .collect()
}

/// `vxlan 10042` for a segment that crosses hosts, else empty.
fn tunnel_label(cross: &Vnis, key: &str) -> String {
    cross
        .get(key)
        .map(|v| format!("vxlan {v}"))
        .unwrap_or_default()
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

fn dot(lab: &Lab, hosts: Option<&Hosts>, cross: &Vnis) -> String {
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
    for (link, key) in lab.links.iter().zip(link_keys(lab)) {
        let [a, b] = &link.endpoints;
        let words: Vec<String> = [
            impairment_label(&link.impairment),
            tunnel_label(cross, &key),
        ]
        .into_iter()
        .filter(|w| !w.is_empty())
        .collect();
        let label = if words.is_empty() {
            String::new()
        } else {
            format!(", label={}", quote(&words.join(" ")))
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
        let key = format!("lan:{name}");
        let id = quote(&key);
        let label = match tunnel_label(cross, &key) {
            t if t.is_empty() => name.clone(),
            t => format!("{name}\n{t}"),
        };
        let _ = writeln!(out, "  {id} [shape=ellipse, label={}];", quote(&label));
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

fn mermaid(lab: &Lab, hosts: Option<&Hosts>, cross: &Vnis) -> String {
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
    for (link, key) in lab.links.iter().zip(link_keys(lab)) {
        let [a, b] = &link.endpoints;
        let mut label = format!("{} — {}", nic_label(lab, a), nic_label(lab, b));
        let imp = impairment_label(&link.impairment);
        if !imp.is_empty() {
            let _ = write!(label, " ({imp})");
        }
        let tunnel = tunnel_label(cross, &key);
        if !tunnel.is_empty() {
            let _ = write!(label, " [{tunnel}]");
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
        let label = match tunnel_label(cross, &format!("lan:{name}")) {
            t if t.is_empty() => name.clone(),
            t => format!("{name} [{t}]"),
        };
        let _ = writeln!(out, "  lan{i}(({}))", quote(&label));
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
    /// The VNI of a segment that crosses hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    vni: Option<u32>,
}

fn json(lab: &Lab, hosts: Option<&Hosts>, cross: &Vnis) -> String {
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
            vni: cross.get(&s.key).copied(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_lab_marks_only_the_segments_that_cross_hosts() {
        let lab = labspan_proto::lab::parse(
            "t.yaml",
            "name: t\ndefaults: {image: tiny}\nnodes:\n  a: {}\n  b: {}\n  c: {}\nlinks:\n  - [a:eth0, b:eth0]\n  - [b:eth1, c:eth0]\n",
        )
        .expect("valid lab");
        let hosts: Hosts = [("a", "h1"), ("b", "h1"), ("c", "h2")]
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .into();
        let vnis: Vnis = [("link:a:eth0--b:eth0", 100), ("link:b:eth1--c:eth0", 101)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let dot = render_running(&lab, Format::Dot, Some(&hosts), &vnis);
        assert!(dot.contains("vxlan 101"), "{dot}");
        assert!(!dot.contains("vxlan 100"), "{dot}");
        assert!(dot.contains("label=\"h2\""), "{dot}");
        let json = render_running(&lab, Format::Json, Some(&hosts), &vnis);
        assert_eq!(json.matches("\"vni\"").count(), 1, "{json}");
        let mermaid = render_running(&lab, Format::Mermaid, Some(&hosts), &vnis);
        assert!(mermaid.contains("[vxlan 101]"), "{mermaid}");
    }
}

/// Every node, NIC and segment is drawn, grouped by host when a placement
/// is given (moved here with the drawings, from `proto/tests/lab_graph.rs`).
#[cfg(test)]
mod drawings {
    use std::collections::BTreeMap;

    use labspan_proto::lab::{parse, Lab};

    use super::{render, Format, Hosts};

    fn lab() -> Lab {
        let text = concat!(
            "name: g\n",
            "defaults: {image: tiny}\n",
            "nodes:\n",
            "  a: {nics: {eth0: {ip: [198.19.1.1/24]}}}\n",
            "  b: {}\n",
            "  c: {}\n",
            "links: [{endpoints: [a:eth0, b:eth0], delay: 10ms}]\n",
            "lans: {core: [a:eth1, b:eth1, c:eth1]}\n",
        );
        parse("g.yaml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn hosts() -> Hosts {
        BTreeMap::from([
            ("a".into(), "host-1".into()),
            ("b".into(), "host-1".into()),
            ("c".into(), "host-2".into()),
        ])
    }

    #[test]
    fn dot_shows_nodes_nics_and_segments() {
        let dot = render(&lab(), Format::Dot, None);
        assert!(dot.starts_with("graph \"g\" {"), "{dot}");
        for n in ["\"a\";", "\"b\";", "\"c\";"] {
            assert!(dot.contains(n), "{n} missing:\n{dot}");
        }
        assert!(dot.contains("\"a\" -- \"b\" [taillabel=\"eth0 198.19.1.1/24\", headlabel=\"eth0\", label=\"10ms\"];"), "{dot}");
        assert!(
            dot.contains("\"lan:core\" [shape=ellipse, label=\"core\"];"),
            "{dot}"
        );
        assert!(
            dot.contains("\"c\" -- \"lan:core\" [taillabel=\"eth1\"];"),
            "{dot}"
        );
        assert!(!dot.contains("cluster"), "{dot}");
    }

    #[test]
    fn dot_groups_nodes_by_host() {
        let dot = render(&lab(), Format::Dot, Some(&hosts()));
        assert!(
            dot.contains(
                "subgraph cluster_0 {\n    label=\"host-1\";\n    \"a\";\n    \"b\";\n  }"
            ),
            "{dot}"
        );
        assert!(dot.contains("label=\"host-2\";\n    \"c\";"), "{dot}");
    }

    #[test]
    fn mermaid_shows_segments_and_hosts() {
        let m = render(&lab(), Format::Mermaid, Some(&hosts()));
        assert!(m.starts_with("graph LR\n"), "{m}");
        assert!(
            m.contains("subgraph h0[\"host-1\"]\n  n0[\"a\"]\n  n1[\"b\"]\n  end"),
            "{m}"
        );
        assert!(
            m.contains("n0 ---|\"eth0 198.19.1.1/24 — eth0 (10ms)\"| n1"),
            "{m}"
        );
        assert!(m.contains("lan0((\"core\"))"), "{m}");
        assert!(m.contains("n2 ---|\"eth1\"| lan0"), "{m}");
    }

    #[test]
    fn json_lists_nodes_nics_segments_and_hosts() {
        let j: serde_json::Value =
            serde_json::from_str(&render(&lab(), Format::Json, Some(&hosts())))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(j["lab"], "g");
        assert_eq!(j["nodes"][0]["name"], "a");
        assert_eq!(j["nodes"][0]["host"], "host-1");
        assert_eq!(j["nodes"][0]["nics"][0]["ip"][0], "198.19.1.1/24");
        assert_eq!(j["segments"][0]["key"], "link:a:eth0--b:eth0");
        assert_eq!(j["segments"][0]["impairment"]["delay_us"], 10_000);
        assert_eq!(j["segments"][1]["kind"], "lan");
        assert_eq!(
            j["segments"][1]["members"].as_array().map(Vec::len),
            Some(3)
        );
    }
}
