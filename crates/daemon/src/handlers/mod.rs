//! Requests turned into work: one module per group of verbs. Each handler
//! resolves the apps a request names in the [`Registry`], asks their actors,
//! and builds the [`Response`].

mod control;
mod list;
mod persist;
mod start;

pub use list::list;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use herd_protocol::{ErrorKind, Request, Response, SecretNames};

use crate::app::{AppCommand, AppRef, Reply};
use crate::Home;

/// What every handler may use.
pub struct Ctx {
    pub home: Home,
    /// Which environment values answers hide (the built-in rule plus the
    /// operator's `--secret-names`).
    pub secrets: SecretNames,
    pub registry: Mutex<Registry>,
    pub started: Instant,
    /// Notified when `herd kill` asks the daemon to end.
    pub shutdown: tokio::sync::Notify,
}

impl Ctx {
    pub fn new(home: Home, secrets: SecretNames) -> Arc<Ctx> {
        Arc::new(Ctx {
            home,
            secrets,
            registry: Mutex::new(Registry::default()),
            started: Instant::now(),
            shutdown: tokio::sync::Notify::new(),
        })
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The apps the daemon knows, by id (ids are never reused while it runs).
#[derive(Default)]
pub struct Registry {
    apps: BTreeMap<u32, Entry>,
    next_id: u32,
}

/// One known app.
#[derive(Clone)]
pub struct Entry {
    pub id: u32,
    pub name: String,
    /// pm2's namespace (`None`: `default`), a selector for all its apps.
    pub namespace: Option<String>,
    pub app: AppRef,
}

impl Registry {
    /// The apps `selector` names: `all`, a numeric id, a name, or (as in
    /// pm2, when no app has that name) a namespace.
    pub fn resolve(&self, selector: &str) -> Result<Vec<Entry>, Response> {
        if selector == "all" {
            return Ok(self.apps.values().cloned().collect());
        }
        let found = match selector.parse::<u32>() {
            Ok(id) => self.apps.get(&id),
            Err(_) => self.apps.values().find(|e| e.name == selector),
        };
        if found.is_none() {
            let spaced: Vec<Entry> = self
                .apps
                .values()
                .filter(|e| e.namespace.as_deref() == Some(selector))
                .cloned()
                .collect();
            if !spaced.is_empty() {
                return Ok(spaced);
            }
        }
        found.map(|e| vec![e.clone()]).ok_or_else(|| {
            usage(format!(
                "no app named '{selector}': `herd list` shows the apps and their ids"
            ))
        })
    }

    pub fn by_name(&self, name: &str) -> Option<&Entry> {
        self.apps.values().find(|e| e.name == name)
    }

    pub fn all(&self) -> Vec<Entry> {
        self.apps.values().cloned().collect()
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn insert(&mut self, entry: Entry) {
        self.apps.insert(entry.id, entry);
    }

    fn remove(&mut self, id: u32) {
        self.apps.remove(&id);
    }

    /// An app's namespace changed (it took a new definition).
    fn set_namespace(&mut self, id: u32, namespace: Option<String>) {
        if let Some(e) = self.apps.get_mut(&id) {
            e.namespace = namespace;
        }
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

/// Answer one request.
pub async fn handle(ctx: &Arc<Ctx>, request: Request) -> Response {
    match request {
        Request::Hello { .. } => usage("hello was already said"),
        Request::Ping => Response::Pong {
            pid: std::process::id(),
            uptime_ms: ctx.started.elapsed().as_millis() as u64,
            apps: ctx.registry().all().len(),
        },
        Request::Start {
            apps,
            update,
            restart,
            stopped,
        } => start::start(ctx, apps, update, restart, &stopped).await,
        Request::Stop { apps } => control::each(ctx, &apps, || AppCommand::Stop).await,
        Request::Restart { apps, worker } => {
            control::each(ctx, &apps, || AppCommand::Restart { worker }).await
        }
        Request::Reload { apps } => {
            control::each(ctx, &apps, || AppCommand::Reload { def: None }).await
        }
        Request::Delete { apps } => control::delete(ctx, &apps).await,
        Request::Flush { apps } => control::each(ctx, &apps, || AppCommand::Flush).await,
        Request::Scale { app, to } => control::scale(ctx, &app, to).await,
        Request::Send {
            app,
            worker,
            message,
        } => {
            control::each(ctx, &app, || AppCommand::Send {
                worker,
                message: message.clone(),
            })
            .await
        }
        Request::Signal { apps, signal } => control::signal(ctx, &apps, &signal).await,
        // Nothing a list answers is secret (see `list::list`).
        Request::List { show_secrets: _ } => list::list(ctx).await,
        Request::ListDetail { show_secrets } => list::detail(ctx, show_secrets).await,
        Request::Reset { apps } => control::each(ctx, &apps, || AppCommand::Reset).await,
        Request::Show { app, show_secrets } => list::show(ctx, &app, show_secrets).await,
        Request::Save { force } => persist::save(ctx, force).await,
        Request::Resurrect => persist::resurrect(ctx).await,
        Request::Kill => {
            let stopped = stop_all(ctx).await;
            ctx.shutdown.notify_one();
            Response::Done {
                message: format!("stopped {stopped} app(s); the daemon exits"),
            }
        }
    }
}

/// Stop every running app gracefully (each by its own kill timeout); returns how many.
pub async fn stop_all(ctx: &Arc<Ctx>) -> usize {
    let entries = ctx.registry().all();
    let results = ask_all(&entries, || AppCommand::Stop).await;
    results.iter().filter(|r| r.is_ok()).count()
}

/// Ask several apps the same command at once and wait for every answer,
/// in the apps' order.
async fn ask_all(entries: &[Entry], command: impl Fn() -> AppCommand) -> Vec<Reply> {
    let tasks: Vec<_> = entries
        .iter()
        .map(|e| {
            let app = e.app.clone();
            let command = command();
            tokio::spawn(async move { app.ask(command).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(
            t.await
                .unwrap_or_else(|e| Err(format!("the command failed: {e}"))),
        );
    }
    out
}

/// One response for the replies of several apps.
fn combine(replies: Vec<Reply>) -> Response {
    let ok: Vec<String> = replies
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|m| !m.is_empty())
        .cloned()
        .collect();
    let errors: Vec<String> = replies.into_iter().filter_map(|r| r.err()).collect();
    if errors.is_empty() {
        Response::Done {
            message: ok.join("\n"),
        }
    } else {
        let mut lines = ok;
        lines.extend(errors);
        failed(lines.join("\n"))
    }
}
