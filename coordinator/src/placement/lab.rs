//! Builds a placement [`Problem`] from a lab and the cluster's hosts.

use std::collections::BTreeMap;

use labspan_proto::lab::Lab;

use super::error::PlacementError;
use super::memory::vm_memory_mib;
use super::{place, NodeDemand, Placement, Problem, SegmentDemand};
use crate::hosts::Host;

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
    hosts: &[Host],
    existing: &BTreeMap<String, String>,
) -> Result<Placement, PlacementError> {
    place(&lab_problem(lab, hosts, existing)?)
}

/// The problem `place_lab` solves.
pub fn lab_problem(
    lab: &Lab,
    hosts: &[Host],
    existing: &BTreeMap<String, String>,
) -> Result<Problem, PlacementError> {
    let index: BTreeMap<&str, usize> = lab
        .nodes
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let find = |name: &str, what: &str| {
        index.get(name).copied().ok_or_else(|| {
            PlacementError::InvalidInput(format!(
                "lab \"{}\": {what} names node \"{name}\", which the lab does not have",
                lab.name
            ))
        })
    };
    let nodes = lab
        .nodes
        .iter()
        .map(|(name, n)| NodeDemand {
            name: name.clone(),
            memory_mib: vm_memory_mib(n.memory_mib, u64::from(n.cpus)),
            vcpus: u64::from(n.cpus),
        })
        .collect();
    let mut segments = Vec::new();
    for s in lab.segments() {
        let members = s
            .members
            .iter()
            .map(|e| find(&e.node, &s.key))
            .collect::<Result<_, _>>()?;
        segments.push(SegmentDemand {
            key: s.key,
            members,
            weight: segment_weight(s.impairment.rate_kbit),
        });
    }
    let groups = |gs: &[Vec<String>], what: &str| -> Result<Vec<Vec<usize>>, PlacementError> {
        gs.iter()
            .map(|g| g.iter().map(|n| find(n, what)).collect())
            .collect()
    };
    let host_index: BTreeMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    let existing = existing
        .iter()
        .filter_map(|(n, h)| Some((*index.get(n.as_str())?, *host_index.get(h.as_str())?)))
        .collect();
    Ok(Problem {
        nodes,
        segments,
        hosts: hosts.iter().map(Host::offer).collect(),
        pins: lab
            .placement
            .pin
            .iter()
            .map(|(n, sel)| Ok((find(n, "pin")?, sel.clone())))
            .collect::<Result<_, PlacementError>>()?,
        together: groups(&lab.placement.together, "together")?,
        spread: groups(&lab.placement.spread, "spread")?,
        existing,
    })
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
