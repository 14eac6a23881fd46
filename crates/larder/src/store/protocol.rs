//! The store protocol: the atomic operations the cache is built from (take
//! a lease, fill only while holding it, write tickets, invalidations,
//! generations, the write-back log) and the types they speak.
//!
//! Private to larder: [`Protocol`] is the sealed supertrait of
//! [`Store`](super::Store). Its items are `pub` only so that they may
//! appear in that public trait's bounds; no path outside the crate
//! reaches them.

use super::DirtyLog;
use crate::error::Result;
use crate::key::TextBatch;
use async_trait::async_trait;
use bytes::Bytes;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// A lease request: take the lease of one key, unless (`if_absent`) the
/// value is already there.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The value key.
    pub value_key: String,
    /// The lease key (same hash slot as the value key).
    pub lease_key: String,
    /// The write-back dirty record (same hash slot): a pending write is
    /// the answer, and no lease is taken over it.
    pub dirty_key: String,
    /// The random token that identifies this holder.
    pub token: String,
    /// How long the lease holds without a fill.
    pub ttl: Duration,
    /// `true`: a present value is returned instead of taking the lease (a
    /// miss). `false`: take the lease even though a value is there (a refresh).
    pub if_absent: bool,
    /// The key's waiter flag (same hash slot): set by a caller waiting for
    /// another holder's fill; the fill announces itself if it finds it.
    pub waiter_key: String,
    /// The channel a fill is announced on (the value key is the message).
    pub fill_channel: Arc<str>,
}

/// What [`Protocol::acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The value is present (only with `if_absent`); no lease was taken.
    Value(Bytes),
    /// The lease is ours. Without `if_absent` (a refresh), `current` is the
    /// value present when the lease was taken, so the caller can see that
    /// someone else refreshed it in the meantime.
    Lease {
        /// The value at the moment the lease was taken (refreshes only).
        current: Option<Bytes>,
    },
    /// Another holder has the lease.
    Held,
    /// A write-back write of the key is pending: its payload (codec bytes;
    /// `None` for a pending delete) is the answer. No lease was taken.
    Dirty(Option<Bytes>),
}

/// A conditional fill: write the value only while `token` holds the lease.
#[derive(Debug, Clone)]
pub struct Fill {
    /// The value key.
    pub value_key: String,
    /// The lease key.
    pub lease_key: String,
    /// The write-back dirty record: a fill never overwrites a pending write.
    pub dirty_key: String,
    /// The token the lease must still hold.
    pub token: String,
    /// The envelope bytes.
    pub value: Vec<u8>,
    /// How long Redis keeps the key.
    pub ttl: Duration,
    /// The key's waiter flag: when present, the fill deletes it and
    /// publishes the value key on `fill_channel`.
    pub waiter_key: String,
    /// The channel fills are announced on.
    pub fill_channel: Arc<str>,
}

/// The keys of one id that a write touches (all in one hash slot).
#[derive(Debug, Clone)]
pub struct WriteKeys {
    /// The value key.
    pub value_key: String,
    /// The read lease key.
    pub lease_key: String,
    /// The write bookkeeping key: a sequence and a count of writes in flight.
    pub write_key: String,
}

/// A write's ticket, from [`Protocol::write_begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteTicket {
    /// The key's write sequence number taken by this write.
    pub seq: u64,
    /// Whether no other write of the key was in flight when this one began.
    pub clean: bool,
}

/// How a write through the cache ends.
#[derive(Debug, Clone)]
pub enum WriteEnd {
    /// The source stored the row: cache it, if no other write to the key
    /// began since this one and none is still in flight; else delete it.
    Set {
        /// The envelope bytes.
        value: Vec<u8>,
        /// How long the store keeps the key.
        ttl: Duration,
    },
    /// Delete the cached value (write-around, deletes, ambiguous failures).
    Delete,
    /// The source refused the write: leave the cached value as it is.
    Abort,
}

