//! The write-back log: the store side of write-back.
//!
//! Write-back acknowledges a write once the store holds it durably, and a
//! flusher writes it to the source later. Everything about one id lives in
//! its shard (one hash slot), so every step below is one atomic script:
//!
//! | key | what |
//! |---|---|
//! | `…:{e:s}:d:<id>` | the dirty record: `seq`, `del` (a tombstone), `val` (the payload); no TTL. A hash entry's record adds `kind` (`row` or `fields`) and its dirty columns (see `redis_hash_dirty.rs`) |
//! | `…:{e:s}:q` | the shard's queue: a sorted set of dirty ids, scored by when each became dirty |
//! | `…:{e:s}:n` | the shard's record sequence (`INCR`; never reset, so a stale flusher cannot clear a newer record) |
//! | `…:{e:s}:w:<id>` | the id's write version, compared by `patch` and `delete` (compare-and-set) |
//! | `…:{e:s}:f`, `…:{e:s}:e` | the shard's flush lease and its epoch (`INCR` on every new holder) |
//! | `…:{e:s}:x`, `…:{e:s}:xv` | dead letters: why (JSON) and the payload, by id |
//! | `…:{e:s}:c:<id>`, `…:{e:s}:cq`, `:cb`, `:cn`, `:cx` | a hash entity's increments: unclaimed deltas, their queue, the claimed record, its clears, counter dead letters (see `counters.rs`) |
//!
//! Only [`RedisStore`](super::RedisStore) implements it: the embedded memory
//! store is lost with its process, so it cannot hold acknowledged writes.

use super::counters::{ClaimedCounters, Count, Counted, CounterState};
use crate::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use std::fmt::Debug;
use std::time::Duration;

/// The keys one write-back write touches (all in the id's shard).
#[derive(Debug, Clone)]
pub struct DirtyKeys {
    /// The canonical id.
    pub id: String,
    /// The value key.
    pub value_key: String,
    /// The read lease key.
    pub lease_key: String,
    /// The dirty record.
    pub dirty_key: String,
    /// The shard's queue.
    pub queue_key: String,
    /// The shard's record sequence.
    pub seq_key: String,
    /// The id's write version.
    pub version_key: String,
}

/// One write to record: the new value (or a tombstone) and its cache entry.
#[derive(Debug, Clone)]
pub struct DirtyWrite {
    /// The payload (codec bytes); `None` records a delete (tombstone).
    pub payload: Option<Vec<u8>>,
    /// The envelope to cache for reads (the value, or a negative entry).
    pub envelope: Vec<u8>,
    /// How long the store keeps the cache entry.
    pub ttl: Duration,
    /// Now, in milliseconds since the epoch (the queue's score).
    pub now_ms: u64,
    /// Compare-and-set: record only if the id's write version is this one.
    pub expect_version: Option<u64>,
    /// How long the write version is kept without writes.
    pub version_ttl: Duration,
    /// A channel and message to publish in the same script, announcing the
    /// write to other instances' near caches (one round trip for both).
    pub announce: Option<(String, Vec<u8>)>,
}

/// What recording a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded under this record sequence; `coalesced` when the id was
    /// already dirty (this write replaces one not yet flushed).
    Queued {
        /// The record's sequence.
        seq: u64,
        /// Whether an unflushed write of the id was replaced.
        coalesced: bool,
        /// Whether its durability is confirmed: always on a single Redis
        /// (durable by `appendfsync always`); on a Cluster, once every
        /// online replica of the master acknowledged it (`WAIT`).
        confirmed: bool,
    },
    /// The write version was not the expected one: someone wrote since
    /// the caller read. Nothing was recorded.
    Conflict,
}

impl Recorded {
    /// Whether it was recorded with its durability confirmed (a
    /// [`Conflict`](Self::Conflict) recorded nothing: `false`).
    pub fn is_confirmed(&self) -> bool {
        matches!(
            self,
            Recorded::Queued {
                confirmed: true,
                ..
            }
        )
    }
}

