//! Coherence: the near cache, the tagger and the invalidation bus of one
//! cache, together — what the read and write paths (`cache/`) ask of them.
//! The cache's public invalidation methods are in `cache/invalidate.rs`.
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

use crate::error::{Error, Result};
use crate::generation::{validate_tags, Stamp};
use crate::invalidation::Bus;
use crate::key::KeySpace;
use crate::near::{Evict, Near, NearEntry, NearOptions, Ticket};
use crate::outcome::{Lookup, Outcome};
use crate::stats::{NearCounters, NearEvent, NearStats};
use crate::store::Store;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Derives an entry's tags from its value; see [`CacheBuilder::tagger`](crate::CacheBuilder::tagger).
pub(crate) type Tagger<V> = Arc<dyn Fn(&V) -> Vec<String> + Send + Sync>;

/// How long `build` waits for the bus's first subscription.
pub(crate) const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

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

    /// The near cache's TTL, if there is a near cache (part of the tag
    /// horizon).
    pub(crate) fn near_ttl(&self) -> Option<Duration> {
        self.near_ttl
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

    /// The near cache's answers for a batch, each put at its place in
    /// `answers`; the places of the others come back with their tickets,
    /// in order.
    pub(crate) async fn l1_many(
        &self,
        ids: &[&str],
        now: u64,
        answers: &mut [Option<Lookup<V>>],
    ) -> Vec<(usize, Option<Ticket>)> {
        let mut rest = Vec::with_capacity(ids.len());
        for (at, id) in ids.iter().enumerate() {
            let ticket = self.ticket(id);
            match self.l1_get(id, ticket, now).await {
                Some(answer) => answers[at] = Some(answer),
                None => rest.push((at, ticket)),
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
