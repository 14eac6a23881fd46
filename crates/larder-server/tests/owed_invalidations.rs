//! The real binary with a `state_dir`: a write whose invalidation cannot
//! reach Redis, then SIGTERM while Redis is still down; the restarted
//! service replays it, so another instance never serves the old row once
//! Redis is back.

mod support;

use larder_server::client;
use std::time::Duration;
use support::{temp_dir, unique, RedisServer, Serve};

#[test]
fn sigterm_with_owed_invalidations_then_restart_never_serves_the_old_row() {
    let mut redis = RedisServer::durable();
    let dir = temp_dir("larder-owed");
    let state_dir = dir.join("state");
    let table = unique("owed");
    let prefix = unique("owed");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let pg = rt.block_on(async {
        let mut pg = support::Pg::connect().await;
        pg.exec(
            &table,
            "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL); INSERT INTO {t} VALUES (1, 'old')",
        )
        .await;
        pg
    });
    let common = format!(
        "[store]\nurl = \"{}\"\nprefix = \"{prefix}\"\n[source]\nurl = \"{}\"\npool = 2\n[near]\ncapacity = 100\nttl = \"60s\"\n[[entity]]\nname = \"items\"\ntable = \"{table}\"\nttl = \"60s\"\n",
        redis.url_with_short_timeouts(),
        support::pg_url()
    );
    let config = dir.join("larder.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nshutdown_grace = \"500ms\"\n{common}",
            state_dir.display()
        ),
    )
    .expect("write config");
    // Another instance, in process, without a state directory.
    let other = rt.block_on(async { larder_server::http::app(support::state(&common).await) });
    let name_on_other = || {
        rt.block_on(async {
            let answer = support::get(&other, "/v1/items/1").await;
            assert_eq!(answer.status, 200, "{:?}", answer.body);
            (
                answer.json()["name"].as_str().map(str::to_owned),
                answer.x_cache().to_owned(),
            )
        })
    };

    let server = Serve::start(&["--config", config.to_str().expect("utf-8")], None);
    let get = |server: &Serve| {
        rt.block_on(client::request(
            "GET",
            &format!("{}/v1/items/1", server.url),
            &[],
            None,
            Duration::from_secs(10),
        ))
        .expect("get")
    };
    assert_eq!(get(&server).status, 200);
    for _ in 0..2 {
        assert_eq!(name_on_other().0.as_deref(), Some("old"));
    }

    // Redis goes away; a write-through reaches the database only.
    redis.kill();
    let put = rt
        .block_on(client::request(
            "PUT",
            &format!("{}/v1/items/1", server.url),
            &[("content-type", "application/json")],
            Some(br#"{"name": "new"}"#),
            Duration::from_secs(10),
        ))
        .expect("put");
    assert!(put.status < 300, "{}", put.status);
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let owed_file = state_dir.join(format!("{prefix}.items.owed.json"));
    let kept = std::fs::read_to_string(&owed_file).expect("owed invalidations kept");
    assert!(kept.contains("\"1\""), "{kept}");

    // Redis returns with the old row (AOF); the service restarts and
    // replays what it owed before it listens.
    redis.restart();
    let server = Serve::start(&["--config", config.to_str().expect("utf-8")], None);
    assert!(!owed_file.exists(), "delivered, so the file is gone");
    for _ in 0..3 {
        let (name, outcome) = name_on_other();
        assert_eq!(name.as_deref(), Some("new"), "{outcome}");
    }
    assert_eq!(server.terminate().code(), Some(0));
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
