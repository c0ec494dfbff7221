//! Count-min sketch of 4-bit counters with periodic halving (TinyLFU).
//!
//! W-TinyLFU admits a new entry only when it was seen more often, recently,
//! than the entry it would push out. The sketch estimates those frequencies
//! in about half a byte per cached entry; halving every counter after
//! `10 × entries` increments makes old popularity fade (after Caffeine's
//! `FrequencySketch`). Also used for hotspot estimates.

const SEEDS: [u64; 4] = [0xc3a5_c85c_97cb_3127, 0xb492_b66f_be98_f273, 0x9ae1_6a3b_2f90_404f, 0xcbf2_9ce4_8422_2325];
const RESET_MASK: u64 = 0x7777_7777_7777_7777;
const ONE_MASK: u64 = 0x1111_1111_1111_1111;

/// Frequency estimator over key hashes.
#[derive(Debug)]
pub struct FrequencySketch {
    table: Vec<u64>,
    mask: u64,
    additions: u64,
    sample_size: u64,
}

impl FrequencySketch {
    /// A sketch sized for about `entries` distinct hot keys.
    pub fn new(entries: usize) -> Self {
        let words = entries.clamp(16, 1 << 26).next_power_of_two();
        FrequencySketch { table: vec![0; words], mask: (words - 1) as u64, additions: 0, sample_size: 10 * entries.max(16) as u64 }
    }

    #[inline]
    fn spread(hash: u64) -> u64 {
        let x = (hash ^ (hash >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^ (x >> 32)
    }

    #[inline]
    fn index(&self, h: u64, i: usize) -> usize {
        let x = h.wrapping_add(SEEDS[i]).wrapping_mul(SEEDS[i]);
        ((x ^ (x >> 31)) & self.mask) as usize
    }

    /// Estimated number of recent occurrences of `hash` (0..=15).
    #[inline]
    pub fn frequency(&self, hash: u64) -> u8 {
        let h = Self::spread(hash);
        let start = ((h & 3) << 2) as usize;
        let mut min = 15;
        for i in 0..4 {
            let shift = (start + i) << 2;
            let count = ((self.table[self.index(h, i)] >> shift) & 0xf) as u8;
            min = min.min(count);
        }
        min
    }

    /// Counts one occurrence of `hash`.
    #[inline]
    pub fn increment(&mut self, hash: u64) {
        let h = Self::spread(hash);
        let start = ((h & 3) << 2) as usize;
        let mut added = false;
        for i in 0..4 {
            let idx = self.index(h, i);
            let shift = (start + i) << 2;
            if (self.table[idx] >> shift) & 0xf < 15 {
                self.table[idx] += 1 << shift;
                added = true;
            }
        }
        if added {
            self.additions += 1;
            if self.additions >= self.sample_size {
                self.reset();
            }
        }
    }

    /// Halves every counter so that past popularity fades.
    fn reset(&mut self) {
        let mut odd = 0u64;
        for w in &mut self.table {
            odd += u64::from((*w & ONE_MASK).count_ones());
            *w = (*w >> 1) & RESET_MASK;
        }
        self.additions = (self.additions - (odd >> 2)) >> 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ages() {
        let mut s = FrequencySketch::new(16);
        for _ in 0..5 {
            s.increment(42);
        }
        assert!(s.frequency(42) >= 5);
        for _ in 0..20 {
            s.increment(42);
        }
        assert_eq!(s.frequency(42), 15, "counters saturate at 15");
        // 160 additions trigger a halving.
        for k in 0..200u64 {
            s.increment(1000 + k);
        }
        assert!(s.frequency(42) <= 8);
    }
}
