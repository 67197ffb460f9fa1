//! Choosing the worker for the next client connection in round-robin mode.
//! Pure: the caller describes each worker as it is now ([`WorkerLoad`]: may
//! it take a connection, has it said it is ready, how many connections it
//! has not answered for and how long the oldest has waited) and the
//! [`Picker`] of that listener, which knows whose turn it is, picks.
//!
//! The rule ([`Picker::pick`]):
//! 1. WorkerLoads that are ready and not stuck take **turns**. Whose turn it is
//!    gets the connection if it is **prompt** (nothing handed to it has
//!    waited [`PROMPT`] yet), whatever the others' unanswered counts: a worker
//!    answers for a connection when it takes it, not when it has served it,
//!    so "fewest unanswered" measures who acknowledges fastest, not who has
//!    less work. Preferring it sent a burst of CPU-bound requests to the
//!    worker that had not started on its first request yet (it took every
//!    connection at once, then served them one after the other: splits of
//!    3/7 where 5/5 was possible), and under CPU contention it sent more to
//!    whichever worker the kernel happened to run (398/602, 800/200 over
//!    1,000 connections).
//! 2. When it is a **slow** worker's turn (a connection has waited
//!    [`PROMPT`], none [`STUCK`]), the connection goes to the worker with the
//!    fewest unanswered (prompt before slow among equals, then by turn) —
//!    the slow one itself if nobody has fewer. So a worker that is merely
//!    late (or whose answer herd has not read yet) keeps about its share,
//!    and one that stopped answering gets a connection only when the others
//!    have more waiting than it does.
//! 3. Only when every ready worker is **stuck** (a connection waited
//!    [`STUCK`]: blocked in a computation, most likely), and then only when
//!    none is ready at all, workers that listen but have not said they are
//!    ready: the fewest unanswered, then the youngest oldest one, then by
//!    turn.
//!
//! So a draining worker never gets a connection, a worker blocked on CPU
//! gets its turns only until its first unanswered connection is [`PROMPT`]
//! old (then as Node's own round-robin would: when the others have more
//! waiting), and equal workers get equal shares whatever their timing.

use std::time::Duration;

/// A worker whose oldest unanswered connection waited this long is no
/// longer taking turns: the prompt ones get the connections. A free Node or
/// herd-cluster worker answers within microseconds; this leaves room for a
/// few scheduler slices on a loaded machine.
pub(crate) const PROMPT: Duration = Duration::from_millis(5);
/// A worker whose oldest unanswered connection waited this long is busy (a
/// CPU-bound handler, like the tutorials' `/check`): it gets one only when
/// every other worker is stuck too.
pub(crate) const STUCK: Duration = Duration::from_millis(50);

/// One worker as the caller sees it at the moment of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct WorkerLoad {
    /// It may take a connection now (its channel is up, it is not stopping,
    /// it is below its in-flight cap, it did not refuse this connection).
    pub eligible: bool,
    /// It said it is ready; otherwise it only listens.
    pub ready: bool,
    /// Connections handed to it that it has not answered for.
    pub unanswered: usize,
    /// How long the oldest of those has waited (`None` when there are none).
    pub oldest: Option<Duration>,
}

impl WorkerLoad {
    /// A ready worker with nothing unanswered.
    #[cfg(test)]
    pub(crate) fn idle() -> WorkerLoad {
        WorkerLoad {
            eligible: true,
            ready: true,
            unanswered: 0,
            oldest: None,
        }
    }

    /// The worker's class: lower is better; `None` when it may not take one.
    fn class(&self) -> Option<u8> {
        if !self.eligible {
            return None;
        }
        let waited = self.oldest.unwrap_or_default();
        Some(match () {
            _ if !self.ready => 3,
            _ if waited >= STUCK => 2,
            _ if waited >= PROMPT => 1,
            _ => 0,
        })
    }
}

/// The workers of one round-robin listener, in the order they take turns,
/// and whose turn it is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Picker<K> {
    workers: Vec<K>,
    next: usize,
}

impl<K> Default for Picker<K> {
    fn default() -> Self {
        Picker {
            workers: Vec::new(),
            next: 0,
        }
    }
}

impl<K: Copy + PartialEq> Picker<K> {
    pub(crate) fn add(&mut self, worker: K) {
        if !self.workers.contains(&worker) {
            self.workers.push(worker);
        }
    }

