//! The agent's edge cache: a hot tier in memory (the `verge-cache` adaptive
//! policy, counted in bytes) over a warm tier of files under
//! `DATA_DIR/cache/warm`, one per entry, written atomically and sealed by
//! the [`Vault`] when encryption at rest is on.
//!
//! Two write policies: **write-through** (the HTTP `PUT`: acknowledged once
//! the warm file is durable, so it survives `kill -9`) and **write-behind**
//! (the Redis protocol's `SET`: acknowledged from memory, written to the
//! warm tier by a background writer that coalesces rewrites of a key, as
//! Redis without an append-only file). An entry whose file fails to open
//! (torn, tampered, sealed under a lost key) is a miss, never garbage.
//! Versions increase with every write (time-based, so versions from
//! different nodes order by time), which is what coherency compares.
//!
//! Served by `cachehttp.rs` (HTTP) and `resp.rs` (RESP2).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use verge_cache::{rules, Cache, CacheConfig, EntryOptions, PolicyKind};

use crate::vault::Vault;

/// How long a write-behind entry waits at most before it is on disk
/// (as Redis's `appendfsync everysec`).
const WRITE_BEHIND_DELAY: Duration = Duration::from_secs(1);

/// Stripes of [`EdgeCache`]'s per-key write lock.
const KEY_LOCKS: usize = 64;

/// Sizes of the tiers.
#[derive(Debug, Clone, Copy)]
pub struct CacheSizes {
    /// Hot tier, bytes of values in memory.
    pub memory: u64,
    /// Warm tier, bytes of files on disk.
    pub disk: u64,
    /// Largest value accepted, bytes.
    pub max_value: u64,
    /// Where the Redis-protocol listener binds, if anywhere.
    pub resp_addr: Option<std::net::SocketAddr>,
    /// The hot tier's eviction policy (adaptive by default).
    pub policy: PolicyKind,
}

/// What is stored with a value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// The entry's key (also guards against file-name collisions).
    pub key: String,
    /// What the value is: `vm_image`, `ml_model`, `app_data`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Increases with every write of the key.
    pub version: u64,
    /// When it stops being served, ms since the epoch.
    pub expires_ms: Option<u64>,
}

/// A value with its metadata; cheap to clone.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Key, type, version, expiry.
    pub meta: Arc<Meta>,
    /// The bytes.
    pub value: Bytes,
}

/// How a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the warm file is fsynced.
    WriteThrough,
    /// At once; the warm file follows in the background.
    WriteBehind,
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum CacheWriteError {
    /// The key is empty, too long or has control characters.
    #[error("{}", rules::KEY_RULE)]
    BadKey,
    /// The value is over the limit.
    #[error("values are at most {0} bytes")]
    TooLarge(u64),
    /// The type is not a short identifier.
    #[error("{}", rules::TYPE_RULE)]
    BadType,
    /// The warm tier could not be written.
    #[error("writing the warm tier: {0}")]
    Io(#[from] std::io::Error),
}

/// What a warm file holds, once known: its key, and when it expires.
type Known = (String, Option<u64>);

/// Where a `SCAN` step found a name, with its key and expiry if known.
enum Found {
    /// A write queued for the warm tier (it wins over the file).
    Queued(Known),
    /// A warm file.
    Warm(Option<Known>),
    /// Only in the cold tier.
    Cold(Option<Known>),
}

/// A file of the warm tier.
struct WarmFile {
    size: u64,
    /// Its place in the write order.
    seq: u64,
    /// Known from its write, or read back from the file by a `SCAN` (a file
    /// from before this process started).
    known: Option<Known>,
    /// The version written; 0 for a file from before this process started.
    version: u64,
}

/// Warm files by name, with their size and write order (for eviction).
#[derive(Default)]
struct WarmIndex {
    files: BTreeMap<String, WarmFile>,
    order: BTreeMap<u64, String>,
    bytes: u64,
    next: u64,
}

impl WarmIndex {
    fn insert(&mut self, name: String, size: u64, known: Option<Known>, version: u64) {
        self.remove(&name);
        self.next += 1;
        self.order.insert(self.next, name.clone());
        self.files.insert(name, WarmFile { size, seq: self.next, known, version });
        self.bytes += size;
    }

    fn remove(&mut self, name: &str) {
        if let Some(f) = self.files.remove(name) {
            self.order.remove(&f.seq);
            self.bytes -= f.size;
        }
    }

    /// The oldest-written file, to evict.
    fn oldest(&self) -> Option<String> {
        self.order.values().next().cloned()
    }
}

/// Where a file of the warm tier sorts in a `SCAN`: the first 64 bits of
/// its name (a key's BLAKE3, in hex); `None` for a name no key has.
fn position(name: &str) -> Option<u64> {
    let hex = name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| u64::from_str_radix(&name[..16], 16).ok()).flatten()
}

/// The write-behind queue: the latest pending write of each key (`None`:
/// a delete), and the keys by their warm file's name, so that `SCAN` and
/// `DBSIZE` walk it in file order without hashing every key again.
#[derive(Default)]
struct Behind {
    entries: HashMap<String, Option<Entry>>,
    names: BTreeMap<String, String>,
}

impl Behind {
    fn insert(&mut self, key: String, pending: Option<Entry>) -> Option<Option<Entry>> {
        if !self.entries.contains_key(&key) {
            self.names.insert(file_name(&key), key.clone());
        }
        self.entries.insert(key, pending)
    }

    fn remove(&mut self, key: &str) -> Option<Option<Entry>> {
        let old = self.entries.remove(key);
        if old.is_some() {
            self.names.remove(&file_name(key));
        }
        old
    }

    fn get(&self, key: &str) -> Option<&Option<Entry>> {
        self.entries.get(key)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }
}

/// A key to read through ahead of demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warmup {
    /// The key.
    pub key: String,
    /// Higher first.
    pub priority: u8,
    /// Pointless after this, ms (`None`: no deadline).
    pub deadline_ms: Option<u64>,
}

/// Keys the predictor remembers.
const PREDICTOR_KEYS: usize = 10_000;
/// Hot keys reported in metrics.
const HOT_KEYS: usize = 10;

/// Hit and miss counts by tier.
#[derive(Debug, Default)]
pub struct Counters {
    /// Served from memory.
    pub hot_hits: AtomicU64,
    /// Served from the warm tier (or the write-behind queue).
    pub warm_hits: AtomicU64,
    /// Not found (or expired).
    pub misses: AtomicU64,
    /// Keys read through ahead of demand.
    pub prewarmed: AtomicU64,
    /// Entries moved from the warm to the cold tier.
    pub demoted: AtomicU64,
    /// Entries served from the cold tier.
    pub cold_hits: AtomicU64,
}

