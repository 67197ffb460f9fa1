//! The library under `herd run`: the worker inherits herd's listener, knows
//! its id, drains on SIGTERM/SIGINT or the `"shutdown"` message, and its
//! messages reach herd.
//!
//! These need the root package's `herd` binary, built (once per test
//! process) by [`herd_bin`]: a failed build fails them with its error.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use herd_testkit::*;

const T: Duration = Duration::from_secs(10);

/// `herd run OPTS -- fixture cluster FIXTURE_ARGS`.
fn herd_run(opts: &[&str], worker_args: &[&str]) -> Herd {
    let mut args: Vec<&str> = vec!["run"];
    args.extend_from_slice(opts);
    args.push("--");
    args.push(worker_bin());
    args.extend(fixture_args(worker_args));
    Herd::spawn("herd", herd_bin(), &args, &[])
}

/// An address the test holds bound: a fixture that fell back to binding it
/// itself would fail, so a fixture that serves inherited its listener.
fn occupied() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

#[test]
fn under_herd_the_worker_inherits_the_listener_and_knows_its_id() {
    let _s = serial();
    let (_hold, fallback) = occupied();
    let addr = free_addr();
    let listen = format!("web={addr}");
    let mut herd = herd_run(&["-i", "2", "--listen", &listen], &["--addr", &fallback]);
    let online = herd.wait_online(0, 2, T);
    herd.wait_serving(online.values().copied(), T);
    for (slot, pid) in &online {
        let (i, _) = herd.expect_line(
            Stream::Stdout,
            0,
            &format!("[{slot}] fixture serving id={slot} pid={pid} "),
            T,
        );
        let line = &herd.lines(Stream::Stdout)[i];
        assert!(
            line.contains("source=Inherited"),
            "herd's socket at fd 3 (LISTEN_FDS), not the fallback: {line}"
        );
        assert!(line.contains(&format!("addr={addr}")), "{line}");
    }
    let want: BTreeSet<i32> = online.values().copied().collect();
    let seen = pids_answering(&addr, &want, 200);
    assert_eq!(seen, want, "both workers answer on herd's port");
    for pid in &want {
        let r = loop {
            let r = http_request(&addr, "/", T).unwrap();
            if r.pid() == Some(*pid) {
                break r;
            }
        };
        let slot = online.iter().find(|(_, p)| *p == pid).unwrap().0;
        assert_eq!(r.json()["id"], *slot as u64, "Worker::id() is the slot");
        assert_eq!(r.json()["source"], "Inherited");
    }
    herd.assert_running();
}

/// A single unnamed `--listen ADDR` is what `listener("web", ..)` gets.
#[test]
fn under_herd_an_unnamed_listener_serves_any_name() {
    let _s = serial();
    let (_hold, fallback) = occupied();
    let addr = free_addr();
    let herd = herd_run(&["-i", "1", "--listen", &addr], &["--addr", &fallback]);
    let online = herd.wait_online(0, 1, T);
    herd.wait_serving(online.values().copied(), T);
    assert_eq!(wait_http(&addr, "/", T).json()["source"], "Inherited");
}

/// A worker asking for a name herd did not pass is told which names it did.
#[test]
fn under_herd_a_wrong_listener_name_is_a_clear_error() {
    let _s = serial();
    let addr = free_addr();
    let listen = format!("api={addr}");
    let herd = herd_run(
        &["-i", "1", "--listen", &listen, "--restart", "never"],
        &["--addr", &addr, "--name", "web"],
    );
    herd.expect_line(
        Stream::Stderr,
        0,
        "herd passed no listener named 'web' (it passed: api); name it with --listen web=ADDR",
        T,
    );
}

