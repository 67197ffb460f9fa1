//! The control socket: accepts CLI connections, checks who they are, says
//! hello, and hands each request to [`crate::handlers`]. Also the daemon's
//! own signals: SIGTERM/SIGINT stop every app and end the daemon, SIGUSR1
//! reopens the log files (for logrotate).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use herd_protocol::{Connection, ErrorKind, FrameError, Request, Response, VERSION};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::app::AppCommand;
use crate::handlers::{self, Ctx};
use crate::{Error, Options};

/// How long a client may take to send its hello and its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the socket's backlog, so a
/// client opening connections in a loop cannot grow the daemon.
const MAX_CLIENTS: usize = 128;

/// Whether a peer with `peer` uid may use a daemon run by `own`: the same
/// user, or root (who could read the socket anyway).
pub fn peer_allowed(peer: u32, own: u32) -> bool {
    peer == own || peer == 0
}

pub async fn serve(options: Options) -> Result<i32, Error> {
    let home = options.home.clone();
    let path = home.socket();
    // We hold the home's lock: a socket file left here is stale.
    let _ = std::fs::remove_file(&path);
    let listen_err = |source| Error::Listen {
        path: path.clone(),
        source,
    };
    let listener = UnixListener::bind(&path).map_err(listen_err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    let ctx = Ctx::new(home.clone());
    if let Some(addr) = options.metrics {
        let listener = crate::http::bind(addr)
            .await
            .map_err(|error| Error::Metrics { addr, error })?;
        let bound = listener.local_addr().unwrap_or(addr);
        crate::say!("metrics, health probes and the status page on http://{bound}/");
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

    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Runtime)?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(Error::Runtime)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(Error::Runtime)?;

    if options.resurrect && home.dump().exists() {
        match handlers::handle(&ctx, Request::Resurrect).await {
            Response::Error { message, .. } => crate::say!("resurrect: {message}"),
            _ => crate::say!("resurrected the saved apps"),
        }
    }
    // Under herd's PID-1 init our pid is the namespace's 2, meaningless to a
    // manager outside it: leave MAINPID out there (the main pid is then the
    // process it started).
    let mainpid = if herd_engine::os::init::supervised() {
        String::new()
    } else {
        format!("\nMAINPID={}", std::process::id())
    };
    let _ = herd_engine::os::notify::notify(&format!(
        "READY=1\nSTATUS=listening on {}{mainpid}",
        path.display(),
    ));

    let own_uid = nix::unistd::geteuid().as_raw();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        tokio::select! {
            accepted = accept(&listener, &slots) => match accepted {
                Ok((stream, slot)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        client(ctx, stream, own_uid).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    crate::say!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = ctx.shutdown.notified() => break,
            _ = sigterm.recv() => {
                crate::say!("SIGTERM: stopping every app");
                let _ = herd_engine::os::notify::notify("STOPPING=1");
                handlers::stop_all(&ctx).await;
                break;
            }
            _ = sigint.recv() => {
                crate::say!("SIGINT: stopping every app");
                let _ = herd_engine::os::notify::notify("STOPPING=1");
                handlers::stop_all(&ctx).await;
                break;
            }
            _ = sigusr1.recv() => {
                for e in ctx.registry.lock().unwrap_or_else(|e| e.into_inner()).all() {
                    tokio::spawn(async move { e.app.ask(AppCommand::ReopenLogs).await });
                }
            }
            // The daemon has no terminal: a hangup is not a reason to die.
            _ = sighup.recv() => {}
        }
    }
    let _ = std::fs::remove_file(&path);
    crate::say!("daemon {} exits", std::process::id());
    Ok(0)
}

/// The next connection, once fewer than [`MAX_CLIENTS`] are being served.
async fn accept(
    listener: &UnixListener,
    slots: &Arc<tokio::sync::Semaphore>,
) -> std::io::Result<(UnixStream, tokio::sync::OwnedSemaphorePermit)> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let (stream, _) = listener.accept().await?;
    Ok((stream, slot))
}

/// One CLI connection: check the peer, hello, one request, one response.
async fn client(ctx: Arc<Ctx>, stream: UnixStream, own_uid: u32) {
    let peer = stream.peer_cred().map(|c| c.uid()).ok();
    let mut conn = Connection::new(stream);
    if !peer.is_some_and(|uid| peer_allowed(uid, own_uid)) {
        let _ = conn
            .send(&Response::Error {
                kind: ErrorKind::Failed,
                message: format!(
                    "this herd daemon belongs to uid {own_uid}; use your own (set HERD_HOME)"
                ),
            })
            .await;
        return;
    }
    let result = tokio::time::timeout(CLIENT_TIMEOUT, async {
        let hello: Request = conn.recv().await?;
        match hello {
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
                return Ok(None);
            }
            _ => {
                conn.send(&handlers::usage("say hello first")).await?;
                return Ok(None);
            }
        }
        conn.send(&Response::Hello {
            version: VERSION,
            pid: std::process::id(),
        })
        .await?;
        let request: Request = conn.recv().await?;
        Ok::<_, FrameError>(Some(request))
    })
    .await;
    let request = match result {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(FrameError::Closed)) => return,
        Ok(Err(e)) => {
            crate::say!("a client sent something unreadable ({e}); closed its connection");
            return;
        }
        Err(_) => return,
    };
    let response = handlers::handle(&ctx, request).await;
    let _ = conn.send(&response).await;
}

#[cfg(test)]
mod tests {
    use super::peer_allowed;

    #[test]
    fn only_the_same_user_or_root() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1000, 0));
    }
}
