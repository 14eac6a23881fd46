//! `larder serve`: startup, the shared state, the serve loop, shutdown.
//!
//! Why this order: the listener is bound only after [`start`] returns, and
//! [`start`] returns only when everything is in place (config checked,
//! database reached, every entity's table described and its cache built),
//! so the first `/health` answer means the service is ready. A configured
//! store that does not answer at start is *not* an error: the service starts
//! degraded (reads bypass Redis, `/ready` says so) and never falls back to
//! `memory://`, which would split the cache between instances.
//!
//! Each engine feature meets its configuration in one place: the write
//! policy (write-back included) in [`write_policy_for`], the near cache,
//! tags, the invalidation bus and change notifications in
//! [`build_entity`], write-back flushing at shutdown in [`shutdown_caches`].

use crate::config::{Config, ConfigError, EntityConfig, WriteMode};
use crate::query::QuerySource;
use anyhow::Context as _;
use larder::source::ColumnInfo;
use larder::source::{ChangeChannel, ChangeListener};
use larder::store::{self, Store};
use larder::{Cache, ErrorKind, RawJson, SchemaPart, SqlPool, SqlSource, WritePolicy};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// How long `/ready` and startup wait for the store or the database to answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// The service's shared state: a cheap clone over `Arc`.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    config: Config,
    entities: Vec<Entity>,
    by_name: HashMap<String, usize>,
    store: Arc<dyn Store>,
    pool: SqlPool,
    token: Option<String>,
    read_token: Option<String>,
    started: Instant,
    /// Listens for change notifications of the `cdc` entities.
    changes: tokio::sync::Mutex<Option<ChangeListener>>,
    /// The Redis-protocol listener's counters.
    resp: Arc<crate::resp::Shared>,
    /// The sets (`[[set]]`), and their index by name.
    sets: Vec<crate::http::collections::SetEntry>,
    set_by_name: HashMap<String, usize>,
    /// The feeds (`[[feed]]`), and their index by name.
    feeds: Vec<crate::http::collections::FeedEntry>,
    feed_by_name: HashMap<String, usize>,
    /// The leaderboards (`[[leaderboard]]`), and their index by name.
    boards: Vec<crate::http::boards::BoardEntry>,
    board_by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.inner.store.name())
            .field("entities", &self.inner.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a name under `/v1/` names: entities, sets, feeds and
/// leaderboards share one namespace (the config refuses a name twice), so
/// a name is at most one of them. See [`AppState::resolve`].
#[derive(Debug, Clone, Copy)]
pub enum Named<'a> {
    /// A set (`[[set]]`).
    Set(&'a crate::http::collections::SetEntry),
    /// A feed (`[[feed]]`).
    Feed(&'a crate::http::collections::FeedEntry),
    /// A leaderboard (`[[leaderboard]]`).
    Board(&'a crate::http::boards::BoardEntry),
    /// An entity (`[[entity]]`).
    Entity(&'a Entity),
}

/// Where an entity's rows come from.
#[derive(Debug, Clone)]
pub enum EntitySource {
    /// A table or view.
    Table(SqlSource),
    /// A read-only query.
    Query(QuerySource),
}

/// One served entity: its configuration, its cache and its columns.
#[derive(Debug, Clone)]
pub struct Entity {
    /// The configuration it was built from.
    pub config: EntityConfig,
    /// The cache of raw JSON rows (pass-through codec: a hit is the stored bytes).
    pub cache: Cache<str, RawJson>,
    /// The source behind the cache.
    pub source: EntitySource,
    /// The effective write policy (`write` resolved against the source).
    pub write: WriteMode,
    /// The change-notification channel of its table (`cdc = true`).
    pub changes: Option<ChangeChannel>,
}

impl Entity {
    /// The entity's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The table's columns (empty for a query entity), in JSON order.
    pub fn columns(&self) -> &[ColumnInfo] {
        match &self.source {
            EntitySource::Table(s) => s.columns(),
            EntitySource::Query(_) => &[],
        }
    }

    /// The key column's name.
    pub fn key_column(&self) -> &str {
        match &self.source {
            EntitySource::Table(s) => s.key_column(),
            EntitySource::Query(_) => &self.config.key,
        }
    }
}

impl AppState {
    /// The configuration the service runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// An entity by name.
    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.inner
            .by_name
            .get(name)
            .map(|&i| &self.inner.entities[i])
    }

    /// Every entity, in configured order.
    pub fn entities(&self) -> &[Entity] {
        &self.inner.entities
    }

    /// The set named `name`, if one is configured.
    pub fn set(&self, name: &str) -> Option<&crate::http::collections::SetEntry> {
        self.inner
            .set_by_name
            .get(name)
            .map(|&i| &self.inner.sets[i])
    }

    /// The feed named `name`, if one is configured.
    pub fn feed(&self, name: &str) -> Option<&crate::http::collections::FeedEntry> {
        self.inner
            .feed_by_name
            .get(name)
            .map(|&i| &self.inner.feeds[i])
    }

    /// The leaderboard named `name`, if one is configured.
    pub fn board(&self, name: &str) -> Option<&crate::http::boards::BoardEntry> {
        self.inner
            .board_by_name
            .get(name)
            .map(|&i| &self.inner.boards[i])
    }

    /// What `name` names, if anything: every route that takes a name of
    /// any kind asks here, so a new kind cannot be missed.
    pub fn resolve(&self, name: &str) -> Option<Named<'_>> {
        if let Some(s) = self.set(name) {
            return Some(Named::Set(s));
        }
        if let Some(b) = self.board(name) {
            return Some(Named::Board(b));
        }
        if let Some(f) = self.feed(name) {
            return Some(Named::Feed(f));
        }
        self.entity(name).map(Named::Entity)
    }

    /// Every configured leaderboard, in configuration order.
    pub fn boards(&self) -> &[crate::http::boards::BoardEntry] {
        &self.inner.boards
    }

    /// Every configured feed, in configuration order.
    pub fn feeds(&self) -> &[crate::http::collections::FeedEntry] {
        &self.inner.feeds
    }

    /// Every configured set, in configuration order.
    pub fn sets(&self) -> &[crate::http::collections::SetEntry] {
        &self.inner.sets
    }

    /// The bearer token requests must carry, if one is configured.
    pub fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }

    /// The read-only bearer token, if one is configured (and a token is).
    pub fn read_token(&self) -> Option<&str> {
        self.inner.read_token.as_deref()
    }

    /// The cache store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The Redis-protocol listener's counters (commands, connections).
    pub fn resp(&self) -> &Arc<crate::resp::Shared> {
        &self.inner.resp
    }

    /// How long the service has run.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// How many rows an entity has (for progress bars), if the database says.
    pub async fn count_rows(&self, entity: &Entity) -> Option<u64> {
        // MariaDB quotes identifiers with backquotes.
        let quote = if matches!(self.inner.pool, SqlPool::MySql(_)) {
            '`'
        } else {
            '"'
        };
        let from = match (&entity.config.table, &entity.config.query) {
            (Some(t), _) => t
                .split('.')
                .map(|part| format!("{quote}{part}{quote}"))
                .collect::<Vec<_>>()
                .join("."),
            (None, Some(q)) => format!("({}) q", q.trim().trim_end_matches(';')),
            (None, None) => return None,
        };
        let sql = format!("SELECT count(*) FROM {from}");
        let n: Result<i64, _> = match &self.inner.pool {
            SqlPool::Postgres(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
            SqlPool::Sqlite(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
            SqlPool::MySql(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
        };
        n.ok().and_then(|n| u64::try_from(n).ok())
    }

    /// Whether the store answers now (one round trip, bounded).
    pub async fn store_answers(&self) -> bool {
        store_answers(&self.inner.store, &self.inner.config.store.prefix).await
    }

    /// Whether the database answers now (`SELECT 1`, bounded).
    pub async fn database_answers(&self) -> bool {
        let probe = async {
            match &self.inner.pool {
                SqlPool::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
                SqlPool::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
                SqlPool::MySql(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            }
        };
        matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(())))
    }
}

async fn store_answers(store: &Arc<dyn Store>, prefix: &str) -> bool {
    store_probe(store, prefix).await.is_ok()
}

/// One bounded round trip to the store; the error says why it failed (a
/// refused connection, a TLS certificate the CA did not sign, a timeout).
async fn store_probe(store: &Arc<dyn Store>, prefix: &str) -> Result<(), String> {
    let key = format!("{prefix}:ping");
    match tokio::time::timeout(PROBE_TIMEOUT, store.get(&key)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(one_line(&e)),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// Builds everything the service needs from a validated config: the store
/// (degraded if it does not answer), the database pool and every entity.
///
/// Errors a config can fix are [`ConfigError`]s inside the `anyhow::Error`
/// (the binary prints them as one line).
pub async fn start(config: Config) -> anyhow::Result<AppState> {
    // Before any cache is built: caches resolve their metric handles at build.
    crate::http::metrics::install();
    let token = token_of(&config);
    let read_token = read_token_of(&config);
    if read_token.is_some() && token.is_none() {
        return Err(config
            .error(
                "auth.read_token_env",
                format!(
                    "${} is set but ${} is not: a read token means nothing without the token it is a subset of",
                    config.auth.read_token_env, config.auth.token_env
                ),
            )
            .into());
    }
    if read_token.is_some() && read_token == token {
        return Err(config
            .error(
                "auth.read_token_env",
                format!(
                    "${} and ${} hold the same token: the read token must differ",
                    config.auth.read_token_env, config.auth.token_env
                ),
            )
            .into());
    }
    let store = store::connect(&config.store.url)
        .await
        .map_err(|e| config.error("store.url", e))?;
    if let Err(why) = store_probe(&store, &config.store.prefix).await {
        tracing::warn!(store = store.name(), error = %why, "the store does not answer: starting degraded (reads go to the database, outcome bypass) until it does");
        eprintln!(
            "larder: the store {} does not answer ({why}): starting degraded (reads are served from the database)",
            store.name()
        );
    }
    let pool = SqlPool::connect(&config.source.url, config.source.pool)
        .await
        .map_err(|e| {
            config.error(
                "source.url",
                format!("cannot open the database: {}", one_line(&e)),
            )
        })?;
    let mut entities = Vec::with_capacity(config.entity.len());
    for i in 0..config.entity.len() {
        entities.push(build_entity(&config, i, &pool, &store).await?);
    }
    let by_name = entities
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name().to_owned(), i))
        .collect();
    let sets = crate::http::collections::build_sets(&config, &pool, &store).await?;
    let set_by_name = sets
        .iter()
        .enumerate()
        .map(|(i, s)| (s.config.name.clone(), i))
        .collect();
    let feeds = crate::http::collections::build_feeds(&config, &pool, &store).await?;
    let boards = crate::http::boards::build_boards(&config, &pool, &store).await?;
    type Handler = Arc<dyn larder::source::ChangeHandler>;
    let subscriptions: Vec<(ChangeChannel, Handler)> = entities
        .iter()
        .filter_map(|e| Some((e.changes.clone()?, Arc::new(e.cache.clone()) as Handler)))
        .chain(
            sets.iter()
                .filter_map(|s| Some((s.changes.clone()?, Arc::new(s.cache.clone()) as Handler))),
        )
        .chain(
            feeds
                .iter()
                .filter_map(|f| Some((f.changes.clone()?, Arc::new(f.cache.clone()) as Handler))),
        )
        .chain(
            boards
                .iter()
                .filter_map(|b| Some((b.changes.clone()?, Arc::new(b.cache.clone()) as Handler))),
        )
        .collect();
    // Listening before the port is bound: a change committed once the
    // service answers is heard.
    let changes = if subscriptions.is_empty() {
        None
    } else {
        let listener = subscriptions
            .into_iter()
            .fold(ChangeListener::builder(), |b, (channel, handler)| {
                b.subscribe(channel, handler)
            })
            .application_name("larder-serve")
            .start()
            .await
            .map_err(|e| config.error("entity.cdc", one_line(&e)))?;
        Some(listener)
    };
    let feed_by_name = feeds
        .iter()
        .enumerate()
        .map(|(i, f)| (f.config.name.clone(), i))
        .collect();
    let board_by_name = boards
        .iter()
        .enumerate()
        .map(|(i, b)| (b.config.name.clone(), i))
        .collect();
    Ok(AppState {
        inner: Arc::new(StateInner {
            boards,
            board_by_name,
            feeds,
            feed_by_name,
            sets,
            set_by_name,
            config,
            entities,
            by_name,
            store,
            pool,
            token,
            read_token,
            started: Instant::now(),
            changes: tokio::sync::Mutex::new(changes),
            resp: crate::resp::new_shared(),
        }),
    })
}

/// The bearer token: the value of the `auth.token_env` variable, if set and not empty.
pub fn token_of(config: &Config) -> Option<String> {
    std::env::var(&config.auth.token_env)
        .ok()
        .filter(|t| !t.is_empty())
}

/// The read-only token: the value of the `auth.read_token_env` variable, if set and not empty.
pub fn read_token_of(config: &Config) -> Option<String> {
    std::env::var(&config.auth.read_token_env)
        .ok()
        .filter(|t| !t.is_empty())
}

/// Refuses a non-loopback listen address without a token, unless `allow_open`.
pub fn check_listen(config: &Config, has_token: bool) -> Result<(), ConfigError> {
    let addr = config.listen_addr()?;
    if !has_token && !config.auth.allow_open && !addr.ip().is_loopback() {
        return Err(config.error(
            "auth.token_env",
            format!(
                "${} is not set and {addr} is not a loopback address: set the token, listen on 127.0.0.1, or set allow_open = true",
                config.auth.token_env
            ),
        ));
    }
    Ok(())
}

/// The library's write policy for an entity: `write` resolved against
/// whether its source accepts writes.
///
/// `write = "back"` maps to [`WritePolicy::Back`] with the entity's
/// `[entity.write_back]` settings.
pub fn write_policy_for(entity: &EntityConfig, writable: bool) -> Result<WritePolicy, String> {
    match entity.write {
        None if writable => Ok(WritePolicy::Through),
        None | Some(WriteMode::ReadOnly) => Ok(WritePolicy::ReadOnly),
        Some(mode) if !writable => Err(format!(
            "write = \"{}\" needs a writable table, and `{}` is a view, a query or a table without a unique index on `{}`: set write = \"read-only\"",
            mode.as_str(),
            entity.table.as_deref().unwrap_or("(query)"),
            entity.key
        )),
        Some(WriteMode::Through) => Ok(WritePolicy::Through),
        Some(WriteMode::Around) => Ok(WritePolicy::Around),
        Some(WriteMode::Back) => Ok(WritePolicy::Back(entity.write_back.unwrap_or_default())),
    }
}

fn write_mode_of(policy: WritePolicy) -> WriteMode {
    match policy {
        WritePolicy::Through => WriteMode::Through,
        WritePolicy::Around => WriteMode::Around,
        WritePolicy::Back(_) => WriteMode::Back,
        _ => WriteMode::ReadOnly,
    }
}

/// Builds entity `i`: its source (table or query), checks what needs the
/// database, and its cache.
///
/// Applies `[near]`, `tags` (as the cache's tagger) and `cdc` (installs
/// the table's change-notification triggers; the listener starts in
/// [`start`]), and turns the invalidation bus on for every entity.
pub async fn build_entity(
    config: &Config,
    i: usize,
    pool: &SqlPool,
    store: &Arc<dyn Store>,
) -> anyhow::Result<Entity> {
    let e = &config.entity[i];
    let at = |k: &str| format!("entity[{i}].{k}");
    let unavailable = |err: &larder::Error| {
        config.error(
            "source.url",
            format!("the database does not answer: {}", one_line(err)),
        )
    };
    let (source, writable, column_names) = match (&e.table, &e.query) {
        (Some(table), _) => {
            let mut b = SqlSource::builder(pool.clone(), table)
                .key(&e.key)
                .entity(&e.name);
            if !e.columns.is_empty() {
                b = b.columns(e.columns.clone());
            }
            let source = b.build().await.map_err(|err| match err.kind() {
                ErrorKind::SourceUnavailable => unavailable(&err),
                kind => config.error(at(schema_key(kind)), one_line(&err)),
            })?;
            let mut names: Vec<String> = source.columns().iter().map(|c| c.name.clone()).collect();
            names.push(source.key_column().to_owned());
            let writable = source.is_writable();
            (EntitySource::Table(source), writable, names)
        }
        (None, Some(query)) => {
            let SqlPool::Postgres(pg) = pool else {
                return Err(config
                    .error(at("query"), "query entities need PostgreSQL")
                    .into());
            };
            let source = QuerySource::build(pg.clone(), &e.name, query, &e.key, &e.columns)
                .await
                .map_err(|err| match err.kind() {
                    ErrorKind::SourceUnavailable => unavailable(&err),
                    _ => config.error(at("query"), one_line(&err)),
                })?;
            let names = source.column_names().to_vec();
            (EntitySource::Query(source), false, names)
        }
        (None, None) => return Err(config.error(at("table"), "no table or query").into()),
    };
    for template in &e.tags {
        let cols = EntityConfig::tag_columns(template).map_err(|p| config.error(at("tags"), p))?;
        if let Some(c) = cols.iter().find(|c| !column_names.iter().any(|n| n == *c)) {
            return Err(config
                .error(
                    at("tags"),
                    format!(
                        "tag template {template:?} names column `{c}`, which `{}` does not serve (columns: {})",
                        e.name,
                        column_names.join(", ")
                    ),
                )
                .into());
        }
    }
    if e.cdc {
        check_cdc_table(config, i, pool).await?;
    }
    let policy = write_policy_for(e, writable).map_err(|p| config.error(at("write"), p))?;
    let mut builder = e
        .cache_builder(config.near)
        .prefix(&config.store.prefix)
        .store(store.clone())
        .write_policy(policy);
    if !e.tags.is_empty() {
        builder = builder.tagger(crate::tags::tagger(e.tags.clone()));
    }
    // Every entity runs the invalidation bus: purges, tag invalidations and
    // change-notification gaps reach every instance, and entries carry the
    // stamps those checks need (the hit path stays one GET).
    builder = builder.bus(true);
    if let Some(dir) = &config.state_dir {
        builder = builder.state_dir(dir);
    }
    let builder = match &source {
        EntitySource::Table(s) => builder.source(s.clone()),
        EntitySource::Query(s) => builder.source(s.clone()),
    };
    let cache = builder.build().await.map_err(|err| match err.kind() {
        ErrorKind::InvalidSetting => config.setting_error(Some(i), &err, "name"),
        ErrorKind::LayoutMismatch if representation_differs(&err) => {
            config.error(at("representation"), one_line(&err))
        }
        ErrorKind::LayoutMismatch => config.error(at("shards"), one_line(&err)),
        ErrorKind::NotDurable => config.error(at("write_back.require_durable"), one_line(&err)),
        ErrorKind::Config if policy.is_write_back() => {
            config.error(at("write_back"), one_line(&err))
        }
        _ => config.error(at("name"), one_line(&err)),
    })?;
    let changes = match (&source, e.cdc) {
        (EntitySource::Table(s), true) => Some(
            s.install_change_triggers()
                .await
                .map_err(|err| config.error(at("cdc"), one_line(&err)))?,
        ),
        _ => None,
    };
    Ok(Entity {
        config: e.clone(),
        cache,
        source,
        write: write_mode_of(policy),
        changes,
    })
}

/// Which key of an entity a build error of its `SqlSource` is about: the
/// part of the table the schema error names; the table for anything else.
fn schema_key(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Schema(SchemaPart::Key) => "key",
        ErrorKind::Schema(SchemaPart::Column) => "columns",
        _ => "table",
    }
}

/// `cdc = true` needs a PostgreSQL table (not a view or a query).
async fn check_cdc_table(config: &Config, i: usize, pool: &SqlPool) -> anyhow::Result<()> {
    let e = &config.entity[i];
    let key = format!("entity[{i}].cdc");
    let (SqlPool::Postgres(pg), Some(table)) = (pool, &e.table) else {
        return Err(config
            .error(key, "change notifications need a PostgreSQL table")
            .into());
    };
    let kind: Option<String> =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)")
            .bind(table)
            .fetch_optional(pg)
            .await
            .context("reading the table's kind")?;
    match kind.as_deref() {
        Some("r" | "p") => Ok(()),
        _ => Err(config
            .error(
                key,
                format!("`{table}` is not a table (a view?): change notifications need a table"),
            )
            .into()),
    }
}

/// Error text on one line (library messages may quote multi-line driver text).
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().replace(['\n', '\r'], " ")
}

