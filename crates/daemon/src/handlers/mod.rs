//! Requests turned into work: one module per group of verbs. Each handler
//! resolves the apps a request names in the [`Registry`], asks their
//! supervisors (a command is answered by its own ticket), and builds the
//! [`Response`]. Errors keep their kind: a command an app refuses (no such
//! worker, a count out of range, a stopped app) changed nothing and is a
//! usage mistake; one that began and failed, or did not reach the app's
//! supervisor, is a failure.

mod control;
mod list;
mod persist;
mod start;
pub mod update;

pub use list::list;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use herd_protocol::supervisor::{Command, Ticket};
use herd_protocol::{ErrorKind, Request, Response, SecretNames};
use herd_supervisor::files::AppsDir;

use crate::link::LinkError;
use crate::registry::{Entry, Registry};
use crate::Home;

/// What every handler may use.
pub struct Ctx {
    pub home: Home,
    /// `$HERD_HOME/apps/`, where the apps' files and supervisors' sockets are.
    pub apps: AppsDir,
    /// Which environment values answers hide (the built-in rule plus the
    /// operator's `--secret-names`).
    pub secrets: SecretNames,
    pub registry: Mutex<Registry>,
    pub started: Instant,
    /// Notified when `herd kill` asks the daemon to end.
    pub shutdown: tokio::sync::Notify,
    /// Set by `herd update`: the binary to execute in place once the answer
    /// is sent.
    pub reexec: Mutex<Option<update::NextImage>>,
    /// The control socket's fd (kept open across that exec).
    pub control_fd: std::sync::atomic::AtomicI32,
    /// The held `herd.pid` lock's fd (kept open across that exec too).
    pub lock_fd: std::sync::atomic::AtomicI32,
    /// Accepting is paused for that exec.
    updating: std::sync::atomic::AtomicBool,
    pub updating_changed: tokio::sync::Notify,
}

impl Ctx {
    pub fn new(home: Home, apps: AppsDir, secrets: SecretNames) -> Arc<Ctx> {
        Arc::new(Ctx {
            home,
            apps,
            secrets,
            registry: Mutex::new(Registry::default()),
            started: Instant::now(),
            shutdown: tokio::sync::Notify::new(),
            reexec: Mutex::new(None),
            control_fd: std::sync::atomic::AtomicI32::new(-1),
            lock_fd: std::sync::atomic::AtomicI32::new(-1),
            updating: std::sync::atomic::AtomicBool::new(false),
            updating_changed: tokio::sync::Notify::new(),
        })
    }

