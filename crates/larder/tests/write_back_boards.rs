//! Write-back leaderboards, exactly once, over a durable Redis of the
//! test's own and the shared PostgreSQL (and SQLite): two instances
//! incrementing Zipf-hot members while reads race the flusher end with the
//! database equal to the sum of the acknowledged increments and the cached
//! ranking equal to the database's; a flusher stopped between its commit
//! and its clear never has its batch applied again (5 rounds); a load
//! racing a flush (either way) counts each increment once; a stalled
//! flusher with an older epoch commits nothing; a member the database
//! refuses (a CHECK) is a dead letter alone; absolute scores override
//! pending increments and a removal discards them; an owner above the cap
//! is answered from the database with its pending operations merged; an
//! application process and Redis (AOF) SIGKILLed mid-run keep, per member,
//! acknowledged <= database <= acknowledged + unacknowledged.

use larder_test_support as support;

use async_trait::async_trait;
use larder::{
    BoardBatch, BoardFlushed, BoardLoad, BoardSource, ErrorKind, Leaderboard, ScoreKind,
    SqlBoardSource, SqlPool, WriteBackOptions,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::collections::PgSchema;
use support::RedisServer;
use tokio::sync::{Notify, Semaphore};

const GAME: &str = "1";

fn options(max_delay: Duration) -> WriteBackOptions {
    WriteBackOptions {
        max_delay,
        flush_lease: Duration::from_millis(300),
        batch: 200,
        ..WriteBackOptions::default()
    }
}

/// A schema of the test's own with `scores (game_id bigint, player_id
/// text, points bigint CHECK (points <= 1000000))`.
async fn pg() -> PgSchema {
    PgSchema::new("wbb", |schema| {
        vec![format!(
            "CREATE TABLE {schema}.scores (game_id bigint NOT NULL, player_id text NOT NULL,
             points bigint NOT NULL DEFAULT 0 CONSTRAINT capped CHECK (points <= 1000000),
             UNIQUE (game_id, player_id))"
        )]
    })
    .await
}

async fn pg_source(db: &PgSchema) -> SqlBoardSource {
    SqlBoardSource::builder(db.source_pool().await, &db.table("scores"))
        .owner("game_id")
        .member("player_id")
        .score("points")
        .build()
        .await
        .expect("board source")
}

async fn board(
    redis: &str,
    prefix: &str,
    source: impl BoardSource,
    max_delay: Duration,
    max_members: u64,
) -> Leaderboard {
    Leaderboard::builder()
        .prefix(prefix)
        .name("scores")
        .shards(4)
        .store(larder::store::connect_checked(redis).await.expect("redis"))
        .source(source)
        .max_members(max_members)
        .wait_timeout(Duration::from_secs(5))
        .write_back(options(max_delay))
        .build()
        .await
        .expect("leaderboard")
}

/// A board over `db` that flushes only when asked (`flush`, `close`).
async fn manual(server: &RedisServer, prefix: &str, db: &PgSchema) -> Leaderboard {
    board(
        &server.url_with_long_timeouts(),
        prefix,
        pg_source(db).await,
        Duration::from_secs(3600),
        100_000,
    )
    .await
}

async fn insert(db: &PgSchema, rows: &[(&str, i64)]) {
    for (player, points) in rows {
        sqlx::query(&format!(
            "INSERT INTO {} (game_id, player_id, points) VALUES (1, $1, $2)",
            db.table("scores")
        ))
        .bind(*player)
        .bind(*points)
        .execute(&db.admin)
        .await
        .expect("insert");
    }
}

/// The database's board in rank order.
async fn db_ranking(db: &PgSchema) -> Vec<(String, f64)> {
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT player_id, points FROM {} WHERE game_id = 1 \
         ORDER BY points DESC, player_id COLLATE \"C\" DESC",
        db.table("scores")
    ))
    .fetch_all(&db.admin)
    .await
    .expect("select");
    rows.into_iter().map(|(m, p)| (m, p as f64)).collect()
}

