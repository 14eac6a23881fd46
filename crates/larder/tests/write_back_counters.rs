//! Write-back increments of `hash` entities, exactly once, over a durable
//! Redis of the test's own and the shared PostgreSQL (and SQLite): two
//! instances incrementing hot keys while the flusher commits, reads fill
//! and entries are evicted end with the database equal to the sum of the
//! acknowledged increments, and no read ever misses an acknowledged one or
//! counts one twice; a flusher stopped between its commit and its clear
//! never has its batch applied again (5 rounds, a new instance each); the
//! fence refuses a stale flusher and a replayed batch id; a row the
//! database refuses is a dead letter alone.

use larder_test_support as support;

use larder::source::{CounterBatch, CountersFlushed, Fence, Source};
use larder::{Cache, CacheWrite, Json, Representation, SqlPool, SqlSource};
use larder::{WriteBackOptions, WritePolicy};
use serde_json::{json, Number, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::accounts::Db;
use support::RedisServer;

const ROWS: i64 = 100;

fn settings(max_delay_ms: u64) -> WriteBackOptions {
    WriteBackOptions {
        max_delay: Duration::from_millis(max_delay_ms),
        flush_lease: Duration::from_millis(300),
        batch: 50,
        ..WriteBackOptions::default()
    }
}

/// `<schema>.counters (id bigint PRIMARY KEY, views bigint NOT NULL
/// DEFAULT 0, likes integer, capped integer CHECK (capped <= 1000))`,
/// rows `0..ROWS` with `views = 10 * id`, `likes` NULL, `capped` 0.
async fn counters_table(db: &Db) -> String {
    let table = format!("{}.counters", db.schema);
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, views bigint NOT NULL DEFAULT 0, likes integer, \
         capped integer NOT NULL DEFAULT 0 CONSTRAINT capped_at_1000 CHECK (capped <= 1000))"
    ))
    .execute(&db.admin)
    .await
    .expect("create");
    sqlx::query(&format!(
        "INSERT INTO {table} (id, views) SELECT n, 10 * n FROM generate_series(0, $1 - 1) AS n"
    ))
    .bind(ROWS)
    .execute(&db.admin)
    .await
    .expect("rows");
    table
}

async fn counters_cache(
    table: &str,
    redis: &str,
    prefix: &str,
    settings: WriteBackOptions,
) -> Cache<i64, Value> {
    counters_cache_sharded(table, redis, prefix, settings, 4).await
}

async fn counters_cache_sharded(
    table: &str,
    redis: &str,
    prefix: &str,
    settings: WriteBackOptions,
    shards: u16,
) -> Cache<i64, Value> {
    let pool = SqlPool::connect(&support::pg_url(), 4).await.expect("pool");
    let source = SqlSource::builder(pool, table)
        .entity("counters")
        .build()
        .await
        .expect("source");
    Cache::builder()
        .prefix(prefix)
        .entity("counters")
        .shards(shards)
        .codec(Json)
        .representation(Representation::Hash)
        .store(larder::store::connect_checked(redis).await.expect("redis"))
        .source(source)
        .write_policy(WritePolicy::Back(settings))
        .early_refresh(0.0)
        .wait_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("cache")
}

async fn db_column(db: &Db, table: &str, column: &str) -> HashMap<i64, Option<i64>> {
    let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(&format!(
        "SELECT id, {column}::bigint FROM {table} ORDER BY id"
    ))
    .fetch_all(&db.admin)
    .await
    .expect("select");
    rows.into_iter().collect()
}

/// A Zipf-ish pick of `0..ROWS` from a uniform `u` in [0, 1): low ids hot.
fn zipfish(u: f64) -> i64 {
    ((ROWS as f64) * u.powi(3)) as i64
}

fn n(by: i64) -> Number {
    Number::from(by)
}

/// 2 instances × 8 tasks × 150 increments over Zipf-ish keys of `views`,
/// while both flush every 20 ms and a ninth task reads and evicts: each
/// answer and each read lies between the acknowledged and the attempted
/// sums (no increment missed, none counted twice), and after both close
/// the database holds the initial values plus exactly the acknowledged
/// increments, the cache the same.
#[tokio::test]
async fn increments_from_two_instances_reach_the_database_exactly_once() {
    let server = RedisServer::durable();
    increments_from_two_instances_reach_the_database_exactly_once_on(
        &server.url_with_long_timeouts(),
    )
    .await;
}

/// The same on the shared Redis Cluster, where each increment and each
/// counter claim waits for its master's replica (`WAIT`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_from_two_instances_reach_the_database_exactly_once_on_cluster() {
    let url = support::RedisCluster::shared().url();
    increments_from_two_instances_reach_the_database_exactly_once_on(&url).await;
}

