//! pm2 process-file keys that herd reads, checks and keeps with an app before
//! it acts on them ([`Pm2Keys`]): each is parsed into its type now (a wrong
//! value is an error when the file is read), saved with the definition, and
//! shown by `herd show`; the CLI warns that it is not honoured yet. Each
//! field moves to the part of herd that honours it (the engine's spec, the
//! log settings) when that part is built, and leaves this struct.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The pm2 keys of one app that herd carries but does not honour yet.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Pm2Keys {
    /// `watch`: the paths to watch (absolute); empty = the app's cwd.
    /// `None`: not watched.
    pub watch: Option<Vec<PathBuf>>,
    /// `ignore_watch`: globs (relative to the app's cwd) or pm2's regexes, as
    /// written. `None`: pm2's default (dotfiles and `node_modules`).
    pub ignore_watch: Option<Vec<String>>,
    /// `watch_delay`, in milliseconds.
    pub watch_delay_ms: Option<u64>,
    /// `cron_restart`: a 5- or 6-field cron pattern, checked.
    pub cron_restart: Option<String>,
    /// `stop_exit_codes`: exits with these codes are not restarted.
    pub stop_exit_codes: Vec<i32>,
    /// `filter_env`: which of the CLI's variables never reach the app.
    pub filter_env: Option<FilterEnv>,
    /// `increment_var`: a variable raised by one for each further instance.
    pub increment_var: Option<String>,
    /// `port`: sets `PORT` for the app.
    pub port: Option<u16>,
    /// `log_type`.
    pub log_type: Option<LogType>,
    /// `log_file` (alias `log`): one file with both streams.
    pub log_file: Option<CombinedLog>,
    /// `merge_logs` (alias `combine_logs`): one file per stream for every
    /// instance (`true`), or one per instance (`false`).
    pub merge_logs: Option<bool>,
    /// `exp_backoff_restart_delay`, in milliseconds (pm2's formula: ×1.5 per
    /// restart, at most 15 s, reset after 30 s up).
    pub exp_backoff_restart_delay_ms: Option<u64>,
}

impl Pm2Keys {
    pub fn is_empty(&self) -> bool {
        *self == Pm2Keys::default()
    }
}

/// pm2's `filter_env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterEnv {
    /// `true`: none of the CLI's variables (pm2 documents this; its code
    /// does nothing for `true`).
    All,
    /// A string: that one variable.
    Exact(String),
    /// A list: every variable whose name contains one of these.
    Containing(Vec<String>),
}

/// pm2's `log_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogType {
    /// Lines as the app wrote them (pm2: any value but `json`).
    Raw,
    /// One JSON object per line: message, timestamp, type, process id, app name.
    Json,
}

/// pm2's `log_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CombinedLog {
    /// `true`: `<logs>/<name>.log`.
    Default,
    /// A path (absolute).
    Path(PathBuf),
}