async fn db_points(db: &PgSchema) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT player_id, points FROM {} WHERE game_id = 1",
        db.table("scores")
    ))
    .fetch_all(&db.admin)
    .await
    .expect("select");
    rows.into_iter().collect()
}

/// The whole cached board, in rank order.
async fn cached_ranking(lb: &Leaderboard) -> Vec<(String, f64)> {
    lb.top(GAME, 0, 1000)
        .await
        .expect("top")
        .value
        .items
        .into_iter()
        .map(|r| (r.member, r.score))
        .collect()
}

fn next(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (*seed >> 11) as f64 / (1u64 << 53) as f64
}

/// 2 instances × 8 tasks × 1,000 increments over 1,000 members (Zipf 1.0)
/// of one board, while both flush every 20 ms and a reader reads pages and
/// ranks and invalidates the board (so loads race the flushes): no read
/// ever shows a member's score lower than one seen before (all increments
/// are positive), and after both close the database holds exactly the
/// acknowledged increments and the cached ranking is the database's.
#[tokio::test]
async fn increments_from_two_instances_reach_the_database_exactly_once() {
    let server = RedisServer::durable();
    increments_from_two_instances_reach_the_database_exactly_once_on(
        &server.url_with_long_timeouts(),
    )
    .await;
}

/// The same on the shared Redis Cluster, where each write and each claim
/// waits for its master's replica (`WAIT`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_from_two_instances_reach_the_database_exactly_once_on_cluster() {
    let url = support::RedisCluster::shared().url();
    increments_from_two_instances_reach_the_database_exactly_once_on(&url).await;
}

