//! The driver: one tokio task per app that owns the app's [`Machine`], its
//! listening sockets, and its worker processes, and turns the machine's
//! actions into real effects (spawn, signal, kill, timers) and real happenings
//! (exits, readiness, messages) back into inputs.
//!
//! Everything about one app lives in that task, so there are no locks: other
//! tasks (output pumps, channel readers, timers, the notify socket) only send
//! it messages. Many apps can run in one process (the daemon); each has its
//! own task, notify socket and SIGCHLD subscription.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::config::{AppSpec, Balance, ListenAddr, WorkerKind};
use crate::machine::{
    Action, Command, Input, Machine, Outcome, Policy, Readiness, Report, Slot, Timer, WorkerId,
};
use crate::os::channel::{self, Channel};
use crate::os::notify::NotifySocket;
use crate::os::process::{self, ExitStatus};
use crate::os::socket;
use crate::os::spawn::{self, SpawnSpec};

mod node;
mod round_robin;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What an app tells the outside world.
#[derive(Debug)]
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

/// The stream of an app's [`Event`]s, from [`start`].
pub type Events = mpsc::UnboundedReceiver<Event>;

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
    Command(Command),
    Send {
        to: Target,
        message: serde_json::Value,
    },
    Status(tokio::sync::oneshot::Sender<AppStatus>),
    Signal {
        to: Target,
        signal: Signal,
    },
    Update(Box<AppSpec>),
}

/// An app's workers as they are now, from [`AppHandle::status`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AppStatus {
    pub name: String,
    /// Where each listener is bound (the real port for port 0).
    pub listeners: Vec<(String, ListenAddr)>,
    #[serde(flatten)]
    pub machine: crate::machine::Snapshot,
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
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Command(c) => write!(f, "Command({c:?})"),
            Request::Send { to, .. } => write!(f, "Send({to:?})"),
            Request::Status(_) => f.write_str("Status"),
            Request::Signal { to, signal } => write!(f, "Signal({to:?}, {signal})"),
            Request::Update(spec) => write!(f, "Update({})", spec.name),
        }
    }
}

