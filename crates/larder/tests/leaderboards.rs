//! Leaderboards (`Leaderboard`) over real PostgreSQL, SQLite and MariaDB
//! tables, on the real Redis and on the memory store: top-N pages, rank
//! and score with ties in the same order in Redis and in each database,
//! the `max_members` fallback to the database, a chunked fill of more
//! than 3,999 members, one load across concurrent callers of two
//! instances, and write-through increments that never count twice when
//! they race a fill.

use larder_test_support as support;

use larder::store::Store;
use larder::{
    BoardSource, CollectionOutcome, ErrorKind, Leaderboard, Ranked, ScoreKind, SqlBoardSource,
    SqlPool,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::collections::Counted;

/// A PostgreSQL schema of the test's own with `scores (game_id bigint,
/// player_id text, points bigint)`.
struct Pg(support::collections::PgSchema);

impl std::ops::Deref for Pg {
    type Target = support::collections::PgSchema;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Pg {
    async fn new() -> Pg {
        Pg(support::collections::PgSchema::new("boards", |schema| {
            vec![format!(
                "CREATE TABLE {schema}.scores (game_id bigint NOT NULL, player_id text NOT NULL,
                 points bigint NOT NULL DEFAULT 0, UNIQUE (game_id, player_id))"
            )]
        })
        .await)
    }

    async fn source(&self) -> SqlBoardSource {
        SqlBoardSource::builder(self.source_pool().await, &self.table("scores"))
            .owner("game_id")
            .member("player_id")
            .score("points")
            .build()
            .await
            .expect("board source")
    }

    async fn insert(&self, game: i64, rows: &[(&str, i64)]) {
        for (player, points) in rows {
            sqlx::query(&format!(
                "INSERT INTO {}.scores (game_id, player_id, points) VALUES ($1, $2, $3)",
                self.schema
            ))
            .bind(game)
            .bind(*player)
            .bind(*points)
            .execute(&self.admin)
            .await
            .expect("insert");
        }
    }

    async fn points(&self, game: i64, player: &str) -> Option<i64> {
        sqlx::query_scalar(&format!(
            "SELECT points FROM {}.scores WHERE game_id = $1 AND player_id = $2",
            self.schema
        ))
        .bind(game)
        .bind(player)
        .fetch_optional(&self.admin)
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

async fn board(
    store: Arc<dyn Store>,
    prefix: &str,
    source: impl BoardSource,
    max: u64,
) -> Leaderboard {
    Leaderboard::builder()
        .prefix(prefix)
        .name("scores")
        .store(store)
        .source(source)
        .max_members(max)
        .build()
        .await
        .expect("leaderboard")
}

/// Members whose byte order differs from every locale's, many tied.
const ROWS: [(&str, i64); 10] = [
    ("b", 5),
    ("B", 5),
    ("a", 5),
    ("Z", 7),
    ("é", 5),
    ("10", 3),
    ("9", 3),
    ("a b", 7),
    ("_x", -2),
    ("zz", 0),
];

/// The order: score descending, ties in descending byte order.
fn expected(rows: &[(&str, i64)]) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = rows
        .iter()
        .map(|(m, s)| (m.to_string(), *s as f64))
        .collect();
    v.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
    });
    v
}

fn pairs(items: &[Ranked]) -> Vec<(String, f64)> {
    items.iter().map(|r| (r.member.clone(), r.score)).collect()
}

