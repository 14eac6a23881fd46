//! Key layout: how an id becomes a Redis key.
//!
//! ```text
//! <prefix>:{<entity>:<shard>}:v:<id>   the value (envelope)
//! <prefix>:{<entity>:<shard>}:h:<id>   the value of a `hash` entity (representation.rs)
//! <prefix>:{<entity>:<shard>}:l:<id>   the read lease
//! <prefix>:{<entity>:<shard>}:w:<id>   write bookkeeping (sequence, writes in flight)
//! <prefix>:{<entity>}:meta             the recorded shard layout
//! ```
//!
//! The `{entity:shard}` hash tag keeps every key of one id (value, lease,
//! and later the write-back dirty record) in one Redis Cluster slot, so one
//! Lua script can touch them all. Prefix and entity names cannot contain
//! `:`, `{` or `}`, so the segment after the hash tag always says what a
//! key is, and no id — `42:l`, `x:v:y`, `}` — can reach a bookkeeping key.
//!
//! `shard = xxh3_64(canonical id) mod shards`: a named, stable hash, so every
//! process, in any language, agrees where an id lives.

use crate::error::{Error, Result};
use crate::representation::Representation;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 512;

/// The longest prefix or entity name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// The default number of shards per entity.
pub const DEFAULT_SHARDS: u16 = 64;

/// The name of the shard hash, recorded in the store beside the shard count.
pub(crate) const SHARD_HASH: &str = "xxh3_64";

/// Checks a prefix or entity name: 1–64 characters from `[a-z0-9_-]`.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what,
            name: name.chars().take(80).collect(),
        })
    }
}

/// Checks an already canonical id: not empty, at most [`MAX_ID_LEN`] bytes.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid_id(id, "an id cannot be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::invalid_id(
            id,
            format!(
                "an id can be at most {MAX_ID_LEN} bytes, this one has {}",
                id.len()
            ),
        ));
    }
    Ok(())
}

/// A type usable as a cache key: it renders itself as an id string.
///
/// Integers render in decimal, strings as they are. The cache then passes the
/// id through its source's canonicalisation (an integer key column turns
/// `"007"` into `"7"`) and [`validate_id`].
pub trait CacheKey: Send + Sync {
    /// The id of this key, before canonicalisation.
    fn to_id(&self) -> String;

    /// The same id as [`CacheKey::to_id`], without allocating where the
    /// type allows: integers are written into an inline buffer, strings
    /// are borrowed. A read answered by the near cache then allocates
    /// nothing. Default: [`CacheKey::to_id`], owned.
    fn id_text(&self) -> IdText<'_> {
        IdText::owned(self.to_id())
    }

    /// Appends the same id as [`CacheKey::to_id`] to `out`: a batch's ids
    /// go into one buffer, integers written straight into it. Default:
    /// [`CacheKey::id_text`], appended.
    fn push_id(&self, out: &mut String) {
        out.push_str(&self.id_text());
    }
}

/// An id's text, borrowed, inline (an integer's digits) or owned; derefs
/// to `&str`. See [`CacheKey::id_text`].
#[derive(Debug, Clone)]
pub struct IdText<'a>(IdRepr<'a>);

#[derive(Debug, Clone)]
enum IdRepr<'a> {
    Borrowed(&'a str),
    /// Up to 20 ASCII bytes: every `i64` and `u64` in decimal.
    Inline([u8; INLINE_ID], u8),
    Owned(String),
}

/// The longest id kept inline: `-9223372036854775808` and
/// `18446744073709551615` are 20 bytes.
const INLINE_ID: usize = 20;

impl<'a> IdText<'a> {
    /// A borrowed id.
    pub fn borrowed(id: &'a str) -> Self {
        IdText(IdRepr::Borrowed(id))
    }

    /// An owned id.
    pub fn owned(id: String) -> Self {
        IdText(IdRepr::Owned(id))
    }

    /// An integer's decimal digits, inline (itoa: no `core::fmt` on
    /// every key of a batch).
    fn integer(n: impl itoa::Integer) -> Self {
        let mut digits = itoa::Buffer::new();
        let text = digits.format(n).as_bytes();
        let mut buf = [0u8; INLINE_ID];
        match buf.get_mut(..text.len()) {
            Some(head) => {
                head.copy_from_slice(text);
                // At most INLINE_ID (20), so it fits in a u8.
                IdText(IdRepr::Inline(buf, text.len() as u8))
            }
            // Wider than any integer type implemented here; kept correct anyway.
            None => IdText::owned(String::from_utf8_lossy(text).into_owned()),
        }
    }

