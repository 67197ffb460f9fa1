//! Integration tests of the app's own reloads: `--watch` (file changes)
//! and `--cron-restart` (a schedule), under `herd run` and under the daemon.
//! A real herd, real workers (the fixture server behind a small shell script
//! that "loads the code" from a file, and a real Node app), real inotify,
//! real load on 127.0.0.1.
//!
//! The point of both: a reload, not pm2's restart — the new workers take
//! over before the old ones drain, so no request fails, and when the new
//! version cannot start (a half-saved or broken edit) the old workers keep
//! serving and herd says why.
//!
//! Every wait polls against a deadline; every process is cleaned up by
//! `herd_testkit::Herd` / `Daemon` even when a test fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use herd_testkit::*;

/// Generous bounds: debug builds on a shared 2-CPU machine.
const START: Duration = Duration::from_secs(15);
const T: Duration = Duration::from_secs(15);

const TRIGGERED_WATCH: &str = "watch: {*} changed";
/// The watcher is in place: every edit from now on is seen.
const WATCHING: &str = "watch: watching {} folder(s) for changes";
const TRIGGERED_CRON: &str = "cron_restart '{*}' is due; reloading";

/// An app folder: `version` holds the "code"; `app.sh` starts the fixture
/// server unless the version is `broken…`, in which case it fails at start
/// as a syntax error would, with a last word on stderr.
fn app_dir(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    std::fs::write(d.join("version"), "1\n").unwrap();
    std::fs::create_dir(d.join("src")).unwrap();
    let script = format!(
        r#"v=$(cat version)
case "$v" in
  broken*) echo "SyntaxError: version '$v' does not parse" >&2; exit 1 ;;
esac
echo "starting version $v"
exec {} --notify-ready "$@"
"#,
        worker_bin()
    );
    std::fs::write(d.join("app.sh"), script).unwrap();
    d
}

/// `herd run` of the app in `dir` with 2 workers (unless `opts` say), ready
/// when they say so, and `opts`.
fn run_app(dir: &Path, opts: &[&str]) -> Herd {
    let mut args = vec!["run"];
    if !opts.contains(&"-i") {
        args.extend_from_slice(&["-i", "2"]);
    }
    args.extend_from_slice(&[
        "--listen",
        ANY,
        "--wait-ready",
        "--cwd",
        dir.to_str().unwrap(),
    ]);
    args.extend_from_slice(opts);
    args.extend_from_slice(&["--", "/bin/sh", "app.sh"]);
    Herd::start(&args)
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
}

/// Every `herd:` line matching `pattern` at or after stderr line `from`.
fn herd_lines_after(h: &Herd, from: usize, pattern: &str) -> Vec<String> {
    h.stderr_lines()
        .into_iter()
        .skip(from)
        .filter(|l| l.contains(pat::HERD_PREFIX) && match_pat(pattern, l).is_some())
        .collect()
}

/// The pids answering on `addr` (a few fresh connections).
fn answering(addr: &str) -> BTreeSet<i32> {
    (0..40)
        .filter_map(|_| http_request(addr, "/", Duration::from_secs(3)).ok())
        .filter_map(|r| r.pid())
        .collect()
}

