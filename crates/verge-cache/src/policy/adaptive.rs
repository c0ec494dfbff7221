//! The default policy: runs miniature simulations of candidate policies on
//! a hash-sampled slice of the keys (Waldspurger et al., "Cache Modeling
//! and Optimization using Miniature Simulations", ATC'17) and serves with
//! whichever candidate has been winning recently.
//!
//! Each candidate simulates a cache `rate` times smaller fed with the
//! `1/rate` of keys whose hash falls in the sample; hit ratios of such
//! miniatures track the full-size ones closely. Every epoch the scores
//! (exponentially decayed hit counts) are compared; when another candidate
//! beats the live one by a margin, the live policy is rebuilt as that
//! candidate from the resident entries, oldest access first.

use super::{grow, Base, Eviction, Meta, PolicyKind, Sizing};
use std::collections::HashMap;

/// The candidates simulated in miniature; the first one serves first.
/// (ARC and SIEVE were tried too: never the sole winner on the traces of
/// the README, and every extra miniature costs time and wrong switches.)
const CANDIDATES: [PolicyKind; 5] = [PolicyKind::WTinyLfu, PolicyKind::Lirs, PolicyKind::S3Fifo, PolicyKind::Lru, PolicyKind::Gdsf];
/// Miniatures hold at least this many entries (smaller ones are too noisy).
const MIN_SHADOW_ENTRIES: usize = 1024;
/// At most one key in this many is simulated.
const MAX_RATE: u64 = 64;
/// Sampled accesses per epoch: the miniature's entry count, at least this.
const MIN_EPOCH: u64 = 1024;
/// Weight of the past in the scores after each epoch.
const DECAY: f64 = 0.95;
/// Relative lead a challenger needs over the live candidate to take over.
const MARGIN: f64 = 0.02;

/// A key-only cache simulation used as a miniature.
#[derive(Debug)]
struct Sim {
    slot_of: HashMap<u64, u32, foldhash::fast::FixedState>,
    hashes: Vec<u64>,
    weights: Vec<u64>,
    free: Vec<u32>,
    weight: u64,
    capacity: u64,
    policy: Base,
}

impl Sim {
    fn new(kind: PolicyKind, sizing: Sizing) -> Option<Sim> {
        Some(Sim {
            slot_of: HashMap::default(),
            hashes: Vec::new(),
            weights: Vec::new(),
            free: Vec::new(),
            weight: 0,
            capacity: sizing.units,
            policy: Base::new(kind, sizing)?,
        })
    }

    /// One request: a hit, or a miss followed by an insert. Returns the hit.
    fn access(&mut self, meta: &Meta) -> bool {
        if let Some(&slot) = self.slot_of.get(&meta.hash) {
            self.policy.on_hit(slot);
            return true;
        }
        if meta.weight > self.capacity {
            return false;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.hashes[s as usize] = meta.hash;
                self.weights[s as usize] = meta.weight;
                s
            }
            None => {
                self.hashes.push(meta.hash);
                self.weights.push(meta.weight);
                (self.hashes.len() - 1) as u32
            }
        };
        self.slot_of.insert(meta.hash, slot);
        self.weight += meta.weight;
        self.policy.on_insert(slot, meta);
        while self.weight > self.capacity {
            let Some(victim) = self.policy.evict() else { break };
            self.slot_of.remove(&self.hashes[victim as usize]);
            self.weight -= self.weights[victim as usize];
            self.free.push(victim);
        }
        false
    }
}

#[derive(Debug)]
struct Shadow {
    kind: PolicyKind,
    sim: Sim,
    epoch_hits: u64,
    score: f64,
}

/// Serves with the candidate policy whose miniature simulation wins.
#[derive(Debug)]
pub struct Adaptive {
    sizing: Sizing,
    live: Base,
    live_index: usize,
    /// Metadata of resident entries, and the tick of their last access (0 = free slot).
    metas: Vec<Meta>,
    ticks: Vec<u64>,
    tick: u64,
    shadows: Vec<Shadow>,
    sample_shift: u32,
    epoch_len: u64,
    epoch_seen: u64,
}

