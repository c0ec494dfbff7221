//! Hotspot detection: the top-K keys by request count, estimated with a
//! count-min sketch (32-bit counters, four rows) so memory does not grow
//! with the number of distinct keys. Counts halve every `window` requests,
//! so the list follows what is hot now rather than since start.

use std::hash::BuildHasher;

const ROWS: usize = 4;

/// Top-K heavy hitters over a stream of keys.
#[derive(Debug)]
pub struct HotKeys {
    counts: Vec<u32>,
    width: usize,
    hasher: foldhash::fast::FixedState,
    top: Vec<(String, u32)>,
    k: usize,
    seen: u64,
    window: u64,
}

impl HotKeys {
    /// Tracks the `k` hottest keys with a sketch `width` counters wide per
    /// row, halving all counts every `window` requests.
    pub fn new(k: usize, width: usize, window: u64) -> HotKeys {
        let width = width.max(64).next_power_of_two();
        HotKeys {
            counts: vec![0; ROWS * width],
            width,
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            top: Vec::with_capacity(k + 1),
            k: k.max(1),
            seen: 0,
            window: window.max(1),
        }
    }

    fn slots(&self, key: &str) -> [usize; ROWS] {
        let h = self.hasher.hash_one(key);
        let mut out = [0; ROWS];
        for (row, slot) in out.iter_mut().enumerate() {
            let x = h.rotate_left(16 * row as u32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            *slot = row * self.width + ((x >> 32) as usize & (self.width - 1));
        }
        out
    }

    /// Counts one request for `key`; returns its estimated count.
    pub fn observe(&mut self, key: &str) -> u32 {
        self.seen += 1;
        if self.seen.is_multiple_of(self.window) {
            self.halve();
        }
        let slots = self.slots(key);
        let mut estimate = u32::MAX;
        for s in slots {
            self.counts[s] = self.counts[s].saturating_add(1);
            estimate = estimate.min(self.counts[s]);
        }
        if let Some(entry) = self.top.iter_mut().find(|(k, _)| k == key) {
            entry.1 = estimate;
        } else if self.top.len() < self.k {
            self.top.push((key.to_string(), estimate));
        } else if let Some(min) = self.top.iter_mut().min_by_key(|(_, c)| *c).filter(|(_, c)| *c < estimate) {
            *min = (key.to_string(), estimate);
        }
        estimate
    }

    fn halve(&mut self) {
        self.counts.iter_mut().for_each(|c| *c /= 2);
        self.top.iter_mut().for_each(|(_, c)| *c /= 2);
    }

    /// The hottest keys with their estimated counts, hottest first.
    pub fn top(&self) -> Vec<(String, u32)> {
        let mut t = self.top.clone();
        t.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_heavy_hitters_of_a_skewed_stream_are_found() {
        let mut h = HotKeys::new(3, 1024, 1 << 30);
        for i in 0..20_000u32 {
            let key = match i % 10 {
                0..=3 => "hot-a".to_string(),
                4..=5 => "hot-b".to_string(),
                6 => "hot-c".to_string(),
                _ => format!("cold-{i}"),
            };
            h.observe(&key);
        }
        let top: Vec<String> = h.top().into_iter().map(|(k, _)| k).collect();
        assert_eq!(top, ["hot-a", "hot-b", "hot-c"]);
    }

    #[test]
    fn old_popularity_fades() {
        let mut h = HotKeys::new(1, 256, 1000);
        for _ in 0..900 {
            h.observe("yesterday");
        }
        for _ in 0..3000 {
            h.observe("today");
        }
        assert_eq!(h.top()[0].0, "today");
    }

    proptest! {
        #[test]
        fn estimates_never_undercount(keys in proptest::collection::vec(0u8..20, 1..500)) {
            let mut h = HotKeys::new(5, 64, 1 << 30);
            let mut exact = std::collections::HashMap::new();
            for k in &keys {
                let key = format!("k{k}");
                *exact.entry(key.clone()).or_insert(0u32) += 1;
                h.observe(&key);
            }
            for (k, n) in exact {
                let slots = h.slots(&k);
                prop_assert!(slots.iter().map(|s| h.counts[*s]).min().unwrap() >= n);
            }
        }
    }
}
