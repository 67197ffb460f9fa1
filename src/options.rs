//! The options that define an app, shared by `herd run`, `herd start` and
//! config files: parsed and validated here (every mistake is reported before
//! anything starts), then turned into the engine's [`AppSpec`] — with the
//! script, interpreter and exec mode chosen by pm2's rules ([`launch`]), and
//! argument strings split and `~` expanded the same way from the command line
//! and from files ([`text`]).

pub mod launch;
pub mod text;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use herd_engine::config::{
    self, AppSpec, Balance, Counting, CronSpec, ExecMode, Instances, ListenSpec, ReadyPolicy,
    RestartMode, RestartPolicy, StopPolicy, WatchSpec, WorkerKind,
};
use herd_protocol::LogType;
use nix::sys::signal::Signal;

use herd_protocol::FilterEnv;
pub use launch::Style;
pub use text::{expand_home, split_words};

use crate::UsageError;

pub fn duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s).map_err(|e| e.0)
}

pub fn kill_signal(s: &str) -> Result<Signal, String> {
    config::parse_signal(s).map_err(|e| e.0)
}

pub fn parsed<T: std::str::FromStr<Err = config::ConfigError>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: config::ConfigError| e.0)
}

/// One `--env`: a variable, or (as in pm2) the name of a config file's profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvArg {
    /// `--env NAME=VALUE`
    Var(String, String),
    /// `--env production`: a config file's `env_production`.
    Profile(String),
}

/// `NAME=VALUE`, or a profile name, for `--env`.
pub fn env_arg(s: &str) -> Result<EnvArg, String> {
    let bad = || format!("invalid --env '{s}': use NAME=VALUE, or a config file's profile name");
    if s.contains('\0') {
        return Err(bad());
    }
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok(EnvArg::Var(k.to_string(), v.to_string())),
        Some(_) => Err(bad()),
        None if !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || "-_.".contains(c)) => {
            Ok(EnvArg::Profile(s.to_string()))
        }
        None => Err(bad()),
    }
}

/// Everything that defines how an app runs.
#[derive(Args, Debug, Clone)]
pub struct AppOptions {
    /// Number of workers: a number, or `max` for one per usable CPU (affinity and cgroup quota).
    /// Default: `max` for `herd run`; 1 for `herd start` and config files, as under pm2.
    /// 0 is max too, and -N all usable CPUs but N, as under pm2.
    #[arg(short = 'i', long, value_parser = parsed::<Instances>, value_name = "N|max", allow_negative_numbers = true)]
    pub instances: Option<Instances>,

    /// A socket to bind once and pass to every worker (LISTEN_FDS): HOST:PORT, [::1]:PORT or unix:PATH; repeatable.
    #[arg(long = "listen", value_name = "[NAME=]ADDR", value_parser = parsed::<ListenSpec>)]
    pub listen: Vec<ListenSpec>,

    /// How connections are spread: `shared` (one socket, one queue), `reuseport` (one socket per
    /// worker) or `round-robin` (herd accepts and hands each connection to the least busy worker;
    /// Node apps and herd-cluster workers). Default: shared, or NODE_CLUSTER_SCHED_POLICY=rr|none.
    #[arg(long, value_parser = parsed::<Balance>, value_name = "MODE")]
    pub balance: Option<Balance>,

    /// Run the script with this program; `none` runs it as it is. Default by extension, as pm2:
    /// node for .js/.mjs/.cjs, python for .py, bash for .sh, ruby, php, perl, bun for .ts.
    #[arg(long, value_name = "PROGRAM")]
    pub interpreter: Option<String>,

    /// Stop a worker with the IPC message "shutdown" instead of --kill-signal (pm2's shutdown_with_message).
    #[arg(long)]
    pub shutdown_with_message: bool,

    /// Name of the app (default: the script's name).
    #[arg(short = 'n', long)]
    pub name: Option<String>,

    /// When to restart a worker that exited: always, on-failure or never.
    #[arg(long, default_value = "always", value_parser = parsed::<RestartMode>, value_name = "WHEN")]
    pub restart: RestartMode,

    /// First delay before restarting a worker that crashed young; doubles with each crash
    /// (pm2's --exp-backoff-restart-delay).
    #[arg(long, visible_alias = "exp-backoff-restart-delay", default_value = "100ms", value_parser = duration, value_name = "DURATION")]
    pub restart_delay: Duration,

    /// The most the restart delay grows to.
    #[arg(long, default_value = "5s", value_parser = duration, value_name = "DURATION")]
    pub max_restart_delay: Duration,

    /// A worker that ran this long was stable: its backoff and crash count reset.
    #[arg(long, default_value = "1s", value_parser = duration, value_name = "DURATION")]
    pub min_uptime: Duration,

    /// Restarts allowed for a worker that keeps crashing before --min-uptime; its next crash errors the slot (left empty).
    #[arg(long, default_value_t = 16, value_parser = count::<u32>, value_name = "N")]
    pub max_restarts: u32,

    /// Signal that asks a worker to finish (sent to its whole process group).
    #[arg(long, default_value = "SIGINT", value_parser = kill_signal, value_name = "SIGNAL")]
    pub kill_signal: Signal,

