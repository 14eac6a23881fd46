//! Sources: the primary data store, the truth behind the cache.
//!
//! A [`Source`] loads rows by id (one, or many in one query) and, when it is
//! writable, stores and deletes them. [`SqlSource`] maps an entity to a
//! PostgreSQL, SQLite or MariaDB table; [`FnSource`] wraps a closure for
//! cache-aside users whose data comes from anywhere.

mod func;
mod sql;

pub use self::func::FnSource;
pub use self::sql::classify as classify_sql_error;
pub(crate) use self::sql::refusal_of_cause;
pub(crate) use self::sql::Fault;
pub(crate) use self::sql::MAX_EXACT_SCORE;
pub use self::sql::{
    mark_larder_origin, ChangeChannel, ChangeHandler, ChangeListener, ChangeListenerBuilder,
    ChangeStats, ColumnInfo, SqlPool, SqlSource, SqlSourceBuilder,
};
pub use self::sql::{
    SqlBoardSource, SqlBoardSourceBuilder, SqlFeedSource, SqlFeedSourceBuilder, SqlSetSource,
    SqlSetSourceBuilder,
};

use crate::error::{Error, Result};
use async_trait::async_trait;
use std::collections::HashMap;
use std::time::Duration;

/// A write-back flush's fence: the flusher's shard and the epoch of its
/// flush lease. A fencing source commits the batch only if no flush with a
/// newer epoch committed for the shard (see the `larder_fence` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The fenced entity: `<prefix>:<entity>` of the cache (not the table).
    pub entity: String,
    /// The shard.
    pub shard: u16,
    /// The epoch of the flusher's lease.
    pub epoch: u64,
}

/// One write-back flush: upserts, column updates and deletes to commit
/// together.
#[derive(Debug)]
pub struct FlushBatch<'a, V> {
    /// Rows to insert or replace (ids distinct).
    pub upserts: &'a [(String, V)],
    /// Columns to update in existing rows (a `hash` entity's patched
    /// fields; ids distinct from the upserts'): an UPDATE of just those
    /// columns. An id whose row is gone is reported in
    /// [`Flushed::missing`], never inserted.
    pub updates: &'a [(String, serde_json::Map<String, serde_json::Value>)],
    /// Ids to delete.
    pub deletes: &'a [String],
    /// The flusher's fence.
    pub fence: Fence,
    /// The longest any statement may run (kept below the flush lease).
    pub statement_timeout: Duration,
}

/// What one write-back flush committed, row by row; see [`Source::flush`].
///
/// An upserted id that is in neither list was not written: the statement
/// succeeded without it (a `BEFORE` trigger returned `NULL`), so the
/// flusher moves it to the dead letters as "skipped by a trigger".
#[derive(Debug)]
#[non_exhaustive]
pub struct Flushed<V> {
    /// The rows as stored, in the shape of a load (what gets cached).
    pub stored: Vec<(String, V)>,
    /// Ids the transaction committed whose stored row is not known (it did
    /// not decode, or the reply to `COMMIT` was lost and the fence showed
    /// the commit): their records are cleared and their entries
    /// invalidated, and the batch is never applied again.
    pub unread: Vec<String>,
    /// Ids of [`FlushBatch::updates`] that matched no row (it was deleted
    /// meanwhile): nothing was written for them; the flusher moves them to
    /// the dead letters.
    pub missing: Vec<String>,
}

impl<V> Flushed<V> {
    /// A flush that stored `stored` and nothing else.
    pub fn new(stored: Vec<(String, V)>) -> Self {
        Self {
            stored,
            unread: Vec::new(),
            missing: Vec::new(),
        }
    }
}

/// One write-back counter batch: the claimed record of a shard, to commit
/// whole in one fenced transaction or not at all (see
/// [`Source::flush_counters`]).
#[derive(Debug)]
pub struct CounterBatch<'a> {
    /// The claimed record's random batch id: the fence step records it and
    /// refuses it a second time.
    pub batch: &'a str,
    /// The deltas to add, by id then column (ids distinct).
    pub deltas: &'a [(String, Vec<(String, i64)>)],
    /// The flusher's fence.
    pub fence: Fence,
    /// The longest any statement may run (kept below the flush lease).
    pub statement_timeout: Duration,
    /// Run every statement, then roll back instead of committing: whether
    /// the batch would be refused, without writing anything.
    pub rehearse: bool,
}

