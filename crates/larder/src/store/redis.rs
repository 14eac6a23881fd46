//! The Redis store: one multiplexed connection that reconnects by itself.
//!
//! # Behavior
//! - The connection (a redis-rs `ConnectionManager`) is made on first use
//!   and re-made after a failure; while Redis is unreachable every call
//!   returns [`Error::StoreUnavailable`] within the connect/response timeout.
//! - A hit is one `GET`, a multi-read one `MGET`; leases, fills,
//!   write tickets and invalidations are Lua scripts (EVALSHA, loaded on demand), each over
//!   keys of a single hash slot.
//! - `rediss://` uses rustls with the `ring` provider and the system's
//!   roots, or the CA named by `tls_ca` in the URL (see [`RedisOptions`]);
//!   a server whose certificate the CA did not sign is refused: every call
//!   fails with [`Error::StoreUnavailable`] whose cause names the
//!   certificate problem.

use super::conn::Conn;
use super::replica_wait::Resend;
use super::{
    project_whole, Acquired, Fill, LeaseRequest, Protocol, Store, Subscription, WriteEnd,
    WriteKeys, WriteTicket,
};
use crate::error::{Error, Result};
use crate::key::TextBatch;
use crate::representation::is_hash_key;
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{RedisError, Script, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Connection settings of a [`RedisStore`].
///
/// Set them in the URL's query:
/// `redis://host:6379/0?connect_timeout=2s&response_timeout=1s`, and for
/// `rediss://` a CA of its own and a client certificate (mutual TLS):
/// `rediss://host:6380/0?tls_ca=/etc/larder/ca.pem&tls_cert=client.pem&tls_key=client.key`.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// How long one connection attempt may take. Default: 2 s.
    pub connect_timeout: Duration,
    /// How long one command may wait for its answer. Default: 1 s.
    pub response_timeout: Duration,
    /// `rediss://` only: the PEM file of the CA that signed the server's
    /// certificate, trusted instead of the system's roots. Default: none
    /// (the system's roots).
    pub tls_ca: Option<PathBuf>,
    /// `rediss://` only: the client certificate (PEM) for mutual TLS; needs
    /// [`tls_key`](Self::tls_key). Default: none.
    pub tls_cert: Option<PathBuf>,
    /// `rediss://` only: the client certificate's private key (PEM).
    /// Default: none.
    pub tls_key: Option<PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(1),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

const OPTION_KEYS: [&str; 5] = [
    "connect_timeout",
    "response_timeout",
    "tls_ca",
    "tls_cert",
    "tls_key",
];

impl RedisOptions {
    /// Reads the options from a URL's query; unknown larder options are an error.
    pub fn from_url(url: &str) -> Result<Self> {
        if super::conn::is_cluster_url(url) {
            // A cluster URL's options are read as on its first seed's URL.
            return Self::from_url(&super::conn::parse_cluster_url(url)?.options_url);
        }
        let parsed = parse_url(url)?;
        let mut options = Self::default();
        for (key, value) in parsed.query_pairs() {
            let file = match key.as_ref() {
                "tls_ca" => &mut options.tls_ca,
                "tls_cert" => &mut options.tls_cert,
                "tls_key" => &mut options.tls_key,
                _ => {
                    let slot = match key.as_ref() {
                        "connect_timeout" => &mut options.connect_timeout,
                        "response_timeout" => &mut options.response_timeout,
                        _ => continue,
                    };
                    *slot = humantime::parse_duration(&value).map_err(|e| {
                        Error::Config(format!(
                            "store URL option {key}={value:?}: {e} (use e.g. 500ms or 2s)"
                        ))
                    })?;
                    continue;
                }
            };
            *file = Some(PathBuf::from(value.as_ref()));
        }
        let tls_given =
            options.tls_ca.is_some() || options.tls_cert.is_some() || options.tls_key.is_some();
        if tls_given && parsed.scheme() != "rediss" {
            return Err(Error::Config(format!(
                "store URL {:?}: tls_ca, tls_cert and tls_key need a rediss:// URL",
                super::redact(url)
            )));
        }
        if options.tls_cert.is_some() != options.tls_key.is_some() {
            return Err(Error::Config(format!(
                "store URL {:?}: give tls_cert and tls_key together",
                super::redact(url)
            )));
        }
        Ok(options)
    }

    /// The certificates to hand redis-rs, if any option names one.
    pub(super) fn tls_certificates(&self) -> Result<Option<redis::TlsCertificates>> {
        fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
            std::fs::read(path).map_err(|e| {
                Error::Config(format!(
                    "store URL option {what}: cannot read {}: {e}",
                    path.display()
                ))
            })
        }
        if self.tls_ca.is_none() && self.tls_cert.is_none() {
            return Ok(None);
        }
        let root_cert = self
            .tls_ca
            .as_deref()
            .map(|p| read("tls_ca", p))
            .transpose()?;
        let client_tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read("tls_cert", cert)?,
                client_key: read("tls_key", key)?,
            }),
            _ => None,
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

