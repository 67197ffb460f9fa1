//! `herd run`'s foreground loop, also the embedded primary's
//! (`herd_cluster::Primary::run`): start one app, map this process's signals
//! to commands (INT/TERM stop, a second one kills; HUP reloads; TTIN/TTOU
//! add/remove a worker; USR2 upgrades herd in place, see
//! [`crate::upgrade`]), print the workers' output (`[slot] line`) and the
//! lifecycle events (`herd: …` on stderr), and keep this process's own
//! service manager informed (sd_notify: ready once every worker is,
//! reloading, stopping).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use herd_signals::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::clock::MonoTime;
use crate::config::{AppSpec, Balance, StopPolicy, WorkerKind};
use crate::describe;
use crate::machine::{AbortReason, Command, Outcome, Report};
use crate::supervisor::{self, AppHandle, Event, Events, StartError, Stream};
use crate::upgrade;

/// Writes waiting for the output thread. Each is one event's text (at most
/// one output batch), so this bounds what herd holds for a slow stdout.
const WRITE_QUEUE: usize = 16;

/// Why an app could not run in the foreground.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound (nothing was started).
    #[error(transparent)]
    Start(#[from] StartError),
    /// This process's signals could not be watched.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Run an app in the foreground until it finishes: start it, map this
/// process's signals to commands (INT/TERM stop, a second one kills; HUP
/// reloads; TTIN/TTOU add/remove a worker; USR2 upgrades herd in place),
/// and print the workers' output (`[slot] line`) and lifecycle events
/// (`herd: …` on stderr). Returns the exit status: 0 after a requested stop
/// or when every worker exited 0.
/// This is `herd run`'s loop, and `herd_cluster::Primary::run`'s.
pub async fn run(spec: AppSpec) -> Result<i32, Error> {
    let host = Host::new(&spec);
    let (app, events) = supervisor::start(spec)?;
    drive(host, app, events, None).await
}

/// The host's name in an upgrade's state ([`upgrade::Inherited::kind`]).
pub const HOST_KIND: &str = "run";

/// Take over an app a previous image of herd handed over on SIGUSR2 (see
/// [`crate::upgrade`]) and run it on in the foreground, as [`run`] does.
pub async fn resume(inherited: upgrade::Inherited) -> Result<i32, Error> {
    let upgrade::Inherited {
        kind: _,
        frozen,
        host,
        exe,
        failed,
        host_fds: _,
    } = inherited;
    let mut host: Host = serde_json::from_value(host).map_err(io::Error::other)?;
    host.exe = Some(exe);
    let (app, events) = supervisor::resume(frozen).map_err(io::Error::other)?;
    let now = MonoTime::now();
    let since = |t: Option<MonoTime>| {
        t.map(|t| describe::duration(now.saturating_duration_since(t)))
            .unwrap_or_else(|| "?".into())
    };
    let took = format!(
        "{} from SIGUSR2, app paused {}",
        since(host.upgrade_signalled.take()),
        since(host.upgrade_paused.take())
    );
    let note = match failed {
        Some(why) => format!("upgrade failed: {why}; the previous binary resumed the app ({took})"),
        None => format!(
            "upgraded in place: now running {} (pid {}; {took})",
            host.exe.as_deref().unwrap_or(Path::new("?")).display(),
            std::process::id()
        ),
    };
    drive(host, app, events, Some(note)).await
}

/// What `herd run` keeps besides the app, handed over across an upgrade.
#[derive(Debug, Serialize, Deserialize)]
struct Host {
    stop: StopPolicy,
    balance: Balance,
    settles: bool,
    service: ServiceState,
    stopping: bool,
    /// Per slot: the last stderr line and the pid that wrote it.
    last_stderr: Vec<Option<(u32, String)>>,
    /// Per slot: the pid that came online last (a reload's new worker).
    newest: std::collections::BTreeMap<usize, u32>,
    /// An upgrade under way: when SIGUSR2 came, and when the app paused.
    #[serde(default)]
    upgrade_signalled: Option<MonoTime>,
    #[serde(default)]
    upgrade_paused: Option<MonoTime>,
    /// Where this binary lives (what SIGUSR2 executes again).
    #[serde(skip)]
    exe: Option<PathBuf>,
}

impl Host {
    fn new(spec: &AppSpec) -> Host {
        Host {
            stop: spec.stop.clone(),
            balance: spec.balance,
            // Workers that are first taken out of service before the stop signal
            // (a Node worker told to stop by message gets it at once, before its
            // `disconnect`, unless round-robin).
            settles: spec.balance == Balance::RoundRobin
                || (spec.kind == WorkerKind::Node && !spec.stop.shutdown_with_message),
            service: ServiceState::new(spec.instances),
            stopping: false,
            last_stderr: Vec::new(),
            newest: Default::default(),
            upgrade_signalled: None,
            upgrade_paused: None,
            exe: upgrade::own_exe().ok(),
        }
    }
}

/// The output thread and its bounded queue.
struct Writer {
    tx: mpsc::Sender<(Stream, Vec<u8>)>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Output is written by its own thread, so a blocking write never stalls
    /// the loop (signals are still handled). The queue to it is bounded: an
    /// event is taken only once there is room for its text, so a slow stdout
    /// backs up into the app's bounded event channel and from there into the
    /// workers' pipes — nothing is dropped and herd's memory stays bounded.
    fn start() -> Writer {
        let (tx, mut rx) = mpsc::channel::<(Stream, Vec<u8>)>(WRITE_QUEUE);
        let thread = std::thread::spawn(move || {
            let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
            while let Some((stream, bytes)) = rx.blocking_recv() {
                let _ = match stream {
                    Stream::Stdout => stdout.lock().write_all(&bytes),
                    Stream::Stderr => stderr.lock().write_all(&bytes),
                };
            }
        });
        Writer { tx, thread }
    }

    /// Write what is queued, then end the thread.
    fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

fn herd_line(text: String) -> (Stream, Vec<u8>) {
    (Stream::Stderr, format!("herd: {text}\n").into_bytes())
}

/// What ended one run of the loop.
enum Ended {
    Exit(i32),
    /// The app is frozen (since it paused, at the time given) and its
    /// events are all out: exec the new binary.
    Upgrade(Box<supervisor::Frozen>, upgrade::Probed, MonoTime),
}

/// The loop, across in-place upgrades that fail before the exec (the app is
/// resumed here then).
async fn drive(
    mut host: Host,
    mut app: AppHandle,
    mut events: Events,
    note: Option<String>,
) -> Result<i32, Error> {
    let mut signals = Signals::new()?;
    // Signals are handled from here on (held until now: see crate::upgrade).
    upgrade::signals_ready();
    let mut note = note;
    loop {
        let mut writer = Writer::start();
        if let Some(text) = note.take() {
            let _ = writer.tx.send(herd_line(text)).await;
            if host.service.ready_sent {
                let _ = crate::os::notify::sd_notify("READY=1");
            }
        }
        let ended = run_loop(&mut host, &app, &mut events, &mut signals, &mut writer).await;
        match ended {
            Ended::Exit(code) => {
                writer.finish();
                return Ok(code);
            }
            Ended::Upgrade(frozen, probed, paused) => {
                writer.finish();
                host.upgrade_paused = Some(paused);
                let exe = host.exe.clone().unwrap_or_else(|| probed.path().to_owned());
                let state = serde_json::to_value(&host).map_err(io::Error::other)?;
                let (frozen, error) =
                    upgrade::exec(probed, &exe, HOST_KIND, *frozen, state, &[]).await;
                // Still here: the exec failed; the app resumes in place.
                (app, events) = supervisor::resume(frozen).map_err(io::Error::other)?;
                host.upgrade_signalled = None;
                host.upgrade_paused = None;
                note = Some(format!(
                    "upgrade failed: {error}; the app resumed on the current binary"
                ));
            }
        }
    }
}

/// The process's signals that `herd run` handles.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    ttin: Signal,
    ttou: Signal,
    usr2: Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        Ok(Signals {
            int: Signal::new(libc::SIGINT)?,
            term: Signal::new(libc::SIGTERM)?,
            hup: Signal::new(libc::SIGHUP)?,
            ttin: Signal::new(libc::SIGTTIN)?,
            ttou: Signal::new(libc::SIGTTOU)?,
            usr2: Signal::new(libc::SIGUSR2)?,
        })
    }
}

