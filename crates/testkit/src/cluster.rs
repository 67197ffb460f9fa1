//! The harness for herd-cluster's integration tests: start a process (the
//! fixture in its `cluster` mode, or `herd run`) with piped output, wait for
//! lines with deadlines, signal it, talk HTTP to it (the cluster fixture
//! answers JSON), and clean up every process it started — the primary and
//! each worker's process group — even when a test panics. Every wait polls
//! against a deadline. The shared pieces (binaries, patterns, process
//! checks) are the crate root's, re-exported here so that
//! `use herd_testkit::cluster::*;` is all a test needs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::capture::{self, Capture, Lines};

pub use crate::{
    cargo_built, cpu_time, free_addr, group_empty, herd_bin, in_ci, match_pat, process_alive,
    serial, skip_or_fail, tcp_port_state, wait_until, CpuWatch, Load, LoadReport, PortState,
    Signal, Stream,
};

/// The fixture binary (`tests/bin/fixture/`, a binary of the root package);
/// give it `cluster` as its first argument (see [`fixture_args`]).
pub fn fixture_bin() -> &'static str {
    crate::worker_bin()
}

/// `cluster ARGS`: the arguments that run the fixture in its herd-cluster mode.
pub fn fixture_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["cluster"];
    v.extend_from_slice(args);
    v
}

/// `herd: worker 0 online (pid 1234)` → [slot, pid]
pub const ONLINE: &str = "herd: worker {} online (pid {})";
/// The fixture's announcement → [pid]
pub const SERVING: &str = "fixture serving {*}pid={} ";

/// A process under test (a primary: herd or the fixture), in its own process
/// group, with its output collected line by line.
pub struct Proc {
    tag: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Capture,
    status: Option<ExitStatus>,
}

/// The worker pids a primary's output names (`online`, `serving`).
fn track_workers(line: &str, o: &mut Lines) {
    if let Some(c) = match_pat(ONLINE, line) {
        o.groups.insert(c[1].parse().unwrap());
    }
    if let Some(c) = match_pat(SERVING, line) {
        o.groups.insert(c[0].parse().unwrap());
    }
}

impl Proc {
    pub fn start<S: AsRef<std::ffi::OsStr>>(
        tag: &'static str,
        program: impl AsRef<Path>,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Proc {
        let program = program.as_ref();
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        eprintln!("$ {} {}", program.display(), shown.join(" "));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().copied())
            // Not a worker of whatever runs the tests.
            .env_remove("HERD_WORKER_ID")
            .env_remove("HERD_CHANNEL_FD")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a ^C on the test run goes to the tests only.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let out = Capture::start(&mut child, tag, track_workers);
        let stdin = child.stdin.take();
        Proc {
            tag,
            child,
            stdin,
            out,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Write one line to its stdin (the fixture's `--events` commands).
    pub fn command(&mut self, line: &str) {
        eprintln!("  test: command to {}: {line}", self.tag);
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write stdin");
        stdin.flush().expect("flush stdin");
    }

    pub fn mark(&self, which: Stream) -> usize {
        self.out.mark(which)
    }

    pub fn lines(&self, which: Stream) -> Vec<String> {
        self.out.lines(which)
    }

    pub fn output(&self) -> String {
        format!(
            "--- stdout:\n{}\n--- stderr:\n{}",
            self.lines(Stream::Stdout).join("\n"),
            self.lines(Stream::Stderr).join("\n")
        )
    }

    /// Every match of `pattern` from line `from` on.
    pub fn find_all(&self, which: Stream, from: usize, pattern: &str) -> Vec<Vec<String>> {
        self.lines(which)
            .iter()
            .skip(from)
            .filter_map(|l| match_pat(pattern, l))
            .collect()
    }

    /// Wait for a line matching `pattern` at or after line `from`: (index,
    /// captures), or `None` at the deadline or the end of the stream.
    pub fn wait_line(
        &self,
        which: Stream,
        from: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Option<(usize, Vec<String>)> {
        self.out
            .wait_matching(which, from, pattern, timeout, |_| true)
    }

    /// [`Proc::wait_line`] that panics with the output at the deadline.
    pub fn expect_line(
        &self,
        which: Stream,
        from: usize,
        pattern: &str,
        timeout: Duration,
    ) -> (usize, Vec<String>) {
        self.wait_line(which, from, pattern, timeout).unwrap_or_else(|| {
            panic!(
                "{}: no {which:?} line matching {pattern:?} (from line {from}) within {timeout:?}\n{}",
                self.tag,
                self.output()
            )
        })
    }

    /// Wait until every slot in `0..n` has an `online` line at or after
    /// stderr line `from`; slot → pid (the latest of each).
    pub fn wait_online(&self, from: usize, n: usize, timeout: Duration) -> BTreeMap<usize, i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut m = BTreeMap::new();
            for c in self.find_all(Stream::Stderr, from, ONLINE) {
                m.insert(c[0].parse::<usize>().unwrap(), c[1].parse::<i32>().unwrap());
            }
            if (0..n).all(|s| m.contains_key(&s)) {
                return m;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: slots 0..{n} not all online within {timeout:?} (have {m:?})\n{}",
                    self.tag,
                    self.output()
                );
            }
            let mark = self.mark(Stream::Stderr);
            self.wait_line(Stream::Stderr, mark, ONLINE, Duration::from_millis(100));
        }
    }

    /// Wait for an `online` line for `slot` at or after stderr line `from`: its pid.
    pub fn wait_online_slot(&self, from: usize, slot: usize, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        let mut next = from;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_line(Stream::Stderr, next, ONLINE, left) {
                Some((_, c)) if c[0] == slot.to_string() => return c[1].parse().unwrap(),
                Some((i, _)) => next = i + 1,
                None => panic!(
                    "{}: no online line for slot {slot} within {timeout:?}\n{}",
                    self.tag,
                    self.output()
                ),
            }
        }
    }

