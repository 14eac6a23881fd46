//! The entity routes: reads, writes, invalidation and the admin actions.
//!
//! Each handler is a thin shell over one engine call: find the entity,
//! canonicalise the id (`007` → `7`, `abc` → 400 `bad_id`), check the body
//! ([`super::validate`]), call the cache, turn its answer into HTTP. A hit
//! sends the cached row's bytes as they are (pass-through codec: no parse,
//! no re-encode).

use super::error::{clip, ApiError};
use super::validate::{check_incr, check_row, json_object, Write};
use crate::config::WriteMode;
use crate::serve::{AppState, Entity, Named};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use larder::{CacheWrite, Lookup, Outcome, RawJson, Written};
use std::collections::HashSet;

/// The most ids one multi-get may ask for.
pub const MAX_IDS: usize = 1000;

/// The `X-Cache` header: the read's outcome.
pub const X_CACHE: &str = "x-cache";

fn entity<'a>(state: &'a AppState, name: &str) -> Result<&'a Entity, ApiError> {
    state
        .entity(name)
        .ok_or_else(|| ApiError::unknown_entity(name))
}

fn canonical(e: &Entity, raw: &str) -> Result<String, ApiError> {
    e.cache
        .id_of(raw)
        .map_err(|err| ApiError::from_engine(e.name(), &err))
}

fn engine(e: &Entity) -> impl Fn(larder::Error) -> ApiError + '_ {
    move |err| ApiError::from_engine(e.name(), &err)
}

fn json_bytes(status: StatusCode, bytes: Bytes) -> Response {
    let mut res = Response::new(Body::from(bytes));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn with_outcome(mut res: Response, outcome: Outcome) -> Response {
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(outcome.as_str()));
    res
}

/// `GET /v1/{entity}/{id}`: the row (200) or 404, with `X-Cache`.
/// `Cache-Control: no-cache` drops the cached entry first, so the row is
/// read from the database and cached anew (outcome `miss`).
/// `?fields=a,b`: just those columns ([`super::fields`]).
pub async fn get_row(
    State(state): State<AppState>,
    Path((name, raw_id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let e = entity(&state, &name)?;
    let id = canonical(e, &raw_id)?;
    let fields = fields_of(e, query.as_deref())?;
    let no_cache = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
        });
    if no_cache {
        // Under write-back a pending write survives the invalidation: its
        // value is the newest data, so it stays the answer.
        match e.cache.invalidate(&id).await {
            Ok(()) => {}
            // The read below bypasses the store anyway.
            Err(err) if err.is_store_unavailable() => {}
            Err(err) => return Err(engine(e)(err)),
        }
    }
    // A hash entity reads just the fields (one HMGET on a fresh entry).
    let hash = e.config.representation == larder::Representation::Hash;
    let Lookup { value, outcome, .. } = match &fields {
        Some(fields) if hash => {
            let names: Vec<&str> = fields.iter().map(String::as_str).collect();
            e.cache.get_fields(&id, &names).await
        }
        _ => e.cache.get(&id).await,
    }
    .map_err(engine(e))?;
    let res = match value {
        Some(row) => match &fields {
            Some(_) if hash => json_bytes(StatusCode::OK, row.bytes().clone()),
            Some(fields) => json_bytes(
                StatusCode::OK,
                Bytes::from(super::fields::project(e, row.bytes(), fields)?),
            ),
            None => json_bytes(StatusCode::OK, row.bytes().clone()),
        },
        None => ApiError::not_found(format!("{name} {id} does not exist")).into_response(),
    };
    Ok(with_outcome(res, outcome))
}

