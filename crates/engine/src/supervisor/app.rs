//! The app task: the one loop that owns an app's state and its wiring, takes
//! what happens (requests, the workers' messages, their exits, timers,
//! accepted client connections), feeds the machine, and carries out what
//! the machine and the parts ask for.
//!
//! Everything about one app lives in this task, so there are no locks: the
//! helper tasks (output pumps, channel readers and writers, accept loops,
//! the notify socket) only send it messages.
//!
//! The state ([`AppState`]) is plain data, each part owning its own: the
//! machine (slots and workers' lifecycle), the listeners, the worker
//! processes, the cluster primary (servers, round-robin), the pending
//! timers. The wiring ([`Wiring`]) is what lives only in this process —
//! channels, tasks, fds registered with the reactor — and can be made
//! again from the state.
//!
//! The task never awaits the consumer: its own events (lifecycle, warnings,
//! messages) go to a small queue it flushes when the event channel has
//! room, alongside its other work, so timers, exits, signals and the
//! cluster protocol keep running while a consumer is slow — no deadlock
//! between the task and the output pumps, which share the channel. While
//! that queue is over [`PENDING_LIMIT`] the task takes no worker message
//! (the messages wait in their bounded queue, then in the workers'
//! sockets); what remains (lifecycle reports) is bounded by the processes'
//! own activity, not by what a worker writes.
//!
//! Spawning never blocks the loop for longer than a fork: the fork happens
//! on the spawner thread, or in line where the loop runs on the main thread
//! (`os::spawn`), the exec is awaited by a helper task, and the child is
//! tracked (killable, reaped) from the moment its pid is known.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::cluster::protocol::{self, ServerKey};
use super::cluster::round_robin::Accepting;
use super::cluster::{Cluster, ClusterConfig, Cx, Effect, Effects, DISCONNECT_GRACE};
use super::events::{timed, AppStatus, Event, Events, RoundRobinStats, Stream, Timed, EVENT_QUEUE};
use super::handover::{FreezeError, Frozen, Leftovers};
use super::ipc::{self, FromWorker, Outgoing, MESSAGE_QUEUE};
use super::listeners::{Held, Listeners};
use super::output::{self, start_pump};
use super::reload::{Check, Reloads, LISTEN_POLL};
use super::timers::{Timers, Wake};
use super::triggers::{self, Do, Triggers, Watcher};
use super::workers::{self, Notified, WorkerStart, WorkerWiring, Workers};
use crate::clock::MonoTime;
use crate::config::{AppSpec, Counting, ExecMode, WorkerKind};
use crate::exit::ExitStatus;
use crate::machine::{
    Action, Command, Input, Late, Machine, Next, Policy, Readiness, Report, Slot, Ticket, Timer,
    WorkerId,
};
use crate::os::channel::Channel;
use crate::os::notify::NotifySocket;
use crate::os::process;
use crate::os::spawn::{self, Spawned};

/// The app task stops taking worker messages while this many of its own
/// events wait for room in the event channel.
const PENDING_LIMIT: usize = 16;
/// How often a freezing app checks whether it has settled.
const FREEZE_POLL: Duration = Duration::from_millis(2);
/// SIGCHLD can coalesce, and a child may exit between a check and the
/// subscription: a slow poll backs the signal up.
const REAP_POLL: Duration = Duration::from_millis(500);

/// Whom a message or a signal goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    All,
    Slot(Slot),
}

/// What an [`super::AppHandle`] asks of the app task.
pub(crate) enum Request {
    /// `Some`: answered with `Report::Answered` (see [`super::AppHandle::ask`]).
    Command(Command, Option<Ticket>),
    Send {
        to: Target,
        message: serde_json::Value,
    },
    Status(oneshot::Sender<AppStatus>),
    Signal {
        to: Target,
        signal: Signal,
    },
    /// The reload onto it is answered with this ticket.
    Update(Box<AppSpec>, Ticket),
    /// Pause the app and hand over its whole state (an in-place upgrade).
    Freeze(oneshot::Sender<Result<Frozen, FreezeError>>),
    /// Stop, keeping the listening sockets open for the app's next start.
    StopKeepingSockets(oneshot::Sender<Held>),
    /// The app's whole state, as JSON (tests: it must stay plain data).
    #[cfg(test)]
    State(oneshot::Sender<serde_json::Value>),
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Command(c, t) => write!(f, "Command({c:?}, {t:?})"),
            Request::Send { to, .. } => write!(f, "Send({to:?})"),
            Request::Status(_) => f.write_str("Status"),
            Request::Signal { to, signal } => write!(f, "Signal({to:?}, {signal})"),
            Request::Update(spec, t) => write!(f, "Update({}, {t:?})", spec.name),
            Request::Freeze(_) => f.write_str("Freeze"),
            Request::StopKeepingSockets(_) => f.write_str("StopKeepingSockets"),
            #[cfg(test)]
            Request::State(_) => f.write_str("State"),
        }
    }
}

/// What the app's helper tasks tell the app task.
pub(super) enum FromTask {
    /// A worker's process ended and its output was drained.
    Exited {
        worker: WorkerId,
        status: ExitStatus,
    },
    /// The notify socket got a datagram.
    Notify { pid: Pid, text: String },
    /// The fork of a worker returned: the child exists.
    Forked { worker: WorkerId, pid: Pid },
    /// The worker's exec succeeded (or it could not be started at all).
    SpawnDone {
        worker: WorkerId,
        result: io::Result<Spawned>,
        channel: Arc<Channel>,
    },
    /// herd accepted a client connection on a round-robin server.
    Accepted { key: ServerKey, fd: OwnedFd },
}

