//! Sets: [`SetCache`], each owner's members cached whole as one Redis
//! sorted set, read-through from a [`SetSource`], written through.
//!
//! # Order and cursors
//! Members page in one stable order, the same in Redis and in the
//! database ([`SetOrder`]): integer members numerically (the member is its
//! score, `ZRANGE … BYSCORE`), all others by the bytes of their canonical
//! text (every score 0, `ZRANGE … BYLEX`; PostgreSQL `COLLATE "C"`, SQLite
//! `BINARY`). A cursor is the last member returned, so it stays valid
//! across a refill and across the switch between cached and database pages.
//!
//! # Behavior
//! - A hit is one round trip: one script reads the meta and answers from
//!   the sorted set (`ZSCORE`, or `ZRANGE … LIMIT`, O(log n + page)).
//! - A miss loads the owner once per expiry across processes: one flight
//!   per process, a lease across them; waiters poll for the fill and, past
//!   `wait_timeout`, load by themselves without filling.
//! - An owner with more than `max_members` is not cached: its count is
//!   (in the meta), and membership and pages are indexed queries, outcome
//!   [`CollectionOutcome::Database`] (`X-Cache: db`). So is an integer
//!   member beyond ±2^53, which a score cannot hold exactly.
//! - Writes: the database first, then the cached set under the owner's
//!   write ticket (see the module docs of `collection`).
//! - The store unavailable: reads answer from the database
//!   ([`CollectionOutcome::Bypass`]); writes fail before the database is
//!   touched.

use super::{common_setters, CommonSettings};
use super::{
    token, CollectionOutcome, CollectionRead, CollectionStats, Core, Counters, SetLoad, SetOrder,
    SetSource,
};
use crate::error::{Error, Result};
use crate::flight::Flights;
use crate::key::validate_id;
use crate::source::MAX_EXACT_SCORE;
use crate::store::{
    CollectionAcquired, CollectionMeta, MemberOrder, Scored, SetAnswer, SetChunk, SetQuery,
    SetRead, SetWriteEnd,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Members per fill chunk (2 script arguments each: far below Lua's
/// `unpack` limit of 7,999 values).
const CHUNK: usize = 1000;

/// The default cap of members per cached owner.
pub const DEFAULT_MAX_MEMBERS: u64 = 100_000;

/// The longest page a read may ask for.
pub const MAX_SET_PAGE: usize = 1000;

/// How long a poll for another holder's fill pauses at most.
const MAX_POLL: Duration = Duration::from_millis(50);

/// One page of a set's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPage {
    /// The owner's number of members.
    pub count: u64,
    /// Up to `limit` members after the cursor, in the set's order.
    pub members: Vec<String>,
    /// The cursor of the next page (the last member returned); `None` on
    /// the last page.
    pub cursor: Option<String>,
}

/// A cache of sets, one per owner; a cheap clone over `Arc<Inner>`.
///
/// Build with [`SetCache::builder`]. See the module docs for its behavior.
#[derive(Debug, Clone)]
pub struct SetCache {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    source: Arc<dyn SetSource>,
    order: MemberOrder,
    max_members: u64,
    writable: bool,
    flights: Flights<Result<Filled>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetCache")
            .field("name", &self.core.keys.entity())
            .field("store", &self.core.store.name())
            .field("source", &self.source)
            .field("max_members", &self.max_members)
            .finish()
    }
}

/// What one flight (one load of an owner) ended with.
#[derive(Debug, Clone)]
enum Filled {
    /// Someone else's fill is in place: read it.
    Present,
    /// Loaded by this flight (filled or not).
    Loaded(Arc<SetLoad>),
}

/// Builds a [`SetCache`]; consuming, finish with [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct SetCacheBuilder {
    common: CommonSettings,
    source: Option<Arc<dyn SetSource>>,
    max_members: u64,
    read_only: bool,
}

impl SetCache {
    /// Starts a builder.
    pub fn builder() -> SetCacheBuilder {
        SetCacheBuilder {
            common: CommonSettings::default(),
            source: None,
            max_members: DEFAULT_MAX_MEMBERS,
            read_only: false,
        }
    }
}

impl SetCacheBuilder {
    common_setters!("set");

