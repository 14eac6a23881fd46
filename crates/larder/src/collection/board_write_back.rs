//! Write-back leaderboards: writes acknowledged once the store holds them
//! durably, flushed to the database exactly once (see
//! `store/board_deltas.rs` for the store side and `board_flush.rs` for the
//! flusher).
//!
//! Why a module of its own: a write-through board changes the database
//! first and the cache after; a write-back board changes the cache and a
//! durable per-member operation in one script and leaves the database to
//! the flusher. So its writes, its loads (which must lay the operations
//! the database lacks over what it loaded) and its database answers (an
//! owner above the cap) differ, while its reads of a cached board are the
//! same.
//!
//! # Behavior
//! - `incr`, `set_score`, `remove`: one script changes the cached board
//!   (when it is cached whole), records the member's pending operation and
//!   voids the owner's read lease; an owner whose board is not cached gets
//!   no partial board. An increment of an owner that is not cached reads
//!   the member through first (the board is loaded, the pending operations
//!   laid over it) to check the ±2^53 range, and answers the score read
//!   through after it.
//! - A load waits while the shard's claimed record holds its owner, and
//!   reads the owner's pending state before and after its query; a claim
//!   or a clear in between makes it load again. The operations it lays
//!   over the loaded members are then exactly those the database lacks.
//!   Any write of the owner voids the lease, so a fill from before it is
//!   refused.
//! - An owner above the cap is answered from the database with its pending
//!   operations merged in, under the same before-and-after check: a page
//!   reads the database's top `offset + limit + P` (P pending members) and
//!   the pending members' own scores; a rank counts the rows above the
//!   member's score; the count adds created and drops removed members.
//! - The store unavailable: reads and writes fail with
//!   [`Error::StoreUnavailable`]: the newest scores live there.

use super::board::{Ask, Leaderboard, Ranked, Said};
use super::{BoardLoad, BoardPage, BoardSource};
use crate::error::{Error, Result};
use crate::source::Fence;
use crate::store::{
    BoardLog, BoardOpState, BoardWrite, BoardWritten, CollectionKeys, DirtyLog, MemberOp,
    MemberOps, ShardKeys,
};
use crate::write_back::{Counters, WriteBackOptions, WriteBackStats};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One claimed record to commit: see [`BoardSource::flush`].
#[derive(Debug)]
pub struct BoardBatch<'a> {
    /// The record's random batch id: the fence step records it and
    /// refuses it a second time.
    pub batch: &'a str,
    /// The operations, by owner.
    pub owners: &'a [(String, MemberOps)],
    /// The shard and epoch of the flusher's lease.
    pub fence: Fence,
    /// How long one statement may run.
    pub statement_timeout: Duration,
    /// Run the batch, then roll it back (whether the rest of a refused
    /// batch would commit).
    pub rehearse: bool,
}

/// What committing a [`BoardBatch`] did.
#[derive(Debug)]
pub enum BoardFlushed {
    /// Committed whole.
    Committed,
    /// The batch id committed already (a flusher stopped before its
    /// clear): nothing applied again.
    Replayed,
    /// The database refused this member's row: nothing committed.
    Refused {
        /// The owner.
        owner: String,
        /// The member.
        member: String,
        /// Why.
        error: Error,
    },
}

