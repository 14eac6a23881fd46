//! Write-back on Redis Cluster: a write is durable once every online
//! replica of its master has it.
//!
//! Why: on one Redis, `appendfsync always` makes an acknowledged write
//! survive the server's crash. On a Cluster the crash that matters is a
//! master's: its replica is promoted with whatever it had received, and a
//! write the master fsynced but never replicated is gone. So a write-back
//! acknowledgement (record, patch, increment) and a flusher's claim of a
//! batch (the flush lease's epoch, a counter claim) are sent as one
//! pipeline — the script, then `WAIT <n> <timeout>` — to the slot's master,
//! where `n` is that master's online replicas (at least 1). `WAIT` answers
//! how many replicas acknowledged everything the connection wrote: fewer
//! than `n` (a replica down, a master just promoted with none) is an
//! acknowledged write whose durability is *unconfirmed*, reported as such
//! ([`Confirmation::Unconfirmed`]), never as a failure — the write is
//! visible and will very probably be flushed. As Redis' own documentation
//! says, `WAIT` does not make failover lossless in general: it is lossless
//! under the failure of one node.
//!
//! Why connections of their own: `WAIT` blocks the connection it is sent
//! on until the replicas answer. Sent over the cluster client's shared
//! connection, every hit queued behind it would wait too. So waiting
//! pipelines go over dedicated connections, one pipeline at a time each,
//! kept in a small pool per master; hits never share them.
//!
//! Why larder routes these itself: redis-rs sends a plain `WAIT` to every
//! primary, and only a pipeline's first keyed command picks its node. Here
//! the slot's master comes from `CLUSTER NODES` (kept, and read again after
//! a `MOVED`, a lost connection or once a second while writes flow); an
//! `ASK` is followed once with `ASKING`; `NOSCRIPT` (the script cache is
//! not replicated, so a promoted replica does not know the scripts) loads
//! the script on that node and sends again; `TRYAGAIN`, `CLUSTERDOWN`,
//! `MASTERDOWN` and `LOADING` are retried until the deadline. Each of
//! those answers means the script did not run, so sending again cannot
//! apply it twice. A connection lost after the pipeline was sent is
//! different — the script may have run — and is sent again only for
//! scripts that are harmless twice ([`Resend::Safe`]); an increment is
//! not, and reports the store unavailable instead.

use super::redis::RedisStore;
use crate::error::{Error, Message, Result};
use redis::aio::MultiplexedConnection;
use redis::cluster_routing::Slot;
use redis::{Pipeline, ScriptInvocation, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often the slot map is read again while writes flow.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Dedicated connections kept per master (more are made under load and
/// dropped when returned to a full pool).
const POOL_KEEP: usize = 64;

/// Whether the durability of a waited write was confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirmation {
    /// Every online replica of the master acknowledged the write (or the
    /// store is a single Redis, durable by its own fsync).
    Confirmed,
    /// The write is applied on the master, but fewer replicas than asked
    /// acknowledged it before the timeout (or the master has none).
    Unconfirmed,
}

impl Confirmation {
    /// Whether the write is confirmed durable.
    pub(crate) fn is_confirmed(self) -> bool {
        self == Confirmation::Confirmed
    }
}

/// Whether a script may be sent again when the connection was lost after
/// it was sent (so it may have run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// Running it twice leaves what running it once does.
    Safe,
    /// Running it twice would apply it twice (an increment).
    Never,
}

/// A master of the cluster as the slot map knows it.
#[derive(Debug, Clone)]
struct Master {
    /// `host:port`.
    address: String,
    /// Its online replicas.
    replicas: u32,
}

/// Which master serves each slot.
#[derive(Debug, Default)]
struct SlotMap {
    masters: Vec<Master>,
    by_slot: HashMap<Slot, usize>,
}

