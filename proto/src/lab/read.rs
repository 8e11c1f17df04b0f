//! Walks the YAML tree of a lab file into a raw form that still knows where
//! each value was written, reporting every shape and value error on the way.
//! Cross-references (does this node exist? is this NIC used twice?) are
//! checked later, in `check`, over the whole raw lab.

use std::collections::BTreeMap;
use std::str::FromStr;

use ipnet::IpNet;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::Node as Yaml;

use super::model::{
    Check, Endpoint, HostSelector, Impairment, Nic, Node, Resilience, RestartPolicy,
};
use super::units;
use crate::names::valid;
use crate::yaml::{
    check_keys, is_null, is_null_scalar, join, kind, missing, str_or_list, want_map, want_seq,
    want_str, Pos, Sink,
};

/// Smallest guest memory we accept; less cannot boot a Linux kernel.
pub(crate) const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory we accept (1 TiB); more is a typo.
pub(crate) const MAX_MEMORY_MIB: u64 = 1024 * 1024;
/// Largest CPU count we accept; more is a typo under TCG.
pub(crate) const MAX_CPUS: u32 = 64;
/// Guest MTU bounds (IPv4 minimum; jumbo frames).
pub(crate) const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=9000;
/// Memory of a node when neither it nor `defaults` says.
pub(crate) const DEFAULT_MEMORY_MIB: u64 = 256;

/// A reference to a node by name, where it was written.
pub(crate) struct Ref {
    pub name: String,
    pub pos: Pos,
    pub path: String,
}

/// `node:nic` where it was written.
pub(crate) struct RawEndpoint {
    pub ep: Endpoint,
    pub pos: Pos,
    /// Index in its list; the path is `{list path}[index]`, built only on error.
    pub index: usize,
}

/// A node with the positions of the values checks point at.
pub(crate) struct RawNode {
    pub name: String,
    pub node: Node,
    /// NIC name → position and path of each `ip` entry, parallel to `Nic::ip`.
    pub ip_pos: BTreeMap<String, Vec<(Pos, String)>>,
    /// Guest path → position of the `files` entry.
    pub file_pos: BTreeMap<String, Pos>,
}

/// A link as written (any number of endpoints, checked later).
pub(crate) struct RawLink {
    pub pos: Pos,
    pub path: String,
    /// Path of the endpoint list: `links[0]` or `links[0].endpoints`.
    pub ends_path: String,
    /// The endpoints that parsed.
    pub ends: Vec<RawEndpoint>,
    /// How many endpoints were written; `None` when the list was unreadable
    /// (already reported), so the count is not checked again.
    pub written: Option<usize>,
    pub impairment: Impairment,
}

/// A LAN as written.
pub(crate) struct RawLan {
    pub name: String,
    pub pos: Pos,
    pub path: String,
    pub members: Vec<RawEndpoint>,
}

/// A `together` or `spread` group.
pub(crate) struct RawGroup {
    pub pos: Pos,
    pub path: String,
    pub members: Vec<Ref>,
}

/// A `verify` entry and the node names it refers to.
pub(crate) struct RawCheck {
    pub check: Check,
    /// Names that must be nodes (`from`, `node`).
    pub nodes: Vec<Ref>,
    /// `ping.to` when it is not an IP address, so it must be a node.
    pub to_node: Option<Ref>,
}

/// The whole lab as written, in file order.
#[derive(Default)]
pub(crate) struct RawLab {
    pub name: String,
    pub nodes: Vec<RawNode>,
    pub links: Vec<RawLink>,
    pub lans: Vec<RawLan>,
    pub pins: Vec<(Ref, HostSelector)>,
    pub together: Vec<RawGroup>,
    pub spread: Vec<RawGroup>,
    pub verify: Vec<RawCheck>,
    pub resilience: Resilience,
}

