//! The default policy: runs miniature simulations of candidate policies on
//! a hash-sampled slice of the keys (Waldspurger et al., "Cache Modeling
//! and Optimization using Miniature Simulations", ATC'17) and serves with
//! whichever candidate has been winning recently.
//!
//! Each candidate simulates a cache `rate` times smaller fed with the
//! `1/rate` of keys whose hash falls in the sample; hit ratios of such
//! miniatures track the full-size ones closely. Every epoch the scores
//! (exponentially decayed hit counts) are compared; when another candidate
//! beats the live one by a margin (a share of the sampled requests), the
//! live policy is rebuilt as that candidate from the resident entries, in
//! the old one's eviction order.

use super::{alloc, Base, Eviction, Meta, PolicyKind, Sizing};
use crate::hashed::HashKeyed;
use crate::Marks;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The candidates simulated in miniature; the first one serves first, and
/// ties go to the earlier one. LIRS first: it resists scans and loops and is
/// the strongest policy before the miniatures have seen enough (on the
/// README's grid, starting with the W-TinyLFU candidate instead costs 0.12
/// points of mean hit ratio, and with S3-FIFO 0.27: a LIRS adopted later
/// lacks its history on lirs_multi2). (ARC and SIEVE were tried
/// too: never the sole winner on the traces of the README, and every extra
/// miniature costs time and wrong switches.)
///
/// W-TinyLFU runs here with its window fixed at 1 %, without Caffeine's hill
/// climber: the climber wins big where recency rules (OLTP at 1,000
/// entries: 40.05 % against 35.54 %), but there the miniatures pick S3-FIFO
/// anyway, and it loses as much elsewhere (lirs_sprite at 100: 26.44
/// against 31.10). On the README's grid the fixed window raises this
/// policy's mean from 56.81 to 56.88, the worst gap from −2.42 to −1.43,
/// and the mean under three other hash seeds by 0.05–0.08; offering both
/// forms as candidates did no better than the fixed one alone.
const CANDIDATES: [Candidate; 5] = [
    Candidate::Policy(PolicyKind::Lirs),
    Candidate::FixedWindowTinyLfu,
    Candidate::Policy(PolicyKind::Gdsf),
    Candidate::Policy(PolicyKind::S3Fifo),
    Candidate::Policy(PolicyKind::Lru),
];
// A key's residency in the miniatures is a byte of flags.
const _: () = assert!(CANDIDATES.len() <= 8);
/// The ways a request can hit or miss across the miniatures: bit `i` set
/// when candidate `i` hit.
const HIT_PATTERNS: usize = 1 << CANDIDATES.len();
/// Miniatures hold at least this many entries (smaller ones are too noisy;
/// on the README's grid 256 chooses as well as 512 did, at half the cost).
const MIN_SHADOW_ENTRIES: usize = 256;
/// At most one key in this many is simulated.
const MAX_RATE: u64 = 64;
/// Sampled accesses per epoch: a quarter of the miniature's entry count, at least this.
const MIN_EPOCH: u64 = 256;
/// Weight of the past in the scores after each epoch: a half-life of about
/// 70 epochs. (With 0.995, when cloudphysics's working set changes at 2.6 M
/// requests, the choice followed 700 k requests late; on the README's grid
/// 0.99 moves the mean from 56.88 to 56.90 and the points within 0.5 of the
/// best from 24 to 26, and helps under each of three other hash seeds;
/// 0.95–0.985 did no better.)
const DECAY: f64 = 0.99;
/// Lead a challenger needs over the live candidate to take over, as a share
/// of the (decayed) sampled requests: 1 hit-ratio point. A share of the
/// requests rather than of the hits, so that a lead means as much at a 90 %
/// hit ratio as at 10 %.
const MARGIN: f64 = 0.01;
/// For this many epochs (eight miniatures' worth of sampled requests) a
/// challenger needs only [`EARLY_MARGIN`]: the live policy has little
/// history to lose yet, while one rebuilt later starts without its ghosts,
/// stack or counters and trails the real thing for thousands of requests.
/// (When introduced: 24 points of the README's grid within 0.5 of the best
/// instead of 22, and as many or more under three other hash seeds; 16 or
/// 64 early epochs do no better.)
const EARLY_EPOCHS: u64 = 32;
/// The lead a challenger needs during the first [`EARLY_EPOCHS`] (0.3 %
/// rather than 0.5 %: grid mean 56.90 → 56.93, and 0.00–0.05 higher under
/// three other hash seeds).
const EARLY_MARGIN: f64 = 0.003;
/// A challenger's lead must also be significant: at least this many
/// standard deviations of the difference of two hit counts, estimated from
/// the requests on which the two candidates disagree (one hit, the other
/// missed; a paired sign test), weighted as the scores are. A miniature sees
/// a sample of the keys, and a lead of a few sampled hits is often the
/// sample's luck: on lirs_multi2 at 2,400 entries (miniatures of 300) the
/// judge once left LIRS on a lead of five hits in 1,000, switched twice
/// more and ended 6.9 points below LIRS alone. At 1 % and 0.3 % of the
/// sampled requests, [`MARGIN`] and [`EARLY_MARGIN`] are smaller than this
/// while the scores are young. 2.25 standard deviations is about one
/// chance in 80 that equal candidates differ this much; 2 left lirs_multi2
/// at 2,400 as it was, 2.5 and 3 lost more elsewhere (see the README).
/// Miniatures of caches too small to sample (every key simulated, each a
/// full-size copy of the cache) skip the test: their lead is not an
/// estimate.
const SIGNIFICANCE: f64 = 2.25;
/// The judge may sleep once the live candidate has led every other by
/// this share of the (decayed) sampled requests for [`STEADY_EPOCHS`] epochs
/// in a row: 1 hit-ratio point.
const SAFE_LEAD: f64 = 0.01;
/// Epochs of a safe lead before the judge sleeps.
const STEADY_EPOCHS: u64 = 4;
/// Epochs the judge sleeps per unit of the live candidate's lead: a
/// challenger 10 points better than the live one gains 0.1 sampled request
/// per request, and a lead is a share of about `1 / (1 - DECAY)` = 100
/// epochs of requests, so it needs `lead / (1 - DECAY) / 0.1` awake epochs
/// to catch up (a 1-point lead: 10). Sleeping that long delays a switch to
/// a far better candidate by at most that. (On the README's grid, averaged
/// over the bench's hash seed and four others, 1,000 and 500 leave the mean
/// where it was, 56.90; 2,000 lowers it by 0.04 and the worst gap to −2.38.)
const SLEEP_PER_LEAD: f64 = 1.0 / ((1.0 - DECAY) * 0.1);

