//! Coherence at its edges, against a `redis-server` of the test's own:
//! invalidations owed while Redis is unreachable outlive the process that
//! owed them (a state directory), whether it shut down or crashed.
//!
//! Waits poll with a generous deadline for a signal; no sleep stands in
//! for one.

use larder_test_support as support;

use larder::store::{self, Store};
use larder::{Cache, CacheWrite, NearOptions, Outcome};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::{unique, Keyed, RedisServer, TableSource};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
}

fn row(id: u64, name: &str) -> Row {
    Row {
        id,
        name: name.into(),
    }
}

impl Keyed for Row {
    fn key(&self) -> u64 {
        self.id
    }
}

/// The database behind the caches, shared by every instance of a test.
type Table = support::Table<Row>;

/// A cache with a near cache on its own connection to `url`, keeping what
/// it owes in `state_dir` if given.
async fn instance(
    url: &str,
    prefix: &str,
    table: &Arc<Table>,
    state_dir: Option<&Path>,
) -> Cache<u64, Row> {
    let store: Arc<dyn Store> = store::connect(url).await.expect("store");
    let mut builder = Cache::builder()
        .prefix(prefix)
        .entity("rows")
        .store(store)
        .source(TableSource(table.clone()))
        .ttl(Duration::from_secs(60))
        .early_refresh(0.0)
        .near(NearOptions {
            capacity: 1_000,
            ttl: Duration::from_secs(60),
        });
    if let Some(dir) = state_dir {
        builder = builder.state_dir(dir);
    }
    builder.build().await.expect("cache")
}

/// A fresh state directory, removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> Self {
        let dir = support::temp_dir("larder-state");
        Self(dir)
    }

    fn owed_file(&self, prefix: &str) -> PathBuf {
        self.0.join(format!("{prefix}.rows.owed.json"))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn name_of(cache: &Cache<u64, Row>, id: u64) -> (Option<String>, Outcome) {
    let got = cache.get(&id).await.expect("get");
    (got.value.map(|r| r.name.clone()), got.outcome)
}

/// Fills Redis and both near caches with `v1` of ids 1 and 2.
async fn warm(caches: [&Cache<u64, Row>; 2]) {
    for cache in caches {
        for id in [1, 2] {
            name_of(cache, id).await;
            assert_eq!(name_of(cache, id).await, (Some("v1".into()), Outcome::L1));
        }
    }
}

/// Reads ids 1 and 2 several times on `cache` (through Redis, then L1):
/// always `v2`.
async fn never_old(cache: &Cache<u64, Row>) {
    for id in [1, 2] {
        for _ in 0..3 {
            let (name, outcome) = name_of(cache, id).await;
            assert_eq!(name.as_deref(), Some("v2"), "id {id}: {outcome}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owed_invalidations_are_persisted_at_shutdown_and_replayed_at_the_next_start() {
    let mut server = RedisServer::durable();
    let url = server.url_with_short_timeouts();
    let state = StateDir::new();
    let prefix = unique("owed_shutdown");
    let table = Table::with([row(1, "v1"), row(2, "v1")]);
    let a = instance(&url, &prefix, &table, Some(&state.0)).await;
    let b = instance(&url, &prefix, &table, None).await;
    warm([&a, &b]).await;

    server.kill();
    // A write-through the database takes and Redis cannot, and a
    // cache-aside invalidation that cannot reach Redis.
    let written = a.put(&1, &row(1, "v2")).await.expect("put");
    assert_eq!(written.cache, CacheWrite::Unreachable);
    table.set(row(2, "v2"));
    let refused = a.invalidate(&2).await.expect_err("Redis is down");
    assert!(refused.is_store_unavailable(), "{refused}");
    assert_eq!(a.owed_invalidations(), 2);
    assert!(
        state.owed_file(&prefix).exists(),
        "the marker is written as soon as something is owed"
    );

    // Shutdown while Redis is still down: retried for the grace, then kept.
    a.close(Duration::from_millis(300)).await.expect("close");
    assert_eq!(a.owed_invalidations(), 2);
    drop(a);
    let kept = std::fs::read_to_string(state.owed_file(&prefix)).expect("owed file");
    assert!(
        kept.contains("\"1\"") && kept.contains("\"2\""),
        "the exact ids are kept: {kept}"
    );

    // Redis returns holding the old entries (AOF); a new cache with the
    // same state directory replays what the old one owed while it starts.
    // (The file is put back as it was: the dropped cache's tasks may
    // outlive it by one retry, an ended process would not.)
    server.restart();
    std::fs::write(state.owed_file(&prefix), &kept).expect("put back");
    let c = instance(&url, &prefix, &table, Some(&state.0)).await;
    assert_eq!(c.owed_invalidations(), 0);
    assert_eq!(c.stats().near.invalidations_replayed, 2);
    assert!(
        !state.owed_file(&prefix).exists(),
        "the file goes once everything is delivered"
    );
    never_old(&b).await;
    never_old(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_owed_invalidations_purges_the_entity_at_the_next_start() {
    let mut server = RedisServer::durable();
    let url = server.url_with_short_timeouts();
    let state = StateDir::new();
    let prefix = unique("owed_crash");
    let table = Table::with([row(1, "v1"), row(2, "v1")]);
    let a = instance(&url, &prefix, &table, Some(&state.0)).await;
    let b = instance(&url, &prefix, &table, None).await;
    warm([&a, &b]).await;

    server.kill();
    table.set(row(1, "v2"));
    table.set(row(2, "v2"));
    assert!(a.invalidate(&2).await.is_err(), "Redis is down");
    // The process dies without closing: only the marker is left.
    drop(a);
    let marker = std::fs::read_to_string(state.owed_file(&prefix)).expect("marker");
    assert!(marker.contains("\"purge\":true"), "{marker}");

    // Id 1 was changed in the database behind the caches' back and is
    // refreshed by the purge too: a crash cannot tell which ids it owed.
    server.restart();
    std::fs::write(state.owed_file(&prefix), &marker).expect("put back");
    let c = instance(&url, &prefix, &table, Some(&state.0)).await;
    assert_eq!(c.owed_invalidations(), 0);
    assert_eq!(c.stats().near.invalidations_replayed, 1);
    assert!(!state.owed_file(&prefix).exists());
    never_old(&b).await;
    never_old(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_state_directory_nothing_is_written() {
    let mut server = RedisServer::durable();
    let url = server.url_with_short_timeouts();
    let state = StateDir::new();
    let prefix = unique("owed_none");
    let table = Table::with([row(1, "v1")]);
    let a = instance(&url, &prefix, &table, None).await;
    name_of(&a, 1).await;
    server.kill();
    assert!(a.invalidate(&1).await.is_err(), "Redis is down");
    assert_eq!(a.deliver_invalidations(Duration::from_millis(50)).await, 1);
    assert!(!state.owed_file(&prefix).exists());
}
