//! `larder-writer`: a child process for the write-back crash test.
//!
//! Not part of the library's interface. It builds a write-back cache over a
//! PostgreSQL table on the given Redis, prints `ready`, then writes
//! `version = 1, 2, 3, …` to keys `0..keys` in turn, printing
//! `ack <id> <version>` after each acknowledged write, until it is killed.
//! Its flusher waits `--max-delay-ms` before flushing, so a kill leaves
//! acknowledged writes dirty in Redis. With `--representation hash` the
//! entity is a hash entity, and every write after a key's first (a put) is
//! a field patch of `version`.

use larder::{Cache, Representation, SqlPool, SqlSource, WriteBackOptions, WritePolicy};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    id: i64,
    version: i64,
}

#[path = "child.rs"]
mod child;
use child::{arg, say};

#[tokio::main]
async fn main() -> Result<(), String> {
    let keys: i64 = arg("keys")?.parse().map_err(|e| format!("--keys: {e}"))?;
    let delay: u64 = arg("max-delay-ms")?
        .parse()
        .map_err(|e| format!("--max-delay-ms: {e}"))?;
    let pool = SqlPool::connect(&arg("pg")?, 2)
        .await
        .map_err(|e| e.to_string())?;
    let source = SqlSource::builder(pool, &arg("table")?)
        .entity("items")
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let representation = match arg("representation") {
        Ok(name) => Representation::parse(&name).ok_or(format!("--representation {name}?"))?,
        Err(_) => Representation::String,
    };
    let store = larder::store::connect_checked(&arg("redis")?)
        .await
        .map_err(|e| e.to_string())?;
    let cache: Cache<i64, Item> = Cache::builder()
        .prefix(&arg("prefix")?)
        .entity("items")
        .shards(8)
        .representation(representation)
        .store(store)
        .source(source)
        .write_policy(WritePolicy::Back(WriteBackOptions {
            max_delay: Duration::from_millis(delay),
            ..WriteBackOptions::default()
        }))
        .build()
        .await
        .map_err(|e| e.to_string())?;
    say("ready");
    for version in 1_i64.. {
        let id = version % keys;
        if representation == Representation::Hash && version > keys {
            let mut fields = serde_json::Map::new();
            fields.insert("version".into(), version.into());
            cache
                .patch(&id, &fields)
                .await
                .map_err(|e| e.to_string())?
                .ok_or(format!("row {id} is gone"))?;
        } else {
            cache
                .put(&id, &Item { id, version })
                .await
                .map_err(|e| e.to_string())?;
        }
        say(&format!("ack {id} {version}"));
    }
    Ok(())
}
