//! The collection protocol: the atomic operations a cached *collection*
//! (an owner's set today; feeds and leaderboards share the shape) is built
//! from, on Redis (`redis_collection.rs`) and the memory store
//! (`memory_collection.rs`).
//!
//! Why a protocol of its own: an entity is one value under one key, but a
//! collection is a Redis sorted set beside a small *meta* hash (Redis
//! deletes an empty set, so "cached and empty" needs a key that stays).
//! Every operation here touches the meta and the value together, in one
//! script (or, for some reads, one `MULTI`/`EXEC`) over keys of the
//! owner's shard (one hash tag), so a reader never sees the meta of one
//! fill with the value of another.
//!
//! Keys of one owner (`KeySpace` of the collection, id = owner):
//!
//! ```text
//! <prefix>:{<name>:<shard>}:m:<owner>   meta hash: v, fresh, loaded, complete, count, stamp
//! <prefix>:{<name>:<shard>}:v:<owner>   the sorted set (members)
//! <prefix>:{<name>:<shard>}:s:<owner>   staging: a fill's chunks, renamed over v by the last
//! <prefix>:{<name>:<shard>}:l:<owner>   the read lease (token)
//! <prefix>:{<name>:<shard>}:w:<owner>   write bookkeeping (as for entities)
//! ```
//!
//! Private to larder, like [`Protocol`](super::Protocol).

use crate::error::Result;
use async_trait::async_trait;
use std::fmt::Debug;
use std::time::Duration;

/// The keys of one owner's collection (all in the owner's hash slot).
#[derive(Debug, Clone)]
pub struct CollectionKeys {
    /// The meta hash.
    pub meta: String,
    /// The value (a sorted set).
    pub value: String,
    /// Where a fill stages its chunks.
    pub staging: String,
    /// The read lease.
    pub lease: String,
    /// The write bookkeeping (sequence, writes in flight).
    pub write: String,
}

/// The meta of a cached collection: an entry's envelope fields, and
/// whether the collection is cached whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionMeta {
    /// Fresh until (ms of larder's clock).
    pub fresh_until_ms: u64,
    /// When it was loaded (ms of larder's clock).
    pub loaded_ms: u64,
    /// `true`: the value holds every member. `false`: the owner is above
    /// the cap; only the count is cached and reads go to the database.
    pub complete: bool,
    /// The number of members.
    pub count: u64,
    /// The generation stamp (reserved for purge and tags; 0 today).
    pub stamp: u64,
}

/// Order of the members in a sorted set: the member's bytes (all scores
/// 0, ranges `BYLEX`) or the member as an integer score (`BYSCORE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberOrder {
    /// Byte order of the member's text.
    Lex,
    /// Numeric order of an integer member (its score; exact up to 2^53).
    Score,
}

/// A member with its score (0 under [`MemberOrder::Lex`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scored {
    /// The member's canonical text.
    pub member: String,
    /// Its score.
    pub score: i64,
}

/// What a read asks of a cached set besides its meta.
#[derive(Debug, Clone)]
pub enum SetQuery {
    /// Whether a member is in it.
    Contains(Scored),
    /// Up to `limit` members after `after` (exclusive), in order.
    Page {
        /// The last member of the previous page.
        after: Option<Scored>,
        /// How many members at most.
        limit: usize,
    },
    /// The meta alone (the count).
    Meta,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetRead {
    /// Nothing cached (or a meta whose value was lost).
    Miss,
    /// The meta, and the answer when the set is complete.
    Hit {
        /// The meta.
        meta: CollectionMeta,
        /// The query's answer, if the set is complete.
        answer: Option<SetAnswer>,
    },
}

/// A complete set's answer to a [`SetQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetAnswer {
    /// [`SetQuery::Contains`].
    Contains(bool),
    /// [`SetQuery::Page`]: the members.
    Page(Vec<String>),
    /// [`SetQuery::Meta`].
    Meta,
}

/// What a lease attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionAcquired {
    /// A fresh collection is cached: read it.
    Present,
    /// The lease is ours.
    Lease,
    /// Another holder has it.
    Held,
}

/// One chunk of a fill.
#[derive(Debug, Clone)]
pub struct SetChunk<'a> {
    /// The lease token the fill holds.
    pub token: &'a str,
    /// The first chunk (clears the staging key).
    pub first: bool,
    /// The meta to write with the last chunk (which renames staging over
    /// the value and releases the lease); `None` for the others.
    pub last: Option<CollectionMeta>,
    /// The members of this chunk.
    pub members: &'a [Scored],
    /// How long the store keeps the keys.
    pub ttl: Duration,
}

/// How a write to a set ends.
#[derive(Debug, Clone)]
pub enum SetWriteEnd {
    /// The database added (`changed`) or already had the member.
    Add {
        /// The member.
        member: Scored,
        /// Whether the database's set changed.
        changed: bool,
        /// The cap: a complete set that would grow past it is deleted.
        max: u64,
    },
    /// The database removed (`changed`) or did not have the member.
    Remove {
        /// The member.
        member: Scored,
        /// Whether the database's set changed.
        changed: bool,
    },
    /// Delete the cached set (an ambiguous failure).
    Delete,
    /// The database refused the write: leave the cache as it is.
    Abort,
}

