//! `links:` and `lans:`: endpoints, and the impairments of a link.

use marked_yaml::types::{MarkedMappingNode, MarkedSequenceNode};
use marked_yaml::Node as Yaml;

use super::{name_problem, read_unit, RawEndpoint, RawLan, RawLink, LINK_KEYS};
use crate::lab::model::{Endpoint, Impairment};
use crate::lab::units;
use crate::yaml::{
    check_keys, is_null_scalar, join, kind, missing, want_map, want_seq, want_str, Pos, Sink,
};

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

pub(super) fn read_links(sink: &mut Sink, n: &Yaml) -> Vec<RawLink> {
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

pub(super) fn read_lans(sink: &mut Sink, n: &Yaml) -> Vec<RawLan> {
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
