//! Count-min sketch of 4-bit counters with periodic halving (TinyLFU).
//!
//! W-TinyLFU admits a new entry only when it was seen more often, recently,
//! than the entry it would push out. The sketch estimates those frequencies
//! in about half a byte per cached entry; halving every counter after
//! `10 × entries` increments makes old popularity fade (after Caffeine's
//! `FrequencySketch`). Also used for hotspot estimates.

const RESET_MASK: u64 = 0x7777_7777_7777_7777;
const ONE_MASK: u64 = 0x1111_1111_1111_1111;

/// Frequency estimator over key hashes. The four counters of a key lie in
/// one 64-byte block of eight words (Caffeine's layout): one cache line per
/// lookup or increment.
#[derive(Debug)]
pub struct FrequencySketch {
    blocks: Vec<Block>,
    block_mask: u64,
    additions: u64,
    sample_size: u64,
}

impl FrequencySketch {
    /// A sketch sized for about `entries` distinct hot keys.
    pub fn new(entries: usize) -> Self {
        let words = entries.clamp(16, 1 << 26).next_power_of_two();
        FrequencySketch {
            blocks: vec![Block([0; 8]); words / 8],
            block_mask: (words / 8 - 1) as u64,
            additions: 0,
            sample_size: 10 * entries.max(16) as u64,
        }
    }

    /// The block of `hash`, and the word index in the block and bit shift
    /// of each of its four counters: counter `i` is one of two words
    /// (2i, 2i + 1) of the block, 16 nibbles each.
    #[inline]
    fn counters(&self, hash: u64) -> (usize, [(usize, u32); 4]) {
        let x = (hash ^ (hash >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let h = x ^ (x >> 32);
        let block = (h & self.block_mask) as usize;
        let c = (h >> 32).wrapping_mul(0x9e37_79b9) as u32;
        let counters = std::array::from_fn(|i| {
            let byte = c >> (i << 3);
            // Within 0..8 by construction; the mask lets the compiler see it.
            (((byte & 1) as usize + (i << 1)) & 7, ((byte >> 1) & 15) << 2)
        });
        (block, counters)
    }

    /// Estimated number of recent occurrences of `hash` (0..=15).
    #[inline]
    pub fn frequency(&self, hash: u64) -> u8 {
        let (block, counters) = self.counters(hash);
        let words = &self.blocks[block].0;
        counters.iter().map(|&(word, shift)| ((words[word] >> shift) & 0xf) as u8).min().unwrap_or(0)
    }

    /// Counts one occurrence of `hash`.
    #[inline]
    pub fn increment(&mut self, hash: u64) {
        self.add(hash, 1);
    }

    /// Counts `n` occurrences of `hash` at once (hits a lazy policy
    /// gathered in a slot's mark), each counter saturating at 15.
    #[inline]
    pub fn add(&mut self, hash: u64, n: u8) {
        let (block, counters) = self.counters(hash);
        let words = &mut self.blocks[block].0;
        let mut added = 0;
        for (word, shift) in counters {
            // Branch-free: a full counter gets 0 added.
            let step = (15 - ((words[word] >> shift) & 0xf)).min(u64::from(n));
            words[word] += step << shift;
            added |= step;
        }
        if added > 0 {
            self.additions += u64::from(n);
            if self.additions >= self.sample_size {
                self.reset();
            }
        }
    }

    /// Halves every counter so that past popularity fades.
    fn reset(&mut self) {
        let mut odd = 0u64;
        for w in self.blocks.iter_mut().flat_map(|b| &mut b.0) {
            odd += u64::from((*w & ONE_MASK).count_ones());
            *w = (*w >> 1) & RESET_MASK;
        }
        self.additions = self.additions.saturating_sub(odd >> 2) >> 1;
    }
}

/// Eight counter words on one cache line.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Block([u64; 8]);

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
        s.add(7, 4);
        s.add(7, 14);
        assert_eq!(s.frequency(7), 15, "a batch saturates too");
        // 160 additions trigger a halving.
        for k in 0..200u64 {
            s.increment(1000 + k);
        }
        assert!(s.frequency(42) <= 8);
    }
}
