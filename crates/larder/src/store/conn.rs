//! The connection under a [`RedisStore`](super::RedisStore): one standalone
//! Redis, or a Redis Cluster.
//!
//! Why one enum rather than a second store: every script, pipeline and
//! command of the store (and of the store's other files) runs through
//! `redis::aio::ConnectionLike`, which [`Conn`] implements for both, so the
//! protocol is written once. What differs is routing, and the cluster client
//! routes by itself: a script (`EVALSHA`) goes to the master of its first
//! key's slot, `SCRIPT LOAD` to every node, a pipeline to the slot of its
//! first keyed command (redis-rs refuses one whose commands cross slots,
//! which is why the store groups its batches by slot: see
//! [`Conn::slot_groups`]).
//!
//! # What redis-rs' cluster client retries by itself
//! (redis-rs 1.x, `cluster_async`), each within one request:
//! - `MOVED`: refreshes the slot map and resends to the new master;
//!   `ASK`: resends once to the importing node with `ASKING`;
//! - `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`: waits (jittered
//!   exponential back-off) and resends; `READONLY` (a write that reached a
//!   master demoted meanwhile): refreshes the slot map and resends;
//! - a dropped connection or I/O error: reconnects and resends, so a
//!   script may run twice on a master that applied it before the
//!   connection dropped (issue 14, item 4: not yet made idempotent);
//! - up to `retries` attempts (16 by default), all bounded by the *overall*
//!   response timeout, which by default equals the response timeout.
//!
//! larder sets the response timeout (per attempt and overall) to the
//! store's `response_timeout`, the back-off to 5 ms … a quarter of it, so
//! that a `TRYAGAIN` or a failover is retried several times inside the
//! response timeout (redis-rs' own minimum wait, 1.28 s, would exceed the
//! default 1 s at the first retry); past it the request fails with a
//! timeout, or the last `TRYAGAIN`/`CLUSTERDOWN`/`MASTERDOWN`, which the
//! store reports as [`Error::StoreUnavailable`](crate::Error::StoreUnavailable).

use super::RedisOptions;
use crate::error::{Error, Result};
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, ConnectionAddr, Pipeline, RedisFuture, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Attempts the cluster client makes per request (redis-rs' default); the
/// response timeout bounds them all.
const CLUSTER_RETRIES: u32 = 16;

/// The shortest wait before a cluster retry.
const MIN_RETRY_WAIT_MS: u64 = 5;

/// A connection of a [`RedisStore`](super::RedisStore): a cheap clone.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One Redis (or a primary behind a proxy): a multiplexed connection
    /// that reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster: connections to every master, made on first use.
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use: `RedisStore::connect` is
/// synchronous and may run outside a runtime, while redis-rs' cluster
/// connection spawns its tasks when it is made.
pub(crate) struct LazyCluster {
    client: ClusterClient,
    /// The timeouts again: redis-rs' connection config replaces the
    /// builder's per-attempt response timeout (with none, if not given).
    timeouts: (Duration, Duration),
    conn: OnceLock<ClusterConnection>,
    /// The first seed's client: its connection settings (credentials,
    /// TLS) are those of every node, for [`Conn::node_connection`].
    template: redis::Client,
    /// Connections to single nodes (monitoring only), by `host:port`.
    nodes: Mutex<HashMap<String, MultiplexedConnection>>,
}

impl LazyCluster {
    fn get(&self) -> ClusterConnection {
        self.conn
            .get_or_init(|| {
                let (connect, response) = self.timeouts;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response);
                self.client.get_pending_async_connection_with_config(config)
            })
            .clone()
    }
}

impl Conn {
    /// Whether this is a cluster connection (batches must be split by slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// `keys`' positions grouped by hash slot, groups in order of first
    /// appearance; one group with every position on a standalone Redis.
    pub(crate) fn slot_groups<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<Vec<usize>> {
        if !self.is_cluster() {
            return vec![(0..keys.len()).collect()];
        }
        slot_groups(keys)
    }

    /// The cluster connection itself (made now if not yet), for commands
    /// routed explicitly (`INFO` to every node, see `nodes.rs`); `None`
    /// on a standalone Redis.
    pub(crate) fn cluster_connection(&self) -> Option<ClusterConnection> {
        match self {
            Conn::Single(_) => None,
            Conn::Cluster(lazy) => Some(lazy.get()),
        }
    }

