//! Config files for `herd start <file>`: herd's own `herd.toml`, and pm2
//! process files as pm2 reads them (`ecosystem.config.js`/`.cjs`/`.mjs`
//! evaluated with the machine's `node`, JSON and YAML). This module owns
//! reading them into the same [`AppOptions`]/[`DaemonOptions`] the command line
//! fills, with the same parsers; checking that a command can run is left to
//! [`AppOptions::into_spec`], as for the command line.
//!
//! One schema serves every format: an app is a table of keys named like the
//! `start` options in snake_case (`kill_timeout`, `max_memory_restart`, …) plus
//! pm2's own keys (`exec_mode`, `autorestart`, `node_args`, `env_<profile>`, …).
//! The formats differ only where pm2 and herd disagree on a default:
//!
//! | | `herd.toml` | pm2 files (`.js`, `.json`, `.yaml`) |
//! |---|---|---|
//! | `restart_delay = D` | first delay, doubling up to `max_restart_delay` (at least D) | a fixed delay D (pm2) |
//!
//! Unknown keys are warnings (returned, for the CLI to print); a value of the
//! wrong type is an error naming the file, the key and, where the parser knows
//! it, the line and column.
//!
//! # `herd.toml`
//!
//! An array of `[[apps]]` tables; each app's environment is an `[apps.env]`
//! table, and `[apps.env_<profile>]` tables are merged over it by
//! `herd start herd.toml --env <profile>`:
//!
//! ```toml
//! [[apps]]
//! name = "web"
//! script = "server.js"            # or: command = ["./server", "--port", "8000"]
//! args = ["--verbose"]            # or one string, split like a shell: "--verbose --color"
//! instances = 4                   # or "max"
//! listen = ["127.0.0.1:8000"]
//! balance = "round-robin"
//! kill_timeout = "12s"            # durations: "12s", "500ms", or a number of milliseconds
//! max_memory_restart = "300M"
//! wait_ready = true
//!
//! [apps.env]
//! NODE_ENV = "development"
//! PORT = 8000                     # numbers and booleans become strings
//!
//! [apps.env_production]
//! NODE_ENV = "production"
//!
//! [[apps]]
//! name = "worker"
//! command = "./worker --queue jobs"
//! instances = 2
//! restart = "on-failure"
//! ```
//!
//! Relative paths (`script`, `cwd`, `out_file`, `error_file`) are taken from
//! the file's directory.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herd_engine::config::{Balance, Instances, ListenSpec, RestartMode};
use nix::sys::signal::Signal;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::options::{self, AppOptions, DaemonOptions};
use crate::UsageError;

/// Is this path a config file rather than a script? (*.toml, *.json, *.yaml,
/// *.yml, and pm2's *.config.js / *.config.cjs / *.config.mjs — e.g.
/// ecosystem.config.js)
pub fn is_config_file(path: &Path) -> bool {
    format_of(path).is_some()
}

/// One app read from a file.
#[derive(Debug, Clone)]
pub struct FileApp {
    pub options: AppOptions,
    pub daemon: DaemonOptions,
    /// The script (or program), then its arguments.
    pub command: Vec<String>,
    /// The directory relative paths are taken from: the file's directory.
    pub base: PathBuf,
}

