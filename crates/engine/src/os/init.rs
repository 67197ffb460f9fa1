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
//! For `herd daemon` ([`OnHerdDeath::Restart`]), a real herd that dies on its own (killed by a
//! signal PID 1 did not forward, or failed after it had run a second) is started again with
//! the same arguments, after a backoff (100 ms, doubling to 5 s, back to 100 ms after 30 s
//! up): the apps' supervisors run on (they are PID 1's children too) and the new daemon adopts
//! them, as under systemd's `Restart=on-failure`. For `herd run`, whose workers die with it,
//! PID 1 exits with its status ([`OnHerdDeath::Exit`]).
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

/// Set by PID 1 in the environment of a herd it starts again, which then knows it runs under
/// the init (it is not PID 1's first child, so it cannot tell otherwise).
const RESTARTED_ENV: &str = "HERD_INIT_RESTARTED";

/// What PID 1 does when the real herd dies on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHerdDeath {
    /// Exit with herd's status, so the container ends (`herd run`: its workers die with it).
    Exit,
    /// Start herd again with the same arguments, after a backoff (`herd daemon`: the apps run
    /// on under their supervisors, and the new daemon adopts them).
    Restart,
}

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
    init_if_pid1_then(OnHerdDeath::Exit);
}

/// [`init_if_pid1`], choosing what PID 1 does when the real herd dies on its own.
pub fn init_if_pid1_then(on_death: OnHerdDeath) {
    if nix::unistd::getpid().as_raw() != 1 {
        if std::env::var_os(RESTARTED_ENV).is_some() {
            SUPERVISED.store(true, Ordering::Relaxed);
            // SAFETY: one thread (the caller's contract): nothing reads the environment meanwhile.
            unsafe { std::env::remove_var(RESTARTED_ENV) };
        }
        return;
    }
    // What a restart runs, prepared while allocating is still ordinary.
    let respawn = match on_death {
        OnHerdDeath::Exit => None,
        OnHerdDeath::Restart => Respawn::new(),
    };
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
        become_herd(&old);
        return;
    }
    std::process::exit(serve(child, &set, &old, respawn.as_ref()));
}

/// In PID 1's child: its own process group (and the terminal's foreground), and the signal
/// mask herd started with.
fn become_herd(old: &libc::sigset_t) {
    // SAFETY: plain calls on our own process; failures are harmless (we keep the
    // group, or the terminal stays with the init's group). SIGTTOU is still blocked, so
    // tcsetpgrp from what is now a background group does not stop us.
    unsafe {
        libc::setpgid(0, 0);
        if libc::isatty(libc::STDIN_FILENO) == 1 {
            libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
        }
        libc::sigprocmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
    }
}

/// How PID 1 starts herd again: this binary, with the arguments it was given.
struct Respawn {
    exe: std::ffi::CString,
    /// The arguments, then a null pointer (pointing into `_args`).
    argv: Vec<*const libc::c_char>,
    _args: Vec<std::ffi::CString>,
}

impl Respawn {
    fn new() -> Option<Respawn> {
        use std::os::unix::ffi::OsStringExt;
        let args: Vec<std::ffi::CString> = std::env::args_os()
            .map(|a| std::ffi::CString::new(a.into_vec()).ok())
            .collect::<Option<_>>()?;
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        Some(Respawn {
            // Its path (so it is named `herd` again), not /proc/self/exe.
            exe: std::ffi::CString::new(std::env::current_exe().ok()?.into_os_string().into_vec())
                .ok()?,
            argv,
            _args: args,
        })
    }

    /// Fork and exec herd again; the child's pid, or none if the fork failed.
    fn spawn(&self, old: &libc::sigset_t) -> Option<libc::pid_t> {
        // SAFETY: PID 1 has one thread, so the child is a faithful copy.
        let child = unsafe { libc::fork() };
        if child == 0 {
            become_herd(old);
            // SAFETY: one thread; the strings outlive the exec (which replaces the image) and
            // argv ends with a null pointer.
            unsafe {
                std::env::set_var(RESTARTED_ENV, "1");
                libc::execv(self.exe.as_ptr(), self.argv.as_ptr());
                libc::_exit(127);
            }
        }
        (child > 0).then_some(child)
    }
}

