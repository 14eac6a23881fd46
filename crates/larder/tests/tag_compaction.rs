//! Bounded tag generations: a tag idle past the horizon is compacted away,
//! in the store and in every process, and an entry it invalidated is never
//! served again — against the memory store and the shared Redis (isolated
//! by a unique prefix), and under write-back against Redis.
//!
//! Time is larder's [`ManualClock`]: the tests move it past the horizon
//! instead of sleeping; waits poll with a deadline for a signal.

use larder_test_support as support;

use bytes::Bytes;
use larder::store::{MemoryStore, Store};
use larder::{Cache, CacheBuilder, ManualClock, Outcome, WriteBackOptions, WritePolicy};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, unique, Keyed, TableSource};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    team: u64,
    name: String,
}

fn row(id: u64, team: u64, name: &str) -> Row {
    Row {
        id,
        team,
        name: name.into(),
    }
}

impl Keyed for Row {
    fn key(&self) -> u64 {
        self.id
    }
}

/// The database behind the caches of one test.
type Table = support::Table<Row>;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Redis,
    Cluster,
}

/// One test's world: a store, a table, a clock, a prefix.
struct World {
    store: Arc<dyn Store>,
    table: Arc<Table>,
    clock: ManualClock,
    prefix: String,
}

impl World {
    async fn new(kind: Kind, name: &str) -> World {
        let store: Arc<dyn Store> = match kind {
            Kind::Memory => Arc::new(MemoryStore::new(10_000)),
            Kind::Redis => support::redis_store().await,
            Kind::Cluster => support::RedisCluster::shared().store().await,
        };
        World {
            store,
            table: Table::with((1..=3).map(|id| row(id, 1, "v1"))),
            clock: ManualClock::new(),
            prefix: unique(name),
        }
    }

    /// The settings every cache of the test shares: tags from the row's
    /// team, stamps checked against the generations, no near cache (so
    /// every read meets the store's entry), ttl 1 s without jitter.
    fn builder(&self) -> CacheBuilder<u64, Row> {
        Cache::builder()
            .prefix(&self.prefix)
            .entity("rows")
            .store(self.store.clone())
            .source(TableSource(self.table.clone()))
            .clock(self.clock.clone())
            .ttl(Duration::from_secs(1))
            .jitter(0.0)
            .early_refresh(0.0)
            .bus(true)
            .tagger(|r: &Row| vec![format!("team:{}", r.team)])
    }

    /// A read-through instance with one shard (so a test can name the
    /// value key).
    async fn instance(&self) -> Cache<u64, Row> {
        self.builder().shards(1).build().await.expect("cache")
    }

    fn generations_key(&self) -> String {
        format!("{}:{{rows}}:gen", self.prefix)
    }

    /// The generation hash's fields, as the store holds them.
    async fn fields(&self) -> HashMap<String, u64> {
        self.store
            .generations(&self.generations_key(), 1)
            .await
            .expect("generations")
            .into_iter()
            .collect()
    }

    async fn tag_in_store(&self, tag: &str) -> bool {
        let fields = self.fields().await;
        let (seq, at) = (format!("t:{tag}"), format!("a:{tag}"));
        assert_eq!(
            fields.contains_key(&seq),
            fields.contains_key(&at),
            "a tag's seq and time come and go together"
        );
        fields.contains_key(&seq)
    }

    fn past(&self, cache: &Cache<u64, Row>, beyond: Duration) {
        self.clock.advance(cache.tag_horizon() + beyond);
    }
}

async fn a_tag_idle_past_the_horizon_is_gone_from_the_store_and_every_process(kind: Kind) {
    let w = World::new(kind, "tc_gone").await;
    let (a, b) = (w.instance().await, w.instance().await);
    a.invalidate_tag("team:1").await.expect("tag");
    assert!(w.tag_in_store("team:1").await);
    assert_eq!(a.invalidated_tags(), vec!["team:1".to_owned()]);
    eventually("B hears of the tag", || async {
        b.invalidated_tags() == vec!["team:1".to_owned()]
    })
    .await;

    w.past(&a, Duration::from_millis(1));
    assert_eq!(
        a.compact_tags().await.expect("compact"),
        vec!["team:1".to_owned()]
    );
    assert!(!w.tag_in_store("team:1").await, "gone from the store");
    assert!(w.fields().await.contains_key("compacted"), "floor recorded");
    assert!(a.invalidated_tags().is_empty(), "gone from A's map");
    eventually("B drops the compacted tag", || async {
        b.invalidated_tags().is_empty()
    })
    .await;
    // A second pass finds nothing more.
    assert!(a.compact_tags().await.expect("again").is_empty());
}

