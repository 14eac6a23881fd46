//! A hot key expires under 200 concurrent callers: how many source loads,
//! and how long do the callers wait, compared with the load itself?
//!
//! Four `Cache` instances, each with its own Redis connection and its own
//! single flight (as four processes would have), 50 callers each, a source
//! that takes 100 ms. In the same run: naive cache-aside (GET, load on miss,
//! SET), larder on a miss, and larder with a stale value present
//! (stale-while-revalidate). Needs Redis on 127.0.0.1:6379
//! (`LARDER_TEST_REDIS_URL`).
//!
//! Run: `cargo bench -p larder --bench stampede`.

#![allow(missing_docs)]

use larder::{Cache, FnSource, ManualClock, Outcome};
use larder_test_support::redis_url;
use redis::AsyncCommands;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INSTANCES: usize = 4;
const CALLERS: usize = 50;
const EXPIRIES: usize = 20;
const LOAD: Duration = Duration::from_millis(100);

struct Figures {
    loads_per_expiry: f64,
    latencies: Vec<Duration>,
}

impl Figures {
    fn pct(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }

    fn print(&mut self, name: &str) {
        self.latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{name:<28} loads/expiry {:>6.2}   p50 {:>7.2} ms   p99 {:>7.2} ms   p99 - load {:>+7.2} ms",
            self.loads_per_expiry,
            ms(self.pct(0.5)),
            ms(self.pct(0.99)),
            ms(self.pct(0.99)) - ms(LOAD),
        );
    }
}

async fn instances(
    prefix: &str,
    loads: Arc<AtomicUsize>,
    clock: &ManualClock,
) -> Vec<Cache<u64, String>> {
    let mut out = Vec::new();
    for _ in 0..INSTANCES {
        let loads = loads.clone();
        let store = larder_test_support::redis_store().await;
        out.push(
            Cache::<u64, String>::builder()
                .prefix(prefix)
                .entity("hot")
                .store(store)
                .clock(clock.clone())
                .ttl(Duration::from_secs(60))
                .jitter(0.0)
                .stale(Duration::from_secs(60))
                .early_refresh(0.0)
                .source(FnSource::new("hot", move |id: String| {
                    let loads = loads.clone();
                    async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(LOAD).await;
                        Ok::<_, Infallible>(Some(format!("value {id}")))
                    }
                }))
                .build()
                .await
                .expect("cache"),
        );
    }
    out
}

/// Starts every caller at once; returns each caller's latency.
async fn burst<F, Fut>(call: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(INSTANCES * CALLERS));
    let tasks: Vec<_> = (0..INSTANCES * CALLERS)
        .map(|i| {
            let start = start.clone();
            let work = call(i);
            tokio::spawn(async move {
                start.wait().await;
                let t = Instant::now();
                work.await;
                t.elapsed()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("caller"));
    }
    out
}

async fn naive(prefix: &str) -> Figures {
    let loads = Arc::new(AtomicUsize::new(0));
    let client = redis::Client::open(redis_url()).expect("url");
    let mut conns = Vec::new();
    for _ in 0..INSTANCES {
        conns.push(
            client
                .get_multiplexed_async_connection()
                .await
                .expect("redis"),
        );
    }
    let key = format!("{prefix}:naive");
    let mut latencies = Vec::new();
    for _ in 0..EXPIRIES {
        let _: () = conns[0].del(&key).await.expect("expire");
        latencies.extend(
            burst(|i| {
                let (mut conn, key, loads) =
                    (conns[i % INSTANCES].clone(), key.clone(), loads.clone());
                async move {
                    let hit: Option<String> = conn.get(&key).await.expect("get");
                    if hit.is_none() {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(LOAD).await;
                        let _: () = conn.set_ex(&key, "value", 60).await.expect("set");
                    }
                }
            })
            .await,
        );
    }
    let _: () = conns[0].del(&key).await.expect("cleanup");
    Figures {
        loads_per_expiry: loads.load(Ordering::SeqCst) as f64 / EXPIRIES as f64,
        latencies,
    }
}

async fn larder_miss(prefix: &str) -> Figures {
    let loads = Arc::new(AtomicUsize::new(0));
    let clock = ManualClock::new();
    let caches = instances(prefix, loads.clone(), &clock).await;
    let mut latencies = Vec::new();
    for _ in 0..EXPIRIES {
        caches[0].invalidate(&1).await.expect("expire");
        latencies.extend(
            burst(|i| {
                let cache = caches[i % INSTANCES].clone();
                async move {
                    let got = cache.get(&1).await.expect("get");
                    assert!(got.value.is_some());
                }
            })
            .await,
        );
    }
    Figures {
        loads_per_expiry: loads.load(Ordering::SeqCst) as f64 / EXPIRIES as f64,
        latencies,
    }
}

async fn larder_stale(prefix: &str) -> Figures {
    let loads = Arc::new(AtomicUsize::new(0));
    let clock = ManualClock::new();
    let caches = instances(prefix, loads.clone(), &clock).await;
    caches[0].get(&1).await.expect("first fill");
    let mut latencies = Vec::new();
    for _ in 0..EXPIRIES {
        clock.advance(Duration::from_secs(61)); // past ttl, inside the stale window
        latencies.extend(
            burst(|i| {
                let cache = caches[i % INSTANCES].clone();
                async move {
                    let got = cache.get(&1).await.expect("get");
                    assert!(matches!(got.outcome, Outcome::Stale | Outcome::Hit));
                }
            })
            .await,
        );
        // Wait for the background refresh to land before the next expiry.
        // Wait for the background refresh to land before the next expiry.
        while caches[0].get(&1).await.expect("get").outcome != Outcome::Hit {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Figures {
        loads_per_expiry: loads.load(Ordering::SeqCst) as f64 / EXPIRIES as f64,
        latencies,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` asks benches to list or smoke-test themselves
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let prefix = format!("bench-stampede-{}", std::process::id());
    rt.block_on(async {
        println!(
            "hot-key expiry: {INSTANCES} instances x {CALLERS} callers, load {} ms, {EXPIRIES} expiries",
            LOAD.as_millis()
        );
        naive(&prefix).await.print("naive cache-aside");
        larder_miss(&prefix).await.print("larder, miss");
        larder_stale(&prefix).await.print("larder, stale present (SWR)");
    });
}
