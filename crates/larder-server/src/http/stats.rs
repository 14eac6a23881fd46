//! `/v1/stats`: the service's figures as JSON, for `larder stats`,
//! `larder top` and people.
//!
//! Per entity, from the library's `Cache::stats()`: its write policy,
//! reads by outcome, the hit ratio ((l1 + hit + stale + negative) / all),
//! loads and load errors, the mean, median and 99th percentile load time
//! (the database's side) beside the median and 99th percentile store read
//! (the cache's side), lease waits, refreshes, the near cache's entries and
//! evictions, and write-back's backlog, lag and dead letters. The store's own figures (used_memory,
//! maxmemory, maxmemory-policy, evictions, ...) come from
//! `Store::server_info`; on a Redis Cluster, `nodes` and `slots` show each
//! node and the slot coverage ([`super::nodes`]). The same events are counted for `/metrics`
//! ([`super::metrics`]), so the two agree.

use crate::serve::AppState;
use axum::extract::State;
use axum::Json;
use larder::{CacheStats, Outcome, WriteBackStats};
use serde_json::{json, Value};
use std::time::Duration;

fn mean_load_ms(s: &CacheStats) -> Option<f64> {
    (s.loads > 0).then(|| s.load_seconds_total * 1000.0 / s.loads as f64)
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

pub(crate) fn write_back_json(w: &WriteBackStats) -> Value {
    json!({
        "acknowledged": w.acknowledged,
        "increments": w.increments,
        "counter_batches": w.counter_batches,
        "coalesced": w.coalesced,
        "conflicts": w.conflicts,
        "batches": w.batches,
        "rows_written": w.rows_written,
        "retries": w.retries,
        "dead_lettered": w.dead_lettered,
        "backlog": w.backlog,
        "lag_ms": w.oldest_ms,
        "dead_letters": w.dead_letters,
    })
}

fn entity_json(write: &str, s: &CacheStats, w: Option<WriteBackStats>) -> Value {
    let reads: serde_json::Map<String, Value> = Outcome::ALL
        .iter()
        .map(|o| (o.as_str().to_owned(), json!(s.reads(*o))))
        .collect();
    json!({
        "write": write,
        "reads": reads,
        "reads_total": s.total_reads(),
        "hit_ratio": s.hit_ratio(),
        "loads": s.loads,
        "load_errors": s.load_errors,
        "load_ms_mean": mean_load_ms(s),
        "load_ms_p50": ms(s.load_p50),
        "load_ms_p99": ms(s.load_p99),
        "cache_ms_p50": ms(s.cache_p50),
        "cache_ms_p99": ms(s.cache_p99),
        "fills": s.fills,
        "fills_refused": s.fills_refused,
        "stale_on_error": s.stale_on_error,
        "lease_waits": s.lease_waits,
        "lease_takeovers": s.wait_timeouts,
        "refreshes": s.refreshes + s.early_refreshes,
        "l1_entries": s.near.l1_entries,
        "l1_evictions": s.near.l1_evictions,
        "invalidations_sent": s.near.invalidations_sent,
        "invalidations_received": s.near.invalidations_received,
        "write_back": w.as_ref().map(write_back_json),
    })
}

/// `GET /v1/stats`.
pub async fn stats(State(state): State<AppState>) -> Json<Value> {
    let entities: serde_json::Map<String, Value> = state
        .entities()
        .iter()
        .map(|e| {
            let json = entity_json(
                e.write.as_str(),
                &e.cache.stats(),
                e.cache.write_back_stats(),
            );
            (e.name().to_owned(), json)
        })
        .collect();
    let (redis, cluster) = tokio::join!(
        super::metrics::store_info(&state),
        super::nodes::cluster_view(&state)
    );
    Json(json!({
        "uptime_s": state.uptime().as_secs(),
        "store": state.store().name(),
        "entities": entities,
        "sets": super::collections::stats_json(&state),
        "feeds": super::collections::feed_stats_json(&state),
        "leaderboards": super::boards::stats_json(&state),
        "resp": crate::resp::stats_json(state.resp()),
        "redis": redis.map(|r| json!({
            "used_memory": r.used_memory,
            "maxmemory": r.maxmemory,
            "maxmemory_policy": r.maxmemory_policy,
            "evicted_keys": r.evicted_keys,
            "expired_keys": r.expired_keys,
            "keyspace_hits": r.keyspace_hits,
            "keyspace_misses": r.keyspace_misses,
            "connected_clients": r.connected_clients,
        })),
        "nodes": super::nodes::nodes_json(&cluster),
        "slots": super::nodes::slots_json(&cluster),
    }))
}
