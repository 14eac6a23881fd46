//! What a `hash` entity saves under write-back contention: 2 cache
//! instances × 8 tasks, each task patching its own column of the same 100
//! keys, on a durable redis-server of its own and the shared PostgreSQL —
//! acknowledged patches per second for a `string` entity (read, merge,
//! compare-and-set, retried on conflict) and a `hash` entity (one script
//! that sets the field). A benchmark figure, so an example and not a test.
//!
//! ```sh
//! cargo run --release -p larder --example hash_patch_back -- [rounds, default 20]
//! ```

use larder::{Cache, Json, Representation, SqlPool, SqlSource, WriteBackOptions, WritePolicy};
use larder_test_support::RedisServer;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TASKS: usize = 16;
const KEYS: i64 = 100;

async fn cache(table: &str, redis: &str, prefix: &str, rep: Representation) -> Cache<i64, Value> {
    let pool = SqlPool::connect(&larder_test_support::pg_url(), 4)
        .await
        .expect("pool");
    let source = SqlSource::builder(pool, table)
        .entity("wide")
        .build()
        .await
        .expect("source");
    Cache::builder()
        .prefix(prefix)
        .entity("wide")
        .codec(Json)
        .representation(rep)
        .store(larder::store::connect_checked(redis).await.expect("redis"))
        .source(source)
        .write_policy(WritePolicy::Back(WriteBackOptions {
            max_delay: Duration::from_millis(200),
            ..WriteBackOptions::default()
        }))
        .build()
        .await
        .expect("cache")
}

/// Acknowledged patches per second, how many gave up (`Busy`) and how
/// many compare-and-sets were lost and retried.
async fn run(table: &str, redis: &str, rep: Representation, rounds: usize) -> (f64, u64, u64) {
    let prefix = larder_test_support::unique("hpb");
    let instances = [
        cache(table, redis, &prefix, rep).await,
        cache(table, redis, &prefix, rep).await,
    ];
    // The steady state: every row cached before the timed patches.
    for id in 0..KEYS {
        instances[0].get(&id).await.expect("warm");
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let cache = instances[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut busy = 0_u64;
            for round in 0..rounds {
                for id in 0..KEYS {
                    let patch = json!({ format!("c{t}"): format!("{rep}-{round}") });
                    match cache.patch(&id, patch.as_object().expect("object")).await {
                        Ok(_) => {}
                        Err(larder::Error::Busy { .. }) => busy += 1,
                        Err(e) => panic!("patch: {e}"),
                    }
                }
            }
            busy
        }));
    }
    let mut busy = 0;
    for t in tasks {
        busy += t.await.expect("task");
    }
    let took = started.elapsed();
    let mut conflicts = 0;
    for c in &instances {
        conflicts += c.write_back_stats().map_or(0, |s| s.conflicts);
        c.close(Duration::from_secs(30)).await.expect("close");
    }
    let acks = (TASKS * rounds) as f64 * KEYS as f64;
    (acks / took.as_secs_f64(), busy, conflicts)
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let admin = larder_test_support::pg_pool(2).await;
    let schema = larder_test_support::unique("hpb");
    let table = format!("{schema}.wide");
    let cols: Vec<String> = (0..20).map(|c| format!("c{c} text")).collect();
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, {})",
            cols.join(", ")
        ),
        format!("INSERT INTO {table} (id) SELECT generate_series(0, {KEYS} - 1)"),
    ] {
        sqlx::query(&sql).execute(&admin).await.expect(&sql);
    }
    let server = RedisServer::durable();
    for rep in [Representation::String, Representation::Hash] {
        let (rate, busy, conflicts) = run(&table, &server.url(), rep, rounds).await;
        println!(
            "{rep:>6}: {rate:>8.0} acknowledged patches/s, {conflicts} compare-and-sets retried, {busy} gave up (Busy)"
        );
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop");
}
