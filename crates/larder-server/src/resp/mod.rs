//! The Redis protocol front end: `[resp] listen = "127.0.0.1:7379"`.
//!
//! Any Redis client (redis-cli, redis-py, redis-rs, ioredis, Jedis) talks
//! to the same engine and entities as HTTP, with keys `<entity>:<id>` (the
//! first `:` separates; the id is canonicalised as over HTTP, so
//! `users:007` is row 7). RESP2, and RESP3 after `HELLO 3`.
//!
//! Existing Redis client code is cache-aside code: it `DEL`s a key after it
//! updated the database and `SET`s a row it just read. So by default `DEL`
//! and `UNLINK` *invalidate* and `SET`/`HSET` are refused; an entity with
//! `resp_writes = true` turns them into writes under its write policy
//! (`SET` = PUT, `HSET` = PATCH, `DEL` = DELETE).
//!
//! - [`parse`]: the request parser (RESP arrays and inline commands);
//! - [`reply`]: replies written into the output buffer;
//! - [`conn`]: one connection: read, parse, answer in order, write;
//! - [`cmd`]: the command table and every command.
//!
//! The listener takes a bound socket and a shutdown future, like
//! [`crate::serve::run`].

pub mod cmd;
pub mod conn;
pub mod parse;
pub mod reply;

use crate::config::{Config, ConfigError};
use crate::serve::AppState;
use metrics::{Counter, Gauge};
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Refuses a non-loopback `[resp] listen` address without a token, unless
/// `auth.allow_open` (the same rule as HTTP's `listen`).
pub fn check_listen(config: &Config, has_token: bool) -> Result<(), ConfigError> {
    let Some(addr) = config.resp_addr()? else {
        return Ok(());
    };
    if !has_token && !config.auth.allow_open && !addr.ip().is_loopback() {
        return Err(config.error(
            "resp.listen",
            format!(
                "${} is not set and {addr} is not a loopback address: set the token, listen on 127.0.0.1, or set allow_open = true",
                config.auth.token_env
            ),
        ));
    }
    Ok(())
}

/// The listener's counters, shared by its connections: commands by name
/// (`larder_resp_commands_total{command}`), connections
/// (`larder_resp_connections`), and the same figures for `/v1/stats` and
/// `INFO`.
#[derive(Debug)]
pub struct Shared {
    /// Per row of [`cmd::TABLE`], then one for unknown commands.
    commands: Vec<AtomicU64>,
    /// The metric handles, resolved once (no registry lookup per command).
    counters: Vec<Counter>,
    connections: AtomicI64,
    connections_total: AtomicU64,
    rejected: AtomicU64,
    gauge: Gauge,
    next_id: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    /// Fresh counters; metric handles come from the global recorder.
    pub fn new() -> Self {
        let names = cmd::TABLE
            .iter()
            .map(|s| s.name)
            .chain(std::iter::once("unknown"));
        let counters = names
            .map(|name| metrics::counter!("larder_resp_commands_total", "command" => name))
            .collect();
        metrics::describe_counter!(
            "larder_resp_commands_total",
            "Commands received over the Redis protocol, by command name."
        );
        metrics::describe_gauge!(
            "larder_resp_connections",
            "Open Redis-protocol connections."
        );
        Self {
            commands: (0..=cmd::TABLE.len()).map(|_| AtomicU64::new(0)).collect(),
            counters,
            connections: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            gauge: metrics::gauge!("larder_resp_connections"),
            next_id: AtomicU64::new(1),
        }
    }

    /// Counts one command of row `index` of [`cmd::TABLE`].
    pub fn count(&self, index: usize) {
        self.commands[index].fetch_add(1, Ordering::Relaxed);
        self.counters[index].increment(1);
    }

    /// Counts `n` commands of row `index` at once.
    pub fn count_n(&self, index: usize, n: u64) {
        self.commands[index].fetch_add(n, Ordering::Relaxed);
        self.counters[index].increment(n);
    }

    /// Counts one unknown command.
    pub fn count_unknown(&self) {
        self.count(cmd::TABLE.len());
    }

    /// A new connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Open connections.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections accepted since start.
    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::Relaxed)
    }

    /// Connections refused at `max_clients`.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Commands run since start, all names together.
    pub fn commands_total(&self) -> u64 {
        self.commands
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// `(name, count)` of every command run at least once.
    pub fn commands(&self) -> Vec<(&'static str, u64)> {
        cmd::TABLE
            .iter()
            .map(|s| s.name)
            .chain(std::iter::once("unknown"))
            .zip(&self.commands)
            .map(|(n, c)| (n, c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }

    fn opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.gauge.increment(1.0);
    }

    fn closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
    }
}

/// The `resp` part of `/v1/stats`: connections and commands by name.
pub fn stats_json(shared: &Shared) -> serde_json::Value {
    let commands: serde_json::Map<String, serde_json::Value> = shared
        .commands()
        .into_iter()
        .map(|(n, c)| (n.to_owned(), serde_json::json!(c)))
        .collect();
    serde_json::json!({
        "connections": shared.connections(),
        "connections_total": shared.connections_total(),
        "rejected": shared.rejected(),
        "commands": commands,
    })
}

/// Serves the Redis protocol on a bound `listener` until `shutdown`
/// resolves; then stops accepting and waits for every connection to
/// finish the command it is running.
///
/// At `max_clients` open connections a new one is answered
/// `-ERR max number of clients reached` and closed, as Redis does.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shared = state.resp().clone();
    let max = state.config().resp.max_clients;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (mut stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait a little, go on.
                tracing::warn!(error = %e, "RESP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        if shared.connections() >= i64::try_from(max).unwrap_or(i64::MAX) {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        }
        shared.opened();
        let (state, shared, stopped) = (state.clone(), shared.clone(), stopped.clone());
        tasks.spawn(async move {
            conn::serve(stream, addr, state, shared.clone(), stopped).await;
            shared.closed();
        });
    }
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Binds `[resp] listen`, if configured.
pub async fn bind(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    use anyhow::Context as _;
    let Some(addr) = config.resp_addr()? else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (resp.listen)"))?;
    Ok(Some(listener))
}

/// The shared counters, created with the service state.
pub fn new_shared() -> Arc<Shared> {
    Arc::new(Shared::new())
}
