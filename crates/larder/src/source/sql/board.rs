//! SQL source of leaderboards: [`SqlBoardSource`], a table of
//! `(owner, member, score)` rows as one leaderboard per owner, on
//! PostgreSQL, SQLite and MariaDB.
//!
//! Why the checks at build: a board is cached whole and answered from the
//! database when an owner is too big to cache, and both must rank alike.
//! So the table needs
//!
//! - a **unique index on exactly (owner, member)**: one score per member,
//!   and the conflict target of the increment's upsert;
//! - an index whose first column is the owner: the load is one index range;
//! - a member column compared byte for byte (as for sets: text without
//!   case folding or blank padding, an integer or a uuid; on MariaDB a
//!   `_bin` collation);
//! - a `NOT NULL` score column of an integer type (scores within ±2^53,
//!   which a Redis double holds exactly) or double precision (SQLite
//!   `REAL`/`DOUBLE`, MariaDB `DOUBLE`): `NULL + 1` would stay NULL in the
//!   database while Redis counts.
//!
//! Order: score descending, ties in descending byte order of the member's
//! text (PostgreSQL `member::text COLLATE "C" DESC`, MariaDB
//! `CAST(CONVERT(member USING utf8mb4) AS BINARY) DESC`, SQLite
//! `CAST(member AS TEXT) COLLATE BINARY DESC`): Redis' `ZREVRANGE`.
//!
//! Writes: an increment is one upsert that returns the new score
//! (PostgreSQL and SQLite `INSERT … ON CONFLICT (owner, member) DO UPDATE
//! SET score = score + EXCLUDED.score … RETURNING`, guarded on an integer
//! column so the result stays within ±2^53; MariaDB `SELECT … FOR UPDATE`,
//! `INSERT … ON DUPLICATE KEY UPDATE`, then `SELECT`, in one transaction).
//! Other columns of the table are left to their defaults on insert.

use super::collection::IndexInfo;
use super::owner_table::{self, bind_key, Backend, OwnerTable};
use super::schema::{quote, KeyValue, Schema};
use super::{SqlPool, MAX_EXACT_SCORE};
use crate::collection::{BoardLoad, BoardSource, ScoreKind};
use crate::error::{Error, Result, SchemaPart};
use async_trait::async_trait;
use sqlx::Row;
use std::sync::Arc;

/// A leaderboard per owner over a table of `(owner, member, score)` rows;
/// a cheap clone.
///
/// Build with [`SqlBoardSource::builder`]; see the module docs for the
/// checks made at build.
#[derive(Debug, Clone)]
pub struct SqlBoardSource {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) table: OwnerTable,
    pub(super) kind: ScoreKind,
    pub(super) sql: Statements,
}

#[derive(Debug, Default)]
pub(super) struct Statements {
    /// `(member text, score)` in rank order; binds owner, limit.
    load: String,
    /// As `load`; binds owner, limit, offset.
    top: String,
    /// `(score, rows ranked before)`; binds owner, member.
    member: String,
    count: String,
    /// Returns the new score; binds owner, member, delta.
    pub(super) incr: String,
    /// Returns the stored score; binds owner, member, score.
    pub(super) set: String,
    pub(super) remove: String,
    /// MariaDB: the score, locked (`FOR UPDATE`); binds owner, member.
    pub(super) lock: String,
    /// MariaDB: the score; binds owner, member.
    read: String,
    /// How many rows rank before a (member, score); binds owner, member
    /// text, score (MariaDB: owner, score, score, member).
    pub(super) above: String,
}

/// Builds a [`SqlBoardSource`]; consuming, finish with [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct SqlBoardSourceBuilder {
    pool: SqlPool,
    table: String,
    owner: String,
    member: String,
    score: String,
    name: Option<String>,
}

impl SqlBoardSource {
    /// Starts a leaderboard source over `table` (`schema.table` on PostgreSQL).
    pub fn builder(pool: SqlPool, table: &str) -> SqlBoardSourceBuilder {
        SqlBoardSourceBuilder {
            pool,
            table: table.to_owned(),
            owner: "owner".to_owned(),
            member: "member".to_owned(),
            score: "score".to_owned(),
            name: None,
        }
    }
}

