//! Turns a containerlab topology (`*.clab.yml`) into a labspan lab.
//!
//! Pure: text and options in, a validated `Lab` (and its lab-file text) or
//! every problem found out. Node fields are inherited the way containerlab
//! does it: a node's own value, else its group's, else its kind's (under
//! `topology.kinds`), else `topology.defaults`; `env` maps are merged and
//! `exec` lists joined in the opposite order (defaults first).
//!
//! containerlab runs containers, and VMs inside vrnetlab containers; labspan
//! runs only VMs. So `linux` and `generic_vm` nodes become guests of a
//! labspan image, vrnetlab kinds become guests of the qcow2 image the user
//! names for them, and everything that only makes sense for a container
//! (binds, ports, a pinned management address, ...) is refused with the node
//! and the field named, rather than silently dropped.

use std::collections::BTreeMap;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node as Yaml;

use crate::lab::{self, Diagnostic, Diagnostics, Endpoint, Lab, Lan, Link, PlacementHints};
use crate::names::valid;
use crate::suggest::closest;
use crate::yaml::{self, join};

mod links;
mod nodes;

use nodes::Stack;

/// vrnetlab kinds (with their legacy `vr-` names): a QEMU VM in a launcher
/// container, whose `eth0` is management and `eth1..N` the data NICs.
pub const VRNETLAB_KINDS: &[&str] = &[
    "nokia_sros",
    "vr-sros",
    "vr-nokia_sros",
    "juniper_vmx",
    "vr-vmx",
    "vr-juniper_vmx",
    "juniper_vqfx",
    "vr-vqfx",
    "vr-juniper_vqfx",
    "juniper_vsrx",
    "vr-vsrx",
    "vr-juniper_vsrx",
    "juniper_vjunosrouter",
    "juniper_vjunosswitch",
    "juniper_vjunosevolved",
    "cisco_csr1000v",
    "vr-csr",
    "vr-cisco_csr1000v",
    "cisco_c8000v",
    "cisco_cat9kv",
    "cisco_xrv",
    "vr-xrv",
    "vr-cisco_xrv",
    "cisco_xrv9k",
    "vr-xrv9k",
    "vr-cisco_xrv9k",
    "cisco_n9kv",
    "vr-n9kv",
    "vr-cisco_n9kv",
    "cisco_vios",
    "cisco_asav",
    "cisco_ftdv",
    "arista_veos",
    "vr-veos",
    "vr-arista_veos",
    "aruba_aoscx",
    "vr-aoscx",
    "vr-aruba_aoscx",
    "mikrotik_ros",
    "vr-ros",
    "vr-mikrotik_ros",
    "paloalto_panos",
    "vr-pan",
    "vr-paloalto_panos",
    "dell_ftosv",
    "vr-ftosv",
    "vr-dell_ftosv",
    "dell_sonic",
    "ciena_saos",
    "vr-ciena_saos",
    "huawei_vrp",
    "fortinet_fortigate",
    "checkpoint_cloudguard",
    "ipinfusion_ocnos",
    "f5_bigip-ve",
    "sonic-vm",
    "openwrt",
    "freebsd",
    "openbsd",
];

/// Kinds that exist only as containers (or host objects) in containerlab:
/// there is no disk image for labspan to boot.
const CONTAINER_KINDS: &[&str] = &[
    "nokia_srlinux",
    "srl",
    "nokia_srsim",
    "ceos",
    "arista_ceos",
    "crpd",
    "juniper_crpd",
    "juniper_csrx",
    "juniper_cjunosevolved",
    "cjunosevolved",
    "xrd",
    "cisco_xrd",
    "cisco_xrd_vrouter",
    "cisco_iol",
    "cisco_c8000",
    "c8000",
    "cisco_sdwan",
    "sonic-vs",
    "plvision_sonic",
    "cvx",
    "cumulus_cvx",
    "nvidia_cumulusvx",
    "arrcus_arcos",
    "fdio_vpp",
    "6wind_vsr",
    "vyosnetworks_vyos",
    "veesix_osvbng",
    "keysight_ixia-c-one",
    "spirent_stc",
    "rare",
    "ext-container",
    "host",
    "k8s-kind",
];

