//! Ghost lists: keys (by hash) of recently evicted entries, without values.
//!
//! ARC and S3-FIFO learn from misses on entries they evicted a moment ago;
//! a ghost list remembers those hashes in eviction order with the entry's
//! weight, bounded by the owner.

use crate::list::{Links, List};
use std::collections::HashMap;

/// An LRU-ordered set of hashes of non-resident entries.
#[derive(Debug, Default)]
pub(crate) struct GhostList {
    map: HashMap<u64, u32, foldhash::fast::FixedState>,
    hashes: Vec<u64>,
    weights: Vec<u64>,
    free: Vec<u32>,
    links: Links,
    list: List,
    weight: u64,
}

impl GhostList {
    /// Total weight of the remembered entries.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// Remembers `hash` as the most recent ghost (replacing an older record).
    pub fn push(&mut self, hash: u64, weight: u64) {
        self.remove(hash);
        let node = match self.free.pop() {
            Some(n) => {
                self.hashes[n as usize] = hash;
                self.weights[n as usize] = weight;
                n
            }
            None => {
                self.hashes.push(hash);
                self.weights.push(weight);
                (self.hashes.len() - 1) as u32
            }
        };
        self.links.push_front(&mut self.list, node);
        self.map.insert(hash, node);
        self.weight += weight;
    }

    /// Forgets `hash`; returns its weight when it was remembered.
    pub fn remove(&mut self, hash: u64) -> Option<u64> {
        let node = self.map.remove(&hash)?;
        self.links.unlink(&mut self.list, node);
        self.free.push(node);
        let w = self.weights[node as usize];
        self.weight -= w;
        Some(w)
    }

    /// True when `hash` is remembered.
    pub fn contains(&self, hash: u64) -> bool {
        self.map.contains_key(&hash)
    }

    /// Forgets the oldest ghost.
    pub fn pop_oldest(&mut self) -> bool {
        let Some(node) = self.links.pop_back(&mut self.list) else {
            return false;
        };
        self.map.remove(&self.hashes[node as usize]);
        self.weight -= self.weights[node as usize];
        self.free.push(node);
        true
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
    }
}
