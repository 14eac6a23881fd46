//! SQL sources of cached collections: [`SqlSetSource`], a table of
//! `(owner, member)` rows as one set per owner, on PostgreSQL and SQLite.
//!
//! Why the checks at build: a set is cached whole, paged by a cursor that
//! must mean the same in Redis and in the database, and answered from the
//! database when an owner is too big to cache. So the table needs
//!
//! - a **unique index on exactly (owner, member)**: one row per member, and
//!   the `ON CONFLICT` that tells "added" from "already there";
//! - an **index that serves the paging query**: first columns (owner,
//!   member), the member in byte order (PostgreSQL: collation `"C"` or
//!   `POSIX` on a text member; SQLite: `BINARY`), so every page, count and
//!   membership test of a big owner is an index range, never a scan;
//! - a member column compared byte for byte (no `citext`, `NOCASE`,
//!   `char(n)`): an integer (numeric order) or uuid or text (byte order).
//!
//! Order: integer members numerically, all others by the bytes of their
//! canonical text (`ORDER BY member COLLATE "C"` on PostgreSQL; SQLite's
//! `BINARY` is `memcmp`). Redis pages the same (see `redis_collection.rs`).
//!
//! On MariaDB the owner and member text columns need a binary
//! collation without pad (`utf8mb4_nopad_bin`; member) or any `_bin`
//! (owner), as keys do: else two members Redis tells apart are one row.
//! An add there is `SELECT … FOR UPDATE` then `INSERT … ON DUPLICATE KEY
//! UPDATE member = member` in one transaction (sqlx reports found rows,
//! so the upsert alone cannot tell "added" from "already there"; `INSERT
//! IGNORE` would turn foreign-key and NOT NULL errors into warnings).

use super::owner_table::{self, bind_key, Backend, OwnerTable};
use super::schema::{KeyType, KeyValue, Schema, TableName};
use super::{classify, SqlPool};
use crate::collection::{SetLoad, SetOrder, SetSource};
use crate::error::{Error, Result, SchemaPart};
use async_trait::async_trait;
use sqlx::Row;
use std::sync::Arc;

/// The largest integer member a sorted-set score holds exactly (2^53).
pub(crate) const MAX_EXACT_SCORE: i64 = 1 << 53;

/// A set per owner over a table of `(owner, member)` rows; a cheap clone.
///
/// Build with [`SqlSetSource::builder`]; see the module docs for the
/// checks made at build.
#[derive(Debug, Clone)]
pub struct SqlSetSource {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) table: OwnerTable,
    order: SetOrder,
    pub(super) sql: Statements,
}

#[derive(Debug, Default)]
pub(super) struct Statements {
    load: String,
    count: String,
    contains: String,
    page_start: String,
    page_after: String,
    /// One member added (write-back: one statement per member, to tell
    /// which one a refused batch failed at).
    pub(super) add: String,
    /// One member removed.
    pub(super) remove: String,
    /// `INSERT INTO t (owner, member) VALUES `: a write-back batch's adds
    /// follow as `(o, m), …`, then `insert_tail`.
    pub(super) insert_head: String,
    /// What ends the batch insert: `ON CONFLICT DO NOTHING`, or on
    /// MariaDB `ON DUPLICATE KEY UPDATE member = member`.
    pub(super) insert_tail: String,
    /// `DELETE FROM t WHERE (owner, member) IN (`: a write-back batch's
    /// removals follow as `(o, m), …)`.
    pub(super) delete_head: String,
    /// `SELECT member FROM t WHERE owner = ? AND member IN (`: which of
    /// some members are stored; the members follow as `m, …)`.
    present_head: String,
}

/// Builds a [`SqlSetSource`]; consuming, finish with [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct SqlSetSourceBuilder {
    pool: SqlPool,
    table: String,
    owner: String,
    member: String,
    name: Option<String>,
}

