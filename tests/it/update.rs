//! `herd update` (issue 14.3): the daemon and every app's supervisor
//! replaced in place by the herd binary put at their path, under
//! fresh-connection load on loopback (bounded in time and count). Each test
//! runs herd from a copy of its own (`bin/herd` in a temp dir), replaced by
//! a new inode as a package upgrade does, so the suite's binary is never
//! touched.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use herd_testkit::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// A herd home and a copy of herd that runs it.
struct Copied {
    dir: TempDir,
}

impl Copied {
    fn new(env: &[(&str, &Path)]) -> Copied {
        let dir = TempDir::new("update");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let h = Copied { dir };
        h.replace();
        let mut c = h.command(&["ping"]);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "ping: {out:?}");
        h
    }

    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    fn bin(&self) -> PathBuf {
        self.dir.join("bin/herd")
    }

    /// Put a new copy of herd at the path (a new inode; the old file lives
    /// on while processes run it).
    fn replace(&self) {
        let new = self.dir.join("bin/herd.new");
        std::fs::copy(herd_bin(), &new).unwrap();
        std::fs::rename(&new, self.bin()).unwrap();
        until_executable(&self.bin());
    }

    /// Put a program that is no herd at the path.
    fn break_binary(&self) {
        let new = self.dir.join("bin/herd.new");
        std::fs::write(&new, "#!/bin/sh\necho broken >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&new, self.bin()).unwrap();
        until_executable(&self.bin());
    }

    /// The copy at the path (the test's own binary when it is broken).
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin());
        c.args(args)
            .env("HERD_HOME", self.home())
            .env_remove("NODE_CLUSTER_SCHED_POLICY")
            .stdin(Stdio::null());
        c
    }

    /// The suite's herd on this home (a CLI that works whatever is at the path).
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(herd_bin())
            .args(args)
            .env("HERD_HOME", self.home())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "herd {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn list(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["list", "--json"])).unwrap()
    }

    fn app(&self, name: &str) -> Value {
        self.list()
            .into_iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no app {name}"))
    }

    /// Each current worker's (pid, restarts), once `n` are online.
    fn workers(&self, name: &str, n: usize) -> Vec<(i64, i64)> {
        let mut seen = Vec::new();
        let ok = wait_until(T, || {
            let app = self.app(name);
            seen = app["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["role"] == "current" && w["status"] == "online")
                .map(|w| (w["pid"].as_i64().unwrap(), w["restarts"].as_i64().unwrap()))
                .collect();
            seen.len() == n
        });
        assert!(ok, "{name}: {seen:?}");
        seen
    }

    fn daemon_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.home().join("herd.pid")).unwrap();
        text.trim().parse().unwrap()
    }

    /// The daemon and every supervisor of this home.
    fn herd_processes(&self) -> Vec<i32> {
        let home = self.home().display().to_string();
        let mut pids = vec![self.daemon_pid()];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.iter().any(|a| a == "supervise") && args.contains(&home) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids
    }

    /// Whether `pid` runs the file now at `bin/herd`.
    fn runs_new_file(&self, pid: i32) -> bool {
        let running = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
        let on_disk = std::fs::metadata(self.bin()).unwrap();
        (running.dev(), running.ino()) == (on_disk.dev(), on_disk.ino())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home().join("herd.log")).unwrap_or_default()
    }
}

impl Drop for Copied {
    fn drop(&mut self) {
        let _ = self.cli(&["kill"]);
        end_supervisors(&self.home());
    }
}

/// The pid of `app`'s supervisor (its pid file).
fn supervisor_of(h: &Copied, app: &str) -> i32 {
    let id = h.app(app)["id"].as_u64().unwrap();
    let text = std::fs::read_to_string(h.home().join(format!("apps/{id}.pid"))).unwrap();
    text.trim().parse().unwrap()
}

/// What process `pid` has open.
fn open_files(pid: i32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect()
}

/// Fresh-connection load on `addr`, bounded.
fn load(addr: &str) -> Load {
    Load::start_bounded(
        addr,
        "/",
        2,
        Duration::from_millis(2),
        Duration::from_secs(120),
        300_000,
    )
}

fn start(h: &Copied, name: &str, instances: &str, ready_delay: &str) -> String {
    h.ok(&[
        "start",
        "--name",
        name,
        "-i",
        instances,
        "--listen",
        ANY,
        "--ready-delay",
        ready_delay,
        worker_bin(),
    ]);
    h.app(name)["listen"][0].as_str().unwrap().to_string()
}

