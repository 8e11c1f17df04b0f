//! Thirty routers on four hosts: a 6 × 5 grid of `tiny-router` guests
//! running bird2 OSPF (area 0, point-to-point links, each router's own
//! /32 on `lo`), deployed with one `labspan up` on a local 4-host cluster
//! of this 2-core machine. Placement spreads the grid over the hosts, so
//! many of its 49 links cross hosts through VXLAN. The lab's own checks
//! must all pass: every router learned the 30 loopbacks through OSPF, and
//! the opposite corners reach each other's loopback.
//!
//! `LABSPAN_GRID_FILE=PATH` also keeps the generated lab file there (to
//! replay it by hand, or to time it against bare QEMU boots).

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::fmt::Write as _;
use std::time::Instant;

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::{build_image, text};

const COLUMNS: usize = 6;
const ROWS: usize = 5;
const ROUTERS: usize = COLUMNS * ROWS;

/// Router number (1-based) at `row`, `column`.
fn router(row: usize, column: usize) -> usize {
    row * COLUMNS + column + 1
}

/// Each router's /32 on `lo`, announced by OSPF.
fn loopback(r: usize) -> String {
    format!("198.19.255.{r}")
}

/// The grid's links, east then south of each router: (a, a's NIC, b,
/// b's NIC). A router's NICs are numbered in the order its links appear.
fn links() -> Vec<(usize, String, usize, String)> {
    let mut pairs = Vec::new();
    for row in 0..ROWS {
        for column in 0..COLUMNS {
            if column + 1 < COLUMNS {
                pairs.push((router(row, column), router(row, column + 1)));
            }
            if row + 1 < ROWS {
                pairs.push((router(row, column), router(row + 1, column)));
            }
        }
    }
    let mut nics = vec![0usize; ROUTERS + 1];
    let mut next = |r: usize| {
        let n = format!("eth{}", nics[r]);
        nics[r] += 1;
        n
    };
    pairs
        .into_iter()
        .map(|(a, b)| {
            let (na, nb) = (next(a), next(b));
            (a, na, b, nb)
        })
        .collect()
}

fn bird_conf(r: usize) -> String {
    format!(
        "router id {lo};\n\
         protocol device {{ }}\n\
         protocol kernel {{ ipv4 {{ export where source = RTS_OSPF; }}; }}\n\
         protocol ospf v2 grid {{\n\
         \x20 ipv4 {{ import all; export none; }};\n\
         \x20 area 0 {{\n\
         \x20   interface \"eth*\" {{ type ptp; hello 1; dead 4; }};\n\
         \x20   interface \"lo\" {{ stub yes; }};\n\
         \x20 }};\n\
         }}\n",
        lo = loopback(r)
    )
}

/// The lab file; the bird configurations are written beside it by the caller.
fn lab_yaml() -> String {
    let links = links();
    // Link k is 198.19.0.(4k)/30: .1 on its first end, .2 on its second.
    let mut nics: Vec<Vec<(String, String)>> = vec![Vec::new(); ROUTERS + 1];
    for (k, (a, na, b, nb)) in links.iter().enumerate() {
        nics[*a].push((na.clone(), format!("198.19.0.{}/30", 4 * k + 1)));
        nics[*b].push((nb.clone(), format!("198.19.0.{}/30", 4 * k + 2)));
    }
    let mut y = String::from(
        "name: grid\ndefaults: {image: tiny-router, memory: 192MiB, cpus: 1}\nnodes:\n",
    );
    for (r, nics) in nics.iter_mut().enumerate().skip(1) {
        nics.sort();
        let nics: Vec<String> = nics
            .iter()
            .map(|(n, ip)| format!("{n}: {{ip: [{ip}]}}"))
            .collect();
        let _ = write!(
            y,
            "  r{r}:\n    nics: {{{}}}\n    files: {{/etc/bird/bird.conf: r{r}-bird.conf}}\n    exec:\n      \
             - sysctl -w net.ipv4.ip_forward=1\n      \
             - ip addr replace {}/32 dev lo\n      \
             - birdc configure >/dev/null 2>&1 || bird -c /etc/bird/bird.conf\n",
            nics.join(", "),
            loopback(r)
        );
    }
    y.push_str("links:\n");
    for (a, na, b, nb) in &links {
        let _ = writeln!(y, "  - [r{a}:{na}, r{b}:{nb}]");
    }
    y.push_str("verify:\n");
    for r in 1..=ROUTERS {
        let _ = write!(
            y,
            "  - exec:\n      node: r{r}\n      \
             cmd: 'birdc show route protocol grid | grep -c \"^198\\.19\\.255\\.\"'\n      \
             expect: '^{ROUTERS}\\s*$'\n      timeout: 180s\n"
        );
    }
    let _ = writeln!(y, "  - ping: {{from: r1, to: {}}}", loopback(ROUTERS));
    let _ = writeln!(y, "  - ping: {{from: r{ROUTERS}, to: {}}}", loopback(1));
    y
}

#[test]
fn thirty_ospf_routers_on_four_hosts_come_up_and_converge() {
    build_image("tiny-router");
    let cluster = LocalCluster::up("grid", 4);
    for r in 1..=ROUTERS {
        cluster.write_file(&format!("r{r}-bird.conf"), &bird_conf(r));
    }
    let yaml = lab_yaml();
    let lab = cluster.write_file("grid.yaml", &yaml);
    if let Some(keep) = std::env::var_os("LABSPAN_GRID_FILE") {
        std::fs::write(&keep, &yaml).expect("writing LABSPAN_GRID_FILE");
    }
    let started = Instant::now();
    let up = cluster.labspan(&["up", lab.to_str().expect("utf-8 path")]);
    let out = text(&up);
    eprintln!("{out}");
    if !up.status.success() {
        explain_failed_checks(&cluster, &out);
    }
    assert!(up.status.success(), "labspan up failed:\n{out}");
    assert_eq!(out.matches("PASS").count(), ROUTERS + 2, "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    eprintln!(
        "grid: {ROUTERS} routers up, every check passing, in {:.1?}",
        started.elapsed()
    );
    // Spread over the hosts: some links cross them.
    let hosts: std::collections::BTreeMap<usize, usize> =
        cluster
            .qemus()
            .into_iter()
            .fold(Default::default(), |mut m, (h, ..)| {
                *m.entry(h).or_default() += 1;
                m
            });
    eprintln!("grid: QEMUs per host {hosts:?}");
    assert!(
        hosts.len() >= 2,
        "the grid runs on more than one host: {hosts:?}"
    );
    let down = cluster.labspan(&["down", "grid"]);
    assert!(down.status.success(), "labspan down: {}", text(&down));
}

/// For each router whose route count failed, what its OSPF saw: its
/// neighbours and the loopbacks it learned (a failure then says which
/// adjacency or which route was missing, not only a count).
fn explain_failed_checks(cluster: &LocalCluster, out: &str) {
    let failed = out
        .lines()
        .filter(|l| l.trim_start().starts_with("FAIL"))
        .filter_map(|l| {
            l.split_whitespace()
                .map(|w| w.trim_end_matches(':'))
                .find(|w| {
                    w.strip_prefix('r')
                        .is_some_and(|n| n.parse::<usize>().is_ok())
                })
                .map(str::to_string)
        })
        .collect::<std::collections::BTreeSet<String>>();
    for r in failed {
        let line = "birdc show ospf neighbors; birdc show route protocol grid | grep '^198.19.255'";
        let seen = cluster.labspan(&["exec", "grid", &r, "--", line]);
        eprintln!(
            "{r}: what its OSPF saw when its check failed:\n{}",
            text(&seen)
        );
    }
}