/// A write-back field patch of a hash entry: the fields and the
/// bookkeeping of [`DirtyWrite`].
#[derive(Debug, Clone)]
pub struct FieldPatch {
    /// The patched columns, a JSON object (`null` sets NULL).
    pub fields: Vec<u8>,
    /// Now, in milliseconds since the epoch (the queue's score).
    pub now_ms: u64,
    /// How long the write version is kept without writes.
    pub version_ttl: Duration,
    /// A channel and message to publish in the same script.
    pub announce: Option<(String, Vec<u8>)>,
}

/// What a field patch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patched {
    /// Recorded (and set on the hash when it was there).
    Recorded(Recorded),
    /// The row is known not to exist (a pending tombstone, a negative
    /// entry): nothing recorded.
    NoRow,
}

/// A hash entry's pending write, as a read lays it over a loaded row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingHash {
    /// A whole row (a `put`, later patches laid over): a JSON object.
    Row(Bytes),
    /// A tombstone.
    Deleted,
    /// Dirty columns only: a JSON object of them.
    Fields(Bytes),
}

/// An id's dirty record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyRecord {
    /// The canonical id.
    pub id: String,
    /// The record's sequence.
    pub seq: u64,
    /// The payload; `None` for a tombstone.
    pub payload: Option<Bytes>,
    /// `true`: the payload holds only the dirty columns of a hash entry (a
    /// JSON object), flushed as an UPDATE of those columns; `false`: a
    /// whole row, flushed as an upsert.
    pub partial: bool,
}

/// An id's write-back state, read atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyState {
    /// The id's write version (0: never written, or long ago).
    pub version: u64,
    /// The pending write, if any.
    pub record: Option<DirtyRecord>,
}

/// The keys of one shard's write-back state.
#[derive(Debug, Clone)]
pub struct ShardKeys {
    /// The shard.
    pub shard: u16,
    /// The queue.
    pub queue_key: String,
    /// The flush lease.
    pub lease_key: String,
    /// The flush epoch.
    pub epoch_key: String,
    /// Dead letters: why, by id.
    pub dead_key: String,
    /// Dead letters: payload, by id.
    pub dead_value_key: String,
    /// The prefix of the shard's dirty records (the id follows).
    pub dirty_prefix: String,
}

/// A shard's backlog, for scheduling flushes and for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardBacklog {
    /// Dirty ids waiting.
    pub pending: u64,
    /// When the oldest of them became dirty (ms since the epoch).
    pub oldest_ms: Option<u64>,
    /// Dead letters held.
    pub dead: u64,
    /// A claimed counter record is left over (due at once).
    pub claimed: bool,
}

/// How a flushed record is cleared.
#[derive(Debug, Clone)]
pub struct Clear {
    /// The id's keys.
    pub keys: DirtyKeys,
    /// The sequence that was flushed: a newer record stays.
    pub seq: u64,
    /// The entry to cache from the stored row (`None`: delete the entry).
    pub refresh: Option<(Vec<u8>, Duration)>,
}

/// A record the database refused, moved aside.
#[derive(Debug, Clone)]
pub struct DeadLetterMove {
    /// The id's keys.
    pub keys: DirtyKeys,
    /// The shard's keys.
    pub shard: ShardKeys,
    /// The sequence that failed: a newer record stays and is tried.
    pub seq: u64,
    /// Why, as a JSON document.
    pub why: String,
    /// The value to keep, when it is not the record's own `val` (a hash
    /// entry's record, whose dirty columns are fields of their own).
    pub payload: Option<Vec<u8>>,
    /// A channel and message to publish in the same script, invalidating
    /// the entry in every instance's near cache.
    pub announce: Option<(String, Vec<u8>)>,
}

