//! The worker lifecycle as a pure state machine: which worker runs in which
//! slot, when a dead one is restarted (backoff, crash-loop limit), how a
//! rolling reload advances, and how a stop ends. No I/O and no clock: every
//! input carries the current time (a `MonoTime`), every effect is returned as an
//! `Action` for the driver (`supervisor`) to carry out, and timers are just
//! actions that the driver later feeds back as inputs. A stale timer (one for
//! a worker that is gone, or a slot whose restart was superseded) is ignored,
//! so the driver never needs to cancel one.
//!
//! In the crate's words (see its glossary): a *slot* is a stable place
//! 0..N-1 (`HERD_WORKER_ID`); a *worker* is one process started for a slot,
//! named by a [`WorkerId`] that is never reused. A slot holds at most one
//! `current` worker and, during a reload or a replacement, one `successor`
//! (starting, until it is ready and takes over); workers being stopped (the
//! predecessors, drained after a reload) leave their slot.
//!
//! Tickets: a command given with [`Input::Ask`] carries a [`Ticket`], and the
//! machine answers it exactly once with [`Report::Answered`] when that
//! command — not another one like it — is done, aborted or refused: a
//! reload when *its* last slot is replaced (reloads asked for while one runs
//! share the next one), a stop when the machine exits. Commands given with
//! [`Input::Command`] are not answered.
//!
//! A reload replaces the slots one at a time, in the [`ReloadOrder`] the
//! driver chose for it: start the successor first and drain the old worker
//! once the successor is ready (no downtime), or — when a new worker could
//! not listen beside the old one — stop the old worker first and start its
//! successor once the slot is empty (pm2's restart).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::MonoTime;
use crate::config::{Counting, RestartPolicy};
use crate::exit::ExitStatus;

mod restarts;

use restarts::{Tally, Verdict};

/// A worker slot, 0..N-1; stable across restarts.
pub type Slot = usize;

/// Names one command given with [`Input::Ask`]; chosen by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ticket(pub u64);

/// How a command given with a ticket ended ([`Report::Answered`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// It did what it asked: a reload or replacement replaced its workers, a
    /// stop ended every worker, a start or scale began its workers.
    Done,
    /// It began and was abandoned (a reload whose replacement failed, or a
    /// stop came first): why, the worker slot it stopped at (none: it had not
    /// reached one), and whether that slot's old worker still serves.
    Aborted {
        reason: AbortReason,
        slot: Option<Slot>,
        old_serving: bool,
    },
    /// It cannot apply now, and why.
    Refused(Cow<'static, str>),
}

impl Answer {
    /// Abandoned because the app is stopping.
    pub(crate) fn stopping() -> Answer {
        Answer::Aborted {
            reason: AbortReason::Stopping,
            slot: None,
            old_serving: false,
        }
    }
}

/// One worker process the machine asked for; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub u64);

/// How a worker proves it can take traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Readiness {
    /// It is ready once it has stayed up this long.
    After(Duration),
    /// It says so (`READY=1`, Node's `listening` or `'ready'`); the driver
    /// feeds [`Input::Ready`]. `late` says what becomes of a worker that has
    /// not said so within the listen timeout.
    Signalled { late: Late },
}

/// What becomes of a worker that has not said it is ready within the
/// listen timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Late {
    /// It is taken as ready, and the app is told once
    /// ([`Report::ReadyAssumed`]): pm2's `wait_ready`, online at
    /// `listen_timeout` (a reload goes on).
    Ready,
    /// A successor is stopped and its reload aborted; a first worker waits
    /// on (a Node worker that never listens).
    Abort,
}

/// The policies the machine applies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Policy {
    pub(crate) restart: RestartPolicy,
    pub(crate) readiness: Readiness,
    /// A worker not ready by then is taken as ready, or (a successor) aborts
    /// the reload: see [`Late`].
    pub(crate) listen_timeout: Duration,
    /// How long a stopping worker may drain before it is killed, counted
    /// from [`Input::StopSignalled`] (the moment the stop signal or message
    /// was really sent), not from [`Action::Stop`].
    pub(crate) kill_timeout: Duration,
    /// How long the driver's phase before the signal (a Node worker's
    /// `disconnect` and settle time, a round-robin worker's last hand-overs)
    /// may last: then [`Action::Signal`] asks for the signal at once.
    pub(crate) settle_timeout: Duration,
}

/// What the driver tells the machine.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    /// The worker asked for by [`Action::Spawn`] is running with this pid.
    Spawned { worker: WorkerId, pid: u32 },
    /// It could not be started at all (the exec failed).
    SpawnFailed { worker: WorkerId, error: String },
    /// The worker is ready for traffic.
    Ready { worker: WorkerId },
    /// The worker's process ended (and its process group was cleaned up).
    Exited {
        worker: WorkerId,
        status: ExitStatus,
    },
    /// A timer set by [`Action::SetTimer`] fired.
    Timer(Timer),
    /// The stop signal (or the `"shutdown"` message) asked for by
    /// [`Action::Stop`] or [`Action::Signal`] was sent to the worker now: its
    /// kill timeout starts. Repeats are ignored.
    StopSignalled { worker: WorkerId },
    /// A request from the user.
    Command(Command),
    /// A request from the user that wants its answer: the machine reports
    /// [`Report::Answered`] with this ticket exactly once.
    Ask { command: Command, ticket: Ticket },
}

/// Requests from outside: signals, the CLI, the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Start every slot (once, at the beginning).
    Start,
    /// Replace every worker, one slot at a time, without losing capacity.
    Reload,
    /// Stop gracefully; a second `Stop` kills what is left at once.
    Stop,
    /// Add one slot (SIGTTIN).
    ScaleUp,
    /// Remove the highest slot (SIGTTOU).
    ScaleDown,
    /// Grow or shrink to this many slots.
    Scale(usize),
    /// Replace one slot's worker the zero-downtime way: start the new one,
    /// wait until it is ready, then drain the old (`--max-memory-restart`,
    /// `herd restart app:N`). A slot with nothing serving simply starts afresh.
    Replace(Slot),
}

