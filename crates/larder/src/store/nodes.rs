//! The nodes behind a store and how the hash slots are covered: per node
//! of a Redis Cluster its address, role, the master it follows, used
//! memory, evictions and keys; for the cluster, the slots assigned and
//! served (`CLUSTER INFO`). See [`Store::nodes`](super::Store::nodes) and
//! [`Store::slot_coverage`](super::Store::slot_coverage).
//!
//! Why per node, next to the summed [`ServerInfo`](super::ServerInfo): a
//! cluster is only as roomy as its fullest master (one slot's master
//! evicting while the others are half empty is an uneven spread, not a
//! small cluster), and a master without a replica, or slots not `ok`, is
//! what an operator must see before a failover finds it.
//!
//! Why `CLUSTER NODES` and then `INFO` on each node's own connection,
//! rather than redis-rs' fan-out to "all nodes": the cluster client only
//! knows the nodes `CLUSTER SLOTS` lists, and Redis leaves out of it a
//! replica that has not synced yet (measured: a freshly created 3+3
//! cluster showed its 3 masters only), which is just the replica an
//! operator needs to see. `CLUSTER NODES` lists every node with its role
//! and master; `INFO` gives its memory, evictions and keys. The per-node
//! connections (the seeds' credentials and TLS) are kept for the next
//! call and dropped when they fail; all `INFO`s go out at once, so the
//! figures cost two round trips. A node that does not answer is listed
//! without figures.
//!
//! On a standalone Redis (`redis://`) and `memory://` there are no nodes
//! (an empty list) and no slot coverage (`None`): the store's one server
//! is [`ServerInfo`](super::ServerInfo).

use super::redis::RedisStore;
use crate::error::{Error, Message, Result};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;

/// Hash slots in a Redis Cluster.
pub const CLUSTER_SLOTS: u64 = 16384;

/// What a node does in a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// Serves slots (reads and writes).
    Master,
    /// Follows a master, to take over if it fails.
    Replica,
}

impl NodeRole {
    /// `"master"` or `"replica"`: the label in `/metrics` and `/v1/stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Master => "master",
            NodeRole::Replica => "replica",
        }
    }
}

/// One node of a Redis Cluster, from its `INFO`; `None` where the node
/// did not say.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeInfo {
    /// `host:port`, as the cluster announces the node.
    pub address: String,
    /// Master or replica (`INFO replication`'s `role`).
    pub role: NodeRole,
    /// The master a replica follows (`master_host:master_port`); `None`
    /// for a master.
    pub master: Option<String>,
    /// Bytes the node uses (`used_memory`).
    pub used_memory: Option<u64>,
    /// Keys the node evicted for memory since it started.
    pub evicted_keys: Option<u64>,
    /// Keys the node holds now (`INFO keyspace`, database 0).
    pub keys: Option<u64>,
}

impl NodeInfo {
    /// The nodes listed by `CLUSTER NODES` (address, role, the master a
    /// replica follows), without figures; nodes without an address
    /// (`noaddr`, a handshake in progress) are left out.
    ///
    /// ```
    /// use larder::store::{NodeInfo, NodeRole};
    /// let nodes = NodeInfo::parse_cluster_nodes(
    ///     "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
    ///      b2 127.0.0.1:7003@17003 slave a1 0 1700000000000 1 connected\n",
    /// );
    /// assert_eq!(nodes.len(), 2);
    /// assert_eq!((nodes[0].address.as_str(), nodes[0].role), ("127.0.0.1:7000", NodeRole::Master));
    /// assert_eq!(nodes[1].role, NodeRole::Replica);
    /// assert_eq!(nodes[1].master.as_deref(), Some("127.0.0.1:7000"));
    /// ```
    pub fn parse_cluster_nodes(text: &str) -> Vec<NodeInfo> {
        // (id, address, is replica, master id)
        let listed: Vec<(&str, String, bool, &str)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let id = fields.next()?;
                // ip:port@cport[,hostname]
                let address = fields.next()?.split(['@', ',']).next()?;
                let flags = fields.next()?;
                let master = fields.next()?;
                let flags: Vec<&str> = flags.split(',').collect();
                if address.starts_with(':')
                    || flags.contains(&"noaddr")
                    || flags.contains(&"handshake")
                {
                    return None;
                }
                Some((id, address.to_owned(), flags.contains(&"slave"), master))
            })
            .collect();
        let address_of = |id: &str| {
            listed
                .iter()
                .find(|(other, ..)| *other == id)
                .map(|(_, address, ..)| address.clone())
        };
        let mut nodes: Vec<NodeInfo> = listed
            .iter()
            .map(|(_, address, replica, master)| NodeInfo {
                address: address.clone(),
                role: if *replica {
                    NodeRole::Replica
                } else {
                    NodeRole::Master
                },
                master: if *replica { address_of(master) } else { None },
                used_memory: None,
                evicted_keys: None,
                keys: None,
            })
            .collect();
        // Each master, then its replicas.
        nodes.sort_by(|a, b| {
            let group = |n: &NodeInfo| n.master.clone().unwrap_or_else(|| n.address.clone());
            (group(a), a.role != NodeRole::Master, &a.address).cmp(&(
                group(b),
                b.role != NodeRole::Master,
                &b.address,
            ))
        });
        nodes
    }

    /// Sets the figures from the text of the node's own `INFO`: memory,
    /// evictions and keys (database 0; no `db0` line: none).
    fn read_info(&mut self, text: &str) {
        self.keys = Some(0);
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "used_memory" => self.used_memory = v.parse().ok(),
                "evicted_keys" => self.evicted_keys = v.parse().ok(),
                "db0" => {
                    self.keys = v
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("keys="))
                        .and_then(|n| n.parse().ok())
                }
                _ => {}
            }
        }
    }
}

