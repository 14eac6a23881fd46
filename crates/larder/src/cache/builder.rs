//! [`CacheBuilder`]: every setting of a [`Cache`], each with its default.
//!
//! The defaults and limits live with the option types ([`crate::policy`]'s
//! constants, [`NearOptions`], [`WriteBackOptions`]); [`CacheBuilder::validate`]
//! is the one check of them all, and a refused setting is an
//! [`Error::InvalidSetting`] naming it, so a configuration file can report
//! it at its own key.

use crate::breaker::Breaker;
use crate::cache::WritePolicy;
use crate::cache::{Cache, Inner};
use crate::clock::{Clock, SystemClock};
use crate::codec::{Codec, Json};
use crate::coherence::{Coherence, Tagger, SUBSCRIBE_WAIT};
use crate::error::{Error, Result};
use crate::flight::Flights;
use crate::key::{CacheKey, KeySpace, DEFAULT_SHARDS};
use crate::near::NearOptions;
use crate::policy::{Policy, Random};
use crate::representation::Representation;
use crate::source::Source;
use crate::stats::Counters;
use crate::store::{MemoryStore, Store, DEFAULT_MEMORY_CAPACITY};
use crate::write_back::{durability, State, WriteBackOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// Builds a [`Cache`]. Consuming: chain the setters, then `build().await`.
#[must_use = "a builder does nothing until build() is called"]
pub struct CacheBuilder<K: ?Sized, V> {
    prefix: String,
    entity: Option<String>,
    shards: u16,
    store: Option<Arc<dyn Store>>,
    source: Option<Arc<dyn Source<V>>>,
    codec: Arc<dyn Codec<V>>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    wait_timeout_set: bool,
    seed: Option<u64>,
    write_policy: Option<WritePolicy>,
    coherence: CoherenceSettings<V>,
    representation: Representation,
    _key: PhantomData<fn(&K)>,
}

/// The builder's near cache, tagger and bus settings.
struct CoherenceSettings<V> {
    near: Option<NearOptions>,
    tagger: Option<Tagger<V>>,
    bus: Option<bool>,
    state_dir: Option<std::path::PathBuf>,
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A builder with every default; only `entity` must be set.
    pub fn builder() -> CacheBuilder<K, V> {
        CacheBuilder {
            prefix: "larder".into(),
            entity: None,
            shards: DEFAULT_SHARDS,
            store: None,
            source: None,
            codec: Arc::new(Json),
            clock: Arc::new(SystemClock),
            policy: Policy::default(),
            wait_timeout_set: false,
            seed: None,
            write_policy: None,
            coherence: CoherenceSettings {
                near: None,
                tagger: None,
                bus: None,
                state_dir: None,
            },
            representation: Representation::String,
            _key: PhantomData,
        }
    }
}

impl<K, V> CacheBuilder<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// The first segment of every key, `[a-z0-9_-]`. Default: `larder`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The entity's name, `[a-z0-9_-]`: the second segment of every key. Required.
    pub fn entity(mut self, entity: impl Into<String>) -> Self {
        self.entity = Some(entity.into());
        self
    }

    /// How many shards the entity's keys spread over (recorded in the store
    /// on first use; a later start with another count is refused). Default: 64.
    pub fn shards(mut self, shards: u16) -> Self {
        self.shards = shards;
        self
    }

    /// The shared store (see [`crate::store::connect`]). Default: a private
    /// `memory://` store of 100,000 keys.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The source that read-through loads from. Default: none (cache-aside
    /// with [`Cache::get_or_load`] only).
    pub fn source(mut self, source: impl Source<V>) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// How values are encoded in the store. Default: [`Json`].
    pub fn codec(mut self, codec: impl Codec<V>) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// How entries are held in the store: one string (the default) or one
    /// Redis hash, a field per column ([`Representation::Hash`]; needs a
    /// JSON codec; under write-back its `patch` sets just the given
    /// fields, with no compare-and-set). Recorded in the
    /// store with the shard layout: a later start with another one is
    /// refused.
    pub fn representation(mut self, representation: Representation) -> Self {
        self.representation = representation;
        self
    }

    /// The clock freshness is judged by. Default: the system clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long an entry is fresh. Default: 60 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.policy.ttl = ttl;
        self
    }

    /// Scales each write's freshness by a random factor in `1 ± jitter`, so
    /// entries written together do not expire together; in `[0, 1)`. Default: 0.1.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.policy.jitter = jitter;
        self
    }

    /// The window after freshness in which an entry may still be served
    /// (stale-while-revalidate, and fail-safe when the source fails);
    /// zero turns both off. Default: 5 min.
    pub fn stale(mut self, stale: Duration) -> Self {
        self.policy.stale = stale;
        self
    }

    /// How long "not found" is remembered; zero: not at all. Default: 10 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.policy.negative_ttl = ttl;
        self
    }

    /// How long a loader owns a key before another may take over; longer
    /// than `load_timeout` and `wait_timeout`. Default: 5 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.policy.lease_ttl = ttl;
        self
    }

    /// The hard limit of one load: past it the load is abandoned and the
    /// read fails (or serves stale). Default: 2 s.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.policy.load_timeout = timeout;
        self
    }

    /// With a stale value present, how long a read waits for the refresh
    /// before answering with the stale value (the refresh goes on in the
    /// background); zero turns it off. Default: zero (stale is served at once).
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.policy.soft_timeout = Some(timeout).filter(|t| !t.is_zero());
        self
    }

    /// How long a reader waits for another process's load of the same key
    /// before loading by itself (without filling). Default: `load_timeout`.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.policy.wait_timeout = timeout;
        self.wait_timeout_set = true;
        self
    }

    /// XFetch's β: how eagerly reads refresh entries before they expire;
    /// 0 turns early refresh off. Default: 1.0.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.policy.early_refresh = beta;
        self
    }

    /// How `put`, `put_many`, `patch` and `delete` reach the source and the
    /// cache. Default: `Through` for a writable source, `ReadOnly` for a
    /// read-only one (a view, a closure).
    pub fn write_policy(mut self, policy: WritePolicy) -> Self {
        self.write_policy = Some(policy);
        self
    }

    /// Adds a near cache (L1): decoded values in process, answered without
    /// a network call (outcome `l1`), kept coherent over the invalidation
    /// bus. Default: none.
    pub fn near(mut self, options: NearOptions) -> Self {
        self.coherence.near = Some(options);
        self
    }

    /// Derives each entry's tags from its value when it is filled or
    /// written, for [`Cache::invalidate_tag`]. Default: none.
    pub fn tagger(mut self, tagger: impl Fn(&V) -> Vec<String> + Send + Sync + 'static) -> Self {
        self.coherence.tagger = Some(Arc::new(tagger));
        self
    }

    /// Whether this cache subscribes to its prefix's invalidation channel
    /// (a pub/sub connection of its own), stamps entries and checks stamps.
    /// A near cache, tags and [`Cache::purge`] reach a cache only through
    /// it. Default: on with a near cache or a tagger, else off (writes and
    /// invalidations are published either way).
    pub fn bus(mut self, on: bool) -> Self {
        self.coherence.bus = Some(on);
        self
    }

    /// A directory where this cache keeps invalidations it owes (the
    /// store or the channel could not take them) across processes: a
    /// marker file is written as soon as one is owed, a crash leaves it,
    /// shutdown writes the exact list, and the next cache built with the
    /// same directory (same prefix and entity) replays it. Created if
    /// missing; one directory can serve many entities, but each running
    /// cache of a prefix and entity needs a directory of its own (two
    /// instances sharing one would remove each other's file). Default:
    /// none (what is owed lives in memory only).
    pub fn state_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.coherence.state_dir = Some(dir.into());
        self
    }

    /// Seeds the randomness of jitter and early refresh, for reproducible
    /// tests. Default: unseeded.
    pub fn random_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks every setting against its limits and the others, without
    /// touching the store or the source: the first thing
    /// [`build`](Self::build) does. A refused setting is an
    /// [`Error::InvalidSetting`] whose `setting` is the setter's name
    /// (`ttl`, `load_timeout`, `shards`), or the option field's
    /// (`near.ttl`, `write_back.batch`).
    pub fn validate(&self) -> Result<()> {
        KeySpace::validate_shards(self.shards)?;
        self.effective_policy().validate()?;
        if let Some(near) = &self.coherence.near {
            near.validate()?;
        }
        if let Some(WritePolicy::Back(settings)) = &self.write_policy {
            settings.validate()?;
        }
        if self.representation == Representation::Hash && !self.codec.is_json() {
            return Err(Error::setting(
                "representation",
                "a hash entity needs a JSON codec (Json or PassThrough): its fields are JSON values",
            ));
        }
        Ok(())
    }

    /// The policy as the cache runs it: `wait_timeout` follows
    /// `load_timeout` unless it was set.
    fn effective_policy(&self) -> Policy {
        let mut policy = self.policy.clone();
        if !self.wait_timeout_set {
            policy.wait_timeout = policy.load_timeout;
        }
        policy
    }

    /// Checks the settings ([`validate`](Self::validate)), records (or
    /// checks) the shard layout in the store, and returns the cache.
    ///
    /// A store that does not answer now is not an error: the layout is then
    /// checked on first use, and reads bypass the store until it answers.
    pub async fn build(mut self) -> Result<Cache<K, V>> {
        self.validate()?;
        let entity = self.entity.take().ok_or_else(|| {
            Error::Config("a cache needs an entity name: call .entity(\"...\")".into())
        })?;
        let keys = KeySpace::new(&self.prefix, &entity, self.shards)?
            .with_representation(self.representation);
        self.policy = self.effective_policy();
        let writable = self.source.as_ref().is_none_or(|s| s.is_writable());
        let write_policy = match self.write_policy {
            None if writable => WritePolicy::Through,
            None => WritePolicy::ReadOnly,
            Some(WritePolicy::ReadOnly) => WritePolicy::ReadOnly,
            Some(policy) if writable => policy,
            Some(policy) => {
                return Err(Error::Config(format!(
                    "entity `{entity}` cannot be written `{}`: its source is read-only (a view, a query or a closure); use WritePolicy::ReadOnly",
                    policy.as_str()
                )))
            }
        };
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new(DEFAULT_MEMORY_CAPACITY)));
        let write_back = match write_policy {
            WritePolicy::Back(settings) => Some(write_back_state(
                &entity,
                &keys,
                store.as_ref(),
                self.source.as_deref(),
                settings,
            )?),
            _ => None,
        };
        let state_file = match &self.coherence.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::Config(format!("state directory {}: {e}", dir.display()))
                })?;
                Some(dir.join(format!("{}.{entity}.owed.json", self.prefix)))
            }
            None => None,
        };
        let coherence = Coherence::new(
            store.clone(),
            keys.clone(),
            self.coherence.near,
            self.coherence.tagger,
            self.coherence.bus,
            state_file,
        );
        let counters = Counters::new(keys.entity());
        let fills = super::fill_watch::FillWatch::new(keys.fill_channel());
        let cache = Cache::from_inner(Inner {
            breaker: Breaker::new(store.name()),
            coherence,
            fills,
            keys,
            store,
            source: self.source,
            codec: self.codec,
            clock: self.clock,
            policy: self.policy,
            random: self.seed.map_or(Random::Thread, Random::seeded),
            flights: Flights::new(),
            counters,
            layout_checked: tokio::sync::OnceCell::new(),
            write_policy,
            write_back: write_back.clone(),
        });
        cache.inner.coherence.bus.start(SUBSCRIBE_WAIT).await;
        cache.inner.start_tag_compaction();
        match cache.inner.check_layout().await {
            Err(e) if !e.is_store_unavailable() => return Err(e),
            _ => {}
        }
        if let Some(state) = write_back {
            // A store that does not answer yet is checked on first use.
            match cache.inner.ready_to_write(&state).await {
                Err(e) if !e.is_store_unavailable() => return Err(e),
                _ => {}
            }
            state.flusher.start(&cache.inner, state.clone());
        }
        Ok(cache)
    }
}

/// Write-back's state for a new cache: a store that can hold a write-back
/// log and a source to flush to (durability is checked by the caller).
fn write_back_state<V: Send + Sync + 'static>(
    entity: &str,
    keys: &KeySpace,
    store: &dyn Store,
    source: Option<&dyn Source<V>>,
    settings: WriteBackOptions,
) -> Result<Arc<State>> {
    let Some(source) = source else {
        return Err(Error::Config(format!(
            "entity `{entity}`: write-back needs a source to flush to; give the builder one"
        )));
    };
    if !source.fences_flushes() {
        tracing::warn!(entity, "the source does not fence flushes: a flusher that stalls past its lease could overwrite a newer flush");
    }
    let Some(log) = store.dirty_log() else {
        return Err(durability::in_process(entity, store));
    };
    let shards = (0..keys.shards())
        .map(|shard| crate::write_back::shard_keys(keys, shard))
        .collect();
    Ok(Arc::new(State {
        settings,
        log,
        shards,
        counters: crate::write_back::Counters::new(keys.entity()),
        flusher: Default::default(),
        token: crate::policy::Random::Thread.token(),
        durable: Default::default(),
        fence_ready: Default::default(),
        fk_attempts: Default::default(),
    }))
}
