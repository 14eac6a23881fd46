//! MariaDB (`mysql://`): reading the schema from `information_schema`, and
//! the SQL of a source.
//!
//! Supported servers: MariaDB 10.6 and later. Writes need `INSERT …
//! RETURNING` (MariaDB 10.5) and rows travel as one JSON parameter read
//! with `JSON_TABLE` (MariaDB 10.6); MySQL has no `RETURNING` at all, so
//! [`check_server`] refuses it when the pool connects.
//!
//! Rows become JSON with `JSON_OBJECT`, normalised per type so that they
//! look as they do from PostgreSQL: `tinyint(1)` is a boolean, DATETIME and
//! TIMESTAMP are ISO 8601 (`2024-01-02T03:04:05`, in UTC for TIMESTAMP: the
//! pool's sessions run with `time_zone = '+00:00'`), JSON columns (MariaDB
//! stores them as `longtext` with a `json_valid` check) are JSON. Binary
//! columns cannot be carried by a JSON row and are refused at build.
//!
//! Writes read each value out of the JSON parameter as text and let the
//! server convert it to the column's type (the pool's sessions are strict,
//! so a value that does not fit is an error, never a silent truncation);
//! booleans become 1/0, and date-times given with an offset (`Z`,
//! `+02:00`) are converted to UTC. An upsert is `INSERT … SELECT … ON
//! DUPLICATE KEY UPDATE … RETURNING`; a patch, which MariaDB cannot answer
//! with `UPDATE … RETURNING`, is an `UPDATE` then a `SELECT` in one
//! transaction.
//!
//! Text keys: MariaDB's default collations (`utf8mb4_general_ci`) compare
//! case-, accent- and trailing-space-insensitively, so ids the database
//! calls equal could not share one cache entry. A text key needs a binary
//! (`_bin`) collation; `PAD SPACE` binary collations (`utf8mb4_bin`) ignore
//! trailing blanks, and their ids are canonicalised without them.

use super::classify;
use super::exec;
use super::schema::{
    canonical_key, KeyType, KeyValue, Kind, Limits, RawColumn, RawRelation, Schema, TableName,
    TextKey,
};
use crate::error::{Error, Result, SchemaPart};
use serde_json::Value;
use sqlx::{MySqlConnection, MySqlPool, Row};

/// The oldest MariaDB supported (major, minor): `JSON_TABLE` came in 10.6.
const MIN_MARIADB: (u32, u32) = (10, 6);

/// The most ids bound in one `IN (…)` list of a multi-get.
const IDS_PER_QUERY: usize = 5_000;

/// Refuses servers larder cannot write to: MySQL (no `RETURNING`) and
/// MariaDB before 10.6 (no `JSON_TABLE`), with [`Error::Config`].
pub(super) async fn check_server(pool: &MySqlPool, label: &str) -> Result<()> {
    let version: String = sqlx::query("SELECT CAST(VERSION() AS CHAR)")
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get_unchecked(0))
        .map_err(|e| classify(label, e))?;
    match refusal(&version) {
        Some(why) => Err(Error::Config(format!("{label}: {why}"))),
        None => Ok(()),
    }
}

/// Why a server of `version` (as `VERSION()` says it) is refused, if it is.
fn refusal(version: &str) -> Option<String> {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if !version.contains("MariaDB") {
        return Some(format!(
            "MySQL {version} is not supported: larder needs MariaDB {}.{} or later (MySQL has no INSERT … RETURNING)",
            MIN_MARIADB.0, MIN_MARIADB.1
        ));
    }
    ((major, minor) < MIN_MARIADB).then(|| {
        format!(
            "MariaDB {version} is too old: larder needs MariaDB {}.{} or later (JSON_TABLE)",
            MIN_MARIADB.0, MIN_MARIADB.1
        )
    })
}

/// What the SQL needs beyond the portable schema: how to compare the key
/// column with a value read out of JSON (its character set and collation).
#[derive(Debug, Clone, Default)]
pub(super) struct KeyCollation(Option<(String, String)>);

