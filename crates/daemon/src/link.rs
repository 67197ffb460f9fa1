//! The daemon's link to one app's supervisor process ([`Link`]): starting
//! it (`herd supervise`), watching it, asking it.
//!
//! Each link has a watcher task that keeps one connection following the
//! supervisor's events. The end of that stream, for an app not being
//! deleted, means the supervisor died (its workers died with it: their
//! `PR_SET_PDEATHSIG`): the watcher starts another after a backoff — 100 ms,
//! doubling to 5 s, back to 100 ms once one has stayed up 30 s — and the new
//! supervisor ends whatever the old one's app left, then starts the app if
//! it was wished running. A supervisor that is running but speaks another
//! protocol version is left alone and named in every answer about its app.
//!
//! While a supervisor serves, the link keeps a copy of its app's shared
//! listening sockets ([`crate::sockets`]), synced whenever the app reports
//! something; a supervisor started after one died is given them, so the
//! app's clients queued meanwhile instead of being refused.
//!
//! Questions and commands go on connections of their own, so a status is
//! never held up by a reload: a status within [`STATUS_DEADLINE`], a
//! command for as long as it takes (its ticket is its answer), waiting a
//! moment first for a supervisor that is being started again.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_protocol::supervisor::{AppFile, Command, Event, Status, Ticket, HELD_SOCKETS_ENV};
use herd_supervisor::client::{Client, ClientError};
use herd_supervisor::contain::{self, Record};
use herd_supervisor::files::AppFiles;
use tokio::sync::watch;

use crate::sockets::Store;

/// How long a status question may take (a supervisor answers it at once,
/// even during a reload).
pub const STATUS_DEADLINE: Duration = Duration::from_secs(2);
/// How long a command waits for a supervisor that is being started again.
const COMMAND_WAIT: Duration = Duration::from_secs(10);
/// How long `herd supervise` may take to serve (it first ends what a
/// previous supervisor of the app left, which may take a few seconds).
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a deleted app's supervisor may take to exit once it answered.
const EXIT_DEADLINE: Duration = Duration::from_secs(5);
/// The restart backoff: first delay, its cap, and how long a supervisor
/// must stay up for the next restart to start from the first delay again.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const BACKOFF_RESET: Duration = Duration::from_secs(30);

/// Where a link's supervisor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not known yet (the watcher is connecting, or starting one).
    Connecting,
    /// It serves; its pid.
    Up { pid: u32 },
    /// It is gone and another is being started (this many times in a row).
    Restarting { attempt: u32 },
    /// It runs, but this daemon cannot talk to it: why, for the user.
    Incompatible { why: String },
    /// The app was deleted; the link is done.
    Gone,
}

/// Why a question or a command did not reach the supervisor.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("the supervisor of {name} is not running; herd is starting it again (see herd.log)")]
    Down { name: String },
    #[error("{0}")]
    Incompatible(String),
    #[error("{name} was deleted meanwhile")]
    Gone { name: String },
    #[error("cannot reach the supervisor of {name}: {why}")]
    Failed { name: String, why: String },
    #[error("the supervisor of {name} did not answer within {} s", STATUS_DEADLINE.as_secs())]
    Timeout { name: String },
}

/// The program a supervisor runs: the daemon's own binary, by its open
/// inode (the same herd, and the same protocol, even if the file on disk
/// was replaced since the daemon started).
fn herd_exe() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

struct Inner {
    id: u32,
    name: String,
    files: AppFiles,
    state: watch::Sender<State>,
    /// Set once a delete began: the end of the supervisor is then expected.
    deleting: std::sync::atomic::AtomicBool,
    /// Held while a supervisor is being started, or the app's files are
    /// being removed by the daemon: never both at once.
    starting: tokio::sync::Mutex<()>,
    /// Supervisors started again after they died, for metrics.
    restarts: std::sync::atomic::AtomicU64,
    /// Copies of the app's shared listening sockets.
    sockets: std::sync::Mutex<Store>,
}

/// One app's supervisor, as the daemon reaches it. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Link({} {}: {:?})",
            self.inner.id,
            self.inner.name,
            self.state()
        )
    }
}