async fn a_tag_is_not_compacted_before_the_horizon(kind: Kind) {
    let w = World::new(kind, "tc_early").await;
    let a = w.instance().await;
    a.invalidate_tag("team:1").await.expect("tag");
    assert!(a.compact_tags().await.expect("compact").is_empty());
    // Idle exactly the horizon: not longer than it yet.
    w.clock.advance(a.tag_horizon());
    assert!(a.compact_tags().await.expect("compact").is_empty());
    assert!(w.tag_in_store("team:1").await);
    assert_eq!(a.invalidated_tags(), vec!["team:1".to_owned()]);
    // A new invalidation restarts the idle time.
    a.invalidate_tag("team:1").await.expect("tag again");
    w.clock.advance(Duration::from_millis(1));
    assert!(a.compact_tags().await.expect("compact").is_empty());
    assert!(w.tag_in_store("team:1").await);
    w.past(&a, Duration::ZERO);
    assert_eq!(
        a.compact_tags().await.expect("compact"),
        vec!["team:1".to_owned()]
    );
    assert!(!w.tag_in_store("team:1").await);
}

async fn compaction_runs_in_the_background(kind: Kind) {
    let w = World::new(kind, "tc_background").await;
    let (a, b) = (w.instance().await, w.instance().await);
    a.invalidate_tag("team:1").await.expect("tag");
    eventually("B hears of the tag", || async {
        b.invalidated_tags() == vec!["team:1".to_owned()]
    })
    .await;
    w.past(&a, Duration::from_millis(1));
    // Nobody calls compact_tags: the caches' own task does (every second
    // for this horizon).
    eventually("the store drops the tag", || async {
        !w.tag_in_store("team:1").await
    })
    .await;
    eventually("both processes drop the tag", || async {
        a.invalidated_tags().is_empty() && b.invalidated_tags().is_empty()
    })
    .await;
}

/// Plants `entry` (an envelope read from the store) again, made fresh for
/// an hour of the test's clock: an entry stamped before the invalidation
/// that is still alive (a late fill, a slow flush), the worst case.
///
/// The times are rewritten in place, at their offsets in the envelope's
/// fixed header (bytes 4..12 `fresh_until`, 12..20 `stale_until`, ms since
/// the epoch, big-endian; see `envelope.rs`); the stamp and payload stay.
async fn plant(w: &World, entry: &Bytes) {
    let mut env = entry.to_vec();
    assert!(env.len() >= 24 && env[0] == b'L', "a larder envelope");
    let now = larder::Clock::now_ms(&w.clock);
    let until = (now + 3_600_000).to_be_bytes();
    env[4..12].copy_from_slice(&until);
    env[12..20].copy_from_slice(&until);
    let prefix = &w.prefix;
    w.store
        .set(
            &format!("{prefix}:{{rows:0}}:v:1"),
            &format!("{prefix}:{{rows:0}}:l:1"),
            &env,
            Duration::from_secs(3600),
        )
        .await
        .expect("plant");
}

async fn read(cache: &Cache<u64, Row>) -> (Outcome, Option<String>) {
    let got = cache.get(&1).await.expect("get");
    (got.outcome, got.value.map(|r| r.name.clone()))
}

async fn an_invalidated_entry_is_a_miss_up_to_and_after_compaction(kind: Kind) {
    let w = World::new(kind, "tc_never").await;
    let a = w.instance().await;
    assert_eq!(read(&a).await, (Outcome::Miss, Some("v1".into())));
    assert_eq!(read(&a).await, (Outcome::Hit, Some("v1".into())));
    let prefix = &w.prefix;
    let old = w
        .store
        .get(&format!("{prefix}:{{rows:0}}:v:1"))
        .await
        .expect("get")
        .expect("the filled entry");

    w.table.set(row(1, 1, "v2"));
    a.invalidate_tag("team:1").await.expect("tag");
    let v2 = (Outcome::Miss, Some("v2".to_owned()));
    plant(&w, &old).await;
    assert_eq!(read(&a).await, v2, "right after the invalidation");
    // Right up to the horizon: compaction declines, the entry stays a miss.
    w.clock.advance(a.tag_horizon());
    assert!(a.compact_tags().await.expect("compact").is_empty());
    plant(&w, &old).await;
    assert_eq!(read(&a).await, v2, "at the horizon");
    // Compacted: the tag is gone, the entry stamped before it is still a miss.
    w.clock.advance(Duration::from_millis(1));
    assert_eq!(
        a.compact_tags().await.expect("compact"),
        vec!["team:1".to_owned()]
    );
    assert!(!w.tag_in_store("team:1").await);
    plant(&w, &old).await;
    assert_eq!(read(&a).await, v2, "after compaction");
    // A process that starts after the compaction knows the tag only by
    // the floor, and misses it too.
    let late = w.instance().await;
    assert!(late.invalidated_tags().is_empty());
    plant(&w, &old).await;
    assert_eq!(read(&late).await, v2, "a process started after compaction");
    // Entries filled since are current: the floor costs them nothing.
    assert_eq!(read(&late).await, (Outcome::Hit, Some("v2".into())));
    assert_eq!(read(&a).await, (Outcome::Hit, Some("v2".into())));
}

