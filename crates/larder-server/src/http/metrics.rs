//! `GET /metrics`: the library's metrics (through the `metrics` facade)
//! rendered by the Prometheus exporter, plus figures taken at scrape time:
//! each entity's hit ratio and near-cache size, and the store's own
//! figures (Redis `INFO`).
//!
//! # Why a global recorder, installed by `serve::start`
//! The library resolves its metric handles when a cache is built, from the
//! process-wide recorder, so the recorder must exist before the first
//! entity is built; [`install`] runs first thing in
//! [`crate::serve::start`]. A process has one global recorder: [`install`]
//! keeps it in a `OnceLock`, so tests that start several services in one
//! process share it (their series add up per entity name).
//!
//! # Why the store is polled at scrape time
//! The Redis figures are read when Prometheus scrapes (bounded by
//! [`INFO_TIMEOUT`]): the scrape interval is the polling interval, and no
//! background task outlives the service. Histograms use buckets (not
//! summaries) so that they aggregate across instances.

use crate::serve::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use larder::store::ServerInfo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a scrape waits for the store's figures.
pub const INFO_TIMEOUT: Duration = Duration::from_millis(800);

/// Buckets of the `_seconds` histograms: 100 µs to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of `larder_writeback_batch_rows`: 1 to 10,000 rows.
pub const ROWS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// How often the exporter drains its histogram samples between scrapes
/// (so an unscraped service does not grow them without bound).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process' global recorder, once;
/// later calls return the same handle. If another recorder was installed
/// first (an embedding application's), that one keeps the library's
/// metrics and `/metrics` shows only the scrape-time figures.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("larder_writeback_batch_rows".into()),
                    ROWS_BUCKETS,
                )
            })
            // Both bucket lists are non-empty constants: this cannot fail,
            // but a builder without buckets is still a working recorder.
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed: /metrics shows only the scrape-time figures");
        }
        let upkeep = handle.clone();
        // A thread, not a task: it must outlive whichever runtime installed it.
        let spawned = std::thread::Builder::new()
            .name("larder-metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread: histograms are drained at scrape only");
        }
        handle
    })
}

/// The store's figures, or `None` if it does not answer in time (or is
/// the embedded `memory://`, which has no Redis figures to show).
pub async fn store_info(state: &AppState) -> Option<ServerInfo> {
    let store = state.store();
    if store.name().starts_with("memory:") {
        return None;
    }
    match tokio::time::timeout(INFO_TIMEOUT, store.server_info()).await {
        Ok(Ok(info)) => Some(info),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no store figures");
            None
        }
        Err(_) => None,
    }
}

/// Sets the Redis gauges from `info` (absent figures are left out).
fn set_redis_gauges(info: &ServerInfo) {
    let gauges = [
        ("larder_redis_used_memory_bytes", info.used_memory),
        ("larder_redis_maxmemory_bytes", info.maxmemory),
        ("larder_redis_connected_clients", info.connected_clients),
    ];
    for (name, value) in gauges {
        if let Some(v) = value {
            metrics::gauge!(name).set(v as f64);
        }
    }
    let counters = [
        ("larder_redis_evicted_keys_total", info.evicted_keys),
        ("larder_redis_expired_keys_total", info.expired_keys),
        ("larder_redis_keyspace_hits_total", info.keyspace_hits),
        ("larder_redis_keyspace_misses_total", info.keyspace_misses),
    ];
    for (name, value) in counters {
        if let Some(v) = value {
            metrics::counter!(name).absolute(v);
        }
    }
    if let Some(policy) = &info.maxmemory_policy {
        metrics::gauge!("larder_redis_maxmemory_policy_info", "policy" => policy.clone()).set(1.0);
    }
}

/// The help texts of the series set here.
fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        "larder_hit_ratio",
        "(l1 + hit + stale + negative) / all reads, since the service started."
    );
    describe_gauge!(
        "larder_redis_used_memory_bytes",
        Unit::Bytes,
        "Redis used_memory."
    );
    describe_gauge!(
        "larder_redis_maxmemory_bytes",
        Unit::Bytes,
        "Redis maxmemory (0: no limit)."
    );
    describe_gauge!("larder_redis_connected_clients", "Redis connected_clients.");
    describe_counter!("larder_redis_evicted_keys_total", "Redis evicted_keys.");
    describe_counter!("larder_redis_expired_keys_total", "Redis expired_keys.");
    describe_counter!("larder_redis_keyspace_hits_total", "Redis keyspace_hits.");
    describe_counter!(
        "larder_redis_keyspace_misses_total",
        "Redis keyspace_misses."
    );
    describe_gauge!(
        "larder_redis_maxmemory_policy_info",
        "Redis maxmemory-policy, as the label `policy`; always 1."
    );
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let handle = install();
    describe();
    for entity in state.entities() {
        // Taking stats also sets the entity's near-cache gauge.
        let stats = entity.cache.stats();
        metrics::gauge!("larder_hit_ratio", "entity" => entity.name().to_owned())
            .set(stats.hit_ratio());
    }
    super::collections::set_metrics(&state);
    super::boards::board_metrics(&state);
    let (info, cluster) = tokio::join!(store_info(&state), super::nodes::cluster_view(&state));
    if let Some(info) = info {
        set_redis_gauges(&info);
    }
    super::nodes::set_gauges(&cluster);
    let mut res = (StatusCode::OK, handle.render()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
