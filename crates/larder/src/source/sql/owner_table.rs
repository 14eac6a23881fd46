//! What the SQL sources of sets and leaderboards share: a table of rows
//! grouped by an owner column, one row per (owner, member), described and
//! checked at build, then queried on one of three backends.
//!
//! Why one piece: a set and a leaderboard make the same demands of their
//! table (valid column names, a member column compared byte for byte, a
//! unique index on exactly (owner, member)) and read it the same way
//! (canonical ids, counts, change triggers); written once, the two
//! sources cannot disagree on what a valid table is.

use super::collection::IndexInfo;
use super::schema::{Fold, KeyType, KeyValue, Schema, TableName};
use super::{classify, mysql, postgres, sqlite, SqlPool};
use crate::error::{Error, Result, SchemaPart};

/// Binds a key value: its integer or its canonical text.
macro_rules! bind_key {
    ($q:expr, $k:expr) => {
        match $k.int {
            Some(n) => $q.bind(n),
            None => $q.bind($k.text.clone()),
        }
    };
}
pub(super) use bind_key;

/// The pool of the table's database.
#[derive(Debug)]
pub(super) enum Backend {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
    MySql(sqlx::MySqlPool),
}

/// An owner-grouped table, described: its name in errors, the owner and
/// member columns' schemas, and its pool.
#[derive(Debug)]
pub(super) struct OwnerTable {
    /// The collection's name in errors.
    pub(super) name: String,
    /// The owner column (and the table's columns).
    pub(super) owner: Schema,
    /// The member column.
    pub(super) member: Schema,
    /// The database.
    pub(super) backend: Backend,
}

/// The table named `table` (as configured), its column names checked:
/// `columns` pairs what each column is (`"owner column"`) with its name.
pub(super) fn parse(table: &str, columns: &[(&str, &str)]) -> Result<TableName> {
    let parsed = TableName::parse(table)
        .map_err(|e| Error::schema(table, SchemaPart::Table, None, e.to_string()))?;
    for &(what, c) in columns {
        super::schema::ident(what, c)
            .map_err(|e| Error::schema(table, SchemaPart::Column, Some(c), e.to_string()))?;
    }
    Ok(parsed)
}

impl OwnerTable {
    /// Describes the `owner` and `member` columns of `table` on the pool's
    /// database; `name` (default: the table's) names the collection.
    pub(super) async fn describe(
        pool: SqlPool,
        table: &TableName,
        name: Option<String>,
        owner: &str,
        member: &str,
    ) -> Result<OwnerTable> {
        let name = name.unwrap_or_else(|| table.name.clone());
        let (owner, member, backend) = match pool {
            SqlPool::Postgres(pool) => {
                let o = postgres::describe(&pool, &name, table, owner).await?;
                let m = postgres::describe(&pool, &name, table, member).await?;
                (
                    Schema::new(name.clone(), o, owner, None)?,
                    Schema::new(name.clone(), m, member, None)?,
                    Backend::Postgres(pool),
                )
            }
            SqlPool::Sqlite(pool) => {
                let o = sqlite::describe(&pool, &name, table, owner).await?;
                let m = sqlite::describe(&pool, &name, table, member).await?;
                (
                    Schema::new(name.clone(), o, owner, None)?,
                    Schema::new(name.clone(), m, member, None)?,
                    Backend::Sqlite(pool),
                )
            }
            SqlPool::MySql(pool) => {
                let (o, _) = mysql::describe(&pool, &name, table, owner, None).await?;
                let (m, _) = mysql::describe(&pool, &name, table, member, None).await?;
                (
                    Schema::new(name.clone(), o, owner, None)?,
                    Schema::new(name.clone(), m, member, None)?,
                    Backend::MySql(pool),
                )
            }
        };
        Ok(OwnerTable {
            name,
            owner,
            member,
            backend,
        })
    }

