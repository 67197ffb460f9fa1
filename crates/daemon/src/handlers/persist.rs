//! `save` and `resurrect`: the app list on disk. `save` takes each app's
//! definition from its file in `apps/` (its supervisor keeps it current).

use std::sync::Arc;

use herd_protocol::{AppDef, Response};

use super::{failed, usage, Ctx};
use crate::dump;

pub async fn save(ctx: &Arc<Ctx>, force: bool) -> Response {
    // Saved whole: resurrect needs the secrets (the file is owner-only).
    // Each app as its file says (what its supervisor runs, and what any
    // next one will): the registry's copy misses a change whose answer was
    // lost with a supervisor that died right after (or during) it.
    let entries = ctx.registry().all();
    let defs: Vec<AppDef> = entries
        .into_iter()
        .map(|e| match e.link.files().read_app() {
            Ok(file) if file.definition != *e.def => {
                ctx.registry().set_def(e.id, file.definition.clone());
                file.definition
            }
            _ => (*e.def).clone(),
        })
        .collect();
    let path = ctx.home.dump();
    if defs.is_empty() && !force && dump::exists(&ctx.home) {
        return usage(format!(
            "no apps run, and saving would replace the list saved in {} with an empty one; \
             use `herd save --force` to do that",
            path.display()
        ));
    }
    match dump::save(&ctx.home, &defs) {
        Ok(()) => Response::Done {
            message: format!("saved {} app(s) to {}", defs.len(), path.display()),
        },
        Err(e) => failed(e.to_string()),
    }
}

pub async fn resurrect(ctx: &Arc<Ctx>) -> Response {
    let mut defs = match dump::load(&ctx.home) {
        Ok(d) => d,
        Err(e) => return failed(e.to_string()),
    };
    for def in &mut defs {
        // Saved by a herd that took 0 (pm2 does, and then replaces the
        // worker at every check): now refused at start; resurrected as off.
        if def.max_memory_restart == Some(0) {
            crate::say!(
                "app {}: saved with --max-memory-restart 0, which is no limit; resurrected without one",
                def.spec.name
            );
            def.max_memory_restart = None;
        }
    }
    let fresh: Vec<AppDef> = {
        let registry = ctx.registry();
        defs.into_iter()
            .filter(|d| registry.by_name(&d.spec.name).is_none())
            .collect()
    };
    if fresh.is_empty() {
        return Response::Done {
            message: "every saved app is already here".into(),
        };
    }
    super::start::start(ctx, fresh, false, false, &[]).await
}
