//! A store down at start (degraded, never memory://), the embedded defaults
//! without a config file, and an entity over SQLite.

mod support;

use larder_server::http::app;
use larder_server::serve;
use serde_json::json;
use support::{get, unique, write, Pg};

#[tokio::test]
async fn a_store_down_at_start_serves_from_the_database_and_says_degraded() {
    let mut pg = Pg::connect().await;
    let t = unique("deg");
    pg.exec(&t, "CREATE TABLE {t} (id int PRIMARY KEY, name text NOT NULL); INSERT INTO {t} VALUES (1, 'ada')").await;
    let toml = format!(
        "[store]\nurl = \"redis://127.0.0.1:1/0\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 2\n[[entity]]\nname = \"e\"\ntable = \"{t}\"\n",
        unique("t"),
        support::pg_url()
    );
    let state = support::state(&toml).await;
    assert!(
        state.store().name().starts_with("redis://"),
        "no fallback to memory://"
    );
    let app = app(state);
    let r = get(&app, "/ready").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(
        (r.json()["degraded"].clone(), r.json()["store"].clone()),
        (json!(true), json!(false))
    );
    for _ in 0..2 {
        let a = get(&app, "/v1/e/1").await;
        assert_eq!((a.status.as_u16(), a.x_cache()), (200, "bypass"));
        assert_eq!(a.json()["name"], "ada");
    }
    let a = get(&app, "/v1/e?ids=1,2").await;
    assert_eq!(a.json()["missing"], json!(["2"]));
    // Write-through still writes the database.
    let a = write(&app, "PATCH", "/v1/e/1", r#"{"name": "ada2"}"#).await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-cache-write")),
        (200, Some("unreachable"))
    );
    assert_eq!(get(&app, "/v1/e/1").await.json()["name"], "ada2");
}

#[tokio::test]
async fn without_a_config_file_the_embedded_defaults_serve_sample_users() {
    let dir = support::temp_dir("larder-defaults");
    let (config, note) = serve::default_config(&dir.join("larder.db"))
        .await
        .expect("defaults");
    assert!(
        note.contains("no config file") && note.contains("users"),
        "{note}"
    );
    assert!(
        config.store.url == "redis://127.0.0.1:6379/0" || config.store.url == "memory://",
        "{}",
        config.store.url
    );
    assert_eq!(config.listen, "127.0.0.1:7070");
    let app = app(serve::start(config).await.expect("start"));
    // Another test run may have cached row 1 under the default prefix: any outcome.
    let a = get(&app, "/v1/users/5").await;
    assert_eq!(
        (a.status.as_u16(), a.json()["name"].clone()),
        (200, json!("user 5"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_entity_over_sqlite_reads_writes_and_conflicts() {
    let dir = support::temp_dir("larder-sqlite");
    let db = dir.join("t.db");
    let url = format!("sqlite://{}", db.display());
    let pool = larder::SqlPool::connect(&url, 1).await.expect("sqlite");
    if let larder::SqlPool::Sqlite(p) = &pool {
        sqlx::raw_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, qty INTEGER NOT NULL DEFAULT 1); INSERT INTO items VALUES (1, 'one', 1)")
            .execute(p)
            .await
            .expect("seed");
        p.close().await;
    }
    let toml = format!(
        "[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"{url}\"\npool = 2\n[[entity]]\nname = \"items\"\ntable = \"items\"\n",
        support::redis_url(),
        unique("t")
    );
    let app = app(support::state(&toml).await);
    assert_eq!(
        get(&app, "/v1/items/01").await.json(),
        json!({"id": 1, "name": "one", "qty": 1})
    );
    let a = write(&app, "PUT", "/v1/items/2", r#"{"name": "two"}"#).await;
    assert_eq!(a.json(), json!({"id": 2, "name": "two", "qty": 1}));
    assert_eq!(get(&app, "/v1/items/2").await.x_cache(), "hit");
    let a = write(&app, "PUT", "/v1/items/3", r#"{"name": "one"}"#).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (409, "conflict"));
    let a = write(&app, "PUT", "/v1/items/3", r#"{"qty": 2}"#).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "missing_column")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