/// What `defaults:` sets.
#[derive(Default)]
struct Defaults {
    image: Option<String>,
    memory_mib: Option<u64>,
    cpus: Option<u32>,
    restart: Option<RestartPolicy>,
}

const TOP_KEYS: &[&str] = &[
    "name",
    "defaults",
    "nodes",
    "links",
    "lans",
    "placement",
    "verify",
    "resilience",
];
const NODE_KEYS: &[&str] = &[
    "image", "memory", "cpus", "nics", "exec", "files", "restart",
];
const DEFAULT_KEYS: &[&str] = &["image", "memory", "cpus", "restart"];
const NIC_KEYS: &[&str] = &["ip", "mtu"];
const LINK_KEYS: &[&str] = &["endpoints", "delay", "jitter", "loss", "rate"];
const PLACEMENT_KEYS: &[&str] = &["pin", "together", "spread"];
const VERIFY_KEYS: &[&str] = &["ping", "exec"];
const PING_KEYS: &[&str] = &["from", "to", "timeout"];
const EXEC_KEYS: &[&str] = &["node", "cmd", "expect", "timeout"];
const RESILIENCE_KEYS: &[&str] = &["checkpoint_every"];

/// Every key a lab file may use, by where it goes: `docs/lab-file.md` must
/// name each one (a test in `tests/tests/docs_examples.rs` checks).
pub const LAB_FILE_KEYS: &[(&str, &[&str])] = &[
    ("the top level", TOP_KEYS),
    ("a node", NODE_KEYS),
    ("defaults", DEFAULT_KEYS),
    ("a NIC", NIC_KEYS),
    ("a link", LINK_KEYS),
    ("placement", PLACEMENT_KEYS),
    ("a check", VERIFY_KEYS),
    ("a ping check", PING_KEYS),
    ("an exec check", EXEC_KEYS),
    ("resilience", RESILIENCE_KEYS),
];

/// Whether `name` can name a `kind` (node, NIC, LAN): [`valid`]'s rule,
/// as a diagnostic's message and help.
pub(crate) fn name_problem(kind: &str, name: &str) -> Option<(String, String)> {
    let checked = match kind {
        "node" => valid::node(name),
        "NIC" => valid::nic(name),
        _ => valid::lan(name),
    };
    checked.err().map(|e| (e.why, e.help))
}

/// Reads the whole lab file.
pub(crate) fn read_lab(sink: &mut Sink, root: &Yaml) -> RawLab {
    let mut lab = RawLab::default();
    let Some(top) = want_map(sink, root, "", "a mapping with name, nodes, links, ...") else {
        return lab;
    };
    check_keys(sink, top, "", TOP_KEYS);
    lab.name = read_lab_name(sink, top);
    let defaults = match top.get_node("defaults") {
        Some(d) => read_defaults(sink, d),
        None => Defaults::default(),
    };
    match top.get_node("nodes") {
        Some(n) => lab.nodes = read_nodes(sink, n, &defaults),
        None => missing(sink, top, "", "nodes", "nodes: {a: {image: tiny}}"),
    }
    if let Some(n) = top.get_node("links") {
        lab.links = read_links(sink, n);
    }
    if let Some(n) = top.get_node("lans") {
        lab.lans = read_lans(sink, n);
    }
    if let Some(n) = top.get_node("placement") {
        read_placement(sink, n, &mut lab);
    }
    if let Some(n) = top.get_node("verify") {
        lab.verify = read_verify(sink, n);
    }
    if let Some(n) = top.get_node("resilience") {
        lab.resilience = read_resilience(sink, n);
    }
    lab
}

fn read_resilience(sink: &mut Sink, n: &Yaml) -> Resilience {
    let Some(map) = want_map(
        sink,
        n,
        "resilience",
        "a mapping like {checkpoint_every: 15m}",
    ) else {
        return Resilience::default();
    };
    check_keys(sink, map, "resilience", RESILIENCE_KEYS);
    Resilience {
        checkpoint_every: read_unit(
            sink,
            map,
            "resilience",
            "checkpoint_every",
            units::parse_checkpoint_every,
        ),
    }
}

