//! Drawings show every node, NIC and segment, and group nodes by host when a
//! placement is given.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::collections::BTreeMap;

use labspan_proto::lab::graph::{render, Format, Hosts};
use labspan_proto::lab::{parse, Lab};

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
        dot.contains("subgraph cluster_0 {\n    label=\"host-1\";\n    \"a\";\n    \"b\";\n  }"),
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
    let j: serde_json::Value = serde_json::from_str(&render(&lab(), Format::Json, Some(&hosts())))
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
