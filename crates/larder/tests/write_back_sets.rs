//! Write-back sets over a durable Redis of the test's own (AOF,
//! `appendfsync always`) and the shared PostgreSQL (and SQLite): two
//! instances × 8 writers adding and removing members of the same 10 sets,
//! each writer reading its own write back at once while another task
//! invalidates the sets under a running flusher, end with every cached and
//! every database set equal to the last acknowledged operation per member;
//! a load that read the database before a flush cleared an operation is
//! never filled without it; a member the database refuses (a CHECK) is a
//! dead letter alone; an owner above the cap merges its pending operations
//! into every answer, and a busy one (4 writers adding) still answers
//! counts that settle and never go back; MariaDB takes the batched
//! statements; write-back refuses a store that is not durable; a Redis or
//! an application process SIGKILLed mid-run loses no acknowledged
//! operation.

use larder_test_support as support;

use larder::WriteBackOptions;
use larder::{CollectionOutcome, ErrorKind, SetCache, SetSource, SqlPool, SqlSetSource};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::collections::{Gated, PgSchema};
use support::RedisServer;

fn options(max_delay: Duration) -> WriteBackOptions {
    WriteBackOptions {
        max_delay,
        flush_lease: Duration::from_millis(300),
        batch: 200,
        ..WriteBackOptions::default()
    }
}

/// A schema of the test's own with `follows (user_id bigint, follower
/// text CHECK (follower <> 'bad'))`, unique on both, paged in byte order.
async fn pg() -> PgSchema {
    PgSchema::new("wbs", |schema| {
        vec![
            format!(
                "CREATE TABLE {schema}.follows (user_id bigint NOT NULL, follower text NOT NULL
                 CONSTRAINT not_bad CHECK (follower <> 'bad'), UNIQUE (user_id, follower))"
            ),
            format!("CREATE INDEX ON {schema}.follows (user_id, follower COLLATE \"C\")"),
        ]
    })
    .await
}

async fn pg_source(db: &PgSchema) -> SqlSetSource {
    SqlSetSource::builder(db.source_pool().await, &db.table("follows"))
        .owner("user_id")
        .member("follower")
        .build()
        .await
        .expect("set source")
}

async fn set(
    redis: &str,
    prefix: &str,
    source: impl SetSource,
    max_delay: Duration,
    max_members: u64,
) -> SetCache {
    SetCache::builder()
        .prefix(prefix)
        .name("follows")
        .shards(4)
        .store(larder::store::connect_checked(redis).await.expect("redis"))
        .source(source)
        .max_members(max_members)
        .wait_timeout(Duration::from_secs(5))
        .write_back(options(max_delay))
        .build()
        .await
        .expect("set")
}

async fn insert(db: &PgSchema, user: i64, followers: &[&str]) {
    for f in followers {
        sqlx::query(&format!(
            "INSERT INTO {} (user_id, follower) VALUES ($1, $2)",
            db.table("follows")
        ))
        .bind(user)
        .bind(*f)
        .execute(&db.admin)
        .await
        .expect("insert");
    }
}

/// The database's set of `user`.
async fn db_set(db: &PgSchema, user: i64) -> BTreeSet<String> {
    sqlx::query_scalar(&format!(
        "SELECT follower FROM {} WHERE user_id = $1",
        db.table("follows")
    ))
    .bind(user)
    .fetch_all(&db.admin)
    .await
    .expect("select")
    .into_iter()
    .collect()
}