/// Serves `app` on a bound `listener` until `shutdown` resolves, then lets
/// requests in flight finish and calls [`shutdown_caches`].
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_resp(listener, None, state, shutdown).await
}

/// [`run`], plus the Redis protocol on `resp` (if given): both stop on
/// `shutdown`, and the caches are closed once both have finished.
pub async fn run_with_resp(
    listener: TcpListener,
    resp: Option<TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let resp_task =
        resp.map(|l| tokio::spawn(crate::resp::run(l, state.clone(), signal(stopped.clone()))));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let app = crate::http::app(state.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(signal(stopped))
        .await
        .context("serving HTTP");
    if let Some(task) = resp_task {
        if served.is_err() {
            // HTTP failed without a shutdown signal: RESP stops with it.
            task.abort();
        }
        match task.await {
            Err(e) if e.is_cancelled() => {}
            Ok(r) => r?,
            Err(e) => tracing::error!(error = %e, "the RESP listener failed"),
        }
    }
    served?;
    shutdown_caches(&state).await;
    Ok(())
}

/// Called once after the last request finished.
///
/// Stops the change-notification listener, then closes every entity for
/// up to `shutdown_grace` each: write-back writes are flushed (what
/// remains stays durable in the store) and owed invalidations retried
/// (what remains goes to `state_dir`, replayed at the next start).
pub async fn shutdown_caches(state: &AppState) {
    let grace = state.inner.config.shutdown_grace.0;
    if let Some(listener) = state.inner.changes.lock().await.take() {
        listener.close().await;
    }
    for e in state.entities() {
        match e.cache.close(grace).await {
            Ok(_) if e.cache.owed_invalidations() > 0 => tracing::warn!(
                entity = e.name(),
                owed = e.cache.owed_invalidations(),
                kept = state.inner.config.state_dir.is_some(),
                "invalidations still owed at shutdown (the store is unreachable); kept for the next start if state_dir is set, else forgotten"
            ),
            Ok(closed) if closed.pending > 0 => tracing::warn!(
                entity = e.name(),
                pending = closed.pending,
                "write-back writes left pending; they stay durable in the store"
            ),
            Ok(_) => tracing::debug!(entity = e.name(), "cache closed"),
            Err(err) => {
                tracing::warn!(entity = e.name(), error = %err, "could not flush write-back writes at shutdown; they stay durable in the store")
            }
        }
    }
    for s in state.sets().iter().filter(|s| s.cache.is_write_back()) {
        close_collection("set", &s.config.name, grace, s.cache.close()).await;
    }
    for b in state.boards().iter().filter(|b| b.cache.is_write_back()) {
        close_collection("leaderboard", &b.config.name, grace, b.cache.close()).await;
    }
}

/// Waits up to `grace` for a write-back collection's `close` (its flusher
/// drains); what is left stays durable in the store, and is logged.
async fn close_collection(
    kind: &str,
    name: &str,
    grace: std::time::Duration,
    close: impl std::future::Future<Output = larder::Result<()>>,
) {
    match tokio::time::timeout(grace, close).await {
        Ok(Ok(())) => tracing::debug!(kind, name, "write-back collection closed"),
        Ok(Err(err)) => {
            tracing::warn!(kind, name, error = %err, "could not flush write-back writes at shutdown; they stay durable in the store")
        }
        Err(_) => tracing::warn!(
            kind,
            name,
            "write-back writes left pending at shutdown; they stay durable in the store"
        ),
    }
}

/// The embedded defaults: Redis at 127.0.0.1:6379 if it answers, else
/// `memory://`; a SQLite file `db_path` with a sample `users` table
/// (created and filled if missing). Returns the config and a sentence
/// saying what was chosen.
pub async fn default_config(db_path: &Path) -> anyhow::Result<(Config, String)> {
    const LOCAL_REDIS: &str = "redis://127.0.0.1:6379/0";
    let checked = tokio::time::timeout(PROBE_TIMEOUT, store::connect_checked(LOCAL_REDIS)).await;
    let redis_up = matches!(checked, Ok(Ok(_)));
    let store_url = if redis_up { LOCAL_REDIS } else { "memory://" };
    let config = Config::defaults(db_path, store_url);
    let pool = SqlPool::connect(&config.source.url, 1)
        .await
        .with_context(|| format!("opening the SQLite database {}", db_path.display()))?;
    if let SqlPool::Sqlite(db) = &pool {
        seed_users(db).await?;
        db.close().await;
    }
    let note = format!(
        "no config file: using the embedded defaults: database {} (sample entity `users`), store {}{}; see larder.example.toml to configure",
        config.source.url,
        store_url,
        if redis_up { "" } else { " (no Redis answered at 127.0.0.1:6379)" }
    );
    Ok((config, note))
}

async fn seed_users(db: &sqlx::SqlitePool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, team INTEGER NOT NULL DEFAULT 0)",
    )
    .execute(db)
    .await
    .context("creating the sample users table")?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(db)
        .await
        .context("counting sample users")?;
    if count == 0 {
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) \
             INSERT INTO users (id, name, email, team) SELECT i, 'user ' || i, 'user' || i || '@example.com', i % 10 FROM n",
        )
        .execute(db)
        .await
        .context("filling the sample users table")?;
    }
    Ok(())
}

/// Whether a refused layout differs in its representation (`hash` vs
/// `string`) rather than its shards.
fn representation_differs(err: &larder::Error) -> bool {
    match err {
        larder::Error::LayoutMismatch {
            recorded,
            configured,
            ..
        } => recorded.contains("representation=") != configured.contains("representation="),
        _ => false,
    }
}