/// A page of a cached feed (a Redis list), or what the store found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedRead {
    /// Nothing cached.
    Miss,
    /// The meta, and the elements `offset .. offset + limit` of the list
    /// (fewer at its end).
    Hit {
        /// The meta.
        meta: CollectionMeta,
        /// The elements read.
        elements: Vec<bytes::Bytes>,
    },
}

/// One chunk of a feed's fill: elements appended (tail side) to staging.
#[derive(Debug, Clone)]
pub struct FeedChunk<'a> {
    /// The lease token the fill holds.
    pub token: &'a str,
    /// The first chunk (clears the staging key).
    pub first: bool,
    /// The meta, with the last chunk (which renames staging over the value).
    pub last: Option<CollectionMeta>,
    /// The elements of this chunk, head first.
    pub elements: &'a [Vec<u8>],
    /// How long the store keeps the keys.
    pub ttl: Duration,
}

/// How a write to a feed ends.
#[derive(Debug, Clone)]
pub enum FeedWriteEnd {
    /// Push `element` at the head if the head is still `head` (`None`: the
    /// cached feed is empty), then trim to `max_len`.
    Push {
        /// The new element.
        element: Vec<u8>,
        /// The head the caller compared the new item with.
        head: Option<Vec<u8>>,
        /// The cap.
        max_len: u64,
    },
    /// Remove the element of item `id` from a complete feed (else delete it).
    Remove {
        /// The item id (each element starts with `id` and a NUL).
        id: String,
    },
    /// Delete the cached feed.
    Delete,
    /// The database refused the write: leave the cache as it is.
    Abort,
}

/// A leaderboard member and its score (a Redis sorted-set score: a double).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoardScore<'a> {
    /// The member's canonical text.
    pub member: &'a str,
    /// Its score.
    pub score: f64,
}

/// What a read asks of a cached leaderboard besides its meta.
#[derive(Debug, Clone)]
pub enum BoardQuery {
    /// `ZREVRANGE offset offset+limit-1 WITHSCORES`: highest first, ties in
    /// descending byte order of the member.
    Top {
        /// How many to skip.
        offset: u64,
        /// How many at most (0: none, the meta alone).
        limit: u64,
    },
    /// `ZSCORE` and `ZREVRANK` of one member.
    Member(String),
}

/// A complete leaderboard's answer to a [`BoardQuery`].
#[derive(Debug, Clone, PartialEq)]
pub enum BoardAnswer {
    /// [`BoardQuery::Top`]: `(member, score)` in rank order.
    Top(Vec<(String, f64)>),
    /// [`BoardQuery::Member`]: `(score, 0-based rank)`, `None` if absent.
    Member(Option<(f64, u64)>),
}

/// What a leaderboard read found.
#[derive(Debug, Clone, PartialEq)]
pub enum BoardRead {
    /// Nothing cached (or a meta whose value was lost).
    Miss,
    /// The meta, and the answer when the board is complete.
    Hit {
        /// The meta.
        meta: CollectionMeta,
        /// The query's answer, if the board is complete.
        answer: Option<BoardAnswer>,
    },
}

/// One chunk of a leaderboard's fill (at most 3,999 members: Lua's
/// `unpack` takes at most 7,999 values, two per member).
#[derive(Debug, Clone)]
pub struct BoardChunk<'a> {
    /// The lease token the fill holds.
    pub token: &'a str,
    /// The first chunk (clears the staging key).
    pub first: bool,
    /// The meta, with the last chunk (which renames staging over the value).
    pub last: Option<CollectionMeta>,
    /// The members of this chunk.
    pub members: &'a [BoardScore<'a>],
    /// How long the store keeps the keys.
    pub ttl: Duration,
}

/// How a write to a leaderboard ends.
#[derive(Debug, Clone, PartialEq)]
pub enum BoardWriteEnd {
    /// The database holds `score` for `member` now: `ZADD` it (an absolute
    /// score, never an increment, so a fill that raced the write cannot
    /// make it count twice).
    Set {
        /// The member.
        member: String,
        /// The score the database returned.
        score: f64,
        /// The cap: a complete board that would grow past it is deleted.
        max: u64,
    },
    /// The database no longer has `member`: `ZREM` it.
    Remove {
        /// The member.
        member: String,
    },
    /// Delete the cached board (an ambiguous failure).
    Delete,
    /// The database refused the write: leave the cache as it is.
    Abort,
}

/// The atomic operations of cached collections.
#[async_trait]
pub trait Collections: Debug + Send + Sync {
    /// Atomically reads the meta and (if complete) answers `query` from
    /// the value: one round trip. A meta that says "complete, non-empty"
    /// beside a missing value (evicted) is a miss.
    async fn set_read(
        &self,
        keys: &CollectionKeys,
        order: MemberOrder,
        query: &SetQuery,
    ) -> Result<SetRead>;

