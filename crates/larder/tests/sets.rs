//! Cached sets (`SetCache`) over real PostgreSQL and SQLite tables, on the
//! real Redis and on the memory store: membership, pages in one order in
//! Redis and in the database, cursors across a refill and across the
//! switch to database pages, the `max_members` fallback, one load per
//! expiry across instances, write-through that never creates a set, and
//! concurrent writers that converge.

use larder_test_support as support;

use larder::store::Store;
use larder::{CollectionOutcome, ErrorKind, SetCache, SetOrder, SetSource, SqlPool, SqlSetSource};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::collections::{Counted, Gated};

/// A PostgreSQL schema of the test's own with a `follows (user_id bigint,
/// follower text)` table (C-collation paging index) and an integer-member
/// `likes (post text, user_id bigint)` table.
struct Pg(support::collections::PgSchema);

impl std::ops::Deref for Pg {
    type Target = support::collections::PgSchema;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Pg {
    async fn new() -> Pg {
        Pg(support::collections::PgSchema::new("sets", |schema| {
            vec![
                format!(
                    "CREATE TABLE {schema}.follows (user_id bigint NOT NULL, follower text NOT NULL,
                     UNIQUE (user_id, follower))"
                ),
                format!("CREATE INDEX ON {schema}.follows (user_id, follower COLLATE \"C\")"),
                format!(
                    "CREATE TABLE {schema}.likes (post text NOT NULL, user_id bigint NOT NULL,
                     PRIMARY KEY (post, user_id))"
                ),
            ]
        })
        .await)
    }

    async fn source(&self, table: &str, owner: &str, member: &str) -> SqlSetSource {
        SqlSetSource::builder(self.source_pool().await, &self.table(table))
            .owner(owner)
            .member(member)
            .build()
            .await
            .expect("set source")
    }

    async fn follows(&self) -> SqlSetSource {
        self.source("follows", "user_id", "follower").await
    }

    async fn insert(&self, user: i64, followers: &[&str]) {
        for f in followers {
            sqlx::query(&format!(
                "INSERT INTO {}.follows (user_id, follower) VALUES ($1, $2)",
                self.schema
            ))
            .bind(user)
            .bind(*f)
            .execute(&self.admin)
            .await
            .expect("insert");
        }
    }

    async fn followers(&self, user: i64) -> BTreeSet<String> {
        sqlx::query_scalar(&format!(
            "SELECT follower FROM {}.follows WHERE user_id = $1",
            self.schema
        ))
        .bind(user)
        .fetch_all(&self.admin)
        .await
        .expect("select")
        .into_iter()
        .collect()
    }
}

async fn store(kind: &str) -> Arc<dyn Store> {
    match kind {
        "redis" => support::redis_store().await,
        _ => larder::store::connect("memory://").await.expect("memory"),
    }
}

async fn cache(store: Arc<dyn Store>, prefix: &str, source: impl SetSource, max: u64) -> SetCache {
    SetCache::builder()
        .prefix(prefix)
        .name("followers")
        .store(store)
        .source(source)
        .max_members(max)
        .build()
        .await
        .expect("set cache")
}

/// Every member of `owner`, page by page, with each page's outcome.
async fn all_pages(
    set: &SetCache,
    owner: &str,
    limit: usize,
) -> (Vec<String>, Vec<CollectionOutcome>) {
    let mut out = Vec::new();
    let mut outcomes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = set
            .members(owner, cursor.as_deref(), limit)
            .await
            .expect("page");
        outcomes.push(page.outcome);
        if page.value.cursor.is_some() {
            assert_eq!(
                page.value.members.len(),
                limit,
                "a page before the last is full"
            );
        }
        out.extend(page.value.members);
        match page.value.cursor {
            Some(c) => cursor = Some(c),
            None => return (out, outcomes),
        }
    }
}

/// Members chosen so that byte order differs from every locale's order.
const MIXED: [&str; 9] = ["b", "B", "a", "Z", "é", "10", "9", "a b", "_x"];

fn byte_order(members: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = members.iter().map(|s| s.to_string()).collect();
    v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    v
}

