//! Running commands in this machine's guests, for `verify` and `exec`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::progress::{Mode, Renderer};
use crate::verify::{run_checks, CheckResult, GuestExec};
use ipnet::IpNet;
use labspan_proto::lab::Lab;

/// How long each `verify` check may take to pass.
const CHECK_DEADLINE: Duration = Duration::from_secs(60);

/// Every node's addresses, for checks that name a node instead of an address.
pub fn lab_addresses(lab: &Lab) -> BTreeMap<String, Vec<IpNet>> {
    lab.nodes
        .iter()
        .map(|(name, node)| {
            (
                name.clone(),
                node.nics
                    .values()
                    .flat_map(|n| n.ip.iter().copied())
                    .collect(),
            )
        })
        .collect()
}

/// Runs `lab`'s checks through `guests` (embedded default and cluster
/// alike), shows each on `show` and hands it to `report` as it ends,
/// prints them as a table unless `show` prints JSON, and says whether
/// every one passed.
pub async fn verify<G: GuestExec>(
    guests: &G,
    lab: &Lab,
    show: &Renderer,
    report: &dyn Fn(&CheckResult),
) -> bool {
    let seen = |r: &CheckResult| {
        show.check(&lab.name, r);
        report(r);
    };
    let results = run_checks(
        guests,
        &lab.verify,
        &lab_addresses(lab),
        CHECK_DEADLINE,
        &seen,
    )
    .await;
    if show.mode() != Mode::Json {
        print_checks(&results);
    }
    results.iter().all(|r| r.passed)
}

fn print_checks(results: &[CheckResult]) {
    println!("\nverify:");
    for r in results {
        let mark = if r.passed { "PASS" } else { "FAIL" };
        println!("  {mark} {:<48} {:>6.1} s", r.name, r.elapsed.as_secs_f64());
        if !r.passed {
            println!("       {}", r.detail);
        }
    }
}
