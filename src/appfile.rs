//! Config files for `herd start <file>`: herd's own `herd.toml`, and pm2
//! process files as pm2 reads them (`ecosystem.config.js`/`.cjs`/`.mjs`
//! evaluated with the machine's `node`, JSON — JSON5 and JS expressions too,
//! through node, as pm2 evaluates `.json` — and YAML). This module owns
//! reading them into the same [`AppOptions`]/[`DaemonOptions`] the command
//! line fills, with the same parsers; which program runs a script, and
//! whether it exists, is decided later by [`crate::options::app_def`], as for
//! the command line.
//!
//! One schema serves every format: [`RawApp`], derived with serde, one line
//! per key (pm2's camelCase spellings, `killTimeout`, are read too). Its value
//! types ([`values`]) are as tolerant as pm2 (`"10s"` or `1000`, `"200M"`,
//! `"false"`, one string or a list of args …). A key that is no field is an
//! `env_<profile>` table, a pm2 key herd does not do (one warning each, with
//! what to use instead: [`keys`]), or unknown (a warning, with a "did you
//! mean"). A value of the wrong type is an error naming the file, the key and
//! its line (for a JS file, the line where the key is written when it is
//! written once).
//!
//! The formats differ only where pm2 and herd disagree:
//!
//! | | `herd.toml` | pm2 files (`.js`, `.json`, `.yaml`) |
//! |---|---|---|
//! | relative `script`, `cwd` | from the file's directory | from where herd runs (pm2's rule: `pm2 start config/app.config.js` finds `app.js` in the current directory, not in `config/`) |
//! | `restart_delay = D` | first delay, doubling up to `max_restart_delay` (at least D) | a fixed delay D (pm2) |
//! | a `command` string | split into words | a command line, as `script` (pm2's `cmd`/`command`) |
//!
//! Log paths are relative to the app's `cwd`, as under pm2, and `~` is
//! expanded in every path.
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
//! args = ["--verbose"]            # or one string, split as pm2 splits it: "--verbose --color"
//! instances = 4                   # or "max"
//! listen = ["127.0.0.1:8000"]
//! balance = "round-robin"
//! kill_timeout = "12s"            # durations: "12s", "500ms", or a number of milliseconds
//! max_memory_restart = "300M"
//! wait_ready = true
//! watch = ["src"]                 # reload (zero-downtime) on edits; true: the app's folder
//! ignore_watch = ["*.log"]        # replaces the default (dot-names, node_modules)
//! cron_restart = "0 3 * * *"      # and every night at 03:00
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

mod js;
mod keys;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use herd_engine::config::{
    Counting, ExecMode, Pm2Delay, RestartMode, RestartPolicy, PM2_MAX_BACKOFF,
};
use herd_protocol::{FilterEnv, LogType, Pm2Keys};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::options::{self, AppOptions, CombinedLog, DaemonOptions, Style, Words};
use crate::UsageError;
use values::*;

/// Is this path a config file rather than a script? (*.toml, *.json,
/// *.json5, *.yaml, *.yml, and pm2's *.config.js / *.config.cjs /
/// *.config.mjs — e.g. ecosystem.config.js)
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
    /// The directory relative paths are taken from: where herd runs for a
    /// pm2 file (pm2's rule), the file's directory for `herd.toml`.
    pub base: PathBuf,
}

/// Read every app in `path` (pm2 files: relative paths from the current
/// directory); `profile` is `--env <profile>` (selects `env_<profile>`
/// tables/keys, merged over `env`). Warnings (unknown keys …) are returned
/// for the CLI to print on stderr.
pub fn load(path: &Path, profile: Option<&str>) -> Result<(Vec<FileApp>, Vec<String>), UsageError> {
    let cwd = std::env::current_dir()
        .map_err(|e| UsageError(format!("cannot read the current directory: {e}")))?;
    load_from(path, profile, &cwd)
}

