//! Time as the engine keeps it: readings of the system's monotonic clock
//! (`CLOCK_MONOTONIC`), in nanoseconds.
//!
//! Unlike [`std::time::Instant`], a reading is plain data: it can be written
//! out and read back by another process on the same machine (an app's state
//! handed to a new herd binary across `exec`), and it means the same there,
//! because every process reads the same clock. The machine never reads the
//! clock itself: its driver passes the time in.

use std::ops::Add;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// One reading of `CLOCK_MONOTONIC`, in nanoseconds since an unspecified
/// start (the boot, on Linux).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub(crate) struct MonoTime(u64);

impl MonoTime {
    /// The clock now.
    pub(crate) fn now() -> MonoTime {
        // CLOCK_MONOTONIC exists on every Linux; a failure would be a
        // broken kernel, not something to handle.
        let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is readable");
        MonoTime(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
    }

    /// Time from `earlier` to this reading; zero if `earlier` is later.
    pub(crate) fn saturating_duration_since(self, earlier: MonoTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// The reading in microseconds (systemd's `MONOTONIC_USEC`).
    pub(crate) fn as_micros(self) -> u64 {
        self.0 / 1000
    }
}

impl Add<Duration> for MonoTime {
    type Output = MonoTime;
    fn add(self, d: Duration) -> MonoTime {
        MonoTime(
            self.0
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_move_forward_and_subtract_as_durations() {
        let a = MonoTime::now();
        let b = a + Duration::from_millis(1500);
        assert_eq!(b.saturating_duration_since(a), Duration::from_millis(1500));
        assert_eq!(a.saturating_duration_since(b), Duration::ZERO);
        assert!(MonoTime::now() >= a);
    }

    #[test]
    fn a_reading_is_a_plain_number_in_json() {
        let t = MonoTime(42_000);
        assert_eq!(serde_json::to_string(&t).unwrap(), "42000");
        assert_eq!(t.as_micros(), 42);
    }
}