/// Every member of `owner` through the cache, page by page, and the count.
async fn all_members(set: &SetCache, owner: &str, limit: usize) -> (Vec<String>, u64) {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = set
            .members(owner, cursor.as_deref(), limit)
            .await
            .expect("page")
            .value;
        out.extend(page.members);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return (out, page.count),
        }
    }
}

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// 2 instances × 8 writers over the same 10 sets (each writer owns its
/// members, so the last acknowledged operation of each is well defined),
/// a flusher every 20 ms and a task invalidating the sets: each write is
/// read back at once (never back in time), and after the flush every
/// cached set and every database set is the acknowledged end state.
#[tokio::test]
async fn adds_and_removes_from_two_instances_end_as_acknowledged() {
    const OWNERS: u64 = 10;
    const OPS: usize = 150;
    let db = pg().await;
    let server = RedisServer::durable();
    let url = server.url_with_long_timeouts();
    let prefix = support::unique("wbs");
    let a = set(
        &url,
        &prefix,
        pg_source(&db).await,
        Duration::from_millis(20),
        1000,
    )
    .await;
    let b = set(
        &url,
        &prefix,
        pg_source(&db).await,
        Duration::from_millis(20),
        1000,
    )
    .await;
    // Some members the database holds at the start.
    for owner in 0..OWNERS as i64 {
        insert(&db, owner, &["w0-0", "w1-1", "w9-2"]).await;
    }
    let expected: Arc<Mutex<BTreeMap<(u64, String), bool>>> = Arc::default();
    {
        let mut e = expected.lock().expect("lock");
        for owner in 0..OWNERS {
            for m in ["w0-0", "w1-1", "w9-2"] {
                e.insert((owner, m.to_owned()), true);
            }
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let invalidator = {
        let (s, done) = (a.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut n = 0_u64;
            while !done.load(Ordering::Relaxed) {
                s.invalidate(&(n % OWNERS).to_string())
                    .await
                    .expect("invalidate");
                n += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            n
        })
    };
    let mut tasks = Vec::new();
    for t in 0..16_u64 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        let expected = Arc::clone(&expected);
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(t + 1);
            for _ in 0..OPS {
                let owner = next(&mut seed) % OWNERS;
                let member = format!("w{t}-{}", next(&mut seed) % 6);
                let add = !next(&mut seed).is_multiple_of(3);
                let o = owner.to_string();
                if add {
                    s.add(&o, &member).await.expect("add");
                } else {
                    s.remove(&o, &member).await.expect("remove");
                }
                expected
                    .lock()
                    .expect("lock")
                    .insert((owner, member.clone()), add);
                let read = s.contains(&o, &member).await.expect("contains").value;
                assert_eq!(read, add, "owner {o} member {member}: read back in time");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    done.store(true, Ordering::Relaxed);
    assert!(invalidator.await.expect("invalidator") > 0);
    a.close().await.expect("close a");
    b.close().await.expect("close b");
    let expected = expected.lock().expect("lock").clone();
    let reader = set(
        &url,
        &prefix,
        pg_source(&db).await,
        Duration::from_secs(3600),
        1000,
    )
    .await;
    for owner in 0..OWNERS {
        let want: BTreeSet<String> = expected
            .iter()
            .filter(|((o, _), add)| *o == owner && **add)
            .map(|((_, m), _)| m.clone())
            .collect();
        assert_eq!(
            db_set(&db, owner as i64).await,
            want,
            "database set {owner}"
        );
        let (cached, count) = all_members(&reader, &owner.to_string(), 7).await;
        let mut sorted = want.iter().cloned().collect::<Vec<_>>();
        sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
        assert_eq!(cached, sorted, "cached set {owner}");
        assert_eq!(count, want.len() as u64);
    }
    let (sa, sb) = (
        a.write_back_stats().expect("stats"),
        b.write_back_stats().expect("stats"),
    );
    assert_eq!(sa.acknowledged + sb.acknowledged, 16 * OPS as u64);
    assert!(sa.rows_written + sb.rows_written > 0);
    reader.close().await.expect("close");
    db.drop().await;
}

/// The fill-versus-flush race, forced: a load reads the database (an add
/// and a removal still pending), stops at a gate while a flush commits
/// both and clears them, then resumes: its fill is refused or holds both
/// operations, never neither — the read and every read after it answer
/// the acknowledged state.
#[tokio::test]
async fn a_load_racing_a_flush_never_misses_an_operation() {
    let db = pg().await;
    insert(&db, 1, &["x", "z"]).await;
    let server = RedisServer::durable();
    let gated = Gated::new(pg_source(&db).await, 0);
    let s = set(
        &server.url_with_long_timeouts(),
        &support::unique("wbr"),
        gated.clone(),
        Duration::from_secs(3600),
        1000,
    )
    .await;
    assert!(s.add("1", "y").await.expect("add"), "not cached: queued");
    assert!(s.remove("1", "x").await.expect("remove"));
    let reading = {
        let s = s.clone();
        tokio::spawn(async move { s.members("1", None, 10).await })
    };
    gated.loaded.notified().await;
    // The load read {x, z} with +y, -x pending; now both commit and clear.
    s.flush().await.expect("flush");
    assert_eq!(db_set(&db, 1).await, ["y", "z"].map(String::from).into());
    gated.go.add_permits(1);
    let read = reading.await.expect("reader").expect("members").value;
    assert_eq!(read.members, ["y", "z"]);
    assert_eq!(read.count, 2);
    // And what is cached now (the racing fill was refused, or held both).
    let again = s.members("1", None, 10).await.expect("members");
    assert_eq!(again.value.members, ["y", "z"]);
    let cached = s.members("1", None, 10).await.expect("members");
    assert_eq!(cached.outcome, CollectionOutcome::Hit);
    assert_eq!(cached.value.members, ["y", "z"]);
    assert!(!s.contains("1", "x").await.expect("contains").value);
    s.close().await.expect("close");
    db.drop().await;
}

/// A member whose row the database refuses (a CHECK) goes to the dead
/// letters alone; the rest of its batch (adds and a removal) commits, and
/// the refused add is no longer served.
#[tokio::test]
async fn a_refused_member_is_a_dead_letter_alone() {
    let db = pg().await;
    insert(&db, 1, &["old"]).await;
    let server = RedisServer::durable();
    let s = set(
        &server.url_with_long_timeouts(),
        &support::unique("wbd"),
        pg_source(&db).await,
        Duration::from_secs(3600),
        1000,
    )
    .await;
    assert_eq!(s.count("1").await.expect("count").value, 1);
    assert!(s.add("1", "ok1").await.expect("add"));
    assert!(s.add("1", "bad").await.expect("add"));
    assert!(s.add("1", "ok2").await.expect("add"));
    assert!(s.remove("1", "old").await.expect("remove"));
    assert!(s.contains("1", "bad").await.expect("contains").value);
    s.flush().await.expect("flush");
    assert_eq!(
        db_set(&db, 1).await,
        ["ok1", "ok2"].map(String::from).into()
    );
    let letters = s.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (letters[0].owner.as_str(), letters[0].member.as_str()),
        ("1", "bad")
    );
    assert!(letters[0].why.contains("23514"), "{}", letters[0].why);
    assert!(!s.contains("1", "bad").await.expect("contains").value);
    assert_eq!(
        s.members("1", None, 10)
            .await
            .expect("members")
            .value
            .members,
        ["ok1", "ok2"]
    );
    assert_eq!(s.write_back_stats().expect("stats").dead_lettered, 1);
    s.close().await.expect("close");
    db.drop().await;
}

/// An owner above `max_members` is answered from the database with its
/// pending operations merged into membership, pages and the count, before
/// and after the flush alike.
#[tokio::test]
async fn an_owner_above_the_cap_merges_pending_operations() {
    let db = pg().await;
    insert(&db, 1, &["a", "b", "c", "d", "e"]).await;
    let server = RedisServer::durable();
    let s = set(
        &server.url_with_long_timeouts(),
        &support::unique("wbc"),
        pg_source(&db).await,
        Duration::from_secs(3600),
        3,
    )
    .await;
    s.add("1", "f").await.expect("add");
    s.add("1", "c").await.expect("add");
    s.remove("1", "a").await.expect("remove");
    s.add("1", "bb").await.expect("add");
    for round in ["pending", "flushed"] {
        let first = s.members("1", None, 2).await.expect("page");
        assert_eq!(first.outcome, CollectionOutcome::Database, "{round}");
        assert_eq!(first.value.count, 6, "{round}");
        assert_eq!(first.value.members, ["b", "bb"], "{round}");
        let (all, count) = all_members(&s, "1", 2).await;
        assert_eq!(all, ["b", "bb", "c", "d", "e", "f"], "{round}");
        assert_eq!(count, 6, "{round}");
        assert_eq!(s.count("1").await.expect("count").value, 6, "{round}");
        assert!(
            !s.contains("1", "a").await.expect("contains").value,
            "{round}"
        );
        assert!(
            s.contains("1", "f").await.expect("contains").value,
            "{round}"
        );
        assert!(
            s.contains("1", "d").await.expect("contains").value,
            "{round}"
        );
        s.flush().await.expect("flush");
    }
    assert_eq!(db_set(&db, 1).await.len(), 6);
    s.close().await.expect("close");
    db.drop().await;
}

/// An owner above the cap under a stream of adds of new members (4
/// writers): every count read from the database settles (no load
/// timeout) and is never below the adds acknowledged before it began.
#[tokio::test]
async fn a_busy_owner_above_the_cap_answers_counts() {
    let db = pg().await;
    insert(&db, 1, &["a", "b", "c", "d", "e"]).await;
    let server = RedisServer::durable();
    let s = set(
        &server.url_with_long_timeouts(),
        &support::unique("wbu"),
        pg_source(&db).await,
        Duration::from_millis(20),
        3,
    )
    .await;
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (s, acked, done) = (s.clone(), Arc::clone(&acked), Arc::clone(&done));
            tokio::spawn(async move {
                let mut n = 0;
                while !done.load(Ordering::Relaxed) {
                    s.add("1", &format!("v{t}-{n}")).await.expect("add");
                    acked.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                }
            })
        })
        .collect();
    let mut last = 0;
    for _ in 0..40 {
        let before = acked.load(Ordering::SeqCst);
        let read = s.count("1").await.expect("count settles");
        assert_eq!(read.outcome, CollectionOutcome::Database);
        assert!(read.value >= 5 + before, "{} < 5 + {before}", read.value);
        assert!(read.value >= last, "went back: {} after {last}", read.value);
        last = read.value;
    }
    done.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    s.close().await.expect("close");
    assert_eq!(
        db_set(&db, 1).await.len() as u64,
        5 + acked.load(Ordering::SeqCst)
    );
    db.drop().await;
}

