//! Index-linked doubly linked lists over slot numbers.
//!
//! Every policy keeps its recency or insertion orders as lists of slots
//! (`u32` indices into the cache's slab, or into the policy's own nodes).
//! The links of all lists of one policy live in one [`LinkStore`]: a flat
//! [`Links`] array (policies with no other per-slot data), a [`Node`] per
//! slot beside the policy's data ([`NodeLinks`]), or fields of nodes of the
//! policy's own (LIRS, two sets of links). Moving an entry is a few
//! stores: no allocation per node, O(1) everything.

/// The "no slot" marker used for list ends.
pub(crate) const NIL: u32 = u32::MAX;

/// Head, tail and length of one list whose links live in a [`LinkStore`].
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

/// Where the `[prev, next]` links of a set of lists live, and the list
/// operations over them. [`Links`] keeps them in a flat array of their own;
/// a policy whose nodes carry other data may keep them inside its nodes
/// instead, so that visiting a node reads one cache line, not two.
pub(crate) trait LinkStore {
    /// The `[prev, next]` links of `n` (`prev` points towards the head).
    fn links(&mut self, n: u32) -> &mut [u32; 2];

    /// Makes room for `n` before it is first linked (a no-op where nodes
    /// are allocated elsewhere).
    #[inline]
    fn ensure(&mut self, _n: u32) {}

    /// The node before `n` (towards the head), or [`NIL`].
    #[inline]
    fn prev(&mut self, n: u32) -> u32 {
        self.links(n)[0]
    }

    /// Links `n` in as the new head of `list`.
    #[inline]
    fn push_front(&mut self, list: &mut List, n: u32) {
        self.ensure(n);
        *self.links(n) = [NIL, list.head];
        if list.head != NIL {
            self.links(list.head)[0] = n;
        } else {
            list.tail = n;
        }
        list.head = n;
        list.len += 1;
    }

    /// Takes `n` out of `list` (it must be in it).
    #[inline]
    fn unlink(&mut self, list: &mut List, n: u32) {
        let [prev, next] = *self.links(n);
        if prev != NIL {
            self.links(prev)[1] = next;
        } else {
            list.head = next;
        }
        if next != NIL {
            self.links(next)[0] = prev;
        } else {
            list.tail = prev;
        }
        list.len -= 1;
    }

    /// Moves `n` (already in `list`) to the head.
    #[inline]
    fn move_to_front(&mut self, list: &mut List, n: u32) {
        if list.head != n {
            self.unlink(list, n);
            self.push_front(list, n);
        }
    }

    /// Unlinks and returns the tail of `list`.
    #[inline]
    fn pop_back(&mut self, list: &mut List) -> Option<u32> {
        let tail = list.tail;
        if tail == NIL {
            return None;
        }
        self.unlink(list, tail);
        Some(tail)
    }
}

/// Links of lists over slots, in a flat array indexed by slot. A slot is
/// in at most one list of a given `Links` at a time.
#[derive(Clone, Debug, Default)]
pub(crate) struct Links {
    /// `[prev, next]` per slot; `prev` points towards the head.
    links: Vec<[u32; 2]>,
}

impl Links {
    /// The slot after `slot` (towards the tail), or [`NIL`].
    #[cfg(test)]
    pub fn next(&self, slot: u32) -> u32 {
        self.links[slot as usize][1]
    }
}

impl LinkStore for Links {
    #[inline]
    fn links(&mut self, n: u32) -> &mut [u32; 2] {
        &mut self.links[n as usize]
    }

    /// Grows the array to hold `n` (slabs grow on demand).
    #[inline]
    fn ensure(&mut self, n: u32) {
        crate::policy::grow(&mut self.links, n, [NIL, NIL]);
    }
}

/// A policy's per-slot data with the slot's `[prev, next]` links beside it
/// (in one list at a time), so that visiting a slot reads one cache line;
/// it derefs to the data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node<T> {
    links: [u32; 2],
    data: T,
}

impl<T: Default> Default for Node<T> {
    fn default() -> Self {
        Node { links: [NIL; 2], data: T::default() }
    }
}

impl<T> std::ops::Deref for Node<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T> std::ops::DerefMut for Node<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

/// A policy's nodes, indexed by slot, seen as the links of its lists; the
/// vector grows on demand (slabs grow as slots are first used).
pub(crate) struct NodeLinks<'a, T>(pub &'a mut Vec<Node<T>>);

impl<T: Clone + Default> LinkStore for NodeLinks<'_, T> {
    #[inline]
    fn links(&mut self, n: u32) -> &mut [u32; 2] {
        &mut self.0[n as usize].links
    }

    #[inline]
    fn ensure(&mut self, n: u32) {
        crate::policy::grow(self.0, n, Node::default());
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
