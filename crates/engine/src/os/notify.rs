//! The sd_notify socket (`NOTIFY_SOCKET`): one datagram socket per
//! supervisor; the kernel tells us which pid sent each message.

use std::io;

use nix::unistd::Pid;

/// A bound notify socket, nonblocking, with SO_PASSCRED.
#[derive(Debug)]
pub struct NotifySocket {
    _private: (),
}

impl NotifySocket {
    /// Bind a fresh socket in the abstract namespace.
    pub fn bind() -> io::Result<NotifySocket> {
        todo!()
    }

    /// The value to put in a worker's `NOTIFY_SOCKET` (e.g. `@herd/1234/0`).
    pub fn env_value(&self) -> &str {
        todo!()
    }

    /// Wait for the next datagram: the sender's pid and its text (e.g. "READY=1\nSTATUS=x").
    pub async fn recv(&self) -> io::Result<(Pid, String)> {
        todo!()
    }
}
