//! The in-place upgrade: a process that runs an app (`herd run`, and the
//! per-app supervisor process) replaces its own binary without its
//! workers noticing — same pid, same workers, same sockets, same counters.
//!
//! ## Theory of operation
//!
//! 1. **Probe** ([`probe`]): the new binary is opened (that fd is what is
//!    executed later, so a file replaced meanwhile cannot slip in) and run
//!    as `/proc/self/fd/N --upgrade-state-versions`; it must answer, at
//!    once, with the state versions it reads, and [`STATE_VERSION`] must be
//!    among them. Anything else refuses the upgrade before anything
//!    changed.
//! 2. **Freeze** ([`crate::supervisor::AppHandle::freeze`]): the app
//!    settles and becomes data plus the fds it names (see
//!    `supervisor::handover`).
//! 3. **Exec** ([`exec`]): the state goes to a memfd as one JSON document
//!    (a header — format, version, the binary's path, the fd numbers, the
//!    host's own state — and the app), every fd it names loses
//!    close-on-exec, `/proc/self/exe` is opened (the *old* binary, kept for
//!    the fallback), and the new binary is `fexecve`d with
//!    `HERD_UPGRADE_STATE=<memfd>,<old exe fd>` **on the main thread**:
//!    `PR_SET_PDEATHSIG` fires when the *thread* that forked a worker ends,
//!    and execve ends every other thread. That is why a process that
//!    upgrades runs [`main_thread_host`]: its runtime runs on the main
//!    thread, which forks every worker and is the one that execs; after
//!    exec it is the new image's main thread, which forks and execs in
//!    turn. If the exec itself fails,
//!    the caller gets the frozen app back and resumes it in place.
//! 4. **Resume** ([`inherited`]): the new image finds the variable, reads
//!    the state (this version or an older one, [`READABLE_VERSIONS`]),
//!    adopts the fds and hands the app to its host, which resumes it
//!    ([`crate::supervisor::resume`]). If it cannot, it `fexecve`s the old
//!    binary from the kept fd with the same memfd and fds, and
//!    `HERD_UPGRADE_FAILED=<why>`: the old image resumes the app and
//!    reports the failure.
//!
//! ## For a host
//!
//! The host is the process's own loop around an app: `herd run`'s
//! ([`crate::foreground`]), and the per-app supervisor process's. It
//! 1. calls [`answer_probe`] and then [`inherited`] first thing in `main`
//!    (on the main thread, before parsing the command line); with an
//!    inherited app it resumes it ([`crate::supervisor::resume`]) in the
//!    host named by [`Inherited::kind`], with the state it wrote
//!    ([`Inherited::host`], [`Inherited::host_fds`]), and reports
//!    [`Inherited::failed`] if set;
//! 2. runs itself under [`main_thread_host`] and calls [`signals_ready`]
//!    once its signal handlers are installed;
//! 3. to upgrade: [`probe`] the binary at its path (blocking: on a helper
//!    thread), `freeze` the app ([`crate::supervisor::AppHandle::freeze`])
//!    while it goes on reading the app's events until they end, writes out
//!    what it still holds, then [`exec`] with its own state and fds. `exec`
//!    returns only on failure, with the app to resume in place.
//!
//! A host runs one app (the design: one supervisor process per app).
//!
//! Signals: the host's signals (INT, TERM, HUP, USR2, TTIN, TTOU) are
//! blocked from the start until the host handles them, and again across
//! the exec (on helper threads, always), so one that arrives meanwhile
//! stays pending through execve and is handled by the new image once it is
//! ready ([`signals_ready`]).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::os::spawn;
use crate::supervisor::handover::FrozenApp;
use crate::supervisor::{Frozen, ThawError};

mod v0;