impl SqlBoardSourceBuilder {
    /// The column that groups rows into boards. Default: `"owner"`.
    pub fn owner(mut self, column: &str) -> Self {
        column.clone_into(&mut self.owner);
        self
    }

    /// The column whose values are the members. Default: `"member"`.
    pub fn member(mut self, column: &str) -> Self {
        column.clone_into(&mut self.member);
        self
    }

    /// The score column. Default: `"score"`.
    pub fn score(mut self, column: &str) -> Self {
        column.clone_into(&mut self.score);
        self
    }

    /// The board's name in errors. Default: the table name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Reads the table's schema, checks the columns and indexes (see the
    /// module docs) and builds the source. A failed check is
    /// [`Error::Schema`]; an unreachable database [`Error::SourceUnavailable`].
    pub async fn build(self) -> Result<SqlBoardSource> {
        let table = owner_table::parse(
            &self.table,
            &[
                ("owner column", self.owner.as_str()),
                ("member column", self.member.as_str()),
                ("score column", self.score.as_str()),
            ],
        )?;
        if self.owner == self.member || self.score == self.owner || self.score == self.member {
            return Err(Error::schema(
                &self.table,
                SchemaPart::Column,
                Some(&self.score),
                "owner, member and score must be three columns",
            ));
        }
        let described =
            OwnerTable::describe(self.pool, &table, self.name, &self.owner, &self.member).await?;
        described.check_member_bytes(&self.table, &self.member)?;
        let (owner, member, backend) = (&described.owner, &described.member, &described.backend);
        let score_col = member
            .columns
            .iter()
            .find(|c| c.name == self.score)
            .ok_or_else(|| {
                Error::schema(
                    &self.table,
                    SchemaPart::Column,
                    Some(&self.score),
                    format!(
                        "score column `{}` not found in `{}`",
                        self.score, self.table
                    ),
                )
            })?;
        let kind = score_kind(
            backend,
            score_col.int_range().is_some(),
            &score_col.sql_type,
        )
        .ok_or_else(|| {
            Error::schema(
                &self.table,
                SchemaPart::Column,
                Some(&self.score),
                format!(
                    "score column `{}` ({}) must be an integer or double precision column",
                    self.score, score_col.sql_type
                ),
            )
        })?;
        if !score_col.not_null {
            return Err(Error::schema(
                &self.table,
                SchemaPart::Column,
                Some(&self.score),
                format!(
                    "score column `{}` must be NOT NULL (NULL + 1 stays NULL in the database \
                     while Redis counts)",
                    self.score
                ),
            ));
        }
        let indexes = described.indexes(&table).await?;
        check_indexes(&self.table, &self.owner, &self.member, &indexes)?;
        let names = Names {
            o: self.owner.clone(),
            m: self.member.clone(),
            p: self.score.clone(),
        };
        let sql = match backend {
            Backend::Postgres(_) => pg_statements(owner, member, &names, kind),
            Backend::Sqlite(_) => sqlite_statements(owner, &names, kind),
            Backend::MySql(_) => mysql_statements(owner, &names, kind),
        };
        Ok(SqlBoardSource {
            inner: Arc::new(Inner {
                table: described,
                kind,
                sql,
            }),
        })
    }
}

/// Integer columns (any with an integer range) or 8-byte floats.
fn score_kind(backend: &Backend, integer: bool, sql_type: &str) -> Option<ScoreKind> {
    if integer {
        return Some(ScoreKind::Integer);
    }
    let t = sql_type.trim().to_ascii_lowercase();
    let double = match backend {
        Backend::Postgres(_) => t == "double precision",
        // Every SQLite REAL is an 8-byte IEEE double.
        Backend::Sqlite(_) => {
            matches!(t.as_str(), "real" | "double" | "double precision" | "float")
        }
        // MariaDB's FLOAT is 4 bytes; REAL is DOUBLE unless REAL_AS_FLOAT.
        Backend::MySql(_) => t == "double" || t.starts_with("double("),
    };
    double.then_some(ScoreKind::Float)
}

