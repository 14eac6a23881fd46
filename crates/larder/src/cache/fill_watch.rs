//! Waiters that are told, not polling: how a caller waiting on another
//! process's load learns that the fill landed.
//!
//! A caller whose lease request finds the lease held (another process is
//! loading the key) used to poll the store with a short backoff (1 → 4 ms),
//! so it saw the fill up to a backoff late. Now it first raises the key's
//! *waiter flag* (`a:<id>`, in the key's slot, living as long as a lease)
//! and registers here; the fill script (and a fill refused for a pending
//! write), on finding the flag, deletes it and `PUBLISH`es the value key on
//! the entity's fill channel; this cache's subscription wakes the waiters
//! of that key at once, and they read the value. Polling stays, slower
//! ([`WATCHED_POLL`]), as the fallback for whatever a notification misses
//! (a lease released after a failed load, a lost subscription, a fill by a
//! store that announces nothing).
//!
//! Costs: nothing on a hit; on a fill, one `DEL` of a flag that is usually
//! absent; on a contended miss, one `SET` of the flag, and, once per cache,
//! a pub/sub connection (opened at the first wait, kept while it works).
//! Only keys somebody waits for are published, so instances do not hear
//! every fill of every other instance.

use crate::store::Store;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The longest pause between two polls while notifications are heard:
/// only the fallback, so it can be long without costing a normal wait.
pub(crate) const WATCHED_POLL: Duration = Duration::from_millis(50);

/// The waiters of one cache, by value key, and its fill subscription.
pub(crate) struct FillWatch {
    channel: Arc<str>,
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    /// Whether the subscription is up (its task clears it when it ends).
    live: Arc<tokio::sync::Mutex<bool>>,
    /// Dropped with the watch: the subscription's task then ends.
    closed: tokio::sync::watch::Sender<()>,
}

/// One caller's registration; dropping it forgets the key when no other
/// caller of this cache waits for it.
pub(crate) struct Waiter {
    key: String,
    notify: Arc<Notify>,
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Waiter {
    /// The notification of the key's fill.
    pub(crate) fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // The map's own reference and this one: nobody else waits.
        if map
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) <= 2)
        {
            map.remove(&self.key);
        }
    }
}

impl FillWatch {
    /// The watch of the fills announced on `channel`.
    pub(crate) fn new(channel: String) -> Self {
        Self {
            channel: Arc::from(channel),
            waiters: Arc::default(),
            live: Arc::default(),
            closed: tokio::sync::watch::channel(()).0,
        }
    }

    /// The channel fills are announced on (what a fill script publishes to).
    pub(crate) fn channel(&self) -> Arc<str> {
        self.channel.clone()
    }

    /// Registers a waiter for `value_key`, once the subscription is up
    /// (subscribing now if it is not); `None` if it cannot be (the caller
    /// polls).
    pub(crate) async fn wait_for(&self, store: &Arc<dyn Store>, value_key: &str) -> Option<Waiter> {
        if !self.ensure_subscribed(store).await {
            return None;
        }
        let notify = {
            let mut map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(value_key.to_owned())
                .or_insert_with(|| Arc::new(Notify::new()))
                .clone()
        };
        Some(Waiter {
            key: value_key.to_owned(),
            notify,
            waiters: self.waiters.clone(),
        })
    }

    /// Whether the subscription is up, subscribing if it is not.
    async fn ensure_subscribed(&self, store: &Arc<dyn Store>) -> bool {
        let mut live = self.live.lock().await;
        if *live {
            return true;
        }
        let mut subscription = match store.subscribe(&self.channel).await {
            Ok(Some(s)) => s,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(channel = %self.channel, error = %e, "fill notifications unavailable; waiters poll");
                return false;
            }
        };
        *live = true;
        let (waiters, live_flag) = (self.waiters.clone(), self.live.clone());
        let mut closed = self.closed.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = subscription.next() => match message {
                        Some(message) => wake(&waiters, &message),
                        None => break,
                    },
                    // The cache is gone: so is the subscription.
                    _ = closed.changed() => return,
                }
            }
            // Lost: waiters poll until the next wait subscribes again; wake
            // everyone now so nobody sleeps on a notification that will not come.
            *live_flag.lock().await = false;
            let map = waiters.lock().unwrap_or_else(|p| p.into_inner());
            for notify in map.values() {
                notify.notify_waiters();
            }
        });
        true
    }
}

/// Wakes the waiters of the value key a fill announced.
fn wake(waiters: &Mutex<HashMap<String, Arc<Notify>>>, message: &Bytes) {
    let Ok(key) = std::str::from_utf8(message) else {
        return;
    };
    let map = waiters.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(notify) = map.get(key) {
        notify.notify_waiters();
    }
}
