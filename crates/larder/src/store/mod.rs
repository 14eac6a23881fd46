//! Stores: the shared cache tier (L2).
//!
//! A store offers what the patterns need and nothing more: plain reads (a
//! hit is one `GET`, many keys one `MGET`), and the few atomic operations the
//! read path is built from — take a lease, fill only while holding it, set
//! and void a lease, delete value and lease together. On Redis each atomic
//! operation is one Lua script over keys of one hash slot (the shard is the hash tag),
//! so it stays atomic on Cluster; the embedded [`MemoryStore`] does the same
//! under one lock.
//!
//! Pick a store by URL with [`connect`]: `redis://`, `rediss://` (TLS),
//! `redis+cluster://h:p,h:p` / `rediss+cluster://` (Redis Cluster, see
//! `conn.rs` and `cluster.rs`) or `memory://`.
//!
//! The atomic operations and the types they speak (lease requests, fills,
//! write tickets, the write-back log) are the store *protocol*
//! (`protocol.rs`, `dirty.rs`): private to larder, behind the sealed
//! [`Store`] trait, so that a newcomer's API is the plain store and the
//! protocol can change (a Cluster store, new Redis types) without breaking
//! anyone.

// Write-back leaderboards: pending member operations per owner, claimed records.
mod board_deltas;
mod cluster;
mod conn;
// Write-back counters: deltas per id and column, claimed records.
mod counters;
mod dirty;
mod info;
mod memory;
mod nodes;
mod protocol;
mod pubsub;
mod redis;
mod redis_board_deltas;
mod redis_counters;
mod redis_dirty;
mod redis_hash;
mod redis_set_ops;
// Write-back on hash entries: field patches, whole rows, fills that lay
// pending fields over the loaded row, the flusher's records.
mod redis_hash_dirty;
mod replica_wait;
mod scan;

// Cached collections (sets): the protocol and its two stores.
mod collection;
mod memory_collection;
mod redis_collection;
mod redis_collection_read;
pub(crate) use self::collection::{
    BoardAnswer, BoardChunk, BoardQuery, BoardRead, BoardScore, BoardWriteEnd, CollectionAcquired,
    CollectionKeys, CollectionMeta, Collections, FeedChunk, FeedRead, FeedWriteEnd, MemberOrder,
    Scored, SetAnswer, SetChunk, SetQuery, SetRead, SetWriteEnd,
};

pub use self::board_deltas::{BoardDeadLetter, MemberOp, MemberOps};
pub(crate) use self::board_deltas::{
    BoardLog, BoardOpState, BoardWrite, BoardWritten, SetWrite, SetWritten,
};
pub(crate) use self::counters::{batch_id, delta_column, Count, CountStep, Counted, CounterState};
pub(crate) use self::dirty::{
    Clear, DeadLetterMove, DirtyKeys, DirtyLog, DirtyRecord, DirtyWrite, Durability, FieldPatch,
    Patched, PendingHash, Recorded, ShardBacklog, ShardKeys, StoredDeadLetter,
};
pub use self::info::ServerInfo;
pub use self::memory::{MemoryStore, DEFAULT_CAPACITY as DEFAULT_MEMORY_CAPACITY};
pub use self::nodes::{NodeInfo, NodeRole, SlotCoverage, CLUSTER_SLOTS};
pub(crate) use self::protocol::{
    Acquired, Compacted, Compaction, Fill, LeaseRequest, Protocol, Subscription, WriteEnd,
    WriteKeys, WriteTicket,
};
pub use self::redis::{RedisOptions, RedisStore};
pub(crate) use self::redis_hash_dirty::overlay_object;

