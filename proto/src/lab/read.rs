//! Walks the YAML tree of a lab file into a raw form that still knows where
//! each value was written, reporting every shape and value error on the way.
//! Cross-references (does this node exist? is this NIC used twice?) are
//! checked later, in `check`, over the whole raw lab.

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node as Yaml;

use super::model::{Resilience, RestartPolicy};
use super::units;
use crate::names::valid;
use crate::yaml::{check_keys, join, missing, want_map, want_str, Pos, Sink};

mod link;
mod node;
mod placement;
mod raw;
mod verify;

use link::{read_lans, read_links};
use node::{read_defaults, read_nodes};
use placement::read_placement;
pub(crate) use raw::{RawCheck, RawEndpoint, RawGroup, RawLab, RawLan, RawLink, RawNode, Ref};
use verify::read_verify;

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
