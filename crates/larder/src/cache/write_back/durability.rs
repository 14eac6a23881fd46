//! Durability is checked, not assumed.
//!
//! Write-back acknowledges writes that only the store holds, so the store
//! must keep them through its own crash and must never evict them:
//!
//! - durable means `appendonly yes` **and** `appendfsync always` (Redis 7.0
//!   has no `WAITAOF`; `everysec` can lose the last second). A store that
//!   refuses `CONFIG GET` cannot prove it and counts as not durable;
//!   `memory://` never is. Not durable: refused, unless `require_durable`
//!   is `false` — then a loud warning, once.
//! - an `allkeys-*` eviction policy may evict dirty records (they carry no
//!   TTL, so `volatile-*` policies and `noeviction` leave them alone):
//!   always refused.
//! - on a Redis Cluster, every node (masters and replicas: a replica is
//!   promoted with its own settings) must be durable so, and every master
//!   needs at least one online replica, since each acknowledgement waits
//!   for the master's replicas (`WAIT`, see `store/replica_wait.rs`). The
//!   refusal names the node and what it lacks.

use super::WriteBackOptions;
use crate::error::{Error, Result};
use crate::store::{Durability, Store};

/// Checks the store's settings for write-back of `entity`.
pub(crate) async fn check(
    entity: &str,
    store: &dyn Store,
    settings: &WriteBackOptions,
) -> Result<()> {
    let refuse = |reason: String| Error::NotDurable {
        entity: entity.to_owned(),
        store: store.name().to_owned(),
        reason,
    };
    let Some(log) = store.dirty_log() else {
        return Err(in_process(entity, store));
    };
    let facts = log.durability().await?;
    match verdict(&facts) {
        Verdict::Durable => Ok(()),
        Verdict::Evicts(policy) => Err(refuse(format!(
            "{policy}, which may evict dirty records and lose acknowledged writes; use noeviction or a volatile-* policy"
        ))),
        Verdict::NotDurable(why) if settings.require_durable => Err(refuse(format!(
            "{why}; a crash of the store could lose acknowledged writes. Set appendonly yes and appendfsync always, or set require_durable = false to accept that risk"
        ))),
        Verdict::NotDurable(why) => {
            tracing::warn!(
                entity,
                store = store.name(),
                "WRITE-BACK IS NOT DURABLE: {why}; acknowledged writes can be lost if the store crashes (require_durable = false)"
            );
            Ok(())
        }
    }
}

/// The refusal of a store that lives in the process (`memory://`).
pub(crate) fn in_process(entity: &str, store: &dyn Store) -> Error {
    Error::NotDurable {
        entity: entity.to_owned(),
        store: store.name().to_owned(),
        reason: "this store lives in the process and is lost with it, so it cannot hold acknowledged writes; use Redis with appendonly yes and appendfsync always".into(),
    }
}

/// What the store's settings mean for write-back.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Durable,
    NotDurable(String),
    Evicts(String),
}

fn verdict(facts: &Durability) -> Verdict {
    let on = facts
        .node
        .as_deref()
        .map(|node| format!("node {node}: "))
        .unwrap_or_default();
    if let Some(policy) = facts
        .maxmemory_policy
        .as_deref()
        .filter(|p| p.starts_with("allkeys-"))
    {
        return Verdict::Evicts(format!("{on}maxmemory-policy is {policy}"));
    }
    match (facts.appendonly.as_deref(), facts.appendfsync.as_deref()) {
        (Some("yes"), Some("always")) => {}
        (None, _) | (_, None) => {
            return Verdict::NotDurable(format!(
                "{on}the store does not answer CONFIG GET, so its persistence cannot be checked"
            ))
        }
        (Some(aof), Some(fsync)) => {
            return Verdict::NotDurable(format!(
                "{on}the store runs with appendonly {aof}, appendfsync {fsync}"
            ))
        }
    }
    match facts.masters_without_replicas.as_slice() {
        [] => Verdict::Durable,
        masters => Verdict::NotDurable(format!(
            "master {} has no online replica, so a failover of it would lose the writes it acknowledged (each acknowledgement waits for the master's replicas); add a replica to every master",
            masters.join(", master ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_a_cluster_the_refusal_names_the_node_and_the_master_without_replica() {
        let everysec = Durability {
            node: Some("127.0.0.1:7004".into()),
            ..facts(Some("yes"), Some("everysec"), Some("noeviction"))
        };
        assert!(matches!(verdict(&everysec),
            Verdict::NotDurable(why) if why.starts_with("node 127.0.0.1:7004: ") && why.contains("everysec")));
        let alone = Durability {
            masters_without_replicas: vec!["127.0.0.1:7001".into()],
            ..facts(Some("yes"), Some("always"), Some("noeviction"))
        };
        assert!(matches!(verdict(&alone),
            Verdict::NotDurable(why) if why.contains("master 127.0.0.1:7001 has no online replica")));
    }

    fn facts(aof: Option<&str>, fsync: Option<&str>, policy: Option<&str>) -> Durability {
        Durability {
            appendonly: aof.map(str::to_owned),
            appendfsync: fsync.map(str::to_owned),
            maxmemory_policy: policy.map(str::to_owned),
            ..Durability::default()
        }
    }

    #[test]
    fn only_aof_with_fsync_always_is_durable() {
        let ok = facts(Some("yes"), Some("always"), Some("noeviction"));
        assert_eq!(verdict(&ok), Verdict::Durable);
        let volatile = facts(Some("yes"), Some("always"), Some("volatile-lru"));
        assert_eq!(verdict(&volatile), Verdict::Durable);
        for (aof, fsync) in [("yes", "everysec"), ("no", "always"), ("no", "everysec")] {
            let v = verdict(&facts(Some(aof), Some(fsync), Some("noeviction")));
            assert!(
                matches!(v, Verdict::NotDurable(why) if why.contains(aof) && why.contains(fsync))
            );
        }
    }

    #[test]
    fn denied_config_is_not_durable() {
        assert!(matches!(
            verdict(&facts(None, None, None)),
            Verdict::NotDurable(why) if why.contains("CONFIG GET")
        ));
    }

    #[test]
    fn allkeys_policies_always_refuse() {
        for policy in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            let v = verdict(&facts(Some("yes"), Some("always"), Some(policy)));
            assert_eq!(v, Verdict::Evicts(format!("maxmemory-policy is {policy}")));
        }
    }
}
