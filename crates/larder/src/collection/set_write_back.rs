//! Write-back sets: adds and removals acknowledged once the store holds
//! them durably, flushed to the database in batches (see
//! `store/board_deltas.rs` for the per-member record a set shares with
//! leaderboards, and `board_flush.rs` for the flusher both use).
//!
//! Why a module of its own: a write-through set changes the database
//! first and the cache after; a write-back set changes the cache and a
//! durable per-member operation in one script and leaves the database to
//! the flusher. So its writes, its loads (which must lay the operations
//! the database lacks over what they loaded) and its database answers (an
//! owner above the cap) differ, while its reads of a cached set are the
//! same.
//!
//! # Behavior
//! - `add`, `remove`: one script changes the cached set (when it is
//!   cached whole), records the member's operation (the last one wins:
//!   add then remove = remove) and voids the owner's read lease; an owner
//!   whose set is not cached gets no one-member set. Acknowledged then.
//! - **Reads never go back in time.** A load waits while the shard's
//!   claimed record holds its owner and reads the owner's pending state
//!   before and after its query; a claim or a clear in between makes it
//!   load again, so the operations it lays over the loaded members are
//!   exactly those the database lacks. A write after that voids the
//!   lease, and so does every clear: a fill from before either is
//!   refused.
//! - An owner above the cap is answered from the database with its
//!   pending operations merged in (those of the state read before the
//!   query), under the same before-and-after check of claims and clears:
//!   membership from the pending operation if there is one; the count
//!   adds pending adds the database lacks and drops pending removals of
//!   members it has (one query tells which pending members it has); a page
//!   reads `limit + 1 + P` members after the cursor (P pending members)
//!   and lays the pending ones over.
//! - The store unavailable: reads and writes fail with
//!   [`Error::StoreUnavailable`](crate::Error::StoreUnavailable): the
//!   newest members live there.

use super::board_write_back::{BoardBatch, BoardFlushed, BoardWriteBack};
use super::set::{page, Ask, Inner, Said, SetCache};
use super::{Core, SetLoad, SetSource};
use crate::error::{Error, Result};
use crate::store::{MemberOp, MemberOps, Scored, SetWrite, SetWritten};
use crate::write_back::{Counters, WriteBackStats};
use std::sync::{Arc, Weak};

impl SetCache {
    /// Write-back's state ([`Error::Config`] on a set that writes through).
    pub(super) fn write_back_state(&self) -> Result<&Arc<BoardWriteBack>> {
        self.inner
            .write_back
            .as_ref()
            .ok_or_else(|| Error::Config(format!("set `{}` is not written back", self.name())))
    }

    /// A write under write-back (see the module docs): whether it changed
    /// the cached set, `true` when the set is not cached (unknown until
    /// read).
    pub(super) async fn write_back_write(
        &self,
        owner: &str,
        member: &Scored,
        add: bool,
    ) -> Result<bool> {
        let wb = self.write_back_state()?;
        wb.admit(self.name())?;
        let core = &self.inner.core;
        let write = SetWrite {
            member,
            add,
            exact: self.exact(member),
            max_members: self.inner.max_members,
            now_ms: core.now_ms(),
        };
        let written = wb
            .log
            .set_op(&core.owner_keys(owner), owner, &write)
            .await?;
        Counters::add(&wb.counters.acknowledged, 1);
        Ok(match written {
            SetWritten::Cached { was_there } => was_there != add,
            SetWritten::Uncached => true,
        })
    }

    /// `members` (set order) with `ops` laid over, in set order.
    fn lay_over(&self, members: &[String], ops: &MemberOps) -> Vec<String> {
        if ops.is_empty() {
            return members.to_vec();
        }
        let mut out: Vec<String> = members
            .iter()
            .filter(|m| !ops.contains_key(*m))
            .cloned()
            .collect();
        out.extend(
            ops.iter()
                .filter(|(_, op)| **op != MemberOp::Remove)
                .map(|(m, _)| m.clone()),
        );
        self.sort(&mut out);
        out
    }

    /// Sorts members in the set's order.
    fn sort(&self, members: &mut [String]) {
        members.sort_by_cached_key(|m| {
            let s = self.scored(m.clone());
            (s.score, s.member)
        });
    }

    /// A load under write-back: the database's members with the pending
    /// operations laid over (see the module docs).
    pub(super) async fn write_back_load(&self, owner: &str) -> Result<SetLoad> {
        let wb = self.write_back_state()?;
        let source = &self.inner.source;
        let max = self.inner.max_members;
        let (load, ops) = wb
            .consistent(&self.inner.core, owner, false, |_| async move {
                source.load(owner, max).await
            })
            .await?;
        Ok(match load {
            SetLoad::Members(members) => {
                let merged = self.lay_over(&members, &ops);
                if merged.len() as u64 > max {
                    SetLoad::TooMany(merged.len() as u64)
                } else {
                    SetLoad::Members(merged)
                }
            }
            // Answered from the database, pending operations merged then.
            too_many => too_many,
        })
    }

