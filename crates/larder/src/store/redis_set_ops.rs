//! Write-back sets on Redis: the write step (see `board_deltas.rs` for the
//! record it shares with leaderboards, and why).
//!
//! Why a script of its own: a set's write is simpler than a board's (no
//! sums, no range checks) and must never create a one-member set, so it
//! touches the cached sorted set only when the owner's set is cached
//! whole. Every key is in its KEYS, all in the owner's slot.

use super::board_deltas::{BoardOpKeys, SetWrite, SetWritten};
use super::collection::CollectionKeys;
use super::redis::RedisStore;
use crate::error::Result;
use redis::{Script, Value};
use std::sync::LazyLock;

static SET_OP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: meta, value, lease, ops, queue
-- ARGV: owner, member, op (add|rem), score, exact (1/0), max members, now ms
local m = redis.call('HMGET', KEYS[1], 'complete', 'count')
local cached = m[1] == '1' and (tonumber(m[2]) == 0 or redis.call('EXISTS', KEYS[2]) == 1)
if m[1] == '1' and not cached then redis.call('DEL', KEYS[1]) end
local was = 0
if cached then
  if redis.call('ZSCORE', KEYS[2], ARGV[2]) then was = 1 end
  if ARGV[3] == 'rem' then
    redis.call('ZREM', KEYS[2], ARGV[2])
  elseif was == 0 then
    if ARGV[5] ~= '1' or redis.call('ZCARD', KEYS[2]) + 1 > tonumber(ARGV[6]) then
      -- Past the cap, or a score that cannot hold the member: the set
      -- stops being cached (never partly).
      redis.call('DEL', KEYS[1], KEYS[2])
      cached = false
    else
      redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
      local left = redis.call('PTTL', KEYS[1])
      if left > 0 then redis.call('PEXPIRE', KEYS[2], left) end
    end
  end
  if cached then redis.call('HSET', KEYS[1], 'count', redis.call('ZCARD', KEYS[2])) end
end
if ARGV[3] == 'rem' then
  redis.call('HSET', KEYS[4], ARGV[2], '-')
else
  redis.call('HSET', KEYS[4], ARGV[2], '=' .. ARGV[4])
end
redis.call('ZADD', KEYS[5], 'NX', ARGV[7], ARGV[1])
redis.call('DEL', KEYS[3])
if cached then return {1, was} end
return {3, 0}
",
    )
});

impl RedisStore {
    /// Runs the write step of a write-back set (see the module docs).
    pub(super) async fn record_set_op(
        &self,
        keys: &CollectionKeys,
        owner: &str,
        w: &SetWrite<'_>,
    ) -> Result<SetWritten> {
        let op_keys = BoardOpKeys::of(&keys.meta, owner);
        let mut inv = SET_OP.prepare_invoke();
        inv.key(&keys.meta)
            .key(&keys.value)
            .key(&keys.lease)
            .key(&op_keys.ops)
            .key(&op_keys.queue)
            .arg(owner)
            .arg(&w.member.member)
            .arg(if w.add { "add" } else { "rem" })
            .arg(w.member.score)
            .arg(if w.exact { "1" } else { "0" })
            .arg(w.max_members)
            .arg(w.now_ms);
        let answer = self.run_member_write(&keys.meta, inv, owner, "set").await?;
        match answer {
            Value::Array(items) => match (items.first(), items.get(1)) {
                (Some(Value::Int(1)), Some(Value::Int(was))) => Ok(SetWritten::Cached {
                    was_there: *was == 1,
                }),
                (Some(Value::Int(3)), _) => Ok(SetWritten::Uncached),
                _ => Err(self.board_problem("unexpected answer from the set write script")),
            },
            _ => Err(self.board_problem("unexpected answer from the set write script")),
        }
    }
}
