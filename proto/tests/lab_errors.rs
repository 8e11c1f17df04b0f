//! One test per kind of lab-file error: the exact message, position and path
//! a user sees. Labs are written inline so the positions can be read off.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use labspan_proto::lab::{parse, Diagnostic};

/// Every diagnostic of `text` as displayed (`lab.yaml:L:C: path: msg` + help).
fn errors(text: &str) -> Vec<String> {
    match parse("lab.yaml", text) {
        Ok(_) => panic!("lab was accepted:\n{text}"),
        Err(d) => d.iter().map(Diagnostic::to_string).collect(),
    }
}

/// The one diagnostic of `text`.
fn error(text: &str) -> String {
    let all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.into_iter().next().unwrap_or_default()
}

const HEAD: &str = "name: t\ndefaults: {image: tiny}\n";

fn lab(rest: &str) -> String {
    format!("{HEAD}{rest}")
}

#[test]
fn yaml_syntax_error() {
    assert_eq!(
        error("name: t\nnodes: {a: [\n"),
        "lab.yaml:3:1: YAML syntax error: while parsing a node, did not find expected node content"
    );
}

#[test]
fn top_level_not_a_mapping() {
    assert_eq!(
        error("- a\n- b\n"),
        "lab.yaml:1:1: the lab file must be a YAML mapping\n  help: start with name: my-lab, then nodes:"
    );
    assert_eq!(
        error("# nothing here\n"),
        "lab.yaml:1:1: the lab file is empty\n  help: start with name: my-lab, then nodes:"
    );
}

#[test]
fn unknown_key_with_did_you_mean() {
    let text = lab("nodes:\n  r1:\n    nics:\n      eth9: {mtuu: 1400}\n");
    assert_eq!(
        error(&text),
        "lab.yaml:6:14: nodes.r1.nics.eth9: unknown key \"mtuu\"\n  help: did you mean \"mtu\"?"
    );
}

#[test]
fn unknown_key_without_close_match_lists_the_keys() {
    let text = lab("nodes: {a: {colour: red}}\n");
    assert_eq!(
        error(&text),
        "lab.yaml:3:13: nodes.a: unknown key \"colour\"\n  help: expected one of: image, memory, cpus, nics, exec, files, restart"
    );
}

#[test]
fn duplicate_node_name() {
    let text = lab("nodes:\n  a: {}\n  b: {}\n  a: {}\n");
    assert_eq!(
        error(&text),
        "lab.yaml:6:3: nodes: duplicate node name \"a\" (first at line 4, column 3)\n  help: remove or rename one of them"
    );
}

#[test]
fn duplicate_key_elsewhere_and_later_errors_still_reported() {
    let text = lab("nodes:\n  a: {cpus: 1, cpus: 2}\nlinks: [[a:eth0, zz:eth0]]\n");
    assert_eq!(
        errors(&text),
        [
            "lab.yaml:4:16: nodes.a: duplicate key \"cpus\" (first at line 4, column 7)\n  help: remove or rename one of them",
            "lab.yaml:5:18: links[0][1]: node \"zz\" does not exist\n  help: declare it under nodes:",
        ]
    );
}

#[test]
fn link_naming_a_missing_node() {
    let text = lab("nodes: {a: {}, b: {}}\nlinks:\n  - [a:eth0, bb:eth0]\n");
    assert_eq!(
        error(&text),
        "lab.yaml:5:14: links[0][1]: node \"bb\" does not exist\n  help: did you mean \"b\"?"
    );
}

#[test]
fn lan_naming_a_missing_node() {
    let text = lab("nodes: {r1: {}, r2: {}}\nlans:\n  core: [r1:eth1, r2:eth1, r3:eth1]\n");
    assert_eq!(
        error(&text),
        "lab.yaml:5:28: lans.core[2]: node \"r3\" does not exist\n  help: did you mean \"r1\"?"
    );
}

#[test]
fn nic_used_by_two_segments() {
    let text =
        lab("nodes: {a: {}, b: {}, c: {}}\nlinks:\n  - [a:eth0, b:eth0]\n  - [a:eth0, c:eth0]\n");
    assert_eq!(
        error(&text),
        "lab.yaml:6:6: links[1][0]: NIC a:eth0 is already in links[0] (line 5)\n  help: a NIC can be in only one link or LAN; use another NIC, e.g. a:eth1"
    );
}

