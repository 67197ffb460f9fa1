//! herd as PID 1 (a container's entrypoint): a tiny init in front of the real herd.
//!
//! PID 1 has two duties nobody else has. Every orphan in the PID namespace is re-parented to
//! it, so it must reap them or they stay zombies for ever (a worker that double-forks, a shell
//! that backgrounds something, a grandchild that outlives its worker); and the kernel does not
//! apply default dispositions to it, so a signal it has no handler for is dropped, and when it
//! exits, everything else in the namespace is killed.
//!
//! herd cannot reap "everything" in the process that runs the engine: the supervisor reaps its
//! workers one by one, by pid (`waitid` in [`super::process::try_reap`]), and a
//! `waitpid(-1)` there would steal a worker's exit status. So, as tini does, herd splits in two
//! when it finds itself PID 1 (only for `herd run` and `herd daemon`, which call [`init_if_pid1`] before
//! anything else, while the process has a single thread and fork is safe):
//!
//! - the **child** (PID 2) returns from [`init_if_pid1`] and runs the real herd, unchanged: its workers
//!   are its children (their `PR_SET_PDEATHSIG` is tied to it, as without the init), its
//!   signal handlers, its `READY=1` on `NOTIFY_SOCKET`. It gets its own process group and,
//!   when stdin is a terminal, the foreground, so a ^C on a `docker run -it` reaches it once
//!   (from the terminal), not twice (terminal + forwarded), which herd would take as "stop at
//!   once".
//! - the **parent** stays PID 1 and never returns: it blocks [`FORWARDED`] and SIGCHLD before
//!   the fork (so nothing is lost in between; blocked signals are queued even for PID 1),
//!   then waits for them with `sigtimedwait`. A forwarded signal (TERM, INT, HUP, TTIN, TTOU,
//!   USR1, ...) is sent on to the child; SIGCHLD (or a one-second tick, in case one was
//!   coalesced) reaps every exited child with `waitpid(-1, WNOHANG)`, orphans included. When
//!   the real herd is gone, it reaps once more and exits with herd's code, or 128+n if herd
//!   died by signal n (a shell's convention, which `docker` and Kubernetes report).
//!
//! The parent allocates nothing and runs no runtime: it is a loop over three system calls.
//! [`under_herd_init`] tells the child it runs under this init: `herd run` and the daemon then leave
//! `MAINPID` out of their `READY=1` (pid 2 of the namespace means nothing to a service manager
//! outside it; the main pid is then the process the manager started).
//!
//! Not handled here: a `SIGKILL` of PID 1 (it cannot be caught; the kernel then kills the whole
//! namespace, workers included), `SIGSTOP`/`SIGTSTP` (not forwarded), and a signal forwarded in
//! the first instant of the child's life, before herd has installed its handlers: it then acts
//! by default (a SIGTERM ends herd, and PID 1 exits 143), as for any process that just started.

use std::sync::atomic::{AtomicBool, Ordering};

/// The signals PID 1 passes on to the real herd: the ones herd acts on (`herd run`: INT/TERM
/// stop, HUP reload, TTIN/TTOU scale; the daemon: INT/TERM stop, USR1 reopen logs), and the
/// ones a user may mean for it (QUIT, USR2, WINCH).
pub(crate) const FORWARDED: [libc::c_int; 9] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGWINCH,
];

static SUPERVISED: AtomicBool = AtomicBool::new(false);

/// Whether this process is the real herd under herd's own PID-1 init.
#[must_use]
pub fn under_herd_init() -> bool {
    SUPERVISED.load(Ordering::Relaxed)
}

/// The exit code a shell gives a process that ended with this `waitpid` status.
#[must_use]
pub(crate) fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

/// If this process is PID 1, become a tiny init (see the module doc): the call returns only in
/// the child that goes on to be the real herd, or, if the fork fails, in this process after a
/// warning. Does nothing otherwise. Call it while the process has one thread.
pub fn init_if_pid1() {
    if nix::unistd::getpid().as_raw() != 1 {
        return;
    }
    // SAFETY: sigset manipulation on locals; sigprocmask on this (only) thread.
    let (set, old) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        (set, old)
    };
    // SAFETY: one thread (the caller's contract), so the child is a faithful copy.
    let child = unsafe { libc::fork() };
    if child < 0 {
        let err = std::io::Error::last_os_error();
        eprintln!(
            "herd: warning: running as PID 1 without reaping orphans: cannot fork the init ({err}); \
             run herd under an init such as `tini` or `docker run --init`"
        );
        // SAFETY: restores the mask saved above.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        return;
    }
    if child == 0 {
        SUPERVISED.store(true, Ordering::Relaxed);
        // SAFETY: plain calls on our own process; failures are harmless (we keep the
        // group, or the terminal stays with the init's group). SIGTTOU is still blocked, so
        // tcsetpgrp from what is now a background group does not stop us.
        unsafe {
            libc::setpgid(0, 0);
            if libc::isatty(libc::STDIN_FILENO) == 1 {
                libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
            }
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        return;
    }
    std::process::exit(serve(child, &set));
}

/// PID 1's loop: forward signals to `child`, reap everything; `child`'s exit code at the end.
fn serve(child: libc::pid_t, set: &libc::sigset_t) -> i32 {
    let tick = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: sigtimedwait on a set we own, with a null siginfo.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &tick) };
        if sig > 0 && sig != libc::SIGCHLD {
            // SAFETY: kill on our own child's pid (not yet reaped, so not reused).
            unsafe { libc::kill(child, sig) };
            continue;
        }
        // SIGCHLD, the tick, or EINTR: reap whatever has exited.
        if let Some(code) = reap_all(child) {
            // herd is gone; whatever exited meanwhile is reaped too, and anything still running
            // is killed by the kernel when PID 1 exits.
            reap_all(child);
            return code;
        }
    }
}

/// Reap every exited child; `child`'s exit code if it was among them.
fn reap_all(child: libc::pid_t) -> Option<i32> {
    let mut code = None;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            if pid == child {
                code = Some(exit_code(status));
            }
            continue;
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // 0: children left, none exited; ECHILD: no children at all.
        return code;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        // waitpid statuses: exited with c is c << 8; killed by n is n.
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(libc::SIGTERM), 128 + 15);
        assert_eq!(exit_code(libc::SIGKILL), 137);
    }

    #[test]
    fn not_pid_1_means_nothing_happens() {
        init_if_pid1();
        assert!(!under_herd_init());
    }
}
