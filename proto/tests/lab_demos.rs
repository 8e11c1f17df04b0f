//! The demo labs shipped in `demos/` are valid and mean what they say.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::path::PathBuf;

use labspan_proto::lab;

fn demo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../demos")
        .join(name)
        .join("lab.yaml")
}

fn load(name: &str) -> lab::Lab {
    match lab::load_bundle(&demo(name)) {
        Ok(b) => b.bundle.lab,
        Err(e) => panic!("demos/{name}/lab.yaml is invalid:\n{e}"),
    }
}

#[test]
fn ping_demo_has_two_nodes_on_one_link() {
    let lab = load("ping");
    assert_eq!(lab.nodes.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(lab.links.len(), 1);
    assert!(lab
        .nodes
        .values()
        .all(|n| n.image == "tiny" && n.memory_mib == 256));
    assert_eq!(lab.verify.len(), 3);
}

#[test]
fn ospf_triangle_has_three_routers_and_three_hosts() {
    let lab = load("ospf-triangle");
    assert_eq!(lab.nodes.len(), 6);
    assert_eq!(lab.links.len(), 6);
    assert!(lab.nodes.values().all(|n| n.memory_mib == 256));
    for (name, node) in &lab.nodes {
        let want = if name.starts_with('r') {
            "tiny-router"
        } else {
            "tiny"
        };
        assert_eq!(node.image, want, "{name}");
    }
    // Each router gets its own bird configuration.
    for r in ["r1", "r2", "r3"] {
        assert_eq!(
            lab.nodes[r].files["/etc/bird/bird.conf"],
            format!("files/{r}-bird.conf")
        );
    }
}

#[test]
fn sip_demo_needs_more_than_11_gib_and_spreads_the_phones() {
    let lab = load("sip");
    let total: u64 = lab.nodes.values().map(|n| n.memory_mib).sum();
    assert!(total > 11 * 1024, "total {total} MiB");
    for n in [
        "r1", "r2", "r3", "dns", "ldap", "kamailio", "phone1", "phone2",
    ] {
        assert_eq!(lab.nodes[n].image, "debian-sip", "{n}");
    }
    assert_eq!(
        lab.placement.spread,
        vec![vec!["phone1".to_string(), "phone2".to_string()]]
    );
    assert_eq!(lab.lans["core"].members.len(), 3);
}
