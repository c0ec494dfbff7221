//! First in, first out: the cheapest policy, and S3-FIFO's building block.

use super::{Eviction, Meta};
use crate::list::{Links, List};

/// FIFO over insertion order; hits change nothing.
#[derive(Debug, Default)]
pub struct Fifo {
    links: Links,
    list: List,
}

impl Eviction for Fifo {
    #[inline]
    fn on_insert(&mut self, slot: u32, _meta: &Meta) {
        self.links.push_front(&mut self.list, slot);
    }
    #[inline]
    fn on_hit(&mut self, _slot: u32) {}
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
    fn evicts_oldest_insert_despite_hits() {
        let (hits, resident) = replay(&mut Fifo::default(), 2, &[1, 2, 1, 3]);
        assert_eq!(hits, 1);
        assert_eq!(resident, vec![2, 3]);
    }
}
