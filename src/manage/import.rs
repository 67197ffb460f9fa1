//! `herd import pm2`: take over the apps pm2 saved (`pm2 save` writes
//! `$PM2_HOME/dump.pm2`, default `~/.pm2/dump.pm2`), with the same
//! definitions, then tell the user to `herd save`.
//!
//! The saved list holds one record per *process* (pm2's `pm2_env`, without
//! `pm_id` and `instances`): the records of one name are one app, their
//! count its instances. Each app is written back as the pm2 process-file app
//! it came from (script, args, cwd, env, exec_mode, node_args, interpreter,
//! log paths, restart and stop options …) and read by herd's own config-file
//! loader, so every pm2 key herd understands in an ecosystem file it
//! understands here, and every one it does not is named in the report — the
//! loader's warnings, plus what only an import meets (pm2's own variables
//! dropped from the env, per-process log files, modules, names herd runs
//! already). Like a config file, the import is checked whole before
//! anything starts. Apps pm2 saved stopped are imported stopped, as
//! `pm2 resurrect` keeps them.
//!
//! pm2 still running the same apps would fight herd over their ports: an
//! app whose pid file (`pm_pid_path`) names a live process refuses the
//! import unless `--force`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use herd_protocol::{Request, Response};
use serde_json::{json, Map, Value};

use super::files::{name_of, split_only};
use super::{client, print_done, settle};
use crate::appfile;
use crate::options::app_def;
use crate::UsageError;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  herd import pm2                      ($PM2_HOME/dump.pm2, or ~/.pm2/dump.pm2)\n  herd import pm2 --dump /srv/old/dump.pm2 --only api,worker\n  herd save                            (then: keep them for resurrect and boot)"
)]
pub struct ImportArgs {
    /// Whose saved app list to read.
    #[arg(value_enum)]
    from: Source,
    /// The saved list (default: $PM2_HOME/dump.pm2, else ~/.pm2/dump.pm2).
    #[arg(long, value_name = "PATH")]
    dump: Option<PathBuf>,
    /// Only these apps, by name ("api,worker" or "api worker").
    #[arg(long, value_name = "APPS")]
    only: Option<String>,
    /// Import even apps that pm2 still runs (they will compete for their ports).
    #[arg(short = 'f', long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Source {
    /// pm2's `dump.pm2`, what `pm2 save` writes.
    Pm2,
}

/// pm2 keys carried over as they are when they hold something other than
/// pm2's default (the default is what herd does too).
const CARRIED: &[&str] = &[
    "max_memory_restart",
    "kill_timeout",
    "listen_timeout",
    "wait_ready",
    "shutdown_with_message",
    "restart_delay",
    "exp_backoff_restart_delay",
    "min_uptime",
    "max_restarts",
    "time",
    "log_date_format",
    "watch",
    "ignore_watch",
    "watch_delay",
    "cron_restart",
    "increment_var",
    "stop_exit_codes",
    "filter_env",
    "port",
    "log_type",
    "interpreter_args",
    "disable_logs",
    "source_map_support",
    "exec_mode",
];

/// One app read from the saved list.
#[derive(Debug)]
struct Saved {
    name: String,
    /// The app as a pm2 process-file entry.
    app: Value,
    /// pm2 saved every process of it stopped.
    stopped: bool,
    /// Live pids pm2 still runs it as.
    live: Vec<u32>,
}

