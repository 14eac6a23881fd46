//! Cached collections in the memory store: the same operations as
//! `redis_collection.rs`, each under one lock of its own (collections
//! never share an atomic step with entities, so they need not share the
//! entities' lock).
//!
//! A set is a `BTreeSet<(score, member)>`: with every score 0 that is the
//! member's byte order (Redis `BYLEX`), with integer scores numeric order
//! (Redis `BYSCORE`), so pages are the same on both stores.
//!
//! # Behavior
//! - Collections are not counted against the store's key capacity; an
//!   expired owner's keys go when next touched.

use super::collection::{
    BoardAnswer, BoardChunk, BoardQuery, BoardRead, BoardWriteEnd, CollectionAcquired,
    CollectionKeys, CollectionMeta, Collections, FeedChunk, FeedRead, FeedWriteEnd, MemberOrder,
    SetAnswer, SetChunk, SetQuery, SetRead, SetWriteEnd,
};
use super::memory::MemoryStore;
use crate::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use std::cmp::{Ordering, Reverse};
use std::collections::VecDeque;
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

type Members = BTreeSet<(i64, String)>;

/// A score ordered as Redis orders them (`-0` is `0`; NaN never gets in:
/// the sources refuse it, as Redis' `ZADD` does).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Total(f64);

impl Eq for Total {}

