//! The apps outlive herd's daemon: each runs under a supervisor process of
//! its own, which the daemon only manages. End to end, under
//! fresh-connection load on loopback (bounded in time and count), with a
//! Node cluster app in round-robin (herd is its cluster primary, accepting
//! and handing over every connection) and a Python app on a socket herd
//! passes (`LISTEN_FDS`):
//!
//! - `kill -9` of the daemon costs no request, no worker and no log line,
//!   and the next CLI command's daemon adopts both apps at once;
//! - `kill -9` of one app's supervisor costs the other app nothing, leaves
//!   no process of the killed one's app (a grandchild included), and the
//!   daemon brings it back within its backoff;
//! - a supervisor of another protocol version is named, with what to do.
//!
//! Every daemon and supervisor a test starts is ended when it ends (the
//! testkit's `Daemon`, by the pids in its home).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use herd_testkit::*;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A Node app with no cluster code of its own (herd makes it a cluster
/// worker): answers its pid, prints `tick PID N` every 10 ms, and on its
/// way out (`disconnect` from its primary, or a signal) stops ticking,
/// prints `stopped PID after N` and lets the requests in flight finish.
const NODE_APP: &str = r#"'use strict';
const http = require('node:http');
let n = 0;
let stopped = false;
const tick = setInterval(() => { n += 1; console.log(`tick ${process.pid} ${n}`); }, 10);
const server = http.createServer((req, res) => res.end(`${process.pid}\n`));
server.listen(Number(process.env.PORT));
function stop() {
  if (stopped) return;
  stopped = true;
  clearInterval(tick);
  console.log(`stopped ${process.pid} after ${n}`);
  server.close();
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on('disconnect', stop);
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
"#;

/// A Python server on the socket herd passes as fd 3 (`LISTEN_FDS=1`):
/// answers its pid, starts a grandchild (`sleep 777`, as `sleep 777 &`
/// would) and prints `grandchild PID`, prints `tick PID N` every 10 ms,
/// and on SIGINT/SIGTERM stops ticking, prints `stopped PID after N` and
/// finishes the requests in flight.
const PYTHON_APP: &str = r#"
import http.server, os, signal, socket, socketserver, subprocess, sys, threading, time
assert os.environ.get("LISTEN_FDS") == "1", "no socket from herd"
pid = os.getpid()
sleeper = subprocess.Popen(["sleep", "777"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
print(f"grandchild {sleeper.pid}", flush=True)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        body = f"{pid}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = False
server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
lock = threading.Lock()
state = {"n": 0, "stopped": False}
def ticker():
    while True:
        with lock:
            if state["stopped"]:
                return
            state["n"] += 1
            print(f"tick {pid} {state['n']}", flush=True)
        time.sleep(0.01)
def stop(signum, frame):
    with lock:
        if state["stopped"]:
            return
        state["stopped"] = True
        print(f"stopped {pid} after {state['n']}", flush=True)
    threading.Thread(target=server.shutdown).start()
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
threading.Thread(target=ticker, daemon=True).start()
server.serve_forever()
server.server_close()
"#;

/// Both apps under `d`: `rr` (Node, 2 workers, round-robin) and `py`
/// (Python, 2 workers on one passed socket). Their addresses.
fn start_both(d: &Daemon, dir: &Path) -> (String, String) {
    let node = dir.join("ticks.js");
    std::fs::write(&node, NODE_APP).unwrap();
    let python = dir.join("ticks.py");
    std::fs::write(&python, PYTHON_APP).unwrap();
    let (port, py_port) = (free_port(), free_port());
    d.ok(&[
        "start",
        node.to_str().unwrap(),
        "--name",
        "rr",
        "-i",
        "2",
        "--balance",
        "round-robin",
        "--env",
        &format!("PORT={port}"),
    ]);
    d.ok(&[
        "start",
        "--name",
        "py",
        "-i",
        "2",
        "--ready-delay",
        "300ms",
        // A fixed port: a supervisor started again binds it again.
        "--listen",
        &format!("127.0.0.1:{py_port}"),
        "python3",
        "--",
        python.to_str().unwrap(),
    ]);
    (format!("127.0.0.1:{port}"), format!("127.0.0.1:{py_port}"))
}

/// Fresh-connection load on `addr`, bounded.
fn load(addr: &str) -> Load {
    Load::start_bounded(
        addr,
        "/",
        2,
        Duration::from_millis(2),
        Duration::from_secs(90),
        200_000,
    )
}

/// The app's out log.
fn out_log(d: &Daemon, app: &str) -> String {
    let path = d.app(app)["out_log"].as_str().unwrap().to_string();
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Every worker's numbered lines in `log` must run 1, 2, 3 … with no gap
/// and no double; a worker that said `stopped PID after N` must have
/// printed exactly 1..=N (nothing lost at its end). Returns the workers
/// that stopped, with their count.
fn check_ticks(app: &str, log: &str) -> BTreeMap<i32, u64> {
    let mut ticks: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    let mut stopped = BTreeMap::new();
    for line in log.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "tick") {
            if let (Some(pid), Some(n)) = (words.get(i + 1), words.get(i + 2)) {
                if let (Ok(pid), Ok(n)) = (pid.parse(), n.parse()) {
                    ticks.entry(pid).or_default().push(n);
                }
            }
        }
        if let Some(i) = words.iter().position(|w| *w == "stopped") {
            if let (Some(pid), Some(n)) = (words.get(i + 1), words.get(i + 3)) {
                if let (Ok(pid), Ok(n)) = (pid.parse::<i32>(), n.parse::<u64>()) {
                    stopped.insert(pid, n);
                }
            }
        }
    }
    assert!(!ticks.is_empty(), "{app}: no numbered line in its log");
    for (pid, ns) in &ticks {
        let want: Vec<u64> = (1..=ns.len() as u64).collect();
        if *ns != want {
            let gap = ns
                .windows(2)
                .find(|w| w[1] != w[0] + 1)
                .map(|w| format!("{} then {}", w[0], w[1]));
            panic!(
                "{app}: worker {pid}'s numbered lines have a gap or a double ({} lines; first break: {gap:?})",
                ns.len()
            );
        }
        if let Some(last) = stopped.get(pid) {
            assert_eq!(
                ns.len() as u64,
                *last,
                "{app}: worker {pid} printed {last} lines before it stopped; the log has {}",
                ns.len()
            );
        }
    }
    stopped
}

/// `adopted N running app(s) in X ms` from the last daemon's log: (N, X).
fn adoption(log: &str) -> Option<(usize, f64)> {
    let line = log.lines().rev().find(|l| l.contains("herd: adopted "))?;
    let rest = &line[line.find("herd: adopted ")? + "herd: adopted ".len()..];
    let mut words = rest.split_whitespace();
    let n = words.next()?.parse().ok()?;
    let ms = words.find_map(|w| w.parse::<f64>().ok())?;
    Some((n, ms))
}

/// The pids `grandchild PID` lines name in `log`.
fn grandchildren(log: &str) -> BTreeSet<i32> {
    log.lines()
        .filter_map(|l| {
            let i = l.find("grandchild ")?;
            l[i + "grandchild ".len()..].trim().parse().ok()
        })
        .collect()
}

fn supervisor_pid(d: &Daemon, app: &str) -> i32 {
    let id = d.app(app)["id"].as_u64().unwrap();
    std::fs::read_to_string(d.path().join(format!("apps/{id}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn kill_9_of_the_daemon_under_load_loses_no_request_no_worker_and_no_line() {
    need!(Need::Node, Need::Python);
    let d = Daemon::new();
    let dir = TempDir::new("adopt");
    let (rr_addr, py_addr) = start_both(&d, dir.path());
    let rr_pids = d.wait_online("rr", 2);
    let py_pids = d.wait_online("py", 2);
    let rr_load = load(&rr_addr);
    let py_load = load(&py_addr);
    rr_load.wait_for("rr answers", WAIT, |n, _| n >= 100);
    py_load.wait_for("py answers", WAIT, |n, _| n >= 100);

    let daemon = d.daemon_pid().expect("the daemon's pid");
    kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
    assert!(wait_until(WAIT, || !process_alive(daemon)));
    // No daemon runs: the apps serve on.
    let (rr_n, py_n) = (rr_load.ok_so_far(), py_load.ok_so_far());
    rr_load.wait_for("rr answers with no daemon", WAIT, |n, _| n >= rr_n + 200);
    py_load.wait_for("py answers with no daemon", WAIT, |n, _| n >= py_n + 200);

    // The next CLI command's daemon adopts both, with the same workers.
    let rr = d.app("rr");
    let new_daemon = d.daemon_pid().expect("a new daemon");
    assert_ne!(new_daemon, daemon);
    let (adopted, ms) = adoption(&d.log()).unwrap_or_else(|| panic!("{}", d.log()));
    assert_eq!(adopted, 2, "{}", d.log());
    assert!(ms <= 100.0, "adopted in {ms} ms\n{}", d.log());
    eprintln!("  adopted 2 apps {ms} ms after the daemon's start");
    assert_eq!(rr["status"], "online", "{rr:#}");
    assert_eq!(worker_pids(&rr), rr_pids, "{rr:#}");
    assert_eq!(worker_pids(&d.app("py")), py_pids);

    // A reload of each after adoption, under the same load.
    d.ok(&["reload", "rr"]);
    d.ok(&["reload", "py"]);
    let rr_new = d.wait_online("rr", 2);
    let py_new = d.wait_online("py", 2);
    assert!(rr_new.iter().all(|p| !rr_pids.contains(p)), "{rr_new:?}");
    assert!(py_new.iter().all(|p| !py_pids.contains(p)), "{py_new:?}");
    rr_load.wait_for("rr's new workers answer", WAIT, |_, pids| {
        rr_new.iter().all(|p| pids.contains(p))
    });
    py_load.wait_for("py's new workers answer", WAIT, |_, pids| {
        py_new.iter().all(|p| pids.contains(p))
    });
    let rr_report = rr_load.stop();
    let py_report = py_load.stop();
    assert_eq!(rr_report.failed(), 0, "rr: {rr_report:?}");
    assert_eq!(py_report.failed(), 0, "py: {py_report:?}");

    // A stop after adoption: every worker ends gracefully, its last line
    // in the log.
    d.ok(&["stop", "rr"]);
    d.ok(&["stop", "py"]);
    let all: Vec<i32> = [&rr_pids, &py_pids, &rr_new, &py_new]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    assert!(wait_until(WAIT, || all.iter().all(|p| !process_alive(*p))));
    for (app, old, new) in [("rr", &rr_pids, &rr_new), ("py", &py_pids, &py_new)] {
        let stopped = check_ticks(app, &out_log(&d, app));
        for pid in old.iter().chain(new) {
            assert!(
                stopped.contains_key(pid),
                "{app}: worker {pid} did not stop gracefully: {stopped:?}"
            );
        }
    }
}

#[test]
fn kill_9_of_one_supervisor_leaves_nothing_of_its_app_and_the_other_app_serves_on() {
    need!(Need::Node, Need::Python);
    let d = Daemon::new();
    let dir = TempDir::new("sup-kill");
    let (rr_addr, py_addr) = start_both(&d, dir.path());
    d.wait_online("rr", 2);
    let py_pids = d.wait_online("py", 2);
    let mut sleepers = BTreeSet::new();
    assert!(wait_until(WAIT, || {
        sleepers = grandchildren(&out_log(&d, "py"));
        sleepers.len() == 2
    }));
    assert!(sleepers.iter().all(|p| process_alive(*p)));

    // rr's latency with nothing happening, then while py's supervisor is
    // killed and started again.
    let window = |what: &str| {
        let l = load(&rr_addr);
        l.wait_for(what, WAIT, |n, _| n >= 300);
        l.stop()
    };
    let before = window("rr answers before");
    let victim = supervisor_pid(&d, "py");
    let during = load(&rr_addr);
    during.wait_for("rr answers", WAIT, |n, _| n >= 50);
    let killed = Instant::now();
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();

    // Nothing of py's app remains: its workers die with their supervisor,
    // and its next supervisor ends the grandchildren before anything starts.
    let gone: Vec<i32> = py_pids.iter().chain(&sleepers).copied().collect();
    assert!(
        wait_until(WAIT, || gone.iter().all(|p| !process_alive(*p))),
        "left of py: {:?}",
        gone.iter()
            .filter(|p| process_alive(**p))
            .collect::<Vec<_>>()
    );
    // It is back within its backoff (100 ms for a first restart) and a start.
    let mut back = Vec::new();
    assert!(
        wait_until(WAIT, || {
            let py = d.app("py");
            back = worker_pids(&py);
            py["status"] == "online" && back.len() == 2
        }),
        "{}",
        d.log()
    );
    let took = killed.elapsed();
    assert!(back.iter().all(|p| !py_pids.contains(p)));
    assert_ne!(supervisor_pid(&d, "py"), victim);
    assert!(
        d.log().contains("ended; starting another in 100 ms"),
        "{}",
        d.log()
    );
    let wanted = wait_until(WAIT, || {
        http_get(&py_addr, "/", Duration::from_secs(2)).is_ok_and(|(s, _)| s == 200)
    });
    assert!(wanted, "py does not answer again");
    eprintln!("  py back {took:?} after its supervisor's SIGKILL");
    during.wait_for("rr answers after", WAIT, |n, _| n >= 300);
    let during = during.stop();

    assert_eq!(before.failed(), 0, "{before:?}");
    assert_eq!(during.failed(), 0, "{during:?}");
    let (p99_before, p99_during) = (before.percentile(99.0), during.percentile(99.0));
    eprintln!("  rr p99: {p99_before:?} before, {p99_during:?} while py's supervisor was replaced");
    // Unchanged, within the noise of a shared machine.
    assert!(
        p99_during <= p99_before * 3 + Duration::from_millis(30),
        "rr's p99 went from {p99_before:?} to {p99_during:?}"
    );
}

/// A supervisor that speaks another protocol version: the daemon names it
/// and what to do, and never misreads it.
#[test]
fn a_supervisor_of_another_protocol_version_is_named_with_what_to_do() {
    let d = Daemon::new();
    d.start_fixture("web", &["-i", "1"]);
    d.wait_online("web", 1);
    let id = d.app("web")["id"].as_u64().unwrap();
    let sock = d.path().join(format!("apps/{id}.sock"));
    // Stand in for a supervisor of a future herd: the daemon is killed,
    // the app's socket answers with another version.
    let daemon = d.daemon_pid().unwrap();
    kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
    assert!(wait_until(WAIT, || !process_alive(daemon)));
    let real = d.path().join(format!("apps/{id}.real.sock"));
    std::fs::rename(&sock, &real).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let future = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let welcome = serde_json::json!({
            "protocol": "herd-supervisor",
            "version": 99,
            "pid": 4242,
            "refused": null,
        })
        .to_string();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut hello = vec![0u8; (u32::from_be_bytes(len) as usize).min(4096)];
            let _ = s.read_exact(&mut hello);
            let _ = s.write_all(&(welcome.len() as u32).to_be_bytes());
            let _ = s.write_all(welcome.as_bytes());
        }
    });
    let out = d.herd(&["show", "web"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("protocol 99"), "{said}\n{}", d.log());
    assert!(said.contains("stop that supervisor"), "{said}");
    let list: Value = serde_json::from_str(&d.ok(&["list", "--json"])).unwrap();
    assert_eq!(list[0]["status"], "errored", "{list:#}");
    // Put the real socket back for the cleanup (the supervisor serves on).
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    future.join().unwrap();
    std::fs::rename(&real, &sock).unwrap();
}

/// Regression: after a daemon crash, `herd kill` said "no herd daemon runs"
/// and left the apps its supervisors kept running.
#[test]
fn kill_after_a_crashed_daemon_stops_the_apps_it_left() {
    let d = Daemon::new();
    d.start_fixture("web", &["-i", "2", "--ready-delay", "200ms"]);
    let pids = d.wait_online("web", 2);
    let supervisor = supervisor_pid(&d, "web");
    let daemon = d.daemon_pid().unwrap();
    kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
    assert!(wait_until(WAIT, || !process_alive(daemon)));
    let said = d.ok(&["kill"]);
    assert!(said.contains("stopped 1 app"), "{said}");
    for pid in pids.iter().chain([&supervisor]) {
        assert!(!process_alive(*pid), "{pid} outlived herd kill");
    }
    assert!(d.daemon_pid().is_none_or(|p| !process_alive(p)));
    // And `herd update` with no daemon has nothing to replace (and starts none).
    assert!(d.ok(&["update"]).contains("no daemon runs"));
    assert!(d.daemon_pid().is_none_or(|p| !process_alive(p)));
}
