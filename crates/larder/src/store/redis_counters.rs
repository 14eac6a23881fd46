//! Write-back counters on Redis: the scripts behind
//! [`DirtyLog::count`](super::DirtyLog::count) and the flusher's claim,
//! re-claim and clear (see `counters.rs` for the keys and why). Every key
//! a script touches is in its KEYS, all in the id's shard slot.

use super::counters::{ClaimedCounters, Count, CountStep, Counted, CounterKeys, CounterState};
use super::dirty::{DirtyKeys, PendingHash, ShardKeys};
use super::redis::RedisStore;
use super::redis_hash_dirty::{hash_dirty_of, HashWrite};
use super::replica_wait::Resend;
use crate::error::{Error, Message, Result};
use redis::{Script, Value};
use std::sync::LazyLock;

/// Lua: comparison of two integers given as decimal text (exact beyond
/// 2^53, where Lua's numbers are not).
pub(super) const CMP: &str = r"
local function cmp(a, b)
  local na, nb = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if na ~= nb then
    if na then return -1 else return 1 end
  end
  local x, y = a, b
  if na then x, y = b:sub(2), a:sub(2) end
  if #x ~= #y then
    if #x < #y then return -1 else return 1 end
  end
  if x < y then return -1 elseif x > y then return 1 end
  return 0
end
";

