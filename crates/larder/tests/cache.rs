//! The cache's behaviour, written once and run against every store:
//! the embedded `memory://` store, the real Redis on 127.0.0.1:6379 and a
//! Redis Cluster — and on Redis again with entries as hashes
//! (`redis_hash::`), for every behaviour that is not about the codec.

use larder_test_support as support;
use support::{eventually, Keyed, TableSource};

use larder::store::{self, Store};
use larder::{
    Cache, CacheWrite, Error, LoadError, ManualClock, MessagePack, Outcome, Representation,
    WarmOptions, WritePolicy,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn user(id: u64, name: &str) -> User {
    User {
        id,
        name: name.into(),
    }
}

impl Keyed for User {
    fn key(&self) -> u64 {
        self.id
    }
}

/// The in-process table behind the cache: counts its calls, can fail, and
/// can hold a load at a gate so tests can act while it is in flight.
type Table = support::Table<User>;

/// One store kind under test.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Redis,
    /// Redis, the entries stored as hashes (`Representation::Hash`).
    RedisHash,
    Cluster,
}

impl Kind {
    fn representation(self) -> Representation {
        match self {
            Kind::RedisHash => Representation::Hash,
            _ => Representation::String,
        }
    }
}

async fn store(kind: Kind) -> Arc<dyn Store> {
    match kind {
        Kind::Memory => store::connect("memory://").await.expect("memory store"),
        Kind::Redis | Kind::RedisHash => support::redis_store().await,
        Kind::Cluster => support::RedisCluster::shared().store().await,
    }
}

struct Fixture {
    cache: Cache<u64, User>,
    table: Arc<Table>,
    clock: ManualClock,
    store: Arc<dyn Store>,
    prefix: String,
}

async fn fixture(kind: Kind, rows: &[User]) -> Fixture {
    fixture_with(kind, rows, |b| b).await
}

async fn fixture_with(
    kind: Kind,
    rows: &[User],
    tune: impl FnOnce(larder::CacheBuilder<u64, User>) -> larder::CacheBuilder<u64, User>,
) -> Fixture {
    let table = Table::named("users", rows.iter().cloned());
    // The source normalises: it answers a write with the row it kept.
    table.normalise(|u| u.name = u.name.trim().to_owned());
    let clock = ManualClock::new();
    let store = store(kind).await;
    let prefix = support::unique("t");
    let builder = Cache::<u64, User>::builder()
        .prefix(&prefix)
        .entity("users")
        .store(store.clone())
        .representation(kind.representation())
        .source(TableSource(table.clone()))
        .clock(clock.clone())
        .ttl(Duration::from_secs(60))
        .jitter(0.0)
        .stale(Duration::from_secs(30))
        .negative_ttl(Duration::from_secs(10))
        .early_refresh(0.0);
    let cache = tune(builder).build().await.expect("build");
    Fixture {
        cache,
        table,
        clock,
        store,
        prefix,
    }
}

