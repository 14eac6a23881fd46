//! Hash entries on Redis (`representation = hash`, see
//! `representation.rs`): the same operations as string entries, with
//! `HGETALL`/`HMGET` for reads and `DEL` + `HSET` + `PEXPIRE` for writes.
//!
//! Why separate scripts: each keeps the atomicity its string twin states
//! in `protocol.rs` (lease check, dirty check, write ticket) — only the
//! read and write of the value key differ. The envelope the cache hands
//! over is split into fields here ([`to_fields`]) and put back together
//! from them ([`from_fields`]), so the cache above is the same for both
//! representations. [`RedisStore`]'s operations call these for a value key
//! whose segment is `h:`. The read lease and the fill are write-back's
//! (`ACQUIRE_BACK`, `FILL_OVERLAY` in `redis_hash_dirty.rs`): without a
//! dirty record they do what the plain ones would, and with one they
//! answer a pending whole row and lay pending fields over a fill.

use super::redis::{ms, RedisStore};
use super::redis_counters::counter_keys_of_dirty;
use super::redis_hash_dirty::{hash_dirty_of, HashWrite, ACQUIRE_BACK, FILL_OVERLAY};
use super::replica_wait::Resend;
use super::{Acquired, Fill, LeaseRequest, WriteEnd, WriteKeys, WriteTicket};
use crate::error::{Error, Message, Result};
use crate::representation::{from_fields, from_some_fields, to_fields, RESERVED};
use bytes::Bytes;
use redis::{Script, Value};
use std::sync::LazyLock;
use std::time::Duration;

/// Replaces the hash at KEYS[1] by the field/value pairs ARGV[from..]
/// (Lua helper shared by the scripts below).
const PUT: &str = r"
local function put(key, from, ttl)
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(ARGV, from))
  redis.call('PEXPIRE', key, ttl)
end
";

static SET_VOIDING_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{PUT}
-- KEYS: value (hash), lease. ARGV: ttl ms, field, value, ...
put(KEYS[1], 2, ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"
    ))
});

static WRITE_END: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{PUT}
-- KEYS: value (hash), lease, write. ARGV: ticket, action (set|del|abort), ttl ms, clean (1/0), field, value, ...
local base = redis.call('HGET', KEYS[3], 'base')
if not base or tonumber(ARGV[1]) <= tonumber(base) then
  if ARGV[2] == 'abort' then return 0 end
  if base then redis.call('HINCRBY', KEYS[3], 'seq', 1) end
  redis.call('DEL', KEYS[1], KEYS[2])
  return 0
end
local inflight = redis.call('HINCRBY', KEYS[3], 'inflight', -1)
if inflight < 0 then
  redis.call('HSET', KEYS[3], 'inflight', 0)
  inflight = 0
end
if ARGV[2] == 'abort' then return 0 end
redis.call('DEL', KEYS[2])
local seq = tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')
if ARGV[2] == 'set' and ARGV[4] == '1' and seq == tonumber(ARGV[1]) and inflight == 0 then
  put(KEYS[1], 5, ARGV[3])
  return 1
end
redis.call('DEL', KEYS[1])
return 0
"
    ))
});

/// A hash's fields as pairs, from `HGETALL`'s flat answer.
fn pairs(items: Vec<Value>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let (Value::BulkString(k), Value::BulkString(v)) = (k, v) {
            out.push((k, v));
        }
    }
    out
}

impl RedisStore {
    fn hash_problem(&self, problem: String) -> Error {
        Error::Store {
            store: self.name_str().to_owned(),
            cause: Message::cause(problem),
        }
    }

