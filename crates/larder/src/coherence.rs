//! Where the near cache, tags and the invalidation bus meet the read and
//! write paths: the few calls `cache.rs` and `write.rs` make, and the
//! public invalidation methods of [`Cache`].
//!
//! # What a read costs
//! - An L1 hit: a moka lookup and a few atomic comparisons (its ticket,
//!   its freshness against larder's clock, its stamp against the
//!   generations); no network call.
//! - A store hit: still one `GET`; the stamp is checked against the
//!   generations kept in process. Only while the bus's subscription is
//!   down does a read of a subscribed cache first fetch the generations
//!   (one more round trip).
//! - A cache without near cache, tags or `.bus(true)` writes no stamps and
//!   checks none: nothing changes for it.
//!
//! # What a write costs
//! One `PUBLISH` after the store was updated (or deleted from), so other
//! instances' near caches drop the key.
//!
//! # Tag compaction
//! Every cache runs a background task (holding only a `Weak` reference,
//! ending with the cache) that compacts the entity's tag generations every
//! quarter horizon (no more often than every second, at least every 5 s) while
//! this instance knows of any invalidated tag: tags idle past the horizon
//! leave the store's hash and every process's copy (see `generation.rs`
//! for the rule and why it is safe). [`Cache::compact_tags`] runs one
//! step now.

use crate::cache::{Cache, Inner};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::generation::{tag_horizon, validate_tag, validate_tags, Stamp};
use crate::invalidation::Bus;
use crate::key::{CacheKey, KeySpace};
use crate::near::{Evict, Near, NearEntry, NearOptions, Ticket};
use crate::outcome::{Lookup, Outcome};
use crate::stats::{NearCounters, NearEvent, NearStats};
use crate::store::{Compaction, Store};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Derives an entry's tags from its value; see [`CacheBuilder::tagger`](crate::CacheBuilder::tagger).
pub(crate) type Tagger<V> = Arc<dyn Fn(&V) -> Vec<String> + Send + Sync>;

/// How long `build` waits for the bus's first subscription.
pub(crate) const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// Bounds of the background tag compaction's period (a quarter horizon).
const COMPACT_EVERY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(5));

/// The background tag compaction: one step every `every` while the
/// instance keeps stamps and knows of a tag (or cannot know, its bus being
/// down); a failed step is tried again at the next tick.
async fn compact_tags_every<V: Send + Sync + 'static>(inner: Weak<Inner<V>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let bus = &inner.coherence.bus;
        // A cache that keeps no stamps tracks no tags; one that knows its
        // generations and no tag has nothing to compact.
        if !bus.stamps() || (!bus.generations.has_tags() && bus.generations_known()) {
            continue;
        }
        if let Err(e) = inner.compact_tags().await {
            tracing::debug!(entity = inner.keys.entity(), error = %e, "tag compaction failed; retried at the next tick");
        }
    }
}

/// The near cache, the tagger and the bus of one cache.
pub(crate) struct Coherence<V> {
    near: Option<Near<V>>,
    /// The near cache's TTL, if it has one (part of the tag horizon).
    near_ttl: Option<Duration>,
    tagger: Option<Tagger<V>>,
    pub(crate) bus: Arc<Bus>,
}

/// A stamp judged against the generations: `invalidated` entries are misses.
pub(crate) struct Judged {
    pub(crate) invalidated: bool,
    pub(crate) stamp: Option<Stamp>,
}