    /// How long a stopping worker may drain before its process group is SIGKILLed (12s, 500ms, or ms),
    /// counted from the stop signal (Node and round-robin workers first stop taking connections, at most 1 s).
    #[arg(long, default_value = "1600ms", value_parser = duration, value_name = "DURATION")]
    pub kill_timeout: Duration,

    /// The largest IPC message a worker may send (process.send); a longer one is refused with a warning.
    #[arg(long, default_value = "1M", value_parser = positive_size, value_name = "SIZE")]
    pub max_message: usize,

    /// A worker is ready when it says so: READY=1 on $NOTIFY_SOCKET (sd_notify), or for a Node app
    /// `process.send('ready')`; not after --ready-delay (nor, for Node, when it listens).
    #[arg(long)]
    pub wait_ready: bool,

    /// Without --wait-ready, a worker that stayed up this long is ready.
    #[arg(long, default_value = "1s", value_parser = duration, value_name = "DURATION")]
    pub ready_delay: Duration,

    /// During a reload, a replacement not ready within this long aborts the reload.
    #[arg(long, default_value = "3s", value_parser = duration, value_name = "DURATION")]
    pub listen_timeout: Duration,

    /// An environment variable for the workers, NAME=VALUE; repeatable. With a config file,
    /// a bare name picks its env_NAME profile (pm2's --env production).
    #[arg(long = "env", value_name = "NAME=VALUE|PROFILE", value_parser = env_arg)]
    pub env: Vec<EnvArg>,

    /// The workers' working directory (default: the current one).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Arguments for the interpreter, before the script (pm2's node_args), split into words as pm2
    /// splits them: `--node-args="-r ./pre.js --max-old-space-size=512"`; repeatable.
    #[arg(
        long = "interpreter-args",
        visible_alias = "node-args",
        value_name = "ARGS",
        allow_hyphen_values = true,
        value_parser = words
    )]
    pub interpreter_args: Vec<Words>,

    /// Also put each worker's id (0..N-1) in this variable (pm2's instance_var).
    #[arg(long, value_name = "NAME")]
    pub instance_var: Option<String>,

    /// Reload (worker by worker, without downtime) when files change: the app's folder, or these
    /// folders, files or globs (comma-separated or repeated; relative to --cwd). A new version
    /// that fails to start leaves the old workers serving. Give it after the script, or as
    /// --watch=PATHS (pm2's --watch).
    #[arg(long, value_name = "PATHS", num_args = 0..=1, action = clap::ArgAction::Append)]
    pub watch: Option<Vec<String>>,

    /// With --watch: names, globs or paths whose changes are ignored (node_modules, *.log,
    /// logs/), comma- or space-separated, repeatable. Replaces the default: names starting with
    /// a dot, and node_modules.
    #[arg(long, value_name = "GLOBS")]
    pub ignore_watch: Vec<String>,

    /// With --watch: wait this long after a change before reloading, in seconds as pm2 reads it
    /// (--watch-delay 4), or with a unit (500ms).
    #[arg(long, value_name = "SECONDS", value_parser = watch_delay)]
    pub watch_delay: Option<Duration>,

    /// Reload the app (worker by worker, without downtime) on this cron schedule: 5 fields
    /// (minute hour day month weekday) or 6 (seconds first), in the local time; 0 for none
    /// (pm2's --cron-restart, -c).
    #[arg(short = 'c', long, visible_alias = "cron", value_name = "PATTERN", value_parser = cron_arg)]
    pub cron_restart: Option<CronArg>,

    /// pm2's exec_mode when a file gives it (else pm2's rule chooses).
    #[arg(skip)]
    pub exec_mode: Option<ExecMode>,

    /// How restarts are counted: herd's, or pm2's for pm2 process files.
    #[arg(skip)]
    pub counting: Counting,

    /// Exit codes after which a worker is not restarted (pm2's stop_exit_codes).
    #[arg(skip)]
    pub stop_exit_codes: Vec<i32>,

    /// A variable raised by one per worker from the app's value (pm2's increment_var).
    #[arg(skip)]
    pub increment_var: Option<String>,

    /// How the command's first word is found (pm2's `script`, or an argv).
    #[arg(skip)]
    pub style: Style,

    /// The config file the app was read from, for messages.
    #[arg(skip)]
    pub source_file: Option<PathBuf>,
}

/// `--watch-delay`: seconds, as pm2's CLI reads it (`4`, `1.5`), or a
/// duration with its unit (`500ms`, `2s`).
pub fn watch_delay(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    match t.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=86_400.0).contains(&secs) => {
            Ok(Duration::from_secs_f64(secs))
        }
        Ok(_) => Err(format!(
            "invalid watch delay '{s}': use a number of seconds from 0 to 86400, or a duration such as 500ms"
        )),
        Err(_) => duration(t),
    }
}

/// A flag's list: split at commas, except inside a glob's braces
/// (`src,lib/{a,b}.js` is `src` and `lib/{a,b}.js`).
fn split_list(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.retain(|p| !p.is_empty());
    out
}

