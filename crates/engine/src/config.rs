//! What an app is: the typed, validated description of one supervised program
//! (command, listeners, instance count, and the restart, readiness and stop
//! policies), plus the small parsers that turn user text into those types.
//!
//! Everything here is plain data: parsing never touches the OS, so a bad value
//! is rejected before any socket is bound or any worker is started. An app's
//! environment ([`Env`]) is shared between the clones of its spec until one
//! of them changes it.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

mod triggers;
pub(crate) use triggers::glob;
pub use triggers::{check_ignore_glob, is_glob, CronSpec, WatchSpec};

/// A value a user wrote that herd cannot accept. The message names the value
/// and says what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// How client connections are spread over the workers of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Every worker inherits the same listening socket and accepts from one queue.
    #[default]
    Shared,
    /// One `SO_REUSEPORT` socket per worker slot; the kernel hashes connections over them.
    ReusePort,
    /// herd accepts each connection and hands it to the least-loaded ready worker.
    RoundRobin,
}

impl FromStr for Balance {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "shared" | "none" => Ok(Balance::Shared),
            "reuseport" | "reuse-port" => Ok(Balance::ReusePort),
            "round-robin" | "rr" => Ok(Balance::RoundRobin),
            _ => Err(bad(format!(
                "unknown balance mode '{s}': use shared, reuseport or round-robin"
            ))),
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::Shared => "shared",
            Balance::ReusePort => "reuseport",
            Balance::RoundRobin => "round-robin",
        })
    }
}

/// When a worker that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl FromStr for RestartMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "always" => Ok(RestartMode::Always),
            "on-failure" => Ok(RestartMode::OnFailure),
            "never" | "no" => Ok(RestartMode::Never),
            _ => Err(bad(format!(
                "unknown restart mode '{s}': use always, on-failure or never"
            ))),
        }
    }
}

/// How many workers to run, as pm2 reads `instances` and `-i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Instances {
    /// As many as the CPUs this process may use (affinity and cgroup quota):
    /// `max`, or `0` as pm2 reads it.
    #[default]
    Max,
    Count(usize),
    /// All usable CPUs but this many, at least one: pm2's `-1` (CPUs − 1).
    AllBut(usize),
}

/// The most workers one app may ask for.
pub const MAX_INSTANCES: usize = 4096;

impl FromStr for Instances {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let err = || {
            bad(format!(
                "invalid instance count '{s}': use a number from 1 to {MAX_INSTANCES}, 'max' or 0 for one per usable CPU, or -N for all usable CPUs but N (as pm2 reads it)"
            ))
        };
        let t = s.trim();
        if t == "max" {
            return Ok(Instances::Max);
        }
        let n: i64 = t.parse().map_err(|_| err())?;
        match n {
            0 => Ok(Instances::Max),
            n if n > 0 && n as usize <= MAX_INSTANCES => Ok(Instances::Count(n as usize)),
            n if n < 0 && n.unsigned_abs() as usize <= MAX_INSTANCES => {
                Ok(Instances::AllBut(n.unsigned_abs() as usize))
            }
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Instances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instances::Max => f.write_str("max"),
            Instances::Count(n) => write!(f, "{n}"),
            Instances::AllBut(n) => write!(f, "-{n}"),
        }
    }
}

impl Instances {
    /// The concrete count on this machine.
    pub fn resolve(self) -> usize {
        self.resolve_with(crate::cpus::usable_cpus())
    }

    /// The concrete count with `cpus` usable CPUs (pm2: `n < 0` means
    /// `cpus + n`, and never fewer than one).
    pub fn resolve_with(self, cpus: usize) -> usize {
        match self {
            Instances::Max => cpus.max(1),
            Instances::Count(n) => n,
            Instances::AllBut(n) => cpus.saturating_sub(n).max(1),
        }
    }
}

