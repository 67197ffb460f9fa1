//! The supervisor's control socket, one client at a time per task: check
//! the peer (same user, or root), exchange hellos, then answer requests in
//! order (see `herd_protocol::supervisor`). A command's answer is its own
//! ticket, from the actor; a follow turns the connection into the app's
//! event stream until the client closes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use herd_protocol::supervisor::{
    AppFile, Command, Event, Hello, Request, Response, Status, SupervisorInfo, Welcome, PROTOCOL,
    VERSION,
};
use herd_protocol::{Connection, FrameError};
use tokio::net::UnixStream;
use tokio::sync::broadcast::error::RecvError;

use crate::app::{AppCommand, AppRef};

/// How long a client may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection shares.
pub struct Shared {
    pub app: AppRef,
    /// The supervisor as its status shows it (the uptime is filled in per request).
    pub info: SupervisorInfo,
    pub started: Instant,
    /// The app's file as last written (the keeper updates it).
    pub app_file: Arc<Mutex<AppFile>>,
    /// A `delete` was asked for (the process then waits for its answer to
    /// go out before it exits).
    pub deleting: AtomicBool,
    /// Told once a `delete` has been answered.
    pub delete_answered: tokio::sync::Notify,
}

impl Shared {
    fn status_of(&self, app: herd_protocol::supervisor::App) -> Status {
        let mut supervisor = self.info.clone();
        supervisor.uptime_ms = self.started.elapsed().as_millis() as u64;
        Status { app, supervisor }
    }
}

/// Whether a peer with `peer` uid may use a supervisor run by `own`: the
/// same user, or root (who could read the socket anyway).
pub fn peer_allowed(peer: u32, own: u32) -> bool {
    peer == own || peer == 0
}

/// Serve one connection until it closes.
pub async fn client(shared: Arc<Shared>, stream: UnixStream) {
    let own = nix::unistd::geteuid().as_raw();
    let peer = stream.peer_cred().map(|c| c.uid()).ok();
    let mut conn = Connection::new(stream);
    let welcome = |refused: Option<String>| Welcome {
        protocol: PROTOCOL.to_string(),
        version: VERSION,
        pid: std::process::id(),
        refused,
    };
    if !peer.is_some_and(|uid| peer_allowed(uid, own)) {
        let why = format!("this app's supervisor belongs to uid {own}; use your own herd");
        let _ = conn.send(&welcome(Some(why))).await;
        return;
    }
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, conn.recv::<Hello>()).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(FrameError::Json(_))) => {
            let why = format!(
                "this is the socket of a herd app supervisor, which speaks {PROTOCOL} protocol {VERSION} only; \
                 talk to the daemon (herd.sock) instead"
            );
            let _ = conn.send(&welcome(Some(why))).await;
            return;
        }
        _ => return,
    };
    if hello.protocol != PROTOCOL || hello.version != VERSION {
        let why = format!(
            "this supervisor (pid {}) speaks {PROTOCOL} protocol {VERSION}, and the client {} protocol {}: \
             use the herd that started it, or let the daemon restart the app's supervisor with the new herd",
            std::process::id(),
            hello.protocol,
            hello.version
        );
        let _ = conn.send(&welcome(Some(why))).await;
        return;
    }
    if conn.send(&welcome(None)).await.is_err() {
        return;
    }
    loop {
        let request = match conn.recv::<Request>().await {
            Ok(r) => r,
            Err(FrameError::Json(e)) => {
                let message = format!("cannot read the request: {e}");
                let _ = conn.send(&Response::Error { message }).await;
                return;
            }
            Err(_) => return,
        };
        let response = match request {
            Request::Status => match shared.app.app().await {
                Some(app) => Response::Status {
                    status: Box::new(shared.status_of(app)),
                },
                None => gone(),
            },
            Request::Definition => {
                let app = shared
                    .app_file
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                Response::Definition { app: Box::new(app) }
            }
            Request::Command { command } => {
                let delete = command == Command::Delete;
                if delete {
                    shared.deleting.store(true, Ordering::SeqCst);
                }
                let ticket = shared.app.command(app_command(command)).await;
                let deleted = delete && ticket.is_done();
                let sent = conn.send(&Response::Ticket { ticket }).await;
                if deleted {
                    shared.delete_answered.notify_one();
                }
                if sent.is_err() {
                    return;
                }
                continue;
            }
            Request::Follow => return follow(&shared, conn).await,
        };
        if conn.send(&response).await.is_err() {
            return;
        }
    }
}

fn gone() -> Response {
    Response::Error {
        message: "the app is gone (deleted meanwhile)".into(),
    }
}

/// Stream the app's events until the client closes the connection (or
/// sends anything) or the app is gone.
async fn follow(shared: &Shared, mut conn: Connection) {
    let mut events = shared.app.follow();
    loop {
        let event = tokio::select! {
            event = events.recv() => Some(event),
            _ = conn.stream().readable() => None,
        };
        let Some(event) = event else {
            // Anything from the client, or its end, ends the stream (a
            // readiness without either was spurious).
            match conn.stream().try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                _ => return,
            }
        };
        let event = match event {
            Ok(event) => std::sync::Arc::unwrap_or_clone(event),
            Err(RecvError::Lagged(missed)) => Event::Lagged { missed },
            Err(RecvError::Closed) => return,
        };
        let last = matches!(event, Event::Deleted);
        if conn.send(&Response::Event { event }).await.is_err() || last {
            return;
        }
    }
}

/// The actor's command for a protocol command.
fn app_command(command: Command) -> AppCommand {
    match command {
        Command::Start => AppCommand::Start,
        Command::Stop => AppCommand::Stop,
        Command::Restart { slot } => AppCommand::Restart { slot },
        Command::RestartWith { definition } => AppCommand::RestartWith(definition),
        Command::Reload { definition } => AppCommand::Reload { def: definition },
        Command::Reset => AppCommand::Reset,
        Command::Delete => AppCommand::Delete,
        Command::Flush => AppCommand::Flush,
        Command::Scale { to } => AppCommand::Scale(to),
        Command::Send { slot, message } => AppCommand::Send { slot, message },
        Command::Signal { signal } => AppCommand::Signal(signal),
        Command::ReopenLogs => AppCommand::ReopenLogs,
        Command::Upgrade { exe } => AppCommand::Upgrade { exe },
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_user_or_root() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
    }
}
