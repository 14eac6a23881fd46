//! # larder
//!
//! The caching layer between an application and its database, on Redis:
//! the caching patterns done right once — no stampede when a hot key
//! expires, no outdated value written over a newer one, numbers that show
//! whether the cache helps.
//!
//! ## The map
//!
//! Read this first: one line per module, what it owns. Each mechanism is
//! one module.
//!
//! ```text
//! cache/           Cache<K, V> and Inner, the state every clone shares (its fields private here)
//!   read.rs        the read path: near cache → breaker → store → fresh/stale/missing → flight,
//!                  one decision tree for single and batch reads
//!   lease.rs       the lease: acquire, wait for another holder's fill, take over,
//!                  fill once with its token, release
//!   write.rs       the write protocol: ticket → source step → end step, detached (cancellation-safe)
//!   warm.rs        pre-warming in batches, under the fill rule
//!   hash.rs        field reads (get_fields): one HMGET on a fresh hash entry, else the whole read
//!   invalidate.rs  invalidation by id, key, tag or purge; background tag compaction
//!   builder.rs     CacheBuilder: every setting, validated once; assembles Inner
//!   write_back/    write-back (`larder::write_back`): options and state; writer (acknowledge;
//!                  a hash entity's patch is one field-setting script, no compare-and-set),
//!                  flusher (an owned component: started by the builder, stopped and drained
//!                  by close; upserts, column UPDATEs, deletes), dead letters, durability
//!                  checks, overlay (a hash entity's read lays pending fields over its row)
//! policy.rs        freshness settings (ttl, stale, leases, timeouts), their defaults and limits; XFetch
//! flight.rs        single flight: one load per key per process, shared by its waiters
//! breaker.rs       skip a store that just failed, for a moment
//! envelope.rs      the binary header around every cached value (times, stamp)
//! representation.rs  string or hash entries: the hash layout (a field per column, a reserved
//!                  field with header and directory) and its conversion to and from envelopes
//! codec.rs         how a value becomes bytes (JSON, MessagePack, raw JSON)
//! key.rs           ids and the key layout `<prefix>:{<entity>:<shard>}:<kind>:<id>`
//! coherence.rs     the near cache, tagger and bus of one cache, as the read and write paths use them
//! near.rs          the near cache (L1, moka) and its tickets
//! invalidation.rs  the invalidation bus: publish, subscribe, owed invalidations
//! generation.rs    generations and stamps: purge and tags without touching entries
//! store/           the shared tier: the sealed Store trait, Redis and memory stores
//!   protocol.rs    the atomic operations the cache is built from, and their types (private)
//!   dirty.rs       the write-back log's operations (private), on Redis in redis_dirty.rs
//!   redis_hash.rs  hash entries on Redis: HGETALL/HMGET reads, the hash twins of the scripts
//!   redis_hash_dirty.rs  write-back on hash entries: field patches without compare-and-set,
//!                  whole-row records, fills that lay pending fields over, the records' formats
//!   conn.rs        the Redis connection: standalone or Cluster (redis+cluster://), one enum;
//!                  what redis-rs' cluster client retries, within the response timeout
//!   cluster.rs     Cluster-only store work: batches split by hash slot (concurrently), INFO summed
//!   nodes.rs       Store::nodes / slot_coverage: each Cluster node (CLUSTER NODES + its own INFO)
//!                  and the slots covered (CLUSTER INFO); NodeInfo, NodeRole, SlotCoverage
//! source/          where values come from: the Source trait, FnSource, SqlSource
//!   sql/           PostgreSQL, SQLite, MariaDB tables: schema, flushes, refusals; exec.rs runs
//!                  the statements every backend shares (generic over sqlx), and each dialect
//!                  (postgres.rs, sqlite.rs, mysql.rs) keeps its SQL text and what truly differs
//!   sql/cdc/       change notifications (PostgreSQL triggers, the listener)
//! collection/      cached collections (an owner's rows as one value): the shared machinery
//!   set.rs         SetCache: each owner's members as a sorted set, read-, write-through
//!   set_write_back.rs  write-back sets: adds/removals as pending member operations, loads
//!                  that lay them over the database's members, merged database answers
//!   feed.rs        FeedCache: each owner's first max_len items as a list, appends at the head
//!   board.rs       Leaderboard: each owner's scores as a sorted set, ZADD of the database's score
//!   board_write_back.rs, board_flush.rs  write-back boards: pending member operations, merged
//!                  reads, the flusher (claim under a random batch id, one fenced commit,
//!                  clear), shared with write-back sets through the `Flushed` trait
//! store/collection.rs  the collection protocol (meta + value read in one script, chunked
//!                  token-checked fill, write ends), in redis_collection.rs and memory_collection.rs
//! source/sql/collection.rs  SqlSetSource: (owner, member) tables, index checks, per-dialect SQL
//! source/sql/feed.rs  SqlFeedSource: a table in a configured order, sort keys beside rows
//! source/sql/board.rs  SqlBoardSource: (owner, member, score) tables, rank order, upserts;
//!                  board_flush.rs commits a write-back batch behind the fence; set_flush.rs
//!                  a set's batch (one multi-row INSERT, one DELETE)
//! store/board_deltas.rs  write-back boards' and sets' store side (redis_board_deltas.rs: the
//!                  scripts; redis_set_ops.rs: a set's write step)
//! error.rs         Error, its kinds, and settings refused as InvalidSetting
//! load_error.rs    LoadError: try_get_or_load's errors, the loader's type kept
//! outcome.rs       Lookup and Outcome, the one word every read reports
//! stats.rs         counters, read without locks; metrics.rs reports them to `metrics`
//! clock.rs         larder's clock, which every freshness decision reads
//! ```
//!
//! ## The tiers
//!
//! ```text
//!  application ──► Cache<K, V> ── near cache (L1, optional; moka)
//!                    │ one GET (or one MGET)     ▲ invalidation bus:
//!                    │                           │ <prefix>:invalidations
//!                    ▼
//!                  store: Redis (redis://, rediss://) or memory://
//!                    │ miss: lease, load, token-checked fill
//!                    ▼
//!                  source: PostgreSQL / SQLite table (SqlSource), or any loader
//! ```
//!
//! ## Patterns
//!
//! - **cache-aside**: [`Cache::get_or_load`] — the application supplies the
//!   loader; after writing the database it calls [`Cache::invalidate`].
//! - **read-through**: [`Cache::get`] / [`Cache::get_many`] — the cache
//!   loads from its [`Source`] on a miss (`get_many`: one `MGET`, one
//!   `load_many` for all misses).
//! - **write-through / write-around / read-only**: [`Cache::put`],
//!   [`Cache::patch`], [`Cache::delete`] under the cache's [`WritePolicy`];
//!   concurrent writers converge on the database's last committed row.
//! - **write-back**: [`WritePolicy::Back`] — acknowledged once the store
//!   holds the write durably, flushed later (coalesced, batched, fenced);
//!   nothing acknowledged is lost. On a [`Representation::Hash`] entity a
//!   `patch` sets just its fields, with no compare-and-set. See
//!   [`write_back`].
//! - **change notifications** (PostgreSQL): a [`Cache`] is a
//!   [`ChangeHandler`] of its table's triggers ([`ChangeListener`]).
//!
//! ## Freshness (one set of words)
//!
//! `ttl` (fresh, scaled by `jitter`), `stale` (served past freshness while
//! one refresh runs, and when the source fails), `negative_ttl` ("not found"
//! remembered), `lease_ttl` (how long a loader owns a key). Decisions read
//! the envelope's times against larder's [`Clock`]; Redis' expiry only
//! collects garbage.
//!
//! ## Guarantees
//!
//! 1. **One load per key per expiry** across every process sharing the
//!    store: a single flight per process, a lease (`SET NX PX` + token)
//!    across processes; waiters poll for the fill and, past `wait_timeout`,
//!    load by themselves without filling.
//! 2. **No stale set**: the fill writes only while its lease holds its
//!    token; `put` and `invalidate` void the lease in the same atomic step.
//! 3. **A hit is one round trip**: leases and refresh decisions live on the
//!    miss path.
//! 4. **Redis down, reads go on**: from the source, outcome `bypass`.
//! 5. **Invalidated is gone**: an invalidation (by key, tag or purge) and
//!    every write reach every instance's near cache over the invalidation
//!    bus; a near cache that lost its subscription clears itself; an
//!    invalidated entry is never served, not even stale. See
//!    [`Cache::invalidate_tag`], [`Cache::purge`], [`NearOptions`].
//!
//! Every read reports its [`Outcome`]: `l1`, `hit`, `stale`, `negative`,
//! `miss` or `bypass`.
//!
//! ## Example
//!
//! ```
//! use larder::{Cache, Outcome};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct User { id: u64, name: String }
//!
//! # #[tokio::main] async fn main() -> larder::Result<()> {
//! let store = larder::store::connect("memory://").await?;
//! let users: Cache<u64, User> = Cache::builder().entity("users").store(store).build().await?;
//! let first = users
//!     .get_or_load(&42, || async { Ok::<_, std::io::Error>(Some(User { id: 42, name: "Ada".into() })) })
//!     .await?;
//! assert_eq!(first.outcome, Outcome::Miss);
//! let again = users.get_or_load(&42, || async { Ok::<_, std::io::Error>(None) }).await?;
//! assert_eq!(again.outcome, Outcome::Hit);
//! assert_eq!(again.value.map(|u| u.name.clone()).as_deref(), Some("Ada"));
//! # Ok(()) }
//! ```

