//! Chaos: two service instances under mixed load on a write-through, a
//! write-back and a change-notified entity, while their private durable
//! Redis is SIGKILLed and restarted twice and the database link is cut
//! twice. Afterwards every acknowledged write is in the database, and for
//! every key both instances serve exactly what the database holds; during
//! the run only documented statuses were answered.

mod support;

use axum::Router;
use larder_server::http::app;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::RedisServer;
use support::TcpProxy;
use support::{get, unique, write, Pg};

/// Concurrent clients; each owns `KEYS_PER_CLIENT` ids of every entity, so
/// the order of one key's writes is the order its client sent them.
const CLIENTS: usize = 16;
const KEYS_PER_CLIENT: usize = 4;
const ENTITIES: [&str; 3] = ["wt", "wb", "cd"];
/// The phases of the run: load, then a fault, then load again ...
const PHASE: Duration = Duration::from_secs(3);

const TABLE: &str =
    "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, n int NOT NULL DEFAULT 0);";

/// One write a client sent, and whether it was acknowledged.
#[derive(Debug, Clone)]
struct Attempt {
    name: String,
    acked: bool,
}

/// Every write per (entity, id), in the order sent, and every status seen
/// that the API does not document for the request.
#[derive(Default)]
struct Ledger {
    writes: BTreeMap<(&'static str, i64), Vec<Attempt>>,
    undocumented: Vec<String>,
    statuses: BTreeMap<String, usize>,
}

/// A small seeded generator (xorshift64*): each client's choices repeat.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

fn config(store: &str, source: &str, prefix: &str, tables: &[String; 3]) -> String {
    let [wt, wb, cd] = tables;
    format!(
        "[store]\nurl = \"{store}?connect_timeout=300ms&response_timeout=300ms\"\nprefix = \"{prefix}\"\n\
         [source]\nurl = \"{source}\"\npool = 3\n\
         [near]\ncapacity = 1000\nttl = \"10m\"\n\
         [[entity]]\nname = \"wt\"\ntable = \"{wt}\"\nttl = \"10m\"\nload_timeout = \"1s\"\n\
         [[entity]]\nname = \"wb\"\ntable = \"{wb}\"\nttl = \"10m\"\nwrite = \"back\"\nload_timeout = \"1s\"\n\
         [entity.write_back]\nmax_delay = \"50ms\"\n\
         [[entity]]\nname = \"cd\"\ntable = \"{cd}\"\nttl = \"10m\"\ncdc = true\nload_timeout = \"1s\"\n"
    )
}

/// Whether `status` is one the API documents for this kind of request.
fn documented(kind: &str, status: u16, code: Option<&str>) -> bool {
    match (kind, status) {
        ("read", 200) | ("write", 200) | ("write", 202) => true,
        // The store down for a write-back entity, the database down with
        // nothing to serve, a full backlog.
        (_, 503) => code == Some("unavailable"),
        // A write-back compare-and-set that lost repeatedly.
        ("write", 409) => code == Some("busy"),
        _ => false,
    }
}

fn record_status(ledger: &Mutex<Ledger>, kind: &str, entity: &str, a: &support::Answer) {
    let code = serde_json::from_slice::<serde_json::Value>(&a.body)
        .ok()
        .and_then(|j| j["error"]["code"].as_str().map(str::to_owned));
    let status = a.status.as_u16();
    let mut ledger = ledger.lock().expect("ledger");
    *ledger
        .statuses
        .entry(format!("{kind} {status} {}", code.as_deref().unwrap_or("")))
        .or_default() += 1;
    if !documented(kind, status, code.as_deref()) {
        ledger.undocumented.push(format!(
            "{kind} on {entity}: {status} {}",
            String::from_utf8_lossy(&a.body)
        ));
    }
}

#[allow(clippy::too_many_arguments)]
async fn client(
    c: usize,
    apps: Arc<[Router; 2]>,
    external: sqlx::PgPool,
    tables: Arc<[String; 3]>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let app = &apps[rng.below(2)];
        let e = rng.below(ENTITIES.len());
        let entity = ENTITIES[e];
        if rng.below(10) < 6 {
            let id = rng.below(CLIENTS * KEYS_PER_CLIENT) as i64;
            let a = get(app, &format!("/v1/{entity}/{id}")).await;
            record_status(&ledger, "read", entity, &a);
            continue;
        }
        let id = (c * KEYS_PER_CLIENT + rng.below(KEYS_PER_CLIENT)) as i64;
        n += 1;
        let name = format!("c{c}-{n}");
        if entity == "cd" && rng.below(10) < 3 {
            // Another application writes the table directly: only the
            // change notification tells the caches.
            let done = sqlx::query(&format!("UPDATE {} SET name = $1 WHERE id = $2", tables[2]))
                .bind(&name)
                .bind(id)
                .execute(&external)
                .await;
            ledger
                .lock()
                .expect("ledger")
                .writes
                .entry((entity, id))
                .or_default()
                .push(Attempt {
                    name,
                    acked: done.is_ok(),
                });
            continue;
        }
        let a = write(
            app,
            "PUT",
            &format!("/v1/{entity}/{id}"),
            &format!(r#"{{"name": "{name}", "n": {n}}}"#),
        )
        .await;
        record_status(&ledger, "write", entity, &a);
        let acked = matches!(a.status.as_u16(), 200 | 202);
        ledger
            .lock()
            .expect("ledger")
            .writes
            .entry((entity, id))
            .or_default()
            .push(Attempt { name, acked });
    }
}

async fn names_in_db(pg: &Pg, table: &str) -> BTreeMap<i64, String> {
    sqlx::query_as::<_, (i64, String)>(&format!("SELECT id, name FROM {table}"))
        .fetch_all(&pg.pool)
        .await
        .expect("rows")
        .into_iter()
        .collect()
}

async fn backlog(app: &Router) -> Option<u64> {
    let stats = get(app, "/v1/stats").await;
    if stats.status.as_u16() != 200 {
        return None;
    }
    stats.json()["entities"]["wb"]["write_back"]["backlog"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_redis_kills_and_database_cuts_and_caches_end_equal_to_the_database(
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("larder=error,larder_server=error")
        .try_init();
    let mut pg = Pg::connect().await;
    let tables: [String; 3] = [unique("chaos_wt"), unique("chaos_wb"), unique("chaos_cd")];
    let ids = CLIENTS * KEYS_PER_CLIENT;
    for t in &tables {
        pg.exec(t, TABLE).await;
        pg.exec(
            t,
            &format!("INSERT INTO {{t}} (id, name) SELECT g, 'seed-' || g FROM generate_series(0, {}) g;", ids - 1),
        )
        .await;
    }
    let mut redis = RedisServer::durable();
    let db = TcpProxy::start(support::pg_addr());
    let toml = config(
        &redis.url(),
        &support::pg_url_via(db.addr()),
        &unique("chaos"),
        &tables,
    );
    let apps = Arc::new([
        app(support::state(&toml).await),
        app(support::state(&toml).await),
    ]);
    let external = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&support::pg_url())
        .await
        .expect("external pool");
    let tables = Arc::new(tables);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(client(
                c,
                apps.clone(),
                external.clone(),
                tables.clone(),
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let started = Instant::now();
    for round in 0..2 {
        tokio::time::sleep(PHASE).await;
        redis.kill();
        tokio::time::sleep(PHASE).await;
        redis.restart();
        tokio::time::sleep(PHASE).await;
        db.cut();
        tokio::time::sleep(PHASE).await;
        db.restore();
        eprintln!("chaos: round {round} done after {:?}", started.elapsed());
    }
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }

    // Everything acknowledged reaches the database: the write-back backlog
    // drains on both instances.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (backlog(&apps[0]).await, backlog(&apps[1]).await);
        if a == Some(0) && b == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the write-back backlog did not drain: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
    eprintln!("chaos: statuses {:?}", ledger.statuses);
    assert!(
        ledger.undocumented.is_empty(),
        "undocumented answers ({}): {:?}",
        ledger.undocumented.len(),
        &ledger.undocumented[..ledger.undocumented.len().min(10)]
    );
    let acked = ledger.writes.values().flatten().filter(|w| w.acked).count();
    assert!(
        acked > 100,
        "too little load to prove anything: {acked} acked"
    );

    for (e, entity) in ENTITIES.iter().enumerate() {
        let in_db = names_in_db(&pg, &tables[e]).await;
        for id in 0..ids as i64 {
            let db_name = in_db.get(&id).cloned().unwrap_or_default();
            // The database holds the last acknowledged write, or one sent
            // after it whose answer was lost.
            if let Some(writes) = ledger.writes.get(&(*entity, id)) {
                let last_acked = writes.iter().rposition(|w| w.acked);
                let allowed: Vec<String> = match last_acked {
                    Some(i) => writes[i..].iter().map(|w| w.name.clone()).collect(),
                    None => std::iter::once(format!("seed-{id}"))
                        .chain(writes.iter().map(|w| w.name.clone()))
                        .collect(),
                };
                assert!(
                    allowed.contains(&db_name),
                    "{entity}/{id}: the database holds {db_name:?}, acknowledged history {writes:?}"
                );
            }
            // Both instances serve what the database holds (TTLs are ten
            // minutes: only invalidation can make them agree).
            for (i, app) in apps.iter().enumerate() {
                let path = format!("/v1/{entity}/{id}");
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let a = get(app, &path).await;
                    let served = (a.status.as_u16() == 200)
                        .then(|| a.json()["name"].as_str().map(str::to_owned))
                        .flatten();
                    if served.as_deref() == Some(db_name.as_str()) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "instance {i} serves {served:?} ({}) for {path}, the database holds {db_name:?}",
                        a.x_cache()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(pg);
}
