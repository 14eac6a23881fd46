//! The leaderboard routes (`[[leaderboard]]`), in the entities' namespace.
//!
//! A board's name sits where an entity's does: `GET /v1/{board}/{owner}`,
//! `POST /v1/{board}/{owner}/invalidate` and the `/members/{member}`
//! routes are shared with entities and sets, and the dispatchers in
//! [`super::collections`] hand a board's name to the handlers here.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/{board}/{owner}?offset=0&limit=10` | `{"count", "items": [{"member", "score", "rank"}]}`, `X-Cache` |
//! | `GET /v1/{board}/{owner}/members/{member}` | `{"member", "score", "rank"}`, `X-Cache`; 404 if absent |
//! | `PUT /v1/{board}/{owner}/members/{member}` `{"score": 10}` | 200 `{"member", "score"}`; write-back: 202 `{"queued": true, "member", "score"}` |
//! | `DELETE /v1/{board}/{owner}/members/{member}` | 204, 404 if absent; write-back: 202 `{"queued": true, "member", "removed"}` |
//! | `POST /v1/{board}/{owner}/members/{member}/incr` `{"by": 5}` | 200 `{"member", "score"}`; write-back: 202 `{"queued": true, "member", "score"}` |
//! | `POST /v1/{board}/{owner}/invalidate` | 204 |
//!
//! Under `write = "back"` a write is acknowledged (202) once a durable
//! Redis holds it, the database gets it from the flusher (exactly once);
//! `score` is the member's score after the write as the cache answers it
//! (read through when the owner's board was not cached), `removed` whether
//! the member was there.
//! Highest score first, ties in descending byte order of the member's
//! text; `rank` is 1-based. `X-Cache` is `hit`, `miss`, `bypass`, or `db`
//! (an owner above `max_members`, answered by indexed queries). Scores of
//! an integer column are JSON integers, of a double column JSON numbers.
//! Bad input: an unknown name 404 `unknown_entity`; a bad owner or member
//! 400 `bad_id`; a bad `offset`/`limit` 400 `bad_request`; a body that is
//! not a JSON object 400 `bad_request`, a field other than `by`/`score`
//! 400 `unknown_column`, a missing one 400 `missing_column`, a value that
//! is not a number of the column's type (an integer column: a whole
//! number within ±2^53) 400 `type_mismatch`; nothing is written.

use super::collections::{build_collection, collection_stats_json, with_outcome, CollectionKind};
use super::error::{clip, ApiError};
use crate::config::{BoardConfig, Config, SetWriteMode};
use crate::serve::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use larder::store::Store;
use larder::{Leaderboard, Ranked, ScoreKind, SqlBoardSource, SqlPool};
use serde_json::{json, Value};
use std::sync::Arc;

/// The default page of `GET /v1/{board}/{owner}`.
pub const DEFAULT_LIMIT: u64 = 10;

/// The largest integer score a Redis double holds exactly.
const MAX_EXACT: i64 = 1 << 53;

/// One served leaderboard: its configuration and its cache.
#[derive(Debug, Clone)]
pub struct BoardEntry {
    /// The configuration it was built from.
    pub config: BoardConfig,
    /// The cache of the board's owners.
    pub cache: Leaderboard,
    /// The change-notification channel of its table (`cdc = true`).
    pub changes: Option<larder::source::ChangeChannel>,
}

/// Builds every `[[leaderboard]]`: the source (schema and index checks)
/// and the cache.
pub async fn build_boards(
    config: &Config,
    pool: &SqlPool,
    store: &Arc<dyn Store>,
) -> anyhow::Result<Vec<BoardEntry>> {
    let mut boards = Vec::with_capacity(config.leaderboard.len());
    for (i, b) in config.leaderboard.iter().enumerate() {
        let source = SqlBoardSource::builder(pool.clone(), &b.table)
            .owner(&b.owner)
            .member(&b.member)
            .score(&b.score)
            .name(&b.name)
            .build();
        let kind = (CollectionKind::Leaderboard, i);
        let (cache, changes) = build_collection(config, kind, b.cdc, source, |source| {
            let builder = Leaderboard::builder()
                .prefix(&config.store.prefix)
                .name(&b.name)
                .shards(b.shards)
                .store(store.clone())
                .source(source)
                .max_members(b.max_members)
                .ttl(b.ttl.0)
                .stale(b.stale.0)
                .lease_ttl(b.lease_ttl.0)
                .wait_timeout(b.wait_timeout.map_or(b.lease_ttl.0, |d| d.0))
                .read_only(b.write == SetWriteMode::ReadOnly);
            let builder = match b.write {
                SetWriteMode::Back => builder.write_back(b.write_back.unwrap_or_default()),
                _ => builder,
            };
            builder.build()
        })
        .await?;
        boards.push(BoardEntry {
            config: b.clone(),
            cache,
            changes,
        });
    }
    Ok(boards)
}