mod breaker;
mod cache;
mod clock;
mod codec;
mod collection;
mod decimal;
mod envelope;
mod error;
mod flight;
mod key;
mod load_error;
mod metrics;
mod outcome;
mod policy;
mod representation;
pub mod source;
mod stats;
pub mod store;

pub use cache::write_back;
pub use cache::CacheBuilder;
pub use cache::{Cache, CacheWrite, WarmOptions, WarmProgress, WritePolicy, Written, WARM_BATCH};
pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{Codec, Json, JsonObject, MessagePack, PassThrough, RawJson};
#[doc(hidden)]
pub use collection::{arm_after_board_commit, arm_stall_after_board_claim};
pub use collection::{
    BoardBatch, BoardFlushed, BoardLoad, BoardPage, BoardSource, Leaderboard, LeaderboardBuilder,
    Ranked, ScoreKind, BOARD_FILL_CHUNK, DEFAULT_MAX_BOARD_MEMBERS, MAX_BOARD_OFFSET,
    MAX_BOARD_PAGE,
};
pub use collection::{
    CollectionOutcome, CollectionRead, CollectionStats, SetCache, SetCacheBuilder, SetLoad,
    SetOrder, SetPage, SetSource, DEFAULT_MAX_MEMBERS, MAX_SET_PAGE,
};
pub use collection::{
    FeedCache, FeedCacheBuilder, FeedItem, FeedPage, FeedSource, MAX_FEED_OFFSET, MAX_FEED_PAGE,
};