async fn top_rank_and_score_with_ties(kind: &str) {
    let pg = Pg::new().await;
    pg.insert(1, &ROWS).await;
    let counted = Counted::new(pg.source().await, Duration::ZERO);
    let lb = board(
        store(kind).await,
        &support::unique("b"),
        counted.clone(),
        1000,
    )
    .await;
    let want = expected(&ROWS);

    let first = lb.top("1", 0, 100).await.expect("top");
    assert_eq!(first.outcome, CollectionOutcome::Miss);
    assert_eq!(
        pairs(&first.value.items),
        want,
        "loaded in the issue's order"
    );
    let again = lb.top("001", 0, 100).await.expect("top");
    assert_eq!(
        again.outcome,
        CollectionOutcome::Hit,
        "owner canonicalised, cached"
    );
    assert_eq!(
        pairs(&again.value.items),
        want,
        "Redis ties in the same order"
    );
    assert_eq!(again.value.count, 10);
    let ranks: Vec<u64> = again.value.items.iter().map(|r| r.rank).collect();
    assert_eq!(ranks, (1..=10).collect::<Vec<_>>());
    // The database orders the same way, page by page.
    let db = counted.inner.top("1", 0, 100).await.expect("db top");
    assert_eq!(db, want, "the database's own order");
    let db_page = counted.inner.top("1", 3, 4).await.expect("db page");
    assert_eq!(db_page, want[3..7]);
    let page = lb.top("1", 3, 4).await.expect("page");
    assert_eq!(page.outcome, CollectionOutcome::Hit);
    assert_eq!(pairs(&page.value.items), want[3..7]);
    assert_eq!(page.value.items[0].rank, 4);
    let past = lb.top("1", 50, 10).await.expect("past the end");
    assert!(past.value.items.is_empty());
    assert_eq!(past.value.count, 10);

    // Rank and score of each member, cached and from the database.
    for (i, (m, s)) in want.iter().enumerate() {
        let r = lb.rank("1", m).await.expect("rank");
        assert_eq!(r.outcome, CollectionOutcome::Hit);
        let r = r.value.expect("present");
        assert_eq!((r.rank, r.score), (i as u64 + 1, *s), "{m}");
        let db = counted.inner.member("1", m).await.expect("db rank");
        assert_eq!(db, Some((*s, i as u64)), "database rank of {m}");
    }
    let absent = lb.score("1", "nobody").await.expect("score");
    assert_eq!(
        (absent.value, absent.outcome),
        (None, CollectionOutcome::Hit)
    );

    let empty = lb.top("2", 0, 10).await.expect("empty");
    assert_eq!(
        (empty.value.count, empty.outcome),
        (0, CollectionOutcome::Miss)
    );
    let empty = lb.top("2", 0, 10).await.expect("empty");
    assert_eq!(
        empty.outcome,
        CollectionOutcome::Hit,
        "an empty board is cached"
    );
    assert_eq!(
        counted.loads.load(Ordering::SeqCst),
        2,
        "one load per owner"
    );

    let bad = lb.top("x", 0, 10).await.expect_err("bad owner");
    assert_eq!(bad.kind(), ErrorKind::InvalidId);
    let bad = lb.top("1", 0, 1001).await.expect_err("limit");
    assert_eq!(bad.kind(), ErrorKind::InvalidSetting);
    let bad = lb.top("1", u64::MAX, 10).await.expect_err("offset");
    assert_eq!(bad.kind(), ErrorKind::InvalidSetting);
    let far = lb
        .top("1", larder::MAX_BOARD_OFFSET, 1000)
        .await
        .expect("far");
    assert!(far.value.items.is_empty());
    pg.drop().await;
}

#[tokio::test]
async fn top_rank_and_score_with_ties_redis() {
    top_rank_and_score_with_ties("redis").await;
}

#[tokio::test]
async fn top_rank_and_score_with_ties_memory() {
    top_rank_and_score_with_ties("memory").await;
}