/// How pm2 runs an app's instances (its `exec_mode`): herd keeps the mode an
/// app was given or that pm2's rules choose, shows it, and reports it in pm2's
/// JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecMode {
    /// The instances share the app's listening sockets: herd is their Node
    /// cluster primary, or hands them its own sockets (`--listen`).
    /// The default of a definition saved before the mode was kept: herd ran
    /// every app that way.
    #[default]
    Cluster,
    /// Each instance is a plain process that binds its own sockets (and may
    /// cluster itself).
    Fork,
}

impl FromStr for ExecMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "cluster" | "cluster_mode" => Ok(ExecMode::Cluster),
            "fork" | "fork_mode" => Ok(ExecMode::Fork),
            _ => Err(bad(format!(
                "unknown exec_mode '{s}': use cluster or fork (or pm2's cluster_mode, fork_mode)"
            ))),
        }
    }
}

impl fmt::Display for ExecMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecMode::Cluster => "cluster",
            ExecMode::Fork => "fork",
        })
    }
}

impl ExecMode {
    /// pm2's spelling, as `pm2 jlist` shows it: `cluster_mode`, `fork_mode`.
    pub fn pm2_name(self) -> &'static str {
        match self {
            ExecMode::Cluster => "cluster_mode",
            ExecMode::Fork => "fork_mode",
        }
    }
}

/// The longest app name, in characters: with pm2's log suffixes
/// (`-error.log.NN`), a file name derived from it stays under 255 bytes.
pub const MAX_APP_NAME: usize = 200;

/// Can `name` name an app? pm2 takes any string; herd takes any that a
/// terminal shows on one line, except `all` and numbers, which select apps
/// by id. Log files are named by [`log_file_stem`], never by the name itself.
pub fn check_app_name(name: &str) -> Result<(), ConfigError> {
    if name.trim().is_empty() {
        return Err(bad(format!(
            "invalid app name '{name}': it is empty; give the app a name"
        )));
    }
    if name.chars().count() > MAX_APP_NAME {
        return Err(bad(format!(
            "invalid app name '{name}': longer than {MAX_APP_NAME} characters; give it a shorter name"
        )));
    }
    if name == "all" || name.parse::<u64>().is_ok() {
        return Err(bad(format!(
            "invalid app name '{name}': 'all' and numbers select apps by id; choose another name"
        )));
    }
    if name.chars().any(char::is_control) {
        // Escaped, a control character takes up to 10 characters: only the
        // start of such a name is shown, so the message stays readable.
        let escaped = format!("{name:?}");
        let shown = if escaped.chars().count() > 64 {
            format!("{}…\"", escaped.chars().take(56).collect::<String>())
        } else {
            escaped
        };
        return Err(bad(format!(
            "invalid app name {shown}: it holds a control character (a newline, a tab …); use printable characters"
        )));
    }
    if name.contains(':') {
        // `herd restart api:1` names worker 1 of `api`: an app named
        // `api:1` (or `a:b`) could never be addressed.
        return Err(bad(format!(
            "invalid app name '{name}': ':' separates an app from a worker (APP:N); choose a name without ':'"
        )));
    }
    Ok(())
}

/// The part of a log file's name that comes from the app's name, by pm2's
/// rule: every character outside `[A-Za-z0-9.-]` becomes `-` (`my_app x` →
/// `my-app-x`; pm2 also keeps `\\`, herd does not). With no `/` left, a file
/// named `<stem>-out.log` stays in the log directory whatever the name.
pub fn log_file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Where a listener is bound.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad(
                    "invalid listen address 'unix:': give a socket path, as in unix:/run/app.sock",
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        // A bare port means every IPv4 interface, as `server.listen(8000)` does.
        if let Ok(port) = s.parse::<u16>() {
            return Ok(ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port))));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(addr));
        }
        let hint =
            "use HOST:PORT (127.0.0.1:8000, [::1]:8000, localhost:8000), a bare PORT, or unix:PATH";
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("invalid listen address '{s}': {hint}")))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad(format!("invalid listen address '{s}': {hint}")));
        }
        // Resolve names such as `localhost` once, now; prefer IPv4 like Node does.
        let addrs: Vec<SocketAddr> = s
            .to_socket_addrs()
            .map_err(|e| bad(format!("cannot resolve listen address '{s}': {e}")))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .map(|a| ListenAddr::Tcp(*a))
            .ok_or_else(|| bad(format!("listen address '{s}' resolves to nothing: {hint}")))
    }
}

