//! Process CPU time and memory from `/proc` (Linux), and a description of the machine.

use std::time::Duration;

use anyhow::Context;

/// Kernel clock ticks per second for `/proc/*/stat` (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: u64 = 100;

/// CPU time used so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// The whole process (every thread, alive or exited).
    pub process: Duration,
    /// Threads whose name starts with the server prefix (in-process mode).
    pub server: Duration,
}

impl CpuSample {
    /// CPU used between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuSample) -> CpuSample {
        CpuSample {
            process: self.process.saturating_sub(earlier.process),
            server: self.server.saturating_sub(earlier.server),
        }
    }
}

/// utime + stime of a `/proc/.../stat` line.
fn stat_cpu(stat: &str) -> anyhow::Result<(String, Duration)> {
    let open = stat.find('(').context("no `(` in stat")?;
    let close = stat.rfind(')').context("no `)` in stat")?;
    let comm = stat.get(open + 1..close).unwrap_or_default().to_owned();
    // Fields after the command name start at field 3 (state); utime is 14, stime 15.
    let fields: Vec<&str> = stat
        .get(close + 1..)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .context("stat line too short")?
            .parse::<u64>()
            .context("stat field is not a number")
    };
    let ticks = field(14)? + field(15)?;
    Ok((comm, Duration::from_millis(ticks * 1000 / USER_HZ)))
}

/// CPU time of another process (e.g. a server under test on this machine).
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(stat_cpu(&stat)?.1)
}

/// CPU time of the process and of its threads named `server_prefix*`.
pub fn cpu(server_prefix: &str) -> anyhow::Result<CpuSample> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let (_, process) = stat_cpu(&stat)?;
    let mut server = Duration::ZERO;
    if !server_prefix.is_empty() {
        for entry in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
            let Ok(entry) = entry else { continue };
            // A thread may exit between listing and reading: skip it.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let (comm, used) = stat_cpu(&stat)?;
            if comm.starts_with(server_prefix) {
                server += used;
            }
        }
    }
    Ok(CpuSample { process, server })
}

/// Machine-wide CPU time from `/proc/stat`: (busy, total) across every CPU.
pub fn machine_cpu() -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no `cpu` line in /proc/stat")?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let d = |t: u64| Duration::from_millis(t * 1000 / USER_HZ);
    Ok((d(total.saturating_sub(idle)), d(total)))
}

/// Resident memory: current (`VmRSS`) and peak (`VmHWM`), in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Current resident set.
    pub rss_kib: u64,
    /// Peak resident set.
    pub hwm_kib: u64,
}

/// Reads `/proc/self/status`.
pub fn memory() -> anyhow::Result<Memory> {
    memory_at("/proc/self/status")
}

/// Reads `/proc/{pid}/status`.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    memory_at(&format!("/proc/{pid}/status"))
}

fn memory_at(path: &str) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_default()
    };
    Ok(Memory {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// A machine-speed probe: microseconds per HMAC-SHA256 of a 1 KiB body (the signature the
/// API channel verifies), on one thread, in on-CPU time. On shared or virtual machines it
/// still moves with the neighbours (shared cores and caches); compare it between runs before
/// comparing their throughput.
pub fn calibrate() -> f64 {
    const ROUNDS: u32 = 50_000;
    let body = vec![b'x'; 1024];
    // On-CPU time of this thread (ns, from the scheduler), so that time-slicing with other
    // processes does not count; wall time when unavailable.
    let on_cpu = || -> Option<u64> {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let cpu_before = on_cpu();
    let started = std::time::Instant::now();
    let mut sink = 0usize;
    for ts in 0..ROUNDS {
        sink = sink.wrapping_add(
            switchyard_connectors::signature::switchyard_signature(
                b"calibration-secret",
                i64::from(ts),
                &body,
            )
            .len(),
        );
    }
    std::hint::black_box(sink);
    let elapsed_ns = match (cpu_before, on_cpu()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64,
        _ => started.elapsed().as_nanos() as f64,
    };
    elapsed_ns / 1e3 / f64::from(ROUNDS)
}

/// Logical CPUs available to this process.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
}

/// The CPU model from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_comm() {
        let line = "42 (sy server) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0";
        let (comm, used) = stat_cpu(line).expect("parses");
        assert_eq!(comm, "sy server");
        assert_eq!(used, Duration::from_secs(3));
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu("").is_ok());
        let (busy, total) = machine_cpu().expect("/proc/stat");
        assert!(busy <= total);
        assert!(memory().expect("status").rss_kib > 0);
        let me = std::process::id();
        assert!(process_cpu(me).is_ok());
        assert!(memory_of(me).expect("status").hwm_kib > 0);
    }
}
