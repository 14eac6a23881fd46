//! What a field read of a hash entity saves: 2 of the 20 columns of a
//! ~2 KB row read with `get_fields` (one `HMGET`) against the whole row
//! read from a string entity (one `GET`), on a private redis-server of its
//! own — bytes Redis sent per read (`INFO stats` total_net_output_bytes)
//! and latency (sequential reads, interleaved blocks). The hash's whole
//! read (`HGETALL`) is shown too, and the baselines: the same `GET` and
//! `HMGET` sent by redis-rs itself, so that what Redis costs is told
//! apart from what larder adds. A benchmark figure, so an example and
//! not a test.
//!
//! ```sh
//! cargo run --release -p larder --example hash_fields -- [reads per kind, default 20000]
//! ```

use larder::{Cache, FnSource, Outcome, PassThrough, RawJson, Representation};
use larder_test_support::RedisServer;
use std::process::Command;
use std::time::{Duration, Instant};

const COLUMNS: usize = 20;
const KEYS: u64 = 100;

async fn load(id: String) -> larder::Result<Option<RawJson>> {
    // 20 columns of ~100 bytes: ~2 KB; a few are numbers and JSON.
    let mut row = format!("{{\"id\":{id}");
    for c in 1..COLUMNS {
        match c % 5 {
            0 => row.push_str(&format!(
                ",\"c{c}\":{}",
                9_007_199_254_740_993_u64 + c as u64
            )),
            1 => row.push_str(&format!(
                ",\"c{c}\":{{\"a\":[1,2,3],\"b\":\"{}\"}}",
                "x".repeat(90)
            )),
            _ => row.push_str(&format!(",\"c{c}\":\"{}\"", "v".repeat(112))),
        }
    }
    row.push('}');
    RawJson::from_bytes(row).map(Some)
}

async fn cache(url: &str, rep: Representation, prefix: &str) -> Cache<u64, RawJson> {
    Cache::builder()
        .prefix(prefix)
        .entity("wide")
        .store(larder::store::connect_checked(url).await.expect("redis"))
        .codec(PassThrough)
        .representation(rep)
        .source(FnSource::new("wide", load))
        .ttl(Duration::from_secs(3600))
        .early_refresh(0.0)
        .build()
        .await
        .expect("cache")
}

fn output_bytes(port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "stats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_net_output_bytes")
}

#[derive(Default)]
struct Figures {
    micros: Vec<f64>,
    bytes: u64,
    reads: u64,
}

impl Figures {
    fn report(&mut self, name: &str, base: Option<(f64, f64)>) -> (f64, f64) {
        self.micros.sort_by(f64::total_cmp);
        let n = self.micros.len();
        let mean = self.micros.iter().sum::<f64>() / n as f64;
        let p50 = self.micros[n / 2];
        let p99 = self.micros[n * 99 / 100];
        let per = self.bytes as f64 / self.reads as f64;
        let ratio = base.map_or(String::new(), |(b, m)| {
            format!("  bytes {:.0}%  mean {:.2}×", 100.0 * per / b, mean / m)
        });
        println!(
            "{name:<34} {per:>7.0} B/read  mean {mean:>6.1} µs  p50 {p50:>6.1}  p99 {p99:>6.1}{ratio}"
        );
        (per, mean)
    }
}

/// The value key of entity `wide`'s id 0 of the given Redis type
/// (`string` or `hash`): a key whose value is longer than 1,000 bytes.
async fn entry_key(conn: &mut redis::aio::MultiplexedConnection, kind: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*wide*")
        .query_async(conn)
        .await
        .expect("KEYS");
    for key in keys {
        let (t, len): (String, usize) = redis::pipe()
            .cmd("TYPE")
            .arg(&key)
            .cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("TYPE");
        if t == kind && len > 1_000 {
            return key;
        }
    }
    panic!("no {kind} entry");
}

#[tokio::main]
async fn main() {
    let reads: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let server = RedisServer::start();
    let url = server.url();
    let strings = cache(&url, Representation::String, "s").await;
    let hashes = cache(&url, Representation::Hash, "h").await;
    for id in 0..KEYS {
        strings.get(&id).await.expect("warm");
        hashes.get(&id).await.expect("warm");
    }
    let row_len = strings
        .get(&0)
        .await
        .expect("read")
        .value
        .map_or(0, |v| v.bytes().len());
    // The baselines: the same commands from redis-rs itself.
    let mut raw = redis::Client::open(url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let string_key = entry_key(&mut raw, "string").await;
    let hash_key = entry_key(&mut raw, "hash").await;
    println!("row: {COLUMNS} columns, {row_len} bytes of JSON; {reads} reads per kind, blocks of 1000, interleaved");
    let mut figures: [Figures; 5] = Default::default();
    let block = 1000;
    for round in 0..reads.div_ceil(block) {
        for (k, f) in figures.iter_mut().enumerate() {
            let before = output_bytes(server.port());
            for i in 0..block {
                let id = ((round * block + i) as u64) % KEYS;
                let started = Instant::now();
                match k {
                    0 => {
                        let read = strings.get(&id).await.expect("get");
                        assert_eq!(read.outcome, Outcome::Hit);
                    }
                    1 => {
                        let read = hashes
                            .get_fields(&id, &["c3", "c17"])
                            .await
                            .expect("fields");
                        assert_eq!(read.outcome, Outcome::Hit);
                    }
                    2 => {
                        let read = hashes.get(&id).await.expect("get");
                        assert_eq!(read.outcome, Outcome::Hit);
                    }
                    3 => {
                        let v: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(&string_key)
                            .query_async(&mut raw)
                            .await
                            .expect("GET");
                        assert!(v.is_some());
                    }
                    _ => {
                        let v: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                            .arg(&hash_key)
                            .arg("")
                            .arg("c3")
                            .arg("c17")
                            .query_async(&mut raw)
                            .await
                            .expect("HMGET");
                        assert!(v.iter().all(Option::is_some));
                    }
                }
                f.micros.push(started.elapsed().as_secs_f64() * 1e6);
            }
            f.bytes += output_bytes(server.port()).saturating_sub(before);
            f.reads += block as u64;
        }
    }
    // Each block's delta includes the answer to the INFO call before it.
    let a = output_bytes(server.port());
    let info = output_bytes(server.port()) - a;
    for f in &mut figures {
        let blocks = f.reads / block as u64;
        f.bytes = f.bytes.saturating_sub(blocks * info);
    }
    let base = figures[0].report("string: whole row (GET)", None);
    figures[1].report("hash: 2 of 20 fields (HMGET)", Some(base));
    figures[2].report("hash: whole row (HGETALL)", Some(base));
    let raw_base = figures[3].report("raw redis-rs GET of the string", None);
    figures[4].report("raw redis-rs HMGET of the 3 fields", Some(raw_base));
}