/// Everything one app is, as plain data: what a new herd binary would need
/// to take the app over (with the fds the state names kept open).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AppState {
    pub(crate) spec: AppSpec,
    /// What every worker's environment starts from.
    base_env: Vec<(OsString, OsString)>,
    pub(crate) machine: Machine,
    pub(crate) listeners: Listeners,
    pub(crate) workers: Workers,
    pub(crate) cluster: Cluster,
    pub(crate) timers: Timers,
    /// How reloads replace the workers, and successors held until they listen.
    #[serde(default)]
    pub(crate) reloads: Reloads,
    /// The watch and cron triggers.
    pub(crate) triggers: Triggers,
    /// The app's notify socket (`NOTIFY_SOCKET` in every worker): owned by
    /// the wiring; its number and name let a new binary take it over.
    pub(super) notify: NotifyRecord,
}

/// Where the app's notify socket is.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct NotifyRecord {
    pub(super) fd: RawFd,
    /// `@herd/<pid>/<n>`: the abstract name workers send to.
    pub(super) name: String,
}

/// What the app task holds besides its state: its channels, its helper
/// tasks, and the fds registered with the reactor. Made again from the
/// state, never written out.
pub(super) struct Wiring {
    pub(super) notify: Arc<NotifySocket>,
    pub(super) events: mpsc::Sender<Timed>,
    /// The app's own events waiting for room in `events` (see the module docs).
    pub(super) pending: VecDeque<Timed>,
    pub(super) tasks: mpsc::UnboundedSender<FromTask>,
    pub(super) messages: mpsc::Sender<FromWorker>,
    /// Per running worker: its writer's queue and its output pumps.
    pub(super) workers: BTreeMap<WorkerId, WorkerWiring>,
    /// Per round-robin server: herd's accept loop.
    pub(super) accepting: BTreeMap<ServerKey, Accepting>,
    /// The file watcher, when the app has `watch`.
    pub(super) watcher: Option<Watcher>,
    /// Its wake-up: one slot, a flag.
    pub(super) watch_wake: mpsc::Sender<()>,
    /// Exited workers whose output is still being drained (their exit
    /// report follows).
    pub(super) draining: usize,
    /// A freeze was asked for (see `handover`): whom to answer, and until
    /// when the app may take to settle.
    pub(super) freezing: Option<(
        oneshot::Sender<Result<Frozen, FreezeError>>,
        tokio::time::Instant,
    )>,
    /// The app is stopping to be started again (a restart): its listening
    /// sockets go here when it ends, open, instead of being shut down.
    pub(super) keep_sockets: Option<oneshot::Sender<Held>>,
}

/// The receiving ends of an app task's queues.
pub(super) struct Inbox {
    pub(super) requests: mpsc::UnboundedReceiver<Request>,
    pub(super) tasks: mpsc::UnboundedReceiver<FromTask>,
    pub(super) messages: mpsc::Receiver<FromWorker>,
    pub(super) watch: mpsc::Receiver<()>,
}

/// One app's task.
pub(crate) struct App {
    pub(super) state: AppState,
    pub(super) wire: Wiring,
}

/// The machine's policies for a spec. Readiness: with `wait_ready`, the
/// worker's word (`'ready'`, `READY=1`); a worker silent past the listen
/// timeout is online then under pm2's rules (a pm2 file), and aborts the
/// reload it was started for under herd's (`herd run`, herd.toml); a Node
/// cluster worker's `listening`; else the ready delay (a fork-mode Node app
/// binds its own sockets: herd is not told).
pub(super) fn policy_for(spec: &AppSpec) -> Policy {
    let cluster_node = spec.kind == WorkerKind::Node && spec.exec_mode == ExecMode::Cluster;
    Policy {
        restart: spec.restart.clone(),
        readiness: if spec.ready.wait_ready {
            Readiness::Signalled {
                late: match spec.restart.counting {
                    Counting::Pm2(_) => Late::Ready,
                    Counting::Herd => Late::Abort,
                },
            }
        } else if cluster_node {
            Readiness::Signalled { late: Late::Abort }
        } else {
            Readiness::After(spec.ready.ready_delay)
        },
        listen_timeout: spec.ready.listen_timeout,
        kill_timeout: spec.stop.kill_timeout,
        settle_timeout: DISCONNECT_GRACE,
    }
}

