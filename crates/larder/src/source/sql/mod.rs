//! SQL sources: an entity is a PostgreSQL, SQLite or MariaDB table (or view).
//!
//! The database builds the JSON of a row (PostgreSQL `row_to_json`, SQLite
//! `json_object`, MariaDB `JSON_OBJECT`), so every column type works and a value `V` is whatever
//! serde makes of that JSON. The table's schema is read once, at
//! [`SqlSourceBuilder::build`]:
//!
//! - ids are canonicalised as the database compares keys, so every spelling
//!   the database calls equal is one cache entry: `"007"` → `"7"` within an
//!   integer column's range, lowercase hyphenated uuids, text unchanged
//!   (within a `varchar(n)`), `char(n)` and SQLite `RTRIM` without trailing
//!   blanks, `citext` and SQLite `NOCASE` with ASCII letters lowercased
//!   (non-ASCII `citext` ids are refused unless the collation's ctype is
//!   `C`/`POSIX`); NUL is refused in every id. Key types that cannot promise
//!   one entry per row (numeric, floats, dates, timestamps, other types,
//!   non-deterministic collations, SQLite REAL/NUMERIC affinity, other
//!   collations) are refused at build with [`Error::Schema`] naming the
//!   table, the column and its type. MariaDB text keys need a binary
//!   (`_bin`) collation (see the `mysql` module). Rows the database returns under
//!   another spelling (`'Alice'` for `alice`) carry the canonical id;
//! - rows to write are checked against the column definitions before any SQL
//!   runs (unknown columns, wrong JSON types, `null` into `NOT NULL`, NUL in
//!   strings, integers beyond the column's range, strings longer than a
//!   PostgreSQL `varchar(n)`/`char(n)`, in characters);
//! - views, and tables without a unique index on exactly the key column, are
//!   read-only.
//!
//! # Behavior
//!
//! - `load_many` is one query; `store_many` is one upsert statement per
//!   distinct set of columns in the batch (in one transaction), with the rows
//!   bound as one JSON parameter. The batch is first de-duplicated to the
//!   last write per id.
//! - An upsert names only the columns present in the row: absent columns
//!   keep their stored value, whether they have a default or not; a new row
//!   gets their default (NULL without one). Generated columns and identity
//!   columns other than the key (`ALWAYS` or `BY DEFAULT`) are never written.
//! - Database errors are classified where they arise, by SQLSTATE (SQLite:
//!   result code) and backend: connection, resource, lock, serialization
//!   and deadlock errors, and driver errors without a code (I/O, pool
//!   timeout), are [`Error::SourceUnavailable`]; everything else is
//!   [`Error::Source`] with its code, and a class the write-back flusher
//!   reads: the table's fault (read-only, a missing table or column, a
//!   missing privilege) or the rows' (anything else).
//! - `patch` is one `UPDATE` of only the given columns (bound as one JSON
//!   parameter) `RETURNING` the row; no row with the id means nothing is
//!   written and `None`.
//! - A row refused by validation is [`Error::InvalidRow`], naming the
//!   column; a row whose key column differs from the id is [`Error::InvalidId`].

/// The pooled forms of a dialect's connection-level writes, the same on
/// every backend: `delete` on a connection of its own, `upsert` in a
/// transaction of its own. Expands inside a dialect's `impl Queries`, which
/// has `delete_in` and `upsert_in`.
macro_rules! pooled_writes {
    ($pool:ty) => {
        /// Deletes the row of `id`; whether there was one.
        pub(super) async fn delete(&self, pool: &$pool, id: &KeyValue) -> sqlx::Result<bool> {
            let mut conn = pool.acquire().await?;
            self.delete_in(&mut conn, id).await
        }

        /// One upsert per column set, in one transaction; the rows as stored.
        pub(super) async fn upsert(
            &self,
            pool: &$pool,
            s: &Schema,
            groups: &[(Vec<String>, Vec<Value>)],
        ) -> sqlx::Result<Vec<(String, String)>> {
            let mut tx = pool.begin().await?;
            let out = self.upsert_in(&mut tx, s, groups).await?;
            tx.commit().await?;
            Ok(out)
        }
    };
}

mod board;
mod board_flush;
mod cdc;
mod collection;
mod feed;
pub use self::board::{SqlBoardSource, SqlBoardSourceBuilder};
pub(crate) use self::collection::MAX_EXACT_SCORE;
pub use self::collection::{SqlSetSource, SqlSetSourceBuilder};
pub use self::feed::{SqlFeedSource, SqlFeedSourceBuilder};
mod exec;
mod flush;
mod mysql;
mod owner_table;
mod postgres;
mod refusal;
mod schema;
mod set_flush;
mod sqlite;

pub use self::cdc::{
    mark_larder_origin, ChangeChannel, ChangeHandler, ChangeListener, ChangeListenerBuilder,
    ChangeStats,
};
pub(crate) use self::refusal::refusal_of_cause;
pub use self::schema::ColumnInfo;

