//! The thin layer of Linux code under the engine: binding sockets, starting a
//! worker with its fds in place and in its own process group, signalling and
//! reaping process groups, the sd_notify socket, and fd passing over Unix
//! sockets; the PID-1 init (`init`). Nothing here knows about workers,
//! slots or policies.

pub(crate) mod channel;
pub(crate) mod init;
pub(crate) mod notify;
pub(crate) mod process;
pub(crate) mod socket;
pub(crate) mod spawn;
