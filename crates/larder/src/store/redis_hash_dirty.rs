//! Write-back on hash entries (`representation = hash` under write-back):
//! the scripts and record formats behind [`DirtyLog`](super::DirtyLog)'s
//! operations for a value key whose segment is `h:` (`redis_dirty.rs`
//! dispatches here), the read lease and the fill that `redis_hash.rs`
//! runs for every hash entry (with no dirty record they act as the plain
//! ones), and the parsing of records for the flusher.
//!
//! Why a patch needs no read-modify-write here: a string entry is one
//! value, so a patch must read it, merge and compare-and-set. A hash entry
//! holds one field per column, so a patch is one script that sets just
//! the patched fields (and their kinds in the reserved field's directory,
//! see `representation.rs`) and adds them to the key's dirty record. Two
//! instances patching different fields of one key both land; two patches
//! of one field coalesce (the later wins, as the later acknowledgement).
//!
//! The dirty record of a field patch is a record kind of its own, in the
//! same key as a string record (`…:{e:s}:d:<id>`), so the string format
//! (`seq`, `del`, `val`) is unchanged:
//!
//! | field | what |
//! |---|---|
//! | `seq`, `del`, `val` | as for strings; `val` is the `put` payload of a `row` record, empty for `fields` |
//! | `kind` | `row` (a `put`, flushed as an upsert) or `fields` (flushed as an UPDATE of the dirty columns) |
//! | `c:<name>` | a dirty column's value as JSON text (`null` for SQL NULL) |
//! | `t:<name>` | the same value as plain text, when it is a JSON string (how the hash stores it) |
//!
//! When the hash is absent (expired, never loaded) a patch records its
//! fields and voids the read lease without creating a partial hash; a
//! fill ([`RedisStore::hash_fill_overlay`]) lays the pending fields over
//! the loaded row in its script, so a fill never overwrites a pending
//! write (and the reader, told the fill did not land as loaded, lays the
//! pending record over its own row: `cache/write_back/overlay.rs`). A patch when the row is known not to exist (a pending tombstone
//! or a negative entry) records nothing. Every key a script touches is in
//! its KEYS, all in the entry's shard slot; no script builds a key name.

use super::counters::CounterKeys;
use super::dirty::Patched;
use super::redis::{ms, RedisStore};
use super::redis_counters::counter_keys_of_dirty;
use super::replica_wait::Resend;
#[cfg(test)]
use super::{Acquired, LeaseRequest};
use super::{Fill, Recorded};
use crate::error::{Error, Message, Result};
use crate::representation::to_fields;
use redis::{Script, Value};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

/// Lua helpers: the reserved field's directory (see `representation.rs`:
/// a 24-byte header, an optional u16-prefixed stamp, a u16 column count,
/// then per column a kind byte, a u16 name length and the name) and the
/// application of one dirty column to a hash.
const APPLY: &str = r"
local function u16(s, i) return s:byte(i) * 256 + s:byte(i + 1) end
local function negative(reserved) return reserved:byte(3) % 2 == 1 end
-- Sets column `name` of the hash at `key` (reserved field `reserved`):
-- its kind in the directory and its field; answers the new reserved field.
local function apply(key, reserved, name, json, text)
  local body = 24
  if math.floor(reserved:byte(3) / 128) % 2 == 1 then body = 26 + u16(reserved, 25) end
  local count = u16(reserved, body + 1)
  local kind = 0
  if text then kind = 1 end
  local at = body + 3
  local found = false
  for _ = 1, count do
    local len = u16(reserved, at + 1)
    if reserved:sub(at + 3, at + 2 + len) == name then
      reserved = reserved:sub(1, at - 1) .. string.char(kind) .. reserved:sub(at + 1)
      found = true
      break
    end
    at = at + 3 + len
  end
  if not found then
    count = count + 1
    reserved = reserved:sub(1, body) .. string.char(math.floor(count / 256), count % 256)
      .. reserved:sub(body + 3) .. string.char(kind, math.floor(#name / 256), #name % 256) .. name
  end
  if json == 'null' then
    redis.call('HDEL', key, name)
  elseif text then
    redis.call('HSET', key, name, text)
  else
    redis.call('HSET', key, name, json)
  end
  return reserved
end
";

static PATCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPLY}
-- KEYS: value (hash), lease, dirty, queue, seq, version, deltas, delta queue
-- ARGV: id, now ms, version ttl ms, channel ('' = none), message, then per column: name, json, is text (1/0), text
local d = redis.call('HMGET', KEYS[3], 'del', 'kind')
if d[1] == '1' then return {{0}} end
if d[1] and not d[2] then return {{-1}} end
local reserved = redis.call('HGET', KEYS[1], '')
if reserved and negative(reserved) and not d[1] then return {{0}} end
local was = redis.call('EXISTS', KEYS[3])
local seq = redis.call('INCR', KEYS[5])
if was == 0 then redis.call('HSET', KEYS[3], 'kind', 'fields', 'del', '0', 'val', '') end
redis.call('HSET', KEYS[3], 'seq', seq)
for i = 6, #ARGV, 4 do
  local name, json = ARGV[i], ARGV[i + 1]
  local text = nil
  if ARGV[i + 2] == '1' then text = ARGV[i + 3] end
  redis.call('HSET', KEYS[3], 'c:' .. name, json)
  -- The written value wins over increments of the column not yet claimed.
  redis.call('HDEL', KEYS[7], name, name .. '\0')
  if text then redis.call('HSET', KEYS[3], 't:' .. name, text) else redis.call('HDEL', KEYS[3], 't:' .. name) end
  if reserved and not negative(reserved) then reserved = apply(KEYS[1], reserved, name, json, text) end
end
if reserved and not negative(reserved) then redis.call('HSET', KEYS[1], '', reserved) end
if redis.call('EXISTS', KEYS[7]) == 0 then redis.call('ZREM', KEYS[8], ARGV[1]) end
redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HINCRBY', KEYS[6], 'seq', 1)
redis.call('PEXPIRE', KEYS[6], ARGV[3])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
-- The patched hash, when there is one: the writer answers it without
-- another round trip.
if reserved and not negative(reserved) then return {{1, seq, was, redis.call('HGETALL', KEYS[1])}} end
return {{1, seq, was}}
"
    ))
});

