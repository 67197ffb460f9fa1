//! herd's memory stays bounded whatever a worker pushes at it, nothing is
//! lost on the way, and `--kill-timeout` counts from the stop signal.
//!
//! The flood tests read herd's peak RSS (`VmHWM` in /proc) and print it
//! (`peak RSS ...` on the test's stderr; `cargo test --test it bounds::
//! -- --nocapture` shows the figures). Some start herd with pipes that nobody
//! reads for a while, as a stalled terminal would be, then read everything
//! and check that every line arrived whole and in order.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use herd_testkit::*;

const START: Duration = Duration::from_secs(20);
const T: Duration = Duration::from_secs(10);

/// What the tests allow herd's peak RSS to reach under a flood. The design
/// bound is a few MiB of queued output (64 batches of at most 64 KiB, plus
/// the writes in flight) over a debug build's few MiB; without backpressure
/// a stalled consumer lets herd hold the whole flood (about 90 MB here).
const RSS_LIMIT_KIB: u64 = 40 * 1024;

/// A field of /proc/<pid>/status in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// herd started with both output pipes left unread until [`Stalled::resume`].
struct Stalled {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Worker pids seen in `online` lines (their groups are killed on drop).
    workers: Vec<i32>,
    out_pipe: Option<std::process::ChildStdout>,
    err_pipe: Option<std::process::ChildStderr>,
}

impl Stalled {
    fn start(opts: &[&str], worker: &[&str]) -> Stalled {
        let args = run_args(opts, worker);
        eprintln!("$ herd {}", args.join(" "));
        let mut child = Command::new(herd_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn herd");
        let (_, stdout) = mpsc::channel();
        let (_, stderr) = mpsc::channel();
        Stalled {
            out_pipe: child.stdout.take(),
            err_pipe: child.stderr.take(),
            child,
            stdout,
            stderr,
            workers: Vec::new(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Start reading both pipes (line by line, into channels).
    fn resume(&mut self) {
        fn read_lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let mut br = BufReader::with_capacity(1 << 16, r);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match br.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf)
                                .trim_end_matches('\n')
                                .to_string();
                            if tx.send(line).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            rx
        }
        self.stdout = read_lines(self.out_pipe.take().expect("not resumed yet"));
        self.stderr = read_lines(self.err_pipe.take().expect("not resumed yet"));
    }

    /// The next line of a stream, or None at the deadline / EOF.
    fn next(rx: &mpsc::Receiver<String>, deadline: Instant) -> Option<String> {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    }

    /// Read stderr lines until one contains `text` (recording worker pids).
    fn wait_stderr(&mut self, text: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(line) = Self::next(&self.stderr, deadline) {
            if let Some(c) = match_pat(pat::ONLINE, &line) {
                self.workers.push(c[1].parse().unwrap());
            }
            let done = line.contains(text);
            seen.push(line);
            if done {
                return seen;
            }
        }
        panic!(
            "no stderr line with {text:?} within {timeout:?}; saw:\n{}",
            seen.join("\n")
        );
    }

    /// SIGTERM herd and wait for it to end (reading what is left).
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + T;
        while Self::next(&self.stderr, deadline).is_some() {}
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "herd did not exit after SIGTERM");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for &pg in &self.workers {
            if pg > 1 && !group_empty(pg) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pg), Signal::SIGKILL);
            }
        }
    }
}

/// Sample herd's RSS for `d` while nobody reads its output; the peak (KiB).
fn stall(pid: i32, d: Duration) -> u64 {
    let end = Instant::now() + d;
    let mut peak = 0;
    while Instant::now() < end {
        peak = peak.max(status_kib(pid, "VmRSS"));
        thread::sleep(Duration::from_millis(50));
    }
    peak.max(status_kib(pid, "VmHWM"))
}

