//! The row commands: keys `<entity>:<id>` over the entity's cache.
//!
//! Every engine call is the one the HTTP handlers make (`Cache::get`,
//! `get_many`, `put`, `patch`, `delete`, `invalidate`), with the same body
//! checks ([`crate::http::validate`]) and the same error codes
//! ([`ApiError::from_engine`]), worded `-ERR <code> <message>`. A row's JSON
//! bytes, as the cache holds them, are the reply's bulk (no re-encode).
//!
//! By default `DEL`/`UNLINK` invalidate and `SET`/`HSET` are refused: the
//! code Redis clients already run is cache-aside code that writes the
//! database itself. `resp_writes = true` makes them writes.

use super::{Args, Ctx, Spec};
use crate::http::error::ApiError;
use crate::http::validate::{check_row, Write};
use crate::resp::reply;
use crate::serve::{AppState, Entity};
use bytes::BytesMut;
use futures_util::future::join_all;
use larder::RawJson;
use serde_json::{Map, Value};
use std::sync::Arc;

/// A row read's answer, or why there is none.
type Row = Result<Option<Arc<RawJson>>, Refused>;

/// Why a key of a multi-key read has no answer.
#[derive(Debug, Clone)]
enum Refused {
    /// The key itself is bad (names no entity, or a bad id): `MGET`
    /// answers nil for it, as Redis' `MGET` never fails for one key.
    Key(String),
    /// The engine could not answer (the store down for a write-back
    /// entity, the database failing): the error line.
    Engine(String),
}

impl Refused {
    fn line(&self) -> &str {
        match self {
            Refused::Key(line) | Refused::Engine(line) => line,
        }
    }
}

/// `ERR <code> <message>` of an HTTP-shaped error.
fn api_line(err: &ApiError) -> String {
    format!("ERR {} {}", err.code, err.message)
}

/// The error line of an engine error: `TRYAGAIN` when the store is down
/// (a write-back entity cannot answer without it), else the HTTP code.
fn engine_line(e: &Entity, err: &larder::Error) -> String {
    match err.kind() {
        larder::ErrorKind::StoreUnavailable => {
            "TRYAGAIN the cache store is unavailable and this entity needs it: retry later"
                .to_owned()
        }
        larder::ErrorKind::BacklogFull => {
            "TRYAGAIN the write-back backlog is full: retry after it drains".to_owned()
        }
        _ => api_line(&ApiError::from_engine(e.name(), err)),
    }
}

/// The entity and the raw id of `key` (`<entity>:<id>`, split at the first `:`).
pub fn resolve<'s, 'k>(
    state: &'s AppState,
    key: &'k [u8],
) -> Result<(&'s Entity, &'k str), String> {
    let key =
        std::str::from_utf8(key).map_err(|_| "ERR bad_id the key is not valid UTF-8".to_owned())?;
    let Some((name, id)) = key.split_once(':') else {
        return Err(format!(
            "ERR unknown_entity key `{}` names no entity: keys are <entity>:<id>",
            super::clip(key, 80)
        ));
    };
    let entity = state
        .entity(name)
        .ok_or_else(|| api_line(&ApiError::unknown_entity(name)))?;
    Ok((entity, id))
}

/// The entity and canonical id of `key`, or the error line saying why
/// the key is bad (no store or database access).
fn resolve_id<'s>(state: &'s AppState, key: &[u8]) -> Result<(&'s Entity, String), String> {
    let (e, raw) = resolve(state, key)?;
    let id = e.cache.id_of(raw).map_err(|err| engine_line(e, &err))?;
    Ok((e, id))
}

