//! The HTTP API: [`app`] builds the router from the shared state.
//!
//! Why `app(state) -> Router` and not a server: tests drive the real router
//! with `oneshot`, no socket; [`crate::serve::run`] puts it on a listener.
//!
//! - [`routes`]: the entity routes and admin actions;
//! - [`collections`]: the set routes (one namespace with entities);
//! - [`validate`]: bodies checked before any write;
//! - [`error`]: the one error type and its JSON body;
//! - [`auth`]: the bearer token and the public routes;
//! - [`stats`]: the `/v1/stats` document;
//! - [`metrics`]: `/metrics` (the Prometheus exporter);
//! - [`openapi`]: the OpenAPI document of [`ROUTES`];
//! - `/` and `/ui`: the dashboard ([`crate::ui`]).

pub mod auth;
pub mod collections;
pub mod error;
pub mod fields;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod routes;
pub mod stats;
pub mod validate;

use crate::serve::AppState;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

/// Every route: method and path (axum syntax), as the OpenAPI document lists them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/ui"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/{entity}"),
    ("GET", "/v1/{entity}/{id}"),
    ("PUT", "/v1/{entity}/{id}"),
    ("PATCH", "/v1/{entity}/{id}"),
    ("DELETE", "/v1/{entity}/{id}"),
    ("POST", "/v1/{entity}/{id}/invalidate"),
    ("POST", "/v1/{entity}/{id}/incr"),
    ("POST", "/v1/tags/{tag}/invalidate"),
    ("POST", "/v1/_admin/{entity}/purge"),
    ("POST", "/v1/_admin/{entity}/warm"),
    ("GET", "/v1/_admin/{entity}/dead-letters"),
    ("POST", "/v1/_admin/{entity}/dead-letters/retry"),
    ("GET", "/v1/{entity}/{id}/members/{member}"),
    ("PUT", "/v1/{entity}/{id}/members/{member}"),
    ("DELETE", "/v1/{entity}/{id}/members/{member}"),
    ("POST", "/v1/{entity}/{id}"),
    ("DELETE", "/v1/{entity}/{id}/items/{item}"),
];

/// The router of the whole API over `state`.
pub fn app(state: AppState) -> Router {
    let limit = state.config().body_limit.0;
    Router::new()
        .route("/", get(crate::ui::dashboard))
        .route("/ui", get(crate::ui::dashboard))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/stats", get(stats::stats))
        .route("/v1/{entity}", get(routes::get_many))
        .route(
            "/v1/{entity}/{id}",
            get(collections::get_row_or_set)
                .put(routes::put_row)
                .patch(routes::patch_row)
                .delete(routes::delete_row)
                .post(collections::append_item),
        )
        .route(
            "/v1/{entity}/{id}/items/{item}",
            axum::routing::delete(collections::delete_item),
        )
        .route(
            "/v1/{entity}/{id}/invalidate",
            post(collections::invalidate_row_or_owner),
        )
        .route("/v1/{entity}/{id}/incr", post(routes::incr_row))
        .route(
            "/v1/{entity}/{id}/members/{member}",
            get(collections::get_member)
                .put(collections::put_member)
                .delete(collections::delete_member),
        )
        .route("/v1/tags/{tag}/invalidate", post(routes::invalidate_tag))
        .route("/v1/_admin/{entity}/purge", post(routes::purge))
        .route("/v1/_admin/{entity}/warm", post(routes::warm))
        .route(
            "/v1/_admin/{entity}/dead-letters",
            get(routes::dead_letters),
        )
        .route(
            "/v1/_admin/{entity}/dead-letters/retry",
            post(routes::retry_dead_letters),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .fallback(not_found)
        .layer(middleware::map_response(error::json_errors))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> Response {
    error::ApiError::not_found("no such route").into_response()
}

/// `GET /health`: 200 while the process runs.
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /ready`: 200 `{"ready": true, "degraded": bool, ...}` while reads
/// can be served (degraded: the store does not answer, reads go to the
/// database); 503 when the database is down too and nothing can be served.
async fn ready(State(state): State<AppState>) -> Response {
    let (store, database) = tokio::join!(state.store_answers(), state.database_answers());
    let ready = database || store;
    let body = serde_json::json!({
        "ready": ready,
        "degraded": !(store && database),
        "store": store,
        "database": database,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