async fn increments_from_two_instances_reach_the_database_exactly_once_on(url: &str) {
    let db = Db::new().await;
    let prefix = support::unique("cwb");
    let table = counters_table(&db).await;
    let a = counters_cache(&table, url, &prefix, settings(20)).await;
    let b = counters_cache(&table, url, &prefix, settings(20)).await;
    let acked: Arc<Vec<AtomicI64>> = Arc::new((0..ROWS).map(|_| AtomicI64::new(0)).collect());
    let attempted: Arc<Vec<AtomicI64>> = Arc::new((0..ROWS).map(|_| AtomicI64::new(0)).collect());
    let mut tasks = Vec::new();
    for t in 0..16_u64 {
        let cache = if t % 2 == 0 { a.clone() } else { b.clone() };
        let (acked, attempted) = (Arc::clone(&acked), Arc::clone(&attempted));
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(t + 1);
            for _ in 0..150 {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let id = zipfish((seed >> 11) as f64 / (1u64 << 53) as f64);
                let by = 1 + (seed % 3) as i64;
                let floor = acked[id as usize].load(Ordering::SeqCst);
                attempted[id as usize].fetch_add(by, Ordering::SeqCst);
                let written = cache
                    .incr(&id, "views", &n(by))
                    .await
                    .expect("an increment")
                    .expect("the row exists");
                acked[id as usize].fetch_add(by, Ordering::SeqCst);
                assert_eq!(written.cache, CacheWrite::Queued);
                let value = written.value["views"].as_i64().expect("views");
                let ceiling = attempted[id as usize].load(Ordering::SeqCst);
                assert!(
                    value >= 10 * id + floor + by && value <= 10 * id + ceiling,
                    "id {id}: answered {value}, acknowledged before {floor} + {by}, attempted {ceiling}"
                );
            }
        }));
    }
    let reader = {
        let (a, acked, attempted) = (a.clone(), Arc::clone(&acked), Arc::clone(&attempted));
        tokio::spawn(async move {
            let mut checked = 0;
            for round in 0..400_i64 {
                let id = round % 10;
                if round % 3 == 0 {
                    a.invalidate(&id).await.expect("invalidate");
                }
                let floor = acked[id as usize].load(Ordering::SeqCst);
                let seen = a.get(&id).await.expect("get").value.expect("row");
                let ceiling = attempted[id as usize].load(Ordering::SeqCst);
                let views = seen["views"].as_i64().expect("views");
                assert!(
                    views >= 10 * id + floor && views <= 10 * id + ceiling,
                    "read of {id}: {views}, acknowledged before {floor}, attempted {ceiling}"
                );
                checked += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            checked
        })
    };
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(reader.await.expect("reader"), 400);
    let (sa, sb) = (
        a.write_back_stats().expect("stats"),
        b.write_back_stats().expect("stats"),
    );
    assert_eq!(sa.increments + sb.increments, 16 * 150);
    a.close(Duration::from_secs(20)).await.expect("close a");
    b.close(Duration::from_secs(20)).await.expect("close b");
    let stored = db_column(&db, &table, "views").await;
    let total: i64 = acked.iter().map(|x| x.load(Ordering::SeqCst)).sum();
    for id in 0..ROWS {
        let want = 10 * id + acked[id as usize].load(Ordering::SeqCst);
        assert_eq!(stored[&id], Some(want), "db views of {id}");
    }
    let (sa, sb) = (
        a.write_back_stats().expect("stats"),
        b.write_back_stats().expect("stats"),
    );
    assert!(sa.counter_batches + sb.counter_batches > 1, "{sa:?} {sb:?}");
    assert_eq!(sa.dead_lettered + sb.dead_lettered, 0);
    assert!(total > 0);
    // A fresh instance reads what the database holds.
    let c = counters_cache(&table, url, &prefix, settings(20)).await;
    for id in 0..10 {
        let seen = c.get(&id).await.expect("get").value.expect("row");
        assert_eq!(seen["views"].as_i64(), stored[&id], "cache of {id}");
    }
    c.close(Duration::from_secs(5)).await.expect("close c");
    db.drop().await;
}