pub(super) static FILL_OVERLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPLY}
-- KEYS: value (hash), lease, dirty, waiter flag, deltas, claimed counters.
-- ARGV: token, ttl ms, fill channel, id, field, value, ...
-- Answers {{0}} (lease lost, a whole-row record / tombstone pending, or the
-- id in the shard's claimed counters: no fill), {{1}} (filled) or
-- {{2, hash}} (filled, pending fields and unclaimed deltas laid over).
-- Once the lease is ours and gone, a flagged waiter is told (the message
-- reaches it after this script, when the hash is final).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {{0}} end
redis.call('DEL', KEYS[2])
if redis.call('DEL', KEYS[4]) == 1 then redis.call('PUBLISH', ARGV[3], KEYS[1]) end
-- A claimed batch holding the id may or may not be in the loaded row.
if redis.call('HEXISTS', KEYS[6], 'd:' .. ARGV[4]) == 1 then return {{0}} end
local d = redis.call('HMGET', KEYS[3], 'del', 'kind')
if d[1] and (d[1] == '1' or d[2] ~= 'fields') then return {{0}} end
local c = redis.call('HGETALL', KEYS[5])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if not d[1] and #c == 0 then return {{1}} end
local reserved = ARGV[6]
if negative(reserved) then
  redis.call('DEL', KEYS[1])
  return {{0}}
end
if d[1] then
  local r = redis.call('HGETALL', KEYS[3])
  local t = {{}}
  for i = 1, #r, 2 do
    if r[i]:sub(1, 2) == 't:' then t[r[i]:sub(3)] = r[i + 1] end
  end
  for i = 1, #r, 2 do
    if r[i]:sub(1, 2) == 'c:' then
      local name = r[i]:sub(3)
      reserved = apply(KEYS[1], reserved, name, r[i + 1], t[name])
    end
  end
  redis.call('HSET', KEYS[1], '', reserved)
end
for i = 1, #c, 2 do
  -- A numeric column's delta (a marked field, units of 10^-s) cannot be
  -- added here exactly: no fill; the reader lays it over in process.
  if c[i]:sub(-1) == '\0' then
    redis.call('DEL', KEYS[1])
    return {{0}}
  end
  local r = redis.pcall('HINCRBY', KEYS[1], c[i], c[i + 1])
  if type(r) == 'table' and r.err then
    redis.call('DEL', KEYS[1])
    return {{0}}
  end
end
return {{2, redis.call('HGETALL', KEYS[1])}}
"
    ))
});

static RECORD_ROW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- A whole-row write (put, or a tombstone): replaces the hash and the dirty record.
-- KEYS: value (hash), lease, dirty, queue, seq, version, deltas, delta queue
-- ARGV: id, payload, del (1/0), ttl ms, now ms, version ttl ms, channel ('' = none), message,
--       expected version ('' = any), field, value, ...
local ver = tonumber(redis.call('HGET', KEYS[6], 'seq') or '0')
if ARGV[9] ~= '' and ver ~= tonumber(ARGV[9]) then return {0, ver} end
-- The written row wins over increments not yet claimed.
redis.call('DEL', KEYS[7])
redis.call('ZREM', KEYS[8], ARGV[1])
local was = redis.call('EXISTS', KEYS[3])
local seq = redis.call('INCR', KEYS[5])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'seq', seq, 'del', ARGV[3], 'val', ARGV[2], 'kind', 'row')
redis.call('ZADD', KEYS[4], 'NX', ARGV[5], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('HINCRBY', KEYS[6], 'seq', 1)
redis.call('PEXPIRE', KEYS[6], ARGV[6])
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[7], ARGV[8]) end
return {1, seq, was}
",
    )
});

pub(super) static BATCH_RECORDS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- The dirty records of ids the caller read from the queue, under the flush lease.
-- KEYS: flush lease, queue, dirty... ARGV: token, id...
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local out = {1}
for i = 3, #KEYS do
  local r = redis.call('HGETALL', KEYS[i])
  if #r == 0 then
    redis.call('ZREM', KEYS[2], ARGV[i - 1])
  else
    table.insert(out, ARGV[i - 1])
    table.insert(out, r)
  end
end
return out
",
    )
});

pub(super) static CLEAR_HASH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: dirty, queue, value (hash), lease, deltas, claimed counters.
-- ARGV: id, seq, action (set|del), ttl ms, field, value, ...
if redis.call('HGET', KEYS[1], 'seq') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
-- As for strings: the stored row refreshes the entry only while the entry
-- is there (an invalidation during the flush stays), and never while
-- increments of the id are pending (the stored row lacks them).
local counting = redis.call('EXISTS', KEYS[5]) == 1 or redis.call('HEXISTS', KEYS[6], 'd:' .. ARGV[1]) == 1
if ARGV[3] == 'set' and not counting and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('DEL', KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[3], unpack(ARGV, 5))
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
else
  redis.call('DEL', KEYS[3], KEYS[4])
end
return 1
",
    )
});

pub(super) static ACQUIRE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- The read lease of a hash entry under write-back: as `ACQUIRE` in
-- redis_hash.rs, except by record kind — a pending `row` answers the
-- record (the cache merges it), pending `fields` are no answer (the hash,
-- if there, holds them; a fill lays them over the loaded row).
-- A pending row with unclaimed increments is no answer either: the fill
-- is refused and the reader lays both over its row.
-- KEYS: value (hash), lease, dirty, deltas. ARGV: token, lease ms, if_absent (1/0)
local d = redis.call('HMGET', KEYS[3], 'del', 'kind', 'val')
if d[1] == '1' then return {4} end
if d[1] and d[2] == 'row' and redis.call('EXISTS', KEYS[4]) == 0 then
  return {5, redis.call('HGETALL', KEYS[3])}
