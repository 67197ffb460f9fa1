//! The axum example (`examples/axum.rs`, feature `axum`): one binary that is
//! its own round-robin primary with two axum workers.
//! `cargo test -p herd-cluster --features axum --test it axum_example::`.

#![cfg(feature = "axum")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use herd_testkit::*;

const T: Duration = Duration::from_secs(10);

/// `<target>/<profile>/examples/axum`, built first (`cargo test` does not
/// build examples when a `--test` is named); a failed build fails the test.
fn example() -> PathBuf {
    example_bin("axum")
}

/// "hello from worker Some(0), pid 1234" → (id, pid)
fn who(body: &str) -> (String, i32) {
    let c = match_pat("hello from worker {*}, pid {}", body).unwrap_or_else(|| panic!("{body:?}"));
    let id = body
        .trim_start_matches("hello from worker ")
        .split(',')
        .next()
        .unwrap()
        .to_string();
    (id, c[0].parse().unwrap())
}

#[test]
fn axum_example_round_robin_cluster() {
    let _s = serial();
    let bin = example();
    let addr = free_addr();
    let no_args: [&str; 0] = [];
    let mut p = Herd::spawn("axum", &bin, &no_args, &[("ADDR", &addr)]);
    p.expect_line(
        Stream::Stderr,
        0,
        &format!("herd: listening on {addr} (web), balance round-robin"),
        T,
    );
    let online = p.wait_online(0, 2, T);
    wait_http(&addr, "/", T);
    let mut counts: BTreeMap<(String, i32), usize> = BTreeMap::new();
    for _ in 0..200 {
        let r = http_request(&addr, "/", T).expect("answer");
        assert_eq!(r.status, 200);
        *counts.entry(who(&r.body)).or_default() += 1;
    }
    eprintln!("  counts: {counts:?}");
    let expected: BTreeMap<(String, i32), ()> = online
        .iter()
        .map(|(slot, pid)| ((format!("Some({slot})"), *pid), ()))
        .collect();
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "each worker answers with its id and pid"
    );
    for (w, n) in &counts {
        assert!((85..=115).contains(n), "{w:?} took {n} of 200: {counts:?}");
    }
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(T).code(), Some(0), "{}", p.output());
    assert!(
        wait_until(Duration::from_secs(2), || p.live_workers().is_empty()),
        "workers left: {:?}",
        p.live_workers()
    );
}

#[test]
fn axum_example_standalone() {
    let _s = serial();
    let bin = example();
    let addr = free_addr();
    let no_args: [&str; 0] = [];
    let mut p = Herd::spawn(
        "axum",
        &bin,
        &no_args,
        &[("ADDR", &addr), ("AXUM_STANDALONE", "1")],
    );
    let r = wait_http(&addr, "/", T);
    assert_eq!(who(&r.body), ("None".to_string(), p.pid()));
    p.signal(Signal::SIGINT);
    assert_eq!(p.wait_exit(T).code(), Some(0), "{}", p.output());
}
