//! Per-cache counters: what the cache did, read without locks.
//!
//! [`Cache::stats`](crate::Cache::stats) takes a [`CacheStats`] snapshot; the
//! hit ratio is (l1 + hit + stale + negative) / all reads: every read the
//! cache answered without the source.
//!
//! Each counting point also reports to the [`metrics`] facade
//! ([`crate::metrics`]), so `/metrics` and `stats()` count the same events.

use crate::metrics::{LoadHistogram, NearMetrics, ReadMetrics};
use crate::outcome::Outcome;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Counters {
    reads: [AtomicU64; 6],
    load_times: LoadHistogram,
    /// How long the store took to answer reads: the cache's side of the
    /// "cache vs database" latency that [`CacheStats`] reports.
    cache_times: LoadHistogram,
    metrics: ReadMetrics,
    loads: AtomicU64,
    load_errors: AtomicU64,
    load_us_total: AtomicU64,
    fills: AtomicU64,
    fills_refused: AtomicU64,
    lease_waits: AtomicU64,
    wait_timeouts: AtomicU64,
    fills_announced: AtomicU64,
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
    /// A waiter was woken by the fill's announcement, not by polling.
    FillAnnounced,
    StaleOnError,
    Refresh,
    EarlyRefresh,
    CorruptEntry,
}

impl Counters {
    /// Counters of `entity`, also reported as metrics labelled with it.
    pub(crate) fn new(entity: &str) -> Self {
        Self {
            reads: Default::default(),
            load_times: LoadHistogram::default(),
            cache_times: LoadHistogram::default(),
            metrics: ReadMetrics::new(entity),
            loads: AtomicU64::new(0),
            load_errors: AtomicU64::new(0),
            load_us_total: AtomicU64::new(0),
            fills: AtomicU64::new(0),
            fills_refused: AtomicU64::new(0),
            lease_waits: AtomicU64::new(0),
            wait_timeouts: AtomicU64::new(0),
            fills_announced: AtomicU64::new(0),
            stale_on_error: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            early_refreshes: AtomicU64::new(0),
            corrupt_entries: AtomicU64::new(0),
        }
    }

    pub(crate) fn read(&self, outcome: Outcome) {
        self.reads_of(outcome, 1);
    }

    /// Counts `n` reads answered with `outcome` at once (a batch counts
    /// each outcome once, not each key: shared counters are contended).
    pub(crate) fn reads_of(&self, outcome: Outcome, n: u64) {
        self.reads[outcome.index()].fetch_add(n, Ordering::Relaxed);
        self.metrics.reads[outcome.index()].increment(n);
    }

    pub(crate) fn bump(&self, event: Event) {
        self.counter(event).fetch_add(1, Ordering::Relaxed);
        let m = &self.metrics;
        match event {
            Event::Load => m.loads.increment(1),
            Event::LoadError => m.load_errors.increment(1),
            Event::Fill => m.fills.increment(1),
            Event::FillRefused => m.fills_refused.increment(1),
            Event::LeaseWait => m.lease_waits.increment(1),
            Event::WaitTimeout => m.lease_takeovers.increment(1),
            Event::FillAnnounced => {}
            Event::StaleOnError => m.stale_on_error.increment(1),
            Event::Refresh | Event::EarlyRefresh => m.refreshes.increment(1),
            Event::CorruptEntry => m.corrupt_entries.increment(1),
        }
    }

    pub(crate) fn load_took(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.load_us_total.fetch_add(us, Ordering::Relaxed);
        self.load_times.record(us);
        self.metrics.load_seconds.record(took.as_secs_f64());
    }

    /// How long the store took to answer a read (`GET` or `MGET`).
    pub(crate) fn cache_took(&self, took: Duration) {
        self.cache_times
            .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        self.metrics.cache_seconds.record(took.as_secs_f64());
    }

