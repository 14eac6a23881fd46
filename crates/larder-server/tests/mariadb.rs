//! The service on MariaDB (`LARDER_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`), each test in a database of its own:
//! the real `larder serve` binary answers GET/PUT/PATCH/DELETE, the router
//! refuses bad input before any SQL and maps constraint errors, the
//! OpenAPI document types MariaDB columns, and `cdc = true` is refused.

mod support;

use larder_server::client;
use larder_server::config::Config;
use larder_server::http::app;
use serde_json::{json, Value};
use std::process::Command;
use support::{get, mysql_pool, mysql_url, send, temp_dir, unique, write, Serve};

/// A database of the test's own with a `users` table, dropped by
/// [`Maria::drop`].
struct Maria {
    pool: sqlx::MySqlPool,
    db: String,
}

impl Maria {
    async fn new() -> Maria {
        let db = unique("srv");
        let pool = mysql_pool(2).await;
        for sql in [
            format!("CREATE DATABASE {db}"),
            format!(
                "CREATE TABLE {db}.users (id bigint PRIMARY KEY, name varchar(20) NOT NULL,
                 email varchar(40) UNIQUE, team int NOT NULL DEFAULT 0,
                 score int CHECK (score >= 0), active boolean NOT NULL DEFAULT TRUE,
                 meta json, seen datetime, price decimal(8, 2))"
            ),
            format!(
                "INSERT INTO {db}.users (id, name, email, team, meta, seen, price) VALUES
                 (1, 'ada', 'ada@x', 1, '{{\"langs\": [\"en\"]}}', '2024-01-02 03:04:05', 9.5),
                 (2, 'bob', 'bob@x', 2, NULL, NULL, NULL)"
            ),
        ] {
            sqlx::raw_sql(&sql)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        Maria { pool, db }
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "listen = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 3\n\
             [[entity]]\nname = \"users\"\ntable = \"{}.users\"\n{extra}",
            support::redis_url(),
            unique("m"),
            mysql_url(),
            self.db
        )
    }

    async fn name_of(&self, id: i64) -> Option<String> {
        sqlx::query_scalar(&format!(
            "SELECT CAST(name AS CHAR) FROM {}.users WHERE id = ?",
            self.db
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .expect("query")
    }

    async fn drop(self) {
        sqlx::raw_sql(&format!("DROP DATABASE {}", self.db))
            .execute(&self.pool)
            .await
            .expect("drop database");
    }
}

fn body(r: &client::Response) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&r.body)))
}

fn x_cache(r: &client::Response) -> &str {
    r.headers
        .iter()
        .find(|(k, _)| k == "x-cache")
        .map_or("(none)", |(_, v)| v.as_str())
}