/// Read every app in `path`; `profile` is `--env <profile>` (selects
/// `env_<profile>` tables/keys, merged over `env`). Warnings (unknown keys …)
/// are returned for the CLI to print on stderr.
pub fn load(path: &Path, profile: Option<&str>) -> Result<(Vec<FileApp>, Vec<String>), UsageError> {
    let label = path.display().to_string();
    let Some(format) = format_of(path) else {
        return Err(UsageError(format!(
            "{label}: not a config file: use herd.toml, a .json, .yaml or .yml file, or pm2's *.config.js"
        )));
    };
    let mut warnings = Vec::new();
    let top = match format {
        Format::Js => {
            let json = evaluate_js(path, &mut warnings)?;
            parse(&json, Format::Js)
        }
        _ => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::NotFound {
                    ": check the path"
                } else {
                    ""
                };
                UsageError(format!("cannot read {label}: {e}{hint}"))
            })?;
            parse(&text, format)
        }
    }
    .map_err(|e| UsageError(format!("{label}{e}")))?;

    for key in &top.unknown {
        warnings.push(format!("{label}: unknown key '{key}' (ignored)"));
    }
    if top.apps.is_empty() {
        return Err(UsageError(format!(
            "{label}: no apps: {}",
            if format == Format::Toml {
                "add an [[apps]] table with a script"
            } else {
                "add an `apps` list with at least one app and its script"
            }
        )));
    }
    let base = base_dir(path)?;
    let dialect = if format == Format::Toml {
        Dialect::Herd
    } else {
        Dialect::Pm2
    };

    let mut apps = Vec::with_capacity(top.apps.len());
    for (index, raw) in top.apps.into_iter().enumerate() {
        apps.push(build(
            raw,
            index,
            dialect,
            profile,
            &label,
            &base,
            &mut warnings,
        )?);
    }
    for (i, app) in apps.iter().enumerate() {
        let name = app.app.options.name.as_deref().unwrap_or_default();
        if apps[..i]
            .iter()
            .any(|a| a.app.options.name.as_deref() == Some(name))
        {
            return Err(UsageError(format!(
                "{label}: two apps are named '{name}': give each a different name"
            )));
        }
    }
    if let Some(profile) = profile {
        if !apps.iter().any(|a| a.has_profile) {
            warnings.push(format!(
                "{label}: no app has env_{profile}: --env {profile} changed nothing"
            ));
        }
    }
    Ok((apps.into_iter().map(|a| a.app).collect(), warnings))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Json,
    Yaml,
    Js,
}

fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let ext = name.rsplit_once('.')?.1;
    match ext {
        "toml" => Some(Format::Toml),
        "json" => Some(Format::Json),
        "yaml" | "yml" => Some(Format::Yaml),
        "js" | "cjs" | "mjs" if name.ends_with(&format!(".config.{ext}")) => Some(Format::Js),
        _ => None,
    }
}

/// The file's directory, absolute (relative paths in it are taken from there).
fn base_dir(path: &Path) -> Result<PathBuf, UsageError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::path::absolute(dir).map_err(|e| {
        UsageError(format!(
            "cannot find the directory of {}: {e}",
            path.display()
        ))
    })
}

// ---------------------------------------------------------------------------
// Parsing: one hand-written visitor per level, so that every value is checked
// where the parser still knows its position, and unknown keys are collected
// instead of failing.

/// What the parsers found, before defaults are applied.
#[derive(Default)]
struct Top {
    apps: Vec<RawApp>,
    unknown: Vec<String>,
}

#[derive(Default)]
struct RawApp {
    name: Option<String>,
    script: Option<String>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    instances: Option<Instances>,
    listen: Option<Vec<ListenSpec>>,
    balance: Option<Balance>,
    interpreter: Option<String>,
    interpreter_args: Vec<String>,
    shutdown_with_message: Option<bool>,
    restart: Option<RestartMode>,
    autorestart: Option<bool>,
    restart_delay: Option<Duration>,
    exp_backoff_restart_delay: Option<Duration>,
    max_restart_delay: Option<Duration>,
    min_uptime: Option<Duration>,
    max_restarts: Option<u32>,
    kill_signal: Option<Signal>,
    kill_timeout: Option<Duration>,
    wait_ready: Option<bool>,
    ready_delay: Option<Duration>,
    listen_timeout: Option<Duration>,
    env: Vec<(String, String)>,
    profiles: Vec<(String, Vec<(String, String)>)>,
    cwd: Option<PathBuf>,
    instance_var: Option<String>,
    time: Option<bool>,
    log_date_format: Option<String>,
    out_file: Option<PathBuf>,
    error_file: Option<PathBuf>,
    log_max_size: Option<u64>,
    log_keep: Option<u32>,
    max_memory_restart: Option<u64>,
    /// Keys herd does not know, for the warnings.
    unknown: Vec<String>,
    /// pm2 keys herd knows but does not implement.
    unsupported: Vec<String>,
}

