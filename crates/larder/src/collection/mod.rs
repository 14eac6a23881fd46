//! Cached collections: an owner's rows (the followers of a user, the
//! visitors of a page) cached whole under one key in the owner's shard,
//! with a meta key beside it.
//!
//! Why a machinery of its own: an entity's guarantees (one load per expiry
//! across processes, no stale value after a write, writers converge) must
//! hold for collections too, but a collection is not one value: it is read
//! in parts (a membership, a page, a count) and written a member at a time.
//! What is shared by every kind of collection lives here ([`Core`]): the
//! key layout and the settings, and in [`read_through`] the read, the
//! lease loop with its single flight, and the chunked fill; each kind adds
//! its reads and its write ends ([`set`]: sets, [`feed`]: feeds,
//! [`board`]: leaderboards).
//!
//! # The protocol (see `store/collection.rs`)
//! - **Read**: one script (sets) or one `MULTI`/`EXEC` (feeds, leaderboards)
//!   reads meta and value together, atomically (one round trip).
//! - **Fill**: under the owner's lease (taken with `SET NX`, one flight per
//!   process); the loaded members go in chunks into a staging key, and the
//!   last chunk, if its token still holds the lease, renames staging over
//!   the value and writes the meta. Readers never see a partial collection.
//! - **Write**: a write ticket per owner (as for entities): the database
//!   first, then the cached collection is changed in place if it is cached
//!   and no other write or invalidation of the owner overlapped; otherwise
//!   it is deleted. A write never creates a collection.
//! - **Invalidate**: meta, value, staging and lease go in one step, and a
//!   write in flight is told (its end deletes).
//! - **Write-back** (sets and leaderboards): one script changes the cached
//!   collection (when cached whole) and a durable per-member operation and
//!   voids the lease; the flusher of `board_flush.rs` commits the
//!   operations behind the fence (see `board_write_back.rs`,
//!   `set_write_back.rs`).

pub(crate) mod board;
mod board_flush;
mod board_write_back;
pub(crate) mod feed;
mod read_through;
pub(crate) mod set;
mod set_write_back;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::key::{KeyKind, KeySpace};
use crate::store::{CollectionKeys, Collections, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use board::{
    BoardLoad, BoardPage, BoardSource, Leaderboard, LeaderboardBuilder, Ranked, ScoreKind,
    BOARD_FILL_CHUNK, DEFAULT_MAX_BOARD_MEMBERS, MAX_BOARD_OFFSET, MAX_BOARD_PAGE,
};
pub use board_flush::{arm_after_board_commit, arm_stall_after_board_claim};
pub use board_write_back::{BoardBatch, BoardFlushed};
pub use feed::{FeedCache, FeedCacheBuilder, FeedPage, MAX_FEED_OFFSET, MAX_FEED_PAGE};
pub use set::{SetCache, SetCacheBuilder, SetPage, DEFAULT_MAX_MEMBERS, MAX_SET_PAGE};

/// How a set orders its members, in Redis and in the database alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOrder {
    /// By the bytes of the member's canonical text (PostgreSQL
    /// `COLLATE "C"`, SQLite `BINARY`, Redis `BYLEX`).
    Bytes,
    /// Integer members, numerically (Redis: the member is its score).
    Integer,
}

/// What a [`SetSource`] loaded for one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetLoad {
    /// Every member, in the set's order.
    Members(Vec<String>),
    /// More than the cap: only the count.
    TooMany(u64),
}

