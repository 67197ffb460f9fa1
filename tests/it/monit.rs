//! `herd monit` in a real terminal: tmux runs a shell in a 120×40 pane, the
//! test types `herd monit` into it, reads the screen with `capture-pane`
//! and presses keys with `send-keys`. It checks that the app and its worker
//! pids are shown, that `r` then `y` reloads the app (new worker pids in
//! `herd list --json`), that `q` gives the pane back to the shell, and that monit
//! costs little CPU while it watches. Each test has its own daemon (a temp
//! `HERD_HOME`) and its own tmux server (a unique `-L` socket); both are
//! ended when the test ends, pass or fail. Needs `tmux` (under CI a missing
//! tmux fails the test; `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use herd_testkit::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A tmux server of our own (`-L`, no user config) with one 120×40 pane
/// running `sh`; killed, with everything in it, when dropped.
struct Tmux {
    socket: String,
    /// The server's socket file, which `kill-server` leaves behind.
    socket_path: Option<PathBuf>,
}

impl Tmux {
    /// `None` (after skipping, or panicking under CI) when tmux is missing.
    fn start(home: &Path) -> Option<Tmux> {
        need(Need::Program("tmux"))?;
        let mut t = Tmux {
            socket_path: None,
            socket: format!(
                "herd-monit-{}-{}",
                std::process::id(),
                home.file_name().unwrap().to_string_lossy()
            ),
        };
        let out = t.run(&[
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "40",
            "-e",
            &format!("HERD_HOME={}", home.display()),
            "-e",
            "PS1=$ ",
            "sh",
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = t.run(&["display-message", "-p", "#{socket_path}"]).stdout;
        let path = String::from_utf8_lossy(&path).trim().to_string();
        t.socket_path = (!path.is_empty()).then(|| PathBuf::from(path));
        Some(t)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    /// Type `text` literally, then Enter.
    fn type_line(&self, text: &str) {
        assert!(self.run(&["send-keys", "-l", text]).status.success());
        self.keys("Enter");
    }

    /// Press keys (tmux key names: `r`, `y`, `q`, `C-c`, `Down`).
    fn keys(&self, keys: &str) {
        let out = self.run(&["send-keys", keys]);
        assert!(out.status.success(), "send-keys {keys}: {out:?}");
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p"]).stdout).into_owned()
    }

    /// Wait until the screen satisfies `ok`; the screen (the last one seen,
    /// in the panic message, when it never does).
    fn wait_screen(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let seen = wait_until(timeout, || {
            last = self.screen();
            ok(&last)
        });
        assert!(seen, "the screen never showed {what}:\n{last}");
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Run `herd monit` in the pane, its pid written to `pid_file` (the shell
/// execs it, so the pid is monit's), and `monit-exited-<code>` printed after.
fn launch_monit(tmux: &Tmux, pid_file: &Path) {
    tmux.type_line(&format!(
        "sh -c 'echo $$ > {}; exec {} monit'; echo monit-exited-$?",
        pid_file.display(),
        herd_bin()
    ));
}

/// A row of the workers table: the pid, whole, and the worker's status.
fn shows_worker(screen: &str, pid: i32) -> bool {
    let pid = pid.to_string();
    screen.lines().any(|l| {
        l.contains("online")
            && l.split(|c: char| !c.is_ascii_digit())
                .any(|word| word == pid)
    })
}

fn read_pid(pid_file: &Path) -> i32 {
    let mut pid = None;
    let ok = wait_until(Duration::from_secs(10), || {
        pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    assert!(ok, "monit's pid never appeared in {}", pid_file.display());
    pid.unwrap()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("monit runs");
    // Fields after the command (which may hold spaces) start at state (3).
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The share of one core `pid` used over `span`, in percent.
fn cpu_percent(pid: i32, span: Duration) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let t0 = Instant::now();
    let a = cpu_ticks(pid);
    std::thread::sleep(span); // measuring over a span, not waiting for a state
    let b = cpu_ticks(pid);
    (b - a) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0
}

#[test]
fn monit_shows_workers_reloads_on_r_y_and_quits_on_q() {
    let d = Daemon::unstarted();
    d.ok(&[
        "start",
        "--name",
        "monit-web",
        "--listen",
        ANY,
        "-i",
        "2",
        worker_bin(),
    ]);
    let pids = d.wait_online("monit-web", 2);
    let Some(tmux) = Tmux::start(d.path()) else {
        return;
    };
    let pid_file: PathBuf = d.path().join("monit.pid");
    launch_monit(&tmux, &pid_file);
    tmux.wait_screen(
        "the app and its worker pids",
        Duration::from_secs(20),
        |s| s.contains("monit-web") && pids.iter().all(|&p| shows_worker(s, p)),
    );
    let monit = read_pid(&pid_file);

    // Its own cost while it watches (the target is 2% of a core; the bound
    // leaves room for a loaded test machine and a debug build).
    let cpu = cpu_percent(monit, Duration::from_secs(5));
    eprintln!("monit used {cpu:.2}% of one core over 5 s");
    assert!(cpu < 5.0, "monit used {cpu:.2}% of a core");

    // r asks first; y reloads.
    tmux.keys("r");
    tmux.wait_screen("the reload confirmation", Duration::from_secs(5), |s| {
        s.contains("Reload monit-web?")
    });
    tmux.keys("y");
    let mut new = Vec::new();
    let reloaded = wait_until(Duration::from_secs(30), || {
        let app = d.app("monit-web");
        new = worker_pids(&app);
        app["status"] == "online" && new.len() == 2 && new.iter().all(|p| !pids.contains(p))
    });
    assert!(reloaded, "no reload: workers {pids:?} became {new:?}");
    tmux.wait_screen("the new worker pids", Duration::from_secs(10), |s| {
        new.iter().all(|&p| shows_worker(s, p)) && s.contains("reloaded monit-web")
    });

    // + adds a worker at once; s asks first, and n keeps it running.
    tmux.keys("+");
    let scaled = wait_until(Duration::from_secs(20), || {
        let app = d.app("monit-web");
        app["instances"] == 3 && app["online"] == 3
    });
    assert!(scaled, "+ did not scale to 3: {:#}", d.app("monit-web"));
    tmux.keys("s");
    tmux.wait_screen("the stop confirmation", Duration::from_secs(5), |s| {
        s.contains("Stop monit-web?")
    });
    tmux.keys("n");
    tmux.wait_screen("the confirmation gone", Duration::from_secs(5), |s| {
        !s.contains("Stop monit-web?")
    });
    tmux.keys("-");
    let scaled = wait_until(Duration::from_secs(20), || {
        let app = d.app("monit-web");
        app["instances"] == 2 && app["status"] == "online"
    });
    assert!(scaled, "- did not scale to 2: {:#}", d.app("monit-web"));
    let new = d.wait_online("monit-web", 2);

    // A smaller terminal: redrawn to fit, the app still there.
    let out = tmux.run(&["resize-window", "-x", "80", "-y", "24"]);
    assert!(out.status.success(), "resize-window: {out:?}");
    let screen = tmux.wait_screen("the dashboard at 80x24", Duration::from_secs(10), |s| {
        s.lines().count() <= 24
            && s.lines().all(|l| l.chars().count() <= 80)
            && s.contains("logs: monit-web")
            && new.iter().all(|&p| shows_worker(s, p))
    });
    eprintln!("at 80x24:\n{screen}");

    // q gives the terminal back: the main screen, the shell after monit.
    tmux.keys("q");
    let screen = tmux.wait_screen("the shell after monit", Duration::from_secs(10), |s| {
        s.contains("monit-exited-0")
    });
    assert!(
        !screen.contains("q quit"),
        "the dashboard is still on screen:\n{screen}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive(monit)),
        "monit {monit} still runs"
    );
}

#[test]
fn monit_starts_the_daemon_shows_no_apps_survives_its_end_and_quits_on_ctrl_c_or_sigterm() {
    let d = Daemon::unstarted();
    assert!(d.daemon_pid().is_none());
    let Some(tmux) = Tmux::start(d.path()) else {
        return;
    };
    let pid_file = d.path().join("monit.pid");
    launch_monit(&tmux, &pid_file);
    tmux.wait_screen("no apps", Duration::from_secs(20), |s| {
        s.contains("no apps")
    });
    assert!(d.daemon_pid().is_some(), "monit did not start the daemon");
    let monit = read_pid(&pid_file);
    // Keys that need an app do nothing without one.
    tmux.keys("r");
    tmux.keys("Down");
    // The daemon goes away: monit says so (and does not start it again).
    d.ok(&["kill"]);
    tmux.wait_screen("that the daemon is gone", Duration::from_secs(20), |s| {
        s.contains("the daemon is not running")
    });
    assert!(d.daemon_pid().is_none(), "monit restarted the daemon");
    tmux.keys("C-c");
    tmux.wait_screen("the shell after monit", Duration::from_secs(10), |s| {
        s.contains("monit-exited-0")
    });
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive(monit)),
        "monit {monit} still runs"
    );

    // SIGTERM also gives the terminal back (exit status 128 + 15).
    std::fs::remove_file(&pid_file).unwrap();
    launch_monit(&tmux, &pid_file);
    tmux.wait_screen("no apps", Duration::from_secs(20), |s| {
        s.contains("no apps")
    });
    let monit = read_pid(&pid_file);
    kill(Pid::from_raw(monit), Signal::SIGTERM).unwrap();
    let screen = tmux.wait_screen("the shell after SIGTERM", Duration::from_secs(10), |s| {
        s.contains("monit-exited-143")
    });
    assert!(
        !screen.contains("q quit"),
        "the dashboard is still on screen:\n{screen}"
    );
}

#[test]
fn monit_without_a_terminal_says_so_and_starts_nothing() {
    let d = Daemon::unstarted();
    let out = d.herd(&["monit"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("terminal") && err.contains("herd jlist"),
        "{err}"
    );
    assert!(d.daemon_pid().is_none(), "a daemon was started");
}

#[test]
fn monit_follows_a_log_flood_in_little_memory() {
    let d = Daemon::unstarted();
    d.ok(&[
        "start",
        "--name",
        "flood",
        "--listen",
        ANY,
        "-i",
        "1",
        worker_bin(),
    ]);
    d.wait_online("flood", 1);
    let addr = d.app("flood")["listen"][0].as_str().unwrap().to_string();
    let Some(tmux) = Tmux::start(d.path()) else {
        return;
    };
    let pid_file = d.path().join("monit.pid");
    launch_monit(&tmux, &pid_file);
    tmux.wait_screen("the app", Duration::from_secs(20), |s| {
        s.contains("logs: flood")
    });
    let monit = read_pid(&pid_file);
    // About 20 MB of log lines in bursts; the pane ends on the last one.
    for _ in 0..5 {
        let (status, _) =
            http_get(&addr, "/spam?n=50000&len=80", Duration::from_secs(30)).expect("spam");
        assert_eq!(status, 200);
    }
    tmux.wait_screen("the flood's last line", Duration::from_secs(20), |s| {
        s.contains("spam 49999 ")
    });
    let status = std::fs::read_to_string(format!("/proc/{monit}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    eprintln!("monit's RSS after the flood: {} MB", rss_kb / 1024);
    assert!(rss_kb < 64 * 1024, "monit grew to {rss_kb} kB");

    // The terminal goes away under it (ssh drops): monit ends, it does not
    // spin on the closed terminal.
    drop(tmux);
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive(monit)),
        "monit {monit} outlived its terminal (state {:?})",
        std::fs::read_to_string(format!("/proc/{monit}/stat")).ok()
    );
}