use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// The shared cache tier: Redis ([`RedisStore`]) or the embedded memory
/// store ([`MemoryStore`]); pick one by URL with [`connect`].
///
/// Sealed: the cache's correctness rests on the atomicity of the protocol
/// operations (lease, token-checked fill, write ticket, dirty record,
/// generations) that every store implements alongside these, so only
/// larder's own stores implement it. What is public here are the plain
/// operations, for tools and demos.
#[async_trait]
pub trait Store: Protocol + Debug + Send + Sync + 'static {
    /// What this store is, for messages (a URL without credentials).
    fn name(&self) -> &str;

    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Reads many keys in one round trip; the answer is in `keys` order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>>;

    /// Atomically: sets the value with a TTL and deletes the lease, so that a
    /// load that started before this write cannot overwrite it.
    async fn set(
        &self,
        value_key: &str,
        lease_key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<()>;

    /// Atomically deletes the value and its lease (an invalidation).
    async fn delete(&self, value_key: &str, lease_key: &str) -> Result<()>;

    /// Reads some fields of one entry: envelope bytes whose payload (a
    /// JSON object) holds just `fields` that the entry has, in the order
    /// given (a NULL one as `null`). Redis answers a hash entry with one
    /// `HMGET`. Default: the whole entry read, projected here.
    async fn get_fields(&self, key: &str, fields: &[&str]) -> Result<Option<Bytes>> {
        project_whole(self.get(key).await?, fields)
    }

    /// The store's own figures (Redis: `INFO`, with `CONFIG GET
    /// maxmemory-policy` when INFO lacks it), for monitoring. One or two
    /// round trips on the data connection; not for the read path.
    /// Default: nothing known.
    async fn server_info(&self) -> Result<ServerInfo> {
        Ok(ServerInfo::default())
    }

    /// The nodes of a Redis Cluster, each master followed by its replicas
    /// (see [`NodeInfo`]): one concurrent `INFO` per node, for monitoring.
    /// Default (a standalone Redis, `memory://`): no nodes.
    async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        Ok(Vec::new())
    }

    /// How a Redis Cluster's hash slots are covered (`CLUSTER INFO`), for
    /// monitoring. Default (a standalone Redis, `memory://`): `None`.
    async fn slot_coverage(&self) -> Result<Option<SlotCoverage>> {
        Ok(None)
    }
}

/// Connects to a store by URL: `redis://`, `rediss://` or `memory://`.
///
/// For Redis, the connection is made lazily and re-made by itself: a
/// Redis that is down at start gives a store whose calls fail with
/// [`Error::StoreUnavailable`] until it answers (use [`connect_checked`]
/// to insist that it answers now).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    let scheme = url.split("://").next().unwrap_or_default();
    match scheme {
        "memory" => Ok(Arc::new(MemoryStore::from_url(url)?)),
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => Ok(Arc::new(RedisStore::connect(
            url,
            RedisOptions::from_url(url)?,
        )?)),
        _ => Err(Error::Config(format!(
            "unknown store URL {:?}: use redis://, rediss://, redis+cluster://, rediss+cluster:// or memory://",
            redact(url)
        ))),
    }
}

/// [`connect`], then one round trip that proves the store answers.
pub async fn connect_checked(url: &str) -> Result<Arc<dyn Store>> {
    let store = connect(url).await?;
    store.get("larder:ping").await?;
    Ok(store)
}

/// A URL with any password replaced by `***`, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    if conn::is_cluster_url(url) {
        return conn::redact_cluster(url);
    }
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Setting a password only fails for URLs without a host, which
            // cannot carry one in the first place.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Some fields of envelope bytes held whole (see [`Store::get_fields`]).
pub(crate) fn project_whole(envelope: Option<Bytes>, fields: &[&str]) -> Result<Option<Bytes>> {
    let Some(envelope) = envelope else {
        return Ok(None);
    };
    crate::representation::project(&envelope, fields)
        .map(|b| Some(Bytes::from(b)))
        .map_err(|problem| Error::Decode {
            entity: String::new(),
            id: String::new(),
            cause: crate::error::Message::cause(problem),
        })
}

/// A store URL with any password replaced by `***` (cluster URLs, whose
/// comma-separated hosts no URL parser takes, included): for messages and
/// logs outside the library.
pub fn redact_url(url: &str) -> String {
    redact(url)
}
