//! herd-testkit: the one harness of herd's integration tests (the root
//! package's `tests/*.rs`, `crates/cluster/tests`). It owns
//! - finding the binaries under test, `herd` and the fixture server
//!   `herd-test-worker`, up to date ([`herd_bin`], [`worker_bin`]): a failed
//!   build fails the test with the build's error, never falls back to an old
//!   binary;
//! - starting `herd run` with piped output, waiting for lifecycle lines with
//!   deadlines, signalling it, probing it over HTTP, and cleaning up every
//!   process it started even when a test panics ([`Herd`]; [`cluster::Proc`]
//!   for herd-cluster's primaries);
//! - the honest skip: a test whose prerequisite (Node, ...) is missing is
//!   skipped with a note on stderr, except under `CI`, where it fails
//!   ([`skip_or_fail`], [`need_node!`]).
//!
//! Every wait polls against a deadline; nothing sleeps a fixed time for
//! correctness. Root-package tests use it through `tests/support/mod.rs`
//! (`pub use herd_testkit::*;`), herd-cluster's as `herd_testkit::cluster`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// The lines herd prints, in one place: adjust here when the wording moves.
///
/// A pattern is literal text in which `{}` captures a run of digits (`\d+`)
/// and `{*}` skips any text (like `.*?`). It matches anywhere in a line. Lifecycle patterns are only tried on lines
/// that herd itself printed (those containing `herd: `), never on worker output.
pub mod pat {
    /// `herd: worker 0 online (pid 1234)` → [slot, pid]
    pub const ONLINE: &str = "worker {} online (pid {})";
    /// `herd: worker 0 ready (pid 1234)` → [slot, pid]
    pub const READY: &str = "worker {} ready (pid {})";
    /// `herd: worker 0 (pid 12) exited with code 1 after 5 ms; ...` → [slot, code]
    pub const EXITED_CODE: &str = "worker {} {*}exited with code {}";
    /// `herd: worker 0 (pid 12) was killed by SIGKILL after 2 s; ...` → [slot]
    pub const KILLED_BY: &str = "worker {} {*}killed by";
    /// `...; restarting it in 200 ms` → [ms] (delays under a second only)
    pub const RESTARTING_IN: &str = "restarting {*}in {} ms";
    pub const ERRORED: &str = "errored";
    pub const RELOAD_STARTED: &str = "reload started";
    pub const RELOAD_FINISHED: &str = "reload finished";
    pub const RELOAD_ABORTED: &str = "reload aborted";
    pub const STOPPING: &str = "stopping";
    /// `herd: listening on 127.0.0.1:8000 (web), balance shared`: the address follows.
    pub const LISTENING: &str = "listening on ";
    /// The prefix of every lifecycle line.
    pub const HERD_PREFIX: &str = "herd: ";

    /// Fixture output (re-emitted by herd as `[<id>] <line>`).
    pub const W_SERVING: &str = "worker {} pid {} serving";
    pub const W_CHILD: &str = "child {}";
    pub const W_REQUEST: &str = "request ";
}

/// Match `pattern` (see [`pat`]) against `line`; the captures on success.
pub fn match_pat(pattern: &str, line: &str) -> Option<Vec<String>> {
    let toks = tokenize(pattern);
    // Unanchored: try every start.
    line.char_indices()
        .map(|(i, _)| i)
        .chain([line.len()])
        .find_map(|i| {
            let mut caps = Vec::new();
            match_at(&toks, &line[i..], &mut caps).then_some(caps)
        })
}

#[derive(Debug)]
enum Tok<'a> {
    Lit(&'a str),
    Digits,
    Any,
}

fn tokenize(pattern: &str) -> Vec<Tok<'_>> {
    let mut toks = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{}") {
            toks.push(Tok::Digits);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("{*}") {
            toks.push(Tok::Any);
            rest = r;
        } else {
            let end = rest
                .find("{}")
                .into_iter()
                .chain(rest.find("{*}"))
                .min()
                .unwrap_or(rest.len());
            toks.push(Tok::Lit(&rest[..end]));
            rest = &rest[end..];
        }
    }
    toks
}