/// A dead letter as stored: why (JSON) and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeadLetter {
    /// The canonical id.
    pub id: String,
    /// Why, as the JSON document stored with it.
    pub why: String,
    /// The payload; `None` for a tombstone.
    pub payload: Option<Bytes>,
}

/// What the store says about its own durability. On a Redis Cluster:
/// the settings of the first node that falls short (every node alike
/// otherwise), and the masters without an online replica.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Durability {
    /// `appendonly` (`None`: the store would not say).
    pub appendonly: Option<String>,
    /// `appendfsync`.
    pub appendfsync: Option<String>,
    /// `maxmemory-policy`.
    pub maxmemory_policy: Option<String>,
    /// On a Cluster: the node (`host:port`) these settings are of.
    pub node: Option<String>,
    /// On a Cluster: masters (`host:port`) without an online replica,
    /// whose writes a failover would lose.
    pub masters_without_replicas: Vec<String>,
}

/// The store operations write-back is built from; each is atomic.
#[async_trait]
pub trait DirtyLog: Debug + Send + Sync + 'static {
    /// Sets the cache entry, records the dirty record under a new sequence,
    /// enqueues the id, voids the read lease, bumps the write version and
    /// publishes the announcement — all or nothing (a Redis OOM refuses the
    /// whole write).
    async fn record(&self, keys: &DirtyKeys, write: &DirtyWrite) -> Result<Recorded>;

    /// Reads an id's write version and pending record.
    async fn state(&self, keys: &DirtyKeys) -> Result<DirtyState>;

    /// A write-back `patch` of a hash entry: sets the fields on the hash
    /// if it is there, adds them to the dirty record, enqueues the id,
    /// voids the read lease and publishes the announcement — one atomic
    /// step, no read, no compare-and-set. Default: unsupported.
    /// With the patched entry's envelope when the hash was there (read in
    /// the same step), so the writer answers it without another read.
    async fn patch_fields(
        &self,
        keys: &DirtyKeys,
        patch: &FieldPatch,
    ) -> Result<(Patched, Option<Bytes>)> {
        let _ = (keys, patch);
        Err(crate::error::Error::Config(
            "this store cannot hold write-back field patches".into(),
        ))
    }

    /// Deletes the hash entry's dirty record (and dequeues the id) if it
    /// is a `fields` record still at sequence `seq`; whether it did.
    /// Default: nothing to withdraw.
    async fn withdraw_fields(&self, keys: &DirtyKeys, seq: u64) -> Result<bool> {
        let _ = (keys, seq);
        Ok(false)
    }

    /// The pending write of a hash entry, if any. Default: none.
    async fn pending_hash(&self, keys: &DirtyKeys) -> Result<Option<PendingHash>> {
        let _ = keys;
        Ok(None)
    }

    /// Records one write-back increment of a hash entry (see
    /// `counters.rs`): the cached field, when the hash is there, and the
    /// id's unclaimed delta change in one step. Default: unsupported.
    async fn count(&self, keys: &DirtyKeys, count: &Count) -> Result<Counted> {
        let _ = (keys, count);
        Err(crate::error::Error::Config(
            "this store cannot hold write-back increments".into(),
        ))
    }

    /// An id's pending write and its counter state, read in one step.
    /// Default: the pending write, no counters.
    async fn counter_state(&self, keys: &DirtyKeys) -> Result<(Option<PendingHash>, CounterState)> {
        Ok((self.pending_hash(keys).await?, CounterState::default()))
    }

    /// Claims up to `max` ids' unclaimed deltas of the shard that arrived at
    /// or before `due_ms` under a new random batch id, or answers the
    /// claimed record left over — only while `token` holds the flush lease
    /// (`None`: it does not; `Some(None)`: nothing to claim). Default:
    /// nothing to claim.
    async fn claim_counters(
        &self,
        shard: &ShardKeys,
        token: &str,
        max: usize,
        due_ms: u64,
    ) -> Result<Option<Option<ClaimedCounters>>> {
        let _ = (shard, token, max, due_ms);
        Ok(Some(None))
    }

    /// Moves `id`'s deltas out of the claimed record `old` to the dead
    /// letters (`why`, JSON) and deletes the id's cached entry; the rest is
    /// claimed again under `new`. `None`: the record is not `old` any more;
    /// `Some(false)`: nothing is left. Default: nothing claimed.
    async fn reclaim_counters(
        &self,
        shard: &ShardKeys,
        batch: (&str, &str),
        keys: &DirtyKeys,
        why: &str,
    ) -> Result<Option<bool>> {
        let _ = (shard, batch, keys, why);
        Ok(None)
    }

    /// Retries the counter dead letter `field` (`<id>#<batch>`) of
    /// `keys`' id: its deltas go back to the id's unclaimed deltas (the
    /// next flush adds them), the cached entry and the read lease go, and
    /// `announce` is published — in one step. Whether the letter was there.
    /// Default: none.
    async fn retry_counter_dead_letter(
        &self,
        keys: &DirtyKeys,
        field: &str,
        now_ms: u64,
        announce: (String, Vec<u8>),
    ) -> Result<bool> {
        let _ = (keys, field, now_ms, announce);
        Ok(false)
    }

    /// Clears the committed claimed record `batch` (checked by its id),
    /// voiding the read lease of each of its ids; `ids` are the ids with
    /// whether their row was missing (those go to the dead letters with
    /// `why`). Whether the record was still there. Default: no.
    async fn clear_counters(
        &self,
        shard: &ShardKeys,
        batch: &str,
        ids: &[(DirtyKeys, bool)],
        why: &str,
    ) -> Result<bool> {
        let _ = (shard, batch, ids, why);
        Ok(false)
    }

    /// Takes or renews the shard's flush lease for `token`; the epoch of
    /// this holding, or `None` when another flusher holds it.
    async fn claim(&self, shard: &ShardKeys, token: &str, ttl: Duration) -> Result<Option<u64>>;

    /// Releases the shard's flush lease if `token` holds it.
    async fn release(&self, shard: &ShardKeys, token: &str) -> Result<()>;

    /// Up to `max` records of the shard that became dirty at or before
    /// `due_ms`, oldest first — only while `token` holds the lease
    /// (`None`: it does not).
    async fn batch(
        &self,
        shard: &ShardKeys,
        token: &str,
        max: usize,
        due_ms: u64,
    ) -> Result<Option<Vec<DirtyRecord>>>;

    /// Clears flushed records whose sequence is unchanged and refreshes
    /// their entries — an entry deleted since the record was made (an
    /// invalidation during the flush) stays deleted; per record, whether
    /// it was cleared.
    async fn clear(&self, clears: &[Clear]) -> Result<Vec<bool>>;

    /// Moves a refused record to the dead letters, deletes its cache entry
    /// and publishes the announcement, if its sequence is unchanged;
    /// whether it moved.
    async fn dead_letter(&self, letter: &DeadLetterMove) -> Result<bool>;

    /// The backlog of each shard, in order.
    async fn backlog(&self, shards: &[ShardKeys]) -> Result<Vec<ShardBacklog>>;

    /// The dead letters of the given shards.
    async fn dead_letters(&self, shards: &[ShardKeys]) -> Result<Vec<StoredDeadLetter>>;

    /// Deletes one dead letter; whether it existed.
    async fn drop_dead_letter(&self, shard: &ShardKeys, id: &str) -> Result<bool>;

    /// Raises the shard's epoch counter to at least `floor` (after the
    /// database showed a newer epoch than the store knows, e.g. after the
    /// store lost its data), so the next holder fences correctly.
    async fn raise_epoch(&self, shard: &ShardKeys, floor: u64) -> Result<()>;

    /// The store's persistence and eviction settings.
    async fn durability(&self) -> Result<Durability>;
}
