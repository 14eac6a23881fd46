//! The store breaker: after the store fails to answer, skip it for a moment.
//!
//! While open, reads go straight to the source (outcome `bypass`) instead of
//! waiting out a connect timeout each; after [`OPEN_FOR`] the next read tries
//! the store again. Opening and closing are logged once each.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the breaker stays open after a failure.
pub(crate) const OPEN_FOR: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Breaker {
    name: String,
    base: Instant,
    /// Milliseconds since `base` until which the store is skipped.
    open_until: AtomicU64,
    /// Whether the last store call failed (so a success should be logged).
    tripped: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            base: Instant::now(),
            open_until: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether reads should skip the store now.
    pub(crate) fn is_open(&self) -> bool {
        self.tripped.load(Ordering::Relaxed) && self.now() < self.open_until.load(Ordering::Relaxed)
    }

    /// The store failed to answer.
    pub(crate) fn trip(&self, why: &dyn std::fmt::Display) {
        let until = self
            .now()
            .saturating_add(crate::clock::duration_ms(OPEN_FOR));
        self.open_until.store(until, Ordering::Relaxed);
        if !self.tripped.swap(true, Ordering::Relaxed) {
            tracing::warn!(store = %self.name, error = %why, "store unavailable: serving reads from the source (bypass)");
        }
    }

    /// The store answered.
    pub(crate) fn reset(&self) {
        if self.tripped.load(Ordering::Relaxed) && self.tripped.swap(false, Ordering::Relaxed) {
            tracing::info!(store = %self.name, "store is back: reads use the cache again");
        }
    }
}