/// `--cron-restart PATTERN`, or `0` for none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronArg(pub Option<CronSpec>);

pub fn cron_arg(s: &str) -> Result<CronArg, String> {
    if s.trim() == "0" {
        return Ok(CronArg(None));
    }
    parsed::<CronSpec>(s).map(|c| CronArg(Some(c)))
}

/// Arguments given as one string and split as pm2 splits them, or given as
/// a list (a file's array: taken word for word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words(pub Vec<String>);

/// `--node-args "-r ./pre.js"` → `-r`, `./pre.js`.
pub fn words(s: &str) -> Result<Words, String> {
    Ok(Words(split_words(s)))
}

/// What only the daemon does with an app: its log files and memory limit.
#[derive(Args, Debug, Clone)]
pub struct DaemonOptions {
    /// Put the time before each log line (pm2's --time).
    #[arg(long)]
    pub time: bool,

    /// The time format for --time, in pm2's moment.js tokens (YYYY-MM-DD HH:mm:ss.SSS Z).
    #[arg(long, value_name = "FORMAT")]
    pub log_date_format: Option<String>,

    /// The stdout log file (default $HERD_HOME/logs/NAME-out.log); pm2's --output.
    #[arg(short = 'o', long, visible_alias = "output", value_name = "PATH")]
    pub out_file: Option<PathBuf>,

    /// The stderr log file (default $HERD_HOME/logs/NAME-error.log); pm2's --error.
    #[arg(short = 'e', long, visible_alias = "error", value_name = "PATH")]
    pub error_file: Option<PathBuf>,

    /// `json`: each log line as one JSON object {"message", "timestamp", "type", "process_id",
    /// "app_name", "instance"} (pm2's --log-type); `raw` (the default): as the app wrote it.
    #[arg(long, value_name = "raw|json", value_parser = log_type)]
    pub log_type: Option<LogType>,

    /// pm2's `log_file` from a config file (`-l/--log` on the command line).
    #[arg(skip)]
    pub log_file: Option<CombinedLog>,

    /// pm2's `merge_logs` from a config file: `false` gives each instance its own files.
    #[arg(skip)]
    pub merge_logs: Option<bool>,

    /// Rotate a log file when it grows past this size (10M, 1G; 0: never).
    #[arg(long, default_value = "10M", value_parser = size, value_name = "SIZE")]
    pub log_max_size: u64,

    /// Rotated log files to keep.
    #[arg(long, default_value_t = 5, value_parser = count::<u32>, value_name = "N")]
    pub log_keep: u32,

    /// Replace (zero-downtime) a worker whose memory stays above this size (200M, 1G).
    #[arg(long, value_parser = size, value_name = "SIZE")]
    pub max_memory_restart: Option<u64>,

    /// pm2 keys from a file that herd carries but does not honour yet.
    #[arg(skip)]
    pub pm2: herd_protocol::Pm2Keys,

    /// pm2's `namespace` from a config file (`--namespace` on the command line).
    #[arg(skip)]
    pub namespace: Option<String>,
}

impl DaemonOptions {
    pub fn defaults() -> DaemonOptions {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            daemon: DaemonOptions,
        }
        <Wrapper as clap::Parser>::try_parse_from(["herd"])
            .expect("the defaults parse")
            .daemon
    }
}

/// pm2's `log_file`: `true`, or a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CombinedLog {
    /// `$HERD_HOME/logs/<name>.log`.
    Default,
    /// A path as written (relative to the app's cwd).
    Path(PathBuf),
}

/// `--log-type raw|json`.
fn log_type(s: &str) -> Result<LogType, String> {
    match s {
        "raw" => Ok(LogType::Raw),
        "json" => Ok(LogType::Json),
        other => Err(format!("invalid log type '{other}': use raw or json")),
    }
}

/// A size in bytes: `200M`, `1G`, `512K`, `1.5G`, or a bare number of bytes.
pub fn size(s: &str) -> Result<u64, String> {
    config::parse_size(s).map_err(|e| e.0)
}

/// A count (`--max-restarts`, `--log-keep`, `--lines`): a whole number.
pub fn count<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("invalid count '{s}': use a whole number, such as 0, 5 or 16"))
}

/// A size that must be above zero, as a `usize`.
pub fn positive_size(s: &str) -> Result<usize, String> {
    match size(s)? {
        0 => Err(format!("invalid size '{s}': it must be above zero")),
        n => usize::try_from(n).map_err(|_| format!("invalid size '{s}': too large")),
    }
}

/// One app as the daemon will keep it (`herd start` and config files: one
/// instance unless told otherwise, pm2's exec mode rule); warnings are
/// printed on stderr.
pub fn app_def(
    app: &AppOptions,
    daemon: &DaemonOptions,
    command: &[String],
    base: &Path,
) -> Result<herd_protocol::AppDef, UsageError> {
    let (def, warnings) = app_def_noting(app, daemon, command, base)?;
    print_warnings(app, &def.spec.name, &warnings);
    Ok(def)
}