use self::schema::{KeyValue, Schema, TableName};
use super::{CounterBatch, CounterColumn, CountersFlushed, FlushBatch, Flushed, Source};
use crate::codec::RawJson;
use crate::error::{Error, Message, Result, SchemaPart};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// How long a pool waits for a connection (including connecting) before
/// the source counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long SQLite waits on a locked database before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection pool to PostgreSQL, SQLite or MariaDB.
#[derive(Debug, Clone)]
pub enum SqlPool {
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
    /// SQLite.
    Sqlite(sqlx::SqlitePool),
    /// MariaDB 10.6 or later (`mysql://`; MySQL itself is refused).
    MySql(sqlx::MySqlPool),
}

impl SqlPool {
    /// Connects to `postgres://…`, `postgresql://…`, `sqlite://…` (also
    /// `sqlite:path` and `sqlite::memory:`) or `mysql://…` / `mariadb://…`.
    ///
    /// SQLite files are created if missing and opened in WAL mode with a
    /// 5 s busy timeout; an in-memory database uses one connection that is
    /// never closed (every connection would otherwise see its own database).
    /// Waiting for a connection times out after 5 s.
    ///
    /// MariaDB sessions run in strict mode (`STRICT_ALL_TABLES`: a value
    /// that does not fit its column is an error, never truncated) with
    /// `time_zone = '+00:00'`. The server must be MariaDB 10.6 or later:
    /// MySQL (no `INSERT … RETURNING`) and older MariaDB are
    /// [`Error::Config`].
    ///
    /// An unreachable database is [`Error::SourceUnavailable`]; a URL of
    /// another scheme is [`Error::Config`].
    pub async fn connect(url: &str, max_connections: u32) -> Result<SqlPool> {
        let label = redact(url);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url)
                .await
                .map_err(|e| classify(&label, e))?;
            Ok(SqlPool::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map_err(|e| Error::Config(format!("invalid SQLite URL {label:?}: {e}")))?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            let mut pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(if memory { 1 } else { max_connections.max(1) })
                .acquire_timeout(ACQUIRE_TIMEOUT);
            if memory {
                pool = pool
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .min_connections(1);
            }
            let pool = pool
                .connect_with(options)
                .await
                .map_err(|e| classify(&label, e))?;
            Ok(SqlPool::Sqlite(pool))
        } else if let Some(rest) = url.strip_prefix("mariadb://") {
            Box::pin(Self::connect(&format!("mysql://{rest}"), max_connections)).await
        } else if url.starts_with("mysql://") {
            let options = sqlx::mysql::MySqlConnectOptions::from_str(url)
                .map_err(|e| Error::Config(format!("invalid MySQL URL {label:?}: {e}")))?
                .timezone(Some("+00:00".to_owned()));
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query(
                            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')",
                        )
                        .execute(conn)
                        .await
                        .map(drop)
                    })
                })
                .connect_with(options)
                .await
                .map_err(|e| classify(&label, e))?;
            mysql::check_server(&pool, &label).await?;
            Ok(SqlPool::MySql(pool))
        } else {
            Err(Error::Config(format!(
                "unsupported database URL {label:?}: use postgres://, postgresql://, sqlite:// or mysql://"
            )))
        }
    }
}

/// A URL without its password, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A table or view of a SQL database as a [`Source`].
///
/// A cheap clone: clones share the pool and the schema read at build time.
/// Builds from the table's columns read at build time ([`SqlSource::builder`]);
/// the README's "Keys as the database compares them" lists the key types.
#[derive(Debug, Clone)]
pub struct SqlSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    schema: Schema,
    backend: Backend,
}

/// The pool with the SQL precomputed for it.
#[derive(Debug)]
enum Backend {
    Postgres(sqlx::PgPool, postgres::Queries),
    Sqlite(sqlx::SqlitePool, sqlite::Queries),
    MySql(sqlx::MySqlPool, mysql::Queries),
}

/// Builds a [`SqlSource`]; consuming, finish with [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct SqlSourceBuilder {
    pool: SqlPool,
    table: String,
    key: String,
    columns: Option<Vec<String>>,
    entity: Option<String>,
}

impl SqlSource {
    /// Starts a source over `table` (`table`, or `schema.table` on
    /// PostgreSQL, where the default schema is `current_schema()`, and
    /// `database.table` on MariaDB, where the default is the URL's).
    pub fn builder(pool: SqlPool, table: &str) -> SqlSourceBuilder {
        SqlSourceBuilder {
            pool,
            table: table.to_owned(),
            key: "id".to_owned(),
            columns: None,
            entity: None,
        }
    }
}

impl SqlSourceBuilder {
    /// The key column: ids are its values. Default: `"id"`.
    pub fn key(mut self, column: &str) -> Self {
        column.clone_into(&mut self.key);
        self
    }

    /// The columns that make up a value, in the order of the JSON object.
    /// Rows to write may only carry these (and the key). Default: all
    /// columns, in table order.
    pub fn columns(mut self, cols: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.columns = Some(cols.into_iter().map(Into::into).collect());
        self
    }

    /// The entity name used in errors. Default: the table name.
    pub fn entity(mut self, name: &str) -> Self {
        self.entity = Some(name.to_owned());
        self
    }

