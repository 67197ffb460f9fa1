//! Reload of apps that listen by themselves (issue 12.3): real Bun, Deno,
//! Python and Node servers from `tests/runtimes`, real sockets on
//! 127.0.0.1, real reloads, under fresh-connection load where it counts.
//!
//! - An app whose own socket admits a second listener (`SO_REUSEPORT`: Bun's
//!   and Deno's `reusePort`) reloads start-first and no connection is ever
//!   refused; with `net.ipv4.tcp_migrate_req` at 1 Bun loses none at all
//!   (Deno's own shutdown drops a few it had accepted, see below). That setting is set in a fresh
//!   network namespace of the test's own (never on the machine); with it at
//!   0 the loss is measured and printed, and herd's note about it checked.
//! - An app whose own socket does not (Python's `http.server`, Node with
//!   `exclusive: true`) reloads stop-then-start, the log says so and how to
//!   avoid it, and afterwards only the new version answers.
//! - A new version that cannot start is reported; the app keeps serving;
//!   the fixed version, applied with `herd start FILE`, brings every slot back.
//! - `herd start FILE` again with a changed env reaches every instance.
//! - A `--watch` reload takes the same way as `herd reload` (a restart here).
//!
//! `HERD_TEST_RELOADS=N` sets how many reloads the load tests make (2).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_testkit::*;

const START: Duration = Duration::from_secs(20);
const RELOAD: Duration = Duration::from_secs(60);
const REQ: Duration = Duration::from_secs(3);

fn runtimes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtimes")
}

fn app_file(name: &str) -> String {
    runtimes().join(name).display().to_string()
}

/// GET / on `port`: (pid, VERSION) of the instance that answered.
fn answer(port: u16) -> io::Result<(i32, String)> {
    let r = http_request(&format!("127.0.0.1:{port}"), "/", REQ)?;
    if r.status != 200 {
        return Err(io::Error::other(format!("status {}", r.status)));
    }
    let pid = r
        .pid()
        .ok_or_else(|| io::Error::other("no pid in the answer"))?;
    Ok((pid, r.header("x-version").unwrap_or_default().to_string()))
}

/// The versions `tries` fresh connections to `port` got answers from.
fn versions(port: u16, tries: usize) -> BTreeSet<String> {
    (0..tries)
        .map(|_| answer(port).map_or_else(|e| format!("error: {e}"), |(_, v)| v))
        .collect()
}

fn wait_version(port: u16, version: &str) {
    let mut last = None;
    let ok = wait_until(START, || {
        last = Some(answer(port));
        matches!(&last, Some(Ok((_, v))) if v == version)
    });
    assert!(ok, "port {port} never answered version {version}: {last:?}");
}

// ---------------------------------------------------------------------------
// Start-first beside the app's own SO_REUSEPORT socket, under load.

/// Bring the loopback interface of this thread's network namespace up.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket for the ioctls, closed below; `req` is a
    // zeroed ifreq naming "lo", which both ioctls read and SIOCGIFFLAGS fills.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (to, from) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *to = *from as libc::c_char;
        }
        let mut result = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if result == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let error = io::Error::last_os_error();
        libc::close(fd);
        if result != 0 {
            return Err(error);
        }
    }
    Ok(())
}