/// The Redis types of the keys under `prefix`.
async fn redis_types(prefix: &str) -> Vec<String> {
    let client = ::redis::Client::open(support::redis_url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut types = Vec::new();
    for key in keys {
        let t: String = ::redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        types.push(t);
    }
    types
}

async fn read_through_miss_then_hit(kind: Kind) {
    let f = fixture(kind, &[user(1, "ada")]).await;
    let first = f.cache.get(&1).await.expect("get");
    assert_eq!(first.outcome, Outcome::Miss);
    assert_eq!(first.value.as_deref(), Some(&user(1, "ada")));
    if matches!(kind, Kind::RedisHash) {
        let types = redis_types(&f.prefix).await;
        assert!(
            types.iter().any(|t| t == "hash"),
            "the entry is a hash: {types:?}"
        );
    }
    let second = f.cache.get(&1).await.expect("get");
    assert_eq!(second.outcome, Outcome::Hit);
    assert_eq!(second.value.as_deref(), Some(&user(1, "ada")));
    assert_eq!(f.table.loads(), 1);
    let stats = f.cache.stats();
    assert_eq!(
        (
            stats.reads(Outcome::Miss),
            stats.reads(Outcome::Hit),
            stats.loads
        ),
        (1, 1, 1)
    );
    assert!((stats.hit_ratio() - 0.5).abs() < 1e-9);
}

async fn cache_aside_loads_once(kind: Kind) {
    let f = fixture(kind, &[]).await;
    let calls = Arc::new(AtomicUsize::new(0));
    for round in 0..3 {
        let calls = calls.clone();
        let got = f
            .cache
            .get_or_load(&7, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(Some(user(7, "grace")))
            })
            .await
            .expect("get_or_load");
        assert_eq!(
            got.outcome,
            if round == 0 {
                Outcome::Miss
            } else {
                Outcome::Hit
            }
        );
        assert_eq!(got.value.as_deref(), Some(&user(7, "grace")));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let failed = f
        .cache
        .get_or_load(&8, || async {
            Err::<Option<User>, _>(std::io::Error::other("backend down"))
        })
        .await
        .expect_err("loader error");
    assert!(
        matches!(failed, Error::Loader { .. }) && failed.is_source_error(),
        "{failed}"
    );
}

async fn not_found_is_remembered(kind: Kind) {
    let f = fixture(kind, &[]).await;
    assert_eq!(f.cache.get(&404).await.expect("get").outcome, Outcome::Miss);
    let again = f.cache.get(&404).await.expect("get");
    assert_eq!((again.outcome, again.value), (Outcome::Negative, None));
    assert_eq!(f.table.loads(), 1);
    // After negative_ttl the row is looked up again and now found.
    f.table.set(user(404, "found"));
    f.clock.advance(Duration::from_secs(11));
    let later = f.cache.get(&404).await.expect("get");
    assert_eq!(
        (later.outcome, later.value.as_deref()),
        (Outcome::Miss, Some(&user(404, "found")))
    );
}

async fn get_many_loads_misses_in_one_call(kind: Kind) {
    let f = fixture(kind, &[user(1, "a"), user(2, "b"), user(3, "c")]).await;
    f.cache.get(&1).await.expect("warm one");
    let got = f
        .cache
        .get_many(&[&1, &2, &3, &4, &2])
        .await
        .expect("get_many");
    let outcomes: Vec<Outcome> = got.iter().map(|l| l.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Hit,
            Outcome::Miss,
            Outcome::Miss,
            Outcome::Miss,
            Outcome::Miss
        ]
    );
    assert_eq!(got[1].value.as_deref(), Some(&user(2, "b")));
    assert_eq!(got[3].value, None);
    assert_eq!(f.table.batch_loads(), 1, "misses load in one load_many");
    let again = f.cache.get_many(&[&1, &2, &3, &4]).await.expect("get_many");
    let outcomes: Vec<Outcome> = again.iter().map(|l| l.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Hit, Outcome::Hit, Outcome::Hit, Outcome::Negative]
    );
    assert_eq!(f.table.batch_loads(), 1);
}

async fn put_and_invalidate(kind: Kind) {
    let f = fixture(kind, &[user(5, "old")]).await;
    f.cache.put(&5, &user(5, "put")).await.expect("put");
    let got = f.cache.get(&5).await.expect("get");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Hit, Some(&user(5, "put")))
    );
    f.table.set(user(5, "changed behind the cache"));
    f.cache.invalidate(&5).await.expect("invalidate");
    let got = f.cache.get(&5).await.expect("get");
    let expected = user(5, "changed behind the cache");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Miss, Some(&expected))
    );
}

async fn write_through_caches_the_stored_row(kind: Kind) {
    let f = fixture(kind, &[]).await;
    assert_eq!(f.cache.write_policy(), WritePolicy::Through);
    let written = f.cache.put(&1, &user(1, "  padded  ")).await.expect("put");
    assert_eq!(
        (written.value.as_ref(), written.cache),
        (&user(1, "padded"), CacheWrite::Updated)
    );
    let got = f.cache.get(&1).await.expect("get");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Hit, Some(&user(1, "padded"))),
        "the stored row is cached"
    );
    assert_eq!(f.table.loads(), 0);
    assert!(f.cache.delete(&1).await.expect("delete"));
    assert!(!f.cache.delete(&1).await.expect("delete again"));
    let got = f.cache.get(&1).await.expect("get");
    assert_eq!((got.outcome, got.value), (Outcome::Miss, None));
}