/// The protocol operations every store implements besides [`Store`]'s plain
/// ones; the cache's correctness rests on the atomicity each states.
#[async_trait]
pub trait Protocol: Debug + Send + Sync + 'static {
    /// Reads many keys in one round trip, the answer in `keys` order: the
    /// batch read's [`Store::get_many`](super::Store::get_many), over keys
    /// held in one buffer.
    async fn get_values(&self, keys: &TextBatch) -> Result<Vec<Option<Bytes>>>;

    /// Atomically: a pending write-back write is the answer
    /// ([`Acquired::Dirty`]); else (with `if_absent`) returns the value if
    /// present, else takes the lease if it is free (without `if_absent`,
    /// also returning the value present then).
    async fn acquire(&self, request: &LeaseRequest) -> Result<Acquired>;

    /// [`Protocol::acquire`] for many keys, pipelined; answers in request order.
    async fn acquire_many(&self, requests: &[LeaseRequest]) -> Result<Vec<Acquired>>;

    /// Atomically: writes the value and releases the lease if the lease still
    /// holds the fill's token and no write-back write of the key is pending;
    /// otherwise changes nothing (but a pending write voids the lease).
    /// Returns whether it wrote.
    async fn fill(&self, fill: &Fill) -> Result<bool>;

    /// [`Protocol::fill`] for many keys, pipelined; answers in order.
    async fn fill_many(&self, fills: &[Fill]) -> Result<Vec<bool>>;

    /// Atomically releases the lease if it still holds `token`.
    async fn release(&self, lease_key: &str, token: &str) -> Result<()>;

    /// Raises the waiter flag of `request`'s key (for as long as a lease
    /// lives), so that the fill announces itself on the request's fill
    /// channel. `Ok(false)`: this store announces no fills (waiters poll).
    /// Default: `Ok(false)`.
    async fn flag_waiter(&self, request: &LeaseRequest) -> Result<bool> {
        let _ = request;
        Ok(false)
    }

    /// Whether this store's fills announce themselves to flagged waiters
    /// ([`Protocol::flag_waiter`]). Default: `false`.
    fn announces_fills(&self) -> bool {
        false
    }

    /// Atomically: voids the read lease, bumps the key's write sequence and
    /// its count of writes in flight (both expire after `ttl` without writes
    /// or [`Protocol::write_renew`]), and returns this write's ticket.
    ///
    /// Sequences never repeat for a key: bookkeeping created anew (the old
    /// one expired) starts above every sequence handed out before, and
    /// remembers where it started, so [`Protocol::write_end`] can tell a
    /// ticket of an earlier, expired bookkeeping.
    async fn write_begin(&self, keys: &WriteKeys, ttl: Duration) -> Result<WriteTicket>;

    /// Keeps the key's write bookkeeping alive for at least `ttl` more, if
    /// it still exists (a write still running calls it, so that a write
    /// slower than the ticket's life does not let later writes look clean).
    async fn write_renew(&self, keys: &WriteKeys, ttl: Duration) -> Result<()>;

    /// Atomically ends the write of `ticket`: one write fewer in flight, the
    /// read lease voided again, then `end` applied. A `Set` lands only if
    /// the write overlapped no other write and no invalidation of the key —
    /// none was in flight when it began (`clean`), none began and no
    /// [`Protocol::invalidate`] ran since (`seq` still the newest) — since
    /// only then is its row surely the last one committed and still
    /// wanted; otherwise the value is deleted. A ticket whose bookkeeping
    /// expired while it ran counts as overlapped: its end deletes the
    /// value and, if a later write made new bookkeeping, bumps its
    /// sequence so that write cannot set either. Returns whether a `Set`
    /// landed.
    async fn write_end(
        &self,
        keys: &WriteKeys,
        ticket: WriteTicket,
        end: &WriteEnd,
    ) -> Result<bool>;

    /// Atomically: deletes the value and its lease (an invalidation) and,
    /// if a write of the key is in flight (its bookkeeping exists), bumps
    /// the key's write sequence, so that write's end deletes rather than
    /// sets a row older than what the invalidation announced.
    async fn invalidate(&self, keys: &WriteKeys) -> Result<()>;

    /// The write-back log of this store, if it can hold one (Redis only).
    fn dirty_log(&self) -> Option<Arc<dyn DirtyLog>> {
        None
    }

    /// The write-back log of leaderboards, if this store can hold one
    /// (Redis only; see `board_deltas.rs`).
    fn board_log(&self) -> Option<Arc<dyn super::BoardLog>> {
        None
    }

    /// Records `layout` under `meta_key` if nothing is recorded yet, and
    /// returns what is recorded (the given layout, or an older one).
    async fn record_layout(&self, meta_key: &str, layout: &str) -> Result<String>;

    /// Publishes `message` on the pub/sub `channel` (invalidations for the
    /// near caches of every instance). Default: nobody can listen, so it
    /// does nothing.
    async fn publish(&self, channel: &str, message: &[u8]) -> Result<()> {
        let _ = (channel, message);
        Ok(())
    }

    /// Subscribes to `channel` on a connection of its own (never the data
    /// connection). The stream yields each message's payload and ends when
    /// the subscription is lost (messages may have been missed then).
    /// `Ok(None)`: this store has no pub/sub. Default: `Ok(None)`.
    async fn subscribe(&self, channel: &str) -> Result<Option<Subscription>> {
        let _ = channel;
        Ok(None)
    }

    /// Reads the generation hash at `key` (fields `seq`, `purge`,
    /// `compacted`, `t:<tag>`, `a:<tag>`), first creating its `seq` at
    /// `init` if absent; answers
    /// every field.
    async fn generations(&self, key: &str, init: u64) -> Result<Vec<(String, u64)>>;

    /// Atomically: creates the hash's `seq` at `init` if absent, increments
    /// it, sets `field` to the new `seq` and answers it (a purge or a tag
    /// invalidation). With `at`, also sets the field `at.0` to `at.1` (a
    /// tag's companion field `a:<tag>`: when it was invalidated, in ms of
    /// larder's clock).
    async fn bump_generation(
        &self,
        key: &str,
        field: &str,
        init: u64,
        at: Option<(&str, u64)>,
    ) -> Result<u64>;

    /// Atomically removes from the generation hash at `key` every tag
    /// (fields `t:<tag>` and `a:<tag>`) idle for longer than
    /// `compaction.idle` at `compaction.now_ms`, unless a pending dirty
    /// record became dirty at or before its last invalidation
    /// (`compaction.dirty_since_ms`), and raises the field `compacted` (the
    /// floor) to the largest `seq` removed. A tag without its `a:` field
    /// (invalidated before invalidation times were recorded) gets one at
    /// `now_ms` and is removed a horizon later. Answers the floor and the
    /// tags removed. See `generation.rs` for why removal is safe.
    async fn compact_generations(&self, key: &str, compaction: &Compaction) -> Result<Compacted>;

    /// The cached-collection operations of this store (sets; see
    /// `collection.rs`). Default: none.
    fn collections(&self) -> Option<&dyn super::Collections> {
        None
    }
}

/// What [`Protocol::compact_generations`] may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Now, in ms since the epoch (larder's clock).
    pub now_ms: u64,
    /// How long a tag must have been idle (since its last invalidation).
    pub idle: Duration,
    /// When the entity's oldest pending write-back record became dirty (ms
    /// since the epoch), if any: a tag invalidated at or after it stays.
    pub dirty_since_ms: Option<u64>,
}

/// What [`Protocol::compact_generations`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// The floor after the compaction: a tag absent from the hash counts
    /// as invalidated at this `seq` (0: nothing was ever compacted).
    pub floor: u64,
    /// The tags removed by this compaction.
    pub removed: Vec<String>,
}

impl Compaction {
    /// Whether a tag last invalidated at `at_ms` may be removed.
    pub(crate) fn removes(&self, at_ms: u64) -> bool {
        self.now_ms.saturating_sub(at_ms) > crate::clock::duration_ms(self.idle)
            && self.dirty_since_ms.is_none_or(|dirty| dirty > at_ms)
    }
}

/// The messages of a [`Protocol::subscribe`]; ends when the subscription is lost.
pub(crate) type Subscription = futures_util::stream::BoxStream<'static, Bytes>;
