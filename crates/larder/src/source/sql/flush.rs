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
//! triggers can skip larder's own writes. On MariaDB the flush's
//! connection runs with `max_statement_time` and `innodb_lock_wait_timeout`
//! set to the statement timeout, and back to their defaults afterwards (a
//! connection that cannot be reset leaves the pool).
//!
//! The fence step also writes a token of its own into the row's `batch`
//! column. When the reply to `COMMIT` is lost (the connection dropped), the
//! row tells what happened: the token is there only if the transaction
//! committed. A committed batch is reported as committed with its rows
//! unread, never retried; one that did not commit fails as unavailable and
//! is retried whole. If the database stays unreachable for the whole
//! statement timeout, the outcome cannot be known and the batch is retried
//! (an upsert of the same rows writes the same values again).
//!
//! A row the upsert did not return (a `BEFORE` trigger returned `NULL`) is
//! left out of the answer; a returned row that is not valid JSON is
//! reported unread. A `42501` (insufficient privilege) is the table's fault
//! when the role lacks a privilege the flush needs on the table or the
//! fence, and a row's (row-level security) otherwise.

use super::schema::{delta_scale, quote, KeyValue};
use super::{classify, classify_as, Backend, Fault, SqlSource};
use crate::codec::RawJson;
use crate::error::{Error, Result};
use crate::source::{CountersFlushed, Fence};
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// The fence table, created on first use of write-back.
pub(super) const FENCE_TABLE: &str = "larder_fence";

/// What the fence step found: go on, a newer epoch committed, or this
/// very batch id committed already (a replay).
pub(super) enum FenceCheck {
    Passed,
    Newer(u64),
    Replayed,
}

/// What a flush transaction committed, as JSON.
pub(super) struct FlushedJson {
    /// The rows as stored, in the order of the batch; a row the upsert
    /// did not return is absent.
    pub(super) stored: Vec<(String, RawJson)>,
    /// Committed ids whose stored row is not known.
    pub(super) unread: Vec<String>,
    /// Ids of column updates that matched no row (deleted meanwhile).
    pub(super) missing: Vec<String>,
}

/// One write-back column update, checked against the schema: the key, the
/// columns set and their values as one JSON object.
type Update = (KeyValue, Vec<usize>, String);

/// Where a flush transaction failed.
enum Failed {
    /// Before `COMMIT` was sent: nothing was committed.
    Before(sqlx::Error),
    /// Sending `COMMIT` or reading its reply.
    Commit(sqlx::Error),
}

impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Self {
        Failed::Before(e)
    }
}

/// The transaction's answer: the rows as stored and the ids of updates
/// that matched no row, or the newer epoch.
type Committed = std::result::Result<(Vec<(String, String)>, Vec<String>), u64>;

/// Runs `$body` (an async block that may use `$conn`, a pooled MariaDB
/// connection) with the connection's statements timing out after
/// `$timeout` (`max_statement_time`, `innodb_lock_wait_timeout`), set back
/// to their defaults afterwards; a connection that cannot be reset leaves
/// the pool. In an async block whose error takes `sqlx::Error` by `?`.
macro_rules! mysql_timed {
    ($pool:expr, $timeout:expr, $conn:ident, $body:expr) => {{
        let mut $conn = $pool.acquire().await?;
        sqlx::query(&format!(
            "SET SESSION max_statement_time = {:.3}, innodb_lock_wait_timeout = {}",
            $timeout.as_secs_f64().max(0.001),
            $timeout.as_secs().max(1)
        ))
        .execute(&mut *$conn)
        .await?;
        let result = $body.await;
        let reset = sqlx::query(
            "SET SESSION max_statement_time = DEFAULT, innodb_lock_wait_timeout = DEFAULT",
        )
        .execute(&mut *$conn)
        .await;
        if reset.is_err() {
            drop($conn.detach());
        }
        result
    }};
}
pub(super) use mysql_timed;

