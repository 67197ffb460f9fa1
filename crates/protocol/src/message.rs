//! The messages: what the CLI asks ([`Request`]), what the daemon answers
//! ([`Response`]), and the app and worker records both show ([`AppInfo`]).

use std::path::{Path, PathBuf};

use herd_engine::config::AppSpec;
use serde::{Deserialize, Serialize};

use crate::state::{AppState, ExecMode, Signal, WorkerRole, WorkerState};

/// Which apps a command is for: a name, a numeric id, or `all`.
pub type Selector = String;

/// One request from the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The first frame of every connection.
    Hello {
        version: u32,
    },
    Ping,
    /// Start apps; each definition must serialize to at most
    /// [`crate::MAX_DEFINITION`] bytes (so `show` can always send it back). With `update`, an app whose name exists already is
    /// reloaded onto its new definition (a config file started again);
    /// without it, an existing name is an error. With `update` and
    /// `restart`, an existing app is restarted (stopped, then started on its
    /// new definition) instead of reloaded: pm2's `restart FILE`. New apps
    /// named in `stopped` are registered without being started (`herd import
    /// pm2` of an app pm2 saved stopped).
    Start {
        apps: Vec<AppDef>,
        update: bool,
        #[serde(default)]
        restart: bool,
        #[serde(default)]
        stopped: Vec<String>,
    },
    /// Stop the apps' workers gracefully; the apps stay listed, stopped.
    Stop {
        apps: Selector,
    },
    /// Stop and start again (all workers at once; the sockets close meanwhile).
    /// With `slot`, replace only that slot's worker, the zero-downtime way.
    Restart {
        apps: Selector,
        #[serde(rename = "worker")]
        slot: Option<usize>,
    },
    /// Replace every worker one at a time, each once its successor is ready.
    /// A stopped app is started.
    Reload {
        apps: Selector,
    },
    /// Stop the apps and forget them.
    Delete {
        apps: Selector,
    },
    List {
        /// Show secret environment values (see [`crate::secrets`]); hidden
        /// by default wherever the answer carries an environment.
        #[serde(default)]
        show_secrets: bool,
    },
    /// Every app with its definition and per-slot counters: what pm2's
    /// `jlist` schema and `herd env` are built from (answered with
    /// [`Response::Details`]); secret environment values hidden unless
    /// `show_secrets`.
    ListDetail {
        #[serde(default)]
        show_secrets: bool,
    },
    /// Zero the restart counters the apps show (pm2's `reset`); `created_at`
    /// becomes now. The workers are untouched.
    Reset {
        apps: Selector,
    },
    /// One app with its definition (secret environment values hidden
    /// unless `show_secrets`).
    Show {
        app: Selector,
        #[serde(default)]
        show_secrets: bool,
    },
    /// Empty the apps' log files.
    Flush {
        apps: Selector,
    },
    Scale {
        app: Selector,
        to: ScaleTo,
    },
    /// A JSON message to the app's workers (`process.on('message')`), or
    /// to one slot's.
    Send {
        app: Selector,
        #[serde(rename = "worker")]
        slot: Option<usize>,
        message: serde_json::Value,
    },
    /// A signal to the process groups of the apps' workers.
    Signal {
        apps: Selector,
        signal: Signal,
    },
    /// Write the app list to `$HERD_HOME/dump.json`. An empty list does not
    /// replace a saved one unless `force`.
    Save {
        force: bool,
    },
    /// Start the saved apps that are not running.
    Resurrect,
    /// Stop every app gracefully, then the daemon.
    Kill,
    /// `herd update`, first step: the daemon checks the binary at its own
    /// path and executes it in place (same pid, its control socket kept
    /// open); answered just before the exec.
    UpdateDaemon,
    /// `herd update`, second step: each app's supervisor in turn upgrades
    /// in place to the daemon's binary.
    UpdateApps,
}

/// How `scale` changes the instance count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleTo {
    Exactly(usize),
    By(i64),
}

