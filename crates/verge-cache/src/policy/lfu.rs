//! Least frequently used, ties broken by recency, in O(1).
//!
//! Entries with the same count share a bucket (an LRU list); buckets form
//! a list in increasing count. A hit moves the entry to the next bucket,
//! eviction takes the least recent entry of the lowest bucket.

use super::{alloc, grow, Eviction, Meta};
use crate::list::{LinkStore, Links, List, NIL};
use crate::Marks;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    count: u64,
    entries: List,
    lower: u32,
    higher: u32,
}

/// O(1) LFU with per-count LRU buckets.
#[derive(Debug)]
pub struct Lfu {
    links: Links,
    buckets: Vec<Bucket>,
    free: Vec<u32>,
    bucket_of: Vec<u32>,
    lowest: u32,
}

impl Default for Lfu {
    fn default() -> Self {
        Lfu { links: Links::default(), buckets: Vec::new(), free: Vec::new(), bucket_of: Vec::new(), lowest: NIL }
    }
}

impl Lfu {
    /// A new empty bucket for `count` between `lower` and `higher`.
    fn new_bucket(&mut self, count: u64, lower: u32, higher: u32) -> u32 {
        let b = Bucket { count, entries: List::default(), lower, higher };
        let id = alloc(&mut self.buckets, &mut self.free, b);
        if lower != NIL {
            self.buckets[lower as usize].higher = id;
        } else {
            self.lowest = id;
        }
        if higher != NIL {
            self.buckets[higher as usize].lower = id;
        }
        id
    }

    /// Takes `slot` out of its bucket, dropping the bucket when it empties.
    fn detach(&mut self, slot: u32) {
        let b = self.bucket_of[slot as usize];
        let bucket = &mut self.buckets[b as usize];
        self.links.unlink(&mut bucket.entries, slot);
        if bucket.entries.is_empty() {
            let (lower, higher) = (bucket.lower, bucket.higher);
            if lower != NIL {
                self.buckets[lower as usize].higher = higher;
            } else {
                self.lowest = higher;
            }
            if higher != NIL {
                self.buckets[higher as usize].lower = lower;
            }
            self.free.push(b);
        }
    }
}

impl Eviction for Lfu {
    fn on_insert(&mut self, slot: u32, _meta: &Meta, _marks: &mut impl Marks) {
        grow(&mut self.bucket_of, slot, NIL);
        let b = if self.lowest != NIL && self.buckets[self.lowest as usize].count == 1 {
            self.lowest
        } else {
            self.new_bucket(1, NIL, self.lowest)
        };
        self.links.push_front(&mut self.buckets[b as usize].entries, slot);
        self.bucket_of[slot as usize] = b;
    }

    fn on_hit(&mut self, slot: u32, _hash: u64, _marks: &mut impl Marks) {
        let b = self.bucket_of[slot as usize];
        let Bucket { count, higher, .. } = self.buckets[b as usize];
        let target =
            if higher != NIL && self.buckets[higher as usize].count == count + 1 { higher } else { self.new_bucket(count + 1, b, higher) };
        self.detach(slot);
        self.links.push_front(&mut self.buckets[target as usize].entries, slot);
        self.bucket_of[slot as usize] = target;
    }

    fn evict(&mut self, _marks: &mut impl Marks) -> Option<u32> {
        if self.lowest == NIL {
            return None;
        }
        let slot = self.buckets[self.lowest as usize].entries.tail;
        self.detach(slot);
        Some(slot)
    }

    fn on_remove(&mut self, slot: u32, _marks: &mut impl Marks) {
        self.detach(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::replay;
    use super::*;

    #[test]
    fn evicts_least_frequent_then_least_recent() {
        // 1 is used 3 times, 2 twice, 3 once: 4 evicts 3; 5 evicts 4.
        let (hits, resident) = replay(&mut Lfu::default(), 3, &[1, 1, 1, 2, 2, 3, 4, 5]);
        assert_eq!(hits, 3);
        assert_eq!(resident, vec![1, 2, 5]);
        // Equal counts: the least recent goes.
        let (_, resident) = replay(&mut Lfu::default(), 2, &[1, 2, 3]);
        assert_eq!(resident, vec![2, 3]);
    }
}
