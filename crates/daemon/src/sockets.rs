//! The daemon's copies of the apps' shared listening sockets (a socket
//! store, as systemd's `FDSTORE=1`). Each app supervisor owns its app's
//! sockets; the daemon keeps a copy of each (`pidfd_getfd`), so that when a
//! supervisor dies the sockets stay open — clients queue instead of being
//! refused — and the next supervisor is given them (`HERD_HELD_SOCKETS`)
//! and takes them instead of binding again. The copies never accept: the
//! daemon stays out of the data path.
//!
//! A socket the app closes on purpose (a stop, a delete, a listener no
//! worker uses) is shut down by its supervisor, which stops the copy too;
//! the store drops such dead copies, and those the supervisor no longer
//! lists, at its next [`Store::sync`].

use std::os::fd::{AsRawFd, OwnedFd};

use herd_engine::config::ListenAddr;
use herd_protocol::supervisor::Socket;

/// The copies of one app's sockets.
#[derive(Debug, Default)]
pub struct Store {
    sockets: Vec<(ListenAddr, OwnedFd)>,
    /// Copying failed once already (said once, not at every sync).
    failed: bool,
}

impl Store {
    /// Bring the copies in line with what supervisor `pid` lists: drop the
    /// dead ones and those it no longer has, copy those not held yet. What
    /// to say, the first time a copy cannot be taken.
    pub fn sync(&mut self, pid: u32, listed: &[Socket]) -> Option<String> {
        self.sync_with(pid, listed, herd_engine::copy_listening)
    }

    /// [`Store::sync`], copying with `copy` (tests stand in for the kernel).
    fn sync_with(
        &mut self,
        pid: u32,
        listed: &[Socket],
        copy: impl Fn(u32, i32) -> std::io::Result<(ListenAddr, OwnedFd)>,
    ) -> Option<String> {
        self.sockets.retain(|(addr, fd)| {
            herd_engine::is_listening(fd) && listed.iter().any(|s| &s.addr == addr)
        });
        let mut failure = None;
        for socket in listed {
            if self.sockets.iter().any(|(addr, _)| addr == &socket.addr) {
                continue;
            }
            match copy(pid, socket.fd) {
                Ok((addr, fd)) if addr == socket.addr => self.sockets.push((addr, fd)),
                // Its listeners changed since it answered: the next sync.
                Ok(_) => {}
                Err(e) if changed_since_listed(&e) => {}
                Err(e) => failure = Some(format!("{}: {e}", socket.addr)),
            }
        }
        match failure {
            Some(why) if !self.failed => {
                self.failed = true;
                Some(format!(
                    "cannot keep a copy of its listening socket {why} (herd needs to be root, or \
                     the same user without a Yama ptrace restriction): if its supervisor dies, \
                     clients are refused until the next one serves"
                ))
            }
            _ => None,
        }
    }

    /// Close every copy (the app is gone).
    pub fn clear(&mut self) {
        self.sockets.clear();
    }

    /// For a new supervisor: a duplicate of each copy (the caller keeps
    /// them open until the supervisor has inherited them, whatever the
    /// store does meanwhile) and the value of `HERD_HELD_SOCKETS` that
    /// names them (none: nothing held, or no fd to duplicate them into).
    pub fn to_pass(&self) -> Option<(Vec<OwnedFd>, String)> {
        let dups: Vec<(ListenAddr, OwnedFd)> = self
            .sockets
            .iter()
            .filter_map(|(addr, fd)| Some((addr.clone(), fd.try_clone().ok()?)))
            .collect();
        if dups.is_empty() {
            return None;
        }
        let listed: Vec<Socket> = dups
            .iter()
            .map(|(addr, fd)| Socket {
                addr: addr.clone(),
                fd: fd.as_raw_fd(),
            })
            .collect();
        let named = serde_json::to_string(&listed).ok()?;
        Some((dups.into_iter().map(|(_, fd)| fd).collect(), named))
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// Whether a copy failed because the supervisor's sockets changed between
/// its answer and the copy, not because the daemon may not copy them: the fd
/// is closed (`EBADF`: a stop or a delete shut the socket), the process is
/// gone (`ESRCH`), or the number now holds something else than a listening
/// socket. The next sync sees the new list; nothing to warn about.
fn changed_since_listed(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBADF | libc::ESRCH))
        || e.kind() == std::io::ErrorKind::InvalidInput
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn socket_of(l: &TcpListener) -> Socket {
        Socket {
            addr: ListenAddr::Tcp(l.local_addr().unwrap()),
            fd: l.as_raw_fd(),
        }
    }

    #[test]
    fn sync_copies_listed_sockets_and_drops_dead_or_unlisted_ones() {
        // This process stands for the supervisor (pidfd_getfd of oneself).
        let me = std::process::id();
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut store = Store::default();
        assert_eq!(store.sync(me, &[socket_of(&a), socket_of(&b)]), None);
        assert_eq!(store.len(), 2);
        let (fds, named) = store.to_pass().unwrap();
        let listed: Vec<Socket> = serde_json::from_str(&named).unwrap();
        let fds: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        assert_eq!(listed.iter().map(|s| s.fd).collect::<Vec<_>>(), fds);
        assert!(fds
            .iter()
            .all(|fd| *fd != a.as_raw_fd() && *fd != b.as_raw_fd()));
        // b is no longer listed: its copy goes; a's stays (not copied again).
        assert_eq!(store.sync(me, &[socket_of(&a)]), None);
        assert_eq!(store.len(), 1);
        // a is shut down by the app: the dead copy goes even while listed.
        nix::sys::socket::shutdown(a.as_raw_fd(), nix::sys::socket::Shutdown::Both).unwrap();
        store.sync(me, &[]);
        assert!(store.is_empty() && store.to_pass().is_none());
    }

    #[test]
    fn a_socket_that_cannot_be_copied_is_said_once() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let listed = socket_of(&a);
        let refused = |_: u32, _: i32| Err(std::io::Error::from_raw_os_error(libc::EPERM));
        let mut store = Store::default();
        let said = store
            .sync_with(1, std::slice::from_ref(&listed), refused)
            .unwrap();
        assert!(said.contains("cannot keep a copy"), "{said}");
        assert!(said.contains("Operation not permitted"), "{said}");
        assert_eq!(store.sync_with(1, &[listed], refused), None);
        assert!(store.is_empty());
    }

    /// Seen as "cannot keep a copy of its listening socket …: Bad file
    /// descriptor" in the daemon's log when apps were deleted: the
    /// supervisor had listed the socket, then closed it before the copy.
    #[test]
    fn a_socket_closed_between_the_list_and_the_copy_is_no_warning() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut listed = socket_of(&a);
        listed.fd = 9999; // no longer open in the "supervisor"
        let mut store = Store::default();
        assert_eq!(store.sync(std::process::id(), &[listed]), None);
        assert!(store.is_empty());
        // Nor one of a supervisor that has ended.
        let gone = |_: u32, _: i32| Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        assert_eq!(store.sync_with(1, &[socket_of(&a)], gone), None);
        // A real failure is still said after those.
        let refused = |_: u32, _: i32| Err(std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(store.sync_with(1, &[socket_of(&a)], refused).is_some());
    }
}