/// Sampled requests reach the miniatures this many at a time, in order:
/// their table and policies then stay in the CPU caches for a batch instead
/// of pushing the live cache's lines out at every sampled request (in
/// interleaved wall-clock runs: hit path +13 %, replay +10–30 %), and a
/// decision comes at most this many sampled requests late.
const BATCH: usize = 64;

/// A policy the adaptive one may serve with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Candidate {
    /// A selectable policy, as configured by default.
    Policy(PolicyKind),
    /// W-TinyLFU with its window fixed at 1 % (no hill climbing).
    FixedWindowTinyLfu,
}

impl Candidate {
    /// A fresh instance for a cache of `sizing`.
    fn build(self, sizing: Sizing) -> Option<Base> {
        match self {
            Candidate::Policy(kind) => Base::new(kind, sizing),
            Candidate::FixedWindowTinyLfu => Some(Base::WTinyLfu(super::WTinyLfu::with_window(sizing, 0.01, false))),
        }
    }

    /// The policy it is a form of.
    fn kind(self) -> PolicyKind {
        match self {
            Candidate::Policy(kind) => kind,
            Candidate::FixedWindowTinyLfu => PolicyKind::WTinyLfu,
        }
    }
}

/// A sampled key as the miniatures see it.
#[derive(Clone, Copy, Debug)]
struct Sampled {
    hash: u64,
    /// Its weight when first sampled (what every miniature holding it counts).
    weight: u64,
    /// Bit `i` set: resident in miniature `i`.
    resident: u8,
    /// Bit `i` set: a ghost of miniature `i`'s policy.
    ghost: u8,
}

