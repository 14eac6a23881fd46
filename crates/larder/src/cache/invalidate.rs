//! The cache's invalidation API — by id, by tag, the whole entity — and
//! its background tag compaction, over the near cache and bus of
//! `coherence.rs`.
//!
//! # Tag compaction
//! Every cache runs a background task (holding only a `Weak` reference,
//! ending with the cache) that compacts the entity's tag generations every
//! quarter horizon (no more often than every second, at least every 5 s) while
//! this instance knows of any invalidated tag: tags idle past the horizon
//! leave the store's hash and every process's copy (see `generation.rs`
//! for the rule and why it is safe). [`Cache::compact_tags`] runs one
//! step now.

use super::{Cache, Inner};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::generation::{tag_horizon, validate_tag};
use crate::key::CacheKey;
use crate::near::Ticket;
use crate::store::Compaction;
use bytes::Bytes;
use std::sync::{Arc, Weak};
use std::time::Duration;

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

    /// A purge, or an error saying that this cache's entries carry no
    /// stamps, so a purge cannot reach them (after a change-notification
    /// gap).
    pub(crate) async fn purge_or_refuse(&self) -> Result<()> {
        if !self.inner.coherence.bus.stamps() {
            return Err(Error::Config(format!(
                "entity `{}` cannot be purged after a change-notification gap: its entries carry no stamps; build it with .bus(true)",
                self.entity()
            )));
        }
        self.purge().await
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
            self.coherence.near_ttl(),
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
