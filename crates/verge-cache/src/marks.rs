//! Per-slot hit marks: the whole of what a hit costs a lazy policy.
//!
//! quick_cache, S3-FIFO and SIEVE show that a hit need not reorder
//! anything: it can bump a small counter that the policy reads when it next
//! looks for a victim. Every hit bumps its slot's [`Mark`]; lazy policies
//! (FIFO, TTL, S3-FIFO, SIEVE, W-TinyLFU, LIRS) read and clear marks while
//! they evict, and are not called on most hits. Eager policies (LRU, LFU,
//! ARC, GDSF) are told of every hit instead, and for them nothing is marked.
//!
//! The cache keeps each mark inside its slab entry, on the cache line a hit
//! reads anyway (a separate byte array cost a hit a third of its speed);
//! policies reach marks through the [`Marks`] trait, which the slab and the
//! plain [`MarkVec`] (miniature simulations, tests) both implement.
//!
//! The same trait carries a policy's ghosts back to the slots' owner:
//! [`Marks::keep_ghost`] keeps an evicted key's slot (its hash, no value),
//! [`Marks::release_ghost`] gives it back.

use crate::policy::Meta;
use std::num::NonZeroU8;

/// One slot's mark: hits since the policy last cleared it, saturating at
/// [`Mark::MAX`].
///
/// Never zero, so that an optional entry holding a mark is no larger than
/// the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark(NonZeroU8);

impl Mark {
    /// A mark saturates here (S3-FIFO reads at most 3, W-TinyLFU's sketch counters hold 15).
    pub const MAX: u8 = 15;
    /// Always set: keeps the byte non-zero.
    const ALWAYS: NonZeroU8 = match NonZeroU8::new(0x40) {
        Some(bit) => bit,
        None => panic!("0x40 is not zero"),
    };
    /// A new entry's mark: no hits.
    pub const NEW: Mark = Mark(Self::ALWAYS);

    /// Counts a hit.
    #[inline]
    pub fn hit(&mut self) {
        let b = self.0.get();
        // A saturated mark is not written again: no store, so a hot
        // slot's cache line is not pulled from another core's cache.
        if b & Self::MAX < Self::MAX {
            self.0 = Self::ALWAYS | (b + 1);
        }
    }

    /// The hits marked.
    #[inline]
    pub fn hits(self) -> u8 {
        self.0.get() & Self::MAX
    }

    #[inline]
    fn with(hits: u8) -> Mark {
        Mark(Self::ALWAYS | hits.min(Self::MAX))
    }
}

/// The marks of a set of slots, as a policy reads and clears them.
///
/// A slot without an entry has no mark: it reads as 0 hits, and writes to
/// it are ignored.
pub trait Marks {
    /// The mark of `slot`, if it holds an entry.
    fn mark(&self, slot: u32) -> Option<Mark>;
    /// The mark of `slot` to change, if it holds an entry.
    fn mark_mut(&mut self, slot: u32) -> Option<&mut Mark>;
    /// Hits counted since the marks were created (hill climbers use it).
    fn hits(&self) -> u64;
    /// What the cache knows of the entry in `slot` (its key's hash, weight,
    /// expiry and cost), so that a policy that reads it rarely (the
    /// adaptive one, on sampled hits and switches) need not keep a copy.
    fn meta(&self, slot: u32) -> Option<Meta>;
    /// The victim `slot` that [`crate::policy::Eviction::evict`] is about
    /// to return stays as a *ghost*: its value goes, but the owner keeps
    /// the key's hash under `slot`, and a later insert of that key reuses
    /// `slot`, where the policy finds its ghost. Ghosts so cost no table of
    /// their own and are found by the insert's own lookup (as in quick_cache).
    fn keep_ghost(&mut self, slot: u32);
    /// The policy forgets its ghost in `slot`: the owner may free the slot.
    /// A slot that holds an entry again (a ghost revived while a policy was
    /// being replaced) stays.
    fn release_ghost(&mut self, slot: u32);

    /// The hits marked on `slot`.
    #[inline]
    fn get(&self, slot: u32) -> u8 {
        self.mark(slot).map_or(0, Mark::hits)
    }