/// Reads a table's columns, key type and writability. `chosen` are the
/// configured columns (all when `None`): a binary column among them, or a
/// binary key, is refused.
pub(super) async fn describe(
    pool: &MySqlPool,
    entity: &str,
    table: &TableName,
    key: &str,
    chosen: Option<&[String]>,
) -> Result<(RawRelation, KeyCollation)> {
    let err = |e| classify(entity, e);
    let db: String = match &table.schema {
        Some(s) => s.clone(),
        None => sqlx::query("SELECT CAST(DATABASE() AS CHAR)")
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get_unchecked::<Option<String>, _>(0))
            .map_err(err)?
            .ok_or_else(|| {
                Error::Config(format!(
                    "table `{}`: the database URL names no database; add /<database> to it or name the table as database.table",
                    table.name
                ))
            })?,
    };
    let label = format!("{db}.{}", table.name);
    let kind: Option<String> = sqlx::query(
        "SELECT CAST(TABLE_TYPE AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
    )
    .bind(&db)
    .bind(&table.name)
    .fetch_optional(pool)
    .await
    .map_err(err)?
    .map(|row| row.try_get_unchecked(0))
    .transpose()
    .map_err(err)?;
    let Some(kind) = kind else {
        return Err(Error::schema(
            &table.name,
            SchemaPart::Table,
            None,
            format!(
                "table or view `{}` not found in database `{db}`",
                table.name
            ),
        ));
    };
    // MariaDB's JSON is longtext with a CHECK (json_valid(`col`)).
    let checks: Vec<String> = sqlx::query(
        "SELECT CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
    )
    .bind(&db)
    .bind(&table.name)
    .fetch_all(pool)
    .await
    .map_err(err)?
    .iter()
    .map(|row| row.try_get_unchecked(0))
    .collect::<sqlx::Result<_>>()
    .map_err(err)?;
    let rows = sqlx::query(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(LOWER(COLUMN_TYPE) AS CHAR), CAST(LOWER(DATA_TYPE) AS CHAR),
                CAST(IS_NULLABLE = 'NO' AS SIGNED),
                CAST(COLUMN_DEFAULT IS NOT NULL OR EXTRA LIKE '%auto_increment%' OR EXTRA LIKE '%GENERATED%' AS SIGNED),
                CAST(EXTRA LIKE '%GENERATED%' AS SIGNED),
                CAST(CHARACTER_SET_NAME AS CHAR), CAST(COLLATION_NAME AS CHAR),
                CAST(CHARACTER_MAXIMUM_LENGTH AS SIGNED)
           FROM information_schema.COLUMNS
          WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
          ORDER BY ORDINAL_POSITION",
    )
    .bind(&db)
    .bind(&table.name)
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut key_type = KeyType::exact_text();
    let mut collation = KeyCollation::default();
    let mut has_key = false;
    for row in rows {
        let name: String = row.try_get_unchecked(0).map_err(err)?;
        let column_type: String = row.try_get_unchecked(1).map_err(err)?;
        let data_type: String = row.try_get_unchecked(2).map_err(err)?;
        let not_null: i64 = row.try_get_unchecked(3).map_err(err)?;
        let has_default: i64 = row.try_get_unchecked(4).map_err(err)?;
        let generated: i64 = row.try_get_unchecked(5).map_err(err)?;
        let charset: Option<String> = row.try_get_unchecked(6).map_err(err)?;
        let coll: Option<String> = row.try_get_unchecked(7).map_err(err)?;
        let max_len: Option<i64> = row.try_get_unchecked(8).map_err(err)?;
        let is_json =
            data_type == "json" || checks.iter().any(|c| *c == format!("json_valid(`{name}`)"));
        let is_key = name == key;
        let wanted = is_key || chosen.is_none_or(|c| c.contains(&name));
        let Some((kind, limits)) = kind_of(&data_type, &column_type, is_json, max_len) else {
            if !wanted {
                continue;
            }
            return Err(Error::schema(
                &table.name,
                if is_key { SchemaPart::Key } else { SchemaPart::Column },
                Some(&name),
                format!(
                    "table `{label}`: column `{name}` has the binary type `{column_type}`, which a JSON row cannot carry; leave it out with `columns`"
                ),
            ));
        };
        if is_key {
            has_key = true;
            key_type = key_type_of(&data_type, limits, coll.as_deref()).map_err(|why| {
                Error::schema(
                    &table.name,
                    SchemaPart::Key,
                    Some(&name),
                    format!(
                        "table `{label}`: the key column `{name}` ({column_type}{}) cannot be a key: {why}",
                        coll.as_deref()
                            .map(|c| format!(", collation `{c}`"))
                            .unwrap_or_default()
                    ),
                )
            })?;
            if let (Some(cs), Some(c)) = (charset, coll) {
                collation = KeyCollation(Some((cs, c)));
            }
        }
        columns.push(RawColumn {
            kind: if generated != 0 {
                Kind::Generated
            } else {
                kind
            },
            limits,
            sql_type: if is_json {
                "json".to_owned()
            } else {
                column_type
            },
            name,
            not_null: not_null != 0,
            has_default: has_default != 0,
        });
    }
    let read_only = if kind.contains("VIEW") {
        Some("it is a view; write to its underlying table".to_owned())
    } else if !has_key {
        None // the unknown key is reported by Schema::new
    } else {
        let unique: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.STATISTICS s
              WHERE s.TABLE_SCHEMA = ? AND s.TABLE_NAME = ? AND s.NON_UNIQUE = 0
                AND s.COLUMN_NAME = ? AND s.SUB_PART IS NULL
                AND (SELECT COUNT(*) FROM information_schema.STATISTICS s2
                      WHERE s2.TABLE_SCHEMA = s.TABLE_SCHEMA AND s2.TABLE_NAME = s.TABLE_NAME
                        AND s2.INDEX_NAME = s.INDEX_NAME) = 1",
        )
        .bind(&db)
        .bind(&table.name)
        .bind(key)
        .fetch_one(pool)
        .await
        .map_err(err)?;
        (unique == 0).then(|| {
            format!(
                "upserts need a unique index on the key column (not on a prefix of it); add a unique index on {key}"
            )
        })
    };
    Ok((
        RawRelation {
            table: TableName {
                schema: Some(db),
                name: table.name.clone(),
            },
            columns,
            read_only,
            key_type,
        },
        collation,
    ))
}