impl SqlSetSource {
    /// Starts a set source over `table` (`schema.table` on PostgreSQL).
    pub fn builder(pool: SqlPool, table: &str) -> SqlSetSourceBuilder {
        SqlSetSourceBuilder {
            pool,
            table: table.to_owned(),
            owner: "owner".to_owned(),
            member: "member".to_owned(),
            name: None,
        }
    }
}

impl SqlSetSourceBuilder {
    /// The column that groups rows into sets. Default: `"owner"`.
    pub fn owner(mut self, column: &str) -> Self {
        column.clone_into(&mut self.owner);
        self
    }

    /// The column whose values are the members. Default: `"member"`.
    pub fn member(mut self, column: &str) -> Self {
        column.clone_into(&mut self.member);
        self
    }

    /// The set's name in errors. Default: the table name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Reads the table's schema, checks the columns and indexes (see the
    /// module docs) and builds the source. A failed check is
    /// [`Error::Schema`]; an unreachable database
    /// [`Error::SourceUnavailable`]; MariaDB [`Error::Config`].
    pub async fn build(self) -> Result<SqlSetSource> {
        let table = owner_table::parse(
            &self.table,
            &[
                ("owner column", self.owner.as_str()),
                ("member column", self.member.as_str()),
            ],
        )?;
        if self.owner == self.member {
            return Err(Error::schema(
                &self.table,
                SchemaPart::Column,
                Some(&self.member),
                "owner and member must be two columns",
            ));
        }
        let described =
            OwnerTable::describe(self.pool, &table, self.name, &self.owner, &self.member).await?;
        described.check_member_bytes(&self.table, &self.member)?;
        let order = match &described.member.key_type {
            KeyType::Integer { .. } => SetOrder::Integer,
            _ => SetOrder::Bytes,
        };
        let text_member = matches!(described.member.key_type, KeyType::Text(_));
        let indexes = described.indexes(&table).await?;
        check_indexes(
            &self.table,
            &self.owner,
            &self.member,
            text_member,
            &indexes,
        )?;
        let (owner, member) = (&described.owner, &described.member);
        let sql = match &described.backend {
            Backend::Postgres(_) => pg_statements(owner, member, text_member),
            Backend::Sqlite(_) => sqlite_statements(owner, member),
            Backend::MySql(_) => mysql_statements(owner, member),
        };
        Ok(SqlSetSource {
            inner: Arc::new(Inner {
                table: described,
                order,
                sql,
            }),
        })
    }
}

/// One index: unique or not, its columns in order, and the collation of
/// each (empty: the column's own / none).
#[derive(Debug)]
pub(super) struct IndexInfo {
    pub(super) unique: bool,
    pub(super) columns: Vec<String>,
    pub(super) collations: Vec<String>,
}

pub(super) async fn pg_indexes(
    pool: &sqlx::PgPool,
    name: &str,
    owner: &Schema,
) -> Result<Vec<IndexInfo>> {
    let table = format!(
        "{}.{}",
        super::schema::quote(owner.table.schema.as_deref().unwrap_or("public")),
        super::schema::quote(&owner.table.name)
    );
    let rows = sqlx::query(
        "SELECT i.indisunique,
                array(SELECT a.attname::text
                        FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n)
                        JOIN pg_catalog.pg_attribute a
                          ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                       ORDER BY k.n),
                array(SELECT coalesce(c.collname::text, '')
                        FROM unnest(i.indcollation::oid[]) WITH ORDINALITY k(coll, n)
                        LEFT JOIN pg_catalog.pg_collation c ON c.oid = k.coll
                       ORDER BY k.n)
           FROM pg_catalog.pg_index i
          WHERE i.indrelid = $1::regclass AND i.indpred IS NULL AND i.indexprs IS NULL",
    )
    .bind(&table)
    .fetch_all(pool)
    .await
    .map_err(|e| classify(name, e))?;
    rows.iter()
        .map(|r| {
            Ok(IndexInfo {
                unique: r.try_get(0)?,
                columns: r.try_get(1)?,
                collations: r.try_get(2)?,
            })
        })
        .collect::<sqlx::Result<_>>()
        .map_err(|e| classify(name, e))
}

