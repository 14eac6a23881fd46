//! The near cache (L1), the invalidation bus, tags and purge, against real
//! Redis: the shared one on 6379 (isolated by a unique prefix) and, for
//! the tests that break Redis, a `redis-server` of the test's own.
//!
//! Waits poll with a generous deadline for a signal (a value, a counter);
//! no sleep stands in for one.

use larder_test_support as support;

use larder::store::{self, Store};
use larder::{Cache, CacheWrite, Error, NearOptions, Outcome};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, unique, Keyed, RedisServer, TableSource};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    team: u64,
    name: String,
}

fn row(id: u64, name: &str) -> Row {
    Row {
        id,
        team: id % 3,
        name: name.into(),
    }
}

impl Keyed for Row {
    fn key(&self) -> u64 {
        self.id
    }
}

/// The database behind the caches: shared by every instance of a test,
/// counting loads, holding a load at a gate when asked.
type Table = support::Table<Row>;

fn near() -> NearOptions {
    NearOptions {
        capacity: 10_000,
        ttl: Duration::from_secs(60),
    }
}

/// A cache with a near cache on its own connection to `url`.
async fn instance(url: &str, prefix: &str, table: &Arc<Table>) -> Cache<u64, Row> {
    let store: Arc<dyn Store> = store::connect(url).await.expect("store");
    Cache::builder()
        .prefix(prefix)
        .entity("rows")
        .store(store)
        .source(TableSource(table.clone()))
        .ttl(Duration::from_secs(60))
        .early_refresh(0.0)
        .near(near())
        .tagger(|r: &Row| match r.team {
            0 => Vec::new(),
            team => vec![format!("team:{team}")],
        })
        .build()
        .await
        .expect("cache")
}