async fn generation_fields_stay_bounded_as_distinct_tags_come_and_go(kind: Kind) {
    const ROUNDS: usize = 20;
    const PER_ROUND: usize = 10;
    let w = World::new(kind, "tc_bounded").await;
    let a = w.instance().await;
    let step = a.tag_horizon() / 2 + Duration::from_millis(1);
    let mut most = 0;
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            a.invalidate_tag(&format!("r{round}:{i}"))
                .await
                .expect("tag");
        }
        w.clock.advance(step);
        a.compact_tags().await.expect("compact");
        let fields = w.fields().await.len();
        most = most.max(fields);
        // seq, compacted, and two fields per tag of the last two rounds.
        assert!(
            fields <= 2 + 2 * 2 * PER_ROUND,
            "round {round}: {fields} fields"
        );
        assert!(a.invalidated_tags().len() <= 2 * PER_ROUND);
    }
    assert!(most > 2, "tags were there to compact");
    w.past(&a, Duration::ZERO);
    a.compact_tags().await.expect("compact");
    let mut left: Vec<String> = w.fields().await.into_keys().collect();
    left.sort();
    assert_eq!(left, vec!["compacted".to_owned(), "seq".to_owned()]);
    assert!(a.invalidated_tags().is_empty());
}

async fn a_tag_without_an_invalidation_time_is_compacted_a_horizon_later(kind: Kind) {
    let w = World::new(kind, "tc_legacy").await;
    let a = w.instance().await;
    // As an older larder wrote it: the tag's seq, no time.
    w.store
        .bump_generation(&w.generations_key(), "t:old", 1, None)
        .await
        .expect("bump");
    w.clock.advance(Duration::from_secs(24 * 3600));
    assert!(a.compact_tags().await.expect("compact").is_empty());
    assert!(w.fields().await.contains_key("a:old"), "given a time now");
    w.past(&a, Duration::from_millis(1));
    assert_eq!(
        a.compact_tags().await.expect("compact"),
        vec!["old".to_owned()]
    );
    assert!(!w.tag_in_store("old").await);
}

macro_rules! every_store {
    ($($name:ident),* $(,)?) => {
        mod memory { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Kind::Memory).await } )* }
        mod redis { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Kind::Redis).await } )* }
        mod cluster { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Kind::Cluster).await } )* }
    };
}

every_store!(
    a_tag_idle_past_the_horizon_is_gone_from_the_store_and_every_process,
    a_tag_is_not_compacted_before_the_horizon,
    compaction_runs_in_the_background,
    an_invalidated_entry_is_a_miss_up_to_and_after_compaction,
    generation_fields_stay_bounded_as_distinct_tags_come_and_go,
    a_tag_without_an_invalidation_time_is_compacted_a_horizon_later,
);

/// Write-back (Redis only: the memory store cannot hold acknowledged
/// writes): a tag invalidated after a still-pending dirty record became
/// dirty stays until the record is flushed; one invalidated before it
/// goes at the horizon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_stays_while_an_older_dirty_record_is_pending() {
    let w = World::new(Kind::Redis, "tc_dirty").await;
    let max_delay = Duration::from_secs(3600);
    let cache: Cache<u64, Row> = w
        .builder()
        .shards(4)
        .write_policy(WritePolicy::Back(WriteBackOptions {
            max_delay,
            require_durable: false,
            ..WriteBackOptions::default()
        }))
        .build()
        .await
        .expect("write-back cache");

    cache.invalidate_tag("before").await.expect("tag");
    w.clock.advance(Duration::from_millis(1));
    cache.put(&1, &row(1, 7, "dirty")).await.expect("put");
    w.clock.advance(Duration::from_millis(1));
    cache.invalidate_tag("after").await.expect("tag");
    cache.invalidate_tag("team:7").await.expect("tag");

    // Past the horizon, but the record (not due for an hour) is pending.
    w.past(&cache, Duration::from_millis(1));
    assert_eq!(cache.write_back_stats().expect("stats").backlog, 1);
    assert_eq!(
        cache.compact_tags().await.expect("compact"),
        vec!["before".to_owned()],
        "only the tag invalidated before the record became dirty goes"
    );
    assert!(w.tag_in_store("after").await && w.tag_in_store("team:7").await);
    assert_eq!(
        cache.invalidated_tags(),
        vec!["after".to_owned(), "team:7".to_owned()]
    );
    // The pending write is still the answer.
    let got = cache.get(&1).await.expect("get");
    assert_eq!(got.value.as_deref(), Some(&row(1, 7, "dirty")));

    // The record falls due and is flushed; then the tags go.
    w.clock.advance(max_delay);
    eventually("the record is flushed", || async {
        w.table.get(1) == Some(row(1, 7, "dirty"))
    })
    .await;
    // The flusher clears the record just after the row lands.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut removed = Vec::new();
    while removed.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "tags never compacted after the flush: {removed:?}"
        );
        removed.extend(cache.compact_tags().await.expect("compact"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    removed.sort();
    assert_eq!(removed, vec!["after".to_owned(), "team:7".to_owned()]);
    assert!(!w.tag_in_store("after").await && !w.tag_in_store("team:7").await);
    assert!(cache.invalidated_tags().is_empty());
    // The flushed row, stamped after, is still served.
    let got = cache.get(&1).await.expect("get");
    assert_eq!(got.value.as_deref(), Some(&row(1, 7, "dirty")));
    cache.close(Duration::from_secs(5)).await.expect("close");
}
