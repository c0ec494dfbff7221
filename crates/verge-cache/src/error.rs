//! Errors of the cache library.

use thiserror::Error;

/// Why a cache could not be built or an entry not stored.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CacheError {
    /// A capacity of zero entries or zero bytes holds nothing.
    #[error("cache capacity must be at least 1 ({0} given as 0)")]
    ZeroCapacity(&'static str),
    /// The entry alone is larger than the whole byte budget.
    #[error("entry of {size} bytes exceeds the cache's capacity of {capacity} bytes")]
    TooLarge {
        /// Size of the refused entry.
        size: u64,
        /// The cache's byte budget.
        capacity: u64,
    },
    /// The policy name is none of [`crate::PolicyKind::ALL`].
    #[error("unknown eviction policy {0:?} (known: lru, lfu, fifo, ttl, arc, gdsf, s3fifo, sieve, wtinylfu, lirs, adaptive)")]
    UnknownPolicy(String),
}
