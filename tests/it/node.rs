//! Integration tests of herd as the cluster primary of unmodified Node.js
//! apps: a real herd, real `node` workers (the apps in `examples/node` and the
//! small misbehaving fixtures in `tests/node-apps`), real sockets on
//! 127.0.0.1, real signals.
//!
//! Every wait polls against a deadline; every process is cleaned up even when
//! a test fails (`herd_testkit::Herd`'s Drop for herd and its workers, [`Groups`]
//! for workers started through the engine API). Without `node` on PATH every
//! test is skipped with a note; the tests that need the examples' npm
//! dependencies are skipped when `examples/node/node_modules` is missing
//! (`npm ci --prefix examples/node`). `scripts/node-versions.sh` runs this
//! file under Node 18, 22 and 24.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::process::Command as Process;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use herd_testkit::*;

/// Generous bounds: a debug herd and Node start-up on a shared 2-CPU machine.
const START: Duration = Duration::from_secs(20);
const T: Duration = Duration::from_secs(10);
const REQ: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// Helpers

// `need_node!()` (herd_testkit): skip the test with a note when `node` is not
// on PATH — or fail it under CI.

/// Skip the test (fail it under CI) when the examples' npm dependencies are
/// not installed.
macro_rules! need_deps {
    () => {
        need!(Need::Node, Need::NodeModules);
    };
}

fn example(name: &str) -> String {
    format!("{}/examples/node/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> String {
    format!("{}/tests/node-apps/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Held while this process's environment is changed or copied for a child.
fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    static ENV_LOCK: Mutex<()> = Mutex::new(());
    ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start herd with extra environment variables. herd passes its own
/// environment on to the workers, and the harness has no per-process
/// environment, so they are set in ours just around the spawn (which copies
/// the environment), under a lock that every such start takes. An empty
/// value removes the variable.
fn herd_with_env(env: &[(&str, &str)], args: &[String]) -> Herd {
    let _g = env_lock();
    let saved: Vec<(&str, Option<std::ffi::OsString>)> =
        env.iter().map(|(k, _)| (*k, std::env::var_os(k))).collect();
    for (k, v) in env {
        eprintln!("  env {k}={v}");
        if v.is_empty() {
            std::env::remove_var(k);
        } else {
            std::env::set_var(k, v);
        }
    }
    let h = Herd::start(args);
    for (k, old) in saved {
        match old {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    h
}

/// `PORT=<port> herd run OPTS -- <script> SCRIPT_ARGS`, with
/// NODE_CLUSTER_SCHED_POLICY removed so that only `opts` pick the balance.
fn run_node(port: u16, opts: &[&str], script: &str, script_args: &[&str]) -> Herd {
    let mut args = vec!["run".to_string()];
    args.extend(opts.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.push(script.into());
    args.extend(script_args.iter().map(|s| s.to_string()));
    let port = port.to_string();
    herd_with_env(&[("PORT", &port), ("NODE_CLUSTER_SCHED_POLICY", "")], &args)
}

fn addr_of(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Wait until every slot in `0..n` has a `ready` line at or after stderr line
/// `from`: slot → pid.
fn wait_ready(h: &Herd, from: usize, n: usize, timeout: Duration) -> BTreeMap<usize, i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut m = BTreeMap::new();
        for c in h.find_all(Stream::Stderr, from, pat::READY) {
            m.insert(c[0].parse::<usize>().unwrap(), c[1].parse::<i32>().unwrap());
        }
        if (0..n).all(|s| m.contains_key(&s)) {
            return m;
        }
        if Instant::now() >= deadline {
            panic!(
                "slots 0..{n} not all ready within {timeout:?} (have {m:?}); herd's stderr:\n{}",
                h.stderr_text()
            );
        }
        h.wait_line_after(
            Stream::Stderr,
            h.mark(Stream::Stderr),
            pat::READY,
            Duration::from_millis(100),
        );
    }
}

/// One GET on a fresh connection that must answer 200: the answering pid.
fn get_pid(addr: &str, path: &str) -> i32 {
    let r = http_request(addr, path, REQ)
        .unwrap_or_else(|e| panic!("GET {path} on {addr} failed: {e}"));
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    r.pid()
        .unwrap_or_else(|| panic!("no pid in the answer to GET {path}: {r:?}"))
}

fn set_of(m: &BTreeMap<usize, i32>) -> BTreeSet<i32> {
    m.values().copied().collect()
}

/// Stop herd with SIGTERM and require a clean exit (code 0) within `within`.
fn stop_cleanly(h: &mut Herd, within: Duration) -> Duration {
    let t0 = Instant::now();
    h.signal(Signal::SIGTERM);
    let st = h.wait_exit(within);
    let took = t0.elapsed();
    assert_eq!(
        st.code(),
        Some(0),
        "herd should exit 0 after SIGTERM, got {st}; its stderr:\n{}",
        h.stderr_text()
    );
    took
}

/// The slot a pid was announced `online` in.
fn slot_of(h: &Herd, pid: i32) -> usize {
    h.online_pids()
        .into_iter()
        .find(|(_, p)| *p == pid)
        .map(|(s, _)| s)
        .unwrap_or_else(|| panic!("pid {pid} was never online; stderr:\n{}", h.stderr_text()))
}

/// Does any herd line (stderr, `herd: ` lines) contain `text`?
fn herd_said(h: &Herd, text: &str) -> bool {
    h.herd_lines().iter().any(|l| l.contains(text))
}

/// Wait for `text` in any line (worker output included) of a stream.
fn wait_text(h: &Herd, which: Stream, text: &str, timeout: Duration) -> usize {
    match h.wait_any_line(which, 0, text, timeout) {
        Some((i, _)) => i,
        None => panic!(
            "no {which:?} line containing {text:?} within {timeout:?}; stdout:\n{}\nstderr:\n{}",
            h.stdout_lines().join("\n"),
            h.stderr_text()
        ),
    }
}

// ---------------------------------------------------------------------------
// 1. Workers share the app's own port.

#[test]
fn hello_two_workers_answer_on_the_apps_own_port() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let h = run_node(port, &["-i", "2"], &example("hello.js"), &[]);
    let ready = wait_ready(&h, 0, 2, START);
    let want = set_of(&ready);
    assert_eq!(want.len(), 2, "two distinct worker pids: {ready:?}");
    assert!(
        herd_said(&h, &format!(":{port} (node), balance shared")),
        "herd should say it listens on the app's port {port} (shared by default); stderr:\n{}",
        h.stderr_text()
    );
    let seen = pids_answering(&addr, &want, 400);
    assert_eq!(seen, want, "both workers answer on port {port}");
    // hello.js's own answer: "process <pid> count <n>".
    let r = http_request(&addr, "/", REQ).unwrap();
    assert!(r.body.starts_with("process "), "hello.js body: {r:?}");
}

#[test]
fn node_cluster_sched_policy_picks_the_default_balance() {
    need_node!();
    for (policy, balance) in [("rr", "round-robin"), ("none", "shared")] {
        let port = free_port();
        let p = port.to_string();
        let args: Vec<String> = ["run", "-i", "2", "--", &example("hello.js")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let h = herd_with_env(
            &[("PORT", &p), ("NODE_CLUSTER_SCHED_POLICY", policy)],
            &args,
        );
        let want = set_of(&wait_ready(&h, 0, 2, START));
        assert!(
            herd_said(&h, &format!("balance {balance}")),
            "NODE_CLUSTER_SCHED_POLICY={policy} should give balance {balance}; stderr:\n{}",
            h.stderr_text()
        );
        assert_eq!(pids_answering(&addr_of(port), &want, 400), want);
    }
}

// ---------------------------------------------------------------------------
// 2. They are cluster workers, with distinct ids.

#[test]
fn workers_are_cluster_workers_with_distinct_ids() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let h = run_node(port, &["-i", "2"], &fixture("worker-info.js"), &[]);
    let ready = wait_ready(&h, 0, 2, START);
    let want = set_of(&ready);
    let info: BTreeMap<i32, serde_json::Value> = answers_from(&want, 400, || {
        let r = http_request(&addr, "/", REQ).expect("GET /");
        let v: serde_json::Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("worker-info answers JSON ({e}): {r:?}"));
        Some((v["pid"].as_i64().unwrap() as i32, v))
    });
    assert_eq!(
        info.keys().copied().collect::<BTreeSet<_>>(),
        want,
        "both workers answer: {info:?}"
    );
    let mut ids = BTreeSet::new();
    for (pid, v) in &info {
        assert_eq!(v["isWorker"], true, "cluster.isWorker in pid {pid}: {v}");
        let id = v["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("cluster.worker.id is a number in pid {pid}: {v}"));
        assert!(id >= 1, "cluster.worker.id counts from 1, as in Node: {v}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 2, "distinct cluster.worker.id values: {info:?}");
}

// ---------------------------------------------------------------------------
// 3. A worker that exits is replaced.

#[test]
fn worker_that_exits_is_replaced_in_its_slot() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let h = run_node(port, &["-i", "2"], &example("hello.js"), &[]);
    let ready = wait_ready(&h, 0, 2, START);
    let mark = h.mark(Stream::Stderr);
    let r = http_request(&addr, "/stop", REQ).expect("GET /stop answers before exiting");
    assert_eq!(r.status, 200, "{r:?}");
    let victim = r.pid().expect("pid of the stopping worker");
    let slot = slot_of(&h, victim);
    let code = h.wait_stderr_after(
        mark,
        &format!("worker {slot} {{*}}exited with code {{}}"),
        T,
    );
    assert_eq!(code[0], "1", "hello.js /stop exits with code 1");
    let new_pid = h.wait_online_slot(mark, slot, T);
    assert_ne!(new_pid, victim, "a new process in slot {slot}");
    h.wait_stderr_after(mark, &format!("worker {slot} ready (pid {new_pid})"), T);
    let now: BTreeSet<i32> = ready
        .iter()
        .map(|(s, p)| if *s == slot { new_pid } else { *p })
        .collect();
    let seen = pids_answering(&addr, &now, 400);
    assert_eq!(
        seen, now,
        "the replacement and the other worker both answer; the old pid is gone"
    );
    assert!(
        !process_alive(victim),
        "the stopped worker {victim} is gone"
    );
}

// ---------------------------------------------------------------------------
// 4. Messages.

#[test]
fn worker_message_reaches_herd() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let h = run_node(port, &["-i", "2"], &example("hello.js"), &[]);
    wait_ready(&h, 0, 2, START);
    let r = http_request(&addr, "/send?x=a%20b", REQ).expect("GET /send");
    assert_eq!(r.status, 200, "{r:?}");
    let pid = r.pid().unwrap();
    let slot = slot_of(&h, pid);
    let line = format!(r#"worker {slot} sent {{"type":"hello","x":"a b"}}"#);
    h.wait_stderr(&line, T);
}

/// Kills the process groups of workers started through the engine API, in
/// case the test fails before they stop.
#[derive(Default, Clone)]
struct Groups(Arc<Mutex<BTreeSet<i32>>>);

impl Groups {
    fn add(&self, pid: i32) {
        self.0.lock().unwrap().insert(pid);
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        if Arc::strong_count(&self.0) > 1 {
            return;
        }
        for &pg in self.0.lock().unwrap().iter() {
            if pg > 1 && !group_empty(pg) {
                eprintln!("  cleanup: killing leftover process group {pg}");
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pg), Signal::SIGKILL);
            }
        }
    }
}

/// Events of an app started through the engine API, with the history kept.
struct Events {
    rx: herd_engine::supervisor::Events,
    seen: Vec<String>,
    groups: Groups,
}

impl Events {
    /// The next event that `f` maps to `Some`, within `timeout`.
    async fn until<R>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&herd_engine::supervisor::Event) -> Option<R>,
    ) -> R {
        use herd_engine::machine::Report;
        use herd_engine::supervisor::Event;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ev = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => panic!(
                    "events ended while waiting for {what}; seen:\n{}",
                    self.seen.join("\n")
                ),
                Err(_) => panic!(
                    "no {what} within {timeout:?}; events seen:\n{}",
                    self.seen.join("\n")
                ),
            };
            let text = match &ev {
                Event::Output { slot, lines, .. } => {
                    format!("[{slot}] {}", String::from_utf8_lossy(lines).trim_end())
                }
                other => format!("{other:?}"),
            };
            eprintln!("  event| {text}");
            self.seen.push(text);
            if let Event::Lifecycle(Report::Online { pid, .. }) = &ev {
                self.groups.add(*pid as i32);
            }
            if let Some(r) = f(&ev) {
                return r;
            }
        }
    }
}