pub(super) async fn sqlite_indexes(
    pool: &sqlx::SqlitePool,
    name: &str,
    table: &TableName,
) -> Result<Vec<IndexInfo>> {
    let err = |e| classify(name, e);
    let list = sqlx::query("SELECT name, \"unique\", partial FROM pragma_index_list(?1)")
        .bind(&table.name)
        .fetch_all(pool)
        .await
        .map_err(err)?;
    let mut out = Vec::new();
    for row in list {
        let index: String = row.try_get(0).map_err(err)?;
        let unique: i64 = row.try_get(1).map_err(err)?;
        let partial: i64 = row.try_get(2).map_err(err)?;
        if partial != 0 {
            continue;
        }
        let cols = sqlx::query(
            "SELECT name, coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno",
        )
        .bind(&index)
        .fetch_all(pool)
        .await
        .map_err(err)?;
        let mut columns = Vec::new();
        let mut collations = Vec::new();
        for c in cols {
            let col: Option<String> = c.try_get(0).map_err(err)?;
            let coll: Option<String> = c.try_get(1).map_err(err)?;
            // An expression column has no name: it serves no plain query.
            columns.push(col.unwrap_or_default());
            collations.push(coll.unwrap_or_default().to_ascii_uppercase());
        }
        out.push(IndexInfo {
            unique: unique != 0,
            columns,
            collations,
        });
    }
    Ok(out)
}

pub(super) async fn mysql_indexes(
    pool: &sqlx::MySqlPool,
    name: &str,
    owner: &Schema,
) -> Result<Vec<IndexInfo>> {
    let err = |e| classify(name, e);
    // The columns' own `_bin` collations (checked by `describe`) give
    // byte order; an index has no collation of its own here.
    let rows = sqlx::query(
        "SELECT CAST(INDEX_NAME AS CHAR), CAST(NON_UNIQUE AS SIGNED), CAST(COLUMN_NAME AS CHAR)
           FROM information_schema.STATISTICS
          WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?
          ORDER BY INDEX_NAME, SEQ_IN_INDEX",
    )
    .bind(owner.table.schema.as_deref())
    .bind(&owner.table.name)
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let mut out: Vec<(String, IndexInfo)> = Vec::new();
    for row in rows {
        let index: String = row.try_get_unchecked(0).map_err(err)?;
        let non_unique: i64 = row.try_get(1).map_err(err)?;
        let column: String = row.try_get_unchecked(2).map_err(err)?;
        match out.last_mut() {
            Some((n, info)) if *n == index => {
                info.columns.push(column);
                info.collations.push("BINARY".to_owned());
            }
            _ => out.push((
                index,
                IndexInfo {
                    unique: non_unique == 0,
                    columns: vec![column],
                    collations: vec!["BINARY".to_owned()],
                },
            )),
        }
    }
    Ok(out.into_iter().map(|(_, i)| i).collect())
}

fn check_indexes(
    table: &str,
    owner: &str,
    member: &str,
    text_member: bool,
    indexes: &[IndexInfo],
) -> Result<()> {
    owner_table::check_unique("a set", table, owner, member, indexes)?;
    // PostgreSQL names the index's collation ("default" for the
    // database's); SQLite says BINARY, NOCASE or RTRIM. Only byte order
    // pages as Redis does.
    let byte_order = |coll: &str| matches!(coll, "C" | "POSIX" | "BINARY");
    let paging = indexes.iter().any(|i| {
        i.columns.len() >= 2
            && i.columns[0] == owner
            && i.columns[1] == member
            && (!text_member || i.collations.get(1).is_some_and(|c| byte_order(c)))
    });
    if !paging {
        let hint = if text_member {
            format!(
                "CREATE INDEX ON {table} ({owner}, {member} COLLATE \"C\") \
                 (SQLite: a BINARY collation)"
            )
        } else {
            format!("CREATE INDEX ON {table} ({owner}, {member})")
        };
        return Err(Error::schema(
            table,
            SchemaPart::Key,
            Some(member),
            format!(
                "a set's pages need an index on ({owner}, {member}) in byte order of the member: {hint}"
            ),
        ));
    }
    Ok(())
}

