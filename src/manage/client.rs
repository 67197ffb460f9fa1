//! The CLI's side of the control socket: find the daemon of `$HERD_HOME`
//! (starting it, detached, when it is not running, as pm2 does), say hello,
//! send one request and read the answer. The home is checked the daemon's
//! way ([`Home::open`]) before anything in it is used: a root CLI never
//! talks to a socket, or appends to a `herd.log`, that another user planted.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use herd_daemon::Home;
use herd_protocol::{Connection, ErrorKind, Request, Response, VERSION};
use tokio::net::UnixStream;

use crate::UsageError;

/// How long a freshly started daemon may take to listen.
const DAEMON_START: Duration = Duration::from_secs(10);

/// Send one request to the daemon, starting it if needed (unless `autostart`
/// is false: then `Ok(None)` means no daemon runs). A daemon error becomes
/// an error here: a usage error (exit 2) or a failure (exit 1).
pub fn request(request: Request, autostart: bool) -> anyhow::Result<Option<Response>> {
    Client::new()?.request(request, autostart)
}

/// A client for many requests (`herd monit` asks every second): one async
/// runtime, reused, and a new connection per request, as the daemon expects.
pub struct Client {
    /// Where the home is (opened and checked at each request).
    home: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new() -> anyhow::Result<Client> {
        let home = Home::location()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Client { home, runtime })
    }

    /// See [`request`].
    pub fn request(&self, request: Request, autostart: bool) -> anyhow::Result<Option<Response>> {
        self.runtime.block_on(async {
            let Some(mut conn) = greeted(&self.home, autostart).await? else {
                return Ok(None);
            };
            let lost = "the daemon closed the connection; see $HERD_HOME/herd.log";
            conn.send(&request).await.context(lost)?;
            let response = conn.recv::<Response>().await.context(lost)?;
            match response {
                Response::Error {
                    kind: ErrorKind::Usage,
                    message,
                } => Err(UsageError(message).into()),
                Response::Error { message, .. } => Err(anyhow!(message)),
                r => Ok(Some(r)),
            }
        })
    }
}

/// A connection to the daemon that has said hello (one is started if
/// needed, unless `autostart` is false: then `None` when none runs).
///
/// A daemon that dies before its hello reached us (killed, or crashed, as
/// a service manager then starts it again; a killed process's socket takes
/// connections until its teardown closes it) has not seen our request:
/// connect again, to the next daemon, for as long as one may take to start.
async fn greeted(root: &Path, autostart: bool) -> anyhow::Result<Option<Connection>> {
    let deadline = Instant::now() + DAEMON_START;
    loop {
        let Some(mut conn) = connect(root, autostart).await? else {
            return Ok(None);
        };
        match hello(&mut conn).await? {
            Ok(()) => return Ok(Some(conn)),
            Err(lost) if Instant::now() > deadline => {
                return Err(anyhow::Error::new(lost)
                    .context("the daemon closed the connection; see $HERD_HOME/herd.log"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Say hello: `Ok(Err(_))` when the connection was lost before the daemon
/// answered (nothing was asked of it yet), an error when it refused us.
async fn hello(conn: &mut Connection) -> anyhow::Result<Result<(), herd_protocol::FrameError>> {
    if let Err(lost) = conn.send(&Request::Hello { version: VERSION }).await {
        return Ok(Err(lost));
    }
    match conn.recv::<Response>().await {
        Ok(Response::Hello { .. }) => Ok(Ok(())),
        Ok(Response::Error { message, .. }) => Err(anyhow!(message)),
        Ok(other) => Err(anyhow!("the daemon answered hello with {other:?}")),
        Err(e @ herd_protocol::FrameError::Json(_)) => {
            Err(anyhow::Error::new(e).context("the daemon's hello is unreadable"))
        }
        Err(lost) => Ok(Err(lost)),
    }
}

/// Send a request and expect an answer (the daemon is started if needed).
pub fn ask(request: Request) -> anyhow::Result<Response> {
    Ok(self::request(request, true)?.expect("autostart gives a connection"))
}

async fn connect(root: &Path, autostart: bool) -> anyhow::Result<Option<Connection>> {
    let home = match Home::open_existing(root)? {
        Some(h) => h,
        None if !autostart => return Ok(None),
        None => Home::open(root)?,
    };
    let home = &home;
    let path = home.socket();
    let address = home.socket_address();
    match UnixStream::connect(&address).await {
        Ok(s) => return Ok(Some(Connection::new(s))),
        Err(_) if !autostart => return Ok(None),
        Err(_) => {}
    }
    let mut started = match home.running_pid() {
        None => Some(spawn_daemon(home)?),
        Some(_) => None,
    };
    let deadline = Instant::now() + DAEMON_START;
    loop {
        match UnixStream::connect(&address).await {
            Ok(s) => return Ok(Some(Connection::new(s))),
            // (Unless it lost the race to another CLI's daemon, which then runs.)
            Err(_) if daemon_ended(&mut started) && home.running_pid().is_none() => {
                let (_, log_start) = started.take().expect("a daemon was started");
                return Err(anyhow!(
                    "the herd daemon did not start: {}",
                    daemon_said(home, log_start)
                ));
            }
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!(
                    "cannot reach the herd daemon at {}: {e}; see {} for why it did not start",
                    path.display(),
                    home.daemon_log().display()
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Whether the daemon this CLI started has already exited (a bad setting in
/// the environment it inherited, say).
fn daemon_ended(started: &mut Option<(std::process::Child, u64)>) -> bool {
    started
        .as_mut()
        .is_some_and(|(child, _)| matches!(child.try_wait(), Ok(Some(_))))
}

/// What a daemon that ended at once wrote to herd.log (from `from` on).
fn daemon_said(home: &Home, from: u64) -> String {
    let log = std::fs::read(home.daemon_log()).unwrap_or_default();
    let said = String::from_utf8_lossy(log.get(from as usize..).unwrap_or_default());
    match said.trim() {
        "" => format!("it exited; see {}", home.daemon_log().display()),
        said => said.to_string(),
    }
}

/// Start `herd daemon` detached: its own session, no terminal, its output
/// appended to `$HERD_HOME/herd.log`. The child, and where its output starts
/// in the log.
fn spawn_daemon(home: &Home) -> anyhow::Result<(std::process::Child, u64)> {
    let log = home
        .open_daemon_log()
        .with_context(|| format!("cannot open {}", home.daemon_log().display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().context("cannot find the herd binary to start the daemon")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("daemon")
        .env("HERD_HOME", home.root())
        .env_remove("NOTIFY_SOCKET")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our
    // session and terminal, so closing the terminal does not end it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    // Waited for only while this CLI waits for it to listen: when this CLI
    // exits the daemon is reparented.
    let child = cmd.spawn().context("cannot start the herd daemon")?;
    Ok((child, log_start))
}