end
if d[1] and not d[2] then return {4, d[3]} end
if ARGV[3] == '1' then
  local v = redis.call('HGETALL', KEYS[1])
  if #v > 0 then return {1, v} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[3] == '1' then return {2} end
  local v = redis.call('HGETALL', KEYS[1])
  if #v > 0 then return {2, v} end
  return {2}
end
return {3}
",
    )
});

/// A pending write of a hash entry, as the flusher reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HashDirty {
    /// The canonical id.
    pub(crate) id: String,
    /// The record's sequence (cleared only if unchanged).
    pub(crate) seq: u64,
    /// What to write.
    pub(crate) write: HashWrite,
}

/// What a hash entry's dirty record asks the source to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashWrite {
    /// Delete the row.
    Delete,
    /// Upsert the whole row (a `put`, with later patches laid over): a
    /// JSON object.
    Upsert(Vec<u8>),
    /// Update just these columns (a JSON object of them).
    Update(Vec<u8>),
}

/// A JSON object of `base`'s members (in order) with `columns` laid over
/// (replacing a member of the same name, else appended); exact — values
/// are copied as their JSON text.
fn overlay(base: &[u8], columns: &[(String, String)]) -> std::result::Result<Vec<u8>, String> {
    let members = if base.is_empty() {
        Vec::new()
    } else {
        ordered_members(base).map_err(|e| format!("a dirty row is not a JSON object: {e}"))?
    };
    let mut out: Vec<(String, String)> = members
        .into_iter()
        .map(|(k, v)| (k, v.get().to_owned()))
        .collect();
    for (name, json) in columns {
        match out.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1.clone_from(json),
            None => out.push((name.clone(), json.clone())),
        }
    }
    let mut text = String::from("{");
    for (i, (k, v)) in out.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&serde_json::to_string(k).map_err(|e| e.to_string())?);
        text.push(':');
        text.push_str(v);
    }
    text.push('}');
    Ok(text.into_bytes())
}

/// [`overlay`] of `columns`, a JSON object (a hash entry's dirty columns).
pub(crate) fn overlay_object(base: &[u8], columns: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let columns: Vec<(String, String)> = ordered_members(columns)
        .map_err(|e| format!("pending columns are not a JSON object: {e}"))?
        .into_iter()
        .map(|(k, v)| (k, v.get().to_owned()))
        .collect();
    overlay(base, &columns)
}

/// A JSON object's members in their order, values as raw JSON.
fn ordered_members(json: &[u8]) -> std::result::Result<Vec<(String, Box<RawValue>)>, String> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<(String, Box<RawValue>)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut map: M,
        ) -> std::result::Result<Self::Value, M::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    serde::Deserializer::deserialize_map(&mut de, V).map_err(|e| e.to_string())
}

/// A hash entry's pending write from its dirty record (`HGETALL` pairs).
pub(super) fn hash_dirty_of(
    id: String,
    pairs: &[(Vec<u8>, Vec<u8>)],
) -> std::result::Result<HashDirty, String> {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    };
    let seq = get("seq")
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("the dirty record of {id:?} has no sequence"))?;
    let mut columns = Vec::new();
    for (k, v) in pairs {
        if let Some(name) = k.strip_prefix(b"c:") {
            let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
            let json = String::from_utf8(v.clone()).map_err(|e| e.to_string())?;
            columns.push((name, json));
        }
    }
    let write = match (get("del"), get("kind")) {
        (Some(b"1"), _) => HashWrite::Delete,
        (_, Some(b"row")) => HashWrite::Upsert(overlay(get("val").unwrap_or_default(), &columns)?),
        (_, Some(b"fields")) => HashWrite::Update(overlay(b"", &columns)?),
        _ => return Err(format!("the dirty record of {id:?} is not a hash entry's")),
    };
    Ok(HashDirty { id, seq, write })
}

/// A dirty record of either format from its `HGETALL` pairs: a hash
/// entry's (with `kind`) or a string entry's (`seq`, `del`, `val`).
pub(super) fn record_of_pairs(
    id: String,
    pairs: &[(Vec<u8>, Vec<u8>)],
) -> std::result::Result<super::DirtyRecord, String> {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    };
    if get("kind").is_some() {
        let d = hash_dirty_of(id, pairs)?;
        let (payload, partial) = match d.write {
            HashWrite::Delete => (None, false),
            HashWrite::Upsert(row) => (Some(row), false),
            HashWrite::Update(columns) => (Some(columns), true),
        };
        return Ok(super::DirtyRecord {
            id: d.id,
            seq: d.seq,
            payload: payload.map(bytes::Bytes::from),
            partial,
        });
    }
    let seq = get("seq")
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("the dirty record of {id:?} has no sequence"))?;
    let payload = match get("del") {
        Some(b"1") => None,
        _ => Some(bytes::Bytes::from(get("val").unwrap_or_default().to_vec())),
    };
    Ok(super::DirtyRecord {
        id,
        seq,
        payload,
        partial: false,
    })
}

/// The keys one hash field patch touches, all in the id's shard.
#[derive(Debug, Clone)]
pub(crate) struct HashPatchKeys<'a> {
    /// The canonical id (the queue's member).
    pub(crate) id: &'a str,
    /// The hash entry.
    pub(crate) value_key: &'a str,
    /// The read lease.
    pub(crate) lease_key: &'a str,
    /// The dirty record.
    pub(crate) dirty_key: &'a str,
    /// The shard's queue.
    pub(crate) queue_key: &'a str,
    /// The shard's record sequence.
    pub(crate) seq_key: &'a str,
    /// The id's write version (bumped, never compared, by a field patch).
    pub(crate) version_key: &'a str,
}

/// A whole-row write of a hash entry (see
/// [`RedisStore::hash_record_row_expecting`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowWrite<'a> {
    /// The row (codec bytes); `None` records a tombstone.
    pub(crate) payload: Option<&'a [u8]>,
    /// The envelope to cache (the row, or a negative entry).
    pub(crate) envelope: &'a [u8],
    /// How long the store keeps the entry.
    pub(crate) ttl: Duration,
    /// Now, ms since the epoch (the queue's score).
    pub(crate) now_ms: u64,
    /// How long the write version is kept without writes.
    pub(crate) version_ttl: Duration,
    /// A channel and message to publish in the same script.
    pub(crate) announce: Option<(&'a str, &'a [u8])>,
    /// Record only if the id's write version is this one.
    pub(crate) expect: Option<u64>,
}