    /// The source of the members. Required.
    pub fn source(mut self, source: impl SetSource) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// An owner with more members is not cached (its count is). At least 1.
    /// Default: 100,000.
    pub fn max_members(mut self, max: u64) -> Self {
        self.max_members = max;
        self
    }

    /// Refuse writes ([`Error::ReadOnly`]). Default: writable (write-through).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Checks the settings and builds the cache: a missing name, store or
    /// source, or a setting out of range, is [`Error::InvalidSetting`]; a
    /// store without collections [`Error::Config`].
    pub async fn build(self) -> Result<SetCache> {
        let required = self.common.required("set")?;
        let source = self
            .source
            .ok_or_else(|| Error::setting("source", "a set needs a source"))?;
        let core = self
            .common
            .into_core(required, ("max_members", self.max_members))?;
        let order = match source.order() {
            SetOrder::Bytes => MemberOrder::Lex,
            SetOrder::Integer => MemberOrder::Score,
        };
        Ok(SetCache {
            inner: Arc::new(Inner {
                core,
                source,
                order,
                max_members: self.max_members,
                writable: !self.read_only,
                flights: Flights::new(),
            }),
        })
    }
}

/// A read's question, before it meets a cached set or a loaded one.
enum Ask {
    Contains(Scored),
    Page { after: Option<Scored>, limit: usize },
    Count,
}

/// A read's answer.
enum Said {
    Contains(bool),
    Page(SetPage),
    Count(u64),
}

impl SetCache {
    /// The set's name.
    pub fn name(&self) -> &str {
        self.inner.core.keys.entity()
    }

    /// The set's order.
    pub fn order(&self) -> SetOrder {
        self.inner.source.order()
    }

    /// The cap of members per cached owner.
    pub fn max_members(&self) -> u64 {
        self.inner.max_members
    }

    /// Whether writes are accepted.
    pub fn is_writable(&self) -> bool {
        self.inner.writable
    }

    /// The counters.
    pub fn stats(&self) -> CollectionStats {
        self.inner.core.stats()
    }

    /// The canonical owner id ([`Error::InvalidId`] if it cannot be one).
    pub fn canonical_owner(&self, raw: &str) -> Result<String> {
        let owner = self.inner.source.canonical_owner(raw)?;
        validate_id(&owner)?;
        Ok(owner)
    }

    /// The canonical member ([`Error::InvalidId`] if it cannot be one).
    pub fn canonical_member(&self, raw: &str) -> Result<String> {
        let member = self.inner.source.canonical_member(raw)?;
        validate_id(&member)?;
        Ok(member)
    }

    fn scored(&self, member: String) -> Scored {
        let score = match self.inner.order {
            MemberOrder::Lex => 0,
            MemberOrder::Score => member.parse().unwrap_or(0),
        };
        Scored { member, score }
    }

    /// Whether an integer member fits a score exactly.
    fn exact(&self, m: &Scored) -> bool {
        self.inner.order == MemberOrder::Lex
            || (-MAX_EXACT_SCORE..=MAX_EXACT_SCORE).contains(&m.score)
    }

    /// Whether `member` belongs to `owner`'s set.
    pub async fn contains(&self, owner: &str, member: &str) -> Result<CollectionRead<bool>> {
        let owner = self.canonical_owner(owner)?;
        let member = self.scored(self.canonical_member(member)?);
        let read = self.read(&owner, Ask::Contains(member)).await?;
        match read.value {
            Said::Contains(b) => Ok(CollectionRead {
                value: b,
                outcome: read.outcome,
            }),
            _ => Err(internal()),
        }
    }

