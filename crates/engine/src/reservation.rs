//! Which ranks a multi-rank unit gathers, free of MPI so it can be tested directly.
//!
//! Ranks join a unit's reservation as they become free. Without an affinity hint any free rank
//! joins (first come). With one, the unit's seats go first to its preferred ranks (those that
//! ran its affinity units, [`crate::state::RunState::preferred_ranks`]), skipping ranks that
//! cannot join or are inside another multi-rank unit (waiting for them would keep this unit
//! from running beside it); only the seats left over are open to any rank. A free rank the
//! reservation does not admit takes other work meanwhile.

/// Ranks being gathered for one multi-rank unit.
#[derive(Debug)]
pub(crate) struct Reservation {
    /// The unit's plan index.
    pub index: usize,
    /// Its attempt number.
    pub attempt: u32,
    /// Ranks that have joined.
    pub members: Vec<usize>,
    /// Seats kept for these ranks.
    reserved: Vec<usize>,
    /// Seats any rank may take.
    open: usize,
}

impl Reservation {
    /// A reservation of `needed` ranks for unit `index`, its seats kept for the first of
    /// `preferred` that are `eligible`.
    pub fn new(
        index: usize,
        attempt: u32,
        needed: usize,
        preferred: &[usize],
        eligible: impl Fn(usize) -> bool,
    ) -> Self {
        let reserved: Vec<usize> = preferred
            .iter()
            .copied()
            .filter(|&r| eligible(r))
            .take(needed)
            .collect();
        Self {
            index,
            attempt,
            members: Vec::with_capacity(needed),
            open: needed - reserved.len(),
            reserved,
        }
    }

    /// Whether free rank `rank` may join now.
    pub fn admits(&self, rank: usize) -> bool {
        if self.members.contains(&rank) {
            return false;
        }
        if self.reserved.contains(&rank) {
            return true;
        }
        let others = self
            .members
            .iter()
            .filter(|r| !self.reserved.contains(r))
            .count();
        others < self.open
    }

    /// Adds `rank` (which [`Reservation::admits`] it).
    pub fn join(&mut self, rank: usize) {
        debug_assert!(self.admits(rank));
        self.members.push(rank);
    }

    /// Whether every seat is taken.
    pub fn is_complete(&self) -> bool {
        self.members.len() == self.reserved.len() + self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_hint_the_first_free_ranks_join() {
        let mut r = Reservation::new(0, 1, 2, &[], |_| true);
        assert!(r.admits(3));
        r.join(3);
        assert!(!r.admits(3), "a rank joins once");
        assert!(r.admits(1));
        r.join(1);
        assert!(r.is_complete());
        assert!(!r.admits(2));
    }

    #[test]
    fn preferred_ranks_get_the_seats_and_others_only_the_rest() {
        // Prefers 2, 0, 3 (in that order) for two seats: 2 and 0 are kept, 3 and 1 wait.
        let mut r = Reservation::new(0, 1, 2, &[2, 0, 3], |_| true);
        assert!(!r.admits(1) && !r.admits(3));
        r.join(0);
        assert!(!r.is_complete());
        assert!(r.admits(2));
        r.join(2);
        assert!(r.is_complete());
        assert_eq!(r.members, vec![0, 2]);
    }

    #[test]
    fn too_few_eligible_preferred_ranks_leave_seats_open() {
        // Three seats; rank 1 is preferred but inside another unit: 2 is kept, two seats open.
        let mut r = Reservation::new(0, 1, 3, &[1, 2], |rank| rank != 1);
        r.join(0);
        r.join(3);
        assert!(!r.admits(4), "the open seats are taken, 2's is kept");
        assert!(!r.is_complete());
        r.join(2);
        assert!(r.is_complete());
    }
}
