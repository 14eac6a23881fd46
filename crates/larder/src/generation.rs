//! Generations: how `purge` and `invalidate_tag` make entries stale without
//! touching them, without scanning the keyspace, and with a hit still one
//! `GET`.
//!
//! Each entity has one small hash in the store, at
//! `<prefix>:{<entity>}:gen` (one key, so one slot on Cluster):
//!
//! | field | value |
//! |---|---|
//! | `seq` | a counter; created at the wall clock in µs, then only incremented |
//! | `purge` | the `seq` of the last purge |
//! | `t:<tag>` | the `seq` of the tag's last invalidation |
//! | `a:<tag>` | when the tag was last invalidated (ms of larder's clock) |
//! | `compacted` | the floor: the largest `seq` of a tag compaction removed |
//!
//! A purge or a tag invalidation is one script: increment `seq`, store it in
//! its field (and, for a tag, the time in `a:<tag>`). Every entry is
//! **stamped** (in its envelope) with the `seq` its filler knew *before*
//! the load began, and with its tags. An entry is current only if its
//! stamp is at least `purge` and at least the `seq` of each of its tags
//! (and, carrying tags, at least `compacted`; see below); otherwise it was
//! invalidated and is a miss (never stale).
//!
//! The cache keeps the hash in process: read when the invalidation bus
//! subscribes (at start and after every reconnect) and kept up to date by
//! the bus's messages, so checking a stamp is a few comparisons, no round
//! trip. While the bus is down the in-process copy may be behind, so reads
//! fetch the hash first (one more round trip, only then).
//!
//! Why this is safe: a filler's known `seq` is never above the store's, so a
//! stamp can only be *too low* — which makes an entry look invalidated when
//! it was not (a needless miss), never the other way round. `seq` starts at
//! the wall clock in µs so that a Redis that lost the hash (restarted
//! without persistence) starts it above any stamp it handed out before.
//!
//! # Bounded tag generations: compaction
//!
//! Without care the hash grows by one field per tag ever invalidated, in
//! the store and in every process. So each tag invalidation also records
//! *when* it happened, in the companion field `a:<tag>` (ms of larder's
//! clock, written by the same bump script), and a compaction step
//! ([`Protocol::compact_generations`](crate::store::Protocol::compact_generations),
//! one script on the one key) removes a tag's two fields once the tag has
//! been idle longer than the **horizon**:
//!
//! ```text
//! horizon = max(ttl × (1 + jitter) + stale, negative_ttl, near-cache ttl) + TAG_SKEW_MARGIN
//! ```
//!
//! the longest an entry written before the invalidation can live (a value
//! until its stale window ends, a remembered "not found", a near-cache
//! copy), plus [`TAG_SKEW_MARGIN`] for the clocks of the instance that
//! invalidated and the one that compacts disagreeing. Every removal raises
//! the field `compacted` to the largest `seq` removed: the **floor**.
//!
//! The rule that makes removal safe: **a tag absent from the hash counts as
//! invalidated at the floor.** An entry carrying any tag must be stamped at
//! least at the floor to be current (entries without tags are judged by
//! `purge` alone). So removing a tag can never make an entry it
//! invalidated look current: that entry's stamp is below the tag's `seq`,
//! which is at most the floor, so it is still a miss. The horizon is what
//! keeps this rule from costing misses: an entry stamped below the floor
//! was stamped before an invalidation older than the horizon, so it has
//! normally expired by itself already. The floor is what keeps the rule
//! sound when the horizon is not enough — a fill that started before the
//! invalidation and landed late (it held its lease for up to `lease_ttl`),
//! a stamp taken by an instance that had not heard of the invalidation
//! yet, a flush that refreshed an entry under a generation read before a
//! slow commit: such an entry stays a (needless) miss instead of being
//! served.
//!
//! Write-back adds one more rule: a tag is **not** compacted while the
//! entity's oldest pending dirty record (the oldest score of its shards'
//! queues) became dirty at or before the tag's last invalidation; it waits
//! until that record is flushed. A pending record is served as the answer
//! whatever its stamp, and its flush refreshes the entry under a generation
//! read at flush time: keeping the tag until every record older than its
//! invalidation is flushed keeps the refresh judged against the tag itself,
//! not only against the floor.
//!
//! In process, the floor lives under the same lock as the tags (a reader
//! sees both before or both after a compaction), and learning a floor
//! drops every tag known at or below it. A process learns floors three
//! ways: its own compaction's answer (every instance runs one periodically
//! while it knows of any tag), the bus message the compacting instance
//! publishes (`"c"`), and the hash's `compacted` field whenever it reads
//! the generations (on subscribing, and while the bus is down).

