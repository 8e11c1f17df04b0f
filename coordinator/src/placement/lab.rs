//! Builds a placement [`Problem`] from a lab and the cluster's hosts.

use std::collections::BTreeMap;

use labspan_proto::lab::Lab;

use super::error::PlacementError;
use super::memory::vm_memory_mib;
use super::{place, NodeDemand, Placement, Problem, SegmentDemand};
use crate::hosts::HostSpec;

/// Weight of a segment without a rate: one tunnel of it costs this much.
pub const RATE_WEIGHT_FULL: u64 = 100;
/// A rate at or above this (kbit/s) weighs as much as an unlimited link.
const FULL_RATE_KBIT: u64 = 1_000_000;

/// Weight of a segment: [`RATE_WEIGHT_FULL`] when unlimited, else its rate
/// relative to 1 Gbit/s (at least 1), because a tunnel costs in proportion
/// to the traffic it must carry.
pub fn segment_weight(rate_kbit: Option<u64>) -> u64 {
    match rate_kbit {
        None => RATE_WEIGHT_FULL,
        Some(r) => (r.min(FULL_RATE_KBIT) * RATE_WEIGHT_FULL)
            .div_ceil(FULL_RATE_KBIT)
            .max(1),
    }
}

/// Places the nodes of `lab` on `hosts` (the hosts that are up).
/// `existing` maps node → host for nodes that run now: they stay where
/// hints and capacity still allow; nodes on hosts not in `hosts` move.
pub fn place_lab(
    lab: &Lab,
    hosts: &[HostSpec],
    existing: &BTreeMap<String, String>,
) -> Result<Placement, PlacementError> {
    place(&lab_problem(lab, hosts, existing)?)
}

/// Places several labs at once on `hosts`, as one problem, so that none
/// takes room another needs. Node names in the result (and in `existing`,
/// keyed by lab name) are `LAB/NODE`.
pub fn place_labs(
    labs: &[&Lab],
    hosts: &[HostSpec],
    existing: &BTreeMap<String, String>,
) -> Result<Placement, PlacementError> {
    let mut problem = empty_problem(hosts);
    for lab in labs {
        add_lab(
            &mut problem,
            lab,
            &format!("{}/", lab.name),
            hosts,
            existing,
        )?;
    }
    place(&problem)
}

/// The problem `place_lab` solves.
pub fn lab_problem(
    lab: &Lab,
    hosts: &[HostSpec],
    existing: &BTreeMap<String, String>,
) -> Result<Problem, PlacementError> {
    let mut problem = empty_problem(hosts);
    add_lab(&mut problem, lab, "", hosts, existing)?;
    Ok(problem)
}

fn empty_problem(hosts: &[HostSpec]) -> Problem {
    Problem {
        hosts: hosts.iter().map(HostSpec::offer).collect(),
        ..Problem::default()
    }
}

/// Appends `lab`'s nodes (named `prefix` + node), segments, hints and running
/// placement to `p`.
fn add_lab(
    p: &mut Problem,
    lab: &Lab,
    prefix: &str,
    hosts: &[HostSpec],
    existing: &BTreeMap<String, String>,
) -> Result<(), PlacementError> {
    let base = p.nodes.len();
    let index: BTreeMap<&str, usize> = lab
        .nodes
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), base + i))
        .collect();
    let find = |name: &str, what: &str| {
        index.get(name).copied().ok_or_else(|| {
            PlacementError::InvalidInput(format!(
                "lab \"{}\": {what} names node \"{name}\", which the lab does not have",
                lab.name
            ))
        })
    };
    p.nodes.extend(lab.nodes.iter().map(|(name, n)| NodeDemand {
        name: format!("{prefix}{name}"),
        memory_mib: vm_memory_mib(n.memory_mib, u64::from(n.cpus)),
        vcpus: u64::from(n.cpus),
    }));
    for s in lab.segments() {
        let members: Vec<usize> = s
            .members
            .iter()
            .map(|e| find(&e.node, &s.key))
            .collect::<Result<_, _>>()?;
        // An impaired segment's members need a host whose kernel has its qdisc.
        if let Some(qdisc) = labspan_proto::lab::qdisc_for(&s.impairment) {
            for &m in &members {
                let why = format!("{} is impaired", s.key.replacen(':', " ", 1));
                p.requires
                    .entry(m)
                    .or_default()
                    .entry(qdisc.to_string())
                    .or_insert(why);
            }
        }
        p.segments.push(SegmentDemand {
            key: format!("{prefix}{}", s.key),
            members,
            weight: segment_weight(s.impairment.rate_kbit),
        });
    }
    for (n, sel) in &lab.placement.pin {
        p.pins.insert(find(n, "pin")?, sel.clone());
    }
    for (groups, out, what) in [
        (&lab.placement.together, &mut p.together, "together"),
        (&lab.placement.spread, &mut p.spread, "spread"),
    ] {
        for g in groups {
            out.push(g.iter().map(|n| find(n, what)).collect::<Result<_, _>>()?);
        }
    }
    let host_index: BTreeMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    for (name, &i) in &index {
        let running = existing.get(&format!("{prefix}{name}"));
        if let Some(&h) = running.and_then(|h| host_index.get(h.as_str())) {
            p.existing.insert(i, h);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_rate() {
        assert_eq!(segment_weight(None), 100);
        assert_eq!(segment_weight(Some(10_000)), 1);
        assert_eq!(segment_weight(Some(100_000)), 10);
        assert_eq!(segment_weight(Some(5_000_000)), 100);
        assert_eq!(segment_weight(Some(1)), 1);
    }
}