/// pm2 options herd has no equivalent for: named as such in the warning.
const PM2_UNSUPPORTED: &[&str] = &[
    "watch",
    "ignore_watch",
    "watch_delay",
    "watch_options",
    "cron_restart",
    "log_file",
    "log",
    "combine_logs_file",
    "source_map_support",
    "vizion",
    "autostart",
    "increment_var",
    "namespace",
    "filter_env",
    "force",
    "post_update",
    "treekill",
    "pid_file",
    "pid",
    "disable_logs",
    "appendEnvToName",
    "append_env_to_name",
    "version",
    "automation",
    "pmx",
    "stop_exit_codes",
];

/// Every key an app may have, for the "did you mean" hint.
const KNOWN_KEYS: &[&str] = &[
    "name",
    "script",
    "command",
    "args",
    "instances",
    "exec_mode",
    "listen",
    "balance",
    "interpreter",
    "exec_interpreter",
    "interpreter_args",
    "node_args",
    "shutdown_with_message",
    "restart",
    "autorestart",
    "restart_delay",
    "exp_backoff_restart_delay",
    "max_restart_delay",
    "min_uptime",
    "max_restarts",
    "kill_signal",
    "kill_timeout",
    "wait_ready",
    "ready_delay",
    "listen_timeout",
    "env",
    "cwd",
    "instance_var",
    "time",
    "log_date_format",
    "out_file",
    "error_file",
    "log_max_size",
    "log_keep",
    "max_memory_restart",
    "merge_logs",
];

impl<'de> serde::Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Top, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = Top;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table with a list of `apps`, or a list of apps")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top, A::Error> {
                let apps = AppList.visit_seq(seq)?;
                Ok(Top {
                    apps,
                    unknown: Vec::new(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
                // `{apps: [...]}`, or (as pm2 also reads) one app by itself.
                let mut apps = None;
                let mut single = RawApp::default();
                let mut others = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "apps" | "pm2" => apps = Some(map.next_value_seed(AppList)?),
                        // pm2's deployment settings: nothing for herd to do.
                        "deploy" => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => {
                            others.push(key.clone());
                            app_key(&mut single, key, &mut map)?;
                        }
                    }
                }
                Ok(match apps {
                    Some(apps) => Top {
                        apps,
                        unknown: others,
                    },
                    None if single.script.is_some() || single.command.is_some() => Top {
                        apps: vec![single],
                        unknown: Vec::new(),
                    },
                    None => Top {
                        apps: Vec::new(),
                        unknown: others,
                    },
                })
            }
        }
        d.deserialize_any(TopVisitor)
    }
}

struct AppList;

impl<'de> DeserializeSeed<'de> for AppList {
    type Value = Vec<RawApp>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<RawApp>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AppList {
    type Value = Vec<RawApp>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of apps, or one app")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<RawApp>, A::Error> {
        let mut apps = Vec::new();
        while let Some(app) = seq.next_element::<RawApp>()? {
            apps.push(app);
        }
        Ok(apps)
    }
    /// One app alone.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<RawApp>, A::Error> {
        Ok(vec![AppVisitor.visit_map(map)?])
    }
}

impl<'de> serde::Deserialize<'de> for RawApp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawApp, D::Error> {
        d.deserialize_map(AppVisitor)
    }
}

struct AppVisitor;

impl<'de> Visitor<'de> for AppVisitor {
    type Value = RawApp;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an app: a table of options with its script")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawApp, A::Error> {
        let mut app = RawApp::default();
        while let Some(key) = map.next_key::<String>()? {
            app_key(&mut app, key, &mut map)?;
        }
        Ok(app)
    }
}

