//! Reads of a `hash` entity under write-back never go back in time.
//!
//! Why this is needed: a write-back `patch` of a hash entry sets only its
//! fields, and when the hash is absent (expired, evicted, never loaded) it
//! records them without creating a partial hash. The next read then loads
//! the database's row, which lacks them until the flush. The fill script
//! lays the pending fields over the loaded row in Redis; but when it did
//! (or when the fill was refused because a write voided the lease), the
//! row the reader loaded is not what the cache now holds. Such a read
//! reads the id's pending write (one `HGETALL` of the dirty record, only
//! on this path) and lays it over its row in process — a pending whole
//! row replaces it, a tombstone makes it absent, pending fields replace
//! those columns — so it answers at least every write acknowledged
//! before it began.
//!
//! Increments (`counter.rs`) are laid over the same way: the unclaimed
//! deltas are added to their columns, over a row loaded while no counter
//! batch holding the id was claimed or cleared (see
//! [`Inner::overlay_pending`]).

use crate::cache::Inner;
use crate::error::{Error, Result};
use crate::representation::Representation;
use crate::store::{delta_column, overlay_object, CounterState, PendingHash};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl<V: Send + Sync + 'static> Inner<V> {
    /// Whether a loaded row may lack pending writes that the store holds
    /// as fields (a `hash` entity under write-back).
    pub(crate) fn overlays_pending(&self) -> bool {
        self.write_back.is_some() && self.keys.representation() == Representation::Hash
    }

    /// `loaded` (the source's row of `id`) with the id's pending
    /// write-back write and unclaimed increments laid over it; `loaded`
    /// itself when nothing is pending or the entity holds no field patches.
    ///
    /// Increments: a loaded row may lack a counter batch committed (and
    /// cleared) after it was read, or hold one whose claimed record is not
    /// cleared yet — the two cannot be told apart from the row. So once the
    /// shard has cleared a batch (or holds the id claimed), the row is
    /// loaded again between two reads of the shard's count of clears, until
    /// no batch holding the id was claimed or cleared meanwhile (waiting up
    /// to `wait_timeout` while one is claimed); that row plus the unclaimed
    /// deltas counts each increment once.
    pub(crate) async fn overlay_pending(
        &self,
        id: &str,
        loaded: Option<Arc<V>>,
    ) -> Result<Option<Arc<V>>> {
        if !self.overlays_pending() {
            return Ok(loaded);
        }
        let state = self.write_back_state()?;
        let keys = self.dirty_keys(id);
        let found = state.log.counter_state(&keys).await;
        let (mut pending, mut counters) = found.inspect_err(|e| self.store_failed(e))?;
        let mut loaded = loaded;
        let base_matters = matches!(pending, None | Some(PendingHash::Fields(_)));
        if base_matters && (counters.clears > 0 || counters.claimed) {
            (loaded, pending, counters) = self.reload_counted(id, &keys, counters).await?;
        }
        let row = self.lay_pending(id, loaded, pending)?;
        self.lay_deltas(id, row, &counters.deltas)
    }

    /// The row of `id` loaded while no counter batch holding it was
    /// claimed or cleared, with the pending write and counter state read
    /// right after (see [`Inner::overlay_pending`]).
    async fn reload_counted(
        &self,
        id: &str,
        keys: &crate::store::DirtyKeys,
        mut before: CounterState,
    ) -> Result<(Option<Arc<V>>, Option<PendingHash>, CounterState)> {
        let state = self.write_back_state()?;
        let source = self.require_source()?;
        let deadline = Instant::now() + self.policy.wait_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if !before.claimed {
                let row = source.load(id).await?.map(Arc::new);
                let found = state.log.counter_state(keys).await;
                let (pending, after) = found.inspect_err(|e| self.store_failed(e))?;
                if after.clears == before.clears && !after.claimed {
                    return Ok((row, pending, after));
                }
                before = after;
            }
            if Instant::now() >= deadline {
                return Err(Error::LoadTimeout {
                    entity: self.keys.entity().to_owned(),
                    id: id.to_owned(),
                    after: self.policy.wait_timeout,
                });
            }
            if before.claimed {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
                let found = state.log.counter_state(keys).await;
                before = found.inspect_err(|e| self.store_failed(e))?.1;
            }
        }
    }

    /// `loaded` with a pending write laid over (see [`Inner::overlay_pending`]).
    fn lay_pending(
        &self,
        id: &str,
        loaded: Option<Arc<V>>,
        pending: Option<PendingHash>,
    ) -> Result<Option<Arc<V>>> {
        let entity = self.keys.entity();
        match pending {
            None => Ok(loaded),
            Some(PendingHash::Deleted) => Ok(None),
            Some(PendingHash::Row(row)) => Ok(Some(Arc::new(self.codec.decode(entity, id, row)?))),
            Some(PendingHash::Fields(columns)) => {
                // Pending fields of a row the source does not have (its
                // patcher withdraws them; a row deleted behind the cache's
                // back dead-letters them at the flush): no row is the answer.
                let Some(row) = loaded else {
                    return Ok(None);
                };
                let base = self.codec.encode(entity, &row)?;
                let merged =
                    overlay_object(&base, &columns).map_err(|reason| Error::InvalidRow {
                        entity: entity.to_owned(),
                        id: id.to_owned(),
                        reason,
                    })?;
                Ok(Some(Arc::new(self.codec.decode(
                    entity,
                    id,
                    Bytes::from(merged),
                )?)))
            }
        }
    }

    /// `row` with unclaimed increments added to their columns (NULL
    /// counting as 0).
    fn lay_deltas(
        &self,
        id: &str,
        row: Option<Arc<V>>,
        deltas: &[(String, i64)],
    ) -> Result<Option<Arc<V>>> {
        let Some(row) = row else {
            return Ok(None);
        };
        if deltas.is_empty() {
            return Ok(Some(row));
        }
        let entity = self.keys.entity();
        let invalid = |reason: String| Error::InvalidRow {
            entity: entity.to_owned(),
            id: id.to_owned(),
            reason,
        };
        let base = self.codec.encode(entity, &row)?;
        let mut columns = serde_json::Map::new();
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&base)
            .map_err(|e| invalid(format!("a row is not a JSON object: {e}")))?;
        let source = self.require_source()?;
        for (field, delta) in deltas {
            // A numeric(p, s) column counts in units of 10^-s, summed
            // exactly; an integer column in ones.
            let (column, decimal) = delta_column(field);
            let scale = if decimal {
                source.counter_scale(column)
            } else {
                0
            };
            let current = columns.get(column).or(object.get(column));
            let current = match current {
                None | Some(serde_json::Value::Null) => Some(0),
                Some(serde_json::Value::Number(n)) => {
                    crate::decimal::to_units(&n.to_string(), scale)
                }
                Some(_) => None,
            };
            let current = current.ok_or_else(|| {
                invalid(format!(
                    "column `{column}` does not hold a number of {scale} decimal places: {}",
                    object
                        .get(column)
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ))
            })?;
            let sum = current
                .checked_add(i128::from(*delta))
                .filter(|sum| scale > 0 || i64::try_from(*sum).is_ok())
                .ok_or_else(|| invalid(format!("column `{column}` overflows 64 bits")))?;
            let value = if scale == 0 {
                serde_json::Value::from(i64::try_from(sum).unwrap_or_default())
            } else {
                serde_json::from_str(&crate::decimal::from_units(sum, scale))
                    .map_err(|e| invalid(e.to_string()))?
            };
            columns.insert(column.to_owned(), value);
        }
        let columns = serde_json::to_vec(&columns).map_err(|e| invalid(e.to_string()))?;
        let merged = overlay_object(&base, &columns).map_err(invalid)?;
        Ok(Some(Arc::new(self.codec.decode(
            entity,
            id,
            Bytes::from(merged),
        )?)))
    }
}