fn parse_url(url: &str) -> Result<url::Url> {
    url::Url::parse(url)
        .map_err(|e| Error::Config(format!("store URL {:?}: {e}", super::redact(url))))
}

/// A Redis store; a cheap clone over one shared connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    conn: Conn,
    /// For the invalidation subscriber's own pub/sub connection: the one
    /// Redis, or every seed of a cluster (tried in order).
    clients: Vec<redis::Client>,
    options: RedisOptions,
    /// On a Cluster: how write-back acknowledgements wait for replicas.
    replica_wait: Option<super::replica_wait::ReplicaWait>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("name", &self.inner.name)
            .finish()
    }
}

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: value, lease, dirty. ARGV: token, lease ms, if_absent (1/0)
local d = redis.call('HMGET', KEYS[3], 'del', 'val')
if d[1] then
  if d[1] == '1' then return {4} end
  return {4, d[2]}
end
if ARGV[3] == '1' then
  local v = redis.call('GET', KEYS[1])
  if v then return {1, v} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[3] == '1' then return {2} end
  local v = redis.call('GET', KEYS[1])
  if v then return {2, v} end
  return {2}
end
return {3}
",
    )
});

static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: value, lease, dirty, waiter flag. ARGV: token, envelope, ttl ms, fill channel
if redis.call('GET', KEYS[2]) == ARGV[1] then
  local filled = 0
  if redis.call('EXISTS', KEYS[3]) == 0 then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    filled = 1
  end
  redis.call('DEL', KEYS[2])
  if redis.call('DEL', KEYS[4]) == 1 then redis.call('PUBLISH', ARGV[4], KEYS[1]) end
  return filled
end
return 0
",
    )
});

static SET_VOIDING_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: value, lease. ARGV: envelope, ttl ms
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: lease. ARGV: token
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});

static WRITE_BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: lease, write. ARGV: ttl ms
redis.call('DEL', KEYS[1])
if redis.call('HEXISTS', KEYS[2], 'base') == 0 then
  -- New bookkeeping starts at the server's clock in microseconds, above
  -- every sequence an expired one handed out (far fewer than a million
  -- writes of one key per second), and remembers where it started.
  local t = redis.call('TIME')
  local base = t[1] .. string.sub('00000' .. t[2], -6)
  local cur = redis.call('HGET', KEYS[2], 'seq')
  if cur and tonumber(cur) > tonumber(base) then base = cur end
  redis.call('HSET', KEYS[2], 'base', base, 'seq', base)
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local inflight = redis.call('HINCRBY', KEYS[2], 'inflight', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {seq, inflight}
",
    )
});

static WRITE_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: write. ARGV: ttl ms
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
",
    )
});

static WRITE_END: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: value, lease, write. ARGV: ticket, action (set|del|abort), envelope, ttl ms, clean (1/0)
local base = redis.call('HGET', KEYS[3], 'base')
if not base or tonumber(ARGV[1]) <= tonumber(base) then
  -- The bookkeeping this ticket came from expired while the write ran:
  -- nothing is known about the writes since, so the value goes, and a
  -- write that began on new bookkeeping must not set either.
  if ARGV[2] == 'abort' then return 0 end
  if base then redis.call('HINCRBY', KEYS[3], 'seq', 1) end
  redis.call('DEL', KEYS[1], KEYS[2])
  return 0
