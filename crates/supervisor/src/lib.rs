//! # herd-supervisor: one app, supervised
//!
//! ## Theory of operation
//!
//! Everything that belongs to one app, above the engine, and the process
//! that runs it alone:
//!
//! - **The actor** ([`app`]): a task that owns the app's engine instance
//!   (while it runs), its event stream, its log files and its resource
//!   samples (and so the memory limit), and carries out the app's commands
//!   strictly one after the other, answering each with its own ticket. The
//!   daemon still runs one per app in its own process; `herd supervise`
//!   runs one alone.
//! - **Log files** ([`logs`]): whole lines into per-app files, with optional
//!   timestamps, size-based rotation and reopening on SIGUSR1.
//! - **Samples** ([`sample`]): the workers' CPU and memory from `/proc`.
//! - **The supervisor process** ([`process`], `herd supervise --home DIR
//!   --id N`): one app's actor in a detached process of its own, so the app
//!   outlives whoever started it (the daemon). Its files in the home
//!   ([`files`]): `apps/<id>.json` (the app), `.pid` (locked: one
//!   supervisor per app), `.sock` (its control socket), `.groups` (what
//!   contains the app's processes, [`contain`]: a cgroup of its own, or the
//!   workers' process groups, so the next supervisor ends whatever this one
//!   leaves). The listening sockets a dead predecessor left, which the
//!   daemon kept open, it inherits and takes ([`held`]).
//! - **Its protocol**: the server side ([`server`]) and the client the
//!   daemon uses ([`client`]) of `herd_protocol::supervisor`: status,
//!   definition, commands answered by their own tickets, a followable event
//!   stream, a hello that tells versions apart.
//!
//! Workers are forked by the process's main thread, which runs everything
//! (one thread) and lives as long as the process: their `PR_SET_PDEATHSIG`
//! ties them to it, so a supervisor killed with SIGKILL takes its workers
//! with it, and its successor ends their children.

pub mod app;
pub mod client;
pub mod contain;
pub mod files;
pub mod held;
pub mod logs;
pub mod process;
pub mod sample;
pub mod server;

/// One line of herd's own log (stderr: `$HERD_HOME/herd.log`, or the
/// journal under systemd), with the time first:
/// `2026-12-02T13:45:01.123+00:00 herd: …`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say_line(format_args!($($arg)*))
    };
}

/// Write one line of herd's own log to stderr in a single `write`, so lines
/// of several herd processes appending to the same file never interleave.
pub fn say_line(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let line = format!(
        "{} herd: {text}\n",
        chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.3f%:z")
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
