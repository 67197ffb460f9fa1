//! `herd update`: herd's processes replaced by the binary now at the
//! daemon's path, in place, the apps serving on. Two requests, both from
//! the CLI: `UpdateDaemon` (the daemon checks the new binary, answers, then
//! executes it: same pid, the control socket kept open so no CLI call is
//! refused meanwhile; the new image adopts the supervisors as any daemon
//! does), then `UpdateApps` (each app's supervisor in turn upgrades in
//! place, `Command::Upgrade`, and is seen serving again on the new binary,
//! same pid, before the next one is asked).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_protocol::supervisor::{Command, Ticket};
use herd_protocol::Response;

use super::{failed, Ctx};
use crate::registry::Entry;

/// How long a new binary has to say which protocols it speaks.
const VERSIONS_DEADLINE: Duration = Duration::from_secs(5);
/// How long one supervisor has to serve again after its exec.
const UPGRADE_DEADLINE: Duration = Duration::from_secs(20);
/// The hidden flag a herd binary answers with its protocols (src/main.rs).
const VERSIONS_FLAG: &str = "--herd-versions";
/// Names the control socket's fd in the daemon's next image.
pub const CONTROL_FD_ENV: &str = "HERD_DAEMON_CONTROL_FD";
/// Names the fd of the held `herd.pid` lock in the daemon's next image: kept
/// across the exec, so no other daemon can take the home meanwhile.
pub const LOCK_FD_ENV: &str = "HERD_DAEMON_LOCK_FD";

/// The daemon's binary: the file at the path it was started from (the one
/// `herd update` means once a new herd was put there).
fn own_path() -> Result<PathBuf, String> {
    herd_engine::upgrade::own_exe()
        .map_err(|e| format!("cannot tell where the daemon's binary is: {e}"))
}

/// The binary `herd update` executes in place, and what it can take over.
pub struct NextImage {
    exe: PathBuf,
    /// It takes the held `herd.pid` lock ([`LOCK_FD_ENV`]); an older herd
    /// would find its own lock held and exit, so it is not handed one.
    takes_lock: bool,
}

/// Ask the binary at `exe` which protocols it speaks; refuse one that does
/// not answer, or speaks others than this daemon. Whether it takes the held
/// lock over.
async fn check_versions(exe: &Path) -> Result<bool, String> {
    let mut run = std::process::Command::new(exe);
    run.arg(VERSIONS_FLAG).stdin(std::process::Stdio::null());
    let out = match herd_engine::child::output(run, VERSIONS_DEADLINE).await {
        Ok(out) => out,
        Err(e) if e.kind() != std::io::ErrorKind::TimedOut => {
            return Err(format!(
                "cannot run the new binary {}: {e}; nothing was changed",
                exe.display()
            ))
        }
        Err(_) => {
            return Err(format!(
                "the new binary {} did not answer within {} s; nothing was changed",
                exe.display(),
                VERSIONS_DEADLINE.as_secs()
            ))
        }
    };
    let said = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<u32> {
        let mut words = said.split_whitespace();
        words.find(|w| *w == name)?;
        words.next()?.parse().ok()
    };
    let (Some(control), Some(supervisor)) = (
        field("control").filter(|_| out.status.success()),
        field("supervisor"),
    ) else {
        return Err(format!(
            "the new binary {} is not a herd that can update in place ({}{}); nothing was changed: \
             put a working herd binary there and run `herd update` again",
            exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ));
    };
    let ours = (herd_protocol::VERSION, herd_protocol::supervisor::VERSION);
    if (control, supervisor) != ours {
        return Err(format!(
            "the new binary {} speaks control protocol {control} and supervisor protocol \
             {supervisor}; the running herd speaks {} and {}: it cannot be swapped in place. \
             Nothing was changed; to run it, `herd save`, `herd kill`, then `herd resurrect` \
             with the new herd (the apps restart)",
            exe.display(),
            ours.0,
            ours.1
        ));
    }
    Ok(field("lock-handover").is_some_and(|v| v >= 1))
}

/// Check the new binary; answer; the exec follows the answer
/// ([`reexec_if_asked`]).
pub async fn daemon(ctx: &Arc<Ctx>) -> Response {
    let exe = match own_path() {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    let takes_lock = match check_versions(&exe).await {
        Ok(takes_lock) => takes_lock,
        Err(e) => return failed(e),
    };
    *ctx.reexec.lock().unwrap_or_else(|e| e.into_inner()) = Some(NextImage {
        exe: exe.clone(),
        takes_lock,
    });
    crate::say!(
        "herd update: daemon {} executes {}",
        std::process::id(),
        exe.display()
    );
    Response::Done {
        message: format!(
            "daemon {} executes {} in place",
            std::process::id(),
            exe.display()
        ),
    }
}

/// After an answer was sent: if `herd update` asked for it, execute the
/// new binary now (nothing else runs meanwhile: this is called without an
/// await between the answer and the exec). Returns only if the exec failed.
pub fn reexec_if_asked(ctx: &Ctx) {
    let Some(NextImage { exe, takes_lock }) =
        ctx.reexec.lock().unwrap_or_else(|e| e.into_inner()).take()
    else {
        return;
    };
    let fd = ctx.control_fd.load(std::sync::atomic::Ordering::SeqCst);
    let lock_fd = takes_lock.then(|| ctx.lock_fd.load(std::sync::atomic::Ordering::SeqCst));
    if let Err(e) = reexec(&exe, fd, lock_fd) {
        crate::say!(
            "herd update: cannot execute {}: {e}; the daemon runs on",
            exe.display()
        );
    }
}

/// `lock_fd`: the held lock's fd, handed over when the new image takes it
/// (else it is closed by the exec and the new image locks again).
fn reexec(exe: &Path, control_fd: i32, lock_fd: Option<i32>) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstring = |b: &[u8]| CString::new(b).map_err(std::io::Error::other);
    let path = cstring(exe.as_os_str().as_bytes())?;
    let argv: Vec<CString> = std::env::args_os()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != CONTROL_FD_ENV && k != LOCK_FD_ENV)
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(&kv)
        })
        .collect::<Result<_, _>>()?;
    envp.push(cstring(
        format!("{CONTROL_FD_ENV}={control_fd}").as_bytes(),
    )?);
    if let Some(lock_fd) = lock_fd {
        envp.push(cstring(format!("{LOCK_FD_ENV}={lock_fd}").as_bytes())?);
    }
    set_cloexec(control_fd, false)?;
    if let Some(lock_fd) = lock_fd {
        if let Err(e) = set_cloexec(lock_fd, false) {
            let _ = set_cloexec(control_fd, true);
            return Err(e);
        }
    }
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: null-terminated arrays of pointers into CStrings that outlive
    // the call; execve returns only on failure.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    let error = std::io::Error::last_os_error();
    let _ = set_cloexec(control_fd, true);
    if let Some(lock_fd) = lock_fd {
        let _ = set_cloexec(lock_fd, true);
    }
    Err(error)
}

