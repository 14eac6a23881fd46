//! Write-back into MariaDB (`LARDER_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`), on a durable `redis-server` of the
//! test's own: flushes land as the `RETURNING` row, a row the database
//! refuses (a CHECK constraint, a trigger's SIGNAL) is dead-lettered alone
//! with its error number while the rest of its batch lands, the fence
//! table stops a stalled flusher, and a lock wait fails a batch as a whole
//! (unavailable, retried) instead of dead-lettering it. A hash entity's
//! field patches flush as UPDATEs of their columns (the row read back in
//! the transaction); one whose row is gone, or that the database refuses,
//! is dead-lettered alone. Increments flush exactly into integer and
//! `decimal(p, s)` columns.

use larder_test_support as support;

use larder::source::{Fence, FlushBatch, Source};
use larder::{
    Cache, CacheWrite, Error, Representation, SqlPool, SqlSource, WriteBackOptions, WritePolicy,
};
use std::time::Duration;
use support::accounts::{account, Account};
use support::{mysql_url, RedisServer};

/// A database of the test's own with an `accounts` table: a default
/// (`status`), a trigger-set column (`owner_upper`), a CHECK constraint
/// (`balance_not_negative`) and a trigger that refuses the owner `blocked`.
struct Maria {
    admin: sqlx::MySqlPool,
    db: String,
}

impl Maria {
    async fn new() -> Maria {
        let db = support::unique("wbm");
        let admin = support::mysql_pool(2).await;
        for sql in [
            format!("CREATE DATABASE {db}"),
            format!(
                "CREATE TABLE {db}.accounts (id bigint PRIMARY KEY, owner varchar(40) NOT NULL,
                 balance bigint NOT NULL, status varchar(10) NOT NULL DEFAULT 'new', owner_upper text,
                 CONSTRAINT balance_not_negative CHECK (balance >= 0))"
            ),
            format!(
                "CREATE TRIGGER {db}.guard BEFORE INSERT ON {db}.accounts FOR EACH ROW BEGIN
                   IF NEW.owner = 'blocked' THEN
                     SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'owner blocked by policy';
                   END IF;
                   SET NEW.owner_upper = UPPER(NEW.owner);
                 END"
            ),
            format!(
                "CREATE TRIGGER {db}.guard_update BEFORE UPDATE ON {db}.accounts FOR EACH ROW
                 SET NEW.owner_upper = UPPER(NEW.owner)"
            ),
        ] {
            sqlx::raw_sql(&sql)
                .execute(&admin)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        Maria { admin, db }
    }

    fn table(&self) -> String {
        format!("{}.accounts", self.db)
    }

    async fn source(&self) -> SqlSource {
        let pool = SqlPool::connect(&mysql_url(), 3).await.expect("pool");
        SqlSource::builder(pool, &self.table())
            .entity("accounts")
            .build()
            .await
            .expect("source")
    }

    async fn count(&self) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", self.table()))
            .fetch_one(&self.admin)
            .await
            .expect("count")
    }

    async fn owner(&self, id: i64) -> Option<(String, String, String)> {
        sqlx::query_as(&format!(
            "SELECT CAST(owner AS CHAR), CAST(status AS CHAR), CAST(owner_upper AS CHAR) FROM {} WHERE id = ?",
            self.table()
        ))
        .bind(id)
        .fetch_optional(&self.admin)
        .await
        .expect("row")
    }

    async fn drop(self) {
        sqlx::raw_sql(&format!("DROP DATABASE {}", self.db))
            .execute(&self.admin)
            .await
            .expect("drop database");
    }
}

async fn cache(server: &RedisServer, source: SqlSource, prefix: &str) -> Cache<i64, Account> {
    cache_as(server, source, prefix, Representation::String).await
}

async fn cache_as(
    server: &RedisServer,
    source: SqlSource,
    prefix: &str,
    representation: Representation,
) -> Cache<i64, Account> {
    Cache::builder()
        .prefix(prefix)
        .entity("accounts")
        .shards(4)
        .representation(representation)
        .store(
            larder::store::connect_checked(&server.url())
                .await
                .expect("redis"),
        )
        .source(source)
        .write_policy(WritePolicy::Back(WriteBackOptions {
            max_delay: Duration::from_secs(60),
            flush_lease: Duration::from_secs(2),
            ..WriteBackOptions::default()
        }))
        .early_refresh(0.0)
        .build()
        .await
        .expect("cache")
}