use crate::error::{Error, Result};
use bytes::{BufMut, Bytes};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most tags one entry may carry.
pub const MAX_TAGS: usize = 32;

/// The longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 128;

/// The hash field of the `seq` counter.
pub(crate) const SEQ_FIELD: &str = "seq";
/// The hash field of the last purge.
pub(crate) const PURGE_FIELD: &str = "purge";

/// The hash field of the compaction floor: the largest `seq` of a tag
/// removed by compaction. A tag absent from the hash counts as
/// invalidated at the floor.
pub(crate) const FLOOR_FIELD: &str = "compacted";

/// How far the clocks of two instances (the one that invalidated a tag and
/// the one that compacts it) may disagree; added to the horizon.
pub const TAG_SKEW_MARGIN: Duration = Duration::from_secs(2);

/// The hash field of a tag's last invalidation.
pub(crate) fn tag_field(tag: &str) -> String {
    format!("t:{tag}")
}

/// The hash field of when a tag was last invalidated (ms of larder's clock).
pub(crate) fn tag_at_field(tag: &str) -> String {
    format!("a:{tag}")
}

/// How long a tag must have been idle before compaction may remove it:
/// the longest an entry written before its last invalidation can live,
/// plus [`TAG_SKEW_MARGIN`] (see the module docs).
pub(crate) fn tag_horizon(
    ttl: Duration,
    jitter: f64,
    stale: Duration,
    negative_ttl: Duration,
    near_ttl: Option<Duration>,
) -> Duration {
    let value = ttl.mul_f64(1.0 + jitter.max(0.0)).saturating_add(stale);
    value
        .max(negative_ttl)
        .max(near_ttl.unwrap_or_default())
        .saturating_add(TAG_SKEW_MARGIN)
}

/// Where a new hash's `seq` starts: the wall clock in µs.
pub(crate) fn initial_seq() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Checks tags: at most [`MAX_TAGS`], each 1–[`MAX_TAG_LEN`] bytes.
pub(crate) fn validate_tags(tags: &[String]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::InvalidTag {
            tag: tags.join(",").chars().take(80).collect(),
            reason: format!(
                "an entry can carry at most {MAX_TAGS} tags, this one has {}",
                tags.len()
            ),
        });
    }
    for tag in tags {
        validate_tag(tag)?;
    }
    Ok(())
}

/// Checks one tag: 1–[`MAX_TAG_LEN`] bytes.
pub(crate) fn validate_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        return Err(Error::InvalidTag {
            tag: tag.chars().take(80).collect(),
            reason: format!("a tag is 1 to {MAX_TAG_LEN} bytes"),
        });
    }
    Ok(())
}

/// What an entry was filled under: the `seq` known before its load, and
/// its tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) seq: u64,
    pub(crate) tags: Vec<String>,
}

