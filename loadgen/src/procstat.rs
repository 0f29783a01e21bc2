//! CPU time and resident memory of the server processes under test, read
//! from /proc, so a bench can report CPU seconds per million frames and
//! bytes per connection without a separate profiler.

use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// utime + stime, in seconds.
    pub cpu_seconds: f64,
    pub rss_kib: u64,
}

/// Reads /proc/PID/stat and /proc/PID/status; `None` if the process is gone
/// (or this is not Linux).
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Sample {
        cpu_seconds: cpu_ticks(&stat)? as f64 / clock_ticks(),
        rss_kib: vm_rss_kib(&status)?,
    })
}

/// utime + stime in clock ticks. The command name (field 2) is in
/// parentheses and may itself hold spaces or parentheses, so split after the
/// last ')': utime and stime are then the 12th and 13th fields.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the C library.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// CPU seconds of this process and of its waited-for children (the worker
/// processes): on a small machine the loadgen competes with the server, and
/// a result is only about the server if the loadgen had CPU to spare.
pub fn own_cpu_seconds() -> f64 {
    let used = |who| {
        // SAFETY: getrusage fills the struct we pass and nothing else.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut ru) } != 0 {
            return 0.0;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(ru.ru_utime) + secs(ru.ru_stime)
    };
    let total = used(libc::RUSAGE_SELF) + used(libc::RUSAGE_CHILDREN);
    (total * 1000.0).round() / 1000.0
}

/// The readings of one process at the run's milestones.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub pid: u32,
    /// Before the first connection.
    pub before: Option<Sample>,
    /// When the measured window opens.
    pub window_start: Option<Sample>,
    /// When the window closes: every connection open, steady state.
    pub loaded: Option<Sample>,
    /// After the drain, before anything closes.
    pub after: Option<Sample>,
    /// Our connections open when `loaded` was taken.
    pub open_at_loaded: u64,
}

/// What the result file says about a process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// CPU seconds from before the ramp to after the drain.
    pub cpu_seconds: Option<f64>,
    /// CPU seconds of the measured window plus the drain.
    pub cpu_seconds_window: Option<f64>,
    pub rss_before_kib: Option<u64>,
    /// RSS at the end of the window.
    pub rss_loaded_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// rss_loaded minus rss_before.
    pub rss_delta_kib: Option<i64>,
    /// Our connections open when rss_loaded was read.
    pub open_connections: u64,
    /// cpu_seconds_window per million frames received by the loadgen.
    pub cpu_seconds_per_million_frames: Option<f64>,
    /// rss_delta over open_connections.
    pub rss_bytes_per_connection: Option<f64>,
}

impl Watch {
    pub fn report(&self, frames: u64) -> ProcessReport {
        let cpu = |a: Option<Sample>, b: Option<Sample>| {
            Some(((b?.cpu_seconds - a?.cpu_seconds) * 1000.0).round() / 1000.0)
        };
        let window = cpu(self.window_start, self.after);
        let delta = match (self.before, self.loaded) {
            (Some(a), Some(b)) => Some(b.rss_kib as i64 - a.rss_kib as i64),
            _ => None,
        };
        ProcessReport {
            pid: self.pid,
            cpu_seconds: cpu(self.before, self.after),
            cpu_seconds_window: window,
            rss_before_kib: self.before.map(|s| s.rss_kib),
            rss_loaded_kib: self.loaded.map(|s| s.rss_kib),
            rss_after_kib: self.after.map(|s| s.rss_kib),
            rss_delta_kib: delta,
            open_connections: self.open_at_loaded,
            cpu_seconds_per_million_frames: window
                .filter(|_| frames > 0)
                .map(|w| (w * 1e6 / frames as f64 * 1000.0).round() / 1000.0),
            rss_bytes_per_connection: delta
                .filter(|_| self.open_at_loaded > 0)
                .map(|d| (d as f64 * 1024.0 / self.open_at_loaded as f64).round()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 4 0 100 1000 200";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(vm_rss_kib("Name:\tx\nVmRSS:\t  10240 kB\n"), Some(10240));
    }

    #[test]
    fn reads_itself() {
        let s = sample(std::process::id());
        assert!(s.is_some_and(|s| s.rss_kib > 0));
    }
}
