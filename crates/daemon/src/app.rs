//! One app in the daemon: an actor task that owns the app's engine instance
//! (while it runs), its event stream, its log files and its resource
//! samples, and carries out the app's commands one at a time.
//!
//! Commands queue in a bounded channel and are taken one by one: a command
//! that takes time (a reload waits for `reload finished`, a stop for the
//! app's exit) is *pending* until its end shows in the event stream, and the
//! next command waits for it. Events keep being read meanwhile, so a worker's
//! output is never held up by a command.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use herd_engine::config::{AppSpec, Instances};
use herd_engine::machine::{Command, Outcome, Report, SlotPhase, WorkerPhase};
use herd_engine::supervisor::{
    self, AppHandle, AppStatus, Event, Events, RoundRobinStats, Stream, Target, Timed, UpdateError,
};
use herd_engine::ExitStatus;
use herd_protocol::{AppDef, AppDetail, AppInfo, ScaleTo, SecretNames, SlotDetail, WorkerInfo};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};

use crate::logs::AppLogs;
use crate::sample::Sampler;
use crate::Home;

/// How often worker CPU and memory are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples in a row above `max_memory_restart` before a worker is replaced.
const OVER_LIMIT_SAMPLES: u32 = 2;

/// What can be asked of an app.
#[derive(Debug)]
pub enum AppCommand {
    /// Start it if it is stopped.
    Start,
    Stop,
    /// Stop then start; with a worker, replace only that one (zero-downtime).
    Restart {
        worker: Option<usize>,
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
    Flush,
    Scale(ScaleTo),
    Send {
        worker: Option<usize>,
        message: serde_json::Value,
    },
    Signal(Signal),
    ReopenLogs,
}

/// What the app counted since the daemon took it (for metrics; these
/// survive restarts and reloads of the app, not a daemon restart).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Worker exits by (slot, cause, what): cause `code` with the exit code,
    /// or `signal` with the signal's name.
    pub exits: BTreeMap<(usize, &'static str, String), u64>,
    /// Reloads (and one-worker replacements) that ended, and those of them
    /// that were aborted.
    pub reloads: u64,
    pub reloads_failed: u64,
    /// Bytes and lines written to the log files: `[stdout, stderr]`.
    pub log_bytes: [u64; 2],
    pub log_lines: [u64; 2],
}

/// The app as the metrics endpoint shows it: the `list` view plus counters.
#[derive(Debug, Clone)]
pub struct AppMetrics {
    pub info: AppInfo,
    pub counters: Counters,
    /// Round-robin hand-overs per worker (empty without a round-robin socket).
    pub round_robin: Vec<RoundRobinStats>,
    /// CPU time (user + system) each live worker pid used so far, in seconds.
    pub cpu_seconds: HashMap<u32, f64>,
}

/// The result of a command: what happened, in words, or why it failed.
pub type Reply = Result<String, String>;

/// A command with the place to put its result.
#[derive(Debug)]
pub struct Envelope {
    pub command: AppCommand,
    pub reply: oneshot::Sender<Reply>,
}

/// A read-only question: answered at once, even while a command is
/// pending (a reload can take minutes; `list`, `/metrics` and `/readyz`
/// must not wait for it).
#[derive(Debug)]
pub enum Query {
    Info(oneshot::Sender<AppInfo>),
    Metrics(oneshot::Sender<AppMetrics>),
    /// The definition; its secret environment values hidden unless `reveal`.
    Def {
        reveal: bool,
        reply: oneshot::Sender<AppDef>,
    },
    /// The app with its definition and counters; secrets hidden unless `reveal`.
    Detail {
        reveal: bool,
        reply: oneshot::Sender<AppDetail>,
    },
}

/// The sending side of an app's command queue (and of its queries).
#[derive(Debug, Clone)]
pub struct AppRef {
    tx: mpsc::Sender<Envelope>,
    queries: mpsc::Sender<Query>,
}

impl AppRef {
    /// Queue a command and wait for its result (an ended actor is an error).
    pub async fn ask(&self, command: AppCommand) -> Reply {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Envelope { command, reply }).await.is_err() {
            return Err("the app is gone (deleted meanwhile)".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("the app is gone (deleted meanwhile)".into()))
    }

