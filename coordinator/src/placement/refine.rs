//! The working state of a (partial) assignment and k-way refinement: move
//! single vertices to the host that saves the most tunnel weight, within
//! capacity and hints; load balance breaks ties.

use super::check::Prepared;
use super::graph::{Graph, Res};

/// No host yet.
pub(crate) const NONE: u32 = u32::MAX;

/// Passes over all vertices per level; refinement stops earlier when a pass
/// moves nothing.
const MAX_PASSES: usize = 12;

/// An assignment with the bookkeeping that makes gains cheap: per host load
/// and, per edge, how many of its pins sit on each host.
pub(crate) struct State<'a> {
    pub g: &'a Graph,
    pub prep: &'a Prepared,
    pub assign: Vec<u32>,
    pub load: Vec<Res>,
    counts: Vec<Vec<(u32, u32)>>,
    /// Scratch for `best_move`: edge weight from a vertex to each host, and
    /// the hosts touched (so clearing is as cheap as filling).
    conn: Vec<u64>,
    cand: Vec<u32>,
}

impl<'a> State<'a> {
    /// A state with the given assignment (vertices may be `NONE`).
    pub fn new(g: &'a Graph, prep: &'a Prepared, assign: Vec<u32>) -> Self {
        let mut s = State {
            g,
            prep,
            assign: vec![NONE; g.n()],
            load: vec![Res::default(); prep.cap.len()],
            counts: vec![Vec::new(); g.ew.len()],
            conn: vec![0; prep.cap.len()],
            cand: Vec::new(),
        };
        for (v, &h) in assign.iter().enumerate() {
            if h != NONE {
                s.put(v, h);
            }
        }
        s
    }

    /// Assigns an unassigned vertex.
    pub fn put(&mut self, v: usize, h: u32) {
        self.assign[v] = h;
        self.load[h as usize] = self.load[h as usize].add(self.g.vw[v]);
        for &e in self.g.edges_of(v) {
            let c = &mut self.counts[e as usize];
            match c.iter_mut().find(|(x, _)| *x == h) {
                Some(slot) => slot.1 += 1,
                None => c.push((h, 1)),
            }
        }
    }

    fn take(&mut self, v: usize) {
        let h = self.assign[v];
        self.assign[v] = NONE;
        self.load[h as usize] = self.load[h as usize].sub(self.g.vw[v]);
        for &e in self.g.edges_of(v) {
            let c = &mut self.counts[e as usize];
            if let Some(i) = c.iter().position(|(x, _)| *x == h) {
                c[i].1 -= 1;
                if c[i].1 == 0 {
                    c.swap_remove(i);
                }
            }
        }
    }

    /// Whether `v` may go to `h` now: pins, room, and no spread partner there.
    pub fn allows(&self, v: usize, h: u32) -> bool {
        let g = self.g;
        self.prep.allowed_sets[g.allowed[v] as usize][h as usize]
            && self.load[h as usize]
                .add(g.vw[v])
                .fits(self.prep.cap[h as usize])
            && !g.vspread[v].iter().any(|&grp| {
                g.spread[grp as usize]
                    .iter()
                    .any(|&u| u as usize != v && self.assign[u as usize] == h)
            })
    }

    /// Whether moving weight `s` from `a` to `b` lowers Σ load²/capacity,
    /// which strictly decreases with every such move, so balancing ends.
    pub fn balances(&self, s: Res, a: u32, b: u32) -> bool {
        let (la, lb) = (self.load[a as usize].mem, self.load[b as usize].mem);
        let (ca, cb) = (
            self.prep.cap[a as usize].mem.max(1),
            self.prep.cap[b as usize].mem.max(1),
        );
        let lhs = (2 * lb + s.mem).saturating_mul(ca);
        lhs < (2 * la).saturating_sub(s.mem).saturating_mul(cb)
    }

    /// Relative memory load of `h` after adding `s`, for tie-breaks (0..=1e6).
    pub fn fullness(&self, h: u32, s: Res) -> u64 {
        let cap = self.prep.cap[h as usize].mem.max(1);
        self.load[h as usize].add(s).mem.saturating_mul(1_000_000) / cap
    }

    /// Whether one of `v`'s edges spans hosts (only such vertices can gain).
    fn on_border(&self, v: usize) -> bool {
        self.g
            .edges_of(v)
            .iter()
            .any(|&e| self.counts[e as usize].len() > 1)
    }

