//! Binding listening sockets once, for the whole life of the supervisor.
//!
//! The sockets are handed to every worker (at fd 3, 4, …) and kept open by
//! herd across restarts and reloads, so no connection is ever refused.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

use crate::config::ListenAddr;

/// Bind and listen on `addr`; the socket is nonblocking and close-on-exec.
///
/// TCP: SO_REUSEADDR; with `reuseport`, SO_REUSEPORT too; `[::]` is
/// dual-stack (IPv4 too, as Node and systemd bind it), any other IPv6 address
/// IPv6-only; backlog is the kernel maximum (SOMAXCONN).
/// Unix: a stale socket file (one nobody accepts on) is removed first; a path
/// that exists and is not a socket, or a live socket, is an error (AddrInUse).
///
/// Errors keep the OS error kind (AddrInUse, PermissionDenied, ...) so the
/// caller can name the cause. Errors from the kernel are passed through
/// unchanged (so `raw_os_error()` works too); their text does not name the
/// address, the caller should (`cannot listen on {addr}: {err}`).
pub(crate) fn bind_listener(addr: &ListenAddr, reuseport: bool) -> io::Result<OwnedFd> {
    let socket = match addr {
        ListenAddr::Tcp(sa) => {
            let domain = Domain::for_address(*sa);
            let socket = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None)?;
            socket.set_reuse_address(true)?;
            if reuseport {
                socket.set_reuse_port(true)?;
            }
            if sa.is_ipv6() {
                socket.set_only_v6(!sa.ip().is_unspecified())?;
            }
            socket.bind(&SockAddr::from(*sa))?;
            socket
        }
        ListenAddr::Unix(path) => {
            let sockaddr = SockAddr::unix(path)?;
            remove_stale_unix_socket(path)?;
            let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
            socket.bind(&sockaddr)?;
            socket
        }
    };
    socket.listen(max_backlog())?;
    Ok(socket.into())
}

/// Bind a UDP socket on `addr` (nonblocking, close-on-exec), as Node's
/// primary does for a `dgram` worker: an IPv6 socket is dual-stack unless
/// `ipv6_only`; `reuse_addr` sets SO_REUSEADDR.
pub(crate) fn bind_udp(
    addr: std::net::SocketAddr,
    ipv6_only: bool,
    reuse_addr: bool,
) -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        None,
    )?;
    if reuse_addr {
        socket.set_reuse_address(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(ipv6_only)?;
    }
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket.into())
}

/// The kernel caps `listen()`'s backlog at net.core.somaxconn; ask for that.
fn max_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(libc::SOMAXCONN.max(4096))
}

/// If `path` is a Unix socket that nobody accepts on, unlink it. A live
/// socket or a path that is not a socket is `AddrInUse`; a missing path is
/// fine.
fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    // Probe without blocking: a full backlog answers EAGAIN, which is live too.
    let probe = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    let in_use = || {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is in use: another process is listening on it",
                path.display()
            ),
        )
    };
    match probe.connect(&SockAddr::unix(path)?) {
        // Connected (or about to be): someone accepts on it.
        Ok(()) => Err(in_use()),
        Err(e) => match e.raw_os_error() {
            // Nobody listens: a leftover from a previous run.
            Some(libc::ECONNREFUSED) => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("cannot remove stale socket {}: {e}", path.display()),
                )),
            },
            // Gone meanwhile: bind will create it.
            Some(libc::ENOENT) => Ok(()),
            // Backlog full, connection in progress, or a live socket of
            // another type.
            Some(libc::EAGAIN | libc::EINPROGRESS | libc::EPROTOTYPE) => Err(in_use()),
            _ => Err(io::Error::new(
                e.kind(),
                format!("cannot check whether {} is in use: {e}", path.display()),
            )),
        },
    }
}

/// Accept one client connection on a listening socket (TCP or Unix): it
/// arrives nonblocking and close-on-exec.
pub(crate) fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    use nix::sys::socket::SockFlag;
    let raw = nix::sys::socket::accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: accept4 returned a new fd that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// The address a listening socket is bound to (to report port 0 bindings).
pub fn local_addr(fd: &OwnedFd) -> io::Result<ListenAddr> {
    let addr = SockRef::from(fd).local_addr()?;
    if let Some(sa) = addr.as_socket() {
        return Ok(ListenAddr::Tcp(sa));
    }
    if let Some(path) = addr.as_pathname() {
        return Ok(ListenAddr::Unix(path.to_path_buf()));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "fd {} is not bound to a TCP address or a Unix socket path",
            fd.as_raw_fd()
        ),
    ))
}

/// Stop a listening socket for good, in every process that holds it (the
/// daemon keeps a copy of each shared one): clients are refused from now
/// on, and the address can be bound again. For a socket herd closes on
/// purpose; one that a dying process leaves stays open in the copies.
pub(crate) fn shut_down(fd: &OwnedFd) {
    // A socket that is not connected or listening any more says ENOTCONN:
    // nothing to stop.
    let _ = SockRef::from(fd).shutdown(std::net::Shutdown::Both);
}