/// containerlab's bridges: a segment on the host, which is a LAN here.
const BRIDGE_KINDS: &[&str] = &["bridge", "ovs-bridge"];

/// Memory and CPUs of a vrnetlab guest when the topology does not say:
/// network operating systems rarely boot in less.
const VM_MEMORY_MIB: u64 = 2048;
const VM_CPUS: u32 = 2;
/// Memory and CPUs of a `linux` or `generic_vm` guest when nothing says.
const LINUX_MEMORY_MIB: u64 = 256;
const LINUX_CPUS: u32 = 1;
/// The labspan image a `linux` node gets when no `--image` names one.
pub const DEFAULT_LINUX_IMAGE: &str = "tiny";

const TOP_KEYS: &[&str] = &["name", "prefix", "mgmt", "topology", "settings"];
const TOPOLOGY_KEYS: &[&str] = &["nodes", "links", "kinds", "groups", "defaults"];

/// Node fields labspan imports (or knowingly leaves out, with a note).
const MAPPED_FIELDS: &[&str] = &[
    "kind",
    "group",
    "image",
    "type",
    "cpu",
    "memory",
    "env",
    "exec",
    "restart-policy",
    "labels",
    "image-pull-policy",
];

/// containerlab node fields that have no meaning for a VM, and why.
const REFUSED_FIELDS: &[(&str, &str)] = &[
    (
        "mgmt-ipv4",
        "labspan has no management network whose addresses can be pinned",
    ),
    (
        "mgmt-ipv6",
        "labspan has no management network whose addresses can be pinned",
    ),
    (
        "startup-config",
        "labspan does not push configurations into network operating systems",
    ),
    (
        "enforce-startup-config",
        "labspan does not push configurations into network operating systems",
    ),
    (
        "suppress-startup-config",
        "labspan does not push configurations into network operating systems",
    ),
    ("license", "labspan does not install licenses"),
    (
        "binds",
        "a VM has no bind mounts (a labspan node copies files with `files:`)",
    ),
    ("ports", "labspan does not publish guest ports on the host"),
    (
        "publish",
        "labspan does not publish guest ports on the host",
    ),
    ("network-mode", "a VM has no container network mode"),
    ("sysctls", "container sysctls do not apply to a VM"),
    ("cap-add", "container capabilities do not apply to a VM"),
    ("devices", "labspan does not pass host devices into guests"),
    ("entrypoint", "a VM has no container entrypoint"),
    ("cmd", "a VM has no container command"),
    ("user", "a VM has no container user"),
    ("dns", "container DNS settings do not apply to a VM"),
    (
        "extras",
        "containerlab's per-kind extras have no labspan equivalent",
    ),
    ("certificate", "labspan does not issue node certificates"),
    (
        "healthcheck",
        "a labspan guest is ready when its guest agent answers",
    ),
    ("stages", "labspan starts every node at once"),
    ("wait-for", "labspan starts every node at once"),
    (
        "config",
        "labspan does not push configurations into network operating systems",
    ),
    ("runtime", "labspan runs QEMU, not a container runtime"),
    ("shm-size", "a VM has no container shared memory"),
    ("cpu-set", "labspan does not pin guests to host CPUs"),
    ("env-files", "labspan does not read environment files"),
    ("aliases", "a VM has no container network aliases"),
    (
        "components",
        "chassis components have no labspan equivalent",
    ),
    (
        "auto-remove",
        "labspan guests are removed by `labspan down`",
    ),
];

/// What `import` needs besides the file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The file's name in messages.
    pub file: String,
    /// The lab's name, instead of the topology's `name`.
    pub name: Option<String>,
    /// `KEY → labspan image`, where KEY is a node name, a containerlab
    /// image (`alpine:3.20`) or a kind; the first key that matches a node,
    /// in that order, gives its image.
    pub images: BTreeMap<String, String>,
}

