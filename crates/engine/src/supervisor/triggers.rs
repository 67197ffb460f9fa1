//! The app's own reasons to reload: watched files that changed (`watch`)
//! and a schedule (`cron_restart`). Both end in the same place: a
//! [`Report::Triggered`](crate::machine::Report::Triggered) that says why,
//! then the machine's `Reload` — the rolling reload, which starts each new
//! worker before the old one drains, keeps the old one serving when the new
//! one fails to come up (a half-saved file, a syntax error), and queues a
//! reload asked for while one runs as one more (a flag, not a queue). So an
//! edit never takes the app down, as pm2's restart and `node --watch` do.
//!
//! The parts, as plain data in the app's state ([`Triggers`]):
//! - `debounce`: when changes become one reload;
//! - `cron`: when the schedule is due next;
//!
//! and, living only in the process, the watcher (`watcher`: notify's
//! thread and `herd-watch`), with the paths and rules it applies
//! (`filter`). The run loop (`app`) feeds changes and timer wakes in and
//! carries out what comes back ([`Do`]).

mod cron;
mod debounce;
mod filter;
mod watcher;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::clock::MonoTime;
use crate::config::AppSpec;
use crate::machine::Trigger;

pub(crate) use watcher::Watcher;

/// The triggers' state: plain data.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Triggers {
    watch: debounce::Debounce,
    cron: cron::Schedule,
}

/// A timer of the triggers: which one, and its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TriggerWake {
    Watch(u64),
    Cron(u64),
}

/// What the run loop does for the triggers.
#[derive(Debug, PartialEq)]
pub(crate) enum Do {
    /// Set a timer.
    Wake(Duration, TriggerWake),
    /// Say why, and reload.
    Reload(Trigger),
    /// Tell the user (the watcher could not watch something).
    Warn(String),
    /// Tell the user how things stand (the watcher is in place).
    Say(crate::machine::Report),
}

impl Triggers {
    /// Take the app's definition (at start, or a new one): the schedule
    /// starts afresh; changes pending for a watch that is gone are dropped.
    pub(crate) fn configure(&mut self, spec: &AppSpec, _now: MonoTime) -> Vec<Do> {
        let mut todo = Vec::new();
        if spec.watch.is_none() {
            self.watch.clear();
        }
        if let Some((after, g)) = self
            .cron
            .arm(spec.cron_restart.as_ref(), &chrono::Local::now())
        {
            todo.push(Do::Wake(after, TriggerWake::Cron(g)));
        }
        todo
    }

    /// The watcher saw something.
    pub(crate) fn changed(
        &mut self,
        spec: &AppSpec,
        seen: watcher::Changes,
        now: MonoTime,
    ) -> Vec<Do> {
        let mut todo: Vec<Do> = seen
            .warnings
            .into_iter()
            .map(|w| Do::Warn(format!("watch: {w}")))
            .collect();
        if let Some(folders) = seen.ready {
            todo.push(Do::Say(crate::machine::Report::Watching { folders }));
        }
        let Some(watch) = &spec.watch else {
            return todo;
        };
        if seen.count > 0 {
            if let Some((after, g)) = self.watch.changed(now, watch.delay, seen.first, seen.count) {
                todo.push(Do::Wake(after, TriggerWake::Watch(g)));
            }
        }
        todo
    }

