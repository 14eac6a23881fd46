//! Single-flight: concurrent callers for the same key share one load.
//!
//! The first caller starts the work as a spawned task; later callers join
//! it and all receive a clone of its result (errors included — [`Error`] is
//! `Clone`). Because the work is a task and not the caller's future, a
//! caller that gives up (a timeout, a dropped HTTP request) does not cancel
//! a load that others wait for, and a background refresh outlives the read
//! that triggered it.
//!
//! [`Error`]: crate::Error

use futures_util::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

type Flight<T> = Shared<BoxFuture<'static, T>>;

/// The loads in progress in this process, by id.
pub(crate) struct Flights<T> {
    map: Arc<Mutex<HashMap<String, Flight<T>>>>,
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    pub(crate) fn new() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Flight<T>>> {
        // The map is only inserted into and removed from; a panic cannot
        // leave it inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a load of `id` is in progress.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Joins the flight of `id`, or starts `work` as a new one. Returns the
    /// shared result future and whether this call started it.
    ///
    /// `on_panic` turns a panicked task into a value of `T`.
    pub(crate) fn join_or_start<F>(
        &self,
        id: &str,
        work: impl FnOnce() -> F,
        on_panic: fn(String) -> T,
    ) -> (Flight<T>, bool)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut map = self.lock();
        if let Some(existing) = map.get(id) {
            return (existing.clone(), false);
        }
        let task = tokio::spawn(work());
        let registry = Arc::downgrade(&self.map);
        let key = id.to_owned();
        let flight = async move {
            let result = match task.await {
                Ok(value) => value,
                Err(e) => on_panic(e.to_string()),
            };
            // Leave the registry before anyone sees the result, so a caller
            // that arrives after a fill reads the filled cache instead of
            // joining a finished flight.
            if let Some(registry) = registry.upgrade() {
                registry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
            }
            result
        }
        .boxed()
        .shared();
        map.insert(id.to_owned(), flight.clone());
        drop(map);
        // Drive the flight even if every caller goes away, so the registry
        // entry is always removed.
        tokio::spawn(flight.clone());
        (flight, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: Flights<usize> = Flights::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let gate = Shared::clone(&async move { gate_rx.await.is_ok() }.boxed().shared());
        let mut joined = Vec::new();
        for _ in 0..50 {
            let runs = runs.clone();
            let gate = gate.clone();
            let (f, _) = flights.join_or_start(
                "k",
                move || async move {
                    gate.await;
                    runs.fetch_add(1, Ordering::SeqCst) + 41
                },
                |_| 0,
            );
            joined.push(f);
        }
        assert!(flights.contains("k"));
        gate_tx.send(()).expect("gate");
        for f in joined {
            assert_eq!(f.await, 41);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // The finished flight has left the registry: a new call starts anew.
        let (f, started) = flights.join_or_start("k", || async { 7 }, |_| 0);
        assert!(started);
        assert_eq!(f.await, 7);
    }
}
