//! herd as PID 1 (a container's entrypoint), for real: `unshare --pid --fork
//! --mount-proc herd ...` makes herd the first process of a new PID namespace.
//! Checked from the host, where the namespace's processes are ordinary
//! processes under the `unshare` we started: orphans re-parented to PID 1 are
//! reaped (no zombies pile up), signals sent to PID 1 reach the real herd
//! (graceful stop), and PID 1 exits with herd's code (or 128+n).
//!
//! Needs `unshare` (util-linux) and the right to create PID namespaces (root,
//! or unprivileged user namespaces): skipped with a note otherwise, failed
//! under CI.

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use herd_testkit::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Can this machine run `unshare --pid --fork --mount-proc`? If not: skip
/// (with a note) or, under CI, fail.
macro_rules! need_unshare {
    () => {
        need!(Need::PidNamespace);
    };
}

/// `herd ARGS` as PID 1 of a new PID namespace; its stdout and stderr go to
/// files. Dropped before it exited: the namespace's init is SIGKILLed, which
/// takes every process of the namespace with it.
struct Ns {
    unshare: Child,
    dir: TempDir,
    status: Option<ExitStatus>,
}

impl Ns {
    fn start(args: &[&str], env: &[(&str, &Path)]) -> Ns {
        let dir = TempDir::new("pid1");
        eprintln!(
            "$ unshare --pid --fork --mount-proc herd {}",
            args.join(" ")
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", herd_bin()])
            .args(args)
            .env_remove("NODE_CLUSTER_SCHED_POLICY")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let unshare = cmd.spawn().expect("spawn unshare");
        Ns {
            unshare,
            dir,
            status: None,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!(
            "--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// Wait until `cond(stdout, stderr)`; panics with the output at the deadline.
    fn wait_output(&self, what: &str, cond: impl Fn(&str, &str) -> bool) {
        let ok = wait_until(Duration::from_secs(20), || {
            cond(&self.stdout(), &self.stderr())
        });
        assert!(ok, "never: {what}\n{}", self.output());
    }

    /// The host pid of the namespace's PID 1 (unshare's only child).
    fn init_pid(&self) -> i32 {
        let me = self.unshare.id() as i32;
        let mut pid = None;
        let ok = wait_until(Duration::from_secs(10), || {
            pid = children(me).first().copied();
            pid.is_some()
        });
        assert!(ok, "unshare started no child\n{}", self.output());
        pid.unwrap()
    }

    /// The host pid of the real herd: PID 1's child running `herd`.
    fn herd_pid(&self) -> i32 {
        let init = self.init_pid();
        let mut pid = None;
        let ok = wait_until(Duration::from_secs(10), || {
            pid = children(init)
                .into_iter()
                .find(|&p| stat(p).is_some_and(|(_, comm)| comm == "herd"));
            pid.is_some()
        });
        assert!(ok, "PID 1 has no `herd` child\n{}", self.output());
        pid.unwrap()
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.unshare.try_wait().unwrap() {
                self.status = Some(st);
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "PID-1 herd still runs after {timeout:?}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Some(&init) = children(self.unshare.id() as i32).first() {
            let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// The children of host pid `pid` (every thread's).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(task.path().join("children")) {
            let _ = f.read_to_string(&mut s);
        }
        out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    out
}

/// A process's state letter and command name, from /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let state = s[close + 1..].trim_start().chars().next()?;
    Some((state, comm))
}

/// The pid of host process `pid` in its own (innermost) PID namespace.
fn ns_pid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Every process under `root` (not `root` itself): (pid, state, comm).
fn tree(root: i32) -> Vec<(i32, char, String)> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            if let Some((state, comm)) = stat(c) {
                out.push((c, state, comm));
            }
            todo.push(c);
        }
    }
    out
}

/// A worker that leaves orphans: five subshells each start a `sleep 3` and
/// exit at once, so each sleep is re-parented to PID 1 (which alone can reap
/// it), then the fixture server takes over the process.
fn orphaning_worker(dir: &Path) -> PathBuf {
    let path = dir.join("orphans.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nfor i in 1 2 3 4 5; do (sleep 3 &); done\nexec {} \"$@\"\n",
            worker_bin()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Whether host process `pid` is an app supervisor (`herd supervise`).
fn is_supervisor(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == b"supervise"))
}

/// PID 1 adopts the worker's orphans (proof that they really are orphans of
/// the namespace), then reaps every one of them: once they have exited, the
/// namespace holds no zombie and PID 1's only child is herd.
fn assert_orphans_reaped(ns: &Ns) {
    let init = ns.init_pid();
    let adopted = wait_until(Duration::from_secs(15), || {
        children(init)
            .into_iter()
            .any(|c| stat(c).is_some_and(|(_, comm)| comm == "sleep"))
    });
    assert!(
        adopted,
        "no orphan `sleep` was re-parented to PID 1: {:?}\n{}",
        tree(init),
        ns.output()
    );
    let herd = ns.herd_pid();
    // PID 1's children: herd, and the apps' supervisors (detached from the
    // daemon, so PID 1 is their parent).
    let only_herd = |pid: i32| pid == herd || is_supervisor(pid);
    let clean = wait_until(Duration::from_secs(20), || {
        let all = tree(init);
        let kids = children(init);
        !all.iter().any(|(_, state, _)| *state == 'Z')
            && kids.contains(&herd)
            && kids.into_iter().all(only_herd)
    });
    assert!(
        clean,
        "zombies or orphans left in the namespace (pid, state, name): {:?}\n{}",
        tree(init),
        ns.output()
    );
}

/// herd under PID 1 still tells its service manager `READY=1`, without a
/// MAINPID: its pid in the namespace means nothing to a manager outside.
fn assert_ready_without_mainpid(notify: &UnixDatagram) {
    let mut buf = [0u8; 1024];
    let n = notify.recv(&mut buf).expect("READY=1 from herd");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(!msg.contains("MAINPID="), "{msg}");
}

fn listen_addr(stderr: &str) -> Option<String> {
    let rest = stderr.split("herd: listening on ").nth(1)?;
    Some(rest.split([',', ' ', '\n']).next()?.trim().to_string())
}

#[test]
fn herd_run_as_pid_1_reaps_orphans_forwards_signals_and_exits_0() {
    need_unshare!();
    let _serial = serial();
    let scripts = TempDir::new("pid1-worker");
    let worker = orphaning_worker(scripts.path());
    let notify_path = scripts.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut ns = Ns::start(
        &[
            "run",
            "-i",
            "2",
            "--listen",
            ANY,
            "--",
            worker.to_str().unwrap(),
            "--spawn-child",
        ],
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    assert_ready_without_mainpid(&notify);
    let init = ns.init_pid();
    assert_eq!(ns_pid(init), Some(1), "herd is PID 1 of its namespace");
    let herd = ns.herd_pid();
    assert_eq!(ns_pid(herd), Some(2), "the real herd is its first child");
    ns.wait_output("two workers serving", |out, _| {
        out.matches(" serving").count() >= 2
    });
    assert_orphans_reaped(&ns);

    // A worker that dies leaves its `--spawn-child` grandchild (killed by
    // herd with the worker's group, re-parented to PID 1 as it dies) and its
    // replacement leaves five new orphans: all reaped too.
    let addr = listen_addr(&ns.stderr()).expect("herd says where it listens");
    let _ = http_get(&addr, "/exit?code=1", Duration::from_secs(5));
    ns.wait_output("the replacement serving", |out, _| {
        out.matches(" serving").count() >= 3
    });
    // herd still reaps its own workers by pid: PID 1 did not take that
    // worker's exit status from it.
    assert!(
        ns.stderr().contains("exited with code 1"),
        "herd saw its worker's exit code\n{}",
        ns.output()
    );
    assert_orphans_reaped(&ns);

    // herd's other signals reach it through PID 1 too: HUP reloads, TTIN
    // adds a worker (each new worker leaves orphans: reaped as well).
    kill(Pid::from_raw(init), Signal::SIGHUP).unwrap();
    ns.wait_output("a reload through PID 1", |_, err| {
        err.contains("herd: reload finished")
    });
    kill(Pid::from_raw(init), Signal::SIGTTIN).unwrap();
    ns.wait_output("a third worker through PID 1", |_, err| {
        err.contains("herd: worker 2 ready")
    });
    assert_orphans_reaped(&ns);

    // `docker stop`: SIGTERM to PID 1, forwarded to herd, which stops its
    // workers gracefully.
    let stopped_before = ns.stdout().matches("stopping on signal").count();
    kill(Pid::from_raw(init), Signal::SIGTERM).unwrap();
    let st = ns.wait_exit(Duration::from_secs(20));
    let out = ns.stdout();
    assert_eq!(
        out.matches("stopping on signal").count() - stopped_before,
        3,
        "the three workers got herd's stop signal\n{}",
        ns.output()
    );
    assert_eq!(
        st.code(),
        Some(0),
        "a graceful stop exits 0\n{}",
        ns.output()
    );
}

/// `docker run -it`: a ^C on the terminal stops herd gracefully (the real
/// herd has the terminal's foreground, so it gets that SIGINT from the
/// terminal alone; PID 1 does not add a second one, which herd would take as
/// "stop at once"). The terminal is `script`'s pseudo-terminal, fed a ^C.
#[test]
fn herd_run_as_pid_1_on_a_terminal_stops_gracefully_on_ctrl_c() {
    need_unshare!();
    need!(Need::Program("script"));
    let _serial = serial();
    let dir = TempDir::new("pid1-tty");
    let line = format!(
        "unshare --pid --fork --mount-proc {} run -i 2 --listen {ANY} -- {}",
        herd_bin(),
        worker_bin()
    );
    let mut script = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(dir.join("out")).unwrap())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(dir.join("out")).unwrap_or_default();
    let serving = wait_until(Duration::from_secs(20), || {
        read().matches(" serving").count() >= 2
    });
    let mut stdin = script.stdin.take().unwrap();
    if serving {
        std::io::Write::write_all(&mut stdin, b"\x03").unwrap();
    }
    let done = wait_until(Duration::from_secs(20), || {
        matches!(script.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = kill(Pid::from_raw(-(script.id() as i32)), Signal::SIGKILL);
    }
    let st = script.wait().unwrap();
    let out = read();
    assert!(serving && done, "{out}");
    assert!(out.contains("herd: exiting: stopped"), "{out}");
    assert!(
        !out.contains("at once") && !out.contains("killed by"),
        "one ^C is one graceful stop:\n{out}"
    );
    assert_eq!(out.matches("stopping on signal").count(), 2, "{out}");
    assert_eq!(st.code(), Some(0), "{out}");
}

#[test]
fn herd_run_as_pid_1_passes_on_herds_exit_code() {
    need_unshare!();
    let _serial = serial();
    // Every slot errored: herd exits 1, and so does PID 1.
    let mut ns = Ns::start(
        &[
            "run",
            "-i",
            "2",
            "--listen",
            ANY,
            "--restart-delay",
            "10ms",
            "--max-restart-delay",
            "50ms",
            "--max-restarts",
            "2",
            "--",
            worker_bin(),
            "--crash-after",
            "0",
        ],
        &[],
    );
    let st = ns.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(1), "all slots errored\n{}", ns.output());
    assert!(ns.stderr().contains("errored"), "{}", ns.output());

    // herd killed by a signal: PID 1 exits with 128 + n, as a shell says.
    let mut ns = Ns::start(
        &["run", "-i", "1", "--listen", ANY, "--", worker_bin()],
        &[],
    );
    ns.wait_output("a worker serving", |out, _| out.contains(" serving"));
    kill(Pid::from_raw(ns.herd_pid()), Signal::SIGKILL).unwrap();
    let st = ns.wait_exit(Duration::from_secs(20));
    assert_eq!(
        st.code(),
        Some(128 + 9),
        "herd died by SIGKILL\n{}",
        ns.output()
    );
}

#[test]
fn herd_daemon_as_pid_1_reaps_orphans_notifies_and_obeys_herd_kill_from_outside() {
    need_unshare!();
    let _serial = serial();
    let home = TempDir::new("pid1-home");
    let scripts = TempDir::new("pid1-worker");
    let worker = orphaning_worker(scripts.path());
    // The service manager's notify socket, bound on the host: a path, so
    // the namespace (same filesystem) reaches it.
    let notify_path = scripts.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let mut ns = Ns::start(
        &["daemon"],
        &[("HERD_HOME", home.path()), ("NOTIFY_SOCKET", &notify_path)],
    );
    assert_ready_without_mainpid(&notify);
    let init = ns.init_pid();
    assert_eq!(ns_pid(init), Some(1));
    assert_eq!(ns_pid(ns.herd_pid()), Some(2));

    // The CLI on the host talks to the daemon in the namespace over the
    // socket in HERD_HOME.
    let herd = |args: &[&str]| {
        let out = Command::new(herd_bin())
            .args(args)
            .env("HERD_HOME", home.path())
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "herd {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            ns.output()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    herd(&[
        "start",
        "--name",
        "orphans",
        "-i",
        "2",
        "--listen",
        ANY,
        worker.to_str().unwrap(),
        "--",
        "--spawn-child",
    ]);
    let online = wait_until(Duration::from_secs(20), || {
        let list: serde_json::Value = serde_json::from_str(&herd(&["list", "--json"])).unwrap();
        list[0]["online"] == 2
    });
    assert!(online, "{}\n{}", herd(&["list", "--json"]), ns.output());
    assert_orphans_reaped(&ns);

    herd(&["kill"]);
    let st = ns.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{}", ns.output());
    let log = std::fs::read_to_string(home.join("logs").join("orphans-out.log")).unwrap();
    assert_eq!(
        log.matches("stopping on signal").count(),
        2,
        "both workers stopped gracefully:\n{log}"
    );
}

/// As under systemd's `Restart=on-failure`: a daemon that dies on its own is
/// started again by PID 1, and adopts the apps that never stopped.
#[test]
fn herd_daemon_as_pid_1_is_started_again_after_a_crash_and_adopts_its_apps() {
    need_unshare!();
    let _serial = serial();
    let home = TempDir::new("pid1-home");
    let mut ns = Ns::start(&["daemon"], &[("HERD_HOME", home.path())]);
    ns.wait_output("the daemon listening", |_, err| {
        err.contains("listening on")
    });
    let herd = |args: &[&str]| {
        let out = Command::new(herd_bin())
            .args(args)
            .env("HERD_HOME", home.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "herd {args:?}: {out:?}\n{}",
            ns.output()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    herd(&[
        "start",
        "--name",
        "w",
        "-i",
        "2",
        "--listen",
        ANY,
        worker_bin(),
    ]);
    let pids = |list: &str| -> Vec<i64> {
        let list: serde_json::Value = serde_json::from_str(list).unwrap();
        list[0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["status"] == "online")
            .filter_map(|w| w["pid"].as_i64())
            .collect()
    };
    let mut before = Vec::new();
    assert!(wait_until(Duration::from_secs(20), || {
        before = pids(&herd(&["list", "--json"]));
        before.len() == 2
    }));
    let first = ns.herd_pid();
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    // PID 1 starts the daemon again; the CLI reaches it (never one of its
    // own: the home's lock is held by the new daemon).
    let mut again = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            again = children(ns.init_pid())
                .into_iter()
                .find(|&p| p != first && stat(p).is_some_and(|(_, comm)| comm == "herd"));
            again.is_some()
        }),
        "no daemon again\n{}",
        ns.output()
    );
    ns.wait_output("the new daemon listening", |_, err| {
        err.matches("listening on").count() >= 2
    });
    assert!(ns.stderr().contains("starting it again"), "{}", ns.output());
    assert_eq!(pids(&herd(&["list", "--json"])), before, "{}", ns.output());
    herd(&["kill"]);
    let st = ns.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{}", ns.output());
}

