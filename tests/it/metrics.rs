//! The daemon's HTTP listener (`herd daemon --metrics ADDR`), end to end: a
//! real daemon per test in a temporary `HERD_HOME`, real fixture workers,
//! and real outside readers — the metrics parsed by the `prometheus_client`
//! Python package's OpenMetrics parser, the status page rendered by headless
//! Chromium. Under CI a missing python package or Chromium fails the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use herd_testkit::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// GET on the daemon's HTTP listener: (status, body).
fn get(d: &Daemon, path: &str) -> (u16, String) {
    http_get(http_addr(d), path, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn http_addr(d: &Daemon) -> &str {
    d.http.as_deref().expect("a daemon with --metrics")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One POST with an empty body: (status, body).
fn post(addr: &str, path: &str, admin_header: bool) -> (u16, String) {
    let extra: &[(&str, &str)] = if admin_header {
        &[("X-Herd-Admin", "1")]
    } else {
        &[]
    };
    exchange(addr, "POST", path, addr, extra)
}

/// One request with `Host: host` and the `extra` headers: (status, body).
fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let has_length = extra
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    if method == "POST" && !has_length {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the response");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// Parse OpenMetrics text with the `prometheus_client` Python package's own
/// parser; every sample as (name, labels, value).
fn parse_with_python(metrics: &str) -> Option<Vec<(String, Value, f64)>> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    need(Need::PythonModule("prometheus_client"))?;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the metrics: {}\n{metrics}",
        text(&out.stderr)
    );
    let rows: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    Some(rows)
}

fn sample<'a>(
    rows: &'a [(String, Value, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a (String, Value, f64)> {
    rows.iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
}

#[test]
fn metrics_parse_and_match_the_list() {
    let d = Daemon::with_metrics(false);
    d.ok(&[
        "start",
        "--name",
        "web",
        "-i",
        "2",
        "--listen",
        ANY,
        worker_bin(),
        "--",
        "--log-requests",
    ]);
    d.wait_online("web", 2);
    let app = d.app("web");
    // A crash, so that restarts and exits by signal have something to count.
    let victim = app["workers"][1]["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        let a = d.app("web");
        a["online"] == 2 && a["workers"][1]["pid"].as_i64() != Some(victim as i64)
    }));
    let addr = d.app("web")["listen"][0].as_str().unwrap().to_string();
    for _ in 0..3 {
        assert_eq!(http_get(&addr, "/", Duration::from_secs(5)).unwrap().0, 200);
    }

    // The page's data is `herd list --json`, value for value.
    let listed = d.list();
    let (status, body) = get(&d, "/api/apps");
    assert_eq!(status, 200);
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api[0]["name"], "web");
    assert_eq!(api[0]["workers"][1]["pid"], listed[0]["workers"][1]["pid"]);

    let (status, metrics) = get(&d, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    let Some(rows) = parse_with_python(&metrics) else {
        return;
    };
    let app = d.app("web");
    let has = |name: &str, labels: &[(&str, &str)], want: f64| {
        let s = sample(&rows, name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{metrics}"));
        assert_eq!(s.2, want, "{name}{labels:?} in\n{metrics}");
    };
    has("herd_app_workers_wanted", &[("app", "web")], 2.0);
    has("herd_app_workers_ready", &[("app", "web")], 2.0);
    has("herd_app_up", &[("app", "web")], 1.0);
    has(
        "herd_app_status",
        &[("app", "web"), ("status", "online")],
        1.0,
    );
    has(
        "herd_app_status",
        &[("app", "web"), ("status", "errored")],
        0.0,
    );
    has(
        "herd_worker_exits_total",
        &[
            ("app", "web"),
            ("worker", "1"),
            ("cause", "signal"),
            ("exit", "SIGKILL"),
        ],
        1.0,
    );
    for w in app["workers"].as_array().unwrap() {
        let id = w["id"].to_string();
        let pid = w["pid"].to_string();
        let l = [("app", "web"), ("worker", id.as_str())];
        has(
            "herd_worker_info",
            &[("app", "web"), ("worker", &id), ("pid", &pid)],
            1.0,
        );
        has("herd_worker_up", &l, 1.0);
        has(
            "herd_worker_restarts_total",
            &l,
            w["restarts"].as_f64().unwrap(),
        );
        for name in [
            "herd_worker_cpu_seconds_total",
            "herd_worker_resident_memory_bytes",
            "herd_worker_uptime_seconds",
        ] {
            assert!(sample(&rows, name, &l).is_some(), "no {name} in\n{metrics}");
        }
    }
    assert_eq!(app["workers"][1]["restarts"], 1);
    // The requests were logged, one line each (and the workers' start lines).
    let lines = sample(
        &rows,
        "herd_app_log_lines_total",
        &[("app", "web"), ("stream", "stdout")],
    )
    .expect("log lines");
    assert!(lines.2 >= 3.0, "{metrics}");
    assert!(
        sample(
            &rows,
            "herd_app_log_bytes_total",
            &[("app", "web"), ("stream", "stdout")]
        )
        .is_some_and(|s| s.2 > lines.2),
        "{metrics}"
    );

    // Read-only without --metrics-admin.
    assert_eq!(post(http_addr(&d), "/api/apps/web/reload", true).0, 403);
    assert_eq!(get(&d, "/healthz").0, 200);
    assert_eq!(get(&d, "/nothing-here").0, 404);
}

#[test]
fn readyz_flips_while_a_slot_is_errored() {
    let d = Daemon::with_metrics(true);
    let ok_file = d.home.path().join("ok");
    std::fs::write(&ok_file, "").unwrap();
    d.ok(&[
        "start",
        "--name",
        "flaky",
        "-i",
        "2",
        "--listen",
        ANY,
        "--max-restarts",
        "1",
        worker_bin(),
        "--",
        "--require-file",
        ok_file.to_str().unwrap(),
    ]);
    d.wait_online("flaky", 2);
    let app = d.app("flaky");
    assert_eq!(get(&d, "/readyz?app=flaky").0, 200);
    assert_eq!(get(&d, "/readyz").0, 200);
    let (status, body) = get(&d, "/readyz?app=nope");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no app named"), "{body}");

    // Break it: the worker that replaces a dead one exits at once, until its
    // slot is errored.
    std::fs::remove_file(&ok_file).unwrap();
    let victim = app["workers"][1]["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = get(&d, "/readyz?app=flaky");
            last.0 == 503 && last.1.contains("worker 1 is errored")
        }),
        "readyz never said the slot is errored: {last:?}"
    );
    let reason: Value = serde_json::from_str(&last.1).unwrap();
    assert_eq!(reason["ready"], false);
    assert_eq!(reason["ready_workers"], 1);
    assert_eq!(reason["wanted_workers"], 2);
    assert_eq!(get(&d, "/readyz").0, 503);

    // Fix it, and reload through the admin endpoint (which wants its header).
    std::fs::write(&ok_file, "").unwrap();
    assert_eq!(post(http_addr(&d), "/api/apps/flaky/reload", false).0, 403);
    let (status, body) = post(http_addr(&d), "/api/apps/flaky/reload", true);
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(20), || get(&d, "/readyz?app=flaky").0
            == 200),
        "readyz never came back: {:?}",
        get(&d, "/readyz?app=flaky")
    );
}

