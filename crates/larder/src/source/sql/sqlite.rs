//! SQLite: reading the schema with `PRAGMA table_info` / `index_list`, and
//! the SQL of a source.
//!
//! Rows become JSON with `json_object('col', "col", ...)`; boolean columns
//! are rendered as `true`/`false` and JSON columns as nested JSON. Writes
//! read each value out of one JSON array parameter with `json_extract` (JSON
//! columns with `->`, so they are stored as JSON text).

use super::classify;
use super::exec;
use super::schema::{
    quote, Fold, KeyType, KeyValue, Kind, Limits, RawColumn, RawRelation, Schema, TableName,
    TextKey,
};
use crate::error::{Error, Result, SchemaPart};
use serde_json::Value;
use sqlx::{Row, SqlitePool};

/// `json_object` takes at most 127 arguments: build it in chunks of 60 pairs.
const PAIRS_PER_OBJECT: usize = 60;

/// Reads a table's or view's columns, key type and writability.
pub(super) async fn describe(
    pool: &SqlitePool,
    entity: &str,
    table: &TableName,
    key: &str,
) -> Result<RawRelation> {
    let err = |e| classify(entity, e);
    let found: Option<(String, String)> = sqlx::query_as(
        "SELECT type, name FROM sqlite_master
          WHERE name = ?1 COLLATE NOCASE AND type IN ('table', 'view')",
    )
    .bind(&table.name)
    .fetch_optional(pool)
    .await
    .map_err(err)?;
    let Some((kind_of_relation, name)) = found else {
        return Err(Error::schema(
            &table.name,
            SchemaPart::Table,
            None,
            format!("table or view `{}` not found", table.name),
        ));
    };
    let rows = sqlx::query(
        "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1)",
    )
    .bind(&name)
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let pk_count = rows
        .iter()
        .filter(|r| r.try_get::<i64, _>(4).is_ok_and(|pk| pk > 0))
        .count();
    let mut columns = Vec::with_capacity(rows.len());
    let mut key_type = KeyType::exact_text();
    let mut key_is_sole_pk = false;
    for row in rows {
        let col: String = row.try_get(0).map_err(err)?;
        let sql_type: String = row.try_get(1).map_err(err)?;
        let not_null: bool = row.try_get(2).map_err(err)?;
        let has_default: bool = row.try_get(3).map_err(err)?;
        let pk: i64 = row.try_get(4).map_err(err)?;
        let upper = sql_type.to_ascii_uppercase();
        // An INTEGER PRIMARY KEY is the rowid: SQLite assigns it.
        let rowid = pk > 0 && pk_count == 1 && upper == "INTEGER";
        if col == key {
            key_is_sole_pk = pk > 0 && pk_count == 1;
            let has = |s: &str| upper.contains(s);
            if has("INT") {
                key_type = KeyType::BIGINT;
            } else if !(has("CHAR")
                || has("CLOB")
                || has("TEXT")
                || has("BLOB")
                || upper.is_empty())
            {
                // REAL and NUMERIC affinity convert ids that look like numbers
                // (`1.0`, `1e0` and `1` are one key).
                return Err(Error::schema(&name, SchemaPart::Key, Some(&col), format!(
                    "table `{name}`: the key column `{col}` has type `{sql_type}` (numeric affinity), which cannot be a key: declare it INTEGER or TEXT"
                )));
            }
        }
        let kind = kind(&upper);
        // Integer affinity stores 64-bit integers (larger ones become REAL);
        // declared lengths (`VARCHAR(20)`) are not enforced by SQLite.
        let limits = Limits {
            int_range: (kind == Kind::LooseInteger).then_some((i64::MIN, i64::MAX)),
            max_chars: None,
        };
        columns.push(RawColumn {
            kind,
            limits,
            name: col,
            sql_type,
            not_null,
            has_default: has_default || rowid,
        });
    }
    if key_type != KeyType::BIGINT {
        key_type = text_key(pool, entity, &name, key).await?;
    }
    let read_only = if kind_of_relation == "view" {
        Some("it is a view; write to its underlying table".to_owned())
    } else if key_is_sole_pk {
        None
    } else {
        let unique: bool = sqlx::query_scalar(
            "SELECT EXISTS (
               SELECT 1 FROM pragma_index_list(?1) AS il
                WHERE il.\"unique\" = 1 AND il.partial = 0
                  AND (SELECT count(*) FROM pragma_index_info(il.name)) = 1
                  AND (SELECT ii.name FROM pragma_index_info(il.name) AS ii) = ?2)",
        )
        .bind(&name)
        .bind(key)
        .fetch_one(pool)
        .await
        .map_err(err)?;
        (!unique).then(|| {
            format!("upserts need a unique index on the key column; add a unique index on {key}")
        })
    };
    Ok(RawRelation {
        table: TableName { schema: None, name },
        columns,
        read_only,
        key_type,
    })
}

