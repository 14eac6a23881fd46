//! The listener: one PostgreSQL connection that `LISTEN`s on the change
//! channels and hands what it hears to the handlers.
//!
//! Two tasks, so that reading the socket never waits for a handler (a slow
//! handler must not fill PostgreSQL's notification queue, which would fail
//! the writers' commits):
//!
//! - the *reader* owns the sqlx [`PgListener`] and forwards each
//!   notification, and each detected gap, into an unbounded queue;
//! - the *dispatcher* takes one event, drains what else is already queued
//!   (so a burst becomes one call per entity), and calls the handlers.
//!
//! sqlx reconnects a lost listener silently; only `try_recv` tells, by
//! returning `Ok(None)` once it is connected and listening again. That, an
//! error from the listener (after which it is rebuilt), and a failed
//! keepalive probe are gaps: notifications sent meanwhile are lost for good.

use super::{ChangeChannel, ChangeHandler};
use crate::error::{Error, Result};
use crate::source::sql::classify;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The label of errors that concern the listener rather than one entity.
const LISTENER: &str = "change listener";

/// How long a keepalive probe may take before the connection counts as lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long waiting for a connection (including connecting) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The first and the longest wait before retrying a failed reconnect or
/// handler call; the wait doubles in between.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// At most this many queued events make one batch.
const MAX_BATCH: usize = 4096;

/// What the listener has seen since it started; a snapshot from
/// [`ChangeListener::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeStats {
    /// Notifications received on the subscribed channels.
    pub notifications: u64,
    /// Ids delivered to [`ChangeHandler::changed`] (after de-duplication
    /// within a batch).
    pub ids: u64,
    /// Successful [`ChangeHandler::truncated`] calls (TRUNCATE, or a key
    /// too long for a notification).
    pub truncates: u64,
    /// Times the connection was lost or failed (each one a gap for every
    /// entity of the listener).
    pub gaps: u64,
    /// Successful [`ChangeHandler::gap`] calls.
    pub gaps_delivered: u64,
    /// Handler calls that returned an error (each answered by a gap).
    pub handler_errors: u64,
    /// Notifications that could not be read (a foreign payload on the
    /// channel, an id the key type refuses); each one a gap for its entity.
    pub malformed: u64,
}

/// The live counters behind [`ChangeStats`].
#[derive(Debug, Default)]
struct Counters {
    notifications: AtomicU64,
    ids: AtomicU64,
    truncates: AtomicU64,
    gaps: AtomicU64,
    gaps_delivered: AtomicU64,
    handler_errors: AtomicU64,
    malformed: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ChangeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ChangeStats {
            notifications: get(&self.notifications),
            ids: get(&self.ids),
            truncates: get(&self.truncates),
            gaps: get(&self.gaps),
            gaps_delivered: get(&self.gaps_delivered),
            handler_errors: get(&self.handler_errors),
            malformed: get(&self.malformed),
        }
    }
}

/// A running listener for database change notifications (the triggers
/// installed by [`SqlSource::install_change_triggers`](crate::SqlSource::install_change_triggers)).
///
/// # Behavior
///
/// - [`start`](ChangeListenerBuilder::start) returns once the connection is
///   `LISTEN`ing on every channel: a change committed after it returns is
///   heard. A service can bind its port after that.
/// - Notifications that arrive together are batched: one
///   [`changed`](ChangeHandler::changed) call per entity with the distinct
///   ids; a purge or a gap in the batch replaces the entity's ids (both
///   cover every change before them).
/// - A lost connection (sqlx reconnects silently; `try_recv` returns
///   `Ok(None)`), a listener error, or a keepalive probe that fails or
///   times out is a **gap**: once listening again, [`gap`](ChangeHandler::gap)
///   is called for every entity. Reconnects back off from 100 ms to 5 s.
/// - A handler error is logged (`tracing`, warn) and answered by `gap` for
///   that entity after a backoff (100 ms doubling to 5 s), until one
///   succeeds; meanwhile its other events are dropped, since the gap covers
///   them. Other entities are not held up by the wait.
/// - [`close`](Self::close) stops listening, delivers what was already
///   received and closes the connection; dropping the listener stops it
///   without delivering.
/// - The connection is its own (not one of the source's pool), with
///   `application_name` `larder-cdc` unless set otherwise.
#[derive(Debug)]
pub struct ChangeListener {
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    reader: Option<JoinHandle<()>>,
    dispatcher: Option<JoinHandle<()>>,
    pool: PgPool,
}

/// Builds a [`ChangeListener`]; consuming, finish with
/// [`start`](Self::start).
#[must_use]
pub struct ChangeListenerBuilder {
    subscriptions: Vec<(ChangeChannel, Arc<dyn ChangeHandler>)>,
    application_name: String,
    keepalive: Duration,
}