impl Sampled {
    /// Whether some miniature holds the key, as an entry or a ghost.
    fn held(&self) -> bool {
        self.resident | self.ghost != 0
    }
}

/// One candidate's miniature: its policy over the shared slots, the marks
/// of its hits, its fill and its score.
#[derive(Debug)]
struct Miniature {
    policy: Base,
    marks: crate::MarkVec,
    weight: u64,
    epoch_hits: u64,
    score: f64,
}

/// Key-only simulations of every candidate over one set of sampled keys.
/// A key has the same slot in every miniature, so a request looks its key
/// up once, not once per candidate; the slot is freed when no miniature
/// holds the key any more, as an entry or as a ghost.
#[derive(Debug)]
struct Miniatures {
    slot_of: HashKeyed<u32>,
    keys: Vec<Sampled>,
    free: Vec<u32>,
    capacity: u64,
    minis: Vec<Miniature>,
    /// Requests of this epoch by which candidates hit them (index: the
    /// hit flags, as in [`Sampled::resident`]).
    epoch_patterns: [u64; HIT_PATTERNS],
}

impl Miniatures {
    fn new(sizing: Sizing) -> Miniatures {
        let minis = CANDIDATES
            .iter()
            .filter_map(|&candidate| {
                Some(Miniature { policy: candidate.build(sizing)?, marks: crate::MarkVec::default(), weight: 0, epoch_hits: 0, score: 0.0 })
            })
            .collect();
        Miniatures {
            slot_of: HashKeyed::default(),
            keys: Vec::new(),
            free: Vec::new(),
            capacity: sizing.units,
            minis,
            epoch_patterns: [0; HIT_PATTERNS],
        }
    }

    /// One request in every miniature: a hit (counted), or a miss followed by an insert.
    fn access(&mut self, meta: &Meta) {
        let slot = match self.slot_of.entry(meta.hash) {
            Entry::Occupied(found) => *found.get(),
            Entry::Vacant(free) => {
                let key = Sampled { hash: meta.hash, weight: meta.weight, resident: 0, ghost: 0 };
                *free.insert(alloc(&mut self.keys, &mut self.free, key))
            }
        };
        let weight = self.keys[slot as usize].weight;
        self.epoch_patterns[self.keys[slot as usize].resident as usize % HIT_PATTERNS] += 1;
        for (i, m) in self.minis.iter_mut().enumerate() {
            let bit = 1u8 << i;
            if self.keys[slot as usize].resident & bit != 0 {
                m.epoch_hits += 1;
                m.marks.hit(slot);
                if meta.hash <= m.policy.hit_hook() {
                    m.policy.on_hit(slot, meta.hash, &mut m.marks);
                }
                continue;
            }
            if weight > self.capacity {
                continue;
            }
            let key = &mut self.keys[slot as usize];
            key.resident |= bit;
            key.ghost &= !bit;
            m.weight += weight;
            m.marks.reset(slot);
            m.policy.on_insert(slot, &Meta { weight, ..*meta }, &mut m.marks);
            while m.weight > self.capacity {
                let Some(victim) = m.policy.evict(&mut m.marks) else { break };
                let key = &mut self.keys[victim as usize];
                key.resident &= !bit;
                if m.marks.take_kept(victim) {
                    key.ghost |= bit;
                }
                m.weight -= key.weight;
                // The requested key's slot stays taken until every miniature has seen it.
                if victim != slot {
                    unhold(&mut self.slot_of, &mut self.free, &self.keys, victim);
                }
                for ghost in m.marks.drain_released() {
                    self.keys[ghost as usize].ghost &= !bit;
                    if ghost != slot {
                        unhold(&mut self.slot_of, &mut self.free, &self.keys, ghost);
                    }
                }
            }
        }
        unhold(&mut self.slot_of, &mut self.free, &self.keys, slot);
    }
}

