//! The links of a containerlab topology: short and extended endpoints,
//! point-to-point links, and the bridges whose members become a LAN.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use marked_yaml::Node as Yaml;

use super::{is_eth_n, join, Cx, Flavour, Wiring};
use crate::lab::{Endpoint, Impairment, Link, Nic, Node};
use crate::names::valid;
use crate::suggest::closest;

/// Link keys of the short and the extended form.
const LINK_KEYS: &[&str] = &[
    "type",
    "endpoints",
    "endpoint",
    "mtu",
    "vars",
    "labels",
    "remote",
    "vni",
    "dst-port",
    "src-port",
    "host-interface",
    "mode",
];
const ENDPOINT_KEYS: &[&str] = &["node", "interface", "mac", "ipv4", "ipv6", "vars"];

impl Cx<'_> {
    pub(super) fn link(
        &mut self,
        y: &Yaml,
        path: &str,
        flavours: &BTreeMap<String, Flavour>,
        nodes: &mut BTreeMap<String, Node>,
        wiring: &mut Wiring,
    ) {
        let Some(Some(m)) = self.mapping(y, path) else {
            return;
        };
        self.unknown_keys(m, path, LINK_KEYS);
        let kind = match m.get_node("type") {
            None => None,
            Some(t) => match self.string(t, &join(path, "type")) {
                Some(t) => Some(t),
                None => return,
            },
        };
        let mtu = match m.get_node("mtu") {
            None => None,
            Some(v) => {
                let p = join(path, "mtu");
                let text = self.string(v, &p).unwrap_or_default();
                match text.parse::<u32>() {
                    Ok(n) if (68..=9000).contains(&n) => Some(n),
                    _ => {
                        self.error(v, &p, format!("mtu \"{text}\" is not 68 ..= 9000"), None);
                        return;
                    }
                }
            }
        };
        let ends: Vec<End> = match kind.as_deref() {
            None => {
                let Some(list) = m.get_node("endpoints") else {
                    self.error(
                        y,
                        path,
                        "a link needs `endpoints`".into(),
                        Some("endpoints: [\"a:eth1\", \"b:eth1\"]".into()),
                    );
                    return;
                };
                let p = join(path, "endpoints");
                let Yaml::Sequence(s) = list else {
                    self.error(
                        list,
                        &p,
                        "expected a list of two `node:interface`".into(),
                        None,
                    );
                    return;
                };
                let mut ends = Vec::new();
                for (i, e) in s.iter().enumerate() {
                    let ep = format!("{p}[{i}]");
                    match e {
                        Yaml::Scalar(text) => match text.as_str().split_once(':') {
                            Some((node, nic)) => ends.push(End {
                                at: e,
                                path: ep,
                                node: node.to_string(),
                                nic: nic.to_string(),
                                ip: Vec::new(),
                            }),
                            None => {
                                self.error(
                                    e,
                                    &ep,
                                    format!("\"{}\" is not `node:interface`", text.as_str()),
                                    None,
                                );
                                return;
                            }
                        },
                        _ => {
                            self.error(
                                e,
                                &ep,
                                "expected `node:interface`".into(),
                                Some(
                                    "the extended form with endpoint mappings needs `type: veth`"
                                        .into(),
                                ),
                            );
                            return;
                        }
                    }
                }
                ends
            }
            Some("veth") => {
                let Some(Yaml::Sequence(s)) = m.get_node("endpoints") else {
                    self.error(
                        y,
                        path,
                        "a veth link needs `endpoints: [{node, interface}, {node, interface}]`"
                            .into(),
                        None,
                    );
                    return;
                };
                let p = join(path, "endpoints");
                let mut ends = Vec::new();
                for (i, e) in s.iter().enumerate() {
                    match self.extended_end(e, &format!("{p}[{i}]")) {
                        Some(end) => ends.push(end),
                        None => return,
                    }
                }
                ends
            }
            Some("dummy") => {
                let Some(e) = m.get_node("endpoint") else {
                    self.error(
                        y,
                        path,
                        "a dummy link needs `endpoint: {node, interface}`".into(),
                        None,
                    );
                    return;
                };
                let Some(end) = self.extended_end(e, &join(path, "endpoint")) else {
                    return;
                };
                // An interface with no peer: a NIC joined to nothing.
                if let Some(nic) = self.nic_of(&end, flavours, nodes, wiring) {
                    if let Some(n) = mtu {
                        nic.mtu = Some(n);
                    }
                }
                return;
            }
            Some(other) => {
                let why = match other {
                    "host" | "macvlan" | "mgmt-net" => "it connects a node to the host machine or its networks; labspan links join guests only",
                    "vxlan" | "vxlan-stitch" | "veth-stitch" => "labspan makes its own VXLAN tunnels between hosts",
                    _ => "it is not a containerlab link type labspan knows",
                };
                let t = m.get_node("type").unwrap_or(y);
                self.error(
                    t,
                    &join(path, "type"),
                    format!("link type \"{other}\" cannot be imported: {why}"),
                    Some("remove the link, or write it as a veth link between two nodes".into()),
                );
                return;
            }
        };
        if ends.len() != 2 {
            self.error(
                y,
                path,
                format!(
                    "a link has exactly two endpoints, this one has {}",
                    ends.len()
                ),
                None,
            );
            return;
        }
        let mut eps = Vec::new();
        let mut bridges = Vec::new();
        for end in &ends {
            match flavours.get(&end.node) {
                Some(Flavour::Bridge) => bridges.push(end),
                _ => {
                    let Some(nic) = self.nic_of(end, flavours, nodes, wiring) else {
                        return;
                    };
                    if mtu.is_some() {
                        nic.mtu = mtu;
                    }
                    eps.push(Endpoint {
                        node: end.node.clone(),
                        nic: end.nic.clone(),
                    });
                }
            }
        }
        match (bridges.as_slice(), eps.as_slice()) {
            ([], [a, b]) => wiring.links.push(Link {
                endpoints: [a.clone(), b.clone()],
                impairment: Impairment::default(),
            }),
            ([bridge], [member]) => {
                wiring
                    .lans
                    .entry(bridge.node.clone())
                    .or_insert_with(|| (bridge.at.clone(), Vec::new()))
                    .1
                    .push(member.clone());
            }
            ([_, _], _) => self.error(
                y,
                path,
                "a link between two bridges cannot be imported: a labspan LAN joins guests only"
                    .into(),
                None,
            ),
            _ => {}
        }
    }

    /// `{node, interface, ipv4?, ipv6?}` of the extended form.
    fn extended_end<'y>(&mut self, e: &'y Yaml, path: &str) -> Option<End<'y>> {
        let m = self.mapping(e, path)??;
        self.unknown_keys(m, path, ENDPOINT_KEYS);
        if let Some(mac) = m.get_node("mac") {
            self.error(mac, &join(path, "mac"), "`mac` cannot be imported: labspan derives each NIC's MAC address from the lab, node and NIC names".into(), Some("remove `mac`".into()));
            return None;
        }
        let node = m
            .get_node("node")
            .and_then(|n| self.string(n, &join(path, "node")));
        let nic = m
            .get_node("interface")
            .and_then(|n| self.string(n, &join(path, "interface")));
        let (Some(node), Some(nic)) = (node, nic) else {
            self.error(
                e,
                path,
                "an endpoint needs `node` and `interface`".into(),
                None,
            );
            return None;
        };
        let mut ip = Vec::new();
        for key in ["ipv4", "ipv6"] {
            let Some(v) = m.get_node(key) else { continue };
            let p = join(path, key);
            let text = self.string(v, &p)?;
            match text.parse::<IpNet>() {
                Ok(net) if (key == "ipv4") == net.addr().is_ipv4() => ip.push(net),
                _ => {
                    self.error(
                        v,
                        &p,
                        format!("\"{text}\" is not an {key} address with a prefix length"),
                        Some("e.g. 198.19.1.1/24 or 2001:db8::1/64".into()),
                    );
                    return None;
                }
            }
        }
        Some(End {
            at: e,
            path: path.to_string(),
            node,
            nic,
            ip,
        })
    }

    /// The labspan NIC an endpoint names, checked and created on its node.
    fn nic_of<'n>(
        &mut self,
        end: &End<'_>,
        flavours: &BTreeMap<String, Flavour>,
        nodes: &'n mut BTreeMap<String, Node>,
        wiring: &mut Wiring,
    ) -> Option<&'n mut Nic> {
        let Some(flavour) = flavours.get(&end.node) else {
            let known: BTreeSet<&str> = flavours.keys().map(String::as_str).collect();
            let help = match end.node.as_str() {
                "host" | "macvlan" | "mgmt-net" => Some(
                    "links to the host machine cannot be imported: labspan links join guests only"
                        .to_string(),
                ),
                _ => closest(&end.node, known.iter().copied())
                    .map(|g| format!("did you mean \"{g}\"?")),
            };
            self.error(
                end.at,
                &end.path,
                format!("node \"{}\" does not exist", end.node),
                help,
            );
            return None;
        };
        let nic = &end.nic;
        if nic == "eth0" {
            self.error(end.at, &end.path, format!("{}:eth0 is the management interface (containerlab and vrnetlab keep eth0 for it)", end.node), Some("data links start at eth1".into()));
            return None;
        }
        if *flavour == Flavour::Vm && !is_eth_n(nic) {
            self.error(end.at, &end.path, format!("interface \"{nic}\" of node \"{}\": a VM's data interfaces are named eth1, eth2, ... (vrnetlab maps ethN to the Nth data NIC)", end.node), Some("write the interface as ethN instead of the system's own name".into()));
            return None;
        }
        if let Err(e) = valid::nic(nic) {
            self.error(end.at, &end.path, e.why, Some(e.help));
            return None;
        }
        let ep = format!("{}:{nic}", end.node);
        if let Some(first) = wiring.used.get(&ep) {
            self.error(
                end.at,
                &end.path,
                format!("{ep} is already used by {first}"),
                Some("an interface joins one link; use another interface".into()),
            );
            return None;
        }
        wiring.used.insert(ep, end.path.clone());
        // A node that failed its own checks is already reported.
        let node = nodes.get_mut(&end.node)?;
        let slot = node.nics.entry(nic.clone()).or_default();
        slot.ip.extend(end.ip.iter().copied());
        Some(slot)
    }
}

/// One end of a link as written.
struct End<'y> {
    at: &'y Yaml,
    path: String,
    node: String,
    nic: String,
    ip: Vec<IpNet>,
}
