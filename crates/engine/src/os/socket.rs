//! Binding listening sockets once, for the whole life of the supervisor.

use std::io;
use std::os::fd::OwnedFd;

use crate::config::ListenAddr;

/// Bind and listen on `addr`; the socket is nonblocking and close-on-exec.
///
/// TCP: SO_REUSEADDR; with `reuseport`, SO_REUSEPORT too; IPv6 addresses are
/// IPv6-only; backlog is the kernel maximum (SOMAXCONN).
/// Unix: a stale socket file (one nobody accepts on) is removed first; a path
/// that exists and is not a socket, or a live socket, is an error (AddrInUse).
///
/// Errors keep the OS error kind (AddrInUse, PermissionDenied, ...) so the
/// caller can name the cause.
pub fn bind_listener(addr: &ListenAddr, reuseport: bool) -> io::Result<OwnedFd> {
    let _ = (addr, reuseport);
    todo!()
}

/// The address a listening socket is bound to (to report port 0 bindings).
pub fn local_addr(fd: &OwnedFd) -> io::Result<ListenAddr> {
    let _ = fd;
    todo!()
}
