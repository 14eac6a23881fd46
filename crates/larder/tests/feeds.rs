//! Cached feeds (`FeedCache`) over a real PostgreSQL table, on the real
//! Redis and on the memory store: pages in order, `max_len` and database
//! pages, appends at the head or a reload, deletes, one load per expiry
//! across instances, and concurrent appenders that converge.

use larder_test_support as support;

use larder::store::Store;
use larder::{CollectionOutcome, FeedCache, FeedSource, SqlFeedSource, SqlPool};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::collections::Counted;

/// A PostgreSQL schema of the test's own with `posts (id, user_id,
/// created_at, body)` and the index of the feed's order.
struct Pg(support::collections::PgSchema);

impl std::ops::Deref for Pg {
    type Target = support::collections::PgSchema;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Pg {
    async fn new() -> Pg {
        Pg(support::collections::PgSchema::new("feeds", |schema| {
            vec![
                format!(
                    "CREATE TABLE {schema}.posts (id bigserial PRIMARY KEY, user_id bigint NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now(), body text NOT NULL)"
                ),
                format!("CREATE INDEX ON {schema}.posts (user_id, created_at DESC, id DESC)"),
            ]
        })
        .await)
    }

    async fn source(&self) -> SqlFeedSource {
        SqlFeedSource::builder(self.source_pool().await, &self.table("posts"))
            .owner("user_id")
            .item_key("id")
            .order(["created_at desc", "id desc"])
            .columns(["id", "body"])
            .build()
            .await
            .expect("feed source")
    }

    /// Inserts posts `created_at` = epoch + `at` seconds.
    async fn insert(&self, user: i64, at: i64, body: &str) -> i64 {
        sqlx::query_scalar(&format!(
            "INSERT INTO {}.posts (user_id, created_at, body)
             VALUES ($1, to_timestamp($2), $3) RETURNING id",
            self.schema
        ))
        .bind(user)
        .bind(at as f64)
        .bind(body)
        .fetch_one(&self.admin)
        .await
        .expect("insert")
    }

    /// The first `n` bodies of a user's feed, by the query's order.
    async fn bodies(&self, user: i64, n: i64) -> Vec<String> {
        sqlx::query_scalar(&format!(
            "SELECT body FROM {}.posts WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
            self.schema
        ))
        .bind(user)
        .bind(n)
        .fetch_all(&self.admin)
        .await
        .expect("select")
    }
}

async fn store(kind: &str) -> Arc<dyn Store> {
    match kind {
        "redis" => support::redis_store().await,
        _ => larder::store::connect("memory://").await.expect("memory"),
    }
}

async fn feed(
    store: Arc<dyn Store>,
    prefix: &str,
    source: impl FeedSource,
    max_len: u64,
) -> FeedCache {
    FeedCache::builder()
        .prefix(prefix)
        .name("user_posts")
        .store(store)
        .source(source)
        .max_len(max_len)
        .build()
        .await
        .expect("feed")
}

fn bodies(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r).expect("json");
            v["body"].as_str().expect("body").to_owned()
        })
        .collect()
}

