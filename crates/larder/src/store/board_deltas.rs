//! Write-back leaderboards and sets: the store side of member operations
//! (increments, absolute scores, removals; a set's adds and removals)
//! acknowledged before the database has them.
//!
//! Why operations and not scores: an increment acknowledged in the store
//! must reach the database exactly once, whatever crashes in between, and
//! many instances increment one member at once. So the store keeps, per
//! owner and member, the *one operation* that sums up every write not yet
//! flushed, and the flusher applies it in SQL (`points = points + delta`,
//! an upsert of an absolute score, a `DELETE`), never writing a score read
//! from the cache. Operations compose as the writes do: an increment after
//! an absolute score is an absolute score, an increment after a removal
//! creates the member anew (an absolute score of the increment), a score
//! or a removal replaces whatever was pending. A write-back *set* keeps
//! the same record: an add is the absolute score of the member in the
//! set's sorted set (`=<score>`), a removal a removal, the last one wins
//! (add then remove = remove); its write step is a script of its own
//! (`redis_set_ops.rs`), the claim, clear and dead-letter steps below do
//! not look inside an operation and serve both.
//!
//! | key | what |
//! |---|---|
//! | `…:{b:s}:bo:<owner>` | the owner's unclaimed operations: a hash, member → operation (`+<delta>`, `=<score>`, `-`) |
//! | `…:{b:s}:bq` | the shard's owners with unclaimed operations, scored by when the first arrived |
//! | `…:{b:s}:bb` | the shard's claimed record: `b` = its random batch id, `o:<owner>` = that owner's operations (JSON, member → operation); immutable under its id |
//! | `…:{b:s}:bn` | how many claimed records the shard has cleared (never reset) |
//! | `…:{b:s}:bx` | dead letters: `<owner>\n<member>#<batch>` → why and the operation (JSON) |
//! | `…:{b:s}:f`, `…:{b:s}:e` | the shard's flush lease and epoch (as for entities) |
//!
//! Exactly once rests on four steps, each one script (see
//! `counters.rs`, whose design this follows):
//! - *write*: the cached sorted set (when the owner's board is cached
//!   whole) and the unclaimed operation change together, the owner's read
//!   lease is voided, then the write is acknowledged. An owner whose board
//!   is not cached gets no partial board;
//! - *claim*: the flusher moves the unclaimed operations of some owners
//!   into the claimed record under a new random batch id — at most one
//!   per shard; later writes go to fresh unclaimed operations;
//! - *commit* (in the database): the fence step records the batch id and
//!   refuses it a second time, so a replay after a crash between commit
//!   and clear commits nothing;
//! - *clear*: checked by batch id, voids the read lease of every owner in
//!   the record (a load from before the commit cannot fill afterwards),
//!   drops a cached count of an owner above the cap, leaves cached boards
//!   as they are (they hold every operation already) and counts the clear
//!   in `bn`.
//!
//! A load waits while the claimed record holds its owner and reads the
//! owner's state (`bo`, the claimed record, `bn`) before and after its
//! query: a claim or a clear in between makes it load again, so the
//! operations it lays over the loaded members are exactly those the
//! database lacks.

use std::collections::BTreeMap;

/// One member's pending operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemberOp {
    /// Add this delta (an absent member is created with it).
    Add(f64),
    /// Set this score (creating the member).
    Set(f64),
    /// Remove the member.
    Remove,
}

impl MemberOp {
    /// Parses the stored form (`+<n>`, `=<n>`, `-`).
    pub(crate) fn parse(text: &str) -> Option<MemberOp> {
        let (kind, rest) = text.split_at_checked(1)?;
        match kind {
            "+" => rest
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .map(MemberOp::Add),
            "=" => rest
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .map(MemberOp::Set),
            "-" if rest.is_empty() => Some(MemberOp::Remove),
            _ => None,
        }
    }

