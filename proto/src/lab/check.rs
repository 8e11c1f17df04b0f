//! Checks that need the whole lab: references between nodes, segments,
//! placement hints and checks. Runs over the raw lab so that every error
//! still points at the place the user wrote.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::model::HostSelector;
use super::read::{name_problem, RawEndpoint, RawGroup, RawLab, RawNode};
use crate::suggest::closest;
use crate::yaml::{Pos, Sink};

/// Above this many nodes, "did you mean" is not worth a scan per error.
const SUGGEST_LIMIT: usize = 10_000;

/// A fast multiplicative hasher (the rustc "Fx" hash): the keys are names
/// from the user's own lab file, so SipHash's flooding resistance buys
/// nothing, and hashing dominates checking a 100,000-node lab.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Fx = std::hash::BuildHasherDefault<FxHasher>;
type HashMap<K, V> = std::collections::HashMap<K, V, Fx>;
type HashSet<K> = std::collections::HashSet<K, Fx>;

/// Runs every cross-reference check.
pub(crate) fn check_lab(sink: &mut Sink, lab: &RawLab) {
    let nodes: HashMap<&str, &RawNode> = lab.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    check_counts(sink, lab);
    check_endpoints(sink, lab, &nodes);
    check_segment_addresses(sink, lab, &nodes);
    check_placement(sink, lab, &nodes);
    check_verify(sink, lab, &nodes);
}

/// Reports a reference to a node that is not declared.
fn unknown_node(
    sink: &mut Sink,
    nodes: &HashMap<&str, &RawNode>,
    name: &str,
    pos: Pos,
    path: &str,
    what: &str,
) {
    let guess = if nodes.len() <= SUGGEST_LIMIT {
        closest(name, nodes.keys().copied())
    } else {
        None
    };
    let help = match guess {
        Some(g) => format!("did you mean \"{g}\"?"),
        None => "declare it under nodes:".to_string(),
    };
    sink.error(
        pos,
        path,
        format!("{what} \"{name}\" does not exist"),
        Some(help),
    );
}

fn check_counts(sink: &mut Sink, lab: &RawLab) {
    for link in &lab.links {
        match link.written {
            Some(2) | None => {}
            Some(n) => {
                let msg = format!("a link joins exactly two NICs; this one has {n}");
                let help = if n > 2 {
                    "for three or more members, use a LAN under lans:"
                } else {
                    "add the other end, e.g. [a:eth0, b:eth0]"
                };
                sink.error(link.pos, &link.path, msg, Some(help.into()));
            }
        }
    }
    for lan in &lab.lans {
        if lan.members.len() < 2 {
            let msg = format!(
                "a LAN needs at least two members; this one has {}",
                lan.members.len()
            );
            let help = "add members, or use a link for two NICs";
            sink.error(lan.pos, &lan.path, msg, Some(help.into()));
        }
    }
}

/// Every endpoint with the paths of its segment and of its list, in file order.
fn endpoints_in_file_order(lab: &RawLab) -> Vec<(&str, &str, &RawEndpoint)> {
    let links = lab.links.iter().flat_map(|l| {
        l.ends
            .iter()
            .map(|e| (l.path.as_str(), l.ends_path.as_str(), e))
    });
    let lans = lab.lans.iter().flat_map(|l| {
        l.members
            .iter()
            .map(|e| (l.path.as_str(), l.path.as_str(), e))
    });
    let mut all: Vec<_> = links.chain(lans).collect();
    all.sort_by_key(|(_, _, e)| e.pos);
    all
}

