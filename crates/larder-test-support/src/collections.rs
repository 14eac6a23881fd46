//! What the collection tests (sets, feeds, leaderboards) share: source
//! wrappers that count what reaches the database, slow loads down or hold
//! them at a gate, and a PostgreSQL schema of a test's own.
//!
//! Why here: each collection test proves the same claims (one load per
//! expiry, hits that never reach the database, a fill refused after a
//! write) with the same instruments; one definition keeps them honest
//! alike. The wrappers forward everything else to the real source.

use async_trait::async_trait;
use larder::{
    BoardLoad, BoardSource, FeedItem, FeedSource, ScoreKind, SetLoad, SetOrder, SetSource,
};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// A source wrapper that counts loads and database reads, can slow loads
/// down, and can hold a committed leaderboard increment at a gate.
///
/// - `loads`: whole loads (a feed's: its loads from offset 0);
/// - `db_reads`: a set's membership, page and count queries;
/// - `delay`: slept before every load;
/// - `gate`: when set, an increment that committed notifies the first and
///   waits for a permit of the second (taken for good) before it returns.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    /// The real source.
    pub inner: S,
    /// Loads so far.
    pub loads: Arc<AtomicUsize>,
    /// A set's database reads so far.
    pub db_reads: Arc<AtomicUsize>,
    /// How long each load sleeps first.
    pub delay: Duration,
    /// Where a committed increment waits: (committed, go).
    pub gate: Option<(Arc<Notify>, Arc<Semaphore>)>,
}

impl<S> Counted<S> {
    /// Counts the loads and reads of `inner`, each load `delay` slower; no gate.
    pub fn new(inner: S, delay: Duration) -> Counted<S> {
        Counted {
            inner,
            loads: Arc::default(),
            db_reads: Arc::default(),
            delay,
            gate: None,
        }
    }

    async fn loading(&self) {
        self.loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
    }

