//! One runner per pattern, and the client loop they share.
//!
//! Every pattern gets its own table `larder_bench_<pattern>_<pid>` (seeded with
//! `--keys` rows `id, version, payload`) and its own Redis prefix, so runs
//! never see each other's data; both are removed afterwards. The database
//! is reached through [`CountedSource`], which counts rows read and written
//! and adds `--db-latency` to every statement, so "database reads per
//! operation" costs no extra query. A pattern is a [`Target`]: how it reads
//! and how it writes, the rest (choosing keys, versions, timing) is the
//! same loop for all.

use super::stale::{is_stale, Versions};
use super::workload::{Keys, Rng, Workload};
use anyhow::{anyhow, Context as _, Result};
use async_trait::async_trait;
use hdrhistogram::Histogram;
use larder::source::{FlushBatch, Flushed};
use larder::{Cache, NearOptions, Source, SqlPool, SqlSource, WriteBackOptions, WritePolicy};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The patterns `larder bench` knows, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Pattern {
    /// No cache: every operation is a database statement.
    DbOnly,
    /// `get_or_load` with the bench's loader; writes: database, then `invalidate`.
    CacheAside,
    /// Cache-aside whose writes skip the invalidation: deliberately stale
    /// (the stale-read detector's proof); not in the default set.
    CacheAsideNoInvalidate,
    /// `get` with the table as the cache's source; writes: database, then `invalidate`.
    ReadThrough,
    /// Read-through with the near cache (L1) in front of Redis.
    ReadThroughL1,
    /// `get` + `put` under `WritePolicy::Through`.
    WriteThrough,
    /// `get` + `put` under `WritePolicy::Around`.
    WriteAround,
    /// `get` + `put` under `WritePolicy::Back`, closed (flushed) at the end.
    WriteBack,
    /// Plain `GET`/`SET` on one connection per client: the floor.
    RedisRaw,
}

impl Pattern {
    /// Every pattern, in run order.
    pub(crate) const ALL: [Pattern; 9] = [
        Pattern::DbOnly,
        Pattern::CacheAside,
        Pattern::CacheAsideNoInvalidate,
        Pattern::ReadThrough,
        Pattern::ReadThroughL1,
        Pattern::WriteThrough,
        Pattern::WriteAround,
        Pattern::WriteBack,
        Pattern::RedisRaw,
    ];

    /// The name on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Pattern::DbOnly => "db-only",
            Pattern::CacheAside => "cache-aside",
            Pattern::CacheAsideNoInvalidate => "cache-aside-no-invalidate",
            Pattern::ReadThrough => "read-through",
            Pattern::ReadThroughL1 => "read-through+l1",
            Pattern::WriteThrough => "write-through",
            Pattern::WriteAround => "write-around",
            Pattern::WriteBack => "write-back",
            Pattern::RedisRaw => "redis-raw",
        }
    }

    /// Whether `--patterns all` (the default) includes it.
    pub(crate) fn in_default_set(self) -> bool {
        self != Pattern::CacheAsideNoInvalidate
    }

    /// The pattern named `name`.
    pub(crate) fn parse(name: &str) -> Option<Pattern> {
        Pattern::ALL.into_iter().find(|p| p.name() == name)
    }

    /// `[a-z0-9_]` form of the name, for table names and key prefixes.
    fn slug(self) -> String {
        self.name().replace(['-', '+'], "_")
    }
}

/// One row of a bench table (and the cached value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Row {
    id: i64,
    version: i64,
    payload: String,
}

/// Rows and statements that reached the database, counted in the source.
#[derive(Debug, Default)]
pub(crate) struct DbCounts {
    /// Rows requested by loads.
    pub(crate) reads: AtomicU64,
    /// Rows written (upserts and deletes, write-back flushes included).
    pub(crate) writes: AtomicU64,
    /// Statements sent (a multi-row load or flush is one).
    pub(crate) statements: AtomicU64,
}

/// The bench table as a [`Source`]: counts rows and adds `--db-latency` to
/// every statement. A cheap clone.
#[derive(Debug, Clone)]
pub(crate) struct CountedSource {
    sql: SqlSource,
    counts: Arc<DbCounts>,
    latency: Duration,
}

