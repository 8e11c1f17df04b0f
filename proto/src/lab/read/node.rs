//! `defaults:` and `nodes:`: images, memory, CPUs, restart policies, NICs
//! with their addresses and MTUs, and the files put in guests.

use std::collections::BTreeMap;
use std::str::FromStr;

use ipnet::IpNet;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node as Yaml;

use super::{
    name_problem, Defaults, RawNode, DEFAULT_KEYS, DEFAULT_MEMORY_MIB, MAX_CPUS, MAX_MEMORY_MIB,
    MIN_MEMORY_MIB, MTU_RANGE, NIC_KEYS, NODE_KEYS,
};
use crate::lab::model::{Nic, Node, RestartPolicy};
use crate::lab::units;
use crate::names::valid;
use crate::yaml::{check_keys, is_null, join, str_or_list, want_map, want_str, Pos, Sink};

pub(super) fn read_defaults(sink: &mut Sink, n: &Yaml) -> Defaults {
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

pub(super) fn read_nodes(sink: &mut Sink, n: &Yaml, defaults: &Defaults) -> Vec<RawNode> {
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