/// Write-through: incr, set_score and remove go to the database first and
/// then `ZADD`/`ZREM` the cached board; a write to an uncached owner never
/// creates it; a delta beyond ±2^53 is refused with nothing written.
async fn writes_go_through(kind: &str) {
    let pg = Pg::new().await;
    pg.insert(1, &[("ann", 10), ("bob", 20)]).await;
    let lb = board(
        store(kind).await,
        &support::unique("b"),
        pg.source().await,
        1000,
    )
    .await;

    // Not cached: the increment does not create a one-member board.
    assert_eq!(lb.incr("1", "ann", 5.0).await.expect("incr"), 15.0);
    let read = lb.rank("1", "ann").await.expect("rank");
    assert_eq!(
        read.outcome,
        CollectionOutcome::Miss,
        "the write created nothing"
    );
    assert_eq!(
        read.value.map(|r| (r.score, r.rank)),
        Some((15.0, 2.0 as u64))
    );

    // Cached: applied in place.
    assert_eq!(lb.incr("1", "ann", 10.0).await.expect("incr"), 25.0);
    assert_eq!(lb.incr("1", "cat", 3.0).await.expect("new member"), 3.0);
    let top = lb.top("1", 0, 10).await.expect("top");
    assert_eq!(
        top.outcome,
        CollectionOutcome::Hit,
        "updated in place, not deleted"
    );
    assert_eq!(
        pairs(&top.value.items),
        [
            ("ann".into(), 25.0),
            ("bob".into(), 20.0),
            ("cat".into(), 3.0)
        ]
    );
    assert_eq!(top.value.count, 3);
    assert_eq!(lb.set_score("1", "bob", 100.0).await.expect("set"), 100.0);
    assert!(lb.remove("1", "cat").await.expect("remove"));
    assert!(!lb.remove("1", "cat").await.expect("remove again"));
    let top = lb.top("1", 0, 10).await.expect("top");
    assert_eq!(top.outcome, CollectionOutcome::Hit);
    assert_eq!(
        pairs(&top.value.items),
        [("bob".into(), 100.0), ("ann".into(), 25.0)]
    );
    assert_eq!(pg.points(1, "bob").await, Some(100));
    assert_eq!(pg.points(1, "cat").await, None);

    // ±2^53: a delta beyond, or a result beyond, is refused; nothing written.
    let big = (1u64 << 53) as f64;
    let e = lb
        .incr("1", "ann", big + 2.0)
        .await
        .expect_err("delta beyond");
    assert_eq!(e.kind(), ErrorKind::InvalidRow);
    let e = lb.incr("1", "ann", big).await.expect_err("result beyond");
    assert_eq!(e.kind(), ErrorKind::InvalidRow, "{e}");
    let e = lb.incr("1", "ann", 1.5).await.expect_err("fraction");
    assert_eq!(e.kind(), ErrorKind::InvalidRow);
    assert_eq!(pg.points(1, "ann").await, Some(25));
    let top = lb.top("1", 0, 10).await.expect("top");
    assert_eq!(
        top.outcome,
        CollectionOutcome::Hit,
        "a refused write leaves the board"
    );
    assert_eq!(pairs(&top.value.items)[1], ("ann".into(), 25.0));

    let ro = Leaderboard::builder()
        .prefix(&support::unique("b"))
        .name("scores")
        .store(store(kind).await)
        .source(pg.source().await)
        .read_only(true)
        .build()
        .await
        .expect("read-only");
    let e = ro.incr("1", "ann", 1.0).await.expect_err("read-only");
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    pg.drop().await;
}

#[tokio::test]
async fn writes_go_through_redis() {
    writes_go_through("redis").await;
}

#[tokio::test]
async fn writes_go_through_memory() {
    writes_go_through("memory").await;
}

/// An owner above `max_members` is not cached: pages, ranks and scores
/// come from the database (outcome `db`), its count from the meta.
async fn max_members_answered_from_the_database(kind: &str) {
    let pg = Pg::new().await;
    pg.insert(1, &ROWS).await;
    let lb = board(
        store(kind).await,
        &support::unique("b"),
        pg.source().await,
        5,
    )
    .await;
    let want = expected(&ROWS);
    let first = lb.top("1", 0, 4).await.expect("top");
    assert_eq!(first.outcome, CollectionOutcome::Database);
    assert_eq!(pairs(&first.value.items), want[..4]);
    assert_eq!(first.value.count, 10);
    let again = lb.top("1", 4, 4).await.expect("top");
    assert_eq!(again.outcome, CollectionOutcome::Database);
    assert_eq!(pairs(&again.value.items), want[4..8]);
    assert_eq!(again.value.items[0].rank, 5);
    let r = lb.rank("1", &want[7].0).await.expect("rank");
    assert_eq!(r.outcome, CollectionOutcome::Database);
    assert_eq!(r.value.map(|r| (r.rank, r.score)), Some((8, want[7].1)));
    // Writes still go through (the cached count is dropped).
    assert_eq!(lb.incr("1", "zz", 100.0).await.expect("incr"), 100.0);
    let top = lb.top("1", 0, 1).await.expect("top");
    assert_eq!(pairs(&top.value.items), [("zz".into(), 100.0)]);
    pg.drop().await;
}

