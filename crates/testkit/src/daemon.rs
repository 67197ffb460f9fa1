//! A herd daemon per test, in its own temporary `HERD_HOME`, driven through
//! the `herd` CLI (tests/it/{daemon,metrics,monit}.rs). Whatever it started is
//! stopped when the value is dropped, pass or fail: `herd kill`, then SIGKILL
//! (its workers die with it: they have PDEATHSIG).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::{free_port, herd_bin, http_get, process_alive, wait_until, worker_bin, TempDir, ANY};

/// A daemon in its own home.
pub struct Daemon {
    pub home: TempDir,
    /// The daemon process when the test started it itself (`with_metrics`);
    /// otherwise the CLI auto-started it.
    child: Option<Child>,
    /// Where its HTTP listener is (`with_metrics`).
    pub http: Option<String>,
    /// The herd binary its CLI runs (and so the auto-started daemon):
    /// [`herd_bin`], or a copy of it ([`Daemon::with_binary`]).
    bin: PathBuf,
}

impl Daemon {
    /// A daemon started by the CLI on its first use (`herd ping`).
    pub fn new() -> Daemon {
        Daemon::with_binary(herd_bin().into())
    }

    /// A daemon started by the CLI at `bin` (a copy of herd, which a test
    /// may replace on disk for `herd update`) on its first use.
    pub fn with_binary(bin: PathBuf) -> Daemon {
        let d = Daemon {
            home: TempDir::new("daemon"),
            child: None,
            http: None,
            bin,
        };
        let out = d.herd(&["ping"]);
        assert!(out.status.success(), "ping: {}", text(&out.stderr));
        d
    }

    /// A home with no daemon yet: the test's first CLI command starts it.
    pub fn unstarted() -> Daemon {
        Daemon {
            home: TempDir::new("daemon"),
            child: None,
            http: None,
            bin: herd_bin().into(),
        }
    }

    /// `herd daemon --metrics 127.0.0.1:PORT [--metrics-admin]`, started by
    /// the test; returns once `/healthz` answers.
    pub fn with_metrics(admin: bool) -> Daemon {
        let home = TempDir::new("metrics");
        // A port free a moment ago can be taken meanwhile: try a few.
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let err = std::fs::File::create(home.path().join("daemon.err")).unwrap();
            let mut c = Command::new(herd_bin());
            c.args(["daemon", "--metrics", &addr])
                .env("HERD_HOME", home.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(err));
            if admin {
                c.arg("--metrics-admin");
            }
            let mut child = c.spawn().expect("start herd daemon");
            let up = wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || http_get(&addr, "/healthz", Duration::from_secs(1))
                        .is_ok_and(|(s, _)| s == 200)
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                return Daemon {
                    home,
                    child: Some(child),
                    http: Some(addr),
                    bin: herd_bin().into(),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "the daemon never served /healthz: {}",
            std::fs::read_to_string(home.path().join("daemon.err")).unwrap_or_default()
        );
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("HERD_HOME", self.path())
            .env_remove("NODE_CLUSTER_SCHED_POLICY")
            .stdin(Stdio::null());
        c
    }

    pub fn herd(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run herd")
    }

    /// Run a verb that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.herd(args);
        assert!(
            out.status.success(),
            "herd {args:?} failed ({}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Run a verb that must fail with `code`; its stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.herd(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "herd {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    pub fn list(&self) -> Vec<Value> {
        let out = self.ok(&["list", "--json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {out}"))
            .as_array()
            .expect("an array")
            .clone()
    }

    pub fn app(&self, name: &str) -> Value {
        self.list()
            .into_iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no app {name} in the list"))
    }

    /// Wait until `name` has `n` online workers; their pids by worker id.
    pub fn wait_online(&self, name: &str, n: usize) -> Vec<i32> {
        let mut last = Value::Null;
        let ok = wait_until(Duration::from_secs(20), || {
            last = self.app(name);
            last["status"] == "online" && last["online"] == n
        });
        assert!(ok, "{name} never had {n} workers online: {last:#}");
        worker_pids(&last)
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path().join("herd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The daemon's log (an auto-started daemon's `herd.log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("herd.log")).unwrap_or_default()
    }

    /// Start the fixture server as app `name`; the address it listens on.
    pub fn start_fixture(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["start", "--name", name, "--listen", ANY];
        args.extend_from_slice(extra);
        args.push(worker_bin());
        self.ok(&args);
        let app = self.app(name);
        app["listen"][0]
            .as_str()
            .expect("a listen address")
            .to_string()
    }
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon::new()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.daemon_pid();
        let mut kill_cmd = self.command(&["kill"]);
        if let Ok(mut child) = kill_cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            let done = wait_until(Duration::from_secs(15), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !done {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(child) = &mut self.child {
            let done = wait_until(Duration::from_secs(5), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !done {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(pid) = pid {
            if process_alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        // The apps outlive their daemon: end the supervisors it left.
        end_supervisors(self.path());
    }
}

/// End every app supervisor of the home `home` that still runs (their pids
/// in `apps/<id>.pid`): SIGTERM (each stops its app), then SIGKILL at a
/// deadline, then whatever their apps left (the cgroup or process groups
/// recorded in `apps/<id>.groups`).
pub fn end_supervisors(home: &Path) {
    let apps = home.join("apps");
    let files = |ext: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&apps)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == ext))
                    .collect()
            })
            .unwrap_or_default()
    };
    let pids: Vec<i32> = files("pid")
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
        .filter(|&pid: &i32| pid > 1 && process_alive(pid))
        .collect();
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    wait_until(Duration::from_secs(10), || {
        pids.iter().all(|&p| !process_alive(p))
    });
    for &pid in &pids {
        if process_alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    for record in files("groups") {
        let Ok(text) = std::fs::read_to_string(&record) else {
            continue;
        };
        let Ok(record) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if let Some(cgroup) = record["cgroup"].as_str() {
            let cgroup = Path::new(cgroup);
            let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
            wait_until(Duration::from_secs(5), || {
                std::fs::read_to_string(cgroup.join("cgroup.procs"))
                    .map_or(true, |procs| procs.trim().is_empty())
            });
            let _ = std::fs::remove_dir(cgroup);
        }
        for group in record["groups"].as_array().into_iter().flatten() {
            let (Some(pgid), Some(start)) = (group["pgid"].as_i64(), group["start_time"].as_u64())
            else {
                continue;
            };
            // A leader alive with another start time: the pid was reused.
            if crate::procs::start_time(pgid as i32).is_some_and(|now| now != start) {
                continue;
            }
            let _ = nix::sys::signal::killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The pids of an app's online workers (from `list --json`), in the listed order.
pub fn worker_pids(app: &Value) -> Vec<i32> {
    app["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["status"] == "online")
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect()
}