    /// The member's score after this operation, from its score before
    /// (`None`: absent); `None`: absent after.
    pub fn apply(self, before: Option<f64>) -> Option<f64> {
        match self {
            MemberOp::Add(d) => Some(before.unwrap_or(0.0) + d),
            MemberOp::Set(v) => Some(v),
            MemberOp::Remove => None,
        }
    }
}

/// An owner's pending operations, by member.
pub type MemberOps = BTreeMap<String, MemberOp>;

/// The keys of one owner's write-back state, derived from any key of its
/// shard (all share the `<prefix>:{<name>:<shard>}:` head).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BoardOpKeys {
    /// The owner's unclaimed operations.
    pub(crate) ops: String,
    /// The shard's owners with unclaimed operations.
    pub(crate) queue: String,
    /// The shard's claimed record.
    pub(crate) claimed: String,
    /// The shard's count of cleared claimed records.
    pub(crate) clears: String,
    /// The shard's dead letters.
    pub(crate) dead: String,
}

impl BoardOpKeys {
    /// The keys of `owner` from `shard_key`, any key of its shard.
    pub(crate) fn of(shard_key: &str, owner: &str) -> Self {
        let head = super::counters::head(shard_key);
        BoardOpKeys {
            ops: format!("{head}bo:{owner}"),
            queue: format!("{head}bq"),
            claimed: format!("{head}bb"),
            clears: format!("{head}bn"),
            dead: format!("{head}bx"),
        }
    }
}

/// One write to record (see [`BoardLog::board_op`]).
#[derive(Debug, Clone)]
pub struct BoardWrite<'a> {
    /// The member.
    pub member: &'a str,
    /// The operation (for an increment, `Add(by)`).
    pub op: MemberOp,
    /// Integer scores: every score and pending sum must stay within ±2^53.
    pub integer: bool,
    /// The cap of a cached board: a member that would take it past is not
    /// added; the board stops being cached.
    pub max_members: u64,
    /// Now, ms since the epoch (the queue's score).
    pub now_ms: u64,
    /// Only when the board is cached: otherwise nothing is recorded.
    pub only_cached: bool,
}

/// What recording a write did.
#[derive(Debug, Clone, PartialEq)]
pub enum BoardWritten {
    /// Recorded, and applied to the cached board: the member's score now
    /// (`None`: absent), and for a removal whether it was there.
    Cached {
        /// The member's score after the write.
        score: Option<f64>,
        /// Whether the member was in the cached board before.
        was_there: bool,
    },
    /// Recorded; the board is not cached (the lease was voided).
    Uncached,
    /// The board is not cached and `only_cached` was asked: nothing recorded.
    NotCached,
    /// A score or a pending sum would leave ±2^53: nothing recorded; it.
    OutOfRange(f64),
}

/// An owner's write-back state, read in one step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BoardOpState {
    /// The unclaimed operations.
    pub ops: MemberOps,
    /// Whether the shard's claimed record holds the owner.
    pub claimed: bool,
    /// How many claimed records the shard has cleared.
    pub clears: u64,
}

/// A shard's claimed record.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedOps {
    /// Its random batch id.
    pub batch: String,
    /// The operations, by owner.
    pub owners: Vec<(String, MemberOps)>,
}

impl ClaimedOps {
    /// How many member operations it holds.
    pub fn len(&self) -> usize {
        self.owners.iter().map(|(_, ops)| ops.len()).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One write of a write-back set to record (see [`BoardLog::set_op`]):
/// an add is recorded as the absolute score of the member in the set's
/// sorted set (`=<score>`), a removal as a removal (`-`).
#[derive(Debug, Clone)]
pub struct SetWrite<'a> {
    /// The member and its score in the cached sorted set.
    pub member: &'a super::Scored,
    /// Add (`true`) or remove.
    pub add: bool,
    /// Whether the score holds the member exactly (an integer member
    /// beyond ±2^53 does not): else the cached set is dropped.
    pub exact: bool,
    /// The cap of a cached set: an add that would take it past drops it.
    pub max_members: u64,
    /// Now, ms since the epoch (the queue's score).
    pub now_ms: u64,
}

/// What recording a set write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetWritten {
    /// Recorded and applied to the cached set; whether the member was in
    /// it before.
    Cached {
        /// Whether the member was in the cached set before.
        was_there: bool,
    },
    /// Recorded; the set is not cached (the owner's lease was voided).
    Uncached,
}