/// How a reload replaces each slot's worker. The driver chooses it for
/// each reload ([`Machine::set_reload_order`]): it knows whether a new
/// worker can listen beside the old one; the machine does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOrder {
    /// Start the successor, wait until it is ready, then drain the old
    /// worker: the slot keeps serving throughout.
    #[default]
    StartFirst,
    /// Stop the old worker, wait until every worker of the slot is gone,
    /// then start the successor and wait until it is ready before the next
    /// slot (pm2's restart): the slot serves nothing meanwhile, the other
    /// slots do.
    StopFirst,
}

/// Deadlines the machine asks the driver to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Timer {
    /// The backoff of a slot ended; `attempt` tells stale timers apart.
    Restart { slot: Slot, attempt: u64 },
    /// The worker has been up for the ready delay.
    ReadyDelay(WorkerId),
    /// The successor had its time to get ready.
    ListenTimeout(WorkerId),
    /// The stopping worker had its time to drain.
    KillTimeout(WorkerId),
    /// The stopping worker's pre-signal phase had its time.
    SettleTimeout(WorkerId),
}

/// What the machine asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Start a new worker process for `slot`; answer with `Spawned` or `SpawnFailed`.
    Spawn { slot: Slot, worker: WorkerId },
    /// Ask the worker to finish: stop accepting, drain, exit. The driver may
    /// first take it out of service (Node's `disconnect`), then sends the
    /// stop signal or message and answers [`Input::StopSignalled`].
    Stop { worker: WorkerId },
    /// The pre-signal phase of a stop took too long: send the stop signal
    /// (or message) now, and answer [`Input::StopSignalled`].
    Signal { worker: WorkerId },
    /// SIGKILL the worker's whole process group.
    Kill { worker: WorkerId },
    /// Feed `Input::Timer(timer)` back after `after`.
    SetTimer { timer: Timer, after: Duration },
    /// Something the user should hear about.
    Report(Report),
    /// Every worker is gone and none will be started: the supervisor is done.
    Exit(Outcome),
}

/// Why the machine finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Stopped on request.
    Stopped,
    /// Every worker exited and the restart mode restarts none: success if all exited 0.
    Completed { success: bool },
    /// Every slot is errored; the last exit of the last slot to fail.
    Errored { slot: Slot, last: ExitStatus },
}

/// Why a reload was abandoned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// The successor exited before it was ready.
    Exited(ExitStatus),
    /// The successor could not be started.
    SpawnFailed(String),
    /// The successor was not ready within the listen timeout.
    NotReady(#[serde(with = "crate::config::duration_ms")] Duration),
    /// A stop was requested.
    Stopping,
}

/// What happens to a slot after its worker exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    /// A replacement starts after this delay (zero: at once).
    RestartIn(#[serde(with = "crate::config::duration_ms")] Duration),
    /// The worker was being stopped; nothing follows.
    Stopped,
    /// The restart mode says not to restart it.
    NoRestart,
    /// It exited with one of `stop_exit_codes`: not restarted.
    StopExitCode(i32),
    /// Too many unstable restarts in a row: the slot is errored.
    Errored { crashes: u32 },
    /// A successor for the slot is already on its way.
    Replaced,
}

/// Events for the user. As JSON: `{"exited": {"slot": 1, …}}`, durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    Online {
        slot: Slot,
        pid: u32,
    },
    Ready {
        slot: Slot,
        pid: u32,
    },
    /// A worker that was to say it is ready (`wait_ready`) had not within
    /// the listen timeout: it is taken as ready. Reported once per app.
    ReadyAssumed {
        slot: Slot,
        pid: u32,
        #[serde(with = "crate::config::duration_ms")]
        waited: Duration,
    },
    /// No worker of the app is running: this slot, whose last worker was
    /// killed (not crashed), starts now instead of waiting out its backoff.
    BackoffSkipped {
        slot: Slot,
    },
    Exited {
        slot: Slot,
        pid: u32,
        status: ExitStatus,
        #[serde(with = "crate::config::duration_ms")]
        uptime: Duration,
        next: Next,
    },
    SpawnFailed {
        slot: Slot,
        error: String,
        next: Next,
    },
    ReloadStarted,
    ReloadQueued,
    /// One slot's worker is being replaced ([`Command::Replace`]).
    Replacing {
        slot: Slot,
    },
    /// A reload or a replacement in [`ReloadOrder::StopFirst`] reached this
    /// slot: its worker stops, then its successor starts.
    Restarting {
        slot: Slot,
    },
    ReloadFinished,
    ReloadAborted {
        slot: Slot,
        reason: AbortReason,
        /// The slot's old worker still serves (false: the worker died during
        /// the reload, and the slot restarts by its restart policy).
        old_serving: bool,
    },
    Stopping {
        workers: usize,
    },
    Scaled {
        #[serde(rename = "instances")]
        slots: usize,
    },
    /// A command that cannot apply now, and why.
    Refused {
        command: Command,
        reason: Cow<'static, str>,
    },
    /// The end of a command given with [`Input::Ask`].
    Answered {
        ticket: Ticket,
        answer: Answer,
    },
    /// One of the app's own triggers asks for a reload (a reload, or a
    /// queued one, follows).
    Triggered(Trigger),
    /// The file watcher is in place: it watches this many folders (each
    /// change from now on is seen).
    Watching {
        folders: u64,
    },
}

