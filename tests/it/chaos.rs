//! Chaos (issue 15.4), the CI's short version of `bench/chaos.py`: for every
//! balance mode × (a Node app with no cluster code, a LISTEN_FDS app) ×
//! (`herd run`, the daemon), kill -9 a random worker every 200–500 ms for a
//! few seconds under fresh-connection load from several clients, and count
//! each request's fate: answered, refused, reset, failed, or hung (no answer
//! within 2 s). A failure is forgiven only when a kill landed while it was
//! open (a request in flight on the killed worker, which no supervisor can
//! save); none may be refused, hung or unexplained, and the app serves on.
//!
//! And the faults the chaos run found, each pinned by a test named after it.
//!
//! The LISTEN_FDS app is the fixture server: its plain mode under `shared`
//! and `reuseport`; under `round-robin` its herd-cluster mode, the same
//! program built on the library, which takes handed-over connections.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use herd_testkit::*;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// How long each case kills workers.
const CHAOS: Duration = Duration::from_secs(3);
/// Fresh-connection clients, each one request at a time.
const CLIENTS: usize = 4;
/// A request without its whole answer by then is hung.
const HUNG: Duration = Duration::from_secs(2);
/// Reuseport: each worker has its own socket, and the kernel hashes a new
/// client to one of them without knowing whether a worker is behind it. A
/// client it queues on a killed worker's socket before herd has seen the
/// exit and closed that socket (then it is reset, unless
/// `net.ipv4.tcp_migrate_req=1` moves it) was in flight on the killed worker
/// too: a reset that began this soon after a kill is counted so. (Before
/// herd closed an empty slot's socket, such clients hung for the whole
/// backoff instead.)
const QUEUED: Duration = Duration::from_millis(250);
/// The clients' own limit.
const GIVE_UP: Duration = Duration::from_secs(5);
const T: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq)]
enum App {
    Node,
    ListenFds,
}

/// What the workers run under.
enum Under {
    Run(Herd),
    Daemon(Daemon),
}

