//! Placement benchmark: labspan vs greedy first-fit vs METIS k-way on random
//! regular, Barabási–Albert, fat-tree and 2D-grid labs with mixed memory
//! sizes, hosts about 85% full. Prints a markdown table (docs/benchmarks.md).
//!
//! `cargo bench -p labspan-coordinator --bench placement [-- --quick]`
//! METIS comes from Debian's `metis` package (`gpmetis`); without it the
//! METIS columns are empty.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use labspan_coordinator::placement::{
    place_indices, vm_memory_mib, Figures, HostOffer, NodeDemand, Problem, SegmentDemand,
    RATE_WEIGHT_FULL,
};

/// Deterministic generator (splitmix64), so every run benches the same labs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

type Edges = Vec<(usize, usize)>;

fn random_regular(n: usize, d: usize, rng: &mut Rng) -> Edges {
    let mut stubs: Vec<usize> = (0..n).flat_map(|v| std::iter::repeat_n(v, d)).collect();
    for i in (1..stubs.len()).rev() {
        stubs.swap(i, rng.below(i + 1));
    }
    stubs
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0], c[1]))
        .collect()
}

fn barabasi_albert(n: usize, m: usize, rng: &mut Rng) -> Edges {
    let mut edges = Vec::new();
    let mut ends: Vec<usize> = Vec::new();
    for v in 1..=m {
        edges.push((0, v));
        ends.extend([0, v]);
    }
    for v in m + 1..n {
        let mut chosen = BTreeSet::new();
        while chosen.len() < m {
            chosen.insert(ends[rng.below(ends.len())]);
        }
        for u in chosen {
            edges.push((u, v));
            ends.extend([u, v]);
        }
    }
    edges
}

/// A k-ary fat tree (Clos): k³/4 servers, k²/2 edge, k²/2 aggregation, k²/4 core.
fn fat_tree(k: usize) -> (usize, Edges) {
    let (half, pods) = (k / 2, k);
    let core0 = 0;
    let agg0 = core0 + half * half;
    let edge0 = agg0 + pods * half;
    let srv0 = edge0 + pods * half;
    let n = srv0 + pods * half * half;
    let mut e = Vec::new();
    for p in 0..pods {
        for a in 0..half {
            let agg = agg0 + p * half + a;
            for c in 0..half {
                e.push((core0 + a * half + c, agg));
            }
            for s in 0..half {
                e.push((agg, edge0 + p * half + s));
            }
        }
        for s in 0..half {
            for h in 0..half {
                e.push((edge0 + p * half + s, srv0 + (p * half + s) * half + h));
            }
        }
    }
    (n, e)
}

fn grid(side: usize) -> Edges {
    let id = |r: usize, c: usize| r * side + c;
    let mut e = Vec::new();
    for r in 0..side {
        for c in 0..side {
            if c + 1 < side {
                e.push((id(r, c), id(r, c + 1)));
            }
            if r + 1 < side {
                e.push((id(r, c), id(r + 1, c)));
            }
        }
    }
    e
}

/// Cleans an edge list (no loops, no duplicates) and builds the problem:
/// guest memory 256 MiB..4 GiB, hosts sized so the lab fills 85%.
fn problem(n: usize, edges: Edges, hosts: usize, rng: &mut Rng) -> Problem {
    let set: BTreeSet<(usize, usize)> = edges
        .into_iter()
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.min(b), a.max(b)))
        .collect();
    let sizes = [256, 256, 512, 512, 512, 1024, 1024, 2048, 4096];
    let nodes: Vec<NodeDemand> = (0..n)
        .map(|i| {
            let vcpus = 1 + rng.below(2) as u64;
            NodeDemand {
                name: format!("n{i}"),
                memory_mib: vm_memory_mib(sizes[rng.below(sizes.len())], vcpus),
                vcpus,
            }
        })
        .collect();
    let total: u64 = nodes.iter().map(|x| x.memory_mib).sum();
    let cap = (total as f64 / 0.85 / hosts as f64).ceil() as u64;
    let segments = set
        .into_iter()
        .map(|(a, b)| SegmentDemand {
            key: format!("{a}-{b}"),
            members: vec![a, b],
            weight: RATE_WEIGHT_FULL,
        })
        .collect();
    let hosts = (0..hosts)
        .map(|h| HostOffer {
            name: format!("h{h}"),
            memory_mib: cap,
            vcpus: 1 << 20,
            used_memory_mib: 0,
            used_vcpus: 0,
            labels: BTreeSet::new(),
            lacks: BTreeSet::new(),
        })
        .collect();
    Problem {
        nodes,
        segments,
        hosts,
        ..Problem::default()
    }
}

/// Greedy first-fit in node order: the baseline a naive scheduler gives.
fn first_fit(p: &Problem) -> Option<Vec<usize>> {
    let mut free: Vec<u64> = p.hosts.iter().map(|h| h.memory_mib).collect();
    p.nodes
        .iter()
        .map(|n| {
            let h = free.iter().position(|&f| f >= n.memory_mib)?;
            free[h] -= n.memory_mib;
            Some(h)
        })
        .collect()
}

