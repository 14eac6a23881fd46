//! Write-back counters: the store side of increments on `hash` entities.
//!
//! Why deltas and not values: an increment acknowledged in the store must
//! reach the database exactly once, whatever crashes in between, and many
//! instances increment one row at once. So the store keeps, per id and
//! column, the *sum of increments not yet flushed* (a delta), and the
//! flusher adds it in SQL (`col = COALESCE(col, 0) + delta`), never writing
//! a value read from the cache.
//!
//! | key | what |
//! |---|---|
//! | `…:{e:s}:c:<id>` | the id's unclaimed deltas: a hash, column → integer (a `numeric(p, s)` column's field is its name and a NUL: units of 10^-s) |
//! | `…:{e:s}:cq` | the shard's ids with unclaimed deltas, scored by when the first arrived |
//! | `…:{e:s}:cb` | the shard's claimed record: `b` = its random batch id, `d:<id>` = that id's deltas (JSON, column → integer text); immutable under its id |
//! | `…:{e:s}:cn` | how many claimed records the shard has cleared (never reset) |
//! | `…:{e:s}:cx` | counter dead letters: `<id>#<batch>` → why and the deltas (JSON) |
//!
//! Exactly once rests on four steps, each one script:
//! - *increment*: the cached field (when the hash is there: `HINCRBY`) and
//!   the unclaimed delta change together, then the increment is
//!   acknowledged;
//! - *claim*: the flusher moves the unclaimed deltas of some ids into the
//!   claimed record under a new random batch id — at most one per shard,
//!   later increments go to fresh unclaimed deltas. Ids with a pending
//!   dirty record (a `put`, `patch` or delete) are left unclaimed until
//!   that record is flushed, so the database sees the writes of an id in
//!   the order they were acknowledged;
//! - *commit* (in the database): the fence step records the batch id and
//!   refuses it a second time (`batch IS DISTINCT FROM $b`), so a replay
//!   after a crash between commit and clear commits nothing;
//! - *clear*: checked by batch id, voids the read lease of every id in the
//!   record (a load from before the commit cannot fill afterwards) and
//!   counts the clear in `cn`.
//!
//! A fill is refused while the claimed record holds the id (the loaded row
//! may or may not hold the batch) and lays the unclaimed deltas over the
//! loaded row; a read that could not fill compares `cn` before and after
//! its load (see `cache/write_back/overlay.rs`).

/// What follows a column's name in the field of a `numeric(p, s)`
/// column's delta: the delta counts units of 10^-s, not ones, and must
/// never be added as an integer (Redis' `HINCRBY` on the cached field, or
/// SQL as ones). NUL cannot be part of a column's name.
pub(crate) const DECIMAL_MARK: char = '\0';

/// The column a delta's field counts, and whether it counts units of a
/// `numeric(p, s)` column (see [`DECIMAL_MARK`]) rather than ones.
pub(crate) fn delta_column(field: &str) -> (&str, bool) {
    match field.strip_suffix(DECIMAL_MARK) {
        Some(column) => (column, true),
        None => (field, false),
    }
}

/// The counter keys of one id, derived from any key of its shard (all
/// share the `<prefix>:{<entity>:<shard>}:` head).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CounterKeys {
    /// The id's unclaimed deltas.
    pub(crate) deltas: String,
    /// The shard's ids with unclaimed deltas.
    pub(crate) queue: String,
    /// The shard's claimed record.
    pub(crate) claimed: String,
    /// The shard's count of cleared claimed records.
    pub(crate) clears: String,
    /// The shard's counter dead letters.
    pub(crate) dead: String,
}

/// The `<prefix>:{<entity>:<shard>}:` head of a shard's key.
pub(super) fn head(shard_key: &str) -> &str {
    match shard_key.find("}:") {
        Some(at) => &shard_key[..at + 2],
        None => shard_key,
    }
}

impl CounterKeys {
    /// The counter keys of `id` from `shard_key`, any key of its shard.
    pub(crate) fn of(shard_key: &str, id: &str) -> Self {
        let head = head(shard_key);
        CounterKeys {
            deltas: format!("{head}c:{id}"),
            queue: format!("{head}cq"),
            claimed: format!("{head}cb"),
            clears: format!("{head}cn"),
            dead: format!("{head}cx"),
        }
    }
}

/// One increment to record (see [`super::DirtyLog::count`]).
#[derive(Debug, Clone)]
pub struct Count {
    /// The column.
    pub column: String,
    /// The increment, an integer other than `i64::MIN` (its negation
    /// undoes it): ones for an integer column, units of 10^-s for a
    /// `numeric(p, s)` column.
    pub by: i64,
    /// How the cached field changes.
    pub step: CountStep,
    /// Now, ms since the epoch (the queue's score).
    pub now_ms: u64,
    /// Only when the hash is cached: an absent hash records nothing.
    pub only_cached: bool,
    /// A channel and message to publish in the same script.
    pub announce: Option<(String, Vec<u8>)>,
}

/// How an increment changes the cached field (when the hash is cached);
/// the delta is recorded the same way in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CountStep {
    /// An integer column: `HINCRBY`, refused when the sum leaves `range`
    /// (inclusive).
    Integer {
        /// The column's inclusive range.
        range: (i64, i64),
    },
    /// A `numeric(p, s)` column: the cached field's text and the
    /// increment's units of 10^-`scale` summed exactly (on digits, never
    /// as doubles), refused when the sum has more than `precision` digits;
    /// a field that is not a number of this scale drops the cached hash
    /// (the next read loads it).
    Decimal {
        /// The column's decimal places, `s`.
        scale: u32,
        /// The column's digits, `p`, when bounded.
        precision: Option<u32>,
    },
}

/// What recording an increment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counted {
    /// Recorded, and added to the cached hash: the column's new value
    /// (decimal text) and the hash's envelope.
    Cached {
        /// The column's new value.
        value: String,
        /// The entry's envelope, when it decodes.
        entry: Option<bytes::Bytes>,
        /// Whether its durability is confirmed (see
        /// [`Recorded::Queued`](super::Recorded::Queued)).
        confirmed: bool,
    },
    /// Recorded; the hash is not cached (the lease was voided, no partial
    /// hash was created): the value comes from a read.
    Uncached {
        /// Whether its durability is confirmed.
        confirmed: bool,
    },
    /// The hash is not cached and `only_cached` was asked: nothing recorded.
    NotCached,
    /// The row is known not to exist (a pending delete, a negative
    /// entry): nothing recorded.
    NoRow,
    /// The sum would leave the column's range: nothing recorded; the sum.
    OutOfRange(String),
    /// The cached field is not an integer, or the delta would overflow
    /// 64 bits: nothing recorded; Redis' message.
    Refused(String),
}

/// An id's counter state, read atomically with its pending write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CounterState {
    /// The unclaimed deltas, by column.
    pub deltas: Vec<(String, i64)>,
    /// Whether the shard's claimed record holds the id.
    pub claimed: bool,
    /// How many claimed records the shard has cleared.
    pub clears: u64,
}

/// A shard's claimed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedCounters {
    /// Its random batch id.
    pub batch: String,
    /// The deltas, by id then column.
    pub deltas: Vec<(String, Vec<(String, i64)>)>,
}

/// A random batch id (128 bits, hex): never a Redis counter, which a
/// failover could roll back onto an id already committed.
pub(crate) fn batch_id() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}