/// Frees `slot` when no miniature holds its key any more.
fn unhold(slot_of: &mut HashKeyed<u32>, free: &mut Vec<u32>, keys: &[Sampled], slot: u32) {
    let key = &keys[slot as usize];
    if !key.held() {
        slot_of.remove(&key.hash);
        free.push(slot);
    }
}

/// The miniatures and their scores: which candidate should serve.
#[derive(Debug)]
struct Judge {
    miniatures: Miniatures,
    epoch_len: u64,
    epoch_seen: u64,
    /// Epochs ended so far.
    epochs: u64,
    /// Sampled requests, decayed like the scores.
    seen: f64,
    /// Epochs in a row the live candidate has led by [`SAFE_LEAD`].
    steady: u64,
    /// Sampled requests left to skip while the judge sleeps.
    asleep: u64,
    /// Sampled requests left to feed, unscored, after a sleep: the
    /// miniatures refill with the current keys before they score again.
    warming: u64,
    /// The longest sleep, in sampled requests: over a cycle of steady
    /// epochs, warming and sleep, the miniatures see at least 1 request in
    /// [`MAX_RATE`], as those of the largest caches always do (a cache
    /// sampled 1 key in 64 is judged on as thin a slice).
    max_sleep: u64,
    /// Requests by hit pattern, each epoch's weighted by the square of its
    /// weight in the scores (`DECAY²` per epoch): the variance of a
    /// difference of two scores is the weighted count of the requests on
    /// which the two disagree.
    pattern_weights: [f64; HIT_PATTERNS],
    /// Every key is sampled: each miniature is an exact full-size copy.
    exact: bool,
}

impl Judge {
    fn new(sampling: &Sampling) -> Judge {
        let epoch_len = (sampling.mini.entries as u64 / 4).max(MIN_EPOCH);
        Judge {
            miniatures: Miniatures::new(sampling.mini),
            epoch_len,
            epoch_seen: 0,
            epochs: 0,
            seen: 0.0,
            steady: 0,
            asleep: 0,
            warming: 0,
            max_sleep: (STEADY_EPOCHS + 1) * epoch_len * (MAX_RATE / sampling.rate - 1),
            pattern_weights: [0.0; HIT_PATTERNS],
            exact: sampling.rate == 1,
        }
    }

    /// Feeds sampled requests to the miniatures, in order, ending epochs on
    /// the way (or skips them while the judge sleeps); returns the
    /// candidate that should replace `live`, if one took the lead at an
    /// epoch's end.
    fn feed(&mut self, batch: &[Meta], live: usize) -> Option<usize> {
        let mut choice = None;
        for meta in batch {
            if self.asleep > 0 {
                self.asleep -= 1;
                continue;
            }
            self.miniatures.access(meta);
            if self.warming > 0 {
                self.warming -= 1;
                if self.warming == 0 {
                    self.epoch_seen = 0;
                    self.miniatures.minis.iter_mut().for_each(|m| m.epoch_hits = 0);
                    self.miniatures.epoch_patterns = [0; HIT_PATTERNS];
                }
                continue;
            }
            self.epoch_seen += 1;
            if self.epoch_seen >= self.epoch_len {
                choice = self.end_epoch(live).or(choice);
                self.maybe_sleep(live);
            }
        }
        choice
    }

    /// After an epoch: puts the judge to sleep when the live candidate has
    /// led safely for [`STEADY_EPOCHS`], for as long as its lead allows.
    fn maybe_sleep(&mut self, live: usize) {
        if self.epochs <= EARLY_EPOCHS || self.max_sleep == 0 {
            return;
        }
        let minis = &self.miniatures.minis;
        let others = minis.iter().enumerate().filter(|&(i, _)| i != live).map(|(_, m)| m.score).fold(0.0, f64::max);
        let lead = (minis[live].score - others) / self.seen.max(1.0);
        if lead <= SAFE_LEAD {
            self.steady = 0;
            return;
        }
        self.steady += 1;
        if self.steady >= STEADY_EPOCHS {
            self.steady = 0;
            self.asleep = ((lead * SLEEP_PER_LEAD) as u64 * self.epoch_len).min(self.max_sleep);
            self.warming = self.epoch_len;
        }
    }