async fn write_around_invalidates(kind: Kind) {
    let f = fixture_with(kind, &[user(1, "old")], |b| {
        b.write_policy(WritePolicy::Around)
    })
    .await;
    f.cache.get(&1).await.expect("fill");
    let written = f.cache.put(&1, &user(1, "new")).await.expect("put");
    assert_eq!(written.cache, CacheWrite::Invalidated);
    let got = f.cache.get(&1).await.expect("get");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Miss, Some(&user(1, "new")))
    );
}

async fn read_only_refuses_writes(kind: Kind) {
    let f = fixture_with(kind, &[user(1, "x")], |b| {
        b.write_policy(WritePolicy::ReadOnly)
    })
    .await;
    for err in [
        f.cache.put(&1, &user(1, "y")).await.expect_err("put"),
        f.cache.delete(&1).await.expect_err("delete"),
    ] {
        assert!(
            matches!(err, Error::ReadOnly { .. }) && err.is_bad_input(),
            "{err}"
        );
    }
    assert_eq!(
        f.table.get(1).expect("row 1"),
        user(1, "x"),
        "nothing written"
    );
    let closure = larder::FnSource::new("users", |_id: String| async {
        Ok::<_, std::io::Error>(None::<User>)
    });
    let err = Cache::<u64, User>::builder()
        .entity("users")
        .store(store(kind).await)
        .source(closure)
        .write_policy(WritePolicy::Through)
        .build()
        .await
        .expect_err("a closure source cannot be written through");
    assert!(matches!(err, Error::Config(_)), "{err}");
}

async fn a_refused_write_leaves_the_cache_alone(kind: Kind) {
    let f = fixture(kind, &[user(1, "kept")]).await;
    f.cache.get(&1).await.expect("fill");
    f.table.reject(true);
    let err = f.cache.put(&1, &user(1, "bad")).await.expect_err("refused");
    assert!(err.is_source_error(), "{err}");
    let got = f.cache.get(&1).await.expect("get");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Hit, Some(&user(1, "kept")))
    );
    // A write that may or may not have committed (source unreachable) drops the entry.
    f.table.reject(false);
    f.table.fail(true);
    f.cache
        .put(&1, &user(1, "maybe"))
        .await
        .expect_err("unreachable");
    f.table.fail(false);
    assert_eq!(f.cache.get(&1).await.expect("get").outcome, Outcome::Miss);
}

async fn a_write_voids_a_load_in_flight(kind: Kind) {
    for round in 0..20 {
        let f = fixture(kind, &[user(1, "old")]).await;
        let gate = f.table.hold();
        let reader = {
            let cache = f.cache.clone();
            tokio::spawn(async move { cache.get(&1).await })
        };
        f.table.entered().await;
        f.table.unhold();
        f.cache.put(&1, &user(1, "new")).await.expect("put");
        gate.add_permits(1000);
        reader.await.expect("join").expect("get");
        let got = f.cache.get(&1).await.expect("get");
        assert_eq!(
            (got.outcome, got.value.as_deref()),
            (Outcome::Hit, Some(&user(1, "new"))),
            "round {round}"
        );
        assert_eq!(f.cache.stats().fills_refused, 1, "round {round}");
    }
}

async fn stale_is_served_while_one_refresh_runs(kind: Kind) {
    let f = fixture(kind, &[user(1, "v1")]).await;
    f.cache.get(&1).await.expect("fill");
    f.table.set(user(1, "v2"));
    f.clock.advance(Duration::from_secs(61)); // past ttl, inside the 30 s stale window
    for _ in 0..20 {
        let got = f.cache.get(&1).await.expect("stale read");
        if got.value.as_deref() == Some(&user(1, "v2")) {
            break; // the background refresh already landed
        }
        assert_eq!(
            (got.outcome, got.value.as_deref()),
            (Outcome::Stale, Some(&user(1, "v1")))
        );
    }
    let table = f.table.clone();
    eventually("the refresh lands", || async { f.cache.stats().fills == 2 }).await;
    let got = f.cache.get(&1).await.expect("fresh read");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Hit, Some(&user(1, "v2")))
    );
    assert_eq!(table.loads(), 2, "exactly one refresh load");
}