impl Under {
    /// Workers alive now (pids).
    fn workers(&self) -> Vec<i32> {
        match self {
            Under::Run(h) => h.live_workers().into_iter().collect(),
            Under::Daemon(d) => {
                let app = d.app("chaos");
                worker_pids(&app)
                    .into_iter()
                    .filter(|&p| process_alive(p))
                    .collect()
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Under::Run(h) => h.stderr_text(),
            Under::Daemon(d) => format!("{:#}\n{}", d.app("chaos"), d.log()),
        }
    }
}

fn node_app() -> String {
    format!("{}/examples/node/hello.js", env!("CARGO_MANIFEST_DIR"))
}

/// Start 2 workers of `app` under `herd run` or the daemon with balance
/// `mode`; the address they serve on, once both answer.
fn start(daemon: bool, mode: &str, app: App) -> (Under, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let port_s = port.to_string();
    // (herd's options, the program and its arguments, the environment)
    let (opts, program, env): (Vec<String>, Vec<String>, Vec<(&str, &str)>) = match app {
        App::Node => (
            vec!["--balance".into(), mode.into()],
            vec![node_app()],
            vec![("PORT", port_s.as_str())],
        ),
        App::ListenFds if mode == "round-robin" => (
            vec![
                "--balance".into(),
                mode.into(),
                "--listen".into(),
                format!("web={addr}"),
            ],
            vec![
                worker_bin().into(),
                "cluster".into(),
                "--addr".into(),
                // Its fallback when it inherits no listener: taken, so a
                // worker that serves was handed its connections.
                "127.0.0.1:1".into(),
            ],
            vec![],
        ),
        App::ListenFds => (
            vec![
                "--balance".into(),
                mode.into(),
                "--listen".into(),
                addr.clone(),
            ],
            vec![worker_bin().into()],
            vec![],
        ),
    };
    let under = if daemon {
        let d = Daemon::new();
        let mut args: Vec<String> = ["start", "--name", "chaos", "-i", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(opts);
        args.push(program[0].clone());
        if program.len() > 1 {
            args.push("--".into());
            args.extend(program[1..].iter().cloned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = d.command(&args).envs(env.iter().copied()).output().unwrap();
        assert!(
            out.status.success(),
            "herd {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        d.wait_online("chaos", 2);
        Under::Daemon(d)
    } else {
        let mut args = vec!["run".to_string(), "-i".into(), "2".into()];
        args.extend(opts);
        args.push("--".into());
        args.extend(program);
        let h = Herd::spawn("herd", herd_bin(), &args, &env);
        h.wait_online(0, 2, T);
        Under::Run(h)
    };
    let want: BTreeSet<i32> = under.workers().into_iter().collect();
    // The kernel picks the worker on a shared socket: ask patiently, from
    // several threads at once (herd_testkit::answers_from).
    let seen: BTreeSet<i32> = answers_from(&want, KERNEL_PICKS, || {
        let r = http_request(&addr, "/", Duration::from_secs(2)).ok()?;
        answered_by(&r).map(|pid| (pid, ()))
    })
    .into_keys()
    .collect();
    assert!(
        want.is_subset(&seen),
        "workers {want:?} never all answered on {addr} (saw {seen:?}):\n{}",
        under.describe()
    );
    (under, addr)
}

/// The worker that answered: hello.js says so in `X-Worker-Pid`, the
/// fixture in its body or `X-Pid`.
fn answered_by(r: &Response) -> Option<i32> {
    if r.status != 200 {
        return None;
    }
    r.header("x-worker-pid")
        .and_then(|p| p.parse().ok())
        .or_else(|| r.pid())
}

/// One request's fate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Ok,
    Refused,
    Reset,
    Failed,
}

struct Record {
    start: Instant,
    took: Duration,
    fate: Fate,
    detail: Option<String>,
}

/// One GET / on a fresh connection.
fn request(addr: &str) -> Record {
    let start = Instant::now();
    let (fate, detail) = match http_request(addr, "/", GIVE_UP) {
        Ok(r) if r.status == 200 => (Fate::Ok, None),
        Ok(r) => (Fate::Failed, Some(format!("status {}", r.status))),
        Err(e) => {
            let fate = match e.kind() {
                ErrorKind::ConnectionRefused => Fate::Refused,
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof => Fate::Reset,
                _ => Fate::Failed,
            };
            (fate, Some(format!("{:?}: {e}", e.kind())))
        }
    };
    Record {
        start,
        took: start.elapsed(),
        fate,
        detail,
    }
}

/// A small deterministic generator (the seed is printed with each case).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What a chaos run counted.
#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    ok: usize,
    refused: usize,
    reset: usize,
    failed: usize,
    hung: usize,
    /// Reset or failed while a kill landed: in flight on the killed worker.
    in_flight_killed: usize,
    /// Reuseport only: reset while it began just after a kill — the kernel
    /// queued it on the killed worker's own socket before herd saw the
    /// exit and closed that socket (see `QUEUED`).
    queued_on_killed: usize,
    unexplained: Vec<String>,
    kills: usize,
}

/// Kill -9 a random live worker every 200–500 ms for `CHAOS` under load.
fn chaos(under: &Under, addr: &str, reuseport: bool, seed: u64) -> Tally {
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, records, addr) = (stop.clone(), records.clone(), addr.to_string());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r = request(&addr);
                    let refused = r.fate == Fate::Refused;
                    records.lock().unwrap().push(r);
                    if refused {
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();
    let mut rng = Lcg(seed);
    // Each kill as the moments just before and just after kill(2): the
    // killer may be preempted between them on a loaded machine.
    let mut kills: Vec<(Instant, Instant)> = Vec::new();
    let end = Instant::now() + CHAOS;
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(200 + rng.below(301)));
        let live = under.workers();
        if live.is_empty() {
            continue;
        }
        let pid = live[rng.below(live.len() as u64) as usize];
        let before = Instant::now();
        if kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok() {
            kills.push((before, Instant::now()));
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let records = std::mem::take(&mut *records.lock().unwrap());
    let slack = Duration::from_millis(5);
    let mut t = Tally {
        kills: kills.len(),
        requests: records.len(),
        ..Tally::default()
    };
    for r in &records {
        if r.took > HUNG {
            t.hung += 1;
            t.unexplained.push(format!(
                "hung {:?} ({:?}{})",
                r.took,
                r.fate,
                r.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ));
            continue;
        }
        match r.fate {
            Fate::Ok => t.ok += 1,
            Fate::Refused => t.refused += 1,
            Fate::Reset => t.reset += 1,
            Fate::Failed => t.failed += 1,
        }
        if matches!(r.fate, Fate::Reset | Fate::Failed) {
            let end = r.start + r.took;
            if kills
                .iter()
                .any(|&(k0, k1)| r.start <= k1 + slack && k0 <= end)
            {
                t.in_flight_killed += 1;
            } else if reuseport
                && r.fate == Fate::Reset
                && kills
                    .iter()
                    .any(|&(k0, _)| k0 <= r.start && r.start <= k0 + QUEUED)
            {
                t.queued_on_killed += 1;
            } else {
                t.unexplained.push(format!(
                    "{:?} with no kill while it was open: {}",
                    r.fate,
                    r.detail.as_deref().unwrap_or("")
                ));
            }
        }
    }
    t
}

/// A case of the matrix: start, chaos, check, stop.
fn case(daemon: bool, mode: &str, app: App) {
    if app == App::Node {
        need_node!();
    }
    let _s = serial();
    let (under, addr) = start(daemon, mode, app);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let t = chaos(&under, &addr, mode == "reuseport", seed);
    let runner = if daemon { "daemon" } else { "herd run" };
    eprintln!(
        "  MEASURED chaos {runner} {mode} {app:?}: {} requests in {CHAOS:?}, {} kills: {} ok, \
         {} refused, {} reset, {} failed, {} hung, {} in flight on a killed worker, {} queued on its socket (seed {seed})",
        t.requests,
        t.kills,
        t.ok,
        t.refused,
        t.reset,
        t.failed,
        t.hung,
        t.in_flight_killed,
        t.queued_on_killed
    );
    // The app serves on: every slot is refilled.
    let deadline = Instant::now() + T;
    while under.workers().len() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let after = under.workers();
    assert_eq!(
        after.len(),
        2,
        "workers after the chaos: {after:?}:\n{}",
        under.describe()
    );
    wait_http(&addr, "/", T);
    if let Under::Daemon(d) = &under {
        // The daemon's status follows the refilled slots within a moment.
        let online = wait_until(T, || d.app("chaos")["status"] == "online");
        assert!(online, "status after the chaos: {}", d.app("chaos"));
    }
    assert!(t.kills >= 3, "the chaos killed too little: {t:?}");
    assert!(t.ok >= 20, "too few answers to count: {t:?}");
    assert_eq!(t.refused, 0, "a connection was refused: {t:?}");
    assert!(
        t.unexplained.is_empty(),
        "requests hung or failed without a kill while they were open: {t:?}\n{}",
        under.describe()
    );
    if let Under::Run(mut h) = under {
        h.signal(Signal::SIGTERM);
        h.wait_exit(T);
    }
}

#[test]
fn chaos_herd_run_shared_node() {
    case(false, "shared", App::Node);
}

#[test]
fn chaos_herd_run_shared_listen_fds() {
    case(false, "shared", App::ListenFds);
}

#[test]
fn chaos_herd_run_reuseport_node() {
    case(false, "reuseport", App::Node);
}

#[test]
fn chaos_herd_run_reuseport_listen_fds() {
    case(false, "reuseport", App::ListenFds);
}

#[test]
fn chaos_herd_run_round_robin_node() {
    case(false, "round-robin", App::Node);
}

#[test]
fn chaos_herd_run_round_robin_listen_fds() {
    case(false, "round-robin", App::ListenFds);
}

#[test]
fn chaos_daemon_shared_node() {
    case(true, "shared", App::Node);
}

#[test]
fn chaos_daemon_shared_listen_fds() {
    case(true, "shared", App::ListenFds);
}

#[test]
fn chaos_daemon_reuseport_node() {
    case(true, "reuseport", App::Node);
}

#[test]
fn chaos_daemon_reuseport_listen_fds() {
    case(true, "reuseport", App::ListenFds);
}

#[test]
fn chaos_daemon_round_robin_node() {
    case(true, "round-robin", App::Node);
}

#[test]
fn chaos_daemon_round_robin_listen_fds() {
    case(true, "round-robin", App::ListenFds);
}

/// Round-robin: connections herd handed to a worker that died before it
/// took them (they sat unread in its channel) go to another worker and are
/// answered — none is lost. Both workers are stopped (SIGSTOP) while the
/// clients connect, so herd hands connections to each; then one is killed
/// and the other continued: every client gets its answer.
fn round_robin_connection_handed_to_a_worker_that_dies_is_rerouted(app: App) {
    use nix::sys::signal::Signal as Sig;
    if app == App::Node {
        need_node!();
    }
    let _s = serial();
    let (under, addr) = start(false, "round-robin", app);
    let Under::Run(mut h) = under else {
        unreachable!()
    };
    let workers: Vec<i32> = h.live_workers().into_iter().collect();
    let (dying, living) = (workers[0], workers[1]);
    let before = herd_sockets(h.pid());
    for &w in &workers {
        kill(Pid::from_raw(w), Sig::SIGSTOP).unwrap();
    }
    const N: usize = 16;
    let mut clients = Vec::new();
    for _ in 0..N {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        clients.push(c);
    }
    // herd accepts them all and hands them out, to both workers in turn
    // (neither answers, so neither is preferred).
    let took_all = wait_until(Duration::from_secs(10), || {
        herd_sockets(h.pid()) >= before + N
    });
    assert!(
        took_all,
        "herd never took the {N} connections:\n{}",
        h.stderr_text()
    );
    kill(Pid::from_raw(dying), Sig::SIGKILL).unwrap();
    kill(Pid::from_raw(living), Sig::SIGCONT).unwrap();
    let mut answered = 0;
    let mut lost = Vec::new();
    for mut c in clients {
        let mut raw = Vec::new();
        match c.read_to_end(&mut raw) {
            Ok(_) if raw.starts_with(b"HTTP/1.1 200") => answered += 1,
            Ok(_) => lost.push(format!("closed after {} bytes", raw.len())),
            Err(e) => lost.push(format!("{:?}: {e}", e.kind())),
        }
    }
    eprintln!("  MEASURED {answered} of {N} answered after their worker died, lost: {lost:?}");
    assert!(
        lost.is_empty(),
        "connections lost with the worker: {lost:?}\n{}",
        h.stderr_text()
    );
    h.signal(Signal::SIGTERM);
    h.wait_exit(T);
}

/// Sockets the process holds.
fn herd_sockets(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn round_robin_connection_handed_to_a_node_worker_that_dies_is_rerouted() {
    round_robin_connection_handed_to_a_worker_that_dies_is_rerouted(App::Node);
}

#[test]
fn round_robin_connection_handed_to_a_herd_cluster_worker_that_dies_is_rerouted() {
    round_robin_connection_handed_to_a_worker_that_dies_is_rerouted(App::ListenFds);
}

/// Found by the chaos run (`bench/chaos.py`, reuseport × the LISTEN_FDS
/// app: every client hung 3.2 s, then 5 s, at once): a slot whose worker
/// waited out its backoff kept its reuseport socket open, so the kernel
/// went on hashing new clients to it and they hung until the slot's next
/// worker accepted — for as long as the backoff (up to `max_restart_delay`).
/// Now the slot's socket closes while it is empty, and the other worker
/// takes every new client.
#[test]
fn a_reuseport_slot_waiting_out_its_backoff_strands_no_client() {
    let _s = serial();
    let addr = format!("127.0.0.1:{}", free_port());
    // Every exit is young: the killed slot waits its 30 s restart delay.
    let args: Vec<String> = [
        "run",
        "-i",
        "2",
        "--balance",
        "reuseport",
        "--listen",
        &addr,
        "--min-uptime",
        "1h",
        "--restart-delay",
        "30s",
        "--max-restart-delay",
        "30s",
        "--",
        worker_bin(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut h = Herd::spawn("herd", herd_bin(), &args, &[]);
    let online = h.wait_online(0, 2, T);
    wait_http(&addr, "/", T);
    let mark = h.mark(Stream::Stderr);
    kill(Pid::from_raw(online[&0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    h.wait_stderr_after(mark, "worker 0 {*}restarting it in", T);
    let living = online[&1];
    let mut stranded = Vec::new();
    for i in 0..40 {
        match http_request(&addr, "/", HUNG) {
            Ok(r) if answered_by(&r) == Some(living) => {}
            Ok(r) => stranded.push(format!("request {i}: status {}", r.status)),
            Err(e) => stranded.push(format!("request {i}: {:?}: {e}", e.kind())),
        }
    }
    assert!(
        stranded.is_empty(),
        "clients stranded on the empty slot's socket: {stranded:?}\n{}",
        h.stderr_text()
    );
    h.signal(Signal::SIGTERM);
    h.wait_exit(T);
}

/// The same run's second finding: with both slots of a reuseport app
/// killed, the last one's socket stays open (a queue beats a refused
/// connection) — but when the other slot started first (no worker runs, so
/// a killed slot starts at once), it bound a fresh socket beside it, and the
/// kept one, with no worker for the whole backoff, stranded its share of
/// clients again (every client hung 5 s at once, twice in 30 s). Now the
/// slot that starts takes the kept socket over, with the clients queued on
/// it.
#[test]
fn a_reuseport_socket_kept_open_goes_to_the_slot_that_starts_first() {
    let _s = serial();
    let addr = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "run",
        "-i",
        "2",
        "--balance",
        "reuseport",
        "--listen",
        &addr,
        "--min-uptime",
        "1h",
        "--restart-delay",
        "30s",
        "--max-restart-delay",
        "30s",
        "--",
        worker_bin(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut h = Herd::spawn("herd", herd_bin(), &args, &[]);
    let online = h.wait_online(0, 2, T);
    wait_http(&addr, "/", T);
    let sigkill = nix::sys::signal::Signal::SIGKILL;
    let mark = h.mark(Stream::Stderr);
    kill(Pid::from_raw(online[&0]), sigkill).unwrap();
    h.wait_stderr_after(mark, "worker 0 {*}restarting it in", T);
    let mark = h.mark(Stream::Stderr);
    kill(Pid::from_raw(online[&1]), sigkill).unwrap();
    h.wait_stderr_after(mark, "starts now, before its backoff ends", T);
    let (_, caps) = h
        .wait_line_after(Stream::Stderr, mark, pat::ONLINE, T)
        .expect("a worker starts at once");
    let new: i32 = caps[1].parse().unwrap();
    let mut stranded = Vec::new();
    for i in 0..40 {
        match http_request(&addr, "/", HUNG) {
            Ok(r) if answered_by(&r) == Some(new) => {}
            Ok(r) => stranded.push(format!("request {i}: status {}", r.status)),
            Err(e) => stranded.push(format!("request {i}: {:?}: {e}", e.kind())),
        }
    }
    assert!(
        stranded.is_empty(),
        "clients stranded on a socket with no worker: {stranded:?}\n{}",
        h.stderr_text()
    );
    h.signal(Signal::SIGTERM);
    h.wait_exit(T);
}
