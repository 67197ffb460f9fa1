//! One app: an actor task that owns the app's engine instance (while it
//! runs), its event stream, its log files and its resource samples, and
//! carries out the app's commands one at a time. The daemon runs one per
//! app in its own process; `herd supervise` runs one alone (see
//! [`crate::process`]), telling a [`Keeper`] what it must keep on disk.
//!
//! Commands queue in a bounded channel and are taken one by one: a command
//! that takes time is *pending* until its end, and the next command waits
//! for it. A reload, a replacement or a scale ends with the engine's answer
//! to *its* ticket (never with another command's end, such as the
//! replacement the memory limit asked for), a stop with the app's exit (one
//! per engine instance). Each command is answered with a [`Ticket`]: done,
//! aborted or refused. Events keep being read meanwhile, so a worker's
//! output is never held up by a command; lifecycle events also go to
//! followers ([`AppRef::follow`]) through a bounded broadcast.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use herd_engine::config::{AppSpec, Instances};
use herd_engine::machine::{Answer, Command, Outcome, Report, SlotPhase, WorkerPhase};
use herd_engine::memory::on_heap;
use herd_engine::supervisor::{
    self, AppHandle, AppStatus, Event, Events, Held, Stream, Target, Timed, UpdateError,
};
use herd_engine::ExitStatus;
use herd_home::Home;
use herd_protocol::supervisor::{self as proto, Desired, Ticket};
use herd_protocol::{
    AppDef, AppInfo, AppState, ScaleTo, Signal, SlotDetail, WorkerInfo, WorkerRole, WorkerState,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::logs::AppLogs;
use crate::sample::Sampler;

/// How often worker CPU and memory are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples in a row above `max_memory_restart` before a worker is replaced.
const OVER_LIMIT_SAMPLES: u32 = 2;
/// Events a follower may fall behind by before it misses some (and is told so).
pub const FOLLOW_QUEUE: usize = 64;

/// What can be asked of an app.
#[derive(Debug)]
pub enum AppCommand {
    /// Start it if it is stopped.
    Start,
    Stop,
    /// Stop then start; with a slot, replace only its worker (zero-downtime).
    Restart {
        slot: Option<usize>,
    },
    /// Rolling reload, onto a new definition if one is given.
    Reload {
        def: Option<Box<AppDef>>,
    },
    /// Stop then start on a new definition (a stopped app is just started
    /// on it): pm2's `restart FILE`.
    RestartWith(Box<AppDef>),
    /// Zero the restart counters shown (pm2's `reset`); the workers are untouched.
    Reset,
    /// Stop it; the actor then ends.
    Delete,
    /// Stop it without changing what is wished for (its supervisor process
    /// is ending: the app runs again under the next one); the actor then ends.
    Quit,
    Flush,
    Scale(ScaleTo),
    Send {
        slot: Option<usize>,
        message: serde_json::Value,
    },
    Signal(Signal),
    ReopenLogs,
    /// Replace this process's binary by the one at `exe`, in place: the app
    /// is frozen and the actor ends with a [`Handover`] for its host to
    /// execute (see `herd_engine::upgrade`). Answered before the exec.
    Upgrade {
        exe: PathBuf,
    },
}

/// What the actor hands its host for an in-place upgrade: the frozen app,
/// the probed new binary, and the actor's own state.
#[derive(Debug)]
pub struct Handover {
    pub frozen: herd_engine::supervisor::Frozen,
    pub probed: herd_engine::upgrade::Probed,
    pub carried: Carried,
    /// The open log files, in [`Carried`]'s `log_files` order.
    pub log_fds: Vec<std::os::fd::OwnedFd>,
}

/// The actor's own state that an in-place upgrade carries over (the app's
/// definition and wish are in its file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Carried {
    counters: proto::Counters,
    created_at_ms: u64,
    reset_base: Vec<(usize, (u64, u32))>,
    /// The restart counts pm2's `restart_time` carries (see `Actor`).
    #[serde(default)]
    spawned: Vec<(usize, u64)>,
    #[serde(default)]
    carried: Vec<(usize, u64)>,
    #[serde(default)]
    restart_bump: bool,
    exit_codes: Vec<(usize, i32)>,
    desired: Desired,
    listen: Vec<String>,
    /// Which log file each handed-over fd is: (instance, 0 out / 1 err / 2 both).
    #[serde(default)]
    log_files: Vec<(usize, u8)>,
}

impl Carried {
    /// How many log files' fds travel with it.
    pub fn log_files(&self) -> usize {
        self.log_files.len()
    }
}

/// What the app counted since its supervisor took it (for metrics; these
/// survive restarts and reloads of the app, not its supervisor's end).
#[derive(Debug, Clone, Default)]
struct Counters {
    /// Worker exits by (slot, cause, what): cause `code` with the exit code,
    /// or `signal` with the signal's name.
    exits: BTreeMap<(usize, proto::ExitCause, String), u64>,
    /// Reloads (and one-worker replacements) that ended, and those of them
    /// that were aborted.
    reloads: u64,
    reloads_failed: u64,
    /// Bytes and lines written to the log files: `[stdout, stderr]`.
    log_bytes: [u64; 2],
    log_lines: [u64; 2],
}

impl Counters {
    fn from_protocol(c: proto::Counters) -> Counters {
        Counters {
            exits: c
                .exits
                .into_iter()
                .map(|e| ((e.slot, e.cause, e.what), e.count))
                .collect(),
            reloads: c.reloads,
            reloads_failed: c.reloads_failed,
            log_bytes: [c.log_bytes.stdout, c.log_bytes.stderr],
            log_lines: [c.log_lines.stdout, c.log_lines.stderr],
        }
    }

    fn to_protocol(&self) -> proto::Counters {
        let per_stream = |[stdout, stderr]: [u64; 2]| proto::PerStream { stdout, stderr };
        proto::Counters {
            exits: self
                .exits
                .iter()
                .map(|((slot, cause, what), count)| proto::ExitCount {
                    slot: *slot,
                    cause: *cause,
                    what: what.clone(),
                    count: *count,
                })
                .collect(),
            reloads: self.reloads,
            reloads_failed: self.reloads_failed,
            log_bytes: per_stream(self.log_bytes),
            log_lines: per_stream(self.log_lines),
        }
    }
}

