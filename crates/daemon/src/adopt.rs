//! A daemon that starts takes over the apps it finds in `$HERD_HOME/apps/`
//! (they outlive any daemon): each `apps/<id>.json` becomes a registry entry
//! with the same id, name and definition. A live supervisor (its
//! `apps/<id>.pid` locked) is adopted as it is — same workers, counters and
//! uptimes, which it holds — and followed; for a dead one, another is
//! started, which starts the app if it was wished running. The daemon serves
//! the CLI once every live supervisor is followed (or a deadline passed),
//! so the first command already sees every app.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::handlers::Ctx;
use crate::link::{Link, State};
use crate::registry::Entry;

/// How long the daemon waits for live supervisors to be followed before
/// it serves anyway (each answers in a millisecond; a hung one must not
/// keep the CLI out).
const ADOPT_DEADLINE: Duration = Duration::from_secs(2);

/// What adoption found.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Apps whose supervisor was running and is now followed.
    pub running: usize,
    /// Apps whose supervisor was not running (another is being started).
    pub restarted: usize,
    /// App files that could not be read (named in the log).
    pub unreadable: usize,
    /// From the daemon's start until every live supervisor was followed.
    pub took: Duration,
}

/// Find, register and follow every app of the home.
pub async fn adopt(ctx: &Arc<Ctx>, daemon_start: Instant) -> Adopted {
    let mut adopted = Adopted::default();
    let ids = match ctx.apps.ids() {
        Ok(ids) => ids,
        Err(e) => {
            crate::say!("cannot read the apps in {}: {e}", ctx.home.root().display());
            return adopted;
        }
    };
    let mut live = Vec::new();
    for id in ids {
        let files = ctx.apps.app(id);
        let file = match files.read_app() {
            Ok(f) => f,
            Err(e) => {
                // Its id stays taken; the file is left for the operator.
                crate::say!("cannot take app {id}: {e}");
                ctx.registry().reserve(id);
                adopted.unreadable += 1;
                continue;
            }
        };
        let running = files.running_pid().is_some();
        let link = Link::new(id, &file.name, files);
        ctx.registry().insert(Entry {
            id,
            name: file.name.clone(),
            def: Arc::new(file.definition),
            link: link.clone(),
        });
        link.watch();
        if running {
            adopted.running += 1;
            live.push(link);
        } else {
            adopted.restarted += 1;
        }
    }
    let deadline = ADOPT_DEADLINE.saturating_sub(daemon_start.elapsed());
    for link in &live {
        link.settled(deadline).await;
    }
    adopted.took = daemon_start.elapsed();
    let behind = live
        .iter()
        .filter(|l| !matches!(l.state(), State::Up { .. }))
        .count();
    if adopted.running + adopted.restarted + adopted.unreadable > 0 {
        crate::say!(
            "adopted {} running app(s) in {:.1} ms{}{}",
            adopted.running - behind,
            adopted.took.as_secs_f64() * 1000.0,
            match adopted.restarted {
                0 => String::new(),
                n => format!("; starting the supervisors of {n} app(s) again"),
            },
            match behind {
                0 => String::new(),
                n => format!("; {n} supervisor(s) did not answer yet"),
            }
        );
    }
    adopted
}