#[test]
fn under_herd_round_robin_hands_connections_to_both_workers() {
    let _s = serial();
    let (_hold, fallback) = occupied();
    let addr = free_addr();
    let listen = format!("web={addr}");
    let mut herd = herd_run(
        &["-i", "2", "--listen", &listen, "--balance", "round-robin"],
        &["--addr", &fallback],
    );
    let online = herd.wait_online(0, 2, T);
    herd.wait_serving(online.values().copied(), T);
    herd.wait_ready(&online, T);
    for slot in online.keys() {
        herd.expect_line(
            Stream::Stdout,
            0,
            &format!("[{slot}] fixture serving {{*}}source=RoundRobin"),
            T,
        );
    }
    let want: BTreeSet<i32> = online.values().copied().collect();
    // Strict turns between two idle workers: four requests reach both.
    let seen = pids_answering(&addr, &want, 4);
    assert_eq!(seen, want);
    herd.assert_running();
}

/// SIGTERM and SIGINT sent to one worker resolve its `shutdown()`: it
/// finishes the request it is serving and exits 0; herd starts another.
#[test]
fn under_herd_a_signalled_worker_drains_and_exits_0() {
    let _s = serial();
    let addr = free_addr();
    let listen = format!("web={addr}");
    let mut herd = herd_run(&["-i", "2", "--listen", &listen], &["--addr", &addr]);
    let online = herd.wait_online(0, 2, T);
    herd.wait_serving(online.values().copied(), T);
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let out_mark = herd.mark(Stream::Stdout);
        let err_mark = herd.mark(Stream::Stderr);
        let slow = {
            let addr = addr.clone();
            thread::spawn(move || http_request(&addr, "/slow?ms=800", Duration::from_secs(10)))
        };
        let (_, caps) = herd.expect_line(
            Stream::Stdout,
            out_mark,
            "fixture pid={} slow request started",
            T,
        );
        let pid: i32 = caps[0].parse().unwrap();
        eprintln!("  test: {sig} to worker pid {pid}");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
        herd.expect_line(
            Stream::Stdout,
            out_mark,
            &format!("fixture shutting down pid={pid} in_flight=1"),
            T,
        );
        let r = slow
            .join()
            .unwrap()
            .expect("the in-flight request is answered");
        assert_eq!((r.status, r.pid()), (200, Some(pid)));
        herd.expect_line(
            Stream::Stderr,
            err_mark,
            &format!("(pid {pid}) exited with code 0"),
            T,
        );
        // herd replaces it (restart: always) and service goes on.
        let (_, c) = herd.expect_line(
            Stream::Stderr,
            err_mark,
            "herd: worker {} online (pid {})",
            T,
        );
        herd.wait_serving([c[1].parse().unwrap()], T);
        wait_http(&addr, "/", T);
    }
    herd.assert_running();
}

/// herd's own stop (SIGINT to herd, which sends its --kill-signal to each
/// worker): in-flight requests finish, herd exits 0, no worker is left.
#[test]
fn under_herd_stop_drains_in_flight_requests() {
    let _s = serial();
    let addr = free_addr();
    let listen = format!("web={addr}");
    let mut herd = herd_run(&["-i", "2", "--listen", &listen], &["--addr", &addr]);
    let online = herd.wait_online(0, 2, T);
    herd.wait_serving(online.values().copied(), T);
    let slow = {
        let addr = addr.clone();
        thread::spawn(move || http_request(&addr, "/slow?ms=800", Duration::from_secs(10)))
    };
    herd.expect_line(Stream::Stdout, 0, "slow request started", T);
    herd.signal(Signal::SIGINT);
    let r = slow
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(r.status, 200);
    let status = herd.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", herd.output());
    for pid in online.values() {
        herd.expect_line(
            Stream::Stderr,
            0,
            &format!("(pid {pid}) stopped: it exited with code 0"),
            T,
        );
    }
    assert!(
        wait_until(Duration::from_secs(2), || herd.live_workers().is_empty()),
        "workers left: {:?}",
        herd.live_workers()
    );
}

