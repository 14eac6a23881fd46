//! Write-back against write-through on PostgreSQL or MariaDB, in the same run:
//! acknowledged writes per second, acknowledgement latency, and database
//! rows written per application write.
//!
//! 100,000 writes over 1,000 keys drawn from a Zipf(1.0) distribution by 32
//! tasks. Write-back runs on a `redis-server` the bench starts itself with
//! `appendonly yes` + `appendfsync always` (the only setting larder calls
//! durable, so every acknowledgement includes an fsync) and a 1 s
//! `max_delay`; write-through on the same Redis. Needs `redis-server` on the
//! PATH and the database at `LARDER_BENCH_DB_URL` (default: the tests'
//! PostgreSQL, `LARDER_TEST_PG_URL` or `postgres://postgres@127.0.0.1:5432/test`):
//! a `postgres://` or a `mysql://` URL (MariaDB, e.g.
//! `mysql://root@127.0.0.1:3306/test`).
//!
//! Run: `cargo bench -p larder --bench write_policies` (`WRITES=` to change
//! the count; `LARDER_BENCH_DB_URL=mysql://root@127.0.0.1:3306/test` for MariaDB).

#![allow(missing_docs)]

use larder::{Cache, SqlPool, SqlSource, WriteBackOptions, WritePolicy};
use larder_test_support::RedisServer;

mod common;

use common::Zipf;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 1_000;
const TASKS: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    id: i64,
    version: i64,
    payload: String,
}

struct Figures {
    name: &'static str,
    seconds: f64,
    latencies: Vec<Duration>,
    rows_written: u64,
}

impl Figures {
    fn print(&mut self, writes: usize) {
        self.latencies.sort();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            self.latencies[i].as_secs_f64() * 1e3
        };
        println!(
            "{:<14} {:>9.0} acks/s   p50 {:>7.3} ms   p99 {:>7.3} ms   db rows / write {:>6.4}",
            self.name,
            writes as f64 / self.seconds,
            pct(0.5),
            pct(0.99),
            self.rows_written as f64 / writes as f64,
        );
    }
}

/// Runs one statement the benchmark's databases share the syntax of.
async fn exec(pool: &SqlPool, sql: &str) {
    match pool {
        SqlPool::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
        SqlPool::MySql(p) => sqlx::query(sql).execute(p).await.map(drop),
        SqlPool::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
    }
    .expect(sql);
}

async fn table(pool: &SqlPool, name: &str) {
    for sql in [
        format!("DROP TABLE IF EXISTS {name}"),
        format!("CREATE TABLE {name} (id bigint PRIMARY KEY, version bigint NOT NULL, payload text NOT NULL)"),
    ] {
        exec(pool, &sql).await;
    }
}

async fn run(
    name: &'static str,
    cache: Cache<i64, Row>,
    writes: usize,
    zipf: Arc<Zipf>,
) -> Figures {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (cache, zipf) = (cache.clone(), zipf.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                let mut latencies = Vec::with_capacity(writes / TASKS + 1);
                for n in (t..writes).step_by(TASKS) {
                    let id = zipf.sample(&mut rng) as i64;
                    let row = Row {
                        id,
                        version: n as i64,
                        payload: "x".repeat(64),
                    };
                    let t0 = Instant::now();
                    cache.put(&id, &row).await.expect("put");
                    latencies.push(t0.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(writes);
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    let seconds = started.elapsed().as_secs_f64();
    Figures {
        name,
        seconds,
        latencies,
        rows_written: 0,
    }
}

#[tokio::main]
async fn main() {
    let writes: usize = std::env::var("WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let url =
        std::env::var("LARDER_BENCH_DB_URL").unwrap_or_else(|_| larder_test_support::pg_url());
    // appendonly yes + appendfsync always: every acknowledgement includes an fsync.
    let redis = RedisServer::durable();
    let admin = SqlPool::connect(&url, 2).await.expect("database");
    let database = match admin {
        SqlPool::Postgres(_) => "PostgreSQL",
        SqlPool::MySql(_) => "MariaDB",
        SqlPool::Sqlite(_) => "SQLite",
    };
    let zipf = Arc::new(Zipf::new(KEYS, 1.0));
    println!("{writes} writes, {KEYS} keys, Zipf(1.0), {TASKS} tasks; {database}; Redis with appendonly yes + appendfsync always");

    let mut results = Vec::new();
    for (name, policy) in [
        ("write-through", WritePolicy::Through),
        (
            "write-back",
            WritePolicy::Back(WriteBackOptions {
                max_delay: Duration::from_secs(1),
                ..WriteBackOptions::default()
            }),
        ),
    ] {
        let table_name = format!("bench_{}", name.replace('-', "_"));
        table(&admin, &table_name).await;
        let pool = SqlPool::connect(&url, 16).await.expect("pool");
        let source = SqlSource::builder(pool, &table_name)
            .entity("rows")
            .build()
            .await
            .expect("source");
        let cache: Cache<i64, Row> = Cache::builder()
            .prefix(format!("bench{}", std::process::id()))
            .entity(table_name.replace('_', "-"))
            .store(
                larder::store::connect_checked(&redis.url())
                    .await
                    .expect("redis"),
            )
            .source(source)
            .write_policy(policy)
            .build()
            .await
            .expect("cache");
        let mut figures = run(name, cache.clone(), writes, zipf.clone()).await;
        if policy.is_write_back() {
            cache.close(Duration::from_secs(60)).await.expect("close");
            figures.rows_written = cache.write_back_stats().map_or(0, |s| s.rows_written);
        } else {
            figures.rows_written = writes as u64;
        }
        figures.print(writes);
        results.push(figures);
        exec(&admin, &format!("DROP TABLE {table_name}")).await;
    }
    let through = writes as f64 / results[0].seconds;
    let back = writes as f64 / results[1].seconds;
    println!("write-back / write-through acks/s: {:.1}x", back / through);
}