#[test]
fn an_edit_reloads_every_worker_with_no_failed_request_under_load() {
    let _s = serial();
    let dir = app_dir("watch-edit");
    let h = run_app(dir.path(), &["--watch"]);
    let addr = h.listen_addr();
    h.wait_stderr(WATCHING, START);
    let old = h.wait_online(0, 2, START);
    h.wait_serving(old.values().copied(), START);
    let old: BTreeSet<i32> = old.values().copied().collect();
    let load = Load::start(&addr, "/", 4, Duration::from_millis(2));
    load.wait_for("answers before the edit", T, |n, _| n >= 50);

    let mark = h.mark(Stream::Stderr);
    write(dir.path(), "version", "2\n");
    h.wait_stderr_after(mark, "watch: version changed", T);
    h.wait_stderr_after(mark, pat::RELOAD_FINISHED, T);
    let new: BTreeSet<i32> = h.wait_online(mark, 2, T).values().copied().collect();
    assert!(
        new.is_disjoint(&old),
        "every worker is new: {old:?} → {new:?}"
    );
    load.wait_for("answers from the new workers", T, |_, pids| {
        new.iter().all(|p| pids.contains(p))
    });
    let report = load.stop();
    assert_eq!(
        report.failed(),
        0,
        "no request fails during a watch reload: {report:?}; herd's stderr:\n{}",
        h.stderr_text()
    );
    assert!(
        h.stdout_lines()
            .iter()
            .any(|l| l.contains("starting version 2")),
        "the new workers run the new version"
    );
}

#[test]
fn a_broken_edit_leaves_the_old_workers_serving_and_says_why_then_the_fix_reloads() {
    let _s = serial();
    let dir = app_dir("watch-broken");
    let h = run_app(dir.path(), &["--watch"]);
    let addr = h.listen_addr();
    h.wait_stderr(WATCHING, START);
    let old = h.wait_online(0, 2, START);
    h.wait_serving(old.values().copied(), START);
    let old: BTreeSet<i32> = old.values().copied().collect();
    let load = Load::start(&addr, "/", 4, Duration::from_millis(2));
    load.wait_for("answers before the edit", T, |n, _| n >= 50);

    // The half-saved, broken file: the new worker fails at start.
    let mark = h.mark(Stream::Stderr);
    write(dir.path(), "version", "broken\n");
    let why = "reload aborted at worker 0: its replacement exited with code 1 before it was ready; \
               the old worker keeps serving; its last stderr line: SyntaxError: version 'broken' does not parse";
    h.wait_stderr_after(mark, why, T);
    let served_during = load.ok_so_far();
    load.wait_for("answers after the failed reload", T, |n, _| {
        n >= served_during + 50
    });
    assert_eq!(answering(&addr), old, "the old workers still serve");

    // The fix reloads.
    let mark = h.mark(Stream::Stderr);
    write(dir.path(), "version", "3\n");
    h.wait_stderr_after(mark, pat::RELOAD_FINISHED, T);
    let new: BTreeSet<i32> = h.wait_online(mark, 2, T).values().copied().collect();
    assert!(new.is_disjoint(&old), "{old:?} → {new:?}");
    let report = load.stop();
    assert_eq!(
        report.failed(),
        0,
        "no request fails through a broken edit and its fix: {report:?}; herd's stderr:\n{}",
        h.stderr_text()
    );
    let aborted = herd_lines_after(&h, 0, pat::RELOAD_ABORTED);
    assert_eq!(aborted.len(), 1, "one aborted reload: {aborted:?}");
}

#[test]
fn ignored_paths_do_not_reload() {
    let _s = serial();
    let dir = app_dir("watch-ignored");
    let h = run_app(dir.path(), &["--watch"]);
    h.wait_stderr(WATCHING, START);
    h.wait_online(0, 2, START);
    // pm2's default ignores, then one edit that counts: the reload it
    // triggers names that edit alone (an ignored one, before it, would have
    // opened the window and be named instead).
    let mark = h.mark(Stream::Stderr);
    write(dir.path(), "node_modules/pkg/index.js", "x");
    write(dir.path(), ".git/HEAD", "x");
    write(dir.path(), ".env", "x");
    write(dir.path(), "src/.app.js.swp", "x");
    write(dir.path(), "version", "2\n");
    h.wait_stderr_after(mark, pat::RELOAD_FINISHED, T);
    let why = herd_lines_after(&h, mark, TRIGGERED_WATCH);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].contains("watch: version changed"), "{why:?}");
    drop(h);

    // ignore_watch globs replace the default.
    let h = run_app(dir.path(), &["--watch", "--ignore-watch", "*.tmp,logs"]);
    h.wait_stderr(WATCHING, START);
    h.wait_online(0, 2, START);
    let mark = h.mark(Stream::Stderr);
    write(dir.path(), "data.tmp", "x");
    write(dir.path(), "logs/today.txt", "x");
    write(dir.path(), "src/logs/deep.txt", "x");
    write(dir.path(), "src/app.js", "x");
    h.wait_stderr_after(mark, pat::RELOAD_FINISHED, T);
    let why = herd_lines_after(&h, mark, TRIGGERED_WATCH);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].contains("watch: src/app.js changed"), "{why:?}");
}

