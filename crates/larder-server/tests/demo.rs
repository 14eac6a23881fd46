//! `larder demo` end to end: the real binary, a real SQLite file, the real Redis.

use larder_test_support::redis_url;
use std::process::Command;

/// The number printed before `word` on the line of `out` that starts with
/// `start` (after its indentation).
fn figure(out: &str, start: &str, word: &str) -> i64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in\n{out}"));
    let before = line
        .split(word)
        .next()
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    before
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {word:?} in {line:?}"))
}

/// What the demo's database counted in `demo_loads`, by name.
fn counted_by_the_database(db: &std::path::Path) -> std::collections::BTreeMap<String, i64> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                .await
                .expect("open the demo database");
            let rows: Vec<(String, i64)> = sqlx::query_as("SELECT name, n FROM demo_loads")
                .fetch_all(&pool)
                .await
                .expect("demo_loads");
            pool.close().await;
            rows.into_iter().collect()
        })
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("larder-demo-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("demo.db")
}

#[test]
fn demo_shows_every_step_and_reuses_its_database() {
    let db = temp_db("steps");
    for run in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_larder"))
            .args(["demo", "--users", "200", "--db"])
            .arg(&db)
            .env("LARDER_REDIS_URL", redis_url())
            .output()
            .expect("run larder demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("(as configured)"), "{stdout}");
        assert_eq!(stdout.contains("created now"), run == 0, "{stdout}");
        for line in [
            "get_or_load(42)",
            "miss     User 42",
            "hit      User 42",
            "miss     User 7 ",
            "hit      User 7 ",
            "outcomes: hit hit hit hit hit hit hit hit hit hit",
            "get(1200)",
            "negative not found",
            "miss     Renamed",
            "hit      Renamed",
            "hit ratio",
            "stampede: 200 concurrent readers of one expired hot key",
            "l1       User 1 ",
            "hit      User 1 ",
            "stale    User 1 ",
            "hit      Refreshed <user1@example.com>",
        ] {
            assert!(
                stdout.contains(line),
                "run {run}: missing {line:?} in\n{stdout}"
            );
        }
        // The stampede and the refresh, as the database counted its loads.
        let counted = counted_by_the_database(&db);
        let naive = figure(&stdout, "naive cache-aside", "database loads");
        let larder = figure(&stdout, "larder  ", "database load");
        assert_eq!(
            (naive, larder),
            (counted["stampede_naive"], counted["stampede_larder"]),
            "{stdout}"
        );
        assert_eq!(larder, 1, "larder: one load for 200 readers\n{stdout}");
        assert!(
            naive > 1,
            "the naive cache-aside stampedes the database\n{stdout}"
        );
        assert_eq!(counted["swr"], 1, "one refresh behind the stale answers");
        assert_eq!(
            figure(&stdout, "database loads during all of it", "(counted"),
            1
        );
        // The seed's cache-aside on the same expired key: no stale copy, so
        // the readers query the database themselves.
        let naive_expired = figure(&stdout, "naive, expired", "database loads");
        assert_eq!(naive_expired, counted["swr_naive"], "{stdout}");
        assert!(naive_expired > 1, "{stdout}");
        // The near cache answers faster than a Redis round trip.
        let l1 = stdout
            .lines()
            .find(|l| l.contains(" l1 "))
            .expect("l1 line");
        assert!(l1.contains(" µs "), "{l1}");
        // It ends with a config that `larder serve` accepts, and the command.
        let config = db.with_extension("toml");
        let text = std::fs::read_to_string(&config).expect("the demo writes its serve config");
        larder_server::config::Config::parse(&text, "demo.toml")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let last: Vec<&str> = stdout.trim_end().lines().rev().take(3).collect();
        assert!(
            last[2].contains(&format!("larder serve --config {}", config.display())),
            "{stdout}"
        );
        assert!(last[1].contains("http://127.0.0.1:7070/"), "{stdout}");
    }
    let _ = std::fs::remove_dir_all(db.parent().expect("dir"));
}

#[test]
fn an_explicit_redis_that_does_not_answer_is_an_error() {
    let db = temp_db("down");
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["demo", "--redis", "redis://127.0.0.1:1", "--db"])
        .arg(&db)
        .output()
        .expect("run larder demo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("redis://127.0.0.1:1"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(db.parent().expect("dir"));
}
