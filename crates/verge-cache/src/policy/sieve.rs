//! SIEVE (Zhang et al., NSDI'24): a FIFO with a visited bit and a moving
//! hand; lazy promotion and quick demotion at FIFO cost.

use super::{Eviction, Meta};
use crate::list::{LinkStore, Links, List, NIL};
use crate::Marks;

/// SIEVE: new entries at the head, the hand sweeps from tail to head.
#[derive(Debug)]
pub struct Sieve {
    links: Links,
    list: List,
    hand: u32,
}

impl Default for Sieve {
    fn default() -> Self {
        Sieve { links: Links::default(), list: List::default(), hand: NIL }
    }
}

impl Eviction for Sieve {
    #[inline]
    fn hit_hook(&self) -> u64 {
        0
    }
    #[inline]
    fn on_insert(&mut self, slot: u32, _meta: &Meta, _marks: &mut impl Marks) {
        self.links.push_front(&mut self.list, slot);
    }
    /// A hit only marks the slot (the cache does that): SIEVE's visited bit.
    #[inline]
    fn on_hit(&mut self, _slot: u32, _hash: u64, _marks: &mut impl Marks) {}
    fn evict(&mut self, marks: &mut impl Marks) -> Option<u32> {
        if self.list.is_empty() {
            return None;
        }
        let mut at = if self.hand == NIL { self.list.tail } else { self.hand };
        while marks.take(at) > 0 {
            at = self.links.prev(at);
            if at == NIL {
                at = self.list.tail;
            }
        }
        self.hand = self.links.prev(at);
        self.links.unlink(&mut self.list, at);
        Some(at)
    }
    #[inline]
    fn on_remove(&mut self, slot: u32, _marks: &mut impl Marks) {
        if self.hand == slot {
            self.hand = self.links.prev(slot);
        }
        self.links.unlink(&mut self.list, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::replay;
    use super::*;

    #[test]
    fn visited_entries_survive_the_hand() {
        // 1 is visited, so 2 (unvisited, older than 3) goes when 4 arrives.
        let (hits, resident) = replay(&mut Sieve::default(), 3, &[1, 2, 3, 1, 4]);
        assert_eq!(hits, 1);
        assert_eq!(resident, vec![1, 3, 4]);
        // Next miss: the hand continues from where it stopped (towards the head).
        let (_, resident) = replay(&mut Sieve::default(), 3, &[1, 2, 3, 1, 4, 5]);
        assert_eq!(resident, vec![1, 4, 5]);
    }
}
