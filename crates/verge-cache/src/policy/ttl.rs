//! Soonest-expiring first: for caches whose entries are worthless after
//! their TTL anyway. Entries without a TTL go last, oldest first.

use super::{grow, Eviction, Meta};
use crate::Marks;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A min-heap on `(expires_at, insertion order)` with lazy deletion.
#[derive(Debug, Default)]
pub struct Ttl {
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// Insertion sequence of the live entry in each slot (0 = none).
    seq_of: Vec<u64>,
    next_seq: u64,
    live: usize,
}

impl Ttl {
    /// Drops stale heap records once they outnumber live entries.
    fn compact(&mut self) {
        if self.heap.len() > 2 * self.live + 64 {
            let seq_of = &self.seq_of;
            self.heap.retain(|Reverse((_, seq, slot))| seq_of[*slot as usize] == *seq);
        }
    }
}

impl Eviction for Ttl {
    fn on_insert(&mut self, slot: u32, meta: &Meta, _marks: &mut impl Marks) {
        grow(&mut self.seq_of, slot, 0);
        self.next_seq += 1;
        self.seq_of[slot as usize] = self.next_seq;
        self.heap.push(Reverse((meta.expires_at, self.next_seq, slot)));
        self.live += 1;
    }

    fn hit_hook(&self) -> u64 {
        0
    }

    fn on_hit(&mut self, _slot: u32, _hash: u64, _marks: &mut impl Marks) {}

    fn evict(&mut self, _marks: &mut impl Marks) -> Option<u32> {
        while let Some(Reverse((_, seq, slot))) = self.heap.pop() {
            if self.seq_of[slot as usize] == seq {
                self.seq_of[slot as usize] = 0;
                self.live -= 1;
                return Some(slot);
            }
        }
        None
    }

    fn on_remove(&mut self, slot: u32, _marks: &mut impl Marks) {
        self.seq_of[slot as usize] = 0;
        self.live -= 1;
        self.compact();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_soonest_expiry_then_oldest() {
        let mut p = Ttl::default();
        let mut m = crate::MarkVec::default();
        let meta = |expires_at| Meta { hash: 0, weight: 1, expires_at, cost: 1 };
        p.on_insert(0, &meta(u64::MAX), &mut m);
        p.on_insert(1, &meta(50), &mut m);
        p.on_insert(2, &meta(10), &mut m);
        p.on_insert(3, &meta(u64::MAX), &mut m);
        p.on_remove(1, &mut m);
        assert_eq!(p.evict(&mut m), Some(2));
        assert_eq!(p.evict(&mut m), Some(0));
        assert_eq!(p.evict(&mut m), Some(3));
        assert_eq!(p.evict(&mut m), None);
    }
}
