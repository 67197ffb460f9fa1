//! Log files as pm2 names and writes them (issue 12 item 8), end to end:
//! `NAME-out.log`/`NAME-error.log` for fork and cluster apps, one file per
//! instance with `merge_logs: false` (numbered by instance, kept across a
//! restart), `log_file`, `log_type: json` (whole lines, pm2's fields, a line
//! written in two pieces still one object), pm2's `time: true` format, the
//! renaming of an older herd's `NAME-err.log`, and `herd logs --raw`,
//! `--timestamp`, `--json`. Real daemons in temporary homes, real processes
//! (bash scripts; Node for cluster mode); each test's daemon stops them all.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use herd_testkit::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `herd ARGS` run in `dir` (pm2 files take the app's cwd from there).
fn run_in(d: &Daemon, dir: &Path, args: &[&str]) -> Output {
    let mut c = d.command(args);
    c.current_dir(dir);
    c.output().expect("run herd")
}

fn ok_in(d: &Daemon, dir: &Path, args: &[&str]) -> String {
    let out = run_in(d, dir, args);
    assert!(
        out.status.success(),
        "herd {args:?} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, body).unwrap();
    path
}

/// A bash app that says which instance it is on both streams, then waits.
fn instance_script(dir: &Path) -> PathBuf {
    write(
        dir,
        "job.sh",
        "echo \"out from $NODE_APP_INSTANCE\"\necho \"err from $NODE_APP_INSTANCE\" >&2\nexec sleep 1000\n",
    )
}

/// A Node app (cluster mode under herd) that says which instance it is on
/// both streams once it listens on $PORT.
fn instance_node_app(dir: &Path) -> PathBuf {
    write(
        dir,
        "server.js",
        "require('node:http').createServer((q, s) => s.end('ok')).listen(process.env.PORT, () => {\n\
           console.log(`out from ${process.env.NODE_APP_INSTANCE}`);\n\
           console.error(`err from ${process.env.NODE_APP_INSTANCE}`);\n\
         });\n",
    )
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Wait until `path` holds a line equal to each of `lines` (after any
/// timestamp prefix); its text.
fn wait_lines(path: &Path, lines: &[&str]) -> String {
    let mut last = String::new();
    let ok = wait_until(WAIT, || {
        last = read(path);
        lines.iter().all(|want| {
            last.lines()
                .any(|l| l == *want || l.ends_with(&format!(": {want}")))
        })
    });
    assert!(ok, "{} never held {lines:?}: {last:?}", path.display());
    last
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn fork_apps_write_pm2s_out_and_error_files_shared_by_their_instances() {
    let d = Daemon::new();
    let app = TempDir::new("logs-fork");
    let script = instance_script(app.path());
    d.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "my job",
        "-i",
        "2",
    ]);
    assert_eq!(d.app("my job")["mode"], "fork");
    let logs = d.path().join("logs");
    // The name in pm2's file-safe form; every instance's lines in one file per stream.
    wait_lines(&logs.join("my-job-out.log"), &["out from 0", "out from 1"]);
    let err = wait_lines(
        &logs.join("my-job-error.log"),
        &["err from 0", "err from 1"],
    );
    assert!(!err.contains("out from"), "{err}");
    assert_eq!(files_in(&logs), ["my-job-error.log", "my-job-out.log"]);
    let app_info = d.app("my job");
    assert_eq!(
        app_info["err_log"],
        logs.join("my-job-error.log").to_str().unwrap()
    );
    assert_eq!(app_info["merge_logs"], true);
}

#[test]
fn cluster_apps_write_pm2s_names_merged_by_default() {
    need_node!();
    let d = Daemon::new();
    let app = TempDir::new("logs-cluster");
    let server = instance_node_app(app.path());
    let port = format!("PORT={}", free_port());
    d.ok(&[
        "start",
        server.to_str().unwrap(),
        "--name",
        "web",
        "-i",
        "2",
        "--env",
        &port,
    ]);
    assert_eq!(d.app("web")["mode"], "cluster");
    let logs = d.path().join("logs");
    wait_lines(&logs.join("web-out.log"), &["out from 0", "out from 1"]);
    wait_lines(&logs.join("web-error.log"), &["err from 0", "err from 1"]);
    assert_eq!(files_in(&logs), ["web-error.log", "web-out.log"]);
}

#[test]
fn merge_logs_false_gives_each_instance_its_own_files_numbered_by_instance() {
    let d = Daemon::new();
    let app = TempDir::new("logs-split");
    instance_script(app.path());
    write(
        app.path(),
        "ecosystem.json",
        r#"{"apps": [{"name": "split", "script": "job.sh", "instances": 2,
                      "merge_logs": false, "log_file": true}]}"#,
    );
    ok_in(&d, app.path(), &["start", "ecosystem.json"]);
    let logs = d.path().join("logs");
    for i in 0..2 {
        let out = wait_lines(
            &logs.join(format!("split-out-{i}.log")),
            &[&format!("out from {i}")],
        );
        assert_eq!(out, format!("out from {i}\n"), "instance {i}'s lines only");
        let err = wait_lines(
            &logs.join(format!("split-error-{i}.log")),
            &[&format!("err from {i}")],
        );
        assert_eq!(err, format!("err from {i}\n"));
        // log_file: true → both streams, per instance too.
        wait_lines(
            &logs.join(format!("split-{i}.log")),
            &[&format!("out from {i}"), &format!("err from {i}")],
        );
    }
    assert!(!logs.join("split-out.log").exists());
    assert!(!logs.join("split-error.log").exists());

    // The number is the instance: a replaced worker keeps writing its slot's file.
    d.ok(&["restart", "split:1"]);
    let out = wait_lines(&logs.join("split-out-1.log"), &["out from 1"]);
    assert!(wait_until(WAIT, || read(&logs.join("split-out-1.log"))
        .matches("out from 1")
        .count()
        == 2));
    assert!(!out.contains("out from 0"));
    assert_eq!(read(&logs.join("split-out-0.log")), "out from 0\n");

    // herd logs follows each instance's files, labelled APP:N.
    let tail = d.ok(&["logs", "split", "--nostream"]);
    for want in [
        "split:0|out | out from 0",
        "split:1|out | out from 1",
        "split:0|err | err from 0",
        "split:1|err | err from 1",
    ] {
        assert!(tail.contains(want), "{want}: {tail}");
    }
    // jlist: each process's own files.
    let jlist: Vec<Value> = serde_json::from_str(&d.ok(&["jlist"])).unwrap();
    let env = &jlist[1]["pm2_env"];
    assert_eq!(env["merge_logs"], false);
    assert_eq!(
        env["pm_out_log_path"],
        logs.join("split-out-1.log").to_str().unwrap()
    );
    assert_eq!(
        env["pm_log_path"],
        logs.join("split-1.log").to_str().unwrap()
    );
}

