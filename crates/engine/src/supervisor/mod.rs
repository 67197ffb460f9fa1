//! The driver: one tokio task per app that owns the app's [`Machine`], its
//! listening sockets, and its worker processes, and turns the machine's
//! actions into real effects (spawn, signal, kill, timers) and real happenings
//! (exits, readiness, messages) back into inputs.
//!
//! Everything about one app lives in that task, so there are no locks: other
//! tasks (output pumps, channel readers, timers, the notify socket) only send
//! it messages. Many apps can run in one process (the daemon); each has its
//! own task, notify socket and SIGCHLD subscription.
//!
//! Memory is bounded wherever a worker can push (see [`Events`]):
//! - Output: each pump reads a worker's pipe and `send().await`s whole lines
//!   into the bounded event channel. When the consumer is behind, the pump
//!   stops reading, the pipe fills, and the worker blocks in `write`, exactly
//!   as on a slow terminal. Nothing is dropped; a line is never split, except
//!   that one longer than [`MAX_LINE`] is cut there (the rest follows as the
//!   next line).
//! - IPC: one message is at most `spec.max_message_bytes` (longer ones are
//!   refused with a warning and skipped up to the next newline, never
//!   buffered); messages reach the app task through a bounded queue, so a
//!   flood stops the channel reader and then the worker's `send`.
//! - The app task never awaits the consumer: its own events (lifecycle,
//!   warnings, messages) go to a small queue it flushes when the channel has
//!   room, alongside its other work, so timers, exits, signals and the
//!   cluster protocol keep running while a consumer is slow — no deadlock
//!   between the app task and the pumps, which share the channel. While that
//!   queue is over [`PENDING_LIMIT`] the app takes no worker message (the
//!   messages wait in their bounded queue, then in the workers' sockets);
//!   what remains (lifecycle reports) is bounded by the processes' own
//!   activity, not by what a worker writes.
//!
//! Spawning never blocks the loop: the fork happens on the spawner thread
//! (`os::spawn`), the exec is awaited on the reactor, and the child is
//! tracked (killable, reaped) from the moment its pid is known.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::config::{AppSpec, Balance, ListenAddr, WorkerKind};
use crate::machine::{
    Action, Command, Input, Machine, Outcome, Policy, Readiness, Report, Slot, Ticket, Timer,
    WorkerId,
};
use crate::os::channel::{self, Channel};
use crate::os::notify::NotifySocket;
use crate::os::process::{self, ExitStatus};
use crate::os::socket;
use crate::os::spawn::{self, SpawnSpec, Spawned};

mod node;
mod round_robin;

/// An event and the wall-clock time it happened (for logs and history).
pub type Timed = (std::time::SystemTime, Event);

fn timed(event: Event) -> Timed {
    (std::time::SystemTime::now(), event)
}

/// The events of one app, as [`start`] returns them. Bounded (see
/// [`EVENT_QUEUE`]): a consumer that reads slowly slows the workers' output
/// down instead of letting herd's memory grow. Each event carries the time
/// it happened ([`Events::recv_timed`]), not the time it was read.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Timed>,
}

impl Events {
    /// The next event; `None` once the app's task has ended.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await.map(|(_, event)| event)
    }

    /// The next event with the time it happened.
    pub async fn recv_timed(&mut self) -> Option<Timed> {
        self.rx.recv().await
    }
}

/// Events waiting for the consumer. An output batch is at most one pipe read
/// (64 KiB) plus a cut line ([`MAX_LINE`]), usually a few KiB: some MiB in all.
pub const EVENT_QUEUE: usize = 64;
/// A worker output line longer than this is cut here; the rest follows as
/// the next line.
pub const MAX_LINE: usize = 1 << 20;
/// The longest a stopping worker's phase before the stop signal lasts (a
/// Node worker's cluster `disconnect` and settle time, a round-robin
/// worker's last hand-overs); `--kill-timeout` counts from the signal.
pub const SETTLE_TIMEOUT: Duration = node::DISCONNECT_GRACE;
/// How long, and how many, `READY=1` notifications from not-yet-known pids
/// are kept.
const UNCLAIMED_READY_FOR: Duration = Duration::from_secs(10);
const UNCLAIMED_READY_MAX: usize = 64;
/// Worker messages (all workers together) waiting for the app task.
const MESSAGE_QUEUE: usize = 32;
/// The app task stops taking worker messages while this many of its own
/// events wait for room in the event channel.
const PENDING_LIMIT: usize = 16;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What an app tells the outside world. As JSON (`{"lifecycle": {"ready": {…}}}`),
/// a worker's output is text (invalid UTF-8 replaced).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A listener is bound (before any worker starts, or when a worker asks for one).
    Listening { name: String, addr: ListenAddr },
    /// A lifecycle event from the machine.
    Lifecycle(Report),
    /// Complete lines a worker wrote (each ends with '\n').
    Output {
        slot: Slot,
        pid: u32,
        stream: Stream,
        #[serde(with = "lines_text")]
        lines: Vec<u8>,
    },
    /// A message a worker sent on its IPC channel (`process.send(x)`).
    Message {
        slot: Slot,
        pid: u32,
        message: serde_json::Value,
    },
    /// Something went wrong that herd handled, worth telling the user.
    Warning(String),
    /// The app is finished; no event follows.
    Exit(Outcome),
}

/// Serde for a worker's output as text.
mod lines_text {
    pub fn serialize<S: serde::Serializer>(lines: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(lines))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(String::into_bytes)
    }
}

/// Whom a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    All,
    Slot(Slot),
}

/// An error that keeps an app from starting at all.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        addr: ListenAddr,
        reason: String,
        source: io::Error,
    },
    #[error(
        "{0} is given twice: give each --listen address once (one socket serves every worker)"
    )]
    Duplicate(ListenAddr),
    #[error("cannot create the notify socket: {0}")]
    Notify(io::Error),
}

enum Request {
    /// `Some`: answered with `Report::Answered` (see [`AppHandle::ask`]).
    Command(Command, Option<Ticket>),
    Send {
        to: Target,
        message: serde_json::Value,
    },
    Status(tokio::sync::oneshot::Sender<AppStatus>),
    Signal {
        to: Target,
        signal: Signal,
    },
    Update(Box<AppSpec>, Ticket),
}