/// What a fill with overlay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Overlaid {
    /// Not filled: the lease was lost, or a whole-row write or a tombstone
    /// is pending (the read answers that instead).
    Refused,
    /// Filled with the loaded row as it was.
    Filled,
    /// Filled, with pending dirty fields laid over: the entry's envelope.
    Merged(Vec<u8>),
}

impl RedisStore {
    fn hash_dirty_problem(&self, problem: impl Into<String>) -> Error {
        Error::Store {
            store: self.name_str().to_owned(),
            cause: Message::cause(problem.into()),
        }
    }

    /// Write-back `patch` of a hash entry: sets `fields` (a JSON object) on
    /// the hash if it is there and adds them to the dirty record, in one
    /// script — no read, no compare-and-set, so it never conflicts.
    #[cfg(test)]
    pub(crate) async fn hash_patch_back(
        &self,
        keys: &HashPatchKeys<'_>,
        fields: &[u8],
        now_ms: u64,
        version_ttl: Duration,
        announce: Option<(&str, &[u8])>,
    ) -> Result<Patched> {
        self.hash_patch_back_answering(keys, fields, now_ms, version_ttl, announce)
            .await
            .map(|(patched, _)| patched)
    }

    /// [`RedisStore::hash_patch_back`], also answering the patched entry's
    /// envelope when the hash was there (read in the same script).
    pub(crate) async fn hash_patch_back_answering(
        &self,
        keys: &HashPatchKeys<'_>,
        fields: &[u8],
        now_ms: u64,
        version_ttl: Duration,
        announce: Option<(&str, &[u8])>,
    ) -> Result<(Patched, Option<bytes::Bytes>)> {
        let members: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(fields)
            .map_err(|e| self.hash_dirty_problem(format!("a patch must be a JSON object: {e}")))?;
        let counter = CounterKeys::of(keys.dirty_key, keys.id);
        let mut inv = PATCH.prepare_invoke();
        inv.key(keys.value_key)
            .key(keys.lease_key)
            .key(keys.dirty_key)
            .key(keys.queue_key)
            .key(keys.seq_key)
            .key(keys.version_key)
            .key(&counter.deltas)
            .key(&counter.queue)
            .arg(keys.id)
            .arg(now_ms)
            .arg(ms(version_ttl));
        match announce {
            Some((channel, message)) => inv.arg(channel).arg(message),
            None => inv.arg("").arg(""),
        };
        for (name, raw) in &members {
            if name.is_empty() {
                return Err(self.hash_dirty_problem("a column cannot be named \"\""));
            }
            let json = raw.get();
            let text = if json.starts_with('"') {
                serde_json::from_str::<String>(json).ok()
            } else {
                None
            };
            inv.arg(name.as_str()).arg(json);
            match text {
                Some(t) => inv.arg("1").arg(t),
                None => inv.arg("0").arg(""),
            };
        }
        let (answer, confirmation): (Value, _) =
            self.run_waited(keys.value_key, inv, Resend::Safe).await?;
        let confirmed = confirmation.is_confirmed();
        let bad = || self.hash_dirty_problem("unexpected answer from the patch script");
        let Value::Array(items) = answer else {
            return Err(bad());
        };
        let recorded = |seq: &Value, was: &Value| match (seq, was) {
            (Value::Int(seq), Value::Int(was)) => Ok(Patched::Recorded(Recorded::Queued {
                seq: u64::try_from(*seq).unwrap_or_default(),
                coalesced: *was == 1,
                confirmed,
            })),
            _ => Err(bad()),
        };
        match items.as_slice() {
            [Value::Int(0)] => Ok((Patched::NoRow, None)),
            [Value::Int(-1)] => {
                Err(self
                    .hash_dirty_problem("a string-format dirty record is pending on a hash entry"))
            }
            [Value::Int(1), seq, was] => Ok((recorded(seq, was)?, None)),
            [Value::Int(1), seq, was, Value::Array(flat)] => {
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.iter();
                while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) =
                    (it.next(), it.next())
                {
                    pairs.push((k.clone(), v.clone()));
                }
                // An entry that does not decode is no answer: the writer reads.
                let entry = crate::representation::from_fields(&pairs)
                    .ok()
                    .flatten()
                    .map(bytes::Bytes::from);
                Ok((recorded(seq, was)?, entry))
            }
            _ => Err(bad()),
        }
    }

    /// [`RedisStore::hash_record_row_expecting`] without a version check.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn hash_record_row(
        &self,
        keys: &HashPatchKeys<'_>,
        payload: Option<&[u8]>,
        envelope: &[u8],
        ttl: Duration,
        now_ms: u64,
        version_ttl: Duration,
        announce: Option<(&str, &[u8])>,
    ) -> Result<Recorded> {
        let row = RowWrite {
            payload,
            envelope,
            ttl,
            now_ms,
            version_ttl,
            announce,
            expect: None,
        };
        self.hash_record_row_expecting(keys, &row).await
    }

    /// A whole-row write-back write of a hash entry — a `put` (`payload`
    /// `Some`) or a tombstone — in one script: replaces the hash with
    /// `envelope`'s fields and the dirty record with a `row` record
    /// (dropping pending field patches, which the row replaces), enqueues
    /// the id, voids the lease, bumps the write version. With `expect`,
    /// only if the id's write version is that one (else
    /// [`Recorded::Conflict`], nothing written).
    pub(crate) async fn hash_record_row_expecting(
        &self,
        keys: &HashPatchKeys<'_>,
        row: &RowWrite<'_>,
    ) -> Result<Recorded> {
        let fields = to_fields(row.envelope).map_err(|p| self.hash_dirty_problem(p))?;
        let counter = CounterKeys::of(keys.dirty_key, keys.id);
        let mut inv = RECORD_ROW.prepare_invoke();
        inv.key(keys.value_key)
            .key(keys.lease_key)
            .key(keys.dirty_key)
            .key(keys.queue_key)
            .key(keys.seq_key)
            .key(keys.version_key)
            .key(&counter.deltas)
            .key(&counter.queue)
            .arg(keys.id)
            .arg(row.payload.unwrap_or_default())
            .arg(if row.payload.is_some() { "0" } else { "1" })
            .arg(ms(row.ttl))
            .arg(row.now_ms)
            .arg(ms(row.version_ttl));
        match row.announce {
            Some((channel, message)) => inv.arg(channel).arg(message),
            None => inv.arg("").arg(""),
        };
        inv.arg(row.expect.map(|v| v.to_string()).unwrap_or_default());
        for (k, v) in &fields {
            inv.arg(k.as_slice()).arg(v.as_slice());
        }
        let (answer, confirmation): (Vec<i64>, _) =
            self.run_waited(keys.value_key, inv, Resend::Safe).await?;
        match answer.as_slice() {
            [1, seq, was] => Ok(Recorded::Queued {
                seq: u64::try_from(*seq).unwrap_or_default(),
                coalesced: *was == 1,
                confirmed: confirmation.is_confirmed(),
            }),
            [0, _] => Ok(Recorded::Conflict),
            _ => Err(self.hash_dirty_problem("unexpected answer from the record script")),
        }
    }

    /// [`RedisStore::dirty_batch`] read as hash entries' writes.
    #[cfg(test)]
    pub(crate) async fn hash_batch(
        &self,
        lease_key: &str,
        queue_key: &str,
        dirty_key: impl Fn(&str) -> String,
        token: &str,
        max: usize,
        due_ms: u64,
    ) -> Result<Option<Vec<HashDirty>>> {
        let Some(records) = self
            .dirty_batch(lease_key, queue_key, dirty_key, token, max, due_ms)
            .await?
        else {
            return Ok(None);
        };
        records
            .into_iter()
            .map(|(id, pairs)| hash_dirty_of(id, &pairs).map_err(|p| self.hash_dirty_problem(p)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Up to `max` dirty records of a shard (`HGETALL` pairs, by id) that
    /// became dirty at or before `due_ms`, oldest first, while `token`
    /// holds the flush lease (`None`: it does not). The ids are read from
    /// the queue first, so the script that reads their records names every
    /// dirty key in KEYS (`dirty_key` builds them); an id cleared in
    /// between is skipped and dropped from the queue.
    pub(crate) async fn dirty_batch(
        &self,
        lease_key: &str,
        queue_key: &str,
        dirty_key: impl Fn(&str) -> String,
        token: &str,
        max: usize,
        due_ms: u64,
    ) -> Result<Option<Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>>> {
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(queue_key)
            .arg("-inf")
            .arg(due_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(max.max(1))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))?;
        let mut inv = BATCH_RECORDS.prepare_invoke();
        inv.key(lease_key).key(queue_key).arg(token);
        for id in &ids {
            inv.key(dirty_key(id)).arg(id.as_str());
        }
        let answer: Value = self.run(inv).await?;
        let bad = || self.hash_dirty_problem("unexpected answer from the batch script");
        let Value::Array(items) = answer else {
            return Err(bad());
        };
        let mut it = items.into_iter();
        match it.next() {
            Some(Value::Int(0)) => return Ok(None),
            Some(Value::Int(1)) => {}
            _ => return Err(bad()),
        }
        let mut out = Vec::new();
        while let (Some(Value::BulkString(id)), Some(Value::Array(flat))) = (it.next(), it.next()) {
            let id = String::from_utf8(id).map_err(|_| bad())?;
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut f = flat.into_iter();
            while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) =
                (f.next(), f.next())
            {
                pairs.push((k, v));
            }
            out.push((id, pairs));
        }
        Ok(Some(out))
    }

    /// The pending write of a hash entry (its dirty record read whole).
    pub(crate) async fn hash_pending(&self, dirty_key: &str) -> Result<Option<HashWrite>> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(dirty_key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))?;
        if pairs.is_empty() {
            return Ok(None);
        }
        hash_dirty_of(String::new(), &pairs)
            .map(|d| Some(d.write))
            .map_err(|p| self.hash_dirty_problem(p))
    }

    /// Clears a flushed hash record if its sequence is unchanged and
    /// refreshes the entry from the stored row (`refresh`: its envelope
    /// and TTL; `None` deletes the entry) — only while the entry is there;
    /// whether it was cleared.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn hash_clear(
        &self,
        dirty_key: &str,
        queue_key: &str,
        value_key: &str,
        lease_key: &str,
        id: &str,
        seq: u64,
        refresh: Option<(&[u8], Duration)>,
    ) -> Result<bool> {
        let counter = CounterKeys::of(dirty_key, id);
        let mut inv = CLEAR_HASH.prepare_invoke();
        inv.key(dirty_key)
            .key(queue_key)
            .key(value_key)
            .key(lease_key)
            .key(&counter.deltas)
            .key(&counter.claimed)
            .arg(id)
            .arg(seq);
        let fields = match refresh {
            Some((envelope, ttl)) => {
                inv.arg("set").arg(ms(ttl));
                to_fields(envelope).map_err(|p| self.hash_dirty_problem(p))?
            }
            None => {
                inv.arg("del").arg(0);
                Vec::new()
            }
        };
        for (k, v) in &fields {
            inv.arg(k.as_slice()).arg(v.as_slice());
        }
        Ok(self.run::<i64>(inv).await? == 1)
    }

    /// A fill under the lease `token` that lays pending dirty fields over
    /// the loaded envelope (see [`Overlaid`]).
    pub(crate) async fn hash_fill_overlay(&self, f: &Fill) -> Result<Overlaid> {
        let fields = to_fields(&f.value).map_err(|p| self.hash_dirty_problem(p))?;
        let (id, counter) = counter_keys_of_dirty(&f.dirty_key);
        let mut inv = FILL_OVERLAY.prepare_invoke();
        inv.key(&f.value_key)
            .key(&f.lease_key)
            .key(&f.dirty_key)
            .key(&f.waiter_key)
            .key(&counter.deltas)
            .key(&counter.claimed)
            .arg(&f.token)
            .arg(ms(f.ttl))
            .arg(&*f.fill_channel)
            .arg(id);
        for (k, v) in &fields {
            inv.arg(k.as_slice()).arg(v.as_slice());
        }
        let answer: Value = self.run(inv).await?;
        let bad = || self.hash_dirty_problem("unexpected answer from the fill script");
        let Value::Array(mut items) = answer else {
            return Err(bad());
        };
        match (items.first(), items.len()) {
            (Some(Value::Int(0)), 1) => Ok(Overlaid::Refused),
            (Some(Value::Int(1)), 1) => Ok(Overlaid::Filled),
            (Some(Value::Int(2)), 2) => {
                let Some(Value::Array(flat)) = items.pop() else {
                    return Err(bad());
                };
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) =
                    (it.next(), it.next())
                {
                    pairs.push((k, v));
                }
                match crate::representation::from_fields(&pairs) {
                    Ok(Some(env)) => Ok(Overlaid::Merged(env)),
                    Ok(None) => Err(bad()),
                    Err(p) => Err(self.hash_dirty_problem(p)),
                }
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::store::Store;
    use bytes::Bytes;
    use larder_test_support::unique;
    use std::sync::Arc;

    const URL: &str = "redis://127.0.0.1:6379";

    fn store() -> RedisStore {
        RedisStore::connect(URL, crate::store::RedisOptions::default()).expect("store")
    }

    struct Keys {
        id: String,
        value: String,
        lease: String,
        dirty: String,
        queue: String,
        seq: String,
        version: String,
    }

    impl Keys {
        fn new(prefix: &str, id: &str) -> Self {
            let k = |kind: &str| format!("{prefix}:{{e:0}}:{kind}:{id}");
            Self {
                id: id.to_owned(),
                value: k("h"),
                lease: k("l"),
                dirty: k("d"),
                queue: format!("{prefix}:{{e:0}}:q"),
                seq: format!("{prefix}:{{e:0}}:n"),
                version: k("w"),
            }
        }

        fn fill(&self, token: &str, envelope: &[u8]) -> Fill {
            Fill {
                value_key: self.value.clone(),
                lease_key: self.lease.clone(),
                dirty_key: self.dirty.clone(),
                token: token.into(),
                value: envelope.to_vec(),
                ttl: Duration::from_secs(60),
                waiter_key: format!("{}:a", self.lease),
                fill_channel: "fills".into(),
            }
        }

        fn patch(&self) -> HashPatchKeys<'_> {
            HashPatchKeys {
                id: &self.id,
                value_key: &self.value,
                lease_key: &self.lease,
                dirty_key: &self.dirty,
                queue_key: &self.queue,
                seq_key: &self.seq,
                version_key: &self.version,
            }
        }
    }

    fn envelope(payload: &str) -> Vec<u8> {
        Envelope {
            fresh_until: u64::MAX / 2,
            stale_until: u64::MAX / 2,
            load_us: 1,
            payload: Some(Bytes::from(payload.to_owned())),
            stamp: None,
        }
        .encode()
    }

    fn payload_of(env: &[u8]) -> serde_json::Value {
        let env = Envelope::decode(Bytes::from(env.to_vec())).expect("envelope");
        serde_json::from_slice(&env.payload.expect("a row")).expect("json")
    }

    async fn hash_len(store: &RedisStore, key: &str) -> i64 {
        redis::cmd("HLEN")
            .arg(key)
            .query_async(&mut store.conn())
            .await
            .expect("HLEN")
    }

    async fn patch(store: &RedisStore, keys: &Keys, fields: &str) -> Patched {
        store
            .hash_patch_back(
                &keys.patch(),
                fields.as_bytes(),
                1,
                Duration::from_secs(60),
                None,
            )
            .await
            .expect("patch")
    }

    /// 2 store connections × 8 tasks, each task its own column, patching
    /// the same 100 hash entries: every column ends at its last
    /// acknowledged value, in the hash and in the dirty record, and no
    /// patch was ever refused or retried (there is nothing to retry).
    #[tokio::test]
    async fn concurrent_patches_of_different_fields_all_land_without_retries() {
        let prefix = unique("hwb");
        let stores = [Arc::new(store()), Arc::new(store())];
        let columns: Vec<String> = (0..16).map(|c| format!("c{c}")).collect();
        let row = {
            let cols: Vec<String> = columns.iter().map(|c| format!("\"{c}\":null")).collect();
            format!("{{\"id\":1,{}}}", cols.join(","))
        };
        for id in 0..100 {
            let k = Keys::new(&prefix, &id.to_string());
            stores[0]
                .set(
                    &k.value,
                    &k.lease,
                    &envelope(&row),
                    Duration::from_secs(600),
                )
                .await
                .expect("fill");
        }
        let mut tasks = Vec::new();
        for (t, column) in columns.iter().enumerate() {
            let store = Arc::clone(&stores[t % 2]);
            let (prefix, column) = (prefix.clone(), column.clone());
            tasks.push(tokio::spawn(async move {
                let mut refused = 0u32;
                for round in 0..3 {
                    for id in 0..100 {
                        let k = Keys::new(&prefix, &id.to_string());
                        let fields = format!("{{\"{column}\":\"{column}-{id}-{round}\"}}");
                        if patch(&store, &k, &fields).await == Patched::NoRow {
                            refused += 1;
                        }
                    }
                }
                refused
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), 0, "no patch is refused");
        }
        for id in 0..100 {
            let k = Keys::new(&prefix, &id.to_string());
            let env = stores[0].get(&k.value).await.expect("get").expect("entry");
            let row = payload_of(&env);
            let dirty: BTreeMap<String, String> = redis::cmd("HGETALL")
                .arg(&k.dirty)
                .query_async(&mut stores[0].conn())
                .await
                .expect("dirty");
            assert_eq!(dirty.get("kind").map(String::as_str), Some("fields"));
            for c in &columns {
                let want = format!("{c}-{id}-2");
                assert_eq!(
                    row[c],
                    serde_json::Value::String(want.clone()),
                    "hash {id} {c}"
                );
                assert_eq!(
                    dirty[&format!("c:{c}")],
                    format!("\"{want}\""),
                    "dirty {id} {c}"
                );
            }
            assert_eq!(row["id"], 1, "an unpatched column stays");
        }
    }

    /// A patch on an absent hash records its fields and voids the lease
    /// but creates no partial hash; the fill that follows lays the pending
    /// fields over the loaded row, with their types.
    #[tokio::test]
    async fn patch_on_absent_hash_creates_nothing_and_fill_overlays() {
        let prefix = unique("hwb");
        let store = store();
        let k = Keys::new(&prefix, "7");
        redis::cmd("SET")
            .arg(&k.lease)
            .arg("someone")
            .query_async::<()>(&mut store.conn())
            .await
            .expect("lease");
        let got = patch(
            &store,
            &k,
            r#"{"name":"Bea","n":18446744073709551615,"note":null}"#,
        )
        .await;
        assert!(matches!(
            got,
            Patched::Recorded(Recorded::Queued {
                coalesced: false,
                ..
            })
        ));
        assert_eq!(hash_len(&store, &k.value).await, 0, "no partial hash");
        let lease: Option<String> = redis::cmd("GET")
            .arg(&k.lease)
            .query_async(&mut store.conn())
            .await
            .expect("GET");
        assert_eq!(lease, None, "the lease is voided");
        // A reader takes a new lease, loads the row, fills.
        redis::cmd("SET")
            .arg(&k.lease)
            .arg("reader")
            .query_async::<()>(&mut store.conn())
            .await
            .expect("lease");
        let loaded = envelope(r#"{"id":7,"name":"Ada","n":1,"note":"x","tags":[]}"#);
        let filled = store
            .hash_fill_overlay(&k.fill("reader", &loaded))
            .await
            .expect("fill");
        let Overlaid::Merged(env) = filled else {
            panic!("expected an overlaid fill, got {filled:?}");
        };
        let merged = payload_of(&env);
        let want: serde_json::Value = serde_json::from_str(
            r#"{"id":7,"name":"Bea","n":18446744073709551615,"note":null,"tags":[]}"#,
        )
        .expect("json");
        assert_eq!(merged, want);
        let stored = store.get(&k.value).await.expect("get").expect("entry");
        assert_eq!(payload_of(&stored), want, "the hash holds the overlaid row");
        let name: String = redis::cmd("HGET")
            .arg(&k.value)
            .arg("name")
            .query_async(&mut store.conn())
            .await
            .expect("HGET");
        assert_eq!(name, "Bea", "text is stored as plain text");
    }

    /// A fill with no pending record fills as before; one under a lost
    /// lease does not.
    #[tokio::test]
    async fn fill_without_pending_fields_and_under_a_lost_lease() {
        let prefix = unique("hwb");
        let store = store();
        let k = Keys::new(&prefix, "1");
        let loaded = envelope(r#"{"id":1,"name":"Ada"}"#);
        let lost = store
            .hash_fill_overlay(&k.fill("me", &loaded))
            .await
            .expect("fill");
        assert_eq!(lost, Overlaid::Refused);
        assert_eq!(hash_len(&store, &k.value).await, 0);
        redis::cmd("SET")
            .arg(&k.lease)
            .arg("me")
            .query_async::<()>(&mut store.conn())
            .await
            .expect("lease");
        let filled = store
            .hash_fill_overlay(&k.fill("me", &loaded))
            .await
            .expect("fill");
        assert_eq!(filled, Overlaid::Filled);
        let stored = store.get(&k.value).await.expect("get").expect("entry");
        assert_eq!(payload_of(&stored)["name"], "Ada");
    }

    /// A patch changes a column's kind in the directory: a NULL text column
    /// set to text reads back as that text, a text column set to a number
    /// reads back as the number, and patches of one field coalesce.
    #[tokio::test]
    async fn patch_rewrites_the_directory_and_coalesces() {
        let prefix = unique("hwb");
        let store = store();
        let k = Keys::new(&prefix, "3");
        store
            .set(
                &k.value,
                &k.lease,
                &envelope(r#"{"id":3,"a":null,"b":"x"}"#),
                Duration::from_secs(60),
            )
            .await
            .expect("set");
        let first = patch(&store, &k, r#"{"a":"now text","b":5}"#).await;
        let again = patch(&store, &k, r#"{"a":""}"#).await;
        assert!(matches!(
            first,
            Patched::Recorded(Recorded::Queued {
                coalesced: false,
                ..
            })
        ));
        assert!(matches!(
            again,
            Patched::Recorded(Recorded::Queued {
                coalesced: true,
                ..
            })
        ));
        let stored = store.get(&k.value).await.expect("get").expect("entry");
        let want: serde_json::Value =
            serde_json::from_str(r#"{"id":3,"a":"","b":5}"#).expect("json");
        assert_eq!(payload_of(&stored), want);
    }

    /// A pending tombstone or a negative entry means no row: the patch
    /// records nothing.
    #[tokio::test]
    async fn patch_of_a_missing_row_records_nothing() {
        let prefix = unique("hwb");
        let store = store();
        let k = Keys::new(&prefix, "4");
        let negative = Envelope {
            fresh_until: u64::MAX / 2,
            stale_until: u64::MAX / 2,
            load_us: 1,
            payload: None,
            stamp: None,
        }
        .encode();
        store
            .set(&k.value, &k.lease, &negative, Duration::from_secs(60))
            .await
            .expect("set");
        assert_eq!(patch(&store, &k, r#"{"a":1}"#).await, Patched::NoRow);
        let t = Keys::new(&prefix, "5");
        redis::cmd("HSET")
            .arg(&t.dirty)
            .arg("seq")
            .arg(1)
            .arg("del")
            .arg("1")
            .arg("val")
            .arg("")
            .query_async::<()>(&mut store.conn())
            .await
            .expect("tombstone");
        assert_eq!(patch(&store, &t, r#"{"a":1}"#).await, Patched::NoRow);
        let dirty: i64 = redis::cmd("EXISTS")
            .arg(&k.dirty)
            .query_async(&mut store.conn())
            .await
            .expect("EXISTS");
        assert_eq!(dirty, 0);
    }

    async fn take_lease(store: &RedisStore, lease: &str, token: &str) {
        redis::cmd("SET")
            .arg(lease)
            .arg(token)
            .query_async::<()>(&mut store.conn())
            .await
            .expect("lease");
    }

    /// put then patch → one upsert of the row with the patched column laid
    /// over; a patch alone → an update of just its columns; a tombstone →
    /// a delete. A clear of a flushed sequence refreshes the hash; a write
    /// that landed after the batch keeps its record.
    #[tokio::test]
    async fn flusher_sees_upsert_update_and_delete_and_clear_is_fenced_by_seq() {
        let prefix = unique("hwb");
        let store = store();
        let (put, patched, gone) = (
            Keys::new(&prefix, "1"),
            Keys::new(&prefix, "2"),
            Keys::new(&prefix, "3"),
        );
        let row = r#"{"id":1,"name":"Ada","n":1}"#;
        let recorded = store
            .hash_record_row(
                &put.patch(),
                Some(row.as_bytes()),
                &envelope(row),
                Duration::from_secs(60),
                1,
                Duration::from_secs(60),
                None,
            )
            .await
            .expect("put");
        assert!(matches!(
            recorded,
            Recorded::Queued {
                coalesced: false,
                ..
            }
        ));
        patch(&store, &put, r#"{"n":12345678901234567890}"#).await;
        patch(&store, &patched, r#"{"name":"Bea","tags":[]}"#).await;
        let negative = Envelope {
            fresh_until: u64::MAX / 2,
            stale_until: u64::MAX / 2,
            load_us: 1,
            payload: None,
            stamp: None,
        }
        .encode();
        store
            .hash_record_row(
                &gone.patch(),
                None,
                &negative,
                Duration::from_secs(60),
                1,
                Duration::from_secs(60),
                None,
            )
            .await
            .expect("delete");
        assert_eq!(
            patch(&store, &gone, r#"{"name":"x"}"#).await,
            Patched::NoRow
        );
        let lease = format!("{prefix}:{{e:0}}:f");
        let dirty = |id: &str| format!("{prefix}:{{e:0}}:d:{id}");
        let none = store
            .hash_batch(&lease, &put.queue, dirty, "me", 10, u64::MAX / 2)
            .await
            .expect("batch");
        assert_eq!(none, None, "no batch without the flush lease");
        take_lease(&store, &lease, "me").await;
        let batch = store
            .hash_batch(&lease, &put.queue, dirty, "me", 10, u64::MAX / 2)
            .await
            .expect("batch")
            .expect("lease held");
        let by_id = |id: &str| {
            batch
                .iter()
                .find(|d| d.id == id)
                .expect("in the batch")
                .clone()
        };
        assert_eq!(
            by_id("1").write,
            HashWrite::Upsert(br#"{"id":1,"name":"Ada","n":12345678901234567890}"#.to_vec())
        );
        assert_eq!(
            by_id("2").write,
            HashWrite::Update(br#"{"name":"Bea","tags":[]}"#.to_vec())
        );
        assert_eq!(by_id("3").write, HashWrite::Delete);
        assert_eq!(batch.len(), 3);
        // A patch after the batch was read: the flushed sequence no longer
        // clears the record.
        patch(&store, &patched, r#"{"name":"Cy"}"#).await;
        let stale = by_id("2");
        assert!(!store
            .hash_clear(
                &patched.dirty,
                &patched.queue,
                &patched.value,
                &patched.lease,
                "2",
                stale.seq,
                None
            )
            .await
            .expect("clear"));
        let stored = envelope(r#"{"id":1,"name":"Ada","n":12345678901234567890}"#);
        let one = by_id("1");
        assert!(store
            .hash_clear(
                &put.dirty,
                &put.queue,
                &put.value,
                &put.lease,
                "1",
                one.seq,
                Some((&stored, Duration::from_secs(60)))
            )
            .await
            .expect("clear"));
        let entry = store.get(&put.value).await.expect("get").expect("entry");
        assert_eq!(payload_of(&entry)["name"], "Ada");
        let again = store
            .hash_batch(&lease, &put.queue, dirty, "me", 10, u64::MAX / 2)
            .await
            .expect("batch")
            .expect("lease held");
        let ids: Vec<&str> = again.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            ["2", "3"],
            "the cleared record is gone, the newer one stays"
        );
        assert_eq!(
            again[0].write,
            HashWrite::Update(br#"{"name":"Cy","tags":[]}"#.to_vec())
        );
    }

    /// Under write-back the read lease answers a pending whole row with
    /// its patches laid over, and pending fields alone grant the lease.
    #[tokio::test]
    async fn acquire_answers_a_pending_row_with_its_patches() {
        let prefix = unique("hwb");
        let store = store();
        let (put, patched) = (Keys::new(&prefix, "1"), Keys::new(&prefix, "2"));
        let row = r#"{"id":1,"name":"Ada"}"#;
        store
            .hash_record_row(
                &put.patch(),
                Some(row.as_bytes()),
                &envelope(row),
                Duration::from_secs(60),
                1,
                Duration::from_secs(60),
                None,
            )
            .await
            .expect("put");
        patch(&store, &put, r#"{"name":"Bea"}"#).await;
        patch(&store, &patched, r#"{"name":"Cy"}"#).await;
        let request = |k: &Keys| LeaseRequest {
            value_key: k.value.clone(),
            lease_key: k.lease.clone(),
            dirty_key: k.dirty.clone(),
            token: "t".into(),
            ttl: Duration::from_secs(5),
            if_absent: true,
            waiter_key: format!("{}:waiter", k.lease),
            fill_channel: "fills".into(),
        };
        let got = store.hash_acquire(&request(&put)).await.expect("acquire");
        assert_eq!(
            got,
            Acquired::Dirty(Some(Bytes::from_static(br#"{"id":1,"name":"Bea"}"#)))
        );
        let got = store
            .hash_acquire(&request(&patched))
            .await
            .expect("acquire");
        assert_eq!(got, Acquired::Lease { current: None });
    }
}