fn check_indexes(table: &str, owner: &str, member: &str, indexes: &[IndexInfo]) -> Result<()> {
    owner_table::check_unique("a leaderboard", table, owner, member, indexes)?;
    if !indexes
        .iter()
        .any(|i| i.columns.first().is_some_and(|c| c == owner))
    {
        return Err(Error::schema(
            table,
            SchemaPart::Key,
            Some(owner),
            format!(
                "a leaderboard's load needs an index that starts with `{owner}`: \
                 CREATE UNIQUE INDEX ON {table} ({owner}, {member})"
            ),
        ));
    }
    Ok(())
}

/// The three column names (validated identifiers).
struct Names {
    o: String,
    m: String,
    p: String,
}

fn pg_statements(owner: &Schema, member: &Schema, n: &Names, kind: ScoreKind) -> Statements {
    let t = format!(
        "{}.{}",
        quote(owner.table.schema.as_deref().unwrap_or("public")),
        quote(&owner.table.name)
    );
    let (o, m, p) = (quote(&n.o), quote(&n.m), quote(&n.p));
    let p1 = super::collection::pg_param(1, &owner.key_type);
    let p2 = super::collection::pg_param(2, &member.key_type);
    let (cast, guard) = match kind {
        ScoreKind::Integer => (
            "int8",
            format!(
                " WHERE cur.{p} + EXCLUDED.{p} BETWEEN -{MAX_EXACT_SCORE} AND {MAX_EXACT_SCORE}"
            ),
        ),
        ScoreKind::Float => ("float8", String::new()),
    };
    let order = format!("ORDER BY {p} DESC, {m}::text COLLATE \"C\" DESC");
    let cols = format!("SELECT {m}::text, {p}::{cast} FROM {t} WHERE {o} = {p1}");
    Statements {
        load: format!("{cols} {order} LIMIT $2"),
        top: format!("{cols} {order} LIMIT $2 OFFSET $3"),
        member: format!(
            "SELECT x.{p}::{cast}, (SELECT count(*) FROM {t} y WHERE y.{o} = x.{o} AND (y.{p} > x.{p} \
             OR (y.{p} = x.{p} AND y.{m}::text COLLATE \"C\" > x.{m}::text COLLATE \"C\"))) \
             FROM {t} x WHERE x.{o} = {p1} AND x.{m} = {p2}"
        ),
        count: format!("SELECT count(*) FROM {t} WHERE {o} = {p1}"),
        incr: format!(
            "INSERT INTO {t} AS cur ({o}, {m}, {p}) VALUES ({p1}, {p2}, $3::{cast}) \
             ON CONFLICT ({o}, {m}) DO UPDATE SET {p} = cur.{p} + EXCLUDED.{p}{guard} \
             RETURNING cur.{p}::{cast}"
        ),
        set: format!(
            "INSERT INTO {t} AS cur ({o}, {m}, {p}) VALUES ({p1}, {p2}, $3::{cast}) \
             ON CONFLICT ({o}, {m}) DO UPDATE SET {p} = EXCLUDED.{p} RETURNING cur.{p}::{cast}"
        ),
        remove: format!("DELETE FROM {t} WHERE {o} = {p1} AND {m} = {p2}"),
        lock: String::new(),
        read: String::new(),
        above: format!(
            "SELECT count(*) FROM {t} y WHERE y.{o} = {p1} AND (y.{p} > $3::{cast} \
             OR (y.{p} = $3::{cast} AND y.{m}::text COLLATE \"C\" > $2::text COLLATE \"C\"))"
        ),
    }
}

