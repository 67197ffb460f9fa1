//! The library without herd: the fixture run by hand binds its fallback
//! address itself, answers HTTP, and its `Worker::shutdown()` resolves on
//! SIGTERM/SIGINT after which in-flight requests still finish.

use std::thread;
use std::time::Duration;

use herd_testkit::*;

const T: Duration = Duration::from_secs(10);

fn standalone(addr: &str) -> Herd {
    let p = Herd::spawn(
        "fixture",
        worker_bin(),
        &fixture_args(&["--addr", addr]),
        &[],
    );
    p.expect_line(Stream::Stdout, 0, "fixture serving", T);
    p
}

#[test]
fn standalone_binds_its_fallback_address_and_answers_http() {
    let _s = serial();
    let addr = free_addr();
    let mut p = standalone(&addr);
    let (i, caps) = p.expect_line(Stream::Stdout, 0, "fixture serving id=none pid={} ", T);
    assert_eq!(caps[0], p.pid().to_string());
    let line = &p.lines(Stream::Stdout)[i];
    assert!(
        line.contains("source=Bound"),
        "not under herd the listener must bind the fallback itself (Source::Bound): {line}"
    );
    assert!(line.contains(&format!("addr={addr}")), "{line}");

    let r = wait_http(&addr, "/", T);
    let body = r.json();
    assert_eq!(body["pid"], p.pid());
    assert!(
        body["id"].is_null(),
        "Worker::id() is None standalone: {body}"
    );
    assert_eq!(body["source"], "Bound");
    assert_eq!(http_request(&addr, "/nope", T).unwrap().status, 404);

    // No primary: the message loop ends at once, and sending does nothing.
    p.expect_line(Stream::Stdout, 0, "channel closed", T);
    p.assert_running();
}

#[test]
fn standalone_fallback_in_use_is_a_clear_error() {
    let _s = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut p = Herd::spawn(
        "fixture",
        worker_bin(),
        &fixture_args(&["--addr", &addr]),
        &[],
    );
    let status = p.wait_exit(T);
    assert_eq!(status.code(), Some(3), "{}", p.output());
    let err = p.lines(Stream::Stderr).join("\n");
    assert!(
        err.contains(&format!("cannot listen on {addr}")),
        "the error names the address: {err}"
    );
}

/// SIGTERM and SIGINT both resolve `Worker::shutdown()`: the fixture stops
/// accepting, finishes the slow request it is serving, and exits 0.
#[test]
fn standalone_signals_resolve_shutdown_and_in_flight_requests_finish() {
    let _s = serial();
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let addr = free_addr();
        let mut p = standalone(&addr);
        let slow = {
            let addr = addr.clone();
            thread::spawn(move || http_request(&addr, "/slow?ms=700", Duration::from_secs(10)))
        };
        p.expect_line(Stream::Stdout, 0, "slow request started", T);
        p.signal(sig);
        p.expect_line(Stream::Stdout, 0, "fixture shutting down {*}in_flight=1", T);
        let r = slow
            .join()
            .unwrap()
            .expect("the in-flight request is answered");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["slept_ms"], 700);
        let status = p.wait_exit(T);
        assert_eq!(status.code(), Some(0), "{sig}: {}", p.output());
        p.expect_line(Stream::Stdout, 0, "fixture exiting", T);
        // It stopped accepting: nothing listens there any more.
        assert!(http_request(&addr, "/", Duration::from_secs(1)).is_err());
    }
}

#[test]
fn roles_outside_herd() {
    assert!(herd_cluster::is_primary());
    assert!(!herd_cluster::is_worker());
}

/// A `unix:PATH` fallback: standalone, the listener binds that Unix socket.
#[test]
fn standalone_binds_a_unix_fallback() {
    use std::io::{Read, Write};
    let _s = serial();
    let dir = std::env::temp_dir().join(format!("herd-cluster-standalone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("web.sock");
    let addr = format!("unix:{}", sock.display());
    let mut p = standalone(&addr);
    let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("it listens on the path");
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let body: serde_json::Value =
        serde_json::from_str(raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)).unwrap();
    assert_eq!(body["pid"], p.pid());
    assert_eq!(body["source"], "Bound");
    p.assert_running();
    let _ = std::fs::remove_dir_all(&dir);
}