    fn end_epoch(&mut self, live: usize) -> Option<usize> {
        self.seen = self.seen * DECAY + self.epoch_seen as f64;
        self.epoch_seen = 0;
        for (weight, count) in self.pattern_weights.iter_mut().zip(&mut self.miniatures.epoch_patterns) {
            *weight = *weight * DECAY * DECAY + *count as f64;
            *count = 0;
        }
        let minis = &mut self.miniatures.minis;
        for m in minis.iter_mut() {
            m.score = m.score * DECAY + m.epoch_hits as f64;
            m.epoch_hits = 0;
        }
        // Ties go to the earlier candidate (`max_by` keeps the last maximum).
        let (best, best_score) = minis.iter().enumerate().rev().map(|(i, m)| (i, m.score)).max_by(|a, b| a.1.total_cmp(&b.1))?;
        let live_score = minis[live].score;
        self.epochs += 1;
        let margin = if self.epochs <= EARLY_EPOCHS { EARLY_MARGIN } else { MARGIN };
        let lead = best_score - live_score;
        (best != live && lead > margin * self.seen + 1.0 && (self.exact || lead > SIGNIFICANCE * self.disagreements(best, live).sqrt()))
            .then_some(best)
    }

    /// The weighted count of requests that one of candidates `a` and `b`
    /// hit and the other missed.
    fn disagreements(&self, a: usize, b: usize) -> f64 {
        self.pattern_weights.iter().enumerate().filter(|&(pattern, _)| (pattern >> a ^ pattern >> b) & 1 == 1).map(|(_, w)| w).sum()
    }
}

/// The judge of the shards of a [`crate::SyncCache`] and its latest choice.
/// One shard samples its keys (a hash-partitioned sample of all of them)
/// and queues them; the cache feeds the queue to the judge after releasing
/// that shard's lock, so no shard waits while the miniatures run, and every
/// shard serves with the published choice from its next insert on.
#[derive(Debug)]
pub(crate) struct SharedJudge {
    judge: Mutex<Judge>,
    choice: AtomicUsize,
}

impl SharedJudge {
    /// A judge for shards of `sizing` each.
    pub(crate) fn new(sizing: Sizing) -> SharedJudge {
        SharedJudge { judge: Mutex::new(Judge::new(&Sampling::of(sizing))), choice: AtomicUsize::new(0) }
    }

    /// The candidate chosen last, and the epochs judged so far.
    #[cfg(test)]
    pub(crate) fn verdict(&self) -> (PolicyKind, u64) {
        let judge = self.judge.lock().unwrap_or_else(PoisonError::into_inner);
        (CANDIDATES[self.choice.load(Ordering::Relaxed)].kind(), judge.epochs)
    }

    /// Feeds a sampling shard's queued requests to the miniatures, and
    /// publishes a new choice when one takes the lead.
    pub(crate) fn feed(&self, batch: &[Meta]) {
        // A panic inside leaves scores that are merely stale: poison is ignored.
        let mut judge = self.judge.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(choice) = judge.feed(batch, self.choice.load(Ordering::Relaxed)) {
            self.choice.store(choice, Ordering::Relaxed);
        }
    }
}

/// How an adaptive policy decides: alone, or as one of the shards of a
/// [`crate::SyncCache`] that follow a [`SharedJudge`].
#[derive(Clone, Debug, Default)]
pub(crate) enum Role {
    /// Runs its own miniatures and tells no one.
    #[default]
    Solo,
    /// Samples its keys for the shared judge and follows its choice.
    Sampler(Arc<SharedJudge>),
    /// Samples nothing and follows the shared judge's choice.
    Follower(Arc<SharedJudge>),
}

/// How a cache of some size is sampled: the miniatures' size and the
/// sampled hashes.
struct Sampling {
    mini: Sizing,
    /// One key in this many is sampled (a power of two).
    rate: u64,
    /// A key is sampled when its hash is at most this.
    limit: u64,
}