/// Lua: exact decimal sums on digit strings (Lua's numbers are doubles,
/// exact only below 2^53; a `numeric(17, 2)` value is not). A number is a
/// sign (1 or -1) and its magnitude in units of 10^-scale as digits
/// without leading zeros (`'0'` for zero).
pub(super) const DECIMAL: &str = r"
local function units_of(text, scale)
  local neg = text:sub(1, 1) == '-'
  if neg then text = text:sub(2) end
  local whole, frac = text:match('^(%d+)%.?(%d*)$')
  if not whole then return nil end
  frac = string.gsub(frac, '0+$', '')
  if #frac > scale then return nil end
  local digits = string.gsub(whole .. frac .. string.rep('0', scale - #frac), '^0+', '')
  if digits == '' then return 1, '0' end
  if neg then return -1, digits end
  return 1, digits
end
local function cmp_mag(a, b)
  if #a ~= #b then
    if #a < #b then return -1 else return 1 end
  end
  if a == b then return 0 elseif a < b then return -1 else return 1 end
end
local function add_mag(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local s = carry
    if i > 0 then s = s + a:byte(i) - 48 end
    if j > 0 then s = s + b:byte(j) - 48 end
    out[#out + 1] = string.char(48 + s % 10)
    carry = math.floor(s / 10)
    i, j = i - 1, j - 1
  end
  return string.reverse(table.concat(out))
end
local function sub_mag(a, b)
  local out, borrow, i, j = {}, 0, #a, #b
  while i > 0 do
    local s = a:byte(i) - 48 - borrow
    if j > 0 then s = s - (b:byte(j) - 48) end
    if s < 0 then s, borrow = s + 10, 1 else borrow = 0 end
    out[#out + 1] = string.char(48 + s)
    i, j = i - 1, j - 1
  end
  local r = string.gsub(string.reverse(table.concat(out)), '^0+', '')
  if r == '' then return '0' end
  return r
end
local function add_units(sa, a, sb, b)
  if sa == sb then return sa, add_mag(a, b) end
  local c = cmp_mag(a, b)
  if c == 0 then return 1, '0' end
  if c > 0 then return sa, sub_mag(a, b) end
  return sb, sub_mag(b, a)
end
local function text_of(sign, digits, scale)
  if scale > 0 then
    if #digits <= scale then digits = string.rep('0', scale - #digits + 1) .. digits end
    digits = digits:sub(1, #digits - scale) .. '.' .. digits:sub(#digits - scale + 1)
  end
  if sign < 0 and digits:match('[1-9]') then return '-' .. digits end
  return digits
end
";

static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{CMP}{DECIMAL}
-- KEYS: value (hash), lease, dirty, deltas, delta queue
-- ARGV: id, column, by, -by, min, max, now ms, only cached (1/0), channel ('' = none), message,
--       step (int|dec), scale, most digits of a unit count ('' = any)
local d = redis.call('HMGET', KEYS[3], 'del', 'kind')
if d[1] == '1' then return {{0}} end
if d[1] and not d[2] then return {{-1, 'a string-format dirty record is pending on a hash entry'}} end
local reserved = redis.call('HGET', KEYS[1], '')
if reserved and reserved:byte(3) % 2 == 1 then
  if not d[1] then return {{0}} end
  reserved = nil
end
if not reserved and ARGV[8] == '1' then return {{2}} end
local value = nil
local was = nil
-- A numeric column's delta counts units of 10^-s: its field is marked
-- (a NUL after the column), so nothing adds it as ones.
local df = ARGV[2]
if ARGV[11] ~= 'int' then df = df .. '\0' end
if reserved then
  if ARGV[11] == 'int' then
    local r = redis.pcall('HINCRBY', KEYS[1], ARGV[2], ARGV[3])
    if type(r) == 'table' and r.err then return {{-2, r.err}} end
    value = redis.call('HGET', KEYS[1], ARGV[2])
    if cmp(value, ARGV[5]) < 0 or cmp(value, ARGV[6]) > 0 then
      redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[4])
      return {{-3, value}}
    end
  else
    -- A numeric column: the cached field's text plus the units, summed
    -- exactly on digits; a field that is not a number of the column's
    -- scale cannot be summed, so the hash goes (the next read loads).
    was = redis.call('HGET', KEYS[1], ARGV[2])
    local scale = tonumber(ARGV[12])
    local ws, wd = 1, '0'
    if was then ws, wd = units_of(was, scale) end
    if ws then
      local bs, bd = units_of(ARGV[3], 0)
      local ss, sd = add_units(ws, wd, bs, bd)
      value = text_of(ss, sd, scale)
      if ARGV[13] ~= '' and #sd > tonumber(ARGV[13]) then return {{-3, value}} end
      redis.call('HSET', KEYS[1], ARGV[2], value)
    else
      redis.call('DEL', KEYS[1])
      reserved = nil
    end
  end
end
local r = redis.pcall('HINCRBY', KEYS[4], df, ARGV[3])
if type(r) == 'table' and r.err then
  if reserved then
    if ARGV[11] == 'int' then
      redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[4])
    elseif was then
      redis.call('HSET', KEYS[1], ARGV[2], was)
    else
      redis.call('HDEL', KEYS[1], ARGV[2])
    end
  end
  return {{-2, r.err}}
end
if redis.call('HGET', KEYS[4], df) == '0' then redis.call('HDEL', KEYS[4], df) end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZADD', KEYS[5], 'NX', ARGV[7], ARGV[1])
else
  redis.call('ZREM', KEYS[5], ARGV[1])
end
redis.call('DEL', KEYS[2])
if ARGV[9] ~= '' then redis.call('PUBLISH', ARGV[9], ARGV[10]) end
if reserved then return {{1, value, redis.call('HGETALL', KEYS[1])}} end
return {{3}}
"
    ))
});

static STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: dirty, deltas, claimed, clears. ARGV: id
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
  redis.call('HEXISTS', KEYS[3], 'd:' .. ARGV[1]), tonumber(redis.call('GET', KEYS[4]) or '0')}
",
    )
});

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: flush lease, delta queue, claimed, then per id: deltas, dirty
-- ARGV: token, batch id, then the ids
-- A claimed record left over (a crash, a failed commit) is answered as it
-- is: it commits under its own id or not at all.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {1, redis.call('HGETALL', KEYS[3])} end
local n = 0
for i = 3, #ARGV do
  local at = 4 + (i - 3) * 2
  local id = ARGV[i]
  -- An id with a pending write waits for it: the database then sees the
  -- writes of the id in the order they were acknowledged.
  if redis.call('EXISTS', KEYS[at + 1]) == 0 then
    local r = redis.call('HGETALL', KEYS[at])
    if #r > 0 then
      local t = {}
      for j = 1, #r, 2 do t[r[j]] = r[j + 1] end
      redis.call('HSET', KEYS[3], 'd:' .. id, cjson.encode(t))
      n = n + 1
    end
    redis.call('DEL', KEYS[at])
    redis.call('ZREM', KEYS[2], id)
  end