/// herd → worker and worker → herd through the engine API (`AppHandle::send`,
/// `Event::Message`), and the worker's `disconnect` event on a graceful stop.
#[test]
fn engine_api_messages_both_ways_and_disconnect_event() {
    use herd_engine::config::{AppSpec, WorkerKind};
    use herd_engine::machine::{Command, Outcome, Report};
    use herd_engine::supervisor::{self, Event, Target};
    use serde_json::json;

    need_node!();
    let node = herd_engine::resolve_program("node").expect("node on PATH");
    let port = free_port();
    let mut spec = AppSpec::new("worker-info", node);
    spec.args = vec![fixture("worker-info.js")];
    spec.env = vec![("PORT".into(), port.to_string())].into();
    spec.kind = WorkerKind::Node;
    spec.instances = 2;

    let groups = Groups::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The engine copies our environment for the workers here.
        let (app, rx) = {
            let _g = env_lock();
            supervisor::start(spec).expect("start the app")
        };
        let mut ev = Events {
            rx,
            seen: Vec::new(),
            groups: groups.clone(),
        };
        let mut ready = BTreeMap::new();
        while ready.len() < 2 {
            let (slot, pid) = ev
                .until("both workers ready", START, |e| match e {
                    Event::Lifecycle(Report::Ready { slot, pid }) => Some((*slot, *pid)),
                    _ => None,
                })
                .await;
            ready.insert(slot, pid);
        }

        // To every worker: each echoes it back ({echo: message}).
        app.send(Target::All, json!({"hello": "all", "n": [1, 2]}));
        let mut echoed = BTreeMap::new();
        while echoed.len() < 2 {
            let (slot, pid) = ev
                .until("both echoes of the broadcast", T, |e| match e {
                    Event::Message { slot, pid, message }
                        if *message == json!({"echo": {"hello": "all", "n": [1, 2]}}) =>
                    {
                        Some((*slot, *pid))
                    }
                    _ => None,
                })
                .await;
            echoed.insert(slot, pid);
        }
        assert_eq!(
            echoed, ready,
            "each worker echoed once, under its own slot and pid"
        );

        // To one worker: only it answers. Slot 0 gets its own message
        // afterwards; its channel is ordered, so had it received "only-1" it
        // would have echoed that first.
        app.send(Target::Slot(1), json!("only-1"));
        app.send(Target::Slot(0), json!("only-0"));
        let mut got = BTreeSet::new();
        while got.len() < 2 {
            let (slot, msg) = ev
                .until("the echoes of the targeted messages", T, |e| match e {
                    Event::Message { slot, message, .. } => Some((*slot, message["echo"].clone())),
                    _ => None,
                })
                .await;
            assert!(
                (slot == 1 && msg == json!("only-1")) || (slot == 0 && msg == json!("only-0")),
                "worker {slot} echoed {msg}: a message reached a worker it was not sent to"
            );
            got.insert(slot);
        }

        // Graceful stop: herd disconnects each worker (cluster 'disconnect'
        // event in the worker), then the app finishes.
        app.command(Command::Stop);
        let mut disconnected = BTreeSet::new();
        let outcome = loop {
            let r = ev
                .until("disconnect events and the end", T, |e| match e {
                    Event::Output { lines, .. } => {
                        let text = String::from_utf8_lossy(lines);
                        text.lines()
                            .filter_map(|l| l.strip_prefix("disconnect event pid "))
                            .map(|p| p.trim().parse::<u32>().ok())
                            .next()
                            .map(|p| Err(p.unwrap_or(0)))
                    }
                    Event::Exit(o) => Some(Ok(format!("{o:?}"))),
                    _ => None,
                })
                .await;
            match r {
                Err(pid) => {
                    disconnected.insert(pid);
                }
                Ok(o) => break o,
            }
        };
        assert_eq!(outcome, format!("{:?}", Outcome::Stopped));
        let want: BTreeSet<u32> = ready.values().copied().collect();
        assert_eq!(
            disconnected, want,
            "every worker saw cluster.worker's 'disconnect' event before stopping"
        );
    });
    drop(rt);
    for pid in groups.0.lock().unwrap().iter() {
        assert!(
            wait_until(T, || group_empty(*pid)),
            "worker group {pid} still has live processes after the stop"
        );
    }
}

