//! `labspan console LAB NODE`: the node's serial console, interactive.
//!
//! The terminal is put in raw mode so keys reach the guest as typed; Ctrl-]
//! (like telnet and virsh) leaves and restores the terminal.
//!
//! On a cluster the console travels as a byte stream through a coordinator
//! to the agent of the node's host. On the embedded default the CLI opens
//! the VM's console socket itself: a console lasts as long as someone
//! types, and the in-process cluster would hold this machine's lock (and
//! every other labspan command) for that long.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use labspan_proto::msg::Request;
use tokio::io::AsyncWriteExt;

/// Ctrl-]: leaves the console.
const ESCAPE: u8 = 0x1d;

/// Arguments of `labspan console`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab name.
    pub lab: String,
    /// Node name.
    pub node: String,
    /// Attach through the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<std::path::PathBuf>,
}

/// Runs `labspan console`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match &args.cluster {
        Some(cluster) => through_cluster(cluster, &args),
        None => local(&args),
    }
}

/// The console of a node on a cluster.
fn through_cluster(cluster: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let req = Request::Console {
        lab: args.lab.clone(),
        node: args.node.clone(),
    };
    let (client, mut send, mut recv) = rt.block_on(crate::remote::open_stream(cluster, &req))?;
    eprintln!("Connected to {}/{}. Ctrl-] leaves.\r", args.lab, args.node);
    let raw = RawTerminal::enter();
    let output = rt.spawn(async move {
        let mut out = tokio::io::stdout();
        let _ = tokio::io::copy(&mut recv, &mut out).await;
        let _ = out.flush().await;
    });
    let (keys_tx, mut keys_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let input = rt.spawn(async move {
        while let Some(keys) = keys_rx.recv().await {
            if send.write_all(&keys).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
    let typed = read_keys(|keys| {
        keys_tx
            .send(keys.to_vec())
            .map_err(|_| std::io::Error::other("the console closed"))
    });
    drop(keys_tx);
    rt.block_on(async {
        let _ = input.await;
        // What the guest still prints on its way out.
        let _ = tokio::time::timeout(Duration::from_secs(2), output).await;
        client.close().await;
    });
    drop(raw);
    typed?;
    eprintln!("\r\nLeft the console of {}/{}.", args.lab, args.node);
    Ok(ExitCode::SUCCESS)
}

/// Reads the terminal and hands the keys to `write` until Ctrl-] or the
/// end of input.
fn read_keys(mut write: impl FnMut(&[u8]) -> std::io::Result<()>) -> anyhow::Result<()> {
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = stdin.read(&mut buf).context("reading the terminal")?;
        if n == 0 {
            return Ok(());
        }
        let (keys, leave) = match buf[..n].iter().position(|&b| b == ESCAPE) {
            Some(i) => (&buf[..i], true),
            None => (&buf[..n], false),
        };
        write(keys).context("writing to the console")?;
        if leave {
            return Ok(());
        }
    }
}

/// The console of a node on this machine (the embedded default).
fn local(args: &Args) -> anyhow::Result<ExitCode> {
    let path =
        labspan_agent::paths::vm_dir(&labspan_agent::paths::state_dir(), &args.lab, &args.node)
            .join(labspan_agent::paths::CONSOLE_SOCKET);
    let stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "node \"{}\" of lab \"{}\" has no console at {} (is the lab up? see `labspan inspect`)",
            args.node,
            args.lab,
            path.display()
        )
    })?;
    eprintln!("Connected to {}/{}. Ctrl-] leaves.\r", args.lab, args.node);
    let _raw = RawTerminal::enter();
    let mut from_guest = stream.try_clone().context("console socket")?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = from_guest.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut to_guest = stream;
    read_keys(|keys| to_guest.write_all(keys))?;
    eprintln!("\r\nLeft the console of {}/{}.", args.lab, args.node);
    Ok(ExitCode::SUCCESS)
}

/// Raw mode on stdin for as long as it lives (no-op when stdin is not a terminal).
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        // SAFETY: termios is plain old data, for which all-zero bytes are a
        // valid value; tcgetattr overwrites it below.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid, writable termios; the result is checked.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return RawTerminal(None);
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios read by tcgetattr.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios; the result is checked.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return RawTerminal(None);
        }
        RawTerminal(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the attributes read by tcgetattr in `enter`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
            }
        }
    }
}
