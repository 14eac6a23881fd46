//! Metrics through the [`metrics`] facade: the same events the counters of
//! [`crate::stats`] count, reported to whatever recorder the application
//! installed (Prometheus, StatsD, ...), labelled by `entity`.
//!
//! # Why handles are cached
//! `metrics::counter!(..)` looks its series up in the recorder on every
//! call (hashing the name and labels). A cache resolves every handle once,
//! when it is built, and a read then costs one `Counter::increment` on top
//! of its atomic counter. The flip side: **install the recorder before
//! building caches**; a cache built before a recorder exists reports to
//! nobody (its [`Cache::stats`](crate::Cache::stats) still counts).
//!
//! # The series
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `larder_reads_total` | counter | entity, outcome | reads by outcome (`l1`, `hit`, `stale`, `negative`, `miss`, `bypass`) |
//! | `larder_loads_total` | counter | entity | loads from the source started |
//! | `larder_load_errors_total` | counter | entity | loads that failed or timed out |
//! | `larder_load_seconds` | histogram | entity | load latency |
//! | `larder_cache_seconds` | histogram | entity | store read latency (the `GET`/`MGET` of a read) |
//! | `larder_fills_total`, `larder_fills_refused_total` | counter | entity | token-checked fills that landed / were refused |
//! | `larder_lease_waits_total` | counter | entity | reads that waited for another loader's lease |
//! | `larder_lease_takeovers_total` | counter | entity | waits that ran out: the reader loaded by itself, without a lease |
//! | `larder_stale_on_error_total` | counter | entity | stale served because the source failed |
//! | `larder_refreshes_total` | counter | entity | background refreshes (stale and early) |
//! | `larder_corrupt_entries_total` | counter | entity | unreadable store entries |
//! | `larder_l1_entries` | gauge | entity | near-cache entries (set when stats are taken) |
//! | `larder_l1_evictions_total` | counter | entity | near-cache evictions (capacity or TTL) |
//! | `larder_invalidations_{sent,received,replayed}_total` | counter | entity | invalidation bus traffic |
//! | `larder_writeback_*` | counters, gauges, a histogram | entity | write-back: see `write_back::Counters::new` |

use crate::outcome::Outcome;
use metrics::{Counter, Gauge, Histogram, Label};
use std::sync::atomic::{AtomicU64, Ordering};

/// `entity` label of a cache's series.
fn entity_label(entity: &str) -> Vec<Label> {
    vec![Label::new("entity", entity.to_owned())]
}

fn counter(name: &'static str, entity: &str) -> Counter {
    metrics::counter!(name, entity_label(entity))
}

fn gauge(name: &'static str, entity: &str) -> Gauge {
    metrics::gauge!(name, entity_label(entity))
}

fn histogram(name: &'static str, entity: &str) -> Histogram {
    metrics::histogram!(name, entity_label(entity))
}

/// Registers the help texts and units of every larder series with the
/// installed recorder (Prometheus' `# HELP`). Called by every cache build;
/// cheap and idempotent.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("larder_reads_total", "Reads by outcome.");
    describe_counter!(
        "larder_loads_total",
        "Loads from the source (or a cache-aside loader) started."
    );
    describe_counter!(
        "larder_load_errors_total",
        "Loads that failed or timed out."
    );
    describe_histogram!(
        "larder_load_seconds",
        Unit::Seconds,
        "Load latency (the source or loader)."
    );
    describe_histogram!(
        "larder_cache_seconds",
        Unit::Seconds,
        "Store read latency on the read path (one GET or MGET)."
    );
    describe_counter!(
        "larder_fills_total",
        "Loaded values written to the store under the lease."
    );
    describe_counter!(
        "larder_fills_refused_total",
        "Fills refused: a write or invalidation voided the lease."
    );
    describe_counter!(
        "larder_lease_waits_total",
        "Reads that found another loader holding the lease and waited."
    );
    describe_counter!(
        "larder_lease_takeovers_total",
        "Waits that ran out: the reader loaded by itself, without the lease."
    );
    describe_counter!(
        "larder_stale_on_error_total",
        "Stale values served because the source failed."
    );
    describe_counter!(
        "larder_refreshes_total",
        "Background refreshes started (stale and early)."
    );
    describe_counter!(
        "larder_corrupt_entries_total",
        "Store entries that could not be decoded."
    );
    describe_gauge!("larder_l1_entries", "Entries in the near cache (L1).");
    describe_counter!(
        "larder_l1_evictions_total",
        "Near-cache entries evicted for capacity or TTL."
    );
    describe_counter!(
        "larder_invalidations_sent_total",
        "Invalidations published (one per id, tag or purge)."
    );
    describe_counter!(
        "larder_invalidations_received_total",
        "Invalidations received from other instances."
    );
    describe_counter!(
        "larder_invalidations_replayed_total",
        "Invalidations delivered late, after the store came back."
    );
    describe_counter!(
        "larder_writeback_writes_total",
        "Write-back writes acknowledged."
    );
    describe_counter!(
        "larder_writeback_coalesced_total",
        "Write-back writes that replaced one not yet flushed."
    );
    describe_counter!(
        "larder_writeback_increments_total",
        "Write-back increments acknowledged (counters of hash entities)."
    );
    describe_counter!(
        "larder_writeback_counter_batches_total",
        "Write-back counter batches (claimed records) committed to the source."
    );
    describe_counter!(
        "larder_writeback_batches_total",
        "Write-back batches committed to the source."
    );
    describe_histogram!(
        "larder_writeback_batch_rows",
        "Rows per committed write-back batch."
    );
    describe_counter!(
        "larder_writeback_retries_total",
        "Write-back flushes that failed and will be retried."
    );
    describe_counter!(
        "larder_writeback_dead_lettered_total",
        "Records this instance moved to the dead letters."
    );
    describe_counter!(
        "larder_writeback_fenced_total",
        "Flushes refused by the fence (a newer flusher committed)."
    );
    describe_gauge!(
        "larder_writeback_backlog",
        "Write-back writes pending in the store (all instances)."
    );
    describe_gauge!(
        "larder_writeback_lag_seconds",
        Unit::Seconds,
        "Age of the oldest pending write-back write."
    );
    describe_gauge!(
        "larder_writeback_dead_letters",
        "Dead letters held in the store."
    );
}