// ---------------------------------------------------------------------------
// 5. The worker closes its channel.

/// `process.disconnect()` in a cluster worker: Node itself ends the worker
/// (code 0; "unexpected disconnect" in lib/internal/cluster/child.js), under
/// its own primary as under herd. herd replaces it; the app keeps serving.
#[test]
fn process_disconnect_ends_the_worker_as_in_node_and_herd_replaces_it() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(port, &["-i", "2"], &fixture("disconnect.js"), &[]);
    let ready = wait_ready(&h, 0, 2, START);
    let mark = h.mark(Stream::Stderr);
    let victim = get_pid(&addr, "/disconnect");
    let slot = slot_of(&h, victim);
    let code = h.wait_stderr_after(
        mark,
        &format!("worker {slot} {{*}}exited with code {{}}"),
        T,
    );
    assert_eq!(
        code[0], "0",
        "Node exits a worker whose channel closed unexpectedly with 0"
    );
    let new_pid = h.wait_online_slot(mark, slot, T);
    h.wait_stderr_after(mark, &format!("worker {slot} ready (pid {new_pid})"), T);
    let now: BTreeSet<i32> = ready
        .iter()
        .map(|(s, p)| if *s == slot { new_pid } else { *p })
        .collect();
    assert_eq!(pids_answering(&addr, &now, 400), now);
    stop_cleanly(&mut h, T);
}

/// A worker that disconnects on purpose (and so stays up) keeps serving on
/// the socket it holds (shared), herd keeps it, and herd's graceful stop
/// still stops it (by signal: there is no channel left for `disconnect`).
#[test]
fn worker_that_disconnects_on_purpose_keeps_serving_shared() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(
        port,
        &["-i", "2", "--balance", "shared"],
        &fixture("disconnect.js"),
        &[],
    );
    let ready = wait_ready(&h, 0, 2, START);
    let all = set_of(&ready);
    let victim = get_pid(&addr, "/disconnect?keep=1");
    wait_text(
        &h,
        Stream::Stdout,
        &format!("process {victim} channel closed"),
        T,
    );
    // It still answers, on its own, for many connections: herd did not stop it.
    let seen = pids_answering(&addr, &all, 400);
    assert_eq!(
        seen, all,
        "the disconnected worker keeps serving with the other"
    );
    assert!(process_alive(victim));
    assert!(
        h.find_all(Stream::Stderr, 0, pat::EXITED_CODE).is_empty()
            && h.find_all(Stream::Stderr, 0, pat::KILLED_BY).is_empty(),
        "no worker exited; stderr:\n{}",
        h.stderr_text()
    );
    let took = stop_cleanly(&mut h, T);
    assert!(
        took < Duration::from_secs(5),
        "graceful stop took {took:?} (kill timeout 1.6 s)"
    );
    assert!(
        wait_until(T, || all.iter().all(|&p| group_empty(p))),
        "every worker is gone after the stop"
    );
}

/// In round-robin a worker without a channel can take no connection: herd
/// takes it out of the rotation (no connection fails), keeps the process,
/// and stops it on a graceful stop.
#[test]
fn worker_that_disconnects_on_purpose_leaves_the_round_robin() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(
        port,
        &["-i", "2", "--balance", "round-robin"],
        &fixture("disconnect.js"),
        &[],
    );
    let ready = wait_ready(&h, 0, 2, START);
    let all = set_of(&ready);
    assert_eq!(pids_answering(&addr, &all, 400), all);
    let victim = get_pid(&addr, "/disconnect?keep=1");
    wait_text(
        &h,
        Stream::Stdout,
        &format!("process {victim} channel closed"),
        T,
    );
    let mut by = BTreeMap::<i32, usize>::new();
    for _ in 0..50 {
        *by.entry(get_pid(&addr, "/")).or_default() += 1;
    }
    assert!(
        !by.contains_key(&victim) && by.values().sum::<usize>() == 50,
        "all 50 answered by the other worker: {by:?}"
    );
    assert!(process_alive(victim), "herd keeps the disconnected worker");
    stop_cleanly(&mut h, T);
    assert!(wait_until(T, || all.iter().all(|&p| group_empty(p))));
}

// ---------------------------------------------------------------------------
// 6. Listen errors reach the app.

#[test]
fn eaddrinuse_reaches_the_app() {
    need_node!();
    // herd binds [::] (dual-stack) for an app that gives no host: holding
    // 0.0.0.0:PORT makes that fail.
    let taken = TcpListener::bind("0.0.0.0:0").expect("bind 0.0.0.0:0");
    let port = taken.local_addr().unwrap().port();
    let h = run_node(port, &["-i", "1"], &fixture("listen-error.js"), &[]);
    let i = wait_text(&h, Stream::Stderr, "listen error EADDRINUSE", START);
    assert!(
        h.stderr_lines()[i].starts_with("[0] "),
        "the app's own stderr line, prefixed: {:?}",
        h.stderr_lines()[i]
    );
    let code = h.wait_stderr("worker 0 {*}exited with code {}", T);
    assert_eq!(code[0], "1");
    assert!(
        herd_said(&h, "errno -98"),
        "herd warns that it told the worker EADDRINUSE; stderr:\n{}",
        h.stderr_text()
    );
    drop(taken);
}

// ---------------------------------------------------------------------------
// 7. TLS.

/// One https GET with curl, checking the certificate against the test CA.
fn curl_https(port: u16) -> Result<String, String> {
    let out = Process::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "5", "--cacert"])
        .arg(example("tls/cert.pem"))
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn https_app_serves(balance: &str) {
    need!(Need::Node, Need::Program("curl"));
    let port = free_port();
    let h = run_node(
        port,
        &["-i", "2", "--balance", balance],
        &example("https.js"),
        &[],
    );
    let want = set_of(&wait_ready(&h, 0, 2, START));
    // With the shared balance the kernel picks: patient (see answers_from).
    let errors = std::sync::Mutex::new(Vec::new());
    let seen: BTreeSet<i32> = answers_from(&want, KERNEL_PICKS, || match curl_https(port) {
        Ok(body) => Some((
            pid_in_body(&body).unwrap_or_else(|| panic!("https body: {body:?}")),
            (),
        )),
        Err(e) => {
            errors.lock().unwrap().push(e);
            None
        }
    })
    .into_keys()
    .collect();
    let errors = errors.into_inner().unwrap();
    assert!(errors.is_empty(), "https requests failed: {errors:?}");
    assert_eq!(seen, want, "both https workers answer");
}

#[test]
fn https_app_serves_shared() {
    https_app_serves("shared");
}

#[test]
fn https_app_serves_round_robin() {
    https_app_serves("round-robin");
}

// ---------------------------------------------------------------------------
// 8. Round-robin.

