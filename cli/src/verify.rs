//! A lab's `verify` checks, run inside its guests.
//!
//! Checks are retried until they pass or their deadline passes: a lab that
//! was just deployed may still be converging (ARP, OSPF, services starting).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

use ipnet::IpNet;
use std::time::Duration;

use tokio::time::Instant;

use labspan_proto::lab::Check;
use regex::Regex;

use labspan_agent::vm::ExecOutput;
use labspan_transport::poll::Poll;

/// How often a failing check is run again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Runs a shell command in a lab node's guest.
pub trait GuestExec {
    /// Runs `cmd` with `sh -c` in `node`; `Err` when it could not be run at all.
    fn exec(&self, node: &str, cmd: &str) -> impl Future<Output = Result<ExecOutput, String>>;
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// What was checked, for people: `ping a -> 198.19.1.2`.
    pub name: String,
    /// The node it ran in.
    pub node: String,
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub detail: String,
    pub elapsed: Duration,
    pub attempts: u32,
}

/// Runs every check in order, each retried until its own `timeout` (from
/// the lab file) or else `default_deadline` has passed; `seen` hears each
/// result as it comes.
pub async fn run_checks<G: GuestExec>(
    guest: &G,
    checks: &[Check],
    addresses: &BTreeMap<String, Vec<IpNet>>,
    default_deadline: Duration,
    seen: &dyn Fn(&CheckResult),
) -> Vec<CheckResult> {
    let mut results = Vec::with_capacity(checks.len());
    for check in checks {
        let deadline = check.timeout().unwrap_or(default_deadline);
        let result = run_check(guest, check, addresses, deadline).await;
        seen(&result);
        results.push(result);
    }
    results
}

async fn run_check<G: GuestExec>(
    guest: &G,
    check: &Check,
    addresses: &BTreeMap<String, Vec<IpNet>>,
    deadline: Duration,
) -> CheckResult {
    let start = Instant::now();
    let (name, node, cmd, expect) = match describe(check, addresses) {
        Ok(parts) => parts,
        Err(detail) => {
            return CheckResult {
                name: check_name(check),
                node: check_node(check).to_string(),
                passed: false,
                detail,
                elapsed: start.elapsed(),
                attempts: 0,
            }
        }
    };
    let mut attempts = 0;
    let mut wait = Poll::new(RETRY_EVERY, deadline).start();
    loop {
        attempts += 1;
        let detail = match guest.exec(&node, &cmd).await {
            Ok(out) => judge(&out, expect.as_ref()),
            Err(e) => Some(e),
        };
        let done = detail.is_none() || !wait.pause().await;
        if done {
            let passed = detail.is_none();
            let detail = detail.unwrap_or_default();
            return CheckResult {
                name,
                node,
                passed,
                detail,
                elapsed: start.elapsed(),
                attempts,
            };
        }
    }
}

/// `None` when the output passes.
fn judge(out: &ExecOutput, expect: Option<&Regex>) -> Option<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.exit_code != 0 {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Some(format!(
            "exit status {}: {}",
            out.exit_code,
            last_line(&stderr).or(last_line(&stdout)).unwrap_or("")
        ));
    }
    match expect {
        Some(re) if !re.is_match(&stdout) => Some(format!(
            "output does not match /{re}/: {}",
            last_line(&stdout).unwrap_or("(empty)")
        )),
        _ => None,
    }
}

fn last_line(s: &str) -> Option<&str> {
    s.lines().rev().find(|l| !l.trim().is_empty())
}

fn check_node(check: &Check) -> &str {
    match check {
        Check::Ping { from, .. } => from,
        Check::Exec { node, .. } => node,
    }
}

fn check_name(check: &Check) -> String {
    match check {
        Check::Ping { from, to, .. } => format!("ping {from} -> {to}"),
        Check::Exec { node, cmd, .. } => format!("exec {node}: {cmd}"),
    }
}

/// The node, command and expected output of a check.
fn describe(
    check: &Check,
    addresses: &BTreeMap<String, Vec<IpNet>>,
) -> Result<(String, String, String, Option<Regex>), String> {
    match check {
        Check::Ping { from, to, .. } => {
            let addr = match to.parse::<IpAddr>() {
                Ok(a) => a,
                Err(_) => {
                    let of = |n: &str| addresses.get(n).map(Vec::as_slice).unwrap_or_default();
                    pick_address(of(from), of(to))
                        .ok_or_else(|| format!("node \"{to}\" has no address to ping"))?
                }
            };
            Ok((
                format!("ping {from} -> {to}"),
                from.clone(),
                format!("ping -c 1 -W 2 {addr}"),
                None,
            ))
        }
        Check::Exec {
            node, cmd, expect, ..
        } => {
            let re = expect
                .as_deref()
                .map(Regex::new)
                .transpose()
                .map_err(|e| format!("bad expect pattern: {e}"))?;
            Ok((check_name(check), node.clone(), cmd.clone(), re))
        }
    }
}

