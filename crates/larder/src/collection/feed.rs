//! Feeds: [`FeedCache`], each owner's first `max_len` items cached as one
//! Redis list (head first, in the feed's order), read-through from a
//! [`FeedSource`], appended and deleted through.
//!
//! Each element is `id NUL sort-key NUL row-json`: the id lets a delete
//! find its element, the sort key lets an append decide in Rust whether
//! the new item goes before the head.
//!
//! # Behavior
//! - A page is one round trip: the meta and `LRANGE` in one `MULTI`/`EXEC`
//!   (atomic, so never one fill's meta with another's list).
//! - A miss loads the first `max_len + 1` items once per expiry across
//!   processes (lease + single flight) and fills in chunks; more than
//!   `max_len`: the list holds `max_len` and is not complete.
//! - A page reaching past `max_len` of a feed that is not complete is
//!   answered from the database and not cached
//!   ([`CollectionOutcome::Database`], `X-Cache: db`). An owner with no
//!   items is a cached, complete, empty feed.
//! - An append: the database first; then, under the owner's write ticket,
//!   if the feed is cached, no other write overlapped and the new item
//!   sorts before the current head, `LPUSH` + `LTRIM` in one script that
//!   checks the head is unchanged; otherwise the list is deleted.
//! - A delete: the database first; then the element is removed from a
//!   complete cached feed, and any other cached feed is deleted.

use super::read_through::{self, fill_chunks, Cached, Filled, FromLoad, Kind};
use super::{common_setters, CommonSettings};
use super::{CollectionRead, CollectionStats, Core, Counters, FeedItem, FeedSource};
use crate::error::{Error, Result};
use crate::flight::Flights;
use crate::key::validate_id;
use crate::store::{CollectionKeys, CollectionMeta, FeedChunk, FeedRead, FeedWriteEnd};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The longest page a feed read may ask for.
pub const MAX_FEED_PAGE: usize = 1000;

/// The largest `offset` a page may start at: `offset + limit` stays far
/// inside `u64`, and a database's `OFFSET` (a signed 64-bit integer)
/// takes it.
pub const MAX_FEED_OFFSET: u64 = 1 << 62;

/// Elements per fill chunk (far below Lua's `unpack` limit).
const CHUNK: usize = 1000;

/// A page of a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    /// The items' rows (JSON text), in the feed's order.
    pub items: Vec<String>,
    /// Whether more items follow.
    pub more: bool,
}

/// A cache of feeds, one per owner; a cheap clone over `Arc<Inner>`.
#[derive(Clone)]
pub struct FeedCache {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    source: Arc<dyn FeedSource>,
    max_len: u64,
    flights: Flights<Result<Filled<FeedLoad>>>,
}

impl std::fmt::Debug for FeedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedCache")
            .field("name", &self.inner.core.keys.entity())
            .field("max_len", &self.inner.max_len)
            .finish()
    }
}

/// What a load of one owner holds.
#[derive(Debug)]
pub(crate) struct FeedLoad {
    /// The first items (at most `max_len`).
    items: Vec<FeedItem>,
    /// Whether that is all.
    complete: bool,
}

/// A read's question: a page.
#[derive(Clone, Copy)]
pub(crate) struct Ask {
    offset: u64,
    limit: usize,
}

/// Builds a [`FeedCache`]; consuming, finish with [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct FeedCacheBuilder {
    common: CommonSettings,
    source: Option<Arc<dyn FeedSource>>,
    max_len: u64,
}

impl FeedCache {
    /// Starts a builder.
    pub fn builder() -> FeedCacheBuilder {
        FeedCacheBuilder {
            common: CommonSettings::default(),
            source: None,
            max_len: 1000,
        }
    }
}

impl FeedCacheBuilder {
    common_setters!("feed");

    /// The source. Required.
    pub fn source(mut self, source: impl FeedSource) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Items cached per owner. At least 1. Default: 1000.
    pub fn max_len(mut self, max_len: u64) -> Self {
        self.max_len = max_len;
        self
    }