pub fn main(args: ImportArgs) -> anyhow::Result<i32> {
    let Source::Pm2 = args.from;
    let dump = match &args.dump {
        Some(p) => p.clone(),
        None => default_dump()?,
    };
    let text = std::fs::read_to_string(&dump).map_err(|e| {
        UsageError(format!(
            "cannot read pm2's saved list {}: {e}; run `pm2 save` first, or give --dump PATH",
            dump.display()
        ))
    })?;
    let records: Vec<Value> = match serde_json::from_str(&text) {
        Ok(Value::Array(r)) => r,
        _ => {
            return Err(UsageError(format!(
                "{} is not pm2's saved list (a JSON array of processes, as `pm2 save` writes)",
                dump.display()
            ))
            .into())
        }
    };
    let mut notes = Vec::new();
    let mut saved = group(&records, &dump, &mut notes)?;
    if let Some(only) = &args.only {
        let wanted = split_only(only);
        for w in &wanted {
            if !saved.iter().any(|s| s.name == *w) {
                return Err(UsageError(format!(
                    "--only {w}: {} has no app named '{w}'; its apps are: {}",
                    dump.display(),
                    saved
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into());
            }
        }
        saved.retain(|s| wanted.contains(&s.name.as_str()));
    }
    if !args.force {
        let busy: Vec<String> = saved
            .iter()
            .filter(|s| !s.live.is_empty())
            .map(|s| {
                let pids: Vec<String> = s.live.iter().map(u32::to_string).collect();
                format!("{} (pid {})", s.name, pids.join(", "))
            })
            .collect();
        if !busy.is_empty() {
            return Err(UsageError(format!(
                "pm2 still runs {}: stop pm2's copies first (`pm2 kill`), or they will fight \
                 over their ports; --force imports anyway",
                busy.join(", ")
            ))
            .into());
        }
    }
    // Names herd runs already are left alone.
    let running = match client::ask(Request::List {
        show_secrets: false,
    })? {
        Response::Apps { apps } => apps,
        _ => Vec::new(),
    };
    saved.retain(|s| {
        let here = running.iter().any(|a| a.name == s.name);
        if here {
            notes.push(format!(
                "{}: herd runs an app of that name already: skipped",
                s.name
            ));
        }
        !here
    });
    if saved.is_empty() {
        for n in &notes {
            eprintln!("herd: {n}");
        }
        println!("nothing to import from {}", dump.display());
        return Ok(0);
    }

    // Through herd's config-file loader, as a pm2 JSON process file.
    let dir = TempDir::new()?;
    let file = dir.0.join("dump.pm2.json");
    let apps: Vec<&Value> = saved.iter().map(|s| &s.app).collect();
    std::fs::write(&file, serde_json::to_vec_pretty(&json!({ "apps": apps }))?)?;
    let label = file.display().to_string();
    let (loaded, warnings) = appfile::load(&file, None).map_err(|e| {
        UsageError(format!(
            "{}; nothing was imported",
            relabel(&e.0, &label, &dump)
        ))
    })?;
    for w in warnings {
        notes.push(relabel(&w, &label, &dump));
    }
    let mut defs = Vec::new();
    for a in &loaded {
        let def = app_def(&a.options, &a.daemon, &a.command, &a.base).map_err(|e| {
            UsageError(format!(
                "{}: app '{}': {e}; nothing was imported (leave it out with --only)",
                dump.display(),
                name_of(a)
            ))
        })?;
        defs.push(def);
    }
    let stopped: Vec<String> = saved
        .iter()
        .filter(|s| s.stopped)
        .map(|s| s.name.clone())
        .collect();
    for name in &stopped {
        notes.push(format!(
            "{name}: pm2 saved it stopped: imported stopped (`herd start {name}` starts it)"
        ));
    }
    let names: Vec<String> = defs.iter().map(|d| d.spec.name.clone()).collect();
    let summary: Vec<String> = defs
        .iter()
        .map(|d| match d.spec.instances {
            _ if stopped.contains(&d.spec.name) => format!("{} (stopped)", d.spec.name),
            1 => d.spec.name.clone(),
            n => format!("{} ({n} workers)", d.spec.name),
        })
        .collect();
    let code = match client::ask(Request::Start {
        apps: defs,
        update: false,
        restart: false,
        stopped,
    })? {
        Response::Apps { .. } => settle::wait_and_print(&names, false)?,
        other => {
            print_done(other);
            0
        }
    };
    println!("imported from {}: {}", dump.display(), summary.join(", "));
    if !notes.is_empty() {
        println!("not carried over as it was:");
        for n in &notes {
            println!("  - {n}");
        }
    }
    println!(
        "next: `herd save`, so that `herd resurrect` and `herd startup`'s unit start them \
         (and `pm2 unstartup` if pm2 started them at boot)"
    );
    Ok(code)
}

/// `$PM2_HOME/dump.pm2`, else `~/.pm2/dump.pm2`.
fn default_dump() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("PM2_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("dump.pm2"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            UsageError("HOME is not set: give the saved list with --dump PATH".into())
        })?;
    Ok(PathBuf::from(home).join(".pm2").join("dump.pm2"))
}

