//! Redis Cluster next to standalone Redis, same run, same machine:
//! `Cache::get_many` of 100 cached keys (keys/s, from 1 and from 32
//! concurrent tasks) and a single-key hit (`Cache::get`, one task: its
//! time is the hit latency).
//!
//! The cluster is the test support's own (3 masters + 3 replicas on
//! loopback, `appendfsync always`, which reads do not touch); standalone is
//! the shared Redis on 127.0.0.1:6379 (`LARDER_TEST_REDIS_URL`). 100 ids
//! over 64 shards fall into ~50 slots, so a cluster `get_many` is ~50
//! `MGET`s over 3 nodes, sent concurrently, against one `MGET`.
//!
//! Run: `cargo bench -p larder --bench cluster`; the figures are the ratios
//! `cluster/N` ÷ `standalone/N` of each group.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use larder::{store, Cache, FnSource};
use std::convert::Infallible;
use std::time::Duration;

mod common;

use common::{run, user, User, KEYS};
use larder_test_support::{redis_url, unique, RedisCluster};

/// Keys read per `get_many`.
const BATCH: u64 = 100;

async fn cache(url: &str) -> Cache<u64, User> {
    let cache = Cache::builder()
        .prefix(unique("bench_cl").as_str())
        .entity("users")
        .store(store::connect_checked(url).await.expect("store"))
        .ttl(Duration::from_secs(3600))
        .early_refresh(0.0)
        .source(FnSource::new("users", |id: String| async move {
            Ok::<_, Infallible>(Some(user(id.parse().unwrap_or_default())))
        }))
        .build()
        .await
        .expect("cache");
    let ids: Vec<u64> = (0..KEYS).collect();
    let refs: Vec<&u64> = ids.iter().collect();
    cache.get_many(&refs).await.expect("warm");
    cache
}

fn cluster_vs_standalone(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = RedisCluster::start();
    let stores = [
        ("standalone", rt.block_on(cache(&redis_url()))),
        ("cluster", rt.block_on(cache(&cluster.url()))),
    ];

    let mut group = c.benchmark_group("get_many_100");
    group.throughput(Throughput::Elements(BATCH));
    group.measurement_time(Duration::from_secs(5));
    for tasks in [1u64, 32] {
        for (name, cache) in &stores {
            let cache = cache.clone();
            group.bench_with_input(BenchmarkId::new(*name, tasks), &tasks, |b, &tasks| {
                b.to_async(&rt).iter_custom(|iters| {
                    let cache = cache.clone();
                    run(iters, tasks, move |i| {
                        let cache = cache.clone();
                        async move {
                            let start = (i % (KEYS / BATCH)) * BATCH;
                            let ids: Vec<u64> = (start..start + BATCH).collect();
                            let refs: Vec<&u64> = ids.iter().collect();
                            let got = cache.get_many(&refs).await.expect("get_many");
                            assert!(got.iter().all(|l| l.outcome.is_hit()));
                        }
                    })
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("hit");
    group.measurement_time(Duration::from_secs(5));
    for (name, cache) in &stores {
        let cache = cache.clone();
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let cache = cache.clone();
                run(iters, 1, move |i| {
                    let cache = cache.clone();
                    async move {
                        let got = cache.get(&i).await.expect("get");
                        assert!(got.outcome.is_hit());
                    }
                })
            })
        });
    }
    group.finish();
    drop(stores);
    drop(cluster);
}

criterion_group!(benches, cluster_vs_standalone);
criterion_main!(benches);