/// One `--listen [NAME=]ADDR`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenSpec {
    /// The name given to the worker in `LISTEN_FDNAMES`.
    pub name: String,
    pub addr: ListenAddr,
}

impl FromStr for ListenSpec {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let (name, addr) = match s.split_once('=') {
            Some((name, addr)) => {
                let valid = !name.is_empty()
                    && name.len() <= 255
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !valid {
                    return Err(bad(format!(
                        "invalid listener name '{name}' in '{s}': use letters, digits, '-', '_' or '.'"
                    )));
                }
                (Some(name.to_string()), addr)
            }
            None => (None, s),
        };
        let addr: ListenAddr = addr.parse()?;
        // systemd's default name for an unnamed socket.
        let name = name.unwrap_or_else(|| "unknown".to_string());
        Ok(ListenSpec { name, addr })
    }
}

/// Parse a duration: `12s`, `500ms`, `2m`, `1.5s`, or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let err = || {
        bad(format!(
            "invalid duration '{s}': use a number of milliseconds, or a number with ms, s, m or h (500ms, 12s)"
        ))
    };
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let ms_per_unit = match unit.trim() {
        "" | "ms" => 1.0,
        "s" | "sec" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return Err(err()),
    };
    let ms = value * ms_per_unit;
    if !ms.is_finite() || ms > 1e12 {
        return Err(err());
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

/// Parse a size in bytes: `1MiB`, `512KiB`, `2M`, `64k`, or a bare number of
/// bytes. K/M/G are binary (1024-based), as in `ulimit`.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let err = || {
        bad(format!(
            "invalid size '{s}': use a number of bytes, or a number with K, M or G (512K, 200M, 1.5G)"
        ))
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| err())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(err()),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !(0.0..=1e18).contains(&bytes) {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// Parse a signal name: `SIGINT`, `INT`, `int`, or a number.
pub fn parse_signal(s: &str) -> Result<Signal, ConfigError> {
    let err = || {
        bad(format!(
            "unknown signal '{s}': use a name such as SIGINT, SIGTERM, SIGQUIT, SIGUSR2, or a number"
        ))
    };
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| err());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let sig = Signal::from_str(&name).map_err(|_| err())?;
    if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
        return Err(bad(format!(
            "{s} cannot be the graceful stop signal: it cannot be caught, so the worker could not drain; herd sends SIGKILL itself after --kill-timeout"
        )));
    }
    Ok(sig)
}

/// When a worker that exited is started again, and how fast.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    /// How exits are counted and delayed: herd's way, or pm2's (pm2 process
    /// files).
    pub counting: Counting,
    /// herd: the delay before the first restart of a worker that died young;
    /// it doubles with each further young exit. pm2: the fixed delay before
    /// every automatic restart (pm2's `restart_delay`, default 0).
    #[serde(with = "duration_text")]
    pub restart_delay: Duration,
    /// herd: the cap on that doubling (pm2 counting does not use it).
    #[serde(with = "duration_text")]
    pub max_restart_delay: Duration,
    /// A worker that ran less than this died young (an unstable exit).
    #[serde(with = "duration_text")]
    pub min_uptime: Duration,
    /// herd: more crashes of young workers in a row than this put the slot
    /// into `errored`. pm2: that many unstable restarts within
    /// `min_uptime × max_restarts` of the slot's start do.
    pub max_restarts: u32,
    /// A worker that exits with one of these codes is not restarted,
    /// whatever the mode (pm2's `stop_exit_codes`). A death by a signal is
    /// never one of them.
    pub stop_exit_codes: Vec<i32>,
}