impl Sampling {
    fn of(sizing: Sizing) -> Sampling {
        let rate = ((sizing.entries / MIN_SHADOW_ENTRIES).max(1) as u64).min(MAX_RATE);
        let rate = if rate.is_power_of_two() { rate } else { rate.next_power_of_two() / 2 };
        Sampling {
            rate,
            mini: Sizing { units: (sizing.units / rate).max(1), entries: (sizing.entries / rate as usize).max(1) },
            // Never `u64::MAX` (every key but the one hashing to it): a hook
            // of `u64::MAX` means an eager policy, for which the cache marks
            // no hits, and a lazy live policy needs its marks.
            limit: (u64::MAX >> rate.trailing_zeros()).min(u64::MAX - 1),
        }
    }
}

/// Serves with the candidate policy whose miniature simulation wins.
#[derive(Debug)]
pub struct Adaptive {
    sizing: Sizing,
    live: Base,
    live_index: usize,
    /// The candidate the miniatures chose at the end of an epoch, adopted
    /// on the next insert: the cache reads `hit_hook` again after each
    /// insert, so a switch made there never leaves it with a stale hook.
    pending: Option<usize>,
    /// The miniatures, when this policy runs its own ([`Role::Solo`]).
    judge: Option<Judge>,
    /// A key is simulated when its hash is at most this (the top
    /// log2(`rate`) bits clear): one compare, and only sampled keys pay more.
    sample_limit: u64,
    /// Sampled requests not yet fed to the miniatures.
    batch: Vec<Meta>,
    role: Role,
    /// The sketch of the last live W-TinyLFU: a re-adopted one starts warm.
    sketch: Option<crate::sketch::FrequencySketch>,
}

impl Adaptive {
    /// The adaptive policy for a cache of `sizing`.
    pub fn new(sizing: Sizing) -> Self {
        Self::with_role(sizing, Role::Solo)
    }

    /// The adaptive policy for a cache (or a shard) of `sizing`, deciding as `role` says.
    pub(crate) fn with_role(sizing: Sizing, role: Role) -> Self {
        let sampling = Sampling::of(sizing);
        let live = CANDIDATES[0].build(sizing).unwrap_or_else(|| Base::Lru(super::Lru::default()));
        Adaptive {
            sizing,
            live,
            live_index: 0,
            pending: None,
            judge: matches!(role, Role::Solo).then(|| Judge::new(&sampling)),
            // A follower samples (almost) nothing: only a hash of 0, and
            // that request is queued for no one.
            sample_limit: if matches!(role, Role::Follower(_)) { 0 } else { sampling.limit },
            batch: Vec::new(),
            role,
            sketch: None,
        }
    }

    /// The candidate serving right now.
    pub fn live_kind(&self) -> PolicyKind {
        CANDIDATES[self.live_index].kind()
    }

    #[inline]
    fn sampled(&self, hash: u64) -> bool {
        hash <= self.sample_limit
    }

    /// Queues a sampled request for the miniatures.
    #[inline]
    fn observe(&mut self, meta: &Meta) {
        match self.role {
            Role::Solo => {
                self.batch.push(*meta);
                if self.batch.len() >= BATCH {
                    self.run_batch();
                }
            }
            Role::Sampler(_) => self.batch.push(*meta),
            Role::Follower(_) => {}
        }
    }

    /// Feeds the queued requests to this policy's own miniatures.
    #[cold]
    #[inline(never)]
    fn run_batch(&mut self) {
        if let Some(judge) = &mut self.judge {
            if let Some(choice) = judge.feed(&self.batch, self.live_index) {
                self.pending = Some(choice);
            }
        }
        self.batch.clear();
    }

