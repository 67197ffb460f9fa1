//! `start`: new apps are registered and started; with `update` (a config
//! file started again) an app that exists already is reloaded onto its new
//! definition instead.

use std::sync::Arc;

use herd_protocol::{AppDef, Response};

use super::{failed, usage, Ctx, Entry};
use crate::app::{self, AppCommand};

/// A name `herd list` can show and a selector can name unambiguously.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err(format!(
            "invalid app name '{name}': use 1 to 100 characters"
        ));
    }
    if name == "all" || name.parse::<u32>().is_ok() {
        return Err(format!(
            "invalid app name '{name}': 'all' and numbers name apps by id; choose another with --name"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || "-_.@".contains(c))
    {
        return Err(format!(
            "invalid app name '{name}': use letters, digits, '-', '_', '.' or '@' (it names the log files)"
        ));
    }
    Ok(())
}

pub async fn start(ctx: &Arc<Ctx>, defs: Vec<AppDef>, update: bool) -> Response {
    if defs.is_empty() {
        return usage("nothing to start");
    }
    // Check everything first: a bad request changes nothing.
    for (i, def) in defs.iter().enumerate() {
        if let Err(e) = check_name(&def.spec.name) {
            return usage(e);
        }
        if defs[..i].iter().any(|d| d.spec.name == def.spec.name) {
            return usage(format!(
                "two apps are named '{}': give each its own name",
                def.spec.name
            ));
        }
    }
    // Register the new ones (under one lock, so two starts of one name
    // cannot both win) and find the existing ones.
    let mut new = Vec::new();
    let mut existing = Vec::new();
    {
        let mut registry = ctx.registry();
        for def in &defs {
            if let Some(e) = registry.by_name(&def.spec.name) {
                if !update {
                    return usage(format!(
                        "an app named '{}' exists already (id {}): reload it with `herd reload {}`, \
                         delete it first, or choose another name with --name",
                        e.name, e.id, e.name
                    ));
                }
                existing.push((e.clone(), def.clone()));
            }
        }
        for def in defs {
            if registry.by_name(&def.spec.name).is_some() {
                continue;
            }
            let id = registry.next_id();
            let actor = match app::spawn(id, def.clone(), &ctx.home.log_dir()) {
                Ok(a) => a,
                Err(e) => return failed(e),
            };
            let entry = Entry {
                id,
                name: def.spec.name.clone(),
                app: actor,
            };
            registry.insert(entry.clone());
            new.push(entry);
        }
    }
    let mut errors = Vec::new();
    let mut shown = Vec::new();
    for entry in new {
        match entry.app.ask(AppCommand::Start).await {
            Ok(_) => shown.push(entry),
            Err(e) => {
                // It never ran: forget it, so nothing changed.
                let _ = entry.app.ask(AppCommand::Delete).await;
                ctx.registry().remove(entry.id);
                errors.push(e);
            }
        }
    }
    for (entry, def) in existing {
        match entry
            .app
            .ask(AppCommand::Reload {
                def: Some(Box::new(def)),
            })
            .await
        {
            Ok(_) => shown.push(entry),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return failed(errors.join("\n"));
    }
    let mut apps = Vec::new();
    for e in shown {
        if let Some(info) = e.app.info().await {
            apps.push(info);
        }
    }
    Response::Apps { apps }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names() {
        assert!(check_name("web-1.api").is_ok());
        for bad in ["", "all", "12", "a/b", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