    /// Refuses a member column that does not compare byte for byte
    /// (case-insensitive or blank-padded text): Redis tells its members
    /// apart by their bytes. `table` and `column` as configured, for the
    /// error.
    pub(super) fn check_member_bytes(&self, table: &str, column: &str) -> Result<()> {
        match &self.member.key_type {
            KeyType::Integer { .. } | KeyType::Uuid => Ok(()),
            KeyType::Text(t) if t.fold == Fold::None && !t.trim_trailing_blanks => Ok(()),
            _ => Err(Error::schema(
                table,
                SchemaPart::Column,
                Some(column),
                format!(
                    "member column `{column}` ({}) does not compare byte for byte \
                     (case-insensitive or blank-padded); use text, an integer or a uuid",
                    self.member.key.sql_type
                ),
            )),
        }
    }

    /// The table's indexes.
    pub(super) async fn indexes(&self, table: &TableName) -> Result<Vec<IndexInfo>> {
        use super::collection::{mysql_indexes, pg_indexes, sqlite_indexes};
        match &self.backend {
            Backend::Postgres(pool) => pg_indexes(pool, &self.name, &self.owner).await,
            Backend::Sqlite(pool) => sqlite_indexes(pool, &self.name, table).await,
            Backend::MySql(pool) => mysql_indexes(pool, &self.name, &self.owner).await,
        }
    }

    /// The owner's canonical key, and the member's if given.
    pub(super) fn keys(
        &self,
        owner: &str,
        member: Option<&str>,
    ) -> Result<(KeyValue, Option<KeyValue>)> {
        let o = self.owner.canonical(owner)?;
        let m = member.map(|m| self.member.canonical(m)).transpose()?;
        Ok((o, m))
    }

    /// A database error, classified for this collection.
    pub(super) fn err(&self, e: sqlx::Error) -> Error {
        classify(&self.name, e)
    }

    /// The number of the owner's rows: `sql` binds the owner.
    pub(super) async fn count(&self, sql: &str, o: &KeyValue) -> Result<u64> {
        let n: i64 = match &self.backend {
            Backend::Postgres(pool) => bind_key!(sqlx::query_scalar(sql), o)
                .fetch_one(pool)
                .await
                .map_err(|e| self.err(e))?,
            Backend::Sqlite(pool) => bind_key!(sqlx::query_scalar(sql), o)
                .fetch_one(pool)
                .await
                .map_err(|e| self.err(e))?,
            Backend::MySql(pool) => bind_key!(sqlx::query_scalar(sql), o)
                .fetch_one(pool)
                .await
                .map_err(|e| self.err(e))?,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Installs the owner's change triggers (PostgreSQL) and returns their
    /// channel; [`Error::Config`] on SQLite and MariaDB.
    pub(super) async fn install_change_triggers(&self) -> Result<super::ChangeChannel> {
        let name = &self.name;
        let pool = match &self.backend {
            Backend::Postgres(pool) => pool.clone(),
            Backend::Sqlite(_) => return Err(super::cdc::no_notifications_sqlite(name)),
            Backend::MySql(_) => return Err(super::cdc::no_notifications_mysql(name)),
        };
        super::cdc::install_owner_triggers(pool, name, &self.owner).await
    }
}

/// Refuses a table without a unique index on exactly (owner, member):
/// one row per member. `what` names the kind (`"a set"`).
pub(super) fn check_unique(
    what: &str,
    table: &str,
    owner: &str,
    member: &str,
    indexes: &[IndexInfo],
) -> Result<()> {
    let unique = indexes.iter().any(|i| {
        i.unique
            && i.columns.len() == 2
            && i.columns.iter().any(|c| c == owner)
            && i.columns.iter().any(|c| c == member)
    });
    if !unique {
        return Err(Error::schema(
            table,
            SchemaPart::Key,
            Some(member),
            format!("{what} needs a unique index on exactly ({owner}, {member}) of `{table}`"),
        ));
    }
    Ok(())
}
