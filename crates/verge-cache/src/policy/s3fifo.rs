//! S3-FIFO (Yang et al., SOSP'23): a small FIFO (10 %) filters one-hit
//! wonders, a main FIFO with 2-bit counters and reinsertion keeps the rest,
//! a ghost FIFO sends returning keys straight to main.
//!
//! The ghosts are slots the cache keeps for this policy ([`Marks::keep_ghost`]):
//! a returning key is found by the cache's own lookup and comes back in its
//! ghost's slot, so a miss costs no ghost table of its own (half of what
//! S3-FIFO cost when its ghosts lived in a map beside the cache).

use super::{grow, top_fitting, Eviction, Meta, Sizing};
use crate::list::{LinkStore, List, Node, NodeLinks};
use crate::Marks;

/// Where a slot is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Queue {
    /// Not this policy's.
    #[default]
    None,
    Small,
    Main,
    Ghost,
}

/// A slot's queue and weight (in a [`Node`], beside its links in that
/// queue: small, main or the ghosts).
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    weight: u64,
    queue: Queue,
}

/// S3-FIFO with weighted queues.
#[derive(Debug)]
pub struct S3Fifo {
    small: List,
    main: List,
    ghosts: List,
    small_weight: u64,
    small_target: u64,
    ghost_weight: u64,
    ghost_limit: u64,
    /// Most ghosts held, whatever their weight: under a byte budget the
    /// weight limit alone would let tiny entries leave millions.
    max_ghosts: usize,
    entries: Vec<Node<Entry>>,
}

/// S3-FIFO's access counter is 2 bits: the slot's mark, capped.
const MAX_FREQ: u8 = 3;

impl S3Fifo {
    /// S3-FIFO for a cache of `sizing`.
    pub fn new(sizing: Sizing) -> Self {
        let units = sizing.units.max(1);
        S3Fifo {
            small: List::default(),
            main: List::default(),
            ghosts: List::default(),
            small_weight: 0,
            small_target: (units / 10).max(1),
            ghost_weight: 0,
            ghost_limit: units - units / 10,
            max_ghosts: sizing.entries.max(1),
            entries: Vec::new(),
        }
    }

    /// Puts the new entry in `slot` at the head of main or of small.
    fn enqueue(&mut self, slot: u32, weight: u64, queue: Queue) {
        grow(&mut self.entries, slot, Node::default());
        let e = &mut self.entries[slot as usize];
        (e.weight, e.queue) = (weight, queue);
        if queue == Queue::Main {
            NodeLinks(&mut self.entries).push_front(&mut self.main, slot);
        } else {
            NodeLinks(&mut self.entries).push_front(&mut self.small, slot);
            self.small_weight += weight;
        }
    }

    /// Keeps the victim in `slot`, leaving small, as the newest ghost,
    /// releasing the oldest ghosts to stay within the limit.
    fn haunt(&mut self, slot: u32, marks: &mut impl Marks) {
        let weight = self.entries[slot as usize].weight;
        if weight > self.ghost_limit {
            self.entries[slot as usize].queue = Queue::None;
            return;
        }
        while self.ghost_weight + weight > self.ghost_limit || self.ghosts.len >= self.max_ghosts {
            let Some(oldest) = NodeLinks(&mut self.entries).pop_back(&mut self.ghosts) else { break };
            self.forget(oldest, marks);
        }
        self.entries[slot as usize].queue = Queue::Ghost;
        NodeLinks(&mut self.entries).push_front(&mut self.ghosts, slot);
        self.ghost_weight += weight;
        marks.keep_ghost(slot);
    }

    /// Releases the ghost in `slot`, already out of the ghost queue.
    fn forget(&mut self, slot: u32, marks: &mut impl Marks) {
        let e = &mut self.entries[slot as usize];
        e.queue = Queue::None;
        self.ghost_weight -= e.weight;
        marks.release_ghost(slot);
    }
}

impl Eviction for S3Fifo {
    fn hit_hook(&self) -> u64 {
        0
    }

    fn on_insert(&mut self, slot: u32, meta: &Meta, _marks: &mut impl Marks) {
        let returning = self.entries.get(slot as usize).is_some_and(|e| e.queue == Queue::Ghost);
        if returning {
            NodeLinks(&mut self.entries).unlink(&mut self.ghosts, slot);
            self.ghost_weight -= self.entries[slot as usize].weight;
        }
        self.enqueue(slot, meta.weight, if returning { Queue::Main } else { Queue::Small });
    }

    /// A hit only marks the slot (the cache does that): the access counter.
    #[inline]
    fn on_hit(&mut self, _slot: u32, _hash: u64, _marks: &mut impl Marks) {}