/// [`app_def`], its warnings returned.
pub fn app_def_noting(
    app: &AppOptions,
    daemon: &DaemonOptions,
    command: &[String],
    base: &Path,
) -> Result<(herd_protocol::AppDef, Vec<String>), UsageError> {
    let Built {
        mut spec,
        script,
        warnings,
    } = app.build(command, base, app.style, Instances::Count(1))?;
    // The workers get the environment of the CLI that started them (as under
    // pm2: `PORT=8000 herd start app.js` works) but what `filter_env` keeps
    // out, plus --env; it is saved with the app.
    let mut env: Vec<(String, String)> = cli_env(daemon.pm2.filter_env.as_ref())
        .into_iter()
        .filter(|(k, _)| !spec.env.iter().any(|(ours, _)| ours == k))
        .collect();
    env.append(&mut spec.env);
    spec.env = env.into();
    spec.inherit_env = false;
    if spec.cwd.is_none() {
        spec.cwd = Some(base.to_path_buf());
    }
    // Log paths, as pm2 takes them: `~` expanded, relative to the app's cwd,
    // `NULL` is /dev/null.
    let cwd = spec.cwd.clone().unwrap_or_else(|| base.to_path_buf());
    let log_path = |p: &Option<PathBuf>| -> Result<Option<PathBuf>, UsageError> {
        p.as_ref().map(|p| resolve_path(&cwd, p)).transpose()
    };
    let pm2 = daemon.pm2.clone();
    let log_file = match &daemon.log_file {
        None => None,
        Some(CombinedLog::Path(p)) => Some(resolve_path(&cwd, p)?),
        Some(CombinedLog::Default) => Some(default_combined_log(&spec.name)?),
    };
    let mut def = herd_protocol::AppDef {
        spec,
        logs: herd_protocol::LogSettings {
            out_file: log_path(&daemon.out_file)?,
            error_file: log_path(&daemon.error_file)?,
            log_file,
            merge_logs: daemon.merge_logs.unwrap_or(true),
            log_type: daemon.log_type.unwrap_or_default(),
            time: daemon.time || daemon.log_date_format.is_some(),
            date_format: daemon.log_date_format.clone(),
            max_size: daemon.log_max_size,
            keep: daemon.log_keep,
        },
        max_memory_restart: daemon.max_memory_restart,
        instances_max: app.instances == Some(Instances::Max),
        pm2,
        script,
        namespace: daemon.namespace.clone(),
    };
    for p in [
        def.logs.out_file.clone(),
        def.logs.error_file.clone(),
        def.logs.log_file.clone(),
    ]
    .into_iter()
    .flatten()
    {
        unwatch_log(&mut def, &p);
    }
    Ok((def, warnings))
}

/// The CLI's environment as an app gets it: without the variables herd sets
/// for each worker, and without those `filter_env` keeps from the app (pm2's
/// rules: a list drops every variable whose name contains one of its
/// strings, a string drops that variable). `filter_env: true` gives a clean
/// environment, as systemd gives a service: only `PATH`, `HOME`, `USER`,
/// `LOGNAME`, `SHELL`, `LANG` and `LC_*` (pm2 documents `true` and does
/// nothing for it).
pub fn cli_env(filter: Option<&FilterEnv>) -> Vec<(String, String)> {
    filtered_env(std::env::vars(), filter)
}

/// [`cli_env`] of the variables `vars`.
fn filtered_env(
    vars: impl Iterator<Item = (String, String)>,
    filter: Option<&FilterEnv>,
) -> Vec<(String, String)> {
    const CLEAN: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG"];
    let keeps = |k: &str| match filter {
        None => true,
        Some(FilterEnv::All) => CLEAN.contains(&k) || k.starts_with("LC_"),
        Some(FilterEnv::Exact(name)) => k != name,
        Some(FilterEnv::Containing(parts)) => !parts.iter().any(|p| k.contains(p.as_str())),
    };
    vars.filter(|(k, _)| !herd_engine::is_worker_variable(k) && keeps(k))
        .collect()
}

/// pm2's combined log by default (`log_file: true`, `-l` without a path):
/// `$HERD_HOME/logs/<name>.log`, the name in its file-safe form.
pub fn default_combined_log(name: &str) -> Result<PathBuf, UsageError> {
    let home = herd_daemon::Home::location().map_err(|e| UsageError(e.to_string()))?;
    Ok(home
        .join(herd_daemon::home::LOGS)
        .join(format!("{}.log", herd_engine::config::log_file_stem(name))))
}

/// The app writes its log to `path`: with `watch`, that is no change of the
/// app (pm2 restarts an app whose log is in its watched folder on every line
/// it logs, unless told to ignore it).
pub fn unwatch_log(def: &mut herd_protocol::AppDef, path: &Path) {
    if let Some(watch) = &mut def.spec.watch {
        if path != Path::new("/dev/null") && !watch.exclude.iter().any(|p| p == path) {
            watch.exclude.push(path.to_path_buf());
        }
    }
}

