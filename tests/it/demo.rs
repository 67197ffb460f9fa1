//! Integration tests of `herd demo`: the herd binary as the embedded primary
//! of its own demo workers (the same binary, re-executed), over real
//! sockets and signals. Every wait polls with a deadline; `herd_testkit::Herd`
//! cleans up the primary and every worker's process group even on panic.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use herd_testkit::*;

/// Generous bounds: debug builds on a shared 2-CPU machine.
const START: Duration = Duration::from_secs(15);
const T: Duration = Duration::from_secs(10);

fn demo(workers: usize, addr: &str, extra: &[&str]) -> (Herd, BTreeMap<usize, i32>) {
    let n = workers.to_string();
    let mut args = vec!["demo", "-i", &n, "--listen", addr];
    args.extend_from_slice(extra);
    let h = Herd::start(&args);
    let online = h.wait_online(0, workers, START);
    // `online` means exec'd; answering means serving.
    let want: BTreeSet<i32> = online.values().copied().collect();
    let seen = demo_pids(addr, &want, usize::MAX, START);
    assert_eq!(seen, want, "every demo worker answers\n{}", h.stderr_text());
    (h, online)
}

/// A demo answer: status, headers, raw body and how long it took.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    elapsed: Duration,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn pid(&self) -> i32 {
        self.header("x-worker-pid")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no X-Worker-Pid: {:?}", self.headers))
    }
}

/// One GET on a fresh connection, body as bytes (`/flip` is a PNG).
fn get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<Answer> {
    let start = Instant::now();
    let sa = addr.parse().expect("addr");
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("short answer ({} bytes)", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
        elapsed: start.elapsed(),
    })
}

/// Fresh-connection GET / until the answering pids cover `want` (or the
/// attempts or the time run out).
fn demo_pids(addr: &str, want: &BTreeSet<i32>, attempts: usize, within: Duration) -> BTreeSet<i32> {
    // With the shared balance the kernel picks the worker, and on a busy
    // machine one can win a long run of sequential accepts (CI saw it): asked
    // from 4 threads at once, so that one worker is busy while another
    // connection waits.
    let deadline = Instant::now() + within;
    let seen = std::sync::Mutex::new(BTreeSet::new());
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let done = || {
        want.is_subset(&seen.lock().unwrap())
            || tries.load(std::sync::atomic::Ordering::SeqCst) >= attempts
            || Instant::now() >= deadline
    };
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !done() {
                    match get(addr, "/", Duration::from_secs(3)) {
                        Ok(a) if a.status == 200 => {
                            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            seen.lock().unwrap().insert(a.pid());
                        }
                        // Not listening yet.
                        _ => thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
    });
    seen.into_inner().unwrap()
}

/// `worker 1 (pid 1234) has answered 5 requests` → (id, pid, n)
fn counter(body: &str) -> (String, i32, u64) {
    let c = match_pat("worker {} (pid {}) has answered {} requests", body)
        .unwrap_or_else(|| panic!("unexpected / answer: {body:?}"));
    (c[0].clone(), c[1].parse().unwrap(), c[2].parse().unwrap())
}

fn assert_no_worker_left(h: &Herd) {
    assert!(
        wait_until(Duration::from_secs(3), || h.live_workers().is_empty()),
        "workers left: {:?}",
        h.live_workers()
    );
}

#[test]
fn demo_prints_the_curl_hints() {
    let _s = serial();
    let addr = free_addr();
    let (h, _) = demo(2, &addr, &[]);
    let url = format!("http://{addr}");
    let first = format!("herd demo: 2 workers on {url} (round-robin balance). Try:");
    assert!(
        h.wait_any_line(Stream::Stderr, 0, &first, T).is_some(),
        "{}",
        h.stderr_text()
    );
    let text = h.stderr_text();
    for hint in [
        format!("curl {url}/ "),
        format!("curl {url}/stop "),
        format!("curl {url}/check "),
        format!("curl -o flipped.png {url}/flip "),
        format!("kill -HUP {} ", h.pid()),
    ] {
        assert!(text.contains(&hint), "no hint {hint:?} in:\n{text}");
    }
}

