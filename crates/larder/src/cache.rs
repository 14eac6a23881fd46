//! The cache: one engine for cache-aside and read-through, with stampede
//! protection on every read path.
//!
//! # The read path
//! 1. **Hit**: one `GET` (or one `MGET` for many keys). A fresh entry is the
//!    answer (`hit`, or `negative` for a remembered "not found"); with XFetch
//!    on, a few reads near expiry also start a background refresh.
//! 2. **Stale**: an entry past freshness but inside its stale window is
//!    served at once (`stale`) while one background task, holding the lease,
//!    refreshes it. With `soft_timeout` the read first waits that long for
//!    the refresh.
//! 3. **Miss**: callers in this process share one flight ([`crate::flight`]);
//!    the flight takes the key's lease (`SET NX PX` with a random token, in a
//!    script that also re-checks the value), loads, and fills with a script
//!    that writes only while the lease still holds its token. A caller that
//!    finds the lease held waits for the fill (polling with a short backoff),
//!    up to `wait_timeout`; then it loads by itself and returns its result
//!    without filling.
//! 4. **Bypass**: when the store does not answer, reads go to the source and
//!    a breaker skips the store for a second.
//!
//! # No stale set
//! `put` and `invalidate` delete the lease in the same atomic step that
//! writes or deletes the value, so a load that started before them can never
//! fill afterwards: its token no longer holds.

use crate::breaker::Breaker;
use crate::clock::{duration_ms, Clock};
use crate::codec::Codec;
use crate::envelope::{Envelope, Freshness};
use crate::error::{Cause, Error, Message, Result};
use crate::flight::Flights;
use crate::key::{validate_id, CacheKey, KeySpace};
use crate::load_error::{LoadError, SharedLoadError};
use crate::outcome::{Lookup, Outcome};
use crate::policy::{xfetch, Policy, Random};
use crate::source::Source;
use crate::stats::{CacheStats, Counters, Event};
use crate::store::{Acquired, Fill, LeaseRequest, Store};
use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture, FutureExt};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A load: given a canonical id, the value (or `None`: not found).
pub(crate) type Loader<V> = Box<dyn FnOnce(String) -> BoxFuture<'static, Result<Option<V>>> + Send>;

/// The longest pause between two polls of a lease held by another process.
const MAX_POLL: Duration = Duration::from_millis(4);

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
    pub(crate) inner: Arc<Inner<V>>,
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
    pub(crate) keys: KeySpace,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) source: Option<Arc<dyn Source<V>>>,
    pub(crate) codec: Arc<dyn Codec<V>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: Policy,
    pub(crate) random: Random,
    pub(crate) flights: Flights<Result<Option<Lookup<V>>>>,
    pub(crate) counters: Counters,
    pub(crate) layout_checked: tokio::sync::OnceCell<()>,
    pub(crate) write_policy: crate::write::WritePolicy,
    pub(crate) breaker: Breaker,
    /// Write-back's state (its log, counters and flusher controls).
    pub(crate) write_back: Option<Arc<crate::write_back::State>>,
    /// Near cache, tags and invalidation bus (`coherence.rs`).
    pub(crate) coherence: crate::coherence::Coherence<V>,
}

/// What a flight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No usable entry: the callers need the loaded value.
    Miss,
    /// A stale entry is being served: refresh it unless someone else is,
    /// or already did.
    Refresh,
    /// A fresh entry near its expiry (XFetch): refresh it unless someone
    /// else is.
    Early,
}

/// The `fresh_until` of envelope bytes this process just encoded (bytes
/// 4..12 of the header), without decoding the rest.
fn envelope_fresh_until(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?))
}

/// A decoded store entry.
pub(crate) struct Entry<V> {
    value: Option<Arc<V>>,
    envelope_times: (u64, u64),
    load_us: u32,
    /// Invalidated by a purge or a tag: a miss, never served, not even stale.
    invalidated: bool,
    stamp: Option<crate::generation::Stamp>,
}

