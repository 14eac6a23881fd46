//! `larder demo`: cache-aside, read-through, write-through and write-back,
//! shown on real data.
//!
//! Creates (or reuses) a SQLite database of sample users, then walks through
//! a miss and its database time, hits and their cache time, a multi-get, a
//! negative lookup, an invalidation, and the hit ratio. It uses Redis at
//! `LARDER_REDIS_URL` (default `redis://127.0.0.1:6379`) when it answers and
//! the embedded `memory://` store otherwise; a URL given explicitly must answer.

use anyhow::{bail, Context, Result};
use larder::store::{self, Store};
use larder::{Cache, Outcome, SqlPool, SqlSource, WriteBack, WritePolicy};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `larder demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// The SQLite database file to create or reuse.
    #[arg(long, default_value = "larder-demo.db")]
    db: String,
    /// The Redis to use; when given (or set in the environment) it must answer.
    #[arg(long, env = "LARDER_REDIS_URL")]
    redis: Option<String>,
    /// How many sample users the database holds.
    #[arg(long, default_value_t = 5000)]
    users: u32,
}

/// A row of the sample `users` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: i64,
    name: String,
    email: String,
    team: i64,
}

/// Prints a line; a closed stdout (`larder demo | head`) ends the output quietly.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    if args.users == 0 {
        bail!("--users must be at least 1");
    }
    let (store, store_note) = pick_store(args.redis.as_deref()).await?;
    say!("larder demo");
    say!("  store:    {store_note}");
    let pool = SqlPool::connect(&format!("sqlite://{}", args.db), 4)
        .await
        .with_context(|| format!("opening the SQLite database {}", args.db))?;
    let created = seed(&pool, args.users).await?;
    say!(
        "  database: {} ({} users{})",
        args.db,
        args.users,
        if created { ", created now" } else { "" }
    );
    let source = SqlSource::builder(pool.clone(), "users")
        .key("id")
        .build()
        .await?;
    // A fixed prefix keeps the store tidy across runs; the demo forgets the
    // ids it shows first, so every run starts cold.
    let prefix = "larder-demo";
    let missing = i64::from(args.users) + 1000;

    section("cache-aside: the application loads, the cache remembers");
    let aside: Cache<i64, User> = Cache::builder()
        .prefix(prefix)
        .entity("users_aside")
        .store(store.clone())
        .build()
        .await?;
    aside.invalidate(&42).await?;
    for _ in 0..3 {
        let loader_pool = pool.clone();
        let (lookup, took) =
            timed(aside.get_or_load(&42, move || load_user(loader_pool, 42))).await?;
        report(
            "get_or_load(42)",
            lookup.outcome,
            took,
            lookup.value.as_deref(),
        );
    }

    section("read-through: the cache loads from its SQL source");
    let users: Cache<i64, User> = Cache::builder()
        .prefix(prefix)
        .entity("users")
        .store(store.clone())
        .source(source)
        .ttl(Duration::from_secs(60))
        .build()
        .await?;
    for id in (1..=10).chain([missing]) {
        users.invalidate(&id).await?;
    }
    for _ in 0..3 {
        let (lookup, took) = timed(users.get(&7)).await?;
        report("get(7)", lookup.outcome, took, lookup.value.as_deref());
    }

    section("multi-get: one round trip to the store, one query for the misses");
    let ids: Vec<i64> = (1..=10).collect();
    let refs: Vec<&i64> = ids.iter().collect();
    for _ in 0..2 {
        let (many, took) = timed(users.get_many(&refs)).await?;
        let words: Vec<&str> = many.iter().map(|l| l.outcome.as_str()).collect();
        say!(
            "  get_many(1..=10)  {:>9}  outcomes: {}",
            fmt_time(took),
            words.join(" ")
        );
    }

    section("negative caching: a missing row is remembered");
    for _ in 0..2 {
        let (lookup, took) = timed(users.get(&missing)).await?;
        report(
            &format!("get({missing})"),
            lookup.outcome,
            took,
            lookup.value.as_deref(),
        );
    }

    section("invalidation: the database changes, the cache forgets");
    sqlx_update(&pool, 7).await?;
    say!("  UPDATE users SET name = 'Renamed' WHERE id = 7");
    users.invalidate(&7).await?;
    say!("  invalidate(7)");
    let (lookup, took) = timed(users.get(&7)).await?;
    report("get(7)", lookup.outcome, took, lookup.value.as_deref());
    let (lookup, took) = timed(users.get(&7)).await?;
    report("get(7)", lookup.outcome, took, lookup.value.as_deref());

    section("write-through: the database first, then the row it stored");
    let through: Cache<i64, User> = Cache::builder()
        .prefix(prefix)
        .entity("users_through")
        .store(store.clone())
        .source(SqlSource::builder(pool.clone(), "users").build().await?)
        .write_policy(WritePolicy::Through)
        .build()
        .await?;
    let mut user = through
        .get(&8)
        .await?
        .value
        .map(|u| (*u).clone())
        .context("user 8 is in the sample table")?;
    user.name = "Written Through".into();
    let (written, took) = timed(through.put(&8, &user)).await?;
    say!(
        "  put(8)           {:>9}  cache: {:?}; in the database and cached",
        fmt_time(took),
        written.cache
    );
    let (lookup, took) = timed(through.get(&8)).await?;
    report("get(8)", lookup.outcome, took, lookup.value.as_deref());

    section("write-back: acknowledged once Redis holds it, flushed in batches");
    let back = Cache::<i64, User>::builder()
        .prefix(prefix)
        .entity("users_back")
        .store(store.clone())
        .source(SqlSource::builder(pool.clone(), "users").build().await?)
        .write_policy(WritePolicy::Back(WriteBack {
            max_delay: Duration::from_millis(200),
            // The demo's Redis keeps nothing on disk; production needs
            // appendonly yes + appendfsync always (then leave this true).
            require_durable: false,
            ..WriteBack::default()
        }))
        .build()
        .await;
    match back {
        Ok(back) => {
            let mut user = back
                .get(&9)
                .await?
                .value
                .map(|u| (*u).clone())
                .context("user 9 is in the sample table")?;
            user.name = "Written Back".into();
            let started = Instant::now();
            for _ in 0..100 {
                back.put(&9, &user).await?;
            }
            say!(
                "  100 × put(9)     {:>9}  acknowledged (not yet in the database)",
                fmt_time(started.elapsed())
            );
            let (lookup, took) = timed(back.get(&9)).await?;
            report("get(9)", lookup.outcome, took, lookup.value.as_deref());
            back.close(Duration::from_secs(10)).await?;
            let stats = back.write_back_stats().unwrap_or_default();
            say!(
                "  flushed: {} database row write(s) for {} acknowledged writes ({} coalesced, {} refused)",
                stats.rows_written,
                stats.acknowledged,
                stats.coalesced,
                stats.dead_lettered
            );
        }
        Err(e) => say!("  skipped: {e}"),
    }

    section("hit ratio");
    for cache in [&aside, &users] {
        let stats = cache.stats();
        let by: Vec<String> = Outcome::ALL
            .iter()
            .filter(|&&o| stats.reads(o) > 0)
            .map(|&o| format!("{o} {}", stats.reads(o)))
            .collect();
        say!(
            "  {:<12} {:>5.1}%  ({} reads: {}; {} loads)",
            cache.entity(),
            stats.hit_ratio() * 100.0,
            stats.total_reads(),
            by.join(", "),
            stats.loads
        );
    }
    Ok(())
}

/// The store to use, and a sentence saying which and why.
async fn pick_store(explicit: Option<&str>) -> Result<(Arc<dyn Store>, String)> {
    if let Some(url) = explicit {
        let store = store::connect_checked(url).await.with_context(|| {
            format!("the Redis given by --redis / LARDER_REDIS_URL ({url}) does not answer")
        })?;
        let note = format!("{} (as configured)", store.name());
        return Ok((store, note));
    }
    let probe = format!("{DEFAULT_REDIS}?connect_timeout=300ms&response_timeout=300ms");
    match store::connect_checked(&probe).await {
        Ok(_) => Ok((
            store::connect(DEFAULT_REDIS).await?,
            format!("{DEFAULT_REDIS} (answered)"),
        )),
        Err(_) => Ok((
            store::connect("memory://").await?,
            format!(
                "memory:// (no Redis answered at {DEFAULT_REDIS}; set LARDER_REDIS_URL to use one)"
            ),
        )),
    }
}

/// Creates and fills the users table when it is missing or short; whether it did.
async fn seed(pool: &SqlPool, users: u32) -> Result<bool> {
    let SqlPool::Sqlite(db) = pool else {
        bail!("the demo database is SQLite")
    };
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            email TEXT NOT NULL UNIQUE,
            team INTEGER NOT NULL,
            created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    .execute(db)
    .await
    .context("creating the users table")?;
    // Undo the rename of the previous run's invalidation step.
    sqlx::query("UPDATE users SET name = 'User ' || id WHERE id = 7")
        .execute(db)
        .await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(db)
        .await?;
    if have >= i64::from(users) {
        return Ok(false);
    }
    let mut tx = db.begin().await?;
    for id in (have + 1)..=i64::from(users) {
        sqlx::query("INSERT INTO users (id, name, email, team) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(format!("User {id}"))
            .bind(format!("user{id}@example.com"))
            .bind(id % 20)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The cache-aside loader: the application's own query.
async fn load_user(pool: SqlPool, id: i64) -> std::result::Result<Option<User>, sqlx::Error> {
    let SqlPool::Sqlite(db) = pool else {
        return Ok(None);
    };
    let row: Option<(i64, String, String, i64)> =
        sqlx::query_as("SELECT id, name, email, team FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&db)
            .await?;
    Ok(row.map(|(id, name, email, team)| User {
        id,
        name,
        email,
        team,
    }))
}

async fn sqlx_update(pool: &SqlPool, id: i64) -> Result<()> {
    let SqlPool::Sqlite(db) = pool else {
        bail!("the demo database is SQLite")
    };
    sqlx::query("UPDATE users SET name = 'Renamed' WHERE id = ?")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

async fn timed<T>(
    work: impl std::future::Future<Output = larder::Result<T>>,
) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = work.await?;
    Ok((value, started.elapsed()))
}

fn section(title: &str) {
    say!("\n{title}");
}

fn report(call: &str, outcome: Outcome, took: Duration, value: Option<&User>) {
    let shown = value.map_or_else(
        || "not found".to_string(),
        |u| format!("{} <{}>", u.name, u.email),
    );
    let source = match outcome {
        Outcome::Miss => "loaded from the database",
        Outcome::Hit => "from the cache",
        Outcome::Negative => "remembered as missing",
        Outcome::Stale => "stale, refreshing",
        Outcome::L1 => "from the near cache",
        Outcome::Bypass => "store down, from the database",
        _ => "see the outcome",
    };
    say!(
        "  {call:<16} {:>9}  {:<8} {shown}  ({source})",
        fmt_time(took),
        outcome.as_str()
    );
}

fn fmt_time(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}