/// Fresh connections over 2 workers: prompt workers take turns (`rotation`).
/// - One client, 200 connections one after the other: whichever worker had
///   the last one, the other has nothing unanswered and it is its turn, so
///   the split is 100/100 however late either worker is (bound: ±10).
/// - Four clients, 1,000 connections: 500/500 give or take those a worker
///   misses while it is more than `PROMPT` late answering — on a loaded
///   machine that is the kernel's scheduling, not herd (331/669 was seen at
///   load 9), so the bound only catches a balancer that favours one worker
///   grossly: each gets at least 20%.
///
/// The exact rule, with timing simulated, is unit-tested in `rotation`.
#[test]
fn round_robin_spreads_1000_fresh_connections_evenly() {
    need_node!();
    let _s = serial();
    let port = free_port();
    let addr = addr_of(port);
    let h = run_node(
        port,
        &["-i", "2", "--balance", "round-robin"],
        &example("hello.js"),
        &[],
    );
    let want = set_of(&wait_ready(&h, 0, 2, START));
    wait_http_ok(&addr, T);
    let spread = |clients: usize, each: usize| {
        let counts = Arc::new(Mutex::new(BTreeMap::<i32, usize>::new()));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (counts, errors, addr) = (counts.clone(), errors.clone(), addr.clone());
                thread::spawn(move || {
                    for _ in 0..each {
                        match http_request(&addr, "/", Duration::from_secs(5)) {
                            Ok(r) if r.status == 200 => {
                                let pid = r.pid().unwrap_or(-1);
                                *counts.lock().unwrap().entry(pid).or_default() += 1;
                            }
                            Ok(r) => errors.lock().unwrap().push(format!("status {}", r.status)),
                            Err(e) => errors.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let counts = counts.lock().unwrap().clone();
        let errors = errors.lock().unwrap().clone();
        eprintln!("  {clients} client(s) × {each}: spread {counts:?}, errors {errors:?}");
        assert!(errors.is_empty(), "failed requests: {errors:?}");
        assert_eq!(
            counts.keys().copied().collect::<BTreeSet<_>>(),
            want,
            "answered by the two workers"
        );
        counts
    };
    let one = spread(1, 200);
    for (pid, n) in &one {
        assert!(
            (90..=110).contains(n),
            "one client: worker {pid} got {n} of 200 connections, not about half: {one:?}"
        );
    }
    let four = spread(4, 250);
    for (pid, n) in &four {
        assert!(
            *n >= 200,
            "four clients: worker {pid} got {n} of 1000 connections, under 20%: {four:?}"
        );
    }
}

/// One koa worker spins on the CPU for 4 s (`/check`). Connections that
/// arrive meanwhile go to the other worker and are answered fast. The one
/// exception allowed: the connection handed to the busy worker on its turn
/// right after it started spinning (it looked idle: it had acknowledged
/// every connection). herd only learns it is stuck because that connection
/// stays unacknowledged; from then on it skips it. (Node's own
/// RoundRobinHandle also gives that one connection to the busy worker: a
/// worker that acknowledged its last connection counts as free.)
#[test]
fn round_robin_skips_a_worker_blocked_on_cpu() {
    need_deps!();
    let _s = serial();
    let port = free_port();
    let addr = addr_of(port);
    let h = run_node(
        port,
        &["-i", "2", "--balance", "round-robin"],
        &example("koa.js"),
        &[],
    );
    let want = set_of(&wait_ready(&h, 0, 2, START));
    assert_eq!(pids_answering(&addr, &want, 400), want);

    let busy_ms = 4000u64;
    let cpu = CpuWatch::new(want.iter().copied());
    let check = {
        let addr = addr.clone();
        thread::spawn(move || {
            let t0 = Instant::now();
            let r = http_request(
                &addr,
                &format!("/check?ms={busy_ms}"),
                Duration::from_secs(15),
            );
            (r, t0.elapsed())
        })
    };
    // Wait until the worker spins (this only decides which requests count
    // as "meanwhile", not what herd does).
    cpu.wait_busy(Duration::from_millis(100), T);
    let t_start = Instant::now();
    let probes: Vec<_> = (0..20)
        .map(|i| {
            let addr = addr.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(60 * i));
                let t0 = Instant::now();
                let r = http_request(&addr, "/", Duration::from_secs(15));
                (r.map(|r| r.pid()), t0.elapsed())
            })
        })
        .collect();
    let results: Vec<(io::Result<Option<i32>>, Duration)> =
        probes.into_iter().map(|t| t.join().unwrap()).collect();
    let spread = t_start.elapsed();
    let (check_r, check_took) = check.join().unwrap();
    let check_r = check_r.expect("/check answers");
    let busy = check_r.pid().expect("pid of the busy worker");
    let other = *want.iter().find(|&&p| p != busy).unwrap();
    eprintln!("  busy worker {busy} ({check_took:?}), other {other}, probes over {spread:?}:");
    let mut slow = Vec::new();
    for (i, (r, took)) in results.iter().enumerate() {
        eprintln!("    probe {i}: {r:?} in {took:?}");
        let pid = match r {
            Ok(Some(p)) => *p,
            other => panic!("probe {i} failed: {other:?}"),
        };
        if *took >= Duration::from_millis(500) {
            slow.push((i, pid, *took));
        } else {
            assert_eq!(
                pid, other,
                "probe {i} answered fast but by the busy worker?"
            );
        }
    }
    assert!(
        slow.len() <= 1,
        "at most the one connection handed to the busy worker before herd could know may wait; slow: {slow:?}"
    );
    for (i, pid, _) in &slow {
        assert_eq!(
            *pid, busy,
            "probe {i} was slow but not held by the busy worker"
        );
    }
}

// ---------------------------------------------------------------------------
// 9. Rolling reloads under fresh-connection load.

fn two_reloads_under_load_lose_nothing(balance: &str) {
    need_deps!();
    let _s = serial();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(
        port,
        &[
            "-i",
            "2",
            "--balance",
            balance,
            "--kill-timeout",
            "12s",
            "--listen-timeout",
            "10s",
        ],
        &example("graceful.js"),
        &[],
    );
    let first = set_of(&wait_ready(&h, 0, 2, START));
    wait_http_ok(&addr, T);
    let load = Load::start(&addr, "/", 6, Duration::ZERO);
    let t0 = Instant::now();
    let mut slow = Vec::new();
    for round in 1..=2 {
        // Requests in flight on the workers about to be replaced: each
        // drains for about a second while new connections keep coming.
        for _ in 0..4 {
            let addr = addr.clone();
            slow.push(thread::spawn(move || {
                http_request(&addr, "/slow?ms=1000", Duration::from_secs(10))
            }));
        }
        let mark = h.mark(Stream::Stderr);
        h.signal(Signal::SIGHUP);
        h.wait_stderr_after(mark, pat::RELOAD_FINISHED, Duration::from_secs(40));
        eprintln!("  reload {round} finished after {:?}", t0.elapsed());
    }
    // Keep the load on until every replaced worker has finished draining.
    let now: BTreeSet<i32> = h.online_pids().values().copied().collect();
    let (all, _) = h.known_pids();
    let replaced: BTreeSet<i32> = all.difference(&now).copied().collect();
    assert_eq!(
        replaced.len(),
        4,
        "two reloads of two workers: {replaced:?}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || replaced
            .iter()
            .all(|&p| !process_alive(p))),
        "the replaced workers {replaced:?} exited; stderr:\n{}",
        h.stderr_text()
    );
    let rep = load.stop();
    eprintln!("  load ran {:?}", t0.elapsed());
    for (i, t) in slow.into_iter().enumerate() {
        match t.join().unwrap() {
            Ok(r) if r.status == 200 && r.body.contains("waited 1000 ms") => {}
            other => panic!("in-flight request {i} during the reload: {other:?}"),
        }
    }
    assert_eq!(
        rep.failed(),
        0,
        "no connection may fail during two rolling reloads ({balance}): {:?} {:?}",
        rep.failures,
        rep.samples
    );
    assert!(rep.ok >= 200, "the load ran: {} requests", rep.ok);
    assert!(
        !herd_said(&h, "reload aborted"),
        "stderr:\n{}",
        h.stderr_text()
    );
    assert!(
        now.is_disjoint(&first),
        "every worker was replaced: before {first:?}, now {now:?}"
    );
    // (How they exited is the business of
    // `stopping_a_graceful_app_with_a_request_in_flight_exits_0_*`.)
    // A worker may die of the stop signal itself when it lands while Node is
    // already exiting (its handlers gone); what must not happen is SIGKILL.
    assert!(
        !h.herd_lines()
            .iter()
            .any(|l| l.contains("killed by SIGKILL")),
        "no worker needed SIGKILL; stderr:\n{}",
        h.stderr_text()
    );
    let seen = pids_answering(&addr, &now, 400);
    assert_eq!(seen, now, "the new workers answer");
    stop_cleanly(&mut h, Duration::from_secs(20));
}

