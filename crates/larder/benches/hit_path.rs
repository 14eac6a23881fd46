//! The hit path: what a cache hit costs next to a raw Redis GET.
//!
//! In the same run: raw redis-rs `GET` of an encoded value (the floor),
//! `Cache::get` on a Redis hit (GET + envelope + JSON decode), and
//! `Cache::get` on a `memory://` hit; each sequentially and from 64
//! concurrent tasks. Needs Redis on 127.0.0.1:6379 (`LARDER_TEST_REDIS_URL`).
//!
//! Run: `cargo bench -p larder --bench hit_path`; the figure that says what
//! a hit costs is the ratio of `larder_redis_hit/64` to `raw_get/64`
//! throughput.
//! With `LARDER_BENCH_RECORDER=1` a metrics recorder (metrics-util's, on
//! the same atomic storage as the Prometheus exporter) is installed before
//! the caches are built: the hit path's cost with metrics recorded.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use larder::{store, Cache, FnSource};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{run, user, User, KEYS};
use larder_test_support::redis_url;

async fn cache(store_url: &str) -> Cache<u64, User> {
    let store = store::connect_checked(store_url).await.expect("store");
    let cache = Cache::<u64, User>::builder()
        .prefix("bench")
        .entity("users")
        .store(store)
        .ttl(Duration::from_secs(3600))
        .early_refresh(0.0)
        .source(FnSource::new("users", |id: String| async move {
            Ok::<_, Infallible>(Some(user(id.parse().unwrap_or_default())))
        }))
        .build()
        .await
        .expect("cache");
    for id in 0..KEYS {
        cache.get(&id).await.expect("warm");
    }
    cache
}

fn hit_path(c: &mut Criterion) {
    if std::env::var("LARDER_BENCH_RECORDER").is_ok_and(|v| v == "1") {
        metrics_util::debugging::DebuggingRecorder::new()
            .install()
            .expect("the only recorder");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis_cache = rt.block_on(cache(&redis_url()));
    let memory_cache = rt.block_on(cache("memory://"));
    let conn = rt.block_on(async {
        redis::Client::open(redis_url())
            .expect("url")
            .get_connection_manager()
            .await
            .expect("redis")
    });
    // The raw baseline reads the very keys the cache wrote: same value sizes.
    let shards = 64;
    let raw_keys: Arc<Vec<String>> = Arc::new(
        (0..KEYS)
            .map(|id| {
                let shard = xxhash_rust::xxh3::xxh3_64(id.to_string().as_bytes()) % shards;
                format!("bench:{{users:{shard}}}:v:{id}")
            })
            .collect(),
    );

    let mut group = c.benchmark_group("hit_path");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for tasks in [1u64, 64] {
        let (conn, keys) = (conn.clone(), raw_keys.clone());
        group.bench_with_input(BenchmarkId::new("raw_get", tasks), &tasks, |b, &tasks| {
            b.to_async(&rt).iter_custom(|iters| {
                let (conn, keys) = (conn.clone(), keys.clone());
                run(iters, tasks, move |i| {
                    let mut conn = conn.clone();
                    let key = keys[i as usize].clone();
                    async move {
                        let v: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(key)
                            .query_async(&mut conn)
                            .await
                            .expect("get");
                        assert!(v.is_some());
                    }
                })
            })
        });
        for (name, cache) in [
            ("larder_redis_hit", &redis_cache),
            ("larder_memory_hit", &memory_cache),
        ] {
            let cache = cache.clone();
            group.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
                b.to_async(&rt).iter_custom(|iters| {
                    let cache = cache.clone();
                    run(iters, tasks, move |i| {
                        let cache = cache.clone();
                        async move {
                            let got = cache.get(&i).await.expect("get");
                            assert!(got.outcome.is_hit());
                        }
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
