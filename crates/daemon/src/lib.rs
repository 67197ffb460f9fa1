//! # herd-daemon: the control plane over the apps' supervisors
//!
//! ## Theory of operation
//!
//! Each app runs under a supervisor process of its own (`herd supervise`,
//! the `herd-supervisor` crate): the workers' parent, owner of the app's
//! sockets, output pipes, log files, samples and memory limit. The daemon
//! only manages them; nothing of an app's data or output passes through
//! it, and the apps outlive it. What it owns:
//!
//! - **A home** ([`home`], the `herd-home` crate): `$HERD_HOME` (default
//!   `~/.herd`, mode 0700) holds `herd.sock`, `herd.pid` (locked while a
//!   daemon runs, so there is one per home), `apps/` (each app's file,
//!   socket, pid lock and process-group record, see `herd_supervisor::files`),
//!   `logs/`, `dump.json` (the saved app list) and `herd.log`. A home
//!   another user could change is refused, and every file in it is opened
//!   through the checked directory's fd, never following a link.
//! - **A server** ([`server`]): the control socket speaks `herd-protocol`;
//!   every connection is checked for the peer's uid, says hello with its
//!   protocol version, then sends one request, each within a deadline.
//! - **The registry** ([`registry`]): each app's id, name, definition as
//!   last known, and its [`link`]: the daemon's connection to the app's
//!   supervisor. The link starts the supervisor, follows its events on one
//!   connection, and starts another (with backoff) when it dies; questions
//!   and commands go on connections of their own, each command answered by
//!   its own ticket.
//! - **The socket store** ([`sockets`]): a copy of each app's shared
//!   listening sockets, which the link gives to the supervisor it starts
//!   after one died, so the app's clients wait instead of being refused.
//!   The copies never accept.
//! - **Adoption** ([`adopt`]): on start, every app found in `apps/` is
//!   taken back with its id; live supervisors are followed as they are
//!   (same workers, counters, uptimes), dead ones started again.
//! - **Handlers** ([`handlers`]): one module per group of verbs, turning a
//!   request into supervisor commands and a response whose error keeps its
//!   kind (a usage mistake, or a failure).
//! - **Views** ([`views`]): every app's status, asked of the supervisors at
//!   once with a deadline, for `list`, `show`, `jlist`, metrics, probes and
//!   the status page. The daemon samples nothing itself.
//! - **Secrets** ([`herd_protocol::secrets`]): environment values whose
//!   names look secret are hidden in every answer unless asked for.
//! - **HTTP** ([`http`], off by default): `--metrics ADDR` serves
//!   Prometheus metrics, `/healthz` and `/readyz` probes and a live status
//!   page on a bounded HTTP/1.1 listener (hyper) on the same runtime.
//! - **Persistence** ([`dump`]): `save` writes the app definitions with
//!   write-temp, fsync, rename; `resurrect` starts them again.
//!
//! It runs on one thread (a current-thread runtime). `herd kill` and
//! SIGTERM stop every app (their supervisors end too); a daemon that dies
//! any other way leaves the apps running, and the next one adopts them.

pub mod adopt;
pub mod dump;
pub mod handlers;
pub mod http;
pub mod link;
pub mod registry;
pub mod server;
pub mod sockets;
pub mod views;

pub use herd_home as home;
pub use herd_home::Home;

/// One line of the daemon's own log (its stderr: `$HERD_HOME/herd.log`, or
/// the journal under systemd), with the time first: `2026-12-02T13:45:01.123+00:00 herd: …`.
pub use herd_supervisor::say;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Home(#[from] home::HomeError),
    #[error(transparent)]
    Apps(herd_supervisor::files::FilesError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen for metrics on {addr}: {error}; choose another address with --metrics")]
    Metrics {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot listen on {path}: {error}")]
    Listen {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

/// How the daemon is started.
#[derive(Debug, Clone)]
pub struct Options {
    pub home: Home,
    /// Start the saved app list at once (`herd startup`'s unit).
    pub resurrect: bool,
    /// Serve metrics, health probes and the status page here (off: None).
    pub metrics: Option<std::net::SocketAddr>,
    /// Allow the status page's actions (reload, restart, stop).
    pub metrics_admin: bool,
    /// Which environment values are hidden in answers (beyond the built-in rule).
    pub secrets: herd_protocol::SecretNames,
    /// Names the HTTP listener answers to besides its own address.
    pub metrics_hosts: Vec<http::AllowedHost>,
}

/// The fd a previous image of this daemon kept open for this one (`herd
/// update`) under the variable `env`, if any: the control socket, the held
/// lock. Call before any thread exists.
fn inherited_fd(env: &str) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let var = std::env::var_os(env)?;
    // SAFETY: no other thread exists yet, so none reads the environment meanwhile.
    unsafe { std::env::remove_var(env) };
    let fd: i32 = var.to_str()?.parse().ok()?;
    // SAFETY: F_GETFD only reads the fd's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: open (checked), handed to this image by the previous one,
    // and owned by nothing else here.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // Close-on-exec again, as any fd of ours.
    // SAFETY: fcntl on the fd we now own.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::F_SETFD,
            libc::FD_CLOEXEC,
        )
    };
    Some(fd)
}

/// Run the daemon until `herd kill`, SIGTERM or SIGINT; returns the exit code.
pub fn run(options: Options) -> Result<i32, Error> {
    let started = std::time::Instant::now();
    let control_fd = inherited_fd(handlers::update::CONTROL_FD_ENV);
    // The previous image's lock, held across its exec; else taken now.
    let lock = match inherited_fd(handlers::update::LOCK_FD_ENV) {
        Some(fd) => options.home.lock_inherited(fd)?,
        None => options.home.lock()?,
    };
    let lock_fd = lock.raw_fd();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(herd_engine::memory::BLOCKING_KEEP_ALIVE)
        .build()
        .map_err(Error::Runtime)?;
    let code = runtime.block_on(Box::pin(server::serve(
        options, started, control_fd, lock_fd,
    )))?;
    drop(lock);
    Ok(code)
}
