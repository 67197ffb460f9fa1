//! A worker's IPC channel: one end of a `SOCK_STREAM` socketpair, carrying
//! newline-delimited JSON (Node's format), with fds passed as `SCM_RIGHTS`.

use std::io;
use std::os::fd::OwnedFd;

/// Create the pair: (herd's end, nonblocking + close-on-exec; the worker's end,
/// blocking, close-on-exec — spawn clears that flag when it places the fd).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    todo!()
}

/// herd's end of a channel.
#[derive(Debug)]
pub struct Channel {
    _private: (),
}

impl Channel {
    pub fn new(fd: OwnedFd) -> io::Result<Channel> {
        let _ = fd;
        todo!()
    }

    /// Read whatever is available: bytes appended to `buf`, and any fds that
    /// came with them (close-on-exec). `Ok(0)` with no fds means EOF.
    pub async fn recv(&self, buf: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        let _ = (buf, fds);
        todo!()
    }

    /// Write all of `line` (one or more complete JSON lines) and, with the
    /// first byte, the fd if given. Waits while the socket is full.
    pub async fn send(&self, line: &[u8], fd: Option<&OwnedFd>) -> io::Result<()> {
        let _ = (line, fd);
        todo!()
    }
}