async fn membership_and_pages_in_byte_order(kind: &str) {
    let pg = Pg::new().await;
    pg.insert(1, &MIXED).await;
    let counted = Counted::new(pg.follows().await, Duration::ZERO);
    let set = cache(
        store(kind).await,
        &support::unique("s"),
        counted.clone(),
        1000,
    )
    .await;

    let first = set.contains("1", "é").await.expect("contains");
    assert_eq!(
        (first.value, first.outcome),
        (true, CollectionOutcome::Miss)
    );
    let again = set.contains("1", "é").await.expect("contains");
    assert_eq!((again.value, again.outcome), (true, CollectionOutcome::Hit));
    let absent = set.contains("1", "E").await.expect("contains");
    assert_eq!(
        (absent.value, absent.outcome),
        (false, CollectionOutcome::Hit)
    );
    assert_eq!(
        set.count("001").await.expect("count").value,
        9,
        "owner canonicalised"
    );

    let (members, outcomes) = all_pages(&set, "1", 2).await;
    assert_eq!(members, byte_order(&MIXED), "pages in byte order");
    assert!(outcomes.iter().all(|o| *o == CollectionOutcome::Hit));
    // The database's own pages are in the same order.
    let mut db_pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = counted
            .inner
            .page("1", after.as_deref(), 4)
            .await
            .expect("db page");
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        db_pages.extend(page);
    }
    assert_eq!(
        db_pages,
        byte_order(&MIXED),
        "the database pages in the same order"
    );
    assert_eq!(counted.loads.load(Ordering::SeqCst), 1, "one load");

    let empty = set.members("2", None, 10).await.expect("empty");
    assert_eq!(empty.value.count, 0);
    assert!(empty.value.members.is_empty() && empty.value.cursor.is_none());
    let empty = set.count("2").await.expect("count");
    assert_eq!(
        (empty.value, empty.outcome),
        (0, CollectionOutcome::Hit),
        "an empty set is cached"
    );

    let bad = set.contains("x", "a").await.expect_err("bad owner");
    assert_eq!(bad.kind(), ErrorKind::InvalidId);
    pg.drop().await;
}

#[tokio::test]
async fn membership_and_pages_in_byte_order_redis() {
    membership_and_pages_in_byte_order("redis").await;
}

#[tokio::test]
async fn membership_and_pages_in_byte_order_memory() {
    membership_and_pages_in_byte_order("memory").await;
}

/// A cursor taken from a cached page goes on after a refill (the set
/// changed in between) and after the owner grew past the cap (pages from
/// the database), skipping nothing and repeating nothing.
async fn cursors_survive_refill_and_the_switch_to_the_database(kind: &str) {
    let pg = Pg::new().await;
    let members: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    pg.insert(7, &refs).await;
    let counted = Counted::new(pg.follows().await, Duration::ZERO);
    let set = cache(
        store(kind).await,
        &support::unique("s"),
        counted.clone(),
        25,
    )
    .await;

    let p1 = set.members("7", None, 6).await.expect("page 1");
    assert_eq!(p1.outcome, CollectionOutcome::Miss);
    assert_eq!(p1.value.members, members[..6]);
    let cursor = p1.value.cursor.expect("more");
    // Refill: the owner is invalidated and a member before the cursor added.
    pg.insert(7, &["m00a"]).await;
    set.invalidate("7").await.expect("invalidate");
    let p2 = set.members("7", Some(&cursor), 6).await.expect("page 2");
    assert_eq!(p2.outcome, CollectionOutcome::Miss);
    assert_eq!(p2.value.members, members[6..12]);
    assert_eq!(p2.value.count, 21);
    let cursor = p2.value.cursor.expect("more");
    // The owner grows past the cap: pages now come from the database.
    let more: Vec<String> = (20..30).map(|i| format!("m{i:02}")).collect();
    let refs: Vec<&str> = more.iter().map(String::as_str).collect();
    pg.insert(7, &refs).await;
    set.invalidate("7").await.expect("invalidate");
    let p3 = set.members("7", Some(&cursor), 6).await.expect("page 3");
    assert_eq!(p3.outcome, CollectionOutcome::Database);
    assert_eq!(p3.value.members, members[12..18]);
    assert_eq!(p3.value.count, 31);
    let mut rest = Vec::new();
    let mut cursor = p3.value.cursor;
    while let Some(c) = cursor {
        let p = set.members("7", Some(&c), 6).await.expect("page");
        assert_eq!(p.outcome, CollectionOutcome::Database);
        rest.extend(p.value.members);
        cursor = p.value.cursor;
    }
    let expected: Vec<String> = members[18..].iter().chain(more.iter()).cloned().collect();
    assert_eq!(rest, expected);

    // Above the cap the count is cached: counts cost no query.
    let before = counted.db_reads.load(Ordering::SeqCst);
    for _ in 0..5 {
        let n = set.count("7").await.expect("count");
        assert_eq!((n.value, n.outcome), (31, CollectionOutcome::Database));
    }
    assert_eq!(
        counted.db_reads.load(Ordering::SeqCst),
        before,
        "count from the meta"
    );
    let yes = set.contains("7", "m25").await.expect("contains");
    assert_eq!(
        (yes.value, yes.outcome),
        (true, CollectionOutcome::Database)
    );
    assert!(!set.contains("7", "zz").await.expect("contains").value);
    pg.drop().await;
}

