//! What a run reports: one [`PatternReport`] per pattern, printed as a
//! table on stdout and written as JSON with `--json`.
//!
//! The figures are computed once here, so the table, the JSON file and the
//! chart can never disagree.

use super::patterns::{Pattern, PatternRun};
use super::workload::{Stop, Workload};
use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Latency percentiles of one kind of operation, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50: f64,
    /// 95th percentile.
    pub(crate) p95: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p999: f64,
    /// Slowest operation.
    pub(crate) max: f64,
    /// Mean.
    pub(crate) mean: f64,
}

impl Latency {
    /// The percentiles of `h` (nanoseconds), in milliseconds.
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |ns: u64| ns as f64 / 1e6;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1e6,
        }
    }
}

/// Everything measured for one pattern.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PatternReport {
    /// The pattern's name.
    pub(crate) pattern: &'static str,
    /// Operations done (reads + writes, failed ones included).
    pub(crate) ops: u64,
    /// Reads done.
    pub(crate) reads: u64,
    /// Writes done.
    pub(crate) writes: u64,
    /// Wall time of the operations, seconds (write-back's final flush excluded).
    pub(crate) seconds: f64,
    /// Operations per second.
    pub(crate) ops_per_sec: f64,
    /// Reads per second.
    pub(crate) reads_per_sec: f64,
    /// Writes per second.
    pub(crate) writes_per_sec: f64,
    /// Latency of every operation, reads and writes together, ms.
    pub(crate) latency_ms: Latency,
    /// Latency of reads, ms (open loop: from each read's due time).
    pub(crate) read_latency_ms: Latency,
    /// Latency of writes, ms (open loop: from each write's due time).
    pub(crate) write_latency_ms: Latency,
    /// Reads a cache answered / reads; `null` without a cache.
    pub(crate) hit_ratio: Option<f64>,
    /// Rows read from the database.
    pub(crate) db_reads: u64,
    /// Rows written to the database (write-back: flushed by `close`).
    pub(crate) db_writes: u64,
    /// `db_reads / ops`.
    pub(crate) db_reads_per_op: f64,
    /// `db_writes / ops`.
    pub(crate) db_writes_per_op: f64,
    /// Statements sent to the database while the clients ran.
    pub(crate) db_statements: u64,
    /// The database's own operations per second: `db_statements / seconds`.
    pub(crate) db_ops_per_sec: f64,
    /// Reads older than the newest write acknowledged before they began.
    pub(crate) stale_reads: u64,
    /// Operations that failed.
    pub(crate) errors: u64,
    /// The first failure.
    pub(crate) first_error: Option<String>,
    /// Open loop: operations due before the end that were never sent (the
    /// pattern fell too far behind its schedule).
    pub(crate) unsent: u64,
    /// Something to know about this pattern's run.
    pub(crate) note: Option<String>,
}

impl PatternReport {
    /// The report of `pattern` from its run.
    pub(crate) fn new(pattern: Pattern, run: PatternRun) -> Result<PatternReport> {
        let m = run.measured;
        let ops = m.reads + m.writes;
        let per_op = |n: u64| if ops == 0 { 0.0 } else { n as f64 / ops as f64 };
        let seconds = run.elapsed.as_secs_f64();
        let per_sec = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let mut all = m.read_latency.clone();
        all.add(&m.write_latency)?;
        Ok(PatternReport {
            pattern: pattern.name(),
            ops,
            reads: m.reads,
            writes: m.writes,
            seconds,
            ops_per_sec: per_sec(ops),
            reads_per_sec: per_sec(m.reads),
            writes_per_sec: per_sec(m.writes),
            latency_ms: Latency::of(&all),
            read_latency_ms: Latency::of(&m.read_latency),
            write_latency_ms: Latency::of(&m.write_latency),
            hit_ratio: (m.cached_reads > 0).then(|| m.hits as f64 / m.cached_reads as f64),
            db_reads: run.db_reads,
            db_writes: run.db_writes,
            db_reads_per_op: per_op(run.db_reads),
            db_writes_per_op: per_op(run.db_writes),
            db_statements: run.db_statements,
            db_ops_per_sec: per_sec(run.db_statements),
            stale_reads: m.stale,
            errors: m.errors,
            first_error: m.first_error,
            unsent: m.unsent,
            note: run.note,
        })
    }
}

/// The whole run, as written by `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// When the run started (RFC 3339, UTC).
    pub(crate) date: String,
    /// larder's version.
    pub(crate) larder_version: &'static str,
    /// The machine: OS, architecture, CPUs.
    pub(crate) machine: String,
    /// The database URL (password hidden) and the Redis URL.
    pub(crate) db: String,
    /// The Redis URL.
    pub(crate) redis: String,
    /// The workload, as given.
    pub(crate) workload: WorkloadReport,
    /// What a reader must know about the whole run (e.g. a database that
    /// serialises writes).
    pub(crate) notes: Vec<String>,
    /// One entry per pattern, in run order.
    pub(crate) patterns: Vec<PatternReport>,
}