async fn past_the_stale_window_is_a_miss(kind: Kind) {
    let f = fixture(kind, &[user(1, "v1")]).await;
    f.cache.get(&1).await.expect("fill");
    f.table.set(user(1, "v2"));
    f.clock.advance(Duration::from_secs(91));
    let got = f.cache.get(&1).await.expect("get");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Miss, Some(&user(1, "v2")))
    );
}

async fn fail_safe_serves_stale_then_errors(kind: Kind) {
    let f = fixture(kind, &[user(1, "v1")]).await;
    f.cache.get(&1).await.expect("fill");
    f.table.fail(true);
    f.clock.advance(Duration::from_secs(70));
    for _ in 0..5 {
        let got = f.cache.get(&1).await.expect("stale while the source fails");
        assert_eq!(
            (got.outcome, got.value.as_deref()),
            (Outcome::Stale, Some(&user(1, "v1")))
        );
    }
    eventually("a failed refresh", || async {
        f.cache.stats().load_errors >= 1
    })
    .await;
    f.clock.advance(Duration::from_secs(30)); // past the stale window
    let err = f.cache.get(&1).await.expect_err("no stale value left");
    assert!(err.is_source_error(), "{err}");
}

async fn concurrent_misses_share_one_load(kind: Kind) {
    let f = fixture(kind, &[user(9, "hot")]).await;
    let gate = f.table.hold();
    let mut readers = Vec::new();
    for _ in 0..50 {
        let cache = f.cache.clone();
        readers.push(tokio::spawn(async move { cache.get(&9).await }));
    }
    f.table.entered().await;
    gate.add_permits(1000);
    for r in readers {
        let got = r.await.expect("join").expect("get");
        assert_eq!(got.value.as_deref(), Some(&user(9, "hot")));
    }
    assert_eq!(f.table.loads(), 1);
}

async fn invalidation_during_a_load_voids_its_fill(kind: Kind) {
    for round in 0..20 {
        let f = fixture(kind, &[user(1, "old")]).await;
        let gate = f.table.hold();
        let reader = {
            let cache = f.cache.clone();
            tokio::spawn(async move { cache.get(&1).await })
        };
        f.table.entered().await; // the load is in flight (and read "old")
        f.table.set(user(1, "new"));
        f.cache.invalidate(&1).await.expect("invalidate");
        gate.add_permits(1000);
        let got = reader.await.expect("join").expect("get");
        assert_eq!(got.outcome, Outcome::Miss);
        assert_eq!(
            f.cache.stats().fills_refused,
            1,
            "round {round}: the outdated fill must be refused"
        );
        f.table.unhold();
        let after = f.cache.get(&1).await.expect("get");
        assert_eq!(
            after.value.as_deref(),
            Some(&user(1, "new")),
            "round {round}"
        );
        assert_eq!(
            after.outcome,
            Outcome::Miss,
            "round {round}: nothing outdated was cached"
        );
    }
}

async fn bad_input_is_refused(kind: Kind) {
    let store = store(kind).await;
    for (prefix, entity) in [
        ("Bad", "users"),
        ("ok", "us:ers"),
        ("", "users"),
        ("ok", ""),
    ] {
        let err = Cache::<u64, User>::builder()
            .prefix(prefix)
            .entity(entity)
            .store(store.clone())
            .build()
            .await
            .expect_err("bad name");
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
    }
    let long = Cache::<str, User>::builder()
        .prefix(support::unique("t"))
        .entity("users")
        .store(store.clone())
        .build()
        .await
        .expect("build");
    let too_long = "x".repeat(larder::MAX_ID_LEN + 1);
    for id in ["", too_long.as_str()] {
        let err = long.put(id, &user(1, "x")).await.expect_err("bad id");
        assert!(
            matches!(err, Error::InvalidId { .. }) && err.is_bad_input(),
            "{err}"
        );
    }
    let f = fixture(kind, &[]).await;
    let typed = Cache::<str, User>::builder()
        .prefix(&f.prefix)
        .entity("users")
        .store(f.store.clone())
        .source(TableSource(f.table.clone()))
        .build()
        .await
        .expect("build");
    let err = typed.get("abc").await.expect_err("not an integer");
    assert!(matches!(err, Error::InvalidId { .. }), "{err}");
    assert_eq!(typed.id_of("007").expect("canonical"), "7");
    let err = Cache::<u64, User>::builder()
        .entity("users")
        .load_timeout(Duration::from_secs(9))
        .build()
        .await
        .expect_err("load_timeout past lease_ttl");
    assert!(
        matches!(
            err,
            Error::InvalidSetting {
                setting: "load_timeout",
                ..
            }
        ),
        "{err}"
    );
}