/// [`load`], with `cwd` as the directory pm2 files' paths are taken from.
pub fn load_from(
    path: &Path,
    profile: Option<&str>,
    cwd: &Path,
) -> Result<(Vec<FileApp>, Vec<String>), UsageError> {
    let label = path.display().to_string();
    let Some(format) = format_of(path) else {
        return Err(UsageError(format!(
            "{label}: not a config file: use herd.toml, a .json, .yaml or .yml file, or pm2's *.config.js"
        )));
    };
    let mut warnings = Vec::new();
    let read = || {
        std::fs::read_to_string(path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                ": check the path"
            } else {
                ""
            };
            UsageError(format!("cannot read {label}: {e}{hint}"))
        })
    };
    let top = match format {
        Format::Js => {
            let json = js::evaluate(path, js::Source::Module, &mut warnings)?;
            let source = std::fs::read_to_string(path).unwrap_or_default();
            parse(&json, Format::Js).map_err(|e| e.located_in(&source))
        }
        Format::Json => {
            let text = read()?;
            match parse(&text, Format::Json) {
                // pm2 evaluates a .json file as a JS expression: comments,
                // trailing commas, JSON5 … so does herd, through node.
                Err(e) if e.syntax => {
                    match js::evaluate(path, js::Source::Expression, &mut Vec::new()) {
                        Ok(json) => parse(&json, Format::Js).map_err(|e| e.located_in(&text)),
                        Err(_) => Err(e),
                    }
                }
                other => other,
            }
        }
        _ => parse(&read()?, format),
    }
    .map_err(|e| UsageError(format!("{label}{e}")))?;
    apps_of(top, path, format, profile, cwd, warnings)
}

/// The parsers, for the fuzz targets (`fuzz/`) only: a file's text read as
/// [`load_from`] reads it, the file never touched (`path` names it: its
/// extension gives the format). A JS file's text is taken as the JSON node
/// would print.
#[doc(hidden)]
pub fn load_text(
    text: &str,
    path: &Path,
    profile: Option<&str>,
    cwd: &Path,
) -> Result<(Vec<FileApp>, Vec<String>), UsageError> {
    let label = path.display().to_string();
    let format =
        format_of(path).ok_or_else(|| UsageError(format!("{label}: not a config file")))?;
    let top = parse(text, format).map_err(|e| UsageError(format!("{label}{e}")))?;
    apps_of(top, path, format, profile, cwd, Vec::new())
}

/// The apps of a parsed file, checked, with the warnings so far.
fn apps_of(
    top: Top,
    path: &Path,
    format: Format,
    profile: Option<&str>,
    cwd: &Path,
    mut warnings: Vec<String>,
) -> Result<(Vec<FileApp>, Vec<String>), UsageError> {
    let label = path.display().to_string();

    let dialect = if format == Format::Toml {
        Dialect::Herd
    } else {
        Dialect::Pm2
    };
    let mut notes = keys::Notes::default();
    for key in &top.stray {
        if keys::TOP_LEVEL_NOT_DONE.iter().any(|(k, _)| k == key) {
            continue;
        }
        warnings.push(format!(
            "{label}: top-level key '{key}' ignored: app keys go inside each app of `apps`"
        ));
    }
    for (key, what) in keys::TOP_LEVEL_NOT_DONE {
        if top.top_keys.iter().any(|k| k == key) {
            warnings.push(format!(
                "{label}: pm2's '{key}' is not done by herd (ignored): {what}"
            ));
        }
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
    if top.apps_was_object {
        check_object_of_apps(&label, &top.apps[0])?;
    }
    let base = match dialect {
        Dialect::Pm2 => cwd.to_path_buf(),
        Dialect::Herd => file_dir(path, cwd),
    };
    let mut apps = Vec::with_capacity(top.apps.len());
    let mut has_profile = false;
    for (index, app) in top.apps.into_iter().enumerate() {
        let (built, found) = build(app, index, dialect, profile, &label, &mut notes)?;
        has_profile |= found;
        apps.push(FileApp {
            base: base.clone(),
            ..built
        });
    }
    for app in &mut apps {
        app.options.source_file = Some(path.to_path_buf());
    }
    for (i, app) in apps.iter().enumerate() {
        let name = app.options.name.as_deref().unwrap_or_default();
        if apps[..i]
            .iter()
            .any(|a| a.options.name.as_deref() == Some(name))
        {
            return Err(UsageError(format!(
                "{label}: two apps are named '{name}': give each a different name"
            )));
        }
    }
    warnings.extend(notes.into_warnings(&label));
    if let Some(profile) = profile {
        if !has_profile {
            warnings.push(format!(
                "{label}: no app has env_{profile}: --env {profile} changed nothing"
            ));
        }
    }
    Ok((apps, warnings))
}

/// pm2's `time: true`: this format (local time, no zone), whatever
/// `log_date_format` says.
pub const PM2_TIME_FORMAT: &str = "YYYY-MM-DDTHH:mm:ss";

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
        "json" | "json5" => Some(Format::Json),
        "yaml" | "yml" => Some(Format::Yaml),
        "js" | "cjs" | "mjs" if name.ends_with(&format!(".config.{ext}")) => Some(Format::Js),
        _ => None,
    }
}

