#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
//! # herd-cluster: Node's `cluster` API for Rust servers
//!
//! ## Theory of operation
//!
//! A cluster is one *primary* process and N *worker* processes that serve the
//! same listening sockets. The primary never serves requests: it binds the
//! sockets once, starts the workers, replaces those that die, reloads them
//! one at a time, and stops them gracefully. That primary is herd's engine
//! (`herd-engine`), the same one behind `herd run`; this crate lets a Rust
//! program be either side.
//!
//! **Roles.** A process is a worker when herd started it: herd sets
//! `HERD_WORKER_ID` in every worker's environment. [`is_worker`] and
//! [`is_primary`] read it, like `cluster.isWorker` / `cluster.isPrimary`.
//!
//! **Embedded primary.** [`Primary`] runs the engine inside your program and
//! starts its workers by executing the program's own binary again
//! (`std::env::current_exe()`, same arguments) — never by `fork()`, which is
//! unsound once a tokio runtime (or any thread) exists. The same `main` runs
//! in both roles and branches on [`is_primary`], as a Node cluster script does.
//!
//! **Worker side.** [`Worker`] gives a worker what herd passes it:
//! - listeners ([`Worker::listener`]): the sockets herd bound (TCP or Unix), inherited as
//!   fds 3, 4, … (systemd's `LISTEN_FDS` protocol), found by name; with
//!   `round-robin` balance herd keeps the socket and hands each accepted
//!   connection over the IPC channel (`SCM_RIGHTS`), and the listener turns
//!   them into an accept stream. Not under herd, the listener binds the
//!   fallback address itself, so the same binary runs standalone.
//! - readiness ([`Worker::ready`]): `READY=1` on `NOTIFY_SOCKET` (sd_notify).
//! - shutdown ([`Worker::shutdown`]): resolves on SIGINT, SIGTERM, or the
//!   message `"shutdown"` — then stop accepting and finish in-flight work.
//! - messages ([`Worker::send`], [`Worker::recv`]): JSON values on the IPC
//!   channel, the same newline-delimited JSON Node's `process.send` uses.
//!
//! One background task reads the channel and routes what arrives: handed-over
//! connections to their listener, and messages to [`Worker::recv`]; the
//! message `"shutdown"` (which `recv` sees too, as under pm2) and the channel
//! closing also resolve the shutdown future.

mod listener;
mod primary;
mod worker;

pub use herd_engine::config::{
    Balance, ListenAddr, ReadyPolicy, RestartMode, RestartPolicy, StopPolicy,
};
pub use herd_engine::machine::{AbortReason, Command, Next, Outcome, Report};
pub use herd_engine::supervisor::{Event, Stream, Target};
pub use herd_engine::ExitStatus;
pub use listener::{Connection, Listener, NetStream, Source};
pub use nix::sys::signal::Signal;
pub use primary::Error;
pub use primary::{Primary, PrimaryHandle};

/// Errors of the embedded primary.
pub mod primary_error {
    pub use crate::primary::Error;
}
pub use worker::Worker;

/// True in a process herd started as a worker (`cluster.isWorker`).
pub fn is_worker() -> bool {
    std::env::var_os("HERD_WORKER_ID").is_some()
}

/// True in any other process (`cluster.isPrimary`).
pub fn is_primary() -> bool {
    !is_worker()
}
