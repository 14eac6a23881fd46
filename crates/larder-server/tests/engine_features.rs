//! The engine's features through the service: write-back entities (202,
//! pending values served, flushed, dead letters), a store killed mid-test,
//! tags from templates, near caches on two instances, and change
//! notifications — against real Redis servers, PostgreSQL and the router.

mod support;

use support::eventually;

use larder_server::http::app;
use serde_json::json;
use support::RedisServer;
use support::{get, send, unique, write, Pg};

const USERS: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, \
                     team int NOT NULL DEFAULT 0, score int CHECK (score >= 0)); \
                     INSERT INTO {t} (id, name, team) VALUES (1, 'ada', 1), (2, 'bob', 2), (3, 'cy', 1);";

/// A config over `store` with `entities` appended.
fn config(store: &str, entities: &str) -> String {
    format!(
        "[store]\nurl = \"{store}?connect_timeout=300ms&response_timeout=300ms\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 3\n{entities}",
        unique("ef"),
        support::pg_url()
    )
}

async fn name_in_db(pg: &Pg, t: &str, id: i64) -> Option<String> {
    pg.scalar_text(&format!("SELECT name FROM {t} WHERE id = {id}"))
        .await
}

#[tokio::test]
async fn a_write_back_entity_queues_serves_pending_values_and_flushes() {
    write_back_entity("string").await;
}

/// The same with `representation = "hash"`: a PATCH sets just its fields.
#[tokio::test]
async fn a_write_back_hash_entity_queues_serves_pending_values_and_flushes() {
    write_back_entity("hash").await;
}