/// How a slot's exits are counted and delayed: a typed choice, set by the
/// config loader (pm2 process files get [`Counting::Pm2`]; `herd run`,
/// `herd start` and `herd.toml` get [`Counting::Herd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counting {
    /// herd's own: a worker that lived at least `min_uptime` is replaced at
    /// once and resets its slot; one that died young waits `restart_delay`,
    /// doubled per young exit in a row up to `max_restart_delay`. Only a
    /// crash counts toward `max_restarts` (an exit code or a fault signal; a
    /// kill from outside — SIGKILL, SIGTERM, SIGINT, SIGHUP — does not), and
    /// the backoff never leaves the app empty: while no worker of the app
    /// is running, a slot whose worker was killed starts at once (at most one
    /// such start per `restart_delay`).
    #[default]
    Herd,
    /// pm2's (`lib/God.js: handleExit`): `restart_delay` before every
    /// automatic restart, or `exp_backoff_restart_delay`; an exit is unstable
    /// when the worker ran less than `min_uptime` and the slot started less
    /// than `min_uptime × max_restarts` ago; `max_restarts` unstable exits
    /// make the slot errored. A reload, or a restart of one worker, starts
    /// the counting over (pm2's `resetState`).
    Pm2(Pm2Delay),
}

/// pm2's delay before an automatic restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pm2Delay {
    /// `restart_delay` every time (0: at once).
    #[default]
    Fixed,
    /// `exp_backoff_restart_delay`: this delay, then ×1.5 per restart
    /// (rounded down to the millisecond) up to 15 s; back to it after a
    /// worker ran more than 30 s, or a reload.
    Exponential(#[serde(with = "duration_text")] Duration),
}

/// pm2's hard-coded ceiling of `exp_backoff_restart_delay`.
pub const PM2_MAX_BACKOFF: Duration = Duration::from_secs(15);
/// A worker up longer than this resets pm2's exponential backoff
/// (`EXP_BACKOFF_RESET_TIMER`).
pub const PM2_BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);

impl Pm2Delay {
    /// The delay after `prev` (zero: the first restart, or after a reset),
    /// for `exp_backoff_restart_delay = base`: `base`, then
    /// `floor(min(15000, prev × 1.5))` ms — 100, 150, 225, 337, 505 …
    pub fn next_exponential(base: Duration, prev: Duration) -> Duration {
        if prev.is_zero() {
            return base;
        }
        let ms = (prev.as_millis() as f64 * 1.5).min(PM2_MAX_BACKOFF.as_millis() as f64);
        Duration::from_millis(ms.floor() as u64)
    }
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            mode: RestartMode::Always,
            counting: Counting::Herd,
            restart_delay: Duration::from_millis(100),
            max_restart_delay: Duration::from_secs(5),
            min_uptime: Duration::from_secs(1),
            max_restarts: 16,
            stop_exit_codes: Vec::new(),
        }
    }
}

impl RestartPolicy {
    /// pm2's defaults (`restart_delay` 0, `min_uptime` 1 s, `max_restarts`
    /// 16), with pm2's counting.
    pub fn pm2() -> Self {
        RestartPolicy {
            counting: Counting::Pm2(Pm2Delay::Fixed),
            restart_delay: Duration::ZERO,
            ..RestartPolicy::default()
        }
    }

    /// herd counting: the wait before restarting after the `young`-th young
    /// exit in a row (0 = the worker had been stable, so it is replaced at
    /// once).
    pub fn backoff(&self, young: u32) -> Duration {
        if young == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(young - 1).unwrap_or(u32::MAX);
        self.restart_delay
            .checked_mul(factor)
            .unwrap_or(self.max_restart_delay)
            .min(self.max_restart_delay)
    }

    /// Is an exit with `status` one of `stop_exit_codes`?
    pub fn is_stop_code(&self, status: crate::ExitStatus) -> bool {
        matches!(status, crate::ExitStatus::Code(c) if self.stop_exit_codes.contains(&c))
    }
}

/// How a worker is stopped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StopPolicy {
    /// Sent to the worker's process group to ask it to finish.
    #[serde(with = "signal_text")]
    pub kill_signal: Signal,
    /// How long a worker may drain before its whole process group is SIGKILLed.
    #[serde(with = "duration_text")]
    pub kill_timeout: Duration,
    /// Send the IPC message `"shutdown"` instead of `kill_signal` (pm2's `shutdown_with_message`).
    pub shutdown_with_message: bool,
}

