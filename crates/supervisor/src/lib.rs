//! # herd-supervisor: one app, supervised
//!
//! Everything that belongs to one app, above the engine:
//!
//! - **The actor** ([`app`]): a task that owns the app's engine instance
//!   (while it runs), its event stream, its log files and its resource
//!   samples, and carries out the app's commands strictly one after the
//!   other.
//! - **Log files** ([`logs`]): whole lines into per-app files, with optional
//!   timestamps, size-based rotation and reopening on SIGUSR1.
//! - **Samples** ([`sample`]): the workers' CPU and memory from `/proc`.

pub mod app;
pub mod client;
pub mod contain;
pub mod files;
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