/// `/`: which worker and its own counter; every answer has X-Response-Time.
/// Round-robin takes turns, so each worker's counter goes 1, 2, 3.
#[test]
fn demo_root_names_the_worker_and_counts_its_requests() {
    let _s = serial();
    let addr = free_addr();
    let (h, online) = demo(2, &addr, &[]);
    // The workers already answered `demo()`'s probes: counters start there.
    let mut last: BTreeMap<i32, u64> = BTreeMap::new();
    for _ in 0..6 {
        let a = get(&addr, "/", T).unwrap();
        assert_eq!(a.status, 200);
        let (id, pid, n) = counter(&a.text());
        assert_eq!(a.pid(), pid);
        assert_eq!(a.header("x-worker-id"), Some(id.as_str()));
        assert_eq!(
            online.get(&id.parse::<usize>().unwrap()),
            Some(&pid),
            "id is the slot"
        );
        let rt = a.header("x-response-time").expect("X-Response-Time");
        assert!(
            rt.strip_suffix("ms")
                .is_some_and(|d| d.parse::<u64>().is_ok()),
            "X-Response-Time: {rt}"
        );
        if let Some(prev) = last.get(&pid) {
            assert_eq!(n, prev + 1, "worker {pid}'s own counter moves by one");
        }
        last.insert(pid, n);
    }
    assert_eq!(last.len(), 2, "both workers answered: {last:?}");
    drop(h);
}

/// `/stop`: that worker answers, exits 1, herd starts another in its slot,
/// and the service goes on.
#[test]
fn demo_stop_replaces_the_worker() {
    let _s = serial();
    let addr = free_addr();
    let (h, online) = demo(2, &addr, &[]);
    let mark = h.mark(Stream::Stderr);
    let a = get(&addr, "/stop", T).unwrap();
    assert_eq!(a.status, 200);
    let c = match_pat("worker {} (pid {}) is stopping", &a.text())
        .unwrap_or_else(|| panic!("{:?}", a.text()));
    let (slot, pid): (usize, i32) = (c[0].parse().unwrap(), c[1].parse().unwrap());
    assert_eq!(online[&slot], pid);
    h.wait_stderr_after(
        mark,
        &format!("worker {slot} (pid {pid}) exited with code 1"),
        T,
    );
    let fresh = h.wait_online_slot(mark, slot, T);
    assert_ne!(fresh, pid);
    let other = online[&(1 - slot)];
    let want: BTreeSet<i32> = [other, fresh].into();
    // Round-robin hands connections to the replacement once it is ready
    // (after herd's ready delay): bound this by time, not by attempts.
    assert_eq!(
        demo_pids(&addr, &want, usize::MAX, T),
        want,
        "service continues"
    );
    let (_, _, n) = counter(&get(&addr, "/", T).unwrap().text());
    assert!(n >= 1);
}

/// `/check?ms=300` spins one worker for at least 300 ms; meanwhile (round-
/// robin) a `/` is answered quickly by the other worker.
#[test]
fn demo_check_blocks_one_worker_while_the_other_answers() {
    let _s = serial();
    let addr = free_addr();
    let (_h, online) = demo(2, &addr, &[]);

    let a = get(&addr, "/check?ms=300", T).unwrap();
    assert_eq!(a.status, 200);
    assert!(a.elapsed >= Duration::from_millis(300), "{:?}", a.elapsed);
    let c =
        match_pat("spun its CPU for {} ms", &a.text()).unwrap_or_else(|| panic!("{:?}", a.text()));
    assert!(c[0].parse::<u64>().unwrap() >= 300);
    let rt: u64 = a
        .header("x-response-time")
        .unwrap()
        .trim_end_matches("ms")
        .parse()
        .unwrap();
    assert!(rt >= 300, "X-Response-Time {rt}ms");

    // Concurrently: the next connection goes to the other worker in turn,
    // and it is not stuck behind the spinning one.
    let cpu = CpuWatch::new(online.values().copied());
    let check = {
        let addr = addr.clone();
        thread::spawn(move || get(&addr, "/check?ms=1000", Duration::from_secs(20)))
    };
    // /check is being served: a worker spins.
    cpu.wait_busy(Duration::from_millis(50), T);
    let quick = get(&addr, "/", T).unwrap();
    let check = check.join().unwrap().unwrap();
    assert_ne!(
        quick.pid(),
        check.pid(),
        "the concurrent / went to the other worker"
    );
    assert!(
        quick.elapsed < Duration::from_millis(500),
        "the other worker answered in {:?}",
        quick.elapsed
    );
    assert!(check.elapsed >= Duration::from_millis(1000));
}