fn match_at(toks: &[Tok<'_>], s: &str, caps: &mut Vec<String>) -> bool {
    let Some((first, rest)) = toks.split_first() else {
        return true;
    };
    match first {
        Tok::Lit(l) => s.strip_prefix(l).is_some_and(|r| match_at(rest, r, caps)),
        Tok::Digits => {
            let n = s.bytes().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 {
                return false;
            }
            caps.push(s[..n].to_string());
            if match_at(rest, &s[n..], caps) {
                return true;
            }
            caps.pop();
            false
        }
        Tok::Any => s.char_indices().map(|(i, _)| i).chain([s.len()]).any(|i| {
            let before = caps.len();
            match_at(rest, &s[i..], caps) || {
                caps.truncate(before);
                false
            }
        }),
    }
}

mod bins;
mod capture;
pub mod cluster;
mod daemon;
mod skip;

use capture::{Capture, Lines};

pub use bins::{cargo_built, herd_bin, worker_bin};
pub use daemon::{worker_pids, Daemon};
pub use skip::{in_ci, node_version, skip_or_fail};

/// `herd run OPTS -- herd-test-worker WORKER_ARGS`
pub fn run_args(opts: &[&str], worker_args: &[&str]) -> Vec<String> {
    let mut v = vec!["run".to_string()];
    v.extend(opts.iter().map(|s| s.to_string()));
    v.push("--".into());
    v.push(worker_bin().into());
    v.extend(worker_args.iter().map(|s| s.to_string()));
    v
}

/// Tests that measure time or generate load take this, so they do not
/// compete for the CPU with each other.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A running `herd` process.
pub struct Herd {
    child: Child,
    out: Capture,
    status: Option<ExitStatus>,
    pub started: Instant,
}

/// The pids herd's output names: workers (`online`, the fixture's
/// `serving`) and the grandchildren the fixture announces.
fn track_herd(line: &str, o: &mut Lines) {
    if line.contains(pat::HERD_PREFIX) {
        if let Some(c) = match_pat(pat::ONLINE, line) {
            o.groups.insert(c[1].parse().unwrap());
        }
    }
    if let Some(c) = match_pat(pat::W_CHILD, line) {
        if line.starts_with('[') {
            o.children.insert(c[0].parse().unwrap());
        }
    }
    if let Some(c) = match_pat(pat::W_SERVING, line) {
        o.groups.insert(c[1].parse().unwrap());
    }
}

impl Herd {
    /// Start `herd` with these arguments (e.g. from [`run_args`]).
    pub fn start<S: AsRef<str>>(args: &[S]) -> Herd {
        let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
        eprintln!("$ herd {}", args.join(" "));
        let mut cmd = Command::new(herd_bin());
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a ^C on the test run goes to the tests only.
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn herd");
        let out = Capture::start(&mut child, "herd", track_herd);
        Herd {
            child,
            out,
            status: None,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The number of lines seen so far on a stream: a mark for `wait_*_after`.
    pub fn mark(&self, which: Stream) -> usize {
        self.out.mark(which)
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.out.lines(Stream::Stderr)
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.out.lines(Stream::Stdout)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// herd's own lines (lifecycle) on stderr.
    pub fn herd_lines(&self) -> Vec<String> {
        self.stderr_lines()
            .into_iter()
            .filter(|l| l.contains(pat::HERD_PREFIX))
            .collect()
    }

    /// Every match of `pattern` on a stream from line `from` on.
    pub fn find_all(&self, which: Stream, from: usize, pattern: &str) -> Vec<Vec<String>> {
        self.out.with(|o| {
            o.of(which)
                .iter()
                .skip(from)
                .filter(|l| which == Stream::Stdout || l.contains(pat::HERD_PREFIX))
                .filter_map(|l| match_pat(pattern, l))
                .collect()
        })
    }

    /// Wait for a line matching `pattern` at or after line `from`; returns
    /// (line index, captures). `None` at the deadline or when the stream ends.
    pub fn wait_line_after(
        &self,
        which: Stream,
        from: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Option<(usize, Vec<String>)> {
        self.wait_matching(which, from, pattern, timeout, which == Stream::Stderr)
    }

    /// Like [`Herd::wait_line_after`], but on any line, worker output included.
    pub fn wait_any_line(
        &self,
        which: Stream,
        from: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Option<(usize, Vec<String>)> {
        self.wait_matching(which, from, pattern, timeout, false)
    }

    fn wait_matching(
        &self,
        which: Stream,
        from: usize,
        pattern: &str,
        timeout: Duration,
        herd_only: bool,
    ) -> Option<(usize, Vec<String>)> {
        // Lifecycle patterns only on herd's own lines.
        self.out.wait_matching(which, from, pattern, timeout, |l| {
            !herd_only || l.contains(pat::HERD_PREFIX)
        })
    }

    /// Wait for a herd lifecycle line on stderr; panics with herd's output
    /// at the deadline.
    pub fn wait_stderr(&self, pattern: &str, timeout: Duration) -> Vec<String> {
        self.wait_stderr_after(0, pattern, timeout)
    }

    pub fn wait_stderr_after(&self, from: usize, pattern: &str, timeout: Duration) -> Vec<String> {
        match self.wait_line_after(Stream::Stderr, from, pattern, timeout) {
            Some((_, c)) => c,
            None => panic!(
                "no herd line matching {pattern:?} within {timeout:?}; herd's stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    pub fn wait_stdout_after(&self, from: usize, pattern: &str, timeout: Duration) -> Vec<String> {
        match self.wait_line_after(Stream::Stdout, from, pattern, timeout) {
            Some((_, c)) => c,
            None => panic!(
                "no stdout line matching {pattern:?} within {timeout:?}; herd's stdout:\n{}\nstderr:\n{}",
                self.stdout_lines().join("\n"),
                self.stderr_text()
            ),
        }
    }

    /// The addresses herd reports binding (`listening on ADDR ...`), in
    /// order; waits for `n` of them. Lets tests listen on port 0: a port
    /// picked beforehand can be taken by another test's client meanwhile.
    pub fn listen_addrs(&self, n: usize, timeout: Duration) -> Vec<String> {
        let mut v = Vec::new();
        let mut next = 0;
        while v.len() < n {
            match self.wait_line_after(Stream::Stderr, next, pat::LISTENING, timeout) {
                Some((i, _)) => {
                    let line = &self.stderr_lines()[i];
                    let rest = &line[line.find(pat::LISTENING).unwrap() + pat::LISTENING.len()..];
                    let end = rest.find([' ', ',']).unwrap_or(rest.len());
                    v.push(rest[..end].to_string());
                    next = i + 1;
                }
                None => panic!(
                    "herd reported {} of {n} listeners within {timeout:?}; its stderr:\n{}",
                    v.len(),
                    self.stderr_text()
                ),
            }
        }
        v
    }

    /// The first listener's address (see [`Herd::listen_addrs`]).
    pub fn listen_addr(&self) -> String {
        self.listen_addrs(1, Duration::from_secs(10)).remove(0)
    }

    /// The latest pid announced `online` for each slot.
    pub fn online_pids(&self) -> BTreeMap<usize, i32> {
        let mut m = BTreeMap::new();
        for c in self.find_all(Stream::Stderr, 0, pat::ONLINE) {
            m.insert(c[0].parse().unwrap(), c[1].parse().unwrap());
        }
        m
    }

    /// Wait until every slot in `0..n` has an `online` line at or after
    /// stderr line `from`; returns slot → pid (the latest of each).
    pub fn wait_online(&self, from: usize, n: usize, timeout: Duration) -> BTreeMap<usize, i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut m = BTreeMap::new();
            for c in self.find_all(Stream::Stderr, from, pat::ONLINE) {
                m.insert(c[0].parse::<usize>().unwrap(), c[1].parse::<i32>().unwrap());
            }
            if (0..n).all(|s| m.contains_key(&s)) {
                return m;
            }
            if Instant::now() >= deadline {
                panic!(
                    "slots 0..{n} not all online within {timeout:?} (have {m:?}); herd's stderr:\n{}",
                    self.stderr_text()
                );
            }
            self.wait_line_after(
                Stream::Stderr,
                self.mark(Stream::Stderr),
                pat::ONLINE,
                Duration::from_millis(100),
            );
        }
    }

    /// Wait for an `online` line for `slot` at or after stderr line `from`: its pid.
    pub fn wait_online_slot(&self, from: usize, slot: usize, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        let mut next = from;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_line_after(Stream::Stderr, next, pat::ONLINE, left) {
                Some((_, c)) if c[0] == slot.to_string() => return c[1].parse().unwrap(),
                Some((i, _)) => next = i + 1,
                None => panic!(
                    "no online line for slot {slot} within {timeout:?}; herd's stderr:\n{}",
                    self.stderr_text()
                ),
            }
        }
    }

    /// Wait until each of these workers printed its `serving` line (it has
    /// installed its signal handlers and taken its listeners): herd's
    /// `online` only means the exec succeeded.
    pub fn wait_serving(&self, online: &BTreeMap<usize, i32>, timeout: Duration) {
        for (slot, pid) in online {
            let line = format!("[{slot}] worker {slot} pid {pid} serving");
            if self
                .wait_any_line(Stream::Stdout, 0, &line, timeout)
                .is_none()
            {
                panic!(
                    "no {line:?} within {timeout:?}; herd's stdout:\n{}\nstderr:\n{}",
                    self.stdout_lines().join("\n"),
                    self.stderr_text()
                );
            }
        }
    }

    /// Worker pids seen in `online` lines that are still alive.
    pub fn live_worker_pids(&self) -> BTreeSet<i32> {
        self.out.with(|o| {
            o.groups
                .iter()
                .copied()
                .filter(|&p| process_alive(p))
                .collect()
        })
    }

    /// Every worker pid and grandchild pid seen so far.
    pub fn known_pids(&self) -> (BTreeSet<i32>, BTreeSet<i32>) {
        self.out.with(|o| (o.groups.clone(), o.children.clone()))
    }

    pub fn signal(&self, sig: Signal) {
        eprintln!("  test: sending {sig} to herd (pid {})", self.pid());
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal herd");
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        capture::try_status(&mut self.child, &mut self.status)
    }

    /// Wait for herd to exit; panics at the deadline. Also waits (briefly)
    /// for its output to drain.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                self.drain_output(Duration::from_secs(2));
                eprintln!("  test: herd exited: {s}");
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "herd did not exit within {timeout:?}; its stderr:\n{}",
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until both output streams hit EOF (or the timeout: something,
    /// e.g. a leaked grandchild, may hold them open).
    pub fn drain_output(&self, timeout: Duration) -> bool {
        self.out.drain(timeout)
    }

    /// Panic unless herd is still running.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.try_status() {
            panic!(
                "herd exited unexpectedly ({s}); its stderr:\n{}",
                self.stderr_text()
            );
        }
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        use nix::sys::signal::kill;
        use nix::unistd::Pid;
        capture::terminate(&mut self.child, &mut self.status);
        let (pgids, children) = self.known_pids();
        for pg in pgids {
            if pg > 1 && !group_empty(pg) {
                eprintln!("  cleanup: killing leftover process group {pg}");
                let _ = kill(Pid::from_raw(-pg), Signal::SIGKILL);
            }
        }
        for c in children {
            if c > 1 && process_alive(c) {
                eprintln!("  cleanup: killing leftover grandchild {c}");
                let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
            }
        }
        // Readers end once every writer is gone.
        self.out.finish();
    }
}

/// The state letter of a process from /proc (R, S, D, Z, ...), if it exists.
fn proc_state(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let mut it = after.split_whitespace();
    let state = it.next()?.chars().next()?;
    let _ppid = it.next()?;
    let pgrp = it.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// A process's start time (clock ticks after boot), which tells it apart
/// from a later process given the same pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the fields after the command's `)` start at field 3.
    s[s.rfind(')')? + 2..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The process exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// No live (non-zombie) process is in process group `pgid`.
pub fn group_empty(pgid: i32) -> bool {
    group_members(pgid).is_empty()
}

pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| matches!(proc_state(pid), Some((s, g)) if g == pgid && s != 'Z' && s != 'X'))
        .collect()
}

/// Poll `cond` until it holds or the timeout passes; true if it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Listen on any free port: read the real one with [`Herd::listen_addr`].
pub const ANY: &str = "127.0.0.1:0";

/// A port that was free a moment ago on 127.0.0.1 (racy: prefer [`ANY`]).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A scratch directory for this test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "herd-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A parsed HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The fixture's pid: its plain body, or (the cluster mode answers
    /// JSON) its `X-Pid` header.
    pub fn pid(&self) -> Option<i32> {
        self.body
            .trim()
            .parse()
            .ok()
            .or_else(|| self.header("x-pid")?.parse().ok())
    }
}

/// One GET with `Host: host` (the daemon's listener checks it).
fn exchange<S: Read + Write>(s: &mut S, host: &str, path: &str) -> io::Result<Response> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let (status, headers, body) = parse_http(raw)?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Header (name, value) pairs, in order.
pub(crate) type Headers = Vec<(String, String)>;

/// A whole HTTP/1.1 answer: (status, headers, body). An error when it is
/// cut short (no end of head, or less body than `Content-Length`).
pub(crate) fn parse_http(raw: &[u8]) -> io::Result<(u16, Headers, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short response ({} bytes)", raw.len()),
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if let Some(len) = len.filter(|&len| body.len() < len) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("truncated body ({} of {len} bytes)", body.len()),
        ));
    }
    Ok((status, headers, body))
}

