//! The embedded store: an in-process map with TTLs and a bounded size.
//!
//! For a single instance, for tests, and as the zero-setup default. Every
//! operation runs under one lock, which gives the same atomicity as the
//! Redis scripts. It is never durable and is not shared between processes.
//!
//! # Behavior
//! - Capacity is a number of keys (`memory://?capacity=N`, default 100,000).
//!   When full, expired keys go first, then the least recently used one.
//!   Both are found through ordered indexes (by expiry, by last use), so
//!   an insert into a full store costs O(log n) plus the expired keys it
//!   removes, never a scan of every key; so does the write bookkeeping.
//! - TTLs use the monotonic clock; they only collect garbage; freshness is
//!   decided by the cache from the envelope.

use super::{
    Acquired, Fill, LeaseRequest, Protocol, Store, Subscription, WriteEnd, WriteKeys, WriteTicket,
};
use crate::error::{Error, Result};
use crate::key::TextBatch;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The default capacity of a memory store, in keys.
pub const DEFAULT_CAPACITY: usize = 100_000;

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
    /// Cached collections (`memory_collection.rs`).
    collections: super::memory_collection::State,
}

#[derive(Debug, Default)]
struct Map {
    slots: Slots,
    /// Write bookkeeping by write key.
    writes: Writes,
    /// Generation hashes by key: field → value (never evicted).
    generations: HashMap<String, HashMap<String, u64>>,
    tick: u64,
    /// For [`Store::server_info`]: keys evicted and expired, lookups.
    evicted: u64,
    expired: u64,
    hits: u64,
    misses: u64,
}

/// One key's write bookkeeping (see [`Protocol::write_begin`]).
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
    /// The tick of its last use: its place in [`Slots::by_use`].
    used: u64,
    /// The tick it was set at: with `expires`, its place in
    /// [`Slots::by_expiry`].
    born: u64,
}

/// The keys and two ordered indexes over them, kept in step by every
/// insert, use and removal.
#[derive(Debug, Default)]
struct Slots {
    map: HashMap<String, Slot>,
    /// Last use → key: the least recently used first.
    by_use: BTreeMap<u64, String>,
    /// (Expiry, birth tick) → key, for keys with a TTL: the first to
    /// expire first.
    by_expiry: BTreeMap<(Instant, u64), String>,
    /// Index entries looked at to make room (for the complexity tests).
    visited: u64,
}

impl Slots {
    fn get(&self, key: &str) -> Option<&Slot> {
        self.map.get(key)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Slot)> {
        self.map.iter()
    }

    /// Marks `key` used at `tick`; its slot, if any.
    fn touch(&mut self, key: &str, tick: u64) -> Option<&mut Slot> {
        let slot = self.map.get_mut(key)?;
        if let Some(k) = self.by_use.remove(&slot.used) {
            self.by_use.insert(tick, k);
        }
        slot.used = tick;
        Some(slot)
    }

    fn insert(&mut self, key: &str, slot: Slot) {
        self.remove(key);
        self.by_use.insert(slot.used, key.to_owned());
        if let Some(at) = slot.expires {
            self.by_expiry.insert((at, slot.born), key.to_owned());
        }
        self.map.insert(key.to_owned(), slot);
    }

    fn remove(&mut self, key: &str) -> Option<Slot> {
        let slot = self.map.remove(key)?;
        self.by_use.remove(&slot.used);
        if let Some(at) = slot.expires {
            self.by_expiry.remove(&(at, slot.born));
        }
        Some(slot)
    }

    /// Removes every key expired at `now`, the first to expire first;
    /// answers how many.
    fn remove_expired(&mut self, now: Instant) -> u64 {
        let mut removed = 0;
        while let Some(entry) = self.by_expiry.first_entry() {
            self.visited += 1;
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(slot) = self.map.remove(&key) {
                self.by_use.remove(&slot.used);
            }
            removed += 1;
        }
        removed
    }

    /// Removes the least recently used key; whether there was one.
    fn remove_least_used(&mut self) -> bool {
        let Some((_, key)) = self.by_use.pop_first() else {
            return false;
        };
        self.visited += 1;
        if let Some(slot) = self.map.remove(&key) {
            if let Some(at) = slot.expires {
                self.by_expiry.remove(&(at, slot.born));
            }
        }
        true
    }
}

/// Write bookkeeping by write key, with an index by expiry so that
/// expired entries go without a scan, and the last sequence handed out for
/// every key: sequences never repeat, so a ticket of expired bookkeeping is
/// told apart.
#[derive(Debug, Default)]
struct Writes {
    map: HashMap<String, WriteBook>,
    /// (Expiry, a unique number) → write key; an entry whose expiry moved
    /// since is skipped when it comes up.
    by_expiry: BTreeMap<(Instant, u64), String>,
    next: u64,
    /// The last write sequence handed out (or bumped), for every key.
    seq: u64,
    /// Index entries looked at (for the complexity tests).
    visited: u64,
}