#[tokio::test]
async fn flushes_land_and_refused_rows_are_dead_lettered_alone() {
    let m = Maria::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("wbm");
    let cache = cache(&server, m.source().await, &prefix).await;
    for id in 1..=20 {
        let (owner, balance) = match id {
            7 => ("blocked", 7),
            13 => ("fi", -1),
            _ => ("fi", id),
        };
        let written = cache
            .put(&id, &account(id, owner, balance))
            .await
            .expect("put (validation passes: CHECK and triggers are the database's)");
        assert_eq!(written.cache, CacheWrite::Queued);
    }
    cache
        .close(Duration::from_secs(20))
        .await
        .expect("close flushes");
    assert_eq!(m.count().await, 18, "every row but the two refused landed");
    assert_eq!(
        m.owner(1).await,
        Some(("fi".into(), "new".into(), "FI".into())),
        "the default and the trigger applied"
    );
    let mut letters = cache.dead_letters().await.expect("dead letters");
    letters.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        letters.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["13", "7"]
    );
    assert_eq!(letters[0].code.as_deref(), Some("4025"), "CHECK constraint");
    assert!(
        letters[0].error.contains("balance_not_negative"),
        "{}",
        letters[0].error
    );
    assert_eq!(letters[1].code.as_deref(), Some("1644"), "SIGNAL");
    assert!(
        letters[1].error.contains("owner blocked by policy"),
        "{}",
        letters[1].error
    );
    assert_eq!(letters[0].value.as_ref().map(|v| v.balance), Some(-1));
    assert_eq!(cache.write_back_stats().expect("stats").dead_lettered, 2);

    // Served again from the database after a restart: the landed rows as
    // stored, the refused ones not at all.
    let cache = self::cache(&server, m.source().await, &prefix).await;
    let read = cache.get(&2).await.expect("get");
    assert_eq!(
        read.value.as_ref().and_then(|v| v.owner_upper.clone()),
        Some("FI".into())
    );
    assert_eq!(cache.get(&13).await.expect("get").value, None);
    cache.close(Duration::from_secs(5)).await.expect("close");
    m.drop().await;
}

