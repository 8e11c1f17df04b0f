//! The first assignment, on the coarsest graph: kept vertices first, then
//! greedy growth. The unplaced vertex most attached to some host that still
//! has room goes there; when no vertex is attached to a host with room, the
//! one most attached to full hosts seeds the emptiest host it may use.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use super::check::Prepared;
use super::graph::{Graph, Res, WIDE_EDGE};
use super::refine::{State, NONE};

/// A vertex that fit nowhere.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stuck {
    pub vertex: usize,
    /// The host with the most free memory at that point, and how much.
    pub host: usize,
    pub free_mib: u64,
}

impl Stuck {
    fn at(st: &State, vertex: usize) -> Stuck {
        let room = |h: usize| st.prep.cap[h].sub(st.load[h]).mem;
        let host = (0..st.load.len())
            .max_by_key(|&h| (room(h), Reverse(h)))
            .unwrap_or(0);
        Stuck {
            vertex,
            host,
            free_mib: room(host),
        }
    }
}

/// Greedy growth; the first host is opened with `first` (or the default
/// seed). With `big`, vertices at least that heavy (MiB) are packed first,
/// biggest first, because growth leaves them for last, when free memory is
/// in pieces. `Err` names the first vertex that did not fit.
pub(crate) fn grow(
    g: &Graph,
    prep: &Prepared,
    first: Option<usize>,
    big: Option<u64>,
) -> Result<Vec<u32>, Stuck> {
    let mut first = first.filter(|&v| v < g.n() && g.fixed[v].is_none());
    let fixed: Vec<u32> = g.fixed.iter().map(|f| f.unwrap_or(NONE)).collect();
    let mut st = State::new(g, prep, fixed);
    if let Some(min) = big {
        pack_into(&mut st, |v| g.vw[v].mem >= min)?;
    }
    let mut aff: Vec<Vec<(u32, u64)>> = vec![Vec::new(); g.n()];
    let mut heap: BinaryHeap<(u64, Reverse<u32>)> = BinaryHeap::new();
    let mut seeds = Seeds::new(g);
    // Hosts by fullness, so opening the emptiest host is not a scan.
    let none = Res::default();
    let mut by_fullness: BTreeSet<(u64, u32)> = (0..st.load.len() as u32)
        .map(|h| (st.fullness(h, none), h))
        .collect();
    let mut left = g.n();
    for v in 0..g.n() {
        if st.assign[v] != NONE {
            left -= 1;
            attach(&st, v, &mut aff, &mut heap);
        }
    }
    while left > 0 {
        let (v, h) = match heap.pop() {
            Some((key, Reverse(v))) => {
                let v = v as usize;
                if st.assign[v] != NONE {
                    continue;
                }
                match best_attached(&st, v, &aff[v]) {
                    Some((a, h)) if a >= key => (v, h),
                    Some((a, _)) => {
                        heap.push((a, Reverse(v as u32)));
                        continue;
                    }
                    None => {
                        seeds.push(v, &st, &aff[v]);
                        continue;
                    }
                }
            }
            None => {
                let v = first
                    .take()
                    .filter(|&v| st.assign[v] == NONE)
                    .or_else(|| seeds.next(&st, &aff))
                    .ok_or_else(|| Stuck::at(&st, 0))?;
                let h = by_fullness
                    .iter()
                    .map(|&(_, h)| h)
                    .find(|&h| st.allows(v, h));
                (v, h.ok_or_else(|| Stuck::at(&st, v))?)
            }
        };
        by_fullness.remove(&(st.fullness(h, none), h));
        st.put(v, h);
        by_fullness.insert((st.fullness(h, none), h));
        left -= 1;
        attach(&st, v, &mut aff, &mut heap);
    }
    Ok(st.assign)
}

