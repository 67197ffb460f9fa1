//! `herd supervise --home DIR --id N`: one app's supervisor process.
//!
//! In order, each step's failure reported to whoever started it:
//! 1. read `apps/<id>.json` and take the lock of `apps/<id>.pid` (a second
//!    supervisor for the same app refuses, naming the first);
//! 2. bind `apps/<id>.sock` (0600);
//! 3. unless `--foreground`: fork, and the child makes a session of its own
//!    (no terminal, nothing ties its life to the starter), with stdin and
//!    stdout on /dev/null and stderr appended to `herd.log`; the parent
//!    waits until the child serves (or failed) and exits with that;
//! 4. end whatever the app's previous supervisor left ([`crate::contain`]),
//!    then contain the app afresh: a cgroup where herd may create one, or
//!    process groups;
//! 5. start the actor (the app's engine, log files, samples, memory limit)
//!    and, if the app's desired state is running, the app; serve the socket.
//!
//! It ends when the app is deleted (its files are removed), or on SIGTERM
//! or SIGINT (the app is stopped; its file stays, wishing what it wished,
//! for the next supervisor). SIGUSR1 reopens the log files; SIGHUP is
//! ignored. It runs on one thread, and the main thread forks the workers
//! (their `PR_SET_PDEATHSIG` is tied to it, so a SIGKILLed supervisor takes
//! its workers with it).
//!
//! In-place upgrade (`herd update` asks with `Command::Upgrade`): the actor
//! probes the new binary and freezes the app, then this loop `fexecve`s it
//! with the app's state, keeping the control socket, the lock and the log
//! files open across the exec (connections queue meanwhile); the new image resumes
//! the app ([`resume`]): same pid, same workers. A new binary that cannot
//! take the app over hands it back to the old one, which runs on.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use herd_engine::supervisor::{Frozen, Held};
use herd_engine::upgrade::Inherited;
use herd_home::Home;
use herd_protocol::supervisor::{
    AppFile, Binary, Containment, Desired, SupervisorInfo, Ticket, VERSION,
};
use herd_protocol::AppDef;
use herd_signals::Signal;
use serde::{Deserialize, Serialize};

use crate::app::{self, AppCommand, Keeper};
use crate::contain::{self, Cgroup, CgroupError, ContainMode, Record};
use crate::files::{AppFiles, FilesError, PidLock};
use crate::server::{self, Shared};

/// Connections served at once; more wait in the socket's backlog.
const MAX_CLIENTS: usize = 32;
/// How long the process waits for a `delete`'s answer to reach its client.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// How `herd supervise` was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `$HERD_HOME`.
    pub home: PathBuf,
    pub id: u32,
    /// Stay attached (its lines on stderr); else detach and return once serving.
    pub foreground: bool,
    pub contain: ContainMode,
}

/// Why the supervisor could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("cannot contain app {id} in a cgroup: {error}; use --contain auto (process groups where no cgroup can be had)")]
    Cgroup { id: u32, error: CgroupError },
    #[error("cannot listen on {path}: {error}")]
    Listen { path: PathBuf, error: io::Error },
    #[error("cannot detach the supervisor: {0}")]
    Detach(io::Error),
    #[error("cannot write the pid file: {0}")]
    Pid(io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot resume the app after an in-place upgrade: {0}")]
    Resume(String),
    #[error("the supervisor of app {id} did not start: {why}")]
    Start { id: u32, why: String },
}

/// Run the supervisor; returns the exit code (in the starting process when
/// detaching: once the supervisor serves).
pub fn run(options: Options) -> Result<i32, Error> {
    match prepare(options)? {
        Prepared::Starter(code) => Ok(code),
        Prepared::Supervisor(hosted) => host(hosted),
    }
}

/// What [`prepare`] leaves: the exit code of the process that started the
/// detached supervisor, or (in the supervisor) what it hosts.
enum Prepared {
    Starter(i32),
    Supervisor(Box<Hosted>),
}

