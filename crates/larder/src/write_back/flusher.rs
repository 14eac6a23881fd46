//! The flusher: drains dirty records into the source.
//!
//! One background task per write-back cache. Each round reads every
//! shard's backlog in one pipeline, then flushes the shards with work due —
//! a full batch waiting, or a record older than `max_delay` — up to four at
//! once. Flushing a shard means: take (or renew) its lease and epoch, read
//! a batch under the lease, commit it to the source in one fenced
//! transaction, then clear each record whose sequence is unchanged and
//! refresh its entry from the stored row.
//!
//! Failures: a source that is down (or an error that is not the rows'
//! fault) fails the round, and the task retries with exponential backoff
//! and jitter; records stay dirty meanwhile. A refused batch is bisected
//! until the refused rows are alone; those go to the dead letters (a
//! foreign-key violation only after a few rounds, since the referenced row
//! may be waiting in another entity's backlog). A fenced flush gives the
//! shard up: a newer flusher owns it.

use super::{Counters, State};
use crate::cache::Inner;
use crate::error::{Error, Result};
use crate::source::{Fence, FlushBatch};
use crate::store::{Clear, DeadLetterMove, DirtyRecord, ShardKeys};
use futures_util::stream::{self, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How many shards one instance flushes at once.
const PARALLEL_SHARDS: usize = 4;

/// How many rounds a row refused for a foreign key is retried.
const FK_ATTEMPTS: u32 = 3;

/// The longest pause between retries while the source is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Round {
    /// Some shard had a full batch: go again at once.
    Busy,
    /// Nothing more is due now.
    Idle,
}

/// A batch being committed: rows to upsert, ids to delete.
struct Group<V> {
    upserts: Vec<(String, V)>,
    removes: Vec<String>,
}

impl<V> Group<V> {
    fn len(&self) -> usize {
        self.upserts.len() + self.removes.len()
    }

    /// Splits a group of two or more in two non-empty parts: upserts from
    /// deletes, else halves.
    fn split(mut self) -> (Self, Self) {
        if !self.upserts.is_empty() && !self.removes.is_empty() {
            let removes = std::mem::take(&mut self.removes);
            return (
                self,
                Group {
                    upserts: Vec::new(),
                    removes,
                },
            );
        }
        let upserts = self.upserts.split_off(self.upserts.len() / 2);
        let removes = self.removes.split_off(self.removes.len() / 2);
        (self, Group { upserts, removes })
    }
}

/// Starts the flusher of `inner`; it ends when the cache is dropped or closed.
pub(crate) fn spawn<V: Send + Sync + 'static>(inner: &Arc<Inner<V>>, state: Arc<State>) {
    let weak = Arc::downgrade(inner);
    tokio::spawn(run(weak, state));
}