/// Whether herd, which ended with `status` after `up`, died on its own (rather than being
/// asked to stop, or failing at its start).
fn died_on_its_own(status: libc::c_int, up: std::time::Duration, stopping: bool) -> bool {
    !stopping
        && (libc::WIFSIGNALED(status)
            || (libc::WIFEXITED(status)
                && libc::WEXITSTATUS(status) != 0
                && up >= std::time::Duration::from_secs(1)))
}

/// PID 1's loop: forward signals to `child`, reap everything; `child`'s exit code at the end
/// (or, with `respawn`, start it again when it died on its own).
fn serve(
    mut child: libc::pid_t,
    set: &libc::sigset_t,
    old: &libc::sigset_t,
    respawn: Option<&Respawn>,
) -> i32 {
    use std::time::{Duration, Instant};
    const FIRST: Duration = Duration::from_millis(100);
    let mut stopping = false;
    let mut started = Instant::now();
    let mut backoff = FIRST;
    // Herd is not running (it died on its own): when to start it again, and its last code.
    let mut down: Option<(Instant, i32)> = None;
    loop {
        let wait = match down {
            Some((at, _)) => at
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)),
            None => Duration::from_secs(1),
        };
        let tick = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: sigtimedwait on a set we own, with a null siginfo.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &tick) };
        if sig > 0 && sig != libc::SIGCHLD {
            if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) {
                stopping = true;
            }
            match down {
                // No herd to stop: done.
                Some((_, code)) if stopping => return code,
                Some(_) => {}
                // SAFETY: kill on our own child's pid (not yet reaped, so not reused).
                None => unsafe {
                    libc::kill(child, sig);
                },
            }
            continue;
        }
        // SIGCHLD, the tick, or EINTR: reap whatever has exited.
        if down.is_none() {
            if let Some(status) = reap_all(child) {
                let up = started.elapsed();
                match respawn {
                    Some(_) if died_on_its_own(status, up, stopping) => {
                        if up >= Duration::from_secs(30) {
                            backoff = FIRST;
                        }
                        eprintln!(
                            "herd: init: herd (pid {child}) ended on its own (exit status {}); \
                             starting it again in {} ms",
                            exit_code(status),
                            backoff.as_millis()
                        );
                        down = Some((Instant::now() + backoff, exit_code(status)));
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    // herd is gone; whatever exited meanwhile is reaped too, and anything
                    // still running is killed by the kernel when PID 1 exits.
                    _ => {
                        reap_all(child);
                        return exit_code(status);
                    }
                }
            }
        } else {
            reap_all(0);
        }
        if let (Some((at, code)), Some(respawn)) = (down, respawn) {
            if Instant::now() >= at {
                match respawn.spawn(old) {
                    Some(pid) => {
                        child = pid;
                        started = Instant::now();
                        down = None;
                    }
                    None => {
                        eprintln!(
                            "herd: init: cannot start herd again: {}",
                            std::io::Error::last_os_error()
                        );
                        return code;
                    }
                }
            }
        }
    }
}

/// Reap every exited child; `child`'s `waitpid` status if it was among them.
fn reap_all(child: libc::pid_t) -> Option<libc::c_int> {
    let mut found = None;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            if pid == child {
                found = Some(status);
            }
            continue;
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // 0: children left, none exited; ECHILD: no children at all.
        return found;
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
    fn only_a_herd_that_died_on_its_own_is_started_again() {
        let long = std::time::Duration::from_secs(5);
        let short = std::time::Duration::from_millis(100);
        assert!(died_on_its_own(libc::SIGKILL, short, false));
        assert!(died_on_its_own(libc::SIGSEGV, long, false));
        assert!(died_on_its_own(1 << 8, long, false));
        // Asked to stop, a clean exit, or a failure at its start: not again.
        assert!(!died_on_its_own(libc::SIGKILL, long, true));
        assert!(!died_on_its_own(0, long, false));
        assert!(!died_on_its_own(2 << 8, short, false));
    }

    #[test]
    fn not_pid_1_means_nothing_happens() {
        init_if_pid1();
        assert!(!under_herd_init());
    }
}
