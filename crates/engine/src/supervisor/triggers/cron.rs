//! The `cron_restart` schedule as plain data: when the next reload is due
//! (wall-clock milliseconds since the epoch) and a generation that tells a
//! stale timer apart. The app's timers run on the monotonic clock, and the
//! schedule is on the wall clock: a wait is never longer than [`RECHECK`],
//! so a change of the wall clock (NTP, a suspend, a new time zone rule)
//! moves the reload by at most that much. Occurrences missed meanwhile
//! (the machine slept through three of them) give one reload.

use std::time::Duration;

use chrono::{DateTime, TimeZone};
use serde::{Deserialize, Serialize};

use crate::config::CronSpec;

/// The longest wait before the wall clock is read again.
pub(crate) const RECHECK: Duration = Duration::from_secs(60);

/// The next due time of an app's schedule.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Schedule {
    /// Wall-clock milliseconds of the next occurrence; `None`: no schedule.
    next_ms: Option<i64>,
    generation: u64,
}

/// What the app does about its schedule.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Wake again after this long, with this generation.
    Wait(Duration, u64),
    /// The schedule is due: reload; then wait (if a next occurrence exists).
    Fire(Option<(Duration, u64)>),
    /// A stale wake, or no schedule.
    Nothing,
}

impl Schedule {
    /// Start the schedule afresh (at start, or for a new definition) at
    /// `now`; the first wait, if there is a schedule.
    pub(crate) fn arm<Tz: TimeZone>(
        &mut self,
        cron: Option<&CronSpec>,
        now: &DateTime<Tz>,
    ) -> Option<(Duration, u64)> {
        self.generation += 1;
        self.next_ms = cron.and_then(|c| next_after(c, now));
        self.wait(now)
    }

    /// A wake with `generation` at `now`.
    pub(crate) fn wake<Tz: TimeZone>(
        &mut self,
        generation: u64,
        cron: Option<&CronSpec>,
        now: &DateTime<Tz>,
    ) -> Step {
        if generation != self.generation {
            return Step::Nothing;
        }
        let (Some(next), Some(cron)) = (self.next_ms, cron) else {
            return Step::Nothing;
        };
        if now.timestamp_millis() < next {
            return match self.wait(now) {
                Some((after, generation)) => Step::Wait(after, generation),
                None => Step::Nothing,
            };
        }
        self.generation += 1;
        // Strictly after now: one reload however many were missed.
        self.next_ms = next_after(cron, now);
        Step::Fire(self.wait(now))
    }

    fn wait<Tz: TimeZone>(&self, now: &DateTime<Tz>) -> Option<(Duration, u64)> {
        let left = self.next_ms? - now.timestamp_millis();
        let ms = left.clamp(1, RECHECK.as_millis() as i64) as u64;
        Some((Duration::from_millis(ms), self.generation))
    }
}

/// The first occurrence after `now` (after its whole second: croner works in
/// seconds).
fn next_after<Tz: TimeZone>(cron: &CronSpec, now: &DateTime<Tz>) -> Option<i64> {
    let next = cron.schedule().find_next_occurrence(now, false).ok()?;
    let ms = next.timestamp_millis();
    // A whole second after `now`'s own second, never at or before now.
    (ms > now.timestamp_millis()).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_second_fires_each_second_once() {
        let cron: CronSpec = "* * * * * *".parse().unwrap();
        let mut s = Schedule::default();
        let (after, g) = s.arm(Some(&cron), &at("2026-03-01T12:00:00.250Z")).unwrap();
        assert_eq!(after, Duration::from_millis(750));
        // The monotonic timer woke a little early by the wall clock: wait the rest.
        assert_eq!(
            s.wake(g, Some(&cron), &at("2026-03-01T12:00:00.998Z")),
            Step::Wait(Duration::from_millis(2), g)
        );
        let Step::Fire(Some((after, g2))) = s.wake(g, Some(&cron), &at("2026-03-01T12:00:01.003Z"))
        else {
            panic!("due")
        };
        assert_eq!(after, Duration::from_millis(997));
        // The old generation is stale now.
        assert_eq!(
            s.wake(g, Some(&cron), &at("2026-03-01T12:00:02.000Z")),
            Step::Nothing
        );
        assert!(matches!(
            s.wake(g2, Some(&cron), &at("2026-03-01T12:00:02.000Z")),
            Step::Fire(Some((d, _))) if d == Duration::from_secs(1)
        ));
    }

    #[test]
    fn a_far_reload_is_waited_for_in_steps_and_missed_ones_fire_once() {
        let cron: CronSpec = "0 3 * * *".parse().unwrap();
        let mut s = Schedule::default();
        let (after, g) = s.arm(Some(&cron), &at("2026-03-01T12:00:00Z")).unwrap();
        assert_eq!(after, RECHECK);
        assert_eq!(
            s.wake(g, Some(&cron), &at("2026-03-01T12:01:00Z")),
            Step::Wait(RECHECK, g)
        );
        // The machine slept for three days: one reload, then the next 03:00.
        let Step::Fire(Some((after, _))) = s.wake(g, Some(&cron), &at("2026-03-04T17:00:00Z"))
        else {
            panic!("due")
        };
        assert_eq!(after, RECHECK);
        assert_eq!(
            s.next_ms,
            Some(at("2026-03-05T03:00:00Z").timestamp_millis())
        );
    }

    #[test]
    fn no_pattern_no_wake_and_a_new_one_makes_old_wakes_stale() {
        let mut s = Schedule::default();
        assert_eq!(s.arm(None, &at("2026-03-01T12:00:00Z")), None);
        let cron: CronSpec = "*/5 * * * * *".parse().unwrap();
        let (_, g) = s.arm(Some(&cron), &at("2026-03-01T12:00:00Z")).unwrap();
        let (_, g2) = s.arm(Some(&cron), &at("2026-03-01T12:00:01Z")).unwrap();
        assert_ne!(g, g2);
        assert_eq!(
            s.wake(g, Some(&cron), &at("2026-03-01T12:00:05Z")),
            Step::Nothing
        );
        assert!(matches!(
            s.wake(g2, Some(&cron), &at("2026-03-01T12:00:05Z")),
            Step::Fire(_)
        ));
        // Written out and read back, the schedule goes on.
        let back: Schedule = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(
            back.next_ms,
            Some(at("2026-03-01T12:00:10Z").timestamp_millis())
        );
    }
}
