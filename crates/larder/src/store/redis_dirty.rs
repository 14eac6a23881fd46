//! The write-back log on Redis: one Lua script per atomic step, each over
//! keys of one shard (one hash slot), so it holds on Cluster too.
//!
//! Dirty records carry no TTL. A record is cleared only by a script that
//! finds the sequence it flushed, and sequences come from a per-shard
//! counter that is never reset, so a flusher that stalled can never clear
//! a write newer than the one it flushed.

use super::counters::{ClaimedCounters, Count, Counted, CounterKeys, CounterState};
use super::dirty::{
    Clear, DeadLetterMove, DirtyKeys, DirtyLog, DirtyRecord, DirtyState, DirtyWrite, Durability,
    FieldPatch, Patched, PendingHash, Recorded, ShardBacklog, ShardKeys, StoredDeadLetter,
};
use super::redis::{ms, RedisStore};
use super::redis_hash_dirty::{record_of_pairs, HashPatchKeys, HashWrite, RowWrite};
use super::replica_wait::Resend;
use crate::error::{Error, Message, Result};
use crate::representation::is_hash_key;
use async_trait::async_trait;
use bytes::Bytes;
use redis::{Script, Value};
use std::sync::LazyLock;
use std::time::Duration;

static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: value, lease, dirty, queue, seq, version
-- ARGV: id, payload, del (1/0), envelope, ttl ms, now ms, expected version ('' = any), version ttl ms,
--       channel ('' = none), message
local ver = tonumber(redis.call('HGET', KEYS[6], 'seq') or '0')
if ARGV[7] ~= '' and ver ~= tonumber(ARGV[7]) then return {0, ver} end
local was = redis.call('EXISTS', KEYS[3])
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[3], 'seq', seq, 'del', ARGV[3], 'val', ARGV[2])
redis.call('ZADD', KEYS[4], 'NX', ARGV[6], ARGV[1])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
redis.call('DEL', KEYS[2])
redis.call('HINCRBY', KEYS[6], 'seq', 1)
redis.call('PEXPIRE', KEYS[6], ARGV[8])
if ARGV[9] ~= '' then redis.call('PUBLISH', ARGV[9], ARGV[10]) end
return {1, seq, was}
",
    )
});

static STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: dirty, version
local r = redis.call('HMGET', KEYS[1], 'seq', 'del', 'val')
local ver = redis.call('HGET', KEYS[2], 'seq') or '0'
if r[1] then return {ver, r[1], r[2], r[3]} end
return {ver}
",
    )
});

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: flush lease, epoch. ARGV: token, ttl ms
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: flush lease. ARGV: token
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});

static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: dirty, queue, value, lease. ARGV: id, seq, action (set|del), envelope, ttl ms
if redis.call('HGET', KEYS[1], 'seq') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
-- The record's own entry is there until the id is invalidated (or it
-- expires): only then is the stored row refreshed, so an invalidation
-- that landed during the flush is not overwritten by the flushed row.
if ARGV[3] == 'set' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
  redis.call('DEL', KEYS[4])
else
  redis.call('DEL', KEYS[3], KEYS[4])
end
return 1
",
    )
});

static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: dirty, queue, value, lease, dead, dead values.
-- ARGV: id, seq, why, channel ('' = none), message, value given (1/0), value
-- (a hash entry's record keeps its dirty columns in fields of their own:
-- the caller gives the value to keep)
if redis.call('HGET', KEYS[1], 'seq') ~= ARGV[2] then return 0 end
local r = redis.call('HMGET', KEYS[1], 'del', 'val')
local val = r[2]
if ARGV[6] == '1' then val = ARGV[7] end
redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
if r[1] == '1' then
  redis.call('HDEL', KEYS[6], ARGV[1])
else
  redis.call('HSET', KEYS[6], ARGV[1], val)
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
",
    )
});