    /// Checks the settings and builds ([`Error::InvalidSetting`] naming a
    /// missing or out-of-range setting).
    pub async fn build(self) -> Result<FeedCache> {
        let required = self.common.required("feed")?;
        let source = self
            .source
            .ok_or_else(|| Error::setting("source", "a feed needs a source"))?;
        let core = self.common.into_core(required, ("max_len", self.max_len))?;
        Ok(FeedCache {
            inner: Arc::new(Inner {
                core,
                source,
                max_len: self.max_len,
                flights: Flights::new(),
            }),
        })
    }
}

/// `id NUL sort NUL row`.
fn element(item: &FeedItem) -> Vec<u8> {
    let mut e = Vec::with_capacity(item.id.len() + item.sort.len() + item.row.len() + 2);
    e.extend_from_slice(item.id.as_bytes());
    e.push(0);
    e.extend_from_slice(item.sort.as_bytes());
    e.push(0);
    e.extend_from_slice(item.row.as_bytes());
    e
}

/// The sort key and row of an element.
fn parts(e: &[u8]) -> Option<(&str, &str)> {
    let mut it = e.splitn(3, |b| *b == 0);
    let _id = it.next()?;
    let sort = std::str::from_utf8(it.next()?).ok()?;
    let row = std::str::from_utf8(it.next()?).ok()?;
    Some((sort, row))
}

/// The row of an element, in the element's own buffer (a hit's elements
/// are each owned once, so this moves the row's bytes rather than copying
/// them into a new allocation).
fn row_of(element: bytes::Bytes) -> Option<String> {
    let mut e = Vec::from(element);
    let mut nuls = e
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == 0)
        .map(|(i, _)| i);
    let (id_end, sort_end) = (nuls.next()?, nuls.next()?);
    // As `parts`: an element whose sort key is not text is skipped.
    std::str::from_utf8(e.get(id_end + 1..sort_end)?).ok()?;
    e.drain(..=sort_end);
    String::from_utf8(e).ok()
}

impl FeedCache {
    /// The feed's name.
    pub fn name(&self) -> &str {
        self.inner.core.keys.entity()
    }

    /// The counters.
    pub fn stats(&self) -> CollectionStats {
        self.inner.core.stats()
    }

    fn owner(&self, raw: &str) -> Result<String> {
        let owner = self.inner.source.canonical_owner(raw)?;
        validate_id(&owner)?;
        Ok(owner)
    }

    /// Up to `limit` (at most [`MAX_FEED_PAGE`]) items from `offset` (at
    /// most [`MAX_FEED_OFFSET`]).
    pub async fn page(
        &self,
        owner: &str,
        offset: u64,
        limit: usize,
    ) -> Result<CollectionRead<FeedPage>> {
        if limit > MAX_FEED_PAGE {
            return Err(Error::setting("limit", format!("at most {MAX_FEED_PAGE}")));
        }
        if offset > MAX_FEED_OFFSET {
            return Err(Error::setting(
                "offset",
                format!("at most {MAX_FEED_OFFSET}"),
            ));
        }
        let owner = self.owner(owner)?;
        read_through::read(self, &owner, Ask { offset, limit }).await
    }

    /// Appends a row to `owner`'s feed: the database first, then the
    /// cached list (see the module docs). The stored row (JSON text).
    pub async fn append(&self, owner: &str, row: Map<String, Value>) -> Result<String> {
        let owner = self.owner(owner)?;
        let this = self.clone();
        tokio::spawn(async move { this.append_detached(owner, row).await })
            .await
            .map_err(|e| Error::Internal {
                what: format!("a feed append panicked: {e}"),
            })?
    }