/// A frozen app, the binary to run it on, and when the app paused.
type Frozen = (supervisor::Frozen, upgrade::Probed, MonoTime);
/// An upgrade under way: the probe, then the freeze.
type Upgrading = tokio::task::JoinHandle<Result<Frozen, upgrade::UpgradeError>>;

async fn run_loop(
    host: &mut Host,
    app: &AppHandle,
    events: &mut Events,
    signals: &mut Signals,
    writer: &mut Writer,
) -> Ended {
    // Room for the next write, reserved before an event is taken.
    let mut room: Option<mpsc::OwnedPermit<(Stream, Vec<u8>)>> = None;
    // An upgrade under way: probing the new binary, then freezing the app.
    let mut upgrading: Option<Upgrading> = None;
    // The app is frozen: its last events are read, then the exec.
    let mut frozen: Option<Frozen> = None;
    // What start-up ran and left is given back in a moment, and again once
    // a minute (as an app's supervisor does).
    let _trimmer = crate::os::memory::Trimmer::spawn();
    loop {
        tokio::select! {
            permit = writer.tx.clone().reserve_owned(), if room.is_none() => match permit {
                Ok(p) => room = Some(p),
                Err(_) => return Ended::Exit(1), // the output thread is gone
            },
            event = events.recv(), if room.is_some() => {
                let Some(event) = event else {
                    // The events end as the freeze completes: its answer
                    // may still be on its way.
                    if let Some(upgrade) = upgrading.take() {
                        if let Ok(Ok(ready)) = upgrade.await {
                            frozen = Some(ready);
                        }
                    }
                    if let Some((frozen, probed, paused)) = frozen.take() {
                        return Ended::Upgrade(Box::new(frozen), probed, paused);
                    }
                    // The app's task ended without saying why: it panicked.
                    eprintln!("herd: the supervisor's app task ended unexpectedly (a bug in herd; please report it); stopping");
                    return Ended::Exit(1);
                };
                let permit = room.take().expect("reserved");
                let (write, exit) = host.show(event);
                permit.send(write);
                if let Some(code) = exit {
                    return Ended::Exit(code);
                }
            }
            done = async { upgrading.as_mut().expect("guarded").await }, if upgrading.is_some() => {
                upgrading = None;
                match done {
                    Ok(Ok(ready)) => frozen = Some(ready),
                    Ok(Err(e)) => {
                        host.upgrade_signalled = None;
                        let _ = writer.tx.send(herd_line(format!("upgrade refused: {e}; still running the current binary"))).await;
                        let _ = crate::os::notify::sd_notify("READY=1");
                    }
                    Err(e) => {
                        let _ = writer.tx.send(herd_line(format!("upgrade failed: {e}"))).await;
                        let _ = crate::os::notify::sd_notify("READY=1");
                    }
                }
            }
            _ = signals.int.recv() => { app.command(Command::Stop); host.stopping = true; }
            _ = signals.term.recv() => { app.command(Command::Stop); host.stopping = true; }
            _ = signals.hup.recv() => if !host.stopping { app.command(Command::Reload) },
            _ = signals.ttin.recv() => app.command(Command::ScaleUp),
            _ = signals.ttou.recv() => app.command(Command::ScaleDown),
            _ = signals.usr2.recv() => {
                if host.stopping || upgrading.is_some() || frozen.is_some() {
                    let _ = writer.tx.send(herd_line("SIGUSR2 ignored: an upgrade is under way or the app is stopping".into())).await;
                    continue;
                }
                let Some(exe) = host.exe.clone() else {
                    let _ = writer.tx.send(herd_line("SIGUSR2 ignored: cannot tell where this binary lives".into())).await;
                    continue;
                };
                host.upgrade_signalled = Some(MonoTime::now());
                let _ = writer.tx.send(herd_line(format!("SIGUSR2: upgrading in place to {}", exe.display()))).await;
                let _ = crate::os::notify::sd_notify(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}",
                    MonoTime::now().as_micros()
                ));
                let app = app.clone();
                upgrading = Some(tokio::spawn(async move {
                    let probed = tokio::task::spawn_blocking(move || {
                        // A blocking-pool thread outlives this: it must
                        // never take a signal meant for the new image.
                        upgrade::hold_signals_here();
                        upgrade::probe(&exe)
                    })
                        .await
                        .map_err(|e| upgrade::UpgradeError::Write(io::Error::other(e)))??;
                    let paused = MonoTime::now();
                    let frozen = app.freeze().await?;
                    Ok((frozen, probed, paused))
                }));
            }
        }
    }
}