impl App {
    /// Start the app's task with its listeners bound (their events first)
    /// and its notify socket; it starts the workers.
    pub(crate) fn start(
        spec: AppSpec,
        listeners: Listeners,
        listening: Vec<Event>,
        notify: NotifySocket,
    ) -> (mpsc::UnboundedSender<Request>, Events) {
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (tasks, tasks_rx) = mpsc::unbounded_channel();
        let (messages, messages_rx) = mpsc::channel(MESSAGE_QUEUE);
        let (watch_wake, watch_rx) = mpsc::channel(1);
        let state = AppState {
            base_env: if spec.inherit_env {
                workers::base_env()
            } else {
                Vec::new()
            },
            machine: Machine::new(policy_for(&spec), spec.instances),
            cluster: Cluster::new(ClusterConfig::of(&spec)),
            spec,
            listeners,
            workers: Workers::default(),
            timers: Timers::default(),
            reloads: Reloads::default(),
            triggers: Triggers::default(),
            notify: NotifyRecord {
                fd: notify.as_raw_fd(),
                name: notify.env_value().to_string(),
            },
        };
        let app = App {
            state,
            wire: Wiring {
                notify: Arc::new(notify),
                events,
                pending: listening.into_iter().map(timed).collect(),
                tasks,
                messages,
                workers: BTreeMap::new(),
                accepting: BTreeMap::new(),
                watcher: None,
                watch_wake,
                draining: 0,
                freezing: None,
                keep_sockets: None,
            },
        };
        let inbox = Inbox {
            requests: requests_rx,
            tasks: tasks_rx,
            messages: messages_rx,
            watch: watch_rx,
        };
        // Boxed: the run loop's future holds the whole app; on the heap, tokio
        // moves and polls a pointer, not that much stack, for the app's life.
        tokio::spawn(Box::pin(app.run(inbox, None)));
        let _ = requests.send(Request::Command(Command::Start, None));
        (requests, Events::new(events_rx))
    }

