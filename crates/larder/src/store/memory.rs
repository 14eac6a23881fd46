//! The embedded store: an in-process map with TTLs and a bounded size.
//!
//! For a single instance, for tests, and as the zero-setup default. Every
//! operation runs under one lock, which gives the same atomicity as the
//! Redis scripts. It is never durable and is not shared between processes.
//!
//! # Behavior
//! - Capacity is a number of keys (`memory://?capacity=N`, default 100,000).
//!   When full, expired keys go first, then the least recently used of a
//!   sample (like Redis' approximated LRU).
//! - TTLs use the monotonic clock; they only collect garbage; freshness is
//!   decided by the cache from the envelope.

use super::{Acquired, Fill, LeaseRequest, Store, Subscription, WriteEnd, WriteKeys, WriteTicket};
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The default capacity of a memory store, in keys.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// How many keys an eviction looks at to pick the least recently used.
const EVICTION_SAMPLE: usize = 16;

/// An embedded store; a cheap clone over one shared map.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    capacity: usize,
    map: Mutex<Map>,
    bus: super::pubsub::MemoryBus,
}

#[derive(Debug, Default)]
struct Map {
    slots: HashMap<String, Slot>,
    /// Write bookkeeping by write key.
    writes: HashMap<String, WriteBook>,
    /// The last write sequence handed out, for every key: sequences never
    /// repeat, so a ticket of expired bookkeeping is told apart.
    write_seq: u64,
    /// Generation hashes by key: field → value (never evicted).
    generations: HashMap<String, HashMap<String, u64>>,
    tick: u64,
    /// For [`Store::server_info`]: keys evicted and expired, lookups.
    evicted: u64,
    expired: u64,
    hits: u64,
    misses: u64,
}

/// One key's write bookkeeping (see [`Store::write_begin`]).
#[derive(Debug, Clone, Copy)]
struct WriteBook {
    /// The newest sequence handed out (or bumped by an invalidation).
    seq: u64,
    /// Writes begun and not ended.
    in_flight: u64,
    /// When it goes without a write or a renewal.
    expires: Instant,
    /// The last sequence handed out before this bookkeeping was made: its
    /// own tickets are above it.
    base: u64,
}

#[derive(Debug)]
struct Slot {
    value: Bytes,
    expires: Option<Instant>,
    used: u64,
}