/// A topology turned into a lab.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub lab: Lab,
    /// The lab file: validates with `lab::parse`.
    pub text: String,
    /// What was left out on purpose, for the user to read.
    pub notes: Vec<String>,
}

/// Converts containerlab topology text into a labspan lab; every problem
/// is reported, each with line, column, the object path and what to do.
pub fn import(text: &str, opts: &Options) -> Result<Imported, Diagnostics> {
    let mut cx = Cx {
        file: &opts.file,
        errors: Vec::new(),
        notes: Vec::new(),
    };
    let Some(root) = load(&mut cx, text) else {
        return Err(Diagnostics(cx.errors));
    };
    let lab = cx.topology(&root, opts);
    if !cx.errors.is_empty() {
        return Err(Diagnostics(cx.errors));
    }
    let Some(lab) = lab else {
        return Err(Diagnostics(cx.errors));
    };
    let body = lab::to_yaml(&lab);
    // The output must be a lab labspan accepts: anything the checks above
    // missed is reported here rather than at `labspan up`.
    if let Err(d) = lab::parse("the imported lab", &body) {
        let mut errors = cx.errors;
        errors.extend(d.0);
        return Err(Diagnostics(errors));
    }
    let text = format!(
        "# Imported from {} by `labspan import clab`.\n{body}",
        opts.file
    );
    Ok(Imported {
        lab,
        text,
        notes: cx.notes,
    })
}

struct Cx<'a> {
    file: &'a str,
    errors: Vec<Diagnostic>,
    notes: Vec<String>,
}

/// One layer of a node's settings (the node, its group, its kind, the
/// defaults): field name → value, and the path it was written at.
#[derive(Default, Clone)]
struct Layer<'y> {
    path: String,
    fields: BTreeMap<String, &'y Yaml>,
}

/// A field's value and where it came from.
struct Found<'y> {
    value: &'y Yaml,
    path: String,
}

/// What kind of guest a node becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flavour {
    /// `linux`: a labspan image with its guest agent.
    Linux,
    /// `generic_vm` and vrnetlab kinds: a VM image named on the command line.
    Vm,
    /// A containerlab bridge: a LAN.
    Bridge,
}