/// The fenced part of a flush transaction, the same on every backend (in
/// an async block answering `Result<Committed, Failed>`): the fence step,
/// then the upserts, the column updates (one UPDATE each, of just the
/// dirty columns) and the deletes, then `COMMIT`; a newer epoch rolls back.
macro_rules! fenced_commit {
    ($tx:ident, $fence_step:ident, $q:expr, $fence:expr, $token:expr, $schema:expr, $groups:expr, $updates:expr, $keys:expr) => {{
        match $fence_step(&mut $tx, $fence, $token).await? {
            FenceCheck::Passed => {}
            FenceCheck::Newer(current) => {
                $tx.rollback().await?;
                return Ok(Err(current));
            }
            // A fresh token never replays; were it to, it is not committed again.
            FenceCheck::Replayed => {
                $tx.rollback().await?;
                return Ok(Err($fence.epoch));
            }
        }
        let mut stored = $q.upsert_in(&mut $tx, $schema, $groups).await?;
        let mut missing = Vec::new();
        for (key, set, json) in $updates {
            match $q
                .update_in(&mut $tx, $schema, set, key, json.clone())
                .await?
            {
                Some(row) => stored.push((key.text.clone(), row)),
                None => missing.push(key.text.clone()),
            }
        }
        for key in $keys {
            $q.delete_in(&mut $tx, key).await?;
        }
        $tx.commit().await.map_err(Failed::Commit)?;
        Ok(Ok((stored, missing)))
    }};
}

/// Where a counter transaction stopped before committing (or at `COMMIT`).
enum Halted {
    /// Before any row's statement: nothing was committed.
    Before(sqlx::Error),
    /// At the statement of this id: nothing was committed.
    At(String, sqlx::Error),
    /// Sending `COMMIT` or reading its reply.
    Commit(sqlx::Error),
}

impl From<sqlx::Error> for Halted {
    fn from(e: sqlx::Error) -> Self {
        Halted::Before(e)
    }
}

/// The fenced part of a counter transaction, the same on every backend (in
/// an async block answering `Result<Result<missing ids, FenceCheck>,
/// Halted>`): the fence step with the batch id, one UPDATE per id and
/// column, then `COMMIT` (a rehearsal rolls back instead); a newer epoch
/// or a replay rolls back.
macro_rules! counted_commit {
    ($tx:ident, $fence_step:ident, $q:expr, $fence:expr, $batch:expr, $schema:expr, $plan:expr, $rehearse:expr) => {{
        match $fence_step(&mut $tx, $fence, $batch).await? {
            FenceCheck::Passed => {}
            refused => {
                $tx.rollback().await?;
                return Ok(Err(refused));
            }
        }
        let mut missing = Vec::new();
        for (key, set) in $plan.iter() {
            for (i, delta) in set {
                let found = $q
                    .add_in(&mut $tx, $schema, *i, key, delta)
                    .await
                    .map_err(|e| Halted::At(key.text.clone(), e))?;
                if !found {
                    missing.push(key.text.clone());
                    break;
                }
            }
        }
        if $rehearse {
            $tx.rollback().await?;
        } else {
            $tx.commit().await.map_err(Halted::Commit)?;
        }
        Ok(Ok(missing))
    }};
}

/// A token unique to one flush transaction.
fn batch_token() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

impl SqlSource {
    /// Creates the fence table if missing and the entity's rows, one per
    /// shard (idempotent, safe to run from many instances at once).
    pub async fn prepare_fence(&self, entity: &str, shards: u16) -> Result<()> {
        let result = match &self.inner.backend {
            Backend::Postgres(pool, _) => prepare_fence_postgres(pool, entity, shards).await,
            Backend::MySql(pool, _) => prepare_fence_mysql(pool, entity, shards).await,
            Backend::Sqlite(pool, _) => prepare_fence_sqlite(pool, entity, shards).await,
        };
        result.map_err(|e| classify(self.entity(), e))
    }

