//! Bearer-token authentication: an admin token and a read-only token.
//!
//! Why a route layer: what a request needs depends on the matched route
//! (`/v1/{entity}/{id}` for GET) and, for row reads, on the entity's
//! `public_reads`, which axum knows only after routing. With a token
//! configured, every route needs `Authorization: Bearer <token>` except the
//! [`Access::Open`] ones; the read token opens the [`Access::Read`] and
//! [`Access::RowRead`] routes and answers 403 on the others. Without a
//! token, nothing is checked.
//!
//! | route | no token | read token | admin token |
//! |---|---|---|---|
//! | `/health`, `/ready`, `/v1/openapi.json`, the dashboard (`/`, `/ui`) | yes | yes | yes |
//! | row reads, public entity | yes | yes | yes |
//! | row reads, other entities | 401 | yes | yes |
//! | `/v1/stats`, `/metrics` | 401 | yes | yes |
//! | writes, invalidations, `/v1/_admin/*` | 401 | 403 | yes |

use super::error::{forbidden, unauthorized};
use crate::serve::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// What a route needs when a token is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Never a token: liveness, readiness, the OpenAPI document, the
    /// dashboard's page (its data calls need [`Access::Read`]).
    Open,
    /// A row read (`GET /v1/{entity}/{id}`, `GET /v1/{entity}?ids=`):
    /// either token, or none for an entity with `public_reads`.
    RowRead,
    /// Either token: `/v1/stats`, `/metrics`.
    Read,
    /// The admin token only: writes, invalidations, `/v1/_admin/*`.
    Admin,
}

/// What `method route` (a route of [`super::ROUTES`], HEAD as GET) needs.
pub fn access(method: &Method, route: &str) -> Access {
    let read = method == Method::GET || method == Method::HEAD;
    match route {
        "/" | "/ui" | "/health" | "/ready" | "/v1/openapi.json" if read => Access::Open,
        "/v1/{entity}/{id}" | "/v1/{entity}" if read => Access::RowRead,
        "/v1/{entity}/{id}/members/{member}" if read => Access::RowRead,
        "/v1/stats" | "/metrics" if read => Access::Read,
        _ => Access::Admin,
    }
}

/// Which token a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Admin,
    Reader,
    /// No token, or one that is neither.
    Unknown,
}

fn caller(state: &AppState, token: &str, req: &Request) -> Caller {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return Caller::Unknown;
    };
    // Both comparisons run, so the time does not tell which token matched.
    let admin = same(given.as_bytes(), token.as_bytes());
    let reader = state
        .read_token()
        .is_some_and(|r| same(given.as_bytes(), r.as_bytes()));
    match (admin, reader) {
        (true, _) => Caller::Admin,
        (false, true) => Caller::Reader,
        (false, false) => Caller::Unknown,
    }
}

/// Whether the row reads of the entity named in `path` (`/v1/{entity}…`)
/// are public: `[auth] public_reads`, or the entity's own. An unknown
/// entity is not public (its 404 is for callers with a token).
fn reads_are_public(state: &AppState, path: &str) -> bool {
    if state.config().auth.public_reads {
        return true;
    }
    let Some(segment) = path.split('/').nth(2) else {
        return false;
    };
    let Ok(name) = percent_encoding::percent_decode_str(segment).decode_utf8() else {
        return false;
    };
    state.entity(&name).is_some_and(|e| e.config.public_reads)
        || state.set(&name).is_some_and(|s| s.config.public_reads)
        || state.feed(&name).is_some_and(|f| f.config.public_reads)
        || state.board(&name).is_some_and(|b| b.config.public_reads)
}

/// The middleware: passes what [`access`] allows the request's token.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.token() else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    // A method the route does not have reaches no handler: axum answers 405.
    if !super::ROUTES
        .iter()
        .any(|(m, r)| *r == route && *m == method.as_str())
    {
        return next.run(req).await;
    }
    let need = access(&method, &route);
    let allowed = match need {
        Access::Open => true,
        Access::RowRead if reads_are_public(&state, req.uri().path()) => true,
        Access::RowRead | Access::Read | Access::Admin => {
            match (caller(&state, token, &req), need) {
                (Caller::Admin, _) => true,
                (Caller::Reader, Access::Admin) => return forbidden().into_response(),
                (Caller::Reader, _) => true,
                (Caller::Unknown, _) => false,
            }
        }
    };
    if allowed {
        return next.run(req).await;
    }
    let mut res = unauthorized().into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