#[test]
fn round_robin_hand_overs_are_counted_per_worker() {
    need!(Need::Node);
    let d = Daemon::with_metrics(false);
    let port = free_port().to_string();
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node/hello.js");
    let out = d
        .command(&[
            "start",
            "--name",
            "rr",
            "-i",
            "2",
            "--balance",
            "round-robin",
            app.to_str().unwrap(),
        ])
        .env("PORT", &port)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.wait_online("rr", 2);
    let addr = format!("127.0.0.1:{port}");
    assert!(wait_until(Duration::from_secs(10), || {
        matches!(http_get(&addr, "/", Duration::from_secs(2)), Ok((200, _)))
    }));
    for _ in 0..9 {
        assert_eq!(http_get(&addr, "/", Duration::from_secs(5)).unwrap().0, 200);
    }
    let (_, metrics) = get(&d, "/metrics");
    let Some(rows) = parse_with_python(&metrics) else {
        return;
    };
    let handed: Vec<f64> = ["0", "1"]
        .iter()
        .map(|w| {
            sample(
                &rows,
                "herd_worker_connections_handed_over_total",
                &[("app", "rr"), ("worker", w)],
            )
            .unwrap_or_else(|| panic!("no hand-overs for worker {w}:\n{metrics}"))
            .2
        })
        .collect();
    // Ten requests and the probes before them, spread over both workers.
    assert!(handed.iter().sum::<f64>() >= 10.0, "{metrics}");
    assert!(handed.iter().all(|n| *n >= 1.0), "{handed:?}\n{metrics}");
    for w in ["0", "1"] {
        let pending = sample(
            &rows,
            "herd_worker_connections_pending",
            &[("app", "rr"), ("worker", w)],
        )
        .expect("pending");
        assert_eq!(pending.2, 0.0, "{metrics}");
    }
}

