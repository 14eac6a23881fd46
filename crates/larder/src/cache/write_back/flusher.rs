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
//! Failures, by the class of the error ([`Fault`], decided where the
//! error arose):
//! - **unavailable** (the database or the store down, a lock wait, a
//!   deadlock, a timeout): the round fails, and the task retries with
//!   exponential backoff and jitter; records stay dirty meanwhile.
//! - **the table's fault** (read-only, a missing table or column, a
//!   missing privilege), and an error that *every* row of a batch of
//!   several fails with, each on its own, with the same code: retried the
//!   same way, logged and counted as an alert
//!   ([`WriteBackStats::alerts`](super::WriteBackStats::alerts)), never
//!   dead-lettered in bulk.
//! - **a row's fault** (anything else: a constraint, a trigger's `RAISE`,
//!   row-level security, …): the batch is bisected until the refused rows
//!   are alone; those go to the dead letters with the database's code and
//!   message (a foreign-key violation only after a few rounds, since the
//!   referenced row may be waiting in another entity's backlog), and the
//!   rest lands in the same round. A batch of one refused row is a row's
//!   fault.
//!
//! A row that a committed statement did not return (a `BEFORE` trigger
//! returned `NULL`) is not in the database: it goes to the dead letters as
//! "skipped by a trigger". A row committed but not read back (see
//! [`Flushed::unread`]) is cleared and its entry invalidated; its batch is
//! never applied again. A fenced flush gives the shard up: a newer flusher
//! owns it.

use super::{Counters, State};
use crate::cache::Inner;
use crate::error::{Error, Result};
use crate::source::{Fault, Fence, FlushBatch, Flushed};
use crate::store::{Clear, DeadLetterMove, DirtyRecord, ShardBacklog, ShardKeys};
use futures_util::stream::{self, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How many shards one instance flushes at once.
const PARALLEL_SHARDS: usize = 4;

/// How many rounds a row refused for a foreign key is retried.
const FK_ATTEMPTS: u32 = 3;

/// The longest pause between retries while the source is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Some shard had a full batch: go again at once.
    Busy,
    /// Nothing more is due now.
    Idle,
}

/// The dirty columns of one `hash` entry's record, to UPDATE.
type Columns = serde_json::Map<String, serde_json::Value>;

/// What a hash entity's dead letter keeps, by id: the record's value as
/// the flusher read it, and whether it is dirty columns only.
type Kept = HashMap<String, (Vec<u8>, bool)>;

/// A batch being committed: rows to upsert, columns to update, ids to
/// delete.
struct Group<V> {
    upserts: Vec<(String, V)>,
    updates: Vec<(String, Columns)>,
    deletes: Vec<String>,
}