async fn name_of(cache: &Cache<u64, Row>, id: u64) -> (Option<String>, Outcome) {
    let got = cache.get(&id).await.expect("get");
    (got.value.map(|r| r.name.clone()), got.outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_or_invalidate_on_one_instance_is_seen_fresh_on_the_other() {
    let url = support::redis_url();
    write_or_invalidate_seen_fresh(&url, &url).await;
}

/// On Redis Cluster, with the two instances seeded with (and so subscribed
/// on) different nodes: PUBLISH is broadcast over the cluster bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_write_or_invalidate_on_one_instance_is_seen_fresh_on_the_other() {
    let cluster = support::RedisCluster::shared();
    write_or_invalidate_seen_fresh(&cluster.url_of_node(0), &cluster.url_of_node(4)).await;
}

async fn write_or_invalidate_seen_fresh(url_a: &str, url_b: &str) {
    let prefix = unique("near_two");
    let table = Table::with([row(1, "v1")]);
    let a = instance(url_a, &prefix, &table).await;
    let b = instance(url_b, &prefix, &table).await;

    assert_eq!(name_of(&a, 1).await, (Some("v1".into()), Outcome::Miss));
    assert_eq!(name_of(&b, 1).await, (Some("v1".into()), Outcome::Hit));
    assert_eq!(name_of(&b, 1).await, (Some("v1".into()), Outcome::L1));

    // A write-through on A: B's near cache drops its copy.
    let written = a.put(&1, &row(1, "v2")).await.expect("put");
    assert_eq!(written.cache, CacheWrite::Updated);
    eventually("B reads v2 after A's write", || async {
        name_of(&b, 1).await.0.as_deref() == Some("v2")
    })
    .await;
    // ... and never the old value again, from L1 or anywhere.
    for _ in 0..20 {
        assert_eq!(name_of(&b, 1).await.0.as_deref(), Some("v2"));
    }
    assert_eq!(name_of(&b, 1).await.1, Outcome::L1, "B caches v2 in L1");

    // The database changes behind the caches; A invalidates.
    table.set(row(1, "v3"));
    a.invalidate(&1).await.expect("invalidate");
    eventually("B reads v3 after A's invalidate", || async {
        name_of(&b, 1).await.0.as_deref() == Some("v3")
    })
    .await;
    assert_eq!(name_of(&a, 1).await.0.as_deref(), Some("v3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_clears_the_near_cache_and_reads_stay_correct() {
    let server = RedisServer::start();
    killed_subscription_clears(&server.url(), &server).await;
}

/// On Redis Cluster: node 5 is the seed (so the subscription's node) of
/// this test's instances only, so killing its subscribers touches no other test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_killed_subscription_clears_the_near_cache_and_reads_stay_correct() {
    let cluster = support::RedisCluster::shared();
    killed_subscription_clears(&cluster.url_of_node(5), &cluster.nodes()[5]).await;
}

async fn killed_subscription_clears(url: &str, server: &RedisServer) {
    let prefix = unique("near_kill");
    let table = Table::with([row(1, "v1")]);
    let a = instance(url, &prefix, &table).await;
    let b = instance(url, &prefix, &table).await;
    name_of(&a, 1).await;
    assert_eq!(name_of(&a, 1).await, (Some("v1".into()), Outcome::L1));

    // Both subscribers lose their connection; B's write is published while
    // nobody listens, so A never hears of it.
    assert_eq!(server.kill_subscribers(), 2);
    table.set(row(1, "v2"));
    let written = b.put(&1, &row(1, "v2")).await.expect("put");
    assert_eq!(written.cache, CacheWrite::Updated);

    eventually("A notices the lost subscription", || async {
        a.stats().near.l1_clears == 1
    })
    .await;
    // The copy A could not vouch for is gone: A reads the new value.
    assert_eq!(name_of(&a, 1).await.0.as_deref(), Some("v2"));
    // Once subscribed again, A uses its near cache again.
    eventually("A answers from L1 again", || async {
        name_of(&a, 1).await == (Some("v2".into()), Outcome::L1)
    })
    .await;
    assert_eq!(a.stats().near.l1_clears, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_lost_while_redis_was_down_are_replayed_when_it_returns() {
    let mut server = RedisServer::durable();
    let url = server.url_with_short_timeouts();
    let prefix = unique("near_down");
    let table = Table::with([row(1, "v1"), row(2, "v1")]);
    let a = instance(&url, &prefix, &table).await;
    let b = instance(&url, &prefix, &table).await;
    for id in [1, 2] {
        name_of(&a, id).await;
        name_of(&b, id).await;
        assert_eq!(name_of(&b, id).await, (Some("v1".into()), Outcome::L1));
    }

    server.kill();
    // A write-through while Redis is down: the database takes it, the cache cannot.
    let written = a.put(&1, &row(1, "v2")).await.expect("put");
    assert_eq!(written.cache, CacheWrite::Unreachable);
    // A cache-aside invalidation that cannot reach Redis.
    table.set(row(2, "v2"));
    let refused = a.invalidate(&2).await.expect_err("Redis is down");
    assert!(refused.is_store_unavailable(), "{refused}");
    assert_eq!(a.stats().near.invalidations_pending, 2);

    // Redis comes back with the old entries (AOF): A delivers what it owes.
    server.restart();
    eventually("A replays both invalidations", || async {
        a.stats().near.invalidations_replayed == 2
    })
    .await;
    assert_eq!(a.stats().near.invalidations_pending, 0);
    for cache in [&a, &b] {
        for id in [1, 2] {
            // Several reads: through Redis, then from L1 again.
            for _ in 0..3 {
                let (name, outcome) = name_of(cache, id).await;
                assert_eq!(name.as_deref(), Some("v2"), "id {id}: {outcome}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_undelivered_invalidations_bump_the_generation_instead() {
    let mut server = RedisServer::durable();
    let url = server.url_with_short_timeouts();
    let prefix = unique("near_overflow");
    let table = Table::with((1..=3).map(|id| row(id, "v1")));
    let a = instance(&url, &prefix, &table).await;
    for id in 1..=3 {
        name_of(&a, id).await;
    }
    server.kill();
    // More than MAX_PENDING ids cannot be remembered one by one.
    let ids: Vec<String> = (1..=larder::MAX_PENDING as u64 + 1)
        .map(|i| i.to_string())
        .collect();
    assert!(a.invalidate_ids(&ids).await.is_err());
    assert_eq!(a.stats().near.invalidations_pending, 1, "one purge owed");
    for id in 1..=3 {
        table.set(row(id, "v2"));
    }
    // Redis comes back with the old entries (AOF); the owed purge makes
    // every one of them a miss.
    server.restart();
    eventually("A bumps the generation", || async {
        a.stats().near.generation_bumps == 1
    })
    .await;
    for id in 1..=3 {
        assert_eq!(name_of(&a, id).await.0.as_deref(), Some("v2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_misses_every_tagged_entry_and_leaves_the_others() {
    let url = support::redis_url();
    tag_misses_tagged_only(&url, &url).await;
}

/// On Redis Cluster, the instances on different nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_invalidate_tag_misses_every_tagged_entry_and_leaves_the_others() {
    let cluster = support::RedisCluster::shared();
    tag_misses_tagged_only(&cluster.url_of_node(1), &cluster.url_of_node(3)).await;
}

async fn tag_misses_tagged_only(url_a: &str, url_b: &str) {
    const N: u64 = 300;
    let prefix = unique("near_tags");
    let table = Table::with((0..N).map(|id| row(id, "v1")));
    let a = instance(url_a, &prefix, &table).await;
    let b = instance(url_b, &prefix, &table).await;
    for id in 0..N {
        name_of(&a, id).await;
        name_of(&b, id).await;
        assert_eq!(name_of(&b, id).await.1, Outcome::L1);
    }
    for id in (0..N).filter(|id| id % 3 == 1) {
        table.set(row(id, "v2"));
    }

    a.invalidate_tag("team:1").await.expect("invalidate_tag");
    eventually("B hears of the tag", || async {
        b.stats().near.invalidations_received == 1
    })
    .await;
    let loads = table.loads();
    for id in 0..N {
        let (name, outcome) = name_of(&b, id).await;
        if id % 3 == 1 {
            assert_eq!(
                (name.as_deref(), outcome),
                (Some("v2"), Outcome::Miss),
                "id {id}"
            );
        } else {
            assert_eq!(
                (name.as_deref(), outcome),
                (Some("v1"), Outcome::L1),
                "id {id}"
            );
        }
    }
    assert_eq!(table.loads() - loads, (N as usize).div_ceil(3));
    // A invalidated them too (it learnt the tag's generation itself); B's
    // fills are newer than the invalidation, so A finds them in Redis.
    for id in 0..N {
        let (name, outcome) = name_of(&a, id).await;
        let expected = if id % 3 == 1 { "v2" } else { "v1" };
        assert_eq!(name.as_deref(), Some(expected), "id {id}");
        if id % 3 == 1 {
            assert_eq!(outcome, Outcome::Hit, "id {id}");
        }
    }
    assert_eq!(
        table.loads() - loads,
        (N as usize).div_ceil(3),
        "A loaded nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_tags_and_purge_reach_every_instance() {
    let url = support::redis_url();
    tags_and_purge_reach_every_instance(&url, &url).await;
}

/// On Redis Cluster, the instances on different nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_put_with_tags_and_purge_reach_every_instance() {
    let cluster = support::RedisCluster::shared();
    tags_and_purge_reach_every_instance(&cluster.url_of_node(2), &cluster.url_of_node(0)).await;
}

async fn tags_and_purge_reach_every_instance(url_a: &str, url_b: &str) {
    let prefix = unique("near_purge");
    let table = Table::with((0..10).map(|id| row(id, "v1")));
    let a = instance(url_a, &prefix, &table).await;
    let b = instance(url_b, &prefix, &table).await;
    a.put_with_tags(&0, &row(0, "v1"), &["vip".into()])
        .await
        .expect("put");
    for id in 0..10 {
        // (A's put is announced on the bus: B may hear of it after its
        // first read, which then does not enter L1.)
        eventually(&format!("B answers id {id} from L1"), || async {
            name_of(&b, id).await.1 == Outcome::L1
        })
        .await;
    }
    a.invalidate_tag("vip").await.expect("tag");
    eventually("B drops the vip entry", || async {
        name_of(&b, 0).await.1 == Outcome::Miss
    })
    .await;
    assert_eq!(name_of(&b, 1).await.1, Outcome::L1, "untagged entry stays");

    a.purge().await.expect("purge");
    // Heard: the put's key, the tag, the purge.
    eventually("B hears of the purge", || async {
        b.stats().near.invalidations_received == 3
    })
    .await;
    let loads = table.loads();
    for id in 0..10 {
        assert_eq!(name_of(&b, id).await.1, Outcome::Miss, "id {id}");
    }
    assert_eq!(table.loads() - loads, 10);
    // A new instance reads the generation at start: it misses nothing B refilled,
    // and everything older than the purge stays a miss for it too.
    let c = instance(url_a, &prefix, &table).await;
    for id in 0..10 {
        assert_eq!(name_of(&c, id).await.1, Outcome::Hit, "id {id}");
    }
    let bad = a.put_with_tags(&1, &row(1, "x"), &[String::new()]).await;
    assert!(matches!(bad, Err(Error::InvalidTag { .. })), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_raced_with_an_invalidation_does_not_land_in_l1() {
    let prefix = unique("near_race");
    let table = Table::with([row(1, "v1"), row(2, "v1")]);
    let a = instance(&support::redis_url(), &prefix, &table).await;
    let b = instance(&support::redis_url(), &prefix, &table).await;

    // By this instance, and from another one over the bus.
    for (id, invalidator) in [(1, &a), (2, &b)] {
        let gate = table.hold();
        let reader = {
            let a = a.clone();
            tokio::spawn(async move { a.get(&id).await })
        };
        table.entered().await;
        // The load has started: the database changes and the key is invalidated.
        table.set(row(id, "v2"));
        invalidator.invalidate(&id).await.expect("invalidate");
        gate.add_permits(1);
        let raced = reader.await.expect("task").expect("get");
        assert_eq!(raced.outcome, Outcome::Miss);
        assert_eq!(raced.value.map(|r| r.name.clone()).as_deref(), Some("v1"));
        // The raced value landed nowhere: the next read loads v2.
        assert_eq!(
            name_of(&a, id).await,
            (Some("v2".into()), Outcome::Miss),
            "id {id}"
        );
        assert_eq!(name_of(&a, id).await, (Some("v2".into()), Outcome::L1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_count_exactly_what_they_claim() {
    let prefix = unique("near_counters");
    let table = Table::with((0..100).map(|id| row(id, "v1")));
    let a = instance(&support::redis_url(), &prefix, &table).await;
    let b = instance(&support::redis_url(), &prefix, &table).await;

    name_of(&a, 1).await; // L1 miss, then a store miss
    name_of(&a, 1).await; // L1 hit
    name_of(&a, 1).await; // L1 hit
    let near = a.stats().near;
    assert_eq!((near.l1_hits, near.l1_misses), (2, 1));
    assert_eq!(a.stats().reads(Outcome::L1), 2);

    a.invalidate(&1).await.expect("invalidate"); // 1 sent
    a.invalidate_ids(&["2".into(), "3".into()])
        .await
        .expect("invalidate_ids"); // 2 sent
    a.invalidate_tag("team:1").await.expect("tag"); // 1 sent
    a.purge().await.expect("purge"); // 1 sent
    a.put(&4, &row(4, "v2")).await.expect("put"); // 1 sent
    assert_eq!(a.stats().near.invalidations_sent, 6);
    eventually("B receives all six", || async {
        b.stats().near.invalidations_received == 6
    })
    .await;
    assert_eq!(b.stats().near.invalidations_sent, 0);
    assert_eq!(
        a.stats().near.invalidations_received,
        0,
        "own messages are not counted"
    );
    for s in [a.stats().near, b.stats().near] {
        assert_eq!((s.l1_clears, s.invalidations_replayed), (0, 0));
    }

    // Evictions: 60 distinct keys through a near cache of 10.
    let small: Cache<u64, Row> = Cache::builder()
        .prefix(prefix.as_str())
        .entity("rows")
        .store(store::connect(&support::redis_url()).await.expect("store"))
        .source(TableSource(table.clone()))
        .near(NearOptions {
            capacity: 10,
            ttl: Duration::from_secs(60),
        })
        .build()
        .await
        .expect("cache");
    for id in 40..100 {
        small.get(&id).await.expect("get");
    }
    small.sync_near().await;
    let s = small.stats().near;
    assert!(s.l1_entries <= 10, "{s:?}");
    assert_eq!(s.l1_evictions + s.l1_entries, 60, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_keeps_near_caches_coherent_in_process() {
    let store = store::connect("memory://").await.expect("store");
    let table = Table::with([row(1, "v1")]);
    let build = || {
        Cache::<u64, Row>::builder()
            .entity("rows")
            .store(store.clone())
            .source(TableSource(table.clone()))
            .near(near())
            .build()
    };
    let (a, b) = (build().await.expect("a"), build().await.expect("b"));
    name_of(&a, 1).await;
    name_of(&b, 1).await;
    assert_eq!(name_of(&b, 1).await.1, Outcome::L1);
    a.put(&1, &row(1, "v2")).await.expect("put");
    eventually("B reads v2", || async {
        name_of(&b, 1).await.0.as_deref() == Some("v2")
    })
    .await;
}

/// `get_many` with the store failing after some ids were answered by the
/// near cache: those answers stand (`l1`) and only the other ids go to the
/// source (`bypass`), instead of the whole call failing. The store's
/// `MGET` answer is held back by a proxy past `response_timeout`, while
/// the bus's connection stays up (so the near cache stays valid).
#[tokio::test]
async fn get_many_keeps_the_near_caches_answers_when_the_store_fails() {
    let table = Table::with([row(1, "v1"), row(2, "v1")]);
    let proxy = support::TcpProxy::start(support::redis_addr());
    let url = format!("redis://{}/0?response_timeout=300ms", proxy.addr());
    let cache = instance(&url, &unique("nb"), &table).await;
    eventually("id 1 is answered by the near cache", || async {
        name_of(&cache, 1).await.1 == Outcome::L1
    })
    .await;
    proxy.hold_after(b"MGET");
    let answers = cache.get_many(&[&1, &2]).await.expect("get_many");
    proxy.release();
    assert_eq!(proxy.holds(), 1, "the MGET was held");
    let got: Vec<(Option<String>, Outcome)> = answers
        .iter()
        .map(|l| (l.value.as_ref().map(|r| r.name.clone()), l.outcome))
        .collect();
    assert_eq!(
        got,
        [
            (Some("v1".to_owned()), Outcome::L1),
            (Some("v1".to_owned()), Outcome::Bypass)
        ]
    );
}
