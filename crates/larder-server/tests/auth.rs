//! Who may call which route: the admin token, the read-only token, none,
//! and `public_reads`, over the whole route table and checked against the
//! OpenAPI document the service publishes.

mod support;

use larder_server::http::auth::Access;
use larder_server::http::{app, ROUTES};
use support::{send, unique, Answer, Pg};

const TABLE: &str =
    "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, team int NOT NULL DEFAULT 0); \
                     INSERT INTO {t} (id, name) VALUES (1, 'ada'), (2, 'bob');";

struct Service {
    _pg: Pg,
    app: axum::Router,
    doc: serde_json::Value,
}

/// Three entities over their own tables: `users` (write-through),
/// `open` (write-through, `public_reads = true`) and `queue` (write-back),
/// with the admin token `admin-secret` and the read token `read-secret`
/// in variables of this test's own. `auth_extra` goes into `[auth]`.
async fn service(auth_extra: &str) -> Service {
    let mut pg = Pg::connect().await;
    let tables: Vec<String> = (0..3).map(|_| unique("auth")).collect();
    for t in &tables {
        pg.exec(t, TABLE).await;
    }
    let admin_var = unique("LARDER_TEST_ADMIN").to_uppercase();
    let read_var = unique("LARDER_TEST_READ").to_uppercase();
    std::env::set_var(&admin_var, "admin-secret");
    std::env::set_var(&read_var, "read-secret");
    let toml = support::pg_config(
        &unique("auth"),
        &format!(
            "[auth]\ntoken_env = \"{admin_var}\"\nread_token_env = \"{read_var}\"\n{auth_extra}\n\
             [[entity]]\nname = \"users\"\ntable = \"{}\"\n\
             [[entity]]\nname = \"open\"\ntable = \"{}\"\npublic_reads = true\n\
             [[entity]]\nname = \"queue\"\ntable = \"{}\"\nwrite = \"back\"\n\
             [entity.write_back]\nrequire_durable = false\n",
            tables[0], tables[1], tables[2]
        ),
    );
    let app = app(support::state(&toml).await);
    std::env::remove_var(&admin_var);
    std::env::remove_var(&read_var);
    let doc = send(&app, "GET", "/v1/openapi.json", &[], None)
        .await
        .json();
    Service { _pg: pg, app, doc }
}

const ADMIN: &str = "Bearer admin-secret";
const READ: &str = "Bearer read-secret";
const WRONG: &str = "Bearer admin-secre";