/// Steps 1–4 of the module docs. A function of its own (and the hosted
/// parts boxed) so that its stack frame is gone before the app runs: the
/// supervisor's stack stays that much smaller for its whole life.
#[inline(never)]
fn prepare(options: Options) -> Result<Prepared, Error> {
    // First, before this process opens anything of its own.
    let held = crate::held::take_from_env();
    let home = Home::open(&options.home).map_err(FilesError::from)?;
    let files = AppFiles::open(&home, options.id)?;
    let app_file = files.read_app()?;
    let mut lock = files.lock()?;
    let listener = bind(&files)?;
    let ready = if options.foreground {
        Ready(None)
    } else {
        match detach(&files)? {
            Detached::Parent(code) => {
                lock.leave_to_child();
                return Ok(Prepared::Starter(code));
            }
            Detached::Child(ready) => ready,
        }
    };
    let contained = lock
        .write_pid(std::process::id())
        .map_err(Error::Pid)
        .and_then(|_| contain(&files, &app_file, options.contain));
    let (containment, cgroup) = match contained {
        Ok(c) => c,
        Err(e) => {
            ready.failed(&e.to_string());
            return Err(e);
        }
    };
    Ok(Prepared::Supervisor(Box::new(Hosted {
        files,
        app_file,
        listener,
        lock,
        containment,
        cgroup,
        ready,
        resumed: None,
        held,
    })))
}

/// The host's name in an in-place upgrade's state
/// (`herd_engine::upgrade::Inherited::kind`).
pub const HOST_KIND: &str = "supervise";

/// What the supervisor hands the next image of itself beside the app (its
/// control socket and its lock travel as fds, in that order).
#[derive(Serialize, Deserialize)]
struct HostState {
    home: PathBuf,
    id: u32,
    containment: Containment,
    carried: app::Carried,
}

/// Take over the app a previous image of this supervisor handed over (an
/// in-place upgrade; see `herd_engine::upgrade`). Call it on the main
/// thread before any other thread exists.
pub fn resume(inherited: Inherited) -> Result<i32, Error> {
    let resume_err = |why: String| Error::Resume(why);
    let state: HostState = serde_json::from_value(inherited.host)
        .map_err(|e| resume_err(format!("its host state is unreadable: {e}")))?;
    let home = Home::open(&state.home).map_err(FilesError::from)?;
    let files = AppFiles::open(&home, state.id)?;
    let app_file = files.read_app()?;
    let mut fds = inherited.host_fds.into_iter();
    let (Some(listener), Some(lock)) = (fds.next(), fds.next()) else {
        return Err(resume_err(
            "the control socket and the lock were not handed over".into(),
        ));
    };
    let log_fds: Vec<_> = fds.collect();
    if log_fds.len() != state.carried.log_files() {
        return Err(resume_err(format!(
            "{} log file fds were handed over for {} files",
            log_fds.len(),
            state.carried.log_files()
        )));
    }
    let listener = std::os::unix::net::UnixListener::from(listener);
    listener
        .set_nonblocking(true)
        .map_err(|error| Error::Listen {
            path: files.socket(),
            error,
        })?;
    let lock = files.lock_inherited(lock)?;
    let name = &app_file.name;
    match &inherited.failed {
        Some(why) => crate::say!(
            "app {name}: upgrade failed: {why}; supervisor {} runs on its previous binary",
            std::process::id()
        ),
        None => crate::say!(
            "app {name}: supervisor {} upgraded in place: now running {}",
            std::process::id(),
            inherited.exe.display()
        ),
    }
    let cgroup = match &state.containment {
        Containment::Cgroup { path } => Some(Cgroup::entered(path.clone())),
        Containment::ProcessGroups => None,
    };
    host(Box::new(Hosted {
        files,
        app_file,
        listener,
        lock,
        containment: state.containment,
        cgroup,
        ready: Ready(None),
        resumed: Some((inherited.frozen, state.carried, log_fds)),
        held: Held::default(),
    }))
}

