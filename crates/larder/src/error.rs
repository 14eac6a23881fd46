//! One error type for the whole library.
//!
//! Every failure says what failed and, where it helps, what to do about it.
//! The classifiers (`is_store_unavailable`, `is_timeout`, `is_source_error`,
//! `is_bad_input`) are what the fail-open logic and the service's HTTP
//! mapping use, so callers never match on message text.
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

    /// Configuration that cannot work (a bad URL, a bad option, a bad combination).
    #[error("invalid configuration: {0}")]
    Config(String),

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

    /// A cached entry is not a valid larder envelope.
    #[error("corrupt cache entry: {0}")]
    Envelope(#[from] crate::envelope::EnvelopeError),

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

    /// The source answered with an error (a bad query, a constraint violation).
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

    /// The cache was closed ([`Cache::close`](crate::Cache::close)): it
    /// accepts no more writes.
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

    /// A tag is empty or too long, or an entry has too many tags.
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The tag as given (cut to 80 characters).
        tag: String,
        /// Why it was refused.
        reason: String,
    },
}

impl Error {
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
                | Error::Encode { .. }
                | Error::ReadOnly { .. }
                | Error::InvalidTag { .. }
        )
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