/// How a text key compares: by the collation of its unique index (the
/// column's own for a `PRIMARY KEY` or `UNIQUE` constraint); BINARY without one.
async fn text_key(pool: &SqlitePool, entity: &str, table: &str, key: &str) -> Result<KeyType> {
    let coll: Option<String> = sqlx::query_scalar(
        "SELECT ix.coll FROM pragma_index_list(?1) AS il
           JOIN pragma_index_xinfo(il.name) AS ix
          WHERE il.\"unique\" = 1 AND il.partial = 0 AND ix.key = 1 AND ix.name = ?2
            AND (SELECT count(*) FROM pragma_index_info(il.name)) = 1
          LIMIT 1",
    )
    .bind(table)
    .bind(key)
    .fetch_optional(pool)
    .await
    .map_err(|e| classify(entity, e))?;
    let coll = coll.unwrap_or_else(|| "BINARY".to_owned());
    let text = match coll.to_ascii_uppercase().as_str() {
        "BINARY" => TextKey::default(),
        // NOCASE folds ASCII letters only.
        "NOCASE" => TextKey {
            fold: Fold::Ascii,
            ..TextKey::default()
        },
        "RTRIM" => TextKey {
            trim_trailing_blanks: true,
            ..TextKey::default()
        },
        _ => {
            return Err(Error::schema(table, SchemaPart::Key, Some(key), format!(
                "table `{table}`: the key column `{key}` uses the collation `{coll}`, which cannot be a key's: use BINARY, NOCASE or RTRIM"
            )))
        }
    };
    Ok(KeyType::Text(text))
}

/// Which JSON values a declared type accepts, by SQLite's affinity rules
/// (with dates, times, booleans and JSON recognised by name).
fn kind(upper: &str) -> Kind {
    let has = |s: &str| upper.contains(s);
    if has("INT") {
        Kind::LooseInteger
    } else if has("BOOL") {
        Kind::LooseBool
    } else if has("JSON") {
        Kind::Json
    } else if has("CHAR") || has("CLOB") || has("TEXT") || has("DATE") || has("TIME") || has("UUID")
    {
        Kind::Text
    } else if upper.is_empty() || has("BLOB") {
        Kind::Any
    } else if has("REAL") || has("FLOA") || has("DOUB") || has("NUMERIC") || has("DECIMAL") {
        Kind::Number
    } else {
        Kind::Any
    }
}

/// How a column is rendered into the row's JSON.
fn render(name: &str, kind: Kind) -> String {
    let c = quote(name);
    match kind {
        Kind::LooseBool | Kind::Bool => {
            format!("json(CASE WHEN {c} IS NULL THEN NULL WHEN {c} THEN 'true' ELSE 'false' END)")
        }
        Kind::Json => format!("json(CASE WHEN json_valid({c}) THEN {c} ELSE json_quote({c}) END)"),
        // JSON cannot hold blobs: hex them.
        Kind::Any => format!("CASE WHEN typeof({c}) = 'blob' THEN hex({c}) ELSE {c} END"),
        _ => c,
    }
}

/// How a column's value is read out of the JSON row `j.value`.
fn extract(name: &str, kind: Kind) -> String {
    extract_from("j.value", name, kind)
}

/// How a column's value is read out of the JSON object `json` (an SQL
/// expression: a column or a parameter).
fn extract_from(json: &str, name: &str, kind: Kind) -> String {
    let path = format!("'$.{name}'");
    match kind {
        Kind::Json => format!(
            "CASE WHEN json_type({json}, {path}) = 'null' THEN NULL ELSE {json} -> {path} END"
        ),
        _ => format!("json_extract({json}, {path})"),
    }
}

