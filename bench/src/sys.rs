//! What the scenarios read from /proc: a process's CPU seconds (utime + stime) and its RSS.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock microseconds: the timestamp a publisher embeds and a receiver subtracts (all
/// processes run on one machine, so they share the clock).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of process `pid` (every thread), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of proc(5), counted from `state` (field 3) as index 0.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// This process's CPU seconds.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds of `pid` between two readings, when both were possible.
pub fn cpu_delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    match (before, after) {
        (Some(a), Some(b)) => Some(crate::round3(b - a)),
        _ => None,
    }
}

/// (busy, total) clock ticks of each core, from /proc/stat.
pub fn core_times() -> Vec<(u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal …
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            let total: u64 = v.iter().take(8).sum();
            (total - idle, total)
        })
        .collect()
}

/// Each core's busy share between two readings of [`core_times`].
pub fn core_busy(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(&(b0, t0), &(b1, t1))| {
            let total = t1.saturating_sub(t0);
            if total == 0 {
                0.0
            } else {
                crate::round3(b1.saturating_sub(b0) as f64 / total as f64)
            }
        })
        .collect()
}

/// CPU seconds of every process whose title (the first argument of its command line) contains
/// `pattern`, by pid. A PostgreSQL backend's title names its database (`postgres: 15/main:
/// postgres switchyard_bench 127.0.0.1(40312) idle`), so the database name picks the backends
/// serving one database. Only the first argument: the pattern itself is an argument of the
/// generator and of `timeout`/`taskset` above it.
pub fn cpu_of_matching(pattern: &str) -> std::collections::HashMap<u32, f64> {
    let mut found = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        // Arguments are NUL-separated; a process that vanished meanwhile reads as empty.
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let title = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        if String::from_utf8_lossy(title).contains(pattern) {
            if let Some(cpu) = cpu_seconds(pid) {
                found.insert(pid, cpu);
            }
        }
    }
    found
}

/// CPU seconds the processes of two [`cpu_of_matching`] readings spent between them: a process
/// that started meanwhile counts whole; one that ended meanwhile is lost (its last seconds).
pub fn cpu_delta_of(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    let spent: f64 = after
        .iter()
        .map(|(pid, b)| (b - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum();
    crate::round3(spent)
}

/// The kernel's count of connections dropped because a listening socket's accept queue was full
/// (`TcpExt: ListenOverflows` in /proc/net/netstat, the whole machine). A dropped SYN is sent
/// again by the client after a second, so a few of them show as one-second set-up times.
pub fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}
