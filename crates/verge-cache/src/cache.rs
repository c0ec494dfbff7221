//! The single-threaded cache: a hash table of slab slots, a slab of
//! entries, an eviction policy over slots, and an expiry heap for TTLs.
//!
//! A slot is free, holds an entry, or is a policy's *ghost*: an evicted
//! key's hash kept in the table (no key, no value) so that the policy
//! learns when the key comes back, from the insert's own lookup.

use crate::marks::GhostRequests;
use crate::policy::{AnyPolicy, Eviction, Meta, PolicyKind, Role, Sizing};
use crate::{CacheError, Mark, Marks};
use hashbrown::{hash_table, HashTable};
use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{BuildHasher, Hash};

/// Never expires.
const NEVER: u64 = u64::MAX;

/// How large a cache is and which policy evicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries held at once.
    pub max_entries: usize,
    /// Most bytes held at once (sum of the entries' `bytes`); `None` counts entries only.
    pub max_bytes: Option<u64>,
    /// The eviction policy.
    pub policy: PolicyKind,
}

impl CacheConfig {
    /// A cache of `max_entries` entries with the default (adaptive) policy.
    pub fn entries(max_entries: usize) -> Self {
        CacheConfig { max_entries, max_bytes: None, policy: PolicyKind::default() }
    }

    /// How large the cache is for its policy: units are bytes under a byte
    /// budget (about one entry per KiB assumed for sketches and ghosts),
    /// else entries.
    pub(crate) fn sizing(&self) -> Sizing {
        match self.max_bytes {
            Some(bytes) => Sizing { units: bytes, entries: self.max_entries.min((bytes / 1024).clamp(16, 1 << 22) as usize) },
            None => Sizing { units: self.max_entries as u64, entries: self.max_entries },
        }
    }
}

/// Per-entry options of [`Cache::insert_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryOptions {
    /// Size in bytes, counted against `max_bytes`.
    pub bytes: u64,
    /// Time to live, in the units of `now` (`None`: until evicted).
    pub ttl: Option<u64>,
    /// Relative cost of fetching the entry again (cost-aware policies).
    pub cost: u32,
}

impl Default for EntryOptions {
    fn default() -> Self {
        EntryOptions { bytes: 1, ttl: None, cost: 1 }
    }
}

/// What a hit reads and writes; the key's hash and the entry's size live
/// apart ([`SlotInfo`]), so that with small keys and values an entry fills
/// half a cache line.
#[derive(Debug)]
struct Entry<K, V> {
    key: K,
    value: V,
    expires_at: u64,
    /// Its fetch cost ([`EntryOptions::cost`]), kept for the adaptive
    /// policy's switches (it fits in the padding of a small entry).
    cost: u32,
    /// The hits lazy policies read (see [`crate::marks`]).
    mark: Mark,
}

/// A slab slot, 32-byte aligned so that a small entry never straddles two
/// cache lines.
#[derive(Debug)]
#[repr(align(32))]
struct Slot<K, V>(Option<Entry<K, V>>);

// The mark fits in the entry's padding, and its never-zero byte tells an
// empty slot from a full one: a small slot stays 32 bytes.
const _: () = assert!(std::mem::size_of::<Slot<u64, u64>>() == 32);

/// What the cache keeps beside each slab slot: read when the entry leaves,
/// the table grows or the adaptive policy samples or switches, never on
/// other hits.
#[derive(Clone, Copy, Debug, Default)]
struct SlotInfo {
    /// The key's hash: finds the slot's bucket without hashing the key again.
    hash: u64,
    /// The entry's size in bytes.
    bytes: u64,
}

/// An entry's weight for the policy: its bytes under a byte budget (at
/// least 1), else 1.
fn weight(by_bytes: bool, bytes: u64) -> u64 {
    if by_bytes {
        bytes.max(1)
    } else {
        1
    }
}

/// The slab seen as the marks and metadata of its slots, for the policy's calls.
struct SlabMarks<'a, K, V> {
    slab: &'a mut [Slot<K, V>],
    info: &'a [SlotInfo],
    ghosts: &'a mut GhostRequests,
    hits: u64,
    /// Weights are the entries' bytes (a byte budget), else 1.
    by_bytes: bool,
}

