//! What a worker listens on by itself, and whether a new worker could
//! listen there beside it — read from the kernel, never guessed:
//! - the listening sockets a process group holds that this process does
//!   not hold too ([`own_listeners`]): each member's fds (`/proc/PID/fd`,
//!   `socket:[INODE]`) matched against the kernel's tables of listening
//!   sockets (`/proc/self/net/tcp`, `tcp6`, `unix`);
//! - whether a socket of this user can bind beside one of them
//!   ([`can_listen_beside`]): a probe with `SO_REUSEADDR` and
//!   `SO_REUSEPORT` that binds and closes, never listens, so no client
//!   connection can reach it. The kernel accepts it exactly when every
//!   socket bound there has `SO_REUSEPORT` and the same owner — which is
//!   what a new worker's own bind will meet;
//! - `net.ipv4.tcp_migrate_req` ([`tcp_migrate_req`]).
//!
//! Nothing here knows about workers or reloads.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::unistd::Pid;
use socket2::{Domain, SockAddr, Socket, Type};

/// Where a listening socket is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Tcp(SocketAddr),
    /// A Unix stream socket: its path (`@name` for an abstract one; empty
    /// when unnamed).
    Unix(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

/// A listening socket held by a member of a process group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnListener {
    /// The member that holds it (the first one found, if several do).
    pub(crate) pid: Pid,
    pub(crate) endpoint: Endpoint,
}

