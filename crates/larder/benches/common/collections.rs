//! The collections of `benches/collections.rs` and
//! `examples/collections_profile.rs`, loaded once so every read is a hit,
//! beside raw Redis keys holding the same members and rows: one setup, so
//! the bench and the profile compare the same thing.
//!
//! larder's set and leaderboard are over SQLite tables, its feed over a
//! PostgreSQL table. Needs Redis and PostgreSQL (`LARDER_TEST_REDIS_URL`,
//! `LARDER_TEST_PG_URL`).

use larder::{
    store, CollectionOutcome, FeedCache, Leaderboard, SetCache, SqlBoardSource, SqlFeedSource,
    SqlPool, SqlSetSource,
};
use larder_test_support::{pg_url, redis_url, unique};
use std::time::Duration;

/// Members of the set, items of the feed.
pub const N: u64 = 20;

/// Members of the leaderboard.
pub const BOARD: u64 = 1_000;

/// The cached collections and a raw connection whose keys
/// `<prefix>:raw:{set,feed,board}` hold the same data.
pub struct Collections {
    /// Visitors of page `home`: `visitor-00` .. `visitor-19`.
    pub set: SetCache,
    /// The 20 posts of user `1`.
    pub feed: FeedCache,
    /// Game `g1`: 1,000 players.
    pub board: Leaderboard,
    /// A connection for the raw commands.
    pub conn: redis::aio::ConnectionManager,
    /// The prefix of every key.
    pub prefix: String,
}

impl Collections {
    /// The raw key of `name` (`set`, `feed`, `board`).
    pub fn raw_key(&self, name: &str) -> String {
        format!("{}:raw:{name}", self.prefix)
    }
}

/// Builds the collections, loads each once (asserting the next read is a
/// hit) and writes the raw keys.
pub async fn collections() -> Collections {
    let prefix = unique("bench_coll");
    let schema = unique("bench_feed");

    let store = store::connect_checked(&redis_url()).await.expect("store");
    // The set: visitors of one page, in SQLite.
    let path = std::env::temp_dir().join(format!("{}.db", unique("bench_set")));
    let lite = SqlPool::connect(&format!("sqlite://{}", path.display()), 1)
        .await
        .expect("sqlite");
    if let SqlPool::Sqlite(db) = &lite {
        sqlx::query("CREATE TABLE visits (page TEXT NOT NULL, visitor TEXT NOT NULL, UNIQUE (page, visitor))")
            .execute(db)
            .await
            .expect("table");
        for m in 0..N {
            sqlx::query("INSERT INTO visits VALUES ('home', ?1)")
                .bind(format!("visitor-{m:02}"))
                .execute(db)
                .await
                .expect("row");
        }
        sqlx::query("CREATE TABLE scores (game TEXT NOT NULL, player TEXT NOT NULL, points INTEGER NOT NULL, UNIQUE (game, player))")
            .execute(db)
            .await
            .expect("table");
        sqlx::query(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {BOARD})
             INSERT INTO scores SELECT 'g1', printf('player-%04d', i), (i * 7919) % 100000 FROM n"
        ))
        .execute(db)
        .await
        .expect("scores");
    }
    let board = Leaderboard::builder()
        .prefix(&prefix)
        .name("scores")
        .store(store.clone())
        .source(
            SqlBoardSource::builder(lite.clone(), "scores")
                .owner("game")
                .member("player")
                .score("points")
                .build()
                .await
                .expect("board source"),
        )
        .ttl(Duration::from_secs(3600))
        .build()
        .await
        .expect("board");
    let set = SetCache::builder()
        .prefix(&prefix)
        .name("visitors")
        .store(store.clone())
        .source(
            SqlSetSource::builder(lite, "visits")
                .owner("page")
                .member("visitor")
                .build()
                .await
                .expect("set source"),
        )
        .ttl(Duration::from_secs(3600))
        .build()
        .await
        .expect("set");
    // The feed: posts of one user, in PostgreSQL.
    let pg = SqlPool::connect(&pg_url(), 2).await.expect("postgres");
    if let SqlPool::Postgres(db) = &pg {
        for sql in [
            format!("CREATE SCHEMA {schema}"),
            format!("CREATE TABLE {schema}.posts (id bigserial PRIMARY KEY, user_id bigint NOT NULL, body text NOT NULL)"),
            format!("CREATE INDEX ON {schema}.posts (user_id, id DESC)"),
            format!("INSERT INTO {schema}.posts (user_id, body) SELECT 1, 'post number ' || g FROM generate_series(1, {N}) g"),
        ] {
            sqlx::query(&sql).execute(db).await.expect("feed table");
        }
    }
    let feed = FeedCache::builder()
        .prefix(&prefix)
        .name("user_posts")
        .store(store)
        .source(
            SqlFeedSource::builder(pg.clone(), &format!("{schema}.posts"))
                .owner("user_id")
                .columns(["id", "body"])
                .build()
                .await
                .expect("feed source"),
        )
        .ttl(Duration::from_secs(3600))
        .build()
        .await
        .expect("feed");
    // Loaded once: every read below is a hit.
    set.contains("home", "visitor-07").await.expect("set load");
    board.top("g1", 0, 10).await.expect("board load");
    assert_eq!(
        board.top("g1", 0, 10).await.expect("hit").outcome,
        CollectionOutcome::Hit
    );
    let page = feed.page("1", 0, N as usize).await.expect("feed load");
    assert_eq!(page.value.items.len(), N as usize);
    assert_eq!(
        feed.page("1", 0, N as usize).await.expect("hit").outcome,
        CollectionOutcome::Hit
    );
    // The raw side: the same members and rows under keys of its own.
    let mut conn = redis::Client::open(redis_url())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("redis");
    for m in 0..N {
        let _: () = redis::cmd("ZADD")
            .arg(format!("{prefix}:raw:set"))
            .arg(0)
            .arg(format!("visitor-{m:02}"))
            .query_async(&mut conn)
            .await
            .expect("zadd");
    }
    let everyone = board.top("g1", 0, 1000).await.expect("all");
    for r in &everyone.value.items {
        let _: () = redis::cmd("ZADD")
            .arg(format!("{prefix}:raw:board"))
            .arg(r.score.to_string())
            .arg(&r.member)
            .query_async(&mut conn)
            .await
            .expect("zadd");
    }
    for row in &page.value.items {
        let _: () = redis::cmd("RPUSH")
            .arg(format!("{prefix}:raw:feed"))
            .arg(row)
            .query_async(&mut conn)
            .await
            .expect("rpush");
    }
    if let SqlPool::Postgres(db) = &pg {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(db)
            .await
            .expect("drop");
    }
    Collections {
        set,
        feed,
        board,
        conn,
        prefix,
    }
}