#[test]
fn link_with_three_endpoints() {
    let text = lab("nodes: {a: {}, b: {}, c: {}}\nlinks:\n  - [a:eth0, b:eth0, c:eth0]\n");
    assert_eq!(
        error(&text),
        "lab.yaml:5:5: links[0]: a link joins exactly two NICs; this one has 3\n  help: for three or more members, use a LAN under lans:"
    );
}

#[test]
fn link_with_one_endpoint() {
    let text = lab("nodes: {a: {}}\nlinks:\n  - {endpoints: [a:eth0], delay: 10ms}\n");
    assert_eq!(
        error(&text),
        "lab.yaml:5:5: links[0]: a link joins exactly two NICs; this one has 1\n  help: add the other end, e.g. [a:eth0, b:eth0]"
    );
}

#[test]
fn lan_with_one_member() {
    let text = lab("nodes: {a: {}}\nlans:\n  solo: [a:eth0]\n");
    assert_eq!(
        error(&text),
        "lab.yaml:5:3: lans.solo: a LAN needs at least two members; this one has 1\n  help: add members, or use a link for two NICs"
    );
}

#[test]
fn zero_memory() {
    let text = lab("nodes: {a: {memory: 0}}\n");
    assert_eq!(
        error(&text),
        "lab.yaml:3:21: nodes.a.memory: memory 0MiB is out of range 32MiB..=1TiB\n  help: give the guest what it needs to boot, e.g. 256MiB for a tiny image"
    );
}

#[test]
fn absurd_memory_and_bad_unit() {
    let text = lab("nodes:\n  a: {memory: 4096GiB}\n  b: {memory: 512MB}\n");
    assert_eq!(
        errors(&text),
        [
            "lab.yaml:4:15: nodes.a.memory: memory 4194304MiB is out of range 32MiB..=1TiB\n  help: give the guest what it needs to boot, e.g. 256MiB for a tiny image",
            "lab.yaml:5:15: nodes.b.memory: memory \"512MB\" uses unit \"MB\"; write MiB or GiB (e.g. 512MiB, 2GiB)\n  help: e.g. memory: 512MiB",
        ]
    );
}

#[test]
fn zero_and_absurd_cpus() {
    let text = lab("nodes:\n  a: {cpus: 0}\n  b: {cpus: 1000}\n");
    assert_eq!(
        errors(&text),
        [
            "lab.yaml:4:13: nodes.a.cpus: cpus 0 is out of range 1..=64\n  help: e.g. cpus: 1",
            "lab.yaml:5:13: nodes.b.cpus: cpus 1000 is out of range 1..=64\n  help: e.g. cpus: 1",
        ]
    );
}

#[test]
fn bad_cidr() {
    let text = lab("nodes:\n  a:\n    nics:\n      eth0: {ip: [198.19.1.300/24, 198.19.1.1]}\n");
    assert_eq!(
        errors(&text),
        [
            "lab.yaml:6:19: nodes.a.nics.eth0.ip[0]: \"198.19.1.300/24\" is not an IPv4 or IPv6 address in CIDR form\n  help: e.g. 198.19.1.1/24 or 2001:db8::1/64",
            "lab.yaml:6:36: nodes.a.nics.eth0.ip[1]: address \"198.19.1.1\" has no prefix length\n  help: write it in CIDR form, e.g. 198.19.1.1/24",
        ]
    );
}

#[test]
fn same_ip_twice_in_one_segment() {
    let text = lab(concat!(
        "nodes:\n",
        "  a: {nics: {eth0: {ip: [198.19.1.1/24]}}}\n",
        "  b: {nics: {eth0: {ip: [198.19.1.1/24]}}}\n",
        "links: [[a:eth0, b:eth0]]\n",
    ));
    assert_eq!(
        error(&text),
        "lab.yaml:5:26: nodes.b.nics.eth0.ip[0]: 198.19.1.1 is also the address of a:eth0 on links[0]\n  help: give each NIC on a segment its own address"
    );
}

#[test]
fn same_ip_on_different_segments_is_fine() {
    let text = lab(concat!(
        "nodes:\n",
        "  a: {nics: {eth0: {ip: [198.19.1.1/24]}}}\n",
        "  b: {nics: {eth0: {ip: [198.19.1.2/24]}, eth1: {ip: [198.19.1.1/24]}}}\n",
        "  c: {}\n",
        "links: [[a:eth0, b:eth0], [b:eth1, c:eth0]]\n",
    ));
    assert!(parse("lab.yaml", &text).is_ok());
}