/// A path the user wrote, absolute: `~` expanded, relative to `cwd`; pm2's
/// `NULL` is `/dev/null`.
pub fn resolve_path(cwd: &Path, path: &Path) -> Result<PathBuf, UsageError> {
    if path == Path::new("NULL") {
        return Ok(PathBuf::from("/dev/null"));
    }
    let text = path.to_string_lossy();
    let expanded = expand_home(&text).map_err(UsageError)?;
    Ok(clean(&cwd.join(expanded)))
}

fn print_warnings(app: &AppOptions, name: &str, warnings: &[String]) {
    for w in warnings {
        match &app.source_file {
            Some(file) => eprintln!("herd: warning: {}: app '{name}': {w}", file.display()),
            None => eprintln!("herd: warning: {w}"),
        }
    }
}

/// pm2's exec mode for an app (`lib/Common.js: determineExecMode`): the one
/// given; else cluster when the instance count was given (≥ 1, 0 or -1) and
/// node or bun runs the script; else fork. herd adds: an app that takes
/// herd's own sockets (`--listen`, a balance mode) shares them: cluster.
pub fn exec_mode_for(
    given: Option<ExecMode>,
    instances: Option<Instances>,
    interpreter: &str,
    herd_sockets: bool,
) -> ExecMode {
    if let Some(mode) = given {
        return mode;
    }
    if herd_sockets {
        return ExecMode::Cluster;
    }
    let counted = matches!(
        instances,
        Some(Instances::Max | Instances::Count(_) | Instances::AllBut(1))
    );
    if counted && launch::clusters_by_default(interpreter) {
        ExecMode::Cluster
    } else {
        ExecMode::Fork
    }
}

impl AppOptions {
    /// The profiles named with `--env PROFILE`.
    pub fn profiles(&self) -> Vec<String> {
        self.env
            .iter()
            .filter_map(|e| match e {
                EnvArg::Profile(p) => Some(p.clone()),
                EnvArg::Var(..) => None,
            })
            .collect()
    }