/// Is this a stream socket that listens (not one shut down since)?
pub fn is_listening(fd: &OwnedFd) -> bool {
    let sock = SockRef::from(fd);
    sock.r#type().is_ok_and(|t| t == Type::STREAM) && sock.is_listener().unwrap_or(false)
}

/// A copy of another process's listening socket `fd` (`pidfd_getfd`, Linux
/// 5.6; the caller must be allowed to ptrace `pid`: the same user without a
/// Yama restriction, or root), with where it is bound. Refused unless it is
/// a listening stream socket.
pub fn copy_listening(pid: u32, fd: i32) -> io::Result<(ListenAddr, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "no such pid"))?;
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes three integers and returns a new fd (with
    // FD_CLOEXEC set) or -1.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let copy = unsafe { OwnedFd::from_raw_fd(copy as i32) };
    if !is_listening(&copy) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} of process {pid} is not a listening stream socket"),
        ));
    }
    Ok((local_addr(&copy)?, copy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::net::SocketAddr;
    use std::path::PathBuf;

    fn tcp(s: &str) -> ListenAddr {
        ListenAddr::Tcp(s.parse::<SocketAddr>().unwrap())
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herd-sock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn assert_nonblocking_cloexec(fd: &OwnedFd) {
        let fl = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).unwrap());
        assert!(fl.contains(OFlag::O_NONBLOCK));
        assert!(fcntl(fd, FcntlArg::F_GETFD).unwrap() & libc::FD_CLOEXEC != 0);
    }

    #[test]
    fn tcp_port_zero_reports_the_port_and_accepts() {
        let fd = bind_listener(&tcp("127.0.0.1:0"), false).unwrap();
        assert_nonblocking_cloexec(&fd);
        let ListenAddr::Tcp(addr) = local_addr(&fd).unwrap() else {
            panic!("not tcp")
        };
        assert_ne!(addr.port(), 0);
        let sock = SockRef::from(&fd);
        assert!(sock.reuse_address().unwrap());
        assert!(!sock.reuse_port().unwrap());
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let listener = std::net::TcpListener::from(fd);
        listener.set_nonblocking(false).unwrap();
        listener.accept().unwrap();
    }

    #[test]
    fn tcp_port_taken_is_addr_in_use_unless_reuseport() {
        let first = bind_listener(&tcp("127.0.0.1:0"), false).unwrap();
        let addr = local_addr(&first).unwrap();
        let err = bind_listener(&addr, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));

        let a = bind_listener(&tcp("127.0.0.1:0"), true).unwrap();
        assert!(SockRef::from(&a).reuse_port().unwrap());
        let addr = local_addr(&a).unwrap();
        let _b = bind_listener(&addr, true).unwrap();
    }

    #[test]
    fn udp_binds_a_datagram_socket() {
        let fd = bind_udp("127.0.0.1:0".parse().unwrap(), false, false).unwrap();
        assert_nonblocking_cloexec(&fd);
        assert_eq!(SockRef::from(&fd).r#type().unwrap(), Type::DGRAM);
        let ListenAddr::Tcp(addr) = local_addr(&fd).unwrap() else {
            panic!("not an inet address")
        };
        assert_ne!(addr.port(), 0);
        let server = std::net::UdpSocket::from(fd);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"ping", addr).unwrap();
        server.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 8];
        let (n, _) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
    }

    #[test]
    fn ipv6_is_v6_only() {
        match bind_listener(&tcp("[::1]:0"), false) {
            Ok(fd) => {
                assert!(SockRef::from(&fd).only_v6().unwrap());
                assert!(matches!(
                    local_addr(&fd).unwrap(),
                    ListenAddr::Tcp(SocketAddr::V6(_))
                ));
            }
            // No IPv6 in this sandbox.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn unix_socket_stale_live_and_not_a_socket() {
        let dir = temp_dir("unix");
        let path = dir.join("app.sock");
        let addr = ListenAddr::Unix(path.clone());

        let live = bind_listener(&addr, false).unwrap();
        assert_nonblocking_cloexec(&live);
        assert_eq!(local_addr(&live).unwrap(), addr);
        let err = bind_listener(&addr, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("in use"), "{err}");
        assert!(path.exists(), "a live socket is never removed");

        // Closing leaves the file behind: stale, so it is replaced.
        drop(live);
        assert!(path.exists());
        let again = bind_listener(&addr, false).unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(again);

        let file = dir.join("regular");
        std::fs::write(&file, "data").unwrap();
        let err = bind_listener(&ListenAddr::Unix(file.clone()), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");

        let err =
            bind_listener(&ListenAddr::Unix(dir.join("no/such/dir.sock")), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unix_socket_with_full_backlog_is_live() {
        let dir = temp_dir("backlog");
        let path = dir.join("busy.sock");
        let sock = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        sock.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        sock.listen(0).unwrap();
        // Fill the backlog with nonblocking connects until one would block.
        let mut clients = Vec::new();
        for _ in 0..8 {
            let c = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None).unwrap();
            let full = c.connect(&SockAddr::unix(&path).unwrap()).is_err();
            clients.push(c);
            if full {
                break;
            }
        }
        let err = bind_listener(&ListenAddr::Unix(path.clone()), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(sock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
