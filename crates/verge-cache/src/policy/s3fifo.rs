//! S3-FIFO (Yang et al., SOSP'23): a small FIFO (10 %) filters one-hit
//! wonders, a main FIFO with 2-bit counters and reinsertion keeps the rest,
//! a ghost FIFO sends returning keys straight to main.

use super::{grow, top_fitting, Eviction, Meta, Sizing};
use crate::ghost::GhostList;
use crate::list::{LinkStore, Links, List};
use crate::Marks;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    hash: u64,
    weight: u64,
    in_main: bool,
}

/// S3-FIFO with weighted queues.
#[derive(Debug)]
pub struct S3Fifo {
    links: Links,
    small: List,
    main: List,
    small_weight: u64,
    small_target: u64,
    ghost: GhostList,
    ghost_limit: u64,
    entries: Vec<Entry>,
}

/// S3-FIFO's access counter is 2 bits: the slot's mark, capped.
const MAX_FREQ: u8 = 3;

impl S3Fifo {
    /// S3-FIFO for a cache of `sizing`.
    pub fn new(sizing: Sizing) -> Self {
        let units = sizing.units.max(1);
        S3Fifo {
            links: Links::default(),
            small: List::default(),
            main: List::default(),
            small_weight: 0,
            small_target: (units / 10).max(1),
            ghost: GhostList::default(),
            ghost_limit: units - units / 10,
            entries: Vec::new(),
        }
    }

    /// Puts the new entry in `slot` at the head of main or of small.
    fn enqueue(&mut self, slot: u32, meta: &Meta, in_main: bool) {
        grow(&mut self.entries, slot, Entry::default());
        self.entries[slot as usize] = Entry { hash: meta.hash, weight: meta.weight, in_main };
        if in_main {
            self.links.push_front(&mut self.main, slot);
        } else {
            self.links.push_front(&mut self.small, slot);
            self.small_weight += meta.weight;
        }
    }
}

impl Eviction for S3Fifo {
    fn hit_hook(&self) -> u64 {
        0
    }

    fn on_insert(&mut self, slot: u32, meta: &Meta, _marks: &mut impl Marks) {
        let in_main = self.ghost.remove(meta.hash).is_some();
        self.enqueue(slot, meta, in_main);
    }

    /// A hit only marks the slot (the cache does that): the access counter.
    #[inline]
    fn on_hit(&mut self, _slot: u32, _hash: u64, _marks: &mut impl Marks) {}

    fn evict(&mut self, marks: &mut impl Marks) -> Option<u32> {
        loop {
            if !self.small.is_empty() && (self.small_weight >= self.small_target || self.main.is_empty()) {
                let slot = self.links.pop_back(&mut self.small)?;
                let e = &mut self.entries[slot as usize];
                self.small_weight -= e.weight;
                if marks.take(slot) > 0 {
                    e.in_main = true;
                    self.links.push_front(&mut self.main, slot);
                    continue;
                }
                let (hash, weight) = (e.hash, e.weight);
                self.ghost.push(hash, weight);
                while self.ghost.weight() > self.ghost_limit && self.ghost.pop_oldest() {}
                return Some(slot);
            }
            let slot = self.links.pop_back(&mut self.main)?;
            let freq = marks.get(slot).min(MAX_FREQ);
            if freq > 0 {
                marks.set(slot, freq - 1);
                self.links.push_front(&mut self.main, slot);
                continue;
            }
            return Some(slot);
        }
    }

    /// The least valued entries, up to small's target, go to small; the
    /// rest to main; each queue ends with its least valued.
    fn adopt(&mut self, entries: &[(u32, Meta)], _marks: &mut impl Marks) {
        let total: u64 = entries.iter().map(|(_, meta)| meta.weight).sum();
        let main_from = entries.len() - top_fitting(entries, total.saturating_sub(self.small_target));
        for (i, (slot, meta)) in entries.iter().enumerate() {
            self.enqueue(*slot, meta, i >= main_from);
        }
    }

    fn on_remove(&mut self, slot: u32) {
        let e = self.entries[slot as usize];
        if e.in_main {
            self.links.unlink(&mut self.main, slot);
        } else {
            self.links.unlink(&mut self.small, slot);
            self.small_weight -= e.weight;
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
        assert_eq!(p.entries.iter().filter(|e| e.in_main).count(), 9);
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
        assert!(p.entries.iter().any(|e| e.in_main && e.hash == 5u64.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    }
}
