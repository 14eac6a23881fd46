//! `POST /v1/{entity}/{id}/incr`: increments added by the database, the
//! row answered and cached, every bad input refused with its code and
//! nothing written — against a real PostgreSQL table and the shared Redis.

mod support;

use larder_server::http::app;
use serde_json::{json, Value};
use support::{get, unique, write, Pg};

const TABLE: &str = "CREATE TABLE {t} (id integer PRIMARY KEY, name text NOT NULL, \
     views integer NOT NULL DEFAULT 0, likes bigint, price numeric(8,2) NOT NULL DEFAULT 0, \
     score double precision); \
     INSERT INTO {t} (id, name, views, likes, price) VALUES (1, 'ann', 10, NULL, 1.50);";

async fn service() -> (Pg, axum::Router, String) {
    let mut pg = Pg::connect().await;
    let t = unique("counters");
    let wb = unique("counters_wb");
    pg.exec(&t, TABLE).await;
    pg.exec(&wb, TABLE).await;
    let toml = support::pg_config(
        &unique("counters"),
        &format!(
            "[[entity]]\nname = \"posts\"\ntable = \"{t}\"\n\
             [[entity]]\nname = \"frozen\"\ntable = \"{t}\"\nwrite = \"read-only\"\n\
             [[entity]]\nname = \"queued\"\ntable = \"{wb}\"\nwrite = \"back\"\n\
             [entity.write_back]\nrequire_durable = false\n"
        ),
    );
    (pg, app(support::state(&toml).await), t)
}

async fn incr(app: &axum::Router, path: &str, body: serde_json::Value) -> support::Answer {
    write(app, "POST", path, &body.to_string()).await
}

#[tokio::test]
async fn an_increment_answers_the_stored_row_and_caches_it() {
    let (_pg, app, _t) = service().await;
    assert_eq!(get(&app, "/v1/posts/1").await.x_cache(), "miss");
    let a = incr(
        &app,
        "/v1/posts/1/incr",
        json!({"column": "views", "by": 1}),
    )
    .await;
    assert_eq!(
        a.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["views"], 11);
    assert_eq!(a.header("x-cache-write"), Some("updated"));
    let read = get(&app, "/v1/posts/1").await;
    assert_eq!(
        (read.x_cache(), read.json()["views"].clone()),
        ("hit", json!(11))
    );

    // Negative, NULL as 0, exact decimals, a whole float for an integer.
    let a = incr(
        &app,
        "/v1/posts/1/incr",
        json!({"column": "views", "by": -20}),
    )
    .await;
    assert_eq!(a.json()["views"], -9);
    let a = incr(
        &app,
        "/v1/posts/1/incr",
        json!({"column": "likes", "by": 5}),
    )
    .await;
    assert_eq!(a.json()["likes"], 5);
    let a = incr(
        &app,
        "/v1/posts/1/incr",
        json!({"column": "price", "by": 0.01}),
    )
    .await;
    assert_eq!(a.json()["price"].as_f64(), Some(1.51));
    let a = incr(
        &app,
        "/v1/posts/1/incr",
        json!({"column": "views", "by": 2.0}),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json()["views"].clone()),
        (200, json!(-7))
    );
    let a = incr(
        &app,
        "/v1/posts/1/incr",
        json!({"column": "score", "by": 0.5}),
    )
    .await;
    assert_eq!(a.json()["score"].as_f64(), Some(0.5));
    // The id is canonicalised as everywhere.
    let a = incr(
        &app,
        "/v1/posts/001/incr",
        json!({"column": "views", "by": 1}),
    )
    .await;
    assert_eq!(a.json()["views"], -6);
}