/// What makes an app reload by itself (`--watch`, `--cron-restart`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Watched files changed: the first that did (relative to the app's
    /// working directory when under it; `None` when the kernel lost track),
    /// and how many changes this reload covers.
    Watch {
        path: Option<std::path::PathBuf>,
        changes: u64,
    },
    /// The `cron_restart` schedule came due.
    Cron { pattern: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    /// Asked for; no pid yet.
    Starting,
    Running {
        ready: bool,
    },
    /// Asked to stop; the settle timer runs until the signal went out,
    /// then the kill timer.
    Stopping,
}

#[derive(Debug, Serialize, Deserialize)]
struct Worker {
    slot: Slot,
    pid: Option<u32>,
    started: MonoTime,
    phase: Phase,
    /// Stop as soon as it is running (a stop came while it was starting).
    stop_when_started: bool,
    /// While stopping: the stop signal (or message) was sent, and the kill
    /// timer runs.
    signalled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SlotState {
    /// Has (or is starting) a worker.
    Live,
    /// Waiting out a restart delay. `rescuable`: its worker was killed, so
    /// it may start sooner while the app has no worker running.
    Backoff {
        attempt: u64,
        #[serde(default)]
        rescuable: bool,
    },
    /// Gave up after too many unstable restarts.
    Errored,
    /// The worker ended and the restart mode does not restart it.
    Done,
}

#[derive(Debug, Serialize, Deserialize)]
struct SlotInfo {
    state: SlotState,
    /// The worker serving the slot.
    current: Option<WorkerId>,
    /// Its successor during a reload or a replacement, until it is ready.
    successor: Option<WorkerId>,
    /// Its restart counters (a state frozen before they were kept here
    /// resumes with fresh ones).
    #[serde(default)]
    tally: Tally,
    last_exit: Option<ExitStatus>,
    /// Workers started for this slot so far (restarts are all but the first).
    spawns: u64,
}

impl SlotInfo {
    fn new() -> Self {
        SlotInfo {
            state: SlotState::Live,
            current: None,
            successor: None,
            tally: Tally::new(),
            last_exit: None,
            spawns: 0,
        }
    }
}

/// What a slot is doing, in a [`Snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotPhase {
    /// It has a worker (starting, running or ready).
    Live,
    /// Waiting out a restart delay after a crash.
    Backoff,
    /// Gave up after too many crashes in a row; a reload starts it afresh.
    Errored,
    /// Its worker ended and the restart mode does not restart it.
    Done,
}

/// Where one worker process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerPhase {
    /// Asked for; no pid yet.
    Starting,
    /// Running, not ready for traffic yet.
    Online,
    /// Running and ready for traffic.
    Ready,
    /// Asked to stop; draining.
    Stopping,
}

/// One worker process in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub slot: Slot,
    pub pid: Option<u32>,
    pub phase: WorkerPhase,
    /// Time since it started (since its pid was known).
    #[serde(with = "crate::config::duration_ms")]
    pub uptime: Duration,
}

/// One slot in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub slot: Slot,
    pub phase: SlotPhase,
    /// The worker serving this slot.
    #[serde(rename = "worker")]
    pub current: Option<WorkerStatus>,
    /// Its successor during a reload or a replacement, until it is ready.
    #[serde(rename = "incoming")]
    pub successor: Option<WorkerStatus>,
    /// Workers started for this slot after its first (crashes, reloads, replacements).
    pub restarts: u64,
    /// The crash-loop count: crashes in a row of workers that died young
    /// (herd counting), or pm2's `unstable_restarts` (pm2 counting).
    pub unstable: u32,
    pub last_exit: Option<ExitStatus>,
}

/// Every slot and every draining worker of an app, at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub slots: Vec<SlotStatus>,
    /// Workers that left their slot and are stopping (a reload's
    /// predecessors, removed slots' workers).
    pub draining: Vec<WorkerStatus>,
    pub reloading: bool,
    pub stopping: bool,
    pub finished: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Idle,
    Running,
    Stopping,
    Finished,
}

/// The state of one app's workers. Feed it [`Input`]s; carry out the [`Action`]s.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Machine {
    policy: Policy,
    slots: Vec<SlotInfo>,
    workers: BTreeMap<WorkerId, Worker>,
    next_worker: u64,
    next_attempt: u64,
    mode: Mode,
    /// The slot a reload is working on, if one runs.
    reload: Option<Slot>,
    /// The reload replaces that one slot only ([`Command::Replace`]).
    reload_one: bool,
    /// The order the driver chose for the next reload ([`Self::set_reload_order`]).
    #[serde(default)]
    next_order: ReloadOrder,
    /// The order of the running reload, taken from `next_order` as it began.
    #[serde(default)]
    reload_order: ReloadOrder,
    /// A stop-first reload stopped the slot's worker and starts its
    /// successor once no worker of the slot is left.
    #[serde(default)]
    reload_waits_for_stop: bool,
    reload_queued: bool,
    /// A queued reload waits for the end of the current input to begin.
    pending_reload_restart: bool,
    /// The slot that errored last, for the exit outcome.
    last_errored: Option<Slot>,
    /// Tickets the running reload (or replacement) answers when it ends.
    #[serde(default)]
    reload_tickets: Vec<Ticket>,
    /// Tickets of reloads asked for while one ran: the queued reload's.
    #[serde(default)]
    queued_tickets: Vec<Ticket>,
    /// Tickets of stops: answered when the machine exits.
    #[serde(default)]
    stop_tickets: Vec<Ticket>,
    /// The last (or next) start of a killed worker's slot ahead of its
    /// backoff, while the app was empty (herd counting): at most one per
    /// `restart_delay`.
    #[serde(default)]
    last_rescue: Option<MonoTime>,
    /// The backoff attempt of an early start that waits for that limit.
    #[serde(default)]
    rescue_attempt: Option<u64>,
    /// The app was told once that a worker was taken as ready late.
    #[serde(default)]
    told_ready_assumed: bool,
}

