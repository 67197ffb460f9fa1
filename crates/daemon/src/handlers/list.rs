//! `list`, `show` and the detailed list (pm2's `jlist`, `herd env`): the
//! apps as they are now.

use std::sync::Arc;

use herd_protocol::Response;

use super::{failed, Ctx};

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
pub async fn detail(ctx: &Arc<Ctx>) -> Response {
    let entries = ctx.registry().all();
    let mut apps = Vec::with_capacity(entries.len());
    for e in entries {
        if let Some(d) = e.app.detail().await {
            apps.push(d);
        }
    }
    Response::Details { apps }
}

pub async fn show(ctx: &Arc<Ctx>, selector: &str) -> Response {
    let entry = match ctx.registry().resolve(selector) {
        Ok(mut e) if e.len() == 1 => e.remove(0),
        Ok(_) => return super::usage("show one app at a time: give its name or id"),
        Err(r) => return r,
    };
    match (entry.app.info().await, entry.app.def().await) {
        (Some(app), Some(def)) => Response::App {
            app: Box::new(app),
            def: Box::new(def),
        },
        _ => failed(format!("{} was deleted meanwhile", entry.name)),
    }
}