impl<V> Group<V> {
    fn empty() -> Self {
        Group {
            upserts: Vec::new(),
            updates: Vec::new(),
            deletes: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.upserts.len() + self.updates.len() + self.deletes.len()
    }

    /// Splits a group of two or more in two non-empty parts: one kind of
    /// write from the others when it holds several, else halves.
    fn split(mut self) -> (Self, Self) {
        let kinds = [
            !self.upserts.is_empty(),
            !self.updates.is_empty(),
            !self.deletes.is_empty(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            let mut rest = Group::empty();
            if !self.upserts.is_empty() {
                rest.updates = std::mem::take(&mut self.updates);
                rest.deletes = std::mem::take(&mut self.deletes);
            } else {
                rest.deletes = std::mem::take(&mut self.deletes);
            }
            return (self, rest);
        }
        let upserts = self.upserts.split_off(self.upserts.len() / 2);
        let updates = self.updates.split_off(self.updates.len() / 2);
        let deletes = self.deletes.split_off(self.deletes.len() / 2);
        (
            self,
            Group {
                upserts,
                updates,
                deletes,
            },
        )
    }

    /// The first id of the group (a group of one: its only id).
    fn first_id(&self) -> Option<&String> {
        self.upserts
            .first()
            .map(|(id, _)| id)
            .or(self.updates.first().map(|(id, _)| id))
            .or(self.deletes.first())
    }

    fn ids(&self) -> impl Iterator<Item = &String> {
        self.upserts
            .iter()
            .map(|(id, _)| id)
            .chain(self.updates.iter().map(|(id, _)| id))
            .chain(&self.deletes)
    }
}

/// Why a record goes to the dead letters.
struct Refusal {
    /// The database's code (SQLSTATE), when it gave one.
    code: Option<String>,
    /// The error, as text.
    error: String,
}

impl Refusal {
    fn of(e: &Error) -> Self {
        let code = match e {
            Error::Source { code, .. } => code.clone(),
            _ => None,
        };
        Refusal {
            code,
            error: e.to_string(),
        }
    }

    fn skipped() -> Self {
        Refusal {
            code: None,
            error: "skipped by a trigger: the statement succeeded without writing the row (a BEFORE trigger returned NULL)".into(),
        }
    }

    fn no_row() -> Self {
        Refusal {
            code: None,
            error: "no row to update: the row was deleted before its patched columns were flushed"
                .into(),
        }
    }
}

/// The flusher of one write-back cache: a background task, owned by the
/// cache's write-back state. The builder starts it; writers wake it when a
/// batch fills; [`Flusher::close`] stops it, waits for its round, and
/// drains what is pending.
#[derive(Debug, Default)]
pub(crate) struct Flusher {
    /// Wakes the task (a full batch, or `close`).
    wake: Notify,
    /// Set by `close`: the task stops after its round and writes are
    /// refused.
    closed: AtomicBool,
    /// The task, until `close` takes it to wait for it.
    task: Mutex<Option<JoinHandle<()>>>,
    /// Held by `close` while it drains: one drain at a time.
    closing: tokio::sync::Mutex<()>,
}

/// How [`Flusher::close`] ended.
#[derive(Debug)]
pub(crate) enum Drain {
    /// Stopped and drained until nothing was left or the deadline; the
    /// last error a round met, if any.
    Drained(Option<Error>),
    /// Not drained here: another close holds the drain, or the task's
    /// round outlasted the deadline (it stops after that round and keeps
    /// its leases).
    NotStopped,
}

impl Flusher {
    /// Starts the task over `inner`; it ends when the cache is dropped or
    /// closed.
    pub(crate) fn start<V: Send + Sync + 'static>(&self, inner: &Arc<Inner<V>>, state: Arc<State>) {
        let handle = tokio::spawn(run(Arc::downgrade(inner), state));
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// Wakes the task for a round now.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops the task after its round, as a crash would: no drain, leases
    /// and claimed records stay, writes are refused (the fault point of
    /// `counter_flush.rs`).
    pub(crate) fn stop_as_crashed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Whether `close` has begun: writes are refused from then on.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stops the task, waits for its round to end, then drains what is
    /// pending (rounds with `closing`) until none is left or `deadline`.
    /// From its start, [`Flusher::is_closed`] holds.
    pub(crate) async fn close<V: Send + Sync + 'static>(
        &self,
        inner: &Inner<V>,
        state: &State,
        deadline: Instant,
    ) -> Drain {
        let Ok(_draining) = tokio::time::timeout_at(deadline.into(), self.closing.lock()).await
        else {
            return Drain::NotStopped;
        };
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut handle) = task {
            if tokio::time::timeout_at(deadline.into(), &mut handle)
                .await
                .is_err()
            {
                // Still in its round: it stops after it, and keeps its leases.
                *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
                tracing::warn!(
                    entity = inner.keys.entity(),
                    "closing: the flusher's round outlasted the close; nothing drained"
                );
                return Drain::NotStopped;
            }
        }
        let mut failures = 0;
        let mut last_error: Option<Error> = None;
        while Instant::now() < deadline {
            let round =
                tokio::time::timeout_at(deadline.into(), inner.flush_round(state, true)).await;
            match round {
                Err(_) => break,
                Ok(Ok(Round::Busy)) => failures = 0,
                Ok(Ok(Round::Idle)) => {
                    failures = 0;
                    if state.counters.backlog.load(Ordering::Relaxed) == 0 {
                        break;
                    }
                    // Left: shards another instance holds, or written meanwhile.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(e)) => {
                    failures += 1;
                    let pause = inner
                        .backoff(failures)
                        .min(deadline.saturating_duration_since(Instant::now()));
                    last_error = Some(e);
                    tokio::time::sleep(pause).await;
                }
            }
        }
        for shard in &state.shards {
            // The lease expires by itself if this fails.
            let _ = state.log.release(shard, &state.token).await;
        }
        Drain::Drained(last_error)
    }
}