/// Which JSON values a column accepts and what the server enforces on
/// them; `None` for binary types.
fn kind_of(
    data_type: &str,
    column_type: &str,
    is_json: bool,
    max_len: Option<i64>,
) -> Option<(Kind, Limits)> {
    let int = |min: i64, max: i64| {
        let range = if column_type.contains("unsigned") {
            (0, max.saturating_mul(2).saturating_add(1))
        } else {
            (min, max)
        };
        (
            Kind::Integer,
            Limits {
                int_range: Some(range),
                max_chars: None,
            },
        )
    };
    let plain = |kind| (kind, Limits::default());
    Some(match data_type {
        "tinyint" if column_type.starts_with("tinyint(1)") => plain(Kind::LooseBool),
        "tinyint" => int(i64::from(i8::MIN), i64::from(i8::MAX)),
        "smallint" => int(i64::from(i16::MIN), i64::from(i16::MAX)),
        "mediumint" => int(-(1 << 23), (1 << 23) - 1),
        "int" | "integer" => int(i64::from(i32::MIN), i64::from(i32::MAX)),
        // Unsigned bigints above i64::MAX are beyond what ids and rows carry.
        "bigint" => (
            Kind::Integer,
            Limits {
                int_range: Some(if column_type.contains("unsigned") {
                    (0, i64::MAX)
                } else {
                    (i64::MIN, i64::MAX)
                }),
                max_chars: None,
            },
        ),
        "year" => (
            Kind::Integer,
            Limits {
                int_range: Some((0, 2155)),
                max_chars: None,
            },
        ),
        "decimal" | "numeric" | "float" | "double" | "real" => plain(Kind::Number),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "bit"
        | "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => return None,
        "json" => plain(Kind::Json),
        _ if is_json => plain(Kind::Json),
        "char" | "varchar" => (
            Kind::Text,
            Limits {
                int_range: None,
                max_chars: max_len.and_then(|n| usize::try_from(n).ok()),
            },
        ),
        "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" | "date" | "datetime"
        | "timestamp" | "time" | "uuid" | "inet4" | "inet6" => plain(Kind::Text),
        _ => plain(Kind::Any),
    })
}

