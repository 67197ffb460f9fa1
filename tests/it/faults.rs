//! Faults of the machine under the daemon (issue 15.5, the parts that need
//! no supervisor rework): a crash between writing the saved list and
//! renaming it into place (a test-only fault point, `HERD_FAULT`, compiled
//! in by the `fault-points` feature the suite builds with), and a full disk
//! under the logs and `HERD_HOME` (small tmpfs mounts; root only).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herd_testkit::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// The app names in the saved list, read as `resurrect` reads it.
fn saved_names(home: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(home.join("dump.json")).expect("dump.json readable");
    let dump: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("dump.json is not whole JSON ({e}): {text}"));
    let mut names: Vec<String> = dump["apps"]
        .as_array()
        .expect("a saved list")
        .iter()
        .map(|a| a["spec"]["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

fn names(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = d
        .list()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_crash_between_writing_and_renaming_the_saved_list_leaves_the_previous_one() {
    let d = Daemon::new();
    d.start_fixture("one", &["--ready-delay", "100ms"]);
    d.wait_online("one", 1);
    assert!(d.ok(&["save"]).contains("saved 1 app(s)"));
    d.ok(&["kill"]);

    // A daemon that dies (SIGKILL) after the new list is written and synced,
    // before it is renamed over the old one.
    let fault = "before-rename:dump.json";
    let out = d
        .command(&["resurrect"])
        .env("HERD_FAULT", fault)
        .output()
        .unwrap();
    assert!(out.status.success(), "resurrect: {out:?}");
    let daemon = d.daemon_pid().expect("a daemon");
    d.wait_online("one", 1);
    d.start_fixture("two", &["--ready-delay", "100ms"]);
    d.wait_online("two", 1);
    let out = d.herd(&["save"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "save went through the fault: {said}");
    assert!(
        wait_until(T, || !process_alive(daemon)),
        "the daemon survived its fault point"
    );
    assert!(
        d.log().contains(&format!("fault point {fault}")),
        "the daemon did not die at the fault point: {}",
        d.log()
    );
    // The list on disk is the previous one, whole.
    assert_eq!(saved_names(d.path()), ["one"]);

    // The apps ran on under their supervisors: the next daemon adopts both
    // (resurrect adds none of the saved list's, which run already), and
    // saves again over the leftover.
    d.ok(&["resurrect"]);
    d.wait_online("one", 1);
    assert_eq!(names(&d), ["one", "two"]);
    d.start_fixture("three", &["--ready-delay", "100ms"]);
    d.wait_online("three", 1);
    assert!(d.ok(&["save"]).contains("saved 3 app(s)"));
    assert_eq!(saved_names(d.path()), ["one", "three", "two"]);
    assert!(!d.path().join("dump.json.tmp").exists());
}

/// A tmpfs of `size` mounted on `dir` (owner-only), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (the test is skipped, or fails under CI) when this process
    /// may not mount.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                skip_or_fail(&format!(
                    "cannot mount a tmpfs (run the tests as root for the full-disk test): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                skip_or_fail(&format!("cannot run mount: {e}"));
                None
            }
        }
    }

    /// Fill it: a file that takes all the room left; removing it frees it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // The last partial block too.
        while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A daemon whose home (and its logs/) are small tmpfs mounts. Dropped in
/// this order: the daemon is stopped while its home is still there.
struct FullDiskSetup {
    d: Daemon,
    logs: Tmpfs,
    home: Tmpfs,
}

/// Whole `spam <i> <x's> end` lines of a log, or the first broken one.
fn spam_numbers(log: &str) -> Result<Vec<u64>, String> {
    let mut v = Vec::new();
    for line in log.lines() {
        if line.starts_with("worker ") && line.ends_with(" serving") {
            continue; // the fixture's first line
        }
        let mut parts = line.split(' ');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("spam"), Some(i), Some(pad), Some("end"), None)
                if pad.bytes().all(|b| b == b'x') =>
            {
                v.push(i.parse().map_err(|_| format!("bad number: {line:.80}"))?)
            }
            _ => return Err(format!("a partial or broken line: {line:.80}")),
        }
    }
    if !log.is_empty() && !log.ends_with('\n') {
        return Err("the file ends in the middle of a line".into());
    }
    Ok(v)
}

