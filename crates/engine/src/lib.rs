#![warn(unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::missing_safety_doc)]
//! # herd's engine
//!
//! Everything that belongs to one app under herd, shared by `herd run`, the
//! daemon and `herd-cluster`'s embedded primary: what an app is
//! ([`config`]), the lifecycle of its workers as a pure state machine
//! ([`machine`]), the task that runs an app ([`supervisor`]), and the thin
//! Linux layer under them (`os`, private).
//!
//! ## Theory of operation
//!
//! [`supervisor::start`] binds the app's listeners and starts one task that
//! owns the app. The machine decides — start a worker for this slot, stop
//! that one, restart after a backoff, move a reload on — and never does
//! anything itself: it returns actions. The task carries them out (fork and
//! exec, signals, timers) and feeds back what happened (spawned, ready,
//! exited, a timer fired), talks to the workers over their channels (the
//! cluster protocol, round-robin hand-over), and tells the outside world
//! through a bounded stream of events. The task's parts each own their
//! state as plain data, which can be written out and read back; what lives
//! only in the process (tasks, channels, registered fds) is kept apart.
//!
//! ## Glossary
//!
//! Each word means one thing, everywhere in the engine:
//!
//! - **app**: one program under one name and one definition
//!   ([`config::AppSpec`]), run as N workers.
//! - **slot**: one of an app's N places, 0..N-1 ([`machine::Slot`]): what
//!   `HERD_WORKER_ID` and `NODE_APP_INSTANCE` carry, and what
//!   `herd restart app:1` addresses. A slot outlives its processes.
//! - **worker**: one process started for a slot ([`machine::WorkerId`],
//!   unique in the app and never reused). A slot has its *current* worker;
//!   during a reload or a replacement also a *successor* (starting, until it
//!   is ready and takes over), and the worker it replaces becomes a
//!   *predecessor*, which drains.
//! - **instance**: pm2's word for a slot, kept only in pm2's own names
//!   (`instances`, `NODE_APP_INSTANCE`, `instance_var`).
//! - **generation**: not tracked. A worker runs the definition the app had
//!   when it was spawned; a new definition (a reload onto it) applies to the
//!   workers spawned after it, and the reload replaces every worker.
//! - **listener**: a listening socket herd owns: one of the app's own (from
//!   `--listen`, inherited by every worker as fd 3, 4, …; with `--balance
//!   reuseport` one socket per slot), or one bound at a cluster worker's
//!   request.
//! - **server**, **server key**: Node's words. A server is what a cluster
//!   worker's `listen()` asked for, named by its server key
//!   (`address:port:addressType:fd:index`); herd serves each server with
//!   one listener.
//! - **client connection**: a connection from a client of the app to one
//!   of its listeners.
//! - **handoff**: a client connection herd accepted (round-robin) and
//!   passed to a worker, until the worker acknowledges it.
//! - **channel**: a worker's IPC channel (Node's `process.send`): JSON
//!   lines over a socketpair, with an fd alongside a handle message.
//! - **trigger**: one of the app's own reasons to reload — watched files
//!   that changed (`watch`), a schedule (`cron_restart`); it asks the
//!   machine for the same rolling reload a user's `reload` is.
//! - **control connection**: a CLI's connection to the daemon (see
//!   `herd-protocol`); the engine has none. "Connection" alone never means
//!   one of these.

//!
//! ## The public face
//!
//! What the `herd` command, the daemon and `herd-cluster` use, and nothing
//! else: [`config`] (what an app is), [`machine`]'s vocabulary (commands,
//! reports, snapshots; the machine itself is internal), [`supervisor`]
//! (running an app; freezing and resuming one), [`foreground`] (`herd
//! run`'s loop), [`upgrade`] (replacing the process's own binary in place
//! with its apps running on), [`describe`] (how
//! durations and sizes read), and the few process-level helpers re-exported
//! here. The OS layer, the clock and the supervisor's parts are internal.

pub mod config;
pub mod describe;
pub mod foreground;
pub mod machine;
pub mod supervisor;
pub mod upgrade;

mod clock;
mod cpus;
mod exit;
mod os;

pub use cpus::usable_cpus;
pub use exit::ExitStatus;
/// A worker's end of its channel, for a worker written in Rust (`herd-cluster`).
pub use os::channel::Channel;
pub use os::child;
pub use os::init::{init_if_pid1, init_if_pid1_then, under_herd_init, OnHerdDeath};
pub use os::memory;
pub use os::notify::sd_notify;
pub use os::socket::{copy_listening, is_listening, local_addr};
pub use os::spawn::resolve_program;
/// The parsers of what a worker sends, for the fuzz targets (`fuzz/`) only.
#[doc(hidden)]
pub use supervisor::fuzzing;
pub use supervisor::is_worker_variable;