fn read_lab_name(sink: &mut Sink, top: &MarkedMappingNode) -> String {
    let Some(n) = top.get_node("name") else {
        missing(sink, top, "", "name", "name: my-lab");
        return String::new();
    };
    let Some(name) = want_str(sink, n, "name", "the lab's name") else {
        return String::new();
    };
    if let Err(e) = valid::lab(name) {
        sink.error(Pos::of(n), "name", e.why, Some(e.help));
    }
    name.to_string()
}

fn read_defaults(sink: &mut Sink, n: &Yaml) -> Defaults {
    let mut d = Defaults::default();
    let Some(map) = want_map(
        sink,
        n,
        "defaults",
        "a mapping like {image: tiny, memory: 256MiB}",
    ) else {
        return d;
    };
    check_keys(sink, map, "defaults", DEFAULT_KEYS);
    d.image = map
        .get_node("image")
        .and_then(|v| read_image(sink, v, "defaults.image"));
    d.memory_mib = map
        .get_node("memory")
        .and_then(|v| read_memory(sink, v, "defaults.memory"));
    d.cpus = map
        .get_node("cpus")
        .and_then(|v| read_cpus(sink, v, "defaults.cpus"));
    d.restart = map
        .get_node("restart")
        .and_then(|v| read_restart(sink, v, "defaults.restart"));
    d
}

fn read_restart(sink: &mut Sink, n: &Yaml, path: &str) -> Option<RestartPolicy> {
    let text = want_str(sink, n, path, "a restart policy")?;
    let found = RestartPolicy::ALL
        .into_iter()
        .find(|p| p.as_str() == text.trim());
    if found.is_none() {
        let msg = format!("restart \"{text}\" is not a restart policy");
        let help = "use always, on-failure (the default) or never";
        sink.error(Pos::of(n), path, msg, Some(help.into()));
    }
    found
}

fn read_image(sink: &mut Sink, n: &Yaml, path: &str) -> Option<String> {
    let image = want_str(sink, n, path, "an image name")?;
    if let Err(e) = valid::image(image) {
        sink.error(Pos::of(n), path, e.why, Some(e.help));
        return None;
    }
    Some(image.to_string())
}

fn read_memory(sink: &mut Sink, n: &Yaml, path: &str) -> Option<u64> {
    let text = want_str(sink, n, path, "a memory size like 512MiB")?;
    let mib = match units::parse_memory_mib(text) {
        Ok(m) => m,
        Err(msg) => {
            sink.error(Pos::of(n), path, msg, Some("e.g. memory: 512MiB".into()));
            return None;
        }
    };
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        let msg = format!("memory {mib}MiB is out of range {MIN_MEMORY_MIB}MiB..=1TiB");
        let help = "give the guest what it needs to boot, e.g. 256MiB for a tiny image";
        sink.error(Pos::of(n), path, msg, Some(help.into()));
        return None;
    }
    Some(mib)
}

fn read_cpus(sink: &mut Sink, n: &Yaml, path: &str) -> Option<u32> {
    let text = want_str(sink, n, path, "a number of CPUs")?;
    match text.trim().parse::<u32>() {
        Ok(c) if (1..=MAX_CPUS).contains(&c) => Some(c),
        Ok(c) => {
            let msg = format!("cpus {c} is out of range 1..={MAX_CPUS}");
            sink.error(Pos::of(n), path, msg, Some("e.g. cpus: 1".into()));
            None
        }
        Err(_) => {
            let msg = format!("cpus \"{text}\" is not a whole number");
            sink.error(Pos::of(n), path, msg, Some("e.g. cpus: 1".into()));
            None
        }
    }
}