end
if n == 0 then return {1} end
redis.call('HSET', KEYS[3], 'b', ARGV[2])
return {1, redis.call('HGETALL', KEYS[3])}
",
    )
});

static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- One id of the claimed record refused by the database: its deltas go to
-- the dead letters, the rest is claimed again under a new batch id.
-- KEYS: claimed, dead, value, lease. ARGV: old batch, new batch, id, why (JSON)
if redis.call('HGET', KEYS[1], 'b') ~= ARGV[1] then return 0 end
local d = redis.call('HGET', KEYS[1], 'd:' .. ARGV[3])
if d then
  redis.call('HSET', KEYS[2], ARGV[3] .. '#' .. ARGV[1], '{"why":' .. ARGV[4] .. ',"deltas":' .. d .. '}')
  redis.call('HDEL', KEYS[1], 'd:' .. ARGV[3])
end
-- The cached hash counted the refused deltas: it goes.
redis.call('DEL', KEYS[3], KEYS[4])
if redis.call('HLEN', KEYS[1]) <= 1 then
  redis.call('DEL', KEYS[1])
  return 2
end
redis.call('HSET', KEYS[1], 'b', ARGV[2])
return 1
"#,
    )
});

static RETRY_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- A counter dead letter retried: its deltas back to the id's unclaimed
-- deltas (queued), the cached entry and the read lease gone (a fill lays
-- the deltas over the row again), the letter dropped, the id announced.
-- KEYS: dead, deltas, queue, value, lease
-- ARGV: field, id, now ms, channel, message
local e = redis.call('HGET', KEYS[1], ARGV[1])
if not e then return 0 end
local ok, entry = pcall(cjson.decode, e)
if not ok or type(entry) ~= 'table' or type(entry.deltas) ~= 'table' then return -1 end
for column, n in pairs(entry.deltas) do
  if not tonumber(n) then return -1 end
end
for column, n in pairs(entry.deltas) do
  redis.call('HINCRBY', KEYS[2], column, n)
  if redis.call('HGET', KEYS[2], column) == '0' then redis.call('HDEL', KEYS[2], column) end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[2])
end
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
",
    )
});

static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- A committed claimed record, cleared by its batch id: the read lease of
-- every id in it is voided (a load from before the commit cannot fill),
-- cached values are left as they are (they hold every delta already),
-- ids whose row was gone go to the dead letters (their hashes too).
-- KEYS: claimed, dead, clears, then per id: lease, value
-- ARGV: batch, why (JSON), then per id: id, missing (1/0)
if redis.call('HGET', KEYS[1], 'b') ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do
  local k = i + 1
  redis.call('DEL', KEYS[k])
  if ARGV[i + 1] == '1' then
    local d = redis.call('HGET', KEYS[1], 'd:' .. ARGV[i]) or '{}'
    redis.call('HSET', KEYS[2], ARGV[i] .. '#' .. ARGV[1], '{"why":' .. ARGV[2] .. ',"deltas":' .. d .. '}')
    redis.call('DEL', KEYS[k + 1])
  end
end
redis.call('DEL', KEYS[1])
redis.call('INCR', KEYS[3])
return 1
"#,
    )
});

/// The counter keys of the id whose dirty key is `dirty_key`.
pub(super) fn counter_keys_of_dirty(dirty_key: &str) -> (String, CounterKeys) {
    let id = id_of_dirty(dirty_key);
    let keys = CounterKeys::of(dirty_key, id);
    (id.to_owned(), keys)
}

/// The id of a dirty key (`…}:d:<id>`).
pub(super) fn id_of_dirty(dirty_key: &str) -> &str {
    match dirty_key.find("}:") {
        Some(at) => dirty_key[at + 2..].strip_prefix("d:").unwrap_or_default(),
        None => "",
    }
}

