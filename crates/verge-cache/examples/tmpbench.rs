// TEMPORARY measurement helper (delete before finishing).
use std::time::Instant;
use verge_cache::{Cache, CacheConfig, FixedState, PolicyKind, SyncCache};
const SEED: u64 = 0x7665_7267_6521;
fn load(name: &str) -> Vec<u64> {
    let b = std::fs::read(format!("/tmp/tr/{name}.u64")).unwrap();
    b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
}
fn replay(kind: PolicyKind, cap: usize, keys: &[u64]) -> (u64, f64) {
    let mut c = Cache::with_seed(CacheConfig { max_entries: cap, max_bytes: None, policy: kind }, SEED).unwrap();
    let t = Instant::now();
    let mut hits = 0;
    for &k in keys {
        if c.get(&k, 0).is_some() { hits += 1 } else { c.insert(k, k, 0).unwrap(); }
    }
    (hits, keys.len() as f64 / t.elapsed().as_secs_f64() / 1e6)
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args[1].as_str() {
        "grid" => {
            let pols: Vec<PolicyKind> = args[2].split(',').map(|p| p.parse().unwrap()).collect();
            for spec in &args[3..] {
                let (t, caps) = spec.split_once(':').unwrap();
                let keys = load(t);
                for cap in caps.split(',') {
                    let cap: usize = cap.parse().unwrap();
                    for &p in &pols {
                        let (h, _) = replay(p, cap, &keys);
                        println!("{t} {cap} {p} {:.4}", 100.0 * h as f64 / keys.len() as f64);
                    }
                }
            }
        }
        "tput" => {
            let keys = load("cloudphysics_w106");
            let cap = 27500;
            let pols: Vec<PolicyKind> = args[2].split(',').map(|p| p.parse().unwrap()).collect();
            let unique = { let mut s = std::collections::HashSet::new(); keys.iter().filter(|k| s.insert(**k)).count() };
            for &p in &pols {
                let best = (0..3).map(|_| replay(p, cap, &keys).1).fold(0.0, f64::max);
                println!("replay {p} {best:.1}");
            }
            let time = |f: &mut dyn FnMut(u64) -> bool| {
                (0..3).map(|_| { let t = Instant::now(); let mut n = 0u64; for &k in &keys { n += f(k) as u64; } assert!(n > 0); keys.len() as f64 / t.elapsed().as_secs_f64() / 1e6 }).fold(0.0, f64::max)
            };
            let mut map: std::collections::HashMap<u64, u64, FixedState> = std::collections::HashMap::with_capacity_and_hasher(unique, FixedState::with_seed(SEED));
            for &k in &keys { map.insert(k, k); }
            let base = time(&mut |k| map.contains_key(&k));
            println!("hit hashmap {base:.1}");
            for &p in &pols {
                let mut c = Cache::with_seed(CacheConfig { max_entries: unique, max_bytes: None, policy: p }, SEED).unwrap();
                for &k in &keys { c.insert(k, k, 0).unwrap(); }
                let m = time(&mut |k| c.get(&k, 0).is_some());
                println!("hit {p} {m:.1} ({:.0} %)", 100.0 * m / base);
            }
            for &p in &pols {
                let sc: SyncCache<u64, u64> = SyncCache::new(CacheConfig { max_entries: cap, max_bytes: None, policy: p }, 8).unwrap();
                let best = (0..3).map(|_| {
                    let t = Instant::now();
                    std::thread::scope(|s| for off in [0, keys.len() / 2] { let (sc, keys) = (&sc, &keys); s.spawn(move || for &k in keys[off..].iter().chain(&keys[..off]) { if sc.get(&k, 0).is_none() { sc.insert(k, k, 0).unwrap(); } }); });
                    2.0 * keys.len() as f64 / t.elapsed().as_secs_f64() / 1e6
                }).fold(0.0, f64::max);
                println!("sync {p} {best:.1}");
            }
        }
        _ => panic!(),
    }
}