    /// Upserts `rows`, updates the columns of `updates` and deletes
    /// `deletes` in one transaction behind the fence; what it committed
    /// (see [`FlushedJson`]).
    pub(super) async fn flush_json(
        &self,
        rows: Vec<(String, Map<String, Value>)>,
        updates: &[(String, Map<String, Value>)],
        deletes: &[String],
        fence: &Fence,
        statement_timeout: Duration,
    ) -> Result<FlushedJson> {
        let (mut order, groups) = self.plan_upserts(rows)?;
        let updates = updates
            .iter()
            .map(|(id, fields)| self.patch_plan(id, fields))
            .collect::<Result<Vec<Update>>>()?;
        order.extend(updates.iter().map(|(key, _, _)| key.text.clone()));
        let schema = &self.inner.schema;
        let keys = deletes
            .iter()
            .map(|id| schema.canonical(id))
            .collect::<Result<Vec<KeyValue>>>()?;
        let token = batch_token();
        let committed: std::result::Result<Committed, Failed> = match &self.inner.backend {
            Backend::Postgres(pool, q) => {
                async {
                    let mut tx = begin_postgres(pool, statement_timeout).await?;
                    fenced_commit!(
                        tx,
                        fence_postgres,
                        q,
                        fence,
                        &token,
                        schema,
                        &groups,
                        &updates,
                        &keys
                    )
                }
                .await
            }
            Backend::Sqlite(pool, q) => {
                async {
                    let mut tx = pool.begin().await?;
                    fenced_commit!(
                        tx,
                        fence_sqlite,
                        q,
                        fence,
                        &token,
                        schema,
                        &groups,
                        &updates,
                        &keys
                    )
                }
                .await
            }
            Backend::MySql(pool, q) => {
                async {
                    mysql_timed!(pool, statement_timeout, conn, async {
                        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                        fenced_commit!(
                            tx,
                            fence_mysql,
                            q,
                            fence,
                            &token,
                            schema,
                            &groups,
                            &updates,
                            &keys
                        )
                    })
                }
                .await
            }
        };
        let committed = match committed {
            Ok(committed) => committed,
            Err(Failed::Before(e)) => return Err(self.flush_error(e, !keys.is_empty()).await),
            Err(Failed::Commit(e)) => {
                let e = classify(self.entity(), e);
                if !matches!(e, Error::SourceUnavailable { .. }) {
                    return Err(e);
                }
                // The reply to COMMIT is lost: the fence row tells.
                return match self.fenced_batch(fence, statement_timeout).await {
                    Some(found) if found == token => {
                        tracing::warn!(
                            entity = self.entity(),
                            shard = fence.shard,
                            error = %e,
                            "the reply to a flush's COMMIT was lost; the fence row shows it committed"
                        );
                        Ok(FlushedJson {
                            stored: Vec::new(),
                            unread: order
                                .into_iter()
                                .chain(keys.into_iter().map(|k| k.text))
                                .collect(),
                            missing: Vec::new(),
                        })
                    }
                    _ => Err(e),
                };
            }
        };
        match committed {
            Ok((stored, missing)) => {
                let mut flushed = self.collect_flushed(order, stored);
                flushed.missing = missing;
                Ok(flushed)
            }
            Err(current) => Err(Error::Fenced {
                entity: fence.entity.clone(),
                shard: fence.shard,
                epoch: fence.epoch,
                current,
            }),
        }
    }

    /// One id's counter UPDATEs: its key and the columns' indexes with
    /// their deltas (zero deltas left out).
    fn counter_plan(
        &self,
        id: &str,
        columns: &[(String, i64)],
    ) -> Result<(KeyValue, Vec<(usize, String)>)> {
        let schema = &self.inner.schema;
        let key = schema.canonical(id)?;
        let mut set = Vec::with_capacity(columns.len());
        for (field, delta) in columns {
            let (column, decimal) = crate::store::delta_column(field);
            let Some(i) = schema.columns.iter().position(|c| c.name == column) else {
                return Err(Error::InvalidRow {
                    entity: self.entity().to_owned(),
                    id: id.to_owned(),
                    reason: format!("unknown column `{column}`"),
                });
            };
            if *delta != 0 {
                // A numeric(p, s) column's delta is in units of 10^-s.
                let scale = if decimal {
                    delta_scale(&schema.columns[i])
                } else {
                    0
                };
                set.push((i, crate::decimal::from_units(i128::from(*delta), scale)));
            }
        }
        Ok((key, set))
    }