#[test]
fn mtu_out_of_range() {
    let text = lab("nodes: {a: {nics: {eth0: {mtu: 9001}}}}\n");
    assert_eq!(
        error(&text),
        "lab.yaml:3:32: nodes.a.nics.eth0.mtu: mtu 9001 is out of range 68..=9000\n  help: leave mtu out to get the largest the segment allows"
    );
}

#[test]
fn names_that_cannot_become_interface_names() {
    let text = lab(concat!(
        "nodes:\n",
        "  R1: {}\n",
        "  b: {nics: {a-very-long-nic-name: {}}}\n",
        "links: [[b:eth0, b:has.dot]]\n",
    ));
    assert_eq!(
        errors(&text),
        [
            "lab.yaml:4:3: nodes.R1: node name \"R1\" cannot be used\n  help: use lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 63 bytes",
            "lab.yaml:5:14: nodes.b.nics.a-very-long-nic-name: NIC name \"a-very-long-nic-name\" is 20 bytes long; the limit is 15\n  help: use lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 15 bytes",
            "lab.yaml:6:18: links[0][1]: NIC name \"has.dot\" cannot be used\n  help: use lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 15 bytes",
        ]
    );
}

#[test]
fn bad_lab_name() {
    let text = "name: My_Lab\nnodes: {a: {image: tiny}}\n";
    assert_eq!(
        error(text),
        "lab.yaml:1:7: name: lab name \"My_Lab\" cannot be used\n  help: use lowercase letters, digits and '-', 1 to 32 characters"
    );
}

#[test]
fn node_without_image() {
    let text = "name: t\nnodes:\n  a: {memory: 256MiB}\n";
    assert_eq!(
        error(text),
        "lab.yaml:3:3: nodes.a: node \"a\" has no image\n  help: set nodes.a.image, or defaults.image for every node"
    );
}

#[test]
fn pinned_to_two_places() {
    let text = lab("nodes: {a: {}}\nplacement:\n  pin: {a: lab-host-1, a: lab-host-2}\n");
    assert_eq!(
        error(&text),
        "lab.yaml:5:24: placement.pin: duplicate key \"a\" (first at line 5, column 9)\n  help: remove or rename one of them"
    );
}

#[test]
fn together_group_pinned_apart() {
    let text = lab(concat!(
        "nodes: {r1: {}, dns: {}}\n",
        "placement:\n",
        "  pin: {r1: lab-host-1, dns: lab-host-2}\n",
        "  together: [[r1, dns]]\n",
    ));
    assert_eq!(
        error(&text),
        "lab.yaml:6:14: placement.together[0]: this group must run on one host, but its nodes are pinned apart: \"r1\" on lab-host-1, \"dns\" on lab-host-2\n  help: pin them to the same host, or drop a pin"
    );
}

#[test]
fn together_and_spread_at_once() {
    let text = lab(concat!(
        "nodes: {a: {}, b: {}, c: {}}\n",
        "placement:\n",
        "  together: [[a, b], [b, c]]\n",
        "  spread: [[a, c]]\n",
    ));
    assert_eq!(
        error(&text),
        "lab.yaml:6:16: placement.spread[0][1]: \"a\" and \"c\" must run apart (this group) and together (placement.together)\n  help: remove one of the two hints"
    );
}

#[test]
fn spread_nodes_pinned_to_one_host() {
    let text = lab(concat!(
        "nodes: {a: {}, b: {}}\n",
        "placement:\n",
        "  pin: {a: h1, b: h1}\n",
        "  spread: [[a, b]]\n",
    ));
    assert_eq!(
        error(&text),
        "lab.yaml:6:16: placement.spread[0][1]: \"a\" and \"b\" must run apart, but both are pinned to h1\n  help: pin one of them elsewhere, or drop it from this group"
    );
}

#[test]
fn placement_naming_a_missing_node() {
    let text = lab("nodes: {a: {}}\nplacement:\n  pin: {x: h1}\n");
    assert_eq!(
        error(&text),
        "lab.yaml:5:9: placement.pin.x: node \"x\" does not exist\n  help: declare it under nodes:"
    );
}

#[test]
fn verify_naming_a_missing_node() {
    let text = lab(concat!(
        "nodes: {a: {}, b: {}}\n",
        "verify:\n",
        "  - ping: {from: c, to: b}\n",
        "  - ping: {from: a, to: bb}\n",
        "  - exec: {node: x, cmd: \"true\"}\n",
    ));
    assert_eq!(
        errors(&text),
        [
            "lab.yaml:5:18: verify[0].ping.from: node \"c\" does not exist\n  help: declare it under nodes:",
            "lab.yaml:6:25: verify[1].ping.to: ping target \"bb\" is neither an IP address nor a node of this lab\n  help: did you mean \"b\"?",
            "lab.yaml:7:18: verify[2].exec.node: node \"x\" does not exist\n  help: declare it under nodes:",
        ]
    );
}