    /// The app's loop, from its start or (`resumed`) from where a previous
    /// binary froze it. Not an `async fn`: that would move `self` (the
    /// whole app) from its argument into a local, and the future would keep
    /// room for both for the app's life; the block uses the captured one in
    /// place.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub(super) fn run(
        mut self,
        inbox: Inbox,
        resumed: Option<Leftovers>,
    ) -> impl std::future::Future<Output = ()> {
        async move {
            let Inbox {
                mut requests,
                mut tasks,
                mut messages,
                mut watch,
            } = inbox;
            let mut sigchld = match herd_signals::Signal::new(libc::SIGCHLD) {
                Ok(s) => s,
                Err(e) => {
                    self.event(Event::Warning(format!(
                        "cannot watch for worker exits: {e}"
                    )));
                    return;
                }
            };
            let notify = self.wire.notify.clone();
            let notify_tx = self.wire.tasks.clone();
            let notify_task = tokio::spawn(async move {
                while let Ok((pid, text)) = notify.recv().await {
                    if notify_tx.send(FromTask::Notify { pid, text }).is_err() {
                        break;
                    }
                }
            });
            let mut poll = tokio::time::interval(REAP_POLL);
            // The earliest pending timer; re-armed when that changes.
            let timer = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(timer);
            let mut armed: Option<MonoTime> = None;
            match resumed {
                Some(leftovers) => self.resumed(leftovers),
                None => {
                    if self.state.cluster.config().listener_round_robin() {
                        self.with_cluster(|cluster, cx| cluster.open_listener_servers(cx));
                    }
                    self.configure_triggers();
                }
            }
            let events = self.wire.events.clone();
            while !self.state.machine.finished() {
                if self.wire.freezing.is_some() && self.settled() {
                    let (reply, _) = self.wire.freezing.take().expect("freezing");
                    let frozen = crate::memory::on_heap(|| {
                        self.freeze_now(&mut tasks, &mut messages, notify_task)
                    })
                    .await;
                    let _ = reply.send(Ok(frozen));
                    return;
                }
                let freeze_by = self.wire.freezing.as_ref().map(|(_, by)| *by);
                let next = self.state.timers.next();
                if next != armed {
                    if let Some(at) = next {
                        let wait = at.saturating_duration_since(MonoTime::now());
                        timer.as_mut().reset(tokio::time::Instant::now() + wait);
                    }
                    armed = next;
                }
                let backlog = self.wire.pending.len();
                // The handlers are `#[inline(never)]`: this loop is polled for
                // the app's life, and the stack keeps the deepest poll's pages
                // (see `memory::on_heap`); a handler's frame is there only while
                // it runs.
                tokio::select! {
                    Some(request) = requests.recv(), if freeze_by.is_none() => self.request(request),
                    () = tokio::time::sleep_until(freeze_by.unwrap_or_else(tokio::time::Instant::now)), if freeze_by.is_some() => {
                        self.freeze_failed(FreezeError::Busy);
                    }
                    // Settling: look again soon (the writers do not wake the loop).
                    () = tokio::time::sleep(FREEZE_POLL), if freeze_by.is_some() => {}
                    Some(msg) = tasks.recv() => self.task_message(msg),
                    Some(msg) = messages.recv(), if backlog < PENDING_LIMIT => self.worker_message(msg),
                    room = events.reserve(), if backlog > 0 => match room {
                        Ok(permit) => {
                            if let Some(event) = self.wire.pending.pop_front() {
                                permit.send(event);
                            }
                        }
                        // Nobody listens any more: drop what waits.
                        Err(_) => self.wire.pending.clear(),
                    },
                    () = &mut timer, if armed.is_some() => {
                        armed = None;
                        self.fire_timers();
                    }
                    Some(()) = watch.recv() => self.files_changed(),
                    _ = sigchld.recv() => self.reap(),
                    _ = poll.tick() => self.reap(),
                }
                self.settle_accepting();
            }
            if self.wire.freezing.is_some() {
                self.freeze_failed(FreezeError::Finished);
            }
            // A restart's next start takes the sockets (before the consumer
            // sees the end); otherwise they are stopped for good.
            if let Some(keep) = self.wire.keep_sockets.take() {
                if let Err(unwanted) = keep.send(self.state.listeners.keep_for_next_start()) {
                    unwanted.into_shut_down();
                }
            }
            // The last events (the exit among them) reach the consumer.
            while let Some(event) = self.wire.pending.pop_front() {
                if events.send(event).await.is_err() {
                    break;
                }
            }
            notify_task.abort();
            self.state.listeners.close_all();
        }
    }

    #[inline(never)]
    fn request(&mut self, request: Request) {
        match request {
            Request::Command(command, ticket) => self.command(command, ticket),
            Request::Send { to, message } => self.send(to, &message),
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Signal { to, signal } => {
                let targets: Vec<(Slot, Pid)> = self
                    .state
                    .workers
                    .running_workers()
                    .filter(|(_, slot, _)| to == Target::All || to == Target::Slot(*slot))
                    .map(|(_, slot, pid)| (slot, pid))
                    .collect();
                for (slot, pid) in targets {
                    if let Err(e) = process::signal_group(pid, signal) {
                        self.event(Event::Warning(format!(
                            "cannot send {signal} to worker {slot} (pid {pid}): {e}"
                        )));
                    }
                }
            }
            Request::Freeze(reply) => self.begin_freeze(reply),
            Request::StopKeepingSockets(keep) => {
                self.wire.keep_sockets = Some(keep);
                self.state.listeners.keep_all();
                // Round-robin: accept no more; new clients wait in the
                // sockets' queues for the next start's workers.
                self.wire.accepting.clear();
                self.command(Command::Stop, None);
            }
            Request::Update(spec, ticket) => {
                let slots = spec.instances;
                self.state.spec = *spec;
                self.state.machine.set_policy(policy_for(&self.state.spec));
                self.state
                    .cluster
                    .configure(ClusterConfig::of(&self.state.spec));
                if slots != self.state.machine.slot_count() {
                    self.input(Input::Command(Command::Scale(slots)));
                }
                self.configure_triggers();
                self.command(Command::Reload, Some(ticket));
            }
            #[cfg(test)]
            Request::State(reply) => {
                let _ = reply.send(serde_json::to_value(&self.state).expect("the state is data"));
            }
        }
    }

    /// A command for the machine; a reload or a replacement first gets its
    /// order, from what the running workers listen on (see `reload`).
    /// Give the machine `command` (answered with `ticket`, if any); a reload
    /// or a replacement first gets its order (start-first or stop-first).
    fn command(&mut self, command: Command, ticket: Option<Ticket>) {
        let input = |command| match ticket {
            Some(ticket) => Input::Ask { command, ticket },
            None => Input::Command(command),
        };
        let what = match command {
            Command::Reload => "reload".to_string(),
            Command::Replace(slot) => format!("replacing worker {slot}"),
            _ => return self.input(input(command)),
        };
        let mut workers: Vec<(Slot, Pid)> = self
            .state
            .workers
            .running_workers()
            .map(|(_, slot, pid)| (slot, pid))
            .collect();
        workers.sort();
        let choice = self.state.reloads.choose(&what, &workers);
        self.state.machine.set_reload_order(choice.order);
        for note in choice.notes {
            self.event(Event::Warning(note));
        }
        self.input(input(command));
    }

    fn status(&self) -> AppStatus {
        let s = &self.state;
        AppStatus {
            name: s.spec.name.clone(),
            listeners: s
                .listeners
                .of_definition()
                .map(|(_, l)| (l.name.clone(), l.addr.clone()))
                .collect(),
            machine: s.machine.snapshot(MonoTime::now()),
            round_robin: self.round_robin_stats(),
            sockets: s.listeners.shared_sockets(),
        }
    }

    /// Does every slot have a ready worker?
    fn all_ready(&self) -> bool {
        let snapshot = self.state.machine.snapshot(MonoTime::now());
        snapshot.slots.iter().all(|slot| {
            slot.current
                .as_ref()
                .is_some_and(|w| w.phase == crate::machine::WorkerPhase::Ready)
        })
    }

    fn round_robin_stats(&self) -> Vec<RoundRobinStats> {
        let s = &self.state;
        if !s.cluster.has_round_robin() {
            return Vec::new();
        }
        let mut stats: Vec<RoundRobinStats> = s
            .workers
            .running_workers()
            .map(|(worker, slot, pid)| {
                let (handed_over, pending) = s.cluster.round_robin_stats(worker);
                RoundRobinStats {
                    slot,
                    pid: pid.as_raw() as u32,
                    handed_over,
                    pending,
                }
            })
            .collect();
        stats.sort_by_key(|s| (s.slot, s.pid));
        stats
    }

    /// Queue an event for the consumer; never waits (see the module docs).
    pub(super) fn event(&mut self, event: Event) {
        let event = timed(event);
        if self.wire.pending.is_empty() {
            match self.wire.events.try_send(event) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => (),
                Err(mpsc::error::TrySendError::Full(event)) => self.wire.pending.push_back(event),
            }
        } else {
            self.wire.pending.push_back(event);
        }
    }

    pub(super) fn input(&mut self, input: Input) {
        let actions = self.state.machine.handle(MonoTime::now(), input);
        for action in actions {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Spawn { slot, worker } => {
                // Answered later (`FromTask::SpawnDone`), unless it cannot
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
                self.with_cluster(|cluster, cx| cluster.stop_signal(worker, cx));
                // Even if it is gone already: the machine waits for this.
                self.input(Input::StopSignalled { worker });
            }
            Action::Kill { worker } => self.state.workers.kill(worker),
            Action::SetTimer { timer, after } => {
                self.state
                    .timers
                    .set(MonoTime::now(), after, Wake::Machine(timer))
            }
            Action::Report(report) => {
                self.on_report(&report);
                self.event(Event::Lifecycle(report));
            }
            Action::Exit(outcome) => self.event(Event::Exit(outcome)),
        }
    }

    /// What lifecycle events mean for the listeners and the held client
    /// connections.
    fn on_report(&mut self, report: &Report) {
        match report {
            Report::Exited {
                slot,
                next: Next::Errored { .. },
                ..
            } => {
                self.state.listeners.close_slot(*slot);
                // Nobody will serve what waits on a held socket.
                self.state.listeners.drop_held();
            }
            // A slot that stays empty for a while: its reuseport socket
            // would strand its share of new clients meanwhile.
            Report::Exited {
                slot,
                next: Next::RestartIn(delay),
                ..
            } if !delay.is_zero() => self.state.listeners.close_slot_while_empty(*slot),
            Report::Exited {
                slot,
                next: Next::NoRestart | Next::StopExitCode(_),
                ..
            } => self.state.listeners.close_slot_while_empty(*slot),
            Report::Ready { .. } => {
                // Every worker serves: the sockets held for the app that
                // none asked for are not its any more.
                if self.all_ready() {
                    self.state.listeners.drop_held();
                }
                self.with_cluster(|cluster, cx| cluster.flush_all(cx))
            }
            Report::Scaled { slots } => self.state.listeners.close_slots_from(*slots),
            _ => {}
        }
    }

    /// Call the cluster with what it may use, then carry out its effects.
    pub(super) fn with_cluster<R>(&mut self, call: impl FnOnce(&mut Cluster, &mut Cx) -> R) -> R {
        let mut fx = Effects::default();
        let s = &mut self.state;
        let result = call(
            &mut s.cluster,
            &mut Cx {
                machine: &s.machine,
                listeners: &mut s.listeners,
                fx: &mut fx,
            },
        );
        self.apply(fx);
        result
    }

    /// Carry out effects, in order.
    fn apply(&mut self, fx: Effects) {
        for effect in fx {
            match effect {
                Effect::Send { worker, line, fd } => {
                    if let Some(w) = self.wire.workers.get(&worker) {
                        w.send(Outgoing { line, fd });
                    }
                }
                Effect::Input(input) => self.input(input),
                Effect::Event(event) => self.event(event),
                Effect::Wake { after, wake } => self.state.timers.set(MonoTime::now(), after, wake),
                Effect::SendStop { worker } => self.send_stop(worker),
                Effect::StartAccepting { key, fd } => {
                    let tx = self.wire.tasks.clone();
                    let held = self.state.cluster.held(&key);
                    let deliver = {
                        let key = key.clone();
                        move |fd| {
                            tx.send(FromTask::Accepted {
                                key: key.clone(),
                                fd,
                            })
                            .is_ok()
                        }
                    };
                    self.wire
                        .accepting
                        .insert(key, Accepting::start(fd, held, deliver));
                }
                Effect::StopAccepting { key } => {
                    self.wire.accepting.remove(&key);
                }
            }
        }
    }

    /// Give each accept loop back the room its server no longer uses.
    fn settle_accepting(&mut self) {
        for (key, accepting) in &mut self.wire.accepting {
            accepting.settle(self.state.cluster.held(key));
        }
    }

    #[inline(never)]
    fn fire_timers(&mut self) {
        while let Some(wake) = self.state.timers.pop_due(MonoTime::now()) {
            match wake {
                Wake::Machine(Timer::ReadyDelay(worker)) => self.ready_delay_passed(worker),
                Wake::Machine(timer) => self.input(Input::Timer(timer)),
                Wake::ListenCheck(worker) => self.listen_check(worker),
                Wake::StopSignal(worker) => {
                    self.with_cluster(|cluster, cx| cluster.stop_signal(worker, cx))
                }
                Wake::AnswerDue(worker) => {
                    self.with_cluster(|cluster, cx| cluster.answer_due(worker, MonoTime::now(), cx))
                }
                Wake::Trigger(wake) => {
                    let todo = self
                        .state
                        .triggers
                        .wake(&self.state.spec, wake, MonoTime::now());
                    self.triggered(todo);
                }
            }
        }
    }

    /// Start the watcher again (a resumed app: the schedule's timer is in
    /// the state, the watcher is wiring).
    pub(super) fn rewire_watcher(&mut self) {
        let running = self.wire.watcher.take();
        self.wire.watcher = triggers::rewire(running, &self.state.spec, &self.wire.watch_wake);
    }

    /// Start (or keep, or stop) the watcher and arm the schedule for the
    /// app's definition.
    #[inline(never)]
    fn configure_triggers(&mut self) {
        let running = self.wire.watcher.take();
        self.wire.watcher = triggers::rewire(running, &self.state.spec, &self.wire.watch_wake);
        let todo = self
            .state
            .triggers
            .configure(&self.state.spec, MonoTime::now());
        self.triggered(todo);
    }

    /// The watcher has news.
    #[inline(never)]
    fn files_changed(&mut self) {
        let Some(watcher) = &self.wire.watcher else {
            return;
        };
        let seen = watcher.take();
        let todo = self
            .state
            .triggers
            .changed(&self.state.spec, seen, MonoTime::now());
        self.triggered(todo);
    }

    /// Carry out what the triggers ask for. A reload is the machine's (a
    /// rolling one; queued behind a running one); none once stopping.
    fn triggered(&mut self, todo: Vec<Do>) {
        for step in todo {
            match step {
                Do::Wake(after, wake) => {
                    self.state
                        .timers
                        .set(MonoTime::now(), after, Wake::Trigger(wake))
                }
                Do::Warn(text) => self.event(Event::Warning(text)),
                Do::Say(report) => self.event(Event::Lifecycle(report)),
                Do::Reload(trigger) => {
                    let now = MonoTime::now();
                    if self.state.machine.snapshot(now).stopping {
                        continue;
                    }
                    self.event(Event::Lifecycle(Report::Triggered(trigger)));
                    self.command(Command::Reload, None);
                }
            }
        }
    }

    /// A worker has been up for its ready delay. A reload's successor whose
    /// predecessor listened by itself is held until it listens too (see
    /// `reload`); any other is ready now.
    fn ready_delay_passed(&mut self, worker: WorkerId) {
        let s = &mut self.state;
        if let Some((slot, pid)) = s.workers.get_running(worker) {
            let deadline = MonoTime::now()
                + s.spec
                    .ready
                    .listen_timeout
                    .saturating_sub(s.spec.ready.ready_delay);
            if s.machine.is_successor(worker) && s.reloads.hold(worker, slot, pid, deadline) {
                s.timers
                    .set(MonoTime::now(), LISTEN_POLL, Wake::ListenCheck(worker));
                return;
            }
        }
        self.input(Input::Timer(Timer::ReadyDelay(worker)));
    }

    /// Does a held successor listen yet?
    fn listen_check(&mut self, worker: WorkerId) {
        let s = &mut self.state;
        let running = s.workers.get_running(worker);
        match s.reloads.check(worker, running, MonoTime::now()) {
            Check::NotHeld => {}
            Check::Ready => self.input(Input::Timer(Timer::ReadyDelay(worker))),
            Check::Again => s
                .timers
                .set(MonoTime::now(), LISTEN_POLL, Wake::ListenCheck(worker)),
            Check::TimedOut { listening, wanted } => {
                if let Some((slot, pid)) = running {
                    self.event(Event::Warning(format!(
                        "worker {slot} (pid {pid}) listens on {listening} socket(s) of its own, where the worker it replaces listened on {wanted}, {} after it started",
                        crate::describe::duration(self.state.spec.ready.listen_timeout.max(self.state.spec.ready.ready_delay))
                    )));
                }
                self.input(Input::Timer(Timer::ListenTimeout(worker)));
            }
        }
    }

    /// Start spawning a worker: everything that can fail without a process
    /// is done here; the fork runs on the spawner (thread) and the exec is
    /// awaited by a helper task, which reports `Forked` and `SpawnDone`.
    fn spawn(&mut self, slot: Slot, worker: WorkerId) -> io::Result<()> {
        let s = &mut self.state;
        let start = WorkerStart {
            spec: &s.spec,
            base_env: &s.base_env,
            slot,
            worker,
            slots: s.machine.slot_count(),
            notify_socket: self.wire.notify.env_value(),
            listener_round_robin: s.cluster.config().listener_round_robin(),
        };
        let plan = start.plan(&mut s.listeners)?;
        // Before the fork: a channel that cannot be set up leaves no process.
        let channel = Arc::new(Channel::new(plan.channel)?);
        let tx = self.wire.tasks.clone();
        tokio::spawn(async move {
            let result = match spawn::fork_on_spawner(plan.spec, plan.keep).await {
                Ok(forked) => {
                    let _ = tx.send(FromTask::Forked {
                        worker,
                        pid: forked.pid,
                    });
                    forked.wait_exec().await
                }
                Err(e) => Err(e),
            };
            let _ = tx.send(FromTask::SpawnDone {
                worker,
                result,
                channel,
            });
        });
        self.state.workers.spawning(worker, slot);
        Ok(())
    }

    /// The exec of a worker succeeded (or the spawn failed): set up its
    /// output, its channel and its record, and tell the machine.
    fn spawn_done(&mut self, worker: WorkerId, result: io::Result<Spawned>, channel: Arc<Channel>) {
        let Some((slot, kill, ready_early)) = self.state.workers.spawned(worker) else {
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
        let pid = spawned.pid;
        let raw_pid = pid.as_raw() as u32;
        // Nothing from here on can fail: the process is tracked and reaped
        // like any other, whatever becomes of its pipes.
        if kill {
            let _ = process::signal_group(pid, Signal::SIGKILL);
        }
        let output_fds = [spawned.stdout.as_raw_fd(), spawned.stderr.as_raw_fd()];
        let channel_fd = channel.as_raw_fd();
        // Output pumps; the exit is reported only after both drained.
        let events = &self.wire.events;
        let pumps = [
            start_pump(
                spawned.stdout,
                slot,
                raw_pid,
                Stream::Stdout,
                events.clone(),
                Vec::new(),
            ),
            start_pump(
                spawned.stderr,
                slot,
                raw_pid,
                Stream::Stderr,
                events.clone(),
                Vec::new(),
            ),
        ];
        let wiring = self.wire_worker(worker, channel, pumps, ipc::Unread::default());
        self.wire.workers.insert(worker, wiring);
        self.state
            .workers
            .running(worker, slot, pid, channel_fd, output_fds);
        self.state.cluster.add_worker(worker, slot);
        if self.state.cluster.config().listener_round_robin() {
            self.with_cluster(|cluster, cx| cluster.join_listener_servers(worker, cx));
        }
        self.input(Input::Spawned {
            worker,
            pid: raw_pid,
        });
        if ready_early {
            self.input(Input::Ready { worker });
        }
    }

    fn stop(&mut self, worker: WorkerId) {
        if !self.with_cluster(|cluster, cx| cluster.begin_stop(worker, cx)) {
            self.send_stop(worker);
            self.input(Input::StopSignalled { worker });
        }
    }

    /// Ask the worker to finish: the stop signal to its process group, or
    /// the message "shutdown". The caller tells the machine
    /// (`Input::StopSignalled`).
    fn send_stop(&mut self, worker: WorkerId) {
        let Some((slot, pid)) = self.state.workers.get_running(worker) else {
            return;
        };
        let stop = &self.state.spec.stop;
        if stop.shutdown_with_message {
            if let Some(w) = self.wire.workers.get(&worker) {
                w.send(Outgoing {
                    line: protocol::SHUTDOWN.to_vec(),
                    fd: None,
                });
            }
        } else if let Err(e) = process::signal_group(pid, stop.kill_signal) {
            self.event(Event::Warning(format!(
                "cannot signal worker {slot} (pid {pid}): {e}"
            )));
        }
    }

    /// Send a JSON message to workers (`process.on('message')`).
    fn send(&self, to: Target, message: &serde_json::Value) {
        let line = protocol::line(message);
        for (worker, slot, _) in self.state.workers.running_workers() {
            if to == Target::All || to == Target::Slot(slot) {
                if let Some(w) = self.wire.workers.get(&worker) {
                    w.send(Outgoing {
                        line: line.clone(),
                        fd: None,
                    });
                }
            }
        }
    }

    /// Look for exited workers; each is reported once its output is drained.
    #[inline(never)]
    pub(super) fn reap(&mut self) {
        for (worker, pid, result) in self.state.workers.reap() {
            let status = result.unwrap_or_else(|e| {
                self.event(Event::Warning(format!(
                    "lost track of worker pid {pid}: {e}"
                )));
                ExitStatus::Code(-1)
            });
            self.exited(worker, status);
        }
    }

    fn exited(&mut self, worker: WorkerId, status: ExitStatus) {
        // Connections it never took go to the others.
        self.with_cluster(|cluster, cx| cluster.channel_closed(worker, cx));
        self.state.cluster.remove_worker(worker);
        self.state.workers.remove(worker);
        let Some(wiring) = self.wire.workers.remove(&worker) else {
            return;
        };
        let tx = self.wire.tasks.clone();
        self.wire.draining += 1;
        tokio::spawn(async move {
            // Its output comes before its exit.
            output::drained(wiring.pumps).await;
            let _ = tx.send(FromTask::Exited { worker, status });
        });
    }

    /// A running worker's channel tasks: its writer and its reader (`from`:
    /// where a previous reader stopped), with its output pumps.
    pub(super) fn wire_worker(
        &self,
        worker: WorkerId,
        channel: Arc<Channel>,
        pumps: [output::Pump; 2],
        from: ipc::Unread,
    ) -> WorkerWiring {
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let unsent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = tokio::spawn(ipc::write_channel(
            channel.clone(),
            outbox_rx,
            unsent.clone(),
        ));
        let (stop_reader, stop_rx) = oneshot::channel();
        let reader = tokio::spawn(ipc::read_channel(
            channel,
            worker,
            self.state.spec.max_message_bytes,
            self.wire.messages.clone(),
            from,
            stop_rx,
        ));
        WorkerWiring {
            outbox,
            unsent,
            writer,
            reader,
            stop_reader,
            pumps,
        }
    }

    #[inline(never)]
    pub(super) fn task_message(&mut self, msg: FromTask) {
        match msg {
            FromTask::Exited { worker, status } => {
                self.wire.draining = self.wire.draining.saturating_sub(1);
                self.input(Input::Exited { worker, status })
            }
            FromTask::Forked { worker, pid } => {
                self.state.workers.forked(worker, pid, MonoTime::now())
            }
            FromTask::Accepted { key, fd } => {
                if let Some(accepting) = self.wire.accepting.get_mut(&key) {
                    accepting.delivered();
                }
                self.with_cluster(|cluster, cx| cluster.accepted(&key, fd, cx));
            }
            FromTask::SpawnDone {
                worker,
                result,
                channel,
            } => self.spawn_done(worker, result, channel),
            FromTask::Notify { pid, text } => {
                if !text.lines().any(|l| l.trim() == "READY=1") {
                    return;
                }
                if let Notified::Ready(worker) =
                    self.state.workers.notified_ready(pid, MonoTime::now())
                {
                    self.input(Input::Ready { worker });
                }
            }
        }
    }

    /// What a worker's channel reader delivered.
    #[inline(never)]
    pub(super) fn worker_message(&mut self, msg: FromWorker) {
        match msg {
            FromWorker::Message { worker, value } => self.message(worker, value),
            FromWorker::BadMessage { worker, error } => {
                if let Some((slot, pid)) = self.state.workers.get_running(worker) {
                    self.event(Event::Warning(format!(
                        "worker {slot} (pid {pid}) sent a message that is not JSON ({error}); ignored it"
                    )));
                }
            }
            FromWorker::Oversized {
                worker,
                size,
                complete,
            } => {
                if let Some((slot, pid)) = self.state.workers.get_running(worker) {
                    let max = self.state.spec.max_message_bytes;
                    let at_least = if complete { "" } else { "at least " };
                    self.event(Event::Warning(format!(
                        "worker {slot} (pid {pid}) sent an IPC message of {at_least}{} ({size} bytes), over the limit of {} (max_message_bytes); refused it and skipped to the next message",
                        crate::describe::bytes(size as u64),
                        crate::describe::bytes(max as u64),
                    )));
                }
            }
            FromWorker::StrayFds { worker, count } => {
                if let Some((slot, pid)) = self.state.workers.get_running(worker) {
                    self.event(Event::Warning(format!(
                        "worker {slot} (pid {pid}) sent {count} fd(s) with a message that is no \
                         handle message (Node sends one, with NODE_HANDLE); closed them"
                    )));
                }
            }
            FromWorker::Closed { worker } => {
                self.with_cluster(|cluster, cx| cluster.channel_closed(worker, cx))
            }
        }
    }

    fn message(&mut self, worker: WorkerId, value: serde_json::Value) {
        if protocol::is_internal(&value) {
            if let Some(inner) =
                self.with_cluster(|cluster, cx| cluster.message(worker, &value, cx))
            {
                self.message(worker, inner);
            }
            return;
        }
        let Some((slot, pid)) = self.state.workers.get_running(worker) else {
            return;
        };
        if self.state.spec.ready.wait_ready && value == serde_json::Value::String("ready".into()) {
            self.input(Input::Ready { worker });
        }
        self.event(Event::Message {
            slot,
            pid: pid.as_raw() as u32,
            message: value,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::fd;

    /// Read events until `want` says it saw enough; panics if the app ends.
    async fn until(events: &mut Events, mut want: impl FnMut(&Event) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .expect("in time")
                .expect("the app runs");
            if want(&event) {
                return;
            }
        }
    }

    #[tokio::test]
    async fn a_running_apps_state_is_plain_data() {
        let mut spec = AppSpec::new("state", "/bin/sh");
        spec.args = vec!["-c".into(), "sleep 30".into()];
        spec.instances = 2;
        spec.listeners.push("web=127.0.0.1:0".parse().unwrap());
        let (handle, mut events) = crate::supervisor::start(spec).unwrap();
        let mut online = 0;
        until(&mut events, |e| {
            online += matches!(e, Event::Lifecycle(Report::Online { .. })) as usize;
            online == 2
        })
        .await;
        let (tx, rx) = oneshot::channel();
        handle.tx.send(Request::State(tx)).unwrap();
        let state = rx.await.unwrap();
        // Listeners by id, each with its fd as a number; workers with their
        // pids and fds; the machine's slots; the ready-delay timers.
        let listener = &state["listeners"]["listeners"]["0"];
        assert_eq!(listener["name"], "web");
        assert!(listener["fds"][0].as_i64().unwrap() > 2, "{listener}");
        let records = state["workers"]["records"].as_object().unwrap();
        assert_eq!(records.len(), 2, "{state}");
        for record in records.values() {
            let running = &record["process"]["running"];
            assert!(running["pid"].as_i64().unwrap() > 1, "{record}");
            assert!(running["channel_fd"].as_i64().unwrap() > 2, "{record}");
        }
        assert_eq!(state["machine"]["slots"].as_array().unwrap().len(), 2);
        assert!(!state["timers"]["pending"].as_array().unwrap().is_empty());
        assert!(state["notify"]["name"]
            .as_str()
            .unwrap()
            .starts_with("@herd/"));
        handle.command(Command::Stop);
        until(&mut events, |e| matches!(e, Event::Exit(_))).await;
    }

    #[tokio::test]
    async fn an_apps_state_reads_back_with_the_fds_it_names() {
        let mut spec = AppSpec::new("state", "/bin/true");
        spec.listeners.push("web=127.0.0.1:0".parse().unwrap());
        spec.listeners.push("admin=127.0.0.1:0".parse().unwrap());
        let (mut listeners, _) = Listeners::bind(&spec).unwrap();
        let written = serde_json::to_value(&listeners).unwrap();
        let fds = listeners.take_fds();
        let numbers: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let state = AppState {
            base_env: Vec::new(),
            machine: Machine::new(policy_for(&spec), 2),
            cluster: Cluster::new(ClusterConfig::of(&spec)),
            listeners: Listeners::bind(&AppSpec::new("none", "/bin/true"))
                .unwrap()
                .0,
            workers: Workers::default(),
            timers: Timers::default(),
            reloads: Reloads::default(),
            triggers: Triggers::default(),
            notify: NotifyRecord {
                fd: 99,
                name: "@herd/1/0".into(),
            },
            spec,
        };
        let mut text = serde_json::to_value(&state).unwrap();
        // As a new binary would find it: the fds kept open, their numbers in the state.
        text["listeners"] = written;
        let text = text.to_string();
        let (back, left) = fd::adopting(fds, || serde_json::from_str::<AppState>(&text));
        let back = back.expect("the state reads back");
        assert!(left.is_empty(), "every fd is adopted");
        let names: Vec<(String, i32)> = back
            .listeners
            .of_definition()
            .map(|(id, l)| (l.name.clone(), back.listeners.fd(id).unwrap().raw()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("web".to_string(), numbers[0]),
                ("admin".to_string(), numbers[1])
            ]
        );
        let again = serde_json::to_value(&back).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        );
    }
}