impl Cx<'_> {
    fn error(&mut self, at: &Yaml, path: &str, message: String, help: Option<String>) {
        let (line, column) = at.span().start().map_or((0, 0), |m| (m.line(), m.column()));
        self.errors.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            path: path.to_string(),
            message,
            help,
        });
    }

    fn error_key(
        &mut self,
        at: &MarkedScalarNode,
        path: &str,
        message: String,
        help: Option<String>,
    ) {
        let (line, column) = at.span().start().map_or((0, 0), |m| (m.line(), m.column()));
        self.errors.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            path: path.to_string(),
            message,
            help,
        });
    }

    /// A mapping, or an error naming `path`; `null` (an empty value) is an
    /// empty mapping, as containerlab reads `r1:`.
    fn mapping<'y>(&mut self, y: &'y Yaml, path: &str) -> Option<Option<&'y MarkedMappingNode>> {
        match y {
            Yaml::Mapping(m) => Some(Some(m)),
            Yaml::Scalar(s)
                if s.as_str().is_empty() || s.as_str() == "~" || s.as_str() == "null" =>
            {
                Some(None)
            }
            _ => {
                self.error(y, path, "expected a mapping".into(), None);
                None
            }
        }
    }

    fn string(&mut self, y: &Yaml, path: &str) -> Option<String> {
        match y {
            Yaml::Scalar(s) => Some(s.as_str().to_string()),
            _ => {
                self.error(y, path, "expected a plain value".into(), None);
                None
            }
        }
    }

    /// Keys of `m` that are not in `known` are reported.
    fn unknown_keys(&mut self, m: &MarkedMappingNode, path: &str, known: &[&str]) {
        for (k, _) in m.iter() {
            if !known.contains(&k.as_str()) {
                let help = closest(k.as_str(), known.iter().copied())
                    .map(|g| format!("did you mean \"{g}\"?"));
                let msg = format!("unknown key \"{}\"", k.as_str());
                self.error_key(k, &join(path, k.as_str()), msg, help);
            }
        }
    }

    fn topology(&mut self, root: &Yaml, opts: &Options) -> Option<Lab> {
        let top = self.mapping(root, "")??;
        self.unknown_keys(top, "", TOP_KEYS);
        for key in ["prefix", "mgmt", "settings"] {
            if top.get_node(key).is_some() {
                self.notes.push(format!(
                    "{key}: left out (containerlab's container names and management network)"
                ));
            }
        }
        let name = self.lab_name(root, top, opts);
        let Some(topo) = top.get_node("topology") else {
            self.error(
                root,
                "",
                "no `topology`".into(),
                Some("a containerlab file has `topology: {nodes: ...}`".into()),
            );
            return None;
        };
        let topo = self.mapping(topo, "topology")?.unwrap_or(&EMPTY);
        self.unknown_keys(topo, "topology", TOPOLOGY_KEYS);

        let defaults = self.layer(topo.get_node("defaults"), "topology.defaults");
        let kinds = self.layers(topo.get_node("kinds"), "topology.kinds");
        let groups = self.layers(topo.get_node("groups"), "topology.groups");

        let mut nodes = BTreeMap::new();
        let mut flavours = BTreeMap::new();
        let Some(node_map) = topo.get_node("nodes") else {
            self.error(root, "topology", "no `nodes`".into(), None);
            return None;
        };
        let node_map = self.mapping(node_map, "topology.nodes")?.unwrap_or(&EMPTY);
        if node_map.is_empty() {
            self.error(root, "topology.nodes", "no nodes".into(), None);
        }
        for (key, def) in node_map.iter() {
            let name = key.as_str();
            let path = format!("topology.nodes.{name}");
            let own = self.layer(Some(def), &path);
            let stack = Stack {
                own,
                defaults: &defaults,
                kinds: &kinds,
                groups: &groups,
            };
            if let Some((flavour, node)) = self.node(key, &stack, opts) {
                flavours.insert(name.to_string(), flavour);
                if let Some(node) = node {
                    nodes.insert(name.to_string(), node);
                }
            }
        }

        let mut wiring = Wiring {
            links: Vec::new(),
            lans: BTreeMap::new(),
            used: BTreeMap::new(),
        };
        if let Some(links) = topo.get_node("links") {
            match links {
                Yaml::Sequence(seq) => {
                    for (i, link) in seq.iter().enumerate() {
                        self.link(
                            link,
                            &format!("topology.links[{i}]"),
                            &flavours,
                            &mut nodes,
                            &mut wiring,
                        );
                    }
                }
                _ => self.error(
                    links,
                    "topology.links",
                    "expected a list of links".into(),
                    None,
                ),
            }
        }
        for (bridge, (at, members)) in &wiring.lans {
            if members.len() < 2 {
                self.error(
                    at,
                    &format!("topology.nodes.{bridge}"),
                    format!("bridge \"{bridge}\" has {} link(s); a labspan LAN needs two or more members", members.len()),
                    Some("link more nodes to it, or remove it and its link".into()),
                );
            }
        }
        let name = name?;
        Some(Lab {
            name,
            nodes,
            links: wiring.links,
            lans: wiring
                .lans
                .into_iter()
                .map(|(k, (_, members))| (k, Lan { members }))
                .collect(),
            placement: PlacementHints::default(),
            verify: Vec::new(),
            resilience: Default::default(),
        })
    }

    fn lab_name(&mut self, root: &Yaml, top: &MarkedMappingNode, opts: &Options) -> Option<String> {
        if let Some(name) = &opts.name {
            return match valid::lab(name) {
                Ok(()) => Some(name.clone()),
                Err(e) => {
                    self.error(root, "", format!("--name: {}", e.why), Some(e.help));
                    None
                }
            };
        }
        let Some(y) = top.get_node("name") else {
            self.error(
                root,
                "",
                "no `name`".into(),
                Some("containerlab needs a name; add `name: my-lab`".into()),
            );
            return None;
        };
        let name = self.string(y, "name")?;
        match valid::lab(&name) {
            Ok(()) => Some(name),
            Err(e) => {
                let help = format!("{}, or give the lab another name with --name", e.help);
                self.error(y, "name", e.why, Some(help));
                None
            }
        }
    }

    /// A node definition's fields, with unknown and refused ones not yet judged.
    fn layer<'y>(&mut self, y: Option<&'y Yaml>, path: &str) -> Layer<'y> {
        let mut layer = Layer {
            path: path.to_string(),
            fields: BTreeMap::new(),
        };
        let Some(y) = y else { return layer };
        let Some(Some(m)) = self.mapping(y, path) else {
            return layer;
        };
        let known: Vec<&str> = MAPPED_FIELDS
            .iter()
            .copied()
            .chain(REFUSED_FIELDS.iter().map(|(f, _)| *f))
            .collect();
        for (k, v) in m.iter() {
            if known.contains(&k.as_str()) {
                layer.fields.insert(k.as_str().to_string(), v);
            } else {
                let help = closest(k.as_str(), known.iter().copied())
                    .map(|g| format!("did you mean \"{g}\"?"));
                let msg = format!("unknown node field \"{}\"", k.as_str());
                self.error_key(k, &join(path, k.as_str()), msg, help);
            }
        }
        layer
    }

    /// `topology.kinds` or `topology.groups`: name → layer.
    fn layers<'y>(&mut self, y: Option<&'y Yaml>, path: &str) -> BTreeMap<String, Layer<'y>> {
        let mut out = BTreeMap::new();
        let Some(y) = y else { return out };
        let Some(Some(m)) = self.mapping(y, path) else {
            return out;
        };
        for (k, v) in m.iter() {
            let layer = self.layer(Some(v), &join(path, k.as_str()));
            out.insert(k.as_str().to_string(), layer);
        }
        out
    }

    fn push(&mut self, path: &str, message: String) {
        self.errors.push(Diagnostic {
            file: self.file.to_string(),
            line: 0,
            column: 0,
            path: path.to_string(),
            message,
            help: None,
        });
    }
}