/// The address of a node to ping from another: one on a subnet they share
/// (reachable without routing), else any; IPv4 first within each choice.
fn pick_address(from: &[IpNet], to: &[IpNet]) -> Option<IpAddr> {
    let shared = |a: &&IpNet| from.iter().any(|f| f.contains(&a.addr()));
    let by_family = |v4: bool| move |a: &&IpNet| a.addr().is_ipv4() == v4;
    to.iter()
        .filter(shared)
        .find(by_family(true))
        .or_else(|| to.iter().find(shared))
        .or_else(|| to.iter().find(by_family(true)))
        .or_else(|| to.first())
        .map(IpNet::addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers from a script: each call pops the next output for that node.
    struct Scripted(Mutex<Vec<(String, String, ExecOutput)>>);

    impl GuestExec for Scripted {
        async fn exec(&self, node: &str, cmd: &str) -> Result<ExecOutput, String> {
            let mut calls = self.0.lock().map_err(|e| e.to_string())?;
            let i = calls
                .iter()
                .position(|(n, _, _)| n == node)
                .ok_or("no more answers")?;
            let (_, expect_cmd, out) = calls.remove(i);
            assert_eq!(expect_cmd, cmd);
            Ok(out)
        }
    }

    fn out(code: i32, stdout: &str) -> ExecOutput {
        ExecOutput {
            exit_code: code,
            signal: None,
            stdout: stdout.into(),
            stderr: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ping_by_node_name_retries_until_it_passes() {
        let guest = Scripted(Mutex::new(vec![
            ("a".into(), "ping -c 1 -W 2 198.19.1.2".into(), out(1, "")),
            (
                "a".into(),
                "ping -c 1 -W 2 198.19.1.2".into(),
                out(0, "1 packets received"),
            ),
        ]));
        let net = |s: &str| s.parse::<IpNet>().expect("cidr");
        let addrs = BTreeMap::from([
            ("a".to_string(), vec![net("198.19.1.1/24")]),
            (
                "b".to_string(),
                vec![
                    net("198.19.9.2/24"),
                    net("2001:db8::2/64"),
                    net("198.19.1.2/24"),
                ],
            ),
        ]);
        let checks = [Check::Ping {
            from: "a".into(),
            to: "b".into(),
            timeout: None,
        }];
        let r = run_checks(&guest, &checks, &addrs, Duration::from_secs(30), &|_| {}).await;
        assert!(r[0].passed, "{r:?}");
        assert_eq!(r[0].attempts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn exec_output_must_match_expect_within_the_deadline() {
        let answers = (0..5)
            .map(|_| ("a".into(), "ip -o addr".into(), out(0, "inet 10.0.0.1/8")))
            .collect();
        let guest = Scripted(Mutex::new(answers));
        let checks = [Check::Exec {
            node: "a".into(),
            cmd: "ip -o addr".into(),
            expect: Some(r"198\.19\.1\.1".into()),
            timeout: None,
        }];
        let r = run_checks(
            &guest,
            &checks,
            &BTreeMap::new(),
            Duration::from_secs(3),
            &|_| {},
        )
        .await;
        assert!(!r[0].passed);
        assert!(
            r[0].detail.contains(r"does not match /198\.19\.1\.1/"),
            "{}",
            r[0].detail
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_timeout_overrides_the_default_deadline() {
        let answers = (0..100)
            .map(|_| ("a".into(), "false".into(), out(1, "")))
            .collect();
        let guest = Scripted(Mutex::new(answers));
        let check = |timeout| Check::Exec {
            node: "a".into(),
            cmd: "false".into(),
            expect: None,
            timeout,
        };
        let checks = [check(Some(Duration::from_secs(2))), check(None)];
        let r = run_checks(
            &guest,
            &checks,
            &BTreeMap::new(),
            Duration::from_secs(10),
            &|_| {},
        )
        .await;
        assert!(!r[0].passed && !r[1].passed);
        // Retried once a second: 2 s allow 3 attempts, the default 10 s allow 11.
        assert_eq!((r[0].attempts, r[1].attempts), (3, 11));
    }

    #[tokio::test(start_paused = true)]
    async fn ping_to_a_node_without_address_fails_at_once() {
        let guest = Scripted(Mutex::new(Vec::new()));
        let checks = [Check::Ping {
            from: "a".into(),
            to: "b".into(),
            timeout: None,
        }];
        let r = run_checks(
            &guest,
            &checks,
            &BTreeMap::new(),
            Duration::from_secs(30),
            &|_| {},
        )
        .await;
        assert!(!r[0].passed);
        assert_eq!(r[0].attempts, 0);
        assert_eq!(r[0].detail, "node \"b\" has no address to ping");
    }
}