/// Where a [`SetCache`] reads and writes its members: a table of
/// `(owner, member)` rows ([`SqlSetSource`](crate::SqlSetSource)) or any
/// implementation with the same order in every answer.
#[async_trait::async_trait]
pub trait SetSource: std::fmt::Debug + Send + Sync + 'static {
    /// The order of every answer.
    fn order(&self) -> SetOrder;
    /// The canonical form of an owner id ([`Error::InvalidId`] if it cannot be one).
    fn canonical_owner(&self, raw: &str) -> Result<String>;
    /// The canonical form of a member ([`Error::InvalidId`] if it cannot be one).
    fn canonical_member(&self, raw: &str) -> Result<String>;
    /// Every member of `owner` in order, or the count if above `max`: one
    /// indexed query (two when above).
    async fn load(&self, owner: &str, max: u64) -> Result<SetLoad>;
    /// Whether `member` belongs to `owner`'s set.
    async fn contains(&self, owner: &str, member: &str) -> Result<bool>;
    /// Up to `limit` members after `after` (exclusive), in order.
    async fn page(&self, owner: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>>;
    /// The number of members.
    async fn count(&self, owner: &str) -> Result<u64>;
    /// Adds a member; whether it was added (`false`: already there).
    async fn add(&self, owner: &str, member: &str) -> Result<bool>;
    /// Removes a member; whether it was there.
    async fn remove(&self, owner: &str, member: &str) -> Result<bool>;

    /// Which of `members` belong to `owner`'s set. Default: one
    /// [`contains`](SetSource::contains) per member; a SQL source asks
    /// once per 1,000.
    async fn present(&self, owner: &str, members: &[&str]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for m in members {
            if self.contains(owner, m).await? {
                out.push((*m).to_owned());
            }
        }
        Ok(out)
    }

    /// Prepares write-back: the fence rows of `fence` (`<prefix>:<set>`),
    /// one per shard. Default: write-back unsupported.
    async fn prepare_write_back(&self, fence: &str, shards: u16) -> Result<()> {
        let _ = (fence, shards);
        Err(Error::Config(
            "this set source cannot be written back".into(),
        ))
    }

    /// Commits a write-back batch of member operations (an absolute score:
    /// add the member; a removal: remove it) in one fenced transaction, or
    /// nothing (see [`BoardBatch`]). Default: unsupported.
    async fn flush(&self, batch: BoardBatch<'_>) -> Result<BoardFlushed> {
        let _ = batch;
        Err(Error::Config(
            "this set source cannot be written back".into(),
        ))
    }
}

/// One item of a feed, as a [`FeedSource`] produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    /// The item's id (canonical text).
    pub id: String,
    /// Its sort key: a JSON array the source compares ([`FeedSource::compare`]).
    pub sort: String,
    /// The item's row, as JSON text.
    pub row: String,
}

/// Where a [`FeedCache`] reads and writes its items: a table grouped by
/// an owner column, in one order ([`SqlFeedSource`](crate::SqlFeedSource)).
#[async_trait::async_trait]
pub trait FeedSource: std::fmt::Debug + Send + Sync + 'static {
    /// The canonical form of an owner id.
    fn canonical_owner(&self, raw: &str) -> Result<String>;
    /// The canonical form of an item id.
    fn canonical_item(&self, raw: &str) -> Result<String>;
    /// Compares two sort keys in feed order (`Less`: `a` comes first).
    fn compare(&self, a: &str, b: &str) -> std::cmp::Ordering;
    /// Up to `limit` items of `owner` from `offset`, in feed order: one indexed query.
    async fn load(&self, owner: &str, offset: u64, limit: u64) -> Result<Vec<FeedItem>>;
    /// Inserts a row into `owner`'s feed (its owner column, if given, must
    /// be `owner`); the stored item.
    async fn append(
        &self,
        owner: &str,
        row: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<FeedItem>;
    /// Deletes an item; whether it was there.
    async fn delete(&self, owner: &str, item: &str) -> Result<bool>;
}

/// How a collection read was answered (the `X-Cache` word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionOutcome {
    /// From the cached collection.
    Hit,
    /// Loaded (and filled, unless another holder filled or a write voided the lease).
    Miss,
    /// From the database: the owner is above the cap (its count cached).
    Database,
    /// The store is unavailable: from the database.
    Bypass,
    /// From the cached collection past its TTL, inside the stale window;
    /// one refresh runs in the background.
    Stale,
}

impl CollectionOutcome {
    /// `hit`, `miss`, `db`, `bypass` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            CollectionOutcome::Hit => "hit",
            CollectionOutcome::Miss => "miss",
            CollectionOutcome::Database => "db",
            CollectionOutcome::Bypass => "bypass",
            CollectionOutcome::Stale => "stale",
        }
    }
}

/// A collection read's answer and how it was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionRead<T> {
    /// The answer.
    pub value: T,
    /// How it was answered.
    pub outcome: CollectionOutcome,
}