/// `--shutdown-with-message`: herd sends the IPC message `"shutdown"`
/// instead of a signal; the worker's `shutdown()` resolves on it.
#[test]
fn under_herd_the_shutdown_message_resolves_shutdown() {
    let _s = serial();
    let addr = free_addr();
    let listen = format!("web={addr}");
    let mut herd = herd_run(
        &[
            "-i",
            "1",
            "--listen",
            &listen,
            "--shutdown-with-message",
            "--kill-timeout",
            "5s",
        ],
        &["--addr", &addr],
    );
    let online = herd.wait_online(0, 1, T);
    let pid = online[&0];
    herd.wait_serving([pid], T);
    let slow = {
        let addr = addr.clone();
        thread::spawn(move || http_request(&addr, "/slow?ms=600", Duration::from_secs(10)))
    };
    herd.expect_line(Stream::Stdout, 0, "slow request started", T);
    let asked = Instant::now();
    herd.signal(Signal::SIGTERM);
    herd.expect_line(Stream::Stdout, 0, "fixture shutting down {*}in_flight=1", T);
    assert_eq!(slow.join().unwrap().expect("answered").status, 200);
    let status = herd.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", herd.output());
    herd.expect_line(
        Stream::Stderr,
        0,
        &format!("(pid {pid}) stopped: it exited with code 0"),
        T,
    );
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "it stopped on the message, not at the 5 s kill timeout ({:?})",
        asked.elapsed()
    );
}

/// A `"shutdown"` that arrives before the worker first awaits `shutdown()`
/// (here: during its start-up) must not be lost: a later `shutdown()`
/// resolves at once. Node's `process.on('message')` / pm2 semantics: a stop
/// request during start-up still stops the worker gracefully.
#[test]
fn under_herd_a_shutdown_message_during_startup_is_not_lost() {
    let _s = serial();
    let addr = free_addr();
    let listen = format!("web={addr}");
    let mut herd = herd_run(
        &[
            "-i",
            "1",
            "--listen",
            &listen,
            "--shutdown-with-message",
            "--kill-timeout",
            "3s",
        ],
        &["--addr", &addr, "--startup-ms", "1500"],
    );
    let online = herd.wait_online(0, 1, T);
    let pid = online[&0];
    herd.expect_line(Stream::Stdout, 0, "[0] fixture pid={} starting up", T);
    herd.signal(Signal::SIGTERM);
    // shutdown(), first awaited after start-up, must resolve.
    let status = herd.wait_exit(Duration::from_secs(15));
    let out = herd.output();
    // (The fixture's recv() loop prints the message too, which shows it did arrive.)
    let arrived = herd
        .wait_any_line(Stream::Stdout, 0, "got \"shutdown\"", Duration::ZERO)
        .is_some();
    assert!(
        herd.wait_any_line(Stream::Stdout, 0, "fixture shutting down", Duration::ZERO)
            .is_some(),
        "Worker::shutdown() never resolved: the \"shutdown\" message sent during start-up \
         was lost (it reached the worker's recv(): {arrived})\n{out}"
    );
    herd.expect_line(
        Stream::Stderr,
        0,
        &format!("(pid {pid}) stopped: it exited with code 0"),
        Duration::ZERO,
    );
    assert_eq!(status.code(), Some(0), "{out}");
}

/// `Worker::send` → herd prints `herd: worker N sent {...}`.
#[test]
fn under_herd_worker_messages_reach_herd() {
    let _s = serial();
    let addr = free_addr();
    let listen = format!("web={addr}");
    let herd = herd_run(&["-i", "2", "--listen", &listen], &["--addr", &addr]);
    let online = herd.wait_online(0, 2, T);
    for (slot, pid) in &online {
        herd.expect_line(
            Stream::Stderr,
            0,
            &format!("herd: worker {slot} sent {{\"hello\":{slot},\"pid\":{pid}}}"),
            T,
        );
    }
}