impl PartialOrd for Total {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Total {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A leaderboard: scores by member, and the rank order (score
/// descending, ties in descending byte order of the member: `ZREVRANGE`).
#[derive(Debug, Default, Clone)]
struct Board {
    scores: HashMap<String, f64>,
    order: BTreeSet<(Reverse<Total>, Reverse<String>)>,
}

impl Board {
    fn insert(&mut self, member: &str, score: f64) {
        // `+ 0.0` turns `-0` into `0`, which Redis does not tell apart.
        let score = score + 0.0;
        if let Some(old) = self.scores.insert(member.to_owned(), score) {
            self.order
                .remove(&(Reverse(Total(old)), Reverse(member.to_owned())));
        }
        self.order
            .insert((Reverse(Total(score)), Reverse(member.to_owned())));
    }

    fn remove(&mut self, member: &str) {
        if let Some(old) = self.scores.remove(member) {
            self.order
                .remove(&(Reverse(Total(old)), Reverse(member.to_owned())));
        }
    }

    fn len(&self) -> usize {
        self.scores.len()
    }
}

/// The collections of one memory store.
#[derive(Debug, Default)]
pub(super) struct State {
    map: Mutex<Colls>,
}

#[derive(Debug, Default)]
struct Colls {
    metas: HashMap<String, (CollectionMeta, Instant)>,
    values: HashMap<String, Members>,
    staging: HashMap<String, (Members, Instant)>,
    leases: HashMap<String, (String, Instant)>,
    writes: HashMap<String, Book>,
    /// Feeds: the lists, head first, and fills' staging.
    lists: HashMap<String, VecDeque<Bytes>>,
    list_staging: HashMap<String, (Vec<Bytes>, Instant)>,
    /// Leaderboards, and fills' staging.
    boards: HashMap<String, Board>,
    board_staging: HashMap<String, (Board, Instant)>,
    /// The largest write sequence handed out (new bookkeeping starts above it).
    last_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct Book {
    seq: u64,
    in_flight: u64,
    base: u64,
    expires: Instant,
}

impl Colls {
    /// The live meta of an owner (an expired one is removed with its value).
    fn meta(&mut self, keys: &CollectionKeys, now: Instant) -> Option<CollectionMeta> {
        match self.metas.get(&keys.meta) {
            Some((meta, expires)) if *expires > now => Some(*meta),
            Some(_) => {
                self.metas.remove(&keys.meta);
                self.values.remove(&keys.value);
                self.lists.remove(&keys.value);
                self.boards.remove(&keys.value);
                None
            }
            None => None,
        }
    }

    fn lease(&mut self, keys: &CollectionKeys, now: Instant) -> Option<&str> {
        if self.leases.get(&keys.lease).is_some_and(|(_, e)| *e <= now) {
            self.leases.remove(&keys.lease);
        }
        self.leases.get(&keys.lease).map(|(t, _)| t.as_str())
    }

    fn book(&mut self, keys: &CollectionKeys, now: Instant) -> Option<&mut Book> {
        if self
            .writes
            .get(&keys.write)
            .is_some_and(|b| b.expires <= now)
        {
            self.writes.remove(&keys.write);
        }
        self.writes.get_mut(&keys.write)
    }

    fn drop_set(&mut self, keys: &CollectionKeys) {
        self.metas.remove(&keys.meta);
        self.values.remove(&keys.value);
        self.lists.remove(&keys.value);
        self.boards.remove(&keys.value);
    }

    /// Ends a write's bookkeeping as every write end does: `Some(applies)`
    /// (whether it overlapped nothing), or `None` when the ticket's
    /// bookkeeping expired (the collection is then deleted, unless aborting).
    fn end_write(
        &mut self,
        keys: &CollectionKeys,
        seq: u64,
        clean: bool,
        abort: bool,
        now: Instant,
    ) -> Option<bool> {
        match self.book(keys, now) {
            Some(b) if seq > b.base => {
                b.in_flight = b.in_flight.saturating_sub(1);
                let book = *b;
                if !abort {
                    self.leases.remove(&keys.lease);
                }
                Some(clean && book.seq == seq && book.in_flight == 0)
            }
            other => {
                if abort {
                    return None;
                }
                if let Some(b) = other {
                    b.seq += 1;
                    let s = b.seq;
                    self.last_seq = self.last_seq.max(s);
                }
                self.drop_set(keys);
                self.leases.remove(&keys.lease);
                None
            }
        }
    }
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Colls> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Collections for MemoryStore {
    async fn set_read(
        &self,
        keys: &CollectionKeys,
        _order: MemberOrder,
        query: &SetQuery,
    ) -> Result<SetRead> {
        let mut c = self.collection_state().lock();
        let Some(meta) = c.meta(keys, Instant::now()) else {
            return Ok(SetRead::Miss);
        };
        if !meta.complete {
            return Ok(SetRead::Hit { meta, answer: None });
        }
        let empty = Members::new();
        let set = c.values.get(&keys.value).unwrap_or(&empty);
        let answer = match query {
            SetQuery::Contains(m) => {
                SetAnswer::Contains(set.contains(&(m.score, m.member.clone())))
            }
            SetQuery::Page { after, limit } => {
                let from = match after {
                    None => Bound::Unbounded,
                    Some(a) => Bound::Excluded((a.score, a.member.clone())),
                };
                SetAnswer::Page(
                    set.range((from, Bound::Unbounded))
                        .take(*limit)
                        .map(|(_, m)| m.clone())
                        .collect(),
                )
            }
            SetQuery::Meta => SetAnswer::Meta,
        };
        Ok(SetRead::Hit {
            meta,
            answer: Some(answer),
        })
    }

    async fn collection_acquire(
        &self,
        keys: &CollectionKeys,
        token: &str,
        lease_ttl: Duration,
        now_ms: u64,
    ) -> Result<CollectionAcquired> {
        let now = Instant::now();
        let mut c = self.collection_state().lock();
        if c.meta(keys, now).is_some_and(|m| m.fresh_until_ms > now_ms) {
            return Ok(CollectionAcquired::Present);
        }
        if c.lease(keys, now).is_some() {
            return Ok(CollectionAcquired::Held);
        }
        c.leases
            .insert(keys.lease.clone(), (token.to_owned(), now + lease_ttl));
        Ok(CollectionAcquired::Lease)
    }

    async fn collection_release(&self, keys: &CollectionKeys, token: &str) -> Result<()> {
        let mut c = self.collection_state().lock();
        if c.lease(keys, Instant::now()) == Some(token) {
            c.leases.remove(&keys.lease);
        }
        Ok(())
    }

    async fn set_fill_chunk(&self, keys: &CollectionKeys, chunk: &SetChunk<'_>) -> Result<bool> {
        let now = Instant::now();
        let mut c = self.collection_state().lock();
        if c.lease(keys, now) != Some(chunk.token) {
            c.staging.remove(&keys.staging);
            return Ok(false);
        }
        if chunk.first {
            c.staging.remove(&keys.staging);
        }
        let expires = now + chunk.ttl;
        let staged = c
            .staging
            .entry(keys.staging.clone())
            .or_insert_with(|| (Members::new(), expires));
        staged.1 = expires;
        staged
            .0
            .extend(chunk.members.iter().map(|m| (m.score, m.member.clone())));
        if let Some(meta) = chunk.last {
            let members = c
                .staging
                .remove(&keys.staging)
                .map(|(m, _)| m)
                .unwrap_or_default();
            c.values.insert(keys.value.clone(), members);
            c.metas.insert(keys.meta.clone(), (meta, expires));
            c.leases.remove(&keys.lease);
        }
        Ok(true)
    }

    async fn collection_write_begin(
        &self,
        keys: &CollectionKeys,
        ttl: Duration,
    ) -> Result<(u64, bool)> {
        let now = Instant::now();
        let mut c = self.collection_state().lock();
        c.leases.remove(&keys.lease);
        let last = c.last_seq;
        if c.book(keys, now).is_none() {
            c.writes.insert(
                keys.write.clone(),
                Book {
                    seq: last,
                    in_flight: 0,
                    base: last,
                    expires: now + ttl,
                },
            );
        }
        let book = c.writes.get_mut(&keys.write).map(|b| {
            b.seq += 1;
            b.in_flight += 1;
            b.expires = now + ttl;
            *b
        });
        let book = book.unwrap_or(Book {
            seq: last + 1,
            in_flight: 1,
            base: last,
            expires: now + ttl,
        });
        c.last_seq = c.last_seq.max(book.seq);
        Ok((book.seq, book.in_flight == 1))
    }

    async fn set_write_end(
        &self,
        keys: &CollectionKeys,
        seq: u64,
        clean: bool,
        end: &SetWriteEnd,
    ) -> Result<bool> {
        let now = Instant::now();
        let mut c = self.collection_state().lock();
        let abort = matches!(end, SetWriteEnd::Abort);
        let book = match c.book(keys, now) {
            Some(b) if seq > b.base => {
                b.in_flight = b.in_flight.saturating_sub(1);
                *b
            }
            other => {
                // The bookkeeping this ticket came from expired.
                if abort {
                    return Ok(false);
                }
                if let Some(b) = other {
                    b.seq += 1;
                    let s = b.seq;
                    c.last_seq = c.last_seq.max(s);
                }
                c.drop_set(keys);
                c.leases.remove(&keys.lease);
                return Ok(false);
            }
        };
        if abort {
            return Ok(false);
        }
        c.leases.remove(&keys.lease);
        let applies = clean && book.seq == seq && book.in_flight == 0;
        let (member, add, changed, max) = match end {
            SetWriteEnd::Add {
                member,
                changed,
                max,
            } if applies => (member, true, *changed, *max),
            SetWriteEnd::Remove { member, changed } if applies => (member, false, *changed, 0),
            _ => {
                c.drop_set(keys);
                return Ok(false);
            }
        };
        let Some(mut meta) = c.meta(keys, now) else {
            return Ok(false);
        };
        if !meta.complete {
            if changed {
                meta.count = if add {
                    meta.count + 1
                } else {
                    meta.count.saturating_sub(1)
                };
            }
            if let Some(slot) = c.metas.get_mut(&keys.meta) {
                slot.0 = meta;
            }
            return Ok(true);
        }
        let pair = (member.score, member.member.clone());
        let set = c.values.entry(keys.value.clone()).or_default();
        if add {
            if !set.contains(&pair) && set.len() as u64 + 1 > max {
                c.drop_set(keys);
                return Ok(false);
            }
            set.insert(pair);
        } else {
            set.remove(&pair);
        }
        meta.count = set.len() as u64;
        if let Some(slot) = c.metas.get_mut(&keys.meta) {
            slot.0 = meta;
        }
        Ok(true)
    }

    async fn feed_read(&self, keys: &CollectionKeys, offset: u64, limit: u64) -> Result<FeedRead> {
        let mut c = self.collection_state().lock();
        let Some(meta) = c.meta(keys, Instant::now()) else {
            return Ok(FeedRead::Miss);
        };
        let elements = c
            .lists
            .get(&keys.value)
            .map(|l| {
                l.iter()
                    .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                    .take(usize::try_from(limit).unwrap_or(usize::MAX))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Ok(FeedRead::Hit { meta, elements })
    }

    async fn feed_fill_chunk(&self, keys: &CollectionKeys, chunk: &FeedChunk<'_>) -> Result<bool> {
        let now = Instant::now();
        let mut c = self.collection_state().lock();
        if c.lease(keys, now) != Some(chunk.token) {
            c.list_staging.remove(&keys.staging);
            return Ok(false);
        }
        if chunk.first {
            c.list_staging.remove(&keys.staging);
        }
        let expires = now + chunk.ttl;
        let staged = c
            .list_staging
            .entry(keys.staging.clone())
            .or_insert_with(|| (Vec::new(), expires));
        staged.1 = expires;
        staged
            .0
            .extend(chunk.elements.iter().map(|e| Bytes::from(e.clone())));
        if let Some(meta) = chunk.last {
            let list = c
                .list_staging
                .remove(&keys.staging)
                .map(|(l, _)| l)
                .unwrap_or_default();
            c.lists.insert(keys.value.clone(), list.into());
            c.metas.insert(keys.meta.clone(), (meta, expires));
            c.leases.remove(&keys.lease);
        }
        Ok(true)
    }

    async fn feed_write_end(
        &self,
        keys: &CollectionKeys,
        seq: u64,
        clean: bool,
        end: &FeedWriteEnd,
    ) -> Result<bool> {
        let now = Instant::now();
        let mut c = self.collection_state().lock();
        let abort = matches!(end, FeedWriteEnd::Abort);
        let Some(applies) = c.end_write(keys, seq, clean, abort, now) else {
            return Ok(false);
        };
        if abort {
            return Ok(false);
        }
        let meta = if applies { c.meta(keys, now) } else { None };
        let Some(mut meta) = meta else {
            c.drop_set(keys);
            return Ok(false);
        };
        let list = c.lists.entry(keys.value.clone()).or_default();
        let done = match end {
            FeedWriteEnd::Push {
                element,
                head,
                max_len,
            } if list.front().map(|h| h.as_ref()) == head.as_deref() => {
                list.push_front(Bytes::from(element.clone()));
                let max = usize::try_from(*max_len).unwrap_or(usize::MAX);
                if list.len() > max {
                    list.truncate(max);
                    meta.complete = false;
                }
                true
            }
            FeedWriteEnd::Remove { id } if meta.complete => {
                let mut prefix = id.as_bytes().to_vec();
                prefix.push(0);
                if let Some(i) = list.iter().position(|e| e.starts_with(&prefix)) {
                    list.remove(i);
                }
                true
            }
            _ => false,
        };
        if !done {
            c.drop_set(keys);
            return Ok(false);
        }
        meta.count = list.len() as u64;
        if let Some(slot) = c.metas.get_mut(&keys.meta) {
            slot.0 = meta;
        }
        Ok(true)
    }

    async fn collection_owners(&self, namespace: &str) -> Result<Vec<String>> {
        let c = self.collection_state().lock();
        let keys = c
            .metas
            .keys()
            .chain(c.values.keys())
            .chain(c.staging.keys())
            .chain(c.leases.keys())
            .chain(c.writes.keys())
            .chain(c.lists.keys())
            .chain(c.list_staging.keys());
        Ok(super::collection::owners_of_keys(namespace, keys))
    }

    async fn collection_invalidate(&self, keys: &CollectionKeys) -> Result<()> {
        let now = Instant::now();
        let mut c = self.collection_state().lock();
        c.drop_set(keys);
        c.staging.remove(&keys.staging);
        c.list_staging.remove(&keys.staging);
        c.board_staging.remove(&keys.staging);
        c.leases.remove(&keys.lease);
        if let Some(b) = c.book(keys, now) {
            b.seq += 1;
            let s = b.seq;
            c.last_seq = c.last_seq.max(s);
        }
        Ok(())
    }

    async fn board_read(&self, keys: &CollectionKeys, query: &BoardQuery) -> Result<BoardRead> {
        let mut c = self.collection_state().lock();
        let Some(meta) = c.meta(keys, Instant::now()) else {
            return Ok(BoardRead::Miss);
        };
        if !meta.complete {
            return Ok(BoardRead::Hit { meta, answer: None });
        }
        let empty = Board::default();
        let board = c.boards.get(&keys.value).unwrap_or(&empty);
        let answer = match query {
            BoardQuery::Top { offset, limit } => BoardAnswer::Top(
                board
                    .order
                    .iter()
                    .skip(usize::try_from(*offset).unwrap_or(usize::MAX))
                    .take(usize::try_from(*limit).unwrap_or(usize::MAX))
                    .map(|(Reverse(Total(s)), Reverse(m))| (m.clone(), *s))
                    .collect(),
            ),
            BoardQuery::Member(member) => BoardAnswer::Member(board.scores.get(member).map(|s| {
                let key = (Reverse(Total(*s)), Reverse(member.clone()));
                (*s, board.order.range(..key).count() as u64)
            })),
        };
        Ok(BoardRead::Hit {
            meta,
            answer: Some(answer),
        })
    }

    async fn board_fill_chunk(
        &self,
        keys: &CollectionKeys,
        chunk: &BoardChunk<'_>,
    ) -> Result<bool> {
        let now = Instant::now();
        let mut c = self.collection_state().lock();
        if c.lease(keys, now) != Some(chunk.token) {
            c.board_staging.remove(&keys.staging);
            return Ok(false);
        }
        if chunk.first {
            c.board_staging.remove(&keys.staging);
        }
        let expires = now + chunk.ttl;
        let staged = c
            .board_staging
            .entry(keys.staging.clone())
            .or_insert_with(|| (Board::default(), expires));
        staged.1 = expires;
        for m in chunk.members {
            staged.0.insert(m.member, m.score);
        }
        if let Some(meta) = chunk.last {
            let board = c
                .board_staging
                .remove(&keys.staging)
                .map(|(b, _)| b)
                .unwrap_or_default();
            c.boards.insert(keys.value.clone(), board);
            c.metas.insert(keys.meta.clone(), (meta, expires));
            c.leases.remove(&keys.lease);
        }
        Ok(true)
    }

    async fn board_write_end(
        &self,
        keys: &CollectionKeys,
        seq: u64,
        clean: bool,
        end: &BoardWriteEnd,
    ) -> Result<bool> {
        let now = Instant::now();
        let mut c = self.collection_state().lock();
        let abort = matches!(end, BoardWriteEnd::Abort);
        let Some(applies) = c.end_write(keys, seq, clean, abort, now) else {
            return Ok(false);
        };
        if abort {
            return Ok(false);
        }
        let meta = if applies { c.meta(keys, now) } else { None };
        let Some(mut meta) = meta.filter(|m| m.complete) else {
            c.drop_set(keys);
            return Ok(false);
        };
        let board = c.boards.entry(keys.value.clone()).or_default();
        match end {
            BoardWriteEnd::Set { member, score, max } => {
                if !board.scores.contains_key(member) && board.len() as u64 + 1 > *max {
                    c.drop_set(keys);
                    return Ok(false);
                }
                board.insert(member, *score);
            }
            BoardWriteEnd::Remove { member } => board.remove(member),
            BoardWriteEnd::Delete | BoardWriteEnd::Abort => {
                c.drop_set(keys);
                return Ok(false);
            }
        }
        meta.count = board.len() as u64;
        if let Some(slot) = c.metas.get_mut(&keys.meta) {
            slot.0 = meta;
        }
        Ok(true)
    }
}
