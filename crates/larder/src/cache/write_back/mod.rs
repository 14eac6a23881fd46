//! Write-back (write-behind): a write is acknowledged once the store holds
//! it durably, and a background flusher writes it to the source later —
//! coalesced, batched, fenced — without ever losing an acknowledged write.
//!
//! # The contract
//! - `put` is one script in the id's shard: set the cache entry, record the
//!   dirty record (value + a sequence from the shard's counter), enqueue
//!   the id, void the read lease. Then it acknowledges
//!   ([`CacheWrite::Queued`](crate::CacheWrite::Queued)).
//! - A read never returns data older than an acknowledged write: a hit is
//!   the dirty value itself, the miss path answers a pending record, and a
//!   fill never overwrites one.
//! - `patch` merges the fields into the current value in Rust and commits
//!   with a compare-and-set on the id's write version, retrying on
//!   conflict; `delete` records a tombstone the same way. On a `hash`
//!   entity `patch` is one script that sets just the fields on the hash
//!   and in the dirty record (no compare-and-set; an absent hash is not
//!   created, and reads lay the pending fields over the loaded row:
//!   `overlay.rs`); the flusher writes such a record as an UPDATE of those
//!   columns, and one whose row is gone goes to the dead letters.
//! - `incr` on a `hash` entity (integer columns; `counter.rs`) is one
//!   script: `HINCRBY` on the cached field when the hash is there (a sum
//!   outside the column's range is refused, nothing recorded) and on the
//!   id's durable per-column delta; then it acknowledges with the row as
//!   the cache holds it. An absent hash is never created partially: the
//!   row's existence is decided from the cache, else by a read-through,
//!   before anything is recorded, and the answer of an increment that
//!   found no hash is read through (the row plus the pending deltas). A
//!   `put`, a delete, or a `patch` of the column discards its unclaimed
//!   delta (the written value wins).
//! - Increments reach the database exactly once (`store/counters.rs`,
//!   `counter_flush.rs`): the flusher claims a shard's deltas into one
//!   immutable record under a random batch id (ids with a pending write
//!   wait for it), commits it whole in one fenced transaction (`UPDATE …
//!   SET col = COALESCE(col, 0) + delta`; the fence step records the batch
//!   id and refuses it again, so a record committed by a flusher that
//!   died before its clear is only cleared), then clears it by its id,
//!   voiding the read lease of its ids and leaving cached values as they
//!   are. A row the database refuses goes to the dead letters alone and
//!   the rest is claimed again under a new id (never bisected into
//!   separately committed halves); an UPDATE that matches no row (the row
//!   was deleted) dead-letters the delta. A fill is refused while the
//!   claimed record holds the id and lays the unclaimed deltas over the
//!   loaded row; a read that could not fill loads again between two reads
//!   of the shard's count of clears (`overlay.rs`).
//! - The flusher owns a shard through a lease with an epoch,
//!   drains it in batches (one upsert statement per batch), clears a record
//!   only if its sequence is unchanged, and refreshes the entry from the
//!   stored row. The database fences stale flushers (`larder_fence`).
//! - Failures: a database that is down is retried with backoff; a row the
//!   database refuses (a constraint, a trigger, row-level security, or a
//!   foreign key still missing after a few tries) is isolated by bisecting
//!   the batch and moved to the dead letters with the database's code and
//!   message, and its entry is invalidated; the rest of the batch lands in
//!   the same round. The flusher's module docs list the classes of errors.
//! - A row committed without being returned (a `BEFORE` trigger returned
//!   `NULL`) is dead-lettered as "skipped by a trigger"; errors that concern
//!   the table (or that every row of a batch fails with alike) are retried
//!   and counted as alerts, never dead-lettered in bulk. A dead letter is
//!   deleted in the store and announced on the invalidation bus, so no
//!   instance serves it any more.
//! - `close` owns the flusher: it stops the background task and waits for
//!   it, then drains; writes after `close` are refused with
//!   [`Error::Closed`](crate::Error::Closed).
//! - Durability is checked at build: `appendonly yes` + `appendfsync
//!   always`, and never an `allkeys-*` eviction policy.
//! - While the store is unreachable, reads and writes fail with
//!   [`Error::StoreUnavailable`](crate::Error::StoreUnavailable): the newest
//!   data lives there.

mod counter;
mod counter_flush;
mod dead_letters;
pub(crate) mod durability;
pub(crate) mod fault;
pub(crate) mod flusher;
mod overlay;
mod writer;

#[doc(hidden)]
pub use self::counter_flush::{arm_after_counter_commit, arm_stall_after_counter_claim};
pub use self::dead_letters::{Closed, DeadLetter};