/// The file's directory, absolute.
fn file_dir(path: &Path, cwd: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => cwd.join(p),
        _ => cwd.to_path_buf(),
    }
}

/// `apps: { … }`: pm2 takes the object as one app. When it is rather a map
/// of apps by name (its values are tables with a script), say so.
fn check_object_of_apps(label: &str, app: &App) -> Result<(), UsageError> {
    if app.raw.script.is_some() || app.raw.command.is_some() {
        return Ok(());
    }
    let inner: Vec<&str> = app
        .extras
        .other
        .iter()
        .filter(|(_, v)| v.get("script").is_some() || v.get("cmd").is_some())
        .map(|(k, _)| k.as_str())
        .collect();
    if inner.is_empty() {
        return Ok(());
    }
    Err(UsageError(format!(
        "{label}: apps: is an object whose keys {} hold apps; pm2 reads an object here as one app (which has no script): write apps as a list, as apps: [{{ name: '{}', script: … }}, …]",
        inner
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", "),
        inner[0]
    )))
}

// ---------------------------------------------------------------------------
// The schema.

/// One app's keys. A new key is one line here; its value type says how it
/// is read.
#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct RawApp {
    name: Option<V<Name>>,
    #[serde(alias = "exec")]
    script: Option<V<Text>>,
    #[serde(alias = "cmd")]
    command: Option<CommandValue>,
    args: Option<ArgList>,
    instances: Option<V<InstanceCount>>,
    exec_mode: Option<V<Mode>>,
    execute_command: Option<V<Flag>>,
    listen: Option<OneOrMany<Listen>>,
    balance: Option<V<BalanceMode>>,
    #[serde(alias = "interpreter")]
    exec_interpreter: Option<V<Text>>,
    #[serde(alias = "interpreter_args")]
    node_args: Option<ArgList>,
    shutdown_with_message: Option<V<Flag>>,
    restart: Option<V<Restart>>,
    autorestart: Option<V<Flag>>,
    restart_delay: Option<V<Millis>>,
    exp_backoff_restart_delay: Option<V<Millis>>,
    max_restart_delay: Option<V<Millis>>,
    min_uptime: Option<V<Millis>>,
    max_restarts: Option<V<Count>>,
    kill_signal: Option<V<StopSignal>>,
    kill_timeout: Option<V<Millis>>,
    wait_ready: Option<V<Flag>>,
    ready_delay: Option<V<Millis>>,
    listen_timeout: Option<V<Millis>>,
    env: Option<Env>,
    cwd: Option<V<Text>>,
    instance_var: Option<V<VarName>>,
    append_env_to_name: Option<V<Flag>>,
    time: Option<V<Flag>>,
    log_date_format: Option<V<Text>>,
    #[serde(alias = "out", alias = "output", alias = "out_log")]
    out_file: Option<V<Text>>,
    #[serde(
        alias = "error",
        alias = "err",
        alias = "err_file",
        alias = "err_log",
        alias = "error_log"
    )]
    error_file: Option<V<Text>>,
    #[serde(alias = "log")]
    log_file: Option<Switch>,
    #[serde(alias = "combine_logs")]
    merge_logs: Option<V<Flag>>,
    log_type: Option<V<Text>>,
    log_max_size: Option<V<Bytes>>,
    log_keep: Option<V<Count>>,
    max_memory_restart: Option<V<Bytes>>,
    windows_hide: Option<V<Flag>>,
    watch: Option<Switch>,
    ignore_watch: Option<OneOrMany<IgnoreGlob>>,
    watch_delay: Option<V<Millis>>,
    #[serde(alias = "cron")]
    cron_restart: Option<V<Cron>>,
    namespace: Option<V<Namespace>>,
    // Read and kept; honoured by a later release (see options::pending).
    stop_exit_codes: Option<OneOrMany<ExitCode>>,
    filter_env: Option<Switch>,
    increment_var: Option<V<VarName>>,
    port: Option<V<Port>>,
}

/// The names [`RawApp`] takes, aliases included (serde's own list).
fn fields() -> &'static [&'static str] {
    static FIELDS: OnceLock<&'static [&'static str]> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let mut out = None;
        let _ = RawApp::deserialize(FieldNames(&mut out));
        out.expect("RawApp is a struct")
    })
}