/// A command with the place to put its ticket.
#[derive(Debug)]
struct Envelope {
    command: AppCommand,
    reply: oneshot::Sender<Ticket>,
}

/// The sending side of an app's command queue (and of its status queries,
/// answered at once, even while a command is pending: a reload can take
/// minutes, and `list`, `/metrics` and `/readyz` must not wait for it).
#[derive(Debug, Clone)]
pub struct AppRef {
    tx: mpsc::Sender<Envelope>,
    queries: mpsc::Sender<oneshot::Sender<proto::App>>,
    follow: Followers,
}

/// The channel to the app's followers (the daemon, a `herd logs`), made
/// when the first one comes and let go when the last has gone. Its ring
/// holds [`FOLLOW_QUEUE`] events for the app's life (the daemon follows
/// every app), each behind a pointer: a slot held the 64-byte event itself
/// before (5.6 kB a supervisor).
#[derive(Debug, Clone, Default)]
struct Followers(Arc<Mutex<Option<broadcast::Sender<Arc<proto::Event>>>>>);

impl Followers {
    fn subscribe(&self) -> broadcast::Receiver<Arc<proto::Event>> {
        let mut channel = self.0.lock().unwrap_or_else(|e| e.into_inner());
        channel
            .get_or_insert_with(|| broadcast::channel(FOLLOW_QUEUE).0)
            .subscribe()
    }

    /// Send to whoever follows now (none is fine).
    fn send(&self, event: proto::Event) {
        let mut channel = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = channel.as_ref() {
            if tx.send(Arc::new(event)).is_err() {
                // Every follower has gone: the ring goes too.
                *channel = None;
            }
        }
    }
}

impl AppRef {
    /// Queue a command and wait for its ticket (an ended actor aborts it).
    pub async fn command(&self, command: AppCommand) -> Ticket {
        let gone = || Ticket::Aborted {
            why: "the app is gone (deleted meanwhile)".into(),
        };
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Envelope { command, reply }).await.is_err() {
            return gone();
        }
        rx.await.unwrap_or_else(|_| gone())
    }

    /// The app with its workers, samples and counters (`None`: the app is gone).
    pub async fn app(&self) -> Option<proto::App> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// The app's lifecycle events and warnings from now on. A follower that
    /// falls [`FOLLOW_QUEUE`] events behind misses the oldest (the receiver
    /// says how many); the actor never waits for it.
    pub fn follow(&self) -> broadcast::Receiver<Arc<proto::Event>> {
        self.follow.subscribe()
    }
}

/// What a supervisor process keeps on disk for its app, told by the actor
/// as it happens.
pub trait Keeper: Send + 'static {
    /// A worker process started; its pid leads its own process group.
    fn worker_started(&mut self, pid: u32);
    /// A worker process ended (and its process group was ended with it).
    fn worker_ended(&mut self, pid: u32);
    /// The definition or the desired state changed.
    fn app_changed(&mut self, def: &AppDef, desired: Desired);
}

/// Start the actor for app `id` (its log files open now); it starts no
/// worker until told [`AppCommand::Start`]. `keeper` hears of every worker
/// and every change of the definition. The task ends once the app is
/// deleted or quit (or every [`AppRef`] is dropped, which stops the app
/// first).
pub fn spawn(
    id: u32,
    def: AppDef,
    home: &Home,
    keeper: Box<dyn Keeper>,
    held: Held,
) -> Result<(AppRef, tokio::task::JoinHandle<Option<Handover>>), String> {
    let mut actor = Actor::new(id, def, home, keeper)?;
    actor.held = held;
    Ok(actor.spawn())
}

/// [`spawn`] for an app handed over by the previous image of this
/// supervisor (an in-place upgrade): the engine resumes `frozen`, the actor
/// takes `carried` back.
pub fn resume(
    id: u32,
    def: AppDef,
    home: &Home,
    keeper: Box<dyn Keeper>,
    frozen: herd_engine::supervisor::Frozen,
    carried: Carried,
    log_fds: Vec<std::os::fd::OwnedFd>,
) -> Result<(AppRef, tokio::task::JoinHandle<Option<Handover>>), String> {
    let mut actor = Actor::new(id, def, home, keeper)?;
    let (engine, events) = supervisor::resume(frozen)
        .map_err(|e| format!("cannot resume the app after the upgrade: {e}"))?;
    actor.engine = Some(engine);
    actor.events = Some(events);
    actor.ever_started = true;
    actor.counters = Counters::from_protocol(carried.counters);
    actor.created_at = SystemTime::UNIX_EPOCH + Duration::from_millis(carried.created_at_ms);
    actor.reset_base = carried.reset_base.into_iter().collect();
    actor.spawned = carried.spawned.into_iter().collect();
    actor.carried = carried.carried.into_iter().collect();
    actor.restart_bump = carried.restart_bump;
    actor.exit_codes = carried.exit_codes.into_iter().collect();
    actor.desired = carried.desired;
    actor.listen = carried.listen;
    let kept = carried
        .log_files
        .into_iter()
        .zip(log_fds)
        .map(|((slot, which), fd)| (slot, which, fd))
        .collect();
    actor.logs.take_over(kept);
    Ok(actor.spawn())
}

impl Actor {
    fn new(id: u32, def: AppDef, home: &Home, keeper: Box<dyn Keeper>) -> Result<Actor, String> {
        let logs = AppLogs::open(&def, home, id)?;
        Ok(Actor {
            id,
            def,
            home: home.clone(),
            engine: None,
            events: None,
            logs,
            sampler: Sampler::new(),
            over_limit: HashMap::new(),
            pending: None,
            listen: Vec::new(),
            outcome: None,
            deleted: false,
            quit: false,
            ever_started: false,
            held: Held::default(),
            keeping: None,
            counters: Counters::default(),
            created_at: SystemTime::now(),
            reset_base: HashMap::new(),
            spawned: HashMap::new(),
            carried: HashMap::new(),
            restart_bump: false,
            exit_codes: HashMap::new(),
            desired: Desired::Stopped,
            keeper,
            follow: Followers::default(),
            handover: None,
        })
    }

