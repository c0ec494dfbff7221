//! Eviction policies, all behind one trait ([`Eviction`]).
//!
//! A policy sees slots (indices into the cache's slab), never keys or
//! values: the cache tells it about inserts, hits and removals, and asks it
//! for a victim while the cache is over budget. Capacity is counted in
//! *units*: entries, or bytes when the cache has a byte budget (then an
//! entry's unit weight is its size). Policies read no clock; TTLs arrive as
//! absolute `expires_at` values in the entry's [`Meta`].

mod adaptive;
mod arc;
mod gdsf;
mod lfu;
mod lirs;
mod queue;
mod s3fifo;
mod sieve;
mod ttl;
mod wtinylfu;

pub use adaptive::Adaptive;
pub(crate) use adaptive::{Role, SharedJudge};
pub use arc::Arc;
pub use gdsf::Gdsf;
pub use lfu::Lfu;
pub use lirs::Lirs;
pub use queue::{Fifo, Lru, Queue};
pub use s3fifo::S3Fifo;
pub use sieve::Sieve;
pub use ttl::Ttl;
pub use wtinylfu::WTinyLfu;

use crate::{CacheError, Marks};
use std::fmt;
use std::str::FromStr;

/// What a policy learns about an entry when it is inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Hash of the key (frequency sketches, ghosts and sampling use it).
    pub hash: u64,
    /// Weight in capacity units (1 per entry, or the entry's bytes).
    pub weight: u64,
    /// Absolute expiry (same clock as the cache's `now`), `u64::MAX` for none.
    pub expires_at: u64,
    /// Relative cost of fetching the entry again (cost-aware policies).
    pub cost: u32,
}

/// How large the cache a policy serves is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    /// Capacity in units (entries, or bytes).
    pub units: u64,
    /// About how many entries fit (sizes sketches and ghost lists).
    pub entries: usize,
}

/// The interface between the cache and an eviction policy.
///
/// Every hit bumps the slot's [`Marks`]; the cache calls [`Eviction::on_hit`]
/// only for hashes at or below [`Eviction::hit_hook`], so that lazy
/// policies, which read the marks while they evict, cost a hit nothing.
pub trait Eviction {
    /// Hits on keys whose hash is at most this are reported to
    /// [`Eviction::on_hit`]: `u64::MAX` (the default) for policies that
    /// reorder on every hit and read no marks (the cache then marks no
    /// hits), 0 for those that read only the marks (a hash of 0 then costs
    /// a call that does nothing).
    fn hit_hook(&self) -> u64 {
        u64::MAX
    }
    /// A new entry now lives in `slot` (its mark is 0). When the policy
    /// kept a ghost in `slot` ([`Marks::keep_ghost`]), the entry is that
    /// ghost's key come back.
    fn on_insert(&mut self, slot: u32, meta: &Meta, marks: &mut impl Marks);
    /// The entry in `slot`, whose key hashes to `hash`, was read (unless the
    /// policy's hook is `u64::MAX`, its mark already counts this hit).
    fn on_hit(&mut self, slot: u32, hash: u64, marks: &mut impl Marks);
    /// Picks a victim, forgets it and returns its slot; `None` when empty.
    /// May return the slot inserted last (an admission refusal).
    fn evict(&mut self, marks: &mut impl Marks) -> Option<u32>;
    /// The entry in `slot` left the cache for another reason (delete,
    /// expiry, replacement); a policy may release ghosts on the way.
    fn on_remove(&mut self, slot: u32, marks: &mut impl Marks);
    /// Releases every ghost the policy keeps ([`Marks::release_ghost`]):
    /// the policy is being replaced (after its entries were drained).
    fn release_ghosts(&mut self, _marks: &mut impl Marks) {}
    /// Takes over the entries of the policy this one replaces, with their
    /// metadata, in the order that policy would have evicted them (least
    /// valued first). A policy that ranks its entries places them so that
    /// the old ranking survives the switch; by default each is inserted in
    /// turn.
    fn adopt(&mut self, entries: &[(u32, Meta)], marks: &mut impl Marks) {
        for (slot, meta) in entries {
            self.on_insert(*slot, meta, marks);
        }
    }
}

