//! Cached collections on Redis: each operation of
//! [`Collections`](super::Collections) that changes anything is one Lua
//! script over the owner's keys, all declared in `KEYS` and all in the
//! owner's hash slot. Reads (the hit path) are in `redis_collection_read.rs`:
//! one script or one `MULTI`/`EXEC`, over keys of the same slot.
//!
//! A set is a sorted set: under [`MemberOrder::Lex`] every score is 0 and
//! pages are `ZRANGE … BYLEX LIMIT` (byte order of the member); under
//! [`MemberOrder::Score`] an integer member is its own score and pages are
//! `ZRANGE … BYSCORE LIMIT`.

use super::collection::{
    BoardChunk, BoardQuery, BoardRead, BoardWriteEnd, CollectionAcquired, CollectionKeys,
    CollectionMeta, Collections, FeedChunk, FeedRead, FeedWriteEnd, MemberOrder, SetChunk,
    SetQuery, SetRead, SetWriteEnd,
};
use super::redis::{ms, RedisStore};
use super::{Protocol, WriteKeys};
use crate::error::{Error, Message, Result};
use async_trait::async_trait;
use redis::{Script, ScriptInvocation};
use std::sync::LazyLock;
use std::time::Duration;

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: meta, lease, value. ARGV: token, lease ms, now ms
-- A fresh meta is an entry, unless it says the value holds members and
-- the value key is gone (evicted alone): then it is loaded again.
local m = redis.call('HMGET', KEYS[1], 'fresh', 'complete', 'count')
if m[1] and tonumber(m[1]) > tonumber(ARGV[3]) then
  if m[2] ~= '1' or tonumber(m[3] or '0') == 0 or redis.call('EXISTS', KEYS[3]) == 1 then return 1 end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return 3
",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: lease. ARGV: token
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});

/// The fill of a collection, one chunk at a time: the lease's token
/// checked, the chunk's items added to staging by `command`, and on the last
/// chunk staging renamed over the value and the meta written. Items come
/// after 9 fixed arguments; a chunk holds at most `CHUNK` members (2
/// values each) or elements, so `unpack` stays far below its limit of
/// 7,999 values.
const FILL: &str = r"
-- KEYS: meta, value, staging, lease.
-- ARGV: token, first, last, ttl ms, fresh, loaded, complete, count, stamp, then the chunk's items
local function fill(command)
  if redis.call('GET', KEYS[4]) ~= ARGV[1] then
    redis.call('DEL', KEYS[3])
    return 0
  end
  if ARGV[2] == '1' then redis.call('DEL', KEYS[3]) end
  if #ARGV > 9 then redis.call(command, KEYS[3], unpack(ARGV, 10)) end
  if ARGV[3] == '1' then
    if redis.call('EXISTS', KEYS[3]) == 1 then
      redis.call('RENAME', KEYS[3], KEYS[2])
      redis.call('PEXPIRE', KEYS[2], ARGV[4])
    else
      redis.call('DEL', KEYS[2])
    end
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], 'v', '1', 'fresh', ARGV[5], 'loaded', ARGV[6],
      'complete', ARGV[7], 'count', ARGV[8], 'stamp', ARGV[9])
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    redis.call('DEL', KEYS[4])
  elseif redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('PEXPIRE', KEYS[3], ARGV[4])
  end
  return 1
end
";

/// The end of a write to a collection, as far as every kind shares it:
/// the write's ticket checked against the owner's bookkeeping (a write
/// older than an invalidation deletes the cached collection), its count
/// of writes in flight decremented, and the lease voided. `ticket_end()`
/// answers `nil` when the script is done (it answers 0), else whether
/// this write was the only one since its ticket (the collection may be
/// changed in place).
const WRITE_TICKET: &str = r"
-- KEYS: meta, value, lease, write. ARGV: ticket, action (…|del|abort), then the kind's own
local function ticket_end()
  local base = redis.call('HGET', KEYS[4], 'base')
  if not base or tonumber(ARGV[1]) <= tonumber(base) then
    if ARGV[2] == 'abort' then return nil end
    if base then redis.call('HINCRBY', KEYS[4], 'seq', 1) end
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    return nil
  end
  local inflight = redis.call('HINCRBY', KEYS[4], 'inflight', -1)
  if inflight < 0 then
    redis.call('HSET', KEYS[4], 'inflight', 0)
    inflight = 0
  end
  if ARGV[2] == 'abort' then return nil end
  redis.call('DEL', KEYS[3])
  local seq = tonumber(redis.call('HGET', KEYS[4], 'seq') or '0')
  return seq == tonumber(ARGV[1]) and inflight == 0
end
";