#[test]
fn output_flood_into_a_stalled_stdout_keeps_herd_small_and_loses_no_line() {
    let _s = serial();
    const N: usize = 400_000;
    const LEN: usize = 200;
    let mut h = Stalled::start(
        &["-i", "1"],
        &[
            "--no-listen",
            "--spam-lines",
            &N.to_string(),
            "--spam-len",
            &LEN.to_string(),
        ],
    );
    // Nobody reads herd's stdout (nor stderr) for 2 s while the worker
    // writes about 90 MB: herd must stop reading the worker's pipe.
    let stalled = stall(h.pid(), Duration::from_secs(2));
    h.resume();
    h.wait_stderr("online (pid", START);
    let pad = "x".repeat(LEN);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = 0;
    while next < N {
        let Some(line) = Stalled::next(&h.stdout, deadline) else {
            panic!("only {next} of {N} lines arrived");
        };
        if !line.contains("spam") {
            continue;
        }
        let want = format!("[0] spam {next} {pad} end");
        assert!(
            line == want,
            "line {next} corrupted, split or out of order: {:?}",
            &line[..line.len().min(120)]
        );
        next += 1;
    }
    h.wait_stderr("spam done", T);
    let peak = status_kib(h.pid(), "VmHWM");
    let st = h.stop();
    eprintln!(
        "peak RSS under an output flood of {} MB: {} KiB while stalled, {} KiB overall",
        N * (LEN + 16) / 1_000_000,
        stalled,
        peak
    );
    assert!(st.success(), "herd exits 0 after SIGTERM: {st}");
    assert!(
        peak < RSS_LIMIT_KIB,
        "herd's peak RSS {peak} KiB exceeds {RSS_LIMIT_KIB} KiB: output is not bounded"
    );
}

#[test]
fn ipc_flood_into_a_stalled_consumer_keeps_herd_small_and_loses_no_message() {
    let _s = serial();
    const N: usize = 100_000;
    let mut h = Stalled::start(
        &["-i", "1"],
        &[
            "--no-listen",
            "--ipc-flood",
            &N.to_string(),
            "--ipc-len",
            "100",
        ],
    );
    let stalled = stall(h.pid(), Duration::from_secs(2));
    h.resume();
    let pad = "z".repeat(100);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = 0;
    while next < N {
        let Some(line) = Stalled::next(&h.stderr, deadline) else {
            panic!("only {next} of {N} messages arrived");
        };
        if let Some(c) = match_pat(pat::ONLINE, &line) {
            h.workers.push(c[1].parse().unwrap());
        }
        if !line.contains("\"flood\"") {
            continue;
        }
        let want = format!("herd: worker 0 sent {{\"flood\":{next},\"pad\":\"{pad}\"}}");
        assert!(
            line == want,
            "message {next} lost or reordered: {:?}",
            &line[..line.len().min(120)]
        );
        next += 1;
    }
    h.wait_stderr("sent {\"flood\":\"done\"}", T);
    let peak = status_kib(h.pid(), "VmHWM");
    let st = h.stop();
    eprintln!(
        "peak RSS under an IPC flood of {N} messages ({} MB): {stalled} KiB while stalled, {peak} KiB overall",
        N * 125 / 1_000_000
    );
    assert!(st.success(), "herd exits 0 after SIGTERM: {st}");
    assert!(
        peak < RSS_LIMIT_KIB,
        "herd's peak RSS {peak} KiB exceeds {RSS_LIMIT_KIB} KiB: IPC is not bounded"
    );
}

#[test]
fn an_oversized_ipc_message_is_refused_and_the_channel_resynchronises() {
    let _s = serial();
    const SIZE: usize = 64 << 20; // 64 MiB: once accepted and parsed whole
    let mut h = Herd::start(&run_args(
        &["-i", "1"],
        &["--no-listen", "--ipc-huge", &SIZE.to_string()],
    ));
    let pid = h.wait_online(0, 1, START)[&0];
    h.wait_stderr("sent an IPC message of", Duration::from_secs(60));
    let line = h
        .herd_lines()
        .into_iter()
        .find(|l| l.contains("sent an IPC message of"))
        .unwrap();
    assert!(
        line.contains(&format!("worker 0 (pid {pid})"))
            && line.contains(&format!("({SIZE} bytes)"))
            && line.contains("over the limit of 1 MiB"),
        "the warning names the worker, its pid, the size and the limit: {line}"
    );
    // The next message on the channel arrives intact.
    h.wait_stderr("worker 0 sent {\"after\":\"huge\"}", T);
    let peak = status_kib(h.pid(), "VmHWM");
    eprintln!("peak RSS with a {} MiB IPC message: {peak} KiB", SIZE >> 20);
    assert!(
        peak < RSS_LIMIT_KIB,
        "herd's peak RSS {peak} KiB: the oversized message was buffered"
    );
    h.signal(Signal::SIGTERM);
    assert!(h.wait_exit(T).success());
}