/// The pairs of a flat `HGETALL` answer.
pub(super) fn flat_pairs(v: Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Value::Array(flat) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

/// A script's answer as text.
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A claim script's answer (`{0}`: the flush lease is not the caller's;
/// `{1}`: nothing to claim; `{1, HGETALL of the claimed record}`), the
/// record parsed by `parse`; `Err` names what did not parse.
pub(super) fn claim_answer<T>(
    answer: Value,
    parse: impl Fn(&[(Vec<u8>, Vec<u8>)]) -> std::result::Result<T, String>,
) -> std::result::Result<Option<Option<T>>, String> {
    let bad = || "unexpected answer from the claim script".to_owned();
    let Value::Array(items) = answer else {
        return Err(bad());
    };
    let mut it = items.into_iter();
    match it.next() {
        Some(Value::Int(0)) => Ok(None),
        Some(Value::Int(1)) => match it.next() {
            None => Ok(Some(None)),
            Some(flat) => parse(&flat_pairs(flat)).map(|c| Some(Some(c))),
        },
        _ => Err(bad()),
    }
}

/// Deltas from `HGETALL` pairs (column → integer text).
fn deltas_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<Vec<(String, i64)>, String> {
    pairs
        .iter()
        .map(|(k, v)| {
            let column = String::from_utf8(k.clone()).map_err(|e| e.to_string())?;
            let delta = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("the delta of column `{column}` is not an integer"))?;
            Ok((column, delta))
        })
        .collect()
}

/// A claimed record from its `HGETALL` pairs.
fn claimed_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<ClaimedCounters, String> {
    let mut batch = None;
    let mut deltas = Vec::new();
    for (k, v) in pairs {
        if k.as_slice() == b"b" {
            batch = Some(String::from_utf8(v.clone()).map_err(|e| e.to_string())?);
        } else if let Some(id) = k.strip_prefix(b"d:") {
            let id = String::from_utf8(id.to_vec()).map_err(|e| e.to_string())?;
            let columns: std::collections::BTreeMap<String, String> =
                serde_json::from_slice(v).map_err(|e| format!("claimed deltas of {id:?}: {e}"))?;
            let columns = columns
                .into_iter()
                .map(|(c, d)| {
                    d.parse::<i64>()
                        .map(|d| (c.clone(), d))
                        .map_err(|_| format!("the claimed delta of {id:?}.{c} is not an integer"))
                })
                .collect::<std::result::Result<Vec<_>, String>>()?;
            deltas.push((id, columns));
        }
    }
    let batch = batch.ok_or("a claimed record without a batch id")?;
    Ok(ClaimedCounters { batch, deltas })
}