/// An app's workers as they are now, from [`AppHandle::status`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AppStatus {
    pub name: String,
    /// Where each listener is bound (the real port for port 0).
    pub listeners: Vec<(String, ListenAddr)>,
    #[serde(flatten)]
    pub machine: crate::machine::Snapshot,
    /// Per worker, the connections herd's round-robin handed over (empty
    /// when the app has no round-robin socket).
    #[serde(default)]
    pub round_robin: Vec<RoundRobinStats>,
}

/// One worker's share of herd's round-robin accepting.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundRobinStats {
    pub slot: usize,
    pub pid: u32,
    /// Connections handed to it since it started.
    pub handed_over: u64,
    /// Connections handed to it and not answered yet.
    pub pending: u64,
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

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Command(c, t) => write!(f, "Command({c:?}, {t:?})"),
            Request::Send { to, .. } => write!(f, "Send({to:?})"),
            Request::Status(_) => f.write_str("Status"),
            Request::Signal { to, signal } => write!(f, "Signal({to:?}, {signal})"),
            Request::Update(spec, t) => write!(f, "Update({}, {t:?})", spec.name),
        }
    }
}

impl AppHandle {
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

    /// True once the app's task has ended.
    pub fn is_finished(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Bind the app's listeners, then start its task and its workers. Must be
/// called inside a tokio runtime. Fails, with nothing started, if a listener
/// cannot be bound.
pub fn start(spec: AppSpec) -> Result<(AppHandle, Events), StartError> {
    let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
    let mut pending = VecDeque::new();
    let mut listeners = Vec::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let ephemeral = matches!(l.addr, ListenAddr::Tcp(a) if a.port() == 0);
        if !ephemeral && spec.listeners[..i].iter().any(|other| other.addr == l.addr) {
            return Err(StartError::Duplicate(l.addr.clone()));
        }
        let reuseport = spec.balance == Balance::ReusePort;
        let fd = bind(&l.addr, reuseport)?;
        let addr = socket::local_addr(&fd).unwrap_or_else(|_| l.addr.clone());
        pending.push_back(timed(Event::Listening {
            name: l.name.clone(),
            addr: addr.clone(),
        }));
        // A reuseport listener binds one socket per slot; slot 0 has this one.
        listeners.push(Listener {
            name: l.name.clone(),
            addr,
            fds: vec![Some(fd)],
        });
    }
    let notify = NotifySocket::bind().map_err(StartError::Notify)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (internal, internal_rx) = mpsc::unbounded_channel();
    let (messages, messages_rx) = mpsc::channel(MESSAGE_QUEUE);
    let machine = Machine::new(policy_for(&spec), spec.instances);
    let app = App {
        base_env: if spec.inherit_env {
            base_env()
        } else {
            Vec::new()
        },
        spec,
        machine,
        listeners,
        notify: Arc::new(notify),
        procs: HashMap::new(),
        servers: HashMap::new(),
        starting: HashMap::new(),
        unclaimed_ready: VecDeque::new(),
        events,
        pending: RefCell::new(pending),
        internal,
        messages,
    };
    tokio::spawn(app.run(rx, internal_rx, messages_rx));
    let handle = AppHandle {
        tx,
        tickets: Arc::new(AtomicU64::new(0)),
    };
    handle.command(Command::Start);
    Ok((handle, Events { rx: events_rx }))
}

/// The machine's policies for a spec.
fn policy_for(spec: &AppSpec) -> Policy {
    Policy {
        restart: spec.restart.clone(),
        readiness: if spec.ready.wait_ready || spec.kind == WorkerKind::Node {
            Readiness::Signalled
        } else {
            Readiness::After(spec.ready.ready_delay)
        },
        listen_timeout: spec.ready.listen_timeout,
        kill_timeout: spec.stop.kill_timeout,
        settle_timeout: SETTLE_TIMEOUT,
    }
}

fn bind(addr: &ListenAddr, reuseport: bool) -> Result<OwnedFd, StartError> {
    socket::bind_listener(addr, reuseport).map_err(|source| {
        let reason = match source.kind() {
            io::ErrorKind::AddrInUse => match addr {
                ListenAddr::Tcp(_) => "the address is already in use; stop the program using it or choose another port".to_string(),
                // The OS layer says which: a live socket, or a file that is no socket.
                ListenAddr::Unix(_) => format!("{source}; choose another path, or stop or remove what is there"),
            },
            io::ErrorKind::PermissionDenied => match addr {
                ListenAddr::Tcp(_) => "permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE, so choose a port from 1024 up".to_string(),
                ListenAddr::Unix(_) => "permission denied; choose a directory herd may write to".to_string(),
            },
            io::ErrorKind::AddrNotAvailable => {
                "no interface of this machine has that address; use 127.0.0.1, 0.0.0.0 or one of its addresses".to_string()
            }
            _ => source.to_string(),
        };
        StartError::Bind { addr: addr.clone(), reason, source }
    })
}

/// Is this a variable herd sets for each worker (so it is never passed on
/// from herd's own environment, or from a CLI's)?
pub fn is_herd_variable(key: &str) -> bool {
    const OURS: &[&str] = &[
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "NODE_CHANNEL_FD",
        "NODE_CHANNEL_SERIALIZATION_MODE",
        "NODE_UNIQUE_ID",
        "NODE_APP_INSTANCE",
    ];
    OURS.contains(&key) || key.starts_with("HERD_")
}

/// herd's own environment minus what it sets for each worker.
fn base_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| !is_herd_variable(&k.to_string_lossy()))
        .collect()
}

struct Listener {
    name: String,
    addr: ListenAddr,
    /// One fd for `shared`; one per slot for `reuseport` (None: not bound yet,
    /// or closed because its slot is gone).
    fds: Vec<Option<OwnedFd>>,
}

/// A running worker process.
struct Proc {
    slot: Slot,
    pid: Pid,
    /// Messages to the worker, written in order by its writer task.
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// The stdout and stderr pumps; an exit is reported once they drained.
    pumps: [Pump; 2],
    /// Its side of the cluster protocol (Node workers, round-robin workers).
    peer: node::Peer,
}

