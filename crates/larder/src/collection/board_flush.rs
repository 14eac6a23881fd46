//! The flusher of member operations (write-back leaderboards and sets):
//! per shard, a claimed record of member operations committed whole in
//! one fenced transaction, or not at all, then cleared.
//!
//! Why generic: a leaderboard and a set keep the same per-member record
//! (see `store/board_deltas.rs`) and differ only in the SQL that applies
//! it, so both flush through [`Flushed`], written once.
//!
//! One background task per board or set, holding a `Weak` to it. Each round
//! reads every shard's backlog in one pipeline and flushes the shards with
//! work due (an operation older than `max_delay`, a claimed record left
//! over, or a full batch), up to four at once. Flushing a shard: take or
//! renew its lease and epoch (the entity flusher's lease script), claim
//! the due owners' operations under a random batch id (or take the record
//! left over), commit it with the fence step recording the batch id, then
//! clear it by its id.
//!
//! Exactly once: a record committed by a flusher that died before its
//! clear is found committed by the next ([`BoardFlushed::Replayed`]) and
//! only cleared. A member the database refuses is never committed in part
//! under the record's id: the rest is claimed again under a new id and the
//! member goes to the dead letters alone — unless a rehearsal of the rest
//! is refused the same way (the table, not the member): then nothing is
//! dead-lettered, the round fails and counts an alert. A flush fenced by a
//! newer epoch gives the shard up.

use super::board_write_back::{BoardBatch, BoardFlushed, BoardWriteBack};
use super::Core;
use crate::error::{Error, Result};
use crate::source::Fence;
use crate::store::ShardKeys;
use crate::write_back::fault::FaultPoints;
use crate::write_back::Counters;
use futures_util::stream::{self, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

/// How many shards one instance flushes at once.
const PARALLEL_SHARDS: usize = 4;

/// The leaderboard flusher's fault points.
static FAULTS: LazyLock<FaultPoints> =
    LazyLock::new(|| FaultPoints::new("LARDER_FAULT_AFTER_BOARD_COMMIT"));

/// Arms the fault point between a board batch's commit and its clear for
/// the next `n` commits of the board whose fence name is `fence`
/// (`<prefix>:<board>`): the flusher stops there as a crash would — the
/// round fails, the task ends, writes are refused ([`Error::Closed`]);
/// the claimed record and the flush lease stay for the next flusher. With
/// `LARDER_FAULT_AFTER_BOARD_COMMIT=abort` the process aborts there
/// instead. For tests; not part of the API.
#[doc(hidden)]
pub fn arm_after_board_commit(fence: &str, n: u32) {
    FAULTS.arm(fence, n);
}

/// Arms a stall of the next board flush of `fence`: it sleeps `pause`
/// between its claim and its commit, as a paused flusher would (its lease
/// may expire and another flusher take the shard with a newer epoch). For
/// tests; not part of the API.
#[doc(hidden)]
pub fn arm_stall_after_board_claim(fence: &str, pause: Duration) {
    FAULTS.arm_stall(fence, pause);
}

/// A collection whose writes are member operations flushed by this
/// module: a write-back leaderboard or set.
#[async_trait::async_trait]
pub(super) trait Flushed: Clone + Send + Sync + 'static {
    /// The kind in messages: `leaderboard`, `set`.
    const WHAT: &'static str;
    /// What the flusher's task holds a `Weak` to.
    type Inner: Send + Sync + 'static;
    /// A weak handle.
    fn downgrade(&self) -> Weak<Self::Inner>;
    /// The collection of a weak handle, while it lives.
    fn upgrade(weak: &Weak<Self::Inner>) -> Option<Self>;
    /// Its name.
    fn name(&self) -> &str;
    /// The shared core.
    fn core(&self) -> &Core;
    /// Its write-back state ([`Error::Config`] when it writes through).
    fn write_back_state(&self) -> Result<&Arc<BoardWriteBack>>;
    /// Prepares the source's fence rows (`<prefix>:<name>`, one per shard).
    async fn prepare(&self, fence: &str, shards: u16) -> Result<()>;
    /// Commits one claimed record in the source.
    async fn commit(&self, batch: BoardBatch<'_>) -> Result<BoardFlushed>;
}

/// Starts the flusher of `target` (its write-back state `wb`).
pub(super) fn start<T: Flushed>(target: &T, wb: &Arc<BoardWriteBack>) {
    let handle = tokio::spawn(run::<T>(target.downgrade(), Arc::clone(wb)));
    *wb.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
}

async fn run<T: Flushed>(weak: Weak<T::Inner>, wb: Arc<BoardWriteBack>) {
    let poll =
        (wb.settings.max_delay / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));
    let mut failures: u32 = 0;
    while !wb.is_closed() {
        let Some(board) = T::upgrade(&weak) else {
            return;
        };
        let pause = match flush_round(&board, false).await {
            Ok(true) => {
                failures = 0;
                Duration::ZERO
            }
            Ok(false) => {
                failures = 0;
                poll
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                Counters::add(&wb.counters.retries, 1);
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(collection = board.name(), kind = T::WHAT, failures, error = %e, "write-back flush of member operations failed; the writes stay pending and are retried");
                }
                let base = Duration::from_millis(50)
                    .saturating_mul(1 << failures.min(7).saturating_sub(1));
                base.min(Duration::from_secs(5))
            }
        };
        drop(board);
        if pause.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = wb.wake.notified() => {}
            }
        }
    }
}