fn board_of<'a>(state: &'a AppState, name: &str) -> Result<&'a BoardEntry, ApiError> {
    state
        .board(name)
        .ok_or_else(|| ApiError::unknown_entity(name))
}

fn engine(b: &BoardEntry) -> impl Fn(larder::Error) -> ApiError + '_ {
    move |err| ApiError::from_engine(&b.config.name, &err)
}

/// A score as JSON: an integer on an integer column.
fn score_json(b: &BoardEntry, score: f64) -> Value {
    match b.cache.score_kind() {
        // Exact: the board holds integers within ±2^53.
        ScoreKind::Integer => json!(score as i64),
        ScoreKind::Float => json!(score),
    }
}

fn ranked_json(b: &BoardEntry, r: &Ranked) -> Value {
    json!({ "member": r.member, "score": score_json(b, r.score), "rank": r.rank })
}

/// `GET /v1/{board}/{owner}?offset=0&limit=10`.
pub async fn get_board(
    state: &AppState,
    name: &str,
    owner: &str,
    query: &str,
) -> Result<Response, ApiError> {
    let b = board_of(state, name)?;
    let mut offset = None;
    let mut limit = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            "offset" => &mut offset,
            "limit" => &mut limit,
            "" => continue,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}`: use ?offset=0&limit=10",
                    clip(other)
                )))
            }
        };
        if slot.is_some() {
            return Err(ApiError::bad_request(format!("give `{k}` once")));
        }
        *slot = Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("`{k}` must be a number, not {:?}", clip(v)))
        })?);
    }
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit > larder::MAX_BOARD_PAGE {
        return Err(ApiError::bad_request(format!(
            "`limit` is at most {}",
            larder::MAX_BOARD_PAGE
        )));
    }
    let offset = offset.unwrap_or(0);
    if offset > larder::MAX_BOARD_OFFSET {
        return Err(ApiError::bad_request(format!(
            "`offset` is at most {}",
            larder::MAX_BOARD_OFFSET
        )));
    }
    let read = b.cache.top(owner, offset, limit).await.map_err(engine(b))?;
    let items: Vec<Value> = read.value.items.iter().map(|r| ranked_json(b, r)).collect();
    let body = json!({ "count": read.value.count, "items": items });
    Ok(with_outcome(Json(body).into_response(), read.outcome))
}

/// `GET /v1/{board}/{owner}/members/{member}`.
pub async fn get_member(
    state: &AppState,
    name: &str,
    owner: &str,
    member: &str,
) -> Result<Response, ApiError> {
    let b = board_of(state, name)?;
    let read = b.cache.rank(owner, member).await.map_err(engine(b))?;
    match read.value {
        Some(r) => Ok(with_outcome(
            Json(ranked_json(b, &r)).into_response(),
            read.outcome,
        )),
        None => {
            let res = ApiError::not_found(format!(
                "{} is not a member of {} {}",
                clip(member),
                b.config.name,
                clip(owner)
            ))
            .into_response();
            Ok(with_outcome(res, read.outcome))
        }
    }
}

fn refuse_read_only(b: &BoardEntry) -> Result<(), ApiError> {
    if !b.cache.is_writable() {
        return Err(ApiError::method_not_allowed(format!(
            "leaderboard `{}` is read-only: writes are not allowed",
            b.config.name
        )));
    }
    Ok(())
}

/// The one number field `field` of a write's body, checked against the
/// board's score type.
fn number_field(
    b: &BoardEntry,
    field: &'static str,
    headers: &HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<f64, ApiError> {
    let map = super::validate::json_object(headers, body)?;
    if let Some(other) = map.keys().find(|k| k.as_str() != field) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_column",
            format!(
                "unknown field `{}`: the body is {{\"{field}\": <number>}}",
                clip(other)
            ),
        ));
    }
    let Some(v) = map.get(field) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_column",
            format!("the body needs `{field}`: {{\"{field}\": <number>}}"),
        ));
    };
    let mismatch =
        |why: &str| ApiError::new(StatusCode::BAD_REQUEST, "type_mismatch", why.to_owned());
    let Value::Number(n) = v else {
        return Err(mismatch(&format!("`{field}` must be a number")));
    };
    match b.cache.score_kind() {
        ScoreKind::Integer => {
            let Some(i) = n.as_i64() else {
                return Err(mismatch(&format!(
                    "`{field}` must be an integer within ±2^53 (the score column is an integer)"
                )));
            };
            if !(-MAX_EXACT..=MAX_EXACT).contains(&i) {
                return Err(mismatch(&format!(
                    "`{field}` must be within ±2^53 ({MAX_EXACT}): Redis scores are doubles"
                )));
            }
            Ok(i as f64)
        }
        ScoreKind::Float => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| mismatch(&format!("`{field}` must be a finite number"))),
    }
}

/// `PUT /v1/{board}/{owner}/members/{member}` with `{"score": 10}`.
pub async fn put_member(
    state: &AppState,
    name: &str,
    owner: &str,
    member: &str,
    headers: &HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let b = board_of(state, name)?;
    refuse_read_only(b)?;
    let owner = b.cache.canonical_owner(owner).map_err(engine(b))?;
    let member = b.cache.canonical_member(member).map_err(engine(b))?;
    let score = number_field(b, "score", headers, body)?;
    let stored = b
        .cache
        .set_score(&owner, &member, score)
        .await
        .map_err(engine(b))?;
    Ok(written(
        b,
        json!({ "member": member, "score": score_json(b, stored) }),
    ))
}

/// `DELETE /v1/{board}/{owner}/members/{member}`: 204, 404 if absent.
pub async fn delete_member(
    state: &AppState,
    name: &str,
    owner: &str,
    member: &str,
) -> Result<Response, ApiError> {
    let b = board_of(state, name)?;
    refuse_read_only(b)?;
    let owner = b.cache.canonical_owner(owner).map_err(engine(b))?;
    let member = b.cache.canonical_member(member).map_err(engine(b))?;
    let removed = b.cache.remove(&owner, &member).await.map_err(engine(b))?;
    if b.cache.is_write_back() {
        Ok(written(b, json!({ "member": member, "removed": removed })))
    } else if removed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "{member} is not a member of {} {owner}",
            b.config.name
        )))
    }
}

/// `POST /v1/{board}/{owner}/members/{member}/incr` with `{"by": 5}`: the
/// database first, then the cached board; 200 with the new score.
pub async fn incr_member(
    State(state): State<AppState>,
    Path((name, owner, member)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let b = board_of(&state, &name)?;
    refuse_read_only(b)?;
    let owner = b.cache.canonical_owner(&owner).map_err(engine(b))?;
    let member = b.cache.canonical_member(&member).map_err(engine(b))?;
    let by = number_field(b, "by", &headers, body)?;
    let score = b.cache.incr(&owner, &member, by).await.map_err(engine(b))?;
    Ok(written(
        b,
        json!({ "member": member, "score": score_json(b, score) }),
    ))
}

/// A write's answer: 200 with `body`, or under write-back 202 with
/// `"queued": true` added.
fn written(b: &BoardEntry, mut body: Value) -> Response {
    if !b.cache.is_write_back() {
        return Json(body).into_response();
    }
    if let Value::Object(map) = &mut body {
        map.insert("queued".to_owned(), Value::Bool(true));
    }
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// The `leaderboards` object of `/v1/stats`: per board, reads by outcome,
/// loads, fills, writes and the last loaded size.
pub fn stats_json(state: &AppState) -> Value {
    let boards: serde_json::Map<String, Value> = state
        .boards()
        .iter()
        .map(|b| {
            let mut json = collection_stats_json(
                CollectionKind::Leaderboard,
                b.cache.is_writable(),
                &b.cache.stats(),
                ("max_members", b.cache.max_members()),
            );
            if let (Some(w), Value::Object(map)) = (b.cache.write_back_stats(), &mut json) {
                map.insert("write".to_owned(), json!("back"));
                map.insert("write_back".to_owned(), super::stats::write_back_json(&w));
            }
            (b.config.name.clone(), json)
        })
        .collect();
    Value::Object(boards)
}

/// Sets the per-board figures for `/metrics`, taken at scrape time.
pub fn board_metrics(state: &AppState) {
    for b in state.boards() {
        super::collections::collection_metrics("leaderboard", &b.config.name, &b.cache.stats());
    }
}