impl<'a, K, V> SlabMarks<'a, K, V> {
    fn new(
        slab: &'a mut [Slot<K, V>],
        info: &'a [SlotInfo],
        ghosts: &'a mut GhostRequests,
        stats: &CacheStats,
        max_bytes: Option<u64>,
    ) -> Self {
        SlabMarks { slab, info, ghosts, hits: stats.hits, by_bytes: max_bytes.is_some() }
    }
}

impl<K, V> Marks for SlabMarks<'_, K, V> {
    #[inline]
    fn mark(&self, slot: u32) -> Option<Mark> {
        Some(self.slab.get(slot as usize)?.0.as_ref()?.mark)
    }

    #[inline]
    fn mark_mut(&mut self, slot: u32) -> Option<&mut Mark> {
        Some(&mut self.slab.get_mut(slot as usize)?.0.as_mut()?.mark)
    }

    fn hits(&self) -> u64 {
        self.hits
    }

    fn meta(&self, slot: u32) -> Option<Meta> {
        let e = self.slab.get(slot as usize)?.0.as_ref()?;
        let info = self.info[slot as usize];
        Some(Meta { hash: info.hash, weight: weight(self.by_bytes, info.bytes), expires_at: e.expires_at, cost: e.cost })
    }

    fn keep_ghost(&mut self, slot: u32) {
        self.ghosts.kept = Some(slot);
    }

    fn release_ghost(&mut self, slot: u32) {
        self.ghosts.released.push(slot);
    }
}

/// Hit and miss counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found nothing (or an expired entry).
    pub misses: u64,
    /// Entries pushed out by the policy to make room.
    pub evictions: u64,
    /// Entries dropped because their TTL passed.
    pub expirations: u64,
}

/// A bounded cache with a pluggable eviction policy (adaptive by default).
///
/// Time is injected: every call that may look at a TTL takes `now` (any
/// monotonic unit, e.g. milliseconds); the cache reads no clock.
pub struct Cache<K, V, S = foldhash::fast::RandomState> {
    /// Slots, found by the key's hash and compared by the slab's key (a
    /// ghost's by its hash alone).
    table: HashTable<u32>,
    /// Ghost slots in the table.
    ghosts: usize,
    /// The policy's ghost requests of its current call.
    requests: GhostRequests,
    hasher: S,
    slab: Vec<Slot<K, V>>,
    /// Each slot's key hash and size.
    info: Vec<SlotInfo>,
    free: Vec<u32>,
    policy: AnyPolicy,
    /// Hits on hashes at most this are reported to the policy (its `hit_hook`).
    hook: u64,
    kind: PolicyKind,
    max_entries: usize,
    max_bytes: Option<u64>,
    bytes: u64,
    /// Held entries that have a TTL.
    expiring: usize,
    expiry: BinaryHeap<Reverse<(u64, u32)>>,
    stats: CacheStats,
}

impl<K: Hash + Eq, V> Cache<K, V> {
    /// A cache of `max_entries` entries with the adaptive policy.
    pub fn new(max_entries: usize) -> Result<Self, CacheError> {
        Self::with_config(CacheConfig::entries(max_entries))
    }

    /// A cache built from `config`, with a randomly seeded hasher.
    pub fn with_config(config: CacheConfig) -> Result<Self, CacheError> {
        Self::with_hasher(config, foldhash::fast::RandomState::default())
    }
}

