//! [`SqlFeedSource`]: a table's rows grouped by an owner column, in a
//! configured order, as one feed per owner (PostgreSQL).
//!
//! Why a sort key beside each row: an append lands at the head of a
//! cached feed only if the new row sorts before the current head, and
//! that comparison is made in Rust on values the database produced
//! with its own ordering rules — integers as integers, text by bytes
//! (the query orders text `COLLATE "C"`), timestamps and dates as exact
//! integers (microseconds, days) — never on formatted text or on Lua's
//! doubles. The key is a JSON array, one value per `order` column.
//!
//! Checked at build: every `order` column exists, is `NOT NULL`, of an
//! integer, text, timestamp or date type, and the last one is the item
//! key (so the order is total). SQLite and MariaDB are refused
//! ([`Error::Config`]) for now.

use super::collection::pg_param;
use super::schema::{quote, Schema, TableName};
use super::{classify, postgres, SqlPool};
use crate::collection::{FeedItem, FeedSource};
use crate::error::{Error, Result, SchemaPart};
use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::Row;
use std::cmp::Ordering;
use std::sync::Arc;

/// One feed per owner over a table; a cheap clone.
#[derive(Debug, Clone)]
pub struct SqlFeedSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    owner: Schema,
    item: Schema,
    /// Per order column: descending?
    desc: Vec<bool>,
    pool: sqlx::PgPool,
    table: String,
    select: String,
    returning: String,
    delete: String,
}

/// Builds a [`SqlFeedSource`]; consuming, finish with [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct SqlFeedSourceBuilder {
    pool: SqlPool,
    table: String,
    owner: String,
    item_key: String,
    order: Vec<String>,
    columns: Vec<String>,
    name: Option<String>,
}

impl SqlFeedSource {
    /// Starts a feed source over `table` (`schema.table`).
    pub fn builder(pool: SqlPool, table: &str) -> SqlFeedSourceBuilder {
        SqlFeedSourceBuilder {
            pool,
            table: table.to_owned(),
            owner: "owner".to_owned(),
            item_key: "id".to_owned(),
            order: Vec::new(),
            columns: Vec::new(),
            name: None,
        }
    }
}

impl SqlFeedSourceBuilder {
    /// The column grouping rows into feeds. Default: `"owner"`.
    pub fn owner(mut self, column: &str) -> Self {
        column.clone_into(&mut self.owner);
        self
    }

    /// The column identifying an item. Default: `"id"`.
    pub fn item_key(mut self, column: &str) -> Self {
        column.clone_into(&mut self.item_key);
        self
    }

    /// The order, `"column asc|desc"` each, ending with the item key.
    /// Default: `["<item_key> desc"]`.
    pub fn order(mut self, order: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.order = order.into_iter().map(Into::into).collect();
        self
    }

    /// The projection of each item; empty: all columns. Default: empty.
    pub fn columns(mut self, columns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.columns = columns.into_iter().map(Into::into).collect();
        self
    }

    /// The feed's name in errors. Default: the table name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Reads the schema, checks the order (see the module docs) and builds.
    pub async fn build(self) -> Result<SqlFeedSource> {
        let t = &self.table;
        let table = TableName::parse(t)
            .map_err(|e| Error::schema(t, SchemaPart::Table, None, e.to_string()))?;
        let SqlPool::Postgres(pool) = self.pool else {
            return Err(Error::Config(format!(
                "feed over `{t}`: feeds need PostgreSQL for now"
            )));
        };
        let name = self.name.unwrap_or_else(|| table.name.clone());
        let o = postgres::describe(&pool, &name, &table, &self.owner).await?;
        let i = postgres::describe(&pool, &name, &table, &self.item_key).await?;
        let owner = Schema::new(name.clone(), o, &self.owner, None)?;
        let item = Schema::new(name.clone(), i, &self.item_key, None)?;
        let order = if self.order.is_empty() {
            vec![format!("{} desc", self.item_key)]
        } else {
            self.order
        };
        let bad = |col: &str, why: String| Error::schema(t, SchemaPart::Column, Some(col), why);
        let mut desc = Vec::new();
        let mut sorts = Vec::new();
        let mut order_by = Vec::new();
        for (n, spec) in order.iter().enumerate() {
            let mut words = spec.split_whitespace();
            let col = words.next().unwrap_or_default();
            let dir = words.next().unwrap_or("asc").to_ascii_lowercase();
            if words.next().is_some() || !matches!(dir.as_str(), "asc" | "desc") {
                return Err(bad(
                    col,
                    format!("order `{spec}`: use \"column asc\" or \"column desc\""),
                ));
            }
            let Some(c) = owner.columns.iter().find(|c| c.name == col) else {
                return Err(bad(col, format!("order column `{col}` not found in `{t}`")));
            };
            if !c.not_null {
                return Err(bad(col, format!("order column `{col}` must be NOT NULL")));
            }
            let q = format!("t.{}", quote(col));
            let ty = c.sql_type.as_str();
            let (sort, by) = if matches!(ty, "smallint" | "integer" | "bigint") {
                (q.clone(), q)
            } else if ty == "text" || ty.starts_with("character varying") {
                (q.clone(), format!("{q} COLLATE \"C\""))
            } else if ty.starts_with("timestamp") {
                (format!("(extract(epoch from {q}) * 1000000)::int8"), q)
            } else if ty == "date" {
                (format!("({q} - date '1970-01-01')"), q)
            } else {
                return Err(bad(col, format!("order column `{col}` ({ty}): use an integer, text, timestamp or date column")));
            };
            if n + 1 == order.len() && col != self.item_key {
                return Err(bad(
                    col,
                    format!("the order must end with the item key `{}`", self.item_key),
                ));
            }
            desc.push(dir == "desc");
            sorts.push(sort);
            order_by.push(format!("{by} {}", dir.to_ascii_uppercase()));
        }
        let qt = format!(
            "{}.{}",
            quote(owner.table.schema.as_deref().unwrap_or("public")),
            quote(&owner.table.name)
        );
        let projection = if self.columns.is_empty() {
            "row_to_json(t)".to_owned()
        } else {
            let mut parts = Vec::new();
            for c in &self.columns {
                if !owner.columns.iter().any(|x| x.name == *c) {
                    return Err(bad(c, format!("column `{c}` not found in `{t}`")));
                }
                parts.push(format!("'{}', t.{}", c.replace('\'', "''"), quote(c)));
            }
            format!("json_build_object({})", parts.join(", "))
        };
        let returning = format!(
            "t.{}::text, json_build_array({})::text, {projection}::text",
            quote(&self.item_key),
            sorts.join(", ")
        );
        let p1 = pg_param(1, &owner.key_type);
        let select = format!(
            "SELECT {returning} FROM {qt} AS t WHERE t.{} = {p1} ORDER BY {} LIMIT $2 OFFSET $3",
            quote(&self.owner),
            order_by.join(", ")
        );
        let delete = format!(
            "DELETE FROM {qt} WHERE {} = {p1} AND {} = {}",
            quote(&self.owner),
            quote(&self.item_key),
            pg_param(2, &item.key_type)
        );
        Ok(SqlFeedSource {
            inner: Arc::new(Inner {
                name,
                owner,
                item,
                desc,
                pool,
                table: qt,
                select,
                returning,
                delete,
            }),
        })
    }
}