/// A script of a prelude (`FILL`, `WRITE_TICKET`) and a body that uses it.
fn with_prelude(prelude: &str, body: &str) -> Script {
    Script::new(&[prelude, body].concat())
}

/// A set's (and a leaderboard's) fill chunk: `score member` pairs.
static FILL_CHUNK: LazyLock<Script> = LazyLock::new(|| with_prelude(FILL, "return fill('ZADD')"));

static WRITE_END: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        WRITE_TICKET,
        r"
-- ARGV: ticket, action (add|rem|del|abort), member, score, changed (1/0), clean (1/0), max
local alone = ticket_end()
if alone == nil then return 0 end
local op = ARGV[2]
if (op == 'add' or op == 'rem') and ARGV[6] == '1' and alone then
  local m = redis.call('HMGET', KEYS[1], 'complete', 'count')
  if not m[1] then return 0 end
  if m[1] ~= '1' then
    -- Above the cap: only the count is cached.
    if ARGV[5] == '1' then
      local c = tonumber(m[2])
      if op == 'add' then c = c + 1 elseif c > 0 then c = c - 1 end
      redis.call('HSET', KEYS[1], 'count', c)
    end
    return 1
  end
  if op == 'add' then
    local c = redis.call('ZCARD', KEYS[2])
    if c + 1 > tonumber(ARGV[7]) and not redis.call('ZSCORE', KEYS[2], ARGV[3]) then
      redis.call('DEL', KEYS[1], KEYS[2])
      return 0
    end
    redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
    local left = redis.call('PTTL', KEYS[1])
    if left > 0 then redis.call('PEXPIRE', KEYS[2], left) end
  else
    redis.call('ZREM', KEYS[2], ARGV[3])
  end
  redis.call('HSET', KEYS[1], 'count', redis.call('ZCARD', KEYS[2]))
  return 1
end
redis.call('DEL', KEYS[1], KEYS[2])
return 0
",
    )
});

static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: meta, value, staging, lease, write
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('HINCRBY', KEYS[5], 'seq', 1) end
return 1
",
    )
});

/// A feed's fill chunk: elements, in order.
static FEED_FILL_CHUNK: LazyLock<Script> =
    LazyLock::new(|| with_prelude(FILL, "return fill('RPUSH')"));

static FEED_WRITE_END: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        WRITE_TICKET,
        r"
-- ARGV: ticket, action (push|rem|del|abort), clean (1/0), element or id, head ('' none), has_head (1/0), max_len
local alone = ticket_end()
if alone == nil then return 0 end
local op = ARGV[2]
if (op == 'push' or op == 'rem') and ARGV[3] == '1' and alone then
  local m = redis.call('HMGET', KEYS[1], 'complete', 'count')
  if not m[1] then return 0 end
  if op == 'push' then
    local head = redis.call('LINDEX', KEYS[2], 0)
    local same = (ARGV[6] == '0' and not head) or (ARGV[6] == '1' and head == ARGV[5])
    if same then
      redis.call('LPUSH', KEYS[2], ARGV[4])
      local max = tonumber(ARGV[7])
      local complete = m[1]
      if redis.call('LLEN', KEYS[2]) > max then
        redis.call('LTRIM', KEYS[2], 0, max - 1)
        complete = '0'
      end
      local left = redis.call('PTTL', KEYS[1])
      if left > 0 then redis.call('PEXPIRE', KEYS[2], left) end
      redis.call('HSET', KEYS[1], 'count', redis.call('LLEN', KEYS[2]), 'complete', complete)
      return 1
    end
  elseif m[1] == '1' then
    local prefix = ARGV[4] .. string.char(0)
    for _, e in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
      if string.sub(e, 1, #prefix) == prefix then
        redis.call('LREM', KEYS[2], 1, e)
        break
      end
    end
    redis.call('HSET', KEYS[1], 'count', redis.call('LLEN', KEYS[2]))
    return 1
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return 0
",
    )
});

/// A leaderboard write's end: `ZADD` of the database's score (never
/// `ZINCRBY`) or `ZREM`, only if the write overlapped nothing.
static BOARD_WRITE_END: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        WRITE_TICKET,
        r"
-- ARGV: ticket, action (set|rem|del|abort), member, score, clean (1/0), max
local alone = ticket_end()
if alone == nil then return 0 end
local op = ARGV[2]
if (op == 'set' or op == 'rem') and ARGV[5] == '1' and alone then
  local m = redis.call('HMGET', KEYS[1], 'complete', 'count')
  if not m[1] then return 0 end
  if m[1] == '1' then
    if op == 'set' then
      if not redis.call('ZSCORE', KEYS[2], ARGV[3])
        and redis.call('ZCARD', KEYS[2]) + 1 > tonumber(ARGV[6]) then
        redis.call('DEL', KEYS[1], KEYS[2])
        return 0
      end
      redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
      local left = redis.call('PTTL', KEYS[1])
      if left > 0 then redis.call('PEXPIRE', KEYS[2], left) end
    else
      redis.call('ZREM', KEYS[2], ARGV[3])
    end
    redis.call('HSET', KEYS[1], 'count', redis.call('ZCARD', KEYS[2]))
    return 1
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return 0
",
    )
});