/// The listening sockets held by the processes of each group in `pgids`
/// and not by this process (a socket herd handed over is herd's too, and is
/// kept across a reload). A group that is gone has none.
///
/// Errors: a member's fds cannot be read, or a member lives in another
/// network namespace (its sockets are not in this one's tables).
pub(crate) fn own_listeners(pgids: &[Pid]) -> io::Result<HashMap<Pid, Vec<OwnListener>>> {
    let members = group_members(pgids)?;
    let ours = socket_inodes(None)?;
    let our_netns = fs::read_link("/proc/self/ns/net")?;
    let listening = listening_sockets()?;
    let mut found: HashMap<Pid, Vec<OwnListener>> = HashMap::new();
    for (pgid, pids) in members {
        let mut seen = HashSet::new();
        let list = found.entry(pgid).or_default();
        for pid in pids {
            let inodes = match socket_inodes(Some(pid)) {
                Ok(i) => i,
                // It exited meanwhile: it holds nothing any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if inodes.is_empty() {
                continue;
            }
            match fs::read_link(format!("/proc/{pid}/ns/net")) {
                Ok(ns) if ns == our_netns => {}
                Ok(_) => {
                    return Err(io::Error::other(format!(
                        "process {pid} runs in another network namespace"
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            for inode in inodes {
                if ours.contains(&inode) || !seen.insert(inode) {
                    continue;
                }
                if let Some(endpoint) = listening.get(&inode) {
                    list.push(OwnListener {
                        pid,
                        endpoint: endpoint.clone(),
                    });
                }
            }
        }
    }
    Ok(found)
}

/// Could a TCP socket of this user listen on `addr` beside the sockets
/// bound there now? (See the module docs.) `Ok(false)`: the address is in
/// use by a socket without `SO_REUSEPORT` (or another user's).
pub(crate) fn can_listen_beside(addr: SocketAddr) -> io::Result<bool> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    probe.set_reuse_address(true)?;
    probe.set_reuse_port(true)?;
    match probe.bind(&SockAddr::from(addr)) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `net.ipv4.tcp_migrate_req` of this process's network namespace: when
/// set, the connections waiting in the queue of a `SO_REUSEPORT` listener
/// that closes move to another listener of its group instead of being
/// reset. `None`: the kernel has no such setting (before Linux 5.14).
pub(crate) fn tcp_migrate_req() -> io::Result<Option<bool>> {
    match fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        Ok(text) => Ok(Some(text.trim() != "0")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The members of each group, from one pass over `/proc`.
fn group_members(pgids: &[Pid]) -> io::Result<HashMap<Pid, Vec<Pid>>> {
    let mut members: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Gone since the listing: not a member any more.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(pgid) = stat_pgrp(&stat) {
            if pgids.contains(&pgid) {
                members.entry(pgid).or_default().push(Pid::from_raw(pid));
            }
        }
    }
    Ok(members)
}

/// The process group in a `/proc/PID/stat` line: the third field after the
/// command, which is in parentheses and may hold anything.
fn stat_pgrp(stat: &str) -> Option<Pid> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let pgrp = rest.split_whitespace().nth(2)?.parse().ok()?;
    Some(Pid::from_raw(pgrp))
}

/// The inodes of the sockets a process (`None`: this one) holds open.
fn socket_inodes(pid: Option<Pid>) -> io::Result<HashSet<u64>> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/fd"),
        None => "/proc/self/fd".to_string(),
    };
    let mut inodes = HashSet::new();
    for entry in fs::read_dir(dir)? {
        // An fd closed since the listing is simply not there.
        let Ok(target) = fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// Every listening TCP and Unix stream socket of this network namespace, by inode.
fn listening_sockets() -> io::Result<HashMap<u64, Endpoint>> {
    let mut all = HashMap::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        match fs::read_to_string(format!("/proc/self/net/{file}")) {
            Ok(text) => all.extend(tcp_listeners(&text, v6)),
            // No IPv6 in this kernel.
            Err(e) if v6 && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match fs::read_to_string("/proc/self/net/unix") {
        Ok(text) => all.extend(unix_listeners(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(all)
}

/// The LISTEN entries (state `0A`) of `/proc/net/tcp` or `tcp6`.
fn tcp_listeners(text: &str, v6: bool) -> impl Iterator<Item = (u64, Endpoint)> + '_ {
    text.lines().skip(1).filter_map(move |line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3) != Some(&"0A") {
            return None;
        }
        let (ip, port) = fields.get(1)?.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let ip = if v6 {
            parse_ipv6(ip)?.into()
        } else {
            parse_ipv4(ip)?.into()
        };
        let inode = fields.get(9)?.parse().ok()?;
        Some((inode, Endpoint::Tcp(SocketAddr::new(ip, port))))
    })
}

/// The kernel prints an address as 32-bit words in the host's byte order.
fn parse_ipv4(hex: &str) -> Option<Ipv4Addr> {
    let word = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(word.to_ne_bytes()))
}

fn parse_ipv6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Some(Ipv6Addr::from(bytes))
}

/// The listening stream sockets of `/proc/net/unix` (flag `__SO_ACCEPTCON`).
fn unix_listeners(text: &str) -> impl Iterator<Item = (u64, Endpoint)> + '_ {
    const ACCEPTCON: u32 = 0x0001_0000;
    text.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
        if flags & ACCEPTCON == 0 {
            return None;
        }
        let inode = fields.get(6)?.parse().ok()?;
        let path = fields.get(7).copied().unwrap_or_default();
        Some((inode, Endpoint::Unix(path.to_string())))
    })
}

/// A `sleep 30` in a process group of its own that holds `fds` open
/// under the same numbers (tests: a worker that listens by itself).
#[cfg(test)]
pub(crate) fn child_holding(fds: &[std::os::fd::RawFd]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let fds = fds.to_vec();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30").stdin(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (fcntl, setpgid) between fork
    // and exec; the fds named are open in the parent until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                // It stays open across the exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setpgid(0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn sleep")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_kernels_tables_read_as_addresses() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 4243 1\n";
        let found: Vec<_> = tcp_listeners(v4, false).collect();
        assert_eq!(
            found,
            vec![(4242, Endpoint::Tcp("127.0.0.1:8080".parse().unwrap()))]
        );
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n";
        let found: Vec<_> = tcp_listeners(v6, true).collect();
        assert_eq!(
            found,
            vec![(77, Endpoint::Tcp("[::1]:80".parse().unwrap()))]
        );
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01 555 /run/app.sock\n0000000000000000: 00000003 00000000 00000000 0001 03 556 /run/app.sock\n";
        let found: Vec<_> = unix_listeners(unix).collect();
        assert_eq!(found, vec![(555, Endpoint::Unix("/run/app.sock".into()))]);
        assert_eq!(
            stat_pgrp("12 (a) b) c) S 1 34 34 0"),
            Some(Pid::from_raw(34))
        );
    }

    #[test]
    fn a_probe_binds_beside_a_reuseport_listener_only() {
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!can_listen_beside(plain.local_addr().unwrap()).unwrap());
        let shared =
            crate::os::socket::bind_listener(&"127.0.0.1:0".parse().unwrap(), true).unwrap();
        let shared = TcpListener::from(shared);
        let addr = shared.local_addr().unwrap();
        assert!(can_listen_beside(addr).unwrap());
        // The probe never listened: the port still has one listener.
        assert!(can_listen_beside(addr).unwrap());
        drop(shared);
        let v6 = match TcpListener::bind("[::1]:0") {
            Ok(l) => l,
            Err(_) => return, // no IPv6 loopback here
        };
        assert!(!can_listen_beside(v6.local_addr().unwrap()).unwrap());
    }

    /// A child in its own group listens by itself; a socket this process
    /// also holds is not the child's own.
    #[test]
    fn a_groups_own_listeners_are_found_and_shared_ones_are_not() {
        let own = TcpListener::bind("127.0.0.1:0").unwrap();
        let own_addr = own.local_addr().unwrap();
        let shared = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut child = child_holding(&[own.as_raw_fd(), shared.as_raw_fd()]);
        // From now on only the child holds `own`.
        drop(own);
        let pid = Pid::from_raw(child.id() as i32);
        let found = own_listeners(&[pid]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            found.unwrap()[&pid],
            vec![OwnListener {
                pid,
                endpoint: Endpoint::Tcp(own_addr),
            }]
        );
        // A group with no process has none.
        assert!(!own_listeners(&[pid]).unwrap().contains_key(&pid));
    }
}