impl<V> Entry<V> {
    fn freshness(&self, now: u64) -> Freshness {
        if self.invalidated {
            return Freshness::Expired;
        }
        let (fresh_until, stale_until) = self.envelope_times;
        Freshness::at(now, fresh_until, stale_until)
    }

    fn answer(&self, fresh: Outcome) -> Lookup<V> {
        let outcome = match (&self.value, fresh) {
            (None, Outcome::Hit) => Outcome::Negative,
            (_, o) => o,
        };
        Lookup::cached(self.value.clone(), outcome, self.envelope_times.0)
    }
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
        self.inner.canonical_id(&key.to_id())
    }

    /// Read-through: the value of `key`, loaded from the cache's source on a miss.
    ///
    /// Returns [`Error::Config`] when the cache has no source; use
    /// [`Cache::get_or_load`] then.
    pub async fn get(&self, key: &K) -> Result<Lookup<V>> {
        let id = self.id_of(key)?;
        // The loader is built on the miss path only: a hit allocates nothing for it.
        self.inner.require_source()?;
        self.inner.clone().read(id, None).await
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
        let id = self.id_of(key)?;
        let loader = self.loader(load, Error::cause);
        self.inner.clone().read(id, Some(loader)).await
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
        let id = self.id_of(key).map_err(LoadError::Cache)?;
        let loader = self.loader(load, SharedLoadError::cause);
        (self.inner.clone().read(id, Some(loader)).await).map_err(LoadError::from_error)
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
        let ids = keys
            .iter()
            .map(|k| self.id_of(k))
            .collect::<Result<Vec<_>>>()?;
        let mut unique = Vec::with_capacity(ids.len());
        let mut seen = HashSet::with_capacity(ids.len());
        for id in &ids {
            if seen.insert(id.as_str()) {
                unique.push(id.clone());
            }
        }
        let answers = self.inner.clone().read_many(unique).await?;
        ids.iter()
            .map(|id| {
                answers.get(id).cloned().ok_or_else(|| {
                    Error::internal(format!("get_many lost the answer for id {id:?}"))
                })
            })
            .collect()
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
    pub(crate) fn canonical_id(&self, raw: &str) -> Result<String> {
        let id = match &self.source {
            Some(source) => source.canonical_id(raw)?,
            None => raw.to_owned(),
        };
        validate_id(&id)?;
        Ok(id)
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

    fn decode_entry(&self, id: &str, bytes: Bytes) -> Result<Entry<V>> {
        let env = Envelope::decode(bytes)?;
        let judged = self.coherence.judge(env.stamp.as_deref());
        let value = match env.payload {
            Some(payload) => Some(Arc::new(self.codec.decode(
                self.keys.entity(),
                id,
                payload,
            )?)),
            None => None,
        };
        Ok(Entry {
            value,
            envelope_times: (env.fresh_until, env.stale_until),
            load_us: env.load_us,
            invalidated: judged.invalidated,
            stamp: judged.stamp,
        })
    }

    /// Decodes a store entry; a corrupt one is logged, counted and treated as absent.
    fn entry_or_none(&self, id: &str, bytes: Option<Bytes>) -> Option<Entry<V>> {
        match self.decode_entry(id, bytes?) {
            Ok(entry) => Some(entry),
            Err(e) => {
                self.counters.bump(Event::CorruptEntry);
                tracing::warn!(entity = self.keys.entity(), id, error = %e, "unreadable cache entry, treated as a miss");
                None
            }
        }
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

    /// A single-key read; `loader: None` loads from the source.
    async fn read(self: Arc<Self>, id: String, loader: Option<Loader<V>>) -> Result<Lookup<V>> {
        let answer = self.read_uncounted(id, loader).await;
        if let Ok(lookup) = &answer {
            self.counters.read(lookup.outcome);
        }
        answer
    }

    async fn read_uncounted(
        self: &Arc<Self>,
        id: String,
        given: Option<Loader<V>>,
    ) -> Result<Lookup<V>> {
        let loader = |given: Option<Loader<V>>| given.map_or_else(|| self.source_loader(), Ok);
        // Taken before anything is read: see near.rs.
        let ticket = self.coherence.ticket(&id);
        if let Some(l1) = self
            .coherence
            .l1_get(&id, ticket, self.clock.now_ms())
            .await
        {
            return Ok(l1);
        }
        if self.breaker.is_open() {
            self.may_bypass(self.store_skipped())?;
            return self.clone().load_shared(id, loader(given)?).await;
        }
        self.coherence.bus.ensure_generations().await;
        let found = match self.check_layout().await {
            Ok(()) => {
                let started = Instant::now();
                let found = self.store.get(&self.keys.value_key(&id)).await;
                self.counters.cache_took(started.elapsed());
                found
            }
            Err(e) => Err(e),
        };
        let found = match found {
            Ok(found) => {
                self.breaker.reset();
                found
            }
            Err(e) if e.is_store_unavailable() => {
                self.store_failed(&e);
                self.may_bypass(e)?;
                return self.clone().load_shared(id, loader(given)?).await;
            }
            Err(e) => return Err(e),
        };
        let now = self.clock.now_ms();
        let Some(entry) = self.entry_or_none(&id, found) else {
            return self.clone().load_shared(id, loader(given)?).await;
        };
        match entry.freshness(now) {
            Freshness::Fresh => {
                if self.should_refresh_early(&entry, now) {
                    self.counters.bump(Event::EarlyRefresh);
                    self.refresh_in_background(id.clone(), loader(given)?, Mode::Early);
                }
                let answer = entry.answer(Outcome::Hit);
                let (value, fresh_until) = (entry.value, entry.envelope_times.0);
                (self.coherence)
                    .l1_put(&id, ticket, value, fresh_until, entry.stamp)
                    .await;
                Ok(answer)
            }
            Freshness::Stale => {
                self.serve_stale(id, loader(given)?, entry.answer(Outcome::Stale))
                    .await
            }
            Freshness::Expired => self.clone().load_shared(id, loader(given)?).await,
        }
    }

    fn should_refresh_early(&self, entry: &Entry<V>, now: u64) -> bool {
        let beta = self.policy.early_refresh;
        if beta <= 0.0 || entry.load_us == 0 {
            return false;
        }
        // r in (0, 1]: 1 − [0, 1).
        let r = 1.0 - self.random.unit();
        xfetch(
            now,
            entry.envelope_times.0,
            f64::from(entry.load_us) / 1000.0,
            beta,
            r,
        )
    }

    /// Starts a refresh that holds the lease, unless one runs; does not wait.
    fn refresh_in_background(self: &Arc<Self>, id: String, loader: Loader<V>, mode: Mode) {
        if self.flights.contains(&id) {
            return;
        }
        // The flight is a spawned task: it runs to completion on its own.
        drop(self.clone().flight(id, loader, mode));
    }

    /// Serves a stale entry at once (or after `soft_timeout`, if the refresh
    /// is not done by then) while one refresh runs in the background.
    async fn serve_stale(
        self: &Arc<Self>,
        id: String,
        loader: Loader<V>,
        stale: Lookup<V>,
    ) -> Result<Lookup<V>> {
        self.counters.bump(Event::Refresh);
        let refresh = self.clone().flight(id, loader, Mode::Refresh);
        match self.policy.soft_timeout {
            Some(soft) => match tokio::time::timeout(soft, refresh).await {
                Ok(Ok(Some(fresh))) => Ok(fresh),
                _ => Ok(stale),
            },
            None => Ok(stale),
        }
    }

    /// A miss: joins or starts the flight of `id` and waits for its answer.
    ///
    /// A flight it joins may be a refresh, which has no answer for a miss
    /// when another process holds the lease; then the read starts over
    /// with a flight of its own.
    async fn load_shared(self: Arc<Self>, id: String, loader: Loader<V>) -> Result<Lookup<V>> {
        let mut loader = Some(loader);
        for _ in 0..3 {
            let next = loader.take().map_or_else(|| self.source_loader(), Ok)?;
            if let Some(answer) = self.clone().flight(id.clone(), next, Mode::Miss).await? {
                return Ok(answer);
            }
        }
        let next = loader.map_or_else(|| self.source_loader(), Ok)?;
        self.load_unfilled(&id, next, Outcome::Miss).await
    }

    /// Joins the flight of `id`, or starts one in `mode`.
    fn flight(
        self: Arc<Self>,
        id: String,
        loader: Loader<V>,
        mode: Mode,
    ) -> impl Future<Output = Result<Option<Lookup<V>>>> + Send + 'static {
        let entity = self.keys.entity().to_owned();
        let key = id.clone();
        let leader = self.clone();
        let (flight, _) = self.flights.join_or_start(
            &key,
            move || leader.lead(id, loader, mode),
            |panic| {
                Err(Error::Loader {
                    entity: String::new(),
                    cause: Message::cause(format!("a load panicked: {panic}")),
                })
            },
        );
        async move {
            flight.await.map_err(|e| match e {
                Error::Loader {
                    entity: e_entity,
                    cause,
                } if e_entity.is_empty() => Error::Loader { entity, cause },
                other => other,
            })
        }
    }

    /// The flight: take the lease (or wait for its holder), load, fill.
    ///
    /// Answers `None` only for a refresh that found another holder of the
    /// lease: the stale value its callers already have stays the answer.
    /// A refresh whose load fails returns the error; its callers serve stale.
    async fn lead(
        self: Arc<Self>,
        id: String,
        loader: Loader<V>,
        mode: Mode,
    ) -> Result<Option<Lookup<V>>> {
        if self.breaker.is_open() {
            self.may_bypass(self.store_skipped())?;
            return self
                .load_unfilled(&id, loader, Outcome::Bypass)
                .await
                .map(Some);
        }
        let mut request = self.lease_request(&id, mode == Mode::Miss);
        let deadline = Instant::now() + self.policy.wait_timeout;
        let mut pause = Duration::from_millis(1);
        let mut waited = false;
        loop {
            match self.store.acquire(&request).await {
                Ok(Acquired::Lease { current }) => {
                    // A stale refresh that finds the entry fresh again (another
                    // process refreshed it since it was read) has nothing to do.
                    let now = self.clock.now_ms();
                    let refreshed = current
                        .filter(|_| mode == Mode::Refresh)
                        .and_then(|bytes| self.decode_entry(&id, bytes).ok())
                        .filter(|entry| entry.freshness(now) == Freshness::Fresh);
                    if let Some(entry) = refreshed {
                        self.release(&request).await;
                        return Ok(Some(entry.answer(Outcome::Hit)));
                    }
                    break;
                }
                Ok(Acquired::Value(bytes)) => {
                    let now = self.clock.now_ms();
                    // (A corrupt entry was already counted by the read that led here.)
                    match self.decode_entry(&id, bytes) {
                        Ok(entry) if entry.freshness(now) == Freshness::Fresh => {
                            return Ok(Some(entry.answer(Outcome::Hit)));
                        }
                        // Present but not fresh: take the lease over it.
                        _ => request.if_absent = false,
                    }
                }
                Ok(Acquired::Dirty(payload)) => {
                    return self.pending_answer(&id, payload).map(Some);
                }
                Ok(Acquired::Held) if mode != Mode::Miss => return Ok(None),
                Ok(Acquired::Held) => {
                    if !waited {
                        waited = true;
                        self.counters.bump(Event::LeaseWait);
                    }
                    if Instant::now() >= deadline {
                        self.counters.bump(Event::WaitTimeout);
                        return self
                            .load_unfilled(&id, loader, Outcome::Miss)
                            .await
                            .map(Some);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_POLL);
                }
                Err(e) if e.is_store_unavailable() => {
                    self.store_failed(&e);
                    self.may_bypass(e)?;
                    return self
                        .load_unfilled(&id, loader, Outcome::Bypass)
                        .await
                        .map(Some);
                }
                Err(e) => return Err(e),
            }
        }
        let filled = self.load_and_fill(id, loader, request).await;
        if filled.is_err() && mode != Mode::Miss {
            self.counters.bump(Event::StaleOnError);
        }
        filled.map(Some)
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

    /// A load whose result is returned but never written to the store
    /// (no lease: the store is down, or the wait for another holder ran out).
    async fn load_unfilled(
        &self,
        id: &str,
        loader: Loader<V>,
        outcome: Outcome,
    ) -> Result<Lookup<V>> {
        let (result, _) = self.timed_load(id, loader(id.to_owned())).await;
        Ok(Lookup::new(result?.map(Arc::new), outcome))
    }

    async fn load_and_fill(
        &self,
        id: String,
        loader: Loader<V>,
        lease: LeaseRequest,
    ) -> Result<Lookup<V>> {
        let (seq, ticket) = (self.coherence.seq(), self.coherence.ticket(&id));
        let (result, took) = self.timed_load(&id, loader(id.clone())).await;
        let value = match result {
            Ok(value) => value.map(Arc::new),
            Err(e) => {
                self.release(&lease).await;
                tracing::warn!(entity = self.keys.entity(), id, error = %e, "load failed");
                return Err(e);
            }
        };
        let mut fresh_until = None;
        match self.encode_loaded(value.as_ref(), took, seq) {
            Ok(Some((bytes, ttl))) => {
                let fill = Fill {
                    value_key: lease.value_key,
                    lease_key: lease.lease_key,
                    dirty_key: lease.dirty_key,
                    token: lease.token,
                    value: bytes,
                    ttl,
                };
                let filled = self.store.fill(&fill).await;
                if matches!(filled, Ok(true)) {
                    fresh_until = envelope_fresh_until(&fill.value);
                    self.near_fill(&id, ticket, value.clone(), &fill.value)
                        .await;
                }
                self.count_fill(filled);
            }
            Ok(None) => self.release(&lease).await,
            Err(e) => {
                self.release(&lease).await;
                return Err(e);
            }
        }
        Ok(Lookup::new(value, Outcome::Miss).fresh_until_at(fresh_until))
    }

    /// The answer for a key with a pending write-back write: the written
    /// value itself (`None`: a pending delete), as fresh as a hit.
    fn pending_answer(&self, id: &str, payload: Option<Bytes>) -> Result<Lookup<V>> {
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

    /// Whether a read may go to the source without the store. Not under
    /// write-back: its newest data lives in the store, so the store's
    /// error is the answer.
    fn may_bypass(&self, e: Error) -> Result<()> {
        if self.write_policy.is_write_back() {
            Err(e)
        } else {
            Ok(())
        }
    }

    /// The error of a write-back read while the breaker keeps the store skipped.
    fn store_skipped(&self) -> Error {
        Error::StoreUnavailable {
            store: self.store.name().to_owned(),
            cause: Message::cause("the store failed recently and is skipped for a moment"),
        }
    }

    pub(crate) fn count_fill(&self, filled: Result<bool>) {
        match filled {
            Ok(true) => self.counters.bump(Event::Fill),
            Ok(false) => self.counters.bump(Event::FillRefused),
            Err(e) => {
                self.store_failed(&e);
                tracing::warn!(entity = self.keys.entity(), error = %e, "could not fill the cache");
            }
        }
    }

    pub(crate) async fn release(&self, lease: &LeaseRequest) {
        if let Err(e) = self.store.release(&lease.lease_key, &lease.token).await {
            // The lease expires by itself after lease_ttl.
            tracing::debug!(entity = self.keys.entity(), error = %e, "could not release a lease");
        }
    }

    /// The batch read path of `get_many`; counts each answer once.
    async fn read_many(self: Arc<Self>, ids: Vec<String>) -> Result<HashMap<String, Lookup<V>>> {
        let answers = self.clone().read_many_uncounted(ids).await?;
        for answer in answers.values() {
            self.counters.read(answer.outcome);
        }
        Ok(answers)
    }

    async fn read_many_uncounted(
        self: Arc<Self>,
        ids: Vec<String>,
    ) -> Result<HashMap<String, Lookup<V>>> {
        let mut answers = HashMap::with_capacity(ids.len());
        let (ids, tickets): (Vec<String>, Vec<_>) = (self.coherence)
            .l1_many(ids, self.clock.now_ms(), &mut answers)
            .await
            .into_iter()
            .unzip();
        if ids.is_empty() {
            return Ok(answers);
        }
        self.coherence.bus.ensure_generations().await;
        let found = if self.breaker.is_open() {
            Err(None)
        } else {
            match self.check_layout().await {
                Ok(()) => {
                    let keys: Vec<String> = ids.iter().map(|id| self.keys.value_key(id)).collect();
                    let started = Instant::now();
                    let found = self.store.get_many(&keys).await.map_err(Some);
                    self.counters.cache_took(started.elapsed());
                    found
                }
                Err(e) => Err(Some(e)),
            }
        };
        let found = match found {
            Ok(found) => {
                self.breaker.reset();
                found
            }
            Err(Some(e)) if !e.is_store_unavailable() => return Err(e),
            Err(e) => {
                let e = match e {
                    Some(e) => {
                        self.store_failed(&e);
                        e
                    }
                    None => self.store_skipped(),
                };
                self.may_bypass(e)?;
                return self.bypass_many(ids).await;
            }
        };
        let now = self.clock.now_ms();
        let mut misses = Vec::new();
        for ((id, bytes), ticket) in ids.into_iter().zip(found).zip(tickets) {
            match self.entry_or_none(&id, bytes) {
                Some(entry) => match entry.freshness(now) {
                    Freshness::Fresh => {
                        answers.insert(id.clone(), entry.answer(Outcome::Hit));
                        let (value, fresh_until) = (entry.value, entry.envelope_times.0);
                        (self.coherence)
                            .l1_put(&id, ticket, value, fresh_until, entry.stamp)
                            .await;
                    }
                    Freshness::Stale => {
                        let stale = entry.answer(Outcome::Stale);
                        self.counters.bump(Event::Refresh);
                        self.refresh_in_background(
                            id.clone(),
                            self.source_loader()?,
                            Mode::Refresh,
                        );
                        answers.insert(id, stale);
                    }
                    Freshness::Expired => misses.push(id),
                },
                None => misses.push(id),
            }
        }
        if !misses.is_empty() {
            self.load_misses(misses, &mut answers).await?;
        }
        Ok(answers)
    }

    /// Misses of a batch: lease them all in one pipeline, load the leased
    /// ones with one `load_many`, fill them in one pipeline; keys loading
    /// elsewhere go through the single-key path (which waits for them).
    async fn load_misses(
        self: &Arc<Self>,
        misses: Vec<String>,
        answers: &mut HashMap<String, Lookup<V>>,
    ) -> Result<()> {
        let (mut single, batch): (Vec<String>, Vec<String>) =
            misses.into_iter().partition(|id| self.flights.contains(id));
        let requests: Vec<LeaseRequest> = batch
            .iter()
            .map(|id| self.lease_request(id, true))
            .collect();
        let acquired = match self.store.acquire_many(&requests).await {
            Ok(acquired) => acquired,
            Err(e) if e.is_store_unavailable() => {
                self.store_failed(&e);
                self.may_bypass(e)?;
                answers.extend(
                    self.bypass_many(batch.into_iter().chain(single).collect())
                        .await?,
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let now = self.clock.now_ms();
        let mut leased = Vec::new();
        for ((id, request), got) in batch.into_iter().zip(requests).zip(acquired) {
            match got {
                Acquired::Lease { .. } => leased.push((id, request)),
                Acquired::Value(bytes) => match self.entry_or_none(&id, Some(bytes)) {
                    Some(entry) if entry.freshness(now) == Freshness::Fresh => {
                        answers.insert(id, entry.answer(Outcome::Hit));
                    }
                    _ => single.push(id),
                },
                Acquired::Held => single.push(id),
                Acquired::Dirty(payload) => {
                    let answer = self.pending_answer(&id, payload)?;
                    answers.insert(id, answer);
                }
            }
        }
        if !leased.is_empty() {
            for (id, value, fresh_until) in self.load_and_fill_many(leased).await? {
                let lookup = Lookup::new(value, Outcome::Miss).fresh_until_at(fresh_until);
                answers.insert(id, lookup);
            }
        }
        let waits = single.into_iter().map(|id| {
            let this = self.clone();
            async move {
                let loader = this.source_loader()?;
                let answer = this.clone().load_shared(id.clone(), loader).await?;
                Ok::<_, Error>((id, answer))
            }
        });
        for pair in join_all(waits).await {
            let (id, answer) = pair?;
            answers.insert(id, answer);
        }
        Ok(())
    }

    /// A lease request for `id` with a fresh token.
    pub(crate) fn lease_request(&self, id: &str, if_absent: bool) -> LeaseRequest {
        LeaseRequest {
            value_key: self.keys.value_key(id),
            lease_key: self.keys.lease_key(id),
            dirty_key: self.keys.dirty_key(id),
            token: self.random.token(),
            ttl: self.policy.lease_ttl,
            if_absent,
        }
    }

    /// Loads leased ids with one `load_many` and fills them with one
    /// pipeline. Answers each id's value and whether its fill landed
    /// (`false`: not cacheable, or the lease was voided meanwhile).
    pub(crate) async fn load_and_fill_many(
        &self,
        leased: Vec<(String, LeaseRequest)>,
    ) -> Result<Vec<(String, Option<Arc<V>>, Option<u64>)>> {
        let source = self.require_source()?;
        let ids: Vec<String> = leased.iter().map(|(id, _)| id.clone()).collect();
        let seq = self.coherence.seq();
        let load = async move { source.load_many(&ids).await }.boxed();
        let (loaded, took) = self.timed_load("(many)", load).await;
        let mut loaded = match loaded {
            Ok(map) => map,
            Err(e) => {
                join_all(leased.iter().map(|(_, lease)| self.release(lease))).await;
                return Err(e);
            }
        };
        let mut fills = Vec::with_capacity(leased.len());
        let mut filled_ids = Vec::with_capacity(leased.len());
        let mut answers = Vec::with_capacity(leased.len());
        let mut unfilled = Vec::new();
        for (id, lease) in leased {
            let value = loaded.remove(&id).map(Arc::new);
            match self.encode_loaded(value.as_ref(), took, seq)? {
                Some((bytes, ttl)) => {
                    filled_ids.push(answers.len());
                    fills.push(Fill {
                        value_key: lease.value_key,
                        lease_key: lease.lease_key,
                        dirty_key: lease.dirty_key,
                        token: lease.token,
                        value: bytes,
                        ttl,
                    });
                }
                None => unfilled.push(lease),
            }
            answers.push((id, value, None));
        }
        join_all(unfilled.iter().map(|lease| self.release(lease))).await;
        match self.store.fill_many(&fills).await {
            Ok(results) => {
                for ((at, landed), fill) in filled_ids.into_iter().zip(results).zip(&fills) {
                    self.count_fill(Ok(landed));
                    if landed {
                        answers[at].2 = envelope_fresh_until(&fill.value);
                    }
                }
            }
            Err(e) => self.count_fill(Err(e)),
        }
        Ok(answers)
    }

    /// Many keys straight from the source, the store being unavailable.
    async fn bypass_many(&self, ids: Vec<String>) -> Result<HashMap<String, Lookup<V>>> {
        let source = self
            .source
            .clone()
            .ok_or_else(|| Error::Config("no source".into()))?;
        let load = {
            let ids = ids.clone();
            async move { source.load_many(&ids).await }.boxed()
        };
        let (loaded, _) = self.timed_load("(many)", load).await;
        let mut loaded = loaded?;
        Ok(ids
            .into_iter()
            .map(|id| {
                let value = loaded.remove(&id).map(Arc::new);
                (id, Lookup::new(value, Outcome::Bypass))
            })
            .collect())
    }
}
