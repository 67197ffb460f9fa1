//! `herd jlist` and `herd prettylist`: the apps in pm2's `jlist` schema, so
//! that the tools built on pm2 (exporters, dashboards, `jq
//! '.[].pm2_env.status'` in scripts) read herd unchanged. herd's own schema
//! stays in `list --json`.
//!
//! pm2 lists one element per process, in pm_id order:
//! `{pid, name, pm2_env, pm_id, monit: {memory, cpu}}`. herd's ids name
//! apps and `APP:N` names a worker, so the mapping is:
//!
//! - one element per worker slot (the process serving it; a reload's
//!   incoming and draining processes are not listed, as pm2 hides its
//!   `_old_` ones), ordered by app id, then slot;
//! - `pm_id` is the **app's** id, shared by its workers, so that
//!   `herd restart $pm_id` acts on the app the element belongs to (never on
//!   another one); the slot is `pm2_env.NODE_APP_INSTANCE` (or the app's
//!   `instance_var`), and `pm2_env.herd_worker` is the `APP:N` selector of
//!   that one process;
//! - statuses are pm2's: `waiting` is `waiting restart`; a process that is
//!   not running has pid 0 and zero `monit`;
//! - `restart_time` is the slot's restarts (crashes, reloads, replacements),
//!   `unstable_restarts` its crash-loop count, `created_at` when the app was
//!   taken or last restarted, reloaded or `reset`;
//! - paths are the app's: `pm_exec_path` the script (the program when it
//!   runs without an interpreter), `pm_out_log_path`/`pm_err_log_path`
//!   (and `pm_log_path`) the files that process writes: the app's, or its
//!   instance's own with `merge_logs: false`;
//! - `env` holds the app's environment and, as in pm2, every variable is
//!   also at the top level of `pm2_env` (where it does not hide pm2's keys);
//! - keys of pm2 features herd does not have are constants that say so
//!   (`vizion: false`, `pmx: false`, `axm_monitor: {}` …); `pm_pid_path`,
//!   `unique_id`, `windowsHide`, `kill_retry_time`, `_pm2_version` are left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use herd_engine::config::{RestartMode, WorkerKind};
use herd_protocol::{instance_log_path, AppDetail, LogType, WorkerInfo, WorkerState};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::settle;

/// One element of pm2's `jlist`, its keys in pm2's order.
#[derive(Debug, Serialize)]
pub struct Pm2Process {
    pub pid: u32,
    pub name: String,
    pub pm2_env: Map<String, Value>,
    pub pm_id: u32,
    pub monit: Monit,
}

#[derive(Debug, Serialize)]
pub struct Monit {
    /// RSS in bytes.
    pub memory: u64,
    /// Percent of one core, rounded to 0.1.
    pub cpu: f64,
}

/// `herd jlist` (one line) or `herd prettylist` (indented).
pub fn print(pretty: bool, show_secrets: bool) -> anyhow::Result<()> {
    let apps = settle::details(show_secrets)?;
    let list = jlist(&apps, now_ms(), &mut Facts::default());
    let text = if pretty {
        serde_json::to_string_pretty(&list)?
    } else {
        serde_json::to_string(&list)?
    };
    println!("{text}");
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// pm2's status word for a worker's.
pub fn pm2_status(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Waiting => "waiting restart",
        other => other.as_str(),
    }
}

/// What jlist looks up outside the daemon, once per call: the user, the
/// apps' package.json versions, the Node versions.
#[derive(Default)]
pub struct Facts {
    username: Option<String>,
    versions: HashMap<PathBuf, String>,
    node_versions: HashMap<PathBuf, Option<String>>,
}