impl Stamp {
    /// `seq` (8 bytes, big-endian), a tag count (1 byte), then each tag as
    /// a length byte and its bytes. Tags are validated before they get here.
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(9 + self.tags.iter().map(|t| 1 + t.len()).sum::<usize>());
        out.put_u64(self.seq);
        let tags: Vec<&String> = self
            .tags
            .iter()
            .filter(|t| t.len() <= MAX_TAG_LEN)
            .take(MAX_TAGS)
            .collect();
        // Both bounds are below 256.
        out.put_u8(tags.len() as u8);
        for tag in tags {
            out.put_u8(tag.len() as u8);
            out.extend_from_slice(tag.as_bytes());
        }
        Bytes::from(out)
    }

    /// Decodes [`Stamp::encode`]'s bytes; `None` for anything else.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Stamp> {
        let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let count = usize::from(*bytes.get(8)?);
        let mut at = 9;
        let mut tags = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(*bytes.get(at)?);
            let tag = bytes.get(at + 1..at + 1 + len)?;
            tags.push(String::from_utf8(tag.to_vec()).ok()?);
            at += 1 + len;
        }
        (at == bytes.len()).then_some(Stamp { seq, tags })
    }
}

/// The in-process copy of an entity's generation hash.
#[derive(Debug, Default)]
pub(crate) struct Generations {
    seq: AtomicU64,
    purge: AtomicU64,
    tags: RwLock<Tags>,
}

/// The tags known in process and the compaction floor, under one lock so
/// that a reader sees a compaction whole or not at all.
#[derive(Debug, Default)]
struct Tags {
    /// Tag → the `seq` of its last invalidation; only tags above `floor`.
    at: HashMap<String, u64>,
    /// A tag absent from `at` counts as invalidated at this `seq`.
    floor: u64,
}

impl Tags {
    /// Records a tag invalidated at `seq`, unless the floor covers it.
    fn invalidated(&mut self, tag: &str, seq: u64) {
        if seq <= self.floor {
            return;
        }
        match self.at.get_mut(tag) {
            Some(at) => *at = (*at).max(seq),
            None => {
                self.at.insert(tag.to_owned(), seq);
            }
        }
    }

    /// Raises the floor and drops the tags it covers.
    fn compacted(&mut self, floor: u64) {
        if floor > self.floor {
            self.floor = floor;
            self.at.retain(|_, at| *at > floor);
        }
    }
}

impl Generations {
    /// The `seq` to stamp a load with (taken before it starts).
    pub(crate) fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Whether an entry with this stamp (`None`: an unstamped entry, as if
    /// stamped 0 without tags) survived every purge and tag invalidation
    /// known here.
    pub(crate) fn is_current(&self, stamp: Option<&Stamp>) -> bool {
        let seq = stamp.map_or(0, |s| s.seq);
        if seq < self.purge.load(Ordering::Acquire) {
            return false;
        }
        let Some(stamp) = stamp.filter(|s| !s.tags.is_empty()) else {
            return true;
        };
        let tags = self.read_tags();
        // A tag absent from the map counts as invalidated at the floor.
        seq >= tags.floor
            && stamp
                .tags
                .iter()
                .all(|t| tags.at.get(t).is_none_or(|&at| seq >= at))
    }

    fn read_tags(&self) -> std::sync::RwLockReadGuard<'_, Tags> {
        // Every update is a few map operations: a poisoned lock is consistent.
        self.tags.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_tags(&self) -> std::sync::RwLockWriteGuard<'_, Tags> {
        self.tags.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The tags known here (invalidated, not yet compacted away), sorted.
    pub(crate) fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self.read_tags().at.keys().cloned().collect();
        tags.sort();
        tags
    }

    /// Whether any tag is known here (else there is nothing to compact).
    pub(crate) fn has_tags(&self) -> bool {
        !self.read_tags().at.is_empty()
    }

    /// A compaction removed tags up to `floor` (from this instance's own
    /// compaction, the bus, or the store's hash): drops them here too.
    pub(crate) fn compacted(&self, floor: u64) {
        self.write_tags().compacted(floor);
    }

