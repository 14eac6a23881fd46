//! The collection routes: sets (`[[set]]`) and feeds (`[[feed]]`), in the
//! entities' namespace.
//!
//! A set's name sits where an entity's does, so `/v1/{name}/{owner}` and
//! `/v1/{name}/{owner}/invalidate` share their routes with the entity
//! routes: [`get_row_or_set`] and [`invalidate_row_or_owner`] hand a set's
//! name to the set handlers, a feed's to the feed handlers, a
//! leaderboard's to [`super::boards`] (as the `/members/{member}` handlers
//! do) and any other name to [`super::routes`].
//! Members live under `/members/{member}`, so no member can collide with
//! an action such as `/invalidate`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/{set}/{owner}?limit=100&cursor=…` | `{"count", "members", "cursor"}`, `X-Cache` |
//! | `GET /v1/{set}/{owner}/members/{member}` | `{"member": bool}`, `X-Cache` |
//! | `PUT /v1/{set}/{owner}/members/{member}` | 201 added, 200 already a member; write-back: 202 `{"queued": true, "owner", "member"}` |
//! | `DELETE /v1/{set}/{owner}/members/{member}` | 204, 404 not a member; write-back: 202 `{"queued": true, "owner", "member"}` |
//! | `POST /v1/{set}/{owner}/invalidate` | 204 |
//!
//! Under `write = "back"` a write is acknowledged (202) once a durable
//! store holds it beside the cached set; the flusher applies it later.
//!
//! `X-Cache` is `hit`, `miss`, `bypass` (the store is down), or `db`: the
//! owner has more than `max_members` members, so its pages and memberships
//! are indexed queries (its count is cached). Members are JSON strings (the
//! canonical text; integers in decimal). Bad input: an unknown name is 404
//! `unknown_entity`, a bad owner or member 400 `bad_id`, a bad `limit` or
//! `cursor` 400 `bad_request`; nothing is written.

use super::error::{clip, ApiError};
use super::routes::X_CACHE;
use crate::config::{Config, FeedConfig, SetConfig, SetWriteMode};
use crate::serve::{AppState, Named};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use larder::source::ChangeChannel;
use larder::store::Store;
use larder::{
    CollectionOutcome, CollectionStats, FeedCache, SetCache, SqlBoardSource, SqlFeedSource,
    SqlPool, SqlSetSource,
};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;

/// The default page of `GET /v1/{set}/{owner}`.
pub const DEFAULT_LIMIT: usize = 100;

/// One served set: its configuration and its cache.
#[derive(Debug, Clone)]
pub struct SetEntry {
    /// The configuration it was built from.
    pub config: SetConfig,
    /// The cache of the set's owners.
    pub cache: SetCache,
    /// The change-notification channel of its table (`cdc = true`).
    pub changes: Option<larder::source::ChangeChannel>,
}

/// The kinds of collection a config declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CollectionKind {
    /// `[[set]]`.
    Set,
    /// `[[feed]]`.
    Feed,
    /// `[[leaderboard]]`.
    Leaderboard,
}

impl CollectionKind {
    /// The config's table of this kind (`set`), which names its keys in
    /// errors (`set[0].table`).
    pub(crate) fn table(self) -> &'static str {
        match self {
            CollectionKind::Set => "set",
            CollectionKind::Feed => "feed",
            CollectionKind::Leaderboard => "leaderboard",
        }
    }
}

/// A collection's SQL source: `cdc = true` installs its change triggers.
pub(crate) trait ChangeTriggers {
    /// Installs the triggers on the source's table; their channel.
    fn install(&self) -> impl Future<Output = larder::Result<ChangeChannel>>;
}

impl ChangeTriggers for SqlSetSource {
    fn install(&self) -> impl Future<Output = larder::Result<ChangeChannel>> {
        self.install_change_triggers()
    }
}

impl ChangeTriggers for SqlFeedSource {
    fn install(&self) -> impl Future<Output = larder::Result<ChangeChannel>> {
        self.install_change_triggers()
    }
}

