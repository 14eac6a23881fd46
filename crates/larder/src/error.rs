//! One error type for the whole library.
//!
//! Every failure says what failed and, where it helps, what to do about it.
//! [`Error::kind`] classifies it ([`ErrorKind`]): database refusals are
//! sorted where they arise (a constraint's kind from the driver, a value
//! the database refused) so that callers — the service's HTTP and RESP
//! mapping, the fail-open logic — never read message text or SQLSTATEs.
//! The classifiers (`is_store_unavailable`, `is_timeout`, `is_source_error`,
//! `is_bad_input`) are shorthands over the same facts.
//!
//! `Error` is `Clone`: the error of a load shared by many waiters
//! (single-flight) is delivered to every one of them.

use std::sync::Arc;
use std::time::Duration;

/// A boxed, shareable underlying cause.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// `Result` with larder's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in larder.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A prefix or entity name is outside `[a-z0-9_-]` or empty.
    #[error("invalid {what} name {name:?}: use 1-64 characters from [a-z0-9_-]")]
    InvalidName {
        /// Which name was invalid (`prefix` or `entity`).
        what: &'static str,
        /// The name as given.
        name: String,
    },

    /// An id is empty, too long, or does not fit the key column's type.
    #[error("invalid id {id:?}: {reason}")]
    InvalidId {
        /// The id as given (cut to 80 characters).
        id: String,
        /// Why it was refused.
        reason: String,
    },

    /// A write-back increment would take a column beyond its range (or a
    /// delta beyond 64 bits): nothing was recorded. The request was well
    /// formed; the row's current value makes the sum impossible.
    #[error("row {id:?} of entity `{entity}`: {reason}; nothing was recorded")]
    OutOfRange {
        /// The entity.
        entity: String,
        /// The id.
        id: String,
        /// Which column, and the sum it would hold.
        reason: String,
    },

    /// A row refused before anything was written: an unknown column, a
    /// value of the wrong JSON type, `null` into a NOT NULL column.
    #[error("row {id:?} of entity `{entity}` refused, nothing was written: {reason}")]
    InvalidRow {
        /// The entity.
        entity: String,
        /// The row's id.
        id: String,
        /// What is wrong with it, naming the column.
        reason: String,
    },

    /// Configuration that cannot work (a bad URL, a bad combination).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// One setting is outside what it may be: a limit, a range, or an
    /// order between settings (`load_timeout` below `lease_ttl`).
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidSetting {
        /// The setting, as its builder method or option field is named:
        /// `ttl`, `load_timeout`, `near.ttl`, `write_back.batch`.
        setting: &'static str,
        /// What it must be, with the value given.
        reason: String,
    },

    /// The table a source was built for does not fit: it, its key column
    /// or a chosen column is missing, or of a type that cannot work.
    #[error("{reason}")]
    Schema {
        /// The table (or view) as named.
        table: String,
        /// Which part of it is wrong.
        part: SchemaPart,
        /// The column concerned, for [`SchemaPart::Key`] and [`SchemaPart::Column`].
        column: Option<String>,
        /// What is wrong and what to do, naming the table.
        reason: String,
    },

    /// A value could not be serialized by the cache's codec.
    #[error("cannot encode a value of entity `{entity}`: {cause}")]
    Encode {
        /// The entity whose value failed.
        entity: String,
        /// The codec's error.
        cause: Cause,
    },

    /// Bytes could not be turned into a value: a source row that does not
    /// deserialize into `V`, or a cached payload the codec does not accept.
    #[error("cannot decode a value of entity `{entity}` (id {id:?}): {cause}")]
    Decode {
        /// The entity whose value failed.
        entity: String,
        /// The id whose value failed.
        id: String,
        /// The codec's error.
        cause: Cause,
    },

    /// A cached entry is not a valid larder envelope (another program
    /// writing larder's keys, or a format this build does not read).
    #[error("corrupt cache entry: {0}")]
    Envelope(Cause),

    /// The cache store (Redis) cannot be reached or timed out.
    #[error(
        "cache store `{store}` is unavailable: {cause}; check that it runs and the URL is right"
    )]
    StoreUnavailable {
        /// The store (URL without credentials).
        store: String,
        /// The client error.
        cause: Cause,
    },

    /// The store answered, but with an error (OOM, a script error, wrong type).
    #[error("cache store `{store}` refused the command: {cause}")]
    Store {
        /// The store (URL without credentials).
        store: String,
        /// The server's error.
        cause: Cause,
    },

    /// The shard layout recorded in the store differs from the configured one.
    #[error("entity `{entity}` was first used with {recorded}, now configured with {configured}: changing the shard layout would orphan keys; keep the old one or use a new prefix")]
    LayoutMismatch {
        /// The entity.
        entity: String,
        /// The layout found in the store.
        recorded: String,
        /// The layout of this cache.
        configured: String,
    },

    /// The source (database) cannot be reached: connection refused, pool timeout, I/O.
    #[error("source of entity `{entity}` is unavailable: {cause}")]
    SourceUnavailable {
        /// The entity.
        entity: String,
        /// The driver error.
        cause: Cause,
    },

    /// The source answered with an error (a bad query, a constraint
    /// violation); [`Error::kind`] tells which constraint, or that the
    /// database refused a value.
    #[error("source of entity `{entity}` failed: {cause}")]
    Source {
        /// The entity.
        entity: String,
        /// SQLSTATE (SQLite: its result code; MariaDB: its error number),
        /// when the database gave one.
        code: Option<String>,
        /// The driver error.
        cause: Cause,
    },

    /// A load did not finish within its timeout.
    #[error("loading entity `{entity}` id {id:?} took longer than {after:?}")]
    LoadTimeout {
        /// The entity.
        entity: String,
        /// The id.
        id: String,
        /// The timeout that ran out.
        after: Duration,
    },

    /// The entity does not accept writes (a view, a query, or a read-only policy).
    #[error("entity `{entity}` is read-only: {reason}")]
    ReadOnly {
        /// The entity.
        entity: String,
        /// Why.
        reason: String,
    },

    /// A cache-aside loader returned an error.
    #[error("loader for entity `{entity}` failed: {cause}")]
    Loader {
        /// The entity.
        entity: String,
        /// The loader's error.
        cause: Cause,
    },

    /// Write-back cannot run on this store: it cannot prove that dirty
    /// records survive a crash, or it may evict them.
    #[error("write-back for entity `{entity}` refused on store `{store}`: {reason}")]
    NotDurable {
        /// The entity.
        entity: String,
        /// The store (URL without credentials).
        store: String,
        /// What is missing and how to fix it.
        reason: String,
    },

    /// The write-back backlog is at its bound (`max_backlog`) and did not
    /// drain within the wait: retry later.
    #[error("write-back backlog of entity `{entity}` is full ({backlog} of {max} writes pending); retry later or raise max_backlog")]
    BacklogFull {
        /// The entity.
        entity: String,
        /// The backlog seen.
        backlog: u64,
        /// The configured bound.
        max: u64,
    },

    /// A flush was refused by the database's fence: another flusher owns
    /// the shard with a newer epoch, so this one's batch was rolled back.
    #[error("flush of entity `{entity}` shard {shard} fenced: epoch {epoch} is older than the database's {current}")]
    Fenced {
        /// The entity.
        entity: String,
        /// The shard.
        shard: u16,
        /// This flusher's epoch.
        epoch: u64,
        /// The epoch recorded in the database.
        current: u64,
    },

    /// The write-back cache was closed
    /// ([`Cache::close`](crate::Cache::close)): it accepts no more writes
    /// (a cache without write-back has nothing to drain and keeps
    /// accepting them).
    #[error("cache of entity `{entity}` is closed: it accepts no more writes")]
    Closed {
        /// The entity.
        entity: String,
    },

    /// A compare-and-set write (write-back `patch` or `delete`) kept losing
    /// to other writers of the same id: nothing was written; retry.
    #[error("id {id:?} of entity `{entity}` kept changing under {attempts} attempts to update it; retry")]
    Busy {
        /// The entity.
        entity: String,
        /// The id.
        id: String,
        /// How many attempts were made.
        attempts: u32,
    },

    /// The entity cannot do this operation as configured (for example an
    /// increment under write-back on a `string` entity): nothing was
    /// written; the reason says what configuration would allow it.
    #[error("entity `{entity}` does not support {what}: {reason}")]
    Unsupported {
        /// The entity.
        entity: String,
        /// The operation refused.
        what: String,
        /// Why, and what would allow it.
        reason: String,
    },

    /// A tag is empty or too long, or an entry has too many tags.
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The tag as given (cut to 80 characters).
        tag: String,
        /// Why it was refused.
        reason: String,
    },

    /// One of larder's own invariants did not hold: a bug, not something
    /// the caller or the configuration can fix. Please report it.
    #[error("internal error (a larder bug): {what}")]
    Internal {
        /// Which invariant broke.
        what: String,
    },
}