    /// Up to `limit` (at most [`MAX_SET_PAGE`]) members after `cursor`, and the
    /// count; `limit` 0 answers the count alone.
    pub async fn members(
        &self,
        owner: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<CollectionRead<SetPage>> {
        if limit > MAX_SET_PAGE {
            return Err(Error::setting("limit", format!("at most {MAX_SET_PAGE}")));
        }
        let owner = self.canonical_owner(owner)?;
        let after = cursor
            .map(|c| self.canonical_member(c).map(|m| self.scored(m)))
            .transpose()?;
        let read = self.read(&owner, Ask::Page { after, limit }).await?;
        match read.value {
            Said::Page(p) => Ok(CollectionRead {
                value: p,
                outcome: read.outcome,
            }),
            _ => Err(internal()),
        }
    }

    /// The number of members of `owner`'s set.
    pub async fn count(&self, owner: &str) -> Result<CollectionRead<u64>> {
        let owner = self.canonical_owner(owner)?;
        let read = self.read(&owner, Ask::Count).await?;
        match read.value {
            Said::Count(n) => Ok(CollectionRead {
                value: n,
                outcome: read.outcome,
            }),
            _ => Err(internal()),
        }
    }

    /// Invalidates every owner's cached set, on every instance (the store
    /// is shared): the next read of each loads. For a TRUNCATE or a gap in
    /// change notifications; it scans the store (`SCAN`), so it is not for
    /// the read or write path. Returns how many owners had keys.
    pub async fn purge(&self) -> Result<u64> {
        self.inner.core.purge().await
    }

    /// Deletes `owner`'s cached set (the next read loads it); a write of
    /// the owner in flight then deletes rather than updates.
    pub async fn invalidate(&self, owner: &str) -> Result<()> {
        let owner = self.canonical_owner(owner)?;
        let core = &self.inner.core;
        core.collections()?
            .collection_invalidate(&core.owner_keys(&owner))
            .await
    }

    async fn read(&self, owner: &str, ask: Ask) -> Result<CollectionRead<Said>> {
        let core = &self.inner.core;
        let keys = core.owner_keys(owner);
        let query = match &ask {
            Ask::Contains(m) => SetQuery::Contains(m.clone()),
            // One more than asked: whether there is a next page.
            Ask::Page { after, limit } => SetQuery::Page {
                after: after.clone(),
                limit: limit + 1,
            },
            Ask::Count => SetQuery::Meta,
        };
        let mut first = true;
        loop {
            match core
                .collections()?
                .set_read(&keys, self.inner.order, &query)
                .await
            {
                Ok(SetRead::Hit { meta, answer }) if meta.fresh_until_ms > core.now_ms() => {
                    let outcome = if first {
                        CollectionOutcome::Hit
                    } else {
                        CollectionOutcome::Miss
                    };
                    return match answer {
                        Some(answer) => {
                            if first {
                                Counters::bump(&core.counters.hits);
                            }
                            Ok(CollectionRead {
                                value: self.said_from_cache(&ask, meta, answer),
                                outcome,
                            })
                        }
                        None => {
                            Counters::bump(&core.counters.database);
                            self.answer_from_source(
                                owner,
                                &ask,
                                Some(meta.count),
                                CollectionOutcome::Database,
                            )
                            .await
                        }
                    };
                }
                Ok(_) => {}
                Err(e) if e.is_store_unavailable() => {
                    Counters::bump(&core.counters.bypass);
                    return self
                        .answer_from_source(owner, &ask, None, CollectionOutcome::Bypass)
                        .await;
                }
                Err(e) => return Err(e),
            }
            if first {
                Counters::bump(&core.counters.misses);
            }
            if !first {
                // A fill landed and was gone again (invalidated, evicted):
                // answer from the database rather than loop.
                return self
                    .answer_from_source(owner, &ask, None, CollectionOutcome::Miss)
                    .await;
            }
            first = false;
            match self.load(owner).await? {
                Filled::Present => continue,
                Filled::Loaded(load) => {
                    return match &*load {
                        SetLoad::Members(members) => Ok(CollectionRead {
                            value: self.said_from_members(&ask, members),
                            outcome: CollectionOutcome::Miss,
                        }),
                        SetLoad::TooMany(count) => {
                            self.answer_from_source(
                                owner,
                                &ask,
                                Some(*count),
                                CollectionOutcome::Database,
                            )
                            .await
                        }
                    };
                }
            }
        }
    }

    fn said_from_cache(&self, ask: &Ask, meta: CollectionMeta, answer: SetAnswer) -> Said {
        match (ask, answer) {
            (Ask::Contains(_), SetAnswer::Contains(b)) => Said::Contains(b),
            (Ask::Page { limit, .. }, SetAnswer::Page(members)) => {
                Said::Page(page(meta.count, members, *limit))
            }
            _ => Said::Count(meta.count),
        }
    }

    fn said_from_members(&self, ask: &Ask, members: &[String]) -> Said {
        let count = members.len() as u64;
        match ask {
            Ask::Contains(m) => Said::Contains(members.contains(&m.member)),
            Ask::Count => Said::Count(count),
            Ask::Page { after, limit } => {
                let start = match after {
                    None => 0,
                    Some(a) => members.partition_point(|x| {
                        let x = self.scored(x.clone());
                        (x.score, x.member.as_str()) <= (a.score, a.member.as_str())
                    }),
                };
                let slice: Vec<String> = members[start..].iter().take(limit + 1).cloned().collect();
                Said::Page(page(count, slice, *limit))
            }
        }
    }

    async fn answer_from_source(
        &self,
        owner: &str,
        ask: &Ask,
        count: Option<u64>,
        outcome: CollectionOutcome,
    ) -> Result<CollectionRead<Said>> {
        let source = &self.inner.source;
        let count = async {
            match count {
                Some(n) => Ok(n),
                None => source.count(owner).await,
            }
        };
        let value = match ask {
            Ask::Contains(m) => Said::Contains(source.contains(owner, &m.member).await?),
            Ask::Count => Said::Count(count.await?),
            Ask::Page { after, limit } => {
                let members = if *limit == 0 {
                    Vec::new()
                } else {
                    source
                        .page(owner, after.as_ref().map(|a| a.member.as_str()), limit + 1)
                        .await?
                };
                Said::Page(page(count.await?, members, *limit))
            }
        };
        Ok(CollectionRead { value, outcome })
    }

    /// One load of `owner` per process (a flight), under its lease.
    async fn load(&self, owner: &str) -> Result<Filled> {
        let this = self.clone();
        let id = owner.to_owned();
        let (flight, _) = self.inner.flights.join_or_start(
            owner,
            move || async move { this.load_under_lease(&id).await },
            |panic| {
                Err(Error::Internal {
                    what: format!("a set load panicked: {panic}"),
                })
            },
        );
        flight.await
    }

    async fn load_under_lease(&self, owner: &str) -> Result<Filled> {
        let core = &self.inner.core;
        let colls = core.collections()?;
        let keys = core.owner_keys(owner);
        let token = token();
        let deadline = Instant::now() + core.settings.wait_timeout;
        let mut pause = Duration::from_millis(2);
        let mut waited = false;
        loop {
            match colls
                .collection_acquire(&keys, &token, core.settings.lease_ttl, core.now_ms())
                .await?
            {
                CollectionAcquired::Present => return Ok(Filled::Present),
                CollectionAcquired::Lease => break,
                CollectionAcquired::Held => {
                    if !waited {
                        waited = true;
                        Counters::bump(&core.counters.lease_waits);
                    }
                    if Instant::now() >= deadline {
                        Counters::bump(&core.counters.loads);
                        let load = self
                            .inner
                            .source
                            .load(owner, self.inner.max_members)
                            .await?;
                        return Ok(Filled::Loaded(Arc::new(load)));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_POLL);
                }
            }
        }
        Counters::bump(&core.counters.loads);
        let load = match self.inner.source.load(owner, self.inner.max_members).await {
            Ok(load) => load,
            Err(e) => {
                let _ = colls.collection_release(&keys, &token).await;
                return Err(e);
            }
        };
        let filled = self.fill(owner, &token, &load).await;
        match filled {
            Ok(true) => Counters::bump(&core.counters.fills),
            Ok(false) => Counters::bump(&core.counters.fills_refused),
            Err(e) => {
                tracing::debug!(set = self.name(), error = %e, "could not fill a set");
                let _ = colls.collection_release(&keys, &token).await;
            }
        }
        Ok(Filled::Loaded(Arc::new(load)))
    }

    /// Writes a load in chunks under the lease; whether it landed.
    async fn fill(&self, owner: &str, token: &str, load: &SetLoad) -> Result<bool> {
        let core = &self.inner.core;
        let colls = core.collections()?;
        let keys = core.owner_keys(owner);
        let now = core.now_ms();
        let ttl = core.settings.ttl;
        let fresh_until_ms = now.saturating_add(crate::clock::duration_ms(ttl));
        let (members, complete, count) = match load {
            SetLoad::Members(members) => {
                let scored: Vec<Scored> = members.iter().map(|m| self.scored(m.clone())).collect();
                if scored.iter().all(|m| self.exact(m)) {
                    (scored, true, members.len() as u64)
                } else {
                    (Vec::new(), false, members.len() as u64)
                }
            }
            SetLoad::TooMany(count) => (Vec::new(), false, *count),
        };
        core.counters
            .last_size
            .store(count, std::sync::atomic::Ordering::Relaxed);
        let meta = CollectionMeta {
            fresh_until_ms,
            loaded_ms: now,
            complete,
            count,
            stamp: 0,
        };
        let chunks: Vec<&[Scored]> = if members.is_empty() {
            vec![&[]]
        } else {
            members.chunks(CHUNK).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let wrote = colls
                .set_fill_chunk(
                    &keys,
                    &SetChunk {
                        token,
                        first: i == 0,
                        last: (i == last).then_some(meta),
                        members: chunk,
                        ttl,
                    },
                )
                .await?;
            if !wrote {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Adds `member` to `owner`'s set: the database first, then the cached
    /// set (if cached and no other write of the owner overlapped; else it
    /// is deleted). Whether it was added (`false`: already a member).
    pub async fn add(&self, owner: &str, member: &str) -> Result<bool> {
        self.write(owner, member, true).await
    }

    /// Removes `member` from `owner`'s set, as [`SetCache::add`] does;
    /// whether it was a member.
    pub async fn remove(&self, owner: &str, member: &str) -> Result<bool> {
        self.write(owner, member, false).await
    }

    async fn write(&self, owner: &str, member: &str, add: bool) -> Result<bool> {
        if !self.inner.writable {
            return Err(Error::ReadOnly {
                entity: self.name().to_owned(),
                reason: "the set is read-only".to_owned(),
            });
        }
        let owner = self.canonical_owner(owner)?;
        let member = self.scored(self.canonical_member(member)?);
        // Detached: the ticket taken must be ended even if the caller
        // stops waiting.
        let this = self.clone();
        tokio::spawn(async move { this.write_detached(owner, member, add).await })
            .await
            .map_err(|e| Error::Internal {
                what: format!("a set write panicked: {e}"),
            })?
    }

    async fn write_detached(&self, owner: String, member: Scored, add: bool) -> Result<bool> {
        let core = &self.inner.core;
        let colls = core.collections()?;
        let keys = core.owner_keys(&owner);
        let (seq, clean) = colls
            .collection_write_begin(&keys, core.settings.write_ttl)
            .await?;
        let source = &self.inner.source;
        let result = if add {
            source.add(&owner, &member.member).await
        } else {
            source.remove(&owner, &member.member).await
        };
        let end = match &result {
            Ok(_) if !self.exact(&member) => SetWriteEnd::Delete,
            Ok(changed) if add => SetWriteEnd::Add {
                member,
                changed: *changed,
                max: self.inner.max_members,
            },
            Ok(changed) => SetWriteEnd::Remove {
                member,
                changed: *changed,
            },
            Err(Error::Source { .. } | Error::InvalidId { .. } | Error::InvalidRow { .. }) => {
                SetWriteEnd::Abort
            }
            Err(_) => SetWriteEnd::Delete,
        };
        let applied = colls.set_write_end(&keys, seq, clean, &end).await;
        match applied {
            Ok(true) => Counters::bump(&core.counters.writes_applied),
            Ok(false) => Counters::bump(&core.counters.writes_deleted),
            Err(ref e) => {
                tracing::warn!(set = self.name(), error = %e, "could not end a set write")
            }
        }
        let changed = result?;
        applied?;
        Ok(changed)
    }
}

/// A page of `limit` from up to `limit + 1` members.
fn page(count: u64, mut members: Vec<String>, limit: usize) -> SetPage {
    let cursor = if limit > 0 && members.len() > limit {
        members.truncate(limit);
        members.last().cloned()
    } else {
        members.truncate(limit);
        None
    };
    SetPage {
        count,
        members,
        cursor,
    }
}

fn internal() -> Error {
    Error::Internal {
        what: "a set read answered another question".to_owned(),
    }
}
