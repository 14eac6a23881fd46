//! PostgreSQL: reading the schema from `pg_catalog`, and the SQL of a source.
//!
//! Rows become JSON with `row_to_json` over a lateral subselect of the
//! chosen columns; writes go through `json_populate_recordset`, which
//! converts each JSON value to its column's type.

use super::classify;
use super::schema::{
    quote, KeyType, KeyValue, Kind, Limits, RawColumn, RawRelation, Schema, TableName,
};
use crate::error::{Error, Result};
use serde_json::Value;
use sqlx::{PgPool, Row};

/// Reads a relation's columns, key type and writability.
pub(super) async fn describe(
    pool: &PgPool,
    entity: &str,
    table: &TableName,
    key: &str,
) -> Result<RawRelation> {
    let err = |e| classify(entity, e);
    let schema_name: String = match &table.schema {
        Some(s) => s.clone(),
        None => sqlx::query_scalar::<_, Option<String>>("SELECT current_schema()::text")
            .fetch_one(pool)
            .await
            .map_err(err)?
            .ok_or_else(|| {
                Error::Config(format!(
                    "table `{}`: the search_path has no schema; name it as schema.table",
                    table.name
                ))
            })?,
    };
    let rel = sqlx::query(
        "SELECT c.oid::int8, c.relkind::text
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
    )
    .bind(&schema_name)
    .bind(&table.name)
    .fetch_optional(pool)
    .await
    .map_err(err)?;
    let Some(rel) = rel else {
        return Err(Error::Config(format!(
            "table or view `{}` not found in schema `{schema_name}`",
            table.name
        )));
    };
    let oid: i64 = rel.try_get(0).map_err(err)?;
    let relkind: String = rel.try_get(1).map_err(err)?;

    // Domains are described by their base type.
    let rows = sqlx::query(
        "SELECT a.attnum::int4, a.attname::text, format_type(a.atttypid, a.atttypmod),
                t.typname::text, t.typcategory::text, a.attnotnull,
                (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''),
                a.attgenerated <> '',
                (CASE WHEN d.typtype = 'd' THEN d.typtypmod ELSE a.atttypmod END)::int4
           FROM pg_catalog.pg_attribute a
           JOIN pg_catalog.pg_type d ON d.oid = a.atttypid
           JOIN pg_catalog.pg_type t
             ON t.oid = CASE WHEN d.typtype = 'd' THEN d.typbasetype ELSE d.oid END
          WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut key_attnum = None;
    let mut key_type = KeyType::Text;
    for row in rows {
        let attnum: i32 = row.try_get(0).map_err(err)?;
        let name: String = row.try_get(1).map_err(err)?;
        let sql_type: String = row.try_get(2).map_err(err)?;
        let typname: String = row.try_get(3).map_err(err)?;
        let category: String = row.try_get(4).map_err(err)?;
        let generated: bool = row.try_get(7).map_err(err)?;
        let typmod: i32 = row.try_get(8).map_err(err)?;
        if name == key {
            key_attnum = Some(attnum);
            key_type = match typname.as_str() {
                "int2" | "int4" | "int8" => KeyType::Integer,
                "uuid" => KeyType::Uuid,
                "text" | "varchar" | "bpchar" | "name" | "citext" => KeyType::Text,
                _ => KeyType::Other(sql_type.clone()),
            };
        }
        columns.push(RawColumn {
            limits: limits(&typname, typmod),
            kind: if generated {
                Kind::Generated
            } else {
                kind(&typname, &category)
            },
            name,
            sql_type,
            not_null: row.try_get(5).map_err(err)?,
            has_default: row.try_get(6).map_err(err)?,
        });
    }

    let read_only = match (relkind.as_str(), key_attnum) {
        ("v", _) => Some("it is a view; write to its underlying table".to_owned()),
        ("m", _) => Some("it is a materialized view; write to its underlying tables".to_owned()),
        (_, None) => None, // the unknown key is reported by Schema::new
        (_, Some(attnum)) => {
            let unique: bool = sqlx::query_scalar(
                "SELECT EXISTS (
                   SELECT 1 FROM pg_catalog.pg_index i
                    WHERE i.indrelid = $1::oid AND i.indisunique AND i.indimmediate
                      AND i.indnkeyatts = 1 AND i.indkey[0] = $2
                      AND i.indpred IS NULL AND i.indexprs IS NULL)",
            )
            .bind(oid)
            .bind(attnum)
            .fetch_one(pool)
            .await
            .map_err(err)?;
            (!unique).then(|| {
                format!(
                    "upserts need a unique index on the key column; add a unique index on {key}"
                )
            })
        }
    };
    Ok(RawRelation {
        table: TableName {
            schema: Some(schema_name),
            name: table.name.clone(),
        },
        columns,
        read_only,
        key_type,
    })
}