impl CountedSource {
    /// Counts one statement and adds `--db-latency` to it.
    async fn delay(&self) {
        Self::count(&self.counts.statements, 1);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    fn count(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[async_trait]
impl Source<Row> for CountedSource {
    fn canonical_id(&self, id: &str) -> larder::Result<String> {
        self.sql.canonical_id(id)
    }

    async fn load(&self, id: &str) -> larder::Result<Option<Row>> {
        self.delay().await;
        Self::count(&self.counts.reads, 1);
        Source::<Row>::load(&self.sql, id).await
    }

    async fn load_many(&self, ids: &[String]) -> larder::Result<HashMap<String, Row>> {
        self.delay().await;
        Self::count(&self.counts.reads, ids.len());
        Source::<Row>::load_many(&self.sql, ids).await
    }

    fn is_writable(&self) -> bool {
        self.sql.is_writable()
    }

    async fn store(&self, id: &str, value: &Row) -> larder::Result<Row> {
        self.delay().await;
        Self::count(&self.counts.writes, 1);
        self.sql.store(id, value).await
    }

    async fn store_many(&self, rows: &[(String, Row)]) -> larder::Result<Vec<(String, Row)>> {
        self.delay().await;
        Self::count(&self.counts.writes, rows.len());
        self.sql.store_many(rows).await
    }

    async fn delete(&self, id: &str) -> larder::Result<bool> {
        self.delay().await;
        Self::count(&self.counts.writes, 1);
        Source::<Row>::delete(&self.sql, id).await
    }

    fn check(&self, id: &str, value: &Row) -> larder::Result<()> {
        self.sql.check(id, value)
    }

    fn fences_flushes(&self) -> bool {
        Source::<Row>::fences_flushes(&self.sql)
    }

    async fn prepare_write_back(&self, entity: &str, shards: u16) -> larder::Result<()> {
        Source::<Row>::prepare_write_back(&self.sql, entity, shards).await
    }

    async fn flush(&self, batch: FlushBatch<'_, Row>) -> larder::Result<Flushed<Row>> {
        self.delay().await;
        Self::count(
            &self.counts.writes,
            batch.upserts.len() + batch.updates.len() + batch.deletes.len(),
        );
        self.sql.flush(batch).await
    }
}

/// How a cached pattern reads.
#[derive(Debug, Clone, Copy)]
enum ReadPath {
    /// `get_or_load` with a loader over the table.
    Aside,
    /// `get`: the cache's source loads.
    Through,
}

/// How a cached pattern writes.
#[derive(Debug, Clone, Copy)]
enum WritePath {
    /// The application writes the table, then invalidates the key.
    DbThenInvalidate,
    /// The application writes the table and forgets the cache (stale).
    DbOnly,
    /// `put`: the cache's write policy decides.
    Put,
}

/// What a pattern does for one read and one write.
enum Target {
    Db(CountedSource),
    Cached {
        cache: Cache<i64, Row>,
        src: CountedSource,
        read: ReadPath,
        write: WritePath,
    },
    Raw {
        /// `<prefix>:<key>`, made before the run.
        keys: Vec<String>,
    },
}

/// What one read found.
struct Read {
    /// The version read (`None`: no row).
    version: Option<u64>,
    /// Whether a cache answered (`None`: the pattern has no cache).
    hit: Option<bool>,
}

/// A client's own state: buffers reused by every operation.
struct Client {
    row: Row,
    id: String,
    raw_value: Vec<u8>,
    conn: Option<redis::aio::MultiplexedConnection>,
}

impl Target {
    async fn read(&self, key: u64, client: &mut Client) -> Result<Read> {
        match self {
            Target::Db(src) => {
                set_id(&mut client.id, key);
                let row = src.load(&client.id).await?;
                Ok(Read {
                    version: row.map(|r| r.version as u64),
                    hit: None,
                })
            }
            Target::Cached {
                cache, src, read, ..
            } => {
                let k = key as i64;
                let found = match read {
                    ReadPath::Through => cache.get(&k).await?,
                    ReadPath::Aside => {
                        let src = src.clone();
                        cache
                            .get_or_load(&k, move || async move { src.load(&k.to_string()).await })
                            .await?
                    }
                };
                Ok(Read {
                    version: found.value.map(|r| r.version as u64),
                    hit: Some(found.outcome.is_hit()),
                })
            }
            Target::Raw { keys } => {
                let conn = client.conn.as_mut().context("no Redis connection")?;
                let got: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&keys[key as usize])
                    .query_async(conn)
                    .await?;
                let version = got.as_deref().and_then(|v| {
                    v.get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_le_bytes)
                });
                Ok(Read {
                    hit: Some(got.is_some()),
                    version,
                })
            }
        }
    }

    async fn write(&self, key: u64, version: u64, client: &mut Client) -> Result<()> {
        client.row.id = key as i64;
        client.row.version = version as i64;
        match self {
            Target::Db(src) => {
                set_id(&mut client.id, key);
                src.store(&client.id, &client.row).await?;
            }
            Target::Cached {
                cache, src, write, ..
            } => match write {
                WritePath::Put => {
                    cache.put(&client.row.id, &client.row).await?;
                }
                WritePath::DbThenInvalidate | WritePath::DbOnly => {
                    set_id(&mut client.id, key);
                    src.store(&client.id, &client.row).await?;
                    if matches!(write, WritePath::DbThenInvalidate) {
                        cache.invalidate(&client.row.id).await?;
                    }
                }
            },
            Target::Raw { keys } => {
                client.raw_value[..8].copy_from_slice(&version.to_le_bytes());
                let conn = client.conn.as_mut().context("no Redis connection")?;
                redis::cmd("SET")
                    .arg(&keys[key as usize])
                    .arg(&client.raw_value[..])
                    .query_async::<()>(conn)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Writes `key` into `id` without allocating (the buffer is reused).
fn set_id(id: &mut String, key: u64) {
    id.clear();
    let _ = write!(id, "{key}");
}

/// Where the bench runs: one database pool and one Redis for every pattern.
#[derive(Debug)]
pub(crate) struct Env {
    /// The database (every pattern's table lives there).
    pub(crate) pool: SqlPool,
    /// The Redis URL.
    pub(crate) redis_url: String,
    /// A client for `redis-raw`, seeding and cleaning up.
    pub(crate) redis: redis::Client,
    /// Makes prefixes unique to this run.
    pub(crate) run_id: String,
}

/// What every client of one pattern shares.
pub(crate) struct Shared {
    /// The workload.
    pub(crate) workload: Workload,
    /// The key sampler.
    pub(crate) keys: Arc<Keys>,
    /// The stale-read detector's versions, fresh per pattern.
    pub(crate) versions: Versions,
    /// Operations finished (updated every few operations, for the progress bar).
    pub(crate) done: AtomicU64,
}

/// What the clients of one pattern measured, merged.
#[derive(Debug)]
pub(crate) struct Measured {
    /// Latency of every read, ns (open loop: from its due time).
    pub(crate) read_latency: Histogram<u64>,
    /// Latency of every write, ns (open loop: from its due time).
    pub(crate) write_latency: Histogram<u64>,
    /// Reads done.
    pub(crate) reads: u64,
    /// Writes done.
    pub(crate) writes: u64,
    /// Reads a cache answered.
    pub(crate) hits: u64,
    /// Reads of a pattern with a cache.
    pub(crate) cached_reads: u64,
    /// Reads older than the newest write acknowledged before they began.
    pub(crate) stale: u64,
    /// Operations that failed (or read no row).
    pub(crate) errors: u64,
    /// The first failure, for the report.
    pub(crate) first_error: Option<String>,
    /// Open loop with a duration: operations that were due before the end
    /// but never sent, because the pattern fell too far behind.
    pub(crate) unsent: u64,
}

/// A latency histogram: 1 ns .. 1 h at 3 significant digits, fixed size, so
/// it never resizes in the loop.
pub(crate) fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000_000, 3)?)
}

impl Measured {
    fn new() -> Result<Measured> {
        Ok(Measured {
            read_latency: histogram()?,
            write_latency: histogram()?,
            reads: 0,
            writes: 0,
            hits: 0,
            cached_reads: 0,
            stale: 0,
            errors: 0,
            first_error: None,
            unsent: 0,
        })
    }

    fn failed(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}").replace(['\n', '\r'], " "));
        }
    }

