//! The embedded primary: the fixture is its own cluster (`Primary::run()`
//! with `--primary N`, `Primary::start()` with `--events N`), re-executing
//! itself as the workers.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use herd_testkit::*;

const T: Duration = Duration::from_secs(10);

/// `fixture --primary N --addr ADDR EXTRA`, with both workers serving.
fn cluster(addr: &str, n: usize, extra: &[&str]) -> (Herd, BTreeMap<usize, i32>) {
    let n_text = n.to_string();
    let mut args = fixture_args(&["--primary", &n_text, "--addr", addr]);
    args.extend_from_slice(extra);
    let p = Herd::spawn("primary", worker_bin(), &args, &[]);
    let online = p.wait_online(0, n, T);
    p.wait_serving(online.values().copied(), T);
    p.wait_ready(&online, T);
    (p, online)
}

fn pid_set(m: &BTreeMap<usize, i32>) -> BTreeSet<i32> {
    m.values().copied().collect()
}

fn kill(pid: i32, sig: Signal) {
    eprintln!("  test: {sig} to pid {pid}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

#[test]
fn embedded_primary_starts_workers_restarts_a_killed_one_and_stops_on_sigterm() {
    let _s = serial();
    let addr = free_addr();
    let (mut p, online) = cluster(&addr, 2, &[]);
    p.expect_line(
        Stream::Stderr,
        0,
        &format!("herd: listening on {addr} (web), balance shared"),
        T,
    );
    for (slot, pid) in &online {
        p.expect_line(
            Stream::Stdout,
            0,
            &format!("[{slot}] fixture serving id={slot} pid={pid} source=Inherited"),
            T,
        );
    }
    let want = pid_set(&online);
    assert_eq!(
        pids_answering(&addr, &want, 200),
        want,
        "both workers answer"
    );

    // kill -9 one worker: the primary starts another in its slot.
    let victim = online[&1];
    let mark = p.mark(Stream::Stderr);
    kill(victim, Signal::SIGKILL);
    p.expect_line(
        Stream::Stderr,
        mark,
        &format!("worker 1 (pid {victim}) was killed by SIGKILL"),
        T,
    );
    let fresh = p.wait_online_slot(mark, 1, T);
    assert_ne!(fresh, victim);
    p.wait_serving([fresh], T);
    let want: BTreeSet<i32> = [online[&0], fresh].into();
    assert_eq!(pids_answering(&addr, &want, 200), want);

    // SIGTERM to the primary: a graceful stop, exit 0, no worker left.
    p.signal(Signal::SIGTERM);
    let status = p.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", p.output());
    for pid in [online[&0], fresh] {
        p.expect_line(
            Stream::Stdout,
            0,
            &format!("fixture shutting down pid={pid} "),
            Duration::ZERO,
        );
    }
    p.expect_line(Stream::Stderr, 0, "herd: exiting: stopped", Duration::ZERO);
    assert!(
        wait_until(Duration::from_secs(2), || p.live_workers().is_empty()),
        "workers left: {:?}",
        p.live_workers()
    );
    assert!(http_request(&addr, "/", Duration::from_secs(1)).is_err());
}

/// SIGHUP: a rolling reload under a light fresh-connection load loses no
/// request and ends with new pids; then SIGINT stops it (exit 0).
fn reload_under_load(balance: &str, wait_ready: bool) {
    let _s = serial();
    let addr = free_addr();
    let mut extra = vec!["--balance", balance];
    if wait_ready {
        // Readiness is Worker::ready() (READY=1 on NOTIFY_SOCKET), not a delay.
        extra.push("--wait-ready");
    }
    let (mut p, online) = cluster(&addr, 2, &extra);
    let load = Load::start(&addr, "/", 2, Duration::from_millis(10));
    // The reload happens under load: some requests answered first.
    load.wait_for("20 answers before the reload", T, |ok, _| ok >= 20);
    let mark = p.mark(Stream::Stderr);
    p.signal(Signal::SIGHUP);
    p.expect_line(Stream::Stderr, mark, "herd: reload started", T);
    p.expect_line(
        Stream::Stderr,
        mark,
        "herd: reload finished",
        Duration::from_secs(20),
    );
    let fresh = p.wait_online(mark, 2, T);
    p.wait_serving(fresh.values().copied(), T);
    // The load reaches the new workers too.
    let new = pid_set(&fresh);
    load.wait_for("answers from both new workers", T, |_, pids| {
        new.is_subset(pids)
    });
    let report = load.stop();
    assert!(
        report.failures.is_empty(),
        "{balance}: {} requests failed during the reload: {:?} {:?}\n{}",
        report.failed(),
        report.failures,
        report.samples,
        p.output()
    );
    assert!(report.ok > 20, "the load ran ({} requests)", report.ok);
    let old = pid_set(&online);
    assert!(
        old.is_disjoint(&new),
        "every worker was replaced: {old:?} → {new:?}"
    );
    assert_eq!(
        pids_answering(&addr, &new, 200),
        new,
        "the new workers answer"
    );
    for pid in &old {
        assert!(
            wait_until(T, || group_empty(*pid)),
            "old worker {pid} still runs"
        );
    }
    p.signal(Signal::SIGINT);
    let status = p.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", p.output());
    assert!(
        wait_until(Duration::from_secs(2), || p.live_workers().is_empty()),
        "workers left: {:?}",
        p.live_workers()
    );
}

#[test]
fn embedded_primary_reloads_on_sighup_without_failed_requests_shared() {
    reload_under_load("shared", false);
}

#[test]
fn embedded_primary_reloads_on_sighup_without_failed_requests_round_robin_wait_ready() {
    reload_under_load("round-robin", true);
}

/// `Primary::start()`: the program sees the Event stream and talks to its
/// workers with `PrimaryHandle::send`; workers talk back with `Worker::send`.
#[test]
fn embedded_primary_start_messages_both_ways() {
    let _s = serial();
    let addr = free_addr();
    let mut p = Herd::spawn(
        "primary",
        worker_bin(),
        &fixture_args(&["--events", "2", "--addr", &addr]),
        &[],
    );
    let online = p.wait_online(0, 2, T);
    p.wait_serving(online.values().copied(), T);
    // Worker → primary: Event::Message.
    for (slot, pid) in &online {
        p.expect_line(
            Stream::Stdout,
            0,
            &format!("event message slot={slot} pid={pid} {{\"hello\":{slot},\"pid\":{pid}}}"),
            T,
        );
    }
    // Primary → every worker: Worker::recv, echoed back.
    p.command(r#"send-all {"ping":1}"#);
    for (slot, pid) in &online {
        p.expect_line(
            Stream::Stdout,
            0,
            &format!("[{slot}] fixture pid={pid} got {{\"ping\":1}}"),
            T,
        );
        p.expect_line(
            Stream::Stdout,
            0,
            &format!(
                "event message slot={slot} pid={pid} {{\"echo\":{{\"ping\":1}},\"pid\":{pid}}}"
            ),
            T,
        );
    }
    // Primary → one worker.
    let mark = p.mark(Stream::Stdout);
    p.command(r#"send 1 {"only":1}"#);
    p.expect_line(
        Stream::Stdout,
        mark,
        &format!(
            "event message slot=1 pid={} {{\"echo\":{{\"only\":1}}",
            online[&1]
        ),
        T,
    );
    // A marker to all after it: slot 0's channel is in order, so had it got
    // "only" too, its echo would come before this one.
    p.command(r#"send-all {"marker":2}"#);
    let (i, _) = p.expect_line(
        Stream::Stdout,
        mark,
        &format!(
            "event message slot=0 pid={} {{\"echo\":{{\"marker\":2}}",
            online[&0]
        ),
        T,
    );
    let slot0_only = p.lines(Stream::Stdout)[mark..i]
        .iter()
        .any(|l| l.starts_with("[0]") && l.contains("only"));
    assert!(
        !slot0_only,
        "Target::Slot(1) reached slot 0\n{}",
        p.output()
    );

    // The message "shutdown" to one worker resolves its Worker::shutdown():
    // it exits 0 and, restart always, gets a successor.
    let victim = online[&0];
    let err_mark = p.mark(Stream::Stderr);
    p.command(r#"send 0 "shutdown""#);
    p.expect_line(
        Stream::Stdout,
        mark,
        &format!("fixture shutting down pid={victim} "),
        T,
    );
    p.expect_line(
        Stream::Stderr,
        err_mark,
        &format!("worker 0 (pid {victim}) exited with code 0"),
        T,
    );
    let again = p.wait_online_slot(err_mark, 0, T);
    p.wait_serving([again], T);

    // PrimaryHandle::stop: a graceful stop, then Event::Exit.
    p.command("stop");
    p.expect_line(Stream::Stderr, 0, "herd: exiting: stopped", T);
    let status = p.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", p.output());
    assert!(
        wait_until(Duration::from_secs(2), || p.live_workers().is_empty()),
        "workers left: {:?}",
        p.live_workers()
    );
}

/// Round-robin: 200 fresh connections from one client spread evenly (±15%)
/// over two idle workers.
#[test]
fn round_robin_spreads_fresh_connections_evenly() {
    let _s = serial();
    let addr = free_addr();
    let (_p, online) = cluster(&addr, 2, &["--balance", "round-robin"]);
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    for _ in 0..200 {
        let r = http_request(&addr, "/", T).expect("answer");
        assert_eq!(r.status, 200);
        *counts.entry(r.pid().expect("pid")).or_default() += 1;
    }
    eprintln!("  counts: {counts:?}");
    assert_eq!(
        counts.keys().copied().collect::<BTreeSet<_>>(),
        pid_set(&online)
    );
    for (pid, n) in &counts {
        assert!(
            (85..=115).contains(n),
            "worker {pid} took {n} of 200 connections: {counts:?}"
        );
    }
}

/// Round-robin: a worker whose (single) thread is blocked stops receiving
/// connections; fast requests meanwhile are answered by the other one. At
/// most one connection, handed over before herd could see the worker was
/// stuck, waits for it (herd counts a worker busy once a hand-over is not
/// acknowledged).
#[test]
fn round_robin_skips_a_blocked_worker() {
    let _s = serial();
    let addr = free_addr();
    let (p, online) = cluster(&addr, 2, &["--balance", "round-robin"]);
    const BLOCK_MS: u64 = 2000;
    let started = Instant::now();
    let block = {
        let addr = addr.clone();
        thread::spawn(move || {
            http_request(
                &addr,
                &format!("/block?ms={BLOCK_MS}"),
                Duration::from_secs(20),
            )
        })
    };
    let (_, caps) = p.expect_line(Stream::Stdout, 0, "fixture pid={} blocking for", T);
    let blocked: i32 = caps[0].parse().unwrap();
    let other = *pid_set(&online).iter().find(|&&p| p != blocked).unwrap();

    // Fast requests, each on its own connection and thread, 50 ms apart,
    // all started well within the block.
    let fast: Vec<_> = (0..10)
        .map(|i| {
            let addr = addr.clone();
            thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 50 }));
            let sent = started.elapsed();
            thread::spawn(move || (sent, http_request(&addr, "/", Duration::from_secs(20))))
        })
        .collect();
    let results: Vec<_> = fast.into_iter().map(|h| h.join().unwrap()).collect();
    let block = block
        .join()
        .unwrap()
        .expect("the blocking request is answered");
    assert!(block.json()["blocked_ms"].as_u64().unwrap() >= BLOCK_MS);

    eprintln!(
        "  blocked {blocked}, other {other}: {:?}",
        results
            .iter()
            .map(|(s, r)| (s, r.as_ref().map(|r| (r.pid(), r.elapsed)).ok()))
            .collect::<Vec<_>>()
    );
    let mut stragglers = 0;
    for (sent, r) in &results {
        let r = r.as_ref().expect("every fast request is answered");
        assert_eq!(r.status, 200);
        assert!(
            *sent < Duration::from_millis(BLOCK_MS - 800),
            "the test was too slow to send within the block ({sent:?})"
        );
        if r.pid() == Some(other) {
            assert!(
                r.elapsed < Duration::from_millis(500),
                "the free worker answered slowly ({:?})",
                r.elapsed
            );
        } else {
            assert_eq!(r.pid(), Some(blocked));
            stragglers += 1;
        }
    }
    assert!(
        stragglers <= 1,
        "{stragglers} of {} connections went to the blocked worker: {:?}",
        results.len(),
        results
            .iter()
            .map(|(s, r)| (s, r.as_ref().map(|r| (r.pid(), r.elapsed)).ok()))
            .collect::<Vec<_>>()
    );
}
