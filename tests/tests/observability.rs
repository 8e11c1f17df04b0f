//! What an operator sees of a cluster made by `deploy/cluster.sh`: the
//! progress `up` and `down` stream (`--json`: each node placed on its
//! host, fetching, booting, configuring, running, checks; without a
//! terminal, one line per phase change); the
//! coordinators' and agents' Prometheus metrics (docs/metrics.md), checked
//! by `promtool check metrics` and against what the test did: a lab deployed
//! over two hosts shows as Running, its VMs appear on the agent that runs
//! them with their lab and node labels, the ping of its checks crossed their
//! taps, and the host that had no image fetched one; `inspect`, which
//! shows the lab's status once and, in JSON, each node's QEMU; and
//! `labspan web`, whose page is sent every node under its host and, on the
//! same event stream, a host cut off the underlay going down; and the same
//! page in headless Chromium (web/browser-driver.mjs): nodes drawn under
//! their hosts, a line typed into a node's console answered by its guest,
//! and the cut host shown down without a reload.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::progress::{in_order, json_lines, steps_of};
use labspan_tests::{described, run, text, wait_until};

const SEEN: &str = r#"
name: seen
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  a: {nics: {eth0: {ip: [198.19.70.1/24]}}}
  b: {nics: {eth0: {ip: [198.19.70.2/24]}}}
links:
  - [a:eth0, b:eth0]
placement:
  spread: [[a, b]]
verify:
  - ping: {from: a, to: b}
"#;

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(out));
    text(out)
}

/// One sample of a scrape: its metric name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (comments skipped; label values may
/// hold escaped quotes).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value after the series");
            let value: f64 = value.parse().expect("a number");
            let Some((name, rest)) = series.split_once('{') else {
                return Sample {
                    name: series.to_string(),
                    labels: BTreeMap::new(),
                    value,
                };
            };
            let mut labels = BTreeMap::new();
            let mut chars = rest.trim_end_matches('}').chars().peekable();
            while chars.peek().is_some() {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                assert_eq!(chars.next(), Some('"'), "{line}");
                let mut val = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => val.extend(chars.next()),
                        '"' => break,
                        c => val.push(c),
                    }
                }
                if chars.peek() == Some(&',') {
                    chars.next();
                }
                labels.insert(key.trim().to_string(), val);
            }
            Sample {
                name: name.to_string(),
                labels,
                value,
            }
        })
        .collect()
}

/// The samples of `url`, after `promtool check metrics` accepted them.
fn scrape(url: &str) -> Vec<Sample> {
    let out = run(Command::new("curl").args(["-sSf", "--max-time", "20", url]));
    let body = ok(&out, &format!("curl {url}"));
    let body = String::from_utf8(out.stdout).unwrap_or(body);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; deploy/install-deps.sh)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("writing to promtool");
    let checked = promtool.wait_with_output().expect("promtool ran");
    ok(
        &checked,
        &format!("promtool check metrics of {url}:\n{body}"),
    );
    parse(&body)
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    assert!(found.len() <= 1, "several {name} {labels:?}: {found:?}");
    found.first().copied()
}