/// Reads the value of one key of an app.
fn app_key<'de, A: MapAccess<'de>>(
    app: &mut RawApp,
    key: String,
    map: &mut A,
) -> Result<(), A::Error> {
    match key.as_str() {
        "name" => app.name = Some(map.next_value_seed(TEXT)?),
        "script" => app.script = Some(map.next_value_seed(TEXT)?),
        "command" => app.command = Some(map.next_value_seed(List::words(TEXT))?),
        "args" => app.args = Some(map.next_value_seed(List::words(ARG))?),
        "instances" => app.instances = Some(map.next_value_seed(INSTANCES)?),
        "exec_mode" => {
            map.next_value_seed(EXEC_MODE)?;
        }
        "listen" => app.listen = Some(map.next_value_seed(List::items(LISTEN))?),
        "balance" => app.balance = Some(map.next_value_seed(BALANCE)?),
        "interpreter" | "exec_interpreter" => app.interpreter = Some(map.next_value_seed(TEXT)?),
        "interpreter_args" | "node_args" => {
            let mut args = map.next_value_seed(List::words(ARG))?;
            app.interpreter_args.append(&mut args);
        }
        "shutdown_with_message" => app.shutdown_with_message = Some(map.next_value_seed(BOOL)?),
        "restart" => app.restart = Some(map.next_value_seed(RESTART)?),
        "autorestart" => app.autorestart = Some(map.next_value_seed(BOOL)?),
        "restart_delay" => app.restart_delay = Some(map.next_value_seed(DURATION)?),
        "exp_backoff_restart_delay" => {
            app.exp_backoff_restart_delay = Some(map.next_value_seed(DURATION)?)
        }
        "max_restart_delay" => app.max_restart_delay = Some(map.next_value_seed(DURATION)?),
        "min_uptime" => app.min_uptime = Some(map.next_value_seed(DURATION)?),
        "max_restarts" => app.max_restarts = Some(map.next_value_seed(COUNT)?),
        "kill_signal" => app.kill_signal = Some(map.next_value_seed(SIGNAL)?),
        "kill_timeout" => app.kill_timeout = Some(map.next_value_seed(DURATION)?),
        "wait_ready" => app.wait_ready = Some(map.next_value_seed(BOOL)?),
        "ready_delay" => app.ready_delay = Some(map.next_value_seed(DURATION)?),
        "listen_timeout" => app.listen_timeout = Some(map.next_value_seed(DURATION)?),
        "env" => app.env = map.next_value_seed(EnvTable)?,
        "cwd" => app.cwd = Some(map.next_value_seed(PATH)?),
        "instance_var" => app.instance_var = Some(map.next_value_seed(TEXT)?),
        "time" => app.time = Some(map.next_value_seed(BOOL)?),
        "log_date_format" => app.log_date_format = Some(map.next_value_seed(TEXT)?),
        "out_file" | "out_log" | "output" => app.out_file = Some(map.next_value_seed(PATH)?),
        "error_file" | "err_file" | "err_log" | "error_log" | "error" => {
            app.error_file = Some(map.next_value_seed(PATH)?)
        }
        "log_max_size" => app.log_max_size = Some(map.next_value_seed(SIZE)?),
        "log_keep" => app.log_keep = Some(map.next_value_seed(COUNT)?),
        "max_memory_restart" => app.max_memory_restart = Some(map.next_value_seed(SIZE)?),
        // herd always writes one file per stream for all workers.
        "merge_logs" | "combine_logs" => {
            map.next_value_seed(BOOL)?;
        }
        k if k.starts_with("env_") && k.len() > 4 => {
            let env = map.next_value_seed(EnvTable)?;
            app.profiles.push((k[4..].to_string(), env));
        }
        k if PM2_UNSUPPORTED.contains(&k) => {
            map.next_value::<IgnoredAny>()?;
            app.unsupported.push(key);
        }
        _ => {
            map.next_value::<IgnoredAny>()?;
            app.unknown.push(key);
        }
    }
    Ok(())
}

/// One scalar value read as text (numbers and, if allowed, booleans are
/// written out), then checked by one of the command line's parsers.
struct Scalar<T> {
    parse: fn(&str) -> Result<T, String>,
    expecting: &'static str,
    numbers: bool,
    bools: bool,
}

impl<T> Clone for Scalar<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Scalar<T> {}

