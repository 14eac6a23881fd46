//! What write-back leaderboards cost and save, on a durable redis-server
//! of its own (`appendfsync always`) and the shared PostgreSQL: 32 tasks
//! sending writes over 1,000 members picked by Zipf(1.0) — first as
//! write-back `put`s of an entity's rows, then as write-back adds of one
//! set's members, then as write-back increments of one board's members —
//! acknowledged writes per second of each, in the same run. Then the increments' database writes: a trigger counts the
//! rows each flush inserts or updates, against the floor (the distinct
//! members touched per `max_delay` window, 1 s). Then a top-10 read of the
//! cached board against a raw `ZREVRANGE … WITHSCORES` of its key through
//! redis-rs, 16 tasks each. A benchmark figure, so an example and not a
//! test.
//!
//! ```sh
//! cargo run --release -p larder --example board_acks -- [writes, default 20000]
//! ```

use larder::{
    Cache, Json, Leaderboard, SetCache, SqlBoardSource, SqlPool, SqlSetSource, SqlSource,
    WriteBackOptions, WritePolicy,
};
use larder_test_support::RedisServer;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MEMBERS: u64 = 1_000;
const TASKS: usize = 32;
const READ_TASKS: usize = 16;
const MAX_DELAY: Duration = Duration::from_secs(1);

fn options() -> WriteBackOptions {
    WriteBackOptions {
        max_delay: MAX_DELAY,
        ..WriteBackOptions::default()
    }
}

/// Sends `writes` writes from `TASKS` tasks, members by Zipf, through
/// `write`; acks per second and the members each second touched.
async fn run<F, Fut>(writes: usize, write: F) -> (f64, Vec<HashSet<u64>>)
where
    F: Fn(u64, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cdf = Arc::new(larder_test_support::zipf_cdf(MEMBERS));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (write, cdf) = (write.clone(), cdf.clone());
        tasks.push(tokio::spawn(async move {
            let mut touched: Vec<(u64, u64)> = Vec::new();
            for i in (t..writes).step_by(TASKS) {
                let u: f64 = rand::rng().random();
                let m = larder_test_support::zipf_pick(&cdf, u) as u64;
                write(m, i).await;
                touched.push((started.elapsed().as_secs(), m));
            }
            touched
        }));
    }
    let mut windows: Vec<HashSet<u64>> = Vec::new();
    for t in tasks {
        for (second, m) in t.await.expect("task") {
            let second = second as usize;
            if windows.len() <= second {
                windows.resize_with(second + 1, HashSet::new);
            }
            windows[second].insert(m);
        }
    }
    (writes as f64 / started.elapsed().as_secs_f64(), windows)
}