/// `up --json`: every node is placed on the host that runs it, then
/// (on a host without the image) fetches it to 100%, boots, is configured
/// and runs, in that order and on that host; the lab settles `Running`,
/// then its check passes and the last line says it is done.
fn up_json_streams_each_nodes_phases(cluster: &LocalCluster, lab: &str) {
    let out = cluster.labspan(&["up", lab, "--json"]);
    ok(&out, "labspan up --json");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let steps = json_lines(&stdout);
    assert_eq!(
        steps.len(),
        stdout.lines().count(),
        "only JSON on stdout:\n{stdout}"
    );
    for node in ["a", "b"] {
        let (host, _pid) = cluster.running("seen", node)[0];
        let on = format!("host{host}");
        let mine = steps_of(&steps, "seen", node);
        let order = ["placed", "booting", "configuring", "running", "checks"];
        let at = in_order(&mine, &order[..4]);
        assert!(at.is_some(), "{node}: {order:?} in order:\n{mine:?}");
        assert!(
            mine.iter().all(|(_, h)| *h == on),
            "{node} on {on}: {mine:?}"
        );
        let fetched: Vec<u64> = (steps.iter())
            .filter(|s| s["node"] == node && s["phase"] == "fetching")
            .filter_map(|s| s["percent"].as_u64())
            .collect();
        // Only host1 starts with the images.
        if host == 1 {
            assert!(fetched.is_empty(), "{node}: {fetched:?}");
        } else {
            assert_eq!(
                fetched.last(),
                Some(&100),
                "{node} fetched tiny: {fetched:?}"
            );
            let first = in_order(&mine, &["placed", "fetching", "booting"]);
            assert!(first.is_some(), "{node} fetched before booting: {mine:?}");
        }
    }
    let phase = |s: &Value| s["phase"].as_str().unwrap_or_default().to_string();
    let settled = steps.iter().position(|s| phase(s) == "settled");
    let check = (steps.iter()).position(|s| phase(s) == "checks" && s["check"] == "ping a -> b");
    let done = steps.last().expect("a last line");
    assert!(
        matches!((settled, check), (Some(s), Some(c)) if s < c),
        "settled, then the check:\n{stdout}"
    );
    assert_eq!(steps[settled.unwrap_or(0)]["status"], "Running");
    assert_eq!(steps[check.unwrap_or(0)]["passed"], true, "{stdout}");
    assert_eq!(
        (&done["phase"], &done["ok"], &done["status"]),
        (&"done".into(), &true.into(), &"Running".into()),
        "{done}"
    );
}

/// `up` again with its output not a terminal: one line per phase change
/// (each node kept with its QEMU's pid, configured again, running), the
/// lab settled once, and the table and checks as before.
fn up_again_prints_one_line_per_phase_change(cluster: &LocalCluster, lab: &str) {
    let out = cluster.labspan(&["up", lab]);
    let shown = ok(&out, "labspan up (again)");
    let lines = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(shown.contains("PASS ping a -> b"), "{shown}");
    for node in ["a", "b"] {
        let (host, pid) = cluster.running("seen", node)[0];
        let prefix = format!("seen/{node} on host{host}: ");
        let mine: Vec<&str> = (lines.lines())
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect();
        let kept = format!("kept (running, pid {pid})");
        assert_eq!(mine.first(), Some(&kept.as_str()), "{node}:\n{lines}");
        assert_eq!(
            mine.iter().filter(|l| **l == "running").count(),
            1,
            "{node}:\n{lines}"
        );
        assert!(
            mine.windows(2).all(|w| w[0] != w[1]),
            "{node}: a phase printed twice in a row:\n{lines}"
        );
    }
    assert_eq!(
        lines.matches("seen: settled: Running\n").count(),
        1,
        "{lines}"
    );
}

/// `inspect`: the lab's status once, above its rows; `--json` gives each
/// node's QEMU pid, uptime, host and image hash, as its agent reports them.
fn inspect_shows_status_once_and_each_qemu(cluster: &LocalCluster) {
    let shown = ok(&cluster.labspan(&["inspect", "seen"]), "labspan inspect");
    let lines: Vec<&str> = shown.lines().collect();
    let status = lines.iter().position(|l| *l == "lab \"seen\" is Running");
    let first_row = lines.iter().position(|l| l.starts_with("seen "));
    assert!(
        matches!((status, first_row), (Some(s), Some(r)) if s < r),
        "the status comes once, above the rows:\n{shown}"
    );
    assert_eq!(shown.matches("Running").count(), 1, "{shown}");

    let nodes = cluster.wait_for(
        "inspect --json shows each QEMU",
        Duration::from_secs(60),
        || {
            let out = cluster.labspan(&["inspect", "seen", "--json"]);
            let views: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let nodes = views[0]["nodes"].as_array()?.clone();
            nodes.iter().all(|n| n["pid"].is_u64()).then_some(nodes)
        },
    );
    for n in &nodes {
        let node = n["node"].as_str().expect("node name");
        let (host, pid) = cluster.running("seen", node)[0];
        assert_eq!(n["pid"].as_u64(), Some(u64::from(pid)), "{n}");
        assert_eq!(
            n["host"].as_str(),
            Some(format!("host{host}").as_str()),
            "{n}"
        );
        let hash = n["image_hash"].as_str().expect("image hash");
        assert!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{n}"
        );
        // Booted and checked before this: up for a while, and not since 1970.
        let uptime = n["uptime_secs"].as_u64().expect("uptime");
        assert!(uptime < 3600, "{n}");
    }
}