/// 5 rounds, one shard: a new instance increments, its flusher commits a
/// counter batch and stops at the fault point before the clear (as a crash
/// there would: the task ends, the lease and the claimed record stay), and
/// the instance is dropped. The next round's instance takes the shard over
/// once the lease expires, finds the claimed record committed (the fence
/// row holds its batch id) and clears it without applying it again. After
/// every round no column exceeds its acknowledged sum; after a last
/// instance drains, every column equals it exactly.
#[tokio::test]
async fn a_stop_between_commit_and_clear_never_counts_a_batch_twice() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("cwb");
    let table = counters_table(&db).await;
    let one_shard = |settings| {
        let (table, url, prefix) = (
            table.clone(),
            server.url_with_long_timeouts(),
            prefix.clone(),
        );
        async move { counters_cache_sharded(&table, &url, &prefix, settings, 1).await }
    };
    let mut acked: HashMap<i64, i64> = HashMap::new();
    let mut before = db_column(&db, &table, "likes").await;
    for round in 0..5 {
        let cache = one_shard(settings(300)).await;
        larder::write_back::arm_after_counter_commit(&format!("{prefix}:counters"), 1);
        for k in 0..20_i64 {
            let id = (k * 7 + round) % 10;
            match cache.incr(&id, "likes", &n(k + 1)).await {
                Ok(Some(_)) => *acked.entry(id).or_default() += k + 1,
                // The flusher stopped at the fault point already: this
                // instance is down, nothing was recorded.
                Err(larder::Error::Closed { .. }) => break,
                other => panic!("round {round}: {other:?}"),
            }
        }
        // Wait for the armed commit: the database changes.
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let now = db_column(&db, &table, "likes").await;
            if now != before {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: nothing committed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        for (id, sum) in &acked {
            let stored = after[id].unwrap_or(0);
            assert!(
                stored <= *sum,
                "round {round}: likes of {id} {stored} > acknowledged {sum}"
            );
        }
        before = after;
        // The crash: no close; the lease and the claimed record stay (the
        // fault point stopped the flusher between commit and clear).
        drop(cache);
        assert_eq!(
            claimed_records(&server.url(), &prefix).await.len(),
            1,
            "round {round}: the committed record is left uncleared"
        );
    }
    let last = one_shard(settings(20)).await;
    last.close(Duration::from_secs(10)).await.expect("close");
    let stored = db_column(&db, &table, "likes").await;
    for (id, sum) in &acked {
        assert_eq!(stored[id], Some(*sum), "likes of {id}");
    }
    let claimed = claimed_records(&server.url(), &prefix).await;
    assert!(claimed.is_empty(), "claimed records left: {claimed:?}");
    db.drop().await;
}

/// Two flushers on one shard: A claims a batch and stalls before its
/// commit until its lease is long gone; B takes the shard over with a newer
/// epoch, commits that same claimed record (it is the shard's only one),
/// clears it and commits later increments. When A wakes, its commit of the
/// old batch is refused (fenced by B's epoch, or found committed): the
/// database holds every acknowledged increment exactly once.
#[tokio::test]
async fn a_flusher_stalled_across_a_newer_ones_commit_applies_nothing_twice() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("cwb");
    let table = counters_table(&db).await;
    let a = counters_cache_sharded(
        &table,
        &server.url_with_long_timeouts(),
        &prefix,
        settings(10),
        1,
    )
    .await;
    larder::write_back::arm_stall_after_counter_claim(
        &format!("{prefix}:counters"),
        Duration::from_millis(1500),
    );
    let mut acked: HashMap<i64, i64> = HashMap::new();
    for k in 0..10_i64 {
        a.incr(&k, "views", &n(k + 1))
            .await
            .expect("incr")
            .expect("row");
        *acked.entry(k).or_default() += k + 1;
    }
    // A claims within ~10 ms and stalls; its lease (300 ms) expires.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        claimed_records(&server.url(), &prefix).await.len(),
        1,
        "A claimed"
    );
    let b = counters_cache_sharded(
        &table,
        &server.url_with_long_timeouts(),
        &prefix,
        settings(10),
        1,
    )
    .await;
    for k in 0..10_i64 {
        b.incr(&k, "views", &n(100))
            .await
            .expect("incr")
            .expect("row");
        *acked.entry(k).or_default() += 100;
    }
    // B commits A's claimed record and its own increments while A sleeps.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stored = db_column(&db, &table, "views").await;
        if acked
            .iter()
            .all(|(id, sum)| stored[id] == Some(10 * id + sum))
        {
            break;
        }
        assert!(Instant::now() < deadline, "B did not flush: {stored:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A wakes (1.5 s after its claim) and tries its old batch.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    a.close(Duration::from_secs(5)).await.expect("close a");
    b.close(Duration::from_secs(5)).await.expect("close b");
    let stored = db_column(&db, &table, "views").await;
    for (id, sum) in &acked {
        assert_eq!(stored[id], Some(10 * id + sum), "views of {id}");
    }
    let sa = a.write_back_stats().expect("stats");
    assert_eq!(sa.counter_batches, 0, "A committed nothing: {sa:?}");
    db.drop().await;
}

