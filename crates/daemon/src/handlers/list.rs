//! `list`, `show` and the detailed list (pm2's `jlist`, `herd env`): the
//! apps as they are now. What they answer is redacted here, at the source,
//! so every printer (the CLI's tables and JSON, `jlist`, the status page,
//! the metrics) shows secret environment values only when the request asked
//! with `show_secrets`.

use std::sync::Arc;

use herd_protocol::Response;

use super::{failed, Ctx};

/// The apps (also what the status page serves). [`AppInfo`] carries no
/// environment, so there is nothing to hide; a list that grows to carry
/// definitions takes them from [`crate::app::AppRef::def`] (hidden), or
/// `def_with_secrets` when the request's `show_secrets` is set.
///
/// [`AppInfo`]: herd_protocol::AppInfo
pub async fn list(ctx: &Arc<Ctx>) -> Response {
    let entries = ctx.registry().all();
    let mut apps = Vec::with_capacity(entries.len());
    for e in entries {
        // An app deleted meanwhile is simply not listed.
        if let Some(info) = e.app.info().await {
            apps.push(info);
        }
    }
    Response::Apps { apps }
}

/// Every app with its definition and counters, in id order.
pub async fn detail(ctx: &Arc<Ctx>, show_secrets: bool) -> Response {
    let entries = ctx.registry().all();
    let mut apps = Vec::with_capacity(entries.len());
    for e in entries {
        if let Some(d) = e.app.detail(show_secrets).await {
            apps.push(d);
        }
    }
    Response::Details { apps }
}

pub async fn show(ctx: &Arc<Ctx>, selector: &str, show_secrets: bool) -> Response {
    let entry = match ctx.registry().resolve(selector) {
        Ok(mut e) if e.len() == 1 => e.remove(0),
        Ok(_) => return super::usage("show one app at a time: give its name or id"),
        Err(r) => return r,
    };
    let def = if show_secrets {
        entry.app.def_with_secrets().await
    } else {
        entry.app.def().await
    };
    match (entry.app.info().await, def) {
        (Some(app), Some(def)) => Response::App {
            app: Box::new(app),
            def: Box::new(def),
        },
        _ => failed(format!("{} was deleted meanwhile", entry.name)),
    }
}