#[tokio::test]
async fn max_members_answered_from_the_database_redis() {
    max_members_answered_from_the_database("redis").await;
}

#[tokio::test]
async fn max_members_answered_from_the_database_memory() {
    max_members_answered_from_the_database("memory").await;
}

/// 9,000 members fill in three chunks (at most 3,999 members per `ZADD`);
/// the cached board ranks every member as the database does.
#[tokio::test]
async fn chunked_fill_of_more_than_3999_members() {
    let pg = Pg::new().await;
    sqlx::query(&format!(
        "INSERT INTO {}.scores (game_id, player_id, points)
         SELECT 1, 'p' || i, i % 100 FROM generate_series(1, 9000) i",
        pg.schema
    ))
    .execute(&pg.admin)
    .await
    .expect("insert");
    let source = pg.source().await;
    let lb = board(
        store("redis").await,
        &support::unique("b"),
        source.clone(),
        10_000,
    )
    .await;
    let first = lb.top("1", 0, 1000).await.expect("top");
    assert_eq!(first.outcome, CollectionOutcome::Miss);
    assert_eq!(lb.stats().fills, 1, "the chunked fill landed");
    for offset in [0, 3998, 3999, 4000, 7998, 8500] {
        let page = lb.top("1", offset, 500).await.expect("page");
        assert_eq!(page.outcome, CollectionOutcome::Hit);
        assert_eq!(page.value.count, 9000);
        let db = source.top("1", offset, 500).await.expect("db page");
        assert_eq!(pairs(&page.value.items), db, "page at {offset}");
    }
    for member in ["p1", "p100", "p8999", "p9000"] {
        let r = lb
            .rank("1", member)
            .await
            .expect("rank")
            .value
            .expect("present");
        let (score, rank) = source.member("1", member).await.expect("db").expect("row");
        assert_eq!((r.score, r.rank), (score, rank + 1), "{member}");
    }
    pg.drop().await;
}

/// 2 instances × 50 concurrent readers of a cold owner: one load.
#[tokio::test]
async fn one_load_across_concurrent_callers_of_two_instances() {
    let pg = Pg::new().await;
    pg.insert(1, &ROWS).await;
    let prefix = support::unique("b");
    let counted = Counted::new(pg.source().await, Duration::from_millis(100));
    let a = board(store("redis").await, &prefix, counted.clone(), 1000).await;
    let b = board(store("redis").await, &prefix, counted.clone(), 1000).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let lb = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { lb.top("1", 0, 3).await }));
    }
    let want = expected(&ROWS);
    for t in tasks {
        let page = t.await.expect("task").expect("top");
        assert_eq!(pairs(&page.value.items), want[..3]);
    }
    assert_eq!(counted.loads.load(Ordering::SeqCst), 1, "one load");
    pg.drop().await;
}

