//! Validates a [`Problem`] and turns its hints into constraints: `together`
//! groups become clusters, pins become allowed-host sets, running nodes
//! become fixed where every constraint still holds. Every infeasibility that
//! can be named up front is reported here, with what runs short.

use std::collections::BTreeMap;

use super::error::{CpuKnob, PlacementError};
use super::graph::Res;
use super::memory::MibPair;
use super::{HostSelector, Problem};

/// The constraints of a problem, over clusters (merged `together` groups).
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// Node → cluster.
    pub cluster_of: Vec<u32>,
    /// Cluster → its nodes, ascending.
    pub clusters: Vec<Vec<usize>>,
    /// Allowed-host sets; set 0 allows every host.
    pub allowed_sets: Vec<Vec<bool>>,
    /// Cluster → its allowed-host set.
    pub cluster_allowed: Vec<u32>,
    /// Cluster → host it keeps (it runs there and may stay).
    pub cluster_fixed: Vec<Option<u32>>,
    /// Spread groups as cluster ids.
    pub spread: Vec<Vec<u32>>,
    /// Free capacity per host.
    pub cap: Vec<Res>,
}

/// Checks `p` and builds its constraints.
pub(crate) fn prepare(p: &Problem) -> Result<Prepared, PlacementError> {
    if p.hosts.is_empty() {
        return Err(PlacementError::NoHosts);
    }
    check_indices(p)?;
    let cap: Vec<Res> = p
        .hosts
        .iter()
        .map(|h| Res::new(h.free_memory_mib(), h.free_vcpus()))
        .collect();
    let (cluster_of, clusters) = clusters(p);
    let mut allowed_sets = vec![vec![true; p.hosts.len()]];
    let mut cluster_allowed = Vec::with_capacity(clusters.len());
    for members in &clusters {
        cluster_allowed.push(allowed_for(p, members, &mut allowed_sets)?);
    }
    let mut prep = Prepared {
        cluster_of,
        clusters,
        allowed_sets,
        cluster_allowed,
        cluster_fixed: Vec::new(),
        spread: Vec::new(),
        cap,
    };
    check_sizes(p, &prep)?;
    prep.spread = spread_groups(p, &prep)?;
    check_totals(p, &prep)?;
    prep.cluster_fixed = fixed_clusters(p, &prep);
    Ok(prep)
}

fn check_indices(p: &Problem) -> Result<(), PlacementError> {
    let n = p.nodes.len();
    let bad = |what: &str, i: usize| {
        Err(PlacementError::InvalidInput(format!(
            "{what} refers to node {i}, there are {n}"
        )))
    };
    for s in &p.segments {
        if let Some(&i) = s.members.iter().find(|&&i| i >= n) {
            return bad(&format!("segment {}", s.key), i);
        }
    }
    for (kind, groups) in [("together", &p.together), ("spread", &p.spread)] {
        for g in groups.iter() {
            if let Some(&i) = g.iter().find(|&&i| i >= n) {
                return bad(kind, i);
            }
        }
    }
    if let Some(&i) = p.pins.keys().find(|&&i| i >= n) {
        return bad("a pin", i);
    }
    if let Some(&i) = p.requires.keys().find(|&&i| i >= n) {
        return bad("a capability requirement", i);
    }
    for (&node, &host) in &p.existing {
        if node >= n || host >= p.hosts.len() {
            return Err(PlacementError::InvalidInput(format!(
                "existing placement {node} → {host} is out of range"
            )));
        }
    }
    Ok(())
}