fn sqlite_statements(owner: &Schema, n: &Names, kind: ScoreKind) -> Statements {
    let bare = quote(&owner.table.name);
    let (o, m, p) = (quote(&n.o), quote(&n.m), quote(&n.p));
    let (score, guard) = match kind {
        ScoreKind::Integer => (
            p.clone(),
            format!(
                " WHERE {bare}.{p} + excluded.{p} BETWEEN -{MAX_EXACT_SCORE} AND {MAX_EXACT_SCORE}"
            ),
        ),
        ScoreKind::Float => (format!("CAST({p} AS REAL)"), String::new()),
    };
    let order = format!("ORDER BY {p} DESC, CAST({m} AS TEXT) COLLATE BINARY DESC");
    let cols = format!("SELECT CAST({m} AS TEXT), {score} FROM {bare} WHERE {o} = ?1");
    Statements {
        load: format!("{cols} {order} LIMIT ?2"),
        top: format!("{cols} {order} LIMIT ?2 OFFSET ?3"),
        member: format!(
            "SELECT {}, (SELECT count(*) FROM {bare} y WHERE y.{o} = x.{o} AND (y.{p} > x.{p} \
             OR (y.{p} = x.{p} AND CAST(y.{m} AS TEXT) COLLATE BINARY > CAST(x.{m} AS TEXT) COLLATE BINARY))) \
             FROM {bare} x WHERE x.{o} = ?1 AND x.{m} = ?2",
            match kind {
                ScoreKind::Integer => format!("x.{p}"),
                ScoreKind::Float => format!("CAST(x.{p} AS REAL)"),
            }
        ),
        count: format!("SELECT count(*) FROM {bare} WHERE {o} = ?1"),
        incr: format!(
            "INSERT INTO {bare} ({o}, {m}, {p}) VALUES (?1, ?2, ?3) \
             ON CONFLICT ({o}, {m}) DO UPDATE SET {p} = {bare}.{p} + excluded.{p}{guard} \
             RETURNING {score}"
        ),
        set: format!(
            "INSERT INTO {bare} ({o}, {m}, {p}) VALUES (?1, ?2, ?3) \
             ON CONFLICT ({o}, {m}) DO UPDATE SET {p} = excluded.{p} RETURNING {score}"
        ),
        remove: format!("DELETE FROM {bare} WHERE {o} = ?1 AND {m} = ?2"),
        lock: String::new(),
        read: String::new(),
        above: format!(
            "SELECT count(*) FROM {bare} y WHERE y.{o} = ?1 AND (y.{p} > ?3 OR (y.{p} = ?3 \
             AND CAST(y.{m} AS TEXT) COLLATE BINARY > CAST(?2 AS TEXT) COLLATE BINARY))"
        ),
    }
}

fn mysql_statements(owner: &Schema, n: &Names, kind: ScoreKind) -> Statements {
    let bq = |n: &str| format!("`{n}`");
    let t = format!(
        "{}.{}",
        bq(owner.table.schema.as_deref().unwrap_or_default()),
        bq(&owner.table.name)
    );
    let (o, m, p) = (bq(&n.o), bq(&n.m), bq(&n.p));
    let score = |col: &str| match kind {
        ScoreKind::Integer => format!("CAST({col} AS SIGNED)"),
        ScoreKind::Float => col.to_owned(),
    };
    let bin = |col: &str| format!("CAST(CONVERT({col} USING utf8mb4) AS BINARY)");
    let order = format!("ORDER BY {p} DESC, {} DESC", bin(&m));
    let cols = format!(
        "SELECT CAST({m} AS CHAR), {} FROM {t} WHERE {o} = ?",
        score(&p)
    );
    Statements {
        load: format!("{cols} {order} LIMIT ?"),
        top: format!("{cols} {order} LIMIT ? OFFSET ?"),
        member: format!(
            "SELECT {}, (SELECT COUNT(*) FROM {t} y WHERE y.{o} = x.{o} AND (y.{p} > x.{p} \
             OR (y.{p} = x.{p} AND {} > {}))) FROM {t} x WHERE x.{o} = ? AND x.{m} = ?",
            score(&format!("x.{p}")),
            bin(&format!("y.{m}")),
            bin(&format!("x.{m}")),
        ),
        count: format!("SELECT COUNT(*) FROM {t} WHERE {o} = ?"),
        incr: format!(
            "INSERT INTO {t} ({o}, {m}, {p}) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE {p} = {p} + VALUES({p})"
        ),
        set: format!(
            "INSERT INTO {t} ({o}, {m}, {p}) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE {p} = VALUES({p})"
        ),
        remove: format!("DELETE FROM {t} WHERE {o} = ? AND {m} = ?"),
        lock: format!(
            "SELECT {} FROM {t} WHERE {o} = ? AND {m} = ? FOR UPDATE",
            score(&p)
        ),
        read: format!("SELECT {} FROM {t} WHERE {o} = ? AND {m} = ?", score(&p)),
        above: format!(
            "SELECT COUNT(*) FROM {t} y WHERE y.{o} = ? AND (y.{p} > ? OR (y.{p} = ? AND {} > \
             CAST(CONVERT(? USING utf8mb4) AS BINARY)))",
            bin(&format!("y.{m}"))
        ),
    }
}

