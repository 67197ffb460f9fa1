//! The embedded primary: herd's engine inside a Rust program, which starts
//! its workers by executing its own binary again.

use std::io::{self, Write};
use std::time::Duration;

use herd_engine::config::{
    AppSpec, Balance, ListenSpec, ReadyPolicy, RestartPolicy, StopPolicy, WorkerKind,
};
use herd_engine::machine::{Command, Outcome, Report};
use herd_engine::supervisor::{self, AppHandle, Event, Events, StartError, Stream, Target};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Writes waiting for the output thread. Each is one event's text (at most
/// one output batch), so this bounds what herd holds for a slow stdout.
const WRITE_QUEUE: usize = 16;

/// Why a primary could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong; the message says which and how to fix it.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound (nothing was started).
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A cluster of this program's own workers: the Node `cluster` primary.
///
/// ```no_run
/// # async fn demo() -> Result<(), herd_cluster::primary_error::Error> {
/// if herd_cluster::is_primary() {
///     let code = herd_cluster::Primary::new()
///         .workers(4)
///         .listen("web", "127.0.0.1:3000")
///         .run()
///         .await?;
///     std::process::exit(code);
/// }
/// // … worker code: herd_cluster::Worker::get().listener("web", "127.0.0.1:3000") …
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Primary {
    spec: Result<AppSpec, String>,
}

/// A running primary: commands and messages to its workers.
#[derive(Debug, Clone)]
pub struct PrimaryHandle {
    app: AppHandle,
}

impl PrimaryHandle {
    /// Replace every worker, one at a time, each only once its successor is ready.
    pub fn reload(&self) {
        self.app.command(Command::Reload);
    }

    /// Stop gracefully (a second call kills what is left).
    pub fn stop(&self) {
        self.app.command(Command::Stop);
    }

    /// Grow or shrink to `n` workers.
    pub fn scale(&self, n: usize) {
        self.app.command(Command::Scale(n));
    }

    /// Send a JSON message to one worker or all of them.
    pub fn send(&self, to: Target, message: serde_json::Value) {
        self.app.send(to, message);
    }
}

impl Default for Primary {
    fn default() -> Self {
        Primary::new()
    }
}

impl Primary {
    /// A primary for this program: its workers run `current_exe()` with the
    /// same arguments, one per usable CPU, restarted always, shared balance.
    pub fn new() -> Primary {
        let spec = std::env::current_exe()
            .map_err(|e| format!("cannot find this program's own executable to start workers: {e}"))
            .map(|exe| {
                let name = exe
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "app".into());
                let mut spec = AppSpec::new(name, exe);
                spec.args = std::env::args().skip(1).collect();
                spec.instances = herd_engine::cpus::usable_cpus();
                spec
            });
        Primary { spec }
    }

    fn edit(mut self, f: impl FnOnce(&mut AppSpec) -> Result<(), String>) -> Self {
        if let Ok(spec) = &mut self.spec {
            if let Err(e) = f(spec) {
                self.spec = Err(e);
            }
        }
        self
    }

    /// How many workers (at least 1).
    pub fn workers(self, n: usize) -> Self {
        self.edit(|s| {
            s.instances = n.max(1);
            Ok(())
        })
    }

    /// Bind `addr` (`HOST:PORT` or `unix:PATH`) once, under `name`, for every worker.
    pub fn listen(self, name: &str, addr: &str) -> Self {
        self.edit(|s| {
            let spec: ListenSpec = format!("{name}={addr}")
                .parse()
                .map_err(|e: herd_engine::config::ConfigError| e.0)?;
            s.listeners.push(spec);
            Ok(())
        })
    }

    /// How connections are spread over the workers.
    pub fn balance(self, balance: Balance) -> Self {
        self.edit(|s| {
            s.balance = balance;
            Ok(())
        })
    }

    /// When and how fast dead workers are restarted.
    pub fn restart(self, policy: RestartPolicy) -> Self {
        self.edit(|s| {
            s.restart = policy;
            Ok(())
        })
    }

    /// How workers are stopped (signal, drain time).
    pub fn stop_policy(self, policy: StopPolicy) -> Self {
        self.edit(|s| {
            s.stop = policy;
            Ok(())
        })
    }

    /// When a new worker counts as ready (explicit `Worker::ready()` or a delay).
    pub fn ready_policy(self, policy: ReadyPolicy) -> Self {
        self.edit(|s| {
            s.ready = policy;
            Ok(())
        })
    }

    /// Workers wait for `Worker::ready()` instead of a delay.
    pub fn wait_ready(self, listen_timeout: Duration) -> Self {
        self.edit(|s| {
            s.ready.wait_ready = true;
            s.ready.listen_timeout = listen_timeout;
            Ok(())
        })
    }

    /// An environment variable for every worker.
    pub fn env(self, key: &str, value: &str) -> Self {
        self.edit(|s| {
            s.env.push((key.into(), value.into()));
            Ok(())
        })
    }

    /// Bind the listeners and start the workers; events arrive on the receiver.
    /// It is bounded: read it steadily, or the workers' output waits (as on a
    /// slow terminal). Must be called inside a tokio runtime.
    pub fn start(self) -> Result<(PrimaryHandle, Events), Error> {
        let spec = self.spec.map_err(Error::Config)?;
        let (app, events) = supervisor::start(spec)?;
        Ok((PrimaryHandle { app }, events))
    }

    /// Run in the foreground like `herd run`: signals, printed output and
    /// events; returns the exit status to end the process with.
    pub async fn run(self) -> Result<i32, Error> {
        let mut spec = self.spec.map_err(Error::Config)?;
        spec.kind = WorkerKind::Generic;
        supervise(spec).await
    }
}