const TEXT: Scalar<String> = Scalar {
    parse: |s| Ok(s.to_string()),
    expecting: "a string",
    numbers: false,
    bools: false,
};
/// A command-line argument: numbers are fine (`args: ["--port", 8000]`).
const ARG: Scalar<String> = Scalar {
    parse: |s| Ok(s.to_string()),
    expecting: "a string",
    numbers: true,
    bools: true,
};
const PATH: Scalar<PathBuf> = Scalar {
    parse: |s| Ok(PathBuf::from(s)),
    expecting: "a path",
    numbers: false,
    bools: false,
};
const BOOL: Scalar<bool> = Scalar {
    parse: |s| match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("invalid value '{s}': use true or false")),
    },
    expecting: "true or false",
    numbers: false,
    bools: true,
};
const DURATION: Scalar<Duration> = Scalar {
    parse: options::duration,
    expecting: "a duration (\"12s\", \"500ms\", or a number of milliseconds)",
    numbers: true,
    bools: false,
};
const SIZE: Scalar<u64> = Scalar {
    parse: options::size,
    expecting: "a size (\"200M\", \"1G\", or a number of bytes)",
    numbers: true,
    bools: false,
};
const COUNT: Scalar<u32> = Scalar {
    parse: |s| {
        s.parse()
            .map_err(|_| format!("invalid count '{s}': use a whole number from 0"))
    },
    expecting: "a whole number",
    numbers: true,
    bools: false,
};
const INSTANCES: Scalar<Instances> = Scalar {
    parse: options::parsed::<Instances>,
    expecting: "a number of instances, or \"max\"",
    numbers: true,
    bools: false,
};
const LISTEN: Scalar<ListenSpec> = Scalar {
    parse: options::parsed::<ListenSpec>,
    expecting: "a listen address (\"127.0.0.1:8000\", a port, or \"unix:PATH\")",
    numbers: true,
    bools: false,
};
const BALANCE: Scalar<Balance> = Scalar {
    parse: options::parsed::<Balance>,
    expecting: "a balance mode (shared, reuseport or round-robin)",
    numbers: false,
    bools: false,
};
const RESTART: Scalar<RestartMode> = Scalar {
    parse: options::parsed::<RestartMode>,
    expecting: "a restart mode (always, on-failure or never)",
    numbers: false,
    bools: false,
};
const SIGNAL: Scalar<Signal> = Scalar {
    parse: options::kill_signal,
    expecting: "a signal name (SIGINT, SIGTERM, …)",
    numbers: false,
    bools: false,
};
/// pm2's `exec_mode`: herd runs both modes the same way (one supervisor, any
/// number of workers), so it is only checked.
const EXEC_MODE: Scalar<()> = Scalar {
    parse: |s| match s {
        "cluster" | "cluster_mode" | "fork" | "fork_mode" => Ok(()),
        _ => Err(format!("invalid exec_mode '{s}': use cluster or fork")),
    },
    expecting: "cluster or fork",
    numbers: false,
    bools: false,
};

impl<'de, T> DeserializeSeed<'de> for Scalar<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T> Visitor<'de> for Scalar<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if !self.numbers {
            return Err(E::invalid_type(de::Unexpected::Signed(v), &self));
        }
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        if !self.numbers {
            return Err(E::invalid_type(de::Unexpected::Unsigned(v), &self));
        }
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if !self.numbers {
            return Err(E::invalid_type(de::Unexpected::Float(v), &self));
        }
        self.visit_str(&number_text(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        if !self.bools {
            return Err(E::invalid_type(de::Unexpected::Bool(v), &self));
        }
        self.visit_str(if v { "true" } else { "false" })
    }
}

/// A float as a person would write it: 12000.0 is "12000".
fn number_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        v.to_string()
    }
}

/// A list of values, or one value alone; with `split`, one string is split
/// into words like a shell does (`args: "--port 8000"`).
struct List<T> {
    item: Scalar<T>,
    split: bool,
}

impl<T> List<T> {
    fn words(item: Scalar<T>) -> List<T> {
        List { item, split: true }
    }
    fn items(item: Scalar<T>) -> List<T> {
        List { item, split: false }
    }
}

