//! The near cache (L1): decoded values in process, so a hit costs an `Arc`
//! clone and no network call.
//!
//! # Why it can be trusted
//! An in-process copy is only as good as its invalidations. Three rules
//! keep it honest:
//!
//! 1. **An entry proves it is still valid on every hit.** Each entry keeps
//!    the [`Ticket`] it was inserted under: the near cache's global epoch
//!    and the epoch of its key's stripe (one of [`STRIPES`] counters, chosen
//!    by hashing the id). An invalidation of a key bumps its stripe; a purge
//!    or a lost subscription bumps the global epoch. A hit compares two
//!    atomics, so an invalidation is effective the instant it is bumped,
//!    even before moka has dropped the entry.
//! 2. **A fill that raced with an invalidation does not land.** The ticket
//!    is taken *before* the read or load that produces the value; the insert
//!    is refused when the ticket no longer holds, and re-checked after the
//!    insert (an invalidation that slipped in between evicts it again; rule
//!    1 already hides it). Keys sharing a stripe lose an insert now and then:
//!    a needless miss, never a stale hit.
//! 3. **Times are larder's.** A hit checks the entry's `fresh_until` (from
//!    its envelope) against larder's [`Clock`](crate::Clock); moka's TTL only
//!    collects garbage. Past freshness the read falls through to the store,
//!    which decides about stale windows and refreshes. Tags and purges are
//!    checked against the entry's generation stamp ([`crate::generation`]).
//!
//! While the invalidation bus is not subscribed the near cache is
//! *unusable*: no ticket is handed out (so nothing is inserted) and every
//! entry fails rule 1.

use crate::error::{Error, Result};
use crate::generation::Stamp;
use crate::stats::NearCounters;
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64;

/// How many stripes the per-key epochs are spread over (32 KiB of counters).
pub(crate) const STRIPES: usize = 4096;

/// Settings of the near cache (L1); see [`CacheBuilder::near`](crate::CacheBuilder::near).
///
/// Deserializes from a table with `capacity` and `ttl` (a duration string,
/// `"10s"`), each optional: the service's `[near]` section is this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NearOptions {
    /// How many entries it holds at most; moka's TinyLFU decides which;
    /// at least 1. Default: 10,000 ([`NearOptions::DEFAULT_CAPACITY`]).
    pub capacity: u64,
    /// How long moka keeps an entry at most (garbage collection only:
    /// freshness is the entry's own); above 0. Default: 10 s
    /// ([`NearOptions::DEFAULT_TTL`]).
    #[serde(deserialize_with = "crate::policy::deserialize_duration")]
    pub ttl: Duration,
}

impl NearOptions {
    /// The default `capacity`: 10,000 entries.
    pub const DEFAULT_CAPACITY: u64 = 10_000;
    /// The default `ttl`: 10 s.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

    /// Checks the settings: a capacity of at least 1, a ttl above 0. The
    /// error names the field as `near.capacity` or `near.ttl`.
    pub fn validate(&self) -> Result<()> {
        if self.capacity == 0 {
            return Err(Error::setting("near.capacity", "must be at least 1"));
        }
        if self.ttl.is_zero() {
            return Err(Error::setting("near.ttl", "must be longer than 0s"));
        }
        Ok(())
    }
}

impl Default for NearOptions {
    fn default() -> Self {
        Self {
            capacity: Self::DEFAULT_CAPACITY,
            ttl: Self::DEFAULT_TTL,
        }
    }
}

/// The epochs an L1 entry was inserted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    global: u64,
    stripe: usize,
    at: u64,
}

/// The near cache's epochs: one global, one per stripe of keys.
#[derive(Debug)]
pub(crate) struct Epochs {
    usable: AtomicBool,
    global: AtomicU64,
    stripes: Box<[AtomicU64]>,
}