#[tokio::test]
async fn cursors_survive_refill_and_the_switch_to_the_database_redis() {
    cursors_survive_refill_and_the_switch_to_the_database("redis").await;
}

#[tokio::test]
async fn cursors_survive_refill_and_the_switch_to_the_database_memory() {
    cursors_survive_refill_and_the_switch_to_the_database("memory").await;
}

/// Integer members page numerically (2 before 10), in Redis (scores) and
/// in the database alike; a large set fills in chunks.
async fn integer_members_page_numerically(kind: &str) {
    let pg = Pg::new().await;
    let ids: Vec<i64> = (1..=2500).map(|i| i * 7 % 2503).collect();
    sqlx::query(&format!(
        "INSERT INTO {}.likes (post, user_id) SELECT 'p', unnest($1::int8[])",
        pg.schema
    ))
    .bind(&ids)
    .execute(&pg.admin)
    .await
    .expect("insert");
    let source = pg.source("likes", "post", "user_id").await;
    assert_eq!(source.order(), SetOrder::Integer);
    let set = cache(store(kind).await, &support::unique("s"), source, 10_000).await;
    let (members, _) = all_pages(&set, "p", 1000).await;
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    let expected: Vec<String> = sorted.iter().map(i64::to_string).collect();
    assert_eq!(members, expected, "numeric order, chunked fill complete");
    let hit = set.members("p", Some("9"), 3).await.expect("page");
    assert_eq!(hit.outcome, CollectionOutcome::Hit);
    assert_eq!(hit.value.members, ["10", "11", "12"]);
    assert!(
        set.contains("p", "0010").await.expect("contains").value,
        "member canonicalised"
    );
    pg.drop().await;
}

#[tokio::test]
async fn integer_members_page_numerically_redis() {
    integer_members_page_numerically("redis").await;
}

#[tokio::test]
async fn integer_members_page_numerically_memory() {
    integer_members_page_numerically("memory").await;
}

/// Two instances (separate store connections) × 100 concurrent readers of
/// a cold owner: one load in all.
async fn one_load_per_expiry_across_instances(kind: &str) {
    let pg = Pg::new().await;
    pg.insert(3, &["a", "b", "c"]).await;
    let prefix = support::unique("s");
    let shared = store(kind).await;
    let counted = Counted::new(pg.follows().await, Duration::from_millis(150));
    let mut instances = Vec::new();
    for _ in 0..2 {
        // Redis: a connection per instance; memory: one store shared.
        let store = if kind == "redis" {
            store(kind).await
        } else {
            shared.clone()
        };
        instances.push(cache(store, &prefix, counted.clone(), 100).await);
    }
    let mut tasks = Vec::new();
    for i in 0..200 {
        let set = instances[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            set.contains("3", "b").await.expect("contains").value
        }));
    }
    for t in tasks {
        assert!(t.await.expect("task"));
    }
    assert_eq!(counted.loads.load(Ordering::SeqCst), 1, "one load in all");
    let loads: u64 = instances.iter().map(|s| s.stats().loads).sum();
    assert_eq!(loads, 1);
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

