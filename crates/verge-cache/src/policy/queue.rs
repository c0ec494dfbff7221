//! The two single-list policies. LRU (least recently used) moves an entry to
//! the front on every hit: the baseline every other policy is measured
//! against. FIFO (first in, first out) leaves the order alone: the cheapest
//! policy, and S3-FIFO's building block.

use super::{Eviction, Meta};
use crate::list::{LinkStore, Links, List};
use crate::Marks;

/// One list in insertion order; with `MOVE_ON_HIT` a hit moves the entry to
/// the front, turning insertion order into recency order.
#[derive(Debug, Default)]
pub struct Queue<const MOVE_ON_HIT: bool> {
    links: Links,
    list: List,
}

/// Least recently used.
pub type Lru = Queue<true>;
/// First in, first out; hits change nothing.
pub type Fifo = Queue<false>;

impl<const MOVE_ON_HIT: bool> Eviction for Queue<MOVE_ON_HIT> {
    #[inline]
    fn hit_hook(&self) -> u64 {
        if MOVE_ON_HIT {
            u64::MAX
        } else {
            0
        }
    }
    #[inline]
    fn on_insert(&mut self, slot: u32, _meta: &Meta, _marks: &mut impl Marks) {
        self.links.push_front(&mut self.list, slot);
    }
    #[inline]
    fn on_hit(&mut self, slot: u32, _hash: u64, _marks: &mut impl Marks) {
        if MOVE_ON_HIT {
            self.links.move_to_front(&mut self.list, slot);
        }
    }
    #[inline]
    fn evict(&mut self, _marks: &mut impl Marks) -> Option<u32> {
        self.links.pop_back(&mut self.list)
    }
    #[inline]
    fn on_remove(&mut self, slot: u32, _marks: &mut impl Marks) {
        self.links.unlink(&mut self.list, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::replay;
    use super::*;

    #[test]
    fn lru_evicts_least_recent() {
        // 1 2 1 3: 2 is least recent when 3 arrives.
        let (hits, resident) = replay(&mut Lru::default(), 2, &[1, 2, 1, 3, 1]);
        assert_eq!(hits, 2);
        assert_eq!(resident, vec![1, 3]);
    }

    #[test]
    fn fifo_evicts_oldest_insert_despite_hits() {
        let (hits, resident) = replay(&mut Fifo::default(), 2, &[1, 2, 1, 3]);
        assert_eq!(hits, 1);
        assert_eq!(resident, vec![2, 3]);
    }
}
