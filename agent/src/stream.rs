//! Byte streams a coordinator opens on the agent's connection: a guest's
//! serial console, both ways, and a capture of a guest NIC's tap as pcap
//! (tcpdump on the host side of the NIC, so the guest needs nothing).

use std::path::Path;
use std::process::Stdio;

use labspan_proto::checkpoint::CheckpointFile;
use labspan_proto::msg::{AgentReply, ErrorKind, ErrorReply};
use labspan_proto::names;
use labspan_transport::{splice, write_frame, write_message};
use quinn::{RecvStream, SendStream};
use tokio::net::UnixStream;
use tokio::process::Command;

use crate::paths;

/// Pipes the serial console of `node` of `lab` to the stream until either
/// side ends.
pub async fn console(state: &Path, lab: &str, node: &str, mut send: SendStream, recv: RecvStream) {
    let path = paths::vm_dir(state, lab, node).join(paths::CONSOLE_SOCKET);
    let socket = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => {
            let why = format!(
                "node {node:?} of lab {lab:?} has no console on this host ({}: {e}); is it running? see `labspan inspect`",
                path.display()
            );
            return refuse(send, ErrorKind::NotFound, why).await;
        }
    };
    if write_message(&mut send, &AgentReply::Streaming)
        .await
        .is_err()
    {
        return;
    }
    let (from_guest, to_guest) = socket.into_split();
    splice(recv, send, from_guest, to_guest).await;
}

/// Streams the packets of `node`'s NIC `nic` as pcap: `count` of them, or
/// until the caller closes the stream.
pub async fn capture(
    lab: &str,
    node: &str,
    nic: &str,
    count: Option<u32>,
    mut send: SendStream,
    recv: RecvStream,
) {
    let tap = names::tap(lab, node, nic);
    if !Path::new("/sys/class/net").join(&tap).exists() {
        let why = format!("lab {lab:?} has no NIC {node}:{nic} on this host (no tap {tap})");
        return refuse(send, ErrorKind::NotFound, why).await;
    }
    let mut cmd = Command::from(tcpdump(&tap, count));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = match labspan_tool::spawn_async(&mut cmd) {
        Ok(c) => c,
        Err(e) => {
            let why = format!("{e}: install tcpdump on this host (apt install tcpdump)");
            return refuse(send, ErrorKind::Unavailable, why).await;
        }
    };
    let Some(pcap) = child.stdout.take() else {
        return refuse(send, ErrorKind::Internal, "tcpdump has no stdout".into()).await;
    };
    if write_message(&mut send, &AgentReply::Streaming)
        .await
        .is_ok()
    {
        // Nothing goes to tcpdump: the caller's side only says when to stop.
        splice(recv, send, pcap, tokio::io::sink()).await;
    }
    // Ours by pid (the child we spawned): stop it if it still runs, reap it.
    let _ = child.kill().await;
}

/// The capture of a tap as pcap on stdout, `count` packets or until it is
/// stopped: the one tcpdump command line of both capture paths (this
/// stream, and `labspan capture` on the embedded default).
pub fn tcpdump(tap: &str, count: Option<u32>) -> std::process::Command {
    let mut cmd = std::process::Command::new("tcpdump");
    // -U: write each packet as it comes; -w -: pcap on stdout.
    cmd.args(["-i", tap, "-U", "-w", "-", "--immediate-mode", "-s", "0"]);
    if let Some(n) = count {
        cmd.args(["-c", &n.to_string()]);
    }
    cmd
}

async fn refuse(mut send: SendStream, kind: ErrorKind, why: String) {
    tracing::info!(reason = why, "refused a stream");
    let _ = write_frame(&mut send, &AgentReply::Error(ErrorReply::new(kind, why))).await;
}

/// The file of `kind` (`ram`, `disk`) in a node's share of a checkpoint.
pub(crate) fn checkpoint_file(
    state: &Path,
    lab: &str,
    name: &str,
    node: &str,
    kind: &str,
) -> Result<std::path::PathBuf, String> {
    names::valid::lab(lab).map_err(|e| e.to_string())?;
    names::valid::checkpoint(name).map_err(|e| e.to_string())?;
    names::valid::node(node).map_err(|e| e.to_string())?;
    let file = match kind {
        "ram" => crate::vm::checkpoint::RAM_FILE,
        "disk" => crate::vm::checkpoint::DISK_FILE,
        other => {
            return Err(format!(
                "a checkpoint has no file of kind {other:?} (ram, disk)"
            ))
        }
    };
    Ok(paths::checkpoint_dir(state, lab, name, node).join(file))
}

/// Sends one file of a checkpoint this host holds, then ends the stream.
/// A disk file is whole on its own (its layers folded over its image,
/// which it names by a relative link: `vm::checkpoint::keep_disk`), so it
/// is sent as recorded, and checked against its recorded hash.
pub async fn checkpoint_read(
    state: &Path,
    (lab, name, node, kind): (&str, &str, &str, &str),
    send: SendStream,
) {
    match checkpoint_file(state, lab, name, node, kind) {
        Ok(path) => send_checkpoint_file(&path, (lab, name, node, kind), send).await,
        Err(why) => refuse(send, ErrorKind::Invalid, why).await,
    }
}