fn check_endpoints(sink: &mut Sink, lab: &RawLab, nodes: &HashMap<&str, &RawNode>) {
    let mut used: HashMap<(&str, &str), (&str, Pos)> = HashMap::default();
    let endpoints = endpoints_in_file_order(lab);
    // Every NIC any segment names, so a suggested NIC is really free; built
    // only once a NIC turns out to be used twice.
    let mut named: Option<HashSet<(&str, &str)>> = None;
    for &(segment, list, e) in &endpoints {
        let (node, nic) = (e.ep.node.as_str(), e.ep.nic.as_str());
        let path = || format!("{list}[{}]", e.index);
        let Some(raw) = nodes.get(node) else {
            unknown_node(sink, nodes, node, e.pos, &path(), "node");
            continue;
        };
        if !raw.node.nics.contains_key(nic) {
            if let Some((msg, help)) = name_problem("NIC", nic) {
                sink.error(e.pos, &path(), msg, Some(help));
                continue;
            }
        }
        if let Some((first, at)) = used.insert((node, nic), (segment, e.pos)) {
            let msg = format!("NIC {} is already in {first} (line {})", e.ep, at.line);
            let named = named.get_or_insert_with(|| {
                let all = endpoints
                    .iter()
                    .map(|(_, _, e)| (e.ep.node.as_str(), e.ep.nic.as_str()));
                all.collect()
            });
            let free = free_nic(raw, |n| named.contains(&(node, n)));
            let help = format!(
                "a NIC can be in only one link or LAN; use another NIC, e.g. {node}:{free}"
            );
            sink.error(e.pos, &path(), msg, Some(help));
            used.insert((node, nic), (first, at));
        }
    }
}

/// The first `ethN` that the node neither declares nor uses.
fn free_nic(raw: &RawNode, used: impl Fn(&str) -> bool) -> String {
    (0..)
        .map(|i| format!("eth{i}"))
        .find(|n| !raw.node.nics.contains_key(n) && !used(n))
        .unwrap_or_default()
}

fn check_segment_addresses(sink: &mut Sink, lab: &RawLab, nodes: &HashMap<&str, &RawNode>) {
    let links = lab.links.iter().map(|l| (l.path.as_str(), &l.ends));
    let lans = lab.lans.iter().map(|l| (l.path.as_str(), &l.members));
    // Reused across segments: most segments are small, allocation would dominate.
    let mut seen: HashMap<IpAddr, &RawEndpoint> = HashMap::default();
    let mut nics: HashSet<(&str, &str)> = HashSet::default();
    for (segment, members) in links.chain(lans) {
        seen.clear();
        nics.clear();
        for e in members {
            let Some(raw) = nodes.get(e.ep.node.as_str()) else {
                continue;
            };
            if !nics.insert((&e.ep.node, &e.ep.nic)) {
                continue; // the same NIC twice is reported by check_endpoints
            }
            let Some(nic) = raw.node.nics.get(&e.ep.nic) else {
                continue;
            };
            let positions = raw.ip_pos.get(&e.ep.nic);
            for (k, net) in nic.ip.iter().enumerate() {
                let Some(first) = seen.insert(net.addr(), e) else {
                    continue;
                };
                let (pos, path) = positions
                    .and_then(|p| p.get(k))
                    .cloned()
                    .unwrap_or_default();
                let msg = format!(
                    "{} is also the address of {} on {segment}",
                    net.addr(),
                    first.ep
                );
                let help = "give each NIC on a segment its own address";
                sink.error(pos, &path, msg, Some(help.into()));
                seen.insert(net.addr(), first);
            }
        }
    }
}

/// Union-find over node names, for `together` groups.
#[derive(Default)]
struct Components<'a> {
    parent: HashMap<&'a str, &'a str>,
}

