//! The daemon and its pm2-style CLI, end to end: a real daemon per test in a
//! temporary `HERD_HOME` (the testkit's `Daemon`), real workers (the fixture
//! server, Node apps), real sockets and signals. Every daemon a test starts
//! is stopped when the test ends, pass or fail (`herd kill`, then SIGKILL,
//! which takes its workers with it).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use herd_testkit::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn start_list_stop_restart_delete() {
    let d = Daemon::new();
    let addr = d.start_fixture("web", &["-i", "2"]);
    let pids = d.wait_online("web", 2);
    let app = d.app("web");
    assert_eq!(app["mode"], "cluster");
    assert_eq!(app["instances"], 2);
    for w in app["workers"].as_array().unwrap() {
        for key in [
            "id",
            "pid",
            "status",
            "restarts",
            "uptime_ms",
            "cpu_percent",
            "memory_bytes",
        ] {
            assert!(w.get(key).is_some(), "worker lacks {key}: {w}");
        }
    }
    let served = wait_http_ok(&addr, Duration::from_secs(5));
    assert!(pids.contains(&served), "{served} not in {pids:?}");

    // The table fits 80 columns and names the app and each worker.
    let table = d.ok(&["list"]);
    assert!(
        table.contains("web") && table.contains("worker 1"),
        "{table}"
    );
    for line in table.lines() {
        assert!(line.chars().count() <= 80, "too wide: {line:?}");
    }

    d.ok(&["stop", "web"]);
    let app = d.app("web");
    assert_eq!(app["status"], "stopped", "{app:#}");
    for pid in &pids {
        assert!(wait_until(Duration::from_secs(5), || !process_alive(*pid)));
    }
    // The stopped app starts again by its name, as under pm2.
    d.ok(&["start", "web"]);
    let again = d.wait_online("web", 2);
    assert!(again.iter().all(|p| !pids.contains(p)));

    d.ok(&["restart", "0"]);
    let third = d.wait_online("web", 2);
    assert!(third.iter().all(|p| !again.contains(p)));

    d.ok(&["delete", "web"]);
    assert!(d.list().is_empty());
    for pid in &third {
        assert!(wait_until(Duration::from_secs(5), || !process_alive(*pid)));
    }
}