/// What kind of failure an [`Error`] is, from [`Error::kind`]: what a
/// caller decides on (retry, report to the client, fix the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A prefix or entity name was refused ([`Error::InvalidName`]).
    InvalidName,
    /// An id was refused ([`Error::InvalidId`]).
    InvalidId,
    /// A row was refused before anything was written ([`Error::InvalidRow`]).
    InvalidRow,
    /// A tag was refused ([`Error::InvalidTag`]).
    InvalidTag,
    /// A value could not be encoded ([`Error::Encode`]).
    Encode,
    /// Bytes could not be decoded into a value ([`Error::Decode`]).
    Decode,
    /// A cached entry is not a valid envelope ([`Error::Envelope`]).
    CorruptEntry,
    /// A setting is out of its range ([`Error::InvalidSetting`]).
    InvalidSetting,
    /// A configuration that cannot work ([`Error::Config`]).
    Config,
    /// The source's table does not fit ([`Error::Schema`]).
    Schema(SchemaPart),
    /// The entity does not accept writes ([`Error::ReadOnly`]).
    ReadOnly,
    /// The database refused a row for one of its constraints.
    Conflict(ConstraintKind),
    /// The database refused a value of a row: out of range, or malformed
    /// for its column's type; or a write-back increment's sum is out of
    /// its column's range ([`Error::OutOfRange`]).
    InvalidValue,
    /// The database answered with another error ([`Error::Source`]).
    Source,
    /// The database cannot be reached ([`Error::SourceUnavailable`]).
    SourceUnavailable,
    /// A cache-aside loader failed ([`Error::Loader`]).
    Loader,
    /// A load ran out of time ([`Error::LoadTimeout`]).
    Timeout,
    /// The store cannot be reached ([`Error::StoreUnavailable`]).
    StoreUnavailable,
    /// The store refused a command ([`Error::Store`]).
    Store,
    /// The store's recorded shard layout differs ([`Error::LayoutMismatch`]).
    LayoutMismatch,
    /// Write-back refused for a store that is not durable ([`Error::NotDurable`]).
    NotDurable,
    /// The write-back backlog is full ([`Error::BacklogFull`]).
    BacklogFull,
    /// A flush was refused by a newer flusher's fence ([`Error::Fenced`]).
    Fenced,
    /// The cache is closed ([`Error::Closed`]).
    Closed,
    /// A compare-and-set kept losing to other writers ([`Error::Busy`]).
    Busy,
    /// The operation is not supported as configured ([`Error::Unsupported`]).
    Unsupported,
    /// A broken invariant ([`Error::Internal`]).
    Internal,
}

