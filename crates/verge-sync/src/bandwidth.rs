//! Bandwidth management: a global and a per-peer budget shared among
//! transfers by priority, token buckets that pace each transfer, and the
//! compression level a link's speed calls for. Pure: time is passed in.

use std::collections::{BTreeMap, HashMap};

/// A token bucket: `rate` bytes per second, holding at most `burst` bytes.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ms`.
    pub fn new(rate_bps: u64, burst: u64, now_ms: u64) -> Self {
        TokenBucket { rate: rate_bps as f64, burst: burst.max(1) as f64, tokens: burst.max(1) as f64, last_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Spends `n` bytes at `now_ms` and returns how long the sender must wait
    /// (milliseconds) before those bytes may go: zero while the bucket holds them.
    pub fn take(&mut self, n: u64, now_ms: u64) -> u64 {
        self.refill(now_ms);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 || self.rate <= 0.0 {
            0
        } else {
            (-self.tokens / self.rate * 1000.0).ceil() as u64
        }
    }

    /// The rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }
}

/// The zstd level worth spending CPU on for a link of `bits_per_sec`:
/// fast links are CPU-bound (level 1), slow ones byte-bound (level 19).
pub fn level_for_link(bits_per_sec: u64) -> i32 {
    match bits_per_sec {
        b if b >= 1_000_000_000 => 1,
        b if b >= 100_000_000 => 3,
        b if b >= 10_000_000 => 9,
        b if b >= 1_000_000 => 15,
        _ => 19,
    }
}

/// A transfer's claim on bandwidth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The operation.
    pub op: u64,
    /// Bytes per second it may use.
    pub rate_bps: u64,
}

/// What [`BandwidthManager::allocate`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Start now at this rate.
    Granted(Grant),
    /// The budget is spent: wait for a release.
    Queued,
}

#[derive(Clone, Debug)]
struct Active {
    peer: String,
    rate: u64,
}

#[derive(Clone, Debug)]
struct Waiting {
    op: u64,
    peer: String,
    want: u64,
}

/// Shares a global budget and a per-peer budget among operations; when
/// either is spent, operations wait in priority order (higher first, then
/// first come).
#[derive(Debug)]
pub struct BandwidthManager {
    global_bps: u64,
    per_peer_bps: u64,
    min_rate_bps: u64,
    active: HashMap<u64, Active>,
    queue: BTreeMap<(std::cmp::Reverse<u8>, u64), Waiting>,
    seq: u64,
}

impl BandwidthManager {
    /// A manager for `global_bps` in all, at most `per_peer_bps` to any one
    /// peer, never granting less than `min_rate_bps` (below that, queue).
    pub fn new(global_bps: u64, per_peer_bps: u64, min_rate_bps: u64) -> Self {
        BandwidthManager {
            global_bps,
            per_peer_bps,
            min_rate_bps: min_rate_bps.max(1),
            active: HashMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
        }
    }

    fn used(&self) -> u64 {
        self.active.values().map(|a| a.rate).sum()
    }

    fn used_by(&self, peer: &str) -> u64 {
        self.active.values().filter(|a| a.peer == peer).map(|a| a.rate).sum()
    }

    fn grantable(&self, peer: &str, want: u64) -> u64 {
        let global = self.global_bps.saturating_sub(self.used());
        let peer_left = self.per_peer_bps.saturating_sub(self.used_by(peer));
        want.min(global).min(peer_left)
    }

    /// Asks for up to `want_bps` for operation `op` to `peer` at `priority`.
    pub fn allocate(&mut self, op: u64, peer: &str, priority: u8, want_bps: u64) -> Allocation {
        let rate = self.grantable(peer, want_bps);
        let outranked = self.queue.keys().next().is_some_and(|(p, _)| p.0 > priority);
        if rate >= self.min_rate_bps.min(want_bps) && rate > 0 && !outranked {
            self.active.insert(op, Active { peer: peer.to_string(), rate });
            return Allocation::Granted(Grant { op, rate_bps: rate });
        }
        self.seq += 1;
        self.queue.insert((std::cmp::Reverse(priority), self.seq), Waiting { op, peer: peer.to_string(), want: want_bps });
        Allocation::Queued
    }

    /// Ends operation `op` (running or queued) and returns the queued
    /// operations that can start now, highest priority first.
    pub fn release(&mut self, op: u64) -> Vec<Grant> {
        self.active.remove(&op);
        self.queue.retain(|_, w| w.op != op);
        let mut started = Vec::new();
        let keys: Vec<_> = self.queue.keys().copied().collect();
        for k in keys {
            let (peer, want, id) = {
                let w = &self.queue[&k];
                (w.peer.clone(), w.want, w.op)
            };
            let rate = self.grantable(&peer, want);
            if rate >= self.min_rate_bps.min(want) && rate > 0 {
                self.queue.remove(&k);
                self.active.insert(id, Active { peer, rate });
                started.push(Grant { op: id, rate_bps: rate });
            }
        }
        started
    }

    /// Operations waiting for budget.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_its_rate() {
        let mut b = TokenBucket::new(1000, 1000, 0);
        assert_eq!(b.take(1000, 0), 0);
        assert_eq!(b.take(500, 0), 500);
        // By t=1500 ms the debt of 500 bytes is repaid and 1000 more accrued (capped at burst).
        assert_eq!(b.take(1000, 1500), 0);
    }

    #[test]
    fn budgets_are_shared_and_queued_by_priority() {
        let mut m = BandwidthManager::new(10_000, 6_000, 1_000);
        assert_eq!(m.allocate(1, "a", 1, 6_000), Allocation::Granted(Grant { op: 1, rate_bps: 6_000 }));
        // Peer "a" has no budget left.
        assert_eq!(m.allocate(2, "a", 1, 6_000), Allocation::Queued);
        assert_eq!(m.allocate(3, "b", 1, 6_000), Allocation::Granted(Grant { op: 3, rate_bps: 4_000 }));
        assert_eq!(m.allocate(4, "c", 1, 1_000), Allocation::Queued);
        assert_eq!(m.allocate(5, "c", 9, 1_000), Allocation::Queued);
        assert_eq!(m.queued(), 3);
        // Releasing "b" frees 4000: the urgent op 5 goes first, then op 2's peer "a" is still full, op 4 fits.
        let started = m.release(3);
        assert_eq!(started, vec![Grant { op: 5, rate_bps: 1_000 }, Grant { op: 4, rate_bps: 1_000 }]);
        let started = m.release(1);
        assert_eq!(started, vec![Grant { op: 2, rate_bps: 6_000 }]);
    }

    #[test]
    fn slower_links_compress_harder() {
        assert!(level_for_link(1_000_000_000) < level_for_link(10_000_000));
        assert_eq!(level_for_link(100_000), 19);
    }
}
