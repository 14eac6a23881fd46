//! A fixed workload for counting the client-side instructions of a
//! write-back `put` (its acknowledgement), where wall-clock figures are
//! too noisy to compare: `n` sequential `put`s of a small row over 100
//! ids, on a durable `redis-server` of its own (`appendfsync always`) and
//! a table in the shared PostgreSQL. One thread, so runs repeat exactly;
//! the flusher waits a minute, so it does not run in between.
//!
//! ```sh
//! cargo build --release -p larder --example write_back_profile
//! for n in 1 1000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.wb.$n \
//!     target/release/examples/write_back_profile $n
//! done
//! # instructions per put: (total at 1000 − total at 1) / 999
//! ```

use larder::{Cache, SqlSource, WriteBackOptions, WritePolicy};
use larder_test_support::RedisServer;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

const IDS: i64 = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    id: i64,
    version: i64,
    payload: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let puts: i64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000)
        .max(1);
    let admin = larder_test_support::pg_pool(2).await;
    let schema = larder_test_support::unique("wbp");
    let table = format!("{schema}.rows");
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {table} (id bigint PRIMARY KEY, version bigint NOT NULL, payload text NOT NULL)"),
    ] {
        sqlx::query(&sql).execute(&admin).await.expect(&sql);
    }
    let server = RedisServer::durable();
    let pool = larder::SqlPool::connect(&larder_test_support::pg_url(), 2)
        .await
        .expect("pool");
    let source = SqlSource::builder(pool, &table)
        .entity("rows")
        .build()
        .await
        .expect("source");
    let cache: Cache<i64, Row> = Cache::builder()
        .prefix(larder_test_support::unique("wbp").as_str())
        .entity("rows")
        .store(
            larder::store::connect_checked(&server.url())
                .await
                .expect("redis"),
        )
        .source(source)
        .write_policy(WritePolicy::Back(WriteBackOptions {
            max_delay: Duration::from_secs(60),
            ..WriteBackOptions::default()
        }))
        .build()
        .await
        .expect("cache");
    let started = Instant::now();
    for n in 0..puts {
        let row = Row {
            id: n % IDS,
            version: n,
            payload: "x".repeat(64),
        };
        cache.put(&row.id, &row).await.expect("put");
    }
    println!(
        "write-back put: {:?} per call",
        started.elapsed() / puts as u32
    );
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop");
}