/// The range of an integer type and the length of a `varchar(n)` /
/// `char(n)` (whose type modifier is `n + 4`), by base type name.
fn limits(typname: &str, typmod: i32) -> Limits {
    let int_range = match typname {
        "int2" => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
        "int4" => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        "int8" => Some((i64::MIN, i64::MAX)),
        "oid" => Some((0, i64::from(u32::MAX))),
        _ => None,
    };
    let max_chars = match typname {
        "varchar" | "bpchar" if typmod >= 4 => usize::try_from(typmod - 4).ok(),
        _ => None,
    };
    Limits {
        int_range,
        max_chars,
    }
}

/// Which JSON values a PostgreSQL type accepts.
fn kind(typname: &str, category: &str) -> Kind {
    match typname {
        "int2" | "int4" | "int8" | "oid" => Kind::Integer,
        "float4" | "float8" | "numeric" => Kind::Number,
        "bool" => Kind::Bool,
        "json" | "jsonb" => Kind::Any,
        "uuid" | "bytea" | "xml" | "money" => Kind::Text,
        _ => match category {
            "A" => Kind::Array,
            // string, date/time, timespan, network, enum, bit string
            "S" | "D" | "T" | "I" | "E" | "V" => Kind::Text,
            "N" => Kind::Number,
            _ => Kind::Any,
        },
    }
}

/// The SQL of one source, built once.
#[derive(Debug)]
pub(super) struct Queries {
    load_one: String,
    load_many: String,
    page_start: String,
    page_after: String,
    remove: String,
    /// The table, schema-qualified and quoted.
    table: String,
    /// `"key"`.
    key: String,
    /// `__r`'s select list over the alias `__w` of the upsert's CTE.
    returning_cols: String,
}

/// `$n` with the cast the key type needs; `array` for `= ANY($n)`.
fn param(n: u32, key_type: &KeyType, array: bool) -> String {
    let brackets = if array { "[]" } else { "" };
    match key_type {
        KeyType::Integer | KeyType::Text => format!("${n}"),
        KeyType::Uuid => format!("${n}::uuid{brackets}"),
        KeyType::Other(t) => format!("${n}::{t}{brackets}"),
    }
}