/// What committing a counter batch did.
#[derive(Debug)]
#[non_exhaustive]
pub enum CountersFlushed {
    /// Committed (or, rehearsed, would commit); the ids whose row was not
    /// there (nothing was added for them: the flusher moves their deltas
    /// to the dead letters).
    Committed {
        /// Ids without a row.
        missing: Vec<String>,
    },
    /// Nothing was committed: the fence shows this batch id committed
    /// already (a replay after a crash between commit and clear).
    Replayed,
    /// Nothing was committed: the database refused the row of `id` (a
    /// row's fault, e.g. a CHECK); the rest may be committed without it.
    Refused {
        /// The refused id.
        id: String,
        /// Why.
        error: Error,
    },
}

/// A column that write-back increments count (see
/// [`Source::counter_column`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterColumn {
    /// An integer column: deltas and values are integers in this
    /// inclusive range.
    Integer {
        /// The smallest value the column holds.
        min: i64,
        /// The largest value the column holds.
        max: i64,
    },
    /// A `numeric(p, s)` column: values and deltas are counted exactly in
    /// units of 10^-`scale` (never in binary floating point).
    Decimal {
        /// Its decimal places, `s`.
        scale: u32,
        /// Its digits, `p`, when bounded (a sum with more is refused).
        precision: Option<u32>,
    },
}

/// Where values come from on a miss, and where writes go.
///
/// Ids are canonical (see [`Source::canonical_id`]). Only `load` is required;
/// the defaults of the others load one by one and refuse writes.
#[async_trait]
pub trait Source<V: Send + Sync + 'static>: Send + Sync + 'static {
    /// The canonical form of an id: an integer key turns `"007"` into `"7"`
    /// and refuses `"abc"` with [`Error::InvalidId`]. Default: unchanged.
    fn canonical_id(&self, id: &str) -> Result<String> {
        Ok(id.to_owned())
    }

    /// Whether `id` is already what [`Source::canonical_id`] makes of it,
    /// so that the cache may use it as it is, without a copy (a read the
    /// near cache answers then allocates nothing). Default: `false`, which
    /// is always correct: the cache asks `canonical_id`.
    fn is_canonical(&self, id: &str) -> bool {
        let _ = id;
        false
    }

    /// Loads one row; `None` when there is none.
    async fn load(&self, id: &str) -> Result<Option<V>>;

