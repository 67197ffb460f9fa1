//! The status page (`/`, one self-contained HTML file embedded in the
//! binary), its data (`/api/apps`, the same JSON as `herd list --json`), and
//! the admin actions behind its buttons (`POST /api/apps/NAME/ACTION`), which
//! are refused with 403 unless the daemon runs with `--metrics-admin`.

use std::sync::Arc;

use super::{HttpRequest, HttpResponse, Settings};
use herd_protocol::supervisor::{Command, Ticket};

use crate::handlers::Ctx;

const PAGE: &str = include_str!("status.html");

/// The header a POST must carry: a browser only sends it from a script of
/// the page's own origin (another site's form cannot), so another site
/// cannot drive the buttons.
const ADMIN_HEADER: &str = "x-herd-admin";

pub fn page(settings: &Settings) -> HttpResponse {
    let admin = if settings.admin { "true" } else { "false" };
    let body = PAGE.replace("data-admin=\"false\"", &format!("data-admin=\"{admin}\""));
    HttpResponse::new(200, "text/html; charset=utf-8", body)
}

pub async fn apps(ctx: &Arc<Ctx>) -> HttpResponse {
    match crate::handlers::list(ctx).await {
        herd_protocol::Response::Apps { apps } => HttpResponse::json(200, &apps),
        _ => HttpResponse::error(500, "cannot list the apps"),
    }
}

pub async fn action(ctx: &Arc<Ctx>, request: &HttpRequest, settings: &Settings) -> HttpResponse {
    if !settings.admin {
        return HttpResponse::error(
            403,
            "read-only: start the daemon with `herd daemon --metrics ADDR --metrics-admin` to allow actions",
        );
    }
    if request.header(ADMIN_HEADER).is_none() {
        return HttpResponse::error(403, "send the X-Herd-Admin header (the status page does)");
    }
    let rest = &request.path["/api/apps/".len()..];
    let Some((name, verb)) = rest.rsplit_once('/') else {
        return HttpResponse::error(404, "use POST /api/apps/NAME/{reload,restart,stop}");
    };
    let command = match verb {
        "reload" => Command::Reload { definition: None },
        "restart" => Command::Restart { slot: None },
        "stop" => Command::Stop,
        _ => return HttpResponse::error(404, "the actions are reload, restart and stop"),
    };
    let entry = ctx.registry().by_name(name).cloned();
    let Some(entry) = entry else {
        return HttpResponse::error(404, &format!("no app named '{name}'"));
    };
    let (status, error) = match entry.link.command(command).await {
        Ok(Ticket::Done { message }) => {
            return HttpResponse::json(200, &serde_json::json!({ "ok": true, "message": message }))
        }
        Ok(Ticket::Refused { why }) => (409, why),
        Ok(Ticket::Aborted { why }) => (500, why),
        Err(e) => (503, e.to_string()),
    };
    HttpResponse::json(status, &serde_json::json!({ "ok": false, "error": error }))
}
