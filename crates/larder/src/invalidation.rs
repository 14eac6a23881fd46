//! The invalidation bus: every instance hears about every invalidation.
//!
//! An invalidation (by key, by tag, a purge) and every write is first
//! applied to the store, then applied to this instance's near cache, then
//! published on the prefix's channel, `<prefix>:invalidations`, as a small
//! JSON message (`{"o": instance, "e": entity, "k": [ids]}`, `"t"`+`"s"` for
//! a tag, `"p"` for a purge, `"c"` for a compaction of tags: its floor). Every instance subscribed to the channel
//! evicts the keys from its near cache or learns the new generation.
//! Publishing after the store is what makes the order safe: a reader that
//! hears the message and reads again finds the new state.
//!
//! # Behavior
//! - **The subscriber** runs on a connection of its own
//!   ([`Protocol::subscribe`](crate::store::Protocol::subscribe)), in a task that holds only a `Weak` reference
//!   and ends when the cache is dropped. On subscribing it reads the
//!   entity's generations, then turns the near cache on.
//! - **A lost subscription** (dropped, killed, unanswered pings, a reader
//!   too far behind) may have lost messages: the near cache is cleared and
//!   bypassed until the subscriber is back, and meanwhile reads fetch the
//!   generations from the store before trusting a stamp.
//! - **Undelivered invalidations** (the store or the channel unreachable)
//!   are remembered, up to [`MAX_PENDING`] ids, and replayed — delete, then
//!   publish — as soon as the store answers again (retried every
//!   [`REPLAY_EVERY`], and at once when the subscriber reconnects). Past
//!   the bound they are replaced by one purge: bumping the entity's
//!   generation makes every older entry a miss, everywhere.
//! - **Owed invalidations outlive the process** when the cache has a
//!   state directory ([`CacheBuilder::state_dir`](crate::CacheBuilder::state_dir)):
//!   the moment something becomes owed, a marker file
//!   `<state_dir>/<prefix>.<entity>.owed.json` is written (and synced)
//!   saying "purge owed"; a crash leaves it. At shutdown
//!   ([`Cache::deliver_invalidations`](crate::Cache::deliver_invalidations), called by `close`) the owed
//!   invalidations are retried for the grace period and whatever is still
//!   owed is written to the file exactly (the ids, or a purge). The next
//!   cache built with the same state directory reads the file, replays it
//!   (the purge marker of a crash bumps the entity's purge generation), and
//!   removes the file once everything is delivered.
//! - **The window that remains**: between the store's return and the
//!   replay by a cache holding the state directory (at its start, or its
//!   next retry), other instances may still serve the entries whose
//!   invalidation is owed, up to their TTL; a lost state directory loses
//!   what it held; a file that cannot be written is logged as an error.
//! - A store without pub/sub (`Ok(None)` from `subscribe`) keeps its near
//!   cache coherent in this process only.

use crate::error::Result;
use crate::generation::{initial_seq, tag_at_field, tag_field, Generations, PURGE_FIELD};
use crate::key::KeySpace;
use crate::near::{Epochs, Evict};
use crate::stats::{NearCounters, NearEvent, NearStats};
use crate::store::{Compacted, Compaction, Store, WriteKeys};
use futures_util::future::join_all;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// The most undelivered key invalidations remembered; past it, a purge.
pub const MAX_PENDING: usize = 10_000;

/// How often undelivered invalidations are retried.
const REPLAY_EVERY: Duration = Duration::from_millis(100);

/// Resubscription backoff: from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(1));

/// How often an idle subscriber checks that its cache still exists.
const OWNER_CHECK: Duration = Duration::from_millis(500);

/// One message on the channel.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Message {
    /// The publishing instance (it applied the message already).
    o: String,
    /// The entity.
    e: String,
    /// Invalidated ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    k: Vec<String>,
    /// An invalidated tag, with the `seq` it was invalidated at (`s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<u64>,
    /// A purge, at this `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<u64>,
    /// Tags were compacted away, up to this floor (see `generation.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<u64>,
}

