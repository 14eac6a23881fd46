//! Shared helpers for larder's integration tests. Include with `mod support;`.
//!
//! - where the shared services are: [`redis_url`], [`pg_url`], [`mysql_url`] (and the
//!   addresses behind them, [`redis_addr`], [`pg_addr`]);
//! - isolation: [`unique`] names for key prefixes and PostgreSQL schemas
//!   (tests share the servers and never flush them);
//! - a Redis a test may break: [`RedisServer`] spawns its own `redis-server`
//!   on a free port (with AOF if asked), kills and restarts it;
//! - a database (or Redis) outage: [`TcpProxy`] forwards a loopback port to a
//!   target and can [`cut`](TcpProxy::cut) and [`restore`](TcpProxy::restore)
//!   the link; [`pg_url_via`] points a PostgreSQL URL at it;
//! - [`resp`]: a few lines of blocking RESP, to poke a Redis without the
//!   `redis` crate or a runtime.
//!
//! Everything here is blocking std code (threads, `std::process`), so it
//! works from `#[test]` and from `#[tokio::test]` alike, whatever the runtime
//! flavour. No sqlx or redis types: the helpers hand out names and URLs and
//! each test builds its own clients.

// Each test binary uses a subset of these helpers, and `pub` items of a
// private module are "unreachable" from outside the test crate by design.
#![allow(dead_code, unreachable_pub)]

#[allow(dead_code)]
pub mod accounts;
mod proxy;
mod redis_server;
pub mod resp;
#[allow(dead_code)]
pub mod wait;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

// Re-exports are "unused" in the test binaries that do not need them.
#[allow(unused_imports)]
pub use proxy::TcpProxy;
#[allow(unused_imports)]
pub use redis_server::{RedisServer, RedisServerBuilder};

/// URL of the shared Redis: `LARDER_TEST_REDIS_URL`, default
/// `redis://127.0.0.1:6379/0`. Shared: isolate with a [`unique`] key prefix,
/// and never FLUSHALL, CONFIG SET or SHUTDOWN it.
pub fn redis_url() -> String {
    std::env::var("LARDER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// URL of the shared PostgreSQL: `LARDER_TEST_PG_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`. Shared (100 connections in
/// all): isolate with a [`unique`] schema and keep pools at 2–4 connections.
pub fn pg_url() -> String {
    std::env::var("LARDER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// URL of the shared MariaDB: `LARDER_TEST_MYSQL_URL`, default
/// `mysql://root@127.0.0.1:3306/test`. Shared: isolate with a database of
/// the test's own ([`unique`] name) and keep pools at 2–4 connections.
pub fn mysql_url() -> String {
    std::env::var("LARDER_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// The socket address of the shared Redis (from [`redis_url`]), e.g. to put
/// a [`TcpProxy`] in front of it.
pub fn redis_addr() -> SocketAddr {
    url_addr(&redis_url(), 6379)
}

/// The socket address of the shared PostgreSQL (from [`pg_url`]), the target
/// for a [`TcpProxy`].
pub fn pg_addr() -> SocketAddr {
    url_addr(&pg_url(), 5432)
}

/// [`pg_url`] with its host and port replaced by `addr`, typically a
/// [`TcpProxy::addr`]: user, database and query parameters are kept.
pub fn pg_url_via(addr: SocketAddr) -> String {
    url_with_addr(&pg_url(), addr)
}

/// `url` with the `host[:port]` of its authority replaced by `addr`
/// (`scheme://[user[:password]@]host[:port][/path][?query]`).
pub fn url_with_addr(url: &str, addr: SocketAddr) -> String {
    let (start, end) = host_span(url);
    format!("{}{}{}", &url[..start], addr, &url[end..])
}

/// Resolves the `host[:port]` of `url` (port `default_port` when absent).
pub fn url_addr(url: &str, default_port: u16) -> SocketAddr {
    let (start, end) = host_span(url);
    let host_port = &url[start..end];
    let has_port = match host_port.rfind(']') {
        // `[::1]:5432` or `[::1]`
        Some(bracket) => host_port[bracket..].contains(':'),
        None => host_port.contains(':'),
    };
    let target = if has_port {
        host_port.to_string()
    } else {
        format!("{host_port}:{default_port}")
    };
    target
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("cannot resolve {target:?} (from {url:?}): {e}"))
        .next()
        .unwrap_or_else(|| panic!("{target:?} (from {url:?}) resolves to no address"))
}

/// Byte range of `host[:port]` in `url`.
fn host_span(url: &str) -> (usize, usize) {
    let after_scheme = url
        .find("://")
        .map(|i| i + 3)
        .unwrap_or_else(|| panic!("not a URL: {url:?}"));
    let rest = &url[after_scheme..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    (after_scheme + host_start, after_scheme + authority_len)
}

/// A pool of `max` connections to the shared PostgreSQL ([`pg_url`]).
#[allow(dead_code)]
pub async fn pg_pool(max: u32) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect(&pg_url())
        .await
        .expect("connect to the shared PostgreSQL")
}

/// A name no other test (in this process or another) is using: `prefix`
/// lowercased with anything outside `[a-z0-9_]` turned into `_`, then the
/// process id, a per-process counter and a few bits of the clock, e.g.
/// `write_back_4711_3_k2x9`. Valid as a Redis key prefix, an entity name and
/// an unquoted PostgreSQL identifier (starts with a letter, at most 63 bytes).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());

    let mut name: String = prefix
        .chars()
        .take(32)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert(0, 't');
    }
    format!(
        "{name}_{}_{}_{}",
        std::process::id(),
        n,
        base36(u64::from(nanos) % 36u64.pow(4))
    )
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}
