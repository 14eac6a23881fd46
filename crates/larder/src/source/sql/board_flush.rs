//! Write-back leaderboards into SQL: a claimed record of member
//! operations committed in one fenced transaction, or not at all.
//!
//! Why one transaction per record: the record's random batch id is what
//! the fence step stores (`UPDATE larder_fence SET epoch = $e, batch = $b
//! WHERE … AND epoch <= $e AND batch IS DISTINCT FROM $b`), so a record is
//! applied once however often a flusher replays it — but only if all of it
//! commits under that id. A member the database refuses answers
//! [`BoardFlushed::Refused`] with nothing committed; the flusher claims the
//! rest again under a new id.
//!
//! Each operation is one statement of the source's own: an increment the
//! upsert `INSERT … ON CONFLICT (owner, member) DO UPDATE SET score =
//! cur.score + EXCLUDED.score` (guarded to stay within ±2^53 on an integer
//! column; MariaDB `ON DUPLICATE KEY UPDATE` after a locked read), an
//! absolute score the upsert of the value, a removal a `DELETE`. A record
//! holds one operation per (owner, member), so no statement touches a row
//! twice (PostgreSQL refuses that in one statement, SQLSTATE 21000).

use super::board::{bind_score, score_at, SqlBoardSource};
use super::flush::{
    begin_postgres, fence_mysql, fence_postgres, fence_sqlite, fenced_batch, mysql_timed,
    prepare_fence_mysql, prepare_fence_postgres, prepare_fence_sqlite, FenceCheck, FencePool,
};
use super::owner_table::{bind_key, Backend};
use super::schema::KeyValue;
use super::{Fault, MAX_EXACT_SCORE};
use crate::collection::{BoardBatch, BoardFlushed, ScoreKind};
use crate::error::{Error, Result};
use crate::store::MemberOp;
use sqlx::Row;

/// Where a transaction stopped before committing (or at `COMMIT`).
pub(super) enum Halted {
    /// Before any member's statement: nothing was committed.
    Before(sqlx::Error),
    /// At the statement of this (owner, member): nothing was committed.
    At(String, String, Error),
    /// At a statement of many members (a set's batch insert or delete):
    /// nothing was committed, the refused row is not known.
    Batch(Error),
    /// Sending `COMMIT` or reading its reply.
    Commit(sqlx::Error),
}

impl From<sqlx::Error> for Halted {
    fn from(e: sqlx::Error) -> Self {
        Halted::Before(e)
    }
}

/// What a transaction of member operations ended with: committed, or
/// refused by the fence, or halted.
pub(super) type Committed = std::result::Result<std::result::Result<(), FenceCheck>, Halted>;

/// What a commit of a claimed record of member operations (a board's or
/// a set's) tells the flusher: a member whose row the database refuses
/// for a reason of the row's own is [`BoardFlushed::Refused`]; a lost
/// reply to `COMMIT` is settled by the fence row.
pub(super) async fn settle(
    committed: Committed,
    b: &BoardBatch<'_>,
    backend: &Backend,
    err: impl Fn(sqlx::Error) -> Error,
) -> Result<BoardFlushed> {
    match committed {
        Ok(Ok(())) => Ok(BoardFlushed::Committed),
        Ok(Err(FenceCheck::Replayed)) => Ok(BoardFlushed::Replayed),
        Ok(Err(FenceCheck::Newer(current))) => Err(Error::Fenced {
            entity: b.fence.entity.clone(),
            shard: b.fence.shard,
            epoch: b.fence.epoch,
            current,
        }),
        Ok(Err(FenceCheck::Passed)) => Err(Error::Config(
            "a flush of member operations stopped after passing its fence".into(),
        )),
        Err(Halted::Before(e)) => Err(err(e)),
        Err(Halted::Batch(error)) => Err(error),
        Err(Halted::At(owner, member, error)) => {
            if Fault::of(&error) == Fault::Row {
                Ok(BoardFlushed::Refused {
                    owner,
                    member,
                    error,
                })
            } else {
                Err(error)
            }
        }
        Err(Halted::Commit(e)) => {
            let e = err(e);
            if !matches!(e, Error::SourceUnavailable { .. }) {
                return Err(e);
            }
            // The reply to COMMIT is lost: the fence row tells.
            let pool = match backend {
                Backend::Postgres(pool) => FencePool::Postgres(pool),
                Backend::Sqlite(pool) => FencePool::Sqlite(pool),
                Backend::MySql(pool) => FencePool::MySql(pool),
            };
            match fenced_batch(pool, &b.fence, b.statement_timeout).await {
                Some(found) if found == b.batch => Ok(BoardFlushed::Replayed),
                _ => Err(e),
            }
        }
    }
}

/// One planned statement: owner and member (text and key), the operation.
type Step = (String, String, KeyValue, KeyValue, MemberOp);