impl Link {
    /// The link of app `id` (its files in `files`); nothing runs until
    /// [`watch`](Self::watch).
    pub fn new(id: u32, name: &str, files: AppFiles) -> Link {
        Link {
            inner: Arc::new(Inner {
                id,
                name: name.to_string(),
                files,
                state: watch::Sender::new(State::Connecting),
                deleting: Default::default(),
                starting: tokio::sync::Mutex::new(()),
                restarts: Default::default(),
                sockets: Default::default(),
            }),
        }
    }

    pub fn id(&self) -> u32 {
        self.inner.id
    }

    pub fn files(&self) -> &AppFiles {
        &self.inner.files
    }

    pub fn state(&self) -> State {
        self.inner.state.borrow().clone()
    }

    /// Supervisors of this app started again after one died.
    pub fn restarts(&self) -> u64 {
        self.inner
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, state: State) {
        if state == State::Gone {
            self.store().clear();
        }
        self.inner.state.send_replace(state);
    }

    /// The copies of the app's sockets.
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner
            .sockets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many of the app's sockets the daemon holds a copy of.
    pub fn held_sockets(&self) -> usize {
        self.store().len()
    }

    /// Copy the sockets supervisor `pid` lists now (see [`crate::sockets`]).
    async fn sync_sockets(&self, pid: u32) {
        let Ok(status) = self.status().await else {
            return;
        };
        if status.supervisor.pid != pid {
            return;
        }
        if let Some(why) = self.store().sync(pid, &status.app.sockets) {
            crate::say!("app {}: {why}", self.inner.name);
        }
    }

