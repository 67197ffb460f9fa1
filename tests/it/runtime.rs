//! pm2's runtime rules for the apps of pm2 process files, end to end under
//! the daemon (issue 12 items 2, 5 and 7): fork mode (each instance a plain
//! process that may cluster itself, its `process.send` reaching herd),
//! readiness and restarts as pm2 counts them (`wait_ready` online at
//! `listen_timeout`, `restart_delay`, `exp_backoff_restart_delay`,
//! `min_uptime`/`max_restarts` before *errored*, `autorestart`,
//! `stop_exit_codes`), and the environment pm2 gives (`name`, `pm_id`, the
//! instance variable, `increment_var`, `port`, `env` + `env_<name>` in pm2's
//! order, `filter_env`). Each app is a real Node app from tests/node-apps;
//! what happened is read from the processes themselves (their
//! `/proc/PID/environ`, the start and exit times they write down) and from
//! the daemon's log, never guessed from timing alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herd_testkit::*;
use serde_json::{json, Value};

fn node_app(name: &str) -> String {
    format!("{}/tests/node-apps/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A pm2 JSON process file holding `apps`, in `dir`.
fn process_file(dir: &Path, apps: Value) -> PathBuf {
    let file = dir.join("ecosystem.json");
    let text = serde_json::to_string_pretty(&json!({ "apps": apps })).unwrap();
    std::fs::write(&file, text).unwrap();
    file
}

/// A process's real environment.
fn environ(pid: i32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("environ of {pid}: {e}"));
    raw.split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Two free consecutive ports (`increment_var: "PORT"` counts up from one).
fn two_ports() -> u16 {
    loop {
        let p = free_port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// What lifecycle.js wrote down: (`start`|`exit`, pid, ms since the epoch).
fn life(path: &Path) -> Vec<(String, i32, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let ms = f.last()?.parse().ok()?;
            Some((f[0].to_string(), f.get(1)?.parse().ok()?, ms))
        })
        .collect()
}

fn starts(path: &Path) -> Vec<u64> {
    life(path)
        .into_iter()
        .filter(|(what, _, _)| what == "start")
        .map(|(_, _, ms)| ms)
        .collect()
}

/// The daemon's log lines that contain `text`.
fn logged(d: &Daemon, text: &str) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}

fn wait_logged(d: &Daemon, text: &str, n: usize, timeout: Duration) -> Vec<String> {
    let ok = wait_until(timeout, || logged(d, text).len() >= n);
    assert!(ok, "{n}× '{text}' never logged; the log:\n{}", d.log());
    logged(d, text)
}

fn wait_status(d: &Daemon, name: &str, status: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(timeout, || {
        last = d.app(name);
        last["status"] == status
    });
    assert!(ok, "{name} never {status}: {last:#}\nlog:\n{}", d.log());
    last
}

fn get(port: u16, path: &str) -> Response {
    wait_http(&format!("127.0.0.1:{port}"), path, Duration::from_secs(10))
}

// ---- 12.2: fork mode ----

#[test]
fn fork_mode_instances_are_plain_processes_that_cluster_themselves_and_say_ready() {
    need_node!();
    let d = Daemon::new();
    let port = two_ports();
    let file = process_file(
        d.path(),
        json!([{
            "name": "selfish",
            "script": node_app("self-cluster.js"),
            "exec_mode": "fork",
            "instances": 2,
            "increment_var": "PORT",
            "env": { "PORT": port, "CHILDREN": 2 },
            // Online only by the instances' own process.send('ready'): the
            // listen timeout is far beyond the test's patience.
            "wait_ready": true,
            "listen_timeout": 120000,
        }]),
    );
    let started = Instant::now();
    d.ok(&["start", file.to_str().unwrap()]);
    let pids = d.wait_online("selfish", 2);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(d.app("selfish")["mode"], "fork");
    assert!(
        logged(&d, "did not say it was ready").is_empty(),
        "online by 'ready', not by the timeout:\n{}",
        d.log()
    );
    for (instance, &pid) in pids.iter().enumerate() {
        let env = environ(pid);
        // A plain process: Node sees no cluster primary above it
        // (cluster.isPrimary), yet has its channel to herd.
        assert_eq!(env.get("NODE_UNIQUE_ID"), None, "instance {instance}");
        assert!(env.contains_key("NODE_CHANNEL_FD"), "instance {instance}");
        let own_port = port + instance as u16;
        assert_eq!(env["PORT"], own_port.to_string(), "increment_var");
        assert_eq!(env["NODE_APP_INSTANCE"], instance.to_string());
        // Its own cluster workers serve its port, and it is their primary.
        let mut children = BTreeSet::new();
        assert!(
            wait_until(Duration::from_secs(20), || {
                let r = get(own_port, "/").json();
                assert_eq!(r["isWorker"], true, "{r}");
                assert_eq!(r["ppid"].as_i64(), Some(pid as i64), "{r}");
                assert_eq!(r["instance"], instance.to_string());
                children.insert(r["pid"].as_i64().unwrap());
                children.len() == 2
            }),
            "instance {instance} (pid {pid}) served from {children:?} only"
        );
    }
}

#[test]
fn cluster_mode_workers_are_herds_cluster_workers() {
    need_node!();
    let d = Daemon::new();
    let port = free_port();
    let file = process_file(
        d.path(),
        json!([{
            "name": "clustered",
            "script": node_app("self-cluster.js"),
            "exec_mode": "cluster",
            "instances": 2,
            "port": port,
        }]),
    );
    d.ok(&["start", file.to_str().unwrap()]);
    let pids: BTreeSet<i64> = d
        .wait_online("clustered", 2)
        .into_iter()
        .map(i64::from)
        .collect();
    // herd's workers serve the port themselves: they are cluster workers
    // of herd, with no children of their own.
    // Both answer (the kernel picks on a shared socket: asked patiently,
    // from several threads at once), and nobody else does.
    let seen: BTreeSet<i64> = answers_from(&pids, KERNEL_PICKS, || {
        let r = get(port, "/").json();
        assert_eq!(r["isWorker"], true, "{r}");
        Some((r["pid"].as_i64().unwrap(), ()))
    })
    .into_keys()
    .collect();
    assert_eq!(seen, pids, "the workers that answered");
    for pid in &pids {
        assert!(environ(*pid as i32).contains_key("NODE_UNIQUE_ID"));
    }
}

// ---- 12.5: readiness and restarts ----

#[test]
fn wait_ready_without_ready_is_online_at_listen_timeout_with_one_warning() {
    need_node!();
    let d = Daemon::new();
    let port = free_port();
    let file = process_file(
        d.path(),
        json!([{
            "name": "mute",
            "script": node_app("never-ready.js"),
            "instances": 2,
            "port": port,
            "wait_ready": true,
            "listen_timeout": 1500,
        }]),
    );
    let started = Instant::now();
    d.ok(&["start", file.to_str().unwrap()]);
    let before: BTreeSet<i32> = d.wait_online("mute", 2).into_iter().collect();
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "online before listen_timeout: {:?}",
        started.elapsed()
    );
    let warning = "did not say it was ready within 1.5 s";
    wait_logged(&d, warning, 1, Duration::from_secs(10));
    get(port, "/");
    // A reload goes on the same way (it is not aborted), and the app was
    // told once.
    d.ok(&["reload", "mute"]);
    let after: BTreeSet<i32> = d.wait_online("mute", 2).into_iter().collect();
    assert!(after.is_disjoint(&before), "{before:?} → {after:?}");
    assert_eq!(logged(&d, warning).len(), 1, "{}", d.log());
    assert!(logged(&d, "reload aborted").is_empty(), "{}", d.log());
}