/// One answer from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Hello {
        version: u32,
        pid: u32,
    },
    Pong {
        pid: u32,
        uptime_ms: u64,
        apps: usize,
    },
    /// The command was carried out; what it did, for the user.
    Done {
        message: String,
    },
    Apps {
        apps: Vec<AppInfo>,
    },
    App {
        app: Box<AppInfo>,
        def: Box<AppDef>,
    },
    /// The answer to [`Request::ListDetail`], in id order.
    Details {
        apps: Vec<AppDetail>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// What kind of failure an [`Response::Error`] is: the CLI's exit status
/// follows from it (2 for a usage mistake, 1 otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request named something that does not exist, or asked the impossible.
    Usage,
    /// It was valid but failed.
    Failed,
    /// The client speaks another protocol version.
    Version,
}

/// An app as the daemon keeps it: the engine's spec plus what only the
/// daemon does (log files, memory limit). This is what `save` writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDef {
    pub spec: AppSpec,
    #[serde(default)]
    pub logs: LogSettings,
    /// Replace a worker whose RSS stays above this many bytes.
    #[serde(default)]
    pub max_memory_restart: Option<u64>,
    /// The instance count as asked (`max` is resolved again on resurrect).
    #[serde(default)]
    pub instances_max: bool,
    /// pm2 keys carried until herd honours them.
    #[serde(default, skip_serializing_if = "crate::Pm2Keys::is_empty")]
    pub pm2: crate::Pm2Keys,
    /// The script an interpreter runs (`spec.args` holds the interpreter's
    /// own arguments before it, the app's after it): pm2's `pm_exec_path`.
    /// `None` when the program runs as it is.
    #[serde(default)]
    pub script: Option<PathBuf>,
    /// pm2's namespace: a name several apps share, usable as a selector
    /// (`herd stop NAMESPACE`); `None` is pm2's `default`.
    #[serde(default)]
    pub namespace: Option<String>,
}

impl From<AppSpec> for AppDef {
    /// The app `spec` with the daemon's own settings at their defaults: log
    /// files in `$HERD_HOME/logs`, no memory limit, no pm2 keys, the program
    /// run as it is, pm2's `default` namespace.
    fn from(spec: AppSpec) -> AppDef {
        AppDef {
            spec,
            logs: LogSettings::default(),
            max_memory_restart: None,
            instances_max: false,
            pm2: crate::Pm2Keys::default(),
            script: None,
            namespace: None,
        }
    }
}

/// Where an app's output goes and how the files are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// stdout file (default `$HERD_HOME/logs/<name>-out.log`).
    pub out_file: Option<PathBuf>,
    /// stderr file (default `$HERD_HOME/logs/<name>-error.log`).
    pub error_file: Option<PathBuf>,
    /// A file that gets both streams, as well (pm2's `--log`/`log_file`).
    pub log_file: Option<PathBuf>,
    /// One file per stream for all instances (pm2's `merge_logs`, herd's
    /// default); `false`: one per instance, named by [`instance_log_path`].
    pub merge_logs: bool,
    /// Lines as written, or one JSON object per line (pm2's `log_type`).
    pub log_type: LogType,
    /// Prefix each line with the time it was read.
    pub time: bool,
    /// The time format (pm2's `log_date_format`, moment.js tokens such as
    /// `YYYY-MM-DD HH:mm:ss`); default ISO 8601 with milliseconds.
    pub date_format: Option<String>,
    /// Rotate a file when it grows past this many bytes (0: never).
    pub max_size: u64,
    /// How many rotated files to keep.
    pub keep: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            out_file: None,
            error_file: None,
            log_file: None,
            merge_logs: true,
            log_type: LogType::Raw,
            time: false,
            date_format: None,
            max_size: 10 << 20,
            keep: 5,
        }
    }
}

/// pm2's `log_type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogType {
    /// Lines as the app wrote them (pm2: any value but `json`).
    #[default]
    Raw,
    /// One JSON object per line: `{"message", "timestamp", "type", "process_id",
    /// "app_name", "instance"}`.
    Json,
}