#[test]
fn demo_flip_health_and_unknown_routes() {
    let _s = serial();
    let addr = free_addr();
    let (_h, _) = demo(2, &addr, &[]);

    let flip = get(&addr, "/flip", Duration::from_secs(30)).unwrap();
    assert_eq!(flip.status, 200);
    assert_eq!(flip.header("content-type"), Some("image/png"));
    assert!(
        flip.body.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG signature: {:?}",
        &flip.body[..flip.body.len().min(8)]
    );
    let len: usize = flip.header("content-length").unwrap().parse().unwrap();
    assert_eq!(flip.body.len(), len);
    assert!(flip.header("x-response-time").is_some());

    let health = get(&addr, "/health", T).unwrap();
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));

    let nope = get(&addr, "/nope", T).unwrap();
    assert_eq!(nope.status, 404);
    assert!(
        nope.text().contains("/flip"),
        "404 lists the routes: {}",
        nope.text()
    );
}

/// Ctrl-C: a graceful stop, exit 0, no worker left.
#[test]
fn demo_sigint_stops_gracefully() {
    let _s = serial();
    let addr = free_addr();
    let (mut h, online) = demo(2, &addr, &[]);
    // An in-flight request is answered, not cut.
    let cpu = CpuWatch::new(online.values().copied());
    let check = {
        let addr = addr.clone();
        thread::spawn(move || get(&addr, "/check?ms=500", Duration::from_secs(20)))
    };
    // /check is being served (a worker spins) when the signal comes.
    cpu.wait_busy(Duration::from_millis(50), T);
    h.signal(Signal::SIGINT);
    let status = h.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", h.stderr_text());
    let check = check
        .join()
        .unwrap()
        .expect("the in-flight /check is answered");
    assert_eq!(check.status, 200);
    for (slot, pid) in &online {
        h.wait_stderr(
            &format!("worker {slot} (pid {pid}) stopped: it exited with code 0"),
            Duration::ZERO,
        );
    }
    assert_no_worker_left(&h);
    assert!(get(&addr, "/", Duration::from_secs(1)).is_err());
}

#[test]
fn demo_balance_shared_works() {
    let _s = serial();
    let addr = free_addr();
    let (mut h, online) = demo(2, &addr, &["--balance", "shared"]);
    assert!(
        h.wait_any_line(Stream::Stderr, 0, "(shared balance)", T)
            .is_some(),
        "{}",
        h.stderr_text()
    );
    h.wait_stderr(&format!("listening on {addr} (demo), balance shared"), T);
    let want: BTreeSet<i32> = online.values().copied().collect();
    assert_eq!(demo_pids(&addr, &want, usize::MAX, T), want);
    h.signal(Signal::SIGTERM);
    assert_eq!(h.wait_exit(T).code(), Some(0), "{}", h.stderr_text());
    assert_no_worker_left(&h);
}

#[test]
fn demo_port_in_use_is_a_usage_error() {
    let _s = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, _, err) = run_to_exit(&["demo", "-i", "1", "--listen", &addr], T);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}