    /// Commits a write-back counter batch (see [`crate::source::CounterBatch`]):
    /// the fence step records `batch` and refuses it a second time, then
    /// one `UPDATE … SET col = COALESCE(col, 0) + delta` per id and column
    /// (a `numeric(p, s)` column's delta sent as exact decimal text),
    /// then `COMMIT` — all of it or nothing. A statement refused for a row
    /// answers that row (nothing committed); a lost reply to `COMMIT` is
    /// settled by the fence row, as for record batches.
    pub(super) async fn flush_counters_json(
        &self,
        batch: &str,
        deltas: &[(String, Vec<(String, i64)>)],
        fence: &Fence,
        (statement_timeout, rehearse): (Duration, bool),
    ) -> Result<CountersFlushed> {
        let schema = &self.inner.schema;
        let mut plan: Vec<(KeyValue, Vec<(usize, String)>)> = Vec::with_capacity(deltas.len());
        for (id, columns) in deltas {
            match self.counter_plan(id, columns) {
                Ok(step) => plan.push(step),
                Err(error) => {
                    return Ok(CountersFlushed::Refused {
                        id: id.clone(),
                        error,
                    })
                }
            }
        }
        let plan = &plan;
        let committed: std::result::Result<std::result::Result<Vec<String>, FenceCheck>, Halted> =
            match &self.inner.backend {
                Backend::Postgres(pool, q) => {
                    async {
                        let mut tx = begin_postgres(pool, statement_timeout).await?;
                        counted_commit!(tx, fence_postgres, q, fence, batch, schema, plan, rehearse)
                    }
                    .await
                }
                Backend::Sqlite(pool, q) => {
                    async {
                        let mut tx = pool.begin().await?;
                        counted_commit!(tx, fence_sqlite, q, fence, batch, schema, plan, rehearse)
                    }
                    .await
                }
                Backend::MySql(pool, q) => {
                    async {
                        mysql_timed!(pool, statement_timeout, conn, async {
                            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                            counted_commit!(
                                tx,
                                fence_mysql,
                                q,
                                fence,
                                batch,
                                schema,
                                plan,
                                rehearse
                            )
                        })
                    }
                    .await
                }
            };
        match committed {
            Ok(Ok(missing)) => Ok(CountersFlushed::Committed { missing }),
            Ok(Err(FenceCheck::Replayed)) => Ok(CountersFlushed::Replayed),
            Ok(Err(FenceCheck::Newer(current))) => Err(Error::Fenced {
                entity: fence.entity.clone(),
                shard: fence.shard,
                epoch: fence.epoch,
                current,
            }),
            Ok(Err(FenceCheck::Passed)) => Err(Error::Config(
                "a counter flush stopped after passing its fence".into(),
            )),
            Err(Halted::Before(e)) => Err(self.flush_error(e, false).await),
            Err(Halted::At(id, e)) => {
                let error = self.flush_error(e, false).await;
                if Fault::of(&error) == Fault::Row {
                    Ok(CountersFlushed::Refused { id, error })
                } else {
                    Err(error)
                }
            }
            Err(Halted::Commit(e)) => {
                let e = classify(self.entity(), e);
                if !matches!(e, Error::SourceUnavailable { .. }) {
                    return Err(e);
                }
                // The reply to COMMIT is lost: the fence row tells. Committed:
                // a later attempt finds the batch id there and clears.
                match self.fenced_batch(fence, statement_timeout).await {
                    Some(found) if found == batch => Ok(CountersFlushed::Replayed),
                    _ => Err(e),
                }
            }
        }
    }