end
local inflight = redis.call('HINCRBY', KEYS[3], 'inflight', -1)
if inflight < 0 then
  redis.call('HSET', KEYS[3], 'inflight', 0)
  inflight = 0
end
if ARGV[2] == 'abort' then return 0 end
redis.call('DEL', KEYS[2])
local seq = tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')
if ARGV[2] == 'set' and ARGV[5] == '1' and seq == tonumber(ARGV[1]) and inflight == 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return 1
end
redis.call('DEL', KEYS[1])
return 0
",
    )
});

static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: value, lease, write
redis.call('DEL', KEYS[1], KEYS[2])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[3], 'seq', 1) end
return 1
",
    )
});

static RECORD_LAYOUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: meta. ARGV: layout
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
",
    )
});

impl RedisStore {
    /// Creates the store; the connection is made on first use.
    pub fn connect(url: &str, options: RedisOptions) -> Result<Self> {
        // rustls needs a process-wide crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if super::conn::is_cluster_url(url) {
            return Self::connect_cluster(url, options);
        }
        let mut parsed = parse_url(url)?;
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| !OPTION_KEYS.contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let name = super::redact(url);
        let client = match options.tls_certificates()? {
            Some(certs) => redis::Client::build_with_tls(parsed.as_str(), certs),
            None => redis::Client::open(parsed.as_str()),
        }
        .map_err(|e| Error::Config(format!("store URL {name:?}: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| Error::Config(format!("store URL {name:?}: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                conn: Conn::Single(conn),
                clients: vec![client],
                options,
                replica_wait: None,
            }),
        })
    }

    /// A store over a Redis Cluster (`redis+cluster://`, `rediss+cluster://`).
    fn connect_cluster(url: &str, options: RedisOptions) -> Result<Self> {
        let name = super::redact(url);
        let parsed = super::conn::parse_cluster_url(url)?;
        let (conn, clients) = super::conn::cluster(&parsed, &options, &name)?;
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                conn,
                clients,
                replica_wait: Some(super::replica_wait::ReplicaWait::new(
                    options.response_timeout,
                )),
                options,
            }),
        })
    }

    /// Whether the store runs over a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.conn.is_cluster()
    }

    pub(super) fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// One `MGET` of `count` keys of `bytes` bytes together (a `hash`
    /// entity's keys: one `HGETALL` each), the answer in key order. The
    /// command is sized once, so building it copies each key once.
    async fn mget<'k>(
        &self,
        keys: impl Iterator<Item = &'k str> + Clone + Send,
        count: usize,
        bytes: usize,
    ) -> Result<Vec<Option<Bytes>>> {
        let Some(first) = keys.clone().next() else {
            return Ok(Vec::new());
        };
        if is_hash_key(first) {
            return self.hash_get_many(&keys.collect::<Vec<_>>()).await;
        }
        // On Cluster, redis-rs splits a multi-slot MGET into one MGET per
        // slot itself, sends them concurrently and puts the answers back
        // in key order (see `cluster.rs` for why not larder's own split).
        let mut cmd = redis::Cmd::with_capacity(count + 1, bytes + 4);
        cmd.arg("MGET");
        for key in keys {
            cmd.arg(key);
        }
        cmd.query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))
    }

    pub(super) fn name_str(&self) -> &str {
        &self.inner.name
    }

    pub(super) fn error(&self, e: RedisError) -> Error {
        map_error(&self.inner.name, e)
    }

    /// The store's response timeout.
    pub(super) fn response_timeout(&self) -> Duration {
        self.inner.options.response_timeout
    }

    /// On a Cluster, how write-back acknowledgements wait for replicas.
    pub(super) fn replica_wait(&self) -> Option<&super::replica_wait::ReplicaWait> {
        self.inner.replica_wait.as_ref()
    }

    /// A connection of its own to one node of the cluster (`host:port`),
    /// for pipelines that end in `WAIT` (see `replica_wait.rs`).
    pub(super) async fn dedicated_node_connection(
        &self,
        address: &str,
        extra: Duration,
    ) -> Result<redis::aio::MultiplexedConnection> {
        match self
            .inner
            .conn
            .dedicated_node_connection(address, extra)
            .await
        {
            Some(made) => made.map_err(|e| self.error(e)),
            None => Err(self.unavailable(format!(
                "no connection can be made to {address:?}: not a cluster node address"
            ))),
        }
    }

    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))
    }

    /// Runs a pipeline of EVALSHA calls, loading the script once if Redis
    /// does not know it (after a restart or `SCRIPT FLUSH`). On Cluster,
    /// one pipeline per hash slot (of each call's first key), sent
    /// concurrently; answers in `calls` order either way.
    pub(super) async fn pipeline_script(
        &self,
        script: &Script,
        calls: Vec<(Vec<&str>, Vec<&[u8]>)>,
    ) -> Result<Vec<Value>> {
        self.grouped_script(script, &calls).await
    }
}

