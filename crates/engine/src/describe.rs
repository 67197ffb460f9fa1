//! How the engine's events read to a person: one sentence each, in the words
//! `herd run` prints and the daemon logs. Kept apart from the machine so the
//! wording can change without touching behaviour.

use std::fmt;
use std::time::Duration;

use crate::exit::ExitStatus;
use crate::machine::{AbortReason, Answer, Command, Next, Outcome, Report, Slot, Trigger};

/// `250 ms`, `1.6 s`, `2 min 5 s`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        if ms.is_multiple_of(1000) {
            format!("{} s", ms / 1000)
        } else {
            format!("{s:.1} s")
        }
    } else {
        let s = d.as_secs();
        format!("{} min {} s", s / 60, s % 60)
    }
}

/// `512 bytes`, `64 KiB`, `1 MiB`, `2.5 MiB`.
pub fn bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    let (unit, size) = match n {
        n if n >= MIB => ("MiB", MIB),
        n if n >= KIB => ("KiB", KIB),
        n => return format!("{n} bytes"),
    };
    if n.is_multiple_of(size) {
        format!("{} {unit}", n / size)
    } else {
        format!("{:.1} {unit}", n as f64 / size as f64)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signal(s) => write!(f, "was killed by {}", s.as_str()),
        }
    }
}

impl fmt::Display for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Next::RestartIn(d) if d.is_zero() => f.write_str("restarting it at once"),
            Next::RestartIn(d) => write!(f, "restarting it in {}", duration(*d)),
            Next::Stopped => f.write_str("stopped"),
            Next::NoRestart => f.write_str("not restarting it (restart policy)"),
            Next::StopExitCode(code) => write!(
                f,
                "not restarting it: {code} is one of its stop_exit_codes"
            ),
            Next::Errored { crashes } => write!(
                f,
                "it crashed {crashes} times, each within min_uptime of starting (--max-restarts), so its slot is errored and stays empty (a reload starts it afresh); the other workers keep serving"
            ),
            Next::Replaced => f.write_str("its reload replacement takes over"),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Online { slot, pid } => write!(f, "worker {slot} online (pid {pid})"),
            Report::Ready { slot, pid } => write!(f, "worker {slot} ready (pid {pid})"),
            Report::ReadyAssumed { slot, pid, waited } => write!(
                f,
                "warning: worker {slot} (pid {pid}) did not say it was ready within {} (wait_ready: \
                 process.send('ready') or READY=1; listen_timeout): taken as online, as pm2 does; \
                 said once for this app",
                duration(*waited)
            ),
            Report::BackoffSkipped { slot } => write!(
                f,
                "worker {slot} starts now, before its backoff ends: no worker of the app is running, \
                 and its last one was killed, not crashed"
            ),
            Report::Exited {
                slot,
                pid,
                status,
                next: Next::Stopped,
                ..
            } => {
                write!(f, "worker {slot} (pid {pid}) stopped: it {status}")
            }
            Report::Exited {
                slot,
                pid,
                status,
                uptime,
                next,
            } => write!(
                f,
                "worker {slot} (pid {pid}) {status} after {}; {next}",
                duration(*uptime)
            ),
            Report::SpawnFailed { slot, error, next } => {
                write!(f, "worker {slot} could not start: {error}; {next}")
            }
            Report::ReloadStarted => f.write_str("reload started: replacing workers one at a time"),
            Report::ReloadQueued => {
                f.write_str("reload queued: it runs once the current reload ends")
            }
            Report::ReloadFinished => f.write_str("reload finished"),
            Report::Replacing { slot } => write!(
                f,
                "replacing worker {slot}: starting its successor, then draining it"
            ),
            Report::Restarting { slot } => write!(
                f,
                "restarting worker {slot}: it stops first, then its successor starts (a new worker could not listen beside it)"
            ),
            Report::ReloadAborted {
                slot,
                reason,
                old_serving,
            } => {
                f.write_str("reload ")?;
                aborted(f, reason, Some(*slot), *old_serving)
            }
            Report::Stopping { workers } => write!(f, "stopping {workers} worker(s)"),
            Report::Scaled { slots } => write!(f, "now running {slots} worker(s)"),
            Report::Refused { command, reason } => {
                let what = match command {
                    Command::Start => "start",
                    Command::Reload => "reload",
                    Command::Stop => "stop",
                    Command::ScaleUp => "add a worker",
                    Command::ScaleDown => "remove a worker",
                    Command::Scale(_) => "scale",
                    Command::Replace(_) => "replace the worker",
                };
                write!(f, "cannot {what}: {reason}")
            }
            Report::Triggered(Trigger::Watch { path, changes }) => {
                f.write_str("watch: ")?;
                match path {
                    Some(p) => write!(f, "{} changed", p.display())?,
                    None => f.write_str("files changed")?,
                }
                if *changes > 1 {
                    write!(f, " ({changes} changes)")?;
                }
                f.write_str("; reloading")
            }
            Report::Triggered(Trigger::Cron { pattern }) => {
                write!(f, "cron_restart '{pattern}' is due; reloading")
            }
            Report::Watching { folders } => write!(
                f,
                "watch: watching {folders} folder(s) for changes; each reloads the app"
            ),
            Report::Answered { ticket, answer } => write!(f, "command {} {answer}", ticket.0),
        }
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Exited(status) => {
                write!(f, "its replacement {status} before it was ready")
            }
            AbortReason::SpawnFailed(e) => write!(f, "its replacement could not start ({e})"),
            AbortReason::NotReady(t) => write!(
                f,
                "its replacement was not ready within {} (--listen-timeout), so herd stopped it",
                duration(*t)
            ),
            AbortReason::Stopping => f.write_str("herd is stopping"),
        }
    }
}