/// A board dead letter as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardDeadLetter {
    /// The owner.
    pub owner: String,
    /// The member.
    pub member: String,
    /// The batch it was refused in.
    pub batch: String,
    /// Why, as the JSON document stored with it.
    pub why: String,
    /// The operation that was not applied.
    pub op: Option<MemberOp>,
}

/// The store operations of write-back leaderboards; each is atomic.
/// Only [`RedisStore`](super::RedisStore) implements it (write-back needs
/// a durable store).
#[async_trait::async_trait]
pub trait BoardLog: std::fmt::Debug + Send + Sync + 'static {
    /// Records one member write of the owner whose collection keys are
    /// `keys` (see [`BoardWrite`]).
    async fn board_op(
        &self,
        keys: &super::CollectionKeys,
        owner: &str,
        write: &BoardWrite<'_>,
    ) -> crate::Result<BoardWritten>;

    /// Records one member write of a write-back set in one step: the
    /// cached set (when cached whole) and the unclaimed operation change
    /// together and the owner's read lease is voided (see [`SetWrite`]).
    async fn set_op(
        &self,
        keys: &super::CollectionKeys,
        owner: &str,
        write: &SetWrite<'_>,
    ) -> crate::Result<SetWritten>;

    /// The owner's unclaimed operations, whether the claimed record holds
    /// it, and the shard's count of clears, in one step.
    async fn board_state(
        &self,
        keys: &super::CollectionKeys,
        owner: &str,
    ) -> crate::Result<BoardOpState>;

    /// Claims the unclaimed operations of up to `max` owners of the shard
    /// that arrived at or before `due_ms` under a new random batch id, or
    /// answers the claimed record left over — only while `token` holds the
    /// flush lease (`None`: it does not; `Some(None)`: nothing to claim).
    async fn board_claim(
        &self,
        shard: &super::ShardKeys,
        token: &str,
        max: usize,
        due_ms: u64,
    ) -> crate::Result<Option<Option<ClaimedOps>>>;

    /// Moves `member`'s operation of `owner` out of the claimed record
    /// `batch.0` to the dead letters (`why`, JSON), deletes the owner's
    /// cached board, and claims the rest again under `batch.1`. `None`:
    /// the record is not `batch.0` any more; `Some(false)`: nothing left.
    async fn board_reclaim(
        &self,
        shard: &super::ShardKeys,
        batch: (&str, &str),
        (owner, keys): (&str, &super::CollectionKeys),
        member: &str,
        why: &str,
    ) -> crate::Result<Option<bool>>;

    /// Clears the committed claimed record `batch` (checked by its id):
    /// voids the read lease of each owner (`keys`) and drops the cached
    /// count of an owner above the cap. Whether it was still there.
    async fn board_clear(
        &self,
        shard: &super::ShardKeys,
        batch: &str,
        keys: &[super::CollectionKeys],
    ) -> crate::Result<bool>;

    /// The backlog of each shard, in order: owners with pending operations
    /// (a claimed record left over counts as one, and is due at once).
    async fn board_backlog(
        &self,
        shards: &[super::ShardKeys],
    ) -> crate::Result<Vec<super::ShardBacklog>>;

    /// The dead letters of the given shards.
    async fn board_dead_letters(
        &self,
        shards: &[super::ShardKeys],
    ) -> crate::Result<Vec<BoardDeadLetter>>;
}
