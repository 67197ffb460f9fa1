//! Starting a worker: fork/exec with its inherited fds placed at 3, 4, …,
//! in a new process group, with `LISTEN_PID` set to the child's own pid.
//!
//! `std::process::Command` cannot do this: `LISTEN_PID` must hold the child's
//! pid, which only the child knows before exec. So everything the child needs
//! (C strings, the argv and envp arrays, a fixed-size `LISTEN_PID=` buffer, the
//! pipes) is prepared before `fork`; between `fork` and `execve` the child only
//! makes async-signal-safe calls — no allocation, no locks — because herd is
//! multi-threaded and another thread may hold the allocator's lock at the
//! moment of the fork.
//!
//! Two ways in: [`spawn`] forks and blocks until the exec (tests, tools), and
//! [`fork_on_spawner`] + [`Forked::wait_exec`] for the supervisor, which must
//! not block its loop: the fork runs on one dedicated *spawner thread* and the
//! exec is awaited on the CLOEXEC report pipe through the async reactor.
//!
//! Why a dedicated thread: `PR_SET_PDEATHSIG` (workers die with herd) fires
//! when the *thread* that forked exits, not the process. A tokio worker or
//! blocking-pool thread may exit while herd lives (`block_in_place`, idle
//! blocking threads), which would SIGKILL healthy workers; the spawner thread
//! is started once and never exits, so the signal fires only when herd dies.
//! A host whose single-threaded runtime runs on the process's main thread
//! (the supervisor, `herd run`) makes that thread the spawner itself
//! ([`spawn_on_this_thread`]): it forks in line, between two polls, and no
//! second thread is kept (its stack and its kernel task cost memory in
//! every app's supervisor).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::Pid;

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct SpawnSpec {
    /// Already resolved path of the program (see [`resolve_program`]).
    pub program: PathBuf,
    /// argv, including argv[0].
    pub argv: Vec<OsString>,
    /// The complete environment (nothing is inherited implicitly).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory of the child; `None` keeps herd's.
    pub cwd: Option<PathBuf>,
    /// fds to place in the child at 3, 4, 5, … in this order, without
    /// close-on-exec. Every other fd of the parent is closed in the child:
    /// they are all close-on-exec in herd, and the child additionally marks
    /// every fd above the placed ones close-on-exec before `execve`. The fds
    /// must stay open until `spawn` returns.
    pub fds: Vec<RawFd>,
    /// Add `LISTEN_PID=<child pid>` to the child's environment (replacing any
    /// `LISTEN_PID` in `env`).
    pub set_listen_pid: bool,
}

/// A started worker: its pid (also its process group id) and the read ends
/// of its stdout and stderr pipes (nonblocking, close-on-exec).
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for the digits of any `pid_t` plus the terminating NUL.
const LISTEN_PID_ROOM: usize = 12;

/// Which step of the child's setup failed; sent to the parent with errno.
#[derive(Clone, Copy)]
#[repr(i32)]
enum Stage {
    Setpgid = 1,
    Signals = 2,
    Fds = 3,
    Chdir = 4,
    Exec = 5,
}

impl Stage {
    fn from_i32(v: i32) -> Option<Stage> {
        Some(match v {
            1 => Stage::Setpgid,
            2 => Stage::Signals,
            3 => Stage::Fds,
            4 => Stage::Chdir,
            5 => Stage::Exec,
            _ => return None,
        })
    }
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{what} contains a NUL byte: {:?}",
                String::from_utf8_lossy(bytes)
            ),
        )
    })
}

fn with_context(err: io::Error, context: impl std::fmt::Display) -> io::Error {
    io::Error::new(err.kind(), format!("{context}: {err}"))
}

/// Everything the child touches between fork and exec, prepared in advance.
/// Raw pointers into buffers owned by the caller of [`spawn`], which outlive
/// the fork (the child has its own copy of that memory).
struct ChildPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: Option<*const libc::c_char>,
    /// Where to write the pid's digits and NUL (`LISTEN_PID_ROOM` bytes).
    listen_pid_digits: Option<*mut u8>,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
    fds: &'a [RawFd],
    /// Scratch space, `fds.len()` long, for the temporary copies of `fds`.
    moved: &'a mut [RawFd],
    /// The parent's pid, to notice that it died before the child asked to
    /// die with it.
    parent: libc::pid_t,
}

/// Start the program. Returns once the exec has succeeded; an exec failure
/// (not found, not executable) is reported as an error and leaves no process.
///
/// This blocks the calling thread until the child has called `execve` (a few
/// hundred microseconds, more on a loaded machine), and ties the child's
/// `PR_SET_PDEATHSIG` to the calling thread: the supervisor uses
/// [`fork_on_spawner`] instead.
#[cfg(test)]
pub(crate) fn spawn(spec: &SpawnSpec) -> io::Result<Spawned> {
    fork(spec)?.wait_exec_blocking()
}

/// A child between `fork` and `execve`: its pid is known (and it is herd's
/// to reap from now on), but the exec may still fail. Finish with
/// [`Forked::wait_exec`] or [`Forked::wait_exec_blocking`]; dropping it
/// unwaited kills and reaps the child, so no process is ever left untracked.
#[derive(Debug)]
pub(crate) struct Forked {
    pub pid: Pid,
    /// None once handed out by a wait.
    parts: Option<ForkedParts>,
}

