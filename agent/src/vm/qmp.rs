//! A small QMP client: JSON lines over QEMU's unix socket.
//!
//! Only what labspan needs: the greeting and capability negotiation,
//! commands with their `return` or `error`, and async events kept aside
//! (QEMU may send an event, e.g. POWERDOWN, before the reply to the command
//! that caused it) for whoever waits for one (a migration waits for
//! `BLOCK_JOB_READY` and `MIGRATION`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::jsonline::{JsonLines, LineError};

/// Errors talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("QMP socket {path}: no answer to {what} within {timeout:?}")]
    Timeout {
        path: PathBuf,
        what: String,
        timeout: Duration,
    },
    #[error("QMP socket {path}: QEMU closed the connection during {what}")]
    Closed { path: PathBuf, what: String },
    #[error("QMP socket {path}: unexpected message {line:?}")]
    Protocol { path: PathBuf, line: String },
    #[error("QMP socket {path}: no {what} event within {timeout:?}")]
    NoEvent {
        path: PathBuf,
        what: String,
        timeout: Duration,
    },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// One QMP reply or event; unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct Message {
    #[serde(rename = "QMP")]
    greeting: Option<Value>,
    #[serde(rename = "return")]
    ret: Option<Value>,
    error: Option<ErrorBody>,
    event: Option<String>,
    #[serde(default)]
    data: Value,
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

/// Events kept while nobody waits for them; older ones are dropped first.
const MAX_PENDING_EVENTS: usize = 256;

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    class: String,
    #[serde(default)]
    desc: String,
}

/// A connected QMP session in command mode.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    lines: JsonLines,
    timeout: Duration,
    events: VecDeque<Event>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capability-negotiation mode.
    /// `timeout` bounds every later exchange too.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let lines = JsonLines::connect(path, timeout)
            .await
            .map_err(|e| line_error(path, "connect", timeout, e))?;
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            lines,
            timeout,
            events: VecDeque::new(),
        };
        let greeting = qmp.read_message("the greeting").await?;
        if greeting.greeting.is_none() {
            return Err(qmp.protocol("greeting"));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.lines
            .send_command(command, args)
            .await
            .map_err(|e| line_error(&self.path, command, self.timeout, e))?;
        loop {
            let msg = self.read_message(command).await?;
            if let Some(name) = msg.event {
                self.keep(Event {
                    name,
                    data: msg.data,
                });
                continue;
            }
            if let Some(e) = msg.error {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: e.class,
                    desc: e.desc,
                });
            }
            if let Some(r) = msg.ret {
                return Ok(r);
            }
            return Err(self.protocol(command));
        }
    }

    /// Waits up to `timeout` for an event `matches` accepts (one received
    /// earlier, during a command, counts) and returns it; events it skips
    /// are dropped.
    pub async fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<Event, QmpError> {
        while let Some(e) = self.events.pop_front() {
            if matches(&e) {
                return Ok(e);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::NoEvent {
                    path: self.path.clone(),
                    what: what.to_string(),
                    timeout,
                });
            }
            let line = match self.lines.read_line(left).await {
                Ok(line) => line,
                Err(LineError::Timeout) => continue,
                Err(e) => return Err(line_error(&self.path, what, timeout, e)),
            };
            let msg: Message = serde_json::from_str(&line).map_err(|_| QmpError::Protocol {
                path: self.path.clone(),
                line: line.trim().to_string(),
            })?;
            if let Some(name) = msg.event {
                let e = Event {
                    name,
                    data: msg.data,
                };
                if matches(&e) {
                    return Ok(e);
                }
            }
        }
    }

    fn keep(&mut self, e: Event) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    async fn read_message(&mut self, what: &str) -> Result<Message, QmpError> {
        let line = self
            .lines
            .read_line(self.timeout)
            .await
            .map_err(|e| line_error(&self.path, what, self.timeout, e))?;
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol {
            path: self.path.clone(),
            line: line.trim().to_string(),
        })
    }

    fn protocol(&self, what: &str) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            line: format!("(reply to {what} had neither return nor error)"),
        }
    }
}

/// A socket error during `what`, as a [`QmpError`].
fn line_error(path: &Path, what: &str, timeout: Duration, e: LineError) -> QmpError {
    let (path, what) = (path.to_path_buf(), what.to_string());
    match e {
        LineError::Io(cause) => QmpError::Io { path, cause },
        LineError::Timeout => QmpError::Timeout {
            path,
            what,
            timeout,
        },
        LineError::Closed => QmpError::Closed { path, what },
        LineError::TooLong(limit) => QmpError::Protocol {
            path,
            line: format!("(a line longer than {limit} bytes, during {what})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// A scripted QMP server: answers each request line with the next
    /// scripted lines.
    async fn serve(listener: UnixListener, script: Vec<Vec<&'static str>>) {
        let (s, _) = listener.accept().await.expect("accept");
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}, \"extra\": 1}\n")
            .await
            .expect("greet");
        for replies in script {
            let mut line = String::new();
            if r.read_line(&mut line).await.expect("read") == 0 {
                return;
            }
            for reply in replies {
                w.write_all(format!("{reply}\n").as_bytes())
                    .await
                    .expect("reply");
            }
        }
    }

    #[tokio::test]
    async fn skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(serve(
            listener,
            vec![
                vec![r#"{"return": {}}"#],
                vec![
                    r#"{"event": "POWERDOWN", "timestamp": {}}"#,
                    r#"{"return": {"status": "running", "new": true}}"#,
                ],
                vec![r#"{"error": {"class": "GenericError", "desc": "nope"}}"#],
            ],
        ));
        let mut q = Qmp::connect(&path, Duration::from_secs(5))
            .await
            .expect("connect");
        let r = q.execute("query-status", None).await.expect("status");
        assert_eq!(r["status"], "running");
        let e = q.execute("bogus", None).await.expect_err("error reply");
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(e.to_string().contains("nope"), "{e}");
        server.await.expect("server");
    }
}