/// The version of the state this binary writes.
pub const STATE_VERSION: u32 = 1;
/// The versions of the state this binary reads.
pub const READABLE_VERSIONS: &[u32] = &[0, 1];
/// The hidden flag a binary answers with the versions it reads (the probe).
pub const PROBE_FLAG: &str = "--upgrade-state-versions";
/// What the probe's answer starts with.
const PROBE_ANSWER: &str = "herd upgrade state versions:";
/// Names the memfd and the old binary's fd in the new image.
const ENV_STATE: &str = "HERD_UPGRADE_STATE";
/// Set in the old image re-executed after the new one failed: why.
const ENV_FAILED: &str = "HERD_UPGRADE_FAILED";
/// Debug builds: if this names a file that exists, a new image refuses the
/// state (the tests' stand-in for a binary that cannot read it).
#[cfg(debug_assertions)]
const ENV_TEST_REFUSE: &str = "HERD_UPGRADE_TEST_REFUSE";
/// The format's name in the header.
const FORMAT: &str = "herd-upgrade-state";
/// How long the new binary has to answer the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The signals a host handles, held across an exec.
const HELD_SIGNALS: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR2,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// Why an upgrade did not happen (the app runs on, on the binary it had).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot open the new binary {path}: {source}; check the path and its permissions")]
    Open { path: PathBuf, source: io::Error },
    #[error("the new binary {path} did not answer the upgrade probe: {why}; it was not started")]
    Probe { path: PathBuf, why: String },
    #[error("the new binary {path} reads state versions {versions:?}, not version {STATE_VERSION} which this one writes; upgrade in two steps or restart the app")]
    Version { path: PathBuf, versions: Vec<u32> },
    #[error("in-place upgrade needs the process's main thread to start the workers (upgrade::main_thread_host); this process does not")]
    NotAvailable,
    #[error(transparent)]
    Freeze(#[from] crate::supervisor::FreezeError),
    #[error("cannot write the app's state: {0}")]
    Write(io::Error),
    #[error("cannot execute the new binary {path}: {source}")]
    Exec { path: PathBuf, source: io::Error },
}

/// Why a new image could not take the app over.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{ENV_STATE} is malformed ({0}); it is set only by herd itself")]
    Variable(String),
    #[error("cannot read the state: {0}")]
    Read(io::Error),
    #[error("the state is not herd's ({0})")]
    Header(serde_json::Error),
    #[error("the state is version {0}; this binary reads versions {READABLE_VERSIONS:?}")]
    Version(u32),
    #[error(transparent)]
    Thaw(#[from] ThawError),
    #[error("refused by {0} (a test hook)")]
    Refused(&'static str),
}

/// The header of the document in the memfd; the app follows as `app`.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    /// Which host wrote it (`run`: `herd run`'s foreground loop): the new
    /// image resumes the app with the same. (Version 0 had only `herd run`.)
    #[serde(default = "run_kind")]
    kind: String,
    /// Where the binary lives (what the next upgrade executes again).
    exe: PathBuf,
    /// Every fd the state names, open at the same numbers.
    fds: Vec<RawFd>,
    /// The host's own fds (a control socket, log files), in its order.
    #[serde(default)]
    host_fds: Vec<RawFd>,
    /// The host's own state (e.g. `herd run`'s: readiness told to systemd).
    host: serde_json::Value,
}

fn run_kind() -> String {
    "run".into()
}

#[derive(Serialize)]
struct DocumentOut<'a> {
    #[serde(flatten)]
    header: &'a Header,
    app: &'a serde_json::value::Value,
}

#[derive(Deserialize)]
struct DocumentIn {
    #[serde(flatten)]
    header: Header,
    app: serde_json::Value,
}

/// What a new image inherited: the app to resume and its host's state.
#[derive(Debug)]
pub struct Inherited {
    /// Which host handed the app over ([`exec`]'s `kind`).
    pub kind: String,
    pub frozen: Frozen,
    /// The host's state as it wrote it ([`exec`]'s `host`).
    pub host: serde_json::Value,
    /// The binary's path, for the next upgrade.
    pub exe: PathBuf,
    /// Set when this is the old binary, resumed because the new one could
    /// not take the app over: why not.
    pub failed: Option<String>,
    /// The host's own fds ([`exec`]'s `host_fds`), in the same order, at
    /// the same numbers (close-on-exec again).
    pub host_fds: Vec<OwnedFd>,
}

