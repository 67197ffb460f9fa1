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
//!   daemon brings it back within its backoff; its own clients are not
//!   refused meanwhile (the daemon holds its sockets), and a stop or a
//!   delete still closes its port at once;
//! - a supervisor of another protocol version is named, with what to do;
//! - the binary is linked so that every supervisor shares its read-only data.
//!
//! Every daemon and supervisor a test starts is ended when it ends (the
//! testkit's `Daemon`, by the pids in its home). The two apps are
//! `two_apps`'.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use herd_testkit::*;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::Value;

use crate::two_apps::{check_ticks, grandchildren, load, out_log, start_both, supervisor_pid};

const WAIT: Duration = Duration::from_secs(30);

/// `adopted N running app(s) in X ms` from the last daemon's log: (N, X).
fn adoption(log: &str) -> Option<(usize, f64)> {
    let line = log.lines().rev().find(|l| l.contains("herd: adopted "))?;
    let rest = &line[line.find("herd: adopted ")? + "herd: adopted ".len()..];
    let mut words = rest.split_whitespace();
    let n = words.next()?.parse().ok()?;
    let ms = words.find_map(|w| w.parse::<f64>().ok())?;
    Some((n, ms))
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

/// Fresh-connection load on `app` while `replace` replaces its workers
/// (they must all be new afterwards): no client refused or left hanging.
fn no_client_refused_while(d: &Daemon, app: &str, addr: &str, replace: impl FnOnce()) {
    let before = worker_pids(&d.app(app));
    let l = load(addr);
    l.wait_for(&format!("{app} answers"), WAIT, |n, _| n >= 50);
    replace();
    let after = worker_pids(&d.app(app));
    assert!(
        after.len() == before.len() && after.iter().all(|p| !before.contains(p)),
        "{app}: workers {before:?} -> {after:?}"
    );
    let seen = l.ok_so_far();
    l.wait_for(&format!("{app} answers again"), WAIT, |n, _| {
        n >= seen + 100
    });
    let report = l.stop();
    eprintln!(
        "  {app}: {} answered, failures {:?}",
        report.ok, report.failures
    );
    for kind in ["ConnectionRefused", "TimedOut", "WouldBlock"] {
        assert_eq!(report.count(kind), 0, "{app}: {report:?}");
    }
}

/// A dead supervisor's sockets stay open in the daemon's copies: clients
/// who connect while its successor starts wait in the socket's queue and
/// are served; none is refused (before the copies: 19 refused in the 0.2 s
/// a quiet machine took). Requests in flight on the killed app's workers
/// may still fail, never by a refusal or a hang. A stop and a delete close
/// the port at once, the copies included.
#[test]
fn kill_9_of_a_supervisor_refuses_no_connection_its_sockets_wait_in_the_daemon() {
    need!(Need::Node, Need::Python);
    let d = Daemon::new();
    let dir = TempDir::new("sup-sockets");
    let (rr_addr, py_addr) = start_both(&d, dir.path());
    d.wait_online("rr", 2);
    d.wait_online("py", 2);
    let port = |addr: &str| addr.rsplit_once(':').unwrap().1.parse::<u16>().unwrap();
    let daemon = d.daemon_pid().expect("a daemon runs");
    for (app, addr) in [("rr", &rr_addr), ("py", &py_addr)] {
        // The daemon holds a copy of the app's listening socket.
        assert!(
            wait_until(WAIT, || holders_of_listening_port(port(addr), &[daemon])
                == [daemon]),
            "the daemon holds no copy of {app}'s socket on {addr}"
        );
        let victim = supervisor_pid(&d, app);
        no_client_refused_while(&d, app, addr, || {
            kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
            assert!(
                wait_until(WAIT, || {
                    let now = d.app(app);
                    now["status"] == "online"
                        && worker_pids(&now).len() == 2
                        && supervisor_pid(&d, app) != victim
                }),
                "{app} is not back:\n{}",
                d.log()
            );
        });
        // The new supervisor took the held socket (it did not bind a new one).
        let sup = supervisor_pid(&d, app);
        assert_eq!(
            holders_of_listening_port(port(addr), &[daemon, sup]),
            [daemon, sup],
            "{app}: one socket, held by the daemon and the new supervisor"
        );
    }
    // A stop closes the port at once, the daemon's copy too.
    d.ok(&["stop", "py"]);
    let refused = |addr: &str| {
        std::net::TcpStream::connect(addr)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    };
    assert!(
        refused(&py_addr),
        "py's port still takes connections after its stop"
    );
    assert!(holders_of_listening_port(port(&py_addr), &[daemon]).is_empty());
    d.ok(&["delete", "rr"]);
    assert!(
        refused(&rr_addr),
        "rr's port still takes connections after its delete"
    );
}

/// `herd restart` (stop, then start) keeps the app's listening sockets
/// open across it: clients wait in their queues for the new workers, none
/// is refused (pm2's restart, and herd's before, refused them until the
/// first new worker listened). A stop then closes the port as always.
#[test]
fn a_restart_refuses_no_connection_the_sockets_stay_open_across_it() {
    need!(Need::Node, Need::Python);
    let d = Daemon::new();
    let dir = TempDir::new("restart-sockets");
    let (rr_addr, py_addr) = start_both(&d, dir.path());
    d.wait_online("rr", 2);
    d.wait_online("py", 2);
    for (app, addr) in [("rr", &rr_addr), ("py", &py_addr)] {
        no_client_refused_while(&d, app, addr, || {
            assert!(d.ok(&["restart", app]).contains(app));
        });
    }
    d.ok(&["stop", "rr"]);
    let refused = std::net::TcpStream::connect(&rr_addr)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    assert!(refused, "rr's port still takes connections after its stop");
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

/// Every app's supervisor is the same binary, so its read-only data must be
/// shared, not copied: herd is linked position-dependent (`build.rs`), whose
/// data the loader does not rewrite at start. A PIE binary costs about 220 kB
/// more per app (unless built with `HERD_PIE=1`, which asks for one).
/// `HERD_STATIC=1` says the binary under test was linked statically (`cargo
/// build-static`): it must then have no program interpreter either (no
/// loader, no shared C library whose relocated data each process copies).
#[test]
fn the_herd_binary_is_linked_position_dependent_so_its_data_is_shared_by_every_supervisor() {
    let header = std::fs::read(herd_bin()).expect("read the herd binary");
    assert_eq!(
        &header[..4],
        b"\x7fELF",
        "{} is not an ELF file",
        herd_bin()
    );
    // e_type, little-endian on every target herd builds for.
    let e_type = u16::from_le_bytes([header[16], header[17]]);
    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    let pie_asked = std::env::var_os("HERD_PIE").is_some_and(|v| v == "1");
    let expected = if pie_asked { ET_DYN } else { ET_EXEC };
    assert_eq!(
        e_type,
        expected,
        "{}: ELF type {e_type} (2 = position-dependent, 3 = PIE)",
        herd_bin()
    );
    // The program headers: e_phoff, e_phentsize, e_phnum (64-bit ELF).
    let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(header[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    let interpreted = (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(header[at..at + 4].try_into().unwrap()) == PT_INTERP
    });
    let static_asked = std::env::var_os("HERD_STATIC").is_some_and(|v| v == "1");
    assert_eq!(
        interpreted,
        !static_asked,
        "{}: a program interpreter {} (HERD_STATIC={})",
        herd_bin(),
        if interpreted {
            "is named"
        } else {
            "is missing"
        },
        static_asked as u8
    );
}

/// A supervisor runs glibc's allocator without per-thread caches (set by the
/// daemon in its environment: glibc reads it at start only), and its workers
/// never see that: they get the operator's tunables, as they were.
#[test]
fn a_supervisor_runs_without_malloc_caches_and_its_workers_get_the_tunables_as_they_were() {
    const OPERATORS: &str = "glibc.malloc.arena_max=2";
    let d = Daemon::unstarted();
    // The daemon starts with the operator's own tunables, and the CLI that
    // starts the app has them too (its environment goes with the app).
    for args in [
        &["ping"][..],
        &["start", "--name", "web", "--listen", ANY, worker_bin()],
    ] {
        let out = d
            .command(args)
            .env("GLIBC_TUNABLES", OPERATORS)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "herd {args:?}: {err}");
    }
    let workers = d.wait_online("web", 1);
    let environ = |pid: i32| std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    // glibc may cut its copy of a many-item GLIBC_TUNABLES at the colons
    // (it reads a copy): the supervisor's starts with the operator's items,
    // then herd's, after a colon or a NUL.
    let supervisor = environ(supervisor_pid(&d, "web"));
    let has = |needle: String| {
        supervisor
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    assert!(
        [":", "\0"].iter().any(|sep| has(format!(
            "GLIBC_TUNABLES={OPERATORS}{sep}glibc.malloc.tcache_count=0\0"
        ))),
        "the supervisor's environment: {}",
        String::from_utf8_lossy(&supervisor)
    );
    // A worker gets the operator's, and nothing of herd's.
    let worker: Vec<String> = environ(workers[0])
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| v.contains("GLIBC_TUNABLES") || v.contains("tcache"))
        .collect();
    assert_eq!(
        worker,
        [format!("GLIBC_TUNABLES={OPERATORS}")],
        "a worker's"
    );
}
