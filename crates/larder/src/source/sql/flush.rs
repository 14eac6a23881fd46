//! Write-back flushes into SQL: one fenced transaction per batch.
//!
//! Several instances flush one entity, each owning a shard through a lease
//! in the store. A lease can run out while its holder stalls (a pause, a
//! slow network), and the next holder then flushes newer data; the stalled
//! one must not commit its older batch afterwards. So every flush
//! transaction first moves the shard's row of `larder_fence` to its own
//! epoch — `UPDATE … SET epoch = $e WHERE … AND epoch <= $e` — and rolls
//! back when no row matched: a newer epoch committed already. Epochs come
//! from the store (`INCR` on every new lease holder), so they only grow.
//!
//! On PostgreSQL the transaction also sets `statement_timeout` (kept below
//! the flush lease) and `larder.origin = 'larder'`, so change-notification
//! triggers can skip larder's own writes.

use super::schema::KeyValue;
use super::{classify, Backend, SqlSource};
use crate::codec::RawJson;
use crate::error::{Error, Result};
use crate::source::Fence;
use serde_json::{Map, Value};
use std::time::Duration;

/// The fence table, created on first use of write-back.
pub(super) const FENCE_TABLE: &str = "larder_fence";

/// What the fence step found: go on, or a newer epoch committed.
enum FenceCheck {
    Passed,
    Newer(u64),
}

impl SqlSource {
    /// Creates the fence table if missing and the entity's rows, one per
    /// shard (idempotent, safe to run from many instances at once).
    pub async fn prepare_fence(&self, entity: &str, shards: u16) -> Result<()> {
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (entity text NOT NULL, shard integer NOT NULL, epoch bigint NOT NULL DEFAULT 0, PRIMARY KEY (entity, shard))"
        );
        let result = match &self.inner.backend {
            Backend::Postgres(pool, _) => {
                async {
                    let mut tx = pool.begin().await?;
                    // Concurrent CREATE TABLE IF NOT EXISTS can collide in
                    // the catalog; serialise the installers.
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('larder_fence'))")
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(&create).execute(&mut *tx).await?;
                    sqlx::query(&format!(
                        "INSERT INTO {FENCE_TABLE} (entity, shard, epoch) SELECT $1, s, 0 FROM generate_series(0, $2 - 1) AS s ON CONFLICT DO NOTHING"
                    ))
                    .bind(entity)
                    .bind(i32::from(shards))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await
                }
                .await
            }
            Backend::Sqlite(pool, _) => {
                async {
                    let mut tx = pool.begin().await?;
                    sqlx::query(&create).execute(&mut *tx).await?;
                    sqlx::query(&format!(
                        "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n + 1 < ?2) INSERT INTO {FENCE_TABLE} (entity, shard, epoch) SELECT ?1, n, 0 FROM s WHERE true ON CONFLICT DO NOTHING"
                    ))
                    .bind(entity)
                    .bind(i32::from(shards))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await
                }
                .await
            }
        };
        result.map_err(|e| classify(self.entity(), e))
    }

    /// Upserts `rows` and deletes `removes` in one transaction behind the
    /// fence; the rows as stored, in the shape of a load.
    pub(super) async fn flush_json(
        &self,
        rows: Vec<(String, Map<String, Value>)>,
        removes: &[String],
        fence: &Fence,
        statement_timeout: Duration,
    ) -> Result<Vec<(String, RawJson)>> {
        let (order, groups) = self.plan_upserts(rows)?;
        let schema = &self.inner.schema;
        let keys = removes
            .iter()
            .map(|id| schema.canonical(id))
            .collect::<Result<Vec<KeyValue>>>()?;
        let committed = match &self.inner.backend {
            Backend::Postgres(pool, q) => {
                async {
                    let mut tx = pool.begin().await?;
                    let timeout_ms = statement_timeout.as_millis().max(1);
                    sqlx::query(&format!("SET LOCAL statement_timeout = {timeout_ms}"))
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("SELECT set_config('larder.origin', 'larder', true)")
                        .execute(&mut *tx)
                        .await?;
                    if let FenceCheck::Newer(current) = fence_postgres(&mut tx, fence).await? {
                        tx.rollback().await?;
                        return Ok(Err(current));
                    }
                    let stored = q.upsert_in(&mut tx, schema, &groups).await?;
                    for key in &keys {
                        q.remove_in(&mut tx, key).await?;
                    }
                    tx.commit().await?;
                    Ok(Ok(stored))
                }
                .await
            }
            Backend::Sqlite(pool, q) => {
                async {
                    let mut tx = pool.begin().await?;
                    if let FenceCheck::Newer(current) = fence_sqlite(&mut tx, fence).await? {
                        tx.rollback().await?;
                        return Ok(Err(current));
                    }
                    let stored = q.upsert_in(&mut tx, schema, &groups).await?;
                    for key in &keys {
                        q.remove_in(&mut tx, key).await?;
                    }
                    tx.commit().await?;
                    Ok(Ok(stored))
                }
                .await
            }
        };
        match committed.map_err(|e: sqlx::Error| classify(self.entity(), e))? {
            Ok(stored) => self.collect_stored(order, stored),
            Err(current) => Err(Error::Fenced {
                entity: fence.entity.clone(),
                shard: fence.shard,
                epoch: fence.epoch,
                current,
            }),
        }
    }
}

fn epoch_i64(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

/// The fence step on one backend's connection; `$p` is its parameter
/// sigil (`$` on PostgreSQL, `?` on SQLite). Moves the shard's row to this
/// epoch unless a newer one committed; creates the row if it is missing
/// (the table was prepared for fewer shards).
macro_rules! fence_step {
    ($name:ident, $conn:ty, $p:literal) => {
        async fn $name(conn: &mut $conn, fence: &Fence) -> sqlx::Result<FenceCheck> {
            let epoch = epoch_i64(fence.epoch);
            let shard = i32::from(fence.shard);
            let moved = sqlx::query(&format!(
                "UPDATE {FENCE_TABLE} SET epoch = {p}1 WHERE entity = {p}2 AND shard = {p}3 AND epoch <= {p}1",
                p = $p
            ))
            .bind(epoch)
            .bind(&fence.entity)
            .bind(shard)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if moved > 0 {
                return Ok(FenceCheck::Passed);
            }
            let current: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT epoch FROM {FENCE_TABLE} WHERE entity = {p}1 AND shard = {p}2",
                p = $p
            ))
            .bind(&fence.entity)
            .bind(shard)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(current) = current {
                return Ok(FenceCheck::Newer(u64::try_from(current).unwrap_or(0)));
            }
            sqlx::query(&format!(
                "INSERT INTO {FENCE_TABLE} (entity, shard, epoch) VALUES ({p}1, {p}2, {p}3)",
                p = $p
            ))
            .bind(&fence.entity)
            .bind(shard)
            .bind(epoch)
            .execute(&mut *conn)
            .await?;
            Ok(FenceCheck::Passed)
        }
    };
}

fence_step!(fence_postgres, sqlx::PgConnection, "$");
fence_step!(fence_sqlite, sqlx::SqliteConnection, "?");