/// Binds a score: an `i64` on an integer column (checked whole and within
/// ±2^53 by the caller), else an `f64`.
macro_rules! bind_score {
    ($q:expr, $kind:expr, $v:expr) => {
        match $kind {
            ScoreKind::Integer => $q.bind($v as i64),
            ScoreKind::Float => $q.bind($v),
        }
    };
}
pub(super) use bind_score;

/// Reads column `i` of a row as a score of `kind`: `None` for an integer
/// beyond ±2^53.
pub(super) fn score_at<R: Row>(row: &R, i: usize, kind: ScoreKind) -> sqlx::Result<Option<f64>>
where
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    f64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
{
    Ok(match kind {
        ScoreKind::Integer => {
            let n: i64 = row.try_get_unchecked(i)?;
            (-MAX_EXACT_SCORE..=MAX_EXACT_SCORE)
                .contains(&n)
                .then_some(n as f64)
        }
        ScoreKind::Float => Some(row.try_get_unchecked::<f64, _>(i)?),
    })
}

fn text_at<R: Row>(row: &R, i: usize) -> sqlx::Result<String>
where
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
{
    // Unchecked: MariaDB flags text under a `_bin` collation as BINARY.
    row.try_get_unchecked(i)
}

impl SqlBoardSource {
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

    pub(super) fn beyond(&self, member: &str) -> Error {
        Error::InvalidRow {
            entity: self.inner.table.name.clone(),
            id: member.chars().take(80).collect(),
            reason: format!(
                "the score would leave ±2^53 ({MAX_EXACT_SCORE}), which a Redis score cannot \
                 hold exactly; nothing was written"
            ),
        }
    }

