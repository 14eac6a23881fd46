//! Write-back sets into SQL: a claimed record of member operations (an
//! add, a removal per member) committed in one fenced transaction, or not
//! at all.
//!
//! Why batched statements: a set's operations need no value read back, so
//! a record commits as the fence step, **one** multi-row `INSERT … ON
//! CONFLICT DO NOTHING` (MariaDB `ON DUPLICATE KEY UPDATE member =
//! member`, never `INSERT IGNORE`, which turns foreign-key and NOT NULL
//! errors into warnings) and **one** `DELETE … WHERE (owner, member) IN
//! (…)` (each in chunks of [`ROWS`] rows, far below any bind limit).
//! Adds and removals are idempotent, and the fence's batch id keeps a
//! replayed record from committing twice anyway (see `board_flush.rs`).
//!
//! A batch statement the database refuses for a row's fault does not say
//! which row: the record is then run again one statement per member,
//! which stops at the refused member ([`BoardFlushed::Refused`], nothing
//! committed), and the flusher dead-letters it alone.

use super::board_flush::{settle, Committed, Halted};
use super::collection::{pg_param, SqlSetSource};
use super::flush::{
    begin_postgres, fence_mysql, fence_postgres, fence_sqlite, mysql_timed, FenceCheck,
};
use super::owner_table::{bind_key, Backend};
use super::schema::KeyValue;
use super::Fault;
use crate::collection::{BoardBatch, BoardFlushed};
use crate::error::Result;
use crate::store::MemberOp;

/// Rows per batch statement (two bind values each).
const ROWS: usize = 1000;

/// One planned row: owner and member (text and key).
type Row = (String, String, KeyValue, KeyValue);

/// A record's rows: the adds and the removals.
struct Plan {
    adds: Vec<Row>,
    removes: Vec<Row>,
}

/// The fenced part of a set transaction, the same on every backend (in an
/// async block answering [`Committed`]): the fence step with the batch
/// id, then the rows — batched (one insert, one delete per [`ROWS`]) or
/// one statement per member — then `COMMIT` (a rehearsal rolls back).
macro_rules! set_commit {
    ($tx:ident, $fence_step:ident, $this:expr, $b:expr, $plan:expr, $batched:expr) => {{
        match $fence_step(&mut $tx, &$b.fence, $b.batch).await? {
            FenceCheck::Passed => {}
            refused => {
                $tx.rollback().await?;
                return Ok(Err(refused));
            }
        }
        let sql = &$this.inner.sql;
        if $batched {
            for (rows, add) in [(&$plan.adds, true), (&$plan.removes, false)] {
                for chunk in rows.chunks(ROWS) {
                    let text = $this.batch_sql(add, chunk.len());
                    let mut q = sqlx::query(&text);
                    for (_, _, o, m) in chunk {
                        q = bind_key!(bind_key!(q, o), m);
                    }
                    q.execute(&mut *$tx)
                        .await
                        .map_err(|e| Halted::Batch($this.err(e)))?;
                }
            }
        } else {
            for (rows, text) in [(&$plan.adds, &sql.add), (&$plan.removes, &sql.remove)] {
                for (owner, member, o, m) in rows.iter() {
                    bind_key!(bind_key!(sqlx::query(text), o), m)
                        .execute(&mut *$tx)
                        .await
                        .map_err(|e| Halted::At(owner.clone(), member.clone(), $this.err(e)))?;
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

impl SqlSetSource {
    /// The batch insert (`add`) or delete of `n` rows.
    fn batch_sql(&self, add: bool, n: usize) -> String {
        let sql = &self.inner.sql;
        let table = &self.inner.table;
        let row = |i: usize| match &table.backend {
            Backend::Postgres(_) => format!(
                "({}, {})",
                pg_param(2 * i + 1, &table.owner.key_type),
                pg_param(2 * i + 2, &table.member.key_type)
            ),
            _ => "(?, ?)".to_owned(),
        };
        let rows = (0..n).map(row).collect::<Vec<_>>().join(", ");
        if add {
            format!("{}{rows}{}", sql.insert_head, sql.insert_tail)
        } else {
            format!("{}{rows})", sql.delete_head)
        }
    }

    /// Commits a claimed record (see the module docs).
    pub(super) async fn flush_set_ops(&self, b: BoardBatch<'_>) -> Result<BoardFlushed> {
        let mut plan = Plan {
            adds: Vec::new(),
            removes: Vec::new(),
        };
        for (owner, ops) in b.owners {
            for (member, op) in ops {
                let (o, m) = match self.keys(owner, Some(member)) {
                    Ok((o, Some(m))) => (o, m),
                    Ok((_, None)) => continue,
                    Err(error) => {
                        return Ok(BoardFlushed::Refused {
                            owner: owner.clone(),
                            member: member.clone(),
                            error,
                        })
                    }
                };
                let row = (owner.clone(), member.clone(), o, m);
                match op {
                    MemberOp::Remove => plan.removes.push(row),
                    _ => plan.adds.push(row),
                }
            }
        }
        let batched = self.commit(&b, &plan, true).await;
        let committed = match batched {
            // A row's fault in a batch statement: find the row.
            Err(Halted::Batch(e)) if Fault::of(&e) == Fault::Row => {
                self.commit(&b, &plan, false).await
            }
            other => other,
        };
        settle(committed, &b, &self.inner.table.backend, |e| self.err(e)).await
    }

    /// One transaction of `plan` under the fence (see [`set_commit`]).
    async fn commit(&self, b: &BoardBatch<'_>, plan: &Plan, batched: bool) -> Committed {
        let timeout = b.statement_timeout;
        match &self.inner.table.backend {
            Backend::Postgres(pool) => {
                let mut tx = begin_postgres(pool, timeout).await?;
                set_commit!(tx, fence_postgres, self, b, plan, batched)
            }
            Backend::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                set_commit!(tx, fence_sqlite, self, b, plan, batched)
            }
            Backend::MySql(pool) => {
                mysql_timed!(pool, timeout, conn, async {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    set_commit!(tx, fence_mysql, self, b, plan, batched)
                })
            }
        }
    }
}
