//! Whether a pid is still our QEMU, and a hold on it that a recycled pid
//! cannot fool: the agent starts QEMU with `-daemonize`, so it never has
//! the child, only the pidfile that QEMU wrote.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

/// Whether `pid` is alive (not a zombie) and is a QEMU serving `qmp`: a
/// pidfile can outlive its process and the pid be reused by another.
pub fn is_our_qemu(pid: u32, qmp: &Path) -> bool {
    QemuProcess::open(pid, qmp).is_some()
}

/// Our QEMU, held by a pidfd. The pidfd is opened first and the process
/// checked after, so the check is of the process the pidfd names: a
/// signal sent through it can never reach another process that was given
/// the same pid.
pub struct QemuProcess(OwnedFd);

impl QemuProcess {
    /// QEMU `pid`, if it is alive and serves the QMP socket `qmp`.
    pub fn open(pid: u32, qmp: &Path) -> Option<QemuProcess> {
        let pid_t = i32::try_from(pid).ok().and_then(Pid::from_raw)?;
        let fd = pidfd_open(pid_t, PidfdFlags::empty()).ok()?;
        serves_qmp(pid, qmp).then_some(QemuProcess(fd))
    }

    /// Sends SIGKILL to it.
    pub fn kill(&self) -> io::Result<()> {
        Ok(pidfd_send_signal(&self.0, Signal::KILL)?)
    }
}

/// Whether `/proc/PID` is a live (not zombie) QEMU serving `qmp`.
fn serves_qmp(pid: u32, qmp: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(proc.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    fs::read(proc.join("cmdline"))
        .map(|c| cmdline_serves(&c, qmp))
        .unwrap_or(false)
}

/// Whether a NUL-separated command line is a QEMU whose QMP socket is `qmp`.
fn cmdline_serves(cmdline: &[u8], qmp: &Path) -> bool {
    let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
    let Some(prog) = args.next() else {
        return false;
    };
    let is_qemu = Path::new(prog.as_ref())
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("qemu-system"));
    let needle = format!("id=qmp0,path={},", qmp.to_string_lossy().replace(',', ",,"));
    is_qemu && args.any(|a| a.contains(&needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_is_not_our_qemu_is_never_held() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        assert!(QemuProcess::open(pid, Path::new("/run/x/qmp.sock")).is_none());
        assert!(QemuProcess::open(u32::MAX, Path::new("/run/x/qmp.sock")).is_none());
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    #[test]
    fn cmdline_match_needs_qemu_and_our_socket() {
        let qmp = Path::new("/s/vms/lab/r1/qmp.sock");
        let ours = b"/usr/bin/qemu-system-x86_64\0-chardev\0socket,id=qmp0,path=/s/vms/lab/r1/qmp.sock,server=on,wait=off\0";
        assert!(cmdline_serves(ours, qmp));
        let other_vm = b"qemu-system-x86_64\0-chardev\0socket,id=qmp0,path=/s/vms/lab/r10/qmp.sock,server=on\0";
        assert!(!cmdline_serves(other_vm, qmp));
        let not_qemu = b"/bin/sleep\0socket,id=qmp0,path=/s/vms/lab/r1/qmp.sock,server=on\0";
        assert!(!cmdline_serves(not_qemu, qmp));
        assert!(!cmdline_serves(b"", qmp));
    }
}
