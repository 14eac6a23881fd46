//! Leaderboards: [`Leaderboard`], each owner's scores cached whole as one
//! Redis sorted set, read-through from a [`BoardSource`], written through.
//!
//! # Order
//! Highest score first; ties in **descending byte order of the member's
//! text** — what `ZREVRANGE` gives, and what every database query orders
//! by (PostgreSQL `member::text COLLATE "C" DESC`, MariaDB
//! `CAST(CONVERT(member USING utf8mb4) AS BINARY) DESC`, SQLite
//! `CAST(member AS TEXT) COLLATE BINARY DESC`). So a page, a rank and a
//! score answer the same whether the board is cached or not. `rank` is
//! 1-based (1 + `ZREVRANK`).
//!
//! # Behavior
//! - A hit is one round trip: one `MULTI`/`EXEC` reads the meta and
//!   answers from the sorted set (`ZREVRANGE … WITHSCORES`, or `ZSCORE` +
//!   `ZREVRANK`), atomically.
//! - A miss loads the owner once per expiry across processes (one flight
//!   per process, a lease across them) with one indexed query, and fills
//!   in chunks of at most 3,999 members (Lua's `unpack` takes at most
//!   7,999 values) into a staging key that the last, token-checked chunk
//!   renames over the live one.
//! - An owner with more than `max_members` (or, on an integer column, a
//!   score beyond ±2^53, which a Redis double cannot hold exactly) is not
//!   cached: its count is, and reads are indexed queries, outcome
//!   [`CollectionOutcome::Database`](super::CollectionOutcome::Database)
//!   (`X-Cache: db`).
//! - Writes (write-through): the database first (an increment is one
//!   upsert that returns the new score), then, if the owner's write
//!   ticket is clean, `ZADD` of the score the database returned — never
//!   `ZINCRBY`, which would count twice after a fill that read the
//!   committed row — else the cached board is deleted. A write to an owner
//!   whose board is not cached never creates it (it voids the lease).
//! - Writes (write-back, [`LeaderboardBuilder::write_back`]): acknowledged
//!   once the store holds them, flushed exactly once; see
//!   `board_write_back.rs` and `board_flush.rs`.
//! - An integer board takes integer scores and deltas within ±2^53, and
//!   refuses a write whose result would leave that range
//!   ([`Error::InvalidRow`], nothing written). A float board takes any
//!   finite number.
//! - The store unavailable: reads answer from the database
//!   ([`CollectionOutcome::Bypass`](super::CollectionOutcome::Bypass));
//!   writes fail before the database is touched.

use super::board_write_back::{BoardBatch, BoardFlushed, BoardWriteBack};
use super::read_through::{self, fill_chunks, Cached, Filled, FromLoad, Kind};
use super::{common_setters, CommonSettings};
use super::{CollectionRead, CollectionStats, Core, Counters};
use crate::error::{Error, Result};
use crate::flight::Flights;
use crate::key::validate_id;
use crate::source::MAX_EXACT_SCORE;
use crate::store::MemberOp;
use crate::store::{
    BoardAnswer, BoardChunk, BoardQuery, BoardRead, BoardScore, BoardWriteEnd, CollectionKeys,
    CollectionMeta,
};
use crate::write_back::WriteBackOptions;
use std::sync::Arc;

/// Members per fill chunk: two script arguments each, so 3,999 members
/// are 7,998 values, the most Lua's `unpack` takes (7,999).
pub const BOARD_FILL_CHUNK: usize = 3999;

/// The longest page a read may ask for.
pub const MAX_BOARD_PAGE: u64 = 1000;

/// The largest `offset` a page may start at (Redis ranks are 64-bit).
pub const MAX_BOARD_OFFSET: u64 = 1 << 62;

/// The default cap of members per cached owner.
pub const DEFAULT_MAX_BOARD_MEMBERS: u64 = 100_000;

/// The type of a leaderboard's score column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreKind {
    /// An integer column: integer scores and deltas, within ±2^53.
    Integer,
    /// A double precision column: any finite number.
    Float,
}

/// What a [`BoardSource`] loaded for one owner.
#[derive(Debug, Clone, PartialEq)]
pub enum BoardLoad {
    /// Every member with its score, in rank order.
    Members(Vec<(String, f64)>),
    /// More than the cap (or an integer score beyond ±2^53): the count.
    TooMany(u64),
}

