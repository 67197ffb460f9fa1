//! herd under a service manager: it reports its own state on `NOTIFY_SOCKET`
//! (systemd `Type=notify` / `notify-reload`): ready once every worker is,
//! reloading during a reload, stopping when asked to stop.

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// herd, stopped gracefully (then killed) if the test fails half-way, so its
/// workers are stopped by herd itself.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification before the deadline");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn herd_tells_its_service_manager_ready_reloading_and_stopping() {
    let dir = std::env::temp_dir().join(format!("herd-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let port = herd_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = herd_testkit::run_args(
        &["-i", "2", "--ready-delay", "200ms", "--listen", &listen],
        &[],
    );
    let child = Command::new(herd_testkit::herd_bin())
        .args(&args)
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut herd = Guard(child);
    let herd_pid = Pid::from_raw(herd.0.id() as i32);

    // READY=1 only once both workers are ready, naming herd as the main pid.
    let ready = recv(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=2 workers ready"), "{ready:?}");
    assert!(ready.contains(&format!("MAINPID={herd_pid}")), "{ready:?}");
    // The workers inherit no NOTIFY_SOCKET of herd's: theirs is herd's own.
    let (status, env) = herd_testkit::http_get(&listen, "/env", Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200);
    assert!(!env.contains(path.to_str().unwrap()), "{env}");

    kill(herd_pid, Signal::SIGHUP).unwrap();
    let reloading = recv(&sock);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    assert_eq!(recv(&sock), "READY=1", "ready again after the reload");

    kill(herd_pid, Signal::SIGTERM).unwrap();
    assert_eq!(recv(&sock), "STOPPING=1");
    let status = herd.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
