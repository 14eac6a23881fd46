//! `/v1/stats` (JSON) and `/metrics` (Prometheus text): the same figures.
//!
//! Per entity, from the library's `Cache::stats()`: reads by outcome, the
//! hit ratio ((l1 + hit + stale + negative) / all), loads and load errors,
//! and the mean load time. The library keeps a load-time total, not a
//! histogram, so p50/p99 are `null` until it does (see the report). Redis
//! figures (used_memory, maxmemory, maxmemory-policy, evicted_keys) come
//! from `INFO` on a connection of the service's own: the library has no
//! INFO API yet. Write-back figures (backlog, lag, dead letters) are `null`
//! until write-back is merged.

use crate::serve::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use larder::{CacheStats, Outcome};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::Duration;

/// How long the service waits for Redis' INFO.
const INFO_TIMEOUT: Duration = Duration::from_millis(800);

/// Redis server figures from `INFO`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisInfo {
    /// `used_memory`, bytes.
    pub used_memory: Option<u64>,
    /// `maxmemory`, bytes (0: no limit).
    pub maxmemory: Option<u64>,
    /// `maxmemory_policy` (`noeviction`, `allkeys-lru`, ...).
    pub maxmemory_policy: Option<String>,
    /// `evicted_keys` since the server started.
    pub evicted_keys: Option<u64>,
}

impl RedisInfo {
    /// Parses `INFO` text (`field:value` lines).
    pub fn parse(text: &str) -> RedisInfo {
        let mut info = RedisInfo::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            match k {
                "used_memory" => info.used_memory = v.parse().ok(),
                "maxmemory" => info.maxmemory = v.parse().ok(),
                "maxmemory_policy" => info.maxmemory_policy = Some(v.to_owned()),
                "evicted_keys" => info.evicted_keys = v.parse().ok(),
                _ => {}
            }
        }
        info
    }
}

/// `INFO memory` + `INFO stats` of the configured Redis; `None` for
/// `memory://` or when Redis does not answer in time.
pub async fn redis_info(url: &str) -> Option<RedisInfo> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return None;
    }
    let work = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let memory: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .ok()?;
        let stats: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await
            .ok()?;
        Some(RedisInfo::parse(&format!("{memory}\n{stats}")))
    };
    tokio::time::timeout(INFO_TIMEOUT, work)
        .await
        .ok()
        .flatten()
}

fn mean_load_ms(s: &CacheStats) -> Option<f64> {
    (s.loads > 0).then(|| s.load_seconds_total * 1000.0 / s.loads as f64)
}

fn entity_json(s: &CacheStats, write_back: Option<larder::WriteBackStats>) -> Value {
    let reads: serde_json::Map<String, Value> = Outcome::ALL
        .iter()
        .map(|o| (o.as_str().to_owned(), json!(s.reads(*o))))
        .collect();
    json!({
        "reads": reads,
        "reads_total": s.total_reads(),
        "hit_ratio": s.hit_ratio(),
        "loads": s.loads,
        "load_errors": s.load_errors,
        "load_ms_mean": mean_load_ms(s),
        "load_ms_p50": null,
        "load_ms_p99": null,
        "fills": s.fills,
        "fills_refused": s.fills_refused,
        "stale_on_error": s.stale_on_error,
        "write_back": write_back.map(|w| json!({
            "backlog": w.backlog,
            "lag_ms": w.oldest_ms,
            "dead_letters": w.dead_letters,
            "acknowledged": w.acknowledged,
            "coalesced": w.coalesced,
            "batches": w.batches,
            "rows_written": w.rows_written,
            "retries": w.retries,
        })),
    })
}

/// A per-entity metric: name, type, help, and its value from the stats.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&CacheStats) -> f64,
);

/// `GET /v1/stats`.
pub async fn stats(State(state): State<AppState>) -> Json<Value> {
    let entities: serde_json::Map<String, Value> = state
        .entities()
        .iter()
        .map(|e| {
            (
                e.name().to_owned(),
                entity_json(&e.cache.stats(), e.cache.write_back_stats()),
            )
        })
        .collect();
    let redis = redis_info(&state.config().store.url).await;
    Json(json!({
        "uptime_s": state.uptime().as_secs(),
        "store": state.store().name(),
        "entities": entities,
        "redis": redis.map(|r| json!({
            "used_memory": r.used_memory,
            "maxmemory": r.maxmemory,
            "maxmemory_policy": r.maxmemory_policy,
            "evicted_keys": r.evicted_keys,
        })),
    }))
}

/// `GET /metrics`: the figures of `/v1/stats` in Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::with_capacity(4096);
    let all: Vec<(String, CacheStats)> = state
        .entities()
        .iter()
        .map(|e| (e.name().to_owned(), e.cache.stats()))
        .collect();
    family(
        &mut out,
        "larder_reads_total",
        "counter",
        "Reads by outcome.",
    );
    for (name, s) in &all {
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "larder_reads_total{{entity=\"{name}\",outcome=\"{}\"}} {}",
                o.as_str(),
                s.reads(o)
            );
        }
    }
    let per_entity: [Family; 6] = [
        (
            "larder_hit_ratio",
            "gauge",
            "(l1 + hit + stale + negative) / all reads.",
            |s| s.hit_ratio(),
        ),
        (
            "larder_loads_total",
            "counter",
            "Loads from the database.",
            |s| s.loads as f64,
        ),
        (
            "larder_load_errors_total",
            "counter",
            "Loads that failed or timed out.",
            |s| s.load_errors as f64,
        ),
        (
            "larder_load_seconds_total",
            "counter",
            "Time spent loading, in seconds.",
            |s| s.load_seconds_total,
        ),
        (
            "larder_fills_total",
            "counter",
            "Loaded values written to the store.",
            |s| s.fills as f64,
        ),
        (
            "larder_fills_refused_total",
            "counter",
            "Fills refused because a write or invalidation voided the lease.",
            |s| s.fills_refused as f64,
        ),
    ];
    for (metric, kind, help, value) in per_entity {
        family(&mut out, metric, kind, help);
        for (name, s) in &all {
            let _ = writeln!(out, "{metric}{{entity=\"{name}\"}} {}", value(s));
        }
    }
    if let Some(r) = redis_info(&state.config().store.url).await {
        for (metric, kind, help, value) in [
            (
                "larder_redis_used_memory_bytes",
                "gauge",
                "Redis used_memory.",
                r.used_memory,
            ),
            (
                "larder_redis_maxmemory_bytes",
                "gauge",
                "Redis maxmemory (0: no limit).",
                r.maxmemory,
            ),
            (
                "larder_redis_evicted_keys_total",
                "counter",
                "Redis evicted_keys.",
                r.evicted_keys,
            ),
        ] {
            if let Some(v) = value {
                family(&mut out, metric, kind, help);
                let _ = writeln!(out, "{metric} {v}");
            }
        }
        if let Some(policy) = &r.maxmemory_policy {
            family(
                &mut out,
                "larder_redis_maxmemory_policy_info",
                "gauge",
                "Redis maxmemory-policy, as a label.",
            );
            let _ = writeln!(
                out,
                "larder_redis_maxmemory_policy_info{{policy=\"{policy}\"}} 1"
            );
        }
    }
    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info() {
        let info = RedisInfo::parse(
            "# Memory\r\nused_memory:1024\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n# Stats\r\nevicted_keys:3\r\n",
        );
        assert_eq!(info.used_memory, Some(1024));
        assert_eq!(info.maxmemory, Some(0));
        assert_eq!(info.maxmemory_policy.as_deref(), Some("noeviction"));
        assert_eq!(info.evicted_keys, Some(3));
    }
}
