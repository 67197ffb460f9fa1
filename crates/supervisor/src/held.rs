//! The listening sockets the daemon held for an app while it had no
//! supervisor (its supervisor died; the daemon kept a copy of each shared
//! socket), as `herd supervise` inherits them: fds named in
//! [`HELD_SOCKETS_ENV`], each checked to be a listening socket before it
//! is taken. The app takes them by address instead of binding again, so
//! the clients who connected meanwhile are served, not refused.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use herd_engine::supervisor::Held;
use herd_protocol::supervisor::{Socket, HELD_SOCKETS_ENV};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// Take the sockets named in the environment (and remove the variable, so
/// that no worker sees it). Call it first thing, before this process opens
/// anything: an fd that is not an open listening socket is skipped, with a
/// line that says so, never taken.
pub fn take_from_env() -> Held {
    let Some(text) = std::env::var_os(HELD_SOCKETS_ENV) else {
        return Held::default();
    };
    std::env::remove_var(HELD_SOCKETS_ENV);
    let sockets: Vec<Socket> = match serde_json::from_str(&text.to_string_lossy()) {
        Ok(s) => s,
        Err(e) => {
            crate::say!("cannot read {HELD_SOCKETS_ENV} ({e}); binding the app's sockets anew");
            return Held::default();
        }
    };
    let mut taken: Vec<(herd_engine::config::ListenAddr, OwnedFd)> = Vec::new();
    for Socket { addr, fd } in sockets {
        if fd <= 2 || taken.iter().any(|(_, t)| t.as_raw_fd() == fd) {
            crate::say!("{HELD_SOCKETS_ENV} names fd {fd} for {addr}: not a held socket; skipped");
            continue;
        }
        // SAFETY: fcntl on a plain number: the kernel checks it (EBADF if
        // it is not open); no memory is involved.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            crate::say!("{HELD_SOCKETS_ENV} names fd {fd} for {addr}, which is not open; skipped");
            continue;
        }
        // SAFETY: fd is open (checked just above), was inherited for this
        // purpose (named once in the variable, checked above not to
        // repeat), and nothing else in this process owns it: it is taken
        // before the process opens anything.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if !herd_engine::is_listening(&owned) {
            crate::say!(
                "{HELD_SOCKETS_ENV} names fd {fd} for {addr}, which is no listening socket; closed"
            );
            continue;
        }
        if herd_engine::local_addr(&owned).ok().as_ref() != Some(&addr) {
            crate::say!(
                "{HELD_SOCKETS_ENV} names fd {fd} for {addr}, which is bound elsewhere; closed"
            );
            continue;
        }
        // Ours from now on: closed at exec (workers get their sockets from
        // the app, as always).
        if let Err(e) = fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
            crate::say!("cannot keep the held socket {addr} (fd {fd}): {e}; closed");
            continue;
        }
        taken.push((addr, owned));
    }
    Held::new(taken)
}
