//! W-TinyLFU (Einziger et al.; Caffeine): a small *window* admits every
//! new entry; an entry leaving the window enters the segmented *main* area
//! (probation + protected) only if the frequency sketch says it is more
//! popular than main's victim. A hill climber resizes the window from the
//! hit rate of successive samples (Caffeine's `climb`), so the policy
//! slides between LRU-like (large window) and LFU-like (small window).
//!
//! Unlike Caffeine, a hit changes nothing here but the slot's mark (see
//! [`crate::Marks`]): the segments are CLOCK queues, and a marked entry
//! found at a queue's end gets a second chance (window, protected) or its
//! promotion (probation to protected) then, with its marked hits added to
//! the sketch. Every frequency compared for admission is therefore
//! complete, and a hit touches neither a list nor the sketch.

use super::{grow, Eviction, Meta, Sizing};
use crate::list::{LinkStore, List, Node, NodeLinks, NIL};
use crate::sketch::FrequencySketch;
use crate::Marks;

const WINDOW: u8 = 0;
const PROBATION: u8 = 1;
const PROTECTED: u8 = 2;

/// Step of the hill climber as a share of capacity (Caffeine: 6.25 %).
const STEP_PERCENT: f64 = 0.0625;
/// A hit-rate change this large restarts the climber with a full step.
const RESTART_THRESHOLD: f64 = 0.05;
/// Each step is this much smaller than the one before.
const STEP_DECAY: f64 = 0.98;
/// Candidates at least this popular may be admitted at random (hash-flooding defence).
const HASHDOS_THRESHOLD: u8 = 6;

/// A slot's key hash, weight and region (in a [`Node`], beside its links
/// in that region's queue).
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    hash: u64,
    weight: u64,
    region: u8,
}

/// W-TinyLFU with a hill-climbed window.
#[derive(Debug)]
pub struct WTinyLfu {
    lists: [List; 3],
    weights: [u64; 3],
    window_max: u64,
    protected_max: u64,
    capacity: u64,
    sketch: FrequencySketch,
    entries: Vec<Node<Entry>>,
    climb: Option<Climber>,
    rng: u64,
}

/// Caffeine's hill climber state.
#[derive(Debug)]
struct Climber {
    /// The marks' hit count when the sample began (`None` before the first
    /// miss: a policy adopted mid-run must not count the hits before it).
    hits_before: Option<u64>,
    misses: u64,
    sample: u64,
    previous_rate: f64,
    step: f64,
}

impl WTinyLfu {
    /// W-TinyLFU with a 1 % window that the hill climber then tunes.
    pub fn new(sizing: Sizing) -> Self {
        Self::with_window(sizing, 0.01, true)
    }

    /// W-TinyLFU with a window of `window_share` of the capacity, tuned by the
    /// hill climber only when `climb` is set.
    pub(crate) fn with_window(sizing: Sizing, window_share: f64, climb: bool) -> Self {
        let capacity = sizing.units.max(1);
        let window_max = ((capacity as f64 * window_share) as u64).clamp(1, capacity);
        let main = capacity - window_max;
        WTinyLfu {
            lists: [List::default(); 3],
            weights: [0; 3],
            window_max,
            protected_max: main * 4 / 5,
            capacity,
            sketch: FrequencySketch::new(sizing.entries),
            entries: Vec::new(),
            climb: climb.then(|| Climber {
                hits_before: None,
                misses: 0,
                sample: 10 * sizing.entries.max(16) as u64,
                previous_rate: 0.0,
                step: -STEP_PERCENT * capacity as f64,
            }),
            rng: 0x853c_49e6_748f_ea9b,
        }
    }

    /// Gives up the frequency sketch (the history worth keeping when this
    /// policy is replaced, to hand to a later one).
    pub(crate) fn into_sketch(self) -> FrequencySketch {
        self.sketch
    }

    /// Starts from `sketch`'s frequencies instead of an empty sketch.
    pub(crate) fn set_sketch(&mut self, sketch: FrequencySketch) {
        self.sketch = sketch;
    }