/// Counters of one collection, read without locks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CollectionStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that found nothing cached.
    pub misses: u64,
    /// Reads answered from the database (above the cap).
    pub database: u64,
    /// Reads answered from the database because the store failed.
    pub bypass: u64,
    /// Reads answered from a collection past its TTL, inside the stale
    /// window, while one refresh loads it again.
    pub stale: u64,
    /// Loads from the source (one per fill, or per waiter past `wait_timeout`).
    pub loads: u64,
    /// Fills that landed.
    pub fills: u64,
    /// Fills refused (the lease was voided by a write or an invalidation).
    pub fills_refused: u64,
    /// Waits for another holder's fill.
    pub lease_waits: u64,
    /// Writes whose end updated the cached collection in place.
    pub writes_applied: u64,
    /// Writes whose end deleted the cached collection (or found none).
    pub writes_deleted: u64,
    /// Members in the last collection loaded (a size figure).
    pub last_size: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) database: AtomicU64,
    pub(crate) bypass: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) fills: AtomicU64,
    pub(crate) fills_refused: AtomicU64,
    pub(crate) lease_waits: AtomicU64,
    pub(crate) writes_applied: AtomicU64,
    pub(crate) writes_deleted: AtomicU64,
    pub(crate) last_size: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> CollectionStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CollectionStats {
            hits: r(&self.hits),
            misses: r(&self.misses),
            database: r(&self.database),
            bypass: r(&self.bypass),
            stale: r(&self.stale),
            loads: r(&self.loads),
            fills: r(&self.fills),
            fills_refused: r(&self.fills_refused),
            lease_waits: r(&self.lease_waits),
            writes_applied: r(&self.writes_applied),
            writes_deleted: r(&self.writes_deleted),
            last_size: r(&self.last_size),
        }
    }
}

/// The settings every kind of collection shares.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// How long a loaded collection is fresh.
    pub(crate) ttl: Duration,
    /// How long past `ttl` it is kept and served while one refresh runs.
    pub(crate) stale: Duration,
    /// How long a loader owns an owner's lease.
    pub(crate) lease_ttl: Duration,
    /// How long a reader waits for another holder's fill before loading itself.
    pub(crate) wait_timeout: Duration,
    /// How long a write's bookkeeping lives without a write.
    pub(crate) write_ttl: Duration,
}

impl Settings {
    /// How long the store keeps a filled collection: fresh, then stale.
    pub(crate) fn kept(&self) -> Duration {
        self.ttl.saturating_add(self.stale)
    }
}

/// The builder settings every kind of collection shares (name, prefix,
/// shards, store, TTLs, clock) and their checks: one piece, so a set's, a
/// feed's and a leaderboard's builders cannot drift apart.
#[derive(Debug)]
pub(crate) struct CommonSettings {
    name: Option<String>,
    prefix: String,
    shards: u16,
    store: Option<Arc<dyn Store>>,
    ttl: Duration,
    stale: Duration,
    lease_ttl: Duration,
    wait_timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl Default for CommonSettings {
    fn default() -> Self {
        Self {
            name: None,
            prefix: "larder".to_owned(),
            shards: crate::key::DEFAULT_SHARDS,
            store: None,
            ttl: crate::policy::DEFAULT_TTL,
            stale: Duration::ZERO,
            lease_ttl: crate::policy::DEFAULT_LEASE_TTL,
            wait_timeout: crate::policy::DEFAULT_LEASE_TTL,
            clock: Arc::new(crate::clock::SystemClock),
        }
    }
}

impl CommonSettings {
    /// The name and store, checked (`what` names the kind in messages).
    pub(crate) fn required(&self, what: &str) -> Result<(String, Arc<dyn Store>)> {
        let name = self
            .name
            .clone()
            .ok_or_else(|| Error::setting("name", format!("a {what} needs a name")))?;
        let store = self
            .store
            .clone()
            .ok_or_else(|| Error::setting("store", format!("a {what} needs a store")))?;
        Ok((name, store))
    }