#[test]
fn two_rolling_reloads_under_load_fail_no_connection_shared() {
    two_reloads_under_load_lose_nothing("shared");
}

#[test]
fn two_rolling_reloads_under_load_fail_no_connection_round_robin() {
    two_reloads_under_load_lose_nothing("round-robin");
}

/// A request in flight on a keep-alive connection: the first request
/// proves the connection was accepted by a worker; the second (`path`) is
/// written, then this returns at once. Join for the second answer.
fn in_flight(addr: &str, path: &str) -> thread::JoinHandle<io::Result<String>> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&sa, REQ).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    // Read the first answer whole (it has a Content-Length).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("first answer");
        assert!(n > 0, "closed before the first answer");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= len {
                break;
            }
        }
    }
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    thread::spawn(move || {
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
}

/// graceful.js (http-terminator) is stopped while a request is in flight:
/// the request completes and herd exits 0. In round-robin the worker leaves
/// the rotation (no cluster `disconnect`), so it also exits 0 as under pm2.
/// In shared mode herd's `disconnect` closes the app's server first (that is
/// what keeps new connections from reaching a draining worker), so
/// http-terminator's own later `server.close(cb)` rejects with
/// ERR_SERVER_NOT_RUNNING and the app exits 1: the app's choice, accepted.
fn graceful_stop_with_request_in_flight(balance: &str) {
    need_deps!();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(
        port,
        &["-i", "1", "--balance", balance, "--kill-timeout", "12s"],
        &example("graceful.js"),
        &[],
    );
    let pid = wait_ready(&h, 0, 1, START)[&0];
    let slow = in_flight(&addr, "/slow?ms=1500");
    stop_cleanly(&mut h, Duration::from_secs(20));
    let answer = slow.join().unwrap().expect("the in-flight answer");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("waited 1500 ms"),
        "the request in flight completes: {answer:?}"
    );
    wait_text(&h, Stream::Stdout, &format!("process {pid} got SIGINT"), T);
    let code = h.wait_stderr(
        &format!("worker 0 (pid {pid}) stopped: it exited with code {{}}"),
        T,
    );
    if balance == "shared" {
        return;
    }
    assert!(
        code[0] == "0" && !h.stderr_text().contains("ERR_SERVER_NOT_RUNNING"),
        "graceful.js should exit 0 after draining (it does under pm2's SIGINT); it exited with {}; stderr:\n{}",
        code[0],
        h.stderr_text()
    );
}

#[test]
fn stopping_a_graceful_app_with_a_request_in_flight_exits_0_shared() {
    graceful_stop_with_request_in_flight("shared");
}

#[test]
fn stopping_a_graceful_app_with_a_request_in_flight_exits_0_round_robin() {
    graceful_stop_with_request_in_flight("round-robin");
}

// ---------------------------------------------------------------------------
// 10. --wait-ready.

#[test]
fn wait_ready_takes_the_ready_message_and_reloads() {
    need_deps!();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(
        port,
        &["-i", "2", "--wait-ready", "--kill-timeout", "12s"],
        &example("graceful.js"),
        &[],
    );
    let first = set_of(&wait_ready(&h, 0, 2, START));
    // graceful.js sends "ready" to its parent: herd shows it too.
    for pid in &first {
        let slot = slot_of(&h, *pid);
        h.wait_stderr(&format!(r#"worker {slot} sent "ready""#), T);
    }
    let mark = h.mark(Stream::Stderr);
    h.signal(Signal::SIGHUP);
    h.wait_stderr_after(mark, pat::RELOAD_FINISHED, Duration::from_secs(30));
    let now = set_of(&wait_ready(&h, mark, 2, T));
    assert!(now.is_disjoint(&first), "{first:?} → {now:?}");
    assert_eq!(pids_answering(&addr, &now, 400), now);
    stop_cleanly(&mut h, Duration::from_secs(20));
}

#[test]
fn wait_ready_reload_aborts_when_the_replacement_never_sends_ready() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(
        port,
        &["-i", "2", "--wait-ready", "--listen-timeout", "1s"],
        &fixture("never-ready.js"),
        &[],
    );
    let old = set_of(&h.wait_online(0, 2, START));
    for pid in &old {
        wait_text(
            &h,
            Stream::Stdout,
            &format!("process {pid} listening"),
            START,
        );
    }
    // They serve (shared socket) though never ready.
    assert_eq!(pids_answering(&addr, &old, 400), old);
    let mark = h.mark(Stream::Stderr);
    h.signal(Signal::SIGHUP);
    h.wait_stderr_after(mark, pat::RELOAD_ABORTED, Duration::from_secs(15));
    assert!(
        herd_said(&h, "not ready within 1 s"),
        "aborted for --listen-timeout; stderr:\n{}",
        h.stderr_text()
    );
    // The replacement is stopped; the old workers keep serving.
    let replacement: Vec<i32> = h
        .find_all(Stream::Stderr, mark, pat::ONLINE)
        .iter()
        .map(|c| c[1].parse().unwrap())
        .collect();
    assert_eq!(
        replacement.len(),
        1,
        "one replacement was tried: {replacement:?}"
    );
    assert!(
        wait_until(T, || !process_alive(replacement[0])),
        "the replacement {} is stopped",
        replacement[0]
    );
    assert!(old.iter().all(|&p| process_alive(p)));
    assert_eq!(
        pids_answering(&addr, &old, 400),
        old,
        "the old workers keep serving"
    );
    assert!(
        h.find_all(Stream::Stderr, 0, pat::READY).is_empty(),
        "no worker was ever ready: with --wait-ready only the \"ready\" message counts"
    );
    stop_cleanly(&mut h, T);
}

/// Round-robin and `--wait-ready` with an app that never sends "ready": the
/// same app answers in `shared` mode (above) and under Node's own primary
/// (or pm2), which hand connections to any listening worker. herd accepts
/// the connection and must not hold it forever.
#[test]
fn wait_ready_round_robin_still_answers_an_app_that_never_sends_ready() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let h = run_node(
        port,
        &[
            "-i",
            "2",
            "--balance",
            "round-robin",
            "--wait-ready",
            "--listen-timeout",
            "1s",
        ],
        &fixture("never-ready.js"),
        &[],
    );
    let pids = set_of(&h.wait_online(0, 2, START));
    for pid in &pids {
        wait_text(
            &h,
            Stream::Stdout,
            &format!("process {pid} listening"),
            START,
        );
    }
    let t0 = Instant::now();
    let r = http_request(&addr, "/", Duration::from_secs(8));
    assert!(
        matches!(&r, Ok(r) if r.status == 200),
        "a connection herd accepted was not answered within {:?}: {r:?}; herd's stderr:\n{}",
        t0.elapsed(),
        h.stderr_text()
    );
}

/// `--kill-timeout` counts from the signal: the cluster `disconnect` and
/// settle time come first and have their own bound. Before, with
/// `--kill-timeout 500ms` a Node worker that needs 400 ms after SIGINT was
/// SIGKILLed (the disconnect phase ate the timeout).
#[test]
fn kill_timeout_counts_from_sigint_after_the_disconnect() {
    need_node!();
    let _s = serial();
    let port = free_port();
    let mut h = run_node(
        port,
        &["-i", "1", "--kill-timeout", "500ms"],
        &fixture("slow-stop.js"),
        &[],
    );
    let ready = wait_ready(&h, 0, 1, START);
    let pid = ready[&0];
    wait_http_ok(&addr_of(port), T);
    let mark = h.mark(Stream::Stderr);
    stop_cleanly(&mut h, T);
    wait_text(&h, Stream::Stdout, &format!("process {pid} got SIGINT"), T);
    wait_text(&h, Stream::Stdout, &format!("process {pid} drained"), T);
    assert!(
        h.find_all(Stream::Stderr, mark, pat::KILLED_BY).is_empty(),
        "the worker had its 500 ms after SIGINT; stderr:\n{}",
        h.stderr_text()
    );
    assert!(
        herd_said(&h, "then gets SIGINT; SIGKILL 500 ms after that"),
        "the stop message says what happens; stderr:\n{}",
        h.stderr_text()
    );
}

