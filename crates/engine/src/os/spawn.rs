//! Starting a worker: fork/exec with its inherited fds placed at 3, 4, …,
//! in a new process group, with `LISTEN_PID` set to the child's own pid.

use std::ffi::OsString;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use nix::unistd::Pid;

/// What to start.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    /// Already resolved path of the program.
    pub program: PathBuf,
    /// argv, including argv[0].
    pub argv: Vec<OsString>,
    /// The complete environment (nothing is inherited implicitly).
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// fds to place in the child at 3, 4, 5, … in this order, without
    /// close-on-exec. Every other fd of the parent is closed in the child
    /// (they are all close-on-exec in herd).
    pub fds: Vec<RawFd>,
    /// Add `LISTEN_PID=<child pid>` to the child's environment.
    pub set_listen_pid: bool,
    /// Hint for lifetimes of borrowed fds.
    pub _marker: std::marker::PhantomData<&'a ()>,
}

/// A started worker: its pid (also its process group id) and the read ends
/// of its stdout and stderr pipes (nonblocking, close-on-exec).
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Start the program. Returns once the exec has succeeded; an exec failure
/// (not found, not executable) is reported as an error and leaves no process.
pub fn spawn(spec: &SpawnSpec<'_>) -> io::Result<Spawned> {
    let _ = spec;
    todo!()
}

/// Find `program` on PATH (or check it, if it contains a '/') and verify it is
/// an executable regular file. The error says which of the two it is not.
pub fn resolve_program(program: &str) -> io::Result<PathBuf> {
    let _ = program;
    todo!()
}