#[test]
fn merge_logs_false_in_cluster_mode_splits_a_node_apps_files() {
    need_node!();
    let d = Daemon::new();
    let app = TempDir::new("logs-split-cluster");
    instance_node_app(app.path());
    write(
        app.path(),
        "ecosystem.json",
        &format!(
            r#"{{"apps": [{{"name": "api", "script": "server.js", "instances": 2,
                 "exec_mode": "cluster", "merge_logs": false,
                 "out_file": "logs/api-2024.log", "env": {{"PORT": {}}}}}]}}"#,
            free_port()
        ),
    );
    ok_in(&d, app.path(), &["start", "ecosystem.json"]);
    assert_eq!(d.app("api")["mode"], "cluster");
    // pm2's rule on a path of the user's: a trailing -<digits> is replaced.
    for i in 0..2 {
        let out = wait_lines(
            &app.path().join(format!("logs/api-{i}.log")),
            &[&format!("out from {i}")],
        );
        assert_eq!(out, format!("out from {i}\n"));
        wait_lines(
            &d.path().join(format!("logs/api-error-{i}.log")),
            &[&format!("err from {i}")],
        );
    }
    assert!(!app.path().join("logs/api-2024.log").exists());
}

#[test]
fn json_lines_parse_and_carry_pm2s_fields() {
    let d = Daemon::new();
    let app = TempDir::new("logs-json");
    write(
        app.path(),
        "say.sh",
        "printf '%s\\n' 'a \"quoted\" word' 'tab\there' 'back\\slash' 'ünïcødé'\n\
         echo 'oops' >&2\nexec sleep 1000\n",
    );
    write(
        app.path(),
        "ecosystem.json",
        r#"{"apps": [{"name": "js", "script": "say.sh", "log_type": "json", "log_file": "both.log"}]}"#,
    );
    ok_in(&d, app.path(), &["start", "ecosystem.json"]);
    let id = d.app("js")["id"].as_u64().unwrap();
    let logs = d.path().join("logs");
    let mut out = String::new();
    assert!(wait_until(WAIT, || {
        out = read(&logs.join("js-out.log"));
        out.lines().count() == 4
    }));
    let objects: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = objects
        .iter()
        .map(|o| o["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["a \"quoted\" word", "tab\there", "back\\slash", "ünïcødé"]
    );
    for o in &objects {
        assert_eq!(o["type"], "out");
        assert_eq!(o["app_name"], "js");
        assert_eq!(o["process_id"], id);
        assert_eq!(o["instance"], 0);
        assert!(iso_utc_ms(o["timestamp"].as_str().unwrap()), "{o}");
    }
    // pm2's keys first, in pm2's order.
    for line in out.lines() {
        let at: Vec<usize> = [
            "message",
            "timestamp",
            "type",
            "process_id",
            "app_name",
            "instance",
        ]
        .iter()
        .map(|k| line.find(&format!("\"{k}\":")).unwrap_or(usize::MAX))
        .collect();
        assert!(at[0] == 1 && at.windows(2).all(|w| w[0] < w[1]), "{line}");
    }
    let err = wait_lines_json(&logs.join("js-error.log"), 1);
    assert_eq!(
        (err[0]["message"].as_str(), err[0]["type"].as_str()),
        (Some("oops"), Some("err"))
    );
    // log_file: both streams, as JSON too, relative to the app's cwd.
    let both = wait_lines_json(&app.path().join("both.log"), 5);
    assert_eq!(both.iter().filter(|o| o["type"] == "err").count(), 1);
}

