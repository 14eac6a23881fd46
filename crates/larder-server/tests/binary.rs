//! The real binary: `larder serve` starts with a config (and without one),
//! answers /health, exits 0 on SIGTERM; a bad config exits non-zero with
//! one line; `larder stats` and `larder warm` against it.

mod support;

use larder_server::client;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{temp_dir, unique, Serve};

/// A config over a SQLite file with a `users` table of 3 rows.
fn sqlite_config(dir: &Path) -> PathBuf {
    let db = dir.join("app.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let pool = larder::SqlPool::connect(&format!("sqlite://{}", db.display()), 1)
            .await
            .expect("sqlite");
        if let larder::SqlPool::Sqlite(p) = &pool {
            sqlx::raw_sql("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL); INSERT INTO users VALUES (1, 'ada'), (2, 'bob'), (3, 'cy')")
                .execute(p)
                .await
                .expect("seed");
            p.close().await;
        }
    });
    let path = dir.join("larder.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"sqlite://{}\"\npool = 2\n[[entity]]\nname = \"users\"\ntable = \"users\"\n",
            support::redis_url(),
            unique("bin"),
            db.display()
        ),
    )
    .expect("write config");
    path
}

#[test]
fn serves_with_a_config_and_exits_cleanly_on_sigterm() {
    let dir = temp_dir("larder-bin");
    let config = sqlite_config(&dir);
    let server = Serve::start(&["--config", config.to_str().expect("utf-8")], Some(&dir));
    let health = server.blocking_get("/health");
    assert_eq!(
        (health.status, health.text().as_str()),
        (200, r#"{"status":"ok"}"#)
    );
    let row = server.blocking_get("/v1/users/2");
    assert_eq!((row.status, row.header("x-cache")), (200, Some("miss")));
    assert_eq!(row.json().expect("json")["name"], "bob");

    // `larder stats` prints the service's figures as a table.
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["stats", "--url", &server.url])
        .env_remove("LARDER_TOKEN")
        .output()
        .expect("larder stats");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("entity") && text.contains("users") && text.contains("hit%"),
        "{text}"
    );

    // `larder top` draws two frames (the second with rates) and exits 0.
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args([
            "top",
            "--url",
            &server.url,
            "--iterations",
            "2",
            "--interval",
            "0.2",
        ])
        .env_remove("LARDER_TOKEN")
        .output()
        .expect("larder top");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames: Vec<&str> = text.matches("larder top").collect();
    assert_eq!(frames.len(), 2, "{text}");
    let last_row = text
        .lines()
        .rfind(|l| l.starts_with("users"))
        .expect("a users row");
    let cells: Vec<&str> = last_row.split_whitespace().collect();
    // No reads between the frames; the one read so far was a miss.
    assert_eq!(cells[..3], ["users", "0.0", "0.0"], "{text}");
    assert!(text.contains("redis: used"), "{text}");

    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");

    // `larder warm` fills the cache from the same config.
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["warm", "users", "--config", config.to_str().expect("utf-8")])
        .output()
        .expect("larder warm");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("warmed `users`: 3 rows"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_config_exits_non_zero_with_one_line() {
    let dir = temp_dir("larder-badcfg");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[entity]]\nname = \"users\"\ntable = \"users\"\nttl = \"5x\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["serve", "--config", path.to_str().expect("utf-8")])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "larder: {}: entity[0].ttl: invalid duration",
            path.display()
        )),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["stats", "--url", "http://127.0.0.1:1"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.lines().count() == 1,
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_config_it_serves_the_embedded_defaults() {
    let dir = temp_dir("larder-nocfg");
    let server = Serve::start(&["--listen", "127.0.0.1:0"], Some(&dir));
    assert!(
        dir.join("larder.db").exists(),
        "the default SQLite file is created"
    );
    let row = server.blocking_get("/v1/users/7");
    assert_eq!(row.status, 200, "{}", row.text());
    assert_eq!(row.json().expect("json")["name"], "user 7");
    assert_eq!(server.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_with_write_back_pending_leaves_every_acknowledged_write_in_the_database() {
    let redis = support::RedisServer::builder()
        .appendonly(true)
        .appendfsync_always(true)
        .start();
    let dir = temp_dir("larder-wb-term");
    let table = unique("wbterm");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let pg = rt.block_on(async {
        let mut pg = support::Pg::connect().await;
        pg.exec(
            &table,
            "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL)",
        )
        .await;
        pg
    });
    let config = dir.join("larder.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 2\n[[entity]]\nname = \"users\"\ntable = \"{table}\"\nwrite = \"back\"\n[entity.write_back]\nmax_delay = \"60s\"\n",
            redis.url(),
            unique("term"),
            support::pg_url()
        ),
    )
    .expect("write config");
    let server = Serve::start(&["--config", config.to_str().expect("utf-8")], Some(&dir));
    for id in 1..=20 {
        let body = format!(r#"{{"name": "user {id}"}}"#);
        let answer = rt
            .block_on(client::request(
                "PUT",
                &format!("{}/v1/users/{id}", server.url),
                &[("content-type", "application/json")],
                Some(body.as_bytes()),
                Duration::from_secs(10),
            ))
            .expect("put");
        assert_eq!(answer.status, 202);
    }
    let count = |pg: &support::Pg| {
        rt.block_on(pg.scalar_text(&format!("SELECT count(*)::text FROM {table}")))
    };
    assert_eq!(
        count(&pg).as_deref(),
        Some("0"),
        "pending: max_delay is a minute"
    );
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(count(&pg).as_deref(), Some("20"), "flushed at shutdown");
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
