//! Write-back on `hash` entities over a durable Redis of the test's own and
//! the shared PostgreSQL: a `patch` sets just its fields (no read, no
//! compare-and-set), so two instances patching different fields of the
//! same keys all land without a retry; patches of one field coalesce; a
//! patch of an absent hash creates nothing and reads show the patched
//! fields over the database's row; the flusher writes a patch as an UPDATE
//! of its columns, and one whose row is gone (or that the database
//! refuses) goes to the dead letters without stalling the rest.
//! Whole-row behaviour shared with strings (puts, deletes, crashes) runs
//! in write_back.rs for both representations.

use larder_test_support as support;

use larder::{Cache, CacheWrite, Json, Representation, SqlPool, SqlSource};
use larder::{WriteBackOptions, WritePolicy};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::accounts::Db;
use support::RedisServer;

/// Columns of the wide table, one per patching task.
const COLUMNS: usize = 16;

fn settings(max_delay_ms: u64) -> WriteBackOptions {
    WriteBackOptions {
        max_delay: Duration::from_millis(max_delay_ms),
        flush_lease: Duration::from_millis(1000),
        ..WriteBackOptions::default()
    }
}

/// `<schema>.wide (id bigint PRIMARY KEY, c0 text, …, c15 text,
/// n bigint CHECK (n >= 0))`, with rows `0..rows` (every column NULL, n 0).
async fn wide_table(db: &Db, rows: i64) -> String {
    let table = format!("{}.wide", db.schema);
    let cols: Vec<String> = (0..COLUMNS).map(|c| format!("c{c} text")).collect();
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, {}, n bigint NOT NULL DEFAULT 0 CONSTRAINT n_not_negative CHECK (n >= 0))",
        cols.join(", ")
    ))
    .execute(&db.admin)
    .await
    .expect("create wide");
    sqlx::query(&format!(
        "INSERT INTO {table} (id) SELECT generate_series(0, $1 - 1)"
    ))
    .bind(rows)
    .execute(&db.admin)
    .await
    .expect("rows");
    table
}

async fn wide_cache(
    table: &str,
    redis: &str,
    prefix: &str,
    settings: WriteBackOptions,
) -> Cache<i64, Value> {
    let pool = SqlPool::connect(&support::pg_url(), 3).await.expect("pool");
    let source = SqlSource::builder(pool, table)
        .entity("wide")
        .build()
        .await
        .expect("source");
    Cache::builder()
        .prefix(prefix)
        .entity("wide")
        .shards(8)
        .codec(Json)
        .representation(Representation::Hash)
        .store(larder::store::connect_checked(redis).await.expect("redis"))
        .source(source)
        .write_policy(WritePolicy::Back(settings))
        .early_refresh(0.0)
        .wait_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("cache")
}