/// METIS k-way through `gpmetis`, vertex weight = memory. Returns the
/// partition and METIS's own partitioning time.
fn metis(p: &Problem, dir: &std::path::Path) -> Option<(Vec<usize>, Duration)> {
    let n = p.nodes.len();
    let mut adj = vec![Vec::new(); n];
    for s in &p.segments {
        adj[s.members[0]].push(s.members[1] + 1);
        adj[s.members[1]].push(s.members[0] + 1);
    }
    let mut text = format!("{} {} 010\n", n, p.segments.len());
    for (v, nb) in adj.iter().enumerate() {
        let _ = write!(text, "{}", p.nodes[v].memory_mib);
        for u in nb {
            let _ = write!(text, " {u}");
        }
        text.push('\n');
    }
    let path = dir.join("graph.txt");
    std::fs::write(&path, text).ok()?;
    let k = p.hosts.len();
    let out = Command::new("gpmetis")
        .args(["-ptype=kway", "-objtype=cut"])
        .arg(&path)
        .arg(k.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("gpmetis failed: {}", String::from_utf8_lossy(&out.stdout));
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let secs: f64 = stdout
        .lines()
        .find(|l| l.contains("Partitioning:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    let part = std::fs::read_to_string(dir.join(format!("graph.txt.part.{k}"))).ok()?;
    let assign = part
        .lines()
        .map(|l| l.trim().parse().ok())
        .collect::<Option<Vec<usize>>>()?;
    Some((assign, Duration::from_secs_f64(secs.max(0.0))))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

struct Row {
    ours: u64,
    metis: Option<(u64, bool)>,
}

fn run(name: &str, p: &Problem, dir: &std::path::Path, out: &mut String) -> Option<Row> {
    let mut best = Duration::MAX;
    let mut ours = Vec::new();
    for _ in 0..3 {
        let t = thread_cpu_time();
        ours = place_indices(p)
            .map_err(|e| eprintln!("{name}: labspan failed: {e}"))
            .ok()?;
        best = best.min(thread_cpu_time().saturating_sub(t));
    }
    let f = Figures::of(p, &ours);
    assert!(f.within_capacity(), "labspan overfilled a host on {name}");
    let ff = first_fit(p).map(|a| (Figures::of(p, &a).tunnels, ms_of(|| first_fit(p))));
    let m = metis(p, dir).map(|(a, t)| {
        let fm = Figures::of(p, &a);
        (fm.tunnels, fm.within_capacity(), t)
    });
    let cell =
        |x: Option<(u64, String)>| x.map_or("–".to_string(), |(t, d)| format!("{t} | {d}"));
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {} | {} |",
        p.nodes.len(),
        p.hosts.len(),
        f.tunnels,
        ms(best),
        m.map_or("– | –".into(), |(t, _, d)| format!("{t} | {}", ms(d))),
        m.map_or("–".into(), |(_, fits, _)| if fits {
            "yes".into()
        } else {
            "**no**".to_string()
        }),
        cell(ff.map(|(t, d)| (t, ms(d)))),
    );
    Some(Row {
        ours: f.tunnels,
        metis: m.map(|(t, fits, _)| (t, fits)),
    })
}

fn ms_of<T>(f: impl Fn() -> T) -> Duration {
    let t = thread_cpu_time();
    let _ = f();
    thread_cpu_time().saturating_sub(t)
}

/// CPU time of this thread: unlike wall time, it does not count the time
/// other processes on a busy build machine take, and it is what gpmetis
/// reports for METIS.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only TEXT` keeps the runs whose "topology/nodes/hosts" contains TEXT.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let dir = std::env::temp_dir().join(format!("labspan-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut out = String::from(
        "| topology | nodes | hosts | labspan tunnels | labspan ms (CPU) | METIS tunnels | METIS ms (CPU) | METIS fits | first-fit tunnels | first-fit ms |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    let sizes: &[(usize, usize, usize)] = if quick {
        &[(100, 6, 10), (1000, 14, 32)]
    } else {
        &[(100, 6, 10), (1000, 14, 32), (10_000, 32, 100)]
    };
    for &(n, k, side) in sizes {
        for hosts in [4, 16, 64, 1000].into_iter().filter(|&h| n >= 4 * h) {
            let mut rng = Rng(n as u64 * 7919 + hosts as u64);
            let (ft_n, ft) = fat_tree(k);
            let labs = [
                ("random 4-regular", n, random_regular(n, 4, &mut rng)),
                ("Barabási–Albert m=2", n, barabasi_albert(n, 2, &mut rng)),
                ("fat-tree", ft_n, ft),
                ("2D grid", side * side, grid(side)),
            ];
            for (name, nn, edges) in labs {
                let name = if name.starts_with("fat-tree") {
                    format!("fat-tree k={k}")
                } else {
                    name.to_string()
                };
                if only
                    .as_ref()
                    .is_some_and(|o| !format!("{name}/{n}/{hosts}").contains(o.as_str()))
                {
                    continue;
                }
                let p = problem(nn, edges, hosts, &mut rng);
                rows.extend(run(&name, &p, &dir, &mut out));
            }
        }
    }
    print!("{out}");
    summary(&rows);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ratio of labspan's tunnels to METIS's, over runs where both are nonzero.
fn summary(rows: &[Row]) {
    let ratios: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            r.metis
                .filter(|(t, _)| *t > 0)
                .map(|(t, _)| r.ours as f64 / t as f64)
        })
        .collect();
    if ratios.is_empty() {
        println!("\n(no METIS results: install Debian's `metis` package for gpmetis)");
        return;
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let worst = ratios.iter().cloned().fold(f64::MIN, f64::max);
    let unfit = rows
        .iter()
        .filter(|r| matches!(r.metis, Some((_, false))))
        .count();
    println!(
        "\nlabspan/METIS tunnels: mean {mean:.3}, worst {worst:.3} over {} runs; METIS overfilled a host in {unfit} of {} runs",
        ratios.len(),
        rows.len()
    );
}
