//! Write policies: how `put`, `put_many`, `patch` and `delete` reach the
//! source and the cache.
//!
//! | policy | write |
//! |---|---|
//! | [`WritePolicy::Through`] | the source first; the row it stored (`RETURNING`: defaults, triggers, normalised types) is cached and returned |
//! | [`WritePolicy::Around`] | the source, then the cached entry is deleted |
//! | [`WritePolicy::Back`] | acknowledged once the store holds it durably; flushed to the source later ([`crate::write_back`]) |
//! | [`WritePolicy::ReadOnly`] | refused with [`Error::ReadOnly`] |
//!
//! # Concurrent writers converge
//! Every write takes a ticket before it touches the source (one script:
//! void the read lease, bump the key's write sequence and its count of
//! writes in flight) and ends with a second script that caches the stored
//! row only if the write overlapped no other write of the key (none was in
//! flight when it began, none began before it ended) — otherwise it deletes
//! the entry. A write that overlapped no other is surely the last to
//! commit; for overlapping writes the source's commit order is unknown, so
//! the cache drops the key and the next read loads the winner. The cache
//! ends up holding the last committed row or nothing: never an older row.
//! Both scripts void the read lease, so a read that loaded before or
//! during a write cannot fill afterwards.
//!
//! An invalidation of the key (by id, change notification, or the
//! replay of an owed one) also bumps the write sequence, so a write between
//! its source step and its end step when it lands ends by deleting: the
//! invalidation announced a row at least as new as the write's. Tag
//! invalidations and purges bump generations instead; a write's entry is
//! stamped with the generation known before its source step, so it is a
//! miss on read after either.
//!
//! # Bookkeeping that outlives the write
//! The ticket's bookkeeping expires after `lease_ttl` without writes; a
//! write renews it every third of that while its source step runs, so a
//! slow write (a pool wait, a row lock) keeps counting as in flight. If it
//! expired all the same (the store unreachable for a while), the end step
//! counts the ticket as overlapped: it deletes the entry and outdates any
//! write that began on new bookkeeping.
//!
//! # Cancellation
//! From the ticket through the source step to the end step, a write runs
//! in a task of its own (`tokio::spawn`) that the caller awaits: dropping
//! the caller's future (a timeout, a closed HTTP connection) does not stop
//! it, so a write that may have reached the source always runs its end
//! step and tells every near cache.
//!
//! # Failures
//! - The source refuses the write (a constraint, bad data): the cache is
//!   left as it was and the error returned.
//! - The source is unreachable or times out (the write may or may not have
//!   committed): the cached entry is deleted and the error returned.
//! - The cache fails after the source succeeded: the entry is deleted if
//!   the store still answers, and [`Written::cache`] says what happened.

use super::{Cache, Inner};
use crate::envelope::Freshness;
use crate::error::{Error, Message, Result};
use crate::key::{CacheKey, IdText};
use crate::representation::Representation;
use crate::store::{WriteEnd, WriteKeys, WriteTicket};
use crate::write_back::WriteBackOptions;
use bytes::Bytes;
use futures_util::future::{join_all, Either};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How writes reach the source and the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WritePolicy {
    /// Source first; the stored row is cached and returned.
    Through,
    /// Source, then the cached entry is deleted.
    Around,
    /// Cache and a durable dirty record first, acknowledged at once; a
    /// background flusher coalesces and batches the writes into the source.
    Back(WriteBackOptions),
    /// Writes are refused.
    ReadOnly,
}

impl WritePolicy {
    /// The policy's name in configuration: `through`, `around`, `back`, `read-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            WritePolicy::Through => "through",
            WritePolicy::Around => "around",
            WritePolicy::Back(_) => "back",
            WritePolicy::ReadOnly => "read-only",
        }
    }

    /// Whether this is write-back.
    pub fn is_write_back(self) -> bool {
        matches!(self, WritePolicy::Back(_))
    }
}

