//! The near cache (L1): what it saves, how fast it learns, how well it picks.
//!
//! In one run, against the Redis on 127.0.0.1:6379 (`LARDER_TEST_REDIS_URL`):
//! 1. **hit latency/throughput** (criterion): `Cache::get` answered by L1
//!    vs answered by Redis (the same cache without a near cache), from 1
//!    and from 64 concurrent tasks;
//! 2. **invalidation propagation** (printed): A invalidates a key that B
//!    holds in L1; the time until B has applied the message, p50/p99 over
//!    2,000 invalidations;
//! 3. **hit ratio** (printed): larder's near cache (moka's TinyLFU behind
//!    `Cache::get`) vs a plain LRU and a static top-k admission of the same
//!    capacity (10,000) on a Zipf(1.0) trace of 1,000,000 reads over 100,000
//!    keys (seeded, so every run replays the same trace), from cold.
//!
//! Run: `cargo bench -p larder --bench near`.

#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput};
use larder::{store, Cache, FnSource, NearOptions, Outcome};
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::{Duration, Instant};

mod common;

use common::{run, user, User, Zipf, KEYS};

async fn cache(prefix: &str, near: Option<NearOptions>) -> Cache<u64, User> {
    let store = larder_test_support::redis_store().await;
    let mut builder = Cache::<u64, User>::builder()
        .prefix(prefix)
        .entity("users")
        .store(store)
        .ttl(Duration::from_secs(3600))
        .early_refresh(0.0)
        .source(FnSource::new("users", |id: String| async move {
            Ok::<_, Infallible>(Some(user(id.parse().unwrap_or_default())))
        }));
    if let Some(near) = near {
        builder = builder.near(near);
    }
    let cache = builder.build().await.expect("cache");
    for id in 0..KEYS {
        cache.get(&id).await.expect("warm");
    }
    cache
}

fn near_options() -> NearOptions {
    NearOptions {
        capacity: 100_000,
        ttl: Duration::from_secs(3600),
    }
}

fn hits(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let prefix = format!("bench-near-{}", std::process::id());
    let l1 = rt.block_on(cache(&prefix, Some(near_options())));
    let l2 = rt.block_on(cache(&prefix, None));
    // The near cache is filled by the hits that follow the warm-up misses.
    rt.block_on(async {
        for id in 0..KEYS {
            l1.get(&id).await.expect("get");
        }
    });
    let mut group = c.benchmark_group("near_hit");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for tasks in [1u64, 64] {
        for (name, cache, want) in [("l1", &l1, Outcome::L1), ("l2_redis", &l2, Outcome::Hit)] {
            let cache = cache.clone();
            group.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
                b.to_async(rt).iter_custom(|iters| {
                    let cache = cache.clone();
                    run(iters, tasks, move |i| {
                        let cache = cache.clone();
                        async move {
                            let got = cache.get(&i).await.expect("get");
                            assert_eq!(got.outcome, want);
                        }
                    })
                })
            });
        }
    }
    group.finish();
}

/// A invalidates a key B holds in L1; how long until B applied it.
fn propagation(rt: &tokio::runtime::Runtime) {
    const SAMPLES: usize = 2000;
    let prefix = format!("bench-prop-{}", std::process::id());
    let (a, b) = rt.block_on(async {
        (
            cache(&prefix, Some(near_options())).await,
            cache(&prefix, Some(near_options())).await,
        )
    });
    let mut took = rt.block_on(async {
        let mut took = Vec::with_capacity(SAMPLES);
        for i in 0..SAMPLES as u64 {
            let id = i % KEYS;
            // B holds the key in L1.
            while b.get(&id).await.expect("get").outcome != Outcome::L1 {}
            let heard = b.stats().near.invalidations_received;
            let start = Instant::now();
            a.invalidate(&id).await.expect("invalidate");
            while b.stats().near.invalidations_received == heard {
                tokio::task::yield_now().await;
            }
            took.push(start.elapsed());
        }
        took
    });
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    println!(
        "invalidation propagation A -> B's L1 ({SAMPLES} samples, includes A's DEL + PUBLISH): p50 {:?}, p99 {:?}, max {:?}",
        at(0.50),
        at(0.99),
        took[took.len() - 1]
    );
}

