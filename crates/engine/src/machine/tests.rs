//! The machine driven by a simulated driver: fake time, fake pids, timers in
//! a list. Scenario tests first, then a property test over random inputs.

use super::*;
use crate::config::{Pm2Delay, RestartMode};
use nix::sys::signal::Signal;
use proptest::prelude::*;

/// A stand-in for the supervisor: it "spawns" by handing out pids and keeps
/// the timers the machine sets, firing them when the clock passes them.
struct Sim {
    machine: Machine,
    now: MonoTime,
    next_pid: u32,
    /// Live processes: worker → (slot, pid).
    live: BTreeMap<WorkerId, (Slot, u32)>,
    timers: Vec<(MonoTime, Timer)>,
    /// Workers asked to stop, and workers killed.
    stopped: Vec<WorkerId>,
    killed: Vec<WorkerId>,
    reports: Vec<Report>,
    exit: Option<Outcome>,
    /// Spawns that should fail from now on.
    fail_spawns: bool,
    /// Like a Node driver: on `Stop`, do not signal at once (the test feeds
    /// `StopSignalled`, or waits for `Signal`).
    hold_signal: bool,
    /// Workers the machine told to be signalled now (`Action::Signal`), and
    /// when the signal went out.
    signalled: Vec<(WorkerId, MonoTime)>,
}

fn policy() -> Policy {
    Policy {
        restart: RestartPolicy::default(),
        readiness: Readiness::After(Duration::from_millis(1000)),
        listen_timeout: Duration::from_millis(3000),
        kill_timeout: Duration::from_millis(1600),
        settle_timeout: Duration::from_millis(1000),
    }
}

impl Sim {
    fn new(policy: Policy, n: usize) -> Sim {
        let mut sim = Sim {
            machine: Machine::new(policy, n),
            now: MonoTime::now(),
            next_pid: 100,
            live: BTreeMap::new(),
            timers: Vec::new(),
            stopped: Vec::new(),
            killed: Vec::new(),
            reports: Vec::new(),
            exit: None,
            fail_spawns: false,
            hold_signal: false,
            signalled: Vec::new(),
        };
        sim.input(Input::Command(Command::Start));
        sim
    }

    fn input(&mut self, input: Input) {
        let actions = self.machine.handle(self.now, input);
        self.apply(actions);
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Spawn { slot, worker } => {
                    if self.fail_spawns {
                        let error = "no such file".to_string();
                        self.input(Input::SpawnFailed { worker, error });
                    } else {
                        self.next_pid += 1;
                        let pid = self.next_pid;
                        self.live.insert(worker, (slot, pid));
                        self.input(Input::Spawned { worker, pid });
                    }
                }
                Action::Stop { worker } => {
                    self.stopped.push(worker);
                    if !self.hold_signal {
                        self.signal(worker);
                    }
                }
                Action::Signal { worker } => self.signal(worker),
                Action::Kill { worker } => {
                    self.killed.push(worker);
                    if self.live.contains_key(&worker) {
                        self.exit(
                            worker,
                            ExitStatus::Signal(nix::sys::signal::Signal::SIGKILL),
                        );
                    }
                }
                Action::SetTimer { timer, after } => self.timers.push((self.now + after, timer)),
                Action::Report(r) => self.reports.push(r),
                Action::Exit(outcome) => {
                    assert!(self.exit.is_none(), "Exit emitted twice");
                    self.exit = Some(outcome);
                }
            }
        }
    }

    /// Let time pass, firing due timers in order.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            self.timers.sort_by_key(|(at, _)| *at);
            match self.timers.first() {
                Some((at, _)) if *at <= end => {
                    let (at, timer) = self.timers.remove(0);
                    self.now = self.now.max(at);
                    self.input(Input::Timer(timer));
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// The driver sends the stop signal and says so.
    fn signal(&mut self, worker: WorkerId) {
        self.signalled.push((worker, self.now));
        self.input(Input::StopSignalled { worker });
    }

    fn exit(&mut self, worker: WorkerId, status: ExitStatus) {
        self.live.remove(&worker).expect("exit of a live worker");
        self.input(Input::Exited { worker, status });
    }

    fn worker_in(&self, slot: Slot) -> WorkerId {
        self.machine.slots[slot]
            .current
            .expect("slot has an active worker")
    }

    fn pids(&self) -> Vec<u32> {
        self.live.values().map(|(_, pid)| *pid).collect()
    }

    fn count(&self, f: impl Fn(&Report) -> bool) -> usize {
        self.reports.iter().filter(|r| f(r)).count()
    }

    /// Stopped workers exit gracefully.
    fn finish_stopped(&mut self) {
        for w in self.stopped.clone() {
            if self.live.contains_key(&w) {
                self.exit(w, ExitStatus::Code(0));
            }
        }
    }
}

#[test]
fn start_spawns_every_slot_and_reports_ready_after_the_delay() {
    let mut sim = Sim::new(policy(), 3);
    assert_eq!(sim.live.len(), 3);
    assert_eq!(sim.count(|r| matches!(r, Report::Online { .. })), 3);
    assert_eq!(sim.count(|r| matches!(r, Report::Ready { .. })), 0);
    sim.advance(Duration::from_millis(1000));
    assert_eq!(sim.count(|r| matches!(r, Report::Ready { .. })), 3);
    assert!(sim.machine.accepting(sim.worker_in(0)));
}

#[test]
fn a_stable_worker_that_dies_is_replaced_at_once() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(5));
    let w = sim.worker_in(1);
    sim.exit(w, ExitStatus::Signal(nix::sys::signal::Signal::SIGKILL));
    assert_eq!(sim.live.len(), 2, "replaced without waiting");
    assert_ne!(sim.worker_in(1), w);
    assert!(sim.reports.iter().any(|r| matches!(
        r,
        Report::Exited { slot: 1, next: Next::RestartIn(d), .. } if d.is_zero()
    )));
}

#[test]
fn crash_loop_backs_off_then_errors_and_the_others_keep_running() {
    let mut p = policy();
    p.restart.max_restarts = 3;
    let mut sim = Sim::new(p, 2);
    let mut delays = Vec::new();
    for _ in 0..4 {
        let w = sim.worker_in(1);
        sim.exit(w, ExitStatus::Code(1));
        if let Some(Report::Exited { next, .. }) = sim.reports.last() {
            delays.push(*next);
        }
        sim.advance(Duration::from_millis(450));
    }
    assert_eq!(
        delays,
        vec![
            Next::RestartIn(Duration::from_millis(100)),
            Next::RestartIn(Duration::from_millis(200)),
            Next::RestartIn(Duration::from_millis(400)),
            Next::Errored { crashes: 4 },
        ]
    );
    assert_eq!(sim.machine.errored_slots(), vec![1]);
    assert_eq!(sim.live.len(), 1, "slot 0 still runs");
    assert!(sim.exit.is_none());
    // When the last slot errors too, the machine finishes with the cause.
    // (Its first exit comes after a stable run, so it takes one more.)
    for _ in 0..5 {
        let w = sim.worker_in(0);
        sim.exit(w, ExitStatus::Code(3));
        sim.advance(Duration::from_millis(450));
    }
    assert_eq!(
        sim.exit,
        Some(Outcome::Errored {
            slot: 0,
            last: ExitStatus::Code(3)
        })
    );
}