async fn db_row(db: &Db, table: &str, id: i64) -> Option<Value> {
    let row: Option<sqlx::types::Json<Value>> = sqlx::query_scalar(&format!(
        "SELECT row_to_json(w) FROM {table} w WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.admin)
    .await
    .expect("select");
    row.map(|j| j.0)
}

fn fields(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// The hash of `id` in Redis as `HGETALL` answers it (reserved field left out).
async fn hash_of(redis: &str, prefix: &str, id: i64) -> Vec<(String, String)> {
    let client = redis::Client::open(redis).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:h:{id}"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let Some(key) = keys.first() else {
        return Vec::new();
    };
    let all: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    all.into_iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

/// 2 instances × 8 tasks, each task its own column, patch the same 100
/// keys for 3 rounds: every patch is acknowledged at the first attempt
/// (there is no compare-and-set to lose), every column of every key ends
/// at its last acknowledged value in Redis and, after the flush, in the
/// database, and the flusher needed no retry.
#[tokio::test]
async fn two_instances_patching_different_fields_of_the_same_keys_all_land_without_retries() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("hwb");
    let table = wide_table(&db, 100).await;
    let a = wide_cache(&table, &server.url(), &prefix, settings(200)).await;
    let b = wide_cache(&table, &server.url(), &prefix, settings(200)).await;
    const ROUNDS: usize = 3;
    let mut tasks = Vec::new();
    for column in 0..COLUMNS {
        let cache = if column % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                for id in 0..100_i64 {
                    let patch = json!({ format!("c{column}"): format!("c{column}-{id}-{round}") });
                    let written = cache
                        .patch(&id, &fields(patch))
                        .await
                        .expect("a patch never fails under contention")
                        .expect("the row exists");
                    assert_eq!(written.cache, CacheWrite::Queued);
                    assert_eq!(
                        written.value[format!("c{column}")],
                        json!(format!("c{column}-{id}-{round}")),
                        "the answer holds the patch"
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let last = |column: usize, id: i64| json!(format!("c{column}-{id}-{}", ROUNDS - 1));
    for id in 0..100_i64 {
        let seen = a.get(&id).await.expect("get").value.expect("row");
        for column in 0..COLUMNS {
            assert_eq!(
                seen[format!("c{column}")],
                last(column, id),
                "cache {id} c{column}"
            );
        }
    }
    // The hash holds each column as its plain text.
    let stored = hash_of(&server.url(), &prefix, 7).await;
    assert!(
        stored.contains(&("c3".to_owned(), format!("c3-7-{}", ROUNDS - 1))),
        "{stored:?}"
    );
    let (sa, sb) = (
        a.write_back_stats().expect("stats"),
        b.write_back_stats().expect("stats"),
    );
    assert_eq!(
        sa.acknowledged + sb.acknowledged,
        (COLUMNS * ROUNDS * 100) as u64
    );
    a.close(Duration::from_secs(20)).await.expect("close a");
    b.close(Duration::from_secs(20)).await.expect("close b");
    for id in 0..100_i64 {
        let row = db_row(&db, &table, id).await.expect("row");
        for column in 0..COLUMNS {
            assert_eq!(
                row[format!("c{column}")],
                last(column, id),
                "db {id} c{column}"
            );
        }
    }
    let (sa, sb) = (
        a.write_back_stats().expect("stats"),
        b.write_back_stats().expect("stats"),
    );
    assert_eq!(sa.retries + sb.retries, 0, "{sa:?} {sb:?}");
    assert_eq!(
        sa.conflicts + sb.conflicts,
        0,
        "no patch read again and retried: {sa:?} {sb:?}"
    );
    assert_eq!(sa.dead_lettered + sb.dead_lettered, 0);
    db.drop().await;
}

/// 200 patches of one field of one key: one database write (or a few),
/// and the database ends at the last value.
#[tokio::test]
async fn patches_of_one_field_coalesce_into_fewer_database_writes() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("hwb");
    let table = wide_table(&db, 1).await;
    let cache = wide_cache(&table, &server.url(), &prefix, settings(60_000)).await;
    for i in 0..200 {
        cache
            .patch(&0, &fields(json!({ "n": i })))
            .await
            .expect("patch")
            .expect("row");
    }
    cache.close(Duration::from_secs(10)).await.expect("close");
    let stats = cache.write_back_stats().expect("stats");
    assert_eq!(stats.acknowledged, 200);
    assert_eq!(stats.coalesced, 199);
    assert_eq!(stats.rows_written, 1, "{stats:?}");
    assert_eq!(db_row(&db, &table, 0).await.expect("row")["n"], json!(199));
    db.drop().await;
}

/// A patch of a key with no cached entry answers the database's row with
/// the patch laid over, the database is untouched until the flush, and
/// after an invalidation (the hash deleted, the dirty record kept) and a
/// change of another column behind the cache's back, the next read loads
/// the new row and the fill lays the pending field over it — in Redis and
/// in the answer. The flush then UPDATEs only the patched column.
#[tokio::test]
async fn a_patch_on_an_absent_hash_is_laid_over_the_database_row_by_every_later_read() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("hwb");
    let table = wide_table(&db, 3).await;
    let cache = wide_cache(&table, &server.url(), &prefix, settings(60_000)).await;
    assert!(hash_of(&server.url(), &prefix, 1).await.is_empty());
    let written = cache
        .patch(&1, &fields(json!({ "c0": "patched", "n": 5 })))
        .await
        .expect("patch")
        .expect("row");
    assert_eq!(written.value["c0"], json!("patched"));
    assert_eq!(written.value["n"], json!(5));
    assert_eq!(written.value["c1"], Value::Null);
    let row = db_row(&db, &table, 1).await.expect("row");
    assert_eq!(row["c0"], Value::Null, "not flushed yet");

    cache.invalidate(&1).await.expect("invalidate");
    assert!(hash_of(&server.url(), &prefix, 1).await.is_empty());
    sqlx::query(&format!(
        "UPDATE {table} SET c1 = 'behind', c0 = 'old' WHERE id = 1"
    ))
    .execute(&db.admin)
    .await
    .expect("update behind");
    let seen = cache.get(&1).await.expect("get").value.expect("row");
    assert_eq!(seen["c0"], json!("patched"), "the pending field wins");
    assert_eq!(seen["n"], json!(5));
    assert_eq!(seen["c1"], json!("behind"), "the rest is the database's");
    let stored = hash_of(&server.url(), &prefix, 1).await;
    assert!(stored.contains(&("c0".to_owned(), "patched".to_owned())));
    assert!(stored.contains(&("c1".to_owned(), "behind".to_owned())));

    cache.close(Duration::from_secs(10)).await.expect("close");
    let row = db_row(&db, &table, 1).await.expect("row");
    assert_eq!(
        (&row["c0"], &row["c1"], &row["n"]),
        (&json!("patched"), &json!("behind"), &json!(5)),
        "an UPDATE of the patched columns only"
    );
    let again = cache.get(&1).await.expect("get").value.expect("row");
    assert_eq!(*again, row);
    db.drop().await;
}

/// A patch whose row is deleted before the flush is never silently
/// dropped: it goes to the dead letters ("no row to update") and no row
/// is created; a patch the database refuses (a CHECK) goes there too; the
/// other keys of the same batches land.
#[tokio::test]
async fn a_patch_whose_row_is_gone_or_refused_goes_to_the_dead_letters_and_the_rest_lands() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("hwb");
    let table = wide_table(&db, 20).await;
    let cache = wide_cache(&table, &server.url(), &prefix, settings(60_000)).await;
    for id in 0..20_i64 {
        let n = if id == 5 { -1 } else { id };
        cache
            .patch(&id, &fields(json!({ "c2": format!("v{id}"), "n": n })))
            .await
            .expect("patch")
            .expect("row");
    }
    // A patch of an id the database has no row of answers "no such row"
    // and leaves nothing to flush (no dead letter, no row).
    assert!(cache
        .patch(&99, &fields(json!({ "c2": "nobody" })))
        .await
        .expect("patch")
        .is_none());
    sqlx::query(&format!("DELETE FROM {table} WHERE id = 3"))
        .execute(&db.admin)
        .await
        .expect("delete behind");
    cache.close(Duration::from_secs(10)).await.expect("close");
    let letters = cache.dead_letters().await.expect("dead letters");
    let mut ids: Vec<&str> = letters.iter().map(|l| l.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["3", "5"], "{letters:?}");
    let gone = letters.iter().find(|l| l.id == "3").expect("3");
    assert!(gone.error.contains("no row to update"), "{}", gone.error);
    let refused = letters.iter().find(|l| l.id == "5").expect("5");
    assert_eq!(refused.code.as_deref(), Some("23514"), "{refused:?}");
    assert_eq!(db_row(&db, &table, 3).await, None, "no row created");
    assert_eq!(db_row(&db, &table, 99).await, None, "no row created");
    for id in (0..20_i64).filter(|id| *id != 3 && *id != 5) {
        let row = db_row(&db, &table, id).await.expect("row");
        assert_eq!(
            (&row["c2"], &row["n"]),
            (&json!(format!("v{id}")), &json!(id))
        );
    }
    // Not served any more: reads answer the database.
    assert_eq!(cache.get(&3).await.expect("get").value, None);
    let five = cache.get(&5).await.expect("get").value.expect("row");
    assert_eq!((&five["c2"], &five["n"]), (&Value::Null, &json!(0)));
    let stats = cache.write_back_stats().expect("stats");
    assert_eq!(stats.dead_lettered, 2, "{stats:?}");
    db.drop().await;
}

/// A `put` replaces the whole hash; a later patch lays a field over it;
/// the flush upserts the row with the patch, and a delete is a tombstone
/// that later patches do not revive.
#[tokio::test]
async fn a_put_then_patches_flush_as_one_upsert_and_a_delete_stops_patches() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("hwb");
    let table = wide_table(&db, 0).await;
    let cache = wide_cache(&table, &server.url(), &prefix, settings(60_000)).await;
    let row = json!({ "id": 1, "c0": "put", "c1": "x", "n": 1 });
    cache.put(&1, &row).await.expect("put");
    let patched = cache
        .patch(&1, &fields(json!({ "c1": "patched" })))
        .await
        .expect("patch")
        .expect("row");
    assert_eq!(patched.value["c0"], json!("put"));
    assert_eq!(patched.value["c1"], json!("patched"));
    cache
        .put(&2, &json!({ "id": 2, "n": 2 }))
        .await
        .expect("put");
    assert!(cache.delete(&2).await.expect("delete"));
    assert!(
        cache
            .patch(&2, &fields(json!({ "c0": "late" })))
            .await
            .expect("patch")
            .is_none(),
        "a deleted row takes no patch"
    );
    assert_eq!(cache.get(&2).await.expect("get").value, None);
    cache.close(Duration::from_secs(10)).await.expect("close");
    let stored = db_row(&db, &table, 1).await.expect("row");
    assert_eq!(
        (&stored["c0"], &stored["c1"]),
        (&json!("put"), &json!("patched"))
    );
    assert_eq!(db_row(&db, &table, 2).await, None);
    let stats = cache.write_back_stats().expect("stats");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    db.drop().await;
}

/// Many rounds of a patch racing a read that finds no hash: the read
/// never answers a row without a patch acknowledged before it began.
#[tokio::test]
async fn a_read_racing_patches_of_an_absent_hash_never_goes_back_in_time() {
    let db = Db::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("hwb");
    let table = wide_table(&db, 1).await;
    let writer = Arc::new(wide_cache(&table, &server.url(), &prefix, settings(60_000)).await);
    let reader = wide_cache(&table, &server.url(), &prefix, settings(60_000)).await;
    for round in 0..200_i64 {
        reader.invalidate(&0).await.expect("invalidate");
        let w = Arc::clone(&writer);
        let patch = tokio::spawn(async move {
            w.patch(&0, &fields(json!({ "n": round })))
                .await
                .expect("patch")
        });
        let during = reader.get(&0).await.expect("get").value.expect("row");
        let n = during["n"].as_i64().expect("n");
        assert!(n >= round - 1, "round {round}: read {n}");
        patch.await.expect("task");
        let after = reader.get(&0).await.expect("get").value.expect("row");
        assert_eq!(after["n"], json!(round), "round {round}");
    }
    writer.close(Duration::from_secs(10)).await.expect("close");
    db.drop().await;
}
