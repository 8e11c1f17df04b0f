//! The ospf-triangle demo end to end: three `tiny-router` guests running
//! bird2 OSPF, a host behind each. The lab's own checks pass, and when a
//! side of the triangle is cut, OSPF sends the traffic round the other two.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use labspan_tests::{described, text, wait_until, TestHost};

const LAB: &str = "ospf-triangle";
/// Generous: TCG guests on a 2-core machine that other tests share.
const REROUTE_DEADLINE: Duration = Duration::from_secs(120);

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../demos/ospf-triangle/lab.yaml")
}

/// `birdc show route for ADDR` on `node`: the route OSPF chose.
fn route(host: &TestHost, node: &str, addr: &str) -> String {
    text(&host.labspan(&[
        "exec", LAB, node, "--", "birdc", "show", "route", "for", addr,
    ]))
}

fn pings(host: &TestHost, from: &str, addr: &str) -> bool {
    let out = host.labspan(&["exec", LAB, from, "--", "ping", "-c", "1", "-W", "1", addr]);
    out.status.success()
}

#[test]
fn ospf_converges_and_reroutes_round_a_cut_link() {
    let host = TestHost::new("ospf");
    host.ensure_image("tiny");
    host.ensure_image("tiny-router");
    let lab = demo();
    let started = Instant::now();
    let up = host.labspan(&["up", lab.to_str().expect("utf-8 path")]);
    let out = text(&up);
    assert!(up.status.success(), "labspan up failed:\n{out}");
    // Three "all LANs learned through OSPF" checks and three pings.
    assert_eq!(out.matches("PASS").count(), 6, "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    eprintln!("labspan up, all checks passing: {:.1?}", started.elapsed());

    // r1 reaches h2's LAN over its own side of the triangle, r1-r2.
    let before = route(&host, "r1", "198.19.2.10");
    assert!(
        before.contains("via 198.19.0.2 on eth0"),
        "r1's route to h2's LAN:\n{before}"
    );

    // Cut r1-r2 at r2's end: r2 withdraws the link at once, and r1 must
    // then route to h2 through r3 (198.19.0.9).
    let cut = host.labspan(&["exec", LAB, "r2", "--", "ip", "link", "set", "eth0", "down"]);
    assert!(cut.status.success(), "cutting r1-r2: {}", text(&cut));
    let cut_at = Instant::now();
    let last = RefCell::new(String::new());
    let what = described(|| {
        format!(
            "r1 to route to h2's LAN through r3; its route:\n{}",
            last.borrow()
        )
    });
    wait_until(what, REROUTE_DEADLINE, || {
        *last.borrow_mut() = route(&host, "r1", "198.19.2.10");
        last.borrow()
            .contains("via 198.19.0.9 on eth1")
            .then_some(())
    });
    wait_until(
        "h1 to reach h2 again with r1-r2 cut",
        REROUTE_DEADLINE,
        || pings(&host, "h1", "198.19.2.10").then_some(()),
    );
    eprintln!(
        "r1-r2 cut to h1 reaching h2 through r3: {:.1?}",
        cut_at.elapsed()
    );
    assert!(
        pings(&host, "h2", "198.19.1.10"),
        "h2 no longer reaches h1 with r1-r2 cut"
    );

    let down = host.labspan(&["down", LAB]);
    assert!(
        down.status.success(),
        "labspan down failed:\n{}",
        text(&down)
    );
}