/// The file instance `slot` writes when an app's logs are not merged, by
/// pm2's rule: `-<slot>` goes before a final `.log`, replacing a `-<digits>`
/// already there (`web-out.log` → `web-out-1.log`, `app-2024.log` →
/// `app-1.log`). A path that does not end in `.log` (`/dev/null`, `out.txt`)
/// is left as it is: every instance writes to it, as under pm2. pm2 numbers
/// the files by process id; herd by instance (the slot: `NODE_APP_INSTANCE`),
/// which a restarted or reloaded worker keeps.
pub fn instance_log_path(path: &Path, slot: usize) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let bytes = path.as_os_str().as_bytes();
    let Some(stem) = bytes.strip_suffix(b".log") else {
        return path.to_path_buf();
    };
    // A trailing `-<digits>` is pm2's own number (or looks like one): replaced.
    let digits = stem.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let stem = match stem.len().checked_sub(digits + 1) {
        Some(dash) if digits > 0 && stem[dash] == b'-' => &stem[..dash],
        _ => stem,
    };
    let mut out = stem.to_vec();
    out.extend_from_slice(format!("-{slot}.log").as_bytes());
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// One app in `herd list --json`: a stable schema. Its summary (`status`,
/// `online`) and each worker's `role` are computed by the app's supervisor;
/// readers match on them instead of deriving them again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppInfo {
    pub name: String,
    pub id: u32,
    pub mode: ExecMode,
    #[serde(rename = "status")]
    pub state: AppState,
    /// Workers wanted.
    pub instances: usize,
    /// Slots whose current worker is ready for traffic.
    pub online: usize,
    /// Where the app's sockets are bound.
    pub listen: Vec<String>,
    pub out_log: PathBuf,
    pub err_log: PathBuf,
    /// `false`: each instance writes its own files, named from `out_log` and
    /// `err_log` by [`instance_log_path`] (pm2's `merge_logs: false`).
    #[serde(default = "merged")]
    pub merge_logs: bool,
    /// Each slot's current worker (or the empty slot), in slot order, each
    /// followed by its successor if a reload replaces it; then the draining
    /// workers.
    pub workers: Vec<WorkerInfo>,
}

fn merged() -> bool {
    true
}

impl AppInfo {
    /// Each slot's current worker (one per slot; no pid when the slot has
    /// none), in slot order.
    pub fn current_workers(&self) -> impl Iterator<Item = &WorkerInfo> {
        self.workers
            .iter()
            .filter(|w| w.role == WorkerRole::Current)
    }

    /// `None` when every worker the app wants is ready; else why not, for a
    /// probe's answer (`2 of 3 workers ready; worker 1 is waiting`).
    pub fn not_ready(&self) -> Option<String> {
        if !self.state.is_up() {
            return Some(format!("the app is {}", self.state));
        }
        if self.instances > 0 && self.online >= self.instances {
            return None;
        }
        let waiting: Vec<String> = self
            .current_workers()
            .filter(|w| w.state != WorkerState::Online)
            .map(|w| format!("worker {} is {}", w.slot, w.state))
            .collect();
        Some(format!(
            "{} of {} workers ready; {}",
            self.online,
            self.instances,
            waiting.join(", ")
        ))
    }
}

/// An app with its definition and what pm2's `jlist` shows beyond `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppDetail {
    pub info: AppInfo,
    pub def: AppDef,
    /// When the daemon took the app, or it was last restarted, reloaded or
    /// reset (pm2's `created_at`), in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Each slot's crash-loop count and last exit, in slot order.
    pub slots: Vec<SlotDetail>,
}

/// One worker slot's counters in an [`AppDetail`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotDetail {
    pub slot: usize,
    /// Crashes in a row of workers that died young (pm2's `unstable_restarts`).
    pub unstable_restarts: u32,
    /// How the slot's last worker exited, as pm2's `exit_code` counts it:
    /// its code, or 0 after a death by signal (`None`: none exited yet).
    pub exit_code: Option<i32>,
}