/// Classifies a redis-rs error: unreachable (connection, I/O, timeout; or a
/// server that cannot answer yet: `LOADING` its dataset after a restart,
/// `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`; or, on Cluster, a `MOVED`/`ASK`
/// the client could not resolve within the response timeout) or refused.
fn map_error(store: &str, e: RedisError) -> Error {
    let unreachable = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(e.retry_method(), redis::RetryMethod::WaitAndRetry)
        // On Cluster: a redirection or a dead node still unresolved after
        // the client's own retries (a slot whose master just died, a
        // topology in flux) is the store not answering, not a refusal.
        || matches!(
            e.retry_method(),
            redis::RetryMethod::MovedRedirect
                | redis::RetryMethod::AskRedirect
                | redis::RetryMethod::RefreshSlotsAndRetry
                | redis::RetryMethod::ReconnectFromInitialConnections
        );
    if unreachable {
        Error::StoreUnavailable {
            store: store.to_owned(),
            cause: Error::cause(e),
        }
    } else {
        Error::Store {
            store: store.to_owned(),
            cause: Error::cause(e),
        }
    }
}

pub(super) fn ms(d: Duration) -> u64 {
    crate::clock::duration_ms(d).max(1)
}

fn parse_acquired(store: &str, value: Value) -> Result<Acquired> {
    let bad = || Error::Store {
        store: store.to_owned(),
        cause: crate::error::Message::cause("unexpected answer from the acquire script"),
    };
    let Value::Array(items) = value else {
        return Err(bad());
    };
    match items.as_slice() {
        [Value::Int(1), Value::BulkString(v)] => Ok(Acquired::Value(Bytes::from(v.clone()))),
        [Value::Int(2)] => Ok(Acquired::Lease { current: None }),
        [Value::Int(2), Value::BulkString(v)] => Ok(Acquired::Lease {
            current: Some(Bytes::from(v.clone())),
        }),
        [Value::Int(3)] => Ok(Acquired::Held),
        [Value::Int(4)] => Ok(Acquired::Dirty(None)),
        [Value::Int(4), Value::BulkString(v)] => Ok(Acquired::Dirty(Some(Bytes::from(v.clone())))),
        _ => Err(bad()),
    }
}

