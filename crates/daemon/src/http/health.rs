//! `/healthz` and `/readyz`: probes for Kubernetes and load balancers.
//!
//! `/healthz` answers 200 while the daemon serves at all. `/readyz?app=NAME`
//! answers 200 only when that app has as many ready workers as it wants, and
//! 503 with the reason in JSON otherwise (404 for an unknown app); without
//! `app`, every app must be ready.

use std::sync::Arc;

use herd_protocol::AppInfo;
use serde_json::json;

use super::HttpResponse;
use crate::handlers::Ctx;

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
        let registry = ctx.registry.lock().unwrap_or_else(|e| e.into_inner());
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
    for e in entries {
        let Some(info) = e.app.info().await else {
            continue; // deleted meanwhile
        };
        let (ready, reason) = readiness(&info);
        all_ready &= ready;
        apps.push(json!({
            "app": info.name,
            "ready": ready,
            "status": info.status,
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

/// Whether an app has all the workers it wants ready, and if not, why.
pub fn readiness(info: &AppInfo) -> (bool, Option<String>) {
    if matches!(info.status.as_str(), "stopped" | "errored" | "stopping") {
        return (false, Some(format!("the app is {}", info.status)));
    }
    if info.instances > 0 && info.online >= info.instances {
        return (true, None);
    }
    let mut not_ready: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    for w in &info.workers {
        if seen.contains(&w.id) {
            continue; // a replacement or a draining worker of the same slot
        }
        seen.push(w.id);
        if w.status != "online" {
            not_ready.push(format!("worker {} is {}", w.id, w.status));
        }
    }
    (
        false,
        Some(format!(
            "{} of {} workers ready; {}",
            info.online,
            info.instances,
            not_ready.join(", ")
        )),
    )
}
