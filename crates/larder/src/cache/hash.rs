//! Field reads: [`Cache::get_fields`], some columns of an entry.
//!
//! Why a path of its own: for a `hash` entity (see `representation.rs`) a
//! fresh entry's fields are one `HMGET` of the reserved field (times,
//! stamp, directory) plus those fields — the rest of the row never leaves
//! Redis. Everything that is not a plain fresh hit — a miss, a stale or
//! invalidated entry, a store that is down, a near cache to serve from —
//! is the whole read ([`Cache::get`]) projected in process, so leases,
//! stale-while-revalidate, fail-safe, negative entries, tags, generations
//! and the near cache behave exactly as for whole reads. A `string`
//! entity's field read is always the whole read, projected.

use super::read::Mode;
use super::{Cache, Inner};
use crate::codec::RawJson;
use crate::envelope::{Envelope, Freshness};
use crate::error::{Error, Message, Result};
use crate::key::CacheKey;
use crate::outcome::{Lookup, Outcome};
use crate::policy::xfetch;
use crate::representation::{project, Representation};
use crate::stats::Event;
use std::sync::Arc;

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// Some fields of the value of `key` (read-through), as a JSON object
    /// of those of `fields` the value has, in the order given: a NULL
    /// column is `null`, a name the value lacks is left out. The value
    /// must be a JSON object (a JSON codec).
    ///
    /// For a [`Representation::Hash`] entity a fresh entry is read with one
    /// `HMGET` (the reserved field and `fields`); anything else — a miss,
    /// a stale entry, a near cache — is [`Cache::get`] projected, with the
    /// same outcome and the same guarantees.
    ///
    /// ```
    /// # use larder::{Cache, FnSource, Representation, RawJson, PassThrough};
    /// # #[tokio::main] async fn main() -> larder::Result<()> {
    /// let source = FnSource::new("users", |id: String| async move {
    ///     RawJson::from_bytes(format!(r#"{{"id":{id},"name":"Ada","email":null}}"#)).map(Some)
    /// });
    /// let users: Cache<u64, RawJson> = Cache::builder()
    ///     .entity("users")
    ///     .codec(PassThrough)
    ///     .representation(Representation::Hash)
    ///     .source(source)
    ///     .build()
    ///     .await?;
    /// let some = users.get_fields(&7, &["name", "email"]).await?;
    /// let row = some.value.expect("a row");
    /// assert_eq!(&row.bytes()[..], br#"{"name":"Ada","email":null}"#);
    /// # Ok(()) }
    /// ```
    pub async fn get_fields(&self, key: &K, fields: &[&str]) -> Result<Lookup<RawJson>> {
        let inner = &self.inner;
        inner.require_source()?;
        if inner.keys.representation() == Representation::Hash
            && inner.coherence.near_ttl().is_none()
        {
            let id = self.id_text_of(key)?.into_owned();
            if let Some(answer) = inner.fresh_fields(&id, fields).await? {
                inner.counters.read(answer.outcome);
                return Ok(answer);
            }
        }
        let whole = self.get(key).await?;
        let fresh_until = whole.fresh_until();
        let value = match &whole.value {
            Some(v) => {
                let json = inner.codec.encode(inner.keys.entity(), v)?;
                Some(Arc::new(project_object(inner.keys.entity(), json, fields)?))
            }
            None => None,
        };
        Ok(Lookup::new(value, whole.outcome).fresh_until_at(fresh_until))
    }
}

/// Just `fields` of the JSON object `json`.
fn project_object(entity: &str, json: Vec<u8>, fields: &[&str]) -> Result<RawJson> {
    let problem = |p: String| Error::Decode {
        entity: entity.to_owned(),
        id: String::new(),
        cause: Message::cause(p),
    };
    let env = Envelope {
        fresh_until: 0,
        stale_until: 0,
        load_us: 0,
        payload: Some(json.into()),
        stamp: None,
    }
    .encode();
    let mut projected = project(&env, fields).map_err(problem)?;
    let payload = projected.split_off(crate::envelope::HEADER_LEN);
    RawJson::from_bytes(payload)
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// A fresh hash entry's fields with one `HMGET`, or `None`: not a
    /// plain fresh hit (the whole read decides then).
    async fn fresh_fields(
        self: &Arc<Self>,
        id: &str,
        fields: &[&str],
    ) -> Result<Option<Lookup<RawJson>>> {
        let key = self.keys.value_key(id);
        let Some(Some(bytes)) = self
            .ask_store(|| self.store.get_fields(&key, fields))
            .await?
        else {
            return Ok(None);
        };
        let Ok(env) = Envelope::decode(bytes) else {
            return Ok(None);
        };
        if self.coherence.judge(env.stamp.as_deref()).invalidated {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        if Freshness::at(now, env.fresh_until, env.stale_until) != Freshness::Fresh {
            return Ok(None);
        }
        let beta = self.policy.early_refresh;
        if beta > 0.0 && env.load_us > 0 {
            let r = 1.0 - self.random.unit();
            if xfetch(
                now,
                env.fresh_until,
                f64::from(env.load_us) / 1000.0,
                beta,
                r,
            ) {
                self.counters.bump(Event::EarlyRefresh);
                self.refresh_in_background(id.to_owned(), self.source_loader()?, Mode::Early);
            }
        }
        let (value, outcome) = match env.payload {
            Some(p) => (Some(Arc::new(RawJson::trusted(p))), Outcome::Hit),
            None => (None, Outcome::Negative),
        };
        Ok(Some(Lookup::cached(value, outcome, env.fresh_until)))
    }
}
