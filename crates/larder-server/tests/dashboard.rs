//! The dashboard's routes: `/` and `/ui` serve the embedded page to anyone,
//! and `/v1/stats` carries every figure the page draws. (The page in a
//! real browser is scripts/dashboard.sh.)

mod support;

use larder_server::http::app;
use support::{get, send, unique, Pg};

const TABLE: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL); \
                     INSERT INTO {t} SELECT i, 'user ' || i FROM generate_series(1, 20) i;";

async fn service(auth: &str) -> (Pg, axum::Router) {
    let mut pg = Pg::connect().await;
    let users = unique("dash_users");
    let queue = unique("dash_queue");
    pg.exec(&users, TABLE).await;
    pg.exec(&queue, TABLE).await;
    let toml = support::pg_config(
        &unique("dash"),
        &format!(
            "{auth}[near]\ncapacity = 100\n\
             [[entity]]\nname = \"users\"\ntable = \"{users}\"\n\
             [[entity]]\nname = \"queue\"\ntable = \"{queue}\"\nwrite = \"back\"\nnear = false\n\
             [entity.write_back]\nrequire_durable = false\n"
        ),
    );
    (pg, app(support::state(&toml).await))
}

#[tokio::test]
async fn the_page_is_served_at_root_and_ui_without_a_token() {
    let var = unique("LARDER_TEST_DASH_TOKEN").to_uppercase();
    std::env::set_var(&var, "dash-secret");
    let (_pg, app) = service(&format!("[auth]\ntoken_env = \"{var}\"\n")).await;
    std::env::remove_var(&var);
    for path in ["/", "/ui"] {
        let a = get(&app, path).await;
        assert_eq!(a.status.as_u16(), 200, "{path}");
        assert!(
            a.header("content-type")
                .is_some_and(|c| c.starts_with("text/html")),
            "{path}: {:?}",
            a.header("content-type")
        );
        assert!(a
            .header("content-security-policy")
            .is_some_and(|c| c.contains("connect-src 'self'")));
        let html = String::from_utf8_lossy(&a.body);
        assert!(html.contains("<title>larder</title>"), "{path}");
        // The page knows it must ask for the token before fetching.
        assert!(
            html.contains(r#"<meta name="larder-auth" content="token">"#),
            "{path}"
        );
        // HEAD is a read too.
        assert_eq!(
            send(&app, "HEAD", path, &[], None).await.status.as_u16(),
            200
        );
    }
    // Its data is not public.
    assert_eq!(get(&app, "/v1/stats").await.status.as_u16(), 401);
    let a = send(
        &app,
        "GET",
        "/v1/stats",
        &[("authorization", "Bearer dash-secret")],
        None,
    )
    .await;
    assert_eq!(a.status.as_u16(), 200);
    // A method the page does not have is refused in the JSON shape.
    let a = send(&app, "POST", "/", &[], None).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (405, "method_not_allowed")
    );
}

#[tokio::test]
async fn stats_carry_every_figure_the_page_draws() {
    let (_pg, app) = service("").await;
    let html = String::from_utf8_lossy(&get(&app, "/").await.body).into_owned();
    assert!(html.contains(r#"<meta name="larder-auth" content="none">"#));
    for _ in 0..3 {
        for id in 1..=5 {
            assert_eq!(
                get(&app, &format!("/v1/users/{id}")).await.status.as_u16(),
                200
            );
        }
    }
    let stats = get(&app, "/v1/stats").await.json();
    let users = &stats["entities"]["users"];
    assert_eq!(users["write"], "through");
    assert_eq!(users["reads_total"], 15);
    assert_eq!(users["reads"]["miss"], 5);
    assert_eq!(users["loads"], 5);
    for field in ["cache_ms_p50", "cache_ms_p99", "load_ms_p50", "load_ms_p99"] {
        assert!(
            users[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {users}"
        );
    }
    assert!(users["cache_ms_p50"].as_f64() <= users["cache_ms_p99"].as_f64());
    for field in ["lease_waits", "refreshes", "l1_entries", "l1_evictions"] {
        assert!(users[field].is_u64(), "{field}: {users}");
    }
    assert!(users["write_back"].is_null());
    let queue = &stats["entities"]["queue"];
    assert_eq!(queue["write"], "back");
    for field in ["backlog", "lag_ms", "dead_letters"] {
        assert!(queue["write_back"].get(field).is_some(), "{field}: {queue}");
    }
    let redis = &stats["redis"];
    for field in ["used_memory", "maxmemory", "evicted_keys"] {
        assert!(redis[field].is_u64(), "{field}: {redis}");
    }
    assert!(redis["maxmemory_policy"].is_string(), "{redis}");
    // The document describes what the page reads.
    let doc = get(&app, "/v1/openapi.json").await.json();
    let entity = &doc["components"]["schemas"]["Stats"]["properties"]["entities"]
        ["additionalProperties"]["properties"];
    for field in [
        "cache_ms_p50",
        "load_ms_p99",
        "lease_waits",
        "l1_evictions",
        "write_back",
    ] {
        assert!(entity[field].is_object(), "{field} is not documented");
    }
}
