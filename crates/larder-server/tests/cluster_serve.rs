//! `larder serve` on a Redis Cluster: `[store] url = "redis+cluster://…"`
//! serves reads (miss, then hit) and write-through writes from the real
//! binary, over a PostgreSQL table.

mod support;

use serde_json::{json, Value};
use support::{unique, Pg, RedisCluster, Serve};

const USERS: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL); \
                     INSERT INTO {t} (id, name) VALUES (1, 'ada'), (2, 'bob');";

fn x_cache(r: &larder_server::client::Response) -> &str {
    r.headers
        .iter()
        .find(|(k, _)| k == "x-cache")
        .map_or("(none)", |(_, v)| v.as_str())
}

fn body(r: &larder_server::client::Response) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&r.body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larder_serve_on_a_cluster_reads_and_writes_through() {
    let cluster = RedisCluster::shared();
    let mut pg = Pg::connect().await;
    let t = unique("cl_users");
    pg.exec(&t, USERS).await;
    let config = format!(
        "[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 3\n\
         [[entity]]\nname = \"users\"\ntable = \"{t}\"\n",
        cluster.url(),
        unique("cs"),
        support::pg_url()
    );
    let served = Serve::with_config(&config);

    let a = served.call("GET", "/v1/users/1", None).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(x_cache(&a), "miss");
    assert_eq!(body(&a), json!({"id": 1, "name": "ada"}));
    let a = served.call("GET", "/v1/users/1", None).await;
    assert_eq!((a.status, x_cache(&a)), (200, "hit"));

    // A write-through write: stored, then served from the cluster.
    let a = served
        .call("PUT", "/v1/users/2", Some(r#"{"name": "bea"}"#))
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let stored = pg
        .scalar_text(&format!("SELECT name FROM {t} WHERE id = 2"))
        .await;
    assert_eq!(stored.as_deref(), Some("bea"));
    let a = served.call("GET", "/v1/users/2", None).await;
    assert_eq!((a.status, x_cache(&a)), (200, "hit"));
    assert_eq!(body(&a), json!({"id": 2, "name": "bea"}));

    // Many ids at once, across slots of every master.
    let mut all = Vec::new();
    for id in 3..40 {
        pg.exec(
            &t,
            &format!("INSERT INTO {{t}} (id, name) VALUES ({id}, 'n{id}')"),
        )
        .await;
        all.push(id);
    }
    for id in &all {
        let a = served.call("GET", &format!("/v1/users/{id}"), None).await;
        assert_eq!(body(&a)["name"], json!(format!("n{id}")));
    }
    let a = served.call("GET", "/v1/stats", None).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    drop(served);
}
