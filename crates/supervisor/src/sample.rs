//! CPU and memory of worker processes, read from `/proc` by the app's actor
//! on its own clock (about once a second), never per request — except once
//! for a worker that a status request finds unsampled (just started), so its
//! memory shows at once. The memory limit holds whoever asks.

use std::collections::HashMap;
use std::time::Instant;

/// One process's figures at the last sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Share of one core over the last interval (100.0 = one full core).
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

/// Remembers each pid's CPU time at the previous sample to compute a rate.
#[derive(Debug)]
pub struct Sampler {
    ticks_per_sec: f64,
    page_size: u64,
    last: HashMap<u32, (u64, Instant, Usage)>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

impl Sampler {
    pub fn new() -> Sampler {
        use nix::unistd::{sysconf, SysconfVar};
        let value = |var| sysconf(var).ok().flatten().filter(|&v| v > 0);
        Sampler {
            ticks_per_sec: value(SysconfVar::CLK_TCK).map_or(100.0, |t| t as f64),
            page_size: value(SysconfVar::PAGE_SIZE).map_or(4096, |p| p as u64),
            last: HashMap::new(),
        }
    }

    /// Take a new sample of `pid`; `None` if it is gone.
    pub fn sample(&mut self, pid: u32, now: Instant) -> Option<Usage> {
        let ticks = cpu_ticks(pid)?;
        let rss_bytes = rss_pages(pid)? * self.page_size;
        let cpu_percent = match self.last.get(&pid) {
            Some((before, at, _)) => {
                let secs = now.saturating_duration_since(*at).as_secs_f64();
                if secs > 0.0 {
                    (ticks.saturating_sub(*before) as f64 / self.ticks_per_sec) / secs * 100.0
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        let usage = Usage {
            cpu_percent,
            rss_bytes,
        };
        self.last.insert(pid, (ticks, now, usage));
        Some(usage)
    }

    /// Whether `pid` was sampled already.
    pub fn has(&self, pid: u32) -> bool {
        self.last.contains_key(&pid)
    }

    /// The figures of the last sample.
    pub fn last(&self, pid: u32) -> Usage {
        self.last.get(&pid).map(|(_, _, u)| *u).unwrap_or_default()
    }

    /// The CPU time (user + system) `pid` used up to its last sample, in seconds.
    pub fn cpu_seconds(&self, pid: u32) -> f64 {
        self.last
            .get(&pid)
            .map(|(ticks, _, _)| *ticks as f64 / self.ticks_per_sec)
            .unwrap_or(0.0)
    }

    /// Forget pids not in `live`.
    pub fn retain(&mut self, live: &[u32]) {
        self.last.retain(|pid, _| live.contains(pid));
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields we want follow its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident pages of a process.
fn rss_pages(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    statm.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let mut s = Sampler::new();
        let pid = std::process::id();
        let first = s.sample(pid, Instant::now()).unwrap();
        assert!(first.rss_bytes > 1 << 20, "{first:?}");
        // Burn some CPU, then the rate is above zero.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let second = s.sample(pid, Instant::now()).unwrap();
        assert!(second.cpu_percent > 10.0, "{second:?}");
        assert!(s.sample(u32::MAX - 1, Instant::now()).is_none());
    }
}