/// Records that `v` now sits on its host: its neighbours gain affinity there.
fn attach(
    st: &State,
    v: usize,
    aff: &mut [Vec<(u32, u64)>],
    heap: &mut BinaryHeap<(u64, Reverse<u32>)>,
) {
    let (g, h) = (st.g, st.assign[v]);
    for &e in g.edges_of(v) {
        let pins = g.edge(e as usize);
        if pins.len() > WIDE_EDGE {
            continue;
        }
        let r = g.ew[e as usize].saturating_mul(1024) / (pins.len() as u64 - 1);
        for &u in pins {
            if st.assign[u as usize] != NONE {
                continue;
            }
            let a = &mut aff[u as usize];
            let val = match a.iter_mut().find(|(x, _)| *x == h) {
                Some(slot) => {
                    slot.1 += r;
                    slot.1
                }
                None => {
                    a.push((h, r));
                    r
                }
            };
            heap.push((val, Reverse(u)));
        }
    }
}

/// The host `v` is most attached to among those it may go to now.
fn best_attached(st: &State, v: usize, aff: &[(u32, u64)]) -> Option<(u64, u32)> {
    let s = st.g.vw[v];
    aff.iter()
        .filter(|(h, _)| st.allows(v, *h))
        .min_by_key(|(h, a)| (Reverse(*a), st.fullness(*h, s), *h))
        .map(|&(h, a)| (a, h))
}

/// Candidates to open a host with, best first: the vertex most attached to
/// (full) hosts, so regions stay next to each other, then the heaviest.
/// Keys go stale as affinity grows; `next` re-checks them.
struct Seeds(BinaryHeap<(u64, Res, Reverse<u32>)>);

impl Seeds {
    fn new(g: &Graph) -> Seeds {
        Seeds(
            (0..g.n())
                .map(|v| (0, g.vw[v], Reverse(v as u32)))
                .collect(),
        )
    }

    fn push(&mut self, v: usize, st: &State, aff: &[(u32, u64)]) {
        self.0.push((total(aff), st.g.vw[v], Reverse(v as u32)));
    }

    fn next(&mut self, st: &State, aff: &[Vec<(u32, u64)>]) -> Option<usize> {
        while let Some((key, w, Reverse(v))) = self.0.pop() {
            let v = v as usize;
            if st.assign[v] != NONE {
                continue;
            }
            let now = total(&aff[v]);
            if now == key {
                return Some(v);
            }
            self.0.push((now, w, Reverse(v as u32)));
        }
        None
    }
}

fn total(aff: &[(u32, u64)]) -> u64 {
    aff.iter().map(|x| x.1).sum()
}

/// Packing without regard to links: biggest vertex first, onto the host
/// with the most room left. Used when growth leaves memory too fragmented.
pub(crate) fn pack(g: &Graph, prep: &Prepared) -> Result<Vec<u32>, Stuck> {
    let fixed: Vec<u32> = g.fixed.iter().map(|f| f.unwrap_or(NONE)).collect();
    let mut st = State::new(g, prep, fixed);
    pack_into(&mut st, |_| true)?;
    Ok(st.assign)
}

/// Packs the unplaced vertices that `which` selects, biggest first.
fn pack_into(st: &mut State, which: impl Fn(usize) -> bool) -> Result<(), Stuck> {
    let (g, prep) = (st.g, st.prep);
    let mut order: Vec<usize> = (0..g.n())
        .filter(|&v| st.assign[v] == NONE && which(v))
        .collect();
    // Pinned and spread vertices have fewer choices: place them first.
    order.sort_by_key(|&v| {
        (
            g.allowed[v] == 0,
            g.vspread[v].is_empty(),
            Reverse(g.vw[v]),
            v,
        )
    });
    for v in order {
        let room = |h: u32| prep.cap[h as usize].sub(st.load[h as usize]).mem;
        let h = (0..st.load.len() as u32)
            .filter(|&h| st.allows(v, h))
            .max_by_key(|&h| (room(h), Reverse(h)))
            .ok_or_else(|| Stuck::at(st, v))?;
        st.put(v, h);
    }
    Ok(())
}