async fn write_back_entity(representation: &str) {
    let mut pg = Pg::connect().await;
    let t = unique("wbu");
    pg.exec(&t, USERS).await;
    let redis = RedisServer::durable();
    let toml = config(
        &redis.url(),
        &format!("[[entity]]\nname = \"users\"\ntable = \"{t}\"\nrepresentation = \"{representation}\"\nwrite = \"back\"\n[entity.write_back]\nmax_delay = \"20ms\"\n"),
    );
    let app = app(support::state(&toml).await);

    let a = write(&app, "PUT", "/v1/users/7", r#"{"name": "gus", "team": 3}"#).await;
    assert_eq!(
        (a.status.as_u16(), a.json()),
        (202, json!({"queued": true, "durable": true, "id": "7"}))
    );
    let a = get(&app, "/v1/users/7").await;
    assert_eq!(
        (a.status.as_u16(), a.json()["name"].clone()),
        (200, json!("gus"))
    );
    eventually("the put reaches the database", || async {
        name_in_db(&pg, &t, 7).await.as_deref() == Some("gus")
    })
    .await;

    let a = write(&app, "PATCH", "/v1/users/1", r#"{"name": "ada2"}"#).await;
    assert_eq!(a.status.as_u16(), 202);
    assert_eq!(get(&app, "/v1/users/1").await.json()["name"], "ada2");
    let a = write(&app, "PATCH", "/v1/users/99", r#"{"name": "nobody"}"#).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));
    let a = send(&app, "DELETE", "/v1/users/2", &[], None).await;
    assert_eq!(a.status.as_u16(), 202);
    assert_eq!(
        get(&app, "/v1/users/2").await.status.as_u16(),
        404,
        "a pending delete is served at once"
    );
    let a = send(&app, "DELETE", "/v1/users/2", &[], None).await;
    assert_eq!(a.status.as_u16(), 404, "already deleted (pending)");
    let a = get(&app, "/v1/users/1").await;
    assert_eq!(a.json()["name"], "ada2");
    let no_cache = send(
        &app,
        "GET",
        "/v1/users/1",
        &[("cache-control", "no-cache")],
        None,
    )
    .await;
    assert_eq!(
        no_cache.json()["name"],
        "ada2",
        "no-cache answers the pending value"
    );
    eventually("the patch and the delete reach the database", || async {
        name_in_db(&pg, &t, 1).await.as_deref() == Some("ada2")
            && name_in_db(&pg, &t, 2).await.is_none()
    })
    .await;

    // The database refuses a row (CHECK): it goes to the dead letters.
    let a = write(
        &app,
        "PUT",
        "/v1/users/8",
        r#"{"name": "bad", "score": -1}"#,
    )
    .await;
    assert_eq!(a.status.as_u16(), 202);
    eventually("the refused row is a dead letter", || async {
        let letters = get(&app, "/v1/_admin/users/dead-letters").await.json();
        letters["dead_letters"]
            .as_array()
            .is_some_and(|l| l.len() == 1)
    })
    .await;
    let letters = get(&app, "/v1/_admin/users/dead-letters").await.json();
    assert_eq!(letters["dead_letters"][0]["id"], "8");
    assert_eq!(letters["dead_letters"][0]["row"]["score"], -1);
    assert!(
        letters["dead_letters"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("check")),
        "{letters}"
    );
    assert_eq!(
        get(&app, "/v1/users/8").await.status.as_u16(),
        404,
        "no longer served"
    );
    let stats = get(&app, "/v1/stats").await.json();
    assert_eq!(
        stats["entities"]["users"]["write_back"]["dead_letters"], 1,
        "{stats}"
    );
    let a = send(
        &app,
        "POST",
        "/v1/_admin/users/dead-letters/retry",
        &[],
        None,
    )
    .await;
    assert_eq!(a.json(), json!({"retried": 1}));
}

#[tokio::test]
async fn a_killed_store_leaves_reads_on_the_database_and_write_back_answers_503() {
    let mut pg = Pg::connect().await;
    let t = unique("kill");
    pg.exec(&t, USERS).await;
    let mut redis = RedisServer::durable();
    let toml = config(
        &redis.url(),
        &format!("[[entity]]\nname = \"users\"\ntable = \"{t}\"\n[[entity]]\nname = \"queued\"\ntable = \"{t}\"\nwrite = \"back\"\n"),
    );
    let app = app(support::state(&toml).await);
    assert_eq!(get(&app, "/v1/users/1").await.x_cache(), "miss");
    assert_eq!(
        write(&app, "PUT", "/v1/queued/5", r#"{"name": "eve"}"#)
            .await
            .status
            .as_u16(),
        202
    );
    redis.kill();
    let a = get(&app, "/v1/users/1").await;
    assert_eq!((a.status.as_u16(), a.x_cache()), (200, "bypass"));
    assert_eq!(a.json()["name"], "ada");
    let a = get(&app, "/v1/queued/5").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (503, "unavailable"));
    let a = write(&app, "PUT", "/v1/queued/6", r#"{"name": "fay"}"#).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (503, "unavailable"));
    let ready = get(&app, "/ready").await.json();
    assert_eq!(
        (ready["ready"].clone(), ready["degraded"].clone()),
        (json!(true), json!(true))
    );
    // Back on its AOF: the acknowledged write is still there.
    redis.restart();
    eventually("the write-back entity answers again", || async {
        let a = get(&app, "/v1/queued/5").await;
        a.status.as_u16() == 200 && a.json()["name"] == "eve"
    })
    .await;
}

#[tokio::test]
async fn tags_from_a_template_are_invalidated_by_tag() {
    let mut pg = Pg::connect().await;
    let t = unique("tags");
    pg.exec(&t, USERS).await;
    let toml = config(
        &support::redis_url(),
        &format!("[[entity]]\nname = \"users\"\ntable = \"{t}\"\ntags = [\"team:{{team}}\"]\n"),
    );
    let app = app(support::state(&toml).await);
    for id in 1..=3 {
        get(&app, &format!("/v1/users/{id}")).await;
        assert_eq!(get(&app, &format!("/v1/users/{id}")).await.x_cache(), "hit");
    }
    let a = send(&app, "POST", "/v1/tags/team:1/invalidate", &[], None).await;
    assert_eq!(a.status.as_u16(), 204);
    assert_eq!(get(&app, "/v1/users/1").await.x_cache(), "miss", "team 1");
    assert_eq!(get(&app, "/v1/users/3").await.x_cache(), "miss", "team 1");
    assert_eq!(
        get(&app, "/v1/users/2").await.x_cache(),
        "hit",
        "team 2 untouched"
    );
}

#[tokio::test]
async fn two_instances_with_near_caches_stay_coherent() {
    let mut pg = Pg::connect().await;
    let t = unique("near");
    pg.exec(&t, USERS).await;
    let toml = config(
        &support::redis_url(),
        &format!("[near]\ncapacity = 100\nttl = \"60s\"\n[[entity]]\nname = \"users\"\ntable = \"{t}\"\n"),
    );
    let a = app(support::state(&toml).await);
    let b = app(support::state(&toml).await);
    get(&b, "/v1/users/1").await;
    get(&b, "/v1/users/1").await;
    assert_eq!(get(&b, "/v1/users/1").await.x_cache(), "l1");
    for round in 0..5 {
        let name = format!("ada-{round}");
        let w = write(
            &a,
            "PUT",
            "/v1/users/1",
            &format!(r#"{{"name": "{name}", "team": 1}}"#),
        )
        .await;
        assert_eq!(w.status.as_u16(), 200);
        eventually("B serves A's write", || async {
            get(&b, "/v1/users/1").await.json()["name"] == name.as_str()
        })
        .await;
    }
}

#[tokio::test]
async fn a_row_committed_directly_in_postgres_is_served_fresh_on_a_cdc_entity() {
    let mut pg = Pg::connect().await;
    let t = unique("cdc");
    pg.exec(&t, USERS).await;
    let toml = config(
        &support::redis_url(),
        &format!(
            "[near]\n[[entity]]\nname = \"users\"\ntable = \"{t}\"\ncdc = true\nttl = \"10m\"\n"
        ),
    );
    let app = app(support::state(&toml).await);
    get(&app, "/v1/users/1").await;
    assert_ne!(get(&app, "/v1/users/1").await.x_cache(), "miss");
    sqlx::query(&format!("UPDATE {t} SET name = 'changed' WHERE id = 1"))
        .execute(&pg.pool)
        .await
        .expect("update");
    eventually("the change is served", || async {
        get(&app, "/v1/users/1").await.json()["name"] == "changed"
    })
    .await;
    sqlx::query(&format!("DELETE FROM {t} WHERE id = 3"))
        .execute(&pg.pool)
        .await
        .expect("delete");
    eventually("the delete is served", || async {
        get(&app, "/v1/users/3").await.status.as_u16() == 404
    })
    .await;
}

/// A write-back PATCH of one column keeps the others as the database has
/// them: PostgreSQL writes a `jsonb` holding `f64::MAX` as 309 digits,
/// which serde_json's fast float parser read as out of range (a 500, found
/// by schemathesis); an integer past 2^53 and a `numeric` stay exact.
#[tokio::test]
async fn a_write_back_patch_keeps_the_numbers_of_the_row_it_loaded() {
    let mut pg = Pg::connect().await;
    let t = unique("wbn");
    let price = "12345678.1234";
    pg.exec(
        &t,
        &format!(
            "CREATE TABLE {{t}} (id text PRIMARY KEY, kind text NOT NULL, payload jsonb, price numeric(40, 10)); \
             INSERT INTO {{t}} VALUES ('🏻ôt', 'a', '{{\"max\": 1.7976931348623157e308, \"big\": 12345678901234567891}}', {price})"
        ),
    )
    .await;
    let payload_sql = format!("SELECT payload::text FROM {t}");
    let before = pg.scalar_text(&payload_sql).await.expect("payload");
    assert!(
        before.len() > 300,
        "PostgreSQL writes every digit: {before}"
    );
    let redis = RedisServer::durable();
    let toml = config(
        &redis.url(),
        &format!("[[entity]]\nname = \"events\"\ntable = \"{t}\"\nwrite = \"back\"\n[entity.write_back]\nmax_delay = \"20ms\"\n"),
    );
    let app = app(support::state(&toml).await);
    let path = "/v1/events/%F0%9F%8F%BB%C3%B4t";
    let a = write(&app, "PATCH", path, r#"{"kind": "b"}"#).await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    let text = get(&app, path).await.text();
    for kept in ["12345678901234567891", price, r#""kind":"b""#] {
        assert!(text.contains(kept), "{kept} in {text}");
    }
    eventually("the patch reaches the database", || async {
        pg.scalar_text(&format!("SELECT kind FROM {t}"))
            .await
            .as_deref()
            == Some("b")
    })
    .await;
    assert_eq!(
        pg.scalar_text(&payload_sql).await.expect("payload"),
        before,
        "the payload is untouched"
    );
    assert_eq!(
        pg.scalar_text(&format!("SELECT price::text FROM {t}"))
            .await,
        Some(format!("{price}000000"))
    );
}