struct Outgoing {
    line: Vec<u8>,
    /// Shared with whoever may need to send it again (round-robin retries).
    fd: Option<Arc<OwnedFd>>,
}

/// A worker between the fork and the exec (or before the fork).
struct Starting {
    slot: Slot,
    /// Known once the fork returned; from then on the child is ours to kill.
    pid: Option<Pid>,
    /// A kill was asked for before the pid was known.
    kill: bool,
    /// It said `READY=1` before herd saw its exec succeed.
    ready_early: bool,
}

/// A worker's output pump and what the exit report needs to know of it.
struct Pump {
    task: tokio::task::JoinHandle<()>,
    /// Bumped on every read and every delivered batch.
    progress: Arc<AtomicU64>,
    /// True while it waits for room in the event channel.
    blocked: Arc<AtomicBool>,
}

/// What a worker's channel reader hands the app task, in the channel's order
/// (through the bounded message queue).
enum FromWorker {
    /// A JSON value arrived.
    Message {
        worker: WorkerId,
        value: serde_json::Value,
    },
    /// Something that is not JSON arrived.
    BadMessage { worker: WorkerId, error: String },
    /// A message over the size cap was refused and skipped; `size` is its
    /// length in bytes (`complete`: up to its newline; else the channel
    /// ended first and it was at least that long).
    Oversized {
        worker: WorkerId,
        size: usize,
        complete: bool,
    },
    /// The channel reached EOF.
    Closed { worker: WorkerId },
}

/// Messages from the app's helper tasks to the app task.
enum Internal {
    Timer(Timer),
    /// A worker's process ended and its output was drained.
    Exited {
        worker: WorkerId,
        status: ExitStatus,
    },
    /// The notify socket got a datagram.
    Notify {
        pid: Pid,
        text: String,
    },
    /// The fork of a worker returned: the child exists.
    Forked {
        worker: WorkerId,
        pid: Pid,
    },
    /// The worker's exec succeeded (or it could not be started at all).
    SpawnDone {
        worker: WorkerId,
        result: io::Result<Spawned>,
        channel: Arc<Channel>,
    },
    /// herd accepted a connection on a round-robin socket.
    Accepted {
        key: String,
        conn: round_robin::Conn,
    },
    /// Time to check whether a worker answered for its oldest connection.
    AnswerDue {
        worker: WorkerId,
    },
    /// Time to send a draining Node worker its kill signal.
    StopSignal {
        worker: WorkerId,
    },
}

struct App {
    spec: AppSpec,
    base_env: Vec<(OsString, OsString)>,
    machine: Machine,
    listeners: Vec<Listener>,
    notify: Arc<NotifySocket>,
    procs: HashMap<WorkerId, Proc>,
    /// Sockets handed out by the cluster protocol, by key.
    servers: HashMap<String, node::Server>,
    /// Workers whose spawn is under way.
    starting: HashMap<WorkerId, Starting>,
    /// `READY=1` from a pid herd does not know yet (the worker was faster
    /// than the news of its fork): claimed by `Forked`, forgotten after
    /// [`UNCLAIMED_READY_FOR`]; at most [`UNCLAIMED_READY_MAX`].
    unclaimed_ready: VecDeque<(Pid, Instant)>,
    events: mpsc::Sender<Timed>,
    /// The app's own events waiting for room in `events` (see the module docs).
    pending: RefCell<VecDeque<Timed>>,
    internal: mpsc::UnboundedSender<Internal>,
    messages: mpsc::Sender<FromWorker>,
}

