//! The counters count what they claim: known traffic in, exact counts out,
//! both from `Cache::stats()` and from the `metrics` facade.
//!
//! A global recorder can be installed once per process, and the debugging
//! recorder's snapshot drains what it read: so this binary holds one test,
//! which installs the recorder before building any cache (handles are
//! resolved at build) and takes one snapshot at the end.

use larder_test_support as support;

use larder::store::{self, Store};
use larder::{
    Cache, FnSource, NearOptions, Outcome, SqlPool, SqlSource, WriteBackOptions, WritePolicy,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::accounts::{account, Account, Db};
use support::{unique, RedisServer};

/// (kind, name, sorted labels) → value.
type Series = HashMap<(MetricKind, String, Vec<(String, String)>), DebugValue>;

fn value<'a>(
    all: &'a Series,
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    all.get(&(kind, name.to_owned(), labels))
}

fn counter(all: &Series, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(all, MetricKind::Counter, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

fn samples(all: &Series, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match value(all, MetricKind::Histogram, name, labels) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|f| f.into_inner()).collect(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

fn gauge(all: &Series, name: &str, labels: &[(&str, &str)]) -> f64 {
    match value(all, MetricKind::Gauge, name, labels) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

/// A source of `id * 10` for ids below 5; "not found" from 5; an error for 666;
/// slow (400 ms) and found for ids from 900.
fn source(entity: &str) -> impl larder::Source<u64> {
    FnSource::new(entity, |id: String| {
        let n: u64 = id.parse().unwrap_or_default();
        let fut = async move {
            if n == 666 {
                return Err(std::io::Error::other("the database refused"));
            }
            if n >= 900 {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            Ok((!(5..900).contains(&n)).then_some(n * 10))
        };
        fut
    })
}

async fn cache(store: Arc<dyn Store>, prefix: &str, entity: &str) -> Cache<u64, u64> {
    Cache::<u64, u64>::builder()
        .prefix(prefix)
        .entity(entity)
        .store(store)
        .ttl(Duration::from_secs(300))
        .early_refresh(0.0)
        .wait_timeout(Duration::from_millis(60))
        .source(source(entity))
        .build()
        .await
        .expect("cache")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_metrics_count_known_traffic() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");

    let shared = support::redis_store().await;
    let prefix = unique("metrics");

    // Reads: 10 misses (5 found, 5 not found), 30 hits, 5 negatives, 1 load error.
    let reads = cache(shared.clone(), &prefix, "reads").await;
    for id in 0..10 {
        assert_eq!(reads.get(&id).await.expect("miss").outcome, Outcome::Miss);
    }
    for _ in 0..6 {
        for id in 0..5 {
            assert_eq!(reads.get(&id).await.expect("hit").outcome, Outcome::Hit);
        }
    }
    for id in 5..10 {
        assert_eq!(
            reads.get(&id).await.expect("neg").outcome,
            Outcome::Negative
        );
    }
    assert!(reads.get(&666).await.is_err(), "a failing load is an error");

    let s = reads.stats();
    assert_eq!(
        Outcome::ALL.map(|o| s.reads(o)),
        [0, 30, 0, 5, 10, 0],
        "l1 hit stale negative miss bypass"
    );
    assert_eq!((s.loads, s.load_errors, s.fills), (11, 1, 10));
    assert_eq!(s.hit_ratio(), 35.0 / 45.0);
    assert!(s.load_p50.is_some() && s.load_p99 >= s.load_p50, "{s:?}");

    // Bypass: a Redis of the test's own, killed.
    let mut own = RedisServer::start();
    let doomed = cache(
        store::connect(&own.url()).await.expect("store"),
        &prefix,
        "bypass",
    )
    .await;
    own.kill();
    for id in [1, 2] {
        assert_eq!(
            doomed.get(&id).await.expect("bypass").outcome,
            Outcome::Bypass
        );
    }
    assert_eq!(doomed.stats().reads(Outcome::Bypass), 2);

    // Leases: two instances of one entity; the second waits for the
    // first's slow load, gives up after wait_timeout and loads itself.
    let first = cache(shared.clone(), &prefix, "leases").await;
    let second = cache(shared.clone(), &prefix, "leases").await;
    let slow = tokio::spawn(async move { first.get(&901).await.map(|l| l.outcome) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        second.get(&901).await.expect("takeover").outcome,
        Outcome::Miss
    );
    assert_eq!(slow.await.expect("join").expect("slow"), Outcome::Miss);
    let s = second.stats();
    assert_eq!((s.lease_waits, s.wait_timeouts, s.fills), (1, 1, 0));

    // Near cache and bus: an L1 hit, an invalidation sent by one instance
    // and received by the other.
    let near = |store| {
        let prefix = prefix.clone();
        async move {
            Cache::<u64, u64>::builder()
                .prefix(prefix)
                .entity("near")
                .store(store)
                .near(NearOptions::default())
                .source(source("near"))
                .build()
                .await
                .expect("near cache")
        }
    };
    let (a, b) = (near(shared.clone()).await, near(shared.clone()).await);
    assert_eq!(a.get(&1).await.expect("miss").outcome, Outcome::Miss);
    assert_eq!(a.get(&1).await.expect("l1").outcome, Outcome::L1);
    a.invalidate(&1).await.expect("invalidate");
    for _ in 0..200 {
        if b.stats().near.invalidations_received >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.stats().near.invalidations_received, 1);
    assert_eq!(a.stats().near.invalidations_sent, 1);
    a.sync_near().await;
    assert_eq!(
        a.stats().near.l1_entries,
        0,
        "the invalidated entry is gone"
    );

    // Write-back: 5 writes of one id (4 coalesced) and 2 of others, then
    // `close` flushes them all.
    let db = Db::new().await;
    let durable = RedisServer::builder()
        .appendonly(true)
        .appendfsync_always(true)
        .start();
    let pool = SqlPool::connect(&support::pg_url(), 2).await.expect("pg");
    let accounts: Cache<i64, Account> = Cache::builder()
        .prefix(&prefix)
        .entity("accounts")
        .shards(8)
        .store(store::connect_checked(&durable.url()).await.expect("redis"))
        .source(
            SqlSource::builder(pool, &db.table())
                .entity("accounts")
                .build()
                .await
                .expect("source"),
        )
        .write_policy(WritePolicy::Back(WriteBackOptions {
            max_delay: Duration::from_secs(60),
            ..WriteBackOptions::default()
        }))
        .build()
        .await
        .expect("write-back cache");
    for balance in 0..5 {
        accounts
            .put(&7, &account(7, "bo", balance))
            .await
            .expect("put");
    }
    for id in [1, 2] {
        accounts.put(&id, &account(id, "al", 1)).await.expect("put");
    }
    accounts
        .close(Duration::from_secs(10))
        .await
        .expect("close");
    let wb = accounts.write_back_stats().expect("write-back stats");
    assert_eq!(
        (wb.acknowledged, wb.coalesced, wb.rows_written, wb.backlog),
        (7, 4, 3, 0)
    );
    db.drop().await;

    // The same figures through the facade.
    let all: Series = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let mut labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            ((key.kind(), key.key().name().to_owned(), labels), value)
        })
        .collect();
    let reads_of = |entity: &str, outcome: &str| {
        counter(
            &all,
            "larder_reads_total",
            &[("entity", entity), ("outcome", outcome)],
        )
    };
    for (outcome, n) in [
        ("l1", 0),
        ("hit", 30),
        ("stale", 0),
        ("negative", 5),
        ("miss", 10),
        ("bypass", 0),
    ] {
        assert_eq!(reads_of("reads", outcome), n, "reads {outcome}");
    }
    let e = [("entity", "reads")];
    assert_eq!(counter(&all, "larder_loads_total", &e), 11);
    assert_eq!(counter(&all, "larder_load_errors_total", &e), 1);
    assert_eq!(counter(&all, "larder_fills_total", &e), 10);
    assert_eq!(samples(&all, "larder_load_seconds", &e).len(), 11);
    // One GET per read: 10 + 30 + 5 + the failed one.
    assert_eq!(samples(&all, "larder_cache_seconds", &e).len(), 46);

    assert_eq!(reads_of("bypass", "bypass"), 2);
    assert_eq!(
        counter(&all, "larder_loads_total", &[("entity", "bypass")]),
        2
    );

    let l = [("entity", "leases")];
    assert_eq!(reads_of("leases", "miss"), 2);
    assert_eq!(counter(&all, "larder_lease_waits_total", &l), 1);
    assert_eq!(counter(&all, "larder_lease_takeovers_total", &l), 1);
    assert_eq!(counter(&all, "larder_fills_total", &l), 1);

    let n = [("entity", "near")];
    assert_eq!(reads_of("near", "l1"), 1);
    assert_eq!(counter(&all, "larder_invalidations_sent_total", &n), 1);
    assert_eq!(counter(&all, "larder_invalidations_received_total", &n), 1);
    assert_eq!(gauge(&all, "larder_l1_entries", &n), 0.0);

    let w = [("entity", "accounts")];
    assert_eq!(counter(&all, "larder_writeback_writes_total", &w), 7);
    assert_eq!(counter(&all, "larder_writeback_coalesced_total", &w), 4);
    let batches = samples(&all, "larder_writeback_batch_rows", &w);
    assert_eq!(batches.iter().sum::<f64>(), 3.0, "{batches:?}");
    assert_eq!(batches.len() as u64, wb.batches);
    assert_eq!(
        counter(&all, "larder_writeback_batches_total", &w),
        wb.batches
    );
    assert_eq!(gauge(&all, "larder_writeback_backlog", &w), 0.0);
    assert_eq!(counter(&all, "larder_writeback_dead_lettered_total", &w), 0);
}
