//! Choosing the worker for the next connection in round-robin mode. Pure:
//! the caller says, for each member, whether it may take a connection now
//! and how many it has not acknowledged yet; the rotation picks the least
//! loaded, taking turns among equals. So a draining worker never gets a
//! connection, and a worker stuck on CPU (its connections unacknowledged)
//! stops collecting a queue while the others keep answering.

/// The members of one round-robin listener, in the order they take turns.
#[derive(Debug, Clone)]
pub struct Rotation<K> {
    members: Vec<K>,
    next: usize,
}

impl<K> Default for Rotation<K> {
    fn default() -> Self {
        Rotation {
            members: Vec::new(),
            next: 0,
        }
    }
}

impl<K: Copy + PartialEq> Rotation<K> {
    pub fn add(&mut self, member: K) {
        if !self.members.contains(&member) {
            self.members.push(member);
        }
    }

    pub fn remove(&mut self, member: K) {
        if let Some(i) = self.members.iter().position(|m| *m == member) {
            self.members.remove(i);
            if self.next > i {
                self.next -= 1;
            }
        }
    }

    pub fn contains(&self, member: K) -> bool {
        self.members.contains(&member)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members, in turn order.
    pub fn members(&self) -> &[K] {
        &self.members
    }

    /// The member for the next connection: among those `load` accepts
    /// (`Some(load)`, any ordered measure, e.g. unacknowledged connections),
    /// the least loaded; the first such in turn order on a tie. `None` when
    /// no member may take one now.
    pub fn pick<L: Ord>(&mut self, load: impl Fn(K) -> Option<L>) -> Option<K> {
        let n = self.members.len();
        let mut best: Option<(L, usize)> = None; // (load, index)
        for step in 0..n {
            let i = (self.next + step) % n;
            if let Some(l) = load(self.members[i]) {
                if best.as_ref().is_none_or(|(b, _)| l < *b) {
                    best = Some((l, i));
                }
            }
        }
        let (_, i) = best?;
        self.next = (i + 1) % n;
        Some(self.members[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_members_take_turns() {
        let mut r = Rotation::default();
        for w in [1, 2, 3] {
            r.add(w);
        }
        let picks: Vec<i32> = (0..6).map(|_| r.pick(|_| Some(0)).unwrap()).collect();
        assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn the_least_loaded_wins_and_ineligible_members_are_skipped() {
        let mut r = Rotation::default();
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
            assert_eq!(r.pick(load), Some(2));
        }
        assert_eq!(r.pick(|_| None::<usize>), None);
    }

    #[test]
    fn a_compound_load_breaks_ties_by_its_second_part() {
        let mut r = Rotation::default();
        r.add(1);
        r.add(2);
        // Both have one connection unanswered; 1's has waited longer.
        let load = |w| Some(if w == 1 { (1, 40) } else { (1, 2) });
        assert_eq!(r.pick(load), Some(2));
        assert_eq!(r.pick(load), Some(2));
    }

    #[test]
    fn removing_members_keeps_the_turn_order() {
        let mut r = Rotation::default();
        for w in [1, 2, 3] {
            r.add(w);
        }
        assert_eq!(r.pick(|_| Some(0)), Some(1));
        assert_eq!(r.pick(|_| Some(0)), Some(2));
        r.remove(1);
        assert_eq!(r.pick(|_| Some(0)), Some(3));
        assert_eq!(r.pick(|_| Some(0)), Some(2));
        r.remove(2);
        r.remove(3);
        assert!(r.is_empty());
        assert_eq!(r.pick(|_| Some(0)), None);
    }

    #[test]
    fn spread_is_even_over_many_picks() {
        let mut r = Rotation::default();
        r.add(0usize);
        r.add(1usize);
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[r.pick(|_| Some(0)).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 500]);
    }
}