    /// The rows a committed flush returned, in `order`: a row that is not
    /// valid JSON is unread; a row not returned is left out.
    fn collect_flushed(&self, order: Vec<String>, stored: Vec<(String, String)>) -> FlushedJson {
        let mut by_id: std::collections::HashMap<String, String> = stored.into_iter().collect();
        let mut out = FlushedJson {
            stored: Vec::with_capacity(order.len()),
            unread: Vec::new(),
            missing: Vec::new(),
        };
        for id in order {
            let Some(json) = by_id.remove(&id) else {
                continue;
            };
            match self.raw_json(&id, json) {
                Ok(raw) => out.stored.push((id, raw)),
                Err(e) => {
                    tracing::warn!(entity = self.entity(), id, error = %e, "a flushed row committed but its stored row does not decode; its entry is invalidated");
                    out.unread.push(id);
                }
            }
        }
        out
    }

    /// Classifies an error of a flush transaction that did not commit. A
    /// `42501` on PostgreSQL is the table's fault when the role lacks a
    /// privilege the flush needs (on the table, or the fence), the row's
    /// otherwise (row-level security).
    async fn flush_error(&self, e: sqlx::Error, deletes: bool) -> Error {
        let Backend::Postgres(pool, _) = &self.inner.backend else {
            return classify(self.entity(), e);
        };
        let denied = match &e {
            sqlx::Error::Database(db) => db.code().as_deref() == Some("42501"),
            _ => false,
        };
        if !denied {
            return classify(self.entity(), e);
        }
        let table = &self.inner.schema.table;
        let name = match &table.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&table.name)),
            None => quote(&table.name),
        };
        let granted: sqlx::Result<bool> = sqlx::query_scalar(&format!(
            "SELECT has_table_privilege($1, 'INSERT') AND has_table_privilege($1, 'UPDATE') AND has_table_privilege($1, 'SELECT') AND (NOT $2 OR has_table_privilege($1, 'DELETE')) AND has_table_privilege('{FENCE_TABLE}', 'UPDATE')"
        ))
        .bind(name)
        .bind(deletes)
        .fetch_one(pool)
        .await;
        match granted {
            Ok(true) => classify_as(self.entity(), e, Fault::Row),
            Ok(false) => classify_as(self.entity(), e, Fault::Table),
            Err(check) => classify(self.entity(), check),
        }
    }

    /// The `batch` token of the fence row (see [`fenced_batch`]).
    async fn fenced_batch(&self, fence: &Fence, within: Duration) -> Option<String> {
        let pool = match &self.inner.backend {
            Backend::Postgres(pool, _) => FencePool::Postgres(pool),
            Backend::Sqlite(pool, _) => FencePool::Sqlite(pool),
            Backend::MySql(pool, _) => FencePool::MySql(pool),
        };
        fenced_batch(pool, fence, within).await
    }
}

/// The fence table's `CREATE TABLE` (PostgreSQL and SQLite).
fn fence_create() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (entity text NOT NULL, shard integer NOT NULL, epoch bigint NOT NULL DEFAULT 0, PRIMARY KEY (entity, shard))"
    )
}

