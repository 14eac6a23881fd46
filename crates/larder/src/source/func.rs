//! A source backed by a closure: cache-aside and read-through over any
//! async loader (an HTTP call, a computed report, another database).

use super::Source;
use crate::error::{Error, Result};
use async_trait::async_trait;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

/// A read-only [`Source`] that calls `load(id)`.
///
/// The closure's error becomes [`Error::Loader`]; return `Ok(None)` for "not found".
pub struct FnSource<F, V> {
    entity: String,
    load: F,
    _value: PhantomData<fn() -> V>,
}

impl<F, V> fmt::Debug for FnSource<F, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnSource")
            .field("entity", &self.entity)
            .finish()
    }
}

impl<F, Fut, V, E> FnSource<F, V>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// A source named `entity` (used in errors) that loads with `load`.
    pub fn new(entity: impl Into<String>, load: F) -> Self {
        Self {
            entity: entity.into(),
            load,
            _value: PhantomData,
        }
    }
}

#[async_trait]
impl<F, Fut, V, E> Source<V> for FnSource<F, V>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Ids are used as they are: every id is canonical.
    fn is_canonical(&self, _id: &str) -> bool {
        true
    }

    async fn load(&self, id: &str) -> Result<Option<V>> {
        (self.load)(id.to_owned()).await.map_err(|e| Error::Loader {
            entity: self.entity.clone(),
            cause: Error::cause(e),
        })
    }
}