/// A batch committed by a flusher that stopped before its clear, whose
/// row is deleted before the next flusher finds it committed: the replay
/// cannot tell whether the row was there at the commit, so the id is a
/// dead letter (noted as a replay), never dropped silently; the other
/// row holds its increments once.
#[tokio::test]
async fn a_replayed_batch_whose_row_is_gone_is_a_dead_letter() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("cwb");
    let table = counters_table(&db).await;
    // Both increments land in one claim: a full batch (2) flushes at once.
    let both = WriteBackOptions {
        batch: 2,
        ..settings(60_000)
    };
    let a =
        counters_cache_sharded(&table, &server.url_with_long_timeouts(), &prefix, both, 1).await;
    larder::write_back::arm_after_counter_commit(&format!("{prefix}:counters"), 1);
    for id in [5_i64, 6] {
        a.incr(&id, "views", &n(3))
            .await
            .expect("incr")
            .expect("row");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while db_column(&db, &table, "views").await[&5] != Some(53) {
        assert!(Instant::now() < deadline, "not committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(a);
    assert_eq!(claimed_records(&server.url(), &prefix).await.len(), 1);
    sqlx::query(&format!("DELETE FROM {table} WHERE id = 6"))
        .execute(&db.admin)
        .await
        .expect("delete");
    let b = counters_cache_sharded(
        &table,
        &server.url_with_long_timeouts(),
        &prefix,
        settings(50),
        1,
    )
    .await;
    b.close(Duration::from_secs(10)).await.expect("close");
    assert_eq!(db_column(&db, &table, "views").await[&5], Some(53));
    assert_eq!(b.write_back_stats().expect("stats").dead_lettered, 1);
    let (hashes, letters) = stored_counter_letters(&server.url(), &prefix).await;
    assert_eq!(hashes, 1, "{letters:?}");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].0.starts_with("6#"), "{letters:?}");
    assert!(letters[0].1.contains("stopped"), "{letters:?}");
    assert!(claimed_records(&server.url(), &prefix).await.is_empty());
    db.drop().await;
}

/// The counter dead letters stored under `prefix`: how many `…:cx`
/// hashes hold them, and every `(field, entry)` of them, sorted.
async fn stored_counter_letters(redis: &str, prefix: &str) -> (usize, Vec<(String, String)>) {
    let mut conn = redis::Client::open(redis)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:cx"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut letters = Vec::new();
    for key in &keys {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("HGETALL");
        letters.extend(all);
    }
    letters.sort();
    (keys.len(), letters)
}

/// The claimed counter records in Redis under `prefix`.
async fn claimed_records(redis: &str, prefix: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("{prefix}:*:cb"))
        .query_async(
            &mut redis::Client::open(redis)
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                .expect("conn"),
        )
        .await
        .expect("KEYS")
}

/// The fence at the source: a batch committed at epoch 2 is never applied
/// again — a flusher that replays its id, stalled at epoch 1 or at the same
/// or a newer epoch, is told it committed (and only clears); a stalled
/// flusher of epoch 1 with another batch is fenced; a new batch at epoch 3
/// commits. The row holds each delta once — on PostgreSQL, SQLite and
/// MariaDB.
#[tokio::test]
async fn the_fence_refuses_a_stale_flusher_and_a_replayed_batch() {
    let db = Db::new().await;
    let table = counters_table(&db).await;
    let pool = SqlPool::connect(&support::pg_url(), 2).await.expect("pool");
    let pg = SqlSource::builder(pool, &table)
        .entity("counters")
        .build()
        .await
        .expect("source");
    fence_replays(&pg, &support::unique("fence")).await;
    assert_eq!(db_column(&db, &table, "views").await[&3], Some(30 + 5 + 7));

    let (pool, raw, dir) = sqlite_with(&[
        "CREATE TABLE counters (id INTEGER PRIMARY KEY, views INTEGER NOT NULL)",
        "INSERT INTO counters (id, views) VALUES (3, 30)",
    ])
    .await;
    let raw = &raw;
    let lite = SqlSource::builder(pool.clone(), "counters")
        .entity("counters")
        .build()
        .await
        .expect("source");
    fence_replays(&lite, "lite:counters").await;
    let views: i64 = sqlx::query_scalar("SELECT views FROM counters WHERE id = 3")
        .fetch_one(raw)
        .await
        .expect("views");
    assert_eq!(views, 30 + 5 + 7);
    let _ = std::fs::remove_dir_all(dir);
    db.drop().await;

    // MariaDB: `NOT (batch <=> ?)`, and rows counted by what changed.
    let admin = support::mysql_pool(2).await;
    let maria = support::unique("cwb");
    for sql in [
        format!("CREATE DATABASE {maria}"),
        format!("CREATE TABLE {maria}.counters (id bigint PRIMARY KEY, views bigint NOT NULL)"),
        format!("INSERT INTO {maria}.counters (id, views) VALUES (3, 30)"),
    ] {
        sqlx::raw_sql(&sql).execute(&admin).await.expect(&sql);
    }
    let pool = SqlPool::connect(&support::mysql_url(), 2)
        .await
        .expect("mariadb");
    let source = SqlSource::builder(pool, &format!("{maria}.counters"))
        .entity("counters")
        .build()
        .await
        .expect("source");
    fence_replays(&source, &format!("{maria}:counters")).await;
    let views: i64 =
        sqlx::query_scalar(&format!("SELECT views FROM {maria}.counters WHERE id = 3"))
            .fetch_one(&admin)
            .await
            .expect("views");
    assert_eq!(views, 30 + 5 + 7);
    sqlx::raw_sql(&format!("DROP DATABASE {maria}"))
        .execute(&admin)
        .await
        .expect("drop database");
}