    /// The app as `list` shows it (`None`: the app is gone).
    pub async fn info(&self) -> Option<AppInfo> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(Query::Info(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The app as `/metrics` shows it (`None`: the app is gone).
    pub async fn metrics(&self) -> Option<AppMetrics> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(Query::Metrics(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The app's definition as it may be shown: secret environment values
    /// hidden (`None`: the app is gone).
    pub async fn def(&self) -> Option<AppDef> {
        self.query_def(false).await
    }

    /// The app's whole definition, secrets included: for `save`, and for
    /// `show --show-secrets` (`None`: the app is gone).
    pub async fn def_with_secrets(&self) -> Option<AppDef> {
        self.query_def(true).await
    }

    async fn query_def(&self, reveal: bool) -> Option<AppDef> {
        let (reply, rx) = oneshot::channel();
        self.queries.send(Query::Def { reveal, reply }).await.ok()?;
        rx.await.ok()
    }

    /// The app with its definition and counters, for pm2's `jlist`; secret
    /// environment values hidden unless `reveal` (`None`: the app is gone).
    pub async fn detail(&self, reveal: bool) -> Option<AppDetail> {
        let (reply, rx) = oneshot::channel();
        self.queries
            .send(Query::Detail { reveal, reply })
            .await
            .ok()?;
        rx.await.ok()
    }
}

/// Start the actor for app `id`; it starts no worker until told
/// [`AppCommand::Start`]. `secrets` says which environment values its
/// answers hide.
pub fn spawn(id: u32, def: AppDef, home: &Home, secrets: SecretNames) -> Result<AppRef, String> {
    let (tx, rx) = mpsc::channel(64);
    let (queries, queries_rx) = mpsc::channel(64);
    let logs = AppLogs::open(&def, home, id)?;
    let actor = Actor {
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
        ever_started: false,
        counters: Counters::default(),
        secrets,
        created_at: SystemTime::now(),
        reset_base: HashMap::new(),
        spawned: HashMap::new(),
        carried: HashMap::new(),
        restart_bump: false,
        exit_codes: HashMap::new(),
    };
    tokio::spawn(actor.run(rx, queries_rx));
    Ok(AppRef { tx, queries })
}

/// A command waiting for its end to show in the event stream.
enum Pending {
    /// A reload or a one-worker replacement: ends with `reload finished` or
    /// aborted. The engine's warnings meanwhile (a reload that is a restart,
    /// and why; what `tcp_migrate_req` costs) go into the answer too, so
    /// whoever asked reads them, not only the daemon's log.
    Reload {
        reply: oneshot::Sender<Reply>,
        notes: Vec<String>,
    },
    /// A stop: ends with the app's exit; then what.
    Stop {
        reply: oneshot::Sender<Reply>,
        then: AfterStop,
    },
}

impl Pending {
    /// The most warnings one reload's answer carries (the log has them all).
    const MAX_NOTES: usize = 4;

    fn reload(reply: oneshot::Sender<Reply>) -> Pending {
        Pending::Reload {
            reply,
            notes: Vec::new(),
        }
    }
}

enum AfterStop {
    Nothing,
    Start,
    Delete,
}

struct Actor {
    id: u32,
    def: AppDef,
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
    /// An engine instance was started once (until then, the log files
    /// opened for it are removed again if the app is deleted).
    ever_started: bool,
    counters: Counters,
    secrets: SecretNames,
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
}

impl Actor {
    fn name(&self) -> &str {
        &self.def.spec.name
    }

    fn say(&self, text: impl std::fmt::Display) {
        crate::say!("app {}: {text}", self.name());
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Envelope>,
        mut queries: mpsc::Receiver<Query>,
    ) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut queries_open = true;
        while !self.deleted {
            tokio::select! {
                query = queries.recv(), if queries_open => match query {
                    Some(Query::Info(tx)) => {
                        let info = self.info().await;
                        let _ = tx.send(info);
                    }
                    Some(Query::Metrics(tx)) => {
                        let metrics = self.metrics().await;
                        let _ = tx.send(metrics);
                    }
                    Some(Query::Def { reveal, reply }) => {
                        let mut def = self.def.clone();
                        if !reveal {
                            self.secrets.redact_def(&mut def);
                        }
                        let _ = reply.send(def);
                    }
                    Some(Query::Detail { reveal, reply }) => {
                        let mut detail = self.detail().await;
                        if !reveal {
                            self.secrets.redact_def(&mut detail.def);
                        }
                        let _ = reply.send(detail);
                    }
                    None => queries_open = false,
                },
                envelope = commands.recv(), if self.pending.is_none() => match envelope {
                    Some(e) => self.begin(e.command, e.reply).await,
                    // The registry let go of the app: the daemon is ending.
                    None => {
                        if let Some(engine) = &self.engine {
                            engine.command(Command::Stop);
                        }
                        self.drain_until_exit().await;
                        break;
                    }
                },
                event = next_event(&mut self.events) => self.on_event(event),
                _ = tick.tick() => self.sample().await,
            }
        }
    }

    /// Read events until the engine instance is gone.
    async fn drain_until_exit(&mut self) {
        while self.events.is_some() {
            let event = next_event(&mut self.events).await;
            self.on_event(event);
        }
    }

    fn start_engine(&mut self) -> Reply {
        if self.engine.is_some() {
            return Ok(format!("{} is already running", self.name()));
        }
        match supervisor::start(self.engine_spec()) {
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
                Ok(format!("started {}", self.name()))
            }
            Err(e) => Err(format!("cannot start {}: {e}", self.name())),
        }
    }

    async fn begin(&mut self, command: AppCommand, reply: oneshot::Sender<Reply>) {
        match command {
            AppCommand::Start => answer(reply, self.start_engine()),
            AppCommand::Stop => match &self.engine {
                Some(e) => {
                    e.command(Command::Stop);
                    self.pending = Some(Pending::Stop {
                        reply,
                        then: AfterStop::Nothing,
                    });
                }
                None => answer(reply, Ok(format!("{} is already stopped", self.name()))),
            },
            AppCommand::Restart { worker: None } => {
                self.created_at = SystemTime::now();
                self.restart(reply)
            }
            AppCommand::RestartWith(def) => {
                self.created_at = SystemTime::now();
                if let Err(e) = self.adopt(*def) {
                    return answer(reply, Err(e));
                }
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
                answer(
                    reply,
                    Ok(format!("reset the restart counters of {}", self.name())),
                );
            }
            AppCommand::Restart { worker: Some(slot) } => match &self.engine {
                Some(e) if slot < self.def.spec.instances => {
                    e.command(Command::Replace(slot));
                    self.pending = Some(Pending::reload(reply));
                }
                Some(_) => answer(
                    reply,
                    Err(format!(
                        "{} has no worker {slot}: its workers are 0 to {}",
                        self.name(),
                        self.def.spec.instances.saturating_sub(1)
                    )),
                ),
                None => answer(
                    reply,
                    Err(format!(
                        "{} is stopped: start it with `herd restart {}`",
                        self.name(),
                        self.name()
                    )),
                ),
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
                    answer(reply, Ok(format!("deleted {}", self.name())));
                }
            },
            AppCommand::Flush => {
                let r = self.logs.truncate();
                answer(
                    reply,
                    r.map(|_| format!("flushed the logs of {}", self.name()))
                        .map_err(|e| format!("cannot flush the logs of {}: {e}", self.name())),
                );
            }
            AppCommand::Scale(to) => {
                let now = self.def.spec.instances as i64;
                let n = match to {
                    ScaleTo::Exactly(n) => n as i64,
                    ScaleTo::By(d) => now + d,
                };
                if !(1..=4096).contains(&n) {
                    return answer(
                        reply,
                        Err(format!(
                            "cannot scale {} to {n} workers: use 1 to 4096 (stop it to run none)",
                            self.name()
                        )),
                    );
                }
                self.def.spec.instances = n as usize;
                self.def.instances_max = false;
                if let Some(e) = &self.engine {
                    e.command(Command::Scale(n as usize));
                }
                answer(reply, Ok(format!("{} now has {n} worker(s)", self.name())));
            }
            AppCommand::Send { worker, message } => match &self.engine {
                Some(e) => {
                    e.send(worker.map_or(Target::All, Target::Slot), message);
                    answer(reply, Ok(format!("sent to {}", self.name())));
                }
                None => answer(reply, Err(format!("{} is stopped", self.name()))),
            },
            AppCommand::Signal(sig) => match &self.engine {
                Some(e) => {
                    e.signal(Target::All, sig);
                    answer(
                        reply,
                        Ok(format!("sent {sig} to the workers of {}", self.name())),
                    );
                }
                None => answer(reply, Err(format!("{} is stopped", self.name()))),
            },
            AppCommand::ReopenLogs => {
                let r = self.logs.reopen();
                answer(reply, r.map(|_| String::new()).map_err(|e| e.to_string()));
            }
        }
    }

    /// Stop, then start (a stopped app is just started).
    fn restart(&mut self, reply: oneshot::Sender<Reply>) {
        match &self.engine {
            Some(e) => {
                e.command(Command::Stop);
                self.restart_bump = true;
                self.pending = Some(Pending::Stop {
                    reply,
                    then: AfterStop::Start,
                });
            }
            None => answer(reply, self.start_engine()),
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

    fn reload(&mut self, def: Option<Box<AppDef>>, reply: oneshot::Sender<Reply>) {
        if let Some(new) = def {
            let old = match self.adopt(*new) {
                Ok(old) => old,
                Err(e) => return answer(reply, Err(e)),
            };
            if let Some(engine) = &self.engine {
                match engine.update(&old.spec, self.engine_spec()) {
                    Ok(()) => {
                        self.pending = Some(Pending::reload(reply));
                        return;
                    }
                    Err(UpdateError::Listeners) => {
                        // New sockets: only a stop and a start can give them.
                        engine.command(Command::Stop);
                        self.pending = Some(Pending::Stop {
                            reply,
                            then: AfterStop::Start,
                        });
                        return;
                    }
                    Err(UpdateError::Gone) => {}
                }
            }
        }
        match &self.engine {
            Some(e) => {
                e.command(Command::Reload);
                self.pending = Some(Pending::reload(reply));
            }
            None => answer(reply, self.start_engine()),
        }
    }

    fn on_event(&mut self, event: Option<Timed>) {
        let Some((at, event)) = event else {
            // The engine's task ended without an exit event (it panicked).
            self.events = None;
            if self.engine.take().is_some() {
                self.say("its supervisor task ended unexpectedly; the app is stopped");
                self.outcome = Some(Outcome::Completed { success: false });
                self.finish_stop();
            }
            return;
        };
        match event {
            Event::Listening { addr, .. } => {
                let addr = addr.to_string();
                self.say(format!("listening on {addr}"));
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
                if let Some(Pending::Reload { notes, .. }) = &mut self.pending {
                    if notes.len() < Pending::MAX_NOTES {
                        notes.push(format!("warning: {text}"));
                    }
                }
                self.say(format!("warning: {text}"))
            }
            Event::Lifecycle(report) => {
                self.say(&report);
                self.on_report(&report);
            }
            Event::Exit(outcome) => {
                self.say(format!("ended: {outcome}"));
                self.outcome = Some(outcome);
                self.engine = None;
                self.events = None;
                self.finish_stop();
            }
        }
    }

    fn on_report(&mut self, report: &Report) {
        match report {
            Report::Exited { slot, status, .. } => {
                let key = match status {
                    ExitStatus::Code(c) => (*slot, "code", c.to_string()),
                    ExitStatus::Signal(s) => (*slot, "signal", s.as_str().to_string()),
                };
                let code = match status {
                    ExitStatus::Code(c) => *c,
                    ExitStatus::Signal(_) => 0,
                };
                self.exit_codes.insert(*slot, code);
                *self.counters.exits.entry(key).or_default() += 1;
            }
            Report::Online { slot, .. } => *self.spawned.entry(*slot).or_default() += 1,
            Report::ReloadFinished => self.counters.reloads += 1,
            Report::ReloadAborted { .. } => {
                self.counters.reloads += 1;
                self.counters.reloads_failed += 1;
            }
            _ => {}
        }
        let result = match report {
            Report::ReloadFinished => Ok(format!("reloaded {}", self.name())),
            Report::ReloadAborted { .. } => Err(format!("{}: {report}", self.name())),
            Report::Refused {
                command: Command::Reload | Command::Replace(_),
                ..
            } => Err(format!("{}: {report}", self.name())),
            _ => return,
        };
        if let Some(Pending::Reload { reply, notes }) = self.pending.take() {
            let with_notes = |text: String| {
                std::iter::once(text)
                    .chain(notes.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let _ = reply.send(result.map(with_notes).map_err(with_notes));
        }
    }

    /// The engine instance ended: finish a pending stop.
    fn finish_stop(&mut self) {
        match self.pending.take() {
            Some(Pending::Stop { reply, then }) => {
                let result = match then {
                    AfterStop::Nothing => Ok(format!("stopped {}", self.name())),
                    AfterStop::Start => self
                        .start_engine()
                        .map(|_| format!("restarted {}", self.name())),
                    AfterStop::Delete => {
                        self.deleted = true;
                        Ok(format!("deleted {}", self.name()))
                    }
                };
                let _ = reply.send(result);
            }
            Some(Pending::Reload { reply, .. }) => {
                let _ = reply.send(Err(format!(
                    "{} ended during the reload: {}",
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

    async fn info(&mut self) -> AppInfo {
        let status = self.engine_status().await;
        self.sample_new(&status);
        self.info_of(&status)
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

    async fn detail(&mut self) -> AppDetail {
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
        let info = self.info_of(&status);
        let slots = match &status {
            Some(s) => s
                .machine
                .slots
                .iter()
                .map(|slot| SlotDetail {
                    slot: slot.slot,
                    unstable_restarts: slot.unstable.saturating_sub(self.base(slot.slot).1),
                    exit_code: self.exit_codes.get(&slot.slot).copied(),
                })
                .collect(),
            None => (0..self.def.spec.instances)
                .map(|slot| SlotDetail {
                    slot,
                    unstable_restarts: 0,
                    exit_code: self.exit_codes.get(&slot).copied(),
                })
                .collect(),
        };
        let created_at_ms = self
            .created_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        AppDetail {
            info,
            def: self.def.clone(),
            created_at_ms,
            slots,
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

    async fn metrics(&mut self) -> AppMetrics {
        let status = self.engine_status().await;
        let info = self.info_of(&status);
        let cpu_seconds = info
            .workers
            .iter()
            .filter_map(|w| w.pid)
            .map(|pid| (pid, self.sampler.cpu_seconds(pid)))
            .collect();
        AppMetrics {
            info,
            counters: self.counters.clone(),
            round_robin: status.map(|s| s.round_robin).unwrap_or_default(),
            cpu_seconds,
        }
    }

    fn info_of(&self, status: &Option<AppStatus>) -> AppInfo {
        let log_paths = crate::logs::paths(&self.def, &self.home);
        let spec = &self.def.spec;
        let mode = spec.exec_mode;
        let mut workers = Vec::new();
        let mut online = 0;
        let (status_text, instances) = match status {
            None => {
                let text = match self.outcome {
                    Some(Outcome::Errored { .. }) => "errored",
                    _ => "stopped",
                };
                for id in 0..spec.instances {
                    workers.push(WorkerInfo {
                        id,
                        pid: None,
                        status: text.to_string(),
                        restarts: self.shown_restarts(id),
                        uptime_ms: 0,
                        cpu_percent: 0.0,
                        memory_bytes: 0,
                    });
                }
                (text, spec.instances)
            }
            Some(s) => {
                let m = &s.machine;
                for slot in &m.slots {
                    let (pid, uptime, status) = match &slot.current {
                        Some(w) => (w.pid, w.uptime, worker_status(w.phase)),
                        None => (
                            None,
                            Duration::ZERO,
                            match slot.phase {
                                SlotPhase::Backoff => "waiting",
                                SlotPhase::Errored => "errored",
                                SlotPhase::Done => "stopped",
                                SlotPhase::Live => "launching",
                            },
                        ),
                    };
                    if status == "online" {
                        online += 1;
                    }
                    let restarts = slot.restarts.saturating_sub(self.base(slot.slot).0)
                        + self.carried.get(&slot.slot).copied().unwrap_or(0);
                    workers.push(self.worker_info(slot.slot, pid, status, restarts, uptime));
                    if let Some(w) = &slot.successor {
                        workers.push(self.worker_info(
                            slot.slot,
                            w.pid,
                            worker_status(w.phase),
                            restarts,
                            w.uptime,
                        ));
                    }
                }
                for w in &m.draining {
                    workers.push(self.worker_info(w.slot, w.pid, "stopping", 0, w.uptime));
                }
                let errored = m.slots.iter().all(|s| s.phase == SlotPhase::Errored);
                let text = if m.stopping {
                    "stopping"
                } else if m.reloading {
                    "reloading"
                } else if errored {
                    "errored"
                } else if online == m.slots.len() {
                    "online"
                } else {
                    "launching"
                };
                (text, m.slots.len())
            }
        };
        // Every socket reported bound (Node apps ask for theirs as they start).
        let listen = match status {
            Some(_) => self.listen.clone(),
            None => spec.listeners.iter().map(|l| l.addr.to_string()).collect(),
        };
        AppInfo {
            name: spec.name.clone(),
            id: self.id,
            mode: mode.to_string(),
            status: status_text.to_string(),
            instances,
            online,
            listen,
            out_log: log_paths.out,
            err_log: log_paths.err,
            merge_logs: self.def.logs.merge_logs,
            workers,
        }
    }

    fn worker_info(
        &self,
        id: usize,
        pid: Option<u32>,
        status: &str,
        restarts: u64,
        uptime: Duration,
    ) -> WorkerInfo {
        let usage = pid.map(|p| self.sampler.last(p)).unwrap_or_default();
        WorkerInfo {
            id,
            pid,
            status: status.to_string(),
            restarts,
            uptime_ms: uptime.as_millis() as u64,
            cpu_percent: (usage.cpu_percent * 10.0).round() / 10.0,
            memory_bytes: usage.rss_bytes,
        }
    }
}

fn worker_status(phase: WorkerPhase) -> &'static str {
    match phase {
        WorkerPhase::Ready => "online",
        WorkerPhase::Starting | WorkerPhase::Online => "launching",
        WorkerPhase::Stopping => "stopping",
    }
}

fn answer(reply: oneshot::Sender<Reply>, result: Reply) {
    let _ = reply.send(result);
}

/// The next event of a running engine instance; never resolves without one.
async fn next_event(events: &mut Option<Events>) -> Option<Timed> {
    match events {
        Some(rx) => rx.recv_timed().await,
        None => std::future::pending().await,
    }
}