/// Creates the fence table on PostgreSQL if missing, and `entity`'s rows
/// (see [`SqlSource::prepare_fence`]); shared with the leaderboards' flush.
pub(super) async fn prepare_fence_postgres(
    pool: &sqlx::PgPool,
    entity: &str,
    shards: u16,
) -> sqlx::Result<()> {
    let create = fence_create();

    let mut tx = pool.begin().await?;
    // Concurrent CREATE TABLE IF NOT EXISTS can collide in
    // the catalog; serialise the installers.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('larder_fence'))")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&create).execute(&mut *tx).await?;
    // Tables made before the `batch` column get it once.
    let has_batch: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name = 'batch')",
                    )
                    .bind(FENCE_TABLE)
                    .fetch_one(&mut *tx)
                    .await?;
    if !has_batch {
        sqlx::query(&format!(
            "ALTER TABLE {FENCE_TABLE} ADD COLUMN IF NOT EXISTS batch text"
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&format!(
                        "INSERT INTO {FENCE_TABLE} (entity, shard, epoch) SELECT $1, s, 0 FROM generate_series(0, $2 - 1) AS s ON CONFLICT DO NOTHING"
                    ))
                    .bind(entity)
                    .bind(i32::from(shards))
                    .execute(&mut *tx)
                    .await?;
    tx.commit().await
}

/// [`prepare_fence_postgres`] on MariaDB.
pub(super) async fn prepare_fence_mysql(
    pool: &sqlx::MySqlPool,
    entity: &str,
    shards: u16,
) -> sqlx::Result<()> {
    // DDL commits implicitly on MariaDB: no transaction.
    sqlx::query(&format!(
                        "CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (entity varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, shard integer NOT NULL, epoch bigint NOT NULL DEFAULT 0, batch varchar(64), PRIMARY KEY (entity, shard))"
                    ))
                    .execute(pool)
                    .await?;
    let shard_list = Value::Array((0..shards).map(Value::from).collect());
    sqlx::query(&format!(
                        "INSERT INTO {FENCE_TABLE} (entity, shard, epoch) SELECT ?, s.n, 0 FROM JSON_TABLE(?, '$[*]' COLUMNS (n integer PATH '$')) AS s WHERE TRUE ON DUPLICATE KEY UPDATE shard = VALUES(shard)"
                    ))
                    .bind(entity)
                    .bind(shard_list.to_string())
                    .execute(pool)
                    .await
                    .map(drop)
}

/// [`prepare_fence_postgres`] on SQLite.
pub(super) async fn prepare_fence_sqlite(
    pool: &sqlx::SqlitePool,
    entity: &str,
    shards: u16,
) -> sqlx::Result<()> {
    let create = fence_create();

    let mut tx = pool.begin().await?;
    sqlx::query(&create).execute(&mut *tx).await?;
    let has_batch: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('{FENCE_TABLE}') WHERE name = 'batch')"
    ))
    .fetch_one(&mut *tx)
    .await?;
    if !has_batch {
        sqlx::query(&format!("ALTER TABLE {FENCE_TABLE} ADD COLUMN batch text"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&format!(
                        "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n + 1 < ?2) INSERT INTO {FENCE_TABLE} (entity, shard, epoch) SELECT ?1, n, 0 FROM s WHERE true ON CONFLICT DO NOTHING"
                    ))
                    .bind(entity)
                    .bind(i32::from(shards))
                    .execute(&mut *tx)
                    .await?;
    tx.commit().await
}

/// A database's pool, for the fence reads every flush shares.
pub(super) enum FencePool<'a> {
    Postgres(&'a sqlx::PgPool),
    Sqlite(&'a sqlx::SqlitePool),
    MySql(&'a sqlx::MySqlPool),
}

/// The `batch` token of the fence row, read again and again until the
/// database answers or `within` runs out.
pub(super) async fn fenced_batch(
    pool: FencePool<'_>,
    fence: &Fence,
    within: Duration,
) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(20);
    loop {
        let found: sqlx::Result<Option<Option<String>>> = match pool {
            FencePool::Postgres(pool) => {
                sqlx::query_scalar(&format!(
                    "SELECT batch FROM {FENCE_TABLE} WHERE entity = $1 AND shard = $2"
                ))
                .bind(&fence.entity)
                .bind(i32::from(fence.shard))
                .fetch_optional(pool)
                .await
            }
            FencePool::Sqlite(pool) => {
                sqlx::query_scalar(&format!(
                    "SELECT batch FROM {FENCE_TABLE} WHERE entity = ?1 AND shard = ?2"
                ))
                .bind(&fence.entity)
                .bind(i32::from(fence.shard))
                .fetch_optional(pool)
                .await
            }
            FencePool::MySql(pool) => {
                sqlx::query_scalar(&format!(
                    "SELECT batch FROM {FENCE_TABLE} WHERE entity = ? AND shard = ?"
                ))
                .bind(&fence.entity)
                .bind(i32::from(fence.shard))
                .fetch_optional(pool)
                .await
            }
        };
        match found {
            Ok(row) => return row.flatten(),
            Err(_) if Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(_) => return None,
        }
    }
}

/// A flush transaction on PostgreSQL: its statements time out after
/// `timeout` (`SET LOCAL statement_timeout`), and `larder.origin` is
/// `larder`, so change-notification triggers can skip larder's own writes.
pub(super) async fn begin_postgres(
    pool: &sqlx::PgPool,
    timeout: Duration,
) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    let timeout_ms = timeout.as_millis().max(1);
    sqlx::query(&format!("SET LOCAL statement_timeout = {timeout_ms}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config('larder.origin', 'larder', true)")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

fn epoch_i64(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

/// The fence step on one backend's connection; `$p` makes its `n`th
/// parameter marker (`$n` on PostgreSQL, `?n` on SQLite, `?` on MariaDB,
/// whose markers bind in order: every statement binds its parameters in
/// the order they appear). Moves the shard's row to this epoch unless a
/// newer one committed; creates the row if it is missing (the table was
/// prepared for fewer shards).
macro_rules! fence_step {
    ($name:ident, $conn:ty, $p:expr, $distinct:expr) => {
        pub(super) async fn $name(conn: &mut $conn, fence: &Fence, token: &str) -> sqlx::Result<FenceCheck> {
            let p: fn(u8) -> String = $p;
            let distinct: fn(String) -> String = $distinct;
            let epoch = epoch_i64(fence.epoch);
            let shard = i32::from(fence.shard);
            // The token is new in every flush (a counter batch keeps its
            // own), so a matched row is always changed: the affected-row
            // count is 1 whether the server counts matched rows or changed
            // ones (MariaDB without CLIENT_FOUND_ROWS). A batch id that
            // committed already matches nothing: a replay.
            let moved = sqlx::query(&format!(
                "UPDATE {FENCE_TABLE} SET epoch = {}, batch = {} WHERE entity = {} AND shard = {} AND epoch <= {} AND {}",
                p(1), p(2), p(3), p(4), p(5), distinct(p(6))
            ))
            .bind(epoch)
            .bind(token)
            .bind(&fence.entity)
            .bind(shard)
            .bind(epoch)
            .bind(token)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if moved > 0 {
                return Ok(FenceCheck::Passed);
            }
            let current: Option<(i64, Option<String>)> = sqlx::query_as(&format!(
                "SELECT epoch, batch FROM {FENCE_TABLE} WHERE entity = {} AND shard = {}",
                p(1), p(2)
            ))
            .bind(&fence.entity)
            .bind(shard)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((current, batch)) = current {
                if batch.as_deref() == Some(token) {
                    return Ok(FenceCheck::Replayed);
                }
                return Ok(FenceCheck::Newer(u64::try_from(current).unwrap_or(0)));
            }
            sqlx::query(&format!(
                "INSERT INTO {FENCE_TABLE} (entity, shard, epoch, batch) VALUES ({}, {}, {}, {})",
                p(1), p(2), p(3), p(4)
            ))
            .bind(&fence.entity)
            .bind(shard)
            .bind(epoch)
            .bind(token)
            .execute(&mut *conn)
            .await?;
            Ok(FenceCheck::Passed)
        }
    };
}

fence_step!(
    fence_postgres,
    sqlx::PgConnection,
    |n| format!("${n}"),
    |b| format!("batch IS DISTINCT FROM {b}")
);
fence_step!(
    fence_sqlite,
    sqlx::SqliteConnection,
    |n| format!("?{n}"),
    |b| format!("batch IS NOT {b}")
);
fence_step!(
    fence_mysql,
    sqlx::MySqlConnection,
    |_| "?".to_owned(),
    |b| format!("NOT (batch <=> {b})")
);