/// The cache, shared by the HTTP and RESP front ends.
pub struct EdgeCache {
    hot: Mutex<Cache<String, Entry>>,
    /// The hot tier's size and policy, to start it afresh.
    hot_config: CacheConfig,
    warm_dir: PathBuf,
    warm: Mutex<WarmIndex>,
    vault: Arc<Vault>,
    sizes: CacheSizes,
    /// Write-behind queue: the latest pending entry per key (`None`: delete).
    /// Locked before `warm` where both are held.
    behind: Mutex<Behind>,
    behind_ready: Condvar,
    /// One writer of a key at a time (keys hashed onto [`KEY_LOCKS`]
    /// stripes): a read-modify-write (`SET … NX`, `EXPIRE`, a replica's
    /// version check) sees no other write of its key land in between, and
    /// the write-behind writer never puts an older value on disk after a
    /// newer one.
    key_locks: Box<[Mutex<()>]>,
    last_version: AtomicU64,
    /// Where misses are read through from, if configured.
    origin: Option<crate::origin::Origin>,
    /// The cold tier, if configured: warm evictions are demoted there.
    cold: Option<Box<dyn crate::coldstore::ObjectStore>>,
    /// The cold tier's object names, with each one's key and expiry once
    /// known (from its demotion, or read back by a `SCAN`), so that `SCAN`
    /// and `DBSIZE` list what it holds. Locked after `warm` where both are.
    cold_names: Mutex<BTreeMap<String, Option<Known>>>,
    /// Learns access patterns for pre-warming, and counts hot keys.
    patterns: Mutex<(verge_cache::predict::Predictor, verge_cache::hotspot::HotKeys)>,
    /// The pre-warming queue, once `prewarm::start` runs.
    warmups: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Warmup>>,
    /// Hits and misses.
    pub counters: Counters,
}

/// Where memory finds a key.
enum Held {
    /// In the hot tier, live.
    Hot(Entry),
    /// Waiting in the write-behind queue (`None`: a delete), maybe expired.
    Pending(Option<Entry>),
    /// Not in memory: only the disk (or the cold tier) can tell.
    OnDisk,
}

/// A write whose blocking thread panicked.
fn write_panicked<T>() -> Result<T, CacheWriteError> {
    Err(CacheWriteError::Io(std::io::Error::other("the write panicked")))
}

/// Whether `e` has not expired at `now`.
fn live(e: &Entry, now: u64) -> bool {
    e.meta.expires_ms.is_none_or(|t| t > now)
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The warm file name of a key: its BLAKE3, so any key maps to a safe name.
fn file_name(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex().to_string()
}

/// A warm file: 4-byte big-endian metadata length, metadata JSON, value.
fn encode(meta: &Meta, value: &[u8]) -> Vec<u8> {
    let m = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + m.len() + value.len());
    out.extend((m.len() as u32).to_be_bytes());
    out.extend(m);
    out.extend(value);
    out
}

fn decode(bytes: &[u8]) -> Option<(Meta, Bytes)> {
    let n = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(bytes.get(4..4 + n)?).ok()?;
    Some((meta, Bytes::copy_from_slice(bytes.get(4 + n..)?)))
}

