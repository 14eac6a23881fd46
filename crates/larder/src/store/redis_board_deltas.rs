//! Write-back leaderboards on Redis: the scripts behind [`BoardLog`]
//! (see `board_deltas.rs` for the keys and why). Every key a script
//! touches is in its KEYS, all in the owner's (or the shard's) slot.

use super::board_deltas::{
    BoardDeadLetter, BoardLog, BoardOpKeys, BoardOpState, BoardWrite, BoardWritten, ClaimedOps,
    MemberOp, MemberOps, SetWrite, SetWritten,
};
use super::collection::CollectionKeys;
use super::dirty::{ShardBacklog, ShardKeys};
use super::redis::RedisStore;
use super::redis_counters::{claim_answer, flat_pairs, text};
use super::replica_wait::Resend;
use crate::error::{Error, Message, Result};
use crate::source::MAX_EXACT_SCORE;
use redis::{Script, Value};
use std::sync::LazyLock;

/// Lua: a number as text Redis and Rust read back to the same double;
/// whether `a + b` leaves ±`limit`, decided without computing the sum
/// (which a double rounds past 2^53): both are within ±2^53, so
/// `limit - b` is exact when `b` is positive.
const FMT: &str = r"
local function fmt(x) return string.format('%.17g', x) end
local function beyond(a, b, limit)
  if b > 0 then return a > limit - b end
  if b < 0 then return a < -limit - b end
  return math.abs(a) > limit
end
";

static OP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{FMT}
-- KEYS: meta, value, lease, ops, queue
-- ARGV: owner, member, op (incr|set|rem), v, integer (1/0), limit, now ms, max members, only cached (1/0)
local m = redis.call('HMGET', KEYS[1], 'complete', 'count')
local cached = m[1] == '1' and (tonumber(m[2]) == 0 or redis.call('EXISTS', KEYS[2]) == 1)
if m[1] == '1' and not cached then redis.call('DEL', KEYS[1]) end
if not cached and ARGV[9] == '1' then return {{2}} end
local op, v, limit = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6])
local int = ARGV[5] == '1'
-- The pending operation, composed with this write.
local cur = redis.call('HGET', KEYS[4], ARGV[2])
local new
if op == 'incr' then
  if not cur then
    new = '+' .. fmt(v)
  elseif cur == '-' then
    new = '=' .. fmt(v)
  else
    local p = tonumber(cur:sub(2))
    local n = p + v
    if int and beyond(p, v, limit) then return {{-3, fmt(n)}} end
    new = cur:sub(1, 1) .. fmt(n)
  end
elseif op == 'set' then
  new = '=' .. fmt(v)
else
  new = '-'
end
-- The cached board, when it is cached whole.
local score, was = '', 0
if cached then
  local before = redis.call('ZSCORE', KEYS[2], ARGV[2])
  if before then was = 1 end
  if op == 'rem' then
    redis.call('ZREM', KEYS[2], ARGV[2])
  else
    local s = v
    if op == 'incr' and before then
      s = tonumber(before) + v
      if int and beyond(tonumber(before), v, limit) then return {{-3, fmt(s)}} end
    end
    if not before and redis.call('ZCARD', KEYS[2]) + 1 > tonumber(ARGV[8]) then
      -- Past the cap: the board stops being cached (never partly).
      redis.call('DEL', KEYS[1], KEYS[2])
      cached = false
    else
      redis.call('ZADD', KEYS[2], fmt(s), ARGV[2])
      local left = redis.call('PTTL', KEYS[1])
      if left > 0 then redis.call('PEXPIRE', KEYS[2], left) end
      score = fmt(s)
    end
  end
  if cached then redis.call('HSET', KEYS[1], 'count', redis.call('ZCARD', KEYS[2])) end
end
redis.call('HSET', KEYS[4], ARGV[2], new)
redis.call('ZADD', KEYS[5], 'NX', ARGV[7], ARGV[1])
redis.call('DEL', KEYS[3])
if cached then return {{1, score, was}} end
return {{3}}
"
    ))
});

static STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: ops, claimed, clears. ARGV: owner
return {redis.call('HGETALL', KEYS[1]), redis.call('HEXISTS', KEYS[2], 'o:' .. ARGV[1]),
  tonumber(redis.call('GET', KEYS[3]) or '0')}
