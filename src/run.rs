//! `herd run`: supervise one app in the foreground. Parses and validates the
//! options (every mistake is reported before anything starts), starts the
//! engine, maps signals to commands (INT/TERM stop, HUP reload, TTIN/TTOU
//! scale), and prints the workers' output and the lifecycle events.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use herd_engine::config::{
    self, AppSpec, Balance, Instances, ListenSpec, ReadyPolicy, RestartMode, RestartPolicy,
    StopPolicy, WorkerKind,
};
use herd_engine::os::spawn::resolve_program;
use nix::sys::signal::Signal;

use crate::UsageError;

fn duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s).map_err(|e| e.0)
}

fn size(s: &str) -> Result<usize, String> {
    config::parse_size(s).map_err(|e| e.0)
}

fn kill_signal(s: &str) -> Result<Signal, String> {
    config::parse_signal(s).map_err(|e| e.0)
}

fn parsed<T: std::str::FromStr<Err = config::ConfigError>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: config::ConfigError| e.0)
}

#[derive(Args, Debug)]
#[command(
    after_help = "Signals: SIGINT/SIGTERM stop gracefully (twice: at once), SIGHUP reloads worker by worker, SIGTTIN/SIGTTOU add/remove a worker.\n\nExample: herd run -i 2 --listen 127.0.0.1:8000 -- ./server"
)]
pub struct RunArgs {
    /// Number of workers: a number, or `max` for one per usable CPU (affinity and cgroup quota).
    #[arg(short = 'i', long, default_value = "max", value_parser = parsed::<Instances>, value_name = "N|max")]
    instances: Instances,

    /// A socket to bind once and pass to every worker (LISTEN_FDS): HOST:PORT, [::1]:PORT or unix:PATH; repeatable.
    #[arg(long = "listen", value_name = "[NAME=]ADDR", value_parser = parsed::<ListenSpec>)]
    listen: Vec<ListenSpec>,

    /// How connections are spread: `shared` (one socket, one queue), `reuseport` (one socket per
    /// worker) or `round-robin` (herd accepts and hands each connection to the least busy worker;
    /// Node apps and herd-cluster workers). Default: shared, or NODE_CLUSTER_SCHED_POLICY=rr|none.
    #[arg(long, value_parser = parsed::<Balance>, value_name = "MODE")]
    balance: Option<Balance>,

    /// Run the script with this program (`node` for .js/.mjs/.cjs files); `none` runs COMMAND as is.
    #[arg(long, value_name = "PROGRAM")]
    interpreter: Option<String>,

    /// Stop a worker with the IPC message "shutdown" instead of --kill-signal (pm2's shutdown_with_message).
    #[arg(long)]
    shutdown_with_message: bool,

    /// Name of the app, shown in logs.
    #[arg(long)]
    name: Option<String>,

    /// When to restart a worker that exited: always, on-failure or never.
    #[arg(long, default_value = "always", value_parser = parsed::<RestartMode>, value_name = "WHEN")]
    restart: RestartMode,

    /// First delay before restarting a worker that crashed young; doubles with each crash.
    #[arg(long, default_value = "100ms", value_parser = duration, value_name = "DURATION")]
    restart_delay: Duration,

    /// The most the restart delay grows to.
    #[arg(long, default_value = "5s", value_parser = duration, value_name = "DURATION")]
    max_restart_delay: Duration,

    /// A worker that ran this long was stable: its backoff and crash count reset.
    #[arg(long, default_value = "1s", value_parser = duration, value_name = "DURATION")]
    min_uptime: Duration,

    /// Restarts allowed for a worker that keeps crashing before --min-uptime; its next crash errors the slot (left empty).
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_restarts: u32,

    /// Signal that asks a worker to finish (sent to its whole process group).
    #[arg(long, default_value = "SIGINT", value_parser = kill_signal, value_name = "SIGNAL")]
    kill_signal: Signal,

    /// How long a stopping worker may drain before its process group is SIGKILLed (12s, 500ms, or ms),
    /// counted from the stop signal (Node and round-robin workers first stop taking connections, at most 1 s).
    #[arg(long, default_value = "1600ms", value_parser = duration, value_name = "DURATION")]
    kill_timeout: Duration,

    /// The largest IPC message a worker may send (process.send); a longer one is refused with a warning.
    #[arg(long, default_value = "1MiB", value_parser = size, value_name = "SIZE")]
    max_message: usize,

    /// A worker is ready when it says so: READY=1 on $NOTIFY_SOCKET (sd_notify), or for a Node app
    /// `process.send('ready')`; not after --ready-delay (nor, for Node, when it listens).
    #[arg(long)]
    wait_ready: bool,

    /// Without --wait-ready, a worker that stayed up this long is ready.
    #[arg(long, default_value = "1s", value_parser = duration, value_name = "DURATION")]
    ready_delay: Duration,

    /// During a reload, a replacement not ready within this long aborts the reload.
    #[arg(long, default_value = "3s", value_parser = duration, value_name = "DURATION")]
    listen_timeout: Duration,