    fn take(&mut self, slot: u32) {
        let region = self.entries[slot as usize].region as usize;
        NodeLinks(&mut self.entries).unlink(&mut self.lists[region], slot);
        self.weights[region] -= self.entries[slot as usize].weight;
    }

    fn put_front(&mut self, slot: u32, region: u8) {
        self.entries[slot as usize].region = region;
        NodeLinks(&mut self.entries).push_front(&mut self.lists[region as usize], slot);
        self.weights[region as usize] += self.entries[slot as usize].weight;
    }

    /// Adds the hits marked on `slot` to the sketch; true when there were any.
    fn flush(&mut self, slot: u32, marks: &mut impl Marks) -> bool {
        let hits = marks.take(slot);
        if hits > 0 {
            self.sketch.add(self.entries[slot as usize].hash, hits);
        }
        hits > 0
    }

    /// The unmarked end of `region`'s queue (`NIL` when empty); marked
    /// entries on the way go back to the front with their hits flushed.
    fn clock_tail(&mut self, region: u8, marks: &mut impl Marks) -> u32 {
        loop {
            let tail = self.lists[region as usize].tail;
            if tail == NIL || !self.flush(tail, marks) {
                return tail;
            }
            NodeLinks(&mut self.entries).move_to_front(&mut self.lists[region as usize], tail);
        }
    }

    fn demote_protected(&mut self, marks: &mut impl Marks) {
        while self.weights[PROTECTED as usize] > self.protected_max {
            let slot = self.clock_tail(PROTECTED, marks);
            if slot == NIL {
                break;
            }
            self.take(slot);
            self.put_front(slot, PROBATION);
        }
    }

    /// Main's victim: probation's unmarked end (marked entries met on the
    /// way are promoted to protected), else protected's; `NIL` when main is empty.
    fn main_victim(&mut self, marks: &mut impl Marks) -> u32 {
        loop {
            let tail = self.lists[PROBATION as usize].tail;
            if tail == NIL {
                return self.clock_tail(PROTECTED, marks);
            }
            if !self.flush(tail, marks) {
                return tail;
            }
            self.take(tail);
            self.put_front(tail, PROTECTED);
            self.demote_protected(marks);
        }
    }

    fn admit(&mut self, candidate: u64, victim: u64) -> bool {
        let c = self.sketch.frequency(candidate);
        let v = self.sketch.frequency(victim);
        if c > v {
            return true;
        }
        if c >= HASHDOS_THRESHOLD {
            // xorshift: deterministic, and unpredictable enough to break floods.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            return self.rng & 127 == 0;
        }
        false
    }

    /// Moves window overflow into probation while the cache is not full.
    fn spill_window(&mut self, marks: &mut impl Marks) {
        while self.weights[WINDOW as usize] > self.window_max && self.weights.iter().sum::<u64>() <= self.capacity {
            let slot = self.clock_tail(WINDOW, marks);
            if slot == NIL {
                break;
            }
            self.take(slot);
            self.put_front(slot, PROBATION);
        }
    }

    /// Counts a miss for the hill climber; climbs once a sample of
    /// requests (the marks count the hits) is complete.
    #[inline]
    fn count_miss(&mut self, marks: &mut impl Marks) {
        let Some(c) = &mut self.climb else { return };
        c.misses += 1;
        let hits = marks.hits() - *c.hits_before.get_or_insert(marks.hits());
        if hits + c.misses >= c.sample {
            self.climb(hits, marks);
        }
    }

    /// Caffeine's hill climbing: compare this sample's hit rate with the
    /// last one and keep moving the window the same way while it helps.
    #[cold]
    fn climb(&mut self, hits: u64, marks: &mut impl Marks) {
        let Some(c) = &mut self.climb else { return };
        let requests = hits + c.misses;
        let rate = hits as f64 / requests as f64;
        let change = rate - c.previous_rate;
        let amount = if change >= 0.0 { c.step } else { -c.step };
        c.step =
            if change.abs() >= RESTART_THRESHOLD { STEP_PERCENT * self.capacity as f64 * amount.signum() } else { STEP_DECAY * amount };
        c.previous_rate = rate;
        c.hits_before = Some(marks.hits());
        c.misses = 0;
        let amount = amount as i64;
        if amount > 0 {
            self.grow_window(amount as u64, marks);
        } else if amount < 0 {
            self.shrink_window(amount.unsigned_abs());
        }
    }

