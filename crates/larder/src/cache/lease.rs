//! The lease: how one process at a time loads a key, across processes.
//!
//! A flight (see `read.rs`) asks for the key's lease (`SET NX PX` with a
//! random token, in a script that also re-checks the value and any pending
//! write-back record). It gets the lease, the value (someone filled it
//! meanwhile), the pending write, or finds it held: then it waits for the
//! holder's fill, polling with a short backoff up to `wait_timeout`, and
//! past that loads by itself without filling. A present value that is no
//! longer fresh is taken over. The holder loads and fills once, with a
//! script that writes only while the lease still holds its token
//! ([`LeaseRequest::into_fill`] is the one place a fill is made), or
//! releases the lease when there is nothing to cache or the load failed.
//! A waiter is told of the fill as it lands (`fill_watch.rs`: it raises the
//! key's waiter flag, the fill announces itself), polling only as the
//! fallback.
//! `put` and `invalidate` void the lease in the same atomic step as their
//! write, so a load that began before them never fills afterwards.

use super::fill_watch::{Waiter, WATCHED_POLL};
use super::read::Mode;
use super::{Inner, Loader};
use crate::envelope::Freshness;
use crate::error::Result;
use crate::key::KeyKind;
use crate::outcome::{Lookup, Outcome};
use crate::stats::Event;
use crate::store::{Acquired, Fill, LeaseRequest};
use futures_util::future::{join_all, FutureExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The longest pause between two polls of a lease held by another process.
const MAX_POLL: Duration = Duration::from_millis(4);

/// The `fresh_until` of envelope bytes this process just encoded (bytes
/// 4..12 of the header), without decoding the rest.
fn envelope_fresh_until(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?))
}

impl LeaseRequest {
    /// Takes the lease even though a value is present (it is no longer
    /// fresh): a refresh rather than a miss.
    pub(crate) fn take_over(&mut self) {
        self.if_absent = false;
    }