    /// A connection to one node of the cluster (`host`, `port`), with the
    /// seeds' credentials and TLS, kept for the next call; `None` on a
    /// standalone Redis. For monitoring (`INFO` of a replica, which
    /// redis-rs' cluster client does not reach: `CLUSTER SLOTS`, its
    /// topology, leaves out replicas that have not synced yet).
    pub(crate) async fn node_connection(
        &self,
        host: &str,
        port: u16,
    ) -> Option<redis::RedisResult<MultiplexedConnection>> {
        let Conn::Cluster(lazy) = self else {
            return None;
        };
        let key = format!("{host}:{port}");
        let kept = lazy
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(conn) = kept {
            return Some(Ok(conn));
        }
        let made = lazy.connect(host, port, lazy.timeouts.1).await;
        if let Ok(conn) = &made {
            lazy.nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, conn.clone());
        }
        Some(made)
    }

    /// A new connection to the node at `address` (`host:port`) of the
    /// cluster, kept by no one but the caller, whose replies may take
    /// `extra` longer than the store's response timeout (a `WAIT`);
    /// `None` on a standalone Redis.
    pub(crate) async fn dedicated_node_connection(
        &self,
        address: &str,
        extra: Duration,
    ) -> Option<redis::RedisResult<MultiplexedConnection>> {
        let Conn::Cluster(lazy) = self else {
            return None;
        };
        let (host, port) = address.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        Some(lazy.connect(host, port, lazy.timeouts.1 + extra).await)
    }

    /// Forgets the kept connection to `host:port` (after it failed).
    pub(crate) fn forget_node_connection(&self, address: &str) {
        if let Conn::Cluster(lazy) = self {
            lazy.nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(address);
        }
    }
}

impl LazyCluster {
    /// A new connection to one node, with the seeds' credentials and TLS.
    async fn connect(
        &self,
        host: &str,
        port: u16,
        response: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let info = self.template.get_connection_info().clone();
        let addr = match info.addr().clone() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeouts.0))
            .set_response_timeout(Some(response));
        redis::Client::open(info.set_addr(addr))?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

/// Positions of `keys` grouped by hash slot (crc16 of the hash tag, as
/// Redis Cluster computes it), groups in order of first appearance.
fn slot_groups<K: AsRef<[u8]>>(keys: &[K]) -> Vec<Vec<usize>> {
    let mut index: HashMap<Slot, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let slot = Slot::for_key(key.as_ref());
        let group = *index.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(i);
    }
    groups
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(lazy) => {
                let mut conn = lazy.get();
                async move { conn.req_packed_command(cmd).await }.boxed()
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(lazy) => {
                let mut conn = lazy.get();
                async move { conn.req_packed_commands(pipeline, offset, count).await }.boxed()
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            // Redis Cluster has database 0 only.
            Conn::Cluster(_) => 0,
        }
    }
}

/// A `redis+cluster://` or `rediss+cluster://` URL taken apart.
#[derive(Debug)]
pub(crate) struct ClusterUrl {
    /// One `redis://` (`rediss://`) URL per seed node, with the credentials
    /// and without larder's options.
    pub(crate) nodes: Vec<String>,
    /// The first seed's URL with the query kept: what
    /// [`RedisOptions::from_url`] reads the options from.
    pub(crate) options_url: String,
}

/// Whether `url`'s scheme is a cluster one.
pub(crate) fn is_cluster_url(url: &str) -> bool {
    url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://")
}

/// A cluster URL with its password (if any) replaced by `***`.
pub(crate) fn redact_cluster(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{hosts}{tail}")
        }
        None => url.to_owned(),
    }
}

