//! The driver: one tokio task per app ([`start`]) that owns the app's
//! machine, its listeners and its worker processes, turns the machine's
//! actions into real effects (spawn, signal, kill, timers) and real
//! happenings (exits, readiness, messages) back into inputs, and speaks the
//! cluster protocol to the workers. Many apps can run in one process (the
//! daemon); each has its own task, notify socket and SIGCHLD subscription.
//!
//! The parts, each owning its state as plain data (see `app` for how they
//! meet, and the crate's glossary for the words):
//! - `app`: the run loop, the one place where the parts meet;
//! - `listeners`: the listening sockets, per-slot fds, bind errors;
//! - `workers`: the worker processes: spawning, their environment, reaping;
//! - `cluster`: the cluster protocol (`protocol`), herd's round-robin
//!   (`round_robin`, choosing with `picker`);
//! - `timers`: pending timers; `output`: the output pumps; `ipc`: the
//!   channel readers and writers; `events`: what the app tells the outside;
//! - `reload`: how each reload replaces the workers (start the new one
//!   first, or stop the old one first), from what they listen on.
//! - `triggers`: the app's own reasons to reload (`watch`, `cron_restart`).
//!
//! Memory is bounded wherever a worker can push (see [`Events`]):
//! - Output: each pump reads a worker's pipe and waits for room in the
//!   bounded event channel before it reads again (`output`).
//! - IPC: one message is at most `spec.max_message_bytes`, and messages
//!   reach the app task through a bounded queue (`ipc`).
//! - The app task never awaits the consumer (`app`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use crate::config::AppSpec;
use crate::machine::{Command, Ticket};
use crate::os::notify::NotifySocket;

mod app;
mod cluster;
mod events;
pub(crate) mod fd;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod handover;
mod ipc;
mod listeners;
mod output;
mod reload;
mod timers;
mod triggers;
mod workers;

pub use app::Target;
use app::{App, Request};
pub use events::{AppStatus, Event, Events, RoundRobinStats, Stream, Timed, EVENT_QUEUE, MAX_LINE};
pub use handover::{FreezeError, Frozen, ThawError};
pub use listeners::{Held, ListenError};
pub use workers::is_worker_variable;

/// The longest a stopping worker's phase before the stop signal lasts (a
/// Node worker's cluster `disconnect` and settle time, a round-robin
/// worker's last hand-overs); `--kill-timeout` counts from the signal.
pub const SETTLE_TIMEOUT: std::time::Duration = cluster::DISCONNECT_GRACE;

/// An error that keeps an app from starting at all.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot create the notify socket: {0}")]
    Notify(io::Error),
}

/// Why [`AppHandle::update`] cannot apply a new spec to a running app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("the listeners or the balance mode changed; the sockets are kept across a reload, so stop the app and start it again to change them")]
    Listeners,
    #[error("the app is not running")]
    Gone,
}

/// The handle to a running app: commands in, messages to workers.
#[derive(Debug, Clone)]
pub struct AppHandle {
    tx: mpsc::UnboundedSender<Request>,
    /// The last ticket handed out (shared by the handle's clones).
    tickets: Arc<AtomicU64>,
}

impl AppHandle {
    /// Tickets start at the wall clock's nanoseconds: an app resumed from a
    /// previous image of herd may still hold that image's tickets (a reload
    /// frozen half-way), and a new ticket must never be one of them.
    fn new(tx: mpsc::UnboundedSender<Request>) -> AppHandle {
        let first = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        AppHandle {
            tx,
            tickets: Arc::new(AtomicU64::new(first)),
        }
    }