fn read_nodes(sink: &mut Sink, n: &Yaml, defaults: &Defaults) -> Vec<RawNode> {
    let Some(map) = want_map(sink, n, "nodes", "a mapping of node names to nodes") else {
        return Vec::new();
    };
    if map.is_empty() {
        let help = "add a node, e.g. nodes: {a: {image: tiny}}";
        sink.error(
            Pos::of(n),
            "nodes",
            "a lab needs at least one node".into(),
            Some(help.into()),
        );
    }
    map.iter()
        .map(|(k, v)| read_node(sink, k, v, defaults))
        .collect()
}

fn read_node(sink: &mut Sink, key: &MarkedScalarNode, body: &Yaml, defaults: &Defaults) -> RawNode {
    let name = key.as_str().to_string();
    let path = join("nodes", &name);
    let pos = Pos::of_span(key.span());
    if let Some((msg, help)) = name_problem("node", &name) {
        sink.error(pos, &path, msg, Some(help));
    }
    let mut raw = RawNode {
        name,
        node: Node {
            image: String::new(),
            memory_mib: defaults.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            cpus: defaults.cpus.unwrap_or(1),
            nics: BTreeMap::new(),
            exec: Vec::new(),
            files: BTreeMap::new(),
            restart: defaults.restart.unwrap_or_default(),
        },
        ip_pos: BTreeMap::new(),
        file_pos: BTreeMap::new(),
    };
    let map = if is_null(body) {
        None
    } else {
        want_map(
            sink,
            body,
            &path,
            "a mapping like {image: tiny, nics: {...}}",
        )
    };
    if let Some(map) = map {
        read_node_fields(sink, map, &path, &mut raw);
    }
    match (raw.node.image.is_empty(), &defaults.image) {
        (false, _) => {}
        (true, Some(image)) => raw.node.image = image.clone(),
        (true, None) => {
            let msg = format!("node \"{}\" has no image", raw.name);
            let help = format!("set {path}.image, or defaults.image for every node");
            sink.error(pos, &path, msg, Some(help));
        }
    }
    raw
}

fn read_node_fields(sink: &mut Sink, map: &MarkedMappingNode, path: &str, raw: &mut RawNode) {
    check_keys(sink, map, path, NODE_KEYS);
    if let Some(v) = map.get_node("image") {
        raw.node.image = read_image(sink, v, &join(path, "image")).unwrap_or_default();
        if raw.node.image.is_empty() {
            raw.node.image = "?".into(); // reported already; do not also say "no image"
        }
    }
    if let Some(m) = map
        .get_node("memory")
        .and_then(|v| read_memory(sink, v, &join(path, "memory")))
    {
        raw.node.memory_mib = m;
    }
    if let Some(c) = map
        .get_node("cpus")
        .and_then(|v| read_cpus(sink, v, &join(path, "cpus")))
    {
        raw.node.cpus = c;
    }
    if let Some(r) = map
        .get_node("restart")
        .and_then(|v| read_restart(sink, v, &join(path, "restart")))
    {
        raw.node.restart = r;
    }
    if let Some(v) = map.get_node("nics") {
        read_nics(sink, v, &join(path, "nics"), raw);
    }
    if let Some(v) = map.get_node("exec") {
        let p = join(path, "exec");
        let lines = str_or_list(sink, v, &p, "a shell command or a list of them");
        raw.node.exec = lines.into_iter().map(|(s, _, _)| s.to_string()).collect();
    }
    if let Some(v) = map.get_node("files") {
        read_files(sink, v, &join(path, "files"), raw);
    }
}

fn read_nics(sink: &mut Sink, n: &Yaml, path: &str, raw: &mut RawNode) {
    if is_null(n) {
        return;
    }
    let Some(map) = want_map(
        sink,
        n,
        path,
        "a mapping of NIC names to NICs, e.g. {eth0: {ip: [198.19.1.1/24]}}",
    ) else {
        return;
    };
    for (k, v) in map.iter() {
        let name = k.as_str();
        let p = join(path, name);
        if let Some((msg, help)) = name_problem("NIC", name) {
            sink.error(Pos::of_span(k.span()), &p, msg, Some(help));
        }
        let (nic, ip_pos) = read_nic(sink, v, &p);
        raw.node.nics.insert(name.to_string(), nic);
        if !ip_pos.is_empty() {
            raw.ip_pos.insert(name.to_string(), ip_pos);
        }
    }
}