fn row(body: &str) -> Map<String, Value> {
    match json!({ "body": body }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

async fn pages_appends_and_deletes(kind: &str) {
    let pg = Pg::new().await;
    for i in 0..5 {
        pg.insert(1, 100 + i, &format!("p{i}")).await;
    }
    let f = feed(
        store(kind).await,
        &support::unique("f"),
        pg.source().await,
        4,
    )
    .await;

    let p = f.page("1", 0, 2).await.expect("page");
    assert_eq!(p.outcome, CollectionOutcome::Miss);
    assert_eq!(
        (bodies(&p.value.items), p.value.more),
        (vec!["p4".to_owned(), "p3".to_owned()], true)
    );
    let p = f.page("1", 2, 1).await.expect("page");
    assert_eq!(
        (bodies(&p.value.items), p.outcome),
        (vec!["p2".to_owned()], CollectionOutcome::Hit)
    );
    // Past max_len of a feed that is not complete: from the database.
    let p = f.page("1", 3, 2).await.expect("page");
    assert_eq!(p.outcome, CollectionOutcome::Database);
    assert_eq!(
        (bodies(&p.value.items), p.value.more),
        (vec!["p1".to_owned(), "p0".to_owned()], false)
    );

    // An owner with no items: a cached, complete, empty feed.
    let e = f.page("2", 0, 10).await.expect("empty");
    assert!(e.value.items.is_empty() && !e.value.more);
    assert_eq!(
        f.page("2", 0, 10).await.expect("empty").outcome,
        CollectionOutcome::Hit
    );

    // An append that sorts first (created_at now) lands at the head of the cached list.
    let stored = f.append("1", row("new")).await.expect("append");
    assert_eq!(bodies(&[stored]), ["new"]);
    let p = f.page("1", 0, 4).await.expect("page");
    assert_eq!(
        p.outcome,
        CollectionOutcome::Hit,
        "the cached list was updated"
    );
    assert_eq!(bodies(&p.value.items), pg.bodies(1, 4).await);
    // Into the empty cached feed too.
    f.append("2", row("first")).await.expect("append");
    let p = f.page("2", 0, 10).await.expect("page");
    assert_eq!(
        (bodies(&p.value.items), p.outcome),
        (vec!["first".to_owned()], CollectionOutcome::Hit)
    );

    // An append that does not sort first (an old created_at): the list goes.
    let mut old = row("old");
    old.insert("created_at".into(), json!("1970-01-01T00:00:50Z"));
    f.append("1", old).await.expect("append");
    let p = f.page("1", 0, 4).await.expect("page");
    assert_eq!(p.outcome, CollectionOutcome::Miss, "reloaded");
    assert_eq!(bodies(&p.value.items), pg.bodies(1, 4).await);

    // The owner column, if given, must be the path's owner.
    let mut other = row("x");
    other.insert("user_id".into(), json!(9));
    let e = f.append("1", other).await.expect_err("another owner");
    assert!(e.is_bad_input(), "{e}");

    // Delete from a complete feed: removed in place.
    let p = f.page("2", 0, 10).await.expect("page");
    let id = serde_json::from_str::<Value>(&p.value.items[0]).expect("json")["id"].to_string();
    assert!(f.delete("2", &id).await.expect("delete"));
    assert!(!f.delete("2", &id).await.expect("delete again"));
    let p = f.page("2", 0, 10).await.expect("page");
    assert_eq!(
        (p.value.items.len(), p.outcome),
        (0, CollectionOutcome::Hit)
    );
    // Delete from an incomplete feed: the list goes.
    let head =
        serde_json::from_str::<Value>(&f.page("1", 0, 1).await.expect("page").value.items[0])
            .expect("json")["id"]
            .to_string();
    assert!(f.delete("1", &head).await.expect("delete"));
    let p = f.page("1", 0, 4).await.expect("page");
    assert_eq!(p.outcome, CollectionOutcome::Miss);
    assert_eq!(bodies(&p.value.items), pg.bodies(1, 4).await);
    pg.drop().await;
}

#[tokio::test]
async fn pages_appends_and_deletes_redis() {
    pages_appends_and_deletes("redis").await;
}

#[tokio::test]
async fn pages_appends_and_deletes_memory() {
    pages_appends_and_deletes("memory").await;
}

async fn one_load_per_expiry_across_instances(kind: &str) {
    let pg = Pg::new().await;
    pg.insert(3, 100, "a").await;
    let prefix = support::unique("f");
    let shared = store(kind).await;
    let source = Counted::new(pg.source().await, Duration::from_millis(150));
    let loads = source.loads.clone();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let s = if kind == "redis" {
            store(kind).await
        } else {
            shared.clone()
        };
        instances.push(feed(s, &prefix, source.clone(), 100).await);
    }
    let mut tasks = Vec::new();
    for i in 0..200 {
        let f = instances[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            f.page("3", 0, 20).await.expect("page").value.items.len()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 1);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load in all");
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_load_per_expiry_across_instances_redis() {
    one_load_per_expiry_across_instances("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_load_per_expiry_across_instances_memory() {
    one_load_per_expiry_across_instances("memory").await;
}

/// 2 instances × 8 writers append to the same 10 feeds while readers keep
/// them cached; then every cached feed equals the query's first max_len rows.
async fn concurrent_appends_converge(kind: &str) {
    let pg = Pg::new().await;
    let prefix = support::unique("f");
    let shared = store(kind).await;
    let max_len = 5u64;
    let mut instances = Vec::new();
    for _ in 0..2 {
        let s = if kind == "redis" {
            store(kind).await
        } else {
            shared.clone()
        };
        instances.push(feed(s, &prefix, pg.source().await, max_len).await);
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for (i, f) in instances.iter().enumerate() {
        let (f, done) = (f.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut n = i;
            while !done.load(Ordering::SeqCst) {
                f.page(&(n % 10).to_string(), 0, 3).await.expect("read");
                n += 1;
            }
        }));
    }
    let mut writers = Vec::new();
    for w in 0..16usize {
        let f = instances[w % 2].clone();
        writers.push(tokio::spawn(async move {
            for k in 0..20usize {
                let owner = (w * 7 + k * 3) % 10;
                f.append(&owner.to_string(), row(&format!("w{w}-{k}")))
                    .await
                    .expect("append");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.expect("reader");
    }
    let mut cached = 0;
    for owner in 0..10i64 {
        let want = pg.bodies(owner, max_len as i64).await;
        for f in &instances {
            let p = f
                .page(&owner.to_string(), 0, max_len as usize)
                .await
                .expect("page");
            if p.outcome == CollectionOutcome::Hit {
                cached += 1;
            }
            assert_eq!(bodies(&p.value.items), want, "feed of {owner}");
        }
    }
    assert!(cached > 0, "some feeds were cached when checked");
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_converge_redis() {
    concurrent_appends_converge("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_converge_memory() {
    concurrent_appends_converge("memory").await;
}

#[tokio::test]
async fn feed_order_is_checked_at_build() {
    let pg = Pg::new().await;
    let pool = SqlPool::connect(&support::pg_url(), 1).await.expect("pool");
    let t = format!("{}.posts", pg.schema);
    for (order, needle) in [
        (vec!["created_at desc"], "must end with the item key"),
        (vec!["body sideways", "id desc"], "asc"),
        (vec!["nope desc", "id desc"], "not found"),
    ] {
        let e = SqlFeedSource::builder(pool.clone(), &t)
            .owner("user_id")
            .order(order.clone())
            .build()
            .await
            .expect_err("refused");
        assert!(e.to_string().contains(needle), "{order:?}: {e}");
    }
    pg.drop().await;
}

#[tokio::test]
async fn change_notifications_invalidate_feeds_and_purge_clears_them() {
    let pg = Pg::new().await;
    pg.insert(1, 100, "one").await;
    let id_two = pg.insert(2, 100, "two").await;
    let source = pg.source().await;
    let channel = source.install_change_triggers().await.expect("triggers");
    let f = feed(
        support::redis_store().await,
        &support::unique("f"),
        source,
        10,
    )
    .await;
    let listener = larder::ChangeListener::builder()
        .subscribe(channel, Arc::new(f.clone()))
        .application_name(&support::unique("feeds_cdc"))
        .start()
        .await
        .expect("listener");
    let first_page = |owner: &'static str| {
        let f = f.clone();
        async move { bodies(&f.page(owner, 0, 10).await.expect("page").value.items) }
    };
    assert_eq!(first_page("1").await, ["one"]);
    assert_eq!(
        f.page("1", 0, 10).await.expect("page").outcome,
        CollectionOutcome::Hit
    );
    assert_eq!(first_page("2").await, ["two"]);

    // A plain SQL insert invalidates its owner's feed.
    pg.insert(1, 200, "later").await;
    support::eventually("owner 1's feed shows the insert", || async {
        first_page("1").await == ["later", "one"]
    })
    .await;
    // A row moved to another owner leaves one feed and joins the other.
    sqlx::query(&format!(
        "UPDATE {}.posts SET user_id = 1 WHERE id = $1",
        pg.schema
    ))
    .bind(id_two)
    .execute(&pg.admin)
    .await
    .expect("move");
    support::eventually("the moved row is in owner 1's feed only", || async {
        first_page("1").await == ["later", "two", "one"] && first_page("2").await.is_empty()
    })
    .await;

    // purge: every owner's feed is read anew.
    assert_eq!(
        f.page("1", 0, 10).await.expect("page").outcome,
        CollectionOutcome::Hit
    );
    assert!(f.purge().await.expect("purge") >= 2);
    assert_eq!(
        f.page("1", 0, 10).await.expect("page").outcome,
        CollectionOutcome::Miss
    );
    listener.close().await;
    pg.drop().await;
}

/// A meta whose list was evicted alone is a miss (then a load), never an
/// empty page: the read checks the value key in the same transaction.
#[tokio::test]
async fn a_feed_whose_value_was_evicted_is_a_miss_redis() {
    let pg = Pg::new().await;
    for i in 0..3 {
        pg.insert(1, 100 + i, &format!("p{i}")).await;
    }
    let prefix = support::unique("f");
    let f = feed(store("redis").await, &prefix, pg.source().await, 10).await;
    let want = vec!["p2".to_owned(), "p1".to_owned(), "p0".to_owned()];
    assert_eq!(
        bodies(&f.page("1", 0, 5).await.expect("load").value.items),
        want
    );
    let hit = f.page("1", 0, 5).await.expect("hit");
    assert_eq!(hit.outcome, CollectionOutcome::Hit);

    assert_eq!(support::collections::evict_values(&prefix).await, 1);
    let after = f.page("1", 0, 5).await.expect("page");
    assert_eq!(
        (bodies(&after.value.items), after.outcome),
        (want, CollectionOutcome::Miss)
    );
}