    /// Every option at its default, as if none was given.
    pub fn defaults() -> AppOptions {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            app: AppOptions,
        }
        <Wrapper as clap::Parser>::try_parse_from(["herd"])
            .expect("the defaults parse")
            .app
    }

    /// The interpreter's arguments, every `--node-args` (or the file's list) in order.
    pub fn interpreter_args(&self) -> Vec<String> {
        self.interpreter_args
            .iter()
            .flat_map(|w| w.0.iter().cloned())
            .collect()
    }

    /// Check everything and build the app for `herd run`'s `command` (program,
    /// then its arguments; every usable CPU unless told otherwise); nothing has
    /// started yet. Relative paths are taken from `base` (the current
    /// directory). Warnings are printed on stderr.
    pub fn to_spec(&self, command: &[String], base: &Path) -> Result<AppSpec, UsageError> {
        let Built { spec, warnings, .. } =
            self.build(command, base, Style::Argv, Instances::Max)?;
        print_warnings(self, &spec.name, &warnings);
        Ok(spec)
    }

    /// The app for `command` (a script or program, then its arguments):
    /// `style` says how its first word is found, `instances` is the count
    /// when none is given.
    pub fn build(
        &self,
        command: &[String],
        base: &Path,
        style: Style,
        instances: Instances,
    ) -> Result<Built, UsageError> {
        let Some(program) = command.first() else {
            return Err(UsageError("give the command to run".into()));
        };
        let cwd = self
            .cwd
            .as_ref()
            .map(|c| resolve_path(base, c))
            .transpose()?;
        if let Some(dir) = &cwd {
            if !dir.is_dir() {
                return Err(UsageError(format!(
                    "cwd {}: no such directory; create it or give another",
                    dir.display()
                )));
            }
        }
        let interpreter = self
            .interpreter
            .as_deref()
            .map(|i| if i.is_empty() { "none" } else { i });
        let interpreter_args = self.interpreter_args();
        let launch = launch::resolve(
            &launch::Request {
                script: program,
                args: &command[1..],
                interpreter,
                interpreter_args: &interpreter_args,
                cwd: cwd.as_deref().unwrap_or(base),
                style,
                config_file: self.source_file.as_deref(),
            },
            &launch::System,
        )
        .map_err(UsageError)?;
        let name = self.name.clone().unwrap_or_else(|| launch.name.clone());
        config::check_app_name(&name).map_err(|e| {
            UsageError(if self.name.is_none() {
                format!("{e} (the name comes from the script: give one with --name, or `name` in a file)")
            } else {
                e.0
            })
        })?;
        let mut spec = AppSpec::new(name, launch.program.clone());
        spec.args = launch.args.clone();
        spec.kind = launch.kind;
        spec.cwd = cwd;
        spec.env = Default::default();
        for (k, v) in &launch.env {
            spec.env.push((k.clone(), v.clone()));
        }
        for e in &self.env {
            match e {
                EnvArg::Var(k, v) => {
                    spec.env.retain(|(ours, _)| ours != k);
                    spec.env.push((k.clone(), v.clone()));
                }
                EnvArg::Profile(p) => {
                    return Err(UsageError(format!(
                        "--env {p}: a bare name picks a config file's env_{p} profile, and this app comes from no config file; use --env NAME=VALUE"
                    )))
                }
            }
        }
        spec.instance_var = self.instance_var.clone();
        spec.increment_var = self.increment_var.clone();
        spec.instances = self.instances.unwrap_or(instances).resolve();
        spec.listeners = self.listen.clone();
        spec.balance = balance_for(
            self.balance,
            std::env::var("NODE_CLUSTER_SCHED_POLICY").ok(),
        )?;
        if spec.balance == Balance::RoundRobin
            && launch.kind == WorkerKind::Generic
            && spec.listeners.is_empty()
        {
            return Err(UsageError(
                "--balance round-robin needs a --listen socket for herd to accept on (Node apps ask for theirs)".into(),
            ));
        }
        let herd_sockets = !spec.listeners.is_empty() || self.balance.is_some();
        spec.exec_mode = exec_mode_for(
            self.exec_mode,
            self.instances.or(match style {
                // `herd run` always counts its workers.
                Style::Argv => Some(instances),
                Style::Script => None,
            }),
            // `node server.js` runs node itself (interpreter "none"): a Node
            // app all the same, clustered as one run by its script.
            if launch.kind == WorkerKind::Node {
                "node"
            } else {
                &launch.interpreter
            },
            herd_sockets,
        );
        // pm2 counting waits `restart_delay` every time: no doubling to cap.
        if self.counting == Counting::Herd && self.max_restart_delay < self.restart_delay {
            return Err(UsageError(format!(
                "--max-restart-delay ({}) is shorter than --restart-delay ({}): make it at least as long",
                herd_engine::describe::duration(self.max_restart_delay),
                herd_engine::describe::duration(self.restart_delay)
            )));
        }
        spec.restart = RestartPolicy {
            mode: self.restart,
            counting: self.counting,
            restart_delay: self.restart_delay,
            max_restart_delay: self.max_restart_delay,
            min_uptime: self.min_uptime,
            max_restarts: self.max_restarts,
            stop_exit_codes: self.stop_exit_codes.clone(),
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
        spec.watch = self.watch_spec(spec.cwd.as_deref().unwrap_or(base))?;
        spec.cron_restart = self.cron_restart.clone().and_then(|c| c.0);
        let mut warnings = launch.warnings;
        if spec.watch.is_none() && self.source_file.is_none() {
            if !self.ignore_watch.is_empty() {
                warnings.push("--ignore-watch does nothing without --watch".into());
            }
            if self.watch_delay.is_some() {
                warnings.push("--watch-delay does nothing without --watch".into());
            }
        }
        Ok(Built {
            spec,
            script: launch.script,
            warnings,
        })
    }

    /// What `--watch` (or a file's `watch`) asks for, its paths checked and
    /// made absolute from the app's folder `cwd` (globs are kept as written:
    /// the engine takes them from the same folder).
    fn watch_spec(&self, cwd: &Path) -> Result<Option<WatchSpec>, UsageError> {
        let Some(paths) = &self.watch else {
            return Ok(None);
        };
        let file = self.source_file.is_some();
        let (key, ignore_key) = if file {
            ("watch", "ignore_watch")
        } else {
            ("--watch", "--ignore-watch")
        };
        let mut spec = WatchSpec {
            delay: self.watch_delay.unwrap_or_default(),
            ..WatchSpec::default()
        };
        // A file's list is taken as written; a flag's value may hold several
        // (comma-separated, as in `--watch=src,lib`).
        let paths: Vec<&str> = if file {
            paths.iter().map(|p| p.trim()).collect()
        } else {
            paths.iter().flat_map(|p| split_list(p)).collect()
        };
        for path in paths.into_iter().filter(|p| !p.is_empty()) {
            let expanded = expand_home(path).map_err(|e| UsageError(format!("{key}: {e}")))?;
            if config::is_glob(&expanded.to_string_lossy()) {
                spec.paths.push(expanded);
                continue;
            }
            let absolute = clean(&cwd.join(&expanded));
            if !absolute.exists() {
                return Err(UsageError(format!(
                    "{key} {path}: no such file or folder ({} does not exist; relative paths are from the app's folder {}): create it, or fix the path",
                    absolute.display(),
                    cwd.display()
                )));
            }
            spec.paths.push(absolute);
        }
        if !self.ignore_watch.is_empty() {
            let patterns: Vec<String> = self
                .ignore_watch
                .iter()
                .flat_map(|p| {
                    // pm2 users write `--ignore-watch="node_modules logs"`.
                    if file {
                        vec![p.clone()]
                    } else {
                        split_list(p)
                            .into_iter()
                            .flat_map(str::split_whitespace)
                            .map(str::to_string)
                            .collect()
                    }
                })
                .collect();
            for p in &patterns {
                config::check_ignore_glob(p)
                    .map_err(|e| UsageError(format!("{ignore_key}: {e}")))?;
            }
            spec.ignore = Some(patterns);
        }
        spec.check()
            .map_err(|e| UsageError(format!("{key}: {e}")))?;
        Ok(Some(spec))
    }
}