    /// The id as an owned `String` (allocates unless already owned).
    pub fn into_owned(self) -> String {
        match self.0 {
            IdRepr::Owned(s) => s,
            _ => self.as_str().to_owned(),
        }
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            IdRepr::Borrowed(s) => s,
            // Written by `write!` of an integer: ASCII digits and a sign.
            IdRepr::Inline(buf, len) => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or("")
            }
            IdRepr::Owned(s) => s,
        }
    }
}

impl std::ops::Deref for IdText<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn to_id(&self) -> String { self.to_string() }
            fn id_text(&self) -> IdText<'_> { IdText::integer(*self) }
            fn push_id(&self, out: &mut String) {
                out.push_str(itoa::Buffer::new().format(*self));
            }
        }
    )*};
}
integer_keys!(i16, i32, i64, u16, u32, u64, usize);

impl CacheKey for str {
    fn to_id(&self) -> String {
        self.to_owned()
    }
    fn id_text(&self) -> IdText<'_> {
        IdText::borrowed(self)
    }
}

impl CacheKey for String {
    fn to_id(&self) -> String {
        self.clone()
    }
    fn id_text(&self) -> IdText<'_> {
        IdText::borrowed(self)
    }
}

impl<T: CacheKey + ?Sized> CacheKey for &T {
    fn to_id(&self) -> String {
        (**self).to_id()
    }
    fn id_text(&self) -> IdText<'_> {
        (**self).id_text()
    }
    fn push_id(&self, out: &mut String) {
        (**self).push_id(out);
    }
}

/// Many short texts (a batch's ids, or their keys), in order, held in one
/// buffer: a batch read without a `String` per key (building one per key
/// of a 100-key `get_many` cost more than its `MGET` command). Built by
/// the cache; stores read keys from it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TextBatch {
    /// The texts, one after another.
    text: String,
    /// Where each text ends in `text`.
    ends: Vec<usize>,
}

impl TextBatch {
    /// Room for `count` texts of `bytes` bytes together.
    pub(crate) fn with_capacity(count: usize, bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(count),
        }
    }

    /// Appends one text, written by `write`.
    pub(crate) fn push_with(&mut self, write: impl FnOnce(&mut String)) {
        write(&mut self.text);
        self.ends.push(self.text.len());
    }

    /// The last text (empty if there is none).
    pub(crate) fn last(&self) -> &str {
        let start = self.start_of_last();
        self.text.get(start..).unwrap_or_default()
    }

    /// Replaces the last text with `text`.
    pub(crate) fn replace_last(&mut self, text: &str) {
        let start = self.start_of_last();
        if self.ends.pop().is_some() {
            self.text.truncate(start);
            self.push_with(|out| out.push_str(text));
        }
    }

    /// Where the last text starts.
    fn start_of_last(&self) -> usize {
        match self.ends.len() {
            0 | 1 => 0,
            n => self.ends[n - 2],
        }
    }

    /// How many texts.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of all texts together.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// The texts, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + Clone + Send + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        // Every end is a char boundary: each text was pushed whole.
        starts
            .zip(&self.ends)
            .map(|(start, &end)| self.text.get(start..end).unwrap_or_default())
    }
}

/// Where the keys of one entity live.
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    prefix: String,
    entity: String,
    /// `<prefix>:{<entity>:`, what every per-id key starts with (kept
    /// whole: a key is built from it, the shard, a segment and the id).
    namespace: String,
    shards: u16,
    /// Values are Redis hashes (`h:`), not strings (`v:`).
    hash: bool,
    /// Each shard's value keys up to the id, `<namespace><shard>}:v:`, so
    /// that a value key (every read builds one) is two pieces; none above
    /// [`MAX_HEADS`] shards, whose keys are built piece by piece.
    value_heads: Arc<[Box<str>]>,
}

/// The most shards whose value-key heads are kept (64 bytes or so each).
const MAX_HEADS: u16 = 1024;

/// Which kind of key, the one-letter segment after the hash tag.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyKind {
    Value,
    Lease,
    Write,
    Dirty,
    /// A collection's meta (envelope fields, complete flag, count).
    CollectionMeta,
    /// A collection's staging key, renamed over the value by the last chunk of a fill.
    CollectionStaging,
    /// An entry's waiter flag: someone waits for another holder's fill.
    Waiter,
}