#[test]
fn a_stable_run_resets_the_backoff() {
    let mut sim = Sim::new(policy(), 1);
    let w = sim.worker_in(0);
    sim.exit(w, ExitStatus::Code(1));
    sim.advance(Duration::from_millis(100));
    sim.advance(Duration::from_secs(2));
    let w = sim.worker_in(0);
    sim.exit(w, ExitStatus::Code(1));
    let last_exit = sim
        .reports
        .iter()
        .rev()
        .find(|r| matches!(r, Report::Exited { .. }));
    assert!(matches!(
        last_exit,
        Some(Report::Exited { next: Next::RestartIn(d), .. }) if d.is_zero()
    ));
    // The exit is reported before the replacement comes online.
    assert!(matches!(sim.reports.last(), Some(Report::Online { .. })));
}

#[test]
fn restart_modes() {
    let mut p = policy();
    p.restart.mode = RestartMode::OnFailure;
    let mut sim = Sim::new(p.clone(), 2);
    sim.advance(Duration::from_secs(2));
    let (a, b) = (sim.worker_in(0), sim.worker_in(1));
    sim.exit(a, ExitStatus::Code(0));
    assert_eq!(sim.live.len(), 1, "a clean exit is not restarted");
    sim.exit(b, ExitStatus::Code(2));
    assert_eq!(sim.live.len(), 1, "a failure is");
    p.restart.mode = RestartMode::Never;
    let mut sim = Sim::new(p, 2);
    let (a, b) = (sim.worker_in(0), sim.worker_in(1));
    sim.exit(a, ExitStatus::Code(0));
    assert!(sim.exit.is_none());
    sim.exit(b, ExitStatus::Code(4));
    assert_eq!(sim.exit, Some(Outcome::Completed { success: false }));
}

#[test]
fn graceful_stop_waits_then_kills_and_a_second_stop_kills_at_once() {
    let mut sim = Sim::new(policy(), 2);
    sim.input(Input::Command(Command::Stop));
    assert_eq!(sim.stopped.len(), 2);
    // One drains in time, the other ignores the signal.
    let first = sim.stopped[0];
    sim.exit(first, ExitStatus::Code(0));
    assert!(sim.exit.is_none());
    sim.advance(Duration::from_millis(1599));
    assert!(sim.killed.is_empty());
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.killed.len(), 1);
    assert_eq!(sim.exit, Some(Outcome::Stopped));

    let mut sim = Sim::new(policy(), 2);
    sim.input(Input::Command(Command::Stop));
    sim.input(Input::Command(Command::Stop));
    assert_eq!(sim.killed.len(), 2);
    assert_eq!(sim.exit, Some(Outcome::Stopped));
}

/// Regression: the kill timeout used to start at `Stop`, so a driver's
/// pre-signal phase (Node's disconnect) ate it; with a kill timeout shorter
/// than that phase a worker was SIGKILLed without ever being signalled.
#[test]
fn kill_timeout_counts_from_the_signal_not_from_the_stop() {
    let mut p = policy();
    p.kill_timeout = Duration::from_millis(500);
    let mut sim = Sim::new(p, 1);
    sim.hold_signal = true;
    let w = sim.worker_in(0);
    sim.input(Input::Command(Command::Stop));
    assert_eq!(sim.stopped, vec![w]);
    // The disconnect and settle take 700 ms: longer than the kill timeout.
    sim.advance(Duration::from_millis(700));
    assert!(sim.killed.is_empty(), "not killed before it was signalled");
    sim.signal(w);
    sim.advance(Duration::from_millis(499));
    assert!(sim.killed.is_empty(), "its 500 ms count from the signal");
    // It takes 400 ms after the signal to exit: a clean exit, not a kill.
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.killed, vec![w]);

    let mut sim = Sim::new(p_with_kill(500), 1);
    sim.hold_signal = true;
    let w = sim.worker_in(0);
    sim.input(Input::Command(Command::Stop));
    sim.advance(Duration::from_millis(300));
    sim.signal(w);
    sim.advance(Duration::from_millis(400));
    sim.exit(w, ExitStatus::Code(0));
    assert!(sim.killed.is_empty());
    assert_eq!(sim.exit, Some(Outcome::Stopped));
    assert!(sim.reports.iter().any(|r| matches!(
        r,
        Report::Exited {
            status: ExitStatus::Code(0),
            next: Next::Stopped,
            ..
        }
    )));
}

fn p_with_kill(ms: u64) -> Policy {
    let mut p = policy();
    p.kill_timeout = Duration::from_millis(ms);
    p
}

#[test]
fn a_settle_phase_that_never_ends_is_cut_short_by_its_own_bound() {
    let mut sim = Sim::new(p_with_kill(500), 1);
    sim.hold_signal = true;
    let w = sim.worker_in(0);
    let t0 = sim.now;
    sim.input(Input::Command(Command::Stop));
    sim.advance(Duration::from_millis(999));
    assert!(sim.signalled.is_empty());
    sim.advance(Duration::from_millis(1));
    // The settle bound (1 s) asks for the signal; the kill follows 500 ms later.
    assert_eq!(sim.signalled, vec![(w, t0 + Duration::from_millis(1000))]);
    sim.advance(Duration::from_millis(499));
    assert!(sim.killed.is_empty());
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.killed, vec![w]);
    assert_eq!(sim.exit, Some(Outcome::Stopped));
}

#[test]
fn a_signal_after_the_settle_bound_or_twice_changes_nothing() {
    let mut sim = Sim::new(p_with_kill(500), 1);
    sim.hold_signal = true;
    let w = sim.worker_in(0);
    sim.input(Input::Command(Command::Stop));
    sim.advance(Duration::from_millis(200));
    sim.signal(w);
    // The driver's late settle timer: a second StopSignalled, and the
    // machine's own settle bound firing later, start no second kill timer.
    sim.advance(Duration::from_millis(100));
    sim.signal(w);
    sim.advance(Duration::from_millis(399));
    assert!(sim.killed.is_empty());
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.killed, vec![w], "killed 500 ms after the first signal");
    assert_eq!(
        sim.signalled.len(),
        2,
        "no Signal action: it was signalled before the bound"
    );
}

#[test]
fn a_signal_for_a_worker_that_is_not_stopping_is_ignored() {
    let mut sim = Sim::new(p_with_kill(500), 1);
    let w = sim.worker_in(0);
    sim.input(Input::StopSignalled { worker: w });
    sim.advance(Duration::from_secs(5));
    assert!(sim.killed.is_empty());
    assert_eq!(sim.live.len(), 1);
}

#[test]
fn no_restart_during_stop() {
    let mut sim = Sim::new(policy(), 2);
    let w = sim.worker_in(0);
    sim.exit(w, ExitStatus::Code(1)); // backoff pending
    sim.input(Input::Command(Command::Stop));
    sim.finish_stopped();
    sim.advance(Duration::from_secs(60));
    assert!(sim.live.is_empty());
    assert_eq!(sim.exit, Some(Outcome::Stopped));
}

#[test]
fn rolling_reload_replaces_one_slot_at_a_time_after_readiness() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    let old: Vec<WorkerId> = vec![sim.worker_in(0), sim.worker_in(1)];
    sim.input(Input::Command(Command::Reload));
    assert_eq!(sim.live.len(), 3, "one replacement at a time");
    assert!(
        sim.stopped.is_empty(),
        "the old worker serves until the new one is ready"
    );
    sim.advance(Duration::from_millis(1000));
    assert_eq!(sim.stopped, vec![old[0]]);
    assert_eq!(sim.live.len(), 4, "slot 1's replacement started");
    sim.advance(Duration::from_millis(1000));
    assert_eq!(sim.stopped, old);
    assert_eq!(sim.count(|r| *r == Report::ReloadFinished), 1);
    sim.finish_stopped();
    assert_eq!(sim.live.len(), 2);
    assert!(!old.contains(&sim.worker_in(0)) && !old.contains(&sim.worker_in(1)));
}