    async fn append_detached(&self, owner: String, row: Map<String, Value>) -> Result<String> {
        let core = &self.inner.core;
        let colls = core.collections()?;
        let keys = core.owner_keys(&owner);
        let (seq, clean) = colls
            .collection_write_begin(&keys, core.settings.write_ttl)
            .await?;
        let result = self.inner.source.append(&owner, &row).await;
        let end = match &result {
            Ok(item) => match colls.feed_read(&keys, 0, 1).await {
                Ok(FeedRead::Hit { elements, .. }) => match elements.first() {
                    None => FeedWriteEnd::Push {
                        element: element(item),
                        head: None,
                        max_len: self.inner.max_len,
                    },
                    Some(head) => match parts(head) {
                        Some((sort, _)) if self.inner.source.compare(&item.sort, sort).is_lt() => {
                            FeedWriteEnd::Push {
                                element: element(item),
                                head: Some(head.to_vec()),
                                max_len: self.inner.max_len,
                            }
                        }
                        _ => FeedWriteEnd::Delete,
                    },
                },
                _ => FeedWriteEnd::Delete,
            },
            Err(Error::Source { .. } | Error::InvalidId { .. } | Error::InvalidRow { .. }) => {
                FeedWriteEnd::Abort
            }
            Err(_) => FeedWriteEnd::Delete,
        };
        self.end(&keys, seq, clean, &end).await;
        result.map(|item| item.row)
    }

    async fn end(
        &self,
        keys: &crate::store::CollectionKeys,
        seq: u64,
        clean: bool,
        end: &FeedWriteEnd,
    ) {
        let core = &self.inner.core;
        let Ok(colls) = core.collections() else {
            return;
        };
        match colls.feed_write_end(keys, seq, clean, end).await {
            Ok(true) => Counters::bump(&core.counters.writes_applied),
            Ok(false) => Counters::bump(&core.counters.writes_deleted),
            Err(e) => tracing::warn!(feed = self.name(), error = %e, "could not end a feed write"),
        }
    }

    /// Deletes an item: the database first, then the cached feed (the
    /// element removed from a complete feed; any other cached feed
    /// deleted). Whether the item was there.
    pub async fn delete(&self, owner: &str, item: &str) -> Result<bool> {
        let owner = self.owner(owner)?;
        let item = self.inner.source.canonical_item(item)?;
        validate_id(&item)?;
        let this = self.clone();
        tokio::spawn(async move {
            let core = &this.inner.core;
            let colls = core.collections()?;
            let keys = core.owner_keys(&owner);
            let (seq, clean) = colls
                .collection_write_begin(&keys, core.settings.write_ttl)
                .await?;
            let result = this.inner.source.delete(&owner, &item).await;
            let end = match &result {
                Ok(true) => FeedWriteEnd::Remove { id: item.clone() },
                Ok(false) | Err(Error::Source { .. } | Error::InvalidId { .. }) => {
                    FeedWriteEnd::Abort
                }
                Err(_) => FeedWriteEnd::Delete,
            };
            this.end(&keys, seq, clean, &end).await;
            result
        })
        .await
        .map_err(|e| Error::Internal {
            what: format!("a feed delete panicked: {e}"),
        })?
    }

    /// Invalidates every owner's cached feed, on every instance (the
    /// store is shared): the next read of each loads. For a TRUNCATE or a
    /// gap in change notifications; it scans the store (`SCAN`), so it is
    /// not for the read or write path. Returns how many owners had keys.
    pub async fn purge(&self) -> Result<u64> {
        self.inner.core.purge().await
    }

    /// Deletes `owner`'s cached feed; the next read loads it.
    pub async fn invalidate(&self, owner: &str) -> Result<()> {
        let owner = self.owner(owner)?;
        let core = &self.inner.core;
        core.collections()?
            .collection_invalidate(&core.owner_keys(&owner))
            .await
    }
}

#[async_trait::async_trait]
impl Kind for FeedCache {
    const WHAT: &'static str = "feed";
    type Ask = Ask;
    type Said = FeedPage;
    type Answer = Vec<bytes::Bytes>;
    type Load = FeedLoad;

    fn core(&self) -> &Core {
        &self.inner.core
    }

    fn flights(&self) -> &Flights<Result<Filled<FeedLoad>>> {
        &self.inner.flights
    }

