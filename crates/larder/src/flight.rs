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
/// The flights in progress by id, each with its registration number.
type Registry<T> = Arc<Mutex<HashMap<String, (u64, Flight<T>)>>>;

pub(crate) struct Flights<T> {
    /// Each flight with the number it was registered under, so a flight
    /// that was forgotten never removes its successor.
    map: Registry<T>,
    next: std::sync::atomic::AtomicU64,
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    pub(crate) fn new() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (u64, Flight<T>)>> {
        // The map is only inserted into and removed from; a panic cannot
        // leave it inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the flight of `id`, if any: it runs on and answers the
    /// callers that joined it, but later callers start a new one. Called
    /// when `id` is invalidated or written, since a load that began before
    /// may return the old value.
    pub(crate) fn forget(&self, id: &str) {
        self.lock().remove(id);
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
        if let Some((_, existing)) = map.get(id) {
            return (existing.clone(), false);
        }
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                let mut map = registry.lock().unwrap_or_else(|p| p.into_inner());
                if map.get(&key).is_some_and(|(n, _)| *n == number) {
                    map.remove(&key);
                }
            }
            result
        }
        .boxed()
        .shared();
        map.insert(id.to_owned(), (number, flight.clone()));
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
