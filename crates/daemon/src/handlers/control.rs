//! `stop`, `restart`, `reload`, `delete`, `flush`, `scale`, `send`,
//! `signal`, `reset`: one command to each app a selector names, each
//! answered by its own ticket from the app's supervisor.

use std::sync::Arc;

use herd_protocol::supervisor::Command;
use herd_protocol::{Response, ScaleTo};

use super::{ask_all, combine, usage, Ctx, Outcome};
use crate::registry::Entry;

/// The same command to every app `selector` names.
pub async fn each(ctx: &Arc<Ctx>, selector: &str, command: impl Fn() -> Command) -> Response {
    let entries = match ctx.registry().resolve(selector) {
        Ok(e) => e,
        Err(r) => return r,
    };
    if entries.is_empty() {
        // `all` with no apps: nothing to do (scripts may run `herd delete all`).
        return Response::Done {
            message: "no apps".into(),
        };
    }
    combine(ask_all(&entries, command).await)
}

pub async fn delete(ctx: &Arc<Ctx>, selector: &str) -> Response {
    let entries = match ctx.registry().resolve(selector) {
        Ok(e) => e,
        Err(r) => return r,
    };
    combine(delete_entries(ctx, &entries).await)
}

/// Delete these apps at once; the deleted ones leave the registry.
pub async fn delete_entries(ctx: &Arc<Ctx>, entries: &[Entry]) -> Vec<Outcome> {
    let tasks: Vec<_> = entries
        .iter()
        .map(|e| {
            let link = e.link.clone();
            tokio::spawn(async move { Outcome::from(link.delete().await) })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for (entry, task) in entries.iter().zip(tasks) {
        let outcome = task
            .await
            .unwrap_or_else(|e| Outcome::Failed(format!("the delete failed: {e}")));
        if outcome.is_done() {
            ctx.registry().remove(entry.id);
        }
        outcomes.push(outcome);
    }
    outcomes
}

pub async fn scale(ctx: &Arc<Ctx>, selector: &str, to: ScaleTo) -> Response {
    if selector == "all" {
        return usage("scale one app at a time: give its name or id");
    }
    let entries = match ctx.registry().resolve(selector) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let outcomes = ask_all(&entries, || Command::Scale { to }).await;
    // The supervisor now wants another count: take its definition.
    for (entry, outcome) in entries.iter().zip(&outcomes) {
        if outcome.is_done() {
            refresh_def(ctx, entry).await;
        }
    }
    combine(outcomes)
}

/// Take the app's definition as its supervisor keeps it.
pub async fn refresh_def(ctx: &Arc<Ctx>, entry: &Entry) {
    match entry.link.definition().await {
        Ok(file) => ctx.registry().set_def(entry.id, file.definition),
        Err(e) => crate::say!("app {}: cannot read its definition back: {e}", entry.name),
    }
}
