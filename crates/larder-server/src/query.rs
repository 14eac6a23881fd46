//! A read-only entity defined by a SQL query (`query = "SELECT ..."`).
//!
//! Why it lives in the service: the library's `SqlSource` maps a table or
//! view only. A query entity wraps the configured query as a subquery and
//! filters it by the key column, letting PostgreSQL build each row's JSON:
//!
//! ```sql
//! SELECT row_to_json(q)::text FROM (<query>) q WHERE q."<key>" = $1
//! ```
//!
//! PostgreSQL only (config validation refuses it on SQLite, where a view
//! does the same job). The key column's type comes from describing the
//! query at startup: 2/4/8-byte integers canonicalise ids like the
//! library (`007` → `7`, `abc` refused); any other type compares as text.

use crate::config::is_ident;
use async_trait::async_trait;
use larder::source::classify_sql_error;
use larder::{Error, RawJson, Result, Source};
use sqlx::{Column as _, Executor as _, PgPool, Row as _, TypeInfo as _};
use std::collections::HashMap;
use std::sync::Arc;

/// A query as a read-only [`Source`] of raw JSON rows.
///
/// A cheap clone (shares the pool and the prepared SQL text).
#[derive(Debug, Clone)]
pub struct QuerySource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    entity: String,
    pool: PgPool,
    int_key: bool,
    columns: Vec<String>,
    one: String,
    many: String,
    page: String,
}

impl QuerySource {
    /// Describes `query` and prepares the SQL. `columns` empty: every column.
    ///
    /// A query that does not run, or lacks the key or a listed column, is
    /// [`Error::Config`]; an unreachable database is [`Error::SourceUnavailable`].
    pub async fn build(
        pool: PgPool,
        entity: &str,
        query: &str,
        key: &str,
        columns: &[String],
    ) -> Result<QuerySource> {
        if !is_ident(key) || columns.iter().any(|c| !is_ident(c)) {
            return Err(Error::Config("invalid column name".into()));
        }
        let query = query.trim().trim_end_matches(';');
        let probe = format!("SELECT * FROM ({query}) q LIMIT 0");
        let described =
            (&pool)
                .describe(&probe)
                .await
                .map_err(|e| match classify_sql_error(entity, e) {
                    e @ Error::SourceUnavailable { .. } => e,
                    other => {
                        Error::Config(format!("the query does not run: {}", cause_text(&other)))
                    }
                })?;
        let found: Vec<(String, String)> = described
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
            .collect();
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        let Some((_, key_type)) = found.iter().find(|(n, _)| n == key) else {
            return Err(Error::Config(format!(
                "key column `{key}` is not among the query's columns ({})",
                names.join(", ")
            )));
        };
        for c in columns {
            if !names.contains(&c.as_str()) {
                return Err(Error::Config(format!(
                    "column `{c}` is not among the query's columns ({})",
                    names.join(", ")
                )));
            }
        }
        let int_key = matches!(key_type.as_str(), "INT2" | "INT4" | "INT8");
        let json = if columns.is_empty() {
            "row_to_json(q)::text".to_owned()
        } else {
            let pairs: Vec<String> = columns
                .iter()
                .map(|c| format!("'{c}', q.\"{c}\""))
                .collect();
            format!("json_build_object({})::text", pairs.join(", "))
        };
        let k = format!("q.\"{key}\"");
        let (eq, any, after, order) = if int_key {
            (
                format!("{k} = $1"),
                format!("{k} = ANY($1::int8[])"),
                format!("($1::int8 IS NULL OR {k} > $1::int8)"),
                k.clone(),
            )
        } else {
            (
                format!("{k}::text = $1"),
                format!("{k}::text = ANY($1::text[])"),
                format!("($1::text IS NULL OR {k}::text > $1::text)"),
                format!("{k}::text"),
            )
        };
        Ok(QuerySource {
            inner: Arc::new(Inner {
                entity: entity.to_owned(),
                pool,
                int_key,
                columns: if columns.is_empty() {
                    names.iter().map(|s| (*s).to_owned()).collect()
                } else {
                    columns.to_vec()
                },
                one: format!("SELECT {json} FROM ({query}) q WHERE {eq} LIMIT 1"),
                many: format!("SELECT {k}::text, {json} FROM ({query}) q WHERE {any}"),
                page: format!(
                    "SELECT {k}::text, {json} FROM ({query}) q WHERE {after} ORDER BY {order} LIMIT $2"
                ),
            }),
        })
    }

