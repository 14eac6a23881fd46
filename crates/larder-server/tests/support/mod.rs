//! Test support for the service, on top of the workspace's shared
//! `larder-test-support` (re-exported here): PostgreSQL tables dropped at the
//! end, a router built from a TOML config exactly as `larder serve` builds
//! it, requests sent with `oneshot` (no socket), and the real binary
//! started as [`Serve`].
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
use tower::ServiceExt as _;

// Everything generic (service URLs, unique names, a redis-server of the
// test's own, the TCP proxy, RESP, waiting) is the workspace's shared test
// support; this module adds what only the service's tests need.
pub use larder_test_support::*;

/// A PostgreSQL connection for setting up tables; drops them at the end.
pub struct Pg {
    pub pool: PgPool,
    tables: Vec<String>,
}

impl Pg {
    pub async fn connect() -> Pg {
        let pool = pg_pool(2).await;
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

    /// The body as text (lossy), for answers whose numbers JSON parsing
    /// would round.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
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

/// The test's own `larder serve` process (the real binary), killed when
/// dropped.
pub struct Serve {
    child: std::process::Child,
    /// The URL it printed in its "listening on" line.
    pub url: String,
}

impl Serve {
    /// Starts `larder serve ARGS` (in `cwd`, if given) and waits, with a
    /// deadline, for its "listening on" line.
    pub fn start(args: &[&str], cwd: Option<&std::path::Path>) -> Serve {
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
                        return Serve {
                            child,
                            url: url.to_owned(),
                        };
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

    /// Starts `larder serve --config FILE` with `config` written to a file
    /// in a fresh temporary directory.
    pub fn with_config(config: &str) -> Serve {
        let dir = temp_dir("larder-serve");
        let path = dir.join("larder.toml");
        std::fs::write(&path, config).expect("config");
        Serve::start(&["--config", path.to_str().expect("utf-8")], None)
    }

    /// Sends a request (a JSON body, if any) and returns the answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> larder_server::client::Response {
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("content-type", "application/json")]
        } else {
            &[]
        };
        larder_server::client::request(
            method,
            &format!("{}{path}", self.url),
            headers,
            body.map(str::as_bytes),
            std::time::Duration::from_secs(10),
        )
        .await
        .expect("request")
    }

    /// `GET path` from a synchronous test (on a runtime of its own).
    pub fn blocking_get(&self, path: &str) -> larder_server::client::Response {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(self.call("GET", path, None))
    }

    /// SIGTERM, then the exit status within a deadline.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        use std::time::{Duration, Instant};
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "larder did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