impl App {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        mut messages: mpsc::Receiver<FromWorker>,
    ) {
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        {
            Ok(s) => s,
            Err(e) => {
                self.event(Event::Warning(format!(
                    "cannot watch for worker exits: {e}"
                )));
                return;
            }
        };
        let notify = self.notify.clone();
        let notify_tx = self.internal.clone();
        let notify_task = tokio::spawn(async move {
            while let Ok((pid, text)) = notify.recv().await {
                if notify_tx.send(Internal::Notify { pid, text }).is_err() {
                    break;
                }
            }
        });
        // SIGCHLD can coalesce, and a child may exit between a check and the
        // subscription: a slow poll backs the signal up.
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        if self.generic_round_robin() {
            self.open_listener_servers();
        }
        let events = self.events.clone();
        while !self.machine.finished() {
            let backlog = self.pending.borrow().len();
            tokio::select! {
                Some(request) = requests.recv() => self.request(request),
                Some(msg) = internal.recv() => self.internal(msg),
                Some(msg) = messages.recv(), if backlog < PENDING_LIMIT => self.worker_message(msg),
                room = events.reserve(), if backlog > 0 => match room {
                    Ok(permit) => {
                        if let Some(event) = self.pending.borrow_mut().pop_front() {
                            permit.send(event);
                        }
                    }
                    // Nobody listens any more: drop what waits.
                    Err(_) => self.pending.borrow_mut().clear(),
                },
                _ = sigchld.recv() => self.reap(),
                _ = poll.tick() => self.reap(),
            }
        }
        // The last events (the exit among them) reach the consumer.
        loop {
            let Some(event) = self.pending.borrow_mut().pop_front() else {
                break;
            };
            if events.send(event).await.is_err() {
                break;
            }
        }
        notify_task.abort();
        for l in &self.listeners {
            if let ListenAddr::Unix(path) = &l.addr {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn request(&mut self, request: Request) {
        match request {
            Request::Command(command, None) => self.input(Input::Command(command)),
            Request::Command(command, Some(ticket)) => self.input(Input::Ask { command, ticket }),
            Request::Send { to, message } => self.send(to, &message),
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Signal { to, signal } => {
                for p in self.procs.values() {
                    if to == Target::All || to == Target::Slot(p.slot) {
                        if let Err(e) = process::signal_group(p.pid, signal) {
                            self.event(Event::Warning(format!(
                                "cannot send {signal} to worker {} (pid {}): {e}",
                                p.slot, p.pid
                            )));
                        }
                    }
                }
            }
            Request::Update(spec, ticket) => {
                let instances = spec.instances;
                self.spec = *spec;
                self.machine.set_policy(policy_for(&self.spec));
                if instances != self.machine.instances() {
                    self.input(Input::Command(Command::Scale(instances)));
                }
                self.input(Input::Ask {
                    command: Command::Reload,
                    ticket,
                });
            }
        }
    }

    fn status(&self) -> AppStatus {
        AppStatus {
            name: self.spec.name.clone(),
            listeners: self
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.addr.clone()))
                .collect(),
            machine: self.machine.snapshot(Instant::now()),
            round_robin: self.round_robin_stats(),
        }
    }

    fn round_robin_stats(&self) -> Vec<RoundRobinStats> {
        if !self.servers.values().any(|s| s.round_robin.is_some()) {
            return Vec::new();
        }
        let mut stats: Vec<RoundRobinStats> = self
            .procs
            .values()
            .map(|p| RoundRobinStats {
                slot: p.slot,
                pid: p.pid.as_raw() as u32,
                handed_over: p.peer.handed_over,
                pending: p.peer.unacked.len() as u64,
            })
            .collect();
        stats.sort_by_key(|s| (s.slot, s.pid));
        stats
    }

    /// Queue an event for the consumer; never waits (see the module docs).
    fn event(&self, event: Event) {
        let event = timed(event);
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            match self.events.try_send(event) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => (),
                Err(mpsc::error::TrySendError::Full(event)) => pending.push_back(event),
            }
        } else {
            pending.push_back(event);
        }
    }

    fn input(&mut self, input: Input) {
        let actions = self.machine.handle(Instant::now(), input);
        for action in actions {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Spawn { slot, worker } => {
                // Answered later (`Internal::SpawnDone`), unless it cannot
                // even be asked for.
                if let Err(e) = self.spawn(slot, worker) {
                    self.input(Input::SpawnFailed {
                        worker,
                        error: e.to_string(),
                    });
                }
            }
            Action::Stop { worker } => self.stop(worker),
            Action::Signal { worker } => {
                self.stop_signal(worker);
                // Even if it is gone already: the machine waits for this.
                self.input(Input::StopSignalled { worker });
            }
            Action::Kill { worker } => {
                if let Some(p) = self.procs.get(&worker) {
                    let _ = process::signal_group(p.pid, Signal::SIGKILL);
                } else if let Some(s) = self.starting.get_mut(&worker) {
                    s.kill = true;
                    if let Some(pid) = s.pid {
                        kill_starting(pid);
                    }
                }
            }
            Action::SetTimer { timer, after } => {
                let tx = self.internal.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx.send(Internal::Timer(timer));
                });
            }
            Action::Report(report) => {
                self.on_report(&report);
                self.event(Event::Lifecycle(report));
            }
            Action::Exit(outcome) => self.event(Event::Exit(outcome)),
        }
    }

    /// Side effects of lifecycle events on resources the driver owns.
    fn on_report(&mut self, report: &Report) {
        match report {
            Report::Exited {
                slot,
                next: crate::machine::Next::Errored { .. },
                ..
            } => self.close_slot_sockets(*slot),
            Report::Ready { .. } => self.flush_all_backlogs(),
            Report::Scaled { instances } => {
                for slot in *instances..self.max_slot_sockets() {
                    self.close_slot_sockets(slot);
                }
            }
            _ => {}
        }
    }

    fn max_slot_sockets(&self) -> usize {
        self.listeners
            .iter()
            .map(|l| l.fds.len())
            .max()
            .unwrap_or(0)
    }

    /// A reuseport socket whose slot has no worker would take its share of
    /// connections and never accept them: close it (it is bound again when
    /// the slot gets a worker). Shared sockets never close.
    fn close_slot_sockets(&mut self, slot: Slot) {
        if self.spec.balance != Balance::ReusePort {
            return;
        }
        for l in &mut self.listeners {
            if let Some(fd) = l.fds.get_mut(slot) {
                *fd = None;
            }
        }
    }

    /// The listening fds slot `slot` inherits, binding reuseport sockets on first use.
    fn slot_fds(&mut self, slot: Slot) -> io::Result<Vec<RawFd>> {
        let reuseport = self.spec.balance == Balance::ReusePort;
        let mut fds = Vec::with_capacity(self.listeners.len());
        for l in &mut self.listeners {
            let index = if reuseport { slot } else { 0 };
            if l.fds.len() <= index {
                l.fds.resize_with(index + 1, || None);
            }
            if l.fds[index].is_none() {
                let fd = socket::bind_listener(&l.addr, true).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot bind a reuseport socket on {}: {e}", l.addr),
                    )
                })?;
                l.fds[index] = Some(fd);
            }
            fds.push(l.fds[index].as_ref().expect("bound above").as_raw_fd());
        }
        Ok(fds)
    }

    /// Round-robin for a worker that is not Node: herd accepts on the
    /// `--listen` sockets and hands connections over the channel.
    fn generic_round_robin(&self) -> bool {
        self.spec.balance == Balance::RoundRobin && self.spec.kind == WorkerKind::Generic
    }

    /// Start spawning a worker: everything that can fail without a process
    /// is done here; the fork runs on the spawner thread and the exec is
    /// awaited by a helper task, which reports `Forked` and `SpawnDone`.
    fn spawn(&mut self, slot: Slot, worker: WorkerId) -> io::Result<()> {
        let raw = if self.generic_round_robin() {
            Vec::new()
        } else {
            self.slot_fds(slot)?
        };
        // Our own copies, open until the fork even if a socket closes meanwhile.
        let mut keep = Vec::with_capacity(raw.len() + 1);
        for fd in raw {
            // SAFETY: `fd` belongs to a listener of ours, open right now.
            keep.push(unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?);
        }
        let listen_fds = keep.len();
        let (ours, theirs) = channel::pair()?;
        // Before the fork: a channel that cannot be set up leaves no process.
        let channel = Arc::new(Channel::new(ours)?);
        let channel_fd = 3 + keep.len();
        keep.push(theirs);
        let fds: Vec<RawFd> = keep.iter().map(|fd| fd.as_raw_fd()).collect();

        let mut env = self.base_env.clone();
        let mut set = |k: &str, v: String| env.push((k.into(), v.into()));
        for (k, v) in &self.spec.env {
            set(k, v.clone());
        }
        if let Some(var) = &self.spec.instance_var {
            set(var, slot.to_string());
        }
        set("HERD_WORKER_ID", slot.to_string());
        set("NODE_APP_INSTANCE", slot.to_string());
        set("HERD_INSTANCES", self.machine.instances().to_string());
        set("HERD_APP_NAME", self.spec.name.clone());
        set("NOTIFY_SOCKET", self.notify.env_value().to_string());
        set("HERD_CHANNEL_FD", channel_fd.to_string());
        if listen_fds > 0 {
            set("LISTEN_FDS", listen_fds.to_string());
            let names: Vec<&str> = self.listeners.iter().map(|l| l.name.as_str()).collect();
            set("LISTEN_FDNAMES", names.join(":"));
        }
        if self.generic_round_robin() {
            let names: Vec<&str> = self.listeners.iter().map(|l| l.name.as_str()).collect();
            set("HERD_ROUND_ROBIN", names.join(":"));
        }
        if self.spec.kind == WorkerKind::Node {
            set("NODE_CHANNEL_FD", channel_fd.to_string());
            set("NODE_CHANNEL_SERIALIZATION_MODE", "json".to_string());
            // Node's cluster.worker.id: unique, from 1, like Node's primary.
            set("NODE_UNIQUE_ID", (worker.0 + 1).to_string());
        }

        let mut argv: Vec<OsString> = vec![self.spec.program.clone().into_os_string()];
        argv.extend(self.spec.args.iter().map(OsString::from));
        let spec = SpawnSpec {
            program: self.spec.program.clone(),
            argv,
            env,
            cwd: self.spec.cwd.clone(),
            fds,
            set_listen_pid: listen_fds > 0,
        };
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let result = match spawn::fork_on_spawner(spec, keep).await {
                Ok(forked) => {
                    let _ = tx.send(Internal::Forked {
                        worker,
                        pid: forked.pid,
                    });
                    forked.wait_exec().await
                }
                Err(e) => Err(e),
            };
            let _ = tx.send(Internal::SpawnDone {
                worker,
                result,
                channel,
            });
        });
        self.starting.insert(
            worker,
            Starting {
                slot,
                pid: None,
                kill: false,
                ready_early: false,
            },
        );
        Ok(())
    }

    /// The exec of a worker succeeded (or the spawn failed): set up its
    /// output, its channel and its record, and tell the machine.
    fn spawn_done(&mut self, worker: WorkerId, result: io::Result<Spawned>, channel: Arc<Channel>) {
        let Some(starting) = self.starting.remove(&worker) else {
            return;
        };
        let spawned = match result {
            Ok(s) => s,
            Err(e) => {
                return self.input(Input::SpawnFailed {
                    worker,
                    error: e.to_string(),
                })
            }
        };
        let slot = starting.slot;
        let pid = spawned.pid;
        let raw_pid = pid.as_raw() as u32;
        // Nothing from here on can fail: the process is tracked in `procs`
        // and reaped like any other, whatever becomes of its pipes.
        if starting.kill {
            let _ = process::signal_group(pid, Signal::SIGKILL);
        }
        // Output pumps; the exit is reported only after both drained.
        let stdout = start_pump(
            spawned.stdout,
            slot,
            raw_pid,
            Stream::Stdout,
            self.events.clone(),
        );
        let stderr = start_pump(
            spawned.stderr,
            slot,
            raw_pid,
            Stream::Stderr,
            self.events.clone(),
        );

        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_channel(channel.clone(), outbox_rx));
        tokio::spawn(read_channel(
            channel,
            worker,
            self.spec.max_message_bytes,
            self.messages.clone(),
        ));

        self.procs.insert(
            worker,
            Proc {
                slot,
                pid,
                outbox,
                pumps: [stdout, stderr],
                peer: node::Peer::new(),
            },
        );
        if self.generic_round_robin() {
            self.join_listener_servers(worker);
        }
        self.input(Input::Spawned {
            worker,
            pid: raw_pid,
        });
        if starting.ready_early {
            self.input(Input::Ready { worker });
        }
    }

    fn stop(&mut self, worker: WorkerId) {
        if !self.node_stop(worker) {
            self.signal_stop(worker);
            self.input(Input::StopSignalled { worker });
        }
    }

    /// Ask the worker to finish: the kill signal to its group, or the message.
    /// The caller tells the machine (`Input::StopSignalled`).
    fn signal_stop(&mut self, worker: WorkerId) {
        let Some(p) = self.procs.get(&worker) else {
            return;
        };
        if self.spec.stop.shutdown_with_message {
            let _ = p.outbox.send(Outgoing {
                line: b"\"shutdown\"\n".to_vec(),
                fd: None,
            });
        } else if let Err(e) = process::signal_group(p.pid, self.spec.stop.kill_signal) {
            self.event(Event::Warning(format!(
                "cannot signal worker {} (pid {}): {e}",
                p.slot, p.pid
            )));
        }
    }

    fn send(&self, to: Target, message: &serde_json::Value) {
        let mut line = serde_json::to_vec(message).expect("a JSON value serializes");
        line.push(b'\n');
        for p in self.procs.values() {
            if to == Target::All || to == Target::Slot(p.slot) {
                let _ = p.outbox.send(Outgoing {
                    line: line.clone(),
                    fd: None,
                });
            }
        }
    }

    /// Look for exited workers; each is reported once its output is drained.
    fn reap(&mut self) {
        let ids: Vec<WorkerId> = self.procs.keys().copied().collect();
        for worker in ids {
            let pid = self.procs[&worker].pid;
            match process::try_reap(pid) {
                Ok(None) => {}
                Ok(Some(status)) => self.exited(worker, status),
                Err(e) => {
                    self.event(Event::Warning(format!(
                        "lost track of worker pid {pid}: {e}"
                    )));
                    self.exited(worker, ExitStatus::Code(-1));
                }
            }
        }
    }

    fn exited(&mut self, worker: WorkerId, status: ExitStatus) {
        // Connections it never took go to the others.
        self.channel_closed(worker);
        let Some(proc) = self.procs.remove(&worker) else {
            return;
        };
        let tx = self.internal.clone();
        tokio::spawn(async move {
            // Its output comes before its exit. A pump waiting for room in
            // the event channel (a slow consumer) is waited for as long as it
            // takes; one that has read nothing for a second is given up on: a
            // grandchild that left the process group may hold the pipe open.
            let [mut stdout, mut stderr] = proc.pumps;
            loop {
                let before = stdout.progress.load(Ordering::Relaxed)
                    + stderr.progress.load(Ordering::Relaxed);
                let drained = async {
                    let _ = (&mut stdout.task).await;
                    let _ = (&mut stderr.task).await;
                };
                if tokio::time::timeout(Duration::from_secs(1), drained)
                    .await
                    .is_ok()
                {
                    break;
                }
                let after = stdout.progress.load(Ordering::Relaxed)
                    + stderr.progress.load(Ordering::Relaxed);
                let blocked = stdout.blocked.load(Ordering::Relaxed)
                    || stderr.blocked.load(Ordering::Relaxed);
                if after == before && !blocked {
                    break;
                }
            }
            let _ = tx.send(Internal::Exited { worker, status });
        });
    }

    fn internal(&mut self, msg: Internal) {
        match msg {
            Internal::Timer(timer) => self.input(Input::Timer(timer)),
            Internal::Exited { worker, status } => self.input(Input::Exited { worker, status }),
            Internal::Forked { worker, pid } => {
                let early = self.claim_ready(pid);
                if let Some(s) = self.starting.get_mut(&worker) {
                    s.pid = Some(pid);
                    s.ready_early |= early;
                    if s.kill {
                        kill_starting(pid);
                    }
                }
            }
            Internal::Accepted { key, conn } => self.dispatch(&key, conn),
            Internal::AnswerDue { worker } => self.answer_due(worker),
            Internal::SpawnDone {
                worker,
                result,
                channel,
            } => self.spawn_done(worker, result, channel),
            Internal::StopSignal { worker } => self.stop_signal(worker),
            Internal::Notify { pid, text } => {
                if !text.lines().any(|l| l.trim() == "READY=1") {
                    return;
                }
                if let Some(worker) = self.worker_of_pid(pid) {
                    self.input(Input::Ready { worker });
                } else if let Some(s) = self.starting_of_pid(pid) {
                    // Faster than herd noticed its exec: remembered for then.
                    s.ready_early = true;
                } else {
                    // Faster than herd learned its pid: kept for `Forked`.
                    let now = Instant::now();
                    self.unclaimed_ready
                        .retain(|(_, at)| now.duration_since(*at) < UNCLAIMED_READY_FOR);
                    if self.unclaimed_ready.len() >= UNCLAIMED_READY_MAX {
                        self.unclaimed_ready.pop_front();
                    }
                    // By its group: a worker leads its own (pgid = pid).
                    let group = nix::unistd::getpgid(Some(pid)).unwrap_or(pid);
                    self.unclaimed_ready.push_back((group, now));
                }
            }
        }
    }

    /// What a worker's channel reader delivered.
    fn worker_message(&mut self, msg: FromWorker) {
        match msg {
            FromWorker::Message { worker, value } => self.message(worker, value),
            FromWorker::BadMessage { worker, error } => {
                if let Some(p) = self.procs.get(&worker) {
                    self.event(Event::Warning(format!(
                        "worker {} (pid {}) sent a message that is not JSON ({error}); ignored it",
                        p.slot, p.pid
                    )));
                }
            }
            FromWorker::Oversized {
                worker,
                size,
                complete,
            } => {
                if let Some(p) = self.procs.get(&worker) {
                    let max = self.spec.max_message_bytes;
                    let at_least = if complete { "" } else { "at least " };
                    self.event(Event::Warning(format!(
                        "worker {} (pid {}) sent an IPC message of {at_least}{} ({size} bytes), over the limit of {} (max_message_bytes); refused it and skipped to the next message",
                        p.slot,
                        p.pid,
                        crate::describe::bytes(size as u64),
                        crate::describe::bytes(max as u64),
                    )));
                }
            }
            FromWorker::Closed { worker } => self.channel_closed(worker),
        }
    }

    /// Did the child `pid` (or a process in its group) say `READY=1`
    /// before herd knew it?
    fn claim_ready(&mut self, pid: Pid) -> bool {
        let now = Instant::now();
        self.unclaimed_ready
            .retain(|(_, at)| now.duration_since(*at) < UNCLAIMED_READY_FOR);
        match self.unclaimed_ready.iter().position(|(p, _)| *p == pid) {
            Some(i) => {
                self.unclaimed_ready.remove(i);
                true
            }
            None => false,
        }
    }

    /// A worker still being spawned whose pid (or group) is `pid`.
    fn starting_of_pid(&mut self, pid: Pid) -> Option<&mut Starting> {
        let group = nix::unistd::getpgid(Some(pid)).ok();
        self.starting
            .values_mut()
            .find(|s| s.pid.is_some() && (s.pid == Some(pid) || s.pid == group))
    }

    /// The worker a pid belongs to: the worker itself or a process in its group.
    fn worker_of_pid(&self, pid: Pid) -> Option<WorkerId> {
        let group = nix::unistd::getpgid(Some(pid)).ok();
        self.procs
            .iter()
            .find(|(_, p)| p.pid == pid || Some(p.pid) == group)
            .map(|(w, _)| *w)
    }

    fn message(&mut self, worker: WorkerId, value: serde_json::Value) {
        if node::is_internal(&value) {
            return self.node_message(worker, value);
        }
        let Some(p) = self.procs.get(&worker) else {
            return;
        };
        let (slot, pid) = (p.slot, p.pid.as_raw() as u32);
        if self.spec.ready.wait_ready && value == serde_json::Value::String("ready".into()) {
            self.input(Input::Ready { worker });
        }
        self.event(Event::Message {
            slot,
            pid,
            message: value,
        });
    }
}