/// SQLite: adds, an add then a removal of one member (= a removal), and a
/// removal of a stored member reach the database as the last operation
/// per member.
#[tokio::test]
async fn operations_coalesce_into_sqlite() {
    let dir = support::temp_dir("wbsets");
    let url = format!("sqlite://{}", dir.join("sets.db").display());
    let pool = SqlPool::connect(&url, 2).await.expect("sqlite");
    let SqlPool::Sqlite(raw) = &pool else {
        panic!("sqlite pool")
    };
    for sql in [
        "CREATE TABLE follows (user_id INTEGER NOT NULL, follower TEXT NOT NULL,
         UNIQUE (user_id, follower))",
        "INSERT INTO follows VALUES (1, 'x'), (1, 'y')",
    ] {
        sqlx::query(sql).execute(raw).await.expect(sql);
    }
    let source = SqlSetSource::builder(pool.clone(), "follows")
        .owner("user_id")
        .member("follower")
        .build()
        .await
        .expect("source");
    // Which pending members are stored: one query.
    assert_eq!(
        source
            .present("1", &["x", "zz", "y"])
            .await
            .expect("present"),
        ["x", "y"]
    );
    let server = RedisServer::durable();
    let s = set(
        &server.url_with_long_timeouts(),
        &support::unique("wbq"),
        source,
        Duration::from_secs(3600),
        1000,
    )
    .await;
    assert_eq!(s.count("1").await.expect("count").value, 2);
    assert!(s.add("1", "new").await.expect("add"));
    assert!(!s.add("1", "x").await.expect("add"), "already a member");
    assert!(s.add("1", "gone").await.expect("add"));
    assert!(s.remove("1", "gone").await.expect("remove"));
    assert!(s.remove("1", "y").await.expect("remove"));
    assert_eq!(
        s.members("1", None, 10)
            .await
            .expect("members")
            .value
            .members,
        ["new", "x"]
    );
    s.flush().await.expect("flush");
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT follower FROM follows WHERE user_id = 1 ORDER BY follower")
            .fetch_all(raw)
            .await
            .expect("select");
    assert_eq!(rows, ["new", "x"]);
    s.close().await.expect("close");
}