impl Default for Epochs {
    fn default() -> Self {
        Self {
            usable: AtomicBool::new(false),
            global: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Epochs {
    fn stripe(id: &str) -> usize {
        // The remainder is below STRIPES.
        (xxh3_64(id.as_bytes()) % STRIPES as u64) as usize
    }

    /// The ticket for a read or load of `id` about to start; `None` while
    /// the near cache is unusable.
    pub(crate) fn ticket(&self, id: &str) -> Option<Ticket> {
        if !self.usable.load(Ordering::Acquire) {
            return None;
        }
        let stripe = Self::stripe(id);
        Some(Ticket {
            global: self.global.load(Ordering::Acquire),
            stripe,
            at: self.stripes[stripe].load(Ordering::Acquire),
        })
    }

    /// Whether nothing invalidated the ticket's key since it was taken.
    pub(crate) fn holds(&self, ticket: &Ticket) -> bool {
        self.usable.load(Ordering::Acquire)
            && self.global.load(Ordering::Acquire) == ticket.global
            && self.stripes[ticket.stripe].load(Ordering::Acquire) == ticket.at
    }

    /// `id` was invalidated.
    pub(crate) fn bump_key(&self, id: &str) {
        self.stripes[Self::stripe(id)].fetch_add(1, Ordering::AcqRel);
    }

    /// Everything was invalidated.
    pub(crate) fn bump_all(&self) {
        self.global.fetch_add(1, Ordering::AcqRel);
    }

    /// Turns the near cache on (the bus is subscribed) or off; both void
    /// every entry and ticket. Answers whether it was usable before.
    pub(crate) fn set_usable(&self, usable: bool) -> bool {
        if usable {
            self.bump_all();
            self.usable.swap(true, Ordering::AcqRel)
        } else {
            let was = self.usable.swap(false, Ordering::AcqRel);
            self.bump_all();
            was
        }
    }
}

/// One L1 entry: the decoded value and what it needs to prove itself.
pub(crate) struct NearEntry<V> {
    pub(crate) value: Option<Arc<V>>,
    pub(crate) fresh_until: u64,
    pub(crate) ticket: Ticket,
    pub(crate) stamp: Option<Stamp>,
}

/// The moka cache of one [`Cache`](crate::Cache).
pub(crate) struct Near<V> {
    cache: moka::future::Cache<String, Arc<NearEntry<V>>>,
}

impl<V: Send + Sync + 'static> Near<V> {
    pub(crate) fn new(options: NearOptions, counters: Arc<NearCounters>) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(options.capacity)
            .time_to_live(options.ttl)
            .eviction_listener(move |_id, _entry, cause| {
                if cause.was_evicted() {
                    counters.l1_evicted();
                }
            })
            .build();
        Self { cache }
    }

    pub(crate) async fn get(&self, id: &str) -> Option<Arc<NearEntry<V>>> {
        self.cache.get(id).await
    }

    pub(crate) async fn insert(&self, id: &str, entry: NearEntry<V>) {
        self.cache.insert(id.to_owned(), Arc::new(entry)).await;
    }

    /// Runs moka's pending maintenance (evictions and their listener).
    pub(crate) async fn sync(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// How many entries moka holds (exact after [`Near::sync`]).
    pub(crate) fn len(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// What the invalidation bus needs of a near cache, without its value type.
#[async_trait]
pub(crate) trait Evict: Send + Sync {
    /// Drops one entry.
    async fn evict(&self, id: &str);
    /// Drops every entry.
    fn clear(&self);
}

#[async_trait]
impl<V: Send + Sync + 'static> Evict for Near<V> {
    async fn evict(&self, id: &str) {
        self.cache.invalidate(id).await;
    }

    fn clear(&self) {
        self.cache.invalidate_all();
    }
}

impl<V> Clone for Near<V> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_near_cache_hands_out_no_ticket() {
        let epochs = Epochs::default();
        assert!(epochs.ticket("1").is_none());
        assert!(!epochs.set_usable(true));
        assert!(epochs.ticket("1").is_some());
    }

    #[test]
    fn an_invalidation_voids_the_tickets_of_its_key() {
        let epochs = Epochs::default();
        epochs.set_usable(true);
        let one = epochs.ticket("1").expect("usable");
        let other = (0..)
            .map(|i: u32| i.to_string())
            .find(|id| Epochs::stripe(id) != Epochs::stripe("1"))
            .expect("another stripe");
        let two = epochs.ticket(&other).expect("usable");
        epochs.bump_key("1");
        assert!(!epochs.holds(&one), "the invalidated key's ticket");
        assert!(epochs.holds(&two), "a key of another stripe");
        epochs.bump_all();
        assert!(!epochs.holds(&two), "a purge voids every ticket");
    }

    #[test]
    fn losing_the_bus_voids_every_ticket() {
        let epochs = Epochs::default();
        epochs.set_usable(true);
        let t = epochs.ticket("1").expect("usable");
        assert!(epochs.set_usable(false));
        assert!(!epochs.holds(&t));
        epochs.set_usable(true);
        assert!(!epochs.holds(&t), "a ticket from before the gap stays void");
    }
}