#[tokio::test]
async fn concurrent_increments_over_http_all_count() {
    let (_pg, app, _t) = service().await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    let a = incr(
                        &app,
                        "/v1/posts/1/incr",
                        json!({"column": "views", "by": 1}),
                    )
                    .await;
                    assert_eq!(a.status.as_u16(), 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let read = get(&app, "/v1/posts/1").await;
    assert_eq!(read.json()["views"], 10 + 8 * 25);
}

#[tokio::test]
async fn bad_increments_are_refused_with_their_codes_and_write_nothing() {
    let (_pg, app, _t) = service().await;
    let cases = [
        (
            "/v1/posts/1/incr",
            json!({"column": "nope", "by": 1}),
            400,
            "unknown_column",
        ),
        (
            "/v1/posts/1/incr",
            json!({"column": "name", "by": 1}),
            400,
            "type_mismatch",
        ),
        (
            "/v1/posts/1/incr",
            json!({"column": "id", "by": 1}),
            400,
            "type_mismatch",
        ),
        (
            "/v1/posts/1/incr",
            json!({"column": "views", "by": 1.5}),
            400,
            "type_mismatch",
        ),
        (
            "/v1/posts/1/incr",
            json!({"column": "views", "by": "1"}),
            400,
            "type_mismatch",
        ),
        (
            "/v1/posts/1/incr",
            json!({"column": "price", "by": 0.001}),
            400,
            "type_mismatch",
        ),
        (
            "/v1/posts/1/incr",
            json!({"column": "views"}),
            400,
            "bad_request",
        ),
        ("/v1/posts/1/incr", json!({"by": 1}), 400, "bad_request"),
        (
            "/v1/posts/1/incr",
            json!({"column": 3, "by": 1}),
            400,
            "bad_request",
        ),
        (
            "/v1/posts/1/incr",
            json!({"column": "views", "by": 1, "x": 1}),
            400,
            "bad_request",
        ),
        (
            "/v1/posts/1/incr",
            json!({"column": "views", "by": i64::MAX}),
            409,
            "conflict",
        ),
        (
            "/v1/posts/x/incr",
            json!({"column": "views", "by": 1}),
            400,
            "bad_id",
        ),
        (
            "/v1/posts/2/incr",
            json!({"column": "views", "by": 1}),
            404,
            "not_found",
        ),
        (
            "/v1/nope/1/incr",
            json!({"column": "views", "by": 1}),
            404,
            "unknown_entity",
        ),
        (
            "/v1/frozen/1/incr",
            json!({"column": "views", "by": 1}),
            405,
            "method_not_allowed",
        ),
        (
            "/v1/queued/1/incr",
            json!({"column": "views", "by": 1}),
            405,
            "method_not_allowed",
        ),
    ];
    for (path, body, status, code) in cases {
        let a = incr(&app, path, body.clone()).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (status, code),
            "{path} {body}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    let a = write(&app, "POST", "/v1/posts/1/incr", "not json").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_request"));
    // The write-back refusal says why.
    let a = incr(
        &app,
        "/v1/queued/1/incr",
        json!({"column": "views", "by": 1}),
    )
    .await;
    let message = a.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(message.contains("representation"), "{message}");
    // Nothing changed, and no row 2 was created.
    let row = get(&app, "/v1/posts/1").await.json();
    assert_eq!(
        (row["views"].clone(), row["price"].as_f64()),
        (json!(10), Some(1.5))
    );
    assert_eq!(get(&app, "/v1/posts/2").await.status.as_u16(), 404);
}