fn parse_flag(store: &str, value: Value) -> Result<bool> {
    match value {
        Value::Int(n) => Ok(n == 1),
        Value::ServerError(e) => Err(map_error(store, RedisError::from(e))),
        _ => Err(Error::Store {
            store: store.to_owned(),
            cause: crate::error::Message::cause("unexpected answer from a script"),
        }),
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        if is_hash_key(key) {
            return self.hash_get(key).await;
        }
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let bytes = keys.iter().map(String::len).sum();
        self.mget(keys.iter().map(String::as_str), keys.len(), bytes)
            .await
    }

    async fn set(
        &self,
        value_key: &str,
        lease_key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        if is_hash_key(value_key) {
            return self.hash_set(value_key, lease_key, value, ttl).await;
        }
        let mut inv = SET_VOIDING_LEASE.prepare_invoke();
        inv.key(value_key).key(lease_key).arg(value).arg(ms(ttl));
        self.run::<i64>(inv).await.map(drop)
    }

    async fn get_fields(&self, key: &str, fields: &[&str]) -> Result<Option<Bytes>> {
        if is_hash_key(key) {
            return self.hash_get_fields(key, fields).await;
        }
        project_whole(self.get(key).await?, fields)
    }

    async fn delete(&self, value_key: &str, lease_key: &str) -> Result<()> {
        redis::cmd("DEL")
            .arg(value_key)
            .arg(lease_key)
            .query_async::<i64>(&mut self.conn())
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    async fn server_info(&self) -> Result<super::ServerInfo> {
        let mut conn = self.conn();
        if self.is_cluster() {
            return self.cluster_server_info().await;
        }
        // The default sections hold memory, stats and clients.
        let text: String = redis::cmd("INFO")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut info = super::ServerInfo::parse_info(&text);
        if info.maxmemory_policy.is_none() {
            // Some managed Redis hide fields of INFO; CONFIG may answer (or be refused).
            let pair: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut conn)
                .await;
            if let Ok([_, policy]) = pair.as_deref() {
                info.maxmemory_policy = Some(policy.clone());
            }
        }
        Ok(info)
    }

    async fn nodes(&self) -> Result<Vec<super::NodeInfo>> {
        self.cluster_nodes().await
    }

    async fn slot_coverage(&self) -> Result<Option<super::SlotCoverage>> {
        self.cluster_slot_coverage().await
    }
}

#[async_trait]
impl Protocol for RedisStore {
    async fn get_values(&self, keys: &TextBatch) -> Result<Vec<Option<Bytes>>> {
        self.mget(keys.iter(), keys.len(), keys.text_len()).await
    }

    async fn acquire(&self, r: &LeaseRequest) -> Result<Acquired> {
        if is_hash_key(&r.value_key) {
            return self.hash_acquire(r).await;
        }
        let mut inv = ACQUIRE.prepare_invoke();
        inv.key(&r.value_key)
            .key(&r.lease_key)
            .key(&r.dirty_key)
            .arg(&r.token)
            .arg(ms(r.ttl))
            .arg(if r.if_absent { "1" } else { "0" });
        let value: Value = self.run(inv).await?;
        parse_acquired(&self.inner.name, value)
    }

    async fn acquire_many(&self, requests: &[LeaseRequest]) -> Result<Vec<Acquired>> {
        if requests.first().is_some_and(|r| is_hash_key(&r.value_key)) {
            return self.hash_acquire_many(requests).await;
        }
        let ttls: Vec<String> = requests.iter().map(|r| ms(r.ttl).to_string()).collect();
        let calls = requests
            .iter()
            .zip(&ttls)
            .map(|(r, ttl)| {
                let flag: &[u8] = if r.if_absent { b"1" } else { b"0" };
                (
                    vec![
                        r.value_key.as_str(),
                        r.lease_key.as_str(),
                        r.dirty_key.as_str(),
                    ],
                    vec![r.token.as_bytes(), ttl.as_bytes(), flag],
                )
            })
            .collect();
        self.pipeline_script(&ACQUIRE, calls)
            .await?
            .into_iter()
            .map(|v| parse_acquired(&self.inner.name, v))
            .collect()
    }

