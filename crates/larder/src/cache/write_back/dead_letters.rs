//! Dead letters, and the write-back controls on [`Cache`]: what the
//! database refused (listed, retried, dropped), the counters, and `close`.
//!
//! A dead letter is a write the database refused at flush time (bad data,
//! a constraint, a trigger, row-level security, a foreign key still
//! missing after a few rounds), or a row a trigger skipped. It is no
//! longer served anywhere — its cache entry was deleted in the store and
//! the deletion announced on the invalidation bus, so every instance's
//! near cache drops it and reads load the database's row — but it is
//! kept, with the error, until someone retries it (it is recorded again as
//! a new write, unless a newer write of the id is pending, which wins) or
//! drops it.

use super::{flusher::Drain, WriteBackStats};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::store::StoredDeadLetter;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A write the database refused at flush time.
#[derive(Debug, Clone)]
pub struct DeadLetter<V> {
    /// The canonical id.
    pub id: String,
    /// The database's error, as text (for a row a trigger skipped: a text
    /// saying "skipped by a trigger").
    pub error: String,
    /// The database's code (SQLSTATE, SQLite's result code or MariaDB's
    /// error number), when it gave one.
    pub code: Option<String>,
    /// When the flush failed (ms since the Unix epoch, larder's clock).
    pub failed_at_ms: u64,
    /// The refused value; `None` for a refused delete, and for an
    /// increment's dead letter (see `deltas`).
    pub value: Option<Arc<V>>,
    /// For write-back increments the database refused (or whose row was
    /// gone): the deltas not applied, column → the sum as text (an integer,
    /// or a `numeric(p, s)` column's exact decimal).
    /// `None` for every other dead letter.
    pub deltas: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What [`Cache::close`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// Writes still pending in the store (they stay durable there and are
    /// flushed by another instance or the next start).
    pub pending: u64,
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// Write-back counters; `None` unless the cache uses write-back.
    pub fn write_back_stats(&self) -> Option<WriteBackStats> {
        self.inner.write_back.as_ref().map(|state| state.stats())
    }

    /// The dead letters of this entity (all instances), by id.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter<V>>> {
        let state = self.inner.write_back_state()?;
        let stored = state.log.dead_letters(&state.shards).await?;
        stored.into_iter().map(|s| self.dead_letter_of(s)).collect()
    }

    fn dead_letter_of(&self, stored: StoredDeadLetter) -> Result<DeadLetter<V>> {
        let why: serde_json::Value = serde_json::from_str(&stored.why).unwrap_or_default();
        let partial = why["partial"].as_bool().unwrap_or_default();
        let value = match stored.payload {
            // A hash entry's refused patch holds only its columns, which
            // a typed value may not decode from.
            Some(bytes) if partial => self
                .inner
                .codec
                .decode(self.entity(), &stored.id, bytes)
                .ok()
                .map(Arc::new),
            Some(bytes) => Some(Arc::new(self.inner.codec.decode(
                self.entity(),
                &stored.id,
                bytes,
            )?)),
            None => None,
        };
        let deltas = match &why["deltas"] {
            serde_json::Value::Object(deltas) if is_counter(&why) => {
                Some(self.decimal_deltas(deltas))
            }
            _ if is_counter(&why) => Some(serde_json::Map::new()),
            _ => None,
        };
        Ok(DeadLetter {
            error: why["error"].as_str().unwrap_or("unknown").to_owned(),
            code: why["code"].as_str().map(str::to_owned),
            failed_at_ms: why["failed_at_ms"].as_u64().unwrap_or_default(),
            id: stored.id,
            value,
            deltas,
        })
    }

    /// Stored deltas (column → units as integer text) as the column counts
    /// them: a `numeric(p, s)` column's units of 10^-s as decimal text.
    fn decimal_deltas(
        &self,
        stored: &serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let Some(source) = self.inner.source.as_ref() else {
            return stored.clone();
        };
        stored
            .iter()
            .map(|(field, units)| {
                let (column, decimal) = crate::store::delta_column(field);
                let scale = if decimal {
                    source.counter_scale(column)
                } else {
                    0
                };
                let shown = match units.as_str().and_then(|u| u.parse::<i128>().ok()) {
                    Some(units) if scale > 0 => {
                        serde_json::Value::from(crate::decimal::from_units(units, scale))
                    }
                    _ => units.clone(),
                };
                (column.to_owned(), shown)
            })
            .collect()
    }