    fn evict(&mut self, marks: &mut impl Marks) -> Option<u32> {
        loop {
            if !self.small.is_empty() && (self.small_weight >= self.small_target || self.main.is_empty()) {
                let slot = NodeLinks(&mut self.entries).pop_back(&mut self.small)?;
                let e = &mut self.entries[slot as usize];
                self.small_weight -= e.weight;
                if marks.take(slot) > 0 {
                    e.queue = Queue::Main;
                    NodeLinks(&mut self.entries).push_front(&mut self.main, slot);
                    continue;
                }
                self.haunt(slot, marks);
                return Some(slot);
            }
            let slot = NodeLinks(&mut self.entries).pop_back(&mut self.main)?;
            let freq = marks.get(slot).min(MAX_FREQ);
            if freq > 0 {
                marks.set(slot, freq - 1);
                NodeLinks(&mut self.entries).push_front(&mut self.main, slot);
                continue;
            }
            self.entries[slot as usize].queue = Queue::None;
            return Some(slot);
        }
    }

    /// The least valued entries, up to small's target, go to small; the
    /// rest to main; each queue ends with its least valued.
    fn adopt(&mut self, entries: &[(u32, Meta)], _marks: &mut impl Marks) {
        let total: u64 = entries.iter().map(|(_, meta)| meta.weight).sum();
        let main_from = entries.len() - top_fitting(entries, total.saturating_sub(self.small_target));
        for (i, (slot, meta)) in entries.iter().enumerate() {
            self.enqueue(*slot, meta.weight, if i >= main_from { Queue::Main } else { Queue::Small });
        }
    }

    fn on_remove(&mut self, slot: u32, _marks: &mut impl Marks) {
        let e = &mut self.entries[slot as usize];
        let weight = e.weight;
        match std::mem::take(&mut e.queue) {
            Queue::Main => NodeLinks(&mut self.entries).unlink(&mut self.main, slot),
            Queue::Small => {
                NodeLinks(&mut self.entries).unlink(&mut self.small, slot);
                self.small_weight -= weight;
            }
            Queue::Ghost | Queue::None => {}
        }
    }

    fn release_ghosts(&mut self, marks: &mut impl Marks) {
        while let Some(slot) = NodeLinks(&mut self.entries).pop_back(&mut self.ghosts) {
            self.forget(slot, marks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{adopt_in_order, replay, units};
    use super::*;

    #[test]
    fn adopted_entries_fill_main_and_the_least_valued_wait_in_small() {
        // Ten entries, 0 the least valued: 0 fills small (a tenth), 1..=9 go
        // to main. A newcomer then competes in small, not behind all of them.
        let mut p = S3Fifo::new(units(10));
        let mut m = adopt_in_order(&mut p, 10);
        assert_eq!(p.entries.iter().filter(|e| e.queue == Queue::Main).count(), 9);
        m.reset(10);
        p.on_insert(10, &Meta { hash: 11, weight: 1, expires_at: u64::MAX, cost: 1 }, &mut m);
        let victims: Vec<u32> = (0..4).filter_map(|_| p.evict(&mut m)).collect();
        assert_eq!(victims, vec![0, 10, 1, 2]);
    }

    #[test]
    fn one_hit_wonders_leave_from_small_and_ghosts_return_to_main() {
        let mut p = S3Fifo::new(units(10));
        // 1 is hit while in small, so it moves to main when small overflows.
        let mut keys = vec![1, 1];
        keys.extend(2..=20);
        keys.push(5); // a ghost: goes straight to main
        let (hits, resident) = replay(&mut p, 10, &keys);
        assert_eq!(hits, 1);
        assert!(resident.contains(&1));
        assert!(resident.contains(&5));
        // 2..=11 left small as ghosts (the last nine kept): 5 came back to main, beside 1.
        assert_eq!(p.entries.iter().filter(|e| e.queue == Queue::Main).count(), 2);
    }

    #[test]
    fn ghosts_stay_within_their_limit_and_are_released_oldest_first() {
        // A scan of fresh keys: every victim leaves small as a ghost, and
        // the replay checks that each released slot was a kept ghost.
        let mut p = S3Fifo::new(units(10));
        let keys: Vec<u64> = (0..1000).collect();
        replay(&mut p, 10, &keys);
        let ghosts = p.entries.iter().filter(|e| e.queue == Queue::Ghost).count();
        assert_eq!((ghosts, p.ghosts.len, p.ghost_weight), (9, 9, 9));
    }

    #[test]
    fn tiny_entries_under_a_byte_budget_leave_at_most_one_ghost_per_entry() {
        // 1,000 bytes for about 10 entries: by weight alone, 900 bytes of
        // one-byte ghosts would be 900 of them.
        let mut p = S3Fifo::new(Sizing { units: 1000, entries: 10 });
        let mut m = crate::MarkVec::default();
        for slot in 0..2000u32 {
            m.reset(slot);
            p.on_insert(slot, &Meta { hash: u64::from(slot), weight: 1, expires_at: u64::MAX, cost: 1 }, &mut m);
            if slot >= 10 {
                p.evict(&mut m);
            }
        }
        assert!(p.ghosts.len <= 10, "{} ghosts", p.ghosts.len);
    }
}
