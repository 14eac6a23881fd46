//! A fixed workload for counting instructions, where wall-clock figures are
//! too noisy to compare: `n` hits of one collection read of
//! `benches/collections.rs` (the same fixture), or — with `raw` — `n` of
//! the raw command it is compared against:
//!
//! | kind    | larder                       | raw                              |
//! |---------|------------------------------|----------------------------------|
//! | `set`   | `SetCache::contains`         | `ZSCORE`                         |
//! | `feed`  | `FeedCache::page` of 20      | `LRANGE 0 19` of the same rows   |
//! | `board` | `Leaderboard::top` 10 of 1,000 | `ZREVRANGE 0 9 WITHSCORES`     |
//!
//! One thread, so runs repeat exactly. Needs Redis and PostgreSQL
//! (`LARDER_TEST_REDIS_URL`, `LARDER_TEST_PG_URL`).
//!
//! ```sh
//! cargo build --release -p larder --example collections_profile
//! for kind in set feed board; do for mode in raw larder; do for n in 1 1001; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$kind.$mode.$n \
//!     target/release/examples/collections_profile $mode $kind $n
//! done; done; done
//! # instructions per read: (total at 1001 − total at 1) / 1000
//! ```
//!
//! Without valgrind it also prints the CPU time per read of this process
//! (the thread's `schedstat`: one thread runs everything) and of the Redis
//! server (`INFO cpu`; give the run a Redis of its own): on one machine
//! their sum bounds the reads/s of many concurrent readers.

use std::time::{Duration, Instant};

#[path = "../benches/common/collections.rs"]
#[allow(dead_code, unreachable_pub)]
mod fixture;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let raw = args.next().as_deref() == Some("raw");
    let kind = args.next().unwrap_or_else(|| "set".to_owned());
    let calls: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000)
        .max(1);
    let f = fixture::collections().await;
    let mut conn = f.conn.clone();
    let key = f.raw_key(&kind);
    let (client, server) = (thread_cpu(), server_cpu(&mut conn).await);
    let started = Instant::now();
    for i in 0..calls {
        match (kind.as_str(), raw) {
            ("set", true) => fixture::raw_zscore(&mut conn, &key, i).await,
            ("set", false) => fixture::set_contains(&f.set, i).await,
            ("feed", true) => fixture::raw_lrange(&mut conn, &key).await,
            ("feed", false) => fixture::feed_page(&f.feed).await,
            ("board", true) => fixture::raw_zrevrange(&mut conn, &key).await,
            ("board", false) => fixture::board_top(&f.board).await,
            (other, _) => panic!("unknown kind {other}: set, feed or board"),
        }
    }
    let elapsed = started.elapsed();
    let client = thread_cpu().saturating_sub(client);
    let server = server_cpu(&mut conn).await.saturating_sub(server);
    let mode = if raw { "raw" } else { "larder" };
    let per = |d: Duration| d / calls as u32;
    println!(
        "{mode} {kind}: {:?} per read; cpu per read: client {:?}, server {:?}",
        per(elapsed),
        per(client),
        per(server)
    );
}

/// CPU time of this thread so far (0 where `/proc` does not say).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// CPU time of the Redis server so far (`used_cpu_user` + `used_cpu_sys`).
async fn server_cpu(conn: &mut redis::aio::ConnectionManager) -> Duration {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .expect("INFO");
    let secs: f64 = info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_user" || *k == "used_cpu_sys")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum();
    Duration::from_secs_f64(secs)
}