impl Adaptive {
    /// The adaptive policy for a cache of `sizing`.
    pub fn new(sizing: Sizing) -> Self {
        let rate = ((sizing.entries / MIN_SHADOW_ENTRIES).max(1) as u64).min(MAX_RATE);
        let rate = if rate.is_power_of_two() { rate } else { rate.next_power_of_two() / 2 };
        let mini = Sizing { units: (sizing.units / rate).max(1), entries: (sizing.entries / rate as usize).max(1) };
        let shadows =
            CANDIDATES.iter().filter_map(|&kind| Some(Shadow { kind, sim: Sim::new(kind, mini)?, epoch_hits: 0, score: 0.0 })).collect();
        let live = Base::new(CANDIDATES[0], sizing).unwrap_or_else(|| Base::Lru(super::Lru::default()));
        Adaptive {
            sizing,
            live,
            live_index: 0,
            metas: Vec::new(),
            ticks: Vec::new(),
            tick: 0,
            shadows,
            sample_shift: rate.trailing_zeros(),
            epoch_len: (mini.entries as u64).max(MIN_EPOCH),
            epoch_seen: 0,
        }
    }

    /// The candidate serving right now.
    pub fn live_kind(&self) -> PolicyKind {
        self.shadows.get(self.live_index).map_or(CANDIDATES[0], |s| s.kind)
    }

    #[inline]
    fn sampled(&self, hash: u64) -> bool {
        self.sample_shift == 0 || (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.sample_shift)) == 0
    }

    fn observe(&mut self, meta: &Meta) {
        for s in &mut self.shadows {
            if s.sim.access(meta) {
                s.epoch_hits += 1;
            }
        }
        self.epoch_seen += 1;
        if self.epoch_seen >= self.epoch_len {
            self.end_epoch();
        }
    }

    fn end_epoch(&mut self) {
        self.epoch_seen = 0;
        for s in &mut self.shadows {
            s.score = s.score * DECAY + s.epoch_hits as f64;
            s.epoch_hits = 0;
        }
        // Ties go to the earlier candidate (`max_by` keeps the last maximum).
        let Some((best, best_score)) = self.shadows.iter().enumerate().rev().map(|(i, s)| (i, s.score)).max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            return;
        };
        let live_score = self.shadows[self.live_index].score;
        if best != self.live_index && best_score > live_score * (1.0 + MARGIN) + 1.0 {
            self.switch_to(best);
        }
    }

    /// Rebuilds the live policy as candidate `index` from the resident entries.
    fn switch_to(&mut self, index: usize) {
        let Some(mut next) = Base::new(self.shadows[index].kind, self.sizing) else { return };
        let mut resident: Vec<(u64, u32)> =
            self.ticks.iter().enumerate().filter(|(_, &t)| t != 0).map(|(slot, &t)| (t, slot as u32)).collect();
        resident.sort_unstable();
        for (_, slot) in resident {
            next.on_insert(slot, &self.metas[slot as usize]);
        }
        self.live = next;
        self.live_index = index;
    }
}

impl Eviction for Adaptive {
    fn on_insert(&mut self, slot: u32, meta: &Meta) {
        grow(&mut self.metas, slot, *meta);
        grow(&mut self.ticks, slot, 0);
        self.tick += 1;
        self.metas[slot as usize] = *meta;
        self.ticks[slot as usize] = self.tick;
        self.live.on_insert(slot, meta);
        if self.sampled(meta.hash) {
            self.observe(meta);
        }
    }

    #[inline]
    fn on_hit(&mut self, slot: u32) {
        self.tick += 1;
        self.ticks[slot as usize] = self.tick;
        self.live.on_hit(slot);
        let meta = self.metas[slot as usize];
        if self.sampled(meta.hash) {
            self.observe(&meta);
        }
    }

    fn evict(&mut self) -> Option<u32> {
        let slot = self.live.evict()?;
        self.ticks[slot as usize] = 0;
        Some(slot)
    }

    fn on_remove(&mut self, slot: u32) {
        self.ticks[slot as usize] = 0;
        self.live.on_remove(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{replay, units};
    use super::*;

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
}
