//! JSON lines over a unix socket: the framing QMP and the guest agent share.
//! Each client maps [`LineError`] to its own error type, which names the
//! socket and the exchange.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// The longest line read: a guest agent's largest reply is a command's
/// output (QEMU's guest agent caps it at 16 MiB) in base64, plus its JSON.
/// A guest that sends more is refused rather than buffered without end.
pub(crate) const MAX_LINE: usize = 24 * 1024 * 1024;

/// What went wrong on the socket itself.
#[derive(Debug)]
pub(crate) enum LineError {
    Io(std::io::Error),
    /// Nothing came within the time allowed.
    Timeout,
    /// The other end closed the socket.
    Closed,
    /// A line went on past this many bytes.
    TooLong(usize),
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
        tokio::time::timeout(timeout, read_limited(&mut self.reader, MAX_LINE))
            .await
            .map_err(|_| LineError::Timeout)?
    }
}

/// One line of at most `limit` bytes (newline included) from `reader`.
async fn read_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<String, LineError> {
    let mut line = String::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let n = reader
        .take(cap)
        .read_line(&mut line)
        .await
        .map_err(LineError::Io)?;
    if n == 0 {
        return Err(LineError::Closed);
    }
    if n > limit {
        return Err(LineError::TooLong(limit));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_refused_not_buffered() {
        let mut long = vec![b'x'; 100];
        long.push(b'\n');
        let mut reader: &[u8] = &long;
        assert!(matches!(
            read_limited(&mut reader, 64).await,
            Err(LineError::TooLong(64))
        ));
        let mut reader: &[u8] = b"{\"return\": {}}\nnext\n";
        let line = read_limited(&mut reader, 64).await.expect("a short line");
        assert_eq!(line, "{\"return\": {}}\n");
        assert_eq!(
            read_limited(&mut reader, 5).await.expect("exactly 5"),
            "next\n"
        );
        assert!(matches!(
            read_limited(&mut reader, 5).await,
            Err(LineError::Closed)
        ));
    }
}
