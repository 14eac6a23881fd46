//! `larder bench`: one workload against several caching patterns, side by
//! side on the same database and Redis, with what each costs (ops/s,
//! latency, database rows per operation) and what each gives (hit ratio,
//! stale reads).
//!
//! Why a load generator in the binary: the library's criterion benches
//! measure one path each; choosing a pattern needs the whole picture on
//! *your* database and Redis, with your key skew and read/write mix. The
//! patterns run one after another (never at once, so they do not share the
//! machine), each on its own table and key prefix.
//!
//! - [`workload`]: key distributions, the operation mix, when to stop;
//! - [`patterns`]: one runner per pattern and the client loop;
//! - [`stale`]: the stale-read detector;
//! - [`report`]: the table and `--json`; [`chart`]: `--chart`.
//!
//! Flags are plain strings checked here, so that every bad value is one
//! readable line (`error: --clients "0": …`) and a non-zero exit.

mod chart;
mod patterns;
mod report;
mod stale;
mod workload;

use anyhow::{bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use larder::SqlPool;
use larder_server::config::redact;
use patterns::{Env, Pattern, Shared};
use report::{PatternReport, Report, WorkloadReport};
use stale::Versions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::{parse_duration, Dist, Keys, Stop, Workload};

/// Options of `larder bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The database: sqlite://FILE or postgres://… [default: a SQLite file in the temp dir]
    #[arg(long)]
    db: Option<String>,
    /// The Redis.
    #[arg(
        long,
        env = "LARDER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// Comma-separated patterns, or `all`: db-only, cache-aside, read-through,
    /// read-through+l1, write-through, write-around, write-back, redis-raw
    /// (and cache-aside-no-invalidate, deliberately stale, only by name).
    #[arg(long, default_value = "all")]
    patterns: String,
    /// Keys (rows per table).
    #[arg(long, default_value = "10000")]
    keys: String,
    /// Key distribution: uniform, zipf:S, hotspot:KEYS:OPS.
    #[arg(long, default_value = "zipf:1.0")]
    dist: String,
    /// Share of reads, 0..1.
    #[arg(long, default_value = "0.9")]
    read_ratio: String,
    /// Payload bytes per value.
    #[arg(long, default_value = "256")]
    value_size: String,
    /// Concurrent clients.
    #[arg(long, default_value = "32")]
    clients: String,
    /// How long each pattern runs [default: 10s]; exclusive with --ops.
    #[arg(long)]
    duration: Option<String>,
    /// Operations per pattern (all clients together); exclusive with --duration.
    #[arg(long)]
    ops: Option<String>,
    /// Added to every database statement (a remote or loaded database).
    #[arg(long, default_value = "0ms")]
    db_latency: String,
    /// Write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw latency and throughput per pattern into FILE.svg.
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,
    /// Seed of the key and operation choices.
    #[arg(long, default_value = "1")]
    seed: String,
    /// Open loop: OPS operations per second in all, sent on a fixed
    /// schedule whatever the answers' speed, each latency measured from the
    /// time it was due (queueing counts, as wrk2 measures). Without it each
    /// client sends its next operation when the last is answered (closed
    /// loop), which hides queueing delay.
    #[arg(long, value_name = "OPS")]
    rate: Option<String>,
}

/// The largest `--keys` (every key has a version slot and a row).
const MAX_KEYS: u64 = 10_000_000;
/// The largest `--value-size`.
const MAX_VALUE: usize = 1 << 20;
/// The most clients.
const MAX_CLIENTS: usize = 4096;
/// The highest `--rate`, operations per second.
const MAX_RATE: f64 = 10_000_000.0;

/// A number flag, or a one-line error.
fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T> {
    text.trim()
        .parse()
        .ok()
        .with_context(|| format!("{flag} {text:?}: not a valid number"))
}

