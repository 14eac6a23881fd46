//! What a [`RedisStore`] does differently on Redis Cluster: batches split by
//! hash slot, and the server's figures gathered from every master.
//!
//! Why here: redis-rs' cluster client sends a pipeline to the slot of its
//! first keyed command and refuses one whose commands cross slots, and a
//! multi-read (`MGET`) can only be answered by the node that owns all its
//! keys. So every multi-key pipeline of the store (the script pipelines of
//! `acquire_many`, `fill_many`, the flusher's `clear`, the backlog and
//! dead-letter reads) goes through [`RedisStore::grouped`] or
//! [`RedisStore::grouped_script`]: one pipeline per slot, all sent at once,
//! answers put back in request order. On a standalone Redis there is a
//! single group, so the behaviour there is what it was: one round trip.
//!
//! `get_many`'s `MGET` is split by redis-rs itself (its cluster routing
//! sends a multi-slot `MGET` as one `MGET` per slot, concurrently, and
//! reassembles the answers in key order). larder split it by slot too, at
//! first; handing redis-rs the whole `MGET` measured faster — one request
//! into its cluster task instead of ~50 (100 keys over 64 shards, 3
//! masters, `benches/cluster.rs`, one noisy run each: 222 k vs 158 k keys/s
//! from one task, 200 k vs 161 k from 32), so that is what the store does.
//!
//! Which key lives in which slot is the key layout's business (see the
//! README's "Redis Cluster" section): everything about one entity id lives
//! in its shard's slot (the hash tag `{<entity>:<shard>}`), so a script over
//! one id never crosses slots, and a batch over many ids touches at most
//! one slot per shard.

use super::redis::RedisStore;
use crate::error::{Error, Message, Result};
use redis::{Pipeline, Script, Value};

impl RedisStore {
    /// Runs `per_item` commands for each item (added by `add(pipe, i)`),
    /// one pipeline per hash slot of the items' `slot_keys` (all sent
    /// concurrently), and answers the commands' replies in item order:
    /// `per_item` values per item.
    pub(super) async fn grouped<F>(
        &self,
        slot_keys: &[&str],
        per_item: usize,
        add: F,
    ) -> Result<Vec<Value>>
    where
        F: Fn(&mut Pipeline, usize),
    {
        let groups = self.conn().slot_groups(slot_keys);
        let sends = groups.iter().map(|group| {
            let mut pipe = Pipeline::with_capacity(group.len() * per_item);
            for &i in group {
                add(&mut pipe, i);
            }
            let mut conn = self.conn();
            async move {
                pipe.query_async::<Vec<Value>>(&mut conn)
                    .await
                    .map_err(|e| self.error(e))
            }
        });
        let answers = futures_util::future::try_join_all(sends).await?;
        self.reassemble(&groups, answers, slot_keys.len(), per_item)
    }

    /// Like [`grouped`](Self::grouped) for one `EVALSHA` per call (its keys
    /// are the call's first element; the first key picks the slot), loading
    /// the script where a node does not know it (after a restart, a
    /// failover, or `SCRIPT FLUSH`: the script cache is not replicated)
    /// and resending that slot's pipeline.
    pub(super) async fn grouped_script(
        &self,
        script: &Script,
        calls: &[(Vec<&str>, Vec<&[u8]>)],
    ) -> Result<Vec<Value>> {
        let firsts: Vec<&str> = calls
            .iter()
            .map(|(keys, _)| keys.first().copied().unwrap_or_default())
            .collect();
        let groups = self.conn().slot_groups(&firsts);
        let sends = groups.iter().map(|group| {
            let build = move || {
                let mut pipe = Pipeline::with_capacity(group.len());
                for &i in group {
                    let (keys, args) = &calls[i];
                    pipe.cmd("EVALSHA")
                        .arg(script.get_hash())
                        .arg(keys.len())
                        .arg(keys)
                        .arg(args);
                }
                pipe
            };
            let mut conn = self.conn();
            async move {
                match build().query_async::<Vec<Value>>(&mut conn).await {
                    Ok(values) => Ok(values),
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        script
                            .load_async(&mut conn)
                            .await
                            .map_err(|e| self.error(e))?;
                        build()
                            .query_async(&mut conn)
                            .await
                            .map_err(|e| self.error(e))
                    }
                    Err(e) => Err(self.error(e)),
                }
            }
        });
        let answers = futures_util::future::try_join_all(sends).await?;
        self.reassemble(&groups, answers, calls.len(), 1)
    }

    fn reassemble(
        &self,
        groups: &[Vec<usize>],
        answers: Vec<Vec<Value>>,
        items: usize,
        per_item: usize,
    ) -> Result<Vec<Value>> {
        let mut out: Vec<Option<Value>> = vec![None; items * per_item];
        for (group, values) in groups.iter().zip(answers) {
            if values.len() != group.len() * per_item {
                return Err(self.bad_answer("a pipeline answered the wrong number of replies"));
            }
            let mut values = values.into_iter();
            for &i in group {
                for slot in &mut out[i * per_item..(i + 1) * per_item] {
                    *slot = values.next();
                }
            }
        }
        out.into_iter()
            .map(|v| v.ok_or_else(|| self.bad_answer("a pipeline left a reply out")))
            .collect()
    }

    pub(super) fn bad_answer(&self, what: &str) -> Error {
        Error::Store {
            store: self.name_str().to_owned(),
            cause: Message::cause(what.to_owned()),
        }
    }

    /// `server_info` on Cluster: `INFO` from every master (redis-rs sends
    /// it to each), memory, keys and counters summed; the policy and the
    /// limit are the first master's (a cluster is configured alike).
    pub(super) async fn cluster_server_info(&self) -> Result<super::ServerInfo> {
        let answer: Value = redis::cmd("INFO")
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))?;
        let texts: Vec<String> = match answer {
            Value::Map(per_node) => per_node
                .into_iter()
                .filter_map(|(_, text)| redis::from_redis_value::<String>(text).ok())
                .collect(),
            other => redis::from_redis_value::<String>(other)
                .into_iter()
                .collect(),
        };
        let mut total = super::ServerInfo::default();
        for text in texts {
            let node = super::ServerInfo::parse_info(&text);
            let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                (a, b) => a.or(b),
            };
            total.used_memory = add(total.used_memory, node.used_memory);
            total.evicted_keys = add(total.evicted_keys, node.evicted_keys);
            total.expired_keys = add(total.expired_keys, node.expired_keys);
            total.keyspace_hits = add(total.keyspace_hits, node.keyspace_hits);
            total.keyspace_misses = add(total.keyspace_misses, node.keyspace_misses);
            total.connected_clients = add(total.connected_clients, node.connected_clients);
            total.keys = add(total.keys, node.keys);
            total.maxmemory = total.maxmemory.or(node.maxmemory);
            total.maxmemory_policy = total.maxmemory_policy.or(node.maxmemory_policy);
        }
        Ok(total)
    }
}