impl<'a> Components<'a> {
    fn find(&mut self, n: &'a str) -> &'a str {
        let mut root = n;
        while let Some(&p) = self.parent.get(root) {
            if p == root {
                break;
            }
            root = p;
        }
        self.parent.insert(n, root);
        root
    }

    fn union(&mut self, a: &'a str, b: &'a str) {
        let (ra, rb) = (self.find(a), self.find(b));
        self.parent.insert(rb, ra);
        self.parent.entry(ra).or_insert(ra);
    }
}

fn check_placement(sink: &mut Sink, lab: &RawLab, nodes: &HashMap<&str, &RawNode>) {
    let mut pinned: HashMap<&str, &str> = HashMap::default();
    for (r, sel) in &lab.pins {
        if !nodes.contains_key(r.name.as_str()) {
            unknown_node(sink, nodes, &r.name, r.pos, &r.path, "node");
        } else if let HostSelector::Host(h) = sel {
            pinned.insert(&r.name, h);
        }
    }
    for g in lab.together.iter().chain(&lab.spread) {
        check_group_members(sink, g, nodes);
    }
    let mut comps = Components::default();
    // Host a component is pinned to, and the node that pins it.
    let mut comp_pin: HashMap<&str, (&str, &str)> =
        pinned.iter().map(|(n, h)| (*n, (*n, *h))).collect();
    for g in &lab.together {
        let mut hosts: BTreeMap<&str, &str> = BTreeMap::new();
        for m in &g.members {
            let root = comps.find(&m.name);
            if let Some((node, host)) = comp_pin.get(root) {
                hosts.entry(host).or_insert(node);
            }
        }
        if hosts.len() > 1 {
            let list: Vec<String> = hosts
                .iter()
                .map(|(h, n)| format!("\"{n}\" on {h}"))
                .collect();
            let msg = format!(
                "this group must run on one host, but its nodes are pinned apart: {}",
                list.join(", ")
            );
            let help = "pin them to the same host, or drop a pin";
            sink.error(g.pos, &g.path, msg, Some(help.into()));
        }
        let pin = hosts.iter().next().map(|(h, n)| (*n, *h));
        for m in g.members.iter().skip(1) {
            comps.union(&g.members[0].name, &m.name);
        }
        if let (Some(pin), Some(first)) = (pin, g.members.first()) {
            let root = comps.find(&first.name);
            comp_pin.insert(root, pin);
        }
    }
    for g in &lab.spread {
        check_spread(sink, g, &mut comps, &comp_pin);
    }
}

fn check_group_members(sink: &mut Sink, g: &RawGroup, nodes: &HashMap<&str, &RawNode>) {
    if g.members.len() < 2 {
        let msg = format!(
            "a group needs at least two nodes; this one has {}",
            g.members.len()
        );
        sink.error(
            g.pos,
            &g.path,
            msg,
            Some("add nodes, or remove the group".into()),
        );
    }
    let mut seen = HashSet::default();
    for m in &g.members {
        if !nodes.contains_key(m.name.as_str()) {
            unknown_node(sink, nodes, &m.name, m.pos, &m.path, "node");
        } else if !seen.insert(m.name.as_str()) {
            let msg = format!("node \"{}\" is listed twice in this group", m.name);
            sink.error(m.pos, &m.path, msg, Some("remove one of them".into()));
        }
    }
}

fn check_spread<'a>(
    sink: &mut Sink,
    g: &'a RawGroup,
    comps: &mut Components<'a>,
    comp_pin: &HashMap<&'a str, (&'a str, &'a str)>,
) {
    let mut by_comp: HashMap<&str, &str> = HashMap::default();
    let mut by_host: HashMap<&str, &str> = HashMap::default();
    let mut seen = HashSet::default();
    for m in &g.members {
        if !seen.insert(m.name.as_str()) {
            continue; // reported by check_group_members
        }
        let root = comps.find(&m.name);
        if let Some(other) = by_comp.insert(root, &m.name) {
            let msg = format!("\"{other}\" and \"{}\" must run apart (this group) and together (placement.together)", m.name);
            let help = "remove one of the two hints";
            sink.error(m.pos, &m.path, msg, Some(help.into()));
            continue;
        }
        if let Some((_, host)) = comp_pin.get(root) {
            if let Some(other) = by_host.insert(host, &m.name) {
                let msg = format!(
                    "\"{other}\" and \"{}\" must run apart, but both are pinned to {host}",
                    m.name
                );
                let help = "pin one of them elsewhere, or drop it from this group";
                sink.error(m.pos, &m.path, msg, Some(help.into()));
            }
        }
    }
}

fn check_verify(sink: &mut Sink, lab: &RawLab, nodes: &HashMap<&str, &RawNode>) {
    for c in &lab.verify {
        for r in &c.nodes {
            if !nodes.contains_key(r.name.as_str()) {
                unknown_node(sink, nodes, &r.name, r.pos, &r.path, "node");
            }
        }
        if let Some(to) = &c.to_node {
            if !nodes.contains_key(to.name.as_str()) {
                let guess = closest(&to.name, nodes.keys().copied())
                    .map(|g| format!("did you mean \"{g}\"?"));
                let msg = format!(
                    "ping target \"{}\" is neither an IP address nor a node of this lab",
                    to.name
                );
                let help = guess
                    .unwrap_or_else(|| "write an address like 198.19.1.2 or a node name".into());
                sink.error(to.pos, &to.path, msg, Some(help));
            }
        }
    }
}
