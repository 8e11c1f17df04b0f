//! `labspan console LAB NODE`: the node's serial console, interactive.
//!
//! The terminal is put in raw mode so keys reach the guest as typed; Ctrl-]
//! (like telnet and virsh) leaves and restores the terminal.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use anyhow::Context;

/// Ctrl-]: leaves the console.
const ESCAPE: u8 = 0x1d;

/// Arguments of `labspan console`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab name.
    pub lab: String,
    /// Node name.
    pub node: String,
}

/// Runs `labspan console`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
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
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = stdin.read(&mut buf).context("reading the terminal")?;
        if n == 0 {
            break;
        }
        let (keys, leave) = match buf[..n].iter().position(|&b| b == ESCAPE) {
            Some(i) => (&buf[..i], true),
            None => (&buf[..n], false),
        };
        to_guest.write_all(keys).context("writing to the console")?;
        if leave {
            break;
        }
    }
    eprintln!("\r\nLeft the console of {}/{}.", args.lab, args.node);
    Ok(ExitCode::SUCCESS)
}

/// Raw mode on stdin for as long as it lives (no-op when stdin is not a terminal).
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        // SAFETY: termios is plain data; tcgetattr fills it or fails, and we
        // only use it when it succeeded.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return RawTerminal(None);
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
                return RawTerminal(None);
            }
            RawTerminal(Some(saved))
        }
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