#[test]
fn reload_aborts_when_the_replacement_crashes_and_the_old_worker_stays() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    let old = sim.worker_in(0);
    sim.input(Input::Command(Command::Reload));
    let successor = sim.machine.slots[0].successor.unwrap();
    sim.exit(successor, ExitStatus::Code(1));
    assert!(sim.reports.iter().any(|r| matches!(
        r,
        Report::ReloadAborted {
            slot: 0,
            reason: AbortReason::Exited(ExitStatus::Code(1)),
            old_serving: true,
        }
    )));
    assert_eq!(sim.worker_in(0), old);
    assert!(sim.stopped.is_empty());
    assert!(!sim.machine.reloading());
    assert_eq!(sim.live.len(), 2, "no restart of a failed replacement");
}

/// Regression: a reload over an errored slot said "the old worker keeps
/// serving" when there was none, and then restarted the replacement as if
/// it were the slot's worker.
#[test]
fn reload_starts_an_errored_slot_afresh_and_moves_on() {
    let mut p = policy();
    p.restart.max_restarts = 1;
    let mut sim = Sim::new(p, 2);
    for _ in 0..2 {
        let w = sim.worker_in(1);
        sim.exit(w, ExitStatus::Code(1));
        sim.advance(Duration::from_millis(150));
    }
    assert_eq!(sim.machine.errored_slots(), vec![1]);
    sim.advance(Duration::from_secs(2));
    let old0 = sim.worker_in(0);
    sim.input(Input::Command(Command::Reload));
    sim.advance(Duration::from_secs(1)); // slot 0's replacement is ready
    assert_eq!(sim.stopped, vec![old0]);
    // Slot 1 had nothing to replace: it started at once, and the reload ended.
    assert!(sim.machine.errored_slots().is_empty());
    assert_eq!(sim.count(|r| *r == Report::ReloadFinished), 1);
    assert!(!sim
        .reports
        .iter()
        .any(|r| matches!(r, Report::ReloadAborted { .. })));
    // If it still crashes, it counts from zero again.
    let w = sim.worker_in(1);
    sim.exit(w, ExitStatus::Code(1));
    assert!(matches!(
        sim.reports
            .iter()
            .rev()
            .find(|r| matches!(r, Report::Exited { .. })),
        Some(Report::Exited {
            next: Next::RestartIn(_),
            ..
        })
    ));
}

#[test]
fn reload_aborts_when_the_replacement_is_never_ready() {
    let mut p = policy();
    p.readiness = Readiness::Signalled { late: Late::Abort };
    let mut sim = Sim::new(p, 1);
    let old = sim.worker_in(0);
    sim.input(Input::Ready { worker: old });
    sim.input(Input::Command(Command::Reload));
    let successor = sim.machine.slots[0].successor.unwrap();
    sim.advance(Duration::from_millis(3000));
    assert!(sim.reports.iter().any(|r| matches!(
        r,
        Report::ReloadAborted {
            slot: 0,
            reason: AbortReason::NotReady(_),
            old_serving: true,
        }
    )));
    assert_eq!(sim.stopped, vec![successor]);
    assert_eq!(sim.worker_in(0), old);
    assert!(sim.machine.accepting(old));
}

#[test]
fn a_reload_during_a_reload_is_queued_not_lost() {
    let mut sim = Sim::new(policy(), 1);
    sim.advance(Duration::from_secs(2));
    sim.input(Input::Command(Command::Reload));
    sim.input(Input::Command(Command::Reload));
    sim.input(Input::Command(Command::Reload));
    assert_eq!(sim.count(|r| *r == Report::ReloadQueued), 2);
    sim.advance(Duration::from_secs(1));
    sim.advance(Duration::from_secs(1));
    assert_eq!(
        sim.count(|r| *r == Report::ReloadStarted),
        2,
        "queued reloads coalesce into one"
    );
    assert_eq!(sim.count(|r| *r == Report::ReloadFinished), 2);
    assert_eq!(sim.stopped.len(), 2);
}

#[test]
fn an_active_worker_dying_mid_reload_is_covered_by_its_replacement() {
    let mut sim = Sim::new(policy(), 1);
    sim.advance(Duration::from_secs(2));
    let old = sim.worker_in(0);
    sim.input(Input::Command(Command::Reload));
    sim.exit(old, ExitStatus::Code(1));
    assert_eq!(
        sim.live.len(),
        1,
        "no extra restart: the replacement is coming"
    );
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.count(|r| *r == Report::ReloadFinished), 1);
    assert!(sim.machine.accepting(sim.worker_in(0)));
}

#[test]
fn scaling_up_and_down() {
    let mut sim = Sim::new(policy(), 2);
    sim.input(Input::Command(Command::ScaleUp));
    assert_eq!(sim.machine.slot_count(), 3);
    assert_eq!(sim.live.len(), 3);
    let top = sim.worker_in(2);
    sim.input(Input::Command(Command::ScaleDown));
    assert_eq!(sim.stopped, vec![top]);
    sim.input(Input::Command(Command::Scale(1)));
    sim.input(Input::Command(Command::ScaleDown));
    assert!(sim
        .reports
        .iter()
        .any(|r| matches!(r, Report::Refused { .. })));
    sim.finish_stopped();
    assert_eq!(sim.live.len(), 1);
    // A stopped worker of a removed slot is not restarted.
    sim.advance(Duration::from_secs(30));
    assert_eq!(sim.live.len(), 1);
}

#[test]
fn spawn_failures_count_as_unstable_exits() {
    let mut p = policy();
    p.restart.max_restarts = 2;
    let mut sim = Sim::new(p, 1);
    let w = sim.worker_in(0);
    sim.fail_spawns = true;
    sim.exit(w, ExitStatus::Code(1));
    sim.advance(Duration::from_secs(60));
    assert!(matches!(sim.exit, Some(Outcome::Errored { .. })));
}

#[test]
fn replace_starts_the_successor_first_and_drains_the_old_once_it_is_ready() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    let old = sim.worker_in(1);
    sim.input(Input::Command(Command::Replace(1)));
    assert_eq!(sim.live.len(), 3, "successor started beside the old worker");
    assert!(sim.stopped.is_empty(), "the old worker serves until then");
    let snap = sim.machine.snapshot(sim.now);
    assert_eq!(
        snap.slots[1].successor.as_ref().unwrap().phase,
        WorkerPhase::Online
    );
    sim.advance(Duration::from_millis(1000));
    assert_eq!(sim.stopped, vec![old]);
    assert_ne!(sim.worker_in(1), old);
    assert_eq!(sim.count(|r| matches!(r, Report::Replacing { slot: 1 })), 1);
    assert_eq!(sim.count(|r| matches!(r, Report::ReloadFinished)), 1);
    assert_eq!(sim.count(|r| matches!(r, Report::ReloadStarted)), 0);
    // A second replace while a reload runs is refused, not queued silently.
    sim.input(Input::Command(Command::Reload));
    sim.input(Input::Command(Command::Replace(0)));
    assert!(matches!(
        sim.reports.last(),
        Some(Report::Refused {
            command: Command::Replace(0),
            ..
        })
    ));
}

#[test]
fn snapshot_counts_restarts_and_lists_draining_workers() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    let w = sim.worker_in(0);
    sim.exit(w, ExitStatus::Code(1));
    let snap = sim.machine.snapshot(sim.now);
    assert_eq!(snap.slots[0].restarts, 1);
    assert_eq!(snap.slots[0].last_exit, Some(ExitStatus::Code(1)));
    assert_eq!(snap.slots[1].restarts, 0);
    assert_eq!(
        snap.slots[1].current.as_ref().unwrap().phase,
        WorkerPhase::Ready
    );
    assert_eq!(
        snap.slots[1].current.as_ref().unwrap().uptime,
        Duration::from_secs(2)
    );
    // A reload: while the old worker drains it is listed apart from its slot.
    sim.input(Input::Command(Command::Reload));
    sim.advance(Duration::from_millis(1000));
    let snap = sim.machine.snapshot(sim.now);
    assert!(snap.reloading);
    assert_eq!(snap.draining.len(), 1);
    assert_eq!(snap.draining[0].phase, WorkerPhase::Stopping);
    assert_eq!(snap.slots[0].restarts, 2);
}

