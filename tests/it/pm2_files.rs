//! Real pm2 process files (tests/pm2-files/, each recreated from a public
//! repository named at its top, with stand-in apps) run under the daemon as a
//! pm2 user runs them: `herd start FILE [--env NAME]` from the folder the
//! file's `post-deploy` line would use, then checked from outside — how many
//! workers, that their pids answer on loopback, the environment each stand-in
//! echoes back (every request gets `{pid, argv, env}`), the ports, the log
//! files' names and lines, and the verbs on the file (`reload FILE --env`,
//! `startOrReload`, `--only`, `stop FILE`, `delete FILE`).
//!
//! Each test copies its folder into a scratch directory (the files write their
//! logs next to themselves) and swaps the file's fixed ports for free ones, so
//! the tests run side by side; each has a daemon in a home of its own. How the
//! same files behave under pm2 itself is `bench/pm2-compat.sh` (by hand).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use herd_testkit::*;
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A file's folder copied into a scratch directory, and a daemon for it.
struct Case {
    d: Daemon,
    _tmp: TempDir,
    /// The copy of the folder.
    root: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

impl Case {
    /// `tests/pm2-files/FOLDER` copied, with `subs` (text → text) applied
    /// to `file` (the fixed ports made free ones).
    fn new(folder: &str, file: &str, subs: &[(&str, String)]) -> Case {
        let tmp = TempDir::new("pm2file");
        let root = tmp.path().join(folder);
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/pm2-files")
            .join(folder);
        copy_dir(&src, &root);
        let path = root.join(file);
        let mut body = std::fs::read_to_string(&path).unwrap();
        for (from, to) in subs {
            assert!(body.contains(from), "{folder}/{file} has no {from:?}");
            body = body.replace(from, to);
        }
        std::fs::write(&path, body).unwrap();
        Case {
            d: Daemon::new(),
            _tmp: tmp,
            root,
        }
    }

    /// `herd ARGS` in `root/sub` with extra variables.
    fn run(&self, sub: &str, args: &[&str], vars: &[(&str, &str)]) -> Output {
        let mut c = self.d.command(args);
        c.current_dir(self.root.join(sub));
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().expect("run herd")
    }

