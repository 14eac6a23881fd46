//! Multi-get: what `Cache::get_many` of 100 cached keys costs next to the
//! floor, a raw redis-rs `MGET` of 100 keys followed by `serde_json`
//! decoding of each value — so the ratio measures larder's own overhead
//! (keys, envelopes, outcomes, counters), not JSON's.
//!
//! In the same run, from 1 and from 32 concurrent tasks: the raw `MGET` of
//! copies of the rows as plain JSON (the same bytes larder's envelopes
//! carry after their header), and `get_many` on Redis hits (the Json
//! codec, a ~256-byte row). Needs Redis on 127.0.0.1:6379
//! (`LARDER_TEST_REDIS_URL`).
//!
//! Run: `cargo bench -p larder --bench get_many`; the figure is the ratio
//! of `larder_get_many/N` to `raw_mget_decode/N` throughput (keys/s).

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use larder::{store, Cache, FnSource};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::run;
use larder_test_support::profiles::{profile, Profile};
use larder_test_support::{redis_url, unique};

/// Keys read per call.
const BATCH: u64 = 100;
/// Keys cached (batches start at multiples of `BATCH` below this).
const KEYS: u64 = 1_000;

fn get_many(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let prefix = unique("bench_gm");
    let cache: Cache<u64, Profile> = rt.block_on(async {
        let cache = Cache::builder()
            .prefix(prefix.as_str())
            .entity("profiles")
            .store(store::connect_checked(&redis_url()).await.expect("store"))
            .ttl(Duration::from_secs(3600))
            .early_refresh(0.0)
            .source(FnSource::new("profiles", |id: String| async move {
                Ok::<_, Infallible>(Some(profile(id.parse().unwrap_or_default())))
            }))
            .build()
            .await
            .expect("cache");
        let ids: Vec<u64> = (0..KEYS).collect();
        let refs: Vec<&u64> = ids.iter().collect();
        cache.get_many(&refs).await.expect("warm");
        cache
    });
    let conn = rt.block_on(async {
        redis::Client::open(redis_url())
            .expect("url")
            .get_connection_manager()
            .await
            .expect("redis")
    });
    // The raw side's rows: plain JSON under keys of its own.
    let raw_keys: Arc<Vec<Vec<String>>> = Arc::new(
        (0..KEYS / BATCH)
            .map(|b| {
                (b * BATCH..(b + 1) * BATCH)
                    .map(|id| format!("{prefix}:raw:{id}"))
                    .collect()
            })
            .collect(),
    );
    rt.block_on(async {
        let mut conn = conn.clone();
        for id in 0..KEYS {
            let json = serde_json::to_vec(&profile(id)).expect("json");
            let _: () = redis::cmd("SET")
                .arg(format!("{prefix}:raw:{id}"))
                .arg(json)
                .query_async(&mut conn)
                .await
                .expect("set");
        }
    });
    let batches: Arc<Vec<Vec<u64>>> = Arc::new(
        (0..KEYS / BATCH)
            .map(|b| (b * BATCH..(b + 1) * BATCH).collect())
            .collect(),
    );

    let mut group = c.benchmark_group("get_many");
    group.throughput(Throughput::Elements(BATCH));
    group.measurement_time(Duration::from_secs(5));
    for tasks in [1u64, 32] {
        let (raw_conn, keys) = (conn.clone(), raw_keys.clone());
        group.bench_with_input(
            BenchmarkId::new("raw_mget_decode", tasks),
            &tasks,
            |b, &tasks| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (conn, keys) = (raw_conn.clone(), keys.clone());
                    run(iters, tasks, move |i| {
                        let batch = i % (KEYS / BATCH);
                        let mut conn = conn.clone();
                        let keys = keys.clone();
                        async move {
                            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                                .arg(&keys[batch as usize])
                                .query_async(&mut conn)
                                .await
                                .expect("mget");
                            let rows: Vec<Profile> = values
                                .iter()
                                .map(|v| {
                                    serde_json::from_slice(v.as_deref().expect("cached"))
                                        .expect("json")
                                })
                                .collect();
                            assert_eq!(rows.len(), BATCH as usize);
                        }
                    })
                })
            },
        );
        let (cache, batches) = (cache.clone(), batches.clone());
        group.bench_with_input(
            BenchmarkId::new("larder_get_many", tasks),
            &tasks,
            |b, &tasks| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (cache, batches) = (cache.clone(), batches.clone());
                    run(iters, tasks, move |i| {
                        let batch = i % (KEYS / BATCH);
                        let (cache, batches) = (cache.clone(), batches.clone());
                        async move {
                            let ids: Vec<&u64> = batches[batch as usize].iter().collect();
                            let got = cache.get_many(&ids).await.expect("get_many");
                            assert!(got.iter().all(|l| l.outcome.is_hit()));
                        }
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, get_many);
criterion_main!(benches);