/// One worker of an app in `herd list --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its slot, 0..N-1 (`HERD_WORKER_ID`, `NODE_APP_INSTANCE`).
    #[serde(rename = "id")]
    pub slot: usize,
    pub pid: Option<u32>,
    #[serde(rename = "status")]
    pub state: WorkerState,
    pub role: WorkerRole,
    /// Workers started in this slot after the first.
    pub restarts: u64,
    pub uptime_ms: u64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::Scale {
            app: "web".into(),
            to: ScaleTo::By(-1),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"request":"scale","app":"web","to":{"by":-1}}"#);
        let back: Request = serde_json::from_str(&text).unwrap();
        assert!(matches!(
            back,
            Request::Scale {
                to: ScaleTo::By(-1),
                ..
            }
        ));
    }

    #[test]
    fn the_show_secrets_flag_defaults_to_off() {
        let r: Request = serde_json::from_str(r#"{"request":"list"}"#).unwrap();
        assert!(matches!(
            r,
            Request::List {
                show_secrets: false
            }
        ));
        let r: Request = serde_json::from_str(r#"{"request":"show","app":"web"}"#).unwrap();
        assert!(matches!(
            r,
            Request::Show {
                show_secrets: false,
                ..
            }
        ));
    }

    #[test]
    fn an_app_def_round_trips_with_text_durations() {
        let mut spec = AppSpec::new("web", "/usr/bin/node");
        spec.stop.kill_timeout = std::time::Duration::from_secs(12);
        let def = AppDef {
            spec,
            logs: LogSettings::default(),
            max_memory_restart: Some(200 << 20),
            instances_max: true,
            pm2: crate::Pm2Keys {
                filter_env: Some(crate::FilterEnv::Containing(vec!["SECRET".into()])),
            },
            script: None,
            namespace: Some("api".into()),
        };
        let text = serde_json::to_string(&def).unwrap();
        assert!(text.contains(r#""kill_timeout":"12000ms""#), "{text}");
        assert!(text.contains(r#""kill_signal":"SIGINT""#), "{text}");
        let back: AppDef = serde_json::from_str(&text).unwrap();
        assert_eq!(back, def);
    }

    #[test]
    fn instance_log_files_follow_pm2s_rule_numbered_by_slot() {
        let cases = [
            ("/h/logs/web-out.log", 1, "/h/logs/web-out-1.log"),
            ("/h/logs/web-error.log", 0, "/h/logs/web-error-0.log"),
            // pm2 replaces a trailing -<digits> (its own number, or a date).
            ("/var/log/app-2024.log", 3, "/var/log/app-3.log"),
            ("/var/log/app-out-7.log", 2, "/var/log/app-out-2.log"),
            ("/var/log/app-v2.log", 2, "/var/log/app-v2-2.log"),
            ("/var/log/-5.log", 1, "/var/log/-1.log"),
            // Not a .log: left alone, shared by the instances (as pm2 does).
            ("/dev/null", 4, "/dev/null"),
            ("/var/log/out.txt", 4, "/var/log/out.txt"),
            ("/var/log/app.log.1", 4, "/var/log/app.log.1"),
        ];
        for (path, slot, want) in cases {
            assert_eq!(
                instance_log_path(Path::new(path), slot),
                Path::new(want),
                "{path} {slot}"
            );
        }
    }

    #[test]
    fn log_settings_saved_before_merge_logs_and_log_type_read_as_before() {
        let old = r#"{"out_file":null,"error_file":null,"log_file":"/x/both.log","time":true,
                      "date_format":null,"max_size":100,"keep":2}"#;
        let s: LogSettings = serde_json::from_str(old).unwrap();
        assert!(s.merge_logs);
        assert_eq!(s.log_type, LogType::Raw);
        assert_eq!(s.log_file.as_deref(), Some(Path::new("/x/both.log")));
        let json = LogSettings {
            log_type: LogType::Json,
            merge_logs: false,
            ..Default::default()
        };
        let text = serde_json::to_string(&json).unwrap();
        assert!(text.contains(r#""log_type":"json""#), "{text}");
        assert_eq!(serde_json::from_str::<LogSettings>(&text).unwrap(), json);
    }
}
