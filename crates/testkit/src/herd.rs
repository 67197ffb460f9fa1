//! A primary under test: `herd` itself ([`Herd::start`]) or a program that
//! is its own cluster primary — the fixture's herd-cluster mode, the axum
//! example ([`Herd::spawn`]). It runs in its own process group with its
//! output captured line by line; the tests wait for lines with deadlines,
//! signal it, and read which workers it started. Dropping it ends it and
//! every worker process group and grandchild its output named, even when
//! the test panicked.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::capture::{self, Capture, Lines};
use crate::procs::{group_empty, process_alive};
use crate::{herd_bin, match_pat, pat, Signal, Stream};

/// A running primary (see the module docs).
pub struct Herd {
    /// How its output is tagged in the test's log (`herd`, `primary`, ...).
    tag: &'static str,
    child: Child,
    /// Piped for [`Herd::spawn`] (the fixture's `--events` commands).
    stdin: Option<ChildStdin>,
    out: Capture,
    status: Option<ExitStatus>,
    pub started: Instant,
}

/// The pids a primary's output names: workers (herd's `online` lines, the
/// fixture's `serving` lines in either mode) and the grandchildren the
/// plain fixture announces.
fn track(line: &str, o: &mut Lines) {
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
    if let Some(c) = match_pat(pat::CLUSTER_SERVING, line) {
        o.groups.insert(c[0].parse().unwrap());
    }
}

impl Herd {
    /// Start `herd` with these arguments (e.g. from [`crate::run_args`]),
    /// stdin from /dev/null.
    pub fn start<S: AsRef<str>>(args: &[S]) -> Herd {
        let mut cmd = Command::new(herd_bin());
        cmd.args(args.iter().map(|a| a.as_ref()))
            .stdin(Stdio::null());
        Herd::launch("herd", cmd)
    }

    /// Start `program ARGS` with `env` added, stdin piped (see
    /// [`Herd::command`]): a primary other than `herd`, or `herd` with a
    /// tag of the test's choosing.
    pub fn spawn<S: AsRef<OsStr>>(
        tag: &'static str,
        program: impl AsRef<Path>,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Herd {
        let mut cmd = Command::new(program.as_ref());
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped());
        Herd::launch(tag, cmd)
    }

