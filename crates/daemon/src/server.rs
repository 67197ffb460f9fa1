//! The control socket: accepts CLI connections, checks who they are, says
//! hello, and hands each request to [`crate::handlers`]. Before it serves,
//! the apps the home holds are adopted ([`crate::adopt`]). Also the
//! daemon's own signals: SIGTERM/SIGINT stop every app and end the daemon
//! (as `herd kill`), SIGUSR1 has every app's supervisor reopen its log
//! files (for logrotate).
//!
//! A connection is *waiting* until its request is read and its turn has
//! come, then *active* while the request is carried out. Waiting ones have
//! deadlines (the hello, then the request) and a cap: when a new
//! connection would pass it, the oldest waiting one is dropped. Only active
//! ones count against [`MAX_ACTIVE`]. So idle connections, however many,
//! never keep a CLI waiting for more than a moment.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_protocol::{Connection, ErrorKind, FrameError, Request, Response, MAX_FRAME, VERSION};
use herd_signals::Signal;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use herd_protocol::supervisor::Command;
use herd_supervisor::files::AppsDir;

use crate::handlers::{self, Ctx};
use crate::{Error, Options};

/// How long a client may take to say hello once connected.
const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// How long a client may take to send its request after the hello, and to
/// take in the answer.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Requests carried out at once (a reload may take minutes); more wait
/// their turn, as waiting connections.
const MAX_ACTIVE: usize = 128;
/// How long `herd update` waits for the requests under way to end before
/// the daemon executes its new binary.
const QUIET_DEADLINE: Duration = Duration::from_secs(60);
/// Waiting connections kept; a new one beyond this drops the oldest.
const MAX_WAITING: usize = 32;
/// The largest hello frame (a hello is a few dozen bytes).
const HELLO_FRAME: usize = 4096;

/// Whether a peer with `peer` uid may use a daemon run by `own`: the same
/// user, or root (who could read the socket anyway).
pub fn peer_allowed(peer: u32, own: u32) -> bool {
    peer == own || peer == 0
}

/// The waiting connections, oldest first, each with the means to drop it.
#[derive(Default)]
struct Waiting {
    next: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

impl Waiting {
    /// Count a new connection in; when that makes too many, the oldest
    /// waiting one is told to go (its sender dropped). Returns the new
    /// one's id and its own "go" signal.
    fn admit(&mut self) -> (u64, oneshot::Receiver<()>) {
        while self.queue.len() >= MAX_WAITING {
            self.queue.pop_front();
        }
        let (tx, rx) = oneshot::channel();
        let id = self.next;
        self.next += 1;
        self.queue.push_back((id, tx));
        (id, rx)
    }

