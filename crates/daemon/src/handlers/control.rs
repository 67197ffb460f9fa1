//! `stop`, `restart`, `reload`, `delete`, `flush`, `scale`, `send`, `signal`:
//! one command to each app a selector names.

use std::sync::Arc;

use herd_protocol::{Response, ScaleTo};

use super::{ask_all, combine, usage, Ctx};
use crate::app::AppCommand;

/// The same command to every app `selector` names.
pub async fn each(ctx: &Arc<Ctx>, selector: &str, command: impl Fn() -> AppCommand) -> Response {
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
    let replies = ask_all(&entries, || AppCommand::Delete).await;
    let mut registry = ctx.registry();
    for (entry, reply) in entries.iter().zip(&replies) {
        if reply.is_ok() {
            registry.remove(entry.id);
        }
    }
    drop(registry);
    combine(replies)
}

pub async fn scale(ctx: &Arc<Ctx>, selector: &str, to: ScaleTo) -> Response {
    if selector == "all" {
        return usage("scale one app at a time: give its name or id");
    }
    let entries = match ctx.registry().resolve(selector) {
        Ok(e) => e,
        Err(r) => return r,
    };
    // A count out of range is the command's mistake (exit 2), said before
    // any app is asked.
    for entry in &entries {
        let Some(def) = entry.app.def().await else {
            continue;
        };
        let n = match to {
            ScaleTo::Exactly(n) => i64::try_from(n).unwrap_or(i64::MAX),
            ScaleTo::By(d) => (def.spec.instances as i64).saturating_add(d),
        };
        if !(1..=4096).contains(&n) {
            return usage(format!(
                "cannot scale {} to {n} workers: use 1 to 4096 (stop it to run none)",
                entry.name
            ));
        }
    }
    each(ctx, selector, || AppCommand::Scale(to)).await
}

/// `APP:N` for an app without worker N is the command's mistake (exit 2),
/// said before any app is asked.
pub async fn check_worker(
    ctx: &Arc<Ctx>,
    selector: &str,
    worker: Option<usize>,
) -> Option<Response> {
    let worker = worker?;
    let entries = ctx.registry().resolve(selector).ok()?;
    for entry in &entries {
        let instances = entry.app.def().await?.spec.instances;
        if worker >= instances {
            return Some(usage(format!(
                "{} has no worker {worker}: its workers are 0 to {}",
                entry.name,
                instances.saturating_sub(1)
            )));
        }
    }
    None
}

pub async fn signal(ctx: &Arc<Ctx>, selector: &str, signal: &str) -> Response {
    // Any signal may be sent here, SIGKILL included (unlike the stop signal).
    let upper = signal.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let sig = match signal
        .parse::<i32>()
        .ok()
        .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
        .or_else(|| name.parse().ok())
    {
        Some(s) => s,
        None => {
            return usage(format!(
            "unknown signal '{signal}': use a name such as SIGUSR2, SIGHUP, SIGTERM, or a number"
        ))
        }
    };
    each(ctx, selector, || AppCommand::Signal(sig)).await
}