/// Which constraint a database refused a row for, from the driver's
/// classification (sqlx's `DatabaseError::kind()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConstraintKind {
    /// A unique index or primary key already holds the value.
    Unique,
    /// A referenced row is missing, or the row is still referenced.
    ForeignKey,
    /// `NULL` into a `NOT NULL` column.
    NotNull,
    /// A `CHECK` constraint refused the row.
    Check,
    /// Another integrity constraint (an exclusion constraint, a trigger's
    /// constraint error).
    Other,
}

/// The part of a table an [`Error::Schema`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SchemaPart {
    /// The table or view itself: missing, or its name is invalid.
    Table,
    /// The key column: missing, or of a type that cannot be a key.
    Key,
    /// A chosen column: missing, listed twice, or its name is invalid.
    Column,
}

impl Error {
    /// What kind of failure this is. Database refusals carry the kind the
    /// driver gave them where they arose: [`ErrorKind::Conflict`] with the
    /// constraint, [`ErrorKind::InvalidValue`] for a value the database
    /// refused, [`ErrorKind::Source`] for anything else it answered.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidName { .. } => ErrorKind::InvalidName,
            Error::InvalidId { .. } => ErrorKind::InvalidId,
            Error::InvalidRow { .. } => ErrorKind::InvalidRow,
            Error::OutOfRange { .. } => ErrorKind::InvalidValue,
            Error::InvalidTag { .. } => ErrorKind::InvalidTag,
            Error::Config(_) => ErrorKind::Config,
            Error::InvalidSetting { .. } => ErrorKind::InvalidSetting,
            Error::Schema { part, .. } => ErrorKind::Schema(*part),
            Error::Encode { .. } => ErrorKind::Encode,
            Error::Decode { .. } => ErrorKind::Decode,
            Error::Envelope(_) => ErrorKind::CorruptEntry,
            Error::StoreUnavailable { .. } => ErrorKind::StoreUnavailable,
            Error::Store { .. } => ErrorKind::Store,
            Error::LayoutMismatch { .. } => ErrorKind::LayoutMismatch,
            Error::SourceUnavailable { .. } => ErrorKind::SourceUnavailable,
            Error::Source { cause, .. } => {
                crate::source::refusal_of_cause(cause.as_ref()).unwrap_or(ErrorKind::Source)
            }
            Error::LoadTimeout { .. } => ErrorKind::Timeout,
            Error::ReadOnly { .. } => ErrorKind::ReadOnly,
            Error::Loader { .. } => ErrorKind::Loader,
            Error::NotDurable { .. } => ErrorKind::NotDurable,
            Error::BacklogFull { .. } => ErrorKind::BacklogFull,
            Error::Fenced { .. } => ErrorKind::Fenced,
            Error::Closed { .. } => ErrorKind::Closed,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// The constraint a database refused a row for, if that is what
    /// happened (the [`ErrorKind::Conflict`] of [`Error::kind`]).
    pub fn constraint(&self) -> Option<ConstraintKind> {
        match self.kind() {
            ErrorKind::Conflict(c) => Some(c),
            _ => None,
        }
    }