use crate::key::{KeyKind, KeySpace};
use crate::metrics::Tally;
use crate::store::{DirtyLog, ShardKeys};
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Settings of write-back; see [`WritePolicy::Back`](crate::WritePolicy::Back).
///
/// Deserializes from a table of these fields, each optional (durations as
/// strings, `"1s"`): the service's `[entity.write_back]` section is this
/// type.
///
/// ```
/// use larder::WriteBackOptions;
/// use std::time::Duration;
/// let settings = WriteBackOptions { max_delay: Duration::from_millis(200), ..WriteBackOptions::default() };
/// assert_eq!(settings.batch, 500);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriteBackOptions {
    /// The most records one flush writes (one upsert statement), 1 to
    /// 10,000 ([`WriteBackOptions::MAX_BATCH`]). Default: 500.
    pub batch: usize,
    /// How long a write may wait to be coalesced with later writes of the
    /// same id before it is flushed; above 0. Default: 1 s.
    #[serde(deserialize_with = "crate::policy::deserialize_duration")]
    pub max_delay: Duration,
    /// How long a flusher owns a shard without renewing; after a crash the
    /// shard drains within `flush_lease + max_delay`. Statements time out
    /// at half of it. At least 100 ms ([`WriteBackOptions::MIN_FLUSH_LEASE`]).
    /// Default: 5 s.
    #[serde(deserialize_with = "crate::policy::deserialize_duration")]
    pub flush_lease: Duration,
    /// The most writes pending before writers wait (up to the cache's
    /// `wait_timeout`) and then fail with
    /// [`Error::BacklogFull`](crate::Error::BacklogFull); at least 1.
    /// Default: 100,000.
    pub max_backlog: u64,
    /// Refuse to start on a store that cannot prove its durability
    /// (`appendonly yes` + `appendfsync always`). `false`: start anyway,
    /// with a loud warning. Default: `true`.
    pub require_durable: bool,
}

impl Default for WriteBackOptions {
    fn default() -> Self {
        Self {
            batch: Self::DEFAULT_BATCH,
            max_delay: Self::DEFAULT_MAX_DELAY,
            flush_lease: Self::DEFAULT_FLUSH_LEASE,
            max_backlog: Self::DEFAULT_MAX_BACKLOG,
            require_durable: true,
        }
    }
}

impl WriteBackOptions {
    /// The default `batch`: 500 records.
    pub const DEFAULT_BATCH: usize = 500;
    /// The largest `batch`: 10,000 records (one statement's JSON parameter).
    pub const MAX_BATCH: usize = 10_000;
    /// The default `max_delay`: 1 s.
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(1);
    /// The default `flush_lease`: 5 s.
    pub const DEFAULT_FLUSH_LEASE: Duration = Duration::from_secs(5);
    /// The shortest `flush_lease`: 100 ms (statements get half of it).
    pub const MIN_FLUSH_LEASE: Duration = Duration::from_millis(100);
    /// The default `max_backlog`: 100,000 writes.
    pub const DEFAULT_MAX_BACKLOG: u64 = 100_000;

