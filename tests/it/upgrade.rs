//! The in-place upgrade of `herd run` (SIGUSR2, issue 14.3): herd replaces
//! its own binary — same pid, same workers, same sockets — while clients
//! keep connecting, with a Node cluster app in round-robin (herd accepts and
//! hands every connection over) and a LISTEN_FDS app (the fixture worker,
//! sockets inherited). The binary under test is a copy of `herd` in a
//! scratch directory, replaced by a fresh copy (a new inode) before each
//! upgrade, as a package manager would.
//!
//! Each worker prints numbered lines, written in two pieces (`tick N` then,
//! a few ms later, ` end`), so a line is often half-written when herd
//! freezes: every number must appear once, whole, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_testkit::*;

const START: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(20);

/// A Node app, no cluster code of its own: herd is its cluster primary.
/// It answers with its pid and prints `tick N end` every 20 ms or so, each
/// line in two writes.
const NODE_APP: &str = r#"
'use strict';
const http = require('node:http');
let n = 0;
const tick = () => {
  n += 1;
  process.stdout.write(`tick ${n}`);
  setTimeout(() => {
    process.stdout.write(' end\n');
    setTimeout(tick, 15);
  }, 5);
};
tick();
http.createServer((req, res) => {
  res.setHeader('X-Pid', String(process.pid));
  res.end(`${process.pid}\n`);
}).listen(Number(process.env.PORT));
"#;

/// Beside the fixture worker (which `exec`s in its place, keeping the
/// pid), a ticker in its process group writing to the worker's stderr (the
/// fixture's own lines go to stdout, so the two never interleave).
const TICKER: &str = r#"i=0; while :; do i=$((i+1)); printf 'tick %d' $i >&2; sleep 0.005; printf ' end\n' >&2; sleep 0.015; done"#;

/// A scratch copy of herd, the way an operator installs one.
struct Install {
    dir: TempDir,
}

impl Install {
    fn new(tag: &str) -> Install {
        let dir = TempDir::new(tag);
        let install = Install { dir };
        install.replace_with(Path::new(herd_bin()));
        install
    }

    fn herd(&self) -> PathBuf {
        self.dir.join("herd")
    }

    /// Put a copy of `from` at herd's path: a new inode, renamed into place.
    fn replace_with(&self, from: &Path) -> u64 {
        let tmp = self.dir.join("herd.new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, self.herd()).unwrap();
        until_executable(&self.herd());
        std::fs::metadata(self.herd()).unwrap().ino()
    }

    /// A script at herd's path.
    fn replace_with_script(&self, body: &str) {
        let tmp = self.dir.join("herd.new");
        std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, self.herd()).unwrap();
        until_executable(&self.herd());
    }
}

/// Which binary the process runs: its path as the kernel shows it, and the inode.
fn exe_of(pid: i32) -> (String, u64) {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let ino = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino();
    (link.to_string_lossy().into_owned(), ino)
}

/// When a process started (in clock ticks since boot): the same process,
/// not a new one with a reused pid.
fn start_time(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(19).unwrap().parse().unwrap()
}

/// The app under test, started by the installed herd.
enum AppKind {
    Node,
    ListenFds,
}

fn start(install: &Install, kind: &AppKind, env: &[(&str, &str)]) -> (Herd, String) {
    let herd = install.herd();
    match kind {
        AppKind::Node => {
            let script = install.dir.join("app.js");
            std::fs::write(&script, NODE_APP).unwrap();
            let port = free_port();
            let port_s = port.to_string();
            let mut env: Vec<(&str, &str)> = env.to_vec();
            env.push(("PORT", &port_s));
            let h = Herd::spawn(
                "herd",
                &herd,
                &[
                    "run",
                    "-i",
                    "2",
                    "--balance",
                    "round-robin",
                    "--",
                    "node",
                    script.to_str().unwrap(),
                ],
                &env,
            );
            (h, format!("127.0.0.1:{port}"))
        }
        AppKind::ListenFds => {
            let line = format!("({TICKER}) & exec {} --notify-ready", worker_bin());
            let h = Herd::spawn(
                "herd",
                &herd,
                &[
                    "run",
                    "-i",
                    "2",
                    "--listen",
                    ANY,
                    "--wait-ready",
                    "--",
                    "sh",
                    "-c",
                    &line,
                ],
                env,
            );
            let addr = h.listen_addr();
            (h, addr)
        }
    }
}

