//! `list`, `show` and the detailed list (pm2's `jlist`, `herd env`): the
//! apps as their supervisors see them now. What they answer is redacted
//! here, at the source, so every printer (the CLI's tables and JSON,
//! `jlist`, the status page, the metrics) shows secret environment values
//! only when the request asked with `show_secrets`.

use std::sync::Arc;

use herd_protocol::{AppDef, Response};

use super::{failed, usage, Ctx};
use crate::link::LinkError;
use crate::views;

/// The apps (also what the status page serves). [`AppInfo`] carries no
/// environment, so there is nothing to hide.
///
/// [`AppInfo`]: herd_protocol::AppInfo
pub async fn list(ctx: &Arc<Ctx>) -> Response {
    let entries = ctx.registry().all();
    let seen = views::gather(entries).await;
    Response::Apps {
        apps: seen.iter().map(|s| s.info(&ctx.home)).collect(),
    }
}

/// The definition as it may be shown: secrets hidden unless asked for.
fn shown(ctx: &Ctx, def: &AppDef, show_secrets: bool) -> AppDef {
    let mut def = def.clone();
    if !show_secrets {
        ctx.secrets.redact_def(&mut def);
    }
    def
}

/// Every app with its definition and counters, in id order.
pub async fn detail(ctx: &Arc<Ctx>, show_secrets: bool) -> Response {
    let entries = ctx.registry().all();
    let seen = views::gather(entries).await;
    let apps = seen
        .iter()
        .map(|s| {
            let def = shown(ctx, &s.entry.def, show_secrets);
            match &s.status {
                Ok(status) => status.app.detail(def),
                Err(_) => herd_protocol::AppDetail {
                    info: s.info(&ctx.home),
                    def,
                    created_at_ms: 0,
                    slots: Vec::new(),
                },
            }
        })
        .collect();
    Response::Details { apps }
}

pub async fn show(ctx: &Arc<Ctx>, selector: &str, show_secrets: bool) -> Response {
    let entry = match ctx.registry().resolve(selector) {
        Ok(mut e) if e.len() == 1 => e.remove(0),
        Ok(_) => return usage("show one app at a time: give its name or id"),
        Err(r) => return r,
    };
    let def = shown(ctx, &entry.def, show_secrets);
    let info = match entry.link.status().await {
        Ok(status) => status.app.info,
        Err(e @ (LinkError::Gone { .. } | LinkError::Incompatible(_))) => {
            return failed(e.to_string())
        }
        Err(e) => {
            crate::say!("app {}: {e}", entry.name);
            views::from_definition(&entry, &ctx.home)
        }
    };
    Response::App {
        app: Box::new(info),
        def: Box::new(def),
    }
}