    /// Checks the settings against their limits. The error names the
    /// field as `write_back.<field>` ([`Error::InvalidSetting`](crate::Error::InvalidSetting)).
    pub fn validate(&self) -> crate::Result<()> {
        use crate::policy::show;
        use crate::Error;
        if self.batch == 0 {
            return Err(Error::setting("write_back.batch", "must be at least 1"));
        }
        if self.batch > Self::MAX_BATCH {
            return Err(Error::setting(
                "write_back.batch",
                format!("must be at most {}", Self::MAX_BATCH),
            ));
        }
        if self.max_delay.is_zero() {
            return Err(Error::setting(
                "write_back.max_delay",
                "must be longer than 0s",
            ));
        }
        if self.flush_lease < Self::MIN_FLUSH_LEASE {
            return Err(Error::setting(
                "write_back.flush_lease",
                format!(
                    "{} must be at least {}",
                    show(self.flush_lease),
                    show(Self::MIN_FLUSH_LEASE)
                ),
            ));
        }
        if self.max_backlog == 0 {
            return Err(Error::setting(
                "write_back.max_backlog",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// How long one flush statement may run: half the lease.
    pub(crate) fn statement_timeout(&self) -> Duration {
        self.flush_lease / 2
    }
}

/// Write-back counters of one cache, from [`Cache::write_back_stats`](crate::Cache::write_back_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteBackStats {
    /// Writes acknowledged (put, patch, delete, increment).
    pub acknowledged: u64,
    /// Increments acknowledged (a `hash` entity's counters).
    pub increments: u64,
    /// Counter batches (claimed records) committed to the source.
    pub counter_batches: u64,
    /// Acknowledged writes that replaced a write not yet flushed.
    pub coalesced: u64,
    /// Compare-and-sets lost to another writer of the id, each sending a
    /// `patch` or `delete` back to read and try again (a `patch` of a
    /// `hash` entity takes none).
    pub conflicts: u64,
    /// Batches committed to the source.
    pub batches: u64,
    /// Rows written (upserted or deleted) by those batches.
    pub rows_written: u64,
    /// Flush attempts that failed and will be retried.
    pub retries: u64,
    /// Records moved to the dead letters by this instance.
    pub dead_lettered: u64,
    /// Flushes refused by the fence (a newer flusher committed).
    pub fenced: u64,
    /// Writes pending in the store, as last seen (all instances).
    pub backlog: u64,
    /// Age of the oldest pending write, as last seen (the flush lag), ms.
    pub oldest_ms: u64,
    /// Dead letters held in the store, as last seen.
    pub dead_letters: u64,
    /// Flushes refused for the table rather than a row (a read-only
    /// database, a missing table or column, a missing privilege, or an
    /// error every row of the batch failed with alone, the same way):
    /// nothing was dead-lettered, the batch is retried with backoff. Worth
    /// an alert (`larder_writeback_alerts_total`).
    pub alerts: u64,
}

/// Live counters behind [`WriteBackStats`]; each also reports to the
/// `metrics` facade (see [`Tally`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) acknowledged: Tally,
    pub(crate) increments: Tally,
    pub(crate) counter_batches: Tally,
    pub(crate) coalesced: Tally,
    pub(crate) conflicts: Tally,
    pub(crate) batches: Tally,
    /// Added once per committed batch (its row count): a histogram sample.
    pub(crate) rows_written: Tally,
    pub(crate) retries: Tally,
    pub(crate) dead_lettered: Tally,
    pub(crate) fenced: Tally,
    pub(crate) backlog: Tally,
    pub(crate) oldest_ms: Tally,
    pub(crate) dead_letters: Tally,
    pub(crate) alerts: Tally,
}

impl Counters {
    /// The counters of `entity`, reported as `larder_writeback_*` metrics.
    pub(crate) fn new(entity: &str) -> Self {
        Self {
            acknowledged: Tally::counter("larder_writeback_writes_total", entity),
            increments: Tally::counter("larder_writeback_increments_total", entity),
            counter_batches: Tally::counter("larder_writeback_counter_batches_total", entity),
            coalesced: Tally::counter("larder_writeback_coalesced_total", entity),
            conflicts: Tally::counter("larder_writeback_conflicts_total", entity),
            batches: Tally::counter("larder_writeback_batches_total", entity),
            rows_written: Tally::samples("larder_writeback_batch_rows", entity),
            retries: Tally::counter("larder_writeback_retries_total", entity),
            dead_lettered: Tally::counter("larder_writeback_dead_lettered_total", entity),
            fenced: Tally::counter("larder_writeback_fenced_total", entity),
            backlog: Tally::gauge("larder_writeback_backlog", entity, 1.0),
            oldest_ms: Tally::gauge("larder_writeback_lag_seconds", entity, 0.001),
            dead_letters: Tally::gauge("larder_writeback_dead_letters", entity, 1.0),
            alerts: Tally::counter("larder_writeback_alerts_total", entity),
        }
    }

    pub(crate) fn add(counter: &Tally, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> WriteBackStats {
        let get = |c: &Tally| c.load(Ordering::Relaxed);
        WriteBackStats {
            acknowledged: get(&self.acknowledged),
            increments: get(&self.increments),
            counter_batches: get(&self.counter_batches),
            coalesced: get(&self.coalesced),
            conflicts: get(&self.conflicts),
            batches: get(&self.batches),
            rows_written: get(&self.rows_written),
            retries: get(&self.retries),
            dead_lettered: get(&self.dead_lettered),
            fenced: get(&self.fenced),
            backlog: get(&self.backlog),
            oldest_ms: get(&self.oldest_ms),
            dead_letters: get(&self.dead_letters),
            alerts: get(&self.alerts),
        }
    }
}

/// A write-back cache's shared state: settings, the log, the counters,
/// and the flusher's controls.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) settings: WriteBackOptions,
    pub(crate) log: Arc<dyn DirtyLog>,
    pub(crate) shards: Vec<ShardKeys>,
    pub(crate) counters: Counters,
    /// The background flusher: started by the builder, stopped and
    /// drained by `close`.
    pub(crate) flusher: flusher::Flusher,
    /// This instance's flush lease token.
    pub(crate) token: String,
    /// Set once the store proved durable enough (checked on first use
    /// when it did not answer at build).
    pub(crate) durable: tokio::sync::OnceCell<()>,
    /// Set once the source prepared its fence rows.
    pub(crate) fence_ready: tokio::sync::OnceCell<()>,
    /// Foreign-key failures per id: retried a few times before the row
    /// counts as refused (another entity's row may not be flushed yet).
    pub(crate) fk_attempts: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// The keys of one shard's write-back state.
pub(crate) fn shard_keys(keys: &KeySpace, shard: u16) -> ShardKeys {
    ShardKeys {
        shard,
        queue_key: keys.shard_key(shard, "q"),
        lease_key: keys.shard_key(shard, "f"),
        epoch_key: keys.shard_key(shard, "e"),
        dead_key: keys.shard_key(shard, "x"),
        dead_value_key: keys.shard_key(shard, "xv"),
        dirty_prefix: keys.shard_prefix(shard, KeyKind::Dirty),
    }
}

impl State {
    pub(crate) fn stats(&self) -> WriteBackStats {
        self.counters.snapshot()
    }
}
