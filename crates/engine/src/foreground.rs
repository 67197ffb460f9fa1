//! `herd run`'s foreground loop, also the embedded primary's
//! (`herd_cluster::Primary::run`): start one app, map this process's signals
//! to commands (INT/TERM stop, a second one kills; HUP reloads; TTIN/TTOU
//! add/remove a worker), print the workers' output (`[slot] line`) and the
//! lifecycle events (`herd: …` on stderr), and keep this process's own
//! service manager informed (sd_notify: ready once every worker is,
//! reloading, stopping).

use std::io::{self, Write};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::clock::MonoTime;
use crate::config::{AppSpec, Balance, StopPolicy, WorkerKind};
use crate::machine::{Command, Outcome, Report};
use crate::supervisor::{self, Event, StartError, Stream};

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
/// reloads; TTIN/TTOU add/remove a worker), and print the workers' output
/// (`[slot] line`) and lifecycle events (`herd: …` on stderr). Returns the
/// exit status: 0 after a requested stop or when every worker exited 0.
/// This is `herd run`'s loop, and `herd_cluster::Primary::run`'s.
pub async fn run(spec: AppSpec) -> Result<i32, Error> {
    let stop = spec.stop.clone();
    let balance = spec.balance;
    // Workers that are first taken out of service before the stop signal
    // (a Node worker told to stop by message gets it at once, before its
    // `disconnect`, unless round-robin).
    let settles = balance == Balance::RoundRobin
        || (spec.kind == WorkerKind::Node && !spec.stop.shutdown_with_message);
    let mut service = ServiceState::new(spec.instances);
    let (app, mut events) = supervisor::start(spec)?;

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