impl std::fmt::Debug for ChangeListenerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeListenerBuilder")
            .field(
                "channels",
                &self
                    .subscriptions
                    .iter()
                    .map(|(c, _)| c.name())
                    .collect::<Vec<_>>(),
            )
            .field("application_name", &self.application_name)
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

impl ChangeListener {
    /// Starts a builder with no subscriptions.
    pub fn builder() -> ChangeListenerBuilder {
        ChangeListenerBuilder {
            subscriptions: Vec::new(),
            application_name: "larder-cdc".to_owned(),
            keepalive: Duration::from_secs(30),
        }
    }

    /// Starts listening with the default settings; the same as
    /// [`builder`](Self::builder), one [`subscribe`](ChangeListenerBuilder::subscribe)
    /// per pair, and [`start`](ChangeListenerBuilder::start).
    pub async fn start(
        subscriptions: Vec<(ChangeChannel, Arc<dyn ChangeHandler>)>,
    ) -> Result<ChangeListener> {
        let mut builder = ChangeListener::builder();
        for (channel, handler) in subscriptions {
            builder = builder.subscribe(channel, handler);
        }
        builder.start().await
    }

    /// What the listener has seen so far.
    pub fn stats(&self) -> ChangeStats {
        self.counters.snapshot()
    }

    /// Stops listening, waits until the handlers have seen everything
    /// already received, and closes the connection.
    pub async fn close(mut self) {
        let _ = self.shutdown.send(true);
        for task in [self.reader.take(), self.dispatcher.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "change listener task failed");
            }
        }
        // The PgListener's drop returns its connection in a spawned task;
        // close() waits for it, but not forever.
        if tokio::time::timeout(PROBE_TIMEOUT, self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("change listener: the connection did not close in time");
        }
    }
}

impl Drop for ChangeListener {
    fn drop(&mut self) {
        for task in [self.reader.take(), self.dispatcher.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

impl ChangeListenerBuilder {
    /// Delivers the changes of `channel` to `handler`. Each channel may be
    /// subscribed once; all channels must be of the same database.
    pub fn subscribe(mut self, channel: ChangeChannel, handler: Arc<dyn ChangeHandler>) -> Self {
        self.subscriptions.push((channel, handler));
        self
    }

    /// The `application_name` of the listener's connection, as
    /// `pg_stat_activity` shows it. Default: `"larder-cdc"`.
    pub fn application_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.application_name);
        self
    }

    /// How long the connection may stay silent before a probe (`SELECT 1`,
    /// 5 s timeout) checks it is alive; a failed probe is a gap. This is
    /// what notices a connection that died without a word (a network
    /// partition). Default: 30 s.
    pub fn keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every.max(Duration::from_millis(10));
        self
    }

