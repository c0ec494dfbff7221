//! The pre-warming predictor: learns from the keys a cache is asked for
//! when each key tends to be asked for again (periodicity) and which key
//! tends to follow which (first-order sequences), and predicts warm-ups,
//! each with a confidence and a deadline. Pure: time comes in as `now_ms`.
//!
//! - **Periodicity.** Per key, an exponentially weighted mean and deviation
//!   of the gap between requests. A key seen at least four times whose gap
//!   deviates little (coefficient of variation under 0.3) is predicted at
//!   `last + mean`, with confidence `1 − cv`.
//! - **Sequences.** Per key, counts of the keys requested next (within
//!   `SEQUENCE_WINDOW_MS`) and the mean delay. After a request for A, a
//!   successor B seen at least three times and in at least half of A's
//!   transitions is predicted at `now + delay`, with confidence its share.

use std::collections::HashMap;

/// Requests further apart than this do not form a sequence.
pub const SEQUENCE_WINDOW_MS: u64 = 5_000;
/// Weight of a new gap in the running mean and deviation.
const ALPHA: f64 = 0.25;
/// Coefficient of variation under which a key counts as periodic.
const MAX_CV: f64 = 0.3;
/// Successors remembered per key.
const MAX_SUCCESSORS: usize = 8;

/// A warm-up worth doing.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The key to warm.
    pub key: String,
    /// How sure the predictor is, 0–1.
    pub confidence: f64,
    /// When the key is expected, ms: warm before then.
    pub deadline_ms: u64,
    /// Why: `periodic` or `after KEY`.
    pub reason: String,
}

#[derive(Debug, Default)]
struct KeyStats {
    last_ms: u64,
    seen: u32,
    mean_gap: f64,
    dev_gap: f64,
    successors: HashMap<String, (u32, f64)>,
    transitions: u32,
}

/// Learns access patterns of up to `max_keys` keys.
#[derive(Debug)]
pub struct Predictor {
    keys: HashMap<String, KeyStats>,
    /// The previous request's key (reused buffer) and time.
    previous: Option<(String, u64)>,
    max_keys: usize,
}

impl Predictor {
    /// A predictor remembering at most `max_keys` keys (the least recently
    /// requested are forgotten first).
    pub fn new(max_keys: usize) -> Predictor {
        Predictor { keys: HashMap::new(), previous: None, max_keys: max_keys.max(1) }
    }

    /// Records a request for `key` at `now_ms`; returns the successors
    /// worth warming now.
    pub fn observe(&mut self, key: &str, now_ms: u64) -> Vec<Prediction> {
        // The steady state allocates nothing: known keys are looked up by
        // `&str` and the previous key's buffer is reused.
        if let Some((prev, at)) = &self.previous {
            let delay = now_ms.saturating_sub(*at);
            if prev != key && delay <= SEQUENCE_WINDOW_MS {
                if let Some(p) = self.keys.get_mut(prev.as_str()) {
                    p.transitions += 1;
                    if let Some(s) = p.successors.get_mut(key) {
                        s.0 += 1;
                        s.1 += ALPHA * (delay as f64 - s.1);
                    } else if p.successors.len() < MAX_SUCCESSORS {
                        p.successors.insert(key.to_string(), (1, delay as f64));
                    }
                }
            }
        }
        if !self.keys.contains_key(key) {
            self.keys.insert(key.to_string(), KeyStats::default());
        }
        let Some(stats) = self.keys.get_mut(key) else { return Vec::new() };
        if stats.seen > 0 {
            let gap = now_ms.saturating_sub(stats.last_ms) as f64;
            if stats.seen == 1 {
                stats.mean_gap = gap;
            } else {
                let err = gap - stats.mean_gap;
                stats.mean_gap += ALPHA * err;
                stats.dev_gap += ALPHA * (err.abs() - stats.dev_gap);
            }
        }
        stats.seen = stats.seen.saturating_add(1);
        stats.last_ms = now_ms;
        let next = successors(key, stats, now_ms);
        match &mut self.previous {
            Some((buf, at)) => {
                buf.clear();
                buf.push_str(key);
                *at = now_ms;
            }
            None => self.previous = Some((key.to_string(), now_ms)),
        }
        if self.keys.len() > self.max_keys + self.max_keys / 8 {
            self.forget_oldest();
        }
        next
    }

