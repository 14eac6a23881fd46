//! PostgreSQL: reading the schema from `pg_catalog`, and the SQL of a source.
//!
//! Rows become JSON with `row_to_json` over a lateral subselect of the
//! chosen columns; writes go through `json_populate_recordset`, which
//! converts each JSON value to its column's type.

use super::classify;
use super::exec;
use super::schema::{
    quote, Fold, KeyType, KeyValue, Kind, Limits, RawColumn, RawRelation, Schema, TableName,
    TextKey,
};
use crate::error::{Error, Result, SchemaPart};
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
                Error::schema(
                    &table.name,
                    SchemaPart::Table,
                    None,
                    format!(
                        "table `{}`: the search_path has no schema; name it as schema.table",
                        table.name
                    ),
                )
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
        return Err(Error::schema(
            &table.name,
            SchemaPart::Table,
            None,
            format!(
                "table or view `{}` not found in schema `{schema_name}`",
                table.name
            ),
        ));
    };
    let oid: i64 = rel.try_get(0).map_err(err)?;
    let relkind: String = rel.try_get(1).map_err(err)?;

    // Domains are described by their base type.
    let rows = sqlx::query(
        "SELECT a.attnum::int4, a.attname::text, format_type(a.atttypid, a.atttypmod),
                t.typname::text, t.typcategory::text, a.attnotnull,
                (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''),
                a.attgenerated <> '',
                (CASE WHEN d.typtype = 'd' THEN d.typtypmod ELSE a.atttypmod END)::int4,
                coalesce(co.collisdeterministic, true),
                CASE WHEN co.oid IS NULL THEN ''
                     WHEN co.collname = 'default' THEN (
                       SELECT CASE WHEN to_jsonb(db) ->> 'datlocprovider' = 'i'
                                   THEN 'icu:' || coalesce(to_jsonb(db) ->> 'daticulocale',
                                                           to_jsonb(db) ->> 'datlocale', '')
                                   ELSE db.datctype::text END
                         FROM pg_catalog.pg_database db WHERE db.datname = current_database())
                     WHEN co.collprovider = 'i'
                       THEN 'icu:' || coalesce(to_jsonb(co) ->> 'colliculocale',
                                               to_jsonb(co) ->> 'colllocale', '')
                     ELSE coalesce(co.collctype::text, '') END,
                a.attidentity <> ''
           FROM pg_catalog.pg_attribute a
           JOIN pg_catalog.pg_type d ON d.oid = a.atttypid
           JOIN pg_catalog.pg_type t
             ON t.oid = CASE WHEN d.typtype = 'd' THEN d.typbasetype ELSE d.oid END
           LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
          WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut key_attnum = None;
    let mut key_type = KeyType::exact_text();
    for row in rows {
        let attnum: i32 = row.try_get(0).map_err(err)?;
        let name: String = row.try_get(1).map_err(err)?;
        let sql_type: String = row.try_get(2).map_err(err)?;
        let typname: String = row.try_get(3).map_err(err)?;
        let category: String = row.try_get(4).map_err(err)?;
        let generated: bool = row.try_get(7).map_err(err)?;
        let typmod: i32 = row.try_get(8).map_err(err)?;
        let deterministic: bool = row.try_get(9).map_err(err)?;
        let ctype: String = row.try_get(10).map_err(err)?;
        // An identity column other than the key (`GENERATED ALWAYS` or `BY
        // DEFAULT`) is the database's to number: like a generated column,
        // it is never written.
        let identity: bool = row.try_get(11).map_err(err)?;
        let generated = generated || (identity && name != key);
        let limits = limits(&typname, typmod);
        if name == key {
            key_attnum = Some(attnum);
            let refuse = |why: &str| {
                Error::schema(&table.name, SchemaPart::Key, Some(&name), format!(
                    "table `{schema_name}.{}`: the key column `{name}` has type `{sql_type}`, which cannot be a key: {why}",
                    table.name
                ))
            };
            if !deterministic {
                return Err(refuse(
                    "its collation is non-deterministic (ids the database calls equal could not share one cache entry); use a deterministic collation",
                ));
            }
            key_type = key_type_of(&typname, limits, &ctype).map_err(|why| refuse(&why))?;
        }
        columns.push(RawColumn {
            limits,
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

/// How ids of a key column of base type `typname` are canonicalised, or
/// why the type is refused. `ctype` is the column collation's `LC_CTYPE`
/// (`icu:<locale>` for ICU), which decides what `citext`'s `lower()` does.
fn key_type_of(typname: &str, limits: Limits, ctype: &str) -> std::result::Result<KeyType, String> {
    Ok(match typname {
        "int2" | "int4" | "int8" => {
            let (min, max) = limits.int_range.unwrap_or((i64::MIN, i64::MAX));
            KeyType::Integer { min, max }
        }
        "uuid" => KeyType::Uuid,
        "text" | "varchar" => KeyType::Text(TextKey {
            max_chars: limits.max_chars,
            ..TextKey::default()
        }),
        // bpchar equality ignores trailing blanks, and `::text` drops them.
        "bpchar" => KeyType::Text(TextKey {
            trim_trailing_blanks: true,
            max_chars: limits.max_chars,
            cast: Some("bpchar"),
            ..TextKey::default()
        }),
        // `name` holds at most 63 bytes (longer input is truncated).
        "name" => KeyType::Text(TextKey {
            max_bytes: Some(63),
            ..TextKey::default()
        }),
        // citext compares lower(a) = lower(b), lower() under the collation.
        "citext" => {
            let locale = ctype.strip_prefix("icu:").unwrap_or(ctype).to_ascii_lowercase();
            if locale.starts_with("tr") || locale.starts_with("az") {
                return Err(format!(
                    "under the locale `{ctype}` lower() folds ASCII `I` to a non-ASCII letter"
                ));
            }
            let fold = if matches!(ctype, "C" | "POSIX") {
                Fold::Ascii
            } else {
                Fold::AsciiOnly
            };
            KeyType::Text(TextKey {
                fold,
                cast: Some("citext"),
                ..TextKey::default()
            })
        }
        _ => {
            return Err(
                "only integer (smallint, integer, bigint), uuid, text, varchar, char(n), name and citext keys are supported: other types have spellings the database treats as equal (numeric 1.0 = 1, dates and timestamps in several formats) that ids cannot canonicalise"
                    .into(),
            )
        }
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
    delete: String,
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
        KeyType::Integer { .. } => format!("${n}"),
        KeyType::Text(t) => match t.cast {
            Some(cast) => format!("${n}::{cast}{brackets}"),
            None => format!("${n}"),
        },
        KeyType::Uuid => format!("${n}::uuid{brackets}"),
    }
}

/// Runs an `UPDATE … RETURNING` statement whose `$1` is the key and `$2`
/// `value`; the returned row's JSON (its second column), if a row matched.
async fn update_returning<'e>(
    pool: impl sqlx::PgExecutor<'e>,
    sql: &str,
    id: &KeyValue,
    value: String,
) -> sqlx::Result<Option<String>> {
    let q = sqlx::query(sql);
    let q = match id.int {
        Some(n) => q.bind(n),
        None => q.bind(id.text.clone()),
    };
    q.bind(value)
        .fetch_optional(pool)
        .await?
        .map(|row| row.try_get(1))
        .transpose()
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
            delete: format!("DELETE FROM {table} WHERE {key} = {one}"),
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
        exec::load_one(pool, &self.load_one, id).await
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
        q.fetch_all(pool)
            .await?
            .iter()
            .map(exec::pair::<sqlx::Postgres>)
            .collect()
    }

    pub(super) async fn load_page(
        &self,
        pool: &PgPool,
        after: Option<&KeyValue>,
        limit: i64,
    ) -> sqlx::Result<Vec<(String, String)>> {
        exec::load_page(pool, (&self.page_start, &self.page_after), after, limit).await
    }

    pooled_writes!(PgPool);

    /// Deletes the row of `id` on a connection (or in a transaction).
    pub(super) async fn delete_in(
        &self,
        conn: &mut sqlx::PgConnection,
        id: &KeyValue,
    ) -> sqlx::Result<bool> {
        exec::delete(conn, &self.delete, id).await
    }

    /// The upserts of `upsert` on a connection (or in a
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
                out.push(exec::pair::<sqlx::Postgres>(row)?);
            }
        }
        Ok(out)
    }

    /// [`Self::patch`] on a connection (or in a transaction): a write-back
    /// flush's UPDATE of a hash entry's dirty columns.
    pub(super) async fn update_in(
        &self,
        conn: &mut sqlx::PgConnection,
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
        pool: impl sqlx::PgExecutor<'e>,
        s: &Schema,
        set: &[usize],
        id: &KeyValue,
        json: String,
    ) -> sqlx::Result<Option<String>> {
        update_returning(pool, &self.patch_sql(s, set), id, json).await
    }

    /// Adds `by` (exact decimal text) to column `i` of the row of `id` in
    /// one `UPDATE`, NULL counting as 0; the row as stored, or `None`.
    pub(super) async fn incr(
        &self,
        pool: &PgPool,
        s: &Schema,
        i: usize,
        id: &KeyValue,
        by: &str,
    ) -> sqlx::Result<Option<String>> {
        update_returning(pool, &self.incr_sql(s, i), id, by.to_owned()).await
    }

    /// Adds `delta` to column `i` of the row of `id` in a write-back
    /// counter flush's transaction; whether the row was there.
    pub(super) async fn add_in(
        &self,
        conn: &mut sqlx::PgConnection,
        s: &Schema,
        i: usize,
        id: &KeyValue,
        delta: &str,
    ) -> sqlx::Result<bool> {
        update_returning(&mut *conn, &self.incr_sql(s, i), id, delta.to_owned())
            .await
            .map(|row| row.is_some())
    }

    /// `$2::numeric` keeps the addition exact (a `numeric` column adds in
    /// decimal; an integer column takes the sum back by an assignment cast,
    /// an out-of-range sum failing with SQLSTATE 22003).
    fn incr_sql(&self, s: &Schema, i: usize) -> String {
        let (table, key) = (&self.table, &self.key);
        let c = quote(&s.columns[i].name);
        format!(
            "WITH __w AS (\
               UPDATE {table} AS __t SET {c} = COALESCE(__t.{c}, 0) + $2::numeric \
               WHERE __t.{key} = {} \
               RETURNING __t.*) \
             SELECT __w.{key}::text, row_to_json(__r)::text FROM __w \
             CROSS JOIN LATERAL (SELECT {}) AS __r",
            param(1, &s.key_type, false),
            self.returning_cols
        )
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