",
    )
});

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: flush lease, queue, claimed, then per owner: ops
-- ARGV: token, batch id, then the owners
-- A claimed record left over (a crash, a failed commit) is answered as it
-- is: it commits under its own id or not at all.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {1, redis.call('HGETALL', KEYS[3])} end
local n = 0
for i = 3, #ARGV do
  local k = KEYS[i + 1]
  local r = redis.call('HGETALL', k)
  if #r > 0 then
    local t = {}
    for j = 1, #r, 2 do t[r[j]] = r[j + 1] end
    redis.call('HSET', KEYS[3], 'o:' .. ARGV[i], cjson.encode(t))
    n = n + 1
  end
  redis.call('DEL', k)
  redis.call('ZREM', KEYS[2], ARGV[i])
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
-- One member of the claimed record refused by the database: its
-- operation goes to the dead letters, the owner's cached board (which
-- counted it) goes, the rest is claimed again under a new batch id.
-- KEYS: claimed, dead, meta, value, lease
-- ARGV: old batch, new batch, owner, member, why (JSON)
if redis.call('HGET', KEYS[1], 'b') ~= ARGV[1] then return 0 end
local f = 'o:' .. ARGV[3]
local d = redis.call('HGET', KEYS[1], f)
if d then
  local t = cjson.decode(d)
  local op = t[ARGV[4]]
  if op then
    t[ARGV[4]] = nil
    redis.call('HSET', KEYS[2], ARGV[3] .. '\n' .. ARGV[4] .. '#' .. ARGV[1],
      '{"why":' .. ARGV[5] .. ',"op":' .. cjson.encode(op) .. '}')
  end
  if next(t) == nil then
    redis.call('HDEL', KEYS[1], f)
  else
    redis.call('HSET', KEYS[1], f, cjson.encode(t))
  end
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
if redis.call('HLEN', KEYS[1]) <= 1 then
  redis.call('DEL', KEYS[1])
  return 2
end
redis.call('HSET', KEYS[1], 'b', ARGV[2])
return 1
"#,
    )
});

static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- A committed claimed record, cleared by its batch id: the read lease of
-- every owner in it is voided (a load from before the commit cannot
-- fill), a cached count of an owner above the cap goes (the database
-- holds the batch now), cached boards stay (they hold every operation).
-- KEYS: claimed, clears, then per owner: lease, meta. ARGV: batch
if redis.call('HGET', KEYS[1], 'b') ~= ARGV[1] then return 0 end
for i = 3, #KEYS, 2 do
  redis.call('DEL', KEYS[i])
  local c = redis.call('HGET', KEYS[i + 1], 'complete')
  if c and c ~= '1' then redis.call('DEL', KEYS[i + 1]) end
end
redis.call('DEL', KEYS[1])
redis.call('INCR', KEYS[2])
return 1
",
    )
});

/// Operations from `HGETALL` pairs (member → operation).
fn ops_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<MemberOps, String> {
    pairs
        .iter()
        .map(|(k, v)| {
            let member = String::from_utf8(k.clone()).map_err(|e| e.to_string())?;
            let op = std::str::from_utf8(v)
                .ok()
                .and_then(MemberOp::parse)
                .ok_or_else(|| {
                    format!("the pending operation of member {member:?} does not parse")
                })?;
            Ok((member, op))
        })
        .collect()
}

/// A claimed record from its `HGETALL` pairs.
fn claimed_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<ClaimedOps, String> {
    let mut batch = None;
    let mut owners = Vec::new();
    for (k, v) in pairs {
        if k.as_slice() == b"b" {
            batch = Some(String::from_utf8(v.clone()).map_err(|e| e.to_string())?);
        } else if let Some(owner) = k.strip_prefix(b"o:") {
            let owner = String::from_utf8(owner.to_vec()).map_err(|e| e.to_string())?;
            let ops: std::collections::BTreeMap<String, String> = serde_json::from_slice(v)
                .map_err(|e| format!("claimed operations of {owner:?}: {e}"))?;
            let ops = ops
                .into_iter()
                .map(|(member, op)| {
                    MemberOp::parse(&op)
                        .map(|op| (member.clone(), op))
                        .ok_or_else(|| {
                            format!("the claimed operation of {owner:?}/{member:?} does not parse")
                        })
                })
                .collect::<std::result::Result<MemberOps, String>>()?;
            owners.push((owner, ops));
        }
    }
    let batch = batch.ok_or("a claimed record without a batch id")?;
    Ok(ClaimedOps { batch, owners })
}

/// A score argument: Rust's shortest text that parses back to the same
/// double (no exponent).
fn num(v: f64) -> String {
    format!("{v}")
}

impl RedisStore {
    /// Runs the write step of a write-back `kind` (leaderboard, set) on
    /// the slot of `key`: never sent twice (an increment would count
    /// twice); on a Cluster waited for the master's replicas, a write they
    /// did not all confirm logged.
    pub(super) async fn run_member_write(
        &self,
        key: &str,
        inv: redis::ScriptInvocation<'_>,
        owner: &str,
        kind: &str,
    ) -> Result<Value> {
        let (answer, confirmation): (Value, _) = self.run_waited(key, inv, Resend::Never).await?;
        if !confirmation.is_confirmed() {
            tracing::warn!(
                store = self.name_str(),
                owner,
                kind,
                "a write was not confirmed by the master's replicas (WAIT); a failover of that master now could lose it"
            );
        }
        Ok(answer)
    }