/// Close without TIME_WAIT (an RST): keeps fresh-connection load from
/// exhausting loopback ports.
pub(crate) fn abortive_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))
}

/// One request on a fresh TCP connection.
pub fn http_request(addr: &str, path: &str, timeout: Duration) -> io::Result<Response> {
    let sa = resolve(addr)?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let r = exchange(&mut s, addr, path);
    abortive_close(&s);
    r
}

/// One GET on a fresh TCP connection: (status, body).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    http_request(addr, path, timeout).map(|r| (r.status, r.body))
}

/// One request over a Unix stream socket.
pub fn unix_http_request(sock: &Path, path: &str, timeout: Duration) -> io::Result<Response> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    exchange(&mut s, "localhost", path)
}

pub fn unix_http_get(sock: &Path, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    unix_http_request(sock, path, timeout).map(|r| (r.status, r.body))
}

/// GET / until it answers 200 or the timeout passes; the pid that answered.
pub fn wait_http_ok(addr: &str, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        match http_request(addr, "/", Duration::from_secs(2)) {
            Ok(r) if r.status == 200 => return r.pid().expect("pid body"),
            Ok(r) => last = Some(format!("status {}", r.status)),
            Err(e) => last = Some(format!("{:?}: {e}", e.kind())),
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr} did not answer 200 within {timeout:?}; last: {last:?}");
}