    /// A read answered from the database under write-back, the pending
    /// operations merged in (see the module docs).
    pub(super) async fn write_back_from_source(&self, owner: &str, ask: &Ask) -> Result<Said> {
        let wb = self.write_back_state()?;
        // The answer is the database's with the first state's operations
        // merged: right at that state's instant, which follows every write
        // acknowledged before this read began. Operations recorded after it
        // do not change the database (a claim or a clear does, and makes
        // `consistent` run the query again), so a busy owner's stream of
        // new members does not keep the answer from settling.
        let (said, _) = wb
            .consistent(&self.inner.core, owner, false, |ops| async move {
                self.merged_answer(owner, ask, &ops).await
            })
            .await?;
        Ok(said)
    }

    /// The database's answer to `ask` with `ops` (the owner's operations
    /// the database lacks) merged in.
    async fn merged_answer(&self, owner: &str, ask: &Ask, ops: &MemberOps) -> Result<Said> {
        let source: &dyn SetSource = self.inner.source.as_ref();
        if let Ask::Contains(m) = ask {
            return Ok(Said::Contains(match ops.get(&m.member) {
                Some(MemberOp::Remove) => false,
                Some(_) => true,
                None => source.contains(owner, &m.member).await?,
            }));
        }
        let mut count = source.count(owner).await?;
        let pending: Vec<&str> = ops.keys().map(String::as_str).collect();
        let stored: std::collections::HashSet<String> =
            source.present(owner, &pending).await?.into_iter().collect();
        for (member, op) in ops {
            match (op, stored.contains(member)) {
                (MemberOp::Remove, true) => count = count.saturating_sub(1),
                (MemberOp::Remove, false) | (_, true) => {}
                (_, false) => count += 1,
            }
        }
        let Ask::Page { after, limit } = ask else {
            return Ok(Said::Count(count));
        };
        if *limit == 0 {
            return Ok(Said::Page(page(count, Vec::new(), 0)));
        }
        let after_key = after.as_ref().map(|a| (a.score, a.member.clone()));
        let fetch = limit.saturating_add(1).saturating_add(ops.len());
        let mut members = source
            .page(owner, after.as_ref().map(|a| a.member.as_str()), fetch)
            .await?;
        members.retain(|m| !ops.contains_key(m));
        members.extend(
            ops.iter()
                .filter(|(_, op)| **op != MemberOp::Remove)
                .map(|(m, _)| m.clone())
                .filter(|m| {
                    let s = self.scored(m.clone());
                    after_key.as_ref().is_none_or(|a| (s.score, s.member) > *a)
                }),
        );
        self.sort(&mut members);
        members.truncate(limit.saturating_add(1));
        Ok(Said::Page(page(count, members, *limit)))
    }

    /// Write-back counters (`None`: the set writes through).
    pub fn write_back_stats(&self) -> Option<WriteBackStats> {
        self.inner.write_back.as_ref().map(|wb| wb.stats())
    }

    /// Whether writes are written back (acknowledged before the database
    /// has them).
    pub fn is_write_back(&self) -> bool {
        self.inner.write_back.is_some()
    }

    /// The dead letters of a write-back set: member operations the
    /// database refused, with why (empty when the set writes through).
    pub async fn dead_letters(&self) -> Result<Vec<crate::store::BoardDeadLetter>> {
        match &self.inner.write_back {
            Some(wb) => wb.dead_letters().await,
            None => Ok(Vec::new()),
        }
    }

    /// Flushes everything pending now (whatever `max_delay`), until no
    /// operation is left in a shard this instance can take: for tests and
    /// for a clean shutdown. The last round's error, if any.
    pub async fn flush(&self) -> Result<()> {
        super::board_flush::flush(self).await
    }

    /// Stops the flusher, waits for its round, and flushes what is
    /// pending; writes are refused from then on
    /// ([`Error::Closed`](crate::Error::Closed)). A set that writes
    /// through has nothing to close.
    pub async fn close(&self) -> Result<()> {
        super::board_flush::close(self).await
    }
}

#[async_trait::async_trait]
impl super::board_flush::Flushed for SetCache {
    const WHAT: &'static str = "set";
    type Inner = Inner;

    fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    fn upgrade(weak: &Weak<Inner>) -> Option<SetCache> {
        weak.upgrade().map(|inner| SetCache { inner })
    }

    fn name(&self) -> &str {
        SetCache::name(self)
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    fn write_back_state(&self) -> Result<&Arc<BoardWriteBack>> {
        SetCache::write_back_state(self)
    }

    async fn prepare(&self, fence: &str, shards: u16) -> Result<()> {
        self.inner.source.prepare_write_back(fence, shards).await
    }

    async fn commit(&self, batch: BoardBatch<'_>) -> Result<BoardFlushed> {
        self.inner.source.flush(batch).await
    }
}