    fn spawn(self) -> (AppRef, tokio::task::JoinHandle<Option<Handover>>) {
        let (tx, rx) = mpsc::channel(64);
        let (queries, queries_rx) = mpsc::channel(64);
        let follow = self.follow.clone();
        // Boxed: the actor's future holds the whole actor; on the heap, tokio
        // moves and polls a pointer, not that much stack.
        let task = tokio::spawn(Box::pin(self.run(rx, queries_rx)));
        (
            AppRef {
                tx,
                queries,
                follow,
            },
            task,
        )
    }
}

/// A command waiting for its end.
enum Pending {
    /// A command given to the engine with a ticket (a reload, a one-worker
    /// replacement, a scale): ends with the engine's answer to that ticket.
    /// The engine's warnings meanwhile (a reload that is a restart, and why;
    /// what `tcp_migrate_req` costs) go into the answer too, so whoever
    /// asked reads them, not only the supervisor's log.
    Engine {
        ticket: herd_engine::machine::Ticket,
        /// What it is, for the messages ("reload"), and what was done.
        what: &'static str,
        done: String,
        reply: oneshot::Sender<Ticket>,
        notes: Vec<String>,
    },
    /// A stop: ends with the app's exit; then what.
    Stop {
        reply: oneshot::Sender<Ticket>,
        then: AfterStop,
    },
}

impl Pending {
    /// The most warnings one reload's answer carries (the log has them all).
    const MAX_NOTES: usize = 4;

    /// `text` with the warnings heard meanwhile, one a line.
    fn with_notes(text: String, notes: &[String]) -> String {
        std::iter::once(text)
            .chain(notes.iter().cloned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

enum AfterStop {
    Nothing,
    Start,
    Delete,
    Quit,
}

struct Actor {
    id: u32,
    def: AppDef,
    /// Where the log files go unless the definition names them.
    home: Home,
    engine: Option<AppHandle>,
    events: Option<Events>,
    logs: AppLogs,
    sampler: Sampler,
    /// Samples in a row each slot's worker spent above the memory limit.
    over_limit: HashMap<usize, u32>,
    pending: Option<Pending>,
    /// Where the listeners are bound, as reported.
    listen: Vec<String>,
    /// How the engine instance ended last (None: running, or never ran).
    outcome: Option<Outcome>,
    deleted: bool,
    /// Told to [`AppCommand::Quit`], and done.
    quit: bool,
    /// An engine instance was started once (until then, the log files
    /// opened for it are removed again if the app is deleted).
    ever_started: bool,
    /// The sockets for the next start: those the daemon held for the app
    /// while no supervisor ran (see [`crate::held`]), or those a restart
    /// kept open.
    held: Held,
    /// A restart under way: the sockets its stop keeps, once it has ended.
    keeping: Option<oneshot::Receiver<Held>>,
    counters: Counters,
    /// When the app was taken, or last restarted, reloaded or reset (pm2's `created_at`).
    created_at: SystemTime,
    /// Each slot's (restarts, unstable) at the last `reset`, subtracted from
    /// what the engine counts; cleared when a new engine instance starts.
    reset_base: HashMap<usize, (u64, u32)>,
    /// Workers started per slot by the current (or last) engine instance: the
    /// restarts `list` and `jlist` show once it has ended (an app that went
    /// errored or was stopped keeps its count, as pm2's `restart_time` does).
    spawned: HashMap<usize, u64>,
    /// Restarts per slot counted by earlier engine instances of this app
    /// (pm2's `restart_time` goes on across a `restart` and a stop/start);
    /// cleared by `reset`.
    carried: HashMap<usize, u64>,
    /// The next engine instance replaces a running one (`restart`): each
    /// slot's count goes up by one, as pm2 counts a restart.
    restart_bump: bool,
    /// Each slot's last worker exit as pm2's `exit_code` counts it (a death
    /// by signal is 0); kept after the app stops.
    exit_codes: HashMap<usize, i32>,
    /// What the last command wished for (kept by the keeper).
    desired: Desired,
    keeper: Box<dyn Keeper>,
    /// Lifecycle events for followers.
    follow: Followers,
    /// Set once the app is frozen for an in-place upgrade: the actor ends.
    handover: Option<Handover>,
}

fn done(message: String) -> Ticket {
    Ticket::Done { message }
}

fn aborted(why: String) -> Ticket {
    Ticket::Aborted { why }
}

fn refused(why: String) -> Ticket {
    Ticket::Refused { why }
}

impl Actor {
    fn name(&self) -> &str {
        &self.def.spec.name
    }

    fn say(&self, text: impl std::fmt::Display) {
        crate::say!("app {}: {text}", self.name());
    }

    /// Tell the followers (none listening is fine).
    fn tell(&self, event: proto::Event) {
        self.follow.send(event);
    }

    /// The wish of the last command, and the definition, to the keeper.
    fn changed(&mut self, desired: Desired) {
        self.desired = desired;
        self.keeper.app_changed(&self.def, desired);
    }

    /// The actor's loop. Not an `async fn`: that would move `self` (3.4 kB)
    /// from its argument into a local, and the future would keep room for
    /// both for the app's life; the block uses the captured one in place.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    fn run(
        mut self,
        mut commands: mpsc::Receiver<Envelope>,
        mut queries: mpsc::Receiver<oneshot::Sender<proto::App>>,
    ) -> impl std::future::Future<Output = Option<Handover>> {
        async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut queries_open = true;
            while !self.deleted && !self.quit && self.handover.is_none() {
                tokio::select! {
                    query = queries.recv(), if queries_open => match query {
                        Some(reply) => {
                            let app = on_heap(|| self.app()).await;
                            let _ = reply.send(app);
                        }
                        None => queries_open = false,
                    },
                    envelope = commands.recv(), if self.pending.is_none() => match envelope {
                        // A command's future is large (3 kB) and brief: inline,
                        // the loop's future and its poll would keep room for it.
                        Some(e) => on_heap(|| self.begin(e.command, e.reply)).await,
                        // Every handle let go of the app: its owner is ending.
                        None => {
                            if let Some(engine) = &self.engine {
                                engine.command(Command::Stop);
                            }
                            on_heap(|| self.drain_until_exit()).await;
                            break;
                        }
                    },
                    event = next_event(&mut self.events) => self.on_event(event),
                    _ = tick.tick() => on_heap(|| self.sample()).await,
                }
            }
            if self.deleted {
                self.tell(proto::Event::Deleted);
            }
            self.handover.take()
        }
    }

    /// Read events until the engine instance is gone.
    async fn drain_until_exit(&mut self) {
        while self.events.is_some() {
            let event = next_event(&mut self.events).await;
            self.on_event(event);
        }
    }

    /// Probe the new binary, freeze the app and keep it for the host (the
    /// actor then ends); the app runs on as it was if either fails.
    async fn upgrade(&mut self, exe: PathBuf) -> Ticket {
        let Some(engine) = self.engine.clone() else {
            return refused(format!(
                "{} is stopped: its supervisor upgrades when the app runs",
                self.name()
            ));
        };
        let path = exe.clone();
        let probed =
            match tokio::task::spawn_blocking(move || herd_engine::upgrade::probe(&path)).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return refused(format!("{}: {e}", self.name())),
                Err(e) => return aborted(format!("{}: the probe failed: {e}", self.name())),
            };
        // The engine settles the app; its events go on meanwhile, and end
        // once it is frozen.
        let freeze = engine.freeze();
        tokio::pin!(freeze);
        let frozen = loop {
            tokio::select! {
                r = &mut freeze => break r,
                event = next_event(&mut self.events) => match event {
                    Some(event) => self.on_event(Some(event)),
                    // The events end as the freeze completes.
                    None => self.events = None,
                },
            }
        };
        let frozen = match frozen {
            Ok(f) => f,
            Err(e) => {
                return aborted(format!(
                    "{}: cannot freeze the app for the upgrade: {e}; it runs on",
                    self.name()
                ))
            }
        };
        while let Some(events) = &mut self.events {
            match events.recv_timed().await {
                Some(event) => self.on_event(Some(event)),
                None => self.events = None,
            }
        }
        self.engine = None;
        self.say(format!("upgrading in place to {}", exe.display()));
        // The log files go with the app (opened again by path if they cannot).
        let kept = self.logs.kept_fds().unwrap_or_default();
        let log_files = kept
            .iter()
            .map(|(slot, which, _)| (*slot, *which))
            .collect();
        let log_fds = kept.into_iter().map(|(_, _, fd)| fd).collect();
        self.handover = Some(Handover {
            frozen,
            probed,
            log_fds,
            carried: Carried {
                log_files,
                counters: self.counters.to_protocol(),
                created_at_ms: crate::server::unix_ms(self.created_at),
                reset_base: self.reset_base.iter().map(|(k, v)| (*k, *v)).collect(),
                spawned: self.spawned.iter().map(|(k, v)| (*k, *v)).collect(),
                carried: self.carried.iter().map(|(k, v)| (*k, *v)).collect(),
                restart_bump: self.restart_bump,
                exit_codes: self.exit_codes.iter().map(|(k, v)| (*k, *v)).collect(),
                desired: self.desired,
                listen: self.listen.clone(),
            },
        });
        done(format!(
            "{}: its supervisor (pid {}) executes {}",
            self.name(),
            std::process::id(),
            exe.display()
        ))
    }