    /// Connects, `LISTEN`s on every channel, and starts the background
    /// tasks; returns once listening.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without subscriptions, with a channel subscribed
    /// twice or channels of different databases;
    /// [`Error::SourceUnavailable`] when the database cannot be reached.
    pub async fn start(self) -> Result<ChangeListener> {
        let Some((first, _)) = self.subscriptions.first() else {
            return Err(Error::Config(
                "a change listener needs at least one subscription".into(),
            ));
        };
        let options = first.pool.connect_options();
        let first_name = first.name.clone();
        let place = |o: &sqlx::postgres::PgConnectOptions| {
            (
                o.get_host().to_owned(),
                o.get_port(),
                o.get_socket().cloned(),
                o.get_database().map(str::to_owned),
            )
        };
        let mut subs = Vec::with_capacity(self.subscriptions.len());
        for (channel, handler) in self.subscriptions {
            if subs.iter().any(|s: &Sub| s.channel == channel.name) {
                return Err(Error::Config(format!(
                    "change channel `{}` is subscribed twice",
                    channel.name
                )));
            }
            if place(&channel.pool.connect_options()) != place(&options) {
                return Err(Error::Config(format!(
                    "change channels `{}` and `{}` are of different databases: use one listener per database",
                    first_name, channel.name
                )));
            }
            subs.push(Sub {
                entity: channel.entity().to_owned(),
                channel: channel.name.clone(),
                ids: channel,
                handler,
                gap_pending: false,
                failures: 0,
                retry_at: None,
            });
        }
        let options = (*options).clone().application_name(&self.application_name);
        // A pool of one, so sqlx can replace a lost connection; no idle or
        // lifetime limits, which would drop the LISTEN for nothing.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        let channels: Vec<String> = subs.iter().map(|s| s.channel.clone()).collect();
        let listener = listen(&pool, &channels).await?;

        let counters = Arc::new(Counters::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = Reader {
            pool: pool.clone(),
            channels,
            tx,
            counters: counters.clone(),
            keepalive: self.keepalive,
            shutdown: shutdown_rx,
        };
        let dispatcher = Dispatcher {
            subs,
            rx,
            counters: counters.clone(),
        };
        Ok(ChangeListener {
            counters,
            shutdown,
            reader: Some(tokio::spawn(reader.run(listener))),
            dispatcher: Some(tokio::spawn(dispatcher.run())),
            pool,
        })
    }
}

/// A new sqlx listener on `channels`.
async fn listen(pool: &PgPool, channels: &[String]) -> Result<PgListener> {
    let mut listener = PgListener::connect_with(pool)
        .await
        .map_err(|e| classify(LISTENER, e))?;
    listener
        .listen_all(channels.iter().map(String::as_str))
        .await
        .map_err(|e| classify(LISTENER, e))?;
    Ok(listener)
}

/// What the reader forwards.
#[derive(Debug)]
enum Event {
    /// A notification on one of the channels.
    Notification { channel: String, payload: String },
    /// Notifications may have been lost; listening again now.
    Gap,
}

/// The reader task: owns the sqlx listener.
struct Reader {
    pool: PgPool,
    channels: Vec<String>,
    tx: mpsc::UnboundedSender<Event>,
    counters: Arc<Counters>,
    keepalive: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Reader {
    async fn run(mut self, mut listener: PgListener) {
        loop {
            // try_recv is cancel-safe while connected (sqlx reads whole
            // messages out of its buffer or nothing), so the shutdown and
            // keepalive branches can interrupt it.
            let received = tokio::select! {
                _ = self.shutdown.changed() => return,
                r = listener.try_recv() => Some(r),
                () = tokio::time::sleep(self.keepalive) => None,
            };
            let lost = match received {
                Some(Ok(Some(n))) => {
                    Counters::add(&self.counters.notifications, 1);
                    let event = Event::Notification {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    };
                    if self.tx.send(event).is_err() {
                        return;
                    }
                    continue;
                }
                // Reconnected (and LISTENing again) by sqlx.
                Some(Ok(None)) => {
                    tracing::warn!("change listener: connection lost and re-established; notifications may have been missed");
                    Counters::add(&self.counters.gaps, 1);
                    if self.tx.send(Event::Gap).is_err() {
                        return;
                    }
                    continue;
                }
                Some(Err(e)) => Some(e.to_string()),
                None => probe(&mut listener).await.err(),
            };
            let Some(why) = lost else {
                continue;
            };
            tracing::warn!(error = %why, "change listener: connection failed; reconnecting");
            Counters::add(&self.counters.gaps, 1);
            drop(listener);
            listener = match self.reconnect().await {
                Some(l) => l,
                None => return,
            };
            if self.tx.send(Event::Gap).is_err() {
                return;
            }
        }
    }

    /// A new listener, retried with backoff; `None` on shutdown.
    async fn reconnect(&mut self) -> Option<PgListener> {
        let mut wait = BACKOFF_MIN;
        loop {
            match listen(&self.pool, &self.channels).await {
                Ok(l) => return Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "change listener: reconnect failed")
                }
            }
            tokio::select! {
                _ = self.shutdown.changed() => return None,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(BACKOFF_MAX);
        }
    }
}

/// Checks that the listener's connection answers. Notifications that arrive
/// meanwhile are kept in the listener's buffer.
async fn probe(listener: &mut PgListener) -> Result<(), String> {
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query("SELECT 1").execute(&mut *listener),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("keepalive probe timed out after {PROBE_TIMEOUT:?}")),
    }
}

/// One subscription, with its delivery state.
struct Sub {
    channel: String,
    entity: String,
    /// The channel, for its canonical ids.
    ids: ChangeChannel,
    handler: Arc<dyn ChangeHandler>,
    /// A gap must be delivered (after a lost connection, a malformed
    /// notification or a handler error) before anything else.
    gap_pending: bool,
    /// Handler errors in a row, for the backoff.
    failures: u32,
    /// When to retry after a handler error.
    retry_at: Option<Instant>,
}

/// What one batch holds for one subscription.
#[derive(Default)]
struct Batch {
    ids: Vec<String>,
    seen: HashSet<String>,
    purge: bool,
}

/// The dispatcher task: batches events and calls the handlers.
struct Dispatcher {
    subs: Vec<Sub>,
    rx: mpsc::UnboundedReceiver<Event>,
    counters: Arc<Counters>,
}

