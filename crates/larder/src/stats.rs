//! Per-cache counters: what the cache did, read without locks.
//!
//! [`Cache::stats`](crate::Cache::stats) takes a [`CacheStats`] snapshot; the
//! hit ratio follows DESIGN.md: (l1 + hit + stale + negative) / all reads.

use crate::outcome::Outcome;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    reads: [AtomicU64; 6],
    loads: AtomicU64,
    load_errors: AtomicU64,
    load_us_total: AtomicU64,
    fills: AtomicU64,
    fills_refused: AtomicU64,
    lease_waits: AtomicU64,
    wait_timeouts: AtomicU64,
    stale_on_error: AtomicU64,
    refreshes: AtomicU64,
    early_refreshes: AtomicU64,
    corrupt_entries: AtomicU64,
}

/// Names a counter of [`Counters`] to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    Load,
    LoadError,
    Fill,
    FillRefused,
    LeaseWait,
    WaitTimeout,
    StaleOnError,
    Refresh,
    EarlyRefresh,
    CorruptEntry,
}

impl Counters {
    pub(crate) fn read(&self, outcome: Outcome) {
        self.reads[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bump(&self, event: Event) {
        self.counter(event).fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn load_took(&self, us: u64) {
        self.load_us_total.fetch_add(us, Ordering::Relaxed);
    }

    fn counter(&self, event: Event) -> &AtomicU64 {
        match event {
            Event::Load => &self.loads,
            Event::LoadError => &self.load_errors,
            Event::Fill => &self.fills,
            Event::FillRefused => &self.fills_refused,
            Event::LeaseWait => &self.lease_waits,
            Event::WaitTimeout => &self.wait_timeouts,
            Event::StaleOnError => &self.stale_on_error,
            Event::Refresh => &self.refreshes,
            Event::EarlyRefresh => &self.early_refreshes,
            Event::CorruptEntry => &self.corrupt_entries,
        }
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut reads = [0; 6];
        for (slot, c) in reads.iter_mut().zip(&self.reads) {
            *slot = get(c);
        }
        CacheStats {
            reads,
            loads: get(&self.loads),
            load_errors: get(&self.load_errors),
            load_seconds_total: get(&self.load_us_total) as f64 / 1e6,
            fills: get(&self.fills),
            fills_refused: get(&self.fills_refused),
            lease_waits: get(&self.lease_waits),
            wait_timeouts: get(&self.wait_timeouts),
            stale_on_error: get(&self.stale_on_error),
            refreshes: get(&self.refreshes),
            early_refreshes: get(&self.early_refreshes),
            corrupt_entries: get(&self.corrupt_entries),
        }
    }
}

/// A snapshot of one cache's counters since it was built.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CacheStats {
    reads: [u64; 6],
    /// Loads from the source (or a cache-aside loader) that were started.
    pub loads: u64,
    /// Loads that failed or timed out.
    pub load_errors: u64,
    /// Time spent in loads, in seconds.
    pub load_seconds_total: f64,
    /// Loaded values written to the store while holding the lease.
    pub fills: u64,
    /// Fills refused because the lease was voided (an invalidation or a
    /// newer write happened during the load): the "no stale set" rule at work.
    pub fills_refused: u64,
    /// Times a reader found another process loading and waited for it.
    pub lease_waits: u64,
    /// Waits that ran out (`wait_timeout`) before the other load filled.
    pub wait_timeouts: u64,
    /// Stale values served because the source failed or timed out (fail-safe).
    pub stale_on_error: u64,
    /// Refreshes of stale entries started in the background.
    pub refreshes: u64,
    /// Probabilistic early refreshes (XFetch) started.
    pub early_refreshes: u64,
    /// Store entries that could not be decoded and were treated as misses.
    pub corrupt_entries: u64,
}

impl CacheStats {
    /// Reads that ended with `outcome`.
    pub fn reads(&self, outcome: Outcome) -> u64 {
        self.reads[outcome.index()]
    }

    /// All reads.
    pub fn total_reads(&self) -> u64 {
        self.reads.iter().sum()
    }

    /// (l1 + hit + stale + negative) / all reads; 0 without reads.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.total_reads();
        if total == 0 {
            return 0.0;
        }
        let hits: u64 = Outcome::ALL
            .iter()
            .filter(|o| o.is_hit())
            .map(|&o| self.reads(o))
            .sum();
        hits as f64 / total as f64
    }
}