    /// The program to run, then its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

impl RunArgs {
    /// Check everything and build the app; nothing has started yet.
    fn into_spec(self) -> Result<AppSpec, UsageError> {
        let program = &self.command[0];
        let (interpreter, kind) = interpreter_for(program, self.interpreter.as_deref());
        let mut args = self.command[1..].to_vec();
        let path = match &interpreter {
            Some(interp) => {
                if !std::path::Path::new(program).is_file() {
                    return Err(UsageError(format!(
                        "cannot run '{program}': no such file; give the path of the script"
                    )));
                }
                args.insert(0, program.clone());
                resolve_program(interp).map_err(|e| {
                    UsageError(format!(
                        "cannot run '{program}' with {interp}: {e}; install it or choose another with --interpreter"
                    ))
                })?
            }
            None => resolve_program(program)
                .map_err(|e| UsageError(format!("cannot run '{program}': {e}")))?,
        };
        let name = self.name.clone().unwrap_or_else(|| {
            PathBuf::from(program)
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| program.clone())
        });
        let mut spec = AppSpec::new(name, path);
        spec.args = args;
        spec.kind = kind;
        spec.instances = self.instances.resolve();
        spec.listeners = self.listen;
        spec.balance = balance_for(
            self.balance,
            std::env::var("NODE_CLUSTER_SCHED_POLICY").ok(),
        )?;
        if spec.balance == Balance::RoundRobin
            && kind == WorkerKind::Generic
            && spec.listeners.is_empty()
        {
            return Err(UsageError(
                "--balance round-robin needs a --listen socket for herd to accept on (Node apps ask for theirs)".into(),
            ));
        }
        if self.max_restart_delay < self.restart_delay {
            return Err(UsageError(format!(
                "--max-restart-delay ({}) is shorter than --restart-delay ({}): make it at least as long",
                herd_engine::describe::duration(self.max_restart_delay),
                herd_engine::describe::duration(self.restart_delay)
            )));
        }
        spec.restart = RestartPolicy {
            mode: self.restart,
            restart_delay: self.restart_delay,
            max_restart_delay: self.max_restart_delay,
            min_uptime: self.min_uptime,
            max_restarts: self.max_restarts,
        };
        spec.stop = StopPolicy {
            kill_signal: self.kill_signal,
            kill_timeout: self.kill_timeout,
            shutdown_with_message: self.shutdown_with_message,
        };
        spec.max_message_bytes = self.max_message;
        spec.ready = ReadyPolicy {
            wait_ready: self.wait_ready,
            ready_delay: self.ready_delay,
            listen_timeout: self.listen_timeout,
        };
        Ok(spec)
    }
}

/// Which interpreter runs `program`, and whether it is a Node worker:
/// `node app.js` and `app.js` (`.js`, `.mjs`, `.cjs`) are Node; `--interpreter`
/// overrides (`none`: run the command as it is).
fn interpreter_for(program: &str, interpreter: Option<&str>) -> (Option<String>, WorkerKind) {
    let is_node = |p: &str| {
        let base = p.rsplit('/').next().unwrap_or(p);
        base == "node" || base == "nodejs"
    };
    match interpreter {
        Some("none") => (
            None,
            if is_node(program) {
                WorkerKind::Node
            } else {
                WorkerKind::Generic
            },
        ),
        Some(i) => (
            Some(i.to_string()),
            if is_node(i) {
                WorkerKind::Node
            } else {
                WorkerKind::Generic
            },
        ),
        None if is_node(program) => (None, WorkerKind::Node),
        None if [".js", ".mjs", ".cjs"].iter().any(|e| program.ends_with(e)) => {
            (Some("node".to_string()), WorkerKind::Node)
        }
        None => (None, WorkerKind::Generic),
    }
}

/// `--balance`, else Node's own `NODE_CLUSTER_SCHED_POLICY`, else shared.
fn balance_for(flag: Option<Balance>, env: Option<String>) -> Result<Balance, UsageError> {
    match (flag, env.as_deref()) {
        (Some(b), _) => Ok(b),
        (None, Some("rr")) => Ok(Balance::RoundRobin),
        (None, Some("none") | None) => Ok(Balance::Shared),
        (None, Some(other)) => Err(UsageError(format!(
            "NODE_CLUSTER_SCHED_POLICY is '{other}': use rr or none, or unset it"
        ))),
    }
}

pub fn main(args: RunArgs) -> anyhow::Result<i32> {
    let spec = args.into_spec()?;
    // One thread: the supervisor's work is small and sequential, and a
    // single-threaded runtime spares the round-robin path cross-thread
    // wake-ups. (It is also the thread that starts workers, which their
    // PR_SET_PDEATHSIG is tied to: it lives as long as herd.)
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(herd_cluster::supervise(spec))
        .map_err(|e| match e {
            herd_cluster::primary_error::Error::Start(e) => UsageError(e.to_string()).into(),
            e => anyhow::Error::new(e),
        })
}
