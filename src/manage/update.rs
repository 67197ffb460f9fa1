//! `herd update`: the daemon, then each app's supervisor, replaced in place
//! by the herd binary now at the daemon's path (same pids, same workers,
//! the apps serving on). The daemon checks the new binary and executes it
//! (`Request::UpdateDaemon`); this waits until the same daemon pid serves
//! on the new file, then asks it to upgrade the supervisors one by one
//! (`Request::UpdateApps`) and prints what each did. See
//! `herd_daemon::handlers::update`.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use anyhow::Context;
use herd_protocol::{Request, Response};

use super::client;

/// How long the daemon has to serve again after its exec.
const DAEMON_DEADLINE: Duration = Duration::from_secs(30);

pub fn main() -> anyhow::Result<i32> {
    let started = Instant::now();
    let context = "herd update talks to the running daemon, which must speak this herd's protocol";
    let Some(Response::Pong { pid, .. }) =
        client::request(Request::Ping, false).context(context)?
    else {
        println!("no daemon runs: nothing to update (the next herd command starts one, on the new binary)");
        return Ok(0);
    };
    if let Some(Response::Done { message }) = client::request(Request::UpdateDaemon, false)? {
        println!("{message}");
    }
    // The same pid serving on the file at its path.
    loop {
        if runs_its_file(pid) {
            if let Ok(Some(Response::Pong { pid: now, .. })) = client::request(Request::Ping, false)
            {
                anyhow::ensure!(
                    now == pid,
                    "daemon {pid} was replaced by daemon {now} instead of executing the new binary; see $HERD_HOME/herd.log"
                );
                break;
            }
        }
        anyhow::ensure!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "daemon {pid} ended instead of serving on the new binary (the apps serve on under their \
             supervisors; the next herd command starts a daemon, which adopts them); see $HERD_HOME/herd.log"
        );
        anyhow::ensure!(
            started.elapsed() < DAEMON_DEADLINE,
            "daemon {pid} did not serve on the new binary within {} s; see $HERD_HOME/herd.log",
            DAEMON_DEADLINE.as_secs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "daemon {pid} serves on the new binary ({})",
        herd_engine::describe::duration(started.elapsed())
    );
    if let Some(Response::Done { message }) = client::request(Request::UpdateApps, false)? {
        println!("{message}");
    }
    Ok(0)
}

/// Whether process `pid` runs the file now at the path it was started from.
fn runs_its_file(pid: u32) -> bool {
    let exe = format!("/proc/{pid}/exe");
    let Ok(path) = std::fs::read_link(&exe) else {
        return false;
    };
    let text = path.to_string_lossy();
    let path = text.strip_suffix(" (deleted)").unwrap_or(&text);
    match (std::fs::metadata(&exe), std::fs::metadata(path)) {
        (Ok(running), Ok(on_disk)) => {
            (running.dev(), running.ino()) == (on_disk.dev(), on_disk.ino())
        }
        _ => false,
    }
}