    /// Stop the app to start it again: its listening sockets stay open
    /// (clients wait in their queues) and come back here when it has ended,
    /// for [`start_holding`]. Nothing comes back if the app had finished.
    pub fn stop_keeping_sockets(&self) -> tokio::sync::oneshot::Receiver<Held> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Request::StopKeepingSockets(tx));
        rx
    }

    /// Ask the app to do something; a command after the app finished is ignored.
    pub fn command(&self, command: Command) {
        let _ = self.tx.send(Request::Command(command, None));
    }

    /// Ask the app to do something and get its ticket: the event stream
    /// carries `Report::Answered` with this ticket exactly once, when this
    /// command (and no other) is done, aborted or refused — unless the app
    /// finished first (then `Event::Exit` comes and no answer).
    pub fn ask(&self, command: Command) -> Ticket {
        let ticket = self.next_ticket();
        let _ = self.tx.send(Request::Command(command, Some(ticket)));
        ticket
    }

    fn next_ticket(&self) -> Ticket {
        Ticket(self.tickets.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Send a JSON message to one worker or all of them (`process.on('message')`).
    pub fn send(&self, to: Target, message: serde_json::Value) {
        let _ = self.tx.send(Request::Send { to, message });
    }

    /// Every slot and worker as they are now; `None` once the app finished.
    pub async fn status(&self) -> Option<AppStatus> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Request::Status(tx)).ok()?;
        rx.await.ok()
    }

    /// Send a signal to the process group of one worker or of all of them.
    pub fn signal(&self, to: Target, signal: Signal) {
        let _ = self.tx.send(Request::Signal { to, signal });
    }

    /// Take a new definition (command, arguments, environment, working
    /// directory, policies, instance count) and reload onto it worker by
    /// worker, keeping the listening sockets. The listeners and the balance
    /// mode cannot change this way. The ticket is the reload's (see [`ask`](Self::ask)).
    pub fn update(&self, current: &AppSpec, spec: AppSpec) -> Result<Ticket, UpdateError> {
        if spec.listeners != current.listeners || spec.balance != current.balance {
            return Err(UpdateError::Listeners);
        }
        let ticket = self.next_ticket();
        self.tx
            .send(Request::Update(Box::new(spec), ticket))
            .map_err(|_| UpdateError::Gone)?;
        Ok(ticket)
    }

    /// Pause the app and hand over its whole state, for another image of
    /// herd to take over (see [`crate::upgrade`]), or to [`resume`] here.
    /// The app stops accepting client connections and taking commands,
    /// settles (no worker start under way), stops its helpers at a clean
    /// point, and its task ends without touching a worker: they run on,
    /// and what they write waits in their pipes and channels. This handle
    /// is dead afterwards (commands sent to it are dropped); [`resume`]
    /// gives a new one. If the app cannot settle in a few seconds the
    /// freeze is refused and the app goes on as before.
    ///
    /// The events of the app end (the receiver returns `None`) once the
    /// freeze is done: read them until then, as always — the freeze waits
    /// for room for what the output pumps hold.
    pub async fn freeze(&self) -> Result<Frozen, FreezeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request::Freeze(tx))
            .map_err(|_| FreezeError::Gone)?;
        rx.await.unwrap_or(Err(FreezeError::Gone))
    }

    /// True once the app's task has ended.
    pub fn is_finished(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Take a frozen app over (from [`AppHandle::freeze`], in this process or
/// handed over by a previous image of herd) and run it on: same workers,
/// same sockets, same counters. Must be called inside a tokio runtime.
pub fn resume(frozen: Frozen) -> Result<(AppHandle, Events), ThawError> {
    let (tx, events) = App::resume(frozen)?;
    Ok((AppHandle::new(tx), events))
}

/// Bind the app's listeners, then start its task and its workers. Must be
/// called inside a tokio runtime. Fails, with nothing started, if a listener
/// cannot be bound.
pub fn start(spec: AppSpec) -> Result<(AppHandle, Events), StartError> {
    start_holding(spec, Held::default())
}

/// [`start`], taking the listening sockets `held` for the app (by an
/// earlier supervisor's daemon, see [`Held`]) instead of binding their
/// addresses again.
pub fn start_holding(spec: AppSpec, held: Held) -> Result<(AppHandle, Events), StartError> {
    let (listeners, listening) = listeners::Listeners::bind_or_take(&spec, held)?;
    let notify = NotifySocket::bind().map_err(StartError::Notify)?;
    let (tx, events) = App::start(spec, listeners, listening, notify);
    Ok((AppHandle::new(tx), events))
}
