//! Where the shared services are (Redis, PostgreSQL, MariaDB), from one
//! environment variable each, and the URL surgery to reach them through a
//! [`TcpProxy`](crate::TcpProxy).

use larder::store::{self, Store};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// URL of the shared Redis: `LARDER_TEST_REDIS_URL`, default
/// `redis://127.0.0.1:6379/0`. The tests and the benches read the same
/// variable. Shared: isolate with a [`unique`](crate::unique) key prefix,
/// and never FLUSHALL, CONFIG SET or SHUTDOWN it.
pub fn redis_url() -> String {
    std::env::var("LARDER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// URL of the shared PostgreSQL: `LARDER_TEST_PG_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`. Shared (100 connections in
/// all): isolate with a [`unique`](crate::unique) schema and keep pools at
/// 2–4 connections.
pub fn pg_url() -> String {
    std::env::var("LARDER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// URL of the shared MariaDB: `LARDER_TEST_MYSQL_URL`, default
/// `mysql://root@127.0.0.1:3306/test`. Shared: isolate with a database of
/// the test's own ([`unique`](crate::unique) name) and keep pools at 2–4
/// connections.
pub fn mysql_url() -> String {
    std::env::var("LARDER_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// The socket address of the shared Redis (from [`redis_url`]), e.g. to put
/// a [`TcpProxy`](crate::TcpProxy) in front of it.
pub fn redis_addr() -> SocketAddr {
    url_addr(&redis_url(), 6379)
}

/// The socket address of the shared PostgreSQL (from [`pg_url`]), the target
/// for a [`TcpProxy`](crate::TcpProxy).
pub fn pg_addr() -> SocketAddr {
    url_addr(&pg_url(), 5432)
}

/// [`pg_url`] with its host and port replaced by `addr`, typically a
/// [`TcpProxy::addr`](crate::TcpProxy::addr), in plain text
/// (`sslmode=disable`): sqlx negotiates TLS when the server offers it, and a
/// proxy that watches the protocol (for `COMMIT`) must be able to read it.
/// User, database and other query parameters are kept.
pub fn pg_url_via(addr: SocketAddr) -> String {
    let url = url_with_addr(&pg_url(), addr);
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=disable")
}

/// `url` with the `host[:port]` of its authority replaced by `addr`
/// (`scheme://[user[:password]@]host[:port][/path][?query]`).
pub fn url_with_addr(url: &str, addr: SocketAddr) -> String {
    let (start, end) = host_span(url);
    format!("{}{}{}", &url[..start], addr, &url[end..])
}

/// Resolves the `host[:port]` of `url` (port `default_port` when absent).
///
/// # Panics
/// If `url` is not a URL or its host does not resolve.
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
///
/// # Panics
/// If PostgreSQL does not answer (`scripts/services.sh` starts it).
pub async fn pg_pool(max: u32) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect(&pg_url())
        .await
        .expect("PostgreSQL at LARDER_TEST_PG_URL (scripts/services.sh starts it)")
}

/// A pool of `max` connections to the shared MariaDB ([`mysql_url`]).
///
/// # Panics
/// If MariaDB does not answer (`scripts/services.sh` starts it).
pub async fn mysql_pool(max: u32) -> sqlx::MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(max)
        .connect(&mysql_url())
        .await
        .expect("MariaDB at LARDER_TEST_MYSQL_URL (scripts/services.sh starts it)")
}

/// A store on the shared Redis ([`redis_url`]), checked with a `PING`.
///
/// # Panics
/// If Redis does not answer (`scripts/services.sh` starts it).
pub async fn redis_store() -> Arc<dyn Store> {
    store::connect_checked(&redis_url())
        .await
        .expect("Redis at LARDER_TEST_REDIS_URL (scripts/services.sh starts it)")
}