    /// The elements of the page, if the cached list holds all of it (a
    /// page past `max_len` of a feed that is not complete: the database).
    async fn read_cached(
        &self,
        keys: &CollectionKeys,
        ask: &Ask,
    ) -> Result<Cached<Vec<bytes::Bytes>>> {
        let want = ask.limit as u64 + 1;
        let read = self
            .inner
            .core
            .collections()?
            .feed_read(keys, ask.offset, want)
            .await?;
        Ok(match read {
            FeedRead::Miss => Cached::Miss,
            FeedRead::Hit { meta, elements } => Cached::Hit {
                meta,
                answer: (meta.complete || ask.offset + ask.limit as u64 <= meta.count)
                    .then_some(elements),
            },
        })
    }

    fn said_from_cache(
        &self,
        ask: &Ask,
        meta: CollectionMeta,
        elements: Vec<bytes::Bytes>,
    ) -> FeedPage {
        let mut items: Vec<String> = elements.into_iter().filter_map(row_of).collect();
        // An incomplete list has more in the database.
        let more = items.len() > ask.limit || !meta.complete;
        items.truncate(ask.limit);
        FeedPage { items, more }
    }

    fn said_from_load(&self, ask: &Ask, load: &FeedLoad) -> FromLoad<FeedPage> {
        let Ask { offset, limit } = *ask;
        if !load.complete && offset + limit as u64 > load.items.len() as u64 {
            return FromLoad::Database(None);
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut page: Vec<String> = load
            .items
            .iter()
            .skip(start)
            .take(limit + 1)
            .map(|i| i.row.clone())
            .collect();
        let more = page.len() > limit || !load.complete;
        page.truncate(limit);
        FromLoad::Said(FeedPage { items: page, more })
    }

    async fn said_from_source(
        &self,
        owner: &str,
        ask: &Ask,
        _count: Option<u64>,
    ) -> Result<FeedPage> {
        let mut items: Vec<String> = self
            .inner
            .source
            .load(owner, ask.offset, ask.limit as u64 + 1)
            .await?
            .into_iter()
            .map(|i| i.row)
            .collect();
        let more = items.len() > ask.limit;
        items.truncate(ask.limit);
        Ok(FeedPage { items, more })
    }

    /// The first `max_len + 1` items: whether there are more than `max_len`.
    async fn load_source(&self, owner: &str) -> Result<FeedLoad> {
        let max = self.inner.max_len;
        let mut items = self.inner.source.load(owner, 0, max + 1).await?;
        let complete = items.len() as u64 <= max;
        items.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        Ok(FeedLoad { items, complete })
    }

    /// A fill that fails counts as refused (the lease released here).
    async fn fill(&self, keys: &CollectionKeys, token: &str, load: &FeedLoad) -> Result<bool> {
        let core = &self.inner.core;
        let colls = core.collections()?;
        let meta = core.fill_meta(load.complete, load.items.len() as u64);
        let ttl = core.settings.kept();
        let elements: Vec<Vec<u8>> = load.items.iter().map(element).collect();
        let elements = elements.as_slice();
        let filled = fill_chunks(
            elements.len(),
            CHUNK,
            meta,
            move |range, first, last| async move {
                colls
                    .feed_fill_chunk(
                        keys,
                        &FeedChunk {
                            token,
                            first,
                            last,
                            elements: &elements[range],
                            ttl,
                        },
                    )
                    .await
            },
        )
        .await;
        match filled {
            Ok(landed) => Ok(landed),
            Err(e) => {
                tracing::debug!(feed = self.name(), error = %e, "could not fill a feed");
                let _ = colls.collection_release(keys, token).await;
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_reads_the_row_that_parts_reads() {
        for e in [
            &b"12\0[5,\"b\"]\0{\"id\":12,\"body\":\"\xc3\xa9\"}"[..],
            b"1\0[]\0",
            b"\0\0{}",
        ] {
            let row = parts(e).map(|(_, row)| row.to_owned());
            assert!(row.is_some());
            assert_eq!(row_of(bytes::Bytes::copy_from_slice(e)), row);
        }
        for e in [&b"1\0no second nul"[..], b"1\0\xff\0{}", b"1\0[]\0\xff"] {
            assert_eq!(parts(e), None);
            assert_eq!(row_of(bytes::Bytes::copy_from_slice(e)), None);
        }
    }
}