/// Write-through increments race fills of the same owner, many times,
/// from two instances sharing the store (so fills and writes meet across
/// leases, not only inside one flight): odd rounds one increment against
/// three reads (its end usually applies a `ZADD` to a board a racing read
/// just filled), even rounds two increments (which overlap, so the end
/// deletes). After each round every instance answers the database's score
/// (an increment lands as a `ZADD` of the score the database returned, so
/// a fill that already read the committed row cannot make it count twice),
/// and the database holds exactly the sum of the increments.
async fn incr_racing_fills_never_counts_twice(kind: &str, rounds: usize) {
    let pg = Pg::new().await;
    pg.insert(1, &[("ann", 0), ("bob", 0)]).await;
    let shared = store(kind).await;
    let prefix = support::unique("b");
    let lb = board(shared.clone(), &prefix, pg.source().await, 1000).await;
    let other = board(shared, &prefix, pg.source().await, 1000).await;
    let mut total = 0i64;
    for round in 0..rounds {
        lb.invalidate("1").await.expect("invalidate");
        let writers = if round % 2 == 1 { 1 } else { 2 };
        let mut tasks = Vec::new();
        for i in 0..4 {
            let lb = if i % 2 == 0 {
                lb.clone()
            } else {
                other.clone()
            };
            let write = i < writers;
            tasks.push(tokio::spawn(async move {
                if write {
                    lb.incr("1", "ann", 1.0).await.map(drop)
                } else {
                    lb.top("1", 0, 10).await.map(drop)
                }
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("op");
        }
        total += writers as i64;
        let db = pg.points(1, "ann").await.expect("row");
        assert_eq!(db, total, "database = sum of increments (round {round})");
        for reader in [&lb, &other] {
            let cached = reader.score("1", "ann").await.expect("score");
            assert_eq!(
                cached.value,
                Some(total as f64),
                "round {round}: {:?} answer equals the database",
                cached.outcome
            );
        }
    }
    let applied = lb.stats().writes_applied + other.stats().writes_applied;
    let deleted = lb.stats().writes_deleted + other.stats().writes_deleted;
    // The race reached both ends: `ZADD` onto a board a read had filled,
    // and the delete of overlapping writes.
    assert!(
        applied > 0 && deleted > 0,
        "{kind}: applied {applied}, deleted {deleted}"
    );
    pg.drop().await;
}

/// The interleaving `ZINCRBY` gets wrong, forced: the owner is not
/// cached; the increment commits; a read loads the committed row and
/// fills the board (its lease was taken after the write began); then the
/// increment's end runs on that filled board. It sets the database's
/// score (`ZADD`), so the increment counts once (`ZINCRBY` would make it
/// 20).
async fn fill_after_commit_before_the_end_counts_once(kind: &str) {
    let pg = Pg::new().await;
    pg.insert(1, &[("ann", 10)]).await;
    let committed = Arc::new(tokio::sync::Notify::new());
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let mut gated = Counted::new(pg.source().await, Duration::ZERO);
    gated.gate = Some((committed.clone(), go.clone()));
    let lb = board(store(kind).await, &support::unique("b"), gated, 1000).await;
    let writer = {
        let lb = lb.clone();
        tokio::spawn(async move { lb.incr("1", "ann", 5.0).await })
    };
    committed.notified().await;
    // Not cached: this read loads the committed row (15) and fills.
    let read = lb.rank("1", "ann").await.expect("read");
    assert_eq!(read.outcome, CollectionOutcome::Miss);
    assert_eq!(read.value.map(|r| r.score), Some(15.0));
    assert_eq!(
        lb.stats().fills,
        1,
        "the fill landed before the write's end"
    );
    go.add_permits(1);
    assert_eq!(writer.await.expect("task").expect("incr"), 15.0);
    let after = lb.score("1", "ann").await.expect("score");
    assert_eq!(
        after.outcome,
        CollectionOutcome::Hit,
        "the end updated the filled board"
    );
    assert_eq!(after.value, Some(15.0), "counted once");
    assert_eq!(pg.points(1, "ann").await, Some(15));
    pg.drop().await;
}

#[tokio::test]
async fn fill_after_commit_before_the_end_counts_once_redis() {
    fill_after_commit_before_the_end_counts_once("redis").await;
}

#[tokio::test]
async fn fill_after_commit_before_the_end_counts_once_memory() {
    fill_after_commit_before_the_end_counts_once("memory").await;
}

#[tokio::test]
async fn incr_racing_fills_never_counts_twice_redis() {
    incr_racing_fills_never_counts_twice("redis", 300).await;
}

#[tokio::test]
async fn incr_racing_fills_never_counts_twice_memory() {
    incr_racing_fills_never_counts_twice("memory", 300).await;
}

/// SQLite: a `REAL` score column (fractional scores), ties by BINARY
/// descending, the same upserts.
#[tokio::test]
async fn sqlite_boards_read_and_write_through() {
    let dir = support::temp_dir("boards");
    let url = format!("sqlite://{}", dir.join("boards.db").display());
    let pool = SqlPool::connect(&url, 2).await.expect("sqlite");
    let SqlPool::Sqlite(raw) = &pool else {
        panic!("sqlite pool")
    };
    for sql in [
        "CREATE TABLE scores (game TEXT NOT NULL, player TEXT NOT NULL, points REAL NOT NULL,
         UNIQUE (game, player))",
        "CREATE TABLE nullable (game TEXT NOT NULL, player TEXT NOT NULL, points INTEGER,
         UNIQUE (game, player))",
        "INSERT INTO scores VALUES ('g', 'b', 1.5), ('g', 'B', 1.5), ('g', 'é', 1.5),
         ('g', 'a', 2.25), ('g', '10', 1.5), ('g', '9', -1)",
    ] {
        sqlx::query(sql).execute(raw).await.expect(sql);
    }
    let source = SqlBoardSource::builder(pool.clone(), "scores")
        .owner("game")
        .member("player")
        .score("points")
        .build()
        .await
        .expect("source");
    assert_eq!(source.score_kind(), ScoreKind::Float);
    let lb = board(
        store("redis").await,
        &support::unique("b"),
        source.clone(),
        100,
    )
    .await;
    let want: Vec<(String, f64)> = [
        ("a", 2.25),
        ("é", 1.5),
        ("b", 1.5),
        ("B", 1.5),
        ("10", 1.5),
        ("9", -1.0),
    ]
    .iter()
    .map(|(m, s)| (m.to_string(), *s))
    .collect();
    assert_eq!(
        source.top("g", 0, 10).await.expect("db"),
        want,
        "SQLite's order"
    );
    lb.top("g", 0, 10).await.expect("fill");
    let hit = lb.top("g", 0, 10).await.expect("hit");
    assert_eq!(hit.outcome, CollectionOutcome::Hit);
    assert_eq!(pairs(&hit.value.items), want, "Redis' order");
    assert_eq!(lb.incr("g", "9", 0.25).await.expect("incr"), -0.75);
    assert_eq!(lb.incr("g", "new", 0.5).await.expect("create"), 0.5);
    assert_eq!(lb.set_score("g", "b", 3.0).await.expect("set"), 3.0);
    let hit = lb.top("g", 0, 2).await.expect("hit");
    assert_eq!(hit.outcome, CollectionOutcome::Hit);
    assert_eq!(
        pairs(&hit.value.items),
        [("b".into(), 3.0), ("a".into(), 2.25)]
    );
    assert_eq!(source.member("g", "9").await.expect("db"), Some((-0.75, 6)));
    let r = lb
        .rank("g", "9")
        .await
        .expect("rank")
        .value
        .expect("present");
    assert_eq!((r.score, r.rank), (-0.75, 7));
    let refused = SqlBoardSource::builder(pool, "nullable")
        .owner("game")
        .member("player")
        .score("points")
        .build()
        .await
        .expect_err("nullable score");
    assert!(matches!(refused.kind(), ErrorKind::Schema(_)), "{refused}");
}

/// MariaDB: ties in `CAST(CONVERT(member USING utf8mb4) AS BINARY) DESC`
/// order, `ON DUPLICATE KEY UPDATE` increments read back in the
/// transaction, the ±2^53 guard, and a score column of another type refused.
#[tokio::test]
async fn mariadb_boards_read_and_write_through() {
    let admin = support::mysql_pool(2).await;
    let table = support::unique("scores");
    let bad = format!("{table}_dec");
    for sql in [
        format!(
            "CREATE TABLE {table} (game BIGINT NOT NULL,
             player VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
             points BIGINT NOT NULL, UNIQUE KEY (game, player))"
        ),
        format!(
            "INSERT INTO {table} VALUES (1, 'b', 5), (1, 'B', 5), (1, 'é', 5), (1, 'a', 9),
             (1, '10', 5), (1, '9', 1)"
        ),
        format!(
            "CREATE TABLE {bad} (game BIGINT NOT NULL,
             player VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
             points DECIMAL(10, 2) NOT NULL, UNIQUE KEY (game, player))"
        ),
    ] {
        sqlx::query(&sql).execute(&admin).await.expect(&sql);
    }
    let pool = SqlPool::connect(&support::mysql_url(), 3)
        .await
        .expect("mariadb");
    let source = SqlBoardSource::builder(pool.clone(), &table)
        .owner("game")
        .member("player")
        .score("points")
        .build()
        .await
        .expect("source");
    let rows = [("b", 5), ("B", 5), ("é", 5), ("a", 9), ("10", 5), ("9", 1)];
    let want = expected(&rows);
    assert_eq!(
        source.top("1", 0, 10).await.expect("db"),
        want,
        "MariaDB's order"
    );
    let lb = board(
        store("redis").await,
        &support::unique("b"),
        source.clone(),
        100,
    )
    .await;
    lb.top("1", 0, 10).await.expect("fill");
    let hit = lb.top("1", 0, 10).await.expect("hit");
    assert_eq!(hit.outcome, CollectionOutcome::Hit);
    assert_eq!(pairs(&hit.value.items), want, "Redis' order");
    for (i, (m, s)) in want.iter().enumerate() {
        assert_eq!(
            source.member("1", m).await.expect("db"),
            Some((*s, i as u64))
        );
    }
    assert_eq!(lb.incr("1", "9", 10.0).await.expect("incr"), 11.0);
    assert_eq!(lb.incr("1", "new", 2.0).await.expect("create"), 2.0);
    assert_eq!(lb.set_score("1", "B", 0.0).await.expect("set"), 0.0);
    let big = (1u64 << 53) as f64;
    let e = lb.incr("1", "a", big).await.expect_err("beyond");
    assert_eq!(e.kind(), ErrorKind::InvalidRow);
    let hit = lb.top("1", 0, 3).await.expect("hit");
    assert_eq!(hit.outcome, CollectionOutcome::Hit);
    assert_eq!(
        pairs(&hit.value.items),
        [("9".into(), 11.0), ("a".into(), 9.0), ("é".into(), 5.0)]
    );
    let refused = SqlBoardSource::builder(pool, &bad)
        .owner("game")
        .member("player")
        .score("points")
        .build()
        .await
        .expect_err("decimal score");
    assert!(matches!(refused.kind(), ErrorKind::Schema(_)), "{refused}");
    for t in [&table, &bad] {
        sqlx::query(&format!("DROP TABLE {t}"))
            .execute(&admin)
            .await
            .expect("drop");
    }
}