fn set_cloexec(fd: i32, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd this process owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Upgrade each app's supervisor in turn to the daemon's binary.
pub async fn apps(ctx: &Arc<Ctx>) -> Response {
    let exe = match own_path() {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    let target = match std::fs::metadata(&exe) {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) => return failed(format!("cannot read {}: {e}", exe.display())),
    };
    let mut lines = Vec::new();
    let mut failures = 0;
    // The daemon itself: does it run that file now?
    let own = std::fs::metadata("/proc/self/exe").map(|m| (m.dev(), m.ino()));
    if own.ok() != Some(target) {
        failures += 1;
        lines.push(format!(
            "daemon {}: still runs its previous binary (see herd.log)",
            std::process::id()
        ));
    }
    let mut entries = ctx.registry().all();
    entries.sort_by_key(|e| e.id);
    for entry in &entries {
        match upgrade_one(entry, &exe, target).await {
            Ok(line) => lines.push(line),
            Err(line) => {
                failures += 1;
                lines.push(line);
            }
        }
    }
    if lines.is_empty() {
        lines.push("no apps".into());
    }
    let message = lines.join("\n");
    if failures > 0 {
        failed(message)
    } else {
        Response::Done { message }
    }
}

/// A stopped app's supervisor: end it, and see the next one serve on the
/// new binary.
async fn replace_stopped(
    entry: &Entry,
    pid: u32,
    runs_target: impl Fn(&herd_protocol::supervisor::Binary) -> bool,
    started: Instant,
) -> Result<String, String> {
    let name = &entry.name;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    loop {
        if let Ok(status) = entry.link.status().await {
            let now = &status.supervisor;
            if now.pid != pid && runs_target(&now.binary) {
                return Ok(format!(
                    "{name} (stopped): supervisor {} replaced {pid} in {}",
                    now.pid,
                    herd_engine::describe::duration(started.elapsed())
                ));
            }
        }
        if started.elapsed() > UPGRADE_DEADLINE {
            return Err(format!(
                "{name} (stopped): no supervisor served on the new binary within {} s (see herd.log)",
                UPGRADE_DEADLINE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One supervisor: ask it, then see it serve again, same pid, on `target`.
async fn upgrade_one(entry: &Entry, exe: &Path, target: (u64, u64)) -> Result<String, String> {
    let name = &entry.name;
    let started = Instant::now();
    let before = entry
        .link
        .status()
        .await
        .map_err(|e| format!("{name}: not upgraded: {e}"))?;
    let pid = before.supervisor.pid;
    let runs_target = |b: &herd_protocol::supervisor::Binary| (b.device, b.inode) == target;
    if runs_target(&before.supervisor.binary) {
        return Ok(format!("{name}: supervisor {pid} runs it already"));
    }
    let asked = entry
        .link
        .command(Command::Upgrade {
            exe: exe.to_path_buf(),
        })
        .await;
    match asked {
        // A stopped app has nothing to hand over: its supervisor ends
        // (SIGTERM keeps what the app wishes) and the daemon starts another
        // on the new binary, as after any end of a supervisor.
        Ok(Ticket::Refused { .. }) if !before.app.info.state.is_up() => {
            return replace_stopped(entry, pid, runs_target, started).await
        }
        Ok(Ticket::Refused { why }) | Ok(Ticket::Aborted { why }) => {
            return Err(format!("{name}: not upgraded: {why}"))
        }
        // Done, or the connection ended with the exec: see it serve again.
        Ok(Ticket::Done { .. }) | Err(_) => {}
    }
    loop {
        if let Ok(status) = entry.link.status().await {
            let now = &status.supervisor;
            if now.pid != pid {
                return Err(format!(
                    "{name}: its supervisor {pid} ended during the upgrade; {} took the app over",
                    now.pid
                ));
            }
            if runs_target(&now.binary) {
                return Ok(format!(
                    "{name}: supervisor {pid} upgraded in {}",
                    herd_engine::describe::duration(started.elapsed())
                ));
            }
            // A new image of the same process on the old binary: the new
            // one could not take the app over and gave it back.
            if now.uptime_ms < started.elapsed().as_millis() as u64 {
                return Err(format!(
                    "{name}: not upgraded: the new binary could not take the app over, \
                     so supervisor {pid} runs on its previous binary (see herd.log)"
                ));
            }
        }
        if started.elapsed() > UPGRADE_DEADLINE {
            return Err(format!(
                "{name}: supervisor {pid} did not serve again within {} s (see herd.log)",
                UPGRADE_DEADLINE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