#[test]
fn two_concurrent_reloads_both_complete_without_a_failed_request() {
    let _serial = serial();
    let d = Daemon::new();
    let addr = d.start_fixture("web", &["-i", "2", "--ready-delay", "300ms"]);
    let before = d.wait_online("web", 2);
    wait_http_ok(&addr, Duration::from_secs(5));
    let load = Load::start(&addr, "/", 2, Duration::from_millis(2));
    let reloads: Vec<_> = (0..2)
        .map(|_| {
            let mut c = d.command(&["reload", "web"]);
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    for r in reloads {
        let out = r.join().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("reloaded web"),
            "{}",
            text(&out.stdout)
        );
    }
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{:?}", report.failures);
    assert!(report.ok > 0);
    let after = d.wait_online("web", 2);
    assert!(after.iter().all(|p| !before.contains(p)));
    // Both reloads replaced every worker: two restarts per slot.
    let app = d.app("web");
    let restarts: Vec<u64> = app["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["status"] == "online")
        .map(|w| w["restarts"].as_u64().unwrap())
        .collect();
    assert_eq!(restarts, vec![2, 2], "{app:#}");
}

#[test]
fn restart_of_one_worker_replaces_only_that_one() {
    let d = Daemon::new();
    d.start_fixture("web", &["-i", "2", "--ready-delay", "200ms"]);
    let before = d.wait_online("web", 2);
    d.ok(&["restart", "web:1"]);
    let after = d.wait_online("web", 2);
    assert_eq!(after[0], before[0], "worker 0 untouched");
    assert_ne!(after[1], before[1], "worker 1 replaced");
    // A usage mistake, wherever it is found: exit 2.
    assert!(d.fails(&["restart", "web:7"], 2).contains("no worker 7"));
}

#[test]
fn scale_send_and_signal() {
    let d = Daemon::new();
    d.start_fixture("web", &["-i", "1", "--ready-delay", "200ms"]);
    d.wait_online("web", 1);
    d.ok(&["scale", "web", "3"]);
    d.wait_online("web", 3);
    d.ok(&["scale", "web", "-1"]);
    d.wait_online("web", 2);
    assert!(d.fails(&["scale", "web", "-5"], 2).contains("1 to 4096"));
    assert!(d.fails(&["scale", "web", "x"], 2).contains("invalid count"));

    d.ok(&["send", "web", r#"{"hello":1}"#]);
    assert!(d.fails(&["send", "web", "{nope"], 2).contains("not JSON"));

    // SIGKILL through `signal`: the workers die and are replaced.
    let before = d.wait_online("web", 2);
    d.ok(&["signal", "SIGKILL", "web"]);
    assert!(wait_until(Duration::from_secs(10), || {
        let now = worker_pids(&d.app("web"));
        now.len() == 2 && now.iter().all(|p| !before.contains(p))
    }));
    assert!(d
        .fails(&["signal", "SIGNOPE", "web"], 2)
        .contains("unknown signal"));
}

#[test]
fn logs_are_whole_lines_in_per_app_files_with_timestamps() {
    let d = Daemon::new();
    let addr = d.start_fixture(
        "web",
        &[
            "-i",
            "1",
            "--time",
            "--log-date-format",
            "YYYY-MM-DD HH:mm:ss",
        ],
    );
    d.wait_online("web", 1);
    http_get(&addr, "/spam?n=500&len=3000", Duration::from_secs(10)).unwrap();
    let out_log = d.path().join("logs/web-out.log");
    let mut lines = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            lines = std::fs::read_to_string(&out_log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(" spam "))
                .map(String::from)
                .collect();
            lines.len() == 500
        }),
        "{} of 500 lines",
        lines.len()
    );
    let stamp = regex_like_stamp();
    for (i, line) in lines.iter().enumerate() {
        // `2026-12-02 13:45:01: spam <i> xxx… end`, never split or mixed.
        assert!(stamp(line), "no timestamp: {line:.80}");
        let body = &line[21..];
        assert_eq!(
            body,
            format!("spam {i} {} end", "x".repeat(3000)),
            "line {i}"
        );
    }
    let tail = d.ok(&["logs", "web", "--nostream", "--lines", "2", "--out"]);
    assert!(tail.contains("web|out | "), "{tail}");
    assert!(tail.contains("spam 499 "), "{tail}");
    assert!(!tail.contains("spam 497 "), "{tail}");

    d.ok(&["flush", "web"]);
    assert_eq!(std::fs::metadata(&out_log).unwrap().len(), 0);
}

fn regex_like_stamp() -> impl Fn(&str) -> bool {
    |line: &str| {
        let b = line.as_bytes();
        b.len() > 21
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[10] == b' '
            && b[13] == b':'
            && &b[19..21] == b": "
    }
}

#[test]
fn logs_rotate_by_size_and_keep_n_files() {
    let d = Daemon::new();
    let addr = d.start_fixture(
        "web",
        &["-i", "1", "--log-max-size", "20000", "--log-keep", "2"],
    );
    d.wait_online("web", 1);
    for _ in 0..10 {
        http_get(&addr, "/spam?n=100&len=100", Duration::from_secs(10)).unwrap();
    }
    // A last, recognisable line: once it is in the current file, the
    // daemon has written (and rotated) everything before it.
    http_get(&addr, "/spam?n=1&len=7", Duration::from_secs(10)).unwrap();
    let dir = d.path().join("logs");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("web-out.log"))
            .unwrap_or_default()
            .contains("spam 0 xxxxxxx end")
    }));
    assert!(dir.join("web-out.log.2").exists());
    assert!(!dir.join("web-out.log.3").exists());
    for f in ["web-out.log", "web-out.log.1", "web-out.log.2"] {
        let body = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(body.len() <= 20000, "{f}: {} bytes", body.len());
        for line in body.lines().filter(|l| l.starts_with("spam")) {
            assert!(line.ends_with(" end"), "{f}: split line {line:.60}");
        }
    }
}

#[test]
fn save_and_resurrect_round_trip_and_an_empty_save_is_refused() {
    let d = Daemon::new();
    d.start_fixture(
        "web",
        &["-i", "2", "--env", "GREETING=hi", "--ready-delay", "200ms"],
    );
    d.wait_online("web", 2);
    assert!(d.ok(&["save"]).contains("saved 1 app"));
    d.ok(&["delete", "web"]);
    // Saving nothing over a good list is refused unless forced.
    assert!(d.fails(&["save"], 2).contains("--force"));
    let dump: Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("dump.json")).unwrap())
            .unwrap();
    assert_eq!(dump["apps"].as_array().unwrap().len(), 1);

    d.ok(&["resurrect"]);
    d.wait_online("web", 2);
    // The environment came back with it.
    let show: Value = serde_json::from_str(&d.ok(&["show", "web", "--json"])).unwrap();
    let env = show["definition"]["spec"]["env"].as_array().unwrap();
    assert!(
        env.iter().any(|kv| kv[0] == "GREETING" && kv[1] == "hi"),
        "{env:?}"
    );
    assert!(d.ok(&["resurrect"]).contains("already here"));
}