/// Redis down: reads answer from the database (outcome `bypass`), in the
/// same order; a write fails before the database is touched.
#[tokio::test]
async fn redis_down_reads_bypass_to_the_database() {
    let pg = Pg::new().await;
    pg.insert(1, &ROWS).await;
    let mut server = support::RedisServer::start();
    let store = larder::store::connect(&server.url_with_short_timeouts())
        .await
        .expect("own redis");
    let lb = board(store, &support::unique("b"), pg.source().await, 1000).await;
    assert_eq!(
        lb.top("1", 0, 3).await.expect("fill").outcome,
        CollectionOutcome::Miss
    );
    server.kill();
    let read = lb.top("1", 0, 100).await.expect("bypass");
    assert_eq!(read.outcome, CollectionOutcome::Bypass);
    assert_eq!(pairs(&read.value.items), expected(&ROWS));
    assert_eq!(read.value.count, 10);
    let r = lb.rank("1", "a b").await.expect("bypass rank");
    assert_eq!(r.outcome, CollectionOutcome::Bypass);
    assert_eq!(r.value.map(|r| r.rank), Some(1));
    let e = lb.incr("1", "zz", 1.0).await.expect_err("store down");
    assert_eq!(e.kind(), ErrorKind::StoreUnavailable, "{e}");
    assert_eq!(
        pg.points(1, "zz").await,
        Some(0),
        "the database was not touched"
    );
    pg.drop().await;
}

