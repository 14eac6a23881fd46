//! The `larder` service: the caching engine behind an HTTP API.
//!
//! A library target so that integration tests can build the real router
//! (`http::app(state)`) and drive it with `oneshot`, without a socket; the
//! binary (`src/main.rs`) is a thin CLI over these modules.
//!
//! - [`config`]: the TOML file, every key and default, one-line errors.
//! - [`serve`]: startup (store, database, entities), the shared state, the
//!   serve loop and graceful shutdown.
//! - [`http`]: the routes, errors, auth, stats/metrics and the OpenAPI document.
//! - [`client`]: a tiny HTTP/1.1 client for `larder stats` (and tests).
//! - [`query`]: read-only entities defined by a SQL query.
//! - [`resp`]: the Redis protocol (`[resp] listen`): the same entities as `<entity>:<id>` keys.
//! - [`ui`]: the dashboard at `/`, a page that polls `/v1/stats`.

pub mod client;
pub mod config;
pub mod http;
pub mod query;
pub mod resp;
pub mod serve;
pub mod tags;
pub mod ui;