#[test]
fn a_sigkilled_daemon_leaves_the_apps_serving_and_the_next_one_adopts_them() {
    let d = Daemon::new();
    d.start_fixture("web", &["-i", "2", "--ready-delay", "200ms"]);
    let pids = d.wait_online("web", 2);
    let id = d.app("web")["id"].clone();
    let daemon = d.daemon_pid().expect("a daemon pid");
    kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive(daemon)),
        "the daemon outlived SIGKILL"
    );
    // The apps run on under their own supervisors.
    for pid in &pids {
        assert!(process_alive(*pid), "worker {pid} died with the daemon");
    }
    // The next CLI command starts a new daemon, which adopts them as they are.
    let app = d.app("web");
    assert_ne!(d.daemon_pid(), Some(daemon));
    assert_eq!(app["id"], id, "{app:#}");
    assert_eq!(app["status"], "online", "{app:#}");
    assert_eq!(worker_pids(&app), pids, "{app:#}");
    assert!(d.log().contains("adopted 1 running app"), "{}", d.log());
}

#[test]
fn a_second_daemon_on_the_same_home_refuses() {
    let d = Daemon::new();
    let err = d.fails(&["daemon"], 1);
    assert!(err.contains("already runs"), "{err}");
    assert!(err.contains(&d.daemon_pid().unwrap().to_string()), "{err}");
}

/// Raw frames on the control socket.
fn frame(stream: &mut UnixStream, body: &[u8]) {
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .unwrap();
    stream.write_all(body).unwrap();
}

fn read_frame(stream: &mut UnixStream) -> Option<Value> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

#[test]
fn garbage_and_oversized_frames_close_only_that_connection() {
    let d = Daemon::new();
    let sock = d.path().join("herd.sock");
    let timeout = Some(Duration::from_secs(5));

    let mut garbage = UnixStream::connect(&sock).unwrap();
    garbage.set_read_timeout(timeout).unwrap();
    // Each bad frame is refused with an error that says what is wrong, then
    // that connection (only) is closed.
    let refused = |s: &mut UnixStream, what: &str| {
        let answer = read_frame(s).unwrap_or_else(|| panic!("{what}: closed without a reason"));
        assert_eq!(answer["response"], "error", "{what}: {answer}");
        assert!(read_frame(s).is_none(), "{what}: the connection stays open");
    };
    frame(&mut garbage, b"\x00\xffnot json at all");
    refused(&mut garbage, "garbage");

    let mut huge = UnixStream::connect(&sock).unwrap();
    huge.set_read_timeout(timeout).unwrap();
    huge.write_all(&u32::MAX.to_be_bytes()).unwrap();
    refused(&mut huge, "an oversized frame");

    // A hello, then a request that is no request.
    let mut odd = UnixStream::connect(&sock).unwrap();
    odd.set_read_timeout(timeout).unwrap();
    let hello = format!(
        r#"{{"request":"hello","version":{}}}"#,
        herd_protocol::VERSION
    );
    frame(&mut odd, hello.as_bytes());
    assert_eq!(read_frame(&mut odd).unwrap()["response"], "hello");
    frame(&mut odd, br#"{"request":"format_disk"}"#);
    refused(&mut odd, "an unknown request");

    // The daemon is unharmed.
    assert!(d.ok(&["ping"]).contains("pong"));
    assert!(d.log().contains("unreadable"), "{}", d.log());
}

#[test]
fn a_client_of_another_protocol_version_is_told_what_to_do() {
    let d = Daemon::new();
    let mut s = UnixStream::connect(d.path().join("herd.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    frame(&mut s, br#"{"request":"hello","version":999}"#);
    let answer = read_frame(&mut s).expect("an answer");
    assert_eq!(answer["response"], "error");
    assert_eq!(answer["kind"], "version");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("999") && message.contains("herd kill"),
        "{message}"
    );
}

#[test]
fn bad_inputs_give_clear_errors_and_change_nothing() {
    let d = Daemon::new();
    d.start_fixture("web", &["-i", "1"]);
    let before = d.list();

    assert!(d
        .fails(&["stop", "nope"], 2)
        .contains("no app named 'nope'"));
    assert!(d.fails(&["reload", "42"], 2).contains("no app named '42'"));
    let dup = d.fails(&["start", "--name", "web", worker_bin()], 2);
    assert!(dup.contains("exists already"), "{dup}");
    assert!(d
        .fails(&["start", "./no-such-script.js"], 2)
        .contains("no such file"));
    assert!(d
        .fails(&["start", "--no-such-option", "x"], 2)
        .contains("--no-such-option"));
    assert!(d
        .fails(&["start", "-i", "lots", worker_bin()], 2)
        .contains("instance count"));
    assert!(d
        .fails(&["start", "--name", "all", worker_bin()], 2)
        .contains("invalid app name"));
    // Port in use: the start fails and the app is not kept.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let err = d.fails(
        &["start", "--name", "busy", "--listen", &port, worker_bin()],
        1,
    );
    assert!(err.contains("already in use"), "{err}");

    let after = d.list();
    let names = |l: &[Value]| l.iter().map(|a| a["name"].clone()).collect::<Vec<_>>();
    assert_eq!(names(&before), names(&after));
}

#[test]
fn a_worker_flooding_stdout_loses_no_line_and_the_daemon_stays_small() {
    let _serial = serial();
    let d = Daemon::new();
    let addr = d.start_fixture("flood", &["-i", "1"]);
    d.wait_online("flood", 1);
    let n = 200_000;
    http_get(
        &addr,
        &format!("/spam?n={n}&len=100"),
        Duration::from_secs(60),
    )
    .unwrap();
    // Rotation (10 MB by default) moves older lines to .1, .2: count them all.
    let logs = d.path().join("logs");
    let count = || {
        (0..=5)
            .map(|i| match i {
                0 => logs.join("flood-out.log"),
                i => logs.join(format!("flood-out.log.{i}")),
            })
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .map(|t| {
                t.lines()
                    .filter(|l| l.starts_with("spam ") && l.ends_with(" end"))
                    .count()
            })
            .sum::<usize>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || count() == n),
        "{} of {n} lines",
        count()
    );
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", d.daemon_pid().unwrap())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!("  daemon peak RSS after {n} lines: {hwm_kb} kB");
    assert!(hwm_kb < 64 * 1024, "the daemon grew to {hwm_kb} kB");
}

