//! pm2's verbs, JSON and habits on herd's CLI (issue 12 items 4, 9, 10), end
//! to end against herd alone — CI never needs pm2: config files as units
//! (`start|restart|reload|stop|delete FILE`, `startOrReload` and kin, `--env`,
//! `--only`), `jlist`/`prettylist` in pm2's schema (checked against pm2 7's
//! real output recorded in tests/fixtures/pm2/jlist.json), `env`, `reset`,
//! `sendSignal`, `-f`, `--namespace`, `-l`, `--no-autorestart`, `herd start`
//! waiting until the app is online, `herd import pm2` from a real
//! `dump.pm2`, `completion`, and the exit statuses (0 ok, 1 failed, 2 a
//! usage mistake that changed nothing). Real daemons in temporary homes, real
//! Node apps, real sockets; everything started is stopped when a test ends.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use herd_testkit::*;
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn repo() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

fn hello() -> String {
    format!("{}/examples/node/hello.js", repo())
}

fn fixtures() -> PathBuf {
    Path::new(repo()).join("tests/fixtures/pm2")
}

/// `herd ARGS` in `dir`, with extra variables.
fn run_in(d: &Daemon, dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut c = d.command(args);
    c.current_dir(dir);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().expect("run herd")
}

fn ok_in(d: &Daemon, dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> String {
    let out = run_in(d, dir, args, vars);
    assert!(
        out.status.success(),
        "herd {args:?} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn fails_in(d: &Daemon, dir: &Path, args: &[&str], vars: &[(&str, &str)], code: i32) -> String {
    let out = run_in(d, dir, args, vars);
    assert_eq!(
        out.status.code(),
        Some(code),
        "herd {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// `herd jlist`, parsed.
fn jlist(d: &Daemon) -> Vec<Value> {
    let out = d.ok(&["jlist"]);
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("jlist is not JSON ({e}): {out}"))
        .as_array()
        .expect("an array")
        .clone()
}

/// `herd env TARGET` as (name, value) pairs.
fn env_of(d: &Daemon, target: &str) -> Vec<(String, String)> {
    d.ok(&["env", target])
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn var(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn pids(d: &Daemon, name: &str) -> BTreeSet<i32> {
    worker_pids(&d.app(name)).into_iter().collect()
}

fn names(d: &Daemon) -> Vec<String> {
    d.list()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

/// A pm2 process file in `dir`: `web` (2 workers) and `api`, hello.js each,
/// with `WHO` in env and env_production.
fn write_ecosystem(dir: &Path, who: &str, web_port: u16, api_port: u16) -> PathBuf {
    let file = dir.join("ecosystem.config.js");
    std::fs::write(
        &file,
        format!(
            "module.exports = {{ apps: [\n\
             {{ name: 'web', script: '{hello}', instances: 2, env: {{ PORT: {web_port}, WHO: '{who}' }},\n\
               env_production: {{ WHO: 'prod' }} }},\n\
             {{ name: 'api', script: '{hello}', env: {{ PORT: {api_port}, WHO: '{who}' }},\n\
               env_production: {{ WHO: 'prod' }} }},\n\
             ] }};\n",
            hello = hello()
        ),
    )
    .unwrap();
    file
}

#[test]
fn file_verbs_apply_the_file_to_its_apps() {
    need_node!();
    let d = Daemon::new();
    let dir = TempDir::new("eco");
    let (web_port, api_port) = (free_port(), free_port());
    write_ecosystem(dir.path(), "one", web_port, api_port);
    let f = "ecosystem.config.js";

    // --only: just web.
    let table = ok_in(&d, dir.path(), &["start", f, "--only", "web"], &[]);
    assert!(table.contains("web") && !table.contains("api"), "{table}");
    assert_eq!(names(&d), ["web"]);
    assert_eq!(var(&env_of(&d, "web:1"), "WHO").as_deref(), Some("one"));
    let web1 = pids(&d, "web");

    // reload FILE: web reloaded onto the new env, api (not running) started.
    write_ecosystem(dir.path(), "two", web_port, api_port);
    ok_in(&d, dir.path(), &["reload", f], &[]);
    let web2 = pids(&d, "web");
    assert!(web2.is_disjoint(&web1), "{web1:?} {web2:?}");
    assert_eq!(var(&env_of(&d, "web"), "WHO").as_deref(), Some("two"));
    assert_eq!(var(&env_of(&d, "api"), "WHO").as_deref(), Some("two"));
    d.wait_online("api", 1);

    // --env production picks env_production, for every app of the file.
    ok_in(
        &d,
        dir.path(),
        &["startOrReload", f, "--env", "production"],
        &[],
    );
    assert_eq!(var(&env_of(&d, "web:0"), "WHO").as_deref(), Some("prod"));
    assert_eq!(var(&env_of(&d, "api"), "WHO").as_deref(), Some("prod"));

    // restart FILE --only api: api restarted, web untouched.
    let (web3, api3) = (pids(&d, "web"), pids(&d, "api"));
    ok_in(&d, dir.path(), &["restart", f, "--only", "api"], &[]);
    assert_eq!(pids(&d, "web"), web3);
    assert!(pids(&d, "api").is_disjoint(&api3));
    ok_in(&d, dir.path(), &["startOrRestart", f], &[]);
    ok_in(
        &d,
        dir.path(),
        &["startOrGracefulReload", f, "--update-env"],
        &[],
    );
    d.wait_online("web", 2);

    // --only a,b stops both (pm2 compares the whole string and stops none).
    ok_in(&d, dir.path(), &["stop", f, "--only", "web,api"], &[]);
    for name in ["web", "api"] {
        assert_eq!(d.app(name)["status"], "stopped");
    }
    // A name the file does not have: a usage mistake that changes nothing.
    let err = fails_in(&d, dir.path(), &["start", f, "--only", "web,nope"], &[], 2);
    assert!(
        err.contains("no app named 'nope'") && err.contains("web, api"),
        "{err}"
    );
    assert_eq!(d.app("web")["status"], "stopped");
    // --only and --env NAME belong to files.
    let err = d.fails(&["stop", "web", "--only", "web"], 2);
    assert!(err.contains("config file"), "{err}");

    ok_in(&d, dir.path(), &["delete", f, "--only", "web"], &[]);
    assert_eq!(names(&d), ["api"]);
    let out = ok_in(&d, dir.path(), &["delete", f], &[]);
    assert!(out.contains("web is not in herd's list: skipped"), "{out}");
    assert!(d.list().is_empty());
}

#[test]
fn a_file_with_one_bad_app_is_refused_whole_and_changes_nothing() {
    need_node!();
    let d = Daemon::new();
    let dir = TempDir::new("bad-eco");
    let port = free_port();
    let file = dir.join("ecosystem.config.js");
    let write = |second: &str, who: &str| {
        std::fs::write(
            &file,
            format!(
                "module.exports = {{ apps: [\n\
                 {{ name: 'good', script: '{}', env: {{ PORT: {port}, WHO: '{who}' }} }},\n\
                 {second}\n] }};\n",
                hello()
            ),
        )
        .unwrap()
    };
    write("{ name: 'bad', script: './missing.js' }", "one");
    let err = fails_in(&d, dir.path(), &["start", "ecosystem.config.js"], &[], 2);
    assert!(
        err.contains("app 'bad'") && err.contains("nothing was started"),
        "{err}"
    );
    assert!(d.list().is_empty(), "nothing started");

    // With the good app running, a reload of a file that gained a bad app
    // leaves the good one as it was.
    write("", "one");
    ok_in(&d, dir.path(), &["start", "ecosystem.config.js"], &[]);
    let before = pids(&d, "good");
    write("{ name: 'bad', script: './missing.js' }", "two");
    fails_in(&d, dir.path(), &["reload", "ecosystem.config.js"], &[], 2);
    assert_eq!(pids(&d, "good"), before);
    assert_eq!(var(&env_of(&d, "good"), "WHO").as_deref(), Some("one"));
    assert_eq!(names(&d), ["good"]);
    // --only leaves the bad app out.
    ok_in(
        &d,
        dir.path(),
        &["reload", "ecosystem.config.js", "--only", "good"],
        &[],
    );
    assert_eq!(var(&env_of(&d, "good"), "WHO").as_deref(), Some("two"));
}

#[test]
fn start_with_no_argument_reads_ecosystem_config_js() {
    need_node!();
    let d = Daemon::new();
    let empty = TempDir::new("no-eco");
    let err = fails_in(&d, empty.path(), &["start"], &[], 2);
    assert!(err.contains("no ecosystem.config.js"), "{err}");
    let dir = TempDir::new("eco-default");
    write_ecosystem(dir.path(), "one", free_port(), free_port());
    ok_in(&d, dir.path(), &["start"], &[]);
    assert_eq!(names(&d), ["web", "api"]);
}

#[test]
fn start_waits_until_online_and_shows_pids_and_memory() {
    need_node!();
    let d = Daemon::new();
    let port = free_port().to_string();
    let out = d.ok(&[
        "start",
        &hello(),
        "--name",
        "web",
        "-i",
        "2",
        "--env",
        &format!("PORT={port}"),
    ]);
    // The first table: online, real pids, real memory.
    let app = d.app("web");
    assert_eq!(app["status"], "online", "{out}");
    for pid in worker_pids(&app) {
        assert!(out.contains(&pid.to_string()), "pid {pid} not shown: {out}");
    }
    let worker_rows: Vec<&str> = out.lines().filter(|l| l.contains("worker ")).collect();
    assert_eq!(worker_rows.len(), 2, "{out}");
    for row in worker_rows {
        assert!(row.contains("online") && !row.contains(" 0b"), "{row}");
    }

    // An app that keeps crashing: errored, exit status 1, said why.
    let dir = TempDir::new("crash");
    let crash = dir.join("crash.js");
    std::fs::write(&crash, "process.exit(3);\n").unwrap();
    let err = d.fails(
        &[
            "start",
            crash.to_str().unwrap(),
            "--max-restarts",
            "2",
            "--restart-delay",
            "10ms",
            "--max-restart-delay",
            "20ms",
            "--min-uptime",
            "5s",
        ],
        1,
    );
    assert!(err.contains("crash errored"), "{err}");
}

#[test]
fn env_reset_send_signal_force_namespace_log_and_no_autorestart() {
    need_node!();
    let d = Daemon::new();
    let port = free_port().to_string();
    let port_env = format!("PORT={port}");
    d.ok(&[
        "start",
        &hello(),
        "--name",
        "w",
        "--namespace",
        "team",
        "-l",
        "--no-autorestart",
        "--merge-logs",
        "--update-env",
        "--env",
        &port_env,
    ]);
    let p = &jlist(&d)[0];
    assert_eq!(p["pm2_env"]["namespace"], "team");
    assert_eq!(p["pm2_env"]["autorestart"], false);
    let combined = d.path().join("logs/w.log");
    assert_eq!(p["pm2_env"]["pm_log_path"], combined.to_str().unwrap());
    // Both streams reach the combined file.
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&combined).is_ok_and(|l| l.contains("listening on port"))
    }));

    // env: what the worker really got, its instance variable included.
    let env = env_of(&d, "w");
    assert_eq!(var(&env, "PORT"), Some(port.clone()));
    assert_eq!(var(&env, "NODE_APP_INSTANCE").as_deref(), Some("0"));
    assert!(d.fails(&["env", "w:5"], 2).contains("no worker 5"));
    assert!(d.fails(&["env", "nope"], 2).contains("no app named"));

    // Started again while online: refused (exit 2) unless -f, which takes
    // the new definition.
    let err = d.fails(&["start", &hello(), "--name", "w", "--env", &port_env], 2);
    assert!(err.contains("-f"), "{err}");
    let before = pids(&d, "w");
    d.ok(&[
        "start",
        &hello(),
        "--name",
        "w",
        "-f",
        "--namespace",
        "team",
        "--env",
        &port_env,
        "--env",
        "EXTRA=1",
    ]);
    assert!(pids(&d, "w").is_disjoint(&before));
    assert_eq!(var(&env_of(&d, "w"), "EXTRA").as_deref(), Some("1"));

    // The namespace is a selector.
    d.ok(&["stop", "team"]);
    assert_eq!(d.app("w")["status"], "stopped");
    let p = &jlist(&d)[0];
    assert_eq!(
        (p["pid"].as_i64(), p["pm2_env"]["status"].as_str()),
        (Some(0), Some("stopped"))
    );
    assert_eq!(p["monit"]["memory"], 0);
    // Stopped, a worker's env is the app's.
    assert_eq!(var(&env_of(&d, "w"), "PORT"), Some(port.clone()));
    d.ok(&["start", "w"]);
    d.wait_online("w", 1);

    // reset: the restart counters go back to 0; created_at moves on. Before
    // it, restart_time counts as pm2's: the `start -f` reload, kept across
    // the stop and start, and this reload.
    d.ok(&["reload", "w"]);
    let p = jlist(&d)[0].clone();
    assert_eq!(p["pm2_env"]["restart_time"], 2, "{p:#}");
    let created = p["pm2_env"]["created_at"].as_u64().unwrap();
    d.ok(&["reset", "w"]);
    let p = &jlist(&d)[0];
    assert_eq!(p["pm2_env"]["restart_time"], 0);
    assert!(p["pm2_env"]["created_at"].as_u64().unwrap() >= created);
    assert_eq!(d.app("w")["workers"][0]["restarts"], 0);
    assert!(d.fails(&["reset", "nope"], 2).contains("no app named"));

    // reload --update-env merges the current environment into the app's.
    let out = d
        .command(&["reload", "w", "--update-env"])
        .env("FROM_SHELL", "yes")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(var(&env_of(&d, "w"), "FROM_SHELL").as_deref(), Some("yes"));
    assert_eq!(var(&env_of(&d, "w"), "PORT"), Some(port));

    // sendSignal is signal; with --no-autorestart a killed worker stays down.
    let pid = worker_pids(&d.app("w"))[0];
    d.ok(&["sendSignal", "SIGKILL", "w"]);
    assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
    assert!(wait_until(Duration::from_secs(10), || {
        d.app("w")["workers"][0]["status"] != "online"
    }));
    assert!(worker_pids(&d.app("w")).is_empty());
}

/// Keys of pm2's jlist element that herd leaves out, on purpose (see the
/// README's differences from pm2).
const NOT_PRODUCED: &[&str] = &[
    "pm_pid_path",     // herd writes no pid files
    "windowsHide",     // a Windows option
    "kill_retry_time", // herd waits on the process, it does not poll
    "_pm2_version",
    "_tree_pids",
    "unique_id",
    "env_production", // pm2 keeps the config's env_* objects; herd merges them into env
    "filter_env",
];

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[test]
fn jlist_has_pm2s_schema_as_pm2_7_prints_it() {
    need_node!();
    let d = Daemon::new();
    let logs = TempDir::new("fixture-logs");
    let (web_port, jobs_port) = (free_port().to_string(), free_port().to_string());
    let vars = [
        ("WEB_PORT", web_port.as_str()),
        ("JOBS_PORT", jobs_port.as_str()),
        ("FIXTURE_LOGS", logs.path().to_str().unwrap()),
    ];
    let file = fixtures().join("ecosystem.config.js");
    ok_in(
        &d,
        Path::new(repo()),
        &["start", file.to_str().unwrap(), "--env", "production"],
        &vars,
    );
    d.ok(&["stop", "ticker"]);
    d.wait_online("web", 2);

    let pm2: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("jlist.json")).unwrap())
            .unwrap();
    let herd = jlist(&d);
    assert_eq!(herd.len(), pm2.len(), "one element per process: {herd:#?}");
    // Ordered by pm_id, then instance.
    let order: Vec<(u64, u64)> = herd
        .iter()
        .map(|p| {
            (
                p["pm_id"].as_u64().unwrap(),
                p["pm2_env"]["NODE_APP_INSTANCE"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);

    for theirs in &pm2 {
        let name = theirs["name"].as_str().unwrap();
        let instance = &theirs["pm2_env"]["NODE_APP_INSTANCE"];
        let ours = herd
            .iter()
            .find(|p| p["name"] == name && &p["pm2_env"]["NODE_APP_INSTANCE"] == instance)
            .unwrap_or_else(|| panic!("no {name} instance {instance} in {herd:#?}"));
        let keys =
            |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
        assert_eq!(keys(ours), keys(theirs), "{name}: top-level keys");
        assert_eq!(
            keys(&ours["monit"]),
            keys(&theirs["monit"]),
            "{name}: monit"
        );
        let (te, oe) = (&theirs["pm2_env"], &ours["pm2_env"]);
        let env_vars: BTreeSet<String> = keys(&te["env"]);
        for (key, value) in te.as_object().unwrap() {
            if env_vars.contains(key) || NOT_PRODUCED.contains(&key.as_str()) {
                continue;
            }
            let Some(mine) = oe.get(key) else {
                panic!("{name}: pm2_env.{key} is missing: {oe:#}");
            };
            assert_eq!(
                json_type(mine),
                json_type(value),
                "{name}: pm2_env.{key} is {mine}, pm2 has {value}"
            );
        }
        // The values tools read.
        for key in [
            "status",
            "instances",
            "exec_interpreter",
            "namespace",
            "node_args",
        ] {
            assert_eq!(oe[key], te[key], "{name}: pm2_env.{key}");
        }
        if te.get("args").is_some() {
            assert_eq!(oe["args"], te["args"], "{name}: args");
        }
        let path = te["pm_exec_path"]
            .as_str()
            .unwrap()
            .replace("@REPO@", repo());
        assert_eq!(oe["pm_exec_path"], path.as_str(), "{name}");
        assert_eq!(oe["env"]["PORT"].is_string(), name != "ticker");
        let pid = ours["pid"].as_i64().unwrap();
        if te["status"] == "online" {
            assert!(pid > 0 && process_alive(pid as i32), "{name}: pid {pid}");
            assert!(ours["monit"]["memory"].as_u64().unwrap() > 0, "{name}");
            let uptime = oe["pm_uptime"].as_u64().unwrap();
            assert!(uptime <= oe["created_at"].as_u64().unwrap() + 60_000);
        } else {
            assert_eq!(pid, 0, "{name}");
            assert_eq!(ours["monit"]["memory"], 0, "{name}");
        }
    }
    let web = herd.iter().find(|p| p["name"] == "web").unwrap();
    assert_eq!(web["pm2_env"]["exec_mode"], "cluster_mode");
    assert_eq!(web["pm2_env"]["env"]["NODE_ENV"], "production");
    assert_eq!(
        web["pm2_env"]["NODE_ENV"], "production",
        "env at the top too"
    );
    assert_eq!(web["pm2_env"]["max_memory_restart"], 200 << 20);
    let ticker = herd.iter().find(|p| p["name"] == "ticker").unwrap();
    assert_eq!(ticker["pm2_env"]["exec_interpreter"], "none");
    assert_eq!(ticker["pm2_env"]["exec_mode"], "fork_mode");
    assert!(ticker["pm2_env"]["exit_code"].is_number(), "{ticker:#}");

    // prettylist: the same, indented.
    let pretty: Value = serde_json::from_str(&d.ok(&["prettylist"])).unwrap();
    assert_eq!(pretty.as_array().unwrap().len(), herd.len());
    assert!(d.ok(&["prettylist"]).contains("\n  {"));
    // herd's own schema stays in list --json.
    assert_eq!(d.app("web")["workers"].as_array().unwrap().len(), 2);
}

/// hello.js answers on `port`.
fn assert_serves(port: u16) {
    let addr = format!("127.0.0.1:{port}");
    let ok = wait_until(Duration::from_secs(10), || {
        http_get(&addr, "/", Duration::from_secs(2))
            .is_ok_and(|(s, body)| s == 200 && body.starts_with("process "))
    });
    assert!(ok, "nothing serves {addr}");
}

/// tests/fixtures/pm2/dump.pm2 with its placeholders filled in.
fn fixture_dump(pm2_home: &Path, logs: &Path, web_port: u16, jobs_port: u16) -> PathBuf {
    let dump = std::fs::read_to_string(fixtures().join("dump.pm2"))
        .unwrap()
        .replace("@REPO@", repo())
        .replace("@PM2_HOME@", pm2_home.to_str().unwrap())
        .replace("@HOME@", pm2_home.to_str().unwrap())
        .replace("@LOGS@", logs.to_str().unwrap())
        .replace("@WEB_PORT@", &web_port.to_string())
        .replace("@JOBS_PORT@", &jobs_port.to_string());
    std::fs::create_dir_all(pm2_home.join("pids")).unwrap();
    let path = pm2_home.join("dump.pm2");
    std::fs::write(&path, dump).unwrap();
    path
}

#[test]
fn import_pm2_starts_the_saved_apps_with_their_definitions() {
    need_node!();
    let d = Daemon::new();
    let pm2_home = TempDir::new("pm2-home");
    let logs = TempDir::new("pm2-logs");
    let (web_port, jobs_port) = (free_port(), free_port());
    fixture_dump(pm2_home.path(), logs.path(), web_port, jobs_port);
    let home = pm2_home.path().to_str().unwrap();

    let err = d.fails(&["import", "pm2", "--dump", "/nonexistent/dump.pm2"], 2);
    assert!(err.contains("pm2 save"), "{err}");

    // pm2 still running web (its pid file names a live process): refused.
    let pid_file = pm2_home.path().join("pids/web-0.pid");
    std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
    let out = run_in(
        &d,
        pm2_home.path(),
        &["import", "pm2"],
        &[("PM2_HOME", home)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("pm2 still runs web"),
        "{}",
        text(&out.stderr)
    );
    assert!(d.list().is_empty());
    std::fs::remove_file(&pid_file).unwrap();

    let out = ok_in(
        &d,
        pm2_home.path(),
        &["import", "pm2"],
        &[("PM2_HOME", home)],
    );
    assert!(out.contains("herd save"), "{out}");
    assert!(
        out.contains("web (2 workers)") && out.contains("ticker (stopped)"),
        "{out}"
    );
    assert!(out.contains("unique_id"), "pm2's variables named: {out}");
    assert_eq!(names(&d), ["web", "jobs", "ticker"]);

    // web: 2 workers, pm2's env (production profile) without pm2's own variables.
    let web = d.app("web");
    assert_eq!(
        (web["status"].as_str(), web["online"].as_u64()),
        (Some("online"), Some(2))
    );
    let env = env_of(&d, "web");
    assert_eq!(var(&env, "PORT"), Some(web_port.to_string()));
    assert_eq!(var(&env, "NODE_ENV").as_deref(), Some("production"));
    assert!(var(&env, "unique_id").is_none() && var(&env, "PM2_USAGE").is_none());
    assert_serves(web_port);
    // pm2's default log files become herd's own; pm2 wrote each process's
    // (web-out-0.log, web-out-3.log), so herd writes each instance's.
    assert_eq!(
        web["out_log"],
        d.path().join("logs/web-out.log").to_str().unwrap()
    );
    assert_eq!(web["merge_logs"], false);
    for i in 0..2 {
        let file = d.path().join(format!("logs/web-out-{i}.log"));
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_to_string(&file)
                .is_ok_and(|t| t.contains("listening on port"))),
            "{}",
            file.display()
        );
    }
    let p = jlist(&d);
    let web_p = p.iter().find(|p| p["name"] == "web").unwrap();
    assert_eq!(web_p["pm2_env"]["max_memory_restart"], 200 << 20);
    assert_eq!(web_p["pm2_env"]["kill_timeout"], 3000);

    // jobs: its args, node_args and own out_file.
    let jobs = p.iter().find(|p| p["name"] == "jobs").unwrap();
    assert_eq!(
        jobs["pm2_env"]["args"],
        serde_json::json!(["--queue", "jobs"])
    );
    assert_eq!(
        jobs["pm2_env"]["node_args"],
        serde_json::json!(["--max-old-space-size=128"])
    );
    assert_eq!(
        jobs["pm2_env"]["pm_out_log_path"],
        logs.join("jobs.out.log").to_str().unwrap()
    );
    assert_serves(jobs_port);

    // ticker: saved stopped, imported stopped, runs /bin/sleep as it is.
    let ticker = p.iter().find(|p| p["name"] == "ticker").unwrap();
    assert_eq!(ticker["pm2_env"]["status"], "stopped");
    assert_eq!(ticker["pm2_env"]["pm_exec_path"], "/bin/sleep");
    d.ok(&["start", "ticker"]);
    d.wait_online("ticker", 1);

    // Again: every app is there already, so nothing changes.
    let out = ok_in(
        &d,
        pm2_home.path(),
        &["import", "pm2"],
        &[("PM2_HOME", home)],
    );
    assert!(out.contains("nothing to import"), "{out}");
    assert_eq!(names(&d), ["web", "jobs", "ticker"]);
}

#[test]
fn completion_scripts_parse() {
    let d = Daemon::unstarted();
    let bash = d.ok(&["completion", "bash"]);
    assert!(
        bash.contains("startOrReload") && bash.contains("jlist"),
        "{bash:.300}"
    );
    let dir = TempDir::new("completion");
    let file = dir.join("herd.bash");
    std::fs::write(&file, &bash).unwrap();
    let out = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(out.status.success(), "bash -n: {}", text(&out.stderr));
    for shell in ["zsh", "fish"] {
        let script = d.ok(&["completion", shell]);
        assert!(
            script.contains("herd") && script.contains("prettylist"),
            "{shell}"
        );
        // Checked by the shell itself when it is installed.
        let file = dir.join(&format!("herd.{shell}"));
        std::fs::write(&file, &script).unwrap();
        if let Ok(out) = Command::new(shell).arg("-n").arg(&file).output() {
            assert!(out.status.success(), "{shell} -n: {}", text(&out.stderr));
        }
    }
    assert_eq!(d.herd(&["completion", "tcsh"]).status.code(), Some(2));
    assert!(
        !d.home.path().join("herd.sock").exists(),
        "no daemon needed"
    );
}

#[test]
fn usage_mistakes_exit_2_and_change_nothing() {
    let d = Daemon::new();
    assert_eq!(d.ok(&["jlist"]).trim(), "[]");
    let err = d.fails(&["startOrReload", "app.js"], 2);
    assert!(err.contains("not a config file"), "{err}");
    assert!(d
        .fails(&["reload", "nope.config.js"], 2)
        .contains("nope.config.js"));
    assert!(d
        .fails(&["start", "x.js", "--namespace", "all"], 2)
        .contains("--namespace"));
    assert!(d
        .fails(&["start", "x.js", "--only", "a"], 2)
        .contains("config file"));
    assert!(d.fails(&["import", "npm"], 2).contains("pm2"));
    assert!(d
        .fails(&["restart", "web", "--env", "production"], 2)
        .contains("config file"));
    assert!(d.list().is_empty());
}