/// A plain LRU: a map to the last-use tick, and ticks in order.
struct Lru {
    capacity: usize,
    tick: u64,
    by_key: HashMap<u64, u64>,
    by_tick: BTreeMap<u64, u64>,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tick: 0,
            by_key: HashMap::with_capacity(capacity),
            by_tick: BTreeMap::new(),
        }
    }

    /// Reads `key`: whether it was there; inserted (evicting the least recently used) if not.
    fn read(&mut self, key: u64) -> bool {
        self.tick += 1;
        let hit = match self.by_key.insert(key, self.tick) {
            Some(old) => {
                self.by_tick.remove(&old);
                true
            }
            None => false,
        };
        self.by_tick.insert(self.tick, key);
        if self.by_key.len() > self.capacity {
            if let Some((_, victim)) = self.by_tick.pop_first() {
                self.by_key.remove(&victim);
            }
        }
        hit
    }
}

/// Hit ratios on one seeded trace: Zipf(1.0) over 100,000 keys, 10,000
/// entries, read from cold. Reported over the first 100,000 reads (cold)
/// and over 1,000,000 reads, for larder's near cache (reads through
/// `Cache::get`, counted by outcome `l1`; the store behind it starts empty),
/// a plain LRU, and a static top-10,000 admission (perfect knowledge of
/// popularity: the 10,000 most popular keys are cached at their first
/// read, no other key ever is).
fn hit_ratio(rt: &tokio::runtime::Runtime) {
    const READS: usize = 1_000_000;
    const COLD: usize = 100_000;
    const KEYSPACE: usize = 100_000;
    const CAPACITY: usize = 10_000;
    let zipf = Zipf::new(KEYSPACE, 1.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let trace: Vec<u64> = (0..READS).map(|_| zipf.sample(&mut rng)).collect();
    // Hits among the first `COLD` reads and among all of them.
    let ratios = |hit: &[bool]| {
        let cold = hit[..COLD].iter().filter(|&&h| h).count() as f64 / COLD as f64;
        let all = hit.iter().filter(|&&h| h).count() as f64 / READS as f64;
        (cold, all)
    };

    let mut lru = Lru::new(CAPACITY);
    let lru_hit: Vec<bool> = trace.iter().map(|&k| lru.read(k)).collect();

    // Keys are ranks: the most popular 10,000 are 0..10,000.
    let mut seen = vec![false; CAPACITY];
    let static_hit: Vec<bool> = trace
        .iter()
        .map(|&k| {
            let Some(seen) = seen.get_mut(k as usize) else {
                return false;
            };
            std::mem::replace(seen, true)
        })
        .collect();

    let larder_hit: Vec<bool> = rt.block_on(async {
        let store = store::connect("memory://").await.expect("memory store");
        let cache = Cache::<u64, User>::builder()
            .entity("users")
            .store(store)
            .ttl(Duration::from_secs(3600))
            .early_refresh(0.0)
            .near(NearOptions {
                capacity: CAPACITY as u64,
                ttl: Duration::from_secs(3600),
            })
            .source(FnSource::new("users", |id: String| async move {
                Ok::<_, Infallible>(Some(user(id.parse().unwrap_or_default())))
            }))
            .build()
            .await
            .expect("cache");
        let mut hit = Vec::with_capacity(READS);
        for &k in &trace {
            hit.push(cache.get(&k).await.expect("get").outcome == Outcome::L1);
        }
        hit
    });

    println!(
        "hit ratio, Zipf(1.0), {KEYSPACE} keys, {CAPACITY} entries, from cold (first {COLD} reads / all {READS}):"
    );
    for (name, hit) in [
        ("larder near cache (moka TinyLFU)", &larder_hit),
        ("LRU", &lru_hit),
        ("static top-10,000", &static_hit),
    ] {
        let (cold, all) = ratios(hit);
        println!("  {name:<34} {cold:.3} / {all:.3}");
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    hit_ratio(&rt);
    propagation(&rt);
    let mut c = Criterion::default().configure_from_args();
    hits(&mut c, &rt);
    c.final_summary();
}