#[test]
fn max_memory_restart_replaces_a_worker_that_stays_over_the_limit() {
    let d = Daemon::new();
    need!(Need::Python);
    // 80 MB touched, then idle: over a 40 MB limit on every sample.
    d.ok(&[
        "start",
        "--name",
        "hog",
        "-i",
        "1",
        "--ready-delay",
        "100ms",
        "--max-memory-restart",
        "40M",
        "python3",
        "--",
        "-c",
        "import time\nb = b'x' * 80_000_000\ntime.sleep(600)",
    ]);
    let first = d.wait_online("hog", 1)[0];
    assert!(
        wait_until(Duration::from_secs(20), || {
            let app = d.app("hog");
            worker_pids(&app).first().is_some_and(|p| *p != first)
        }),
        "never replaced: {:#}",
        d.app("hog")
    );
    assert!(d.log().contains("over --max-memory-restart"), "{}", d.log());
}

#[test]
fn a_node_app_started_from_the_cli_gets_the_cli_environment() {
    need_node!();
    let d = Daemon::new();
    let port = free_port().to_string();
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node/hello.js");
    let out = d
        .command(&["start", app.to_str().unwrap(), "-i", "2"])
        .env("PORT", &port)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.wait_online("hello", 2);
    let addr = format!("127.0.0.1:{port}");
    assert!(wait_until(Duration::from_secs(10), || {
        matches!(http_get(&addr, "/", Duration::from_secs(2)), Ok((200, _)))
    }));
    d.ok(&["reload", "hello"]);
    d.wait_online("hello", 2);
    let (status, _) = http_get(&addr, "/", Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200);
}