async fn run<V: Send + Sync + 'static>(weak: Weak<Inner<V>>, state: Arc<State>) {
    let poll =
        (state.settings.max_delay / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));
    let mut failures: u32 = 0;
    while !state.flusher.is_closed() {
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
                () = state.flusher.wake.notified() => {}
            }
        }
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// Exponential backoff with jitter: 50 ms × 2^(n−1), at most 5 s.
    fn backoff(&self, failures: u32) -> Duration {
        let base = Duration::from_millis(50).saturating_mul(1 << failures.min(7).saturating_sub(1));
        let capped = base.min(MAX_BACKOFF);
        capped.mul_f64(0.5 + self.random.unit() / 2.0)
    }

    /// One round over every shard; `closing` flushes everything pending.
    async fn flush_round(&self, state: &State, closing: bool) -> Result<Round> {
        self.ready_to_write(state).await?;
        let source = self.require_source()?;
        let fence_name = self.keys.fence_name();
        state
            .fence_ready
            .get_or_try_init(|| source.prepare_write_back(&fence_name, self.keys.shards()))
            .await?;
        let backlogs = state.log.backlog(&state.shards).await?;
        let now = self.clock.now_ms();
        let work = schedule(
            &state.counters,
            (&state.shards, &backlogs),
            &state.settings,
            (now, closing),
        );
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
        // Counters first (see `counter_flush.rs`): a claimed record commits
        // before any dirty record read after its claim.
        let mut counted_full = false;
        if self.overlays_pending() {
            match self.flush_counters(state, shard, epoch, due).await? {
                Some(full) => counted_full = full,
                None => return Ok(false),
            }
        }
        let Some(records) = state
            .log
            .batch(shard, &state.token, settings.batch, due)
            .await?
        else {
            return Ok(false);
        };
        if records.is_empty() {
            return Ok(counted_full);
        }
        let full = records.len() >= settings.batch || counted_full;
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
        // A hash entry's dead letter keeps the record's value as the
        // flusher read it (its dirty columns are fields of their own).
        let kept: Kept = if self.overlays_pending() {
            records
                .iter()
                .filter_map(|r| Some((r.id.clone(), (r.payload.as_ref()?.to_vec(), r.partial))))
                .collect()
        } else {
            HashMap::new()
        };
        let mut first = Group::empty();
        for record in records {
            match &record.payload {
                Some(bytes) if record.partial => match serde_json::from_slice::<Columns>(bytes) {
                    Ok(columns) => first.updates.push((record.id, columns)),
                    Err(e) => {
                        let e = Error::InvalidRow {
                            entity: entity.to_owned(),
                            id: record.id.clone(),
                            reason: format!("patched columns are not a JSON object: {e}"),
                        };
                        self.bury(
                            state,
                            shard,
                            (&record.id, record.seq, &kept),
                            &Refusal::of(&e),
                        )
                        .await?
                    }
                },
                Some(bytes) => match self.codec.decode(entity, &record.id, bytes.clone()) {
                    Ok(value) => first.upserts.push((record.id, value)),
                    Err(e) => {
                        self.bury(
                            state,
                            shard,
                            (&record.id, record.seq, &kept),
                            &Refusal::of(&e),
                        )
                        .await?
                    }
                },
                None => first.deletes.push(record.id),
            }
        }
        let fence = Fence {
            entity: self.keys.fence_name(),
            shard: shard.shard,
            epoch,
        };
        // The generation known before the commit stamps the refreshed entries.
        let generation = self.coherence.seq();
        let total = first.len();
        let mut groups = vec![first];
        let mut clears = Vec::new();
        let mut skipped = Vec::new();
        // Column updates whose row is gone.
        let mut missing: Vec<String> = Vec::new();
        // Rows refused on their own (a row's fault), not yet buried.
        let mut refused: Vec<(String, Error)> = Vec::new();
        let mut landed = false;
        let mut failure = None;
        while let Some(group) = groups.pop() {
            if group.len() == 0 {
                continue;
            }
            match self.commit(state, &fence, &group).await {
                Ok(flushed) => {
                    landed = true;
                    missing.extend(flushed.missing.iter().cloned());
                    let (done, left_out) = self.clears(&group, flushed, &seqs, generation);
                    Counters::add(&state.counters.batches, 1);
                    Counters::add(
                        &state.counters.rows_written,
                        (group.len() - left_out.len()) as u64,
                    );
                    clears.extend(done);
                    skipped.extend(left_out);
                    forget_fk_attempts(state, &group);
                }
                Err(e) => match Fault::of(&e) {
                    Fault::Row if group.len() > 1 => {
                        let (a, b) = group.split();
                        groups.push(b);
                        groups.push(a);
                    }
                    Fault::Row => {
                        let id = group.first_id().cloned().unwrap_or_default();
                        refused.push((id, e));
                    }
                    Fault::Table | Fault::Unavailable => {
                        failure = Some(e);
                        break;
                    }
                },
            }
        }
        let mut alert = failure
            .as_ref()
            .is_some_and(|e| Fault::of(e) == Fault::Table);
        if failure.is_none() && !landed && total > 1 && refused.len() == total {
            if let Some((_, e)) = refused.first() {
                if refused.iter().all(|(_, other)| same_way(e, other)) {
                    // Every row refused alone, the same way: not the rows.
                    failure = Some(e.clone());
                    alert = true;
                }
            }
        }
        if let Some(e) = failure.as_ref().filter(|_| alert) {
            Counters::add(&state.counters.alerts, 1);
            tracing::error!(
                entity,
                shard = shard.shard,
                rows = total,
                error = %e,
                "the source refuses every row of a write-back batch (the table, not a row): nothing is dead-lettered; retried with backoff"
            );
        }
        if failure.is_none() {
            for (id, e) in &refused {
                if self.retry_later(state, id, e) {
                    continue;
                }
                let seq = seqs.get(id).copied().unwrap_or_default();
                self.bury(state, shard, (id, seq, &kept), &Refusal::of(e))
                    .await?;
            }
        }
        for id in &skipped {
            let seq = seqs.get(id).copied().unwrap_or_default();
            self.bury(state, shard, (id, seq, &kept), &Refusal::skipped())
                .await?;
        }
        for id in &missing {
            let seq = seqs.get(id).copied().unwrap_or_default();
            self.bury(state, shard, (id, seq, &kept), &Refusal::no_row())
                .await?;
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
    async fn commit(&self, state: &State, fence: &Fence, group: &Group<V>) -> Result<Flushed<V>> {
        let source = self.require_source()?;
        let timeout = state.settings.statement_timeout();
        let batch = FlushBatch {
            upserts: &group.upserts,
            updates: &group.updates,
            deletes: &group.deletes,
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
    /// cleared and its entry refreshed from the stored row (deleted when
    /// the row was committed but not read back). With the upserted ids the
    /// source did not write (a trigger skipped them): those are not cleared.
    fn clears(
        &self,
        group: &Group<V>,
        flushed: Flushed<V>,
        seqs: &HashMap<String, u64>,
        seq: u64,
    ) -> (Vec<Clear>, Vec<String>) {
        let mut stored: HashMap<String, V> = flushed.stored.into_iter().collect();
        let unread: std::collections::HashSet<String> = flushed.unread.into_iter().collect();
        let mut clears = Vec::with_capacity(group.len());
        let mut skipped = Vec::new();
        let missing: std::collections::HashSet<String> = flushed.missing.into_iter().collect();
        let written = group
            .upserts
            .iter()
            .map(|(id, _)| id)
            .chain(group.updates.iter().map(|(id, _)| id))
            .filter(|id| !missing.contains(*id));
        for id in written {
            let Some(row) = stored.remove(id) else {
                if unread.contains(id) {
                    clears.push(self.clear_of(id, None, seqs));
                } else {
                    skipped.push(id.clone());
                }
                continue;
            };
            let refresh = self
                .codec
                .encode(self.keys.entity(), &row)
                .ok()
                .and_then(|payload| {
                    let stamp = self.coherence.stamp(seq, Some(&row), &[]).ok()?;
                    Some(self.envelope(Some(bytes::Bytes::from(payload)), 0, stamp))
                });
            clears.push(self.clear_of(id, refresh, seqs));
        }
        for id in &group.deletes {
            let refresh = match self.coherence.stamp(seq, None, &[]) {
                Ok(stamp) if !self.policy.negative_ttl.is_zero() && !unread.contains(id) => {
                    Some(self.envelope(None, 0, stamp))
                }
                _ => None,
            };
            clears.push(self.clear_of(id, refresh, seqs));
        }
        (clears, skipped)
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

    /// Moves a refused record to the dead letters and invalidates its
    /// entry everywhere: the store deletes it and announces it on the bus
    /// in the same script, and this instance's near cache drops it.
    ///
    /// `record` is the id, the record's sequence and the values kept for
    /// hash entries' records (see `flush_records`).
    async fn bury(
        &self,
        state: &State,
        shard: &ShardKeys,
        record: (&str, u64, &Kept),
        why: &Refusal,
    ) -> Result<()> {
        let (id, seq, kept) = record;
        let kept = kept.get(id);
        let text = serde_json::json!({
            "error": why.error,
            "code": why.code,
            "seq": seq,
            "failed_at_ms": self.clock.now_ms(),
            "partial": kept.is_some_and(|(_, partial)| *partial),
        })
        .to_string();
        let ids = [id.to_owned()];
        let letter = DeadLetterMove {
            keys: self.dirty_keys(id),
            shard: shard.clone(),
            seq,
            why: text,
            payload: kept.map(|(value, _)| value.clone()),
            announce: Some(self.coherence.bus.announcement(&ids)),
        };
        let moved = state.log.dead_letter(&letter).await?;
        self.flights.forget(id);
        if moved {
            self.coherence.bus.announced(&ids).await;
            Counters::add(&state.counters.dead_lettered, 1);
            Counters::add(&state.counters.dead_letters, 1);
            tracing::warn!(entity = self.keys.entity(), id, code = why.code.as_deref(), error = %why.error, "the source refused a write-back row; it is in the dead letters and no longer served");
        }
        Ok(())
    }
}

/// Reports the shards' `backlogs` to `counters` (backlog, lag, dead
/// letters) and answers the shards with work due at `now` and the due
/// time of each: a full batch waiting (everything due), a claimed record
/// left over, or a write older than `max_delay` (`closing`: everything
/// pending is due). Shared by every write-back flusher.
pub(crate) fn schedule(
    counters: &Counters,
    (shards, backlogs): (&[ShardKeys], &[ShardBacklog]),
    settings: &super::WriteBackOptions,
    (now, closing): (u64, bool),
) -> Vec<(ShardKeys, u64)> {
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
    let batch = settings.batch as u64;
    let due = if closing {
        u64::MAX
    } else {
        now.saturating_sub(crate::clock::duration_ms(settings.max_delay))
    };
    shards
        .iter()
        .zip(backlogs)
        .filter(|(_, b)| b.pending > 0)
        .filter_map(|(shard, b)| {
            if b.pending >= batch {
                Some((shard.clone(), u64::MAX))
            } else if b.claimed || b.oldest_ms.is_some_and(|o| o <= due) {
                Some((shard.clone(), due))
            } else {
                None
            }
        })
        .collect()
}

/// Whether two refusals are the same: the same kind of error with the
/// same database code (their texts differ by the rows' values).
pub(crate) fn same_way(a: &Error, b: &Error) -> bool {
    match (a, b) {
        (Error::Source { code: x, .. }, Error::Source { code: y, .. }) => x == y,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
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
    for id in group.ids() {
        attempts.remove(id);
    }
}

/// A foreign-key violation, as the database's driver classified it.
fn is_foreign_key(e: &Error) -> bool {
    e.constraint() == Some(crate::error::ConstraintKind::ForeignKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_the_same_by_kind_and_code() {
        let source = |code: &str| Error::Source {
            entity: "t".into(),
            code: Some(code.into()),
            cause: crate::error::Message::cause(format!("refused {code}")),
        };
        assert!(same_way(&source("P0001"), &source("P0001")));
        assert!(!same_way(&source("P0001"), &source("23505")));
        let invalid = |id: &str| Error::InvalidRow {
            entity: "t".into(),
            id: id.into(),
            reason: "bad".into(),
        };
        assert!(same_way(&invalid("1"), &invalid("2")));
        assert!(!same_way(&invalid("1"), &source("P0001")));
    }

    fn group(upserts: usize, updates: usize, deletes: usize) -> Group<usize> {
        Group {
            upserts: (0..upserts).map(|i| (i.to_string(), i)).collect(),
            updates: (0..updates)
                .map(|i| (format!("u{i}"), Columns::new()))
                .collect(),
            deletes: (0..deletes).map(|i| format!("r{i}")).collect(),
        }
    }

    #[test]
    fn every_split_makes_progress() {
        for upserts in 0..6 {
            for updates in 0..6 {
                for deletes in 0..6 {
                    let total = upserts + updates + deletes;
                    if total < 2 {
                        continue;
                    }
                    let (a, b) = group(upserts, updates, deletes).split();
                    assert_eq!(a.len() + b.len(), total);
                    assert!(a.len() > 0 && b.len() > 0, "{upserts}+{updates}+{deletes}");
                }
            }
        }
    }
}