async fn increments_from_two_instances_reach_the_database_exactly_once_on(url: &str) {
    const MEMBERS: usize = 1000;
    let db = pg().await;
    let prefix = support::unique("wbb");
    let a = board(
        url,
        &prefix,
        pg_source(&db).await,
        Duration::from_millis(20),
        100_000,
    )
    .await;
    let b = board(
        url,
        &prefix,
        pg_source(&db).await,
        Duration::from_millis(20),
        100_000,
    )
    .await;
    let acked: Arc<Vec<AtomicI64>> = Arc::new((0..MEMBERS).map(|_| AtomicI64::new(0)).collect());
    let cdf = Arc::new(support::zipf_cdf(MEMBERS as u64));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (lb, done) = (a.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut seen: HashMap<String, f64> = HashMap::new();
            let mut reads = 0_u64;
            let mut check = |member: &str, score: f64| {
                let before = seen.entry(member.to_owned()).or_insert(score);
                assert!(
                    score >= *before,
                    "member {member} went back in time: {score} after {before}"
                );
                *before = score;
            };
            while !done.load(Ordering::Relaxed) {
                let page = lb.top(GAME, 0, 20).await.expect("top").value;
                for r in &page.items {
                    check(&r.member, r.score);
                }
                for m in ["m0", "m1", "m7", "m500"] {
                    if let Some(r) = lb.rank(GAME, m).await.expect("rank").value {
                        check(m, r.score);
                    }
                }
                reads += 1;
                if reads.is_multiple_of(10) {
                    lb.invalidate(GAME).await.expect("invalidate");
                }
            }
            reads
        })
    };
    let mut tasks = Vec::new();
    for t in 0..16_u64 {
        let lb = if t % 2 == 0 { a.clone() } else { b.clone() };
        let (acked, cdf) = (Arc::clone(&acked), Arc::clone(&cdf));
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(t + 1);
            for _ in 0..1000 {
                let u = next(&mut seed);
                let i = support::zipf_pick(&cdf, u);
                let by = 1 + (next(&mut seed) * 3.0) as i64;
                let score = lb
                    .incr(GAME, &format!("m{i}"), by as f64)
                    .await
                    .expect("incr");
                assert!(score >= by as f64);
                acked[i].fetch_add(by, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.await.expect("reader");
    assert!(reads > 0);
    a.close().await.expect("close a");
    b.close().await.expect("close b");
    let stored = db_points(&db).await;
    for (i, n) in acked.iter().enumerate() {
        let n = n.load(Ordering::SeqCst);
        let member = format!("m{i}");
        assert_eq!(
            stored.get(&member).copied().unwrap_or(0),
            n,
            "member {member}: the database holds what was acknowledged"
        );
    }
    let (sa, sb) = (
        a.write_back_stats().expect("stats"),
        b.write_back_stats().expect("stats"),
    );
    assert_eq!(sa.increments + sb.increments, 16_000);
    // Coalesced: far fewer rows written than increments.
    let rows = sa.rows_written + sb.rows_written;
    assert!(rows > 0 && rows < 16_000, "{sa:?} {sb:?}");
    assert_eq!(cached_ranking(&a).await, db_ranking(&db).await);
    db.drop().await;
}

/// The fault point between commit and clear, 5 rounds, a new instance
/// each: the stopped flusher's batch is found committed by the next
/// flusher and only cleared, so the database never counts it twice.
#[tokio::test]
async fn a_flusher_stopped_between_commit_and_clear_never_applies_twice() {
    let db = pg().await;
    insert(&db, &[("x", 10)]).await;
    let server = RedisServer::durable();
    let prefix = support::unique("wbf");
    let fence = format!("{prefix}:scores");
    let mut want = 10;
    for round in 0..5 {
        let lb = manual(&server, &prefix, &db).await;
        lb.incr(GAME, "x", 5.0).await.expect("incr");
        lb.incr(GAME, "y", 1.0).await.expect("incr");
        want += 5;
        larder::arm_after_board_commit(&fence, 1);
        let stopped = lb.flush().await;
        assert!(
            stopped.is_err(),
            "round {round}: the fault point stops the flush"
        );
        assert_eq!(
            lb.incr(GAME, "x", 1.0).await.map_err(|e| e.kind()).err(),
            Some(ErrorKind::Closed)
        );
        assert_eq!(
            db_points(&db).await["x"],
            want,
            "round {round}: committed once"
        );
        let next = manual(&server, &prefix, &db).await;
        next.flush().await.expect("flush");
        let points = db_points(&db).await;
        assert_eq!(points["x"], want, "round {round}: not applied again");
        assert_eq!(points["y"], round + 1);
        assert_eq!(
            next.score(GAME, "x").await.expect("score").value,
            Some(want as f64)
        );
        next.close().await.expect("close");
    }
    db.drop().await;
}

/// A board source whose loads can be held at a gate once armed: the load
/// has read the database (`loaded` notified) and waits for a permit.
#[derive(Debug, Clone)]
struct Paused {
    inner: SqlBoardSource,
    armed: Arc<AtomicBool>,
    loaded: Arc<Notify>,
    go: Arc<Semaphore>,
}

#[async_trait]
impl BoardSource for Paused {
    fn score_kind(&self) -> ScoreKind {
        self.inner.score_kind()
    }
    fn canonical_owner(&self, raw: &str) -> larder::Result<String> {
        self.inner.canonical_owner(raw)
    }
    fn canonical_member(&self, raw: &str) -> larder::Result<String> {
        self.inner.canonical_member(raw)
    }
    async fn load(&self, owner: &str, max: u64) -> larder::Result<BoardLoad> {
        let load = self.inner.load(owner, max).await;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.loaded.notify_one();
            self.go.acquire().await.expect("gate").forget();
        }
        load
    }
    async fn top(&self, o: &str, offset: u64, limit: u64) -> larder::Result<Vec<(String, f64)>> {
        self.inner.top(o, offset, limit).await
    }
    async fn member(&self, o: &str, m: &str) -> larder::Result<Option<(f64, u64)>> {
        self.inner.member(o, m).await
    }
    async fn count(&self, o: &str) -> larder::Result<u64> {
        self.inner.count(o).await
    }
    async fn incr(&self, o: &str, m: &str, by: f64) -> larder::Result<f64> {
        self.inner.incr(o, m, by).await
    }
    async fn set_score(&self, o: &str, m: &str, s: f64) -> larder::Result<f64> {
        self.inner.set_score(o, m, s).await
    }
    async fn remove(&self, o: &str, m: &str) -> larder::Result<bool> {
        self.inner.remove(o, m).await
    }
    async fn above(&self, o: &str, m: &str, s: f64) -> larder::Result<u64> {
        self.inner.above(o, m, s).await
    }
    async fn prepare_write_back(&self, fence: &str, shards: u16) -> larder::Result<()> {
        self.inner.prepare_write_back(fence, shards).await
    }
    async fn flush(&self, batch: BoardBatch<'_>) -> larder::Result<BoardFlushed> {
        self.inner.flush(batch).await
    }
}

/// The fill-versus-flush race, both ways. (1) A batch committed by a
/// flusher that stopped before its clear: a load then sees the committed
/// rows while the claimed record still holds the owner; it waits for the
/// next flusher's clear and counts the increment once. (2) A load that
/// read the database before a commit and resumes after the clear: it
/// loads again (the shard's clears moved) and counts the increment once,
/// and what it filled is right.
#[tokio::test]
async fn loads_racing_flushes_count_each_increment_once() {
    let db = pg().await;
    insert(&db, &[("x", 10), ("z", 1)]).await;
    let server = RedisServer::durable();
    let prefix = support::unique("wbr");
    let fence = format!("{prefix}:scores");
    // (1) Committed, not cleared.
    let a = manual(&server, &prefix, &db).await;
    assert_eq!(a.incr(GAME, "x", 5.0).await.expect("incr"), 15.0);
    larder::arm_after_board_commit(&fence, 1);
    assert!(a.flush().await.is_err());
    assert_eq!(db_points(&db).await["x"], 15);
    let b = board(
        &server.url_with_long_timeouts(),
        &prefix,
        pg_source(&db).await,
        Duration::from_millis(10),
        100_000,
    )
    .await;
    b.invalidate(GAME).await.expect("invalidate");
    // The claimed record holds the owner until b's flusher (after a's
    // lease runs out) finds the batch committed and clears it.
    assert_eq!(b.score(GAME, "x").await.expect("score").value, Some(15.0));
    assert_eq!(b.score(GAME, "x").await.expect("score").value, Some(15.0));
    b.close().await.expect("close");
    assert_eq!(db_points(&db).await["x"], 15);

    // (2) A load from before a commit resuming after the clear.
    let paused = Paused {
        inner: pg_source(&db).await,
        armed: Arc::new(AtomicBool::new(false)),
        loaded: Arc::default(),
        go: Arc::new(Semaphore::new(0)),
    };
    let c = board(
        &server.url_with_long_timeouts(),
        &prefix,
        paused.clone(),
        Duration::from_secs(3600),
        100_000,
    )
    .await;
    c.invalidate(GAME).await.expect("invalidate");
    assert_eq!(c.incr(GAME, "x", 2.0).await.expect("incr"), 17.0);
    c.invalidate(GAME).await.expect("invalidate");
    paused.armed.store(true, Ordering::SeqCst);
    let reading = {
        let c = c.clone();
        tokio::spawn(async move { c.score(GAME, "x").await })
    };
    paused.loaded.notified().await;
    // The load read x = 15 with +2 pending; now the batch commits and clears.
    c.flush().await.expect("flush");
    assert_eq!(db_points(&db).await["x"], 17);
    paused.go.add_permits(1);
    let read = reading.await.expect("reader").expect("score");
    assert_eq!(read.value, Some(17.0), "counted once");
    assert_eq!(c.score(GAME, "x").await.expect("score").value, Some(17.0));
    c.close().await.expect("close");
    assert_eq!(db_points(&db).await["x"], 17);
    db.drop().await;
}

/// Two flushers on one shard: the first claims a batch and stalls past
/// its lease; the second takes the shard over with a newer epoch, commits
/// the claimed record and clears it; the first then commits nothing (the
/// fence refuses its epoch, or finds its batch id committed).
#[tokio::test]
async fn a_stalled_flusher_with_an_older_epoch_applies_nothing() {
    let db = pg().await;
    insert(&db, &[("x", 10)]).await;
    let server = RedisServer::durable();
    let prefix = support::unique("wbs");
    let fence = format!("{prefix}:scores");
    let a = manual(&server, &prefix, &db).await;
    let b = manual(&server, &prefix, &db).await;
    for _ in 0..3 {
        a.incr(GAME, "x", 1.0).await.expect("incr");
        b.incr(GAME, "y", 2.0).await.expect("incr");
    }
    larder::arm_stall_after_board_claim(&fence, Duration::from_millis(1200));
    let stalled = {
        let a = a.clone();
        tokio::spawn(async move { a.flush().await })
    };
    // The stalled flush has claimed: the record is there, nothing committed.
    let client = redis::Client::open(server.url()).expect("client");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    support::eventually("a claimed record", || {
        let (mut conn, pattern) = (conn.clone(), format!("{prefix}:*:bb"));
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .expect("keys");
            !keys.is_empty()
        }
    })
    .await;
    b.flush().await.expect("flush");
    assert_eq!(db_points(&db).await["x"], 13);
    stalled.await.expect("task").expect("stalled flush");
    let points = db_points(&db).await;
    assert_eq!(
        (points["x"], points["y"]),
        (13, 6),
        "no batch applied twice"
    );
    a.close().await.expect("close");
    b.close().await.expect("close");
    assert_eq!(db_points(&db).await["x"], 13);
    db.drop().await;
}