/// A bind placeholder of a key on PostgreSQL (uuids and cast types cast).
pub(super) fn pg_param(n: usize, key_type: &KeyType) -> String {
    match key_type {
        KeyType::Uuid => format!("${n}::uuid"),
        KeyType::Text(t) => match t.cast {
            Some(cast) => format!("${n}::{cast}"),
            None => format!("${n}"),
        },
        KeyType::Integer { .. } => format!("${n}"),
    }
}

fn pg_statements(owner: &Schema, member: &Schema, text_member: bool) -> Statements {
    use super::schema::quote;
    let t = format!(
        "{}.{}",
        quote(owner.table.schema.as_deref().unwrap_or("public")),
        quote(&owner.table.name)
    );
    let o = quote(&owner.key.name);
    let m = quote(&member.key.name);
    let coll = if text_member { " COLLATE \"C\"" } else { "" };
    let (p1, p2) = (pg_param(1, &owner.key_type), pg_param(2, &member.key_type));
    Statements {
        load: format!("SELECT {m}::text AS larder_member FROM {t} WHERE {o} = {p1} ORDER BY {m}{coll} LIMIT $2"),
        count: format!("SELECT count(*) FROM {t} WHERE {o} = {p1}"),
        contains: format!("SELECT EXISTS (SELECT 1 FROM {t} WHERE {o} = {p1} AND {m} = {p2})"),
        page_start: format!(
            "SELECT {m}::text AS larder_member FROM {t} WHERE {o} = {p1} ORDER BY {m}{coll} LIMIT $2"
        ),
        page_after: format!(
            "SELECT {m}::text AS larder_member FROM {t} WHERE {o} = {p1} AND {m}{coll} > {p2}{coll} \
             ORDER BY {m}{coll} LIMIT $3"
        ),
        add: format!("INSERT INTO {t} ({o}, {m}) VALUES ({p1}, {p2}) ON CONFLICT DO NOTHING"),
        remove: format!("DELETE FROM {t} WHERE {o} = {p1} AND {m} = {p2}"),
        insert_head: format!("INSERT INTO {t} ({o}, {m}) VALUES "),
        insert_tail: " ON CONFLICT DO NOTHING".to_owned(),
        delete_head: format!("DELETE FROM {t} WHERE ({o}, {m}) IN ("),
        present_head: format!(
            "SELECT {m}::text AS larder_member FROM {t} WHERE {o} = {p1} AND {m} IN ("
        ),
    }
}

fn sqlite_statements(owner: &Schema, member: &Schema) -> Statements {
    use super::schema::quote;
    let t = quote(&owner.table.name);
    let o = quote(&owner.key.name);
    let m = quote(&member.key.name);
    Statements {
        load: format!("SELECT CAST({m} AS TEXT) AS larder_member FROM {t} WHERE {o} = ?1 ORDER BY {m} LIMIT ?2"),
        count: format!("SELECT count(*) FROM {t} WHERE {o} = ?1"),
        contains: format!("SELECT EXISTS (SELECT 1 FROM {t} WHERE {o} = ?1 AND {m} = ?2)"),
        page_start: format!(
            "SELECT CAST({m} AS TEXT) AS larder_member FROM {t} WHERE {o} = ?1 ORDER BY {m} LIMIT ?2"
        ),
        page_after: format!(
            "SELECT CAST({m} AS TEXT) AS larder_member FROM {t} WHERE {o} = ?1 AND {m} > ?2 ORDER BY {m} LIMIT ?3"
        ),
        add: format!("INSERT INTO {t} ({o}, {m}) VALUES (?1, ?2) ON CONFLICT DO NOTHING"),
        remove: format!("DELETE FROM {t} WHERE {o} = ?1 AND {m} = ?2"),
        insert_head: format!("INSERT INTO {t} ({o}, {m}) VALUES "),
        insert_tail: " ON CONFLICT DO NOTHING".to_owned(),
        delete_head: format!("DELETE FROM {t} WHERE ({o}, {m}) IN ("),
        present_head: format!(
            "SELECT CAST({m} AS TEXT) AS larder_member FROM {t} WHERE {o} = ? AND {m} IN ("
        ),
    }
}