impl RedisStore {
    /// Up to `max` members of the queue `queue` due at `due_ms` (scored at
    /// or before it), oldest first: what a claim script then declares.
    pub(super) async fn due_ids(
        &self,
        queue: &str,
        due_ms: u64,
        max: usize,
    ) -> Result<Vec<String>> {
        redis::cmd("ZRANGEBYSCORE")
            .arg(queue)
            .arg("-inf")
            .arg(due_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(max.max(1))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))
    }

    fn counter_problem(&self, problem: impl Into<String>) -> Error {
        Error::Store {
            store: self.name_str().to_owned(),
            cause: Message::cause(problem.into()),
        }
    }

    /// Records one increment of a hash entry (see [`Count`]).
    pub(crate) async fn counter_count(&self, keys: &DirtyKeys, c: &Count) -> Result<Counted> {
        let counter = CounterKeys::of(&keys.dirty_key, &keys.id);
        let mut inv = COUNT.prepare_invoke();
        inv.key(&keys.value_key)
            .key(&keys.lease_key)
            .key(&keys.dirty_key)
            .key(&counter.deltas)
            .key(&counter.queue)
            .arg(&keys.id)
            .arg(&c.column)
            .arg(c.by)
            .arg(c.by.checked_neg().unwrap_or(i64::MAX));
        let range = match &c.step {
            CountStep::Integer { range } => *range,
            _ => (i64::MIN, i64::MAX),
        };
        inv.arg(range.0)
            .arg(range.1)
            .arg(c.now_ms)
            .arg(if c.only_cached { "1" } else { "0" });
        match &c.announce {
            Some((channel, message)) => inv.arg(channel).arg(message.as_slice()),
            None => inv.arg("").arg(""),
        };
        match &c.step {
            CountStep::Integer { .. } => inv.arg("int").arg("").arg(""),
            CountStep::Decimal { scale, precision } => inv
                .arg("dec")
                .arg(scale)
                .arg(precision.map(|p| p.to_string()).unwrap_or_default()),
        };
        // Never sent twice: a second run would count twice.
        let (answer, confirmation): (Value, _) =
            self.run_waited(&keys.value_key, inv, Resend::Never).await?;
        let confirmed = confirmation.is_confirmed();
        let bad = || self.counter_problem("unexpected answer from the increment script");
        let Value::Array(mut items) = answer else {
            return Err(bad());
        };
        let code = match items.first() {
            Some(Value::Int(n)) => *n,
            _ => return Err(bad()),
        };
        match code {
            0 => Ok(Counted::NoRow),
            2 => Ok(Counted::NotCached),
            3 => Ok(Counted::Uncached { confirmed }),
            1 if items.len() == 3 => {
                let flat = items.pop().ok_or_else(bad)?;
                let value = text(&items[1]).ok_or_else(bad)?;
                let entry = crate::representation::from_fields(&flat_pairs(flat))
                    .ok()
                    .flatten()
                    .map(bytes::Bytes::from);
                Ok(Counted::Cached {
                    value,
                    entry,
                    confirmed,
                })
            }
            -3 => Ok(Counted::OutOfRange(
                items.get(1).and_then(text).unwrap_or_default(),
            )),
            -2 => Ok(Counted::Refused(
                items.get(1).and_then(text).unwrap_or_default(),
            )),
            -1 => Err(self.counter_problem(items.get(1).and_then(text).unwrap_or_default())),
            _ => Err(bad()),
        }
    }

    /// An id's pending write and counter state, read in one step.
    pub(crate) async fn counter_state(
        &self,
        keys: &DirtyKeys,
    ) -> Result<(Option<PendingHash>, CounterState)> {
        let counter = CounterKeys::of(&keys.dirty_key, &keys.id);
        let mut inv = STATE.prepare_invoke();
        inv.key(&keys.dirty_key)
            .key(&counter.deltas)
            .key(&counter.claimed)
            .key(&counter.clears)
            .arg(&keys.id);
        let answer: Value = self.run(inv).await?;
        let bad = || self.counter_problem("unexpected answer from the counter state script");
        let Value::Array(items) = answer else {
            return Err(bad());
        };
        let mut it = items.into_iter();
        let (Some(dirty), Some(deltas), Some(Value::Int(claimed)), Some(Value::Int(clears))) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad());
        };
        let dirty = flat_pairs(dirty);
        let pending = if dirty.is_empty() {
            None
        } else {
            let d = hash_dirty_of(keys.id.clone(), &dirty).map_err(|p| self.counter_problem(p))?;
            Some(match d.write {
                HashWrite::Delete => PendingHash::Deleted,
                HashWrite::Upsert(row) => PendingHash::Row(bytes::Bytes::from(row)),
                HashWrite::Update(columns) => PendingHash::Fields(bytes::Bytes::from(columns)),
            })
        };
        let deltas = deltas_of(&flat_pairs(deltas)).map_err(|p| self.counter_problem(p))?;
        Ok((
            pending,
            CounterState {
                deltas,
                claimed: claimed == 1,
                clears: u64::try_from(clears).unwrap_or_default(),
            },
        ))
    }

    /// Claims a shard's unclaimed deltas (or answers the claimed record
    /// left over) while `token` holds the flush lease: `None` when it does
    /// not, `Some(None)` when there is nothing to claim.
    pub(crate) async fn counter_claim(
        &self,
        shard: &ShardKeys,
        token: &str,
        max: usize,
        due_ms: u64,
    ) -> Result<Option<Option<ClaimedCounters>>> {
        let head = CounterKeys::of(&shard.queue_key, "");
        let ids = self.due_ids(&head.queue, due_ms, max).await?;
        let batch = super::counters::batch_id();
        let mut inv = CLAIM.prepare_invoke();
        inv.key(&shard.lease_key)
            .key(&head.queue)
            .key(&head.claimed)
            .arg(token)
            .arg(&batch);
        for id in &ids {
            let dirty = format!("{}{id}", shard.dirty_prefix);
            inv.key(CounterKeys::of(&dirty, id).deltas)
                .key(dirty)
                .arg(id.as_str());
        }
        // Waited (on a Cluster) before its commit: a claim lost in a
        // failover would put its deltas back unclaimed after the database
        // added them. A second run answers the record the first made.
        let answer: Value = self
            .run_confirmed(&shard.lease_key, inv, "claim of a counter batch")
            .await?;
        claim_answer(answer, claimed_of).map_err(|p| self.counter_problem(p))
    }

    /// Sends `id`'s deltas of the claimed record `old` to the dead letters
    /// (`why`, JSON) and deletes its cached hash; the rest is claimed again
    /// under `new`. `None`: the record is not `old` any more; `Some(false)`:
    /// nothing is left to commit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn counter_reclaim(
        &self,
        shard: &ShardKeys,
        old: &str,
        new: &str,
        id: &str,
        value_key: &str,
        lease_key: &str,
        why: &str,
    ) -> Result<Option<bool>> {
        let head = CounterKeys::of(&shard.queue_key, "");
        let mut inv = RECLAIM.prepare_invoke();
        inv.key(&head.claimed)
            .key(&head.dead)
            .key(value_key)
            .key(lease_key)
            .arg(old)
            .arg(new)
            .arg(id)
            .arg(why);
        // Waited like the claim: the record claimed anew is committed next.
        let answer: i64 = self
            .run_confirmed(&head.claimed, inv, "new claim of a counter batch")
            .await?;
        Ok(match answer {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        })
    }

    /// Retries the counter dead letter `field` of `keys`' id (see
    /// `RETRY_DEAD`); whether it was there.
    pub(crate) async fn counter_retry_dead_letter(
        &self,
        keys: &DirtyKeys,
        field: &str,
        now_ms: u64,
        (channel, message): (String, Vec<u8>),
    ) -> Result<bool> {
        let counter = CounterKeys::of(&keys.dirty_key, &keys.id);
        let mut inv = RETRY_DEAD.prepare_invoke();
        inv.key(&counter.dead)
            .key(&counter.deltas)
            .key(&counter.queue)
            .key(&keys.value_key)
            .key(&keys.lease_key)
            .arg(field)
            .arg(keys.id.as_str())
            .arg(now_ms)
            .arg(channel)
            .arg(message);
        match self.run::<i64>(inv).await? {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(self.counter_problem(format!(
                "the counter dead letter {field:?} does not hold its deltas"
            ))),
        }
    }

    /// Clears the claimed record `batch` once committed (see `CLEAR`):
    /// `ids` are its ids with their lease and value keys, and whether
    /// their row was missing. Whether it was still there.
    pub(crate) async fn counter_clear(
        &self,
        shard: &ShardKeys,
        batch: &str,
        ids: &[(String, String, String, bool)],
        why: &str,
    ) -> Result<bool> {
        let head = CounterKeys::of(&shard.queue_key, "");
        let mut inv = CLEAR.prepare_invoke();
        inv.key(&head.claimed)
            .key(&head.dead)
            .key(&head.clears)
            .arg(batch)
            .arg(why);
        for (id, lease, value, missing) in ids {
            inv.key(lease)
                .key(value)
                .arg(id.as_str())
                .arg(if *missing { "1" } else { "0" });
        }
        Ok(self.run::<i64>(inv).await? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ids_derive_from_a_dirty_key() {
        let (id, keys) = counter_keys_of_dirty("p:{e:3}:d:a:b}:c");
        assert_eq!(id, "a:b}:c");
        assert_eq!(keys.deltas, "p:{e:3}:c:a:b}:c");
        assert_eq!(keys.claimed, "p:{e:3}:cb");
        assert_eq!(CounterKeys::of("p:{e:3}:q", "x").queue, "p:{e:3}:cq");
    }

    #[test]
    fn claimed_records_parse() {
        let pairs = vec![
            (b"b".to_vec(), b"abc".to_vec()),
            (b"d:7".to_vec(), br#"{"views":"-3"}"#.to_vec()),
        ];
        let c = claimed_of(&pairs).expect("parse");
        assert_eq!(c.batch, "abc");
        assert_eq!(c.deltas, vec![("7".into(), vec![("views".into(), -3)])]);
    }
}