impl ChangeTriggers for SqlBoardSource {
    fn install(&self) -> impl Future<Output = larder::Result<ChangeChannel>> {
        self.install_change_triggers()
    }
}

/// Builds collection `i` of `kind`: its source (`source`, which checks
/// the table), its change triggers when `cdc`, and its cache (`cache`,
/// over the source). A failure stops startup at its key: `set[0].table`,
/// `set[0].cdc`, a refused setting at its own key (`set[0].max_members`;
/// a feed's at `feed[0]`), anything else at `set[0]`.
pub(crate) async fn build_collection<S, C, F>(
    config: &Config,
    (kind, i): (CollectionKind, usize),
    cdc: bool,
    source: impl Future<Output = larder::Result<S>>,
    cache: impl FnOnce(S) -> F,
) -> anyhow::Result<(C, Option<ChangeChannel>)>
where
    S: ChangeTriggers,
    F: Future<Output = larder::Result<C>>,
{
    let at = |key: &str| format!("{}[{i}]{key}", kind.table());
    let source = source
        .await
        .map_err(|e| config.error(at(".table"), crate::serve::one_line(&e)))?;
    let changes = if cdc {
        Some(
            source
                .install()
                .await
                .map_err(|e| config.error(at(".cdc"), crate::serve::one_line(&e)))?,
        )
    } else {
        None
    };
    let cache = cache(source).await.map_err(|e| match &e {
        larder::Error::InvalidSetting { setting, reason } if kind != CollectionKind::Feed => {
            config.error(at(&format!(".{setting}")), reason)
        }
        other => config.error(at(""), other),
    })?;
    Ok((cache, changes))
}

/// Builds every `[[set]]`: the source (schema and index checks) and the cache.
pub async fn build_sets(
    config: &Config,
    pool: &SqlPool,
    store: &Arc<dyn Store>,
) -> anyhow::Result<Vec<SetEntry>> {
    let mut sets = Vec::with_capacity(config.set.len());
    for (i, s) in config.set.iter().enumerate() {
        let source = SqlSetSource::builder(pool.clone(), &s.table)
            .owner(&s.owner)
            .member(&s.member)
            .name(&s.name)
            .build();
        let (cache, changes) =
            build_collection(config, (CollectionKind::Set, i), s.cdc, source, |source| {
                let builder = SetCache::builder()
                    .prefix(&config.store.prefix)
                    .name(&s.name)
                    .shards(s.shards)
                    .store(store.clone())
                    .source(source)
                    .max_members(s.max_members)
                    .ttl(s.ttl.0)
                    .stale(s.stale.0)
                    .lease_ttl(s.lease_ttl.0)
                    .wait_timeout(s.wait_timeout.map_or(s.lease_ttl.0, |d| d.0))
                    .read_only(s.write == SetWriteMode::ReadOnly);
                let builder = match s.write {
                    SetWriteMode::Back => builder.write_back(s.write_back.unwrap_or_default()),
                    _ => builder,
                };
                builder.build()
            })
            .await?;
        sets.push(SetEntry {
            config: s.clone(),
            cache,
            changes,
        });
    }
    Ok(sets)
}

fn set_of<'a>(state: &'a AppState, name: &str) -> Result<&'a SetEntry, ApiError> {
    state
        .set(name)
        .ok_or_else(|| ApiError::unknown_entity(name))
}

fn engine(s: &SetEntry) -> impl Fn(larder::Error) -> ApiError + '_ {
    move |err| ApiError::from_engine(&s.config.name, &err)
}

pub(crate) fn with_outcome(mut res: Response, outcome: CollectionOutcome) -> Response {
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(outcome.as_str()));
    res
}