    /// The connection is served (or gone): it no longer waits.
    fn leave(&mut self, id: u64) {
        if let Some(i) = self.queue.iter().position(|(x, _)| *x == id) {
            self.queue.remove(i);
        }
    }
}

/// What the accept loop shares with each connection.
struct Door {
    ctx: Arc<Ctx>,
    own_uid: u32,
    waiting: Mutex<Waiting>,
    active: Arc<Semaphore>,
}

impl Door {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serve until `herd kill`, SIGTERM or SIGINT; `started` is when the daemon
/// process began (adoption is timed from it).
/// `control_fd`: the control socket kept open by the previous image of this
/// daemon (`herd update`), else one is bound. `lock_fd`: the held lock of
/// `herd.pid`, to keep across such an exec.
pub async fn serve(
    options: Options,
    started: Instant,
    control_fd: Option<std::os::fd::OwnedFd>,
    lock_fd: std::os::fd::RawFd,
) -> Result<i32, Error> {
    let home = options.home.clone();
    let path = home.socket();
    let listen_err = |error| Error::Listen {
        path: path.clone(),
        error,
    };
    let listener = match control_fd {
        // The previous image of this daemon (`herd update`) kept it open:
        // connections made meanwhile wait in its queue.
        Some(fd) => {
            let listener = std::os::unix::net::UnixListener::from(fd);
            listener.set_nonblocking(true).map_err(listen_err)?;
            UnixListener::from_std(listener).map_err(listen_err)?
        }
        None => {
            // We hold the home's lock: a socket file left here is stale.
            home.remove_socket();
            // Bound through the checked directory's fd, then made owner-only.
            let listener = UnixListener::bind(home.socket_address()).map_err(listen_err)?;
            home.dir()
                .set_socket_mode(crate::home::SOCKET, 0o600)
                .map_err(listen_err)?;
            listener
        }
    };
    let mut sigterm = Signal::new(libc::SIGTERM).map_err(Error::Runtime)?;
    let mut sigint = Signal::new(libc::SIGINT).map_err(Error::Runtime)?;
    let mut sigusr1 = Signal::new(libc::SIGUSR1).map_err(Error::Runtime)?;
    let mut sighup = Signal::new(libc::SIGHUP).map_err(Error::Runtime)?;
    let http = match options.metrics {
        Some(addr) => Some(
            crate::http::bind(addr)
                .await
                .map_err(|error| Error::Metrics { addr, error })?,
        ),
        None => None,
    };
    let apps = AppsDir::open(&home).map_err(Error::Apps)?;
    let ctx = Ctx::new(home.clone(), apps, options.secrets.clone());
    ctx.control_fd.store(
        std::os::fd::AsRawFd::as_raw_fd(&listener),
        std::sync::atomic::Ordering::SeqCst,
    );
    ctx.lock_fd
        .store(lock_fd, std::sync::atomic::Ordering::SeqCst);
    // The CLI may connect already (the socket is bound); it is answered
    // once every app found in the home is taken.
    crate::adopt::adopt(&ctx, started).await;
    if let Some(listener) = http {
        if let Ok(bound) = listener.local_addr() {
            crate::say!("metrics, health probes and the status page on http://{bound}/");
        }
        let settings = crate::http::Settings {
            admin: options.metrics_admin,
            hosts: options.metrics_hosts.clone(),
        };
        tokio::spawn(crate::http::serve(ctx.clone(), listener, settings));
    }
    crate::say!(
        "daemon {} listening on {} (HERD_HOME={})",
        std::process::id(),
        path.display(),
        home.root().display()
    );

    if options.resurrect && crate::dump::exists(&home) {
        match handlers::handle(&ctx, Request::Resurrect).await {
            Response::Error { message, .. } => crate::say!("resurrect: {message}"),
            _ => crate::say!("resurrected the saved apps"),
        }
    }
    // Under herd's PID-1 init our pid is the namespace's 2, meaningless to a
    // manager outside it: leave MAINPID out there (the main pid is then the
    // process it started).
    let mainpid = if herd_engine::under_herd_init() {
        String::new()
    } else {
        format!("\nMAINPID={}", std::process::id())
    };
    let _ = herd_engine::sd_notify(&format!(
        "READY=1\nSTATUS=listening on {}{mainpid}",
        path.display(),
    ));

    let door = Arc::new(Door {
        ctx: ctx.clone(),
        own_uid: nix::unistd::geteuid().as_raw(),
        waiting: Mutex::new(Waiting::default()),
        active: Arc::new(Semaphore::new(MAX_ACTIVE)),
    });
    // What start-up and each request ran and left is given back a moment
    // later, and once a minute (`herd_engine::memory::Trimmer`).
    let trimmer = herd_engine::memory::Trimmer::spawn();
    loop {
        tokio::select! {
            // Paused while `herd update` lets the requests under way end.
            _ = ctx.updating_changed.notified() => {}
            accepted = listener.accept(), if !ctx.updating() => match accepted {
                Ok((stream, _)) => {
                    trimmer.poke();
                    tokio::spawn(client(door.clone(), stream));
                }
                Err(e) => {
                    crate::say!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = ctx.shutdown.notified() => break,
            _ = sigterm.recv() => {
                crate::say!("SIGTERM: stopping every app");
                let _ = herd_engine::sd_notify("STOPPING=1");
                handlers::delete_all(&ctx).await;
                break;
            }
            _ = sigint.recv() => {
                crate::say!("SIGINT: stopping every app");
                let _ = herd_engine::sd_notify("STOPPING=1");
                handlers::delete_all(&ctx).await;
                break;
            }
            _ = sigusr1.recv() => {
                for e in ctx.registry().all() {
                    tokio::spawn(async move {
                        if let Err(err) = e.link.command(Command::ReopenLogs).await {
                            crate::say!("app {}: cannot reopen its log files: {err}", e.name);
                        }
                    });
                }
            }
            // The daemon has no terminal: a hangup is not a reason to die.
            _ = sighup.recv() => {}
        }
    }
    // Let the answers under way (`herd kill`'s own) reach their clients.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        door.active.clone().acquire_many_owned(MAX_ACTIVE as u32),
    )
    .await;
    home.remove_socket();
    crate::say!("daemon {} exits", std::process::id());
    Ok(0)
}

/// One CLI connection: waiting (peer check, hello, request, its turn),
/// then active (the request carried out, the answer sent).
async fn client(door: Arc<Door>, stream: UnixStream) {
    let (id, dropped) = door.waiting().admit();
    // Leave the waiting queue however this ends (a panic included).
    struct Leave<'a>(&'a Door, u64);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.waiting().leave(self.1);
        }
    }
    let leave = Leave(&door, id);
    let received = tokio::select! {
        // Dropped for a newer connection while still waiting.
        _ = dropped => return,
        r = receive(&door, stream) => r,
    };
    drop(leave);
    let Some((mut conn, request, turn)) = received else {
        return;
    };
    let response = handlers::handle(&door.ctx, request).await;
    let _ = tokio::time::timeout(REQUEST_DEADLINE, answer(&mut conn, &response)).await;
    drop(conn);
    drop(turn);
    if door.ctx.reexec_asked() {
        reexec_when_quiet(&door).await;
    }
}

