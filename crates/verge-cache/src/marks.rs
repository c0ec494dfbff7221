//! Per-slot hit marks: the whole of what a hit costs a lazy policy.
//!
//! quick_cache, S3-FIFO and SIEVE show that a hit need not reorder
//! anything: it can bump a small counter that the policy reads when it next
//! looks for a victim. The cache owns one byte per slot and bumps it on
//! every hit; lazy policies (FIFO, TTL, S3-FIFO, SIEVE, W-TinyLFU, LIRS)
//! read and clear it while they evict, and are not called on most hits.
//! Eager policies (LRU, LFU, ARC, GDSF) are told of every hit instead, and
//! for them the cache marks nothing.

/// Hits per slot since the policy last cleared the slot's mark, saturating
/// at [`Marks::MAX`], and the count of all hits (hill climbers use it).
///
/// A policy may also flag a slot as *reported*: hits on it are then passed
/// to [`crate::policy::Eviction::on_hit`] as well (LIRS handles hits on its
/// few HIR entries at once and lets hits on LIR entries wait).
#[derive(Clone, Debug, Default)]
pub struct Marks {
    marks: Vec<u8>,
    hits: u64,
}

impl Marks {
    /// A mark saturates here (S3-FIFO reads at most 3, W-TinyLFU's sketch counters hold 15).
    pub const MAX: u8 = 15;
    /// The bit of a slot's byte that asks for its hits to be reported.
    const REPORT: u8 = 0x80;

    /// Counts a hit on `slot` (which [`Marks::reset`] made valid); true when
    /// the policy flagged the slot to hear of its hits.
    #[inline]
    pub fn hit(&mut self, slot: u32) -> bool {
        self.hits += 1;
        match self.marks.get_mut(slot as usize) {
            Some(m) => {
                // A saturated mark is not written again: no store, so a hot
                // slot's cache line is not pulled from another core's cache.
                if *m & Self::MAX < Self::MAX {
                    *m += 1;
                }
                *m & Self::REPORT != 0
            }
            None => false,
        }
    }

    /// Flags `slot` to have its hits reported, or stops doing so.
    #[inline]
    pub fn report(&mut self, slot: u32, on: bool) {
        if let Some(m) = self.marks.get_mut(slot as usize) {
            *m = if on { *m | Self::REPORT } else { *m & !Self::REPORT };
        }
    }

    /// A new entry lives in `slot`: no hits yet.
    #[inline]
    pub fn reset(&mut self, slot: u32) {
        crate::policy::grow(&mut self.marks, slot, 0);
        self.marks[slot as usize] = 0;
    }

    /// The hits marked on `slot`.
    #[inline]
    pub fn get(&self, slot: u32) -> u8 {
        self.marks.get(slot as usize).map_or(0, |m| m & Self::MAX)
    }

    /// Overwrites the hits marked on `slot` (a policy spending part of them).
    #[inline]
    pub fn set(&mut self, slot: u32, hits: u8) {
        if let Some(m) = self.marks.get_mut(slot as usize) {
            *m = (*m & Self::REPORT) | hits.min(Self::MAX);
        }
    }

    /// The hits marked on `slot`, clearing them (the report flag stays).
    #[inline]
    pub fn take(&mut self, slot: u32) -> u8 {
        self.marks.get_mut(slot as usize).map_or(0, |m| {
            let hits = *m & Self::MAX;
            *m &= Self::REPORT;
            hits
        })
    }

    /// Hits counted since the marks were created.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_saturate_and_clear() {
        let mut m = Marks::default();
        m.reset(3);
        for _ in 0..20 {
            m.hit(3);
        }
        assert_eq!(m.get(3), Marks::MAX);
        assert_eq!(m.take(3), Marks::MAX);
        assert_eq!(m.get(3), 0);
        m.set(3, 2);
        m.report(3, true);
        assert!(m.hit(3), "a flagged slot's hits are reported");
        assert_eq!(m.take(3), 3, "the flag is not a hit");
        m.report(3, false);
        assert!(!m.hit(3));
        m.reset(3);
        assert_eq!((m.get(3), m.hits()), (0, 22));
        assert_eq!(m.get(99), 0, "an unknown slot has no mark");
    }
}
