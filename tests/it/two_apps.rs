//! The two apps of the tests of herd's per-app supervisors
//! (`supervisors`, `kill_loop`), and what those tests read of them: a Node
//! cluster app in round-robin (herd is its cluster primary, accepting and
//! handing over every connection) and a Python app on a socket herd passes
//! (`LISTEN_FDS`) that starts a grandchild; both answer their pid and print
//! numbered lines, which must run on with no gap and no double.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use herd_testkit::*;

/// A Node app with no cluster code of its own (herd makes it a cluster
/// worker): answers its pid, prints `tick PID N` every 10 ms, and on its
/// way out (`disconnect` from its primary, or a signal) stops ticking,
/// prints `stopped PID after N` and lets the requests in flight finish.
pub const NODE_APP: &str = r#"'use strict';
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
/// says `READY=1` on `$NOTIFY_SOCKET` once it serves (it runs with
/// `--wait-ready`), and on SIGINT/SIGTERM stops ticking, prints `stopped
/// PID after N` and finishes the requests in flight.
pub const PYTHON_APP: &str = r#"
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
# Ready only now that it serves (a loaded machine may take seconds to get here).
notify = os.environ.get("NOTIFY_SOCKET", "")
if notify:
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.sendto(b"READY=1", "\0" + notify[1:] if notify.startswith("@") else notify)
    ready.close()
server.serve_forever()
server.server_close()
"#;

/// Both apps under `d`: `rr` (Node, 2 workers, round-robin; ready when
/// they listen) and `py` (Python, 2 workers on one passed socket; ready
/// when they say so). Their addresses.
pub fn start_both(d: &Daemon, dir: &Path) -> (String, String) {
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
        // Ready when it says so (READY=1), not after a delay: a worker
        // taken for ready before it serves would leave none serving.
        "--wait-ready",
        "--listen-timeout",
        "20s",
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
pub fn load(addr: &str) -> Load {
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
pub fn out_log(d: &Daemon, app: &str) -> String {
    let path = d.app(app)["out_log"].as_str().unwrap().to_string();
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Every worker's numbered lines in `log` must run 1, 2, 3 … with no gap
/// and no double; a worker that said `stopped PID after N` must have
/// printed exactly 1..=N (nothing lost at its end). Returns the workers
/// that stopped, with their count.
pub fn check_ticks(app: &str, log: &str) -> BTreeMap<i32, u64> {
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

/// The pids `grandchild PID` lines name in `log`.
pub fn grandchildren(log: &str) -> BTreeSet<i32> {
    log.lines()
        .filter_map(|l| {
            let i = l.find("grandchild ")?;
            l[i + "grandchild ".len()..].trim().parse().ok()
        })
        .collect()
}

pub fn supervisor_pid(d: &Daemon, app: &str) -> i32 {
    let id = d.app(app)["id"].as_u64().unwrap();
    std::fs::read_to_string(d.path().join(format!("apps/{id}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