/// A deserializer that only learns a struct's field names.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field names only"))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("field names only"))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// `killTimeout` → `kill_timeout` (pm2 takes every key in camelCase too).
fn snake_case(key: &str) -> Option<String> {
    let first = key.chars().next()?;
    if !first.is_ascii_lowercase()
        || key.contains('_')
        || !key.chars().any(|c| c.is_ascii_uppercase())
    {
        return None;
    }
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// One app: its keys, and what was not a field.
#[derive(Debug, Default)]
struct App {
    raw: RawApp,
    extras: Extras,
}

/// The keys of an app that are no field of [`RawApp`].
#[derive(Debug, Default)]
struct Extras {
    /// `env_<profile>` tables, in order.
    profiles: Vec<(String, Env)>,
    /// Any other key, with its value (pm2 keys herd does not do, unknown keys).
    other: Vec<(String, serde_json::Value)>,
    /// Every key, as written.
    seen: Vec<String>,
}

impl App {
    /// Reads an app from `map`, whose keys [`AppKeys`] sorts.
    fn from_map<'de, A: MapAccess<'de>>(map: A) -> Result<App, A::Error> {
        let mut extras = Extras::default();
        let raw = RawApp::deserialize(de::value::MapAccessDeserializer::new(AppKeys {
            inner: map,
            extras: &mut extras,
        }))?;
        Ok(App { raw, extras })
    }
}

impl<'de> Deserialize<'de> for App {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<App, D::Error> {
        struct AppVisitor;
        impl<'de> Visitor<'de> for AppVisitor {
            type Value = App;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an app: a table of options with its script")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<App, A::Error> {
                App::from_map(map)
            }
        }
        d.deserialize_map(AppVisitor)
    }
}

/// Passes an app's fields on to [`RawApp`] (camelCase spelled in snake case)
/// and keeps the rest in [`Extras`]; each value is read from the file's own
/// parser, so its errors keep their line.
struct AppKeys<'a, A> {
    inner: A,
    extras: &'a mut Extras,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for AppKeys<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.inner.next_key::<String>()? else {
                return Ok(None);
            };
            self.extras.seen.push(key.clone());
            let field = if fields().contains(&key.as_str()) {
                Some(key.clone())
            } else {
                snake_case(&key).filter(|k| fields().contains(&k.as_str()))
            };
            if let Some(field) = field {
                return seed
                    .deserialize(de::value::StringDeserializer::new(field))
                    .map(Some);
            }
            match key.strip_prefix("env_") {
                Some(profile) if !profile.is_empty() => {
                    let env: Env = self.inner.next_value()?;
                    self.extras.profiles.push((profile.to_string(), env));
                }
                _ => {
                    let value: serde_json::Value = self.inner.next_value()?;
                    self.extras.other.push((key, value));
                }
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }
}

/// What a file holds: its apps, and what else was at the top.
#[derive(Default)]
struct Top {
    apps: Vec<App>,
    /// `apps` was one object (pm2 reads it as one app).
    apps_was_object: bool,
    /// Top-level keys of pm2's (`deploy`, `static`) seen.
    top_keys: Vec<String>,
    /// App keys at the top next to `apps` (ignored, as pm2 ignores them).
    stray: Vec<String>,
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Top, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = Top;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table with a list of `apps`, or a list of apps")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
                let mut apps = Vec::new();
                while let Some(app) = seq.next_element::<App>()? {
                    apps.push(app);
                }
                Ok(Top {
                    apps,
                    ..Top::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Top, A::Error> {
                // `{apps: [...]}` (or pm2's `pm2:`), or as pm2 also reads it,
                // one app by itself.
                let mut top = Top::default();
                let mut apps: Option<AppList> = None;
                let single = App::from_map(TopKeys {
                    inner: map,
                    apps: &mut apps,
                    top_keys: &mut top.top_keys,
                })?;
                match apps {
                    Some(list) => {
                        top.apps_was_object = list.was_object;
                        top.apps = list.apps;
                        top.stray = single.extras.seen;
                    }
                    None if single.extras.seen.is_empty() => {}
                    None => top.apps = vec![single],
                }
                Ok(top)
            }
        }
        d.deserialize_any(TopVisitor)
    }
}