    /// The cache store could not be reached (connection refused or dropped, timeout).
    pub fn is_store_unavailable(&self) -> bool {
        matches!(self, Error::StoreUnavailable { .. })
    }

    /// Something took longer than allowed (a load, or the store).
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::LoadTimeout { .. } => true,
            Error::StoreUnavailable { cause, .. } => cause
                .downcast_ref::<redis::RedisError>()
                .is_some_and(redis::RedisError::is_timeout),
            _ => false,
        }
    }

    /// The source (or a cache-aside loader) failed, or timed out.
    pub fn is_source_error(&self) -> bool {
        matches!(
            self,
            Error::SourceUnavailable { .. }
                | Error::Source { .. }
                | Error::LoadTimeout { .. }
                | Error::Loader { .. }
        )
    }

    /// A write lost its compare-and-set to concurrent writers of the same
    /// id ([`Error::Busy`]): nothing was written, and retrying may succeed.
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy { .. })
    }

    /// The store proved not durable enough for write-back
    /// ([`Error::NotDurable`]), at start or later while running.
    pub fn is_not_durable(&self) -> bool {
        matches!(self, Error::NotDurable { .. })
    }

    /// The caller's input was refused: retrying the same call cannot succeed.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidName { .. }
                | Error::InvalidId { .. }
                | Error::InvalidRow { .. }
                | Error::OutOfRange { .. }
                | Error::Encode { .. }
                | Error::ReadOnly { .. }
                | Error::InvalidTag { .. }
                | Error::Unsupported { .. }
        )
    }

    /// An [`Error::InvalidSetting`] for `setting`.
    pub(crate) fn setting(setting: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidSetting {
            setting,
            reason: reason.into(),
        }
    }

    /// An [`Error::Schema`] about `part` of `table` (and `column`).
    pub(crate) fn schema(
        table: &str,
        part: SchemaPart,
        column: Option<&str>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Schema {
            table: table.to_owned(),
            part,
            column: column.map(str::to_owned),
            reason: reason.into(),
        }
    }

    /// An [`Error::Internal`]: `what` invariant did not hold.
    pub(crate) fn internal(what: impl Into<String>) -> Self {
        Error::Internal { what: what.into() }
    }

    pub(crate) fn invalid_id(id: &str, reason: impl Into<String>) -> Self {
        Error::InvalidId {
            id: id.chars().take(80).collect(),
            reason: reason.into(),
        }
    }

    pub(crate) fn cause<E: std::error::Error + Send + Sync + 'static>(e: E) -> Cause {
        Arc::new(e)
    }
}

/// A plain message as an error cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Message(pub(crate) String);

impl Message {
    pub(crate) fn cause(text: impl Into<String>) -> Cause {
        Arc::new(Message(text.into()))
    }
}

impl From<crate::envelope::EnvelopeError> for Error {
    fn from(e: crate::envelope::EnvelopeError) -> Self {
        Error::Envelope(Arc::new(e))
    }
}