/// pm2's own variables in a process's env (not the app's): its `PM2_*`,
/// `unique_id`, and the module settings it files under the app's name.
fn pm2_variable(key: &str, app: &str, value: &Value) -> bool {
    key.starts_with("PM2_")
        || matches!(key, "unique_id" | "NODE_APP_INSTANCE" | "pm_id" | "_")
        || (key == app && (value == "{}" || value.is_object()))
}

/// An env value as the process got it: pm2 passes objects and arrays as JSON text.
fn env_value(value: &Value) -> Value {
    match value {
        Value::Object(_) | Value::Array(_) => Value::String(value.to_string()),
        other => other.clone(),
    }
}

/// A loader message about the generated file, told about the saved list
/// (positions in the generated file mean nothing to the user).
fn relabel(message: &str, label: &str, dump: &Path) -> String {
    let digits = |t: &str| t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find(label) {
        out.push_str(&rest[..at]);
        out.push_str(&dump.display().to_string());
        rest = &rest[at + label.len()..];
        // `:LINE:COLUMN` after it.
        if let Some(t) = rest.strip_prefix(':') {
            let n = digits(t);
            if let Some(u) = t[n..].strip_prefix(':').filter(|_| n > 0) {
                let m = digits(u);
                if m > 0 {
                    rest = &u[m..];
                }
            }
        }
    }
    out.push_str(rest);
    out
}

/// pm2's default log file of an app, as pm2 names it: `$PM2_HOME/logs/NAME-out.log`,
/// `NAME-error.log`, or `NAME.log` for both (`kind` empty).
fn is_default_log(path: &str, pm2_home: &Path, name: &str, kind: &str) -> bool {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '\\' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let file = match kind {
        "" => format!("{safe}.log"),
        kind => format!("{safe}-{kind}.log"),
    };
    Path::new(path) == pm2_home.join("logs").join(file)
}

/// `app-out-3.log` → `app-out.log`: pm2's per-process suffix off.
fn without_process_suffix(path: &str) -> String {
    if let Some(stem) = path.strip_suffix(".log") {
        if let Some((head, digits)) = stem.rsplit_once('-') {
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                return format!("{head}.log");
            }
        }
    }
    path.to_string()
}

/// pm2 numbered this process's file `key` with its id (`app-out-3.log` for
/// pm_id 3): it did not merge the app's logs.
fn numbered_by_pm2(process: &Value, key: &str) -> bool {
    match (process[key].as_str(), process["pm_id"].as_u64()) {
        (Some(path), Some(id)) => path.ends_with(&format!("-{id}.log")),
        _ => false,
    }
}