    pub(super) fn board_problem(&self, problem: impl Into<String>) -> Error {
        Error::Store {
            store: self.name_str().to_owned(),
            cause: Message::cause(problem.into()),
        }
    }
}

#[async_trait::async_trait]
impl BoardLog for RedisStore {
    async fn board_op(
        &self,
        keys: &CollectionKeys,
        owner: &str,
        w: &BoardWrite<'_>,
    ) -> Result<BoardWritten> {
        let op_keys = BoardOpKeys::of(&keys.meta, owner);
        let (op, v) = match w.op {
            MemberOp::Add(by) => ("incr", by),
            MemberOp::Set(score) => ("set", score),
            MemberOp::Remove => ("rem", 0.0),
        };
        let mut inv = OP.prepare_invoke();
        inv.key(&keys.meta)
            .key(&keys.value)
            .key(&keys.lease)
            .key(&op_keys.ops)
            .key(&op_keys.queue)
            .arg(owner)
            .arg(w.member)
            .arg(op)
            .arg(num(v))
            .arg(if w.integer { "1" } else { "0" })
            .arg(MAX_EXACT_SCORE)
            .arg(w.now_ms)
            .arg(w.max_members)
            .arg(if w.only_cached { "1" } else { "0" });
        let answer = self
            .run_member_write(&keys.meta, inv, owner, "leaderboard")
            .await?;
        let bad = || self.board_problem("unexpected answer from the leaderboard write script");
        let Value::Array(items) = answer else {
            return Err(bad());
        };
        let number = |i: usize| {
            items
                .get(i)
                .and_then(text)
                .and_then(|s| s.parse::<f64>().ok())
        };
        match items.first() {
            Some(Value::Int(1)) => Ok(BoardWritten::Cached {
                score: number(1),
                was_there: matches!(items.get(2), Some(Value::Int(1))),
            }),
            Some(Value::Int(2)) => Ok(BoardWritten::NotCached),
            Some(Value::Int(3)) => Ok(BoardWritten::Uncached),
            Some(Value::Int(-3)) => Ok(BoardWritten::OutOfRange(number(1).unwrap_or(f64::NAN))),
            _ => Err(bad()),
        }
    }

    async fn set_op(
        &self,
        keys: &CollectionKeys,
        owner: &str,
        write: &SetWrite<'_>,
    ) -> Result<SetWritten> {
        self.record_set_op(keys, owner, write).await
    }

    async fn board_state(&self, keys: &CollectionKeys, owner: &str) -> Result<BoardOpState> {
        let op_keys = BoardOpKeys::of(&keys.meta, owner);
        let mut inv = STATE.prepare_invoke();
        inv.key(&op_keys.ops)
            .key(&op_keys.claimed)
            .key(&op_keys.clears)
            .arg(owner);
        let answer: Value = self.run(inv).await?;
        let bad = || self.board_problem("unexpected answer from the leaderboard state script");
        let Value::Array(items) = answer else {
            return Err(bad());
        };
        let mut it = items.into_iter();
        let (Some(ops), Some(Value::Int(claimed)), Some(Value::Int(clears))) =
            (it.next(), it.next(), it.next())
        else {
            return Err(bad());
        };
        let ops = ops_of(&flat_pairs(ops)).map_err(|p| self.board_problem(p))?;
        Ok(BoardOpState {
            ops,
            claimed: claimed == 1,
            clears: u64::try_from(clears).unwrap_or_default(),
        })
    }

    async fn board_claim(
        &self,
        shard: &ShardKeys,
        token: &str,
        max: usize,
        due_ms: u64,
    ) -> Result<Option<Option<ClaimedOps>>> {
        let head = BoardOpKeys::of(&shard.queue_key, "");
        let owners = self.due_ids(&head.queue, due_ms, max).await?;
        let batch = super::counters::batch_id();
        let mut inv = CLAIM.prepare_invoke();
        inv.key(&shard.lease_key)
            .key(&head.queue)
            .key(&head.claimed)
            .arg(token)
            .arg(&batch);
        for owner in &owners {
            inv.key(BoardOpKeys::of(&shard.queue_key, owner).ops)
                .arg(owner.as_str());
        }
        // Waited (on a Cluster) before its commit, as a counter claim is.
        let answer: Value = self
            .run_confirmed(&shard.lease_key, inv, "claim of a leaderboard batch")
            .await?;
        claim_answer(answer, claimed_of).map_err(|p| self.board_problem(p))
    }

