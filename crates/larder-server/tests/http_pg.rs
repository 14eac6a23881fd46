//! The HTTP API against real Redis and PostgreSQL, through the real router
//! (`app(state).oneshot`): every row of the route table and every error code.

mod support;

use larder_server::http::app;
use serde_json::json;
use support::{get, send, unique, write, Pg};

const USERS: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, email text UNIQUE, \
                     team int NOT NULL DEFAULT 0, score int CHECK (score >= 0)); \
                     INSERT INTO {t} (id, name, email, team) VALUES (1, 'ada', 'ada@x', 1), (2, 'bob', 'bob@x', 2), (3, 'cy', NULL, 1);";

/// A users table `t`, served as `users` (through), `users_around`
/// (around) and `users_view` (a view: read-only).
async fn users(body_limit: &str) -> (Pg, String, axum::Router, larder_server::serve::AppState) {
    let mut pg = Pg::connect().await;
    let t = unique("users");
    pg.exec(&t, USERS).await;
    let v = format!("{t}_v");
    pg.exec(&v, &format!("CREATE VIEW {{t}} AS SELECT * FROM {t}"))
        .await;
    let toml = support::pg_config(
        &unique("t"),
        &format!(
            "[[entity]]\nname = \"users\"\ntable = \"{t}\"\n\
             [[entity]]\nname = \"users_around\"\ntable = \"{t}\"\nwrite = \"around\"\n\
             [[entity]]\nname = \"users_view\"\ntable = \"{v}\"\n"
        ),
    );
    let toml = format!("body_limit = \"{body_limit}\"\n{toml}");
    let state = support::state(&toml).await;
    (pg, t, app(state.clone()), state)
}

#[tokio::test]
async fn get_one_reports_the_outcome_and_canonicalises_ids() {
    let (pg, t, app, _) = users("1MiB").await;
    let a = get(&app, "/v1/users/1").await;
    assert_eq!((a.status.as_u16(), a.x_cache()), (200, "miss"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(
        a.json(),
        json!({"id": 1, "name": "ada", "email": "ada@x", "team": 1, "score": null})
    );
    let a = get(&app, "/v1/users/001").await;
    assert_eq!((a.status.as_u16(), a.x_cache()), (200, "hit"), "007 is 7");
    let a = get(&app, "/v1/users/abc").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_id"));
    let a = get(&app, "/v1/users/99").await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str(), a.x_cache()),
        (404, "not_found", "miss")
    );
    let a = get(&app, "/v1/users/99").await;
    assert_eq!((a.status.as_u16(), a.x_cache()), (404, "negative"));
    let a = get(&app, "/v1/nobody/1").await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (404, "unknown_entity")
    );

    // A change made behind the cache's back: served from the cache until
    // a no-cache read refreshes the entry.
    sqlx::query(&format!("UPDATE {t} SET name = 'ada2' WHERE id = 1"))
        .execute(&pg.pool)
        .await
        .expect("update");
    assert_eq!(get(&app, "/v1/users/1").await.json()["name"], "ada");
    let a = send(
        &app,
        "GET",
        "/v1/users/1",
        &[("cache-control", "no-cache")],
        None,
    )
    .await;
    assert_eq!(
        (a.x_cache(), a.json()["name"].clone()),
        ("miss", json!("ada2"))
    );
    let a = get(&app, "/v1/users/1").await;
    assert_eq!(
        (a.x_cache(), a.json()["name"].clone()),
        ("hit", json!("ada2"))
    );
}

