//! Byte streams a coordinator opens on the agent's connection: a guest's
//! serial console, both ways, and a capture of a guest NIC's tap as pcap
//! (tcpdump on the host side of the NIC, so the guest needs nothing).

use std::path::Path;
use std::process::Stdio;

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
    let mut cmd = Command::new("tcpdump");
    // -U: write each packet as it comes; -w -: pcap on stdout.
    cmd.args(["-i", &tap, "-U", "-w", "-", "--immediate-mode", "-s", "0"]);
    if let Some(n) = count {
        cmd.args(["-c", &n.to_string()]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why =
                format!("cannot run tcpdump on this host ({e}): install it (apt install tcpdump)");
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

async fn refuse(mut send: SendStream, kind: ErrorKind, why: String) {
    tracing::info!(reason = why, "refused a stream");
    let _ = write_frame(&mut send, &AgentReply::Error(ErrorReply::new(kind, why))).await;
}