impl Machine {
    pub(crate) fn new(policy: Policy, slots: usize) -> Machine {
        Machine {
            policy,
            slots: (0..slots.max(1)).map(|_| SlotInfo::new()).collect(),
            workers: BTreeMap::new(),
            next_worker: 0,
            next_attempt: 0,
            mode: Mode::Idle,
            reload: None,
            reload_one: false,
            next_order: ReloadOrder::StartFirst,
            reload_order: ReloadOrder::StartFirst,
            reload_waits_for_stop: false,
            reload_queued: false,
            pending_reload_restart: false,
            last_errored: None,
            reload_tickets: Vec::new(),
            queued_tickets: Vec::new(),
            stop_tickets: Vec::new(),
            last_rescue: None,
            rescue_attempt: None,
            told_ready_assumed: false,
        }
    }

    /// New policies (a reload with a new definition); workers already
    /// stopping keep the kill timeout they were given.
    pub(crate) fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// How the next reload (or replacement) replaces each slot's worker; a
    /// reload that runs keeps the order it began with.
    pub(crate) fn set_reload_order(&mut self, order: ReloadOrder) {
        self.next_order = order;
    }

    /// The number of slots.
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// True once `Action::Exit` has been emitted.
    pub(crate) fn finished(&self) -> bool {
        self.mode == Mode::Finished
    }

    /// True while a rolling reload runs.
    #[cfg(test)]
    pub(crate) fn reloading(&self) -> bool {
        self.reload.is_some()
    }

    /// Is this worker ready and not on its way out? (Round-robin hands
    /// client connections only to these.)
    pub(crate) fn accepting(&self, worker: WorkerId) -> bool {
        matches!(
            self.workers.get(&worker).map(|w| w.phase),
            Some(Phase::Running { ready: true })
        )
    }

    /// Is this worker a slot's successor (in a reload or a replacement), not
    /// ready yet?
    pub(crate) fn is_successor(&self, worker: WorkerId) -> bool {
        self.workers
            .get(&worker)
            .and_then(|w| self.slots.get(w.slot))
            .is_some_and(|s| s.successor == Some(worker))
    }

    /// Is this worker being stopped?
    pub(crate) fn is_stopping(&self, worker: WorkerId) -> bool {
        matches!(
            self.workers.get(&worker).map(|w| w.phase),
            Some(Phase::Stopping)
        )
    }

    /// Slots that gave up after too many unstable restarts.
    pub(crate) fn errored_slots(&self) -> Vec<Slot> {
        (0..self.slots.len())
            .filter(|&s| self.slots[s].state == SlotState::Errored)
            .collect()
    }

    /// Every slot and worker as they are at `now` (for `herd list`).
    pub(crate) fn snapshot(&self, now: MonoTime) -> Snapshot {
        let status = |id: WorkerId| {
            self.workers.get(&id).map(|w| WorkerStatus {
                slot: w.slot,
                pid: w.pid,
                phase: match w.phase {
                    Phase::Starting => WorkerPhase::Starting,
                    Phase::Running { ready: false } => WorkerPhase::Online,
                    Phase::Running { ready: true } => WorkerPhase::Ready,
                    Phase::Stopping => WorkerPhase::Stopping,
                },
                uptime: match w.phase {
                    Phase::Starting => Duration::ZERO,
                    _ => now.saturating_duration_since(w.started),
                },
            })
        };
        let slots = self
            .slots
            .iter()
            .enumerate()
            .map(|(slot, info)| SlotStatus {
                slot,
                phase: match info.state {
                    SlotState::Live => SlotPhase::Live,
                    SlotState::Backoff { .. } => SlotPhase::Backoff,
                    SlotState::Errored => SlotPhase::Errored,
                    SlotState::Done => SlotPhase::Done,
                },
                current: info.current.and_then(status),
                successor: info.successor.and_then(status),
                restarts: info.spawns.saturating_sub(1),
                unstable: info.tally.unstable,
                last_exit: info.last_exit,
            })
            .collect();
        let held: Vec<WorkerId> = self
            .slots
            .iter()
            .flat_map(|s| [s.current, s.successor])
            .flatten()
            .collect();
        let draining = self
            .workers
            .keys()
            .filter(|id| !held.contains(id))
            .filter_map(|id| status(*id))
            .collect();
        Snapshot {
            slots,
            draining,
            reloading: self.reload.is_some(),
            stopping: self.mode == Mode::Stopping,
            finished: self.mode == Mode::Finished,
        }
    }

    /// Apply one input at time `now`; returns what the driver must do, in order.
    pub(crate) fn handle(&mut self, now: MonoTime, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        if self.mode == Mode::Finished {
            if let Input::Ask { ticket, .. } = input {
                answer(
                    ticket,
                    Answer::Refused("the app has finished".into()),
                    &mut out,
                );
            }
            return out;
        }
        match input {
            Input::Command(command) => self.command(now, command, None, &mut out),
            Input::Ask { command, ticket } => self.command(now, command, Some(ticket), &mut out),
            Input::Spawned { worker, pid } => self.spawned(now, worker, pid, &mut out),
            Input::SpawnFailed { worker, error } => self.spawn_failed(now, worker, error, &mut out),
            Input::Ready { worker } => self.ready(now, worker, &mut out),
            Input::Exited { worker, status } => self.exited(now, worker, status, &mut out),
            Input::Timer(timer) => self.timer(now, timer, &mut out),
            Input::StopSignalled { worker } => self.stop_signalled(worker, &mut out),
        }
        self.start_after_stop(now, &mut out);
        self.resume_queued_reload(now, &mut out);
        self.rescue(now, &mut out);
        self.check_finished(&mut out);
        out
    }