/// `GET /v1/{name}/{id}`: a set's page when `name` is a set, else the
/// entity row read.
pub async fn get_row_or_set(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query.as_deref().unwrap_or_default();
    match state.resolve(&name) {
        Some(Named::Set(_)) => get_set(&state, &name, &id, q).await,
        Some(Named::Board(_)) => super::boards::get_board(&state, &name, &id, q).await,
        Some(Named::Feed(_)) => get_feed(&state, &name, &id, q).await,
        Some(Named::Entity(_)) | None => {
            super::routes::get_row(State(state), Path((name, id)), headers, RawQuery(query)).await
        }
    }
}

/// `POST /v1/{name}/{id}/invalidate`: a set's owner when `name` is a set,
/// else the entity row.
pub async fn invalidate_row_or_owner(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let collection = |e: larder::Error| ApiError::from_engine(&name, &e);
    match state.resolve(&name) {
        Some(Named::Set(s)) => s.cache.invalidate(&id).await.map_err(collection)?,
        Some(Named::Board(b)) => b.cache.invalidate(&id).await.map_err(collection)?,
        Some(Named::Feed(f)) => f.cache.invalidate(&id).await.map_err(collection)?,
        Some(Named::Entity(_)) | None => {
            return super::routes::invalidate_row(State(state), Path((name, id))).await
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn decode(what: &str, raw: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(&raw.replace('+', " "))
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request(format!("`{what}` is not valid UTF-8 once decoded")))
}

/// `GET /v1/{set}/{owner}?limit=100&cursor=…`.
async fn get_set(
    state: &AppState,
    name: &str,
    owner: &str,
    query: &str,
) -> Result<Response, ApiError> {
    let s = set_of(state, name)?;
    let mut limit = None;
    let mut cursor = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" if limit.is_none() => {
                let n: usize = v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "`limit` must be a number from 0 to {}, not {:?}",
                        larder::MAX_SET_PAGE,
                        clip(v)
                    ))
                })?;
                if n > larder::MAX_SET_PAGE {
                    return Err(ApiError::bad_request(format!(
                        "`limit` is at most {}",
                        larder::MAX_SET_PAGE
                    )));
                }
                limit = Some(n);
            }
            "cursor" if cursor.is_none() => cursor = Some(decode("cursor", v)?),
            "limit" | "cursor" => {
                return Err(ApiError::bad_request(format!("give `{k}` once")));
            }
            "" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}`: use ?limit=100&cursor=…",
                    clip(other)
                )))
            }
        }
    }
    let owner = s.cache.canonical_owner(owner).map_err(engine(s))?;
    if let Some(c) = &cursor {
        s.cache.canonical_member(c).map_err(|_| {
            ApiError::bad_request(
                "`cursor` is not a member of this set's type: use the cursor a page returned",
            )
        })?;
    }
    let read = s
        .cache
        .members(&owner, cursor.as_deref(), limit.unwrap_or(DEFAULT_LIMIT))
        .await
        .map_err(engine(s))?;
    let body = json!({
        "count": read.value.count,
        "members": read.value.members,
        "cursor": read.value.cursor,
    });
    Ok(with_outcome(Json(body).into_response(), read.outcome))
}

/// `GET /v1/{set}/{owner}/members/{member}`: `{"member": bool}` (a
/// leaderboard's name: its member's score and rank).
pub async fn get_member(
    State(state): State<AppState>,
    Path((name, owner, member)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    if state.board(&name).is_some() {
        return super::boards::get_member(&state, &name, &owner, &member).await;
    }
    let s = set_of(&state, &name)?;
    let read = s.cache.contains(&owner, &member).await.map_err(engine(s))?;
    Ok(with_outcome(
        Json(json!({ "member": read.value })).into_response(),
        read.outcome,
    ))
}

fn refuse_read_only(s: &SetEntry) -> Result<(), ApiError> {
    if !s.cache.is_writable() {
        return Err(ApiError::method_not_allowed(format!(
            "set `{}` is read-only: writes are not allowed",
            s.config.name
        )));
    }
    Ok(())
}

/// `PUT /v1/{set}/{owner}/members/{member}`: 201 added, 200 already a
/// member (a leaderboard's name: sets the member's score from the body).
pub async fn put_member(
    State(state): State<AppState>,
    Path((name, owner, member)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    if state.board(&name).is_some() {
        return super::boards::put_member(&state, &name, &owner, &member, &headers, body).await;
    }
    let s = set_of(&state, &name)?;
    refuse_read_only(s)?;
    let owner = s.cache.canonical_owner(&owner).map_err(engine(s))?;
    let member = s.cache.canonical_member(&member).map_err(engine(s))?;
    let added = s.cache.add(&owner, &member).await.map_err(engine(s))?;
    if s.cache.is_write_back() {
        return Ok(queued(&owner, &member));
    }
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "owner": owner, "member": member, "added": added })),
    )
        .into_response())
}

/// `DELETE /v1/{set}/{owner}/members/{member}`: 204, 404 not a member
/// (of a set or a leaderboard).
pub async fn delete_member(
    State(state): State<AppState>,
    Path((name, owner, member)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    if state.board(&name).is_some() {
        return super::boards::delete_member(&state, &name, &owner, &member).await;
    }
    let s = set_of(&state, &name)?;
    refuse_read_only(s)?;
    let owner = s.cache.canonical_owner(&owner).map_err(engine(s))?;
    let member = s.cache.canonical_member(&member).map_err(engine(s))?;
    let removed = s.cache.remove(&owner, &member).await.map_err(engine(s))?;
    if s.cache.is_write_back() {
        return Ok(queued(&owner, &member));
    }
    if removed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "{member} is not a member of {} {owner}",
            s.config.name
        )))
    }
}

/// A write-back set's answer to a write: 202 `{"queued": true, "owner",
/// "member"}` once the durable store holds it (whether it changed the set
/// is known only once read).
fn queued(owner: &str, member: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "queued": true, "owner": owner, "member": member })),
    )
        .into_response()
}