#[test]
fn coordinators_and_agents_serve_metrics_that_follow_the_cluster() {
    let cluster = LocalCluster::up("obs", 3);
    let up = cluster.status().expect("cluster status");
    let leader = cluster.leader_host().expect("a leader");

    let before = scrape(&cluster.metrics_url(leader, "coordinator"));
    assert_eq!(
        value(&before, "labspan_labs", &[("status", "Running")]),
        Some(0.0)
    );
    assert_eq!(
        value(&before, "labspan_hosts", &[("state", "up")]),
        Some(3.0),
        "{up}"
    );

    let lab = cluster.write_file("seen.yaml", SEEN);
    let lab = lab.to_str().expect("utf-8 path");
    up_json_streams_each_nodes_phases(&cluster, lab);

    // Coordinators: the leader's view, and the follower's replica of it.
    let leader = cluster.leader_host().expect("a leader");
    let c = scrape(&cluster.metrics_url(leader, "coordinator"));
    assert_eq!(
        value(&c, "labspan_labs", &[("status", "Running")]),
        Some(1.0)
    );
    assert_eq!(
        value(&c, "labspan_labs", &[("status", "Failed")]),
        Some(0.0)
    );
    assert_eq!(value(&c, "labspan_hosts", &[("state", "up")]), Some(3.0));
    assert_eq!(value(&c, "labspan_hosts", &[("state", "down")]), Some(0.0));
    assert_eq!(value(&c, "labspan_raft_is_leader", &[]), Some(1.0));
    let term = value(&c, "labspan_raft_term", &[]).expect("term");
    assert!(term >= 1.0, "term {term}");
    let committed = value(&c, "labspan_raft_commit_index", &[]).expect("commit index");
    // The deploy is one write at least, and it went through the leader.
    let writes = value(&c, "labspan_raft_commit_seconds_count", &[]).expect("commit histogram");
    assert!(writes >= 1.0, "no commit observed: {writes}");
    let applied = value(&c, "labspan_raft_apply_seconds_count", &[]).expect("apply histogram");
    assert!(applied >= 1.0, "no apply observed: {applied}");
    assert!(value(&c, "labspan_raft_leader_changes_total", &[]).expect("leader changes") >= 1.0);
    for kind in ["move", "strand", "restore"] {
        assert_eq!(
            value(&c, "labspan_recoveries_total", &[("kind", kind)]),
            Some(0.0),
            "{kind}"
        );
    }
    let follower = if leader == 1 { 2 } else { 1 };
    let f = scrape(&cluster.metrics_url(follower, "coordinator"));
    assert_eq!(value(&f, "labspan_raft_is_leader", &[]), Some(0.0));
    assert_eq!(value(&f, "labspan_raft_term", &[]), Some(term));
    let replica = cluster.wait_for(
        "the follower applied the deploy",
        Duration::from_secs(30),
        || {
            let f = scrape(&cluster.metrics_url(follower, "coordinator"));
            (value(&f, "labspan_raft_commit_index", &[])? >= committed).then_some(f)
        },
    );
    assert_eq!(
        value(&replica, "labspan_labs", &[("status", "Running")]),
        Some(1.0)
    );

    // Agents: each lists the VM it runs, not the other's.
    for (node, peer) in [("a", "b"), ("b", "a")] {
        let hosts = cluster.running("seen", node);
        assert_eq!(hosts.len(), 1, "{node} runs once: {hosts:?}");
        let (host, _pid) = hosts[0];
        let m = scrape(&cluster.metrics_url(host, "agent"));
        let vm = [("lab", "seen"), ("node", node)];
        assert_eq!(value(&m, "labspan_vms", &[]), Some(1.0), "host{host}");
        let cpu = value(&m, "labspan_vm_cpu_seconds_total", &vm).expect("cpu time");
        assert!(cpu > 0.0, "{node} booted a kernel: cpu {cpu}");
        let rss = value(&m, "labspan_vm_resident_memory_bytes", &vm).expect("rss");
        assert!(rss > 16.0 * 1024.0 * 1024.0, "{node}: rss {rss}");
        // The check's ping went out of a's eth0 and into b's.
        let tap = [("lab", "seen"), ("node", node), ("nic", "eth0")];
        for direction in ["from_guest", "to_guest"] {
            let with = [tap.as_slice(), &[("direction", direction)]].concat();
            let packets = value(&m, "labspan_vm_tap_packets_total", &with).expect("tap packets");
            assert!(packets >= 1.0, "{node} eth0 {direction}: {packets} packets");
            assert!(value(&m, "labspan_vm_tap_bytes_total", &with).expect("tap bytes") > 0.0);
            assert!(value(&m, "labspan_vm_tap_dropped_total", &with).is_some());
        }
        let peer_vm = [("lab", "seen"), ("node", peer)];
        assert_eq!(
            value(&m, "labspan_vm_cpu_seconds_total", &peer_vm),
            None,
            "host{host}"
        );
        let applies = value(&m, "labspan_plan_apply_seconds_count", &[]).expect("apply histogram");
        assert!(applies >= 1.0, "host{host} applied no plan");
        // Only host1 starts with the images: host2 fetched tiny.
        let received = value(&m, "labspan_image_received_bytes_total", &[]).expect("image bytes");
        if host == 1 {
            assert_eq!(received, 0.0, "host1 had the image");
        } else {
            assert!(
                received > 1024.0 * 1024.0,
                "host{host} fetched tiny: {received} bytes"
            );
        }
    }

    // The page open while `up` runs again is sent its checks too.
    let web = Web::start(&cluster);
    up_again_prints_one_line_per_phase_change(&cluster, lab);
    let a_on = format!("host{}", cluster.running("seen", "a")[0].0);
    web.steps_until("the check's result", Duration::from_secs(60), |steps| {
        steps.iter().any(|s| {
            s["phase"] == "checked"
                && s["check"] == "ping a -> b"
                && s["passed"] == true
                && s["node"] == "a"
                && s["host"] == a_on.as_str()
        })
    });
    inspect_shows_status_once_and_each_qemu(&cluster);
    a_viewer_sees_the_page_but_changes_nothing(&cluster);
    web_lists_each_node_under_its_host(&cluster, &web);
    let mut browser = Browser::start();
    browser_shows_the_lab_and_its_consoles(&cluster, &web, &mut browser);

    let hosts = ["a", "b"].map(|node| (node, cluster.running("seen", node)[0].0));
    let down = ok(&cluster.labspan(&["down", "seen"]), "labspan down");
    for (node, host) in hosts {
        for phase in ["stopping", "stopped"] {
            let line = format!("seen/{node} on host{host}: {phase}");
            assert_eq!(
                down.matches(&format!("{line}\n")).count(),
                1,
                "{line}:\n{down}"
            );
        }
    }
    assert!(down.contains("seen: removed\n"), "{down}");
    web_and_browser_show_the_down(&web, &mut browser, &hosts);
    let after =
        scrape(&cluster.metrics_url(cluster.leader_host().expect("a leader"), "coordinator"));
    assert_eq!(
        value(&after, "labspan_labs", &[("status", "Running")]),
        Some(0.0)
    );
    for host in 1..=3 {
        let m = scrape(&cluster.metrics_url(host, "agent"));
        assert_eq!(
            value(&m, "labspan_vms", &[]),
            Some(0.0),
            "host{host} after down"
        );
    }
    let cut = web_follows_a_host_cut(&cluster, &web);
    browser_shows_the_cut_host_down(&mut browser, cut);
}