    /// Carry out a command; `ticket`: answer it (see the module docs).
    fn command(
        &mut self,
        now: MonoTime,
        command: Command,
        ticket: Option<Ticket>,
        out: &mut Vec<Action>,
    ) {
        let done = |out: &mut Vec<Action>| {
            if let Some(ticket) = ticket {
                answer(ticket, Answer::Done, out);
            }
        };
        match (self.mode, command) {
            (Mode::Idle, Command::Start) => {
                self.mode = Mode::Running;
                for slot in 0..self.slots.len() {
                    let worker = self.spawn(now, slot, out);
                    self.slots[slot].current = Some(worker);
                }
                done(out);
            }
            (_, Command::Start) => refuse(command, "already started", ticket, out),
            (Mode::Stopping, Command::Stop) => {
                // The second stop: no more waiting.
                self.stop_tickets.extend(ticket);
                let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
                for worker in ids {
                    out.push(Action::Kill { worker });
                }
            }
            (Mode::Idle | Mode::Running, Command::Stop) => {
                self.stop_tickets.extend(ticket);
                self.stop_all(out);
            }
            (Mode::Idle | Mode::Stopping, _) => {
                let reason = if self.mode == Mode::Idle {
                    "not started yet"
                } else {
                    "stopping"
                };
                refuse(command, reason, ticket, out);
            }
            (Mode::Running, Command::Reload) => {
                if self.reload.is_some() {
                    self.reload_queued = true;
                    self.queued_tickets.extend(ticket);
                    out.push(Action::Report(Report::ReloadQueued));
                } else {
                    // Before it begins: a reload may end within this input.
                    self.reload_tickets.extend(ticket);
                    out.push(Action::Report(Report::ReloadStarted));
                    self.reload_from(now, 0, out);
                }
            }
            (Mode::Running, Command::Replace(slot)) => self.replace(now, slot, ticket, out),
            (Mode::Running, Command::ScaleUp) => {
                self.scale_to(now, self.slots.len() + 1, out);
                done(out);
            }
            (Mode::Running, Command::ScaleDown) => {
                if self.slots.len() <= 1 {
                    refuse(
                        command,
                        "one worker is the minimum; use stop to stop it",
                        ticket,
                        out,
                    );
                } else {
                    self.scale_to(now, self.slots.len() - 1, out);
                    done(out);
                }
            }
            (Mode::Running, Command::Scale(n)) => {
                if n == 0 {
                    refuse(
                        command,
                        "one worker is the minimum; use stop to stop them all",
                        ticket,
                        out,
                    );
                } else {
                    self.scale_to(now, n, out);
                    done(out);
                }
            }
            (Mode::Finished, _) => {}
        }
    }

    /// Replace one slot's worker: a reload of that slot alone (so a reload
    /// asked for meanwhile is queued behind it, as any reload is).
    fn replace(
        &mut self,
        now: MonoTime,
        slot: Slot,
        ticket: Option<Ticket>,
        out: &mut Vec<Action>,
    ) {
        let command = Command::Replace(slot);
        if slot >= self.slots.len() {
            return refuse(command, "no such worker slot", ticket, out);
        }
        if self.reload.is_some() {
            return refuse(
                command,
                "a reload is running; it replaces this worker too",
                ticket,
                out,
            );
        }
        self.reload_tickets.extend(ticket);
        if self.next_order == ReloadOrder::StartFirst {
            out.push(Action::Report(Report::Replacing { slot }));
        }
        self.reload_one = true;
        self.reload_from(now, slot, out);
    }

    /// The reload is done with `slot`: go on with the next, or finish.
    fn reload_next(&mut self, now: MonoTime, slot: Slot, out: &mut Vec<Action>) {
        let next = if self.reload_one {
            self.slots.len()
        } else {
            slot + 1
        };
        self.reload_from(now, next, out);
    }

    fn spawn(&mut self, now: MonoTime, slot: Slot, out: &mut Vec<Action>) -> WorkerId {
        let worker = WorkerId(self.next_worker);
        self.next_worker += 1;
        self.workers.insert(
            worker,
            Worker {
                slot,
                pid: None,
                started: now,
                phase: Phase::Starting,
                stop_when_started: false,
                signalled: false,
            },
        );
        let info = &mut self.slots[slot];
        info.state = SlotState::Live;
        info.spawns += 1;
        info.tally.started(now);
        out.push(Action::Spawn { slot, worker });
        worker
    }

    fn begin_stop(&mut self, worker: WorkerId, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        match w.phase {
            Phase::Stopping => {}
            Phase::Starting => w.stop_when_started = true,
            Phase::Running { .. } => {
                // The kill timer starts once the signal is really sent
                // (`StopSignalled`); until then the settle bound runs.
                w.phase = Phase::Stopping;
                out.push(Action::Stop { worker });
                out.push(Action::SetTimer {
                    timer: Timer::SettleTimeout(worker),
                    after: self.policy.settle_timeout,
                });
            }
        }
        // It no longer holds its slot.
        let slot = w.slot;
        if let Some(info) = self.slots.get_mut(slot) {
            if info.current == Some(worker) {
                info.current = None;
            }
            if info.successor == Some(worker) {
                info.successor = None;
            }
        }
    }

    /// The stop signal went out: the worker's drain time starts now.
    fn stop_signalled(&mut self, worker: WorkerId, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if w.phase != Phase::Stopping || w.signalled {
            return;
        }
        w.signalled = true;
        out.push(Action::SetTimer {
            timer: Timer::KillTimeout(worker),
            after: self.policy.kill_timeout,
        });
    }

    fn stop_all(&mut self, out: &mut Vec<Action>) {
        self.reload_one = false;
        if let Some(slot) = self.reload.take() {
            out.push(Action::Report(Report::ReloadAborted {
                slot,
                reason: AbortReason::Stopping,
                old_serving: false,
            }));
            answer_all(&mut self.reload_tickets, Answer::stopping(), out);
        }
        self.reload_queued = false;
        answer_all(&mut self.queued_tickets, Answer::stopping(), out);
        self.mode = Mode::Stopping;
        out.push(Action::Report(Report::Stopping {
            workers: self.workers.len(),
        }));
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for worker in ids {
            self.begin_stop(worker, out);
        }
        for info in &mut self.slots {
            if matches!(info.state, SlotState::Backoff { .. }) {
                info.state = SlotState::Done;
            }
        }
    }

