//! Per-slot hit marks: the whole of what a hit costs a lazy policy.
//!
//! quick_cache, S3-FIFO and SIEVE show that a hit need not reorder
//! anything: it can bump a small counter that the policy reads when it next
//! looks for a victim. The cache owns one byte per slot and bumps it on
//! every hit; lazy policies (FIFO, TTL, S3-FIFO, SIEVE, W-TinyLFU) read and
//! clear it while they evict, and are not called on a hit at all. Eager
//! policies (LRU, LFU, ARC, GDSF, LIRS) ignore the marks and are told of
//! every hit as before.

/// Hits per slot since the policy last cleared the slot's mark, saturating
/// at [`Marks::MAX`], and the count of all hits (hill climbers use it).
#[derive(Clone, Debug, Default)]
pub struct Marks {
    marks: Vec<u8>,
    hits: u64,
}

impl Marks {
    /// A mark saturates here (S3-FIFO reads at most 3, W-TinyLFU's sketch counters hold 15).
    pub const MAX: u8 = 15;

    /// Counts a hit on `slot` (which [`Marks::reset`] made valid).
    #[inline]
    pub fn hit(&mut self, slot: u32) {
        self.hits += 1;
        if let Some(m) = self.marks.get_mut(slot as usize) {
            *m += u8::from(*m < Self::MAX);
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
        self.marks.get(slot as usize).copied().unwrap_or(0)
    }

    /// Overwrites the mark of `slot` (a policy spending part of it).
    #[inline]
    pub fn set(&mut self, slot: u32, mark: u8) {
        if let Some(m) = self.marks.get_mut(slot as usize) {
            *m = mark;
        }
    }

    /// The hits marked on `slot`, clearing the mark.
    #[inline]
    pub fn take(&mut self, slot: u32) -> u8 {
        self.marks.get_mut(slot as usize).map_or(0, std::mem::take)
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
        m.reset(3);
        assert_eq!((m.get(3), m.hits()), (0, 20));
        assert_eq!(m.get(99), 0, "an unknown slot has no mark");
    }
}
