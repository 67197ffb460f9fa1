//! `Primary::start()` inside a Rust test, on the test's own tokio runtime.
//!
//! The embedded primary starts its workers by executing its own program
//! again with the same arguments — here, this test binary. So this file
//! holds exactly one test, which branches like a Node cluster script: in a
//! worker (`is_worker()`) it serves and then ends the process; in the
//! primary it drives the cluster through `PrimaryHandle` and the `Event`
//! stream. (Run with a name filter that excludes it, the workers would run
//! no test and exit: keep this file to this one test.)

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use herd_cluster::{Event, Primary, Report, Target, Worker};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Kills every worker process group seen, even when the test panics.
#[derive(Default)]
struct Groups(Vec<u32>);

impl Drop for Groups {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for &pid in &self.0 {
            // The worker leads its group; ESRCH when it is already gone.
            let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
        }
    }
}

/// The worker side: answer each connection with this pid, echo messages.
fn worker() -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let w = Worker::get();
        let mut listener = w.listener("web", "127.0.0.1:0").expect("listener");
        tokio::spawn(async {
            while let Some(v) = Worker::get().recv().await {
                Worker::get().send(&json!({"echo": v, "id": Worker::get().id()}));
            }
        });
        w.ready().ok();
        loop {
            tokio::select! {
                _ = w.shutdown() => break,
                Ok((mut s, _)) = listener.accept() => {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let body = std::process::id().to_string();
                    let _ = s.write_all(format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ).as_bytes()).await;
                }
            }
        }
    });
    std::process::exit(0)
}

fn get_pid(addr: std::net::SocketAddr) -> Option<u32> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split("\r\n\r\n").nth(1)?.trim().parse().ok()
}

#[test]
fn primary_start_inside_a_test_runtime() {
    if herd_cluster::is_worker() {
        worker();
    }
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut groups = Groups::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (handle, mut events) = Primary::new()
            .workers(2)
            .listen("web", &addr.to_string())
            .wait_ready(Duration::from_secs(5))
            .start()
            .expect("start");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        async fn next_event(
            events: &mut herd_engine::supervisor::Events,
            deadline: tokio::time::Instant,
        ) -> Event {
            tokio::time::timeout_at(deadline, events.recv())
                .await
                .expect("an event before the deadline")
                .expect("the event stream is open")
        }

        let mut listening = false;
        let mut ready = BTreeSet::new();
        while ready.len() < 2 {
            match next_event(&mut events, deadline).await {
                Event::Listening { name, addr: a } => {
                    assert_eq!(name, "web");
                    assert_eq!(a.to_string(), addr.to_string());
                    listening = true;
                }
                Event::Lifecycle(Report::Online { pid, .. }) => groups.0.push(pid),
                Event::Lifecycle(Report::Ready { pid, .. }) => {
                    ready.insert(pid);
                }
                other => eprintln!("  event: {other:?}"),
            }
        }
        assert!(listening, "Event::Listening comes first");

        // Both workers answer on the primary's socket.
        let want = ready.clone();
        let seen: BTreeSet<u32> = tokio::task::spawn_blocking(move || {
            // The kernel picks among the workers: patient (see answers_from).
            herd_testkit::answers_from(&want, 200, || get_pid(addr).map(|p| (p, ())))
                .into_keys()
                .collect()
        })
        .await
        .unwrap();
        assert_eq!(seen, ready);

        // A message to all comes back from each.
        handle.send(Target::All, json!({"ping": true}));
        let mut echoed = BTreeSet::new();
        while echoed.len() < 2 {
            if let Event::Message { pid, message, slot } = next_event(&mut events, deadline).await {
                if message["echo"] == json!({"ping": true}) {
                    assert_eq!(message["id"], json!(slot));
                    echoed.insert(pid);
                }
            }
        }
        assert_eq!(echoed, ready);

        handle.stop();
        loop {
            match next_event(&mut events, deadline).await {
                Event::Exit(outcome) => {
                    assert_eq!(outcome, herd_cluster::Outcome::Stopped);
                    break;
                }
                Event::Lifecycle(Report::Exited { pid, .. }) => {
                    assert!(ready.contains(&pid));
                }
                _ => {}
            }
        }
    });
    // The engine reaped them: each group is gone.
    for &pid in &groups.0 {
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-(pid as i32)), None).is_err();
        assert!(gone, "worker {pid} is still running after the stop");
    }
}