#[test]
fn a_stop_while_a_worker_starts_stops_it_once_it_runs() {
    let mut m = Machine::new(policy(), 1);
    let now = MonoTime::now();
    let actions = m.handle(now, Input::Command(Command::Start));
    let Action::Spawn { worker, .. } = actions[0] else {
        panic!()
    };
    m.handle(now, Input::Command(Command::Stop));
    let actions = m.handle(now, Input::Spawned { worker, pid: 7 });
    assert!(actions.contains(&Action::Stop { worker }));
    let actions = m.handle(
        now,
        Input::Exited {
            worker,
            status: ExitStatus::Code(0),
        },
    );
    assert!(actions.contains(&Action::Exit(Outcome::Stopped)));
}

// ---------------------------------------------------------------------------
// herd counting: crashes back off and count, kills do not empty the app.

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const KILL: ExitStatus = ExitStatus::Signal(Signal::SIGKILL);

/// The worker of `slot`, once its backoff is over (10 ms steps).
fn started_in(sim: &mut Sim, slot: Slot) -> WorkerId {
    for _ in 0..1000 {
        if let Some(w) = sim.machine.slots[slot].current {
            return w;
        }
        sim.advance(ms(10));
    }
    panic!("slot {slot} never started again");
}

/// The last `Exited` report's `next`.
fn last_next(sim: &Sim) -> Option<Next> {
    sim.reports.iter().rev().find_map(|r| match r {
        Report::Exited { next, .. } => Some(*next),
        _ => None,
    })
}

/// Regression (issue 15.3): with a worker killed from outside every 300 ms,
/// every slot backed off on its own, the backoff climbed to 5 s and both
/// slots sat empty while requests hung. Kills now never leave the app
/// without a worker for longer than one `restart_delay`, and never error it.
#[test]
fn a_worker_killed_every_300ms_never_leaves_the_app_empty_for_long() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    let mut longest_empty = Duration::ZERO;
    let mut empty_since: Option<MonoTime> = None;
    let mut seed = 7u64;
    let end = sim.now + Duration::from_secs(20);
    while sim.now < end {
        // kill -9 a random live worker (xorshift: the same "random" every run).
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let live: Vec<WorkerId> = sim.live.keys().copied().collect();
        if !live.is_empty() {
            let w = live[(seed % live.len() as u64) as usize];
            sim.exit(w, KILL);
        }
        // 300 ms, watched every 10 ms.
        for _ in 0..30 {
            if sim.live.is_empty() {
                let since = *empty_since.get_or_insert(sim.now);
                longest_empty = longest_empty.max(sim.now.saturating_duration_since(since));
            } else {
                empty_since = None;
            }
            sim.advance(ms(10));
        }
    }
    assert!(
        longest_empty <= ms(100),
        "the app was empty for {longest_empty:?}"
    );
    assert!(
        sim.machine.errored_slots().is_empty(),
        "kills are no crash loop"
    );
    assert!(sim.exit.is_none());
    assert!(sim.count(|r| matches!(r, Report::BackoffSkipped { .. })) > 0);
}

#[test]
fn a_killed_worker_waits_its_backoff_while_another_serves() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    let mut delays = Vec::new();
    for _ in 0..4 {
        let w = sim.worker_in(1);
        sim.exit(w, KILL);
        delays.push(last_next(&sim).unwrap());
        sim.advance(ms(900));
    }
    // The first had run 2 s (stable); then it doubles as for a crash:
    // slot 0 serves meanwhile.
    assert_eq!(
        delays,
        [0, 100, 200, 400].map(|d| Next::RestartIn(ms(d))).to_vec()
    );
    assert_eq!(sim.count(|r| matches!(r, Report::BackoffSkipped { .. })), 0);
}

#[test]
fn kills_do_not_count_toward_the_crash_loop_limit_but_crashes_do() {
    let mut p = policy();
    p.restart.max_restarts = 2;
    let mut sim = Sim::new(p, 1);
    for _ in 0..10 {
        let w = sim.worker_in(0);
        sim.exit(w, ExitStatus::Signal(Signal::SIGTERM));
        sim.advance(ms(200));
    }
    assert!(sim.machine.errored_slots().is_empty());
    assert_eq!(sim.machine.snapshot(sim.now).slots[0].unstable, 0);
    for _ in 0..3 {
        let w = started_in(&mut sim, 0);
        sim.exit(w, ExitStatus::Signal(Signal::SIGSEGV));
    }
    assert_eq!(
        sim.machine.errored_slots(),
        vec![0],
        "a fault signal is a crash"
    );
    assert!(matches!(sim.exit, Some(Outcome::Errored { .. })));
}

#[test]
fn crashes_keep_their_backoff_even_when_the_app_is_empty() {
    // A dependency is down: the worker exits 1 at every start. Starting it
    // sooner would only fail sooner and burn the crash-loop limit.
    let mut sim = Sim::new(policy(), 1);
    let w = sim.worker_in(0);
    sim.exit(w, ExitStatus::Code(1));
    assert_eq!(last_next(&sim), Some(Next::RestartIn(ms(100))));
    assert!(sim.live.is_empty());
    sim.advance(ms(99));
    assert!(sim.live.is_empty(), "no early start after a crash");
    sim.advance(ms(1));
    assert_eq!(sim.live.len(), 1);
    assert_eq!(sim.count(|r| matches!(r, Report::BackoffSkipped { .. })), 0);
}

#[test]
fn a_dependency_down_for_10s_is_ridden_out_and_serving_resumes_within_the_cap() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    // The dependency goes down: both workers die, and every start fails.
    let down_until = sim.now + Duration::from_secs(10);
    for w in sim.live.keys().copied().collect::<Vec<_>>() {
        sim.exit(w, ExitStatus::Code(1));
    }
    let mut serving_again = None;
    while serving_again.is_none() && sim.now < down_until + Duration::from_secs(30) {
        let live: Vec<WorkerId> = sim.live.keys().copied().collect();
        for w in live {
            if sim.now < down_until {
                sim.exit(w, ExitStatus::Code(1));
            } else {
                serving_again = Some(sim.now);
            }
        }
        sim.advance(ms(10));
    }
    let back = serving_again.expect("it serves again");
    let after = back.saturating_duration_since(down_until);
    assert!(
        after <= Duration::from_secs(5),
        "served again {after:?} after the return"
    );
    assert!(sim.machine.errored_slots().is_empty(), "not errored");
}

#[test]
fn a_killed_slot_in_backoff_starts_at_once_when_the_last_worker_crashes() {
    let mut p = policy();
    // Every exit is young.
    p.restart.min_uptime = Duration::from_secs(60);
    let mut sim = Sim::new(p, 2);
    sim.advance(Duration::from_secs(2));
    // Slot 1 killed young while slot 0 serves: 800 ms of backoff.
    for _ in 0..3 {
        let w = sim.worker_in(1);
        sim.advance(ms(10));
        sim.exit(w, KILL);
        sim.advance(ms(450));
    }
    let w = sim.worker_in(1);
    sim.exit(w, KILL);
    assert_eq!(last_next(&sim), Some(Next::RestartIn(ms(800))));
    // Now slot 0 crashes: the app is empty; slot 1 (killed) starts now.
    let w0 = sim.worker_in(0);
    sim.exit(w0, ExitStatus::Code(1));
    assert!(matches!(
        sim.reports
            .iter()
            .rev()
            .find(|r| !matches!(r, Report::Online { .. })),
        Some(Report::BackoffSkipped { slot: 1 })
    ));
    assert!(sim.machine.slots[1].current.is_some());
    assert!(
        sim.machine.slots[0].current.is_none(),
        "the crashed slot waits"
    );
}