    fn start_engine(&mut self) -> Ticket {
        if self.engine.is_some() {
            return done(format!("{} is already running", self.name()));
        }
        let held = std::mem::take(&mut self.held);
        match supervisor::start_holding(self.engine_spec(), held) {
            Ok((handle, events)) => {
                self.engine = Some(handle);
                self.events = Some(events);
                self.ever_started = true;
                self.outcome = None;
                self.listen.clear();
                self.over_limit.clear();
                let bump = u64::from(std::mem::take(&mut self.restart_bump));
                for slot in 0..self.def.spec.instances.max(self.spawned.len()) {
                    let before = self.shown_restarts(slot);
                    if before > 0 || bump > 0 {
                        self.carried.insert(slot, before + bump);
                    }
                }
                self.reset_base.clear();
                self.spawned.clear();
                self.tell(proto::Event::Started);
                done(format!("started {}", self.name()))
            }
            Err(e) => aborted(format!("cannot start {}: {e}", self.name())),
        }
    }

    async fn begin(&mut self, command: AppCommand, reply: oneshot::Sender<Ticket>) {
        match command {
            AppCommand::Upgrade { exe } => {
                let _ = reply.send(self.upgrade(exe).await);
            }
            AppCommand::Start => {
                self.changed(Desired::Running);
                let _ = reply.send(self.start_engine());
            }
            AppCommand::Stop => {
                self.changed(Desired::Stopped);
                match &self.engine {
                    Some(e) => {
                        e.command(Command::Stop);
                        self.pending = Some(Pending::Stop {
                            reply,
                            then: AfterStop::Nothing,
                        });
                    }
                    None => {
                        let _ = reply.send(done(format!("{} is already stopped", self.name())));
                    }
                }
            }
            AppCommand::Restart { slot: None } => {
                self.created_at = SystemTime::now();
                self.changed(Desired::Running);
                self.restart(reply)
            }
            AppCommand::RestartWith(def) => {
                self.created_at = SystemTime::now();
                if let Err(e) = self.adopt(*def) {
                    let _ = reply.send(aborted(e));
                    return;
                }
                self.changed(Desired::Running);
                self.restart(reply)
            }
            AppCommand::Reset => {
                self.created_at = SystemTime::now();
                self.carried.clear();
                self.reset_base = match self.engine_status().await {
                    Some(s) => s
                        .machine
                        .slots
                        .iter()
                        .map(|slot| (slot.slot, (slot.restarts, slot.unstable)))
                        .collect(),
                    None => {
                        self.spawned.clear();
                        HashMap::new()
                    }
                };
                let _ = reply.send(done(format!(
                    "reset the restart counters of {}",
                    self.name()
                )));
            }
            AppCommand::Restart { slot: Some(slot) } => match &self.engine {
                Some(e) if slot < self.def.spec.instances => {
                    let ticket = e.ask(Command::Replace(slot));
                    self.pending = Some(Pending::Engine {
                        ticket,
                        what: "replacement",
                        done: format!("replaced worker {slot} of {}", self.name()),
                        reply,
                        notes: Vec::new(),
                    });
                }
                Some(_) => {
                    let _ = reply.send(refused(format!(
                        "{} has no worker {slot}: its workers are 0 to {}",
                        self.name(),
                        self.def.spec.instances.saturating_sub(1)
                    )));
                }
                None => {
                    let _ = reply.send(refused(format!(
                        "{} is stopped: start it with `herd restart {}`",
                        self.name(),
                        self.name()
                    )));
                }
            },
            AppCommand::Reload { def } => {
                self.created_at = SystemTime::now();
                self.reload(def, reply)
            }
            AppCommand::Delete => match &self.engine {
                Some(e) => {
                    e.command(Command::Stop);
                    self.pending = Some(Pending::Stop {
                        reply,
                        then: AfterStop::Delete,
                    });
                }
                None => {
                    if !self.ever_started {
                        // Its start failed: leave no empty log files behind.
                        self.logs.remove_if_unused();
                    }
                    self.deleted = true;
                    let _ = reply.send(done(format!("deleted {}", self.name())));
                }
            },
            AppCommand::Quit => match &self.engine {
                Some(e) => {
                    e.command(Command::Stop);
                    self.pending = Some(Pending::Stop {
                        reply,
                        then: AfterStop::Quit,
                    });
                }
                None => {
                    self.quit = true;
                    let _ = reply.send(done(format!("stopped {}", self.name())));
                }
            },
            AppCommand::Flush => {
                let r = self.logs.truncate();
                let _ = reply.send(match r {
                    Ok(()) => done(format!("flushed the logs of {}", self.name())),
                    Err(e) => aborted(format!("cannot flush the logs of {}: {e}", self.name())),
                });
            }
            AppCommand::Scale(to) => {
                let now = self.def.spec.instances as i64;
                let n = match to {
                    // Saturating: a count no machine runs is refused below, never wrapped.
                    ScaleTo::Exactly(n) => i64::try_from(n).unwrap_or(i64::MAX),
                    ScaleTo::By(d) => now.saturating_add(d),
                };
                if !(1..=4096).contains(&n) {
                    let _ = reply.send(refused(format!(
                        "cannot scale {} to {n} workers: use 1 to 4096 (stop it to run none)",
                        self.name()
                    )));
                    return;
                }
                self.def.spec.instances = n as usize;
                self.def.instances_max = false;
                let desired = self.desired;
                self.changed(desired);
                let message = format!("{} now has {n} worker(s)", self.name());
                match &self.engine {
                    Some(e) => {
                        let ticket = e.ask(Command::Scale(n as usize));
                        self.pending = Some(Pending::Engine {
                            ticket,
                            what: "scaling",
                            done: message,
                            reply,
                            notes: Vec::new(),
                        });
                    }
                    None => {
                        let _ = reply.send(done(message));
                    }
                }
            }
            AppCommand::Send { slot, message } => {
                let _ = reply.send(match &self.engine {
                    Some(_) if slot.is_some_and(|s| s >= self.def.spec.instances) => {
                        refused(format!(
                            "{} has no worker {}: its workers are 0 to {}",
                            self.name(),
                            slot.unwrap_or_default(),
                            self.def.spec.instances.saturating_sub(1)
                        ))
                    }
                    Some(e) => {
                        e.send(slot.map_or(Target::All, Target::Slot), message);
                        done(format!("sent to {}", self.name()))
                    }
                    None => refused(format!("{} is stopped", self.name())),
                });
            }
            AppCommand::Signal(sig) => {
                let _ = reply.send(match &self.engine {
                    Some(e) => {
                        e.signal(Target::All, sig.0);
                        done(format!("sent {sig} to the workers of {}", self.name()))
                    }
                    None => refused(format!("{} is stopped", self.name())),
                });
            }
            AppCommand::ReopenLogs => {
                let r = self.logs.reopen();
                let _ = reply.send(match r {
                    Ok(()) => done(String::new()),
                    Err(e) => aborted(e.to_string()),
                });
            }
        }
    }