async fn run<V: Send + Sync + 'static>(weak: Weak<Inner<V>>, state: Arc<State>) {
    let poll =
        (state.settings.max_delay / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));
    let mut failures: u32 = 0;
    while !state.closed.load(Ordering::Acquire) {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let pause = match inner.flush_round(&state, false).await {
            Ok(Round::Busy) => {
                failures = 0;
                Duration::ZERO
            }
            Ok(Round::Idle) => {
                failures = 0;
                poll
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                Counters::add(&state.counters.retries, 1);
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(entity = inner.keys.entity(), failures, error = %e, "write-back flush failed; the writes stay dirty and are retried");
                }
                inner.backoff(failures)
            }
        };
        drop(inner);
        if pause.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = state.wake.notified() => {}
            }
        }
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// Exponential backoff with jitter: 50 ms × 2^(n−1), at most 5 s.
    pub(crate) fn backoff(&self, failures: u32) -> Duration {
        let base = Duration::from_millis(50).saturating_mul(1 << failures.min(7).saturating_sub(1));
        let capped = base.min(MAX_BACKOFF);
        capped.mul_f64(0.5 + self.random.unit() / 2.0)
    }

    /// One round over every shard; `closing` flushes everything pending.
    pub(crate) async fn flush_round(&self, state: &State, closing: bool) -> Result<Round> {
        self.ready_to_write(state).await?;
        let source = self.require_source()?;
        let fence_name = self.keys.fence_name();
        state
            .fence_ready
            .get_or_try_init(|| source.prepare_write_back(&fence_name, self.keys.shards()))
            .await?;
        let backlogs = state.log.backlog(&state.shards).await?;
        let now = self.clock.now_ms();
        let counters = &state.counters;
        let pending: u64 = backlogs.iter().map(|b| b.pending).sum();
        let oldest = backlogs.iter().filter_map(|b| b.oldest_ms).min();
        counters.backlog.store(pending, Ordering::Relaxed);
        counters.oldest_ms.store(
            oldest.map_or(0, |o| now.saturating_sub(o)),
            Ordering::Relaxed,
        );
        counters
            .dead_letters
            .store(backlogs.iter().map(|b| b.dead).sum(), Ordering::Relaxed);
        let batch = state.settings.batch as u64;
        let due = if closing {
            u64::MAX
        } else {
            now.saturating_sub(crate::clock::duration_ms(state.settings.max_delay))
        };
        let work: Vec<(ShardKeys, u64)> = state
            .shards
            .iter()
            .zip(&backlogs)
            .filter(|(_, b)| b.pending > 0)
            .filter_map(|(shard, b)| {
                if b.pending >= batch {
                    Some((shard.clone(), u64::MAX))
                } else if b.oldest_ms.is_some_and(|o| o <= due) {
                    Some((shard.clone(), due))
                } else {
                    None
                }
            })
            .collect();
        let results: Vec<Result<bool>> = stream::iter(work)
            .map(|(shard, due)| async move { self.flush_shard(state, &shard, due).await })
            .buffer_unordered(PARALLEL_SHARDS)
            .collect()
            .await;
        let mut busy = false;
        for result in results {
            busy |= result?;
        }
        Ok(if busy { Round::Busy } else { Round::Idle })
    }

    /// Flushes one batch of a shard; whether it was full (more may wait).
    async fn flush_shard(&self, state: &State, shard: &ShardKeys, due: u64) -> Result<bool> {
        let settings = &state.settings;
        let Some(epoch) = state
            .log
            .claim(shard, &state.token, settings.flush_lease)
            .await?
        else {
            return Ok(false);
        };
        let Some(records) = state
            .log
            .batch(shard, &state.token, settings.batch, due)
            .await?
        else {
            return Ok(false);
        };
        if records.is_empty() {
            return Ok(false);
        }
        let full = records.len() >= settings.batch;
        self.flush_records(state, shard, epoch, records).await?;
        Ok(full)
    }

    /// Commits records (bisecting around refused rows), then clears them.
    async fn flush_records(
        &self,
        state: &State,
        shard: &ShardKeys,
        epoch: u64,
        records: Vec<DirtyRecord>,
    ) -> Result<()> {
        let entity = self.keys.entity();
        let seqs: HashMap<String, u64> = records.iter().map(|r| (r.id.clone(), r.seq)).collect();
        let mut first = Group {
            upserts: Vec::new(),
            removes: Vec::new(),
        };
        for record in records {
            match &record.payload {
                Some(bytes) => match self.codec.decode(entity, &record.id, bytes.clone()) {
                    Ok(value) => first.upserts.push((record.id, value)),
                    Err(e) => self.bury(state, shard, &record.id, record.seq, &e).await?,
                },
                None => first.removes.push(record.id),
            }
        }
        let fence = Fence {
            entity: self.keys.fence_name(),
            shard: shard.shard,
            epoch,
        };
        // The generation known before the commit stamps the refreshed entries.
        let generation = self.coherence.seq();
        let mut groups = vec![first];
        let mut clears = Vec::new();
        let mut failure = None;
        while let Some(group) = groups.pop() {
            if group.len() == 0 {
                continue;
            }
            match self.commit(state, &fence, &group).await {
                Ok(stored) => {
                    Counters::add(&state.counters.batches, 1);
                    Counters::add(&state.counters.rows_written, group.len() as u64);
                    clears.extend(self.clears(&group, stored, &seqs, generation));
                    forget_fk_attempts(state, &group);
                }
                Err(e) if is_row_fault(&e) && group.len() > 1 => {
                    let (a, b) = group.split();
                    groups.push(b);
                    groups.push(a);
                }
                Err(e) if is_row_fault(&e) => {
                    let id = group
                        .upserts
                        .first()
                        .map(|(id, _)| id)
                        .or(group.removes.first())
                        .cloned()
                        .unwrap_or_default();
                    if self.retry_later(state, &id, &e) {
                        continue;
                    }
                    let seq = seqs.get(&id).copied().unwrap_or_default();
                    self.bury(state, shard, &id, seq, &e).await?;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !clears.is_empty() {
            let cleared = state.log.clear(&clears).await?;
            let refreshed: Vec<String> = clears
                .iter()
                .zip(cleared)
                .filter(|(_, done)| *done)
                .map(|(clear, _)| clear.keys.id.clone())
                .collect();
            self.coherence.bus.written_many(&refreshed).await;
        }
        match failure {
            Some(Error::Fenced { current, .. }) => {
                Counters::add(&state.counters.fenced, 1);
                tracing::info!(
                    entity,
                    shard = shard.shard,
                    epoch,
                    current,
                    "flush fenced: a newer flusher owns the shard"
                );
                state.log.raise_epoch(shard, current).await?;
                state.log.release(shard, &state.token).await
            }
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One fenced transaction, bounded in time.
    async fn commit(
        &self,
        state: &State,
        fence: &Fence,
        group: &Group<V>,
    ) -> Result<Vec<(String, V)>> {
        let source = self.require_source()?;
        let timeout = state.settings.statement_timeout();
        let batch = FlushBatch {
            upserts: &group.upserts,
            removes: &group.removes,
            fence: fence.clone(),
            statement_timeout: timeout,
        };
        // A little over the statement timeout, for the round trips around it.
        match tokio::time::timeout(timeout + timeout / 2, source.flush(batch)).await {
            Ok(result) => result,
            Err(_) => Err(Error::LoadTimeout {
                entity: self.keys.entity().to_owned(),
                id: format!("(flush of {} rows)", group.len()),
                after: timeout,
            }),
        }
    }

    /// The clears of a committed group: each record, if unchanged, is
    /// cleared and its entry refreshed from the stored row.
    fn clears(
        &self,
        group: &Group<V>,
        stored: Vec<(String, V)>,
        seqs: &HashMap<String, u64>,
        seq: u64,
    ) -> Vec<Clear> {
        let mut stored: HashMap<String, V> = stored.into_iter().collect();
        let mut clears = Vec::with_capacity(group.len());
        for (id, _) in &group.upserts {
            let refresh = stored.remove(id).and_then(|row| {
                let payload = self.codec.encode(self.keys.entity(), &row).ok()?;
                let stamp = self.coherence.stamp(seq, Some(&row), &[]).ok()?;
                Some(self.envelope(Some(bytes::Bytes::from(payload)), 0, stamp))
            });
            clears.push(self.clear_of(id, refresh, seqs));
        }
        for id in &group.removes {
            let refresh = match self.coherence.stamp(seq, None, &[]) {
                Ok(stamp) if !self.policy.negative_ttl.is_zero() => {
                    Some(self.envelope(None, 0, stamp))
                }
                _ => None,
            };
            clears.push(self.clear_of(id, refresh, seqs));
        }
        clears
    }

    fn clear_of(
        &self,
        id: &str,
        refresh: Option<(Vec<u8>, Duration)>,
        seqs: &HashMap<String, u64>,
    ) -> Clear {
        Clear {
            keys: self.dirty_keys(id),
            seq: seqs.get(id).copied().unwrap_or_default(),
            refresh,
        }
    }

    /// Whether a refused row is retried in a later round (a foreign key,
    /// a few times) instead of going to the dead letters now.
    fn retry_later(&self, state: &State, id: &str, e: &Error) -> bool {
        if !is_foreign_key(e) {
            return false;
        }
        let Ok(mut attempts) = state.fk_attempts.lock() else {
            return false;
        };
        let n = attempts.entry(id.to_owned()).or_insert(0);
        *n += 1;
        if *n < FK_ATTEMPTS {
            Counters::add(&state.counters.retries, 1);
            return true;
        }
        attempts.remove(id);
        false
    }

    /// Moves a refused record to the dead letters and invalidates its entry.
    async fn bury(
        &self,
        state: &State,
        shard: &ShardKeys,
        id: &str,
        seq: u64,
        e: &Error,
    ) -> Result<()> {
        let why = serde_json::json!({
            "error": e.to_string(),
            "seq": seq,
            "failed_at_ms": self.clock.now_ms(),
        })
        .to_string();
        let letter = DeadLetterMove {
            keys: self.dirty_keys(id),
            shard: shard.clone(),
            seq,
            why,
        };
        if state.log.dead_letter(&letter).await? {
            Counters::add(&state.counters.dead_lettered, 1);
            Counters::add(&state.counters.dead_letters, 1);
            tracing::warn!(entity = self.keys.entity(), id, error = %e, "the source refused a write-back row; it is in the dead letters and no longer served");
        }
        Ok(())
    }
}

/// Rows that landed start their foreign-key count afresh.
fn forget_fk_attempts<V>(state: &State, group: &Group<V>) {
    let Ok(mut attempts) = state.fk_attempts.lock() else {
        return;
    };
    if attempts.is_empty() {
        return;
    }
    for id in group.upserts.iter().map(|(id, _)| id).chain(&group.removes) {
        attempts.remove(id);
    }
}

/// Whether an error is the rows' fault (bad data, a constraint), not the
/// source's: those rows are isolated, the rest of the batch lands.
fn is_row_fault(e: &Error) -> bool {
    match e {
        Error::InvalidRow { .. }
        | Error::InvalidId { .. }
        | Error::Encode { .. }
        | Error::Decode { .. } => true,
        Error::Source {
            code: Some(code), ..
        } => is_data_code(code),
        _ => false,
    }
}

/// PostgreSQL data exceptions (`22*`) and integrity violations (`23*`);
/// SQLite CONSTRAINT (19) and MISMATCH (20), with their extended codes.
fn is_data_code(code: &str) -> bool {
    if code.len() < 5 {
        return code
            .parse::<u32>()
            .is_ok_and(|c| matches!(c & 0xff, 19 | 20));
    }
    code.starts_with("22") || code.starts_with("23")
}

/// A foreign-key violation: PostgreSQL `23503`, SQLite 787.
fn is_foreign_key(e: &Error) -> bool {
    matches!(e, Error::Source { code: Some(code), .. } if code == "23503" || code == "787")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_constraint_codes_are_row_faults() {
        for code in [
            "22P02", "23505", "23503", "23502", "22001", "19", "2067", "787", "20",
        ] {
            assert!(is_data_code(code), "{code}");
        }
        for code in ["08006", "40001", "42P01", "57014", "5", "1"] {
            assert!(!is_data_code(code), "{code}");
        }
    }

    fn group(upserts: usize, removes: usize) -> Group<usize> {
        Group {
            upserts: (0..upserts).map(|i| (i.to_string(), i)).collect(),
            removes: (0..removes).map(|i| format!("r{i}")).collect(),
        }
    }

    #[test]
    fn every_split_makes_progress() {
        for upserts in 0..6 {
            for removes in 0..6 {
                let total = upserts + removes;
                if total < 2 {
                    continue;
                }
                let (a, b) = group(upserts, removes).split();
                assert_eq!(a.len() + b.len(), total);
                assert!(a.len() > 0 && b.len() > 0, "{upserts}+{removes}");
            }
        }
    }
}
