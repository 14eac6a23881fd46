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

use crate::cache::Inner;
use crate::error::{Error, Result};
use crate::representation::Representation;
use crate::store::{overlay_object, PendingHash};
use bytes::Bytes;
use std::sync::Arc;

impl<V: Send + Sync + 'static> Inner<V> {
    /// Whether a loaded row may lack pending writes that the store holds
    /// as fields (a `hash` entity under write-back).
    pub(crate) fn overlays_pending(&self) -> bool {
        self.write_back.is_some() && self.keys.representation() == Representation::Hash
    }

    /// `loaded` (the source's row of `id`) with the id's pending
    /// write-back write laid over it; `loaded` itself when nothing is
    /// pending or the entity holds no field patches.
    pub(crate) async fn overlay_pending(
        &self,
        id: &str,
        loaded: Option<Arc<V>>,
    ) -> Result<Option<Arc<V>>> {
        if !self.overlays_pending() {
            return Ok(loaded);
        }
        let state = self.write_back_state()?;
        let pending = state.log.pending_hash(&self.dirty_keys(id)).await;
        let pending = pending.inspect_err(|e| self.store_failed(e))?;
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
}
