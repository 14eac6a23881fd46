//! The outcome of a read: one word, the same everywhere.
//!
//! The library's [`Lookup`], the service's `X-Cache` header, metric labels
//! and stats all use these words. Hit ratio = (l1 + hit + stale + negative)
//! / all reads.

use std::fmt;
use std::sync::Arc;

/// Where a read's answer came from.
///
/// Non-exhaustive: a later tier may add a word, so a `match` needs a
/// wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The near cache (in process) answered.
    L1,
    /// The store (Redis) answered with a fresh entry.
    Hit,
    /// Served past freshness, inside the stale window (stale-while-revalidate
    /// or fail-safe).
    Stale,
    /// A remembered "not found".
    Negative,
    /// Loaded from the source (and filled into the cache).
    Miss,
    /// The store was unavailable and the source answered directly.
    Bypass,
}

impl Outcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [Outcome; 6] = [
        Outcome::L1,
        Outcome::Hit,
        Outcome::Stale,
        Outcome::Negative,
        Outcome::Miss,
        Outcome::Bypass,
    ];

    /// The outcome's word: `l1`, `hit`, `stale`, `negative`, `miss`, `bypass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::L1 => "l1",
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Negative => "negative",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }

    /// Whether this outcome counts as a hit in the hit ratio.
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            Outcome::L1 | Outcome::Hit | Outcome::Stale | Outcome::Negative
        )
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A read's answer: the value (or `None`: not found) and where it came from.
#[derive(Debug)]
pub struct Lookup<V> {
    /// The value; `None` when the source has no row for the key.
    pub value: Option<Arc<V>>,
    /// Where the answer came from.
    pub outcome: Outcome,
    /// Until when the cached entry that answered is fresh; see
    /// [`Lookup::fresh_until`].
    fresh_until: Option<u64>,
}

impl<V> Clone for Lookup<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            outcome: self.outcome,
            fresh_until: self.fresh_until,
        }
    }
}

impl<V> Lookup<V> {
    /// An answer that no cached entry gave (nothing known of freshness).
    pub(crate) fn new(value: Option<Arc<V>>, outcome: Outcome) -> Self {
        Self {
            value,
            outcome,
            fresh_until: None,
        }
    }

    /// An answer from (or filled into) a cached entry fresh until
    /// `fresh_until`.
    pub(crate) fn cached(value: Option<Arc<V>>, outcome: Outcome, fresh_until: u64) -> Self {
        Self {
            value,
            outcome,
            fresh_until: Some(fresh_until),
        }
    }

    /// The same answer, from an entry fresh until `fresh_until` (if known).
    pub(crate) fn fresh_until_at(mut self, fresh_until: Option<u64>) -> Self {
        self.fresh_until = fresh_until;
        self
    }

    /// The value, dropping the outcome.
    pub fn into_value(self) -> Option<Arc<V>> {
        self.value
    }

    /// Until when (ms since the Unix epoch, by the cache's clock) the
    /// cached entry behind this answer is fresh: its envelope's time for
    /// `hit`, `stale` (already past) and `negative`, the near cache's copy
    /// of it for `l1`, and the entry just filled for `miss`. `None` when
    /// no cached entry stands behind the answer: a load whose fill did not
    /// land, `bypass`, or a pending write-back write. Read from the entry
    /// the read already decoded: no round trip, no allocation.
    /// [`Cache::remaining_fresh`](crate::Cache::remaining_fresh) turns it
    /// into a duration.
    pub fn fresh_until(&self) -> Option<u64> {
        self.fresh_until
    }
}
