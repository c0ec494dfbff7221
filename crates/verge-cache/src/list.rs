//! Index-linked doubly linked lists over slot numbers.
//!
//! Every policy keeps its recency or insertion orders as lists of slots
//! (`u32` indices into the cache's slab). The links of all lists of one
//! policy live in one `Links` vector, so moving an entry is a few stores
//! into a flat array: no allocation per node, O(1) everything.

/// The "no slot" marker used for list ends.
pub(crate) const NIL: u32 = u32::MAX;

/// Head, tail and length of one list whose links live in a [`Links`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct List {
    /// Most recently pushed end (MRU).
    pub head: u32,
    /// Oldest end (LRU), where eviction looks first.
    pub tail: u32,
    /// Number of slots in the list.
    pub len: usize,
}

impl Default for List {
    fn default() -> Self {
        List { head: NIL, tail: NIL, len: 0 }
    }
}

impl List {
    /// True when the list holds no slot.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `prev`/`next` links of every slot, shared by all lists of one policy.
/// A slot is in at most one list of a given `Links` at a time.
#[derive(Clone, Debug, Default)]
pub(crate) struct Links {
    /// `[prev, next]` per slot; `prev` points towards the head.
    links: Vec<[u32; 2]>,
}

impl Links {
    /// Makes room for `slot` (slabs grow on demand).
    #[inline]
    pub fn ensure(&mut self, slot: u32) {
        let need = slot as usize + 1;
        if self.links.len() < need {
            self.links.resize(need.max(self.links.len() * 2), [NIL, NIL]);
        }
    }

    /// The slot after `slot` towards the tail, or `NIL`.
    #[cfg(test)]
    pub fn next(&self, slot: u32) -> u32 {
        self.links[slot as usize][1]
    }

    /// The slot before `slot` towards the head, or `NIL`.
    #[inline]
    pub fn prev(&self, slot: u32) -> u32 {
        self.links[slot as usize][0]
    }

    /// Pushes `slot` at the head (MRU end) of `list`.
    #[inline]
    pub fn push_front(&mut self, list: &mut List, slot: u32) {
        self.ensure(slot);
        self.links[slot as usize] = [NIL, list.head];
        if list.head != NIL {
            self.links[list.head as usize][0] = slot;
        } else {
            list.tail = slot;
        }
        list.head = slot;
        list.len += 1;
    }

    /// Removes `slot`, which must be in `list`.
    #[inline]
    pub fn unlink(&mut self, list: &mut List, slot: u32) {
        let [prev, next] = self.links[slot as usize];
        if prev != NIL {
            self.links[prev as usize][1] = next;
        } else {
            list.head = next;
        }
        if next != NIL {
            self.links[next as usize][0] = prev;
        } else {
            list.tail = prev;
        }
        list.len -= 1;
    }

    /// Moves `slot`, which must be in `list`, to the head of `list`.
    #[inline]
    pub fn move_to_front(&mut self, list: &mut List, slot: u32) {
        if list.head != slot {
            self.unlink(list, slot);
            self.push_front(list, slot);
        }
    }

    /// Removes and returns the tail (LRU end) of `list`.
    #[inline]
    pub fn pop_back(&mut self, list: &mut List) -> Option<u32> {
        let tail = list.tail;
        if tail == NIL {
            return None;
        }
        self.unlink(list, tail);
        Some(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(links: &Links, list: &List) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = list.head;
        while at != NIL {
            out.push(at);
            at = links.next(at);
        }
        out
    }

    #[test]
    fn push_move_pop_keep_order() {
        let mut links = Links::default();
        let mut list = List::default();
        for s in 0..4 {
            links.push_front(&mut list, s);
        }
        assert_eq!(collect(&links, &list), vec![3, 2, 1, 0]);
        links.move_to_front(&mut list, 1);
        assert_eq!(collect(&links, &list), vec![1, 3, 2, 0]);
        assert_eq!(links.pop_back(&mut list), Some(0));
        links.unlink(&mut list, 3);
        assert_eq!(collect(&links, &list), vec![1, 2]);
        assert_eq!(list.len, 2);
        assert_eq!(links.prev(2), 1);
    }
}