impl<V: Send + Sync + 'static> Coherence<V> {
    /// `subscribe`: `None` follows the default (subscribe when there is a
    /// near cache or a tagger).
    pub(crate) fn new(
        store: Arc<dyn Store>,
        keys: KeySpace,
        near: Option<NearOptions>,
        tagger: Option<Tagger<V>>,
        subscribe: Option<bool>,
        state_file: Option<std::path::PathBuf>,
    ) -> Self {
        let counters = Arc::new(NearCounters::new(keys.entity()));
        let near_ttl = near.as_ref().map(|options| options.ttl);
        let near = near.map(|options| Near::new(options, counters.clone()));
        let subscribes = subscribe.unwrap_or(near.is_some() || tagger.is_some());
        let l1 = near
            .clone()
            .filter(|_| subscribes)
            .map(|n| Arc::new(n) as Arc<dyn Evict>);
        let instance = format!("{:016x}", rand::random::<u64>());
        let bus = Arc::new(Bus::new(
            store, keys, subscribes, counters, l1, instance, state_file,
        ));
        Self {
            // A near cache without the bus could never be invalidated by
            // another instance: it is not used.
            near: near.filter(|_| subscribes),
            near_ttl: near_ttl.filter(|_| subscribes),
            tagger,
            bus,
        }
    }

    /// The L1 ticket for a read or load of `id` about to start.
    pub(crate) fn ticket(&self, id: &str) -> Option<Ticket> {
        self.near.as_ref()?;
        self.bus.epochs.ticket(id)
    }

    /// The `seq` a load about to start is stamped with.
    pub(crate) fn seq(&self) -> u64 {
        self.bus.generations.seq()
    }

    /// The near cache's answer for `id`, if it has a valid, fresh one.
    pub(crate) async fn l1_get(
        &self,
        id: &str,
        ticket: Option<Ticket>,
        now: u64,
    ) -> Option<Lookup<V>> {
        let near = self.near.as_ref()?;
        // No ticket: the near cache is off (the bus is down).
        ticket?;
        let found = near.get(id).await.filter(|entry| {
            self.bus.epochs.holds(&entry.ticket)
                && now < entry.fresh_until
                && self.bus.generations.is_current(entry.stamp.as_ref())
        });
        let counters = &self.bus.counters;
        match found {
            Some(entry) => {
                counters.add(NearEvent::L1Hit, 1);
                Some(Lookup::cached(
                    entry.value.clone(),
                    Outcome::L1,
                    entry.fresh_until,
                ))
            }
            None => {
                counters.add(NearEvent::L1Miss, 1);
                None
            }
        }
    }

    /// Puts a fresh value into the near cache, unless `id` was invalidated
    /// since `ticket` was taken (before the read or load that produced it).
    pub(crate) async fn l1_put(
        &self,
        id: &str,
        ticket: Option<Ticket>,
        value: Option<Arc<V>>,
        fresh_until: u64,
        stamp: Option<Stamp>,
    ) {
        let (Some(near), Some(ticket)) = (&self.near, ticket) else {
            return;
        };
        if !self.bus.epochs.holds(&ticket) {
            return;
        }
        let entry = NearEntry {
            value,
            fresh_until,
            ticket,
            stamp,
        };
        near.insert(id, entry).await;
        // An invalidation between the check and the insert: its eviction
        // may have run first. The entry's ticket already hides it; free it.
        if !self.bus.epochs.holds(&ticket) {
            near.evict(id).await;
        }
    }

    /// The stamp for an entry loaded (or written) after `seq` was taken:
    /// the tagger's tags and `extra`. `None` when the cache keeps no stamps.
    pub(crate) fn stamp(
        &self,
        seq: u64,
        value: Option<&V>,
        extra: &[String],
    ) -> Result<Option<Bytes>> {
        if !self.bus.stamps() {
            if extra.is_empty() {
                return Ok(None);
            }
            return Err(Error::Config(
                "tags need the invalidation bus: give the builder .tagger(..), .near(..) or .bus(true)".into(),
            ));
        }
        let mut tags = extra.to_vec();
        if let (Some(tagger), Some(value)) = (&self.tagger, value) {
            tags.extend(tagger(value));
        }
        tags.sort();
        tags.dedup();
        validate_tags(&tags)?;
        Ok(Some(Stamp { seq, tags }.encode()))
    }

    /// Refuses tags a write could not stamp: invalid ones, or any on a
    /// cache that keeps no stamps.
    pub(crate) fn check_tags(&self, tags: &[String]) -> Result<()> {
        self.stamp(0, None, tags).map(drop)
    }

    /// Judges an envelope's stamp.
    pub(crate) fn judge(&self, stamp: Option<&[u8]>) -> Judged {
        if !self.bus.stamps() {
            return Judged {
                invalidated: false,
                stamp: None,
            };
        }
        // An unreadable stamp counts as none: seq 0, invalidated by any purge.
        let stamp = stamp.and_then(Stamp::decode);
        // Generations that may be behind (the subscription is down and
        // they could not be fetched) vouch for nothing.
        Judged {
            invalidated: !self.bus.generations_known()
                || !self.bus.generations.is_current(stamp.as_ref()),
            stamp,
        }
    }

    /// The near cache's answers for a batch: answered ids go into
    /// `answers`; the others come back with their tickets, in order.
    pub(crate) async fn l1_many(
        &self,
        ids: Vec<String>,
        now: u64,
        answers: &mut HashMap<String, Lookup<V>>,
    ) -> Vec<(String, Option<Ticket>)> {
        let mut rest = Vec::with_capacity(ids.len());
        for id in ids {
            let ticket = self.ticket(&id);
            match self.l1_get(&id, ticket, now).await {
                Some(answer) => {
                    answers.insert(id, answer);
                }
                None => rest.push((id, ticket)),
            }
        }
        rest
    }

    pub(crate) fn stats(&self) -> NearStats {
        self.bus.stats(self.near.as_ref().map_or(0, Near::len))
    }

    pub(crate) async fn sync(&self) {
        if let Some(near) = &self.near {
            near.sync().await;
        }
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// Invalidates many entries by id rather than by key: the id text a
    /// change notification carries (a trigger knows the row's key column,
    /// not the application's `K`), canonicalised by the source first. Each
    /// entry is deleted from the store with its lease (a load in progress
    /// cannot fill it), dropped from this instance's near cache and
    /// announced to every other instance.
    ///
    /// The key-typed counterpart is [`Cache::invalidate_many`]; both run
    /// the same invalidation. Ids the store could not be told about (it is
    /// down) are remembered and delivered when it returns, and the first
    /// error is returned.
    pub async fn invalidate_ids(&self, ids: &[String]) -> Result<()> {
        let ids = ids
            .iter()
            .map(|id| self.inner.canonical_id(id))
            .collect::<Result<Vec<_>>>()?;
        self.inner.invalidate_canonical(&ids).await
    }

    /// Makes every entry carrying `tag` a miss, on every instance, in one
    /// round trip: the tag's generation is bumped in the store and
    /// announced on the bus; entries are not touched, so it costs the
    /// same for ten entries or a million.
    ///
    /// While the store is down a purge is owed instead (delivered when it
    /// returns) and the error is returned.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        validate_tag(tag)?;
        let now = self.inner.clock.now_ms();
        self.inner.coherence.bus.invalidate_tag(tag, now).await
    }

    /// Runs one tag compaction step now (the cache also runs it in the
    /// background): every tag of this entity idle longer than
    /// [`Cache::tag_horizon`] since its last invalidation is removed from
    /// the store's generation hash and from this instance's copy, and the
    /// other instances are told. Under write-back, a tag stays while a
    /// pending dirty record became dirty at or before its last
    /// invalidation. Answers the tags removed, sorted.
    ///
    /// Removal never makes an entry the tag invalidated look current:
    /// a tag no longer known counts as invalidated at the largest
    /// generation compaction removed, so any tagged entry stamped before
    /// it stays a miss.
    pub async fn compact_tags(&self) -> Result<Vec<String>> {
        self.inner.compact_tags().await
    }

    /// How long a tag must be idle (since its last invalidation) before
    /// compaction removes it: `max(ttl × (1 + jitter) + stale,
    /// negative_ttl, near-cache ttl)` plus
    /// [`TAG_SKEW_MARGIN`](crate::TAG_SKEW_MARGIN) for clock skew.
    pub fn tag_horizon(&self) -> Duration {
        self.inner.tag_horizon()
    }

    /// The tags whose last invalidation this instance still tracks
    /// (invalidated, not yet compacted away), sorted.
    pub fn invalidated_tags(&self) -> Vec<String> {
        self.inner.coherence.bus.generations.tags()
    }

    /// Invalidates the whole entity: bumps its generation (one key,
    /// `<prefix>:{<entity>}:gen`), so every entry filled before is a miss on
    /// every instance, and clears this instance's near cache.
    ///
    /// While the store is down the purge is owed (delivered when it
    /// returns) and the error is returned.
    pub async fn purge(&self) -> Result<()> {
        self.inner.check_layout().await?;
        self.inner.coherence.bus.purge().await
    }

    /// Delivers owed invalidations (those the store or the channel could
    /// not take when they happened), retrying for up to `within`; then
    /// writes whatever is still owed to the state file (see
    /// [`CacheBuilder::state_dir`](crate::CacheBuilder::state_dir)), to be
    /// replayed by the next cache built with the same state directory.
    /// Answers how many are still owed (a purge counts one). `close` calls
    /// it; call it at shutdown for a cache that is not closed.
    ///
    /// Without a state directory, what is still owed is forgotten when the
    /// process ends (entries it concerned expire with their TTL).
    pub async fn deliver_invalidations(&self, within: Duration) -> u64 {
        self.inner.coherence.bus.deliver(within).await
    }

    /// How many invalidations are owed now: not yet delivered to the
    /// store and the other instances (a purge counts one).
    pub fn owed_invalidations(&self) -> u64 {
        self.inner.coherence.bus.owed()
    }

    /// Runs the near cache's pending maintenance now (moka evicts lazily),
    /// so that [`Cache::stats`] counts every eviction. For tests and tools;
    /// never needed for correctness.
    pub async fn sync_near(&self) {
        self.inner.coherence.sync().await;
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// See [`Cache::tag_horizon`].
    pub(crate) fn tag_horizon(&self) -> Duration {
        let p = &self.policy;
        tag_horizon(
            p.ttl,
            p.jitter,
            p.stale,
            p.negative_ttl,
            self.coherence.near_ttl,
        )
    }

    /// See [`Cache::compact_tags`]. Under write-back, first reads when the
    /// oldest pending dirty record became dirty (one pipelined read of the
    /// shards' queues): a record made after that read became dirty now,
    /// after every invalidation old enough to be removed.
    pub(crate) async fn compact_tags(&self) -> Result<Vec<String>> {
        let dirty_since_ms = match &self.write_back {
            Some(state) => (state.log.backlog(&state.shards).await?)
                .iter()
                .filter_map(|b| b.oldest_ms)
                .min(),
            None => None,
        };
        let compaction = Compaction {
            now_ms: self.clock.now_ms(),
            idle: self.tag_horizon(),
            dirty_since_ms,
        };
        let compacted = self.coherence.bus.compact(&compaction).await?;
        Ok(compacted.removed)
    }

    /// Starts the background tag compaction of this cache (see the module
    /// docs); it ends when the cache is dropped.
    pub(crate) fn start_tag_compaction(self: &Arc<Self>) {
        let every = (self.tag_horizon() / 4).clamp(COMPACT_EVERY.0, COMPACT_EVERY.1);
        tokio::spawn(compact_tags_every(Arc::downgrade(self), every));
    }

    /// Puts a value this instance just filled into the store into the near
    /// cache too (its envelope gives its times and stamp).
    pub(crate) async fn near_fill(
        &self,
        id: &str,
        ticket: Option<Ticket>,
        value: Option<Arc<V>>,
        envelope: &[u8],
    ) {
        if ticket.is_none() {
            return;
        }
        let Ok(env) = Envelope::decode(Bytes::copy_from_slice(envelope)) else {
            return;
        };
        let judged = self.coherence.judge(env.stamp.as_deref());
        if !judged.invalidated {
            (self.coherence)
                .l1_put(id, ticket, value, env.fresh_until, judged.stamp)
                .await;
        }
    }

    /// Invalidates canonical ids: store, near cache, bus.
    pub(crate) async fn invalidate_canonical(&self, ids: &[String]) -> Result<()> {
        for id in ids {
            self.flights.forget(id);
        }
        let bus = &self.coherence.bus;
        if let Err(e) = self.check_layout().await {
            bus.evict_local(ids).await;
            if e.is_store_unavailable() {
                bus.remember(ids);
            }
            return Err(e);
        }
        let done = bus.invalidate(ids).await;
        // Again: a read that started a load between the first forget and
        // the delete must not be joined by reads that start after it.
        for id in ids {
            self.flights.forget(id);
        }
        done
    }
}