#[test]
fn ping_to_accepts_an_address_or_a_node() {
    let text = lab("nodes: {a: {}, b: {}}\nverify:\n  - ping: {from: a, to: b}\n  - ping: {from: a, to: 2001:db8::2}\n");
    assert!(parse("lab.yaml", &text).is_ok());
}

#[test]
fn bad_impairments() {
    let text = lab("nodes: {a: {}, b: {}}\nlinks:\n  - {endpoints: [a:eth0, b:eth0], delay: 10, loss: 200%, rate: 5MB}\n");
    assert_eq!(
        errors(&text),
        [
            "lab.yaml:5:42: links[0].delay: delay \"10\" is not a duration like 10ms (units: us, ms, s)",
            "lab.yaml:5:52: links[0].loss: loss \"200%\" is out of range 0%..=100%",
            "lab.yaml:5:64: links[0].rate: rate \"5MB\" is not a rate like 100Mbit (units: kbit, Mbit, Gbit)",
        ]
    );
}

#[test]
fn malformed_endpoint() {
    let text = lab("nodes: {a: {}, b: {}}\nlinks: [[a, b:eth0]]\n");
    assert_eq!(
        error(&text),
        "lab.yaml:4:10: links[0][0]: endpoint \"a\" is not NODE:NIC\n  help: e.g. r1:eth0"
    );
}

#[test]
fn wrong_type() {
    let text = lab("nodes: [a, b]\n");
    assert_eq!(
        error(&text),
        "lab.yaml:3:8: nodes: expected a mapping of node names to nodes, found a list"
    );
}

#[test]
fn all_errors_are_reported_in_file_order() {
    let text = lab(concat!(
        "nodes:\n",
        "  a: {cpus: 0, memroy: 1GiB}\n",
        "  b: {nics: {eth0: {mtu: 10}}}\n",
        "links: [[a:eth0, c:eth0]]\n",
        "verify: [{ping: {from: d, to: a}}]\n",
    ));
    let lines: Vec<String> = errors(&text)
        .iter()
        .map(|e| e.lines().next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        lines,
        [
            "lab.yaml:4:13: nodes.a.cpus: cpus 0 is out of range 1..=64",
            "lab.yaml:4:16: nodes.a: unknown key \"memroy\"",
            "lab.yaml:5:26: nodes.b.nics.eth0.mtu: mtu 10 is out of range 68..=9000",
            "lab.yaml:6:18: links[0][1]: node \"c\" does not exist",
            "lab.yaml:7:24: verify[0].ping.from: node \"d\" does not exist",
        ]
    );
}

#[test]
fn nic_named_only_by_a_link_is_created_without_address() {
    let text = lab(
        "nodes: {a: {}, b: {nics: {eth0: {ip: [198.19.1.2/24]}}}}\nlinks: [[a:eth0, b:eth0]]\n",
    );
    let lab = match parse("lab.yaml", &text) {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    assert!(lab.nodes["a"].nics["eth0"].ip.is_empty());
    assert_eq!(lab.nodes["b"].nics["eth0"].ip.len(), 1);
}

#[test]
fn defaults_apply_and_node_values_win() {
    let text = "name: t\ndefaults: {image: tiny, memory: 1GiB, cpus: 2}\nnodes: {a: {}, b: {image: big, memory: 512, cpus: 1}}\n";
    let lab = match parse("lab.yaml", text) {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        (
            lab.nodes["a"].image.as_str(),
            lab.nodes["a"].memory_mib,
            lab.nodes["a"].cpus
        ),
        ("tiny", 1024, 2)
    );
    assert_eq!(
        (
            lab.nodes["b"].image.as_str(),
            lab.nodes["b"].memory_mib,
            lab.nodes["b"].cpus
        ),
        ("big", 512, 1)
    );
}

#[test]
fn suggested_nic_is_free_everywhere_in_the_file() {
    let text = lab(concat!(
        "nodes: {a: {}, b: {}, c: {}}\n",
        "links: [[a:eth0, b:eth0], [a:eth0, c:eth0]]\n",
        "lans: {x: [a:eth1, b:eth1]}\n",
    ));
    let all = errors(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].ends_with("use another NIC, e.g. a:eth2"),
        "{}",
        all[0]
    );
}