#[derive(Debug)]
struct ForkedParts {
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// EOF: the exec succeeded; 8 bytes: the stage and errno of a failure.
    report: OwnedFd,
    program: PathBuf,
    cwd: Option<PathBuf>,
}

impl Drop for Forked {
    fn drop(&mut self) {
        if self.parts.is_some() {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            reap_blocking(self.pid);
        }
    }
}

impl Forked {
    /// Wait for the exec, blocking this thread.
    #[cfg(test)]
    pub(crate) fn wait_exec_blocking(mut self) -> io::Result<Spawned> {
        let parts = self.parts.take().expect("waited once");
        let mut report = [0u8; 8];
        let mut got = 0;
        while got < report.len() {
            match nix::unistd::read(&parts.report, &mut report[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(parts.unreadable(self.pid, e.into())),
            }
        }
        parts.finish(self.pid, &report[..got], reap_blocking)
    }

    /// Wait for the exec without blocking: the report pipe is awaited on the
    /// runtime's reactor. Must be called inside a tokio runtime.
    pub(crate) async fn wait_exec(mut self) -> io::Result<Spawned> {
        let parts = self.parts.take().expect("waited once");
        let pid = self.pid;
        let mut report = [0u8; 8];
        let mut got = 0;
        let watched = set_nonblocking(&parts.report)
            .and_then(|()| super::watch(parts.report, tokio::io::Interest::READABLE));
        let report_fd = match watched {
            Ok(fd) => fd,
            Err(e) => {
                // Cannot watch the pipe: kill and reap, off the loop.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = tokio::task::spawn_blocking(move || reap_blocking(pid)).await;
                return Err(with_context(
                    e,
                    format!(
                        "cannot start {}: watching the exec status failed",
                        parts.program.display()
                    ),
                ));
            }
        };
        let mut failure = None;
        while got < report.len() {
            let mut ready = match report_fd.readable().await {
                Ok(r) => r,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            match ready.try_io(|fd| {
                nix::unistd::read(fd.get_ref(), &mut report[got..]).map_err(io::Error::from)
            }) {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => got += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                Err(_would_block) => {}
            }
        }
        let parts = ForkedParts {
            report: report_fd.into_inner(),
            ..parts
        };
        if let Some(e) = failure {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = tokio::task::spawn_blocking(move || reap_blocking(pid)).await;
            return Err(parts.unreadable_reaped(e));
        }
        if got == 0 {
            return parts.finish(pid, &[], |_| {});
        }
        // The exec failed: the child is exiting (127) right after its report.
        let _ = tokio::task::spawn_blocking(move || reap_blocking(pid)).await;
        parts.finish(pid, &report[..got], |_| {})
    }
}

impl ForkedParts {
    /// Reading the report failed: assume the worst, leave no process.
    #[cfg(test)]
    fn unreadable(self, pid: Pid, e: io::Error) -> io::Error {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        reap_blocking(pid);
        self.unreadable_reaped(e)
    }

    fn unreadable_reaped(self, e: io::Error) -> io::Error {
        with_context(
            e,
            format!(
                "cannot start {}: reading the exec status failed",
                self.program.display()
            ),
        )
    }

    /// Turn the child's report (empty: the exec succeeded) into the result;
    /// `reap` collects a child whose exec failed.
    fn finish(self, pid: Pid, report: &[u8], reap: impl FnOnce(Pid)) -> io::Result<Spawned> {
        let program_display = self.program.display().to_string();
        if report.is_empty() {
            return Ok(Spawned {
                pid,
                stdout: self.stdout,
                stderr: self.stderr,
            });
        }
        reap(pid);
        if report.len() != 8 {
            return Err(io::Error::other(format!(
                "cannot start {program_display}: the child failed before exec"
            )));
        }
        let stage = i32::from_ne_bytes(report[..4].try_into().unwrap());
        let errno = i32::from_ne_bytes(report[4..].try_into().unwrap());
        Err(child_error(
            &self.program,
            self.cwd.as_deref(),
            &program_display,
            stage,
            errno,
        ))
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// One request to the spawner thread.
enum Job {
    Fork(ForkJob),
    /// Replace the process's image (an in-place upgrade): the spawner is
    /// the thread that forked every worker, so they survive it.
    Exec {
        exe: RawFd,
        argv: Vec<CString>,
        envp: Vec<CString>,
        /// Only answered if the exec failed.
        reply: tokio::sync::oneshot::Sender<io::Error>,
    },
}

struct ForkJob {
    spec: SpawnSpec,
    /// fds that must stay open until the fork (those in `spec.fds`).
    keep: Vec<OwnedFd>,
    reply: tokio::sync::oneshot::Sender<io::Result<Forked>>,
}

/// The spawner thread's queue; the thread is started on first use.
static SPAWNER: std::sync::Mutex<Option<std::sync::mpsc::Sender<Job>>> =
    std::sync::Mutex::new(None);
/// True when the process's main thread is the spawner, forking in line
/// ([`spawn_on_this_thread`]); else the spawner thread does.
static SPAWNER_IS_MAIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn serve(rx: std::sync::mpsc::Receiver<Job>) {
    for job in rx {
        match job {
            Job::Fork(job) => {
                let result = fork(&job.spec);
                drop(job.keep);
                // Nobody waits any more: `Forked`'s drop kills and reaps.
                let _ = job.reply.send(result);
            }
            Job::Exec {
                exe,
                argv,
                envp,
                reply,
            } => {
                let _ = reply.send(exec_fd(exe, &argv, &envp));
            }
        }
    }
}

fn on_main_thread() -> bool {
    nix::unistd::gettid() == nix::unistd::getpid()
}

/// Make the calling thread, which must be the process's main thread and
/// run the host's single-threaded runtime for the process's life, the
/// spawner itself: [`fork_on_spawner`] and [`exec_on_spawner`] then run in
/// line on it. False (and nothing changed) on any other thread.
pub(crate) fn spawn_on_this_thread() -> bool {
    if !on_main_thread() {
        return false;
    }
    SPAWNER_IS_MAIN.store(true, std::sync::atomic::Ordering::Relaxed);
    true
}

/// Forks and execs run in line ([`spawn_on_this_thread`]): on the main
/// thread, or, from any other, an error naming why.
fn inline() -> Option<io::Result<()>> {
    if !spawner_is_main_thread() {
        return None;
    }
    Some(if on_main_thread() {
        Ok(())
    } else {
        Err(io::Error::other(
            "herd starts workers on its main thread only (their PR_SET_PDEATHSIG is tied to it); this task runs on another",
        ))
    })
}

/// Is the spawner the main thread ([`spawn_on_this_thread`])? Only then may
/// the process exec in place without losing its workers.
pub(crate) fn spawner_is_main_thread() -> bool {
    SPAWNER_IS_MAIN.load(std::sync::atomic::Ordering::Relaxed)
}

/// Queue a job for the spawner thread, starting it on first use. The
/// thread lives as long as the process: its queue's sender is never dropped.
fn to_spawner(job: Job) -> io::Result<()> {
    let mut queue = SPAWNER.lock().unwrap_or_else(|e| e.into_inner());
    if queue.is_none() {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("herd-spawner".into())
            .spawn(move || serve(rx))
            .map_err(|e| with_context(e, "cannot start herd's spawner thread"))?;
        *queue = Some(tx);
    }
    let tx = queue.as_ref().expect("started above");
    tx.send(job)
        .map_err(|_| io::Error::other("herd's spawner thread is gone"))
}

/// Execute the open binary `exe` on the spawner thread, in place of this
/// process. Returns only if that failed: why.
pub(crate) async fn exec_on_spawner(
    exe: RawFd,
    argv: Vec<CString>,
    envp: Vec<CString>,
) -> io::Error {
    match inline() {
        Some(Ok(())) => return exec_fd(exe, &argv, &envp),
        Some(Err(e)) => return e,
        None => {}
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    if let Err(e) = to_spawner(Job::Exec {
        exe,
        argv,
        envp,
        reply,
    }) {
        return e;
    }
    answer
        .await
        .unwrap_or_else(|_| io::Error::other("herd's spawner thread is gone"))
}

/// `fexecve` on the calling thread; returns only if it failed.
pub(crate) fn exec_fd(exe: RawFd, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated arrays of pointers to live C strings.
    unsafe { libc::fexecve(exe, argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// Fork the child on the spawner thread (see the module docs) and return as
/// soon as it exists; `keep` (the fds in `spec.fds`) is closed after the
/// fork. Then await [`Forked::wait_exec`]. Nothing here blocks the caller's
/// thread for longer than a channel send, or, when the caller's thread is
/// the spawner ([`spawn_on_this_thread`]), than the fork itself.
pub(crate) async fn fork_on_spawner(spec: SpawnSpec, keep: Vec<OwnedFd>) -> io::Result<Forked> {
    let program = spec.program.display().to_string();
    match inline() {
        Some(Ok(())) => {
            let forked = fork(&spec);
            drop(keep);
            return forked;
        }
        Some(Err(e)) => return Err(with_context(e, format!("cannot start {program}"))),
        None => {}
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    to_spawner(Job::Fork(ForkJob { spec, keep, reply }))
        .map_err(|e| with_context(e, format!("cannot start {program}")))?;
    answer.await.unwrap_or_else(|_| {
        Err(io::Error::other(format!(
            "cannot start {program}: herd's spawner thread is gone"
        )))
    })
}

/// Everything up to the fork: prepare what the child needs, fork, and return
/// the child's pid with the parent's ends of its pipes. Every fallible step
/// comes before the fork, so an error leaves no process and no fd behind.
pub(crate) fn fork(spec: &SpawnSpec) -> io::Result<Forked> {
    let program_display = spec.program.display().to_string();

    // --- Everything the child needs, allocated now. ---
    let program = cstring(spec.program.as_os_str().as_bytes(), "program path")?;
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes(), "argument"))
        .collect::<io::Result<_>>()?;
    if argv.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot start {program_display}: argv is empty"),
        ));
    }
    let mut env: Vec<CString> = Vec::with_capacity(spec.env.len() + 1);
    for (k, v) in &spec.env {
        if spec.set_listen_pid && k.as_bytes() == b"LISTEN_PID" {
            continue;
        }
        let mut entry = Vec::with_capacity(k.len() + 1 + v.len());
        entry.extend_from_slice(k.as_bytes());
        entry.push(b'=');
        entry.extend_from_slice(v.as_bytes());
        env.push(cstring(&entry, "environment variable")?);
    }
    // `LISTEN_PID=` followed by NULs the child overwrites with its pid.
    let mut listen_pid = [0u8; LISTEN_PID_PREFIX.len() + LISTEN_PID_ROOM];
    listen_pid[..LISTEN_PID_PREFIX.len()].copy_from_slice(LISTEN_PID_PREFIX);
    let cwd = match &spec.cwd {
        Some(dir) => Some(cstring(dir.as_os_str().as_bytes(), "working directory")?),
        None => None,
    };

    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // One pointer for both the envp entry and the child's in-place write.
    let listen_pid_ptr: *mut u8 = listen_pid.as_mut_ptr();
    let mut envp_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    if spec.set_listen_pid {
        envp_ptrs.push(listen_pid_ptr.cast_const().cast());
    }
    envp_ptrs.push(std::ptr::null());
    let mut moved = vec![-1 as RawFd; spec.fds.len()];

    // --- Pipes and /dev/null, all close-on-exec in the parent. ---
    let (report_r, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let devnull: OwnedFd = std::fs::File::open("/dev/null")
        .map_err(|e| with_context(e, "cannot open /dev/null"))?
        .into();
    // Our read ends are nonblocking (their own open file descriptions: the
    // child's write ends stay blocking). Done now, so nothing after the
    // fork can fail and leave an untracked child.
    set_nonblocking(&out_r)?;
    set_nonblocking(&err_r)?;

    let listen_pid_digits = if spec.set_listen_pid {
        // SAFETY: in bounds; the child writes at most LISTEN_PID_ROOM bytes.
        Some(unsafe { listen_pid_ptr.add(LISTEN_PID_PREFIX.len()) })
    } else {
        None
    };
    let mut plan = ChildPlan {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        cwd: cwd.as_ref().map(|c| c.as_ptr()),
        listen_pid_digits,
        stdin: devnull.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
        fds: &spec.fds,
        moved: &mut moved,
        parent: nix::unistd::getpid().as_raw(),
    };

    // Block every signal across the fork, so that no handler of the parent
    // (tokio's) runs in the child before the child has reset the
    // dispositions to default.
    // SAFETY: plain libc calls on valid, initialised sigset_t values.
    let old_mask = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        old
    };

    // SAFETY: the child only runs `child_after_fork`, which makes
    // async-signal-safe calls and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked child.
        unsafe { child_after_fork(&mut plan) }
    }
    let fork_err = io::Error::last_os_error();
    // SAFETY: restoring the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
    }
    if pid < 0 {
        return Err(with_context(
            fork_err,
            format!("cannot start {program_display}: fork failed"),
        ));
    }
    let pid = Pid::from_raw(pid);

    // The child's copies are what matter now.
    drop(report_w);
    drop(out_w);
    drop(err_w);
    drop(devnull);

    Ok(Forked {
        pid,
        parts: Some(ForkedParts {
            stdout: out_r,
            stderr: err_r,
            report: report_r,
            program: spec.program.clone(),
            cwd: spec.cwd.clone(),
        }),
    })
}

fn child_error(
    path: &Path,
    cwd: Option<&Path>,
    program: &str,
    stage: i32,
    errno: i32,
) -> io::Error {
    let err = io::Error::from_raw_os_error(errno);
    match Stage::from_i32(stage) {
        Some(Stage::Exec) => {
            // ENOENT for a file that exists: a script whose `#!` interpreter is missing.
            if errno == libc::ENOENT && path.exists() {
                with_context(
                    err,
                    format!("cannot execute {program} (its #! interpreter was not found)"),
                )
            } else {
                with_context(err, format!("cannot execute {program}"))
            }
        }
        Some(Stage::Chdir) => {
            let dir = cwd.unwrap_or(Path::new("?")).display();
            with_context(
                err,
                format!("cannot start {program}: cannot change directory to {dir}"),
            )
        }
        Some(Stage::Setpgid) => with_context(
            err,
            format!("cannot start {program}: cannot create its process group"),
        ),
        Some(Stage::Signals) => with_context(
            err,
            format!("cannot start {program}: cannot reset its signal mask"),
        ),
        Some(Stage::Fds) => with_context(
            err,
            format!("cannot start {program}: cannot set up its file descriptors"),
        ),
        None => with_context(err, format!("cannot start {program}")),
    }
}

/// Wait for a child that is known to be exiting (or killed).
fn reap_blocking(pid: Pid) {
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Report `stage` and errno to the parent and exit. Async-signal-safe.
///
/// # Safety
///
/// Only in the child between `fork` and `execve`: `report` is the write end
/// of the report pipe, and the process ends here without running any Rust
/// destructor or exit handler (the parent's state, copied into the child,
/// must not be touched).
unsafe fn child_fail(report: RawFd, stage: Stage) -> ! {
    let errno = nix::errno::Errno::last_raw();
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(stage as i32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // A pipe write of 8 bytes is atomic; retry only on EINTR.
    // SAFETY: `msg` is a live local buffer of `msg.len()` bytes.
    while unsafe { libc::write(report, msg.as_ptr().cast(), msg.len()) } < 0
        && nix::errno::Errno::last_raw() == libc::EINTR
    {}
    // SAFETY: `_exit` ends the process at once, which is what the caller
    // asked for (no exit handlers in a forked child).
    unsafe { libc::_exit(127) }
}

/// `fcntl(F_DUPFD_CLOEXEC)` retried on EINTR: a copy of `fd` at the lowest
/// free number from `min` up, or -1 with errno set.
fn dup_above(fd: RawFd, min: RawFd) -> RawFd {
    loop {
        // SAFETY: F_DUPFD_CLOEXEC takes plain integers and only creates a
        // new fd; it touches no memory and no fd anybody owns.
        let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
        if r >= 0 || nix::errno::Errno::last_raw() != libc::EINTR {
            return r;
        }
    }
}

/// `dup2` retried on EINTR (it clears close-on-exec on the new fd).
///
/// # Safety
///
/// Whatever `target` was is closed and replaced: no one may own it (in the
/// child between `fork` and `execve`, nothing else runs to use it).
unsafe fn dup_to(fd: RawFd, target: RawFd) -> bool {
    loop {
        // SAFETY: plain integers; the caller vouches for `target`.
        if unsafe { libc::dup2(fd, target) } >= 0 {
            return true;
        }
        if nix::errno::Errno::last_raw() != libc::EINTR {
            return false;
        }
    }
}

/// The child between fork and exec. Only async-signal-safe calls: no
/// allocation, no locks, no panics.
///
/// # Safety
///
/// Only in the freshly forked child, with `plan` prepared by [`fork`]
/// before the fork: its pointers lead into memory the child has its own
/// copy of (C strings, the argv and envp arrays, the `LISTEN_PID` room),
/// and its fds are open. Another thread of the parent may have held a lock
/// at the fork, so nothing here may allocate or lock; it never returns.
unsafe fn child_after_fork(plan: &mut ChildPlan<'_>) -> ! {
    let mut report = plan.report;

    // Own process group, pgid = pid, so the whole group can be signalled.
    // SAFETY: integer arguments only.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        // SAFETY: in the forked child (this function's contract).
        unsafe { child_fail(report, Stage::Setpgid) };
    }

    // If herd itself is SIGKILLed, the kernel kills its workers too, so none
    // is left holding the port. (It fires when the forking *thread* exits:
    // the supervisor forks on the spawner thread, which lives as long as the
    // process; see the module docs. Grandchildren are not covered; a cgroup,
    // as under systemd, covers them.)
    // SAFETY: integer arguments only; `_exit` is what a child whose parent
    // is already gone must do (no exit handlers in a forked child).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }
    }

    // Default disposition for every signal (Rust ignores SIGPIPE; exec keeps
    // ignored signals ignored), then unblock them all. The raw syscall,
    // because glibc's sigaction() refuses its internal signals 32 and 33,
    // which may have been inherited as ignored. An all-zero kernel sigaction
    // is SIG_DFL, no flags, empty mask, whatever the architecture's layout.
    // SIGKILL and SIGSTOP reject this; that is fine.
    let dfl = [0u64; 4];
    for sig in 1..=64 {
        // SAFETY: `dfl` is a live, zeroed kernel sigaction (32 bytes, more
        // than the kernel reads), the old one is not asked for, and the
        // signal set size is the kernel's (8 bytes).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig as libc::c_long,
                dfl.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8 as libc::size_t,
            )
        };
    }
    // SAFETY: an all-zero sigset_t is a valid value, emptied by sigemptyset;
    // pthread_sigmask reads it and writes no old mask.
    let unblocked = unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut())
    };
    if unblocked != 0 {
        // SAFETY: in the forked child (this function's contract).
        unsafe { child_fail(report, Stage::Signals) };
    }

    // Move every fd we need above the target range 0..3+n first, so that
    // placing one never clobbers another we still need; then place them.
    let low = 3 + plan.fds.len() as RawFd;
    let r = dup_above(report, low);
    if r < 0 {
        // SAFETY: in the forked child (this function's contract).
        unsafe { child_fail(report, Stage::Fds) };
    }
    report = r;
    let stdin = dup_above(plan.stdin, low);
    let stdout = dup_above(plan.stdout, low);
    let stderr = dup_above(plan.stderr, low);
    if stdin < 0 || stdout < 0 || stderr < 0 {
        // SAFETY: in the forked child (this function's contract).
        unsafe { child_fail(report, Stage::Fds) };
    }
    // (zip, not indexing: no bounds-check panic path in the child)
    for (slot, &fd) in plan.moved.iter_mut().zip(plan.fds) {
        *slot = dup_above(fd, low);
        if *slot < 0 {
            // SAFETY: in the forked child (this function's contract).
            unsafe { child_fail(report, Stage::Fds) };
        }
    }
    // SAFETY: in the forked child nothing else uses fds 0, 1 and 2, nor
    // the range 3..low the worker's fds go to (what we still need was moved
    // above it).
    let placed = unsafe { dup_to(stdin, 0) && dup_to(stdout, 1) && dup_to(stderr, 2) };
    if !placed {
        // SAFETY: in the forked child (this function's contract).
        unsafe { child_fail(report, Stage::Fds) };
    }
    for (i, &m) in plan.moved.iter().enumerate() {
        // SAFETY: as above: 3 + i is below `low`, free for the worker's fds.
        if !unsafe { dup_to(m, 3 + i as RawFd) } {
            // SAFETY: in the forked child (this function's contract).
            unsafe { child_fail(report, Stage::Fds) };
        }
    }
    // Belt and braces: anything above the placed fds that someone opened
    // without O_CLOEXEC must not leak into the worker. Needs Linux 5.11;
    // older kernels reject it and we rely on herd's fds being close-on-exec.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: integer arguments only; it marks fds close-on-exec, closing none.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            low as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };

    if let Some(dir) = plan.cwd {
        // SAFETY: `dir` points to a NUL-terminated string prepared by `fork`.
        if unsafe { libc::chdir(dir) } != 0 {
            // SAFETY: in the forked child (this function's contract).
            unsafe { child_fail(report, Stage::Chdir) };
        }
    }

    if let Some(digits) = plan.listen_pid_digits {
        let pid = nix::unistd::getpid().as_raw();
        // SAFETY: `digits` points to the LISTEN_PID_ROOM bytes reserved for
        // the pid in the environment entry `fork` prepared.
        unsafe { write_decimal(digits, pid) };
    }

    // SAFETY: the program, argv and envp are NUL-terminated strings and
    // NULL-terminated arrays of them, prepared by `fork`.
    unsafe { libc::execve(plan.program, plan.argv, plan.envp) };
    // SAFETY: in the forked child (this function's contract).
    unsafe { child_fail(report, Stage::Exec) }
}

