//! What only a Redis Cluster shows: topology found from one seed, batches
//! over many slots answered in request order, the server's figures from
//! every master, a dead slot reported as the store being unavailable within
//! the response timeout, write-back refused where a node lacks durability,
//! and write-back through a master's failover. (The cache, tag and near-cache suites run on the Cluster as a
//! third store in `cache.rs`, `tag_compaction.rs` and `near_bus.rs`.)

use larder_test_support as support;

use larder::store::{self, Store};
use larder::{Cache, Error, Outcome, WriteBackOptions, WritePolicy};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{key_slot as slot_of, unique, Keyed, RedisCluster, TableSource};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
}

impl Keyed for Row {
    fn key(&self) -> u64 {
        self.id
    }
}

fn rows(n: u64) -> Arc<support::Table<Row>> {
    support::Table::with((0..n).map(|id| Row {
        id,
        name: format!("row {id}"),
    }))
}

async fn cache_on(
    store: Arc<dyn Store>,
    prefix: &str,
    table: &Arc<support::Table<Row>>,
) -> Cache<u64, Row> {
    Cache::builder()
        .prefix(prefix)
        .entity("rows")
        .store(store)
        .source(TableSource(table.clone()))
        .ttl(Duration::from_secs(60))
        .early_refresh(0.0)
        .build()
        .await
        .expect("cache")
}

/// A raw cluster connection, to look at keys without larder.
async fn raw(cluster: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    let seeds: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("redis://{}", n.addr()))
        .collect();
    redis::cluster::ClusterClient::new(seeds)
        .expect("client")
        .get_async_connection()
        .await
        .expect("cluster connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_finds_every_master_and_get_many_answers_across_slots_in_request_order() {
    let cluster = RedisCluster::shared();
    // A replica as the only seed: the topology comes from it.
    let store = store::connect_checked(&cluster.url_of_node(5))
        .await
        .expect("store from one seed");
    let prefix = unique("cl_many");
    let table = rows(300);
    let cache = cache_on(store.clone(), &prefix, &table).await;
    // 300 ids over 64 shards: every master owns some of them.
    let ids: Vec<u64> = (0..300).rev().collect();
    let refs: Vec<&u64> = ids.iter().collect();
    let got = cache.get_many(&refs).await.expect("get_many");
    assert_eq!(table.loads(), 0, "no id loaded alone");
    assert_eq!(table.batch_loads(), 1, "the misses loaded in one batch");
    for (id, got) in ids.iter().zip(&got) {
        assert_eq!(
            got.value.as_ref().map(|r| r.id),
            Some(*id),
            "in request order"
        );
    }
    let again = cache.get_many(&refs).await.expect("get_many again");
    assert!(again.iter().all(|g| g.outcome == Outcome::Hit));
    assert_eq!(table.batch_loads(), 1, "the second round is all hits");

    // The store's own get_many: present and absent keys interleaved, over
    // many slots, answered in request order.
    let keys: Vec<String> = (0..200).map(|i| format!("{prefix}:{{k{i}}}:x")).collect();
    let mut conn = raw(cluster).await;
    for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(format!("v{i}"))
            .query_async(&mut conn)
            .await
            .expect("SET");
    }
    let values = store.get_many(&keys).await.expect("store get_many");
    for (i, value) in values.iter().enumerate() {
        let expected = (i % 3 == 0).then(|| format!("v{i}"));
        assert_eq!(
            value
                .as_deref()
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            expected,
            "key {i}"
        );
    }
    // Keys landed on all three masters.
    let masters: std::collections::BTreeSet<usize> = (0..300)
        .map(|i| cluster.master_of_slot(slot_of(&format!("{{rows:{}}}", i % 64))))
        .collect();
    assert_eq!(masters.len(), 3, "the shards spread over every master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_info_sums_every_master() {
    let cluster = RedisCluster::shared();
    let store = cluster.store().await;
    let info = store.server_info().await.expect("server_info");
    let used = info.used_memory.expect("used_memory");
    // Each master alone uses about a megabyte; three of them, more.
    let one = support::resp::cmd(
        cluster.nodes()[cluster.master_of_slot(0)].addr(),
        &["INFO", "memory"],
    )
    .expect("INFO");
    let one = String::from_utf8_lossy(one.bulk().expect("bulk")).into_owned();
    let one: u64 = one
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("one master's used_memory");
    assert!(used > one * 2, "{used} sums 3 masters (one has {one})");
    assert!(info.connected_clients.expect("clients") >= 3);
}