/// Write-through: add answers whether it added, remove whether it
/// removed; a cached set is updated in place; an uncached owner's write
/// never creates its set.
async fn write_through_updates_or_leaves_uncached(kind: &str) {
    let pg = Pg::new().await;
    pg.insert(1, &["a"]).await;
    let counted = Counted::new(pg.follows().await, Duration::ZERO);
    let set = cache(
        store(kind).await,
        &support::unique("s"),
        counted.clone(),
        100,
    )
    .await;

    // Owner 2 is not cached: the write goes to the database only.
    assert!(set.add("2", "x").await.expect("add"), "added");
    assert!(
        !set.add("2", "x").await.expect("add again"),
        "already a member"
    );
    assert_eq!(set.stats().writes_applied, 0, "no set created");
    let read = set.members("2", None, 10).await.expect("read");
    assert_eq!(read.outcome, CollectionOutcome::Miss, "the next read loads");
    assert_eq!(read.value.members, ["x"]);

    // Owner 1 cached: updated in place.
    assert_eq!(set.count("1").await.expect("count").value, 1);
    assert!(set.add("1", "b").await.expect("add"));
    let hit = set.members("1", None, 10).await.expect("read");
    assert_eq!(hit.outcome, CollectionOutcome::Hit, "still cached");
    assert_eq!(hit.value.members, ["a", "b"]);
    assert_eq!(hit.value.count, 2);
    assert!(set.remove("1", "a").await.expect("remove"));
    assert!(
        !set.remove("1", "a").await.expect("remove again"),
        "not a member"
    );
    let hit = set.members("1", None, 10).await.expect("read");
    assert_eq!(
        (hit.outcome, hit.value.members),
        (CollectionOutcome::Hit, vec!["b".to_owned()])
    );
    assert_eq!(pg.followers(1).await, BTreeSet::from(["b".to_owned()]));
    assert_eq!(
        counted.loads.load(Ordering::SeqCst),
        2,
        "owners 1 and 2, once each"
    );

    // A cached set at its cap is deleted rather than grown past it.
    let small = cache(store(kind).await, &support::unique("s"), counted.clone(), 2).await;
    assert_eq!(small.count("1").await.expect("count").value, 1);
    assert!(small.add("1", "c").await.expect("add"));
    assert_eq!(
        small.count("1").await.expect("count").outcome,
        CollectionOutcome::Hit
    );
    assert!(small.add("1", "d").await.expect("add"));
    let after = small.count("1").await.expect("count");
    assert_eq!(
        (after.value, after.outcome),
        (3, CollectionOutcome::Database)
    );

    let bad = set.add("1", "").await.expect_err("empty member");
    assert_eq!(bad.kind(), ErrorKind::InvalidId);
    pg.drop().await;
}

#[tokio::test]
async fn write_through_updates_or_leaves_uncached_redis() {
    write_through_updates_or_leaves_uncached("redis").await;
}

#[tokio::test]
async fn write_through_updates_or_leaves_uncached_memory() {
    write_through_updates_or_leaves_uncached("memory").await;
}