/// A score as Redis reads it: Rust's shortest text that parses back to
/// the same double (never an exponent Redis would misread).
fn score_arg(score: f64) -> String {
    format!("{score}")
}

fn bad(store: &RedisStore, what: &str) -> Error {
    Error::Store {
        store: store.name_str().to_owned(),
        cause: Message::cause(format!("unexpected answer from the {what} script")),
    }
}

/// A fill script's invocation with its keys and its 9 fixed arguments
/// (`first`, the meta on the `last` chunk); the chunk's items go after.
fn fill_invocation(
    script: &'static Script,
    keys: &CollectionKeys,
    token: &str,
    first: bool,
    last: Option<CollectionMeta>,
    ttl: Duration,
) -> ScriptInvocation<'static> {
    let mut inv = script.prepare_invoke();
    inv.key(&keys.meta)
        .key(&keys.value)
        .key(&keys.staging)
        .key(&keys.lease)
        .arg(token)
        .arg(if first { "1" } else { "0" })
        .arg(if last.is_some() { "1" } else { "0" })
        .arg(ms(ttl));
    let meta = last.unwrap_or(CollectionMeta {
        fresh_until_ms: 0,
        loaded_ms: 0,
        complete: false,
        count: 0,
        stamp: 0,
    });
    inv.arg(meta.fresh_until_ms)
        .arg(meta.loaded_ms)
        .arg(if meta.complete { "1" } else { "0" })
        .arg(meta.count)
        .arg(meta.stamp);
    inv
}

fn write_keys(keys: &CollectionKeys) -> WriteKeys {
    WriteKeys {
        value_key: keys.value.clone(),
        lease_key: keys.lease.clone(),
        write_key: keys.write.clone(),
    }
}

#[async_trait]
impl Collections for RedisStore {
    async fn set_read(
        &self,
        keys: &CollectionKeys,
        order: MemberOrder,
        query: &SetQuery,
    ) -> Result<SetRead> {
        self.read_set(keys, order, query).await
    }

    async fn collection_acquire(
        &self,
        keys: &CollectionKeys,
        token: &str,
        lease_ttl: Duration,
        now_ms: u64,
    ) -> Result<CollectionAcquired> {
        let mut inv = ACQUIRE.prepare_invoke();
        inv.key(&keys.meta)
            .key(&keys.lease)
            .key(&keys.value)
            .arg(token)
            .arg(ms(lease_ttl))
            .arg(now_ms);
        match self.run::<i64>(inv).await? {
            1 => Ok(CollectionAcquired::Present),
            2 => Ok(CollectionAcquired::Lease),
            3 => Ok(CollectionAcquired::Held),
            _ => Err(bad(self, "collection acquire")),
        }
    }

    async fn collection_release(&self, keys: &CollectionKeys, token: &str) -> Result<()> {
        let mut inv = RELEASE.prepare_invoke();
        inv.key(&keys.lease).arg(token);
        self.run::<i64>(inv).await.map(drop)
    }