/// The key and expiry the stored entry `bytes` holds, if it is the entry
/// of the file or object `name`.
fn known_in(bytes: &[u8], name: &str) -> Option<Known> {
    let (meta, _) = decode(bytes).filter(|(meta, _)| file_name(&meta.key) == name)?;
    Some((meta.key, meta.expires_ms))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EdgeCache {
    /// Opens the warm tier under `dir` (removing temporary files a crash
    /// left) with the hot tier empty, and starts the write-behind writer.
    pub fn open(
        dir: &Path,
        vault: Arc<Vault>,
        sizes: CacheSizes,
        origin: Option<crate::origin::Origin>,
        cold: Option<Box<dyn crate::coldstore::ObjectStore>>,
    ) -> std::io::Result<Arc<EdgeCache>> {
        let warm_dir = dir.join("warm");
        std::fs::create_dir_all(&warm_dir)?;
        let mut index = WarmIndex::default();
        let mut files: Vec<(std::time::SystemTime, String, u64)> = Vec::new();
        for e in std::fs::read_dir(&warm_dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            if let Ok(md) = e.metadata() {
                files.push((md.modified().unwrap_or(std::time::UNIX_EPOCH), name, md.len()));
            }
        }
        files.sort();
        for (_, name, size) in files {
            index.insert(name, size, None, 0);
        }
        let cold_names = match &cold {
            Some(store) => store.names()?.into_iter().filter(|n| position(n).is_some()).map(|n| (n, None)).collect(),
            None => BTreeMap::new(),
        };
        // Entries are bounded by bytes; the entry bound (one per 4 KiB of
        // memory) only sizes the tables, so an idle agent stays small.
        let max_entries = (sizes.memory / 4096).clamp(1024, 1 << 20) as usize;
        let config = CacheConfig { max_entries, max_bytes: Some(sizes.memory.max(1)), policy: sizes.policy };
        let hot = Cache::with_config(config).map_err(std::io::Error::other)?;
        let cache = Arc::new(EdgeCache {
            hot: Mutex::new(hot),
            hot_config: config,
            warm_dir,
            warm: Mutex::new(index),
            vault,
            sizes,
            behind: Mutex::new(Behind::default()),
            behind_ready: Condvar::new(),
            key_locks: (0..KEY_LOCKS).map(|_| Mutex::new(())).collect(),
            last_version: AtomicU64::new(0),
            origin,
            cold,
            cold_names: Mutex::new(cold_names),
            patterns: Mutex::new((
                verge_cache::predict::Predictor::new(PREDICTOR_KEYS),
                verge_cache::hotspot::HotKeys::new(HOT_KEYS, 4096, 100_000),
            )),
            warmups: std::sync::OnceLock::new(),
            counters: Counters::default(),
        });
        let weak = Arc::downgrade(&cache);
        std::thread::Builder::new().name("cache-writer".into()).spawn(move || write_behind(weak))?;
        Ok(cache)
    }

    /// The directory the warm tier lives in (re-encrypted on key rotation).
    pub fn warm_dir(&self) -> &Path {
        &self.warm_dir
    }

    /// The sizes the cache was opened with.
    pub fn sizes(&self) -> CacheSizes {
        self.sizes
    }

    /// A version newer than every one this process handed out and than the
    /// clock in µs, so versions from different nodes order by time.
    pub fn next_version(&self) -> u64 {
        let now = now_ms() * 1000;
        let mut last = self.last_version.load(Ordering::Relaxed);
        loop {
            let v = now.max(last + 1);
            match self.last_version.compare_exchange_weak(last, v, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return v,
                Err(seen) => last = seen,
            }
        }
    }

    /// The write lock of `key`'s stripe.
    fn key_lock(&self, key: &str) -> MutexGuard<'_, ()> {
        lock(self.key_stripe(key))
    }

    /// `key`'s write lock if no other write holds it now.
    fn try_key_lock(&self, key: &str) -> Option<MutexGuard<'_, ()>> {
        match self.key_stripe(key).try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn key_stripe(&self, key: &str) -> &Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        &self.key_locks[h.finish() as usize % KEY_LOCKS]
    }

    /// Puts `e` in memory, unless memory holds a newer version of its key
    /// (a read promoting what it found on disk may race a write).
    fn promote(&self, e: Entry, now: u64) {
        let ttl = e.meta.expires_ms.map(|t| t.saturating_sub(now));
        let opts = EntryOptions { bytes: e.value.len().max(1) as u64, ttl, cost: 1 };
        let mut hot = lock(&self.hot);
        if hot.peek(e.meta.key.as_str(), now).is_some_and(|held| held.meta.version > e.meta.version) {
            return;
        }
        // A value larger than the hot tier stays warm only.
        let _ = hot.insert_with(e.meta.key.clone(), e, opts, now, |_, _| {});
    }

    /// Stores `value` under `key` with a new version; returns its metadata.
    pub fn put(
        &self,
        key: &str,
        value: Bytes,
        kind: &str,
        ttl_ms: Option<u64>,
        durability: Durability,
    ) -> Result<Arc<Meta>, CacheWriteError> {
        let _writing = self.key_lock(key);
        self.store(key, value, kind, ttl_ms, durability, None)
    }

    /// [`EdgeCache::put`] write-behind for async callers: at once when no
    /// other write holds `key`'s lock (a write-behind does no I/O), else on
    /// a blocking thread, so a runtime worker never waits for the writer's
    /// fsync of a key on the same lock stripe.
    pub async fn put_behind(
        self: &Arc<Self>,
        key: &str,
        value: Bytes,
        kind: &str,
        ttl_ms: Option<u64>,
    ) -> Result<Arc<Meta>, CacheWriteError> {
        if let Some(_writing) = self.try_key_lock(key) {
            return self.store(key, value, kind, ttl_ms, Durability::WriteBehind, None);
        }
        let (k, kind) = (key.to_string(), kind.to_string());
        self.blocking(move |c| c.put(&k, value, &kind, ttl_ms, Durability::WriteBehind)).await.unwrap_or_else(write_panicked)
    }

    /// [`EdgeCache::put_with`] for async callers: at once when it needs
    /// neither to wait for the key's lock nor to read the disk (a counter
    /// in memory), else on a blocking thread.
    pub async fn put_with_async<D>(self: &Arc<Self>, key: &str, decide: D) -> Result<Option<Entry>, CacheWriteError>
    where
        D: FnOnce(Option<&Entry>) -> Option<(Bytes, Option<u64>)> + Send + 'static,
    {
        match self.try_put_with(key, decide) {
            Ok(written) => written,
            Err(decide) => {
                let k = key.to_string();
                self.blocking(move |c| c.put_with(&k, decide)).await.unwrap_or_else(write_panicked)
            }
        }
    }

    /// Runs `f` on a blocking thread, for async callers: what may read the
    /// disk or wait for a key's lock stays off the runtime's threads.
    /// `None` if `f` panicked.
    pub async fn blocking<T: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&EdgeCache) -> T + Send + 'static) -> Option<T> {
        let c = self.clone();
        tokio::task::spawn_blocking(move || f(&c)).await.ok()
    }

    /// `SET`'s conditional forms (`NX`, `XX`, `GET`, `KEEPTTL`) and other
    /// read-modify-writes (`INCR`), atomic against every other write of
    /// `key` on this node: `decide` sees what this node holds (not the
    /// origin) and returns the value and time to live to store
    /// write-behind, or `None` to leave the key as it is. Returns the entry
    /// held before. May wait for the key's lock and read the disk.
    pub fn put_with(
        &self,
        key: &str,
        decide: impl FnOnce(Option<&Entry>) -> Option<(Bytes, Option<u64>)>,
    ) -> Result<Option<Entry>, CacheWriteError> {
        let _writing = self.key_lock(key);
        let old = self.find(key, now_ms(), false);
        self.decide_and_store(key, old, decide)
    }

    /// [`EdgeCache::put_with`] when it needs neither to wait nor to read the
    /// disk: no other write of `key` is in flight, and memory (the hot tier
    /// or the write-behind queue) knows what the key holds. Otherwise
    /// gives `decide` back, untouched, for `put_with` on a blocking thread.
    fn try_put_with<D: FnOnce(Option<&Entry>) -> Option<(Bytes, Option<u64>)>>(
        &self,
        key: &str,
        decide: D,
    ) -> Result<Result<Option<Entry>, CacheWriteError>, D> {
        let Some(_writing) = self.try_key_lock(key) else { return Err(decide) };
        let now = now_ms();
        let old = match self.in_memory(key, now) {
            Held::Hot(e) => Some(e),
            Held::Pending(p) => p.filter(|e| live(e, now)),
            Held::OnDisk => return Err(decide),
        };
        Ok(self.decide_and_store(key, old, decide))
    }

    /// The rest of a read-modify-write, under the key's lock.
    fn decide_and_store(
        &self,
        key: &str,
        old: Option<Entry>,
        decide: impl FnOnce(Option<&Entry>) -> Option<(Bytes, Option<u64>)>,
    ) -> Result<Option<Entry>, CacheWriteError> {
        if let Some((value, ttl_ms)) = decide(old.as_ref()) {
            self.store(key, value, "app_data", ttl_ms, Durability::WriteBehind, None)?;
        }
        Ok(old)
    }

    /// Stores a replica of version `version` written elsewhere, unless this
    /// node holds a newer one; returns what is stored now.
    pub fn put_replica(
        &self,
        key: &str,
        value: Bytes,
        kind: &str,
        ttl_ms: Option<u64>,
        version: u64,
    ) -> Result<Arc<Meta>, CacheWriteError> {
        let _writing = self.key_lock(key);
        match self.find(key, now_ms(), false) {
            Some(local) if local.meta.version >= version => Ok(local.meta),
            _ => self.store(key, value, kind, ttl_ms, Durability::WriteThrough, Some(version)),
        }
    }

    /// Stores an entry; the caller holds the key's lock.
    fn store(
        &self,
        key: &str,
        value: Bytes,
        kind: &str,
        ttl_ms: Option<u64>,
        durability: Durability,
        version: Option<u64>,
    ) -> Result<Arc<Meta>, CacheWriteError> {
        if !rules::valid_key(key) {
            return Err(CacheWriteError::BadKey);
        }
        if value.len() as u64 > self.sizes.max_value {
            return Err(CacheWriteError::TooLarge(self.sizes.max_value));
        }
        if !rules::valid_type(kind) {
            return Err(CacheWriteError::BadType);
        }
        let now = now_ms();
        if let Some(v) = version {
            self.last_version.fetch_max(v, Ordering::Relaxed);
        }
        let version = version.unwrap_or_else(|| self.next_version());
        let meta = Arc::new(Meta { key: key.to_string(), kind: kind.to_string(), version, expires_ms: ttl_ms.map(|t| now + t) });
        let entry = Entry { meta: meta.clone(), value };
        match durability {
            Durability::WriteThrough => {
                lock(&self.behind).remove(key);
                self.write_warm(&entry)?;
            }
            Durability::WriteBehind => {
                // The writer wakes on its own every WRITE_BEHIND_DELAY: no
                // wake-up per write, and a hot key is written once per round.
                lock(&self.behind).insert(key.to_string(), Some(entry.clone()));
            }
        }
        self.promote(entry, now);
        Ok(meta)
    }

    /// Writes one entry's warm file and evicts the oldest files over budget.
    fn write_warm(&self, e: &Entry) -> std::io::Result<()> {
        let name = file_name(&e.meta.key);
        let path = self.warm_dir.join(&name);
        let bytes = encode(&e.meta, &e.value);
        self.vault.write(&path, &bytes)?;
        let mut warm = lock(&self.warm);
        warm.insert(name.clone(), bytes.len() as u64, Some((e.meta.key.clone(), e.meta.expires_ms)), e.meta.version);
        while warm.bytes > self.sizes.disk {
            let Some(victim) = warm.oldest().filter(|v| *v != name) else { break };
            let path = self.warm_dir.join(&victim);
            if let Some(cold) = &self.cold {
                // Demoted as stored: still sealed.
                match std::fs::read(&path).and_then(|b| cold.put(&victim, &b)) {
                    Ok(()) => {
                        let known = warm.files.get(&victim).and_then(|f| f.known.clone());
                        lock(&self.cold_names).insert(victim.clone(), known);
                        self.counters.demoted.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "demoting to the cold tier failed; entry dropped");
                        0
                    }
                };
            }
            let _ = std::fs::remove_file(&path);
            warm.remove(&victim);
        }
        Ok(())
    }

    /// Applies a queued delete of `key` to the disk: its warm file, and a
    /// cold copy that the warm tier demoted after the delete was queued
    /// (served by a later read, it would bring the key back). Under the
    /// warm index's lock, so no demotion of the file runs meanwhile.
    fn remove_warm(&self, key: &str) -> bool {
        let name = file_name(key);
        let mut warm = lock(&self.warm);
        warm.remove(&name);
        let removed = std::fs::remove_file(self.warm_dir.join(&name)).is_ok();
        self.drop_cold(&name);
        removed
    }

    /// Deletes the cold object `name`, if the cold tier holds it (its
    /// index says so: no I/O otherwise); whether it did.
    fn drop_cold(&self, name: &str) -> bool {
        let Some(cold) = self.cold.as_ref().filter(|_| lock(&self.cold_names).remove(name).is_some()) else { return false };
        cold.delete(name).unwrap_or_else(|e| {
            tracing::warn!(name, error = %e, "cannot delete a cold object");
            false
        })
    }

    /// The live entry for `key` from memory only, or `None` (then ask
    /// [`EdgeCache::get`], which may read the disk).
    pub fn get_hot(&self, key: &str, now: u64) -> Option<Entry> {
        let e = lock(&self.hot).get(key, now).cloned();
        if e.is_some() {
            self.counters.hot_hits.fetch_add(1, Ordering::Relaxed);
        }
        e
    }

    /// Whether memory holds `key`, without counting a request or telling
    /// the eviction policy (a warm-up checking whether it is needed).
    pub fn holds_hot(&self, key: &str, now: u64) -> bool {
        lock(&self.hot).peek(key, now).is_some()
    }

    /// The live entry for `key`: from memory, the write-behind queue, else
    /// its warm file (promoted to memory). A client's read: counted in the
    /// hits and misses.
    pub fn get(&self, key: &str, now: u64) -> Option<Entry> {
        self.get_hot(key, now).or_else(|| self.read_locked(key, now, true))
    }

    /// [`EdgeCache::find`] under the key's lock, for a reader holding none:
    /// what it finds on disk cannot be put back in memory after a `DEL` or
    /// `FLUSHDB` removed it meanwhile.
    fn read_locked(&self, key: &str, now: u64, counted: bool) -> Option<Entry> {
        let _reading = self.key_lock(key);
        self.find(key, now, counted)
    }

    /// [`EdgeCache::get`] for a caller holding the key's lock; `counted`: a
    /// client's read rather than a write checking what it replaces (which
    /// the hit ratio must not see).
    fn find(&self, key: &str, now: u64, counted: bool) -> Option<Entry> {
        let count = |c: &AtomicU64| {
            if counted {
                c.fetch_add(1, Ordering::Relaxed);
            }
        };
        let (found, tier) = match self.in_memory(key, now) {
            Held::Hot(e) => {
                count(&self.counters.hot_hits);
                return Some(e);
            }
            Held::Pending(p) => (p, &self.counters.warm_hits),
            Held::OnDisk => match self.read_warm(key) {
                Some(warm) => (warm, &self.counters.warm_hits),
                None => (self.read_cold(key), &self.counters.cold_hits),
            },
        };
        match found {
            Some(e) if live(&e, now) => {
                count(tier);
                self.promote(e.clone(), now);
                Some(e)
            }
            expired => {
                // Gone from every tier once a read finds it expired, as in Redis.
                if expired.is_some() {
                    self.remove_locked(key);
                }
                count(&self.counters.misses);
                None
            }
        }
    }

    /// What memory knows of `key`.
    fn in_memory(&self, key: &str, now: u64) -> Held {
        if let Some(e) = lock(&self.hot).get(key, now).cloned() {
            return Held::Hot(e);
        }
        match lock(&self.behind).get(key).cloned() {
            Some(pending) => Held::Pending(pending),
            None => Held::OnDisk,
        }
    }

    /// The entry for `key` from any tier, else read through from the
    /// origin; `Err` only when the origin failed. Disk reads run on a
    /// blocking thread. A client's read: counted in the hits and misses.
    pub async fn lookup(self: &Arc<Self>, key: &str) -> Result<Option<Entry>, String> {
        self.read_through(key, true).await
    }

    /// [`EdgeCache::lookup`] for a warm-up: brings `key` into memory
    /// without counting a client's hit or miss.
    pub async fn warm_up(self: &Arc<Self>, key: &str) -> Result<Option<Entry>, String> {
        self.read_through(key, false).await
    }

    async fn read_through(self: &Arc<Self>, key: &str, counted: bool) -> Result<Option<Entry>, String> {
        let now = now_ms();
        if counted {
            if let Some(e) = self.get_hot(key, now) {
                return Ok(Some(e));
            }
        }
        let k = key.to_string();
        if let Some(e) = self.blocking(move |c| c.read_locked(&k, now, counted)).await.ok_or("the read panicked")? {
            return Ok(Some(e));
        }
        match &self.origin {
            Some(o) => o.fetch(self, key).await,
            None => Ok(None),
        }
    }

    /// Records a client's request for `key` and queues the warm-ups the
    /// predictor expects to follow it.
    pub fn observe(&self, key: &str) {
        let next = {
            let mut p = lock(&self.patterns);
            p.1.observe(key);
            p.0.observe(key, now_ms())
        };
        for p in next {
            self.request_warmup(Warmup { key: p.key, priority: (p.confidence * 100.0) as u8, deadline_ms: Some(p.deadline_ms) });
        }
    }

    /// Periodic keys expected within `horizon_ms`.
    pub fn due(&self, horizon_ms: u64) -> Vec<verge_cache::predict::Prediction> {
        lock(&self.patterns).0.due(now_ms(), horizon_ms)
    }

    /// Queues a warm-up (dropped when pre-warming is not running).
    pub fn request_warmup(&self, w: Warmup) {
        if let Some(tx) = self.warmups.get() {
            let _ = tx.send(w);
        }
    }

    /// Connects the pre-warming queue; the first call wins.
    pub fn set_warmups(&self, tx: tokio::sync::mpsc::UnboundedSender<Warmup>) {
        let _ = self.warmups.set(tx);
    }

    /// The origin, if one is configured.
    pub fn origin(&self) -> Option<&crate::origin::Origin> {
        self.origin.as_ref()
    }

    /// Requests made to the origin so far.
    pub fn origin_fetches(&self) -> u64 {
        self.origin.as_ref().map_or(0, |o| o.fetches.load(Ordering::Relaxed))
    }

    /// `key`'s warm file: `None` when there is none, `Some(None)` when it
    /// holds nothing usable.
    fn read_warm(&self, key: &str) -> Option<Option<Entry>> {
        let path = self.warm_dir.join(file_name(key));
        let bytes = match self.vault.read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(key, error = %e, "unreadable cache entry dropped");
                self.remove_warm(key);
                return Some(None);
            }
        };
        Some(decode(&bytes).filter(|(meta, _)| meta.key == key).map(|(meta, value)| Entry { meta: Arc::new(meta), value }))
    }

    /// `key` from the cold tier, promoted back to the warm one.
    fn read_cold(&self, key: &str) -> Option<Entry> {
        let cold = self.cold.as_ref()?;
        let name = file_name(key);
        let stored = cold.get(&name).ok()?;
        let bytes = match self.vault.unseal(stored) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(key, error = %e, "unreadable cold entry dropped");
                self.drop_cold(&name);
                return None;
            }
        };
        let (meta, value) = decode(&bytes)?;
        if meta.key != key {
            return None;
        }
        let e = Entry { meta: Arc::new(meta), value };
        // Back to the warm tier; the cold copy stays until the key is
        // removed or demoted again, so a crash before the write loses nothing.
        lock(&self.behind).insert(key.to_string(), Some(e.clone()));
        Some(e)
    }

    /// Removes `key` from every tier; whether it was anywhere.
    pub fn remove(&self, key: &str) -> bool {
        let _writing = self.key_lock(key);
        self.remove_locked(key)
    }

    /// [`EdgeCache::remove`] for a caller holding the key's lock.
    fn remove_locked(&self, key: &str) -> bool {
        let in_hot = lock(&self.hot).remove(key).is_some();
        let queued = lock(&self.behind).insert(key.to_string(), None);
        let pending = matches!(queued, Some(Some(_)));
        // A file whose delete is already queued is gone as far as readers know.
        let name = file_name(key);
        let on_disk = !matches!(queued, Some(None)) && self.warm_dir.join(&name).exists();
        let in_cold = self.drop_cold(&name);
        in_hot || pending || on_disk || in_cold
    }

    /// Drops `key` unless this node holds a version newer than `version`
    /// (coherency: a late invalidation must not drop a newer write).
    pub fn invalidate(&self, key: &str, version: Option<u64>) -> bool {
        let _writing = self.key_lock(key);
        let newer = version.is_some_and(|v| self.find(key, now_ms(), false).is_some_and(|e| e.meta.version > v));
        !newer && self.remove_locked(key)
    }

    /// Applies the invalidations this node missed while disconnected: each
    /// key as [`EdgeCache::invalidate`] at its version, and with
    /// `drop_all` (too many were missed to list, or the server cannot vouch
    /// for this node's cache) every entry older than `joined`, this
    /// connection's first version: what was written since is newer than
    /// anything missed. Whether anything was dropped.
    pub fn catch_up(&self, keys: &BTreeMap<String, u64>, drop_all: bool, joined: u64) -> std::io::Result<bool> {
        let dropped = drop_all && self.drop_before(Some(joined))?;
        Ok(keys.iter().fold(dropped, |removed, (key, &version)| self.invalidate(key, Some(version)) | removed))
    }

    /// Changes when `key` expires, atomic against every other write of it:
    /// `decide` sees when it expires now (Unix ms; `None`: never) and
    /// returns when it should (`Some(None)`: never; a time already past
    /// deletes it), or `None` to leave it. Returns whether anything
    /// changed, or `None` when there is no such key.
    pub fn expire(&self, key: &str, decide: impl FnOnce(Option<u64>) -> Option<Option<u64>>) -> Option<bool> {
        let _writing = self.key_lock(key);
        let now = now_ms();
        let e = self.find(key, now, false)?;
        let before = e.meta.expires_ms;
        let Some(at) = decide(before) else { return Some(false) };
        if at.is_none() && before.is_none() {
            // Nothing to clear: no new version, no rewrite.
            return Some(false);
        }
        if at.is_some_and(|t| t <= now) {
            return Some(self.remove_locked(key));
        }
        let meta = Arc::new(Meta { expires_ms: at, version: self.next_version(), ..(*e.meta).clone() });
        let e = Entry { meta, value: e.value };
        lock(&self.behind).insert(key.to_string(), Some(e.clone()));
        self.promote(e, now);
        Some(true)
    }

    /// Removes `key` and returns what it held (`GETDEL`), atomic against
    /// every other write of it; a client's read.
    pub fn take(&self, key: &str) -> Option<Entry> {
        let _writing = self.key_lock(key);
        let e = self.find(key, now_ms(), true)?;
        self.remove_locked(key);
        Some(e)
    }

    /// Entries and bytes per tier, hits and misses.
    pub fn stats(&self) -> serde_json::Value {
        let pending = lock(&self.behind).len();
        let hot = lock(&self.hot);
        let warm = lock(&self.warm);
        let c = &self.counters;
        serde_json::json!({
            "hot": {"entries": hot.len(), "bytes": hot.bytes(), "capacity": self.sizes.memory, "policy": hot.active_policy().to_string(), "configuredPolicy": hot.policy().to_string()},
            "warm": {"entries": warm.files.len(), "bytes": warm.bytes, "capacity": self.sizes.disk},
            "hotHits": c.hot_hits.load(Ordering::Relaxed),
            "warmHits": c.warm_hits.load(Ordering::Relaxed),
            "misses": c.misses.load(Ordering::Relaxed),
            "pendingWrites": pending,
            "originFetches": self.origin_fetches(),
            "prewarmed": c.prewarmed.load(Ordering::Relaxed),
            "hotKeys": self.hot_keys(),
            "cold": {"enabled": self.cold.is_some(), "hits": c.cold_hits.load(Ordering::Relaxed), "demoted": c.demoted.load(Ordering::Relaxed)},
            "encrypted": self.vault.sealing(),
        })
    }

    /// The hottest keys now, with estimated request counts.
    pub fn hot_keys(&self) -> Vec<(String, u32)> {
        lock(&self.patterns).1.top()
    }

    /// Entries in memory that have a TTL (`INFO`'s `expires`).
    pub fn hot_expiring(&self) -> usize {
        lock(&self.hot).expiring()
    }

    /// Keys this node holds on disk, counting writes and deletes still
    /// queued for it (`DBSIZE`): every write lands there, and the warm
    /// tier's evictions in the cold one. As in Redis, entries expired but
    /// not yet removed count.
    pub fn key_count(&self) -> usize {
        let behind = lock(&self.behind);
        let warm = lock(&self.warm);
        let mut n = warm.files.len();
        for (name, key) in &behind.names {
            let stored = behind.entries.get(key).is_some_and(Option::is_some);
            match (stored, warm.files.contains_key(name)) {
                (true, false) => n += 1,
                (false, true) => n -= 1,
                _ => {}
            }
        }
        // A key promoted back from the cold tier keeps its cold copy: once.
        let cold = lock(&self.cold_names);
        n + cold.keys().filter(|name| !warm.files.contains_key(*name) && !behind.names.contains_key(*name)).count()
    }

    /// One step of `SCAN`: the keys of the files, on disk, queued for it or
    /// in the cold tier (what [`EdgeCache::key_count`] counts, less what
    /// expired), whose names sort at `cursor` or after: about `count`
    /// files' keys, in name order, those that match `pattern` (Redis's
    /// glob) if one is given, and the cursor of the next file (0: none
    /// left). A name is the key's hash, so keys keep their places while
    /// others come and go, and a full scan returns every key held
    /// throughout it, once. A file or cold object from before this process
    /// started is read once to learn its key.
    pub fn scan(&self, cursor: u64, count: usize, pattern: Option<&[u8]>, now: u64) -> (u64, Vec<String>) {
        let (from, count) = (format!("{cursor:016x}"), count.max(1));
        let mut step: Vec<(String, Found)> = Vec::new();
        let mut next = 0;
        {
            let behind = lock(&self.behind);
            let warm = lock(&self.warm);
            let cold = lock(&self.cold_names);
            let mut disk = warm.files.range(from.clone()..).filter(|(name, _)| position(name).is_some()).peekable();
            let mut frozen = cold.range(from.clone()..).peekable();
            // The queue's latest write (or delete) of a key wins over its
            // file, and the file over a cold copy.
            let mut queue = behind
                .names
                .range(from..)
                .map(|(name, key)| (name, behind.entries.get(key).and_then(Option::as_ref).map(|e| (key.clone(), e.meta.expires_ms))))
                .peekable();
            let mut last = None;
            while let Some(name) = [disk.peek().map(|(n, _)| *n), queue.peek().map(|(n, _)| *n), frozen.peek().map(|(n, _)| *n)]
                .into_iter()
                .flatten()
                .min()
                .cloned()
            {
                let at = position(&name);
                if step.len() >= count && at != last {
                    next = at.unwrap_or(0);
                    break;
                }
                last = at;
                let on_disk = disk.next_if(|(d, _)| **d == name).map(|(_, f)| f.known.clone());
                let in_cold = frozen.next_if(|(c, _)| **c == name).map(|(_, known)| known.clone());
                match (queue.next_if(|(q, _)| **q == name), on_disk, in_cold) {
                    (Some((_, Some(known))), _, _) => step.push((name, Found::Queued(known))),
                    (Some((_, None)), _, _) => {}
                    (None, Some(known), _) => step.push((name, Found::Warm(known))),
                    (None, None, Some(known)) => step.push((name, Found::Cold(known))),
                    (None, None, None) => {}
                }
            }
        }
        let keys = step
            .into_iter()
            .filter_map(|(name, found)| match found {
                Found::Queued(known) => Some(known),
                Found::Warm(known) => known.or_else(|| self.learn(&name)),
                Found::Cold(known) => known.or_else(|| self.learn_cold(&name)),
            })
            .filter(|(key, expires)| expires.is_none_or(|t| t > now) && pattern.is_none_or(|p| crate::glob::matches(p, key.as_bytes())))
            .map(|(key, _)| key)
            .collect();
        (next, keys)
    }

    /// Reads the cold object `name` to learn its key and expiry, and notes
    /// them; `None` when it holds no readable entry.
    fn learn_cold(&self, name: &str) -> Option<Known> {
        let known = known_in(&self.vault.unseal(self.cold.as_ref()?.get(name).ok()?).ok()?, name)?;
        if let Some(k) = lock(&self.cold_names).get_mut(name) {
            k.get_or_insert_with(|| known.clone());
        }
        Some(known)
    }

    /// Reads the warm file `name` to learn its key and expiry, and notes
    /// them in the index; `None` when it holds no entry.
    fn learn(&self, name: &str) -> Option<Known> {
        let known = known_in(&self.vault.read(&self.warm_dir.join(name)).ok()?, name)?;
        // A write since the read noted its own.
        if let Some(f) = lock(&self.warm).files.get_mut(name) {
            f.known.get_or_insert_with(|| known.clone());
        }
        Some(known)
    }

    /// Drops every key on this node (`FLUSHDB`): memory, the write-behind
    /// queue, the warm and the cold tier. Every write waits meanwhile.
    pub fn clear(&self) -> std::io::Result<()> {
        self.drop_before(None).map(drop)
    }

    /// Drops every entry of a version before `since` (`None`: every entry)
    /// from memory, the write-behind queue, the warm and the cold tier, at
    /// once: every write waits meanwhile. Queued deletes stay, and newer
    /// entries stay where they are stored (the write-behind queue or the
    /// warm tier; memory starts empty, and the cold tier holds copies of
    /// files older than the warm tier's). Whether it dropped anything.
    fn drop_before(&self, since: Option<u64>) -> std::io::Result<bool> {
        let _every_key: Vec<MutexGuard<'_, ()>> = self.key_locks.iter().map(lock).collect();
        let held = self.key_count();
        let older = |version: u64| since.is_none_or(|s| version < s);
        {
            let mut behind = lock(&self.behind);
            let stale: Vec<String> = behind
                .entries
                .iter()
                .filter(|(_, pending)| pending.as_ref().map_or(since.is_none(), |e| older(e.meta.version)))
                .map(|(key, _)| key.clone())
                .collect();
            for key in stale {
                behind.remove(&key);
            }
        }
        *lock(&self.hot) = Cache::with_config(self.hot_config).map_err(std::io::Error::other)?;
        let names: Vec<String> = {
            let mut warm = lock(&self.warm);
            let names: Vec<String> = warm.files.iter().filter(|(_, f)| older(f.version)).map(|(name, _)| name.clone()).collect();
            names.iter().for_each(|name| warm.remove(name));
            names
        };
        for name in names {
            match std::fs::remove_file(self.warm_dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if let Some(cold) = &self.cold {
            lock(&self.cold_names).clear();
            for name in cold.names()? {
                cold.delete(&name)?;
            }
        }
        Ok(self.key_count() < held)
    }

    /// Waits until the write-behind queue is empty (clean shutdown).
    pub fn flush(&self) {
        let mut q = lock(&self.behind);
        while !q.is_empty() {
            self.behind_ready.notify_one();
            q = self.behind_ready.wait_timeout(q, Duration::from_millis(50)).map_or_else(|p| p.into_inner().0, |(g, _)| g);
        }
    }
}

/// The write-behind writer: drains the queue into the warm tier until the
/// cache is dropped.
fn write_behind(cache: Weak<EdgeCache>) {
    loop {
        let Some(c) = cache.upgrade() else { return };
        let keys: Vec<String> = {
            let q = lock(&c.behind);
            let q = c.behind_ready.wait_timeout(q, WRITE_BEHIND_DELAY).map_or_else(|p| p.into_inner().0, |(g, _)| g);
            q.keys().cloned().collect()
        };
        for key in keys {
            // Under the key's lock the pending entry is the latest write,
            // and no write of the key lands until it is on disk.
            let _writing = c.key_lock(&key);
            let Some(entry) = lock(&c.behind).get(&key).cloned() else { continue };
            let result = match &entry {
                Some(e) => c.write_warm(e),
                None => {
                    c.remove_warm(&key);
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::warn!(key, error = %e, "write-behind failed; the entry stays in memory only");
            }
            lock(&c.behind).remove(&key);
        }
        c.behind_ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, disk: u64) -> Arc<EdgeCache> {
        let vault = Arc::new(Vault::open(Some(&dir.join("keys"))).unwrap());
        EdgeCache::open(
            &dir.join("cache"),
            vault,
            CacheSizes { memory: 1 << 20, disk, max_value: 1 << 20, resp_addr: None, policy: PolicyKind::default() },
            None,
            Some(Box::new(crate::coldstore::FsObjectStore::open(dir.join("cold")).unwrap())),
        )
        .unwrap()
    }

    #[test]
    fn entries_survive_a_restart_sealed_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1 << 20);
        let v1 = c.put("model/a", Bytes::from_static(b"weights-weights"), "ml_model", None, Durability::WriteThrough).unwrap();
        let v2 = c.put("model/a", Bytes::from_static(b"weights-v2"), "ml_model", None, Durability::WriteThrough).unwrap();
        assert!(v2.version > v1.version);
        c.put("session/1", Bytes::from_static(b"behind"), "app_data", None, Durability::WriteBehind).unwrap();
        c.flush();
        drop(c);
        let c = cache(dir.path(), 1 << 20);
        let e = c.get("model/a", now_ms()).unwrap();
        assert_eq!((e.value.as_ref(), e.meta.version, e.meta.kind.as_str()), (&b"weights-v2"[..], v2.version, "ml_model"));
        assert_eq!(c.get("session/1", now_ms()).unwrap().value.as_ref(), b"behind");
        let raw = std::fs::read(c.warm_dir.join(file_name("model/a"))).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"weights"), "plaintext on disk");
        assert!(c.remove("model/a"));
        c.flush();
        assert!(c.get("model/a", now_ms()).is_none());
        assert!(!c.warm_dir.join(file_name("model/a")).exists());

        // DBSIZE counts what is on disk and what is queued for it, whenever
        // the writer runs.
        assert_eq!(c.key_count(), 1);
        c.put("queued", Bytes::from_static(b"q"), "app_data", None, Durability::WriteBehind).unwrap();
        c.put("queued", Bytes::from_static(b"q2"), "app_data", None, Durability::WriteBehind).unwrap();
        assert_eq!(c.key_count(), 2);
        assert!(c.remove("session/1"));
        assert_eq!(c.key_count(), 1);
        c.flush();
        assert_eq!(c.key_count(), 1);
    }

    /// Every key a full `SCAN` from `cursor` returns, `count` files a step,
    /// with `between` run after the first step.
    fn full_scan(c: &EdgeCache, count: usize, now: u64, mut between: impl FnMut()) -> Vec<String> {
        let (mut cursor, mut keys) = c.scan(0, count, None, now);
        between();
        while cursor != 0 {
            let (next, more) = c.scan(cursor, count, None, now);
            assert!(next == 0 || next > cursor, "the cursor moves on: {cursor} -> {next}");
            keys.extend(more);
            cursor = next;
        }
        keys
    }

    #[test]
    fn a_scan_returns_every_key_held_once_and_learns_older_files_keys() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1 << 20);
        let put = |c: &EdgeCache, key: &str, ttl, durability| c.put(key, Bytes::from_static(b"v"), "app_data", ttl, durability).unwrap();
        for i in 0..40 {
            put(&c, &format!("k{i:02}"), None, Durability::WriteThrough);
        }
        put(&c, "short-lived", Some(5), Durability::WriteThrough);
        put(&c, "queued", None, Durability::WriteBehind);
        assert!(c.remove("k03"));
        let now = now_ms() + 1000;
        let mut expected: Vec<String> = (0..40).filter(|i| *i != 3).map(|i| format!("k{i:02}")).collect();
        expected.push("queued".into());
        expected.sort();
        let mut keys = full_scan(&c, 7, now, || {});
        keys.sort();
        assert_eq!(keys, expected, "expired and deleted keys left out, queued ones in");

        // Keys that come and go during a scan do not move the others.
        let mut keys = full_scan(&c, 5, now, || {
            for i in 0..30 {
                put(&c, &format!("new{i}"), None, Durability::WriteBehind);
            }
            c.remove("new7");
        });
        keys.retain(|k| !k.starts_with("new"));
        keys.sort();
        assert_eq!(keys, expected);

        // After a restart, the files' keys are read back, once.
        c.flush();
        drop(c);
        let c = cache(dir.path(), 1 << 20);
        for round in 0..2 {
            let mut keys = full_scan(&c, 1000, now, || {});
            keys.sort();
            keys.retain(|k| !k.starts_with("new"));
            assert_eq!(keys, expected, "round {round}");
        }
        assert!(lock(&c.warm).files.values().all(|f| f.known.is_some()), "every key learnt");
        assert_eq!(c.scan(0, 1000, None, now).0, 0, "one step covers it all");
        let mut matched = c.scan(0, 1000, Some(b"k[0-1]?"), now).1;
        matched.sort();
        assert_eq!(matched, expected[..19]);
    }

    #[test]
    fn a_conditional_write_is_atomic_and_a_read_never_brings_back_an_older_version() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1 << 20);
        let stored = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let (c, stored) = (&c, &stored);
                s.spawn(move || {
                    c.put_with("lock", |old| {
                        // Widen the window between the check and the write.
                        std::thread::sleep(Duration::from_millis(5));
                        old.is_none().then(|| {
                            stored.fetch_add(1, Ordering::Relaxed);
                            (Bytes::from(vec![i]), None)
                        })
                    })
                    .unwrap();
                });
            }
        });
        assert_eq!(stored.load(Ordering::Relaxed), 1);

        // A reader that found version 1 on disk promotes it after version 2
        // reached memory: memory keeps version 2.
        c.put("k", Bytes::from_static(b"v1"), "app_data", None, Durability::WriteThrough).unwrap();
        let v1 = c.read_warm("k").flatten().unwrap();
        c.put("k", Bytes::from_static(b"v2"), "app_data", None, Durability::WriteThrough).unwrap();
        c.promote(v1, now_ms());
        assert_eq!(c.get_hot("k", now_ms()).unwrap().value.as_ref(), b"v2");

        // Without blocking, a read-modify-write runs only when memory knows
        // the key and no other write holds its lock.
        let add_one = |old: Option<&Entry>| Some((Bytes::from(vec![old.map_or(0, |e| e.value[0]) + 1]), None));
        assert!(c.try_put_with("n", add_one).is_err(), "an unknown key needs the disk");
        c.put("n", Bytes::from_static(&[1]), "app_data", None, Durability::WriteThrough).unwrap();
        assert_eq!(c.try_put_with("n", add_one).ok().unwrap().unwrap().unwrap().value.as_ref(), &[1]);
        {
            let _busy = c.key_lock("n");
            assert!(c.try_put_with("n", add_one).is_err(), "the key's lock was taken");
        }
        lock(&c.hot).remove("n");
        c.flush();
        assert!(c.try_put_with("n", add_one).is_err(), "the key is on disk only");
        assert_eq!(c.put_with("n", add_one).unwrap().unwrap().value.as_ref(), &[2]);
        assert_eq!(c.get_hot("n", now_ms()).unwrap().value.as_ref(), &[3]);

        // Writes checking what they replace are not reads: the hit ratio
        // counts only the one read above.
        c.put_replica("r", Bytes::from_static(b"x"), "app_data", None, 7).unwrap();
        c.expire("r", |_| Some(Some(now_ms() + 60_000)));
        assert!(!c.invalidate("r", Some(1)), "a newer version is kept");
        let counted = |n: &AtomicU64| n.load(Ordering::Relaxed);
        assert_eq!((counted(&c.counters.hot_hits), counted(&c.counters.warm_hits), counted(&c.counters.misses)), (2, 0, 0));
    }

    #[test]
    fn catching_up_drops_the_missed_keys_and_with_drop_all_what_came_before_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1 << 20);
        let value = || Bytes::from_static(b"v");
        for k in ["old", "missed", "queued"] {
            c.put(k, value(), "app_data", None, Durability::WriteThrough).unwrap();
        }
        c.put("queued", value(), "app_data", None, Durability::WriteBehind).unwrap();
        let missed_at = c.next_version();
        let joined = c.next_version();
        // Written after the hello: one on disk, one still queued; the write
        // queued before the hello reaches the disk after it.
        c.put("new", value(), "app_data", None, Durability::WriteBehind).unwrap();
        c.flush();
        c.put("newer", value(), "app_data", None, Durability::WriteBehind).unwrap();
        let held = || {
            let mut keys = full_scan(&c, 2, now_ms(), || {});
            keys.sort();
            keys
        };
        assert!(c.catch_up(&[("missed".to_string(), missed_at)].into(), false, joined).unwrap());
        assert_eq!(held(), ["new", "newer", "old", "queued"]);
        assert!(c.catch_up(&BTreeMap::new(), true, joined).unwrap());
        assert_eq!(held(), ["new", "newer"]);
        assert_eq!(c.get("new", now_ms()).unwrap().value, value(), "served from the warm tier");
        assert!(!c.catch_up(&BTreeMap::new(), true, joined).unwrap(), "nothing older left");
        c.flush();
        assert_eq!(held(), ["new", "newer"]);
    }

    #[test]
    fn an_async_write_of_a_busy_key_leaves_the_runtime_free() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1 << 20);
        // As the write-behind writer does while it fsyncs the key's file.
        let busy = c.key_lock("k");
        let (tx, rx) = std::sync::mpsc::channel();
        let runtime = {
            let c = c.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async move {
                    let write = tokio::spawn(async move { c.put_behind("k", Bytes::from_static(b"v"), "app_data", None).await });
                    let other = tokio::spawn(async { "served" });
                    tx.send(other.await.unwrap()).unwrap();
                    write.await.unwrap()
                })
            })
        };
        let served = rx.recv_timeout(Duration::from_secs(10));
        drop(busy);
        assert_eq!(served, Ok("served"), "the runtime's only thread waited for the key's lock");
        assert!(runtime.join().unwrap().is_ok());
        assert_eq!(c.get_hot("k", now_ms()).unwrap().value.as_ref(), b"v");
    }

    #[test]
    fn expiry_bad_writes_and_the_warm_budget() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 600);
        // Deleted while its file waits for the writer to remove it, and
        // demoted to the cold tier by the writes below meanwhile.
        c.put("gone", Bytes::from(vec![1u8; 100]), "app_data", None, Durability::WriteThrough).unwrap();
        assert!(c.remove("gone"));
        c.put("t", Bytes::from_static(b"x"), "app_data", Some(1), Durability::WriteThrough).unwrap();
        assert!(c.get("t", now_ms() + 10).is_none());
        assert_eq!(c.expire("missing", |_| Some(Some(5))), None);
        for i in 0..20 {
            c.put(&format!("k{i}"), Bytes::from(vec![7u8; 100]), "app_data", None, Durability::WriteThrough).unwrap();
        }
        assert!(c.warm.lock().unwrap().bytes <= 600);
        assert!(c.get("k19", now_ms()).is_some());
        c.flush();
        assert!(c.get("gone", now_ms()).is_none(), "a deleted key came back from the cold tier");
        // What the warm tier pushed out went cold, sealed, and comes back.
        assert!(c.counters.demoted.load(Ordering::Relaxed) > 0);
        lock(&c.hot).remove("k0");
        let warm_hits = c.counters.warm_hits.load(Ordering::Relaxed);
        assert_eq!(c.get("k0", now_ms()).unwrap().value.as_ref(), &[7u8; 100][..]);
        // A cold hit counts once, as a cold hit.
        assert_eq!(c.counters.cold_hits.load(Ordering::Relaxed), 1);
        assert_eq!(c.counters.warm_hits.load(Ordering::Relaxed), warm_hits);
        // DBSIZE and SCAN count the cold tier too, each key once (k0 is
        // back in the warm tier and still has its cold copy), and after a
        // restart read the cold objects to learn their keys.
        let every = (0..20).map(|i| format!("k{i}")).collect::<std::collections::BTreeSet<_>>();
        let scan_all = |c: &EdgeCache| {
            let (mut cursor, mut keys) = (0, Vec::new());
            loop {
                let (next, step) = c.scan(cursor, 3, None, now_ms());
                keys.extend(step);
                if next == 0 {
                    break keys;
                }
                cursor = next;
            }
        };
        assert_eq!(c.key_count(), 20);
        let listed = scan_all(&c);
        assert_eq!(listed.len(), 20, "{listed:?}");
        assert_eq!(listed.into_iter().collect::<std::collections::BTreeSet<_>>(), every);
        c.flush();
        drop(c);
        let c = cache(dir.path(), 600);
        assert_eq!(c.key_count(), 20);
        assert_eq!(scan_all(&c).into_iter().collect::<std::collections::BTreeSet<_>>(), every);
        // FLUSHDB: nothing comes back from any tier.
        c.clear().unwrap();
        assert_eq!(c.key_count(), 0);
        for i in 0..20 {
            assert!(c.get(&format!("k{i}"), now_ms()).is_none(), "k{i} survived");
        }
        assert!(matches!(c.put("", Bytes::new(), "app_data", None, Durability::WriteBehind), Err(CacheWriteError::BadKey)));
        assert!(matches!(
            c.put("k", Bytes::from(vec![0; 2 << 20]), "app_data", None, Durability::WriteBehind),
            Err(CacheWriteError::TooLarge(_))
        ));
        assert!(matches!(c.put("k", Bytes::new(), "no spaces", None, Durability::WriteBehind), Err(CacheWriteError::BadType)));
    }
}