    /// The collection's [`Core`], once `required` passed: the durations
    /// above 0, `max` (the kind's size cap, named `max_setting`) at least
    /// 1, and a store that holds collections.
    pub(crate) fn into_core(
        self,
        (name, store): (String, Arc<dyn Store>),
        (max_setting, max): (&'static str, u64),
    ) -> Result<Core> {
        if max == 0 {
            return Err(Error::setting(max_setting, "must be at least 1"));
        }
        for (setting, d) in [
            ("ttl", self.ttl),
            ("lease_ttl", self.lease_ttl),
            ("wait_timeout", self.wait_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::setting(setting, "must be above 0"));
            }
        }
        if store.collections().is_none() {
            return Err(Error::Config(format!(
                "store {} cannot hold collections",
                store.name()
            )));
        }
        Ok(Core {
            keys: KeySpace::new(&self.prefix, &name, self.shards)?,
            store,
            clock: self.clock,
            settings: Settings {
                ttl: self.ttl,
                stale: self.stale,
                lease_ttl: self.lease_ttl,
                wait_timeout: self.wait_timeout,
                write_ttl: self.lease_ttl.max(Duration::from_secs(30)),
            },
            counters: Counters::default(),
        })
    }
}

/// The setters of [`CommonSettings`] on a collection builder whose
/// `common` field holds them; `$what` names the kind in the docs.
macro_rules! common_setters {
    ($what:literal) => {
        #[doc = concat!("The ", $what, "'s name (`[a-z0-9_-]`, one namespace with entities). Required.")]
        pub fn name(mut self, name: &str) -> Self {
            self.common.name = Some(name.to_owned());
            self
        }

        /// The key prefix. Default: `"larder"`.
        pub fn prefix(mut self, prefix: &str) -> Self {
            prefix.clone_into(&mut self.common.prefix);
            self
        }

        /// Shards (hash tags) the owners spread over. Default: 64.
        pub fn shards(mut self, shards: u16) -> Self {
            self.common.shards = shards;
            self
        }

        /// The store. Required.
        pub fn store(mut self, store: std::sync::Arc<dyn crate::store::Store>) -> Self {
            self.common.store = Some(store);
            self
        }

        #[doc = concat!("How long a loaded ", $what, " is fresh. Default: 60 s.")]
        pub fn ttl(mut self, ttl: std::time::Duration) -> Self {
            self.common.ttl = ttl;
            self
        }

        #[doc = concat!("How long past its TTL a ", $what, " is kept and still served (outcome `stale`) while one refresh loads it again in the background; `0`: off, a read past the TTL loads. Default: 0 (off).")]
        pub fn stale(mut self, stale: std::time::Duration) -> Self {
            self.common.stale = stale;
            self
        }

        /// How long a loader owns an owner's lease. Default: 5 s.
        pub fn lease_ttl(mut self, ttl: std::time::Duration) -> Self {
            self.common.lease_ttl = ttl;
            self
        }

        /// How long a reader waits for another's fill before loading by
        /// itself (without filling). Default: 5 s.
        pub fn wait_timeout(mut self, wait: std::time::Duration) -> Self {
            self.common.wait_timeout = wait;
            self
        }

        /// larder's clock, which freshness reads. Default: the system clock.
        pub fn clock(mut self, clock: std::sync::Arc<dyn crate::clock::Clock>) -> Self {
            self.common.clock = clock;
            self
        }
    };
}
pub(crate) use common_setters;

/// What every kind of collection shares: keys, store, clock, settings,
/// counters. A cheap clone lives in each kind's `Inner`.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) keys: KeySpace,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: Settings,
    pub(crate) counters: Counters,
}

impl Core {
    /// The keys of one (canonical) owner, all in its shard.
    pub(crate) fn owner_keys(&self, owner: &str) -> CollectionKeys {
        CollectionKeys {
            meta: self.keys.key(KeyKind::CollectionMeta, owner),
            value: self.keys.value_key(owner),
            staging: self.keys.key(KeyKind::CollectionStaging, owner),
            lease: self.keys.lease_key(owner),
            write: self.keys.write_key(owner),
        }
    }

    /// Invalidates every owner this collection has anything cached for
    /// (meta, value, staging, lease or write bookkeeping), each as
    /// `invalidate` does: a fill or write in flight then caches nothing.
    /// Finding the owners is a scan of the store (see `store/scan.rs`):
    /// for rare, whole-collection events. Returns how many owners.
    pub(crate) async fn purge(&self) -> Result<u64> {
        /// Invalidations sent at once.
        const AT_ONCE: usize = 32;
        let collections = self.collections()?;
        let owners = collections
            .collection_owners(&self.keys.namespace())
            .await?;
        for chunk in owners.chunks(AT_ONCE) {
            let done = futures_util::future::join_all(chunk.iter().map(|owner| async move {
                collections
                    .collection_invalidate(&self.owner_keys(owner))
                    .await
            }))
            .await;
            done.into_iter().collect::<Result<Vec<()>>>()?;
        }
        Ok(owners.len() as u64)
    }

    /// The store's collection operations.
    pub(crate) fn collections(&self) -> Result<&dyn Collections> {
        self.store.collections().ok_or_else(|| {
            Error::Config(format!(
                "store {} cannot hold collections",
                self.store.name()
            ))
        })
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(crate) fn stats(&self) -> CollectionStats {
        self.counters.snapshot()
    }
}

/// A random lease token.
pub(crate) fn token() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}