async fn send_checkpoint_file(
    path: &Path,
    (lab, name, node, kind): (&str, &str, &str, &str),
    mut send: SendStream,
) {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            let why = format!(
                "checkpoint {name:?} of lab {lab:?} has no {kind} file of node {node:?} on this host ({}: {e})",
                path.display()
            );
            return refuse(send, ErrorKind::NotFound, why).await;
        }
    };
    if write_message(&mut send, &AgentReply::Streaming)
        .await
        .is_err()
    {
        return;
    }
    if let Err(e) = tokio::io::copy(&mut file, &mut send).await {
        tracing::warn!(lab, name, node, kind, error = %e, "checkpoint file not sent whole");
        let _ = send.reset(quinn::VarInt::from_u32(1));
        return;
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// Receives one file of a checkpoint (the caller ends its side after the
/// last byte), checks it against `want`, keeps it, and answers with one
/// frame. A file that does not match is not kept.
pub async fn checkpoint_write(
    state: &Path,
    (lab, name, node): (&str, &str, &str),
    want: &CheckpointFile,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let path = match checkpoint_file(state, lab, name, node, &want.kind) {
        Ok(p) => p,
        Err(why) => return refuse(send, ErrorKind::Invalid, why).await,
    };
    // Not recorded until the load has given every host its files: kept
    // meanwhile by a host told which checkpoints to keep.
    if let Err(e) = crate::reconcile::checkpoint::mark_given(state, lab, name) {
        let why = format!("node {node:?} of lab {lab:?}: checkpoint {name:?}: {e}");
        return refuse(send, ErrorKind::Internal, why).await;
    }
    if write_message(&mut send, &AgentReply::Streaming)
        .await
        .is_err()
    {
        return;
    }
    let reply = match receive_file(&path, want, &mut recv).await {
        Ok(()) => AgentReply::Resumed {
            clock_not_set: Vec::new(),
        },
        Err(why) => {
            tracing::warn!(lab, name, node, why, "checkpoint file refused");
            AgentReply::Error(ErrorReply::new(
                ErrorKind::Invalid,
                format!("node {node:?} of lab {lab:?}: checkpoint {name:?}: {why}"),
            ))
        }
    };
    let _ = write_frame(&mut send, &reply).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

async fn receive_file(
    path: &Path,
    want: &CheckpointFile,
    recv: &mut RecvStream,
) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = path.parent().unwrap_or(path);
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let partial = path.with_extension("partial");
    let result = async {
        let mut out = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| format!("creating {}: {e}", partial.display()))?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // Tokio's read (quinn's own says `None` at the end).
            let n = AsyncReadExt::read(recv, &mut buf)
                .await
                .map_err(|e| format!("receiving its {} file: {e}", want.kind))?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            if bytes > want.bytes {
                return Err(format!(
                    "its {} file is longer than the {} bytes announced",
                    want.kind, want.bytes
                ));
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .await
                .map_err(|e| format!("writing {}: {e}", partial.display()))?;
        }
        out.flush()
            .await
            .map_err(|e| format!("writing {}: {e}", partial.display()))?;
        let sha256 = hex::encode(hasher.finalize());
        if bytes != want.bytes || sha256 != want.sha256 {
            return Err(format!(
                "its {} file arrived as {bytes} bytes of sha256 {sha256}, not {} bytes of sha256 {}",
                want.kind, want.bytes, want.sha256
            ));
        }
        tokio::fs::rename(&partial, path)
            .await
            .map_err(|e| format!("keeping {}: {e}", path.display()))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

/// Copies `files` of node `node`'s share of checkpoint `name` of `lab`
/// from the image endpoint of `from` into this host's checkpoints, each
/// checked against its size and hash (a file that does not match is not
/// kept); the bytes copied.
pub async fn checkpoint_copy(
    state: &Path,
    endpoint: &quinn::Endpoint,
    (lab, name, node): (&str, &str, &str),
    files: &[CheckpointFile],
    from: &labspan_proto::image::ImageSource,
) -> Result<u64, String> {
    use labspan_image::msg::{ImageReply, ImageRequest};

    let addr: std::net::SocketAddr = from.addr.parse().map_err(|e| {
        format!(
            "image endpoint {:?} of host {:?}: {e}",
            from.addr, from.host
        )
    })?;
    let conn = labspan_image::endpoint::connect_image(endpoint, addr)
        .await
        .map_err(|e| format!("host {:?}: {e}", from.host))?;
    let mut copied = 0;
    for want in files {
        let path = checkpoint_file(state, lab, name, node, &want.kind)?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("host {:?}: {e}", from.host))?;
        let req = ImageRequest::CheckpointFile {
            lab: lab.into(),
            name: name.into(),
            node: node.into(),
            kind: want.kind.clone(),
        };
        write_message(&mut send, &req)
            .await
            .map_err(|e| format!("host {:?}: {e}", from.host))?;
        let _ = send.finish();
        match labspan_transport::read_message_within::<ImageReply>(&mut recv, 1 << 20).await {
            Ok(ImageReply::CheckpointFile { .. }) => {}
            Ok(ImageReply::Error(e)) => return Err(format!("host {:?}: {}", from.host, e.message)),
            Ok(other) => return Err(format!("host {:?} answered {other:?}", from.host)),
            Err(e) => return Err(format!("host {:?}: {e}", from.host)),
        }
        receive_file(&path, want, &mut recv).await?;
        copied += want.bytes;
    }
    conn.close(0u32.into(), b"copied");
    Ok(copied)
}