/// 2 instances × 8 writers add and remove members of the same 10 sets
/// while readers keep the sets cached; afterwards every cached set and
/// every database set equals the acknowledged operations (each writer owns
/// its members, so each member's last acknowledged operation is known).
async fn concurrent_writers_converge(kind: &str) {
    let pg = Pg::new().await;
    let prefix = support::unique("s");
    let shared = store(kind).await;
    let mut instances = Vec::new();
    for _ in 0..2 {
        let store = if kind == "redis" {
            store(kind).await
        } else {
            shared.clone()
        };
        instances.push(cache(store, &prefix, pg.follows().await, 1000).await);
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for (i, set) in instances.iter().enumerate() {
        let (set, done) = (set.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !done.load(Ordering::SeqCst) {
                let owner = ((n + i as u64) % 10).to_string();
                set.members(&owner, None, 100).await.expect("read");
                n += 1;
            }
        }));
    }
    let mut writers = Vec::new();
    for w in 0..16usize {
        let set = instances[w % 2].clone();
        writers.push(tokio::spawn(async move {
            let mut last: BTreeMap<(u64, String), bool> = BTreeMap::new();
            let mut x = w as u64 * 7919 + 1;
            for _ in 0..60 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let owner = (x >> 33) % 10;
                let member = format!("w{w}-{}", (x >> 40) % 4);
                let add = !(x >> 50).is_multiple_of(3);
                if add {
                    set.add(&owner.to_string(), &member).await.expect("add");
                } else {
                    set.remove(&owner.to_string(), &member)
                        .await
                        .expect("remove");
                }
                last.insert((owner, member), add);
            }
            last
        }));
    }
    let mut expected: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for w in writers {
        for ((owner, member), present) in w.await.expect("writer") {
            if present {
                expected.entry(owner).or_default().insert(member);
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.expect("reader");
    }
    let mut cached = 0;
    for owner in 0..10u64 {
        let want = expected.get(&owner).cloned().unwrap_or_default();
        assert_eq!(
            pg.followers(owner as i64).await,
            want,
            "database set of {owner}"
        );
        for set in &instances {
            let (members, outcomes) = all_pages(set, &owner.to_string(), 100).await;
            if outcomes[0] == CollectionOutcome::Hit {
                cached += 1;
            }
            let got: BTreeSet<String> = members.into_iter().collect();
            assert_eq!(got, want, "cached set of {owner}");
            assert_eq!(
                set.count(&owner.to_string()).await.expect("count").value,
                want.len() as u64
            );
        }
    }
    assert!(cached > 0, "some sets were cached when checked");
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_converge_redis() {
    concurrent_writers_converge("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_converge_memory() {
    concurrent_writers_converge("memory").await;
}

/// The schema checks at build: a unique index on (owner, member), a
/// paging index in byte order, a member compared byte for byte.
#[tokio::test]
async fn schema_checks_at_build() {
    let pg = Pg::new().await;
    let s = &pg.schema;
    for sql in [
        format!("CREATE TABLE {s}.no_unique (o bigint NOT NULL, m text NOT NULL)"),
        format!("CREATE INDEX ON {s}.no_unique (o, m COLLATE \"C\")"),
        format!("CREATE TABLE {s}.no_c (o bigint NOT NULL, m text NOT NULL, UNIQUE (o, m))"),
        format!(
            "CREATE TABLE {s}.padded (o bigint NOT NULL, m char(5) NOT NULL, UNIQUE (o, m))"
        ),
        format!(
            "CREATE TABLE {s}.c_col (o bigint NOT NULL, m text COLLATE \"C\" NOT NULL, UNIQUE (o, m))"
        ),
    ] {
        sqlx::query(&sql).execute(&pg.admin).await.expect(&sql);
    }
    let pool = SqlPool::connect(&support::pg_url(), 1).await.expect("pool");
    for (table, needle) in [
        ("no_unique", "unique index"),
        ("no_c", "byte order"),
        ("padded", "byte for byte"),
    ] {
        let e = SqlSetSource::builder(pool.clone(), &format!("{s}.{table}"))
            .owner("o")
            .member("m")
            .build()
            .await
            .expect_err(table);
        assert!(matches!(e.kind(), ErrorKind::Schema(_)), "{table}: {e}");
        assert!(e.to_string().contains(needle), "{table}: {e}");
    }
    // A text column of collation "C": its unique index pages in byte order.
    SqlSetSource::builder(pool.clone(), &format!("{s}.c_col"))
        .owner("o")
        .member("m")
        .build()
        .await
        .expect("c_col");
    pg.drop().await;
}

/// SQLite: the same read-through and write-through, byte order by BINARY.
#[tokio::test]
async fn sqlite_sets_read_and_write_through() {
    let dir = support::temp_dir("sets");
    let url = format!("sqlite://{}", dir.join("sets.db").display());
    let pool = SqlPool::connect(&url, 2).await.expect("sqlite");
    let SqlPool::Sqlite(raw) = &pool else {
        panic!("sqlite pool")
    };
    for sql in [
        "CREATE TABLE visits (page TEXT NOT NULL, visitor TEXT NOT NULL, UNIQUE (page, visitor))",
        "INSERT INTO visits VALUES ('home', 'b'), ('home', 'B'), ('home', 'é'), ('home', 'a')",
    ] {
        sqlx::query(sql).execute(raw).await.expect(sql);
    }
    let source = SqlSetSource::builder(pool.clone(), "visits")
        .owner("page")
        .member("visitor")
        .build()
        .await
        .expect("source");
    let set = cache(store("redis").await, &support::unique("s"), source, 100).await;
    let (members, _) = all_pages(&set, "home", 3).await;
    assert_eq!(members, byte_order(&["b", "B", "é", "a"]));
    assert!(set.add("home", "c").await.expect("add"));
    assert!(!set.add("home", "c").await.expect("again"));
    let hit = set.count("home").await.expect("count");
    assert_eq!((hit.value, hit.outcome), (5, CollectionOutcome::Hit));
    assert!(set.remove("home", "B").await.expect("remove"));
    let (members, _) = all_pages(&set, "home", 3).await;
    assert_eq!(members, byte_order(&["b", "é", "a", "c"]));
    let bad = SqlSetSource::builder(pool, "missing")
        .build()
        .await
        .expect_err("no table");
    assert!(matches!(bad.kind(), ErrorKind::Schema(_)));
}

/// MariaDB: add tells "added" from "already there" (a locking read in the
/// add's transaction), members page in byte order under a `nopad_bin`
/// collation, and a case-insensitive member column is refused.
#[tokio::test]
async fn mariadb_sets_read_and_write_through() {
    let admin = support::mysql_pool(2).await;
    let table = support::unique("visits");
    let ci = format!("{table}_ci");
    for sql in [
        format!(
            "CREATE TABLE {table} (page BIGINT NOT NULL,
             visitor VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
             UNIQUE KEY (page, visitor))"
        ),
        format!("INSERT INTO {table} VALUES (1, 'b'), (1, 'B'), (1, 'é'), (1, 'a')"),
        format!(
            "CREATE TABLE {ci} (page BIGINT NOT NULL,
             visitor VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL,
             UNIQUE KEY (page, visitor))"
        ),
    ] {
        sqlx::query(&sql).execute(&admin).await.expect(&sql);
    }
    let pool = SqlPool::connect(&support::mysql_url(), 3)
        .await
        .expect("mariadb");
    let source = SqlSetSource::builder(pool.clone(), &table)
        .owner("page")
        .member("visitor")
        .build()
        .await
        .expect("source");
    let set = cache(store("redis").await, &support::unique("s"), source, 100).await;
    let (members, _) = all_pages(&set, "1", 3).await;
    assert_eq!(members, byte_order(&["b", "B", "é", "a"]));
    assert!(set.add("1", "c").await.expect("add"), "added");
    assert!(!set.add("1", "c").await.expect("again"), "already a member");
    assert!(
        set.add("1", "C").await.expect("add"),
        "another member than c"
    );
    let hit = set.count("1").await.expect("count");
    assert_eq!((hit.value, hit.outcome), (6, CollectionOutcome::Hit));
    assert!(set.remove("1", "B").await.expect("remove"));
    assert!(!set.remove("1", "B").await.expect("remove again"));
    let (members, outcomes) = all_pages(&set, "1", 10).await;
    assert_eq!(outcomes, [CollectionOutcome::Hit]);
    assert_eq!(members, byte_order(&["b", "é", "a", "c", "C"]));
    let refused = SqlSetSource::builder(pool, &ci)
        .owner("page")
        .member("visitor")
        .build()
        .await
        .expect_err("general_ci member");
    assert!(matches!(refused.kind(), ErrorKind::Schema(_)), "{refused}");
    for t in [&table, &ci] {
        sqlx::query(&format!("DROP TABLE {t}"))
            .execute(&admin)
            .await
            .expect("drop");
    }
}

/// Forced: a load reads the database, a write commits and ends, then the
/// load's fill runs: it is refused (the write voided the lease), so no set
/// older than the write is cached; the next read loads the new member.
async fn a_fill_older_than_a_write_is_refused(kind: &str) {
    let pg = Pg::new().await;
    pg.insert(1, &["a"]).await;
    let gated = Gated::new(pg.follows().await, 0);
    let set = cache(store(kind).await, &support::unique("s"), gated.clone(), 100).await;
    let reader = {
        let set = set.clone();
        tokio::spawn(async move { set.contains("1", "b").await.expect("read").value })
    };
    gated.loaded.notified().await;
    assert!(set.add("1", "b").await.expect("add"));
    gated.go.add_permits(1000);
    assert!(
        !reader.await.expect("reader"),
        "the read began before the add"
    );
    assert_eq!(set.stats().fills_refused, 1, "the stale fill was refused");
    let after = set.contains("1", "b").await.expect("read");
    assert_eq!(
        (after.value, after.outcome),
        (true, CollectionOutcome::Miss)
    );
    assert_eq!(
        set.contains("1", "b").await.expect("read").outcome,
        CollectionOutcome::Hit
    );
    pg.drop().await;
}

#[tokio::test]
async fn a_fill_older_than_a_write_is_refused_redis() {
    a_fill_older_than_a_write_is_refused("redis").await;
}

#[tokio::test]
async fn a_fill_older_than_a_write_is_refused_memory() {
    a_fill_older_than_a_write_is_refused("memory").await;
}

async fn purge_invalidates_every_owner_and_refuses_a_fill_in_flight(kind: &str) {
    let pg = Pg::new().await;
    for user in 1..=3 {
        pg.insert(user, &["a"]).await;
    }
    let store = store(kind).await;
    let prefix = support::unique("s");
    let gated = Gated::new(pg.follows().await, 1000);
    let set = cache(store.clone(), &prefix, gated.clone(), 100).await;
    // Another collection under the same prefix, not purged.
    let other = SetCache::builder()
        .prefix(&prefix)
        .name("followers-b")
        .store(store.clone())
        .source(pg.follows().await)
        .build()
        .await
        .expect("other set");
    for owner in ["1", "2"] {
        set.contains(owner, "a").await.expect("read");
        assert_eq!(
            set.contains(owner, "a").await.expect("read").outcome,
            CollectionOutcome::Hit
        );
    }
    other.contains("1", "a").await.expect("read");
    // A load of owner 3 in flight across the purge.
    gated.go.forget_permits(1000);
    let reader = {
        let set = set.clone();
        tokio::spawn(async move { set.contains("3", "a").await.expect("read") })
    };
    gated.loaded.notified().await;
    pg.insert(3, &["b"]).await;
    assert_eq!(
        set.purge().await.expect("purge"),
        3,
        "owners 1, 2 and 3 (its lease)"
    );
    gated.go.add_permits(1000);
    reader.await.expect("reader");
    assert_eq!(
        set.stats().fills_refused,
        1,
        "the fill begun before the purge was refused"
    );
    for owner in ["1", "2"] {
        assert_eq!(
            set.contains(owner, "a").await.expect("read").outcome,
            CollectionOutcome::Miss,
            "owner {owner} was purged"
        );
    }
    let three = set.contains("3", "b").await.expect("read");
    assert_eq!(
        (three.value, three.outcome),
        (true, CollectionOutcome::Miss)
    );
    assert_eq!(
        other.contains("1", "a").await.expect("read").outcome,
        CollectionOutcome::Hit,
        "another collection keeps its entries"
    );
    assert_eq!(set.purge().await.expect("purge"), 3);
    pg.drop().await;
}

#[tokio::test]
async fn purge_invalidates_every_owner_and_refuses_a_fill_in_flight_redis() {
    purge_invalidates_every_owner_and_refuses_a_fill_in_flight("redis").await;
}

#[tokio::test]
async fn purge_invalidates_every_owner_and_refuses_a_fill_in_flight_memory() {
    purge_invalidates_every_owner_and_refuses_a_fill_in_flight("memory").await;
}

#[tokio::test]
async fn change_notifications_invalidate_owners_and_moves_invalidate_both() {
    let pg = Pg::new().await;
    pg.insert(1, &["a"]).await;
    pg.insert(2, &["b"]).await;
    let source = pg.follows().await;
    let channel = source.install_change_triggers().await.expect("triggers");
    // Idempotent: a second install finds them in place.
    let again = source
        .install_change_triggers()
        .await
        .expect("triggers again");
    assert_eq!(channel.name(), again.name());
    let set = cache(
        support::redis_store().await,
        &support::unique("s"),
        source,
        100,
    )
    .await;
    let listener = larder::ChangeListener::builder()
        .subscribe(channel, Arc::new(set.clone()))
        .application_name(&support::unique("sets_cdc"))
        .start()
        .await
        .expect("listener");
    let cached = |owner: &'static str, member: &'static str| {
        let set = set.clone();
        async move {
            set.contains(owner, member).await.expect("read");
            set.contains(owner, member).await.expect("read")
        }
    };
    assert!(cached("1", "a").await.value);
    assert_eq!(cached("2", "b").await.outcome, CollectionOutcome::Hit);

    // A plain SQL insert invalidates its owner.
    pg.insert(1, &["x"]).await;
    support::eventually("owner 1 sees the inserted member", || async {
        set.contains("1", "x").await.expect("read").value
    })
    .await;
    // An UPDATE that moves a row to another owner invalidates both.
    assert!(!cached("2", "x").await.value);
    sqlx::query(&format!(
        "UPDATE {}.follows SET user_id = 2 WHERE follower = 'x'",
        pg.schema
    ))
    .execute(&pg.admin)
    .await
    .expect("move");
    support::eventually("owner 2 gains x and owner 1 loses it", || async {
        set.contains("2", "x").await.expect("read").value
            && !set.contains("1", "x").await.expect("read").value
    })
    .await;
    // A TRUNCATE purges every owner.
    assert!(cached("1", "a").await.value);
    sqlx::query(&format!("TRUNCATE {}.follows", pg.schema))
        .execute(&pg.admin)
        .await
        .expect("truncate");
    support::eventually("every owner is empty after the TRUNCATE", || async {
        set.count("1").await.expect("count").value == 0
            && set.count("2").await.expect("count").value == 0
    })
    .await;
    listener.close().await;
    pg.drop().await;
}

/// Past its TTL, inside the stale window, a set is served as it was
/// (`stale`) while one refresh, across two instances, loads it again;
/// past the window a read loads.
async fn a_stale_set_is_served_while_one_refresh_loads_it(kind: &str) {
    let pg = Pg::new().await;
    pg.insert(3, &["a", "b"]).await;
    let prefix = support::unique("s");
    let shared = store(kind).await;
    let clock = larder::ManualClock::new();
    let counted = Counted::new(pg.follows().await, Duration::from_millis(100));
    let mut instances = Vec::new();
    for _ in 0..2 {
        let store = if kind == "redis" {
            store(kind).await
        } else {
            shared.clone()
        };
        let set = SetCache::builder()
            .prefix(&prefix)
            .name("followers")
            .store(store)
            .source(counted.clone())
            .clock(Arc::new(clock.clone()))
            .ttl(Duration::from_secs(60))
            .stale(Duration::from_secs(30))
            .build()
            .await
            .expect("set cache");
        instances.push(set);
    }
    let first = instances[0].contains("3", "a").await.expect("read");
    assert_eq!(
        (first.outcome, first.value),
        (CollectionOutcome::Miss, true)
    );
    pg.insert(3, &["c"]).await; // behind the cache's back
    clock.advance(Duration::from_secs(61));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let set = instances[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let read = set.contains("3", "c").await.expect("read");
            (read.outcome, read.value)
        }));
    }
    let mut stale = 0;
    for t in tasks {
        match t.await.expect("task") {
            (CollectionOutcome::Stale, false) => stale += 1,
            (CollectionOutcome::Hit, true) => {}
            other => panic!("neither the stale set nor the refreshed one: {other:?}"),
        }
    }
    assert!(stale >= 1, "the first reads are answered stale at once");
    let served: u64 = instances.iter().map(|s| s.stats().stale).sum();
    assert_eq!(served, stale, "counted as stale");
    support::eventually("the refresh lands", || async {
        let read = instances[1].contains("3", "c").await.expect("read");
        (read.outcome, read.value) == (CollectionOutcome::Hit, true)
    })
    .await;
    assert_eq!(
        counted.loads.load(Ordering::SeqCst),
        2,
        "the first load and one refresh, for both instances"
    );
    // Past the TTL and the stale window: a read loads.
    clock.advance(Duration::from_secs(61 + 31));
    let read = instances[0].contains("3", "c").await.expect("read");
    assert_eq!((read.outcome, read.value), (CollectionOutcome::Miss, true));
    assert_eq!(counted.loads.load(Ordering::SeqCst), 3);
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_set_is_served_while_one_refresh_loads_it_redis() {
    a_stale_set_is_served_while_one_refresh_loads_it("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_set_is_served_while_one_refresh_loads_it_memory() {
    a_stale_set_is_served_while_one_refresh_loads_it("memory").await;
}

/// The read script is sent by its hash alone; a Redis that forgot it (a
/// restart, `SCRIPT FLUSH`) is sent the script once and the read is still
/// a hit, with the right answer.
#[tokio::test]
async fn a_hit_after_a_script_flush_loads_the_read_script_again() {
    let redis = support::RedisServer::start();
    let pg = Pg::new().await;
    pg.insert(1, &["ann", "bob"]).await;
    let counted = Counted::new(pg.follows().await, Duration::ZERO);
    let store = larder::store::connect_checked(&redis.url())
        .await
        .expect("store");
    let set = cache(store, &support::unique("s"), counted.clone(), 1000).await;
    assert!(set.contains("1", "ann").await.expect("load").value);

    let mut conn = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("SCRIPT FLUSH");

    let hit = set.contains("1", "bob").await.expect("contains");
    assert_eq!((hit.value, hit.outcome), (true, CollectionOutcome::Hit));
    let absent = set.contains("1", "cy").await.expect("contains");
    assert_eq!(
        (absent.value, absent.outcome),
        (false, CollectionOutcome::Hit)
    );
    assert_eq!(counted.loads.load(Ordering::SeqCst), 1, "no second load");
}

/// A meta whose sorted set was evicted alone is a miss (then a load), never
/// "not a member": the read checks the value key in the same snapshot.
#[tokio::test]
async fn a_set_whose_value_was_evicted_is_a_miss_redis() {
    let pg = Pg::new().await;
    pg.insert(1, &["ann", "bob"]).await;
    let counted = Counted::new(pg.follows().await, Duration::ZERO);
    let prefix = support::unique("s");
    let set = cache(store("redis").await, &prefix, counted.clone(), 1000).await;
    assert!(set.contains("1", "ann").await.expect("load").value);
    let hit = set.contains("1", "bob").await.expect("hit");
    assert_eq!((hit.value, hit.outcome), (true, CollectionOutcome::Hit));

    assert_eq!(support::collections::evict_values(&prefix).await, 1);
    let loads = counted.loads.load(std::sync::atomic::Ordering::SeqCst);
    let after = set.contains("1", "bob").await.expect("contains");
    assert_eq!(
        (after.value, after.outcome),
        (true, CollectionOutcome::Miss)
    );
    // The miss loaded the set again (the meta was still fresh): the next
    // read is a hit.
    assert_eq!(
        counted.loads.load(std::sync::atomic::Ordering::SeqCst),
        loads + 1
    );
    let again = set.contains("1", "ann").await.expect("contains");
    assert_eq!((again.value, again.outcome), (true, CollectionOutcome::Hit));
}