#[test]
fn a_config_file_starts_its_apps_and_starting_it_again_reloads_them() {
    let d = Daemon::new();
    let dir = TempDir::new("daemon-file");
    let file = dir.join("apps.json");
    let write = |instances: u32, greeting: &str| {
        let json = serde_json::json!({
            "apps": [{
                "name": "api",
                "script": worker_bin(),
                "interpreter": "none",
                "instances": instances,
                "listen": ["127.0.0.1:0"],
                "env": { "GREETING": greeting },
                "env_production": { "GREETING": "prod" },
            }]
        });
        std::fs::write(&file, json.to_string()).unwrap();
    };
    write(1, "hi");
    d.ok(&["start", file.to_str().unwrap()]);
    let first = d.wait_online("api", 1);
    let env_of = |d: &Daemon| -> String {
        let show: Value = serde_json::from_str(&d.ok(&["show", "api", "--json"])).unwrap();
        show["definition"]["spec"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv[0] == "GREETING")
            .map(|kv| kv[1].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(env_of(&d), "hi");
    // The same file again, changed: a rolling reload onto the new definition
    // (pm2's missing "full reload"), the profile picked with --env.
    write(2, "hi");
    d.ok(&["start", file.to_str().unwrap(), "--env", "production"]);
    let second = d.wait_online("api", 2);
    assert!(
        second.iter().all(|p| !first.contains(p)),
        "{first:?} {second:?}"
    );
    assert_eq!(env_of(&d), "prod");
    assert_eq!(d.list().len(), 1);

    // A broken file changes nothing and names the file.
    std::fs::write(&file, r#"{"apps": [{"name": "api", "script": 12}]}"#).unwrap();
    let err = d.fails(&["start", file.to_str().unwrap()], 2);
    assert!(err.contains("apps.json"), "{err}");
    assert_eq!(d.wait_online("api", 2), second);
}

#[test]
fn logs_follow_new_lines_as_json() {
    let d = Daemon::new();
    let addr = d.start_fixture("web", &["-i", "1"]);
    d.wait_online("web", 1);
    let mut follow = d
        .command(&["logs", "web", "--out", "--json", "--lines", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Lines written after `logs` started arrive, one JSON object each.
    let mut got = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        let _ = http_get(&addr, "/spam?n=3&len=5", Duration::from_secs(5));
        while let Ok(line) = rx.try_recv() {
            got.push(line);
        }
        got.len() >= 3
    });
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(ok, "{got:?}");
    let first: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(first["app"], "web");
    assert_eq!(first["stream"], "out");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .starts_with("spam 0 xxxxx"),
        "{first}"
    );
}

#[test]
fn sigusr1_reopens_the_log_files_for_logrotate() {
    let d = Daemon::new();
    let addr = d.start_fixture("web", &["-i", "1"]);
    d.wait_online("web", 1);
    let log = d.path().join("logs/web-out.log");
    http_get(&addr, "/spam?n=1&len=1", Duration::from_secs(5)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("spam 0")
    }));
    // logrotate moves the file away, then tells the daemon.
    let moved = d.path().join("logs/web-out.log.rotated");
    std::fs::rename(&log, &moved).unwrap();
    kill(Pid::from_raw(d.daemon_pid().unwrap()), Signal::SIGUSR1).unwrap();
    // The signal is handled asynchronously: a line written before the
    // daemon reopened belongs in the moved file. The reopen creates the
    // file anew; only lines asked for after that must land there.
    assert!(wait_until(Duration::from_secs(5), || log.exists()));
    assert!(wait_until(Duration::from_secs(5), || {
        let _ = http_get(&addr, "/spam?n=1&len=2", Duration::from_secs(5));
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("spam 0 xx end")
    }));
    assert!(!std::fs::read_to_string(&moved)
        .unwrap()
        .contains("spam 0 xx end"));
}

#[test]
fn startup_prints_a_notify_unit_that_resurrects() {
    let d = Daemon::new();
    let unit = d.ok(&["startup"]);
    assert!(unit.contains("Type=notify"), "{unit}");
    assert!(
        unit.contains(&format!("ExecStart={} daemon --resurrect", herd_bin())),
        "{unit}"
    );
    assert!(
        unit.contains(&format!("HERD_HOME={}", d.path().display())),
        "{unit}"
    );
}

