//! The hit path of cached collections on Redis: one round trip that reads
//! an owner's meta hash and its value together, atomically (one script or
//! one `MULTI`/`EXEC`, all keys in the owner's hash slot, so it holds on
//! Cluster too), and never sees one fill's meta with another's value.
//!
//! Why two shapes: a hit must cost close to the raw command it wraps, and
//! the costs are on both sides.
//! - A Lua script pays, on the server, for every string it moves between
//!   Redis and Lua: a 20-row `LRANGE` through a script costs Redis about
//!   five times the raw command, `MULTI` + `HMGET` + `EXISTS` + `LRANGE` +
//!   `EXEC` well under twice. So reads that answer a list (a feed's page,
//!   a leaderboard's top) are transactions, decided client-side.
//! - The client pays per RESP value it parses (redis-rs builds a `Value`
//!   tree), and a transaction adds `OK` and one `QUEUED` per command. A
//!   set's membership answer is one flag: there the script wins, and
//!   answers the meta and the flag as *one* string (see [`Fields`]).
//!
//! Either way a read is a miss when the meta is absent, or when it says
//! the value holds members but the value key is gone (evicted): the same
//! rule the memory store follows. Whether the value exists is read in the
//! same snapshot: `EXISTS` in the transaction, and in the script only when
//! the answer is empty (a member found proves the key exists).

use super::collection::{
    BoardAnswer, BoardQuery, BoardRead, CollectionKeys, CollectionMeta, FeedRead, MemberOrder,
    SetAnswer, SetQuery, SetRead,
};
use super::redis::RedisStore;
use crate::error::{Error, Message, Result};
use redis::Value;
use std::sync::LazyLock;

/// A set read. A miss answers `0`; a hit one string of fields separated by
/// single spaces: `fresh loaded complete count stamp`, then — for a
/// complete set — `1` or `0` (`has`), or each member as `<length>
/// <bytes>` (`page`), or nothing (`meta`). One string because the client
/// parses it in one pass, where an array costs it a value per field.
static SET_READ: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS: meta, value. ARGV: op (has|page|meta), order (lex|score), member or cursor ('' = start), limit
local m = redis.call('HMGET', KEYS[1], 'fresh', 'loaded', 'complete', 'count', 'stamp')
if not m[1] then return 0 end
local meta = m[1] .. ' ' .. m[2] .. ' ' .. m[3] .. ' ' .. m[4] .. ' ' .. (m[5] or '0')
if m[3] ~= '1' then return meta end
-- A complete set with members whose value key is gone (evicted) is a miss;
-- an answer found proves the key exists, so EXISTS runs only without one.
if ARGV[1] == 'has' then
  if redis.call('ZSCORE', KEYS[2], ARGV[3]) then return meta .. ' 1' end
  if tonumber(m[4]) > 0 and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
  return meta .. ' 0'
end
local page = {}
local n = tonumber(ARGV[4])
if ARGV[1] == 'page' and n > 0 then
  if ARGV[2] == 'lex' then
    local from = '-'
    if ARGV[3] ~= '' then from = '(' .. ARGV[3] end
    page = redis.call('ZRANGE', KEYS[2], from, '+', 'BYLEX', 'LIMIT', 0, n)
  else
    local from = '-inf'
    if ARGV[3] ~= '' then from = '(' .. ARGV[3] end
    page = redis.call('ZRANGE', KEYS[2], from, '+inf', 'BYSCORE', 'LIMIT', 0, n)
  end
end
if #page == 0 then
  if tonumber(m[4]) > 0 and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
  return meta
end
local r = {meta}
for i = 1, #page do
  r[2 * i] = #page[i]
  r[2 * i + 1] = page[i]
end
return table.concat(r, ' ')
",
    )
});

/// The meta's fields a read needs, in the order [`meta_of`] reads them.
const META_FIELDS: [&str; 5] = ["fresh", "loaded", "complete", "count", "stamp"];

/// A cursor over a [`SET_READ`] hit: numbers and length-prefixed items,
/// each followed by one space (or the end). No allocation: the answer's
/// bytes are borrowed until the caller keeps them.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// The next field's bytes, up to a space or the end.
    fn word(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let end = self
            .rest
            .iter()
            .position(|b| *b == b' ')
            .unwrap_or(self.rest.len());
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest.get(1..).unwrap_or_default();
        Some(word)
    }

    /// The next field as a number.
    fn number(&mut self) -> Option<u64> {
        parse_u64(self.word()?)
    }

    /// The next `<length> <bytes>` item.
    fn item(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.number()?).ok()?;
        if self.rest.len() < len {
            return None;
        }
        let (item, rest) = self.rest.split_at(len);
        self.rest = match rest {
            [] => rest,
            [b' ', rest @ ..] => rest,
            _ => return None,
        };
        Some(item)
    }

    /// The meta's five fields.
    fn meta(&mut self) -> Option<CollectionMeta> {
        Some(CollectionMeta {
            fresh_until_ms: self.number()?,
            loaded_ms: self.number()?,
            complete: self.number()? == 1,
            count: self.number()?,
            stamp: self.number()?,
        })
    }
}

