//! Write-back increments of a `hash` entity: the acknowledging side.
//!
//! Why not a patch: an increment must add, not overwrite — two instances
//! incrementing one row at once both count, and the database must see the
//! sum exactly once. So an increment changes the cached field (`HINCRBY`,
//! when the hash is cached) and the id's durable per-column delta in one
//! script, and the flusher adds the deltas in SQL (`store/counters.rs`,
//! `flusher.rs`).
//!
//! A `numeric(p, s)` column counts exactly, never in binary floating point
//! (`HINCRBYFLOAT` and Lua's numbers are doubles): its delta is an integer
//! number of units of 10^-s (`HINCRBY`, in a field marked as decimal), and
//! the script sums its cached field exactly on digit strings (a
//! `numeric(17, 2)` value is beyond the 2^53 that Lua's doubles hold
//! exactly); a field that is not a number of the column's scale drops the
//! cached hash instead. The flush sends the delta as exact decimal text. Floating-point and unconstrained
//! `numeric` columns are refused (no fixed scale to count in).
//!
//! Whether the row exists is decided from the cache (a pending delete or a
//! negative entry: none), else from the database, *before* anything is
//! recorded: an increment of a row that is not cached first reads it
//! through (which fills the hash), then counts. When the hash is still not
//! cached (the fill was refused), the delta is recorded without creating a
//! partial hash, and the answer is read through again (the row with the
//! pending deltas laid over), never just `by`.

use super::Counters;
use crate::cache::{CacheWrite, Inner, Written};
use crate::decimal;
use crate::envelope::Freshness;
use crate::error::{Error, Result};
use crate::key::IdText;
use crate::source::CounterColumn;
use crate::store::{Count, CountStep, Counted};
use std::sync::Arc;

impl<V: Send + Sync + 'static> Inner<V> {
    /// [`Cache::incr`](crate::Cache::incr) under write-back on a `hash`
    /// entity: the row as the cache then holds it, acknowledged as
    /// [`CacheWrite::Queued`]; `None` when the row does not exist (nothing
    /// recorded).
    pub(crate) async fn incr_back(
        self: &Arc<Self>,
        id: &str,
        column: &str,
        by: &serde_json::Number,
    ) -> Result<Option<Written<V>>> {
        let state = self.open_state()?;
        let source = self.require_source()?;
        let entity = self.keys.entity();
        let kind = source.counter_column(id, column, by).map_err(|e| match e {
            Error::Unsupported { what, reason, .. } => Error::Unsupported {
                entity: entity.to_owned(),
                what,
                reason,
            },
            other => other,
        })?;
        let beyond = |reason: String| Error::OutOfRange {
            entity: entity.to_owned(),
            id: id.to_owned(),
            reason,
        };
        // `counter_column` checked the type and scale of `by`: what is
        // left to refuse is its size.
        let counter = Counter::of(kind, column, by).map_err(beyond)?;
        self.flights.forget(id);
        self.ready_to_write(state).await?;
        if counter.by == 0 {
            // Nothing to count: the row as it is.
            let read = self
                .read_uncounted(IdText::borrowed(id), Inner::source_loader)
                .await?;
            return Ok(read.value.map(|value| Written {
                value,
                cache: CacheWrite::Queued,
            }));
        }
        self.wait_for_room(state, id).await?;
        let ids = [id.to_owned()];
        let mut only_cached = true;
        loop {
            let count = Count {
                column: column.to_owned(),
                by: counter.by,
                step: counter.step(),
                now_ms: self.clock.now_ms(),
                only_cached,
                announce: Some(self.coherence.bus.announcement(&ids)),
            };
            let counted = state.log.count(&self.dirty_keys(id), &count).await;
            let counted = counted.inspect_err(|e| self.store_failed(e))?;
            match counted {
                Counted::NoRow => return Ok(None),
                Counted::NotCached => {
                    // The database decides whether the row exists, before
                    // anything is recorded; the read fills the hash.
                    let read = self
                        .read_uncounted(IdText::borrowed(id), Inner::source_loader)
                        .await?;
                    if read.value.is_none() {
                        return Ok(None);
                    }
                    only_cached = false;
                }
                Counted::Cached {
                    entry, confirmed, ..
                } => {
                    self.counted(state, id).await;
                    let cached = entry
                        .and_then(|bytes| self.decode_entry(id, bytes).ok())
                        .filter(|e| e.freshness(self.clock.now_ms()) != Freshness::Expired)
                        .and_then(|e| e.into_value());
                    let value = match cached {
                        Some(value) => Some(value),
                        None => self.read_after_count(id).await?,
                    };
                    return Ok(value.map(|value| Written {
                        value,
                        cache: CacheWrite::queued(confirmed),
                    }));
                }
                Counted::Uncached { confirmed } => {
                    self.counted(state, id).await;
                    // Recorded: a row deleted since the check leaves the
                    // delta to the flush, which dead-letters it.
                    let value = self.read_after_count(id).await?;
                    return Ok(value.map(|value| Written {
                        value,
                        cache: CacheWrite::queued(confirmed),
                    }));
                }
                Counted::OutOfRange(sum) => {
                    return Err(beyond(format!(
                        "column `{column}` would hold {sum}, outside its range {}",
                        counter.range_text()
                    )))
                }
                Counted::Refused(why) => {
                    return Err(beyond(format!(
                        "column `{column}` cannot be incremented in the cache: {why}"
                    )))
                }
            }
        }
    }

    /// The row after a recorded increment: read through (a fill lays the
    /// pending deltas over the loaded row, see `overlay.rs`).
    async fn read_after_count(self: &Arc<Self>, id: &str) -> Result<Option<Arc<V>>> {
        Ok(self
            .read_uncounted(IdText::borrowed(id), Inner::source_loader)
            .await?
            .value)
    }

    /// Counts an acknowledged increment and tells the near caches.
    async fn counted(&self, state: &super::State, id: &str) {
        self.flights.forget(id);
        self.coherence.bus.announced(&[id.to_owned()]).await;
        let c = &state.counters;
        Counters::add(&c.acknowledged, 1);
        Counters::add(&c.increments, 1);
    }
}