#[test]
fn restart_delay_is_waited_before_every_restart() {
    need_node!();
    let d = Daemon::new();
    let port = free_port();
    let life_log = d.path().join("life.log");
    let file = process_file(
        d.path(),
        json!([{
            "name": "patient",
            "script": node_app("lifecycle.js"),
            "port": port,
            "restart_delay": 1200,
            "env": { "LIFE_LOG": life_log },
        }]),
    );
    d.ok(&["start", file.to_str().unwrap()]);
    d.wait_online("patient", 1);
    // pm2 waits restart_delay before every automatic restart, after a
    // long life as after a short one, and after a kill as after an exit.
    for round in 0..3 {
        let pid = d.wait_online("patient", 1)[0];
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        if round == 2 {
            d.ok(&["signal", "SIGKILL", "patient"]);
        } else {
            let _ = http_get(
                &format!("127.0.0.1:{port}"),
                "/exit?code=1",
                Duration::from_secs(5),
            );
        }
        assert!(wait_until(Duration::from_secs(20), || {
            starts(&life_log).len() == round + 2
        }));
        let ended = life(&life_log)
            .iter()
            .find(|(what, p, _)| what == "exit" && *p == pid)
            .map_or(t0, |e| e.2);
        let next = *starts(&life_log).last().unwrap();
        assert!(
            next >= ended + 1200,
            "round {round}: restarted {} ms after the exit",
            next - ended
        );
    }
    assert_eq!(logged(&d, "restarting it in 1.2 s").len(), 3, "{}", d.log());
}