impl<'de, T> DeserializeSeed<'de> for List<T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T> Visitor<'de> for List<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of values ({}), or one", self.item.expecting)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.item)? {
            out.push(v);
        }
        Ok(out)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
        if !self.split {
            return Ok(vec![self.item.visit_str(v)?]);
        }
        let words = shlex::split(v).ok_or_else(|| {
            E::custom(format!(
                "cannot split '{v}' into words (unbalanced quotes?): close the quotes or give a list"
            ))
        })?;
        words.iter().map(|w| self.item.visit_str(w)).collect()
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
        Ok(vec![self.item.visit_i64(v)?])
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<T>, E> {
        Ok(vec![self.item.visit_u64(v)?])
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<T>, E> {
        Ok(vec![self.item.visit_f64(v)?])
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Vec<T>, E> {
        Ok(vec![self.item.visit_bool(v)?])
    }
}

/// An environment table: strings, or numbers and booleans written out.
struct EnvTable;

const ENV_VALUE: Scalar<String> = Scalar {
    parse: |s| {
        if s.contains('\0') {
            Err("an environment value cannot contain a NUL byte".into())
        } else {
            Ok(s.to_string())
        }
    },
    expecting: "a string, number or boolean",
    numbers: true,
    bools: true,
};

impl<'de> DeserializeSeed<'de> for EnvTable {
    type Value = Vec<(String, String)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvTable {
    type Value = Vec<(String, String)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table of environment variables (NAME = \"value\")")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut env: Vec<(String, String)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(de::Error::custom(format!(
                    "invalid environment variable name '{key}': it must be non-empty, without '=' or NUL"
                )));
            }
            let value = map.next_value_seed(ENV_VALUE)?;
            set_env(&mut env, key, value);
        }
        Ok(env)
    }
}

fn set_env(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    }
}

/// A parse failure: the message, and its line and column where known.
struct ParseError {
    path: String,
    message: String,
    position: Option<(usize, usize)>,
}

impl fmt::Display for ParseError {
    /// Written after the file's name: `herd.toml:7:16: apps[1].kill_timeout: …`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        let path = clean_path(&self.path);
        if !path.is_empty() && path != "." {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)
    }
}

fn parse(text: &str, format: Format) -> Result<Top, ParseError> {
    match format {
        Format::Toml => {
            let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, "", &e))?;
            serde_path_to_error::deserialize(de)
                .map_err(|e| toml_error(text, &e.path().to_string(), e.inner()))
        }
        Format::Json | Format::Js => {
            let mut de = serde_json::Deserializer::from_str(text);
            let top = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| json_error(&e.path().to_string(), e.inner(), format))?;
            de.end().map_err(|e| json_error("", &e, format))?;
            Ok(top)
        }
        Format::Yaml => {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let e = e.inner();
                let mut message = without_position(&e.to_string());
                // The YAML parser names the path itself; ours is the same.
                if let Some(rest) = message.strip_prefix(&format!("{path}: ")) {
                    message = rest.to_string();
                }
                ParseError {
                    path,
                    message,
                    position: e.location().map(|l| (l.line(), l.column())),
                }
            })
        }
    }
}

fn toml_error(text: &str, path: &str, e: &toml::de::Error) -> ParseError {
    let position = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, col)
    });
    ParseError {
        path: path.to_string(),
        message: e.message().trim_end().to_string(),
        position,
    }
}

fn json_error(path: &str, e: &serde_json::Error, format: Format) -> ParseError {
    // For a JS file, the JSON is node's output: its positions mean nothing to the user.
    let position = (format == Format::Json && e.line() > 0).then(|| (e.line(), e.column()));
    ParseError {
        path: path.to_string(),
        message: without_position(&e.to_string()),
        position,
    }
}

/// "… at line 3 column 7, …" → "…, …" (the position is given separately).
fn without_position(message: &str) -> String {
    let mut out = message.to_string();
    let mut from = 0;
    while let Some(i) = out[from..].find(" at line ").map(|i| i + from) {
        let tail = &out[i + " at line ".len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let line = digits(tail);
        let rest = &tail[line..];
        match rest.strip_prefix(" column ") {
            Some(col) if line > 0 && digits(col) > 0 => {
                let end = i + " at line ".len() + line + " column ".len() + digits(col);
                out.replace_range(i..end, "");
            }
            _ => from = i + 1,
        }
    }
    out
}

/// A path as serde_path_to_error gives it, without its unknown segments
/// (`apps[0].?` → `apps[0]`).
fn clean_path(path: &str) -> String {
    path.split('.')
        .filter(|segment| *segment != "?")
        .collect::<Vec<_>>()
        .join(".")
}

// ---------------------------------------------------------------------------
// From what was read to the command line's options.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Herd,
    Pm2,
}

/// pm2's ceiling for `exp_backoff_restart_delay`.
const PM2_MAX_BACKOFF: Duration = Duration::from_secs(15);

struct Built {
    app: FileApp,
    has_profile: bool,
}