    /// One of the triggers' timers fired.
    pub(crate) fn wake(&mut self, spec: &AppSpec, wake: TriggerWake, now: MonoTime) -> Vec<Do> {
        match wake {
            TriggerWake::Watch(g) => {
                let delay = spec.watch.as_ref().map(|w| w.delay).unwrap_or_default();
                match self.watch.wake(g, now, delay) {
                    debounce::Step::Wait(after, g) => {
                        vec![Do::Wake(after, TriggerWake::Watch(g))]
                    }
                    debounce::Step::Fire { path, changes } => {
                        let cwd = app_cwd(spec);
                        let path = path.map(|p| match p.strip_prefix(&cwd) {
                            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
                            _ => p,
                        });
                        vec![Do::Reload(Trigger::Watch { path, changes })]
                    }
                    debounce::Step::Nothing => Vec::new(),
                }
            }
            TriggerWake::Cron(g) => {
                let cron = spec.cron_restart.as_ref();
                match self.cron.wake(g, cron, &chrono::Local::now()) {
                    cron::Step::Wait(after, g) => vec![Do::Wake(after, TriggerWake::Cron(g))],
                    cron::Step::Fire(next) => {
                        let mut todo = vec![Do::Reload(Trigger::Cron {
                            pattern: cron.map(|c| c.pattern().to_string()).unwrap_or_default(),
                        })];
                        if let Some((after, g)) = next {
                            todo.push(Do::Wake(after, TriggerWake::Cron(g)));
                        }
                        todo
                    }
                    cron::Step::Nothing => Vec::new(),
                }
            }
        }
    }
}

/// The watcher `spec` asks for: the running one if it watches the same
/// thing, else a new one (or none); `wake` is the app task's slot.
pub(crate) fn rewire(
    running: Option<Watcher>,
    spec: &AppSpec,
    wake: &mpsc::Sender<()>,
) -> Option<Watcher> {
    let watch = spec.watch.as_ref()?;
    let cwd = app_cwd(spec);
    match running {
        Some(w) if w.is_for(watch, &cwd) => Some(w),
        _ => Some(Watcher::start(watch, &cwd, wake.clone())),
    }
}

/// Where the app's relative paths start: its working directory, else ours.
fn app_cwd(spec: &AppSpec) -> PathBuf {
    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    match &spec.cwd {
        Some(c) if c.is_absolute() => c.clone(),
        Some(c) => here.join(c),
        None => here,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CronSpec, WatchSpec};
    use std::path::Path;

    #[test]
    fn a_watch_reload_names_the_file_from_the_apps_folder() {
        let mut spec = AppSpec::new("web", "/bin/true");
        spec.cwd = Some("/srv/app".into());
        spec.watch = Some(WatchSpec::default());
        let mut t = Triggers::default();
        let now = MonoTime::now();
        assert_eq!(t.configure(&spec, now), vec![]);
        let seen = watcher::Changes {
            first: Some("/srv/app/src/a.js".into()),
            count: 3,
            warnings: vec!["not watching x".into()],
            ready: None,
        };
        let todo = t.changed(&spec, seen, now);
        assert_eq!(todo[0], Do::Warn("watch: not watching x".into()));
        let Do::Wake(after, wake) = todo[1] else {
            panic!("{todo:?}")
        };
        assert_eq!(
            t.wake(&spec, wake, now + after),
            vec![Do::Reload(Trigger::Watch {
                path: Some(Path::new("src/a.js").to_path_buf()),
                changes: 3
            })]
        );
        // A definition without watch drops what was pending.
        t.changed(
            &spec,
            watcher::Changes {
                count: 1,
                ..Default::default()
            },
            now,
        );
        let mut unwatched = spec.clone();
        unwatched.watch = None;
        t.configure(&unwatched, now);
        assert_eq!(t.wake(&spec, wake, now + Duration::from_secs(5)), vec![]);
    }

    #[test]
    fn a_cron_spec_arms_a_wake_and_the_state_is_plain_data() {
        let mut spec = AppSpec::new("web", "/bin/true");
        spec.cron_restart = Some("* * * * * *".parse::<CronSpec>().unwrap());
        let mut t = Triggers::default();
        let todo = t.configure(&spec, MonoTime::now());
        assert!(
            matches!(todo[..], [Do::Wake(d, TriggerWake::Cron(_))] if d <= Duration::from_secs(1)),
            "{todo:?}"
        );
        let text = serde_json::to_string(&t).unwrap();
        let _: Triggers = serde_json::from_str(&text).unwrap();
    }
}