/// How many of `entries` (least valued first), counted from the most valued
/// end, fit in `budget` units: the ones an adopting policy ranks highest.
pub(crate) fn top_fitting(entries: &[(u32, Meta)], budget: u64) -> usize {
    let mut used = 0;
    entries
        .iter()
        .rev()
        .take_while(|(_, meta)| {
            used += meta.weight;
            used <= budget
        })
        .count()
}

/// Grows a per-slot vector so that `slot` is a valid index.
#[inline]
pub(crate) fn grow<T: Clone>(v: &mut Vec<T>, slot: u32, fill: T) {
    let need = slot as usize + 1;
    if v.len() < need {
        v.resize(need.max(v.len() * 2), fill);
    }
}

/// Puts `item` in a free index of `items` (or a new one at the end) and
/// returns that index: the slab allocation of index-linked structures.
#[inline]
pub(crate) fn alloc<T>(items: &mut Vec<T>, free: &mut Vec<u32>, item: T) -> u32 {
    match free.pop() {
        Some(i) => {
            items[i as usize] = item;
            i
        }
        None => {
            items.push(item);
            (items.len() - 1) as u32
        }
    }
}

/// The selectable policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PolicyKind {
    /// Least recently used.
    Lru,
    /// Least frequently used, ties broken by recency.
    Lfu,
    /// First in, first out.
    Fifo,
    /// Soonest expiring first, then oldest.
    Ttl,
    /// Adaptive Replacement Cache (Megiddo & Modha).
    Arc,
    /// GreedyDual-Size-Frequency: cost-, size- and frequency-aware.
    Gdsf,
    /// S3-FIFO (Yang et al., SOSP'23).
    S3Fifo,
    /// SIEVE (Zhang et al., NSDI'24).
    Sieve,
    /// W-TinyLFU with a hill-climbed window (Caffeine).
    WTinyLfu,
    /// LIRS (Jiang & Zhang).
    Lirs,
    /// The default: picks among the others from miniature simulations.
    #[default]
    Adaptive,
}

impl PolicyKind {
    /// Every policy, the default last.
    pub const ALL: [PolicyKind; 11] = [
        PolicyKind::Lru,
        PolicyKind::Lfu,
        PolicyKind::Fifo,
        PolicyKind::Ttl,
        PolicyKind::Arc,
        PolicyKind::Gdsf,
        PolicyKind::S3Fifo,
        PolicyKind::Sieve,
        PolicyKind::WTinyLfu,
        PolicyKind::Lirs,
        PolicyKind::Adaptive,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Lfu => "lfu",
            PolicyKind::Fifo => "fifo",
            PolicyKind::Ttl => "ttl",
            PolicyKind::Arc => "arc",
            PolicyKind::Gdsf => "gdsf",
            PolicyKind::S3Fifo => "s3fifo",
            PolicyKind::Sieve => "sieve",
            PolicyKind::WTinyLfu => "wtinylfu",
            PolicyKind::Lirs => "lirs",
            PolicyKind::Adaptive => "adaptive",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = CacheError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        PolicyKind::ALL.into_iter().find(|k| k.name() == wanted).ok_or_else(|| CacheError::UnknownPolicy(s.to_string()))
    }
}

/// One of the fixed (non-adaptive) policies, dispatched without a vtable.
#[derive(Debug)]
pub(crate) enum Base {
    Lru(Lru),
    Lfu(Lfu),
    Fifo(Fifo),
    Ttl(Ttl),
    Arc(Arc),
    Gdsf(Gdsf),
    S3Fifo(S3Fifo),
    Sieve(Sieve),
    WTinyLfu(WTinyLfu),
    Lirs(Lirs),
}

macro_rules! dispatch {
    ($self:expr, $p:ident => $e:expr) => {
        match $self {
            Base::Lru($p) => $e,
            Base::Lfu($p) => $e,
            Base::Fifo($p) => $e,
            Base::Ttl($p) => $e,
            Base::Arc($p) => $e,
            Base::Gdsf($p) => $e,
            Base::S3Fifo($p) => $e,
            Base::Sieve($p) => $e,
            Base::WTinyLfu($p) => $e,
            Base::Lirs($p) => $e,
        }
    };
}