    /// A sampling shard's full queue of sampled requests, for the shared
    /// judge (`None` until [`BATCH`] are queued).
    pub(crate) fn take_batch(&mut self) -> Option<Vec<Meta>> {
        (self.batch.len() >= BATCH).then(|| std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH)))
    }

    /// Rebuilds the live policy as candidate `index` from the resident
    /// entries: the old policy is drained victim by victim, and the new one
    /// adopts them in that order, keeping the old ranking where it can.
    fn switch_to(&mut self, index: usize, marks: &mut impl Marks) {
        let Some(mut next) = CANDIDATES[index].build(self.sizing) else { return };
        if let Base::WTinyLfu(w) = &mut next {
            if let Some(sketch) = self.sketch.take() {
                w.set_sketch(sketch);
            }
        }
        let mut old = std::mem::replace(&mut self.live, next);
        let mut order = Vec::new();
        while let Some(slot) = old.evict(marks) {
            // Every slot the old policy gives up holds an entry, so it has metadata.
            if let Some(meta) = marks.meta(slot) {
                order.push((slot, meta));
            }
        }
        // The drained entries the old policy took for ghosts still hold
        // entries: the cache keeps those slots; its real ghosts are freed.
        old.release_ghosts(marks);
        self.live.adopt(&order, marks);
        if let Base::WTinyLfu(w) = old {
            self.sketch = Some(w.into_sketch());
        }
        self.live_index = index;
    }
}

impl Eviction for Adaptive {
    /// Every hit when the live policy reorders on hits, else only the
    /// sampled ones (which feed the miniatures).
    #[inline]
    fn hit_hook(&self) -> u64 {
        self.live.hit_hook().max(self.sample_limit)
    }

    #[inline]
    fn on_insert(&mut self, slot: u32, meta: &Meta, marks: &mut impl Marks) {
        if let Some(index) = self.pending.take() {
            self.switch_to(index, marks);
        }
        self.live.on_insert(slot, meta, marks);
        if self.sampled(meta.hash) {
            self.observe(meta);
        }
        if let Role::Sampler(shared) | Role::Follower(shared) = &self.role {
            let index = shared.choice.load(Ordering::Relaxed);
            if index != self.live_index {
                self.switch_to(index, marks);
            }
        }
    }

    #[inline]
    fn on_hit(&mut self, slot: u32, hash: u64, marks: &mut impl Marks) {
        self.live.on_hit(slot, hash, marks);
        if self.sampled(hash) {
            if let Some(meta) = marks.meta(slot) {
                self.observe(&meta);
            }
        }
    }

    #[inline]
    fn evict(&mut self, marks: &mut impl Marks) -> Option<u32> {
        self.live.evict(marks)
    }

    #[inline]
    fn on_remove(&mut self, slot: u32, marks: &mut impl Marks) {
        self.live.on_remove(slot, marks);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{replay, units};
    use super::*;

    #[test]
    fn miniatures_share_keys_without_losing_or_overfilling_any() {
        // Weighted keys (some larger than a miniature) over a key space
        // larger than the miniatures: after every request each miniature
        // is within its capacity, and a key keeps its slot exactly while
        // some miniature holds it.
        let mut minis = Miniatures::new(Sizing { units: 400, entries: 100 });
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..50_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let key = rng % 700;
            let weight = if key.is_multiple_of(97) { 500 } else { 1 + key % 9 };
            minis.access(&Meta { hash: key.wrapping_mul(0x2545_f491_4f6c_dd1d), weight, expires_at: u64::MAX, cost: 1 });
            for m in &minis.minis {
                assert!(m.weight <= minis.capacity, "{} over {}", m.weight, minis.capacity);
            }
            let held: u64 = minis.keys.iter().filter(|k| k.held()).count() as u64;
            assert_eq!(held, minis.slot_of.len() as u64, "a held key without a slot, or a slot kept for no one");
            for (&hash, &slot) in &minis.slot_of {
                assert_eq!(minis.keys[slot as usize].hash, hash);
            }
        }
        assert!(minis.minis.iter().all(|m| m.weight > 0));
    }

    #[test]
    fn a_lazy_live_policy_keeps_its_marks_when_every_key_is_sampled() {
        // 100 entries: too few to sample, so every key feeds the miniatures
        // and every hit is reported. A hook of u64::MAX would also tell the
        // cache to mark no hits, and a lazy live policy would go blind.
        let adaptive = Adaptive::new(units(100));
        assert_eq!(adaptive.live.hit_hook(), 0, "LIRS serves first and reads marks");
        assert_eq!(adaptive.hit_hook(), u64::MAX - 1);
    }