/// Everything the supervisor's loop runs with.
struct Hosted {
    files: AppFiles,
    app_file: AppFile,
    listener: std::os::unix::net::UnixListener,
    lock: PidLock,
    containment: Containment,
    cgroup: Option<Cgroup>,
    ready: Ready,
    /// An app handed over by the previous image (an in-place upgrade).
    resumed: Option<(Frozen, app::Carried, Vec<std::os::fd::OwnedFd>)>,
    /// The sockets the daemon held for the app (see [`crate::held`]).
    held: Held,
}

/// Run the app and serve the socket until the app is deleted or a signal
/// ends the supervisor; then exit. One thread, the main one, runs it all:
/// it forks every worker (and execs a new binary on an upgrade: the
/// workers' `PR_SET_PDEATHSIG` is tied to it).
fn host(hosted: Box<Hosted>) -> ! {
    herd_engine::upgrade::main_thread_host(move || {
        let files = hosted.files.clone();
        let name = hosted.app_file.name.clone();
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // One app's handful of descriptors: room for 64 readiness events
            // a tick (1,024 by default: 12 kB, per supervisor); more wait
            // for the next tick.
            .max_io_events_per_tick(64)
            .thread_keep_alive(herd_engine::memory::BLOCKING_KEEP_ALIVE)
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let e = Error::Runtime(e);
                crate::say!("app {name}: {e}");
                hosted.ready.failed(&e.to_string());
                return 1;
            }
        };
        // This frame stays under the runtime for the app's life: it holds
        // the future (on the heap) and what the end needs, not the parts
        // the start-up takes.
        let (lock, cgroup, supervised) = take_apart(hosted, &files);
        let deleted = runtime.block_on(supervised);
        drop(runtime);
        // The app is done: nothing of it may stay behind.
        if let Some(cgroup) = cgroup {
            cgroup.close();
        }
        if deleted {
            files.remove_app();
        } else {
            files.remove_socket();
        }
        crate::say!(
            "app {name}: supervisor {} exits{}",
            std::process::id(),
            if deleted {
                " (the app was deleted)"
            } else {
                ""
            }
        );
        lock.remove();
        0
    })
}

/// The app's lock and cgroup, kept for the end, and the future that
/// supervises the app, built from the rest (see [`herd_engine::memory::on_heap`]).
#[inline(never)]
fn take_apart(
    hosted: Box<Hosted>,
    files: &AppFiles,
) -> (
    PidLock,
    Option<Cgroup>,
    std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>,
) {
    let Hosted {
        files: _,
        app_file,
        listener,
        lock,
        containment,
        cgroup,
        ready,
        resumed,
        held,
    } = *hosted;
    let start = Box::new(Start {
        app_file,
        resumed,
        held,
        lock_fd: lock.raw_fd(),
    });
    let supervised =
        herd_engine::memory::on_heap(move || supervise(files, start, listener, containment, ready));
    (lock, cgroup, supervised)
}

/// How [`supervise`] begins: the app's file, and the app handed over by a
/// previous image if this is one.
struct Start {
    app_file: AppFile,
    resumed: Option<(Frozen, app::Carried, Vec<std::os::fd::OwnedFd>)>,
    /// The sockets the daemon held for the app, for its first start.
    held: Held,
    /// The fd of the held lock (kept across an upgrade).
    lock_fd: RawFd,
}