    /// Periodic keys expected within `horizon_ms` of `now_ms`, most
    /// confident first.
    pub fn due(&self, now_ms: u64, horizon_ms: u64) -> Vec<Prediction> {
        let mut out: Vec<Prediction> = self
            .keys
            .iter()
            .filter(|(_, s)| s.seen >= 4 && s.mean_gap > 0.0)
            .filter_map(|(k, s)| {
                let cv = s.dev_gap / s.mean_gap;
                let next = s.last_ms + s.mean_gap as u64;
                (cv < MAX_CV && next >= now_ms && next <= now_ms + horizon_ms).then(|| Prediction {
                    key: k.clone(),
                    confidence: (1.0 - cv).clamp(0.0, 1.0),
                    deadline_ms: next,
                    reason: "periodic".into(),
                })
            })
            .collect();
        out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence).then(a.deadline_ms.cmp(&b.deadline_ms)));
        out
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether nothing has been observed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn forget_oldest(&mut self) {
        let mut ages: Vec<u64> = self.keys.values().map(|s| s.last_ms).collect();
        let cut = ages.len() - self.max_keys;
        let (_, threshold, _) = ages.select_nth_unstable(cut);
        let threshold = *threshold;
        self.keys.retain(|_, s| s.last_ms >= threshold);
    }
}

fn successors(key: &str, stats: &KeyStats, now_ms: u64) -> Vec<Prediction> {
    if stats.transitions == 0 {
        return Vec::new();
    }
    let mut out: Vec<Prediction> = stats
        .successors
        .iter()
        .filter(|(_, (n, _))| *n >= 3 && 2 * n >= stats.transitions)
        .map(|(next, (n, delay))| Prediction {
            key: next.clone(),
            confidence: f64::from(*n) / f64::from(stats.transitions),
            deadline_ms: now_ms + *delay as u64,
            reason: format!("after {key}"),
        })
        .collect();
    out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_asked_for_every_ten_seconds_is_predicted_before_its_next_request() {
        let mut p = Predictor::new(100);
        for i in 0..6u64 {
            p.observe("report", 1_000 + i * 10_000 + (i % 2) * 200);
            p.observe(&format!("noise-{i}"), 1_500 + i * 10_000);
        }
        let last = 1_000 + 5 * 10_000 + 200;
        assert!(p.due(last + 1_000, 2_000).is_empty(), "too early");
        let due = p.due(last + 9_000, 2_000);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].key, "report");
        assert!(due[0].confidence > 0.8 && (last + 9_500..last + 10_500).contains(&due[0].deadline_ms), "{due:?}");
    }

    #[test]
    fn a_key_that_follows_another_is_predicted_after_it() {
        let mut p = Predictor::new(100);
        let mut t = 0;
        for i in 0..5 {
            p.observe("index.html", t);
            p.observe("app.js", t + 40);
            p.observe(&format!("other-{i}"), t + 20_000);
            t += 60_000;
        }
        let next = p.observe("index.html", t);
        assert_eq!(next.len(), 1, "{next:?}");
        assert_eq!((next[0].key.as_str(), next[0].reason.as_str()), ("app.js", "after index.html"));
        assert_eq!(next[0].deadline_ms, t + 40);
        assert!(p.observe("other-0", t + 100_000).is_empty());
    }

    #[test]
    fn memory_stays_bounded_by_forgetting_the_oldest() {
        let mut p = Predictor::new(100);
        for i in 0..10_000u64 {
            p.observe(&format!("k{i}"), i);
        }
        assert!(p.len() <= 113, "{}", p.len());
        assert!(p.keys.contains_key("k9999"));
    }
}