/// What a write did to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheWrite {
    /// The stored row is cached.
    Updated,
    /// The cached entry was deleted: write-around, a delete, or a
    /// concurrent write to the same key (the next read loads the winner).
    Invalidated,
    /// The store could not be reached; the entry may be outdated there
    /// until it expires.
    Unreachable,
    /// Write-back: the write is cached and durably queued; the source gets
    /// it at the next flush.
    Queued,
    /// Write-back on a Redis Cluster: the write is cached and queued on
    /// its master, but not every replica of that master acknowledged it
    /// before the timeout (`WAIT`; a replica down, or a master just
    /// promoted with none). The write is visible and will very probably
    /// be flushed, but a failover of that master could lose it. Do not
    /// retry an increment on this answer: it would count twice.
    Unconfirmed,
}

impl CacheWrite {
    /// What an acknowledged write-back write is: [`Queued`](Self::Queued)
    /// when its durability is confirmed, else
    /// [`Unconfirmed`](Self::Unconfirmed).
    pub(crate) fn queued(confirmed: bool) -> CacheWrite {
        if confirmed {
            CacheWrite::Queued
        } else {
            CacheWrite::Unconfirmed
        }
    }

    /// Whether this is a write-back acknowledgement
    /// ([`Queued`](Self::Queued) or [`Unconfirmed`](Self::Unconfirmed)).
    pub fn is_queued(self) -> bool {
        matches!(self, CacheWrite::Queued | CacheWrite::Unconfirmed)
    }
}

/// A write's result: the row as the source stored it, and what happened
/// in the cache.
#[derive(Debug, Clone)]
pub struct Written<V> {
    /// The row as stored (for a cache without a source: the value given).
    pub value: Arc<V>,
    /// What happened to the cached entry.
    pub cache: CacheWrite,
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// The write policy of this cache.
    pub fn write_policy(&self) -> WritePolicy {
        self.inner.write_policy
    }

    /// Writes `value` for `key` under the cache's write policy and returns
    /// the row as stored. A cache without a source only caches the value
    /// (cache-aside: the application wrote its database itself).
    ///
    /// The value is handed on as the cache's codec reads it back (encoded,
    /// then decoded), so that the write can run in a task of its own: once
    /// begun, it runs to its end step even if the caller goes away (the
    /// future dropped, a timeout, a closed connection), so the cache never
    /// keeps a row older than one that reached the source.
    pub async fn put(&self, key: &K, value: &V) -> Result<Written<V>> {
        self.put_with_tags(key, value, &[]).await
    }

    /// [`Cache::put`], the cached entry carrying `tags` (besides the
    /// tagger's) for [`Cache::invalidate_tag`]. Tags need the invalidation
    /// bus (see [`CacheBuilder::bus`](crate::CacheBuilder::bus)); bad tags
    /// are refused before anything is written.
    ///
    /// Runs in a task of its own: once begun, it runs to its end step even
    /// if the caller goes away (the future dropped, a timeout, a closed
    /// connection).
    pub async fn put_with_tags(&self, key: &K, value: &V, tags: &[String]) -> Result<Written<V>> {
        let id = self.id_of(key)?;
        self.inner.refuse_read_only()?;
        self.inner.coherence.check_tags(tags)?;
        let payload = Bytes::from(self.inner.codec.encode(self.entity(), value)?);
        // The write owns what it writes: decode the payload rather than
        // require `V: Clone`.
        let owned = self
            .inner
            .codec
            .decode(self.entity(), &id, payload.clone())?;
        let (inner, tags) = (Arc::clone(&self.inner), tags.to_vec());
        detached(self.entity(), async move {
            inner.put_owned(&id, owned, payload, &tags).await
        })
        .await
    }