/// Bind the control socket owner-only, through the checked `apps/` (the
/// umask covers the moment between bind and chmod; we are single-threaded
/// here).
fn bind(files: &AppFiles) -> Result<std::os::unix::net::UnixListener, Error> {
    let err = |error| Error::Listen {
        path: files.socket(),
        error,
    };
    // We hold the app's lock: a socket file left here is stale.
    files.remove_socket();
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener = std::os::unix::net::UnixListener::bind(files.socket_address());
    nix::sys::stat::umask(old);
    let listener = listener.map_err(err)?;
    files.protect_socket().map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Where the child tells its starter that it serves (or failed).
struct Ready(Option<std::fs::File>);

impl Ready {
    fn serving(&mut self, message: &str) {
        if let Some(mut pipe) = self.0.take() {
            let _ = writeln!(pipe, "ready {message}");
        }
    }

    fn failed(mut self, why: &str) {
        if let Some(mut pipe) = self.0.take() {
            let _ = writeln!(pipe, "failed {why}");
        }
    }
}

enum Detached {
    Parent(i32),
    Child(Ready),
}

/// Fork; the child detaches, the parent waits for its word and prints it.
fn detach(files: &AppFiles) -> Result<Detached, Error> {
    let herd_log = files.home().open_daemon_log().map_err(Error::Detach)?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(Error::Detach)?;
    let (rx, tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Detach(e.into()))?;
    // SAFETY: no other thread exists yet (nothing has started one), so the
    // child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::Detach(e.into()))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(tx);
            let mut word = String::new();
            let _ = std::fs::File::from(rx).read_to_string(&mut word);
            let word = word.trim_end();
            match word.split_once(' ') {
                Some(("ready", message)) => {
                    println!("{message}");
                    Ok(Detached::Parent(0))
                }
                Some(("failed", why)) => Err(Error::Start {
                    id: files.id(),
                    why: why.to_string(),
                }),
                _ => Err(Error::Start {
                    id: files.id(),
                    why: format!(
                        "it exited while starting; see {}",
                        files.home().daemon_log().display()
                    ),
                }),
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(rx);
            // A session of its own: no terminal, no job control of the
            // starter's shell, no signal to the starter's group reaches it.
            let _ = nix::unistd::setsid();
            redirect(&devnull, 0);
            redirect(&devnull, 1);
            redirect(&herd_log, 2);
            let _ = std::env::set_current_dir("/");
            Ok(Detached::Child(Ready(Some(std::fs::File::from(tx)))))
        }
    }
}

fn redirect(file: &impl AsRawFd, to: i32) {
    // SAFETY: dup2 onto a standard fd; both are open.
    unsafe { libc::dup2(file.as_raw_fd(), to) };
}

/// End what a previous supervisor of this app left, then contain the app
/// afresh (before any worker starts) and record how.
fn contain(
    files: &AppFiles,
    app: &AppFile,
    mode: ContainMode,
) -> Result<(Containment, Option<Cgroup>), Error> {
    let name = &app.name;
    let old = Record::read(files).unwrap_or_else(|e| {
        crate::say!(
            "app {name}: cannot read {}: {e}",
            files.groups_file().display()
        );
        Record::default()
    });
    let ended = contain::end_leftovers(&old);
    if ended.processes > 0 {
        crate::say!(
            "app {name}: ended {} process(es) its previous supervisor left",
            ended.processes
        );
    }
    if ended.left > 0 {
        crate::say!(
            "app {name}: warning: {} process(es) its previous supervisor left would not end",
            ended.left
        );
    }
    let cgroup = match mode {
        ContainMode::ProcessGroups => None,
        ContainMode::Cgroup => Some(Cgroup::create(files.id()).map_err(|error| Error::Cgroup {
            id: files.id(),
            error,
        })?),
        ContainMode::Auto => match Cgroup::create(files.id()) {
            Ok(c) => Some(c),
            Err(e) => {
                crate::say!("app {name}: no cgroup of its own ({e}); its workers' process groups are recorded instead");
                None
            }
        },
    };
    let record = Record {
        format: Record::FORMAT,
        cgroup: cgroup.as_ref().map(|c| c.path().to_path_buf()),
        groups: Vec::new(),
    };
    if let Err(e) = record.write(files) {
        crate::say!(
            "app {name}: warning: cannot write {}: {e}",
            files.groups_file().display()
        );
    }
    let containment = match &cgroup {
        Some(c) => Containment::Cgroup {
            path: c.path().to_path_buf(),
        },
        None => Containment::ProcessGroups,
    };
    Ok((containment, cgroup))
}