fn mysql_statements(owner: &Schema, member: &Schema) -> Statements {
    let bq = |n: &str| format!("`{n}`");
    let t = format!(
        "{}.{}",
        bq(owner.table.schema.as_deref().unwrap_or_default()),
        bq(&owner.table.name)
    );
    let o = bq(&owner.key.name);
    let m = bq(&member.key.name);
    Statements {
        load: format!(
            "SELECT CAST({m} AS CHAR) AS larder_member FROM {t} WHERE {o} = ? ORDER BY {m} LIMIT ?"
        ),
        count: format!("SELECT COUNT(*) FROM {t} WHERE {o} = ?"),
        contains: format!("SELECT 1 FROM {t} WHERE {o} = ? AND {m} = ? LIMIT 1"),
        page_start: format!(
            "SELECT CAST({m} AS CHAR) AS larder_member FROM {t} WHERE {o} = ? ORDER BY {m} LIMIT ?"
        ),
        page_after: format!(
            "SELECT CAST({m} AS CHAR) AS larder_member FROM {t} WHERE {o} = ? AND {m} > ? \
             ORDER BY {m} LIMIT ?"
        ),
        add: format!("INSERT INTO {t} ({o}, {m}) VALUES (?, ?) ON DUPLICATE KEY UPDATE {m} = {m}"),
        remove: format!("DELETE FROM {t} WHERE {o} = ? AND {m} = ?"),
        insert_head: format!("INSERT INTO {t} ({o}, {m}) VALUES "),
        insert_tail: format!(" ON DUPLICATE KEY UPDATE {m} = {m}"),
        delete_head: format!("DELETE FROM {t} WHERE ({o}, {m}) IN ("),
        present_head: format!(
            "SELECT CAST({m} AS CHAR) AS larder_member FROM {t} WHERE {o} = ? AND {m} IN ("
        ),
    }
}

/// `contains`, as MariaDB locks it inside an add's transaction.
fn mysql_lock(contains: &str) -> String {
    format!("{contains} FOR UPDATE")
}

impl SqlSetSource {
    /// Installs change triggers on the set's table (PostgreSQL) and
    /// returns their channel: a row inserted, deleted or changed notifies
    /// its owner, an UPDATE that moves a row to another owner notifies
    /// both, a TRUNCATE purges; give the channel to a
    /// [`ChangeListener`](crate::ChangeListener) with the [`SetCache`](crate::SetCache)
    /// as its handler. Idempotent, as
    /// [`SqlSource::install_change_triggers`](crate::SqlSource::install_change_triggers).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] on SQLite and MariaDB (no change notifications);
    /// the database's errors otherwise.
    pub async fn install_change_triggers(&self) -> Result<super::ChangeChannel> {
        self.inner.table.install_change_triggers().await
    }
}

impl SqlSetSource {
    pub(super) fn keys(
        &self,
        owner: &str,
        member: Option<&str>,
    ) -> Result<(KeyValue, Option<KeyValue>)> {
        self.inner.table.keys(owner, member)
    }

    pub(super) fn err(&self, e: sqlx::Error) -> Error {
        self.inner.table.err(e)
    }

