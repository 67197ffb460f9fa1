//! `start`: new apps are registered and started; with `update` (a config
//! file started again) an app that exists already is reloaded onto its new
//! definition instead (or, with `restart`, stopped and started on it).

use std::sync::Arc;

use herd_protocol::{AppDef, Response, MAX_DEFINITION};

use super::{failed, usage, Ctx, Entry};
use crate::app::{self, AppCommand};

/// A name `herd list` can show and a selector can name unambiguously
/// (pm2's names, spaces included; log files get a safe form of it).
fn check_name(name: &str) -> Result<(), String> {
    herd_engine::config::check_app_name(name).map_err(|e| e.0)
}

/// What the daemon refuses in a definition beyond its name: what it could
/// not carry out, or not show back.
fn check_def(def: &AppDef) -> Result<(), String> {
    let name = &def.spec.name;
    if def.max_memory_restart == Some(0) {
        // pm2 takes 0 and then finds every worker over it at each check,
        // reloading the app forever; no one means that.
        return Err(format!(
            "app '{name}': --max-memory-restart 0 is no limit (every worker is over it, and would \
             be replaced at every check): give a size such as 200M, or leave it out for none"
        ));
    }
    let size = serde_json::to_vec(def).map_or(usize::MAX, |v| v.len());
    if size > MAX_DEFINITION {
        let env: usize = def
            .spec
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum();
        return Err(format!(
            "app '{name}': its definition is {} KiB, over the {} KiB herd can show back \
             (`herd show`); {} KiB of it is its environment: start it with only the variables \
             it needs (the CLI passes its whole environment)",
            size >> 10,
            MAX_DEFINITION >> 10,
            env >> 10
        ));
    }
    Ok(())
}

pub async fn start(
    ctx: &Arc<Ctx>,
    defs: Vec<AppDef>,
    update: bool,
    restart: bool,
    stopped: &[String],
) -> Response {
    if defs.is_empty() {
        return usage("nothing to start");
    }
    // Check everything first: a bad request changes nothing.
    for (i, def) in defs.iter().enumerate() {
        if let Err(e) = check_name(&def.spec.name).and_then(|_| check_def(def)) {
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
                         start this definition over it with `herd start -f`, delete it first, \
                         or choose another name with --name",
                        e.name, e.id, e.name
                    ));
                }
                existing.push((e.clone(), def.clone()));
            }
        }
        // Every new app's actor first (it opens the app's log files): if
        // one cannot be set up, none is registered.
        for def in &defs {
            if registry.by_name(&def.spec.name).is_some() {
                continue;
            }
            let id = registry.next_id();
            match app::spawn(id, def.clone(), &ctx.home, ctx.secrets.clone()) {
                Ok(actor) => new.push(Entry {
                    id,
                    name: def.spec.name.clone(),
                    namespace: def.namespace.clone(),
                    app: actor,
                }),
                // The actors spawned so far end when `new` is dropped.
                Err(e) => return failed(format!("{}: {e}; nothing was started", def.spec.name)),
            }
        }
        for entry in &new {
            registry.insert(entry.clone());
        }
    }
    let mut errors = Vec::new();
    let mut shown = Vec::new();
    for entry in new {
        if stopped.contains(&entry.name) {
            shown.push(entry);
            continue;
        }
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
        let namespace = def.namespace.clone();
        let command = if restart {
            AppCommand::RestartWith(Box::new(def))
        } else {
            AppCommand::Reload {
                def: Some(Box::new(def)),
            }
        };
        match entry.app.ask(command).await {
            Ok(_) => {
                ctx.registry().set_namespace(entry.id, namespace);
                shown.push(entry)
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return failed(errors.join("\n"));
    }
    // In the order they were given.
    shown.sort_by_key(|e| defs.iter().position(|d| d.spec.name == e.name));
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
    use super::*;

    #[test]
    fn a_zero_memory_limit_and_a_definition_too_big_to_show_are_refused() {
        use herd_engine::config::AppSpec;
        let mut def = AppDef {
            spec: AppSpec::new("web", "/bin/sleep"),
            logs: Default::default(),
            max_memory_restart: Some(0),
            instances_max: false,
            pm2: Default::default(),
            script: None,
            namespace: None,
        };
        let err = check_def(&def).unwrap_err();
        assert!(
            err.contains("0 is no limit") && err.contains("200M"),
            "{err}"
        );
        def.max_memory_restart = Some(200 << 20);
        check_def(&def).unwrap();
        def.spec.env = vec![("BIG".into(), "x".repeat(MAX_DEFINITION))];
        let err = check_def(&def).unwrap_err();
        assert!(
            err.contains("herd show") && err.contains("environment"),
            "{err}"
        );
    }

    #[test]
    fn names() {
        // pm2 takes any name; log files get a safe form of it.
        for good in ["web-1.api", "a/b", "a b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "all", "12", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