#[test]
fn a_full_disk_under_the_logs_loses_output_only_with_one_warning_and_no_partial_line() {
    let d = Daemon::unstarted();
    // HERD_HOME on a small tmpfs, and its logs/ on another (so the home's
    // own log still has room for the warning; the home's turn comes below).
    // logs/ holds more than the supervisor may still have queued when room
    // returns (64 batches of at most 64 KiB, and the pipe's 64 KiB): that
    // backlog is written first and must not fill the disk again.
    let Some(home) = Tmpfs::mount(d.path(), "1m") else {
        return;
    };
    let Some(logs) = Tmpfs::mount(&d.path().join("logs"), "8m") else {
        return;
    };
    let setup = FullDiskSetup { d, logs, home };
    let (d, logs_fs, home_fs) = (&setup.d, &setup.logs, &setup.home);
    d.ok(&["ping"]);
    let addr = d.start_fixture("spam", &["--ready-delay", "100ms"]);
    d.wait_online("spam", 1);
    let out_log = d.path().join("logs/spam-out.log");
    let read_log = || std::fs::read_to_string(&out_log).unwrap_or_default();
    let spam = |n: usize| {
        let r = http_request(&addr, &format!("/spam?n={n}&len=300"), T).expect("the app serves");
        assert_eq!(r.status, 200);
    };
    spam(10);
    assert!(wait_until(T, || spam_numbers(&read_log()).is_ok_and(|v| v.len() == 10)));

    // The disk fills; the app writes far more than fits, serving all along.
    let filler = logs_fs.fill();
    let worker = worker_pids(&d.app("spam"))[0];
    for _ in 0..20 {
        spam(500);
    }
    // What the daemon reads it drops; the app never blocks on it.
    assert_eq!(wait_http_ok(&addr, T), worker);
    assert!(wait_until(T, || d.log().contains("cannot write")));
    spam(500);
    let warnings = d.log().matches("cannot write").count();
    assert_eq!(
        warnings,
        1,
        "one warning while the disk is full:\n{}",
        d.log()
    );
    assert!(
        d.log().contains("No space left on device"),
        "the warning says why:\n{}",
        d.log()
    );
    spam_numbers(&read_log()).expect("no partial line on a full disk");

    // Room again: logging resumes, with what was lost said once.
    std::fs::remove_file(&filler).unwrap();
    // (What the app's supervisor had read but not yet written when the
    // room came back is written first: the newest lines come last.) The
    // three new lines are shorter than the others, so the first lines of a
    // batch still being written are never taken for them.
    let r = http_request(&addr, "/spam?n=3&len=7", T).expect("the app serves");
    assert_eq!(r.status, 200);
    const NEWEST: &str = "spam 0 xxxxxxx end\nspam 1 xxxxxxx end\nspam 2 xxxxxxx end\n";
    let ok = wait_until(T, || read_log().ends_with(NEWEST));
    assert!(
        ok,
        "logging never resumed (the log ends {:?}):\n{}",
        spam_numbers(&read_log()).map(|v| v[v.len().saturating_sub(5)..].to_vec()),
        d.log()
    );
    assert!(
        wait_until(T, || d.log().contains("again;")),
        "no word that logging resumed:\n{}",
        d.log()
    );
    let numbers = spam_numbers(&read_log()).expect("only whole lines after the disk was full");
    assert!(
        numbers.ends_with(&[0, 1, 2]),
        "the new lines are whole: {numbers:?}"
    );
    assert_eq!(d.app("spam")["status"], "online");
    assert_eq!(
        worker_pids(&d.app("spam")),
        [worker],
        "the app was never restarted"
    );

    // HERD_HOME itself full: `herd save` fails and says why, the previous
    // list stays, no partial temporary file is left; the apps serve on.
    assert!(d.ok(&["save"]).contains("saved 1 app(s)"));
    let saved = std::fs::read(d.path().join("dump.json")).unwrap();
    d.ok(&["start", "--name", "more", "--listen", ANY, worker_bin()]);
    let home_filler = home_fs.fill();
    let out = d.herd(&["save"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "save on a full home succeeded: {err}"
    );
    assert!(err.contains("No space left"), "save on a full home: {err}");
    assert_eq!(std::fs::read(d.path().join("dump.json")).unwrap(), saved);
    assert!(!d.path().join("dump.json.tmp").exists());
    assert_eq!(wait_http_ok(&addr, T), worker);
    std::fs::remove_file(home_filler).unwrap();
    assert!(d.ok(&["save"]).contains("saved 2 app(s)"));
}