/// A board's or a set's write-back state: settings, the logs, counters
/// and the flusher's controls. Owned by the collection's `Inner`.
#[derive(Debug)]
pub(crate) struct BoardWriteBack {
    pub(crate) settings: WriteBackOptions,
    pub(crate) log: Arc<dyn BoardLog>,
    /// The flush leases and epochs (shared with entity write-back).
    pub(crate) leases: Arc<dyn DirtyLog>,
    pub(crate) shards: Vec<ShardKeys>,
    pub(crate) counters: Counters,
    /// This instance's flush lease token.
    pub(crate) token: String,
    /// Set once the source prepared its fence rows.
    pub(crate) fence_ready: tokio::sync::OnceCell<()>,
    /// Set by `close` or a fault point: writes are refused, the task stops.
    pub(crate) closed: AtomicBool,
    /// Wakes the flusher's task.
    pub(crate) wake: tokio::sync::Notify,
    /// The flusher's task.
    pub(crate) task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl BoardWriteBack {
    /// Checks the store (durable; on a Cluster every node, and a replica
    /// per master) and makes the state.
    pub(crate) async fn new(
        core: &super::Core,
        settings: WriteBackOptions,
    ) -> Result<BoardWriteBack> {
        settings.validate()?;
        let name = core.keys.entity();
        let store = core.store.as_ref();
        let (Some(leases), Some(log)) = (store.dirty_log(), store.board_log()) else {
            return Err(crate::write_back::durability::in_process(name, store));
        };
        crate::write_back::durability::check(name, store, &settings).await?;
        let shards = (0..core.keys.shards())
            .map(|shard| crate::write_back::shard_keys(&core.keys, shard))
            .collect();
        Ok(BoardWriteBack {
            settings,
            log,
            leases,
            shards,
            counters: Counters::new(name),
            token: crate::policy::Random::Thread.token(),
            fence_ready: Default::default(),
            closed: AtomicBool::new(false),
            wake: Default::default(),
            task: Mutex::new(None),
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(AtomicOrdering::Acquire)
    }

    pub(crate) fn stats(&self) -> WriteBackStats {
        self.counters.snapshot()
    }

    /// The dead letters of every shard.
    pub(crate) async fn dead_letters(&self) -> Result<Vec<crate::store::BoardDeadLetter>> {
        self.log.board_dead_letters(&self.shards).await
    }

    /// Whether a write of `name` may be recorded: [`Error::Closed`] once
    /// closed, [`Error::BacklogFull`] at `max_backlog`.
    pub(crate) fn admit(&self, name: &str) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed {
                entity: name.to_owned(),
            });
        }
        let backlog = self.counters.backlog.load(AtomicOrdering::Relaxed);
        if backlog >= self.settings.max_backlog {
            return Err(Error::BacklogFull {
                entity: name.to_owned(),
                backlog,
                max: self.settings.max_backlog,
            });
        }
        Ok(())
    }