/// Reads per second of `read` from `READ_TASKS` tasks, `reads` in all.
async fn reads_per_second<F, Fut>(reads: usize, read: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..READ_TASKS)
        .map(|_| {
            let read = read.clone();
            tokio::spawn(async move {
                for _ in 0..reads / READ_TASKS {
                    read().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("reader");
    }
    reads as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let writes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let admin = larder_test_support::pg_pool(2).await;
    let schema = larder_test_support::unique("backs");
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.rows (id bigint PRIMARY KEY, views bigint NOT NULL DEFAULT 0, note text)"),
        format!(
            "CREATE TABLE {schema}.scores (game_id bigint NOT NULL, player_id text NOT NULL, \
             points bigint NOT NULL, UNIQUE (game_id, player_id))"
        ),
        format!("CREATE TABLE {schema}.writes (player_id text NOT NULL)"),
        format!(
            "CREATE TABLE {schema}.follows (user_id bigint NOT NULL, follower text NOT NULL, \
             UNIQUE (user_id, follower))"
        ),
        format!("CREATE INDEX ON {schema}.follows (user_id, follower COLLATE \"C\")"),
        format!(
            "CREATE FUNCTION {schema}.count_write() RETURNS trigger AS $$
             BEGIN INSERT INTO {schema}.writes VALUES (NEW.player_id); RETURN NULL; END $$ LANGUAGE plpgsql"
        ),
        format!(
            "CREATE TRIGGER count_write AFTER INSERT OR UPDATE ON {schema}.scores \
             FOR EACH ROW EXECUTE FUNCTION {schema}.count_write()"
        ),
    ] {
        sqlx::query(&sql).execute(&admin).await.expect(&sql);
    }
    let server = RedisServer::durable();
    let store = larder::store::connect_checked(&server.url())
        .await
        .expect("redis");
    let prefix = larder_test_support::unique("backs");
    let pool = || async {
        SqlPool::connect(&larder_test_support::pg_url(), 4)
            .await
            .expect("pool")
    };

    let puts: Cache<i64, Value> = Cache::builder()
        .prefix(&prefix)
        .entity("rows")
        .codec(Json)
        .store(store.clone())
        .source(
            SqlSource::builder(pool().await, &format!("{schema}.rows"))
                .entity("rows")
                .build()
                .await
                .expect("source"),
        )
        .write_policy(WritePolicy::Back(options()))
        .build()
        .await
        .expect("cache");
    let put_rate = {
        let puts = puts.clone();
        run(writes, move |m, i| {
            let puts = puts.clone();
            async move {
                let row = json!({"id": m, "views": i, "note": "x"});
                puts.put(&(m as i64), &row).await.expect("put");
            }
        })
        .await
        .0
    };
    puts.close(Duration::from_secs(60)).await.expect("close");

    let set = SetCache::builder()
        .prefix(&prefix)
        .name("follows")
        .store(store.clone())
        .source(
            SqlSetSource::builder(pool().await, &format!("{schema}.follows"))
                .owner("user_id")
                .member("follower")
                .build()
                .await
                .expect("set source"),
        )
        .write_back(options())
        .build()
        .await
        .expect("set");
    set.count("1").await.expect("warm");
    let add_rate = {
        let set = set.clone();
        run(writes, move |m, _| {
            let set = set.clone();
            async move {
                set.add("1", &format!("p{m}")).await.expect("add");
            }
        })
        .await
        .0
    };
    set.close().await.expect("close");
    let stored: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.follows"))
        .fetch_one(&admin)
        .await
        .expect("follows");
    assert_eq!(stored, set.count("1").await.expect("count").value as i64);

    let board = Leaderboard::builder()
        .prefix(&prefix)
        .name("scores")
        .store(store.clone())
        .source(
            SqlBoardSource::builder(pool().await, &format!("{schema}.scores"))
                .owner("game_id")
                .member("player_id")
                .score("points")
                .build()
                .await
                .expect("board source"),
        )
        .write_back(options())
        .build()
        .await
        .expect("board");
    board.top("1", 0, 10).await.expect("warm");
    let (incr_rate, windows) = {
        let board = board.clone();
        run(writes, move |m, _| {
            let board = board.clone();
            async move {
                board.incr("1", &format!("p{m}"), 1.0).await.expect("incr");
            }
        })
        .await
    };
    board.flush().await.expect("flush");
    let row_writes: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.writes"))
        .fetch_one(&admin)
        .await
        .expect("writes");
    let floor: usize = windows.iter().map(HashSet::len).sum();
    let total: i64 = sqlx::query_scalar(&format!(
        "SELECT coalesce(sum(points), 0)::bigint FROM {schema}.scores"
    ))
    .fetch_one(&admin)
    .await
    .expect("sum");

    // Top-10 reads: the board's own read against redis-rs on its key.
    let reads = 100_000;
    let top = {
        let board = board.clone();
        reads_per_second(reads, move || {
            let board = board.clone();
            async move {
                let page = board.top("1", 0, 10).await.expect("top");
                assert_eq!(page.value.items.len(), 10);
            }
        })
        .await
    };
    let client = redis::Client::open(server.url()).expect("client");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let key: String = {
        let mut c = conn.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:{{scores:*}}:v:1"))
            .query_async(&mut c)
            .await
            .expect("keys");
        keys.into_iter().next().expect("the board's key")
    };
    let raw = reads_per_second(reads, move || {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move {
            let page: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
                .arg(&key)
                .arg(0)
                .arg(9)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .expect("zrevrange");
            assert_eq!(page.len(), 10);
        }
    })
    .await;
    board.close().await.expect("close");

    println!(
        "{writes} writes from {TASKS} tasks over {MEMBERS} members (Zipf 1.0), AOF always, max_delay 1 s"
    );
    println!("write-back put (entity): {put_rate:>8.0} acks/s");
    println!(
        "write-back set add:      {add_rate:>8.0} acks/s  ({:.2}× the puts; {stored} members stored)",
        add_rate / put_rate
    );
    println!(
        "write-back board incr:   {incr_rate:>8.0} acks/s  ({:.2}× the puts)",
        incr_rate / put_rate
    );
    println!(
        "database row writes: {row_writes} for {writes} increments ({:.4} per increment); floor {floor} (distinct members per 1 s window): {:.2}× the floor; every increment counted: {}",
        row_writes as f64 / writes as f64,
        row_writes as f64 / floor.max(1) as f64,
        total == writes as i64
    );
    println!(
        "top-10 read, {READ_TASKS} tasks: larder {top:>8.0}/s, raw ZREVRANGE {raw:>8.0}/s ({:.2}×)",
        top / raw
    );
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop");
}
