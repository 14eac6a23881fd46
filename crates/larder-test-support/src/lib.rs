//! What larder's integration tests and benches share, in one place, so that
//! a helper has one definition and one behaviour in every test binary.
//!
//! - where the shared services are: [`redis_url`], [`pg_url`], [`mysql_url`]
//!   (and the addresses behind them, [`redis_addr`], [`pg_addr`]), with a
//!   store and small pools on them ([`redis_store`], [`pg_pool`],
//!   [`mysql_pool`]);
//! - isolation: [`unique`] names for key prefixes, schemas, databases and
//!   files, and [`temp_dir`] directories (tests share the servers and never
//!   flush them);
//! - a Redis a test may break: [`RedisServer`] spawns its own `redis-server`
//!   on a free port (with AOF if asked), kills and restarts it;
//! - a Redis Cluster: [`RedisCluster`] starts 3 masters + 3 replicas of
//!   its own ([`RedisCluster::shared`]: one per test binary);
//! - a database (or Redis) outage: [`TcpProxy`] forwards a loopback port to a
//!   target and can [`cut`](TcpProxy::cut) and [`restore`](TcpProxy::restore)
//!   the link; [`pg_url_via`] points a PostgreSQL URL at it;
//! - [`resp`]: a few lines of blocking RESP, to poke a Redis without the
//!   `redis` crate or a runtime;
//! - [`eventually`]: wait for a condition with a deadline instead of a sleep;
//! - [`zipf_cdf`] and [`zipf_pick`]: hot keys for workloads;
//! - [`Table`] and [`TableSource`]: an in-memory table behind a cache, with
//!   knobs to count, hold, slow down and fail its loads;
//! - [`accounts`]: the PostgreSQL `accounts` fixture of the write tests;
//! - [`collections`]: the collection tests' source wrappers that count,
//!   slow down or gate loads, and their PostgreSQL schema of a test's own;
//! - [`CountingAllocator`] and [`count_allocations`]: heap allocations per
//!   thread, to prove a hot path allocates nothing.
//!
//! The process and network helpers are blocking std code (threads,
//! `std::process`), so they work from `#[test]` and from `#[tokio::test]`
//! alike, whatever the runtime flavour.
//!
//! Not published: it is a dev-dependency of the workspace's crates only.

pub mod accounts;
mod alloc;
mod child;
mod cluster;
pub mod collections;
mod names;
pub mod profiles;
mod proxy;
mod redis_server;
pub mod resp;
mod services;
mod table;
mod wait;
mod zipf;

pub use alloc::{count_allocations, CountingAllocator};
pub use child::spawn_ready;
pub use cluster::{key_slot, RedisCluster, RedisClusterBuilder};
pub use names::{temp_dir, unique};
pub use proxy::TcpProxy;
pub use redis_server::{RedisServer, RedisServerBuilder};
pub use services::{
    mysql_pool, mysql_url, pg_addr, pg_pool, pg_url, pg_url_via, redis_addr, redis_store,
    redis_url, url_addr, url_with_addr,
};
pub use table::{Keyed, Table, TableSource};
pub use wait::eventually;
pub use zipf::{zipf_cdf, zipf_pick};