/// The fenced part of a board transaction, the same on every backend (in
/// an async block answering `Result<Result<(), FenceCheck>, Halted>`):
/// the fence step with the batch id, one statement per member, then
/// `COMMIT` (a rehearsal rolls back instead).
macro_rules! board_commit {
    ($tx:ident, $fence_step:ident, $this:expr, $b:expr, $plan:expr, $mysql:expr) => {{
        match $fence_step(&mut $tx, &$b.fence, $b.batch).await? {
            FenceCheck::Passed => {}
            refused => {
                $tx.rollback().await?;
                return Ok(Err(refused));
            }
        }
        let sql = &$this.inner.sql;
        let kind = $this.inner.kind;
        for (owner, member, o, m, op) in $plan.iter() {
            let at = |e: Error| Halted::At(owner.clone(), member.clone(), e);
            match op {
                MemberOp::Add(d) => {
                    if $mysql {
                        if kind == ScoreKind::Integer {
                            let current = bind_key!(bind_key!(sqlx::query(&sql.lock), o), m)
                                .fetch_optional(&mut *$tx)
                                .await
                                .map_err(|e| at($this.err(e)))?;
                            let now: i64 = match &current {
                                Some(r) => r.try_get_unchecked(0).map_err(|e| at($this.err(e)))?,
                                None => 0,
                            };
                            let next = now.checked_add(*d as i64);
                            if !next
                                .is_some_and(|n| (-MAX_EXACT_SCORE..=MAX_EXACT_SCORE).contains(&n))
                            {
                                return Err(at($this.beyond(member)));
                            }
                        }
                        let q = bind_key!(bind_key!(sqlx::query(&sql.incr), o), m);
                        bind_score!(q, kind, *d)
                            .execute(&mut *$tx)
                            .await
                            .map_err(|e| at($this.err(e)))?;
                    } else {
                        let q = bind_key!(bind_key!(sqlx::query(&sql.incr), o), m);
                        let row = bind_score!(q, kind, *d)
                            .fetch_optional(&mut *$tx)
                            .await
                            .map_err(|e| at($this.err(e)))?;
                        let score = match row {
                            Some(r) => score_at(&r, 0, kind).map_err(|e| at($this.err(e)))?,
                            None => None,
                        };
                        if score.is_none() {
                            return Err(at($this.beyond(member)));
                        }
                    }
                }
                MemberOp::Set(v) => {
                    let q = bind_key!(bind_key!(sqlx::query(&sql.set), o), m);
                    bind_score!(q, kind, *v)
                        .execute(&mut *$tx)
                        .await
                        .map_err(|e| at($this.err(e)))?;
                }
                MemberOp::Remove => {
                    bind_key!(bind_key!(sqlx::query(&sql.remove), o), m)
                        .execute(&mut *$tx)
                        .await
                        .map_err(|e| at($this.err(e)))?;
                }
            }
        }
        if $b.rehearse {
            $tx.rollback().await?;
        } else {
            $tx.commit().await.map_err(Halted::Commit)?;
        }
        Ok(Ok(()))
    }};
}

impl super::owner_table::OwnerTable {
    /// Creates the fence table if missing and the collection's rows, one
    /// per shard (as [`SqlSource::prepare_fence`](crate::SqlSource::prepare_fence)).
    pub(super) async fn prepare_fence(&self, fence: &str, shards: u16) -> Result<()> {
        let result = match &self.backend {
            Backend::Postgres(pool) => prepare_fence_postgres(pool, fence, shards).await,
            Backend::MySql(pool) => prepare_fence_mysql(pool, fence, shards).await,
            Backend::Sqlite(pool) => prepare_fence_sqlite(pool, fence, shards).await,
        };
        result.map_err(|e| self.err(e))
    }
}

impl SqlBoardSource {
    /// Creates the fence table if missing and the board's rows, one per
    /// shard (as [`SqlSource::prepare_fence`](crate::SqlSource::prepare_fence)).
    pub(super) async fn prepare_board_fence(&self, fence: &str, shards: u16) -> Result<()> {
        self.inner.table.prepare_fence(fence, shards).await
    }

    /// Commits a claimed record (see the module docs).
    pub(super) async fn flush_board_ops(&self, b: BoardBatch<'_>) -> Result<BoardFlushed> {
        let mut plan: Vec<Step> = Vec::with_capacity(b.owners.len());
        for (owner, ops) in b.owners {
            for (member, op) in ops {
                match self.keys(owner, Some(member)) {
                    Ok((o, Some(m))) => plan.push((owner.clone(), member.clone(), o, m, *op)),
                    Ok((_, None)) => {}
                    Err(error) => {
                        return Ok(BoardFlushed::Refused {
                            owner: owner.clone(),
                            member: member.clone(),
                            error,
                        })
                    }
                }
            }
        }
        let plan = &plan;
        let timeout = b.statement_timeout;
        let committed: Committed = match &self.inner.table.backend {
            Backend::Postgres(pool) => {
                async {
                    let mut tx = begin_postgres(pool, timeout).await?;
                    board_commit!(tx, fence_postgres, self, b, plan, false)
                }
                .await
            }
            Backend::Sqlite(pool) => {
                async {
                    let mut tx = pool.begin().await?;
                    board_commit!(tx, fence_sqlite, self, b, plan, false)
                }
                .await
            }
            Backend::MySql(pool) => {
                async {
                    mysql_timed!(pool, timeout, conn, async {
                        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                        board_commit!(tx, fence_mysql, self, b, plan, true)
                    })
                }
                .await
            }
        };
        settle(committed, &b, &self.inner.table.backend, |e| self.err(e)).await
    }

    /// How many of `owner`'s rows rank before `member` at `score`.
    pub(super) async fn above(&self, owner: &str, member: &str, score: f64) -> Result<u64> {
        let (o, _) = self.keys(owner, None)?;
        let sql = &self.inner.sql.above;
        let kind = self.inner.kind;
        let member = member.to_owned();
        let n: i64 = match &self.inner.table.backend {
            Backend::Postgres(pool) => {
                let q = bind_key!(sqlx::query_scalar(sql), o).bind(member);
                bind_score!(q, kind, score).fetch_one(pool).await
            }
            Backend::Sqlite(pool) => {
                let q = bind_key!(sqlx::query_scalar(sql), o).bind(member);
                bind_score!(q, kind, score).fetch_one(pool).await
            }
            Backend::MySql(pool) => {
                let q = bind_key!(sqlx::query_scalar(sql), o);
                let q = bind_score!(q, kind, score);
                bind_score!(q, kind, score)
                    .bind(member)
                    .fetch_one(pool)
                    .await
            }
        }
        .map_err(|e| self.err(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
