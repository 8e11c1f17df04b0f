//! Benchmark: parse and validate a generated 100,000-node lab.
//!
//! `cargo bench -p labspan-proto --bench lab_validate` prints the time of the
//! whole `lab::parse` (YAML reading, every check, building the model) and, for
//! comparison, of reading the same text into a marked-yaml tree alone.
//! `LAB_BENCH_NODES` and `LAB_BENCH_RUNS` change the size and the run count.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::fmt::Write;
use std::time::{Duration, Instant};

/// A valid lab with `n` nodes: pairs joined by links (with addresses), and
/// every ten nodes on a LAN through a second NIC, plus placement and checks.
fn generated_lab(n: usize) -> String {
    let mut s =
        String::from("name: bench\ndefaults: {image: tiny, memory: 256MiB, cpus: 1}\nnodes:\n");
    for i in 0..n {
        let (hi, lo) = (i / 250 % 256, i % 250 + 1);
        let _ = writeln!(
            s,
            "  n{i}: {{nics: {{eth0: {{ip: [198.19.{hi}.{lo}/24]}}, eth1: {{mtu: 1400}}}}}}"
        );
    }
    s.push_str("links:\n");
    for i in (0..n.saturating_sub(1)).step_by(2) {
        let _ = writeln!(
            s,
            "  - {{endpoints: [n{i}:eth0, n{}:eth0], delay: 1ms}}",
            i + 1
        );
    }
    s.push_str("lans:\n");
    for (k, chunk) in (0..n).collect::<Vec<_>>().chunks(10).enumerate() {
        let members: Vec<String> = chunk.iter().map(|i| format!("n{i}:eth1")).collect();
        let _ = writeln!(s, "  lan{k}: [{}]", members.join(", "));
    }
    s.push_str("placement:\n  together: [[n0, n1]]\n  spread: [[n2, n3, n4]]\n");
    s.push_str("verify:\n  - ping: {from: n0, to: n1}\n");
    s
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Time this thread has spent on a CPU (Linux), which, unlike wall time,
/// does not grow while other processes hold the CPUs.
fn cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        s.split_whitespace().next()?.parse().ok()?,
    ))
}

/// Median wall time, min wall time, and median on-CPU time of `runs` calls of `f`.
fn time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration, Duration) {
    let (mut wall, mut cpu): (Vec<Duration>, Vec<Duration>) = (0..runs.max(1))
        .map(|_| {
            let (start, cpu0) = (Instant::now(), cpu_time());
            f();
            let on_cpu = cpu_time().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
            (start.elapsed(), on_cpu.unwrap_or_default())
        })
        .unzip();
    wall.sort();
    cpu.sort();
    (wall[wall.len() / 2], wall[0], cpu[cpu.len() / 2])
}

fn main() {
    let n = env_or("LAB_BENCH_NODES", 100_000);
    let runs = env_or("LAB_BENCH_RUNS", 5);
    let text = generated_lab(n);
    let (med, min, cpu) = time(runs, || {
        match labspan_proto::lab::parse("bench.yaml", &text) {
            Ok(lab) => assert_eq!(lab.nodes.len(), n),
            Err(e) => panic!("generated lab is invalid: {e}"),
        }
    });
    let mib = text.len() as f64 / (1024.0 * 1024.0);
    println!("lab::parse, {n} nodes, {mib:.1} MiB of YAML: wall median {med:?}, min {min:?}; on-CPU median {cpu:?} ({runs} runs)");
    let (med, min, cpu) = time(runs, || {
        let opts = marked_yaml::LoaderOptions::default()
            .prevent_coercion(true)
            .error_on_duplicate_keys(true);
        assert!(marked_yaml::parse_yaml_with_options(0, &text, opts).is_ok());
    });
    println!("  of which marked-yaml reading alone: wall median {med:?}, min {min:?}; on-CPU median {cpu:?}");
}