/// One collection's object in `/v1/stats`: its kind and write mode,
/// reads by outcome, loads, fills, writes, the last loaded size, and its
/// cap (`cap`: its name and value).
pub(crate) fn collection_stats_json(
    kind: CollectionKind,
    writable: bool,
    st: &CollectionStats,
    (cap, max): (&str, u64),
) -> Value {
    let reads = st.hits + st.misses + st.database + st.bypass + st.stale;
    let mut json = json!({
        "kind": kind.table(),
        "write": if writable { "through" } else { "read-only" },
        "reads": {
            "hit": st.hits,
            "miss": st.misses,
            "db": st.database,
            "bypass": st.bypass,
            "stale": st.stale,
        },
        "reads_total": reads,
        "hit_ratio": if reads == 0 { 0.0 } else { st.hits as f64 / reads as f64 },
        "loads": st.loads,
        "fills": st.fills,
        "fills_refused": st.fills_refused,
        "lease_waits": st.lease_waits,
        "writes_applied": st.writes_applied,
        "writes_deleted": st.writes_deleted,
        "last_size": st.last_size,
    });
    if let Value::Object(map) = &mut json {
        map.insert(cap.to_owned(), json!(max));
    }
    json
}

/// The `sets` object of `/v1/stats`: per set, reads by outcome, loads,
/// fills, writes and the last loaded size.
pub fn stats_json(state: &AppState) -> Value {
    let sets: serde_json::Map<String, Value> = state
        .sets()
        .iter()
        .map(|s| {
            let mut json = collection_stats_json(
                CollectionKind::Set,
                s.cache.is_writable(),
                &s.cache.stats(),
                ("max_members", s.cache.max_members()),
            );
            if let (Some(w), Value::Object(map)) = (s.cache.write_back_stats(), &mut json) {
                map.insert("write".to_owned(), json!("back"));
                map.insert("write_back".to_owned(), super::stats::write_back_json(&w));
            }
            (s.config.name.clone(), json)
        })
        .collect();
    Value::Object(sets)
}