/// Run `f` on a thread of its own in a fresh network namespace, with
/// `net.ipv4.tcp_migrate_req` set to `migrate`: the processes it starts
/// and the threads it spawns live there too; the machine's setting is
/// never touched.
fn in_fresh_netns<R: Send + 'static>(migrate: bool, f: impl FnOnce() -> R + Send + 'static) -> R {
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap();
    let result = std::thread::spawn(move || {
        // Only this thread moves.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET): {e}"));
        loopback_up().expect("bring lo up in the fresh namespace");
        // Per network namespace: this thread's, as it opens the file.
        let path = "/proc/sys/net/ipv4/tcp_migrate_req";
        std::fs::write(path, if migrate { "1" } else { "0" }).expect("set tcp_migrate_req");
        assert_eq!(
            std::fs::read_to_string(path).unwrap().trim(),
            if migrate { "1" } else { "0" }
        );
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap(),
        host,
        "the machine's own setting is untouched"
    );
    result
}

/// What a run of reloads under load gave.
struct Run {
    reloads: usize,
    load: LoadReport,
    herd_stderr: String,
}

/// `herd run -i 2` of a runtime's server with `reusePort` in a fresh
/// network namespace (`tcp_migrate_req` = `migrate`), reloaded
/// `HERD_TEST_RELOADS` times (SIGHUP) under fresh-connection load.
fn reloads_under_load(runtime: &'static str, migrate: bool) -> Run {
    let reloads: usize = std::env::var("HERD_TEST_RELOADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    in_fresh_netns(migrate, move || {
        let port = free_port().to_string();
        let bin = runtime_bin(runtime).display().to_string();
        let mut args = vec!["run", "-i", "2", "--", &bin];
        let deno_args = ["run", "--allow-net", "--allow-env", "--unstable-net"];
        let script = match runtime {
            "bun" => app_file("bun-server.ts"),
            _ => {
                args.extend(deno_args);
                app_file("deno-server.ts")
            }
        };
        args.push(&script);
        let h = Herd::spawn(
            "herd",
            herd_bin(),
            &args,
            &[("PORT", &port), ("VERSION", "1")],
        );
        let online = h.wait_online(0, 2, START);
        h.wait_ready(&online, START);
        let addr = format!("127.0.0.1:{port}");
        let first = set_of(online.values());
        assert_eq!(pids_answering(&addr, &first, 400), first, "both answer");
        let load = Load::start_bounded(&addr, "/", 4, Duration::ZERO, RELOAD * 3, 1_000_000);
        load.wait_for("answers before the reload", START, |n, _| n >= 300);
        let mut pids = first;
        for round in 0..reloads {
            let mark = h.mark(Stream::Stderr);
            h.signal(Signal::SIGHUP);
            h.wait_stderr_after(mark, pat::RELOAD_FINISHED, RELOAD);
            let new = set_of(h.wait_online(mark, 2, START).values());
            assert!(
                new.is_disjoint(&pids),
                "round {round}: every worker replaced"
            );
            // Both successors take connections before the next round.
            load.wait_for("answers from the new workers", START, |_, seen| {
                new.is_subset(seen)
            });
            pids = new;
        }
        let ok_before = load.ok_so_far();
        load.wait_for("answers after the last reload", START, |n, _| {
            n >= ok_before + 300
        });
        let report = load.stop();
        Run {
            reloads,
            load: report,
            herd_stderr: h.stderr_text(),
        }
    })
}

fn set_of<'a>(pids: impl IntoIterator<Item = &'a i32>) -> BTreeSet<i32> {
    pids.into_iter().copied().collect()
}

/// Start-first beside the app's own socket: no reload was a restart, none
/// aborted; the note on tcp_migrate_req given once when it is 0, never when 1.
fn check_start_first(run: &Run, runtime: &str, migrate: bool) {
    let log = &run.herd_stderr;
    eprintln!(
        "  figures: {runtime}, tcp_migrate_req={}: {} failed of {} fresh connections over {} reloads {:?}",
        migrate as u8,
        run.load.failed(),
        run.load.ok + run.load.failed(),
        run.reloads,
        run.load.failures
    );
    assert!(!log.contains("is a restart"), "{log}");
    assert!(!log.contains("restarting worker"), "{log}");
    assert!(!log.contains(pat::RELOAD_ABORTED), "{log}");
    assert_eq!(
        log.matches(pat::RELOAD_FINISHED).count(),
        run.reloads,
        "{log}"
    );
    let notes = log.matches("tcp_migrate_req is 0 here").count();
    assert_eq!(
        notes,
        if migrate { 0 } else { 1 },
        "said once when it is off:\n{log}"
    );
}