    async fn set_fill_chunk(&self, keys: &CollectionKeys, chunk: &SetChunk<'_>) -> Result<bool> {
        let mut inv = fill_invocation(
            &FILL_CHUNK,
            keys,
            chunk.token,
            chunk.first,
            chunk.last,
            chunk.ttl,
        );
        for m in chunk.members {
            inv.arg(m.score).arg(&m.member);
        }
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn collection_write_begin(
        &self,
        keys: &CollectionKeys,
        ttl: Duration,
    ) -> Result<(u64, bool)> {
        let ticket = self.write_begin(&write_keys(keys), ttl).await?;
        Ok((ticket.seq, ticket.clean))
    }

    async fn set_write_end(
        &self,
        keys: &CollectionKeys,
        seq: u64,
        clean: bool,
        end: &SetWriteEnd,
    ) -> Result<bool> {
        let mut inv = WRITE_END.prepare_invoke();
        inv.key(&keys.meta)
            .key(&keys.value)
            .key(&keys.lease)
            .key(&keys.write)
            .arg(seq);
        let flag = |b: bool| if b { "1" } else { "0" };
        match end {
            SetWriteEnd::Add {
                member,
                changed,
                max,
            } => inv
                .arg("add")
                .arg(&member.member)
                .arg(member.score)
                .arg(flag(*changed))
                .arg(flag(clean))
                .arg(*max),
            SetWriteEnd::Remove { member, changed } => inv
                .arg("rem")
                .arg(&member.member)
                .arg(member.score)
                .arg(flag(*changed))
                .arg(flag(clean))
                .arg(0),
            SetWriteEnd::Delete => inv.arg("del").arg("").arg(0).arg("0").arg("0").arg(0),
            SetWriteEnd::Abort => inv.arg("abort").arg("").arg(0).arg("0").arg("0").arg(0),
        };
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn feed_read(&self, keys: &CollectionKeys, offset: u64, limit: u64) -> Result<FeedRead> {
        self.read_feed(keys, offset, limit).await
    }

    async fn feed_fill_chunk(&self, keys: &CollectionKeys, chunk: &FeedChunk<'_>) -> Result<bool> {
        let mut inv = fill_invocation(
            &FEED_FILL_CHUNK,
            keys,
            chunk.token,
            chunk.first,
            chunk.last,
            chunk.ttl,
        );
        for e in chunk.elements {
            inv.arg(e.as_slice());
        }
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn feed_write_end(
        &self,
        keys: &CollectionKeys,
        seq: u64,
        clean: bool,
        end: &FeedWriteEnd,
    ) -> Result<bool> {
        let mut inv = FEED_WRITE_END.prepare_invoke();
        inv.key(&keys.meta)
            .key(&keys.value)
            .key(&keys.lease)
            .key(&keys.write)
            .arg(seq);
        let clean = if clean { "1" } else { "0" };
        match end {
            FeedWriteEnd::Push {
                element,
                head,
                max_len,
            } => inv
                .arg("push")
                .arg(clean)
                .arg(element.as_slice())
                .arg(head.as_deref().unwrap_or_default())
                .arg(if head.is_some() { "1" } else { "0" })
                .arg(*max_len),
            FeedWriteEnd::Remove { id } => inv
                .arg("rem")
                .arg(clean)
                .arg(id.as_str())
                .arg("")
                .arg("0")
                .arg(0),
            FeedWriteEnd::Delete => inv.arg("del").arg(clean).arg("").arg("").arg("0").arg(0),
            FeedWriteEnd::Abort => inv.arg("abort").arg(clean).arg("").arg("").arg("0").arg(0),
        };
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn collection_owners(&self, namespace: &str) -> Result<Vec<String>> {
        let keys = self.keys_with_prefix(namespace).await?;
        Ok(super::collection::owners_of_keys(namespace, &keys))
    }

    async fn collection_invalidate(&self, keys: &CollectionKeys) -> Result<()> {
        let mut inv = INVALIDATE.prepare_invoke();
        inv.key(&keys.meta)
            .key(&keys.value)
            .key(&keys.staging)
            .key(&keys.lease)
            .key(&keys.write);
        self.run::<i64>(inv).await.map(drop)
    }

    async fn board_read(&self, keys: &CollectionKeys, query: &BoardQuery) -> Result<BoardRead> {
        self.read_board(keys, query).await
    }

    async fn board_fill_chunk(
        &self,
        keys: &CollectionKeys,
        chunk: &BoardChunk<'_>,
    ) -> Result<bool> {
        // The set's fill script: `ZADD staging score member …` is the same.
        let mut inv = fill_invocation(
            &FILL_CHUNK,
            keys,
            chunk.token,
            chunk.first,
            chunk.last,
            chunk.ttl,
        );
        for m in chunk.members {
            inv.arg(score_arg(m.score)).arg(m.member);
        }
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn board_write_end(
        &self,
        keys: &CollectionKeys,
        seq: u64,
        clean: bool,
        end: &BoardWriteEnd,
    ) -> Result<bool> {
        let mut inv = BOARD_WRITE_END.prepare_invoke();
        inv.key(&keys.meta)
            .key(&keys.value)
            .key(&keys.lease)
            .key(&keys.write)
            .arg(seq);
        let clean = if clean { "1" } else { "0" };
        match end {
            BoardWriteEnd::Set { member, score, max } => inv
                .arg("set")
                .arg(member.as_str())
                .arg(score_arg(*score))
                .arg(clean)
                .arg(*max),
            BoardWriteEnd::Remove { member } => inv
                .arg("rem")
                .arg(member.as_str())
                .arg("0")
                .arg(clean)
                .arg(0),
            BoardWriteEnd::Delete => inv.arg("del").arg("").arg("0").arg(clean).arg(0),
            BoardWriteEnd::Abort => inv.arg("abort").arg("").arg("0").arg(clean).arg(0),
        };
        Ok(self.run::<i64>(inv).await? == 1)
    }
}