/// Union-find over `together` groups; clusters numbered by their smallest node.
fn clusters(p: &Problem) -> (Vec<u32>, Vec<Vec<usize>>) {
    let mut parent: Vec<usize> = (0..p.nodes.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for g in &p.together {
        for w in g.windows(2) {
            let (a, b) = (root(&mut parent, w[0]), root(&mut parent, w[1]));
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut id = vec![u32::MAX; p.nodes.len()];
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    let mut cluster_of = Vec::with_capacity(p.nodes.len());
    for i in 0..p.nodes.len() {
        let r = root(&mut parent, i);
        if id[r] == u32::MAX {
            id[r] = clusters.len() as u32;
            clusters.push(Vec::new());
        }
        cluster_of.push(id[r]);
        clusters[id[r] as usize].push(i);
    }
    (cluster_of, clusters)
}

fn names(p: &Problem, members: &[usize]) -> String {
    members
        .iter()
        .map(|&i| p.nodes[i].name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The hosts one selector allows.
fn selector_hosts(
    p: &Problem,
    node: usize,
    sel: &HostSelector,
) -> Result<Vec<bool>, PlacementError> {
    let set: Vec<bool> = match sel {
        HostSelector::Host(h) => p.hosts.iter().map(|x| &x.name == h).collect(),
        HostSelector::Label(l) => p.hosts.iter().map(|x| x.labels.contains(l)).collect(),
    };
    if set.iter().any(|&b| b) {
        return Ok(set);
    }
    let node = p.nodes[node].name.clone();
    Err(match sel {
        HostSelector::Host(host) => PlacementError::PinnedHostMissing {
            node,
            host: host.clone(),
            known: p
                .hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        },
        HostSelector::Label(label) => PlacementError::PinnedLabelMissing {
            node,
            label: label.clone(),
        },
    })
}

/// Intersects the pins of a cluster's members; returns the id of the set.
fn allowed_for(
    p: &Problem,
    members: &[usize],
    sets: &mut Vec<Vec<bool>>,
) -> Result<u32, PlacementError> {
    let mut acc: Option<Vec<bool>> = None;
    let and = |acc: Option<Vec<bool>>, s: Vec<bool>| {
        Some(match acc {
            None => s,
            Some(a) => a.iter().zip(&s).map(|(x, y)| *x && *y).collect(),
        })
    };
    for &m in members {
        if let Some(sel) = p.pins.get(&m) {
            acc = and(acc, selector_hosts(p, m, sel)?);
        }
    }
    let pinned = acc.clone();
    for &m in members {
        for (capability, why) in p.requires.get(&m).into_iter().flatten() {
            let s: Vec<bool> = p
                .hosts
                .iter()
                .map(|h| !h.lacks.contains(capability))
                .collect();
            acc = and(acc, s);
            // Named by node: "node b needs netem (why); no host that is up has it".
            if !acc.as_ref().is_some_and(|a| a.iter().any(|&b| b)) {
                return Err(PlacementError::MissingCapability {
                    node: p.nodes[m].name.clone(),
                    capability: capability.clone(),
                    why: why.clone(),
                    pinned: pinned.as_ref().is_some_and(|a| a.iter().any(|&b| b)),
                    lacking: (p.hosts.iter())
                        .filter(|h| h.lacks.contains(capability))
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    let Some(set) = acc else { return Ok(0) };
    if !set.iter().any(|&b| b) {
        return Err(PlacementError::TogetherPinsConflict {
            group: names(p, members),
        });
    }
    if let Some(i) = sets.iter().position(|s| *s == set) {
        return Ok(i as u32);
    }
    sets.push(set);
    Ok(sets.len() as u32 - 1)
}

/// Each cluster must fit on the roomiest host it may use.
fn check_sizes(p: &Problem, prep: &Prepared) -> Result<(), PlacementError> {
    // The roomiest host (memory, then vCPUs) of each allowed set, found once.
    let roomiest: Vec<(usize, usize)> = prep
        .allowed_sets
        .iter()
        .map(|set| {
            let hosts = || (0..p.hosts.len()).filter(|&h| set[h]);
            let mem = hosts()
                .max_by_key(|&h| (prep.cap[h].mem, std::cmp::Reverse(h)))
                .unwrap_or(0);
            let cpu = hosts()
                .max_by_key(|&h| (prep.cap[h].cpu, std::cmp::Reverse(h)))
                .unwrap_or(0);
            (mem, cpu)
        })
        .collect();
    for (c, members) in prep.clusters.iter().enumerate() {
        let need = members
            .iter()
            .fold(Res::default(), |a, &m| a.add(node_res(p, m)));
        let (best_mem, best_cpu) = roomiest[prep.cluster_allowed[c] as usize];
        if need.mem > prep.cap[best_mem].mem {
            let sizes = MibPair {
                need_mib: need.mem,
                free_mib: prep.cap[best_mem].mem,
            };
            let host = p.hosts[best_mem].name.clone();
            return Err(match members.as_slice() {
                [one] => PlacementError::NodeMemory {
                    node: p.nodes[*one].name.clone(),
                    sizes,
                    host,
                },
                _ => PlacementError::TogetherMemory {
                    group: names(p, members),
                    sizes,
                    host,
                },
            });
        }
        if need.cpu > prep.cap[best_cpu].cpu {
            let what = match members.as_slice() {
                [one] => format!("node \"{}\"", p.nodes[*one].name),
                _ => format!("together [{}]", names(p, members)),
            };
            let (free, host) = (prep.cap[best_cpu].cpu, p.hosts[best_cpu].name.clone());
            return Err(PlacementError::Vcpus {
                what,
                need: need.cpu,
                free,
                host,
                knob: CpuKnob::default(),
            });
        }
    }
    Ok(())
}

/// Spread groups over clusters; checks they do not contradict `together`
/// and that enough distinct hosts exist for each.
fn spread_groups(p: &Problem, prep: &Prepared) -> Result<Vec<Vec<u32>>, PlacementError> {
    let mut out = Vec::new();
    for g in &p.spread {
        let mut members: Vec<usize> = g.clone();
        members.sort_unstable();
        members.dedup();
        let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
        for &m in &members {
            if let Some(&other) = seen.get(&prep.cluster_of[m]) {
                return Err(PlacementError::SpreadConflictsTogether {
                    group: names(p, g),
                    a: p.nodes[other].name.clone(),
                    b: p.nodes[m].name.clone(),
                });
            }
            seen.insert(prep.cluster_of[m], m);
        }
        let mut usable = vec![false; p.hosts.len()];
        for &c in seen.keys() {
            let set = &prep.allowed_sets[prep.cluster_allowed[c as usize] as usize];
            usable.iter_mut().zip(set).for_each(|(u, s)| *u |= *s);
        }
        let up = usable.iter().filter(|&&b| b).count();
        if up < members.len() {
            return Err(PlacementError::SpreadShort {
                group: names(p, g),
                need: members.len(),
                label: common_label(p, &members),
                up,
            });
        }
        if members.len() > 1 {
            out.push(seen.keys().copied().collect());
        }
    }
    Ok(out)
}

/// The label every member is pinned to, if they all share one.
fn common_label(p: &Problem, members: &[usize]) -> Option<String> {
    let mut label = None;
    for m in members {
        match p.pins.get(m) {
            Some(HostSelector::Label(l)) if label.is_none() || label == Some(l) => label = Some(l),
            _ => return None,
        }
    }
    label.cloned()
}

fn check_totals(p: &Problem, prep: &Prepared) -> Result<(), PlacementError> {
    let need = (0..p.nodes.len()).fold(Res::default(), |a, m| a.add(node_res(p, m)));
    let free = prep.cap.iter().fold(Res::default(), |a, c| a.add(*c));
    if need.mem > free.mem {
        return Err(PlacementError::TotalMemory {
            sizes: MibPair {
                need_mib: need.mem,
                free_mib: free.mem,
            },
        });
    }
    if need.cpu > free.cpu {
        return Err(PlacementError::TotalVcpus {
            need: need.cpu,
            free: free.cpu,
            knob: CpuKnob::default(),
        });
    }
    Ok(())
}

/// What one node takes.
pub(crate) fn node_res(p: &Problem, m: usize) -> Res {
    Res::new(p.nodes[m].memory_mib, p.nodes[m].vcpus)
}

/// Clusters that run now and may stay: all running members on one host, which the
/// pins allow, with room, and no spread partner already kept there.
/// Clusters are taken in index order so the answer is deterministic.
fn fixed_clusters(p: &Problem, prep: &Prepared) -> Vec<Option<u32>> {
    let mut load = vec![Res::default(); p.hosts.len()];
    let mut fixed: Vec<Option<u32>> = vec![None; prep.clusters.len()];
    for (c, members) in prep.clusters.iter().enumerate() {
        // Running members decide; members not running yet (just added to
        // the group) follow them.
        let mut running = members.iter().filter_map(|m| p.existing.get(m).copied());
        let Some(h) = running.next() else {
            continue;
        };
        if running.any(|x| x != h) || !prep.allowed_sets[prep.cluster_allowed[c] as usize][h] {
            continue;
        }
        let need = members
            .iter()
            .fold(Res::default(), |a, &m| a.add(node_res(p, m)));
        let partner_there = prep
            .spread
            .iter()
            .filter(|g| g.contains(&(c as u32)))
            .any(|g| g.iter().any(|&o| fixed[o as usize] == Some(h as u32)));
        if partner_there || !load[h].add(need).fits(prep.cap[h]) {
            continue;
        }
        load[h] = load[h].add(need);
        fixed[c] = Some(h as u32);
    }
    fixed
}
