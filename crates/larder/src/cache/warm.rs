//! Pre-warming: fill a cold cache before traffic arrives.
//!
//! Keys are warmed in batches: one pipeline takes every key's lease, one
//! `load_many` reads the rows, one pipeline fills them. Warming follows the
//! fill rule of every other load — it writes only while its lease holds —
//! so it never overwrites a value written (or invalidated) after its load
//! began, and it skips keys another process is loading right now.

use super::{Cache, Inner};
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::store::{Acquired, LeaseRequest};
use std::sync::Arc;

/// Keys per batch of [`Cache::warm`] and [`Cache::warm_all`] by default
/// (see [`WarmOptions::batch`]).
pub const WARM_BATCH: usize = 500;

/// How [`Cache::warm`] and [`Cache::warm_all`] go about it, builder-style:
/// `WarmOptions::default().batch(100)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmOptions {
    batch: usize,
}

impl Default for WarmOptions {
    fn default() -> Self {
        Self { batch: WARM_BATCH }
    }
}

impl WarmOptions {
    /// Keys per batch: one lease pipeline, one `load_many` (or one page of
    /// the source) and one fill pipeline each; at least 1.
    /// Default: [`WARM_BATCH`] (500).
    pub fn batch(mut self, keys: usize) -> Self {
        self.batch = keys;
        self
    }

    /// The batch size these options warm with.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Refuses a batch of zero keys.
    fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Config(
                "the warm-up batch size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// How far a warm-up got; reported after every batch and returned at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Keys handled so far.
    pub done: u64,
    /// Keys to handle in all, when known in advance.
    pub total: Option<u64>,
    /// Entries written to the store.
    pub written: u64,
    /// Keys left alone: another process was loading them, or a newer write
    /// or invalidation voided the warm-up's lease.
    pub skipped: u64,
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// Loads `keys` from the source and writes them into the cache in
    /// batches of `options`' size, calling `progress` after each batch.
    /// Rows that do not exist are cached as "not found".
    pub async fn warm(
        &self,
        keys: &[&K],
        options: WarmOptions,
        mut progress: impl FnMut(WarmProgress),
    ) -> Result<WarmProgress> {
        options.validate()?;
        let ids = keys
            .iter()
            .map(|k| self.id_of(k))
            .collect::<Result<Vec<_>>>()?;
        let mut state = WarmProgress {
            total: Some(ids.len() as u64),
            ..WarmProgress::default()
        };
        for batch in ids.chunks(options.batch) {
            self.inner.warm_batch(batch.to_vec(), &mut state).await?;
            progress(state);
        }
        Ok(state)
    }

    /// Streams every row of the source in key order, a batch of `options`'
    /// size at a time, and warms each batch; `progress` is called after each
    /// one. Needs a source that can list its rows (a
    /// [`SqlSource`](crate::SqlSource) can).
    pub async fn warm_all(
        &self,
        options: WarmOptions,
        mut progress: impl FnMut(WarmProgress),
    ) -> Result<WarmProgress> {
        let source = self.inner.require_source()?;
        options.validate()?;
        let batch = options.batch;
        let mut state = WarmProgress::default();
        let mut after: Option<String> = None;
        loop {
            let page = source.load_page(after.as_deref(), batch).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let ids: Vec<String> = page.into_iter().map(|(id, _)| id).collect();
            let full = ids.len() == batch;
            self.inner.warm_batch(ids, &mut state).await?;
            progress(state);
            if !full {
                break;
            }
        }
        Ok(state)
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// Leases, loads and fills one batch of canonical ids.
    async fn warm_batch(
        self: &Arc<Self>,
        ids: Vec<String>,
        state: &mut WarmProgress,
    ) -> Result<()> {
        self.require_source()?;
        self.check_layout().await?;
        let batch_len = ids.len();
        state.done += batch_len as u64;
        let requests: Vec<LeaseRequest> =
            ids.iter().map(|id| self.lease_request(id, false)).collect();
        let acquired = self.store.acquire_many(&requests).await?;
        let leased: Vec<(String, LeaseRequest)> = ids
            .into_iter()
            .zip(requests)
            .zip(acquired)
            .filter_map(|(pair, got)| matches!(got, Acquired::Lease { .. }).then_some(pair))
            .collect();
        // Keys whose lease another process holds: it is loading them now.
        state.skipped += (batch_len - leased.len()) as u64;
        if leased.is_empty() {
            return Ok(());
        }
        for (_, _, landed) in self.load_and_fill_many(leased).await? {
            if landed.is_some() {
                state.written += 1;
            } else {
                state.skipped += 1;
            }
        }
        Ok(())
    }
}