    #[test]
    fn switches_away_from_a_losing_candidate_on_a_loop() {
        // A loop slightly larger than the cache: LRU-like policies get
        // nothing, LIRS keeps most of it. Adaptive must end up near LIRS.
        let keys: Vec<u64> = (0..400_000).map(|i| i % 1100).collect();
        let mut adaptive = Adaptive::new(units(1000));
        let (hits, _) = replay(&mut adaptive, 1000, &keys);
        let (lirs_hits, _) = replay(&mut super::super::Lirs::new(units(1000)), 1000, &keys);
        assert!(hits as f64 >= 0.95 * lirs_hits as f64, "adaptive {hits} vs lirs {lirs_hits}");
        assert!(matches!(adaptive.live_kind(), PolicyKind::Lirs | PolicyKind::WTinyLfu), "{}", adaptive.live_kind());
    }

    #[test]
    fn the_judge_sleeps_while_the_live_candidate_leads_safely_and_wakes_to_follow_a_change() {
        // Rate 2 (miniatures of 500 entries); every request here is fed
        // to the judge, as if sampled.
        let mut judge = Judge::new(&Sampling::of(units(1000)));
        let meta = |k: u64| Meta { hash: k.wrapping_mul(0x9e37_79b9_7f4a_7c15), weight: 1, expires_at: u64::MAX, cost: 1 };
        let mut live = 0;
        let mut run = |judge: &mut Judge, requests: Vec<Meta>| {
            for batch in requests.chunks(BATCH) {
                if let Some(choice) = judge.feed(batch, live) {
                    live = choice;
                }
            }
            CANDIDATES[live].kind()
        };
        // A loop larger than the miniatures: LIRS keeps most of it and
        // leads by points, so the judge sleeps through most of it.
        let looped = (0..300_000u64).map(|i| meta(i % 800)).collect();
        assert_eq!(run(&mut judge, looped), PolicyKind::Lirs);
        let awake_epochs = 300_000 / judge.epoch_len;
        assert!(judge.epochs < awake_epochs / 2, "{} epochs of {awake_epochs}: never slept", judge.epochs);
        // Then 400 hot keys that change every 1,000 requests: LIRS keeps the
        // old ones; LRU follows. The judge wakes up and switches.
        let shifting = (0..300_000u64).map(|i| meta(10_000 + (i / 1000) * 400 + (i * 7919) % 400)).collect();
        assert_eq!(run(&mut judge, shifting), PolicyKind::Lru);
    }

    #[test]
    fn a_lead_the_sample_may_owe_to_luck_does_not_switch() {
        // One epoch in which the challenger (W-TinyLFU) hit `only_challenger`
        // requests that LIRS, serving, missed, and LIRS `only_live` that the
        // challenger missed; no other hits. The lead of 12 clears the early
        // margin every time; it must also clear 2.25 standard deviations.
        let verdict = |capacity: usize, only_live: u64, only_challenger: u64| {
            let mut judge = Judge::new(&Sampling::of(units(capacity)));
            judge.epoch_seen = judge.epoch_len;
            let minis = &mut judge.miniatures;
            (minis.epoch_patterns[0b01], minis.epoch_patterns[0b10]) = (only_live, only_challenger);
            (minis.minis[0].epoch_hits, minis.minis[1].epoch_hits) = (only_live, only_challenger);
            judge.end_epoch(0)
        };
        // Sampled 1 key in 16: 12 disagreements, all one way, are
        // significant; 72 with a lead of 12 are not.
        assert_eq!(verdict(4096, 0, 12), Some(1));
        assert_eq!(verdict(4096, 30, 42), None);
        // Every key simulated: the miniatures are exact, the lead is real.
        assert_eq!(verdict(200, 30, 42), Some(1));
    }

    #[test]
    fn a_judge_sampling_as_thinly_as_the_largest_caches_never_sleeps() {
        let judge = Judge::new(&Sampling::of(units(1 << 20)));
        assert_eq!(judge.max_sleep, 0);
    }
}