    fn spawned(&mut self, now: MonoTime, worker: WorkerId, pid: u32, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if w.phase != Phase::Starting {
            return;
        }
        w.pid = Some(pid);
        w.started = now;
        w.phase = Phase::Running { ready: false };
        let slot = w.slot;
        let stop_now = w.stop_when_started;
        out.push(Action::Report(Report::Online { slot, pid }));
        if stop_now {
            self.begin_stop(worker, out);
            return;
        }
        match self.policy.readiness {
            Readiness::After(delay) => out.push(Action::SetTimer {
                timer: Timer::ReadyDelay(worker),
                after: delay,
            }),
            Readiness::Signalled { late } => {
                if late == Late::Ready || self.slots[slot].successor == Some(worker) {
                    out.push(Action::SetTimer {
                        timer: Timer::ListenTimeout(worker),
                        after: self.policy.listen_timeout,
                    });
                }
            }
        }
    }

    fn ready(&mut self, now: MonoTime, worker: WorkerId, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if w.phase != (Phase::Running { ready: false }) {
            return;
        }
        w.phase = Phase::Running { ready: true };
        let slot = w.slot;
        let pid = w.pid.unwrap_or_default();
        out.push(Action::Report(Report::Ready { slot, pid }));
        // A successor takes over its slot; its predecessor drains.
        let info = &mut self.slots[slot];
        if info.successor == Some(worker) {
            info.successor = None;
            let old = info.current.replace(worker);
            if let Some(old) = old {
                self.begin_stop(old, out);
            }
            if self.reload == Some(slot) {
                self.reload_next(now, slot, out);
            }
        }
    }

    /// Continue a reload at the first slot at or after `from`.
    fn reload_from(&mut self, now: MonoTime, from: Slot, out: &mut Vec<Action>) {
        if from >= self.slots.len() {
            self.reload = None;
            self.reload_one = false;
            out.push(Action::Report(Report::ReloadFinished));
            answer_all(&mut self.reload_tickets, Answer::Done, out);
            if std::mem::take(&mut self.reload_queued) {
                self.reload_tickets = std::mem::take(&mut self.queued_tickets);
                out.push(Action::Report(Report::ReloadStarted));
                self.reload_from(now, 0, out);
            }
            return;
        }
        if self.reload.is_none() {
            self.reload_order = self.next_order;
        }
        self.reload = Some(from);
        self.reload_waits_for_stop = false;
        let info = &mut self.slots[from];
        // A reload (or a replacement) starts the slot's counting over, as
        // pm2's `resetState` does.
        info.tally.restart_over();
        if info.current.is_none() {
            // Nothing serves here (errored, in backoff, or done): there is
            // nothing to hand over, so the slot simply starts afresh — a
            // reload after a fix revives it — and the reload moves on.
            let worker = self.spawn(now, from, out);
            self.slots[from].current = Some(worker);
            return self.reload_next(now, from, out);
        }
        if self.reload_order == ReloadOrder::StopFirst {
            out.push(Action::Report(Report::Restarting { slot: from }));
            if let Some(old) = info.current {
                self.begin_stop(old, out);
            }
            // The successor follows in `start_after_stop`.
            self.reload_waits_for_stop = true;
            return;
        }
        let worker = self.spawn(now, from, out);
        self.slots[from].successor = Some(worker);
    }

    /// A stop-first reload starts the slot's successor once every worker
    /// of the slot is gone (the old one, and any predecessor still draining),
    /// so the new worker never meets an old one on its port.
    fn start_after_stop(&mut self, now: MonoTime, out: &mut Vec<Action>) {
        if !self.reload_waits_for_stop || self.mode != Mode::Running {
            return;
        }
        let Some(slot) = self.reload else {
            self.reload_waits_for_stop = false;
            return;
        };
        if self.workers.values().any(|w| w.slot == slot) {
            return;
        }
        self.reload_waits_for_stop = false;
        let worker = self.spawn(now, slot, out);
        self.slots[slot].successor = Some(worker);
    }

    fn abort_reload(&mut self, slot: Slot, reason: AbortReason, out: &mut Vec<Action>) {
        if self.reload == Some(slot) {
            self.reload = None;
            self.reload_one = false;
            let old_serving = self.slots.get(slot).is_some_and(|s| s.current.is_some());
            out.push(Action::Report(Report::ReloadAborted {
                slot,
                reason: reason.clone(),
                old_serving,
            }));
            answer_all(
                &mut self.reload_tickets,
                Answer::Aborted {
                    reason,
                    slot: Some(slot),
                    old_serving,
                },
                out,
            );
            // A reload asked for meanwhile still runs: it is the user's newer wish.
            if std::mem::take(&mut self.reload_queued) {
                self.pending_reload_restart = true;
            }
        }
    }

    fn spawn_failed(
        &mut self,
        now: MonoTime,
        worker: WorkerId,
        error: String,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        let slot = w.slot;
        let Some(info) = self.slots.get_mut(slot) else {
            return;
        };
        if info.successor == Some(worker) {
            info.successor = None;
            let has_current = info.current.is_some();
            self.abort_reload(slot, AbortReason::SpawnFailed(error.clone()), out);
            if has_current {
                out.push(Action::Report(Report::SpawnFailed {
                    slot,
                    error,
                    next: Next::Stopped,
                }));
                return;
            }
        } else if info.current == Some(worker) {
            info.current = None;
        } else {
            return;
        }
        let mark = out.len();
        let next = self.after_exit(now, slot, ExitStatus::Code(127), Duration::ZERO, out);
        out.insert(
            mark,
            Action::Report(Report::SpawnFailed { slot, error, next }),
        );
    }