impl SlotMap {
    /// The slot map from the text of `CLUSTER NODES`: masters (not failed)
    /// with their slots, and per master its replicas that are neither
    /// failed nor disconnected.
    fn parse(text: &str) -> SlotMap {
        let mut map = SlotMap::default();
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 8)
            .collect();
        let failed = |flags: &str| flags.split(',').any(|f| f == "fail" || f == "fail?");
        for f in &lines {
            let flags = f[2];
            if !flags.split(',').any(|x| x == "master") || failed(flags) {
                continue;
            }
            let Some(address) = f[1].split(['@', ',']).next() else {
                continue;
            };
            ids.insert(f[0], map.masters.len());
            map.masters.push(Master {
                address: address.to_owned(),
                replicas: 0,
            });
            let at = map.masters.len() - 1;
            for range in &f[8..] {
                if range.starts_with('[') {
                    continue; // a slot being migrated or imported
                }
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) else {
                    continue;
                };
                for n in lo..=hi {
                    if let Some(slot) = Slot::new(n) {
                        map.by_slot.insert(slot, at);
                    }
                }
            }
        }
        for f in &lines {
            let replica = f[2].split(',').any(|x| x == "slave");
            if replica && !failed(f[2]) && f[7] == "connected" {
                if let Some(&at) = ids.get(f[3]) {
                    map.masters[at].replicas += 1;
                }
            }
        }
        map
    }

    fn master_of(&self, slot: Slot) -> Option<&Master> {
        self.by_slot.get(&slot).map(|&i| &self.masters[i])
    }
}

/// Waiting for replicas on a Redis Cluster: the slot map and the pools of
/// dedicated connections (see the module docs).
pub(crate) struct ReplicaWait {
    map: RwLock<(Arc<SlotMap>, Option<Instant>)>,
    refresh: tokio::sync::Mutex<()>,
    pools: Mutex<HashMap<String, Vec<MultiplexedConnection>>>,
    /// `WAIT`'s timeout.
    timeout: Duration,
}

impl std::fmt::Debug for ReplicaWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaWait")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What one attempt of a waited pipeline came to.
enum Attempt<T> {
    Done(T, Confirmation),
    /// Send again (to `ask`'s node with `ASKING` when given).
    Again {
        ask: Option<String>,
    },
}