    async fn board_reclaim(
        &self,
        shard: &ShardKeys,
        (old, new): (&str, &str),
        (owner, keys): (&str, &CollectionKeys),
        member: &str,
        why: &str,
    ) -> Result<Option<bool>> {
        let head = BoardOpKeys::of(&shard.queue_key, "");
        let mut inv = RECLAIM.prepare_invoke();
        inv.key(&head.claimed)
            .key(&head.dead)
            .key(&keys.meta)
            .key(&keys.value)
            .key(&keys.lease)
            .arg(old)
            .arg(new)
            .arg(owner)
            .arg(member)
            .arg(why);
        let answer: i64 = self
            .run_confirmed(&head.claimed, inv, "new claim of a leaderboard batch")
            .await?;
        Ok(match answer {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        })
    }

    async fn board_clear(
        &self,
        shard: &ShardKeys,
        batch: &str,
        keys: &[CollectionKeys],
    ) -> Result<bool> {
        let head = BoardOpKeys::of(&shard.queue_key, "");
        let mut inv = CLEAR.prepare_invoke();
        inv.key(&head.claimed).key(&head.clears).arg(batch);
        for k in keys {
            inv.key(&k.lease).key(&k.meta);
        }
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn board_backlog(&self, shards: &[ShardKeys]) -> Result<Vec<ShardBacklog>> {
        let heads: Vec<BoardOpKeys> = shards
            .iter()
            .map(|shard| BoardOpKeys::of(&shard.queue_key, ""))
            .collect();
        let slots: Vec<&str> = heads.iter().map(|h| h.queue.as_str()).collect();
        // One pipeline per hash slot on a Cluster (one on a single Redis).
        let answers = self
            .grouped(&slots, 4, |pipe, i| {
                let head = &heads[i];
                pipe.cmd("ZCARD")
                    .arg(&head.queue)
                    .cmd("ZRANGE")
                    .arg(&head.queue)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .cmd("EXISTS")
                    .arg(&head.claimed)
                    .cmd("HLEN")
                    .arg(&head.dead);
            })
            .await?;
        let count = |v: &Value| match v {
            Value::Int(n) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        Ok(answers
            .chunks(4)
            .map(|c| ShardBacklog {
                pending: count(&c[0]) + count(&c[2]),
                oldest_ms: match &c[1] {
                    Value::Array(pair) => pair
                        .get(1)
                        .and_then(text)
                        .and_then(|s| s.parse::<f64>().ok())
                        .map(|ms| ms as u64),
                    _ => None,
                },
                claimed: count(&c[2]) == 1,
                dead: count(&c[3]),
            })
            .collect())
    }

    async fn board_dead_letters(&self, shards: &[ShardKeys]) -> Result<Vec<BoardDeadLetter>> {
        let mut out = Vec::new();
        for shard in shards {
            let head = BoardOpKeys::of(&shard.queue_key, "");
            let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(&head.dead)
                .query_async(&mut self.conn())
                .await
                .map_err(|e| self.error(e))?;
            for (field, value) in pairs {
                let Some((owner, rest)) = field.split_once('\n') else {
                    continue;
                };
                let (member, batch) = rest.rsplit_once('#').unwrap_or((rest, ""));
                let doc: serde_json::Value = serde_json::from_str(&value).unwrap_or_default();
                out.push(BoardDeadLetter {
                    owner: owner.to_owned(),
                    member: member.to_owned(),
                    batch: batch.to_owned(),
                    why: doc.get("why").map(|w| w.to_string()).unwrap_or_default(),
                    op: doc
                        .get("op")
                        .and_then(|o| o.as_str())
                        .and_then(MemberOp::parse),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_records_parse() {
        let pairs = vec![
            (b"b".to_vec(), b"abc".to_vec()),
            (
                b"o:7".to_vec(),
                br#"{"x":"+3","y":"=2.5","z":"-"}"#.to_vec(),
            ),
        ];
        let c = claimed_of(&pairs).expect("parse");
        assert_eq!(c.batch, "abc");
        let ops = &c.owners[0].1;
        assert_eq!(ops["x"], MemberOp::Add(3.0));
        assert_eq!(ops["y"], MemberOp::Set(2.5));
        assert_eq!(ops["z"], MemberOp::Remove);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn keys_derive_from_a_shard_key() {
        let k = BoardOpKeys::of("p:{b:3}:m:o:1", "o:1");
        assert_eq!(k.ops, "p:{b:3}:bo:o:1");
        assert_eq!(k.claimed, "p:{b:3}:bb");
    }
}
