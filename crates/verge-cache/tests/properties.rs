//! Property tests: for every policy, random operation sequences never
//! exceed the entry or byte budget, never return an expired entry or a
//! stale value, and an entry the cache accepted is readable right away.

use proptest::prelude::*;
use std::collections::HashMap;
use verge_cache::{Cache, CacheConfig, EntryOptions, FixedState, PolicyKind};

#[derive(Clone, Debug)]
enum Op {
    Get(u8),
    Insert { key: u8, bytes: u16, ttl: Option<u8> },
    Remove(u8),
    Advance(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(|k| Op::Get(k % 64)),
        4 => (any::<u8>(), 1..400u16, proptest::option::of(0..50u8)).prop_map(|(k, bytes, ttl)| Op::Insert { key: k % 64, bytes, ttl }),
        1 => any::<u8>().prop_map(|k| Op::Remove(k % 64)),
        1 => any::<u8>().prop_map(|d| Op::Advance(d % 20)),
    ]
}

fn policy() -> impl Strategy<Value = PolicyKind> {
    proptest::sample::select(PolicyKind::ALL.to_vec())
}

proptest! {
    // A fixed seed keeps runs reproducible; PROPTEST_CASES raises the count for soak runs.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed),
        ..ProptestConfig::default()
    })]

    #[test]
    fn budgets_ttl_and_freshness_hold(
        kind in policy(),
        max_entries in 1..24usize,
        max_bytes in proptest::option::of(400..2000u64),
        ops in proptest::collection::vec(op(), 1..400),
    ) {
        let config = CacheConfig { max_entries, max_bytes, policy: kind };
        let mut cache: Cache<u8, (u8, u32), FixedState> = Cache::with_seed(config, 1).expect("valid config");
        // Latest version written per key and when it expires.
        let mut model: HashMap<u8, (u32, u64)> = HashMap::new();
        let mut now = 0u64;
        let mut version = 0u32;
        for op in ops {
            match op {
                Op::Get(k) => {
                    if let Some(&(key, v)) = cache.get(&k, now) {
                        prop_assert_eq!(key, k);
                        let (latest, expires) = model[&k];
                        prop_assert_eq!(v, latest, "stale value for {}", k);
                        prop_assert!(now < expires, "expired entry {} returned at {} (expires {})", k, now, expires);
                    }
                }
                Op::Insert { key, bytes, ttl } => {
                    version += 1;
                    let options = EntryOptions { bytes: u64::from(bytes), ttl: ttl.map(u64::from), cost: 1 };
                    let mut evicted = Vec::new();
                    let kept = cache.insert_with(key, (key, version), options, now, |k, _| evicted.push(k)).expect("fits the budget");
                    let expires = ttl.map_or(u64::MAX, |t| now + u64::from(t));
                    model.insert(key, (version, expires));
                    prop_assert_eq!(kept, !evicted.contains(&key));
                    if kept && expires > now {
                        prop_assert_eq!(cache.peek(&key, now), Some(&(key, version)));
                    }
                }
                Op::Remove(k) => {
                    cache.remove(&k);
                    prop_assert!(cache.peek(&k, now).is_none());
                }
                Op::Advance(d) => now += u64::from(d),
            }
            prop_assert!(cache.len() <= max_entries, "{} entries > {}", cache.len(), max_entries);
            if let Some(max) = max_bytes {
                prop_assert!(cache.bytes() <= max, "{} bytes > {}", cache.bytes(), max);
            }
            prop_assert!(cache.expiring() <= cache.len());
        }
        // Every count returns to zero once every key is gone.
        for k in 0..=u8::MAX {
            cache.remove(&k);
        }
        prop_assert_eq!((cache.len(), cache.bytes(), cache.expiring()), (0, 0, 0));
    }

    #[test]
    fn entry_count_budget_holds_on_long_skewed_traces(
        kind in policy(),
        max_entries in 1..200usize,
        keys in proptest::collection::vec(0..1000u32, 1..3000),
    ) {
        let mut cache: Cache<u32, u32, FixedState> = Cache::with_seed(CacheConfig { max_entries, max_bytes: None, policy: kind }, 2).expect("valid config");
        for k in keys {
            // Skew: small keys are much more popular.
            let k = k * k / 1000;
            if cache.get(&k, 0).is_none() {
                cache.insert(k, k, 0).expect("unit entries fit");
                prop_assert_eq!(cache.get(&k, 0).copied().unwrap_or(k), k);
            }
            prop_assert!(cache.len() <= max_entries);
        }
    }
}
