//! Benchmark: parse and validate a generated 100,000-node lab.
//!
//! `cargo bench -p labspan-proto --bench lab_validate` prints the time of the
//! whole `lab::parse` (YAML reading, every check, building the model).

use std::fmt::Write;
use std::time::{Duration, Instant};

/// A valid lab with `n` nodes: pairs joined by links (with addresses), and
/// every ten nodes on a LAN through a second NIC, plus placement and checks.
fn generated_lab(n: usize) -> String {
    let mut s = String::from("name: bench\ndefaults: {image: tiny, memory: 256MiB, cpus: 1}\nnodes:\n");
    for i in 0..n {
        let (hi, lo) = (i / 250, i % 250 + 1);
        let _ = writeln!(s, "  n{i}: {{nics: {{eth0: {{ip: [198.19.{}.{lo}/24]}}, eth1: {{mtu: 1400}}}}}}", hi % 256);
    }
    s.push_str("links:\n");
    for i in (0..n.saturating_sub(1)).step_by(2) {
        let _ = writeln!(s, "  - {{endpoints: [n{i}:eth0, n{}:eth0], delay: 1ms}}", i + 1);
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

fn main() {
    let n = 100_000;
    let text = generated_lab(n);
    let mut times: Vec<Duration> = Vec::new();
    if std::env::var_os("LAB_BENCH_YAML_ONLY").is_some() {
        for _ in 0..5 {
            let opts = marked_yaml::LoaderOptions::default().prevent_coercion(true).error_on_duplicate_keys(true);
            let tree = marked_yaml::parse_yaml_with_options(0, &text, opts);
            assert!(tree.is_ok());
        }
        return;
    }
    if std::env::var_os("LAB_BENCH_GEN_ONLY").is_some() {
        return;
    }
    let runs: usize = std::env::var("LAB_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    for _ in 0..runs {
        let start = Instant::now();
        let lab = labspan_proto::lab::parse("bench.yaml", &text);
        times.push(start.elapsed());
        match lab {
            Ok(lab) => assert_eq!(lab.nodes.len(), n),
            Err(e) => panic!("generated lab is invalid: {e}"),
        }
    }
    times.sort();
    if std::env::var_os("LAB_BENCH_STAGES").is_some() {
        let start = Instant::now();
        let opts = marked_yaml::LoaderOptions::default().prevent_coercion(true).error_on_duplicate_keys(true);
        let tree = marked_yaml::parse_yaml_with_options(0, &text, opts);
        println!("marked-yaml alone: {:?} ({})", start.elapsed(), tree.is_ok());
    }
    println!(
        "lab validation: {n} nodes, {} segments, {:.1} MiB of YAML: median {:?}, min {:?}, max {:?} ({runs} runs)",
        n / 2 + n.div_ceil(10),
        text.len() as f64 / (1024.0 * 1024.0),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
    );
}
