//! SQL sources (PostgreSQL, SQLite). Placeholder until the SQL source lands.

use super::Source;
use crate::error::Result;
use async_trait::async_trait;

/// A connection pool to PostgreSQL or SQLite.
#[derive(Debug, Clone)]
pub enum SqlPool {
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
    /// SQLite.
    Sqlite(sqlx::SqlitePool),
}

/// A table or view of a SQL database as a source.
#[derive(Debug, Clone)]
pub struct SqlSource {}

/// Builds a [`SqlSource`].
#[derive(Debug)]
pub struct SqlSourceBuilder {}

#[async_trait]
impl<V: Send + Sync + 'static> Source<V> for SqlSource {
    async fn load(&self, _id: &str) -> Result<Option<V>> {
        Ok(None)
    }
}
