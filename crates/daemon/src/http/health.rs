//! `/healthz` and `/readyz`: probes for Kubernetes and load balancers.
//!
//! `/healthz` answers 200 while the daemon serves at all. `/readyz?app=NAME`
//! answers 200 only when that app has as many ready workers as it wants, and
//! 503 with the reason in JSON otherwise (404 for an unknown app); without
//! `app`, every app must be ready.

use std::sync::Arc;

use serde_json::json;

use super::HttpResponse;
use crate::handlers::Ctx;
use crate::views;

pub fn healthz(ctx: &Arc<Ctx>) -> HttpResponse {
    HttpResponse::json(
        200,
        &json!({
            "status": "ok",
            "pid": std::process::id(),
            "uptime_ms": ctx.started.elapsed().as_millis() as u64,
        }),
    )
}

pub async fn readyz(ctx: &Arc<Ctx>, app: Option<&str>) -> HttpResponse {
    let entries = {
        let registry = ctx.registry();
        match app {
            Some(name) => match registry.by_name(name) {
                Some(e) => vec![e.clone()],
                None => {
                    return HttpResponse::json(
                        404,
                        &json!({
                            "ready": false,
                            "app": name,
                            "reason": format!("no app named '{name}' (see `herd list`)"),
                        }),
                    )
                }
            },
            None => registry.all(),
        }
    };
    let mut apps = Vec::with_capacity(entries.len());
    let mut all_ready = true;
    for seen in views::gather(entries).await {
        let info = seen.info(&ctx.home);
        let reason = info.not_ready();
        all_ready &= reason.is_none();
        apps.push(json!({
            "app": info.name,
            "ready": reason.is_none(),
            "status": info.state,
            "ready_workers": info.online,
            "wanted_workers": info.instances,
            "reason": reason,
        }));
    }
    let status = if all_ready { 200 } else { 503 };
    match (app, apps.len()) {
        (Some(_), 1) => HttpResponse::json(status, &apps[0]),
        _ => HttpResponse::json(status, &json!({ "ready": all_ready, "apps": apps })),
    }
}