/// How ids of a key column are canonicalised, or why its type is refused.
fn key_type_of(
    data_type: &str,
    limits: Limits,
    collation: Option<&str>,
) -> std::result::Result<KeyType, String> {
    Ok(match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => {
            let (min, max) = limits.int_range.unwrap_or((i64::MIN, i64::MAX));
            KeyType::Integer { min, max }
        }
        "uuid" => KeyType::Uuid,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
            let coll = collation.unwrap_or_default();
            if !coll.ends_with("_bin") {
                return Err(format!(
                    "the collation `{coll}` compares ids case-, accent- or trailing-space-insensitively, so ids the database calls equal could not share one cache entry; give the column a binary collation (e.g. `ALTER TABLE … MODIFY … COLLATE utf8mb4_bin`)"
                ));
            }
            KeyType::Text(TextKey {
                // PAD SPACE collations ignore trailing blanks, and CHAR(n)
                // drops them when read.
                trim_trailing_blanks: data_type == "char" || !coll.contains("nopad"),
                max_chars: limits.max_chars,
                ..TextKey::default()
            })
        }
        _ => {
            return Err(
                "only integer (tinyint … bigint), uuid, and char/varchar/text keys with a binary (`_bin`) collation are supported: other types have spellings the database treats as equal that ids cannot canonicalise"
                    .into(),
            )
        }
    })
}

/// A row of an upsert that collided with another row through a unique
/// index other than the key's (`ON DUPLICATE KEY UPDATE` fires on any):
/// it would have updated the row of `id`. Reported as MariaDB reports a
/// duplicate (error 1062), and its statement is not committed.
#[derive(Debug)]
pub(super) struct UniqueConflict {
    /// The id of the row the upsert ran into.
    pub(super) id: String,
}

impl UniqueConflict {
    /// MariaDB's error number for a duplicate entry.
    pub(super) const CODE: &'static str = "1062";
}

impl std::fmt::Display for UniqueConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "duplicate entry: a row collides through a unique index with the row of id {:?}; nothing was written",
            self.id
        )
    }
}

impl std::error::Error for UniqueConflict {}

/// Backquotes a validated identifier.
fn bq(name: &str) -> String {
    format!("`{name}`")
}

/// Whether an SQL type is a date and time (rendered as ISO 8601).
fn is_datetime(sql_type: &str) -> bool {
    sql_type.starts_with("datetime") || sql_type.starts_with("timestamp")
}

/// How a column of the table `__t` (or unqualified, in `RETURNING`) is
/// rendered into the row's JSON.
fn render(col: &str, sql_type: &str, kind: Kind) -> String {
    match kind {
        Kind::LooseBool => format!(
            "CASE WHEN {col} IS NULL THEN NULL WHEN {col} THEN JSON_EXTRACT('true', '$') ELSE JSON_EXTRACT('false', '$') END"
        ),
        Kind::Json => format!("JSON_EXTRACT({col}, '$')"),
        _ if is_datetime(sql_type) => {
            let fraction = if sql_type.contains('(') { ".%f" } else { "" };
            format!("DATE_FORMAT({col}, '%Y-%m-%dT%H:%i:%s{fraction}')")
        }
        _ => col.to_owned(),
    }
}

/// A trailing UTC offset of an ISO 8601 date-time.
const OFFSET: &str = "'(Z|[+-][0-9]{2}:[0-9]{2})$'";

/// How a value read out of JSON (`v`, text; JSON text for JSON columns)
/// is converted for a column.
fn convert(v: &str, sql_type: &str, kind: Kind) -> String {
    match kind {
        Kind::LooseBool => format!("CASE {v} WHEN 'true' THEN 1 WHEN 'false' THEN 0 ELSE {v} END"),
        _ if is_datetime(sql_type) => format!(
            "IF({v} REGEXP {OFFSET}, CONVERT_TZ(REGEXP_REPLACE({v}, {OFFSET}, ''), IF(RIGHT({v}, 1) IN ('Z', 'z'), '+00:00', RIGHT({v}, 6)), '+00:00'), {v})"
        ),
        _ => v.to_owned(),
    }
}

/// The SQL of one source, built once.
#[derive(Debug)]
pub(super) struct Queries {
    load_one: String,
    /// The multi-get up to its `IN (`.
    load_many: String,
    page_start: String,
    page_after: String,
    delete: String,
    /// The table, database-qualified and quoted.
    table: String,
    /// `` `key` ``.
    key: String,
    /// `CAST(key AS CHAR), JSON_OBJECT(…)` over unqualified columns, for `RETURNING`.
    returning: String,
    /// The key's character set and collation, to compare it with JSON text.
    collation: KeyCollation,
}