/// What the state file says, as written on disk (JSON).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct OwedFile {
    /// A purge is owed (also the marker written while the process runs).
    #[serde(default)]
    purge: bool,
    /// Ids whose invalidation is owed.
    #[serde(default)]
    ids: Vec<String>,
}

/// What the state file holds now, as far as this process knows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum OnDisk {
    /// No file.
    #[default]
    Nothing,
    /// The "purge owed" marker: covers anything owed since.
    Marker,
    /// An exact list, written at shutdown or read at start; anything owed
    /// since is not in it.
    Exact,
}

/// Invalidations not yet delivered.
#[derive(Debug, Default)]
struct Pending {
    /// Id → a version, bumped when the id is remembered again, so a replay
    /// forgets only what it delivered.
    ids: HashMap<String, u64>,
    /// A purge is owed (asked for while the store was down, or overflow).
    purge: bool,
    version: u64,
    /// The state file's contents (always `Nothing` without a state file).
    on_disk: OnDisk,
}

/// The bus of one cache: its generations, its near cache's epochs, its
/// undelivered invalidations and its subscriber.
pub(crate) struct Bus {
    store: Arc<dyn Store>,
    keys: KeySpace,
    channel: String,
    generations_key: String,
    /// Tells this instance's messages from the others'.
    instance: String,
    /// Subscribed: stamps are written and checked, the near cache may be used.
    subscribes: bool,
    pub(crate) generations: Generations,
    pub(crate) epochs: Epochs,
    pub(crate) counters: Arc<NearCounters>,
    l1: Option<Arc<dyn Evict>>,
    /// Whether the in-process generations follow the channel.
    subscribed: AtomicBool,
    /// Whether the last fetch of the generations (while not subscribed)
    /// succeeded.
    fetched: AtomicBool,
    pending: Mutex<Pending>,
    pending_len: AtomicU64,
    replaying: AtomicBool,
    /// Where owed invalidations are kept across processes, if anywhere.
    state_file: Option<PathBuf>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("channel", &self.channel)
            .field("subscribes", &self.subscribes)
            .finish()
    }
}