/// Sets the per-set and per-feed figures for `/metrics`, taken at scrape
/// time.
pub fn set_metrics(state: &AppState) {
    for s in state.sets() {
        collection_metrics("set", &s.config.name, &s.cache.stats());
    }
    for f in state.feeds() {
        collection_metrics("feed", &f.config.name, &f.cache.stats());
    }
}

/// One collection's figures for `/metrics`: `larder_<kind>_reads_total`
/// by outcome, `_loads_total`, `_writes_total` by what the write did to the
/// cache, and the `_last_size` gauge, labelled `<kind>="<name>"`.
pub(crate) fn collection_metrics(kind: &'static str, name: &str, st: &CollectionStats) {
    for (outcome, n) in [
        ("hit", st.hits),
        ("miss", st.misses),
        ("db", st.database),
        ("bypass", st.bypass),
        ("stale", st.stale),
    ] {
        metrics::counter!(format!("larder_{kind}_reads_total"), kind => name.to_owned(), "outcome" => outcome)
            .absolute(n);
    }
    metrics::counter!(format!("larder_{kind}_loads_total"), kind => name.to_owned())
        .absolute(st.loads);
    for (cache, n) in [
        ("applied", st.writes_applied),
        ("deleted", st.writes_deleted),
    ] {
        metrics::counter!(format!("larder_{kind}_writes_total"), kind => name.to_owned(), "cache" => cache)
            .absolute(n);
    }
    metrics::gauge!(format!("larder_{kind}_last_size"), kind => name.to_owned())
        .set(st.last_size as f64);
}

/// One served feed: its configuration and its cache.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    /// The configuration it was built from.
    pub config: FeedConfig,
    /// The cache of the feed's owners.
    pub cache: FeedCache,
    /// The change-notification channel of its table (`cdc = true`).
    pub changes: Option<larder::source::ChangeChannel>,
}

/// Builds every `[[feed]]`: the source (order checks) and the cache.
pub async fn build_feeds(
    config: &Config,
    pool: &SqlPool,
    store: &Arc<dyn Store>,
) -> anyhow::Result<Vec<FeedEntry>> {
    let mut feeds = Vec::with_capacity(config.feed.len());
    for (i, f) in config.feed.iter().enumerate() {
        let source = SqlFeedSource::builder(pool.clone(), &f.table)
            .owner(&f.owner)
            .item_key(&f.item_key)
            .order(f.order.clone())
            .columns(f.columns.clone())
            .name(&f.name)
            .build();
        let (cache, changes) =
            build_collection(config, (CollectionKind::Feed, i), f.cdc, source, |source| {
                FeedCache::builder()
                    .prefix(&config.store.prefix)
                    .name(&f.name)
                    .shards(f.shards)
                    .store(store.clone())
                    .source(source)
                    .max_len(f.max_len)
                    .ttl(f.ttl.0)
                    .stale(f.stale.0)
                    .lease_ttl(f.lease_ttl.0)
                    .wait_timeout(f.wait_timeout.map_or(f.lease_ttl.0, |d| d.0))
                    .build()
            })
            .await?;
        feeds.push(FeedEntry {
            config: f.clone(),
            cache,
            changes,
        });
    }
    Ok(feeds)
}

fn feed_of<'a>(state: &'a AppState, name: &str) -> Result<&'a FeedEntry, ApiError> {
    state
        .feed(name)
        .ok_or_else(|| ApiError::unknown_entity(name))
}

