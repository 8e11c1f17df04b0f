//! Byte streams joined end to end: a console or a capture runs from the
//! CLI through a coordinator (and the leader) to the agent, each hop
//! copying both ways.

use std::pin::pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// How long the other direction still runs once one has ended: what a
/// guest prints in answer to the last keys, a capture's last packets.
pub const SPLICE_LINGER: Duration = Duration::from_secs(2);

/// Copies `from_a` into `to_b` and `from_b` into `to_a`. When a direction
/// ends, its writer is shut down (for QUIC, the stream is finished), so the
/// end travels on; the other direction then runs for at most
/// [`SPLICE_LINGER`] more (a peer that is gone must not hold it open).
pub async fn splice<RA, WA, RB, WB>(mut from_a: RA, mut to_a: WA, mut from_b: RB, mut to_b: WB)
where
    RA: AsyncRead + Unpin,
    WA: AsyncWrite + Unpin,
    RB: AsyncRead + Unpin,
    WB: AsyncWrite + Unpin,
{
    let mut a_to_b = pin!(async {
        let _ = tokio::io::copy(&mut from_a, &mut to_b).await;
        let _ = to_b.shutdown().await;
    });
    let mut b_to_a = pin!(async {
        let _ = tokio::io::copy(&mut from_b, &mut to_a).await;
        let _ = to_a.shutdown().await;
    });
    tokio::select! {
        () = &mut a_to_b => { let _ = tokio::time::timeout(SPLICE_LINGER, b_to_a).await; }
        () = &mut b_to_a => { let _ = tokio::time::timeout(SPLICE_LINGER, a_to_b).await; }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn bytes_cross_both_ways_and_an_end_travels_on() {
        let (cli, hop_a) = tokio::io::duplex(64);
        let (hop_b, agent) = tokio::io::duplex(64);
        let (ra, wa) = tokio::io::split(hop_a);
        let (rb, wb) = tokio::io::split(hop_b);
        let hop = tokio::spawn(splice(ra, wa, rb, wb));
        let (mut cli_r, mut cli_w) = tokio::io::split(cli);
        let (mut agent_r, mut agent_w) = tokio::io::split(agent);
        cli_w.write_all(b"keys").await.expect("cli writes");
        cli_w.shutdown().await.expect("cli is done typing");
        let mut got = Vec::new();
        agent_r
            .read_to_end(&mut got)
            .await
            .expect("agent reads to the end");
        assert_eq!(got, b"keys");
        // The answer to the last keys still reaches the caller.
        agent_w.write_all(b"output").await.expect("agent writes");
        agent_w.shutdown().await.expect("agent ends");
        let mut out = Vec::new();
        cli_r
            .read_to_end(&mut out)
            .await
            .expect("cli reads to the end");
        assert_eq!(out, b"output");
        hop.await.expect("the hop returns once a direction ended");
    }
}