    /// Overwrites the hits marked on `slot` (a policy spending part of them).
    #[inline]
    fn set(&mut self, slot: u32, hits: u8) {
        if let Some(m) = self.mark_mut(slot) {
            *m = Mark::with(hits);
        }
    }

    /// The hits marked on `slot`, clearing them.
    #[inline]
    fn take(&mut self, slot: u32) -> u8 {
        self.mark_mut(slot).map_or(0, |m| std::mem::replace(m, Mark::NEW).hits())
    }
}

/// What a policy asked of the slots' owner during one call, for the owner
/// to carry out after it: keep its victim as a ghost ([`Marks::keep_ghost`]),
/// free the ghosts it forgot ([`Marks::release_ghost`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct GhostRequests {
    /// The victim to keep as a ghost, until taken.
    pub(crate) kept: Option<u32>,
    /// Ghosts released, until taken (in order).
    pub(crate) released: Vec<u32>,
}

/// Marks in a vector of their own, for a policy run without a cache (the
/// adaptive policy's miniatures, tests); every slot counts as holding an
/// entry once [`MarkVec::reset`] has named it, and has metadata once
/// [`MarkVec::hold`] has given it some.
#[derive(Clone, Debug, Default)]
pub struct MarkVec {
    marks: Vec<Mark>,
    metas: Vec<Option<Meta>>,
    hits: u64,
    ghosts: GhostRequests,
}

impl MarkVec {
    /// Counts a hit on `slot`.
    #[inline]
    pub fn hit(&mut self, slot: u32) {
        self.hits += 1;
        if let Some(m) = self.marks.get_mut(slot as usize) {
            m.hit();
        }
    }

    /// A new entry lives in `slot`: no hits yet.
    #[inline]
    pub fn reset(&mut self, slot: u32) {
        crate::policy::grow(&mut self.marks, slot, Mark::NEW);
        self.marks[slot as usize] = Mark::NEW;
    }

    /// A new entry described by `meta` lives in `slot`, as in a cache:
    /// for a policy that asks for [`Marks::meta`] (the adaptive one).
    pub fn hold(&mut self, slot: u32, meta: Meta) {
        self.reset(slot);
        crate::policy::grow(&mut self.metas, slot, None);
        self.metas[slot as usize] = Some(meta);
    }

    /// Whether the policy asked to keep `victim` as a ghost (asked since
    /// the last call); clears the request.
    #[inline]
    pub fn take_kept(&mut self, victim: u32) -> bool {
        self.ghosts.kept.take() == Some(victim)
    }

    /// The ghosts the policy released since the last call, in order.
    #[inline]
    pub fn drain_released(&mut self) -> std::vec::Drain<'_, u32> {
        self.ghosts.released.drain(..)
    }
}

impl Marks for MarkVec {
    #[inline]
    fn mark(&self, slot: u32) -> Option<Mark> {
        self.marks.get(slot as usize).copied()
    }

    #[inline]
    fn mark_mut(&mut self, slot: u32) -> Option<&mut Mark> {
        self.marks.get_mut(slot as usize)
    }

    fn hits(&self) -> u64 {
        self.hits
    }

    fn meta(&self, slot: u32) -> Option<Meta> {
        self.metas.get(slot as usize).copied().flatten()
    }

    fn keep_ghost(&mut self, slot: u32) {
        self.ghosts.kept = Some(slot);
    }

    fn release_ghost(&mut self, slot: u32) {
        self.ghosts.released.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_saturate_and_clear() {
        let mut m = MarkVec::default();
        m.reset(3);
        for _ in 0..20 {
            m.hit(3);
        }
        assert_eq!(m.get(3), Mark::MAX);
        assert_eq!(m.take(3), Mark::MAX);
        assert_eq!(m.get(3), 0);
        m.set(3, 2);
        m.hit(3);
        assert_eq!(m.take(3), 3);
        m.hit(3);
        m.reset(3);
        assert_eq!((m.get(3), m.hits()), (0, 22));
        assert_eq!(m.get(99), 0, "an unknown slot has no mark");
        assert_eq!(std::mem::size_of::<Option<Mark>>(), 1, "a missing mark costs no byte");
    }
}