/// Run an app in the foreground until it finishes: start it, map this
/// process's signals to commands (INT/TERM stop, a second one kills; HUP
/// reloads; TTIN/TTOU add/remove a worker), and print the workers' output
/// (`[slot] line`) and lifecycle events (`herd: …` on stderr). Returns the
/// exit status: 0 after a requested stop or when every worker exited 0.
/// This is `herd run`'s loop, and [`Primary::run`]'s.
pub async fn supervise(spec: AppSpec) -> Result<i32, Error> {
    let stop = spec.stop.clone();
    let balance = spec.balance;
    // Workers that are first taken out of service before the stop signal
    // (a Node worker told to stop by message gets it at once, before its
    // `disconnect`, unless round-robin).
    let settles = balance == Balance::RoundRobin
        || (spec.kind == WorkerKind::Node && !spec.stop.shutdown_with_message);
    let mut service = ServiceState::new(spec.instances);
    let (app, mut events) = supervisor::start(spec).map_err(Error::Start)?;

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigttin = signal(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut sigttou = signal(SignalKind::from_raw(libc::SIGTTOU))?;

    // Output is written by its own thread, so a blocking write never stalls
    // this loop (signals are still handled). The queue to it is bounded: an
    // event is taken only once there is room for its text, so a slow stdout
    // backs up into the app's bounded event channel and from there into the
    // workers' pipes — nothing is dropped and herd's memory stays bounded.
    let (out_tx, mut out_rx) = mpsc::channel::<(Stream, Vec<u8>)>(WRITE_QUEUE);
    let writer = std::thread::spawn(move || {
        let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
        while let Some((stream, bytes)) = out_rx.blocking_recv() {
            let _ = match stream {
                Stream::Stdout => stdout.lock().write_all(&bytes),
                Stream::Stderr => stderr.lock().write_all(&bytes),
            };
        }
    });
    let herd_line = |text: String| (Stream::Stderr, format!("herd: {text}\n").into_bytes());

    let mut stopping = false;
    let mut last_stderr: Vec<Option<String>> = Vec::new();
    // Room for the next write, reserved before an event is taken.
    let mut room: Option<mpsc::OwnedPermit<(Stream, Vec<u8>)>> = None;
    let code = loop {
        tokio::select! {
            permit = out_tx.clone().reserve_owned(), if room.is_none() => match permit {
                Ok(p) => room = Some(p),
                Err(_) => break 1, // the output thread is gone
            },
            event = events.recv(), if room.is_some() => {
                let Some(event) = event else {
                    // The app's task ended without saying why: it panicked.
                    eprintln!("herd: the supervisor's app task ended unexpectedly (a bug in herd; please report it); stopping");
                    break 1;
                };
                let permit = room.take().expect("reserved");
                let mut exit = None;
                let write = match event {
                    Event::Listening { name, addr } => {
                        let named = if name == "unknown" { String::new() } else { format!(" ({name})") };
                        herd_line(format!("listening on {addr}{named}, balance {balance}"))
                    }
                    Event::Output { slot, stream, lines, .. } => {
                        if stream == Stream::Stderr {
                            if last_stderr.len() <= slot {
                                last_stderr.resize(slot + 1, None);
                            }
                            let last = lines.trim_ascii_end().rsplit(|&b| b == b'\n').next().unwrap_or_default();
                            last_stderr[slot] = Some(String::from_utf8_lossy(last).into_owned());
                        }
                        (stream, prefix_lines(slot, &lines))
                    }
                    Event::Message { slot, message, .. } => herd_line(format!("worker {slot} sent {message}")),
                    Event::Warning(text) => herd_line(format!("warning: {text}")),
                    Event::Lifecycle(report) => {
                        service.observe(&report);
                        let mut text = report.to_string();
                        if let Report::Stopping { .. } = report {
                            text.push_str(&stop_plan(&stop, settles));
                        }
                        herd_line(text)
                    }
                    Event::Exit(outcome) => {
                        let mut text = format!("exiting: {outcome}");
                        if let Outcome::Errored { slot, .. } = outcome {
                            if let Some(Some(line)) = last_stderr.get(slot) {
                                text.push_str(&format!("; its last stderr line: {line}"));
                            }
                        }
                        exit = Some(match outcome {
                            Outcome::Stopped | Outcome::Completed { success: true } => 0,
                            _ => 1,
                        });
                        herd_line(text)
                    }
                };
                permit.send(write);
                if let Some(code) = exit {
                    break code;
                }
            }
            _ = sigint.recv() => { app.command(Command::Stop); stopping = true; }
            _ = sigterm.recv() => { app.command(Command::Stop); stopping = true; }
            _ = sighup.recv() => if !stopping { app.command(Command::Reload) },
            _ = sigttin.recv() => app.command(Command::ScaleUp),
            _ = sigttou.recv() => app.command(Command::ScaleDown),
        }
    };
    drop(room);
    drop(out_tx);
    let _ = writer.join();
    Ok(code)
}

/// What a graceful stop does, as `herd run` announces it: the kill timeout
/// counts from the signal, after the bounded settle phase.
fn stop_plan(stop: &StopPolicy, settles: bool) -> String {
    use herd_engine::describe::duration;
    let how = if stop.shutdown_with_message {
        "the message \"shutdown\"".to_string()
    } else {
        stop.kill_signal.as_str().to_string()
    };
    let kill = duration(stop.kill_timeout);
    if settles {
        format!(
            ": each stops taking connections first (at most {}), then gets {how}; \
             SIGKILL {kill} after that if it is still running (signal again to kill now)",
            duration(supervisor::SETTLE_TIMEOUT)
        )
    } else {
        format!(": sent {how} to each; SIGKILL {kill} after that if it is still running (signal again to kill now)")
    }
}

/// What herd tells its own service manager (systemd `Type=notify` or
/// `notify-reload`, through `NOTIFY_SOCKET`): ready once every worker is,
/// reloading while a reload runs, stopping once a stop began.
struct ServiceState {
    instances: usize,
    ready_slots: std::collections::BTreeSet<usize>,
    ready_sent: bool,
}

impl ServiceState {
    fn new(instances: usize) -> ServiceState {
        ServiceState {
            instances,
            ready_slots: Default::default(),
            ready_sent: false,
        }
    }

    fn observe(&mut self, report: &Report) {
        let state = match report {
            Report::Ready { slot, .. } if !self.ready_sent => {
                self.ready_slots.insert(*slot);
                if self.ready_slots.len() < self.instances {
                    return;
                }
                self.ready_sent = true;
                // Under herd's PID-1 init, our pid (2) means nothing to a
                // manager outside the namespace: no MAINPID then.
                let mainpid = if herd_engine::os::init::supervised() {
                    String::new()
                } else {
                    format!("\nMAINPID={}", std::process::id())
                };
                format!("READY=1\nSTATUS={} workers ready{mainpid}", self.instances)
            }
            Report::Scaled { slots } => {
                self.instances = *slots;
                format!("STATUS={slots} workers")
            }
            Report::ReloadStarted => format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()),
            Report::ReloadFinished | Report::ReloadAborted { .. } => "READY=1".to_string(),
            Report::Stopping { .. } => "STOPPING=1".to_string(),
            _ => return,
        };
        let _ = crate::worker::notify(&state);
    }
}

fn monotonic_usec() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}

/// `[3] ` before each line of a chunk of whole lines.
fn prefix_lines(slot: usize, lines: &[u8]) -> Vec<u8> {
    let prefix = format!("[{slot}] ");
    let mut out = Vec::with_capacity(lines.len() + 16);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
    }
    out
}
