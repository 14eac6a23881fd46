//! `larder serve` on a Redis Cluster: `[store] url = "redis+cluster://…"`
//! serves reads (miss, then hit), write-through and write-back writes from
//! the real binary, over PostgreSQL tables.

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
        "listen = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 3\n\
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

/// Write-back on the Cluster: each acknowledgement waited for its
/// master's replica, so it is 202 with `"durable": true`; the flusher
/// brings the rows to PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larder_serve_on_a_cluster_writes_back() {
    let cluster = RedisCluster::shared();
    let mut pg = Pg::connect().await;
    let t = unique("cl_events");
    pg.exec(&t, USERS).await;
    let config = format!(
        "listen = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 3\n\
         [[entity]]\nname = \"users\"\ntable = \"{t}\"\nwrite = \"back\"\n[entity.write_back]\nmax_delay = \"50ms\"\n",
        cluster.url(),
        unique("cb"),
        support::pg_url()
    );
    let served = Serve::with_config(&config);
    for id in 10..30 {
        let a = served
            .call(
                "PUT",
                &format!("/v1/users/{id}"),
                Some(&format!(r#"{{"name": "w{id}"}}"#)),
            )
            .await;
        assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(
            body(&a),
            json!({"queued": true, "durable": true, "id": id.to_string()})
        );
    }
    // Served at once: the pending write (as written, before its flush) or
    // the flushed row.
    let a = served.call("GET", "/v1/users/12", None).await;
    assert_eq!(body(&a)["name"], json!("w12"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let flushed = pg
            .scalar_text(&format!(
                "SELECT count(*)::text FROM {t} WHERE name LIKE 'w%'"
            ))
            .await;
        if flushed.as_deref() == Some("20") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "flushed: {flushed:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_show_every_cluster_node_and_the_slot_coverage() {
    let cluster = RedisCluster::shared();
    let mut pg = Pg::connect().await;
    let t = unique("cl_nodes");
    pg.exec(&t, USERS).await;
    let config = format!(
        "listen = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 2\n\
         [[entity]]\nname = \"users\"\ntable = \"{t}\"\n",
        cluster.url(),
        unique("cn"),
        support::pg_url()
    );
    let served = Serve::with_config(&config);
    let addresses: std::collections::BTreeSet<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.addr().to_string())
        .collect();

    let a = served.call("GET", "/v1/stats", None).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let stats = body(&a);
    let nodes = stats["nodes"].as_array().expect("nodes");
    let listed: std::collections::BTreeSet<String> = nodes
        .iter()
        .map(|n| n["address"].as_str().expect("address").to_owned())
        .collect();
    assert_eq!(listed, addresses, "every node once: {nodes:#?}");
    let masters: Vec<&str> = nodes
        .iter()
        .filter(|n| n["role"] == "master")
        .map(|n| n["address"].as_str().expect("address"))
        .collect();
    assert_eq!(masters.len(), 3, "{nodes:#?}");
    for n in nodes.iter().filter(|n| n["role"] == "replica") {
        let master = n["master"].as_str().expect("a replica's master");
        assert!(masters.contains(&master), "{n} follows a master");
    }
    for n in nodes {
        assert!(n["used_memory"].as_u64().expect("used_memory") > 0, "{n}");
        assert!(n["keys"].is_u64() && n["evicted_keys"].is_u64(), "{n}");
    }
    assert_eq!(
        stats["slots"],
        json!({"state": "ok", "assigned": 16384, "ok": 16384, "pfail": 0, "fail": 0, "total": 16384})
    );

    let m = served.call("GET", "/metrics", None).await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body).into_owned();
    let series = |name: &str| -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect()
    };
    let memory = series("larder_store_node_used_memory_bytes");
    assert_eq!(memory.len(), 6, "{text}");
    for address in &addresses {
        assert!(
            memory
                .iter()
                .any(|l| l.contains(&format!("node=\"{address}\""))),
            "{address} in {memory:#?}"
        );
    }
    assert_eq!(
        memory
            .iter()
            .filter(|l| l.contains("role=\"master\""))
            .count(),
        3,
        "{memory:#?}"
    );
    assert_eq!(series("larder_store_node_keys").len(), 6, "{text}");
    assert_eq!(
        series("larder_store_node_evicted_keys_total").len(),
        6,
        "{text}"
    );
    assert_eq!(series("larder_store_node_info").len(), 6, "{text}");
    assert!(
        text.lines()
            .any(|l| l == "larder_store_cluster_slots_ok 16384"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "larder_store_cluster_state_ok 1"),
        "{text}"
    );

    // `larder top` prints a row per node and the slot coverage.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["top", "--url", &served.url, "--once"])
        .env_remove("LARDER_TOKEN")
        .output()
        .expect("larder top");
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{top}");
    let rows: Vec<&str> = top
        .lines()
        .filter(|l| addresses.iter().any(|a| l.starts_with(a.as_str())))
        .collect();
    assert_eq!(rows.len(), 6, "{top}");
    assert_eq!(
        rows.iter().filter(|r| r.contains(" master ")).count(),
        3,
        "{top}"
    );
    assert!(
        top.contains("slots: 16384 ok, 16384 assigned of 16384 (cluster_state ok)"),
        "{top}"
    );
    drop(served);
}