static WITHDRAW_FIELDS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- A hash entry's field patch of a row that does not exist, withdrawn.
-- KEYS: dirty, queue. ARGV: id, seq
local d = redis.call('HMGET', KEYS[1], 'seq', 'kind')
if d[1] ~= ARGV[2] or d[2] ~= 'fields' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
",
    )
});

static RAISE_EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: epoch. ARGV: floor
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
",
    )
});

fn bad_answer(store: &str, what: &str) -> Error {
    Error::Store {
        store: store.to_owned(),
        cause: Message::cause(format!("unexpected answer from the {what} script")),
    }
}

fn int_of(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn bytes_of(v: &Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::from(b.clone())),
        _ => None,
    }
}

fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A record from `seq`, `del`, `val` fields.
fn record_of(id: String, seq: &Value, del: &Value, val: &Value) -> Option<DirtyRecord> {
    let seq = int_of(seq)?;
    let tombstone = matches!(string_of(del).as_deref(), Some("1"));
    Some(DirtyRecord {
        id,
        seq,
        payload: if tombstone { None } else { bytes_of(val) },
        partial: false,
    })
}

impl RedisStore {
    fn flag(&self, value: Value, what: &str) -> Result<bool> {
        match value {
            Value::Int(n) => Ok(n == 1),
            Value::ServerError(e) => Err(self.error(redis::RedisError::from(e))),
            _ => Err(bad_answer(self.name_str(), what)),
        }
    }
}

/// The hash-entry keys of write-back keys.
fn hash_keys(keys: &DirtyKeys) -> HashPatchKeys<'_> {
    HashPatchKeys {
        id: &keys.id,
        value_key: &keys.value_key,
        lease_key: &keys.lease_key,
        dirty_key: &keys.dirty_key,
        queue_key: &keys.queue_key,
        seq_key: &keys.seq_key,
        version_key: &keys.version_key,
    }
}

/// An announcement as the hash scripts take it.
fn announce_ref(announce: &Option<(String, Vec<u8>)>) -> Option<(&str, &[u8])> {
    announce
        .as_ref()
        .map(|(channel, message)| (channel.as_str(), message.as_slice()))
}

#[async_trait]
impl DirtyLog for RedisStore {
    async fn record(&self, keys: &DirtyKeys, write: &DirtyWrite) -> Result<Recorded> {
        if is_hash_key(&keys.value_key) {
            let row = RowWrite {
                payload: write.payload.as_deref(),
                envelope: &write.envelope,
                ttl: write.ttl,
                now_ms: write.now_ms,
                version_ttl: write.version_ttl,
                announce: announce_ref(&write.announce),
                expect: write.expect_version,
            };
            return self.hash_record_row_expecting(&hash_keys(keys), &row).await;
        }
        let mut inv = RECORD.prepare_invoke();
        inv.key(&keys.value_key)
            .key(&keys.lease_key)
            .key(&keys.dirty_key)
            .key(&keys.queue_key)
            .key(&keys.seq_key)
            .key(&keys.version_key)
            .arg(&keys.id)
            .arg(write.payload.as_deref().unwrap_or_default())
            .arg(if write.payload.is_some() { "0" } else { "1" })
            .arg(write.envelope.as_slice())
            .arg(ms(write.ttl))
            .arg(write.now_ms)
            .arg(
                write
                    .expect_version
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )
            .arg(ms(write.version_ttl));
        match &write.announce {
            Some((channel, message)) => inv.arg(channel).arg(message.as_slice()),
            None => inv.arg("").arg(""),
        };
        let (answer, confirmation): (Vec<Value>, _) =
            self.run_waited(&keys.value_key, inv, Resend::Safe).await?;
        match answer.as_slice() {
            [Value::Int(1), seq, was] => Ok(Recorded::Queued {
                seq: int_of(seq).ok_or_else(|| bad_answer(self.name_str(), "record"))?,
                coalesced: int_of(was) == Some(1),
                confirmed: confirmation.is_confirmed(),
            }),
            [Value::Int(0), _] => Ok(Recorded::Conflict),
            _ => Err(bad_answer(self.name_str(), "record")),
        }
    }

