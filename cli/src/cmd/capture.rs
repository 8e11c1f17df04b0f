//! `labspan capture LAB NODE NIC`: the packets of a guest NIC as pcap, on
//! stdout (`| wireshark -k -i -`, `| tcpdump -r -`) or in a file.
//!
//! The capture runs on the node's host, on the host side of the NIC (its
//! tap), so the guest needs nothing. On a cluster the pcap travels as a
//! byte stream through a coordinator from the agent of the node's host. On
//! the embedded default the CLI runs tcpdump itself (like the console, so
//! that a long capture does not hold this machine's lock).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::Context;
use labspan_proto::msg::Request;
use labspan_proto::names;
use tokio::io::AsyncWriteExt;

use crate::InvalidInput;

/// Arguments of `labspan capture`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab name.
    pub lab: String,
    /// Node name.
    pub node: String,
    /// NIC name in the guest (as in the lab file: eth0, ...).
    pub nic: String,
    /// Stop after this many packets (default: until interrupted).
    #[arg(long, short = 'c', value_parser = clap::value_parser!(u32).range(1..))]
    pub count: Option<u32>,
    /// Write the pcap to this file instead of stdout.
    #[arg(long, short = 'w')]
    pub write: Option<PathBuf>,
    /// Capture on the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<PathBuf>,
}

/// Runs `labspan capture`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match &args.cluster {
        Some(cluster) => through_cluster(cluster, &args),
        None => local(&args),
    }
}

fn through_cluster(cluster: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let req = Request::Capture {
            lab: args.lab.clone(),
            node: args.node.clone(),
            nic: args.nic.clone(),
            count: args.count,
        };
        let (client, send, mut recv) = crate::remote::open_stream(cluster, &req).await?;
        let copied = match &args.write {
            Some(path) => {
                let mut file = tokio::fs::File::create(path)
                    .await
                    .with_context(|| format!("creating {}", path.display()))?;
                let n = tokio::io::copy(&mut recv, &mut file).await;
                file.flush().await?;
                n
            }
            None => {
                let mut out = tokio::io::stdout();
                let n = tokio::io::copy(&mut recv, &mut out).await;
                out.flush().await?;
                n
            }
        };
        drop(send);
        client.close().await;
        copied.context("receiving the capture")?;
        Ok(ExitCode::SUCCESS)
    })
}

fn local(args: &Args) -> anyhow::Result<ExitCode> {
    let tap = names::tap(&args.lab, &args.node, &args.nic);
    if !Path::new("/sys/class/net").join(&tap).exists() {
        return Err(InvalidInput(format!(
            "error: lab {:?} has no NIC {}:{} running on this machine (see `labspan inspect`)",
            args.lab, args.node, args.nic
        ))
        .into());
    }
    let mut cmd = labspan_agent::stream::tcpdump(&tap, args.count);
    if let Some(path) = &args.write {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        cmd.stdout(Stdio::from(file));
    }
    let status = cmd
        .status()
        .context("running tcpdump (install it: apt install tcpdump)")?;
    // tcpdump ends on SIGPIPE when our reader has what it wanted (`| tcpdump -c 3`).
    let reader_gone = std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGPIPE);
    Ok(if status.success() || reader_gone {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