#[test]
fn exp_backoff_restart_delay_grows_by_pm2s_formula_and_restarts_over() {
    need_node!();
    let d = Daemon::new();
    let life_log = d.path().join("life.log");
    let dependency = d.path().join("dependency-up");
    let file = process_file(
        d.path(),
        json!([{
            "name": "backing-off",
            "script": node_app("lifecycle.js"),
            "port": free_port(),
            "exp_backoff_restart_delay": 100,
            "max_restarts": 100,
            "env": { "LIFE_LOG": life_log, "NEEDS": dependency },
        }]),
    );
    // Its dependency is down: it exits at once, again and again.
    let _ = d.herd(&["start", file.to_str().unwrap()]);
    let delays = ["100 ms", "150 ms", "225 ms", "337 ms", "505 ms"];
    wait_logged(&d, "restarting it in 505 ms", 1, Duration::from_secs(30));
    let said: Vec<String> = logged(&d, "restarting it in")
        .iter()
        .map(|l| l.split("restarting it in ").nth(1).unwrap().to_string())
        .take(5)
        .collect();
    assert_eq!(said, delays, "{}", d.log());
    // Each start waited its delay (pm2 computes the next from the last).
    let s = starts(&life_log);
    for (i, want) in [100u64, 150, 225, 337].iter().enumerate() {
        assert!(s[i + 1] - s[i] >= *want, "start {i}: {s:?}");
    }
    // A manual restart starts the backoff over (pm2's resetState): a
    // 100 ms delay again, where the loop had reached 757 ms and more.
    let marker = logged(&d, "restarting it in").len();
    let _ = d.herd(&["restart", "backing-off"]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            logged(&d, "restarting it in")[marker..]
                .iter()
                .any(|l| l.ends_with("restarting it in 100 ms"))
        }),
        "{}",
        d.log()
    );
    // The dependency returns: the app serves.
    std::fs::write(&dependency, "").unwrap();
    wait_status(&d, "backing-off", "online", Duration::from_secs(30));
}

#[test]
fn max_restarts_unstable_exits_end_errored_as_pm2_counts_them() {
    need_node!();
    let d = Daemon::new();
    let life_log = d.path().join("life.log");
    let dependency = d.path().join("dependency-up");
    let port = free_port();
    let file = process_file(
        d.path(),
        json!([{
            "name": "doomed",
            "script": node_app("lifecycle.js"),
            "port": port,
            // Generous, so that a slow start under load still counts as
            // unstable.
            "min_uptime": "5s",
            "max_restarts": 3,
            "env": { "LIFE_LOG": life_log, "NEEDS": dependency },
        }]),
    );
    let _ = d.herd(&["start", file.to_str().unwrap()]);
    wait_status(&d, "doomed", "errored", Duration::from_secs(30));
    // pm2: the third unstable exit reaches max_restarts: 3 starts in all.
    assert_eq!(starts(&life_log).len(), 3, "{:?}", life(&life_log));
    let jl: Value = serde_json::from_str(&d.ok(&["jlist"])).unwrap();
    assert_eq!(jl[0]["pm2_env"]["status"], "errored", "{jl:#}");
    // A restart counts afresh; with its dependency back it serves.
    std::fs::write(&dependency, "").unwrap();
    d.ok(&["restart", "doomed"]);
    d.wait_online("doomed", 1);
    get(port, "/");
}

#[test]
fn unstable_exits_slower_than_pm2s_window_never_end_errored() {
    need_node!();
    let d = Daemon::new();
    let life_log = d.path().join("life.log");
    let file = process_file(
        d.path(),
        json!([{
            "name": "slow-loop",
            "script": node_app("lifecycle.js"),
            "port": free_port(),
            "min_uptime": "3s",
            "max_restarts": 2,
            // Every exit is unstable by its uptime, but the second comes
            // after the 6.5 s delay, outside pm2's window (min_uptime ×
            // max_restarts = 6 s from the first start): it does not count,
            // and neither does any later one, so pm2 restarts it forever
            // where two exits in the window would have ended it errored.
            "restart_delay": 6500,
            "env": { "LIFE_LOG": life_log, "NEEDS": d.path().join("never") },
        }]),
    );
    let _ = d.herd(&["start", file.to_str().unwrap()]);
    assert!(
        wait_until(Duration::from_secs(40), || starts(&life_log).len() >= 3),
        "{:?}\n{}",
        life(&life_log),
        d.log()
    );
    assert_ne!(d.app("slow-loop")["status"], "errored");
    assert!(logged(&d, "errored").is_empty(), "{}", d.log());
}