impl Host {
    /// What an event prints, and the exit status if it ends the app.
    fn show(&mut self, event: Event) -> ((Stream, Vec<u8>), Option<i32>) {
        let mut exit = None;
        let write = match event {
            Event::Listening { name, addr } => {
                let named = if name == "unknown" {
                    String::new()
                } else {
                    format!(" ({name})")
                };
                herd_line(format!(
                    "listening on {addr}{named}, balance {}",
                    self.balance
                ))
            }
            Event::Output {
                slot,
                pid,
                stream,
                lines,
            } => {
                if stream == Stream::Stderr {
                    if self.last_stderr.len() <= slot {
                        self.last_stderr.resize(slot + 1, None);
                    }
                    let last = lines
                        .trim_ascii_end()
                        .rsplit(|&b| b == b'\n')
                        .next()
                        .unwrap_or_default();
                    self.last_stderr[slot] =
                        Some((pid, String::from_utf8_lossy(last).into_owned()));
                }
                (stream, prefix_lines(slot, &lines))
            }
            Event::Message { slot, message, .. } => {
                herd_line(format!("worker {slot} sent {message}"))
            }
            Event::Warning(text) => herd_line(format!("warning: {text}")),
            Event::Lifecycle(report) => {
                self.service.observe(&report);
                let mut text = report.to_string();
                match report {
                    Report::Stopping { .. } => text.push_str(&stop_plan(&self.stop, self.settles)),
                    Report::Online { slot, pid } => {
                        self.newest.insert(slot, pid);
                    }
                    // Why the new version failed: its own last words.
                    Report::ReloadAborted {
                        slot,
                        reason: AbortReason::Exited(_),
                        ..
                    } => {
                        if let Some(Some((pid, line))) = self.last_stderr.get(slot) {
                            if self.newest.get(&slot) == Some(pid) {
                                text.push_str(&format!("; its last stderr line: {line}"));
                            }
                        }
                    }
                    _ => {}
                }
                herd_line(text)
            }
            Event::Exit(outcome) => {
                let mut text = format!("exiting: {outcome}");
                if let Outcome::Errored { slot, .. } = outcome {
                    if let Some(Some((_, line))) = self.last_stderr.get(slot) {
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
        (write, exit)
    }
}

/// What a graceful stop does, as `herd run` announces it: the kill timeout
/// counts from the signal, after the bounded settle phase.
fn stop_plan(stop: &StopPolicy, settles: bool) -> String {
    use crate::describe::duration;
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
#[derive(Debug, Serialize, Deserialize)]
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
                let mainpid = if crate::os::init::under_herd_init() {
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
            Report::ReloadStarted => format!(
                "RELOADING=1\nMONOTONIC_USEC={}",
                MonoTime::now().as_micros()
            ),
            Report::ReloadFinished | Report::ReloadAborted { .. } => "READY=1".to_string(),
            Report::Stopping { .. } => "STOPPING=1".to_string(),
            _ => return,
        };
        let _ = crate::os::notify::sd_notify(&state);
    }
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