/// MariaDB: a batch of adds (one of them already stored) and removals
/// commits as one multi-row `INSERT … ON DUPLICATE KEY UPDATE` and one
/// `DELETE … IN`, case-distinct members stay distinct (`nopad_bin`), and
/// a refused member (a CHECK) is a dead letter alone.
#[tokio::test]
async fn operations_reach_mariadb() {
    let admin = support::mysql_pool(2).await;
    let table = support::unique("wbvisits");
    for sql in [
        format!(
            "CREATE TABLE {table} (page BIGINT NOT NULL,
             visitor VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL
             CHECK (visitor <> 'bad'), UNIQUE KEY (page, visitor))"
        ),
        format!("INSERT INTO {table} VALUES (1, 'a'), (1, 'b')"),
    ] {
        sqlx::query(&sql).execute(&admin).await.expect(&sql);
    }
    let pool = SqlPool::connect(&support::mysql_url(), 3)
        .await
        .expect("mariadb");
    let source = SqlSetSource::builder(pool, &table)
        .owner("page")
        .member("visitor")
        .build()
        .await
        .expect("source");
    let mut present = source
        .present("1", &["a", "A", "b"])
        .await
        .expect("present");
    present.sort();
    assert_eq!(present, ["a", "b"], "A is another member than a");
    let server = RedisServer::durable();
    let s = set(
        &server.url_with_long_timeouts(),
        &support::unique("wbm"),
        source,
        Duration::from_secs(3600),
        1000,
    )
    .await;
    for m in ["a", "A", "c", "bad"] {
        s.add("1", m).await.expect("add");
    }
    s.remove("1", "b").await.expect("remove");
    s.flush().await.expect("flush");
    let rows: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT CAST(visitor AS CHAR) FROM {table} WHERE page = 1 ORDER BY visitor"
    ))
    .fetch_all(&admin)
    .await
    .expect("select");
    assert_eq!(rows, ["A", "a", "c"]);
    let letters = s.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].member, "bad");
    assert_eq!(
        s.members("1", None, 10)
            .await
            .expect("members")
            .value
            .members,
        ["A", "a", "c"]
    );
    s.close().await.expect("close");
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&admin)
        .await
        .expect("drop");
}