#[test]
fn early_starts_of_an_empty_app_are_at_most_one_per_restart_delay() {
    let mut sim = Sim::new(policy(), 1);
    sim.advance(Duration::from_secs(2));
    let mut starts = Vec::new();
    // Every worker is killed as soon as it runs (an OOM kill at boot).
    while starts.len() < 10 {
        while let Some(w) = sim.live.keys().next().copied() {
            starts.push(sim.now);
            sim.exit(w, KILL);
        }
        sim.advance(ms(1));
    }
    // The first kill came after a stable run (replaced at once), the second
    // is the first early start; from then on, one per restart_delay.
    for pair in starts.windows(2).skip(2) {
        let gap = pair[1].saturating_duration_since(pair[0]);
        assert!(gap >= ms(100), "starts {gap:?} apart");
        assert!(gap <= ms(101), "but not slower: {gap:?}");
    }
}

// ---------------------------------------------------------------------------
// pm2 counting (pm2 process files): pm2 7's `handleExit`.

fn pm2_policy(delay: Pm2Delay) -> Policy {
    let mut p = policy();
    p.restart = RestartPolicy::pm2();
    p.restart.counting = Counting::Pm2(delay);
    p
}

#[test]
fn pm2_restart_delay_waits_before_every_restart_young_or_not() {
    let mut p = pm2_policy(Pm2Delay::Fixed);
    p.restart.restart_delay = ms(500);
    let mut sim = Sim::new(p, 1);
    sim.advance(Duration::from_secs(10));
    let w = sim.worker_in(0);
    sim.exit(w, ExitStatus::Code(0));
    assert_eq!(
        last_next(&sim),
        Some(Next::RestartIn(ms(500))),
        "even after 10 s up"
    );
    assert_eq!(
        sim.machine.snapshot(sim.now).slots[0].phase,
        SlotPhase::Backoff,
        "pm2's `waiting restart`"
    );
    sim.advance(ms(499));
    assert!(sim.live.is_empty());
    sim.advance(ms(1));
    let w = sim.worker_in(0);
    sim.exit(w, KILL);
    assert_eq!(
        last_next(&sim),
        Some(Next::RestartIn(ms(500))),
        "and after a kill"
    );
    // Without a delay: at once (pm2's default).
    let mut sim = Sim::new(pm2_policy(Pm2Delay::Fixed), 1);
    let w = sim.worker_in(0);
    sim.exit(w, ExitStatus::Code(1));
    assert_eq!(last_next(&sim), Some(Next::RestartIn(Duration::ZERO)));
    assert_eq!(sim.live.len(), 1);
}

#[test]
fn pm2_exp_backoff_grows_by_half_caps_and_resets_after_30s_up_and_on_reload() {
    let mut sim = Sim::new(pm2_policy(Pm2Delay::Exponential(ms(100))), 1);
    let mut delays = Vec::new();
    for _ in 0..6 {
        let w = sim.worker_in(0);
        sim.advance(Duration::from_secs(2));
        sim.exit(w, ExitStatus::Code(1));
        if let Some(Next::RestartIn(d)) = last_next(&sim) {
            delays.push(d.as_millis());
        }
        sim.advance(Duration::from_secs(20));
    }
    assert_eq!(delays, vec![100, 150, 225, 337, 505, 757]);
    // Up more than 30 s: back to the base.
    let w = sim.worker_in(0);
    sim.advance(Duration::from_secs(31));
    sim.exit(w, ExitStatus::Code(1));
    assert_eq!(last_next(&sim), Some(Next::RestartIn(ms(100))));
    sim.advance(ms(100));
    let w = sim.worker_in(0);
    sim.advance(Duration::from_secs(2));
    sim.exit(w, ExitStatus::Code(1));
    assert_eq!(last_next(&sim), Some(Next::RestartIn(ms(150))));
    // A reload (pm2's resetState) starts it over.
    sim.advance(ms(150));
    sim.input(Input::Command(Command::Reload));
    sim.advance(Duration::from_secs(2));
    sim.finish_stopped();
    let w = sim.worker_in(0);
    sim.exit(w, ExitStatus::Code(1));
    assert_eq!(last_next(&sim), Some(Next::RestartIn(ms(100))));
}

#[test]
fn pm2_counts_unstable_exits_only_within_min_uptime_times_max_restarts() {
    // pm2 7, seen: restart_delay 1500, max_restarts 3 never errored (each
    // unstable exit comes later than 3 s after the start); without the
    // delay it errored.
    let mut p = pm2_policy(Pm2Delay::Fixed);
    p.restart.max_restarts = 3;
    p.restart.restart_delay = ms(1500);
    let mut sim = Sim::new(p.clone(), 1);
    for _ in 0..10 {
        let w = sim.worker_in(0);
        sim.exit(w, ExitStatus::Code(1));
        sim.advance(ms(1500));
    }
    assert!(sim.machine.errored_slots().is_empty());
    assert_eq!(sim.machine.snapshot(sim.now).slots[0].unstable, 2);

    p.restart.restart_delay = Duration::ZERO;
    let mut sim = Sim::new(p, 1);
    let mut nexts = Vec::new();
    for _ in 0..3 {
        let w = sim.worker_in(0);
        sim.exit(w, ExitStatus::Code(1));
        nexts.push(last_next(&sim).unwrap());
    }
    assert_eq!(
        nexts,
        vec![
            Next::RestartIn(Duration::ZERO),
            Next::RestartIn(Duration::ZERO),
            Next::Errored { crashes: 3 }
        ]
    );
    assert_eq!(
        sim.machine.snapshot(sim.now).slots[0].unstable,
        0,
        "pm2 forgets the count once errored"
    );
}

#[test]
fn pm2_unstable_restarts_survive_a_stable_run_and_kills_count_too() {
    let mut p = pm2_policy(Pm2Delay::Fixed);
    p.restart.max_restarts = 5;
    let mut sim = Sim::new(p, 1);
    for up in [10, 10, 2000, 10] {
        let w = sim.worker_in(0);
        sim.advance(ms(up));
        sim.exit(w, KILL);
    }
    // Three young exits; the stable run in between reset nothing.
    assert_eq!(sim.machine.snapshot(sim.now).slots[0].unstable, 3);
    for _ in 0..2 {
        let w = sim.worker_in(0);
        sim.exit(w, KILL);
    }
    assert_eq!(sim.machine.errored_slots(), vec![0]);
    assert_eq!(sim.count(|r| matches!(r, Report::BackoffSkipped { .. })), 0);
}

#[test]
fn stop_exit_codes_are_not_restarted_and_a_signal_is_never_one_of_them() {
    for counting in [Counting::Herd, Counting::Pm2(Pm2Delay::Fixed)] {
        let mut p = policy();
        p.restart.counting = counting;
        p.restart.stop_exit_codes = vec![0, 3];
        // With a delay too: pm2 leaves such a process stuck in `waiting
        // restart`; herd says it stopped.
        p.restart.restart_delay = ms(1000);
        let mut sim = Sim::new(p, 3);
        sim.advance(Duration::from_secs(2));
        let (a, b, c) = (sim.worker_in(0), sim.worker_in(1), sim.worker_in(2));
        sim.exit(a, ExitStatus::Code(3));
        assert_eq!(last_next(&sim), Some(Next::StopExitCode(3)));
        sim.exit(b, KILL);
        assert!(
            matches!(last_next(&sim), Some(Next::RestartIn(_))),
            "{counting:?}"
        );
        sim.exit(c, ExitStatus::Code(0));
        let snap = sim.machine.snapshot(sim.now);
        assert_eq!(snap.slots[0].phase, SlotPhase::Done, "{counting:?}");
        assert_eq!(snap.slots[2].phase, SlotPhase::Done, "{counting:?}");
        sim.advance(Duration::from_secs(5));
        assert_eq!(sim.live.len(), 1, "only the killed one came back");
    }
}

