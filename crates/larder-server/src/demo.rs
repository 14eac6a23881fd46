//! `larder demo`: cache-aside, read-through, write-through and write-back,
//! shown on real data, and then what a hand-written cache-aside does not
//! give: one load for a stampede, the near cache, stale-while-revalidate.
//!
//! Creates (or reuses) a SQLite database of sample users, then walks through
//! a miss and its database time, hits and their cache time, a multi-get, a
//! negative lookup, an invalidation, write-through, write-back and the hit
//! ratio. Then, side by side with the classic hand-written cache-aside
//! (`GET`; on a miss, query and `SETEX`) on the same rows:
//!
//! - **the stampede**: many readers of an expired hot key at once. The
//!   loads are counted by the database itself: the demo's loader bumps a
//!   row of `demo_loads` in the same transaction as its `SELECT`, so the
//!   figures are what the database did, not what larder says it did;
//! - **the near cache**: an `l1` read beside a Redis `hit`;
//! - **stale-while-revalidate**: the expired key answered at once while
//!   one refresh runs.
//!
//! It ends with a config file for `larder serve` over the same database
//! and the command that starts it, dashboard included.
//!
//! It uses Redis at `LARDER_REDIS_URL` (default `redis://127.0.0.1:6379`)
//! when it answers and the embedded `memory://` store otherwise; a URL
//! given explicitly must answer.

