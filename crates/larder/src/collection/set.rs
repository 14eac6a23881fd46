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
//!   [`CollectionOutcome::Database`](super::CollectionOutcome::Database)
//!   (`X-Cache: db`). So is an integer member beyond ±2^53, which a score
//!   cannot hold exactly.
//! - Writes: the database first, then the cached set under the owner's
//!   write ticket (see the module docs of `collection`); or, written back
//!   ([`SetCacheBuilder::write_back`]), the cached set and a durable
//!   record of the member's operation in one script, flushed in batches
//!   (see `set_write_back.rs`).
//! - The store unavailable: reads answer from the database
//!   ([`CollectionOutcome::Bypass`](super::CollectionOutcome::Bypass));
//!   writes fail before the database is touched.

use super::board_write_back::BoardWriteBack;
use super::read_through::{self, fill_chunks, Cached, Filled, FromLoad, Kind};
use super::{common_setters, CommonSettings};
use super::{CollectionRead, CollectionStats, Core, Counters, SetLoad, SetOrder, SetSource};
use crate::error::{Error, Result};
use crate::flight::Flights;
use crate::key::validate_id;
use crate::source::MAX_EXACT_SCORE;
use crate::store::{
    CollectionKeys, CollectionMeta, MemberOrder, Scored, SetAnswer, SetChunk, SetQuery, SetRead,
    SetWriteEnd,
};
use crate::write_back::WriteBackOptions;
use std::sync::Arc;

/// Members per fill chunk (2 script arguments each: far below Lua's
/// `unpack` limit of 7,999 values).
const CHUNK: usize = 1000;

/// The default cap of members per cached owner.
pub const DEFAULT_MAX_MEMBERS: u64 = 100_000;

/// The longest page a read may ask for.
pub const MAX_SET_PAGE: usize = 1000;

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
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) core: Core,
    pub(super) source: Arc<dyn SetSource>,
    order: MemberOrder,
    pub(super) max_members: u64,
    writable: bool,
    flights: Flights<Result<Filled<SetLoad>>>,
    /// Write-back's state (`None`: write-through or read-only).
    pub(super) write_back: Option<Arc<BoardWriteBack>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetCache")
            .field("name", &self.core.keys.entity())
            .field("store", &self.core.store.name())
            .field("source", &self.source)
            .field("max_members", &self.max_members)
            .field("write_back", &self.write_back.is_some())
            .finish()
    }
}

/// Builds a [`SetCache`]; consuming, finish with [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct SetCacheBuilder {
    common: CommonSettings,
    source: Option<Arc<dyn SetSource>>,
    max_members: u64,
    read_only: bool,
    write_back: Option<WriteBackOptions>,
}

impl SetCache {
    /// Starts a builder.
    pub fn builder() -> SetCacheBuilder {
        SetCacheBuilder {
            common: CommonSettings::default(),
            source: None,
            max_members: DEFAULT_MAX_MEMBERS,
            read_only: false,
            write_back: None,
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

    /// Write back: adds and removals are acknowledged once the store holds
    /// them durably and flushed to the source in batches (see
    /// `set_write_back.rs`). Needs a durable Redis (as entity write-back:
    /// `appendonly yes` + `appendfsync always`, unless `require_durable =
    /// false`; never an `allkeys-*` policy, never the memory store) and a
    /// source that flushes ([`SqlSetSource`](crate::SqlSetSource)).
    /// Default: write-through.
    pub fn write_back(mut self, options: WriteBackOptions) -> Self {
        self.write_back = Some(options);
        self
    }

    /// Checks the settings and builds the cache: a missing name, store or
    /// source, or a setting out of range, is [`Error::InvalidSetting`]; a
    /// store without collections [`Error::Config`]; write-back on a store
    /// that cannot prove durability [`Error::NotDurable`]. A write-back
    /// set starts its flusher (a tokio task): call
    /// [`close`](SetCache::close) to drain it.
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
        let write_back = match self.write_back {
            Some(_) if self.read_only => {
                return Err(Error::setting(
                    "write_back",
                    "a read-only set cannot be written back",
                ))
            }
            Some(options) => Some(Arc::new(BoardWriteBack::new(&core, options).await?)),
            None => None,
        };
        let set = SetCache {
            inner: Arc::new(Inner {
                core,
                source,
                order,
                max_members: self.max_members,
                writable: !self.read_only,
                flights: Flights::new(),
                write_back,
            }),
        };
        if let Some(wb) = &set.inner.write_back {
            super::board_flush::start(&set, wb);
        }
        Ok(set)
    }
}

/// A read's question, before it meets a cached set or a loaded one.
pub(crate) enum Ask {
    Contains(Scored),
    Page { after: Option<Scored>, limit: usize },
    Count,
}

/// A read's answer.
pub(crate) enum Said {
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