impl KeyKind {
    /// What follows the shard in a key of this kind, up to the id:
    /// `}:<letter>:` (one piece to copy when a key is built).
    fn segment(self) -> &'static str {
        match self {
            KeyKind::Value => "}:v:",
            KeyKind::Lease => "}:l:",
            KeyKind::Write => "}:w:",
            KeyKind::Dirty => "}:d:",
            KeyKind::CollectionMeta => "}:m:",
            KeyKind::CollectionStaging => "}:s:",
            KeyKind::Waiter => "}:a:",
        }
    }
}

impl KeySpace {
    pub(crate) fn new(prefix: &str, entity: &str, shards: u16) -> Result<Self> {
        validate_name("prefix", prefix)?;
        validate_name("entity", entity)?;
        Self::validate_shards(shards)?;
        let mut keys = Self {
            prefix: prefix.to_owned(),
            entity: entity.to_owned(),
            namespace: format!("{prefix}:{{{entity}:"),
            shards,
            hash: false,
            value_heads: Arc::new([]),
        };
        keys.value_heads = keys.heads();
        Ok(keys)
    }

    /// The same keys with values held as `representation`: a hash entity's
    /// value keys have the segment `h:`, and its layout records it.
    pub(crate) fn with_representation(mut self, representation: Representation) -> Self {
        self.hash = representation == Representation::Hash;
        self.value_heads = self.heads();
        self
    }

    /// The value-key heads of every shard (see `value_heads`).
    fn heads(&self) -> Arc<[Box<str>]> {
        if self.shards > MAX_HEADS {
            return Arc::new([]);
        }
        (0..self.shards)
            .map(|shard| {
                let mut head = String::new();
                self.push_head(KeyKind::Value, shard, &mut head);
                head.into_boxed_str()
            })
            .collect()
    }

    /// How values are held.
    pub(crate) fn representation(&self) -> Representation {
        if self.hash {
            Representation::Hash
        } else {
            Representation::String
        }
    }

    /// A shard count is at least 1 ([`Error::InvalidSetting`] `shards`).
    pub(crate) fn validate_shards(shards: u16) -> Result<()> {
        if shards == 0 {
            return Err(Error::setting("shards", "must be at least 1"));
        }
        Ok(())
    }

    pub(crate) fn entity(&self) -> &str {
        &self.entity
    }

    /// The shard of a canonical id.
    pub(crate) fn shard(&self, id: &str) -> u16 {
        // The remainder is below `shards`, a u16, so the cast cannot truncate.
        (xxh3_64(id.as_bytes()) % u64::from(self.shards)) as u16
    }

    pub(crate) fn key(&self, kind: KeyKind, id: &str) -> String {
        // Built in one allocation of the exact size (a hot path: every
        // read asks for its value key).
        let mut key = String::with_capacity(self.key_len(id));
        self.push_key(kind, id, &mut key);
        key
    }

    /// The most bytes the key of `id` takes (a shard has at most 5 digits).
    fn key_len(&self, id: &str) -> usize {
        self.namespace.len() + id.len() + 9
    }

    /// Appends the key of `id` to `out`: a value key in two pieces.
    fn push_key(&self, kind: KeyKind, id: &str, out: &mut String) {
        let shard = self.shard(id);
        let head = match kind {
            KeyKind::Value => self.value_heads.get(usize::from(shard)),
            _ => None,
        };
        match head {
            Some(head) => out.push_str(head),
            None => self.push_head(kind, shard, out),
        }
        out.push_str(id);
    }

    /// Appends a key of `shard` up to the id: `<namespace><shard>}:<letter>:`.
    fn push_head(&self, kind: KeyKind, shard: u16, out: &mut String) {
        out.push_str(&self.namespace);
        out.push_str(itoa::Buffer::new().format(shard));
        out.push_str(match kind {
            KeyKind::Value if self.hash => "}:h:",
            _ => kind.segment(),
        });
    }

    pub(crate) fn value_key(&self, id: &str) -> String {
        self.key(KeyKind::Value, id)
    }

