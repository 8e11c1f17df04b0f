//! A valid lab survives `to_yaml` → `parse` unchanged.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::collections::BTreeMap;

use ipnet::IpNet;
use labspan_proto::lab::{
    parse, to_yaml, Check, Endpoint, HostSelector, Impairment, Lab, Lan, Link, Nic, Node,
    PlacementHints, Resilience, RestartPolicy,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct NodeSpec {
    suffix: String,
    image: String,
    memory_mib: u64,
    cpus: u32,
    exec: Vec<String>,
    files: BTreeMap<String, String>,
    loose_nics: Vec<Option<u32>>,
    pin: Option<(bool, u8)>,
    restart: RestartPolicy,
}

#[derive(Debug, Clone)]
struct SegSpec {
    lan: bool,
    members: Vec<usize>,
    impairment: Impairment,
    ips: bool,
    mtu: Option<u32>,
}

#[derive(Debug, Clone)]
enum CheckSpec {
    PingNode(usize, usize),
    PingIp(usize, String),
    Exec(usize, String, Option<String>, Option<u64>),
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        "[a-z0-9_-]{0,5}",
        "[a-z][a-z0-9._-]{0,8}",
        32u64..=65536,
        1u32..=64,
        vec("[ -~]{0,12}", 0..3),
        btree_map("/[a-z0-9/._-]{0,10}", "[a-z0-9._/-]{1,10}", 0..3),
        vec(option::of(68u32..=9000), 0..3),
        option::of((any::<bool>(), any::<u8>())),
        prop::sample::select(RestartPolicy::ALL.to_vec()),
    )
        .prop_map(
            |(suffix, image, memory_mib, cpus, exec, files, loose_nics, pin, restart)| NodeSpec {
                suffix,
                image,
                memory_mib,
                cpus,
                exec,
                files,
                loose_nics,
                pin,
                restart,
            },
        )
}

fn impairment() -> impl Strategy<Value = Impairment> {
    (
        option::of(0u64..10_000_000),
        option::of(0u64..1_000_000),
        option::of(0.0f64..=100.0),
        option::of(1u64..100_000_000),
    )
        .prop_map(
            |(delay_us, jitter_us, loss_percent, rate_kbit)| Impairment {
                delay_us,
                jitter_us,
                loss_percent,
                rate_kbit,
            },
        )
}

fn seg_spec(nodes: usize) -> impl Strategy<Value = SegSpec> {
    (
        any::<bool>(),
        vec(0..nodes, 2..5),
        impairment(),
        any::<bool>(),
        option::of(68u32..=9000),
    )
        .prop_map(|(lan, mut members, impairment, ips, mtu)| {
            if !lan {
                members.truncate(2);
            }
            let impairment = if lan {
                Impairment::default()
            } else {
                impairment
            };
            SegSpec {
                lan,
                members,
                impairment,
                ips,
                mtu,
            }
        })
}

fn check_spec(nodes: usize) -> impl Strategy<Value = CheckSpec> {
    prop_oneof![
        (0..nodes, 0..nodes).prop_map(|(a, b)| CheckSpec::PingNode(a, b)),
        (
            0..nodes,
            prop_oneof!["198\\.19\\.[1-9][0-9]?\\.[1-9]", "2001:db8::[1-9a-f]{1,4}"]
        )
            .prop_map(|(a, ip)| CheckSpec::PingIp(a, ip)),
        (
            0..nodes,
            "[ -~]{1,12}",
            option::of("[ -~]{0,8}"),
            option::of(1..=3_600_000_000u64)
        )
            .prop_map(|(a, c, e, t)| CheckSpec::Exec(a, c, e, t)),
    ]
}

fn lab_strategy() -> impl Strategy<Value = Lab> {
    vec(node_spec(), 1..7).prop_flat_map(|nodes| {
        let n = nodes.len();
        (
            "[a-z0-9][a-z0-9-]{0,10}",
            Just(nodes),
            vec(seg_spec(n), 0..6),
            vec(check_spec(n), 0..4),
            any::<bool>(),
        )
            .prop_map(|(name, nodes, segs, checks, together)| {
                build(name, &nodes, &segs, &checks, together)
            })
    })
}