impl Base {
    /// A fresh fixed policy; `None` for [`PolicyKind::Adaptive`].
    pub fn new(kind: PolicyKind, sizing: Sizing) -> Option<Base> {
        Some(match kind {
            PolicyKind::Lru => Base::Lru(Lru::default()),
            PolicyKind::Lfu => Base::Lfu(Lfu::default()),
            PolicyKind::Fifo => Base::Fifo(Fifo::default()),
            PolicyKind::Ttl => Base::Ttl(Ttl::default()),
            PolicyKind::Arc => Base::Arc(Arc::new(sizing)),
            PolicyKind::Gdsf => Base::Gdsf(Gdsf::default()),
            PolicyKind::S3Fifo => Base::S3Fifo(S3Fifo::new(sizing)),
            PolicyKind::Sieve => Base::Sieve(Sieve::default()),
            PolicyKind::WTinyLfu => Base::WTinyLfu(WTinyLfu::new(sizing)),
            PolicyKind::Lirs => Base::Lirs(Lirs::new(sizing)),
            PolicyKind::Adaptive => return None,
        })
    }
}

impl Eviction for Base {
    #[inline]
    fn hit_hook(&self) -> u64 {
        dispatch!(self, p => p.hit_hook())
    }
    #[inline]
    fn on_insert(&mut self, slot: u32, meta: &Meta, marks: &mut impl Marks) {
        dispatch!(self, p => p.on_insert(slot, meta, marks))
    }
    #[inline]
    fn on_hit(&mut self, slot: u32, hash: u64, marks: &mut impl Marks) {
        dispatch!(self, p => p.on_hit(slot, hash, marks))
    }
    #[inline]
    fn evict(&mut self, marks: &mut impl Marks) -> Option<u32> {
        dispatch!(self, p => p.evict(marks))
    }
    #[inline]
    fn on_remove(&mut self, slot: u32, marks: &mut impl Marks) {
        dispatch!(self, p => p.on_remove(slot, marks))
    }
    fn adopt(&mut self, entries: &[(u32, Meta)], marks: &mut impl Marks) {
        dispatch!(self, p => p.adopt(entries, marks))
    }
    fn release_ghosts(&mut self, marks: &mut impl Marks) {
        dispatch!(self, p => p.release_ghosts(marks))
    }
}

/// Any policy, the adaptive one included: what a [`crate::Cache`] runs.
/// One per cache, so the size difference costs nothing; boxing the fixed
/// policies would add a pointer chase to every hit.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum AnyPolicy {
    Base(Base),
    Adaptive(Box<Adaptive>),
}

impl AnyPolicy {
    /// A fresh policy of `kind` for a cache of `sizing`; an adaptive one
    /// decides as `role` says (fixed policies ignore it).
    pub fn new(kind: PolicyKind, sizing: Sizing, role: Role) -> AnyPolicy {
        match Base::new(kind, sizing) {
            Some(b) => AnyPolicy::Base(b),
            None => AnyPolicy::Adaptive(Box::new(Adaptive::with_role(sizing, role))),
        }
    }
}

impl AnyPolicy {
    /// The policy evicting right now (the adaptive one's current choice).
    pub fn active(&self, configured: PolicyKind) -> PolicyKind {
        match self {
            AnyPolicy::Base(_) => configured,
            AnyPolicy::Adaptive(a) => a.live_kind(),
        }
    }

    /// A sampling shard's full queue of sampled requests, for its
    /// [`SharedJudge`] (`None` for any other policy, or until it is full).
    pub fn take_batch(&mut self) -> Option<Vec<Meta>> {
        match self {
            AnyPolicy::Base(_) => None,
            AnyPolicy::Adaptive(a) => a.take_batch(),
        }
    }
}