/// Checks every flag; the first bad one is the error.
fn validate(args: &BenchArgs) -> Result<(Workload, Vec<Pattern>)> {
    let keys: u64 = number("--keys", &args.keys)?;
    if !(1..=MAX_KEYS).contains(&keys) {
        bail!("--keys {keys}: must be between 1 and {MAX_KEYS}");
    }
    let dist = Dist::parse(&args.dist)?;
    let read_ratio: f64 = number("--read-ratio", &args.read_ratio)?;
    if !(0.0..=1.0).contains(&read_ratio) {
        bail!("--read-ratio {read_ratio}: must be between 0 and 1");
    }
    let value_size: usize = number("--value-size", &args.value_size)?;
    if !(1..=MAX_VALUE).contains(&value_size) {
        bail!("--value-size {value_size}: must be between 1 and {MAX_VALUE} bytes");
    }
    let clients: usize = number("--clients", &args.clients)?;
    if !(1..=MAX_CLIENTS).contains(&clients) {
        bail!("--clients {clients}: must be between 1 and {MAX_CLIENTS}");
    }
    let stop = match (&args.duration, &args.ops) {
        (Some(_), Some(_)) => bail!("--duration and --ops: give one or the other"),
        (None, Some(ops)) => {
            let n: u64 = number("--ops", ops)?;
            if n == 0 {
                bail!("--ops 0: must be at least 1");
            }
            Stop::Ops(n)
        }
        (d, None) => {
            let d = parse_duration("--duration", d.as_deref().unwrap_or("10s"))?;
            if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                bail!("--duration {d:?}: must be more than 0 and at most 24h");
            }
            Stop::Duration(d)
        }
    };
    let db_latency = parse_duration("--db-latency", &args.db_latency)?;
    if db_latency > Duration::from_secs(10) {
        bail!("--db-latency {db_latency:?}: at most 10s");
    }
    let seed: u64 = number("--seed", &args.seed)?;
    let rate = match &args.rate {
        None => None,
        Some(text) => {
            let rate: f64 = number("--rate", text)?;
            if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
                bail!("--rate {text:?}: must be more than 0 and at most {MAX_RATE} operations per second");
            }
            Some(rate)
        }
    };
    let mut chosen = Vec::new();
    for name in args.patterns.split(',').map(str::trim) {
        if name == "all" {
            chosen.extend(Pattern::ALL.into_iter().filter(|p| p.in_default_set()));
        } else if let Some(p) = Pattern::parse(name) {
            chosen.push(p);
        } else {
            let known: Vec<&str> = Pattern::ALL.iter().map(|p| p.name()).collect();
            bail!(
                "--patterns: unknown pattern {name:?} (known: all, {})",
                known.join(", ")
            );
        }
    }
    // Run order is the table's order; a pattern named twice runs once.
    let patterns = Pattern::ALL
        .into_iter()
        .filter(|p| chosen.contains(p))
        .collect();
    if let Some(chart) = &args.chart {
        if chart.extension().and_then(|e| e.to_str()) != Some("svg") {
            bail!("--chart {}: the file must end in .svg", chart.display());
        }
    }
    let workload = Workload {
        keys,
        dist,
        read_ratio,
        value_size,
        clients,
        stop,
        db_latency,
        seed,
        rate,
    };
    Ok((workload, patterns))
}

/// The default database: a SQLite file in the temp dir.
fn default_db() -> String {
    let path = std::env::temp_dir().join("larder-bench.db");
    format!("sqlite://{}", path.display())
}

/// Runs `larder bench`.
pub(crate) async fn run(args: BenchArgs) -> Result<()> {
    let (workload, patterns) = validate(&args)?;
    let db_url = args.db.clone().unwrap_or_else(default_db);
    let pool_size = u32::try_from(workload.clients.min(32)).unwrap_or(32);
    let pool = SqlPool::connect(&db_url, pool_size)
        .await
        .with_context(|| format!("--db {}", redact(&db_url)))?;
    let redis = redis::Client::open(args.redis.as_str())
        .with_context(|| format!("--redis {}", args.redis))?;
    redis
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("--redis {}: not answering", args.redis))?;
    let env = Env {
        pool,
        redis_url: args.redis.clone(),
        redis,
        run_id: std::process::id().to_string(),
    };
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let headline = report::headline(&workload);
    eprintln!("larder bench: {headline}; db {}", redact(&db_url));
    let keys = Arc::new(Keys::new(workload.keys, workload.dist));
    let mut reports = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        let shared = Arc::new(Shared {
            workload: workload.clone(),
            keys: keys.clone(),
            versions: Versions::new(workload.keys),
            done: AtomicU64::new(0),
        });
        let bar = progress(pattern, &workload)?;
        let ticker = tokio::spawn(tick(bar.clone(), shared.clone()));
        let run = patterns::run(pattern, &env, shared).await;
        ticker.abort();
        let run = run.with_context(|| pattern.name().to_owned())?;
        let r = PatternReport::new(pattern, run)?;
        bar.finish_with_message(format!("{:.0} ops/s", r.ops_per_sec));
        reports.push(r);
    }
    let notes = report::db_notes(&db_url);
    println!("{headline}");
    print!("{}", report::table(&reports, &notes));
    if let Some(path) = &args.chart {
        chart::write_svg(path, &format!("larder bench: {headline}"), &reports)?;
    }
    if let Some(path) = &args.json {
        let full = Report {
            date,
            larder_version: env!("CARGO_PKG_VERSION"),
            machine: report::machine(),
            db: redact(&db_url),
            redis: args.redis.clone(),
            workload: WorkloadReport::new(&workload),
            notes,
            patterns: reports,
        };
        report::write_json(path, &full)?;
    }
    Ok(())
}

/// The progress bar of one pattern (stderr; hidden when it is not a terminal).
fn progress(pattern: Pattern, w: &Workload) -> Result<ProgressBar> {
    let len = match w.stop {
        Stop::Ops(n) => n,
        Stop::Duration(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    };
    let bar = ProgressBar::new(len).with_style(ProgressStyle::with_template(
        "{prefix:>26} {bar:30} {percent:>3}% {msg}",
    )?);
    bar.set_prefix(pattern.name());
    Ok(bar)
}

/// Moves the bar every 100 ms until aborted.
async fn tick(bar: ProgressBar, shared: Arc<Shared>) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = shared.done.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        match shared.workload.stop {
            Stop::Ops(_) => bar.set_position(done),
            Stop::Duration(_) => {
                bar.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(0));
            }
        }
        bar.set_message(format!("{done} ops, {:.0} ops/s", done as f64 / secs));
    }
}