    /// The columns of a row, in JSON order.
    pub fn column_names(&self) -> &[String] {
        &self.inner.columns
    }

    fn canonical(&self, id: &str) -> Result<String> {
        if id.is_empty() {
            return Err(invalid_id(id, "an id cannot be empty"));
        }
        if self.inner.int_key {
            return id.parse::<i64>().map(|n| n.to_string()).map_err(|_| {
                invalid_id(
                    id,
                    &format!("the key of `{}` is an integer", self.inner.entity),
                )
            });
        }
        Ok(id.to_owned())
    }

    /// A `(key as text, row JSON)` result row.
    fn id_and_row(&self, row: &sqlx::postgres::PgRow) -> Result<(String, RawJson)> {
        let get = |i: usize| -> Result<String> {
            row.try_get(i)
                .map_err(|e| classify_sql_error(&self.inner.entity, e))
        };
        let id = get(0)?;
        let raw = self.raw(&id, get(1)?)?;
        Ok((id, raw))
    }

    fn raw(&self, id: &str, json: String) -> Result<RawJson> {
        RawJson::from_bytes(json).map_err(|_| Error::Decode {
            entity: self.inner.entity.clone(),
            id: id.to_owned(),
            cause: Arc::new(Msg("the query returned a row that is not JSON".into())),
        })
    }
}

#[async_trait]
impl Source<RawJson> for QuerySource {
    fn canonical_id(&self, id: &str) -> Result<String> {
        self.canonical(id)
    }

    async fn load(&self, id: &str) -> Result<Option<RawJson>> {
        let id = self.canonical(id)?;
        let q = sqlx::query_scalar::<_, String>(&self.inner.one);
        let q = if self.inner.int_key {
            q.bind(id.parse::<i64>().unwrap_or_default())
        } else {
            q.bind(id.clone())
        };
        let row = q
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| classify_sql_error(&self.inner.entity, e))?;
        row.map(|json| self.raw(&id, json)).transpose()
    }

    async fn load_many(&self, ids: &[String]) -> Result<HashMap<String, RawJson>> {
        let ids = ids
            .iter()
            .map(|id| self.canonical(id))
            .collect::<Result<Vec<_>>>()?;
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let q = sqlx::query(&self.inner.many);
        let q = if self.inner.int_key {
            q.bind(
                ids.iter()
                    .map(|i| i.parse::<i64>().unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
        } else {
            q.bind(ids)
        };
        let rows = q
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| classify_sql_error(&self.inner.entity, e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let (id, raw) = self.id_and_row(&row)?;
            // A query may return a key twice; the first row wins, like `load`.
            out.entry(id).or_insert(raw);
        }
        Ok(out)
    }

    async fn load_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, RawJson)>> {
        let after = after.map(|a| self.canonical(a)).transpose()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let q = sqlx::query(&self.inner.page);
        let q = if self.inner.int_key {
            q.bind(after.map(|a| a.parse::<i64>().unwrap_or_default()))
        } else {
            q.bind(after)
        };
        let rows = q
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| classify_sql_error(&self.inner.entity, e))?;
        rows.iter().map(|row| self.id_and_row(row)).collect()
    }

    fn read_only(&self) -> Error {
        Error::ReadOnly {
            entity: self.inner.entity.clone(),
            reason: "it is defined by a query".into(),
        }
    }
}

/// A plain message as an error cause.
#[derive(Debug)]
struct Msg(String);

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Msg {}

fn invalid_id(id: &str, reason: &str) -> Error {
    Error::InvalidId {
        id: id.chars().take(80).collect(),
        reason: reason.to_owned(),
    }
}

fn cause_text(e: &Error) -> String {
    match e {
        Error::Source { cause, .. } | Error::SourceUnavailable { cause, .. } => cause.to_string(),
        other => other.to_string(),
    }
}