/// Fresh-connection GET / until the set of answering pids covers `want`
/// (or `attempts` run out); returns every pid seen.
pub fn pids_answering(addr: &str, want: &BTreeSet<i32>, attempts: usize) -> BTreeSet<i32> {
    let mut seen = BTreeSet::new();
    for _ in 0..attempts {
        if let Ok(r) = http_request(addr, "/", Duration::from_secs(2)) {
            if let Some(p) = r.pid() {
                seen.insert(p);
            }
        }
        if want.is_subset(&seen) {
            break;
        }
    }
    seen
}

/// The outcome of a load run.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: usize,
    /// Error kind (or "status N") → count.
    pub failures: BTreeMap<String, usize>,
    /// A few failure messages, for the report.
    pub samples: Vec<String>,
    pub pids: BTreeSet<i32>,
}

impl LoadReport {
    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }
    pub fn count(&self, kind: &str) -> usize {
        self.failures.get(kind).copied().unwrap_or(0)
    }
}

/// A load generator: `threads` threads making fresh-connection requests to
/// `addr` until stopped, bounded by `max_duration` and `max_requests`.
pub struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<LoadReport>>,
    /// Answers so far and the pids that gave them, while it runs.
    live: Arc<Mutex<(usize, BTreeSet<i32>)>>,
}