    /// Reads the owner's pending state, runs `query`, reads it again,
    /// until no claim or clear of the shard fell in between and the
    /// claimed record does not hold the owner: then the database lacks
    /// exactly the second state's operations. `query` gets the first
    /// state's operations; when its answer depends on them
    /// (`same_members`), the second state must hold operations of the
    /// same members too. Past `wait_timeout`, [`Error::LoadTimeout`].
    pub(crate) async fn consistent<T, F, Fut>(
        &self,
        core: &super::Core,
        owner: &str,
        same_members: bool,
        query: F,
    ) -> Result<(T, MemberOps)>
    where
        F: Fn(MemberOps) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let keys: CollectionKeys = core.owner_keys(owner);
        let deadline = Instant::now() + core.settings.wait_timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let first: BoardOpState = self.log.board_state(&keys, owner).await?;
            if !first.claimed {
                let members: Vec<String> = first.ops.keys().cloned().collect();
                let answer = query(first.ops.clone()).await?;
                let second = self.log.board_state(&keys, owner).await?;
                if !second.claimed
                    && second.clears == first.clears
                    && (!same_members || second.ops.keys().eq(members.iter()))
                {
                    return Ok((answer, second.ops));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::LoadTimeout {
                    entity: core.keys.entity().to_owned(),
                    id: owner.chars().take(80).collect(),
                    after: core.settings.wait_timeout,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Rank order: score descending, ties in descending byte order of the member.
fn rank_order(a: &(String, f64), b: &(String, f64)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
}

/// Whether `(m1, s1)` ranks before `(m2, s2)`.
fn ranks_before(m1: &str, s1: f64, m2: &str, s2: f64) -> bool {
    s1 > s2 || (s1 == s2 && m1.as_bytes() > m2.as_bytes())
}

/// `members` (rank order) with `ops` laid over, in rank order.
pub(crate) fn lay_over(members: &[(String, f64)], ops: &MemberOps) -> Vec<(String, f64)> {
    if ops.is_empty() {
        return members.to_vec();
    }
    let mut by_member: HashMap<&str, f64> = members.iter().map(|(m, s)| (m.as_str(), *s)).collect();
    for (member, op) in ops {
        match op.apply(by_member.get(member.as_str()).copied()) {
            Some(s) => by_member.insert(member.as_str(), s),
            None => by_member.remove(member.as_str()),
        };
    }
    let mut out: Vec<(String, f64)> = by_member
        .into_iter()
        .map(|(m, s)| (m.to_owned(), s))
        .collect();
    out.sort_by(rank_order);
    out
}

impl Leaderboard {
    /// A write under write-back (see the module docs): the score after it
    /// (`Some(0)`/`None` for a removal: whether the member was there).
    pub(super) async fn write_back_write(
        &self,
        owner: &str,
        member: &str,
        op: MemberOp,
    ) -> Result<Option<f64>> {
        let wb = self.write_back_state()?;
        wb.admit(self.name())?;
        let keys = self.inner.core.owner_keys(owner);
        let record = |only_cached: bool| BoardWrite {
            member,
            op,
            integer: self.score_kind() == super::ScoreKind::Integer,
            max_members: self.inner.max_members,
            now_ms: self.inner.core.now_ms(),
            only_cached,
        };
        // A set needs nothing read first; an increment or a removal of an
        // owner that is not cached reads the member through first.
        let mut before: Option<Option<Ranked>> = None;
        let mut written = wb
            .log
            .board_op(&keys, owner, &record(!matches!(op, MemberOp::Set(_))))
            .await?;
        if written == BoardWritten::NotCached {
            let read = self.rank(owner, member).await?.value;
            if let (MemberOp::Add(by), Some(r)) = (op, &read) {
                let sum =
                    match self.score_kind() {
                        // Exact: a double rounds sums past 2^53.
                        super::ScoreKind::Integer => (r.score as i64)
                            .checked_add(by as i64)
                            .map_or(f64::INFINITY, |n| {
                                if n.unsigned_abs() > crate::source::MAX_EXACT_SCORE.unsigned_abs()
                                {
                                    f64::INFINITY
                                } else {
                                    n as f64
                                }
                            }),
                        super::ScoreKind::Float => r.score + by,
                    };
                self.check_score(member, "score", sum)?;
            }
            before = Some(read);
            written = wb.log.board_op(&keys, owner, &record(false)).await?;
        }
        let out = match written {
            BoardWritten::Cached { score, was_there } => match op {
                MemberOp::Remove => was_there.then_some(0.0),
                _ => score,
            },
            BoardWritten::Uncached => match op {
                MemberOp::Set(v) => Some(v),
                MemberOp::Remove => before.flatten().map(|_| 0.0),
                MemberOp::Add(_) => self.rank(owner, member).await?.value.map(|r| r.score),
            },
            BoardWritten::OutOfRange(v) => {
                return Err(Error::InvalidRow {
                    entity: self.name().to_owned(),
                    id: member.chars().take(80).collect(),
                    reason: format!(
                        "the score would be {v}, beyond ±2^53, which a Redis score cannot hold exactly; nothing was written"
                    ),
                })
            }
            BoardWritten::NotCached => return Err(internal("the write found no board twice")),
        };
        Counters::add(&wb.counters.acknowledged, 1);
        if matches!(op, MemberOp::Add(_)) {
            Counters::add(&wb.counters.increments, 1);
        }
        Ok(out)
    }

    /// A load under write-back: the database's members with the pending
    /// operations laid over (see the module docs).
    pub(super) async fn write_back_load(&self, owner: &str) -> Result<BoardLoad> {
        let source = &self.inner.source;
        let max = self.inner.max_members;
        let wb = self.write_back_state()?;
        let (load, ops) = wb
            .consistent(&self.inner.core, owner, false, |_| async move {
                source.load(owner, max).await
            })
            .await?;
        Ok(match load {
            BoardLoad::Members(members) => {
                let merged = lay_over(&members, &ops);
                if merged.len() as u64 > max {
                    BoardLoad::TooMany(merged.len() as u64)
                } else {
                    BoardLoad::Members(merged)
                }
            }
            // Answered from the database, pending operations merged then.
            too_many => too_many,
        })
    }

    /// A read answered from the database under write-back, the pending
    /// operations merged in (see the module docs).
    pub(super) async fn write_back_from_source(&self, owner: &str, ask: &Ask) -> Result<Said> {
        let source = &self.inner.source;
        let wb = self.write_back_state()?;
        let (said, _) = wb
            .consistent(&self.inner.core, owner, true, |ops| async move {
                merged_answer(source.as_ref(), owner, ask, &ops).await
            })
            .await?;
        Ok(said)
    }

    /// Write-back counters (`None`: the board writes through).
    pub fn write_back_stats(&self) -> Option<WriteBackStats> {
        self.inner.write_back.as_ref().map(|wb| wb.stats())
    }

    /// Whether writes are written back (acknowledged before the database
    /// has them).
    pub fn is_write_back(&self) -> bool {
        self.inner.write_back.is_some()
    }

    /// The dead letters of a write-back board: member operations the
    /// database refused, with why (empty when the board writes through).
    pub async fn dead_letters(&self) -> Result<Vec<crate::store::BoardDeadLetter>> {
        match &self.inner.write_back {
            Some(wb) => wb.dead_letters().await,
            None => Ok(Vec::new()),
        }
    }
}

/// The database's answer to `ask` with `ops` (the owner's operations the
/// database lacks) merged in.
async fn merged_answer(
    source: &dyn BoardSource,
    owner: &str,
    ask: &Ask,
    ops: &MemberOps,
) -> Result<Said> {
    // The database's scores of the pending members.
    let pending: Vec<&str> = ops.keys().map(String::as_str).collect();
    let mut before: HashMap<String, f64> = HashMap::with_capacity(pending.len());
    for m in &pending {
        if let Some((score, _)) = source.member(owner, m).await? {
            before.insert((*m).to_owned(), score);
        }
    }
    let after = |m: &str| -> Option<f64> {
        match ops.get(m) {
            Some(op) => op.apply(before.get(m).copied()),
            None => None,
        }
    };
    match ask {
        Ask::Member(m) => {
            if !ops.contains_key(m) && ops.is_empty() {
                return Ok(Said::Member(source.member(owner, m).await?.map(
                    |(score, rank)| Ranked {
                        member: m.clone(),
                        score,
                        rank: rank + 1,
                    },
                )));
            }
            let score = if ops.contains_key(m) {
                after(m)
            } else {
                source.member(owner, m).await?.map(|(s, _)| s)
            };
            let Some(score) = score else {
                return Ok(Said::Member(None));
            };
            let mut rank = source.above(owner, m, score).await?;
            for p in &pending {
                if let Some(&s) = before.get(*p) {
                    if ranks_before(p, s, m, score) {
                        rank = rank.saturating_sub(1);
                    }
                }
                if *p != m.as_str() {
                    if let Some(s) = after(p) {
                        if ranks_before(p, s, m, score) {
                            rank += 1;
                        }
                    }
                }
            }
            Ok(Said::Member(Some(Ranked {
                member: m.clone(),
                score,
                rank: rank + 1,
            })))
        }
        Ask::Top { offset, limit } => {
            let db_count = source.count(owner).await?;
            let created = pending
                .iter()
                .filter(|p| !before.contains_key(**p) && after(p).is_some())
                .count() as u64;
            let removed = pending
                .iter()
                .filter(|p| before.contains_key(**p) && after(p).is_none())
                .count() as u64;
            let count = (db_count + created).saturating_sub(removed);
            if *limit == 0 {
                return Ok(Said::Top(BoardPage {
                    count,
                    items: Vec::new(),
                }));
            }
            let fetch = offset
                .saturating_add(*limit)
                .saturating_add(pending.len() as u64);
            let mut rows = source.top(owner, 0, fetch).await?;
            rows.retain(|(m, _)| !ops.contains_key(m));
            rows.extend(
                pending
                    .iter()
                    .filter_map(|p| after(p).map(|s| ((*p).to_owned(), s))),
            );
            rows.sort_by(rank_order);
            let start = usize::try_from(*offset).unwrap_or(usize::MAX);
            let items = rows
                .into_iter()
                .skip(start)
                .take(usize::try_from(*limit).unwrap_or(usize::MAX))
                .zip(offset.saturating_add(1)..)
                .map(|((member, score), rank)| Ranked {
                    member,
                    score,
                    rank,
                })
                .collect();
            Ok(Said::Top(BoardPage { count, items }))
        }
    }
}

fn internal(what: &str) -> Error {
    Error::Internal {
        what: what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_lay_over_in_rank_order() {
        let members = vec![
            ("a".to_owned(), 5.0),
            ("b".to_owned(), 3.0),
            ("c".to_owned(), 3.0),
        ];
        let mut ops = MemberOps::new();
        ops.insert("a".into(), MemberOp::Remove);
        ops.insert("b".into(), MemberOp::Add(1.0));
        ops.insert("d".into(), MemberOp::Add(3.0));
        ops.insert("e".into(), MemberOp::Set(10.0));
        let out = lay_over(&members, &ops);
        assert_eq!(
            out,
            vec![
                ("e".to_owned(), 10.0),
                ("b".to_owned(), 4.0),
                ("d".to_owned(), 3.0),
                ("c".to_owned(), 3.0),
            ]
        );
    }
}