    async fn fill(&self, f: &Fill) -> Result<bool> {
        if is_hash_key(&f.value_key) {
            return self.hash_fill(f).await;
        }
        let mut inv = FILL.prepare_invoke();
        inv.key(&f.value_key)
            .key(&f.lease_key)
            .key(&f.dirty_key)
            .key(&f.waiter_key)
            .arg(&f.token)
            .arg(&f.value)
            .arg(ms(f.ttl))
            .arg(&*f.fill_channel);
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn fill_many(&self, fills: &[Fill]) -> Result<Vec<bool>> {
        if fills.first().is_some_and(|f| is_hash_key(&f.value_key)) {
            return self.hash_fill_many(fills).await;
        }
        let ttls: Vec<String> = fills.iter().map(|f| ms(f.ttl).to_string()).collect();
        let calls = fills
            .iter()
            .zip(&ttls)
            .map(|(f, ttl)| {
                (
                    vec![
                        f.value_key.as_str(),
                        f.lease_key.as_str(),
                        f.dirty_key.as_str(),
                        f.waiter_key.as_str(),
                    ],
                    vec![
                        f.token.as_bytes(),
                        f.value.as_slice(),
                        ttl.as_bytes(),
                        f.fill_channel.as_bytes(),
                    ],
                )
            })
            .collect();
        self.pipeline_script(&FILL, calls)
            .await?
            .into_iter()
            .map(|v| parse_flag(&self.inner.name, v))
            .collect()
    }

    async fn release(&self, lease_key: &str, token: &str) -> Result<()> {
        let mut inv = RELEASE.prepare_invoke();
        inv.key(lease_key).arg(token);
        self.run::<i64>(inv).await.map(drop)
    }

    fn announces_fills(&self) -> bool {
        true
    }

    async fn flag_waiter(&self, r: &LeaseRequest) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&r.waiter_key).arg(1).arg("PX").arg(ms(r.ttl));
        cmd.query_async::<Value>(&mut self.conn())
            .await
            .map_err(|e| self.error(e))?;
        Ok(true)
    }

    async fn write_begin(&self, keys: &WriteKeys, ttl: Duration) -> Result<WriteTicket> {
        let mut inv = WRITE_BEGIN.prepare_invoke();
        inv.key(&keys.lease_key).key(&keys.write_key).arg(ms(ttl));
        let (seq, in_flight): (u64, u64) = self.run(inv).await?;
        Ok(WriteTicket {
            seq,
            clean: in_flight == 1,
        })
    }

    async fn write_renew(&self, keys: &WriteKeys, ttl: Duration) -> Result<()> {
        let mut inv = WRITE_RENEW.prepare_invoke();
        inv.key(&keys.write_key).arg(ms(ttl));
        self.run::<i64>(inv).await.map(drop)
    }

    async fn invalidate(&self, keys: &WriteKeys) -> Result<()> {
        let mut inv = INVALIDATE.prepare_invoke();
        inv.key(&keys.value_key)
            .key(&keys.lease_key)
            .key(&keys.write_key);
        self.run_invalidation::<i64>(&keys.value_key, inv, ("invalidation", Resend::Safe))
            .await
            .map(drop)
    }

    async fn write_end(
        &self,
        keys: &WriteKeys,
        ticket: WriteTicket,
        end: &WriteEnd,
    ) -> Result<bool> {
        if is_hash_key(&keys.value_key) {
            return self.hash_write_end(keys, ticket, end).await;
        }
        let mut inv = WRITE_END.prepare_invoke();
        inv.key(&keys.value_key)
            .key(&keys.lease_key)
            .key(&keys.write_key)
            .arg(ticket.seq);
        match end {
            WriteEnd::Set { value, ttl } => inv.arg("set").arg(value.as_slice()).arg(ms(*ttl)),
            WriteEnd::Delete => inv.arg("del").arg("").arg(0),
            WriteEnd::Abort => inv.arg("abort").arg("").arg(0),
        };
        inv.arg(if ticket.clean { "1" } else { "0" });
        let ended =
            self.run_invalidation::<i64>(&keys.value_key, inv, ("write's end step", Resend::Never));
        Ok(ended.await? == 1)
    }

    fn dirty_log(&self) -> Option<Arc<dyn super::DirtyLog>> {
        Some(Arc::new(self.clone()))
    }

    fn board_log(&self) -> Option<Arc<dyn super::BoardLog>> {
        Some(Arc::new(self.clone()))
    }

    async fn record_layout(&self, meta_key: &str, layout: &str) -> Result<String> {
        let mut inv = RECORD_LAYOUT.prepare_invoke();
        inv.key(meta_key).arg(layout);
        self.run(inv).await
    }

    async fn publish(&self, channel: &str, message: &[u8]) -> Result<()> {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query_async::<i64>(&mut self.conn())
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    async fn subscribe(&self, channel: &str) -> Result<Option<Subscription>> {
        let options = &self.inner.options;
        // A cluster broadcasts every PUBLISH to every node over the cluster
        // bus, so one subscription on any node hears all: the first seed
        // that answers (a lost one ends the stream; the next subscribe
        // tries the seeds again).
        let mut last = None;
        for client in &self.inner.clients {
            match super::pubsub::redis_subscribe(client, channel, options).await {
                Ok(subscription) => return Ok(Some(subscription)),
                Err(e) => last = Some(e),
            }
        }
        Err(self.error(last.unwrap_or_else(|| {
            RedisError::from((redis::ErrorKind::Io, "no node to subscribe on"))
        })))
    }

    async fn generations(&self, key: &str, init: u64) -> Result<Vec<(String, u64)>> {
        let mut inv = GENERATIONS.prepare_invoke();
        inv.key(key).arg(init);
        let flat: Vec<String> = self.run(inv).await?;
        Ok(super::pubsub::pairs(flat))
    }

    async fn bump_generation(
        &self,
        key: &str,
        field: &str,
        init: u64,
        at: Option<(&str, u64)>,
    ) -> Result<u64> {
        let mut inv = BUMP_GENERATION.prepare_invoke();
        inv.key(key).arg(field).arg(init);
        if let Some((at_field, at_ms)) = at {
            inv.arg(at_field).arg(at_ms);
        }
        self.run_invalidation(key, inv, ("generation bump", Resend::Safe))
            .await
    }

    fn collections(&self) -> Option<&dyn super::Collections> {
        Some(self)
    }

    async fn compact_generations(
        &self,
        key: &str,
        compaction: &super::Compaction,
    ) -> Result<super::Compacted> {
        let mut inv = COMPACT_GENERATIONS.prepare_invoke();
        inv.key(key)
            .arg(compaction.now_ms)
            .arg(ms(compaction.idle))
            .arg(
                compaction
                    .dirty_since_ms
                    .map_or(-1, |d| i64::try_from(d).unwrap_or(i64::MAX)),
            );
        let reply: Vec<String> = self.run(inv).await?;
        let mut reply = reply.into_iter();
        let floor = reply
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| Error::Store {
                store: self.name_str().to_owned(),
                cause: crate::error::Message::cause("the compaction script answered no floor"),
            })?;
        let mut removed: Vec<String> = reply.collect();
        removed.sort();
        Ok(super::Compacted { floor, removed })
    }
}

