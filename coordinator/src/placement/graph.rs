//! The hypergraph placement works on, and its coarsening: vertices are
//! clusters of nodes, hyperedges are segments (parallel ones merged).

use super::check::{node_res, Prepared};
use super::Problem;

/// Memory (MiB) and vCPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Res {
    pub mem: u64,
    pub cpu: u64,
}

impl Res {
    pub fn new(mem: u64, cpu: u64) -> Self {
        Res { mem, cpu }
    }
    pub fn add(self, o: Res) -> Res {
        Res::new(
            self.mem.saturating_add(o.mem),
            self.cpu.saturating_add(o.cpu),
        )
    }
    pub fn sub(self, o: Res) -> Res {
        Res::new(
            self.mem.saturating_sub(o.mem),
            self.cpu.saturating_sub(o.cpu),
        )
    }
    /// True when `self` fits within `cap` in both dimensions.
    pub fn fits(self, cap: Res) -> bool {
        self.mem <= cap.mem && self.cpu <= cap.cpu
    }
}

/// Hyperedges wider than this are ignored when rating merges and affinity:
/// a big LAN says little about which two nodes belong together, and scanning
/// it for every member would be quadratic.
pub(crate) const WIDE_EDGE: usize = 32;

/// A hypergraph with placement constraints on its vertices.
#[derive(Debug, Clone, Default)]
pub(crate) struct Graph {
    /// Vertex weights.
    pub vw: Vec<Res>,
    /// Edge e's pins are `pins[eoff[e]..eoff[e + 1]]`.
    pub eoff: Vec<usize>,
    pub pins: Vec<u32>,
    /// Edge weights.
    pub ew: Vec<u64>,
    /// Vertex v's edges are `inc[voff[v]..voff[v + 1]]`.
    pub voff: Vec<usize>,
    pub inc: Vec<u32>,
    /// Allowed-host set per vertex (index into `Prepared::allowed_sets`).
    pub allowed: Vec<u32>,
    /// Host a vertex must stay on.
    pub fixed: Vec<Option<u32>>,
    /// Spread groups (vertex ids), and per vertex the groups it is in.
    pub spread: Vec<Vec<u32>>,
    pub vspread: Vec<Vec<u32>>,
}

impl Graph {
    pub fn n(&self) -> usize {
        self.vw.len()
    }
    pub fn edge(&self, e: usize) -> &[u32] {
        &self.pins[self.eoff[e]..self.eoff[e + 1]]
    }
    pub fn edges_of(&self, v: usize) -> &[u32] {
        &self.inc[self.voff[v]..self.voff[v + 1]]
    }

    /// The level-0 graph: one vertex per cluster of the problem.
    pub fn from_problem(p: &Problem, prep: &Prepared) -> Graph {
        let vw = prep
            .clusters
            .iter()
            .map(|ms| {
                ms.iter()
                    .fold(Res::default(), |a, &m| a.add(node_res(p, m)))
            })
            .collect();
        let edges = p.segments.iter().map(|s| {
            let pins: Vec<u32> = s.members.iter().map(|&m| prep.cluster_of[m]).collect();
            (pins, s.weight)
        });
        Graph::assemble(
            vw,
            edges,
            prep.cluster_allowed.clone(),
            prep.cluster_fixed.clone(),
            prep.spread.clone(),
        )
    }

    /// Builds a graph; pins are deduplicated, edges with fewer than two pins
    /// or no weight dropped, and identical edges merged (weights summed).
    fn assemble(
        vw: Vec<Res>,
        edges: impl Iterator<Item = (Vec<u32>, u64)>,
        allowed: Vec<u32>,
        fixed: Vec<Option<u32>>,
        spread: Vec<Vec<u32>>,
    ) -> Graph {
        let mut list: Vec<(Vec<u32>, u64)> = edges
            .filter_map(|(mut pins, w)| {
                pins.sort_unstable();
                pins.dedup();
                (pins.len() >= 2 && w > 0).then_some((pins, w))
            })
            .collect();
        list.sort_unstable();
        let mut g = Graph {
            vw,
            allowed,
            fixed,
            spread,
            ..Graph::default()
        };
        g.eoff.push(0);
        for (pins, w) in list {
            let last = g.ew.len().wrapping_sub(1);
            if !g.ew.is_empty() && g.edge(last) == pins.as_slice() {
                g.ew[last] = g.ew[last].saturating_add(w);
                continue;
            }
            g.pins.extend_from_slice(&pins);
            g.eoff.push(g.pins.len());
            g.ew.push(w);
        }
        g.build_incidence();
        g.vspread = vec![Vec::new(); g.n()];
        for (i, grp) in g.spread.iter().enumerate() {
            for &v in grp {
                g.vspread[v as usize].push(i as u32);
            }
        }
        g
    }