    /// The envelope of the fields read, `None` when there is no entry. A
    /// hash that is not a valid entry (another program wrote it) answers
    /// bytes that are no envelope: the cache counts it corrupt and treats
    /// it as a miss, as it does a corrupt string entry.
    fn hash_envelope(&self, items: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Option<Bytes>> {
        Ok(match from_fields(&items) {
            Ok(found) => found.map(Bytes::from),
            Err(problem) => Some(self.not_an_entry(&problem)),
        })
    }

    fn not_an_entry(&self, problem: &str) -> Bytes {
        tracing::warn!(store = self.name_str(), problem, "unreadable hash entry");
        Bytes::new()
    }

    /// The flat `field, value, ...` arguments of an envelope.
    fn hash_args(&self, envelope: &[u8]) -> Result<Vec<Vec<u8>>> {
        let fields = to_fields(envelope).map_err(|p| self.hash_problem(p))?;
        Ok(fields.into_iter().flat_map(|(k, v)| [k, v]).collect())
    }

    /// `HGETALL`: the whole entry.
    pub(super) async fn hash_get(&self, key: &str) -> Result<Option<Bytes>> {
        let items: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))?;
        self.hash_envelope(items)
    }

    /// One `HGETALL` per key, pipelined (one pipeline per hash slot on
    /// Cluster, sent concurrently).
    pub(super) async fn hash_get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let all = self
            .grouped(keys, 1, |pipe, i| {
                pipe.cmd("HGETALL").arg(keys[i]);
            })
            .await?;
        all.into_iter()
            .map(|value| {
                let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::from_redis_value(value)
                    .map_err(|e| self.hash_problem(format!("HGETALL answered {e}")))?;
                self.hash_envelope(fields)
            })
            .collect()
    }

    /// `HMGET` of the reserved field and `fields`: an envelope whose
    /// payload holds just those fields.
    pub(super) async fn hash_get_fields(
        &self,
        key: &str,
        fields: &[&str],
    ) -> Result<Option<Bytes>> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key).arg(RESERVED);
        for f in fields {
            cmd.arg(*f);
        }
        let mut values: Vec<Option<Vec<u8>>> = cmd
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))?;
        if values.is_empty() {
            return Ok(None);
        }
        let reserved = values.remove(0);
        Ok(
            match from_some_fields(reserved.as_deref(), fields, &values) {
                Ok(found) => found.map(Bytes::from),
                Err(problem) => Some(self.not_an_entry(&problem)),
            },
        )
    }

    pub(super) fn hash_acquired(&self, value: Value) -> Result<Acquired> {
        let bad = || self.hash_problem("unexpected answer from the acquire script".into());
        let Value::Array(mut items) = value else {
            return Err(bad());
        };
        let first = items.first().cloned();
        match (first, items.len()) {
            (Some(Value::Int(1)), 2) => match items.pop() {
                Some(Value::Array(v)) => match self.hash_envelope(pairs(v))? {
                    Some(b) => Ok(Acquired::Value(b)),
                    None => Err(bad()),
                },
                _ => Err(bad()),
            },
            (Some(Value::Int(2)), 1) => Ok(Acquired::Lease { current: None }),
            (Some(Value::Int(2)), 2) => match items.pop() {
                Some(Value::Array(v)) => Ok(Acquired::Lease {
                    current: self.hash_envelope(pairs(v))?,
                }),
                _ => Err(bad()),
            },
            (Some(Value::Int(3)), 1) => Ok(Acquired::Held),
            (Some(Value::Int(4)), 1) => Ok(Acquired::Dirty(None)),
            (Some(Value::Int(4)), 2) => match items.pop() {
                Some(Value::BulkString(v)) => Ok(Acquired::Dirty(Some(Bytes::from(v)))),
                _ => Err(bad()),
            },
            // A pending whole row (a write-back `put`), with the field
            // patches recorded since laid over it.
            (Some(Value::Int(5)), 2) => match items.pop() {
                Some(Value::Array(v)) => {
                    let pending = hash_dirty_of(String::new(), &pairs(v))
                        .map_err(|p| self.hash_problem(p))?;
                    match pending.write {
                        HashWrite::Upsert(row) => Ok(Acquired::Dirty(Some(Bytes::from(row)))),
                        HashWrite::Delete => Ok(Acquired::Dirty(None)),
                        HashWrite::Update(_) => Err(bad()),
                    }
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    pub(super) async fn hash_acquire(&self, r: &LeaseRequest) -> Result<Acquired> {
        let (_, counter) = counter_keys_of_dirty(&r.dirty_key);
        let mut inv = ACQUIRE_BACK.prepare_invoke();
        inv.key(&r.value_key)
            .key(&r.lease_key)
            .key(&r.dirty_key)
            .key(&counter.deltas)
            .arg(&r.token)
            .arg(ms(r.ttl))
            .arg(if r.if_absent { "1" } else { "0" });
        let value: Value = self.run(inv).await?;
        self.hash_acquired(value)
    }

    pub(super) async fn hash_acquire_many(
        &self,
        requests: &[LeaseRequest],
    ) -> Result<Vec<Acquired>> {
        let ttls: Vec<String> = requests.iter().map(|r| ms(r.ttl).to_string()).collect();
        let deltas: Vec<String> = requests
            .iter()
            .map(|r| counter_keys_of_dirty(&r.dirty_key).1.deltas)
            .collect();
        let calls = requests
            .iter()
            .zip(&ttls)
            .zip(&deltas)
            .map(|((r, ttl), deltas)| {
                let flag: &[u8] = if r.if_absent { b"1" } else { b"0" };
                (
                    vec![
                        r.value_key.as_str(),
                        r.lease_key.as_str(),
                        r.dirty_key.as_str(),
                        deltas.as_str(),
                    ],
                    vec![r.token.as_bytes(), ttl.as_bytes(), flag],
                )
            })
            .collect();
        self.pipeline_script(&ACQUIRE_BACK, calls)
            .await?
            .into_iter()
            .map(|v| self.hash_acquired(v))
            .collect()
    }

    /// A fill lands only as the loaded row itself (`true`); one whose
    /// lease was lost, or over which pending write-back fields were laid,
    /// answers `false` — the caller's loaded row is then not what the
    /// entry holds (see `Inner::overlay_pending`).
    pub(super) async fn hash_fill(&self, f: &Fill) -> Result<bool> {
        let filled = self.hash_fill_overlay(f).await?;
        Ok(matches!(filled, super::redis_hash_dirty::Overlaid::Filled))
    }

    pub(super) async fn hash_fill_many(&self, fills: &[Fill]) -> Result<Vec<bool>> {
        let ttls: Vec<String> = fills.iter().map(|f| ms(f.ttl).to_string()).collect();
        let args: Vec<Vec<Vec<u8>>> = fills
            .iter()
            .map(|f| self.hash_args(&f.value))
            .collect::<Result<_>>()?;
        let counters: Vec<(String, String, String)> = fills
            .iter()
            .map(|f| {
                let (id, keys) = counter_keys_of_dirty(&f.dirty_key);
                (id, keys.deltas, keys.claimed)
            })
            .collect();
        let calls = fills
            .iter()
            .zip(&ttls)
            .zip(&args)
            .zip(&counters)
            .map(|(((f, ttl), fields), (id, deltas, claimed))| {
                let mut argv: Vec<&[u8]> = vec![
                    f.token.as_bytes(),
                    ttl.as_bytes(),
                    f.fill_channel.as_bytes(),
                    id.as_bytes(),
                ];
                argv.extend(fields.iter().map(Vec::as_slice));
                (
                    vec![
                        f.value_key.as_str(),
                        f.lease_key.as_str(),
                        f.dirty_key.as_str(),
                        f.waiter_key.as_str(),
                        deltas.as_str(),
                        claimed.as_str(),
                    ],
                    argv,
                )
            })
            .collect();
        self.pipeline_script(&FILL_OVERLAY, calls)
            .await?
            .into_iter()
            .map(|v| match v {
                Value::Array(items) => Ok(matches!(items.first(), Some(Value::Int(1)))),
                _ => Err(self.hash_problem("unexpected answer from the fill script".into())),
            })
            .collect()
    }

    pub(super) async fn hash_set(
        &self,
        value_key: &str,
        lease_key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        let args = self.hash_args(value)?;
        let mut inv = SET_VOIDING_LEASE.prepare_invoke();
        inv.key(value_key).key(lease_key).arg(ms(ttl));
        for a in &args {
            inv.arg(a.as_slice());
        }
        self.run::<i64>(inv).await.map(drop)
    }

    pub(super) async fn hash_write_end(
        &self,
        keys: &WriteKeys,
        ticket: WriteTicket,
        end: &WriteEnd,
    ) -> Result<bool> {
        let mut inv = WRITE_END.prepare_invoke();
        inv.key(&keys.value_key)
            .key(&keys.lease_key)
            .key(&keys.write_key)
            .arg(ticket.seq);
        let args = match end {
            WriteEnd::Set { value, ttl } => {
                inv.arg("set").arg(ms(*ttl));
                self.hash_args(value)?
            }
            WriteEnd::Delete => {
                inv.arg("del").arg(0);
                Vec::new()
            }
            WriteEnd::Abort => {
                inv.arg("abort").arg(0);
                Vec::new()
            }
        };
        inv.arg(if ticket.clean { "1" } else { "0" });
        for a in &args {
            inv.arg(a.as_slice());
        }
        let ended =
            self.run_invalidation::<i64>(&keys.value_key, inv, ("write's end step", Resend::Never));
        Ok(ended.await? == 1)
    }
}