/// The workload's settings, in the report.
#[derive(Debug, Serialize)]
pub(crate) struct WorkloadReport {
    keys: u64,
    dist: String,
    read_ratio: f64,
    value_size: usize,
    clients: usize,
    duration_s: Option<f64>,
    ops: Option<u64>,
    db_latency_ms: f64,
    seed: u64,
    /// Open loop's operations per second; `null`: closed loop.
    rate: Option<f64>,
}

impl WorkloadReport {
    /// The report form of `w`.
    pub(crate) fn new(w: &Workload) -> WorkloadReport {
        let (duration_s, ops) = match w.stop {
            Stop::Duration(d) => (Some(d.as_secs_f64()), None),
            Stop::Ops(n) => (None, Some(n)),
        };
        WorkloadReport {
            keys: w.keys,
            dist: w.dist.to_string(),
            read_ratio: w.read_ratio,
            value_size: w.value_size,
            clients: w.clients,
            duration_s,
            ops,
            db_latency_ms: w.db_latency.as_secs_f64() * 1e3,
            seed: w.seed,
            rate: w.rate,
        }
    }
}

/// This machine in one line: OS, architecture, logical CPUs.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} {}, {cpus} logical CPUs",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// The one-line summary of the workload above the table.
pub(crate) fn headline(w: &Workload) -> String {
    let stop = match w.stop {
        Stop::Duration(d) => format!("{} s per pattern", d.as_secs_f64()),
        Stop::Ops(n) => format!("{n} ops per pattern"),
    };
    let lp = match w.rate {
        Some(rate) => format!("open loop at {rate} ops/s"),
        None => "closed loop".to_owned(),
    };
    format!(
        "{} keys, {}, {:.0}% reads, {} B values, {} clients, {lp}, {stop}, db latency +{} ms, seed {}",
        w.keys,
        w.dist,
        w.read_ratio * 100.0,
        w.value_size,
        w.clients,
        w.db_latency.as_secs_f64() * 1e3,
        w.seed
    )
}

/// The table printed on stdout: throughput, then reads and writes each
/// with their own rate and latency, then what reached the database.
pub(crate) fn table(reports: &[PatternReport], notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<26} {:>9} | {:>9} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8} | {:>6} {:>8} {:>7} {:>7} {:>6} {:>6}",
        "pattern",
        "ops/s",
        "reads/s",
        "r p50",
        "r p99",
        "r p99.9",
        "writes/s",
        "w p50",
        "w p99",
        "w p99.9",
        "hit %",
        "db ops/s",
        "db r/op",
        "db w/op",
        "stale",
        "errors"
    );
    for r in reports {
        let hit = r
            .hit_ratio
            .map_or_else(|| "-".to_owned(), |h| format!("{:.1}", h * 100.0));
        let (rl, wl) = (&r.read_latency_ms, &r.write_latency_ms);
        let _ = writeln!(
            out,
            "{:<26} {:>9.0} | {:>9.0} {:>8.3} {:>8.3} {:>8.3} | {:>8.0} {:>8.3} {:>8.3} {:>8.3} | {:>6} {:>8.0} {:>7.3} {:>7.3} {:>6} {:>6}",
            r.pattern,
            r.ops_per_sec,
            r.reads_per_sec,
            rl.p50,
            rl.p99,
            rl.p999,
            r.writes_per_sec,
            wl.p50,
            wl.p99,
            wl.p999,
            hit,
            r.db_ops_per_sec,
            r.db_reads_per_op,
            r.db_writes_per_op,
            r.stale_reads,
            r.errors
        );
    }
    let _ = writeln!(out, "latencies in ms; r = reads, w = writes");
    for note in notes {
        let _ = writeln!(out, "note: {note}");
    }
    for r in reports {
        if r.unsent > 0 {
            let _ = writeln!(
                out,
                "{}: {} operations were due but never sent: the pattern fell behind --rate by more than the run's duration",
                r.pattern, r.unsent
            );
        }
        if let Some(note) = &r.note {
            let _ = writeln!(out, "note: {note}");
        }
        if let Some(e) = &r.first_error {
            let _ = writeln!(out, "{}: first error: {e}", r.pattern);
        }
    }
    out
}

/// What to know about the database `url` when reading the figures.
pub(crate) fn db_notes(url: &str) -> Vec<String> {
    if url.starts_with("sqlite:") {
        vec!["SQLite serialises writes (one writer at a time): write latencies include waiting for the database's lock, and a closed loop's throughput is capped by it for every pattern; use --db postgres://… for a server database".to_owned()]
    } else {
        Vec::new()
    }
}

/// Writes the report as pretty JSON to `path`.
pub(crate) fn write_json(path: &Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("--json {}", path.display()))
}