#[test]
fn a_burst_of_50_edits_gives_one_or_two_reloads() {
    let _s = serial();
    let dir = app_dir("watch-burst");
    let h = run_app(dir.path(), &["--watch"]);
    h.wait_stderr(WATCHING, START);
    h.wait_online(0, 2, START);
    let mark = h.mark(Stream::Stderr);
    for i in 0..50 {
        write(dir.path(), "version", &format!("{}\n", 10 + i));
        write(dir.path(), &format!("src/file{}.js", i % 5), "x");
        std::thread::sleep(Duration::from_millis(5));
    }
    h.wait_stderr_after(mark, pat::RELOAD_FINISHED, T);
    // A second reload may follow (the edits that came during the first);
    // then nothing more.
    let quiet_since = |h: &Herd| {
        let n = herd_lines_after(h, mark, pat::RELOAD_STARTED).len();
        let finished = herd_lines_after(h, mark, pat::RELOAD_FINISHED).len();
        (n, finished)
    };
    let deadline = Instant::now() + T;
    loop {
        let (started, finished) = quiet_since(&h);
        if started == finished {
            // Settled if nothing new starts within 2 s.
            let m = h.mark(Stream::Stderr);
            if h.wait_line_after(
                Stream::Stderr,
                m,
                pat::RELOAD_STARTED,
                Duration::from_secs(2),
            )
            .is_none()
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "reloads never settled: {}",
            h.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let why = herd_lines_after(&h, mark, TRIGGERED_WATCH);
    let reloads = herd_lines_after(&h, mark, pat::RELOAD_STARTED);
    assert!(
        (1..=2).contains(&why.len()) && (1..=2).contains(&reloads.len()),
        "50 edits → {} trigger(s), {} reload(s): {why:?}",
        why.len(),
        reloads.len()
    );
    assert!(
        h.stdout_lines()
            .iter()
            .any(|l| l.contains("starting version 59")),
        "the last edit is what runs"
    );
}

#[test]
fn cron_every_second_reloads_on_time() {
    let _s = serial();
    let dir = app_dir("cron");
    let h = run_app(dir.path(), &["--cron-restart", "* * * * * *", "-i", "1"]);
    h.wait_online(0, 1, START);
    let started = Instant::now();
    // Three reloads, each finished: with one worker ready at once, each
    // takes well under the second between two.
    let mut seen = 0;
    let mut from = 0;
    while seen < 3 {
        let left = (started + T).saturating_duration_since(Instant::now());
        match h.wait_line_after(Stream::Stderr, from, TRIGGERED_CRON, left) {
            Some((i, _)) => {
                seen += 1;
                from = i + 1;
            }
            None => panic!(
                "{seen} cron reloads in {:?}; herd's stderr:\n{}",
                started.elapsed(),
                h.stderr_text()
            ),
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "3 reloads of a once-a-second schedule took {took:?}"
    );
    assert!(
        !herd_lines_after(&h, 0, pat::RELOAD_FINISHED).is_empty(),
        "{}",
        h.stderr_text()
    );
    assert!(herd_lines_after(&h, 0, pat::RELOAD_ABORTED).is_empty());
}

#[test]
fn a_bad_pattern_or_path_is_a_clear_error() {
    let dir = app_dir("watch-bad");
    let cwd = dir.path().to_str().unwrap();
    // (flags, what the error says)
    let cases: &[(&[&str], &str)] = &[
        (
            &["--watch=nowhere"],
            "--watch nowhere: no such file or folder",
        ),
        (
            &["--watch", "--ignore-watch", "[a-"],
            "--ignore-watch: invalid ignore_watch pattern '[a-'",
        ),
        (&["-c", "61 * * * *"], "invalid cron pattern '61 * * * *'"),
        (&["--cron-restart", "0 0 31 2 *"], "matches no date"),
        (
            &["--watch-delay", "soon", "--watch"],
            "invalid duration 'soon'",
        ),
    ];
    for (flags, says) in cases {
        let mut args = vec!["run", "--cwd", cwd];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "/bin/sh", "app.sh"]);
        let (status, _, stderr) = run_to_exit(&args, T);
        assert_eq!(status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
    // In a file: the file, the key and its line.
    write(
        dir.path(),
        "herd.toml",
        "[[apps]]\nname = \"a\"\ncommand = [\"/bin/sh\", \"app.sh\"]\nignore_watch = [\"ok\", \"[a-\"]\n",
    );
    let home = TempDir::new("watch-bad-home");
    let out = std::process::Command::new(herd_bin())
        .args(["start", dir.join("herd.toml").to_str().unwrap()])
        .env("HERD_HOME", home.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("herd.toml:4:")
            && stderr.contains("ignore_watch")
            && stderr.contains("'[a-'"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// Under the daemon.

#[test]
fn under_the_daemon_an_edit_reloads_and_its_own_log_files_do_not() {
    let _s = serial();
    let dir = app_dir("daemon-watch");
    let d = Daemon::new();
    let script = dir.join("app.sh");
    // Its log files in the watched folder: pm2 would restart it on every
    // line it logs (unless told to ignore them); herd knows they are its own.
    let out = dir.join("logs/out.log");
    let err = dir.join("logs/err.log");
    d.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "w",
        "-i",
        "2",
        "--listen",
        ANY,
        "--wait-ready",
        "--cwd",
        dir.path().to_str().unwrap(),
        "--watch",
        "-o",
        out.to_str().unwrap(),
        "-e",
        err.to_str().unwrap(),
    ]);
    let old: BTreeSet<i32> = d.wait_online("w", 2).into_iter().collect();
    assert!(
        wait_until(T, || d.log().contains("app w: watch: watching")),
        "{}",
        d.log()
    );
    let logged = wait_until(T, || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.matches("starting version 1").count() == 2)
    });
    assert!(logged, "both workers logged their start; {}", d.log());

    write(dir.path(), "version", "2\n");
    let reloaded = wait_until(T, || {
        let log = d.log();
        log.contains("app w: watch: version changed") && log.contains("app w: reload finished")
    });
    assert!(reloaded, "{}", d.log());
    let ok = wait_until(T, || {
        let now: BTreeSet<i32> = d.wait_online("w", 2).into_iter().collect();
        now.is_disjoint(&old)
    });
    assert!(ok, "every worker is new: {old:?}; {}", d.log());
    // The new workers log their start (the watcher runs by now): that is
    // no change of the app. An edit after it is the next trigger, and the
    // first path it names (had the log lines counted, they would be first).
    let logged = wait_until(T, || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.matches("starting version 2").count() == 2)
    });
    assert!(logged, "{}", d.log());
    write(dir.path(), "src/x.js", "x");
    let changed = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("app w: watch:") && l.contains(" changed"))
            .map(str::to_string)
            .collect()
    };
    let triggered = wait_until(T, || changed(&d.log()).len() >= 2);
    assert!(triggered, "{}", d.log());
    let log = d.log();
    let lines = changed(&log);
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[1].contains("app w: watch: src/x.js changed"), "{log}");
    let show = d.ok(&["show", "w"]);
    assert!(
        show.contains("watch  its folder; ignoring dot-names and node_modules"),
        "{show}"
    );
    // pm2's JSON shows what is watched.
    let jlist: serde_json::Value = serde_json::from_str(&d.ok(&["jlist"])).unwrap();
    assert_eq!(jlist[0]["pm2_env"]["watch"], true, "{jlist:#}");
}

