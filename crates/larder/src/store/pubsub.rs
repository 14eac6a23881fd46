//! Pub/sub for the stores: the channel the invalidation bus runs on.
//!
//! A subscription is a stream of message payloads that *ends* when the
//! subscription is lost, for whatever reason (the connection dropped or was
//! killed, the server stopped answering pings, the reader fell too far
//! behind). The bus treats an end as "messages may have been missed" and
//! clears its near cache, so every way of losing messages must end the
//! stream rather than skip silently.
//!
//! - Redis: a dedicated connection (`Client::get_async_pubsub`), never the
//!   data connection: a subscribed RESP2 connection can run no other
//!   command. A task forwards its messages and pings it every
//!   [`PING_EVERY`], because a peer that vanished without closing the
//!   socket (a paused server, a cut network) would otherwise look like a
//!   quiet channel forever.
//! - memory: a `tokio::sync::broadcast` channel inside the store, so caches
//!   sharing one `memory://` store in one process invalidate each other.

use super::Subscription;
use crate::store::RedisOptions;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::RedisResult;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// How often an idle subscription is pinged to prove it still works.
const PING_EVERY: Duration = Duration::from_secs(1);

/// How many messages may wait for the bus; past that the subscription ends
/// (the bus then clears its near cache instead of missing messages).
const BACKLOG: usize = 4096;

/// Subscribes to `channel` on a new connection of `client`'s.
pub(super) async fn redis_subscribe(
    client: &redis::Client,
    channel: &str,
    options: &RedisOptions,
) -> RedisResult<Subscription> {
    let timed_out = || redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
    let mut pubsub = tokio::time::timeout(options.connect_timeout, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out())??;
    tokio::time::timeout(options.response_timeout, pubsub.subscribe(channel))
        .await
        .map_err(|_| timed_out())??;
    let (sink, mut messages) = pubsub.split();
    let (tx, rx) = mpsc::channel::<Bytes>(BACKLOG);
    let response_timeout = options.response_timeout;
    // Owned by the subscription: it ends when the receiver is dropped, when
    // the connection ends, or when a ping goes unanswered.
    tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return };
                    let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                    if tx.try_send(payload).is_err() {
                        return;
                    }
                }
                _ = ping.tick() => {
                    let mut sink = sink.clone();
                    let pong = tokio::time::timeout(response_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    Ok(receiver_stream(rx))
}

fn receiver_stream(rx: mpsc::Receiver<Bytes>) -> Subscription {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|message| (message, rx))
    })
    .boxed()
}

/// The in-process channel of a memory store.
#[derive(Debug)]
pub(super) struct MemoryBus {
    sender: broadcast::Sender<(Arc<str>, Bytes)>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl MemoryBus {
    pub(super) fn publish(&self, channel: &str, message: &[u8]) {
        // No receiver is not an error: nobody listens.
        let _ = self
            .sender
            .send((Arc::from(channel), Bytes::copy_from_slice(message)));
    }

    /// A subscription that ends if the reader falls [`BACKLOG`] behind.
    pub(super) fn subscribe(&self, channel: &str) -> Subscription {
        let channel: Arc<str> = Arc::from(channel);
        let rx = self.sender.subscribe();
        futures_util::stream::unfold(rx, move |mut rx| {
            let channel = channel.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok((on, message)) if on == channel => return Some((message, rx)),
                        Ok(_) => continue,
                        // Lagged: messages were lost; Closed: the store is gone.
                        Err(_) => return None,
                    }
                }
            }
        })
        .boxed()
    }
}

/// `[field, value, field, value, …]` (HGETALL) as pairs; values that are not
/// numbers are skipped (nothing larder writes).
pub(super) fn pairs(flat: Vec<String>) -> Vec<(String, u64)> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(field), Some(value)) = (items.next(), items.next()) {
        if let Ok(value) = value.parse() {
            out.push((field, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_skip_garbage() {
        let flat = ["seq", "5", "t:x", "nope", "purge", "3"].map(String::from);
        assert_eq!(
            pairs(flat.to_vec()),
            vec![("seq".to_owned(), 5), ("purge".to_owned(), 3)]
        );
    }

    #[tokio::test]
    async fn memory_bus_delivers_its_channel_only_and_ends_when_lagging() {
        let bus = MemoryBus::default();
        let mut sub = bus.subscribe("a");
        bus.publish("b", b"other");
        bus.publish("a", b"mine");
        assert_eq!(sub.next().await.as_deref(), Some(&b"mine"[..]));
        for _ in 0..=BACKLOG {
            bus.publish("a", b"x");
        }
        // Messages were lost: the subscription says so by ending.
        let mut seen = 0;
        while sub.next().await.is_some() {
            seen += 1;
        }
        assert!(seen < BACKLOG + 1, "a lagging subscription must end");
    }
}