/// One member of a leaderboard: its score and 1-based rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// The member's canonical text.
    pub member: String,
    /// Its score (exact for integer columns within ±2^53).
    pub score: f64,
    /// 1 for the highest score.
    pub rank: u64,
}

/// One page of a leaderboard.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardPage {
    /// The owner's number of members.
    pub count: u64,
    /// Up to `limit` members from `offset`, in rank order.
    pub items: Vec<Ranked>,
}

/// Where a [`Leaderboard`] reads and writes its scores: a table of
/// `(owner, member, score)` rows ([`SqlBoardSource`](crate::SqlBoardSource)),
/// every answer in the order of the module docs.
#[async_trait::async_trait]
pub trait BoardSource: std::fmt::Debug + Send + Sync + 'static {
    /// The score column's type.
    fn score_kind(&self) -> ScoreKind;
    /// The canonical form of an owner id ([`Error::InvalidId`] if it cannot be one).
    fn canonical_owner(&self, raw: &str) -> Result<String>;
    /// The canonical form of a member ([`Error::InvalidId`] if it cannot be one).
    fn canonical_member(&self, raw: &str) -> Result<String>;
    /// Every member of `owner` with its score in rank order, or the count
    /// if above `max` (or if an integer score is beyond ±2^53): one
    /// indexed query (two when above).
    async fn load(&self, owner: &str, max: u64) -> Result<BoardLoad>;
    /// Up to `limit` members from `offset`, in rank order.
    async fn top(&self, owner: &str, offset: u64, limit: u64) -> Result<Vec<(String, f64)>>;
    /// A member's score and 0-based rank, `None` if absent.
    async fn member(&self, owner: &str, member: &str) -> Result<Option<(f64, u64)>>;
    /// The number of members.
    async fn count(&self, owner: &str) -> Result<u64>;
    /// Adds `by` to a member's score (an absent member is created with
    /// `by`) in one statement; the new score.
    async fn incr(&self, owner: &str, member: &str, by: f64) -> Result<f64>;
    /// Sets a member's score (creating it); the stored score.
    async fn set_score(&self, owner: &str, member: &str, score: f64) -> Result<f64>;
    /// Removes a member; whether it was there.
    async fn remove(&self, owner: &str, member: &str) -> Result<bool>;

    /// How many of `owner`'s members rank before `member` at `score` (it
    /// need not be stored): what a write-back board answered from the
    /// database ranks a pending member by. Default: unsupported.
    async fn above(&self, owner: &str, member: &str, score: f64) -> Result<u64> {
        let _ = (owner, member, score);
        Err(Error::Config(
            "this leaderboard source cannot rank a score it does not store".into(),
        ))
    }

    /// Prepares write-back: the fence rows of `fence` (`<prefix>:<board>`),
    /// one per shard. Default: write-back unsupported.
    async fn prepare_write_back(&self, fence: &str, shards: u16) -> Result<()> {
        let _ = (fence, shards);
        Err(Error::Config(
            "this leaderboard source cannot be written back".into(),
        ))
    }

    /// Commits a write-back batch of member operations in one fenced
    /// transaction, or nothing (see [`BoardBatch`]). Default: unsupported.
    async fn flush(&self, batch: BoardBatch<'_>) -> Result<BoardFlushed> {
        let _ = batch;
        Err(Error::Config(
            "this leaderboard source cannot be written back".into(),
        ))
    }
}

/// A cache of leaderboards, one per owner; a cheap clone over `Arc<Inner>`.
///
/// Build with [`Leaderboard::builder`]. See the module docs for its behavior.
#[derive(Debug, Clone)]
pub struct Leaderboard {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) core: Core,
    pub(super) source: Arc<dyn BoardSource>,
    pub(super) max_members: u64,
    writable: bool,
    flights: Flights<Result<Filled<BoardLoad>>>,
    /// Write-back's state (`None`: write-through or read-only).
    pub(super) write_back: Option<Arc<BoardWriteBack>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaderboard")
            .field("name", &self.core.keys.entity())
            .field("store", &self.core.store.name())
            .field("source", &self.source)
            .field("max_members", &self.max_members)
            .field("write_back", &self.write_back.is_some())
            .finish()
    }
}

