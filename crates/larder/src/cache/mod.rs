//! The cache: [`Cache`], a cheap handle, and `Inner`, the state every
//! clone shares. Each child module owns one mechanism:
//!
//! - `read`: the read path, single and batch, one decision tree (near
//!   cache → breaker → store → fresh / stale / missing → flight).
//! - `lease`: the lease (acquire, wait for another holder's fill, take
//!   over, fill once with its token, release).
//! - `fill_watch`: waiters told of a fill as it lands (a waiter flag the
//!   fill script finds, a pub/sub announcement), polling as the fallback.
//! - `write`: the write protocol (ticket → source step → end step), run
//!   detached so that it is cancellation-safe.
//! - `warm`: pre-warming in batches under the fill rule.
//! - `invalidate`: invalidation by id, key, tag or purge, and the
//!   background tag compaction (over `crate::coherence`).
//! - `builder`: [`CacheBuilder`], which validates every setting and
//!   assembles `Inner`.
//! - `write_back`: write-back's writer (acknowledge), its flusher (an owned
//!   component that `close` stops and drains) and dead letters.
//!
//! `Inner`'s fields are private to this module: the rest of the crate
//! reaches the cache only through `Cache`'s methods.

mod builder;
mod distinct;
mod fill_watch;
mod hash;
mod invalidate;
mod lease;
mod read;
mod warm;
mod write;
pub mod write_back;

pub use self::builder::CacheBuilder;
pub use self::warm::{WarmOptions, WarmProgress, WARM_BATCH};
pub use self::write::{CacheWrite, WritePolicy, Written};

use self::distinct::Distinct;
use crate::breaker::Breaker;
use crate::clock::{duration_ms, Clock};
use crate::codec::Codec;
use crate::envelope::Envelope;
use crate::error::{Cause, Error, Message, Result};
use crate::flight::Flights;
use crate::key::{validate_id, CacheKey, IdText, KeySpace, TextBatch};
use crate::load_error::{LoadError, SharedLoadError};
use crate::outcome::{Lookup, Outcome};
use crate::policy::{Policy, Random};
use crate::source::Source;
use crate::stats::{CacheStats, Counters, Event};
use crate::store::Store;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A batch read's answers, by the place of each id in the batch (`None`:
/// not answered yet). By place rather than in a map by id: a batch then
/// neither hashes nor copies its ids to find its answers.
pub(crate) type Answers<V> = Vec<Option<Lookup<V>>>;

/// A load: given a canonical id, the value (or `None`: not found).
pub(crate) type Loader<V> = Box<dyn FnOnce(String) -> BoxFuture<'static, Result<Option<V>>> + Send>;

/// A typed cache of `V` by `K` over a store and, optionally, a source.
///
/// A cheap clone over shared state: clone it into every task that needs it.
/// Build one with [`Cache::builder`].
///
/// # Behavior
/// - Every read returns a [`Lookup`]: the value and its [`Outcome`].
/// - The store unavailable: reads are answered by the source (outcome
///   `bypass`); writes (`put`, `invalidate`) return
///   [`Error::StoreUnavailable`].
/// - The source failing: a stale value inside the stale window is served
///   (fail-safe); otherwise the source's typed error is returned.
pub struct Cache<K: ?Sized, V> {
    inner: Arc<Inner<V>>,
    _key: PhantomData<fn(&K)>,
}

impl<K: ?Sized, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _key: PhantomData,
        }
    }
}

impl<K: ?Sized, V> fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("entity", &self.inner.keys.entity())
            .field("store", &self.inner.store.name())
            .finish()
    }
}

pub(crate) struct Inner<V> {
    keys: KeySpace,
    store: Arc<dyn Store>,
    source: Option<Arc<dyn Source<V>>>,
    codec: Arc<dyn Codec<V>>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    random: Random,
    flights: Flights<Result<Option<Lookup<V>>>>,
    counters: Counters,
    layout_checked: tokio::sync::OnceCell<()>,
    write_policy: WritePolicy,
    breaker: Breaker,
    /// Write-back's state (its log, counters and flusher controls).
    write_back: Option<Arc<crate::write_back::State>>,
    /// Near cache, tags and invalidation bus (`coherence.rs`).
    coherence: crate::coherence::Coherence<V>,
    /// Callers waiting for another process's fill (`fill_watch.rs`).
    fills: fill_watch::FillWatch,
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    pub(crate) fn from_inner(inner: Inner<V>) -> Self {
        Self {
            inner: Arc::new(inner),
            _key: PhantomData,
        }
    }

