//! Signals to processes a test did not spawn itself (daemons started by a
//! script, known by a pidfile): sent through a pidfd, after checking that
//! the pid is still the process the test means.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

/// `pid` held by a pidfd, if its command line (NUL-separated, from
/// `/proc/PID/cmdline`) satisfies `ours`. The pidfd is opened before the
/// check, so the check is of the process it names: a pid reused since the
/// pidfile was written is refused, never signalled.
pub fn open_if(pid: i32, ours: impl Fn(&[u8]) -> bool) -> Option<OwnedFd> {
    let fd = pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    ours(&cmdline).then_some(fd)
}

/// SIGKILLs `pid` if its command line satisfies `ours`; true if sent.
pub fn kill_if(pid: i32, ours: impl Fn(&[u8]) -> bool) -> bool {
    open_if(pid, ours).is_some_and(|fd| pidfd_send_signal(&fd, Signal::KILL).is_ok())
}

/// Waits, at most `limit`, until the process held by pidfd `fd` (from
/// [`open_if`]) has ended; whether it has. The kernel wakes the wait at
/// the exit (a pidfd turns readable then): a test can act on another
/// process's end at once, where polling would see it up to a pause late.
pub fn wait_exit(fd: OwnedFd, limit: Duration) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: the AsyncFd owns the OwnedFd for the whole of its life,
        // so the descriptor stays open and names the same pidfd.
        let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) };
        let Ok(fd) = registered else {
            return false;
        };
        matches!(tokio::time::timeout(limit, fd.readable()).await, Ok(Ok(_)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_process_whose_command_line_matches_is_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        // Until the child has exec'd, its command line is this test's.
        crate::wait::wait_until(
            "the child to become sleep",
            std::time::Duration::from_secs(10),
            || {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .ok()
                    .filter(|c| c.starts_with(b"sleep\0"))
            },
        );
        assert!(!kill_if(pid, |c| c.starts_with(b"not-sleep\0")));
        assert!(kill_if(pid, |c| c.starts_with(b"sleep\0")));
        let status = child.wait().expect("wait");
        assert!(!status.success(), "sleep was killed");
    }

    #[test]
    fn a_wait_for_a_process_s_end_returns_once_it_ended() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let held = || open_if(pid, |_| true).expect("a pidfd");
        let (first, second) = (held(), held());
        assert!(!wait_exit(first, Duration::from_millis(100)), "it runs");
        child.kill().expect("kill");
        child.wait().expect("wait");
        // Ended (and reaped) before this wait began: it returns at once.
        assert!(wait_exit(second, Duration::from_secs(10)));
    }
}