/// Kill a child whose exec herd has not seen yet: the process itself (it may
/// not have made its own process group yet) and its group.
fn kill_starting(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let _ = process::signal_group(pid, Signal::SIGKILL);
}

fn start_pump(
    fd: OwnedFd,
    slot: Slot,
    pid: u32,
    stream: Stream,
    events: mpsc::Sender<Timed>,
) -> Pump {
    let progress = Arc::new(AtomicU64::new(0));
    let blocked = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(pump(
        fd,
        PumpInfo {
            slot,
            pid,
            stream,
            progress: progress.clone(),
            blocked: blocked.clone(),
        },
        events,
    ));
    Pump {
        task,
        progress,
        blocked,
    }
}

struct PumpInfo {
    slot: Slot,
    pid: u32,
    stream: Stream,
    progress: Arc<AtomicU64>,
    blocked: Arc<AtomicBool>,
}

impl PumpInfo {
    /// Deliver a batch of whole lines, waiting for room; false when nobody
    /// listens any more.
    async fn deliver(&self, events: &mpsc::Sender<Timed>, lines: Vec<u8>) -> bool {
        let event = timed(Event::Output {
            slot: self.slot,
            pid: self.pid,
            stream: self.stream,
            lines,
        });
        let sent = match events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.blocked.store(true, Ordering::Relaxed);
                let sent = events.send(event).await.is_ok();
                self.blocked.store(false, Ordering::Relaxed);
                sent
            }
        };
        self.progress.fetch_add(1, Ordering::Relaxed);
        sent
    }
}

