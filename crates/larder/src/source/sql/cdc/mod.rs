//! Database change notifications (PostgreSQL): keeping the cache right when
//! other programs write the database.
//!
//! A cache only knows about the writes that go through it. When a batch
//! job, another service or a person at `psql` changes a table, the cached
//! rows stay as they were until their TTL runs out. PostgreSQL can tell us
//! instead: a trigger on the table calls `pg_notify` with the changed key,
//! and a connection that `LISTEN`s hears it once the writing transaction
//! commits. So this module has two halves:
//!
//! - [`SqlSource::install_change_triggers`] installs, idempotently, a row
//!   trigger (INSERT, UPDATE, DELETE) and a statement trigger (TRUNCATE) on
//!   the source's table, and returns the [`ChangeChannel`] they notify;
//! - a [`ChangeListener`] `LISTEN`s on one or more channels and hands what
//!   it hears to a [`ChangeHandler`] per channel, typically one that
//!   invalidates the ids in Redis and in every near cache.
//!
//! # What the triggers send
//!
//! The payload of a notification is JSON, at most 7,900 bytes (PostgreSQL
//! refuses payloads of 8,000 bytes or more):
//!
//! - `["<key>"]`: the key of an inserted, updated or deleted row, rendered
//!   as text (`key::text`) and JSON-encoded;
//! - `["<old key>", "<new key>"]`: an UPDATE that changed the key;
//! - `{"purge":"truncate"}`: the table was truncated;
//! - `{"purge":"long key"}`: a key so long that the payload would not fit:
//!   instead of failing the writer's transaction, the whole entity is
//!   purged.
//!
//! A set's or a feed's triggers (`SqlSetSource::install_change_triggers`,
//! `SqlFeedSource::install_change_triggers`) send the same payloads with
//! the owner column's values instead of the key: `["<old owner>", "<new
//! owner>"]` is a row moved to another owner. They are named, and notify a
//! channel, after the column as well (`larder_cdc_<8 hex digits>`), so they
//! live beside an entity's triggers on the same table.
//!
//! Both purge markers reach [`ChangeHandler::truncated`]. Ids are passed
//! through [`SqlSource::canonical_id`] before delivery; a row whose key is
//! NULL has no id in the cache and is skipped.
//!
//! # Skipping larder's own writes
//!
//! A write that larder made itself has already updated the cache; its
//! notification would only cost an extra invalidation (and one extra miss).
//! The triggers skip every change made in a transaction where the setting
//! `larder.origin` is `'larder'`: run [`mark_larder_origin`] (`SELECT
//! set_config('larder.origin', 'larder', true)`, the same as `SET LOCAL
//! larder.origin = 'larder'`) inside the transaction before writing. The
//! setting ends with the transaction. (larder's write path does not set it
//! yet: until it does, its own writes notify too, which is harmless.)
//!
//! # Not supported
//!
//! - **SQLite** has no change notifications: installing triggers or
//!   listening on a SQLite source is an [`Error::Config`]. Keep a SQLite
//!   cache right by writing through larder, or by invalidating after writes.
//! - **Views** (and materialized views) cannot carry these triggers: an
//!   [`Error::Config`]. Install the triggers on the underlying tables and
//!   invalidate the view's entity from their handlers.
//! - **Foreign tables**: the remote server's changes fire no trigger here;
//!   refused with [`Error::Config`] too.
//!
//! [`Error::Config`]: crate::Error::Config

mod cache_handler;
mod listener;
mod triggers;

pub use self::listener::{ChangeListener, ChangeListenerBuilder, ChangeStats};

use super::schema::Schema;
use super::{classify, SqlSource};
use crate::error::Result;
use async_trait::async_trait;

/// Receives what a [`ChangeListener`] hears on one channel.
///
/// Calls for one listener never overlap: the next batch waits until the
/// handler returns. An `Err` is logged and answered, after a backoff, by a
/// call to [`gap`](Self::gap) (and the next ones until one succeeds): a
/// failed invalidation may have left stale entries, and a gap covers every
/// change committed before it.
#[async_trait]
pub trait ChangeHandler: Send + Sync + 'static {
    /// Rows of `entity` with these ids (canonical, de-duplicated, in the
    /// order first heard) were inserted, updated or deleted.
    async fn changed(&self, entity: &str, ids: &[String]) -> Result<()>;

    /// Every row of `entity` may have changed: the table was truncated, or a
    /// key was too long for a notification. Purge the whole entity.
    async fn truncated(&self, entity: &str) -> Result<()>;

    /// Notifications of `entity` may have been missed (the listener lost
    /// its connection, or a notification could not be read): treat
    /// everything cached before now as stale, in Redis and not only in the
    /// near caches (bump the entity's generation). Called once the listener
    /// is listening again, so every change committed after this call is
    /// heard.
    async fn gap(&self, entity: &str) -> Result<()>;
}

/// The notification channel of one source's change triggers; what
/// [`SqlSource::install_change_triggers`] returns and a [`ChangeListener`]
/// subscribes to. A cheap clone.
#[derive(Debug, Clone)]
pub struct ChangeChannel {
    /// The channel name: `larder_<table>_<8 hex digits>` (the digits hash
    /// `schema.table`, so tables of the same name in different schemas get
    /// different channels), at most 63 bytes.
    name: String,
    /// What the notified keys are, for the handler's name and canonical ids.
    ids: ChannelIds,
    /// The source's pool (PostgreSQL only).
    pool: sqlx::PgPool,
}

