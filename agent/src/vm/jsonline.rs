//! JSON lines over a unix socket: the framing QMP and the guest agent share.
//! Each client maps [`LineError`] to its own error type, which names the
//! socket and the exchange.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// What went wrong on the socket itself.
#[derive(Debug)]
pub(crate) enum LineError {
    Io(std::io::Error),
    /// Nothing came within the time allowed.
    Timeout,
    /// The other end closed the socket.
    Closed,
}

/// A connected socket carrying one JSON value per line.
#[derive(Debug)]
pub(crate) struct JsonLines {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl JsonLines {
    /// Connects to the socket at `path` within `timeout`.
    pub(crate) async fn connect(path: &Path, timeout: Duration) -> Result<Self, LineError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| LineError::Timeout)?
            .map_err(LineError::Io)?;
        let (r, w) = stream.into_split();
        Ok(JsonLines {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Sends `{"execute": command, "arguments": args}` as one line.
    pub(crate) async fn send_command(
        &mut self,
        command: &str,
        args: Option<Value>,
    ) -> Result<(), LineError> {
        let mut req = json!({ "execute": command });
        if let Some(a) = args {
            req["arguments"] = a;
        }
        let mut line = req.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(LineError::Io)
    }

    /// The next line, waiting at most `timeout`.
    pub(crate) async fn read_line(&mut self, timeout: Duration) -> Result<String, LineError> {
        let mut line = String::new();
        let n = tokio::time::timeout(timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|_| LineError::Timeout)?
            .map_err(LineError::Io)?;
        if n == 0 {
            return Err(LineError::Closed);
        }
        Ok(line)
    }
}