/// `herd update`: stop accepting (new connections wait in the socket's
/// queue, which the next image keeps), let every connection already taken
/// end, then execute the new binary. If that cannot be done, serve on.
async fn reexec_when_quiet(door: &Door) {
    let ctx = &door.ctx;
    ctx.set_updating(true);
    let deadline = Instant::now() + QUIET_DEADLINE;
    let all = loop {
        if door.waiting().queue.is_empty() {
            if let Ok(all) = door
                .active
                .clone()
                .try_acquire_many_owned(MAX_ACTIVE as u32)
            {
                break Some(all);
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    match all {
        Some(_all) => handlers::update::reexec_if_asked(ctx),
        None => {
            ctx.reexec_cancel();
            crate::say!(
                "herd update: requests still ran after {} s; the daemon runs on, not updated",
                QUIET_DEADLINE.as_secs()
            );
        }
    }
    ctx.set_updating(false);
}

/// Check the peer, take the hello and the request within their deadlines,
/// and wait for a turn among the active requests.
async fn receive(
    door: &Door,
    stream: UnixStream,
) -> Option<(Connection, Request, OwnedSemaphorePermit)> {
    let peer = stream.peer_cred().map(|c| c.uid()).ok();
    let mut conn = Connection::new(stream);
    let own_uid = door.own_uid;
    if !peer.is_some_and(|uid| peer_allowed(uid, own_uid)) {
        let refusal = Response::Error {
            kind: ErrorKind::Failed,
            message: format!(
                "this herd daemon belongs to uid {own_uid}; use your own (set HERD_HOME)"
            ),
        };
        let _ = tokio::time::timeout(HELLO_DEADLINE, conn.send(&refusal)).await;
        return None;
    }
    conn.limit_frames(HELLO_FRAME);
    let hello = tokio::time::timeout(HELLO_DEADLINE, async {
        match conn.recv::<Request>().await? {
            Request::Hello { version } if version == VERSION => {}
            Request::Hello { version } => {
                conn.send(&Response::Error {
                    kind: ErrorKind::Version,
                    message: format!(
                        "the daemon speaks protocol {VERSION} and this herd speaks {version}: \
                         run `herd kill` with the herd that started the daemon, then try again"
                    ),
                })
                .await?;
                return Ok(false);
            }
            _ => {
                conn.send(&handlers::usage("say hello first")).await?;
                return Ok(false);
            }
        }
        conn.send(&Response::Hello {
            version: VERSION,
            pid: std::process::id(),
        })
        .await?;
        Ok::<_, FrameError>(true)
    })
    .await;
    if let Ok(Err(e)) = &hello {
        refuse(&mut conn, e).await;
    }
    if !said(hello)? {
        return None;
    }
    conn.limit_frames(MAX_FRAME);
    let request = tokio::time::timeout(REQUEST_DEADLINE, conn.recv::<Request>()).await;
    if let Ok(Err(e)) = &request {
        refuse(&mut conn, e).await;
    }
    let request = said(request)?;
    let turn = door.active.clone().acquire_owned().await.ok()?;
    Some((conn, request, turn))
}

/// Tell a client why its frame was refused, before its connection closes:
/// a frame over the size limit, or one that is no request herd knows.
async fn refuse(conn: &mut Connection, e: &FrameError) {
    let why = match e {
        FrameError::Json(e) => format!(
            "the daemon cannot read this request ({e}); send one of herd-protocol's \
             requests (the herd CLI of the daemon's version does)"
        ),
        FrameError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => format!(
            "the daemon refused a frame ({e}): a hello is at most {HELLO_FRAME} bytes, \
             a request at most {MAX_FRAME}"
        ),
        FrameError::Io(e) => format!(
            "the daemon could not read a whole frame ({e}): a frame is a 4-byte big-endian \
             length, then that many bytes of JSON"
        ),
        FrameError::Closed => return,
    };
    let _ = tokio::time::timeout(HELLO_DEADLINE, conn.send(&handlers::usage(why))).await;
}

/// What a step within its deadline gave: `None` (the connection ends) on a
/// timeout, a close or a bad frame (the latter noted in the daemon's log).
fn said<T>(step: Result<Result<T, FrameError>, tokio::time::error::Elapsed>) -> Option<T> {
    match step {
        Ok(Ok(v)) => Some(v),
        Ok(Err(FrameError::Closed)) | Err(_) => None,
        Ok(Err(e)) => {
            crate::say!("a client sent something unreadable ({e}); closed its connection");
            None
        }
    }
}

/// Send the answer; one too big for a frame becomes an error that says so
/// (the client is never left with a closed connection and no reason).
async fn answer(conn: &mut Connection, response: &Response) -> Result<(), FrameError> {
    match conn.send(response).await {
        Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {
            conn.send(&handlers::failed(format!(
                "the daemon's answer does not fit in one message ({e}); ask for less \
                 (one app at a time)"
            )))
            .await
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_drops_the_oldest_waiting_one_past_the_cap() {
        let mut w = Waiting::default();
        let mut signals: Vec<_> = (0..MAX_WAITING).map(|_| w.admit()).collect();
        assert!(signals.iter_mut().all(|(_, rx)| rx
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)));
        let (_, mut newest) = w.admit();
        // The oldest was told to go (its sender dropped); the others wait on.
        assert_eq!(
            signals[0].1.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        );
        assert_eq!(
            signals[1].1.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        assert_eq!(newest.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        // One that is served leaves the queue and makes room.
        w.leave(signals[1].0);
        let _ = w.admit();
        assert_eq!(
            signals[2].1.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        assert_eq!(w.queue.len(), MAX_WAITING);
    }

    #[test]
    fn only_the_same_user_or_root() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1000, 0));
    }
}