impl AppKind {
    /// Where its workers' numbered lines go.
    fn ticks_on(&self) -> Stream {
        match self {
            AppKind::Node => Stream::Stdout,
            AppKind::ListenFds => Stream::Stderr,
        }
    }
}

/// Every worker's numbered lines: each number once, whole, in order, from 1
/// (after a stop, each worker's last line may be cut: it was killed while
/// writing it). Returns how many lines each slot printed.
fn check_ticks(h: &Herd, on: Stream, stopped: bool) -> BTreeMap<String, u64> {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut cut: BTreeSet<String> = BTreeSet::new();
    for line in h.lines(on) {
        let Some((slot, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some(rest) = rest.strip_prefix("tick ") else {
            continue;
        };
        let (n, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        assert!(!cut.contains(slot), "only a last line may be cut: {line:?}");
        if stopped && tail.is_empty() {
            cut.insert(slot.to_string());
        } else {
            assert_eq!(tail, "end", "a whole line: {line:?}");
        }
        let n: u64 = n.parse().unwrap_or_else(|_| panic!("numbered: {line:?}"));
        let seen = last.entry(slot.to_string()).or_insert(0);
        assert_eq!(n, *seen + 1, "{slot}: no line lost or doubled at {line:?}");
        *seen = n;
    }
    last
}

fn upgrades_five_times_under_load(kind: AppKind) {
    let _s = serial();
    let install = Install::new("upgrade");
    let (mut h, addr) = start(&install, &kind, &[]);
    let online = h.wait_online(0, 2, START);
    h.wait_ready(&online, START);
    let pids: BTreeSet<i32> = online.values().copied().collect();
    let started: BTreeMap<i32, u64> = pids.iter().map(|&p| (p, start_time(p))).collect();
    let herd_pid = h.pid();
    wait_http_ok(&addr, T);
    let load = Load::start_bounded(
        &addr,
        "/",
        4,
        Duration::ZERO,
        Duration::from_secs(120),
        200_000,
    );
    load.wait_for("serving", T, |n, _| n >= 50);
    for round in 1..=5 {
        let ino = install.replace_with(Path::new(herd_bin()));
        let mark = h.mark(Stream::Stderr);
        h.signal(Signal::SIGUSR2);
        h.wait_stderr_after(mark, "upgraded in place", T);
        let (path, running) = exe_of(herd_pid);
        assert_eq!(
            path,
            install.herd().to_string_lossy(),
            "round {round}: the new file"
        );
        assert_eq!(running, ino, "round {round}: herd runs the new inode");
        let before = load.ok_so_far();
        load.wait_for("serving after the upgrade", T, |n, _| n >= before + 50);
        eprintln!("  upgrade {round} done");
    }
    let report = load.stop();
    assert_eq!(
        report.failed(),
        0,
        "no request may fail across five upgrades: {:?} {:?}",
        report.failures,
        report.samples
    );
    assert!(report.ok >= 250, "the load ran: {} answers", report.ok);
    assert_eq!(h.pid(), herd_pid);
    // The same workers, never restarted: no new `online` line, same processes.
    assert_eq!(h.online_pids(), online, "stderr:\n{}", h.stderr_text());
    for (&pid, &t) in &started {
        assert!(process_alive(pid), "worker {pid} lives");
        assert_eq!(start_time(pid), t, "worker {pid} is the same process");
    }
    assert!(
        !h.herd_lines()
            .iter()
            .any(|l| l.contains("exited") || l.contains("failed")),
        "nothing exited or failed; stderr:\n{}",
        h.stderr_text()
    );
    // Both served after the upgrades, and printed on through them.
    assert_eq!(report.pids, pids, "both workers answered");
    let ticks = check_ticks(&h, kind.ticks_on(), false);
    assert_eq!(ticks.len(), 2, "both workers printed: {ticks:?}");
    h.signal(Signal::SIGTERM);
    let status = h.wait_exit(T);
    assert!(status.success(), "{status:?}; stderr:\n{}", h.stderr_text());
    let ticks = check_ticks(&h, kind.ticks_on(), true);
    assert!(ticks.values().all(|&n| n >= 20), "{ticks:?}");
}

#[test]
fn sigusr2_upgrades_herd_in_place_five_times_under_load_node_round_robin() {
    need_node!();
    upgrades_five_times_under_load(AppKind::Node);
}

#[test]
fn sigusr2_upgrades_herd_in_place_five_times_under_load_listen_fds() {
    upgrades_five_times_under_load(AppKind::ListenFds);
}

/// The first stderr line from `mark` on that contains `text` (waited for).
fn said_after(h: &Herd, mark: usize, text: &str) -> String {
    h.wait_stderr_after(mark, text, T);
    h.lines(Stream::Stderr)[mark..]
        .iter()
        .find(|l| l.contains(text))
        .cloned()
        .expect("waited for")
}

/// A broken new binary is refused (or backed out of) and the app serves
/// throughout, on the same pid and workers; herd says what failed.
#[test]
fn a_broken_new_binary_leaves_everything_serving_and_says_why() {
    let _s = serial();
    let install = Install::new("upgrade-broken");
    let refuse = install.dir.join("refuse");
    let refuse_s = refuse.to_str().unwrap().to_string();
    let (mut h, addr) = start(
        &install,
        &AppKind::ListenFds,
        &[("HERD_UPGRADE_TEST_REFUSE", &refuse_s)],
    );
    let online = h.wait_online(0, 2, START);
    h.wait_ready(&online, START);
    let herd_pid = h.pid();
    let (_, original) = exe_of(herd_pid);
    wait_http_ok(&addr, T);
    let load = Load::start_bounded(
        &addr,
        "/",
        4,
        Duration::ZERO,
        Duration::from_secs(120),
        200_000,
    );
    load.wait_for("serving", T, |n, _| n >= 50);

    // 1. A binary that exits at once (an ELF: /bin/false), refused by the probe.
    install.replace_with(Path::new("/bin/false"));
    let mark = h.mark(Stream::Stderr);
    h.signal(Signal::SIGUSR2);
    let said = said_after(&h, mark, "upgrade refused");
    assert!(said.contains("did not answer the upgrade probe"), "{said}");
    assert!(said.contains("exited"), "{said}");
    assert_eq!(exe_of(herd_pid).1, original, "nothing changed");

    // 2. A script that fails at once.
    install.replace_with_script("echo 'not herd' >&2; exit 3");
    let mark = h.mark(Stream::Stderr);
    h.signal(Signal::SIGUSR2);
    let said = said_after(&h, mark, "upgrade refused");
    assert!(said.contains("did not answer the upgrade probe"), "{said}");
    assert_eq!(exe_of(herd_pid).1, original, "nothing changed");

    // 3. A herd that answers the probe but cannot read the state: the old
    //    binary is executed again and resumes the app.
    install.replace_with(Path::new(herd_bin()));
    std::fs::write(&refuse, "").unwrap();
    let mark = h.mark(Stream::Stderr);
    h.signal(Signal::SIGUSR2);
    let said = said_after(&h, mark, "upgrade failed");
    assert!(said.contains("could not take the app over"), "{said}");
    assert!(said.contains("HERD_UPGRADE_TEST_REFUSE"), "{said}");
    assert!(said.contains("previous binary resumed"), "{said}");
    assert_eq!(exe_of(herd_pid).1, original, "the old binary runs again");
    let before = load.ok_so_far();
    load.wait_for("serving after the failed upgrade", T, |n, _| {
        n >= before + 50
    });

    // 4. And then a good one goes through.
    std::fs::remove_file(&refuse).unwrap();
    let ino = install.replace_with(Path::new(herd_bin()));
    let mark = h.mark(Stream::Stderr);
    h.signal(Signal::SIGUSR2);
    h.wait_stderr_after(mark, "upgraded in place", T);
    assert_eq!(exe_of(herd_pid).1, ino);
    let before = load.ok_so_far();
    load.wait_for("serving after the upgrade", T, |n, _| n >= before + 50);

    let report = load.stop();
    assert_eq!(
        report.failed(),
        0,
        "{:?} {:?}",
        report.failures,
        report.samples
    );
    assert_eq!(h.online_pids(), online, "the same workers throughout");
    check_ticks(&h, Stream::Stderr, false);
    h.signal(Signal::SIGTERM);
    assert!(h.wait_exit(T).success(), "stderr:\n{}", h.stderr_text());
}

/// SIGUSR2 during a rolling reload: the upgrade freezes the app mid-reload
/// (at a moment no worker start is under way) and the new binary finishes
/// the reload. Both complete; no request fails.
#[test]
fn an_upgrade_during_a_rolling_reload_completes_both() {
    need_node!();
    let _s = serial();
    let install = Install::new("upgrade-reload");
    let (mut h, addr) = start(
        &install,
        &AppKind::Node,
        &[("UPGRADE_KEEPS", "this variable")],
    );
    let online = h.wait_online(0, 2, START);
    h.wait_ready(&online, START);
    let herd_pid = h.pid();
    wait_http_ok(&addr, T);
    let load = Load::start_bounded(
        &addr,
        "/",
        4,
        Duration::ZERO,
        Duration::from_secs(120),
        200_000,
    );
    load.wait_for("serving", T, |n, _| n >= 50);
    let ino = install.replace_with(Path::new(herd_bin()));
    let mark = h.mark(Stream::Stderr);
    h.signal(Signal::SIGHUP);
    h.wait_stderr_after(mark, "reload started", T);
    h.signal(Signal::SIGUSR2);
    h.wait_stderr_after(mark, "upgraded in place", T);
    h.wait_stderr_after(mark, pat::RELOAD_FINISHED, Duration::from_secs(60));
    assert_eq!(exe_of(herd_pid).1, ino);
    let now = h.online_pids();
    let before: BTreeSet<i32> = online.values().copied().collect();
    let after: BTreeSet<i32> = now.values().copied().collect();
    assert!(
        before.is_disjoint(&after),
        "the reload replaced both: {online:?} → {now:?}"
    );
    let seen = load.ok_so_far();
    load.wait_for("the new workers serve", T, |n, p| {
        n >= seen + 50 && after.is_subset(p)
    });
    let report = load.stop();
    assert_eq!(
        report.failed(),
        0,
        "{:?} {:?}",
        report.failures,
        report.samples
    );
    assert!(
        !h.herd_lines().iter().any(|l| l.contains("SIGKILL")),
        "stderr:\n{}",
        h.stderr_text()
    );
    // A worker the new image starts still gets herd's own environment (the
    // state carries it over).
    let gone = *after.iter().next().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(gone), Signal::SIGKILL).unwrap();
    let mut replacement = None;
    assert!(
        wait_until(START, || {
            replacement = h.online_pids().into_values().find(|p| !after.contains(p));
            replacement.is_some()
        }),
        "no replacement for {gone}:\n{}",
        h.stderr_text()
    );
    let environ = std::fs::read(format!("/proc/{}/environ", replacement.unwrap())).unwrap();
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|v| v == b"UPGRADE_KEEPS=this variable"),
        "the replacement's environment: {}",
        String::from_utf8_lossy(&environ)
    );
    h.signal(Signal::SIGTERM);
    assert!(h.wait_exit(T).success(), "stderr:\n{}", h.stderr_text());
}

