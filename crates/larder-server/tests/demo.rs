//! `larder demo` end to end: the real binary, a real SQLite file, the real Redis.

use std::process::Command;

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("larder-demo-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("demo.db")
}

fn redis_url() -> String {
    std::env::var("LARDER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
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
        ] {
            assert!(
                stdout.contains(line),
                "run {run}: missing {line:?} in\n{stdout}"
            );
        }
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