impl Dispatcher {
    async fn run(mut self) {
        let mut buf = Vec::with_capacity(MAX_BATCH);
        loop {
            let retry_at = self.subs.iter().filter_map(|s| s.retry_at).min();
            // recv_many is cancel-safe: the timer branch loses nothing.
            let closed = tokio::select! {
                n = self.rx.recv_many(&mut buf, MAX_BATCH) => n == 0,
                () = sleep_until(retry_at) => false,
            };
            if closed {
                // The reader has stopped and everything is delivered.
                if let Some(s) = self.subs.iter().find(|s| s.gap_pending) {
                    tracing::warn!(entity = %s.entity, "change listener closed with a gap not delivered");
                }
                return;
            }
            let mut batches: Vec<Batch> = self.subs.iter().map(|_| Batch::default()).collect();
            for event in buf.drain(..) {
                self.collect(event, &mut batches);
            }
            for (sub, batch) in self.subs.iter_mut().zip(batches) {
                deliver(sub, batch, &self.counters).await;
            }
        }
    }

    /// Sorts one event into the batches.
    fn collect(&mut self, event: Event, batches: &mut [Batch]) {
        let (channel, payload) = match event {
            Event::Gap => {
                for sub in &mut self.subs {
                    sub.gap_pending = true;
                }
                return;
            }
            Event::Notification { channel, payload } => (channel, payload),
        };
        let Some(i) = self.subs.iter().position(|s| s.channel == channel) else {
            return;
        };
        let (sub, batch) = (&mut self.subs[i], &mut batches[i]);
        match parse_payload(&payload) {
            Some(Payload::Purge) => batch.purge = true,
            Some(Payload::Keys(keys)) => {
                for key in keys {
                    match sub.ids.canonical(&key) {
                        Ok(id) => {
                            if batch.seen.insert(id.clone()) {
                                batch.ids.push(id);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(entity = %sub.entity, error = %e, "change notification with an unusable key; treating it as a gap");
                            Counters::add(&self.counters.malformed, 1);
                            sub.gap_pending = true;
                        }
                    }
                }
            }
            None => {
                let shown: String = payload.chars().take(80).collect();
                tracing::warn!(entity = %sub.entity, payload = %shown, "unreadable change notification; treating it as a gap");
                Counters::add(&self.counters.malformed, 1);
                sub.gap_pending = true;
            }
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Calls the handler of one subscription for one batch: the gap if one is
/// pending (it covers the rest), else a purge, else the ids.
async fn deliver(sub: &mut Sub, batch: Batch, counters: &Counters) {
    if sub.retry_at.is_some_and(|at| Instant::now() < at) {
        // A gap will be delivered at retry_at; it covers this batch.
        return;
    }
    let (call, result) = if sub.gap_pending {
        ("gap", sub.handler.gap(&sub.entity).await)
    } else if batch.purge {
        ("truncated", sub.handler.truncated(&sub.entity).await)
    } else if !batch.ids.is_empty() {
        (
            "changed",
            sub.handler.changed(&sub.entity, &batch.ids).await,
        )
    } else {
        return;
    };
    match result {
        Ok(()) => {
            let counter = match call {
                "gap" => &counters.gaps_delivered,
                "truncated" => &counters.truncates,
                _ => &counters.ids,
            };
            let n = if call == "changed" {
                batch.ids.len() as u64
            } else {
                1
            };
            Counters::add(counter, n);
            sub.gap_pending = false;
            sub.failures = 0;
            sub.retry_at = None;
        }
        Err(e) => {
            Counters::add(&counters.handler_errors, 1);
            sub.failures = sub.failures.saturating_add(1);
            let wait = BACKOFF_MIN
                .saturating_mul(1 << sub.failures.saturating_sub(1).min(6))
                .min(BACKOFF_MAX);
            tracing::warn!(entity = %sub.entity, call, error = %e, retry_in = ?wait,
                "change handler failed; a gap will be delivered instead");
            sub.gap_pending = true;
            sub.retry_at = Some(Instant::now() + wait);
        }
    }
}

/// A notification's payload, as the triggers write it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Payload {
    /// Keys as text (NULL keys left out).
    Keys(Vec<String>),
    /// Purge the whole entity.
    Purge,
}

/// Reads a payload; `None` when it is not one the triggers write.
pub(super) fn parse_payload(payload: &str) -> Option<Payload> {
    if payload.starts_with('[') {
        let keys: Vec<Option<String>> = serde_json::from_str(payload).ok()?;
        return Some(Payload::Keys(keys.into_iter().flatten().collect()));
    }
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    value.get("purge").map(|_| Payload::Purge)
}