/// Bun drains its own socket well: locally 0 failed of ~155k fresh
/// connections over 50 reloads, some with the CPUs kept busy (and 0 of 47k
/// over 60 replacements without herd). CI, with other tests loading the machine, twice saw one reset in
/// ~25k, during Bun's own drain (herd had started the successor, seen it
/// listen, and only then sent SIGINT): so none refused, and resets at most
/// one in 10,000.
#[test]
fn bun_with_reuse_port_reloads_start_first_and_refuses_nothing_with_tcp_migrate_req() {
    need!(Need::Runtime("bun"), Need::NetNamespace);
    let _s = serial();
    let run = reloads_under_load("bun", true);
    check_start_first(&run, "bun", true);
    let load = &run.load;
    assert_eq!(load.count("ConnectionRefused"), 0, "{:?}", load.failures);
    assert!(
        load.failed() * 10_000 <= load.ok + load.failed(),
        "{:?} of {}: {:?}",
        load.failures,
        load.ok + load.failed(),
        load.samples
    );
}

/// No connection is refused: the new worker always listens before the old
/// one stops. Deno 2.9's own `server.shutdown()` closes the few connections
/// it accepted but had not read a request from yet (the client sees an
/// empty answer, a broken pipe or a reset, by timing); that happens without
/// herd too (two Deno processes on one reusePort port, SIGINT to one), so
/// those are counted and printed, and only bounded here.
#[test]
fn deno_with_reuse_port_reloads_start_first_and_refuses_nothing_with_tcp_migrate_req() {
    need!(Need::Runtime("deno"), Need::NetNamespace);
    let _s = serial();
    let run = reloads_under_load("deno", true);
    check_start_first(&run, "deno", true);
    assert_few(&run.load);
}

/// No connection refused, and failures a few, not a share.
fn assert_few(load: &LoadReport) {
    assert_eq!(load.count("ConnectionRefused"), 0, "{:?}", load.failures);
    let total = load.ok + load.failed();
    assert!(
        load.failed() * 100 < total,
        "{:?} of {total}",
        load.failures
    );
}

/// With the kernel's default the reload is still start-first; the few
/// connections reset in a stopping worker's queue are measured (printed),
/// and herd says once what the setting costs.
#[test]
fn bun_with_reuse_port_and_tcp_migrate_req_off_is_told_what_it_costs() {
    need!(Need::Runtime("bun"), Need::NetNamespace);
    let _s = serial();
    let run = reloads_under_load("bun", false);
    check_start_first(&run, "bun", false);
    assert_few(&run.load);
}

#[test]
fn deno_with_reuse_port_and_tcp_migrate_req_off_is_told_what_it_costs() {
    need!(Need::Runtime("deno"), Need::NetNamespace);
    let _s = serial();
    let run = reloads_under_load("deno", false);
    check_start_first(&run, "deno", false);
    assert_few(&run.load);
}

// ---------------------------------------------------------------------------
// Stop-then-start, failed versions and new definitions, through the daemon.

/// A pm2 process file of apps from `tests/runtimes`, each given
/// `env` (JSON object text) on top of its own PORT.
struct Apps {
    dir: TempDir,
    /// name → (script, instances, PORT, extra keys as JS text)
    apps: Vec<(&'static str, String, usize, u16, String)>,
}

impl Apps {
    fn new() -> Apps {
        Apps {
            dir: TempDir::new("reload"),
            apps: Vec::new(),
        }
    }

    fn app(&mut self, name: &'static str, script: &str, instances: usize, extra: &str) -> u16 {
        let port = free_ports(instances as u16);
        self.apps
            .push((name, app_file(script), instances, port, extra.to_string()));
        port
    }

