//! `kill -9` of the daemon and of the apps' supervisors at random moments
//! under load, during reloads, scales, saves and updates (issue 15.5), with
//! a loop in the test that starts the daemon again whenever it is dead, as
//! systemd's `Restart=on-failure` does (`herd startup`'s unit): the apps
//! serve throughout, nothing outlives its app, the saved list stays whole.
//!
//! The loop is one test, bounded (10 rounds, 20–50 s on a loaded 2-core
//! machine), with the two apps of `two_apps` under fresh-connection load. Each round
//! gives one operation and, at a moment drawn from a seeded generator
//! (the seed is printed; `HERD_KILL_LOOP_SEED=N` replays a run), SIGKILLs
//! the daemon or one app's supervisor; then the operation is given again
//! until it goes through, and both apps must serve with the workers they
//! should have. What a round may cost:
//! - a killed daemon: nothing (the apps never notice);
//! - a killed supervisor: its app's requests from the kill until the app
//!   answers again, from a worker of the next supervisor (its workers die
//!   with it, by design: resets of the requests in flight on them; new
//!   clients wait in the app's socket, which the daemon keeps open, until
//!   the daemon's next supervisor serves after its backoff); nothing after
//!   that, and nothing of the other app's.
//!
//! Beside it, the regression tests of the faults it found.
//!
//! herd runs from copies of the suite's binary, alternated at the path
//! (a new inode each time) so that every `herd update` really replaces
//! the daemon and each supervisor in place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_testkit::*;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::Value;

use crate::two_apps::{check_ticks, grandchildren, load, out_log, start_both};

const ROUNDS: usize = 10;
const WAIT: Duration = Duration::from_secs(30);
/// How long one operation may take, retries included.
const OP_DEADLINE: Duration = Duration::from_secs(60);

/// xorshift64: a tiny generator, seeded and printed so a run can be replayed.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("HERD_KILL_LOOP_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            .max(1);
        eprintln!("  kill loop: seed {seed} (HERD_KILL_LOOP_SEED={seed} replays it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// What a round asks of herd.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Reload(&'static str),
    Scale(&'static str, usize),
    Save,
    Update,
}

impl Op {
    fn args(&self) -> Vec<String> {
        match self {
            Op::Reload(app) => vec!["reload".into(), app.to_string()],
            Op::Scale(app, n) => vec!["scale".into(), app.to_string(), n.to_string()],
            Op::Save => vec!["save".into()],
            Op::Update => vec!["update".into()],
        }
    }

    /// The kill falls within this long of the operation's start (about
    /// what the operation takes here).
    fn window(&self) -> Duration {
        Duration::from_millis(match self {
            Op::Reload(_) => 1200,
            Op::Scale(..) => 800,
            Op::Save => 200,
            Op::Update => 1000,
        })
    }
}

/// Whom a round kills.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Daemon,
    Supervisor(&'static str),
}

/// The apps' names, in the order of `start_both`'s addresses.
const APPS: [&str; 2] = ["rr", "py"];

/// A home, two copies of herd alternated at `bin/herd`, and the apps' ids.
struct Bench {
    d: Daemon,
    bin_dir: TempDir,
    /// Which copy is at the path now.
    current: AtomicUsize,
    ids: BTreeMap<&'static str, u64>,
}

impl Bench {
    fn new() -> Bench {
        let bin_dir = TempDir::new("kill-loop-bin");
        for copy in ["herd.0", "herd.1"] {
            std::fs::copy(herd_bin(), bin_dir.join(copy)).unwrap();
            until_executable(&bin_dir.join(copy));
        }
        std::fs::hard_link(bin_dir.join("herd.0"), bin_dir.join("herd")).unwrap();
        let d = Daemon::with_binary(bin_dir.join("herd"));
        Bench {
            d,
            bin_dir,
            current: AtomicUsize::new(0),
            ids: BTreeMap::new(),
        }
    }

    /// Put the other copy at the path (a new inode, as a package upgrade).
    fn replace(&self) {
        let next = 1 - self.current.load(Ordering::SeqCst);
        let new = self.bin_dir.join("herd.new");
        let _ = std::fs::remove_file(&new);
        std::fs::hard_link(self.bin_dir.join(&format!("herd.{next}")), &new).unwrap();
        std::fs::rename(&new, self.bin_dir.join("herd")).unwrap();
        self.current.store(next, Ordering::SeqCst);
    }

    /// Whether `pid` runs one of this test's copies of herd (so it is a
    /// process this test started, directly or through herd).
    fn ours(&self, pid: i32) -> bool {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe.starts_with(self.bin_dir.path()))
            && process_alive(pid)
    }

    fn pid_file(&self, path: PathBuf) -> Option<i32> {
        let pid = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        self.ours(pid).then_some(pid)
    }

    /// The live daemon's pid, or the live supervisor's of an app.
    fn pid(&self, who: Victim) -> Option<i32> {
        match who {
            Victim::Daemon => self.pid_file(self.d.path().join("herd.pid")),
            Victim::Supervisor(app) => {
                self.pid_file(self.d.path().join(format!("apps/{}.pid", self.ids[app])))
            }
        }
    }

    /// `herd ARGS`, waited for at most `OP_DEADLINE`.
    fn run(&self, args: &[String]) -> Output {
        let mut child = self
            .d
            .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let ended = wait_until(OP_DEADLINE, || matches!(child.try_wait(), Ok(Some(_))));
        if !ended {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            ended,
            "herd {args:?} did not end within {OP_DEADLINE:?}: {}{}\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.d.log()
        );
        out
    }

    /// Every process below one of this test's live supervisors, now:
    /// (pid, start time) → that supervisor.
    fn app_processes(&self) -> BTreeMap<(i32, u64), i32> {
        let supervisors: Vec<i32> = APPS
            .iter()
            .filter_map(|a| self.pid(Victim::Supervisor(a)))
            .collect();
        let mut found = BTreeMap::new();
        for (pid, (_, start)) in proc_table() {
            if let Some(above) = supervisor_above(pid, &supervisors) {
                if pid != above {
                    found.insert((pid, start), above);
                }
            }
        }
        found
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every process: pid → (parent pid, start time).
fn proc_table() -> BTreeMap<i32, (i32, u64)> {
    let mut table = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return table;
    };
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // Fields 3 on: state, ppid (4), …, start time (22).
        if fields.first().is_some_and(|s| *s == "Z" || *s == "X") {
            continue;
        }
        if let (Some(ppid), Some(start)) = (
            fields.get(1).and_then(|p| p.parse().ok()),
            fields.get(19).and_then(|s| s.parse().ok()),
        ) {
            table.insert(pid, (ppid, start));
        }
    }
    table
}