#[tokio::test]
async fn larder_serve_on_mariadb_reads_and_writes_through() {
    let m = Maria::new().await;
    let served = Serve::with_config(&m.config(""));

    // GET: a miss, then a hit; rows typed as from PostgreSQL.
    let a = served.call("GET", "/v1/users/1", None).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(x_cache(&a), "miss");
    assert_eq!(
        body(&a),
        json!({"id": 1, "name": "ada", "email": "ada@x", "team": 1, "score": null,
               "active": true, "meta": {"langs": ["en"]}, "seen": "2024-01-02T03:04:05",
               "price": 9.5})
    );
    let a = served.call("GET", "/v1/users/001", None).await;
    assert_eq!((a.status, x_cache(&a)), (200, "hit"));
    assert_eq!(served.call("GET", "/v1/users/9", None).await.status, 404);

    // PUT creates (defaults for absent columns), then keeps absent columns.
    let a = served
        .call(
            "PUT",
            "/v1/users/10",
            Some(r#"{"name": "dee", "active": false}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        body(&a),
        json!({"id": 10, "name": "dee", "email": null, "team": 0, "score": null,
               "active": false, "meta": null, "seen": null, "price": null})
    );
    let a = served
        .call(
            "PUT",
            "/v1/users/10",
            Some(r#"{"name": "dee2", "email": "d@x", "team": 4}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        (body(&a)["name"].clone(), body(&a)["active"].clone()),
        (json!("dee2"), json!(false)),
        "absent columns keep their stored value, with or without a default"
    );
    let a = served.call("GET", "/v1/users/10", None).await;
    assert_eq!(
        (x_cache(&a), body(&a)["email"].clone()),
        ("hit", json!("d@x"))
    );

    // PATCH: an UPDATE then a SELECT; the row as stored.
    let a = served
        .call(
            "PATCH",
            "/v1/users/10",
            Some(r#"{"score": 5, "meta": {"k": 1}, "seen": "2025-06-07T08:09:10Z"}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let row = body(&a);
    assert_eq!(
        (
            row["score"].clone(),
            row["meta"].clone(),
            row["seen"].clone(),
            row["team"].clone()
        ),
        (
            json!(5),
            json!({"k": 1}),
            json!("2025-06-07T08:09:10"),
            json!(4)
        )
    );
    let a = served
        .call("PATCH", "/v1/users/11", Some(r#"{"name": "x"}"#))
        .await;
    assert_eq!(a.status, 404);
    assert_eq!(m.name_of(11).await, None);

    // DELETE: 204, then 404, and the cache forgets the row.
    assert_eq!(
        served.call("DELETE", "/v1/users/10", None).await.status,
        204
    );
    assert_eq!(
        served.call("DELETE", "/v1/users/10", None).await.status,
        404
    );
    assert_eq!(served.call("GET", "/v1/users/10", None).await.status, 404);
    assert_eq!(m.name_of(10).await, None);
    drop(served);
    m.drop().await;
}

#[tokio::test]
async fn bad_input_and_constraint_errors_on_mariadb() {
    let m = Maria::new().await;
    let state = support::state(&m.config("")).await;
    let app = app(state);
    let cases: &[(&str, u16, &str)] = &[
        (r#"{"name": "x", "colour": "red"}"#, 400, "unknown_column"),
        (r#"{"name": 5}"#, 400, "type_mismatch"),
        (r#"{"name": null}"#, 400, "type_mismatch"),
        (r#"{"name": "x", "team": 2147483648}"#, 400, "type_mismatch"),
        (r#"{"name": "xxxxxxxxxxxxxxxxxxxxx"}"#, 400, "type_mismatch"),
        (r#"{"name": "a\u0000b"}"#, 400, "type_mismatch"),
    ];
    for (body, status, code) in cases {
        let a = write(&app, "PUT", "/v1/users/1", body).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (*status, *code),
            "{body}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    assert_eq!(
        m.name_of(1).await.as_deref(),
        Some("ada"),
        "nothing written"
    );
    let a = write(
        &app,
        "PUT",
        "/v1/users/20",
        r#"{"name": "dup", "email": "ada@x"}"#,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (409, "conflict"),
        "unique"
    );
    let a = write(&app, "PATCH", "/v1/users/1", r#"{"score": -1}"#).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (409, "conflict"),
        "check"
    );
    let a = send(&app, "POST", "/v1/users/1/invalidate", &[], None).await;
    assert_eq!(a.status.as_u16(), 204);
    assert_eq!(get(&app, "/v1/users/1").await.x_cache(), "miss");

    // The OpenAPI document types MariaDB's columns.
    let doc = get(&app, "/v1/openapi.json").await.json();
    let text = doc.to_string();
    let props =
        find_properties(&doc, "active").unwrap_or_else(|| panic!("no users row schema: {text}"));
    assert_eq!(props["active"]["type"], "boolean", "{}", props);
    assert_eq!(props["team"]["type"], "integer", "{}", props);
    assert_eq!(props["name"]["maxLength"], 20, "{}", props);
    assert!(
        props["meta"].to_string().contains("JsonDocument"),
        "{}",
        props
    );
    assert!(props["price"].to_string().contains("number"), "{}", props);
    assert!(props["seen"].to_string().contains("pattern"), "{}", props);
    m.drop().await;
}

/// The first `properties` object (depth first) that has the column `col`.
fn find_properties<'a>(v: &'a Value, col: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => {
            if let Some(p) = map.get("properties") {
                if p.get(col).is_some() && p.get("team").is_some() {
                    return Some(p);
                }
            }
            map.values().find_map(|x| find_properties(x, col))
        }
        Value::Array(items) => items.iter().find_map(|x| find_properties(x, col)),
        _ => None,
    }
}

#[tokio::test]
async fn cdc_on_mariadb_is_refused_at_start() {
    let m = Maria::new().await;
    let config = m.config("cdc = true\n");
    let e = Config::parse(&config, "test.toml").expect_err("cdc is refused");
    assert_eq!(e.key, "entity[0].cdc");
    let text = e.to_string();
    assert!(text.contains("invalidate"), "{text}");

    // The binary: a non-zero exit and one line naming `cdc`.
    let dir = temp_dir("larder-maria-cdc");
    let path = dir.join("larder.toml");
    std::fs::write(&path, &config).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["serve", "--config", path.to_str().expect("utf-8")])
        .env_remove("LARDER_CONFIG")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("entity[0].cdc") && stderr.contains("invalidate"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    m.drop().await;
}
