//! Sets, feeds and leaderboards on their hit path, next to the raw Redis
//! command that answers the same question: a membership read
//! (`SetCache::contains`) against `ZSCORE` on a sorted set of the same
//! members, a 20-item feed page (`FeedCache::page`) against `LRANGE 0 19`
//! of a list holding the same 20 rows (raw JSON, so the raw side moves the
//! same row bytes), and a leaderboard's top 10 of 1,000 members
//! (`Leaderboard::top`) against `ZREVRANGE 0 9 WITHSCORES` of a sorted set
//! of the same scores.
//!
//! From 1 and from 32 concurrent tasks, same run. larder's sets and
//! leaderboards are over SQLite tables and its feeds over a PostgreSQL
//! table (each loaded once, then every read is a hit). Needs Redis on 127.0.0.1:6379 and PostgreSQL
//! (`LARDER_TEST_REDIS_URL`, `LARDER_TEST_PG_URL`).
//!
//! Run: `cargo bench -p larder --bench collections`; the figures are the
//! ratios of `larder_*` to `raw_*` throughput (reads/s).

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use larder::{
    store, CollectionOutcome, FeedCache, Leaderboard, SetCache, SqlBoardSource, SqlFeedSource,
    SqlPool, SqlSetSource,
};
use std::time::Duration;

mod common;

use common::concurrent;
use larder_test_support::{pg_url, redis_url, unique};

/// Members of the set, items of the feed.
const N: u64 = 20;

/// Members of the leaderboard.
const BOARD: u64 = 1_000;

fn collections(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let prefix = unique("bench_coll");
    let schema = unique("bench_feed");
    let (set, feed, board, conn) = rt.block_on(async {
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
        (set, feed, board, conn)
    });

    let mut group = c.benchmark_group("collections");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for tasks in [1u64, 32] {
        let raw = |name: &str| (conn.clone(), format!("{prefix}:raw:{name}"));
        concurrent(
            &mut group,
            &rt,
            ("raw_zscore", tasks),
            raw("set"),
            |(mut raw, key), i| async move {
                let score: Option<f64> = redis::cmd("ZSCORE")
                    .arg(&key)
                    .arg(format!("visitor-{:02}", i % N))
                    .query_async(&mut raw)
                    .await
                    .expect("zscore");
                assert!(score.is_some());
            },
        );
        concurrent(
            &mut group,
            &rt,
            ("larder_set_contains", tasks),
            set.clone(),
            |s, i| async move {
                let r = s
                    .contains("home", &format!("visitor-{:02}", i % N))
                    .await
                    .expect("contains");
                assert!(r.value && r.outcome == CollectionOutcome::Hit);
            },
        );
        concurrent(
            &mut group,
            &rt,
            ("raw_lrange_20", tasks),
            raw("feed"),
            |(mut raw, key), _| async move {
                let rows: Vec<String> = redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(N - 1)
                    .query_async(&mut raw)
                    .await
                    .expect("lrange");
                assert_eq!(rows.len(), N as usize);
            },
        );
        concurrent(
            &mut group,
            &rt,
            ("larder_feed_page_20", tasks),
            feed.clone(),
            |f, _| async move {
                let p = f.page("1", 0, N as usize).await.expect("page");
                assert!(p.outcome == CollectionOutcome::Hit && p.value.items.len() == N as usize);
            },
        );
        concurrent(
            &mut group,
            &rt,
            ("raw_zrevrange_10", tasks),
            raw("board"),
            |(mut raw, key), _| async move {
                let top: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(9)
                    .arg("WITHSCORES")
                    .query_async(&mut raw)
                    .await
                    .expect("zrevrange");
                assert_eq!(top.len(), 10);
            },
        );
        concurrent(
            &mut group,
            &rt,
            ("larder_board_top_10", tasks),
            board.clone(),
            |l, _| async move {
                let t = l.top("g1", 0, 10).await.expect("top");
                assert!(t.outcome == CollectionOutcome::Hit && t.value.items.len() == 10);
            },
        );
    }
    group.finish();
}

criterion_group!(benches, collections);
criterion_main!(benches);