/// Write-back needs a durable store: the memory store and a Redis without
/// AOF are refused at build.
#[tokio::test]
async fn write_back_refuses_a_store_that_is_not_durable() {
    let db = pg().await;
    let plain = RedisServer::start();
    for url in ["memory://".to_owned(), plain.url()] {
        let built = SetCache::builder()
            .prefix(&support::unique("wbn"))
            .name("follows")
            .store(larder::store::connect(&url).await.expect("store"))
            .source(pg_source(&db).await)
            .write_back(WriteBackOptions::default())
            .build()
            .await;
        assert_eq!(
            built.map(drop).map_err(|e| e.kind()).err(),
            Some(ErrorKind::NotDurable),
            "{url}"
        );
    }
    db.drop().await;
}

/// Per (owner, member): the states (present or not) the database may end in.
type Allowed = BTreeMap<(u64, String), BTreeSet<bool>>;

/// Redis SIGKILLed (AOF, `appendfsync always`) and restarted while two
/// instances × 8 writers add and remove their own members of 10 sets:
/// each member ends in the database as its last acknowledged operation,
/// or as one attempted after it whose answer was lost (fsynced before the
/// kill), never older; and the cached sets equal the database's.
#[tokio::test]
async fn a_redis_sigkill_mid_run_loses_nothing_acknowledged() {
    const OWNERS: u64 = 10;
    let db = pg().await;
    let mut server = RedisServer::durable();
    let url = server.url_with_short_timeouts();
    let prefix = support::unique("wbk");
    let delay = Duration::from_millis(20);
    let a = set(&url, &prefix, pg_source(&db).await, delay, 1000).await;
    let b = set(&url, &prefix, pg_source(&db).await, delay, 1000).await;
    // Per (owner, member): the end states the database may hold.
    let allowed: Arc<Mutex<Allowed>> = Arc::default();
    let (acked, failed) = (
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for t in 0..16_u64 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        let (allowed, acked, failed) = (
            Arc::clone(&allowed),
            Arc::clone(&acked),
            Arc::clone(&failed),
        );
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x2545_f491_4f6c_dd1d_u64.wrapping_mul(t + 1);
            for _ in 0..300 {
                let owner = next(&mut seed) % OWNERS;
                let member = format!("w{t}-{}", next(&mut seed) % 5);
                let add = !next(&mut seed).is_multiple_of(3);
                let o = owner.to_string();
                let result = if add {
                    s.add(&o, &member).await
                } else {
                    s.remove(&o, &member).await
                };
                {
                    let mut allowed = allowed.lock().expect("lock");
                    let states = allowed
                        .entry((owner, member))
                        .or_insert_with(|| [false].into());
                    if result.is_ok() {
                        acked.fetch_add(1, Ordering::SeqCst);
                        *states = [add].into();
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst);
                        states.insert(add);
                    }
                }
                if result.is_err() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    support::eventually("a third of the writes acknowledged", || {
        let acked = Arc::clone(&acked);
        async move { acked.load(Ordering::SeqCst) >= 1600 }
    })
    .await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    for t in tasks {
        t.await.expect("writer");
    }
    assert!(failed.load(Ordering::SeqCst) > 0, "the kill was felt");
    a.close().await.expect("close a");
    b.close().await.expect("close b");
    let allowed = allowed.lock().expect("lock").clone();
    for owner in 0..OWNERS {
        let stored = db_set(&db, owner as i64).await;
        for ((o, member), states) in &allowed {
            if *o == owner {
                let there = stored.contains(member);
                assert!(
                    states.contains(&there),
                    "owner {owner} member {member}: the database says {there}, allowed {states:?}"
                );
            }
        }
        let (cached, count) = all_members(&a, &owner.to_string(), 50).await;
        assert_eq!(
            cached.into_iter().collect::<BTreeSet<_>>(),
            stored,
            "cached set {owner}"
        );
        assert_eq!(count, stored.len() as u64);
    }
    db.drop().await;
}

/// An application process SIGKILLed mid-run (`larder-board-writer --kind
/// set`, adding then removing 20 members in turn, its flusher committing
/// every 20 ms) while this process writes the same set: once this process
/// has flushed what the dead one left (claimed records, pending
/// operations), every member ends in the database as its last
/// acknowledged operation or one attempted after it, and the cached set
/// equals the database's.
#[tokio::test]
async fn an_application_sigkill_mid_run_loses_nothing_acknowledged() {
    const MEMBERS: usize = 20;
    let db = pg().await;
    let server = RedisServer::durable();
    let prefix = support::unique("wba");
    let (url, table, members) = (
        server.url_with_long_timeouts(),
        db.table("follows"),
        MEMBERS.to_string(),
    );
    let (mut child, mut lines) = support::spawn_ready(
        env!("CARGO_BIN_EXE_larder-board-writer"),
        &[
            "--redis",
            &url,
            "--pg",
            &support::pg_url(),
            "--kind",
            "set",
            "--table",
            &table,
            "--prefix",
            &prefix,
            "--members",
            &members,
            "--max-delay-ms",
            "20",
        ],
    );
    let here = set(
        &server.url_with_long_timeouts(),
        &prefix,
        pg_source(&db).await,
        Duration::from_millis(20),
        1000,
    )
    .await;
    let mut allowed: BTreeMap<String, BTreeSet<bool>> = BTreeMap::new();
    let mut acks = 0;
    for line in lines.by_ref() {
        let line = line.expect("line");
        let mut words = line.split(' ');
        let (Some(step), Some(member), Some(op)) = (words.next(), words.next(), words.next())
        else {
            panic!("unexpected line {line:?}")
        };
        let add = op == "add";
        let states = allowed
            .entry(member.to_owned())
            .or_insert_with(|| [false].into());
        match step {
            "try" => {
                states.insert(add);
            }
            "ack" => {
                *states = [add].into();
                acks += 1;
                if acks % 50 == 0 {
                    // This process's own write of another member, acknowledged.
                    let mine = format!("h{}", acks / 50 % 5);
                    here.add("1", &mine).await.expect("add");
                    allowed.insert(mine, [true].into());
                }
                if acks == 1000 {
                    child.kill().expect("SIGKILL the writer");
                }
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    let _ = child.wait();
    here.close().await.expect("close");
    let stored = db_set(&db, 1).await;
    for (member, states) in &allowed {
        let there = stored.contains(member);
        assert!(
            states.contains(&there),
            "member {member}: the database says {there}, allowed {states:?}"
        );
    }
    let (cached, _) = all_members(&here, "1", 100).await;
    assert_eq!(cached.into_iter().collect::<BTreeSet<_>>(), stored);
    db.drop().await;
}