impl<K: Hash + Eq, V> Cache<K, V, foldhash::fast::FixedState> {
    /// A cache built from `config` with a fixed hash seed: reproducible runs
    /// (benchmarks, tests), at the price of predictable hashes.
    pub fn with_seed(config: CacheConfig, seed: u64) -> Result<Self, CacheError> {
        Self::with_hasher(config, foldhash::fast::FixedState::with_seed(seed))
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> Cache<K, V, S> {
    /// A cache built from `config` hashing with `hasher` (a fixed seed makes
    /// runs reproducible, since sampling follows key hashes).
    pub fn with_hasher(config: CacheConfig, hasher: S) -> Result<Self, CacheError> {
        Self::with_role(config, hasher, Role::Solo)
    }

    /// Like [`Cache::with_hasher`]; an adaptive policy decides as `role`
    /// says (a shard of a [`crate::SyncCache`] may follow another's choice).
    pub(crate) fn with_role(config: CacheConfig, hasher: S, role: Role) -> Result<Self, CacheError> {
        if config.max_entries == 0 {
            return Err(CacheError::ZeroCapacity("max_entries"));
        }
        if config.max_bytes == Some(0) {
            return Err(CacheError::ZeroCapacity("max_bytes"));
        }
        let policy = AnyPolicy::new(config.policy, config.sizing(), role);
        Ok(Cache {
            table: HashTable::with_capacity(config.max_entries.min(1 << 20)),
            ghosts: 0,
            requests: GhostRequests::default(),
            hasher,
            slab: Vec::new(),
            info: Vec::new(),
            free: Vec::new(),
            hook: policy.hit_hook(),
            policy,
            kind: config.policy,
            max_entries: config.max_entries,
            max_bytes: config.max_bytes,
            bytes: 0,
            expiring: 0,
            expiry: BinaryHeap::new(),
            stats: CacheStats::default(),
        })
    }

    /// The eviction policy in use.
    pub fn policy(&self) -> PolicyKind {
        self.kind
    }

    /// Sampled requests a shard of a [`crate::SyncCache`] queued for the
    /// shared judge, once there are enough to feed it.
    pub(crate) fn take_batch(&mut self) -> Option<Vec<Meta>> {
        self.policy.take_batch()
    }

    /// The policy evicting right now: for the adaptive default, the
    /// candidate it currently serves with (for metrics and reports).
    pub fn active_policy(&self) -> PolicyKind {
        self.policy.active(self.kind)
    }

    /// Number of entries held (expired ones included until noticed).
    pub fn len(&self) -> usize {
        self.table.len() - self.ghosts
    }

    /// True when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of the held entries' sizes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of held entries that have a TTL (expired ones included until
    /// noticed): Redis's `expires` count.
    pub fn expiring(&self) -> usize {
        self.expiring
    }

    /// Hit, miss, eviction and expiry counts since creation.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Looks `key` up and counts the access for the policy; `None` when
    /// absent or expired at `now` (an expired entry is dropped).
    #[inline]
    pub fn get<Q>(&mut self, key: &Q, now: u64) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_hashed(self.hasher.hash_one(key), key, now)
    }

    /// [`Cache::get`] for a key whose hash the caller already computed
    /// with this cache's hasher. Always inlined: left to the compiler, it
    /// was sometimes an out-of-line call under `get` and `SyncCache::get`,
    /// whose prologue and epilogue cost 13–20 instructions a hit.
    #[inline(always)]
    pub(crate) fn get_hashed<Q>(&mut self, hash: u64, key: &Q, now: u64) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(slot) = self.find_hashed(hash, key) else {
            self.stats.misses += 1;
            return None;
        };
        let e = self.slab[slot as usize].0.as_mut()?;
        if e.expires_at != NEVER && now >= e.expires_at {
            self.expire_on_read(slot);
            return None;
        }
        self.stats.hits += 1;
        // A policy that hears of every hit keeps no marks.
        if self.hook != u64::MAX {
            e.mark.hit();
        }
        if hash <= self.hook {
            self.report_hit(slot, hash);
        }
        self.slab[slot as usize].0.as_ref().map(|e| &e.value)
    }

    /// A read found `slot` expired: it counts as a miss and the entry goes.
    #[cold]
    #[inline(never)]
    fn expire_on_read(&mut self, slot: u32) {
        self.stats.misses += 1;
        self.stats.expirations += 1;
        self.drop_slot(slot);
    }

    /// Tells the policy of a hit (out of line: lazy policies seldom need it,
    /// and the hit path stays small enough to inline).
    #[inline(never)]
    fn report_hit(&mut self, slot: u32, hash: u64) {
        self.policy.on_hit(slot, hash, &mut SlabMarks::new(&mut self.slab, &self.info, &mut self.requests, &self.stats, self.max_bytes));
    }