    fn merge(&mut self, other: Measured) -> Result<()> {
        self.read_latency.add(&other.read_latency)?;
        self.write_latency.add(&other.write_latency)?;
        self.unsent += other.unsent;
        self.reads += other.reads;
        self.writes += other.writes;
        self.hits += other.hits;
        self.cached_reads += other.cached_reads;
        self.stale += other.stale;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// The outcome of one pattern's run.
#[derive(Debug)]
pub(crate) struct PatternRun {
    /// What the clients measured.
    pub(crate) measured: Measured,
    /// Wall time from the first operation to the last.
    pub(crate) elapsed: Duration,
    /// Rows read from the database.
    pub(crate) db_reads: u64,
    /// Rows written to the database (write-back: flushed by the end of `close`).
    pub(crate) db_writes: u64,
    /// Statements sent to the database while the clients ran (write-back's
    /// final flush by `close` excluded).
    pub(crate) db_statements: u64,
    /// Something the reader must know about this run.
    pub(crate) note: Option<String>,
}

/// How many operations a client adds to the shared progress counter at once.
const PROGRESS_STEP: u64 = 64;

/// One client: draws keys and operations until its share is done or time
/// is up. Closed loop: the next operation goes when the last is answered,
/// and its latency counts from then. Open loop (`--rate`): each operation
/// waits for its due time on the client's [`Schedule`](super::workload::Schedule)
/// and its latency counts from that due time, however late it is sent.
async fn client_loop(
    target: Arc<Target>,
    shared: Arc<Shared>,
    mut client: Client,
    index: usize,
    start: Instant,
    deadline: Option<Instant>,
) -> Result<Measured> {
    let w = &shared.workload;
    let mut rng = Rng::new(w.seed, index);
    let limit = w.ops_of(index);
    let mut schedule = w.schedule_of(index, start);
    // An open loop that falls behind keeps sending what was due before the
    // deadline, for at most as long again; what is still unsent then is
    // counted, never silently dropped.
    let give_up = deadline.map(|d| d + (d - start));
    let mut m = Measured::new()?;
    let mut n = 0u64;
    loop {
        if limit.is_some_and(|l| n >= l) {
            break;
        }
        let due = match &mut schedule {
            Some(s) => {
                if deadline.is_some_and(|d| s.peek() >= d) {
                    break;
                }
                if give_up.is_some_and(|g| Instant::now() >= g) {
                    m.unsent += unsent_before(s, deadline);
                    break;
                }
                let due = s.next_due();
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            None => None,
        };
        let key = shared.keys.sample(&mut rng);
        let started;
        let latency;
        if rng.unit() < w.read_ratio {
            let floor = shared.versions.floor(key);
            started = due.unwrap_or_else(Instant::now);
            m.reads += 1;
            match target.read(key, &mut client).await {
                Ok(read) => {
                    if let Some(hit) = read.hit {
                        m.cached_reads += 1;
                        m.hits += u64::from(hit);
                    }
                    match read.version {
                        Some(v) => m.stale += u64::from(is_stale(floor, v)),
                        None => m.failed(format!("key {key}: no row")),
                    }
                }
                Err(e) => m.failed(e),
            }
            latency = &mut m.read_latency;
        } else {
            // Closed loop: latency counts from the key's turn on (the wait
            // for the previous write of the same key is the bench's, not the
            // pattern's). Open loop: from the due time, turn included, like
            // any other queueing.
            let turn = shared.versions.begin_write(key).await;
            started = due.unwrap_or_else(Instant::now);
            m.writes += 1;
            match target.write(key, turn.version(), &mut client).await {
                Ok(()) => turn.ack(),
                Err(e) => m.failed(e),
            }
            latency = &mut m.write_latency;
        }
        let now = Instant::now();
        latency.saturating_record(u64::try_from((now - started).as_nanos()).unwrap_or(u64::MAX));
        n += 1;
        if n.is_multiple_of(PROGRESS_STEP) {
            shared.done.fetch_add(PROGRESS_STEP, Ordering::Relaxed);
        }
        if schedule.is_none() && deadline.is_some_and(|d| now >= d) {
            break;
        }
    }
    shared.done.fetch_add(n % PROGRESS_STEP, Ordering::Relaxed);
    Ok(m)
}

/// How many operations of `schedule` were due before `deadline` and not sent.
fn unsent_before(schedule: &mut super::workload::Schedule, deadline: Option<Instant>) -> u64 {
    let Some(deadline) = deadline else { return 0 };
    let mut unsent = 0;
    while schedule.peek() < deadline {
        schedule.next_due();
        unsent += 1;
    }
    unsent
}

/// Runs `pattern` on a fresh table and prefix, and cleans up after it.
pub(crate) async fn run(pattern: Pattern, env: &Env, shared: Arc<Shared>) -> Result<PatternRun> {
    // The process id keeps two runs on one database (two terminals, tests
    // in parallel) off each other's tables.
    let table = format!("larder_bench_{}_{}", pattern.slug(), env.run_id);
    let prefix = format!(
        "larder-bench-{}-{}",
        env.run_id,
        pattern.slug().replace('_', "-")
    );
    let payload = "x".repeat(shared.workload.value_size);
    let outcome = async {
        create_table(&env.pool, &table, shared.workload.keys, &payload).await?;
        let counts = Arc::new(DbCounts::default());
        let (target, cache) = build(pattern, env, &shared, &table, &prefix, &counts).await?;
        let run = drive(pattern, env, target, &shared, &payload).await?;
        let db_statements = counts.statements.load(Ordering::Relaxed);
        let mut note = None;
        if let Some(cache) = cache {
            let started = Instant::now();
            let closed = cache
                .close(Duration::from_secs(120))
                .await
                .with_context(|| format!("{}: close", pattern.name()))?;
            if pattern == Pattern::WriteBack {
                note = Some(format!(
                    "write-back: require_durable = false on {}; close() flushed the backlog in {:.2} s ({} left pending)",
                    env.redis_url,
                    started.elapsed().as_secs_f64(),
                    closed.pending,
                ));
            }
        }
        let (measured, elapsed) = run;
        Ok::<_, anyhow::Error>(PatternRun {
            measured,
            elapsed,
            db_reads: counts.reads.load(Ordering::Relaxed),
            db_writes: counts.writes.load(Ordering::Relaxed),
            db_statements,
            note,
        })
    }
    .await;
    let cleaned = cleanup(env, &table, &prefix, pattern).await;
    let run = outcome?;
    cleaned?;
    Ok(run)
}

/// Builds the pattern's target; the cache too, to close it at the end.
async fn build(
    pattern: Pattern,
    env: &Env,
    shared: &Shared,
    table: &str,
    prefix: &str,
    counts: &Arc<DbCounts>,
) -> Result<(Target, Option<Cache<i64, Row>>)> {
    let sql = SqlSource::builder(env.pool.clone(), table)
        .entity("rows")
        .build()
        .await?;
    let src = CountedSource {
        sql,
        counts: counts.clone(),
        latency: shared.workload.db_latency,
    };
    let (read, write, policy, near) = match pattern {
        Pattern::DbOnly => return Ok((Target::Db(src), None)),
        Pattern::RedisRaw => {
            let keys = (0..shared.workload.keys)
                .map(|k| format!("{prefix}:{k}"))
                .collect();
            return Ok((Target::Raw { keys }, None));
        }
        Pattern::CacheAside => (ReadPath::Aside, WritePath::DbThenInvalidate, None, false),
        Pattern::CacheAsideNoInvalidate => (ReadPath::Aside, WritePath::DbOnly, None, false),
        Pattern::ReadThrough => (ReadPath::Through, WritePath::DbThenInvalidate, None, false),
        Pattern::ReadThroughL1 => (ReadPath::Through, WritePath::DbThenInvalidate, None, true),
        Pattern::WriteThrough => (
            ReadPath::Through,
            WritePath::Put,
            Some(WritePolicy::Through),
            false,
        ),
        Pattern::WriteAround => (
            ReadPath::Through,
            WritePath::Put,
            Some(WritePolicy::Around),
            false,
        ),
        Pattern::WriteBack => (
            ReadPath::Through,
            WritePath::Put,
            Some(WritePolicy::Back(WriteBackOptions {
                require_durable: false,
                ..WriteBackOptions::default()
            })),
            false,
        ),
    };
    let store = larder::store::connect_checked(&env.redis_url).await?;
    let mut builder = Cache::builder()
        .prefix(prefix)
        .entity("rows")
        .store(store)
        .random_seed(shared.workload.seed);
    if matches!(read, ReadPath::Through) {
        builder = builder.source(src.clone());
    }
    if let Some(policy) = policy {
        builder = builder.write_policy(policy);
    }
    if near {
        builder = builder.near(NearOptions::default());
    }
    let cache = builder.build().await?;
    Ok((
        Target::Cached {
            cache: cache.clone(),
            src,
            read,
            write,
        },
        Some(cache),
    ))
}

/// Starts the clients, waits for them, and merges what they measured.
async fn drive(
    pattern: Pattern,
    env: &Env,
    target: Target,
    shared: &Arc<Shared>,
    payload: &str,
) -> Result<(Measured, Duration)> {
    let w = &shared.workload;
    let mut clients = Vec::with_capacity(w.clients);
    for _ in 0..w.clients {
        let conn = match (&target, pattern) {
            (Target::Raw { .. }, _) => Some(
                env.redis
                    .get_multiplexed_async_connection()
                    .await
                    .context("redis-raw: connect")?,
            ),
            _ => None,
        };
        let mut raw_value = vec![0u8; 8];
        raw_value.extend_from_slice(payload.as_bytes());
        clients.push(Client {
            row: Row {
                id: 0,
                version: 0,
                payload: payload.to_owned(),
            },
            id: String::with_capacity(20),
            raw_value,
            conn,
        });
    }
    if let Target::Raw { keys } = &target {
        seed_raw(env, keys, payload).await?;
    }
    let target = Arc::new(target);
    let started = Instant::now();
    let deadline = match w.stop {
        super::workload::Stop::Duration(d) => Some(started + d),
        super::workload::Stop::Ops(_) => None,
    };
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            tokio::spawn(client_loop(
                target.clone(),
                shared.clone(),
                c,
                i,
                started,
                deadline,
            ))
        })
        .collect();
    let mut merged = Measured::new()?;
    for task in tasks {
        merged.merge(task.await.map_err(|e| anyhow!("a client failed: {e}"))??)?;
    }
    Ok((merged, started.elapsed()))
}

/// Runs `$body` with `$db` bound to the PostgreSQL or the SQLite pool
/// (the statements are the same; sqlx's pool types differ).
macro_rules! on_pool {
    ($pool:expr, $db:ident => $body:block) => {
        match $pool {
            SqlPool::Postgres($db) => $body,
            SqlPool::Sqlite($db) => $body,
            SqlPool::MySql(_) => {
                return Err(anyhow!("larder bench runs against PostgreSQL or SQLite"))
            }
        }
    };
}

/// Creates `table` with `keys` rows at version 0, in one statement.
async fn create_table(pool: &SqlPool, table: &str, keys: u64, payload: &str) -> Result<()> {
    let drop = format!("DROP TABLE IF EXISTS {table}");
    let create = format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, version bigint NOT NULL, payload text NOT NULL)"
    );
    let seed = format!(
        "WITH RECURSIVE s(i) AS (SELECT CAST(0 AS bigint) UNION ALL SELECT i + 1 FROM s WHERE i < $1) \
         INSERT INTO {table} (id, version, payload) SELECT i, 0, $2 FROM s"
    );
    let last = i64::try_from(keys)? - 1;
    on_pool!(pool, db => {
        sqlx::query(&drop).execute(db).await?;
        sqlx::query(&create).execute(db).await?;
        sqlx::query(&seed).bind(last).bind(payload).execute(db).await?;
    });
    Ok(())
}

/// Sets every `redis-raw` key to version 0 (pipelines of 1,000).
async fn seed_raw(env: &Env, keys: &[String], payload: &str) -> Result<()> {
    let mut conn = env.redis.get_multiplexed_async_connection().await?;
    let mut value = vec![0u8; 8];
    value.extend_from_slice(payload.as_bytes());
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("SET").arg(key).arg(&value[..]).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    Ok(())
}

/// Drops the table, deletes the prefix's keys, and the write-back fence rows.
async fn cleanup(env: &Env, table: &str, prefix: &str, pattern: Pattern) -> Result<()> {
    let drop = format!("DROP TABLE IF EXISTS {table}");
    let fence = "DELETE FROM larder_fence WHERE entity = $1";
    let entity = format!("{prefix}:rows");
    on_pool!(&env.pool, db => {
        sqlx::query(&drop).execute(db).await?;
        if pattern == Pattern::WriteBack {
            // Best effort: the table exists only if write-back got that far.
            let _ = sqlx::query(fence).bind(&entity).execute(db).await;
        }
    });
    let mut conn = env.redis.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