fn read_nic(sink: &mut Sink, n: &Yaml, path: &str) -> (Nic, Vec<(Pos, String)>) {
    let mut nic = Nic::default();
    let mut ip_pos = Vec::new();
    if is_null(n) {
        return (nic, ip_pos);
    }
    let Some(map) = want_map(
        sink,
        n,
        path,
        "a mapping like {ip: [198.19.1.1/24], mtu: 1400}",
    ) else {
        return (nic, ip_pos);
    };
    check_keys(sink, map, path, NIC_KEYS);
    if let Some(v) = map.get_node("ip") {
        let p = join(path, "ip");
        for (text, pos, item_path) in
            str_or_list(sink, v, &p, "an address in CIDR form like 198.19.1.1/24")
        {
            if let Some(ip) = parse_cidr(sink, text, pos, &item_path) {
                nic.ip.push(ip);
                ip_pos.push((pos, item_path));
            }
        }
    }
    if let Some(v) = map.get_node("mtu") {
        nic.mtu = read_mtu(sink, v, &join(path, "mtu"));
    }
    (nic, ip_pos)
}

/// `addr/len` with std's address parser (ipnet's allocates per call).
fn cidr(text: &str) -> Option<IpNet> {
    let (addr, len) = text.trim().split_once('/')?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    IpNet::new(std::net::IpAddr::from_str(addr).ok()?, len.parse().ok()?).ok()
}

fn parse_cidr(sink: &mut Sink, text: &str, pos: Pos, path: &str) -> Option<IpNet> {
    if let Some(net) = cidr(text) {
        return Some(net);
    }
    let (msg, help) = if std::net::IpAddr::from_str(text.trim()).is_ok() {
        (
            format!("address \"{text}\" has no prefix length"),
            format!("write it in CIDR form, e.g. {}/24", text.trim()),
        )
    } else {
        (
            format!("\"{text}\" is not an IPv4 or IPv6 address in CIDR form"),
            "e.g. 198.19.1.1/24 or 2001:db8::1/64".to_string(),
        )
    };
    sink.error(pos, path, msg, Some(help));
    None
}

fn read_mtu(sink: &mut Sink, n: &Yaml, path: &str) -> Option<u32> {
    let text = want_str(sink, n, path, "an MTU in bytes")?;
    match text.trim().parse::<u32>() {
        Ok(m) if MTU_RANGE.contains(&m) => Some(m),
        _ => {
            let msg = format!("mtu {text} is out of range 68..=9000");
            let help = "leave mtu out to get the largest the segment allows";
            sink.error(Pos::of(n), path, msg, Some(help.into()));
            None
        }
    }
}

fn read_files(sink: &mut Sink, n: &Yaml, path: &str, raw: &mut RawNode) {
    let Some(map) = want_map(
        sink,
        n,
        path,
        "a mapping of guest paths to host paths, e.g. {/etc/motd: motd.txt}",
    ) else {
        return;
    };
    for (k, v) in map.iter() {
        let guest = k.as_str();
        let p = join(path, guest);
        if !guest.starts_with('/') {
            let msg = format!("guest path \"{guest}\" is not absolute");
            sink.error(
                Pos::of_span(k.span()),
                &p,
                msg,
                Some(format!("write /{guest}")),
            );
        }
        if let Some(host) = want_str(sink, v, &p, "a host path relative to the lab file") {
            raw.node.files.insert(guest.to_string(), host.to_string());
            raw.file_pos.insert(guest.to_string(), Pos::of(v));
        }
    }
}