impl Eviction for AnyPolicy {
    #[inline]
    fn hit_hook(&self) -> u64 {
        match self {
            AnyPolicy::Base(p) => p.hit_hook(),
            AnyPolicy::Adaptive(p) => p.hit_hook(),
        }
    }
    #[inline]
    fn on_insert(&mut self, slot: u32, meta: &Meta, marks: &mut impl Marks) {
        match self {
            AnyPolicy::Base(p) => p.on_insert(slot, meta, marks),
            AnyPolicy::Adaptive(p) => p.on_insert(slot, meta, marks),
        }
    }
    #[inline]
    fn on_hit(&mut self, slot: u32, hash: u64, marks: &mut impl Marks) {
        match self {
            AnyPolicy::Base(p) => p.on_hit(slot, hash, marks),
            AnyPolicy::Adaptive(p) => p.on_hit(slot, hash, marks),
        }
    }
    #[inline]
    fn evict(&mut self, marks: &mut impl Marks) -> Option<u32> {
        match self {
            AnyPolicy::Base(p) => p.evict(marks),
            AnyPolicy::Adaptive(p) => p.evict(marks),
        }
    }
    #[inline]
    fn on_remove(&mut self, slot: u32, marks: &mut impl Marks) {
        match self {
            AnyPolicy::Base(p) => p.on_remove(slot, marks),
            AnyPolicy::Adaptive(p) => p.on_remove(slot, marks),
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::MarkVec;

    /// Replays `keys` (get, insert on miss, unit weights) against `policy`
    /// with room for `cap` entries; returns the hit count and the final
    /// resident keys (sorted).
    pub fn replay(policy: &mut impl Eviction, cap: usize, keys: &[u64]) -> (usize, Vec<u64>) {
        let mut slot_of = std::collections::HashMap::new();
        // The slots of the policy's ghosts, by key.
        let mut ghost_of = std::collections::HashMap::new();
        let mut key_of: Vec<Option<u64>> = Vec::new();
        let mut free: Vec<u32> = Vec::new();
        let mut marks = MarkVec::default();
        let mut hits = 0;
        for &k in keys {
            let hash = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            if let Some(&s) = slot_of.get(&k) {
                hits += 1;
                marks.hit(s);
                if hash <= policy.hit_hook() {
                    policy.on_hit(s, hash, &mut marks);
                }
                continue;
            }
            let s = ghost_of.remove(&k).or_else(|| free.pop()).unwrap_or(key_of.len() as u32);
            if s as usize == key_of.len() {
                key_of.push(None);
            }
            key_of[s as usize] = Some(k);
            slot_of.insert(k, s);
            let meta = Meta { hash, weight: 1, expires_at: u64::MAX, cost: 1 };
            marks.hold(s, meta);
            policy.on_insert(s, &meta, &mut marks);
            while slot_of.len() > cap {
                let v = policy.evict(&mut marks).expect("over capacity means non-empty");
                let key = key_of[v as usize].expect("victim is resident");
                slot_of.remove(&key);
                if marks.take_kept(v) {
                    ghost_of.insert(key, v);
                } else {
                    key_of[v as usize] = None;
                    free.push(v);
                }
                for g in marks.drain_released() {
                    let key = key_of[g as usize].take().expect("a ghost has a key");
                    assert_eq!(ghost_of.remove(&key), Some(g), "released a slot that was no ghost");
                    free.push(g);
                }
            }
        }
        let mut resident: Vec<u64> = slot_of.keys().copied().collect();
        resident.sort_unstable();
        (hits, resident)
    }

    /// Sizing for `n` unit-weight entries.
    pub fn units(n: usize) -> Sizing {
        Sizing { units: n as u64, entries: n }
    }

    /// Has `policy` adopt slots `0..n` (slot 0 the least valued) with unit
    /// weights; returns the marks they live with.
    pub fn adopt_in_order(policy: &mut impl Eviction, n: u32) -> MarkVec {
        let mut marks = MarkVec::default();
        let entries: Vec<(u32, Meta)> =
            (0..n).map(|s| (s, Meta { hash: u64::from(s) + 1, weight: 1, expires_at: u64::MAX, cost: 1 })).collect();
        for &(s, meta) in &entries {
            marks.hold(s, meta);
        }
        policy.adopt(&entries, &mut marks);
        marks
    }
}