thread_local! {
    /// One pipe read's worth of room, shared by the output pumps that run on
    /// this thread (a read copies out what it got before the next await).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

/// Forward a worker's output as whole lines, with backpressure: the next
/// read waits until the batch before it found room in the event channel, so
/// a slow consumer leaves the data in the pipe and the worker waits in
/// `write`. A line is never split, except one longer than [`MAX_LINE`],
/// which is cut there (the rest follows as the next line). A last line
/// without a newline gets one. Memory: one unfinished line (at most
/// [`MAX_LINE`]); reads go through the thread's shared scratch buffer.
async fn pump(fd: OwnedFd, info: PumpInfo, events: mpsc::Sender<Timed>) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    // Only an unfinished line stays here between reads: an idle worker's
    // pumps hold no buffer (a daemon runs hundreds of them).
    let mut buf: Vec<u8> = Vec::new();
    // Where the unfinished line starts in `buf`.
    let mut line_start = 0;
    loop {
        if pipe.readable().await.is_err() {
            break;
        }
        let mut scan = buf.len();
        // Read into the thread's scratch buffer, keep just the bytes read.
        let read = SCRATCH.with_borrow_mut(|scratch| {
            let n = pipe.try_read(scratch)?;
            buf.extend_from_slice(&scratch[..n]);
            Ok::<_, io::Error>(n)
        });
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        info.progress.fetch_add(1, Ordering::Relaxed);
        loop {
            // A line ends at its newline, or is cut after MAX_LINE bytes.
            let limit = line_start + MAX_LINE;
            let end = buf.len().min(limit + 1);
            match buf[scan..end].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    line_start = scan + i + 1;
                    scan = line_start;
                }
                None if buf.len() > limit => {
                    buf.insert(limit, b'\n');
                    line_start = limit + 1;
                    scan = line_start;
                }
                None => break,
            }
        }
        if line_start == 0 {
            continue;
        }
        let rest = buf.split_off(line_start);
        let lines = std::mem::replace(&mut buf, rest);
        line_start = 0;
        if !info.deliver(&events, lines).await {
            return;
        }
    }
    if !buf.is_empty() {
        buf.push(b'\n');
        info.deliver(&events, buf).await;
    }
}