impl Bus {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        keys: KeySpace,
        subscribes: bool,
        counters: Arc<NearCounters>,
        l1: Option<Arc<dyn Evict>>,
        instance: String,
        state_file: Option<PathBuf>,
    ) -> Self {
        Self {
            channel: keys.channel(),
            generations_key: keys.generations_key(),
            store,
            keys,
            instance,
            subscribes,
            generations: Generations::default(),
            epochs: Epochs::default(),
            counters,
            l1,
            subscribed: AtomicBool::new(false),
            fetched: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            pending_len: AtomicU64::new(0),
            replaying: AtomicBool::new(false),
            state_file,
        }
    }

    /// Whether entries are stamped and stamps checked.
    pub(crate) fn stamps(&self) -> bool {
        self.subscribes
    }

    /// Starts the subscriber (if this bus subscribes) and waits up to
    /// `wait` for its first attempt, so a cache built while the store
    /// answers starts with its near cache on.
    ///
    /// Invalidations a previous process left owed in the state file are
    /// taken over first and replayed; `start` waits up to `wait` for
    /// that replay too, so a cache built while the store answers serves
    /// nothing they invalidate.
    pub(crate) async fn start(self: &Arc<Self>, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        if self.take_over_state_file() {
            self.kick_replay();
            while self.pending_len.load(Ordering::Relaxed) > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if !self.subscribes {
            return;
        }
        let (ready, first) = tokio::sync::oneshot::channel();
        tokio::spawn(subscriber(Arc::downgrade(self), ready));
        let _ = tokio::time::timeout_at(deadline, first).await;
    }

    /// How many invalidations are owed now (a purge counts one).
    pub(crate) fn owed(&self) -> u64 {
        self.pending_len.load(Ordering::Relaxed)
    }

    /// Retries owed invalidations for up to `within`, then writes whatever
    /// is still owed to the state file (exactly: the ids, or a purge), or
    /// removes the file if nothing is. Answers how many are still owed.
    pub(crate) async fn deliver(self: &Arc<Self>, within: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + within;
        while self.owed() > 0 && tokio::time::Instant::now() < deadline {
            let delivered = tokio::time::timeout_at(deadline, self.replay()).await;
            if matches!(delivered, Ok(true)) {
                break;
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + REPLAY_EVERY))
                .await;
        }
        let mut pending = self.lock();
        self.count_pending(&pending);
        if let Some(path) = &self.state_file {
            if pending.ids.is_empty() && !pending.purge {
                remove_state_file(path, &mut pending);
            } else {
                let owed = OwedFile {
                    purge: pending.purge,
                    ids: pending.ids.keys().cloned().collect(),
                };
                if write_state_file(path, &owed) {
                    pending.on_disk = OnDisk::Exact;
                }
            }
        }
        self.pending_len.load(Ordering::Relaxed)
    }

    /// Reads the state file a previous process left, if any, into the
    /// owed invalidations; answers whether anything is owed from it. A
    /// file that cannot be read or parsed still says something was owed:
    /// a purge.
    fn take_over_state_file(&self) -> bool {
        let Some(path) = &self.state_file else {
            return false;
        };
        let owed = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<OwedFile>(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "unreadable owed-invalidations file: purging the entity instead");
                OwedFile { purge: true, ids: Vec::new() }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "unreadable owed-invalidations file: purging the entity instead");
                OwedFile { purge: true, ids: Vec::new() }
            }
        };
        tracing::info!(
            file = %path.display(),
            ids = owed.ids.len(),
            purge = owed.purge,
            "replaying invalidations a previous process owed"
        );
        let mut pending = self.lock();
        for id in owed.ids {
            pending.version += 1;
            let version = pending.version;
            pending.ids.insert(id, version);
        }
        pending.purge |= owed.purge;
        if pending.ids.len() > MAX_PENDING {
            pending.ids.clear();
            pending.purge = true;
        }
        pending.on_disk = OnDisk::Exact;
        self.count_pending(&pending);
        if pending.ids.is_empty() && !pending.purge {
            remove_state_file(path, &mut pending);
            return false;
        }
        true
    }

    /// Makes sure the state file covers what was just owed: the purge
    /// marker, written once per stretch of owed invalidations.
    fn mark_owed(&self, pending: &mut Pending) {
        let Some(path) = &self.state_file else {
            return;
        };
        if pending.on_disk != OnDisk::Marker {
            let marker = OwedFile {
                purge: true,
                ids: Vec::new(),
            };
            if write_state_file(path, &marker) {
                pending.on_disk = OnDisk::Marker;
            }
        }
    }

    /// Nothing is owed any more: the state file goes.
    fn settled(&self, pending: &mut Pending) {
        if let Some(path) = &self.state_file {
            if pending.ids.is_empty() && !pending.purge {
                remove_state_file(path, pending);
            }
        }
    }

    pub(crate) fn stats(&self, l1_entries: u64) -> NearStats {
        self.counters
            .snapshot(l1_entries, self.pending_len.load(Ordering::Relaxed))
    }

    /// Whether the in-process generations can be trusted now: the
    /// subscriber follows the channel, or the last fetch succeeded.
    pub(crate) fn generations_known(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) || self.fetched.load(Ordering::Acquire)
    }

    /// While the subscription is down, the in-process generations may be
    /// behind: read them from the store (one round trip, only then).
    pub(crate) async fn ensure_generations(&self) {
        if !self.subscribes || self.subscribed.load(Ordering::Acquire) {
            return;
        }
        match self
            .store
            .generations(&self.generations_key, initial_seq())
            .await
        {
            Ok(fields) => {
                self.generations.merge(fields);
                self.fetched.store(true, Ordering::Release);
            }
            // Not known to be current (a reconnecting connection can fail
            // this and answer the read right after): stamped entries are
            // misses until a fetch succeeds or the subscriber is back.
            Err(_) => self.fetched.store(false, Ordering::Release),
        }
    }

    /// The keys an invalidation of `id` touches: value and lease, and the
    /// write bookkeeping, so a write in flight ends by deleting.
    fn write_keys(&self, id: &str) -> WriteKeys {
        WriteKeys {
            value_key: self.keys.value_key(id),
            lease_key: self.keys.lease_key(id),
            write_key: self.keys.write_key(id),
        }
    }

    /// Applies an invalidation of `ids` to this instance's near cache.
    pub(crate) async fn evict_local(&self, ids: &[String]) {
        for id in ids {
            self.epochs.bump_key(id);
            if let Some(l1) = &self.l1 {
                l1.evict(id).await;
            }
        }
    }

    /// Invalidates `ids` in the store, then everywhere else. An id the
    /// store could not be told about is remembered and the error returned.
    pub(crate) async fn invalidate(self: &Arc<Self>, ids: &[String]) -> Result<()> {
        self.evict_local(ids).await;
        let deleted = join_all(ids.iter().map(|id| {
            let keys = self.write_keys(id);
            async move { self.store.invalidate(&keys).await }
        }))
        .await;
        let mut failed = None;
        let mut delivered = Vec::with_capacity(ids.len());
        for (id, done) in ids.iter().zip(deleted) {
            match done {
                Ok(()) => delivered.push(id.clone()),
                Err(e) => {
                    if e.is_store_unavailable() {
                        self.remember(std::slice::from_ref(id));
                    }
                    failed.get_or_insert(e);
                }
            }
        }
        // Local evictions again: a read that started before the delete may
        // have filled the near cache meanwhile (its ticket is void anyway).
        self.evict_local(ids).await;
        self.announce(&delivered).await;
        failed.map_or(Ok(()), Err)
    }

    /// After a write reached the store (or could not): the near caches
    /// drop the key; an unreachable store means it is owed.
    pub(crate) async fn written(self: &Arc<Self>, id: &str, reached_store: bool) {
        let ids = [id.to_owned()];
        self.evict_local(&ids).await;
        if reached_store {
            self.announce(&ids).await;
        } else {
            self.remember(&ids);
        }
    }

    /// The channel and message announcing writes of `ids`, for a store
    /// script to publish in the same round trip as the writes themselves
    /// (write-back); call [`Bus::announced`] once the script ran.
    pub(crate) fn announcement(&self, ids: &[String]) -> (String, Vec<u8>) {
        let message = Message {
            k: ids.to_vec(),
            ..self.message()
        };
        // Serializing strings and numbers cannot fail.
        let bytes = serde_json::to_vec(&message).unwrap_or_default();
        (self.channel.clone(), bytes)
    }

    /// After a store script wrote `ids` and published their
    /// [`announcement`](Bus::announcement): the near cache drops them.
    pub(crate) async fn announced(&self, ids: &[String]) {
        self.evict_local(ids).await;
        self.counters.add(NearEvent::Sent, ids.len() as u64);
    }

    /// After writes of `ids` reached the store (a write-back flush
    /// refreshed their entries): the near caches drop them.
    pub(crate) async fn written_many(self: &Arc<Self>, ids: &[String]) {
        self.evict_local(ids).await;
        self.announce(ids).await;
    }

    /// Publishes an invalidation of `ids` the store already applied; if
    /// the channel is unreachable they are owed.
    async fn announce(self: &Arc<Self>, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let message = Message {
            k: ids.to_vec(),
            ..self.message()
        };
        if self.publish(&message).await.is_ok() {
            self.counters.add(NearEvent::Sent, ids.len() as u64);
        } else {
            self.remember(ids);
        }
    }

    fn message(&self) -> Message {
        Message {
            o: self.instance.clone(),
            e: self.keys.entity().to_owned(),
            ..Message::default()
        }
    }

    async fn publish(&self, message: &Message) -> Result<()> {
        // Serializing strings and numbers cannot fail.
        let bytes = serde_json::to_vec(message).unwrap_or_default();
        self.store.publish(&self.channel, &bytes).await
    }

    /// Bumps the entity's generation: every entry filled before is a miss,
    /// on every instance. Owed (and the error returned) if the store is down.
    pub(crate) async fn purge(self: &Arc<Self>) -> Result<()> {
        self.bump_and_announce(PURGE_FIELD, None, |bus, seq| {
            bus.purged(seq);
            Message {
                p: Some(seq),
                ..bus.message()
            }
        })
        .await
    }

    /// Makes every entry tagged `tag` a miss, on every instance; `now_ms`
    /// (larder's clock) is recorded as the tag's last invalidation, which
    /// compaction measures its idleness from.
    pub(crate) async fn invalidate_tag(self: &Arc<Self>, tag: &str, now_ms: u64) -> Result<()> {
        let at = tag_at_field(tag);
        self.bump_and_announce(&tag_field(tag), Some((&at, now_ms)), |bus, seq| {
            bus.generations.tag_invalidated(tag, seq);
            Message {
                t: Some(tag.to_owned()),
                s: Some(seq),
                ..bus.message()
            }
        })
        .await
    }

    /// Bumps `field` of the generations in the store, applies the new
    /// `seq` here (`apply` answers the message to publish) and announces
    /// it. A bump or message that cannot be delivered cannot be replayed
    /// by key: a purge is owed instead (and a store error returned).
    async fn bump_and_announce(
        self: &Arc<Self>,
        field: &str,
        at: Option<(&str, u64)>,
        apply: impl FnOnce(&Self, u64) -> Message,
    ) -> Result<()> {
        let seq = match self.bump(field, at).await {
            Ok(seq) => seq,
            Err(e) => {
                if e.is_store_unavailable() {
                    self.owe_purge();
                }
                return Err(e);
            }
        };
        let message = apply(self, seq);
        if self.publish(&message).await.is_ok() {
            self.counters.add(NearEvent::Sent, 1);
        } else {
            self.owe_purge();
        }
        Ok(())
    }

    async fn bump(&self, field: &str, at: Option<(&str, u64)>) -> Result<u64> {
        self.store
            .bump_generation(&self.generations_key, field, initial_seq(), at)
            .await
    }

    /// Compacts the entity's tag generations in the store (see
    /// `generation.rs`), drops what was removed from the in-process copy
    /// and, if anything was removed, tells the other instances. A message
    /// that cannot be published is not owed: every instance learns the
    /// floor from its own next compaction or generations read.
    pub(crate) async fn compact(&self, compaction: &Compaction) -> Result<Compacted> {
        let compacted = self
            .store
            .compact_generations(&self.generations_key, compaction)
            .await?;
        self.generations.compacted(compacted.floor);
        if !compacted.removed.is_empty() {
            let message = Message {
                c: Some(compacted.floor),
                ..self.message()
            };
            match self.publish(&message).await {
                Ok(()) => self.counters.add(NearEvent::Sent, 1),
                Err(e) => {
                    tracing::debug!(channel = self.channel, error = %e, "could not announce a tag compaction; instances learn it on their own")
                }
            }
        }
        Ok(compacted)
    }

    fn purged(&self, seq: u64) {
        self.generations.purged(seq);
        self.epochs.bump_all();
        if let Some(l1) = &self.l1 {
            l1.clear();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every update is a few map operations: a poisoned lock is consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers invalidations of `ids` that did not reach the store or
    /// the channel, and makes sure a replay runs.
    pub(crate) fn remember(self: &Arc<Self>, ids: &[String]) {
        {
            let mut pending = self.lock();
            for id in ids {
                pending.version += 1;
                let version = pending.version;
                pending.ids.insert(id.clone(), version);
            }
            if pending.ids.len() > MAX_PENDING {
                pending.ids.clear();
                pending.purge = true;
            }
            self.mark_owed(&mut pending);
            self.count_pending(&pending);
        }
        self.kick_replay();
    }

    fn owe_purge(self: &Arc<Self>) {
        {
            let mut pending = self.lock();
            pending.purge = true;
            self.mark_owed(&mut pending);
            self.count_pending(&pending);
        }
        self.kick_replay();
    }

    fn count_pending(&self, pending: &Pending) {
        let n = pending.ids.len() as u64 + u64::from(pending.purge);
        self.pending_len.store(n, Ordering::Relaxed);
    }

    /// Starts the replay task unless it runs or nothing is owed.
    fn kick_replay(self: &Arc<Self>) {
        if self.pending_len.load(Ordering::Relaxed) == 0 {
            return;
        }
        if self.replaying.swap(true, Ordering::AcqRel) {
            return;
        }
        let bus = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = bus.upgrade() else { return };
                if this.replay().await {
                    this.replaying.store(false, Ordering::Release);
                    // Something owed since the last look starts a new task.
                    this.kick_replay();
                    return;
                }
                drop(this);
                tokio::time::sleep(REPLAY_EVERY).await;
            }
        });
    }

    /// Delivers what is owed; answers whether nothing is owed any more.
    async fn replay(self: &Arc<Self>) -> bool {
        let (owed, purge) = {
            let pending = self.lock();
            let owed: Vec<(String, u64)> =
                pending.ids.iter().map(|(k, v)| (k.clone(), *v)).collect();
            (owed, pending.purge)
        };
        if purge {
            let Ok(seq) = self.bump(PURGE_FIELD, None).await else {
                return false;
            };
            self.purged(seq);
            let message = Message {
                p: Some(seq),
                ..self.message()
            };
            if self.publish(&message).await.is_err() {
                return false;
            }
            self.counters.add(NearEvent::Replayed, 1);
            self.counters.add(NearEvent::GenerationBump, 1);
            self.counters.add(NearEvent::Sent, 1);
            // A purge covers every key owed before it.
            let mut pending = self.lock();
            pending.purge = false;
            pending
                .ids
                .retain(|id, v| owed.iter().all(|(o, ov)| o != id || ov != v));
            self.count_pending(&pending);
            self.settled(&mut pending);
            return pending.ids.is_empty() && !pending.purge;
        }
        for chunk in owed.chunks(256) {
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            let deleted = join_all(ids.iter().map(|id| {
                let keys = self.write_keys(id);
                async move { self.store.invalidate(&keys).await }
            }))
            .await;
            if deleted.iter().any(Result::is_err) {
                return false;
            }
            self.evict_local(&ids).await;
            let message = Message {
                k: ids.clone(),
                ..self.message()
            };
            if self.publish(&message).await.is_err() {
                return false;
            }
            self.counters.add(NearEvent::Sent, ids.len() as u64);
            self.counters.add(NearEvent::Replayed, ids.len() as u64);
            let mut pending = self.lock();
            for (id, version) in chunk {
                if pending.ids.get(id) == Some(version) {
                    pending.ids.remove(id);
                }
            }
            self.count_pending(&pending);
        }
        let mut pending = self.lock();
        self.settled(&mut pending);
        pending.ids.is_empty() && !pending.purge
    }

    /// Applies a message from the channel.
    async fn apply(&self, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<Message>(payload) else {
            tracing::debug!(
                channel = self.channel,
                "ignoring a message that is not larder's"
            );
            return;
        };
        if message.e != self.keys.entity() || message.o == self.instance {
            return;
        }
        let mut received = message.k.len() as u64;
        self.evict_local(&message.k).await;
        if let (Some(tag), Some(seq)) = (&message.t, message.s) {
            self.generations.tag_invalidated(tag, seq);
            received += 1;
        }
        if let Some(seq) = message.p {
            self.purged(seq);
            received += 1;
        }
        if let Some(floor) = message.c {
            self.generations.compacted(floor);
            received += 1;
        }
        self.counters.add(NearEvent::Received, received);
    }

    /// Subscribed and caught up: trust the generations, use the near cache.
    fn went_up(&self) {
        self.subscribed.store(true, Ordering::Release);
        self.epochs.set_usable(true);
    }

    /// The subscription is lost: messages may be missed from now on.
    fn went_down(&self) {
        self.subscribed.store(false, Ordering::Release);
        if self.epochs.set_usable(false) {
            if let Some(l1) = &self.l1 {
                l1.clear();
                self.counters.add(NearEvent::L1Clear, 1);
            }
        }
    }
}

