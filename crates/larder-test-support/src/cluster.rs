//! A Redis Cluster of the test's own: 3 masters + 3 replicas on free
//! loopback ports, each a [`RedisServer`] with `--cluster-enabled yes`,
//! `appendonly yes` and `appendfsync always` (what larder calls durable).
//!
//! Why two flavours: on 2 loaded cores with `appendfsync always`, six nodes
//! per test and short node timeouts cause spurious failovers and minutes of
//! start-up. [`RedisCluster::shared`] is one cluster per test binary (node
//! timeout 5 s) for the suites that do not break it; [`RedisCluster::start`]
//! gives a private one for tests that kill nodes or reshard.
//!
//! The shared cluster lives in a `static`, which Rust never drops, so a
//! small watchdog shell (`sh`) polls the test process and kills the nodes
//! and removes their dirs when it is gone.

use crate::redis_server::RedisServer;
use crate::resp::{self, Reply};
use larder::store::Store;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// How long the cluster may take to agree (`cluster_state:ok` everywhere,
/// replicas in sync) after `redis-cli --cluster create`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of a [`RedisCluster`]; see [`RedisCluster::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisClusterBuilder {
    masters: usize,
    replicas: usize,
    node_timeout_ms: u64,
    appendfsync_always: bool,
}

impl Default for RedisClusterBuilder {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas: 1,
            node_timeout_ms: 5000,
            appendfsync_always: true,
        }
    }
}

impl RedisClusterBuilder {
    /// How many masters (at least 3, Redis' minimum). Default: 3.
    pub fn masters(mut self, n: usize) -> Self {
        self.masters = n.max(3);
        self
    }

    /// Replicas per master (0: a cluster without replicas). Default: 1.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// `cluster-node-timeout` in ms: how long a master may be silent before
    /// its replica takes over. Default: 5000.
    pub fn node_timeout_ms(mut self, ms: u64) -> Self {
        self.node_timeout_ms = ms;
        self
    }

    /// `appendfsync always` on every node. Default: on.
    pub fn appendfsync_always(mut self, on: bool) -> Self {
        self.appendfsync_always = on;
        self
    }

    /// Starts the nodes, joins them with `redis-cli --cluster create`, and
    /// waits until every node says `cluster_state:ok`, knows every node,
    /// and every replica is in sync with its master.
    ///
    /// # Panics
    /// If a node does not start, `redis-cli` fails, or the cluster is not
    /// ready within 60 s; the message holds `redis-cli`'s output and the
    /// nodes' logs.
    pub fn start(self) -> RedisCluster {
        let count = self.masters * (1 + self.replicas);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::builder()
                    .appendonly(true)
                    .appendfsync_always(self.appendfsync_always)
                    .arg("--cluster-enabled yes")
                    .arg(&format!("--cluster-node-timeout {}", self.node_timeout_ms))
                    // Nodes' files live in each node's own dir (--dir).
                    .arg("--cluster-config-file nodes.conf")
                    .start()
            })
            .collect();
        let cluster = RedisCluster { nodes };
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(cluster.nodes.iter().map(|n| n.addr().to_string()));
        args.extend([
            "--cluster-replicas".into(),
            self.replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new(redis_cli_bin())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); is Redis installed?"));
        if !out.status.success() {
            panic!(
                "redis-cli --cluster create failed ({}):\n{}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                cluster.logs()
            );
        }
        if let Err(why) = cluster.wait_ready(READY_TIMEOUT) {
            panic!(
                "cluster not ready: {why}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                cluster.logs()
            );
        }
        cluster
    }
}

