//! Verge edge cache: bounded caches with selectable eviction policies and an
//! adaptive default that picks, from miniature simulations, whichever policy
//! wins on the current workload.
//!
//! - [`Cache`]: single-threaded, capacity in entries and/or bytes, per-entry
//!   TTL against an injected `now`.
//! - [`SyncCache`]: the same, sharded behind mutexes, for many threads.
//! - [`policy`]: LRU, LFU, FIFO, TTL, ARC, GDSF, S3-FIFO, SIEVE, W-TinyLFU,
//!   LIRS and the adaptive default, behind the [`policy::Eviction`] trait.
//! - [`Marks`]: a [`Mark`] per slot that every hit bumps (inside the slab
//!   entry), so that lazy policies need not be called on hits.
//! - [`predict`]: the pre-warming predictor (periodicity, key sequences).
//! - [`hotspot`]: top-K hot keys from a count-min sketch.
//! - [`rules`]: what an edge-cache entry's key and type may be.

mod cache;
mod error;
mod hashed;
pub mod hotspot;
mod list;
mod marks;
pub mod policy;
pub mod predict;
pub mod rules;
mod sketch;
mod sync;

pub use cache::{Cache, CacheConfig, CacheStats, EntryOptions};
pub use error::CacheError;
/// The fixed-seed hasher of [`Cache::with_seed`], for callers that want the same hashing.
pub use foldhash::fast::FixedState;
pub use marks::{Mark, MarkVec, Marks};
pub use policy::PolicyKind;
pub use sketch::FrequencySketch;
pub use sync::SyncCache;
