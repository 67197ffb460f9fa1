//! An app's pending timers, as plain data: each is a deadline (a
//! [`MonoTime`]) and what to do then ([`Wake`]). The run loop sleeps until
//! the earliest one; nothing else keeps a timer, so the whole set can be
//! written out with the app's state and armed again from it.
//!
//! Timers are never cancelled: each party ignores a wake that no longer
//! applies (the machine a stale timer, the cluster a stop signal already
//! sent or an answer already given, the triggers an older generation).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::triggers::TriggerWake;
use crate::clock::MonoTime;
use crate::machine::{Timer, WorkerId};

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Wake {
    /// One of the machine's timers: fed back as `Input::Timer`.
    Machine(Timer),
    /// A cluster worker's graceful stop: its settle time is over, send the
    /// stop signal.
    StopSignal(WorkerId),
    /// Round-robin: has the worker answered for its oldest client connection?
    AnswerDue(WorkerId),
    /// A reload's successor held until it listens: does it now?
    ListenCheck(WorkerId),
    /// The app's watch or cron trigger (`triggers`).
    Trigger(TriggerWake),
}

/// One pending timer. Ordered by deadline, then by the order they were set.
#[derive(Debug, Serialize, Deserialize)]
struct Deadline {
    at: MonoTime,
    seq: u64,
    wake: Wake,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The pending timers of one app.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Timers {
    pending: BinaryHeap<Reverse<Deadline>>,
    next_seq: u64,
}

impl Timers {
    /// Wake with `wake` once `after` has passed from `now`.
    pub(crate) fn set(&mut self, now: MonoTime, after: Duration, wake: Wake) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push(Reverse(Deadline {
            at: now + after,
            seq,
            wake,
        }));
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<MonoTime> {
        self.pending.peek().map(|Reverse(d)| d.at)
    }

    /// The next timer due at `now`, taken off the set.
    pub(crate) fn pop_due(&mut self, now: MonoTime) -> Option<Wake> {
        if self.next()? > now {
            return None;
        }
        self.pending.pop().map(|Reverse(d)| d.wake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_deadline_order_then_in_the_order_set() {
        let now = MonoTime::now();
        let mut t = Timers::default();
        let w = |n| Wake::StopSignal(WorkerId(n));
        t.set(now, Duration::from_millis(20), w(1));
        t.set(now, Duration::from_millis(10), w(2));
        t.set(now, Duration::from_millis(10), w(3));
        assert_eq!(t.next(), Some(now + Duration::from_millis(10)));
        assert_eq!(t.pop_due(now), None, "nothing is due yet");
        let later = now + Duration::from_millis(15);
        assert_eq!(t.pop_due(later), Some(w(2)));
        assert_eq!(t.pop_due(later), Some(w(3)));
        assert_eq!(t.pop_due(later), None);
        assert_eq!(t.pop_due(now + Duration::from_millis(20)), Some(w(1)));
        assert_eq!(t.next(), None);
    }

    #[test]
    fn pending_timers_are_plain_data() {
        let now = MonoTime::now();
        let mut t = Timers::default();
        t.set(now, Duration::from_secs(1), Wake::AnswerDue(WorkerId(4)));
        let text = serde_json::to_string(&t).unwrap();
        let mut back: Timers = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.pop_due(now + Duration::from_secs(1)),
            Some(Wake::AnswerDue(WorkerId(4)))
        );
    }
}
