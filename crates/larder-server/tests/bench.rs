//! `larder bench`, the real binary against the real Redis and databases:
//! every pattern runs a tiny workload and reports; the stale-read detector
//! flags cache-aside whose writes skip the invalidation and finds nothing
//! for write-through and write-back; the chart is an SVG; bad flags exit
//! non-zero with one line.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use support::temp_dir;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .arg("bench")
        .args(["--redis", &support::redis_url()])
        .args(args)
        .env_remove("LARDER_REDIS_URL")
        .output()
        .expect("run larder bench")
}

/// Runs the bench, asserts success, and returns its JSON report.
fn bench_json(args: &[&str], json: &Path) -> Value {
    let out = bench(&[args, &["--json", json.to_str().expect("utf-8 path")]].concat());
    assert!(
        out.status.success(),
        "larder bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(json).expect("the JSON report");
    serde_json::from_str(&text).expect("JSON")
}

fn pattern<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["patterns"]
        .as_array()
        .expect("patterns")
        .iter()
        .find(|p| p["pattern"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

#[test]
fn every_pattern_runs_on_a_small_workload_with_a_table_json_and_chart() {
    let dir = temp_dir("bench_all");
    let db = format!("sqlite://{}", dir.join("bench.db").display());
    let (json, svg) = (dir.join("report.json"), dir.join("chart.svg"));
    let out = bench(&[
        "--db",
        &db,
        "--keys",
        "50",
        "--ops",
        "400",
        "--clients",
        "4",
        "--json",
        json.to_str().expect("utf-8"),
        "--chart",
        svg.to_str().expect("utf-8"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("JSON");
    let all = [
        "db-only",
        "cache-aside",
        "read-through",
        "read-through+l1",
        "write-through",
        "write-around",
        "write-back",
        "redis-raw",
    ];
    assert_eq!(report["patterns"].as_array().map(Vec::len), Some(all.len()));
    for name in all {
        let p = pattern(&report, name);
        assert_eq!(p["ops"], 400, "{name}: {p:#}");
        assert_eq!(p["errors"], 0, "{name}: {p:#}");
        assert!(p["ops_per_sec"].as_f64() > Some(0.0), "{name}");
        assert!(p["latency_ms"]["p99"].as_f64() > Some(0.0), "{name}");
        // Reads and writes are reported apart, and add up to the whole.
        assert_eq!(
            p["reads"]
                .as_u64()
                .zip(p["writes"].as_u64())
                .map(|(r, w)| r + w),
            Some(400),
            "{name}: {p:#}"
        );
        assert!(
            p["reads"].as_u64() > Some(0) && p["writes"].as_u64() > Some(0),
            "{name}: {p:#}"
        );
        for kind in ["read_latency_ms", "write_latency_ms"] {
            let l = &p[kind];
            assert!(l["p50"].as_f64() > Some(0.0), "{name} {kind}: {p:#}");
            assert!(
                l["p999"].as_f64() >= l["p99"].as_f64(),
                "{name} {kind}: {p:#}"
            );
        }
        let sum = p["reads_per_sec"].as_f64().unwrap_or(0.0)
            + p["writes_per_sec"].as_f64().unwrap_or(0.0);
        let ops = p["ops_per_sec"].as_f64().unwrap_or(0.0);
        assert!((sum - ops).abs() <= ops * 1e-9, "{name}: {sum} vs {ops}");
        assert!(
            stdout.contains(name),
            "{name} missing from the table:\n{stdout}"
        );
    }
    // What each pattern costs the database, as counted in the source.
    assert!(pattern(&report, "db-only")["hit_ratio"].is_null());
    assert!(
        (pattern(&report, "db-only")["db_reads_per_op"]
            .as_f64()
            .unwrap_or(0.0)
            - 0.9)
            .abs()
            < 0.1
    );
    assert_eq!(pattern(&report, "redis-raw")["db_reads"], 0);
    assert_eq!(pattern(&report, "redis-raw")["db_statements"], 0);
    let db_only = pattern(&report, "db-only");
    assert_eq!(
        db_only["db_statements"], 400,
        "db-only sends one statement per operation: {db_only:#}"
    );
    assert!(db_only["db_ops_per_sec"].as_f64() > Some(0.0));
    assert_eq!(
        report["workload"]["rate"],
        Value::Null,
        "closed loop by default"
    );
    assert!(
        report["notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("SQLite serialises writes")),
        "a SQLite run says that it serialises writes: {:#}",
        report["notes"]
    );
    assert!(stdout.contains("SQLite serialises writes"), "{stdout}");
    assert!(pattern(&report, "read-through")["hit_ratio"].as_f64() > Some(0.3));
    assert!(stdout.contains("require_durable = false"), "{stdout}");
    // The cache-aside-no-invalidate pattern is not in the default set.
    assert!(!stdout.contains("cache-aside-no-invalidate"));
    let chart = std::fs::read_to_string(&svg).expect("the chart");
    assert!(
        chart.starts_with("<svg"),
        "{}",
        &chart[..chart.len().min(200)]
    );
    assert!(chart.contains("write-back") && chart.contains("throughput"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_stale_read_detector_flags_a_stale_setup_and_not_write_through_or_back() {
    // Few hot keys, half writes: a key read (and cached), then written
    // without an invalidation, is read stale at once. On PostgreSQL.
    let dir = temp_dir("bench_stale");
    let json = dir.join("report.json");
    let report = bench_json(
        &[
            "--db",
            &support::pg_url(),
            "--patterns",
            "cache-aside-no-invalidate,write-through,write-back,cache-aside",
            "--keys",
            "5",
            "--dist",
            "uniform",
            "--read-ratio",
            "0.5",
            "--ops",
            "600",
            "--clients",
            "4",
        ],
        &json,
    );
    let broken = pattern(&report, "cache-aside-no-invalidate");
    assert!(broken["stale_reads"].as_u64() > Some(0), "{broken:#}");
    for name in ["write-through", "write-back"] {
        let p = pattern(&report, name);
        assert_eq!(p["stale_reads"], 0, "{name}: {p:#}");
        assert_eq!(p["errors"], 0, "{name}: {p:#}");
    }
    // Cache-aside with its invalidation runs too, but its stale count is not
    // asserted: a read that joins this process's load in flight, started
    // before a write's invalidation, can (rarely) return the older row.
    assert_eq!(pattern(&report, "cache-aside")["errors"], 0);
    // Write-back coalesces: fewer rows reach the database than writes were made.
    let back = pattern(&report, "write-back");
    assert!(
        back["db_writes"].as_u64() <= back["writes"].as_u64(),
        "{back:#}"
    );
    assert!(back["db_writes"].as_u64() > Some(0), "{back:#}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_flags_exit_non_zero_with_one_line() {
    for (args, says) in [
        (&["--keys", "abc"][..], "--keys"),
        (&["--keys", "0"], "--keys"),
        (&["--dist", "zipf:-1"], "--dist"),
        (&["--dist", "gauss"], "--dist"),
        (&["--read-ratio", "1.5"], "--read-ratio"),
        (&["--value-size", "0"], "--value-size"),
        (&["--clients", "0"], "--clients"),
        (&["--duration", "1s", "--ops", "10"], "--duration"),
        (&["--duration", "ten"], "--duration"),
        (&["--ops", "0"], "--ops"),
        (&["--db-latency", "soon"], "--db-latency"),
        (&["--patterns", "read-through,nope"], "nope"),
        (&["--chart", "out.png"], "--chart"),
        (&["--seed=-1"], "--seed"),
        (&["--db", "mysql://x", "--ops", "1"], "mysql"),
        (&["--rate", "0", "--ops", "1"], "--rate"),
        (&["--rate=-5", "--ops", "1"], "--rate"),
        (&["--rate", "fast", "--ops", "1"], "--rate"),
        (&["--rate", "inf", "--ops", "1"], "--rate"),
    ] {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(says),
            "{args:?}: {stderr}"
        );
    }
}

/// Under `--rate`, a pattern slower than the schedule shows its queueing:
/// one client, 50 ms per database statement, due every 10 ms. Operation k
/// cannot start before k × 50 ms but was due at k × 10 ms, so the 40th
/// waited at least 39 × 40 ms + 50 ms ≈ 1.6 s. A closed loop would have
/// reported about 50 ms for each.
#[test]
fn an_open_loop_counts_latency_from_each_operations_due_time() {
    let dir = temp_dir("bench_open");
    let db = format!("sqlite://{}", dir.join("bench.db").display());
    let report = bench_json(
        &[
            "--db",
            &db,
            "--patterns",
            "db-only",
            "--keys",
            "10",
            "--ops",
            "40",
            "--clients",
            "1",
            "--db-latency",
            "50ms",
            "--rate",
            "100",
        ],
        &dir.join("report.json"),
    );
    assert_eq!(report["workload"]["rate"], 100.0);
    let p = pattern(&report, "db-only");
    assert_eq!(p["ops"], 40, "{p:#}");
    assert_eq!(p["unsent"], 0, "an --ops run sends every operation: {p:#}");
    let max = p["latency_ms"]["max"].as_f64().unwrap_or(0.0);
    assert!(
        max >= 39.0 * 40.0 + 50.0,
        "the last operation's latency counts from its due time: {max} ms\n{p:#}"
    );
    // The schedule sets a floor under the run's length: 40 operations due
    // every 10 ms, the last one answered after at least its 50 ms.
    assert!(p["seconds"].as_f64() >= Some(0.39 + 0.05), "{p:#}");
}