/// Splits `redis+cluster://[user:pass@]h:p[,h:p...][/][?query]`.
pub(crate) fn parse_cluster_url(url: &str) -> Result<ClusterUrl> {
    let bad = |why: &str| {
        Error::Config(format!(
            "store URL {:?}: {why} (use redis+cluster://host:port[,host:port...])",
            redact_cluster(url)
        ))
    };
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Err(bad("not a cluster URL"));
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, p),
        None => (before_query, ""),
    };
    if !(path.is_empty() || path == "0") {
        return Err(bad("Redis Cluster has database 0 only"));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{user}{h}"))
        .collect();
    if nodes.is_empty() {
        return Err(bad("no seed node"));
    }
    for node in &nodes {
        url::Url::parse(node)
            .ok()
            .filter(|u| u.host().is_some())
            .ok_or_else(|| bad("a seed is not host:port"))?;
    }
    let options_url = match query {
        Some(q) => format!("{}/?{q}", nodes[0]),
        None => nodes[0].clone(),
    };
    Ok(ClusterUrl { nodes, options_url })
}

/// The cluster connection (lazy) and one plain client per seed (for the
/// invalidation bus' subscription, see `pubsub.rs`).
pub(crate) fn cluster(
    parsed: &ClusterUrl,
    options: &RedisOptions,
    name: &str,
) -> Result<(Conn, Vec<redis::Client>)> {
    let certs = options.tls_certificates()?;
    let config_error = |e: redis::RedisError| Error::Config(format!("store URL {name:?}: {e}"));
    let mut builder = redis::cluster::ClusterClientBuilder::new(parsed.nodes.clone())
        .connection_timeout(options.connect_timeout)
        .response_timeout(options.response_timeout)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(MIN_RETRY_WAIT_MS)
        .max_retry_wait(max_retry_wait_ms(options.response_timeout))
        .retry_wait_formula(10, 2);
    if let Some(certs) = certs.clone() {
        builder = builder.certs(certs);
    }
    let client = builder.build().map_err(config_error)?;
    let seeds = parsed
        .nodes
        .iter()
        .map(|node| match certs.clone() {
            Some(certs) => redis::Client::build_with_tls(node.as_str(), certs),
            None => redis::Client::open(node.as_str()),
        })
        .collect::<redis::RedisResult<Vec<_>>>()
        .map_err(config_error)?;
    let conn = Conn::Cluster(Arc::new(LazyCluster {
        client,
        timeouts: (options.connect_timeout, options.response_timeout),
        conn: OnceLock::new(),
        template: seeds
            .first()
            .cloned()
            .ok_or_else(|| Error::Config(format!("store URL {name:?}: no seed node")))?,
        nodes: Mutex::new(HashMap::new()),
    }));
    Ok((conn, seeds))
}

fn max_retry_wait_ms(response_timeout: Duration) -> u64 {
    (crate::clock::duration_ms(response_timeout) / 4).max(MIN_RETRY_WAIT_MS + 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_split_into_seeds_with_credentials_and_options() {
        let parsed = parse_cluster_url(
            "redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/?response_timeout=2s",
        )
        .expect("valid");
        assert_eq!(
            parsed.nodes,
            vec!["redis://u:p@10.0.0.1:7000", "redis://u:p@10.0.0.2:7001"]
        );
        assert_eq!(
            parsed.options_url,
            "redis://u:p@10.0.0.1:7000/?response_timeout=2s"
        );
        let tls = parse_cluster_url("rediss+cluster://h:1").expect("valid");
        assert_eq!(tls.nodes, vec!["rediss://h:1"]);
        for bad in [
            "redis+cluster://",
            "redis+cluster://h:1/3",
            "redis://h:1",
            "redis+cluster://h:notaport",
        ] {
            assert!(
                matches!(parse_cluster_url(bad), Err(Error::Config(_))),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn cluster_urls_are_redacted() {
        assert_eq!(
            redact_cluster("redis+cluster://u:secret@h:1,h:2/?response_timeout=1s"),
            "redis+cluster://u:***@h:1,h:2/?response_timeout=1s"
        );
        assert_eq!(redact_cluster("redis+cluster://h:1"), "redis+cluster://h:1");
    }

    #[test]
    fn keys_group_by_hash_tag_in_order_of_first_appearance() {
        let keys = ["a:{x}:1", "a:{y}:1", "a:{x}:2", "a:{z}:1", "a:{y}:2"];
        let groups = slot_groups(&keys);
        assert_eq!(groups, vec![vec![0, 2], vec![1, 4], vec![3]]);
    }
}