    fn exited(
        &mut self,
        now: MonoTime,
        worker: WorkerId,
        status: ExitStatus,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        let slot = w.slot;
        let pid = w.pid.unwrap_or_default();
        let uptime = now.saturating_duration_since(w.started);
        let report = |next| {
            Action::Report(Report::Exited {
                slot,
                pid,
                status,
                uptime,
                next,
            })
        };
        if w.phase == Phase::Stopping || w.stop_when_started || slot >= self.slots.len() {
            out.push(report(Next::Stopped));
            return;
        }
        let info = &mut self.slots[slot];
        if info.successor == Some(worker) {
            // The successor died before it was ready: the current worker stays.
            info.successor = None;
            let has_current = info.current.is_some();
            self.abort_reload(slot, AbortReason::Exited(status), out);
            if has_current {
                out.push(report(Next::Stopped));
                return;
            }
        } else if info.current == Some(worker) {
            info.current = None;
            if info.successor.is_some() {
                // A successor is already starting for this slot.
                out.push(report(Next::Replaced));
                return;
            }
        } else {
            out.push(report(Next::Stopped));
            return;
        }
        // The exit is reported before the spawn of the worker that replaces it.
        let mark = out.len();
        let next = self.after_exit(now, slot, status, uptime, out);
        out.insert(mark, report(next));
    }

    /// Apply the restart policy to a slot whose worker ended.
    fn after_exit(
        &mut self,
        now: MonoTime,
        slot: Slot,
        status: ExitStatus,
        uptime: Duration,
        out: &mut Vec<Action>,
    ) -> Next {
        let stopping = self.mode != Mode::Running;
        let info = &mut self.slots[slot];
        info.last_exit = Some(status);
        if stopping {
            info.state = SlotState::Done;
            return Next::Stopped;
        }
        let verdict = info
            .tally
            .after_exit(&self.policy.restart, now, status, uptime);
        let (delay, rescuable) = match verdict {
            Verdict::NoRestart => {
                info.state = SlotState::Done;
                return Next::NoRestart;
            }
            Verdict::StopCode(code) => {
                info.state = SlotState::Done;
                return Next::StopExitCode(code);
            }
            Verdict::Errored { crashes } => {
                info.state = SlotState::Errored;
                self.last_errored = Some(slot);
                return Next::Errored { crashes };
            }
            Verdict::Restart { delay, rescuable } => (delay, rescuable),
        };
        if delay.is_zero() {
            let worker = self.spawn(now, slot, out);
            self.slots[slot].current = Some(worker);
        } else {
            self.backoff(slot, delay, rescuable, out);
        }
        Next::RestartIn(delay)
    }

    /// Put `slot` in backoff for `delay` (a new attempt: an older timer of
    /// the slot goes stale).
    fn backoff(&mut self, slot: Slot, delay: Duration, rescuable: bool, out: &mut Vec<Action>) {
        self.next_attempt += 1;
        let attempt = self.next_attempt;
        self.slots[slot].state = SlotState::Backoff { attempt, rescuable };
        out.push(Action::SetTimer {
            timer: Timer::Restart { slot, attempt },
            after: delay,
        });
    }

    /// herd counting: backoff protects the machine while another worker
    /// serves, and only prolongs an outage when none does. So while no
    /// worker of the app is running or starting, a slot whose worker was
    /// killed from outside (not crashed) starts now instead of waiting out
    /// its backoff — one at a time (the app is empty again only once that
    /// attempt ended), at most one per `restart_delay`. Slots whose workers
    /// crashed keep their backoff: their next start would likely fail too.
    fn rescue(&mut self, now: MonoTime, out: &mut Vec<Action>) {
        if self.mode != Mode::Running || self.policy.restart.counting != Counting::Herd {
            return;
        }
        let live = self
            .slots
            .iter()
            .any(|s| s.current.is_some() || s.successor.is_some());
        let on_its_way = self.rescue_attempt.is_some_and(|due| {
            self.slots
                .iter()
                .any(|s| matches!(s.state, SlotState::Backoff { attempt, .. } if attempt == due))
        });
        if live || on_its_way {
            return;
        }
        let Some(slot) = self.slots.iter().position(|s| {
            matches!(
                s.state,
                SlotState::Backoff {
                    rescuable: true,
                    ..
                }
            )
        }) else {
            return;
        };
        let wait = self.last_rescue.map_or(Duration::ZERO, |last| {
            self.policy
                .restart
                .restart_delay
                .saturating_sub(now.saturating_duration_since(last))
        });
        self.last_rescue = Some(now + wait);
        if wait.is_zero() {
            out.push(Action::Report(Report::BackoffSkipped { slot }));
            let worker = self.spawn(now, slot, out);
            self.slots[slot].current = Some(worker);
        } else {
            // Sooner than its own timer, which goes stale.
            self.backoff(slot, wait, true, out);
            self.rescue_attempt = Some(self.next_attempt);
        }
    }

    fn resume_queued_reload(&mut self, now: MonoTime, out: &mut Vec<Action>) {
        if !std::mem::take(&mut self.pending_reload_restart) {
            return;
        }
        if self.mode == Mode::Running && self.reload.is_none() {
            self.reload_tickets = std::mem::take(&mut self.queued_tickets);
            out.push(Action::Report(Report::ReloadStarted));
            self.reload_from(now, 0, out);
        } else {
            // Dropped (the app is stopping): its askers hear why.
            answer_all(&mut self.queued_tickets, Answer::stopping(), out);
        }
    }