    /// Stop, then start (a stopped app is just started).
    fn restart(&mut self, reply: oneshot::Sender<Ticket>) {
        match &self.engine {
            Some(e) => {
                // The sockets stay open across it: clients wait, none is refused.
                self.keeping = Some(e.stop_keeping_sockets());
                self.restart_bump = true;
                self.pending = Some(Pending::Stop {
                    reply,
                    then: AfterStop::Start,
                });
            }
            None => {
                let _ = reply.send(self.start_engine());
            }
        }
    }

    /// The definition as the engine runs it: the instance count resolved,
    /// and the app's id (`pm_id` in the workers' environment).
    fn engine_spec(&self) -> AppSpec {
        let mut spec = self.def.spec.clone();
        if self.def.instances_max {
            spec.instances = Instances::Max.resolve();
        }
        spec.app_id = Some(self.id);
        spec
    }

    /// Take a new definition (its log files opened first: a path that
    /// cannot be opened leaves everything as it was); returns the old one.
    fn adopt(&mut self, new: AppDef) -> Result<AppDef, String> {
        if new.logs != self.def.logs {
            self.logs = AppLogs::open(&new, &self.home, self.id)?;
        }
        Ok(std::mem::replace(&mut self.def, new))
    }

    fn reload(&mut self, def: Option<Box<AppDef>>, reply: oneshot::Sender<Ticket>) {
        let reloaded = |name: &str| format!("reloaded {name}");
        if let Some(new) = def {
            let old = match self.adopt(*new) {
                Ok(old) => old,
                Err(e) => {
                    let _ = reply.send(aborted(e));
                    return;
                }
            };
            self.changed(Desired::Running);
            if let Some(engine) = &self.engine {
                match engine.update(&old.spec, self.engine_spec()) {
                    Ok(ticket) => {
                        self.pending = Some(Pending::Engine {
                            ticket,
                            what: "reload",
                            done: reloaded(self.name()),
                            reply,
                            notes: Vec::new(),
                        });
                        return;
                    }
                    Err(UpdateError::Listeners) => {
                        // New sockets: only a stop and a start can give them
                        // (those at the same addresses are kept open).
                        self.keeping = Some(engine.stop_keeping_sockets());
                        self.pending = Some(Pending::Stop {
                            reply,
                            then: AfterStop::Start,
                        });
                        return;
                    }
                    Err(UpdateError::Gone) => {}
                }
            }
        } else {
            self.changed(Desired::Running);
        }
        match &self.engine {
            Some(e) => {
                let ticket = e.ask(Command::Reload);
                self.pending = Some(Pending::Engine {
                    ticket,
                    what: "reload",
                    done: reloaded(self.name()),
                    reply,
                    notes: Vec::new(),
                });
            }
            None => {
                let _ = reply.send(self.start_engine());
            }
        }
    }