#[test]
fn the_daemon_tells_its_service_manager_it_is_ready() {
    let home = TempDir::new("daemon-notify");
    let sock_path = home.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut daemon = Command::new(herd_bin())
        .arg("daemon")
        .env("HERD_HOME", home.join("h"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let got = sock.recv(&mut buf).map(|n| text(&buf[..n]));
    let _ = kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
    let status = daemon.wait().unwrap();
    let got = got.expect("a notification");
    assert!(got.contains("READY=1"), "{got}");
    assert!(status.success(), "{status}");
}

#[test]
fn list_answers_at_once_while_a_reload_is_pending() {
    let d = Daemon::new();
    d.start_fixture("web", &["-i", "1", "--ready-delay", "3s"]);
    d.wait_online("web", 1);
    let mut reload = d
        .command(&["reload", "web"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || d.app("web")
        ["status"]
        == "reloading"));
    let started = std::time::Instant::now();
    let app = d.app("web");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "list waited {:?} for the reload",
        started.elapsed()
    );
    assert_eq!(app["workers"].as_array().unwrap().len(), 2, "{app:#}");
    assert!(reload.wait().unwrap().success());
}

/// A line written in two pieces, with a pause between them, reaches the log
/// whole, with one timestamp before it.
#[test]
fn a_timestamp_never_lands_inside_a_line_split_across_reads() {
    let d = Daemon::new();
    d.ok(&[
        "start",
        "--name",
        "halves",
        "--time",
        "--log-date-format",
        "[T]",
        "--restart",
        "never",
        "sh",
        "--",
        "-c",
        "printf 'first half, '; sleep 0.3; printf 'second half\\n'; sleep 600",
    ]);
    let log = d.path().join("logs/halves-out.log");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("second half")),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "T: first half, second half\n"
    );
}

