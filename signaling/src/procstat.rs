//! CPU time and resident memory of a process, from Linux `/proc`.
//! Used for the server's own `/metrics` and by the load tester to measure
//! the server (`--server-pid`) and itself.

/// Kernel clock ticks per second in /proc/*/stat. USER_HZ is 100 on every
/// Linux architecture we run on (it is a fixed ABI value, not CONFIG_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    /// User + system CPU time, in ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

impl ProcStat {
    pub fn read(pid: u32) -> Option<ProcStat> {
        Self::read_path(&format!("/proc/{pid}"))
    }

    pub fn read_self() -> ProcStat {
        Self::read_path("/proc/self").unwrap_or_default()
    }

    fn read_path(dir: &str) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        // The command name may contain spaces and parentheses: fields
        // start after the last ')'. utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Some(ProcStat {
            cpu_ticks: utime + stime,
            rss_bytes: rss_kb * 1024,
        })
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_ticks as f64 / TICKS_PER_SECOND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let a = ProcStat::read_self();
        assert!(a.rss_bytes > 0);
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let b = ProcStat::read(std::process::id()).unwrap();
        assert!(
            b.cpu_seconds() >= a.cpu_seconds() + 0.1,
            "{a:?} -> {b:?} ({x})"
        );
        assert!(ProcStat::read(u32::MAX).is_none());
    }
}
