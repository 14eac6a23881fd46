//! The flusher's counter step: a shard's claimed record, committed whole
//! in one fenced transaction or not at all, then cleared.
//!
//! Why it runs before the shard's dirty records: the claim leaves ids with
//! a pending write unclaimed, and a write recorded after the claim is read
//! (and committed) only once the claimed record is cleared — so the
//! database sees each id's writes and increments in the order they were
//! acknowledged.
//!
//! Exactly once: the claimed record keeps its random batch id until it is
//! cleared; the fence step records the id in the same transaction and
//! refuses it again, so a record committed by a flusher that died before
//! its clear is found committed ([`CountersFlushed::Replayed`]) and only
//! cleared. A row the database refuses is never committed in part under
//! the record's id: the record is claimed again under a new id without it,
//! and it goes to the dead letters alone — unless a rehearsal of the rest
//! (run, then rolled back) is refused the same way: then the table is at
//! fault, nothing is dead-lettered, the round fails and counts an alert.
//! See `store/counters.rs`.

use super::fault::FaultPoints;
use super::flusher::same_way;
use super::{Counters, State};
use crate::cache::Inner;
use crate::error::{Error, Result};
use crate::source::{CounterBatch, CountersFlushed, Fence};
use crate::store::{DirtyKeys, ShardKeys};
use std::sync::LazyLock;

/// The counter flusher's fault points.
static FAULTS: LazyLock<FaultPoints> =
    LazyLock::new(|| FaultPoints::new("LARDER_FAULT_AFTER_COUNTER_COMMIT"));

/// Arms the fault point between a counter batch's commit and its clear for
/// the next `n` commits of the entity whose fence name is `fence`
/// (`<prefix>:<entity>`): the flusher stops there as a crash would — the
/// round fails, the flusher's task ends and the instance refuses writes
/// from then on ([`Error::Closed`]); the claimed record and the flush lease
/// stay for the next flusher. With the environment variable
/// `LARDER_FAULT_AFTER_COUNTER_COMMIT=abort` the process aborts there
/// instead (for crash tests of a whole process). For tests; not part of
/// the API.
#[doc(hidden)]
pub fn arm_after_counter_commit(fence: &str, n: u32) {
    FAULTS.arm(fence, n);
}

