//! ARC (Megiddo & Modha, FAST'03): recency list T1 and frequency list T2,
//! with ghost lists B1/B2 steering the target size `p` of T1. Weighted:
//! sizes and `p` are in capacity units. The ghosts are slots the cache
//! keeps ([`Marks::keep_ghost`]), so a returning key comes back to its
//! ghost's slot.

use super::{grow, Eviction, Meta, Sizing};
use crate::list::{LinkStore, List, Node, NodeLinks};
use crate::Marks;

/// Which of ARC's four lists a slot is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Place {
    /// Not ARC's.
    #[default]
    None,
    T1,
    T2,
    B1,
    B2,
}

/// A slot's list and weight (in a [`Node`], beside its links in that list).
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    weight: u64,
    place: Place,
}

/// A list with the total weight of its slots.
#[derive(Debug, Default)]
struct Weighted {
    list: List,
    weight: u64,
}

/// Adaptive Replacement Cache.
#[derive(Debug)]
pub struct Arc {
    t1: Weighted,
    t2: Weighted,
    b1: Weighted,
    b2: Weighted,
    /// Per slot; their links are those of all four lists (a slot is in
    /// one at a time).
    entries: Vec<Node<Entry>>,
    p: u64,
    capacity: u64,
    /// Most ghosts held, whatever their weight (see S3-FIFO's).
    max_ghosts: usize,
}

impl Arc {
    /// ARC for a cache of `sizing`.
    pub fn new(sizing: Sizing) -> Self {
        Arc {
            t1: Weighted::default(),
            t2: Weighted::default(),
            b1: Weighted::default(),
            b2: Weighted::default(),
            entries: Vec::new(),
            p: 0,
            capacity: sizing.units.max(1),
            max_ghosts: sizing.entries.max(1),
        }
    }

    /// The links and the list of `place`.
    fn parts(&mut self, place: Place) -> Option<(NodeLinks<'_, Entry>, &mut Weighted)> {
        let list = match place {
            Place::T1 => &mut self.t1,
            Place::T2 => &mut self.t2,
            Place::B1 => &mut self.b1,
            Place::B2 => &mut self.b2,
            Place::None => return None,
        };
        Some((NodeLinks(&mut self.entries), list))
    }

    /// Puts `slot` at the head (most recent end) of `place`.
    fn push(&mut self, slot: u32, place: Place) {
        let e = &mut self.entries[slot as usize];
        e.place = place;
        let weight = e.weight;
        if let Some((mut links, to)) = self.parts(place) {
            to.weight += weight;
            links.push_front(&mut to.list, slot);
        }
    }

    /// Takes `slot` out of the list it is in.
    fn unlink(&mut self, slot: u32) {
        let e = &mut self.entries[slot as usize];
        let (place, weight) = (std::mem::take(&mut e.place), e.weight);
        if let Some((mut links, from)) = self.parts(place) {
            from.weight -= weight;
            links.unlink(&mut from.list, slot);
        }
    }

    /// Releases the oldest ghost of `place` (B1 or B2); false when it has none.
    fn forget_oldest(&mut self, place: Place, marks: &mut impl Marks) -> bool {
        let Some((_, list)) = self.parts(place) else { return false };
        let oldest = list.list.tail;
        if list.list.is_empty() {
            return false;
        }
        self.unlink(oldest);
        marks.release_ghost(oldest);
        true
    }

    /// Keeps |T1|+|B1| ≤ c and the whole directory ≤ 2c (and at most
    /// `max_ghosts` ghosts).
    fn trim_ghosts(&mut self, marks: &mut impl Marks) {
        let directory = |a: &Arc| a.t1.weight + a.t2.weight + a.b1.weight + a.b2.weight;
        while self.t1.weight + self.b1.weight > self.capacity && self.forget_oldest(Place::B1, marks) {}
        while directory(self) > 2 * self.capacity && self.forget_oldest(Place::B2, marks) {}
        while self.b1.list.len + self.b2.list.len > self.max_ghosts
            && (self.forget_oldest(Place::B2, marks) || self.forget_oldest(Place::B1, marks))
        {}
    }
}

impl Eviction for Arc {
    fn on_insert(&mut self, slot: u32, meta: &Meta, _marks: &mut impl Marks) {
        grow(&mut self.entries, slot, Node::default());
        let w = meta.weight;
        let place = match self.entries[slot as usize].place {
            Place::B1 => {
                let delta = (self.b2.weight / self.b1.weight.max(1)).max(1) * w;
                self.p = (self.p + delta).min(self.capacity);
                Place::T2
            }
            Place::B2 => {
                let delta = (self.b1.weight / self.b2.weight.max(1)).max(1) * w;
                self.p = self.p.saturating_sub(delta);
                Place::T2
            }
            _ => Place::T1,
        };
        self.unlink(slot);
        self.entries[slot as usize].weight = w;
        self.push(slot, place);
    }

    fn on_hit(&mut self, slot: u32, _hash: u64, _marks: &mut impl Marks) {
        if self.entries[slot as usize].place == Place::T2 {
            NodeLinks(&mut self.entries).move_to_front(&mut self.t2.list, slot);
        } else {
            self.unlink(slot);
            self.push(slot, Place::T2);
        }
    }

    fn evict(&mut self, marks: &mut impl Marks) -> Option<u32> {
        let from_t1 = !self.t1.list.is_empty() && (self.t1.weight > self.p || self.t2.list.is_empty());
        let slot = if from_t1 { self.t1.list.tail } else { self.t2.list.tail };
        if self.t2.list.is_empty() && self.t1.list.is_empty() {
            return None;
        }
        let ghost = if from_t1 { Place::B1 } else { Place::B2 };
        self.unlink(slot);
        self.push(slot, ghost);
        marks.keep_ghost(slot);
        self.trim_ghosts(marks);
        Some(slot)
    }

    fn on_remove(&mut self, slot: u32, _marks: &mut impl Marks) {
        self.unlink(slot);
    }

    fn release_ghosts(&mut self, marks: &mut impl Marks) {
        while self.forget_oldest(Place::B1, marks) || self.forget_oldest(Place::B2, marks) {}
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