async fn fence_replays(source: &SqlSource, entity: &str) {
    let src: &dyn Source<Value> = source;
    src.prepare_write_back(entity, 1).await.expect("fence");
    let deltas = vec![("3".to_owned(), vec![("views".to_owned(), 5_i64)])];
    let flush = |batch: &'static str, epoch: u64| {
        let deltas = deltas.clone();
        async move {
            src.flush_counters(CounterBatch {
                batch,
                deltas: &deltas,
                fence: Fence {
                    entity: entity.to_owned(),
                    shard: 0,
                    epoch,
                },
                statement_timeout: Duration::from_secs(5),
                rehearse: false,
            })
            .await
        }
    };
    assert!(matches!(
        flush("b1", 2).await,
        Ok(CountersFlushed::Committed { ref missing }) if missing.is_empty()
    ));
    // The stalled flusher of epoch 1 that claimed b1 finds it committed by
    // the newer one: it only clears.
    assert!(matches!(
        flush("b1", 1).await,
        Ok(CountersFlushed::Replayed)
    ));
    assert!(matches!(
        flush("b1", 2).await,
        Ok(CountersFlushed::Replayed)
    ));
    assert!(matches!(
        flush("b1", 3).await,
        Ok(CountersFlushed::Replayed)
    ));
    // A stalled flusher of epoch 1 with a batch of its own is fenced.
    assert!(matches!(
        flush("b0", 1).await,
        Err(larder::Error::Fenced { current: 2, .. })
    ));
    let other = vec![("3".to_owned(), vec![("views".to_owned(), 7_i64)])];
    let committed = src
        .flush_counters(CounterBatch {
            batch: "b2",
            deltas: &other,
            fence: Fence {
                entity: entity.to_owned(),
                shard: 0,
                epoch: 3,
            },
            statement_timeout: Duration::from_secs(5),
            rehearse: false,
        })
        .await;
    assert!(matches!(committed, Ok(CountersFlushed::Committed { .. })));
}

/// `dead_letters()` of a new instance: each letter's id, its deltas (an
/// increment's) and whether its error names the CHECK.
async fn fresh_listing(
    table: &str,
    redis: &str,
    prefix: &str,
) -> Vec<(String, Option<Value>, bool)> {
    let cache = counters_cache(table, redis, prefix, settings(60_000)).await;
    let mut listed: Vec<(String, Option<Value>, bool)> = cache
        .dead_letters()
        .await
        .expect("dead letters")
        .into_iter()
        .map(|l| {
            assert!(l.value.is_none(), "an increment has no row to write again");
            (
                l.id,
                l.deltas.map(Value::Object),
                l.error.contains("capped_at_1000"),
            )
        })
        .collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    cache.close(Duration::from_secs(5)).await.expect("close");
    listed
}