#[test]
fn under_the_daemon_a_pm2_file_with_cron_restart_reloads_on_schedule() {
    need!(Need::Node);
    let _s = serial();
    let dir = app_dir("daemon-cron");
    let d = Daemon::new();
    write(
        dir.path(),
        "ecosystem.config.js",
        &format!(
            "module.exports = {{ apps: [{{ name: 'c', script: '{}', cwd: '{}', listen: '127.0.0.1:0', \
             wait_ready: true, instances: 1, cron_restart: '*/2 * * * * *' }}] }};\n",
            dir.join("app.sh").display(),
            dir.path().display()
        ),
    );
    d.ok(&["start", dir.join("ecosystem.config.js").to_str().unwrap()]);
    let first = d.wait_online("c", 1)[0];
    let ok = wait_until(T, || {
        d.log()
            .matches("app c: cron_restart '*/2 * * * * *' is due; reloading")
            .count()
            >= 2
    });
    assert!(ok, "two scheduled reloads within {T:?}: {}", d.log());
    let ok = wait_until(T, || d.wait_online("c", 1)[0] != first);
    assert!(ok, "a new worker serves: {}", d.log());
    // A stopped app stays stopped (pm2's cron would start it again).
    d.ok(&["stop", "c"]);
    let stopped_at = d.log().matches("is due; reloading").count();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        d.log().matches("is due; reloading").count(),
        stopped_at,
        "{}",
        d.log()
    );
    assert_eq!(d.app("c")["status"], "stopped");
}

