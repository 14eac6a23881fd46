//! The read-through flow every kind of collection shares: read the cached
//! collection, else load the owner once (a flight per process, a lease
//! across processes), fill the store in chunks, and answer.
//!
//! Why one flow: the guarantees of the module docs (one load per expiry
//! across processes, waiters that load by themselves past `wait_timeout`,
//! a fill refused once a write or an invalidation voided its lease, the
//! database as the fallback) are the same for a set, a feed and a
//! leaderboard; written once, no kind can drift from them. A kind says
//! what is particular to it through [`Kind`]: how the store reads and
//! fills it, and how a cached, loaded or database answer is made.

use super::{token, CollectionOutcome, CollectionRead, Core, Counters};
use crate::error::{Error, Result};
use crate::flight::Flights;
use crate::store::{CollectionAcquired, CollectionKeys, CollectionMeta};
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a poll for another holder's fill pauses at most.
const MAX_POLL: Duration = Duration::from_millis(50);

/// What one flight (one load of an owner) ended with.
#[derive(Debug)]
pub(crate) enum Filled<L> {
    /// Someone else's fill is in place: read it.
    Present,
    /// Loaded by this flight (filled or not), the load begun at the
    /// instant given.
    Loaded(Arc<L>, Instant),
}

// Not derived: a derive would ask `L: Clone`, and the load is shared, not copied.
impl<L> Clone for Filled<L> {
    fn clone(&self) -> Self {
        match self {
            Filled::Present => Filled::Present,
            Filled::Loaded(load, began) => Filled::Loaded(Arc::clone(load), *began),
        }
    }
}

/// What a read of the cached collection found.
pub(crate) enum Cached<A> {
    /// Nothing cached.
    Miss,
    /// The meta, and the answer when the cached collection holds it (else
    /// the database answers, outcome `Database`).
    Hit {
        /// The meta.
        meta: CollectionMeta,
        /// The answer, if the cache can give it.
        answer: Option<A>,
    },
}

/// How a loaded collection answers a read.
pub(crate) enum FromLoad<S> {
    /// From the load.
    Said(S),
    /// From the database (the load does not hold the answer: the owner is
    /// above the cap), given the count if the load has it.
    Database(Option<u64>),
}

/// What a kind of collection tells the shared flow.
#[async_trait::async_trait]
pub(crate) trait Kind: Clone + Send + Sync + 'static {
    /// The kind in messages: `set`, `feed`, `leaderboard`.
    const WHAT: &'static str;
    /// A read's question.
    type Ask: Send + Sync;
    /// A read's answer.
    type Said: Send;
    /// What the store answers from a cached collection.
    type Answer: Send;
    /// What a load of one owner from the source holds.
    type Load: Send + Sync + 'static;

    /// The shared core (keys, store, clock, settings, counters).
    fn core(&self) -> &Core;

    /// The loads in flight in this process.
    fn flights(&self) -> &Flights<Result<Filled<Self::Load>>>;

    /// Reads the cached collection of `keys` for `ask` (one round trip).
    async fn read_cached(
        &self,
        keys: &CollectionKeys,
        ask: &Self::Ask,
    ) -> Result<Cached<Self::Answer>>;

    /// The answer from the cached collection.
    fn said_from_cache(
        &self,
        ask: &Self::Ask,
        meta: CollectionMeta,
        answer: Self::Answer,
    ) -> Self::Said;

    /// The answer from a load.
    fn said_from_load(&self, ask: &Self::Ask, load: &Self::Load) -> FromLoad<Self::Said>;

    /// The answer from the database (`count`: the owner's, if known).
    async fn said_from_source(
        &self,
        owner: &str,
        ask: &Self::Ask,
        count: Option<u64>,
    ) -> Result<Self::Said>;

    /// Loads `owner` from the source.
    async fn load_source(&self, owner: &str) -> Result<Self::Load>;

    /// Writes a load into the store under the lease `token`, in chunks
    /// (see [`fill_chunks`]); whether it landed.
    async fn fill(&self, keys: &CollectionKeys, token: &str, load: &Self::Load) -> Result<bool>;

    /// Whether a reader that joined a load begun before the reader itself
    /// must not answer from it (it loads again, a few times, then reads
    /// the cache or the database): under write-back that load may predate
    /// a write acknowledged before this reader began, and a read must
    /// never go back in time. Default: no.
    fn joined_loads_may_be_old(&self) -> bool {
        false
    }
}