/// Arms a stall of the next counter flush of the entity whose fence name
/// is `fence`: it sleeps `pause` between its claim and its commit, as a
/// flusher paused there would (its lease may expire meanwhile and another
/// flusher take the shard over with a newer epoch). For tests; not part of
/// the API.
#[doc(hidden)]
pub fn arm_stall_after_counter_claim(fence: &str, pause: std::time::Duration) {
    FAULTS.arm_stall(fence, pause);
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// Commits and clears the shard's claimed counter record (claiming one
    /// first if none is left over). `Ok(None)`: the shard is not this
    /// flusher's any more (the lease lost, or fenced: given up); else
    /// whether the record was full (more may wait).
    pub(super) async fn flush_counters(
        &self,
        state: &State,
        shard: &ShardKeys,
        epoch: u64,
        due: u64,
    ) -> Result<Option<bool>> {
        let settings = &state.settings;
        let Some(claimed) = state
            .log
            .claim_counters(shard, &state.token, settings.batch, due)
            .await?
        else {
            return Ok(None);
        };
        let Some(mut claimed) = claimed else {
            return Ok(Some(false));
        };
        let source = self.require_source()?;
        let fence = Fence {
            entity: self.keys.fence_name(),
            shard: shard.shard,
            epoch,
        };
        if let Some(pause) = FAULTS.take_stall(&fence.entity) {
            tokio::time::sleep(pause).await;
        }
        let full = claimed.deltas.len() >= settings.batch;
        let timeout = settings.statement_timeout();
        loop {
            let batch = CounterBatch {
                batch: &claimed.batch,
                deltas: &claimed.deltas,
                fence: fence.clone(),
                statement_timeout: timeout,
                rehearse: false,
            };
            let flushed =
                match tokio::time::timeout(timeout + timeout / 2, source.flush_counters(batch))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(Error::LoadTimeout {
                        entity: self.keys.entity().to_owned(),
                        id: format!("(counter flush of {} rows)", claimed.deltas.len()),
                        after: timeout,
                    }),
                };
            let mut committed = false;
            let mut replayed = false;
            let missing = match flushed {
                Ok(CountersFlushed::Committed { missing }) => {
                    committed = true;
                    Counters::add(&state.counters.counter_batches, 1);
                    Counters::add(&state.counters.batches, 1);
                    Counters::add(
                        &state.counters.rows_written,
                        (claimed.deltas.len() - missing.len()) as u64,
                    );
                    missing
                }
                Ok(CountersFlushed::Replayed) => {
                    tracing::info!(
                        entity = self.keys.entity(),
                        shard = shard.shard,
                        batch = claimed.batch,
                        "a counter batch was committed already (a flusher stopped before clearing it); clearing it without applying it again"
                    );
                    // Which ids had no row when it committed is not known
                    // any more: an id without a row now is dead-lettered
                    // (noted as a replay), never dropped silently.
                    replayed = true;
                    let ids: Vec<String> =
                        claimed.deltas.iter().map(|(id, _)| id.clone()).collect();
                    let rows = source.load_many(&ids).await?;
                    ids.into_iter()
                        .filter(|id| !rows.contains_key(id))
                        .collect()
                }
                Ok(CountersFlushed::Refused { id, error }) => {
                    if claimed.deltas.len() > 1 {
                        // Would the rest commit without it? If the next row
                        // is refused the same way, the table is at fault,
                        // not the rows: nothing is dead-lettered in bulk.
                        let rest: Vec<(String, Vec<(String, i64)>)> = claimed
                            .deltas
                            .iter()
                            .filter(|(other, _)| *other != id)
                            .cloned()
                            .collect();
                        let rehearsal = source
                            .flush_counters(CounterBatch {
                                batch: &claimed.batch,
                                deltas: &rest,
                                fence: fence.clone(),
                                statement_timeout: timeout,
                                rehearse: true,
                            })
                            .await?;
                        if let CountersFlushed::Refused { error: other, .. } = &rehearsal {
                            if same_way(&error, other) {
                                Counters::add(&state.counters.alerts, 1);
                                tracing::error!(
                                    entity = self.keys.entity(),
                                    shard = shard.shard,
                                    rows = claimed.deltas.len(),
                                    error = %error,
                                    "the source refuses the rows of a counter batch alike (the table, not a row): nothing is dead-lettered; retried with backoff"
                                );
                                return Err(error);
                            }
                        }
                    }
                    let new = crate::store::batch_id();
                    let code = match &error {
                        Error::Source { code, .. } => code.clone(),
                        _ => None,
                    };
                    let why = serde_json::json!({
                        "error": error.to_string(),
                        "code": code,
                        "failed_at_ms": self.clock.now_ms(),
                        "counter": true,
                    })
                    .to_string();
                    let moved = state
                        .log
                        .reclaim_counters(
                            shard,
                            (&claimed.batch, &new),
                            &self.dirty_keys(&id),
                            &why,
                        )
                        .await?;
                    self.flights.forget(&id);
                    self.coherence
                        .bus
                        .written_many(std::slice::from_ref(&id))
                        .await;
                    Counters::add(&state.counters.dead_lettered, 1);
                    tracing::warn!(entity = self.keys.entity(), id, code = code.as_deref(), error = %error, "the source refused a write-back increment's row; its deltas are in the dead letters, the rest of the batch is claimed again");
                    match moved {
                        Some(true) => {
                            claimed.batch = new;
                            claimed.deltas.retain(|(other, _)| *other != id);
                            continue;
                        }
                        Some(false) => return Ok(Some(full)),
                        None => return Ok(None),
                    }
                }
                Err(Error::Fenced { current, .. }) => {
                    Counters::add(&state.counters.fenced, 1);
                    tracing::info!(
                        entity = self.keys.entity(),
                        shard = shard.shard,
                        epoch,
                        current,
                        "counter flush fenced: a newer flusher owns the shard"
                    );
                    state.log.raise_epoch(shard, current).await?;
                    state.log.release(shard, &state.token).await?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            if committed && FAULTS.fires(&fence.entity) {
                state.flusher.stop_as_crashed();
                return Err(Error::Config(
                    "fault point: stopped after a counter commit, before its clear".into(),
                ));
            }
            let ids: Vec<(DirtyKeys, bool)> = claimed
                .deltas
                .iter()
                .map(|(id, _)| (self.dirty_keys(id), missing.contains(id)))
                .collect();
            let error = if replayed {
                "no row to add to now: the batch committed before a flusher stopped, and the row is gone (deleted before the commit, or after it: the deltas may have been added before the delete)"
            } else {
                "no row to add to: the row was deleted before its increments were flushed"
            };
            let why = serde_json::json!({
                "error": error,
                "code": null,
                "failed_at_ms": self.clock.now_ms(),
                "counter": true,
            })
            .to_string();
            state
                .log
                .clear_counters(shard, &claimed.batch, &ids, &why)
                .await?;
            for (id, _) in &claimed.deltas {
                self.flights.forget(id);
            }
            if !missing.is_empty() {
                Counters::add(&state.counters.dead_lettered, missing.len() as u64);
                tracing::warn!(
                    entity = self.keys.entity(),
                    ids = ?missing,
                    "write-back increments of rows that are gone: their deltas are in the dead letters"
                );
                self.coherence.bus.written_many(&missing).await;
            }
            return Ok(Some(full));
        }
    }
}