fn build(
    raw: RawApp,
    index: usize,
    dialect: Dialect,
    profile: Option<&str>,
    label: &str,
    base: &Path,
    warnings: &mut Vec<String>,
) -> Result<Built, UsageError> {
    let command = match (raw.script, raw.command) {
        (Some(_), Some(_)) => {
            return Err(UsageError(format!(
                "{label}: app {}: has both script and command: keep one",
                app_label(raw.name.as_deref(), index)
            )))
        }
        (Some(script), None) => {
            let mut c = vec![script];
            c.extend(raw.args.unwrap_or_default());
            c
        }
        (None, Some(command)) => {
            let mut c = command;
            c.extend(raw.args.unwrap_or_default());
            c
        }
        (None, None) => Vec::new(),
    };
    if command.first().is_none_or(|p| p.is_empty()) {
        return Err(UsageError(format!(
            "{label}: app {} has no script: give the file or program to run ({})",
            app_label(raw.name.as_deref(), index),
            if dialect == Dialect::Herd {
                "script = \"app.js\", or command = [\"./server\", \"--flag\"]"
            } else {
                "script: 'app.js'"
            }
        )));
    }
    let name = raw.name.clone().unwrap_or_else(|| {
        Path::new(&command[0])
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| command[0].clone())
    });
    if name.is_empty() {
        return Err(UsageError(format!(
            "{label}: app {} has an empty name: give it one",
            index + 1
        )));
    }
    for key in &raw.unknown {
        let hint = KNOWN_KEYS
            .iter()
            .find(|k| **k == key.replace('-', "_").to_ascii_lowercase())
            .map(|k| format!(": did you mean '{k}'?"))
            .unwrap_or_default();
        warnings.push(format!(
            "{label}: app '{name}': unknown key '{key}' (ignored){hint}"
        ));
    }
    for key in &raw.unsupported {
        warnings.push(format!(
            "{label}: app '{name}': pm2's '{key}' is not supported by herd (ignored)"
        ));
    }

    let mut o = AppOptions::defaults();
    o.name = Some(name);
    // One instance unless told otherwise, as under pm2 and `herd start`.
    o.instances = Some(raw.instances.unwrap_or(Instances::Count(1)));
    if let Some(v) = raw.listen {
        o.listen = v;
    }
    o.balance = raw.balance;
    o.interpreter = raw.interpreter;
    o.interpreter_args = raw.interpreter_args;
    if let Some(v) = raw.shutdown_with_message {
        o.shutdown_with_message = v;
    }
    if raw.autorestart == Some(false) {
        o.restart = RestartMode::Never;
    }
    if let Some(v) = raw.restart {
        o.restart = v;
    }
    if let Some(d) = raw.exp_backoff_restart_delay {
        o.restart_delay = d;
        o.max_restart_delay = PM2_MAX_BACKOFF.max(d);
    } else if let Some(d) = raw.restart_delay {
        o.restart_delay = d;
        o.max_restart_delay = match dialect {
            Dialect::Pm2 => d,
            Dialect::Herd => o.max_restart_delay.max(d),
        };
    }
    if let Some(v) = raw.max_restart_delay {
        o.max_restart_delay = v;
    }
    if let Some(v) = raw.min_uptime {
        o.min_uptime = v;
    }
    if let Some(v) = raw.max_restarts {
        o.max_restarts = v;
    }
    if let Some(v) = raw.kill_signal {
        o.kill_signal = v;
    }
    if let Some(v) = raw.kill_timeout {
        o.kill_timeout = v;
    }
    if let Some(v) = raw.wait_ready {
        o.wait_ready = v;
    }
    if let Some(v) = raw.ready_delay {
        o.ready_delay = v;
    }
    if let Some(v) = raw.listen_timeout {
        o.listen_timeout = v;
    }
    let mut env = raw.env;
    let mut has_profile = false;
    if let Some(profile) = profile {
        for (p, vars) in raw.profiles {
            if p == profile {
                has_profile = true;
                for (k, v) in vars {
                    set_env(&mut env, k, v);
                }
            }
        }
    }
    o.env = env
        .into_iter()
        .map(|(k, v)| options::EnvArg::Var(k, v))
        .collect();
    o.cwd = raw.cwd;
    o.instance_var = raw.instance_var;

    let mut d = DaemonOptions::defaults();
    if let Some(v) = raw.time {
        d.time = v;
    }
    d.log_date_format = raw.log_date_format;
    d.out_file = raw.out_file;
    d.error_file = raw.error_file;
    if let Some(v) = raw.log_max_size {
        d.log_max_size = v;
    }
    if let Some(v) = raw.log_keep {
        d.log_keep = v;
    }
    d.max_memory_restart = raw.max_memory_restart;

    Ok(Built {
        app: FileApp {
            options: o,
            daemon: d,
            command,
            base: base.to_path_buf(),
        },
        has_profile,
    })
}