    /// Looks `key` up without telling the policy (no effect on eviction).
    pub fn peek<Q>(&self, key: &Q, now: u64) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.find(key)?;
        let e = self.slab[slot as usize].0.as_ref()?;
        (e.expires_at == NEVER || now < e.expires_at).then_some(&e.value)
    }

    /// Inserts or replaces `key` with default options (1 byte, no TTL).
    /// Returns whether the entry is held after eviction made room.
    pub fn insert(&mut self, key: K, value: V, now: u64) -> Result<bool, CacheError> {
        self.insert_with(key, value, EntryOptions::default(), now, |_, _| {})
    }

    /// Inserts or replaces `key`; entries pushed out to make room (or the
    /// new one, when the policy refuses to admit it) are handed to `evicted`
    /// (a tiered cache demotes them). Returns whether the entry is held.
    pub fn insert_with(
        &mut self,
        key: K,
        value: V,
        options: EntryOptions,
        now: u64,
        evicted: impl FnMut(K, V),
    ) -> Result<bool, CacheError> {
        self.insert_hashed(self.hasher.hash_one(&key), key, value, options, now, evicted)
    }

    /// [`Cache::insert_with`] for a key whose hash the caller already
    /// computed with this cache's hasher.
    pub(crate) fn insert_hashed(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        options: EntryOptions,
        now: u64,
        mut evicted: impl FnMut(K, V),
    ) -> Result<bool, CacheError> {
        if let Some(max) = self.max_bytes {
            if options.bytes > max {
                return Err(CacheError::TooLarge { size: options.bytes, capacity: max });
            }
        }
        // One probe finds the old entry (whose slot the new one takes over,
        // so that a key keeps its place in memory), the key's ghost (whose
        // slot it comes back to) or the free bucket.
        let (slab, info) = (&self.slab, &self.info);
        let eq = |&s: &u32| match &slab[s as usize].0 {
            Some(e) => e.key == key,
            None => info[s as usize].hash == hash,
        };
        let rehash = |&s: &u32| info[s as usize].hash;
        let slot = match self.table.entry(hash, eq, rehash) {
            hash_table::Entry::Occupied(found) => {
                let old = *found.get();
                if self.slab[old as usize].0.is_some() {
                    // Ghosts this releases are freed after the insert.
                    self.unpolicy(old);
                    self.vacate(old);
                } else {
                    self.ghosts -= 1;
                }
                old
            }
            hash_table::Entry::Vacant(free) => {
                let slot = match self.free.pop() {
                    Some(s) => s,
                    None => {
                        self.slab.push(Slot(None));
                        self.info.push(SlotInfo::default());
                        (self.slab.len() - 1) as u32
                    }
                };
                free.insert(slot);
                slot
            }
        };
        let expires_at = options.ttl.map_or(NEVER, |ttl| now.saturating_add(ttl));
        self.slab[slot as usize].0 = Some(Entry { key, value, expires_at, cost: options.cost, mark: Mark::NEW });
        self.info[slot as usize] = SlotInfo { hash, bytes: options.bytes };
        self.bytes += options.bytes;
        if expires_at != NEVER {
            self.expiring += 1;
            self.expiry.push(Reverse((expires_at, slot)));
        }
        let meta = Meta { hash, weight: weight(self.max_bytes.is_some(), options.bytes), expires_at, cost: options.cost };
        self.policy.on_insert(
            slot,
            &meta,
            &mut SlabMarks::new(&mut self.slab, &self.info, &mut self.requests, &self.stats, self.max_bytes),
        );
        // An adaptive policy may have switched to a policy that hooks hits
        // differently, and released the old one's ghosts.
        self.hook = self.policy.hit_hook();
        self.free_released();
        let mut kept = true;
        while self.over_budget() {
            self.requests.kept = None;
            let victim = match self.pop_expired(now) {
                Some(s) => s,
                None => match self.policy.evict(&mut SlabMarks::new(
                    &mut self.slab,
                    &self.info,
                    &mut self.requests,
                    &self.stats,
                    self.max_bytes,
                )) {
                    Some(s) => {
                        self.stats.evictions += 1;
                        s
                    }
                    None => break,
                },
            };
            if victim == slot {
                kept = false;
            }
            let e = if self.requests.kept == Some(victim) {
                self.ghosts += 1;
                self.vacate(victim)
            } else {
                self.take_slot(victim)
            };
            if let Some(e) = e {
                evicted(e.key, e.value);
            }
            self.free_released();
        }
        Ok(kept)
    }

    /// Frees the ghost slots the policy released (but not one that holds
    /// an entry again: a ghost revived as its policy was being replaced).
    fn free_released(&mut self) {
        while let Some(slot) = self.requests.released.pop() {
            if self.slab[slot as usize].0.is_none() {
                self.ghosts -= 1;
                self.unindex(slot);
            }
        }
    }

    /// Removes `key`, returning its value if it was held (even if expired).
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.find(key)?;
        self.drop_slot(slot).map(|e| e.value)
    }

    /// Drops every entry whose TTL passed by `now`; returns how many.
    pub fn purge_expired(&mut self, now: u64) -> usize {
        let mut n = 0;
        while let Some(slot) = self.pop_expired(now) {
            self.take_slot(slot);
            self.free_released();
            n += 1;
        }
        n
    }

    #[inline]
    fn find<Q>(&self, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find_hashed(self.hasher.hash_one(key), key)
    }

    #[inline]
    fn find_hashed<Q>(&self, hash: u64, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slab = &self.slab;
        self.table.find(hash, |&s| slab[s as usize].0.as_ref().is_some_and(|e| e.key.borrow() == key)).copied()
    }

    fn over_budget(&self) -> bool {
        self.len() > self.max_entries || self.max_bytes.is_some_and(|max| self.bytes > max)
    }

    /// Pops the next entry expired at `now` from the expiry heap and tells
    /// the policy it is gone; stale heap records are skipped.
    fn pop_expired(&mut self, now: u64) -> Option<u32> {
        while let Some(&Reverse((at, slot))) = self.expiry.peek() {
            if at > now {
                return None;
            }
            self.expiry.pop();
            let live = self.slab[slot as usize].0.as_ref().is_some_and(|e| e.expires_at == at);
            if live {
                self.unpolicy(slot);
                self.stats.expirations += 1;
                return Some(slot);
            }
        }
        None
    }

    /// Tells the policy that the entry in `slot` leaves other than by eviction.
    fn unpolicy(&mut self, slot: u32) {
        self.policy.on_remove(slot, &mut SlabMarks::new(&mut self.slab, &self.info, &mut self.requests, &self.stats, self.max_bytes));
    }

    /// Takes the entry out of `slot` and the policy, and frees the slot.
    fn drop_slot(&mut self, slot: u32) -> Option<Entry<K, V>> {
        self.unpolicy(slot);
        let e = self.take_slot(slot);
        self.free_released();
        e
    }

    /// Takes the entry out of `slot` and out of the byte and TTL counts,
    /// leaving the slot's table bucket alone (a replacement reuses it).
    fn vacate(&mut self, slot: u32) -> Option<Entry<K, V>> {
        let e = self.slab[slot as usize].0.take()?;
        if e.expires_at != NEVER {
            self.expiring -= 1;
        }
        self.bytes -= self.info[slot as usize].bytes;
        Some(e)
    }

    /// Frees `slot` (the policy must already have forgotten it).
    fn take_slot(&mut self, slot: u32) -> Option<Entry<K, V>> {
        let e = self.vacate(slot)?;
        self.unindex(slot);
        if self.expiry.len() > 2 * self.len() + 64 {
            let slab = &self.slab;
            self.expiry.retain(|Reverse((at, s))| slab[*s as usize].0.as_ref().is_some_and(|e| e.expires_at == *at));
        }
        Some(e)
    }

    /// Takes the empty `slot` out of the table and onto the free list.
    fn unindex(&mut self, slot: u32) {
        if let Ok(found) = self.table.find_entry(self.info[slot as usize].hash, |&s| s == slot) {
            found.remove();
        }
        self.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(policy: PolicyKind, max_entries: usize, max_bytes: Option<u64>) -> Cache<String, u32, foldhash::fast::FixedState> {
        Cache::with_seed(CacheConfig { max_entries, max_bytes, policy }, 9).expect("valid config")
    }

    #[test]
    fn rejects_zero_capacity_and_oversized_entries() {
        assert_eq!(Cache::<u8, u8>::new(0).err(), Some(CacheError::ZeroCapacity("max_entries")));
        let bad = CacheConfig { max_entries: 1, max_bytes: Some(0), policy: PolicyKind::Lru };
        assert!(Cache::<u8, u8>::with_config(bad).is_err());
        let mut c = cache(PolicyKind::Lru, 10, Some(100));
        let big = EntryOptions { bytes: 101, ..EntryOptions::default() };
        assert_eq!(c.insert_with("k".into(), 1, big, 0, |_, _| {}), Err(CacheError::TooLarge { size: 101, capacity: 100 }));
        assert!(c.is_empty());
    }

    #[test]
    fn replaces_values_and_tracks_bytes() {
        let mut c = cache(PolicyKind::Adaptive, 10, Some(100));
        let opts = |bytes| EntryOptions { bytes, ..EntryOptions::default() };
        assert_eq!(c.insert_with("a".into(), 1, opts(30), 0, |_, _| {}), Ok(true));
        assert_eq!(c.insert_with("a".into(), 2, opts(50), 0, |_, _| {}), Ok(true));
        assert_eq!(c.get("a", 0), Some(&2));
        assert_eq!((c.len(), c.bytes()), (1, 50));
        assert_eq!(c.remove("a"), Some(2));
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn byte_budget_evicts_to_fit_and_reports_victims() {
        let mut c = cache(PolicyKind::Lru, 100, Some(100));
        let opts = EntryOptions { bytes: 40, ..EntryOptions::default() };
        let mut gone = Vec::new();
        for k in ["a", "b", "c"] {
            c.insert_with(k.into(), 0, opts, 0, |k, _| gone.push(k)).expect("fits");
        }
        assert_eq!(gone, vec!["a".to_string()]);
        assert_eq!(c.bytes(), 80);
        assert_eq!(c.stats().evictions, 1);
    }

    #[test]
    fn ttl_expires_and_expired_entries_make_room_first() {
        let mut c = cache(PolicyKind::Lru, 2, None);
        let ttl = |t| EntryOptions { ttl: Some(t), ..EntryOptions::default() };
        c.insert_with("short".into(), 1, ttl(10), 0, |_, _| {}).expect("fits");
        c.insert_with("long".into(), 2, ttl(1000), 0, |_, _| {}).expect("fits");
        assert_eq!(c.get("short", 9), Some(&1));
        // "short" was used last, but it expired: it goes before "long".
        c.insert("new".into(), 3, 10).expect("fits");
        assert_eq!(c.peek("long", 10), Some(&2));
        assert_eq!(c.get("short", 10), None);
        assert_eq!(c.get("long", 1000), None);
        assert_eq!(c.stats().expirations, 2);
        assert_eq!(c.purge_expired(2000), 0);
        assert_eq!((c.len(), c.expiring()), (1, 0));
    }

    #[test]
    fn purge_drops_only_expired() {
        let mut c = cache(PolicyKind::Ttl, 10, None);
        for (i, t) in [5u64, 50, 500].into_iter().enumerate() {
            c.insert_with(format!("k{i}"), 0, EntryOptions { ttl: Some(t), ..EntryOptions::default() }, 0, |_, _| {}).expect("fits");
        }
        c.insert("forever".into(), 0, 0).expect("fits");
        assert_eq!((c.len(), c.expiring()), (4, 3));
        // Replacing an expiring entry with a lasting one counts it out.
        c.insert("k2".into(), 0, 0).expect("fits");
        assert_eq!(c.expiring(), 2);
        assert_eq!(c.purge_expired(60), 2);
        assert_eq!((c.len(), c.expiring()), (2, 0));
    }

    #[test]
    fn every_policy_replays_a_mixed_trace() {
        for kind in PolicyKind::ALL {
            let mut c = cache(kind, 50, None);
            let mut hits = 0;
            for i in 0..20_000u32 {
                let k = if i % 2 == 0 { (i / 2) % 10 } else { 10 + (i * 7919) % 5000 };
                let key = k.to_string();
                if c.get(key.as_str(), 0).is_some() {
                    hits += 1;
                } else {
                    c.insert(key, k, 0).expect("fits");
                }
                assert!(c.len() <= 50);
            }
            assert!(hits > 7000, "{kind}: {hits} hits; the 10 hot keys should mostly hit");
            assert_eq!(c.active_policy() == kind, kind != PolicyKind::Adaptive);
        }
    }
}