/// Builds a lab that is valid by construction from the specs.
fn build(
    name: String,
    specs: &[NodeSpec],
    segs: &[SegSpec],
    checks: &[CheckSpec],
    together: bool,
) -> Lab {
    let names: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| format!("n{i}-{}", s.suffix))
        .collect();
    let mut nodes: BTreeMap<String, Node> = specs
        .iter()
        .zip(&names)
        .map(|(s, name)| {
            let nics = s
                .loose_nics
                .iter()
                .enumerate()
                .map(|(k, mtu)| {
                    (
                        format!("x{k}"),
                        Nic {
                            ip: Vec::new(),
                            mtu: *mtu,
                        },
                    )
                })
                .collect();
            let node = Node {
                image: s.image.clone(),
                memory_mib: s.memory_mib,
                cpus: s.cpus,
                nics,
                exec: s.exec.clone(),
                files: s.files.clone(),
                restart: s.restart,
            };
            (name.clone(), node)
        })
        .collect();
    let mut links = Vec::new();
    let mut lans = BTreeMap::new();
    for (si, seg) in segs.iter().enumerate() {
        let members: Vec<Endpoint> = seg
            .members
            .iter()
            .enumerate()
            .map(|(k, &ni)| {
                let nic = format!("s{si}m{k}");
                let mut ip: Vec<IpNet> = Vec::new();
                if seg.ips {
                    ip.push(
                        format!("198.19.{si}.{}/24", k + 1)
                            .parse()
                            .unwrap_or_else(|e| panic!("{e}")),
                    );
                    ip.push(
                        format!("2001:db8:{si}::{}/64", k + 1)
                            .parse()
                            .unwrap_or_else(|e| panic!("{e}")),
                    );
                }
                if let Some(node) = nodes.get_mut(&names[ni]) {
                    node.nics.insert(nic.clone(), Nic { ip, mtu: seg.mtu });
                }
                Endpoint {
                    node: names[ni].clone(),
                    nic,
                }
            })
            .collect();
        if seg.lan {
            lans.insert(format!("lan{si}"), Lan { members });
        } else if let [a, b] = members.as_slice() {
            links.push(Link {
                endpoints: [a.clone(), b.clone()],
                impairment: seg.impairment,
            });
        }
    }
    Lab {
        resilience: Resilience {
            checkpoint_every: together.then(|| std::time::Duration::from_secs(900)),
        },
        placement: placement(specs, &names, together),
        verify: verify(&names, checks),
        name,
        nodes,
        links,
        lans,
    }
}

/// Pins only even nodes (each to its own host), groups odd nodes together in
/// pairs, spreads the even ones: never contradictory.
fn placement(specs: &[NodeSpec], names: &[String], together: bool) -> PlacementHints {
    let mut p = PlacementHints::default();
    for (i, s) in specs.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        if let Some((host, x)) = s.pin {
            let sel = if host {
                HostSelector::Host(format!("h{i}-{x}"))
            } else {
                HostSelector::Label(format!("l{x}"))
            };
            p.pin.insert(names[i].clone(), sel);
        }
    }
    if together {
        let odd: Vec<String> = names.iter().skip(1).step_by(2).cloned().collect();
        p.together = odd.chunks_exact(2).map(<[String]>::to_vec).collect();
        let even: Vec<String> = names.iter().step_by(2).cloned().collect();
        if even.len() >= 2 {
            p.spread = vec![even];
        }
    }
    p
}

fn verify(names: &[String], checks: &[CheckSpec]) -> Vec<Check> {
    checks
        .iter()
        .map(|c| match c {
            CheckSpec::PingNode(a, b) => Check::Ping {
                from: names[*a].clone(),
                to: names[*b].clone(),
                timeout: None,
            },
            CheckSpec::PingIp(a, ip) => Check::Ping {
                from: names[*a].clone(),
                to: ip.clone(),
                timeout: Some(std::time::Duration::from_secs(5)),
            },
            CheckSpec::Exec(a, cmd, expect, timeout_us) => Check::Exec {
                node: names[*a].clone(),
                cmd: cmd.clone(),
                expect: expect.clone(),
                timeout: timeout_us.map(std::time::Duration::from_micros),
            },
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn valid_lab_survives_serialize_then_parse(lab in lab_strategy()) {
        let text = to_yaml(&lab);
        match parse("roundtrip.yaml", &text) {
            Ok(back) => prop_assert_eq!(back, lab),
            Err(e) => prop_assert!(false, "to_yaml output rejected:\n{}\n---\n{}", e, text),
        }
    }
}

#[test]
fn demo_labs_survive_serialize_then_parse() {
    for demo in ["ping", "ospf-triangle", "sip"] {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../demos")
            .join(demo)
            .join("lab.yaml");
        let lab = labspan_proto::lab::load(&path).unwrap_or_else(|e| panic!("{demo}: {e}"));
        let back = parse(demo, &to_yaml(&lab)).unwrap_or_else(|e| panic!("{demo}: {e}"));
        assert_eq!(back, lab, "{demo}");
    }
}
