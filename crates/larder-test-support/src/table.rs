//! An in-memory table behind a cache, for the tests that need a database
//! they can steer: count its loads, hold a load in flight at a gate, slow
//! it down, make it fail or refuse writes. Every instance of a test's cache
//! shares one [`Table`] as the one database behind them.

use async_trait::async_trait;
use larder::{Error, Source};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// A row kept in a [`Table`]: its key is an integer, which is also its
/// canonical id (`"7"`, never `"07"`).
pub trait Keyed: Clone + Send + Sync + 'static {
    /// The row's key.
    fn key(&self) -> u64;
}

/// The rows and the knobs; see the module docs. Build with [`Table::with`]
/// and put it behind a cache as a [`TableSource`].
pub struct Table<V> {
    entity: String,
    rows: Mutex<BTreeMap<u64, V>>,
    loads: AtomicUsize,
    batch_loads: AtomicUsize,
    failing: AtomicBool,
    rejecting: AtomicBool,
    gate: Mutex<Option<Arc<Semaphore>>>,
    entered: Notify,
    slow: Mutex<Option<Duration>>,
    normalise: Mutex<Option<fn(&mut V)>>,
}

/// Locks `m`, ignoring poisoning: a test that panicked holding it has
/// already failed, and the others must report their own outcome.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<V: Keyed> Table<V> {
    /// A table of entity `rows` holding `rows`.
    pub fn with(rows: impl IntoIterator<Item = V>) -> Arc<Self> {
        Self::named("rows", rows)
    }

    /// A table holding `rows`, naming `entity` in the errors it returns.
    pub fn named(entity: &str, rows: impl IntoIterator<Item = V>) -> Arc<Self> {
        Arc::new(Table {
            entity: entity.to_owned(),
            rows: Mutex::new(rows.into_iter().map(|r| (r.key(), r)).collect()),
            loads: AtomicUsize::new(0),
            batch_loads: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            rejecting: AtomicBool::new(false),
            gate: Mutex::new(None),
            entered: Notify::new(),
            slow: Mutex::new(None),
            normalise: Mutex::new(None),
        })
    }

    /// Inserts or replaces a row, as another application writing to the
    /// database would (no cache hears of it).
    pub fn set(&self, row: V) {
        lock(&self.rows).insert(row.key(), row);
    }

    /// The row of `id`, if there is one.
    pub fn get(&self, id: u64) -> Option<V> {
        lock(&self.rows).get(&id).cloned()
    }

    /// How many single-row loads ran so far.
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// How many batch loads (`load_many`) ran so far.
    pub fn batch_loads(&self) -> usize {
        self.batch_loads.load(Ordering::SeqCst)
    }

    /// While on, every call fails as [`Error::SourceUnavailable`] (the
    /// database is down).
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// While on, every write is refused as [`Error::Source`] with SQLSTATE
    /// `23514` (a CHECK constraint).
    pub fn reject(&self, on: bool) {
        self.rejecting.store(on, Ordering::SeqCst);
    }

    /// Single-row loads take `pause` longer (`None`: no pause).
    pub fn slow(&self, pause: Option<Duration>) {
        *lock(&self.slow) = pause;
    }

    /// Writes store the row as `f` changes it (e.g. trims a name), as a
    /// database that normalises its input answers with the row it kept.
    pub fn normalise(&self, f: fn(&mut V)) {
        *lock(&self.normalise) = Some(f);
    }

    /// Holds the next load (single or batch) at a gate: it reads its rows
    /// first, then waits for a permit of the returned semaphore, so it
    /// answers what it read before anything the test does meanwhile.
    /// [`entered`](Self::entered) says when it is there.
    pub fn hold(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *lock(&self.gate) = Some(gate.clone());
        gate
    }

    /// Drops a [`hold`](Self::hold) that no load has reached yet.
    pub fn unhold(&self) {
        *lock(&self.gate) = None;
    }

    /// Waits until a held load is at the gate.
    pub async fn entered(&self) {
        self.entered.notified().await;
    }

    /// Waits at the gate if a hold is armed (taking it: one load is held).
    async fn pass_gate(&self) {
        let gate = lock(&self.gate).take();
        if let Some(gate) = gate {
            self.entered.notify_one();
            let _permit = gate.acquire().await;
        }
    }

    fn check_up(&self) -> larder::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            Err(Error::SourceUnavailable {
                entity: self.entity.clone(),
                cause: Arc::new(std::io::Error::other("the table is failing on purpose")),
            })
        } else {
            Ok(())
        }
    }
}

/// A [`Table`] as a cache's [`Source`]: ids are integers, rows are loaded,
/// listed in key order (for warming), stored and removed.
pub struct TableSource<V>(pub Arc<Table<V>>);

impl<V> Clone for TableSource<V> {
    fn clone(&self) -> Self {
        TableSource(Arc::clone(&self.0))
    }
}

#[async_trait]
impl<V: Keyed> Source<V> for TableSource<V> {
    fn canonical_id(&self, id: &str) -> larder::Result<String> {
        parse(id).map(|n| n.to_string())
    }

    async fn load(&self, id: &str) -> larder::Result<Option<V>> {
        let table = &self.0;
        table.loads.fetch_add(1, Ordering::SeqCst);
        let found = parse(id).ok().and_then(|n| table.get(n));
        table.pass_gate().await;
        let pause = *lock(&table.slow);
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        table.check_up()?;
        Ok(found)
    }

    async fn load_many(&self, ids: &[String]) -> larder::Result<HashMap<String, V>> {
        let table = &self.0;
        table.batch_loads.fetch_add(1, Ordering::SeqCst);
        let found: HashMap<String, V> = {
            let rows = lock(&table.rows);
            ids.iter()
                .filter_map(|id| {
                    let row = rows.get(&parse(id).ok()?)?;
                    Some((id.clone(), row.clone()))
                })
                .collect()
        };
        table.pass_gate().await;
        table.check_up()?;
        Ok(found)
    }

    async fn load_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> larder::Result<Vec<(String, V)>> {
        let after = after.map(parse).transpose()?;
        let rows = lock(&self.0.rows);
        Ok(rows
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| **k > a))
            .take(limit)
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect())
    }

    fn is_writable(&self) -> bool {
        true
    }

    async fn store(&self, id: &str, value: &V) -> larder::Result<V> {
        let table = &self.0;
        table.check_up()?;
        if table.rejecting.load(Ordering::SeqCst) {
            return Err(Error::Source {
                entity: table.entity.clone(),
                code: Some("23514".into()),
                cause: Arc::new(std::io::Error::other("check constraint violated")),
            });
        }
        let mut stored = value.clone();
        if let Some(normalise) = *lock(&table.normalise) {
            normalise(&mut stored);
        }
        lock(&table.rows).insert(parse(id)?, stored.clone());
        Ok(stored)
    }

    async fn delete(&self, id: &str) -> larder::Result<bool> {
        self.0.check_up()?;
        Ok(lock(&self.0.rows).remove(&parse(id)?).is_some())
    }
}

/// An id as the table's key; anything but an integer is refused.
fn parse(id: &str) -> larder::Result<u64> {
    id.parse::<u64>().map_err(|_| Error::InvalidId {
        id: id.into(),
        reason: "not an integer".into(),
    })
}