/// Builds a [`Leaderboard`]; consuming, finish with [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct LeaderboardBuilder {
    common: CommonSettings,
    source: Option<Arc<dyn BoardSource>>,
    max_members: u64,
    read_only: bool,
    write_back: Option<WriteBackOptions>,
}

impl Leaderboard {
    /// Starts a builder.
    pub fn builder() -> LeaderboardBuilder {
        LeaderboardBuilder {
            common: CommonSettings::default(),
            source: None,
            max_members: DEFAULT_MAX_BOARD_MEMBERS,
            read_only: false,
            write_back: None,
        }
    }
}

impl LeaderboardBuilder {
    common_setters!("leaderboard");

    /// The source of the scores. Required.
    pub fn source(mut self, source: impl BoardSource) -> Self {
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

    /// Write back: writes are acknowledged once the store holds them
    /// durably and flushed to the source exactly once (see
    /// `board_write_back.rs`). Needs a durable Redis (as entity
    /// write-back: `appendonly yes` + `appendfsync always`, unless
    /// `require_durable = false`; never an `allkeys-*` policy, never the
    /// memory store) and a source that flushes ([`SqlBoardSource`](crate::SqlBoardSource)).
    /// Default: write-through.
    pub fn write_back(mut self, options: WriteBackOptions) -> Self {
        self.write_back = Some(options);
        self
    }

    /// Checks the settings and builds the board: a missing name, store or
    /// source, or a setting out of range, is [`Error::InvalidSetting`]; a
    /// store without collections [`Error::Config`]; write-back on a store
    /// that cannot prove durability [`Error::NotDurable`]. A write-back
    /// board starts its flusher (a tokio task): call
    /// [`close`](Leaderboard::close) to drain it.
    pub async fn build(self) -> Result<Leaderboard> {
        let required = self.common.required("leaderboard")?;
        let source = self
            .source
            .ok_or_else(|| Error::setting("source", "a leaderboard needs a source"))?;
        let core = self
            .common
            .into_core(required, ("max_members", self.max_members))?;
        let write_back = match self.write_back {
            Some(_) if self.read_only => {
                return Err(Error::setting(
                    "write_back",
                    "a read-only leaderboard cannot be written back",
                ))
            }
            Some(options) => Some(Arc::new(BoardWriteBack::new(&core, options).await?)),
            None => None,
        };
        let board = Leaderboard {
            inner: Arc::new(Inner {
                core,
                source,
                max_members: self.max_members,
                writable: !self.read_only,
                flights: Flights::new(),
                write_back,
            }),
        };
        if let Some(wb) = &board.inner.write_back {
            super::board_flush::start(&board, wb);
        }
        Ok(board)
    }
}

/// A read's question.
pub(crate) enum Ask {
    Top { offset: u64, limit: u64 },
    Member(String),
}

/// A read's answer.
pub(crate) enum Said {
    Top(BoardPage),
    Member(Option<Ranked>),
}

/// How a write changes the database.
#[derive(Clone, Copy)]
enum Op {
    Incr(f64),
    Set(f64),
    Remove,
}

impl Leaderboard {
    /// The board's name.
    pub fn name(&self) -> &str {
        self.inner.core.keys.entity()
    }