/// A write-back cache of `rows` on `store` (the table's source flushes
/// by storing rows).
async fn write_back_on(
    store: Arc<dyn Store>,
    require_durable: bool,
) -> larder::Result<Cache<u64, Row>> {
    Cache::<u64, Row>::builder()
        .prefix(unique("cl_wb"))
        .entity("rows")
        .store(store)
        .source(TableSource(rows(1)))
        .write_policy(WritePolicy::Back(WriteBackOptions {
            require_durable,
            ..WriteBackOptions::default()
        }))
        .build()
        .await
}

/// Write-back on a Cluster needs `appendfsync always` on every node and
/// a replica for every master: a node that lacks either is named in the
/// refusal (`require_durable = false` accepts the risk, loudly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_on_cluster_is_refused_naming_the_node_that_lacks_durability() {
    let cluster = RedisCluster::builder()
        .replicas(0)
        .appendfsync_always(false)
        .start();
    let store = cluster.store().await;
    let addresses: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.addr().to_string())
        .collect();
    let refusal = |built: larder::Result<Cache<u64, Row>>| match built {
        Err(Error::NotDurable { reason, .. }) => reason,
        Err(other) => panic!("expected NotDurable, got {other:?}"),
        Ok(_) => panic!("write-back must be refused"),
    };
    let reason = refusal(write_back_on(store.clone(), true).await);
    assert!(
        reason.contains("appendfsync everysec")
            && addresses
                .iter()
                .any(|a| reason.starts_with(&format!("node {a}: "))),
        "{reason}"
    );
    for node in cluster.nodes() {
        support::resp::cmd(node.addr(), &["CONFIG", "SET", "appendfsync", "always"])
            .expect("CONFIG SET");
    }
    let reason = refusal(write_back_on(store.clone(), true).await);
    assert!(
        reason.contains("has no online replica")
            && addresses
                .iter()
                .all(|a| reason.contains(&format!("master {a}"))),
        "{reason}"
    );
    write_back_on(store, false)
        .await
        .expect("require_durable = false accepts a cluster without replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_urls_are_checked_and_redacted() {
    for bad in [
        "redis+cluster://",
        "redis+cluster://127.0.0.1:1/2",
        "redis+cluster://127.0.0.1:1?response_timeout=soon",
    ] {
        let e = store::connect(bad).await.expect_err(bad);
        assert!(matches!(e, Error::Config(_)), "{bad}: {e:?}");
    }
    let store = store::connect("rediss+cluster://u:secret@127.0.0.1:1,127.0.0.1:2")
        .await
        .expect("a TLS cluster URL is accepted (connected lazily)");
    assert!(!store.name().contains("secret"), "{}", store.name());
}