#[test]
fn herd_daemon_as_pid_1_reopens_logs_on_sigusr1_and_stops_on_sigterm() {
    need_unshare!();
    let _serial = serial();
    let home = TempDir::new("pid1-home");
    let mut ns = Ns::start(&["daemon"], &[("HERD_HOME", home.path())]);
    ns.wait_output("the daemon listening", |_, err| {
        err.contains("listening on")
    });
    let out = Command::new(herd_bin())
        .args([
            "start",
            "--name",
            "w",
            "--listen",
            ANY,
            worker_bin(),
            "--",
            "--log-requests",
        ])
        .env("HERD_HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", ns.output());
    let log = home.join("logs").join("w-out.log");
    let serving = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(" serving"))
    });
    assert!(serving, "{}", ns.output());

    // logrotate's way: move the file, then SIGUSR1 (to PID 1, passed on to
    // the daemon) makes the daemon write to a new file at the old path.
    let list = Command::new(herd_bin())
        .args(["list", "--json"])
        .env("HERD_HOME", home.path())
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let addr = list[0]["listen"][0].as_str().unwrap().to_string();
    std::fs::rename(&log, home.join("rotated.log")).unwrap();
    kill(Pid::from_raw(ns.init_pid()), Signal::SIGUSR1).unwrap();
    let reopened = wait_until(Duration::from_secs(20), || {
        let _ = http_get(&addr, "/after-rotation", Duration::from_secs(2));
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("request /after-rotation"))
    });
    assert!(reopened, "no new log file after SIGUSR1\n{}", ns.output());

    kill(Pid::from_raw(ns.init_pid()), Signal::SIGTERM).unwrap();
    let st = ns.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{}", ns.output());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("stopping on signal"), "{log}");
}
