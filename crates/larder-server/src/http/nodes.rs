//! The Redis Cluster's nodes and slot coverage in `/v1/stats` (`nodes`,
//! `slots`) and `/metrics` (`larder_store_node_*`,
//! `larder_store_cluster_*`), from the library's `Store::nodes` and
//! `Store::slot_coverage`.
//!
//! Why beside the summed `redis` figures: the sum hides the fullest
//! master and a master left without its replica, which is what an
//! operator of a cluster watches. On a standalone Redis and `memory://`
//! there are no nodes (`"nodes": []`, `"slots": null`, no such series):
//! the one server is the `redis` section.
//!
//! Like the `INFO` figures, these are read at request (scrape) time,
//! bounded by [`INFO_TIMEOUT`]; a store that does not answer in time
//! shows no nodes rather than failing the request.

use super::metrics::INFO_TIMEOUT;
use crate::serve::AppState;
use larder::store::{NodeInfo, SlotCoverage};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Mutex;

/// The cluster as the store sees it now.
#[derive(Debug, Default)]
pub struct ClusterView {
    /// Each master followed by its replicas; empty off a cluster.
    pub nodes: Vec<NodeInfo>,
    /// `None` off a cluster (or if `CLUSTER INFO` did not answer in time).
    pub slots: Option<SlotCoverage>,
}

/// The store's nodes and slot coverage, asked concurrently; what does not
/// answer within [`INFO_TIMEOUT`] is left out.
pub async fn cluster_view(state: &AppState) -> ClusterView {
    let store = state.store();
    let (nodes, slots) = tokio::join!(
        tokio::time::timeout(INFO_TIMEOUT, store.nodes()),
        tokio::time::timeout(INFO_TIMEOUT, store.slot_coverage()),
    );
    let nodes = match nodes {
        Ok(Ok(nodes)) => nodes,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no node figures");
            Vec::new()
        }
        Err(_) => Vec::new(),
    };
    let slots = match slots {
        Ok(Ok(slots)) => slots,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no slot coverage");
            None
        }
        Err(_) => None,
    };
    ClusterView { nodes, slots }
}

/// `/v1/stats`' `nodes`: one object per node.
pub fn nodes_json(view: &ClusterView) -> Value {
    Value::Array(
        view.nodes
            .iter()
            .map(|n| {
                json!({
                    "address": n.address,
                    "role": n.role.as_str(),
                    "master": n.master,
                    "used_memory": n.used_memory,
                    "evicted_keys": n.evicted_keys,
                    "keys": n.keys,
                })
            })
            .collect(),
    )
}

/// `/v1/stats`' `slots`: the coverage, or `null` off a cluster.
pub fn slots_json(view: &ClusterView) -> Value {
    view.slots.as_ref().map_or(Value::Null, |s| {
        json!({
            "state": s.state,
            "assigned": s.assigned,
            "ok": s.ok,
            "pfail": s.pfail,
            "fail": s.fail,
            "total": larder::store::CLUSTER_SLOTS,
        })
    })
}

/// The `larder_store_node_info` label sets set to 1 at the last scrape,
/// so that a node's old role (after a failover) is set back to 0.
static INFO_LABELS: Mutex<Option<HashSet<(String, String, String)>>> = Mutex::new(None);

/// Sets the per-node and slot series from `view` (none off a cluster).
pub fn set_gauges(view: &ClusterView) {
    describe();
    let mut current = HashSet::new();
    for n in &view.nodes {
        let node = n.address.clone();
        let role = n.role.as_str();
        if let Some(v) = n.used_memory {
            metrics::gauge!("larder_store_node_used_memory_bytes", "node" => node.clone(), "role" => role)
                .set(v as f64);
        }
        if let Some(v) = n.keys {
            metrics::gauge!("larder_store_node_keys", "node" => node.clone(), "role" => role)
                .set(v as f64);
        }
        if let Some(v) = n.evicted_keys {
            metrics::counter!("larder_store_node_evicted_keys_total", "node" => node.clone(), "role" => role)
                .absolute(v);
        }
        current.insert((node, role.to_owned(), n.master.clone().unwrap_or_default()));
    }
    if !view.nodes.is_empty() {
        let mut last = INFO_LABELS.lock().unwrap_or_else(|p| p.into_inner());
        for (node, role, master) in last.iter().flatten() {
            if !current.contains(&(node.clone(), role.clone(), master.clone())) {
                metrics::gauge!("larder_store_node_info", "node" => node.clone(), "role" => role.clone(), "master" => master.clone())
                    .set(0.0);
            }
        }
        for (node, role, master) in &current {
            metrics::gauge!("larder_store_node_info", "node" => node.clone(), "role" => role.clone(), "master" => master.clone())
                .set(1.0);
        }
        *last = Some(current);
    }
    if let Some(s) = &view.slots {
        metrics::gauge!("larder_store_cluster_slots_assigned").set(s.assigned as f64);
        metrics::gauge!("larder_store_cluster_slots_ok").set(s.ok as f64);
        metrics::gauge!("larder_store_cluster_slots_pfail").set(s.pfail as f64);
        metrics::gauge!("larder_store_cluster_slots_fail").set(s.fail as f64);
        metrics::gauge!("larder_store_cluster_state_ok").set(if s.state == "ok" {
            1.0
        } else {
            0.0
        });
    }
}

/// The help texts of the series set here.
fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        "larder_store_node_used_memory_bytes",
        Unit::Bytes,
        "used_memory of each Redis Cluster node (labels node, role)."
    );
    describe_gauge!(
        "larder_store_node_keys",
        "Keys held by each Redis Cluster node (labels node, role)."
    );
    describe_counter!(
        "larder_store_node_evicted_keys_total",
        "evicted_keys of each Redis Cluster node (labels node, role)."
    );
    describe_gauge!(
        "larder_store_node_info",
        "1 per Redis Cluster node with its role and the master it follows (label master, empty for a master); 0 for a role the node no longer has."
    );
    describe_gauge!(
        "larder_store_cluster_slots_assigned",
        "Hash slots assigned to a master (of 16384)."
    );
    describe_gauge!(
        "larder_store_cluster_slots_ok",
        "Hash slots whose master is reachable (of 16384)."
    );
    describe_gauge!(
        "larder_store_cluster_slots_pfail",
        "Hash slots whose master some node suspects is down."
    );
    describe_gauge!(
        "larder_store_cluster_slots_fail",
        "Hash slots whose master the cluster agrees is down."
    );
    describe_gauge!(
        "larder_store_cluster_state_ok",
        "1 while cluster_state is ok, else 0."
    );
}
