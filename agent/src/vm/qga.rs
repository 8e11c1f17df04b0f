//! A qemu-guest-agent client over the VM's `qga.sock`.
//!
//! The socket is a QEMU chardev server that takes one client at a time, so
//! a `GuestAgent` is meant to be short-lived: connect, do the work, drop.
//! Every session starts with `guest-sync` and a random id, and replies are
//! read until that id comes back: a previous client may have left a reply
//! unread in the channel.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::jsonline::{JsonLines, LineError};

/// Bytes per guest-file-read/write call (the agent's JSON lines stay small).
const FILE_CHUNK: usize = 48 * 1024;
/// The largest file read from a guest (the guest decides when it ends).
const READ_FILE_MAX: usize = 64 * 1024 * 1024;

/// Errors talking to a guest agent.
#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    #[error("guest agent socket {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the guest agent did not answer {what} within {timeout:?}: is qemu-guest-agent running in the guest?")]
    Timeout { what: String, timeout: Duration },
    /// The guest agent answers, but the command it runs has not ended.
    #[error("`{command}` did not finish within {} s (it may still be running in the guest)", timeout.as_secs())]
    Unfinished { command: String, timeout: Duration },
    #[error("the guest agent closed the connection during {what}")]
    Closed { what: String },
    #[error("guest agent: {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("guest agent: malformed reply to {command}: {detail}")]
    Protocol { command: String, detail: String },
}

/// What a guest command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; 128 + signal number when a signal ended it.
    pub exit_code: i32,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(rename = "return")]
    ret: Option<Value>,
    error: Option<ErrorBody>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    class: String,
    #[serde(default)]
    desc: String,
}

#[derive(Debug, Deserialize)]
struct ExecStatus {
    exited: bool,
    exitcode: Option<i32>,
    signal: Option<i32>,
    #[serde(rename = "out-data")]
    out_data: Option<String>,
    #[serde(rename = "err-data")]
    err_data: Option<String>,
}

/// A synchronised guest-agent session.
#[derive(Debug)]
pub struct GuestAgent {
    path: PathBuf,
    lines: JsonLines,
    /// Bound on each request/reply exchange.
    timeout: Duration,
}