    /// `(member, score)` rows of `sql`, bound to owner, limit and maybe
    /// offset. `None` if an integer score is beyond ±2^53.
    async fn ranked(
        &self,
        sql: &str,
        o: &KeyValue,
        limit: i64,
        offset: Option<i64>,
    ) -> Result<Option<Vec<(String, f64)>>> {
        let kind = self.inner.kind;
        macro_rules! run {
            ($pool:expr) => {{
                let q = bind_key!(sqlx::query(sql), o).bind(limit);
                let q = match offset {
                    Some(off) => q.bind(off),
                    None => q,
                };
                let rows = q.fetch_all($pool).await.map_err(|e| self.err(e))?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let member = text_at(r, 0).map_err(|e| self.err(e))?;
                    match score_at(r, 1, kind).map_err(|e| self.err(e))? {
                        Some(s) => out.push((member, s)),
                        None => return Ok(None),
                    }
                }
                Ok(Some(out))
            }};
        }
        match &self.inner.table.backend {
            Backend::Postgres(pool) => run!(pool),
            Backend::Sqlite(pool) => run!(pool),
            Backend::MySql(pool) => run!(pool),
        }
    }

    async fn count_of(&self, o: &KeyValue) -> Result<u64> {
        self.inner.table.count(&self.inner.sql.count, o).await
    }

    /// PostgreSQL and SQLite: one upsert returning the score (no row: the
    /// guard refused an integer result beyond ±2^53).
    async fn upsert(&self, sql: &str, o: &KeyValue, m: &KeyValue, v: f64) -> Result<f64> {
        let kind = self.inner.kind;
        macro_rules! run {
            ($pool:expr) => {{
                let q = bind_key!(bind_key!(sqlx::query(sql), o), m);
                let row = bind_score!(q, kind, v)
                    .fetch_optional($pool)
                    .await
                    .map_err(|e| self.err(e))?;
                match row {
                    Some(r) => score_at(&r, 0, kind).map_err(|e| self.err(e))?,
                    None => None,
                }
            }};
        }
        let score = match &self.inner.table.backend {
            Backend::Postgres(pool) => run!(pool),
            Backend::Sqlite(pool) => run!(pool),
            Backend::MySql(pool) => return self.mysql_upsert(pool, sql, o, m, v).await,
        };
        score.ok_or_else(|| self.beyond(&m.text))
    }

    /// MariaDB: lock the row, check an integer result's range, upsert,
    /// read the score back: one transaction.
    async fn mysql_upsert(
        &self,
        pool: &sqlx::MySqlPool,
        sql: &str,
        o: &KeyValue,
        m: &KeyValue,
        v: f64,
    ) -> Result<f64> {
        let kind = self.inner.kind;
        let incr = sql == self.inner.sql.incr;
        let err = |e| self.err(e);
        let mut tx = pool.begin().await.map_err(err)?;
        let current = bind_key!(bind_key!(sqlx::query(&self.inner.sql.lock), o), m)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        if incr && kind == ScoreKind::Integer {
            let now: i64 = match &current {
                Some(r) => r.try_get_unchecked(0).map_err(err)?,
                None => 0,
            };
            let next = now.checked_add(v as i64);
            if !next.is_some_and(|n| (-MAX_EXACT_SCORE..=MAX_EXACT_SCORE).contains(&n)) {
                return Err(self.beyond(&m.text));
            }
        }
        let q = bind_key!(bind_key!(sqlx::query(sql), o), m);
        bind_score!(q, kind, v)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let row = bind_key!(bind_key!(sqlx::query(&self.inner.sql.read), o), m)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        let score = score_at(&row, 0, kind).map_err(err)?;
        tx.commit().await.map_err(err)?;
        score.ok_or_else(|| self.beyond(&m.text))
    }
}

impl SqlBoardSource {
    /// Installs change triggers on the board's table (PostgreSQL) and
    /// returns their channel: a row inserted, deleted or changed notifies
    /// its owner, an UPDATE that moves a row to another owner notifies
    /// both, a TRUNCATE purges; give the channel to a
    /// [`ChangeListener`](crate::ChangeListener) with the
    /// [`Leaderboard`](crate::Leaderboard) as its handler. Idempotent, as
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

#[async_trait]
impl BoardSource for SqlBoardSource {
    fn score_kind(&self) -> ScoreKind {
        self.inner.kind
    }

    fn canonical_owner(&self, raw: &str) -> Result<String> {
        Ok(self.inner.table.owner.canonical(raw)?.text)
    }

    fn canonical_member(&self, raw: &str) -> Result<String> {
        Ok(self.inner.table.member.canonical(raw)?.text)
    }

    async fn load(&self, owner: &str, max: u64) -> Result<BoardLoad> {
        let (o, _) = self.keys(owner, None)?;
        let limit = i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX);
        match self.ranked(&self.inner.sql.load, &o, limit, None).await? {
            Some(members) if members.len() as u64 <= max => Ok(BoardLoad::Members(members)),
            _ => Ok(BoardLoad::TooMany(self.count_of(&o).await?)),
        }
    }

    async fn top(&self, owner: &str, offset: u64, limit: u64) -> Result<Vec<(String, f64)>> {
        let (o, _) = self.keys(owner, None)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        // An integer beyond ±2^53 (written by plain SQL) is answered
        // rounded to the nearest double rather than refused.
        let kind = self.inner.kind;
        if kind == ScoreKind::Integer {
            if let Some(rows) = self
                .ranked(&self.inner.sql.top, &o, limit, Some(offset))
                .await?
            {
                return Ok(rows);
            }
            return self.top_rounded(&o, limit, offset).await;
        }
        Ok(self
            .ranked(&self.inner.sql.top, &o, limit, Some(offset))
            .await?
            .unwrap_or_default())
    }