/// The top level's own keys (`apps`, `pm2`, `deploy`, `static`), kept from the
/// single app read there.
struct TopKeys<'a, A> {
    inner: A,
    apps: &'a mut Option<AppList>,
    top_keys: &'a mut Vec<String>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for TopKeys<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.inner.next_key::<String>()? else {
                return Ok(None);
            };
            match key.as_str() {
                // pm2: `apps`, else `pm2`.
                "apps" | "pm2" if self.apps.is_none() => {
                    *self.apps = Some(self.inner.next_value()?);
                }
                k if keys::TOP_LEVEL_NOT_DONE.iter().any(|(t, _)| *t == k) => {
                    self.inner.next_value::<de::IgnoredAny>()?;
                    self.top_keys.push(key);
                }
                _ => {
                    return seed
                        .deserialize(de::value::StringDeserializer::new(key))
                        .map(Some)
                }
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }
}

/// `apps`: a list of apps, or (as pm2 reads it) one app.
struct AppList {
    apps: Vec<App>,
    was_object: bool,
}

impl<'de> Deserialize<'de> for AppList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AppList, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = AppList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of apps")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AppList, A::Error> {
                let mut apps = Vec::new();
                while let Some(app) = seq.next_element::<App>()? {
                    apps.push(app);
                }
                Ok(AppList {
                    apps,
                    was_object: false,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AppList, A::Error> {
                Ok(AppList {
                    apps: vec![App::from_map(map)?],
                    was_object: true,
                })
            }
        }
        d.deserialize_any(ListVisitor)
    }
}

// ---------------------------------------------------------------------------
// Parse errors, with their place.

/// A parse failure: the message, and its line and column where known.
struct ParseError {
    path: String,
    message: String,
    position: Option<(usize, usize)>,
    /// A syntax error (not a value of the wrong type).
    syntax: bool,
}

impl ParseError {
    /// For a file whose parsed text is not its source (JS, JSON5): the line
    /// where the failing key is written, when it is written once.
    fn located_in(mut self, source: &str) -> ParseError {
        if self.position.is_none() {
            let path = clean_path(&self.path);
            let key = path.rsplit('.').next().unwrap_or_default();
            let key = key.split('[').next().unwrap_or_default();
            self.position = key_position(source, key);
        }
        self
    }
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

/// Where `key` is written as a key (`key:`, `"key":`, `'key' :`) in
/// `source`, if exactly once.
fn key_position(source: &str, key: &str) -> Option<(usize, usize)> {
    if key.is_empty() {
        return None;
    }
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let mut found = None;
    for (line_no, line) in source.lines().enumerate() {
        let mut from = 0;
        while let Some(i) = line[from..].find(key).map(|i| i + from) {
            let before = line[..i].chars().next_back();
            let after = &line[i + key.len()..];
            let after = after.strip_prefix(['"', '\'']).unwrap_or(after);
            let starts = before.is_none_or(|c| !ident(c));
            if starts && after.trim_start().starts_with(':') {
                if found.is_some() {
                    return None;
                }
                let col = line[..i].chars().count() + 1;
                let col = if matches!(before, Some('"' | '\'')) {
                    col - 1
                } else {
                    col
                };
                found = Some((line_no + 1, col));
            }
            from = i + key.len();
        }
    }
    found
}

fn parse(text: &str, format: Format) -> Result<Top, ParseError> {
    match format {
        Format::Toml => {
            let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, "", &e, true))?;
            serde_path_to_error::deserialize(de)
                .map_err(|e| toml_error(text, &e.path().to_string(), e.inner(), false))
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
                // The YAML parser names the path itself (`.[0].script` for
                // our `[0].script`); ours is said already.
                for named in [format!("{path}: "), format!(".{path}: ")] {
                    if let Some(rest) = message.strip_prefix(&named) {
                        message = rest.to_string();
                    }
                }
                ParseError {
                    path,
                    message,
                    position: e.location().map(|l| (l.line(), l.column())),
                    syntax: false,
                }
            })
        }
    }
}

fn toml_error(text: &str, path: &str, e: &toml::de::Error, syntax: bool) -> ParseError {
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
        syntax,
    }
}