/// `GET /v1/{feed}/{owner}?offset=0&limit=20`: `{"items", "offset",
/// "limit", "more"}` with `X-Cache` (`db`: a page past `max_len` of a feed
/// longer than that, from the database and not cached).
async fn get_feed(
    state: &AppState,
    name: &str,
    owner: &str,
    query: &str,
) -> Result<Response, ApiError> {
    let f = feed_of(state, name)?;
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
                    "unknown query parameter `{}`: use ?offset=0&limit=20",
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
    let limit = limit.unwrap_or(20);
    if limit > larder::MAX_FEED_PAGE as u64 {
        return Err(ApiError::bad_request(format!(
            "`limit` is at most {}",
            larder::MAX_FEED_PAGE
        )));
    }
    let offset = offset.unwrap_or(0);
    if offset > larder::MAX_FEED_OFFSET {
        return Err(ApiError::bad_request(format!(
            "`offset` is at most {}",
            larder::MAX_FEED_OFFSET
        )));
    }
    let read = f
        .cache
        .page(owner, offset, limit as usize)
        .await
        .map_err(|e| ApiError::from_engine(&f.config.name, &e))?;
    // The rows are spliced in as the bytes the cache holds.
    let mut body =
        String::with_capacity(64 + read.value.items.iter().map(String::len).sum::<usize>());
    body.push_str("{\"items\":[");
    body.push_str(&read.value.items.join(","));
    body.push_str(&format!(
        "],\"offset\":{offset},\"limit\":{limit},\"more\":{}}}",
        read.value.more
    ));
    let mut res = Response::new(axum::body::Body::from(body));
    res.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(with_outcome(res, read.outcome))
}

fn refuse_read_only_feed(f: &FeedEntry) -> Result<(), ApiError> {
    if f.config.write == SetWriteMode::ReadOnly {
        return Err(ApiError::method_not_allowed(format!(
            "feed `{}` is read-only: writes are not allowed",
            f.config.name
        )));
    }
    Ok(())
}

/// `POST /v1/{feed}/{owner}` with a row: appended (the database first);
/// 201 with the stored row. Its owner column, if given, must be `owner`.
pub async fn append_item(
    State(state): State<AppState>,
    Path((name, owner)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    if matches!(
        state.resolve(&name),
        Some(Named::Entity(_) | Named::Set(_) | Named::Board(_))
    ) {
        // An entity's row or a set's owner has no POST: 405 with Allow, as
        // the router answers any other method a route lacks.
        let mut res = ApiError::method_not_allowed(format!(
            "POST is for feeds; `{name}` answers GET, PUT, PATCH and DELETE here"
        ))
        .into_response();
        res.headers_mut().insert(
            axum::http::header::ALLOW,
            HeaderValue::from_static("GET,HEAD,PUT,PATCH,DELETE"),
        );
        return Ok(res);
    }
    let f = feed_of(&state, &name)?;
    refuse_read_only_feed(f)?;
    let row = super::validate::json_object(&headers, body)?;
    let stored = f.cache.append(&owner, row).await.map_err(|e| match &e {
        // The usual code of an entity's row check.
        larder::Error::InvalidRow { reason, .. } if reason.starts_with("unknown column") => {
            ApiError::new(StatusCode::BAD_REQUEST, "unknown_column", reason.clone())
        }
        _ => ApiError::from_engine(&f.config.name, &e),
    })?;
    let mut res = Response::new(axum::body::Body::from(stored));
    *res.status_mut() = StatusCode::CREATED;
    res.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// `DELETE /v1/{feed}/{owner}/items/{item}`: 204, 404 if absent.
pub async fn delete_item(
    State(state): State<AppState>,
    Path((name, owner, item)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let f = feed_of(&state, &name)?;
    refuse_read_only_feed(f)?;
    let engine = |e: larder::Error| ApiError::from_engine(&f.config.name, &e);
    if f.cache.delete(&owner, &item).await.map_err(engine)? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "item {item} is not in {} {owner}",
            f.config.name
        )))
    }
}

/// The `feeds` object of `/v1/stats`.
pub fn feed_stats_json(state: &AppState) -> Value {
    let feeds: serde_json::Map<String, Value> = state
        .feeds()
        .iter()
        .map(|f| {
            let json = collection_stats_json(
                CollectionKind::Feed,
                f.config.write != SetWriteMode::ReadOnly,
                &f.cache.stats(),
                ("max_len", f.config.max_len),
            );
            (f.config.name.clone(), json)
        })
        .collect();
    Value::Object(feeds)
}