/// Reads `NODE:NIC`.
fn read_endpoint(sink: &mut Sink, n: &Yaml, list_path: &str, index: usize) -> Option<RawEndpoint> {
    let Some(text) = n.as_scalar().filter(|s| !is_null_scalar(s)) else {
        let path = format!("{list_path}[{index}]");
        want_str(sink, n, &path, "an endpoint NODE:NIC")?;
        return None;
    };
    match text.split_once(':') {
        Some((node, nic)) if !node.is_empty() && !nic.is_empty() && !nic.contains(':') => {
            Some(RawEndpoint {
                ep: Endpoint {
                    node: node.to_string(),
                    nic: nic.to_string(),
                },
                pos: Pos::of(n),
                index,
            })
        }
        _ => {
            let msg = format!("endpoint \"{}\" is not NODE:NIC", text.as_str());
            let path = format!("{list_path}[{index}]");
            sink.error(Pos::of(n), &path, msg, Some("e.g. r1:eth0".into()));
            None
        }
    }
}

fn read_endpoints(sink: &mut Sink, seq: &MarkedSequenceNode, path: &str) -> Vec<RawEndpoint> {
    seq.iter()
        .enumerate()
        .filter_map(|(i, e)| read_endpoint(sink, e, path, i))
        .collect()
}

fn read_links(sink: &mut Sink, n: &Yaml) -> Vec<RawLink> {
    let Some(seq) = want_seq(sink, n, "links", "a list of links, e.g. [[a:eth0, b:eth0]]") else {
        return Vec::new();
    };
    let mut links = Vec::new();
    for (i, item) in seq.iter().enumerate() {
        let path = format!("links[{i}]");
        let mut link = RawLink {
            pos: Pos::of(item),
            ends_path: path.clone(),
            path: path.clone(),
            ends: Vec::new(),
            written: None,
            impairment: Impairment::default(),
        };
        match item {
            Yaml::Sequence(ends) => {
                link.ends = read_endpoints(sink, ends, &path);
                link.written = Some(ends.len());
            }
            Yaml::Mapping(map) => read_link_map(sink, map, &path, &mut link),
            _ => {
                let msg = format!("expected a link, found {}", kind(item));
                let help = "write [a:eth0, b:eth0] or {endpoints: [a:eth0, b:eth0], delay: 10ms}";
                sink.error(Pos::of(item), &path, msg, Some(help.into()));
                continue;
            }
        }
        links.push(link);
    }
    links
}

fn read_link_map(sink: &mut Sink, map: &MarkedMappingNode, path: &str, link: &mut RawLink) {
    check_keys(sink, map, path, LINK_KEYS);
    match map.get_node("endpoints") {
        Some(v) => {
            let p = join(path, "endpoints");
            if let Some(seq) = want_seq(sink, v, &p, "a list of two endpoints") {
                link.ends = read_endpoints(sink, seq, &p);
                link.written = Some(seq.len());
                link.ends_path = p;
            }
        }
        None => missing(sink, map, path, "endpoints", "endpoints: [a:eth0, b:eth0]"),
    }
    let imp = &mut link.impairment;
    imp.delay_us = read_unit(sink, map, path, "delay", |t| {
        units::parse_duration_us("delay", t)
    });
    imp.jitter_us = read_unit(sink, map, path, "jitter", |t| {
        units::parse_duration_us("jitter", t)
    });
    imp.loss_percent = read_unit(sink, map, path, "loss", units::parse_loss_percent);
    imp.rate_kbit = read_unit(sink, map, path, "rate", units::parse_rate_kbit);
    if imp.rate_kbit == Some(0) {
        let p = join(path, "rate");
        let pos = map.get_node("rate").map(Pos::of).unwrap_or_default();
        sink.error(
            pos,
            &p,
            "rate 0 would carry nothing".into(),
            Some("e.g. rate: 100Mbit".into()),
        );
    }
}

