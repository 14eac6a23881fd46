//! How long a database change takes to reach a `ChangeHandler`: one UPDATE
//! at a time (autocommit) from a plain connection, timed from the start of
//! the statement to the handler's call, the UPDATE's own round trip (its
//! commit included) for comparison, and what the delivery adds after the
//! writer got its answer (0 when the handler ran first: PostgreSQL signals
//! the listeners at commit, in parallel with answering the writer). A benchmark figure, so an example and not a test.
//!
//! ```sh
//! cargo run --release -p larder --example cdc_latency -- [updates, default 1000]
//! ```
//!
//! Uses `LARDER_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! and a schema of its own, dropped at the end.

use async_trait::async_trait;
use larder::{ChangeHandler, ChangeListener, SqlPool, SqlSource};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Sends each delivered id with the moment the handler saw it.
struct Stamp(mpsc::UnboundedSender<(String, Instant)>);

#[async_trait]
impl ChangeHandler for Stamp {
    async fn changed(&self, _entity: &str, ids: &[String]) -> larder::Result<()> {
        let now = Instant::now();
        for id in ids {
            let _ = self.0.send((id.clone(), now));
        }
        Ok(())
    }

    async fn truncated(&self, _entity: &str) -> larder::Result<()> {
        Ok(())
    }

    async fn gap(&self, entity: &str) -> larder::Result<()> {
        eprintln!("gap on {entity}: the figures below include a reconnect");
        Ok(())
    }
}

/// The `p`-th percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn show(what: &str, mut d: Vec<Duration>) {
    d.sort();
    println!(
        "{what:<38} p50 {:>8.1?}  p90 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}",
        pct(&d, 50.0),
        pct(&d, 90.0),
        pct(&d, 99.0),
        d.last().copied().unwrap_or_default()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let updates: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1000,
    };
    let url = std::env::var("LARDER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = SqlPool::connect(&url, 2).await?;
    let SqlPool::Postgres(pg) = &pool else {
        return Err("change notifications need PostgreSQL".into());
    };
    let pg = pg.clone();
    let schema = format!("larder_cdc_latency_{}", std::process::id());
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.items (id int8 PRIMARY KEY, n int8 NOT NULL);
         INSERT INTO {schema}.items SELECT g, 0 FROM generate_series(0, 99) g;"
    ))
    .execute(&pg)
    .await?;

    let result = run(&pool, &pg, &schema, updates).await;
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pg)
        .await?;
    result
}

async fn run(
    pool: &SqlPool,
    pg: &sqlx::PgPool,
    schema: &str,
    updates: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let source = SqlSource::builder(pool.clone(), &format!("{schema}.items"))
        .build()
        .await?;
    let channel = source.install_change_triggers().await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = ChangeListener::start(vec![(channel, Arc::new(Stamp(tx)) as _)]).await?;

    let update = format!("UPDATE {schema}.items SET n = n + 1 WHERE id = $1");
    let mut to_handler = Vec::with_capacity(updates);
    let mut round_trip = Vec::with_capacity(updates);
    let mut after_ack = Vec::with_capacity(updates);
    let mut before_ack = 0usize;
    let warmup = 50;
    for i in 0..updates + warmup {
        let id = (i % 100) as i64;
        let start = Instant::now();
        sqlx::query(&update).bind(id).execute(pg).await?;
        let acked = start.elapsed();
        let want = id.to_string();
        let seen = loop {
            let next = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
            match next {
                Ok(Some((got, at))) if got == want => break at,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return Err(format!("update {i} was not delivered").into()),
            }
        };
        if i >= warmup {
            let handled = seen.saturating_duration_since(start);
            to_handler.push(handled);
            round_trip.push(acked);
            after_ack.push(handled.saturating_sub(acked));
            before_ack += usize::from(handled < acked);
        }
    }
    println!("{updates} sequential UPDATEs (autocommit), loopback PostgreSQL:");
    show("UPDATE round trip", round_trip);
    show("UPDATE start -> handler called", to_handler);
    show("UPDATE acknowledged -> handler called", after_ack);
    println!("handler called before the UPDATE was acknowledged: {before_ack} of {updates}");
    println!("{:?}", listener.stats());
    listener.close().await;
    Ok(())
}