/// Writes `owed` to `path` (a temporary file, synced, then renamed, so a
/// crash leaves the old file or the new one); answers whether it did.
fn write_state_file(path: &Path, owed: &OwedFile) -> bool {
    let write = || -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        // Serializing strings and booleans cannot fail.
        let bytes = serde_json::to_vec(owed).unwrap_or_default();
        {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            // Makes the rename durable where directories can be synced.
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    };
    match write() {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot write the owed-invalidations file: a crash now would forget them");
            false
        }
    }
}

/// Removes the state file (nothing is owed).
fn remove_state_file(path: &Path, pending: &mut Pending) {
    if pending.on_disk == OnDisk::Nothing {
        return;
    }
    match std::fs::remove_file(path) {
        Ok(()) => pending.on_disk = OnDisk::Nothing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => pending.on_disk = OnDisk::Nothing,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove the owed-invalidations file: the next start will replay it needlessly")
        }
    }
}

/// The subscriber task: subscribe, catch up, apply messages; on a lost
/// subscription clear the near cache and start over. Ends with its cache.
async fn subscriber(bus: Weak<Bus>, ready: tokio::sync::oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let mut backoff = BACKOFF.0;
    loop {
        let Some(this) = bus.upgrade() else { return };
        let subscription = this.store.subscribe(&this.channel).await;
        let caught_up = match &subscription {
            Ok(_) => this
                .store
                .generations(&this.generations_key, initial_seq())
                .await
                .map(|fields| this.generations.merge(fields)),
            Err(_) => Ok(()),
        };
        match (subscription, caught_up) {
            (Ok(Some(mut messages)), Ok(())) => {
                this.went_up();
                this.kick_replay();
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                backoff = BACKOFF.0;
                drop(this);
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let Some(this) = bus.upgrade() else { return };
                            this.apply(&message).await;
                        }
                        () = tokio::time::sleep(OWNER_CHECK) => {
                            if bus.strong_count() == 0 {
                                return;
                            }
                        }
                    }
                }
                let Some(this) = bus.upgrade() else { return };
                tracing::warn!(
                    channel = this.channel,
                    "invalidation subscription lost; near cache cleared and bypassed until it is back"
                );
                this.went_down();
            }
            // No pub/sub: coherent within this process only.
            (Ok(None), Ok(())) => {
                this.went_up();
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                return;
            }
            (_, _) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_small_and_round_trip() {
        let m = Message {
            o: "i".into(),
            e: "users".into(),
            k: vec!["1".into(), "a\"b\n".into()],
            ..Message::default()
        };
        let bytes = serde_json::to_vec(&m).expect("json");
        assert_eq!(
            std::str::from_utf8(&bytes).expect("utf-8"),
            r#"{"o":"i","e":"users","k":["1","a\"b\n"]}"#
        );
        assert_eq!(serde_json::from_slice::<Message>(&bytes).expect("back"), m);
    }
}