#[test]
fn herd_update_replaces_every_herd_process_in_place_under_load() {
    let h = Copied::new(&[]);
    let web = start(&h, "web", "2", "100ms");
    start(&h, "api", "1", "100ms");
    let workers = (h.workers("web", 2), h.workers("api", 1));
    let daemon = h.daemon_pid();
    let processes = h.herd_processes();
    assert_eq!(processes.len(), 3, "{processes:?}");
    wait_http_ok(&web, T);
    let load = load(&web);
    for round in 0..3 {
        h.replace();
        let said = h.ok(&["update"]);
        assert!(said.contains("web: supervisor"), "{said}");
        assert!(said.contains("api: supervisor"), "{said}");
        assert_eq!(h.daemon_pid(), daemon, "round {round}");
        assert_eq!(h.herd_processes(), processes, "round {round}: {said}");
        for pid in &processes {
            assert!(
                h.runs_new_file(*pid),
                "round {round}: {pid} runs an old file\n{}",
                h.log()
            );
        }
        assert_eq!(
            (h.workers("web", 2), h.workers("api", 1)),
            workers,
            "round {round}"
        );
        // The CLI reaches the daemon at once after each update.
        assert_eq!(h.app("web")["status"], "online");
    }
    let report = load.stop();
    assert!(report.ok > 100, "too little load: {report:?}");
    assert_eq!(report.failed(), 0, "{report:?}\n{}", h.log());

    // The log files travel with the app as open files: one moved away
    // (a logrotate without SIGUSR1) is still the one written.
    let out_log = PathBuf::from(h.app("web")["out_log"].as_str().unwrap());
    let moved = out_log.with_extension("log.moved");
    std::fs::rename(&out_log, &moved).unwrap();
    h.replace();
    h.ok(&["update"]);
    let supervisor = supervisor_of(&h, "web");
    assert!(
        open_files(supervisor).contains(&moved),
        "{:?}",
        open_files(supervisor)
    );
    assert!(!out_log.exists(), "the log was opened again by path");

    // A stopped app has nothing to hand over: its supervisor is replaced by
    // one on the new binary, and the app stays stopped.
    h.ok(&["stop", "api"]);
    h.replace();
    let said = h.ok(&["update"]);
    assert!(said.contains("api (stopped): supervisor"), "{said}");
    for pid in h.herd_processes() {
        assert!(h.runs_new_file(pid), "{pid} runs an old file\n{}", h.log());
    }
    assert_eq!(h.app("api")["status"], "stopped");
    assert_eq!(h.workers("web", 2), workers.0);
}