/// One increment, in the units its column counts in.
struct Counter {
    kind: CounterColumn,
    /// Ones for an integer column, units of 10^-s for a numeric one.
    by: i64,
}

impl Counter {
    /// `by` of `column` in units, or why it cannot be counted.
    fn of(
        kind: CounterColumn,
        column: &str,
        by: &serde_json::Number,
    ) -> std::result::Result<Self, String> {
        let units = match kind {
            CounterColumn::Integer { min, max } => {
                let n = by
                    .as_i64()
                    .ok_or_else(|| format!("an increment is a 64-bit integer, got {by}"))?;
                if n < min || n > max {
                    return Err(format!(
                        "an increment of column `{column}` fits its range {min}..={max}, got {by}"
                    ));
                }
                n
            }
            CounterColumn::Decimal { scale, .. } => decimal::to_units(&by.to_string(), scale)
                .and_then(|u| i64::try_from(u).ok())
                .ok_or_else(|| {
                    format!(
                        "an increment of column `{column}` has at most {scale} decimal places and fits 64 bits in units of 10^-{scale}, got {by}"
                    )
                })?,
        };
        if units == i64::MIN {
            return Err(format!(
                "an increment of column `{column}` is out of range: {by}"
            ));
        }
        Ok(Counter { kind, by: units })
    }

    /// How the script changes the cached field.
    fn step(&self) -> CountStep {
        match self.kind {
            CounterColumn::Integer { min, max } => CountStep::Integer { range: (min, max) },
            CounterColumn::Decimal { scale, precision } => CountStep::Decimal { scale, precision },
        }
    }

    /// The column's range, for messages.
    fn range_text(&self) -> String {
        match self.kind {
            CounterColumn::Integer { min, max } => format!("{min}..={max}"),
            CounterColumn::Decimal {
                scale,
                precision: Some(p),
            } => {
                let max = decimal::max_units(p).unwrap_or(i128::MAX);
                format!(
                    "{}..={}",
                    decimal::from_units(-max, scale),
                    decimal::from_units(max, scale)
                )
            }
            CounterColumn::Decimal { .. } => "(unbounded)".to_owned(),
        }
    }
}