impl Default for StopPolicy {
    fn default() -> Self {
        StopPolicy {
            kill_signal: Signal::SIGINT,
            kill_timeout: Duration::from_millis(1600),
            shutdown_with_message: false,
        }
    }
}

/// When a new worker counts as ready to take over from an old one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ReadyPolicy {
    /// Wait for an explicit signal: `READY=1` on `NOTIFY_SOCKET`, or Node's `process.send('ready')`.
    pub wait_ready: bool,
    /// Without `wait_ready`, a worker that lived this long is ready.
    #[serde(with = "duration_text")]
    pub ready_delay: Duration,
    /// A successor not ready by then aborts a reload.
    #[serde(with = "duration_text")]
    pub listen_timeout: Duration,
}

impl Default for ReadyPolicy {
    fn default() -> Self {
        ReadyPolicy {
            wait_ready: false,
            ready_delay: Duration::from_secs(1),
            listen_timeout: Duration::from_secs(3),
        }
    }
}

/// Which protocol a worker speaks on its IPC channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerKind {
    /// Any program: LISTEN_FDS, NOTIFY_SOCKET, and herd's JSON-lines channel.
    #[default]
    Generic,
    /// A Node.js program: herd is its cluster primary (NODE_CHANNEL_FD, NODE_UNIQUE_ID).
    Node,
}

/// An app's own environment variables, in order (a later one wins).
///
/// Shared, copied on write: a `Vec` to read and to change, which clones
/// share until one is changed. The apps started from one shell carry the
/// same few kB of it; the daemon keeps one copy for all of them
/// ([`Env::share`]), and a supervisor one for its definition and the
/// engine's. As JSON, a list of `[name, value]` pairs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env(std::sync::Arc<Vec<(String, String)>>);

impl Env {
    /// Hold the same copy as `other` when both say the same; true if so.
    pub fn share(&mut self, other: &Env) -> bool {
        let same = std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0;
        if same {
            self.0 = other.0.clone();
        }
        same
    }

    /// Whether `self` and `other` are one copy.
    pub fn is_shared_with(&self, other: &Env) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for Env {
    type Target = Vec<(String, String)>;
    fn deref(&self) -> &Vec<(String, String)> {
        &self.0
    }
}

impl std::ops::DerefMut for Env {
    /// This app's own copy, to change (a shared one is copied first).
    fn deref_mut(&mut self) -> &mut Vec<(String, String)> {
        std::sync::Arc::make_mut(&mut self.0)
    }
}

impl From<Vec<(String, String)>> for Env {
    fn from(vars: Vec<(String, String)>) -> Env {
        Env(std::sync::Arc::new(vars))
    }
}

impl FromIterator<(String, String)> for Env {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(vars: I) -> Env {
        Env::from(vars.into_iter().collect::<Vec<_>>())
    }
}

impl<'a> IntoIterator for &'a Env {
    type Item = &'a (String, String);
    type IntoIter = std::slice::Iter<'a, (String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Env {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Env {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Env, D::Error> {
        Vec::deserialize(d).map(Env::from)
    }
}

