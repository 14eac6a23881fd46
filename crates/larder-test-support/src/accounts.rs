//! The `accounts` fixture of the write tests: a schema of the test's own on
//! the shared PostgreSQL with an `accounts` table that has a column default
//! (`status`), a trigger-set column (`owner_upper`) and a CHECK constraint
//! (`balance >= 0`, named `balance_not_negative`), and an `items` table of
//! `(id, version)`.
//!
//! [`Account`] is also the row of the MariaDB write-back tests, whose
//! table has the same columns.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// A row of `accounts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// The primary key.
    pub id: i64,
    /// Who owns it (the trigger upper-cases it into `owner_upper`).
    pub owner: String,
    /// Never negative: the CHECK constraint `balance_not_negative`.
    pub balance: i64,
    /// Set by the column default (`'new'`) when not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Set by the trigger, never by the tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_upper: Option<String>,
}

/// An account as written: no status (the default applies), no upper-cased owner.
pub fn account(id: i64, owner: &str, balance: i64) -> Account {
    Account {
        id,
        owner: owner.into(),
        balance,
        status: None,
        owner_upper: None,
    }
}

/// The schema and an admin pool (2 connections) to check the database with.
pub struct Db {
    /// A pool of 2 connections for checks made behind the cache's back.
    pub admin: PgPool,
    /// The schema of the test's own that holds both tables.
    pub schema: String,
}

impl Db {
    /// Creates a unique schema with both tables.
    pub async fn new() -> Db {
        let schema = crate::unique("acct");
        let admin = crate::pg_pool(2).await;
        for sql in [
            format!("CREATE SCHEMA {schema}"),
            format!(
                "CREATE TABLE {schema}.accounts (id bigint PRIMARY KEY, owner text NOT NULL,
                 balance bigint NOT NULL CONSTRAINT balance_not_negative CHECK (balance >= 0),
                 status text NOT NULL DEFAULT 'new', owner_upper text)"
            ),
            format!(
                "CREATE FUNCTION {schema}.upper_owner() RETURNS trigger AS $$
                 BEGIN NEW.owner_upper := upper(NEW.owner); RETURN NEW; END $$ LANGUAGE plpgsql"
            ),
            format!(
                "CREATE TRIGGER upper_owner BEFORE INSERT OR UPDATE ON {schema}.accounts
                 FOR EACH ROW EXECUTE FUNCTION {schema}.upper_owner()"
            ),
            format!("CREATE TABLE {schema}.items (id bigint PRIMARY KEY, version bigint NOT NULL)"),
        ] {
            sqlx::query(&sql).execute(&admin).await.expect(&sql);
        }
        Db { admin, schema }
    }

    /// `<schema>.accounts`
    pub fn table(&self) -> String {
        format!("{}.accounts", self.schema)
    }

    /// An account's `(owner, balance, status, owner_upper)`, if the row exists.
    pub async fn row(&self, id: i64) -> Option<(String, i64, String, Option<String>)> {
        sqlx::query_as(&format!(
            "SELECT owner, balance, status, owner_upper FROM {} WHERE id = $1",
            self.table()
        ))
        .bind(id)
        .fetch_optional(&self.admin)
        .await
        .expect("select")
    }

    /// How many accounts there are.
    pub async fn count(&self) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {}", self.table()))
            .fetch_one(&self.admin)
            .await
            .expect("count")
    }

    /// Drops the schema.
    pub async fn drop(self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.admin)
            .await
            .expect("drop schema");
    }
}
