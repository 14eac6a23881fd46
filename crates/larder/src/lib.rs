//! # larder
//!
//! placeholder
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod breaker;
mod builder;
mod cache;
mod clock;
mod codec;
mod envelope;
mod error;
mod flight;
mod key;
mod outcome;
mod policy;
pub mod source;
mod stats;
pub mod store;

pub use builder::CacheBuilder;
pub use cache::Cache;
pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{Codec, Json, MessagePack, PassThrough, RawJson};
pub use envelope::{Envelope, EnvelopeError};
pub use error::{Cause, Error, Result};
pub use key::{validate_id, validate_name, CacheKey, DEFAULT_SHARDS, MAX_ID_LEN, MAX_NAME_LEN};
pub use outcome::{Lookup, Outcome};
pub use source::{FnSource, Source, SqlPool, SqlSource};
pub use stats::CacheStats;