/// A member whose row the database refuses (a CHECK) goes to the dead
/// letters alone; the rest of its batch commits once, and the refused
/// operation is no longer served.
#[tokio::test]
async fn a_refused_member_is_a_dead_letter_alone() {
    let db = pg().await;
    insert(&db, &[("ok1", 1)]).await;
    let server = RedisServer::durable();
    let prefix = support::unique("wbd");
    let lb = manual(&server, &prefix, &db).await;
    lb.incr(GAME, "ok1", 5.0).await.expect("incr");
    lb.incr(GAME, "bad", 2_000_000.0).await.expect("incr");
    lb.incr(GAME, "ok2", 7.0).await.expect("incr");
    assert_eq!(
        lb.score(GAME, "bad").await.expect("score").value,
        Some(2_000_000.0)
    );
    lb.flush().await.expect("flush");
    let points = db_points(&db).await;
    assert_eq!(points.get("ok1"), Some(&6));
    assert_eq!(points.get("ok2"), Some(&7));
    assert_eq!(points.get("bad"), None);
    let letters = lb.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (letters[0].owner.as_str(), letters[0].member.as_str()),
        (GAME, "bad")
    );
    assert!(letters[0].why.contains("23514"), "{}", letters[0].why);
    assert_eq!(lb.score(GAME, "bad").await.expect("score").value, None);
    assert_eq!(lb.score(GAME, "ok1").await.expect("score").value, Some(6.0));
    let stats = lb.write_back_stats().expect("stats");
    assert_eq!(stats.dead_lettered, 1);
    lb.close().await.expect("close");
    db.drop().await;
}

