//! Signalling and reaping workers and their process groups.
//!
//! Every worker leads its own process group (pgid = pid, see `spawn`). While
//! an exited worker is still a zombie its pid — and so its group id — cannot
//! be reused, which is what makes killing the group of an exited worker safe:
//! [`try_reap`] looks with `WNOWAIT`, kills the group, and only then reaps.

use std::io;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::exit::ExitStatus;

/// How a wait status (from `waitpid`) reads as an [`ExitStatus`]; `None`
/// for a status that is no end (stopped, continued).
fn exit_status(status: libc::c_int) -> Option<ExitStatus> {
    if libc::WIFEXITED(status) {
        Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        Some(match Signal::try_from(sig) {
            Ok(s) => ExitStatus::Signal(s),
            Err(_) => ExitStatus::Code(128 + sig),
        })
    } else {
        None
    }
}

/// Send `signal` to every process in the group `pgid`. A group that is
/// already gone is not an error.
pub(crate) fn signal_group(pgid: Pid, signal: Signal) -> io::Result<()> {
    if pgid.as_raw() <= 1 {
        // killpg(0) / killpg(1) would hit our own group or everything.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    match nix::sys::signal::killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot send {signal} to process group {pgid}: {e}"),
        )),
    }
}

/// If `pid` (a child of this process) has exited: SIGKILL whatever is left
/// of its process group (so no grandchild outlives it), reap it, and return
/// how it ended. `None` while it runs. Uses `waitid(WNOWAIT)` so the group id
/// cannot be reused between the check and the kill.
///
/// Errors: `NotFound` if `pid` is not (or no longer) a child of this process
/// (ECHILD) — for example if it was already reaped.
pub(crate) fn try_reap(pid: Pid) -> io::Result<Option<ExitStatus>> {
    if pid.as_raw() <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid pid {pid}"),
        ));
    }
    // Peek: has it exited? Leaves it a zombie, so its pid/pgid stay taken.
    // SAFETY: waitid on a zeroed siginfo_t we own; si_pid() reads the
    // SIGCHLD fields the kernel filled in (it stays 0 if nothing exited).
    let exited = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        loop {
            let rc = libc::waitid(
                libc::P_PID,
                pid.as_raw() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if rc == 0 {
                break info.si_pid() != 0;
            }
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(wait_error("waitid", pid, e)),
            }
        }
    };
    if !exited {
        return Ok(None);
    }

    // Anything still in its group (grandchildren that kept the group) dies
    // with it. The group may well be empty already.
    match nix::sys::signal::killpg(pid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        // EPERM: a member changed credentials (setuid helper); nothing we can
        // do, and it must not stop us from reaping.
        Err(_) => {}
    }

    // Reap for real. It has exited, so this does not block.
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: plain waitpid into a local.
        let rc = unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
        if rc == pid.as_raw() {
            break;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(wait_error("waitpid", pid, e)),
        }
    }
    exit_status(status)
        .map(Some)
        .ok_or_else(|| io::Error::other(format!("waitpid({pid}): unexpected status {status:#x}")))
}

/// A failed `waitid`/`waitpid`: ECHILD means it is not our child (anymore).
fn wait_error(call: &str, pid: Pid, e: Errno) -> io::Error {
    if e == Errno::ECHILD {
        return io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} is not a child of herd (already reaped?)"),
        );
    }
    io::Error::new(
        io::Error::from(e).kind(),
        format!("{call}({pid}) failed: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::spawn::{spawn, SpawnSpec};
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    fn sh(script: &str) -> crate::os::spawn::Spawned {
        spawn(&SpawnSpec {
            program: PathBuf::from("/bin/sh"),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: None,
            fds: vec![],
            set_listen_pid: false,
        })
        .unwrap()
    }

    fn reap_within(pid: Pid, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = try_reap(pid).unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "{pid} did not exit in time");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn alive(pid: i32) -> bool {
        // A zombie still "exists" for kill(0); check /proc state instead.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => {
                let state = s.rsplit(')').next().unwrap().split_whitespace().next();
                state != Some("Z") && state != Some("X")
            }
            Err(_) => false,
        }
    }

    #[test]
    fn exit_code_and_none_while_running() {
        let s = sh("sleep 0.2; exit 7");
        assert_eq!(try_reap(s.pid).unwrap(), None);
        assert_eq!(
            reap_within(s.pid, Duration::from_secs(5)),
            ExitStatus::Code(7)
        );
        // Already reaped: NotFound.
        assert_eq!(try_reap(s.pid).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn killed_by_signal_via_group() {
        let s = sh("sleep 30");
        signal_group(s.pid, Signal::SIGTERM).unwrap();
        assert_eq!(
            reap_within(s.pid, Duration::from_secs(5)),
            ExitStatus::Signal(Signal::SIGTERM)
        );
        // The group is gone now: still not an error.
        signal_group(s.pid, Signal::SIGTERM).unwrap();
    }

    #[test]
    fn grandchildren_in_the_group_are_killed_on_reap() {
        // The shell starts a background sleeper (same group), prints its pid, exits.
        let s = sh("sleep 30 >/dev/null 2>&1 & echo $!; exit 0");
        let mut out = String::new();
        {
            use std::io::Read;
            let fd = s.stdout;
            nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
            )
            .unwrap();
            std::fs::File::from(fd).read_to_string(&mut out).ok();
        }
        let grandchild: i32 = out.lines().next().unwrap().trim().parse().unwrap();
        assert_eq!(
            reap_within(s.pid, Duration::from_secs(5)),
            ExitStatus::Code(0)
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) {
            assert!(
                Instant::now() < deadline,
                "grandchild {grandchild} survived"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn refuses_dangerous_groups() {
        assert!(signal_group(Pid::from_raw(0), Signal::SIGTERM).is_err());
        assert!(signal_group(Pid::from_raw(1), Signal::SIGTERM).is_err());
    }

    #[test]
    fn not_a_child_is_not_found() {
        // pid 1 exists but is not our child.
        assert_eq!(
            try_reap(Pid::from_raw(1)).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