/// One round over every shard (`closing`: everything pending is due);
/// whether some shard had more waiting.
async fn flush_round<T: Flushed>(this: &T, closing: bool) -> Result<bool> {
    let wb = this.write_back_state()?;
    let core = this.core();
    let fence_name = core.keys.fence_name();
    wb.fence_ready
        .get_or_try_init(|| this.prepare(&fence_name, core.keys.shards()))
        .await?;
    let backlogs = wb.log.board_backlog(&wb.shards).await?;
    let work = crate::write_back::flusher::schedule(
        &wb.counters,
        (&wb.shards, &backlogs),
        &wb.settings,
        (core.now_ms(), closing),
    );
    let results: Vec<Result<bool>> = stream::iter(work)
        .map(|(shard, due)| async move { flush_shard(this, &shard, due).await })
        .buffer_unordered(PARALLEL_SHARDS)
        .collect()
        .await;
    let mut busy = false;
    for result in results {
        busy |= result?;
    }
    Ok(busy)
}

/// Flushes one claimed record of a shard; whether it was full.
async fn flush_shard<T: Flushed>(this: &T, shard: &ShardKeys, due: u64) -> Result<bool> {
    let wb = this.write_back_state()?;
    let settings = &wb.settings;
    let Some(epoch) = wb
        .leases
        .claim(shard, &wb.token, settings.flush_lease)
        .await?
    else {
        return Ok(false);
    };
    let Some(Some(mut claimed)) = wb
        .log
        .board_claim(shard, &wb.token, settings.batch, due)
        .await?
    else {
        return Ok(false);
    };
    let core = this.core();
    let fence = Fence {
        entity: core.keys.fence_name(),
        shard: shard.shard,
        epoch,
    };
    if let Some(pause) = FAULTS.take_stall(&fence.entity) {
        tokio::time::sleep(pause).await;
    }
    let full = claimed.owners.len() >= settings.batch;
    let timeout = settings.statement_timeout();
    loop {
        let batch = BoardBatch {
            batch: &claimed.batch,
            owners: &claimed.owners,
            fence: fence.clone(),
            statement_timeout: timeout,
            rehearse: false,
        };
        let flushed = match tokio::time::timeout(timeout + timeout / 2, this.commit(batch)).await {
            Ok(result) => result,
            Err(_) => Err(Error::LoadTimeout {
                entity: this.name().to_owned(),
                id: format!("({} flush of {} members)", T::WHAT, claimed.len()),
                after: timeout,
            }),
        };
        let mut committed = false;
        match flushed {
            Ok(BoardFlushed::Committed) => {
                committed = true;
                Counters::add(&wb.counters.batches, 1);
                Counters::add(&wb.counters.counter_batches, 1);
                Counters::add(&wb.counters.rows_written, claimed.len() as u64);
            }
            Ok(BoardFlushed::Replayed) => {
                tracing::info!(
                        collection = this.name(),
                        kind = T::WHAT,
                        shard = shard.shard,
                        batch = claimed.batch,
                        "a batch of member operations was committed already (a flusher stopped before clearing it); clearing it without applying it again"
                    );
            }
            Ok(BoardFlushed::Refused {
                owner,
                member,
                error,
            }) => {
                if claimed.len() > 1 {
                    // Would the rest commit without it? Refused the
                    // same way: the table is at fault, not the member.
                    let rest = without(&claimed.owners, &owner, &member);
                    let rehearsal = this
                        .commit(BoardBatch {
                            batch: &claimed.batch,
                            owners: &rest,
                            fence: fence.clone(),
                            statement_timeout: timeout,
                            rehearse: true,
                        })
                        .await?;
                    if let BoardFlushed::Refused { error: other, .. } = &rehearsal {
                        if crate::cache::write_back::flusher::same_way(&error, other) {
                            Counters::add(&wb.counters.alerts, 1);
                            tracing::error!(collection = this.name(), kind = T::WHAT, shard = shard.shard, error = %error, "the source refuses the members of a batch alike (the table, not a member): nothing is dead-lettered; retried with backoff");
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
                    "failed_at_ms": core.now_ms(),
                })
                .to_string();
                let moved = wb
                    .log
                    .board_reclaim(
                        shard,
                        (&claimed.batch, &new),
                        (&owner, &core.owner_keys(&owner)),
                        &member,
                        &why,
                    )
                    .await?;
                Counters::add(&wb.counters.dead_lettered, 1);
                tracing::warn!(collection = this.name(), kind = T::WHAT, owner, member, code = code.as_deref(), error = %error, "the source refused a written-back member; its operation is in the dead letters, the rest of the batch is claimed again");
                match moved {
                    Some(true) => {
                        claimed.batch = new;
                        claimed.owners = without(&claimed.owners, &owner, &member);
                        continue;
                    }
                    Some(false) => return Ok(full),
                    None => return Ok(false),
                }
            }
            Err(Error::Fenced { current, .. }) => {
                Counters::add(&wb.counters.fenced, 1);
                tracing::info!(
                    collection = this.name(),
                    kind = T::WHAT,
                    shard = shard.shard,
                    epoch,
                    current,
                    "member operations flush fenced: a newer flusher owns the shard"
                );
                wb.leases.raise_epoch(shard, current).await?;
                wb.leases.release(shard, &wb.token).await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        if committed && FAULTS.fires(&fence.entity) {
            wb.closed.store(true, Ordering::Release);
            return Err(Error::Config(
                "fault point: stopped after a commit of member operations, before its clear".into(),
            ));
        }
        let keys: Vec<_> = claimed
            .owners
            .iter()
            .map(|(owner, _)| core.owner_keys(owner))
            .collect();
        wb.log.board_clear(shard, &claimed.batch, &keys).await?;
        return Ok(full);
    }
}

/// Flushes everything pending now (whatever `max_delay`), until no
/// operation is left in a shard this instance can take: for tests and
/// for a clean shutdown. The last round's error, if any.
pub(super) async fn flush<T: Flushed>(this: &T) -> Result<()> {
    let wb = this.write_back_state()?;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let busy = flush_round(this, true).await?;
        let left = wb
            .log
            .board_backlog(&wb.shards)
            .await?
            .iter()
            .any(|b| b.pending > 0);
        if !left && !busy {
            return Ok(());
        }
        if rounds > 1000 {
            return Err(Error::Internal {
                what: format!("a {} flush did not drain in 1,000 rounds", T::WHAT),
            });
        }
        if !busy {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Stops the flusher, waits for its round, and flushes what is
/// pending; writes are refused from then on ([`Error::Closed`]). A
/// collection that writes through has nothing to close.
pub(super) async fn close<T: Flushed>(this: &T) -> Result<()> {
    let Ok(wb) = this.write_back_state() else {
        return Ok(());
    };
    wb.closed.store(true, Ordering::Release);
    wb.wake.notify_one();
    let task = wb.task.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(task) = task {
        let _ = task.await;
    }
    let drained = flush(this).await;
    for shard in &wb.shards {
        let _ = wb.leases.release(shard, &wb.token).await;
    }
    drained
}

/// `owners` without `member` of `owner` (an owner left with nothing goes).
fn without(
    owners: &[(String, crate::store::MemberOps)],
    owner: &str,
    member: &str,
) -> Vec<(String, crate::store::MemberOps)> {
    owners
        .iter()
        .filter_map(|(o, ops)| {
            let mut ops = ops.clone();
            if o == owner {
                ops.remove(member);
            }
            (!ops.is_empty()).then(|| (o.clone(), ops))
        })
        .collect()
}