/// Write queued messages to a worker, one whole line at a time.
async fn write_channel(channel: Arc<Channel>, mut outbox: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(out) = outbox.recv().await {
        if channel.send(&out.line, out.fd.as_deref()).await.is_err() {
            break;
        }
    }
}

/// Read a worker's channel: newline-delimited JSON, fds alongside. One
/// message is at most `max` bytes: a longer one is refused (reported as
/// `Oversized`) and skipped up to its newline without being kept, so memory
/// stays at `max` plus one read. Each message waits for room in the bounded
/// queue to the app task before the next read: a flood backs up into the
/// socket and then into the worker's `send`.
async fn read_channel(
    channel: Arc<Channel>,
    worker: WorkerId,
    max: usize,
    tx: mpsc::Sender<FromWorker>,
) {
    let mut buf = Vec::with_capacity(4096);
    let mut fds = Vec::new();
    // Complete messages before `start` were handled; `scanned` bytes of the
    // current one hold no newline.
    let mut scanned = 0;
    // Bytes of an oversized message dropped so far (skipping to its newline).
    let mut skipped: Option<usize> = None;
    loop {
        let closed = match channel.recv(&mut buf, &mut fds).await {
            Ok(0) => fds.is_empty(),
            Ok(_) => false,
            Err(_) => true,
        };
        if closed {
            if let Some(size) = skipped {
                let _ = tx
                    .send(FromWorker::Oversized {
                        worker,
                        size: size + buf.len(),
                        complete: false,
                    })
                    .await;
            }
            let _ = tx.send(FromWorker::Closed { worker }).await;
            break;
        }
        // No fd is expected from a worker yet; closing them keeps us from leaking.
        fds.clear();
        let mut start = 0;
        while let Some(i) = buf[start + scanned..].iter().position(|&b| b == b'\n') {
            let end = start + scanned + i;
            let msg = if let Some(dropped) = skipped.take() {
                Some(FromWorker::Oversized {
                    worker,
                    size: dropped + (end - start),
                    complete: true,
                })
            } else if end - start > max {
                Some(FromWorker::Oversized {
                    worker,
                    size: end - start,
                    complete: true,
                })
            } else if buf[start..end].iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(
                    match serde_json::from_slice::<serde_json::Value>(&buf[start..end]) {
                        Ok(value) => FromWorker::Message { worker, value },
                        Err(e) => FromWorker::BadMessage {
                            worker,
                            error: e.to_string(),
                        },
                    },
                )
            };
            if let Some(msg) = msg {
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            start = end + 1;
            scanned = 0;
        }
        buf.drain(..start);
        scanned = buf.len();
        if skipped.is_some() || buf.len() > max {
            // Over the cap with no end in sight: drop it as it comes.
            skipped = Some(skipped.unwrap_or(0) + buf.len());
            buf.clear();
            scanned = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_retain(
            nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_GETFL).unwrap(),
        );
        nix::fcntl::fcntl(
            &r,
            nix::fcntl::FcntlArg::F_SETFL(flags | nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        (r, std::fs::File::from(w))
    }

    /// Every line the pump delivered, in order.
    async fn lines_of(events: &mut Events) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(e) = events.recv().await {
            let Event::Output { lines, .. } = e else {
                panic!("not output")
            };
            assert!(lines.ends_with(b"\n"), "a batch holds whole lines");
            out.extend(lines.split_inclusive(|&b| b == b'\n').map(|l| l.to_vec()));
        }
        out
    }

    #[tokio::test]
    async fn output_carries_the_time_it_was_read() {
        let (r, mut w) = pipe();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut rx = Events { rx };
        let _pump = start_pump(r, 0, 1, Stream::Stdout, tx);
        let before = std::time::SystemTime::now();
        w.write_all(b"hello\n").unwrap();
        drop(w);
        let (at, event) = rx.recv_timed().await.expect("an event");
        assert!(matches!(event, Event::Output { .. }), "{event:?}");
        assert!(at >= before && at <= std::time::SystemTime::now());
    }

    #[tokio::test]
    async fn pump_cuts_long_lines_at_exactly_max_line_and_ends_the_last_one() {
        let (r, mut w) = pipe();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut rx = Events { rx };
        let pump = start_pump(r, 0, 1, Stream::Stdout, tx);
        let writer = std::thread::spawn(move || {
            let exact = vec![b'a'; MAX_LINE];
            w.write_all(&exact).unwrap();
            w.write_all(b"\n").unwrap();
            w.write_all(&vec![b'b'; MAX_LINE + 5]).unwrap();
            w.write_all(b"\nshort\ntail").unwrap();
        });
        let lines = lines_of(&mut rx).await;
        writer.join().unwrap();
        pump.task.await.unwrap();
        let shape: Vec<(u8, usize)> = lines.iter().map(|l| (l[0], l.len() - 1)).collect();
        assert_eq!(
            shape,
            vec![
                (b'a', MAX_LINE),
                (b'b', MAX_LINE),
                (b'b', 5),
                (b's', 5),
                (b't', 4)
            ],
            "a line of exactly MAX_LINE is whole; a longer one is cut there; the last gets its newline"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pump_stops_reading_while_the_consumer_is_behind_and_loses_nothing() {
        let (r, mut w) = pipe();
        let (tx, rx) = mpsc::channel(1);
        let mut rx = Events { rx };
        let pump = start_pump(r, 0, 1, Stream::Stdout, tx);
        const N: usize = 100_000;
        let writer = std::thread::spawn(move || {
            for i in 0..N {
                writeln!(w, "line {i:>8} {}", "x".repeat(80)).unwrap();
            }
        });
        // Nobody reads: the writer is held back by the full pipe (10 MB
        // cannot fit in a 64 KiB pipe and one queued batch).
        let stalled = Instant::now();
        while stalled.elapsed() < Duration::from_millis(300) {
            assert!(
                !writer.is_finished(),
                "the writer must wait for the consumer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            pump.blocked.load(Ordering::Relaxed),
            "the pump waits for room"
        );
        let lines = lines_of(&mut rx).await;
        writer.join().unwrap();
        assert_eq!(lines.len(), N);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(
                *l,
                format!("line {i:>8} {}\n", "x".repeat(80)).into_bytes(),
                "line {i}"
            );
        }
    }

    /// Everything the reader hands over, rendered for comparison.
    async fn read_all(
        worker_side: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
        max: usize,
    ) -> Vec<String> {
        let (ours, theirs) = channel::pair().unwrap();
        let channel = Arc::new(Channel::new(ours).unwrap());
        let (tx, mut rx) = mpsc::channel(MESSAGE_QUEUE);
        let reader = tokio::spawn(read_channel(channel, WorkerId(7), max, tx));
        let writer = std::thread::spawn(move || worker_side(theirs.into()));
        let mut out = Vec::new();
        while let Some(m) = rx.recv().await {
            out.push(match m {
                FromWorker::Message { value, .. } => format!("message {value}"),
                FromWorker::BadMessage { .. } => "bad".to_string(),
                FromWorker::Oversized { size, complete, .. } => {
                    format!("oversized {size} {complete}")
                }
                FromWorker::Closed { .. } => "closed".to_string(),
            });
        }
        writer.join().unwrap();
        reader.await.unwrap();
        out
    }

    #[tokio::test]
    async fn channel_refuses_oversized_messages_and_resynchronises() {
        let got = read_all(
            |mut w| {
                w.write_all(b"{\"a\":1}\n").unwrap();
                // Over the cap, sent in pieces; then one exactly at the cap.
                let big = format!("\"{}\"\n", "z".repeat(3_000_000));
                for piece in big.as_bytes().chunks(100_000) {
                    w.write_all(piece).unwrap();
                }
                w.write_all(format!("\"{}\"\n{{\"b\":2}}\n", "y".repeat(1000 - 2)).as_bytes())
                    .unwrap();
                w.write_all(b"not json\n\"cut\"").unwrap();
                // Closed in the middle of an oversized message.
                w.write_all(&vec![b'q'; 5000]).unwrap();
            },
            1000,
        )
        .await;
        let y = format!("message \"{}\"", "y".repeat(998));
        assert_eq!(
            got,
            vec![
                "message {\"a\":1}".to_string(),
                "oversized 3000002 true".into(),
                y,
                "message {\"b\":2}".into(),
                "bad".into(),
                "oversized 5005 false".into(),
                "closed".into(),
            ]
        );
    }

    #[test]
    fn events_round_trip_as_json() {
        use crate::machine::{Next, Report};
        let events = vec![
            Event::Lifecycle(Report::Exited {
                slot: 1,
                pid: 42,
                status: ExitStatus::Signal(Signal::SIGKILL),
                uptime: Duration::from_millis(1500),
                next: Next::RestartIn(Duration::from_millis(100)),
            }),
            Event::Output {
                slot: 0,
                pid: 7,
                stream: Stream::Stderr,
                lines: b"oops\n".to_vec(),
            },
            Event::Exit(crate::machine::Outcome::Stopped),
        ];
        let text = serde_json::to_string(&events).unwrap();
        assert!(text.contains(r#""uptime":1500"#), "{text}");
        assert!(text.contains(r#""signal":"SIGKILL""#), "{text}");
        assert!(text.contains(r#""lines":"oops\n""#), "{text}");
        let back: Vec<Event> = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }
}