impl Map {
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Slot> {
        let expired = self.slots.get(key)?.expires.is_some_and(|e| e <= now);
        if expired {
            self.slots.remove(key);
            self.expired += 1;
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        let slot = self.slots.get_mut(key)?;
        slot.used = tick;
        Some(slot)
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<Bytes> {
        let found = self.live(key, now).map(|s| s.value.clone());
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    fn set(
        &mut self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        now: Instant,
        capacity: usize,
    ) {
        if !self.slots.contains_key(key) && self.slots.len() >= capacity {
            self.make_room(now, capacity);
        }
        self.tick += 1;
        self.slots.insert(
            key.to_owned(),
            Slot {
                value,
                expires: ttl.map(|t| now + t),
                used: self.tick,
            },
        );
    }

    fn make_room(&mut self, now: Instant, capacity: usize) {
        let before = self.slots.len();
        self.slots.retain(|_, s| s.expires.is_none_or(|e| e > now));
        self.expired += (before - self.slots.len()) as u64;
        while self.slots.len() >= capacity {
            let victim = self
                .slots
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => self.slots.remove(&k),
                None => break,
            };
            self.evicted += 1;
        }
    }
}

impl MemoryStore {
    /// A store holding at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                name: format!("memory://?capacity={capacity}"),
                capacity: capacity.max(1),
                map: Mutex::new(Map::default()),
                bus: Default::default(),
            }),
        }
    }

    /// Parses `memory://` or `memory://?capacity=N`.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed =
            url::Url::parse(url).map_err(|e| Error::Config(format!("store URL {url:?}: {e}")))?;
        let mut capacity = DEFAULT_CAPACITY;
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "capacity" => {
                    capacity = value.parse().ok().filter(|&c| c > 0).ok_or_else(|| {
                        Error::Config(format!(
                            "memory store capacity {value:?} is not a positive number of keys"
                        ))
                    })?
                }
                other => {
                    return Err(Error::Config(format!(
                        "unknown memory store option {other:?}: the only option is capacity"
                    )))
                }
            }
        }
        Ok(Self::new(capacity))
    }

    /// How many keys the store holds now (expired ones not yet collected included).
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bumps the sequence of a key's write bookkeeping (a write that began
    /// before cannot set any more).
    fn bump_write_seq(map: &mut Map, write_key: &str) {
        map.write_seq += 1;
        let bumped = map.write_seq;
        if let Some(book) = map.writes.get_mut(write_key) {
            book.seq = bumped;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every operation is a few HashMap calls), so a poisoned lock is safe to use.
        self.inner.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acquire_locked(map: &mut Map, r: &LeaseRequest, now: Instant, capacity: usize) -> Acquired {
        let current = map.get(&r.value_key, now);
        if r.if_absent {
            if let Some(v) = current {
                return Acquired::Value(v);
            }
        }
        if map.live(&r.lease_key, now).is_some() {
            return Acquired::Held;
        }
        map.set(
            &r.lease_key,
            Bytes::from(r.token.clone()),
            Some(r.ttl),
            now,
            capacity,
        );
        Acquired::Lease { current }
    }

    fn fill_locked(map: &mut Map, f: &Fill, now: Instant, capacity: usize) -> bool {
        let holds = map
            .live(&f.lease_key, now)
            .is_some_and(|s| s.value.as_ref() == f.token.as_bytes());
        if holds {
            map.set(
                &f.value_key,
                Bytes::from(f.value.clone()),
                Some(f.ttl),
                now,
                capacity,
            );
            map.slots.remove(&f.lease_key);
        }
        holds
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.lock().get(key, Instant::now()))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let now = Instant::now();
        let mut map = self.lock();
        Ok(keys.iter().map(|k| map.get(k, now)).collect())
    }

    async fn set(
        &self,
        value_key: &str,
        lease_key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        let mut map = self.lock();
        map.set(
            value_key,
            Bytes::copy_from_slice(value),
            Some(ttl),
            Instant::now(),
            self.inner.capacity,
        );
        map.slots.remove(lease_key);
        Ok(())
    }

    async fn delete(&self, value_key: &str, lease_key: &str) -> Result<()> {
        let mut map = self.lock();
        map.slots.remove(value_key);
        map.slots.remove(lease_key);
        Ok(())
    }

    async fn acquire(&self, request: &LeaseRequest) -> Result<Acquired> {
        Ok(Self::acquire_locked(
            &mut self.lock(),
            request,
            Instant::now(),
            self.inner.capacity,
        ))
    }

    async fn acquire_many(&self, requests: &[LeaseRequest]) -> Result<Vec<Acquired>> {
        let now = Instant::now();
        let mut map = self.lock();
        Ok(requests
            .iter()
            .map(|r| Self::acquire_locked(&mut map, r, now, self.inner.capacity))
            .collect())
    }

    async fn fill(&self, fill: &Fill) -> Result<bool> {
        Ok(Self::fill_locked(
            &mut self.lock(),
            fill,
            Instant::now(),
            self.inner.capacity,
        ))
    }

    async fn fill_many(&self, fills: &[Fill]) -> Result<Vec<bool>> {
        let now = Instant::now();
        let mut map = self.lock();
        Ok(fills
            .iter()
            .map(|f| Self::fill_locked(&mut map, f, now, self.inner.capacity))
            .collect())
    }

    async fn release(&self, lease_key: &str, token: &str) -> Result<()> {
        let mut map = self.lock();
        let holds = map
            .live(lease_key, Instant::now())
            .is_some_and(|s| s.value.as_ref() == token.as_bytes());
        if holds {
            map.slots.remove(lease_key);
        }
        Ok(())
    }

    async fn write_begin(&self, keys: &WriteKeys, ttl: Duration) -> Result<WriteTicket> {
        let now = Instant::now();
        let mut map = self.lock();
        map.slots.remove(&keys.lease_key);
        map.writes.retain(|_, book| book.expires > now);
        map.write_seq += 1;
        let seq = map.write_seq;
        let book = map
            .writes
            .entry(keys.write_key.clone())
            .or_insert(WriteBook {
                seq: 0,
                in_flight: 0,
                expires: now,
                base: seq - 1,
            });
        book.seq = seq;
        book.in_flight += 1;
        book.expires = now + ttl;
        Ok(WriteTicket {
            seq,
            clean: book.in_flight == 1,
        })
    }

    async fn write_renew(&self, keys: &WriteKeys, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(book) = map.writes.get_mut(&keys.write_key) {
            if book.expires > now {
                book.expires = book.expires.max(now + ttl);
            }
        }
        Ok(())
    }

    async fn write_end(
        &self,
        keys: &WriteKeys,
        ticket: WriteTicket,
        end: &WriteEnd,
    ) -> Result<bool> {
        let now = Instant::now();
        let mut map = self.lock();
        // Whether live bookkeeping exists, and whether the ticket is its own.
        let own = map
            .writes
            .get(&keys.write_key)
            .filter(|book| book.expires > now)
            .map(|book| ticket.seq > book.base);
        let (seq, in_flight) = match own {
            Some(true) => match map.writes.get_mut(&keys.write_key) {
                Some(book) => {
                    book.in_flight = book.in_flight.saturating_sub(1);
                    (book.seq, book.in_flight)
                }
                None => (0, 0),
            },
            // The ticket's bookkeeping expired while the write ran: it
            // overlapped whatever began since, which must not set either.
            Some(false) => {
                if matches!(end, WriteEnd::Abort) {
                    return Ok(false);
                }
                Self::bump_write_seq(&mut map, &keys.write_key);
                (0, 0)
            }
            None => (0, 0),
        };
        if matches!(end, WriteEnd::Abort) {
            return Ok(false);
        }
        map.slots.remove(&keys.lease_key);
        if let WriteEnd::Set { value, ttl } = end {
            if ticket.clean && seq == ticket.seq && in_flight == 0 {
                let value = Bytes::copy_from_slice(value);
                map.set(&keys.value_key, value, Some(*ttl), now, self.inner.capacity);
                return Ok(true);
            }
        }
        map.slots.remove(&keys.value_key);
        Ok(false)
    }

    async fn invalidate(&self, keys: &WriteKeys) -> Result<()> {
        let now = Instant::now();
        let mut map = self.lock();
        map.slots.remove(&keys.value_key);
        map.slots.remove(&keys.lease_key);
        let live = map
            .writes
            .get(&keys.write_key)
            .is_some_and(|book| book.expires > now);
        if live {
            Self::bump_write_seq(&mut map, &keys.write_key);
        }
        Ok(())
    }

    async fn record_layout(&self, meta_key: &str, layout: &str) -> Result<String> {
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(v) = map.get(meta_key, now) {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
        map.set(
            meta_key,
            Bytes::from(layout.to_owned()),
            None,
            now,
            usize::MAX,
        );
        Ok(layout.to_owned())
    }

    async fn publish(&self, channel: &str, message: &[u8]) -> Result<()> {
        self.inner.bus.publish(channel, message);
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<Option<Subscription>> {
        Ok(Some(self.inner.bus.subscribe(channel)))
    }

    async fn generations(&self, key: &str, init: u64) -> Result<Vec<(String, u64)>> {
        let mut map = self.lock();
        let hash = map.generations.entry(key.to_owned()).or_default();
        hash.entry("seq".to_owned()).or_insert(init);
        Ok(hash.iter().map(|(f, v)| (f.clone(), *v)).collect())
    }

    async fn bump_generation(&self, key: &str, field: &str, init: u64) -> Result<u64> {
        let mut map = self.lock();
        let hash = map.generations.entry(key.to_owned()).or_default();
        let seq = hash.entry("seq".to_owned()).or_insert(init);
        *seq += 1;
        let seq = *seq;
        hash.insert(field.to_owned(), seq);
        Ok(seq)
    }

    /// The map's own figures: bytes of keys and values, keys held, keys
    /// evicted (capacity is a number of keys, so no `maxmemory`) and expired,
    /// lookups of `get`/`get_many`.
    async fn server_info(&self) -> Result<super::ServerInfo> {
        let map = self.lock();
        let bytes: usize = map.slots.iter().map(|(k, s)| k.len() + s.value.len()).sum();
        Ok(super::ServerInfo {
            used_memory: Some(bytes as u64),
            evicted_keys: Some(map.evicted),
            expired_keys: Some(map.expired),
            keyspace_hits: Some(map.hits),
            keyspace_misses: Some(map.misses),
            keys: Some(map.slots.len() as u64),
            ..Default::default()
        })
    }
}