/// Everything herd needs to run one app. As JSON (the daemon's saved app
/// list), durations are text (`"1600ms"`) and signals names (`"SIGINT"`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppSpec {
    pub name: String,
    /// The program to execute, already resolved to a path.
    pub program: PathBuf,
    /// Arguments after the program (not including `argv[0]`).
    pub args: Vec<String>,
    /// Extra environment for every worker, on top of herd's own.
    pub env: Env,
    /// Start workers with herd's own environment under `env` (false: `env` is
    /// the whole environment, as when the daemon runs an app with the
    /// environment of the CLI that started it).
    #[serde(default = "yes")]
    pub inherit_env: bool,
    pub cwd: Option<PathBuf>,
    pub instances: usize,
    #[serde(default)]
    pub listeners: Vec<ListenSpec>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub kind: WorkerKind,
    /// pm2's exec mode, as given or as pm2's rules choose it.
    #[serde(default)]
    pub exec_mode: ExecMode,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub stop: StopPolicy,
    #[serde(default)]
    pub ready: ReadyPolicy,
    /// Set each worker's slot in this variable instead of
    /// `NODE_APP_INSTANCE` (pm2's `instance_var`).
    #[serde(default)]
    pub instance_var: Option<String>,
    /// A variable raised by one for each further slot (pm2's
    /// `increment_var`): slot 0 gets the number the app's environment gives
    /// it (`Number(v) || 0`, as pm2 reads it), slot N that number plus N —
    /// `PORT` 3000, 3001 …
    #[serde(default)]
    pub increment_var: Option<String>,
    /// The daemon's id of the app: every worker gets it as `pm_id` (pm2's
    /// variable, which numbers processes there; herd's ids name apps).
    /// `None` under `herd run`: `pm_id` is 0.
    #[serde(default)]
    pub app_id: Option<u32>,
    /// The largest IPC message a worker may send, in bytes; a longer one is
    /// refused with a warning (and skipped up to its newline). When AppSpec
    /// is deserialized, a missing field means [`default_max_message_bytes`].
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Reload when these files change (pm2's `watch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchSpec>,
    /// Reload on this schedule (pm2's `cron_restart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_restart: Option<CronSpec>,
}

fn yes() -> bool {
    true
}

/// Serde for a [`Duration`] as text: written `"1600ms"`, read by [`parse_duration`]
/// (so `"12s"` and a bare number of milliseconds work too).
pub mod duration_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Ms(u64),
            Text(String),
        }
        match <Repr as serde::Deserialize>::deserialize(d)? {
            Repr::Ms(ms) => Ok(Duration::from_millis(ms)),
            Repr::Text(t) => super::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Serde for a [`Duration`] as a whole number of milliseconds (status reports).
pub mod duration_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u64::MAX as u128) as u64)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_millis)
    }
}

/// Serde for a graceful-stop [`Signal`] as its name, read by [`parse_signal`].
pub mod signal_text {
    use nix::sys::signal::Signal;

    pub fn serialize<S: serde::Serializer>(sig: &Signal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(sig.as_str())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(d)?;
        super::parse_signal(&name).map_err(serde::de::Error::custom)
    }
}

/// 1 MiB: the default cap on one IPC message from a worker.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The default of [`AppSpec::max_message_bytes`] (for `#[serde(default = …)]`).
pub fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}

