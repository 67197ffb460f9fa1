//! When watched changes become one reload, as plain data. The first change
//! opens a window; every change until it closes joins it; it closes once
//! `watch_delay` has passed since the first change and the files have been
//! quiet for [`SETTLE`] (an editor's save is several writes, a `git pull`
//! many), but no later than [`MAX_SETTLE`] after that delay (a file written
//! all the time still reloads). Changes after the window closed open the
//! next one, whose reload the machine queues behind a running reload: a
//! burst of edits gives one or two reloads, never one per edit.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::MonoTime;

/// The quiet time after the last change before the reload.
pub(crate) const SETTLE: Duration = Duration::from_millis(100);
/// The most the quiet time may add to the delay.
pub(crate) const MAX_SETTLE: Duration = Duration::from_secs(1);

/// The open window of changes, if any.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Debounce {
    open: Option<Window>,
    generation: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Window {
    first: MonoTime,
    last: MonoTime,
    /// The first path that changed, if known (an overflow of the kernel's
    /// queue names none).
    path: Option<PathBuf>,
    changes: u64,
}

/// What the app does about the changes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Wake again after this long, with this generation.
    Wait(Duration, u64),
    /// The window closed: reload for these changes.
    Fire { path: Option<PathBuf>, changes: u64 },
    /// A stale wake.
    Nothing,
}

impl Debounce {
    /// `changes` changes were seen at `now` (the first at `path`): the wake
    /// to set when they open a window.
    pub(crate) fn changed(
        &mut self,
        now: MonoTime,
        delay: Duration,
        path: Option<PathBuf>,
        changes: u64,
    ) -> Option<(Duration, u64)> {
        if let Some(w) = &mut self.open {
            w.last = now;
            w.changes += changes;
            if w.path.is_none() {
                w.path = path;
            }
            return None;
        }
        self.generation += 1;
        let w = Window {
            first: now,
            last: now,
            path,
            changes,
        };
        let after = closes(&w, delay).saturating_duration_since(now);
        self.open = Some(w);
        Some((after, self.generation))
    }

    /// A wake with `generation` at `now`.
    pub(crate) fn wake(&mut self, generation: u64, now: MonoTime, delay: Duration) -> Step {
        if generation != self.generation {
            return Step::Nothing;
        }
        let Some(w) = &self.open else {
            return Step::Nothing;
        };
        let at = closes(w, delay);
        if now < at {
            return Step::Wait(at.saturating_duration_since(now), generation);
        }
        let w = self.open.take().expect("open");
        Step::Fire {
            path: w.path,
            changes: w.changes,
        }
    }

    /// Forget an open window (the app no longer watches).
    pub(crate) fn clear(&mut self) {
        self.open = None;
        self.generation += 1;
    }
}

/// When a window closes.
fn closes(w: &Window, delay: Duration) -> MonoTime {
    let earliest = w.first + delay;
    let quiet = w.last + SETTLE;
    let latest = earliest + MAX_SETTLE;
    earliest.max(quiet).min(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_of_changes_is_one_reload_once_quiet() {
        let t0 = MonoTime::now();
        let mut d = Debounce::default();
        let (after, g) = d
            .changed(t0, Duration::ZERO, Some("a.js".into()), 1)
            .unwrap();
        assert_eq!(after, SETTLE);
        // 49 more changes, 10 ms apart: they join the window.
        for i in 1..50 {
            assert_eq!(
                d.changed(t0 + MS * (10 * i), Duration::ZERO, Some("b.js".into()), 1),
                None
            );
        }
        let last = t0 + MS * 490;
        assert_eq!(
            d.wake(g, t0 + SETTLE, Duration::ZERO),
            Step::Wait(MS * 490, g)
        );
        assert_eq!(
            d.wake(g, last + SETTLE, Duration::ZERO),
            Step::Fire {
                path: Some("a.js".into()),
                changes: 50
            }
        );
        assert_eq!(d.wake(g, last + SETTLE, Duration::ZERO), Step::Nothing);
        // The next change opens a new window.
        let (_, g2) = d.changed(last + MS * 200, Duration::ZERO, None, 1).unwrap();
        assert_ne!(g, g2);
    }

    #[test]
    fn watch_delay_first_and_a_busy_file_still_reloads() {
        let t0 = MonoTime::now();
        let mut d = Debounce::default();
        let delay = Duration::from_secs(2);
        let (after, g) = d.changed(t0, delay, None, 1).unwrap();
        assert_eq!(after, delay);
        // Changes every 50 ms forever: the window closes at delay + MAX_SETTLE.
        let mut now = t0;
        let fired = loop {
            now = now + MS * 50;
            d.changed(now, delay, None, 1);
            if let Step::Fire { changes, .. } = d.wake(g, now, delay) {
                break changes;
            }
        };
        assert_eq!(now, t0 + delay + MAX_SETTLE);
        assert_eq!(fired, 61);
    }

    #[test]
    fn a_cleared_window_does_not_fire() {
        let t0 = MonoTime::now();
        let mut d = Debounce::default();
        let (_, g) = d.changed(t0, Duration::ZERO, None, 1).unwrap();
        d.clear();
        assert_eq!(d.wake(g, t0 + MAX_SETTLE, Duration::ZERO), Step::Nothing);
    }
}