/// The saved records as apps: grouped by name in their order, each written
/// as the pm2 process-file entry it came from.
fn group(
    records: &[Value],
    dump: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<Saved>, UsageError> {
    let pm2_home = dump.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut names: Vec<String> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let Some(name) = r["name"].as_str() else {
            return Err(UsageError(format!(
                "{}: process {} has no name: is this pm2's saved list?",
                dump.display(),
                i + 1
            )));
        };
        if r["pmx_module"].as_bool() == Some(true) {
            notes.push(format!("{name}: a pm2 module, not an app: skipped"));
            continue;
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    let mut out = Vec::new();
    let mut dropped = BTreeSet::new();
    for name in names {
        let procs: Vec<&Value> = records
            .iter()
            .filter(|r| r["name"] == name.as_str() && r["pmx_module"].as_bool() != Some(true))
            .collect();
        let first = procs[0];
        let mut app = Map::new();
        app.insert("name".into(), json!(name));
        let Some(script) = first["pm_exec_path"].as_str() else {
            return Err(UsageError(format!(
                "{}: app '{name}' has no pm_exec_path: is this pm2's saved list?",
                dump.display()
            )));
        };
        app.insert("script".into(), json!(script));
        if let Some(cwd) = first["pm_cwd"].as_str() {
            app.insert("cwd".into(), json!(cwd));
        }
        app.insert("instances".into(), json!(procs.len()));
        if let Some(args) = first["args"].as_array().filter(|a| !a.is_empty()) {
            app.insert("args".into(), Value::Array(args.clone()));
        }
        if let Some(args) = first["node_args"].as_array().filter(|a| !a.is_empty()) {
            app.insert("node_args".into(), Value::Array(args.clone()));
        }
        match first["exec_interpreter"].as_str() {
            None | Some("node") => {}
            Some(other) => {
                app.insert("interpreter".into(), json!(other));
            }
        }
        for key in CARRIED {
            let v = &first[*key];
            let default = match v {
                Value::Null | Value::Bool(false) => true,
                Value::Array(a) => a.is_empty(),
                Value::String(s) => s.is_empty(),
                _ => false,
            };
            if !default {
                app.insert(key.to_string(), v.clone());
            }
        }
        if first["autorestart"] == false {
            app.insert("autorestart".into(), json!(false));
        }
        if first["treekill"] == false {
            app.insert("treekill".into(), json!(false));
        }
        match first["namespace"].as_str() {
            None | Some("default") => {}
            Some(ns) => {
                app.insert("namespace".into(), json!(ns));
            }
        }
        match first["instance_var"].as_str() {
            None | Some("NODE_APP_INSTANCE") => {}
            Some(v) => {
                app.insert("instance_var".into(), json!(v));
            }
        }
        // The env the app ran with, without what pm2 put in it.
        let mut env = Map::new();
        if let Some(saved_env) = first["env"].as_object() {
            for (k, v) in saved_env {
                if pm2_variable(k, &name, v) {
                    if *k != name {
                        dropped.insert(k.clone());
                    }
                } else {
                    env.insert(k.clone(), env_value(v));
                }
            }
        }
        app.insert("env".into(), Value::Object(env));
        // Log files: pm2's default ones become herd's; others are kept. pm2
        // numbers each process's files by its id when it does not merge
        // them: herd then writes one per instance, numbered by instance.
        let mut split = false;
        for (key, pm2_key, kind) in [
            ("out_file", "pm_out_log_path", "out"),
            ("error_file", "pm_err_log_path", "error"),
            ("log_file", "pm_log_path", ""),
        ] {
            let Some(path) = first[pm2_key].as_str() else {
                continue;
            };
            if matches!(path, "/dev/null" | "NULL") {
                app.insert(key.into(), json!("/dev/null"));
                continue;
            }
            let per_process = procs.iter().any(|p| p[pm2_key] != first[pm2_key])
                || (first["merge_logs"].as_bool() != Some(true)
                    && procs.iter().all(|p| numbered_by_pm2(p, pm2_key)));
            split |= per_process;
            let path = if per_process {
                without_process_suffix(path)
            } else {
                path.to_string()
            };
            if is_default_log(&path, &pm2_home, &name, kind) {
                // herd's own file instead (for both streams: `true`, its default).
                if key == "log_file" {
                    app.insert(key.into(), json!(true));
                }
                continue;
            }
            app.insert(key.into(), json!(path));
        }
        if split {
            app.insert("merge_logs".into(), json!(false));
            notes.push(format!(
                "{name}: pm2 wrote each process's logs to files of their own, numbered by \
                 process id; herd writes each instance's, numbered by instance (-0.log, -1.log …)"
            ));
        }
        let stopped = procs
            .iter()
            .all(|p| matches!(p["status"].as_str(), Some("stopped")));
        let live = procs.iter().filter_map(|p| live_pid(p)).collect();
        out.push(Saved {
            name,
            app: Value::Object(app),
            stopped,
            live,
        });
    }
    if out.is_empty() {
        return Err(UsageError(format!("{}: no apps to import", dump.display())));
    }
    if !dropped.is_empty() {
        notes.push(format!(
            "pm2's own variables were left out of the apps' env: {} (and the module settings \
             pm2 files under each app's name)",
            dropped.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(out)
}

/// The pid in a process's pm2 pid file, if that process runs.
fn live_pid(record: &Value) -> Option<u32> {
    let path = record["pm_pid_path"].as_str()?;
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
    Some(pid as u32)
}

/// A private folder for the generated process file, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("herd-import-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, out: &str, status: &str) -> Value {
        json!({
            "name": name,
            "pm_exec_path": "/srv/app/hello.js",
            "pm_cwd": "/srv/app",
            "exec_interpreter": "node",
            "exec_mode": "cluster_mode",
            "node_args": [],
            "args": ["--port", "1"],
            "pm_out_log_path": out,
            "pm_err_log_path": format!("/h/.pm2/logs/{name}-error.log"),
            "status": status,
            "autorestart": true,
            "watch": false,
            "kill_timeout": 3000,
            "namespace": "default",
            "env": {"PORT": 8000, "PM2_HOME": "/h/.pm2", "unique_id": "x", name: "{}"},
        })
    }

    #[test]
    fn processes_of_one_name_are_one_app() {
        let dump = Path::new("/h/.pm2/dump.pm2");
        let records = vec![
            record("web", "/h/.pm2/logs/web-out-0.log", "online"),
            record("jobs", "/var/log/jobs.log", "stopped"),
            record("web", "/h/.pm2/logs/web-out-2.log", "online"),
        ];
        let mut notes = Vec::new();
        let saved = group(&records, dump, &mut notes).unwrap();
        assert_eq!(saved.len(), 2);
        let web = &saved[0].app;
        assert_eq!(web["instances"], 2);
        assert_eq!(web["script"], "/srv/app/hello.js");
        assert_eq!(web["args"], json!(["--port", "1"]));
        assert_eq!(web["kill_timeout"], 3000);
        assert_eq!(web["exec_mode"], "cluster_mode");
        assert_eq!(web["env"], json!({"PORT": 8000}));
        // pm2's default log paths are left for herd's own.
        assert!(
            web.get("out_file").is_none() && web.get("error_file").is_none(),
            "{web}"
        );
        assert!(web.get("watch").is_none() && web.get("namespace").is_none());
        assert!(!saved[0].stopped);
        // pm2 numbered web's files per process: herd writes one per instance.
        assert_eq!(web["merge_logs"], false);
        assert!(saved[1].app.get("merge_logs").is_none());
        assert_eq!(saved[1].app["out_file"], "/var/log/jobs.log");
        assert!(saved[1].stopped);
        assert!(notes.iter().any(|n| n.contains("PM2_HOME")), "{notes:?}");
    }

    #[test]
    fn messages_name_the_saved_list() {
        let dump = Path::new("/h/.pm2/dump.pm2");
        assert_eq!(
            relabel("/tmp/x.json:54:17: apps[0].env: bad", "/tmp/x.json", dump),
            "/h/.pm2/dump.pm2: apps[0].env: bad"
        );
        assert_eq!(
            relabel("/tmp/x.json: app 'a': pm2's 'watch'", "/tmp/x.json", dump),
            "/h/.pm2/dump.pm2: app 'a': pm2's 'watch'"
        );
        assert_eq!(env_value(&json!({"a": 1})), json!(r#"{"a":1}"#));
        assert!(pm2_variable("web", "web", &json!({})));
    }

    #[test]
    fn per_process_suffixes() {
        assert_eq!(
            without_process_suffix("/l/app-out-12.log"),
            "/l/app-out.log"
        );
        assert_eq!(without_process_suffix("/l/app-2024.log"), "/l/app.log");
        assert_eq!(without_process_suffix("/l/app.txt"), "/l/app.txt");
        // One process that pm2 did not merge: its file carries its id.
        let one = json!({"pm_id": 4, "pm_out_log_path": "/l/api-out-4.log"});
        assert!(numbered_by_pm2(&one, "pm_out_log_path"));
        assert!(!numbered_by_pm2(&one, "pm_err_log_path"));
        let merged = json!({"pm_id": 4, "pm_out_log_path": "/l/api-out.log"});
        assert!(!numbered_by_pm2(&merged, "pm_out_log_path"));
        assert!(is_default_log(
            "/h/logs/my-app-x-out.log",
            Path::new("/h"),
            "my_app x",
            "out"
        ));
        assert!(is_default_log(
            "/h/logs/web.log",
            Path::new("/h"),
            "web",
            ""
        ));
    }
}