impl Queries {
    pub(super) fn new(s: &Schema, collation: KeyCollation) -> Self {
        let table = format!(
            "{}.{}",
            bq(s.table.schema.as_deref().unwrap_or_default()),
            bq(&s.table.name)
        );
        let key = bq(&s.key.name);
        let projection = |alias: &str| {
            let pairs = s
                .columns
                .iter()
                .zip(&s.kinds)
                .map(|(c, k)| {
                    let col = format!("{alias}{}", bq(&c.name));
                    format!("'{}', {}", c.name, render(&col, &c.sql_type, *k))
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("CAST({alias}{key} AS CHAR), JSON_OBJECT({pairs})")
        };
        let select = format!("SELECT {} FROM {table} AS __t", projection("__t."));
        Queries {
            load_one: format!("{select} WHERE __t.{key} = ?"),
            load_many: format!("{select} WHERE __t.{key} IN ("),
            page_start: format!("{select} ORDER BY __t.{key} LIMIT ?"),
            page_after: format!("{select} WHERE __t.{key} > ? ORDER BY __t.{key} LIMIT ?"),
            delete: format!("DELETE FROM {table} WHERE {key} = ?"),
            returning: projection(""),
            table,
            key,
            collation,
        }
    }

    pub(super) async fn load_one(
        &self,
        pool: &MySqlPool,
        id: &KeyValue,
    ) -> sqlx::Result<Option<String>> {
        let mut conn = pool.acquire().await?;
        self.load_one_in(&mut conn, id).await
    }

    /// [`load_one`](Self::load_one) on a connection (or in a transaction).
    async fn load_one_in(
        &self,
        conn: &mut MySqlConnection,
        id: &KeyValue,
    ) -> sqlx::Result<Option<String>> {
        exec::load_one(conn, &self.load_one, id).await
    }

    pub(super) async fn load_many(
        &self,
        pool: &MySqlPool,
        ids: &[KeyValue],
    ) -> sqlx::Result<Vec<(String, String)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("{}{marks})", self.load_many);
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = exec::bind_key(q, id);
            }
            for row in q.fetch_all(pool).await? {
                out.push(exec::pair::<sqlx::MySql>(&row)?);
            }
        }
        Ok(out)
    }

    pub(super) async fn load_page(
        &self,
        pool: &MySqlPool,
        after: Option<&KeyValue>,
        limit: i64,
    ) -> sqlx::Result<Vec<(String, String)>> {
        exec::load_page(pool, (&self.page_start, &self.page_after), after, limit).await
    }

    pooled_writes!(MySqlPool);

    /// Deletes the row of `id` on a connection (or in a transaction).
    pub(super) async fn delete_in(
        &self,
        conn: &mut MySqlConnection,
        id: &KeyValue,
    ) -> sqlx::Result<bool> {
        exec::delete(conn, &self.delete, id).await
    }

    /// The upserts of `upsert` on a connection (or in a
    /// transaction); the rows as stored.
    ///
    /// `ON DUPLICATE KEY UPDATE` fires on a conflict with any unique index;
    /// a row that collided with another row through another unique index
    /// comes back under that row's id, and the statement is an error (the
    /// caller's transaction is not committed).
    pub(super) async fn upsert_in(
        &self,
        conn: &mut MySqlConnection,
        s: &Schema,
        groups: &[(Vec<String>, Vec<Value>)],
    ) -> sqlx::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (cols, rows) in groups {
            let sql = self.upsert_sql(s, cols);
            let json = Value::Array(rows.clone()).to_string();
            let returned = sqlx::query(&sql).bind(json).fetch_all(&mut *conn).await?;
            // Each id of the group comes back once; an id returned twice or
            // not in the group is a row that hit another unique index.
            let mut expected: std::collections::HashSet<String> = rows
                .iter()
                .filter_map(|r| r.get(&s.key.name))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            for row in &returned {
                let (id, json) = exec::pair::<sqlx::MySql>(row)?;
                let canonical =
                    canonical_key(&s.key_type, &id).map_or_else(|_| id.clone(), |k| k.text);
                if !expected.remove(&canonical) {
                    return Err(sqlx::Error::Decode(Box::new(UniqueConflict { id })));
                }
                out.push((id, json));
            }
        }
        Ok(out)
    }

    /// Updates the columns `set` (indexes into the schema's columns) of the
    /// row of `id` from the JSON object `json`, then reads the row back in
    /// the same transaction; the row as stored, if any.
    pub(super) async fn patch(
        &self,
        pool: &MySqlPool,
        s: &Schema,
        set: &[usize],
        id: &KeyValue,
        json: String,
    ) -> sqlx::Result<Option<String>> {
        let mut tx = pool.begin().await?;
        let row = self.update_in(&mut tx, s, set, id, json).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The UPDATE of [`Self::patch`] and the read back, on a connection (or
    /// in a transaction): also a write-back flush's UPDATE of a hash
    /// entry's dirty columns. The row is read back rather than counted:
    /// MariaDB counts changed rows, not matched ones.
    pub(super) async fn update_in(
        &self,
        conn: &mut MySqlConnection,
        s: &Schema,
        set: &[usize],
        id: &KeyValue,
        json: String,
    ) -> sqlx::Result<Option<String>> {
        let sql = self.patch_sql(s, set);
        let q = sqlx::query(&sql).bind(format!("[{json}]"));
        exec::bind_key(q, id).execute(&mut *conn).await?;
        self.load_one_in(conn, id).await
    }

    /// Adds `by` to column `i` of the row of `id`, NULL counting as 0, and
    /// reads the row back in the same transaction (MariaDB has no `UPDATE
    /// … RETURNING`); `None` when there is no such row. An integer `by` is
    /// bound as an integer, any other as exact `DECIMAL` text.
    pub(super) async fn incr(
        &self,
        pool: &MySqlPool,
        s: &Schema,
        i: usize,
        id: &KeyValue,
        by: &serde_json::Number,
    ) -> sqlx::Result<Option<String>> {
        let (table, key) = (&self.table, &self.key);
        let c = bq(&s.columns[i].name);
        let delta = if by.as_i64().is_some() {
            "?"
        } else {
            "CAST(? AS DECIMAL(65, 30))"
        };
        let sql = format!("UPDATE {table} SET {c} = COALESCE({c}, 0) + {delta} WHERE {key} = ?");
        let q = sqlx::query(&sql);
        let q = match by.as_i64() {
            Some(n) => q.bind(n),
            None => q.bind(by.to_string()),
        };
        let mut tx = pool.begin().await?;
        exec::bind_key(q, id).execute(&mut *tx).await?;
        let row = self.load_one_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Adds `delta` (not 0) to column `i` of the row of `id` in a
    /// write-back counter flush's transaction; whether the row was there
    /// (a non-zero delta always changes a matched row, so the count of
    /// changed rows tells).
    pub(super) async fn add_in(
        &self,
        conn: &mut MySqlConnection,
        s: &Schema,
        i: usize,
        id: &KeyValue,
        delta: &str,
    ) -> sqlx::Result<bool> {
        let (table, key) = (&self.table, &self.key);
        let c = bq(&s.columns[i].name);
        // An integer delta binds as an integer; a decimal one as exact
        // decimal text (never a double).
        let (sql, q);
        if let Ok(n) = delta.parse::<i64>() {
            sql = format!("UPDATE {table} SET {c} = COALESCE({c}, 0) + ? WHERE {key} = ?");
            q = sqlx::query(&sql).bind(n);
        } else {
            sql = format!(
                "UPDATE {table} SET {c} = COALESCE({c}, 0) + CAST(? AS DECIMAL(65, 30)) WHERE {key} = ?"
            );
            q = sqlx::query(&sql).bind(delta.to_owned());
        }
        let done = exec::bind_key(q, id).execute(&mut *conn).await?;
        Ok(done.rows_affected() > 0)
    }

    /// `JSON_TABLE` over the JSON array parameter, one text column per
    /// named column (JSON for JSON columns), as `__i`.
    fn json_rows<'a>(&self, s: &Schema, cols: impl Iterator<Item = &'a str>) -> String {
        let decls = cols
            .map(|c| {
                let kind = kind_of_name(s, c);
                let ty = match kind {
                    Kind::Json => "JSON".to_owned(),
                    _ if c == s.key.name && matches!(s.key_type, KeyType::Integer { .. }) => {
                        "BIGINT".to_owned()
                    }
                    _ if c == s.key.name => match &self.collation.0 {
                        Some((cs, coll)) => {
                            format!("LONGTEXT CHARACTER SET {cs} COLLATE {coll}")
                        }
                        None => "LONGTEXT".to_owned(),
                    },
                    _ => "LONGTEXT".to_owned(),
                };
                format!("{} {ty} PATH '$.\"{c}\"'", bq(c))
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("JSON_TABLE(?, '$[*]' COLUMNS ({decls})) AS __i")
    }

    /// The converted value of column `c` of `__i`.
    fn value(&self, s: &Schema, c: &str) -> String {
        let v = format!("__i.{}", bq(c));
        match s.columns.iter().position(|col| col.name == c) {
            Some(i) => convert(&v, &s.columns[i].sql_type, s.kinds[i]),
            None => v,
        }
    }

    fn patch_sql(&self, s: &Schema, set: &[usize]) -> String {
        let (table, key) = (&self.table, &self.key);
        let names: Vec<&str> = set.iter().map(|&i| s.columns[i].name.as_str()).collect();
        let assignments = names
            .iter()
            .map(|c| format!("__t.{} = {}", bq(c), self.value(s, c)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE {table} AS __t JOIN {} SET {assignments} WHERE __t.{key} = ?",
            self.json_rows(s, names.iter().copied())
        )
    }

    fn upsert_sql(&self, s: &Schema, cols: &[String]) -> String {
        let (table, key) = (&self.table, &self.key);
        let mut set: Vec<String> = cols
            .iter()
            .filter(|c| **c != s.key.name)
            .map(|c| format!("{0} = VALUES({0})", bq(c)))
            .collect();
        if set.is_empty() {
            // Only the key: a no-op update, so RETURNING still yields the row.
            set.push(format!("{key} = VALUES({key})"));
        }
        let mut insert_cols: Vec<String> = cols.iter().map(|c| bq(c)).collect();
        let mut values: Vec<String> = cols.iter().map(|c| self.value(s, c)).collect();
        let mut from = self.json_rows(s, cols.iter().map(String::as_str));
        // Required columns the rows leave out come from the existing row
        // (a new row gets NULL and fails NOT NULL, as it should): the
        // server checks NOT NULL before it sees the duplicate key.
        let fill = s.missing_required(cols);
        if !fill.is_empty() {
            insert_cols.extend(fill.iter().map(|c| bq(c)));
            values.extend(fill.iter().map(|c| format!("__old.{}", bq(c))));
            from.push_str(&format!(
                " LEFT JOIN {table} AS __old ON __old.{key} = __i.{key}"
            ));
        }
        format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {from} WHERE TRUE \
             ON DUPLICATE KEY UPDATE {} RETURNING {}",
            insert_cols.join(", "),
            values.join(", "),
            set.join(", "),
            self.returning
        )
    }
}

/// The kind of a column by name (the key's when it is not configured).
fn kind_of_name(s: &Schema, name: &str) -> Kind {
    s.columns
        .iter()
        .position(|c| c.name == name)
        .map_or(s.key.kind, |i| s.kinds[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_mysql_and_old_mariadb_are_refused() {
        assert_eq!(refusal("10.11.19-MariaDB-0+deb12u1"), None);
        assert_eq!(refusal("10.6.0-MariaDB"), None);
        assert_eq!(refusal("11.4.2-MariaDB-log"), None);
        let old = refusal("10.5.23-MariaDB").expect("10.5 lacks JSON_TABLE");
        assert!(old.contains("10.6"), "{old}");
        let mysql = refusal("8.0.36").expect("MySQL has no RETURNING");
        assert!(
            mysql.starts_with("MySQL 8.0.36 is not supported"),
            "{mysql}"
        );
    }

    #[test]
    fn text_keys_need_a_bin_collation() {
        let limits = Limits::default();
        assert!(key_type_of("varchar", limits, Some("utf8mb4_general_ci")).is_err());
        assert!(key_type_of("varchar", limits, Some("utf8mb4_unicode_520_ci")).is_err());
        assert!(key_type_of("varchar", limits, None).is_err());
        match key_type_of("varchar", limits, Some("utf8mb4_bin")) {
            Ok(KeyType::Text(t)) => assert!(t.trim_trailing_blanks, "PAD SPACE"),
            other => panic!("{other:?}"),
        }
        match key_type_of("varchar", limits, Some("utf8mb4_nopad_bin")) {
            Ok(KeyType::Text(t)) => assert!(!t.trim_trailing_blanks, "NO PAD"),
            other => panic!("{other:?}"),
        }
        assert!(key_type_of("decimal", limits, None).is_err());
        assert!(kind_of("blob", "blob", false, None).is_none());
        assert_eq!(
            kind_of("tinyint", "tinyint(1)", false, None).map(|k| k.0),
            Some(Kind::LooseBool)
        );
        assert_eq!(
            kind_of("int", "int(10) unsigned", false, None).and_then(|k| k.1.int_range),
            Some((0, i64::from(u32::MAX)))
        );
    }
}