impl Facts {
    fn username(&mut self) -> String {
        self.username
            .get_or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .or_else(|| std::env::var("USER").ok())
                    .unwrap_or_default()
            })
            .clone()
    }

    /// The `version` of the nearest package.json above `script`, as pm2 shows it; else "N/A".
    fn version(&mut self, script: &Path) -> String {
        let dir = script.parent().unwrap_or(Path::new("/")).to_path_buf();
        if let Some(v) = self.versions.get(&dir) {
            return v.clone();
        }
        let found = dir
            .ancestors()
            .find_map(|d| std::fs::read_to_string(d.join("package.json")).ok())
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|v| v["version"].as_str().map(String::from))
            .unwrap_or_else(|| "N/A".into());
        self.versions.insert(dir, found.clone());
        found
    }

    /// `node --version` of a Node interpreter, without the `v`.
    fn node_version(&mut self, node: &Path) -> Option<String> {
        self.node_versions
            .entry(node.to_path_buf())
            .or_insert_with(|| {
                let out = Command::new(node).arg("--version").output().ok()?;
                let text = String::from_utf8(out.stdout).ok()?;
                Some(text.trim().trim_start_matches('v').to_string())
            })
            .clone()
    }
}

/// The apps as pm2's `jlist` lists its processes (see the module's notes).
pub fn jlist(apps: &[AppDetail], now_ms: u64, facts: &mut Facts) -> Vec<Pm2Process> {
    let mut out = Vec::new();
    for app in apps {
        // One process per slot: the worker serving it.
        for w in app.info.current_workers() {
            out.push(process(app, w, now_ms, facts));
        }
    }
    out
}