#[test]
fn an_ipc_message_at_the_limit_is_accepted() {
    let mut h = Herd::start(&run_args(
        &["-i", "1"],
        &["--no-listen", "--ipc-huge", &(1usize << 20).to_string()],
    ));
    h.wait_online(0, 1, START);
    h.wait_stderr("worker 0 sent {\"after\":\"huge\"}", T);
    assert!(
        h.herd_lines()
            .iter()
            .any(|l| l.starts_with("herd: worker 0 sent \"zzzz") && l.len() > 1 << 20),
        "a message of exactly 1 MiB is delivered"
    );
    assert!(!h.stderr_text().contains("sent an IPC message of"));
    h.signal(Signal::SIGTERM);
    assert!(h.wait_exit(T).success());
}

#[test]
fn a_line_longer_than_1_mib_is_cut_at_1_mib_and_nothing_is_lost() {
    const MIB: usize = 1 << 20;
    let mut h = Herd::start(&run_args(
        &["-i", "1"],
        &[
            "--no-listen",
            "--long-line",
            &(2 * MIB + MIB / 2).to_string(),
        ],
    ));
    h.wait_online(0, 1, START);
    assert!(
        h.wait_any_line(Stream::Stdout, 0, "[0] after long line", T)
            .is_some(),
        "the line after the long one arrives"
    );
    let pieces: Vec<usize> = h
        .stdout_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("[0] "))
        .filter(|l| l.starts_with('y'))
        .map(|l| {
            assert!(l.bytes().all(|b| b == b'y'), "only the long line's bytes");
            l.len()
        })
        .collect();
    assert_eq!(
        pieces,
        vec![MIB, MIB, MIB / 2],
        "cut at 1 MiB, the rest in the following lines"
    );
    h.signal(Signal::SIGTERM);
    assert!(h.wait_exit(T).success());
}

/// Regression: the kill timeout started when the stop began, so the
/// round-robin settle time (and a Node worker's disconnect) ate it: with
/// `--kill-timeout 500ms` a worker that needs 400 ms after SIGINT was
/// SIGKILLed.
#[test]
fn kill_timeout_counts_from_the_signal_for_a_round_robin_worker() {
    let _s = serial();
    let mut h = Herd::start(&run_args(
        &[
            "-i",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--balance",
            "round-robin",
            "--ready-delay",
            "100ms",
            "--kill-timeout",
            "500ms",
        ],
        &["--no-listen", "--stop-delay", "400"],
    ));
    let online = h.wait_online(0, 1, START);
    h.wait_serving(online.values().copied(), T);
    h.wait_stderr(pat::READY, T);
    let mark = h.mark(Stream::Stderr);
    h.signal(Signal::SIGTERM);
    let st = h.wait_exit(T);
    assert!(st.success(), "{st}");
    let said = h.stderr_lines()[mark..].join("\n");
    assert!(
        said.contains("then gets SIGINT; SIGKILL 500 ms after that"),
        "the stop message says what happens: {said}"
    );
    assert!(
        h.find_all(Stream::Stderr, mark, pat::KILLED_BY).is_empty(),
        "the worker had its 500 ms after SIGINT and exited by itself:\n{said}"
    );
    let exits = h.find_all(Stream::Stderr, mark, pat::EXITED_CODE);
    assert_eq!(
        exits,
        vec![vec!["0".to_string(), "0".to_string()]],
        "{said}"
    );
}