/// Decimal digits as a `u64` (`None` for anything else, or an overflow).
fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u64, |n, d| {
        let d = d.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// A field of an `HMGET` answer as a number (`None`: absent or not one).
fn number_of(v: &Value) -> Option<u64> {
    match v {
        Value::BulkString(b) => parse_u64(b),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// The meta from the `HMGET` of [`META_FIELDS`]: `Ok(None)` when absent.
fn meta_of(v: &Value) -> Option<Option<CollectionMeta>> {
    let Value::Array(f) = v else { return None };
    let [fresh, loaded, complete, count, stamp] = f.as_slice() else {
        return None;
    };
    if matches!(fresh, Value::Nil) {
        return Some(None);
    }
    Some(Some(CollectionMeta {
        fresh_until_ms: number_of(fresh)?,
        loaded_ms: number_of(loaded)?,
        complete: number_of(complete)? == 1,
        count: number_of(count)?,
        stamp: number_of(stamp).unwrap_or(0),
    }))
}

/// A text answer moved out of its `Value` (no copy).
fn text_of(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A score as Redis answers it (`inf`, `-inf` included).
fn score_of(v: &Value) -> Option<f64> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::Double(d) => Some(*d),
        _ => None,
    }
}

fn order_arg(order: MemberOrder) -> &'static str {
    match order {
        MemberOrder::Lex => "lex",
        MemberOrder::Score => "score",
    }
}

/// What a transaction read: the meta, whether the value key exists, and
/// the query's own answers in order.
struct Snapshot {
    meta: CollectionMeta,
    exists: bool,
    answers: std::vec::IntoIter<Value>,
}

impl Snapshot {
    /// Whether the meta says the value holds members (a feed's list, a
    /// complete board) while the value key is gone: a miss.
    fn value_lost(&self, holds_members: bool) -> bool {
        holds_members && self.meta.count > 0 && !self.exists
    }
}

impl RedisStore {
    fn bad_read(&self, what: &str) -> Error {
        Error::Store {
            store: self.name_str().to_owned(),
            cause: Message::cause(format!("unexpected answer to the {what} read")),
        }
    }

    /// Runs `cmd`, an `EVALSHA` of `script`, loading the script once if
    /// Redis does not know it (after a restart or `SCRIPT FLUSH`).
    async fn eval_read(&self, script: &redis::Script, cmd: &redis::Cmd) -> Result<Value> {
        let mut conn = self.conn();
        match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| self.error(e))?;
                cmd.query_async(&mut conn).await
            }
            answer => answer,
        }
        .map_err(|e| self.error(e))
    }

    /// Runs `MULTI`, `HMGET` of the meta, `EXISTS` of the value, the
    /// commands `query` adds, `EXEC`; `None` when no meta is cached.
    async fn snapshot(
        &self,
        keys: &CollectionKeys,
        what: &str,
        query: impl FnOnce(&mut redis::Pipeline),
    ) -> Result<Option<Snapshot>> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HMGET")
            .arg(&keys.meta)
            .arg(&META_FIELDS[..])
            .cmd("EXISTS")
            .arg(&keys.value);
        query(&mut pipe);
        let answers: Vec<Value> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))?;
        let mut answers = answers.into_iter();
        let (Some(meta), Some(exists)) = (answers.next(), answers.next()) else {
            return Err(self.bad_read(what));
        };
        let Some(meta) = meta_of(&meta).ok_or_else(|| self.bad_read(what))? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta,
            exists: matches!(exists, Value::Int(1)),
            answers,
        }))
    }

    /// [`Collections::set_read`](super::Collections::set_read): one
    /// `EVALSHA` of [`SET_READ`].
    pub(super) async fn read_set(
        &self,
        keys: &CollectionKeys,
        order: MemberOrder,
        query: &SetQuery,
    ) -> Result<SetRead> {
        // The command is built directly, in one buffer of about its size,
        // not through a `ScriptInvocation`, which copies every argument.
        let member = match query {
            SetQuery::Contains(m) => m.member.len(),
            SetQuery::Page { after, .. } => after.as_ref().map_or(0, |a| a.member.len()),
            SetQuery::Meta => 0,
        };
        let mut cmd =
            redis::Cmd::with_capacity(9, 96 + keys.meta.len() + keys.value.len() + member);
        cmd.arg("EVALSHA")
            .arg(SET_READ.get_hash())
            .arg(2)
            .arg(&keys.meta)
            .arg(&keys.value);
        match query {
            SetQuery::Contains(m) => {
                cmd.arg("has").arg(order_arg(order)).arg(&m.member).arg(0);
            }
            SetQuery::Page { after, limit } => {
                cmd.arg("page").arg(order_arg(order));
                match (after, order) {
                    (None, _) => cmd.arg(""),
                    (Some(a), MemberOrder::Lex) => cmd.arg(&a.member),
                    (Some(a), MemberOrder::Score) => cmd.arg(a.score),
                };
                cmd.arg(*limit);
            }
            SetQuery::Meta => {
                cmd.arg("meta").arg(order_arg(order)).arg("").arg(0);
            }
        }
        let hit = match self.eval_read(&SET_READ, &cmd).await? {
            Value::Int(0) => return Ok(SetRead::Miss),
            Value::BulkString(b) => b,
            _ => return Err(self.bad_read("set")),
        };
        let mut fields = Fields { rest: &hit };
        let meta = fields.meta().ok_or_else(|| self.bad_read("set"))?;
        if !meta.complete {
            return Ok(SetRead::Hit { meta, answer: None });
        }
        let answer = match query {
            SetQuery::Contains(_) => SetAnswer::Contains(fields.number() == Some(1)),
            SetQuery::Page { .. } => {
                let mut members = Vec::new();
                while !fields.rest.is_empty() {
                    let member = fields
                        .item()
                        .and_then(|m| std::str::from_utf8(m).ok())
                        .ok_or_else(|| self.bad_read("set"))?;
                    members.push(member.to_owned());
                }
                SetAnswer::Page(members)
            }
            SetQuery::Meta => SetAnswer::Meta,
        };
        Ok(SetRead::Hit {
            meta,
            answer: Some(answer),
        })
    }

    /// [`Collections::feed_read`](super::Collections::feed_read): a
    /// transaction ending in `LRANGE offset offset+limit-1`.
    pub(super) async fn read_feed(
        &self,
        keys: &CollectionKeys,
        offset: u64,
        limit: u64,
    ) -> Result<FeedRead> {
        // A list holds fewer than 2^32 elements: any offset past 2^40
        // reads the same empty page, and the stop index stays an i64.
        let offset = offset.min(1 << 40);
        let limit = limit.min(1 << 40);
        let snapshot = self
            .snapshot(keys, "feed", |pipe| {
                if limit > 0 {
                    pipe.cmd("LRANGE")
                        .arg(&keys.value)
                        .arg(offset)
                        .arg(offset + limit - 1);
                }
            })
            .await?;
        // A feed caches its newest items even above the cap.
        let Some(Snapshot {
            meta, mut answers, ..
        }) = snapshot.filter(|s| !s.value_lost(true))
        else {
            return Ok(FeedRead::Miss);
        };
        let elements = match answers.next() {
            None => Vec::new(),
            Some(Value::Array(list)) => list
                .into_iter()
                .map(|e| match e {
                    Value::BulkString(b) => Ok(bytes::Bytes::from(b)),
                    _ => Err(self.bad_read("feed")),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(self.bad_read("feed")),
        };
        Ok(FeedRead::Hit { meta, elements })
    }

    /// [`Collections::board_read`](super::Collections::board_read): a
    /// transaction ending in `ZREVRANGE … WITHSCORES` (rank order: score
    /// descending, ties in descending byte order of the member), or in
    /// `ZSCORE` + `ZREVRANK`.
    pub(super) async fn read_board(
        &self,
        keys: &CollectionKeys,
        query: &BoardQuery,
    ) -> Result<BoardRead> {
        let snapshot = self
            .snapshot(keys, "leaderboard", |pipe| match query {
                BoardQuery::Top { offset, limit } => {
                    if let Some(end) = offset.checked_add(*limit).filter(|_| *limit > 0) {
                        pipe.cmd("ZREVRANGE")
                            .arg(&keys.value)
                            .arg(*offset)
                            .arg(end - 1)
                            .arg("WITHSCORES");
                    }
                }
                BoardQuery::Member(member) => {
                    pipe.cmd("ZSCORE")
                        .arg(&keys.value)
                        .arg(member)
                        .cmd("ZREVRANK")
                        .arg(&keys.value)
                        .arg(member);
                }
            })
            .await?;
        // Above the cap a board caches its count alone.
        let Some(Snapshot {
            meta, mut answers, ..
        }) = snapshot.filter(|s| !s.value_lost(s.meta.complete))
        else {
            return Ok(BoardRead::Miss);
        };
        if !meta.complete {
            return Ok(BoardRead::Hit { meta, answer: None });
        }
        let bad = || self.bad_read("leaderboard");
        let answer = match query {
            BoardQuery::Top { .. } => BoardAnswer::Top(match answers.next() {
                None => Vec::new(),
                Some(Value::Array(list)) => top_of(list).ok_or_else(bad)?,
                Some(_) => return Err(bad()),
            }),
            BoardQuery::Member(_) => BoardAnswer::Member(match (answers.next(), answers.next()) {
                (Some(Value::Nil), _) => None,
                (Some(score), Some(rank)) => Some((
                    score_of(&score).ok_or_else(bad)?,
                    number_of(&rank).ok_or_else(bad)?,
                )),
                _ => return Err(bad()),
            }),
        };
        Ok(BoardRead::Hit {
            meta,
            answer: Some(answer),
        })
    }
}

/// `(member, score)` pairs from a `ZREVRANGE … WITHSCORES` answer: a flat
/// list under RESP2, a list of pairs under RESP3.
fn top_of(list: Vec<Value>) -> Option<Vec<(String, f64)>> {
    let mut top = Vec::with_capacity(list.len() / 2);
    let mut it = list.into_iter();
    while let Some(first) = it.next() {
        let (member, score) = match first {
            Value::Array(pair) => {
                let mut pair = pair.into_iter();
                (pair.next()?, pair.next()?)
            }
            member => (member, it.next()?),
        };
        top.push((text_of(member)?, score_of(&score)?));
    }
    Some(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_the_meta_then_length_prefixed_items() {
        let hit = b"170 160 1 3 0 5 a b c 0  3 x\x00y";
        let mut f = Fields { rest: hit };
        let meta = f.meta().expect("meta");
        assert_eq!(
            meta,
            CollectionMeta {
                fresh_until_ms: 170,
                loaded_ms: 160,
                complete: true,
                count: 3,
                stamp: 0
            }
        );
        assert_eq!(f.item(), Some(&b"a b c"[..]));
        assert_eq!(f.item(), Some(&b""[..]));
        assert_eq!(f.item(), Some(&b"x\x00y"[..]));
        assert!(f.rest.is_empty());
        assert_eq!(f.item(), None);
    }

    #[test]
    fn numbers_are_plain_decimal_digits() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"-1",
            b"+1",
            b"1.5",
            b" 1",
        ] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fields_refuse_an_item_longer_than_the_answer() {
        let mut f = Fields { rest: b"9 abc" };
        assert_eq!(f.item(), None);
        let mut f = Fields { rest: b"2 abc" };
        assert_eq!(f.item(), None, "an item must end at a space or the end");
    }

    #[test]
    fn an_absent_meta_is_a_miss_and_a_malformed_one_an_error() {
        let absent = Value::Array(vec![Value::Nil; 5]);
        assert_eq!(meta_of(&absent), Some(None));
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let meta = Value::Array(vec![bulk("9"), bulk("8"), bulk("0"), bulk("7"), Value::Nil]);
        assert_eq!(
            meta_of(&meta),
            Some(Some(CollectionMeta {
                fresh_until_ms: 9,
                loaded_ms: 8,
                complete: false,
                count: 7,
                stamp: 0
            }))
        );
        let torn = Value::Array(vec![
            bulk("9"),
            Value::Nil,
            bulk("1"),
            bulk("7"),
            Value::Nil,
        ]);
        assert_eq!(meta_of(&torn), None);
    }

    #[test]
    fn a_top_reads_flat_and_paired_answers_alike() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let flat = vec![bulk("b"), bulk("2.5"), bulk("a"), bulk("-inf")];
        let paired = vec![
            Value::Array(vec![bulk("b"), Value::Double(2.5)]),
            Value::Array(vec![bulk("a"), Value::Double(f64::NEG_INFINITY)]),
        ];
        let want = vec![("b".to_owned(), 2.5), ("a".to_owned(), f64::NEG_INFINITY)];
        assert_eq!(top_of(flat), Some(want.clone()));
        assert_eq!(top_of(paired), Some(want));
        assert_eq!(top_of(vec![bulk("odd")]), None);
    }
}