/// Write `n` (non-negative) in decimal followed by a NUL at `out`. No
/// allocation.
///
/// # Safety
///
/// `out` must be valid for writes of `LISTEN_PID_ROOM` bytes.
unsafe fn write_decimal(out: *mut u8, n: libc::pid_t) {
    let mut tmp = [0u8; LISTEN_PID_ROOM];
    let mut len = 0;
    let mut v = n.max(0) as u32;
    loop {
        tmp[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // At most 10 digits and the NUL: within LISTEN_PID_ROOM (12).
    for i in 0..len {
        // SAFETY: i < len <= 10 < LISTEN_PID_ROOM (the caller's guarantee).
        unsafe { *out.add(i) = tmp[len - 1 - i] };
    }
    // SAFETY: len <= 10 < LISTEN_PID_ROOM.
    unsafe { *out.add(len) = 0 };
}

/// Find `program` on PATH (or check it, if it contains a '/') and verify it is
/// an executable regular file. The error says which of the two it is not.
///
/// The result is absolute (a relative path with a '/' is taken relative to
/// herd's working directory, not the worker's), so it stays valid after the
/// child changes directory. Symlinks are not resolved.
pub fn resolve_program(program: &str) -> io::Result<PathBuf> {
    if program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "command not found: (empty)",
        ));
    }
    if program.contains('/') {
        let path = std::path::absolute(program)?;
        return match check_executable(&path) {
            Ok(()) => Ok(path),
            Err(Check::Missing) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("command not found: {program} (no such file)"),
            )),
            Err(Check::NotExecutable(why)) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{program} is not executable{why}"),
            )),
        };
    }

    let path_var = std::env::var_os("PATH");
    let path_var = path_var
        .as_deref()
        .unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let mut not_executable: Option<(PathBuf, &'static str)> = None;
    for dir in std::env::split_paths(path_var) {
        // An empty PATH entry means the current directory.
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        match check_executable(&candidate) {
            Ok(()) => return std::path::absolute(&candidate),
            Err(Check::Missing) => {}
            Err(Check::NotExecutable(why)) => {
                not_executable.get_or_insert((candidate, why));
            }
        }
    }
    match not_executable {
        Some((path, why)) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{program} is not executable ({}{why})", path.display()),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("command not found: {program}"),
        )),
    }
}

