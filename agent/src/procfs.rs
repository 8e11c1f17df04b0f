//! What the kernel says of a process in `/proc`: its CPU time, resident
//! memory and start time (for `/metrics` and `inspect --json`).

use std::path::Path;

/// The fields of `/proc/PID/stat` that labspan reads, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// User + system time.
    pub cpu_ticks: u64,
    /// Start time, after boot.
    pub start_ticks: u64,
}

/// Parses `/proc/PID/stat`: utime, stime and starttime are fields 14, 15
/// and 22, counted after the command, which may hold spaces and parentheses.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // `after_comm` starts at field 3 (state).
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
    })
}

/// Resident pages: the second field of `/proc/PID/statm`.
pub fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// Boot time (Unix seconds): the `btime` line of `/proc/stat`.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

fn read(proc: &Path, pid: u32, file: &str) -> Option<String> {
    std::fs::read_to_string(proc.join(pid.to_string()).join(file)).ok()
}

/// CPU seconds (user + system) of `pid`; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = parse_stat(&read(Path::new("/proc"), pid, "stat")?)?;
    Some(stat.cpu_ticks as f64 / ticks_per_second() as f64)
}

/// Resident memory of `pid` in bytes; `None` once it is gone.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let pages = parse_statm_resident(&read(Path::new("/proc"), pid, "statm")?)?;
    Some(pages * rustix::param::page_size() as u64)
}

/// When `pid` started (Unix seconds); `None` once it is gone.
pub fn started_at(pid: u32) -> Option<u64> {
    let stat = parse_stat(&read(Path::new("/proc"), pid, "stat")?)?;
    let boot = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    Some(boot + stat.start_ticks / ticks_per_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command() {
        // A command with a space and a parenthesis, as QEMU's `-name` may give.
        let stat =
            "4242 (qemu (r1) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 1 1";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                cpu_ticks: 300,
                start_ticks: 1000
            })
        );
        assert_eq!(parse_stat("4242 (qemu) S 1"), None);
        assert_eq!(
            parse_statm_resident("100000 2048 500 1 0 5000 0"),
            Some(2048)
        );
        assert_eq!(
            parse_boot_time("cpu 1 2\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_started_before_now_and_has_memory() {
        let me = std::process::id();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let started = started_at(me).expect("start time");
        assert!(
            started <= now && started > now - 86_400 * 365,
            "{started} vs {now}"
        );
        assert!(resident_bytes(me).expect("rss") > 0);
        assert!(cpu_seconds(me).is_some());
    }
}