    /// The value keys of `ids`, in order, in one buffer (see [`TextBatch`]).
    pub(crate) fn value_keys<'a>(&self, ids: impl Iterator<Item = &'a str> + Clone) -> TextBatch {
        let (count, bytes) = ids
            .clone()
            .fold((0, 0), |(n, len), id| (n + 1, len + self.key_len(id)));
        let mut batch = TextBatch::with_capacity(count, bytes);
        for id in ids {
            batch.push_with(|out| self.push_key(KeyKind::Value, id, out));
        }
        batch
    }

    pub(crate) fn lease_key(&self, id: &str) -> String {
        self.key(KeyKind::Lease, id)
    }

    /// The key of an id's write bookkeeping (sequence and writes in flight).
    pub(crate) fn write_key(&self, id: &str) -> String {
        self.key(KeyKind::Write, id)
    }

    /// The key of an id's write-back dirty record.
    pub(crate) fn dirty_key(&self, id: &str) -> String {
        self.key(KeyKind::Dirty, id)
    }

    /// The number of shards.
    pub(crate) fn shards(&self) -> u16 {
        self.shards
    }

    /// A per-shard key: `<prefix>:{<entity>:<shard>}:<name>`. `name` has no
    /// `:`, so it never equals a per-id key (`<letter>:<id>`).
    pub(crate) fn shard_key(&self, shard: u16, name: &str) -> String {
        // Pieces into one exact allocation, not `format!` (every write-back
        // write names two of these).
        let mut key = String::with_capacity(self.namespace.len() + 7 + name.len());
        key.push_str(&self.namespace);
        key.push_str(itoa::Buffer::new().format(shard));
        key.push_str("}:");
        key.push_str(name);
        key
    }

    /// The prefix of every per-id key of one kind in a shard (the id follows).
    pub(crate) fn shard_prefix(&self, shard: u16, kind: KeyKind) -> String {
        let mut prefix = self.shard_key(shard, "");
        // `}:` is there already; the segment's letter and `:` follow.
        prefix.push_str(&kind.segment()[2..]);
        prefix
    }

    /// The pub/sub channel this entity's fills are announced on, to
    /// callers waiting for them: `<prefix>:{<entity>}:fills` (not a key).
    pub(crate) fn fill_channel(&self) -> String {
        format!("{}:{{{}}}:fills", self.prefix, self.entity)
    }

    /// What every per-id and per-shard key of this entity starts with:
    /// `<prefix>:{<entity>:` (the shard, `}`, the kind and the id follow).
    pub(crate) fn namespace(&self) -> String {
        self.namespace.clone()
    }

    /// The name of this entity in the source's fence table:
    /// `<prefix>:<entity>`, so caches under other prefixes never fence each other.
    pub(crate) fn fence_name(&self) -> String {
        format!("{}:{}", self.prefix, self.entity)
    }

    /// The key holding this entity's recorded layout.
    pub(crate) fn meta_key(&self) -> String {
        format!("{}:{{{}}}:meta", self.prefix, self.entity)
    }

    /// The key of this entity's generations (purge and tags; see
    /// `generation.rs`): one key, beside `meta`.
    pub(crate) fn generations_key(&self) -> String {
        format!("{}:{{{}}}:gen", self.prefix, self.entity)
    }

    /// The pub/sub channel of this prefix's invalidations (all entities).
    pub(crate) fn channel(&self) -> String {
        format!("{}:invalidations", self.prefix)
    }

    /// The layout as recorded in the store: `shards=<n>;hash=xxh3_64`,
    /// and `;representation=hash` for a hash entity (a record without it
    /// means `string`, so existing deployments start as before).
    pub(crate) fn layout(&self) -> String {
        if self.hash {
            format!(
                "shards={};hash={SHARD_HASH};representation=hash",
                self.shards
            )
        } else {
            format!("shards={};hash={SHARD_HASH}", self.shards)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_text_is_to_id_without_a_copy() {
        fn same<K: CacheKey + ?Sized>(key: &K) {
            assert_eq!(key.id_text().as_str(), key.to_id());
            assert_eq!(key.id_text().into_owned(), key.to_id());
        }
        same(&i64::MIN);
        same(&i64::MAX);
        same(&u64::MAX);
        same(&0u64);
        same(&-1i32);
        same(&i16::MIN);
        same(&usize::MAX);
        same("ada");
        same(&String::from("grace"));
        same(&&42u64);
        let mut ids = String::from("x");
        for key in [&7u64 as &dyn CacheKey, &-3i16, &"ada", &String::from("é")] {
            key.push_id(&mut ids);
        }
        assert_eq!(ids, "x7-3adaé");
        assert!(matches!(42u64.id_text().0, IdRepr::Inline(..)));
        assert!(matches!("x".id_text().0, IdRepr::Borrowed(_)));
    }

    #[test]
    fn names_are_restricted() {
        assert!(validate_name("prefix", "app_1-x").is_ok());
        for bad in ["", "App", "a:b", "a{b", "a}b", "a b", &"x".repeat(65)] {
            assert!(validate_name("prefix", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ids_are_bounded() {
        assert!(validate_id("1").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id(&"x".repeat(MAX_ID_LEN)).is_ok());
        assert!(validate_id(&"x".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn layout_matches_the_design() {
        let ks = KeySpace::new("app", "users", 64).expect("valid");
        let shard = xxh3_64(b"42") % 64;
        assert_eq!(ks.value_key("42"), format!("app:{{users:{shard}}}:v:42"));
        assert_eq!(ks.lease_key("42"), format!("app:{{users:{shard}}}:l:42"));
        assert_eq!(ks.meta_key(), "app:{users}:meta");
        assert_eq!(ks.shard_key(7, "q"), "app:{users:7}:q");
        assert_eq!(ks.shard_key(63, "xv"), "app:{users:63}:xv");
        assert_eq!(ks.shard_prefix(7, KeyKind::Dirty), "app:{users:7}:d:");
        assert_eq!(ks.generations_key(), "app:{users}:gen");
        assert_eq!(ks.channel(), "app:invalidations");
    }

    #[test]
    fn no_id_reaches_a_bookkeeping_key() {
        let ks = KeySpace::new("app", "users", 8).expect("valid");
        let ids = [
            "42", "42:l", "l:42", "x:v:y", "}", "{", "}:l:42", ":meta", "v:1",
        ];
        let mut value_keys = std::collections::HashSet::new();
        for id in ids {
            let v = ks.value_key(id);
            assert!(value_keys.insert(v.clone()), "two ids share {v}");
            for other in ids {
                assert_ne!(
                    v,
                    ks.lease_key(other),
                    "value of {id:?} is lease of {other:?}"
                );
            }
            assert_ne!(v, ks.meta_key());
            // What follows the hash tag always starts with the kind letter.
            let tag_end = v.find('}').expect("hash tag");
            assert!(v[tag_end..].starts_with("}:v:"), "{v}");
        }
    }

    #[test]
    fn value_keys_are_the_same_with_or_without_kept_heads() {
        for shards in [1, 64, MAX_HEADS, MAX_HEADS + 1, u16::MAX] {
            let ks = KeySpace::new("app", "users", shards).expect("valid");
            let hashed = ks.clone().with_representation(Representation::Hash);
            for id in ["42", "ada", "x:v:y", ""] {
                let shard = ks.shard(id);
                assert_eq!(ks.value_key(id), format!("app:{{users:{shard}}}:v:{id}"));
                assert_eq!(
                    hashed.value_key(id),
                    format!("app:{{users:{shard}}}:h:{id}")
                );
                assert_eq!(ks.lease_key(id), format!("app:{{users:{shard}}}:l:{id}"));
            }
        }
    }

    #[test]
    fn a_key_batch_holds_each_value_key_in_order() {
        let ks = KeySpace::new("app", "users", 64).expect("valid");
        let ids = ["1", "22", "ada", "1"];
        let batch = ks.value_keys(ids.iter().copied());
        assert_eq!(batch.len(), ids.len());
        let keys: Vec<&str> = batch.iter().collect();
        let one_by_one: Vec<String> = ids.iter().map(|id| ks.value_key(id)).collect();
        assert_eq!(keys, one_by_one);
        assert_eq!(
            batch.text_len(),
            one_by_one.iter().map(String::len).sum::<usize>()
        );
        assert!(ks.value_keys(std::iter::empty()).is_empty());
    }

    #[test]
    fn a_text_batch_replaces_its_last_text_only() {
        let mut batch = TextBatch::with_capacity(3, 8);
        assert_eq!(batch.last(), "");
        for text in ["007", "8", "09"] {
            batch.push_with(|out| out.push_str(text));
            let trimmed = batch.last().trim_start_matches('0').to_owned();
            batch.replace_last(&trimmed);
        }
        assert_eq!(batch.iter().collect::<Vec<_>>(), ["7", "8", "9"]);
        assert_eq!(batch.text_len(), 3);
    }

    #[test]
    fn shard_is_stable_and_in_range() {
        let ks = KeySpace::new("p", "e", 7).expect("valid");
        for i in 0..1000 {
            let id = i.to_string();
            assert!(ks.shard(&id) < 7);
            assert_eq!(ks.shard(&id), ks.shard(&id));
        }
    }
}