    /// As `run`, and it must succeed: its stdout.
    fn ok(&self, sub: &str, args: &[&str], vars: &[(&str, &str)]) -> String {
        let out = self.run(sub, args, vars);
        assert!(
            out.status.success(),
            "herd {args:?} failed ({}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout) + &text(&out.stderr)
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn names(&self) -> Vec<String> {
        self.d
            .list()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn pids(&self, name: &str) -> BTreeSet<i32> {
        worker_pids(&self.d.app(name)).into_iter().collect()
    }

    /// `herd env APP:N` as a value.
    fn env(&self, target: &str, key: &str) -> Option<String> {
        self.d
            .ok(&["env", target])
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    }
}

/// What the stand-in on `port` answers: `{pid, argv, env}`.
fn ask(port: u16) -> Value {
    wait_http(
        &format!("127.0.0.1:{port}"),
        "/env",
        Duration::from_secs(15),
    )
    .json()
}

fn env_of(answer: &Value, key: &str) -> Option<String> {
    match &answer["env"][key] {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

/// Every pid in `want` answers on `port` (fresh connections).
fn all_answer(port: u16, want: &BTreeSet<i32>) {
    let seen = pids_answering(&format!("127.0.0.1:{port}"), want, 400);
    assert!(
        want.is_subset(&seen),
        "on {port}: want {want:?}, answered {seen:?}"
    );
}

/// The lines of a log file, once it has `n` lines matching `needle`.
fn wait_log(path: &Path, needle: &str, n: usize) -> String {
    let mut body = String::new();
    let ok = wait_until(Duration::from_secs(15), || {
        body = std::fs::read_to_string(path).unwrap_or_default();
        body.matches(needle).count() >= n
    });
    assert!(ok, "{} never had {n} × {needle:?}:\n{body}", path.display());
    body
}

/// The ports the stand-ins say they listen on (`listening on PORT process PID`).
fn listening(log: &str) -> Vec<(u16, i32)> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("listening on ")? + 13..];
            let mut w = rest.split_whitespace();
            let port = w.next()?.parse().ok()?;
            w.next();
            Some((port, w.next()?.parse().ok()?))
        })
        .collect()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// navanitvish/EcoBackend: explicit cluster ×2 with its own log paths;
/// `stop FILE` stops it, `start FILE` brings it back on new workers.
#[test]
fn ecobackend_cluster_logs_stop_and_start_the_file() {
    need_node!();
    let c = Case::new("ecobackend", "ecosystem.config.js", &[]);
    let port = free_port().to_string();
    let vars = [("PORT", port.as_str())];
    c.ok(".", &["start", "ecosystem.config.js"], &vars);
    let pids: BTreeSet<i32> = c.d.wait_online("ecobackend", 2).into_iter().collect();
    let port: u16 = port.parse().unwrap();
    all_answer(port, &pids);
    assert_eq!(
        env_of(&ask(port), "NODE_ENV").as_deref(),
        Some("production")
    );
    // herd merges the instances' lines into the file's path (pm2 would
    // write logs/out-<id>.log per process: see the README's differences).
    let out = wait_log(&c.file("logs/out.log"), "listening on", 2);
    let said: BTreeSet<i32> = listening(&out).into_iter().map(|(_, p)| p).collect();
    assert_eq!(said, pids, "{out}");
    assert!(c.file("logs/err.log").exists());

    c.ok(".", &["stop", "ecosystem.config.js"], &vars);
    assert_eq!(c.d.app("ecobackend")["status"], "stopped");
    assert!(http_get(&format!("127.0.0.1:{port}"), "/", Duration::from_secs(1)).is_err());
    c.ok(".", &["start", "ecosystem.config.js"], &vars);
    let again: BTreeSet<i32> = c.d.wait_online("ecobackend", 2).into_iter().collect();
    assert!(again.is_disjoint(&pids));
    all_answer(port, &again);
}

/// shadankhan108/Task-6.2HD: `instances: "max"`, cluster, PORT in env and
/// env_production: the post-deploy line `reload FILE --env production` moves
/// it onto production's env and port; `delete FILE` removes it.
#[test]
fn task_6_2hd_max_and_reload_file_env_production() {
    need_node!();
    let (dev, prod) = (free_port(), free_port());
    let c = Case::new(
        "task-6.2hd",
        "ecosystem.config.js",
        &[
            ("PORT: 3000", format!("PORT: {dev}")),
            ("PORT: 80", format!("PORT: {prod}")),
        ],
    );
    c.ok(".", &["start", "ecosystem.config.js"], &[]);
    let first: BTreeSet<i32> = c.d.wait_online("task6.2hd", cpus()).into_iter().collect();
    all_answer(dev, &first);
    assert_eq!(
        env_of(&ask(dev), "NODE_ENV").as_deref(),
        Some("development")
    );

    c.ok(
        ".",
        &["reload", "ecosystem.config.js", "--env", "production"],
        &[],
    );
    let second: BTreeSet<i32> = c.d.wait_online("task6.2hd", cpus()).into_iter().collect();
    assert!(second.is_disjoint(&first), "{first:?} {second:?}");
    all_answer(prod, &second);
    let a = ask(prod);
    assert_eq!(env_of(&a, "NODE_ENV").as_deref(), Some("production"));
    assert_eq!(env_of(&a, "PORT"), Some(prod.to_string()));
    assert_eq!(env_of(&a, "name").as_deref(), Some("task6.2hd"));

    c.ok(".", &["delete", "ecosystem.config.js"], &[]);
    assert!(c.names().is_empty());
}

/// barkbaek/webrtc-signaling-server: `instances: 0` (all CPUs), nested log
/// folders, `--env production` at start; each worker has its instance.
#[test]
fn webrtc_instances_zero_env_production_and_instance_vars() {
    need_node!();
    let c = Case::new("webrtc-signaling-server", "ecosystem.config.js", &[]);
    let port = free_port();
    let p = port.to_string();
    c.ok(
        ".",
        &["start", "ecosystem.config.js", "--env", "production"],
        &[("PORT", &p)],
    );
    let pids: BTreeSet<i32> = c.d.wait_online("app", cpus()).into_iter().collect();
    all_answer(port, &pids);
    let a = ask(port);
    assert_eq!(env_of(&a, "NODE_ENV").as_deref(), Some("production"));
    assert_eq!(env_of(&a, "NODE_PORT").as_deref(), Some("3100"));
    let instances: BTreeSet<String> = (0..cpus())
        .map(|i| c.env(&format!("app:{i}"), "NODE_APP_INSTANCE").unwrap())
        .collect();
    let want: BTreeSet<String> = (0..cpus()).map(|i| i.to_string()).collect();
    assert_eq!(instances, want);
    wait_log(&c.file("pm2-logs/out/out.log"), "listening on", cpus());
    assert!(c.file("pm2-logs/error/err.log").exists());
}

/// srikanth-karthi/Docker-node: `script: 'node'`, `args: 'index.js'`, three
/// fork instances with `increment_var: 'PORT'`: each on its own port.
#[test]
fn docker_node_fork_instances_increment_var() {
    need_node!();
    let base = free_ports(3);
    let c = Case::new(
        "docker-node",
        "ecosystem.config.js",
        &[("PORT: 4000", format!("PORT: {base}"))],
    );
    c.ok(".", &["start", "ecosystem.config.js"], &[]);
    let pids: BTreeSet<i32> = c.d.wait_online("server-cluster", 3).into_iter().collect();
    assert_eq!(c.d.app("server-cluster")["mode"], "fork");
    let mut seen = BTreeSet::new();
    for i in 0..3u16 {
        let a = ask(base + i);
        assert_eq!(env_of(&a, "PORT"), Some((base + i).to_string()));
        assert_eq!(env_of(&a, "NODE_APP_INSTANCE"), Some(i.to_string()));
        assert!(a["argv"][1].as_str().unwrap().ends_with("index.js"), "{a}");
        seen.insert(a["pid"].as_i64().unwrap() as i32);
    }
    assert_eq!(seen, pids);
    let out = wait_log(&c.file("server-cluster-out.log"), "listening on", 3);
    let ports: BTreeSet<u16> = listening(&out).into_iter().map(|(p, _)| p).collect();
    assert_eq!(ports, (base..base + 3).collect());

    c.ok(".", &["stop", "ecosystem.config.js"], &[]);
    assert_eq!(c.d.app("server-cluster")["status"], "stopped");
    c.ok(".", &["delete", "ecosystem.config.js"], &[]);
    assert!(c.names().is_empty());
}

/// firtree-corp/BackEnd: `script: "node server.js"` (a command string) with
/// `exec_interpreter: none`, fork mode, and a `deploy` section; `restart
/// FILE` gives it a new process.
#[test]
fn firtree_command_string_and_restart_file() {
    need_node!();
    let c = Case::new("firtree-backend", "ecosystem.config.js", &[]);
    let port = free_port();
    let p = port.to_string();
    let said = c.ok(".", &["start", "ecosystem.config.js"], &[("PORT", &p)]);
    assert!(said.contains("deploy"), "no word on `deploy`: {said}");
    let first = c.pids("api-jdr");
    all_answer(port, &first);
    assert!(ask(port)["argv"][1]
        .as_str()
        .unwrap()
        .ends_with("server.js"));
    c.ok(".", &["restart", "ecosystem.config.js"], &[("PORT", &p)]);
    let second = c.pids("api-jdr");
    assert!(second.is_disjoint(&first), "{first:?} {second:?}");
    all_answer(port, &second);
}

/// Sotatek-KhoaLe/EKTA: `script: 'npm run start'`, fork, `wait_ready` with
/// an app that never says ready: online at pm2's default `listen_timeout`
/// (3 s); `instance_var: 'INSTANCE_ID'`; `--env prod`.
#[test]
fn ekta_npm_run_start_wait_ready_without_ready() {
    need_node!();
    let c = Case::new("ekta", "ecosystem.config.js", &[]);
    let port = free_port();
    let p = port.to_string();
    let t = Instant::now();
    c.ok(
        ".",
        &["start", "ecosystem.config.js", "--env", "prod"],
        &[("PORT", &p)],
    );
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(2500), "online after {took:?}");
    assert_eq!(c.d.app("EKTA")["status"], "online");
    let a = ask(port);
    assert_eq!(env_of(&a, "NODE_ENV").as_deref(), Some("prod"));
    assert_eq!(env_of(&a, "DEBUG").as_deref(), Some("false"));
    assert_eq!(env_of(&a, "INSTANCE_ID").as_deref(), Some("0"));
    wait_log(&c.file(".pm2/out.log"), "listening on", 1);
}

/// zierocode/FormDee: `script: 'npm', args: 'start'` with `node_args`,
/// `log_file`, `time: true`: the lines carry pm2's `time` stamp.
#[test]
fn formdee_npm_start_node_args_and_combined_log() {
    need_node!();
    let c = Case::new("formdee", "ecosystem.config.js", &[]);
    let port = free_port();
    let p = port.to_string();
    c.ok(".", &["start", "ecosystem.config.js"], &[("PORT", &p)]);
    let a = ask(port);
    assert_eq!(env_of(&a, "NODE_ENV").as_deref(), Some("production"));
    assert_eq!(
        env_of(&a, "NODE_OPTIONS").as_deref(),
        Some("--max-old-space-size=2048")
    );
    let out = wait_log(&c.file("logs/pm2-out.log"), "listening on", 1);
    let line = out.lines().find(|l| l.contains("listening on")).unwrap();
    // `time: true`: YYYY-MM-DDTHH:mm:ss before the line.
    let stamp = &line[..19];
    assert!(
        stamp.as_bytes()[4] == b'-' && stamp.as_bytes()[10] == b'T' && stamp.as_bytes()[13] == b':',
        "{line}"
    );
    wait_log(&c.file("logs/pm2-combined.log"), "listening on", 1);
}

/// OSZ-Teltow-FAP03/backend: the file in `config/`, started from the root
/// (`script` resolves from where the command runs, as under pm2), with a
/// `namespace`, `watch` and `cron_restart`; the namespace names it.
#[test]
fn osz_config_in_a_subfolder_namespace_watch_cron() {
    need_node!();
    let c = Case::new("osz-backend", "config/ecosystem.config.js", &[]);
    let port = free_port();
    let p = port.to_string();
    // From config/, index.js is not there: refused, as pm2 refuses it.
    let out = c.run("config", &["start", "ecosystem.config.js"], &[("PORT", &p)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(c.names().is_empty());

    c.ok(
        ".",
        &["start", "config/ecosystem.config.js"],
        &[("PORT", &p)],
    );
    let pids = c.pids("server");
    all_answer(port, &pids);
    wait_log(&c.file("dev/log/child-out.log"), "listening on", 1);
    let show = c.d.ok(&["show", "server", "--json"]);
    assert!(
        show.contains("0 0 * * *"),
        "cron_restart not carried: {show}"
    );
    c.d.ok(&["stop", "Backend"]);
    assert_eq!(c.d.app("server")["status"], "stopped");
}

/// 10Kft/node-micro-services-template: YAML, two apps, `combine_logs`;
/// `--only engine`, then `startOrReload` starts api and reloads engine.
#[test]
fn micro_services_yaml_only_and_start_or_reload() {
    need_node!();
    let c = Case::new("node-micro-services", "process.yml", &[]);
    c.ok(".", &["start", "process.yml", "--only", "engine"], &[]);
    assert_eq!(c.names(), ["engine"]);
    let engine1 = c.pids("engine");
    let log = wait_log(&c.file("logs/eample-engine.log"), "listening on", 1);
    let (port, pid) = listening(&log)[0];
    assert!(engine1.contains(&pid));
    all_answer(port, &engine1);

    c.ok(".", &["startOrReload", "process.yml"], &[]);
    let mut names = c.names();
    names.sort();
    assert_eq!(names, ["api", "engine"]);
    let engine2 = c.pids("engine");
    assert!(engine2.is_disjoint(&engine1), "{engine1:?} {engine2:?}");
    let api = c.pids("api");
    let log = wait_log(&c.file("logs/eample-api.log"), "listening on", 1);
    let (port, _) = listening(&log)[0];
    all_answer(port, &api);
}

/// 1ibrary/1ibrary-back-end: a JSON file with a comment (pm2 evaluates
/// it), env + env_production merged, a `deploy` section.
#[test]
fn one_library_json_env_production() {
    need_node!();
    let c = Case::new("1ibrary", "ecosystem.json", &[]);
    let port = free_port();
    let p = port.to_string();
    c.ok(
        ".",
        &["start", "ecosystem.json", "--env", "production"],
        &[("PORT", &p)],
    );
    let a = ask(port);
    assert_eq!(env_of(&a, "NODE_ENV").as_deref(), Some("production"));
    assert_eq!(env_of(&a, "COMMON_VARIABLE").as_deref(), Some("true"));
    assert_eq!(env_of(&a, "name").as_deref(), Some("1ibrary"));
    let logs = c.d.path().join("logs");
    wait_log(&logs.join("1ibrary-out.log"), "listening on", 1);
    assert!(logs.join("1ibrary-error.log").exists());
}

/// 68publishers/crawler: YAML, an ES module in cluster mode, `max`.
#[test]
fn crawler_yaml_mjs_cluster_max() {
    need_node!();
    let c = Case::new("crawler", "process.yml", &[]);
    let port = free_port();
    let p = port.to_string();
    c.ok(".", &["start", "process.yml"], &[("PORT", &p)]);
    let pids: BTreeSet<i32> = c.d.wait_online("crawler", cpus()).into_iter().collect();
    all_answer(port, &pids);
    assert_eq!(c.d.app("crawler")["mode"], "cluster");
}

/// HubertNdunyo/JiraDataXl: a Python `http.server` app (`interpreter:
/// 'python3'`) on the file's PORT, `log_file`, `time`.
#[test]
fn jiradataxl_python_http_server() {
    need!(Need::Python);
    let port = free_port();
    let c = Case::new(
        "jiradataxl",
        "ecosystem.config.js",
        &[("PORT: 3545", format!("PORT: {port}"))],
    );
    need_node!();
    c.ok(".", &["start", "ecosystem.config.js"], &[]);
    let pids = c.pids("dataapp-web");
    all_answer(port, &pids);
    let a = ask(port);
    assert_eq!(env_of(&a, "PYTHONUNBUFFERED").as_deref(), Some("1"));
    assert!(a["argv"][0].as_str().unwrap().ends_with("web_app.py"));
    wait_log(&c.file("logs/pm2-out.log"), "listening on", 1);
    wait_log(&c.file("logs/pm2-combined.log"), "listening on", 1);
}

/// priyanjali-mtalkz/pm2: `cmd: hello.py` ×4 with `args`, `autorestart:
/// false`, `--env production`; a second app with `interpreter: python3`.
#[test]
fn echo_python_instances_args_and_no_autorestart() {
    need!(Need::Python);
    need_node!();
    let c = Case::new("echo-python", "p1/ecosystem.config.js", &[]);
    // echo-python-3 (autorestart) says hello, exits, and is restarted until
    // pm2's counting makes it errored: `start` says 1 when that came first.
    let out = c.run(
        "p1",
        &["start", "ecosystem.config.js", "--env", "production"],
        &[],
    );
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    let logs = c.d.path().join("logs");
    let out = wait_log(&logs.join("echo-python-out.log"), "hello arg1 arg2", 4);
    for i in 0..4 {
        assert!(
            out.contains(&format!("instance {i} port 5001")),
            "no instance {i} on 5001:\n{out}"
        );
    }
    wait_log(&logs.join("echo-python-3-out.log"), "hello", 1);
    // They said hello and exited; none restarts.
    let ok = wait_until(Duration::from_secs(10), || {
        c.d.app("echo-python")["online"] == 0
    });
    assert!(ok, "{:#}", c.d.app("echo-python"));
    assert_eq!(
        std::fs::read_to_string(logs.join("echo-python-out.log"))
            .unwrap()
            .matches("hello")
            .count(),
        4
    );
}

/// tlqhrm/TapPlace-sample: `instances: -1` (all CPUs but one, at least 1).
#[test]
fn tapplace_instances_minus_one() {
    need_node!();
    let c = Case::new("tapplace", "ecosystem.config.js", &[]);
    let port = free_port();
    let p = port.to_string();
    c.ok(".", &["start", "ecosystem.config.js"], &[("PORT", &p)]);
    let n = cpus().saturating_sub(1).max(1);
    let pids: BTreeSet<i32> = c.d.wait_online("tapplace", n).into_iter().collect();
    assert_eq!(c.d.app("tapplace")["instances"], n);
    all_answer(port, &pids);
}

/// vitorbraga/games-ecommerce-server: `instances: "2"` (a numeric string),
/// no exec_mode (a Node script with instances: cluster, as pm2 decides).
#[test]
fn games_ecommerce_numeric_string_instances() {
    need_node!();
    let c = Case::new("games-ecommerce", "ecosystem.config.js", &[]);
    let port = free_port();
    let p = port.to_string();
    c.ok(
        ".",
        &["start", "ecosystem.config.js", "--env", "production"],
        &[("PORT", &p)],
    );
    let pids: BTreeSet<i32> =
        c.d.wait_online("games-ecommerce-server", 2)
            .into_iter()
            .collect();
    assert_eq!(c.d.app("games-ecommerce-server")["mode"], "cluster");
    all_answer(port, &pids);
    assert_eq!(
        env_of(&ask(port), "NODE_ENV").as_deref(),
        Some("production")
    );
}

/// keshav2010/RTSMultiplayerPOC: the `port` key (→ PORT), fork, `watch`.
#[test]
fn rts_port_key_fork_watch() {
    need_node!();
    let port = free_port();
    let c = Case::new(
        "rts-multiplayer",
        "ecosystem.config.js",
        &[("port        : 3000", format!("port        : {port}"))],
    );
    c.ok(".", &["start", "ecosystem.config.js"], &[]);
    let pids = c.pids("colyseus-rts-gameserver");
    all_answer(port, &pids);
    let a = ask(port);
    assert_eq!(env_of(&a, "PORT"), Some(port.to_string()));
    assert_eq!(env_of(&a, "DEBUG").as_deref(), Some("colyseus:errors"));
    assert_eq!(c.d.app("colyseus-rts-gameserver")["mode"], "fork");
}

/// Andy-droid958/service-report: cluster `max`, `wait_ready` with an app that
/// says ready, `listen_timeout`, `instance_var`, three log files; `reload
/// FILE --env production` replaces every worker.
#[test]
fn service_report_wait_ready_and_reload_file() {
    need_node!();
    let port = free_port();
    let c = Case::new(
        "service-report",
        "ecosystem.config.js",
        &[("PORT: 3000", format!("PORT: {port}"))],
    );
    let t = Instant::now();
    c.ok(".", &["start", "ecosystem.config.js"], &[]);
    // It said ready: no waiting out the 10 s listen_timeout.
    assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
    let first: BTreeSet<i32> =
        c.d.wait_online("service-report", cpus())
            .into_iter()
            .collect();
    all_answer(port, &first);
    assert_eq!(
        c.env("service-report:0", "INSTANCE_ID").as_deref(),
        Some("0")
    );
    c.ok(
        ".",
        &["reload", "ecosystem.config.js", "--env", "production"],
        &[],
    );
    let second: BTreeSet<i32> =
        c.d.wait_online("service-report", cpus())
            .into_iter()
            .collect();
    assert!(second.is_disjoint(&first));
    all_answer(port, &second);
    assert_eq!(
        env_of(&ask(port), "NODE_ENV").as_deref(),
        Some("production")
    );
    for f in ["logs/out.log", "logs/combined.log"] {
        wait_log(&c.file(f), "listening on", 2 * cpus());
    }
    assert!(c.file("logs/err.log").exists());
}

/// mimamch/wa-gateway: a name with spaces, `instances: "1"`, fork: the log
/// files get pm2's file-safe name; the name works as a selector.
#[test]
fn wa_gateway_name_with_spaces() {
    need_node!();
    let port = free_port();
    let c = Case::new(
        "wa-gateway",
        "ecosystem.config.js",
        &[("PORT: 3007", format!("PORT: {port}"))],
    );
    let name = "Start as Background Process with PM2";
    c.ok(".", &["start", "ecosystem.config.js"], &[]);
    let pids = c.pids(name);
    all_answer(port, &pids);
    assert_eq!(env_of(&ask(port), "name").as_deref(), Some(name));
    let logs = c.d.path().join("logs");
    wait_log(
        &logs.join("Start-as-Background-Process-with-PM2-out.log"),
        "listening on",
        1,
    );
    c.d.ok(&["restart", name]);
    let again = c.pids(name);
    assert!(again.is_disjoint(&pids));
    c.ok(".", &["delete", "ecosystem.config.js"], &[]);
    assert!(c.names().is_empty());
}

/// azconcept-droid/fluentd: `cwd: "app"`, `script: 'npm'`, `args: "run
/// start"`, and `~` in the log paths (the user's home, as pm2 reads it).
#[test]
fn fluentd_cwd_npm_run_start_and_home_in_log_paths() {
    need_node!();
    let port = free_port();
    let c = Case::new(
        "fluentd-local",
        "app-on-local/ecosystem.config.js",
        &[("PORT: 5005", format!("PORT: {port}"))],
    );
    let home = c.root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let h = home.to_str().unwrap();
    c.ok(
        "app-on-local",
        &["start", "ecosystem.config.js"],
        &[("HOME", h)],
    );
    let pids = c.pids("app");
    assert!(!pids.is_empty());
    let a = ask(port);
    assert_eq!(env_of(&a, "NODE_ENV").as_deref(), Some("development"));
    wait_log(&home.join(".pm2/logs/app-out.log"), "listening on", 1);
    assert!(home.join(".pm2/logs/app-error.log").exists());
    assert!(!c.file("app-on-local/~").exists() && !c.file("app-on-local/app/~").exists());
}

/// blacksheepIV/MapCode: `bin/www` (no extension, a `#!` node script) and
/// `--env production`.
#[test]
fn mapcode_bin_www_env_production() {
    need_node!();
    let c = Case::new("mapcode", "ecosystem.config.js", &[]);
    let port = free_port();
    let p = port.to_string();
    c.ok(
        ".",
        &["start", "ecosystem.config.js", "--env", "production"],
        &[("PORT", &p)],
    );
    let pids = c.pids("ProjectM");
    all_answer(port, &pids);
    assert_eq!(
        env_of(&ask(port), "NODE_ENV").as_deref(),
        Some("production")
    );
}

/// Regression: an app that ended errored (or stopped) showed 0 restarts in
/// `list` and `jlist`'s `restart_time`, as if it had never crash-looped;
/// pm2 keeps the count. priyanjali-mtalkz/pm2's `echo-python-3` says hello
/// and exits, and is restarted until it is errored.
#[test]
fn regression_errored_app_showed_zero_restarts() {
    need!(Need::Python);
    need_node!();
    let c = Case::new("echo-python", "p1/ecosystem.config.js", &[]);
    c.run("p1", &["start", "ecosystem.config.js"], &[]);
    let ok = wait_until(Duration::from_secs(30), || {
        c.d.app("echo-python-3")["status"] == "errored"
    });
    assert!(ok, "{:#}", c.d.app("echo-python-3"));
    let runs = std::fs::read_to_string(c.d.path().join("logs/echo-python-3-out.log"))
        .unwrap()
        .matches("hello")
        .count() as u64;
    // pm2's counting: 16 quick exits in a row (one more for a run that a
    // loaded machine made last past min_uptime).
    assert!(runs >= 16, "{runs} runs");
    let jl: Value = serde_json::from_str(&c.d.ok(&["jlist"])).unwrap();
    let e = jl
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "echo-python-3")
        .unwrap();
    assert_eq!(e["pm2_env"]["status"], "errored");
    assert_eq!(e["pm2_env"]["restart_time"], runs - 1, "{e:#}");
    assert_eq!(c.d.app("echo-python-3")["workers"][0]["restarts"], runs - 1);
}

/// Regression: two apps of one file that watch the same folder and log into
/// it (10Kft/node-micro-services-template: `watch: true`, `out_file:
/// ./logs/…`) reloaded each other on every line they logged, forever: each
/// app's watcher left out only its own log files.
#[test]
fn regression_apps_of_a_file_reloaded_each_other_on_log_lines() {
    need_node!();
    let c = Case::new("node-micro-services", "process.yml", &[]);
    c.ok(".", &["start", "process.yml"], &[]);
    c.d.wait_online("api", 1);
    c.d.wait_online("engine", 1);
    wait_log(&c.file("logs/eample-api.log"), "listening on", 1);
    wait_log(&c.file("logs/eample-engine.log"), "listening on", 1);
    // Their first lines are written; a watcher that counted them would have
    // reloaded the other app within its 100 ms quiet time. Watch 3 s.
    let restarts = |name: &str| c.d.app(name)["workers"][0]["restarts"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(
            (restarts("api"), restarts("engine")),
            (0, 0),
            "a log line reloaded an app:\n{}",
            c.d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A real edit still reloads.
    let before = c.pids("api");
    let app = c.file("services/example-api/app.js");
    let body = std::fs::read_to_string(&app).unwrap();
    std::fs::write(&app, body + "\n// edited\n").unwrap();
    let ok = wait_until(Duration::from_secs(15), || {
        let now = c.pids("api");
        !now.is_empty() && now.is_disjoint(&before)
    });
    assert!(ok, "an edit did not reload api: {:#}", c.d.app("api"));
}

/// Regression: `restart` (and `restart FILE`) started every worker's
/// restart count over at 0, and so did `start` after `stop`; pm2's
/// `restart_time` counts a restart and goes on across a stop and start.
/// firtree-corp/BackEnd's deploy line restarts it.
#[test]
fn regression_restart_set_restart_time_to_zero() {
    need_node!();
    let c = Case::new("firtree-backend", "ecosystem.config.js", &[]);
    let port = free_port().to_string();
    let vars = [("PORT", port.as_str())];
    let restart_time = || -> u64 {
        let jl: Value = serde_json::from_str(&c.d.ok(&["jlist"])).unwrap();
        jl[0]["pm2_env"]["restart_time"].as_u64().unwrap()
    };
    c.ok(".", &["start", "ecosystem.config.js"], &vars);
    assert_eq!(restart_time(), 0);
    c.ok(".", &["restart", "ecosystem.config.js"], &vars);
    assert_eq!(restart_time(), 1);
    c.d.ok(&["restart", "api-jdr"]);
    assert_eq!(restart_time(), 2);
    c.ok(".", &["stop", "ecosystem.config.js"], &vars);
    assert_eq!(restart_time(), 2);
    c.ok(".", &["start", "ecosystem.config.js"], &vars);
    assert_eq!(restart_time(), 2);
    assert_eq!(c.d.app("api-jdr")["workers"][0]["restarts"], 2);
    c.d.ok(&["reset", "api-jdr"]);
    assert_eq!(restart_time(), 0);
}
