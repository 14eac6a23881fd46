//! Test support for the service: real Redis and PostgreSQL (or a SQLite
//! temp file), a router built from a TOML config exactly as `larder serve`
//! builds it, and requests sent with `oneshot` (no socket).
//!
//! Isolation: every test gets a unique key prefix and its own table(s);
//! tables are dropped when the [`Pg`] handle is dropped (best effort).

#![allow(dead_code, unreachable_pub, missing_docs)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use larder_server::config::Config;
use larder_server::serve::{self, AppState};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use tower::ServiceExt as _;

// The library's shared test helper: a redis-server of the test's own.
#[allow(dead_code)]
#[path = "../../../larder/tests/support/proxy.rs"]
pub mod proxy;
#[allow(dead_code)]
#[path = "../../../larder/tests/support/redis_server.rs"]
pub mod redis_server;
#[allow(dead_code)]
#[path = "../../../larder/tests/support/resp.rs"]
pub mod resp;
#[allow(dead_code)]
#[path = "../../../larder/tests/support/wait.rs"]
pub mod wait;

pub fn redis_url() -> String {
    std::env::var("LARDER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

pub fn pg_url() -> String {
    std::env::var("LARDER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The address of the PostgreSQL at [`pg_url`], for a proxy in front of it.
pub fn pg_addr() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs as _;
    let url = url::Url::parse(&pg_url()).expect("pg url");
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    (host.as_str(), url.port().unwrap_or(5432))
        .to_socket_addrs()
        .expect("pg address")
        .next()
        .expect("pg address")
}

/// [`pg_url`] through `addr` (a proxy), in plain text: a proxy may watch
/// the protocol (for COMMIT), and sqlx negotiates TLS by default when the
/// server offers it.
pub fn pg_url_via(addr: std::net::SocketAddr) -> String {
    let mut url = url::Url::parse(&pg_url()).expect("pg url");
    url.set_host(Some(&addr.ip().to_string())).expect("host");
    url.set_port(Some(addr.port())).expect("port");
    url.query_pairs_mut().append_pair("sslmode", "disable");
    url.to_string()
}

/// A name unique to this process and call: `[a-z0-9_]`, usable as a table
/// name and a key prefix.
pub fn unique(base: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{base}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

/// A PostgreSQL connection for setting up tables; drops them at the end.
pub struct Pg {
    pub pool: PgPool,
    tables: Vec<String>,
}

impl Pg {
    pub async fn connect() -> Pg {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&pg_url())
            .await
            .expect("PostgreSQL at LARDER_TEST_PG_URL (scripts/services.sh starts it)");
        Pg {
            pool,
            tables: Vec::new(),
        }
    }

    /// Runs `sql`; `{t}` is replaced by `table`, which is dropped at the end.
    pub async fn exec(&mut self, table: &str, sql: &str) {
        if !self.tables.iter().any(|t| t == table) {
            self.tables.push(table.to_owned());
        }
        sqlx::raw_sql(&sql.replace("{t}", table))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn scalar_text(&self, sql: &str) -> Option<String> {
        sqlx::query_scalar::<_, Option<String>>(sql)
            .fetch_optional(&self.pool)
            .await
            .expect("query")
            .flatten()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let tables = std::mem::take(&mut self.tables);
        if tables.is_empty() {
            return;
        }
        // Views first (they depend on tables); CASCADE covers the rest.
        let sql: String = tables
            .iter()
            .map(|t| format!("DROP VIEW IF EXISTS {t} CASCADE; DROP TABLE IF EXISTS {t} CASCADE;"))
            .collect();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                // A connection of this runtime's own: the test's pool is
                // bound to the test's runtime, which is blocked here.
                rt.block_on(async move {
                    if let Ok(pool) = PgPoolOptions::new()
                        .max_connections(1)
                        .connect(&pg_url())
                        .await
                    {
                        let _ = sqlx::raw_sql(&sql).execute(&pool).await;
                        pool.close().await;
                    }
                });
            }
        })
        .join();
    }
}

/// The config text shared by the PostgreSQL tests: a unique prefix, the
/// shared Redis, a small pool; `entities` is appended.
pub fn pg_config(prefix: &str, entities: &str) -> String {
    format!(
        "[store]\nurl = \"{}\"\nprefix = \"{prefix}\"\n[source]\nurl = \"{}\"\npool = 3\n{entities}",
        redis_url(),
        pg_url()
    )
}

/// Parses `toml` (as `test.toml`) and starts the service state from it.
pub async fn state(toml: &str) -> AppState {
    let config = Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    serve::start(config)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error code of an error answer (asserting the JSON error shape).
    pub fn code(&self) -> String {
        let j = self.json();
        assert!(
            j["error"]["message"].is_string(),
            "error body without message: {j}"
        );
        j["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {j}"))
            .to_owned()
    }

    pub fn x_cache(&self) -> &str {
        self.header("x-cache").unwrap_or("(none)")
    }
}

/// Sends one request to the router.
pub async fn send(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes().to_vec();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(app: &Router, path: &str) -> Answer {
    send(app, "GET", path, &[], None).await
}

/// A JSON write (`Content-Type: application/json`).
pub async fn write(app: &Router, method: &str, path: &str, body: &str) -> Answer {
    send(
        app,
        method,
        path,
        &[("content-type", "application/json")],
        Some(body),
    )
    .await
}

/// Starts the test's own `larder serve ARGS` (in `cwd`, if given) and waits,
/// with a deadline, for its "listening on" line: the child and the URL it
/// printed. Kill the child when done (the callers' `Drop`).
pub fn spawn_serve(args: &[&str], cwd: Option<&std::path::Path>) -> (std::process::Child, String) {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    cmd.arg("serve").args(args);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .env_remove("LARDER_CONFIG")
        .env("LARDER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn larder");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("larder: listening on ") {
                    return (child, url.to_owned());
                }
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("larder serve did not say it listens: {e}");
            }
        }
    }
}
