//! Every key of pm2's `lib/API/schema.json` that herd does not do, with what
//! herd does instead or what to use; and the warnings about them and about
//! unknown keys, one per key per file (naming the apps that have it).
//!
//! The other schema keys are honoured, or read and kept until a later release
//! honours them (see [`crate::options::pending`]): `script` (`exec`, `cmd`,
//! `command`), `name`, `cwd`, `args`, `exec_interpreter` (`interpreter`),
//! `node_args` (`interpreter_args`), `out_file`, `error_file` and their
//! aliases, `log_file` (`log`), `merge_logs` (`combine_logs`), `log_type`,
//! `log_date_format`, `time`, `env`, `env_*`, `max_memory_restart`,
//! `restart_delay`, `exp_backoff_restart_delay`, `wait_ready`, `instances`,
//! `kill_timeout`, `shutdown_with_message`, `listen_timeout`, `autorestart`,
//! `min_uptime`, `max_restarts`, `exec_mode`, `execute_command`,
//! `instance_var`, `append_env_to_name`, `windowsHide` (nothing to do on
//! Linux, as under pm2), `watch`, `ignore_watch`, `watch_delay`,
//! `cron_restart` (`cron`), `namespace`; kept: `stop_exit_codes`, `filter_env`, `increment_var`,
//! `port`.

use std::collections::BTreeMap;

/// A pm2 key herd does not do.
pub struct NotDone {
    pub key: &'static str,
    /// The value with which herd already does what the key asks (pm2's
    /// `treekill: true` is how herd stops anyway): no warning then.
    pub fine_when: Option<bool>,
    /// What herd does instead, or what to use.
    pub instead: &'static str,
}

const fn not_done(key: &'static str, fine_when: Option<bool>, instead: &'static str) -> NotDone {
    NotDone {
        key,
        fine_when,
        instead,
    }
}

/// pm2's app keys herd does not do.
pub const NOT_DONE: &[NotDone] = &[
    not_done("name_prefix", None, "give the full name in `name`"),
    not_done("install_url", None, "herd installs no pm2 modules"),
    not_done("disable_logs", Some(false), "herd keeps every line; to drop an app's output set out_file and error_file to /dev/null"),
    not_done("pid_file", None, "herd writes no pid files: `herd jlist` or `herd show --json` give the pids"),
    not_done("pid", None, "herd writes no pid files: `herd jlist` or `herd show --json` give the pids"),
    not_done("source_map_support", Some(false), "herd injects nothing into the app: add node_args: '--enable-source-maps'"),
    not_done("disable_source_map_support", Some(true), "herd injects nothing into the app"),
    not_done("watch_options", None, "herd's watcher has no chokidar options (it never polls, and does not follow symbolic links into folders): use watch, ignore_watch and watch_delay"),
    not_done("vizion", Some(false), "herd reads no git metadata"),
    not_done("autostart", Some(true), "herd starts every app of the file: remove the app, or stop it after the start"),
    not_done("force", Some(false), "`herd start FILE` applies the file to running apps anyway"),
    not_done("post_update", None, "herd takes no commands from PM2.io/Keymetrics"),
    not_done("pmx", Some(false), "herd injects no @pm2/io: use herd's /metrics (Prometheus) or OpenTelemetry in the app"),
    not_done("automation", Some(false), "herd injects no @pm2/io: use herd's /metrics (Prometheus) or OpenTelemetry in the app"),
    not_done("trace", Some(false), "herd injects no tracing: use OpenTelemetry in the app"),
    not_done("disable_trace", Some(true), "herd injects no tracing"),
    not_done("v8", Some(false), "herd injects no PM2.io probes: use herd's /metrics"),
    not_done("event_loop_inspector", Some(false), "herd injects no PM2.io probes: use herd's /metrics"),
    not_done("deep_monitoring", Some(false), "herd injects no PM2.io probes: use herd's /metrics"),
    not_done("io", None, "herd does not talk to PM2.io: use herd's /metrics"),
    not_done("treekill", Some(true), "herd always stops a worker's whole process group"),
    not_done("kill_retry_time", None, "herd learns of an exit at once (it does not poll)"),
    not_done("username", None, "pm2 fills it in itself; apps run as the user of the herd daemon"),
    not_done("write", Some(false), "herd writes no config files"),
];