impl ChangeChannel {
    /// The channel name, as given to `LISTEN` and `pg_notify`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entity whose changes this channel carries (the source's entity
    /// name), as passed to the [`ChangeHandler`].
    pub fn entity(&self) -> &str {
        match &self.ids {
            ChannelIds::Rows(source) => source.entity(),
            ChannelIds::Owners { name, .. } => name,
        }
    }

    /// The canonical id of a notified key (an entity's row id, or a
    /// collection's owner), or why it is none.
    pub(crate) fn canonical(&self, key: &str) -> Result<String> {
        match &self.ids {
            ChannelIds::Rows(source) => source.canonical_id(key),
            ChannelIds::Owners { owner, .. } => Ok(owner.canonical(key)?.text),
        }
    }
}

/// What the keys a channel carries identify.
#[derive(Debug, Clone)]
pub(crate) enum ChannelIds {
    /// Rows of an entity: its source's ids.
    Rows(SqlSource),
    /// Owners of a collection (a set, a feed): canonical as the owner
    /// column's values.
    Owners {
        /// The collection's name.
        name: String,
        /// The owner column, as a key.
        owner: std::sync::Arc<Schema>,
    },
}

pub(crate) use self::triggers::{no_notifications_mysql, no_notifications_sqlite};

/// Installs the change triggers of a collection (a set, a feed) named
/// `name` on its table: each notification carries the values of the
/// `owner` column (`["<owner>"]`, `["<old owner>", "<new owner>"]` for an
/// UPDATE that moves a row to another owner), so the handler invalidates
/// those owners' collections. The triggers and the channel are named after
/// the column too, so they live beside an entity's on the same table.
pub(crate) async fn install_owner_triggers(
    pool: sqlx::PgPool,
    name: &str,
    owner: &Schema,
) -> Result<ChangeChannel> {
    triggers::install(
        pool,
        owner,
        &owner.key.name,
        true,
        ChannelIds::Owners {
            name: name.to_owned(),
            owner: std::sync::Arc::new(owner.clone()),
        },
    )
    .await
}

/// Marks the current transaction as larder's own: the change triggers skip
/// every change it makes, so its writes do not come back as notifications.
///
/// Runs `SELECT set_config('larder.origin', 'larder', true)` (like `SET LOCAL
/// larder.origin = 'larder'`), which lasts until the transaction ends. Outside
/// a transaction block it covers only this one statement, that is nothing:
/// call it on a transaction (`&mut *tx`).
pub async fn mark_larder_origin(conn: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::query("SELECT set_config('larder.origin', 'larder', true)")
        .execute(conn)
        .await
        .map_err(|e| classify("larder.origin", e))?;
    Ok(())
}

impl SqlSource {
    /// Installs the change triggers on this source's table and returns the
    /// channel they notify. Each notification is JSON: `["<key>"]` for a
    /// changed row, `["<old key>", "<new key>"]` for an UPDATE of the key,
    /// `{"purge": …}` for a TRUNCATE or a key too long to send (the
    /// whole entity is then purged).
    ///
    /// Idempotent and safe to run from many processes at once (for example
    /// at every start of a service): the installers take a transaction-level
    /// advisory lock, and when the function and both triggers are already in
    /// place nothing is written and the table is not locked. Otherwise the
    /// function is replaced and the triggers created (`CREATE OR REPLACE`),
    /// which briefly takes a `SHARE ROW EXCLUSIVE` lock on the table.
    ///
    /// Needs the right to create functions in the table's schema and
    /// triggers on the table (its owner, usually).
    ///
    /// # Errors
    ///
    /// - [`Error::Config`](crate::Error::Config): a SQLite source (SQLite
    ///   has no change notifications), a view or materialized view (views
    ///   cannot carry these triggers), or a foreign table;
    /// - [`Error::SourceUnavailable`](crate::Error::SourceUnavailable) or
    ///   [`Error::Source`](crate::Error::Source): the database could not be
    ///   reached, or refused (no privilege, say).
    pub async fn install_change_triggers(&self) -> Result<ChangeChannel> {
        let schema = &self.inner.schema;
        let pool = triggers::postgres_pool(&self.inner.backend, &schema.entity)?;
        triggers::install(
            pool,
            schema,
            &schema.key.name,
            false,
            ChannelIds::Rows(self.clone()),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::listener::{parse_payload, Payload};

    #[test]
    fn payloads() {
        assert_eq!(
            parse_payload(r#"["1"]"#),
            Some(Payload::Keys(vec!["1".into()]))
        );
        assert_eq!(
            parse_payload(r#"["a", "b \"c\""]"#),
            Some(Payload::Keys(vec!["a".into(), "b \"c\"".into()]))
        );
        assert_eq!(parse_payload("[null]"), Some(Payload::Keys(vec![])));
        assert_eq!(
            parse_payload(r#"{"purge":"truncate"}"#),
            Some(Payload::Purge)
        );
        assert_eq!(
            parse_payload(r#"{"purge":"long key"}"#),
            Some(Payload::Purge)
        );
        assert_eq!(parse_payload("garbage"), None);
        assert_eq!(parse_payload("[1]"), None);
        assert_eq!(parse_payload("{}"), None);
    }
}
