//! Stampede protection across processes: 4 OS processes × 50 tasks read a
//! key that has just expired, and the source (whose calls are counted in
//! PostgreSQL) is called exactly once; a lease holder killed mid-load is
//! taken over once its lease expires. Each race runs 20 times.

use larder_test_support as support;

use larder::{Cache, Representation};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

/// A `larder-probe` child process, driven line by line.
struct Probe {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

struct ProbeArgs<'a> {
    redis: &'a str,
    schema: &'a str,
    prefix: &'a str,
    tasks: usize,
    load_ms: u64,
    lease_ms: u64,
    wait_ms: u64,
    representation: Representation,
}

impl Probe {
    fn start(a: &ProbeArgs<'_>) -> Probe {
        let mut child = Command::new(env!("CARGO_BIN_EXE_larder-probe"))
            .args(["--redis", a.redis, "--pg", &support::pg_url()])
            .args(["--schema", a.schema, "--prefix", a.prefix])
            .args([
                "--tasks",
                &a.tasks.to_string(),
                "--load-ms",
                &a.load_ms.to_string(),
            ])
            .args([
                "--lease-ms",
                &a.lease_ms.to_string(),
                "--wait-ms",
                &a.wait_ms.to_string(),
            ])
            .args(["--representation", a.representation.as_str()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn larder-probe");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut probe = Probe {
            child,
            stdin,
            lines,
        };
        probe.expect("ready");
        probe
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .expect("write to probe");
    }

    /// The next line starting with `word`; other progress lines are skipped.
    fn expect(&mut self, word: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("probe said nothing while waiting for {word:?}: {e}"));
            assert!(!line.starts_with("error"), "probe failed: {line}");
            if line.starts_with(word) {
                return line;
            }
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn database(schema: &str) -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&support::pg_url())
        .await
        .expect("postgres");
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.loads (n integer NOT NULL)"),
        format!("INSERT INTO {schema}.loads VALUES (0)"),
        format!("CREATE TABLE {schema}.items (id integer PRIMARY KEY, payload text NOT NULL)"),
        format!("INSERT INTO {schema}.items VALUES (1, 'hot value')"),
    ] {
        sqlx::query(&sql).execute(&pool).await.expect(&sql);
    }
    pool
}

async fn loads(pool: &PgPool, schema: &str) -> i32 {
    sqlx::query_scalar(&format!("SELECT n FROM {schema}.loads"))
        .fetch_one(pool)
        .await
        .expect("loads")
}

async fn reset(pool: &PgPool, schema: &str, cache: &Cache<i64, String>) {
    sqlx::query(&format!("UPDATE {schema}.loads SET n = 0"))
        .execute(pool)
        .await
        .expect("reset");
    cache.invalidate(&1).await.expect("expire the key");
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(pool)
        .await
        .expect("drop schema");
}

/// The parent's handle on the same entity, used to expire the key.
async fn parent_cache(
    prefix: &str,
    redis: &str,
    representation: Representation,
) -> Cache<i64, String> {
    Cache::builder()
        .prefix(prefix)
        .entity("items")
        .representation(representation)
        .store(larder::store::connect_checked(redis).await.expect("store"))
        .build()
        .await
        .expect("cache")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_per_expiry_across_four_processes() {
    one_load_per_expiry(&support::redis_url(), Representation::String).await;
}

/// The same race over a hash entity (one Redis hash per entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_per_expiry_across_four_processes_hash() {
    one_load_per_expiry(&support::redis_url(), Representation::Hash).await;
}

/// The same on Redis Cluster (the shared test cluster), every process its own client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_per_expiry_across_four_processes_on_cluster() {
    one_load_per_expiry(
        &support::RedisCluster::shared().url(),
        Representation::String,
    )
    .await;
}

/// The runs of 4 processes × 50 tasks take turns: together, beside the
/// takeover test, they load 2 cores enough to make its timing flaky.
static FOUR_PROCESSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn one_load_per_expiry(redis: &str, representation: Representation) {
    let _turn = FOUR_PROCESSES.lock().await;
    let (schema, prefix) = (support::unique("stampede"), support::unique("stampede"));
    let pool = database(&schema).await;
    let cache = parent_cache(&prefix, redis, representation).await;
    let args = ProbeArgs {
        redis,
        representation,
        schema: &schema,
        prefix: &prefix,
        tasks: 50,
        load_ms: 100,
        lease_ms: 5000,
        wait_ms: 3000,
    };
    let mut probes: Vec<Probe> = (0..4).map(|_| Probe::start(&args)).collect();
    for round in 0..20 {
        reset(&pool, &schema, &cache).await;
        for p in &mut probes {
            p.send("go 1");
        }
        for p in &mut probes {
            let done = p.expect("done");
            assert!(
                done.starts_with("done 50 "),
                "round {round}: every caller gets the value: {done}"
            );
        }
        assert_eq!(
            loads(&pool, &schema).await,
            1,
            "round {round}: 200 callers, one load"
        );
    }
    for p in &mut probes {
        p.send("quit");
    }
    drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lease_holder_is_taken_over_after_its_lease() {
    dead_lease_holder_taken_over(Representation::String).await;
}

/// The same takeover over a hash entity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lease_holder_is_taken_over_after_its_lease_hash() {
    dead_lease_holder_taken_over(Representation::Hash).await;
}

async fn dead_lease_holder_taken_over(representation: Representation) {
    let (schema, prefix) = (support::unique("takeover"), support::unique("takeover"));
    let pool = database(&schema).await;
    let redis = support::redis_url();
    let cache = parent_cache(&prefix, &redis, representation).await;
    let short = |load_ms| ProbeArgs {
        redis: &redis,
        representation,
        schema: &schema,
        prefix: &prefix,
        tasks: 1,
        load_ms,
        lease_ms: 400,
        wait_ms: 300,
    };
    let mut survivor = Probe::start(&short(5));
    for round in 0..20 {
        reset(&pool, &schema, &cache).await;
        let mut victim = Probe::start(&short(60_000));
        victim.send("go 1");
        victim.expect("loading 1");
        victim.child.kill().expect("kill the lease holder");
        victim.child.wait().expect("reap");
        // The survivor waits for the dead holder's fill, gives up, and once
        // the lease has expired takes it and fills: a later read is a hit.
        let mut filled = false;
        for _ in 0..20 {
            survivor.send("go 1");
            let done = survivor.expect("done");
            assert!(
                done.starts_with("done 1 "),
                "round {round}: the survivor gets the value: {done}"
            );
            if done.ends_with("misses=0") {
                filled = true;
                break;
            }
        }
        assert!(filled, "round {round}: nobody filled after the holder died");
        let n = loads(&pool, &schema).await;
        assert!(
            n >= 2,
            "round {round}: the dead holder's load and the takeover: {n}"
        );
    }
    survivor.send("quit");
    drop_schema(&pool, &schema).await;
}