    fn grow_window(&mut self, amount: u64, marks: &mut impl Marks) {
        let quota = amount.min(self.protected_max);
        self.protected_max -= quota;
        self.window_max += quota;
        self.demote_protected(marks);
        let mut moved = 0;
        while moved < quota {
            let from = if !self.lists[PROBATION as usize].is_empty() { PROBATION } else { PROTECTED };
            let Some(slot) = NodeLinks(&mut self.entries).pop_back(&mut self.lists[from as usize]) else { break };
            let w = self.entries[slot as usize].weight;
            self.weights[from as usize] -= w;
            self.put_front(slot, WINDOW);
            moved += w;
        }
    }

    fn shrink_window(&mut self, amount: u64) {
        let quota = amount.min(self.window_max.saturating_sub(1));
        self.protected_max += quota;
        self.window_max -= quota;
        let mut moved = 0;
        while moved < quota {
            let Some(slot) = NodeLinks(&mut self.entries).pop_back(&mut self.lists[WINDOW as usize]) else { break };
            let w = self.entries[slot as usize].weight;
            self.weights[WINDOW as usize] -= w;
            self.put_front(slot, PROBATION);
            moved += w;
        }
    }
}

impl Eviction for WTinyLfu {
    fn hit_hook(&self) -> u64 {
        0
    }

    fn on_insert(&mut self, slot: u32, meta: &Meta, marks: &mut impl Marks) {
        grow(&mut self.entries, slot, Node::default());
        self.sketch.increment(meta.hash);
        let e = &mut self.entries[slot as usize];
        (e.hash, e.weight) = (meta.hash, meta.weight);
        self.put_front(slot, WINDOW);
        self.spill_window(marks);
        self.count_miss(marks);
    }

    /// A hit only marks the slot (the cache does that); the marks are read
    /// when the slot reaches the end of its queue.
    #[inline]
    fn on_hit(&mut self, _slot: u32, _hash: u64, _marks: &mut impl Marks) {}

    fn evict(&mut self, marks: &mut impl Marks) -> Option<u32> {
        let candidate = if self.weights[WINDOW as usize] > self.window_max { self.clock_tail(WINDOW, marks) } else { NIL };
        if candidate != NIL {
            let victim = self.main_victim(marks);
            if victim == NIL {
                self.take(candidate);
                return Some(candidate);
            }
            let (ch, vh) = (self.entries[candidate as usize].hash, self.entries[victim as usize].hash);
            if self.admit(ch, vh) {
                self.take(victim);
                self.take(candidate);
                self.put_front(candidate, PROBATION);
                return Some(victim);
            }
            self.take(candidate);
            return Some(candidate);
        }
        let mut victim = self.main_victim(marks);
        if victim == NIL {
            victim = self.clock_tail(WINDOW, marks);
        }
        if victim == NIL {
            return None;
        }
        self.take(victim);
        Some(victim)
    }

    fn on_remove(&mut self, slot: u32, _marks: &mut impl Marks) {
        self.take(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{replay, units};
    use super::*;

    #[test]
    fn popular_entries_are_not_displaced_by_a_scan() {
        let mut keys = Vec::new();
        for _ in 0..5 {
            keys.extend([1, 2, 3, 4]);
        }
        keys.extend(100..200);
        keys.extend([1, 2, 3, 4]);
        let (hits, resident) = replay(&mut WTinyLfu::new(units(5)), 5, &keys);
        assert_eq!(hits, 16 + 4);
        for k in 1..=4 {
            assert!(resident.contains(&k));
        }
    }

    #[test]
    fn climber_grows_the_window_for_recency_workloads() {
        // A sliding working set: recent keys are reused, old ones never.
        let keys: Vec<u64> = (0..200_000u64).map(|i| i / 4 + (i % 4) * 3).collect();
        let mut p = WTinyLfu::new(units(100));
        replay(&mut p, 100, &keys);
        assert!(p.window_max > 1, "window {}", p.window_max);
    }
}
