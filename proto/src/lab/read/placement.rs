//! `placement:`: pins, and the groups kept together or spread.

use marked_yaml::Node as Yaml;

use super::{RawGroup, RawLab, Ref, PLACEMENT_KEYS};
use crate::lab::model::HostSelector;
use crate::yaml::{check_keys, join, want_map, want_seq, want_str, Pos, Sink};

pub(super) fn read_placement(sink: &mut Sink, n: &Yaml, lab: &mut RawLab) {
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