/// A batch in which the database refuses one row (a CHECK): that row's
/// deltas go to the dead letters alone and its cached entry is dropped;
/// every other row's increments are committed, once; an increment of a
/// row deleted behind the cache's back is a dead letter too, never lost
/// silently.
#[tokio::test]
async fn a_refused_row_is_a_dead_letter_alone_and_the_rest_commits_once() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("cwb");
    let table = counters_table(&db).await;
    let cache = counters_cache(
        &table,
        &server.url_with_long_timeouts(),
        &prefix,
        settings(60_000),
    )
    .await;
    for id in 0..10_i64 {
        let by = if id == 4 { 5000 } else { id + 1 };
        let written = cache
            .incr(&id, "capped", &n(by))
            .await
            .expect("incr")
            .expect("row");
        assert_eq!(written.value["capped"], json!(by));
    }
    cache
        .incr(&9, "views", &n(1))
        .await
        .expect("incr")
        .expect("row");
    sqlx::query(&format!("DELETE FROM {table} WHERE id = 9"))
        .execute(&db.admin)
        .await
        .expect("delete");
    // Not there: 404, nothing recorded.
    assert!(cache
        .incr(&(ROWS + 5), "views", &n(1))
        .await
        .expect("incr")
        .is_none());
    cache.close(Duration::from_secs(10)).await.expect("close");
    let stored = db_column(&db, &table, "capped").await;
    for id in 0..9_i64 {
        let want = if id == 4 { 0 } else { id + 1 };
        assert_eq!(stored[&id], Some(want), "capped of {id}");
    }
    assert!(!stored.contains_key(&9));
    assert!(!stored.contains_key(&(ROWS + 5)));
    let stats = cache.write_back_stats().expect("stats");
    assert_eq!(stats.dead_lettered, 2, "{stats:?}");
    // The next instance's backlog count sees them (the dead-letters gauge).
    let probe = counters_cache(
        &table,
        &server.url_with_long_timeouts(),
        &prefix,
        settings(20),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while probe.write_back_stats().expect("stats").dead_letters < 2 {
        assert!(Instant::now() < deadline, "dead letters not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    probe.close(Duration::from_secs(5)).await.expect("close");
    let (_, letters) = stored_counter_letters(&server.url(), &prefix).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    // dead_letters() lists them with their deltas; retrying leaves them.
    let listed = fresh_listing(&table, &server.url(), &prefix).await;
    assert_eq!(
        listed,
        vec![
            ("4".to_owned(), Some(json!({"capped": "5000"})), true),
            (
                "9".to_owned(),
                Some(json!({"capped": "10", "views": "1"})),
                false
            ),
        ],
        "id, deltas, whether the database's CHECK is named"
    );
    assert!(letters[0].0.starts_with("4#"), "{letters:?}");
    assert!(letters[0].1.contains("capped_at_1000"), "{letters:?}");
    assert!(letters[0].1.contains(r#""capped":"5000""#), "{letters:?}");
    assert!(letters[1].0.starts_with("9#"), "{letters:?}");
    // The refused row reads as the database holds it.
    let fresh = counters_cache(
        &table,
        &server.url_with_long_timeouts(),
        &prefix,
        settings(60_000),
    )
    .await;
    let seen = fresh.get(&4).await.expect("get").value.expect("row");
    assert_eq!(seen["capped"], json!(0));
    // Once the database takes them (the CHECK dropped, row 9 back), a
    // retry puts both letters' deltas back among the pending increments:
    // a read counts them at once, and the flush adds them, once.
    sqlx::raw_sql(&format!(
        "ALTER TABLE {table} DROP CONSTRAINT capped_at_1000; INSERT INTO {table} (id) VALUES (9)"
    ))
    .execute(&db.admin)
    .await
    .expect("take them");
    assert_eq!(fresh.retry_dead_letters().await.expect("retry"), 2);
    assert!(fresh.dead_letters().await.expect("listed").is_empty());
    let seen = fresh.get(&4).await.expect("get").value.expect("row");
    assert_eq!(seen["capped"], json!(5000), "the retried deltas are read");
    fresh.close(Duration::from_secs(10)).await.expect("close");
    let stored = db_column(&db, &table, "capped").await;
    assert_eq!((stored[&4], stored[&9]), (Some(5000), Some(10)));
    let views = db_column(&db, &table, "views").await;
    assert_eq!(views[&9], Some(1));
    db.drop().await;
}

/// A database that refuses every row alike (a trigger raising on any
/// UPDATE): the rest of a batch of several rows, rehearsed without the
/// first refused row, is refused the same way, so nothing is
/// dead-lettered — the flush is retried and counts an alert; once the
/// trigger is gone, every increment lands once.
#[tokio::test]
async fn a_table_refusing_every_row_dead_letters_nothing() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("cwb");
    let table = counters_table(&db).await;
    for sql in [
        format!(
            "CREATE FUNCTION {}.refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'frozen'; END $$ LANGUAGE plpgsql",
            db.schema
        ),
        format!(
            "CREATE TRIGGER refuse BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {}.refuse()",
            db.schema
        ),
    ] {
        sqlx::query(&sql).execute(&db.admin).await.expect(&sql);
    }
    // One shard, one batch of six rows, claimed at once when full (a batch
    // of one refused row is that row's fault, as for records).
    let six = WriteBackOptions {
        batch: 6,
        ..settings(60_000)
    };
    let cache =
        counters_cache_sharded(&table, &server.url_with_long_timeouts(), &prefix, six, 1).await;
    for id in 0..6_i64 {
        cache
            .incr(&id, "views", &n(1))
            .await
            .expect("incr")
            .expect("row");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.write_back_stats().expect("stats").alerts == 0 {
        assert!(Instant::now() < deadline, "no alert");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = cache.write_back_stats().expect("stats");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    sqlx::query(&format!("DROP TRIGGER refuse ON {table}"))
        .execute(&db.admin)
        .await
        .expect("drop trigger");
    cache.close(Duration::from_secs(10)).await.expect("close");
    let stored = db_column(&db, &table, "views").await;
    for id in 0..6_i64 {
        assert_eq!(stored[&id], Some(10 * id + 1), "views of {id}");
    }
    assert_eq!(cache.write_back_stats().expect("stats").dead_lettered, 0);
    db.drop().await;
}

/// A put discards the unclaimed increments of the id (the written value
/// wins), increments after it count on top of it, and an increment of a
/// row the cache does not hold answers the database's row plus every
/// pending increment, never just `by`.
#[tokio::test]
async fn a_put_wins_over_earlier_increments_and_cold_rows_answer_the_sum() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("cwb");
    let table = counters_table(&db).await;
    let cache = counters_cache(
        &table,
        &server.url_with_long_timeouts(),
        &prefix,
        settings(60_000),
    )
    .await;
    let first = cache
        .incr(&7, "views", &n(3))
        .await
        .expect("incr")
        .expect("row");
    assert_eq!(first.value["views"], json!(73), "70 in the database, + 3");
    cache.invalidate(&7).await.expect("invalidate");
    let cold = cache
        .incr(&7, "views", &n(2))
        .await
        .expect("incr")
        .expect("row");
    assert_eq!(
        cold.value["views"],
        json!(75),
        "the row plus every pending delta"
    );
    cache
        .put(
            &7,
            &json!({"id": 7, "views": 1000, "likes": null, "capped": 0}),
        )
        .await
        .expect("put");
    let after = cache
        .incr(&7, "views", &n(4))
        .await
        .expect("incr")
        .expect("row");
    assert_eq!(after.value["views"], json!(1004));
    // A sum beyond the column's range is refused, nothing recorded.
    let over = cache.incr(&7, "likes", &n(i64::from(i32::MAX))).await;
    assert!(over.is_ok());
    let refused = cache.incr(&7, "likes", &n(1)).await;
    assert!(
        matches!(refused, Err(larder::Error::OutOfRange { .. })),
        "{refused:?}"
    );
    cache.close(Duration::from_secs(10)).await.expect("close");
    assert_eq!(db_column(&db, &table, "views").await[&7], Some(1004));
    assert_eq!(
        db_column(&db, &table, "likes").await[&7],
        Some(i64::from(i32::MAX))
    );
    db.drop().await;
}

/// A `numeric(p, s)` column is counted exactly: 2 instances × 8 tasks ×
/// 25 increments of 0.01 on a row holding 123456789012678.01 (where
/// binary floating point — Redis' `HINCRBYFLOAT` — gives …678.015625 for
/// the first one) reach PostgreSQL as exactly 4.00 more, with the cached
/// field's text exact too; an increment of a row the cache does not hold
/// answers the row plus the pending deltas; a `by` finer than the scale
/// and a floating-point column are refused, nothing recorded.
#[tokio::test]
async fn numeric_increments_are_exact_where_binary_floats_drift() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let url = server.url_with_long_timeouts();
    let prefix = support::unique("cwb");
    let table = format!("{}.prices", db.schema);
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, price numeric(17, 2) NOT NULL DEFAULT 0, \
         ratio double precision NOT NULL DEFAULT 0)"
    ))
    .execute(&db.admin)
    .await
    .expect("create");
    sqlx::query(&format!(
        "INSERT INTO {table} (id, price) VALUES (1, 123456789012678.01), (2, 1.50), (3, 2)"
    ))
    .execute(&db.admin)
    .await
    .expect("rows");
    let a = Arc::new(counters_cache(&table, &url, &prefix, settings(20)).await);
    let b = Arc::new(counters_cache(&table, &url, &prefix, settings(20)).await);
    let cent: Number = serde_json::from_str("0.01").expect("number");
    // Cached first: the increments sum the cached field.
    assert!(a.get(&1).await.expect("read").value.is_some());
    let filled = cached_field(&server, &prefix, "1", "price").await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let cache = Arc::clone(if t % 2 == 0 { &a } else { &b });
        let cent = cent.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let w = cache.incr(&1, "price", &cent).await.expect("incr");
                assert!(w.expect("row").cache.is_queued());
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    // Cold: row 3 is not cached; its answer is the row plus the deltas.
    let five_cents: Number = serde_json::from_str("0.05").expect("number");
    let cold = a
        .incr(&3, "price", &five_cents)
        .await
        .expect("incr")
        .expect("row");
    assert_eq!(cold.value["price"].as_f64(), Some(2.05), "{:?}", cold.value);
    let again = b
        .incr(&3, "price", &five_cents)
        .await
        .expect("incr")
        .expect("row");
    assert_eq!(
        again.value["price"].as_f64(),
        Some(2.10),
        "{:?}",
        again.value
    );
    // Refused, nothing recorded: finer than the scale; a float column.
    let tenth_cent: Number = serde_json::from_str("0.001").expect("number");
    let fine = a.incr(&2, "price", &tenth_cent).await;
    assert!(
        matches!(fine, Err(larder::Error::InvalidRow { .. })),
        "{fine:?}"
    );
    let float = a.incr(&2, "ratio", &n(1)).await;
    assert!(
        matches!(float, Err(larder::Error::Unsupported { .. })),
        "{float:?}"
    );
    let negative: Number = serde_json::from_str("-0.25").expect("number");
    let small = a
        .incr(&2, "price", &negative)
        .await
        .expect("incr")
        .expect("row");
    assert_eq!(small.value["price"].as_f64(), Some(1.25));
    // Across zero and back, on the cached field's digits.
    let mut answers = Vec::new();
    for by in ["-2.00", "-0.5", "1", "2.25", "-0.75"] {
        let by: Number = serde_json::from_str(by).expect("number");
        let w = b.incr(&2, "price", &by).await.expect("incr").expect("row");
        answers.push(w.value["price"].as_f64().expect("a number"));
    }
    assert_eq!(answers, [-0.75, -1.25, -0.25, 2.0, 1.25]);

    // The cached field of row 1 holds its filled text plus exactly 4.00.
    // (The fill itself passes the row through serde_json's f64, which
    // rounds a 17-digit value: …678.01 may be cached as …678.02.)
    let filled_units: i128 = filled.replace('.', "").parse().expect("units");
    let field = cached_field(&server, &prefix, "1", "price").await;
    let units: i128 = field.replace('.', "").parse().expect("units");
    assert_eq!(units - filled_units, 400, "{filled} + 4.00 = {field}");
    assert!(
        field.ends_with(&filled[filled.len() - 3..]),
        "{filled} + 4.00 = {field}"
    );
    a.close(Duration::from_secs(10)).await.expect("close a");
    b.close(Duration::from_secs(10)).await.expect("close b");
    let rows: Vec<(i64, String)> =
        sqlx::query_as(&format!("SELECT id, price::text FROM {table} ORDER BY id"))
            .fetch_all(&db.admin)
            .await
            .expect("select");
    assert_eq!(
        rows,
        [
            (1, "123456789012682.01".to_owned()),
            (2, "1.25".to_owned()),
            (3, "2.10".to_owned())
        ]
    );
}