#[tokio::test]
async fn get_many_decodes_dedupes_and_loads_misses_in_one_query() {
    let (_pg, _t, app, state) = users("1MiB").await;
    let cache = &state.entity("users").expect("users").cache;
    let loads = cache.stats().loads;
    let a = get(&app, "/v1/users?ids=1,2,99,01,2").await;
    assert_eq!(
        a.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        a.json(),
        json!({"items": {
            "1": {"id": 1, "name": "ada", "email": "ada@x", "team": 1, "score": null},
            "2": {"id": 2, "name": "bob", "email": "bob@x", "team": 2, "score": null}},
            "missing": ["99"]})
    );
    assert_eq!(
        cache.stats().loads - loads,
        1,
        "one database query for all the misses"
    );
    // An integer id holds no comma: %2C separates ids as `,` does.
    let a = get(&app, "/v1/users?ids=1%2C2").await;
    assert_eq!(
        a.json()["items"].as_object().map(|o| o.len()),
        Some(2),
        "%2C separates integer ids"
    );
    let a = get(&app, "/v1/users?ids=%31,3").await;
    assert_eq!(
        a.json()["items"].as_object().map(|o| o.len()),
        Some(2),
        "%31 is 1"
    );
    let many: Vec<String> = (1..=1001).map(|i| i.to_string()).collect();
    let a = get(&app, &format!("/v1/users?ids={}", many.join(","))).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_request"));
    let a = get(
        &app,
        &format!("/v1/users?ids={},1,1", many[..1000].join(",")),
    )
    .await;
    assert_eq!(
        a.status.as_u16(),
        200,
        "1000 distinct ids (duplicates collapse)"
    );
    for path in ["/v1/users", "/v1/users?ids=", "/v1/users?idz=1"] {
        let a = get(&app, path).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (400, "bad_request"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn put_patch_delete_write_through() {
    let (pg, t, app, _) = users("1MiB").await;
    // PUT creates: absent columns take their default or NULL.
    let a = write(&app, "PUT", "/v1/users/10", r#"{"name": "dee"}"#).await;
    assert_eq!(
        a.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        a.json(),
        json!({"id": 10, "name": "dee", "email": null, "team": 0, "score": null})
    );
    let a = get(&app, "/v1/users/10").await;
    assert_eq!(
        (a.x_cache(), a.json()["name"].clone()),
        ("hit", json!("dee")),
        "the stored row is cached"
    );
    // PUT writes the given columns: the body may carry the key (equal to the path's id).
    let a = write(
        &app,
        "PUT",
        "/v1/users/0010",
        r#"{"id": "10", "name": "dee2", "email": "d@x", "team": 4}"#,
    )
    .await;
    assert_eq!(
        a.json(),
        json!({"id": 10, "name": "dee2", "email": "d@x", "team": 4, "score": null})
    );
    let a = write(&app, "PUT", "/v1/users/10", r#"{"name": "dee3"}"#).await;
    assert_eq!(
        (a.json()["email"].clone(), a.json()["team"].clone()),
        (json!("d@x"), json!(4)),
        "absent columns keep their stored value, with or without a default"
    );
    // PATCH merges; null sets NULL; an absent row is 404.
    let a = write(
        &app,
        "PATCH",
        "/v1/users/10",
        r#"{"email": "p@x", "score": 5}"#,
    )
    .await;
    assert_eq!(
        a.json(),
        json!({"id": 10, "name": "dee3", "email": "p@x", "team": 4, "score": 5})
    );
    let a = write(&app, "PATCH", "/v1/users/10", r#"{"score": null}"#).await;
    assert_eq!(a.json()["score"], json!(null));
    assert_eq!(get(&app, "/v1/users/10").await.json()["email"], "p@x");
    let a = write(&app, "PATCH", "/v1/users/11", r#"{"name": "x"}"#).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));
    assert_eq!(
        pg.scalar_text(&format!("SELECT name FROM {t} WHERE id = 11"))
            .await,
        None
    );
    // DELETE: 204, then 404; the cache forgets the row.
    let a = send(&app, "DELETE", "/v1/users/10", &[], None).await;
    assert_eq!((a.status.as_u16(), a.body.len()), (204, 0));
    let a = send(&app, "DELETE", "/v1/users/10", &[], None).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));
    assert_eq!(get(&app, "/v1/users/10").await.status.as_u16(), 404);
    // Invalidate: the next read is a miss.
    get(&app, "/v1/users/2").await;
    let a = send(&app, "POST", "/v1/users/2/invalidate", &[], None).await;
    assert_eq!(a.status.as_u16(), 204);
    assert_eq!(get(&app, "/v1/users/2").await.x_cache(), "miss");
}

#[tokio::test]
async fn write_around_invalidates_and_read_only_refuses() {
    let (_pg, _t, app, _) = users("1MiB").await;
    get(&app, "/v1/users_around/1").await;
    let a = write(
        &app,
        "PUT",
        "/v1/users_around/1",
        r#"{"name": "ada-around", "team": 1}"#,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json()["name"].clone()),
        (200, json!("ada-around"))
    );
    let a = get(&app, "/v1/users_around/1").await;
    assert_eq!(
        (a.x_cache(), a.json()["name"].clone()),
        ("miss", json!("ada-around"))
    );
    // A view is read-only: reads work, writes are 405 with the JSON shape.
    assert_eq!(get(&app, "/v1/users_view/2").await.json()["name"], "bob");
    for method in ["PUT", "PATCH", "DELETE"] {
        let a = write(&app, method, "/v1/users_view/2", r#"{"name": "no"}"#).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (405, "method_not_allowed"),
            "{method}"
        );
    }
    // A method the route does not have: 405, JSON, with Allow.
    let a = send(&app, "POST", "/v1/users/1", &[], None).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (405, "method_not_allowed")
    );
    assert!(a.header("allow").is_some_and(|h| h.contains("GET")));
    let a = get(&app, "/v2/nothing").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_written() {
    let (pg, t, app, _) = users("256B").await;
    let before = pg
        .scalar_text(&format!("SELECT json_agg(u ORDER BY id)::text FROM {t} u"))
        .await;
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "PUT",
            "/v1/users/1",
            r#"{"name": "x", "colour": "red"}"#,
            400,
            "unknown_column",
        ),
        ("PUT", "/v1/users/1", r#"{"name": 5}"#, 400, "type_mismatch"),
        (
            "PUT",
            "/v1/users/1",
            r#"{"name": null}"#,
            400,
            "type_mismatch",
        ),
        (
            "PUT",
            "/v1/users/1",
            r#"{"email": "e@x"}"#,
            400,
            "missing_column",
        ),
        (
            "PUT",
            "/v1/users/1",
            r#"{"id": 2, "name": "x"}"#,
            400,
            "bad_request",
        ),
        ("PUT", "/v1/users/1", r#"{"name": "x""#, 400, "bad_request"),
        ("PUT", "/v1/users/1", r#"["name"]"#, 400, "bad_request"),
        ("PUT", "/v1/users/x1", r#"{"name": "x"}"#, 400, "bad_id"),
        ("PATCH", "/v1/users/1", r#"{}"#, 400, "bad_request"),
        (
            "PATCH",
            "/v1/users/1",
            r#"{"team": "four"}"#,
            400,
            "type_mismatch",
        ),
        (
            "PATCH",
            "/v1/users/1",
            r#"{"nope": 1}"#,
            400,
            "unknown_column",
        ),
        (
            "PUT",
            "/v1/nobody/1",
            r#"{"name": "x"}"#,
            404,
            "unknown_entity",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let a = write(&app, method, path, body).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (*status, *code),
            "{method} {path} {body}"
        );
    }
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(300));
    let a = write(&app, "PUT", "/v1/users/1", &big).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (413, "payload_too_large")
    );
    let a = send(
        &app,
        "PUT",
        "/v1/users/1",
        &[("content-type", "text/plain")],
        Some(r#"{"name": "x"}"#),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (415, "unsupported_media_type")
    );
    // No content type at all is taken as JSON.
    let a = send(&app, "PATCH", "/v1/users/3", &[], Some(r#"{"team": 3}"#)).await;
    assert_eq!(a.status.as_u16(), 200);
    send(&app, "PATCH", "/v1/users/3", &[], Some(r#"{"team": 1}"#)).await;
    let after = pg
        .scalar_text(&format!("SELECT json_agg(u ORDER BY id)::text FROM {t} u"))
        .await;
    assert_eq!(before, after, "refused writes changed nothing");
    assert_eq!(get(&app, "/v1/users/1").await.json()["name"], "ada");
}

#[tokio::test]
async fn constraint_violations_are_conflicts() {
    let (mut pg, t, app, _) = users("1MiB").await;
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
    assert!(
        !a.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&t),
        "no SQL details"
    );
    let child = format!("{t}_c");
    pg.exec(
        &child,
        &format!(
            "CREATE TABLE {{t}} (id int PRIMARY KEY, user_id bigint NOT NULL REFERENCES {t}(id))"
        ),
    )
    .await;
    let toml = support::pg_config(
        &unique("t"),
        &format!("[[entity]]\nname = \"c\"\ntable = \"{child}\"\n"),
    );
    let app2 = app_of(&toml).await;
    let a = write(&app2, "PUT", "/v1/c/1", r#"{"user_id": 999}"#).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (409, "conflict"),
        "foreign key"
    );
    let a = write(&app2, "PUT", "/v1/c/1", r#"{"user_id": 1}"#).await;
    assert_eq!(a.status.as_u16(), 200);
    drop(app);
}

async fn app_of(toml: &str) -> axum::Router {
    app(support::state(toml).await)
}

#[tokio::test]
async fn a_query_entity_is_read_only_and_served_like_a_table() {
    let mut pg = Pg::connect().await;
    let t = unique("q");
    pg.exec(&t, USERS).await;
    let toml = support::pg_config(
        &unique("t"),
        &format!(
            "[[entity]]\nname = \"team1\"\nquery = \"SELECT id, name, upper(name) AS loud FROM {t} WHERE team = 1\"\n"
        ),
    );
    let app = app_of(&toml).await;
    let a = get(&app, "/v1/team1/01").await;
    assert_eq!((a.status.as_u16(), a.x_cache()), (200, "miss"));
    assert_eq!(a.json(), json!({"id": 1, "name": "ada", "loud": "ADA"}));
    assert_eq!(get(&app, "/v1/team1/1").await.x_cache(), "hit");
    assert_eq!(
        get(&app, "/v1/team1/2").await.status.as_u16(),
        404,
        "not in the query"
    );
    assert_eq!(get(&app, "/v1/team1/x").await.code(), "bad_id");
    let a = get(&app, "/v1/team1?ids=1,2,3").await;
    assert_eq!(a.json()["missing"], json!(["2"]));
    assert_eq!(a.json()["items"]["3"]["loud"], "CY");
    let a = write(&app, "PUT", "/v1/team1/1", r#"{"name": "x"}"#).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (405, "method_not_allowed")
    );
    let a = send(&app, "POST", "/v1/_admin/team1/warm", &[], None).await;
    assert_eq!(
        (a.status.as_u16(), a.json()["warmed"].as_u64().is_some()),
        (200, true)
    );
}

#[tokio::test]
async fn auth_guards_everything_but_the_public_routes() {
    let (_pg, t, _, _) = users("1MiB").await;
    let var = unique("LARDER_TEST_TOKEN").to_uppercase();
    std::env::set_var(&var, "s3cret");
    let toml = support::pg_config(
        &unique("t"),
        &format!("[auth]\ntoken_env = \"{var}\"\n[[entity]]\nname = \"users\"\ntable = \"{t}\"\n"),
    );
    let app = app_of(&toml).await;
    for path in ["/health", "/ready", "/v1/openapi.json"] {
        let a = get(&app, path).await;
        assert_eq!(a.status.as_u16(), 200, "{path} is public");
    }
    let guarded: &[(&str, &str)] = &[
        ("GET", "/v1/users/1"),
        ("GET", "/v1/users?ids=1,2"),
        ("GET", "/v1/stats"),
        ("GET", "/metrics"),
        ("PUT", "/v1/users/1"),
        ("PATCH", "/v1/users/1"),
        ("DELETE", "/v1/users/1"),
        ("POST", "/v1/users/1/invalidate"),
        ("POST", "/v1/tags/x/invalidate"),
        ("POST", "/v1/_admin/users/purge"),
        ("POST", "/v1/_admin/users/warm"),
        ("GET", "/v1/_admin/users/dead-letters"),
        ("POST", "/v1/_admin/users/dead-letters/retry"),
    ];
    for (method, path) in guarded {
        for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
            let a = send(&app, method, path, &headers, Some("{}")).await;
            assert_eq!(
                (a.status.as_u16(), a.code().as_str()),
                (401, "unauthorized"),
                "{method} {path} {auth:?}"
            );
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
        }
    }
    let ok = [("authorization", "Bearer s3cret")];
    assert_eq!(
        send(&app, "GET", "/v1/stats", &ok, None)
            .await
            .status
            .as_u16(),
        200
    );
    let a = send(
        &app,
        "PATCH",
        "/v1/users/1",
        &[ok[0], ("content-type", "application/json")],
        Some(r#"{"team": 7}"#),
    )
    .await;
    assert_eq!(a.json()["team"], 7);
    // Without a token, a non-loopback address is refused unless allow_open.
    let mut config = larder_server::config::Config::parse(&toml, "test.toml").expect("parse");
    config.listen = "0.0.0.0:7070".into();
    let e = larder_server::serve::check_listen(&config, false).expect_err("refused");
    assert_eq!(e.key, "auth.token_env");
    assert!(larder_server::serve::check_listen(&config, true).is_ok());
    config.auth.allow_open = true;
    assert!(larder_server::serve::check_listen(&config, false).is_ok());
    std::env::remove_var(&var);
}

#[tokio::test]
async fn two_services_sharing_redis_and_the_database_stay_coherent() {
    let mut pg = Pg::connect().await;
    let t = unique("two");
    pg.exec(&t, USERS).await;
    let toml = support::pg_config(
        &unique("t"),
        &format!("[[entity]]\nname = \"users\"\ntable = \"{t}\"\n"),
    );
    let (a, b) = (app_of(&toml).await, app_of(&toml).await);
    assert_eq!(get(&b, "/v1/users/1").await.json()["name"], "ada");
    assert_eq!(
        get(&a, "/v1/users/1").await.x_cache(),
        "hit",
        "one shared cache"
    );
    for round in 0..5 {
        let name = format!("ada-{round}");
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let w = write(
            writer,
            "PATCH",
            "/v1/users/1",
            &format!(r#"{{"name": "{name}"}}"#),
        )
        .await;
        assert_eq!(w.status.as_u16(), 200);
        let r = get(reader, "/v1/users/1").await;
        assert_eq!(
            (r.x_cache(), r.json()["name"].clone()),
            ("hit", json!(name)),
            "round {round}"
        );
    }
    send(&a, "DELETE", "/v1/users/1", &[], None).await;
    assert_eq!(get(&b, "/v1/users/1").await.status.as_u16(), 404);
    get(&b, "/v1/users/2").await;
    sqlx::query(&format!("UPDATE {t} SET name = 'bob2' WHERE id = 2"))
        .execute(&pg.pool)
        .await
        .expect("update");
    send(&a, "POST", "/v1/users/2/invalidate", &[], None).await;
    assert_eq!(get(&b, "/v1/users/2").await.json()["name"], "bob2");
}

#[tokio::test]
async fn health_ready_stats_metrics_openapi_and_admin() {
    let (_pg, _t, app, _) = users("1MiB").await;
    assert_eq!(get(&app, "/health").await.json(), json!({"status": "ok"}));
    let r = get(&app, "/ready").await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.json()["ready"].clone(),
            r.json()["degraded"].clone()
        ),
        (200, json!(true), json!(false))
    );
    get(&app, "/v1/users/1").await;
    get(&app, "/v1/users/1").await;
    get(&app, "/v1/users/77").await;
    let s = get(&app, "/v1/stats").await.json();
    let u = &s["entities"]["users"];
    assert_eq!(
        (
            u["reads"]["miss"].clone(),
            u["reads"]["hit"].clone(),
            u["reads_total"].clone()
        ),
        (json!(2), json!(1), json!(3))
    );
    assert!(
        (u["hit_ratio"].as_f64().unwrap_or(0.0) - 1.0 / 3.0).abs() < 1e-9,
        "{u}"
    );
    assert_eq!(u["loads"], 2);
    assert!(
        s["redis"]["used_memory"].as_u64().is_some_and(|m| m > 0),
        "{s}"
    );
    assert!(
        s["redis"]["maxmemory_policy"].is_string() && s["redis"]["evicted_keys"].is_u64(),
        "{s}"
    );
    let m = get(&app, "/metrics").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(m
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    // The metrics recorder is global to the process, and other tests of
    // this binary read `users` too: exact counts are in tests/metrics.rs.
    for line in [
        "larder_reads_total{entity=\"users\",outcome=\"hit\"} ",
        "larder_reads_total{entity=\"users\",outcome=\"miss\"} ",
        "larder_loads_total{entity=\"users\"} ",
        "# TYPE larder_hit_ratio gauge",
        "larder_redis_used_memory_bytes ",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    let doc = get(&app, "/v1/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path) in larder_server::http::ROUTES {
        // `users` is write-through: it has no dead letters.
        if path.contains("dead-letters") {
            continue;
        }
        // Routes of sets and feeds (documented per set or feed: sets_http.rs).
        if path.contains("/members/")
            || path.contains("/items/")
            || (*method == "POST" && *path == "/v1/{entity}/{id}")
        {
            continue;
        }
        let path = path.replace("{entity}", "users");
        assert!(
            doc["paths"][&path][method.to_ascii_lowercase()].is_object(),
            "{method} {path}"
        );
    }
    let a = send(&app, "POST", "/v1/_admin/users/warm", &[], None).await;
    assert_eq!(
        a.json()["warmed"].as_u64().map(|n| n >= 1),
        Some(true),
        "{:?}",
        a.json()
    );
    let before = get(&app, "/v1/users/1").await;
    assert_eq!(before.header("x-cache"), Some("hit"));
    let a = send(&app, "POST", "/v1/_admin/users/purge", &[], None).await;
    assert_eq!(a.status.as_u16(), 204);
    let after = get(&app, "/v1/users/1").await;
    assert_eq!(after.header("x-cache"), Some("miss"), "purged");
    let a = send(&app, "POST", "/v1/_admin/nobody/purge", &[], None).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (404, "unknown_entity")
    );
    let a = send(&app, "POST", "/v1/tags/team:1/invalidate", &[], None).await;
    assert_eq!(a.status.as_u16(), 204);
    for (method, path) in [
        ("GET", "/v1/_admin/users/dead-letters"),
        ("POST", "/v1/_admin/users/dead-letters/retry"),
    ] {
        let a = send(&app, method, path, &[], None).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (404, "not_found"),
            "{path}: not write-back"
        );
    }
}

/// A `citext` key over HTTP: every spelling PostgreSQL calls equal reads
/// the one row (and the one cache entry), and a PUT under another spelling
/// updates that row rather than failing or creating a second one.
#[tokio::test]
async fn a_citext_key_reads_and_writes_the_row_under_every_spelling() {
    let mut pg = Pg::connect().await;
    // Several tests may create the extension at once: one of them wins.
    for _ in 0..5 {
        if sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS citext")
            .execute(&pg.pool)
            .await
            .is_ok()
        {
            break;
        }
    }
    let t = unique("ci");
    pg.exec(
        &t,
        "CREATE TABLE {t} (id citext PRIMARY KEY, name text NOT NULL); \
         INSERT INTO {t} VALUES ('alice', 'Alice Liddell');",
    )
    .await;
    let toml = support::pg_config(
        &unique("ci"),
        &format!("[[entity]]\nname = \"ci\"\ntable = \"{t}\"\n"),
    );
    let app = app_of(&toml).await;
    let a = get(&app, "/v1/ci/Alice").await;
    assert_eq!((a.status.as_u16(), a.x_cache()), (200, "miss"));
    assert_eq!(a.json()["name"], "Alice Liddell");
    let a = get(&app, "/v1/ci/ALICE").await;
    assert_eq!(
        (a.status.as_u16(), a.x_cache()),
        (200, "hit"),
        "one entry for every spelling"
    );
    let a = write(&app, "PUT", "/v1/ci/aLiCe", r#"{"name": "Alice L."}"#).await;
    assert_eq!(
        a.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["name"], "Alice L.");
    let rows = pg
        .scalar_text(&format!("SELECT count(*)::text FROM {t}"))
        .await;
    assert_eq!(rows.as_deref(), Some("1"), "no second row");
    let a = get(&app, "/v1/ci/alice").await;
    assert_eq!(a.json()["name"], "Alice L.");
}