/// The operations scenario on any source: an absolute score overrides the
/// pending increments (later increments add to it), a removal discards
/// them and a later increment creates the member anew with its `by`; the
/// cached board answers each step, the database holds the end.
async fn scores_then_removals(lb: &Leaderboard) {
    assert_eq!(lb.incr(GAME, "x", 5.0).await.expect("incr"), 15.0);
    assert_eq!(lb.set_score(GAME, "x", 100.0).await.expect("set"), 100.0);
    assert_eq!(lb.incr(GAME, "x", 1.0).await.expect("incr"), 101.0);
    assert_eq!(lb.incr(GAME, "y", 4.0).await.expect("incr"), 11.0);
    assert!(lb.remove(GAME, "y").await.expect("remove"));
    assert!(!lb.remove(GAME, "y").await.expect("remove"));
    assert_eq!(lb.score(GAME, "y").await.expect("score").value, None);
    assert_eq!(lb.incr(GAME, "y", 3.0).await.expect("incr"), 3.0);
    assert_eq!(lb.incr(GAME, "new", 2.0).await.expect("incr"), 2.0);
    let page = lb.top(GAME, 0, 10).await.expect("top").value;
    assert_eq!(page.count, 3);
    assert_eq!(page.items[0].member, "x");
    assert_eq!(page.items[2].member, "new");
    let beyond = lb.incr(GAME, "x", 9_007_199_254_740_900.0).await;
    assert_eq!(
        beyond.map_err(|e| e.kind()).err(),
        Some(ErrorKind::InvalidRow)
    );
    // 2 + (2^53 - 1): a double rounds the sum back to 2^53; still refused.
    let rounded = lb.incr(GAME, "new", 9_007_199_254_740_991.0).await;
    assert_eq!(
        rounded.map_err(|e| e.kind()).err(),
        Some(ErrorKind::InvalidRow)
    );
    lb.flush().await.expect("flush");
}