async fn changing_the_shard_count_is_refused(kind: Kind) {
    let f = fixture(kind, &[]).await;
    let err = Cache::<u64, User>::builder()
        .prefix(&f.prefix)
        .entity("users")
        .shards(32)
        .store(f.store.clone())
        .build()
        .await
        .expect_err("layout mismatch");
    assert!(matches!(err, Error::LayoutMismatch { .. }), "{err}");
}

async fn message_pack_round_trips(kind: Kind) {
    let f = fixture_with(kind, &[user(3, "mp")], |b| b.codec(MessagePack)).await;
    assert_eq!(f.cache.get(&3).await.expect("get").outcome, Outcome::Miss);
    let hit = f.cache.get(&3).await.expect("get");
    assert_eq!(
        (hit.outcome, hit.value.as_deref()),
        (Outcome::Hit, Some(&user(3, "mp")))
    );
}

async fn warm_fills_in_batches(kind: Kind) {
    let f = fixture(kind, &[user(1, "a"), user(2, "b"), user(3, "c")]).await;
    let mut reports = Vec::new();
    let done = f
        .cache
        .warm(&[&1, &2, &3, &404], WarmOptions::default(), |p| {
            reports.push(p)
        })
        .await
        .expect("warm");
    assert_eq!(
        (done.done, done.total, done.written, done.skipped),
        (4, Some(4), 4, 0)
    );
    assert_eq!(reports.len(), 1);
    assert_eq!(f.table.batch_loads(), 1, "one load_many per batch");
    let got = f
        .cache
        .get_many(&[&1, &2, &3, &404])
        .await
        .expect("get_many");
    let outcomes: Vec<Outcome> = got.iter().map(|l| l.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Hit, Outcome::Hit, Outcome::Hit, Outcome::Negative]
    );
    assert_eq!(f.table.loads(), 0);
}

async fn warm_all_streams_every_row(kind: Kind) {
    let rows: Vec<User> = (1..=5).map(|i| user(i, "w")).collect();
    let f = fixture(kind, &rows).await;
    let mut reports = Vec::new();
    let done = f
        .cache
        .warm_all(WarmOptions::default().batch(2), |p| reports.push(p.done))
        .await
        .expect("warm_all");
    assert_eq!((done.done, done.written), (5, 5));
    assert_eq!(reports, [2, 4, 5]);
    for id in 1..=5 {
        assert_eq!(f.cache.get(&id).await.expect("get").outcome, Outcome::Hit);
    }
    let err = fixture_with(kind, &[], |b| b)
        .await
        .cache
        .warm_all(WarmOptions::default().batch(0), |_| {})
        .await
        .expect_err("batch 0");
    assert!(matches!(err, Error::Config(_)), "{err}");
}

async fn warming_never_overwrites_a_newer_write(kind: Kind) {
    for round in 0..20 {
        let f = fixture(kind, &[user(1, "old")]).await;
        let gate = f.table.hold();
        let warming = {
            let cache = f.cache.clone();
            tokio::spawn(async move { cache.warm(&[&1], WarmOptions::default(), |_| {}).await })
        };
        f.table.entered().await; // the warm-up's load is in flight
        f.cache.put(&1, &user(1, "newer")).await.expect("put");
        gate.add_permits(1000);
        let done = warming.await.expect("join").expect("warm");
        assert_eq!((done.written, done.skipped), (0, 1), "round {round}");
        let got = f.cache.get(&1).await.expect("get");
        assert_eq!(
            (got.outcome, got.value.as_deref()),
            (Outcome::Hit, Some(&user(1, "newer"))),
            "round {round}"
        );
    }
}

async fn a_load_past_load_timeout_fails_with_a_timeout(kind: Kind) {
    let f = fixture_with(kind, &[user(1, "slow")], |b| {
        b.load_timeout(Duration::from_millis(50))
    })
    .await;
    f.table.slow(Some(Duration::from_secs(3)));
    let err = f.cache.get(&1).await.expect_err("timeout");
    assert!(
        matches!(err, Error::LoadTimeout { .. }) && err.is_timeout() && err.is_source_error(),
        "{err}"
    );
    assert_eq!(f.cache.stats().load_errors, 1);
}