    async fn members(
        &self,
        sql: &str,
        o: &KeyValue,
        after: Option<&KeyValue>,
        limit: i64,
    ) -> Result<Vec<String>> {
        match &self.inner.table.backend {
            Backend::Postgres(pool) => {
                let q = bind_key!(sqlx::query_scalar::<_, String>(sql), o);
                let q = match after {
                    Some(a) => bind_key!(q, a),
                    None => q,
                };
                q.bind(limit).fetch_all(pool).await.map_err(|e| self.err(e))
            }
            Backend::Sqlite(pool) => {
                let q = bind_key!(sqlx::query_scalar::<_, String>(sql), o);
                let q = match after {
                    Some(a) => bind_key!(q, a),
                    None => q,
                };
                q.bind(limit).fetch_all(pool).await.map_err(|e| self.err(e))
            }
            Backend::MySql(pool) => {
                let q = bind_key!(sqlx::query(sql), o);
                let q = match after {
                    Some(a) => bind_key!(q, a),
                    None => q,
                };
                let rows = q
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(|e| self.err(e))?;
                // Read unchecked: text under a `_bin` collation comes flagged BINARY.
                rows.iter()
                    .map(|r| r.try_get_unchecked::<String, _>(0))
                    .collect::<sqlx::Result<_>>()
                    .map_err(|e| self.err(e))
            }
        }
    }

    async fn count_of(&self, o: &KeyValue) -> Result<u64> {
        self.inner.table.count(&self.inner.sql.count, o).await
    }

    async fn execute(&self, sql: &str, o: &KeyValue, m: &KeyValue) -> Result<u64> {
        match &self.inner.table.backend {
            Backend::Postgres(pool) => bind_key!(bind_key!(sqlx::query(sql), o), m)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| self.err(e)),
            Backend::Sqlite(pool) => bind_key!(bind_key!(sqlx::query(sql), o), m)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| self.err(e)),
            Backend::MySql(pool) => bind_key!(bind_key!(sqlx::query(sql), o), m)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| self.err(e)),
        }
    }
}

impl SqlSetSource {
    /// MariaDB: lock the row (or its gap), then insert if absent, in one
    /// transaction; whether it was added.
    async fn mysql_add(
        &self,
        pool: &sqlx::MySqlPool,
        o: &KeyValue,
        m: &KeyValue,
    ) -> sqlx::Result<bool> {
        let mut tx = pool.begin().await?;
        let lock = mysql_lock(&self.inner.sql.contains);
        let present = bind_key!(bind_key!(sqlx::query(&lock), o), m)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !present {
            bind_key!(bind_key!(sqlx::query(&self.inner.sql.add), o), m)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(!present)
    }
}

#[async_trait]
impl SetSource for SqlSetSource {
    fn order(&self) -> SetOrder {
        self.inner.order
    }

    fn canonical_owner(&self, raw: &str) -> Result<String> {
        Ok(self.inner.table.owner.canonical(raw)?.text)
    }

    fn canonical_member(&self, raw: &str) -> Result<String> {
        Ok(self.inner.table.member.canonical(raw)?.text)
    }

    async fn load(&self, owner: &str, max: u64) -> Result<SetLoad> {
        let (o, _) = self.keys(owner, None)?;
        let limit = i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX);
        let members = self.members(&self.inner.sql.load, &o, None, limit).await?;
        if members.len() as u64 > max {
            return Ok(SetLoad::TooMany(self.count_of(&o).await?));
        }
        Ok(SetLoad::Members(members))
    }

    async fn contains(&self, owner: &str, member: &str) -> Result<bool> {
        let (o, m) = self.keys(owner, Some(member))?;
        let Some(m) = m else { return Ok(false) };
        let sql = &self.inner.sql.contains;
        match &self.inner.table.backend {
            Backend::Postgres(pool) => bind_key!(bind_key!(sqlx::query_scalar(sql), o), m)
                .fetch_one(pool)
                .await
                .map_err(|e| self.err(e)),
            Backend::Sqlite(pool) => bind_key!(bind_key!(sqlx::query_scalar(sql), o), m)
                .fetch_one(pool)
                .await
                .map_err(|e| self.err(e)),
            Backend::MySql(pool) => bind_key!(bind_key!(sqlx::query(sql), o), m)
                .fetch_optional(pool)
                .await
                .map(|r| r.is_some())
                .map_err(|e| self.err(e)),
        }
    }

