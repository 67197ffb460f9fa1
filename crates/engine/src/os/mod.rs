//! The thin layer of Linux code under the engine: binding sockets, starting a
//! worker with its fds in place and in its own process group, signalling and
//! reaping process groups, the sd_notify socket, and fd passing over Unix
//! sockets; the PID-1 init (`init`); what a process group listens on by
//! itself (`listening`); how a herd process uses the C allocator
//! (`memory`). Nothing here knows about workers,
//! slots or policies.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub(crate) mod channel;
pub(crate) mod init;
pub(crate) mod listening;
pub mod memory;
pub(crate) mod notify;
pub(crate) mod process;
pub(crate) mod socket;
pub(crate) mod spawn;

/// Watch an fd herd owns for `interest` on the runtime's reactor. Must be
/// called inside a tokio runtime.
pub(crate) fn watch(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved in, so the fd stays open and the same for
    // as long as the AsyncFd lives.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}
