//! ARC (Megiddo & Modha, FAST'03): recency list T1 and frequency list T2,
//! with ghost lists B1/B2 steering the target size `p` of T1. Weighted:
//! sizes and `p` are in capacity units.

use super::{grow, Eviction, Meta, Sizing};
use crate::ghost::GhostList;
use crate::list::{LinkStore, Links, List};
use crate::Marks;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    hash: u64,
    weight: u64,
    in_t2: bool,
}

/// Adaptive Replacement Cache.
#[derive(Debug)]
pub struct Arc {
    links: Links,
    t1: List,
    t2: List,
    t1_weight: u64,
    t2_weight: u64,
    b1: GhostList,
    b2: GhostList,
    entries: Vec<Entry>,
    p: u64,
    capacity: u64,
}

impl Arc {
    /// ARC for a cache of `sizing`.
    pub fn new(sizing: Sizing) -> Self {
        Arc {
            links: Links::default(),
            t1: List::default(),
            t2: List::default(),
            t1_weight: 0,
            t2_weight: 0,
            b1: GhostList::default(),
            b2: GhostList::default(),
            entries: Vec::new(),
            p: 0,
            capacity: sizing.units.max(1),
        }
    }

    /// Keeps |T1|+|B1| ≤ c and the whole directory ≤ 2c.
    fn trim_ghosts(&mut self) {
        while self.t1_weight + self.b1.weight() > self.capacity && self.b1.pop_oldest() {}
        while self.t1_weight + self.t2_weight + self.b1.weight() + self.b2.weight() > 2 * self.capacity && self.b2.pop_oldest() {}
    }

    fn unlink(&mut self, slot: u32) {
        let e = self.entries[slot as usize];
        if e.in_t2 {
            self.links.unlink(&mut self.t2, slot);
            self.t2_weight -= e.weight;
        } else {
            self.links.unlink(&mut self.t1, slot);
            self.t1_weight -= e.weight;
        }
    }
}

impl Eviction for Arc {
    fn on_insert(&mut self, slot: u32, meta: &Meta, _marks: &mut impl Marks) {
        grow(&mut self.entries, slot, Entry::default());
        let w = meta.weight;
        let in_t2 = if self.b1.contains(meta.hash) {
            let delta = (self.b2.weight() / self.b1.weight().max(1)).max(1) * w;
            self.p = (self.p + delta).min(self.capacity);
            self.b1.remove(meta.hash);
            true
        } else if self.b2.contains(meta.hash) {
            let delta = (self.b1.weight() / self.b2.weight().max(1)).max(1) * w;
            self.p = self.p.saturating_sub(delta);
            self.b2.remove(meta.hash);
            true
        } else {
            false
        };
        self.entries[slot as usize] = Entry { hash: meta.hash, weight: w, in_t2 };
        if in_t2 {
            self.links.push_front(&mut self.t2, slot);
            self.t2_weight += w;
        } else {
            self.links.push_front(&mut self.t1, slot);
            self.t1_weight += w;
        }
    }

    fn on_hit(&mut self, slot: u32, _hash: u64, _marks: &mut impl Marks) {
        let e = &mut self.entries[slot as usize];
        if e.in_t2 {
            self.links.move_to_front(&mut self.t2, slot);
        } else {
            e.in_t2 = true;
            let w = e.weight;
            self.links.unlink(&mut self.t1, slot);
            self.t1_weight -= w;
            self.links.push_front(&mut self.t2, slot);
            self.t2_weight += w;
        }
    }

    fn evict(&mut self, _marks: &mut impl Marks) -> Option<u32> {
        let from_t1 = !self.t1.is_empty() && (self.t1_weight > self.p || self.t2.is_empty());
        let slot = if from_t1 { self.t1.tail } else { self.t2.tail };
        if self.t2.is_empty() && self.t1.is_empty() {
            return None;
        }
        let e = self.entries[slot as usize];
        self.unlink(slot);
        if e.in_t2 {
            self.b2.push(e.hash, e.weight);
        } else {
            self.b1.push(e.hash, e.weight);
        }
        self.trim_ghosts();
        Some(slot)
    }

    fn on_remove(&mut self, slot: u32, _marks: &mut impl Marks) {
        self.unlink(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{replay, units};
    use super::*;

    #[test]
    fn frequent_entries_survive_a_scan() {
        // 1 and 2 are used twice (T2); a scan of new keys only churns T1.
        let keys = [1, 2, 1, 2, 10, 11, 12, 13, 14, 1, 2];
        let (hits, resident) = replay(&mut Arc::new(units(3)), 3, &keys);
        assert_eq!(hits, 4);
        assert!(resident.contains(&1) && resident.contains(&2));
    }

    #[test]
    fn ghost_hit_grows_recency_target() {
        let mut arc = Arc::new(units(2));
        replay(&mut arc, 2, &[1, 1, 2, 3, 2]);
        assert!(arc.p >= 1, "a B1 ghost hit raises p");
    }
}