/// The metric handles of one cache's read path, resolved at build.
#[derive(Debug)]
pub(crate) struct ReadMetrics {
    pub(crate) reads: [Counter; 6],
    pub(crate) loads: Counter,
    pub(crate) load_errors: Counter,
    pub(crate) load_seconds: Histogram,
    pub(crate) cache_seconds: Histogram,
    pub(crate) fills: Counter,
    pub(crate) fills_refused: Counter,
    pub(crate) lease_waits: Counter,
    pub(crate) lease_takeovers: Counter,
    pub(crate) stale_on_error: Counter,
    pub(crate) refreshes: Counter,
    pub(crate) corrupt_entries: Counter,
}

impl ReadMetrics {
    pub(crate) fn new(entity: &str) -> Self {
        describe();
        Self {
            reads: Outcome::ALL.map(|o| {
                let labels = vec![
                    Label::new("entity", entity.to_owned()),
                    Label::from_static_parts("outcome", o.as_str()),
                ];
                metrics::counter!("larder_reads_total", labels)
            }),
            loads: counter("larder_loads_total", entity),
            load_errors: counter("larder_load_errors_total", entity),
            load_seconds: histogram("larder_load_seconds", entity),
            cache_seconds: histogram("larder_cache_seconds", entity),
            fills: counter("larder_fills_total", entity),
            fills_refused: counter("larder_fills_refused_total", entity),
            lease_waits: counter("larder_lease_waits_total", entity),
            lease_takeovers: counter("larder_lease_takeovers_total", entity),
            stale_on_error: counter("larder_stale_on_error_total", entity),
            refreshes: counter("larder_refreshes_total", entity),
            corrupt_entries: counter("larder_corrupt_entries_total", entity),
        }
    }
}

/// The metric handles of the near cache and the invalidation bus.
#[derive(Debug)]
pub(crate) struct NearMetrics {
    pub(crate) l1_entries: Gauge,
    pub(crate) l1_evictions: Counter,
    pub(crate) sent: Counter,
    pub(crate) received: Counter,
    pub(crate) replayed: Counter,
}

impl NearMetrics {
    pub(crate) fn new(entity: &str) -> Self {
        Self {
            l1_entries: gauge("larder_l1_entries", entity),
            l1_evictions: counter("larder_l1_evictions_total", entity),
            sent: counter("larder_invalidations_sent_total", entity),
            received: counter("larder_invalidations_received_total", entity),
            replayed: counter("larder_invalidations_replayed_total", entity),
        }
    }
}

/// Where a [`Tally`] reports besides its own atomic.
#[derive(Debug)]
enum Sink {
    /// Nowhere.
    None,
    /// A counter: every `fetch_add` increments it.
    Counter(Counter),
    /// A histogram: every `fetch_add(n)` records one sample `n` (a batch size).
    Samples(Histogram),
    /// A gauge, the value multiplied by the factor (`0.001`: ms to seconds).
    Gauge(Gauge, f64),
}