/// The SQL of one source, built once.
#[derive(Debug)]
pub(super) struct Queries {
    load_one: String,
    load_many: String,
    page_start: String,
    page_after: String,
    delete: String,
    table: String,
    key: String,
    /// `CAST("key" AS TEXT), json_object(...)`: the id and the row.
    projection: String,
}

/// Runs an `UPDATE … RETURNING` statement whose `?1` is `value` and `?2`
/// the key; the returned row's JSON (its second column), if a row matched.
async fn update_returning<'e>(
    pool: impl sqlx::SqliteExecutor<'e>,
    sql: &str,
    value: String,
    id: &KeyValue,
) -> sqlx::Result<Option<String>> {
    let q = sqlx::query(sql).bind(value);
    let q = match id.int {
        Some(n) => q.bind(n),
        None => q.bind(id.text.clone()),
    };
    q.fetch_optional(pool)
        .await?
        .map(|row| row.try_get(1))
        .transpose()
}

impl Queries {
    pub(super) fn new(s: &Schema) -> Self {
        let table = quote(&s.table.name);
        let key = quote(&s.key.name);
        let objects: Vec<String> = s
            .columns
            .chunks(PAIRS_PER_OBJECT)
            .zip(s.kinds.chunks(PAIRS_PER_OBJECT))
            .map(|(cols, kinds)| {
                let pairs = cols
                    .iter()
                    .zip(kinds)
                    .map(|(c, k)| format!("'{}', {}", c.name, render(&c.name, *k)))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("json_object({pairs})")
            })
            .collect();
        let object = if objects.len() == 1 {
            objects.concat()
        } else {
            // Splice the objects' members together as text.
            let inner = objects
                .iter()
                .map(|o| format!("substr({o}, 2, length({o}) - 2)"))
                .collect::<Vec<_>>()
                .join(" || ',' || ");
            format!("json('{{' || {inner} || '}}')")
        };
        let projection = format!("CAST({key} AS TEXT), {object}");
        let select = format!("SELECT {projection} FROM {table}");
        Queries {
            load_one: format!("{select} WHERE {key} = ?1"),
            load_many: format!("{select} WHERE {key} IN (SELECT j.value FROM json_each(?1) AS j)"),
            page_start: format!("{select} ORDER BY {key} LIMIT ?1"),
            page_after: format!("{select} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2"),
            delete: format!("DELETE FROM {table} WHERE {key} = ?1"),
            table,
            key,
            projection,
        }
    }

    pub(super) async fn load_one(
        &self,
        pool: &SqlitePool,
        id: &KeyValue,
    ) -> sqlx::Result<Option<String>> {
        exec::load_one(pool, &self.load_one, id).await
    }

    pub(super) async fn load_many(
        &self,
        pool: &SqlitePool,
        ids: &[KeyValue],
    ) -> sqlx::Result<Vec<(String, String)>> {
        let array: Vec<Value> = ids
            .iter()
            .map(|k| match k.int {
                Some(n) => Value::from(n),
                None => Value::from(k.text.clone()),
            })
            .collect();
        sqlx::query(&self.load_many)
            .bind(Value::Array(array).to_string())
            .fetch_all(pool)
            .await?
            .iter()
            .map(exec::pair::<sqlx::Sqlite>)
            .collect()
    }

    pub(super) async fn load_page(
        &self,
        pool: &SqlitePool,
        after: Option<&KeyValue>,
        limit: i64,
    ) -> sqlx::Result<Vec<(String, String)>> {
        exec::load_page(pool, (&self.page_start, &self.page_after), after, limit).await
    }

    pooled_writes!(SqlitePool);