    /// Loads many rows; ids without a row are absent from the map.
    /// Default: one `load` after another.
    async fn load_many(&self, ids: &[String]) -> Result<HashMap<String, V>> {
        let mut found = HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = self.load(id).await? {
                found.insert(id.clone(), v);
            }
        }
        Ok(found)
    }

    /// A page of rows in key order after `after` (exclusive), at most
    /// `limit`, for warming the whole entity. Default: unsupported.
    async fn load_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, V)>> {
        let _ = (after, limit);
        Err(Error::Config(
            "this source cannot list its rows; warm it with explicit keys".into(),
        ))
    }

    /// Whether this source accepts writes.
    fn is_writable(&self) -> bool {
        false
    }

    /// Inserts or replaces one row and returns it as stored (defaults,
    /// triggers, normalised types included). Default: refused.
    async fn store(&self, id: &str, value: &V) -> Result<V> {
        let _ = (id, value);
        Err(self.read_only())
    }

    /// Inserts or replaces many rows in one statement (the last write of an
    /// id wins) and returns them as stored. Default: one `store` after another.
    async fn store_many(&self, rows: &[(String, V)]) -> Result<Vec<(String, V)>> {
        let mut stored = Vec::with_capacity(rows.len());
        for (id, value) in rows {
            stored.push((id.clone(), self.store(id, value).await?));
        }
        Ok(stored)
    }

    /// Updates only the given columns of an existing row (`null` sets NULL)
    /// and returns the row as stored; `None` when there is no such row, and
    /// nothing is written. Two writers patching different columns both land.
    /// Default: refused.
    async fn patch(
        &self,
        id: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<V>> {
        let _ = (id, fields);
        Err(self.read_only())
    }

    /// Adds `by` to the numeric `column` of an existing row in one
    /// statement and returns the row as stored; `None` when there is no
    /// such row, and nothing is written. Concurrent increments all count.
    /// Default: refused ([`Error::Unsupported`]; [`Error::ReadOnly`] for a
    /// read-only source).
    async fn incr(&self, id: &str, column: &str, by: &serde_json::Number) -> Result<Option<V>> {
        let _ = (id, column, by);
        if !self.is_writable() {
            return Err(self.read_only());
        }
        Err(Error::Unsupported {
            entity: String::new(),
            what: "increments".into(),
            reason: "this source has no atomic increment; use a SQL source".into(),
        })
    }

    /// Deletes a row; whether there was one. Default: refused.
    async fn delete(&self, id: &str) -> Result<bool> {
        let _ = id;
        Err(self.read_only())
    }

    /// Checks a row before a write is acknowledged (write-back validates
    /// before it queues). Default: every row is accepted.
    fn check(&self, id: &str, value: &V) -> Result<()> {
        let _ = (id, value);
        Ok(())
    }

    /// Checks the fields of a patch before it is acknowledged. Default:
    /// accepted.
    fn check_patch(
        &self,
        id: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let _ = (id, fields);
        Ok(())
    }

    /// Whether [`Source::flush`] honours its fence (one transaction that
    /// checks the epoch). Default: `false`, and write-back says so at start.
    fn fences_flushes(&self) -> bool {
        false
    }

    /// Prepares write-back for `entity` over `shards` shards (a fencing
    /// source creates its fence rows). Default: nothing to do.
    async fn prepare_write_back(&self, entity: &str, shards: u16) -> Result<()> {
        let _ = (entity, shards);
        Ok(())
    }

    /// Commits one write-back batch and returns what it committed (see
    /// [`Flushed`]). A fencing source does it in one transaction that
    /// first checks the fence and fails with [`Error::Fenced`] when a newer
    /// flusher committed. An error means nothing was committed. Default:
    /// `store_many`, one `patch` per update, then one `delete` per id,
    /// unfenced.
    async fn flush(&self, batch: FlushBatch<'_, V>) -> Result<Flushed<V>> {
        let mut stored = if batch.upserts.is_empty() {
            Vec::new()
        } else {
            self.store_many(batch.upserts).await?
        };
        let mut missing = Vec::new();
        for (id, fields) in batch.updates {
            match self.patch(id, fields).await? {
                Some(row) => stored.push((id.clone(), row)),
                None => missing.push(id.clone()),
            }
        }
        for id in batch.deletes {
            self.delete(id).await?;
        }
        let mut flushed = Flushed::new(stored);
        flushed.missing = missing;
        Ok(flushed)
    }

    /// What kind of counter `column` is, checking a write-back increment
    /// of it by `by` as [`Source::incr`] would (an unknown or non-numeric
    /// column, a `by` of the wrong type or scale: [`Error::InvalidRow`]).
    /// Default: refused ([`Error::Unsupported`]).
    fn counter_column(
        &self,
        id: &str,
        column: &str,
        by: &serde_json::Number,
    ) -> Result<CounterColumn> {
        let _ = (id, column, by);
        Err(Error::Unsupported {
            entity: String::new(),
            what: "increments under write-back".into(),
            reason: "this source cannot add deltas in a fenced transaction; use a SQL source"
                .into(),
        })
    }

    /// The scale of `column`'s write-back deltas: a `numeric(p, s)`
    /// column counts in units of 10^-s (see [`CounterColumn::Decimal`]),
    /// an integer column in ones (0, the default).
    fn counter_scale(&self, column: &str) -> u32 {
        let _ = column;
        0
    }

    /// Commits a counter batch in one fenced transaction, or nothing (see
    /// [`CountersFlushed`]); an error means nothing was committed.
    /// Default: refused ([`Error::Unsupported`]).
    async fn flush_counters(&self, batch: CounterBatch<'_>) -> Result<CountersFlushed> {
        let _ = batch;
        Err(Error::Unsupported {
            entity: String::new(),
            what: "increments under write-back".into(),
            reason: "this source cannot add deltas in a fenced transaction; use a SQL source"
                .into(),
        })
    }

    /// The error a read-only source answers writes with.
    fn read_only(&self) -> Error {
        Error::ReadOnly {
            entity: String::new(),
            reason: "its source does not accept writes".into(),
        }
    }
}