/// An app built from its options: what [`AppOptions::build`] gives.
pub struct Built {
    pub spec: AppSpec,
    /// The script an interpreter runs (pm2's `pm_exec_path`), if any.
    pub script: Option<PathBuf>,
    pub warnings: Vec<String>,
}

/// `path` without its `.` components (`/srv/app/./server.js` → `/srv/app/server.js`).
fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != std::path::Component::CurDir)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("200M").unwrap(), 200 << 20);
        assert_eq!(size("1G").unwrap(), 1 << 30);
        assert_eq!(size("512k").unwrap(), 512 << 10);
        assert_eq!(size("1.5G").unwrap(), 3 << 29);
        assert_eq!(size("1000").unwrap(), 1000);
        for bad in ["", "M", "12X", "-1M"] {
            assert!(size(bad).is_err(), "{bad}");
        }
        assert!(positive_size("0").is_err());
    }

    #[test]
    fn filter_env_keeps_the_clis_variables_from_the_app_as_pm2_reads_it() {
        let vars = || {
            [
                ("PATH", "/bin"),
                ("HOME", "/root"),
                ("LC_ALL", "C"),
                ("SECRET_TOKEN", "x"),
                ("AWS_SECRET", "y"),
                ("DB_URL", "z"),
                ("HERD_WORKER_ID", "3"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
        };
        let names = |filter: Option<FilterEnv>| -> Vec<String> {
            filtered_env(vars(), filter.as_ref())
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        let all = [
            "PATH",
            "HOME",
            "LC_ALL",
            "SECRET_TOKEN",
            "AWS_SECRET",
            "DB_URL",
        ];
        assert_eq!(names(None), all, "herd's own variables never pass");
        assert_eq!(
            names(Some(FilterEnv::Containing(vec!["SECRET".into()]))),
            ["PATH", "HOME", "LC_ALL", "DB_URL"]
        );
        assert_eq!(
            names(Some(FilterEnv::Exact("DB_URL".into()))),
            ["PATH", "HOME", "LC_ALL", "SECRET_TOKEN", "AWS_SECRET"]
        );
        // A string drops that exact name only.
        assert_eq!(names(Some(FilterEnv::Exact("SECRET".into()))), all);
        assert_eq!(names(Some(FilterEnv::All)), ["PATH", "HOME", "LC_ALL"]);
    }

    #[test]
    fn exec_mode_by_pm2s_rule() {
        use ExecMode::*;
        use Instances::*;
        // (given, instances, interpreter, herd's sockets, mode)
        let table = [
            (None, None, "node", false, Fork),
            (None, Some(Count(1)), "node", false, Cluster),
            (None, Some(Count(4)), "/usr/bin/node", false, Cluster),
            (None, Some(Max), "node", false, Cluster),
            (None, Some(AllBut(1)), "node", false, Cluster),
            // pm2: -2 stays fork.
            (None, Some(AllBut(2)), "node", false, Fork),
            (None, Some(Count(2)), "bun", false, Cluster),
            (None, Some(Count(2)), "python3", false, Fork),
            (None, Some(Count(2)), "none", false, Fork),
            (None, None, "none", true, Cluster),
            (Some(Fork), Some(Count(4)), "node", false, Fork),
            (Some(Fork), None, "none", true, Fork),
            (Some(Cluster), None, "python3", false, Cluster),
        ];
        for (given, instances, interp, sockets, mode) in table {
            assert_eq!(
                exec_mode_for(given, instances, interp, sockets),
                mode,
                "{given:?} {instances:?} {interp} {sockets}"
            );
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        app: AppOptions,
    }

    /// Regression: pm2's own long names for the log files, `--output` and
    /// `--error` (`pm2 start app.js --output out.log`), were refused as
    /// unknown options.
    #[test]
    fn regression_pm2_output_and_error_flags_were_refused() {
        #[derive(clap::Parser)]
        struct D {
            #[command(flatten)]
            daemon: DaemonOptions,
        }
        let d = <D as clap::Parser>::try_parse_from(["herd", "--output", "o.log", "--error=e.log"])
            .unwrap()
            .daemon;
        assert_eq!(d.out_file.as_deref(), Some(Path::new("o.log")));
        assert_eq!(d.error_file.as_deref(), Some(Path::new("e.log")));
    }

    fn cli(args: &[&str]) -> AppOptions {
        <Cli as clap::Parser>::try_parse_from(std::iter::once("herd").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .app
    }

    #[test]
    fn node_args_from_the_command_line_split_as_in_files() {
        // (flags, interpreter args)
        let table: &[(&[&str], &[&str])] = &[
            (&["--node-args=-r ./pre.js"], &["-r", "./pre.js"]),
            (
                &["--node-args", "--max-old-space-size=512"],
                &["--max-old-space-size=512"],
            ),
            (
                &[
                    "--interpreter-args",
                    "-r dotenv/config",
                    "--node-args=--inspect",
                ],
                &["-r", "dotenv/config", "--inspect"],
            ),
            (
                &[r#"--node-args=--title="my app" 'x y'"#],
                &[r#"--title="my app""#, "x y"],
            ),
        ];
        for (flags, want) in table {
            assert_eq!(cli(flags).interpreter_args(), *want, "{flags:?}");
        }
    }

    #[test]
    fn regression_issue15_instances_flag_takes_what_its_error_says() {
        assert_eq!(cli(&["-i", "-1"]).instances, Some(Instances::AllBut(1)));
        assert_eq!(cli(&["-i", "0"]).instances, Some(Instances::Max));
        assert_eq!(cli(&["-i", "max"]).instances, Some(Instances::Max));
        assert_eq!(cli(&["--instances=4"]).instances, Some(Instances::Count(4)));
        let err = <Cli as clap::Parser>::try_parse_from(["herd", "-i", "4097"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("use a number from 1 to 4096, 'max' or 0"),
            "{err}"
        );
    }

    #[test]
    fn watch_and_cron_flags_as_pm2_takes_them() {
        assert_eq!(cli(&[]).watch, None);
        assert_eq!(cli(&["--watch"]).watch, Some(vec![]));
        assert_eq!(
            split_list("src, lib/{a,b}.js,,x"),
            ["src", "lib/{a,b}.js", "x"]
        );
        assert_eq!(
            cli(&["--watch", "src", "--watch", "lib", "-i", "2"]).watch,
            Some(vec!["src".to_string(), "lib".to_string()])
        );
        // pm2's --watch-delay is in seconds; a unit is taken too.
        assert_eq!(
            cli(&["--watch-delay", "4"]).watch_delay,
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            cli(&["--watch-delay", "1.5"]).watch_delay,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            cli(&["--watch-delay", "500ms"]).watch_delay,
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            cli(&[
                "--ignore-watch",
                "node_modules,*.log",
                "--ignore-watch=logs"
            ])
            .ignore_watch,
            ["node_modules,*.log", "logs"]
        );
        let every_night = CronArg(Some("0 3 * * *".parse().unwrap()));
        assert_eq!(
            cli(&["-c", "0 3 * * *"]).cron_restart,
            Some(every_night.clone())
        );
        assert_eq!(
            cli(&["--cron", "0 3 * * *"]).cron_restart,
            Some(every_night.clone())
        );
        assert_eq!(
            cli(&["--cron-restart", "0 3 * * *"]).cron_restart,
            Some(every_night)
        );
        assert_eq!(
            cli(&["--cron-restart", "0"]).cron_restart,
            Some(CronArg(None))
        );
        // (flags, what the error says)
        for (flags, says) in [
            (
                &["--cron-restart", "61 * * * *"][..],
                "invalid cron pattern '61 * * * *'",
            ),
            (&["-c", "* *"], "it has 2 field(s)"),
            (&["--watch-delay", "soon"], "invalid duration 'soon'"),
            (&["--watch-delay=-1"], "invalid watch delay '-1'"),
        ] {
            let err = <Cli as clap::Parser>::try_parse_from(
                std::iter::once("herd").chain(flags.iter().copied()),
            )
            .err()
            .unwrap_or_else(|| panic!("{flags:?} parsed"))
            .to_string();
            assert!(err.contains(says), "{flags:?}: {err}");
        }
    }

    #[test]
    fn watch_paths_are_checked_and_made_absolute_from_the_apps_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let base = dir.path();
        let command = ["/bin/true".to_string()];
        let build = |flags: &[&str]| {
            cli(flags)
                .build(&command, base, Style::Argv, Instances::Count(1))
                .map(|b| b.spec)
        };
        let spec = build(&[
            "--watch=src,lib/**/*.{ts,tsx}",
            "--ignore-watch",
            "tmp *.log,{a,b}",
            "--watch-delay",
            "2",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let watch = spec.watch.unwrap();
        assert_eq!(
            watch.paths,
            [base.join("src"), PathBuf::from("lib/**/*.{ts,tsx}")]
        );
        assert_eq!(
            watch.ignore,
            Some(vec!["tmp".into(), "*.log".into(), "{a,b}".into()])
        );
        assert_eq!(watch.delay, Duration::from_secs(2));
        // (flags, what the error says)
        for (flags, says) in [
            (
                &["--watch=nowhere"][..],
                "--watch nowhere: no such file or folder",
            ),
            (
                &["--watch", "--ignore-watch=[a-"],
                "--ignore-watch: invalid ignore_watch pattern '[a-'",
            ),
            (
                &["--watch=src/{a,b"],
                "--watch: invalid watch pattern 'src/{a,b'",
            ),
        ] {
            let err = build(flags)
                .err()
                .unwrap_or_else(|| panic!("{flags:?} built"))
                .0;
            assert!(err.contains(says), "{flags:?}: {err}");
        }
        // Without --watch, its companions are named as doing nothing.
        let built = cli(&["--ignore-watch=x"])
            .build(&command, base, Style::Argv, Instances::Count(1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            built.warnings,
            ["--ignore-watch does nothing without --watch"]
        );
    }

    #[test]
    fn defaults_match_the_command_line() {
        let d = AppOptions::defaults();
        assert_eq!(d.instances, None);
        assert_eq!(d.kill_timeout, Duration::from_millis(1600));
        assert_eq!(DaemonOptions::defaults().log_max_size, 10 << 20);
    }
}