    /// Records every dead letter again as a new write (a refused delete as
    /// a delete, a `hash` entity's refused patch as a patch), unless a
    /// newer write of its id is pending; then drops it. Returns how many
    /// were recorded again. An increment's dead letter (`deltas`) puts its
    /// deltas back among the id's pending increments, in one step with
    /// dropping it (the next flush adds them, or dead-letters them again
    /// if the database still refuses).
    pub async fn retry_dead_letters(&self) -> Result<usize> {
        let state = self.inner.write_back_state()?;
        let stored = state.log.dead_letters(&state.shards).await?;
        let mut retried = 0;
        for letter in stored {
            let id = letter.id.clone();
            let why: serde_json::Value = serde_json::from_str(&letter.why).unwrap_or_default();
            if is_counter(&why) {
                // A write: refused once closed, as every other retry is.
                self.inner.open_state()?;
                let field = format!("{id}#{}", why["batch"].as_str().unwrap_or_default());
                let announce = self
                    .inner
                    .coherence
                    .bus
                    .announcement(std::slice::from_ref(&id));
                let keys = self.inner.dirty_keys(&id);
                let now = self.inner.clock.now_ms();
                if state
                    .log
                    .retry_counter_dead_letter(&keys, &field, now, announce)
                    .await?
                {
                    self.inner.flights.forget(&id);
                    retried += 1;
                }
                continue;
            }
            let pending = state.log.state(&self.inner.dirty_keys(&id)).await?;
            let partial = why["partial"].as_bool().unwrap_or_default();
            if pending.record.is_none() {
                match &letter.payload {
                    // A refused patch of a hash entry: patched again.
                    Some(bytes) if partial => {
                        let fields: crate::JsonObject =
                            serde_json::from_slice(bytes).map_err(|e| Error::InvalidRow {
                                entity: self.entity().to_owned(),
                                id: id.clone(),
                                reason: format!("a dead letter's columns: {e}"),
                            })?;
                        self.inner.patch_fields_back(&id, &fields).await?;
                    }
                    Some(bytes) => {
                        let value = self.inner.codec.decode(self.entity(), &id, bytes.clone())?;
                        self.inner.put_back(&id, &value, &[]).await?;
                    }
                    None => {
                        self.inner.delete_back(&id).await?;
                    }
                }
                retried += 1;
            }
            state
                .log
                .drop_dead_letter(&self.inner.shard_keys(self.inner.keys.shard(&id)), &id)
                .await?;
        }
        Ok(retried)
    }

    /// Drops the dead letter of `key`; whether there was one.
    pub async fn drop_dead_letter(&self, key: &K) -> Result<bool> {
        let id = self.id_of(key)?;
        let state = self.inner.write_back_state()?;
        let shard = self.inner.shard_keys(self.inner.keys.shard(&id));
        state.log.drop_dead_letter(&shard, &id).await
    }

    /// Closes write-back: stops this cache's flusher, drains what is
    /// pending until none is left or `within` runs out, then gives up the
    /// cache's shards. What is left stays durable in the store (another
    /// instance, or the next start, flushes it).
    ///
    /// # Behavior
    /// - `close` owns the flusher: it stops the background task and waits
    ///   for its round to end before it drains, so no shard is ever flushed
    ///   twice at once under this instance's lease. If that round does not
    ///   end within `within`, nothing is drained here (the task stops after
    ///   its round) and the pending writes are reported.
    /// - From its start, writes (`put`, `patch`, `delete`, retried dead
    ///   letters) are refused with [`Error::Closed`]; a write already past
    ///   that check is recorded and left pending if the drain has ended.
    ///   Reads go on.
    /// - Idempotent: calls after the first (or at the same time, which
    ///   wait for it) drain what is left again and report it.
    /// - A cache without write-back has nothing to drain (and keeps
    ///   accepting writes).
    /// - Either way, owed invalidations are then retried for what is left
    ///   of `within`, and what is still owed is persisted
    ///   ([`Cache::deliver_invalidations`]).
    pub async fn close(&self, within: Duration) -> Result<Closed> {
        let Some(state) = self.inner.write_back.as_ref() else {
            self.deliver_invalidations(within).await;
            return Ok(Closed { pending: 0 });
        };
        let deadline = Instant::now() + within;
        match state.flusher.close(&self.inner, state, deadline).await {
            Drain::NotStopped => {
                self.deliver_invalidations(Duration::ZERO).await;
                self.closed_with(state, None).await
            }
            Drain::Drained(last_error) => {
                self.deliver_invalidations(deadline.saturating_duration_since(Instant::now()))
                    .await;
                self.closed_with(state, last_error).await
            }
        }
    }

    /// What `close` left pending (or the last error, if the store cannot say).
    async fn closed_with(&self, state: &super::State, last_error: Option<Error>) -> Result<Closed> {
        let pending = match state.log.backlog(&state.shards).await {
            Ok(backlogs) => backlogs.iter().map(|b| b.pending).sum(),
            Err(e) => return Err(last_error.unwrap_or(e)),
        };
        if pending > 0 {
            tracing::warn!(
                entity = self.entity(),
                pending,
                "closed with writes pending; they stay durable in the store for the next flusher"
            );
        }
        Ok(Closed { pending })
    }
}

/// Whether a stored dead letter's `why` is an increment's (its deltas were
/// not applied; it has no row to write again).
fn is_counter(why: &serde_json::Value) -> bool {
    why["counter"].as_bool().unwrap_or_default()
}
