//! What the tool reads from Linux about a process: CPU time and resident memory, from `/proc`,
//! and the open-files limit it raises so tens of thousands of sockets fit.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Clock ticks per second, the unit of `utime`/`stime` in `/proc/PID/stat`.
///
/// Asked of `getconf` once instead of `sysconf(3)`, which would need `unsafe` (forbidden in the
/// workspace); Linux fixes it at 100 everywhere we run, which is the fallback.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// CPU time (user + system, all threads, including threads that have exited) spent so far by
/// process `pid`. Resolution is one clock tick (10 ms): scenarios run long enough that this
/// is well under a percent of what they measure.
pub fn cpu(pid: u32) -> Result<Duration> {
    cpu_of(&Path::new("/proc").join(pid.to_string()).join("stat"))
}

/// CPU time spent so far by this tool.
pub fn own_cpu() -> Result<Duration> {
    cpu_of(Path::new("/proc/self/stat"))
}

fn cpu_of(path: &Path) -> Result<Duration> {
    let stat =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
        bail!("malformed /proc stat: {stat}");
    };
    let ticks: u64 = utime.parse::<u64>()? + stime.parse::<u64>()?;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / clock_ticks()))
}

/// Resident memory of process `pid`, in bytes (`VmRSS`).
pub fn rss(pid: u32) -> Result<u64> {
    let path = Path::new("/proc").join(pid.to_string()).join("status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib: u64 = line.split_whitespace().nth(1).context("malformed VmRSS")?.parse()?;
    Ok(kib * 1024)
}

/// Raises this process's open-files limit as far as it goes (both limits when running as root,
/// up to the kernel's `fs.nr_open`), so children started afterwards inherit it too. Returns the
/// soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, ceiling, ceiling).is_ok() {
        return ceiling;
    }
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// Processor time per event, in microseconds, or NaN when there were no events.
pub fn micros_per(cpu: Duration, events: u64) -> f64 {
    if events == 0 { f64::NAN } else { cpu.as_secs_f64() * 1e6 / events as f64 }
}