impl Writes {
    /// The live bookkeeping of `key` at `now`.
    fn live(&self, key: &str, now: Instant) -> Option<&WriteBook> {
        self.map.get(key).filter(|book| book.expires > now)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut WriteBook> {
        self.map.get_mut(key)
    }

    /// Forgets the entries expired at `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.by_expiry.first_entry() {
            self.visited += 1;
            if entry.key().0 > now {
                break;
            }
            let at = entry.key().0;
            let k = entry.remove();
            if self.map.get(&k).is_some_and(|e| e.expires == at) {
                self.map.remove(&k);
            }
        }
    }

    /// Moves `key`'s expiry to `expires` (indexed; the old index entry is
    /// skipped when it comes up).
    fn live_until(&mut self, key: &str, expires: Instant) {
        if let Some(book) = self.map.get_mut(key) {
            book.expires = expires;
            self.next += 1;
            self.by_expiry.insert((expires, self.next), key.to_owned());
        }
    }

    /// Forgets entries expired at `now`, then counts a write of `key`
    /// beginning with a new sequence, its entry living until `now + ttl`.
    fn begin(&mut self, key: &str, now: Instant, ttl: Duration) -> WriteBook {
        self.expire(now);
        self.seq += 1;
        let seq = self.seq;
        let book = self.map.entry(key.to_owned()).or_insert(WriteBook {
            seq: 0,
            in_flight: 0,
            expires: now,
            base: seq - 1,
        });
        book.seq = seq;
        book.in_flight += 1;
        self.live_until(key, now + ttl);
        self.map.get(key).copied().unwrap_or(WriteBook {
            seq,
            in_flight: 1,
            expires: now + ttl,
            base: seq - 1,
        })
    }

    /// Bumps the sequence of `key`'s bookkeeping, if it has some: a write
    /// that began before cannot set any more.
    fn bump(&mut self, key: &str) {
        self.seq += 1;
        let bumped = self.seq;
        if let Some(book) = self.map.get_mut(key) {
            book.seq = bumped;
        }
    }
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
        self.slots.touch(key, self.tick)
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
            key,
            Slot {
                value,
                expires: ttl.map(|t| now + t),
                used: self.tick,
                born: self.tick,
            },
        );
    }

    fn make_room(&mut self, now: Instant, capacity: usize) {
        self.expired += self.slots.remove_expired(now);
        while self.slots.len() >= capacity {
            if !self.slots.remove_least_used() {
                break;
            }
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
                collections: Default::default(),
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

    /// The cached collections (`memory_collection.rs`).
    pub(super) fn collection_state(&self) -> &super::memory_collection::State {
        &self.inner.collections
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every operation is a few HashMap calls), so a poisoned lock is safe to use.
        self.inner.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `keys` under one lock, in order.
    fn get_all<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Option<Bytes>> {
        let now = Instant::now();
        let mut map = self.lock();
        keys.map(|k| map.get(k, now)).collect()
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
        Ok(self.get_all(keys.iter().map(String::as_str)))
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

#[async_trait]
impl Protocol for MemoryStore {
    async fn get_values(&self, keys: &TextBatch) -> Result<Vec<Option<Bytes>>> {
        Ok(self.get_all(keys.iter()))
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
        let book = map.writes.begin(&keys.write_key, now, ttl);
        let seq = book.seq;
        Ok(WriteTicket {
            seq,
            clean: book.in_flight == 1,
        })
    }

    async fn write_renew(&self, keys: &WriteKeys, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(expires) = map.writes.live(&keys.write_key, now).map(|b| b.expires) {
            if now + ttl > expires {
                map.writes.live_until(&keys.write_key, now + ttl);
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
            .live(&keys.write_key, now)
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
                map.writes.bump(&keys.write_key);
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
        if map.writes.live(&keys.write_key, now).is_some() {
            map.writes.bump(&keys.write_key);
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

    async fn bump_generation(
        &self,
        key: &str,
        field: &str,
        init: u64,
        at: Option<(&str, u64)>,
    ) -> Result<u64> {
        let mut map = self.lock();
        let hash = map.generations.entry(key.to_owned()).or_default();
        let seq = hash.entry("seq".to_owned()).or_insert(init);
        *seq += 1;
        let seq = *seq;
        hash.insert(field.to_owned(), seq);
        if let Some((at_field, at_ms)) = at {
            hash.insert(at_field.to_owned(), at_ms);
        }
        Ok(seq)
    }

    fn collections(&self) -> Option<&dyn super::Collections> {
        Some(self)
    }

    async fn compact_generations(
        &self,
        key: &str,
        compaction: &super::Compaction,
    ) -> Result<super::Compacted> {
        use crate::generation::{tag_at_field, FLOOR_FIELD};
        let mut map = self.lock();
        let Some(hash) = map.generations.get_mut(key) else {
            return Ok(super::Compacted::default());
        };
        let tags: Vec<(String, u64)> = hash
            .iter()
            .filter_map(|(f, v)| Some((f.strip_prefix("t:")?.to_owned(), *v)))
            .collect();
        let mut floor = hash.get(FLOOR_FIELD).copied().unwrap_or(0);
        let mut removed = Vec::new();
        for (tag, seq) in tags {
            let at_field = tag_at_field(&tag);
            let Some(&at_ms) = hash.get(&at_field) else {
                hash.insert(at_field, compaction.now_ms);
                continue;
            };
            if compaction.removes(at_ms) {
                hash.remove(&at_field);
                hash.remove(&crate::generation::tag_field(&tag));
                floor = floor.max(seq);
                removed.push(tag);
            }
        }
        if !removed.is_empty() {
            hash.insert(FLOOR_FIELD.to_owned(), floor);
        }
        removed.sort();
        Ok(super::Compacted { floor, removed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn a_full_store_evicts_exactly_the_least_recently_used() {
        let (now, capacity) = (Instant::now(), 1_000);
        let mut map = Map::default();
        for i in 0..capacity {
            map.set(&format!("k{i}"), bytes("v"), None, now, capacity);
        }
        // The even keys are used again: the odd ones are now the oldest.
        for i in (0..capacity).step_by(2) {
            assert!(map.get(&format!("k{i}"), now).is_some());
        }
        for i in 0..capacity / 2 {
            map.set(&format!("n{i}"), bytes("v"), None, now, capacity);
        }
        assert_eq!(map.slots.len(), capacity);
        assert_eq!(map.evicted, (capacity / 2) as u64);
        for i in 0..capacity {
            let held = map.slots.contains_key(&format!("k{i}"));
            assert_eq!(held, i % 2 == 0, "k{i}");
        }
        for i in 0..capacity / 2 {
            assert!(map.slots.contains_key(&format!("n{i}")), "n{i}");
        }
    }

    #[test]
    fn expired_keys_go_before_any_live_one() {
        let (now, capacity) = (Instant::now(), 4);
        let mut map = Map::default();
        map.set("old", bytes("v"), None, now, capacity);
        map.set("a", bytes("v"), Some(Duration::from_secs(1)), now, capacity);
        map.set("b", bytes("v"), Some(Duration::from_secs(2)), now, capacity);
        map.set(
            "c",
            bytes("v"),
            Some(Duration::from_secs(60)),
            now,
            capacity,
        );
        let later = now + Duration::from_secs(3);
        map.set("d", bytes("v"), None, later, capacity);
        assert_eq!((map.expired, map.evicted), (2, 0));
        for key in ["old", "c", "d"] {
            assert!(map.slots.contains_key(key), "{key}");
        }
        // Full again, nothing expired: the least recently used goes.
        map.set("e", bytes("v"), None, later, capacity);
        map.set("f", bytes("v"), None, later, capacity);
        assert_eq!((map.expired, map.evicted), (2, 1));
        assert!(!map.slots.contains_key("old"));
        // The indexes follow every removal.
        map.slots.remove("c");
        assert_eq!(map.slots.by_use.len(), map.slots.len());
        assert!(map.slots.by_expiry.is_empty());
    }

    #[test]
    fn inserting_into_a_full_store_does_not_scan_its_keys() {
        let (now, capacity) = (Instant::now(), 20_000);
        let mut map = Map::default();
        for i in 0..capacity {
            let ttl = (i % 2 == 0).then_some(Duration::from_secs(600));
            map.set(&format!("k{i}"), bytes("v"), ttl, now, capacity);
        }
        let before = map.slots.visited;
        let inserts = 5_000;
        for i in 0..inserts {
            map.set(&format!("n{i}"), bytes("v"), None, now, capacity);
        }
        let visited = map.slots.visited - before;
        // One look at the first expiry and one eviction per insert.
        assert!(
            visited <= 2 * inserts as u64,
            "{visited} index entries looked at for {inserts} inserts"
        );
        assert_eq!(map.slots.len(), capacity);
        assert_eq!(map.slots.by_use.len(), capacity);
    }

    #[test]
    fn write_bookkeeping_forgets_expired_entries_without_a_scan() {
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut writes = Writes::default();
        let n = 10_000;
        for i in 0..n {
            writes.begin(&format!("w{i}"), now, ttl);
        }
        assert!(
            writes.visited <= n,
            "{} looks for {n} begins",
            writes.visited
        );
        // A second begin of a key overlaps the first.
        assert_eq!(writes.begin("w0", now, ttl).in_flight, 2);
        // Past their life, entries are forgotten: a new write is alone.
        let later = now + Duration::from_secs(11);
        let before = writes.visited;
        let book = writes.begin("w1", later, ttl);
        assert_eq!(
            (book.in_flight, book.expires, book.seq > book.base),
            (1, later + ttl, true)
        );
        assert!(writes.map.len() == 1, "{} entries left", writes.map.len());
        // Each expired index entry was looked at once, and goes.
        assert!(writes.visited - before <= n + 2);
        assert_eq!(writes.by_expiry.len(), 1);
    }
}