    fn deleting(&self) -> bool {
        self.inner
            .deleting
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Start `herd supervise` for this app and wait until it serves (the
    /// app's file must be written). Its answer line, or why it failed.
    pub async fn start_supervisor(&self) -> Result<String, String> {
        let _starting = self.inner.starting.lock().await;
        if self.deleting() {
            return Err(format!("{} is being deleted", self.inner.name));
        }
        let home = self.inner.files.home().root().to_path_buf();
        let mut command = std::process::Command::new(herd_exe());
        command
            .arg0("herd")
            .arg("supervise")
            .arg("--home")
            .arg(&home)
            .arg("--id")
            .arg(self.inner.id.to_string())
            .env_remove("NOTIFY_SOCKET")
            // Its allocator without per-thread caches (read at start only).
            .envs(herd_engine::memory::lean_start_env())
            .current_dir("/")
            .stdin(Stdio::null());
        // The sockets a dead supervisor left (clients queued on them):
        // duplicates, open here until the spawn is done.
        let held = self.store().to_pass();
        if let Some((fds, named)) = &held {
            command.env(HELD_SOCKETS_ENV, named);
            let fds: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
            // SAFETY: between fork and exec the closure only calls fcntl,
            // which is async-signal-safe, on fds `held` keeps open until
            // the command has run.
            unsafe {
                command.pre_exec(move || {
                    for &fd in &fds {
                        if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        // Killed if it has not answered by the deadline, or if this future
        // is dropped.
        let out = herd_engine::child::output(command, START_DEADLINE).await;
        drop(held);
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(format!(
                    "its supervisor did not serve within {} s",
                    START_DEADLINE.as_secs()
                ))
            }
            Err(e) => return Err(format!("cannot run herd supervise: {e}")),
        };
        let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        if out.status.success() {
            Ok(said(&out.stdout))
        } else {
            let err = said(&out.stderr);
            let err = err.strip_prefix("herd: ").unwrap_or(&err).to_string();
            Err(if err.is_empty() {
                format!("herd supervise failed ({})", out.status)
            } else {
                err
            })
        }
    }

    /// Start the watcher task (once): it follows the supervisor, and starts
    /// one when none runs.
    pub fn watch(&self) {
        tokio::spawn(watcher(self.clone()));
    }

    /// Wait until the watcher knows where the supervisor is (up, or not),
    /// at most `deadline`.
    pub async fn settled(&self, deadline: Duration) {
        let mut rx = self.inner.state.subscribe();
        let _ =
            tokio::time::timeout(deadline, rx.wait_for(|s| !matches!(s, State::Connecting))).await;
    }

    async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(&self.inner.files.socket_address()).await
    }

    fn error(&self, e: ClientError) -> LinkError {
        let name = self.inner.name.clone();
        match e {
            ClientError::Version { .. } | ClientError::NotASupervisor { .. } => {
                LinkError::Incompatible(incompatible(&name, &e))
            }
            e => LinkError::Failed {
                name,
                why: e.to_string(),
            },
        }
    }

    /// Where the supervisor is, for a question that must not wait.
    fn reachable(&self) -> Result<(), LinkError> {
        let name = self.inner.name.clone();
        match self.state() {
            State::Up { .. } | State::Connecting => Ok(()),
            State::Restarting { .. } => Err(LinkError::Down { name }),
            State::Incompatible { why } => Err(LinkError::Incompatible(why)),
            State::Gone => Err(LinkError::Gone { name }),
        }
    }

    /// The app and its supervisor, now.
    pub async fn status(&self) -> Result<Status, LinkError> {
        self.reachable()?;
        let ask = async {
            let mut client = self.connect().await.map_err(|e| self.error(e))?;
            client.status().await.map_err(|e| self.error(e))
        };
        tokio::time::timeout(STATUS_DEADLINE, ask)
            .await
            .unwrap_or_else(|_| {
                Err(LinkError::Timeout {
                    name: self.inner.name.clone(),
                })
            })
    }

    /// The app's file as its supervisor keeps it.
    pub async fn definition(&self) -> Result<AppFile, LinkError> {
        self.reachable()?;
        let ask = async {
            let mut client = self.connect().await.map_err(|e| self.error(e))?;
            client.definition().await.map_err(|e| self.error(e))
        };
        tokio::time::timeout(STATUS_DEADLINE, ask)
            .await
            .unwrap_or_else(|_| {
                Err(LinkError::Timeout {
                    name: self.inner.name.clone(),
                })
            })
    }

    /// Give a command and wait for its ticket; a supervisor being started
    /// again is waited for a moment first.
    pub async fn command(&self, command: Command) -> Result<Ticket, LinkError> {
        let mut rx = self.inner.state.subscribe();
        let _ = tokio::time::timeout(
            COMMAND_WAIT,
            rx.wait_for(|s| !matches!(s, State::Connecting | State::Restarting { .. })),
        )
        .await;
        self.reachable()?;
        let mut client = self.connect().await.map_err(|e| self.error(e))?;
        client.command(command).await.map_err(|e| self.error(e))
    }

    /// Delete the app: its supervisor stops the workers, removes the app's
    /// files and exits. With no supervisor running, the daemon does that
    /// itself: it ends whatever the app left and removes its files.
    pub async fn delete(&self) -> Result<Ticket, LinkError> {
        self.inner
            .deleting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let name = self.inner.name.clone();
        if let State::Up { .. } = self.state() {
            match self.connect().await {
                Ok(mut client) => {
                    let ticket = client
                        .command(Command::Delete)
                        .await
                        .map_err(|e| self.error(e));
                    if matches!(ticket, Ok(Ticket::Done { .. })) {
                        // Its workers are gone; let the supervisor itself
                        // be gone too before the delete is answered.
                        let _ = tokio::time::timeout(EXIT_DEADLINE, wait_unlocked(self)).await;
                        self.set(State::Gone);
                    }
                    return ticket;
                }
                Err(e @ (ClientError::Version { .. } | ClientError::NotASupervisor { .. })) => {
                    return Err(self.error(e))
                }
                Err(_) => {} // it just died: clean up below
            }
        }
        if let State::Incompatible { why } = self.state() {
            return Err(LinkError::Incompatible(why));
        }
        // No supervisor: none may start while the files go.
        let _starting = self.inner.starting.lock().await;
        let files = &self.inner.files;
        let lock = match files.lock() {
            Ok(lock) => lock,
            Err(e) => {
                return Err(LinkError::Failed {
                    name,
                    why: e.to_string(),
                })
            }
        };
        let record = Record::read(files).unwrap_or_default();
        let ended = tokio::task::spawn_blocking(move || contain::end_leftovers(&record))
            .await
            .unwrap_or_default();
        files.remove_app();
        lock.remove();
        self.set(State::Gone);
        let also = if ended.processes > 0 {
            format!(" (and ended {} process(es) it left)", ended.processes)
        } else {
            String::new()
        };
        Ok(Ticket::Done {
            message: format!("deleted {name}{also}"),
        })
    }
}

/// What to tell the user about a supervisor this daemon cannot talk to.
fn incompatible(name: &str, e: &ClientError) -> String {
    format!(
        "app {name}: {e}. Its workers keep running; to manage it with this herd, stop that \
         supervisor (its pid is in apps/<id>.pid) and this daemon starts a new one"
    )
}

/// Follow the supervisor; start one when none runs; forever, until the app
/// is deleted.
async fn watcher(link: Link) {
    let name = link.inner.name.clone();
    let mut backoff = BACKOFF_FIRST;
    let mut attempt = 0u32;
    loop {
        if link.deleting() {
            return link.set(State::Gone);
        }
        match follow(&link).await {
            Followed::Deleted => return link.set(State::Gone),
            Followed::Incompatible(why) => {
                crate::say!("{why}");
                link.set(State::Incompatible { why });
                // Wait for it to end (then start a supervisor of ours).
                while link.inner.files.running_pid().is_some() && !link.deleting() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
            Followed::Ended { pid, up_for } => {
                if link.deleting() {
                    return link.set(State::Gone);
                }
                // Still there, still holding the app's lock, its socket
                // open: it executed a new binary in place (`herd update`).
                // Follow it again (we are answered once the new image
                // serves), without counting a restart.
                if executed_in_place(&link, pid).await {
                    link.set(State::Connecting);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                if up_for >= BACKOFF_RESET {
                    backoff = BACKOFF_FIRST;
                    attempt = 0;
                }
                // Let it finish exiting (it may be stopping the app).
                wait_unlocked(&link).await;
                if !link.inner.files.exists() {
                    crate::say!("app {name}: its supervisor (pid {pid}) ended and removed the app's file; the app is gone");
                    return link.set(State::Gone);
                }
                attempt += 1;
                link.set(State::Restarting { attempt });
                crate::say!(
                    "app {name}: its supervisor (pid {pid}) ended; starting another in {}",
                    herd_engine::describe::duration(backoff)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                link.inner
                    .restarts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Followed::NoSupervisor => {}
        }
        if link.deleting() {
            return link.set(State::Gone);
        }
        // None runs (or it just ended): start one.
        match link.start_supervisor().await {
            Ok(said) => crate::say!("app {name}: {said}"),
            Err(why) => {
                crate::say!(
                    "app {name}: cannot start its supervisor: {why}; trying again in {}",
                    herd_engine::describe::duration(backoff)
                );
                attempt += 1;
                link.set(State::Restarting { attempt });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// How following a supervisor ended.
enum Followed {
    /// None runs (nothing holds the app's lock, or it ended before we met).
    NoSupervisor,
    /// It speaks another version (or is not a supervisor): why.
    Incompatible(String),
    /// The app was deleted.
    Deleted,
    /// It ended (or closed our stream) after this long up.
    Ended { pid: u32, up_for: Duration },
}

/// Connect and follow until the stream ends.
async fn follow(link: &Link) -> Followed {
    let name = &link.inner.name;
    // A supervisor just starting holds its lock before it serves: try a few
    // times while the lock says one runs.
    let deadline = Instant::now() + START_DEADLINE;
    let client = loop {
        match link.connect().await {
            Ok(client) => break client,
            Err(e @ (ClientError::Version { .. } | ClientError::NotASupervisor { .. })) => {
                return Followed::Incompatible(incompatible(name, &e))
            }
            Err(ClientError::Refused(why)) => {
                return Followed::Incompatible(format!("app {name}: its supervisor refused this daemon: {why}"))
            }
            Err(_) if link.inner.files.running_pid().is_none() => return Followed::NoSupervisor,
            Err(_) if Instant::now() > deadline => {
                return Followed::Incompatible(format!(
                    "app {name}: its supervisor (pid {}) holds the app's lock but does not serve its socket",
                    link.inner.files.running_pid().unwrap_or(0)
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let pid = client.pid();
    let mut follower = match client.follow().await {
        Ok(f) => f,
        Err(_) => return Followed::NoSupervisor,
    };
    let since = Instant::now();
    link.set(State::Up { pid });
    link.sync_sockets(pid).await;
    loop {
        match follower.next().await {
            Ok(Some(Event::Deleted)) => return Followed::Deleted,
            Ok(Some(Event::Warning { .. })) => {}
            // Its sockets may have changed.
            Ok(Some(_)) => link.sync_sockets(pid).await,
            Ok(None) | Err(_) => {
                return Followed::Ended {
                    pid,
                    up_for: since.elapsed(),
                }
            }
        }
    }
}

/// After its event stream ended: did supervisor `pid` execute a new binary
/// in place (it keeps its lock and its listening socket, so a connection is
/// taken), rather than die? A killed process's streams close while it is
/// still exiting, before its lock and its socket are released (a
/// connection may even be taken then): one that is exiting has died.
async fn executed_in_place(link: &Link, pid: u32) -> bool {
    let deadline = Instant::now() + EXIT_DEADLINE;
    loop {
        if link.inner.files.running_pid() != Some(pid) || exiting(pid) {
            return false;
        }
        if std::os::unix::net::UnixStream::connect(link.inner.files.socket_address()).is_ok() {
            return true;
        }
        if Instant::now() > deadline {
            // Locked but not serving: it is ending; the caller waits for
            // its lock, then starts another.
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Process `pid`'s state letter and kernel flags (`/proc/PID/stat`);
/// `None` when it is gone.
fn proc_state(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's ")": state, ppid, pgrp, session, tty, tpgid, flags.
    let mut fields = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace())
        .into_iter()
        .flatten();
    let state = fields.next().unwrap_or("X").to_string();
    let flags: u64 = fields.nth(5).and_then(|f| f.parse().ok()).unwrap_or(0);
    Some((state, flags))
}

/// Is process `pid` exiting, a zombie, or gone (the kernel's `PF_EXITING`
/// flag in `/proc/PID/stat`, set as soon as it begins to exit)?
fn exiting(pid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    match proc_state(pid) {
        None => true,
        Some((state, flags)) => {
            matches!(state.as_str(), "Z" | "X" | "x") || flags & PF_EXITING != 0
        }
    }
}

/// Has process `pid` ended: gone, or a zombie its parent has not reaped?
fn ended(pid: u32) -> bool {
    proc_state(pid).is_none_or(|(state, _)| matches!(state.as_str(), "Z" | "X" | "x"))
}

/// Wait until no supervisor holds the app's lock (one that closed its
/// stream may still be stopping the app), and until the one that held it
/// has ended: it lets go of the lock as its last step, just before it
/// exits, so "deleted" and "killed" are never answered while it still runs.
async fn wait_unlocked(link: &Link) {
    let started = Instant::now();
    let mut warned = false;
    let mut holder = match link.state() {
        State::Up { pid } => Some(pid),
        _ => None,
    };
    // Once unlocked, its end is waited for a moment only (its pid could be
    // another's by then).
    let mut unlocked_at = None;
    loop {
        match link.inner.files.running_pid() {
            Some(pid) => {
                holder = Some(pid);
                unlocked_at = None;
            }
            None if holder.is_none_or(ended) => return,
            None => {
                let since = *unlocked_at.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    return;
                }
            }
        }
        if !warned && started.elapsed() > Duration::from_secs(10) {
            crate::say!(
                "app {}: its supervisor closed its stream but has not exited for 10 s",
                link.inner.name
            );
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_is_not_exiting_nor_ended_a_zombie_or_a_gone_one_is() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!exiting(pid), "a sleeping process taken for an exiting one");
        assert!(!ended(pid), "a sleeping process taken for an ended one");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // Not reaped yet: a zombie (or still exiting) within moments.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !exiting(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            exiting(pid),
            "a killed, unreaped process not taken as exiting"
        );
        // A zombie has ended (its parent has not reaped it yet).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ended(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(ended(pid), "a killed process (a zombie) not taken as ended");
        child.wait().unwrap();
        assert!(exiting(pid), "a reaped process not taken as gone");
        assert!(ended(pid), "a reaped process not taken as ended");
    }
}
