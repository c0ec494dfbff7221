//! GreedyDual-Size-Frequency (Cherkasova): priority = L + frequency × cost / size.
//!
//! Small, often-used, expensive-to-fetch entries stay; `L` (the priority of
//! the last victim) ages everything that is not used again. With unit
//! sizes and costs this is LFU with dynamic aging.

use super::{grow, Eviction, Meta};
use crate::Marks;
use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;

/// A heap record: a slot's priority (as bits) and sequence number when
/// pushed. The heap is a min-heap on (priority, sequence number), compared
/// as one 128-bit number (the sequence number is unique, so the slot never
/// decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    priority: u64,
    seq: u64,
    slot: u32,
}

impl Record {
    #[inline]
    fn key(&self) -> u128 {
        (u128::from(self.priority) << 64) | u128::from(self.seq)
    }
}

impl Ord for Record {
    /// Reversed: `BinaryHeap` is a max-heap, the victim has the least key.
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.key().cmp(&self.key())
    }
}

impl PartialOrd for Record {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// Sequence number of this slot's record in the heap (0 = not resident).
    pushed: u64,
    /// Sequence number of the last insert or hit (the tie-breaker).
    seq: u64,
    /// Priority as of the last insert or hit.
    priority: f64,
    freq: u32,
    cost: u32,
    weight: u64,
}

/// GDSF over a min-heap.
///
/// A hit raises the entry's priority but pushes nothing: priorities only
/// grow, so the entry's record in the heap is a lower bound, and when it
/// reaches the top it is pushed again with the priority and sequence number
/// of the last hit. Victims come out in exactly the order of a heap updated
/// on every hit, and a hit costs one entry update.
#[derive(Debug, Default)]
pub struct Gdsf {
    heap: BinaryHeap<Record>,
    entries: Vec<Entry>,
    clock: f64,
    next_seq: u64,
    live: usize,
}

impl Gdsf {
    /// Sets `slot`'s priority from `L` now and its frequency, with a new sequence number.
    fn touch(&mut self, slot: u32) {
        self.next_seq += 1;
        let e = &mut self.entries[slot as usize];
        e.priority = self.clock + f64::from(e.freq) * f64::from(e.cost.max(1)) / e.weight.max(1) as f64;
        e.seq = self.next_seq;
    }

    /// Pushes `slot`'s current priority as its heap record.
    fn push(&mut self, slot: u32) {
        let e = &mut self.entries[slot as usize];
        e.pushed = e.seq;
        // Non-negative floats order like their bit patterns.
        self.heap.push(Record { priority: e.priority.to_bits(), seq: e.seq, slot });
        if self.heap.len() > 2 * self.live + 64 {
            let entries = &self.entries;
            self.heap.retain(|r| entries[r.slot as usize].pushed == r.seq);
        }
    }
}

impl Eviction for Gdsf {
    fn on_insert(&mut self, slot: u32, meta: &Meta, _marks: &mut impl Marks) {
        grow(&mut self.entries, slot, Entry::default());
        self.entries[slot as usize] = Entry { freq: 1, cost: meta.cost, weight: meta.weight, ..Entry::default() };
        self.live += 1;
        self.touch(slot);
        self.push(slot);
    }

    fn on_hit(&mut self, slot: u32, _hash: u64, _marks: &mut impl Marks) {
        let e = &mut self.entries[slot as usize];
        e.freq = e.freq.saturating_add(1);
        self.touch(slot);
    }

    fn evict(&mut self, _marks: &mut impl Marks) -> Option<u32> {
        loop {
            let mut top = self.heap.peek_mut()?;
            let Record { priority, seq, slot } = *top;
            let e = &mut self.entries[slot as usize];
            if e.pushed != seq {
                PeekMut::pop(top); // removed, or a former occupant of the slot
                continue;
            }
            if e.seq != seq {
                // Hit since pushed: the record takes its real priority in
                // place (one sift-down, not a pop and a push).
                e.pushed = e.seq;
                *top = Record { priority: e.priority.to_bits(), seq: e.seq, slot };
                continue;
            }
            PeekMut::pop(top);
            e.pushed = 0;
            self.live -= 1;
            self.clock = f64::from_bits(priority);
            return Some(slot);
        }
    }