/// Round-robin: connections herd handed over and the worker acknowledged
/// as accepted, but that its app had not taken from the listener yet when
/// it stopped (shutdown, listener dropped), must not be lost. Here the only
/// worker is busy (`/block`) while three connections are handed to it, and
/// is told to stop (SIGTERM) meanwhile; when it wakes it shuts down.
#[test]
fn under_herd_round_robin_connections_queued_at_shutdown_are_not_lost() {
    let _s = serial();
    let addr = free_addr();
    let listen = format!("web={addr}");
    let herd = herd_run(
        &["-i", "1", "--listen", &listen, "--balance", "round-robin"],
        &["--addr", &addr],
    );
    let online = herd.wait_online(0, 1, T);
    herd.wait_serving(online.values().copied(), T);
    herd.wait_ready(&online, T);
    let pid = online[&0];
    let block = {
        let addr = addr.clone();
        thread::spawn(move || http_request(&addr, "/block?ms=1500", Duration::from_secs(20)))
    };
    herd.expect_line(Stream::Stdout, 0, "blocking for", T);
    let fast: Vec<_> = (0..3)
        .map(|_| {
            let addr = addr.clone();
            thread::spawn(move || http_request(&addr, "/", Duration::from_secs(20)))
        })
        .collect();
    // Wait until herd has accepted all four connections (the listener's
    // accept queue is empty): herd hands a connection over as it accepts it.
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(
        wait_until(T, || {
            let st = tcp_port_state(port);
            st.established >= 4 && st.accept_queue == Some(0)
        }),
        "herd did not accept the 4 connections: {:?}\n{}",
        tcp_port_state(port),
        herd.output()
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert_eq!(
        block.join().unwrap().expect("the /block request").status,
        200
    );
    let results: Vec<_> = fast.into_iter().map(|h| h.join().unwrap()).collect();
    let lost: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{:?}: {e}", e.kind())))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of 3 connections were lost (handed over, acknowledged as accepted, then dropped with the listener): {lost:?}\n{}",
        lost.len(),
        herd.output()
    );
    for r in results {
        assert_eq!(r.unwrap().status, 200);
    }
}

/// With `--shutdown-with-message` herd stops workers with the message, not
/// a signal: its "stopping" line must say so.
#[test]
fn under_herd_the_stopping_line_names_the_shutdown_message() {
    let _s = serial();
    let addr = free_addr();
    let listen = format!("web={addr}");
    let mut herd = herd_run(
        &["-i", "1", "--listen", &listen, "--shutdown-with-message"],
        &["--addr", &addr],
    );
    let online = herd.wait_online(0, 1, T);
    herd.wait_serving(online.values().copied(), T);
    herd.signal(Signal::SIGTERM);
    let (i, _) = herd.expect_line(Stream::Stderr, 0, "herd: stopping 1 worker(s)", T);
    let line = herd.lines(Stream::Stderr)[i].clone();
    assert_eq!(herd.wait_exit(T).code(), Some(0));
    assert!(
        !line.contains("SIGINT") && line.contains("shutdown"),
        "herd sent the message \"shutdown\", not SIGINT: {line}"
    );
}

/// One GET over a Unix socket: the fixture's JSON body.
fn unix_get(path: &std::path::Path) -> std::io::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(T))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}: {text:?}")))
}

/// `--listen web=unix:PATH`: the workers serve on herd's Unix socket, both
/// when they inherit it and when herd hands its connections over.
fn unix_listener(balance: &str, source: &str) {
    let _s = serial();
    let (_hold, fallback) = occupied();
    let dir = std::env::temp_dir().join(format!(
        "herd-cluster-unix-{balance}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("web.sock");
    let listen = format!("web=unix:{}", sock.display());
    let mut herd = herd_run(
        &["-i", "2", "--listen", &listen, "--balance", balance],
        &["--addr", &fallback],
    );
    let online = herd.wait_online(0, 2, T);
    herd.wait_serving(online.values().copied(), T);
    for slot in online.keys() {
        herd.expect_line(
            Stream::Stdout,
            0,
            &format!("[{slot}] fixture serving {{*}}source={source}"),
            T,
        );
    }
    let want: BTreeSet<i32> = online.values().copied().collect();
    let seen: BTreeSet<i32> = answers_from(&want, 200, || {
        let body = unix_get(&sock).expect("the worker answers on the Unix socket");
        assert_eq!(body["source"], source);
        Some((body["pid"].as_i64().unwrap() as i32, ()))
    })
    .into_keys()
    .collect();
    assert_eq!(seen, want, "both workers answer on {}", sock.display());
    herd.assert_running();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn under_herd_an_inherited_unix_listener_serves() {
    unix_listener("shared", "Inherited");
}

#[test]
fn under_herd_round_robin_hands_unix_connections_over() {
    unix_listener("round-robin", "RoundRobin");
}