impl Load {
    pub fn start(addr: &str, path: &str, threads: usize, pause: Duration) -> Load {
        Load::start_bounded(addr, path, threads, pause, Duration::from_secs(60), 100_000)
    }

    pub fn start_bounded(
        addr: &str,
        path: &str,
        threads: usize,
        pause: Duration,
        max_duration: Duration,
        max_requests: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<(usize, BTreeSet<i32>)>> = Arc::default();
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let live = live.clone();
                let addr = addr.to_string();
                let path = path.to_string();
                let per_thread = max_requests.div_ceil(threads);
                thread::spawn(move || {
                    let mut rep = LoadReport::default();
                    let end = Instant::now() + max_duration;
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < end && n < per_thread {
                        n += 1;
                        match http_request(&addr, &path, Duration::from_secs(5)) {
                            Ok(r) if r.status == 200 => {
                                rep.ok += 1;
                                let mut l = live.lock().unwrap();
                                l.0 += 1;
                                if let Some(p) = r.pid() {
                                    rep.pids.insert(p);
                                    l.1.insert(p);
                                }
                            }
                            Ok(r) => {
                                *rep.failures
                                    .entry(format!("status {}", r.status))
                                    .or_default() += 1;
                            }
                            Err(e) => {
                                *rep.failures.entry(format!("{:?}", e.kind())).or_default() += 1;
                                if rep.samples.len() < 5 {
                                    rep.samples.push(e.to_string());
                                }
                            }
                        }
                        if !pause.is_zero() {
                            thread::sleep(pause);
                        }
                    }
                    rep
                })
            })
            .collect();
        Load {
            stop,
            handles,
            live,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok_so_far(&self) -> usize {
        self.live.lock().unwrap().0
    }

    /// The pids that have answered so far.
    pub fn pids_so_far(&self) -> BTreeSet<i32> {
        self.live.lock().unwrap().1.clone()
    }

    /// Wait until `cond(answers so far, pids so far)` holds; panics naming
    /// `what` at the deadline. For "under load" that really is: wait for
    /// answers rather than sleep.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(usize, &BTreeSet<i32>) -> bool,
    ) {
        let ok = wait_until(timeout, || {
            let l = self.live.lock().unwrap();
            cond(l.0, &l.1)
        });
        let l = self.live.lock().unwrap();
        assert!(
            ok,
            "load: {what}: not within {timeout:?} ({} answers so far, from {:?})",
            l.0, l.1
        );
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Wait for the load to end by its own bounds.
    pub fn join(mut self) -> LoadReport {
        let mut total = LoadReport::default();
        for h in self.handles.drain(..) {
            let r = h.join().expect("load thread");
            total.ok += r.ok;
            for (k, v) in r.failures {
                *total.failures.entry(k).or_default() += v;
            }
            total.samples.extend(r.samples);
            total.pids.extend(r.pids);
        }
        eprintln!(
            "  load: {} ok, {} failed {:?} {:?}, pids {:?}",
            total.ok,
            total.failed(),
            total.failures,
            total.samples,
            total.pids
        );
        total
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Run herd to completion (for bad-input cases): status and stderr.
pub fn run_to_exit<S: AsRef<str>>(args: &[S], timeout: Duration) -> (ExitStatus, String, String) {
    let mut h = Herd::start(args);
    let st = h.wait_exit(timeout);
    (st, h.stdout_lines().join("\n"), h.stderr_text())
}

/// The distinct values of a set of pids, as a sorted list (for messages).
pub fn pid_set<'a>(it: impl IntoIterator<Item = &'a i32>) -> BTreeSet<i32> {
    it.into_iter().copied().collect()
}

/// Is the loopback IPv6 address usable here?
pub fn ipv6_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

pub fn unique<T: std::hash::Hash + Eq + Clone>(v: &[T]) -> HashSet<T> {
    v.iter().cloned().collect()
}

/// CPU time (user + system) process `pid` has used so far, from /proc.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command: state(3) ... utime(14) stime(15).
    let mut it = s[s.rfind(')')? + 2..].split_whitespace().skip(11);
    let utime: u64 = it.next()?.parse().ok()?;
    let stime: u64 = it.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis((utime + stime) * 1000 / hz))
}