/// `GET /v1/{entity}?ids=1,2,3`: `{"items": {...}, "missing": [...]}`.
/// Ids are split on `,` and then percent-decoded (so `%2C` is part of a
/// text id; for integer and uuid keys, which hold no comma, `%2C`
/// separates ids too), canonicalised and de-duplicated; at most [`MAX_IDS`]. One `MGET`,
/// one database query for the misses (the library's `get_many`).
pub async fn get_many(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let e = entity(&state, &name)?;
    let query = query.unwrap_or_default();
    let mut raw_ids = None;
    let fields = fields_of(e, Some(&query))?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "ids" if raw_ids.is_none() => raw_ids = Some(v),
            "ids" => return Err(ApiError::bad_request("give `ids` once")),
            "fields" => {}
            "" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}`: use ?ids=1,2,3",
                    clip(other)
                )))
            }
        }
    }
    let Some(raw_ids) = raw_ids.filter(|v| !v.is_empty()) else {
        return Err(ApiError::bad_request(
            "list the ids to read: ?ids=1,2,3 (at most 1000)",
        ));
    };
    let mut ids: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for piece in raw_ids.split(',') {
        let decoded = percent_encoding::percent_decode_str(piece)
            .decode_utf8()
            .map_err(|_| ApiError::bad_request("an id is not valid UTF-8 once percent-decoded"))?;
        // An id that cannot hold a comma (an integer or uuid key) had its
        // separators percent-encoded by the client: split it there.
        let pieces: Vec<&str> = match canonical(e, &decoded) {
            Err(_) if decoded.contains(',') => decoded.split(',').collect(),
            _ => vec![&decoded],
        };
        for piece in pieces {
            let id = canonical(e, piece)?;
            if seen.insert(id.clone()) {
                ids.push(id);
            }
            if ids.len() > MAX_IDS {
                return Err(ApiError::bad_request(format!(
                    "too many ids: at most {MAX_IDS} per request"
                )));
            }
        }
    }
    let keys: Vec<&str> = ids.iter().map(String::as_str).collect();
    let answers = e.cache.get_many(&keys).await.map_err(engine(e))?;
    // The rows are spliced in as the bytes the cache holds.
    let mut body: Vec<u8> = Vec::with_capacity(64 * ids.len() + 32);
    body.extend_from_slice(b"{\"items\":{");
    let mut missing = Vec::new();
    let mut first = true;
    for (id, answer) in ids.iter().zip(&answers) {
        match &answer.value {
            Some(row) => {
                if !first {
                    body.push(b',');
                }
                first = false;
                write_json_string(&mut body, id);
                body.push(b':');
                match &fields {
                    Some(fields) => {
                        body.extend_from_slice(&super::fields::project(e, row.bytes(), fields)?);
                    }
                    None => body.extend_from_slice(row.bytes()),
                }
            }
            None => missing.push(id.as_str()),
        }
    }
    body.extend_from_slice(b"},\"missing\":");
    body.extend_from_slice(
        serde_json::to_string(&missing)
            .unwrap_or_default()
            .as_bytes(),
    );
    body.push(b'}');
    Ok(json_bytes(StatusCode::OK, Bytes::from(body)))
}

/// The `fields=` of a query string, checked; `None` when not given.
fn fields_of(e: &Entity, query: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
    let mut found = None;
    for pair in query.unwrap_or_default().split('&') {
        if let Some(("fields", v)) = pair.split_once('=') {
            if found.is_some() {
                return Err(ApiError::bad_request("give `fields` once"));
            }
            found = Some(super::fields::parse(e, v)?);
        } else if pair == "fields" {
            return Err(ApiError::bad_request(
                "list the columns to read: ?fields=a,b",
            ));
        }
    }
    Ok(found)
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(serde_json::to_string(s).unwrap_or_default().as_bytes());
}

fn refuse_read_only(e: &Entity) -> Result<(), ApiError> {
    if e.write == WriteMode::ReadOnly {
        return Err(ApiError::method_not_allowed(format!(
            "entity `{}` is read-only: writes are not allowed",
            e.name()
        )));
    }
    Ok(())
}

/// The answer to a successful write: the stored row (200), or 202
/// `{"queued": true, "durable": …, "id": ...}` when a write-back cache
/// queued it.
fn write_answer(id: &str, written: Written<RawJson>) -> Response {
    let word = match written.cache {
        CacheWrite::Updated => "updated",
        CacheWrite::Invalidated => "invalidated",
        CacheWrite::Unreachable => "unreachable",
        CacheWrite::Queued => return queued(id, true),
        CacheWrite::Unconfirmed => return queued(id, false),
        // `CacheWrite` is non-exhaustive: a future word is reported as is.
        _ => "updated",
    };
    let mut res = json_bytes(StatusCode::OK, written.value.bytes().clone());
    res.headers_mut()
        .insert("x-cache-write", HeaderValue::from_static(word));
    res
}

/// 202 `{"queued": true, "durable": …, "id": ...}`: a write-back write
/// recorded; `durable` is false when a Redis Cluster master's replicas did
/// not all confirm it in time (the write is visible and will very
/// probably be flushed, but a failover could lose it).
fn queued(id: &str, durable: bool) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "queued": true, "durable": durable, "id": id })),
    )
        .into_response()
}

/// The checks of a PUT or PATCH, in order: the entity exists and accepts
/// writes, the id fits the key column, the body is a JSON object, the row
/// passes [`check_row`]. Nothing is written before all of them pass.
fn write_request<'a>(
    state: &'a AppState,
    name: &str,
    raw_id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    write: Write,
) -> Result<
    (
        &'a Entity,
        String,
        serde_json::Map<String, serde_json::Value>,
    ),
    ApiError,
> {
    let e = entity(state, name)?;
    refuse_read_only(e)?;
    let id = canonical(e, raw_id)?;
    let mut row = json_object(headers, body)?;
    whole_numbers_as_integers(e, &mut row);
    check_row(e, &id, &row, write)?;
    Ok((e, id, row))
}

/// Writes a number with no fractional part (`7.0`, `1e3`) given for an
/// integer column (or an integer array's element) as an integer: JSON
/// Schema, and so the OpenAPI document, calls it an integer.
fn whole_numbers_as_integers(e: &Entity, row: &mut serde_json::Map<String, serde_json::Value>) {
    fn fix(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Array(items) => items.iter_mut().for_each(fix),
            serde_json::Value::Number(n) => {
                if let Some(i) = super::validate::whole_number(n) {
                    *v = serde_json::Value::from(i);
                }
            }
            _ => {}
        }
    }
    for c in e.columns() {
        let integer = match c.sql_type.trim().strip_suffix("[]") {
            Some(element) => super::openapi::element_int_range(element).is_some(),
            None => c.int_range().is_some(),
        };
        if integer {
            if let Some(v) = row.get_mut(&c.name) {
                fix(v);
            }
        }
    }
}

/// `PUT /v1/{entity}/{id}`: writes the given columns, creating the row if
/// absent. Columns the body leaves out keep their stored value (a new row:
/// their default, or NULL), with or without a default.
pub async fn put_row(
    State(state): State<AppState>,
    Path((name, raw_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (e, id, row) = write_request(&state, &name, &raw_id, &headers, body, Write::Replace)?;
    let raw = RawJson::from_bytes(serde_json::Value::Object(row).to_string())
        .map_err(|_| ApiError::internal())?;
    let written = e.cache.put(&id, &raw).await.map_err(engine(e))?;
    Ok(write_answer(&id, written))
}

/// `PATCH /v1/{entity}/{id}`: merges the given columns (404 if absent).
pub async fn patch_row(
    State(state): State<AppState>,
    Path((name, raw_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (e, id, fields) = write_request(&state, &name, &raw_id, &headers, body, Write::Merge)?;
    match e.cache.patch(&id, &fields).await.map_err(engine(e))? {
        Some(written) => Ok(write_answer(&id, written)),
        None => Err(ApiError::not_found(format!("{name} {id} does not exist"))),
    }
}

/// `POST /v1/{entity}/{id}/incr` with `{"column": "views", "by": 1}`:
/// adds `by` to the column in the database (one `UPDATE`, exact) and
/// answers the row as stored (200, cached as writes are), or 404 if there
/// is no row, 409 `conflict` if the sum is beyond the column's range
/// (nothing written either way). See [`check_incr`] for the body's codes.
/// Under write-back (a `hash` entity's integer column) the increment is
/// counted in the cache and recorded durably: 202 `{"queued": true,
/// "value": <the column's new value>}`; a sum beyond the range is 409 as
/// well (nothing recorded).
pub async fn incr_row(
    State(state): State<AppState>,
    Path((name, raw_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let e = entity(&state, &name)?;
    refuse_read_only(e)?;
    let id = canonical(e, &raw_id)?;
    let body = json_object(&headers, body)?;
    let (column, by) = check_incr(e, &body)?;
    let incremented = e.cache.incr(&id, &column, &by).await.map_err(|err| {
        // The database refuses the sum, or (written back) the cache does:
        // the same conflict.
        let beyond = err.kind() == larder::ErrorKind::InvalidValue;
        if beyond {
            // The request is fine; the row's current value makes the sum
            // impossible: a conflict with the resource's state.
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("the sum is beyond column `{column}`'s range; nothing was written"),
            )
        } else {
            ApiError::from_engine(e.name(), &err)
        }
    })?;
    match incremented {
        Some(written) if written.cache.is_queued() => {
            // Written back: 202 with the column's new value, as the cache
            // counted it.
            let value = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
                written.value.bytes(),
            )
            .ok()
            .and_then(|mut row| row.remove(&column))
            .unwrap_or(serde_json::Value::Null);
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({
                    "queued": true,
                    "durable": written.cache == CacheWrite::Queued,
                    "value": value
                })),
            )
                .into_response())
        }
        Some(written) => Ok(write_answer(&id, written)),
        None => Err(ApiError::not_found(format!("{name} {id} does not exist"))),
    }
}