    /// The score column's type.
    pub fn score_kind(&self) -> ScoreKind {
        self.inner.source.score_kind()
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

    /// Up to `limit` (at most [`MAX_BOARD_PAGE`]) members of `owner` from
    /// `offset` (at most [`MAX_BOARD_OFFSET`]) in rank order, with their scores and ranks, and the count.
    pub async fn top(
        &self,
        owner: &str,
        offset: u64,
        limit: u64,
    ) -> Result<CollectionRead<BoardPage>> {
        if limit > MAX_BOARD_PAGE {
            return Err(Error::setting("limit", format!("at most {MAX_BOARD_PAGE}")));
        }
        if offset > MAX_BOARD_OFFSET {
            return Err(Error::setting(
                "offset",
                format!("at most {MAX_BOARD_OFFSET}"),
            ));
        }
        let owner = self.canonical_owner(owner)?;
        let read = self.read(&owner, Ask::Top { offset, limit }).await?;
        match read.value {
            Said::Top(page) => Ok(CollectionRead {
                value: page,
                outcome: read.outcome,
            }),
            Said::Member(_) => Err(internal()),
        }
    }

    /// `member`'s score and rank in `owner`'s board, `None` if absent.
    pub async fn rank(&self, owner: &str, member: &str) -> Result<CollectionRead<Option<Ranked>>> {
        let owner = self.canonical_owner(owner)?;
        let member = self.canonical_member(member)?;
        let read = self.read(&owner, Ask::Member(member)).await?;
        match read.value {
            Said::Member(m) => Ok(CollectionRead {
                value: m,
                outcome: read.outcome,
            }),
            Said::Top(_) => Err(internal()),
        }
    }

    /// `member`'s score, `None` if absent (as [`Leaderboard::rank`]).
    pub async fn score(&self, owner: &str, member: &str) -> Result<CollectionRead<Option<f64>>> {
        let read = self.rank(owner, member).await?;
        Ok(CollectionRead {
            value: read.value.map(|r| r.score),
            outcome: read.outcome,
        })
    }

    /// Invalidates every owner's cached board, on every instance (the
    /// store is shared): the next read of each loads. For a TRUNCATE or a
    /// gap in change notifications; it scans the store (`SCAN`), so it is
    /// not for the read or write path. Returns how many owners had keys.
    pub async fn purge(&self) -> Result<u64> {
        self.inner.core.purge().await
    }

    /// Deletes `owner`'s cached board (the next read loads it); a write of
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

    /// Adds `by` to `member`'s score in `owner`'s board (an absent member
    /// starts at `by`): the database first, then `ZADD` of the score it
    /// returned if the owner's write ticket is clean, else the cached
    /// board is deleted. The new score.
    pub async fn incr(&self, owner: &str, member: &str, by: f64) -> Result<f64> {
        self.check_score(member, "by", by)?;
        let score = self.write(owner, member, Op::Incr(by)).await?;
        score.ok_or_else(internal)
    }

    /// Sets `member`'s score (creating it), as [`Leaderboard::incr`]
    /// writes; the stored score.
    pub async fn set_score(&self, owner: &str, member: &str, score: f64) -> Result<f64> {
        self.check_score(member, "score", score)?;
        let score = self.write(owner, member, Op::Set(score)).await?;
        score.ok_or_else(internal)
    }

    /// Removes `member` from `owner`'s board, as [`Leaderboard::incr`]
    /// writes; whether it was there.
    pub async fn remove(&self, owner: &str, member: &str) -> Result<bool> {
        Ok(self.write(owner, member, Op::Remove).await?.is_some())
    }

    /// A score or delta the board's column takes: finite; on an integer
    /// column a whole number within ±2^53.
    pub(super) fn check_score(&self, member: &str, what: &str, v: f64) -> Result<()> {
        let reason = if !v.is_finite() {
            Some(format!("`{what}` must be a finite number"))
        } else if self.score_kind() == ScoreKind::Integer {
            if v.fract() != 0.0 {
                Some(format!(
                    "`{what}` must be an integer (the score column is one)"
                ))
            } else if v.abs() > MAX_EXACT_SCORE as f64 {
                Some(format!(
                    "`{what}` must be within ±2^53 (Redis scores are doubles)"
                ))
            } else {
                None
            }
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidRow {
                entity: self.name().to_owned(),
                id: member.chars().take(80).collect(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// `Some(score)` after an incr or set, `Some(0)` / `None` after a
    /// remove (whether it was there).
    async fn write(&self, owner: &str, member: &str, op: Op) -> Result<Option<f64>> {
        if !self.inner.writable {
            return Err(Error::ReadOnly {
                entity: self.name().to_owned(),
                reason: "the leaderboard is read-only".to_owned(),
            });
        }
        let owner = self.canonical_owner(owner)?;
        let member = self.canonical_member(member)?;
        if self.inner.write_back.is_some() {
            let op = match op {
                Op::Incr(by) => MemberOp::Add(by),
                Op::Set(score) => MemberOp::Set(score),
                Op::Remove => MemberOp::Remove,
            };
            return self.write_back_write(&owner, &member, op).await;
        }
        // Detached: the ticket taken must be ended even if the caller
        // stops waiting.
        let this = self.clone();
        tokio::spawn(async move { this.write_detached(owner, member, op).await })
            .await
            .map_err(|e| Error::Internal {
                what: format!("a leaderboard write panicked: {e}"),
            })?
    }

    async fn write_detached(&self, owner: String, member: String, op: Op) -> Result<Option<f64>> {
        let core = &self.inner.core;
        let colls = core.collections()?;
        let keys = core.owner_keys(&owner);
        let (seq, clean) = colls
            .collection_write_begin(&keys, core.settings.write_ttl)
            .await?;
        let source = &self.inner.source;
        let result = match op {
            Op::Incr(by) => source.incr(&owner, &member, by).await.map(Some),
            Op::Set(score) => source.set_score(&owner, &member, score).await.map(Some),
            Op::Remove => source
                .remove(&owner, &member)
                .await
                .map(|was| was.then_some(0.0)),
        };
        let end = match &result {
            Ok(Some(score)) if !matches!(op, Op::Remove) => BoardWriteEnd::Set {
                member,
                score: *score,
                max: self.inner.max_members,
            },
            Ok(_) => BoardWriteEnd::Remove { member },
            Err(Error::Source { .. } | Error::InvalidId { .. } | Error::InvalidRow { .. }) => {
                BoardWriteEnd::Abort
            }
            Err(_) => BoardWriteEnd::Delete,
        };
        let applied = colls.board_write_end(&keys, seq, clean, &end).await;
        match applied {
            Ok(true) => Counters::bump(&core.counters.writes_applied),
            Ok(false) => Counters::bump(&core.counters.writes_deleted),
            Err(ref e) => {
                tracing::warn!(board = self.name(), error = %e, "could not end a leaderboard write")
            }
        }
        let out = result?;
        applied?;
        Ok(out)
    }
}

#[async_trait::async_trait]
impl super::board_flush::Flushed for Leaderboard {
    const WHAT: &'static str = "leaderboard";
    type Inner = Inner;

    fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<Leaderboard> {
        weak.upgrade().map(|inner| Leaderboard { inner })
    }

    fn name(&self) -> &str {
        Leaderboard::name(self)
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    fn write_back_state(&self) -> Result<&Arc<BoardWriteBack>> {
        Leaderboard::write_back_state(self)
    }

    async fn prepare(&self, fence: &str, shards: u16) -> Result<()> {
        self.inner.source.prepare_write_back(fence, shards).await
    }

    async fn commit(&self, batch: BoardBatch<'_>) -> Result<BoardFlushed> {
        self.inner.source.flush(batch).await
    }
}

impl Leaderboard {
    /// Write-back's state ([`Error::Config`] on a board that writes through).
    pub(super) fn write_back_state(&self) -> Result<&Arc<BoardWriteBack>> {
        self.inner.write_back.as_ref().ok_or_else(|| {
            Error::Config(format!("leaderboard `{}` is not written back", self.name()))
        })
    }

    /// Flushes everything pending now (whatever `max_delay`), until no
    /// operation is left in a shard this instance can take: for tests and
    /// for a clean shutdown. The last round's error, if any.
    pub async fn flush(&self) -> Result<()> {
        super::board_flush::flush(self).await
    }

    /// Stops the flusher, waits for its round, and flushes what is
    /// pending; writes are refused from then on ([`Error::Closed`]). A
    /// board that writes through has nothing to close.
    pub async fn close(&self) -> Result<()> {
        super::board_flush::close(self).await
    }
}

fn said_from_cache(ask: &Ask, count: u64, answer: BoardAnswer) -> Said {
    match (ask, answer) {
        (Ask::Member(m), BoardAnswer::Member(found)) => {
            Said::Member(found.map(|(score, rank)| Ranked {
                member: m.clone(),
                score,
                rank: rank + 1,
            }))
        }
        (Ask::Top { offset, .. }, BoardAnswer::Top(items)) => {
            Said::Top(page(count, *offset, items))
        }
        (Ask::Member(_), BoardAnswer::Top(_)) => Said::Member(None),
        (Ask::Top { offset, .. }, BoardAnswer::Member(_)) => {
            Said::Top(page(count, *offset, Vec::new()))
        }
    }
}

fn said_from_members(ask: &Ask, members: &[(String, f64)]) -> Said {
    match ask {
        Ask::Member(m) => Said::Member(members.iter().position(|(x, _)| x == m).map(|i| Ranked {
            member: m.clone(),
            score: members[i].1,
            rank: i as u64 + 1,
        })),
        Ask::Top { offset, limit } => {
            let start = usize::try_from(*offset).unwrap_or(usize::MAX);
            let items = members
                .iter()
                .skip(start)
                .take(usize::try_from(*limit).unwrap_or(usize::MAX))
                .cloned()
                .collect();
            Said::Top(page(members.len() as u64, *offset, items))
        }
    }
}

/// A page from `(member, score)` pairs in rank order starting at `offset`.
fn page(count: u64, offset: u64, items: Vec<(String, f64)>) -> BoardPage {
    BoardPage {
        count,
        items: items
            .into_iter()
            .zip(offset.saturating_add(1)..)
            .map(|((member, score), rank)| Ranked {
                member,
                score,
                rank,
            })
            .collect(),
    }
}

fn internal() -> Error {
    Error::Internal {
        what: "a leaderboard read answered another question".to_owned(),
    }
}

#[async_trait::async_trait]
impl Kind for Leaderboard {
    const WHAT: &'static str = "leaderboard";
    type Ask = Ask;
    type Said = Said;
    type Answer = BoardAnswer;
    type Load = BoardLoad;

    fn core(&self) -> &Core {
        &self.inner.core
    }

    fn flights(&self) -> &Flights<Result<Filled<BoardLoad>>> {
        &self.inner.flights
    }

    async fn read_cached(&self, keys: &CollectionKeys, ask: &Ask) -> Result<Cached<BoardAnswer>> {
        let query = match ask {
            Ask::Top { offset, limit } => BoardQuery::Top {
                offset: *offset,
                limit: *limit,
            },
            Ask::Member(m) => BoardQuery::Member(m.clone()),
        };
        let read = self
            .inner
            .core
            .collections()?
            .board_read(keys, &query)
            .await?;
        Ok(match read {
            BoardRead::Miss => Cached::Miss,
            BoardRead::Hit { meta, answer } => Cached::Hit { meta, answer },
        })
    }

    fn said_from_cache(&self, ask: &Ask, meta: CollectionMeta, answer: BoardAnswer) -> Said {
        said_from_cache(ask, meta.count, answer)
    }

    fn said_from_load(&self, ask: &Ask, load: &BoardLoad) -> FromLoad<Said> {
        match load {
            BoardLoad::Members(members) => FromLoad::Said(said_from_members(ask, members)),
            BoardLoad::TooMany(count) => FromLoad::Database(Some(*count)),
        }
    }

    async fn said_from_source(&self, owner: &str, ask: &Ask, count: Option<u64>) -> Result<Said> {
        if self.inner.write_back.is_some() {
            return self.write_back_from_source(owner, ask).await;
        }
        let source = &self.inner.source;
        let value = match ask {
            Ask::Member(m) => {
                Said::Member(source.member(owner, m).await?.map(|(score, rank)| Ranked {
                    member: m.clone(),
                    score,
                    rank: rank + 1,
                }))
            }
            Ask::Top { offset, limit } => {
                let items = if *limit == 0 {
                    Vec::new()
                } else {
                    source.top(owner, *offset, *limit).await?
                };
                let count = match count {
                    Some(n) => n,
                    None => source.count(owner).await?,
                };
                Said::Top(page(count, *offset, items))
            }
        };
        Ok(value)
    }

    async fn load_source(&self, owner: &str) -> Result<BoardLoad> {
        if self.inner.write_back.is_some() {
            return self.write_back_load(owner).await;
        }
        self.inner.source.load(owner, self.inner.max_members).await
    }

    fn joined_loads_may_be_old(&self) -> bool {
        self.inner.write_back.is_some()
    }

    async fn fill(&self, keys: &CollectionKeys, token: &str, load: &BoardLoad) -> Result<bool> {
        let core = &self.inner.core;
        let colls = core.collections()?;
        let (members, complete, count): (Vec<BoardScore<'_>>, bool, u64) = match load {
            BoardLoad::Members(members) => (
                members
                    .iter()
                    .map(|(member, score)| BoardScore {
                        member,
                        score: *score,
                    })
                    .collect(),
                true,
                members.len() as u64,
            ),
            BoardLoad::TooMany(count) => (Vec::new(), false, *count),
        };
        let meta = core.fill_meta(complete, count);
        let ttl = core.settings.kept();
        let members = members.as_slice();
        fill_chunks(
            members.len(),
            BOARD_FILL_CHUNK,
            meta,
            move |range, first, last| async move {
                colls
                    .board_fill_chunk(
                        keys,
                        &BoardChunk {
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
