//! The multilevel scheme: coarsen by heavy-edge matching, place the coarsest
//! graph by greedy growth, then undo the coarsening level by level and refine
//! at each level (as METIS does, but with capacity and hints kept exact at
//! every level).

use super::check::{node_res, Prepared};
use super::error::PlacementError;
use super::graph::{Graph, Res};
use super::initial::{grow, pack, Stuck};
use super::memory::MibPair;
use super::refine::State;
use super::Problem;

/// Coarsening stops at this many vertices per host.
const COARSEST_PER_HOST: usize = 6;
/// A coarse vertex weighs at most this fraction of the smallest host, so the
/// coarsest graph still packs.
const MAX_VERTEX_SHARE: u64 = 6;
/// Initial growths tried at the coarsest level: up to this many, fewer on
/// big coarse graphs (about this many vertices grown in all).
const MAX_TRIALS: usize = 8;
const TRIAL_BUDGET: usize = 20_000;
/// Coarse graphs up to this size get FM in every initial trial, bigger
/// ones only on the trial that wins.
const FM_EVERY_TRIAL: usize = 2_000;
/// Above this many hosts, one FM pass per level.
const FM_MANY_HOSTS: usize = 64;

/// Places every node; returns the host index per node.
pub(crate) fn solve(p: &Problem, prep: &Prepared) -> Result<Vec<usize>, PlacementError> {
    let (levels, maps) = coarsen_all(Graph::from_problem(p, prep), prep);
    let mut start = levels.len() - 1;
    let mut assign = loop {
        match best_growth(&levels[start], prep) {
            Some(a) => break a,
            None if start > 0 => start -= 1,
            None => break pack(&levels[0], prep).map_err(|s| fragmented(p, prep, s))?,
        }
    };
    for level in (0..start).rev() {
        assign = maps[level].iter().map(|&c| assign[c as usize]).collect();
        let mut st = State::new(&levels[level], prep, assign);
        st.refine_with(fm_passes(prep));
        assign = st.assign;
    }
    let hosts: Vec<usize> = prep
        .cluster_of
        .iter()
        .map(|&c| assign[c as usize] as usize)
        .collect();
    // Every step above places every vertex; a gap here is a bug, reported
    // rather than turned into a host index that does not exist.
    match hosts.iter().position(|&h| h >= p.hosts.len()) {
        Some(n) => Err(PlacementError::InvalidInput(format!(
            "internal error: node \"{}\" was left unplaced",
            p.nodes[n].name
        ))),
        None => Ok(hosts),
    }
}

/// Grows from several first seeds (spread over the vertex range), refines
/// each, and keeps the cheapest; `None` when no growth packs the graph.
fn best_growth(g: &Graph, prep: &Prepared) -> Option<Vec<u32>> {
    let trials = (TRIAL_BUDGET / g.n().max(1)).clamp(1, MAX_TRIALS);
    let smallest = prep
        .cap
        .iter()
        .map(|c| c.mem)
        .filter(|&m| m > 0)
        .min()
        .unwrap_or(0);
    let mut best: Option<(u64, Vec<u32>)> = None;
    for (t, big) in (0..trials)
        .map(|t| (t, None))
        .chain((0..trials).map(|t| (t, Some(smallest / 8))))
    {
        if big.is_some() && best.is_some() {
            break;
        }
        let first = (t > 0).then(|| (t * g.n()) / trials);
        let Ok(a) = grow(g, prep, first, big) else {
            continue;
        };
        let mut st = State::new(g, prep, a);
        // On small coarse graphs FM is cheap and changes which trial wins.
        st.refine_with(if g.n() <= FM_EVERY_TRIAL {
            fm_passes(prep)
        } else {
            0
        });
        let cost = st.cost();
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            best = Some((cost, st.assign));
        }
    }
    let mut st = State::new(g, prep, best?.1);
    st.refine_with(fm_passes(prep));
    Some(st.assign)
}

/// FM passes per level. They pay off most with few hosts, where a partition
/// has long borders that greedy moves cannot straighten; with many hosts one
/// pass takes most of the gain at a fraction of the time.
fn fm_passes(prep: &Prepared) -> usize {
    if prep.cap.len() <= FM_MANY_HOSTS {
        4
    } else {
        1
    }
}

/// All levels, finest first, and the maps from each level to the next.
fn coarsen_all(g0: Graph, prep: &Prepared) -> (Vec<Graph>, Vec<Vec<u32>>) {
    let usable: Vec<Res> = prep
        .cap
        .iter()
        .copied()
        .filter(|c| c.mem > 0 && c.cpu > 0)
        .collect();
    let smallest = usable.iter().fold(Res::new(u64::MAX, u64::MAX), |a, c| {
        Res::new(a.mem.min(c.mem), a.cpu.min(c.cpu))
    });
    let max = Res::new(
        smallest.mem / MAX_VERTEX_SHARE,
        smallest.cpu / MAX_VERTEX_SHARE,
    );
    let target = COARSEST_PER_HOST * usable.len().max(1);
    let (mut levels, mut maps) = (vec![g0], Vec::new());
    while let Some(last) = levels.last().filter(|g| g.n() > target) {
        match last.coarsen(max) {
            Some((g, map)) => {
                levels.push(g);
                maps.push(map);
            }
            None => break,
        }
    }
    (levels, maps)
}

/// The error for a cluster that fit nowhere even with plain packing.
fn fragmented(p: &Problem, prep: &Prepared, s: Stuck) -> PlacementError {
    let members = &prep.clusters[s.vertex];
    let need = members
        .iter()
        .fold(Res::default(), |a, &m| a.add(node_res(p, m)));
    PlacementError::Fragmented {
        node: p.nodes[members[0]].name.clone(),
        sizes: MibPair {
            need_mib: need.mem,
            free_mib: s.free_mib,
        },
        host: p.hosts[s.host].name.clone(),
    }
}
