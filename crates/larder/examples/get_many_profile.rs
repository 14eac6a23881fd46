//! A fixed workload for counting instructions, where wall-clock figures are
//! too noisy to compare: `n` calls of `get_many` of 100 cached keys (the
//! Json codec, a ~256-byte row), or — with `raw` — `n` raw redis-rs
//! `MGET`s of the same rows as plain JSON followed by `serde_json`
//! decoding (the floor `benches/get_many.rs` compares against). One
//! thread, so runs repeat exactly. Needs Redis (`LARDER_TEST_REDIS_URL`).
//!
//! ```sh
//! cargo build --release -p larder --example get_many_profile
//! for mode in raw larder; do for n in 1 1000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$mode.$n \
//!     target/release/examples/get_many_profile $mode $n
//! done; done
//! # instructions per call: (total at 1000 − total at 1) / 999
//! ```

use larder::{store, Cache, FnSource};
use larder_test_support::profiles::{profile, Profile};
use std::convert::Infallible;
use std::time::{Duration, Instant};

const BATCH: u64 = 100;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let raw = std::env::args().nth(1).as_deref() == Some("raw");
    let calls: u32 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000)
        .max(1);
    let url = larder_test_support::redis_url();
    let prefix = larder_test_support::unique("gmp");
    let cache: Cache<u64, Profile> = Cache::builder()
        .prefix(prefix.as_str())
        .entity("profiles")
        .store(store::connect_checked(&url).await.expect("store"))
        .ttl(Duration::from_secs(3600))
        .early_refresh(0.0)
        .source(FnSource::new("profiles", |id: String| async move {
            Ok::<_, Infallible>(Some(profile(id.parse().unwrap_or_default())))
        }))
        .build()
        .await
        .expect("cache");
    let ids: Vec<u64> = (0..BATCH).collect();
    let refs: Vec<&u64> = ids.iter().collect();
    cache.get_many(&refs).await.expect("warm");
    let mut conn = redis::Client::open(url.as_str())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("redis");
    let keys: Vec<String> = ids.iter().map(|i| format!("{prefix}:raw:{i}")).collect();
    for (id, key) in ids.iter().zip(&keys) {
        let json = serde_json::to_vec(&profile(*id)).expect("json");
        let () = redis::cmd("SET")
            .arg(key)
            .arg(json)
            .query_async(&mut conn)
            .await
            .expect("SET");
    }
    let started = Instant::now();
    for _ in 0..calls {
        if raw {
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("MGET");
            let rows = values
                .iter()
                .map(|v| serde_json::from_slice::<Profile>(v.as_deref().expect("cached")))
                .collect::<Result<Vec<_>, _>>()
                .expect("json");
            assert_eq!(rows.len(), BATCH as usize);
        } else {
            let got = cache.get_many(&refs).await.expect("get_many");
            assert!(got.iter().all(|l| l.outcome.is_hit()));
        }
    }
    let mode = if raw {
        "raw MGET + decode"
    } else {
        "larder get_many"
    };
    println!("{mode}: {:?} per call", started.elapsed() / calls);
}