/// Reads an optional value with a unit parser.
fn read_unit<T>(
    sink: &mut Sink,
    map: &MarkedMappingNode,
    path: &str,
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    let v = map.get_node(key)?;
    let p = join(path, key);
    let text = want_str(sink, v, &p, "a value with a unit")?;
    parse(text)
        .map_err(|msg| sink.error(Pos::of(v), &p, msg, None))
        .ok()
}

fn read_lans(sink: &mut Sink, n: &Yaml) -> Vec<RawLan> {
    let Some(map) = want_map(sink, n, "lans", "a mapping of LAN names to member lists") else {
        return Vec::new();
    };
    let mut lans = Vec::new();
    for (k, v) in map.iter() {
        let name = k.as_str();
        let path = join("lans", name);
        if let Some((msg, help)) = name_problem("LAN", name) {
            sink.error(Pos::of_span(k.span()), &path, msg, Some(help));
        }
        let Some(seq) = want_seq(sink, v, &path, "a list of members, e.g. [r1:eth1, r2:eth1]")
        else {
            continue;
        };
        lans.push(RawLan {
            name: name.to_string(),
            pos: Pos::of_span(k.span()),
            members: read_endpoints(sink, seq, &path),
            path,
        });
    }
    lans
}

fn read_placement(sink: &mut Sink, n: &Yaml, lab: &mut RawLab) {
    let Some(map) = want_map(sink, n, "placement", "a mapping with pin, together, spread") else {
        return;
    };
    check_keys(sink, map, "placement", PLACEMENT_KEYS);
    if let Some(v) = map.get_node("pin") {
        lab.pins = read_pins(sink, v);
    }
    if let Some(v) = map.get_node("together") {
        lab.together = read_groups(sink, v, "placement.together");
    }
    if let Some(v) = map.get_node("spread") {
        lab.spread = read_groups(sink, v, "placement.spread");
    }
}

fn read_pins(sink: &mut Sink, n: &Yaml) -> Vec<(Ref, HostSelector)> {
    let what = "a mapping of node names to hosts, e.g. {a: lab-host-1}";
    let Some(map) = want_map(sink, n, "placement.pin", what) else {
        return Vec::new();
    };
    let mut pins = Vec::new();
    for (k, v) in map.iter() {
        let path = join("placement.pin", k.as_str());
        let Some(host) = want_str(sink, v, &path, "a host name or label:NAME") else {
            continue;
        };
        let sel = match host.strip_prefix("label:") {
            Some(l) => HostSelector::Label(l.to_string()),
            None => HostSelector::Host(host.to_string()),
        };
        let bad = match &sel {
            HostSelector::Host(h) | HostSelector::Label(h) => {
                h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control())
            }
        };
        if bad {
            let msg = format!("\"{host}\" is not a host name or label:NAME");
            sink.error(
                Pos::of(v),
                &path,
                msg,
                Some("e.g. lab-host-1 or label:fast".into()),
            );
            continue;
        }
        let node = Ref {
            name: k.as_str().to_string(),
            pos: Pos::of_span(k.span()),
            path,
        };
        pins.push((node, sel));
    }
    pins
}

fn read_groups(sink: &mut Sink, n: &Yaml, path: &str) -> Vec<RawGroup> {
    let Some(seq) = want_seq(sink, n, path, "a list of node groups, e.g. [[r1, dns]]") else {
        return Vec::new();
    };
    let mut groups = Vec::new();
    for (i, g) in seq.iter().enumerate() {
        let gpath = format!("{path}[{i}]");
        let Some(members) = want_seq(sink, g, &gpath, "a list of node names, e.g. [r1, dns]")
        else {
            continue;
        };
        let members = members
            .iter()
            .enumerate()
            .filter_map(|(j, m)| {
                let p = format!("{gpath}[{j}]");
                let name = want_str(sink, m, &p, "a node name")?;
                Some(Ref {
                    name: name.to_string(),
                    pos: Pos::of(m),
                    path: p,
                })
            })
            .collect();
        groups.push(RawGroup {
            pos: Pos::of(g),
            path: gpath,
            members,
        });
    }
    groups
}