use anyhow::{bail, Context, Result};
use larder::store::{self, Store};
use larder::{
    Cache, ManualClock, NearOptions, Outcome, SqlPool, SqlSource, WriteBackOptions, WritePolicy,
};
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
    /// How many concurrent readers the stampede has.
    #[arg(long, default_value_t = 200)]
    readers: u32,
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
    if args.users < 20 {
        bail!("--users must be at least 20");
    }
    if args.readers < 2 {
        bail!("--readers must be at least 2");
    }
    let (store, store_note, store_url) = pick_store(args.redis.as_deref()).await?;
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
        .write_policy(WritePolicy::Back(WriteBackOptions {
            max_delay: Duration::from_millis(200),
            // The demo's Redis keeps nothing on disk; production needs
            // appendonly yes + appendfsync always (then leave this true).
            require_durable: false,
            ..WriteBackOptions::default()
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

    let hot = Hot {
        store: store.clone(),
        pool: pool.clone(),
        prefix,
        readers: args.readers as usize,
    };
    hot.stampede().await?;
    hot.near_cache().await?;
    hot.stale_while_revalidate().await?;
    see_it_live(&args.db, &store_url)?;
    Ok(())
}

/// The store to use, a sentence saying which and why, and its URL.
async fn pick_store(explicit: Option<&str>) -> Result<(Arc<dyn Store>, String, String)> {
    if let Some(url) = explicit {
        let store = store::connect_checked(url).await.with_context(|| {
            format!("the Redis given by --redis / LARDER_REDIS_URL ({url}) does not answer")
        })?;
        let note = format!("{} (as configured)", store.name());
        return Ok((store, note, url.to_owned()));
    }
    let probe = format!("{DEFAULT_REDIS}?connect_timeout=300ms&response_timeout=300ms");
    match store::connect_checked(&probe).await {
        Ok(_) => Ok((
            store::connect(DEFAULT_REDIS).await?,
            format!("{DEFAULT_REDIS} (answered)"),
            DEFAULT_REDIS.to_owned(),
        )),
        Err(_) => Ok((
            store::connect("memory://").await?,
            format!(
                "memory:// (no Redis answered at {DEFAULT_REDIS}; set LARDER_REDIS_URL to use one)"
            ),
            "memory://".to_owned(),
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
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS demo_loads (name TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    )
    .execute(db)
    .await
    .context("creating the demo_loads table")?;
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

/// What an expensive query costs in the scenes below, beyond the `SELECT`
/// itself: the work a cache is there to save (a join, a report, a remote
/// database). It is spent after the counting transaction commits, so the
/// database's lock is not held for it.
const QUERY_COST: Duration = Duration::from_millis(20);

/// How many reads a timing in the near-cache scene is the median of.
const READS: usize = 101;

/// The hot key of the stampede and stale-while-revalidate scenes.
const HOT_ID: i64 = 1;

/// The scenes that set larder apart from a hand-written cache-aside: one
/// hot key, many readers, the same rows and the same loader for both.
struct Hot {
    store: Arc<dyn Store>,
    pool: SqlPool,
    prefix: &'static str,
    readers: usize,
}

impl Hot {
    fn db(&self) -> Result<sqlx::SqlitePool> {
        match &self.pool {
            SqlPool::Sqlite(db) => Ok(db.clone()),
            _ => bail!("the demo database is SQLite"),
        }
    }

    /// A cache of its own for a scene, on a clock the demo moves (so a key
    /// expires without waiting for it): no jitter, no early refresh.
    async fn cache(
        &self,
        entity: &str,
        stale: Duration,
        clock: &ManualClock,
    ) -> Result<Cache<i64, User>> {
        Ok(Cache::builder()
            .prefix(self.prefix)
            .entity(entity)
            .store(self.store.clone())
            .clock(clock.clone())
            .ttl(Duration::from_secs(60))
            .jitter(0.0)
            .early_refresh(0.0)
            .stale(stale)
            .build()
            .await?)
    }

    /// The loader both sides use: counted by the database, then the
    /// expensive part.
    fn loader(
        &self,
        counter: &'static str,
    ) -> Result<
        impl FnOnce() -> futures_util::future::BoxFuture<'static, Result<Option<User>, sqlx::Error>>
            + Send
            + 'static,
    > {
        use futures_util::FutureExt as _;
        let db = self.db()?;
        Ok(move || counted_load(db, counter, HOT_ID).boxed())
    }

    async fn stampede(&self) -> Result<()> {
        let readers = self.readers;
        section(&format!(
            "stampede: {readers} concurrent readers of one expired hot key (every load costs {} ms)",
            QUERY_COST.as_millis()
        ));
        let db = self.db()?;

        let (naive, naive_took) = self.naive_expired(&db, "stampede_naive").await?;
        let gate = Arc::new(tokio::sync::Barrier::new(readers));

        // larder: the same key, expired; one reader takes the lease and
        // loads, the others wait for its fill.
        let clock = ManualClock::new();
        let cache = self.cache("users_hot", Duration::ZERO, &clock).await?;
        cache.invalidate(&HOT_ID).await?;
        cache
            .get_or_load(&HOT_ID, self.loader("stampede_prime")?)
            .await?;
        clock.advance(Duration::from_secs(61));
        reset_count(&db, "stampede_larder").await?;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..readers {
            let (cache, gate, load) =
                (cache.clone(), gate.clone(), self.loader("stampede_larder")?);
            tasks.spawn(async move {
                gate.wait().await;
                cache.get_or_load(&HOT_ID, load).await
            });
        }
        let mut outcomes = std::collections::BTreeMap::<&str, u64>::new();
        while let Some(done) = tasks.join_next().await {
            let lookup = done.context("a larder reader panicked")??;
            *outcomes.entry(lookup.outcome.as_str()).or_default() += 1;
        }
        let larder_took = started.elapsed();
        let larder = load_count(&db, "stampede_larder").await?;
        let tally: Vec<String> = outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
        say!(
            "  naive cache-aside  {readers} readers  {naive:>4} database loads  {:>9}",
            fmt_time(naive_took)
        );
        say!(
            "  larder             {readers} readers  {larder:>4} database load{}   {:>9}  (outcomes: {}; one loader, the others shared its load)",
            if larder == 1 { " " } else { "s" },
            fmt_time(larder_took),
            tally.join(", "),
        );
        say!("  (counted by the database: each load bumps demo_loads in its own transaction)");
        Ok(())
    }

    /// The seed's cache-aside, `readers` at once on the hot key just
    /// expired (which in Redis means it is gone): `GET`; on a miss, query
    /// and `SETEX`. The database's count of their loads, and how long the
    /// slowest took.
    async fn naive_expired(
        &self,
        db: &sqlx::SqlitePool,
        counter: &'static str,
    ) -> Result<(i64, Duration)> {
        let key = format!("{}:naive:user:{HOT_ID}", self.prefix);
        let lease = format!("{}:naive:lease:{HOT_ID}", self.prefix);
        self.store.delete(&key, &lease).await?;
        reset_count(db, counter).await?;
        let gate = Arc::new(tokio::sync::Barrier::new(self.readers));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.readers {
            let (store, db, gate) = (self.store.clone(), db.clone(), gate.clone());
            let (key, lease) = (key.clone(), lease.clone());
            tasks.spawn(async move {
                gate.wait().await;
                naive_get(&*store, &key, &lease, db, counter).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.context("a naive reader panicked")??;
        }
        let took = started.elapsed();
        Ok((load_count(db, counter).await?, took))
    }

    async fn near_cache(&self) -> Result<()> {
        section("near cache: an answer from process memory, no network (median of 101 reads)");
        let clock = ManualClock::new();
        let db = self.db()?;
        let key = format!("{}:naive:user:{HOT_ID}", self.prefix);
        let lease = format!("{}:naive:lease:{HOT_ID}", self.prefix);
        let mut times = Vec::with_capacity(READS);
        for _ in 0..READS {
            let (_, took) = timed_any(naive_get(
                &*self.store,
                &key,
                &lease,
                db.clone(),
                "near_naive",
            ))
            .await?;
            times.push(took);
        }
        say!(
            "  {:<16} {:>9}  naive cache-aside: a round trip to Redis and a JSON decode",
            format!("r.get(user:{HOT_ID})"),
            fmt_time(median(&mut times))
        );
        let far = self.cache("users_near", Duration::ZERO, &clock).await?;
        let near: Cache<i64, User> = Cache::builder()
            .prefix(self.prefix)
            .entity("users_near")
            .store(self.store.clone())
            .clock(clock.clone())
            .ttl(Duration::from_secs(60))
            .jitter(0.0)
            .early_refresh(0.0)
            .stale(Duration::ZERO)
            .near(NearOptions::default())
            .build()
            .await?;
        far.invalidate(&HOT_ID).await?;
        far.get_or_load(&HOT_ID, self.loader("near_prime")?).await?;
        // The first read through the near cache fills it from Redis.
        near.get_or_load(&HOT_ID, self.loader("near_prime")?)
            .await?;
        for cache in [&far, &near] {
            let mut times = Vec::with_capacity(READS);
            let mut last = None;
            for _ in 0..READS {
                let (lookup, took) =
                    timed(cache.get_or_load(&HOT_ID, self.loader("near_prime")?)).await?;
                times.push(took);
                last = Some(lookup);
            }
            let lookup = last.context("at least one read")?;
            report(
                &format!("get({HOT_ID})"),
                lookup.outcome,
                median(&mut times),
                lookup.value.as_deref(),
            );
        }
        Ok(())
    }

    async fn stale_while_revalidate(&self) -> Result<()> {
        let readers = self.readers;
        section("stale-while-revalidate: the expired key answered at once, one refresh behind it");
        let db = self.db()?;
        let clock = ManualClock::new();
        let cache = self
            .cache("users_swr", Duration::from_secs(300), &clock)
            .await?;
        cache.invalidate(&HOT_ID).await?;
        rename(&db, HOT_ID, &format!("User {HOT_ID}")).await?;
        cache
            .get_or_load(&HOT_ID, self.loader("swr_prime")?)
            .await?;
        // The row changes in the database and the cached copy ages past
        // its freshness (but within its 5 min stale window).
        rename(&db, HOT_ID, "Refreshed").await?;
        clock.advance(Duration::from_secs(61));
        reset_count(&db, "swr").await?;
        let (lookup, took) = timed(cache.get_or_load(&HOT_ID, self.loader("swr")?)).await?;
        report(
            &format!("get({HOT_ID})"),
            lookup.outcome,
            took,
            lookup.value.as_deref(),
        );
        // Everyone else asking while the refresh runs.
        let gate = Arc::new(tokio::sync::Barrier::new(readers));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..readers {
            let (cache, gate, load) = (cache.clone(), gate.clone(), self.loader("swr")?);
            tasks.spawn(async move {
                gate.wait().await;
                timed(cache.get_or_load(&HOT_ID, load)).await
            });
        }
        let mut outcomes = std::collections::BTreeMap::<&str, u64>::new();
        let mut slowest = Duration::ZERO;
        while let Some(done) = tasks.join_next().await {
            let (lookup, took) = done.context("a reader panicked")??;
            *outcomes.entry(lookup.outcome.as_str()).or_default() += 1;
            slowest = slowest.max(took);
        }
        let tally: Vec<String> = outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
        say!(
            "  {:<16} {:>9}  at most; {} (no reader waits for the refresh's {} ms)",
            format!("{readers} readers"),
            fmt_time(slowest),
            tally.join(", "),
            QUERY_COST.as_millis()
        );
        // The refresh runs in the background; its fill is the next hit.
        let deadline = Instant::now() + Duration::from_secs(10);
        let fresh = loop {
            let (lookup, took) = timed(cache.get_or_load(&HOT_ID, self.loader("swr")?)).await?;
            if lookup.outcome == Outcome::Hit {
                break (lookup, took);
            }
            if Instant::now() > deadline {
                bail!("the background refresh did not land within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        report(
            &format!("get({HOT_ID})"),
            fresh.0.outcome,
            fresh.1,
            fresh.0.value.as_deref(),
        );
        say!(
            "  database loads during all of it: {} (counted by the database)",
            load_count(&db, "swr").await?
        );
        // The seed's cache-aside has no stale window: once expired, the key
        // is gone and every reader waits for a query of its own.
        let (naive, naive_took) = self.naive_expired(&db, "swr_naive").await?;
        say!(
            "  naive, expired   {readers} readers  {naive:>4} database loads  {:>9}  at most (no stale copy: every reader waits for a query)",
            fmt_time(naive_took)
        );
        rename(&db, HOT_ID, &format!("User {HOT_ID}")).await?;
        Ok(())
    }
}

/// The classic hand-written cache-aside: `GET`; on a miss, the query and a
/// `SETEX` of an hour. Nothing stops a hundred callers from all missing.
async fn naive_get(
    store: &dyn Store,
    key: &str,
    lease: &str,
    db: sqlx::SqlitePool,
    counter: &'static str,
) -> Result<Option<User>> {
    if let Some(cached) = store.get(key).await? {
        return Ok(Some(serde_json::from_slice(&cached)?));
    }
    let user = counted_load(db, counter, HOT_ID).await?;
    if let Some(user) = &user {
        store
            .set(
                key,
                lease,
                &serde_json::to_vec(user)?,
                Duration::from_secs(3600),
            )
            .await?;
    }
    Ok(user)
}

/// The demo's loader: bumps `demo_loads` for `counter` and reads the row in
/// one transaction (so the database counts every load it served), then
/// spends [`QUERY_COST`].
async fn counted_load(
    db: sqlx::SqlitePool,
    counter: &'static str,
    id: i64,
) -> std::result::Result<Option<User>, sqlx::Error> {
    let mut tx = db.begin().await?;
    // The write first: a SQLite transaction that reads and then writes can
    // deadlock with another doing the same; one that writes first waits.
    sqlx::query(
        "INSERT INTO demo_loads (name, n) VALUES (?, 1) \
         ON CONFLICT (name) DO UPDATE SET n = n + 1",
    )
    .bind(counter)
    .execute(&mut *tx)
    .await?;
    let row: Option<(i64, String, String, i64)> =
        sqlx::query_as("SELECT id, name, email, team FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    tokio::time::sleep(QUERY_COST).await;
    Ok(row.map(|(id, name, email, team)| User {
        id,
        name,
        email,
        team,
    }))
}

async fn reset_count(db: &sqlx::SqlitePool, counter: &str) -> Result<()> {
    sqlx::query("DELETE FROM demo_loads WHERE name = ?")
        .bind(counter)
        .execute(db)
        .await?;
    Ok(())
}

/// How many loads the database served for `counter` since its reset.
async fn load_count(db: &sqlx::SqlitePool, counter: &str) -> Result<i64> {
    let n: Option<i64> = sqlx::query_scalar("SELECT n FROM demo_loads WHERE name = ?")
        .bind(counter)
        .fetch_optional(db)
        .await?;
    Ok(n.unwrap_or(0))
}

async fn rename(db: &sqlx::SqlitePool, id: i64, name: &str) -> Result<()> {
    sqlx::query("UPDATE users SET name = ? WHERE id = ?")
        .bind(name)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

async fn timed_any<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = work.await?;
    Ok((value, started.elapsed()))
}

/// Writes a config for `larder serve` over the demo's database beside it,
/// and says how to start it and where the dashboard is.
fn see_it_live(db: &str, store_url: &str) -> Result<()> {
    let path = std::path::Path::new(db).with_extension("toml");
    let db_abs = std::fs::canonicalize(db).with_context(|| format!("finding {db}"))?;
    let config = format!(
        "# Written by `larder demo`: the demo's users behind the HTTP API.\n\
         listen = \"127.0.0.1:7070\"\n\n\
         [store]\nurl = \"{store_url}\"\nprefix = \"larder-demo-serve\"\n\n\
         [source]\nurl = \"sqlite://{}\"\npool = 4\n\n\
         [near]\ncapacity = 10000\nttl = \"2s\"\n\n\
         [[entity]]\nname = \"users\"\ntable = \"users\"\nttl = \"60s\"\n",
        db_abs.display()
    );
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    section("see it live: the same users behind the HTTP API, with a dashboard");
    say!("  larder serve --config {}", path.display());
    say!("  then open http://127.0.0.1:7070/ (the dashboard) and read a user:");
    say!("  curl -i http://127.0.0.1:7070/v1/users/42");
    Ok(())
}