pub use error::{Cause, ConstraintKind, Error, ErrorKind, Result, SchemaPart};
pub use key::{
    validate_id, validate_name, CacheKey, IdText, DEFAULT_SHARDS, MAX_ID_LEN, MAX_NAME_LEN,
};
pub use load_error::LoadError;
pub use outcome::{Lookup, Outcome};
pub use policy::{
    parse_duration, DEFAULT_EARLY_REFRESH, DEFAULT_JITTER, DEFAULT_LEASE_TTL, DEFAULT_LOAD_TIMEOUT,
    DEFAULT_NEGATIVE_TTL, DEFAULT_STALE, DEFAULT_TTL,
};
pub use representation::Representation;
pub use source::{
    ChangeChannel, ChangeHandler, ChangeListener, ChangeStats, CounterColumn, FnSource, Source,
    SqlPool, SqlSource,
};
pub use source::{
    SqlBoardSource, SqlBoardSourceBuilder, SqlFeedSource, SqlFeedSourceBuilder, SqlSetSource,
    SqlSetSourceBuilder,
};
pub use stats::CacheStats;
pub use write_back::{Closed, DeadLetter, WriteBackOptions, WriteBackStats};

// The near cache (L1), tags and the invalidation bus.
mod coherence;
mod generation;
mod invalidation;
mod near;
pub use generation::{MAX_TAGS, MAX_TAG_LEN, TAG_SKEW_MARGIN};
pub use invalidation::MAX_PENDING;
pub use near::NearOptions;
pub use stats::NearStats;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
mod readme {}
