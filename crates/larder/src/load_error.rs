//! [`LoadError`]: what [`Cache::try_get_or_load`](crate::Cache::try_get_or_load)
//! fails with, keeping the loader's own error type.
//!
//! A load is shared by every caller waiting for the same key (the single
//! flight), so its error cannot be moved to each of them: it travels as an
//! `Arc<E>` inside [`Error::Loader`] (wrapped in [`SharedLoadError`], so that
//! the `Arc` itself can be found again) and each waiter gets a clone of the
//! same `Arc`, as moka's `try_get_with` does.

use crate::error::{Cause, Error};
use std::fmt;
use std::sync::Arc;

/// Why [`Cache::try_get_or_load`](crate::Cache::try_get_or_load) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError<E> {
    /// The loader failed: its error, the same `Arc` for every caller that
    /// waited for this load.
    Load(Arc<E>),
    /// The cache failed (the store, the load timeout, a bad key), or the
    /// load this caller joined was started by a caller with another kind of
    /// loader (the source, a loader of another error type) and failed.
    Cache(Error),
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            LoadError::Load(e) => LoadError::Load(Arc::clone(e)),
            LoadError::Cache(e) => LoadError::Cache(e.clone()),
        }
    }
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Load(e) => write!(f, "the loader failed: {e}"),
            LoadError::Cache(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Load(e) => Some(&**e),
            LoadError::Cache(e) => Some(e),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> LoadError<E> {
    /// Sorts a read's error: a loader error of type `E` comes back as the
    /// very `Arc` the load produced; anything else is the cache's.
    pub(crate) fn from_error(e: Error) -> Self {
        if let Error::Loader { cause, .. } = &e {
            if let Some(shared) = cause.downcast_ref::<SharedLoadError<E>>() {
                return LoadError::Load(Arc::clone(&shared.0));
            }
        }
        LoadError::Cache(e)
    }
}

/// A loader's error as the cause of an [`Error::Loader`], holding it by
/// `Arc` so that [`LoadError::from_error`] can hand the same `Arc` out.
pub(crate) struct SharedLoadError<E>(pub(crate) Arc<E>);

impl<E: std::error::Error + Send + Sync + 'static> SharedLoadError<E> {
    /// `e` as an error cause.
    pub(crate) fn cause(e: E) -> Cause {
        Arc::new(SharedLoadError(Arc::new(e)))
    }
}

impl<E: fmt::Debug> fmt::Debug for SharedLoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: fmt::Display> fmt::Display for SharedLoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error> std::error::Error for SharedLoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