/// `herd send` reaches the workers' `process.on('message')`, all of them or one.
#[test]
fn send_reaches_process_on_message_of_node_workers() {
    need_node!();
    let d = Daemon::new();
    let dir = TempDir::new("daemon-send");
    let script = dir.join("listener.js");
    std::fs::write(
        &script,
        "process.on('message', (m) => console.log(`worker ${process.env.HERD_WORKER_ID} got ${JSON.stringify(m)}`));\n\
         require('http').createServer((q, s) => s.end('ok')).listen(0);\n",
    )
    .unwrap();
    d.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "ears",
        "-i",
        "2",
    ]);
    d.wait_online("ears", 2);
    d.ok(&["send", "ears", r#"{"hello":"all"}"#]);
    d.ok(&["send", "ears:1", r#""just one""#]);
    let log = d.path().join("logs/ears-out.log");
    let ok = wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(r#"worker 0 got {"hello":"all"}"#)
            && text.contains(r#"worker 1 got {"hello":"all"}"#)
            && text.contains(r#"worker 1 got "just one""#)
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ok, "{text}");
    assert!(!text.contains(r#"worker 0 got "just one""#), "{text}");
}

// ---- issue 15: HERD_HOME, the control socket, secrets, small faults ----

/// `herd` with `HERD_HOME=home` and nothing else of a test daemon.
fn herd_in(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(herd_bin())
        .args(args)
        .env("HERD_HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Tests that give a directory to another user need root (chown).
fn need_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip_or_fail("this test needs root to chown a directory to another user");
    false
}

/// A file only root may read, which a planted link points at.
fn precious(dir: &TempDir) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("root-only");
    std::fs::write(&p, "root's own data\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn untouched(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::read_to_string(p).unwrap(), "root's own data\n");
    let mode = std::fs::metadata(p).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_herd_home_another_user_owns_or_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    if !need_root() {
        return;
    }
    let dir = TempDir::new("home-owner");
    let home = dir.join("h");
    std::fs::create_dir(&home).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .map(|u| u.uid)
        .unwrap_or(nix::unistd::Uid::from_raw(65534));
    nix::unistd::chown(&home, Some(nobody), None).unwrap();
    for args in [&["daemon"][..], &["ping"], &["list"]] {
        let out = herd_in(&home, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("belongs to uid") && err.contains("HERD_HOME"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&home).unwrap().count(),
        0,
        "nothing written"
    );

    nix::unistd::chown(&home, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = herd_in(&home, &["daemon"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("writable by other users") && err.contains("chmod"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&home).unwrap().count(),
        0,
        "nothing written"
    );

    // A home inside a directory another user may change is refused too:
    // that user could swap it for a link to a directory of root's.
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = herd_in(&open.join("h"), &["ping"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("lies inside"),
        "{}",
        text(&out.stderr)
    );
    assert!(!open.join("h").exists());
}

#[test]
fn links_planted_in_herd_home_are_never_followed() {
    let dir = TempDir::new("home-links");
    let target = precious(&dir);
    let home = dir.join("h");
    std::fs::create_dir(&home).unwrap();

    // herd.pid: the daemon used to truncate the link's target.
    std::os::unix::fs::symlink(&target, home.join("herd.pid")).unwrap();
    let out = herd_in(&home, &["daemon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out.stderr)
    );
    untouched(&target);
    std::fs::remove_file(home.join("herd.pid")).unwrap();

    // herd.log: the CLI used to append the daemon's output to the target.
    std::os::unix::fs::symlink(&target, home.join("herd.log")).unwrap();
    let out = herd_in(&home, &["ping"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out.stderr)
    );
    untouched(&target);
    std::fs::remove_file(home.join("herd.log")).unwrap();

    // logs/NAME-out.log: the app's output used to be appended to the target.
    let d = Daemon::new();
    let out_log = d.path().join("logs/web-out.log");
    std::os::unix::fs::symlink(&target, &out_log).unwrap();
    let err = d.fails(&["start", "--name", "web", worker_bin()], 1);
    assert!(err.contains("symbolic link"), "{err}");
    assert!(d.list().is_empty(), "the app is not kept");
    untouched(&target);
    // And no empty web-error.log is left behind by the failed start.
    assert!(!d.path().join("logs/web-error.log").exists());

    // dump.json: saving replaces the link, never writes through it; a
    // planted one is not read.
    std::fs::remove_file(&out_log).unwrap();
    d.start_fixture("web", &["-i", "1"]);
    std::os::unix::fs::symlink(&target, d.path().join("dump.json")).unwrap();
    let err = d.fails(&["resurrect"], 1);
    assert!(err.contains("symbolic link"), "{err}");
    d.ok(&["save"]);
    untouched(&target);
    let meta = std::fs::symlink_metadata(d.path().join("dump.json")).unwrap();
    assert!(meta.is_file());
}

#[test]
fn every_file_herd_writes_in_its_home_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::new();
    d.start_fixture("web", &["-i", "1"]);
    d.ok(&["save"]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(d.path()), 0o700);
    assert_eq!(mode(&d.path().join("logs")), 0o700);
    for f in [
        "dump.json",
        "herd.pid",
        "herd.log",
        "herd.sock",
        "logs/web-out.log",
        "logs/web-error.log",
    ] {
        assert_eq!(mode(&d.path().join(f)), 0o600, "{f}");
    }
}

#[test]
fn idle_connections_never_lock_the_cli_out() {
    let d = Daemon::new();
    let sock = d.path().join("herd.sock");
    // 500 clients that connect and say nothing (it used to take 128 to
    // block every verb for 10 s a round: `herd list` took 30 s).
    let idle: Vec<UnixStream> = (0..500)
        .map(|i| UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let started = std::time::Instant::now();
    let out = d.ok(&["list"]);
    let took = started.elapsed();
    assert!(out.contains("no apps"), "{out}");
    assert!(took < Duration::from_secs(3), "`herd list` took {took:?}");
    // The daemon dropped the oldest idle ones to make room.
    let mut first = idle.into_iter().next().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(first.read(&mut buf).unwrap(), 0, "closed by the daemon");
}

#[test]
fn a_client_that_never_says_hello_is_dropped_at_its_deadline() {
    let d = Daemon::new();
    let mut s = UnixStream::connect(d.path().join("herd.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "dropped after {took:?}");
}

const TOKEN: &str = "tok-4f1c9a";
const PASSWORD: &str = "pw-77b2e0";
const DSN: &str = "dsn-0c33aa";

/// Each secret value in `text`.
fn leaked<'a>(text: &str, secrets: &[&'a str]) -> Vec<&'a str> {
    secrets
        .iter()
        .copied()
        .filter(|s| text.contains(s))
        .collect()
}

#[test]
fn secret_env_values_are_hidden_in_show_list_jlist_and_herds_own_log() {
    let d = Daemon::unstarted();
    let all = [TOKEN, PASSWORD, DSN];
    // The CLI's environment goes with the app (and, here, to the daemon it
    // starts: HERD_SECRET_NAMES adds the operator's own names).
    let out = d
        .command(&["start", "--name", "web", "--listen", ANY, worker_bin()])
        .env("SECRET_TOKEN", TOKEN)
        .env("DATABASE_PASSWORD", PASSWORD)
        .env("SENTRY_DSN", DSN)
        .env("HERD_SECRET_NAMES", "*_DSN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(leaked(&text(&out.stdout), &all), [] as [&str; 0]);
    d.wait_online("web", 1);

    for args in [
        &["show", "web"][..],
        &["show", "web", "--json"],
        &["list"],
        &["list", "--json"],
        &["jlist"],
    ] {
        let out = d.ok(args);
        assert_eq!(leaked(&out, &all), [] as [&str; 0], "{args:?}: {out}");
    }
    let shown: Value = serde_json::from_str(&d.ok(&["show", "web", "--json"])).unwrap();
    let env = shown["definition"]["spec"]["env"].to_string();
    assert!(
        env.contains("SECRET_TOKEN") && env.contains("[hidden"),
        "{env}"
    );
    assert!(env.contains(r#""PATH","#), "plain values stay: {env}");

    // Asked for, they are shown.
    let out = d.ok(&["show", "web", "--json", "--show-secrets"]);
    assert_eq!(leaked(&out, &all), all, "{out}");
    for args in [
        &["list", "--json", "--show-secrets"][..],
        &["jlist", "--show-secrets"],
    ] {
        d.ok(args);
    }

    // Saved whole (resurrect needs them), owner-only.
    d.ok(&["save"]);
    let dump = std::fs::read_to_string(d.path().join("dump.json")).unwrap();
    assert_eq!(leaked(&dump, &all), all);
    d.ok(&["restart", "web"]);
    assert_eq!(leaked(&d.log(), &all), [] as [&str; 0], "{}", d.log());
}

#[test]
fn secret_env_values_are_hidden_on_the_status_page_and_in_metrics() {
    let d = Daemon::with_metrics(false);
    let addr = d.http.clone().unwrap();
    let out = d
        .command(&["start", "--name", "web", "--listen", ANY, worker_bin()])
        .env("SECRET_TOKEN", TOKEN)
        .env("DATABASE_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.wait_online("web", 1);
    for path in ["/", "/api/apps", "/metrics", "/readyz?app=web"] {
        let (status, body) = http_get(&addr, path, Duration::from_secs(5)).unwrap();
        assert!(status < 500, "{path}: {status}");
        assert_eq!(
            leaked(&body, &[TOKEN, PASSWORD]),
            [] as [&str; 0],
            "{path}: {body}"
        );
    }
}

#[test]
fn max_memory_restart_0_is_refused_instead_of_replacing_workers_forever() {
    let d = Daemon::new();
    let err = d.fails(
        &[
            "start",
            "--name",
            "web",
            "--max-memory-restart",
            "0",
            worker_bin(),
        ],
        2,
    );
    assert!(err.contains("0 is no limit"), "{err}");
    assert!(d.list().is_empty());
    assert!(!d.path().join("logs/web-out.log").exists());
}

#[test]
fn a_failed_start_leaves_no_empty_log_files() {
    let d = Daemon::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let err = d.fails(
        &["start", "--name", "busy", "--listen", &port, worker_bin()],
        1,
    );
    assert!(err.contains("already in use"), "{err}");
    let left: Vec<_> = std::fs::read_dir(d.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A log file that was there before is kept, even if empty.
    std::fs::write(d.path().join("logs/busy-out.log"), "").unwrap();
    d.fails(
        &["start", "--name", "busy", "--listen", &port, worker_bin()],
        1,
    );
    assert!(d.path().join("logs/busy-out.log").exists());
}

/// A herd.toml whose one app carries `bytes` of environment.
fn big_app_file(dir: &Path, name: &str, bytes: usize) -> PathBuf {
    let chunk = 64 << 10;
    let mut toml = format!(
        "[[apps]]\nname = \"{name}\"\nscript = \"{}\"\nrestart = \"never\"\n\n[apps.env]\n",
        worker_bin()
    );
    for i in 0..bytes.div_ceil(chunk) {
        toml.push_str(&format!("BIG_{i} = \"{}\"\n", "x".repeat(chunk)));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn show_works_for_any_definition_start_accepted_and_start_refuses_one_show_could_not_send() {
    let d = Daemon::new();
    // Near the frame cap: used to be accepted, then `show` failed for good.
    let file = big_app_file(d.path(), "huge", 3 << 20);
    let err = d.fails(&["start", file.to_str().unwrap()], 2);
    assert!(err.contains("herd show") && err.contains("KiB"), "{err}");
    assert!(d.list().is_empty());

    // Just under the definition cap: started, and shown, as text and JSON.
    let limit = herd_protocol::MAX_DEFINITION;
    let file = big_app_file(d.path(), "big", limit - (256 << 10));
    d.ok(&["start", file.to_str().unwrap()]);
    assert!(d.ok(&["show", "big"]).contains("big"));
    let shown: Value = serde_json::from_str(&d.ok(&["show", "big", "--json"])).unwrap();
    assert_eq!(shown["app"]["name"], "big");
    d.ok(&["show", "big", "--json", "--show-secrets"]);
}