/// `DELETE /v1/{entity}/{id}`: 204, or 404 if there was no row.
pub async fn delete_row(
    State(state): State<AppState>,
    Path((name, raw_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let e = entity(&state, &name)?;
    refuse_read_only(e)?;
    let id = canonical(e, &raw_id)?;
    if e.cache.delete(&id).await.map_err(engine(e))? {
        if e.write == WriteMode::Back {
            // The tombstone is durably recorded; the flusher applies it.
            return Ok(queued(&id, true));
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("{name} {id} does not exist")))
    }
}

/// `POST /v1/{entity}/{id}/invalidate`: 204; the next read is a miss.
pub async fn invalidate_row(
    State(state): State<AppState>,
    Path((name, raw_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let e = entity(&state, &name)?;
    let id = canonical(e, &raw_id)?;
    e.cache.invalidate(&id).await.map_err(engine(e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/tags/{tag}/invalidate`: every entry carrying the tag, in
/// every entity with tags, is a miss from now on (on every instance); 204.
pub async fn invalidate_tag(
    State(state): State<AppState>,
    Path(tag): Path<String>,
) -> Result<Response, ApiError> {
    // Checked here too: with no tagged entity the loop below checks nothing.
    if tag.is_empty() || tag.len() > larder::MAX_TAG_LEN {
        return Err(ApiError::bad_request(format!(
            "a tag is 1 to {} bytes, this one has {}",
            larder::MAX_TAG_LEN,
            tag.len()
        )));
    }
    for e in state
        .entities()
        .iter()
        .filter(|e| !e.config.tags.is_empty())
    {
        e.cache.invalidate_tag(&tag).await.map_err(engine(e))?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/_admin/{entity}/purge`: every entry of the entity is a miss
/// from now on, on every instance (its generation is bumped); 204. For a
/// set or a feed, every owner's cached collection is invalidated (a scan
/// of the store: see `SetCache::purge`).
pub async fn purge(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let collection = |err: larder::Error| ApiError::from_engine(&name, &err);
    match state.resolve(&name) {
        Some(Named::Set(s)) => {
            s.cache.purge().await.map_err(collection)?;
        }
        Some(Named::Board(b)) => {
            b.cache.purge().await.map_err(collection)?;
        }
        Some(Named::Feed(f)) => {
            f.cache.purge().await.map_err(collection)?;
        }
        Some(Named::Entity(e)) => {
            e.cache.purge().await.map_err(engine(e))?;
        }
        None => return Err(ApiError::unknown_entity(&name)),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/_admin/{entity}/warm`: loads every row into the cache;
/// `{"warmed": N}` with N the entries written.
pub async fn warm(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let e = entity(&state, &name)?;
    let done = e
        .cache
        .warm_all(larder::WarmOptions::default(), |_| {})
        .await
        .map_err(engine(e))?;
    Ok(axum::Json(serde_json::json!({
        "warmed": done.written,
        "skipped": done.skipped,
    }))
    .into_response())
}

/// `GET /v1/_admin/{entity}/dead-letters`: the writes the database
/// refused at flush time, with the error and the refused row.
pub async fn dead_letters(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(b) = state.board(&name).filter(|b| b.cache.is_write_back()) {
        let letters = b.cache.dead_letters().await;
        let letters = letters.map_err(|err| ApiError::from_engine(&b.config.name, &err))?;
        return Ok(member_dead_letters(&letters, false));
    }
    if let Some(s) = state.set(&name).filter(|s| s.cache.is_write_back()) {
        let letters = s.cache.dead_letters().await;
        let letters = letters.map_err(|err| ApiError::from_engine(&s.config.name, &err))?;
        return Ok(member_dead_letters(&letters, true));
    }
    let e = write_back_entity(&state, &name)?;
    let letters = e.cache.dead_letters().await.map_err(engine(e))?;
    let items: Vec<serde_json::Value> = letters
        .iter()
        .map(|l| {
            let row = l
                .value
                .as_ref()
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v.bytes()).ok());
            serde_json::json!({
                "id": l.id,
                "error": l.error,
                "code": l.code,
                "failed_at_ms": l.failed_at_ms,
                "delete": l.value.is_none() && l.deltas.is_none(),
                "row": row,
                "deltas": l.deltas,
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "dead_letters": items })).into_response())
}

/// `POST /v1/_admin/{entity}/dead-letters/retry`: records every dead
/// letter again as a new write (unless a newer write of its id is
/// pending; an increment's deltas go back among the pending increments);
/// `{"retried": N}`.
pub async fn retry_dead_letters(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if state.set(&name).is_some_and(|s| s.cache.is_write_back()) {
        return Err(ApiError::method_not_allowed(format!(
            "retrying the dead letters of set `{name}` is not built: list them with GET and write the members again"
        )));
    }
    if state.board(&name).is_some_and(|b| b.cache.is_write_back()) {
        return Err(ApiError::method_not_allowed(format!(
            "retrying the dead letters of leaderboard `{name}` is not built: list them with GET and write the members again"
        )));
    }
    let e = write_back_entity(&state, &name)?;
    let retried = e.cache.retry_dead_letters().await.map_err(engine(e))?;
    Ok(axum::Json(serde_json::json!({ "retried": retried })).into_response())
}

/// A write-back leaderboard's dead letters: each refused member
/// operation with its owner, the database's error and code, and the
/// operation (`{"add": n}`, `{"set": n}` or `"remove"`).
/// The dead letters of a write-back leaderboard or `set` as JSON: a
/// set's operation is `"add"` or `"remove"`, a board's `{"add": n}`,
/// `{"set": n}` or `"remove"`.
fn member_dead_letters(letters: &[larder::store::BoardDeadLetter], set: bool) -> Response {
    let items: Vec<serde_json::Value> = letters
        .iter()
        .map(|l| {
            let why: serde_json::Value = serde_json::from_str(&l.why).unwrap_or_default();
            let op = match l.op {
                Some(larder::store::MemberOp::Remove) if set => serde_json::json!("remove"),
                Some(_) if set => serde_json::json!("add"),
                Some(larder::store::MemberOp::Add(n)) => serde_json::json!({ "add": n }),
                Some(larder::store::MemberOp::Set(n)) => serde_json::json!({ "set": n }),
                Some(larder::store::MemberOp::Remove) => serde_json::json!("remove"),
                None => serde_json::Value::Null,
            };
            serde_json::json!({
                "owner": l.owner,
                "member": l.member,
                "error": why["error"],
                "code": why["code"],
                "failed_at_ms": why["failed_at_ms"],
                "op": op,
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "dead_letters": items })).into_response()
}

/// A write-back entity; others have no dead letters: 404.
fn write_back_entity<'a>(state: &'a AppState, name: &str) -> Result<&'a Entity, ApiError> {
    let e = entity(state, name)?;
    if e.write != WriteMode::Back {
        return Err(ApiError::not_found(format!(
            "entity `{}` is not write-back: it has no dead letters",
            e.name()
        )));
    }
    Ok(e)
}