/// Run the app and serve its socket until it is deleted (true) or a signal
/// ends the supervisor (false).
async fn supervise(
    files: &AppFiles,
    // Boxed: an async fn keeps its arguments for its whole life, and this
    // one lives as long as the app (an upgrade's frozen app is in here).
    start: Box<Start>,
    listener: std::os::unix::net::UnixListener,
    containment: Containment,
    ready: Ready,
) -> bool {
    // The start-up builds and holds much (the app's definition, the actor,
    // the first start's answer): in a future of its own, so that this one,
    // polled for the app's life, keeps no stack for it.
    let opened = herd_engine::memory::on_heap(|| open(files, start, listener, &containment, ready));
    match opened.await {
        Some(serving) => serve(files, &containment, Box::new(serving)).await,
        None => false,
    }
}

/// The app as [`open`] left it, running (or stopped, as wished), its
/// socket about to be served.
struct Serving {
    name: String,
    app: app::AppRef,
    actor: tokio::task::JoinHandle<Option<app::Handover>>,
    listener: tokio::net::UnixListener,
    lock_fd: RawFd,
    shared: Arc<Shared>,
    sigterm: Signal,
    sigint: Signal,
    sigusr1: Signal,
    sighup: Signal,
}

/// Start the actor (and the app, if it is wished running), then tell the
/// starter that the supervisor serves. `None` if it cannot (the starter
/// was told why).
async fn open(
    files: &AppFiles,
    start: Box<Start>,
    listener: std::os::unix::net::UnixListener,
    containment: &Containment,
    mut ready: Ready,
) -> Option<Serving> {
    let Start {
        app_file,
        resumed,
        held,
        lock_fd,
    } = *start;
    let id = files.id();
    let name = app_file.name.clone();
    let desired = app_file.desired;
    let shared_file = Arc::new(Mutex::new(app_file.clone()));
    let keeper = DiskKeeper {
        files: files.clone(),
        record: Record::read(files).unwrap_or_default(),
        app_file: shared_file.clone(),
    };
    let was_resumed = resumed.is_some();
    let spawned = match resumed {
        Some((frozen, carried, log_fds)) => app::resume(
            id,
            app_file.definition,
            files.home(),
            Box::new(keeper),
            frozen,
            carried,
            log_fds,
        ),
        // Held sockets are for an app to run; a stopped one closes them.
        None => app::spawn(
            id,
            app_file.definition,
            files.home(),
            Box::new(keeper),
            if desired == Desired::Running {
                held
            } else {
                held.into_shut_down();
                Held::default()
            },
        ),
    };
    let (app, actor) = match spawned {
        Ok(a) => a,
        Err(e) => {
            crate::say!("app {name}: {e}");
            ready.failed(&e);
            return None;
        }
    };
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let why = format!("cannot serve {}: {e}", files.socket().display());
            crate::say!("app {name}: {why}");
            ready.failed(&why);
            return None;
        }
    };
    let (sigterm, sigint, sigusr1, sighup) = match (
        Signal::new(libc::SIGTERM),
        Signal::new(libc::SIGINT),
        Signal::new(libc::SIGUSR1),
        Signal::new(libc::SIGHUP),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => {
            ready.failed("cannot watch for signals");
            return None;
        }
    };
    // Handled from here on (held until now, across an upgrade's exec too).
    herd_engine::upgrade::signals_ready();
    let pid = std::process::id();
    let shared = Arc::new(Shared {
        app: app.clone(),
        info: SupervisorInfo {
            pid,
            started_at_ms: server::unix_ms(SystemTime::now()),
            uptime_ms: 0,
            binary: binary(),
            containment: containment.clone(),
        },
        started: Instant::now(),
        app_file: shared_file,
        deleting: AtomicBool::new(false),
        delete_answered: tokio::sync::Notify::new(),
    });
    let how = match containment {
        Containment::Cgroup { path } => format!("cgroup {}", path.display()),
        Containment::ProcessGroups => "process groups".to_string(),
    };
    crate::say!(
        "app {name}: supervisor {pid} serves {} (app id {id}; contained by {how})",
        files.socket().display()
    );
    let started = match desired {
        _ if was_resumed => Ticket::Done {
            message: format!("{name} runs on"),
        },
        Desired::Running => app.command(AppCommand::Start).await,
        Desired::Stopped => Ticket::Done {
            message: format!("{name} stays stopped"),
        },
    };
    if let Ticket::Aborted { why } | Ticket::Refused { why } = &started {
        crate::say!("app {name}: {why}");
    }
    let message = match &started {
        Ticket::Done { message } => message.clone(),
        Ticket::Aborted { why } | Ticket::Refused { why } => why.clone(),
    };
    ready.serving(&format!(
        "supervisor {pid} of app {name} (id {id}): {message}"
    ));
    Some(Serving {
        name,
        app,
        actor,
        listener,
        lock_fd,
        shared,
        sigterm,
        sigint,
        sigusr1,
        sighup,
    })
}