async fn call(s: &Service, method: &str, path: &str, auth: Option<&str>) -> Answer {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    let body = matches!(method, "PUT" | "PATCH").then_some(r#"{"name": "zed"}"#);
    send(&s.app, method, path, &headers, body).await
}

/// The route with `{entity}`, `{id}` and `{tag}` filled in.
fn concrete(route: &str, entity: &str) -> String {
    let path = route
        .replace("{entity}", entity)
        .replace("{id}", "1")
        .replace("{tag}", "team:1");
    if route == "/v1/{entity}" {
        format!("{path}?ids=1,2")
    } else {
        path
    }
}

/// The route as the OpenAPI document names it (path parameters kept).
fn documented(route: &str, entity: &str) -> String {
    route.replace("{entity}", entity)
}

fn assert_documented(s: &Service, method: &str, route: &str, entity: &str, a: &Answer) {
    let path = documented(route, entity);
    let op = &s.doc["paths"][&path][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    let status = a.status.as_u16().to_string();
    assert!(
        op["responses"].get(&status).is_some(),
        "{method} {path} answered {status}, which its operation does not document: {}",
        String::from_utf8_lossy(&a.body)
    );
}

/// What each route needs, written out independently of the service's own
/// classification: Open (anyone), RowRead (either token, or none for a
/// public entity), Read (either token), Admin (the admin token).
const EXPECTED: &[(&str, &str, Access)] = &[
    ("GET", "/", Access::Open),
    ("GET", "/ui", Access::Open),
    ("GET", "/health", Access::Open),
    ("GET", "/ready", Access::Open),
    ("GET", "/metrics", Access::Read),
    ("GET", "/v1/openapi.json", Access::Open),
    ("GET", "/v1/stats", Access::Read),
    ("GET", "/v1/{entity}", Access::RowRead),
    ("GET", "/v1/{entity}/{id}", Access::RowRead),
    ("PUT", "/v1/{entity}/{id}", Access::Admin),
    ("PATCH", "/v1/{entity}/{id}", Access::Admin),
    ("DELETE", "/v1/{entity}/{id}", Access::Admin),
    ("POST", "/v1/{entity}/{id}/invalidate", Access::Admin),
    ("POST", "/v1/{entity}/{id}/incr", Access::Admin),
    ("POST", "/v1/tags/{tag}/invalidate", Access::Admin),
    ("POST", "/v1/_admin/{entity}/purge", Access::Admin),
    ("POST", "/v1/_admin/{entity}/warm", Access::Admin),
    ("GET", "/v1/_admin/{entity}/dead-letters", Access::Admin),
    (
        "POST",
        "/v1/_admin/{entity}/dead-letters/retry",
        Access::Admin,
    ),
    // Sets and feeds (their own tests: sets_http.rs); skipped below for entities.
    ("GET", "/v1/{entity}/{id}/members/{member}", Access::RowRead),
    ("PUT", "/v1/{entity}/{id}/members/{member}", Access::Admin),
    (
        "DELETE",
        "/v1/{entity}/{id}/members/{member}",
        Access::Admin,
    ),
    ("POST", "/v1/{entity}/{id}", Access::Admin),
    ("DELETE", "/v1/{entity}/{id}/items/{item}", Access::Admin),
    // Leaderboards (leaderboards_http.rs).
    (
        "POST",
        "/v1/{entity}/{id}/members/{member}/incr",
        Access::Admin,
    ),
];

/// A set's, feed's or leaderboard's route, which an entity does not answer.
fn collection_route(method: &str, route: &str) -> bool {
    route.contains("/members/")
        || route.contains("/items/")
        || (method == "POST" && route == "/v1/{entity}/{id}")
}

#[tokio::test]
async fn every_route_answers_each_token_as_documented() {
    assert_eq!(
        ROUTES.to_vec(),
        EXPECTED
            .iter()
            .map(|(m, r, _)| (*m, *r))
            .collect::<Vec<_>>(),
        "the route table changed: say what each new route needs"
    );
    let s = service("").await;
    let mut table = Vec::new();
    for &(method, route, need) in EXPECTED {
        if collection_route(method, route) {
            continue;
        }
        for entity in ["users", "open", "queue"] {
            if route.contains("dead-letters") && entity != "queue" {
                continue;
            }
            if route.ends_with("/incr") && entity == "queue" {
                // Write-back entities do not increment (405), so the
                // document leaves the route out for them.
                continue;
            }
            if !route.contains("{entity}") && entity != "users" {
                continue;
            }
            let path = concrete(route, entity);
            let public = need == Access::Open || (need == Access::RowRead && entity == "open");
            let mut row = format!("{method:6} {path:40}");
            for (who, auth) in [
                ("none", None),
                ("wrong", Some(WRONG)),
                ("read", Some(READ)),
                ("admin", Some(ADMIN)),
            ] {
                let a = call(&s, method, &path, auth).await;
                let status = a.status.as_u16();
                row.push_str(&format!(" {who}={status}"));
                let expect_refusal = match (who, public, need) {
                    (_, true, _) | ("admin", _, _) => None,
                    ("none" | "wrong", false, _) => Some((401, "unauthorized")),
                    ("read", false, Access::Admin) => Some((403, "forbidden")),
                    ("read", false, _) => None,
                    _ => unreachable!(),
                };
                match expect_refusal {
                    Some((code, word)) => {
                        assert_eq!(
                            (status, a.code().as_str()),
                            (code, word),
                            "{method} {path} with {who}"
                        );
                        if code == 401 {
                            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
                        }
                    }
                    None => assert!(
                        status != 401 && status != 403,
                        "{method} {path} with {who}: {status} {}",
                        String::from_utf8_lossy(&a.body)
                    ),
                }
                assert_documented(&s, method, route, entity, &a);
            }
            table.push(row);
        }
    }
    println!("{}", table.join("\n"));
}

#[tokio::test]
async fn public_reads_opens_exactly_the_reads_of_that_entity() {
    let s = service("").await;
    for path in ["/v1/open/1", "/v1/open?ids=1,2"] {
        let a = call(&s, "GET", path, None).await;
        assert_eq!(a.status.as_u16(), 200, "{path}");
        // HEAD is a read too.
        let a = call(&s, "HEAD", path, None).await;
        assert_eq!(a.status.as_u16(), 200, "HEAD {path}");
    }
    assert_eq!(
        call(&s, "GET", "/v1/open/1", None).await.json()["name"],
        "ada"
    );
    for (method, path) in [
        ("PUT", "/v1/open/1"),
        ("PATCH", "/v1/open/1"),
        ("DELETE", "/v1/open/1"),
        ("POST", "/v1/open/1/invalidate"),
        ("POST", "/v1/_admin/open/purge"),
        ("POST", "/v1/_admin/open/warm"),
        ("GET", "/v1/users/1"),
        ("GET", "/v1/users?ids=1"),
        ("HEAD", "/v1/users/1"),
        ("GET", "/v1/queue/1"),
        ("GET", "/v1/stats"),
        ("GET", "/metrics"),
        // An unknown entity is not public: its 404 is for token holders.
        ("GET", "/v1/nobody/1"),
    ] {
        let a = call(&s, method, path, None).await;
        assert_eq!(a.status.as_u16(), 401, "{method} {path}");
    }
    // The row was not changed by the refused writes.
    assert_eq!(
        call(&s, "GET", "/v1/open/1", None).await.json()["name"],
        "ada"
    );
    // The document says the same.
    let paths = &s.doc["paths"];
    assert_eq!(
        paths["/v1/open/{id}"]["get"]["security"],
        serde_json::json!([])
    );
    assert_eq!(paths["/v1/open"]["get"]["security"], serde_json::json!([]));
    assert!(paths["/v1/open/{id}"]["put"].get("security").is_none());
    assert!(paths["/v1/users/{id}"]["get"].get("security").is_none());

    // Service-wide: every entity's row reads, and nothing else.
    let s = service("public_reads = true").await;
    for path in [
        "/v1/users/1",
        "/v1/users?ids=1",
        "/v1/open/2",
        "/v1/queue/2",
    ] {
        assert_eq!(
            call(&s, "GET", path, None).await.status.as_u16(),
            200,
            "{path}"
        );
    }
    for (method, path) in [
        ("PUT", "/v1/users/1"),
        ("GET", "/v1/stats"),
        ("GET", "/metrics"),
        ("GET", "/v1/_admin/queue/dead-letters"),
    ] {
        assert_eq!(
            call(&s, method, path, None).await.status.as_u16(),
            401,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_read_token_needs_a_different_admin_token() {
    let mut pg = Pg::connect().await;
    let t = unique("auth");
    pg.exec(&t, TABLE).await;
    let admin_var = unique("LARDER_TEST_ADMIN").to_uppercase();
    let read_var = unique("LARDER_TEST_READ").to_uppercase();
    let toml = support::pg_config(
        &unique("auth"),
        &format!(
            "[auth]\ntoken_env = \"{admin_var}\"\nread_token_env = \"{read_var}\"\n\
             [[entity]]\nname = \"users\"\ntable = \"{t}\"\n"
        ),
    );
    let config = larder_server::config::Config::parse(&toml, "test.toml").expect("parse");
    std::env::set_var(&read_var, "read-secret");
    let e = larder_server::serve::start(config.clone())
        .await
        .expect_err("a read token alone is refused");
    assert!(format!("{e:#}").contains("auth.read_token_env"), "{e:#}");
    std::env::set_var(&admin_var, "read-secret");
    let e = larder_server::serve::start(config)
        .await
        .expect_err("the same token twice is refused");
    assert!(format!("{e:#}").contains("must differ"), "{e:#}");
    std::env::remove_var(&admin_var);
    std::env::remove_var(&read_var);
    let e = larder_server::config::Config::parse(
        &format!("[auth]\nread_token_env = \"LARDER_TOKEN\"\n[[entity]]\nname = \"u\"\ntable = \"{t}\"\n"),
        "t.toml",
    )
    .expect_err("the same variable twice is refused");
    assert_eq!(e.key, "auth.read_token_env");
}