impl Queries {
    pub(super) fn new(s: &Schema) -> Self {
        let table = format!(
            "{}.{}",
            quote(s.table.schema.as_deref().unwrap_or("public")),
            quote(&s.table.name)
        );
        let key = quote(&s.key.name);
        let cols = |alias: &str| {
            s.columns
                .iter()
                .map(|c| format!("{alias}.{}", quote(&c.name)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let select = format!(
            "SELECT __t.{key}::text, row_to_json(__r)::text FROM {table} AS __t \
             CROSS JOIN LATERAL (SELECT {}) AS __r",
            cols("__t")
        );
        let one = param(1, &s.key_type, false);
        Queries {
            load_one: format!("{select} WHERE __t.{key} = {one}"),
            load_many: format!(
                "{select} WHERE __t.{key} = ANY({})",
                param(1, &s.key_type, true)
            ),
            page_start: format!("{select} ORDER BY __t.{key} LIMIT $1"),
            page_after: format!("{select} WHERE __t.{key} > {one} ORDER BY __t.{key} LIMIT $2"),
            remove: format!("DELETE FROM {table} WHERE {key} = {one}"),
            returning_cols: cols("__w"),
            table,
            key,
        }
    }

    pub(super) async fn load_one(
        &self,
        pool: &PgPool,
        id: &KeyValue,
    ) -> sqlx::Result<Option<String>> {
        let q = sqlx::query(&self.load_one);
        let q = match id.int {
            Some(n) => q.bind(n),
            None => q.bind(id.text.clone()),
        };
        q.fetch_optional(pool)
            .await?
            .map(|row| row.try_get(1))
            .transpose()
    }

    pub(super) async fn load_many(
        &self,
        pool: &PgPool,
        ids: &[KeyValue],
    ) -> sqlx::Result<Vec<(String, String)>> {
        let q = sqlx::query(&self.load_many);
        let ints: Option<Vec<i64>> = ids.iter().map(|k| k.int).collect();
        let q = match ints {
            Some(ints) => q.bind(ints),
            None => q.bind(ids.iter().map(|k| k.text.clone()).collect::<Vec<_>>()),
        };
        q.fetch_all(pool).await?.iter().map(pair).collect()
    }

    pub(super) async fn load_page(
        &self,
        pool: &PgPool,
        after: Option<&KeyValue>,
        limit: i64,
    ) -> sqlx::Result<Vec<(String, String)>> {
        let q = match after {
            None => sqlx::query(&self.page_start),
            Some(k) => {
                let q = sqlx::query(&self.page_after);
                match k.int {
                    Some(n) => q.bind(n),
                    None => q.bind(k.text.clone()),
                }
            }
        };
        q.bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(pair)
            .collect()
    }

    pub(super) async fn remove(&self, pool: &PgPool, id: &KeyValue) -> sqlx::Result<bool> {
        let mut conn = pool.acquire().await?;
        self.remove_in(&mut conn, id).await
    }

    /// Deletes the row of `id` on a connection (or in a transaction).
    pub(super) async fn remove_in(
        &self,
        conn: &mut sqlx::PgConnection,
        id: &KeyValue,
    ) -> sqlx::Result<bool> {
        let q = sqlx::query(&self.remove);
        let q = match id.int {
            Some(n) => q.bind(n),
            None => q.bind(id.text.clone()),
        };
        Ok(q.execute(conn).await?.rows_affected() > 0)
    }

    /// One upsert per column set, in one transaction when there are several.
    pub(super) async fn upsert(
        &self,
        pool: &PgPool,
        s: &Schema,
        groups: &[(Vec<String>, Vec<Value>)],
    ) -> sqlx::Result<Vec<(String, String)>> {
        let mut tx = pool.begin().await?;
        let out = self.upsert_in(&mut tx, s, groups).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// The upserts of [`upsert`](Self::upsert) on a connection (or in a
    /// transaction); the rows as stored.
    pub(super) async fn upsert_in(
        &self,
        conn: &mut sqlx::PgConnection,
        s: &Schema,
        groups: &[(Vec<String>, Vec<Value>)],
    ) -> sqlx::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (cols, rows) in groups {
            let sql = self.upsert_sql(s, cols);
            let json = Value::Array(rows.clone()).to_string();
            let returned = sqlx::query(&sql).bind(json).fetch_all(&mut *conn).await?;
            for row in &returned {
                out.push(pair(row)?);
            }
        }
        Ok(out)
    }

    /// Updates the columns `set` (indexes into the schema's columns) of the
    /// row of `id` from the JSON object `json`; the row as stored, if any.
    pub(super) async fn patch(
        &self,
        pool: &PgPool,
        s: &Schema,
        set: &[usize],
        id: &KeyValue,
        json: String,
    ) -> sqlx::Result<Option<String>> {
        let sql = self.patch_sql(s, set);
        let q = sqlx::query(&sql);
        let q = match id.int {
            Some(n) => q.bind(n),
            None => q.bind(id.text.clone()),
        };
        q.bind(json)
            .fetch_optional(pool)
            .await?
            .map(|row| row.try_get(1))
            .transpose()
    }

    /// `json_populate_record` converts each value to its column's type, as
    /// the upsert's `json_populate_recordset` does; only the named columns
    /// are read from it, so absent keys (NULL in the record) are never used.
    fn patch_sql(&self, s: &Schema, set: &[usize]) -> String {
        let (table, key) = (&self.table, &self.key);
        let assignments = set
            .iter()
            .map(|&i| format!("{0} = __p.{0}", quote(&s.columns[i].name)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "WITH __w AS (\
               UPDATE {table} AS __t SET {assignments} \
               FROM json_populate_record(NULL::{table}, $2::json) AS __p \
               WHERE __t.{key} = {} \
               RETURNING __t.*) \
             SELECT __w.{key}::text, row_to_json(__r)::text FROM __w \
             CROSS JOIN LATERAL (SELECT {}) AS __r",
            param(1, &s.key_type, false),
            self.returning_cols
        )
    }

    fn upsert_sql(&self, s: &Schema, cols: &[String]) -> String {
        let (table, key) = (&self.table, &self.key);
        let mut set: Vec<String> = cols
            .iter()
            .filter(|c| **c != s.key.name)
            .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
            .collect();
        if set.is_empty() {
            // Only the key: a no-op update, so RETURNING still yields the row.
            set.push(format!("{key} = EXCLUDED.{key}"));
        }
        // Required columns the rows leave out come from the existing row
        // (a new row gets NULL and fails NOT NULL, as it should).
        let fill = s.missing_required(cols);
        let mut insert_cols: Vec<String> = cols.iter().map(|c| quote(c)).collect();
        let mut values: Vec<String> = cols.iter().map(|c| format!("__i.{}", quote(c))).collect();
        let mut from = format!("json_populate_recordset(NULL::{table}, $1::json) AS __i");
        if !fill.is_empty() {
            insert_cols.extend(fill.iter().map(|c| quote(c)));
            values.extend(fill.iter().map(|c| format!("__old.{}", quote(c))));
            from.push_str(&format!(
                " LEFT JOIN {table} AS __old ON __old.{key} = __i.{key}"
            ));
        }
        format!(
            "WITH __w AS (\
               INSERT INTO {table} ({}) SELECT {} FROM {from} \
               ON CONFLICT ({key}) DO UPDATE SET {} \
               RETURNING *) \
             SELECT __w.{key}::text, row_to_json(__r)::text FROM __w \
             CROSS JOIN LATERAL (SELECT {}) AS __r",
            insert_cols.join(", "),
            values.join(", "),
            set.join(", "),
            self.returning_cols
        )
    }
}

fn pair(row: &sqlx::postgres::PgRow) -> sqlx::Result<(String, String)> {
    Ok((row.try_get(0)?, row.try_get(1)?))
}