/// PostgreSQL: PUT overriding pending increments; DELETE then incr.
#[tokio::test]
async fn absolute_scores_and_removals_postgres() {
    let db = pg().await;
    insert(&db, &[("x", 10), ("y", 7)]).await;
    let server = RedisServer::durable();
    let lb = board(
        &server.url_with_long_timeouts(),
        &support::unique("wbo"),
        pg_source(&db).await,
        Duration::from_secs(3600),
        100_000,
    )
    .await;
    scores_then_removals(&lb).await;
    let points = db_points(&db).await;
    assert_eq!((points["x"], points["y"], points["new"]), (101, 3, 2));
    lb.invalidate(GAME).await.expect("invalidate");
    assert_eq!(cached_ranking(&lb).await, db_ranking(&db).await);
    lb.close().await.expect("close");
    db.drop().await;
}

/// SQLite: the same operations, and the same database at the end.
#[tokio::test]
async fn absolute_scores_and_removals_sqlite() {
    let dir = support::temp_dir("wbboards");
    let url = format!("sqlite://{}", dir.join("boards.db").display());
    let pool = SqlPool::connect(&url, 2).await.expect("sqlite");
    let SqlPool::Sqlite(raw) = &pool else {
        panic!("sqlite pool")
    };
    for sql in [
        "CREATE TABLE scores (game_id INTEGER NOT NULL, player_id TEXT NOT NULL,
         points INTEGER NOT NULL, UNIQUE (game_id, player_id))",
        "INSERT INTO scores VALUES (1, 'x', 10), (1, 'y', 7)",
    ] {
        sqlx::query(sql).execute(raw).await.expect(sql);
    }
    let source = SqlBoardSource::builder(pool.clone(), "scores")
        .owner("game_id")
        .member("player_id")
        .score("points")
        .build()
        .await
        .expect("source");
    let server = RedisServer::durable();
    let lb = board(
        &server.url_with_long_timeouts(),
        &support::unique("wbq"),
        source,
        Duration::from_secs(3600),
        100_000,
    )
    .await;
    scores_then_removals(&lb).await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT player_id, points FROM scores ORDER BY player_id")
            .fetch_all(raw)
            .await
            .expect("select");
    assert_eq!(
        rows,
        vec![("new".into(), 2), ("x".into(), 101), ("y".into(), 3)]
    );
    lb.close().await.expect("close");
}