impl GuestAgent {
    /// Connects to `path` and synchronises; fails if the guest agent does not
    /// answer within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QgaError> {
        let lines = JsonLines::connect(path, timeout)
            .await
            .map_err(|e| line_error(path, "connect", timeout, e))?;
        let mut ga = GuestAgent {
            path: path.to_path_buf(),
            lines,
            timeout,
        };
        ga.sync(timeout).await?;
        Ok(ga)
    }

    /// Sends `guest-sync` with a fresh random id and discards everything until
    /// the reply carrying that id.
    pub async fn sync(&mut self, timeout: Duration) -> Result<(), QgaError> {
        let id = random_id();
        self.send("guest-sync", Some(json!({ "id": id }))).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.read_line("guest-sync", deadline).await?;
            let Ok(reply) = serde_json::from_str::<Reply>(&line) else {
                continue;
            };
            if reply.ret.as_ref().and_then(Value::as_u64) == Some(id) {
                return Ok(());
            }
        }
    }

    /// Runs `command` and returns its `return` value.
    pub async fn call(&mut self, command: &str, args: Option<Value>) -> Result<Value, QgaError> {
        self.send(command, args).await?;
        let deadline = Instant::now() + self.timeout;
        let line = self.read_line(command, deadline).await?;
        let reply: Reply = serde_json::from_str(&line).map_err(|e| self.bad(command, e))?;
        if let Some(e) = reply.error {
            return Err(QgaError::Command {
                command: command.to_string(),
                class: e.class,
                desc: e.desc,
            });
        }
        reply
            .ret
            .ok_or_else(|| self.bad(command, "no return value"))
    }

    /// Runs `path args...` in the guest and waits up to `timeout` for it to
    /// end, returning its exit status and output.
    pub async fn exec(
        &mut self,
        path: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, QgaError> {
        let started = self
            .call(
                "guest-exec",
                Some(json!({ "path": path, "arg": args, "capture-output": true })),
            )
            .await?;
        let pid = started
            .get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| self.bad("guest-exec", "no pid"))?;
        // Not a `Poll`: the pause starts at 10 ms and doubles to 200 ms, so
        // that the many commands that end at once (addresses, `verify`
        // lines) are answered without a fixed 200 ms each, and long ones
        // are not asked about 100 times a second.
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            let v = self
                .call("guest-exec-status", Some(json!({ "pid": pid })))
                .await?;
            let st: ExecStatus =
                serde_json::from_value(v).map_err(|e| self.bad("guest-exec-status", e))?;
            if st.exited {
                return self.exec_output(st);
            }
            if Instant::now() >= deadline {
                // The line as the user wrote it: `sh -c LINE` shows as LINE.
                let command = match args {
                    ["-c", line] => (*line).to_string(),
                    _ => format!("{path} {}", args.join(" ")),
                };
                return Err(QgaError::Unfinished { command, timeout });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Runs a shell line with the guest's `/bin/sh -c`.
    pub async fn exec_shell(
        &mut self,
        line: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, QgaError> {
        self.exec("/bin/sh", &["-c", line], timeout).await
    }

    /// Writes `data` to `path` in the guest (created or truncated).
    pub async fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), QgaError> {
        let handle = self.open(path, "w").await?;
        let mut result = Ok(());
        for chunk in data.chunks(FILE_CHUNK) {
            let args = json!({ "handle": handle, "buf-b64": B64.encode(chunk) });
            if let Err(e) = self.call("guest-file-write", Some(args)).await {
                result = Err(e);
                break;
            }
        }
        let closed = self.close(handle).await;
        result.and(closed)
    }

    /// Reads the whole of `path` from the guest.
    pub async fn read_file(&mut self, path: &str) -> Result<Vec<u8>, QgaError> {
        let handle = self.open(path, "r").await?;
        let mut data = Vec::new();
        let result = loop {
            let args = json!({ "handle": handle, "count": FILE_CHUNK });
            let v = match self.call("guest-file-read", Some(args)).await {
                Ok(v) => v,
                Err(e) => break Err(e),
            };
            if let Some(b) = v.get("buf-b64").and_then(Value::as_str) {
                match B64.decode(b) {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(e) => break Err(self.bad("guest-file-read", e)),
                }
            }
            if data.len() > READ_FILE_MAX {
                let why = format!("{path} is larger than {READ_FILE_MAX} bytes");
                break Err(self.bad("guest-file-read", why));
            }
            if v.get("eof").and_then(Value::as_bool).unwrap_or(true) {
                break Ok(());
            }
        };
        let closed = self.close(handle).await;
        result.and(closed).map(|_| data)
    }

    async fn open(&mut self, path: &str, mode: &str) -> Result<i64, QgaError> {
        let v = self
            .call(
                "guest-file-open",
                Some(json!({ "path": path, "mode": mode })),
            )
            .await?;
        v.as_i64()
            .ok_or_else(|| self.bad("guest-file-open", "no handle"))
    }

    async fn close(&mut self, handle: i64) -> Result<(), QgaError> {
        self.call("guest-file-close", Some(json!({ "handle": handle })))
            .await
            .map(|_| ())
    }

    fn exec_output(&self, st: ExecStatus) -> Result<ExecOutput, QgaError> {
        let decode = |d: Option<String>| -> Result<Vec<u8>, QgaError> {
            d.map(|s| B64.decode(s).map_err(|e| self.bad("guest-exec-status", e)))
                .unwrap_or(Ok(Vec::new()))
        };
        Ok(ExecOutput {
            exit_code: exit_code(st.exitcode, st.signal)
                .map_err(|e| self.bad("guest-exec-status", e))?,
            signal: st.signal,
            stdout: decode(st.out_data)?,
            stderr: decode(st.err_data)?,
        })
    }

    async fn send(&mut self, command: &str, args: Option<Value>) -> Result<(), QgaError> {
        self.lines
            .send_command(command, args)
            .await
            .map_err(|e| line_error(&self.path, command, self.timeout, e))
    }

    async fn read_line(&mut self, what: &str, deadline: Instant) -> Result<String, QgaError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines
            .read_line(left)
            .await
            .map_err(|e| line_error(&self.path, what, self.timeout, e))
    }

    fn bad(&self, command: &str, detail: impl std::fmt::Display) -> QgaError {
        QgaError::Protocol {
            command: command.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// A socket error during `what`, as a [`QgaError`].
fn line_error(path: &Path, what: &str, timeout: Duration, e: LineError) -> QgaError {
    let (path, what) = (path.to_path_buf(), what.to_string());
    match e {
        LineError::Io(cause) => QgaError::Io { path, cause },
        LineError::Timeout => QgaError::Timeout { what, timeout },
        LineError::Closed => QgaError::Closed { what },
        LineError::TooLong(limit) => QgaError::Protocol {
            command: what,
            detail: format!("a line longer than {limit} bytes"),
        },
    }
}

/// A random id for guest-sync (kept below 2^31: ids travel as JSON ints).
fn random_id() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() & 0x7fff_ffff
}

/// A shell's exit status: the code, or 128 + the signal that ended it.
/// Signal numbers are 1..=64 on Linux; anything else is the guest's
/// invention (and 128 + it could overflow).
fn exit_code(code: Option<i32>, signal: Option<i32>) -> Result<i32, String> {
    match (code, signal) {
        (Some(c), _) => Ok(c),
        (None, Some(s)) if (1..=64).contains(&s) => Ok(128 + s),
        (None, Some(s)) => Err(format!("signal {s} is not a signal number (1 to 64)")),
        (None, None) => Ok(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    #[test]
    fn a_signal_outside_1_to_64_is_refused_not_overflowed() {
        assert_eq!(exit_code(Some(3), None), Ok(3));
        assert_eq!(exit_code(None, Some(9)), Ok(137));
        for bad in [i32::MAX, 0, -1, 65] {
            let err = exit_code(None, Some(bad)).expect_err("not a signal");
            assert!(err.contains(&format!("signal {bad} is not")), "{err}");
        }
    }

    #[tokio::test]
    async fn sync_skips_stale_replies_then_exec_decodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            r.read_line(&mut line).await.expect("sync");
            let req: Value = serde_json::from_str(&line).expect("json");
            let id = req["arguments"]["id"].clone();
            // A leftover reply from an earlier client, then garbage, then ours.
            let out = format!("{{\"return\": 1}}\n\u{ff}garbage\n{{\"return\": {id}}}\n");
            w.write_all(out.as_bytes()).await.expect("write");
            for reply in [
                r#"{"return": {"pid": 7}}"#,
                r#"{"return": {"exited": false}}"#,
                r#"{"return": {"exited": true, "exitcode": 3, "out-data": "aGk=", "x": 1}}"#,
            ] {
                line.clear();
                r.read_line(&mut line).await.expect("request");
                w.write_all(format!("{reply}\n").as_bytes())
                    .await
                    .expect("reply");
            }
        });
        let mut ga = GuestAgent::connect(&path, Duration::from_secs(5))
            .await
            .expect("connect");
        let out = ga
            .exec("/bin/false", &[], Duration::from_secs(5))
            .await
            .expect("exec");
        assert_eq!(out.exit_code, 3);
        assert_eq!(out.stdout, b"hi");
        assert!(out.stderr.is_empty());
        server.await.expect("server");
    }

    #[test]
    fn ids_fit_a_json_int() {
        assert!(random_id() < (1 << 31));
    }
}
