//! `verify:`: the ping and exec checks run once a lab is up.

use std::str::FromStr;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node as Yaml;

use super::{read_unit, RawCheck, Ref, EXEC_KEYS, PING_KEYS, VERIFY_KEYS};
use crate::lab::model::Check;
use crate::lab::units;
use crate::yaml::{check_keys, join, missing, want_map, want_seq, want_str, Pos, Sink};

pub(super) fn read_verify(sink: &mut Sink, n: &Yaml) -> Vec<RawCheck> {
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