/// On a Redis Cluster every script touches one slot (the owner's hash
/// tag): a chunked fill, reads and write ends of owners spread over the
/// masters work as on one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster() {
    let pg = Pg::new().await;
    sqlx::query(&format!(
        "INSERT INTO {}.scores (game_id, player_id, points)
         SELECT g, 'p' || i, i % 50 FROM generate_series(1, 8) g, generate_series(1, 4500) i",
        pg.schema
    ))
    .execute(&pg.admin)
    .await
    .expect("insert");
    let store = support::RedisCluster::shared().store().await;
    let source = pg.source().await;
    let lb = board(store, &support::unique("b"), source.clone(), 10_000).await;
    for game in 1..=8 {
        let owner = game.to_string();
        let first = lb.top(&owner, 4000, 20).await.expect("fill");
        assert_eq!(first.outcome, CollectionOutcome::Miss);
        assert_eq!(lb.incr(&owner, "p7", 1000.0).await.expect("incr"), 1007.0);
        let top = lb.top(&owner, 0, 2).await.expect("hit");
        assert_eq!(top.outcome, CollectionOutcome::Hit, "game {game}");
        assert_eq!(
            pairs(&top.value.items),
            source.top(&owner, 0, 2).await.expect("db")
        );
        assert_eq!(top.value.items[0].member, "p7");
        let page = lb.top(&owner, 4000, 20).await.expect("hit");
        assert_eq!(
            pairs(&page.value.items),
            source.top(&owner, 4000, 20).await.expect("db")
        );
    }
    assert_eq!(lb.stats().fills, 8);
    pg.drop().await;
}