/// An owner above `max_members` is answered from the database with its
/// pending operations merged into the page, the rank and the count, before
/// and after the flush alike.
#[tokio::test]
async fn an_owner_above_the_cap_merges_pending_operations() {
    let db = pg().await;
    insert(
        &db,
        &[("a", 50), ("b", 40), ("c", 30), ("d", 20), ("e", 10)],
    )
    .await;
    let server = RedisServer::durable();
    let lb = board(
        &server.url_with_long_timeouts(),
        &support::unique("wbc"),
        pg_source(&db).await,
        Duration::from_secs(3600),
        3,
    )
    .await;
    assert_eq!(lb.incr(GAME, "e", 45.0).await.expect("incr"), 55.0);
    assert!(lb.remove(GAME, "a").await.expect("remove"));
    assert_eq!(lb.incr(GAME, "f", 35.0).await.expect("incr"), 35.0);
    let check = |page: larder::BoardPage| {
        let items: Vec<(String, f64, u64)> = page
            .items
            .into_iter()
            .map(|r| (r.member, r.score, r.rank))
            .collect();
        assert_eq!(page.count, 5);
        assert_eq!(
            items,
            vec![
                ("b".into(), 40.0, 2),
                ("f".into(), 35.0, 3),
                ("c".into(), 30.0, 4),
            ]
        );
    };
    let read = lb.top(GAME, 1, 3).await.expect("top");
    assert_eq!(read.outcome, larder::CollectionOutcome::Database);
    check(read.value);
    let f = lb.rank(GAME, "f").await.expect("rank").value.expect("f");
    assert_eq!((f.score, f.rank), (35.0, 3));
    assert_eq!(lb.rank(GAME, "a").await.expect("rank").value, None);
    lb.flush().await.expect("flush");
    let after = lb.top(GAME, 1, 3).await.expect("top").value;
    check(after);
    let f = lb.rank(GAME, "f").await.expect("rank").value.expect("f");
    assert_eq!((f.score, f.rank), (35.0, 3));
    lb.close().await.expect("close");
    db.drop().await;
}