/// Wait until `path` has `n` lines; each parsed as JSON.
fn wait_lines_json(path: &Path, n: usize) -> Vec<Value> {
    let mut text = String::new();
    assert!(
        wait_until(WAIT, || {
            text = read(path);
            text.lines().count() >= n
        }),
        "{}: {text:?}",
        path.display()
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `2026-12-03T12:08:26.010Z`.
fn iso_utc_ms(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19, 20..23]
            .iter()
            .all(|r| b[r.clone()].iter().all(u8::is_ascii_digit))
}

#[test]
fn a_line_written_in_two_pieces_is_one_json_object() {
    let d = Daemon::new();
    let app = TempDir::new("logs-split-line");
    // Two writes half a second apart: herd reads them apart, and joins them.
    let script = write(
        app.path(),
        "halves.sh",
        "printf 'first half, '\nsleep 0.5\nprintf 'second half\\n'\nexec sleep 1000\n",
    );
    d.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "halves",
        "--log-type",
        "json",
    ]);
    let objects = wait_lines_json(&d.path().join("logs/halves-out.log"), 1);
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(objects[0]["message"], "first half, second half");
}

#[test]
fn time_true_in_a_pm2_file_is_pm2s_format() {
    let d = Daemon::new();
    let app = TempDir::new("logs-time");
    instance_script(app.path());
    // pm2: time: true means YYYY-MM-DDTHH:mm:ss (local, no zone), over log_date_format.
    write(
        app.path(),
        "ecosystem.json",
        r#"{"apps": [{"name": "t", "script": "job.sh", "time": true, "log_date_format": "YYYY"}]}"#,
    );
    ok_in(&d, app.path(), &["start", "ecosystem.json"]);
    let out = wait_lines(&d.path().join("logs/t-out.log"), &["out from 0"]);
    let line = out.lines().next().unwrap();
    let b = line.as_bytes();
    assert_eq!(&line[19..], ": out from 0", "{line}");
    assert!(
        b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':',
        "{line}"
    );
    assert!(b[..4].iter().all(u8::is_ascii_digit), "{line}");
}