enum Check {
    Missing,
    /// With a short explanation, starting with a space or empty.
    NotExecutable(&'static str),
}

fn check_executable(path: &Path) -> Result<(), Check> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(Check::NotExecutable(" (permission denied)"))
        }
        Err(_) => return Err(Check::Missing),
    };
    if meta.is_dir() {
        return Err(Check::NotExecutable(": it is a directory"));
    }
    if !meta.is_file() {
        return Err(Check::NotExecutable(": not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(Check::NotExecutable(""));
    }
    // The mode has an x bit; ask the kernel whether *we* may execute it.
    match nix::unistd::access(path, nix::unistd::AccessFlags::X_OK) {
        Ok(()) => Ok(()),
        Err(_) => Err(Check::NotExecutable(" (permission denied)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn sh_spec(script: &str) -> SpawnSpec {
        SpawnSpec {
            program: PathBuf::from("/bin/sh"),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: None,
            fds: vec![],
            set_listen_pid: false,
        }
    }

    /// Read a nonblocking pipe to EOF.
    fn read_all(fd: OwnedFd) -> String {
        let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL).unwrap());
        fcntl(&fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).unwrap();
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    fn wait_code(pid: Pid) -> i32 {
        match nix::sys::wait::waitpid(pid, None).unwrap() {
            nix::sys::wait::WaitStatus::Exited(_, c) => c,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn listen_pid_is_the_childs_pid_and_env_is_exact() {
        let mut spec = sh_spec("echo \"$LISTEN_PID $$ $FOO\"; env | sort");
        spec.env.push(("FOO".into(), "bar".into()));
        spec.env.push(("LISTEN_PID".into(), "stale".into()));
        spec.set_listen_pid = true;
        let s = spawn(&spec).unwrap();
        let out = read_all(s.stdout);
        let first = out.lines().next().unwrap().to_string();
        let pid = s.pid.as_raw();
        assert_eq!(first, format!("{pid} {pid} bar"));
        let vars: Vec<&str> = out.lines().skip(1).collect();
        assert!(vars.contains(&"FOO=bar"), "{vars:?}");
        assert!(vars.contains(&&*format!("LISTEN_PID={pid}")), "{vars:?}");
        assert!(!vars.contains(&"LISTEN_PID=stale"));
        assert!(!vars.iter().any(|v| v.starts_with("HOME=")), "{vars:?}");
        assert_eq!(wait_code(s.pid), 0);
    }

    #[test]
    fn own_process_group_stderr_and_stdin() {
        let spec = sh_spec("ps -o pgid= -p $$ 2>/dev/null || cut -d' ' -f5 /proc/$$/stat; echo err >&2; cat; echo done");
        let s = spawn(&spec).unwrap();
        let out = read_all(s.stdout);
        let err = read_all(s.stderr);
        let mut lines = out.lines();
        assert_eq!(
            lines.next().unwrap().trim(),
            s.pid.as_raw().to_string(),
            "pgid"
        );
        assert_eq!(lines.next(), Some("done"), "stdin is /dev/null: cat ends");
        assert_eq!(err, "err\n");
        assert_eq!(wait_code(s.pid), 0);
    }

    #[test]
    fn output_pipes_are_nonblocking_cloexec() {
        let s = spawn(&sh_spec("exit 3")).unwrap();
        for fd in [&s.stdout, &s.stderr] {
            let fl = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).unwrap());
            assert!(fl.contains(OFlag::O_NONBLOCK));
            let fdfl = fcntl(fd, FcntlArg::F_GETFD).unwrap();
            assert!(fdfl & libc::FD_CLOEXEC != 0);
        }
        assert_eq!(wait_code(s.pid), 3);
    }

    #[test]
    fn sigpipe_is_default_and_mask_is_empty_in_child() {
        // Rust's test harness ignores SIGPIPE; the child must see SIG_DFL.
        let spec = sh_spec("grep -E '^(SigIgn|SigBlk)' /proc/self/status");
        let s = spawn(&spec).unwrap();
        let out = read_all(s.stdout);
        for line in out.lines() {
            let v = line.split_whitespace().nth(1).unwrap();
            assert!(v.chars().all(|c| c == '0'), "{line}");
        }
        assert_eq!(out.lines().count(), 2, "{out}");
        assert_eq!(wait_code(s.pid), 0);
    }

    /// Make a pipe whose write end ends up at `at` in the parent (so fds can
    /// be arranged to overlap the target range).
    fn pipe_at(at: RawFd) -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        // SAFETY: integer arguments only; it creates a new fd.
        let moved = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_DUPFD_CLOEXEC, at) };
        assert!(moved >= 0);
        // SAFETY: the fd fcntl just created, owned by nobody else.
        (r, unsafe { OwnedFd::from_raw_fd(moved) })
    }

    #[test]
    fn fds_are_placed_in_order_even_when_overlapping() {
        // Three pipes; pass their write ends in an order where sources sit
        // in each other's target slots (whatever numbers they got).
        let (r1, w1) = pipe_at(3);
        let (r2, w2) = pipe_at(4);
        let (r3, w3) = pipe_at(60);
        let mut spec = sh_spec("echo one >&3; echo two >&4; echo three >&5; ls /proc/self/fd");
        spec.fds = vec![w3.as_raw_fd(), w1.as_raw_fd(), w2.as_raw_fd()];
        let s = spawn(&spec).unwrap();
        drop((w1, w2, w3));
        let out = read_all(s.stdout);
        assert_eq!(wait_code(s.pid), 0);
        let read = |r: OwnedFd| {
            let mut s = String::new();
            std::fs::File::from(r).read_to_string(&mut s).unwrap();
            s
        };
        assert_eq!(read(r3), "one\n");
        assert_eq!(read(r1), "two\n");
        assert_eq!(read(r2), "three\n");
        // `ls` itself has one extra fd open (its directory), nothing else leaks.
        let mut fds: Vec<i32> = out.lines().map(|l| l.parse().unwrap()).collect();
        fds.sort();
        assert_eq!(&fds[..6], &[0, 1, 2, 3, 4, 5], "{fds:?}");
        assert!(fds.len() <= 7, "leaked fds: {fds:?}");
    }

    #[test]
    fn non_cloexec_fd_does_not_leak() {
        let (r, w) = nix::unistd::pipe().unwrap(); // no O_CLOEXEC
        let spec = sh_spec("ls /proc/self/fd | wc -l");
        let s = spawn(&spec).unwrap();
        let out = read_all(s.stdout);
        assert_eq!(wait_code(s.pid), 0);
        // 0, 1, 2 and the directory ls reads; neither pipe end.
        let n: usize = out.trim().parse().unwrap();
        assert!(n <= 4, "{n} fds open in the child");
        drop((r, w));
    }

    #[test]
    fn bad_fd_is_an_error() {
        let mut spec = sh_spec("true");
        spec.fds = vec![9999];
        let err = spawn(&spec).unwrap_err();
        assert!(err.to_string().contains("file descriptors"), "{err}");
        assert_eq!(err.raw_os_error(), None, "wrapped with context");
    }

    #[test]
    fn cwd_is_applied() {
        let mut spec = sh_spec("pwd");
        spec.cwd = Some(PathBuf::from("/tmp"));
        let s = spawn(&spec).unwrap();
        assert_eq!(read_all(s.stdout), "/tmp\n");
        assert_eq!(wait_code(s.pid), 0);
    }

    #[test]
    fn bad_cwd_is_an_error() {
        let mut spec = sh_spec("true");
        spec.cwd = Some(PathBuf::from("/nonexistent/herd-test"));
        let err = spawn(&spec).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/herd-test"), "{err}");
    }

    #[test]
    fn exec_failure_is_reported() {
        let mut spec = sh_spec("");
        spec.program = PathBuf::from("/nonexistent/herd-prog");
        let err = spawn(&spec).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/herd-prog"), "{err}");

        spec.program = PathBuf::from("/tmp");
        let err = spawn(&spec).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    }

    #[test]
    fn missing_interpreter_is_explained() {
        let dir = std::env::temp_dir().join(format!("herd-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        std::fs::write(&script, "#!/nonexistent/interp\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut spec = sh_spec("");
        spec.program = script;
        let err = spawn(&spec).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("interpreter"), "{err}");
    }

    #[test]
    fn nul_in_argument_is_invalid_input() {
        let mut spec = sh_spec("true");
        spec.argv.push(OsString::from("a\0b"));
        assert_eq!(
            spawn(&spec).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn spawn_works_from_a_multithreaded_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..16 {
                tasks.push(tokio::task::spawn_blocking(move || {
                    let mut spec = sh_spec("echo $LISTEN_PID");
                    spec.set_listen_pid = true;
                    let s = spawn(&spec).unwrap();
                    let out = read_all(s.stdout);
                    assert_eq!(out.trim(), s.pid.as_raw().to_string(), "task {i}");
                    assert_eq!(wait_code(s.pid), 0);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
    }

    fn alive(pid: Pid) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => {
                let state = s.rsplit(')').next().unwrap().split_whitespace().next();
                state != Some("Z") && state != Some("X")
            }
            Err(_) => false,
        }
    }

    /// Poll until the process is gone (or a zombie); true if it went.
    fn dies_within(pid: Pid, d: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        !alive(pid)
    }

    /// PR_SET_PDEATHSIG fires when the forking *thread* exits. A worker
    /// forked by the spawner thread outlives the thread that asked for it
    /// (a runtime thread that ends); one forked directly by that thread dies
    /// with it — the hazard the spawner thread exists for.
    #[test]
    fn a_worker_outlives_the_thread_that_asked_for_it() {
        let start = |direct: bool| {
            std::thread::spawn(move || {
                let spec = sh_spec("exec sleep 30");
                if direct {
                    return spawn(&spec).unwrap().pid;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let forked = fork_on_spawner(spec, Vec::new()).await.unwrap();
                    forked.wait_exec().await.unwrap().pid
                })
            })
            .join()
            .unwrap()
        };
        let direct = start(true);
        assert!(
            dies_within(direct, std::time::Duration::from_secs(5)),
            "a child forked by a thread that exited is killed (the hazard)"
        );
        let pid = start(false);
        assert!(
            !dies_within(pid, std::time::Duration::from_millis(500)),
            "a worker forked on the spawner thread must outlive the requesting thread"
        );
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let _ = wait_code_or_signal(pid);
        let _ = nix::sys::wait::waitpid(direct, None);
    }

    fn wait_code_or_signal(pid: Pid) -> nix::sys::wait::WaitStatus {
        nix::sys::wait::waitpid(pid, None).unwrap()
    }

    #[test]
    fn async_spawn_reports_exec_failures_and_leaves_no_process() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut spec = sh_spec("");
            spec.program = PathBuf::from("/nonexistent/herd-prog");
            let forked = fork_on_spawner(spec, Vec::new()).await.unwrap();
            let pid = forked.pid;
            let err = forked.wait_exec().await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
            // Reaped already: not our child any more.
            assert_eq!(
                nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
                Err(nix::errno::Errno::ECHILD)
            );

            let s = fork_on_spawner(sh_spec("echo hi"), Vec::new())
                .await
                .unwrap()
                .wait_exec()
                .await
                .unwrap();
            assert_eq!(read_all(s.stdout), "hi\n");
            assert_eq!(wait_code(s.pid), 0);
        });
    }

    #[test]
    fn a_forked_child_dropped_unwaited_is_killed_and_reaped() {
        let forked = fork(&sh_spec("exec sleep 30")).unwrap();
        let pid = forked.pid;
        drop(forked);
        assert_eq!(
            nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Err(nix::errno::Errno::ECHILD)
        );
    }

    #[test]
    fn resolve_program_searches_path_and_checks() {
        let sh = resolve_program("sh").unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(
            resolve_program("/bin/sh").unwrap(),
            PathBuf::from("/bin/sh")
        );

        let err = resolve_program("herd-no-such-command-xyz").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            "command not found: herd-no-such-command-xyz"
        );

        let err = resolve_program("/nonexistent/x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);

        let err = resolve_program("/tmp").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("directory"), "{err}");

        let dir = std::env::temp_dir().join(format!("herd-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve_program(file.to_str().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("is not executable"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolve_relative_path_becomes_absolute() {
        // A relative path with a '/' is relative to herd's cwd: climb from
        // there to the root and back down to /bin/sh.
        let depth = std::env::current_dir().unwrap().components().count() - 1;
        let rel = format!("{}bin/sh", "../".repeat(depth));
        let got = resolve_program(&rel).unwrap();
        assert!(got.is_absolute(), "{got:?}");
        assert!(got.ends_with("bin/sh"), "{got:?}");
    }

    #[test]
    fn write_decimal_formats() {
        for n in [0, 1, 9, 10, 12345, 4194304, i32::MAX] {
            let mut buf = [0xffu8; LISTEN_PID_ROOM];
            // SAFETY: `buf` has LISTEN_PID_ROOM bytes.
            unsafe { write_decimal(buf.as_mut_ptr(), n) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..end]).unwrap(), n.to_string());
        }
    }
}
