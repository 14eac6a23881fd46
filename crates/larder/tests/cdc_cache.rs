//! Change notifications feeding real caches: rows changed with plain SQL on
//! a connection that knows nothing of larder are served fresh by two cache
//! instances (each with a near cache, separate Redis connections), through
//! updates, key changes, deletes, truncates and a listener gap.

use larder_test_support as support;

use larder::source::{ChangeListener, SqlPool, SqlSource};
use larder::{Cache, NearOptions};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: i64,
    name: String,
}

async fn instance(table: &str, prefix: &str) -> Cache<i64, Item> {
    let pool = SqlPool::connect(&support::pg_url(), 2).await.expect("pool");
    let source = SqlSource::builder(pool, table)
        .entity("items")
        .build()
        .await
        .expect("source");
    Cache::builder()
        .prefix(prefix)
        .entity("items")
        .store(support::redis_store().await)
        .source(source)
        .near(NearOptions {
            capacity: 1_000,
            ttl: Duration::from_secs(60),
        })
        .ttl(Duration::from_secs(600))
        .early_refresh(0.0)
        .build()
        .await
        .expect("cache")
}

/// Polls until every instance reads `want` for `id`, up to 20 s.
async fn until_all_read(caches: &[&Cache<i64, Item>], id: i64, want: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut all = true;
        for cache in caches {
            let got = cache.get(&id).await.expect("get");
            all &= got.value.as_ref().map(|v| v.name.as_str()) == want;
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "id {id} never read as {want:?} everywhere"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn exec(db: &PgPool, sql: &str) {
    sqlx::query(sql).execute(db).await.expect(sql);
}

#[tokio::test]
async fn rows_changed_with_plain_sql_are_served_fresh_by_every_instance() {
    let schema = support::unique("cdcc");
    let db = support::pg_pool(2).await;
    exec(&db, &format!("CREATE SCHEMA {schema}")).await;
    let table = format!("{schema}.items");
    exec(
        &db,
        &format!("CREATE TABLE {table} (id bigint PRIMARY KEY, name text NOT NULL)"),
    )
    .await;
    exec(
        &db,
        &format!("INSERT INTO {table} VALUES (1, 'one'), (2, 'two'), (3, 'three')"),
    )
    .await;

    let prefix = support::unique("cdcc");
    let (a, b) = (
        instance(&table, &prefix).await,
        instance(&table, &prefix).await,
    );
    let pool = SqlPool::connect(&support::pg_url(), 2).await.expect("pool");
    let source = SqlSource::builder(pool, &table)
        .entity("items")
        .build()
        .await
        .expect("source");
    let channel = source.install_change_triggers().await.expect("triggers");
    let app = support::unique("cdcc_listener");
    let listener = ChangeListener::builder()
        .subscribe(channel, Arc::new(a.clone()))
        .application_name(&app)
        .start()
        .await
        .expect("listener");

    // Cached everywhere (Redis and both near caches).
    for id in 1..=3 {
        until_all_read(
            &[&a, &b],
            id,
            Some(["one", "two", "three"][id as usize - 1]),
        )
        .await;
    }

    exec(
        &db,
        &format!("UPDATE {table} SET name = 'uno' WHERE id = 1"),
    )
    .await;
    until_all_read(&[&a, &b], 1, Some("uno")).await;

    exec(&db, &format!("UPDATE {table} SET id = 20 WHERE id = 2")).await;
    until_all_read(&[&a, &b], 2, None).await;
    until_all_read(&[&a, &b], 20, Some("two")).await;

    exec(&db, &format!("DELETE FROM {table} WHERE id = 3")).await;
    until_all_read(&[&a, &b], 3, None).await;

    // A gap: the listener's connection is cut and a row changes meanwhile.
    exec(&db, &format!("INSERT INTO {table} VALUES (4, 'four')")).await;
    until_all_read(&[&a, &b], 4, Some("four")).await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app)
    .execute(&db)
    .await
    .expect("terminate the listener");
    exec(
        &db,
        &format!("UPDATE {table} SET name = 'quattro' WHERE id = 4"),
    )
    .await;
    until_all_read(&[&a, &b], 4, Some("quattro")).await;
    assert!(listener.stats().gaps >= 1, "{:?}", listener.stats());

    exec(&db, &format!("TRUNCATE {table}")).await;
    until_all_read(&[&a, &b], 1, None).await;
    until_all_read(&[&a, &b], 20, None).await;
    until_all_read(&[&a, &b], 4, None).await;

    listener.close().await;
    exec(&db, &format!("DROP SCHEMA {schema} CASCADE")).await;
}