#[tokio::test]
async fn the_fence_stops_a_stalled_flusher() {
    let m = Maria::new().await;
    let source = m.source().await;
    let entity = format!("{}:accounts", support::unique("fence"));
    Source::<Account>::prepare_write_back(&source, &entity, 4)
        .await
        .expect("fence rows");
    // Idempotent.
    Source::<Account>::prepare_write_back(&source, &entity, 4)
        .await
        .expect("fence rows again");
    let fence = |epoch| Fence {
        entity: entity.clone(),
        shard: 1,
        epoch,
    };
    let newest = vec![("1".to_owned(), account(1, "newest", 3))];
    let flushed = Source::<Account>::flush(
        &source,
        FlushBatch {
            upserts: &newest,
            updates: &[],
            deletes: &[],
            fence: fence(1_000),
            statement_timeout: Duration::from_secs(2),
        },
    )
    .await
    .expect("the newer flush commits");
    assert_eq!(flushed.stored.len(), 1);
    assert_eq!(flushed.stored[0].1.owner_upper.as_deref(), Some("NEWEST"));
    let stale = vec![("1".to_owned(), account(1, "stale", 2))];
    let e = Source::<Account>::flush(
        &source,
        FlushBatch {
            upserts: &stale,
            updates: &[],
            deletes: &[],
            fence: fence(5),
            statement_timeout: Duration::from_secs(2),
        },
    )
    .await
    .expect_err("the stalled flush is fenced");
    assert!(
        matches!(
            e,
            Error::Fenced {
                epoch: 5,
                current: 1_000,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(m.owner(1).await.map(|r| r.0), Some("newest".into()));
    // The same epoch flushes again (a lease renewed), and a shard beyond the
    // prepared ones gets its row.
    let again = vec![("1".to_owned(), account(1, "again", 4))];
    for shard in [1, 9] {
        Source::<Account>::flush(
            &source,
            FlushBatch {
                upserts: &again,
                updates: &[],
                deletes: &[],
                fence: Fence {
                    entity: entity.clone(),
                    shard,
                    epoch: 1_000,
                },
                statement_timeout: Duration::from_secs(2),
            },
        )
        .await
        .expect("same epoch");
    }
    m.drop().await;
}

#[tokio::test]
async fn a_lock_wait_fails_the_batch_whole_as_unavailable() {
    let m = Maria::new().await;
    let source = m.source().await;
    let entity = format!("{}:accounts", support::unique("lock"));
    Source::<Account>::prepare_write_back(&source, &entity, 1)
        .await
        .expect("fence rows");
    sqlx::query(&format!(
        "INSERT INTO {} (id, owner, balance) VALUES (1, 'held', 1)",
        m.table()
    ))
    .execute(&m.admin)
    .await
    .expect("seed");
    // Another session holds the row.
    let mut holder = m.admin.begin().await.expect("begin");
    sqlx::query(&format!(
        "SELECT id FROM {} WHERE id = 1 FOR UPDATE",
        m.table()
    ))
    .execute(&mut *holder)
    .await
    .expect("lock");
    let rows = vec![
        ("1".to_owned(), account(1, "blocked-by-lock", 5)),
        ("2".to_owned(), account(2, "free", 5)),
    ];
    let e = Source::<Account>::flush(
        &source,
        FlushBatch {
            upserts: &rows,
            updates: &[],
            deletes: &[],
            fence: Fence {
                entity: entity.clone(),
                shard: 0,
                epoch: 1,
            },
            statement_timeout: Duration::from_secs(1),
        },
    )
    .await
    .expect_err("the lock wait times out");
    assert!(
        matches!(e, Error::SourceUnavailable { .. }),
        "1205 is unavailable: {e:?}"
    );
    holder.rollback().await.expect("release");
    assert_eq!(m.count().await, 1, "nothing of the batch committed");
    // Released, the same batch lands, and the session settings were reset.
    Source::<Account>::flush(
        &source,
        FlushBatch {
            upserts: &rows,
            updates: &[],
            deletes: &[],
            fence: Fence {
                entity,
                shard: 0,
                epoch: 1,
            },
            statement_timeout: Duration::from_secs(1),
        },
    )
    .await
    .expect("retried whole");
    assert_eq!(m.count().await, 2);
    m.drop().await;
}

#[tokio::test]
async fn hash_field_patches_flush_as_updates_and_gone_or_refused_rows_are_dead_lettered() {
    let m = Maria::new().await;
    let server = RedisServer::durable();
    let prefix = support::unique("wbm");
    let cache = cache_as(&server, m.source().await, &prefix, Representation::Hash).await;
    for id in 1..=10 {
        cache.put(&id, &account(id, "ann", id)).await.expect("put");
    }
    cache.close(Duration::from_secs(10)).await.expect("close");
    assert_eq!(m.count().await, 10);
    let cache = cache_as(&server, m.source().await, &prefix, Representation::Hash).await;
    for id in 1..=10_i64 {
        let patch = match id {
            4 => serde_json::json!({ "balance": -1 }),
            _ => serde_json::json!({ "owner": format!("bo{id}") }),
        };
        let written = cache
            .patch(&id, patch.as_object().expect("object"))
            .await
            .expect("patch")
            .expect("row");
        assert_eq!(written.cache, CacheWrite::Queued);
    }
    sqlx::query(&format!("DELETE FROM {} WHERE id = 7", m.table()))
        .execute(&m.admin)
        .await
        .expect("delete behind");
    cache.close(Duration::from_secs(10)).await.expect("close");
    for id in [1_i64, 2, 3, 5, 6, 8, 9, 10] {
        assert_eq!(
            m.owner(id).await,
            Some((format!("bo{id}"), "new".into(), format!("BO{id}"))),
            "row {id}: an UPDATE of the owner only, read back with its trigger's column"
        );
        let seen = cache.get(&id).await.expect("get").value.expect("row");
        assert_eq!(
            seen.owner_upper.as_deref(),
            Some(format!("BO{id}").as_str())
        );
    }
    assert_eq!(m.owner(7).await, None, "no row created");
    let mut letters = cache.dead_letters().await.expect("dead letters");
    letters.sort_by(|a, b| a.id.cmp(&b.id));
    let ids: Vec<&str> = letters.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["4", "7"], "{letters:?}");
    assert!(
        letters[1].error.contains("no row to update"),
        "{}",
        letters[1].error
    );
    assert_eq!(m.owner(4).await.map(|r| r.0), Some("ann".into()));
    m.drop().await;
}

/// Write-back increments flush into MariaDB exactly: an integer column's
/// delta bound as an integer, a `decimal(17, 2)` column's as exact decimal
/// text (`CAST(? AS DECIMAL(65, 30))`, never a double): 3 × 0.01 on
/// 123456789012678.01 lands as …678.04.
#[tokio::test]
async fn increments_flush_exactly_into_integer_and_decimal_columns() {
    let maria = Maria::new().await;
    let table = format!("{}.prices", maria.db);
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, views bigint NOT NULL DEFAULT 0,
         price decimal(17, 2) NOT NULL DEFAULT 0);
         INSERT INTO {table} (id, views, price) VALUES (1, 10, 123456789012678.01)"
    ))
    .execute(&maria.admin)
    .await
    .expect("table");
    let server = RedisServer::durable();
    let pool = SqlPool::connect(&mysql_url(), 2).await.expect("pool");
    let source = SqlSource::builder(pool, &table)
        .entity("prices")
        .build()
        .await
        .expect("source");
    let cache: Cache<i64, serde_json::Value> = Cache::builder()
        .prefix(support::unique("wbm"))
        .entity("prices")
        .representation(Representation::Hash)
        .store(
            larder::store::connect_checked(&server.url_with_long_timeouts())
                .await
                .expect("redis"),
        )
        .source(source)
        .write_policy(WritePolicy::Back(WriteBackOptions {
            max_delay: Duration::from_secs(60),
            ..WriteBackOptions::default()
        }))
        .build()
        .await
        .expect("cache");
    let cent: serde_json::Number = serde_json::from_str("0.01").expect("number");
    for _ in 0..3 {
        let w = cache.incr(&1, "views", &1.into()).await.expect("incr");
        assert!(w.expect("row").cache.is_queued());
        let w = cache.incr(&1, "price", &cent).await.expect("incr");
        assert!(w.expect("row").cache.is_queued());
    }
    cache.close(Duration::from_secs(10)).await.expect("close");
    let row: (i64, String) = sqlx::query_as(&format!(
        "SELECT views, CAST(price AS CHAR) FROM {table} WHERE id = 1"
    ))
    .fetch_one(&maria.admin)
    .await
    .expect("row");
    assert_eq!(row, (13, "123456789012678.04".to_owned()));
    maria.drop().await;
}