    pub(crate) fn remove(&mut self, worker: K) {
        if let Some(i) = self.workers.iter().position(|m| *m == worker) {
            self.workers.remove(i);
            if self.next > i {
                self.next -= 1;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The workers, in turn order.
    pub(crate) fn workers(&self) -> &[K] {
        &self.workers
    }

    /// The worker for the next connection: among those `load` accepts
    /// (`Some(load)`, any ordered measure, e.g. unacknowledged connections),
    /// the least loaded; the first such in turn order on a tie. `None` when
    /// no worker may take one now.
    #[cfg(test)]
    pub(crate) fn pick_least_loaded<L: Ord>(&mut self, load: impl Fn(K) -> Option<L>) -> Option<K> {
        let n = self.workers.len();
        let mut best: Option<(L, usize)> = None; // (load, index)
        for step in 0..n {
            let i = (self.next + step) % n;
            if let Some(l) = load(self.workers[i]) {
                if best.as_ref().is_none_or(|(b, _)| l < *b) {
                    best = Some((l, i));
                }
            }
        }
        let (_, i) = best?;
        self.next = (i + 1) % n;
        Some(self.workers[i])
    }

    /// The worker for the next connection, by the rule in the module docs.
    /// `None` when no worker may take one now.
    pub(crate) fn pick(&mut self, load: impl Fn(K) -> Option<WorkerLoad>) -> Option<K> {
        let n = self.workers.len();
        // In turn order, starting with whose turn it is.
        let order: Vec<(usize, WorkerLoad, u8)> = (0..n)
            .map(|step| (self.next + step) % n)
            .filter_map(|i| {
                let m = load(self.workers[i])?;
                Some((i, m, m.class()?))
            })
            .collect();
        let best = order.iter().map(|&(_, _, c)| c).min()?;
        let picked = if best <= 1 {
            let turn = order.iter().find(|&&(_, _, c)| c <= 1)?;
            if turn.2 == 0 {
                turn.0
            } else {
                order
                    .iter()
                    .filter(|&&(_, _, c)| c <= 1)
                    .min_by_key(|&&(_, m, c)| (m.unanswered, c))?
                    .0
            }
        } else {
            order
                .iter()
                .filter(|&&(_, _, c)| c == best)
                .min_by_key(|&&(_, m, _)| (m.unanswered, m.oldest.unwrap_or_default()))?
                .0
        };
        self.next = (picked + 1) % n;
        Some(self.workers[picked])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_workers_take_turns() {
        let mut r = Picker::default();
        for w in [1, 2, 3] {
            r.add(w);
        }
        let picks: Vec<i32> = (0..6)
            .map(|_| r.pick_least_loaded(|_| Some(0)).unwrap())
            .collect();
        assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn the_least_loaded_wins_and_ineligible_workers_are_skipped() {
        let mut r = Picker::default();
        for w in [1, 2, 3] {
            r.add(w);
        }
        // 1 is stuck with 5 unacknowledged connections, 3 is draining.
        let load = |w| match w {
            1 => Some(5),
            2 => Some(0),
            _ => None,
        };
        for _ in 0..4 {
            assert_eq!(r.pick_least_loaded(load), Some(2));
        }
        assert_eq!(r.pick_least_loaded(|_| None::<usize>), None);
    }

    #[test]
    fn a_compound_load_breaks_ties_by_its_second_part() {
        let mut r = Picker::default();
        r.add(1);
        r.add(2);
        // Both have one connection unanswered; 1's has waited longer.
        let load = |w| Some(if w == 1 { (1, 40) } else { (1, 2) });
        assert_eq!(r.pick_least_loaded(load), Some(2));
        assert_eq!(r.pick_least_loaded(load), Some(2));
    }

    #[test]
    fn removing_workers_keeps_the_turn_order() {
        let mut r = Picker::default();
        for w in [1, 2, 3] {
            r.add(w);
        }
        assert_eq!(r.pick_least_loaded(|_| Some(0)), Some(1));
        assert_eq!(r.pick_least_loaded(|_| Some(0)), Some(2));
        r.remove(1);
        assert_eq!(r.pick_least_loaded(|_| Some(0)), Some(3));
        assert_eq!(r.pick_least_loaded(|_| Some(0)), Some(2));
        r.remove(2);
        r.remove(3);
        assert!(r.is_empty());
        assert_eq!(r.pick_least_loaded(|_| Some(0)), None);
    }

    #[test]
    fn spread_is_even_over_many_picks() {
        let mut r = Picker::default();
        r.add(0usize);
        r.add(1usize);
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[r.pick_least_loaded(|_| Some(0)).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 500]);
    }

    // --- pick: connections to workers, with timing -------------------

    use std::collections::VecDeque;

    const MS: Duration = Duration::from_millis(1);

    /// A simulated worker, seen from the supervisor.
    struct Sim {
        /// Handed over, not answered yet: when each was handed over.
        unanswered: VecDeque<Duration>,
        /// It computes the connection it took until then.
        busy_until: Duration,
        /// Takes every connection the moment it arrives, before serving any
        /// (a worker whose first request's bytes have not arrived yet).
        eager: bool,
        /// What one request costs it.
        cost: Duration,
        got: usize,
    }

    impl Sim {
        fn new(eager: bool, cost: Duration) -> Sim {
            Sim {
                unanswered: VecDeque::new(),
                busy_until: Duration::ZERO,
                eager,
                cost,
                got: 0,
            }
        }

        /// Answer what it would have answered by `now`.
        fn advance(&mut self, now: Duration) {
            if self.eager {
                self.unanswered.clear();
                return;
            }
            while let Some(&at) = self.unanswered.front() {
                let start = at.max(self.busy_until);
                if start > now {
                    break;
                }
                self.unanswered.pop_front();
                self.busy_until = start + self.cost;
            }
        }

        fn worker(&self, now: Duration) -> WorkerLoad {
            WorkerLoad {
                unanswered: self.unanswered.len(),
                oldest: self.unanswered.front().map(|&at| now - at),
                ..WorkerLoad::idle()
            }
        }
    }

    /// Connections arriving at `times`, picked by `pick`: how many each got.
    fn run(
        sims: &mut [Sim],
        times: impl IntoIterator<Item = Duration>,
        mut pick: impl FnMut(&mut Picker<usize>, &[WorkerLoad]) -> usize,
    ) -> Vec<usize> {
        let mut r = Picker::default();
        for i in 0..sims.len() {
            r.add(i);
        }
        for now in times {
            for s in sims.iter_mut() {
                s.advance(now);
            }
            let workers: Vec<WorkerLoad> = sims.iter().map(|s| s.worker(now)).collect();
            let w = pick(&mut r, &workers);
            sims[w].unanswered.push_back(now);
            sims[w].got += 1;
        }
        sims.iter().map(|s| s.got).collect()
    }

    fn new_rule(r: &mut Picker<usize>, m: &[WorkerLoad]) -> usize {
        r.pick(|w| Some(m[w])).unwrap()
    }

    /// The rule before: fewest unanswered, then the youngest oldest one.
    fn old_rule(r: &mut Picker<usize>, m: &[WorkerLoad]) -> usize {
        r.pick_least_loaded(|w| Some((m[w].unanswered, m[w].oldest.unwrap_or_default())))
            .unwrap()
    }

    /// Seed 003: ten CPU-bound requests (120 ms each) arrive together, 0.3 ms
    /// apart. Worker 0 starts computing its first at once; worker 1 takes
    /// connections as they come while its first request's bytes are still on
    /// the way. Both will serve everything they took, one after the other.
    fn burst() -> (Vec<Sim>, Vec<Duration>) {
        let sims = vec![Sim::new(false, 120 * MS), Sim::new(true, 120 * MS)];
        let times = (0..10)
            .map(|i| i * 300 * Duration::from_micros(1))
            .collect();
        (sims, times)
    }

    #[test]
    fn a_burst_is_split_evenly_whoever_answers_first() {
        let (mut sims, times) = burst();
        assert_eq!(run(&mut sims, times, new_rule), vec![5, 5]);
    }

    #[test]
    fn fewest_unanswered_sent_the_burst_to_the_worker_that_answered_fastest() {
        // Why the rule changed: the eager worker looked free and took 8,
        // so the last response came after 8 × 120 ms instead of 5 × 120 ms.
        let (mut sims, times) = burst();
        assert_eq!(run(&mut sims, times, old_rule), vec![2, 8]);
    }

    #[test]
    fn a_burst_against_two_busy_workers_alternates() {
        let mut sims = vec![Sim::new(false, 120 * MS), Sim::new(false, 120 * MS)];
        let times = (0..10).map(|i| i * MS);
        assert_eq!(run(&mut sims, times, new_rule), vec![5, 5]);
    }

    #[test]
    fn a_worker_answering_a_little_later_still_gets_its_half() {
        // Under CPU contention one worker answers 0.2 ms after the other:
        // it always has one connection unanswered when the next comes.
        let mut r = Picker::default();
        r.add(0usize);
        r.add(1usize);
        let late = WorkerLoad {
            unanswered: 1,
            oldest: Some(Duration::from_micros(200)),
            ..WorkerLoad::idle()
        };
        let m = [late, WorkerLoad::idle()];
        let mut counts = [0; 2];
        let mut old = [0; 2];
        let mut r_old = r.clone();
        for _ in 0..1000 {
            counts[new_rule(&mut r, &m)] += 1;
            old[old_rule(&mut r_old, &m)] += 1;
        }
        assert_eq!(counts, [500, 500]);
        assert_eq!(
            old,
            [0, 1000],
            "the rule before: everything to the quicker one"
        );
    }

    #[test]
    fn a_blocked_worker_gets_only_what_came_before_it_looked_slow() {
        // Worker 0 blocks for 3 s on the first connection it takes; worker 1
        // serves in 0.1 ms. A connection arrives every millisecond.
        let mut sims = vec![
            Sim::new(false, 3000 * MS),
            Sim::new(false, Duration::from_micros(100)),
        ];
        let got = run(&mut sims, (0..200).map(|i| i * MS), new_rule);
        // Its own plus its turns while its oldest unanswered is younger than
        // PROMPT (at 2, 4 and 6 ms): after that, nothing. (The rule before
        // gave it one: the price of not comparing unanswered counts among
        // prompt workers is what arrives within PROMPT of a block.)
        assert_eq!(got, vec![4, 196]);
        assert_eq!(sims[0].unanswered.len(), 3);
        let mut sims = vec![
            Sim::new(false, 3000 * MS),
            Sim::new(false, Duration::from_micros(100)),
        ];
        assert_eq!(
            run(&mut sims, (0..200).map(|i| i * MS), old_rule),
            vec![2, 198]
        );
    }

    #[test]
    fn slow_then_stuck_then_listening_workers_are_used_only_when_needed() {
        let mut r = Picker::default();
        for w in [0usize, 1, 2, 3] {
            r.add(w);
        }
        let slow = |n, ms| WorkerLoad {
            unanswered: n,
            oldest: Some(ms * MS),
            ..WorkerLoad::idle()
        };
        let listening = WorkerLoad {
            ready: false,
            ..WorkerLoad::idle()
        };
        let ineligible = WorkerLoad {
            eligible: false,
            ..WorkerLoad::idle()
        };
        // 0 is slow, 1 stuck, 2 only listens, 3 may not take one.
        let mut m = [slow(1, 10), slow(1, 60), listening, ineligible];
        assert_eq!(r.pick(|w| Some(m[w])), Some(0));
        // Among slow ones: the fewest unanswered, then the youngest.
        m[1] = slow(1, 7);
        m[0] = slow(2, 6);
        assert_eq!(r.pick(|w| Some(m[w])), Some(1));
        m[0] = slow(1, 6);
        assert_eq!(r.pick(|w| Some(m[w])), Some(0));
        m[0] = slow(1, 60);
        m[1] = slow(1, 70);
        assert_eq!(r.pick(|w| Some(m[w])), Some(0), "stuck: the youngest");
        m[0] = ineligible;
        m[1] = ineligible;
        assert_eq!(r.pick(|w| Some(m[w])), Some(2));
        m[2] = ineligible;
        assert_eq!(r.pick(|w| Some(m[w])), None);
        assert_eq!(r.pick(|_| None), None);
    }

    #[test]
    fn a_slow_worker_keeps_its_turn_unless_someone_has_fewer_waiting() {
        let mut r = Picker::default();
        r.add(0usize);
        r.add(1usize);
        let slow = |n| WorkerLoad {
            unanswered: n,
            oldest: Some(PROMPT),
            ..WorkerLoad::idle()
        };
        let prompt = |n| WorkerLoad {
            unanswered: n,
            oldest: (n > 0).then_some(PROMPT - MS),
            ..WorkerLoad::idle()
        };
        // 0's turn, it is slow with 1 waiting; 1 has 3, all young: 0 still.
        let m = [slow(1), prompt(3)];
        assert_eq!(r.pick(|w| Some(m[w])), Some(0));
        // 1's turn and prompt: 1, whatever it has waiting.
        assert_eq!(r.pick(|w| Some(m[w])), Some(1));
        // 0's turn, slow, as many waiting as 1: the prompt one.
        let m = [slow(2), prompt(2)];
        assert_eq!(r.pick(|w| Some(m[w])), Some(1));
        // 0's turn again (it was passed over): the idle one.
        let m = [slow(2), prompt(0)];
        assert_eq!(r.pick(|w| Some(m[w])), Some(1));
    }

    /// Seen with strace in seed 003: worker 0 took the first connection and
    /// answered, but herd had not read the answer yet when the other 9
    /// arrived 10 ms later. It looked slow; before, worker 1 (prompt, its
    /// connections all young) took all 9.
    #[test]
    fn a_burst_after_an_unread_answer_is_still_shared() {
        let mut r = Picker::default();
        r.add(0usize);
        r.add(1usize);
        let mut m = [
            WorkerLoad {
                unanswered: 1,
                oldest: Some(11 * MS),
                ..WorkerLoad::idle()
            },
            WorkerLoad::idle(),
        ];
        r.next = 1;
        let mut got = [1, 0];
        for i in 0..9 {
            let w = r.pick(|w| Some(m[w])).unwrap();
            got[w] += 1;
            m[w].unanswered += 1;
            if w == 1 && m[1].oldest.is_none() {
                m[1].oldest = Some(Duration::from_micros(30 * (9 - i)));
            }
        }
        assert_eq!(got, [5, 5]);
    }
}