    fn launch(tag: &'static str, mut cmd: Command) -> Herd {
        let shown: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        eprintln!("$ {}", shown.join(" "));
        // Not a worker of whatever runs the tests.
        cmd.env_remove("HERD_WORKER_ID")
            .env_remove("HERD_CHANNEL_FD")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a ^C on the test run goes to the tests only.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", shown[0]));
        let out = Capture::start(&mut child, tag, track);
        let stdin = child.stdin.take();
        Herd {
            tag,
            child,
            stdin,
            out,
            status: None,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Write one line to its stdin (the fixture's `--events` commands).
    pub fn command(&mut self, line: &str) {
        eprintln!("  test: command to {}: {line}", self.tag);
        let stdin = self
            .stdin
            .as_mut()
            .expect("stdin is piped only for Herd::spawn");
        writeln!(stdin, "{line}").expect("write stdin");
        stdin.flush().expect("flush stdin");
    }

    /// The number of lines seen so far on a stream: a mark for `wait_*_after`.
    pub fn mark(&self, which: Stream) -> usize {
        self.out.mark(which)
    }

    pub fn lines(&self, which: Stream) -> Vec<String> {
        self.out.lines(which)
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines(Stream::Stderr)
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines(Stream::Stdout)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// Both streams, for a failure message.
    pub fn output(&self) -> String {
        format!(
            "--- {} stdout:\n{}\n--- stderr:\n{}",
            self.tag,
            self.stdout_lines().join("\n"),
            self.stderr_text()
        )
    }

    /// herd's own lines (lifecycle) on stderr.
    pub fn herd_lines(&self) -> Vec<String> {
        self.stderr_lines()
            .into_iter()
            .filter(|l| l.contains(pat::HERD_PREFIX))
            .collect()
    }

    /// Every match of `pattern` on a stream from line `from` on (on stderr,
    /// herd's own lines only).
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

    /// Wait for a line matching `pattern` at or after line `from` (on
    /// stderr, herd's own lines only); returns (line index, captures).
    /// `None` at the deadline or when the stream ends.
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

    /// [`Herd::wait_any_line`] that panics with the output at the deadline.
    pub fn expect_line(
        &self,
        which: Stream,
        from: usize,
        pattern: &str,
        timeout: Duration,
    ) -> (usize, Vec<String>) {
        self.wait_any_line(which, from, pattern, timeout)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no {which:?} line matching {pattern:?} (from line {from}) within {timeout:?}\n{}",
                    self.tag,
                    self.output()
                )
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
                "no herd line matching {pattern:?} within {timeout:?}; {}'s stderr:\n{}",
                self.tag,
                self.stderr_text()
            ),
        }
    }

    pub fn wait_stdout_after(&self, from: usize, pattern: &str, timeout: Duration) -> Vec<String> {
        self.expect_line(Stream::Stdout, from, pattern, timeout).1
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
                    "slots 0..{n} not all online within {timeout:?} (have {m:?}); {}'s stderr:\n{}",
                    self.tag,
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
                    "no online line for slot {slot} within {timeout:?}; {}'s stderr:\n{}",
                    self.tag,
                    self.stderr_text()
                ),
            }
        }
    }

    /// Wait for the `ready` line of each of these workers (slot → pid): in
    /// round-robin mode only ready workers get connections.
    pub fn wait_ready(&self, online: &BTreeMap<usize, i32>, timeout: Duration) {
        for (slot, pid) in online {
            self.wait_stderr(&format!("worker {slot} ready (pid {pid})"), timeout);
        }
    }

    /// Wait until each of these worker pids printed the fixture's `serving`
    /// line (in either mode: it has installed its signal handlers and taken
    /// its listeners): herd's `online` only means the exec succeeded.
    pub fn wait_serving(&self, pids: impl IntoIterator<Item = i32>, timeout: Duration) {
        for pid in pids {
            let plain = format!("worker {{}} pid {pid} serving");
            let cluster = format!("fixture serving {{*}}pid={pid} ");
            let found = self.out.wait_for(Stream::Stdout, 0, timeout, |l| {
                match_pat(&plain, l).or_else(|| match_pat(&cluster, l))
            });
            if found.is_none() {
                panic!(
                    "{}: worker {pid} never said it was serving within {timeout:?}\n{}",
                    self.tag,
                    self.output()
                );
            }
        }
    }

    /// Every worker pid and grandchild pid seen so far.
    pub fn known_pids(&self) -> (BTreeSet<i32>, BTreeSet<i32>) {
        self.out.with(|o| (o.groups.clone(), o.children.clone()))
    }

    /// Known workers whose process group still has a live (non-zombie)
    /// process: each worker leads its own group.
    pub fn live_workers(&self) -> BTreeSet<i32> {
        self.known_pids()
            .0
            .into_iter()
            .filter(|&p| p > 1 && p != self.pid() && !group_empty(p))
            .collect()
    }

    pub fn signal(&self, sig: Signal) {
        eprintln!("  test: sending {sig} to {} (pid {})", self.tag, self.pid());
        kill(Pid::from_raw(self.pid()), sig).expect("signal");
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        capture::try_status(&mut self.child, &mut self.status)
    }

    /// Wait for it to exit; panics at the deadline. Also waits (briefly)
    /// for its output to drain.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                self.drain_output(Duration::from_secs(2));
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

    /// Wait until both output streams hit EOF (or the timeout: something,
    /// e.g. a leaked grandchild, may hold them open).
    pub fn drain_output(&self, timeout: Duration) -> bool {
        self.out.drain(timeout)
    }

    /// Panic unless it is still running.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.try_status() {
            panic!("{} exited unexpectedly ({s})\n{}", self.tag, self.output());
        }
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
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