    fn build_incidence(&mut self) {
        let n = self.n();
        let mut deg = vec![0usize; n + 1];
        for &v in &self.pins {
            deg[v as usize + 1] += 1;
        }
        for i in 0..n {
            deg[i + 1] += deg[i];
        }
        let mut pos = deg.clone();
        self.inc = vec![0; self.pins.len()];
        for e in 0..self.ew.len() {
            for i in self.eoff[e]..self.eoff[e + 1] {
                let v = self.pins[i] as usize;
                self.inc[pos[v]] = e as u32;
                pos[v] += 1;
            }
        }
        self.voff = deg;
    }

    /// Heavy-edge clustering: each vertex not yet in a cluster, lightest
    /// first, joins the neighbouring cluster it shares the most edge weight
    /// with per MiB of the joined weight (so pairs form before big clusters,
    /// and the leaves of a star still join their hub). Returns the coarse
    /// graph and the fine → coarse map, or `None` if the graph barely shrinks.
    pub fn coarsen(&self, max: Res) -> Option<(Graph, Vec<u32>)> {
        let n = self.n();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&v| (self.vw[v as usize], v));
        let mut c = Clusters {
            of: (0..n as u32).collect(),
            size: vec![1; n],
            w: self.vw.clone(),
            allowed: self.allowed.clone(),
            spread: self.vspread.clone(),
        };
        let mut score = vec![0u64; n];
        let mut touched: Vec<u32> = Vec::new();
        for &v in &order {
            let v = v as usize;
            if c.of[v] as usize != v || c.size[v] > 1 || self.fixed[v].is_some() {
                continue;
            }
            for &e in self.edges_of(v) {
                let pins = self.edge(e as usize);
                if pins.len() > WIDE_EDGE {
                    continue;
                }
                let r = self.ew[e as usize].saturating_mul(1 << 16) / (pins.len() as u64 - 1);
                for &u in pins {
                    let t = c.of[u as usize];
                    if t as usize != v && self.fixed[u as usize].is_none() {
                        if score[t as usize] == 0 {
                            touched.push(t);
                        }
                        score[t as usize] += r;
                    }
                }
            }
            let mut best: Option<(u64, u32)> = None;
            for &t in &touched {
                let s = score[t as usize] / (c.w[t as usize].mem + self.vw[v].mem).max(1);
                score[t as usize] = 0;
                let better = best.is_none_or(|(bs, bt)| s > bs || (s == bs && t < bt));
                if better && c.can_join(self, v, t as usize, max) {
                    best = Some((s, t));
                }
            }
            touched.clear();
            if let Some((_, t)) = best {
                c.join(self, v, t as usize);
            }
        }
        self.contract(&c.of)
    }

    /// Contracts each cluster (`leader[v]` is the cluster of `v`).
    fn contract(&self, leader: &[u32]) -> Option<(Graph, Vec<u32>)> {
        let n = self.n();
        let mut id = vec![u32::MAX; n];
        let mut cmap = vec![0u32; n];
        let mut nc = 0u32;
        for v in 0..n {
            let l = leader[v] as usize;
            if id[l] == u32::MAX {
                id[l] = nc;
                nc += 1;
            }
            cmap[v] = id[l];
        }
        if (nc as usize) * 10 > n * 9 {
            return None;
        }
        let nc = nc as usize;
        let (mut vw, mut allowed, mut fixed) =
            (vec![Res::default(); nc], vec![0u32; nc], vec![None; nc]);
        for (v, &c) in cmap.iter().enumerate() {
            let c = c as usize;
            vw[c] = vw[c].add(self.vw[v]);
            allowed[c] = allowed[c].max(self.allowed[v]);
            fixed[c] = fixed[c].or(self.fixed[v]);
        }
        let edges = (0..self.ew.len()).map(|e| {
            (
                self.edge(e).iter().map(|&v| cmap[v as usize]).collect(),
                self.ew[e],
            )
        });
        let spread = self
            .spread
            .iter()
            .map(|g| g.iter().map(|&v| cmap[v as usize]).collect())
            .collect();
        Some((Graph::assemble(vw, edges, allowed, fixed, spread), cmap))
    }
}

/// Clusters being formed during coarsening, indexed by their leader vertex.
struct Clusters {
    of: Vec<u32>,
    size: Vec<u32>,
    w: Vec<Res>,
    allowed: Vec<u32>,
    spread: Vec<Vec<u32>>,
}

impl Clusters {
    /// Whether vertex `v` may join cluster `t`: room, compatible pins, and
    /// no spread group in common.
    fn can_join(&self, g: &Graph, v: usize, t: usize, max: Res) -> bool {
        let (sa, sb) = (g.allowed[v], self.allowed[t]);
        (sa == 0 || sb == 0 || sa == sb)
            && self.w[t].add(g.vw[v]).fits(max)
            && !g.vspread[v].iter().any(|grp| self.spread[t].contains(grp))
    }

    fn join(&mut self, g: &Graph, v: usize, t: usize) {
        self.of[v] = t as u32;
        self.size[t] += 1;
        self.w[t] = self.w[t].add(g.vw[v]);
        self.allowed[t] = self.allowed[t].max(g.allowed[v]);
        self.spread[t].extend_from_slice(&g.vspread[v]);
    }
}