#[test]
fn autorestart_false_never_leaves_the_slot_waiting() {
    let mut p = pm2_policy(Pm2Delay::Exponential(ms(100)));
    p.restart.mode = RestartMode::Never;
    let mut sim = Sim::new(p, 2);
    let w = sim.worker_in(0);
    sim.exit(w, ExitStatus::Code(1));
    assert_eq!(last_next(&sim), Some(Next::NoRestart));
    assert_eq!(
        sim.machine.snapshot(sim.now).slots[0].phase,
        SlotPhase::Done
    );
    let w = sim.worker_in(1);
    sim.exit(w, ExitStatus::Code(0));
    assert_eq!(sim.exit, Some(Outcome::Completed { success: false }));
}

// ---------------------------------------------------------------------------
// wait_ready: online at the listen timeout.

#[test]
fn a_worker_that_never_says_ready_is_online_at_the_listen_timeout_with_one_warning() {
    let mut p = policy();
    p.readiness = Readiness::Signalled { late: Late::Ready };
    let mut sim = Sim::new(p, 2);
    sim.advance(ms(2999));
    assert_eq!(sim.count(|r| matches!(r, Report::Ready { .. })), 0);
    sim.advance(ms(1));
    assert_eq!(sim.count(|r| matches!(r, Report::Ready { .. })), 2);
    assert_eq!(sim.count(|r| matches!(r, Report::ReadyAssumed { .. })), 1);
    assert!(sim.machine.accepting(sim.worker_in(0)));
    // A reload does not abort: each replacement is online at the timeout.
    let old = [sim.worker_in(0), sim.worker_in(1)];
    sim.input(Input::Command(Command::Reload));
    sim.advance(Duration::from_secs(3));
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.count(|r| *r == Report::ReloadFinished), 1);
    assert_eq!(sim.count(|r| matches!(r, Report::ReloadAborted { .. })), 0);
    assert_eq!(sim.stopped, old.to_vec());
    assert_eq!(
        sim.count(|r| matches!(r, Report::ReadyAssumed { .. })),
        1,
        "said once"
    );
    // One that says so in time is ready then.
    let mut sim = Sim::new(
        Policy {
            readiness: Readiness::Signalled { late: Late::Ready },
            ..policy()
        },
        1,
    );
    sim.advance(ms(200));
    let w = sim.worker_in(0);
    sim.input(Input::Ready { worker: w });
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.count(|r| matches!(r, Report::Ready { .. })), 1);
    assert_eq!(sim.count(|r| matches!(r, Report::ReadyAssumed { .. })), 0);
}

/// The live workers of each slot (stopping ones included), as the sim sees them.
fn workers_per_slot(sim: &Sim) -> BTreeMap<Slot, usize> {
    let mut n = BTreeMap::new();
    for (slot, _) in sim.live.values() {
        *n.entry(*slot).or_default() += 1;
    }
    n
}

#[test]
fn a_stop_first_reload_stops_each_worker_before_its_successor_starts() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    let old = [sim.worker_in(0), sim.worker_in(1)];
    sim.machine.set_reload_order(ReloadOrder::StopFirst);
    sim.input(Input::Command(Command::Reload));
    assert_eq!(sim.count(|r| *r == Report::Restarting { slot: 0 }), 1);
    assert_eq!(sim.stopped, vec![old[0]], "slot 0's worker stops first");
    assert_eq!(sim.live.len(), 2, "no successor while it drains");
    sim.advance(Duration::from_millis(500));
    assert_eq!(sim.live.len(), 2, "still none: it has not exited");
    sim.exit(old[0], ExitStatus::Code(0));
    let successor = sim.machine.slots[0]
        .successor
        .expect("its successor starts now");
    assert_eq!(workers_per_slot(&sim)[&0], 1);
    assert!(sim.stopped == vec![old[0]], "slot 1 serves meanwhile");
    sim.advance(Duration::from_millis(1000));
    assert_eq!(sim.worker_in(0), successor, "ready: it holds the slot");
    assert_eq!(sim.stopped, old.to_vec(), "then slot 1's turn");
    assert_eq!(workers_per_slot(&sim)[&1], 1);
    sim.finish_stopped();
    sim.advance(Duration::from_millis(1000));
    assert_eq!(sim.count(|r| *r == Report::ReloadFinished), 1);
    assert_eq!(sim.count(|r| matches!(r, Report::ReloadAborted { .. })), 0);
    assert_eq!(sim.live.len(), 2);
    assert!(!old.contains(&sim.worker_in(0)) && !old.contains(&sim.worker_in(1)));
    assert_eq!(sim.machine.snapshot(sim.now).slots[1].restarts, 1);
}

#[test]
fn a_stop_first_reload_whose_new_version_cannot_start_reports_why_and_the_others_serve() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    let old1 = sim.worker_in(1);
    sim.machine.set_reload_order(ReloadOrder::StopFirst);
    sim.input(Input::Command(Command::Reload));
    sim.finish_stopped();
    let successor = sim.machine.slots[0].successor.unwrap();
    sim.exit(successor, ExitStatus::Code(1));
    assert!(sim.reports.iter().any(|r| matches!(
        r,
        Report::ReloadAborted {
            slot: 0,
            reason: AbortReason::Exited(ExitStatus::Code(1)),
            old_serving: false,
        }
    )));
    assert!(!sim.machine.reloading());
    assert_eq!(sim.worker_in(1), old1, "slot 1 keeps serving, untouched");
    assert!(!sim.stopped.contains(&old1));
    // Slot 0 is left to its restart policy (a backoff, then a new try).
    assert_eq!(
        sim.machine.snapshot(sim.now).slots[0].phase,
        SlotPhase::Backoff
    );
    // A spawn that fails outright is reported the same way.
    sim.advance(Duration::from_secs(2));
    sim.fail_spawns = true;
    sim.input(Input::Command(Command::Replace(1)));
    sim.finish_stopped();
    assert!(sim.reports.iter().any(|r| matches!(
        r,
        Report::ReloadAborted {
            slot: 1,
            reason: AbortReason::SpawnFailed(_),
            old_serving: false,
        }
    )));
}

#[test]
fn a_stop_first_replacement_says_restarting_and_waits_for_a_draining_predecessor() {
    let mut sim = Sim::new(policy(), 1);
    sim.advance(Duration::from_secs(2));
    // A zero-downtime replacement whose old worker is still draining ...
    let first = sim.worker_in(0);
    sim.input(Input::Command(Command::Replace(0)));
    sim.advance(Duration::from_millis(1000));
    assert_eq!(sim.stopped, vec![first]);
    let second = sim.worker_in(0);
    // ... then a stop-first one: its successor waits for both to be gone.
    sim.machine.set_reload_order(ReloadOrder::StopFirst);
    sim.input(Input::Command(Command::Replace(0)));
    assert_eq!(sim.count(|r| *r == Report::Restarting { slot: 0 }), 1);
    assert_eq!(sim.count(|r| matches!(r, Report::Replacing { .. })), 1);
    sim.exit(second, ExitStatus::Code(0));
    assert!(
        sim.machine.slots[0].successor.is_none(),
        "{first:?} still drains"
    );
    sim.exit(first, ExitStatus::Code(0));
    assert!(sim.machine.slots[0].successor.is_some());
    sim.advance(Duration::from_millis(1000));
    assert_eq!(sim.count(|r| *r == Report::ReloadFinished), 2);
}