    pub(super) fn scored(&self, member: String) -> Scored {
        let score = match self.inner.order {
            MemberOrder::Lex => 0,
            MemberOrder::Score => member.parse().unwrap_or(0),
        };
        Scored { member, score }
    }

    /// Whether an integer member fits a score exactly.
    pub(super) fn exact(&self, m: &Scored) -> bool {
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
        read_through::read(self, owner, ask).await
    }

    /// Adds `member` to `owner`'s set: the database first, then the cached
    /// set (if cached and no other write of the owner overlapped; else it
    /// is deleted). Whether it was added (`false`: already a member).
    ///
    /// Under write-back the add is queued (see `set_write_back.rs`):
    /// `false` only when the cached set already held the member; `true`
    /// too when the owner's set is not cached (not known until read).
    pub async fn add(&self, owner: &str, member: &str) -> Result<bool> {
        self.write(owner, member, true).await
    }

    /// Removes `member` from `owner`'s set, as [`SetCache::add`] does;
    /// whether it was a member (under write-back, as `add` says).
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
        if self.inner.write_back.is_some() {
            return self.write_back_write(&owner, &member, add).await;
        }
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
pub(super) fn page(count: u64, mut members: Vec<String>, limit: usize) -> SetPage {
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

#[async_trait::async_trait]
impl Kind for SetCache {
    const WHAT: &'static str = "set";
    type Ask = Ask;
    type Said = Said;
    type Answer = SetAnswer;
    type Load = SetLoad;

    fn core(&self) -> &Core {
        &self.inner.core
    }

    fn flights(&self) -> &Flights<Result<Filled<SetLoad>>> {
        &self.inner.flights
    }

    async fn read_cached(&self, keys: &CollectionKeys, ask: &Ask) -> Result<Cached<SetAnswer>> {
        let query = match ask {
            Ask::Contains(m) => SetQuery::Contains(m.clone()),
            // One more than asked: whether there is a next page.
            Ask::Page { after, limit } => SetQuery::Page {
                after: after.clone(),
                limit: limit + 1,
            },
            Ask::Count => SetQuery::Meta,
        };
        let read = self
            .inner
            .core
            .collections()?
            .set_read(keys, self.inner.order, &query)
            .await?;
        Ok(match read {
            SetRead::Miss => Cached::Miss,
            SetRead::Hit { meta, answer } => Cached::Hit { meta, answer },
        })
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

    fn said_from_load(&self, ask: &Ask, load: &SetLoad) -> FromLoad<Said> {
        let members = match load {
            SetLoad::Members(members) => members,
            SetLoad::TooMany(count) => return FromLoad::Database(Some(*count)),
        };
        let count = members.len() as u64;
        FromLoad::Said(match ask {
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
        })
    }

    async fn said_from_source(&self, owner: &str, ask: &Ask, count: Option<u64>) -> Result<Said> {
        if self.inner.write_back.is_some() {
            return self.write_back_from_source(owner, ask).await;
        }
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
        Ok(value)
    }

    async fn load_source(&self, owner: &str) -> Result<SetLoad> {
        if self.inner.write_back.is_some() {
            return self.write_back_load(owner).await;
        }
        self.inner.source.load(owner, self.inner.max_members).await
    }

    fn joined_loads_may_be_old(&self) -> bool {
        self.inner.write_back.is_some()
    }

    async fn fill(&self, keys: &CollectionKeys, token: &str, load: &SetLoad) -> Result<bool> {
        let core = &self.inner.core;
        let colls = core.collections()?;
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
        let meta = core.fill_meta(complete, count);
        let ttl = core.settings.kept();
        let members = members.as_slice();
        fill_chunks(
            members.len(),
            CHUNK,
            meta,
            move |range, first, last| async move {
                colls
                    .set_fill_chunk(
                        keys,
                        &SetChunk {
                            token,
                            first,
                            last,
                            members: &members[range],
                            ttl,
                        },
                    )
                    .await
            },
        )
        .await
    }
}