#[test]
fn check_timeout_out_of_range_or_without_unit() {
    let text = lab(concat!(
        "nodes: {a: {}}\n",
        "verify:\n",
        "  - exec: {node: a, cmd: 'true', timeout: 0s}\n",
        "  - ping: {from: a, to: 198.19.1.1, timeout: 2h}\n",
        "  - exec: {node: a, cmd: 'true', timeout: 30}\n",
    ));
    assert_eq!(
        errors(&text),
        [
            "lab.yaml:5:43: verify[0].exec.timeout: timeout \"0s\" is out of range: a check may be retried for more than 0 s and at most 3600 s",
            "lab.yaml:6:46: verify[1].ping.timeout: timeout \"2h\" is not a duration like 10ms (units: us, ms, s)",
            "lab.yaml:7:43: verify[2].exec.timeout: timeout \"30\" is not a duration like 10ms (units: us, ms, s)",
        ]
    );
}

#[test]
fn unknown_restart_policy() {
    let text = lab("nodes:\n  a: {restart: sometimes}\n");
    assert_eq!(
        error(&text),
        "lab.yaml:4:16: nodes.a.restart: restart \"sometimes\" is not a restart policy\n  help: use always, on-failure (the default) or never"
    );
    let text = "name: t\ndefaults: {image: tiny, restart: [never]}\nnodes: {a: {}}\n";
    assert_eq!(
        error(text),
        "lab.yaml:2:34: defaults.restart: expected a restart policy, found a list"
    );
}

#[test]
fn restart_policy_defaults_to_on_failure_and_is_inherited() {
    use labspan_proto::lab::RestartPolicy;
    let text = "name: t\ndefaults: {image: tiny}\nnodes: {a: {}, b: {restart: never}}\n";
    let lab = parse("lab.yaml", text).expect("valid");
    assert_eq!(lab.nodes["a"].restart, RestartPolicy::OnFailure);
    assert_eq!(lab.nodes["b"].restart, RestartPolicy::Never);
    let text = "name: t\ndefaults: {image: tiny, restart: always}\nnodes: {a: {}, b: {restart: on-failure}}\n";
    let lab = parse("lab.yaml", text).expect("valid");
    assert_eq!(lab.nodes["a"].restart, RestartPolicy::Always);
    assert_eq!(lab.nodes["b"].restart, RestartPolicy::OnFailure);
}

#[test]
fn an_image_name_the_store_would_refuse_is_refused_here() {
    // The image store refuses names that could be paths ("..", ".x"): a lab
    // naming one must fail validation, not its deploy.
    let text = "name: t\nnodes:\n  a: {image: ..}\n";
    assert_eq!(
        error(text),
        "lab.yaml:3:14: nodes.a.image: image name \"..\" cannot be used\n  help: use letters, digits, '-', '_' and '.', not starting with '.', at most 64 characters (see `labspan image list`)"
    );
}

#[test]
fn resilience_period_too_short_without_unit_or_unknown_key() {
    assert_eq!(
        error(&lab("nodes: {a: {}}\nresilience: {checkpoint_every: 5s}\n")),
        "lab.yaml:4:32: resilience.checkpoint_every: checkpoint_every \"5s\" is too short: at least 10 s between automatic checkpoints"
    );
    assert_eq!(
        error(&lab("nodes: {a: {}}\nresilience: {checkpoint_every: 15}\n")),
        "lab.yaml:4:32: resilience.checkpoint_every: checkpoint_every \"15\" is not a period like 15m (units: s, m, h)"
    );
    let unknown = error(&lab("nodes: {a: {}}\nresilience: {checkpoint_evry: 15m}\n"));
    assert!(
        unknown.starts_with("lab.yaml:4:14: resilience: unknown key \"checkpoint_evry\""),
        "{unknown}"
    );
    assert_eq!(
        error(&lab("nodes: {a: {}}\nresilience: 15m\n")),
        "lab.yaml:4:13: resilience: expected a mapping like {checkpoint_every: 15m}, found a scalar"
    );
}

#[test]
fn resilience_period_is_read() {
    let text = lab("nodes: {a: {}}\nresilience:\n  checkpoint_every: 15m\n");
    let loaded = parse("lab.yaml", &text).expect("a valid lab");
    assert_eq!(
        loaded.resilience.checkpoint_every,
        Some(std::time::Duration::from_secs(900))
    );
}
