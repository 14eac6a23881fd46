//! What a run reports: one [`PatternReport`] per pattern, printed as a
//! table on stdout and written as JSON with `--json`.
//!
//! The figures are computed once here, so the table, the JSON file and the
//! chart can never disagree.

use super::patterns::{Pattern, PatternRun};
use super::workload::{Stop, Workload};
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Latency percentiles of one pattern, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50: f64,
    /// 95th percentile.
    pub(crate) p95: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// Slowest operation.
    pub(crate) max: f64,
    /// Mean.
    pub(crate) mean: f64,
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
    /// Latency per operation, ms.
    pub(crate) latency_ms: Latency,
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
    /// Reads older than the newest write acknowledged before they began.
    pub(crate) stale_reads: u64,
    /// Operations that failed.
    pub(crate) errors: u64,
    /// The first failure.
    pub(crate) first_error: Option<String>,
    /// Something to know about this pattern's run.
    pub(crate) note: Option<String>,
}

impl PatternReport {
    /// The report of `pattern` from its run.
    pub(crate) fn new(pattern: Pattern, run: PatternRun) -> PatternReport {
        let m = run.measured;
        let ops = m.reads + m.writes;
        let per_op = |n: u64| if ops == 0 { 0.0 } else { n as f64 / ops as f64 };
        let ms = |ns: u64| ns as f64 / 1e6;
        let seconds = run.elapsed.as_secs_f64();
        PatternReport {
            pattern: pattern.name(),
            ops,
            reads: m.reads,
            writes: m.writes,
            seconds,
            ops_per_sec: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            latency_ms: Latency {
                p50: ms(m.latency.value_at_quantile(0.50)),
                p95: ms(m.latency.value_at_quantile(0.95)),
                p99: ms(m.latency.value_at_quantile(0.99)),
                max: ms(m.latency.max()),
                mean: m.latency.mean() / 1e6,
            },
            hit_ratio: (m.cached_reads > 0).then(|| m.hits as f64 / m.cached_reads as f64),
            db_reads: run.db_reads,
            db_writes: run.db_writes,
            db_reads_per_op: per_op(run.db_reads),
            db_writes_per_op: per_op(run.db_writes),
            stale_reads: m.stale,
            errors: m.errors,
            first_error: m.first_error,
            note: run.note,
        }
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
    format!(
        "{} keys, {}, {:.0}% reads, {} B values, {} clients, {stop}, db latency +{} ms, seed {}",
        w.keys,
        w.dist,
        w.read_ratio * 100.0,
        w.value_size,
        w.clients,
        w.db_latency.as_secs_f64() * 1e3,
        w.seed
    )
}

/// The table printed on stdout.
pub(crate) fn table(reports: &[PatternReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<26} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>7} {:>6}",
        "pattern",
        "ops/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "hit %",
        "db r/op",
        "db w/op",
        "stale",
        "errors"
    );
    for r in reports {
        let hit = r
            .hit_ratio
            .map_or_else(|| "-".to_owned(), |h| format!("{:.1}", h * 100.0));
        let _ = writeln!(
            out,
            "{:<26} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7} {:>8.3} {:>8.3} {:>7} {:>6}",
            r.pattern,
            r.ops_per_sec,
            r.latency_ms.p50,
            r.latency_ms.p95,
            r.latency_ms.p99,
            r.latency_ms.max,
            hit,
            r.db_reads_per_op,
            r.db_writes_per_op,
            r.stale_reads,
            r.errors
        );
    }
    for r in reports {
        if let Some(note) = &r.note {
            let _ = writeln!(out, "note: {note}");
        }
        if let Some(e) = &r.first_error {
            let _ = writeln!(out, "{}: first error: {e}", r.pattern);
        }
    }
    out
}

/// Writes the report as pretty JSON to `path`.
pub(crate) fn write_json(path: &Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("--json {}", path.display()))
}
