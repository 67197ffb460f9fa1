//! The thin layer of Linux code under the engine: binding sockets, starting a
//! worker with its fds in place and in its own process group, signalling and
//! reaping process groups, the sd_notify socket, and fd passing over Unix
//! sockets; the PID-1 init (`init`); what a process group listens on by
//! itself (`listening`); how a herd process uses the C allocator
//! (`memory`); running a helper program to its end (`child`); how many
//! bytes wait in a pipe or a socket
//! ([`pending_bytes`]). Nothing here knows about workers,
//! slots or policies.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub(crate) mod channel;
pub mod child;
pub(crate) mod init;
pub(crate) mod listening;
pub mod memory;
pub(crate) mod notify;
pub(crate) mod process;
pub(crate) mod socket;
pub(crate) mod spawn;

/// How many bytes wait to be read from a pipe or a stream socket
/// (`FIONREAD`), at least 1 (a read then sees the end, or waits) and at most
/// `max`; 4 KiB (or `max`) when the kernel cannot say. Readers size their
/// buffer by it, so that an idle reader holds none.
pub(crate) fn pending_bytes(fd: std::os::fd::BorrowedFd<'_>, max: usize) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int, into `n`, which lives on.
    let asked = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if asked < 0 {
        return max.min(4096);
    }
    usize::try_from(n).unwrap_or(0).clamp(1, max.max(1))
}

/// Watch an fd herd owns for `interest` on the runtime's reactor. Must be
/// called inside a tokio runtime.
pub(crate) fn watch(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved in, so the fd stays open and the same for
    // as long as the AsyncFd lives.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}