impl ReplicaWait {
    /// Waits up to `timeout` for replicas per write.
    pub(crate) fn new(timeout: Duration) -> Self {
        ReplicaWait {
            map: RwLock::new((Arc::new(SlotMap::default()), None)),
            refresh: tokio::sync::Mutex::new(()),
            pools: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn current(&self) -> (Arc<SlotMap>, Option<Instant>) {
        let held = self.map.read().unwrap_or_else(|p| p.into_inner());
        (held.0.clone(), held.1)
    }

    /// Reads `CLUSTER NODES` again unless another caller just did.
    async fn refresh(&self, store: &RedisStore, since: Option<Instant>) -> Result<()> {
        let _one = self.refresh.lock().await;
        if self.current().1 != since {
            return Ok(()); // refreshed while this caller waited
        }
        // Asked of a master the map knows, over a connection of its own: a
        // replica (one redis-rs' random routing may pick) can be the node
        // that is stuck, and a request stuck in the cluster client holds
        // up its other callers.
        let known: Vec<String> = self
            .current()
            .0
            .masters
            .iter()
            .map(|m| m.address.clone())
            .collect();
        let mut text = None;
        for address in &known {
            if let Ok(answer) = store.node_cluster_nodes_text(address).await {
                text = Some(answer);
                break;
            }
        }
        let text = match text {
            Some(text) => text,
            None => store.cluster_nodes_text().await?,
        };
        let map = SlotMap::parse(&text);
        *self.map.write().unwrap_or_else(|p| p.into_inner()) =
            (Arc::new(map), Some(Instant::now()));
        Ok(())
    }

    /// The online replicas of every master, by address (for the start-up
    /// check), read afresh.
    pub(crate) async fn replicas_by_master(
        &self,
        store: &RedisStore,
    ) -> Result<Vec<(String, u32)>> {
        let since = self.current().1;
        self.refresh(store, since).await?;
        Ok(self
            .current()
            .0
            .masters
            .iter()
            .map(|m| (m.address.clone(), m.replicas))
            .collect())
    }

    fn take(&self, address: &str) -> Option<MultiplexedConnection> {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(address)
            .and_then(Vec::pop)
    }

    fn give_back(&self, address: &str, conn: MultiplexedConnection) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.entry(address.to_owned()).or_default();
        if pool.len() < POOL_KEEP {
            pool.push(conn);
        }
    }

    fn forget(&self, address: &str) {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(address);
    }

    /// Runs `invocation` (whose first key is `first_key`) on the master of
    /// that key's slot, followed by `WAIT` for the master's online
    /// replicas; the script's answer and whether its durability was
    /// confirmed. Retries what proves the script did not run until the
    /// deadline (twice the store's response timeout).
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        store: &RedisStore,
        first_key: &str,
        invocation: &ScriptInvocation<'_>,
        resend: Resend,
    ) -> Result<(T, Confirmation)> {
        let slot = Slot::for_key(first_key.as_bytes());
        let deadline = Instant::now() + store.response_timeout() * 2;
        let mut ask: Option<String> = None;
        let mut pause = Duration::from_millis(5);
        let mut last: Option<Error> = None;
        loop {
            let (mut map, mut at) = self.current();
            if at.is_none_or(|at| at.elapsed() > REFRESH_EVERY) {
                if let Err(e) = self.refresh(store, at).await {
                    last = Some(e);
                }
                (map, at) = self.current();
            }
            let target = match (ask.take(), map.master_of(slot)) {
                (Some(node), _) => Some((node, 1, true)),
                (None, Some(m)) => Some((m.address.clone(), m.replicas, false)),
                (None, None) => None,
            };
            let outcome = match target {
                None => {
                    last = Some(store.unavailable(format!(
                        "no master serves the slot of {first_key:?} in the cluster's slot map"
                    )));
                    Attempt::Again { ask: None }
                }
                Some((address, replicas, asking)) => {
                    match self
                        .attempt(store, &address, replicas, asking, invocation)
                        .await
                    {
                        Ok(outcome) => outcome,
                        // The script may have run: sent again only if harmless twice.
                        Err(e) if e.is_store_unavailable() && resend == Resend::Safe => {
                            last = Some(e);
                            Attempt::Again { ask: None }
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            match outcome {
                Attempt::Done(answer, confirmation) => return Ok((answer, confirmation)),
                // Topology in flux: the map is read again before the next try.
                Attempt::Again { ask: None } => {
                    let _ = self.refresh(store, at).await;
                }
                Attempt::Again { ask: next } => ask = next,
            }
            if Instant::now() + pause > deadline {
                return Err(last.unwrap_or_else(|| {
                    store.unavailable(format!(
                        "the slot of {first_key:?} did not settle on a master before the deadline"
                    ))
                }));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn attempt<T: redis::FromRedisValue>(
        &self,
        store: &RedisStore,
        address: &str,
        replicas: u32,
        asking: bool,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<Attempt<T>> {
        let mut conn = match self.take(address) {
            Some(conn) => conn,
            None => {
                store
                    .dedicated_node_connection(address, self.timeout)
                    .await?
            }
        };
        let build = || {
            let mut pipe = Pipeline::new();
            pipe.ignore_errors();
            if asking {
                pipe.cmd("ASKING");
            }
            pipe.invoke_script(invocation);
            if replicas > 0 {
                pipe.cmd("WAIT")
                    .arg(replicas)
                    .arg(crate::clock::duration_ms(self.timeout).max(1));
            }
            pipe
        };
        let mut answers: Vec<Value> = match build().query_async(&mut conn).await {
            Ok(answers) => answers,
            Err(e) => {
                // The script may have run: the caller decides (`Resend`).
                self.forget(address);
                return Err(store.error(e));
            }
        };
        if asking && !answers.is_empty() {
            answers.remove(0);
        }
        let mut answers = answers.into_iter();
        let (Some(script), waited) = (answers.next(), answers.next()) else {
            self.give_back(address, conn);
            return Err(store.bad_answer("a waited pipeline answered too few replies"));
        };
        if let Value::ServerError(err) = &script {
            let code = err.code().to_owned();
            let details = err.details().unwrap_or_default().to_owned();
            match code.as_str() {
                "NOSCRIPT" => {
                    let loaded = invocation.load_async(&mut conn).await;
                    self.give_back(address, conn);
                    loaded.map_err(|e| store.error(e))?;
                    return Ok(Attempt::Again {
                        ask: asking.then(|| address.to_owned()),
                    });
                }
                "MOVED" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "LOADING" => {
                    self.give_back(address, conn);
                    return Ok(Attempt::Again { ask: None });
                }
                "ASK" => {
                    self.give_back(address, conn);
                    let node = details.split_whitespace().nth(1).map(str::to_owned);
                    return Ok(Attempt::Again { ask: node });
                }
                _ => {
                    self.give_back(address, conn);
                    return Err(store.bad_answer_owned(format!("{code} {details}")));
                }
            }
        }
        self.give_back(address, conn);
        let answer = redis::from_redis_value::<T>(script)
            .map_err(|e| store.bad_answer_owned(format!("a waited script answered {e}")))?;
        let confirmation = match waited {
            Some(Value::Int(acked)) if replicas > 0 && acked >= i64::from(replicas) => {
                Confirmation::Confirmed
            }
            _ => Confirmation::Unconfirmed,
        };
        Ok(Attempt::Done(answer, confirmation))
    }
}

impl RedisStore {
    /// Runs a write-back script whose acknowledgement must be durable:
    /// on a single Redis as it is (durable by `appendfsync always`,
    /// checked at start), on a Cluster on the slot's master followed by
    /// `WAIT` for its replicas (see the module docs).
    pub(super) async fn run_waited<T: redis::FromRedisValue>(
        &self,
        first_key: &str,
        invocation: redis::ScriptInvocation<'_>,
        resend: Resend,
    ) -> Result<(T, Confirmation)> {
        match self.replica_wait() {
            Some(wait) => wait.run(self, first_key, &invocation, resend).await,
            None => Ok((self.run(invocation).await?, Confirmation::Confirmed)),
        }
    }

    /// Write-back's start-up check on a Cluster: every node's settings
    /// (over a connection of its own: a replica's too, which redis-rs'
    /// cluster client does not reach) and every master's online replicas.
    /// The first node that falls short is the one reported; a node that
    /// does not answer counts as unknown (not durable).
    pub(super) async fn cluster_durability(&self) -> Result<super::Durability> {
        let text = self.cluster_nodes_text().await?;
        let nodes = super::NodeInfo::parse_cluster_nodes(&text);
        let conn = self.conn();
        let mut worst: Option<super::Durability> = None;
        for node in &nodes {
            let Some((host, port)) = node.address.rsplit_once(':') else {
                continue;
            };
            let port: u16 = port.parse().unwrap_or_default();
            let facts = match conn.node_connection(host, port).await {
                Some(Ok(mut one)) => self.config_durability(&mut one).await?,
                _ => super::Durability::default(),
            };
            let facts = super::Durability {
                node: Some(node.address.clone()),
                ..facts
            };
            if worst
                .as_ref()
                .is_none_or(|w| shortfall(&facts) > shortfall(w))
            {
                worst = Some(facts);
            }
        }
        let mut out = worst.unwrap_or_default();
        if let Some(wait) = self.replica_wait() {
            out.masters_without_replicas = wait
                .replicas_by_master(self)
                .await?
                .into_iter()
                .filter(|(_, replicas)| *replicas == 0)
                .map(|(address, _)| address)
                .collect();
        }
        Ok(out)
    }

    /// Runs a step that takes a value out of service (an invalidation, a
    /// write's end step, a generation bump for a tag or a purge): on a
    /// Cluster it waits for the master's replicas like a write-back
    /// acknowledgement, so a failover right after it cannot bring the old
    /// value back. A shortfall is logged (the step is applied on the
    /// master; only its survival of that master's failover is unconfirmed).
    pub(super) async fn run_invalidation<T: redis::FromRedisValue>(
        &self,
        first_key: &str,
        invocation: ScriptInvocation<'_>,
        (what, resend): (&str, Resend),
    ) -> Result<T> {
        let (answer, confirmation) = self.run_waited(first_key, invocation, resend).await?;
        if confirmation == Confirmation::Unconfirmed {
            tracing::warn!(
                store = self.name_str(),
                key = first_key,
                "a {what} was not confirmed by the master's replicas (WAIT); a failover of that master now could serve the old value until its TTL"
            );
        }
        Ok(answer)
    }

    /// `CLUSTER NODES` of the node at `address`, over the monitoring
    /// connection kept for it.
    async fn node_cluster_nodes_text(&self, address: &str) -> Result<String> {
        let conn = self.conn();
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| self.unavailable(format!("{address:?} is not host:port")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| self.unavailable(format!("{address:?} is not host:port")))?;
        let mut one = match conn.node_connection(host, port).await {
            Some(made) => made.map_err(|e| self.error(e))?,
            None => return Err(self.unavailable("not a cluster".into())),
        };
        let answer = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut one)
            .await;
        answer.map_err(|e| {
            conn.forget_node_connection(address);
            self.error(e)
        })
    }

    /// A flusher's step that must be durable before its database
    /// transaction (a claim of a batch): an unconfirmed one stops this
    /// flush (it is tried again).
    pub(super) fn confirmed_or_wait(&self, confirmation: Confirmation, what: &str) -> Result<()> {
        match confirmation {
            Confirmation::Confirmed => Ok(()),
            Confirmation::Unconfirmed => Err(self.unavailable(format!(
                "the {what} was not confirmed by the master's replicas (WAIT); the flush waits"
            ))),
        }
    }

    /// Runs a flusher's claim (harmless twice: a second run answers the
    /// record the first made), waited for the replicas on a Cluster and
    /// refused unless confirmed (see [`confirmed_or_wait`](Self::confirmed_or_wait)).
    pub(super) async fn run_confirmed<T: redis::FromRedisValue>(
        &self,
        first_key: &str,
        invocation: ScriptInvocation<'_>,
        what: &str,
    ) -> Result<T> {
        let (answer, confirmation) = self.run_waited(first_key, invocation, Resend::Safe).await?;
        self.confirmed_or_wait(confirmation, what)?;
        Ok(answer)
    }

    pub(super) fn unavailable(&self, why: String) -> Error {
        Error::StoreUnavailable {
            store: self.name_str().to_owned(),
            cause: Message::cause(why),
        }
    }

    pub(super) fn bad_answer_owned(&self, what: String) -> Error {
        Error::Store {
            store: self.name_str().to_owned(),
            cause: Message::cause(what),
        }
    }
}

/// How far a node's settings fall short: 2, its eviction policy may evict
/// dirty records; 1, it may lose acknowledged writes in a crash (or would
/// not say); 0, durable.
fn shortfall(facts: &super::Durability) -> u8 {
    if facts
        .maxmemory_policy
        .as_deref()
        .is_some_and(|p| p.starts_with("allkeys-"))
    {
        2
    } else if facts.appendonly.as_deref() == Some("yes")
        && facts.appendfsync.as_deref() == Some("always")
    {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [10923->-a3]
a3 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383
b1 127.0.0.1:7003@17003 slave a1 0 0 1 connected
b2 127.0.0.1:7004@17004 slave,fail a2 0 0 2 connected
b3 127.0.0.1:7005@17005 slave a2 0 0 2 disconnected
";

    #[test]
    fn the_slot_map_counts_only_online_replicas_and_skips_failed_masters() {
        let map = SlotMap::parse(NODES);
        let of = |n: u16| map.master_of(Slot::new(n).expect("slot"));
        let first = of(0).expect("slot 0");
        assert_eq!(
            (first.address.as_str(), first.replicas),
            ("127.0.0.1:7000", 1)
        );
        let second = of(10922).expect("slot 10922");
        assert_eq!(
            (second.address.as_str(), second.replicas),
            ("127.0.0.1:7001", 0)
        );
        assert!(of(10923).is_none(), "a failed master serves nothing");
        assert_eq!(map.masters.len(), 2);
    }

    /// Fencing survives a failover (issue 14, item 7): a flusher's epoch is
    /// handed out only once its master's replica holds it. With the replica
    /// stopped (SIGSTOP) a claim of the flush lease is refused; resumed, the
    /// same flusher's claim is confirmed; its master is SIGKILLed, the replica
    /// promoted, and once the killed node is back as its replica a new
    /// flusher's epoch on the promoted master is higher than the stalled one's
    /// — so the database fence refuses the stalled flusher (as
    /// `tests/write_back.rs` shows on standalone Redis). Without the wait, the
    /// promoted master would hand out the stalled flusher's epoch again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_epoch_survives_the_failover_so_a_stalled_flusher_stays_fenced() {
        use crate::store::{connect_checked, ShardKeys};
        use larder_test_support::{eventually, key_slot as slot_of, unique, RedisCluster};
        use std::time::Duration;

        let mut cluster = RedisCluster::builder().node_timeout_ms(1000).start();
        let url = format!(
            "{}/?response_timeout=1s&connect_timeout=300ms",
            cluster.url()
        );
        let store = connect_checked(&url).await.expect("store");
        let log = store.dirty_log().expect("a write-back log");
        let head = format!("{}:{{fence:0}}:", unique("cl_fence"));
        let shard = ShardKeys {
            shard: 0,
            queue_key: format!("{head}q"),
            lease_key: format!("{head}f"),
            epoch_key: format!("{head}e"),
            dead_key: format!("{head}x"),
            dead_value_key: format!("{head}xv"),
            dirty_prefix: format!("{head}d:"),
        };
        let lease = Duration::from_millis(300);
        let victim = cluster.master_of_slot(slot_of("{fence:0}"));
        let replica = cluster.replica_of(victim).expect("the victim's replica");

        cluster.nodes()[replica].pause();
        let unconfirmed = log.claim(&shard, "stalled", lease).await;
        cluster.nodes()[replica].resume();
        assert!(
            unconfirmed.is_err(),
            "an epoch was handed out that its master's replica did not hold: {unconfirmed:?}"
        );
        // Resumed: once the master counts its replica online again, the
        // same flusher's claim (its next round) is confirmed.
        let stalled = claimed(&*log, &shard, "stalled", lease).await;

        cluster.node_mut(victim).kill();
        eventually("the replica takes over", || async {
            cluster.master_of_slot(slot_of("{fence:0}")) == replica && cluster.is_master(replica)
        })
        .await;
        // Back as the promoted master's replica: its claims can be confirmed.
        cluster.node_mut(victim).restart();
        let newer = claimed(&*log, &shard, "newer", lease).await;
        assert!(
            newer > stalled,
            "the new flusher's epoch {newer} is not above the stalled one's {stalled}"
        );
    }

    /// The epoch of `token`'s claim of `shard`'s flush lease, claimed every
    /// 50 ms (a flusher's next rounds) until it is taken and confirmed.
    async fn claimed(
        log: &dyn crate::store::DirtyLog,
        shard: &crate::store::ShardKeys,
        token: &str,
        lease: std::time::Duration,
    ) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match log.claim(shard, token, lease).await {
                Ok(Some(epoch)) => return epoch,
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "{token} never took the lease: {other:?}"
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