// ---------------------------------------------------------------------------
// A real Node app.

#[test]
fn a_node_app_with_a_syntax_error_keeps_serving_until_the_fix() {
    need!(Need::Node);
    let _s = serial();
    let dir = TempDir::new("watch-node");
    let server = |version: &str| {
        format!(
            "const http = require('http');\n\
             const version = '{version}';\n\
             http.createServer((req, res) => res.end(`${{process.pid}} ${{version}}\\n`))\n\
               .listen(process.env.PORT);\n"
        )
    };
    write(dir.path(), "server.js", &server("v1"));
    let port = free_port().to_string();
    let h = Herd::start(&[
        "run",
        "-i",
        "2",
        "--cwd",
        dir.path().to_str().unwrap(),
        "--env",
        &format!("PORT={port}"),
        "--watch",
        "--",
        "node",
        "server.js",
    ]);
    let addr = format!("127.0.0.1:{port}");
    h.wait_stderr(WATCHING, START);
    h.wait_online(0, 2, START);
    let body = |addr: &str| http_get(addr, "/", Duration::from_secs(3)).map(|(_, b)| b);
    assert!(wait_until(T, || body(&addr).is_ok_and(|b| b.ends_with("v1\n"))));
    let load = Load::start(&addr, "/", 2, Duration::from_millis(5));
    load.wait_for("answers", T, |n, _| n >= 20);

    let mark = h.mark(Stream::Stderr);
    write(
        dir.path(),
        "server.js",
        "const http = require('http');\nhttp.createServer((req, res) => {\n",
    );
    h.wait_stderr_after(
        mark,
        "reload aborted at worker 0: its replacement exited with code 1",
        T,
    );
    assert!(body(&addr).unwrap().ends_with("v1\n"), "v1 still serves");

    let mark = h.mark(Stream::Stderr);
    write(dir.path(), "server.js", &server("v2"));
    h.wait_stderr_after(mark, pat::RELOAD_FINISHED, T);
    assert!(wait_until(T, || body(&addr).is_ok_and(|b| b.ends_with("v2\n"))));
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{report:?}; {}", h.stderr_text());
}
