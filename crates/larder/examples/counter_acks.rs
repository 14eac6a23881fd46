//! What write-back counters cost and save, on a durable redis-server of
//! its own (`appendfsync always`) and the shared PostgreSQL: 32 tasks
//! sending 20,000 writes over 1,000 rows picked by Zipf(1.0) — first as
//! write-back `put`s of a row, then as write-back increments (`incr`) of
//! one integer column of a `hash` entity — acknowledged writes per second
//! of each, in the same run. Then the increments' database writes: a
//! trigger counts the rows each flush UPDATEs, against the floor (the
//! distinct rows touched per `max_delay` window, 1 s). A benchmark figure,
//! so an example and not a test.
//!
//! ```sh
//! cargo run --release -p larder --example counter_acks -- [writes, default 20000]
//! ```

use larder::{Cache, Json, Representation, SqlPool, SqlSource, WriteBackOptions, WritePolicy};
use larder_test_support::RedisServer;
use rand::Rng;
use serde_json::{json, Number, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROWS: u64 = 1_000;
const TASKS: usize = 32;
const MAX_DELAY: Duration = Duration::from_secs(1);

async fn cache(table: &str, redis: &str, prefix: &str, rep: Representation) -> Cache<i64, Value> {
    let pool = SqlPool::connect(&larder_test_support::pg_url(), 4)
        .await
        .expect("pool");
    let source = SqlSource::builder(pool, table)
        .entity("counted")
        .build()
        .await
        .expect("source");
    Cache::builder()
        .prefix(prefix)
        .entity("counted")
        .codec(Json)
        .representation(rep)
        .store(larder::store::connect_checked(redis).await.expect("redis"))
        .source(source)
        .write_policy(WritePolicy::Back(WriteBackOptions {
            max_delay: MAX_DELAY,
            ..WriteBackOptions::default()
        }))
        .build()
        .await
        .expect("cache")
}

/// Sends `writes` writes from `TASKS` tasks, ids by Zipf; acks per second
/// and the ids each second of the run touched.
async fn run(cache: &Cache<i64, Value>, writes: usize, incr: bool) -> (f64, Vec<HashSet<i64>>) {
    let cdf = Arc::new(larder_test_support::zipf_cdf(ROWS));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (cache, cdf) = (cache.clone(), cdf.clone());
        tasks.push(tokio::spawn(async move {
            let mut touched: Vec<(u64, i64)> = Vec::new();
            let one = Number::from(1);
            for i in (t..writes).step_by(TASKS) {
                let u: f64 = rand::rng().random();
                let id = larder_test_support::zipf_pick(&cdf, u) as i64;
                if incr {
                    cache.incr(&id, "views", &one).await.expect("incr");
                } else {
                    let row = json!({"id": id, "views": i, "note": "x"});
                    cache.put(&id, &row).await.expect("put");
                }
                touched.push((started.elapsed().as_secs(), id));
            }
            touched
        }));
    }
    let mut windows: Vec<HashSet<i64>> = Vec::new();
    for t in tasks {
        for (second, id) in t.await.expect("task") {
            let second = second as usize;
            if windows.len() <= second {
                windows.resize_with(second + 1, HashSet::new);
            }
            windows[second].insert(id);
        }
    }
    (writes as f64 / started.elapsed().as_secs_f64(), windows)
}

#[tokio::main]
async fn main() {
    let writes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let admin = larder_test_support::pg_pool(2).await;
    let schema = larder_test_support::unique("cacks");
    let table = format!("{schema}.counted");
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {table} (id bigint PRIMARY KEY, views bigint NOT NULL DEFAULT 0, note text)"),
        format!("INSERT INTO {table} (id) SELECT generate_series(0, {ROWS} - 1)"),
        format!("CREATE TABLE {schema}.writes (id bigint NOT NULL)"),
        format!(
            "CREATE FUNCTION {schema}.count_write() RETURNS trigger AS $$
             BEGIN INSERT INTO {schema}.writes VALUES (NEW.id); RETURN NULL; END $$ LANGUAGE plpgsql"
        ),
    ] {
        sqlx::query(&sql).execute(&admin).await.expect(&sql);
    }
    let server = RedisServer::durable();
    let prefix = larder_test_support::unique("cacks");
    let puts = cache(
        &table,
        &server.url(),
        &format!("{prefix}p"),
        Representation::Hash,
    )
    .await;
    let (put_rate, _) = run(&puts, writes, false).await;
    puts.close(Duration::from_secs(60)).await.expect("close");
    sqlx::query(&format!("UPDATE {table} SET views = 0"))
        .execute(&admin)
        .await
        .expect("reset");
    let counters = cache(
        &table,
        &server.url(),
        &format!("{prefix}c"),
        Representation::Hash,
    )
    .await;
    for id in 0..ROWS as i64 {
        counters.get(&id).await.expect("warm");
    }
    sqlx::query(&format!(
        "CREATE TRIGGER count_write AFTER UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {schema}.count_write()"
    ))
    .execute(&admin)
    .await
    .expect("trigger");
    let (incr_rate, windows) = run(&counters, writes, true).await;
    counters
        .close(Duration::from_secs(60))
        .await
        .expect("close");
    let row_writes: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.writes"))
        .fetch_one(&admin)
        .await
        .expect("writes");
    let floor: usize = windows.iter().map(HashSet::len).sum();
    let total: i64 = sqlx::query_scalar(&format!("SELECT sum(views)::bigint FROM {table}"))
        .fetch_one(&admin)
        .await
        .expect("sum");
    println!(
        "{writes} writes from {TASKS} tasks over {ROWS} rows (Zipf 1.0), AOF always, max_delay 1 s"
    );
    println!("write-back put:  {put_rate:>8.0} acks/s");
    println!(
        "write-back incr: {incr_rate:>8.0} acks/s  ({:.2}× the puts)",
        incr_rate / put_rate
    );
    println!(
        "database row writes: {row_writes} for {writes} increments ({:.4} per increment); floor {floor} (distinct rows per 1 s window): {:.2}× the floor; every increment counted: {}",
        row_writes as f64 / writes as f64,
        row_writes as f64 / floor.max(1) as f64,
        total == writes as i64
    );
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop");
}