    fn timer(&mut self, now: MonoTime, timer: Timer, out: &mut Vec<Action>) {
        match timer {
            Timer::Restart { slot, attempt } => {
                let Some(info) = self.slots.get(slot) else {
                    return;
                };
                let due =
                    matches!(info.state, SlotState::Backoff { attempt: a, .. } if a == attempt);
                if self.mode == Mode::Running && due {
                    let worker = self.spawn(now, slot, out);
                    self.slots[slot].current = Some(worker);
                }
            }
            Timer::ReadyDelay(worker) => self.ready(now, worker, out),
            Timer::ListenTimeout(worker) => {
                let Some(w) = self.workers.get(&worker) else {
                    return;
                };
                let slot = w.slot;
                let pid = w.pid.unwrap_or_default();
                if w.phase != (Phase::Running { ready: false }) {
                    return;
                }
                if self.policy.readiness == (Readiness::Signalled { late: Late::Ready }) {
                    if !std::mem::replace(&mut self.told_ready_assumed, true) {
                        out.push(Action::Report(Report::ReadyAssumed {
                            slot,
                            pid,
                            waited: self.policy.listen_timeout,
                        }));
                    }
                    return self.ready(now, worker, out);
                }
                if self.slots.get(slot).and_then(|s| s.successor) == Some(worker) {
                    let timeout = self.policy.listen_timeout;
                    let has_current = self.slots[slot].current.is_some();
                    self.begin_stop(worker, out);
                    self.abort_reload(slot, AbortReason::NotReady(timeout), out);
                    if !has_current {
                        // Nobody serves this slot: let the restart policy deal with it.
                        self.after_exit(now, slot, ExitStatus::Code(1), Duration::ZERO, out);
                    }
                }
            }
            Timer::KillTimeout(worker) => {
                if self.workers.get(&worker).map(|w| w.phase) == Some(Phase::Stopping) {
                    out.push(Action::Kill { worker });
                }
            }
            Timer::SettleTimeout(worker) => {
                if self
                    .workers
                    .get(&worker)
                    .is_some_and(|w| w.phase == Phase::Stopping && !w.signalled)
                {
                    out.push(Action::Signal { worker });
                }
            }
        }
    }

    fn scale_to(&mut self, now: MonoTime, n: usize, out: &mut Vec<Action>) {
        while self.slots.len() < n {
            let slot = self.slots.len();
            self.slots.push(SlotInfo::new());
            let worker = self.spawn(now, slot, out);
            self.slots[slot].current = Some(worker);
        }
        while self.slots.len() > n {
            let slot = self.slots.len() - 1;
            let info = self.slots.pop().expect("more than n slots");
            for worker in [info.current, info.successor].into_iter().flatten() {
                self.begin_stop(worker, out);
            }
            if self.reload == Some(slot) {
                self.reload = None;
                self.reload_one = false;
                out.push(Action::Report(Report::ReloadFinished));
                answer_all(&mut self.reload_tickets, Answer::Done, out);
                if std::mem::take(&mut self.reload_queued) {
                    self.pending_reload_restart = true;
                }
            }
        }
        out.push(Action::Report(Report::Scaled {
            slots: self.slots.len(),
        }));
    }

    /// Emit `Exit` once nothing runs and nothing will be started.
    fn check_finished(&mut self, out: &mut Vec<Action>) {
        if !matches!(self.mode, Mode::Running | Mode::Stopping) || !self.workers.is_empty() {
            return;
        }
        if self.mode == Mode::Stopping {
            self.mode = Mode::Finished;
            self.answer_at_exit(out);
            out.push(Action::Exit(Outcome::Stopped));
            return;
        }
        let waiting = self
            .slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Live | SlotState::Backoff { .. }));
        if waiting {
            return;
        }
        self.mode = Mode::Finished;
        let errored = self.errored_slots();
        let outcome = if errored.len() == self.slots.len() {
            let slot = self
                .last_errored
                .filter(|&s| s < self.slots.len())
                .unwrap_or(errored[0]);
            Outcome::Errored {
                slot,
                last: self.slots[slot].last_exit.unwrap_or(ExitStatus::Code(1)),
            }
        } else {
            let success = errored.is_empty()
                && self
                    .slots
                    .iter()
                    .all(|s| matches!(s.last_exit, None | Some(ExitStatus::Code(0))));
            Outcome::Completed { success }
        };
        self.answer_at_exit(out);
        out.push(Action::Exit(outcome));
    }

    /// The machine exits: every stop asked for is done. No reload can be
    /// running or queued then (a stop aborts them; a reload keeps a worker
    /// alive until it ends), but a ticket is never left unanswered.
    fn answer_at_exit(&mut self, out: &mut Vec<Action>) {
        answer_all(&mut self.stop_tickets, Answer::Done, out);
        debug_assert!(self.reload_tickets.is_empty() && self.queued_tickets.is_empty());
        let aborted = Answer::stopping();
        answer_all(&mut self.reload_tickets, aborted.clone(), out);
        answer_all(&mut self.queued_tickets, aborted, out);
    }
}

/// Refuse a command: the report for the user, and its answer if it has a ticket.
fn refuse(command: Command, reason: &'static str, ticket: Option<Ticket>, out: &mut Vec<Action>) {
    out.push(Action::Report(Report::Refused {
        command,
        reason: reason.into(),
    }));
    if let Some(ticket) = ticket {
        answer(ticket, Answer::Refused(reason.into()), out);
    }
}

fn answer(ticket: Ticket, answer: Answer, out: &mut Vec<Action>) {
    out.push(Action::Report(Report::Answered { ticket, answer }));
}

/// Answer every ticket in `tickets` alike, leaving it empty.
fn answer_all(tickets: &mut Vec<Ticket>, with: Answer, out: &mut Vec<Action>) {
    for ticket in tickets.drain(..) {
        answer(ticket, with.clone(), out);
    }
}

#[cfg(test)]
mod tests;
