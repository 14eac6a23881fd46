//! The acknowledging side of write-back: `put`, `patch` and `delete`.
//!
//! A write is validated by the source first (the same checks as a
//! write-through), then recorded by one script; only then is it
//! acknowledged. `patch` and `delete` read the pending value if there is
//! one, else the database, and commit with a compare-and-set on the id's
//! write version, retrying when another writer got in between — so two
//! instances patching different fields of one row both land. A `hash`
//! entity's `patch` needs neither: its fields are fields of the hash and
//! of the dirty record, set by one script.

use super::{durability, Counters, State};
use crate::cache::Inner;
use crate::cache::{CacheWrite, Written};
use crate::codec::JsonObject;
use crate::error::{Error, Result};
use crate::store::{DirtyKeys, DirtyWrite, FieldPatch, Patched, Recorded, ShardKeys};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A recorded field patch of a `hash` entity (see
/// [`Inner::patch_fields_back`]).
pub(crate) struct PatchRecorded {
    /// The dirty record's sequence.
    pub(crate) seq: u64,
    /// Whether it joined a pending record.
    pub(crate) coalesced: bool,
    /// Whether its durability is confirmed (see [`CacheWrite::Unconfirmed`]).
    pub(crate) confirmed: bool,
    /// The patched entry's envelope, when the hash was there.
    pub(crate) entry: Option<Bytes>,
}

/// How long an id's write version outlives its last write. A `patch`
/// whose read and commit are further apart than this could miss a
/// concurrent write; nothing real is that slow.
const VERSION_TTL: Duration = Duration::from_secs(3600);

/// How often a compare-and-set is retried before giving up.
const CAS_ATTEMPTS: u32 = 32;

/// How often a writer waiting for room in the backlog looks again.
const ROOM_POLL: Duration = Duration::from_millis(5);

impl<V: Send + Sync + 'static> Inner<V> {
    /// The keys of `id`'s write-back state.
    pub(crate) fn dirty_keys(&self, id: &str) -> DirtyKeys {
        let shard = self.keys.shard(id);
        DirtyKeys {
            id: id.to_owned(),
            value_key: self.keys.value_key(id),
            lease_key: self.keys.lease_key(id),
            dirty_key: self.keys.dirty_key(id),
            queue_key: self.keys.shard_key(shard, "q"),
            seq_key: self.keys.shard_key(shard, "n"),
            version_key: self.keys.write_key(id),
        }
    }

    /// The keys of one shard's write-back state.
    pub(crate) fn shard_keys(&self, shard: u16) -> ShardKeys {
        super::shard_keys(&self.keys, shard)
    }

    /// The write-back state, for a write: refused once the cache is closed.
    pub(super) fn open_state(&self) -> Result<&Arc<State>> {
        let state = self.write_back_state()?;
        if state.flusher.is_closed() {
            return Err(Error::Closed {
                entity: self.keys.entity().to_owned(),
            });
        }
        Ok(state)
    }

    /// The write-back state; only called under `WritePolicy::Back`.
    pub(crate) fn write_back_state(&self) -> Result<&Arc<State>> {
        self.write_back.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "entity `{}` does not use write-back",
                self.keys.entity()
            ))
        })
    }

    /// The layout is recorded and the store proved durable enough.
    pub(crate) async fn ready_to_write(&self, state: &State) -> Result<()> {
        self.check_layout().await?;
        state
            .durable
            .get_or_try_init(|| {
                durability::check(self.keys.entity(), self.store.as_ref(), &state.settings)
            })
            .await
            .map(drop)
    }

    /// Waits while the backlog is at its bound, up to `wait_timeout`. A
    /// write of an id already pending replaces it and adds nothing, so it
    /// is let through (one more round trip, only while the backlog is full).
    pub(super) async fn wait_for_room(&self, state: &State, id: &str) -> Result<()> {
        let max = state.settings.max_backlog;
        let deadline = Instant::now() + self.policy.wait_timeout;
        loop {
            let backlog = state
                .counters
                .backlog
                .load(std::sync::atomic::Ordering::Relaxed);
            if backlog < max {
                return Ok(());
            }
            if state
                .log
                .state(&self.dirty_keys(id))
                .await?
                .record
                .is_some()
            {
                return Ok(());
            }
            state.flusher.wake();
            if Instant::now() >= deadline {
                return Err(Error::BacklogFull {
                    entity: self.keys.entity().to_owned(),
                    backlog,
                    max,
                });
            }
            tokio::time::sleep(ROOM_POLL).await;
        }
    }

    /// Records one write (`payload: None`: a delete), optionally only if
    /// the id's write version is `expect`.
    async fn record(
        &self,
        state: &State,
        id: &str,
        write: (Option<Vec<u8>>, Option<&V>, &[String]),
        expect: Option<u64>,
    ) -> Result<Recorded> {
        let (payload, value, tags) = write;
        self.open_state()?;
        self.flights.forget(id);
        self.ready_to_write(state).await?;
        self.wait_for_room(state, id).await?;
        let stamp = self.coherence.stamp(self.coherence.seq(), value, tags)?;
        let ids = [id.to_owned()];
        let (envelope, ttl) = self.envelope(payload.clone().map(Bytes::from), 0, stamp);
        let write = DirtyWrite {
            payload,
            envelope,
            ttl,
            now_ms: self.clock.now_ms(),
            expect_version: expect,
            version_ttl: VERSION_TTL,
            announce: Some(self.coherence.bus.announcement(&ids)),
        };
        let recorded = match state.log.record(&self.dirty_keys(id), &write).await {
            Ok(recorded) => recorded,
            Err(e) => {
                self.store_failed(&e);
                return Err(e);
            }
        };
        if let Recorded::Queued { coalesced, .. } = recorded {
            self.flights.forget(id);
            self.coherence.bus.announced(&ids).await;
            let c = &state.counters;
            Counters::add(&c.acknowledged, 1);
            if coalesced {
                Counters::add(&c.coalesced, 1);
            } else {
                let backlog = c.backlog.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if backlog.is_multiple_of(state.settings.batch as u64) {
                    state.flusher.wake();
                }
            }
        }
        Ok(recorded)
    }

    /// Write-back `put`: validated, recorded, acknowledged.
    pub(crate) async fn put_back(
        &self,
        id: &str,
        value: &V,
        tags: &[String],
    ) -> Result<Written<V>> {
        let state = self.open_state()?;
        let source = self.require_source()?;
        source.check(id, value)?;
        let payload = self.codec.encode(self.keys.entity(), value)?;
        let owned = self
            .codec
            .decode(self.keys.entity(), id, Bytes::from(payload.clone()))?;
        let recorded = self
            .record(state, id, (Some(payload), Some(&owned), tags), None)
            .await?;
        Ok(Written {
            value: Arc::new(owned),
            cache: CacheWrite::queued(recorded.is_confirmed()),
        })
    }

    /// The pending payload of `id` if a write is pending, else the
    /// database's row encoded; `None` when the row does not exist. With
    /// the write version it was read under.
    async fn current(&self, state: &State, id: &str) -> Result<(Option<Vec<u8>>, u64)> {
        self.ready_to_write(state).await?;
        let found = state.log.state(&self.dirty_keys(id)).await;
        let found = found.inspect_err(|e| self.store_failed(e))?;
        if let Some(record) = found.record {
            return Ok((record.payload.map(|b| b.to_vec()), found.version));
        }
        let row = self.require_source()?.load(id).await?;
        let payload = match row {
            Some(row) => Some(self.codec.encode(self.keys.entity(), &row)?),
            None => None,
        };
        Ok((payload, found.version))
    }

    /// Write-back `patch`: merge into the current value, compare-and-set
    /// (a `hash` entity sets just the fields instead, see
    /// [`Inner::patch_fields_back`]).
    pub(crate) async fn patch_back(
        &self,
        id: &str,
        fields: &JsonObject,
    ) -> Result<Option<Written<V>>> {
        let state = self.open_state()?;
        self.require_source()?.check_patch(id, fields)?;
        for attempt in 0..CAS_ATTEMPTS {
            let (current, version) = self.current(state, id).await?;
            let Some(current) = current else {
                return Ok(None);
            };
            let merged = self.codec.merge(self.keys.entity(), id, &current, fields)?;
            let value = self
                .codec
                .decode(self.keys.entity(), id, Bytes::from(merged.clone()))?;
            self.require_source()?.check(id, &value)?;
            let recorded = self
                .record(state, id, (Some(merged), Some(&value), &[]), Some(version))
                .await?;
            match recorded {
                Recorded::Queued { confirmed, .. } => {
                    return Ok(Some(Written {
                        value: Arc::new(value),
                        cache: CacheWrite::queued(confirmed),
                    }))
                }
                Recorded::Conflict => self.lost_compare_and_set(state, attempt).await,
            }
        }
        Err(self.busy(id))
    }

    /// Write-back `patch` of a `hash` entity: one script sets the fields
    /// on the hash (when it is there) and adds them to the id's dirty
    /// record — no read, no compare-and-set, so writers of different
    /// fields never conflict and patches of one field coalesce. When the
    /// hash is absent it creates nothing and voids the read lease.
    /// The record, and the patched entry when the hash was there, if it was
    /// recorded (`None`: the row is known not to exist — a pending delete
    /// or a negative entry). The caller reads the row and then either counts
    /// the patch ([`Inner::patch_acknowledged`]) or, when the row does not
    /// exist, withdraws it ([`Inner::withdraw_patch`]).
    pub(crate) async fn patch_fields_back(
        &self,
        id: &str,
        fields: &JsonObject,
    ) -> Result<Option<PatchRecorded>> {
        let state = self.open_state()?;
        self.require_source()?.check_patch(id, fields)?;
        self.flights.forget(id);
        self.ready_to_write(state).await?;
        self.wait_for_room(state, id).await?;
        let ids = [id.to_owned()];
        let patch = FieldPatch {
            fields: serde_json::to_vec(fields).map_err(|e| Error::InvalidRow {
                entity: self.keys.entity().to_owned(),
                id: id.to_owned(),
                reason: e.to_string(),
            })?,
            now_ms: self.clock.now_ms(),
            version_ttl: VERSION_TTL,
            announce: Some(self.coherence.bus.announcement(&ids)),
        };
        let patched = state.log.patch_fields(&self.dirty_keys(id), &patch).await;
        let patched = patched.inspect_err(|e| self.store_failed(e))?;
        let (
            Patched::Recorded(Recorded::Queued {
                seq,
                coalesced,
                confirmed,
            }),
            entry,
        ) = patched
        else {
            return Ok(None);
        };
        self.flights.forget(id);
        self.coherence.bus.announced(&ids).await;
        Ok(Some(PatchRecorded {
            seq,
            coalesced,
            confirmed,
            entry,
        }))
    }

    /// Counts an acknowledged field patch (see [`Inner::patch_fields_back`]).
    pub(crate) fn patch_acknowledged(&self, coalesced: bool) {
        let Some(state) = self.write_back.as_ref() else {
            return;
        };
        let c = &state.counters;
        Counters::add(&c.acknowledged, 1);
        if coalesced {
            Counters::add(&c.coalesced, 1);
        } else {
            let backlog = c.backlog.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if backlog.is_multiple_of(state.settings.batch as u64) {
                state.flusher.wake();
            }
        }
    }

    /// Withdraws the field patch recorded under `seq` when the read after
    /// it found no row (the database has none, nothing pending creates
    /// one): the patch is answered "no such row", as a string entity's is,
    /// and must not reach the flusher as an UPDATE of nothing. A later
    /// write of the id (the record's sequence moved on) keeps the record.
    pub(crate) async fn withdraw_patch(&self, id: &str, seq: u64) -> Result<()> {
        let state = self.write_back_state()?;
        state
            .log
            .withdraw_fields(&self.dirty_keys(id), seq)
            .await
            .inspect_err(|e| self.store_failed(e))
            .map(drop)
    }

    /// Write-back `delete`: a tombstone, if the row exists (pending or in
    /// the database); whether it did.
    pub(crate) async fn delete_back(&self, id: &str) -> Result<bool> {
        let state = self.open_state()?;
        for attempt in 0..CAS_ATTEMPTS {
            let (current, version) = self.current(state, id).await?;
            if current.is_none() {
                return Ok(false);
            }
            match self
                .record(state, id, (None, None, &[]), Some(version))
                .await?
            {
                Recorded::Queued { .. } => return Ok(true),
                Recorded::Conflict => self.lost_compare_and_set(state, attempt).await,
            }
        }
        Err(self.busy(id))
    }

    /// Counts a lost compare-and-set and pauses before the next attempt.
    async fn lost_compare_and_set(&self, state: &super::State, attempt: u32) {
        super::Counters::add(&state.counters.conflicts, 1);
        tokio::time::sleep(self.cas_pause(attempt)).await;
    }

    /// The pause after a lost compare-and-set: random, up to 0.1 ms ×
    /// 2^attempt (at most 50 ms), so two writers that keep colliding
    /// (one reading the database, the other a pending value) drift apart
    /// instead of starving one of them.
    fn cas_pause(&self, attempt: u32) -> Duration {
        let cap = Duration::from_micros(100)
            .saturating_mul(1 << attempt.min(10))
            .min(Duration::from_millis(50));
        cap.mul_f64(self.random.unit())
    }

    fn busy(&self, id: &str) -> Error {
        Error::Busy {
            entity: self.keys.entity().to_owned(),
            id: id.to_owned(),
            attempts: CAS_ATTEMPTS,
        }
    }
}
