//! `save` and `resurrect`: the app list on disk.

use std::sync::Arc;

use herd_protocol::{AppDef, Response};

use super::{failed, usage, Ctx};
use crate::dump;

pub async fn save(ctx: &Arc<Ctx>, force: bool) -> Response {
    let entries = ctx.registry().all();
    let mut defs: Vec<AppDef> = Vec::with_capacity(entries.len());
    for e in entries {
        if let Some(def) = e.app.def().await {
            defs.push(def);
        }
    }
    let path = ctx.home.dump();
    if defs.is_empty() && !force && path.exists() {
        return usage(format!(
            "no apps run, and saving would replace the list saved in {} with an empty one; \
             use `herd save --force` to do that",
            path.display()
        ));
    }
    match dump::save(&path, &defs) {
        Ok(()) => Response::Done {
            message: format!("saved {} app(s) to {}", defs.len(), path.display()),
        },
        Err(e) => failed(e.to_string()),
    }
}

pub async fn resurrect(ctx: &Arc<Ctx>) -> Response {
    let defs = match dump::load(&ctx.home.dump()) {
        Ok(d) => d,
        Err(e) => return failed(e.to_string()),
    };
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
