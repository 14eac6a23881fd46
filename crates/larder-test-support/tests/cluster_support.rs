//! The test Cluster helper: it starts a working cluster of 3 masters and
//! 3 in-sync replicas whose URL names every node.

use larder_test_support::resp::{self, Reply};
use larder_test_support::RedisCluster;
use std::time::Duration;

#[test]
fn shared_cluster_has_three_masters_three_synced_replicas_and_covers_every_slot() {
    let cluster = RedisCluster::shared();
    assert_eq!(cluster.nodes().len(), 6);
    let masters = (0..6).filter(|&i| cluster.is_master(i)).count();
    assert_eq!(masters, 3, "3 masters + 3 replicas");
    cluster
        .wait_ready(Duration::from_secs(1))
        .expect("ready (ok everywhere, replicas synced)");
    let info = resp::cmd(cluster.nodes()[0].addr(), &["CLUSTER", "INFO"]).expect("CLUSTER INFO");
    let info = String::from_utf8_lossy(info.bulk().expect("bulk")).into_owned();
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    // Slot 0 and slot 16383 are served by masters.
    assert!(cluster.is_master(cluster.master_of_slot(0)));
    assert!(cluster.is_master(cluster.master_of_slot(16383)));
    let url = cluster.url();
    assert!(url.starts_with("redis+cluster://127.0.0.1:"), "{url}");
    assert_eq!(url.matches(',').count(), 5, "every node is a seed: {url}");
    // A key written on its slot's master is readable there.
    let master = &cluster.nodes()[cluster.master_of_slot(12182)]; // CLUSTER KEYSLOT foo
    let set = resp::cmd(master.addr(), &["SET", "foo", "bar"]).expect("SET");
    assert_eq!(set, Reply::Simple("OK".into()));
}