/// "aborted at worker N: why; what serves now" (a reload's end, as a report
/// and as its ticket's answer).
fn aborted(
    f: &mut fmt::Formatter<'_>,
    reason: &AbortReason,
    slot: Option<Slot>,
    old_serving: bool,
) -> fmt::Result {
    match slot {
        Some(slot) => write!(f, "aborted at worker {slot}: {reason}")?,
        None => write!(f, "aborted: {reason}")?,
    }
    if matches!(reason, AbortReason::Stopping) || slot.is_none() {
        return Ok(());
    }
    if old_serving {
        f.write_str("; the old worker keeps serving")
    } else {
        f.write_str("; no old worker serves this slot any more (it had died, or the reload stopped it first), so the slot restarts by its restart policy; the other workers keep serving")
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Done => f.write_str("done"),
            Answer::Aborted {
                reason,
                slot,
                old_serving,
            } => aborted(f, reason, *slot, *old_serving),
            Answer::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Stopped => f.write_str("stopped"),
            Outcome::Completed { success: true } => f.write_str("every worker exited successfully"),
            Outcome::Completed { success: false } => {
                f.write_str("every worker has exited, and some failed")
            }
            Outcome::Errored { slot, last } => write!(
                f,
                "every worker slot is errored (crashing on start); the last, worker {slot}, {last}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(duration(Duration::from_millis(1600)), "1.6 s");
        assert_eq!(duration(Duration::from_secs(3)), "3 s");
        assert_eq!(duration(Duration::from_secs(125)), "2 min 5 s");
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(bytes(512), "512 bytes");
        assert_eq!(bytes(64 * 1024), "64 KiB");
        assert_eq!(bytes(1 << 20), "1 MiB");
        assert_eq!(bytes(5 * (1 << 20) / 2), "2.5 MiB");
    }

    #[test]
    fn an_exit_names_the_cause_and_what_follows() {
        let r = Report::Exited {
            slot: 1,
            pid: 42,
            status: ExitStatus::Code(1),
            uptime: Duration::from_millis(30),
            next: Next::RestartIn(Duration::from_millis(200)),
        };
        assert_eq!(
            r.to_string(),
            "worker 1 (pid 42) exited with code 1 after 30 ms; restarting it in 200 ms"
        );
        let r = Report::Exited {
            slot: 0,
            pid: 7,
            status: ExitStatus::Code(0),
            uptime: Duration::from_secs(2),
            next: Next::StopExitCode(0),
        };
        assert_eq!(
            r.to_string(),
            "worker 0 (pid 7) exited with code 0 after 2 s; not restarting it: 0 is one of its stop_exit_codes"
        );
    }
}