impl AppHandle {
    /// Ask the app to do something; a command after the app finished is ignored.
    pub fn command(&self, command: Command) {
        let _ = self.tx.send(Request::Command(command));
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
    /// mode cannot change this way.
    pub fn update(&self, current: &AppSpec, spec: AppSpec) -> Result<(), UpdateError> {
        if spec.listeners != current.listeners || spec.balance != current.balance {
            return Err(UpdateError::Listeners);
        }
        self.tx
            .send(Request::Update(Box::new(spec)))
            .map_err(|_| UpdateError::Gone)
    }

    /// True once the app's task has ended.
    pub fn is_finished(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Bind the app's listeners, then start its task and its workers. Must be
/// called inside a tokio runtime. Fails, with nothing started, if a listener
/// cannot be bound.
pub fn start(spec: AppSpec) -> Result<(AppHandle, mpsc::UnboundedReceiver<Event>), StartError> {
    let (events, events_rx) = mpsc::unbounded_channel();
    let mut listeners = Vec::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let ephemeral = matches!(l.addr, ListenAddr::Tcp(a) if a.port() == 0);
        if !ephemeral && spec.listeners[..i].iter().any(|other| other.addr == l.addr) {
            return Err(StartError::Duplicate(l.addr.clone()));
        }
        let reuseport = spec.balance == Balance::ReusePort;
        let fd = bind(&l.addr, reuseport)?;
        let addr = socket::local_addr(&fd).unwrap_or_else(|_| l.addr.clone());
        let _ = events.send(Event::Listening {
            name: l.name.clone(),
            addr: addr.clone(),
        });
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
        events,
        internal,
    };
    tokio::spawn(app.run(rx, internal_rx));
    let handle = AppHandle { tx };
    handle.command(Command::Start);
    Ok((handle, events_rx))
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
    pumps: [tokio::task::JoinHandle<()>; 2],
    /// Its side of the cluster protocol (Node workers, round-robin workers).
    peer: node::Peer,
}

struct Outgoing {
    line: Vec<u8>,
    /// Shared with whoever may need to send it again (round-robin retries).
    fd: Option<Arc<OwnedFd>>,
}

/// Messages from the app's helper tasks to the app task.
enum Internal {
    Timer(Timer),
    /// A worker's process ended and its output was drained.
    Exited {
        worker: WorkerId,
        status: ExitStatus,
    },
    /// A JSON value arrived on a worker's channel.
    Message {
        worker: WorkerId,
        value: serde_json::Value,
    },
    /// A worker's channel sent something that is not JSON.
    BadMessage {
        worker: WorkerId,
        error: String,
    },
    /// The notify socket got a datagram.
    Notify {
        pid: Pid,
        text: String,
    },
    /// The worker's channel reached EOF.
    ChannelClosed {
        worker: WorkerId,
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
    events: mpsc::UnboundedSender<Event>,
    internal: mpsc::UnboundedSender<Internal>,
}

impl App {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
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
        while !self.machine.finished() {
            tokio::select! {
                Some(request) = requests.recv() => self.request(request),
                Some(msg) = internal.recv() => self.internal(msg),
                _ = sigchld.recv() => self.reap(),
                _ = poll.tick() => self.reap(),
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
            Request::Command(c) => self.input(Input::Command(c)),
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
            Request::Update(spec) => {
                let instances = spec.instances;
                self.spec = *spec;
                self.machine.set_policy(policy_for(&self.spec));
                if instances != self.machine.instances() {
                    self.input(Input::Command(Command::Scale(instances)));
                }
                self.input(Input::Command(Command::Reload));
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
        }
    }

    fn event(&self, event: Event) {
        let _ = self.events.send(event);
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
                let input = match self.spawn(slot, worker) {
                    Ok(pid) => Input::Spawned {
                        worker,
                        pid: pid.as_raw() as u32,
                    },
                    Err(e) => Input::SpawnFailed {
                        worker,
                        error: e.to_string(),
                    },
                };
                self.input(input);
            }
            Action::Stop { worker } => self.stop(worker),
            Action::Kill { worker } => {
                if let Some(p) = self.procs.get(&worker) {
                    let _ = process::signal_group(p.pid, Signal::SIGKILL);
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

    fn spawn(&mut self, slot: Slot, worker: WorkerId) -> io::Result<Pid> {
        let mut fds = if self.generic_round_robin() {
            Vec::new()
        } else {
            self.slot_fds(slot)?
        };
        let listen_fds = fds.len();
        let (ours, theirs) = channel::pair()?;
        let channel_fd = 3 + fds.len();
        fds.push(theirs.as_raw_fd());

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
        let spawned = spawn::spawn(&SpawnSpec {
            program: self.spec.program.clone(),
            argv,
            env,
            cwd: self.spec.cwd.clone(),
            fds,
            set_listen_pid: listen_fds > 0,
        })?;
        drop(theirs);
        let pid = spawned.pid;
        let raw_pid = pid.as_raw() as u32;

        // Output pumps; the exit is reported only after both drained.
        let stdout = tokio::spawn(pump(
            spawned.stdout,
            slot,
            raw_pid,
            Stream::Stdout,
            self.events.clone(),
        ));
        let stderr = tokio::spawn(pump(
            spawned.stderr,
            slot,
            raw_pid,
            Stream::Stderr,
            self.events.clone(),
        ));

        let channel = Arc::new(Channel::new(ours)?);
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_channel(channel.clone(), outbox_rx));
        tokio::spawn(read_channel(channel, worker, self.internal.clone()));

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
        Ok(pid)
    }

    fn stop(&mut self, worker: WorkerId) {
        if !self.node_stop(worker) {
            self.signal_stop(worker);
        }
    }

    /// Ask the worker to finish: the kill signal to its group, or the message.
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
            // A grandchild that left the process group may hold the pipes open.
            let [stdout, stderr] = proc.pumps;
            let drained = async move {
                let _ = stdout.await;
                let _ = stderr.await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
            let _ = tx.send(Internal::Exited { worker, status });
        });
    }

    fn internal(&mut self, msg: Internal) {
        match msg {
            Internal::Timer(timer) => self.input(Input::Timer(timer)),
            Internal::Exited { worker, status } => self.input(Input::Exited { worker, status }),
            Internal::Message { worker, value } => self.message(worker, value),
            Internal::BadMessage { worker, error } => {
                if let Some(slot) = self.machine.slot_of(worker) {
                    self.event(Event::Warning(format!(
                        "worker {slot} sent a message that is not JSON ({error}); ignored it"
                    )));
                }
            }
            Internal::ChannelClosed { worker } => self.channel_closed(worker),
            Internal::Accepted { key, conn } => self.dispatch(&key, conn),
            Internal::AnswerDue { worker } => self.answer_due(worker),
            Internal::StopSignal { worker } => self.stop_signal(worker),
            Internal::Notify { pid, text } => {
                let Some(worker) = self.worker_of_pid(pid) else {
                    return;
                };
                if text.lines().any(|l| l.trim() == "READY=1") {
                    self.input(Input::Ready { worker });
                }
            }
        }
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

/// Forward a worker's output as whole lines. A line is never split (up to
/// 1 MiB; a longer one is cut there) and a worker is never blocked: the pipe
/// is read as fast as it fills.
async fn pump(
    fd: OwnedFd,
    slot: Slot,
    pid: u32,
    stream: Stream,
    events: mpsc::UnboundedSender<Event>,
) {
    const MAX_LINE: usize = 1 << 20;
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let cut = match buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if buf.len() >= MAX_LINE => {
                buf.push(b'\n');
                buf.len()
            }
            None => continue,
        };
        let rest = buf.split_off(cut);
        let lines = std::mem::replace(&mut buf, rest);
        if events
            .send(Event::Output {
                slot,
                pid,
                stream,
                lines,
            })
            .is_err()
        {
            return;
        }
    }
    if !buf.is_empty() {
        buf.push(b'\n');
        let _ = events.send(Event::Output {
            slot,
            pid,
            stream,
            lines: buf,
        });
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

/// Read a worker's channel: newline-delimited JSON, fds alongside.
async fn read_channel(
    channel: Arc<Channel>,
    worker: WorkerId,
    tx: mpsc::UnboundedSender<Internal>,
) {
    /// A single message larger than this is dropped, not buffered forever.
    const MAX_MESSAGE: usize = 64 << 20;
    let mut buf = Vec::with_capacity(4096);
    let mut fds = Vec::new();
    let mut scanned = 0;
    let mut skipping = false;
    loop {
        match channel.recv(&mut buf, &mut fds).await {
            Ok(0) if fds.is_empty() => {
                let _ = tx.send(Internal::ChannelClosed { worker });
                break;
            }
            Ok(_) => {}
            Err(_) => {
                let _ = tx.send(Internal::ChannelClosed { worker });
                break;
            }
        }
        // No fd is expected from a worker yet; closing them keeps us from leaking.
        fds.clear();
        while let Some(i) = buf[scanned..].iter().position(|&b| b == b'\n') {
            let end = scanned + i;
            if !skipping {
                let msg = match serde_json::from_slice::<serde_json::Value>(&buf[..end]) {
                    Ok(value) => Internal::Message { worker, value },
                    Err(e) => Internal::BadMessage {
                        worker,
                        error: e.to_string(),
                    },
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            skipping = false;
            buf.drain(..=end);
            scanned = 0;
        }
        scanned = buf.len();
        if buf.len() > MAX_MESSAGE {
            let _ = tx.send(Internal::BadMessage {
                worker,
                error: format!("a message longer than {} MiB", MAX_MESSAGE >> 20),
            });
            buf.clear();
            scanned = 0;
            skipping = true;
        }
    }
}