impl AppSpec {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        AppSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Env::default(),
            inherit_env: true,
            cwd: None,
            instances: 1,
            listeners: Vec::new(),
            balance: Balance::Shared,
            kind: WorkerKind::Generic,
            exec_mode: ExecMode::Cluster,
            restart: RestartPolicy::default(),
            stop: StopPolicy::default(),
            ready: ReadyPolicy::default(),
            instance_var: None,
            increment_var: None,
            app_id: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            watch: None,
            cron_restart: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_env_is_one_copy_until_one_holder_changes_it() {
        let mut spec = AppSpec::new("web", "/bin/true");
        spec.env = vars(&[("PORT", "8000"), ("LANG", "C")]);
        let mut engine = spec.clone();
        assert!(engine.env.is_shared_with(&spec.env), "a clone shares it");
        engine.env.push(("DEBUG".into(), "1".into()));
        assert!(!engine.env.is_shared_with(&spec.env));
        assert_eq!(spec.env.len(), 2, "the other holder's is unchanged");
        assert_eq!(engine.env.len(), 3);
        // As JSON it is what it was as a plain list: saved files read as before.
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json["env"],
            serde_json::json!([["PORT", "8000"], ["LANG", "C"]])
        );
        let back: AppSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn an_env_shares_only_an_equal_one() {
        let first = vars(&[("PATH", "/usr/bin"), ("LANG", "C")]);
        let mut same = vars(&[("PATH", "/usr/bin"), ("LANG", "C")]);
        let mut other = vars(&[("PATH", "/usr/bin"), ("LANG", "C"), ("PORT", "1")]);
        assert!(!same.is_shared_with(&first));
        assert!(same.share(&first));
        assert!(same.is_shared_with(&first));
        assert!(!other.share(&first));
        assert!(!other.is_shared_with(&first));
        assert_eq!(other.len(), 3);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("12s").unwrap(), Duration::from_secs(12));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1600").unwrap(), Duration::from_millis(1600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "12x", "-1", "1e3", "ms12", "1.2.3s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.0.contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("2m").unwrap(), 2 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in ["", "MiB", "1.2.3M", "-1", "1XB", "99999999999999999999"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.0.contains("invalid size"), "{bad}: {err}");
        }
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGINT").unwrap(), Signal::SIGINT);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("SIGFOO")
            .unwrap_err()
            .0
            .contains("unknown signal 'SIGFOO'"));
        assert!(parse_signal("KILL")
            .unwrap_err()
            .0
            .contains("cannot be caught"));
    }

    #[test]
    fn listen_specs() {
        let l: ListenSpec = "web=127.0.0.1:8000".parse().unwrap();
        assert_eq!(l.name, "web");
        assert_eq!(l.addr, ListenAddr::Tcp("127.0.0.1:8000".parse().unwrap()));
        let l: ListenSpec = "[::1]:80".parse().unwrap();
        assert_eq!(l.name, "unknown");
        assert_eq!(l.addr, ListenAddr::Tcp("[::1]:80".parse().unwrap()));
        let l: ListenSpec = "unix:/tmp/x.sock".parse().unwrap();
        assert_eq!(l.addr, ListenAddr::Unix("/tmp/x.sock".into()));
        let l: ListenSpec = "localhost:8080".parse().unwrap();
        assert_eq!(l.addr, ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap()));
        let l: ListenSpec = "8080".parse().unwrap();
        assert_eq!(l.addr, ListenAddr::Tcp("0.0.0.0:8080".parse().unwrap()));
        for bad in [
            "127.0.0.1",
            "127.0.0.1:99999",
            "unix:",
            ":80",
            "a b=1.2.3.4:5",
        ] {
            assert!(bad.parse::<ListenSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn instances_as_pm2_reads_them() {
        // (text, parsed, count with 4 usable CPUs)
        let table = [
            ("max", Instances::Max, 4),
            ("0", Instances::Max, 4),
            ("4", Instances::Count(4), 4),
            ("1", Instances::Count(1), 1),
            ("4096", Instances::Count(4096), 4096),
            ("-1", Instances::AllBut(1), 3),
            ("-3", Instances::AllBut(3), 1),
            ("-8", Instances::AllBut(8), 1),
            (" 2 ", Instances::Count(2), 2),
        ];
        for (text, parsed, count) in table {
            let i: Instances = text.parse().unwrap();
            assert_eq!(i, parsed, "{text}");
            assert_eq!(i.resolve_with(4), count, "{text}");
        }
        for bad in ["lots", "4097", "-4097", "2.5", "", "MAX", "4abc"] {
            let err = bad.parse::<Instances>().unwrap_err().0;
            // The text says exactly what the rule takes.
            assert!(err.contains("1 to 4096, 'max' or 0"), "{bad}: {err}");
            assert!(err.contains("-N for all usable CPUs but N"), "{bad}: {err}");
        }
    }

    #[test]
    fn exec_modes() {
        for (text, mode) in [
            ("cluster", ExecMode::Cluster),
            ("cluster_mode", ExecMode::Cluster),
            ("fork", ExecMode::Fork),
            ("fork_mode", ExecMode::Fork),
        ] {
            assert_eq!(text.parse::<ExecMode>().unwrap(), mode);
        }
        assert!("forks".parse::<ExecMode>().is_err());
        assert_eq!(ExecMode::Fork.pm2_name(), "fork_mode");
        // A definition saved before the field existed still loads.
        let spec: AppSpec = serde_json::from_str(
            r#"{"name":"a","program":"/bin/true","args":[],"env":[],"cwd":null,"instances":1}"#,
        )
        .unwrap();
        assert_eq!(spec.exec_mode, ExecMode::Cluster);
    }

    #[test]
    fn app_names_as_pm2_takes_them() {
        for good in [
            "web",
            "backend api",
            "api/v1",
            "my_app x",
            "é-app",
            "a.b",
            ".hidden",
        ] {
            check_app_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["", "  ", "all", "12", "a\nb", "tab\there", &"x".repeat(201)] {
            assert!(check_app_name(bad).is_err(), "{bad:?}");
        }
        // (name, log file stem): pm2's rule, and never a path out of the folder.
        let table = [
            ("web", "web"),
            ("my_app x", "my-app-x"),
            ("backend api", "backend-api"),
            ("api/v1", "api-v1"),
            ("../../etc/passwd", "..-..-etc-passwd"),
            ("..", ".."),
            (".hidden", ".hidden"),
            ("a.b-c", "a.b-c"),
            ("é", "-"),
            ("x\\y", "x-y"),
        ];
        for (name, stem) in table {
            assert_eq!(log_file_stem(name), stem, "{name}");
            assert!(!log_file_stem(name).contains('/'));
        }
    }

    /// Found by the bad-input corpus: `herd start --name a:1` was taken, and
    /// the app could then never be restarted or sent to (`a:1` is worker 1 of `a`).
    #[test]
    fn an_app_name_with_a_colon_is_refused() {
        for bad in ["a:1", "api:v2", ":"] {
            let e = check_app_name(bad).unwrap_err().0;
            assert!(e.contains("APP:N"), "{bad}: {e}");
        }
    }

    /// Found by fuzzing (`config_values`): a name of 200 control characters
    /// was quoted whole, escaped, in an error 6 times the name's size.
    #[test]
    fn an_app_name_of_control_characters_is_not_quoted_whole() {
        let name = "\u{13}".repeat(MAX_APP_NAME);
        let e = check_app_name(&name).unwrap_err().0;
        assert!(e.contains("control character"), "{e}");
        assert!(e.len() < 200, "{} bytes: {e}", e.len());
        let e = check_app_name("a\tb").unwrap_err().0;
        assert!(e.contains(r#""a\tb""#), "{e}");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RestartPolicy::default();
        assert_eq!(p.backoff(0), Duration::ZERO);
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(10), Duration::from_secs(5));
        assert_eq!(p.backoff(100), Duration::from_secs(5));
    }

    #[test]
    fn pm2s_exponential_backoff_as_pm2_computes_it() {
        let base = Duration::from_millis(100);
        let mut prev = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..14 {
            prev = Pm2Delay::next_exponential(base, prev);
            seen.push(prev.as_millis() as u64);
        }
        // pm2 7, seen: 100, 150, 225, 337, 505, 757, 1135, 1702, 2553, 3829, 5743 …
        assert_eq!(
            seen,
            vec![100, 150, 225, 337, 505, 757, 1135, 1702, 2553, 3829, 5743, 8614, 12921, 15000]
        );
        assert_eq!(
            Pm2Delay::next_exponential(base, Duration::from_secs(15)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn restart_policies_read_back_and_old_ones_still_load() {
        let mut p = RestartPolicy::pm2();
        p.counting = Counting::Pm2(Pm2Delay::Exponential(Duration::from_millis(100)));
        p.stop_exit_codes = vec![0, 3];
        let text = serde_json::to_string(&p).unwrap();
        assert!(
            text.contains(r#""counting":{"pm2":{"exponential":"100ms"}}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<RestartPolicy>(&text).unwrap(), p);
        // Saved before counting existed: herd's.
        let old: RestartPolicy = serde_json::from_str(
            r#"{"mode":"always","restart_delay":"100ms","max_restart_delay":"5000ms","min_uptime":"1000ms","max_restarts":16}"#,
        )
        .unwrap();
        assert_eq!(old, RestartPolicy::default());
        assert!(p.is_stop_code(crate::ExitStatus::Code(3)));
        assert!(!p.is_stop_code(crate::ExitStatus::Code(1)));
        assert!(!p.is_stop_code(crate::ExitStatus::Signal(Signal::SIGKILL)));
    }
}