/// A Redis Cluster of the test's own; dropping it kills every node and
/// removes their dirs (each node, a [`RedisServer`], prints its log first
/// if the test is panicking).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Options: masters, replicas, node timeout, fsync.
    pub fn builder() -> RedisClusterBuilder {
        RedisClusterBuilder::default()
    }

    /// A private cluster of 3 masters + 3 replicas, node timeout 5 s.
    pub fn start() -> RedisCluster {
        Self::builder().start()
    }

    /// One cluster per test binary (3 + 3, node timeout 5 s), started on
    /// first use; for tests that do not break it (use unique key
    /// prefixes). Its nodes are killed by a watchdog when the test
    /// process exits.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = RedisCluster::start();
            cluster.watchdog();
            cluster
        })
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...` over every node.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| n.addr().to_string()).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// A larder store on this cluster (every node a seed), checked to answer.
    ///
    /// # Panics
    /// If the cluster does not answer.
    pub async fn store(&self) -> Arc<dyn Store> {
        larder::store::connect_checked(&self.url())
            .await
            .expect("a store on the test cluster")
    }

    /// `redis+cluster://` naming one node only (topology is discovered
    /// from it).
    pub fn url_of_node(&self, index: usize) -> String {
        format!("redis+cluster://{}", self.nodes[index].addr())
    }

    /// The nodes, in creation order: with `--cluster-replicas 1`,
    /// `redis-cli` makes the first third masters, but roles change on
    /// failover: ask [`is_master`](Self::is_master).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A node, to kill or restart (see [`RedisServer::kill`]).
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// Whether node `index` is a master now (`ROLE`).
    pub fn is_master(&self, index: usize) -> bool {
        info(&self.nodes[index], "replication").contains("role:master")
    }

    /// Moves hash slot `slot` from its master to node `to` (a master) as
    /// `redis-cli --cluster reshard` does, key batch by key batch, while
    /// clients keep running: `IMPORTING`/`MIGRATING`, `MIGRATE` of the
    /// slot's keys 100 at a time (clients meanwhile get `ASK` and
    /// `TRYAGAIN`), then `SETSLOT … NODE` on every master. Blocking: call
    /// it from `spawn_blocking` in an async test.
    ///
    /// # Panics
    /// If a node refuses a step (the message names it).
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.master_of_slot(slot);
        if from == to {
            return;
        }
        let id = |i: usize| match resp::cmd(self.nodes[i].addr(), &["CLUSTER", "MYID"]) {
            Ok(reply) => String::from_utf8_lossy(reply.bulk().expect("an id")).into_owned(),
            Err(e) => panic!("CLUSTER MYID on node {i}: {e}"),
        };
        let (from_id, to_id) = (id(from), id(to));
        let slot = slot.to_string();
        let run = |i: usize, args: &[&str]| match resp::cmd(self.nodes[i].addr(), args) {
            Ok(Reply::Error(e)) => panic!("{args:?} on node {i}: {e}"),
            Ok(reply) => reply,
            Err(e) => panic!("{args:?} on node {i}: {e}"),
        };
        run(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        run(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        let (host, port) = (
            self.nodes[to].addr().ip().to_string(),
            self.nodes[to].port().to_string(),
        );
        loop {
            let Reply::Array(Some(keys)) = run(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"])
            else {
                panic!("GETKEYSINSLOT answered no array");
            };
            if keys.is_empty() {
                break;
            }
            let keys: Vec<String> = keys
                .iter()
                .filter_map(|k| k.bulk().map(|b| String::from_utf8_lossy(b).into_owned()))
                .collect();
            let mut args = vec!["MIGRATE", &host, &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            run(from, &args);
        }
        run(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        run(from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for i in 0..self.nodes.len() {
            if i != to && i != from && self.is_master(i) {
                run(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
    }

    /// Moves `count` hash slots from master `from` to master `to` with
    /// `redis-cli --cluster reshard … --cluster-yes`, the operator's tool:
    /// it takes `from`'s lowest-numbered slots and migrates their keys
    /// while clients keep running. Blocking: call it from `spawn_blocking`
    /// in an async test. Returns redis-cli's output.
    ///
    /// # Panics
    /// If redis-cli fails (its output is in the message).
    pub fn reshard(&self, from: usize, to: usize, count: u32) -> String {
        let id = |i: usize| match resp::cmd(self.nodes[i].addr(), &["CLUSTER", "MYID"]) {
            Ok(reply) => String::from_utf8_lossy(reply.bulk().expect("an id")).into_owned(),
            Err(e) => panic!("CLUSTER MYID on node {i}: {e}"),
        };
        let out = Command::new(redis_cli_bin())
            .args(["--cluster", "reshard", &self.nodes[from].addr().to_string()])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); is Redis installed?"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            panic!(
                "redis-cli --cluster reshard failed ({}):\n{text}",
                out.status
            );
        }
        text
    }

    /// The index of a running replica that follows node `master` (`INFO
    /// replication`'s `master_port`), if any.
    pub fn replica_of(&self, master: usize) -> Option<usize> {
        let port = self.nodes[master].port().to_string();
        (0..self.nodes.len()).find(|&i| {
            i != master
                && field(&info(&self.nodes[i], "replication"), "master_port").as_deref()
                    == Some(port.as_str())
        })
    }

    /// The index of the node serving `key`'s slot as master (`CLUSTER
    /// KEYSLOT`, then `CLUSTER SLOTS` on the first live node).
    ///
    /// # Panics
    /// If no node answers.
    pub fn master_of_slot(&self, slot: u16) -> usize {
        for node in &self.nodes {
            let Ok(Reply::Array(Some(ranges))) = resp::cmd(node.addr(), &["CLUSTER", "SLOTS"])
            else {
                continue;
            };
            for range in ranges {
                let Reply::Array(Some(items)) = range else {
                    continue;
                };
                let (Some(Reply::Int(lo)), Some(Reply::Int(hi)), Some(Reply::Array(Some(m)))) =
                    (items.first(), items.get(1), items.get(2))
                else {
                    continue;
                };
                if (*lo..=*hi).contains(&i64::from(slot)) {
                    if let Some(Reply::Int(port)) = m.get(1) {
                        if let Some(i) =
                            self.nodes.iter().position(|n| i64::from(n.port()) == *port)
                        {
                            return i;
                        }
                    }
                }
            }
        }
        panic!("no node answered CLUSTER SLOTS for slot {slot}");
    }

    /// Waits until every running node says `cluster_state:ok`, knows all
    /// the others, and every replica's link to its master is up with
    /// nothing left to sync.
    ///
    /// # Errors
    /// What was still missing when `timeout` ran out.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = self.not_ready();
            match missing {
                None => return Ok(()),
                Some(why) if Instant::now() >= deadline => return Err(why),
                Some(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn not_ready(&self) -> Option<String> {
        let running: Vec<&RedisServer> = self.nodes.iter().filter(|n| n.pid().is_some()).collect();
        for node in &running {
            let cluster = match resp::cmd(node.addr(), &["CLUSTER", "INFO"]) {
                Ok(reply) => String::from_utf8_lossy(reply.bulk().unwrap_or_default()).into_owned(),
                Err(e) => return Some(format!("{}: {e}", node.addr())),
            };
            if !cluster.contains("cluster_state:ok") {
                return Some(format!("{}: not cluster_state:ok", node.addr()));
            }
            if !cluster.contains(&format!("cluster_known_nodes:{}\r", self.nodes.len())) {
                return Some(format!("{}: does not know every node yet", node.addr()));
            }
            let replication = info(node, "replication");
            if replication.contains("role:slave") {
                let synced = replication.contains("master_link_status:up")
                    && !replication.contains("master_sync_in_progress:1");
                if !synced {
                    return Some(format!("{}: replica not in sync", node.addr()));
                }
            } else if replication.contains("role:master") {
                // Every replica the master sees online, at its offset.
                let offset = field(&replication, "master_repl_offset");
                for line in replication.lines().filter(|l| l.starts_with("slave")) {
                    let online = line.contains("state=online");
                    let caught_up = offset
                        .as_deref()
                        .is_some_and(|o| line.contains(&format!("offset={o},")));
                    if !online || !caught_up {
                        return Some(format!("{}: a replica is behind: {line}", node.addr()));
                    }
                }
            }
        }
        None
    }

    /// Every node's log (last 200 lines each).
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("=== node {} ===\n{}", n.addr(), n.log()))
            .collect()
    }

    /// A shell that waits for this process to end, then kills the nodes
    /// and removes their dirs (for [`shared`](Self::shared), never dropped).
    fn watchdog(&self) {
        let me = std::process::id();
        let pids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.pid().map(|p| p.to_string()))
            .collect();
        let dirs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("'{}'", n.dir().display()))
            .collect();
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 {} 2>/dev/null; rm -rf {}",
            pids.join(" "),
            dirs.join(" ")
        );
        // Best effort: without sh the nodes outlive the test process.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

fn info(node: &RedisServer, section: &str) -> String {
    resp::cmd(node.addr(), &["INFO", section])
        .ok()
        .and_then(|r| r.bulk().map(|b| String::from_utf8_lossy(b).into_owned()))
        .unwrap_or_default()
}

/// The hash slot of `key` as Redis Cluster computes it: CRC16 (XMODEM)
/// of the hash tag (the text between the first `{` and the next `}`, when
/// not empty) or of the whole key, modulo 16384.
pub fn key_slot(key: &str) -> u16 {
    let key = key.as_bytes();
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &rest[..len])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

fn field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
}

/// `LARDER_TEST_REDIS_CLI`, or `redis-cli` from `PATH`.
fn redis_cli_bin() -> String {
    std::env::var("LARDER_TEST_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

#[cfg(test)]
mod tests {
    use super::key_slot;

    /// Slots from the Redis Cluster specification and `CLUSTER KEYSLOT`.
    #[test]
    fn key_slots_match_redis() {
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("bar"), 5061);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"));
        assert_ne!(key_slot("foo{}{bar}"), key_slot("bar"));
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
    }
}
