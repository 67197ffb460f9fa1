//! # herd-daemon: many apps, kept running after you log out
//!
//! ## Theory of operation
//!
//! The daemon is a thin layer over herd's engine: each app is one
//! [`herd_engine::supervisor`] instance, exactly what `herd run` drives in
//! the foreground. The daemon adds what only a long-lived manager needs:
//!
//! - **A home** ([`home`], the `herd-home` crate): `$HERD_HOME` (default
//!   `~/.herd`, mode 0700) holds `herd.sock`, `herd.pid` (locked while a
//!   daemon runs, so there is one per home), `logs/`, `dump.json` (the saved
//!   app list) and `herd.log`. A home another user could change is refused,
//!   and every file in it is opened through the checked directory's fd,
//!   never following a link, created 0600.
//! - **A server** ([`server`]): the control socket speaks `herd-protocol`;
//!   every connection is checked for the peer's uid, says hello with its
//!   protocol version, then sends one request, each within a deadline. A bad
//!   frame closes that one connection and nothing else; idle connections
//!   never lock the CLI out (the oldest idle one is dropped for a new one).
//! - **Secrets** ([`herd_protocol::secrets`]): environment values whose
//!   names look secret are hidden in every answer (show, list, the status
//!   page, metrics) unless the request asks for them.
//! - **One actor per app** ([`app`]): a task that owns the app's engine
//!   handle, its event stream, its log files and its resource samples, and
//!   runs the app's commands strictly one after the other. A command that
//!   takes time (a reload, a stop) holds the queue until it is done, so two
//!   reloads both complete in turn and a stop asked during a reload waits for
//!   it; the actor keeps writing logs meanwhile.
//! - **Handlers** ([`handlers`]): one module per verb, turning a request
//!   into commands for actors and a response.
//! - **Logs** ([`logs`]): whole lines into per-app files, with optional
//!   timestamps, size-based rotation and reopening on SIGUSR1.
//! - **HTTP** ([`http`], off by default): `--metrics ADDR` serves
//!   Prometheus metrics, `/healthz` and `/readyz` probes and a live status
//!   page on a bounded HTTP/1.1 listener (hyper) on the same runtime.
//! - **Persistence** ([`dump`]): `save` writes the app definitions with
//!   write-temp, fsync, rename; `resurrect` starts them again.
//!
//! It runs on one thread (a current-thread runtime), which is also the
//! thread that starts every worker: a worker's `PR_SET_PDEATHSIG` is tied to
//! it, so workers die with a SIGKILLed daemon instead of living on as orphans.

pub mod dump;
pub mod handlers;
pub mod http;
pub mod server;

// One app's actor, log files and samples live in herd-supervisor (the
// per-app supervisor process runs them too); the daemon still runs them
// in-process.
pub use herd_supervisor::{app, logs, sample};

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

/// Run the daemon until `herd kill`, SIGTERM or SIGINT; returns the exit code.
pub fn run(options: Options) -> Result<i32, Error> {
    let lock = options.home.lock()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let code = runtime.block_on(server::serve(options))?;
    drop(lock);
    Ok(code)
}
