//! Reading labs' progress as `labspan up --json`, `down --json` and
//! `labspan events --json` print it: one JSON object per step.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use labspan_testutil::{described, wait_until};
use serde_json::Value;

/// Every JSON object among `text`'s lines (other lines are skipped).
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// The steps of `node` of `lab`, in order: (phase, host).
pub fn steps_of(steps: &[Value], lab: &str, node: &str) -> Vec<(String, String)> {
    steps
        .iter()
        .filter(|s| s["lab"] == lab && s["node"] == node)
        .map(|s| {
            let word = s["phase"].as_str().unwrap_or_default().to_string();
            (word, s["host"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// Where `phases` appear in `steps`, in that order (a later phase is
/// looked for after the one before); `None` if one is missing.
pub fn in_order(steps: &[(String, String)], phases: &[&str]) -> Option<Vec<usize>> {
    let mut from = 0;
    let mut at = Vec::new();
    for phase in phases {
        let i = from + steps[from..].iter().position(|(p, _)| p == phase)?;
        at.push(i);
        from = i + 1;
    }
    Some(at)
}

/// `labspan events --json` running in the background; its lines are kept.
/// Killed by pid when dropped.
pub struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Events {
    /// Starts following `lab` on the cluster of `admin`.
    pub fn follow(admin: &std::path::Path, lab: &str) -> Events {
        let mut child = Command::new(crate::labspan_bin())
            .args(["events", lab, "--json", "--cluster"])
            .arg(admin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("labspan events");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut kept) = keep.lock() {
                    kept.push(line);
                }
            }
        });
        Events { child, lines }
    }

    /// The steps so far.
    pub fn steps(&self) -> Vec<Value> {
        let lines = self.lines.lock().map(|l| l.join("\n")).unwrap_or_default();
        json_lines(&lines)
    }

    /// Waits until the steps so far satisfy `check` (a generous bound,
    /// not a timing assertion); fails with every step seen otherwise.
    pub fn until<T>(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&[Value]) -> Option<T>,
    ) -> T {
        let shown = described(|| {
            let all: Vec<String> = self.steps().iter().map(Value::to_string).collect();
            format!(
                "labspan events to show {what}; it showed:\n{}",
                all.join("\n")
            )
        });
        wait_until(shown, within, || check(&self.steps()))
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_finds_phases_one_after_another() {
        let steps: Vec<(String, String)> = ["placed", "booting", "placed", "running"]
            .iter()
            .map(|p| (p.to_string(), "h".to_string()))
            .collect();
        assert_eq!(
            in_order(&steps, &["placed", "booting", "running"]),
            Some(vec![0, 1, 3])
        );
        assert_eq!(in_order(&steps, &["running", "booting"]), None);
    }
}