    /// The entity this cache serves.
    pub fn entity(&self) -> &str {
        self.inner.keys.entity()
    }

    /// A snapshot of this cache's counters.
    pub fn stats(&self) -> CacheStats {
        let mut stats = self.inner.counters.snapshot();
        stats.near = self.inner.coherence.stats();
        stats
    }

    /// How long the cached entry behind `lookup` stays fresh from now, by
    /// this cache's clock: zero once past (a `stale` answer), `None` when
    /// no cached entry stands behind it (see [`Lookup::fresh_until`]).
    pub fn remaining_fresh(&self, lookup: &Lookup<V>) -> Option<Duration> {
        let fresh_until = lookup.fresh_until()?;
        let now = self.inner.clock.now_ms();
        Some(Duration::from_millis(fresh_until.saturating_sub(now)))
    }

    /// The canonical id of a key: rendered, canonicalised by the source (an
    /// integer key column turns `007` into `7`) and checked.
    pub fn id_of(&self, key: &K) -> Result<String> {
        self.id_text_of(key).map(IdText::into_owned)
    }

    /// [`Cache::id_of`] without a copy where the key and the source allow
    /// ([`CacheKey::id_text`], [`Source::is_canonical`]).
    fn id_text_of<'k>(&self, key: &'k K) -> Result<IdText<'k>> {
        self.inner.canonical_text(key.id_text())
    }

    /// Read-through: the value of `key`, loaded from the cache's source on a miss.
    ///
    /// Returns [`Error::Config`] when the cache has no source; use
    /// [`Cache::get_or_load`] then.
    pub async fn get(&self, key: &K) -> Result<Lookup<V>> {
        let id = self.id_text_of(key)?;
        // The loader is built on the miss path only: a hit allocates nothing for it.
        self.inner.require_source()?;
        self.inner.clone().read(id, Inner::source_loader).await
    }

    /// Cache-aside: the value of `key`, computed by `load` on a miss.
    ///
    /// `load` runs at most once per miss across every caller sharing the
    /// store (the callers that find a load in progress wait for it); it
    /// returns `Ok(None)` for "not found", which is remembered for
    /// `negative_ttl`. Its error becomes [`Error::Loader`]; to keep its
    /// type, use [`Cache::try_get_or_load`].
    ///
    /// # Why `'static`
    /// The load runs as a task of its own, not inside the caller's future:
    /// every caller waiting for the key shares it, and it outlives a caller
    /// that gives up or is dropped (a timeout, a closed connection) so that
    /// the others still get its answer and the fill still lands. So `load`
    /// and its future cannot borrow from the caller: move owned data in.
    pub async fn get_or_load<F, Fut, E>(&self, key: &K, load: F) -> Result<Lookup<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let id = self.id_text_of(key)?;
        // Boxed on the miss path only: a near-cache hit allocates nothing.
        let loader = |_: &Inner<V>| Ok(self.loader(load, Error::cause));
        self.inner.clone().read(id, loader).await
    }

    /// [`Cache::get_or_load`], keeping the loader's error type: a failed
    /// load is [`LoadError::Load`] with the loader's error as an `Arc<E>` —
    /// the same `Arc` for every caller that waited for that load, since
    /// one load answers them all — and any other failure is
    /// [`LoadError::Cache`].
    ///
    /// `load` is `'static` for the reason [`Cache::get_or_load`] gives: the
    /// load is shared by its waiters and outlives a caller that gives up or
    /// is dropped.
    pub async fn try_get_or_load<F, Fut, E>(
        &self,
        key: &K,
        load: F,
    ) -> std::result::Result<Lookup<V>, LoadError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let id = self.id_text_of(key).map_err(LoadError::Cache)?;
        let loader = |_: &Inner<V>| Ok(self.loader(load, SharedLoadError::cause));
        (self.inner.clone().read(id, loader).await).map_err(LoadError::from_error)
    }

    /// A cache-aside `load` as a [`Loader`]; `cause` wraps its error into
    /// the cause of an [`Error::Loader`].
    fn loader<F, Fut, E>(&self, load: F, cause: fn(E) -> Cause) -> Loader<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let entity = self.entity().to_owned();
        Box::new(move |_id| {
            async move {
                load().await.map_err(|e| Error::Loader {
                    entity,
                    cause: cause(e),
                })
            }
            .boxed()
        })
    }

    /// Read-through for many keys: one `MGET` for all of them, one
    /// `load_many` on the source for the misses. Answers in `keys` order
    /// (a key given twice is read once).
    pub async fn get_many(&self, keys: &[&K]) -> Result<Vec<Lookup<V>>> {
        // Every id written into one buffer (integers straight into it) and
        // canonicalised there; the batch reads them borrowed, each id
        // once, and answers by place: an id is copied only if it misses.
        let mut texts = TextBatch::with_capacity(keys.len(), keys.len() * 8);
        for key in keys {
            texts.push_with(|out| key.push_id(out));
            if let Some(id) = self.inner.canonical_change(texts.last())? {
                texts.replace_last(&id);
            }
        }
        let ids: Vec<&str> = texts.iter().collect();
        let batch = Distinct::of(&ids);
        let answers = self.inner.clone().read_many(batch.ids(&ids)).await?;
        Ok(batch.spread(answers))
    }

    /// Removes the cached entry of `key` and voids any load in progress for
    /// it; the next read is a miss, on every instance (near caches hear of
    /// it over the invalidation bus). With the store down the invalidation
    /// is remembered, delivered when it returns, and the error returned.
    pub async fn invalidate(&self, key: &K) -> Result<()> {
        let id = self.id_of(key)?;
        self.inner.invalidate_canonical(&[id]).await
    }

    /// [`Cache::invalidate`] for many keys at once: the store is told
    /// about them concurrently, the other instances in one bus message. Ids the store could not be told about
    /// are remembered and delivered when it returns, and the first error is
    /// returned. For ids rather than keys (a change notification knows
    /// rows by their id text), see [`Cache::invalidate_ids`].
    pub async fn invalidate_many(&self, keys: &[&K]) -> Result<()> {
        let ids = keys
            .iter()
            .map(|k| self.id_of(k))
            .collect::<Result<Vec<_>>>()?;
        self.inner.invalidate_canonical(&ids).await
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// The canonical form of `raw` (see [`Cache::id_of`]), owned.
    pub(crate) fn canonical_id(&self, raw: &str) -> Result<String> {
        self.canonical_text(IdText::borrowed(raw))
            .map(IdText::into_owned)
    }

    /// The canonical form of `raw`, checked: `raw` itself when the source
    /// says it is canonical already (or there is no source), so the common
    /// case copies nothing.
    fn canonical_text<'a>(&self, raw: IdText<'a>) -> Result<IdText<'a>> {
        match self.canonical_change(&raw)? {
            Some(id) => Ok(IdText::owned(id)),
            None => Ok(raw),
        }
    }

    /// The canonical form of `raw`, checked, if it differs from `raw`
    /// (`None`: `raw` is canonical already, or there is no source).
    fn canonical_change(&self, raw: &str) -> Result<Option<String>> {
        match &self.source {
            Some(source) if !source.is_canonical(raw) => {
                let id = source.canonical_id(raw)?;
                validate_id(&id)?;
                Ok(Some(id))
            }
            _ => validate_id(raw).map(|()| None),
        }
    }

    /// The source, or an error saying the cache has none.
    pub(crate) fn require_source(&self) -> Result<Arc<dyn Source<V>>> {
        self.source.clone().ok_or_else(|| {
            Error::Config(format!(
                "entity `{}` has no source: give the builder one, or read with get_or_load",
                self.keys.entity()
            ))
        })
    }

    pub(crate) fn source_loader(&self) -> Result<Loader<V>> {
        let source = self.require_source()?;
        Ok(Box::new(move |id: String| {
            async move { source.load(&id).await }.boxed()
        }))
    }

    /// Records the shard layout on first use and refuses a different one.
    pub(crate) async fn check_layout(&self) -> Result<()> {
        if self.layout_checked.initialized() {
            return Ok(());
        }
        self.layout_checked
            .get_or_try_init(|| async {
                let wanted = self.keys.layout();
                let recorded = self
                    .store
                    .record_layout(&self.keys.meta_key(), &wanted)
                    .await?;
                if recorded == wanted {
                    Ok(())
                } else {
                    Err(Error::LayoutMismatch {
                        entity: self.keys.entity().to_owned(),
                        recorded,
                        configured: wanted,
                    })
                }
            })
            .await
            .map(drop)
    }

    /// The envelope bytes and store TTL for a value (`None`: a negative entry).
    pub(crate) fn envelope(
        &self,
        payload: Option<Bytes>,
        load_us: u32,
        stamp: Option<Bytes>,
    ) -> (Vec<u8>, Duration) {
        let now = self.clock.now_ms();
        let (fresh_for, stale) = match payload {
            Some(_) => (self.policy.fresh_for(self.random.unit()), self.policy.stale),
            None => (self.policy.negative_ttl, Duration::ZERO),
        };
        let fresh_until = now.saturating_add(duration_ms(fresh_for));
        let env = Envelope {
            fresh_until,
            stale_until: fresh_until.saturating_add(duration_ms(stale)),
            load_us,
            payload,
            stamp,
        };
        (env.encode(), fresh_for + stale)
    }

    /// The envelope of a loaded value, or `None` when it should not be
    /// cached (a "not found" with `negative_ttl` 0). `seq`: the generation
    /// known before the load began.
    pub(crate) fn encode_loaded(
        &self,
        value: Option<&Arc<V>>,
        took: Duration,
        seq: u64,
    ) -> Result<Option<(Vec<u8>, Duration)>> {
        let load_us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let stamp = self.coherence.stamp(seq, value.map(|v| &**v), &[])?;
        match value {
            Some(v) => {
                let payload = self.codec.encode(self.keys.entity(), v)?;
                Ok(Some(self.envelope(
                    Some(Bytes::from(payload)),
                    load_us,
                    stamp,
                )))
            }
            None if self.policy.negative_ttl.is_zero() => Ok(None),
            None => Ok(Some(self.envelope(None, load_us, stamp))),
        }
    }

    pub(crate) fn store_failed(&self, e: &Error) {
        if e.is_store_unavailable() {
            self.breaker.trip(e);
        }
    }

    /// Loads under `timeout`, counting the load and its duration.
    pub(crate) async fn timed_load<T>(
        &self,
        id: &str,
        load: BoxFuture<'static, Result<T>>,
    ) -> (Result<T>, Duration) {
        self.counters.bump(Event::Load);
        let started = Instant::now();
        let result = match tokio::time::timeout(self.policy.load_timeout, load).await {
            Ok(result) => result,
            Err(_) => Err(Error::LoadTimeout {
                entity: self.keys.entity().to_owned(),
                id: id.to_owned(),
                after: self.policy.load_timeout,
            }),
        };
        let took = started.elapsed();
        self.counters.load_took(took);
        if result.is_err() {
            self.counters.bump(Event::LoadError);
        }
        (result, took)
    }

    /// Whether a read may go to the source without the store. Not under
    /// write-back: its newest data lives in the store, so the store's
    /// error is the answer.
    pub(super) fn may_bypass(&self, e: Error) -> Result<()> {
        if self.write_policy.is_write_back() {
            Err(e)
        } else {
            Ok(())
        }
    }

    /// The error of a write-back read while the breaker keeps the store skipped.
    pub(super) fn store_skipped(&self) -> Error {
        Error::StoreUnavailable {
            store: self.store.name().to_owned(),
            cause: Message::cause("the store failed recently and is skipped for a moment"),
        }
    }

    /// The answer for a key with a pending write-back write: the written
    /// value itself (`None`: a pending delete), as fresh as a hit.
    pub(super) fn pending_answer(&self, id: &str, payload: Option<Bytes>) -> Result<Lookup<V>> {
        let value = match payload {
            Some(bytes) => Some(Arc::new(self.codec.decode(
                self.keys.entity(),
                id,
                bytes,
            )?)),
            None => None,
        };
        let outcome = if value.is_some() {
            Outcome::Hit
        } else {
            Outcome::Negative
        };
        Ok(Lookup::new(value, outcome))
    }
}