static GENERATIONS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: generations. ARGV: initial seq
redis.call('HSETNX', KEYS[1], 'seq', ARGV[1])
return redis.call('HGETALL', KEYS[1])
",
    )
});

static BUMP_GENERATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: generations. ARGV: field, initial seq[, companion field, its value]
redis.call('HSETNX', KEYS[1], 'seq', ARGV[2])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], ARGV[1], seq)
if ARGV[3] then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
end
return seq
",
    )
});

/// Removes tags idle past the horizon (see `Protocol::compact_generations`).
/// `seq` values stay strings (compared with `tonumber`: they are below
/// 2^53) so that none is reformatted by Lua's number conversion.
static COMPACT_GENERATIONS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: generations. ARGV: now (ms), idle (ms), oldest dirty record (ms; -1: none)
local now = tonumber(ARGV[1])
local idle = tonumber(ARGV[2])
local dirty = tonumber(ARGV[3])
local floor = redis.call('HGET', KEYS[1], 'compacted') or '0'
local flat = redis.call('HGETALL', KEYS[1])
local tags, at = {}, {}
for i = 1, #flat, 2 do
  local kind, name = string.sub(flat[i], 1, 2), string.sub(flat[i], 3)
  if kind == 't:' then
    tags[#tags + 1] = {name, flat[i + 1]}
  elseif kind == 'a:' then
    at[name] = tonumber(flat[i + 1])
  end
end
local removed = {}
for _, tag in ipairs(tags) do
  local name, seq = tag[1], tag[2]
  local when = at[name]
  if when == nil then
    redis.call('HSET', KEYS[1], 'a:' .. name, ARGV[1])
  elseif now - when > idle and (dirty < 0 or dirty > when) then
    redis.call('HDEL', KEYS[1], 't:' .. name, 'a:' .. name)
    if tonumber(seq) > tonumber(floor) then
      floor = seq
    end
    removed[#removed + 1] = name
  end
end
if #removed > 0 then
  redis.call('HSET', KEYS[1], 'compacted', floor)
end
table.insert(removed, 1, floor)
return removed
",
    )
});