/// Workers are started off the supervisor's loop, from herd's spawner
/// thread: those started by reloads serve, and none outlives a SIGKILLed
/// herd (PR_SET_PDEATHSIG is tied to that thread, which lives as long as
/// herd; `os::spawn`'s unit tests cover a spawning thread that exits).
#[test]
fn workers_spawned_during_reloads_serve_and_die_with_a_sigkilled_herd() {
    let mut h = Herd::start(&run_args(
        &[
            "-i",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--ready-delay",
            "100ms",
        ],
        &[],
    ));
    let addr = h.listen_addr();
    h.wait_online(0, 2, START);
    for _ in 0..2 {
        let mark = h.mark(Stream::Stderr);
        h.signal(Signal::SIGHUP);
        h.wait_stderr_after(mark, pat::RELOAD_FINISHED, T);
    }
    let online = h.online_pids();
    h.wait_serving(online.values().copied(), T);
    let answered = pids_answering(&addr, &online.values().copied().collect(), 200);
    assert_eq!(answered.len(), 2, "both reloaded workers serve");
    h.signal(Signal::SIGKILL);
    h.wait_exit(T);
    let gone = wait_until(Duration::from_secs(3), || {
        online.values().all(|&p| group_empty(p))
    });
    assert!(gone, "workers outlived a SIGKILLed herd: {online:?}");
}

fn open_fds(pid: i32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some(format!(
                    "{} -> {}",
                    e.file_name().to_str()?,
                    target.display()
                ))
            })
            .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// Spawns that fail after the fork (the program vanished: the exec fails)
/// leave no fd and no zombie behind, over a whole crash loop.
#[test]
fn failed_spawns_leak_no_fd_and_no_zombie() {
    let _s = serial();
    let dir = TempDir::new("bounds-spawn");
    let program = dir.join("worker");
    std::fs::copy(worker_bin(), &program).unwrap();
    let program = program.to_str().unwrap().to_string();
    let args: Vec<String> = [
        "run",
        "-i",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--restart-delay",
        "10ms",
        "--max-restart-delay",
        "20ms",
        "--max-restarts",
        "30",
        "--",
        &program,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut h = Herd::start(&args);
    let online = h.wait_online(0, 2, START);
    h.wait_serving(online.values().copied(), T);
    let before = open_fds(h.pid());
    std::fs::remove_file(&program).unwrap();
    let mark = h.mark(Stream::Stderr);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(online[&0]), Signal::SIGKILL).unwrap();
    // 31 spawns fail in a row (each a fork whose exec fails), then the slot errors.
    h.wait_stderr_after(mark, pat::ERRORED, Duration::from_secs(30));
    let failures = h
        .herd_lines()
        .iter()
        .filter(|l| l.contains("cannot execute"))
        .count();
    assert!(
        failures >= 30,
        "{failures} failed spawns; stderr:\n{}",
        h.stderr_text()
    );
    h.assert_running();
    // Worker 0's pipes and channel are gone; nothing new may be open.
    let new_fds = || -> Vec<String> {
        open_fds(h.pid())
            .into_iter()
            .filter(|fd| !before.contains(fd))
            .collect()
    };
    assert!(
        wait_until(T, || new_fds().is_empty()),
        "herd holds fds it did not before {failures} failed spawns: {:?}",
        new_fds()
    );
    assert!(
        wait_until(T, || zombie_children(h.pid()).is_empty()),
        "unreaped children: {:?}",
        zombie_children(h.pid())
    );
    h.signal(Signal::SIGTERM);
    assert!(h.wait_exit(T).success());
}

#[test]
fn the_message_cap_is_configurable_and_checked() {
    let mut h = Herd::start(&run_args(
        &["-i", "1", "--max-message", "64KiB"],
        &["--no-listen", "--ipc-huge", "100000"],
    ));
    h.wait_online(0, 1, START);
    h.wait_stderr("(100000 bytes), over the limit of 64 KiB", T);
    h.wait_stderr("worker 0 sent {\"after\":\"huge\"}", T);
    h.signal(Signal::SIGTERM);
    assert!(h.wait_exit(T).success());

    let (st, _, err) = run_to_exit(&run_args(&["--max-message", "lots"], &["--no-listen"]), T);
    assert!(!st.success());
    assert!(err.contains("invalid size 'lots'"), "{err}");
}
