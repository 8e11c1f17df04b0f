//! How `up`, `down` and `events` show a lab's progress, the same on the
//! embedded default and on a cluster: the steps the leader streams (see
//! [`crate::follow`]) and the lab's checks as they end.
//!
//! Three forms: on a terminal, one bar per node (indicatif; a fetch shows
//! its bytes); anywhere else, one line per phase change; with `--json`,
//! every step as one JSON object per line on stdout.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use labspan_proto::progress::{Phase, ProgressEvent};
use serde_json::{json, Value};

use crate::verify::CheckResult;

/// Which form progress takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One bar per node (a terminal).
    Bars,
    /// One line per phase change (a pipe, a file, a CI log).
    Lines,
    /// One JSON object per step (`--json`).
    Json,
}

impl Mode {
    /// JSON if asked, else bars on a terminal and lines elsewhere.
    pub fn pick(json: bool) -> Mode {
        match (json, std::io::stderr().is_terminal()) {
            (true, _) => Mode::Json,
            (false, true) => Mode::Bars,
            (false, false) => Mode::Lines,
        }
    }
}

/// What was last shown of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Shown {
    word: &'static str,
    host: Option<String>,
    percent: Option<u8>,
    /// The RAM pass of a move.
    pass: Option<u64>,
}

/// Shows progress in one [`Mode`].
pub struct Renderer {
    mode: Mode,
    state: Mutex<State>,
}

struct State {
    /// (lab, node) → what was shown last.
    shown: BTreeMap<(String, String), Shown>,
    bars: Option<Bars>,
    /// Where lines (stderr) or JSON (stdout) go.
    out: Box<dyn Write + Send>,
}

impl Renderer {
    /// A renderer in `mode`, writing lines to stderr and JSON to stdout.
    pub fn new(mode: Mode) -> Arc<Renderer> {
        let out: Box<dyn Write + Send> = match mode {
            Mode::Json => Box::new(std::io::stdout()),
            _ => Box::new(std::io::stderr()),
        };
        Renderer::to(mode, out)
    }

    /// A renderer in `mode` writing lines or JSON to `out`.
    pub fn to(mode: Mode, out: Box<dyn Write + Send>) -> Arc<Renderer> {
        let bars = (mode == Mode::Bars).then(Bars::new);
        Arc::new(Renderer {
            mode,
            state: Mutex::new(State {
                shown: BTreeMap::new(),
                bars,
                out,
            }),
        })
    }

