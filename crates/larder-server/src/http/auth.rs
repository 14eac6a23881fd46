//! Bearer-token authentication.
//!
//! Why a route layer: whether a request is public depends on the matched
//! route (`/v1/{entity}/{id}` for GET), which axum knows only after
//! routing. With a token configured, every request needs
//! `Authorization: Bearer <token>` except exactly [`PUBLIC`].

use super::error::unauthorized;
use crate::serve::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The routes (GET only) that never need the token.
pub const PUBLIC: &[&str] = &[
    "/health",
    "/ready",
    "/v1/openapi.json",
    "/v1/{entity}/{id}",
    "/v1/{entity}",
];

/// Whether `method path` (a matched route) is public.
pub fn is_public(method: &Method, route: &str) -> bool {
    method == Method::GET && PUBLIC.contains(&route)
}

/// The middleware: passes public routes and requests with the right token.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.token() else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    if is_public(req.method(), &route) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let mut res = unauthorized().into_response();
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            res
        }
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