/// A master without a replica dies: reads of its slots fail with
/// `StoreUnavailable` (after redis-rs' own retries) within about the
/// response timeout, and the other masters' slots keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_slot_is_store_unavailable_within_the_response_timeout() {
    let mut cluster = RedisCluster::builder()
        .replicas(0)
        .node_timeout_ms(1000)
        .start();
    let url = format!(
        "{}/?response_timeout=500ms&connect_timeout=200ms",
        cluster.url()
    );
    let store = store::connect_checked(&url).await.expect("store");
    let dead_slot_key = "{a}:x"; // slot of "a": 15495
    let live_key = (0..100)
        .map(|i| format!("{{b{i}}}:x"))
        .find(|k| {
            cluster.master_of_slot(slot_of(k)) != cluster.master_of_slot(slot_of(dead_slot_key))
        })
        .expect("a key on another master");
    let victim = cluster.master_of_slot(slot_of(dead_slot_key));
    store
        .get(dead_slot_key)
        .await
        .expect("answers before the kill");
    cluster.node_mut(victim).kill();

    for _ in 0..3 {
        let started = Instant::now();
        let e = store
            .get(dead_slot_key)
            .await
            .expect_err("its master is dead");
        let took = started.elapsed();
        assert!(e.is_store_unavailable(), "{e:?}");
        assert!(took < Duration::from_millis(1500), "answered in {took:?}");
    }
    // The other masters' slots are unaffected until the cluster notices
    // (CLUSTERDOWN, reported the same way).
    let other = store.get(&live_key).await;
    assert!(
        other.is_ok() || other.as_ref().is_err_and(Error::is_store_unavailable),
        "{other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_lists_every_master_and_replica_with_their_figures_and_every_slot_is_ok() {
    let cluster = RedisCluster::shared();
    let store = cluster.store().await;
    // A key on a known master, so that master holds at least one key.
    let key = format!("{}:{{n}}:x", unique("cl_nodes"));
    store
        .set(&key, &format!("{key}:lease"), b"v", Duration::from_secs(60))
        .await
        .expect("set");
    let holder = cluster.nodes()[cluster.master_of_slot(slot_of(&key))]
        .addr()
        .to_string();

    let nodes = store.nodes().await.expect("nodes");
    let addresses: std::collections::BTreeSet<String> =
        nodes.iter().map(|n| n.address.clone()).collect();
    let expected: std::collections::BTreeSet<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.addr().to_string())
        .collect();
    assert_eq!(addresses, expected, "every node, once: {nodes:#?}");
    let masters: Vec<&store::NodeInfo> = nodes
        .iter()
        .filter(|n| n.role == store::NodeRole::Master)
        .collect();
    assert_eq!(masters.len(), 3, "{nodes:#?}");
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(
            cluster.is_master(
                cluster
                    .nodes()
                    .iter()
                    .position(|n| n.addr().to_string() == node.address)
                    .expect("a known node")
            ),
            node.role == store::NodeRole::Master,
            "{} has the role Redis reports",
            node.address
        );
        match node.role {
            store::NodeRole::Master => assert_eq!(node.master, None),
            store::NodeRole::Replica => {
                let master = node.master.as_deref().expect("a replica follows a master");
                assert!(
                    masters.iter().any(|m| m.address == master),
                    "{} follows {master}, a master",
                    node.address
                );
                // Listed right after its master (or its master's other replicas).
                assert!(
                    nodes[..i].iter().any(|m| m.address == master),
                    "{} listed after its master",
                    node.address
                );
            }
        }
        assert!(node.used_memory.expect("used_memory") > 100_000);
        assert!(node.evicted_keys.is_some());
        assert!(node.keys.is_some());
    }
    let holder = nodes
        .iter()
        .find(|n| n.address == holder)
        .expect("the key's master");
    assert!(holder.keys.expect("keys") >= 1, "{holder:?} holds the key");
    // Each replica follows a different master: 3 masters, 3 replicas.
    let followed: std::collections::BTreeSet<&str> =
        nodes.iter().filter_map(|n| n.master.as_deref()).collect();
    assert_eq!(followed.len(), 3, "{nodes:#?}");

    let slots = store
        .slot_coverage()
        .await
        .expect("slot_coverage")
        .expect("a cluster covers slots");
    assert_eq!(slots.state, "ok");
    assert_eq!((slots.assigned, slots.ok), (16384, 16384));
    assert_eq!((slots.pfail, slots.fail), (0, 0));

    // A standalone Redis and memory:// have no nodes and no slot coverage.
    for url in [support::redis_url(), "memory://".to_owned()] {
        let alone = store::connect_checked(&url).await.expect("store");
        assert!(alone.nodes().await.expect("nodes").is_empty(), "{url}");
        assert_eq!(alone.slot_coverage().await.expect("slots"), None, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_set_scans_every_master() {
    let cluster = RedisCluster::shared();
    let path = support::temp_dir("cluster_purge").join("visits.db");
    let pool = larder::SqlPool::connect(&format!("sqlite://{}", path.display()), 1)
        .await
        .expect("sqlite");
    let larder::SqlPool::Sqlite(db) = &pool else {
        panic!("a SQLite pool");
    };
    sqlx::query(
        "CREATE TABLE visits (page TEXT NOT NULL, visitor TEXT NOT NULL, UNIQUE (page, visitor))",
    )
    .execute(db)
    .await
    .expect("table");
    for page in 0..40 {
        sqlx::query("INSERT INTO visits VALUES (?1, 'ada')")
            .bind(format!("p{page}"))
            .execute(db)
            .await
            .expect("row");
    }
    let source = larder::SqlSetSource::builder(pool.clone(), "visits")
        .owner("page")
        .member("visitor")
        .build()
        .await
        .expect("source");
    let set = larder::SetCache::builder()
        .prefix(&unique("cpurge"))
        .name("visitors")
        .store(cluster.store().await)
        .source(source)
        .build()
        .await
        .expect("set");
    for page in 0..40 {
        set.contains(&format!("p{page}"), "ada")
            .await
            .expect("read");
    }
    // 40 owners over 64 shards, spread over the three masters.
    assert_eq!(set.purge().await.expect("purge"), 40);
    for page in 0..40 {
        let read = set
            .contains(&format!("p{page}"), "ada")
            .await
            .expect("read");
        assert_eq!(read.outcome, larder::CollectionOutcome::Miss, "p{page}");
    }
}

/// A write's end step (here a write-through's) is acknowledged only once
/// its master's replica has it, so the master's death right after cannot
/// bring the old value back: with the replica stopped (SIGSTOP), the write
/// does not return; resumed, it does; the master is SIGKILLed at once and
/// the promoted replica serves the new value, never the one it replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_before_its_master_dies_is_not_undone_by_the_failover() {
    let mut cluster = RedisCluster::builder().node_timeout_ms(1000).start();
    let url = format!(
        "{}/?response_timeout=3s&connect_timeout=300ms",
        cluster.url()
    );
    let store = store::connect_checked(&url).await.expect("store");
    let table = rows(2);
    let cache = Cache::<u64, Row>::builder()
        .prefix(unique("cl_wt"))
        .entity("rows")
        .shards(1)
        .store(store)
        .source(TableSource(table.clone()))
        .ttl(Duration::from_secs(600))
        .early_refresh(0.0)
        .build()
        .await
        .expect("cache");
    let old = cache.get(&1).await.expect("get").value.expect("row 1");
    assert_eq!(old.name, "row 1");

    let victim = cluster.master_of_slot(slot_of("{rows:0}"));
    let replica = cluster.replica_of(victim).expect("the victim's replica");

    cluster.nodes()[replica].pause();
    let writer = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .put(
                    &1,
                    &Row {
                        id: 1,
                        name: "new".into(),
                    },
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waited = !writer.is_finished();
    cluster.nodes()[replica].resume();
    assert!(
        waited,
        "the write returned while its master's only replica was stopped"
    );
    writer.await.expect("task").expect("put");

    cluster.node_mut(victim).kill();
    support::eventually("the replica takes over", || async {
        cluster.master_of_slot(slot_of("{rows:0}")) == replica && cluster.is_master(replica)
    })
    .await;
    support::eventually("the new value is served after the failover", || async {
        match cache.get(&1).await {
            Ok(read) => {
                let name = read.value.map(|row| row.name.clone());
                assert_ne!(
                    name.as_deref(),
                    Some("row 1"),
                    "the replaced value came back"
                );
                name.as_deref() == Some("new")
            }
            Err(_) => false,
        }
    })
    .await;
}
