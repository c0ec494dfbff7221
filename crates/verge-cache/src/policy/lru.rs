//! Least recently used: the baseline every other policy is measured against.

use super::{Eviction, Meta};
use crate::list::{Links, List};

/// LRU over one recency list.
#[derive(Debug, Default)]
pub struct Lru {
    links: Links,
    list: List,
}

impl Eviction for Lru {
    #[inline]
    fn on_insert(&mut self, slot: u32, _meta: &Meta) {
        self.links.push_front(&mut self.list, slot);
    }
    #[inline]
    fn on_hit(&mut self, slot: u32) {
        self.links.move_to_front(&mut self.list, slot);
    }
    #[inline]
    fn evict(&mut self) -> Option<u32> {
        self.links.pop_back(&mut self.list)
    }
    #[inline]
    fn on_remove(&mut self, slot: u32) {
        self.links.unlink(&mut self.list, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::replay;
    use super::*;

    #[test]
    fn evicts_least_recent() {
        // 1 2 1 3: 2 is least recent when 3 arrives.
        let (hits, resident) = replay(&mut Lru::default(), 2, &[1, 2, 1, 3, 1]);
        assert_eq!(hits, 2);
        assert_eq!(resident, vec![1, 3]);
    }
}
