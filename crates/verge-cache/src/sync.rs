//! The thread-safe cache: keys are spread over independently locked shards,
//! each a single-threaded [`Cache`], so threads touching different shards
//! never contend.

use crate::cache::{Cache, CacheConfig, EntryOptions};
use crate::policy::Role;
use crate::CacheError;
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard};

/// One shard, alone on its cache lines (two, for the adjacent-line
/// prefetcher): a lock taken by one thread never slows another's shard.
#[repr(align(128))]
struct Shard<T>(Mutex<T>);

/// A sharded, mutex-per-shard cache; values are cloned out.
pub struct SyncCache<K, V, S = foldhash::fast::RandomState> {
    shards: Box<[Shard<Cache<K, V, S>>]>,
    hasher: S,
    mask: u64,
}

impl<K: Hash + Eq, V: Clone> SyncCache<K, V> {
    /// A cache of `config` split into `shards` shards (rounded up to a power
    /// of two; each gets an equal share of the capacity).
    pub fn new(config: CacheConfig, shards: usize) -> Result<Self, CacheError> {
        Self::with_hasher(config, shards, foldhash::fast::RandomState::default())
    }
}

impl<K: Hash + Eq, V: Clone, S: BuildHasher + Clone> SyncCache<K, V, S> {
    /// Like [`SyncCache::new`] with an explicit hasher.
    pub fn with_hasher(config: CacheConfig, shards: usize, hasher: S) -> Result<Self, CacheError> {
        if config.max_entries == 0 {
            return Err(CacheError::ZeroCapacity("max_entries"));
        }
        let n = shards.clamp(1, config.max_entries).next_power_of_two().min(1 << 16);
        let n = if n > config.max_entries { n / 2 } else { n }.max(1);
        let per_shard = CacheConfig {
            max_entries: config.max_entries.div_ceil(n),
            max_bytes: config.max_bytes.map(|b| b.div_ceil(n as u64)),
            policy: config.policy,
        };
        // With the adaptive policy, shard 0 alone runs the miniatures (its
        // keys are a hash-partitioned sample of all of them) and the other
        // shards adopt its choice: their requests pay only for the live policy.
        let choice = Arc::default();
        let role = |i: usize| {
            if n == 1 {
                Role::Solo
            } else if i == 0 {
                Role::Leader(Arc::clone(&choice))
            } else {
                Role::Follower(Arc::clone(&choice))
            }
        };
        let shards = (0..n)
            .map(|i| Cache::with_role(per_shard, hasher.clone(), role(i)).map(|c| Shard(Mutex::new(c))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SyncCache { shards: shards.into_boxed_slice(), hasher, mask: n as u64 - 1 })
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The key's hash (the shards hash alike, so they reuse it) and its
    /// shard, locked.
    #[inline]
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> (u64, MutexGuard<'_, Cache<K, V, S>>) {
        let hash = self.hasher.hash_one(key);
        // Middle bits: the table inside the shard uses the low and top ones.
        let m = &self.shards[((hash >> 32) & self.mask) as usize].0;
        // A panic while holding a shard leaves a consistent cache behind
        // (every mutation completes before user code runs), so poison is ignored.
        (hash, m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Looks `key` up (counting the access); a clone of the value.
    pub fn get<Q>(&self, key: &Q, now: u64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, mut shard) = self.shard(key);
        shard.get_hashed(hash, key, now).cloned()
    }

    /// Inserts or replaces `key` with default options.
    pub fn insert(&self, key: K, value: V, now: u64) -> Result<bool, CacheError> {
        self.insert_with(key, value, EntryOptions::default(), now)
    }

    /// Inserts or replaces `key` with `options`; evicted entries are dropped.
    pub fn insert_with(&self, key: K, value: V, options: EntryOptions, now: u64) -> Result<bool, CacheError> {
        let (hash, mut shard) = self.shard(&key);
        shard.insert_hashed(hash, key, value, options, now, |_, _| {})
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).1.remove(key)
    }

    /// Entries held across all shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    /// True when no shard holds anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicyKind;

    #[test]
    fn threads_share_one_bounded_cache() {
        let config = CacheConfig { max_entries: 256, max_bytes: None, policy: PolicyKind::Adaptive };
        let cache: SyncCache<u64, u64> = SyncCache::new(config, 8).expect("valid config");
        assert_eq!(cache.shard_count(), 8);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let cache = &cache;
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        let k = (i * 31 + t) % 300;
                        if cache.get(&k, 0).is_none() {
                            cache.insert(k, k * 2, 0).expect("fits");
                        }
                    }
                });
            }
        });
        assert!(cache.len() <= 256);
        cache.insert(7, 14, 0).expect("fits");
        assert_eq!(cache.get(&7, 0), Some(14));
        assert_eq!(cache.remove(&7), Some(14));
        assert!(!cache.is_empty());
    }

    #[test]
    fn adaptive_shards_follow_the_first_ones_choice() {
        // A loop a little larger than the cache: the leader's miniatures
        // move it off W-TinyLFU's first guess or keep it; either way every
        // follower serves with what the leader chose.
        let config = CacheConfig { max_entries: 4096, max_bytes: None, policy: PolicyKind::Adaptive };
        let cache: SyncCache<u64, u64> = SyncCache::new(config, 4).expect("valid config");
        for i in 0..400_000u64 {
            let k = i % 4500;
            if cache.get(&k, 0).is_none() {
                cache.insert(k, k, 0).expect("fits");
            }
        }
        let active: Vec<PolicyKind> = cache.shards.iter().map(|s| s.0.lock().expect("not poisoned").active_policy()).collect();
        assert!(active.iter().all(|&p| p == active[0]), "{active:?}");
    }

    #[test]
    fn tiny_capacity_gets_fewer_shards() {
        let cache: SyncCache<u64, u64> = SyncCache::new(CacheConfig::entries(3), 64).expect("valid config");
        assert!(cache.shard_count() <= 3);
        for k in 0..100 {
            cache.insert(k, k, 0).expect("fits");
        }
        assert!(cache.len() <= 4, "per-shard capacity rounds up: {}", cache.len());
    }
}