macro_rules! bind_key {
    ($q:expr, $k:expr) => {
        match $k.int {
            Some(n) => $q.bind(n),
            None => $q.bind($k.text.clone()),
        }
    };
}

fn item_of(row: &sqlx::postgres::PgRow) -> sqlx::Result<FeedItem> {
    Ok(FeedItem {
        id: row.try_get(0)?,
        sort: row.try_get(1)?,
        row: row.try_get(2)?,
    })
}

impl SqlFeedSource {
    /// Installs change triggers on the feed's table and returns their
    /// channel: a row inserted, deleted or changed notifies its owner, an
    /// UPDATE that moves a row to another owner notifies both, a TRUNCATE
    /// purges; give the channel to a [`ChangeListener`](crate::ChangeListener)
    /// with the [`FeedCache`](crate::FeedCache) as its handler. Idempotent,
    /// as [`SqlSource::install_change_triggers`](crate::SqlSource::install_change_triggers).
    pub async fn install_change_triggers(&self) -> Result<super::ChangeChannel> {
        super::cdc::install_owner_triggers(
            self.inner.pool.clone(),
            &self.inner.name,
            &self.inner.owner,
        )
        .await
    }
}

#[async_trait]
impl FeedSource for SqlFeedSource {
    fn canonical_owner(&self, raw: &str) -> Result<String> {
        Ok(self.inner.owner.canonical(raw)?.text)
    }

    fn canonical_item(&self, raw: &str) -> Result<String> {
        Ok(self.inner.item.canonical(raw)?.text)
    }

    fn compare(&self, a: &str, b: &str) -> Ordering {
        let parse = |s: &str| serde_json::from_str::<Vec<Value>>(s).unwrap_or_default();
        let (a, b) = (parse(a), parse(b));
        for ((x, y), desc) in a.iter().zip(&b).zip(&self.inner.desc) {
            let o = match (x, y) {
                (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    _ => Ordering::Equal,
                },
                (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
                _ => Ordering::Equal,
            };
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }

    async fn load(&self, owner: &str, offset: u64, limit: u64) -> Result<Vec<FeedItem>> {
        let o = self.inner.owner.canonical(owner)?;
        let rows = bind_key!(sqlx::query(&self.inner.select), o)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| classify(&self.inner.name, e))?;
        rows.iter()
            .map(item_of)
            .collect::<sqlx::Result<_>>()
            .map_err(|e| classify(&self.inner.name, e))
    }

    async fn append(&self, owner: &str, row: &Map<String, Value>) -> Result<FeedItem> {
        let s = &self.inner.owner;
        let o = s.validate(owner, row)?;
        let mut row = row.clone();
        row.insert(s.key.name.clone(), s.key_json(&o));
        let cols: Vec<String> = row.keys().map(|c| quote(c)).collect();
        let cols = cols.join(", ");
        let sql = format!(
            "INSERT INTO {t} AS t ({cols}) SELECT {cols} FROM json_populate_record(null::{t}, $1::json) RETURNING {r}",
            t = self.inner.table,
            r = self.inner.returning
        );
        let stored = sqlx::query(&sql)
            .bind(Value::Object(row).to_string())
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| classify(&self.inner.name, e))?;
        item_of(&stored).map_err(|e| classify(&self.inner.name, e))
    }

    async fn delete(&self, owner: &str, item: &str) -> Result<bool> {
        let o = self.inner.owner.canonical(owner)?;
        let i = self.inner.item.canonical(item)?;
        let done = bind_key!(bind_key!(sqlx::query(&self.inner.delete), o), i)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| classify(&self.inner.name, e))?;
        Ok(done.rows_affected() > 0)
    }
}