    /// Reads the table's schema and builds the source.
    ///
    /// Invalid identifiers, an unknown table, key column or listed column,
    /// and a key column of a type that cannot be a key, are
    /// [`Error::Schema`] naming the part; a database that cannot be
    /// reached is [`Error::SourceUnavailable`].
    pub async fn build(self) -> Result<SqlSource> {
        let part = |part, column: Option<&str>, e: Error| {
            Error::schema(&self.table, part, column, e.to_string())
        };
        let table = TableName::parse(&self.table).map_err(|e| part(SchemaPart::Table, None, e))?;
        schema::ident("key column", &self.key)
            .map_err(|e| part(SchemaPart::Key, Some(&self.key), e))?;
        if let Some(cols) = &self.columns {
            for c in cols {
                schema::ident("column", c).map_err(|e| part(SchemaPart::Column, Some(c), e))?;
            }
        }
        let entity = self.entity.unwrap_or_else(|| table.name.clone());
        let mut collation = mysql::KeyCollation::default();
        let (raw, pool) = match self.pool {
            SqlPool::Postgres(pool) => (
                postgres::describe(&pool, &entity, &table, &self.key).await?,
                SqlPool::Postgres(pool),
            ),
            SqlPool::MySql(pool) => {
                let (raw, coll) =
                    mysql::describe(&pool, &entity, &table, &self.key, self.columns.as_deref())
                        .await?;
                collation = coll;
                (raw, SqlPool::MySql(pool))
            }
            SqlPool::Sqlite(pool) => {
                if table.schema.is_some() {
                    return Err(Error::schema(
                        &self.table,
                        SchemaPart::Table,
                        None,
                        format!(
                            "table `{}`: SQLite sources take a table name without a schema",
                            self.table
                        ),
                    ));
                }
                (
                    sqlite::describe(&pool, &entity, &table, &self.key).await?,
                    SqlPool::Sqlite(pool),
                )
            }
        };
        let schema = Schema::new(entity, raw, &self.key, self.columns)?;
        let backend = match pool {
            SqlPool::Postgres(pool) => {
                let q = postgres::Queries::new(&schema);
                Backend::Postgres(pool, q)
            }
            SqlPool::Sqlite(pool) => {
                let q = sqlite::Queries::new(&schema);
                Backend::Sqlite(pool, q)
            }
            SqlPool::MySql(pool) => {
                let q = mysql::Queries::new(&schema, collation);
                Backend::MySql(pool, q)
            }
        };
        Ok(SqlSource {
            inner: Arc::new(Inner { schema, backend }),
        })
    }
}

impl SqlSource {
    fn entity(&self) -> &str {
        &self.inner.schema.entity
    }

    /// Whether writes are accepted: false for views and for tables without
    /// a unique index (or primary key) on exactly the key column.
    pub fn is_writable(&self) -> bool {
        self.inner.schema.read_only.is_none()
    }

    /// The key column's name.
    pub fn key_column(&self) -> &str {
        &self.inner.schema.key.name
    }

    /// The configured columns, in JSON order.
    pub fn columns(&self) -> &[ColumnInfo] {
        &self.inner.schema.columns
    }

    /// The canonical form of an id for the key column's type: integers in
    /// decimal without sign or leading zeros (`"+007"` → `"7"`), uuids
    /// lowercase hyphenated, text as the column compares it (citext and
    /// SQLite `NOCASE` fold ASCII case, `char(n)` and SQLite `RTRIM` ignore
    /// trailing blanks). Ids that do not fit the column (beyond its
    /// range or length, a NUL character), and empty ids, are
    /// [`Error::InvalidId`].
    pub fn canonical_id(&self, raw: &str) -> Result<String> {
        Ok(self.inner.schema.canonical(raw)?.text)
    }

    /// Loads one row as JSON; `None` when there is none.
    pub async fn load_json(&self, id: &str) -> Result<Option<RawJson>> {
        let key = self.inner.schema.canonical(id)?;
        let json = match &self.inner.backend {
            Backend::Postgres(pool, q) => q.load_one(pool, &key).await,
            Backend::Sqlite(pool, q) => q.load_one(pool, &key).await,
            Backend::MySql(pool, q) => q.load_one(pool, &key).await,
        }
        .map_err(|e| classify(self.entity(), e))?;
        json.map(|j| self.raw_json(&key.text, j)).transpose()
    }