    #[inline(never)]
    fn on_event(&mut self, event: Option<Timed>) {
        let Some((at, event)) = event else {
            // The engine's task ended without an exit event (it panicked).
            self.events = None;
            if self.engine.take().is_some() {
                self.say("its supervisor task ended unexpectedly; the app is stopped");
                let outcome = Outcome::Completed { success: false };
                self.tell(proto::Event::Ended {
                    outcome: outcome.clone(),
                });
                self.outcome = Some(outcome);
                self.finish_stop();
            }
            return;
        };
        match event {
            Event::Listening { addr, .. } => {
                let addr = addr.to_string();
                self.say(format!("listening on {addr}"));
                self.tell(proto::Event::Listening { addr: addr.clone() });
                if !self.listen.contains(&addr) {
                    self.listen.push(addr);
                }
            }
            Event::Output {
                stream,
                slot,
                lines,
                ..
            } => {
                let written = self.logs.write(stream, slot, &lines, at);
                if written > 0 {
                    let i = match stream {
                        Stream::Stdout => 0,
                        Stream::Stderr => 1,
                    };
                    self.counters.log_bytes[i] += written as u64;
                    self.counters.log_lines[i] +=
                        lines.iter().filter(|&&b| b == b'\n').count() as u64;
                }
            }
            // A worker's process.send(x) is for its primary: under `herd run`
            // it is printed; the daemon has no reader for it, and logging it
            // would let a chatty worker fill the daemon's own log.
            Event::Message { .. } => {}
            Event::Warning(text) => {
                if let Some(Pending::Engine { notes, .. }) = &mut self.pending {
                    if notes.len() < Pending::MAX_NOTES {
                        notes.push(format!("warning: {text}"));
                    }
                }
                self.say(format!("warning: {text}"));
                self.tell(proto::Event::Warning { text });
            }
            // The end of a command of ours: not news for the log.
            Event::Lifecycle(Report::Answered { ticket, answer }) => self.on_answer(ticket, answer),
            Event::Lifecycle(report) => {
                self.say(&report);
                self.on_report(&report);
                self.tell(proto::Event::Lifecycle { report });
            }
            Event::Exit(outcome) => {
                self.say(format!("ended: {outcome}"));
                self.tell(proto::Event::Ended {
                    outcome: outcome.clone(),
                });
                self.outcome = Some(outcome);
                self.engine = None;
                self.events = None;
                self.finish_stop();
            }
        }
    }

    fn on_report(&mut self, report: &Report) {
        match report {
            Report::Online { pid, slot } => {
                self.keeper.worker_started(*pid);
                *self.spawned.entry(*slot).or_default() += 1;
            }
            Report::Exited {
                slot, status, pid, ..
            } => {
                let key = match status {
                    ExitStatus::Code(c) => (*slot, proto::ExitCause::Code, c.to_string()),
                    ExitStatus::Signal(s) => {
                        (*slot, proto::ExitCause::Signal, s.as_str().to_string())
                    }
                };
                let code = match status {
                    ExitStatus::Code(c) => *c,
                    ExitStatus::Signal(_) => 0,
                };
                self.exit_codes.insert(*slot, code);
                *self.counters.exits.entry(key).or_default() += 1;
                self.keeper.worker_ended(*pid);
            }
            Report::ReloadFinished => self.counters.reloads += 1,
            Report::ReloadAborted { .. } => {
                self.counters.reloads += 1;
                self.counters.reloads_failed += 1;
            }
            _ => {}
        }
    }

    /// The engine answered a ticket: the pending command's, or one nobody waits for.
    fn on_answer(&mut self, answered: herd_engine::machine::Ticket, answer: Answer) {
        match &self.pending {
            Some(Pending::Engine { ticket, .. }) if *ticket == answered => {}
            _ => return,
        }
        let Some(Pending::Engine {
            what,
            done,
            reply,
            notes,
            ..
        }) = self.pending.take()
        else {
            unreachable!("checked above");
        };
        let name = self.name();
        let said = |text: String| Pending::with_notes(text, &notes);
        let ticket = match answer {
            Answer::Done => Ticket::Done {
                message: said(done),
            },
            aborted @ Answer::Aborted { .. } => {
                let text = format!("{name}: the {what} was {aborted}");
                self::aborted(said(text))
            }
            Answer::Refused(why) => refused(said(format!("{name}: the {what} was refused: {why}"))),
        };
        let _ = reply.send(ticket);
    }

