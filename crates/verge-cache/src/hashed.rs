//! Maps keyed by key hashes. Ghost lists, LIRS's stack and the miniature
//! simulations index entries by the 64-bit hash the cache already computed;
//! hashing that again with a general-purpose hasher is wasted work, so
//! their maps only spread it with one multiplication.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// Odd constant of Fibonacci hashing (2^64 / φ): a product's top bits,
/// which hashbrown's tags read, depend on every bit of the key, so sampled
/// hashes (whose top bits are all zero) still get distinct tags.
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

/// `hash` spread for a hash table: the product with [`SPREAD`].
#[inline]
pub(crate) fn spread(hash: u64) -> u64 {
    hash.wrapping_mul(SPREAD)
}

/// A map from key hashes to `V`.
pub(crate) type HashKeyed<V> = HashMap<u64, V, Spread>;

/// Builds [`SpreadHasher`]s.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Spread;

impl BuildHasher for Spread {
    type Hasher = SpreadHasher;

    fn build_hasher(&self) -> SpreadHasher {
        SpreadHasher(0)
    }
}

/// Hashes a `u64` that is a hash already with one multiplication.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpreadHasher(u64);

impl Hasher for SpreadHasher {
    #[inline]
    fn write_u64(&mut self, hash: u64) {
        self.0 = spread(self.0 ^ hash);
    }

    /// Other key types (unused here) fold their bytes in one at a time.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_hashes_get_spread_tags() {
        // Hashes under 2^58 (one key in 64 sampled) share their top 7 bits;
        // spread, they should cover most of hashbrown's 128 tags.
        let tags: std::collections::HashSet<u64> = (0..4096u64).map(|i| Spread.hash_one(i << 40 | i) >> 57).collect();
        assert!(tags.len() > 100, "{} distinct tags", tags.len());
    }
}