    /// Its form.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Shows a bar now for each of `nodes` of `lab` (bars only), so that
    /// they keep their order.
    pub fn expect<'a>(&self, lab: &str, nodes: impl IntoIterator<Item = &'a String>) {
        let mut state = self.lock();
        if let Some(bars) = &mut state.bars {
            for node in nodes {
                bars.bar(lab, node).set_message("waiting");
            }
        }
    }

    /// Shows one step from the leader.
    pub fn event(&self, e: &ProgressEvent) {
        let mut state = self.lock();
        let State { shown, bars, out } = &mut *state;
        let key = (e.lab.clone(), e.node.clone().unwrap_or_default());
        let prev = shown.get(&key);
        let host = e.host.clone().or_else(|| prev.and_then(|p| p.host.clone()));
        let line = match self.mode {
            Mode::Json => Some(json_event(e).to_string()),
            Mode::Lines => line_for(prev, e),
            Mode::Bars => {
                if let Some(bars) = bars {
                    bars.show(e, host.as_deref());
                }
                None
            }
        };
        if e.node.is_some() {
            let now = Shown {
                word: e.phase.word(),
                host,
                percent: e.phase.percent(),
                pass: match e.phase {
                    Phase::CopyingRam { pass, .. } => Some(pass),
                    _ => None,
                },
            };
            shown.insert(key, now);
        }
        if let Some(line) = line {
            let _ = writeln!(out, "{line}");
        }
    }

    /// Shows a check of lab `lab` that ended.
    pub fn check(&self, lab: &str, r: &CheckResult) {
        let mut state = self.lock();
        let State { shown, bars, out } = &mut *state;
        let host = (shown.get(&(lab.to_string(), r.node.clone()))).and_then(|s| s.host.clone());
        let line = match self.mode {
            Mode::Json => Some(json_check(lab, host.as_deref(), r).to_string()),
            Mode::Lines => Some(check_line(lab, host.as_deref(), r)),
            Mode::Bars => {
                if let Some(bars) = bars {
                    let verdict = if r.passed { "passed" } else { "failed" };
                    bars.bar(lab, &r.node)
                        .set_message(format!("checks: {} {verdict}", r.name));
                }
                None
            }
        };
        if let Some(line) = line {
            let _ = writeln!(out, "{line}");
        }
    }

    /// A remark for people (on stderr in every form, above the bars).
    pub fn note(&self, text: &str) {
        let state = self.lock();
        match &state.bars {
            Some(bars) => {
                let _ = bars.multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Ends the bars (the caller prints its result next).
    pub fn finish(&self) {
        if let Some(bars) = &self.lock().bars {
            bars.bars.values().for_each(ProgressBar::finish_and_clear);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One bar per node.
struct Bars {
    multi: MultiProgress,
    bars: BTreeMap<(String, String), ProgressBar>,
    spinner: ProgressStyle,
    fetch: ProgressStyle,
}

impl Bars {
    fn new() -> Bars {
        let spinner =
            ProgressStyle::with_template("{spinner} {prefix:<12} {wide_msg} {elapsed:>4}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let fetch = ProgressStyle::with_template(
            "{spinner} {prefix:<12} {msg} [{bar:24}] {percent:>3}% {binary_bytes}/{binary_total_bytes}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        Bars {
            multi: MultiProgress::new(),
            bars: BTreeMap::new(),
            spinner,
            fetch,
        }
    }

    fn bar(&mut self, lab: &str, node: &str) -> &ProgressBar {
        let key = (lab.to_string(), node.to_string());
        let (multi, spinner) = (&self.multi, &self.spinner);
        self.bars.entry(key).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new_spinner().with_style(spinner.clone()));
            bar.set_prefix(node.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }

    fn show(&mut self, e: &ProgressEvent, host: Option<&str>) {
        let Some(node) = &e.node else {
            let _ = self.multi.println(text(e));
            return;
        };
        let (spinner, fetch) = (self.spinner.clone(), self.fetch.clone());
        let bar = self.bar(&e.lab, node);
        let on = host.map_or(String::new(), |h| format!("{h}: "));
        match &e.phase {
            Phase::Fetching {
                image,
                from,
                bytes,
                total,
            } => {
                bar.set_style(fetch);
                bar.set_length(*total);
                bar.set_position(*bytes);
                bar.set_message(format!("{on}fetching {image} from {from}"));
            }
            Phase::CopyingDisk { done, total } => {
                bar.set_style(fetch);
                bar.set_length(*total);
                bar.set_position(*done);
                bar.set_message(format!("{on}moving: disk"));
            }
            phase => {
                bar.set_style(spinner);
                bar.set_message(format!("{on}{phase}"));
            }
        }
    }
}

/// A step for people: `seen/a on host2: booting`, `seen: settled: Running`.
pub fn text(e: &ProgressEvent) -> String {
    match (&e.node, &e.host) {
        (Some(node), Some(host)) => format!("{}/{node} on {host}: {}", e.lab, e.phase),
        (Some(node), None) => format!("{}/{node}: {}", e.lab, e.phase),
        (None, _) => format!("{}: {}", e.lab, e.phase),
    }
}

/// The line a step gets in [`Mode::Lines`], or none when it changes no
/// phase: a fetch gets one line when it starts and one when it is done.
fn line_for(prev: Option<&Shown>, e: &ProgressEvent) -> Option<String> {
    let news = match (prev, &e.phase) {
        (_, phase) if e.node.is_none() || phase.ends_lab_step() => true,
        (None, _) => true,
        // These repeat as news: each is a new attempt or a new failure.
        (
            Some(_),
            Phase::Failed { .. }
            | Phase::Restarting { .. }
            | Phase::FetchRetry { .. }
            | Phase::BackingOff { .. }
            | Phase::Placed { .. },
        ) => true,
        (Some(p), Phase::CopyingRam { pass, .. }) => {
            p.word != e.phase.word() || p.pass != Some(*pass)
        }
        (Some(p), Phase::Fetching { .. } | Phase::CopyingDisk { .. }) => {
            p.word != e.phase.word() || (e.phase.percent() == Some(100) && p.percent != Some(100))
        }
        (Some(p), phase) => p.word != phase.word(),
    };
    news.then(|| text(e))
}

/// A step as JSON: `lab`, `node`, `host`, `phase` (its word), `at_unix_ms`,
/// and what the phase knows (`image`, `from`, `bytes`, `total`, `percent`,
/// `why`, `pid`, `boot_ms`, `delay_secs`, `status`).
pub fn json_event(e: &ProgressEvent) -> Value {
    let mut v = json!({
        "lab": e.lab,
        "node": e.node,
        "host": e.host,
        "phase": e.phase.word(),
        "at_unix_ms": e.at_unix_ms,
    });
    let more = match &e.phase {
        Phase::Placed { from } => json!({ "from": from }),
        Phase::Fetching {
            image,
            from,
            bytes,
            total,
        } => json!({
            "image": image, "from": from, "bytes": bytes, "total": total,
            "percent": e.phase.percent(),
        }),
        Phase::FetchRetry { image, from, why } => {
            json!({ "image": image, "from": from, "why": why })
        }
        Phase::Kept { pid } => json!({ "pid": pid }),
        Phase::Restored { checkpoint } => json!({ "checkpoint": checkpoint }),
        Phase::Configuring { boot_ms } => json!({ "boot_ms": boot_ms }),
        Phase::Restarting { why } | Phase::Failed { why } | Phase::Left { why } => {
            json!({ "why": why })
        }
        Phase::BackingOff { delay_secs } => json!({ "delay_secs": delay_secs }),
        Phase::Settled { status } => json!({ "status": status }),
        Phase::Booting
        | Phase::Receiving
        | Phase::Running
        | Phase::Lost
        | Phase::Moving
        | Phase::Stopping
        | Phase::Stopped
        | Phase::Removed
        | Phase::SwitchingOver => json!({}),
        Phase::CopyingDisk { done, total } => json!({
            "bytes": done, "total": total, "percent": e.phase.percent(),
        }),
        Phase::CopyingRam {
            pass,
            sent,
            remaining,
        } => json!({ "pass": pass, "sent": sent, "remaining": remaining }),
        Phase::Checked {
            check,
            passed,
            detail,
        } => json!({ "check": check, "passed": passed, "detail": detail }),
    };
    if let (Value::Object(v), Value::Object(more)) = (&mut v, more) {
        v.extend(more);
    }
    v
}

/// A check that ended, as JSON (phase `checks`).
fn json_check(lab: &str, host: Option<&str>, r: &CheckResult) -> Value {
    json!({
        "lab": lab,
        "node": r.node,
        "host": host,
        "phase": "checks",
        "check": r.name,
        "passed": r.passed,
        "detail": r.detail,
        "secs": (r.elapsed.as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// A check that ended, as a line (in words: the PASS/FAIL table that
/// follows is what scripts count).
fn check_line(lab: &str, host: Option<&str>, r: &CheckResult) -> String {
    let verdict = if r.passed { "passed" } else { "failed" };
    let on = host.map_or(String::new(), |h| format!(" on {h}"));
    let mut line = format!(
        "{lab}/{}{on}: checks: {} {verdict} ({:.1} s)",
        r.node,
        r.name,
        r.elapsed.as_secs_f64()
    );
    if !r.passed {
        line.push_str(&format!(": {}", r.detail));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    fn step(node: Option<&str>, host: Option<&str>, phase: Phase) -> ProgressEvent {
        ProgressEvent {
            lab: "seen".into(),
            node: node.map(str::to_string),
            host: host.map(str::to_string),
            phase,
            at_unix_ms: 7,
        }
    }

    fn fetch(bytes: u64) -> Phase {
        Phase::Fetching {
            image: "tiny".into(),
            from: "host1".into(),
            bytes,
            total: 100,
        }
    }

    /// A deploy of node b on host2 as the leader streams it.
    fn deploy() -> Vec<ProgressEvent> {
        let b = |phase| step(Some("b"), Some("host2"), phase);
        vec![
            b(Phase::Placed { from: None }),
            b(fetch(0)),
            b(fetch(40)),
            b(fetch(100)),
            b(Phase::Booting),
            b(Phase::Configuring { boot_ms: 1200 }),
            b(Phase::Running),
            b(Phase::Running),
            step(
                None,
                None,
                Phase::Settled {
                    status: "Running".into(),
                },
            ),
        ]
    }

    fn check(passed: bool) -> CheckResult {
        CheckResult {
            name: "ping b -> a".into(),
            node: "b".into(),
            passed,
            detail: if passed {
                String::new()
            } else {
                "exit status 1: lost".into()
            },
            elapsed: Duration::from_millis(1500),
            attempts: 1,
        }
    }

    #[test]
    fn lines_say_each_phase_change_once() {
        let out = Captured::default();
        let show = Renderer::to(Mode::Lines, Box::new(out.clone()));
        deploy().iter().for_each(|e| show.event(e));
        show.check("seen", &check(true));
        show.check("seen", &check(false));
        assert_eq!(
            out.lines(),
            [
                "seen/b on host2: placed",
                "seen/b on host2: fetching image tiny from host1: 0% of 0.0 MiB",
                "seen/b on host2: fetching image tiny from host1: 100% of 0.0 MiB",
                "seen/b on host2: booting",
                "seen/b on host2: configuring (guest agent up after 1.2 s)",
                "seen/b on host2: running",
                "seen: settled: Running",
                "seen/b on host2: checks: ping b -> a passed (1.5 s)",
                "seen/b on host2: checks: ping b -> a failed (1.5 s): exit status 1: lost",
            ]
        );
    }

    #[test]
    fn json_gives_every_step_with_what_its_phase_knows() {
        let out = Captured::default();
        let show = Renderer::to(Mode::Json, Box::new(out.clone()));
        deploy().iter().for_each(|e| show.event(e));
        show.check("seen", &check(true));
        let lines: Vec<Value> = out
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect();
        let phases: Vec<&str> = lines.iter().filter_map(|v| v["phase"].as_str()).collect();
        assert_eq!(
            phases,
            [
                "placed",
                "fetching",
                "fetching",
                "fetching",
                "booting",
                "configuring",
                "running",
                "running",
                "settled",
                "checks"
            ]
        );
        assert_eq!(lines[0]["host"], "host2");
        assert_eq!(lines[0]["node"], "b");
        assert_eq!(lines[2]["percent"], 40);
        assert_eq!(lines[2]["image"], "tiny");
        assert_eq!(lines[5]["boot_ms"], 1200);
        assert_eq!(lines[8]["status"], "Running");
        assert_eq!(lines[8]["node"], Value::Null);
        // The check's host is the one its node was last seen on.
        assert_eq!(lines[9]["host"], "host2");
        assert_eq!(lines[9]["passed"], true);
        assert_eq!(lines[9]["check"], "ping b -> a");
    }

    #[test]
    fn a_live_move_shows_its_disk_once_started_and_done_and_each_ram_pass() {
        let out = Captured::default();
        let show = Renderer::to(Mode::Lines, Box::new(out.clone()));
        let v = |phase| step(Some("v"), None, phase);
        for e in [
            v(Phase::Moving),
            v(Phase::CopyingDisk {
                done: 0,
                total: 64 << 20,
            }),
            v(Phase::CopyingDisk {
                done: 32 << 20,
                total: 64 << 20,
            }),
            v(Phase::CopyingDisk {
                done: 64 << 20,
                total: 64 << 20,
            }),
            v(Phase::CopyingRam {
                pass: 1,
                sent: 100 << 20,
                remaining: 8 << 20,
            }),
            v(Phase::CopyingRam {
                pass: 1,
                sent: 101 << 20,
                remaining: 8 << 20,
            }),
            v(Phase::CopyingRam {
                pass: 2,
                sent: 108 << 20,
                remaining: 1 << 20,
            }),
            v(Phase::SwitchingOver),
        ] {
            show.event(&e);
        }
        assert_eq!(
            out.lines(),
            [
                "seen/v: moving",
                "seen/v: moving: disk 0% of 64.0 MiB",
                "seen/v: moving: disk 100% of 64.0 MiB",
                "seen/v: moving: RAM pass 1, 100.0 MiB sent, 8.0 MiB left",
                "seen/v: moving: RAM pass 2, 108.0 MiB sent, 1.0 MiB left",
                "seen/v: moving: switching over",
            ]
        );
        let json = json_event(&v(Phase::CopyingRam {
            pass: 2,
            sent: 7,
            remaining: 1,
        }));
        assert_eq!(json["phase"], "copying-ram");
        assert_eq!(
            (json["pass"].as_u64(), json["remaining"].as_u64()),
            (Some(2), Some(1))
        );
    }

    #[test]
    fn a_move_and_repeated_failures_are_news_in_lines() {
        let b = |host, phase| step(Some("b"), Some(host), phase);
        let shown = Shown {
            word: "running",
            host: Some("host2".into()),
            percent: None,
            pass: None,
        };
        let lost = b("host2", Phase::Lost);
        assert_eq!(
            line_for(Some(&shown), &lost).as_deref(),
            Some("seen/b on host2: lost")
        );
        let failed = Shown {
            word: "failed",
            ..shown.clone()
        };
        let again = b("host2", Phase::Failed { why: "died".into() });
        assert!(line_for(Some(&failed), &again).is_some());
        let placed = Shown {
            word: "placed",
            ..shown.clone()
        };
        let moved = b(
            "host3",
            Phase::Placed {
                from: Some("host2".into()),
            },
        );
        assert_eq!(
            line_for(Some(&placed), &moved).as_deref(),
            Some("seen/b on host3: placed (moved from host2)")
        );
        assert_eq!(line_for(Some(&shown), &b("host2", Phase::Running)), None);
    }

    #[test]
    fn bars_print_no_lines_of_their_own() {
        let out = Captured::default();
        let show = Renderer::to(Mode::Bars, Box::new(out.clone()));
        show.expect("seen", [&"a".to_string(), &"b".to_string()]);
        deploy().iter().for_each(|e| show.event(e));
        show.check("seen", &check(true));
        show.finish();
        assert!(out.lines().is_empty(), "{:?}", out.lines());
    }
}