/// Serve the control socket until the app is deleted (true) or a signal
/// ends the supervisor (false).
///
/// `serving` is boxed for the reason [`supervise`]'s start is: an async fn
/// keeps its arguments for its whole life.
async fn serve(files: &AppFiles, containment: &Containment, serving: Box<Serving>) -> bool {
    let Serving {
        name,
        app,
        mut actor,
        listener,
        lock_fd,
        shared,
        mut sigterm,
        mut sigint,
        mut sigusr1,
        mut sighup,
    } = *serving;
    // What start-up parsed, built and ran is given back in a moment (this
    // process lives as long as the app, one per app), and again after each
    // command and once a minute.
    let trimmer = herd_engine::memory::Trimmer::spawn();

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let mut quitting = false;
    loop {
        tokio::select! {
            accepted = accept(&listener, &slots) => match accepted {
                Ok((stream, slot)) => {
                    trimmer.poke();
                    let shared = shared.clone();
                    tokio::spawn(herd_engine::memory::on_heap(move || async move {
                        server::client(shared, stream).await;
                        drop(slot);
                    }));
                }
                Err(e) => {
                    crate::say!("app {name}: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            ended = &mut actor => match ended {
                Ok(Some(handover)) => {
                    let fds = [listener.as_raw_fd(), lock_fd];
                    // The upgrade's future (5.6 kB) would otherwise keep
                    // its room in this one, which lives as long as the app.
                    herd_engine::memory::on_heap(|| {
                        upgrade(files, &name, containment, handover, &fds)
                    })
                    .await;
                    // Only an exec that failed twice gets here: the app is lost.
                    break;
                }
                _ => break,
            },
            _ = sigterm.recv() => quit(&app, &name, "SIGTERM", &mut quitting),
            _ = sigint.recv() => quit(&app, &name, "SIGINT", &mut quitting),
            _ = sigusr1.recv() => {
                let app = app.clone();
                tokio::spawn(async move { app.command(AppCommand::ReopenLogs).await });
            }
            _ = sighup.recv() => {}
        }
    }
    let deleted = shared.deleting.load(Ordering::SeqCst)
        && tokio::time::timeout(ANSWER_GRACE, shared.delete_answered.notified())
            .await
            .is_ok();
    deleted
}

/// Execute the new binary with the frozen app (this returns only if the
/// exec failed); if that fails, the current binary again, which resumes
/// the app as a new image would.
async fn upgrade(
    files: &AppFiles,
    name: &str,
    containment: &Containment,
    handover: app::Handover,
    fds: &[RawFd],
) {
    let app::Handover {
        frozen,
        probed,
        carried,
        log_fds,
    } = handover;
    // The control socket, the lock, then the log files (kept open here
    // until the exec).
    let fds: Vec<RawFd> = fds
        .iter()
        .copied()
        .chain(log_fds.iter().map(|f| f.as_raw_fd()))
        .collect();
    let fds = &fds[..];
    let state = |carried: app::Carried| {
        serde_json::to_value(HostState {
            home: files.home().root().to_path_buf(),
            id: files.id(),
            containment: containment.clone(),
            carried,
        })
        .unwrap_or_default()
    };
    // Let the upgrade's answer reach the daemon before the exec.
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    let exe = probed.path().to_path_buf();
    let (frozen, error) =
        herd_engine::upgrade::exec(probed, &exe, HOST_KIND, frozen, state(carried.clone()), fds)
            .await;
    crate::say!("app {name}: upgrade failed: {error}; executing the current binary again");
    let current = PathBuf::from("/proc/self/exe");
    let own = herd_engine::upgrade::own_exe().unwrap_or_else(|_| current.clone());
    let probed = tokio::task::spawn_blocking(move || herd_engine::upgrade::probe(&current)).await;
    match probed {
        Ok(Ok(probed)) => {
            let (_, error) =
                herd_engine::upgrade::exec(probed, &own, HOST_KIND, frozen, state(carried), fds)
                    .await;
            crate::say!("app {name}: cannot execute the current binary again either: {error}; the app is lost");
        }
        Ok(Err(e)) => {
            crate::say!("app {name}: cannot execute the current binary again: {e}; the app is lost")
        }
        Err(e) => {
            crate::say!("app {name}: cannot execute the current binary again: {e}; the app is lost")
        }
    }
}

/// A signal asks the supervisor to end: stop the app, keeping its wish.
fn quit(app: &app::AppRef, name: &str, why: &str, quitting: &mut bool) {
    if std::mem::replace(quitting, true) {
        return;
    }
    crate::say!("app {name}: {why}: stopping the app, then its supervisor");
    let app = app.clone();
    tokio::spawn(async move { app.command(AppCommand::Quit).await });
}

/// The next connection, once fewer than [`MAX_CLIENTS`] are being served.
async fn accept(
    listener: &tokio::net::UnixListener,
    slots: &Arc<tokio::sync::Semaphore>,
) -> io::Result<(tokio::net::UnixStream, tokio::sync::OwnedSemaphorePermit)> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let (stream, _) = listener.accept().await?;
    Ok((stream, slot))
}

/// Which program this process runs.
fn binary() -> Binary {
    let path = std::fs::read_link("/proc/self/exe").unwrap_or_default();
    let meta = std::fs::metadata("/proc/self/exe").ok();
    Binary {
        path,
        device: meta.as_ref().map_or(0, |m| m.dev()),
        inode: meta.as_ref().map_or(0, |m| m.ino()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: VERSION,
    }
}

/// Keeps the app's file and its group record up to date.
struct DiskKeeper {
    files: AppFiles,
    record: Record,
    app_file: Arc<Mutex<AppFile>>,
}

impl DiskKeeper {
    fn write_record(&self) {
        if let Err(e) = self.record.write(&self.files) {
            crate::say!(
                "warning: cannot write {}: {e}; a later supervisor may not find every process of this app",
                self.files.groups_file().display()
            );
        }
    }
}

impl Keeper for DiskKeeper {
    fn worker_started(&mut self, pid: u32) {
        self.record.add(pid);
        self.write_record();
    }

    fn worker_ended(&mut self, pid: u32) {
        self.record.remove(pid);
        self.write_record();
    }

    fn app_changed(&mut self, def: &AppDef, desired: Desired) {
        let mut file = self.app_file.lock().unwrap_or_else(|e| e.into_inner());
        if file.definition == *def && file.desired == desired {
            return;
        }
        file.definition = def.clone();
        file.name = def.spec.name.clone();
        file.desired = desired;
        if let Err(e) = self.files.write_app(&file) {
            crate::say!(
                "app {}: warning: cannot write {}: {e}; a later supervisor would run the app as it was",
                file.name,
                self.files.app_file().display()
            );
        }
    }
}
