//! Self-tests of the test fixture (`herd-test-worker`) and of the harness,
//! without herd: the test binds the sockets and starts the fixture with them
//! at fd 3, 4, … itself, the way herd will.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use herd_testkit::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The fixture running outside herd.
struct Fixture {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

fn lines(r: impl std::io::Read + Send + 'static, tag: &'static str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            eprintln!("  fixture.{tag}| {l}");
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

impl Fixture {
    /// Start the fixture with `fds` at 3, 4, …, `LISTEN_FDS` set and no `LISTEN_PID`.
    fn start(fds: &[RawFd], env: &[(&str, &str)], args: &[&str]) -> Fixture {
        let mut cmd = Command::new(worker_bin());
        cmd.args(args)
            .arg("--no-listen-pid-check")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env("LISTEN_FDS", fds.len().to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let fds = fds.to_vec();
        // SAFETY: only async-signal-safe calls (dup/dup2/fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move them out of the way first, so placing one cannot clobber another.
                let mut high = Vec::new();
                for &fd in &fds {
                    let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                    if h < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high.push(h);
                }
                for (i, &h) in high.iter().enumerate() {
                    // dup2 clears close-on-exec on the new fd.
                    if libc::dup2(h, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn fixture");
        let stdout = lines(child.stdout.take().unwrap(), "out");
        let stderr = lines(child.stderr.take().unwrap(), "err");
        Fixture {
            child,
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Wait for a stdout line containing `needle`.
    fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no stdout line with {needle:?} in {timeout:?}; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    fn stderr_all(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut v = Vec::new();
        while let Ok(l) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            v.push(l);
        }
        v
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "fixture did not exit within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-self.pid()), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn tcp_listener() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

const T: Duration = Duration::from_secs(5);

#[test]
fn pattern_matcher() {
    let l = "herd: worker 1 online (pid 4242)";
    assert_eq!(
        match_pat(pat::ONLINE, l),
        Some(vec!["1".into(), "4242".into()])
    );
    assert_eq!(
        match_pat(pat::ONLINE, "herd: worker x online (pid 1)"),
        None
    );
    assert_eq!(
        match_pat(
            pat::RESTARTING_IN,
            "herd: worker 0 exited with code 1; restarting in 200 ms"
        ),
        Some(vec!["200".into()])
    );
    assert_eq!(match_pat("a{}b", "xa1ca22b"), Some(vec!["22".into()]));
    assert_eq!(
        match_pat(
            pat::EXITED_CODE,
            "herd: worker 1 (pid 42) exited with code 3 after 30 ms; x"
        ),
        Some(vec!["1".into(), "3".into()])
    );
    assert_eq!(
        match_pat(pat::EXITED_CODE, "herd: worker 1 exited with code 3"),
        Some(vec!["1".into(), "3".into()])
    );
    assert_eq!(
        match_pat(
            pat::KILLED_BY,
            "herd: worker 0 (pid 7) was killed by SIGKILL after 1 s"
        ),
        Some(vec!["0".into()])
    );
    assert_eq!(
        match_pat(
            pat::RESTARTING_IN,
            "exited with code 1 after 3 ms; restarting it in 20 ms"
        ),
        Some(vec!["20".into()])
    );
    assert_eq!(match_pat("x{*}y{}", "x y z y12"), Some(vec!["12".into()]));
    assert_eq!(
        match_pat(pat::RELOAD_FINISHED, "herd: reload finished in 2s"),
        Some(vec![])
    );
    assert_eq!(
        match_pat(pat::W_CHILD, "[0] child 99"),
        Some(vec!["99".into()])
    );
}

#[test]
fn fixture_serves_root_env_and_404() {
    let (l, addr) = tcp_listener();
    let mut f = Fixture::start(
        &[l.as_raw_fd()],
        &[
            ("HERD_WORKER_ID", "7"),
            ("HERD_INSTANCES", "9"),
            ("LISTEN_FDNAMES", "web"),
        ],
        &[],
    );
    let line = f.wait_stdout("serving", T);
    assert_eq!(line, format!("worker 7 pid {} serving", f.pid()));

    let r = http_request(&addr, "/", T).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.pid(), Some(f.pid()));
    assert_eq!(r.header("X-Worker-Id"), Some("7"));
    assert_eq!(r.header("X-Pid"), Some(f.pid().to_string().as_str()));

    let (st, body) = http_get(&addr, "/env", T).unwrap();
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["LISTEN_FDS"], "1");
    assert_eq!(v["LISTEN_FDNAMES"], "web");
    assert_eq!(v["HERD_WORKER_ID"], "7");
    assert_eq!(v["HERD_INSTANCES"], "9");

    let (st, _) = http_get(&addr, "/nope", T).unwrap();
    assert_eq!(st, 404);
}

#[test]
fn fixture_serves_unix_and_several_listeners() {
    let dir = TempDir::new("fixture-unix");
    let sock = dir.join("s.sock");
    let ul = UnixListener::bind(&sock).unwrap();
    ul.set_nonblocking(true).unwrap();
    let (tl, addr) = tcp_listener();
    let mut f = Fixture::start(&[tl.as_raw_fd(), ul.as_raw_fd()], &[], &[]);
    f.wait_stdout("serving", T);
    let (st, body) = unix_http_get(&sock, "/", T).unwrap();
    assert_eq!((st, body.trim()), (200, f.pid().to_string().as_str()));
    let (st, body) = http_get(&addr, "/env", T).unwrap();
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["LISTEN_FDS"], "2");
}

#[test]
fn fixture_drains_in_flight_request_on_sigterm() {
    let (l, addr) = tcp_listener();
    let mut f = Fixture::start(&[l.as_raw_fd()], &[], &["--log-requests"]);
    f.wait_stdout("serving", T);
    let a = addr.clone();
    let req = thread::spawn(move || http_get(&a, "/slow?ms=700", T));
    f.wait_stdout("request /slow", T);
    let t0 = Instant::now();
    f.signal(Signal::SIGTERM);
    let (st, _) = req.join().unwrap().expect("slow request completes");
    assert_eq!(st, 200);
    let status = f.wait_exit(T);
    assert_eq!(status.code(), Some(0));
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "exited before the request finished"
    );
}

#[test]
fn fixture_exit_route_exits_with_code() {
    let (l, addr) = tcp_listener();
    let mut f = Fixture::start(&[l.as_raw_fd()], &[], &[]);
    f.wait_stdout("serving", T);
    let (st, _) = http_get(&addr, "/exit?code=3", T).unwrap();
    assert_eq!(st, 200);
    assert_eq!(f.wait_exit(T).code(), Some(3));
}

#[test]
fn fixture_ignore_sigint_and_spawn_child() {
    let (l, addr) = tcp_listener();
    let mut f = Fixture::start(&[l.as_raw_fd()], &[], &["--ignore-sigint", "--spawn-child"]);
    f.wait_stdout("serving", T);
    let line = f.wait_stdout("child ", T);
    let child: i32 = line.trim_start_matches("child ").parse().unwrap();
    assert!(process_alive(child));
    assert!(
        group_members(f.pid()).contains(&child),
        "grandchild is in the worker's group"
    );
    f.signal(Signal::SIGTERM);
    f.signal(Signal::SIGINT);
    // A negative check needs some time to pass: the fixture polls its stop flag every 20 ms.
    thread::sleep(Duration::from_millis(300));
    assert!(
        f.child.try_wait().unwrap().is_none(),
        "fixture obeyed an ignored signal"
    );
    assert_eq!(http_get(&addr, "/", T).unwrap().0, 200);
    kill(Pid::from_raw(-f.pid()), Signal::SIGKILL).unwrap();
    f.wait_exit(T);
    assert!(wait_until(T, || !process_alive(child)));
}

#[test]
fn fixture_crashes_on_purpose() {
    let (l, _addr) = tcp_listener();
    let mut f = Fixture::start(&[l.as_raw_fd()], &[], &["--crash-after", "0"]);
    assert_eq!(f.wait_exit(T).code(), Some(1));
    let err = f.stderr_all(T);
    assert!(
        err.last()
            .is_some_and(|l| l.contains("crashing on purpose")),
        "{err:?}"
    );

    // Not its slot: keeps running.
    let mut g = Fixture::start(
        &[l.as_raw_fd()],
        &[("HERD_WORKER_ID", "0")],
        &["--crash-after", "0", "--crash-slot", "1"],
    );
    g.wait_stdout("serving", T);

    // Later crash.
    let mut h = Fixture::start(&[l.as_raw_fd()], &[], &["--crash-after", "200"]);
    h.wait_stdout("serving", T);
    assert_eq!(h.wait_exit(T).code(), Some(1));
}

#[test]
fn fixture_checks_listen_pid() {
    let (l, _addr) = tcp_listener();
    let mut cmd = Command::new(worker_bin());
    let out = cmd
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    drop(l);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LISTEN_PID is 1"));
}

fn notify_socket(tag: &str) -> (UnixDatagram, String) {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("herd-test/{}/{tag}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let s = UnixDatagram::bind_addr(&addr).unwrap();
    (s, format!("@{name}"))
}

#[test]
fn fixture_notifies_ready_on_abstract_socket() {
    let (l, _addr) = tcp_listener();
    let (ns, env) = notify_socket("a");
    ns.set_read_timeout(Some(T)).unwrap();
    let mut f = Fixture::start(
        &[l.as_raw_fd()],
        &[("NOTIFY_SOCKET", env.as_str())],
        &["--notify-ready", "--ready-after", "100"],
    );
    f.wait_stdout("serving", T);
    let mut buf = [0u8; 256];
    let n = ns.recv(&mut buf).expect("READY=1 arrives");
    assert_eq!(&buf[..n], b"READY=1");
}

#[test]
fn fixture_ready_file_gates_notification() {
    let dir = TempDir::new("fixture-ready");
    let flag = dir.join("ready");
    let (l, _addr) = tcp_listener();
    let (ns, env) = notify_socket("b");
    ns.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let flag_s = flag.to_str().unwrap();
    let mut f = Fixture::start(
        &[l.as_raw_fd()],
        &[("NOTIFY_SOCKET", env.as_str())],
        &["--notify-ready", "--ready-file", flag_s],
    );
    f.wait_stdout("not ready", T);
    let mut buf = [0u8; 64];
    assert!(
        ns.recv(&mut buf).is_err(),
        "no READY=1 without the flag file"
    );

    std::fs::write(&flag, "").unwrap();
    ns.set_read_timeout(Some(T)).unwrap();
    let mut g = Fixture::start(
        &[l.as_raw_fd()],
        &[("NOTIFY_SOCKET", env.as_str())],
        &["--notify-ready", "--ready-file", flag_s],
    );
    g.wait_stdout("notified", T);
    let n = ns.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
}

#[test]
fn fixture_no_listen_runs_without_fds() {
    let out = Command::new(worker_bin())
        .env_remove("LISTEN_FDS")
        .arg("--crash-after")
        .arg("100")
        .arg("--no-listen")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("serving"));
}

#[test]
fn harness_load_counts_refused() {
    // Nothing listens on a fresh free port: every request is refused.
    let addr = free_addr();
    let load = Load::start_bounded(&addr, "/", 2, Duration::ZERO, T, 20);
    let rep = load.join();
    assert_eq!(rep.ok, 0);
    assert_eq!(rep.count("ConnectionRefused"), 20, "{rep:?}");
}

/// The fixture's own graceful stop loses nothing: two fixtures share one
/// socket under fresh-connection load, one is stopped. (The baseline for the
/// reload tests: a failure there is herd's, not the fixture's.)
#[test]
fn fixture_graceful_stop_on_shared_socket_loses_no_connection() {
    let _s = serial();
    let (l, addr) = tcp_listener();
    let mut a = Fixture::start(&[l.as_raw_fd()], &[], &[]);
    let mut b = Fixture::start(&[l.as_raw_fd()], &[], &[]);
    a.wait_stdout("serving", T);
    b.wait_stdout("serving", T);
    let load = Load::start(&addr, "/", 4, Duration::from_millis(1));
    let want = [a.pid(), b.pid()].into_iter().collect();
    assert_eq!(pids_answering(&addr, &want, 400), want);
    a.signal(Signal::SIGINT);
    assert_eq!(a.wait_exit(T).code(), Some(0));
    let _ = a.wait_stdout("stopping on signal 2", T);
    let want_b = [b.pid()].into_iter().collect();
    for _ in 0..50 {
        assert_eq!(pids_answering(&addr, &want_b, 1), want_b);
    }
    let rep = load.stop();
    assert!(rep.ok > 50, "{rep:?}");
    assert_eq!(rep.failed(), 0, "{rep:?}");
}