    fn on_remove(&mut self, slot: u32, _marks: &mut impl Marks) {
        self.entries[slot as usize].pushed = 0;
        self.live -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;

    #[test]
    fn prefers_small_costly_frequent_entries() {
        let mut p = Gdsf::default();
        let mut m = crate::MarkVec::default();
        let meta = |weight, cost| Meta { hash: 0, weight, expires_at: u64::MAX, cost };
        p.on_insert(0, &meta(100, 1), &mut m); // big, cheap: priority 0.01
        p.on_insert(1, &meta(1, 1), &mut m); // small: 1
        p.on_insert(2, &meta(100, 1000), &mut m); // big but costly: 10
        p.on_insert(3, &meta(1, 1), &mut m);
        p.on_hit(3, 0, &mut m); // 2
        assert_eq!(p.evict(&mut m), Some(0));
        assert_eq!(p.evict(&mut m), Some(1));
        // L is now 1: a new small entry starts at 2, ties with 3 (older goes first).
        p.on_insert(4, &meta(1, 1), &mut m);
        assert_eq!(p.evict(&mut m), Some(3));
        assert_eq!(p.evict(&mut m), Some(4));
        assert_eq!(p.evict(&mut m), Some(2));
        assert_eq!(p.evict(&mut m), None);
    }

    #[test]
    fn records_of_removed_entries_are_dropped_without_reordering() {
        let mut p = Gdsf::default();
        let mut m = crate::MarkVec::default();
        let meta = Meta { hash: 0, weight: 1, expires_at: u64::MAX, cost: 1 };
        for slot in 0..1000 {
            p.on_insert(slot, &meta, &mut m);
        }
        for slot in (0..1000).filter(|s| s % 10 != 0) {
            p.on_remove(slot, &mut m);
        }
        // This push finds 900 records of removed entries in the heap.
        p.on_insert(1000, &meta, &mut m);
        assert!(p.heap.len() <= 2 * p.live + 64, "{} records for {} entries", p.heap.len(), p.live);
        let victims: Vec<u32> = std::iter::from_fn(|| p.evict(&mut m)).collect();
        let expected: Vec<u32> = (0..1000).step_by(10).chain([1000]).collect();
        assert_eq!(victims, expected, "equal priorities: oldest first");
    }

    #[test]
    fn same_victims_as_pushing_on_every_hit() {
        // The textbook form: every insert and hit pushes a record into a
        // binary heap, stale records are skipped. Removals leave records
        // behind in both.
        let mut heap = BinaryHeap::new();
        let mut freq = std::collections::HashMap::new();
        let mut current = std::collections::HashMap::new();
        let (mut clock, mut seq) = (0.0f64, 0u64);
        let mut push =
            |heap: &mut BinaryHeap<_>, current: &mut std::collections::HashMap<u32, u64>, clock: f64, slot: u32, f: u32, w: u64, c: u32| {
                seq += 1;
                current.insert(slot, seq);
                heap.push(Reverse(((clock + f64::from(f) * f64::from(c) / w as f64).to_bits(), seq, slot)));
            };
        let mut p = Gdsf::default();
        let mut m = crate::MarkVec::default();
        let mut resident: Vec<u32> = Vec::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let (w, c) = (1 + rng % 7, 1 + (rng >> 8) as u32 % 5);
            if resident.len() > 50 && rng % 11 == 5 {
                let slot = resident.swap_remove((rng >> 16) as usize % resident.len());
                p.on_remove(slot, &mut m);
                current.remove(&slot);
            } else if resident.len() < 50 || rng.is_multiple_of(3) {
                let slot = step;
                p.on_insert(slot, &Meta { hash: 0, weight: w, expires_at: u64::MAX, cost: c }, &mut m);
                freq.insert(slot, (1u32, w, c));
                push(&mut heap, &mut current, clock, slot, 1, w, c);
                resident.push(slot);
            } else {
                let slot = resident[(rng >> 16) as usize % resident.len()];
                p.on_hit(slot, 0, &mut m);
                let e = freq.get_mut(&slot).expect("resident");
                e.0 += 1;
                let (f, w, c) = *e;
                push(&mut heap, &mut current, clock, slot, f, w, c);
            }
            if resident.len() > 60 {
                let expected = loop {
                    let Some(Reverse((priority, s, slot))) = heap.pop() else { panic!("the reference ran dry") };
                    if current.get(&slot) == Some(&s) {
                        clock = f64::from_bits(priority);
                        current.remove(&slot);
                        break slot;
                    }
                };
                assert_eq!(p.evict(&mut m), Some(expected), "step {step}");
                resident.retain(|&r| r != expected);
            }
        }
    }
}