#[test]
fn stop_exit_codes_and_autorestart_false_leave_the_worker_down() {
    need_node!();
    let d = Daemon::new();
    let (p1, p2) = (free_port(), free_port());
    let file = process_file(
        d.path(),
        json!([
            { "name": "coded", "script": node_app("lifecycle.js"), "port": p1,
              "stop_exit_codes": [0, 3] },
            { "name": "once", "script": node_app("lifecycle.js"), "port": p2,
              "autorestart": false },
        ]),
    );
    d.ok(&["start", file.to_str().unwrap()]);
    d.wait_online("coded", 1);
    d.wait_online("once", 1);
    let exit = |port: u16, code: i32| {
        let _ = http_get(
            &format!("127.0.0.1:{port}"),
            &format!("/exit?code={code}"),
            Duration::from_secs(5),
        );
    };
    // A code that is not a stop code restarts it.
    let pid = d.wait_online("coded", 1)[0];
    exit(p1, 1);
    assert!(wait_until(Duration::from_secs(20), || {
        worker_pids(&d.app("coded"))
            .first()
            .is_some_and(|&p| p != pid)
    }));
    // A stop code does not.
    d.wait_online("coded", 1);
    exit(p1, 3);
    wait_logged(
        &d,
        "not restarting it: 3 is one of its stop_exit_codes",
        1,
        Duration::from_secs(20),
    );
    wait_status(&d, "coded", "stopped", Duration::from_secs(20));
    // autorestart: false restarts nothing, whatever the code.
    exit(p2, 1);
    wait_logged(&d, "not restarting it", 2, Duration::from_secs(20));
    wait_status(&d, "once", "stopped", Duration::from_secs(20));
    assert!(worker_pids(&d.app("once")).is_empty());
    assert!(worker_pids(&d.app("coded")).is_empty());
}

// ---- 12.7: the environment ----

#[test]
fn workers_get_pm2s_env_in_pm2s_order() {
    need_node!();
    let d = Daemon::new();
    let port = free_port();
    let file = process_file(
        d.path(),
        json!([
            { "name": "first", "script": node_app("lifecycle.js"), "port": free_port() },
            {
                "name": "api",
                "script": node_app("lifecycle.js"),
                "exec_mode": "cluster",
                "instances": 2,
                "instance_var": "INSTANCE_ID",
                "increment_var": "SHARD",
                // `port` beats env.PORT.
                "port": port,
                "env": { "PORT": 1, "FROM_FILE": "env", "BOTH": "env", "SHARD": "10",
                         "SECRET_OF_THE_FILE": "kept" },
                "env_production": { "BOTH": "production" },
                "filter_env": ["SECRET_", "DROPPED"],
            },
        ]),
    );
    let out = d
        .command(&["start", file.to_str().unwrap(), "--env", "production"])
        .env("FROM_CLI", "cli")
        .env("FROM_FILE", "cli")
        .env("BOTH", "cli")
        .env("SECRET_TOKEN", "leak")
        .env("DROPPED_TOO", "leak")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first_id = d.app("first")["id"].as_u64().unwrap();
    let api_id = d.app("api")["id"].as_u64().unwrap();
    assert_ne!(first_id, api_id);
    let mut instances = BTreeSet::new();
    let mut shards = BTreeSet::new();
    for pid in d.wait_online("api", 2) {
        let env = environ(pid);
        let var = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(var("name"), Some("api"));
        assert_eq!(var("pm_id"), Some(api_id.to_string().as_str()));
        assert_eq!(var("PORT"), Some(port.to_string().as_str()));
        // CLI < env < env_production.
        assert_eq!(var("FROM_CLI"), Some("cli"));
        assert_eq!(var("FROM_FILE"), Some("env"));
        assert_eq!(var("BOTH"), Some("production"));
        // filter_env keeps the CLI's variables out, not the file's own.
        assert_eq!(var("SECRET_TOKEN"), None);
        assert_eq!(var("DROPPED_TOO"), None);
        assert_eq!(var("SECRET_OF_THE_FILE"), Some("kept"));
        // instance_var instead of NODE_APP_INSTANCE.
        assert_eq!(var("NODE_APP_INSTANCE"), None);
        instances.insert(var("INSTANCE_ID").unwrap().to_string());
        shards.insert(var("SHARD").unwrap().to_string());
    }
    assert_eq!(instances, BTreeSet::from(["0".into(), "1".into()]));
    assert_eq!(shards, BTreeSet::from(["10".into(), "11".into()]));
    // What the app itself reads is what /proc shows.
    let seen = get(port, "/env").json();
    assert_eq!(seen["BOTH"], "production");
    // The other app: its own id, NODE_APP_INSTANCE 0.
    let pid = d.wait_online("first", 1)[0];
    let env = environ(pid);
    assert_eq!(env["pm_id"], first_id.to_string());
    assert_eq!(env["name"], "first");
    assert_eq!(env["NODE_APP_INSTANCE"], "0");
}