fn read_verify(sink: &mut Sink, n: &Yaml) -> Vec<RawCheck> {
    let Some(seq) = want_seq(
        sink,
        n,
        "verify",
        "a list of checks, e.g. [{ping: {from: a, to: b}}]",
    ) else {
        return Vec::new();
    };
    let mut checks = Vec::new();
    for (i, item) in seq.iter().enumerate() {
        let path = format!("verify[{i}]");
        let Some(map) = want_map(sink, item, &path, "a check: {ping: {...}} or {exec: {...}}")
        else {
            continue;
        };
        check_keys(sink, map, &path, VERIFY_KEYS);
        let known: Vec<_> = map
            .iter()
            .filter(|(k, _)| VERIFY_KEYS.contains(&k.as_str()))
            .collect();
        match known.as_slice() {
            [(k, v)] if k.as_str() == "ping" => {
                checks.extend(read_ping(sink, v, &join(&path, "ping")))
            }
            [(_, v)] => checks.extend(read_exec(sink, v, &join(&path, "exec"))),
            [] if !map.is_empty() => {} // unknown key reported above
            _ => {
                let msg = format!(
                    "a check has exactly one of ping, exec; found {}",
                    known.len()
                );
                let help = "split it into one list item per check";
                sink.error(Pos::of(item), &path, msg, Some(help.into()));
            }
        }
    }
    checks
}

/// A required string field of a check, as a `Ref` (for node names).
fn field(
    sink: &mut Sink,
    map: &MarkedMappingNode,
    path: &str,
    key: &str,
    example: &str,
) -> Option<Ref> {
    let Some(v) = map.get_node(key) else {
        missing(sink, map, path, key, example);
        return None;
    };
    let p = join(path, key);
    let s = want_str(sink, v, &p, "a string")?;
    Some(Ref {
        name: s.to_string(),
        pos: Pos::of(v),
        path: p,
    })
}

fn read_ping(sink: &mut Sink, n: &Yaml, path: &str) -> Option<RawCheck> {
    let map = want_map(sink, n, path, "a mapping like {from: a, to: 198.19.1.2}")?;
    check_keys(sink, map, path, PING_KEYS);
    let from = field(sink, map, path, "from", "from: a");
    let to = field(sink, map, path, "to", "to: 198.19.1.2");
    let timeout = read_unit(sink, map, path, "timeout", units::parse_check_timeout);
    let (from, to) = (from?, to?);
    let is_ip = std::net::IpAddr::from_str(&to.name).is_ok();
    Some(RawCheck {
        check: Check::Ping {
            from: from.name.clone(),
            to: to.name.clone(),
            timeout,
        },
        nodes: vec![from],
        to_node: (!is_ip).then_some(to),
    })
}

fn read_exec(sink: &mut Sink, n: &Yaml, path: &str) -> Option<RawCheck> {
    let map = want_map(
        sink,
        n,
        path,
        "a mapping like {node: a, cmd: \"ip -o addr\"}",
    )?;
    check_keys(sink, map, path, EXEC_KEYS);
    let node = field(sink, map, path, "node", "node: a");
    let cmd = field(sink, map, path, "cmd", "cmd: \"ip -o addr\"");
    let expect = match map.get_node("expect") {
        Some(v) => {
            Some(want_str(sink, v, &join(path, "expect"), "a regular expression")?.to_string())
        }
        None => None,
    };
    let timeout = read_unit(sink, map, path, "timeout", units::parse_check_timeout);
    let (node, cmd) = (node?, cmd?);
    Some(RawCheck {
        check: Check::Exec {
            node: node.name.clone(),
            cmd: cmd.name,
            expect,
            timeout,
        },
        nodes: vec![node],
        to_node: None,
    })
}
