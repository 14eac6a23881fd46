//! `larder-probe`: a child process for the multi-process tests.
//!
//! Not part of the library's interface. It builds a read-through cache on
//! the given Redis over a PostgreSQL table whose loads are counted in the
//! database, prints `ready`, then obeys one command per stdin line:
//!
//! - `go <id>`: `tasks` concurrent `get(id)`; prints `done <with value> <outcomes>`.
//! - `quit`: exits.
//!
//! `--representation hash` (optional; default `string`) makes the entity a
//! hash entity, whose value is the object `{"payload": <text>}`; a string
//! entity's value is the text.
//!
//! Each load prints `loading <id>` first, so a test can kill the process
//! while it holds a lease.

use larder::{Cache, FnSource, Outcome, Representation};
use sqlx::postgres::PgPoolOptions;
use std::io::{BufRead, Write};
use std::time::Duration;

#[derive(Debug)]
struct Args {
    redis: String,
    pg: String,
    schema: String,
    prefix: String,
    tasks: usize,
    load: Duration,
    lease: Duration,
    wait: Duration,
    representation: Representation,
}

fn parse_args() -> Result<Args, String> {
    let mut pairs = std::env::args().skip(1);
    let mut get = std::collections::HashMap::new();
    while let (Some(k), Some(v)) = (pairs.next(), pairs.next()) {
        get.insert(k.trim_start_matches("--").to_owned(), v);
    }
    let text = |k: &str| get.get(k).cloned().ok_or(format!("missing --{k}"));
    let ms = |k: &str| -> Result<Duration, String> {
        let v = text(k)?;
        v.parse()
            .map(Duration::from_millis)
            .map_err(|e| format!("--{k} {v}: {e}"))
    };
    Ok(Args {
        redis: text("redis")?,
        pg: text("pg")?,
        schema: text("schema")?,
        prefix: text("prefix")?,
        tasks: text("tasks")?
            .parse()
            .map_err(|e| format!("--tasks: {e}"))?,
        load: ms("load-ms")?,
        lease: ms("lease-ms")?,
        wait: ms("wait-ms")?,
        representation: match get.get("representation") {
            None => Representation::String,
            Some(name) => Representation::parse(name)
                .ok_or(format!("--representation {name}: use string or hash"))?,
        },
    })
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the test is gone; nothing to report to.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.pg)
        .await
        .map_err(|e| e.to_string())?;
    let store = larder::store::connect_checked(&args.redis)
        .await
        .map_err(|e| e.to_string())?;
    let (schema, load_for) = (args.schema.clone(), args.load);
    let hash = args.representation == Representation::Hash;
    let source = FnSource::new("items", move |id: String| {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move {
            say(&format!("loading {id}"));
            sqlx::query(&format!("UPDATE {schema}.loads SET n = n + 1"))
                .execute(&pool)
                .await?;
            tokio::time::sleep(load_for).await;
            let id: i32 = id.parse().unwrap_or(-1);
            let text = sqlx::query_scalar::<_, String>(&format!(
                "SELECT payload FROM {schema}.items WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&pool)
            .await?;
            // The same JSON as a `String` value for a string entity; an
            // object for a hash entity.
            Ok::<_, sqlx::Error>(text.map(|t| {
                if hash {
                    serde_json::json!({ "payload": t })
                } else {
                    serde_json::Value::String(t)
                }
            }))
        }
    });
    let cache: Cache<i64, serde_json::Value> = Cache::builder()
        .prefix(&args.prefix)
        .entity("items")
        .store(store)
        .source(source)
        .lease_ttl(args.lease)
        .load_timeout(
            args.lease
                .saturating_sub(Duration::from_millis(1))
                .min(Duration::from_secs(60)),
        )
        .wait_timeout(args.wait)
        .early_refresh(0.0)
        .representation(args.representation)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    say("ready");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("go"), Some(id)) => {
                let id: i64 = id.parse().map_err(|e| format!("go {id}: {e}"))?;
                let reads = (0..args.tasks).map(|_| {
                    let cache = cache.clone();
                    tokio::spawn(async move { cache.get(&id).await })
                });
                let mut with_value = 0;
                let mut outcomes = Vec::new();
                for read in futures_util::future::join_all(reads).await {
                    match read {
                        Ok(Ok(lookup)) => {
                            with_value += usize::from(lookup.value.is_some());
                            outcomes.push(lookup.outcome);
                        }
                        Ok(Err(e)) => say(&format!("error {e}")),
                        Err(e) => say(&format!("error {e}")),
                    }
                }
                let misses = outcomes.iter().filter(|&&o| o == Outcome::Miss).count();
                say(&format!("done {with_value} misses={misses}"));
            }
            (Some("quit"), _) => break,
            _ => say(&format!("error unknown command {line:?}")),
        }
    }
    Ok(())
}