/// Write-back needs a durable store: the memory store and a Redis without
/// AOF are refused at build.
#[tokio::test]
async fn write_back_refuses_a_store_that_is_not_durable() {
    let db = pg().await;
    let plain = RedisServer::start();
    for url in ["memory://".to_owned(), plain.url()] {
        let built = Leaderboard::builder()
            .prefix(&support::unique("wbn"))
            .name("scores")
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

/// Redis SIGKILLed (AOF, `appendfsync always`) and restarted while two
/// instances × 8 tasks increment Zipf-hot members: per member, the
/// database ends between the acknowledged increments and those plus the
/// attempted-but-unacknowledged ones (an increment fsynced whose answer was
/// lost is still flushed), and the cached ranking is the database's.
#[tokio::test]
async fn a_redis_sigkill_mid_run_keeps_the_bounds() {
    const MEMBERS: usize = 100;
    let db = pg().await;
    let mut server = RedisServer::durable();
    let url = server.url_with_short_timeouts();
    let prefix = support::unique("wbk");
    let delay = Duration::from_millis(20);
    let a = board(&url, &prefix, pg_source(&db).await, delay, 100_000).await;
    let b = board(&url, &prefix, pg_source(&db).await, delay, 100_000).await;
    let acked: Arc<Vec<AtomicI64>> = Arc::new((0..MEMBERS).map(|_| AtomicI64::new(0)).collect());
    let lost: Arc<Vec<AtomicI64>> = Arc::new((0..MEMBERS).map(|_| AtomicI64::new(0)).collect());
    let failures = Arc::new(AtomicI64::new(0));
    let cdf = Arc::new(support::zipf_cdf(MEMBERS as u64));
    let mut tasks = Vec::new();
    for t in 0..16_u64 {
        let lb = if t % 2 == 0 { a.clone() } else { b.clone() };
        let (acked, lost, failures, cdf) = (
            Arc::clone(&acked),
            Arc::clone(&lost),
            Arc::clone(&failures),
            Arc::clone(&cdf),
        );
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x2545_f491_4f6c_dd1d_u64.wrapping_mul(t + 1);
            for _ in 0..500 {
                let u = next(&mut seed);
                let i = support::zipf_pick(&cdf, u);
                match lb.incr(GAME, &format!("m{i}"), 1.0).await {
                    Ok(_) => acked[i].fetch_add(1, Ordering::SeqCst),
                    Err(_) => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        lost[i].fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    let total = |v: &[AtomicI64]| v.iter().map(|n| n.load(Ordering::SeqCst)).sum::<i64>();
    support::eventually("a third of the increments acknowledged", || {
        let acked = Arc::clone(&acked);
        async move { total(&acked) >= 2500 }
    })
    .await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    for t in tasks {
        t.await.expect("task");
    }
    assert!(failures.load(Ordering::SeqCst) > 0, "the kill was felt");
    a.close().await.expect("close a");
    b.close().await.expect("close b");
    let stored = db_points(&db).await;
    for i in 0..MEMBERS {
        let member = format!("m{i}");
        let (ack, lost) = (
            acked[i].load(Ordering::SeqCst),
            lost[i].load(Ordering::SeqCst),
        );
        let got = stored.get(&member).copied().unwrap_or(0);
        assert!(
            ack <= got && got <= ack + lost,
            "member {member}: acknowledged {ack} <= database {got} <= {ack} + unacknowledged {lost}"
        );
    }
    // The board cached through the kill (kept in the AOF, changed in
    // place) ranks as the database does.
    let cached = a.top(GAME, 0, 1000).await.expect("top");
    assert_eq!(cached.outcome, larder::CollectionOutcome::Hit);
    assert_eq!(cached_ranking(&a).await, db_ranking(&db).await);
    db.drop().await;
}

/// An application process SIGKILLed mid-run (`larder-board-writer`, its
/// flusher committing every 20 ms) while this process increments the
/// same board: once this process has flushed what the dead one left
/// (claimed records, pending operations), per member the database holds
/// between the acknowledged increments and those plus the attempted ones
/// whose answer never came.
#[tokio::test]
async fn an_application_sigkill_mid_run_keeps_the_bounds() {
    const MEMBERS: usize = 20;
    let db = pg().await;
    let server = RedisServer::durable();
    let prefix = support::unique("wba");
    let (url, table, members) = (
        server.url_with_long_timeouts(),
        db.table("scores"),
        MEMBERS.to_string(),
    );
    let (mut child, mut lines) = support::spawn_ready(
        env!("CARGO_BIN_EXE_larder-board-writer"),
        &[
            "--redis",
            &url,
            "--pg",
            &support::pg_url(),
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
    let here = board(
        &server.url_with_long_timeouts(),
        &prefix,
        pg_source(&db).await,
        Duration::from_millis(20),
        100_000,
    )
    .await;
    let mut acked: HashMap<String, i64> = HashMap::new();
    let mut tried: HashMap<String, i64> = HashMap::new();
    let mut acks = 0;
    for line in lines.by_ref() {
        let line = line.expect("line");
        match line.split_once(' ') {
            Some(("try", m)) => *tried.entry(m.to_owned()).or_default() += 1,
            Some(("ack", m)) => {
                *acked.entry(m.to_owned()).or_default() += 1;
                acks += 1;
                if acks % 100 == 0 {
                    // This process's own increments, acknowledged.
                    here.incr(GAME, &line[4..], 1.0).await.expect("incr");
                    *acked.entry(m.to_owned()).or_default() += 1;
                    *tried.entry(m.to_owned()).or_default() += 1;
                }
                if acks == 2000 {
                    child.kill().expect("SIGKILL the writer");
                }
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    let _ = child.wait();
    here.close().await.expect("close");
    let stored = db_points(&db).await;
    for (member, n) in &tried {
        let ack = acked.get(member).copied().unwrap_or(0);
        let got = stored.get(member).copied().unwrap_or(0);
        assert!(
            ack <= got && got <= *n,
            "member {member}: acknowledged {ack} <= database {got} <= attempted {n}"
        );
    }
    assert!(acked.values().sum::<i64>() >= 2000);
    db.drop().await;
}