/// Answers `ask` for `owner`: from the cached collection (`Hit`; `Stale`
/// past its TTL inside the stale window, while one refresh runs in the
/// background), else after one load (`Miss`), or from the database
/// (`Database` above the cap, `Bypass` with the store unavailable, `Miss`
/// when a fill landed and was gone again).
pub(crate) async fn read<K: Kind>(
    kind: &K,
    owner: &str,
    ask: K::Ask,
) -> Result<CollectionRead<K::Said>> {
    let core = kind.core();
    let keys = core.owner_keys(owner);
    let read_began = Instant::now();
    let mut first = true;
    loop {
        match kind.read_cached(&keys, &ask).await {
            Ok(Cached::Hit { meta, answer }) if meta.fresh_until_ms > core.now_ms() => {
                return match answer {
                    Some(answer) => {
                        let outcome = if first {
                            Counters::bump(&core.counters.hits);
                            CollectionOutcome::Hit
                        } else {
                            CollectionOutcome::Miss
                        };
                        Ok(CollectionRead {
                            value: kind.said_from_cache(&ask, meta, answer),
                            outcome,
                        })
                    }
                    None => {
                        Counters::bump(&core.counters.database);
                        from_source(
                            kind,
                            owner,
                            &ask,
                            Some(meta.count),
                            CollectionOutcome::Database,
                        )
                        .await
                    }
                };
            }
            Ok(Cached::Hit {
                meta,
                answer: Some(answer),
            }) if in_stale_window(core, &meta) => {
                Counters::bump(&core.counters.stale);
                refresh_in_background(kind, owner);
                return Ok(CollectionRead {
                    value: kind.said_from_cache(&ask, meta, answer),
                    outcome: CollectionOutcome::Stale,
                });
            }
            Ok(_) => {}
            Err(e) if e.is_store_unavailable() => {
                Counters::bump(&core.counters.bypass);
                return from_source(kind, owner, &ask, None, CollectionOutcome::Bypass).await;
            }
            Err(e) => return Err(e),
        }
        if !first {
            // A fill landed and was gone again (invalidated, evicted):
            // answer from the database rather than loop.
            return from_source(kind, owner, &ask, None, CollectionOutcome::Miss).await;
        }
        Counters::bump(&core.counters.misses);
        first = false;
        let Some(filled) = fresh_load(kind, owner, read_began).await? else {
            continue;
        };
        match filled {
            Filled::Present => continue,
            Filled::Loaded(load, _) => {
                return match kind.said_from_load(&ask, &load) {
                    FromLoad::Said(value) => Ok(CollectionRead {
                        value,
                        outcome: CollectionOutcome::Miss,
                    }),
                    FromLoad::Database(count) => {
                        from_source(kind, owner, &ask, count, CollectionOutcome::Database).await
                    }
                };
            }
        }
    }
}

/// How often a reader joins a load begun before it, at most, before it
/// reads the cache or the database instead (see
/// [`Kind::joined_loads_may_be_old`]).
const OLD_LOADS: u32 = 3;

/// One load of `owner` this reader may answer from: `None` when every
/// load it joined began before `read_began` and the kind may not answer
/// from those (then the cache or the database answers).
async fn fresh_load<K: Kind>(
    kind: &K,
    owner: &str,
    read_began: Instant,
) -> Result<Option<Filled<K::Load>>> {
    for _ in 0..OLD_LOADS {
        let (filled, started) = load(kind, owner).await?;
        match filled {
            Filled::Loaded(_, began)
                if !started && began < read_began && kind.joined_loads_may_be_old() => {}
            filled => return Ok(Some(filled)),
        }
    }
    Ok(None)
}

/// Whether a collection past its TTL may still be served: inside the
/// stale window (`stale` after the TTL; none when `stale` is 0).
fn in_stale_window(core: &Core, meta: &CollectionMeta) -> bool {
    let stale_ms = crate::clock::duration_ms(core.settings.stale);
    let now = core.now_ms();
    stale_ms > 0 && meta.fresh_until_ms <= now && now < meta.fresh_until_ms.saturating_add(stale_ms)
}

/// Loads and fills `owner` again without making the reader wait: the
/// flight and the lease keep it to one load, however many stale reads
/// ask for it.
fn refresh_in_background<K: Kind>(kind: &K, owner: &str) {
    let (kind, owner) = (kind.clone(), owner.to_owned());
    tokio::spawn(async move {
        if let Err(e) = load(&kind, &owner).await {
            tracing::debug!(
                collection = kind.core().keys.entity(),
                error = %e,
                "the background refresh of a stale {} failed",
                K::WHAT
            );
        }
    });
}

