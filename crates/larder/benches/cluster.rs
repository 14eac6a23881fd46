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
//! Write-back: `Cache::put` acknowledgements per second from 32 tasks, on
//! the cluster (each acknowledgement waits for its master's replica,
//! `WAIT`) against a standalone Redis of its own with `appendfsync
//! always`. And the hit latency on the cluster while 32 tasks write back
//! and every replica is stopped (SIGSTOP), so each write's `WAIT` runs to
//! its timeout: hits must not queue behind them (`hit_while_writes_wait`
//! against `hit/cluster`; `LARDER_BENCH_WRITERS=0` runs it without the
//! writers, to tell their cost from the stopped replicas').
//!
//! Run: `cargo bench -p larder --bench cluster`; the figures are the ratios
//! `cluster/N` ÷ `standalone/N` of each group.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use larder::{store, Cache, FnSource, WriteBackOptions, WritePolicy};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{run, user, User, KEYS};
use larder_test_support::{
    redis_url, unique, Keyed, RedisCluster, RedisServer, Table, TableSource,
};

impl Keyed for User {
    fn key(&self) -> u64 {
        self.id
    }
}

/// A write-back cache of users on `store`, flushing to an in-process table.
async fn write_back_cache(store: Arc<dyn store::Store>) -> Cache<u64, User> {
    Cache::builder()
        .prefix(unique("bench_wb").as_str())
        .entity("users")
        .store(store)
        .source(TableSource(Table::with((0..KEYS).map(user))))
        .write_policy(WritePolicy::Back(WriteBackOptions::default()))
        .build()
        .await
        .expect("write-back cache")
}

/// Keys read per `get_many`.
const BATCH: u64 = 100;

async fn connect(url: &str) -> Arc<dyn store::Store> {
    store::connect_checked(url).await.expect("store")
}

async fn cache(store: Arc<dyn store::Store>) -> Cache<u64, User> {
    let cache = Cache::builder()
        .prefix(unique("bench_cl").as_str())
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
    // One store per server: the write-back cache below shares the
    // cluster's, as an application's entities would.
    let cluster_store = rt.block_on(connect(&cluster.url()));
    let stores = [
        (
            "standalone",
            rt.block_on(cache(rt.block_on(connect(&redis_url())))),
        ),
        ("cluster", rt.block_on(cache(cluster_store.clone()))),
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

    let durable = RedisServer::durable();
    let writers = [
        (
            "standalone_aof_always",
            rt.block_on(write_back_cache(rt.block_on(connect(&durable.url())))),
        ),
        ("cluster_wait", rt.block_on(write_back_cache(cluster_store))),
    ];
    let mut group = c.benchmark_group("write_back_put");
    group.measurement_time(Duration::from_secs(5));
    for (name, cache) in &writers {
        let cache = cache.clone();
        group.bench_with_input(BenchmarkId::new(*name, 32), &32u64, |b, &tasks| {
            b.to_async(&rt).iter_custom(|iters| {
                let cache = cache.clone();
                run(iters, tasks, move |i| {
                    let cache = cache.clone();
                    async move {
                        let put = cache.put(&(i % KEYS), &user(i % KEYS)).await;
                        assert!(put.expect("put").cache.is_queued());
                    }
                })
            })
        });
    }
    group.finish();

    // Hits while every write's WAIT runs to its timeout.
    let replicas: Vec<&RedisServer> = (0..cluster.nodes().len())
        .filter(|&i| !cluster.is_master(i))
        .map(|i| &cluster.nodes()[i])
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    for r in &replicas {
        r.pause();
    }
    // `LARDER_BENCH_WRITERS=0` measures the stopped replicas alone.
    let writers_n: u64 = std::env::var("LARDER_BENCH_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let background: Vec<_> = (0..writers_n)
        .map(|t| {
            let (cache, stop) = (writers[1].1.clone(), stop.clone());
            rt.spawn(async move {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let _ = cache.put(&(i % KEYS), &user(i % KEYS)).await;
                    i += 32;
                }
            })
        })
        .collect();
    let mut group = c.benchmark_group("hit_while_writes_wait");
    group.measurement_time(Duration::from_secs(5));
    let cache = stores[1].1.clone();
    group.bench_function("cluster", |b| {
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
    group.finish();
    stop.store(true, Ordering::Relaxed);
    for r in &replicas {
        r.resume();
    }
    for task in background {
        let _ = rt.block_on(task);
    }
    drop(writers);
    drop(stores);
    drop(cluster);
}

criterion_group!(benches, cluster_vs_standalone);
criterion_main!(benches);
