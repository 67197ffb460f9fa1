//! What follows one worker's exit in its slot: the slot's restart counters
//! ([`Tally`], plain data) and the two ways of counting them
//! ([`Counting::Herd`], [`Counting::Pm2`]). Pure, like the machine: the
//! time comes in with every call. The app-wide part of herd's counting (a
//! killed worker's slot started at once while the app is empty) is the
//! machine's, since it needs every slot; this module only says which
//! restarts may be taken early ([`Verdict::Restart::rescuable`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::MonoTime;
use crate::config::{Counting, Pm2Delay, RestartMode, RestartPolicy, PM2_BACKOFF_RESET_AFTER};
use crate::exit::ExitStatus;

/// One slot's restart counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Tally {
    /// herd: crashes of young workers in a row (the crash-loop count);
    /// pm2: `unstable_restarts`.
    pub(super) unstable: u32,
    /// herd: young exits in a row, kills included: the backoff's step.
    young: u32,
    /// pm2: `created_at`, the start of the window in which a young exit is
    /// unstable (`min_uptime × max_restarts`): the slot's first start since
    /// the counting started over.
    since: Option<MonoTime>,
    /// pm2: `prev_restart_delay` of the exponential backoff (zero: none yet).
    prev_delay: Duration,
}

/// What the counting decides for a slot whose worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Start a new worker after `delay`. `rescuable`: the worker was killed
    /// from outside (herd counting), so while no worker of the app runs the
    /// machine may start it sooner.
    Restart { delay: Duration, rescuable: bool },
    /// The restart mode does not restart this exit.
    NoRestart,
    /// It exited with one of `stop_exit_codes`.
    StopCode(i32),
    /// Too many unstable exits: the slot gives up.
    Errored { crashes: u32 },
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            unstable: 0,
            young: 0,
            since: None,
            prev_delay: Duration::ZERO,
        }
    }

    /// A reload or a replacement begins for the slot (pm2's `resetState`,
    /// herd's "a reload starts an errored slot afresh"): the counting
    /// starts over, from the slot's next start.
    pub(super) fn restart_over(&mut self) {
        *self = Tally::new();
    }

    /// A worker is started for the slot (pm2's `executeApp`: `created_at`
    /// is set if it is not).
    pub(super) fn started(&mut self, now: MonoTime) {
        self.since.get_or_insert(now);
    }

    /// A worker of the slot ended with `status` after `uptime`; the slot
    /// is not being stopped.
    pub(super) fn after_exit(
        &mut self,
        policy: &RestartPolicy,
        now: MonoTime,
        status: ExitStatus,
        uptime: Duration,
    ) -> Verdict {
        if let ExitStatus::Code(code) = status {
            if policy.stop_exit_codes.contains(&code) {
                return Verdict::StopCode(code);
            }
        }
        let wanted = match policy.mode {
            RestartMode::Always => true,
            RestartMode::OnFailure => status != ExitStatus::Code(0),
            RestartMode::Never => false,
        };
        if !wanted {
            return Verdict::NoRestart;
        }
        match policy.counting {
            Counting::Herd => self.herd(policy, status, uptime),
            Counting::Pm2(delay) => self.pm2(policy, delay, now, uptime),
        }
    }

    fn herd(&mut self, policy: &RestartPolicy, status: ExitStatus, uptime: Duration) -> Verdict {
        if uptime >= policy.min_uptime {
            self.unstable = 0;
            self.young = 0;
            return Verdict::Restart {
                delay: Duration::ZERO,
                rescuable: false,
            };
        }
        self.young = self.young.saturating_add(1);
        let killed = status.is_kill();
        if !killed {
            self.unstable = self.unstable.saturating_add(1);
            if self.unstable > policy.max_restarts {
                return Verdict::Errored {
                    crashes: self.unstable,
                };
            }
        }
        Verdict::Restart {
            delay: policy.backoff(self.young),
            rescuable: killed,
        }
    }

    fn pm2(
        &mut self,
        policy: &RestartPolicy,
        delay: Pm2Delay,
        now: MonoTime,
        uptime: Duration,
    ) -> Verdict {
        let window = policy.min_uptime.saturating_mul(policy.max_restarts);
        let in_window = self
            .since
            .is_none_or(|since| now.saturating_duration_since(since) < window);
        if in_window && uptime < policy.min_uptime {
            self.unstable = self.unstable.saturating_add(1);
        }
        if self.unstable >= policy.max_restarts {
            let crashes = self.unstable;
            // pm2 forgets the count and the window (`created_at = null`):
            // the next start, a reload, counts afresh.
            self.restart_over();
            return Verdict::Errored { crashes };
        }
        let delay = match delay {
            Pm2Delay::Fixed => policy.restart_delay,
            Pm2Delay::Exponential(base) => {
                if uptime > PM2_BACKOFF_RESET_AFTER {
                    self.prev_delay = Duration::ZERO;
                }
                self.prev_delay = Pm2Delay::next_exponential(base, self.prev_delay);
                self.prev_delay
            }
        };
        Verdict::Restart {
            delay,
            rescuable: false,
        }
    }
}