/// Answer the probe if this process was started as one ([`PROBE_FLAG`]),
/// and exit. Call it first thing in `main`.
pub fn answer_probe() {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(PROBE_FLAG)) {
        let versions: Vec<String> = READABLE_VERSIONS.iter().map(u32::to_string).collect();
        println!("{PROBE_ANSWER} {}", versions.join(" "));
        std::process::exit(0);
    }
}

/// This binary's path, as the process was started from (for the next
/// upgrade: the file at that path is what gets executed).
pub fn own_exe() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // A replaced binary reads "/path/herd (deleted)": the path is still the one.
    let bytes = exe.as_os_str().as_bytes();
    Ok(match bytes.strip_suffix(b" (deleted)") {
        Some(path) => PathBuf::from(OsString::from_vec(path.to_vec())),
        None => exe,
    })
}

/// Run `body` (the host: its single-threaded runtime, the app) on this
/// thread, which must be the main thread, and make it the spawner: it
/// starts every worker and, for an upgrade, executes the new binary (see
/// the module docs). The process exits with `body`'s return value. Never
/// returns.
///
/// The host's signals are blocked until `body` calls [`signals_ready`]
/// once it handles them.
pub fn main_thread_host<F>(body: F) -> !
where
    F: FnOnce() -> i32,
{
    hold_signals(true);
    if !spawn::spawn_on_this_thread() {
        eprintln!("herd: error: the host must run on the process's main thread");
        std::process::exit(1);
    }
    std::process::exit(body())
}

/// The host handles its signals now: let them in on its thread (one that
/// came while they were held, across an exec too, is delivered now).
pub fn signals_ready() {
    hold_signals(false);
}

/// Hold the host's signals on the calling thread (a helper thread of the
/// host's, so that a signal is never handled by one that an exec is about
/// to end).
pub(crate) fn hold_signals_here() {
    hold_signals(true);
}