    /// Loads many rows as JSON in one query, keyed by canonical id; ids
    /// without a row are absent.
    pub async fn load_many_json(&self, ids: &[String]) -> Result<HashMap<String, RawJson>> {
        let mut keys: Vec<KeyValue> = Vec::with_capacity(ids.len());
        for id in ids {
            let key = self.inner.schema.canonical(id)?;
            if !keys.iter().any(|k| k.text == key.text) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = match &self.inner.backend {
            Backend::Postgres(pool, q) => q.load_many(pool, &keys).await,
            Backend::Sqlite(pool, q) => q.load_many(pool, &keys).await,
            Backend::MySql(pool, q) => q.load_many(pool, &keys).await,
        }
        .map_err(|e| classify(self.entity(), e))?;
        rows.into_iter()
            .map(|(id, json)| {
                let id = self.stored_id(id);
                let raw = self.raw_json(&id, json)?;
                Ok((id, raw))
            })
            .collect()
    }

    /// At most `limit` rows in key order after the id `after` (exclusive),
    /// or from the start: keyset pagination over the whole entity.
    pub async fn load_page_json(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, RawJson)>> {
        let after = after.map(|a| self.inner.schema.canonical(a)).transpose()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match &self.inner.backend {
            Backend::Postgres(pool, q) => q.load_page(pool, after.as_ref(), limit).await,
            Backend::Sqlite(pool, q) => q.load_page(pool, after.as_ref(), limit).await,
            Backend::MySql(pool, q) => q.load_page(pool, after.as_ref(), limit).await,
        }
        .map_err(|e| classify(self.entity(), e))?;
        rows.into_iter()
            .map(|(id, json)| {
                let id = self.stored_id(id);
                let raw = self.raw_json(&id, json)?;
                Ok((id, raw))
            })
            .collect()
    }

    /// Inserts or updates rows (JSON objects) and returns them as stored,
    /// one per distinct id, as the database's `RETURNING` gave them.
    ///
    /// Every row is validated first ([`validate_row`](Self::validate_row));
    /// one refused row means nothing is written.
    pub async fn store_many_json(
        &self,
        rows: &[(String, RawJson)],
    ) -> Result<Vec<(String, RawJson)>> {
        let mut parsed = Vec::with_capacity(rows.len());
        for (id, json) in rows {
            match serde_json::from_slice::<Value>(json.bytes()) {
                Ok(Value::Object(map)) => parsed.push((id.clone(), map)),
                _ => {
                    return Err(Error::InvalidRow {
                        entity: self.entity().to_owned(),
                        id: id.clone(),
                        reason: "a row must be a JSON object".into(),
                    })
                }
            }
        }
        self.store_maps(parsed).await
    }

    /// Updates only the given columns of the row of `id` (`null` sets NULL)
    /// and returns the row as stored (triggers included), in the shape of a
    /// load; `None` when there is no such row, and nothing is written.
    ///
    /// One `UPDATE` naming only these columns, so writers patching different
    /// columns of a row do not undo each other. The fields are checked first
    /// like a row ([`validate_row`](Self::validate_row)); a generated column
    /// is refused too, and so is a patch that sets nothing (no fields, or
    /// only the key column, which may be present if it equals the id).
    /// Read-only sources refuse with [`Error::ReadOnly`].
    pub async fn patch_json(
        &self,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<Option<RawJson>> {
        let schema = &self.inner.schema;
        if let Some(e) = schema.read_only_error() {
            return Err(e);
        }
        let (key, set, json) = self.patch_plan(id, fields)?;
        let row = match &self.inner.backend {
            Backend::Postgres(pool, q) => q.patch(pool, schema, &set, &key, json).await,
            Backend::Sqlite(pool, q) => q.patch(pool, schema, &set, &key, json).await,
            Backend::MySql(pool, q) => q.patch(pool, schema, &set, &key, json).await,
        }
        .map_err(|e| classify(self.entity(), e))?;
        row.map(|j| self.raw_json(&key.text, j)).transpose()
    }

    /// A patch checked against the schema: the key, the columns set
    /// (indexes into the schema's columns) and their values as one JSON
    /// object.
    pub(super) fn patch_plan(
        &self,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<(schema::KeyValue, Vec<usize>, String)> {
        let schema = &self.inner.schema;
        let (key, set) = schema.validate_patch(id, fields)?;
        let values: Map<String, Value> = set
            .iter()
            .map(|&i| {
                let name = &schema.columns[i].name;
                (
                    name.clone(),
                    fields.get(name).cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        Ok((key, set, Value::Object(values).to_string()))
    }

    /// Adds `by` to `column` of the row of `id` in one statement (`UPDATE
    /// … SET col = COALESCE(col, 0) + by … RETURNING`; MariaDB: the UPDATE
    /// and a read in one transaction) and returns the row as stored;
    /// `None` when there is no such row, and nothing is written.
    ///
    /// The column must be numeric and not the key; an integer column takes
    /// an integer `by`, a `numeric(p, s)` column a `by` with at most `s`
    /// decimal places ([`Error::InvalidRow`] otherwise). The addition is
    /// the database's, exact for integer and numeric columns; a NULL
    /// counts as 0. Read-only sources refuse with [`Error::ReadOnly`].
    pub async fn incr_json(
        &self,
        id: &str,
        column: &str,
        by: &serde_json::Number,
    ) -> Result<Option<RawJson>> {
        let schema = &self.inner.schema;
        if let Some(e) = schema.read_only_error() {
            return Err(e);
        }
        let (key, i) = schema.validate_incr(id, column, by)?;
        let text = by.to_string();
        let row = match &self.inner.backend {
            Backend::Postgres(pool, q) => q.incr(pool, schema, i, &key, &text).await,
            Backend::Sqlite(pool, q) => q.incr(pool, schema, i, &key, &text).await,
            Backend::MySql(pool, q) => q.incr(pool, schema, i, &key, by).await,
        }
        .map_err(|e| classify(self.entity(), e))?;
        row.map(|j| self.raw_json(&key.text, j)).transpose()
    }

    /// Deletes the row of `id`; whether there was one.
    pub async fn delete_id(&self, id: &str) -> Result<bool> {
        if let Some(e) = self.inner.schema.read_only_error() {
            return Err(e);
        }
        let key = self.inner.schema.canonical(id)?;
        match &self.inner.backend {
            Backend::Postgres(pool, q) => q.delete(pool, &key).await,
            Backend::Sqlite(pool, q) => q.delete(pool, &key).await,
            Backend::MySql(pool, q) => q.delete(pool, &key).await,
        }
        .map_err(|e| classify(self.entity(), e))
    }

    /// Checks a row before it is written, against the column definitions:
    ///
    /// - a column outside the configured columns is refused;
    /// - a value of the wrong JSON type is refused (numbers for integer and
    ///   numeric columns, strings for text, date, time, uuid and the like,
    ///   booleans for boolean columns, arrays for arrays, anything for
    ///   json/jsonb);
    /// - `null` into a `NOT NULL` column is refused;
    /// - any value, `null` included, for a generated column is refused.
    ///
    /// These are [`Error::InvalidRow`], with a message naming
    /// the column. The key column may be present but must equal the id
    /// (else [`Error::InvalidId`]). A missing `NOT NULL` column without a
    /// default is left to the database (it may be an update).
    pub fn validate_row(&self, id: &str, row: &Map<String, Value>) -> Result<()> {
        self.inner.schema.validate(id, row).map(|_| ())
    }

    /// Validates, de-duplicates, groups by column set and upserts.
    async fn store_maps(
        &self,
        rows: Vec<(String, Map<String, Value>)>,
    ) -> Result<Vec<(String, RawJson)>> {
        let (order, groups) = self.plan_upserts(rows)?;
        if order.is_empty() {
            return Ok(Vec::new());
        }
        let schema = &self.inner.schema;
        let stored = match &self.inner.backend {
            Backend::Postgres(pool, q) => q.upsert(pool, schema, &groups).await,
            Backend::Sqlite(pool, q) => q.upsert(pool, schema, &groups).await,
            Backend::MySql(pool, q) => q.upsert(pool, schema, &groups).await,
        }
        .map_err(|e| classify(self.entity(), e))?;
        self.collect_stored(order, stored)
    }

    /// Validates rows, keeps the last write per id (in the order ids first
    /// appeared), and groups them by column set: the ids in order and the
    /// groups to upsert.
    #[allow(clippy::type_complexity)]
    fn plan_upserts(
        &self,
        rows: Vec<(String, Map<String, Value>)>,
    ) -> Result<(Vec<String>, Vec<(Vec<String>, Vec<Value>)>)> {
        let schema = &self.inner.schema;
        if let Some(e) = schema.read_only_error() {
            return Err(e);
        }
        // Validate everything first, then keep the last write per id in the
        // order ids first appeared.
        let mut order: Vec<String> = Vec::new();
        let mut latest: HashMap<String, Map<String, Value>> = HashMap::new();
        for (id, mut row) in rows {
            let key = schema.validate(&id, &row)?;
            row.insert(schema.key.name.clone(), schema.key_json(&key));
            if latest.insert(key.text.clone(), row).is_none() {
                order.push(key.text);
            }
        }
        // Group by column set: the key, then the present columns in
        // configured order.
        let mut groups: Vec<(Vec<String>, Vec<Value>)> = Vec::new();
        for id in &order {
            let Some(row) = latest.remove(id) else {
                continue;
            };
            let cols: Vec<String> = std::iter::once(schema.key.name.clone())
                .chain(
                    schema
                        .columns
                        .iter()
                        .filter(|c| !c.is_key && row.contains_key(&c.name))
                        .map(|c| c.name.clone()),
                )
                .collect();
            match groups.iter_mut().find(|(c, _)| *c == cols) {
                Some((_, batch)) => batch.push(Value::Object(row)),
                None => groups.push((cols, vec![Value::Object(row)])),
            }
        }
        Ok((order, groups))
    }

    /// The stored rows of an upsert, in `order`; an id without a row is an error.
    fn collect_stored(
        &self,
        order: Vec<String>,
        stored: Vec<(String, String)>,
    ) -> Result<Vec<(String, RawJson)>> {
        let mut by_id: HashMap<String, String> = stored
            .into_iter()
            .map(|(id, json)| (self.stored_id(id), json))
            .collect();
        let mut out = Vec::with_capacity(order.len());
        for id in order {
            let Some(json) = by_id.remove(&id) else {
                return Err(Error::Source {
                    entity: self.entity().to_owned(),
                    code: None,
                    cause: Message::cause(format!(
                        "the upsert of id {id:?} returned no row (a trigger may have skipped it)"
                    )),
                });
            };
            let raw = self.raw_json(&id, json)?;
            out.push((id, raw));
        }
        Ok(out)
    }

    /// The canonical id of a key as the database returned it: a row stored
    /// under another spelling (`'Alice'` in a citext column) is the entry
    /// of every spelling.
    fn stored_id(&self, raw: String) -> String {
        match self.inner.schema.canonical(&raw) {
            Ok(key) => key.text,
            Err(_) => raw,
        }
    }

    fn raw_json(&self, id: &str, json: String) -> Result<RawJson> {
        RawJson::from_bytes(json).map_err(|e| match e {
            Error::Decode { cause, .. } => Error::Decode {
                entity: self.entity().to_owned(),
                id: id.to_owned(),
                cause,
            },
            other => other,
        })
    }

    fn decode<V: DeserializeOwned>(&self, id: &str, json: &RawJson) -> Result<V> {
        serde_json::from_slice(json.bytes()).map_err(|e| Error::Decode {
            entity: self.entity().to_owned(),
            id: id.to_owned(),
            cause: Error::cause(e),
        })
    }

    fn encode<V: Serialize>(&self, value: &V) -> Result<Map<String, Value>> {
        match serde_json::to_value(value) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(Error::Encode {
                entity: self.entity().to_owned(),
                cause: Message::cause(format!(
                    "a SQL row must serialize to a JSON object, not {}",
                    match other {
                        Value::Array(_) => "an array",
                        Value::String(_) => "a string",
                        Value::Number(_) => "a number",
                        Value::Bool(_) => "a boolean",
                        _ => "null",
                    }
                )),
            }),
            Err(e) => Err(Error::Encode {
                entity: self.entity().to_owned(),
                cause: Error::cause(e),
            }),
        }
    }
}

#[async_trait]
impl<V> Source<V> for SqlSource
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn canonical_id(&self, id: &str) -> Result<String> {
        SqlSource::canonical_id(self, id)
    }

    fn is_canonical(&self, id: &str) -> bool {
        self.inner.schema.is_canonical(id)
    }

    async fn load(&self, id: &str) -> Result<Option<V>> {
        match self.load_json(id).await? {
            Some(json) => Ok(Some(self.decode(id, &json)?)),
            None => Ok(None),
        }
    }

    async fn load_many(&self, ids: &[String]) -> Result<HashMap<String, V>> {
        self.load_many_json(ids)
            .await?
            .into_iter()
            .map(|(id, json)| {
                let v = self.decode(&id, &json)?;
                Ok((id, v))
            })
            .collect()
    }

    async fn load_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, V)>> {
        self.load_page_json(after, limit)
            .await?
            .into_iter()
            .map(|(id, json)| {
                let v = self.decode(&id, &json)?;
                Ok((id, v))
            })
            .collect()
    }

    fn is_writable(&self) -> bool {
        SqlSource::is_writable(self)
    }

    async fn store(&self, id: &str, value: &V) -> Result<V> {
        let row = self.encode(value)?;
        let stored = self.store_maps(vec![(id.to_owned(), row)]).await?;
        match stored.into_iter().next() {
            Some((id, json)) => self.decode(&id, &json),
            None => Err(Error::Source {
                entity: self.entity().to_owned(),
                code: None,
                cause: Message::cause("the upsert returned no row"),
            }),
        }
    }

    async fn store_many(&self, rows: &[(String, V)]) -> Result<Vec<(String, V)>> {
        let mut maps = Vec::with_capacity(rows.len());
        for (id, value) in rows {
            maps.push((id.clone(), self.encode(value)?));
        }
        self.store_maps(maps)
            .await?
            .into_iter()
            .map(|(id, json)| {
                let v = self.decode(&id, &json)?;
                Ok((id, v))
            })
            .collect()
    }

    async fn patch(&self, id: &str, fields: &Map<String, Value>) -> Result<Option<V>> {
        match self.patch_json(id, fields).await? {
            Some(json) => Ok(Some(self.decode(id, &json)?)),
            None => Ok(None),
        }
    }

    async fn incr(&self, id: &str, column: &str, by: &serde_json::Number) -> Result<Option<V>> {
        match self.incr_json(id, column, by).await? {
            Some(json) => Ok(Some(self.decode(id, &json)?)),
            None => Ok(None),
        }
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        self.delete_id(id).await
    }

    fn check(&self, id: &str, value: &V) -> Result<()> {
        self.validate_row(id, &self.encode(value)?)
    }

    fn check_patch(&self, id: &str, fields: &Map<String, Value>) -> Result<()> {
        self.inner.schema.validate_patch(id, fields).map(drop)
    }

    fn fences_flushes(&self) -> bool {
        SqlSource::is_writable(self)
    }

    async fn prepare_write_back(&self, entity: &str, shards: u16) -> Result<()> {
        self.prepare_fence(entity, shards).await
    }

    async fn flush(&self, batch: FlushBatch<'_, V>) -> Result<Flushed<V>> {
        if let Some(e) = self.inner.schema.read_only_error() {
            return Err(e);
        }
        let mut maps = Vec::with_capacity(batch.upserts.len());
        for (id, value) in batch.upserts {
            maps.push((id.clone(), self.encode(value)?));
        }
        let committed = self
            .flush_json(
                maps,
                batch.updates,
                batch.deletes,
                &batch.fence,
                batch.statement_timeout,
            )
            .await?;
        let mut flushed = Flushed::new(Vec::with_capacity(committed.stored.len()));
        flushed.unread = committed.unread;
        flushed.missing = committed.missing;
        for (id, json) in committed.stored {
            // Committed already: a row that does not decode is unread, not refused.
            match self.decode(&id, &json) {
                Ok(value) => flushed.stored.push((id, value)),
                Err(e) => {
                    tracing::warn!(entity = self.entity(), id, error = %e, "a flushed row committed but its stored row does not decode; its entry is invalidated");
                    flushed.unread.push(id);
                }
            }
        }
        Ok(flushed)
    }

    fn counter_column(
        &self,
        id: &str,
        column: &str,
        by: &serde_json::Number,
    ) -> Result<CounterColumn> {
        let schema = &self.inner.schema;
        if let Some(e) = schema.read_only_error() {
            return Err(e);
        }
        let (_, i) = schema.validate_incr(id, column, by)?;
        let col = &schema.columns[i];
        if let Some((min, max)) = col.int_range() {
            return Ok(CounterColumn::Integer { min, max });
        }
        match schema::numeric_scale(&col.sql_type) {
            Some(scale) => Ok(CounterColumn::Decimal {
                scale,
                precision: schema::numeric_precision(&col.sql_type),
            }),
            None => Err(Error::Unsupported {
                entity: self.entity().to_owned(),
                what: format!("write-back increments of column `{column}`"),
                reason: format!(
                    "column `{column}` ({}) has no fixed scale: write-back counts integer and numeric(p, s) columns exactly, not floating-point or unconstrained numeric ones; use write-through",
                    col.sql_type
                ),
            }),
        }
    }

    fn counter_scale(&self, column: &str) -> u32 {
        let schema = &self.inner.schema;
        schema
            .columns
            .iter()
            .find(|c| c.name == column)
            .map_or(0, schema::delta_scale)
    }

    async fn flush_counters(&self, batch: CounterBatch<'_>) -> Result<CountersFlushed> {
        if let Some(e) = self.inner.schema.read_only_error() {
            return Err(e);
        }
        self.flush_counters_json(
            batch.batch,
            batch.deltas,
            &batch.fence,
            (batch.statement_timeout, batch.rehearse),
        )
        .await
    }

    fn read_only(&self) -> Error {
        self.inner
            .schema
            .read_only_error()
            .unwrap_or_else(|| Error::ReadOnly {
                entity: self.entity().to_owned(),
                reason: "its source does not accept writes".into(),
            })
    }
}

/// What a database error says about a write, by class. Decided where the
/// error arises, from its code and the backend that gave it (never from
/// its text), and carried in the [`Error`] that [`classify`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The database cannot serve now: connection, resources, lock waits,
    /// serialization failures, deadlocks, operator intervention, and driver
    /// errors without a code (I/O, pool timeout). Retried later, whole.
    Unavailable,
    /// The table refuses every write, whatever the rows: a read-only
    /// server, a missing table or column, a missing privilege. Retried
    /// later, whole, and worth an alert.
    Table,
    /// The rows written: data, constraints, triggers, row-level security,
    /// and every error not named above. The rows at fault are isolated.
    Row,
}

impl Fault {
    /// PostgreSQL, by SQLSTATE: connection exceptions (`08*`), insufficient
    /// resources (`53*`), operator intervention (`57P*`, `57014`
    /// query_canceled), `55P03` lock_not_available, `40001`
    /// serialization_failure and `40P01` deadlock_detected are
    /// unavailable; invalid transaction state (`25*`, e.g. read-only after
    /// a failover), `42P01` undefined_table and `42703` undefined_column
    /// concern the table. `42501` (insufficient privilege) is a row fault
    /// here: row-level security raises it for one row, and only a check
    /// of the table's privileges tells the two apart (the write-back flush
    /// makes it).
    pub(crate) fn of_postgres(code: &str) -> Fault {
        if code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || matches!(code, "57014" | "55P03" | "40001" | "40P01")
        {
            Fault::Unavailable
        } else if code.starts_with("25") || matches!(code, "42P01" | "42703") {
            Fault::Table
        } else {
            Fault::Row
        }
    }

    /// SQLite, by result code (the primary code is the low byte): BUSY,
    /// LOCKED, NOMEM, IOERR, FULL, CANTOPEN and PROTOCOL are unavailable;
    /// PERM, READONLY and AUTH concern the database, not the rows.
    pub(crate) fn of_sqlite(code: &str) -> Fault {
        match code.parse::<u32>().map(|c| c & 0xff) {
            Ok(5 | 6 | 7 | 10 | 13 | 14 | 15) => Fault::Unavailable,
            Ok(3 | 8 | 23) => Fault::Table,
            _ => Fault::Row,
        }
    }

    /// MySQL and MariaDB, by vendor error number (their SQLSTATE is too
    /// coarse: most errors are `HY000`): lock wait timeout (1205),
    /// deadlock (1213), read-only server (1290) and a connection killed
    /// (1927), too many connections (1040), a server shutting down (1053)
    /// and a statement timeout (1969, `max_statement_time`) are
    /// unavailable; a missing table (1146) or column (1054) and a refused
    /// command or column (1142, 1143) concern the table.
    pub(crate) fn of_mysql(number: u16) -> Fault {
        match number {
            1205 | 1213 | 1290 | 1927 | 1040 | 1053 | 1969 => Fault::Unavailable,
            1146 | 1054 | 1142 | 1143 => Fault::Table,
            _ => Fault::Row,
        }
    }

    /// The class of a larder error raised by a write: unavailable for the
    /// source or the store being unreachable, a timeout or a fence; the
    /// class [`classify`] recorded for a database error; a row fault for
    /// a row refused before any SQL ran (validation, encoding) and for a
    /// source error that carries no class (another [`Source`]).
    pub(crate) fn of(e: &Error) -> Fault {
        match e {
            Error::Source { cause, .. } => cause
                .downcast_ref::<Classified>()
                .map_or(Fault::Row, |c| c.fault),
            Error::InvalidRow { .. }
            | Error::InvalidId { .. }
            | Error::Encode { .. }
            | Error::Decode { .. } => Fault::Row,
            Error::ReadOnly { .. } | Error::Config(_) => Fault::Table,
            _ => Fault::Unavailable,
        }
    }
}

/// A database error with its class, as the cause of an [`Error::Source`];
/// it displays as the driver error itself.
#[derive(Debug)]
pub(crate) struct Classified {
    pub(crate) fault: Fault,
    pub(crate) error: sqlx::Error,
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Classified {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The class of a driver error, from the backend that raised it.
fn fault_of_sqlx(e: &sqlx::Error) -> Fault {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                Fault::of_postgres(&code)
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                Fault::of_sqlite(&code)
            } else if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                Fault::of_mysql(my.number())
            } else {
                Fault::Row
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Fault::Unavailable,
        _ => Fault::Row,
    }
}

/// Turns a driver error into larder's: [`Error::SourceUnavailable`] when
/// it is worth retrying later (connection, resource, lock and
/// serialization errors, and driver errors without a code), else
/// [`Error::Source`] with the database's code and the error's class (see
/// the module docs). Public so that code running its own SQL next to a
/// [`SqlSource`] classifies errors the same way.
pub fn classify(entity: &str, e: sqlx::Error) -> Error {
    let fault = fault_of_sqlx(&e);
    classify_as(entity, e, fault)
}

/// [`classify`] with the class already decided.
pub(crate) fn classify_as(entity: &str, e: sqlx::Error, fault: Fault) -> Error {
    if fault == Fault::Unavailable {
        return Error::SourceUnavailable {
            entity: entity.to_owned(),
            cause: Error::cause(e),
        };
    }
    let code = match &e {
        // MySQL's SQLSTATE is too coarse (HY000 for most errors): its
        // error number says what went wrong.
        sqlx::Error::Database(db) => match db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        {
            Some(my) => Some(my.number().to_string()),
            None => db.code().map(|c| c.into_owned()),
        },
        sqlx::Error::Decode(cause) if cause.is::<mysql::UniqueConflict>() => {
            Some(mysql::UniqueConflict::CODE.to_owned())
        }
        _ => None,
    };
    Error::Source {
        entity: entity.to_owned(),
        code,
        cause: Error::cause(Classified { fault, error: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_codes_by_class() {
        for c in [
            "08006", "08001", "53300", "57P01", "57014", "55P03", "40001", "40P01",
        ] {
            assert_eq!(Fault::of_postgres(c), Fault::Unavailable, "{c}");
        }
        for c in ["25006", "25P02", "42P01", "42703"] {
            assert_eq!(Fault::of_postgres(c), Fault::Table, "{c}");
        }
        for c in ["23505", "22P02", "P0001", "42501", "XX000", "23503"] {
            assert_eq!(Fault::of_postgres(c), Fault::Row, "{c}");
        }
    }

    #[test]
    fn sqlite_and_mysql_codes_by_class() {
        for c in ["5", "517", "6", "10", "13"] {
            assert_eq!(Fault::of_sqlite(c), Fault::Unavailable, "{c}");
        }
        for c in ["8", "3"] {
            assert_eq!(Fault::of_sqlite(c), Fault::Table, "{c}");
        }
        for c in ["19", "2067", "787", "20", "1"] {
            assert_eq!(Fault::of_sqlite(c), Fault::Row, "{c}");
        }
        for n in [1205, 1213, 1290, 1927, 1040, 1969] {
            assert_eq!(Fault::of_mysql(n), Fault::Unavailable, "{n}");
        }
        for n in [1146, 1054, 1142] {
            assert_eq!(Fault::of_mysql(n), Fault::Table, "{n}");
        }
        for n in [1062, 1452, 1644, 3819] {
            assert_eq!(Fault::of_mysql(n), Fault::Row, "{n}");
        }
    }

    #[test]
    fn classified_errors_keep_their_class_and_code() {
        let e = classify("t", sqlx::Error::PoolTimedOut);
        assert!(matches!(e, Error::SourceUnavailable { .. }));
        assert_eq!(Fault::of(&e), Fault::Unavailable);
        let e = classify_as("t", sqlx::Error::RowNotFound, Fault::Table);
        assert_eq!(Fault::of(&e), Fault::Table);
        let plain = Error::Source {
            entity: "t".into(),
            code: Some("P0001".into()),
            cause: Message::cause("refused"),
        };
        assert_eq!(Fault::of(&plain), Fault::Row);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }
}
