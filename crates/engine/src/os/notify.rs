//! The sd_notify socket (`NOTIFY_SOCKET`): one datagram socket per
//! supervisor; the kernel tells us which pid sent each message.
//!
//! The socket lives in the abstract namespace (no file to clean up), under a
//! name unique to this process. `SO_PASSCRED` makes the kernel attach the
//! sender's credentials to every datagram, so a worker cannot claim to be
//! another: the pid comes from the kernel, not from the message.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// Largest notification accepted, as systemd (longer ones are dropped).
const MAX_MESSAGE: usize = 4096;

/// Distinguishes several sockets in one process (tests, mostly).
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A bound notify socket, nonblocking, with SO_PASSCRED.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    sock: UnixDatagram,
    /// `@herd/<pid>/<n>`: the abstract name, with '@' standing for the NUL.
    env_value: String,
}

impl AsRawFd for NotifySocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NotifySocket {
    /// Bind a fresh socket in the abstract namespace.
    ///
    /// Must be called inside a tokio runtime (the socket is registered with
    /// its reactor).
    pub(crate) fn bind() -> io::Result<NotifySocket> {
        let ctx = |e: Errno, what: &str| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot create the notify socket: {what}: {e}"),
            )
        };
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| ctx(e, "socket"))?;
        socket::setsockopt(&fd, sockopt::PassCred, &true).map_err(|e| ctx(e, "SO_PASSCRED"))?;

        // Abstract names are per network namespace, not per pid namespace:
        // another herd (in another container) may have our pid. Try on.
        let pid = std::process::id();
        let mut attempts = 0;
        let env_value = loop {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let name = format!("herd/{pid}/{id}");
            let addr = UnixAddr::new_abstract(name.as_bytes()).map_err(|e| ctx(e, "address"))?;
            match socket::bind(fd.as_raw_fd(), &addr) {
                Ok(()) => break format!("@{name}"),
                Err(Errno::EADDRINUSE) if attempts < 1000 => attempts += 1,
                Err(e) => return Err(ctx(e, &format!("bind @{name}"))),
            }
        };
        let sock = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd))?;
        Ok(NotifySocket { sock, env_value })
    }

    /// Take over a socket bound before (by this process's previous image,
    /// across an in-place upgrade), named `env_value`. Must be called
    /// inside a tokio runtime.
    pub(crate) fn from_fd(fd: OwnedFd, env_value: String) -> io::Result<NotifySocket> {
        let sock = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd))?;
        Ok(NotifySocket { sock, env_value })
    }

    /// Give the socket back as a plain fd (for an in-place upgrade).
    pub(crate) fn into_fd(self) -> io::Result<OwnedFd> {
        Ok(self.sock.into_std()?.into())
    }

    /// The value to put in a worker's `NOTIFY_SOCKET` (e.g. `@herd/1234/0`).
    pub(crate) fn env_value(&self) -> &str {
        &self.env_value
    }

    /// Wait for the next datagram: the sender's pid and its text (e.g. "READY=1\nSTATUS=x").
    ///
    /// The pid is the kernel's word for who sent it (0 if the sender is in a
    /// pid namespace we cannot see). Text is decoded lossily as UTF-8.
    /// Datagrams longer than 4096 bytes are dropped, as systemd does; fds
    /// sent along (`FDSTORE=1`) are closed. Cancel-safe: a datagram is only
    /// taken off the socket in the same poll that returns it.
    pub(crate) async fn recv(&self) -> io::Result<(Pid, String)> {
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        loop {
            self.sock.readable().await?;
            let fd = self.sock.as_fd();
            match self
                .sock
                .try_io(Interest::READABLE, || recv_datagram(fd, &mut buf))
            {
                Ok(Some(msg)) => return Ok(msg),
                // Dropped (too long, no credentials): wait for the next one.
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// One `recvmsg`. `Ok(None)`: a datagram was consumed but is not usable.
fn recv_datagram(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(Pid, String)>> {
    let mut cmsg = nix::cmsg_space!(libc::ucred, [std::os::fd::RawFd; 16]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut pid = None;
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::ScmCredentials(cred) => pid = Some(Pid::from_raw(cred.pid())),
            ControlMessageOwned::ScmRights(fds) => {
                for raw in fds {
                    // SAFETY: the kernel just gave us these fds; nobody else owns them.
                    drop(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
            _ => {}
        }
    }
    let len = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC) || len > MAX_MESSAGE;
    match pid {
        Some(pid) if !truncated => Ok(Some((
            pid,
            String::from_utf8_lossy(&buf[..len]).into_owned(),
        ))),
        _ => Ok(None),
    }
}

/// Tell our own service manager something (`READY=1`, `STOPPING=1` …) on
/// `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), as
/// `sd_notify` does; without the variable this does nothing.
pub fn sd_notify(state: &str) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    fn client_addr(env_value: &str) -> SocketAddr {
        let name = env_value.strip_prefix('@').expect("abstract");
        SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn receives_text_and_sender_pid() {
        let sock = NotifySocket::bind().unwrap();
        let value = sock.env_value().to_string();
        assert!(
            value.starts_with(&format!("@herd/{}/", std::process::id())),
            "{value}"
        );
        let client = UnixDatagram::unbound().unwrap();
        client
            .send_to_addr(b"READY=1\nSTATUS=up", &client_addr(&value))
            .unwrap();
        let (pid, text) = sock.recv().await.unwrap();
        assert_eq!(pid.as_raw() as u32, std::process::id());
        assert_eq!(text, "READY=1\nSTATUS=up");
    }

    #[tokio::test]
    async fn names_are_unique_and_oversized_messages_are_dropped() {
        let a = NotifySocket::bind().unwrap();
        let b = NotifySocket::bind().unwrap();
        assert_ne!(a.env_value(), b.env_value());

        let client = UnixDatagram::unbound().unwrap();
        let addr = client_addr(a.env_value());
        client.send_to_addr(&vec![b'x'; 10_000], &addr).unwrap();
        client
            .send_to_addr("WATCHDOG=1 \u{fffd}".as_bytes(), &addr)
            .unwrap();
        let (_, text) = a.recv().await.unwrap();
        assert_eq!(text, "WATCHDOG=1 \u{fffd}");
    }

    #[tokio::test]
    async fn recv_waits_for_a_message() {
        let sock = NotifySocket::bind().unwrap();
        let addr = client_addr(sock.env_value());
        let sender = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let client = UnixDatagram::unbound().unwrap();
            client.send_to_addr(b"STOPPING=1", &addr).unwrap();
        });
        let (_, text) = sock.recv().await.unwrap();
        assert_eq!(text, "STOPPING=1");
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn fds_sent_along_are_closed() {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let sock = NotifySocket::bind().unwrap();
        let addr = UnixAddr::new_abstract(&sock.env_value().as_bytes()[1..]).unwrap();
        let client = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let fds = [w.as_raw_fd()];
        let iov = [std::io::IoSlice::new(b"FDSTORE=1")];
        sendmsg(
            client.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&addr),
        )
        .unwrap();
        drop(w);
        let (_, text) = sock.recv().await.unwrap();
        assert_eq!(text, "FDSTORE=1");
        // The received copy of the write end was closed: the pipe reads EOF.
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(&r, &mut b).unwrap(), 0);
    }
}