    fn reading(&self) {
        self.db_reads.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl<S: SetSource> SetSource for Counted<S> {
    fn order(&self) -> SetOrder {
        self.inner.order()
    }
    fn canonical_owner(&self, raw: &str) -> larder::Result<String> {
        self.inner.canonical_owner(raw)
    }
    fn canonical_member(&self, raw: &str) -> larder::Result<String> {
        self.inner.canonical_member(raw)
    }
    async fn load(&self, owner: &str, max: u64) -> larder::Result<SetLoad> {
        self.loading().await;
        self.inner.load(owner, max).await
    }
    async fn contains(&self, owner: &str, member: &str) -> larder::Result<bool> {
        self.reading();
        self.inner.contains(owner, member).await
    }
    async fn page(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: usize,
    ) -> larder::Result<Vec<String>> {
        self.reading();
        self.inner.page(owner, after, limit).await
    }
    async fn count(&self, owner: &str) -> larder::Result<u64> {
        self.reading();
        self.inner.count(owner).await
    }
    async fn add(&self, owner: &str, member: &str) -> larder::Result<bool> {
        self.inner.add(owner, member).await
    }
    async fn remove(&self, owner: &str, member: &str) -> larder::Result<bool> {
        self.inner.remove(owner, member).await
    }
}

#[async_trait]
impl<S: BoardSource> BoardSource for Counted<S> {
    fn score_kind(&self) -> ScoreKind {
        self.inner.score_kind()
    }
    fn canonical_owner(&self, raw: &str) -> larder::Result<String> {
        self.inner.canonical_owner(raw)
    }
    fn canonical_member(&self, raw: &str) -> larder::Result<String> {
        self.inner.canonical_member(raw)
    }
    async fn load(&self, owner: &str, max: u64) -> larder::Result<BoardLoad> {
        self.loading().await;
        self.inner.load(owner, max).await
    }
    async fn top(
        &self,
        owner: &str,
        offset: u64,
        limit: u64,
    ) -> larder::Result<Vec<(String, f64)>> {
        self.inner.top(owner, offset, limit).await
    }
    async fn member(&self, owner: &str, member: &str) -> larder::Result<Option<(f64, u64)>> {
        self.inner.member(owner, member).await
    }
    async fn count(&self, owner: &str) -> larder::Result<u64> {
        self.inner.count(owner).await
    }
    async fn incr(&self, owner: &str, member: &str, by: f64) -> larder::Result<f64> {
        let score = self.inner.incr(owner, member, by).await;
        if let Some((committed, go)) = &self.gate {
            committed.notify_one();
            go.acquire().await.expect("gate").forget();
        }
        score
    }
    async fn set_score(&self, owner: &str, member: &str, score: f64) -> larder::Result<f64> {
        self.inner.set_score(owner, member, score).await
    }
    async fn remove(&self, owner: &str, member: &str) -> larder::Result<bool> {
        self.inner.remove(owner, member).await
    }
}

#[async_trait]
impl<S: FeedSource> FeedSource for Counted<S> {
    fn canonical_owner(&self, raw: &str) -> larder::Result<String> {
        self.inner.canonical_owner(raw)
    }
    fn canonical_item(&self, raw: &str) -> larder::Result<String> {
        self.inner.canonical_item(raw)
    }
    fn compare(&self, a: &str, b: &str) -> std::cmp::Ordering {
        self.inner.compare(a, b)
    }
    /// A load from offset 0 is a feed's load; any other is a database page.
    async fn load(&self, owner: &str, offset: u64, limit: u64) -> larder::Result<Vec<FeedItem>> {
        if offset == 0 {
            self.loads.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(self.delay).await;
        self.inner.load(owner, offset, limit).await
    }
    async fn append(&self, owner: &str, row: &Map<String, Value>) -> larder::Result<FeedItem> {
        self.inner.append(owner, row).await
    }
    async fn delete(&self, owner: &str, item: &str) -> larder::Result<bool> {
        self.inner.delete(owner, item).await
    }
}

/// A set source that holds its loads at a gate: the load has read the
/// database (`loaded` is notified), the fill has not run yet; each load
/// then waits for a permit of `go` (given back when it returns).
#[derive(Debug, Clone)]
pub struct Gated<S> {
    /// The real source.
    pub inner: S,
    /// Notified once a load has read the database.
    pub loaded: Arc<Notify>,
    /// A load returns once it has a permit.
    pub go: Arc<Semaphore>,
}

impl<S> Gated<S> {
    /// Gates the loads of `inner`, with `permits` loads let through at first.
    pub fn new(inner: S, permits: usize) -> Gated<S> {
        Gated {
            inner,
            loaded: Arc::default(),
            go: Arc::new(Semaphore::new(permits)),
        }
    }
}

#[async_trait]
impl<S: SetSource> SetSource for Gated<S> {
    fn order(&self) -> SetOrder {
        self.inner.order()
    }
    fn canonical_owner(&self, raw: &str) -> larder::Result<String> {
        self.inner.canonical_owner(raw)
    }
    fn canonical_member(&self, raw: &str) -> larder::Result<String> {
        self.inner.canonical_member(raw)
    }
    async fn load(&self, owner: &str, max: u64) -> larder::Result<SetLoad> {
        let load = self.inner.load(owner, max).await;
        self.loaded.notify_one();
        let _permit = self.go.acquire().await.expect("gate");
        load
    }
    async fn contains(&self, owner: &str, member: &str) -> larder::Result<bool> {
        self.inner.contains(owner, member).await
    }
    async fn page(&self, o: &str, a: Option<&str>, l: usize) -> larder::Result<Vec<String>> {
        self.inner.page(o, a, l).await
    }
    async fn count(&self, owner: &str) -> larder::Result<u64> {
        self.inner.count(owner).await
    }
    async fn add(&self, owner: &str, member: &str) -> larder::Result<bool> {
        self.inner.add(owner, member).await
    }
    async fn remove(&self, owner: &str, member: &str) -> larder::Result<bool> {
        self.inner.remove(owner, member).await
    }
    async fn prepare_write_back(&self, fence: &str, shards: u16) -> larder::Result<()> {
        self.inner.prepare_write_back(fence, shards).await
    }
    async fn flush(&self, batch: larder::BoardBatch<'_>) -> larder::Result<larder::BoardFlushed> {
        self.inner.flush(batch).await
    }
}

/// A PostgreSQL schema of the test's own on the shared server, with an
/// admin pool (2 connections) to set up and check the tables behind the
/// cache's back. [`drop`](PgSchema::drop) it at the end of the test.
#[derive(Debug)]
pub struct PgSchema {
    /// A pool of 2 connections for checks made behind the cache's back.
    pub admin: sqlx::PgPool,
    /// The schema's name.
    pub schema: String,
}

impl PgSchema {
    /// Creates a unique schema named after `prefix`, then runs the
    /// statements `tables` makes of the schema's name (its tables and
    /// indexes).
    pub async fn new(prefix: &str, tables: impl FnOnce(&str) -> Vec<String>) -> PgSchema {
        let schema = crate::unique(prefix);
        let admin = crate::pg_pool(2).await;
        let create = format!("CREATE SCHEMA {schema}");
        for sql in std::iter::once(create).chain(tables(&schema)) {
            sqlx::query(&sql).execute(&admin).await.expect(&sql);
        }
        PgSchema { admin, schema }
    }

    /// A pool of 4 connections for a source under test.
    pub async fn source_pool(&self) -> larder::SqlPool {
        larder::SqlPool::connect(&crate::pg_url(), 4)
            .await
            .expect("pool")
    }

    /// `table` qualified with the schema.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.schema)
    }

    /// Drops the schema and everything in it.
    pub async fn drop(&self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.admin)
            .await
            .expect("drop schema");
    }
}

/// Deletes the value key (`…:v:<owner>`) of every cached collection under
/// `prefix` in the shared Redis, leaving the meta: what an eviction of the
/// value alone leaves behind. Returns how many keys it deleted.
pub async fn evict_values(prefix: &str) -> usize {
    let mut conn = redis::Client::open(crate::redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:v:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    for key in &keys {
        let () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
    keys.len()
}