    /// Wait for the `ready` line of each of these workers: in round-robin
    /// mode only ready workers get connections.
    pub fn wait_ready(&self, online: &BTreeMap<usize, i32>, timeout: Duration) {
        for (slot, pid) in online {
            self.expect_line(
                Stream::Stderr,
                0,
                &format!("herd: worker {slot} ready (pid {pid})"),
                timeout,
            );
        }
    }

    /// Wait until each of these pids printed the fixture's `serving` line
    /// (it took its listener and owns SIGINT/SIGTERM): `online` only means
    /// the exec succeeded.
    pub fn wait_serving(&self, pids: impl IntoIterator<Item = i32>, timeout: Duration) {
        for pid in pids {
            self.expect_line(
                Stream::Stdout,
                0,
                &format!("fixture serving {{*}}pid={pid} "),
                timeout,
            );
        }
    }

    /// Worker pids seen so far (online lines, serving lines).
    pub fn worker_pids(&self) -> BTreeSet<i32> {
        self.out.with(|o| o.groups.clone())
    }

    /// Known worker pids that still have a live process in their group.
    pub fn live_workers(&self) -> BTreeSet<i32> {
        self.worker_pids()
            .into_iter()
            .filter(|&p| p != self.pid() && !group_empty(p))
            .collect()
    }

    pub fn signal(&self, sig: Signal) {
        eprintln!("  test: sending {sig} to {} (pid {})", self.tag, self.pid());
        nix::sys::signal::kill(Pid::from_raw(self.pid()), sig).expect("signal");
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        capture::try_status(&mut self.child, &mut self.status)
    }

    /// Wait for it to exit (panics at the deadline), then for its output to drain.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                self.drain(Duration::from_secs(2));
                eprintln!("  test: {} exited: {s}", self.tag);
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.tag,
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn drain(&self, timeout: Duration) -> bool {
        self.out.drain(timeout)
    }

    pub fn assert_running(&mut self) {
        if let Some(s) = self.try_status() {
            panic!("{} exited unexpectedly ({s})\n{}", self.tag, self.output());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        use nix::sys::signal::kill;
        capture::terminate(&mut self.child, &mut self.status);
        // Each worker leads its own process group: SIGTERM what is left, then SIGKILL.
        let groups: Vec<i32> = self
            .worker_pids()
            .into_iter()
            .filter(|&p| p > 1 && p != self.pid() && !group_empty(p))
            .collect();
        for &pg in &groups {
            eprintln!("  cleanup: SIGTERM to leftover process group {pg}");
            let _ = kill(Pid::from_raw(-pg), Signal::SIGTERM);
        }
        if !groups.is_empty() {
            wait_until(Duration::from_secs(1), || {
                groups.iter().all(|&g| group_empty(g))
            });
        }
        for &pg in &groups {
            if !group_empty(pg) {
                eprintln!("  cleanup: SIGKILL to leftover process group {pg}");
                let _ = kill(Pid::from_raw(-pg), Signal::SIGKILL);
            }
        }
        self.out.finish();
    }
}

/// A parsed HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How long the exchange took, from connect to the end of the answer.
    pub elapsed: Duration,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    /// The fixture's pid, from its JSON body.
    pub fn pid(&self) -> i32 {
        self.json()["pid"].as_i64().expect("pid") as i32
    }
}

/// One GET on a fresh connection (`Connection: close`), read to the end.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> io::Result<Response> {
    let start = Instant::now();
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    crate::abortive_close(&s);
    read?;
    let mut r = parse_response(&raw)?;
    r.elapsed = start.elapsed();
    Ok(r)
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let (status, headers, body) = crate::parse_http(raw)?;
    Ok(Response {
        status,
        headers,
        body,
        elapsed: Duration::ZERO,
    })
}

/// GET `path` until it answers 200 or the timeout passes.
pub fn wait_http_ok(addr: &str, path: &str, timeout: Duration) -> Response {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        match http_get(addr, path, Duration::from_secs(2)) {
            Ok(r) if r.status == 200 => return r,
            Ok(r) => last = Some(format!("status {}", r.status)),
            Err(e) => last = Some(format!("{:?}: {e}", e.kind())),
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr}{path} did not answer 200 within {timeout:?}; last: {last:?}");
}

/// Fresh-connection GETs of `/` until the answering pids cover `want` (or
/// `attempts` run out); every pid seen.
pub fn pids_answering(addr: &str, want: &BTreeSet<i32>, attempts: usize) -> BTreeSet<i32> {
    let mut seen = BTreeSet::new();
    for _ in 0..attempts {
        if let Ok(r) = http_get(addr, "/", Duration::from_secs(2)) {
            if r.status == 200 {
                seen.insert(r.pid());
            }
        }
        if want.is_subset(&seen) {
            break;
        }
    }
    seen
}