async fn soft_timeout_serves_stale_then_the_refresh_lands(kind: Kind) {
    let f = fixture_with(kind, &[user(1, "v1")], |b| {
        b.soft_timeout(Duration::from_millis(20))
            .load_timeout(Duration::from_secs(2))
    })
    .await;
    f.cache.get(&1).await.expect("fill");
    f.table.set(user(1, "v2"));
    f.table.slow(Some(Duration::from_millis(300)));
    f.clock.advance(Duration::from_secs(61));
    let got = f.cache.get(&1).await.expect("stale after the soft timeout");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Stale, Some(&user(1, "v1")))
    );
    eventually("the slow refresh lands", || async {
        f.cache.stats().fills == 2
    })
    .await;
    // A fast source answers within the soft timeout: the read gets fresh data.
    f.table.slow(None);
    f.table.set(user(1, "v3"));
    f.clock.advance(Duration::from_secs(61));
    let got = f
        .cache
        .get(&1)
        .await
        .expect("fresh within the soft timeout");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Miss, Some(&user(1, "v3")))
    );
}

async fn early_refresh_reloads_before_expiry(kind: Kind) {
    // A huge β makes every read of a fresh entry refresh it early.
    let f = fixture_with(kind, &[user(1, "v1")], |b| b.early_refresh(1e12)).await;
    f.cache.get(&1).await.expect("fill");
    f.table.set(user(1, "v2"));
    let got = f.cache.get(&1).await.expect("hit");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Hit, Some(&user(1, "v1")))
    );
    eventually("the early refresh lands", || async {
        f.cache.stats().fills == 2
    })
    .await;
    assert!(f.cache.stats().early_refreshes >= 1);
    let got = f.cache.get(&1).await.expect("hit");
    assert_eq!(got.value.as_deref(), Some(&user(1, "v2")));
}