async fn from_source<K: Kind>(
    kind: &K,
    owner: &str,
    ask: &K::Ask,
    count: Option<u64>,
    outcome: CollectionOutcome,
) -> Result<CollectionRead<K::Said>> {
    let value = kind.said_from_source(owner, ask, count).await?;
    Ok(CollectionRead { value, outcome })
}

/// One load of `owner` per process (a flight), under its lease; and
/// whether this call started the flight (else it joined one).
async fn load<K: Kind>(kind: &K, owner: &str) -> Result<(Filled<K::Load>, bool)> {
    let this = kind.clone();
    let id = owner.to_owned();
    let (flight, started) = kind.flights().join_or_start(
        owner,
        move || async move { load_under_lease(&this, &id).await },
        |panic| {
            Err(Error::Internal {
                what: format!("a {} load panicked: {panic}", K::WHAT),
            })
        },
    );
    Ok((flight.await?, started))
}

/// Takes the owner's lease (or waits for its holder's fill, and past
/// `wait_timeout` loads without filling), loads and fills.
async fn load_under_lease<K: Kind>(kind: &K, owner: &str) -> Result<Filled<K::Load>> {
    let core = kind.core();
    let colls = core.collections()?;
    let keys = core.owner_keys(owner);
    let token = token();
    let deadline = Instant::now() + core.settings.wait_timeout;
    let mut pause = Duration::from_millis(2);
    let mut waited = false;
    loop {
        match colls
            .collection_acquire(&keys, &token, core.settings.lease_ttl, core.now_ms())
            .await?
        {
            CollectionAcquired::Present => return Ok(Filled::Present),
            CollectionAcquired::Lease => break,
            CollectionAcquired::Held => {
                if !waited {
                    waited = true;
                    Counters::bump(&core.counters.lease_waits);
                }
                if Instant::now() >= deadline {
                    Counters::bump(&core.counters.loads);
                    let began = Instant::now();
                    let load = kind.load_source(owner).await?;
                    return Ok(Filled::Loaded(Arc::new(load), began));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_POLL);
            }
        }
    }
    Counters::bump(&core.counters.loads);
    let began = Instant::now();
    let load = match kind.load_source(owner).await {
        Ok(load) => load,
        Err(e) => {
            let _ = colls.collection_release(&keys, &token).await;
            return Err(e);
        }
    };
    match kind.fill(&keys, &token, &load).await {
        Ok(true) => Counters::bump(&core.counters.fills),
        Ok(false) => Counters::bump(&core.counters.fills_refused),
        Err(e) => {
            tracing::debug!(
                collection = core.keys.entity(),
                error = %e,
                "could not fill a {}",
                K::WHAT
            );
            let _ = colls.collection_release(&keys, &token).await;
        }
    }
    Ok(Filled::Loaded(Arc::new(load), began))
}

impl Core {
    /// The meta of a fill loaded now (fresh for the TTL); records `count`
    /// as the last loaded size.
    pub(crate) fn fill_meta(&self, complete: bool, count: u64) -> CollectionMeta {
        let now = self.now_ms();
        self.counters
            .last_size
            .store(count, std::sync::atomic::Ordering::Relaxed);
        CollectionMeta {
            fresh_until_ms: now.saturating_add(crate::clock::duration_ms(self.settings.ttl)),
            loaded_ms: now,
            complete,
            count,
            stamp: 0,
        }
    }
}

/// Writes `len` items in chunks of at most `size` (at least one chunk,
/// empty for no items): `write` gets each chunk's range of the items,
/// whether it is the first, and the meta on the last. Whether every chunk
/// landed (a refused chunk ends the fill).
pub(crate) async fn fill_chunks<F, Fut>(
    len: usize,
    size: usize,
    meta: CollectionMeta,
    mut write: F,
) -> Result<bool>
where
    F: FnMut(Range<usize>, bool, Option<CollectionMeta>) -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let starts: Vec<usize> = if len == 0 {
        vec![0]
    } else {
        (0..len).step_by(size.max(1)).collect()
    };
    let last = starts.len() - 1;
    for (i, start) in starts.into_iter().enumerate() {
        let range = start..start.saturating_add(size).min(len);
        if !write(range, i == 0, (i == last).then_some(meta)).await? {
            return Ok(false);
        }
    }
    Ok(true)
}