/// An `AtomicU64` that also reports to the metrics facade.
///
/// Why this shape: write-back keeps its counters as public-in-crate
/// atomics bumped from several files (`writer.rs`, `flusher.rs`); with the
/// same `fetch_add` / `store` / `load` methods, those call sites report
/// metrics without knowing about them.
#[derive(Debug)]
pub(crate) struct Tally {
    value: AtomicU64,
    sink: Sink,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            value: AtomicU64::new(0),
            sink: Sink::None,
        }
    }
}

impl Tally {
    /// Counts into counter `name` of `entity`.
    pub(crate) fn counter(name: &'static str, entity: &str) -> Self {
        Self::with(Sink::Counter(counter(name, entity)))
    }

    /// Each addition is one sample of histogram `name` of `entity`.
    pub(crate) fn samples(name: &'static str, entity: &str) -> Self {
        Self::with(Sink::Samples(histogram(name, entity)))
    }

    /// Mirrors its value, times `scale`, into gauge `name` of `entity`.
    pub(crate) fn gauge(name: &'static str, entity: &str, scale: f64) -> Self {
        Self::with(Sink::Gauge(gauge(name, entity), scale))
    }

    fn with(sink: Sink) -> Self {
        Self {
            value: AtomicU64::new(0),
            sink,
        }
    }

    /// Adds `n`, like [`AtomicU64::fetch_add`]; answers the previous value.
    pub(crate) fn fetch_add(&self, n: u64, order: Ordering) -> u64 {
        let before = self.value.fetch_add(n, order);
        match &self.sink {
            Sink::None => {}
            Sink::Counter(c) => c.increment(n),
            Sink::Samples(h) => h.record(n as f64),
            Sink::Gauge(g, scale) => g.set(before.saturating_add(n) as f64 * scale),
        }
        before
    }

    /// Sets the value, like [`AtomicU64::store`].
    pub(crate) fn store(&self, v: u64, order: Ordering) {
        self.value.store(v, order);
        if let Sink::Gauge(g, scale) = &self.sink {
            g.set(v as f64 * scale);
        }
    }

    /// The value, like [`AtomicU64::load`].
    pub(crate) fn load(&self, order: Ordering) -> u64 {
        self.value.load(order)
    }
}

/// Fixed buckets for load-time percentiles in [`crate::CacheStats`]: upper
/// bounds growing by 25 % from 1 µs, so a percentile is reported within
/// 25 % of the truth (as the bucket's upper bound), in a few hundred
/// bytes per cache.
#[derive(Debug)]
pub(crate) struct LoadHistogram {
    buckets: [AtomicU64; LOAD_BUCKETS],
}

/// Buckets of [`LoadHistogram`]: 1 µs × 1.25^i, up to about 3 minutes; the
/// last one also takes everything longer.
const LOAD_BUCKETS: usize = 86;
const LOAD_GROWTH: f64 = 1.25;

impl Default for LoadHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LoadHistogram {
    fn bucket_of(us: u64) -> usize {
        if us <= 1 {
            return 0;
        }
        let i = ((us as f64).ln() / LOAD_GROWTH.ln()).ceil();
        // Non-negative (us > 1) and capped below: the cast cannot wrap.
        (i as usize).min(LOAD_BUCKETS - 1)
    }

    fn upper_us(i: usize) -> f64 {
        LOAD_GROWTH.powi(i32::try_from(i).unwrap_or(i32::MAX))
    }

    pub(crate) fn record(&self, us: u64) {
        self.buckets[Self::bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The bucket counts, for a snapshot.
    pub(crate) fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The `q` quantile (0..=1) of `counts` in seconds (a bucket's upper
    /// bound); `None` without samples.
    pub(crate) fn quantile(counts: &[u64], q: f64) -> Option<f64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the sample wanted, 1-based: at least the first.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::upper_us(i) / 1e6);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_percentiles_are_within_a_bucket() {
        let h = LoadHistogram::default();
        for _ in 0..98 {
            h.record(2_000);
        }
        h.record(100_000);
        h.record(100_000);
        let counts = h.counts();
        let p50 = LoadHistogram::quantile(&counts, 0.5).expect("samples");
        let p99 = LoadHistogram::quantile(&counts, 0.99).expect("samples");
        assert!((0.002..0.0025).contains(&p50), "{p50}");
        assert!((0.1..0.125).contains(&p99), "{p99}");
        assert_eq!(LoadHistogram::quantile(&[0; 4], 0.5), None);
    }

    #[test]
    fn a_gauge_tally_mirrors_its_value() {
        let t = Tally::default();
        assert_eq!(t.fetch_add(3, Ordering::Relaxed), 0);
        t.store(7, Ordering::Relaxed);
        assert_eq!(t.load(Ordering::Relaxed), 7);
    }
}