#[tokio::test]
async fn the_openapi_document_describes_the_increment() {
    let (_pg, app, _t) = service().await;
    let doc = get(&app, "/v1/openapi.json").await.json();
    let op = &doc["paths"]["/v1/posts/{id}/incr"]["post"];
    assert!(op.is_object(), "no incr operation: {}", doc["paths"]);
    let bodies = op["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let columns: Vec<Value> = bodies
        .iter()
        .map(|b| b["properties"]["column"]["const"].clone())
        .collect();
    assert_eq!(
        columns,
        [
            json!("views"),
            json!("likes"),
            json!("price"),
            json!("score")
        ]
    );
    for b in &bodies {
        assert_eq!(b["required"], json!(["column", "by"]), "{b}");
    }
    // An integer column takes integers in its range; a double any number.
    assert_eq!(bodies[0]["properties"]["by"]["type"], "integer");
    assert_eq!(bodies[0]["properties"]["by"]["maximum"], i32::MAX);
    assert_eq!(bodies[3]["properties"]["by"]["type"], "number");
    for status in ["200", "400", "404", "409"] {
        assert!(op["responses"][status].is_object(), "{status} in {op}");
    }
    // Not offered on a read-only entity, nor on a write-back one (405).
    assert!(doc["paths"]["/v1/frozen/{id}/incr"].is_null());
    assert!(doc["paths"]["/v1/queued/{id}/incr"].is_null());
}

/// A write-back `hash` entity counts increments in the cache and records
/// them durably: 202 `{"queued": true, "value": <new value>}`, the next
/// read holds the sum, a sum beyond the column's range is 409, a missing
/// row 404; the OpenAPI document lists the operation with its 202 for the
/// integer and numeric(p, s) columns; a numeric column counts exactly.
#[tokio::test]
async fn a_write_back_hash_entity_queues_increments_with_their_value() {
    let mut pg = Pg::connect().await;
    let t = unique("counters_hash");
    pg.exec(&t, TABLE).await;
    let toml = support::pg_config(
        &unique("counters"),
        &format!(
            "[[entity]]\nname = \"tallies\"\ntable = \"{t}\"\nwrite = \"back\"\n\
             representation = \"hash\"\n\
             [entity.write_back]\nrequire_durable = false\n"
        ),
    );
    let app = app(support::state(&toml).await);
    let a = incr(
        &app,
        "/v1/tallies/1/incr",
        json!({"column": "views", "by": 5}),
    )
    .await;
    assert_eq!(
        a.status.as_u16(),
        202,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        a.json(),
        json!({"queued": true, "durable": true, "value": 15})
    );
    let a = incr(
        &app,
        "/v1/tallies/1/incr",
        json!({"column": "likes", "by": 2}),
    )
    .await;
    assert_eq!(
        a.json(),
        json!({"queued": true, "durable": true, "value": 2}),
        "NULL counts as 0"
    );
    assert_eq!(get(&app, "/v1/tallies/1").await.json()["views"], 15);
    let a = incr(
        &app,
        "/v1/tallies/1/incr",
        json!({"column": "views", "by": i32::MAX}),
    )
    .await;
    assert_eq!(
        a.status.as_u16(),
        409,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let a = incr(
        &app,
        "/v1/tallies/2/incr",
        json!({"column": "views", "by": 1}),
    )
    .await;
    assert_eq!(a.status.as_u16(), 404);
    let doc = get(&app, "/v1/openapi.json").await.json();
    let op = &doc["paths"]["/v1/tallies/{id}/incr"]["post"];
    assert!(op["responses"]["202"].is_object(), "{op}");
    let columns: Vec<Value> = op["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|b| b["properties"]["column"]["const"].clone())
        .collect();
    assert_eq!(columns, [json!("views"), json!("likes"), json!("price")]);
    // A numeric(8, 2) column counts exactly in cents; a finer `by` is 400.
    let a = incr(
        &app,
        "/v1/tallies/1/incr",
        json!({"column": "price", "by": 0.01}),
    )
    .await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert_eq!(a.json()["value"].as_f64(), Some(1.51), "{}", a.text());
    let a = incr(
        &app,
        "/v1/tallies/1/incr",
        json!({"column": "price", "by": 0.001}),
    )
    .await;
    assert_eq!(a.status.as_u16(), 400, "{}", a.text());

    // A row deleted behind the cache's back: the increment is acknowledged
    // (the cache holds the row), its flush matches no row, and the deltas
    // are listed as a dead letter, never dropped.
    pg.exec(&t, "INSERT INTO {t} (id, name) VALUES (7, 'gone')")
        .await;
    assert_eq!(get(&app, "/v1/tallies/7").await.status.as_u16(), 200);
    pg.exec(&t, "DELETE FROM {t} WHERE id = 7").await;
    let a = incr(
        &app,
        "/v1/tallies/7/incr",
        json!({"column": "views", "by": 3}),
    )
    .await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    support::eventually("the increment is a dead letter", || async {
        let letters = get(&app, "/v1/_admin/tallies/dead-letters").await.json();
        letters["dead_letters"]
            .as_array()
            .is_some_and(|l| l.iter().any(|d| d["id"] == "7"))
    })
    .await;
    let letters = get(&app, "/v1/_admin/tallies/dead-letters").await.json();
    let letter = letters["dead_letters"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["id"] == "7"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            letter["deltas"].clone(),
            letter["delete"].clone(),
            letter["row"].clone()
        ),
        (json!({"views": "3"}), json!(false), Value::Null),
        "{letters}"
    );
}