/// How a Redis Cluster's 16384 hash slots are covered (`CLUSTER INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotCoverage {
    /// `ok`, or `fail` when some slot is unserved (`cluster_state`).
    pub state: String,
    /// Slots assigned to a master (`cluster_slots_assigned`).
    pub assigned: u64,
    /// Slots whose master is reachable (`cluster_slots_ok`).
    pub ok: u64,
    /// Slots whose master some node suspects is down (`cluster_slots_pfail`).
    pub pfail: u64,
    /// Slots whose master the cluster agrees is down (`cluster_slots_fail`).
    pub fail: u64,
}

impl SlotCoverage {
    /// Reads the text of `CLUSTER INFO`; `None` without `cluster_state`.
    ///
    /// ```
    /// let c = larder::store::SlotCoverage::parse_cluster_info(
    ///     "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n\
    ///      cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\n",
    /// )
    /// .expect("a state");
    /// assert_eq!((c.state.as_str(), c.assigned, c.ok), ("ok", 16384, 16384));
    /// ```
    pub fn parse_cluster_info(text: &str) -> Option<SlotCoverage> {
        let mut state = None;
        let mut c = SlotCoverage {
            state: String::new(),
            assigned: 0,
            ok: 0,
            pfail: 0,
            fail: 0,
        };
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            let n = || v.trim().parse().unwrap_or(0);
            match k {
                "cluster_state" => state = Some(v.trim().to_owned()),
                "cluster_slots_assigned" => c.assigned = n(),
                "cluster_slots_ok" => c.ok = n(),
                "cluster_slots_pfail" => c.pfail = n(),
                "cluster_slots_fail" => c.fail = n(),
                _ => {}
            }
        }
        c.state = state?;
        Some(c)
    }
}

impl RedisStore {
    /// `Store::nodes` on Redis: `CLUSTER NODES` from any node, then each
    /// node's `INFO` over a connection of its own, all at once. A node that
    /// does not answer is listed without figures.
    pub(super) async fn cluster_nodes(&self) -> Result<Vec<NodeInfo>> {
        let conn = self.conn();
        if !conn.is_cluster() {
            return Ok(Vec::new());
        }
        let text = self.cluster_nodes_text().await?;
        let mut nodes = NodeInfo::parse_cluster_nodes(&text);
        let infos = nodes.iter().map(|node| {
            let conn = conn.clone();
            async move {
                let (host, port) = node.address.rsplit_once(':')?;
                let port: u16 = port.parse().ok()?;
                let mut one = conn.node_connection(host, port).await?.ok()?;
                match redis::cmd("INFO").query_async::<String>(&mut one).await {
                    Ok(text) => Some(text),
                    Err(_) => {
                        conn.forget_node_connection(&node.address);
                        None
                    }
                }
            }
        });
        let infos = futures_util::future::join_all(infos).await;
        for (node, info) in nodes.iter_mut().zip(infos) {
            if let Some(text) = info {
                node.read_info(&text);
            }
        }
        Ok(nodes)
    }

    /// The text of `CLUSTER NODES` from any node (empty on a single Redis).
    pub(super) async fn cluster_nodes_text(&self) -> Result<String> {
        let Some(mut cluster) = self.conn().cluster_connection() else {
            return Ok(String::new());
        };
        let answer = cluster
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(|e| self.error(e))?;
        self.text(answer, "CLUSTER NODES")
    }

    /// `Store::slot_coverage` on Redis: `CLUSTER INFO` from any node.
    pub(super) async fn cluster_slot_coverage(&self) -> Result<Option<SlotCoverage>> {
        let Some(mut conn) = self.conn().cluster_connection() else {
            return Ok(None);
        };
        let answer = conn
            .route_command(
                redis::cmd("CLUSTER").arg("INFO").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(SlotCoverage::parse_cluster_info(
            &self.text(answer, "CLUSTER INFO")?,
        ))
    }

    fn text(&self, answer: Value, what: &str) -> Result<String> {
        redis::from_redis_value(answer).map_err(|e| Error::Store {
            store: self.name_str().to_owned(),
            cause: Message::cause(format!("{what} answered no text: {e}")),
        })
    }
}
