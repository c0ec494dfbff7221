//! Ghost lists: keys (by hash) of recently evicted entries, without values.
//!
//! ARC and S3-FIFO learn from misses on entries they evicted a moment ago;
//! a ghost list remembers those hashes in eviction order with the entry's
//! weight, bounded by the owner.

use crate::hashed::HashKeyed;
use std::collections::hash_map::Entry;
use std::collections::VecDeque;

/// An LRU-ordered set of hashes of non-resident entries.
///
/// The order lives in a ring of `(hash, stamp)` records, oldest first; the
/// map holds each remembered hash's latest stamp and weight. Forgetting a
/// hash or pushing it again leaves its old record in the ring, where it is
/// recognised as stale (its stamp is no longer the map's) and skipped: no
/// list links to mend, and the ring is read in order.
#[derive(Debug, Default)]
pub(crate) struct GhostList {
    map: HashKeyed<Ghost>,
    ring: VecDeque<(u64, u64)>,
    next_stamp: u64,
    weight: u64,
}

/// A remembered hash's latest record.
#[derive(Clone, Copy, Debug)]
struct Ghost {
    stamp: u64,
    weight: u64,
}

impl GhostList {
    /// Total weight of the remembered entries.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// Remembers `hash` as the most recent ghost (replacing an older record).
    pub fn push(&mut self, hash: u64, weight: u64) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let ghost = Ghost { stamp, weight };
        match self.map.entry(hash) {
            Entry::Occupied(mut old) => self.weight -= std::mem::replace(old.get_mut(), ghost).weight,
            Entry::Vacant(free) => {
                free.insert(ghost);
            }
        }
        self.weight += weight;
        self.ring.push_back((hash, stamp));
        // Stale records are dropped as they reach the front; a ring that
        // gains them faster is compacted, so it stays within twice the map.
        if self.ring.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.ring.retain(|(h, stamp)| map.get(h).is_some_and(|g| g.stamp == *stamp));
        }
    }

    /// Forgets `hash`; returns its weight when it was remembered.
    pub fn remove(&mut self, hash: u64) -> Option<u64> {
        let w = self.map.remove(&hash)?.weight;
        self.weight -= w;
        Some(w)
    }

    /// True when `hash` is remembered.
    pub fn contains(&self, hash: u64) -> bool {
        self.map.contains_key(&hash)
    }

    /// Forgets the oldest ghost.
    pub fn pop_oldest(&mut self) -> bool {
        while let Some((hash, stamp)) = self.ring.pop_front() {
            if let Entry::Occupied(found) = self.map.entry(hash) {
                if found.get().stamp == stamp {
                    self.weight -= found.remove().weight;
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_forgets_in_order() {
        let mut g = GhostList::default();
        g.push(10, 1);
        g.push(20, 2);
        g.push(30, 3);
        assert_eq!(g.weight(), 6);
        assert!(g.pop_oldest());
        assert!(!g.contains(10));
        assert_eq!(g.remove(30), Some(3));
        assert_eq!(g.weight(), 2);
        assert!(g.contains(20));
        g.push(20, 5);
        assert_eq!(g.weight(), 5);
        g.push(40, 1);
        g.push(20, 2);
        assert!(g.pop_oldest(), "the stale records of 20 are skipped");
        assert!(!g.contains(40) && g.contains(20));
        assert!(g.pop_oldest());
        assert!(!g.pop_oldest());
        assert_eq!(g.weight(), 0);
    }

    #[test]
    fn stale_records_do_not_pile_up() {
        let mut g = GhostList::default();
        for i in 0..10_000u64 {
            g.push(i % 7, 1);
            assert!(g.ring.len() <= 2 * g.map.len() + 65);
            g.remove((i + 3) % 7);
        }
        let live = g.map.len() as u64;
        assert_eq!(g.weight(), live);
        let mut popped = 0;
        while g.pop_oldest() {
            popped += 1;
        }
        assert_eq!(popped, live);
    }
}