/// The page open through `down` was sent its steps (`step` events, as
/// `labspan events --json` prints them): each node stopping and stopped on
/// its host, the lab removed; the browser lists them under Progress.
fn web_and_browser_show_the_down(web: &Web, browser: &mut Browser, hosts: &[(&str, usize)]) {
    let wanted: Vec<(String, String, &str)> = (hosts.iter())
        .flat_map(|(node, host)| {
            ["stopping", "stopped"].map(|p| (node.to_string(), format!("host{host}"), p))
        })
        .collect();
    web.steps_until(
        "each node stopped, the lab removed",
        Duration::from_secs(60),
        |steps| {
            let has = |node: &str, host: &str, phase: &str| {
                steps.iter().any(|s| {
                    s["lab"] == "seen"
                        && s["node"] == node
                        && s["host"] == host
                        && s["phase"] == phase
                })
            };
            let removed = steps
                .iter()
                .any(|s| s["lab"] == "seen" && s["phase"] == "removed");
            removed && wanted.iter().all(|(n, h, p)| has(n, h, p))
        },
    );
    browser.until("the down under Progress", Duration::from_secs(60), |seen| {
        let lines: Vec<&str> = seen["steps"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let stopped = hosts.iter().all(|(node, host)| {
            lines.contains(&format!("seen/{node} on host{host}: stopped").as_str())
        });
        (stopped && lines.contains(&"seen: removed")).then_some(())
    });
}

/// A viewer's cluster file (`cluster token --role viewer`, then `cluster
/// join`): its page lists every node under its host and says `viewer`;
/// a console asked for anyway (the websocket of `/console/LAB/NODE`) gets
/// the coordinators' refusal and no console; `down` with that file is
/// refused and the lab runs on.
fn a_viewer_sees_the_page_but_changes_nothing(cluster: &LocalCluster) {
    let token = ok(
        &cluster.labspan(&["cluster", "token", "--role", "viewer"]),
        "cluster token --role viewer",
    );
    let line = (token.lines())
        .find_map(|l| l.strip_prefix("join line:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no join line in:\n{token}"));
    let data = cluster.admin().with_file_name("viewer-data");
    std::fs::create_dir_all(&data).expect("a folder for the viewer's credential");
    ok(
        &cluster.labspan(&[
            "cluster",
            "join",
            line,
            "--data",
            &data.to_string_lossy(),
            "--name",
            "web-viewer",
        ]),
        "cluster join (viewer)",
    );
    let viewer = data.join("viewer.cluster");

    let web = Web::with(&viewer);
    let hosts = ["a", "b"].map(|node| (node, cluster.running("seen", node)[0].0));
    web.until("every node to a viewer", Duration::from_secs(60), |page| {
        let by_host = nodes_by_host(page)?;
        let listed = hosts.iter().all(|(node, host)| {
            by_host
                .get(&format!("host{host}"))
                .is_some_and(|nodes| nodes.iter().any(|(n, _)| *n == format!("seen/{node}")))
        });
        (page["role"] == "viewer" && listed).then_some(())
    });

    // A websocket handshake by hand: the server upgrades, then sends the
    // refusal as a text message and closes.
    let out = run(Command::new("curl").args([
        "-sS",
        "-i",
        "-N",
        "--max-time",
        "20",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: bGFic3Bhbi12aWV3ZXI=",
        &format!("{}/console/seen/a", web.url),
    ]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("HTTP/1.1 101"), "{said}");
    assert!(
        said.contains("error: refused: member \"web-viewer\" is viewer and may not send Console"),
        "{said}"
    );
    drop(web);

    let down = cluster.labspan(&["down", "seen", "--cluster", &viewer.to_string_lossy()]);
    assert!(
        !down.status.success(),
        "a viewer took the lab down: {}",
        text(&down)
    );
    assert!(
        text(&down).contains("is viewer and may not send DeleteLab"),
        "{}",
        text(&down)
    );
    assert_eq!(cluster.lab_status("seen").as_deref(), Some("Running"));
}

/// `labspan web` on a free port of this namespace, and one page's event
/// stream (`curl -N /events`), read line by line.
struct Web {
    server: Child,
    events: Child,
    url: String,
    /// The `state` events' data.
    lines: mpsc::Receiver<String>,
    /// The `step` events' data, kept.
    steps: Arc<Mutex<Vec<Value>>>,
}

impl Web {
    fn start(cluster: &LocalCluster) -> Web {
        Web::with(&cluster.admin())
    }

    /// `labspan web` with the cluster file `file`.
    fn with(file: &Path) -> Web {
        let mut server = Command::new(labspan_tests::labspan_bin())
            .args(["web", "--listen", "127.0.0.1:0", "--cluster"])
            .arg(file)
            .stderr(Stdio::piped())
            .spawn()
            .expect("labspan web");
        let mut said = String::new();
        BufReader::new(server.stderr.take().expect("stderr"))
            .read_line(&mut said)
            .expect("labspan web says where it listens");
        let url = said
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {said:?}"))
            .trim_end_matches('/')
            .to_string();
        let mut events = Command::new("curl")
            .args(["-sSN", &format!("{url}/events")])
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl");
        let out = events.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        let steps = Arc::new(Mutex::new(Vec::new()));
        let keep = steps.clone();
        std::thread::spawn(move || {
            let mut kind = String::new();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim().to_string();
                } else if let Some(data) = line.strip_prefix("data:") {
                    if kind == "step" {
                        let step = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                        keep.lock().expect("steps").push(step);
                    } else if tx.send(data.trim().to_string()).is_err() {
                        return;
                    }
                }
            }
        });
        Web {
            server,
            events,
            url,
            lines,
            steps,
        }
    }

    /// Waits until the steps sent to the page satisfy `check` (a generous
    /// bound, not a timing assertion).
    fn steps_until(&self, what: &str, within: Duration, check: impl Fn(&[Value]) -> bool) {
        let steps = || self.steps.lock().expect("steps").clone();
        wait_until(
            described(|| format!("the page to be sent {what}; steps: {:?}", steps())),
            within,
            || check(&steps()).then_some(()),
        );
    }

    /// Waits for a state sent to the page that satisfies `check` (a
    /// generous bound, not a timing assertion).
    fn until<T>(&self, what: &str, within: Duration, check: impl Fn(&Value) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + within;
        let mut last = String::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let Ok(data) = self.lines.recv_timeout(left) else {
                break;
            };
            let parsed: Option<Value> = serde_json::from_str(&data).ok();
            if let Some(found) = parsed.as_ref().and_then(&check) {
                return found;
            }
            last = data;
        }
        panic!("the page was not sent {what} within {within:?}; last state: {last}");
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        for child in [&mut self.events, &mut self.server] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the page shows under each host: host -> [(lab/node, state)].
fn nodes_by_host(page: &Value) -> Option<BTreeMap<String, Vec<(String, String)>>> {
    page["hosts"]
        .as_array()?
        .iter()
        .map(|h| {
            let nodes = h["nodes"]
                .as_array()?
                .iter()
                .map(|n| {
                    let name = format!("{}/{}", n["lab"].as_str()?, n["node"].as_str()?);
                    Some((name, n["state"].as_str()?.to_string()))
                })
                .collect::<Option<Vec<_>>>()?;
            Some((h["name"].as_str()?.to_string(), nodes))
        })
        .collect()
}

/// The page, served from the binary, and its state: every node under the
/// host that runs it, the crossing segment with its VNI, the leader.
fn web_lists_each_node_under_its_host(cluster: &LocalCluster, web: &Web) {
    let get = |path: &str| {
        let url = format!("{}{path}", web.url);
        ok(&run(Command::new("curl").args(["-sSf", &url])), &url)
    };
    let page = get("/");
    assert!(page.contains("new EventSource(\"events\")"), "{page}");
    let mut expected: BTreeMap<String, Vec<String>> =
        (1..=3).map(|i| (format!("host{i}"), vec![])).collect();
    for node in ["a", "b"] {
        let (host, _) = cluster.running("seen", node)[0];
        expected
            .entry(format!("host{host}"))
            .or_default()
            .push(format!("seen/{node}"));
    }
    let state = web.until(
        "every node under its host, ready",
        Duration::from_secs(60),
        |s| {
            let shown = nodes_by_host(s)?;
            let names: BTreeMap<String, Vec<String>> = shown
                .iter()
                .map(|(h, nodes)| (h.clone(), nodes.iter().map(|(n, _)| n.clone()).collect()))
                .collect();
            let ready = shown.values().flatten().all(|(_, state)| state == "ready");
            (names == expected && ready).then(|| s.clone())
        },
    );
    // The admin's file: the page offers consoles.
    assert_eq!(state["role"], "admin", "{state}");
    let leader = cluster.leader_host().expect("a leader");
    assert_eq!(
        state["leader"].as_str(),
        Some(format!("c{leader}").as_str()),
        "{state}"
    );
    let seg = &state["labs"][0]["segments"][0];
    assert_eq!(seg["key"].as_str(), Some("link:a:eth0--b:eth0"), "{state}");
    assert_eq!(seg["crosses"].as_bool(), Some(true), "{state}");
    assert!(seg["vni"].as_u64().is_some(), "{state}");
    let now: Value = serde_json::from_str(&get("/state")).expect("JSON state");
    assert_eq!(nodes_by_host(&now).map(|h| h.len()), Some(3), "{now}");
}

/// A host cut off the underlay: the page's open event stream says it is
/// down, with no reload. Returns the cut host.
fn web_follows_a_host_cut(cluster: &LocalCluster, web: &Web) -> usize {
    web.until("the lab gone", Duration::from_secs(60), |s| {
        s["labs"].as_array()?.is_empty().then_some(())
    });
    let leader = cluster.leader_host().expect("a leader");
    let cut = if leader == 3 { 2 } else { 3 };
    ok(&cluster.fault("cut", cut), "cluster.sh cut");
    let name = format!("host{cut}");
    web.until("the cut host down", Duration::from_secs(90), |s| {
        let host = s["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["name"] == name.as_str())?;
        (host["up"] == false).then_some(())
    });
    cut
}

/// Headless Chromium driven by web/browser-driver.mjs (playwright-core from
/// web/package-lock.json, Debian's /usr/bin/chromium): one JSON command a
/// line, one JSON answer a line.
struct Browser {
    driver: Child,
    commands: Option<std::process::ChildStdin>,
    answers: mpsc::Receiver<String>,
}

impl Browser {
    fn start() -> Browser {
        let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
        if !web.join("node_modules/playwright-core").exists() {
            ok(
                &run(Command::new("npm")
                    .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
                    .current_dir(&web)),
                "npm ci in web/",
            );
        }
        let mut driver = Command::new("node")
            .arg(web.join("browser-driver.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node web/browser-driver.mjs");
        let out = driver.stdout.take().expect("stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Browser {
            commands: driver.stdin.take(),
            driver,
            answers,
        }
    }

    /// Runs one command; its answer (the driver bounds its own waits).
    fn ask(&mut self, command: Value) -> Value {
        let stdin = self.commands.as_mut().expect("the driver's stdin");
        writeln!(stdin, "{command}").expect("writing to the browser driver");
        let line = self
            .answers
            .recv_timeout(Duration::from_secs(150))
            .unwrap_or_else(|e| panic!("the browser driver did not answer {command}: {e}"));
        let answer: Value = serde_json::from_str(&line).expect("a JSON answer");
        match answer.get("ok") {
            Some(found) => found.clone(),
            None => panic!("browser: {command} failed: {}", answer["error"]),
        }
    }

    /// Asks `look` until `check` holds (a generous bound, not a timing
    /// assertion).
    fn until<T>(&mut self, what: &str, within: Duration, check: impl Fn(&Value) -> Option<T>) -> T {
        let seen = std::cell::RefCell::new(Value::Null);
        wait_until(
            described(|| format!("the browser to show {what}; it shows {}", seen.borrow())),
            within,
            || {
                let now = self.ask(serde_json::json!({"cmd": "look"}));
                let found = check(&now);
                *seen.borrow_mut() = now;
                found
            },
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver closes Chromium and removes its profile when its
        // input ends; kill it if it does not.
        drop(self.commands.take());
        for _ in 0..50 {
            if matches!(self.driver.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Host -> sorted lab/node names.
type ByHost = BTreeMap<String, Vec<String>>;

/// What the browser shows under each host, in the host list and in the
/// topology drawing: host -> sorted lab/node names.
fn shown_by_host(seen: &Value) -> Option<(ByHost, ByHost)> {
    let mut listed = BTreeMap::new();
    for h in seen["hosts"].as_array()? {
        let mut names: Vec<String> = h["nodes"]
            .as_array()?
            .iter()
            .map(|n| n["name"].as_str().map(String::from))
            .collect::<Option<_>>()?;
        names.sort();
        listed.insert(h["name"].as_str()?.to_string(), names);
    }
    let mut drawn: BTreeMap<String, Vec<String>> =
        listed.keys().map(|h| (h.clone(), vec![])).collect();
    for n in seen["graph"].as_array()? {
        drawn
            .entry(n["host"].as_str()?.to_string())
            .or_default()
            .push(n["name"].as_str()?.to_string());
    }
    drawn.values_mut().for_each(|v| v.sort());
    Some((listed, drawn))
}

/// The page in Chromium: every node listed and drawn under the host that
/// runs it; a click on a node opens its serial console, where a line typed
/// is run by the guest's shell (it prints 42 only if it ran it: the echoed
/// input says 6*7). The screenshot is left in the test's target folder
/// (docs/web-view.png is one).
fn browser_shows_the_lab_and_its_consoles(
    cluster: &LocalCluster,
    web: &Web,
    browser: &mut Browser,
) {
    let mut expected: BTreeMap<String, Vec<String>> =
        (1..=3).map(|i| (format!("host{i}"), vec![])).collect();
    for node in ["a", "b"] {
        let (host, _) = cluster.running("seen", node)[0];
        expected
            .entry(format!("host{host}"))
            .or_default()
            .push(format!("seen/{node}"));
    }
    browser.ask(serde_json::json!({"cmd": "open", "url": format!("{}/", web.url)}));
    let seen = browser.until(
        "every node under its host",
        Duration::from_secs(30),
        |seen| {
            let (listed, drawn) = shown_by_host(seen)?;
            (listed == expected && drawn == expected).then(|| seen.clone())
        },
    );
    // The admin's file: consoles offered.
    assert_eq!(seen["role"], "you: admin", "{seen}");
    let screen = browser.ask(serde_json::json!({
        "cmd": "console", "lab": "seen", "node": "b",
        "type": "echo web-$((6*7))", "expect": "web-42", "timeout_ms": 60000,
    }));
    assert!(
        screen.as_str().is_some_and(|s| s.contains("web-42")),
        "{screen}"
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-view.png");
    browser.ask(serde_json::json!({"cmd": "screenshot", "path": shot}));
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());
    eprintln!("screenshot of the web view: {}", shot.display());
}

/// The page still open in Chromium since before `down` and the cut: the
/// lab is gone from it and the cut host is shown down, with no reload.
fn browser_shows_the_cut_host_down(browser: &mut Browser, cut: usize) {
    let name = format!("host{cut}");
    let seen = browser.until("the cut host down", Duration::from_secs(60), |seen| {
        let host = seen["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["name"] == name.as_str())?;
        (host["up"] == false).then(|| seen.clone())
    });
    assert_eq!(seen["loadedOnce"], true, "the page reloaded: {seen}");
    assert_eq!(seen["graph"].as_array().map(Vec::len), Some(0), "{seen}");
}