#[tokio::test]
async fn change_notifications_and_purge_keep_boards_right() {
    let pg = Pg::new().await;
    pg.insert(1, &[("ann", 10), ("bob", 5)]).await;
    pg.insert(2, &[("cy", 1)]).await;
    let source = pg.source().await;
    let channel = source.install_change_triggers().await.expect("triggers");
    let b = board(
        support::redis_store().await,
        &support::unique("b"),
        source,
        100,
    )
    .await;
    let listener = larder::ChangeListener::builder()
        .subscribe(channel, Arc::new(b.clone()))
        .application_name(&support::unique("boards_cdc"))
        .start()
        .await
        .expect("listener");
    let score = |owner: &'static str, member: &'static str| {
        let b = b.clone();
        async move { b.score(owner, member).await.expect("score").value }
    };
    assert_eq!(score("1", "bob").await, Some(5.0));
    assert_eq!(
        b.score("1", "bob").await.expect("hit").outcome,
        CollectionOutcome::Hit
    );
    assert_eq!(score("2", "bob").await, None);

    // A plain SQL UPDATE of a score, then a row moved to another owner.
    sqlx::query(&format!(
        "UPDATE {}.scores SET points = 50 WHERE player_id = 'bob'",
        pg.schema
    ))
    .execute(&pg.admin)
    .await
    .expect("update");
    support::eventually("the new score is read", || async {
        score("1", "bob").await == Some(50.0)
    })
    .await;
    sqlx::query(&format!(
        "UPDATE {}.scores SET game_id = 2 WHERE player_id = 'bob'",
        pg.schema
    ))
    .execute(&pg.admin)
    .await
    .expect("move");
    support::eventually("bob left board 1 for board 2", || async {
        score("1", "bob").await.is_none() && score("2", "bob").await == Some(50.0)
    })
    .await;

    // purge: every owner is read anew.
    assert_eq!(
        b.score("1", "ann").await.expect("read").outcome,
        CollectionOutcome::Hit
    );
    assert!(b.purge().await.expect("purge") >= 2);
    assert_eq!(
        b.score("1", "ann").await.expect("read").outcome,
        CollectionOutcome::Miss
    );
    listener.close().await;
    pg.drop().await;
}

/// A meta whose sorted set was evicted alone is a miss (then a load), never
/// an empty board: the read checks the value key in the same transaction.
#[tokio::test]
async fn a_board_whose_value_was_evicted_is_a_miss_redis() {
    let pg = Pg::new().await;
    pg.insert(1, &ROWS).await;
    let counted = Counted::new(pg.source().await, Duration::ZERO);
    let prefix = support::unique("b");
    let lb = board(store("redis").await, &prefix, counted.clone(), 1000).await;
    let want = expected(&ROWS);
    assert_eq!(
        pairs(&lb.top("1", 0, 3).await.expect("load").value.items),
        want[..3]
    );
    assert_eq!(
        lb.top("1", 0, 3).await.expect("hit").outcome,
        CollectionOutcome::Hit
    );

    assert_eq!(support::collections::evict_values(&prefix).await, 1);
    let after = lb.top("1", 0, 3).await.expect("top");
    assert_eq!(
        (pairs(&after.value.items), after.outcome),
        (want[..3].to_vec(), CollectionOutcome::Miss)
    );
}