fn process(app: &AppDetail, w: &WorkerInfo, now_ms: u64, facts: &mut Facts) -> Pm2Process {
    let info = &app.info;
    let def = &app.def;
    let spec = &def.spec;
    let pid = w.pid.unwrap_or(0);
    let running = pid != 0;
    let slot = app.slots.iter().find(|s| s.slot == w.slot);

    // The script and the arguments around it (see AppDef::script).
    let (exec_path, interpreter, node_args, args) = match &def.script {
        // A script run as it is (a binary, `interpreter: none`).
        Some(script) if spec.program == *script => (
            script.clone(),
            "none".to_string(),
            Vec::new(),
            spec.args.clone(),
        ),
        Some(script) => {
            let at = spec
                .args
                .iter()
                .position(|a| Path::new(a) == script)
                .unwrap_or(0);
            let interp = spec
                .program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                script.clone(),
                interp,
                spec.args[..at].to_vec(),
                spec.args.get(at + 1..).unwrap_or_default().to_vec(),
            )
        }
        None => (
            spec.program.clone(),
            "none".to_string(),
            Vec::new(),
            spec.args.clone(),
        ),
    };
    let instance_var = spec
        .instance_var
        .clone()
        .unwrap_or_else(|| "NODE_APP_INSTANCE".into());
    let env: Map<String, Value> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();

    let mut e = Map::new();
    let mut put = |k: &str, v: Value| {
        e.insert(k.to_string(), v);
    };
    put("name", json!(info.name));
    put(
        "namespace",
        json!(def.namespace.as_deref().unwrap_or("default")),
    );
    put("version", json!(facts.version(&exec_path)));
    if spec.kind == WorkerKind::Node {
        if let Some(v) = facts.node_version(&spec.program) {
            put("node_version", json!(v));
        }
    }
    put("exec_interpreter", json!(interpreter));
    put("exec_mode", json!(info.mode.pm2_name()));
    put("instances", json!(info.instances));
    put("instance_var", json!(instance_var));
    put(&instance_var, json!(w.slot));
    put("pm_id", json!(info.id));
    put("herd_worker", json!(format!("{}:{}", info.name, w.slot)));
    put("pm_exec_path", json!(exec_path));
    put("pm_cwd", json!(spec.cwd.clone().unwrap_or_default()));
    // The files this process writes: its instance's own when not merged.
    let file = |path: &Path| match def.logs.merge_logs {
        true => path.to_path_buf(),
        false => instance_log_path(path, w.slot),
    };
    put("pm_out_log_path", json!(file(&info.out_log)));
    put("pm_err_log_path", json!(file(&info.err_log)));
    if let Some(both) = &def.logs.log_file {
        put("pm_log_path", json!(file(both)));
    }
    put("node_args", json!(node_args));
    put("args", json!(args));
    put("status", json!(pm2_status(w.state)));
    put(
        "pm_uptime",
        json!(if running {
            now_ms.saturating_sub(w.uptime_ms)
        } else {
            app.created_at_ms
        }),
    );
    put("created_at", json!(app.created_at_ms));
    put("restart_time", json!(w.restarts));
    put(
        "unstable_restarts",
        json!(slot.map_or(0, |s| s.unstable_restarts)),
    );
    if let Some(code) = slot.and_then(|s| s.exit_code) {
        put("exit_code", json!(code));
    }
    put(
        "autorestart",
        json!(spec.restart.mode != RestartMode::Never),
    );
    put(
        "kill_timeout",
        json!(spec.stop.kill_timeout.as_millis() as u64),
    );
    put(
        "listen_timeout",
        json!(spec.ready.listen_timeout.as_millis() as u64),
    );
    if spec.ready.wait_ready {
        put("wait_ready", json!(true));
    }
    if let Some(limit) = def.max_memory_restart {
        put("max_memory_restart", json!(limit));
    }
    if def.logs.time {
        put("time", json!(true));
    }
    if let Some(f) = &def.logs.date_format {
        put("log_date_format", json!(f));
    }
    put("merge_logs", json!(def.logs.merge_logs));
    if def.logs.log_type == LogType::Json {
        put("log_type", json!("json"));
    }
    // As pm2 keeps them: `watch` true (the app's folder) or the paths;
    // `ignore_watch` as written; `watch_delay` in ms; `cron_restart`.
    match &spec.watch {
        None => put("watch", json!(false)),
        Some(w) => {
            if w.paths.is_empty() {
                put("watch", json!(true));
            } else {
                put("watch", json!(w.paths));
            }
            if let Some(ignore) = &w.ignore {
                put("ignore_watch", json!(ignore));
            }
            put("watch_delay", json!(w.delay.as_millis() as u64));
        }
    }
    if let Some(cron) = &spec.cron_restart {
        put("cron_restart", json!(cron.pattern()));
    }
    put("autostart", json!(true));
    put("treekill", json!(true));
    put("username", json!(facts.username()));
    // pm2 features herd does not have.
    put("vizion", json!(false));
    put("vizion_running", json!(false));
    put("pmx", json!(false));
    put("automation", json!(false));
    put("km_link", json!(false));
    put("axm_actions", json!([]));
    put("axm_monitor", json!({}));
    put("axm_options", json!({}));
    put("axm_dynamic", json!({}));
    // As in pm2, each variable is at the top level too (pm2's own keys win).
    for (k, v) in &env {
        e.entry(k.clone()).or_insert_with(|| v.clone());
    }
    e.insert("env".into(), Value::Object(env));

    Pm2Process {
        pid,
        name: info.name.clone(),
        pm2_env: e,
        pm_id: info.id,
        monit: if running {
            Monit {
                memory: w.memory_bytes,
                cpu: (w.cpu_percent * 10.0).round() / 10.0,
            }
        } else {
            Monit {
                memory: 0,
                cpu: 0.0,
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_engine::config::AppSpec;
    use herd_protocol::{AppInfo, AppState, ExecMode, LogSettings, SlotDetail, WorkerRole};

    fn app() -> AppDetail {
        let mut spec = AppSpec::new("web", "/usr/bin/node");
        spec.kind = WorkerKind::Generic; // no `node --version` in a unit test
        spec.args = vec![
            "--max-old-space-size=128".into(),
            "/srv/app/server.js".into(),
            "--port".into(),
            "1".into(),
        ];
        spec.env = vec![
            ("PORT".into(), "8000".into()),
            ("status".into(), "x".into()),
        ]
        .into();
        spec.cwd = Some("/srv/app".into());
        spec.instances = 2;
        let worker = |slot, pid: Option<u32>, state, role| WorkerInfo {
            slot,
            pid,
            state,
            role,
            restarts: 3,
            uptime_ms: 1_000,
            cpu_percent: 12.34,
            memory_bytes: 50 << 20,
        };
        AppDetail {
            info: AppInfo {
                name: "web".into(),
                id: 4,
                mode: ExecMode::Cluster,
                state: AppState::Launching,
                instances: 2,
                online: 1,
                listen: vec![],
                out_log: "/h/logs/web-out.log".into(),
                err_log: "/h/logs/web-error.log".into(),
                merge_logs: true,
                workers: vec![
                    worker(0, Some(100), WorkerState::Online, WorkerRole::Current),
                    // A reload's successor for slot 0: not listed.
                    worker(0, Some(101), WorkerState::Launching, WorkerRole::Successor),
                    worker(1, None, WorkerState::Waiting, WorkerRole::Current),
                ],
            },
            def: herd_protocol::AppDef {
                spec,
                logs: LogSettings::default(),
                max_memory_restart: None,
                instances_max: false,
                pm2: Default::default(),
                script: Some("/srv/app/server.js".into()),
                namespace: None,
            },
            created_at_ms: 5_000,
            slots: vec![
                SlotDetail {
                    slot: 0,
                    unstable_restarts: 0,
                    exit_code: None,
                },
                SlotDetail {
                    slot: 1,
                    unstable_restarts: 2,
                    exit_code: Some(1),
                },
            ],
        }
    }

    #[test]
    fn one_element_per_slot_with_pm2_fields() {
        let list = jlist(&[app()], 10_000, &mut Facts::default());
        assert_eq!(list.len(), 2);
        let (a, b) = (&list[0], &list[1]);
        assert_eq!((a.pm_id, a.pid, b.pid), (4, 100, 0));
        assert_eq!(a.pm2_env["status"], "online");
        assert_eq!(b.pm2_env["status"], "waiting restart");
        assert_eq!(a.pm2_env["NODE_APP_INSTANCE"], 0);
        assert_eq!(b.pm2_env["NODE_APP_INSTANCE"], 1);
        assert_eq!(b.pm2_env["herd_worker"], "web:1");
        assert_eq!(a.pm2_env["exec_mode"], "cluster_mode");
        assert_eq!(a.pm2_env["pm_exec_path"], "/srv/app/server.js");
        assert_eq!(a.pm2_env["exec_interpreter"], "node");
        assert_eq!(a.pm2_env["node_args"], json!(["--max-old-space-size=128"]));
        assert_eq!(a.pm2_env["args"], json!(["--port", "1"]));
        assert_eq!(a.pm2_env["pm_uptime"], 9_000);
        assert_eq!(b.pm2_env["pm_uptime"], 5_000);
        assert_eq!(b.pm2_env["unstable_restarts"], 2);
        assert_eq!(b.pm2_env["exit_code"], 1);
        assert_eq!(a.pm2_env["restart_time"], 3);
        assert_eq!(a.monit.cpu, 12.3);
        assert_eq!((b.monit.memory, b.monit.cpu), (0, 0.0));
        // The env, and each variable at the top level unless pm2 uses the key.
        assert_eq!(a.pm2_env["env"]["PORT"], "8000");
        assert_eq!(a.pm2_env["PORT"], "8000");
        assert_eq!(a.pm2_env["status"], "online");
        assert_eq!(a.pm2_env["env"]["status"], "x");
    }

    #[test]
    fn a_program_without_interpreter() {
        let mut app = app();
        app.def.script = None;
        let list = jlist(&[app], 10_000, &mut Facts::default());
        assert_eq!(list[0].pm2_env["pm_exec_path"], "/usr/bin/node");
        assert_eq!(list[0].pm2_env["exec_interpreter"], "none");
        assert_eq!(list[0].pm2_env["node_args"], json!([]));
    }
}