fn json_error(path: &str, e: &serde_json::Error, format: Format) -> ParseError {
    // For a JS file, the JSON is node's output: its positions mean nothing to the user.
    let position = (format == Format::Json && e.line() > 0).then(|| (e.line(), e.column()));
    ParseError {
        path: path.to_string(),
        message: without_position(&e.to_string()),
        position,
        syntax: e.is_syntax() || e.is_eof(),
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

/// One app's options; and whether it has the asked profile.
fn build(
    app: App,
    index: usize,
    dialect: Dialect,
    profile: Option<&str>,
    label: &str,
    notes: &mut keys::Notes,
) -> Result<(FileApp, bool), UsageError> {
    let App { raw, extras } = app;
    let given_name = raw.name.map(|n| n.0);
    let app_label = match &given_name {
        Some(n) => format!("'{n}'"),
        None => format!("number {}", index + 1),
    };
    let args = raw.args.map(|a| a.0).unwrap_or_default();
    let (mut command, style) = match (raw.script, raw.command) {
        (Some(_), Some(_)) => {
            return Err(UsageError(format!(
                "{label}: app {app_label}: has both script and command (or cmd): keep one"
            )))
        }
        (Some(V(script)), None) => (vec![script], Style::Script),
        // pm2's `cmd`/`command` is another name for `script`.
        (None, Some(CommandValue::Line(line))) if dialect == Dialect::Pm2 => {
            (vec![line], Style::Script)
        }
        (None, Some(CommandValue::Line(line))) => (options::split_words(&line), Style::Argv),
        (None, Some(CommandValue::Argv(argv))) => (argv, Style::Argv),
        (None, None) => (Vec::new(), Style::Script),
    };
    if command.first().is_none_or(|p| p.trim().is_empty()) {
        return Err(UsageError(format!(
            "{label}: app {app_label} has no script: give the file or program to run ({})",
            if dialect == Dialect::Herd {
                "script = \"app.js\", or command = [\"./server\", \"--flag\"]"
            } else {
                "script: 'app.js'"
            }
        )));
    }
    command.extend(args);
    let mut name = given_name
        .clone()
        .unwrap_or_else(|| options::launch::default_name(&command[0]));
    let mut has_profile = false;
    let mut env = raw.env.unwrap_or_default();
    // pm2's order: `port` beats env.PORT, and `env_<profile>` beats both.
    if let Some(V(port)) = raw.port {
        env.set("PORT".into(), port.to_string());
    }
    if let Some(profile) = profile {
        for (p, vars) in extras.profiles {
            if p == profile {
                has_profile = true;
                for (k, v) in vars.0 {
                    env.set(k, v);
                }
            }
        }
        // pm2's append_env_to_name: `api` started with --env production is `api-production`.
        if raw.append_env_to_name.is_some_and(|f| f.0) {
            name = format!("{name}-{profile}");
        }
    }
    for (key, value) in &extras.other {
        if let Some((_, why)) = keys::REFUSED.iter().find(|(k, _)| k == key) {
            return Err(UsageError(format!(
                "{label}: app '{name}': pm2's '{key}' is not supported: {why}"
            )));
        }
        notes.key(&name, key, value);
    }

    let mut o = AppOptions::defaults();
    o.name = Some(name);
    o.style = style;
    o.instances = raw.instances.map(|v| v.0);
    if let Some(v) = raw.listen {
        o.listen = v.0;
    }
    o.balance = raw.balance.map(|v| v.0);
    o.interpreter = raw.exec_interpreter.map(|v| v.0);
    if let Some(v) = raw.node_args {
        o.interpreter_args = vec![Words(v.0)];
    }
    o.exec_mode = raw.exec_mode.map(|v| v.0);
    if raw.execute_command.is_some_and(|v| v.0) {
        o.exec_mode = Some(ExecMode::Fork);
    }
    if let Some(v) = raw.shutdown_with_message {
        o.shutdown_with_message = v.0;
    }
    if raw.autorestart.is_some_and(|v| !v.0) {
        o.restart = RestartMode::Never;
    }
    if let Some(v) = raw.restart {
        o.restart = v.0;
    }
    match dialect {
        // pm2's counting (`lib/God.js: handleExit`): a fixed delay before
        // every restart (0 by default), or its exponential backoff.
        Dialect::Pm2 => {
            let base = RestartPolicy::pm2();
            o.restart_delay = raw.restart_delay.map_or(base.restart_delay, |V(d)| d);
            o.counting = Counting::Pm2(match &raw.exp_backoff_restart_delay {
                Some(V(d)) => Pm2Delay::Exponential(*d),
                None => Pm2Delay::Fixed,
            });
        }
        // herd's: the first delay of the doubling backoff.
        Dialect::Herd => {
            if let Some(V(d)) = &raw.exp_backoff_restart_delay {
                o.restart_delay = *d;
                o.max_restart_delay = PM2_MAX_BACKOFF.max(*d);
            } else if let Some(V(d)) = raw.restart_delay {
                o.restart_delay = d;
                o.max_restart_delay = o.max_restart_delay.max(d);
            }
        }
    }
    if let Some(v) = raw.max_restart_delay {
        o.max_restart_delay = v.0;
    }
    if let Some(v) = raw.min_uptime {
        o.min_uptime = v.0;
    }
    if let Some(v) = raw.max_restarts {
        o.max_restarts = v.0;
    }
    if let Some(v) = raw.kill_signal {
        o.kill_signal = v.0;
    }
    if let Some(v) = raw.kill_timeout {
        o.kill_timeout = v.0;
    }
    if let Some(v) = raw.wait_ready {
        o.wait_ready = v.0;
    }
    if let Some(v) = raw.ready_delay {
        o.ready_delay = v.0;
    }
    if let Some(v) = raw.listen_timeout {
        o.listen_timeout = v.0;
    }
    o.env = env
        .0
        .into_iter()
        .map(|(k, v)| options::EnvArg::Var(k, v))
        .collect();
    o.cwd = raw.cwd.map(|v| PathBuf::from(v.0));
    o.instance_var = raw.instance_var.map(|v| v.0);
    o.increment_var = raw.increment_var.map(|v| v.0);
    o.stop_exit_codes = raw.stop_exit_codes.map(|v| v.0).unwrap_or_default();
    o.watch = match raw.watch {
        None | Some(Switch::On(false)) => None,
        Some(Switch::On(true)) => Some(Vec::new()),
        Some(Switch::One(p)) => Some(vec![p]),
        Some(Switch::Many(ps)) => Some(ps),
    };
    o.ignore_watch = raw.ignore_watch.map(|v| v.0).unwrap_or_default();
    o.watch_delay = raw.watch_delay.map(|v| v.0);
    o.cron_restart = raw.cron_restart.map(|v| options::CronArg(v.0));

    let mut d = DaemonOptions::defaults();
    if let Some(v) = raw.time {
        d.time = v.0;
    }
    d.log_date_format = raw.log_date_format.map(|v| v.0);
    if d.time && dialect == Dialect::Pm2 {
        // pm2's `time: true` is its own format, over any log_date_format.
        d.log_date_format = Some(PM2_TIME_FORMAT.to_string());
    }
    d.log_type = raw.log_type.map(|V(t)| {
        if t == "json" {
            LogType::Json
        } else {
            if !t.is_empty() && t != "raw" {
                notes.odd_log_type(&o.name.clone().unwrap_or_default(), &t);
            }
            LogType::Raw
        }
    });
    d.log_file = match raw.log_file {
        None | Some(Switch::On(false)) => None,
        Some(Switch::On(true)) => Some(CombinedLog::Default),
        Some(Switch::One(p)) => Some(CombinedLog::Path(PathBuf::from(p))),
        Some(Switch::Many(_)) => {
            return Err(UsageError(format!(
                "{label}: app {app_label}: log_file: a list: give one path, or true for <name>.log"
            )))
        }
    };
    d.merge_logs = raw.merge_logs.map(|v| v.0);
    d.out_file = raw.out_file.map(|v| PathBuf::from(v.0));
    d.error_file = raw.error_file.map(|v| PathBuf::from(v.0));
    if let Some(v) = raw.log_max_size {
        d.log_max_size = v.0;
    }
    if let Some(v) = raw.log_keep {
        d.log_keep = v.0;
    }
    d.max_memory_restart = raw.max_memory_restart.map(|v| v.0);
    d.namespace = raw.namespace.map(|v| v.0);
    d.pm2 = Pm2Keys {
        filter_env: match raw.filter_env {
            None | Some(Switch::On(false)) => None,
            Some(Switch::On(true)) => Some(FilterEnv::All),
            Some(Switch::One(name)) => Some(FilterEnv::Exact(name)),
            Some(Switch::Many(parts)) if parts.is_empty() => None,
            Some(Switch::Many(parts)) => Some(FilterEnv::Containing(parts)),
        },
    };
    let _ = raw.windows_hide;

    Ok((
        FileApp {
            options: o,
            daemon: d,
            command,
            base: PathBuf::new(),
        },
        has_profile,
    ))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pm2_files;