/// Raw `ZSCORE` of visitor `i % N`: a member.
pub async fn raw_zscore(conn: &mut redis::aio::ConnectionManager, key: &str, i: u64) {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(key)
        .arg(format!("visitor-{:02}", i % N))
        .query_async(conn)
        .await
        .expect("ZSCORE");
    assert!(score.is_some());
}

/// `SetCache::contains` of visitor `i % N`: a member, a hit.
pub async fn set_contains(set: &SetCache, i: u64) {
    let r = set
        .contains("home", &format!("visitor-{:02}", i % N))
        .await
        .expect("contains");
    assert!(r.value && r.outcome == CollectionOutcome::Hit);
}

/// Raw `LRANGE 0 19`: the 20 rows.
pub async fn raw_lrange(conn: &mut redis::aio::ConnectionManager, key: &str) {
    let rows: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(N - 1)
        .query_async(conn)
        .await
        .expect("LRANGE");
    assert_eq!(rows.len(), N as usize);
}

/// `FeedCache::page` of 20: the 20 rows, a hit.
pub async fn feed_page(feed: &FeedCache) {
    let p = feed.page("1", 0, N as usize).await.expect("page");
    assert!(p.outcome == CollectionOutcome::Hit && p.value.items.len() == N as usize);
}

/// Raw `ZREVRANGE 0 9 WITHSCORES`: the top 10.
pub async fn raw_zrevrange(conn: &mut redis::aio::ConnectionManager, key: &str) {
    let top: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
        .arg(key)
        .arg(0)
        .arg(9)
        .arg("WITHSCORES")
        .query_async(conn)
        .await
        .expect("ZREVRANGE");
    assert_eq!(top.len(), 10);
}

/// `Leaderboard::top` 10: the top 10, a hit.
pub async fn board_top(board: &Leaderboard) {
    let t = board.top("g1", 0, 10).await.expect("top");
    assert!(t.outcome == CollectionOutcome::Hit && t.value.items.len() == 10);
}