/// Reads the rows of `keys` (any entities): per entity one `get_many`
/// (one store round trip, at most one query for the misses), the entities
/// concurrently. A bad key (no entity, a bad id) is refused alone, before
/// any read, so it never costs the others a round trip. Answers in `keys`
/// order.
async fn read_rows(state: &AppState, keys: &[&[u8]]) -> Vec<Row> {
    let mut answers: Vec<Row> = Vec::with_capacity(keys.len());
    // Groups of (entity, positions, canonical ids), in order of first appearance.
    let mut groups: Vec<(&Entity, Vec<usize>, Vec<String>)> = Vec::new();
    for (pos, key) in keys.iter().enumerate() {
        match resolve_id(state, key) {
            Ok((e, id)) => {
                answers.push(Ok(None));
                match groups.iter_mut().find(|g| std::ptr::eq(g.0, e)) {
                    Some(g) => {
                        g.1.push(pos);
                        g.2.push(id);
                    }
                    None => groups.push((e, vec![pos], vec![id])),
                }
            }
            Err(line) => answers.push(Err(Refused::Key(line))),
        }
    }
    let reads = groups.iter().map(|(e, _, ids)| async move {
        if let [id] = ids.as_slice() {
            return vec![one(e, id).await];
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        match e.cache.get_many(&refs).await {
            Ok(lookups) => lookups.into_iter().map(|l| Ok(l.value)).collect(),
            Err(err) => {
                let refused = Refused::Engine(engine_line(e, &err));
                ids.iter().map(|_| Err(refused.clone())).collect()
            }
        }
    });
    for ((_, positions, _), rows) in groups.iter().zip(join_all(reads).await) {
        for (pos, row) in positions.iter().zip(rows) {
            answers[*pos] = row;
        }
    }
    answers
}

async fn one(e: &Entity, id: &str) -> Row {
    e.cache
        .get(id)
        .await
        .map(|l| l.value)
        .map_err(|err| Refused::Engine(engine_line(e, &err)))
}

fn row_reply(out: &mut BytesMut, ctx_proto: reply::Proto, row: &Row) {
    match row {
        Ok(Some(row)) => reply::bulk(out, row.bytes()),
        Ok(None) => reply::nil(out, ctx_proto),
        Err(refused) => reply::error(out, refused.line()),
    }
}

/// `GET key`: the row as a JSON string, nil when there is none.
pub async fn get(ctx: &mut Ctx<'_>, key: &[u8]) {
    let row = match resolve(ctx.state, key) {
        Ok((e, id)) => one(e, id).await,
        Err(line) => Err(Refused::Key(line)),
    };
    row_reply(ctx.out, ctx.conn.proto, &row);
}

/// A pipelined run of `GET key`s: one batched read, one reply each.
pub async fn get_batch(ctx: &mut Ctx<'_>, keys: &[&[u8]]) {
    if let Some(index) = super::lookup(b"get") {
        ctx.shared.count_n(index, keys.len() as u64);
    }
    ctx.conn.last = "get";
    let rows = read_rows(ctx.state, keys).await;
    for row in &rows {
        row_reply(ctx.out, ctx.conn.proto, row);
    }
}

/// `MGET key…`: an array of rows, nil where there is none. As in Redis,
/// no single key fails the command: a key naming no entity or with a bad
/// id answers nil too, while the other keys are still read (one store
/// round trip and at most one query for the misses per entity). Only an
/// engine failure (the store down for a write-back entity, the database
/// failing) answers its error instead of the array.
pub async fn mget(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let keys: Vec<&[u8]> = args.iter_from(1).collect();
    let rows = read_rows(ctx.state, &keys).await;
    if let Some(Err(refused)) = rows.iter().find(|r| matches!(r, Err(Refused::Engine(_)))) {
        reply::error(ctx.out, refused.line());
        return;
    }
    reply::array(ctx.out, rows.len());
    for row in &rows {
        match row {
            Err(Refused::Key(_)) => reply::nil(ctx.out, ctx.conn.proto),
            row => row_reply(ctx.out, ctx.conn.proto, row),
        }
    }
}

/// `EXISTS key…`: how many of the keys have a row (read through; a key
/// given twice counts twice, as in Redis). As with `MGET`, a key that can
/// name no row (no such entity, an id the key column cannot hold) counts
/// 0, as a missing key does in Redis; only an engine failure answers its
/// error instead of the count.
pub async fn exists(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let keys: Vec<&[u8]> = args.iter_from(1).collect();
    let rows = read_rows(ctx.state, &keys).await;
    let mut n = 0;
    for row in &rows {
        match row {
            Ok(Some(_)) => n += 1,
            Ok(None) | Err(Refused::Key(_)) => {}
            Err(refused) => {
                reply::error(ctx.out, refused.line());
                return;
            }
        }
    }
    reply::int(ctx.out, n);
}

/// `TTL key` / `PTTL key`: read through like `GET`; `-2` when there is no
/// row, else the remaining freshness of the cached entry that answered,
/// by the cache's clock: seconds rounded to the nearest as Redis does
/// (`(ms + 500) / 1000`), or milliseconds. A `stale` answer is past its
/// freshness: `0`. An `l1` answer counts from the near cache's copy, whose
/// freshness is the entry's own. `-1` (a key without expiry, in Redis'
/// words) when no cached entry stands behind the row: read from the
/// database while the store is down, or a write-back write still pending.
pub async fn ttl(ctx: &mut Ctx<'_>, key: &[u8], millis: bool) {
    let (e, id) = match resolve(ctx.state, key) {
        Ok(r) => r,
        Err(line) => return reply::error(ctx.out, &line),
    };
    let lookup = match e.cache.get(id).await {
        Ok(lookup) => lookup,
        Err(err) => return reply::error(ctx.out, &engine_line(e, &err)),
    };
    if lookup.value.is_none() {
        return reply::int(ctx.out, -2);
    }
    let n = match e.cache.remaining_fresh(&lookup) {
        Some(left) => {
            let ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
            if millis {
                ms
            } else {
                ms.saturating_add(500) / 1000
            }
        }
        None => -1,
    };
    reply::int(ctx.out, n);
}

/// A row's columns in the row's own order (the table's), as `HGETALL`
/// lists them.
#[derive(Debug, Default)]
struct Columns(Vec<(String, Value)>);

impl Columns {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

impl<'de> serde::Deserialize<'de> for Columns {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Columns;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Columns, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some(pair) = m.next_entry::<String, Value>()? {
                    out.push(pair);
                }
                Ok(Columns(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A row as columns: `None` when there is no row.
async fn columns_of(ctx: &mut Ctx<'_>, key: &[u8]) -> Result<Option<Columns>, String> {
    let (e, id) = resolve(ctx.state, key)?;
    match one(e, id)
        .await
        .map_err(|refused| refused.line().to_owned())?
    {
        None => Ok(None),
        Some(row) => match serde_json::from_slice::<Columns>(row.bytes()) {
            Ok(columns) => Ok(Some(columns)),
            Err(_) => Err("ERR internal the cached row is not a JSON object".to_owned()),
        },
    }
}

/// A column as a hash field: plain text for text, JSON text for the rest,
/// `None` for SQL NULL (a hash has no such field).
fn field_text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
        other => Some(std::borrow::Cow::Owned(other.to_string())),
    }
}

fn field_reply(out: &mut BytesMut, proto: reply::Proto, value: Option<&Value>) {
    match value.and_then(field_text) {
        Some(text) => reply::bulk(out, text.as_bytes()),
        None => reply::nil(out, proto),
    }
}

/// `HGET key field`: one column of the row.
pub async fn hget(ctx: &mut Ctx<'_>, args: Args<'_>) {
    match columns_of(ctx, args.get(1)).await {
        Ok(row) => {
            let field = String::from_utf8_lossy(args.get(2));
            let value = row.as_ref().and_then(|r| r.get(field.as_ref()));
            field_reply(ctx.out, ctx.conn.proto, value);
        }
        Err(line) => reply::error(ctx.out, &line),
    }
}

/// `HMGET key field…`: columns of the row, nil where absent.
pub async fn hmget(ctx: &mut Ctx<'_>, args: Args<'_>) {
    match columns_of(ctx, args.get(1)).await {
        Ok(row) => {
            reply::array(ctx.out, args.len() - 2);
            for field in args.iter_from(2) {
                let field = String::from_utf8_lossy(field);
                let value = row.as_ref().and_then(|r| r.get(field.as_ref()));
                field_reply(ctx.out, ctx.conn.proto, value);
            }
        }
        Err(line) => reply::error(ctx.out, &line),
    }
}

/// `HGETALL key`: every non-null column (an empty map when there is no row).
pub async fn hgetall(ctx: &mut Ctx<'_>, key: &[u8]) {
    match columns_of(ctx, key).await {
        Ok(row) => {
            let row = row.unwrap_or_default();
            let fields: Vec<(&String, std::borrow::Cow<'_, str>)> = row
                .0
                .iter()
                .filter_map(|(k, v)| field_text(v).map(|t| (k, t)))
                .collect();
            reply::map(ctx.out, ctx.conn.proto, fields.len());
            for (k, v) in fields {
                reply::bulk(ctx.out, k.as_bytes());
                reply::bulk(ctx.out, v.as_bytes());
            }
        }
        Err(line) => reply::error(ctx.out, &line),
    }
}

/// Whether `SET`/`HSET`/`DEL` write the entity's rows.
fn writes(e: &Entity) -> bool {
    e.config.resp_writes
}

fn refused_write(e: &Entity, command: &str) -> String {
    format!(
        "ERR entity `{}` is read-through over RESP: {command} is refused and nothing was written (update the database, then DEL the key to invalidate it; or set resp_writes = true on the entity)",
        e.name()
    )
}

/// `DEL key…` / `UNLINK key…`: invalidates each key's cached row (the
/// next read loads it), or with `resp_writes` deletes the row. Every key
/// is checked before anything is done. Answers how many keys were
/// invalidated (or rows deleted).
pub async fn del(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let mut targets = Vec::with_capacity(args.len() - 1);
    for key in args.iter_from(1) {
        let (e, raw) = match resolve(ctx.state, key) {
            Ok(r) => r,
            Err(line) => return reply::error(ctx.out, &line),
        };
        match e.cache.id_of(raw) {
            Ok(id) => targets.push((e, id)),
            Err(err) => return reply::error(ctx.out, &engine_line(e, &err)),
        }
    }
    let mut n = 0;
    for (e, id) in targets {
        let done = if writes(e) {
            e.cache.delete(&id).await
        } else {
            e.cache.invalidate(&id).await.map(|()| true)
        };
        match done {
            Ok(true) => n += 1,
            Ok(false) => {}
            Err(err) => return reply::error(ctx.out, &engine_line(e, &err)),
        }
    }
    reply::int(ctx.out, n);
}

/// `SET key json`: with `resp_writes`, a PUT of the row (validated as PUT
/// is; no options). Otherwise refused.
pub async fn set(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let (e, raw) = match resolve(ctx.state, args.get(1)) {
        Ok(r) => r,
        Err(line) => return reply::error(ctx.out, &line),
    };
    if !writes(e) {
        return reply::error(ctx.out, &refused_write(e, "SET"));
    }
    if args.len() > 3 {
        let options: Vec<String> = args
            .iter_from(3)
            .map(|o| String::from_utf8_lossy(o).to_ascii_uppercase())
            .collect();
        return reply::error(
            ctx.out,
            &format!(
                "ERR SET options are refused ({}): SET <entity>:<id> <json row> writes the row under the entity's policy, whose ttl applies; nothing was written",
                super::clip(&options.join(" "), 80)
            ),
        );
    }
    let id = match e.cache.id_of(raw) {
        Ok(id) => id,
        Err(err) => return reply::error(ctx.out, &engine_line(e, &err)),
    };
    let row = match serde_json::from_slice::<Value>(args.get(2)) {
        Ok(Value::Object(row)) => row,
        Ok(_) => {
            return reply::error(
                ctx.out,
                "ERR bad_request the value must be a JSON object (the row)",
            )
        }
        Err(err) => {
            return reply::error(
                ctx.out,
                &format!("ERR bad_request the value is not valid JSON: {err}"),
            )
        }
    };
    if let Err(err) = check_row(e, &id, &row, Write::Replace) {
        return reply::error(ctx.out, &api_line(&err));
    }
    let Ok(value) = RawJson::from_bytes(Value::Object(row).to_string()) else {
        return reply::error(ctx.out, "ERR internal the row could not be encoded");
    };
    match e.cache.put(&id, &value).await {
        Ok(_) => reply::ok(ctx.out),
        Err(err) => reply::error(ctx.out, &engine_line(e, &err)),
    }
}

/// Whether a column's SQL type takes JSON strings (its hash field is plain text).
fn is_text_type(sql_type: &str) -> bool {
    let t = sql_type.to_ascii_lowercase();
    t.is_empty()
        || [
            "char", "text", "uuid", "date", "time", "clob", "inet", "cidr", "name",
        ]
        .iter()
        .any(|w| t.contains(w))
}

/// `HSET key field value…`: with `resp_writes`, a PATCH of those columns
/// (text columns take the value as text, others as JSON); answers the
/// number of fields written; an absent row is `-ERR not_found`.
pub async fn hset(ctx: &mut Ctx<'_>, args: Args<'_>) {
    if !args.len().is_multiple_of(2) {
        return super::wrong_arity(ctx.out, "hset");
    }
    let (e, raw) = match resolve(ctx.state, args.get(1)) {
        Ok(r) => r,
        Err(line) => return reply::error(ctx.out, &line),
    };
    if !writes(e) {
        return reply::error(ctx.out, &refused_write(e, "HSET"));
    }
    let id = match e.cache.id_of(raw) {
        Ok(id) => id,
        Err(err) => return reply::error(ctx.out, &engine_line(e, &err)),
    };
    let mut fields = Map::new();
    let mut words = args.iter_from(2);
    while let (Some(name), Some(value)) = (words.next(), words.next()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let text = String::from_utf8_lossy(value).into_owned();
        let column = e.columns().iter().find(|c| c.name == name);
        let value = match column {
            Some(c) if !is_text_type(&c.sql_type) => {
                serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))
            }
            _ => Value::String(text),
        };
        fields.insert(name, value);
    }
    if let Err(err) = check_row(e, &id, &fields, Write::Merge) {
        return reply::error(ctx.out, &api_line(&err));
    }
    let n = fields.len();
    match e.cache.patch(&id, &fields).await {
        Ok(Some(_)) => reply::int(ctx.out, n as i64),
        Ok(None) => reply::error(
            ctx.out,
            &format!("ERR not_found {} {id} does not exist", e.name()),
        ),
        Err(err) => reply::error(ctx.out, &engine_line(e, &err)),
    }
}

/// A collection command (`LRANGE`, `SISMEMBER`, `ZREVRANGE`, …): the key
/// must name a feed, set or leaderboard. None is configured yet, so an
/// entity's key is the wrong type and any other name is unknown.
pub fn collection(ctx: &mut Ctx<'_>, _spec: &Spec, args: Args<'_>) {
    match resolve(ctx.state, args.get(1)) {
        Ok(_) => reply::error(
            ctx.out,
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ),
        Err(_) => {
            let key = args.text(1);
            let name = key.split(':').next().unwrap_or_default();
            reply::error(
                ctx.out,
                &format!(
                    "ERR unknown_entity no feed, set or leaderboard `{}` is configured",
                    super::clip(name, 80)
                ),
            )
        }
    }
}