    /// A purge at `seq` (from this instance or the bus).
    pub(crate) fn purged(&self, seq: u64) {
        self.purge.fetch_max(seq, Ordering::AcqRel);
        self.seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// A tag invalidated at `seq`.
    pub(crate) fn tag_invalidated(&self, tag: &str, seq: u64) {
        self.write_tags().invalidated(tag, seq);
        self.seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// Merges the store's hash into the copy (fields as
    /// [`Protocol::generations`](crate::store::Protocol::generations) answers),
    /// field by field, keeping the larger value: a reply read before a
    /// purge or tag invalidation this copy already knows of (a late reply,
    /// or one from a lagging read) never moves a generation backwards.
    /// A tag the reply lacks stays known here unless the reply's floor
    /// covers it (it was compacted away).
    pub(crate) fn merge(&self, fields: Vec<(String, u64)>) {
        let mut seq = 0;
        let mut purge = 0;
        let mut floor = 0;
        let mut tags = Vec::new();
        for (field, value) in fields {
            match field.as_str() {
                SEQ_FIELD => seq = value,
                PURGE_FIELD => purge = value,
                FLOOR_FIELD => floor = value,
                other => {
                    if let Some(tag) = other.strip_prefix("t:") {
                        tags.push((tag.to_owned(), value));
                    }
                }
            }
        }
        // Tags and purge first: a reader must never see the new `seq`
        // with the old invalidations (it would stamp too high).
        {
            let mut known = self.write_tags();
            known.compacted(floor);
            for (tag, at) in tags {
                known.invalidated(&tag, at);
            }
        }
        self.purge.fetch_max(purge, Ordering::AcqRel);
        self.seq.fetch_max(seq.max(purge), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(seq: u64, tags: &[&str]) -> Stamp {
        Stamp {
            seq,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    proptest! {
        #[test]
        fn stamps_round_trip(seq in any::<u64>(), tags in proptest::collection::vec("[a-z:0-9]{1,20}", 0..5)) {
            let s = Stamp { seq, tags };
            prop_assert_eq!(Stamp::decode(&s.encode()), Some(s));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Stamp::decode(&bytes);
        }
    }

    #[test]
    fn purge_invalidates_older_stamps_only() {
        let g = Generations::default();
        g.merge(vec![("seq".into(), 10)]);
        assert!(g.is_current(Some(&stamp(10, &[]))));
        assert!(g.is_current(None));
        g.purged(11);
        assert_eq!(g.seq(), 11);
        assert!(!g.is_current(Some(&stamp(10, &[]))));
        assert!(
            !g.is_current(None),
            "an unstamped entry predates every purge"
        );
        assert!(g.is_current(Some(&stamp(11, &[]))));
    }

    #[test]
    fn a_tag_invalidates_entries_carrying_it_only() {
        let g = Generations::default();
        g.merge(vec![("seq".into(), 10)]);
        g.tag_invalidated("team:1", 11);
        assert!(!g.is_current(Some(&stamp(10, &["team:2", "team:1"]))));
        assert!(g.is_current(Some(&stamp(10, &["team:2"]))));
        assert!(g.is_current(Some(&stamp(10, &[]))));
        assert!(g.is_current(Some(&stamp(11, &["team:1"]))));
    }

    #[test]
    fn merge_reads_the_stores_fields() {
        let g = Generations::default();
        g.merge(vec![
            ("seq".into(), 20),
            ("purge".into(), 15),
            ("t:x".into(), 18),
        ]);
        assert_eq!(g.seq(), 20);
        assert!(!g.is_current(Some(&stamp(14, &[]))));
        assert!(!g.is_current(Some(&stamp(17, &["x"]))));
        assert!(g.is_current(Some(&stamp(18, &["x"]))));
    }

    #[test]
    fn a_late_reply_never_moves_generations_backwards() {
        let g = Generations::default();
        g.merge(vec![("seq".into(), 10)]);
        g.purged(12);
        g.tag_invalidated("x", 14);
        // A reply read before the purge and the tag invalidation.
        g.merge(vec![
            ("seq".into(), 11),
            ("purge".into(), 5),
            ("t:x".into(), 9),
        ]);
        assert_eq!(g.seq(), 14);
        assert!(!g.is_current(Some(&stamp(11, &[]))), "purge moved back");
        assert!(!g.is_current(Some(&stamp(13, &["x"]))), "tag moved back");
        assert!(g.is_current(Some(&stamp(14, &["x"]))));
        // A reply that does not name a tag known here keeps it.
        g.merge(vec![("seq".into(), 11)]);
        assert!(!g.is_current(Some(&stamp(13, &["x"]))), "tag forgotten");
        // A newer reply moves every field forward.
        g.merge(vec![
            ("seq".into(), 30),
            ("purge".into(), 20),
            ("t:x".into(), 25),
        ]);
        assert_eq!(g.seq(), 30);
        assert!(!g.is_current(Some(&stamp(19, &[]))));
        assert!(!g.is_current(Some(&stamp(24, &["x"]))));
        assert!(g.is_current(Some(&stamp(25, &["x"]))));
    }

    #[test]
    fn a_compacted_tag_keeps_older_tagged_stamps_invalidated() {
        let g = Generations::default();
        g.merge(vec![("seq".into(), 10)]);
        g.tag_invalidated("x", 11);
        g.tag_invalidated("y", 12);
        g.tag_invalidated("z", 13);
        g.compacted(12);
        assert_eq!(g.tags(), vec!["z".to_owned()], "x and y dropped, z kept");
        // Invalidated by x (or y) before: still a miss without them.
        assert!(!g.is_current(Some(&stamp(10, &["x"]))));
        assert!(!g.is_current(Some(&stamp(11, &["y"]))));
        // Any tag counts as invalidated at the floor, even one never seen.
        assert!(!g.is_current(Some(&stamp(11, &["never"]))));
        assert!(g.is_current(Some(&stamp(12, &["x", "never"]))));
        assert!(!g.is_current(Some(&stamp(12, &["z"]))));
        // Untagged entries answer to purge alone.
        assert!(g.is_current(Some(&stamp(1, &[]))));
        // A late message or reply below the floor does not bring a tag back.
        g.tag_invalidated("x", 11);
        g.merge(vec![("seq".into(), 13), ("t:y".into(), 12)]);
        assert_eq!(g.tags(), vec!["z".to_owned()]);
        // A floor read from the store drops what it covers, never lowers.
        g.merge(vec![("seq".into(), 13), ("compacted".into(), 13)]);
        assert!(g.tags().is_empty());
        g.compacted(5);
        assert!(!g.is_current(Some(&stamp(12, &["x"]))));
        // A tag invalidated after the compaction is tracked again.
        g.tag_invalidated("x", 14);
        assert_eq!(g.tags(), vec!["x".to_owned()]);
    }

    #[test]
    fn the_horizon_outlives_every_entry_written_before() {
        let s = Duration::from_secs;
        assert_eq!(
            tag_horizon(s(60), 0.1, s(30), s(5), Some(s(10))),
            s(66 + 30) + TAG_SKEW_MARGIN
        );
        assert_eq!(
            tag_horizon(s(1), 0.0, s(0), s(120), Some(s(10))),
            s(120) + TAG_SKEW_MARGIN
        );
        assert_eq!(
            tag_horizon(s(1), 0.0, s(0), s(0), Some(s(10))),
            s(10) + TAG_SKEW_MARGIN
        );
    }

    #[test]
    fn tags_are_bounded() {
        assert!(validate_tags(&["a".into()]).is_ok());
        assert!(validate_tags(&[String::new()]).is_err());
        assert!(validate_tags(&["x".repeat(MAX_TAG_LEN + 1)]).is_err());
        assert!(validate_tags(&vec!["t".to_owned(); MAX_TAGS + 1]).is_err());
    }
}