fn run_chromium(bin: &Path, profile: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run chromium");
    let pid = child.id() as i32;
    // Chromium hangs now and then in containers: bound it, and take its
    // whole process group down either way.
    let start = std::time::Instant::now();
    while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
    child.wait_with_output().expect("chromium's output")
}

#[test]
fn the_status_page_in_headless_chromium() {
    let Some(bin) = need(Need::Chromium).map(PathBuf::from) else {
        return;
    };
    let d = Daemon::with_metrics(false);
    d.ok(&[
        "start",
        "--name",
        "checkout-api",
        "-i",
        "2",
        "--listen",
        ANY,
        worker_bin(),
    ]);
    d.ok(&[
        "start",
        "--name",
        "mailer",
        "-i",
        "1",
        worker_bin(),
        "--",
        "--no-listen",
    ]);
    d.wait_online("checkout-api", 2);
    let app = d.app("checkout-api");
    d.wait_online("mailer", 1);
    let pid = app["workers"][0]["pid"].to_string();
    let url = format!("http://{}/", http_addr(&d));
    let profile = TempDir::new("chromium");

    let out = run_chromium(
        &bin,
        profile.path(),
        &["--virtual-time-budget=3000", "--dump-dom", &url],
    );
    let dom = text(&out.stdout);
    assert!(
        dom.contains("data-app=\"checkout-api\"") && dom.contains(&format!(">{pid}<")),
        "the page does not show the app and pid {pid}:\n{dom}\n{}",
        text(&out.stderr)
    );
    assert!(dom.contains("read-only"), "{dom}");
    assert!(
        !dom.contains("<button"),
        "buttons without --metrics-admin: {dom}"
    );

    // The README's screenshot: into docs/ with HERD_UPDATE_SCREENSHOT=1.
    let shot = if std::env::var_os("HERD_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png")
    } else {
        profile.path().join("status-page.png")
    };
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    let out = run_chromium(
        &bin,
        profile.path(),
        &[
            "--virtual-time-budget=3000",
            "--hide-scrollbars",
            "--window-size=1200,800",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {} ({e}): {}",
            shot.display(),
            text(&out.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a poor PNG"
    );
}

#[test]
fn the_listener_is_bounded_in_size_connections_and_time() {
    let d = Daemon::with_metrics(false);
    let addr = http_addr(&d).to_string();

    // A request head over the cap: 431, and the daemon serves on.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let big = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    let _ = s.write_all(big.as_bytes());
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");

    // A body over the cap: 413.
    let (status, body) = exchange(
        &addr,
        "POST",
        "/api/apps/x/reload",
        &addr,
        &[("Content-Length", "100000")],
    );
    assert_eq!(status, 413, "{body}");

    // Silent connections: a real request gets through, and they are closed
    // (to make room, or after the head timeout).
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let start = std::time::Instant::now();
    let served = wait_until(Duration::from_secs(20), || {
        http_get(&addr, "/healthz", Duration::from_secs(2)).is_ok_and(|(s, _)| s == 200)
    });
    assert!(served, "never served while idle connections were held");
    assert!(start.elapsed() < Duration::from_secs(15));
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        first.read(&mut buf).unwrap_or(0),
        0,
        "an idle connection is closed by the read timeout"
    );
    assert_eq!(get(&d, "/healthz").0, 200);
}

