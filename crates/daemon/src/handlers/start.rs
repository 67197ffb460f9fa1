//! `start`: new apps are registered and started; with `update` (a config
//! file started again) an app that exists already is reloaded onto its new
//! definition instead (or, with `restart`, stopped and started on it).

use std::sync::Arc;

use herd_protocol::supervisor::{AppFile, Command, Desired};
use herd_protocol::{AppDef, Response, MAX_DEFINITION};

use super::{failed, usage, Ctx, Outcome};
use crate::link::Link;
use crate::registry::Entry;
use crate::views;

/// A name `herd list` can show and a selector can name unambiguously
/// (pm2's names, spaces included; log files get a safe form of it).
fn check_name(name: &str) -> Result<(), String> {
    herd_engine::config::check_app_name(name).map_err(|e| e.0)
}

/// What the daemon refuses in a definition beyond its name: what it could
/// not carry out, or not show back.
fn check_def(def: &AppDef) -> Result<(), String> {
    let name = &def.spec.name;
    // The CLI checks this too; a client that writes its own requests may not.
    let max = herd_engine::config::MAX_INSTANCES;
    if !(1..=max).contains(&def.spec.instances) {
        return Err(format!(
            "app '{name}': {} workers: use 1 to {max}",
            def.spec.instances
        ));
    }
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
        for def in &defs {
            if registry.by_name(&def.spec.name).is_some() {
                continue;
            }
            // An id whose file is still there (an app being deleted) is skipped.
            let id = loop {
                let id = registry.next_id();
                if !ctx.apps.app(id).exists() {
                    break id;
                }
            };
            let name = def.spec.name.clone();
            let entry = Entry {
                id,
                name: name.clone(),
                def: Arc::new(def.clone()),
                link: Link::new(id, &name, ctx.apps.app(id)),
            };
            registry.insert(entry.clone());
            new.push(entry);
        }
    }
    // Every new app's file and supervisor first (the supervisor opens the
    // app's log files): if one cannot be set up, none stays.
    let set_up = join(new.iter().map(|e| set_up(e.clone()))).await;
    if let Some(e) = set_up.iter().find_map(|r| r.as_ref().err()) {
        let e = e.clone();
        undo(ctx, &new, &set_up).await;
        return failed(format!("{e}; nothing was started"));
    }
    for entry in &new {
        entry.link.watch();
    }
    let mut errors = Vec::new();
    let mut shown = Vec::new();
    let starting: Vec<Entry> = new
        .iter()
        .filter(|e| !stopped.contains(&e.name))
        .cloned()
        .collect();
    shown.extend(new.iter().filter(|e| stopped.contains(&e.name)).cloned());
    let started = join(starting.iter().map(|e| {
        let link = e.link.clone();
        async move { Outcome::from(link.command(Command::Start).await) }
    }))
    .await;
    for (entry, outcome) in starting.into_iter().zip(started) {
        if outcome.is_done() {
            shown.push(entry);
        } else {
            // It never ran: forget it, so nothing changed.
            let _ = entry.link.delete().await;
            ctx.registry().remove(entry.id);
            errors.push(outcome);
        }
    }
    for (entry, def) in existing {
        let command = if restart {
            Command::RestartWith {
                definition: Box::new(def.clone()),
            }
        } else {
            Command::Reload {
                definition: Some(Box::new(def.clone())),
            }
        };
        let outcome = Outcome::from(entry.link.command(command).await);
        if outcome.is_done() {
            ctx.registry().set_def(entry.id, def);
            shown.push(entry);
        } else {
            errors.push(outcome);
        }
    }
    if !errors.is_empty() {
        return super::combine(errors);
    }
    // In the order they were given.
    shown.sort_by_key(|e| defs.iter().position(|d| d.spec.name == e.name));
    let seen = views::gather(shown).await;
    Response::Apps {
        apps: seen.iter().map(|s| s.info(&ctx.home)).collect(),
    }
}

/// Write the new app's file (wished stopped: it is started by a command,
/// whose ticket says whether it could be) and start its supervisor.
async fn set_up(entry: Entry) -> Result<(), String> {
    let files = entry.link.files().clone();
    let file = AppFile::new(entry.id, Desired::Stopped, (*entry.def).clone());
    let written = tokio::task::spawn_blocking(move || files.write_app(&file)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(format!(
                "{}: cannot write {}: {e}",
                entry.name,
                entry.link.files().app_file().display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", entry.name)),
    }
    entry
        .link
        .start_supervisor()
        .await
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", entry.name))
}

/// Take back the new apps of a start that failed: the supervisors that
/// started are told to delete their apps; the other files are removed.
async fn undo(ctx: &Arc<Ctx>, new: &[Entry], set_up: &[Result<(), String>]) {
    for (entry, result) in new.iter().zip(set_up) {
        if result.is_ok() {
            let _ = entry.link.delete().await;
        } else {
            entry.link.files().remove_app();
        }
        ctx.registry().remove(entry.id);
    }
}

/// Run these futures at once (each a task of its own); their results in order.
async fn join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("a start task does not panic"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_memory_limit_and_a_definition_too_big_to_show_are_refused() {
        use herd_engine::config::AppSpec;
        let mut def = AppDef {
            max_memory_restart: Some(0),
            ..AppDef::from(AppSpec::new("web", "/bin/sleep"))
        };
        let err = check_def(&def).unwrap_err();
        assert!(
            err.contains("0 is no limit") && err.contains("200M"),
            "{err}"
        );
        def.max_memory_restart = Some(200 << 20);
        check_def(&def).unwrap();
        def.spec.env = vec![("BIG".into(), "x".repeat(MAX_DEFINITION))].into();
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