#[test]
fn an_older_herds_err_log_becomes_pm2s_error_log_with_its_lines() {
    let d = Daemon::new();
    let logs = d.path().join("logs");
    fs::write(logs.join("web-err.log"), "from before the upgrade\n").unwrap();
    fs::write(logs.join("web-err.log.1"), "older still\n").unwrap();
    let app = TempDir::new("logs-upgrade");
    let script = instance_script(app.path());
    d.ok(&["start", script.to_str().unwrap(), "--name", "web"]);
    let err = wait_lines(
        &logs.join("web-error.log"),
        &["from before the upgrade", "err from 0"],
    );
    assert!(err.starts_with("from before the upgrade\n"), "{err}");
    assert_eq!(read(&logs.join("web-error.log.1")), "older still\n");
    assert!(!logs.join("web-err.log").exists());
    assert!(!logs.join("web-err.log.1").exists());
    assert!(
        d.log().contains("web-err.log is now web-error.log"),
        "{}",
        d.log()
    );
}

#[test]
fn logs_raw_timestamp_and_json_print_each_line_as_asked() {
    let d = Daemon::new();
    let app = TempDir::new("logs-print");
    // Two past lines, then a tick every 200 ms on stdout.
    let script = write(
        app.path(),
        "tick.sh",
        "echo 'past out'\necho 'past err' >&2\ni=0\nwhile :; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done\n",
    );
    d.ok(&["start", script.to_str().unwrap(), "--name", "tick"]);
    wait_lines(&d.path().join("logs/tick-error.log"), &["past err"]);

    // --raw: the lines alone, stderr's on stderr; no headers.
    let out = d.herd(&["logs", "tick", "--raw", "--nostream", "--lines", "1"]);
    assert!(out.status.success());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout
            .lines()
            .all(|l| l == "past out" || l.starts_with("tick ")),
        "{stdout}"
    );
    assert_eq!(stderr, "past err\n");

    // --timestamp: new lines get the time they are printed, pm2's default format.
    let lines = follow(
        &d,
        &["logs", "tick", "--out", "--lines", "0", "--timestamp"],
        2,
    );
    for l in &lines {
        // 2026-12-03-13:45:01 tick|out | tick 7
        let b = l.as_bytes();
        assert!(
            b.len() > 20 && b[4] == b'-' && b[10] == b'-' && b[13] == b':',
            "{l}"
        );
        assert!(l[19..].starts_with(" tick|out | tick "), "{l}");
    }
    // A format of one's own; --raw drops the prefix, not the time.
    let lines = follow(
        &d,
        &[
            "logs",
            "tick",
            "--out",
            "--lines",
            "0",
            "--raw",
            "--timestamp",
            "[at] HH:mm",
        ],
        1,
    );
    assert!(
        lines[0].starts_with("at ") && lines[0][8..].starts_with(" tick "),
        "{lines:?}"
    );
    // A word with no date token is an app's name taken for the format: refused.
    let err = d.fails(&["logs", "--timestamp", "tick"], 2);
    assert!(err.contains("herd logs tick --timestamp"), "{err}");

    // --json: the past lines with a null timestamp, new ones with when they were read.
    let lines = follow(&d, &["logs", "tick", "--err", "--json", "--lines", "1"], 1);
    let past: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(past["message"], "past err");
    assert_eq!(past["stream"], "err");
    assert_eq!(past["timestamp"], Value::Null);
    let lines = follow(&d, &["logs", "tick", "--out", "--json", "--lines", "0"], 1);
    let new: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(new["app"], "tick");
    assert!(
        new["message"].as_str().unwrap().starts_with("tick "),
        "{new}"
    );
    assert!(iso_utc_ms(new["timestamp"].as_str().unwrap()), "{new}");
}

/// Run a streaming `herd logs` until it printed `n` lines; those lines.
fn follow(d: &Daemon, args: &[&str], n: usize) -> Vec<String> {
    let dir = TempDir::new("logs-follow");
    let file = dir.join("out.txt");
    let mut child = d
        .command(args)
        .stdout(Stdio::from(fs::File::create(&file).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .expect("start herd logs");
    let mut lines = Vec::new();
    let got = wait_until(WAIT, || {
        lines = read(&file)
            .lines()
            .filter(|l| !l.starts_with("==> "))
            .map(String::from)
            .collect();
        lines.len() >= n
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(got, "herd {args:?} printed {lines:?}");
    lines.truncate(n);
    lines
}