    /// Atomically: a meta fresh at `now_ms` is [`CollectionAcquired::Present`];
    /// else takes the lease if free.
    async fn collection_acquire(
        &self,
        keys: &CollectionKeys,
        token: &str,
        lease_ttl: Duration,
        now_ms: u64,
    ) -> Result<CollectionAcquired>;

    /// Atomically releases the lease if it still holds `token`.
    async fn collection_release(&self, keys: &CollectionKeys, token: &str) -> Result<()>;

    /// Atomically, if the lease still holds the chunk's token: adds the
    /// chunk to staging (the first clears it); the last renames staging
    /// over the value, writes the meta and releases the lease. A chunk
    /// whose token no longer holds changes nothing but dropping staging.
    /// Returns whether it wrote.
    async fn set_fill_chunk(&self, keys: &CollectionKeys, chunk: &SetChunk<'_>) -> Result<bool>;

    /// Atomically: voids the read lease, bumps the owner's write sequence
    /// and count of writes in flight; this write's `(seq, clean)`.
    async fn collection_write_begin(
        &self,
        keys: &CollectionKeys,
        ttl: Duration,
    ) -> Result<(u64, bool)>;

    /// Atomically ends a write: one write fewer in flight, the lease voided;
    /// then, if the write overlapped no other write or invalidation and the
    /// set is cached, applies the member's operation to it (count included);
    /// otherwise deletes the cached set. A set that is not cached is never
    /// created. Returns whether the cached set was updated.
    async fn set_write_end(
        &self,
        keys: &CollectionKeys,
        seq: u64,
        clean: bool,
        end: &SetWriteEnd,
    ) -> Result<bool>;

    /// Atomically deletes meta, value, staging and lease, and bumps the
    /// write sequence of a write in flight (its end then deletes).
    async fn collection_invalidate(&self, keys: &CollectionKeys) -> Result<()>;

    /// The owners that have any key under `namespace` (`<prefix>:{<name>:`,
    /// every shard of one collection): what a purge invalidates. A scan of
    /// the whole keyspace (`SCAN`, every master of a Cluster): for rare,
    /// whole-collection events only.
    async fn collection_owners(&self, namespace: &str) -> Result<Vec<String>>;

    /// Atomically reads a feed's meta and the list's elements
    /// `offset .. offset + limit` (`LRANGE`): one round trip.
    async fn feed_read(&self, keys: &CollectionKeys, offset: u64, limit: u64) -> Result<FeedRead>;

    /// [`Collections::set_fill_chunk`] for a feed: `RPUSH` to staging.
    async fn feed_fill_chunk(&self, keys: &CollectionKeys, chunk: &FeedChunk<'_>) -> Result<bool>;

    /// Atomically ends a feed write as [`Collections::set_write_end`] ends
    /// a set's: a push lands only if the write overlapped nothing, the feed
    /// is cached and its head is still the one given; a remove only on a
    /// complete feed; otherwise the feed is deleted. Returns whether the
    /// cached feed was updated.
    async fn feed_write_end(
        &self,
        keys: &CollectionKeys,
        seq: u64,
        clean: bool,
        end: &FeedWriteEnd,
    ) -> Result<bool>;

    /// Atomically reads a leaderboard's meta and (if complete) answers
    /// `query` from the sorted set: one round trip.
    async fn board_read(&self, keys: &CollectionKeys, query: &BoardQuery) -> Result<BoardRead>;

    /// [`Collections::set_fill_chunk`] for a leaderboard: `ZADD` of the
    /// chunk's scores to staging.
    async fn board_fill_chunk(&self, keys: &CollectionKeys, chunk: &BoardChunk<'_>)
        -> Result<bool>;

    /// Atomically ends a leaderboard write as [`Collections::set_write_end`]
    /// ends a set's: applied only if the write overlapped nothing and the
    /// board is cached and complete; a board above its cap (only the count
    /// cached) loses its meta; otherwise the board is deleted. Returns
    /// whether the cached board was updated.
    async fn board_write_end(
        &self,
        keys: &CollectionKeys,
        seq: u64,
        clean: bool,
        end: &BoardWriteEnd,
    ) -> Result<bool>;
}

/// The owner of a collection key under `namespace`
/// (`<namespace><shard>}:<letter>:<owner>`), if it is one.
pub(crate) fn owner_of_key<'a>(namespace: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(namespace)?;
    let (_shard, rest) = rest.split_once("}:")?;
    let (_letter, owner) = rest.split_once(':')?;
    Some(owner)
}

/// The distinct owners of `keys` under `namespace`, sorted.
pub(crate) fn owners_of_keys<'a>(
    namespace: &str,
    keys: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let owners: std::collections::BTreeSet<&str> = keys
        .into_iter()
        .filter_map(|k| owner_of_key(namespace, k))
        .collect();
    owners.into_iter().map(str::to_owned).collect()
}