/// Watches processes' CPU time from the moment it is made: lets a test wait
/// until a request that spins a worker's CPU is really being served, rather
/// than sleep and hope.
pub struct CpuWatch {
    base: BTreeMap<i32, Duration>,
}

impl CpuWatch {
    pub fn new(pids: impl IntoIterator<Item = i32>) -> CpuWatch {
        CpuWatch {
            base: pids
                .into_iter()
                .map(|p| (p, cpu_time(p).unwrap_or_default()))
                .collect(),
        }
    }

    /// Wait until one of the processes has used `min` more CPU time since
    /// the watch was made: that pid. Panics at the deadline.
    pub fn wait_busy(&self, min: Duration, timeout: Duration) -> i32 {
        let mut busy = None;
        let found = wait_until(timeout, || {
            busy = self
                .base
                .iter()
                .find_map(|(&p, &t0)| (cpu_time(p).unwrap_or_default() >= t0 + min).then_some(p));
            busy.is_some()
        });
        let used: BTreeMap<i32, Duration> = self
            .base
            .iter()
            .map(|(&p, &t0)| (p, cpu_time(p).unwrap_or_default().saturating_sub(t0)))
            .collect();
        assert!(
            found,
            "none of {:?} used {min:?} of CPU within {timeout:?} (used: {used:?})",
            self.base.keys()
        );
        busy.unwrap()
    }
}

/// What the kernel says about the TCP sockets with local port `port`
/// (IPv4 and IPv6), from /proc/net/tcp{,6}.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PortState {
    /// Connections in a listening socket's accept queue, not yet accepted
    /// (`None`: nothing listens).
    pub accept_queue: Option<usize>,
    /// Established connections whose local end is this port: accepted or
    /// still queued.
    pub established: usize,
}

pub fn tcp_port_state(port: u16) -> PortState {
    let mut st = PortState::default();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                continue;
            }
            let local_port = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            match f[3] {
                // LISTEN: rx_queue is the accept queue's length.
                "0A" => {
                    let q = f[4]
                        .split_once(':')
                        .and_then(|(_, rx)| usize::from_str_radix(rx, 16).ok())
                        .unwrap_or(0);
                    *st.accept_queue.get_or_insert(0) += q;
                }
                "01" => st.established += 1,
                _ => {}
            }
        }
    }
    st
}