    /// Writes many rows with one source statement (the last write of a key
    /// wins); answers per key, in order. Not atomic across keys in the cache.
    ///
    /// Runs in a task of its own: once begun, it runs to its end step even
    /// if the caller goes away (the future dropped, a timeout, a closed
    /// connection).
    pub async fn put_many(&self, entries: &[(&K, &V)]) -> Result<Vec<Result<Written<V>>>>
    where
        V: Clone,
    {
        self.inner.refuse_read_only()?;
        let source = self.inner.require_source()?;
        if self.inner.write_policy.is_write_back() {
            let mut answers = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                answers.push(self.put(key, value).await);
            }
            return Ok(answers);
        }
        let ids = entries
            .iter()
            .map(|(k, _)| self.id_of(k))
            .collect::<Result<Vec<_>>>()?;
        let rows: Vec<(String, V)> = ids
            .iter()
            .zip(entries)
            .map(|(id, (_, v))| (id.clone(), (*v).clone()))
            .collect();
        let inner = Arc::clone(&self.inner);
        detached(self.entity(), async move {
            inner.put_many_owned(source, ids, rows).await
        })
        .await
    }

    /// Updates only the given columns of `key`'s row (`null` sets NULL)
    /// under the write policy; `None` when the row does not exist (nothing
    /// is written). Two writers patching different columns both land.
    /// Under write-back, a patch that keeps losing its compare-and-set to
    /// other writers of the id fails with [`Error::Busy`] — except on a
    /// [`Representation::Hash`] entity, whose write-back patch sets just
    /// the given fields of the hash and of the dirty record in one script,
    /// with nothing to retry, and answers the row as the cache then holds
    /// it (one read of the entry after the patch).
    ///
    /// Runs in a task of its own: once begun, it runs to its end step even
    /// if the caller goes away (the future dropped, a timeout, a closed
    /// connection).
    pub async fn patch(
        &self,
        key: &K,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<Written<V>>> {
        let id = self.id_of(key)?;
        self.inner.refuse_read_only()?;
        let source = self.inner.require_source()?;
        let (inner, fields) = (Arc::clone(&self.inner), fields.clone());
        detached(self.entity(), async move {
            if inner.write_policy.is_write_back() {
                if inner.keys.representation() != Representation::Hash {
                    return inner.patch_back(&id, &fields).await;
                }
                let Some(recorded) = inner.patch_fields_back(&id, &fields).await? else {
                    return Ok(None);
                };
                // The row as the cache holds it now: the patched hash the
                // script answered, else one read (the loaded row with the
                // pending fields laid over).
                let patched = recorded
                    .entry
                    .and_then(|bytes| inner.decode_entry(&id, bytes).ok())
                    .filter(|entry| entry.freshness(inner.clock.now_ms()) != Freshness::Expired)
                    .and_then(|entry| entry.into_value());
                let value = match patched {
                    Some(value) => Some(value),
                    None => {
                        inner
                            .read_uncounted(IdText::borrowed(&id), Inner::source_loader)
                            .await?
                            .value
                    }
                };
                let Some(value) = value else {
                    // A record this patch began alone is withdrawn; one it
                    // joined holds earlier acknowledged patches, which the
                    // flush dead-letters ("no row to update") rather than
                    // losing them silently.
                    if !recorded.coalesced {
                        inner.withdraw_patch(&id, recorded.seq).await?;
                    }
                    return Ok(None);
                };
                inner.patch_acknowledged(recorded.coalesced);
                return Ok(Some(Written {
                    value,
                    cache: CacheWrite::queued(recorded.confirmed),
                }));
            }
            let seq = inner.coherence.seq();
            inner
                .write(&id, (seq, &[]), source.patch(&id, &fields))
                .await
        })
        .await
    }

    /// Adds `by` to the numeric `column` of `key`'s row in the database, in
    /// one statement (`UPDATE … SET col = COALESCE(col, 0) + by …
    /// RETURNING`), and caches the row it returns as any write-through
    /// write does (replaced if the write ticket stayed clean, else
    /// removed); `None` when the row does not exist (nothing is written).
    /// Concurrent increments, from any number of processes, all count: the
    /// database adds, never the cache.
    ///
    /// An integer column takes an integer `by`; a `numeric(p, s)` column a
    /// `by` with at most `s` decimal places; anything else is
    /// [`Error::InvalidRow`].
    ///
    /// Under write-back on a [`Representation::Hash`] entity, an increment
    /// of an integer column changes the cached field and a durable delta
    /// of the id and column in one script and is acknowledged at once
    /// ([`CacheWrite::Queued`], with the row as the cache then holds it);
    /// the flusher adds the deltas in the database exactly once (see
    /// [`crate::write_back`]). A `numeric(p, s)` column counts the same
    /// way in exact decimal (units of 10^-s, never binary floating point);
    /// a floating-point or unconstrained `numeric` column is
    /// [`Error::Unsupported`] there. A sum outside the column's range is
    /// [`Error::OutOfRange`]. On a `string`
    /// entity write-back increments are [`Error::Unsupported`]: a string
    /// entry cannot take one without a read-modify-write of the whole row.
    ///
    /// Runs in a task of its own, as [`put`](Self::put) does.
    pub async fn incr(
        &self,
        key: &K,
        column: &str,
        by: &serde_json::Number,
    ) -> Result<Option<Written<V>>> {
        let id = self.id_of(key)?;
        self.inner.refuse_read_only()?;
        if self.inner.write_policy.is_write_back() {
            if self.inner.keys.representation() == crate::Representation::String {
                return Err(Error::Unsupported {
                    entity: self.entity().to_owned(),
                    what: "increments under write-back".into(),
                    reason: "write-back increments need representation = \"hash\": a string entry holds the whole row, so an increment would be a read-modify-write; use write-through".into(),
                });
            }
            let (inner, column, by) = (Arc::clone(&self.inner), column.to_owned(), by.clone());
            return detached(self.entity(), async move {
                inner.incr_back(&id, &column, &by).await
            })
            .await;
        }
        let source = self.inner.require_source()?;
        let (inner, column, by) = (Arc::clone(&self.inner), column.to_owned(), by.clone());
        detached(self.entity(), async move {
            let seq = inner.coherence.seq();
            inner
                .write(&id, (seq, &[]), source.incr(&id, &column, &by))
                .await
        })
        .await
    }

    /// Deletes `key`'s row from the source and its cached entry; whether a
    /// row existed. Under write-back, a delete that keeps losing its
    /// compare-and-set to other writers of the id fails with
    /// [`Error::Busy`].
    ///
    /// Runs in a task of its own: once begun, it runs to its end step even
    /// if the caller goes away (the future dropped, a timeout, a closed
    /// connection).
    pub async fn delete(&self, key: &K) -> Result<bool> {
        let id = self.id_of(key)?;
        self.inner.refuse_read_only()?;
        let source = self.inner.require_source()?;
        let inner = Arc::clone(&self.inner);
        detached(self.entity(), async move {
            if inner.write_policy.is_write_back() {
                return inner.delete_back(&id).await;
            }
            let ticket = inner.begin(&id).await?;
            let removed = inner
                .keeping_alive(&id_if(&id, ticket), source.delete(&id))
                .await;
            let end = match &removed {
                Ok(_) => WriteEnd::Delete,
                Err(e) => inner.end_for_error(e),
            };
            inner.end(&id, ticket, end).await;
            removed
        })
        .await
    }
}

