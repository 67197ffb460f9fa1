//! What the kernel says about processes and sockets, from /proc: whether a
//! process or a process group still lives, how much CPU a process used,
//! what a TCP port's accept queue holds. The tests wait on these (with
//! deadlines) instead of sleeping.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::wait_until;

/// The state letter of a process from /proc (R, S, D, Z, ...), if it exists.
fn proc_state(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let mut it = after.split_whitespace();
    let state = it.next()?.chars().next()?;
    let _ppid = it.next()?;
    let pgrp = it.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// A process's start time (clock ticks after boot), which tells it apart
/// from a later process given the same pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the fields after the command's `)` start at field 3.
    s[s.rfind(')')? + 2..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The process exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// No live (non-zombie) process is in process group `pgid`.
pub fn group_empty(pgid: i32) -> bool {
    group_members(pgid).is_empty()
}

pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| matches!(proc_state(pid), Some((s, g)) if g == pgid && s != 'Z' && s != 'X'))
        .collect()
}

/// The zombie children of `ppid`: exited, not yet reaped by it.
pub fn zombie_children(ppid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                return false;
            };
            let Some(i) = s.rfind(')') else { return false };
            let mut it = s[i + 2..].split_whitespace();
            it.next() == Some("Z") && it.next().and_then(|x| x.parse().ok()) == Some(ppid)
        })
        .collect()
}

/// CPU time (user + system) process `pid` has used so far, from /proc.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command: state(3) ... utime(14) stime(15).
    let mut it = s[s.rfind(')')? + 2..].split_whitespace().skip(11);
    let utime: u64 = it.next()?.parse().ok()?;
    let stime: u64 = it.next()?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    Some(Duration::from_millis((utime + stime) * 1000 / hz))
}

/// Watches processes' CPU time from the moment it is made: lets a test wait
/// until a request that spins a worker's CPU is really being served, rather
/// than sleep and hope.
pub struct CpuWatch {
    base: BTreeMap<i32, Duration>,
}

impl CpuWatch {
    pub fn new(pids: impl IntoIterator<Item = i32>) -> CpuWatch {
        CpuWatch {
            base: pids
                .into_iter()
                .map(|p| (p, cpu_time(p).unwrap_or_default()))
                .collect(),
        }
    }

    /// Wait until one of the processes has used `min` more CPU time since
    /// the watch was made: that pid. Panics at the deadline.
    pub fn wait_busy(&self, min: Duration, timeout: Duration) -> i32 {
        let mut busy = None;
        let found = wait_until(timeout, || {
            busy = self
                .base
                .iter()
                .find_map(|(&p, &t0)| (cpu_time(p).unwrap_or_default() >= t0 + min).then_some(p));
            busy.is_some()
        });
        let used: BTreeMap<i32, Duration> = self
            .base
            .iter()
            .map(|(&p, &t0)| (p, cpu_time(p).unwrap_or_default().saturating_sub(t0)))
            .collect();
        assert!(
            found,
            "none of {:?} used {min:?} of CPU within {timeout:?} (used: {used:?})",
            self.base.keys()
        );
        busy.unwrap()
    }
}

/// What the kernel says about the TCP sockets with local port `port`
/// (IPv4 and IPv6), from /proc/net/tcp{,6}.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PortState {
    /// Connections in a listening socket's accept queue, not yet accepted
    /// (`None`: nothing listens).
    pub accept_queue: Option<usize>,
    /// Established connections whose local end is this port: accepted or
    /// still queued.
    pub established: usize,
}

pub fn tcp_port_state(port: u16) -> PortState {
    let mut st = PortState::default();
    for row in tcp_sockets().filter(|r| r.local_port == port) {
        match row.state.as_str() {
            // LISTEN: rx_queue is the accept queue's length.
            "0A" => *st.accept_queue.get_or_insert(0) += row.rx_queue,
            "01" => st.established += 1,
            _ => {}
        }
    }
    st
}

/// The processes among `pids` that hold an fd of the socket listening on
/// TCP port `port` (its inode from /proc/net/tcp{,6}, their fds from
/// /proc/PID/fd).
pub fn holders_of_listening_port(port: u16, pids: &[i32]) -> Vec<i32> {
    let inodes: Vec<String> = tcp_sockets()
        .filter(|r| r.local_port == port && r.state == "0A")
        .map(|r| format!("socket:[{}]", r.inode))
        .collect();
    pids.iter()
        .copied()
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
                })
            })
        })
        .collect()
}

/// One row of /proc/net/tcp or /proc/net/tcp6.
struct TcpRow {
    local_port: u16,
    /// The kernel's state in hex: `0A` LISTEN, `01` ESTABLISHED, …
    state: String,
    rx_queue: usize,
    inode: String,
}

/// Every TCP socket of the machine's network namespace, IPv4 and IPv6.
fn tcp_sockets() -> impl Iterator<Item = TcpRow> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() < 10 {
                        return None;
                    }
                    Some(TcpRow {
                        local_port: u16::from_str_radix(f[1].rsplit_once(':')?.1, 16).ok()?,
                        state: f[3].to_string(),
                        rx_queue: f[4]
                            .split_once(':')
                            .and_then(|(_, rx)| usize::from_str_radix(rx, 16).ok())
                            .unwrap_or(0),
                        inode: f[9].to_string(),
                    })
                })
                .collect::<Vec<_>>()
        })
}