    /// Deletes the row of `id` on a connection (or in a transaction).
    pub(super) async fn delete_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        id: &KeyValue,
    ) -> sqlx::Result<bool> {
        exec::delete(conn, &self.delete, id).await
    }

    /// The upserts of `upsert` on a connection (or in a
    /// transaction); the rows as stored.
    pub(super) async fn upsert_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        s: &Schema,
        groups: &[(Vec<String>, Vec<Value>)],
    ) -> sqlx::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (cols, rows) in groups {
            let sql = self.upsert_sql(s, cols);
            let json = Value::Array(rows.clone()).to_string();
            let returned = sqlx::query(&sql).bind(json).fetch_all(&mut *conn).await?;
            for row in &returned {
                out.push(exec::pair::<sqlx::Sqlite>(row)?);
            }
        }
        Ok(out)
    }

    /// [`Self::patch`] on a connection (or in a transaction): a write-back
    /// flush's UPDATE of a hash entry's dirty columns.
    pub(super) async fn update_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        s: &Schema,
        set: &[usize],
        id: &KeyValue,
        json: String,
    ) -> sqlx::Result<Option<String>> {
        self.patch(&mut *conn, s, set, id, json).await
    }

    /// Updates the columns `set` (indexes into the schema's columns) of the
    /// row of `id` from the JSON object `json`; the row as stored, if any.
    pub(super) async fn patch<'e>(
        &self,
        pool: impl sqlx::SqliteExecutor<'e>,
        s: &Schema,
        set: &[usize],
        id: &KeyValue,
        json: String,
    ) -> sqlx::Result<Option<String>> {
        update_returning(pool, &self.patch_sql(s, set), json, id).await
    }

    /// Adds `by` to column `i` of the row of `id` in one `UPDATE … RETURNING`,
    /// NULL counting as 0; the row as stored, or `None`. `by` is bound as
    /// its text and cast to `NUMERIC`: an integer stays an integer (exact
    /// beyond 2^53), a fraction becomes SQLite's double.
    pub(super) async fn incr<'e>(
        &self,
        pool: impl sqlx::SqliteExecutor<'e>,
        s: &Schema,
        i: usize,
        id: &KeyValue,
        by: &str,
    ) -> sqlx::Result<Option<String>> {
        let (table, key) = (&self.table, &self.key);
        let c = quote(&s.columns[i].name);
        let sql = format!(
            "UPDATE {table} SET {c} = COALESCE({c}, 0) + CAST(?1 AS NUMERIC) \
             WHERE {key} = ?2 RETURNING {}",
            self.projection
        );
        update_returning(pool, &sql, by.to_owned(), id).await
    }

    /// Adds `delta` to column `i` of the row of `id` in a write-back
    /// counter flush's transaction; whether the row was there.
    pub(super) async fn add_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        s: &Schema,
        i: usize,
        id: &KeyValue,
        delta: &str,
    ) -> sqlx::Result<bool> {
        self.incr(&mut *conn, s, i, id, delta)
            .await
            .map(|row| row.is_some())
    }

    /// Each value is read out of the one JSON parameter `?1` as the upsert
    /// reads it, so JSON, boolean and untyped columns behave the same.
    fn patch_sql(&self, s: &Schema, set: &[usize]) -> String {
        let (table, key) = (&self.table, &self.key);
        let assignments = set
            .iter()
            .map(|&i| {
                let name = &s.columns[i].name;
                format!("{} = {}", quote(name), extract_from("?1", name, s.kinds[i]))
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE {table} SET {assignments} WHERE {key} = ?2 RETURNING {}",
            self.projection
        )
    }

    fn upsert_sql(&self, s: &Schema, cols: &[String]) -> String {
        let (table, key) = (&self.table, &self.key);
        let kind_of = |name: &str| {
            s.columns
                .iter()
                .position(|c| c.name == name)
                .map_or(s.key.kind, |i| s.kinds[i])
        };
        let list = cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        let values = cols
            .iter()
            .map(|c| extract(c, kind_of(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut set: Vec<String> = cols
            .iter()
            .filter(|c| **c != s.key.name)
            .map(|c| format!("{0} = excluded.{0}", quote(c)))
            .collect();
        if set.is_empty() {
            // Only the key: a no-op update, so RETURNING still yields the row.
            set.push(format!("{key} = excluded.{key}"));
        }
        // Required columns the rows leave out come from the existing row
        // (a new row gets NULL and fails NOT NULL, as it should).
        let fill = s.missing_required(cols);
        let mut list = list;
        let mut values = values;
        let mut from = "json_each(?1) AS j".to_owned();
        if !fill.is_empty() {
            for c in &fill {
                list.push_str(&format!(", {}", quote(c)));
                values.push_str(&format!(", __old.{}", quote(c)));
            }
            from.push_str(&format!(
                " LEFT JOIN {table} AS __old ON __old.{key} = {}",
                extract(&s.key.name, s.key.kind)
            ));
        }
        format!(
            "INSERT INTO {table} ({list}) SELECT {values} FROM {from} WHERE true \
             ON CONFLICT ({key}) DO UPDATE SET {} RETURNING {}",
            set.join(", "),
            self.projection
        )
    }
}