/// Each behaviour once per store (`memory::`, `redis::`, `cluster::`);
/// those that are not about the codec (or the layout) also on `hash`
/// entries (`redis_hash::`).
macro_rules! every_store {
    (any_representation: [$($name:ident),* $(,)?], string_only: [$($codec:ident),* $(,)?] $(,)?) => {
        mod memory { $( #[tokio::test] async fn $name() { super::$name(super::Kind::Memory).await } )* $( #[tokio::test] async fn $codec() { super::$codec(super::Kind::Memory).await } )* }
        mod redis { $( #[tokio::test] async fn $name() { super::$name(super::Kind::Redis).await } )* $( #[tokio::test] async fn $codec() { super::$codec(super::Kind::Redis).await } )* }
        mod cluster { $( #[tokio::test] async fn $name() { super::$name(super::Kind::Cluster).await } )* $( #[tokio::test] async fn $codec() { super::$codec(super::Kind::Cluster).await } )* }
        mod redis_hash { $( #[tokio::test] async fn $name() { super::$name(super::Kind::RedisHash).await } )* }
    };
}

every_store!(
    any_representation: [
        read_through_miss_then_hit,
        cache_aside_loads_once,
        not_found_is_remembered,
        get_many_loads_misses_in_one_call,
        put_and_invalidate,
        stale_is_served_while_one_refresh_runs,
        past_the_stale_window_is_a_miss,
        fail_safe_serves_stale_then_errors,
        concurrent_misses_share_one_load,
        invalidation_during_a_load_voids_its_fill,
        warm_fills_in_batches,
        warm_all_streams_every_row,
        warming_never_overwrites_a_newer_write,
        a_load_past_load_timeout_fails_with_a_timeout,
        soft_timeout_serves_stale_then_the_refresh_lands,
        early_refresh_reloads_before_expiry,
        write_through_caches_the_stored_row,
        write_around_invalidates,
        read_only_refuses_writes,
        a_refused_write_leaves_the_cache_alone,
        a_write_voids_a_load_in_flight,
    ],
    string_only: [
        bad_input_is_refused,
        changing_the_shard_count_is_refused,
        message_pack_round_trips,
    ],
);

#[tokio::test]
async fn a_read_after_an_invalidation_does_not_join_a_load_that_began_before_it() {
    for url in ["memory://".to_owned(), support::redis_url()] {
        let store = store::connect(&url).await.expect("store");
        let cache: Cache<u64, String> = Cache::builder()
            .prefix(support::unique("flight"))
            .entity("e")
            .store(store)
            .early_refresh(0.0)
            .build()
            .await
            .expect("cache");
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let before = cache.clone();
        let first = tokio::spawn(async move {
            before
                .get_or_load(&1, move || async move {
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, std::convert::Infallible>(Some("old".to_owned()))
                })
                .await
        });
        started_rx.await.expect("the first load started");
        cache.invalidate(&1).await.expect("invalidate");
        let second = tokio::time::timeout(
            Duration::from_secs(5),
            cache.get_or_load(&1, || async {
                Ok::<_, std::convert::Infallible>(Some("new".to_owned()))
            }),
        )
        .await
        .expect("the second read does not wait for the older load")
        .expect("read");
        assert_eq!(
            second.value.as_deref().map(String::as_str),
            Some("new"),
            "{url}"
        );
        let _ = release_tx.send(());
        let first = first.await.expect("task").expect("read");
        assert_eq!(first.value.as_deref().map(String::as_str), Some("old"));
        let cached = cache
            .get_or_load(&1, || async { Ok::<_, std::convert::Infallible>(None) })
            .await
            .expect("read");
        assert_eq!(
            (cached.value.as_deref().map(String::as_str), cached.outcome),
            (Some("new"), Outcome::Hit),
            "the older load's fill was refused ({url})"
        );
    }
}

/// A loader error of the application's own type.
#[derive(Debug)]
struct Unreachable {
    shard: u32,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} is unreachable", self.shard)
    }
}

impl std::error::Error for Unreachable {}

/// Tells a channel when it is dropped: a caller's loader is dropped
/// unrun when the caller joins a load already in flight.
struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn try_get_or_load_gives_every_waiter_the_same_loader_error() {
    for url in ["memory://".to_owned(), support::redis_url()] {
        let store = store::connect(&url).await.expect("store");
        let cache: Cache<u64, String> = Cache::builder()
            .prefix(support::unique("try_load"))
            .entity("e")
            .store(store)
            .build()
            .await
            .expect("cache");
        let loads = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .try_get_or_load(&1, move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        let _ = started_tx.send(());
                        let _ = release_rx.await;
                        Err::<Option<String>, _>(Unreachable { shard: 3 })
                    })
                    .await
            })
        };
        started_rx.await.expect("the first load started");
        let (joined_tx, joined_rx) = tokio::sync::oneshot::channel::<()>();
        let second = {
            let (cache, loads) = (cache.clone(), loads.clone());
            let signal = DropSignal(Some(joined_tx));
            tokio::spawn(async move {
                cache
                    .try_get_or_load(&1, move || async move {
                        let _signal = signal;
                        loads.fetch_add(1, Ordering::SeqCst);
                        Err::<Option<String>, _>(Unreachable { shard: 4 })
                    })
                    .await
            })
        };
        // The second caller's loader is dropped unrun: it joined the flight.
        joined_rx.await.expect("the second caller joined");
        let _ = release_tx.send(());
        let first = first.await.expect("task").expect_err("the load failed");
        let second = second.await.expect("task").expect_err("the load failed");
        let (LoadError::Load(a), LoadError::Load(b)) = (&first, &second) else {
            panic!("{url}: a loader error, typed: {first:?} / {second:?}");
        };
        assert!(Arc::ptr_eq(a, b), "{url}: one error, shared");
        assert_eq!(a.shard, 3, "{url}");
        assert_eq!(loads.load(Ordering::SeqCst), 1, "{url}: one load ran");
        // A cache failure is the cache's: a key the source refuses.
        let bad: Cache<str, String> = Cache::builder()
            .prefix(support::unique("try_load"))
            .entity("e")
            .build()
            .await
            .expect("cache");
        let refused = bad
            .try_get_or_load("", || async { Ok::<_, Unreachable>(None) })
            .await
            .expect_err("an empty key");
        assert!(matches!(refused, LoadError::Cache(_)), "{refused:?}");
    }
}