/// Top-level keys of pm2's process files that herd does not do.
pub const TOP_LEVEL_NOT_DONE: &[(&str, &str)] = &[
    ("deploy", "herd does not deploy (ssh, git pull, post-deploy hooks): use your CI or a deploy tool, then `herd start FILE --env NAME` on the host; its env sections are not read"),
    ("static", "herd has no built-in static file server: run one as an app (npx serve, python3 -m http.server)"),
];

/// pm2 keys an app may not have under herd: starting it anyway would run it
/// other than asked.
pub const REFUSED: &[(&str, &str)] = &[
    ("uid", "herd runs apps as the daemon's user; run herd as that user (herd startup under it) and remove uid"),
    ("gid", "herd runs apps with the daemon's group; run herd as that user and remove gid"),
    ("user", "herd runs apps as the daemon's user; run herd as that user (herd startup under it) and remove user"),
];

/// The warnings of one file, gathered so each key is named once.
#[derive(Default)]
pub struct Notes {
    /// (key, what) → apps.
    not_done: BTreeMap<(String, &'static str), Vec<String>>,
    /// (key, hint) → apps.
    unknown: BTreeMap<(String, String), Vec<String>>,
    /// (log_type value) → apps.
    log_types: BTreeMap<String, Vec<String>>,
}

impl Notes {
    /// A key of app `app` that is no field of herd's.
    pub fn key(&mut self, app: &str, key: &str, value: &serde_json::Value) {
        let snake = super::snake_case(key).unwrap_or_else(|| key.to_string());
        if let Some(entry) = NOT_DONE.iter().find(|n| n.key == snake) {
            let fine = entry.fine_when.is_some_and(|fine| {
                value.as_bool() == Some(fine)
                    || value.as_str() == Some(if fine { "true" } else { "false" })
            });
            if !fine && !value.is_null() {
                push(&mut self.not_done, (key.to_string(), entry.instead), app);
            }
            return;
        }
        let hint = did_you_mean(key)
            .map(|k| format!(": did you mean '{k}'?"))
            .unwrap_or_default();
        push(&mut self.unknown, (key.to_string(), hint), app);
    }

    /// A `log_type` pm2 reads as raw lines (anything but `json`).
    pub fn odd_log_type(&mut self, app: &str, value: &str) {
        push(&mut self.log_types, value.to_string(), app);
    }

    pub fn into_warnings(self, label: &str) -> Vec<String> {
        let mut out = Vec::new();
        for ((key, what), apps) in self.not_done {
            out.push(format!(
                "{label}: {}: pm2's '{key}' is not done by herd (ignored): {what}",
                apps_text(&apps)
            ));
        }
        for ((key, hint), apps) in self.unknown {
            out.push(format!(
                "{label}: {}: unknown key '{key}' (ignored){hint}",
                apps_text(&apps)
            ));
        }
        for (value, apps) in self.log_types {
            out.push(format!(
                "{label}: {}: log_type '{value}' is no log type (pm2 knows 'json'): lines are written as the app writes them",
                apps_text(&apps)
            ));
        }
        out
    }
}

fn push<K: Ord>(map: &mut BTreeMap<K, Vec<String>>, key: K, app: &str) {
    let apps = map.entry(key).or_default();
    if !apps.iter().any(|a| a == app) {
        apps.push(app.to_string());
    }
}

fn apps_text(apps: &[String]) -> String {
    let names: Vec<String> = apps.iter().map(|a| format!("'{a}'")).collect();
    if names.len() == 1 {
        format!("app {}", names[0])
    } else {
        format!("apps {}", names.join(", "))
    }
}

/// The key meant by a misspelt one: the same but for case, dashes or
/// camelCase, or one or two letters off.
fn did_you_mean(key: &str) -> Option<&'static str> {
    let known = super::fields()
        .iter()
        .copied()
        .chain(NOT_DONE.iter().map(|n| n.key));
    let norm = |k: &str| k.to_ascii_lowercase().replace(['-', '_'], "");
    let wanted = norm(key);
    let mut best: Option<(usize, &'static str)> = None;
    for k in known {
        let distance = edit_distance(&wanted, &norm(k));
        let limit = if wanted.len() >= 6 { 2 } else { 1 };
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, k));
        }
    }
    best.map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut prev = row[0];
        row[0] = i;
        for j in 1..=b.len() {
            let cur = row[j];
            row[j] = (row[j] + 1)
                .min(row[j - 1] + 1)
                .min(prev + usize::from(a[i - 1] != b[j - 1]));
            prev = cur;
        }
    }
    row[b.len()]
}