    fn counter(&self, event: Event) -> &AtomicU64 {
        match event {
            Event::Load => &self.loads,
            Event::LoadError => &self.load_errors,
            Event::Fill => &self.fills,
            Event::FillRefused => &self.fills_refused,
            Event::LeaseWait => &self.lease_waits,
            Event::WaitTimeout => &self.wait_timeouts,
            Event::FillAnnounced => &self.fills_announced,
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
        let times = self.load_times.counts();
        let quantile = |q| LoadHistogram::quantile(&times, q).map(Duration::from_secs_f64);
        let cache_times = self.cache_times.counts();
        let cache_quantile =
            |q| LoadHistogram::quantile(&cache_times, q).map(Duration::from_secs_f64);
        CacheStats {
            reads,
            loads: get(&self.loads),
            load_errors: get(&self.load_errors),
            load_seconds_total: get(&self.load_us_total) as f64 / 1e6,
            load_p50: quantile(0.5),
            load_p99: quantile(0.99),
            cache_p50: cache_quantile(0.5),
            cache_p99: cache_quantile(0.99),
            fills: get(&self.fills),
            fills_refused: get(&self.fills_refused),
            lease_waits: get(&self.lease_waits),
            wait_timeouts: get(&self.wait_timeouts),
            fills_announced: get(&self.fills_announced),
            stale_on_error: get(&self.stale_on_error),
            refreshes: get(&self.refreshes),
            early_refreshes: get(&self.early_refreshes),
            corrupt_entries: get(&self.corrupt_entries),
            near: NearStats::default(),
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
    /// The median load time (within 25 %: the upper bound of its bucket);
    /// `None` before the first load.
    pub load_p50: Option<Duration>,
    /// The 99th percentile load time (within 25 %); `None` before the
    /// first load.
    pub load_p99: Option<Duration>,
    /// The median time the store took to answer a read (`GET`/`MGET`,
    /// within 25 %); `None` before the first store read. Near-cache hits
    /// do not reach the store and are not in it.
    pub cache_p50: Option<Duration>,
    /// The 99th percentile time the store took to answer a read (within
    /// 25 %); `None` before the first store read.
    pub cache_p99: Option<Duration>,
    /// Loaded values written to the store while holding the lease.
    pub fills: u64,
    /// Fills refused because the lease was voided (an invalidation or a
    /// newer write happened during the load): the "no stale set" rule at work.
    pub fills_refused: u64,
    /// Times a reader found another process loading and waited for it.
    pub lease_waits: u64,
    /// Waits that ran out (`wait_timeout`) before the other load filled.
    pub wait_timeouts: u64,
    /// Waits for another holder's fill that ended because the fill was
    /// announced (the waiter flag and the fill channel), not by polling.
    pub fills_announced: u64,
    /// Stale values served because the source failed or timed out (fail-safe).
    pub stale_on_error: u64,
    /// Refreshes of stale entries started in the background.
    pub refreshes: u64,
    /// Probabilistic early refreshes (XFetch) started.
    pub early_refreshes: u64,
    /// Store entries that could not be decoded and were treated as misses.
    pub corrupt_entries: u64,
    /// The near cache and the invalidation bus.
    pub near: NearStats,
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

/// Counters of the near cache (L1) and the invalidation bus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearStats {
    /// Reads the near cache answered (outcome `l1`).
    pub l1_hits: u64,
    /// Reads that looked in a usable near cache and found nothing they
    /// could serve (absent, invalidated, or past freshness).
    pub l1_misses: u64,
    /// Entries moka dropped for capacity or its TTL.
    pub l1_evictions: u64,
    /// Times the near cache was cleared because the bus's subscription was
    /// lost (a gap in which messages may have been missed).
    pub l1_clears: u64,
    /// Entries in the near cache (exact after `Cache::sync_near`).
    pub l1_entries: u64,
    /// Invalidations this instance published: one per id, tag or purge.
    pub invalidations_sent: u64,
    /// Invalidations received from other instances: one per id, tag or purge.
    pub invalidations_received: u64,
    /// Invalidations delivered late, after the store came back: one per id,
    /// or one for a generation bump.
    pub invalidations_replayed: u64,
    /// Invalidations waiting for the store to come back.
    pub invalidations_pending: u64,
    /// Times undelivered invalidations overflowed and the entity's
    /// generation was bumped instead (every older entry a miss).
    pub generation_bumps: u64,
}

/// The live counters behind [`NearStats`].
#[derive(Debug)]
pub(crate) struct NearCounters {
    metrics: NearMetrics,
    l1_hits: AtomicU64,
    l1_misses: AtomicU64,
    l1_evictions: AtomicU64,
    l1_clears: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    replayed: AtomicU64,
    generation_bumps: AtomicU64,
}

/// Names a counter of [`NearCounters`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum NearEvent {
    L1Hit,
    L1Miss,
    L1Clear,
    Sent,
    Received,
    Replayed,
    GenerationBump,
}

impl NearCounters {
    /// Counters of `entity`, also reported as metrics labelled with it.
    pub(crate) fn new(entity: &str) -> Self {
        Self {
            metrics: NearMetrics::new(entity),
            l1_hits: AtomicU64::new(0),
            l1_misses: AtomicU64::new(0),
            l1_evictions: AtomicU64::new(0),
            l1_clears: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            generation_bumps: AtomicU64::new(0),
        }
    }

    pub(crate) fn add(&self, event: NearEvent, n: u64) {
        match event {
            NearEvent::Sent => self.metrics.sent.increment(n),
            NearEvent::Received => self.metrics.received.increment(n),
            NearEvent::Replayed => self.metrics.replayed.increment(n),
            // L1 hits are larder_reads_total{outcome="l1"}.
            NearEvent::L1Hit
            | NearEvent::L1Miss
            | NearEvent::L1Clear
            | NearEvent::GenerationBump => {}
        }
        let counter = match event {
            NearEvent::L1Hit => &self.l1_hits,
            NearEvent::L1Miss => &self.l1_misses,
            NearEvent::L1Clear => &self.l1_clears,
            NearEvent::Sent => &self.sent,
            NearEvent::Received => &self.received,
            NearEvent::Replayed => &self.replayed,
            NearEvent::GenerationBump => &self.generation_bumps,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn l1_evicted(&self) {
        self.l1_evictions.fetch_add(1, Ordering::Relaxed);
        self.metrics.l1_evictions.increment(1);
    }

    /// A snapshot; the caller fills in the gauges.
    pub(crate) fn snapshot(&self, l1_entries: u64, pending: u64) -> NearStats {
        self.metrics.l1_entries.set(l1_entries as f64);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NearStats {
            l1_hits: get(&self.l1_hits),
            l1_misses: get(&self.l1_misses),
            l1_evictions: get(&self.l1_evictions),
            l1_clears: get(&self.l1_clears),
            l1_entries,
            invalidations_sent: get(&self.sent),
            invalidations_received: get(&self.received),
            invalidations_replayed: get(&self.replayed),
            invalidations_pending: pending,
            generation_bumps: get(&self.generation_bumps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_read_times_give_their_own_percentiles() {
        let c = Counters::new("stats_unit");
        assert_eq!(
            (c.snapshot().cache_p50, c.snapshot().cache_p99),
            (None, None)
        );
        for _ in 0..98 {
            c.cache_took(Duration::from_micros(200));
        }
        c.cache_took(Duration::from_millis(40));
        c.cache_took(Duration::from_millis(40));
        c.load_took(Duration::from_millis(5));
        let s = c.snapshot();
        let p50 = s.cache_p50.expect("samples").as_secs_f64();
        let p99 = s.cache_p99.expect("samples").as_secs_f64();
        assert!((0.0002..0.00025).contains(&p50), "{p50}");
        assert!((0.04..0.05).contains(&p99), "{p99}");
        // Store reads and database loads are kept apart.
        let load = s.load_p50.expect("a load").as_secs_f64();
        assert!((0.005..0.00625).contains(&load), "{load}");
    }
}