/// The text of `column` in the cached hash of `id` (exactly one cached).
async fn cached_field(server: &RedisServer, prefix: &str, id: &str, column: &str) -> String {
    let mut conn = redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:h:{id}"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1, "{id} is cached: {keys:?}");
    let field: Option<String> = redis::cmd("HGET")
        .arg(&keys[0])
        .arg(column)
        .query_async(&mut conn)
        .await
        .expect("hget");
    field.expect("the field")
}

/// On SQLite a `NUMERIC(8, 2)` value of 2 is stored (and loaded) as the
/// integer 2: a cached field `2` that an integer `HINCRBY` of the delta's
/// 5 units would turn into 7. A decimal delta is never added as ones: an
/// increment answers 2.05, reads after the entry is dropped (a fill with
/// the delta pending) answer 2.05, and the database ends at 2.05.
#[tokio::test]
async fn a_decimal_delta_is_never_added_as_ones_to_an_integer_looking_value() {
    let server = RedisServer::durable();
    let (pool, raw, dir) = sqlite_with(&[
        "CREATE TABLE prices (id INTEGER PRIMARY KEY, price NUMERIC(8, 2) NOT NULL)",
        "INSERT INTO prices (id, price) VALUES (1, 2)",
    ])
    .await;
    let raw = &raw;
    let source = SqlSource::builder(pool.clone(), "prices")
        .entity("prices")
        .build()
        .await
        .expect("source");
    let cache: Cache<i64, Value> = Cache::builder()
        .prefix(support::unique("cwb"))
        .entity("prices")
        .codec(Json)
        .representation(Representation::Hash)
        .store(
            larder::store::connect_checked(&server.url_with_long_timeouts())
                .await
                .expect("redis"),
        )
        .source(source)
        .write_policy(WritePolicy::Back(settings(60_000)))
        .build()
        .await
        .expect("cache");
    let five_cents: Number = serde_json::from_str("0.05").expect("number");
    let w = cache
        .incr(&1, "price", &five_cents)
        .await
        .expect("incr")
        .expect("row");
    assert_eq!(w.value["price"].as_f64(), Some(2.05), "{:?}", w.value);
    // Dropped from the cache: the next read fills from the row (`2`) with
    // the delta pending.
    cache.invalidate(&1).await.expect("invalidate");
    for _ in 0..3 {
        let read = cache.get(&1).await.expect("read").value.expect("row");
        assert_eq!(read["price"].as_f64(), Some(2.05), "{read:?}");
    }
    cache.close(Duration::from_secs(10)).await.expect("close");
    let price: f64 = sqlx::query_scalar("SELECT price FROM prices WHERE id = 1")
        .fetch_one(raw)
        .await
        .expect("price");
    assert!((price - 2.05).abs() < 1e-9, "{price}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A SQLite database of the test's own in a fresh directory, `statements`
/// run on it: the pool larder takes, the raw one for checks, and the
/// directory (the test removes it).
async fn sqlite_with(statements: &[&str]) -> (SqlPool, sqlx::SqlitePool, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(support::unique("cwb-sqlite"));
    std::fs::create_dir_all(&dir).expect("dir");
    let url = format!("sqlite://{}", dir.join("db.sqlite").display());
    let pool = SqlPool::connect(&url, 2).await.expect("sqlite");
    let SqlPool::Sqlite(raw) = &pool else {
        panic!("sqlite pool")
    };
    for sql in statements {
        sqlx::query(sql)
            .execute(raw)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let raw = raw.clone();
    (pool, raw, dir)
}