/// The first of `supervisors` on `pid`'s chain of parents (itself included).
fn supervisor_above(pid: i32, supervisors: &[i32]) -> Option<i32> {
    let mut at = pid;
    for _ in 0..64 {
        if supervisors.contains(&at) {
            return Some(at);
        }
        let stat = std::fs::read_to_string(format!("/proc/{at}/stat")).ok()?;
        let close = stat.rfind(')')?;
        at = stat[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
        if at <= 1 {
            return None;
        }
    }
    None
}

/// The saved list, read as `resurrect` reads it: each app's name and count.
fn saved(home: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(home.join("dump.json")).expect("dump.json readable");
    let dump: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("dump.json is not whole JSON ({e}): {text}"));
    dump["apps"]
        .as_array()
        .unwrap_or_else(|| panic!("dump.json holds no app list: {text}"))
        .iter()
        .map(|a| {
            (
                a["spec"]["name"].as_str().unwrap_or_default().to_string(),
                a["spec"]["instances"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Sets the flag when dropped (the end of the rounds, or a panic in one).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// On a failure, the daemon's log is kept (the home goes with the test).
struct KeepLog(PathBuf);

impl Drop for KeepLog {
    fn drop(&mut self) {
        if thread::panicking() {
            let to =
                std::env::temp_dir().join(format!("herd-kill-loop-{}.log", std::process::id()));
            if std::fs::copy(self.0.join("herd.log"), &to).is_ok() {
                eprintln!("  kill loop: the daemon's log is kept in {}", to.display());
            }
        }
    }
}

/// A stretch of time during which an app's requests may fail: from its
/// supervisor's kill until it answered again.
struct Outage {
    app: &'static str,
    from: Instant,
    to: Instant,
}

#[test]
fn kill_9_of_the_daemon_and_supervisors_at_random_moments_under_load() {
    need!(Need::Node, Need::Python);
    let began = Instant::now();
    let mut rng = Rng::seeded();
    let mut bench = Bench::new();
    let dir = TempDir::new("kill-loop");
    let (rr_addr, py_addr) = start_both(&bench.d, dir.path());
    let addr = |app: &str| if app == "rr" { &rr_addr } else { &py_addr };
    let mut counts: BTreeMap<&str, usize> = APPS.iter().map(|a| (*a, 2)).collect();
    for app in APPS {
        bench.d.wait_online(app, 2);
        bench
            .ids
            .insert(app, bench.d.app(app)["id"].as_u64().unwrap());
    }
    bench.d.ok(&["save"]);
    let b = &bench;
    let _keep = KeepLog(b.d.path().to_path_buf());
    let loads: BTreeMap<&str, Load> = APPS.iter().map(|a| (*a, load(addr(a)))).collect();
    for (app, l) in &loads {
        l.wait_for(&format!("{app} answers"), WAIT, |n, _| n >= 50);
    }

    // The rounds: every kind of operation at least twice (reloads and
    // scales of an app drawn each time), every victim about as often.
    let mut ops: Vec<Op> = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
        .into_iter()
        .map(|kind| {
            let app = APPS[rng.below(2) as usize];
            match kind {
                0 => Op::Reload(app),
                1 => Op::Scale(app, 0), // the count is drawn in its round
                2 => Op::Save,
                _ => Op::Update,
            }
        })
        .collect();
    assert_eq!(ops.len(), ROUNDS);
    rng.shuffle(&mut ops);
    let mut victims = vec![];
    while victims.len() < ROUNDS {
        victims.extend([
            Victim::Daemon,
            Victim::Supervisor("rr"),
            Victim::Supervisor("py"),
        ]);
    }
    rng.shuffle(&mut victims);

    let stop = AtomicBool::new(false);
    let restarts = AtomicUsize::new(0);
    // Every process seen below a supervisor of ours, and under which.
    let seen: Mutex<BTreeMap<(i32, u64), i32>> = Mutex::default();
    let mut outages: Vec<Outage> = Vec::new();
    let mut killed: Vec<(Victim, i32)> = Vec::new();
    thread::scope(|s| {
        // The helper threads end with the rounds, even when one fails.
        let _stop = StopOnDrop(&stop);
        // systemd: `Restart=on-failure` with no delay, by the CLI's way of
        // starting a daemon (`herd ping`).
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                if b.pid(Victim::Daemon).is_none() {
                    let out = b.d.herd(&["ping"]);
                    if out.status.success() {
                        restarts.fetch_add(1, Ordering::SeqCst);
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        // The processes of the apps, as they come and go.
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let now = b.app_processes();
                seen.lock().unwrap().extend(now);
                thread::sleep(Duration::from_millis(25));
            }
        });

        for (round, (mut op, victim)) in ops.iter().copied().zip(victims).enumerate() {
            if let Op::Scale(app, _) = op {
                // To another count of 1 to 3.
                let now = counts[app];
                let to = [1, 2, 3]
                    .into_iter()
                    .filter(|n| *n != now)
                    .collect::<Vec<_>>()[rng.below(2) as usize];
                op = Op::Scale(app, to);
                counts.insert(app, to);
            }
            if op == Op::Update {
                b.replace();
            }
            let delay = Duration::from_millis(rng.below(op.window().as_millis() as u64));
            let args = op.args();
            let started = Instant::now();
            let first = {
                let args = args.clone();
                s.spawn(move || b.run(&args))
            };
            thread::sleep(delay);
            let target = b.pid(victim);
            let killed_at = Instant::now();
            if let Some(pid) = target {
                kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
                killed.push((victim, pid));
            }
            // A killed supervisor's app is out until a worker of its next
            // supervisor answers (one of the killed one's may answer for a
            // moment yet: it ends when its parent's teardown is done).
            let answering = match (victim, target) {
                (Victim::Supervisor(app), Some(killed)) => {
                    let addr = addr(app).clone();
                    Some((
                        app,
                        s.spawn(move || {
                            let back = wait_until(WAIT, || {
                                let Some(next) = b.pid(victim).filter(|p| *p != killed) else {
                                    return false;
                                };
                                http_request(&addr, "/", Duration::from_secs(2))
                                    .ok()
                                    .filter(|r| r.status == 200)
                                    .and_then(|r| r.pid())
                                    .is_some_and(|pid| supervisor_above(pid, &[next]).is_some())
                            });
                            assert!(
                                back,
                                "{app} did not answer again after its supervisor's kill"
                            );
                            Instant::now()
                        }),
                    ))
                }
                _ => None,
            };
            let first = first.join().unwrap();
            eprintln!(
                "  round {round}: {op:?}, kill -9 of {victim:?} {} after {delay:?}: first try {}",
                target.map_or("(not running)".into(), |p| format!("pid {p}")),
                if first.status.success() {
                    "ok".into()
                } else {
                    format!("failed ({})", text(&first.stderr).trim())
                },
            );
            // Given again until it goes through (each is idempotent, or,
            // for a reload, harmless twice).
            let mut tries = 1;
            let mut last = first.clone();
            while !last.status.success() {
                assert!(
                    started.elapsed() < OP_DEADLINE,
                    "round {round}: {op:?} never went through: {}{}\n{}",
                    text(&last.stdout),
                    text(&last.stderr),
                    b.d.log()
                );
                thread::sleep(Duration::from_millis(50));
                last = b.run(&args);
                tries += 1;
            }
            let took = started.elapsed();
            // Both apps serve again with the workers they should have.
            for app in APPS {
                b.d.wait_online(app, counts[app]);
                wait_http(addr(app), "/", WAIT);
            }
            let settled = killed_at.elapsed();
            if let Some((app, answering)) = answering {
                let to = answering.join().unwrap();
                eprintln!(
                    "    {app} answered again {:?} after the kill",
                    to - killed_at
                );
                outages.push(Outage {
                    app,
                    from: killed_at,
                    to,
                });
            }
            if op == Op::Save {
                let want: BTreeMap<String, u64> = counts
                    .iter()
                    .map(|(a, n)| (a.to_string(), *n as u64))
                    .collect();
                assert_eq!(saved(b.d.path()), want, "round {round}: the saved list");
            }
            eprintln!(
                "    {tries} tries, {took:?}; all workers serving {settled:?} after the kill"
            );
        }
    });

    // The saved list as the loop left it, then saved once more: whole,
    // naming both apps with their counts.
    let want: BTreeMap<String, u64> = counts
        .iter()
        .map(|(a, n)| (a.to_string(), *n as u64))
        .collect();
    assert_eq!(
        saved(b.d.path()).keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    b.d.ok(&["save"]);
    assert_eq!(saved(b.d.path()), want);
    assert!(!b.d.path().join("dump.json.tmp").exists());

    // Both apps serve with the expected workers, every one of them answering.
    for app in APPS {
        let pids = b.d.wait_online(app, counts[app]);
        let answering = pids_answering(addr(app), &pid_set(&pids), 500);
        assert!(
            pid_set(&pids).is_subset(&answering),
            "{app}: workers {pids:?}, answering {answering:?}"
        );
    }
    let reports: BTreeMap<&str, LoadReport> =
        loads.into_iter().map(|(a, l)| (a, l.stop())).collect();

    // Requests: none lost but the killed supervisors' apps' during their outage.
    let mut explained = 0;
    for (app, report) in &reports {
        let unexplained: Vec<&FailedAt> = report
            .failed_at
            .iter()
            .filter(|f| {
                !outages
                    .iter()
                    .any(|o| o.app == *app && f.started <= o.to && f.ended >= o.from)
            })
            .collect();
        explained += report.failed_at.len() - unexplained.len();
        assert!(
            unexplained.is_empty(),
            "{app}: {} failed request(s) outside its supervisor's outages: {:?}\n{}",
            unexplained.len(),
            unexplained
                .iter()
                .map(|f| format!("{} at {:?}", f.kind, f.started - began))
                .collect::<Vec<_>>(),
            b.d.log()
        );
        assert!(report.ok > 500, "{app}: too little load: {report:?}");
    }

    // Nothing outlives its app: every process ever seen below a supervisor
    // is gone, or is below a supervisor of ours now.
    let supervisors: Vec<i32> = APPS
        .iter()
        .filter_map(|a| b.pid(Victim::Supervisor(a)))
        .collect();
    assert_eq!(supervisors.len(), 2, "{}", b.d.log());
    let mut seen = seen.into_inner().unwrap();
    let sleepers = grandchildren(&out_log(&b.d, "py"));
    let table = proc_table();
    for pid in &sleepers {
        if let Some((_, start)) = table.get(pid) {
            seen.entry((*pid, *start)).or_insert(0);
        }
    }
    let mut left = Vec::new();
    let clean = wait_until(WAIT, || {
        left = seen
            .keys()
            .filter(|(pid, start)| {
                start_time(*pid) == Some(*start)
                    && process_alive(*pid)
                    && supervisor_above(*pid, &supervisors).is_none()
            })
            .copied()
            .collect();
        left.is_empty()
    });
    let killed_supervisors: Vec<i32> = killed
        .iter()
        .filter(|(v, _)| matches!(v, Victim::Supervisor(_)))
        .map(|(_, p)| *p)
        .collect();
    assert!(
        clean,
        "left behind (pid, start time): {left:?}; killed supervisors {killed_supervisors:?}"
    );
    for (victim, pid) in &killed {
        assert!(
            !process_alive(*pid),
            "{victim:?} {pid} outlived its SIGKILL"
        );
    }
    assert!(
        sleepers.len() >= 2,
        "py's workers never said their grandchild"
    );

    // No numbered line lost or doubled, and nothing herd could not read.
    for app in APPS {
        check_ticks(app, &out_log(&b.d, app));
    }
    let log = b.d.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("cannot take app"), "{log}");

    let requests: usize = reports.values().map(|r| r.ok + r.failed()).sum();
    let refused: usize = reports.values().map(|r| r.count("ConnectionRefused")).sum();
    eprintln!(
        "  kill loop: {ROUNDS} rounds, {} kills ({} of the daemon), {} daemon start(s) by the \
         loop; {requests} requests, {explained} failed in a killed supervisor's outage \
         ({refused} refused; outages of {} ms at most, {} ms mean), 0 otherwise; {} app \
         processes seen, {} grandchildren, none left; {:?} in all",
        killed.len(),
        killed.iter().filter(|(v, _)| *v == Victim::Daemon).count(),
        restarts.load(Ordering::SeqCst),
        outages
            .iter()
            .map(|o| (o.to - o.from).as_millis())
            .max()
            .unwrap_or(0),
        outages
            .iter()
            .map(|o| (o.to - o.from).as_millis())
            .sum::<u128>()
            / outages.len().max(1) as u128,
        seen.len(),
        sleepers.len(),
        began.elapsed()
    );
}

/// Regression, found by the kill loop: a CLI that connected in the moment
/// its daemon was killed (a killed process's socket takes connections until
/// its teardown closes it) failed with "the daemon closed the connection …
/// Connection reset by peer", though it had asked nothing yet, instead of
/// reaching the daemon started next.
#[test]
fn a_cli_whose_daemon_dies_before_answering_its_hello_reaches_the_next_one() {
    use std::io::Read;
    let d = Daemon::new();
    let daemon = d.daemon_pid().expect("a daemon");
    kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
    assert!(wait_until(WAIT, || !process_alive(daemon)));
    // Stand in for the dying daemon: its socket takes the CLI's connection,
    // then goes away with the hello unread.
    let sock = d.path().join("herd.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let dying = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut first = [0u8; 1];
        conn.read_exact(&mut first).unwrap();
        std::fs::remove_file(&sock).unwrap();
        drop(listener);
    });
    let out = d.herd(&["list", "--json"]);
    dying.join().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let next = d.daemon_pid().expect("the next daemon");
    assert_ne!(next, daemon);
    assert!(process_alive(next));
}

/// Regression, found by the kill loop: a scale whose supervisor was killed
/// before it answered (or right after) runs on under the next supervisor,
/// which reads the app's file, but `herd save` wrote the count from before
/// (the daemon's copy of the definition, never told of the change).
#[test]
fn a_scale_whose_answer_died_with_its_supervisor_is_saved() {
    let d = Daemon::new();
    d.start_fixture("web", &["-i", "1", "--ready-delay", "3s"]);
    d.wait_online("web", 1);
    let id = d.app("web")["id"].as_u64().unwrap();
    let app_file = d.path().join(format!("apps/{id}.json"));
    let instances = || -> Option<u64> {
        let file: Value = serde_json::from_str(&std::fs::read_to_string(&app_file).ok()?).ok()?;
        file["definition"]["spec"]["instances"].as_u64()
    };
    // The supervisor takes the new count and waits for the new worker to
    // be ready before it answers: it dies meanwhile.
    let mut scale = d
        .command(&["scale", "web", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(WAIT, || instances() == Some(2)));
    let supervisor: i32 = std::fs::read_to_string(d.path().join(format!("apps/{id}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(Pid::from_raw(supervisor), Signal::SIGKILL).unwrap();
    let _ = scale.wait();
    d.wait_online("web", 2);
    d.ok(&["save"]);
    assert_eq!(saved(d.path())["web"], 2, "{}", d.log());
}