fn hold_signals(hold: bool) {
    // SAFETY: plain libc calls on a sigset_t we own and initialise.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HELD_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        let how = if hold {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// A new binary that answered the probe: the open file that will be
/// executed, and its path.
#[derive(Debug)]
pub struct Probed {
    file: OwnedFd,
    path: PathBuf,
}

impl Probed {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Open the binary at `path` and ask it which state versions it reads
/// (blocking: at most a few seconds). Refuses, with what went wrong, a
/// binary that cannot be opened, does not answer in time, exits with an
/// error or does not read [`STATE_VERSION`].
pub fn probe(path: &Path) -> Result<Probed, UpgradeError> {
    if !spawn::spawner_is_main_thread() {
        return Err(UpgradeError::NotAvailable);
    }
    let file: OwnedFd = std::fs::File::open(path)
        .map_err(|source| UpgradeError::Open {
            path: path.to_owned(),
            source,
        })?
        .into();
    let refuse = |why: String| UpgradeError::Probe {
        path: path.to_owned(),
        why,
    };
    let run = format!("/proc/self/fd/{}", file.as_raw_fd());
    let mut child = std::process::Command::new(&run)
        .arg(PROBE_FLAG)
        .env_remove(ENV_STATE)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| refuse(format!("it cannot be started: {e}")))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < PROBE_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(refuse(format!(
                    "no answer within {}s",
                    PROBE_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(refuse(e.to_string())),
        }
    };
    let output = child
        .wait_with_output()
        .map_err(|e| refuse(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer = stdout.lines().find_map(|l| l.strip_prefix(PROBE_ANSWER));
    let Some(answer) = answer.filter(|_| status.success()) else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = stderr.lines().chain(stdout.lines()).next().unwrap_or("");
        return Err(refuse(format!(
            "it exited ({status}) without naming the state versions it reads{}",
            if said.is_empty() {
                String::new()
            } else {
                format!("; it said: {said}")
            }
        )));
    };
    let versions: Vec<u32> = answer
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if !versions.contains(&STATE_VERSION) {
        return Err(UpgradeError::Version {
            path: path.to_owned(),
            versions,
        });
    }
    Ok(Probed {
        file,
        path: path.to_owned(),
    })
}

/// Replace this process's image with the probed binary, handing it
/// `frozen` and the host's own state (`kind` names the host, `host` is its
/// state; both are given back by [`inherited`]). Returns only if that could
/// not be done, with the app to resume here and why. `exe` is the path the
/// next upgrade executes (the binary's usual path; see [`own_exe`]).
/// `host_fds` are the host's own fds to keep (a control socket, log
/// files): [`Inherited::host_fds`] gives them back, in this order.
///
/// Call it on the host's (main) thread once the app's events have all been read
/// (its event receiver returned `None` after the freeze) and the host's
/// own output is written: nothing of this process survives the exec but
/// the state and the fds it names.
pub async fn exec(
    new: Probed,
    exe: &Path,
    kind: &str,
    frozen: Frozen,
    host: serde_json::Value,
    host_fds: &[RawFd],
) -> (Frozen, UpgradeError) {
    match prepare(exe, kind, &frozen, host, host_fds) {
        Ok(prepared) => {
            hold_signals(true);
            let error =
                spawn::exec_on_spawner(new.file.as_raw_fd(), prepared.argv, prepared.envp).await;
            hold_signals(false);
            for fd in prepared.kept {
                set_cloexec(fd, true);
            }
            drop(prepared.memfd);
            drop(prepared.old_exe);
            (
                frozen,
                UpgradeError::Exec {
                    path: new.path,
                    source: error,
                },
            )
        }
        Err(e) => (frozen, UpgradeError::Write(e)),
    }
}

/// What an exec needs, made before it.
struct Prepared {
    memfd: OwnedFd,
    old_exe: OwnedFd,
    /// The fds made inheritable (close-on-exec cleared).
    kept: Vec<RawFd>,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn prepare(
    exe: &Path,
    kind: &str,
    frozen: &Frozen,
    host: serde_json::Value,
    host_fds: &[RawFd],
) -> io::Result<Prepared> {
    let (app, fds) = frozen.write().map_err(io::Error::other)?;
    let app: serde_json::Value = serde_json::from_slice(&app).map_err(io::Error::other)?;
    let header = Header {
        format: FORMAT.into(),
        version: STATE_VERSION,
        kind: kind.to_owned(),
        exe: exe.to_owned(),
        fds: fds.clone(),
        host_fds: host_fds.to_vec(),
        host,
    };
    let doc = serde_json::to_vec(&DocumentOut {
        header: &header,
        app: &app,
    })
    .map_err(io::Error::other)?;
    let name = CString::new("herd-upgrade-state").expect("no NUL");
    // SAFETY: a valid C string; the fd returned is ours.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let file = std::fs::File::from(memfd.try_clone()?);
    file.write_all_at(&doc, 0)?;
    let old_exe: OwnedFd = std::fs::File::open("/proc/self/exe")?.into();
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != ENV_STATE && k != ENV_FAILED)
        .collect();
    env.push((
        ENV_STATE.into(),
        format!("{},{}", memfd.as_raw_fd(), old_exe.as_raw_fd()).into(),
    ));
    let argv = std::env::args_os()
        .map(|a| CString::new(a.into_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let envp = environment(&env)?;
    let mut kept = fds;
    kept.extend_from_slice(host_fds);
    kept.push(memfd.as_raw_fd());
    kept.push(old_exe.as_raw_fd());
    for &fd in &kept {
        set_cloexec(fd, false);
    }
    Ok(Prepared {
        memfd,
        old_exe,
        kept,
        argv,
        envp,
    })
}

fn environment(env: &[(OsString, OsString)]) -> io::Result<Vec<CString>> {
    env.iter()
        .map(|(k, v)| {
            let mut entry = k.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            CString::new(entry).map_err(io::Error::other)
        })
        .collect()
}

fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: fcntl on an fd number; a closed one just fails.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            let flags = if on {
                flags | libc::FD_CLOEXEC
            } else {
                flags & !libc::FD_CLOEXEC
            };
            libc::fcntl(fd, libc::F_SETFD, flags);
        }
    }
}

/// In a new image: the app a previous image handed over, if any (`None`
/// when this process was started normally). Call it first thing in `main`
/// (after [`answer_probe`], before parsing the command line, which a new
/// version may read differently), on the main thread, before any other
/// thread exists; then run the host named by [`Inherited::kind`] with
/// [`main_thread_host`] and resume the app there.
///
/// If the state cannot be taken over, this does not return: the previous
/// binary is executed again with the same state (and resumes the app,
/// reporting why). Only if that previous binary cannot read it either is
/// the error returned (the workers are lost then).
pub fn inherited() -> Option<Result<Inherited, ResumeError>> {
    let var = std::env::var_os(ENV_STATE)?;
    let failed = std::env::var_os(ENV_FAILED).map(|v| v.to_string_lossy().into_owned());
    // SAFETY (of the environment): called before any other thread exists.
    std::env::remove_var(ENV_STATE);
    std::env::remove_var(ENV_FAILED);
    let var = var.to_string_lossy().into_owned();
    let Some((memfd, old_exe)) = var
        .split_once(',')
        .and_then(|(a, b)| Some((a.parse::<RawFd>().ok()?, b.parse::<RawFd>().ok()?)))
        .filter(|(a, b)| fd_is_open(*a) && fd_is_open(*b))
    else {
        return Some(Err(ResumeError::Variable(var)));
    };
    match take_over(memfd, failed.is_some()) {
        Ok((frozen, header)) => {
            // SAFETY: open (checked) and handed to the host by the previous image.
            let host_fds = header
                .host_fds
                .iter()
                .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            // SAFETY: ours, handed over by the previous image; done with.
            drop(unsafe { OwnedFd::from_raw_fd(memfd) });
            // SAFETY: as above.
            drop(unsafe { OwnedFd::from_raw_fd(old_exe) });
            Some(Ok(Inherited {
                kind: header.kind,
                frozen,
                host: header.host,
                exe: header.exe,
                failed,
                host_fds,
            }))
        }
        Err(e) if failed.is_none() => {
            // Back to the previous binary, with everything as it was.
            let why = format!("the new binary could not take the app over: {e}");
            let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
            env.push((ENV_STATE.into(), var.into()));
            env.push((ENV_FAILED.into(), why.clone().into()));
            let argv: Vec<CString> = std::env::args_os()
                .filter_map(|a| CString::new(a.into_vec()).ok())
                .collect();
            match environment(&env) {
                Ok(envp) => {
                    let error = spawn::exec_fd(old_exe, &argv, &envp);
                    Some(Err(ResumeError::Read(io::Error::new(
                        error.kind(),
                        format!("{why}; and the previous binary cannot be executed again: {error}"),
                    ))))
                }
                Err(env_error) => Some(Err(ResumeError::Read(io::Error::other(format!(
                    "{why}; and cannot build the environment to return to the previous binary: {env_error}"
                ))))),
            }
        }
        Err(e) => Some(Err(e)),
    }
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: fcntl on an fd number.
    fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// Read the state from the memfd and adopt its fds. On failure every fd is
/// as it was (open, at its number, inheritable), for the previous binary.
fn take_over(memfd: RawFd, is_fallback: bool) -> Result<(Frozen, Header), ResumeError> {
    let doc = {
        // A borrowed view: the memfd stays open (for a fallback).
        // SAFETY: the fd is open (checked); ManuallyDrop never closes it.
        let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(memfd) });
        let mut doc = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file
                .read_at(&mut buf, doc.len() as u64)
                .map_err(ResumeError::Read)?;
            if n == 0 {
                break;
            }
            doc.extend_from_slice(&buf[..n]);
        }
        doc
    };
    let DocumentIn { header, app } = serde_json::from_slice(&doc).map_err(ResumeError::Header)?;
    if header.format != FORMAT {
        return Err(ResumeError::Header(serde::de::Error::custom(format!(
            "format {:?}",
            header.format
        ))));
    }
    if !READABLE_VERSIONS.contains(&header.version) {
        return Err(ResumeError::Version(header.version));
    }
    #[cfg(debug_assertions)]
    if !is_fallback && std::env::var_os(ENV_TEST_REFUSE).is_some_and(|f| Path::new(&f).exists()) {
        return Err(ResumeError::Refused(ENV_TEST_REFUSE));
    }
    let _ = is_fallback;
    let all = header.fds.iter().chain(&header.host_fds);
    if let Some(&bad) = all.clone().find(|&&fd| !fd_is_open(fd)) {
        return Err(ThawError::MissingFd(bad).into());
    }
    // Copies to restore the fds from if reading fails (the reader closes
    // what it adopted).
    let backups: Vec<(RawFd, RawFd)> = all
        // SAFETY: fcntl on open fds; the copies are ours.
        .map(|&fd| (fd, unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) }))
        .collect();
    let fds: Vec<OwnedFd> = header
        .fds
        .iter()
        .map(|&fd| {
            set_cloexec(fd, true);
            // SAFETY: open (checked above) and handed to us by the previous image.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect();
    let version = header.version;
    let read = Frozen::read(fds, move || match version {
        0 => v0::read(app),
        _ => serde_json::from_value::<FrozenApp>(app),
    });
    match read {
        Ok(frozen) => {
            for &fd in &header.host_fds {
                set_cloexec(fd, true);
            }
            for (_, copy) in backups {
                // SAFETY: our own copy.
                unsafe { libc::close(copy) };
            }
            Ok((frozen, header))
        }
        Err(e) => {
            for (fd, copy) in backups {
                // SAFETY: dup2 onto the number the state names (it was
                // closed by the failed read, or is the same file); the
                // result is inheritable, as the previous binary needs.
                unsafe {
                    libc::dup2(copy, fd);
                    libc::close(copy);
                }
            }
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;
    use std::os::unix::process::CommandExt;

    use super::*;
    use crate::clock::MonoTime;
    use crate::machine::{Command, Outcome};
    use crate::supervisor::{self, Event};

    /// A document in a memfd, as a previous image leaves it.
    fn memfd_with(doc: &str) -> RawFd {
        let name = CString::new("test").unwrap();
        // SAFETY: a valid C string.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fresh and ours; the File is forgotten (the fd stays open).
        let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        file.write_all_at(doc.as_bytes(), 0).unwrap();
        fd
    }

    /// Version 0 (the app's state alone, as the engine wrote it before the
    /// upgrade existed) still reads: a fixture with the fds, pid and times
    /// of real things filled in, taken over and run on.
    #[test]
    fn a_version_0_state_is_read_and_the_app_runs_on() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        // The worker: a real child in its own process group.
        let child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (herd_end, worker_end) = crate::os::channel::pair().unwrap();
        drop(worker_end);
        let (notify, _other) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Datagram,
            None,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        nix::unistd::write(&out_w, b"half a li").unwrap();
        drop((out_w, err_w));
        let fds: Vec<RawFd> = vec![
            OwnedFd::from(listener).into_raw_fd(),
            notify.into_raw_fd(),
            herd_end.into_raw_fd(),
            out_r.into_raw_fd(),
            err_r.into_raw_fd(),
        ];
        let started = MonoTime::now().as_micros() * 1000 - 5_000_000_000;
        let doc = include_str!("fixtures/v0.json")
            .replace("@FDS@", &format!("{fds:?}"))
            .replace("@ADDR@", &addr)
            .replace("@LISTENER_FD@", &fds[0].to_string())
            .replace("@NOTIFY_FD@", &fds[1].to_string())
            .replace("@CHANNEL_FD@", &fds[2].to_string())
            .replace("@OUT_FD@", &fds[3].to_string())
            .replace("@ERR_FD@", &fds[4].to_string())
            .replace("@PID@", &pid.to_string())
            .replace("@STARTED@", &started.to_string());
        // A host's own fd travels along (here: added to the old document).
        let (host_r, _host_w) = nix::unistd::pipe().unwrap();
        let host_fd = host_r.into_raw_fd();
        let doc = doc.replacen(
            "\"host\":",
            &format!("\"host_fds\": [{host_fd}], \"host\":"),
            1,
        );
        let memfd = memfd_with(&doc);
        let (frozen, header) = take_over(memfd, false).expect("version 0 reads");
        // SAFETY: ours.
        unsafe { libc::close(memfd) };
        assert_eq!(header.version, 0);
        assert_eq!(header.kind, "run", "a version 0 state was `herd run`'s");
        assert_eq!(
            header.host["note"],
            "a host's own state, given back as it was"
        );
        runtime.block_on(async {
            let (handle, mut events) = supervisor::resume(frozen).unwrap();
            let status = handle.status().await.unwrap();
            let slot = &status.machine.slots[0];
            let worker = slot.current.as_ref().unwrap();
            assert_eq!(worker.pid, Some(pid));
            assert_eq!(slot.restarts, 3);
            assert!(
                worker.uptime >= Duration::from_secs(5),
                "{:?}",
                worker.uptime
            );
            assert_eq!(
                status.listeners,
                vec![("web".to_string(), addr.parse().unwrap())]
            );
            // It runs on: the listener accepts, a stop ends the worker.
            std::net::TcpStream::connect(&addr).unwrap();
            handle.command(Command::Stop);
            let mut output = Vec::new();
            let outcome = loop {
                match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
                    Ok(Some(Event::Exit(outcome))) => break outcome,
                    Ok(Some(Event::Output { lines, .. })) => output.extend(lines),
                    Ok(Some(_)) => {}
                    other => panic!("the app ends with an exit event: {other:?}"),
                }
            };
            assert_eq!(outcome, Outcome::Stopped);
            assert_eq!(output, b"half a li\n", "what was in the pipe is delivered");
        });
        drop(child);
    }

    #[test]
    fn a_state_of_an_unknown_version_or_format_is_refused_with_every_fd_kept() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let n = r.as_raw_fd();
        let doc = format!(
            r#"{{"format":"herd-upgrade-state","version":99,"kind":"run","exe":"/x","fds":[{n}],"host":null,"app":{{}}}}"#
        );
        let memfd = memfd_with(&doc);
        let err = take_over(memfd, false).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
        let doc = format!(
            r#"{{"format":"herd-upgrade-state","version":1,"kind":"run","exe":"/x","fds":[{n}],"host":null,"app":{{"state":{{}}}}}}"#
        );
        let memfd2 = memfd_with(&doc);
        let err = take_over(memfd2, false).unwrap_err();
        assert!(err.to_string().contains("does not read"), "{err}");
        // The fd is still open at its number, for the previous binary.
        nix::unistd::write(&w, b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 1);
        // SAFETY: ours.
        unsafe {
            libc::close(memfd);
            libc::close(memfd2);
        }
    }

    #[test]
    fn the_probe_answer_names_every_readable_version() {
        assert!(READABLE_VERSIONS.contains(&STATE_VERSION));
        assert!(READABLE_VERSIONS.contains(&(STATE_VERSION - 1)));
    }
}