    /// The engine instance ended: finish a pending stop.
    fn finish_stop(&mut self) {
        // What a restart kept open (sent before the engine's end was seen).
        if let Some(mut keeping) = self.keeping.take() {
            if let Ok(kept) = keeping.try_recv() {
                self.held = kept;
            }
        }
        let restarting = matches!(
            self.pending,
            Some(Pending::Stop {
                then: AfterStop::Start,
                ..
            })
        );
        if !restarting {
            std::mem::take(&mut self.held).into_shut_down();
        }
        match self.pending.take() {
            Some(Pending::Stop { reply, then }) => {
                let ticket = match then {
                    AfterStop::Nothing => done(format!("stopped {}", self.name())),
                    AfterStop::Start => match self.start_engine() {
                        Ticket::Done { .. } => done(format!("restarted {}", self.name())),
                        other => other,
                    },
                    AfterStop::Delete => {
                        self.deleted = true;
                        done(format!("deleted {}", self.name()))
                    }
                    AfterStop::Quit => {
                        self.quit = true;
                        done(format!("stopped {}", self.name()))
                    }
                };
                let _ = reply.send(ticket);
            }
            Some(Pending::Engine { reply, what, .. }) => {
                let _ = reply.send(aborted(format!(
                    "{} ended during the {what}: {}",
                    self.name(),
                    self.outcome
                        .as_ref()
                        .map(|o| o.to_string())
                        .unwrap_or_else(|| "unknown".into())
                )));
            }
            None => {}
        }
    }

    /// The engine's status, reading events meanwhile (the engine may be
    /// waiting for room in its event stream before it can answer).
    async fn engine_status(&mut self) -> Option<AppStatus> {
        let engine = self.engine.clone()?;
        let query = engine.status();
        tokio::pin!(query);
        loop {
            tokio::select! {
                status = &mut query => return status,
                event = next_event(&mut self.events) => {
                    self.on_event(event);
                    self.engine.as_ref()?;
                }
            }
        }
    }

    /// Sample the workers' CPU and memory; replace a worker that stayed over
    /// the memory limit.
    async fn sample(&mut self) {
        let Some(status) = self.engine_status().await else {
            self.sampler.retain(&[]);
            return;
        };
        let now = Instant::now();
        let mut live = Vec::new();
        for slot in &status.machine.slots {
            for w in [&slot.current, &slot.successor].into_iter().flatten() {
                if let Some(pid) = w.pid {
                    live.push(pid);
                    self.sampler.sample(pid, now);
                }
            }
        }
        for w in &status.machine.draining {
            if let Some(pid) = w.pid {
                live.push(pid);
                self.sampler.sample(pid, now);
            }
        }
        self.sampler.retain(&live);
        let Some(limit) = self.def.max_memory_restart else {
            return;
        };
        for slot in &status.machine.slots {
            let over = match (&slot.current, &slot.successor) {
                (Some(w), None) if w.phase == WorkerPhase::Ready => w
                    .pid
                    .is_some_and(|pid| self.sampler.last(pid).rss_bytes > limit),
                _ => false,
            };
            let count = self.over_limit.entry(slot.slot).or_default();
            *count = if over { *count + 1 } else { 0 };
            if *count >= OVER_LIMIT_SAMPLES {
                *count = 0;
                let rss = slot
                    .current
                    .as_ref()
                    .and_then(|w| w.pid)
                    .map(|pid| self.sampler.last(pid).rss_bytes)
                    .unwrap_or(0);
                self.say(format!(
                    "worker {} uses {} MB, over --max-memory-restart {} MB: replacing it",
                    slot.slot,
                    rss >> 20,
                    limit >> 20
                ));
                if let Some(e) = &self.engine {
                    e.command(Command::Replace(slot.slot));
                }
            }
        }
    }

    /// The app as a status shows it: sampled where a worker is new, its
    /// summary computed once, here.
    async fn app(&mut self) -> proto::App {
        let status = self.engine_status().await;
        self.sample_new(&status);
        // The crash-loop count starts over by itself (a stable run): from
        // then on, a `reset` has nothing left to take off it.
        if let Some(s) = &status {
            for slot in &s.machine.slots {
                if let Some(base) = self.reset_base.get_mut(&slot.slot) {
                    if slot.unstable < base.1 {
                        base.1 = 0;
                    }
                }
            }
        }
        self.app_of(&status)
    }

    /// Sample the workers not sampled yet (just started), so that the first
    /// table `herd start` prints shows their memory, not 0b.
    fn sample_new(&mut self, status: &Option<AppStatus>) {
        let Some(status) = status else { return };
        let now = Instant::now();
        let m = &status.machine;
        let pids = m
            .slots
            .iter()
            .flat_map(|s| [&s.current, &s.successor])
            .flatten()
            .chain(&m.draining)
            .filter_map(|w| w.pid);
        for pid in pids {
            if !self.sampler.has(pid) {
                self.sampler.sample(pid, now);
            }
        }
    }

    /// A slot's restarts as `list` and `jlist` show them once the engine
    /// instance has ended: those of earlier instances, and this one's.
    fn shown_restarts(&self, slot: usize) -> u64 {
        let started = self.spawned.get(&slot).copied().unwrap_or(0);
        self.carried.get(&slot).copied().unwrap_or(0)
            + started.saturating_sub(1).saturating_sub(self.base(slot).0)
    }

    /// A slot's (restarts, unstable) at the last `reset`.
    fn base(&self, slot: usize) -> (u64, u32) {
        self.reset_base.get(&slot).copied().unwrap_or_default()
    }