    /// The fill of this lease: `value` (envelope bytes, kept `ttl`) is
    /// written only while the lease still holds this request's token and no
    /// write-back write of the key is pending.
    pub(crate) fn into_fill(self, value: Vec<u8>, ttl: Duration) -> Fill {
        Fill {
            value_key: self.value_key,
            lease_key: self.lease_key,
            dirty_key: self.dirty_key,
            token: self.token,
            value,
            ttl,
            waiter_key: self.waiter_key,
            fill_channel: self.fill_channel,
        }
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// A lease request for `id` with a fresh token.
    pub(crate) fn lease_request(&self, id: &str, if_absent: bool) -> LeaseRequest {
        LeaseRequest {
            value_key: self.keys.value_key(id),
            lease_key: self.keys.lease_key(id),
            dirty_key: self.keys.dirty_key(id),
            token: self.random.token(),
            ttl: self.policy.lease_ttl,
            if_absent,
            waiter_key: self.keys.key(KeyKind::Waiter, id),
            fill_channel: self.fills.channel(),
        }
    }

    /// The flight: take the lease (or wait for its holder), load, fill.
    ///
    /// Answers `None` only for a refresh that found another holder of the
    /// lease: the stale value its callers already have stays the answer.
    /// A refresh whose load fails returns the error; its callers serve stale.
    pub(super) async fn lead(
        self: Arc<Self>,
        id: String,
        loader: Loader<V>,
        mode: Mode,
    ) -> Result<Option<Lookup<V>>> {
        if self.breaker.is_open() {
            self.may_bypass(self.store_skipped())?;
            return self
                .load_unfilled(&id, loader, Outcome::Bypass)
                .await
                .map(Some);
        }
        let mut request = self.lease_request(&id, mode == Mode::Miss);
        let deadline = Instant::now() + self.policy.wait_timeout;
        let mut pause = Duration::from_millis(1);
        let mut waited = false;
        // Set once this caller waits with the key's waiter flag raised.
        let mut waiter: Option<Waiter> = None;
        loop {
            // Made before asking: a fill announced while the answer is on
            // its way still wakes this caller.
            let notify = waiter.as_ref().map(Waiter::notify);
            let notified = notify.as_deref().map(Notify::notified);
            match self.store.acquire(&request).await {
                Ok(Acquired::Lease { current }) => {
                    // A stale refresh that finds the entry fresh again (another
                    // process refreshed it since it was read) has nothing to do.
                    let now = self.clock.now_ms();
                    let refreshed = current
                        .filter(|_| mode == Mode::Refresh)
                        .and_then(|bytes| self.decode_entry(&id, bytes).ok())
                        .filter(|entry| entry.freshness(now) == Freshness::Fresh);
                    if let Some(entry) = refreshed {
                        self.release(&request).await;
                        return Ok(Some(entry.answer(Outcome::Hit)));
                    }
                    break;
                }
                Ok(Acquired::Value(bytes)) => {
                    let now = self.clock.now_ms();
                    // (A corrupt entry was already counted by the read that led here.)
                    match self.decode_entry(&id, bytes) {
                        Ok(entry) if entry.freshness(now) == Freshness::Fresh => {
                            return Ok(Some(entry.answer(Outcome::Hit)));
                        }
                        // Present but not fresh: take the lease over it.
                        _ => request.take_over(),
                    }
                }
                Ok(Acquired::Dirty(payload)) => {
                    return self.pending_answer(&id, payload).map(Some);
                }
                Ok(Acquired::Held) if mode != Mode::Miss => return Ok(None),
                Ok(Acquired::Held) => {
                    if !waited {
                        waited = true;
                        self.counters.bump(Event::LeaseWait);
                    }
                    if Instant::now() >= deadline {
                        self.counters.bump(Event::WaitTimeout);
                        return self
                            .load_unfilled(&id, loader, Outcome::Miss)
                            .await
                            .map(Some);
                    }
                    if waiter.is_none() && self.store.announces_fills() {
                        // Told, not polling: register, raise the flag, then
                        // look again (the fill may have landed meanwhile).
                        if let Some(w) = self.fills.wait_for(&self.store, &request.value_key).await
                        {
                            if matches!(self.store.flag_waiter(&request).await, Ok(true)) {
                                waiter = Some(w);
                                continue;
                            }
                        }
                    }
                    match notified {
                        Some(notified) => {
                            tokio::select! {
                                () = notified => self.counters.bump(Event::FillAnnounced),
                                () = tokio::time::sleep(pause) => {}
                            }
                            pause = (pause * 2).min(WATCHED_POLL);
                        }
                        None => {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(MAX_POLL);
                        }
                    }
                }
                Err(e) if e.is_store_unavailable() => {
                    self.store_failed(&e);
                    self.may_bypass(e)?;
                    return self
                        .load_unfilled(&id, loader, Outcome::Bypass)
                        .await
                        .map(Some);
                }
                Err(e) => return Err(e),
            }
        }
        let filled = self.load_and_fill(id, loader, request).await;
        if filled.is_err() && mode != Mode::Miss {
            self.counters.bump(Event::StaleOnError);
        }
        filled.map(Some)
    }

    pub(super) async fn load_and_fill(
        &self,
        id: String,
        loader: Loader<V>,
        lease: LeaseRequest,
    ) -> Result<Lookup<V>> {
        let (seq, ticket) = (self.coherence.seq(), self.coherence.ticket(&id));
        let (result, took) = self.timed_load(&id, loader(id.clone())).await;
        let value = match result {
            Ok(value) => value.map(Arc::new),
            Err(e) => {
                self.release(&lease).await;
                tracing::warn!(entity = self.keys.entity(), id, error = %e, "load failed");
                return Err(e);
            }
        };
        let mut fresh_until = None;
        let mut value = value;
        match self.encode_loaded(value.as_ref(), took, seq) {
            Ok(Some((bytes, ttl))) => {
                let fill = lease.into_fill(bytes, ttl);
                let filled = self.store.fill(&fill).await;
                let landed = matches!(filled, Ok(true));
                if landed {
                    fresh_until = envelope_fresh_until(&fill.value);
                    self.near_fill(&id, ticket, value.clone(), &fill.value)
                        .await;
                }
                self.count_fill(filled);
                if !landed {
                    value = self.overlay_pending(&id, value).await?;
                }
            }
            Ok(None) => self.release(&lease).await,
            Err(e) => {
                self.release(&lease).await;
                return Err(e);
            }
        }
        Ok(Lookup::new(value, Outcome::Miss).fresh_until_at(fresh_until))
    }

    pub(crate) async fn release(&self, lease: &LeaseRequest) {
        if let Err(e) = self.store.release(&lease.lease_key, &lease.token).await {
            // The lease expires by itself after lease_ttl.
            tracing::debug!(entity = self.keys.entity(), error = %e, "could not release a lease");
        }
    }

    pub(crate) fn count_fill(&self, filled: Result<bool>) {
        match filled {
            Ok(true) => self.counters.bump(Event::Fill),
            Ok(false) => self.counters.bump(Event::FillRefused),
            Err(e) => {
                self.store_failed(&e);
                tracing::warn!(entity = self.keys.entity(), error = %e, "could not fill the cache");
            }
        }
    }

    /// Loads leased ids with one `load_many` and fills them with one
    /// pipeline. Answers each id's value and whether its fill landed
    /// (`false`: not cacheable, or the lease was voided meanwhile).
    pub(crate) async fn load_and_fill_many(
        &self,
        leased: Vec<(String, LeaseRequest)>,
    ) -> Result<Vec<(String, Option<Arc<V>>, Option<u64>)>> {
        let source = self.require_source()?;
        let ids: Vec<String> = leased.iter().map(|(id, _)| id.clone()).collect();
        let seq = self.coherence.seq();
        let load = async move { source.load_many(&ids).await }.boxed();
        let (loaded, took) = self.timed_load("(many)", load).await;
        let mut loaded = match loaded {
            Ok(map) => map,
            Err(e) => {
                join_all(leased.iter().map(|(_, lease)| self.release(lease))).await;
                return Err(e);
            }
        };
        let mut fills = Vec::with_capacity(leased.len());
        let mut filled_ids = Vec::with_capacity(leased.len());
        let mut answers = Vec::with_capacity(leased.len());
        let mut unfilled = Vec::new();
        for (id, lease) in leased {
            let value = loaded.remove(&id).map(Arc::new);
            match self.encode_loaded(value.as_ref(), took, seq)? {
                Some((bytes, ttl)) => {
                    filled_ids.push(answers.len());
                    fills.push(lease.into_fill(bytes, ttl));
                }
                None => unfilled.push(lease),
            }
            answers.push((id, value, None));
        }
        join_all(unfilled.iter().map(|lease| self.release(lease))).await;
        let mut overlay = Vec::new();
        match self.store.fill_many(&fills).await {
            Ok(results) => {
                for ((at, landed), fill) in filled_ids.into_iter().zip(results).zip(&fills) {
                    self.count_fill(Ok(landed));
                    if landed {
                        answers[at].2 = envelope_fresh_until(&fill.value);
                    } else {
                        overlay.push(at);
                    }
                }
            }
            Err(e) => {
                self.count_fill(Err(e));
                overlay.extend(filled_ids);
            }
        }
        if self.overlays_pending() {
            // Not filled as loaded: lay the pending writes over (see
            // `write_back/overlay.rs`).
            for at in overlay {
                let (id, value, _) = &answers[at];
                let merged = self.overlay_pending(id, value.clone()).await?;
                answers[at].1 = merged;
            }
        }
        Ok(answers)
    }
}