// ---------------------------------------------------------------------------
// 11. --shutdown-with-message.

#[test]
fn shutdown_with_message_stops_workers_by_message() {
    need_node!();
    let port = free_port();
    let mut h = run_node(
        port,
        &[
            "-i",
            "2",
            "--shutdown-with-message",
            "--kill-timeout",
            "10s",
        ],
        &fixture("shutdown-message.js"),
        &[],
    );
    let ready = wait_ready(&h, 0, 2, START);
    wait_http_ok(&addr_of(port), T);
    let took = stop_cleanly(&mut h, Duration::from_secs(15));
    for pid in ready.values() {
        wait_text(&h, Stream::Stdout, &format!("got shutdown pid {pid}"), T);
    }
    assert!(
        took < Duration::from_secs(4),
        "the workers stopped on the message, well before the 10 s kill timeout; took {took:?}"
    );
    assert!(
        h.find_all(Stream::Stderr, 0, pat::KILLED_BY).is_empty(),
        "no worker was killed; stderr:\n{}",
        h.stderr_text()
    );
    for c in h.find_all(Stream::Stderr, 0, pat::EXITED_CODE) {
        assert_eq!(c[1], "0", "worker {} exited with {}", c[0], c[1]);
    }
}

// ---------------------------------------------------------------------------
// 12. Channel abuse does not hurt herd or the other workers.

/// Start `misbehave.js` (2 workers, round-robin so herd is on every
/// request's path), make one worker misbehave via `path` under a steady
/// load, run `check`, then require: no request failed, the other worker
/// answered, herd still answers and exits 0 on SIGTERM.
fn misbehaviour(path: &str, check: impl FnOnce(&Herd, usize, i32)) {
    need_node!();
    let _s = serial();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(
        port,
        &["-i", "2", "--balance", "round-robin"],
        &fixture("misbehave.js"),
        &[],
    );
    let ready = wait_ready(&h, 0, 2, START);
    let all = set_of(&ready);
    assert_eq!(pids_answering(&addr, &all, 400), all);
    let load = Load::start(&addr, "/", 2, Duration::from_millis(2));
    let culprit = get_pid(&addr, path);
    let slot = slot_of(&h, culprit);
    check(&h, slot, culprit);
    let rep = load.stop();
    assert_eq!(rep.failed(), 0, "{:?} {:?}", rep.failures, rep.samples);
    let other = *all.iter().find(|&&p| p != culprit).unwrap();
    assert!(rep.ok > 0, "the load ran");
    // herd on the request path still answers promptly, from both workers.
    let t0 = Instant::now();
    let seen = pids_answering(&addr, &all, 400);
    assert_eq!(
        seen, all,
        "both workers still answer (the other is {other})"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        h.find_all(Stream::Stderr, 0, pat::EXITED_CODE).is_empty()
            && h.find_all(Stream::Stderr, 0, pat::KILLED_BY).is_empty(),
        "no worker exited; stderr tail:\n{}",
        tail(&h)
    );
    stop_cleanly(&mut h, T);
}

