//! Waiting for apps to come up: after `start`, `restart`, `resurrect` and
//! `import`, the CLI asks the daemon until each app is online, errored or
//! stopped, or until its `listen_timeout` (or `ready_delay`) has passed, then
//! prints the table with the real pids and memory — never a first table of
//! "launching 0/2, 0b". An app that ended errored fails the command (exit 1);
//! one still launching at its deadline is named in a warning.

use std::time::{Duration, Instant};

use herd_protocol::{AppDef, AppDetail, AppInfo, AppState, Request, Response};

use super::{client, list};

/// How often each app is asked about while waiting.
const POLL: Duration = Duration::from_millis(10);
/// Time on top of an app's own deadline: spawning, the first sample.
const GRACE: Duration = Duration::from_millis(500);

/// Every app with its definition, in id order.
pub fn details(show_secrets: bool) -> anyhow::Result<Vec<AppDetail>> {
    match client::ask(Request::ListDetail { show_secrets })? {
        Response::Details { apps } => Ok(apps),
        other => anyhow::bail!("the daemon answered the detailed list with {other:?}"),
    }
}

/// The names of the apps `selector` names (`all`, an id, a name or a
/// namespace), as the daemon resolves it; empty when it names none (the
/// daemon then says so).
pub fn names_of(selector: &str) -> anyhow::Result<Vec<String>> {
    Ok(select(&details(false)?, selector)
        .into_iter()
        .map(|d| d.info.name.clone())
        .collect())
}

/// The apps of `apps` that `selector` names, as the daemon's registry
/// resolves it: `all`, an id, a name, else a namespace.
pub fn select<'a>(apps: &'a [AppDetail], selector: &str) -> Vec<&'a AppDetail> {
    if selector == "all" {
        return apps.iter().collect();
    }
    let one = match selector.parse::<u32>() {
        Ok(id) => apps.iter().find(|a| a.info.id == id),
        Err(_) => apps.iter().find(|a| a.info.name == selector),
    };
    match one {
        Some(a) => vec![a],
        None => apps
            .iter()
            .filter(|a| a.def.namespace.as_deref() == Some(selector))
            .collect(),
    }
}

/// How long an app of this definition may take to come up.
fn deadline(def: &AppDef) -> Duration {
    let ready = &def.spec.ready;
    ready.listen_timeout.max(ready.ready_delay) + GRACE
}

/// Is the app done coming up, one way or the other?
fn settled(info: &AppInfo) -> bool {
    matches!(
        info.state,
        AppState::Online | AppState::Errored | AppState::Stopped
    )
}

/// Wait for the apps named `names`; their final state and how long each
/// could take, in the daemon's order (an app deleted meanwhile is left out).
/// Each app is asked alone (`show`: its own supervisor's status, not every
/// app's), so the wait can look often without loading the daemon.
pub fn wait(names: &[String]) -> anyhow::Result<Vec<(AppInfo, Duration)>> {
    let started = Instant::now();
    let mut waiting: Vec<(String, Option<Duration>)> =
        names.iter().map(|n| (n.clone(), None)).collect();
    let mut done: Vec<(AppInfo, Duration)> = Vec::new();
    loop {
        let mut still = Vec::new();
        for (name, deadline) in waiting {
            // (An app deleted meanwhile is not waited for.)
            let Ok(Response::App { app, def }) = client::ask(Request::Show {
                app: name.clone(),
                show_secrets: false,
            }) else {
                continue;
            };
            // Its deadline from its definition, as first seen.
            let deadline = deadline.unwrap_or_else(|| self::deadline(&def));
            if settled(&app) || started.elapsed() >= deadline {
                done.push((*app, deadline));
            } else {
                still.push((name, Some(deadline)));
            }
        }
        if still.is_empty() {
            done.sort_by_key(|(a, _)| a.id);
            return Ok(done);
        }
        waiting = still;
        std::thread::sleep(POLL);
    }
}

/// Wait for `names`, then print their table (or, with `all`, every app's);
/// exit status 1 if one of them ended errored.
pub fn wait_and_print(names: &[String], all: bool) -> anyhow::Result<i32> {
    let apps = wait(names)?;
    if all {
        list::print_list(false, false)?;
    } else {
        let infos: Vec<AppInfo> = apps.iter().map(|(a, _)| a.clone()).collect();
        list::print_table(&infos);
    }
    let mut code = 0;
    for (i, deadline) in &apps {
        match i.state {
            AppState::Online | AppState::Stopped => {}
            AppState::Errored => {
                eprintln!(
                    "herd: error: {} errored: its workers kept exiting before they were up; \
                     see `herd logs {} --nostream`",
                    i.name, i.name
                );
                code = 1;
            }
            status @ (AppState::Launching | AppState::Reloading | AppState::Stopping) => eprintln!(
                "herd: warning: {} has {}/{} workers online after {} ({status}); \
                 see `herd logs {} --nostream`",
                i.name,
                i.online,
                i.instances,
                herd_engine::describe::duration(*deadline),
                i.name
            ),
        }
    }
    Ok(code)
}