#[test]
fn a_daemon_started_by_the_cli_takes_herd_metrics_from_its_environment() {
    let mut d = Daemon::unstarted();
    let addr = format!("127.0.0.1:{}", free_port());
    let out = d
        .command(&["ping"])
        .env("HERD_METRICS", &addr)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.http = Some(addr);
    let (status, body) = get(&d, "/healthz");
    assert_eq!(status, 200, "{body}");
    // Not passed on to the environment of the apps it starts.
    let out = d
        .command(&["start", "--name", "web", "--listen", ANY, worker_bin()])
        .env("HERD_METRICS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show: Value = serde_json::from_str(&d.ok(&["show", "web", "--json"])).unwrap();
    let env = show["definition"]["spec"]["env"].as_array().unwrap();
    assert!(!env.iter().any(|kv| kv[0] == "HERD_METRICS"), "{env:?}");
}

/// Issue 15: 32 idle TCP connections delayed `/healthz` by 4.8 s (the
/// listener waited for a free connection slot), so a Kubernetes probe
/// (timeoutSeconds: 1) failed. Now a new connection closes the oldest idle
/// one when the table is full: with far more idle connections open than the
/// listener keeps, every probe is answered within a second, and the daemon
/// holds no more sockets than its limit.
#[test]
fn idle_connections_never_delay_the_probes() {
    const PROBE_DEADLINE: Duration = Duration::from_secs(1);
    let d = Daemon::with_metrics(false);
    let addr = http_addr(&d).to_string();
    let daemon = d.daemon_pid().expect("the daemon's pid");
    let fds = || {
        std::fs::read_dir(format!("/proc/{daemon}/fd"))
            .unwrap()
            .count()
    };
    let fds_before = fds();

    let mut idle: Vec<TcpStream> = Vec::new();
    let open_idle = |n: usize, idle: &mut Vec<TcpStream>| {
        for _ in 0..n {
            idle.push(TcpStream::connect(&addr).expect("connect an idle connection"));
        }
    };
    open_idle(100, &mut idle);
    for round in 0..10 {
        // More keep coming while the probes are asked.
        open_idle(10, &mut idle);
        for path in ["/healthz", "/readyz"] {
            let start = std::time::Instant::now();
            let answer = http_get(&addr, path, PROBE_DEADLINE);
            assert!(
                matches!(answer, Ok((200, _))),
                "round {round}: {path} with {} idle connections open: {answer:?} after {:?}",
                idle.len(),
                start.elapsed()
            );
        }
    }
    assert_eq!(idle.len(), 200);
    // The oldest idle connections were closed by the daemon.
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(first.read(&mut buf).unwrap_or(0), 0, "still open");
    // It keeps no more sockets than its limit (64), whatever is thrown at it.
    let held = fds().saturating_sub(fds_before);
    assert!(held <= 64 + 2, "the daemon holds {held} more fds");
}

/// Read `herd list`'s pid of worker 0 of `app`.
fn worker0_pid(d: &Daemon, app: &str) -> Value {
    d.app(app)["workers"][0]["pid"].clone()
}

/// Issue 15 (DNS rebinding): the admin API ignored `Host` and `Origin`, so a
/// web page the operator visited could restart apps: a name the attacker
/// owns, resolving to 127.0.0.1, arrives with `Host: evil.example`, and a
/// page's request carries its `Origin`. Both are refused now, reads too, and
/// the app is not restarted; the right Host and Origin still work.
#[test]
fn dns_rebinding_a_foreign_host_or_origin_cannot_restart_an_app() {
    let d = Daemon::with_metrics(true);
    let addr = http_addr(&d).to_string();
    let port = addr.rsplit_once(':').unwrap().1;
    d.start_fixture("web", &[]);
    d.wait_online("web", 1);
    let pid = worker0_pid(&d, "web");
    let admin = ("X-Herd-Admin", "1");
    let restart = "/api/apps/web/restart";

    for host in ["evil.example", &format!("evil.example:{port}")] {
        let (status, body) = exchange(&addr, "POST", restart, host, &[admin]);
        assert_eq!(status, 421, "Host: {host}: {body}");
        assert!(body.contains("--metrics-host"), "{body}");
        let (status, body) = exchange(&addr, "GET", "/api/apps", host, &[]);
        assert_eq!(status, 421, "GET with Host: {host}: {body}");
    }
    for origin in [
        "http://evil.example",
        &format!("http://evil.example:{port}"),
        "null",
    ] {
        let (status, body) = exchange(&addr, "POST", restart, &addr, &[admin, ("Origin", origin)]);
        assert_eq!(status, 403, "Origin: {origin}: {body}");
        assert!(body.contains("cannot change apps"), "{body}");
    }
    assert_eq!(worker0_pid(&d, "web"), pid, "the app was restarted");

    // The page's own origin, and a client with no Origin, are obeyed.
    let own = format!("http://{addr}");
    let (status, body) = exchange(&addr, "POST", restart, &addr, &[admin, ("Origin", &own)]);
    assert_eq!(status, 200, "{body}");
    d.wait_online("web", 1);
    let restarted = worker0_pid(&d, "web");
    assert_ne!(restarted, pid, "not restarted");
    let localhost = format!("localhost:{port}");
    let (status, body) = exchange(&addr, "POST", restart, &localhost, &[admin]);
    assert_eq!(status, 200, "{body}");
    d.wait_online("web", 1);
    assert_ne!(worker0_pid(&d, "web"), restarted, "not restarted");
}

/// `--metrics-host` names (here from `HERD_METRICS_HOST`, which a daemon the
/// CLI starts inherits) are answered to as well as the address, with any
/// port unless one is given; `HERD_METRICS_ADMIN=1` (issue 15: only `true`
/// was read) turns the actions on.
#[test]
fn herd_metrics_host_names_and_herd_metrics_admin_1_are_taken_from_the_environment() {
    let mut d = Daemon::unstarted();
    let addr = format!("127.0.0.1:{}", free_port());
    let out = d
        .command(&["ping"])
        .env("HERD_METRICS", &addr)
        .env("HERD_METRICS_HOST", "herd.internal,proxy.example:8443")
        .env("HERD_METRICS_ADMIN", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.http = Some(addr.clone());
    for host in ["herd.internal", "HERD.internal:9999", "proxy.example:8443"] {
        let (status, body) = exchange(&addr, "GET", "/healthz", host, &[]);
        assert_eq!(status, 200, "Host: {host}: {body}");
    }
    for host in ["proxy.example", "proxy.example:80", "other.internal"] {
        let (status, body) = exchange(&addr, "GET", "/healthz", host, &[]);
        assert_eq!(status, 421, "Host: {host}: {body}");
    }
    // Admin is on: an unknown app is a 404, not "read-only".
    let (status, body) = exchange(
        &addr,
        "POST",
        "/api/apps/nope/reload",
        "herd.internal",
        &[("X-Herd-Admin", "1"), ("Origin", "http://herd.internal")],
    );
    assert_eq!(status, 404, "{body}");
}

/// Issue 15: `HERD_METRICS_ADMIN=1` stopped the daemon a CLI command starts
/// from starting, and the CLI only said, after 10 s, that it could not reach
/// it. A value that is not a yes/no is refused, and the CLI prints why, at
/// once; `0` is a plain "off".
#[test]
fn a_bad_herd_metrics_admin_stops_the_daemon_and_the_cli_says_why() {
    let d = Daemon::unstarted();
    let addr = format!("127.0.0.1:{}", free_port());
    let start = std::time::Instant::now();
    let out = d
        .command(&["ping"])
        .env("HERD_METRICS", &addr)
        .env("HERD_METRICS_ADMIN", "maybe")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("did not start")
            && stderr.contains("'maybe'")
            && stderr.contains("HERD_METRICS_ADMIN"),
        "{stderr}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "the CLI waited {:?} for a daemon that had exited",
        start.elapsed()
    );
    // Admin without an address to serve it on: a clear error too.
    let out = d
        .command(&["ping"])
        .env_remove("HERD_METRICS")
        .env("HERD_METRICS_ADMIN", "yes")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("need --metrics ADDR"), "{stderr}");
    // "0": off, and the daemon starts.
    let out = d
        .command(&["ping"])
        .env("HERD_METRICS", &addr)
        .env("HERD_METRICS_ADMIN", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (status, body) = exchange(
        &addr,
        "POST",
        "/api/apps/nope/reload",
        &addr,
        &[("X-Herd-Admin", "1")],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
}
