//! The executor: the statements every backend runs the same way, written
//! once, generic over sqlx's [`Database`]. A dialect (postgres.rs,
//! sqlite.rs, mysql.rs) keeps its SQL text and what truly differs (how a
//! list of ids is bound, how an upsert returns its rows, how a patch
//! reads back); binding a key, reading `(id, json)` pairs, loading one
//! row, a page, and deleting go through here.

use super::schema::KeyValue;
use sqlx::database::Database;
use sqlx::query::Query;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

/// A statement with its arguments, as sqlx builds it for `DB`.
pub(super) type Statement<'q, DB> = Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// Binds a key: an integer key as `i64`, any other as its canonical text.
pub(super) fn bind_key<'q, DB>(q: Statement<'q, DB>, id: &KeyValue) -> Statement<'q, DB>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
{
    match id.int {
        Some(n) => q.bind(n),
        None => q.bind(id.text.clone()),
    }
}

/// The id and the JSON of a row: columns 0 and 1 of every load statement.
/// Read unchecked: MariaDB flags text under a `_bin` collation as BINARY,
/// which sqlx would refuse as `String`; PostgreSQL and SQLite answer text.
pub(super) fn pair<DB>(row: &DB::Row) -> sqlx::Result<(String, String)>
where
    DB: Database,
    usize: ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB>,
{
    Ok((row.try_get_unchecked(0)?, row.try_get_unchecked(1)?))
}

/// Runs `sql` (a load of one row by its key, `$1`/`?`) on `executor`: the
/// row's JSON, or `None`.
pub(super) async fn load_one<'q, 'c, DB, E>(
    executor: E,
    sql: &'q str,
    id: &KeyValue,
) -> sqlx::Result<Option<String>>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB>,
{
    match bind_key(sqlx::query(sql), id)
        .fetch_optional(executor)
        .await?
    {
        Some(row) => Ok(Some(pair::<DB>(&row)?.1)),
        None => Ok(None),
    }
}

/// One page of rows in key order: `start` (`LIMIT` only) for the first,
/// `after` (key greater than, then `LIMIT`) for the next ones.
pub(super) async fn load_page<'q, 'c, DB, E>(
    executor: E,
    (start, after_sql): (&'q str, &'q str),
    after: Option<&KeyValue>,
    limit: i64,
) -> sqlx::Result<Vec<(String, String)>>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB>,
{
    let q = match after {
        None => sqlx::query(start),
        Some(k) => bind_key(sqlx::query(after_sql), k),
    };
    q.bind(limit)
        .fetch_all(executor)
        .await?
        .iter()
        .map(pair::<DB>)
        .collect()
}

/// Runs `sql` (a delete by key) on `executor`; whether a row went.
pub(super) async fn delete<'q, 'c, DB, E>(
    executor: E,
    sql: &'q str,
    id: &KeyValue,
) -> sqlx::Result<bool>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: RowsAffected,
{
    let done = bind_key(sqlx::query(sql), id).execute(executor).await?;
    Ok(done.rows_affected() > 0)
}

/// How many rows a statement changed: each driver's result says so, sqlx
/// has no trait for it.
pub(super) trait RowsAffected {
    /// The rows the statement changed.
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::postgres::PgQueryResult::rows_affected(self)
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::sqlite::SqliteQueryResult::rows_affected(self)
    }
}

impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::mysql::MySqlQueryResult::rows_affected(self)
    }
}