#[test]
fn a_reload_keeps_the_order_it_began_with_and_a_stop_ends_the_wait() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    sim.machine.set_reload_order(ReloadOrder::StopFirst);
    sim.input(Input::Command(Command::Reload));
    sim.machine.set_reload_order(ReloadOrder::StartFirst);
    sim.finish_stopped();
    sim.advance(Duration::from_millis(1000));
    assert_eq!(sim.count(|r| *r == Report::Restarting { slot: 1 }), 1);
    assert_eq!(workers_per_slot(&sim)[&1], 1, "slot 1 stopped first too");
    // A stop while slot 1 waits for its worker to go: nothing new starts.
    sim.input(Input::Command(Command::Stop));
    sim.finish_stopped();
    sim.advance(Duration::from_secs(5));
    assert!(sim.live.is_empty());
    assert_eq!(sim.exit, Some(Outcome::Stopped));
}

#[derive(Debug, Clone)]
enum Op {
    ExitWorker(usize, i32),
    KillWorker(usize),
    Ready(usize),
    Advance(u64),
    Reload,
    ScaleUp,
    ScaleDown,
    Replace(usize),
    FailSpawns(bool),
    HoldSignal(bool),
    StopFirst(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..8usize, 0..3i32).prop_map(|(w, c)| Op::ExitWorker(w, c)),
        (0..8usize).prop_map(Op::KillWorker),
        (0..8usize).prop_map(Op::Ready),
        (0..3000u64).prop_map(Op::Advance),
        Just(Op::Reload),
        Just(Op::ScaleUp),
        Just(Op::ScaleDown),
        (0..4usize).prop_map(Op::Replace),
        any::<bool>().prop_map(Op::FailSpawns),
        any::<bool>().prop_map(Op::HoldSignal),
        any::<bool>().prop_map(Op::StopFirst),
    ]
}

proptest! {
    /// Whatever happens, the machine keeps its invariants, and a stop always
    /// ends with every worker gone and one `Exit`.
    #[test]
    fn invariants_hold_and_stop_always_finishes(
        n in 1..4usize,
        readiness in 0..3u8,
        counting in 0..3u8,
        stop_code in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..60),
    ) {
        let mut p = policy();
        p.restart.max_restarts = 3;
        p.readiness = match readiness {
            0 => p.readiness,
            1 => Readiness::Signalled { late: Late::Abort },
            _ => Readiness::Signalled { late: Late::Ready },
        };
        p.restart.counting = match counting {
            0 => Counting::Herd,
            1 => Counting::Pm2(Pm2Delay::Fixed),
            _ => Counting::Pm2(Pm2Delay::Exponential(Duration::from_millis(100))),
        };
        if stop_code {
            p.restart.stop_exit_codes = vec![2];
        }
        let herd_counting = p.restart.counting == Counting::Herd;
        let mut sim = Sim::new(p, n);
        for op in ops {
            match op {
                Op::ExitWorker(i, code) => {
                    if let Some(&w) = sim.live.keys().nth(i % sim.live.len().max(1)) {
                        sim.exit(w, ExitStatus::Code(code));
                    }
                }
                Op::KillWorker(i) => {
                    if let Some(&w) = sim.live.keys().nth(i % sim.live.len().max(1)) {
                        sim.exit(w, ExitStatus::Signal(Signal::SIGKILL));
                    }
                }
                Op::Ready(i) => {
                    if let Some(&w) = sim.live.keys().nth(i % sim.live.len().max(1)) {
                        sim.input(Input::Ready { worker: w });
                    }
                }
                Op::Advance(ms) => sim.advance(Duration::from_millis(ms)),
                Op::Reload => sim.input(Input::Command(Command::Reload)),
                Op::ScaleUp => sim.input(Input::Command(Command::ScaleUp)),
                Op::ScaleDown => sim.input(Input::Command(Command::ScaleDown)),
                Op::Replace(slot) => sim.input(Input::Command(Command::Replace(slot))),
                Op::FailSpawns(f) => sim.fail_spawns = f,
                Op::HoldSignal(h) => sim.hold_signal = h,
                Op::StopFirst(f) => sim.machine.set_reload_order(if f {
                    ReloadOrder::StopFirst
                } else {
                    ReloadOrder::StartFirst
                }),
            }
            // Invariants.
            let m = &sim.machine;
            for (i, slot) in m.slots.iter().enumerate() {
                for w in [slot.current, slot.successor].into_iter().flatten() {
                    prop_assert_eq!(m.workers[&w].slot, i);
                    prop_assert!(m.workers[&w].phase != Phase::Stopping);
                    prop_assert!(sim.live.contains_key(&w));
                }
                prop_assert!(slot.current.is_none() || slot.current != slot.successor);
                if slot.successor.is_some() {
                    prop_assert_eq!(m.reload, Some(i));
                }
                // Stop-first: a successor never runs beside another worker of its slot.
                if slot.successor.is_some() && m.reload_order == ReloadOrder::StopFirst {
                    prop_assert_eq!(workers_per_slot(&sim).get(&i).copied(), Some(1));
                }
            }
            // The machine knows exactly the live processes.
            let known: Vec<WorkerId> = m.workers.keys().copied().collect();
            let live: Vec<WorkerId> = sim.live.keys().copied().collect();
            prop_assert_eq!(known, live);
            if sim.exit.is_some() {
                prop_assert!(sim.live.is_empty());
            }
            // herd counting: an empty app with a killed slot waiting has its
            // early start on the way.
            let empty = m.slots.iter().all(|s| s.current.is_none() && s.successor.is_none());
            let killed_waiting = m.slots.iter().any(|s| {
                matches!(s.state, SlotState::Backoff { rescuable: true, .. })
            });
            if herd_counting && m.mode == Mode::Running && empty && killed_waiting {
                let on_its_way = m.rescue_attempt.is_some_and(|due| {
                    m.slots.iter().any(|s| {
                        matches!(s.state, SlotState::Backoff { attempt, rescuable: true } if attempt == due)
                    })
                });
                prop_assert!(on_its_way, "an early start is on its way");
            }
        }
        if sim.exit.is_none() {
            sim.input(Input::Command(Command::Stop));
            sim.advance(Duration::from_secs(10));
            prop_assert!(sim.live.is_empty(), "stop leaves nothing running");
            prop_assert!(sim.exit.is_some(), "stop ends the machine");
            let pids = sim.pids();
            prop_assert!(pids.is_empty());
        }
    }
}

// Tickets: each command given with `Input::Ask` is answered once, by its own end.

impl Sim {
    fn ask(&mut self, command: Command, ticket: u64) {
        self.input(Input::Ask {
            command,
            ticket: Ticket(ticket),
        });
    }

    /// The answers given so far, in order.
    fn answers(&self) -> Vec<(u64, Answer)> {
        self.reports
            .iter()
            .filter_map(|r| match r {
                Report::Answered { ticket, answer } => Some((ticket.0, answer.clone())),
                _ => None,
            })
            .collect()
    }
}