    /// Write the file with `env` added to every app; its path.
    fn write(&self, env: &str) -> String {
        let apps: Vec<String> = self
            .apps
            .iter()
            .map(|(name, script, n, port, extra)| {
                format!(
                    "  {{ name: {name:?}, script: {script:?}, instances: {n}, {extra}\n    env: {{ PORT: \"{port}\", {env} }} }}"
                )
            })
            .collect();
        let path = self.dir.join("ecosystem.config.js");
        std::fs::write(
            &path,
            format!("module.exports = {{ apps: [\n{}\n] }};\n", apps.join(",\n")),
        )
        .unwrap();
        path.display().to_string()
    }
}

/// The daemon's log lines about `app` from byte `from` on.
fn app_log(d: &Daemon, app: &str, from: usize) -> String {
    let prefix = format!("app {app}: ");
    d.log()[from..]
        .lines()
        .filter(|l| l.contains(&prefix))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_server_without_reuse_port_reloads_as_a_restart_and_then_only_the_new_version_answers() {
    need!(Need::Python);
    let d = Daemon::new();
    let mut apps = Apps::new();
    let port = apps.app("py", "python-server.py", 2, "");
    let file = apps.write("VERSION: \"1\"");
    d.ok(&["start", &file]);
    let old = d.wait_online("py", 2);
    for slot in 0..2 {
        wait_version(port + slot, "1");
    }
    let from = d.log().len();
    let file = apps.write("VERSION: \"2\"");
    d.ok(&["reload", &file]);
    let log = app_log(&d, "py", from);
    // Said as it is, with the way to a zero-downtime reload.
    assert_eq!(
        log.matches("reload is a restart, one worker at a time")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("without SO_REUSEPORT"), "{log}");
    assert!(
        log.contains("--listen") && log.contains("reusePort"),
        "{log}"
    );
    assert!(
        log.contains("restarting worker 0") && log.contains("restarting worker 1"),
        "{log}"
    );
    assert!(!log.contains(pat::RELOAD_ABORTED), "{log}");
    // The reload answered once done: only the new version answers, on both ports.
    for slot in 0..2 {
        assert_eq!(
            versions(port + slot, 20),
            BTreeSet::from(["2".to_string()]),
            "worker {slot}"
        );
    }
    let new = d.wait_online("py", 2);
    for pid in &old {
        assert!(
            !new.contains(pid) && !process_alive(*pid),
            "old pid {pid} is gone"
        );
    }
    // Whoever reloads the app by name is told in the answer too.
    let said = d.ok(&["reload", "py"]);
    assert!(
        said.contains("reloaded py")
            && said.contains("reload is a restart, one worker at a time")
            && said.contains("--listen"),
        "{said}"
    );
}

#[test]
fn a_new_version_that_cannot_start_is_reported_and_the_app_keeps_serving() {
    need!(Need::Python, Need::Runtime("bun"));
    let d = Daemon::new();
    let mut apps = Apps::new();
    let bun = runtime_bin("bun").display().to_string();
    let py = apps.app("py", "python-server.py", 2, "");
    let bun_port = apps.app("bun", "bun-server.ts", 2, &format!("interpreter: {bun:?},"));
    let file = apps.write("VERSION: \"1\"");
    d.ok(&["start", &file]);
    let bun_pids = d.wait_online("bun", 2);
    d.wait_online("py", 2);
    for port in [py, py + 1, bun_port] {
        wait_version(port, "1");
    }
    let file = apps.write("VERSION: \"2\", FAIL_AT_START: \"1\"");

    // Stop-first: the first worker is down, its successor fails; the
    // reload says why and the other worker serves the old version.
    let err = d.fails(&["reload", &file, "--only", "py"], 1);
    assert!(
        err.contains(
            "py: the reload was aborted at worker 0: its replacement exited with code 1 before it was ready"
        ),
        "{err}"
    );
    assert_eq!(versions(py + 1, 10), BTreeSet::from(["1".to_string()]));

    // Start-first: both old workers keep serving the old version.
    let err = d.fails(&["reload", &file, "--only", "bun"], 1);
    assert!(
        err.contains("the reload was aborted at worker 0")
            && err.contains("the old worker keeps serving"),
        "{err}"
    );
    let answers: BTreeSet<(i32, String)> = (0..40)
        .map(|_| answer(bun_port).expect("bun serves"))
        .collect();
    let answered: BTreeSet<i32> = answers.iter().map(|(p, _)| *p).collect();
    assert!(answered.is_subset(&set_of(&bun_pids)), "{answers:?}");
    assert!(answers.iter().all(|(_, v)| v == "1"), "{answers:?}");

    // The fixed version, applied by starting the file again, brings every
    // slot back, the one the failed restart left empty too.
    let file = apps.write("VERSION: \"3\"");
    d.ok(&["start", &file]);
    d.wait_online("py", 2);
    d.wait_online("bun", 2);
    for port in [py, py + 1, bun_port] {
        wait_version(port, "3");
        assert_eq!(
            versions(port, 10),
            BTreeSet::from(["3".to_string()]),
            "port {port}"
        );
    }
}

#[test]
fn starting_a_file_again_with_a_changed_env_reaches_every_instance() {
    need!(Need::Python, Need::Node, Need::Runtime("bun"));
    let d = Daemon::new();
    let mut apps = Apps::new();
    let bun = runtime_bin("bun").display().to_string();
    let py = apps.app("py", "python-server.py", 2, "");
    let bun_port = apps.app("bun", "bun-server.ts", 2, &format!("interpreter: {bun:?},"));
    // Node under herd's cluster primary, binding alone (`exclusive: true`),
    // and in pm2's fork mode; each says 'ready' once it listens.
    let node = apps.app("node", "node-own-port.js", 2, "wait_ready: true,");
    let fork = apps.app(
        "fork",
        "node-own-port.js",
        1,
        "exec_mode: \"fork\", wait_ready: true,",
    );
    let file = apps.write("VERSION: \"1\"");
    d.ok(&["start", &file]);
    let names = [("py", 2), ("bun", 2), ("node", 2), ("fork", 1)];
    for (name, n) in names {
        d.wait_online(name, n);
    }
    for port in [py, py + 1, bun_port, node, node + 1, fork] {
        wait_version(port, "1");
    }
    let from = d.log().len();
    let file = apps.write("VERSION: \"2\"");
    d.ok(&["start", &file]);
    for (name, n) in names {
        d.wait_online(name, n);
        for slot in 0..n {
            let env = d.ok(&["env", &format!("{name}:{slot}")]);
            assert!(
                env.lines().any(|l| l == "VERSION: 2"),
                "{name}:{slot}:\n{env}"
            );
        }
    }
    for port in [py, py + 1, bun_port, node, node + 1, fork] {
        assert_eq!(
            versions(port, 10),
            BTreeSet::from(["2".to_string()]),
            "port {port}"
        );
    }
    // The servers that bind without SO_REUSEPORT were restarted (and said
    // so); Bun's reusePort socket got a new worker beside the old.
    assert!(app_log(&d, "py", from).contains("reload is a restart"));
    assert!(app_log(&d, "node", from).contains("reload is a restart"));
    let bun_log = app_log(&d, "bun", from);
    assert!(!bun_log.contains("reload is a restart"), "{bun_log}");
    assert!(bun_log.contains(pat::RELOAD_FINISHED), "{bun_log}");
}

/// `--watch` reloads through the same choice as `herd reload`: an edit to a
/// server that binds its own port without SO_REUSEPORT restarts it (and
/// says so) instead of aborting with the old code left running.
#[test]
fn a_watch_reload_of_a_server_without_reuse_port_is_a_restart() {
    need!(Need::Python);
    let dir = TempDir::new("reload-watch");
    std::fs::copy(runtimes().join("python-server.py"), dir.join("server.py")).unwrap();
    std::fs::write(dir.join("version"), "1\n").unwrap();
    let port = free_port();
    let h = Herd::spawn(
        "herd",
        herd_bin(),
        &[
            "run",
            "-i",
            "1",
            "--watch",
            "--cwd",
            dir.path().to_str().unwrap(),
            "--",
            "python3",
            "server.py",
        ],
        &[("PORT", &port.to_string()), ("VERSION", "1")],
    );
    let online = h.wait_online(0, 1, START);
    h.wait_ready(&online, START);
    h.wait_stderr_after(0, "watch: watching {} folder(s) for changes", START);
    let (old, _) = answer(port).expect("it serves");
    let mark = h.mark(Stream::Stderr);
    std::fs::write(dir.join("version"), "2\n").unwrap();
    h.wait_stderr_after(mark, pat::RELOAD_FINISHED, RELOAD);
    let log = h.stderr_text();
    assert!(log.contains("watch: version changed"), "{log}");
    assert!(
        log.contains("reload is a restart, one worker at a time") && log.contains("--listen"),
        "{log}"
    );
    assert!(!log.contains(pat::RELOAD_ABORTED), "{log}");
    let mut now = None;
    let moved = wait_until(START, || {
        now = answer(port).ok().map(|(pid, _)| pid);
        now.is_some_and(|pid| pid != old)
    });
    assert!(moved, "a new process serves: {now:?} (old {old})");
    assert!(!process_alive(old), "the old one is gone");
}