    /// Whether `herd update` asked for an exec of the new binary.
    pub fn reexec_asked(&self) -> bool {
        self.reexec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    pub fn reexec_cancel(&self) {
        *self.reexec.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn updating(&self) -> bool {
        self.updating.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_updating(&self, on: bool) {
        self.updating.store(on, std::sync::atomic::Ordering::SeqCst);
        self.updating_changed.notify_waiters();
    }

    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn usage(message: impl Into<String>) -> Response {
    Response::Error {
        kind: ErrorKind::Usage,
        message: message.into(),
    }
}

pub fn failed(message: impl Into<String>) -> Response {
    Response::Error {
        kind: ErrorKind::Failed,
        message: message.into(),
    }
}

/// How one app's part of a request ended, with the kind of its failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(String),
    /// Refused: it does not apply to the app as it is; nothing changed.
    Usage(String),
    Failed(String),
}

impl Outcome {
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done(_))
    }
}

impl From<Result<Ticket, LinkError>> for Outcome {
    fn from(answer: Result<Ticket, LinkError>) -> Outcome {
        match answer {
            Ok(Ticket::Done { message }) => Outcome::Done(message),
            Ok(Ticket::Refused { why }) => Outcome::Usage(why),
            Ok(Ticket::Aborted { why }) => Outcome::Failed(why),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

/// Answer one request.
pub async fn handle(ctx: &Arc<Ctx>, request: Request) -> Response {
    match request {
        Request::Hello { .. } => usage("hello was already said"),
        Request::Ping => Response::Pong {
            pid: std::process::id(),
            uptime_ms: ctx.started.elapsed().as_millis() as u64,
            apps: ctx.registry().len(),
        },
        Request::Start {
            apps,
            update,
            restart,
            stopped,
        } => start::start(ctx, apps, update, restart, &stopped).await,
        Request::Stop { apps } => control::each(ctx, &apps, || Command::Stop).await,
        Request::Restart { apps, slot } => {
            control::each(ctx, &apps, || Command::Restart { slot }).await
        }
        Request::Reload { apps } => {
            control::each(ctx, &apps, || Command::Reload { definition: None }).await
        }
        Request::Delete { apps } => control::delete(ctx, &apps).await,
        Request::Flush { apps } => control::each(ctx, &apps, || Command::Flush).await,
        Request::Scale { app, to } => control::scale(ctx, &app, to).await,
        Request::Send { app, slot, message } => {
            control::each(ctx, &app, || Command::Send {
                slot,
                message: message.clone(),
            })
            .await
        }
        Request::Signal { apps, signal } => {
            control::each(ctx, &apps, || Command::Signal { signal }).await
        }
        // Nothing a list answers is secret (see `list::list`).
        Request::List { show_secrets: _ } => list::list(ctx).await,
        Request::ListDetail { show_secrets } => list::detail(ctx, show_secrets).await,
        Request::Reset { apps } => control::each(ctx, &apps, || Command::Reset).await,
        Request::Show { app, show_secrets } => list::show(ctx, &app, show_secrets).await,
        Request::Save { force } => persist::save(ctx, force).await,
        Request::Resurrect => persist::resurrect(ctx).await,
        Request::UpdateDaemon => update::daemon(ctx).await,
        Request::UpdateApps => update::apps(ctx).await,
        Request::Kill => {
            let deleted = delete_all(ctx).await;
            ctx.shutdown.notify_one();
            Response::Done {
                message: format!("stopped {deleted} app(s); the daemon exits"),
            }
        }
    }
}

/// Every app stopped gracefully (each by its own kill timeout) and its
/// supervisor ended, its files removed: what `herd kill` and the daemon's
/// SIGTERM do (the saved list is what `resurrect` brings back). Returns how
/// many went.
pub async fn delete_all(ctx: &Arc<Ctx>) -> usize {
    let entries = ctx.registry().all();
    let outcomes = control::delete_entries(ctx, &entries).await;
    outcomes.iter().filter(|o| o.is_done()).count()
}

/// Give several apps the same command at once and wait for every ticket,
/// in the apps' order.
async fn ask_all(entries: &[Entry], command: impl Fn() -> Command) -> Vec<Outcome> {
    let tasks: Vec<_> = entries
        .iter()
        .map(|e| {
            let link = e.link.clone();
            let command = command();
            tokio::spawn(async move { Outcome::from(link.command(command).await) })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(
            t.await
                .unwrap_or_else(|e| Outcome::Failed(format!("the command failed: {e}"))),
        );
    }
    out
}

/// One response for the outcomes of several apps: done if all are; else an
/// error that is a failure if any failed, a usage mistake otherwise.
fn combine(outcomes: Vec<Outcome>) -> Response {
    let kind = if outcomes.iter().any(|o| matches!(o, Outcome::Failed(_))) {
        ErrorKind::Failed
    } else {
        ErrorKind::Usage
    };
    let all_done = outcomes.iter().all(Outcome::is_done);
    let lines: Vec<String> = outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Done(m) | Outcome::Usage(m) | Outcome::Failed(m) => m,
        })
        .filter(|m| !m.is_empty())
        .collect();
    if all_done {
        Response::Done {
            message: lines.join("\n"),
        }
    } else {
        Response::Error {
            kind,
            message: lines.join("\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_a_usage_mistake_unless_something_failed() {
        let done = || Outcome::Done("ok".into());
        assert!(matches!(
            combine(vec![done(), done()]),
            Response::Done { message } if message == "ok\nok"
        ));
        assert!(matches!(
            combine(vec![done(), Outcome::Usage("no worker 9".into())]),
            Response::Error { kind: ErrorKind::Usage, message } if message == "ok\nno worker 9"
        ));
        assert!(matches!(
            combine(vec![
                Outcome::Usage("a".into()),
                Outcome::Failed("b".into())
            ]),
            Response::Error {
                kind: ErrorKind::Failed,
                ..
            }
        ));
        let refused = Outcome::from(Ok(Ticket::Refused { why: "x".into() }));
        assert_eq!(refused, Outcome::Usage("x".into()));
        let aborted = Outcome::from(Ok(Ticket::Aborted { why: "y".into() }));
        assert_eq!(aborted, Outcome::Failed("y".into()));
    }
}