fn tail(h: &Herd) -> String {
    let lines = h.stderr_lines();
    let from = lines.len().saturating_sub(30);
    lines[from..]
        .iter()
        .map(|l| if l.len() > 300 { &l[..300] } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn malformed_channel_line_is_ignored() {
    misbehaviour("/malformed", |h, slot, pid| {
        wait_text(
            h,
            Stream::Stdout,
            &format!("process {pid} wrote a malformed line"),
            T,
        );
        h.wait_stderr(
            &format!("worker {slot} (pid {pid}) sent a message that is not JSON"),
            T,
        );
    });
}

/// One IPC message is capped (1 MiB by default): a 10 MB one is refused
/// with a warning naming the worker, its pid and the size, without being
/// buffered, and the next message on the channel still arrives.
#[test]
fn ten_mb_message_is_refused_and_the_next_one_arrives() {
    misbehaviour("/big?mb=10", |h, slot, pid| {
        let warning = format!("worker {slot} (pid {pid}) sent an IPC message of 10.0 MiB");
        h.wait_line_after(Stream::Stderr, 0, &warning, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no {warning:?} line; stderr tail:\n{}", tail(h)));
        assert!(
            herd_said(h, "over the limit of 1 MiB"),
            "the warning names the limit"
        );
        let next = format!(r#"worker {slot} sent {{"after":"big"}}"#);
        h.wait_line_after(Stream::Stderr, 0, &next, T)
            .unwrap_or_else(|| panic!("no {next:?} line; stderr tail:\n{}", tail(h)));
        assert!(
            !herd_said(h, r#"sent {"big""#),
            "the oversized message is not delivered"
        );
    });
}

#[test]
fn message_flood_does_not_stall_herd() {
    misbehaviour("/flood?n=100000", |h, slot, _pid| {
        let line = format!(r#"worker {slot} sent {{"flood":"last"}}"#);
        h.wait_line_after(Stream::Stderr, 0, &line, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no {line:?}; stderr tail:\n{}", tail(h)));
        let n = h
            .herd_lines()
            .iter()
            .filter(|l| l.contains(&format!(r#"worker {slot} sent {{"flood":"#)))
            .count();
        assert_eq!(n, 100_000, "every message was relayed, once");
    });
}

// ---------------------------------------------------------------------------
// 10. Every socket type a cluster worker can ask for (tests/node-apps/sockets.js).

/// Wait until `n` stdout lines match `pattern`: their captures.
fn wait_said(h: &Herd, pattern: &str, n: usize, timeout: Duration) -> Vec<Vec<String>> {
    let mut got = Vec::new();
    let ok = wait_until(timeout, || {
        got = h.find_all(Stream::Stdout, 0, pattern);
        got.len() >= n
    });
    assert!(
        ok,
        "{n} lines {pattern:?} expected, got {got:?}; stdout:\n{}\nstderr:\n{}",
        h.stdout_lines().join("\n"),
        tail(h)
    );
    got
}

/// No worker exited (a crash loop shows as exits).
fn no_worker_exited(h: &Herd) {
    assert!(
        h.find_all(Stream::Stderr, 0, pat::EXITED_CODE).is_empty()
            && h.find_all(Stream::Stderr, 0, pat::KILLED_BY).is_empty(),
        "no worker exited; stdout:\n{}\nstderr:\n{}",
        h.stdout_lines().join("\n"),
        tail(h)
    );
}

/// Send datagrams to `addr` until every pid in `want` answered (or the
/// deadline): the pids that answered.
fn udp_pids(addr: &str, want: &BTreeSet<i32>, timeout: Duration) -> BTreeSet<i32> {
    let local = if addr.starts_with('[') {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let deadline = Instant::now() + timeout;
    let mut seen = BTreeSet::new();
    while Instant::now() < deadline && !want.is_subset(&seen) {
        // A fresh client port each time: the kernel wakes whichever worker.
        let sock = std::net::UdpSocket::bind(local).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        sock.send_to(b"ping", addr).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Some(pid) = pid_in_body(&String::from_utf8_lossy(&buf[..n])) {
                seen.insert(pid);
            }
        }
    }
    seen
}

fn udp_is_shared(family: &str, balance: &str) {
    need_node!();
    if family == "udp6" {
        need!(Need::Ipv6);
    }
    let mut h = run_node(
        0,
        &["-i", "2", "--balance", balance],
        &fixture("sockets.js"),
        &[family],
    );
    let said = wait_said(&h, &format!("{family} listening {{}} pid {{}}"), 2, START);
    let ports: BTreeSet<&String> = said.iter().map(|c| &c[0]).collect();
    assert_eq!(
        ports.len(),
        1,
        "port 0: one socket, one port for all workers: {said:?}"
    );
    let port = said[0][0].clone();
    let pids: BTreeSet<i32> = said.iter().map(|c| c[1].parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    let addr = if family == "udp6" {
        format!("[::1]:{port}")
    } else {
        format!("127.0.0.1:{port}")
    };
    let seen = udp_pids(&addr, &pids, T);
    assert!(
        !seen.is_empty(),
        "the UDP app answers on {addr}; stderr:\n{}",
        tail(&h)
    );
    assert!(seen.is_subset(&pids), "{seen:?} ⊆ {pids:?}");
    assert!(
        herd_said(&h, "(udp, shared by the workers)"),
        "herd says the UDP socket is shared; stderr:\n{}",
        tail(&h)
    );
    no_worker_exited(&h);
    stop_cleanly(&mut h, T);
}

#[test]
fn udp4_socket_is_shared_under_shared_balance() {
    udp_is_shared("udp4", "shared");
}

#[test]
fn udp4_socket_is_shared_under_round_robin() {
    udp_is_shared("udp4", "round-robin");
}

#[test]
fn udp6_socket_is_shared_under_round_robin() {
    udp_is_shared("udp6", "round-robin");
}

#[test]
fn udp6_socket_is_shared_under_shared_balance() {
    udp_is_shared("udp6", "shared");
}

fn listen_zero(balance: &str) {
    need_node!();
    let mut h = run_node(
        0,
        &["-i", "2", "--balance", balance],
        &fixture("sockets.js"),
        &["tcp0"],
    );
    let said = wait_said(&h, "tcp0 listening {} pid {}", 2, START);
    assert_eq!(said[0][0], said[1][0], "one port for all workers: {said:?}");
    let pids: BTreeSet<i32> = said.iter().map(|c| c[1].parse().unwrap()).collect();
    let addr = format!("127.0.0.1:{}", said[0][0]);
    assert_eq!(
        pids_answering(&addr, &pids, 400),
        pids,
        "both workers answer on {addr}"
    );
    no_worker_exited(&h);
    stop_cleanly(&mut h, T);

    // Two `listen(0)` in one worker are two sockets; each worker's n-th is
    // the same one.
    let mut h = run_node(
        0,
        &["-i", "2", "--balance", balance],
        &fixture("sockets.js"),
        &["twice0"],
    );
    let said = wait_said(&h, "twice0 ports {} {} pid {}", 2, START);
    assert_ne!(said[0][0], said[0][1], "two servers, two ports: {said:?}");
    assert_eq!(
        (&said[0][0], &said[0][1]),
        (&said[1][0], &said[1][1]),
        "the workers share both: {said:?}"
    );
    no_worker_exited(&h);
    stop_cleanly(&mut h, T);
}

#[test]
fn listen_zero_gives_every_worker_the_same_port_shared() {
    listen_zero("shared");
}

#[test]
fn listen_zero_gives_every_worker_the_same_port_round_robin() {
    listen_zero("round-robin");
}

fn unix_path(balance: &str) {
    need_node!();
    let dir = TempDir::new("node-unix");
    let sock = dir.join("app.sock");
    let args: Vec<String> = ["run", "-i", "2", "--balance", balance, "--"]
        .iter()
        .map(|s| s.to_string())
        .chain([fixture("sockets.js"), "unix".into()])
        .collect();
    let mut h = herd_with_env(
        &[
            ("SOCK", sock.to_str().unwrap()),
            ("NODE_CLUSTER_SCHED_POLICY", ""),
        ],
        &args,
    );
    let said = wait_said(&h, "unix listening {*} pid {}", 2, START);
    let pids: BTreeSet<i32> = said.iter().map(|c| c[0].parse().unwrap()).collect();
    let seen: BTreeSet<i32> = answers_from(&pids, 400, || {
        let r = unix_http_request(&sock, "/", REQ).expect("the app answers on its socket");
        r.pid().map(|p| (p, ()))
    })
    .into_keys()
    .collect();
    assert_eq!(seen, pids, "both workers answer on {}", sock.display());
    no_worker_exited(&h);
    stop_cleanly(&mut h, T);
    assert!(
        !sock.exists(),
        "herd removes the socket file it bound at exit"
    );
}

#[test]
fn unix_socket_path_shared() {
    unix_path("shared");
}

#[test]
fn unix_socket_path_round_robin() {
    unix_path("round-robin");
}

/// `exclusive: true`: the worker binds the port itself and never asks herd,
/// exactly as under Node's cluster (so herd learns it is ready from its
/// `ready` message).
#[test]
fn exclusive_worker_binds_alone() {
    need_node!();
    let port = free_port();
    let mut h = run_node(
        port,
        &["-i", "1", "--balance", "round-robin", "--wait-ready"],
        &fixture("sockets.js"),
        &["exclusive"],
    );
    let said = wait_said(&h, "exclusive listening {} pid {}", 1, START);
    wait_ready(&h, 0, 1, START);
    assert_eq!(said[0][0], port.to_string());
    let pid: i32 = said[0][1].parse().unwrap();
    assert_eq!(
        get_pid(&addr_of(port), "/"),
        pid,
        "the worker answers on its own socket"
    );
    assert!(
        !herd_said(&h, "listening on "),
        "herd bound nothing for an exclusive listen; stderr:\n{}",
        tail(&h)
    );
    no_worker_exited(&h);
    stop_cleanly(&mut h, T);
}

/// `listen({fd: 3})`: the worker's inherited fd 3 is herd's first `--listen` socket.
fn listen_fd(balance: &str) {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(
        port,
        &["-i", "2", "--balance", balance, "--listen", &addr],
        &fixture("sockets.js"),
        &["fd"],
    );
    let said = wait_said(&h, "fd listening pid {}", 2, START);
    let pids: BTreeSet<i32> = said.iter().map(|c| c[0].parse().unwrap()).collect();
    assert_eq!(
        pids_answering(&addr, &pids, 400),
        pids,
        "both workers answer on {addr}"
    );
    no_worker_exited(&h);
    stop_cleanly(&mut h, T);
}

#[test]
fn listen_fd_shared() {
    listen_fd("shared");
}

#[test]
fn listen_fd_round_robin() {
    listen_fd("round-robin");
}

/// `listen({fd: 9})` with no such listener: the app's listen() fails with
/// EBADF instead of waiting for ever.
#[test]
fn listen_on_a_missing_fd_fails_in_the_app() {
    need_node!();
    let mut h = run_node(0, &["-i", "1"], &fixture("sockets.js"), &["badfd"]);
    wait_text(&h, Stream::Stdout, "badfd error EBADF", START);
    // herd's own line may come a moment after the worker's.
    assert!(
        wait_until(T, || herd_said(&h, "errno -9")),
        "herd says what it told the worker; stderr:\n{}",
        tail(&h)
    );
    h.signal(Signal::SIGTERM);
    h.wait_exit(T);
}

/// `process.send(msg, handle)` to herd: the message arrives, the handle is
/// closed with one warning, and herd keeps no fd.
#[test]
fn handle_sent_to_herd_is_closed_and_the_message_delivered() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(port, &["-i", "1"], &fixture("sockets.js"), &["sendhandle"]);
    wait_said(&h, "sendhandle listening {} pid {}", 1, START);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", h.pid()))
            .unwrap()
            .count()
    };
    let r = http_request(&addr, "/send", REQ).unwrap();
    assert_eq!(
        r.body.trim(),
        "sent ok",
        "the worker's send completed: {r:?}"
    );
    let before = fds();
    for _ in 0..20 {
        let r = http_request(&addr, "/send", REQ).unwrap();
        assert_eq!(r.body.trim(), "sent ok");
    }
    assert!(
        fds() <= before + 2,
        "herd keeps no fd per handle: {before} → {}",
        fds()
    );
    h.wait_stderr(r#"worker 0 sent {"after":"handle","error":null}"#, T);
    assert!(
        herd_said(&h, r#"worker 0 sent {"sent":"handle"}"#),
        "{}",
        tail(&h)
    );
    let warnings = h
        .herd_lines()
        .iter()
        .filter(|l| l.contains("herd keeps no handles"))
        .count();
    assert_eq!(warnings, 1, "one warning per worker; stderr:\n{}", tail(&h));
    no_worker_exited(&h);
    stop_cleanly(&mut h, T);
}

// ---------------------------------------------------------------------------
// 11. Round-robin bounds: what herd holds while no worker takes connections.

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 2,000 clients connect while the only worker is stopped (SIGSTOP): herd
/// holds a bounded number of connections (the rest wait in the kernel's
/// queue), gives up on the worker's unanswered ones after its answer timeout,
/// and once the worker runs again every other client is served.
#[test]
fn round_robin_backlog_is_bounded_while_the_worker_is_stopped() {
    use nix::sys::signal::{kill, Signal as Sig};
    use nix::unistd::Pid;
    need_node!();
    let _s = serial();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(
        port,
        &["-i", "1", "--balance", "round-robin"],
        &example("hello.js"),
        &[],
    );
    let ready = wait_ready(&h, 0, 1, START);
    let worker = *ready.values().next().unwrap();
    get_pid(&addr, "/");
    let herd = h.pid();
    let (fds0, rss0) = (fd_count(herd), rss_kib(herd));
    kill(Pid::from_raw(worker), Sig::SIGSTOP).unwrap();
    const N: usize = 2000;
    let mut clients = Vec::with_capacity(N);
    let mut peak_fds = 0;
    for i in 0..N {
        let mut c = std::net::TcpStream::connect(&addr).expect("the kernel queue takes the client");
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        clients.push(c);
        if i % 100 == 0 {
            peak_fds = peak_fds.max(fd_count(herd));
        }
    }
    let mut peak_rss = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        peak_fds = peak_fds.max(fd_count(herd));
        peak_rss = peak_rss.max(rss_kib(herd));
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "  MEASURED herd with {N} clients and its only worker stopped: fds {fds0} -> peak {peak_fds}, \
         RSS {rss0} KiB -> peak {peak_rss} KiB"
    );
    assert!(
        peak_fds <= fds0 + 512 + 16,
        "herd holds at most 512 connections per socket: {fds0} -> {peak_fds} fds"
    );
    // The worker never answers: herd closes what it handed it and says so.
    h.wait_stderr(
        "worker 0 has not answered for a connection handed to it",
        Duration::from_secs(30),
    );
    thread::sleep(Duration::from_millis(200));
    let after = fd_count(herd);
    eprintln!(
        "  MEASURED after the answer timeout: fds {after}, RSS {} KiB",
        rss_kib(herd)
    );
    assert!(after <= fds0 + 512 + 16, "still bounded: {after}");
    kill(Pid::from_raw(worker), Sig::SIGCONT).unwrap();
    // Every client herd did not give up on is served now.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut served, mut closed) = (0, 0);
    for mut c in clients {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        c.set_read_timeout(Some(left)).unwrap();
        let mut body = String::new();
        match c.read_to_string(&mut body) {
            Ok(_) if body.contains(&format!("process {worker}")) => served += 1,
            _ => closed += 1,
        }
    }
    eprintln!(
        "  MEASURED after SIGCONT: {served} served, {closed} closed by herd's answer timeout"
    );
    assert!(
        closed <= 128 + 8,
        "only connections handed to the stopped worker are closed: {closed}"
    );
    assert_eq!(served + closed, N);
    h.wait_stderr("worker 0 answers again", T);
    get_pid(&addr, "/");
    stop_cleanly(&mut h, T);
}

/// A socket herd bound for workers closes once no worker uses it any more
/// (as under Node's primary); a Unix socket's file goes with it.
fn closed_when_unused(balance: &str, unix: bool) {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let dir = TempDir::new("node-closable");
    let sock = dir.join("app.sock");
    let args: Vec<String> = ["run", "-i", "1", "--balance", balance, "--"]
        .iter()
        .map(|s| s.to_string())
        .chain([fixture("sockets.js"), "closable".into()])
        .collect();
    let sock_env = if unix { sock.to_str().unwrap() } else { "" };
    let port_env = port.to_string();
    let mut h = herd_with_env(
        &[
            ("PORT", &port_env),
            ("SOCK", sock_env),
            ("NODE_CLUSTER_SCHED_POLICY", ""),
        ],
        &args,
    );
    wait_said(&h, "closable listening {*} pid {}", 1, START);
    let get = |path: &str| {
        if unix {
            unix_http_request(&sock, path, REQ)
        } else {
            http_request(&addr, path, REQ)
        }
    };
    assert!(get("/").is_ok(), "the app answers");
    assert!(get("/close").is_ok());
    wait_said(&h, "closed pid {}", 1, T);
    let closed = wait_until(T, || {
        if unix {
            !sock.exists()
        } else {
            std::net::TcpStream::connect(&addr).is_err()
        }
    });
    assert!(
        closed,
        "herd closed the socket nobody uses (unix: {unix}); stderr:\n{}",
        tail(&h)
    );
    no_worker_exited(&h);
    stop_cleanly(&mut h, T);
}

#[test]
fn unused_tcp_socket_is_closed_shared() {
    closed_when_unused("shared", false);
}

#[test]
fn unused_tcp_socket_is_closed_round_robin() {
    closed_when_unused("round-robin", false);
}

#[test]
fn unused_unix_socket_is_closed_and_its_file_removed_shared() {
    closed_when_unused("shared", true);
}

#[test]
fn unused_unix_socket_is_closed_and_its_file_removed_round_robin() {
    closed_when_unused("round-robin", true);
}

/// A connection every worker refuses (`accepted: false`) is closed, not
/// bounced between herd and the workers for ever.
#[test]
fn connection_refused_by_every_worker_is_closed() {
    need_node!();
    let port = free_port();
    let addr = addr_of(port);
    let mut h = run_node(
        port,
        &["-i", "1", "--balance", "round-robin"],
        &fixture("sockets.js"),
        &["refuse"],
    );
    wait_said(&h, "refuse asked for {} pid {}", 1, START);
    let herd = h.pid();
    assert!(
        wait_until(T, || std::net::TcpStream::connect(&addr).is_ok()),
        "herd listens for it"
    );
    let fds0 = fd_count(herd);
    for _ in 0..20 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut buf = Vec::new();
        let t0 = Instant::now();
        // EOF or a reset, promptly: not a connection left hanging.
        let r = c.read_to_end(&mut buf);
        assert!(
            t0.elapsed() < Duration::from_secs(5) && buf.is_empty(),
            "closed at once: {r:?} after {:?}",
            t0.elapsed()
        );
    }
    assert!(fd_count(herd) <= fds0 + 2, "herd keeps none of them");
    // herd is not busy bouncing: it still answers a signal at once.
    no_worker_exited(&h);
    stop_cleanly(&mut h, T);
}

/// Regression: herd closed the socket a Node worker had asked for when that
/// worker died, so with one worker every client that came before the
/// replacement listened was refused. The socket now outlives the worker.
#[test]
fn a_crashed_single_worker_keeps_its_socket_open_for_the_replacement() {
    need_node!();
    for balance in ["shared", "round-robin"] {
        let port = free_port();
        let addr = addr_of(port);
        let mut h = run_node(
            port,
            &["-i", "1", "--balance", balance],
            &example("hello.js"),
            &[],
        );
        let first = wait_ready(&h, 0, 1, START)[&0];
        assert!(http_request(&addr, "/", REQ).is_ok());
        let mark = h.mark(Stream::Stderr);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
        // Connect at once, before the replacement listens: queued, then served.
        let r = http_request(&addr, "/", Duration::from_secs(10));
        assert!(
            r.as_ref().is_ok_and(|r| r.status == 200),
            "{balance}: a client during the restart got {r:?}"
        );
        let second = wait_ready(&h, mark, 1, START)[&0];
        assert_ne!(first, second);
        stop_cleanly(&mut h, T);
    }
}