    /// The best host to move `v` to (negative gains included) and its
    /// gain in tunnel weight; ties go to the emptier host, then the lower index.
    fn best_move(&mut self, v: usize) -> Option<(i64, u32)> {
        let from = self.assign[v];
        let (mut internal, mut total) = (0u64, 0u64);
        self.cand.clear();
        for &e in self.g.edges_of(v) {
            let w = self.g.ew[e as usize];
            total += w;
            for &(h, c) in &self.counts[e as usize] {
                if h == from {
                    internal += if c == 1 { w } else { 0 };
                } else {
                    if self.conn[h as usize] == 0 {
                        self.cand.push(h);
                    }
                    self.conn[h as usize] += w;
                }
            }
        }
        let s = self.g.vw[v];
        let mut best: Option<(i64, u64, u32)> = None;
        for i in 0..self.cand.len() {
            let h = self.cand[i];
            let conn = std::mem::take(&mut self.conn[h as usize]);
            let gain = internal as i64 + conn as i64 - total as i64;
            let full = self.fullness(h, s);
            let better = best.is_none_or(|(bg, bf, bh)| {
                (gain, std::cmp::Reverse(full), std::cmp::Reverse(h))
                    > (bg, std::cmp::Reverse(bf), std::cmp::Reverse(bh))
            });
            if better && self.allows(v, h) {
                best = Some((gain, full, h));
            }
        }
        best.map(|(g, _, h)| (g, h))
    }

    fn relocate(&mut self, v: usize, h: u32) {
        self.take(v);
        self.put(v, h);
    }

    /// Tries the best move of `v`; returns whether it moved.
    fn try_move(&mut self, v: usize) -> bool {
        let from = self.assign[v];
        match self.best_move(v) {
            Some((gain, h)) if gain > 0 || (gain == 0 && self.balances(self.g.vw[v], from, h)) => {
                self.relocate(v, h);
                true
            }
            _ => false,
        }
    }

    /// One Fiduccia–Mattheyses pass: repeatedly makes the best move of any
    /// unlocked boundary vertex, even a losing one, locks it, and at the end
    /// rolls back to the best prefix. Climbs out of the local minima where
    /// greedy moves stop. Returns the weight saved.
    pub fn fm_pass(&mut self) -> i64 {
        let n = self.g.n();
        let mut locked = vec![false; n];
        let mut heap: std::collections::BinaryHeap<(i64, std::cmp::Reverse<u32>)> =
            std::collections::BinaryHeap::new();
        for v in 0..n {
            if self.g.fixed[v].is_none() && self.on_border(v) {
                if let Some((gain, _)) = self.best_move(v) {
                    heap.push((gain, std::cmp::Reverse(v as u32)));
                }
            }
        }
        let (mut log, mut cum, mut best, mut best_len) = (Vec::new(), 0i64, 0i64, 0usize);
        let patience = 25 + n / 20;
        while let Some((key, std::cmp::Reverse(v))) = heap.pop() {
            let v = v as usize;
            if locked[v] {
                continue;
            }
            let Some((gain, h)) = self.best_move(v) else {
                continue;
            };
            if gain < key {
                heap.push((gain, std::cmp::Reverse(v as u32)));
                continue;
            }
            log.push((v, self.assign[v]));
            self.relocate(v, h);
            locked[v] = true;
            cum += gain;
            if cum > best {
                (best, best_len) = (cum, log.len());
            } else if log.len() - best_len > patience {
                break;
            }
            self.push_neighbours(v, &locked, &mut heap);
        }
        for &(v, from) in log[best_len..].iter().rev() {
            self.relocate(v, from);
        }
        best
    }

    fn push_neighbours(
        &mut self,
        v: usize,
        locked: &[bool],
        heap: &mut std::collections::BinaryHeap<(i64, std::cmp::Reverse<u32>)>,
    ) {
        let g = self.g;
        for &e in g.edges_of(v) {
            let pins = g.edge(e as usize);
            if pins.len() > super::graph::WIDE_EDGE {
                continue;
            }
            for &u in pins {
                let u = u as usize;
                if !locked[u] && g.fixed[u].is_none() {
                    if let Some((gain, _)) = self.best_move(u) {
                        heap.push((gain, std::cmp::Reverse(u as u32)));
                    }
                }
            }
        }
    }

    /// Σ over edges of weight × (hosts spanned − 1).
    pub fn cost(&self) -> u64 {
        self.counts
            .iter()
            .zip(&self.g.ew)
            .map(|(c, w)| w * (c.len().saturating_sub(1) as u64))
            .sum()
    }

    /// Greedy refinement, then up to `fm_passes` FM passes while they gain.
    pub fn refine_with(&mut self, fm_passes: usize) {
        self.refine();
        {
            for _ in 0..fm_passes {
                if self.fm_pass() <= 0 {
                    break;
                }
                self.refine();
            }
        }
    }

    /// Refines until a pass moves nothing (or the pass limit).
    pub fn refine(&mut self) {
        for _ in 0..MAX_PASSES {
            let mut moved = 0usize;
            for v in 0..self.g.n() {
                if self.g.fixed[v].is_none() && self.try_move(v) {
                    moved += 1;
                }
            }
            if moved == 0 {
                break;
            }
        }
    }
}