#[test]
fn a_broken_binary_changes_nothing_and_says_what_failed() {
    let h = Copied::new(&[]);
    let web = start(&h, "web", "2", "100ms");
    let workers = h.workers("web", 2);
    let processes = h.herd_processes();
    wait_http_ok(&web, T);
    let load = load(&web);

    h.break_binary();
    let out = h.cli(&["update"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a herd that can update in place"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(h.herd_processes(), processes);
    assert_eq!(h.workers("web", 2), workers);

    // A working binary again: the update goes through.
    h.replace();
    h.ok(&["update"]);
    assert_eq!(h.herd_processes(), processes);
    assert_eq!(h.workers("web", 2), workers);
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{report:?}");
}

#[test]
fn a_binary_that_cannot_take_an_app_over_gives_it_back() {
    let refuse = TempDir::new("refuse");
    let flag = refuse.join("refuse");
    // Debug builds: a new image refuses the state while this file exists.
    let h = Copied::new(&[("HERD_UPGRADE_TEST_REFUSE", &flag)]);
    let web = start(&h, "web", "2", "100ms");
    let workers = h.workers("web", 2);
    let processes = h.herd_processes();
    wait_http_ok(&web, T);
    let load = load(&web);

    std::fs::write(&flag, "").unwrap();
    h.replace();
    let out = h.cli(&["update"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not take the app over"), "{err}");
    // Everything serves on: same processes, same workers.
    assert_eq!(h.herd_processes(), processes);
    assert_eq!(h.workers("web", 2), workers);
    assert!(h.log().contains("upgrade failed"), "{}", h.log());

    std::fs::remove_file(&flag).unwrap();
    h.ok(&["update"]);
    for pid in h.herd_processes() {
        assert!(h.runs_new_file(pid), "{pid}");
    }
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{report:?}");
}

#[test]
fn an_update_during_a_reload_waits_for_it() {
    let h = Copied::new(&[]);
    let web = start(&h, "web", "2", "700ms");
    let before = h.workers("web", 2);
    wait_http_ok(&web, T);
    let load = load(&web);

    let home = h.home();
    let reload = std::thread::spawn(move || {
        Command::new(herd_bin())
            .args(["reload", "web"])
            .env("HERD_HOME", home)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    // The reload is under way (a successor starts) before the update.
    assert!(wait_until(T, || h.app("web")["workers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["role"] == "successor")));
    h.replace();
    let said = h.ok(&["update"]);
    assert!(said.contains("web: supervisor"), "{said}");
    let reloaded = reload.join().unwrap();
    assert!(reloaded.status.success(), "{reloaded:?}");
    let after = h.workers("web", 2);
    assert!(
        after.iter().all(|w| !before.contains(w)),
        "{before:?} {after:?}"
    );
    for pid in h.herd_processes() {
        assert!(h.runs_new_file(pid), "{pid}");
    }
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{report:?}");
}

/// Regression, found by the kill loop: the daemon's lock on `herd.pid` was
/// closed by its exec (`herd update`) and taken again by the new image, so
/// for those milliseconds a second daemon could take the home, bind
/// `herd.sock` over the first one's and leave the CLI a dead socket
/// ("cannot reach the herd daemon: connection refused"). The lock's fd is
/// now kept across the exec: a prober trying to take the lock all through
/// several updates never gets it.
#[test]
fn the_daemons_lock_is_never_free_during_an_update() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let h = Copied::new(&[]);
    let daemon = h.daemon_pid();
    let pid_file = h.home().join("herd.pid");
    let done = AtomicBool::new(false);
    let (tries, taken) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let Ok(file) = std::fs::File::open(&pid_file) else {
                    continue;
                };
                tries.fetch_add(1, Ordering::SeqCst);
                // Taken (and let go at once): nobody held it at that moment.
                if nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
                    .is_ok()
                {
                    taken.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        // The prober stops however the rounds end (a failed assertion too,
        // or the scope would wait for it forever).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = Stop(&done);
        for round in 0..5 {
            h.replace();
            let said = h.ok(&["update"]);
            assert!(said.contains("in place"), "round {round}: {said}");
            assert_eq!(h.daemon_pid(), daemon, "round {round}");
        }
    });
    assert!(tries.load(Ordering::SeqCst) > 100, "the prober hardly ran");
    assert_eq!(
        taken.load(Ordering::SeqCst),
        0,
        "the lock was free {} time(s) during 5 updates\n{}",
        taken.load(Ordering::SeqCst),
        h.log()
    );
    // And the CLI reaches the daemon, which still holds its home.
    assert!(h.ok(&["ping"]).contains(&format!("daemon pid {daemon}")));
}

/// Version skew: a herd from before the lock handover (its `--herd-versions`
/// does not say `lock-handover`) is not handed the lock, which it would
/// find held and exit; it takes the lock itself after the exec, and the
/// update still completes with the same daemon.
#[test]
fn an_older_herd_that_does_not_take_the_lock_over_still_updates_in_place() {
    let h = Copied::new(&[]);
    let daemon = h.daemon_pid();
    let real = h.dir.join("bin/herd-real");
    std::fs::copy(herd_bin(), &real).unwrap();
    let script = format!(
        "#!/bin/sh\n\
         if [ \"$1\" = --herd-versions ]; then\n\
           '{real}' --herd-versions | sed 's/ lock-handover [0-9]*//'\n\
           exit 0\n\
         fi\n\
         exec '{real}' \"$@\"\n",
        real = real.display()
    );
    let new = h.dir.join("bin/herd.new");
    std::fs::write(&new, script).unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&new, h.bin()).unwrap();
    let said = h.ok(&["update"]);
    assert!(said.contains("in place"), "{said}\n{}", h.log());
    assert_eq!(h.daemon_pid(), daemon);
    assert!(
        h.ok(&["ping"]).contains(&format!("daemon pid {daemon}")),
        "{}",
        h.log()
    );
    // It holds its home: the lock cannot be taken.
    let file = std::fs::File::open(h.home().join("herd.pid")).unwrap();
    assert!(
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err(),
        "the updated daemon does not hold herd.pid"
    );
}
