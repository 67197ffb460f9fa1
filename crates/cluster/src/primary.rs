//! The embedded primary: herd's engine inside a Rust program, which starts
//! its workers by executing its own binary again.

use std::io;
use std::time::Duration;

use herd_engine::config::{
    AppSpec, Balance, ListenSpec, ReadyPolicy, RestartPolicy, StopPolicy, WorkerKind,
};
use herd_engine::foreground;
use herd_engine::machine::Command;
use herd_engine::supervisor::{self, AppHandle, Events, StartError, Target};

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
                spec.instances = herd_engine::usable_cpus();
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

    /// Run in the foreground like `herd run` (the same loop: signals,
    /// printed output and events); returns the exit status to end the
    /// process with.
    pub async fn run(self) -> Result<i32, Error> {
        let mut spec = self.spec.map_err(Error::Config)?;
        spec.kind = WorkerKind::Generic;
        foreground::run(spec).await.map_err(|e| match e {
            foreground::Error::Start(e) => Error::Start(e),
            foreground::Error::Io(e) => Error::Io(e),
        })
    }
}