/// Under systemd (`Type=notify-reload`): SIGUSR2 says `RELOADING=1` (with
/// `MONOTONIC_USEC`), then `READY=1` once the new binary runs the app; the
/// main pid never changes. (herd is started directly: the harness keeps
/// `NOTIFY_SOCKET` from the primaries it starts.)
#[test]
fn sigusr2_tells_systemd_reloading_then_ready_with_the_same_main_pid() {
    use std::os::unix::net::UnixDatagram;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    /// herd, stopped (then killed) if the test fails half-way.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            if !wait_until(Duration::from_secs(5), || {
                matches!(self.0.try_wait(), Ok(Some(_)))
            }) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    let _s = serial();
    let install = Install::new("upgrade-notify");
    let path = install.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    let recv = || {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let child = Command::new(install.herd())
        .args(run_args(
            &["-i", "2", "--listen", ANY, "--wait-ready"],
            &["--notify-ready"],
        ))
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut herd = Guard(child);
    let herd_pid = herd.0.id() as i32;
    let ready = recv();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains(&format!("MAINPID={herd_pid}")), "{ready:?}");
    let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(herd_pid), sig).unwrap();
    for _ in 0..2 {
        let ino = install.replace_with(Path::new(herd_bin()));
        signal(Signal::SIGUSR2);
        let reloading = recv();
        assert!(
            reloading.lines().any(|l| l == "RELOADING=1"),
            "{reloading:?}"
        );
        assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
        assert_eq!(recv(), "READY=1", "ready again after the upgrade");
        assert_eq!(exe_of(herd_pid).1, ino, "the same pid runs the new binary");
    }
    // A refused upgrade is over too: ready again.
    install.replace_with(Path::new("/bin/false"));
    signal(Signal::SIGUSR2);
    assert!(recv().contains("RELOADING=1"));
    assert_eq!(recv(), "READY=1", "ready again after a refused upgrade");
    signal(Signal::SIGTERM);
    assert_eq!(recv(), "STOPPING=1");
    let status = herd.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
