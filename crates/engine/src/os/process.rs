//! Signalling and reaping workers and their process groups.

use std::io;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(Signal),
}

/// Send `signal` to every process in the group `pgid`. A group that is
/// already gone is not an error.
pub fn signal_group(pgid: Pid, signal: Signal) -> io::Result<()> {
    let _ = (pgid, signal);
    todo!()
}

/// If `pid` (a child of this process) has exited: SIGKILL whatever is left
/// of its process group (so no grandchild outlives it), reap it, and return
/// how it ended. `None` while it runs. Uses `waitid(WNOWAIT)` so the group id
/// cannot be reused between the check and the kill.
pub fn try_reap(pid: Pid) -> io::Result<Option<ExitStatus>> {
    let _ = pid;
    todo!()
}
