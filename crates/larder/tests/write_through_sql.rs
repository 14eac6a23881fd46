//! Write policies over a real PostgreSQL table and the real Redis: the
//! cached row is the `RETURNING` row, and concurrent writers on separate
//! connections converge on the database's last committed row.

use larder_test_support as support;

use larder::{Cache, CacheWrite, Outcome, SqlPool, SqlSource, WritePolicy};
use std::sync::Arc;
use std::time::Duration;
use support::accounts::{account, Account};

/// The accounts fixture, with a cache builder for its table.
struct Db(support::accounts::Db);

impl std::ops::Deref for Db {
    type Target = support::accounts::Db;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Db {
    async fn new() -> Db {
        Db(support::accounts::Db::new().await)
    }

    async fn cache(&self, prefix: &str, policy: WritePolicy) -> Cache<i64, Account> {
        let pool = SqlPool::connect(&support::pg_url(), 3).await.expect("pool");
        let source = SqlSource::builder(pool, &format!("{}.accounts", self.schema))
            .entity("accounts")
            .build()
            .await
            .expect("source");
        Cache::builder()
            .prefix(prefix)
            .entity("accounts")
            .store(support::redis_store().await)
            .source(source)
            .write_policy(policy)
            .early_refresh(0.0)
            .build()
            .await
            .expect("cache")
    }

    async fn balance(&self, id: i64) -> i64 {
        self.row(id).await.expect("row").1
    }

    async fn drop(self) {
        self.0.drop().await;
    }
}

#[tokio::test]
async fn the_cached_row_is_the_returning_row() {
    let db = Db::new().await;
    let cache = db.cache(&support::unique("wt"), WritePolicy::Through).await;
    let written = cache.put(&1, &account(1, "ada", 10)).await.expect("put");
    assert_eq!(written.cache, CacheWrite::Updated);
    let expected = Account {
        status: Some("new".into()),
        owner_upper: Some("ADA".into()),
        ..account(1, "ada", 10)
    };
    assert_eq!(
        *written.value, expected,
        "default and trigger-set columns come back"
    );
    let got = cache.get(&1).await.expect("get");
    assert_eq!(
        (got.outcome, got.value.as_deref()),
        (Outcome::Hit, Some(&expected))
    );
    let err = cache
        .put(
            &2,
            &Account {
                owner: "x".into(),
                ..account(3, "x", 1)
            },
        )
        .await
        .expect_err("key differs from id");
    assert!(err.is_bad_input(), "{err}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_converge() {
    let db = Db::new().await;
    let prefix = support::unique("wt");
    // Two instances with their own Redis and PostgreSQL connections.
    let caches = [
        db.cache(&prefix, WritePolicy::Through).await,
        db.cache(&prefix, WritePolicy::Through).await,
    ];
    for round in 0..5 {
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let cache = caches[w % 2].clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    for i in 0..500i64 {
                        let key = (i * 7 + w as i64) % 10;
                        let value = (round * 1_000_000) + (w as i64) * 10_000 + i;
                        cache
                            .put(&key, &account(key, "w", value))
                            .await
                            .expect("put");
                        if i % 3 == 0 {
                            cache.get(&key).await.expect("get");
                        }
                    }
                    // Synchronised bursts on single keys.
                    for burst in 0..20i64 {
                        tokio::time::timeout(Duration::from_secs(30), barrier.wait())
                            .await
                            .expect("a writer stopped before the burst");
                        let key = burst % 10;
                        let value = round * 1_000_000 + 900_000 + burst * 10 + w as i64;
                        cache
                            .put(&key, &account(key, "w", value))
                            .await
                            .expect("put");
                        cache.get(&key).await.expect("get");
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.expect("writer");
        }
        for key in 0..10 {
            let in_db = db.balance(key).await;
            for cache in &caches {
                let got = cache.get(&key).await.expect("get");
                assert_eq!(
                    got.value.map(|a| a.balance),
                    Some(in_db),
                    "round {round} key {key}: cache == database"
                );
            }
        }
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_of_different_columns_both_land() {
    let db = Db::new().await;
    let prefix = support::unique("wt");
    let a = db.cache(&prefix, WritePolicy::Through).await;
    let b = db.cache(&prefix, WritePolicy::Through).await;
    a.put(&1, &account(1, "ada", 10)).await.expect("put");
    for round in 0..20i64 {
        let owner = serde_json::json!({"owner": format!("owner {round}")});
        let balance = serde_json::json!({"balance": round});
        let (x, y) = tokio::join!(
            a.patch(&1, owner.as_object().expect("object")),
            b.patch(&1, balance.as_object().expect("object"))
        );
        assert!(x.expect("patch").is_some() && y.expect("patch").is_some());
        for cache in [&a, &b] {
            let got = cache.get(&1).await.expect("get").value.expect("row");
            assert_eq!(
                (got.owner.as_str(), got.balance),
                (format!("owner {round}").as_str(), round),
                "round {round}"
            );
        }
    }
    let missing = serde_json::json!({"balance": 1});
    assert!(a
        .patch(&99, missing.as_object().expect("object"))
        .await
        .expect("patch")
        .is_none());
    let bad = serde_json::json!({"balance": "lots"});
    let err = a
        .patch(&1, bad.as_object().expect("object"))
        .await
        .expect_err("wrong type");
    assert!(err.is_bad_input(), "{err}");
    db.drop().await;
}