fn scalar(y: &Yaml) -> Option<&str> {
    y.as_scalar().map(|s| s.as_str())
}

struct Wiring {
    links: Vec<Link>,
    /// Bridge name → (where it was defined, its members).
    lans: BTreeMap<String, (Yaml, Vec<Endpoint>)>,
    /// `node:nic` → the path of the link that uses it.
    used: BTreeMap<String, String>,
}

static EMPTY: std::sync::LazyLock<MarkedMappingNode> =
    std::sync::LazyLock::new(|| MarkedMappingNode::new_empty(marked_yaml::Span::new_blank()));

/// `eth1`, `eth2`, ...
fn is_eth_n(nic: &str) -> bool {
    nic.strip_prefix("eth")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n != "0")
}

/// What a containerlab topology's top level must be, said when it is not.
const TOPOLOGY: yaml::Shape = yaml::Shape {
    what: "the containerlab topology",
    start: "start with name: my-lab, then topology: with nodes: and links:",
    no_anchors: "write the shared values under topology.defaults, kinds or groups",
};

/// The topology's YAML tree, read the way every labspan file is
/// ([`yaml::load`]); its problems go to `cx`.
fn load(cx: &mut Cx<'_>, text: &str) -> Option<Yaml> {
    let mut sink = yaml::Sink::new(cx.file);
    let root = yaml::load(&mut sink, text, TOPOLOGY);
    cx.errors.extend(sink.finish().0);
    root
}

#[cfg(test)]
mod tests;