/// `[id]` if the write holds a ticket (its bookkeeping is to be kept alive).
fn id_if(id: &str, ticket: Option<WriteTicket>) -> Vec<&str> {
    ticket.map(|_| id).into_iter().collect()
}

/// Runs a write in a task of its own and waits for its answer. The task
/// is not cancelled when the caller goes away (a dropped future, a
/// timeout, a closed connection), so a write that may have reached the
/// source always runs its end step.
async fn detached<T: Send + 'static>(
    entity: &str,
    write: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    match tokio::spawn(write).await {
        Ok(answer) => answer,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels the task: the write may
            // or may not have reached the source.
            Err(_) => Err(Error::SourceUnavailable {
                entity: entity.to_owned(),
                cause: Message::cause("the runtime shut down while the write ran"),
            }),
        },
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    fn refuse_read_only(&self) -> Result<()> {
        if self.write_policy == WritePolicy::ReadOnly {
            return Err(Error::ReadOnly {
                entity: self.keys.entity().to_owned(),
                reason: "its write policy is read-only".into(),
            });
        }
        Ok(())
    }

    /// [`Cache::put_with_tags`] once the value is owned: `payload` is its
    /// encoding.
    async fn put_owned(
        self: &Arc<Self>,
        id: &str,
        value: V,
        payload: Bytes,
        tags: &[String],
    ) -> Result<Written<V>> {
        if self.write_policy.is_write_back() {
            return self.put_back(id, &value, tags).await;
        }
        // The generation known before the source step stamps the entry: an
        // invalidation of a tag (or a purge) during the write outdates it.
        let seq = self.coherence.seq();
        match self.source.clone() {
            Some(source) => {
                let stored = self
                    .write(id, (seq, tags), async {
                        source.store(id, &value).await.map(Some)
                    })
                    .await?;
                stored.ok_or_else(|| Error::Config("the source stored no row".into()))
            }
            None => {
                let stamp = self.coherence.stamp(seq, Some(&value), tags)?;
                let (bytes, ttl) = self.envelope(Some(payload), 0, stamp);
                let ticket = self.begin(id).await?;
                let cache = self
                    .end(id, ticket, WriteEnd::Set { value: bytes, ttl })
                    .await;
                Ok(Written {
                    value: Arc::new(value),
                    cache,
                })
            }
        }
    }

    /// [`Cache::put_many`] once the rows are owned (ids canonical, in order).
    async fn put_many_owned(
        self: &Arc<Self>,
        source: Arc<dyn crate::source::Source<V>>,
        ids: Vec<String>,
        rows: Vec<(String, V)>,
    ) -> Result<Vec<Result<Written<V>>>>
    where
        V: Clone,
    {
        let seq = self.coherence.seq();
        let tickets = join_all(ids.iter().map(|id| self.begin(id)))
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let held: Vec<&str> = ids
            .iter()
            .zip(&tickets)
            .filter(|(_, t)| t.is_some())
            .map(|(id, _)| id.as_str())
            .collect();
        let stored = self.keeping_alive(&held, source.store_many(&rows)).await;
        let by_id: std::collections::HashMap<String, Arc<V>> = match &stored {
            Ok(stored) => stored
                .iter()
                .map(|(id, v)| (id.clone(), Arc::new(v.clone())))
                .collect(),
            Err(_) => Default::default(),
        };
        // A key given twice is cached once, by its last write.
        let mut last = std::collections::HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            last.insert(id.as_str(), i);
        }
        let ends = ids
            .iter()
            .zip(tickets)
            .enumerate()
            .map(|(i, (id, ticket))| {
                let row = by_id.get(id).cloned();
                let end = match (&stored, row) {
                    (Err(e), _) => self.end_for_error(e),
                    (Ok(_), Some(row)) if last.get(id.as_str()) == Some(&i) => {
                        self.end_for_row(Some(&row), (seq, &[]))
                    }
                    (Ok(_), _) => WriteEnd::Delete,
                };
                self.end(id, ticket, end)
            });
        let caches = join_all(ends).await;
        Ok(ids
            .iter()
            .zip(caches)
            .map(|(id, cache)| match &stored {
                Err(e) => Err(e.clone()),
                Ok(_) => by_id
                    .get(id)
                    .cloned()
                    .map(|value| Written { value, cache })
                    .ok_or_else(|| {
                        Error::Config(format!("the source stored no row for id {id:?}"))
                    }),
            })
            .collect())
    }

    fn write_keys(&self, id: &str) -> WriteKeys {
        WriteKeys {
            value_key: self.keys.value_key(id),
            lease_key: self.keys.lease_key(id),
            write_key: self.keys.write_key(id),
        }
    }

    /// Takes a write ticket. `None`: the store is unreachable (the write
    /// goes on; the cache is reported `Unreachable`).
    async fn begin(&self, id: &str) -> Result<Option<WriteTicket>> {
        self.flights.forget(id);
        let began = match self.check_layout().await {
            Ok(()) => {
                self.store
                    .write_begin(&self.write_keys(id), self.policy.lease_ttl)
                    .await
            }
            Err(e) => Err(e),
        };
        match began {
            Ok(ticket) => Ok(Some(ticket)),
            Err(e) if e.is_store_unavailable() => {
                self.store_failed(&e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `step` (a source write) while keeping the write bookkeeping of
    /// `ids` alive: renewed every third of `lease_ttl`, so a write slower
    /// than that still counts as in flight for the writes that begin
    /// after it. A renewal that fails is left to the end step, which
    /// treats a ticket whose bookkeeping expired as overlapped.
    async fn keeping_alive<T>(&self, ids: &[&str], step: impl Future<Output = T>) -> T {
        if ids.is_empty() {
            return step.await;
        }
        let ttl = self.policy.lease_ttl;
        let every = (ttl / 3).max(Duration::from_millis(1));
        let keys: Vec<WriteKeys> = ids.iter().map(|id| self.write_keys(id)).collect();
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                let renewed = join_all(keys.iter().map(|k| self.store.write_renew(k, ttl))).await;
                if let Some(e) = renewed.into_iter().find_map(Result::err) {
                    tracing::debug!(entity = self.keys.entity(), error = %e, "could not renew a write ticket");
                }
            }
        };
        let (step, renew) = (std::pin::pin!(step), std::pin::pin!(renew));
        match futures_util::future::select(step, renew).await {
            Either::Left((out, _)) => out,
            Either::Right(((), step)) => step.await,
        }
    }

    /// Ends a write, then tells every near cache (see `invalidation.rs`).
    async fn end(&self, id: &str, ticket: Option<WriteTicket>, end: WriteEnd) -> CacheWrite {
        let aborted = matches!(end, WriteEnd::Abort);
        let cache = self.end_in_store(id, ticket, end).await;
        // A load that started during the write must not answer reads that
        // start after it.
        self.flights.forget(id);
        if !aborted {
            let reached = cache != CacheWrite::Unreachable;
            self.coherence.bus.written(id, reached).await;
        }
        cache
    }

    /// Ends a write; never fails: a cache that cannot be updated is reported.
    async fn end_in_store(
        &self,
        id: &str,
        ticket: Option<WriteTicket>,
        end: WriteEnd,
    ) -> CacheWrite {
        let Some(ticket) = ticket else {
            return CacheWrite::Unreachable;
        };
        let keys = self.write_keys(id);
        match self.store.write_end(&keys, ticket, &end).await {
            Ok(true) => CacheWrite::Updated,
            Ok(false) => CacheWrite::Invalidated,
            Err(e) => {
                self.store_failed(&e);
                tracing::warn!(entity = self.keys.entity(), id, error = %e, "could not update the cache after a write; deleting the entry");
                match self.store.invalidate(&keys).await {
                    Ok(()) => CacheWrite::Invalidated,
                    Err(_) => CacheWrite::Unreachable,
                }
            }
        }
    }

    /// How a write ends after the source failed: a refused write leaves
    /// the cache alone; a write that may have committed deletes the entry.
    fn end_for_error(&self, e: &Error) -> WriteEnd {
        if matches!(
            e,
            Error::SourceUnavailable { .. } | Error::LoadTimeout { .. }
        ) {
            WriteEnd::Delete
        } else {
            WriteEnd::Abort
        }
    }

    /// How a write ends after the source stored `row` (`None`: no row);
    /// `stamp`: the generation known before the write, and its tags.
    fn end_for_row(&self, row: Option<&Arc<V>>, stamp: (u64, &[String])) -> WriteEnd {
        let (seq, tags) = stamp;
        let through = self.write_policy == WritePolicy::Through;
        let encoded = row.filter(|_| through).map(|row| {
            let stamp = self.coherence.stamp(seq, Some(row), tags)?;
            Ok::<_, Error>((self.codec.encode(self.keys.entity(), row)?, stamp))
        });
        match (self.write_policy, encoded) {
            (WritePolicy::Through, Some(encoded)) => match encoded {
                Ok((payload, stamp)) => {
                    let (value, ttl) = self.envelope(Some(Bytes::from(payload)), 0, stamp);
                    WriteEnd::Set { value, ttl }
                }
                Err(e) => {
                    tracing::warn!(entity = self.keys.entity(), error = %e, "cannot encode a stored row; deleting the entry");
                    WriteEnd::Delete
                }
            },
            _ => WriteEnd::Delete,
        }
    }

    /// One write: ticket, source, end. `stamp`: as for [`Inner::end_for_row`].
    async fn write(
        self: &Arc<Self>,
        id: &str,
        stamp: (u64, &[String]),
        source_write: impl Future<Output = Result<Option<V>>>,
    ) -> Result<Option<Written<V>>> {
        let ticket = self.begin(id).await?;
        match self.keeping_alive(&id_if(id, ticket), source_write).await {
            Ok(row) => {
                let row = row.map(Arc::new);
                let end = self.end_for_row(row.as_ref(), stamp);
                let cache = self.end(id, ticket, end).await;
                Ok(row.map(|value| Written { value, cache }))
            }
            Err(e) => {
                self.end(id, ticket, self.end_for_error(&e)).await;
                Err(e)
            }
        }
    }
}
