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
//! for kind in set feed board; do for mode in raw larder; do for n in 1 2001; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$kind.$mode.$n \
//!     target/release/examples/collections_profile $mode $kind $n
//! done; done; done
//! # instructions per read: (total at 2001 − total at 1) / 2000
//! ```
//!
//! The server's side of the same reads: `INFO commandstats`
//! (`usec_per_call` of `evalsha` against `zscore`, `lrange`, `zrevrange`)
//! of a Redis the run had to itself.

use larder::CollectionOutcome;
use std::time::Instant;

#[path = "../benches/common/collections.rs"]
#[allow(dead_code, unreachable_pub)]
mod fixture;

use fixture::N;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let raw = args.next().as_deref() == Some("raw");
    let kind = args.next().unwrap_or_else(|| "set".to_owned());
    let calls: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000).max(1);
    let f = fixture::collections().await;
    let mut conn = f.conn.clone();
    let key = f.raw_key(&kind);
    let started = Instant::now();
    for i in 0..calls {
        let visitor = format!("visitor-{:02}", i % N);
        match (kind.as_str(), raw) {
            ("set", true) => {
                let score: Option<f64> = redis::cmd("ZSCORE")
                    .arg(&key)
                    .arg(&visitor)
                    .query_async(&mut conn)
                    .await
                    .expect("ZSCORE");
                assert!(score.is_some());
            }
            ("set", false) => {
                let r = f.set.contains("home", &visitor).await.expect("contains");
                assert!(r.value && r.outcome == CollectionOutcome::Hit);
            }
            ("feed", true) => {
                let rows: Vec<String> = redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(N - 1)
                    .query_async(&mut conn)
                    .await
                    .expect("LRANGE");
                assert_eq!(rows.len(), N as usize);
            }
            ("feed", false) => {
                let p = f.feed.page("1", 0, N as usize).await.expect("page");
                assert!(p.outcome == CollectionOutcome::Hit && p.value.items.len() == N as usize);
            }
            ("board", true) => {
                let top: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(9)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await
                    .expect("ZREVRANGE");
                assert_eq!(top.len(), 10);
            }
            ("board", false) => {
                let t = f.board.top("g1", 0, 10).await.expect("top");
                assert!(t.outcome == CollectionOutcome::Hit && t.value.items.len() == 10);
            }
            (other, _) => panic!("unknown kind {other}: set, feed or board"),
        }
    }
    let mode = if raw { "raw" } else { "larder" };
    println!(
        "{mode} {kind}: {:?} per read",
        started.elapsed() / calls as u32
    );
}