    async fn state(&self, keys: &DirtyKeys) -> Result<DirtyState> {
        let mut inv = STATE.prepare_invoke();
        inv.key(&keys.dirty_key).key(&keys.version_key);
        let answer: Vec<Value> = self.run(inv).await?;
        let bad = || bad_answer(self.name_str(), "state");
        match answer.as_slice() {
            [ver] => Ok(DirtyState {
                version: int_of(ver).ok_or_else(bad)?,
                record: None,
            }),
            [ver, seq, del, val] => Ok(DirtyState {
                version: int_of(ver).ok_or_else(bad)?,
                record: Some(record_of(keys.id.clone(), seq, del, val).ok_or_else(bad)?),
            }),
            _ => Err(bad()),
        }
    }

    async fn patch_fields(
        &self,
        keys: &DirtyKeys,
        patch: &FieldPatch,
    ) -> Result<(Patched, Option<Bytes>)> {
        self.hash_patch_back_answering(
            &hash_keys(keys),
            &patch.fields,
            patch.now_ms,
            patch.version_ttl,
            announce_ref(&patch.announce),
        )
        .await
    }

    async fn withdraw_fields(&self, keys: &DirtyKeys, seq: u64) -> Result<bool> {
        let mut inv = WITHDRAW_FIELDS.prepare_invoke();
        inv.key(&keys.dirty_key)
            .key(&keys.queue_key)
            .arg(&keys.id)
            .arg(seq);
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn pending_hash(&self, keys: &DirtyKeys) -> Result<Option<PendingHash>> {
        Ok(self
            .hash_pending(&keys.dirty_key)
            .await?
            .map(|write| match write {
                HashWrite::Delete => PendingHash::Deleted,
                HashWrite::Upsert(row) => PendingHash::Row(Bytes::from(row)),
                HashWrite::Update(columns) => PendingHash::Fields(Bytes::from(columns)),
            }))
    }

    async fn count(&self, keys: &DirtyKeys, count: &Count) -> Result<Counted> {
        self.counter_count(keys, count).await
    }

    async fn counter_state(&self, keys: &DirtyKeys) -> Result<(Option<PendingHash>, CounterState)> {
        RedisStore::counter_state(self, keys).await
    }

    async fn claim_counters(
        &self,
        shard: &ShardKeys,
        token: &str,
        max: usize,
        due_ms: u64,
    ) -> Result<Option<Option<ClaimedCounters>>> {
        self.counter_claim(shard, token, max, due_ms).await
    }

    async fn reclaim_counters(
        &self,
        shard: &ShardKeys,
        batch: (&str, &str),
        keys: &DirtyKeys,
        why: &str,
    ) -> Result<Option<bool>> {
        self.counter_reclaim(
            shard,
            batch.0,
            batch.1,
            &keys.id,
            &keys.value_key,
            &keys.lease_key,
            why,
        )
        .await
    }

    async fn retry_counter_dead_letter(
        &self,
        keys: &DirtyKeys,
        field: &str,
        now_ms: u64,
        announce: (String, Vec<u8>),
    ) -> Result<bool> {
        self.counter_retry_dead_letter(keys, field, now_ms, announce)
            .await
    }

    async fn clear_counters(
        &self,
        shard: &ShardKeys,
        batch: &str,
        ids: &[(DirtyKeys, bool)],
        why: &str,
    ) -> Result<bool> {
        let ids: Vec<(String, String, String, bool)> = ids
            .iter()
            .map(|(k, missing)| {
                (
                    k.id.clone(),
                    k.lease_key.clone(),
                    k.value_key.clone(),
                    *missing,
                )
            })
            .collect();
        self.counter_clear(shard, batch, &ids, why).await
    }

    async fn claim(&self, shard: &ShardKeys, token: &str, ttl: Duration) -> Result<Option<u64>> {
        let mut inv = CLAIM.prepare_invoke();
        inv.key(&shard.lease_key)
            .key(&shard.epoch_key)
            .arg(token)
            .arg(ms(ttl));
        // Waited like a write (on a Cluster): an epoch a failover could roll
        // back would let a new flusher draw a stalled one's epoch.
        let (epoch, confirmation): (u64, _) =
            self.run_waited(&shard.lease_key, inv, Resend::Safe).await?;
        if epoch > 0 {
            self.confirmed_or_wait(confirmation, "flush lease's epoch")?;
        }
        Ok((epoch > 0).then_some(epoch))
    }

    async fn release(&self, shard: &ShardKeys, token: &str) -> Result<()> {
        let mut inv = RELEASE.prepare_invoke();
        inv.key(&shard.lease_key).arg(token);
        self.run::<i64>(inv).await.map(drop)
    }

    async fn batch(
        &self,
        shard: &ShardKeys,
        token: &str,
        max: usize,
        due_ms: u64,
    ) -> Result<Option<Vec<DirtyRecord>>> {
        // The due ids first (one read of the queue, in the shard's slot),
        // then the script, which declares their dirty records as keys and
        // checks the lease; an id queued in between waits for the next
        // batch, one cleared in between is found gone and dropped. Records
        // are read whole: a hash entry's has fields of its own.
        let Some(found) = self
            .dirty_batch(
                &shard.lease_key,
                &shard.queue_key,
                |id| format!("{}{id}", shard.dirty_prefix),
                token,
                max,
                due_ms,
            )
            .await?
        else {
            return Ok(None);
        };
        found
            .into_iter()
            .map(|(id, pairs)| {
                record_of_pairs(id, &pairs).map_err(|p| Error::Store {
                    store: self.name_str().to_owned(),
                    cause: Message::cause(p),
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    async fn clear(&self, clears: &[Clear]) -> Result<Vec<bool>> {
        if clears.is_empty() {
            return Ok(Vec::new());
        }
        if clears.iter().any(|c| is_hash_key(&c.keys.value_key)) {
            // A hash entry's refresh is its fields: one script each, sent
            // together on the multiplexed connection.
            let each = clears.iter().map(|c| {
                self.hash_clear(
                    &c.keys.dirty_key,
                    &c.keys.queue_key,
                    &c.keys.value_key,
                    &c.keys.lease_key,
                    &c.keys.id,
                    c.seq,
                    c.refresh
                        .as_ref()
                        .map(|(envelope, ttl)| (envelope.as_slice(), *ttl)),
                )
            });
            return futures_util::future::join_all(each)
                .await
                .into_iter()
                .collect();
        }
        let seqs: Vec<String> = clears.iter().map(|c| c.seq.to_string()).collect();
        let ttls: Vec<String> = clears
            .iter()
            .map(|c| {
                c.refresh
                    .as_ref()
                    .map_or(1, |(_, ttl)| ms(*ttl))
                    .to_string()
            })
            .collect();
        let calls = clears
            .iter()
            .zip(seqs.iter().zip(&ttls))
            .map(|(c, (seq, ttl))| {
                let (action, envelope): (&[u8], &[u8]) = match &c.refresh {
                    Some((envelope, _)) => (b"set", envelope.as_slice()),
                    None => (b"del", b""),
                };
                (
                    vec![
                        c.keys.dirty_key.as_str(),
                        c.keys.queue_key.as_str(),
                        c.keys.value_key.as_str(),
                        c.keys.lease_key.as_str(),
                    ],
                    vec![
                        c.keys.id.as_bytes(),
                        seq.as_bytes(),
                        action,
                        envelope,
                        ttl.as_bytes(),
                    ],
                )
            })
            .collect();
        self.pipeline_script(&CLEAR, calls)
            .await?
            .into_iter()
            .map(|v| self.flag(v, "clear"))
            .collect()
    }

    async fn dead_letter(&self, letter: &DeadLetterMove) -> Result<bool> {
        let mut inv = DEAD_LETTER.prepare_invoke();
        inv.key(&letter.keys.dirty_key)
            .key(&letter.keys.queue_key)
            .key(&letter.keys.value_key)
            .key(&letter.keys.lease_key)
            .key(&letter.shard.dead_key)
            .key(&letter.shard.dead_value_key)
            .arg(&letter.keys.id)
            .arg(letter.seq)
            .arg(&letter.why);
        match &letter.announce {
            Some((channel, message)) => inv.arg(channel).arg(message.as_slice()),
            None => inv.arg("").arg(""),
        };
        match &letter.payload {
            Some(value) => inv.arg("1").arg(value.as_slice()),
            None => inv.arg("0").arg(""),
        };
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn backlog(&self, shards: &[ShardKeys]) -> Result<Vec<ShardBacklog>> {
        // One pipeline per slot on Cluster (a shard is one slot). Ids with
        // unclaimed increments count as pending, a claimed record left
        // over is due at once, counter dead letters count as dead letters.
        let slots: Vec<&str> = shards.iter().map(|s| s.queue_key.as_str()).collect();
        let counters: Vec<CounterKeys> = shards
            .iter()
            .map(|s| CounterKeys::of(&s.queue_key, ""))
            .collect();
        let answers = self
            .grouped(&slots, 7, |pipe, i| {
                let shard = &shards[i];
                pipe.cmd("ZCARD").arg(&shard.queue_key);
                pipe.cmd("ZRANGE")
                    .arg(&shard.queue_key)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES");
                pipe.cmd("HLEN").arg(&shard.dead_key);
                pipe.cmd("ZCARD").arg(&counters[i].queue);
                pipe.cmd("ZRANGE")
                    .arg(&counters[i].queue)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES");
                pipe.cmd("EXISTS").arg(&counters[i].claimed);
                pipe.cmd("HLEN").arg(&counters[i].dead);
            })
            .await?;
        let bad = || bad_answer(self.name_str(), "backlog");
        let score = |oldest: &Value| match oldest {
            Value::Array(pair) => pair.get(1).and_then(|score| {
                string_of(score)
                    .and_then(|s| s.parse::<f64>().ok())
                    .or(match score {
                        Value::Double(d) => Some(*d),
                        _ => None,
                    })
            }),
            _ => None,
        };
        answers
            .chunks(7)
            .map(|chunk| {
                let [pending, oldest, dead, counted, oldest_count, claimed, dead_counts] = chunk
                else {
                    return Err(bad());
                };
                // Scores are whole milliseconds, well inside f64's exact range.
                let oldest_ms = score(oldest).map(|s| s as u64);
                let counted_ms = score(oldest_count).map(|s| s as u64);
                let oldest_ms = match (oldest_ms, counted_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let claimed = int_of(claimed).ok_or_else(bad)?;
                Ok(ShardBacklog {
                    pending: int_of(pending).ok_or_else(bad)?
                        + int_of(counted).ok_or_else(bad)?
                        + claimed,
                    oldest_ms,
                    dead: int_of(dead).ok_or_else(bad)? + int_of(dead_counts).ok_or_else(bad)?,
                    claimed: claimed == 1,
                })
            })
            .collect()
    }

    async fn dead_letters(&self, shards: &[ShardKeys]) -> Result<Vec<StoredDeadLetter>> {
        let slots: Vec<&str> = shards.iter().map(|s| s.dead_key.as_str()).collect();
        let counter_dead: Vec<String> = shards
            .iter()
            .map(|s| CounterKeys::of(&s.queue_key, "").dead)
            .collect();
        let answers = self
            .grouped(&slots, 3, |pipe, i| {
                pipe.cmd("HGETALL").arg(&shards[i].dead_key);
                pipe.cmd("HGETALL").arg(&shards[i].dead_value_key);
                pipe.cmd("HGETALL").arg(&counter_dead[i]);
            })
            .await?
            .into_iter()
            .map(redis::from_redis_value::<std::collections::HashMap<String, Vec<u8>>>)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| bad_answer(self.name_str(), "dead letters"))?;
        let mut letters = Vec::new();
        for triple in answers.chunks(3) {
            let [why, values, counters] = triple else {
                return Err(bad_answer(self.name_str(), "dead letters"));
            };
            letters.extend(counter_dead_letters(counters));
            let mut ids: Vec<&String> = why.keys().collect();
            ids.sort();
            for id in ids {
                letters.push(StoredDeadLetter {
                    id: id.clone(),
                    why: String::from_utf8_lossy(&why[id]).into_owned(),
                    payload: values.get(id).map(|v| Bytes::from(v.clone())),
                });
            }
        }
        Ok(letters)
    }

    async fn drop_dead_letter(&self, shard: &ShardKeys, id: &str) -> Result<bool> {
        let (existed, _): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("HDEL")
            .arg(&shard.dead_key)
            .arg(id)
            .cmd("HDEL")
            .arg(&shard.dead_value_key)
            .arg(id)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))?;
        Ok(existed == 1)
    }

    async fn raise_epoch(&self, shard: &ShardKeys, floor: u64) -> Result<()> {
        let mut inv = RAISE_EPOCH.prepare_invoke();
        inv.key(&shard.epoch_key).arg(floor);
        self.run::<i64>(inv).await.map(drop)
    }

    async fn durability(&self) -> Result<Durability> {
        if RedisStore::is_cluster(self) {
            return self.cluster_durability().await;
        }
        self.config_durability(&mut self.conn()).await
    }
}

/// A shard's counter dead letters (`<id>#<batch>` → `{"why": {…},
/// "deltas": {column: "n"}}`, see `counters.rs`) as stored dead letters:
/// no payload, and a `why` that carries `"counter": true`, the batch and
/// the deltas, so they are never taken for a refused delete.
fn counter_dead_letters(
    stored: &std::collections::HashMap<String, Vec<u8>>,
) -> Vec<StoredDeadLetter> {
    let mut fields: Vec<&String> = stored.keys().collect();
    fields.sort();
    fields
        .into_iter()
        .map(|field| {
            let (id, batch) = field.rsplit_once('#').unwrap_or((field.as_str(), ""));
            let entry: serde_json::Value =
                serde_json::from_slice(&stored[field]).unwrap_or_default();
            let mut why = match &entry["why"] {
                serde_json::Value::Object(why) => why.clone(),
                _ => serde_json::Map::new(),
            };
            why.insert("counter".into(), true.into());
            why.insert("batch".into(), batch.into());
            why.insert("deltas".into(), entry["deltas"].clone());
            StoredDeadLetter {
                id: id.to_owned(),
                why: serde_json::Value::Object(why).to_string(),
                payload: None,
            }
        })
        .collect()
}

impl RedisStore {
    /// The persistence and eviction settings of the node behind `conn`
    /// (`CONFIG GET`; refused: nothing known).
    pub(super) async fn config_durability(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<Durability> {
        let answer: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .arg("appendfsync")
            .arg("maxmemory-policy")
            .query_async(conn)
            .await;
        let pairs = match answer {
            Ok(pairs) => pairs,
            // CONFIG denied (ACL, managed Redis): nothing is known.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
                Vec::new()
            }
            Err(e) => {
                let e = self.error(e);
                if e.is_store_unavailable() {
                    return Err(e);
                }
                tracing::warn!(store = self.name_str(), error = %e, "CONFIG GET refused; the store counts as not durable");
                Vec::new()
            }
        };
        let get = |name: &str| {
            pairs
                .chunks(2)
                .find(|kv| kv.first().map(String::as_str) == Some(name))
                .and_then(|kv| kv.get(1).cloned())
        };
        Ok(Durability {
            appendonly: get("appendonly"),
            appendfsync: get("appendfsync"),
            maxmemory_policy: get("maxmemory-policy"),
            ..Durability::default()
        })
    }
}