fn app_label(name: Option<&str>, index: usize) -> String {
    match name {
        Some(n) => format!("'{n}'"),
        None => format!("number {}", index + 1),
    }
}

// ---------------------------------------------------------------------------
// pm2's JavaScript files, evaluated by node as pm2 does (`require`, or
// `import` for ES modules), printed back as JSON.

/// Longest a config file may take to evaluate.
const JS_TIMEOUT: Duration = Duration::from_secs(30);

/// Marks the JSON in node's output, in case the file prints something itself.
const JS_MARK: &str = "\u{1}herd-config\u{1}";

const JS_LOADER: &str = r#"
const file = require('path').resolve(process.argv[process.argv.length - 1]);
const { pathToFileURL } = require('url');
const load = async () => {
  if (file.endsWith('.mjs')) return import(pathToFileURL(file).href);
  try {
    return require(file);
  } catch (e) {
    if (e && e.code === 'ERR_REQUIRE_ESM') return import(pathToFileURL(file).href);
    throw e;
  }
};
load().then((m) => {
  if (m && (m[Symbol.toStringTag] === 'Module' || m.__esModule) && 'default' in m) m = m.default;
  process.stdout.write('\u0001herd-config\u0001' + JSON.stringify(m === undefined ? null : m) + '\n');
  process.exit(0);
}, (e) => {
  process.stderr.write(String((e && e.stack) || e) + '\n');
  process.exit(1);
});
"#;

fn evaluate_js(path: &Path, warnings: &mut Vec<String>) -> Result<String, UsageError> {
    evaluate_js_with("node", path, warnings)
}

fn evaluate_js_with(
    node: &str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<String, UsageError> {
    let label = path.display();
    if !path.is_file() {
        return Err(UsageError(format!("cannot read {label}: no such file")));
    }
    let mut child = Command::new(node)
        .arg("-e")
        .arg(JS_LOADER)
        .arg("--")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                UsageError(format!(
                    "cannot read {label}: it is JavaScript, and reading it needs Node.js (`node`), which is not in PATH: install Node.js, or write the apps in a .json, .yaml or herd.toml file"
                ))
            } else {
                UsageError(format!("cannot read {label}: cannot start node: {e}"))
            }
        })?;
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("piped")));
    let stderr = reader(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + JS_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(UsageError(format!(
                    "cannot read {label}: node did not finish evaluating it within {}s: does it start a server or wait for input?",
                    JS_TIMEOUT.as_secs()
                )));
            }
            Err(e) => {
                return Err(UsageError(format!(
                    "cannot read {label}: waiting for node: {e}"
                )))
            }
        }
    };
    let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    let err = err.trim();
    if !status.success() {
        // Node's own frames (and our loader's) say nothing about the file.
        let text: Vec<&str> = err
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !(l.starts_with("at ") && (l.contains("node:internal") || l.contains("[eval]")))
            })
            .collect();
        return Err(UsageError(format!(
            "cannot read {label}: node failed to evaluate it ({status}); fix the file:\n{}",
            if text.is_empty() {
                "(no output)".to_string()
            } else {
                text.join("\n")
            }
        )));
    }
    if !err.is_empty() {
        warnings.push(format!("{label}: node printed: {err}"));
    }
    match out.rfind(JS_MARK) {
        Some(i) => Ok(out[i + JS_MARK.len()..].trim_end().to_string()),
        None => Err(UsageError(format!(
            "cannot read {label}: node printed no configuration"
        ))),
    }
}

#[cfg(test)]
mod tests;
