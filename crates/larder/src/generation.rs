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
//!
//! A purge or a tag invalidation is one script: increment `seq`, store it in
//! its field. Every entry is **stamped** (in its envelope) with the `seq`
//! its filler knew *before* the load began, and with its tags. An entry is
//! current only if its stamp is at least `purge` and at least the `seq` of
//! each of its tags; otherwise it was invalidated and is a miss (never
//! stale).
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

use crate::error::{Error, Result};
use bytes::{BufMut, Bytes};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The most tags one entry may carry.
pub const MAX_TAGS: usize = 32;

/// The longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 128;

/// The hash field of the `seq` counter.
pub(crate) const SEQ_FIELD: &str = "seq";
/// The hash field of the last purge.
pub(crate) const PURGE_FIELD: &str = "purge";

/// The hash field of a tag's last invalidation.
pub(crate) fn tag_field(tag: &str) -> String {
    format!("t:{tag}")
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
    tags: RwLock<HashMap<String, u64>>,
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
        let tags = self.tags.read().unwrap_or_else(|p| p.into_inner());
        stamp
            .tags
            .iter()
            .all(|t| tags.get(t).is_none_or(|&at| seq >= at))
    }

    /// A purge at `seq` (from this instance or the bus).
    pub(crate) fn purged(&self, seq: u64) {
        self.purge.fetch_max(seq, Ordering::AcqRel);
        self.seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// A tag invalidated at `seq`.
    pub(crate) fn tag_invalidated(&self, tag: &str, seq: u64) {
        {
            let mut tags = self.tags.write().unwrap_or_else(|p| p.into_inner());
            let at = tags.entry(tag.to_owned()).or_default();
            *at = (*at).max(seq);
        }
        self.seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// Merges the store's hash into the copy (fields as
    /// [`Store::generations`](crate::store::Store::generations) answers),
    /// field by field, keeping the larger value: a reply read before a
    /// purge or tag invalidation this copy already knows of (a late reply,
    /// or one from a lagging read) never moves a generation backwards.
    pub(crate) fn merge(&self, fields: Vec<(String, u64)>) {
        let mut seq = 0;
        let mut purge = 0;
        let mut tags = HashMap::new();
        for (field, value) in fields {
            match field.as_str() {
                SEQ_FIELD => seq = value,
                PURGE_FIELD => purge = value,
                other => {
                    if let Some(tag) = other.strip_prefix("t:") {
                        tags.insert(tag.to_owned(), value);
                    }
                }
            }
        }
        // Tags and purge first: a reader must never see the new `seq`
        // with the old invalidations (it would stamp too high).
        {
            let mut known = self.tags.write().unwrap_or_else(|p| p.into_inner());
            for (tag, at) in tags {
                let known = known.entry(tag).or_default();
                *known = (*known).max(at);
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
    fn tags_are_bounded() {
        assert!(validate_tags(&["a".into()]).is_ok());
        assert!(validate_tags(&[String::new()]).is_err());
        assert!(validate_tags(&["x".repeat(MAX_TAG_LEN + 1)]).is_err());
        assert!(validate_tags(&vec!["t".to_owned(); MAX_TAGS + 1]).is_err());
    }
}
