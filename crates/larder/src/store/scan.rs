//! Finding every key under a prefix: what purging a whole collection
//! (`SetCache::purge`, a TRUNCATE heard over change notifications) needs.
//!
//! Why a scan: a collection has no generation stamp that a hit checks (a
//! hit stays one script in its owner's slot, and a generation would live in
//! another slot on Cluster), so purging one means invalidating every owner
//! it has cached. `SCAN … MATCH <prefix>*` finds them without blocking the
//! server (a `KEYS` would), in batches of [`BATCH`]; its cost is one pass
//! over the whole keyspace, which is why it is for rare, whole-collection
//! events and never on a read or write path. On a Redis Cluster each master
//! is scanned over a connection of its own (the cluster client routes a
//! `SCAN` to one random node).

use super::redis::RedisStore;
use crate::error::{Error, Result};
use redis::aio::ConnectionLike;
use std::collections::BTreeSet;

/// Keys asked for per `SCAN` call (`COUNT`).
const BATCH: usize = 1000;

/// `prefix` with the glob characters of `MATCH` escaped, then `*`.
pub(super) fn glob_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

/// Every key of one server matching `pattern`.
async fn scan_one(
    conn: &mut impl ConnectionLike,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut found = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(conn)
            .await?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

impl RedisStore {
    /// Every key that starts with `prefix`, de-duplicated (`SCAN` may
    /// return a key twice), from every master of a Cluster.
    pub(super) async fn keys_with_prefix(&self, prefix: &str) -> Result<BTreeSet<String>> {
        let pattern = glob_prefix(prefix);
        let mut conn = self.conn();
        if !conn.is_cluster() {
            let keys = scan_one(&mut conn, &pattern)
                .await
                .map_err(|e| self.error(e))?;
            return Ok(keys.into_iter().collect());
        }
        let mut all = BTreeSet::new();
        for node in self.cluster_nodes().await? {
            if node.role != super::NodeRole::Master {
                continue;
            }
            let (host, port) = node
                .address
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| Error::internal(format!("node address {:?}", node.address)))?;
            let Some(made) = conn.node_connection(&host, port).await else {
                continue;
            };
            let mut one = made.map_err(|e| self.error(e))?;
            let keys = scan_one(&mut one, &pattern)
                .await
                .map_err(|e| self.error(e))?;
            all.extend(keys);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_prefix("app:{users:"), "app:{users:*");
        assert_eq!(glob_prefix("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }
}