    async fn member(&self, owner: &str, member: &str) -> Result<Option<(f64, u64)>> {
        let (o, m) = self.keys(owner, Some(member))?;
        let Some(m) = m else { return Ok(None) };
        let kind = self.inner.kind;
        let sql = &self.inner.sql.member;
        macro_rules! run {
            ($pool:expr) => {{
                let row = bind_key!(bind_key!(sqlx::query(sql), o), m)
                    .fetch_optional($pool)
                    .await
                    .map_err(|e| self.err(e))?;
                match row {
                    None => None,
                    Some(r) => {
                        let score = match score_at(&r, 0, kind).map_err(|e| self.err(e))? {
                            Some(s) => s,
                            None => {
                                r.try_get_unchecked::<i64, _>(0).map_err(|e| self.err(e))? as f64
                            }
                        };
                        let before: i64 = r.try_get_unchecked(1).map_err(|e| self.err(e))?;
                        Some((score, u64::try_from(before).unwrap_or(0)))
                    }
                }
            }};
        }
        Ok(match &self.inner.table.backend {
            Backend::Postgres(pool) => run!(pool),
            Backend::Sqlite(pool) => run!(pool),
            Backend::MySql(pool) => run!(pool),
        })
    }

    async fn count(&self, owner: &str) -> Result<u64> {
        let (o, _) = self.keys(owner, None)?;
        self.count_of(&o).await
    }

    async fn incr(&self, owner: &str, member: &str, by: f64) -> Result<f64> {
        let (o, m) = self.keys(owner, Some(member))?;
        let Some(m) = m else {
            return Err(Error::invalid_id(member, "no member"));
        };
        self.upsert(&self.inner.sql.incr, &o, &m, by).await
    }

    async fn set_score(&self, owner: &str, member: &str, score: f64) -> Result<f64> {
        let (o, m) = self.keys(owner, Some(member))?;
        let Some(m) = m else {
            return Err(Error::invalid_id(member, "no member"));
        };
        self.upsert(&self.inner.sql.set, &o, &m, score).await
    }

    async fn above(&self, owner: &str, member: &str, score: f64) -> Result<u64> {
        SqlBoardSource::above(self, owner, member, score).await
    }

    async fn prepare_write_back(&self, fence: &str, shards: u16) -> Result<()> {
        self.prepare_board_fence(fence, shards).await
    }

    async fn flush(
        &self,
        batch: crate::collection::BoardBatch<'_>,
    ) -> Result<crate::collection::BoardFlushed> {
        self.flush_board_ops(batch).await
    }

    async fn remove(&self, owner: &str, member: &str) -> Result<bool> {
        let (o, m) = self.keys(owner, Some(member))?;
        let Some(m) = m else { return Ok(false) };
        let sql = &self.inner.sql.remove;
        let n = match &self.inner.table.backend {
            Backend::Postgres(pool) => bind_key!(bind_key!(sqlx::query(sql), o), m)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Backend::Sqlite(pool) => bind_key!(bind_key!(sqlx::query(sql), o), m)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Backend::MySql(pool) => bind_key!(bind_key!(sqlx::query(sql), o), m)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }
}

impl SqlBoardSource {
    /// A page of an integer board holding a score beyond ±2^53: the
    /// scores rounded to doubles.
    async fn top_rounded(
        &self,
        o: &KeyValue,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<(String, f64)>> {
        let sql = &self.inner.sql.top;
        macro_rules! run {
            ($pool:expr) => {{
                let rows = bind_key!(sqlx::query(sql), o)
                    .bind(limit)
                    .bind(offset)
                    .fetch_all($pool)
                    .await
                    .map_err(|e| self.err(e))?;
                rows.iter()
                    .map(|r| Ok((text_at(r, 0)?, r.try_get_unchecked::<i64, _>(1)? as f64)))
                    .collect::<sqlx::Result<Vec<_>>>()
                    .map_err(|e| self.err(e))
            }};
        }
        match &self.inner.table.backend {
            Backend::Postgres(pool) => run!(pool),
            Backend::Sqlite(pool) => run!(pool),
            Backend::MySql(pool) => run!(pool),
        }
    }
}