    async fn page(&self, owner: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let (o, a) = self.keys(owner, after)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match a {
            None => {
                self.members(&self.inner.sql.page_start, &o, None, limit)
                    .await
            }
            Some(a) => {
                self.members(&self.inner.sql.page_after, &o, Some(&a), limit)
                    .await
            }
        }
    }

    async fn count(&self, owner: &str) -> Result<u64> {
        let (o, _) = self.keys(owner, None)?;
        self.count_of(&o).await
    }

    async fn add(&self, owner: &str, member: &str) -> Result<bool> {
        let (o, m) = self.keys(owner, Some(member))?;
        let Some(m) = m else { return Ok(false) };
        if let Backend::MySql(pool) = &self.inner.table.backend {
            return self.mysql_add(pool, &o, &m).await.map_err(|e| self.err(e));
        }
        Ok(self.execute(&self.inner.sql.add, &o, &m).await? == 1)
    }

    async fn remove(&self, owner: &str, member: &str) -> Result<bool> {
        let (o, m) = self.keys(owner, Some(member))?;
        let Some(m) = m else { return Ok(false) };
        Ok(self.execute(&self.inner.sql.remove, &o, &m).await? > 0)
    }

    async fn present(&self, owner: &str, members: &[&str]) -> Result<Vec<String>> {
        let (o, _) = self.keys(owner, None)?;
        // A member that cannot be one of the column's values is absent.
        let keys: Vec<KeyValue> = members
            .iter()
            .filter_map(|m| self.inner.table.member.canonical(m).ok())
            .collect();
        let mut out = Vec::new();
        for chunk in keys.chunks(1000) {
            let table = &self.inner.table;
            let params: Vec<String> = (0..chunk.len())
                .map(|i| match &table.backend {
                    Backend::Postgres(_) => pg_param(i + 2, &table.member.key_type),
                    _ => "?".to_owned(),
                })
                .collect();
            let sql = format!("{}{})", self.inner.sql.present_head, params.join(", "));
            let found: Vec<String> = match &table.backend {
                Backend::Postgres(pool) => {
                    let mut q = bind_key!(sqlx::query_scalar::<_, String>(&sql), o);
                    for m in chunk {
                        q = bind_key!(q, m);
                    }
                    q.fetch_all(pool).await.map_err(|e| self.err(e))?
                }
                Backend::Sqlite(pool) => {
                    let mut q = bind_key!(sqlx::query_scalar::<_, String>(&sql), o);
                    for m in chunk {
                        q = bind_key!(q, m);
                    }
                    q.fetch_all(pool).await.map_err(|e| self.err(e))?
                }
                Backend::MySql(pool) => {
                    let mut q = bind_key!(sqlx::query(&sql), o);
                    for m in chunk {
                        q = bind_key!(q, m);
                    }
                    let rows = q.fetch_all(pool).await.map_err(|e| self.err(e))?;
                    rows.iter()
                        .map(|r| r.try_get_unchecked::<String, _>(0))
                        .collect::<sqlx::Result<_>>()
                        .map_err(|e| self.err(e))?
                }
            };
            out.extend(found);
        }
        Ok(out)
    }

    async fn prepare_write_back(&self, fence: &str, shards: u16) -> Result<()> {
        self.inner.table.prepare_fence(fence, shards).await
    }

    async fn flush(
        &self,
        batch: crate::collection::BoardBatch<'_>,
    ) -> Result<crate::collection::BoardFlushed> {
        self.flush_set_ops(batch).await
    }
}