    /// The app, its workers (with their samples), its summary and its
    /// counters, typed.
    fn app_of(&self, status: &Option<AppStatus>) -> proto::App {
        let log_paths = crate::logs::paths(&self.def, &self.home);
        let spec = &self.def.spec;
        let mut workers = Vec::new();
        let mut processes = Vec::new();
        let (state, instances, slots) = match status {
            None => {
                let errored = matches!(self.outcome, Some(Outcome::Errored { .. }));
                let state = if errored {
                    WorkerState::Errored
                } else {
                    WorkerState::Stopped
                };
                for slot in 0..spec.instances {
                    let restarts = self.shown_restarts(slot);
                    workers.push(self.worker(
                        slot,
                        None,
                        state,
                        WorkerRole::Current,
                        restarts,
                        None,
                    ));
                }
                let app = if errored {
                    AppState::Errored
                } else {
                    AppState::Stopped
                };
                let slots = (0..spec.instances)
                    .map(|slot| SlotDetail {
                        slot,
                        unstable_restarts: 0,
                        exit_code: self.exit_codes.get(&slot).copied(),
                    })
                    .collect();
                (app, spec.instances, slots)
            }
            Some(s) => {
                let m = &s.machine;
                let mut worker = |w: &herd_engine::machine::WorkerStatus, role, restarts| {
                    let info = self.worker(
                        w.slot,
                        w.pid,
                        worker_state(w.phase),
                        role,
                        restarts,
                        Some(w.uptime),
                    );
                    if let Some(pid) = w.pid {
                        let rr = s.round_robin.iter().find(|r| r.pid == pid);
                        processes.push(proto::Process {
                            pid,
                            cpu_seconds: self.sampler.cpu_seconds(pid),
                            handed_over: rr.map(|r| r.handed_over),
                            pending_connections: rr.map(|r| r.pending),
                        });
                    }
                    info
                };
                for slot in &m.slots {
                    let restarts = slot.restarts.saturating_sub(self.base(slot.slot).0)
                        + self.carried.get(&slot.slot).copied().unwrap_or(0);
                    workers.push(match &slot.current {
                        Some(w) => worker(w, WorkerRole::Current, restarts),
                        None => {
                            let state = match slot.phase {
                                SlotPhase::Backoff => WorkerState::Waiting,
                                SlotPhase::Errored => WorkerState::Errored,
                                SlotPhase::Done => WorkerState::Stopped,
                                SlotPhase::Live => WorkerState::Launching,
                            };
                            let role = WorkerRole::Current;
                            self.worker(slot.slot, None, state, role, restarts, None)
                        }
                    });
                    if let Some(w) = &slot.successor {
                        workers.push(worker(w, WorkerRole::Successor, restarts));
                    }
                }
                for w in &m.draining {
                    let mut draining = worker(w, WorkerRole::Draining, 0);
                    draining.state = WorkerState::Stopping;
                    workers.push(draining);
                }
                let online = ready_slots(&workers);
                let errored = m.slots.iter().all(|s| s.phase == SlotPhase::Errored);
                let state = if m.stopping {
                    AppState::Stopping
                } else if m.reloading {
                    AppState::Reloading
                } else if errored {
                    AppState::Errored
                } else if online == m.slots.len() {
                    AppState::Online
                } else {
                    AppState::Launching
                };
                let slots = m
                    .slots
                    .iter()
                    .map(|slot| SlotDetail {
                        slot: slot.slot,
                        unstable_restarts: slot.unstable.saturating_sub(self.base(slot.slot).1),
                        exit_code: self.exit_codes.get(&slot.slot).copied(),
                    })
                    .collect();
                (state, m.slots.len(), slots)
            }
        };
        // Every socket reported bound (Node apps ask for theirs as they start).
        let listen = match status {
            Some(_) => self.listen.clone(),
            None => spec.listeners.iter().map(|l| l.addr.to_string()).collect(),
        };
        proto::App {
            info: AppInfo {
                name: spec.name.clone(),
                id: self.id,
                mode: spec.exec_mode,
                state,
                instances,
                online: ready_slots(&workers),
                listen,
                out_log: log_paths.out,
                err_log: log_paths.err,
                merge_logs: self.def.logs.merge_logs,
                workers,
            },
            counters: self.counters.to_protocol(),
            created_at_ms: crate::server::unix_ms(self.created_at),
            slots,
            processes,
            sockets: status
                .iter()
                .flat_map(|s| &s.sockets)
                .map(|(addr, fd)| proto::Socket {
                    addr: addr.clone(),
                    fd: *fd,
                })
                .collect(),
        }
    }

    /// One worker (or an empty slot) with its last sample.
    fn worker(
        &self,
        slot: usize,
        pid: Option<u32>,
        state: WorkerState,
        role: WorkerRole,
        restarts: u64,
        uptime: Option<Duration>,
    ) -> WorkerInfo {
        let usage = pid.map(|p| self.sampler.last(p)).unwrap_or_default();
        WorkerInfo {
            slot,
            pid,
            state,
            role,
            restarts,
            uptime_ms: uptime.unwrap_or_default().as_millis() as u64,
            cpu_percent: (usage.cpu_percent * 10.0).round() / 10.0,
            memory_bytes: usage.rss_bytes,
        }
    }
}

/// Slots whose current worker is ready for traffic: the app's `online`.
fn ready_slots(workers: &[WorkerInfo]) -> usize {
    workers
        .iter()
        .filter(|w| w.role == WorkerRole::Current && w.state == WorkerState::Online)
        .count()
}

fn worker_state(phase: WorkerPhase) -> WorkerState {
    match phase {
        WorkerPhase::Ready => WorkerState::Online,
        WorkerPhase::Starting | WorkerPhase::Online => WorkerState::Launching,
        WorkerPhase::Stopping => WorkerState::Stopping,
    }
}

/// The next event of a running engine instance; never resolves without one.
async fn next_event(events: &mut Option<Events>) -> Option<Timed> {
    match events {
        Some(rx) => rx.recv_timed().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_kept(f: &Followers) -> bool {
        f.0.lock().unwrap().is_some()
    }

    #[test]
    fn the_followers_ring_exists_only_while_someone_follows() {
        let followers = Followers::default();
        followers.send(proto::Event::Started);
        assert!(!ring_kept(&followers), "made with nobody following");

        let mut first = followers.subscribe();
        let mut second = followers.clone().subscribe();
        followers.send(proto::Event::Started);
        assert!(matches!(
            first.try_recv().as_deref(),
            Ok(proto::Event::Started)
        ));
        assert!(matches!(
            second.try_recv().as_deref(),
            Ok(proto::Event::Started)
        ));

        drop(first);
        followers.send(proto::Event::Deleted);
        assert!(matches!(
            second.try_recv().as_deref(),
            Ok(proto::Event::Deleted)
        ));
        assert!(ring_kept(&followers), "let go while one still follows");

        drop(second);
        followers.send(proto::Event::Started);
        assert!(!ring_kept(&followers), "kept after the last follower went");

        let mut again = followers.subscribe();
        followers.send(proto::Event::Deleted);
        assert!(matches!(
            again.try_recv().as_deref(),
            Ok(proto::Event::Deleted)
        ));
    }
}