/// The bug this pins: a reload was answered by whichever reload-type report
/// came first — here the end of a replacement someone else (the memory
/// limit) asked for.
#[test]
fn a_reload_is_answered_by_its_own_end_not_by_an_earlier_replacement() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    sim.input(Input::Command(Command::Replace(1)));
    sim.ask(Command::Reload, 7);
    assert_eq!(sim.count(|r| *r == Report::ReloadQueued), 1);
    sim.advance(Duration::from_secs(1)); // the replacement is done
    assert_eq!(sim.count(|r| *r == Report::ReloadFinished), 1);
    assert_eq!(sim.answers(), vec![], "the replacement's end is not ours");
    sim.advance(Duration::from_secs(1)); // slot 0 of our reload
    assert_eq!(sim.answers(), vec![]);
    sim.advance(Duration::from_secs(1)); // slot 1: our reload ends
    assert_eq!(sim.count(|r| *r == Report::ReloadFinished), 2);
    assert_eq!(sim.answers(), vec![(7, Answer::Done)]);
    let at = sim.reports.len() - 1;
    assert_eq!(
        sim.reports[at - 1],
        Report::ReloadFinished,
        "answered right after its end"
    );
}

#[test]
fn a_replace_and_a_reload_interleaved_each_get_their_own_answer() {
    let mut sim = Sim::new(policy(), 2);
    sim.advance(Duration::from_secs(2));
    sim.ask(Command::Replace(0), 1);
    sim.ask(Command::Reload, 2);
    // A replacement asked for while a reload runs is refused, with its reason.
    sim.ask(Command::Replace(1), 3);
    assert_eq!(
        sim.answers(),
        vec![(
            3,
            Answer::Refused("a reload is running; it replaces this worker too".into())
        )]
    );
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.answers()[1], (1, Answer::Done));
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.answers()[2], (2, Answer::Done));
    assert_eq!(sim.answers().len(), 3);
}

#[test]
fn queued_reloads_share_one_answer_and_a_stop_aborts_them_then_is_done_at_exit() {
    let mut sim = Sim::new(policy(), 1);
    sim.advance(Duration::from_secs(2));
    sim.ask(Command::Reload, 1);
    sim.ask(Command::Reload, 2);
    sim.ask(Command::Reload, 3);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.answers(), vec![(1, Answer::Done)]);
    sim.ask(Command::Stop, 4);
    let aborted = Answer::stopping();
    assert_eq!(
        sim.answers(),
        vec![(1, Answer::Done), (2, aborted.clone()), (3, aborted)]
    );
    sim.ask(Command::Stop, 5);
    sim.finish_stopped();
    assert_eq!(sim.exit, Some(Outcome::Stopped));
    let answers = sim.answers();
    assert_eq!(&answers[3..], &[(4, Answer::Done), (5, Answer::Done)]);
    assert!(
        matches!(sim.reports.last(), Some(Report::Answered { .. })),
        "the stops are answered before the exit"
    );
    // After the end, an ask is refused rather than never answered.
    let late = sim.machine.handle(
        sim.now,
        Input::Ask {
            command: Command::Reload,
            ticket: Ticket(6),
        },
    );
    assert!(matches!(
        late.as_slice(),
        [Action::Report(Report::Answered {
            ticket: Ticket(6),
            answer: Answer::Refused(_)
        })]
    ));
}

#[test]
fn a_failed_replacement_aborts_its_reload_with_the_reason_and_the_queued_one_runs_on() {
    let mut sim = Sim::new(policy(), 1);
    sim.advance(Duration::from_secs(2));
    sim.ask(Command::Reload, 1);
    sim.ask(Command::Reload, 2);
    let successor = sim.machine.slots[0].successor.unwrap();
    sim.exit(successor, ExitStatus::Code(3));
    assert_eq!(
        sim.answers(),
        vec![(
            1,
            Answer::Aborted {
                reason: AbortReason::Exited(ExitStatus::Code(3)),
                slot: Some(0),
                old_serving: true,
            }
        )]
    );
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.answers()[1], (2, Answer::Done));
}

#[test]
fn start_and_scale_are_answered_at_once() {
    let mut m = Machine::new(policy(), 1);
    let now = MonoTime::now();
    let ask = |m: &mut Machine, command, t| {
        m.handle(
            now,
            Input::Ask {
                command,
                ticket: Ticket(t),
            },
        )
    };
    let answered = |actions: &[Action], t| {
        actions.iter().find_map(|a| match a {
            Action::Report(Report::Answered { ticket, answer }) if *ticket == Ticket(t) => {
                Some(answer.clone())
            }
            _ => None,
        })
    };
    let a = ask(&mut m, Command::Reload, 1);
    assert_eq!(
        answered(&a, 1),
        Some(Answer::Refused("not started yet".into()))
    );
    let a = ask(&mut m, Command::Start, 2);
    assert_eq!(answered(&a, 2), Some(Answer::Done));
    let a = ask(&mut m, Command::Scale(3), 3);
    assert_eq!(answered(&a, 3), Some(Answer::Done));
    let a = ask(&mut m, Command::Scale(0), 4);
    assert!(matches!(answered(&a, 4), Some(Answer::Refused(_))));
    let a = m.handle(now, Input::Command(Command::Reload));
    assert_eq!(
        a.iter()
            .filter(|a| matches!(a, Action::Report(Report::Answered { .. })))
            .count(),
        0,
        "a command without a ticket is not answered"
    );
}

proptest! {
    /// Whatever happens, every ticket is answered exactly once — at the
    /// latest when a stop has ended the machine.
    #[test]
    fn every_ticket_is_answered_exactly_once(
        n in 1..4usize,
        ops in proptest::collection::vec(op(), 0..60),
        tracked in proptest::collection::vec(any::<bool>(), 60),
    ) {
        let mut p = policy();
        p.restart.max_restarts = 3;
        let mut sim = Sim::new(p, n);
        let mut asked = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let command = match op {
                Op::Reload => Some(Command::Reload),
                Op::ScaleUp => Some(Command::ScaleUp),
                Op::ScaleDown => Some(Command::ScaleDown),
                Op::Replace(slot) => Some(Command::Replace(slot)),
                Op::ExitWorker(i, code) => {
                    if let Some(&w) = sim.live.keys().nth(i % sim.live.len().max(1)) {
                        sim.exit(w, ExitStatus::Code(code));
                    }
                    None
                }
                Op::Ready(i) => {
                    if let Some(&w) = sim.live.keys().nth(i % sim.live.len().max(1)) {
                        sim.input(Input::Ready { worker: w });
                    }
                    None
                }
                Op::Advance(ms) => {
                    sim.advance(Duration::from_millis(ms));
                    None
                }
                Op::FailSpawns(f) => {
                    sim.fail_spawns = f;
                    None
                }
                Op::HoldSignal(h) => {
                    sim.hold_signal = h;
                    None
                }
                Op::KillWorker(i) => {
                    if let Some(&w) = sim.live.keys().nth(i % sim.live.len().max(1)) {
                        sim.exit(w, ExitStatus::Signal(Signal::SIGKILL));
                    }
                    None
                }
                Op::StopFirst(f) => {
                    sim.machine.set_reload_order(if f {
                        ReloadOrder::StopFirst
                    } else {
                        ReloadOrder::StartFirst
                    });
                    None
                }
            };
            match command {
                Some(command) if tracked[i] => {
                    let t = i as u64 + 1;
                    asked.push(t);
                    sim.ask(command, t);
                }
                Some(command) => sim.input(Input::Command(command)),
                None => {}
            }
        }
        if sim.exit.is_none() {
            asked.push(1000);
            sim.ask(Command::Stop, 1000);
            sim.finish_stopped();
            sim.advance(Duration::from_secs(10));
        }
        prop_assert!(sim.exit.is_some());
        // Every ticket is answered once, including those asked after the
        // machine ended on its own (refused), and no answer is invented.
        let mut answered: Vec<u64> = sim.answers().iter().map(|(t, _)| *t).collect();
        answered.sort_unstable();
        prop_assert_eq!(answered, asked);
    }
}
