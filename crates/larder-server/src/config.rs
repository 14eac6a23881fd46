//! The service's configuration: one TOML file mapping entities to tables.
//!
//! Why a module of its own: a bad config must stop startup with ONE line
//! that names the file, the key and the problem
//! (`larder: larder.toml: entity[0].ttl: invalid duration "5x": ...`), and
//! that needs every key, every default and every check in one place.
//! Parsing is serde with `deny_unknown_fields` (tracked by
//! `serde_path_to_error`, so an unknown or mistyped key is named by its
//! path); [`Config::validate`] then checks what types cannot say (names,
//! combinations). Checks that need the database (tables, columns, views)
//! run at startup in [`crate::serve`], and report through the same
//! [`ConfigError`].
//!
//! The engine's settings are the library's: `[near]` *is*
//! [`larder::NearOptions`], `[entity.write_back]` *is* [`larder::WriteBackOptions`],
//! and an entity's freshness settings take their defaults from the
//! library's constants and their verdict from
//! [`larder::CacheBuilder::validate`]. So every default and limit has one
//! home, and a refused setting ([`larder::Error::InvalidSetting`]) is
//! reported at its key here (`entity[0].write_back.batch: must be at most
//! 10000`).
//!
//! `larder.example.toml` at the repository root lists every key with its
//! default; a test parses it so it stays true.

use larder::{Cache, CacheBuilder, NearOptions, PassThrough, RawJson, WriteBackOptions};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Entity names the HTTP API uses for itself under `/v1/`.
pub const RESERVED_NAMES: [&str; 3] = ["stats", "tags", "_admin"];

/// A configuration that cannot work: which file, which key, what is wrong.
///
/// Displays as the one line the binary prints:
/// `larder: <file>: <key>: <problem>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file (or `(defaults)` without one).
    pub file: String,
    /// The key, as a path: `listen`, `store.url`, `entity[0].ttl`.
    pub key: String,
    /// What is wrong, in one line.
    pub problem: String,
}

impl ConfigError {
    /// A config error; newlines in `problem` are folded so it stays one line.
    pub fn new(file: &str, key: impl Into<String>, problem: impl fmt::Display) -> Self {
        let problem = problem.to_string().replace(['\n', '\r'], " ");
        Self {
            file: file.to_owned(),
            key: key.into(),
            problem,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "larder: {}: {}: {}", self.file, self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// A duration written as in `"60s"`, `"5m"`, `"250ms"` (humantime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        larder::parse_duration(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size in bytes, written `"1MiB"`, `"512KiB"`, `"10MB"` or as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl ByteSize {
    /// Parses `"1MiB"`, `"64 KiB"`, `"2MB"`, `"100"` (bytes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: usize = num
            .parse()
            .map_err(|_| format!("invalid size {text:?}: write e.g. \"1MiB\", \"512KiB\""))?;
        let mult: usize = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {text:?}: use B, KiB, MiB, GiB, KB, MB or GB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size such as \"1MiB\" or a number of bytes")
        })? {
            Raw::Int(n) => usize::try_from(n)
                .map(ByteSize)
                .map_err(|_| serde::de::Error::custom("size too large")),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The file this came from, for messages (not a key). Default: `(defaults)`.
    #[serde(skip)]
    pub file: String,
    /// The address to listen on. Default: `127.0.0.1:7070`.
    pub listen: String,
    /// The largest request body accepted (413 above). Default: `1MiB`.
    pub body_limit: ByteSize,
    /// A directory where each entity keeps the invalidations it owes (the
    /// store was unreachable when they happened) across restarts; absent:
    /// they live in memory only and a stop or crash forgets them.
    /// Default: none.
    pub state_dir: Option<std::path::PathBuf>,
    /// How long shutdown (SIGTERM, ctrl-c) flushes write-back writes and
    /// retries owed invalidations, per entity, before leaving the rest
    /// (write-back writes stay durable in the store; owed invalidations
    /// go to `state_dir`). Default: `10s`.
    pub shutdown_grace: Dur,
    /// The cache store. See [`StoreConfig`].
    pub store: StoreConfig,
    /// The database. See [`SourceConfig`].
    pub source: SourceConfig,
    /// The near cache (L1) for every entity (`capacity`, `ttl`, defaults
    /// [`NearOptions::DEFAULT_CAPACITY`] and [`NearOptions::DEFAULT_TTL`]);
    /// absent: none.
    pub near: Option<NearOptions>,
    /// Authentication. See [`AuthConfig`].
    pub auth: AuthConfig,
    /// The entities (`[[entity]]`).
    pub entity: Vec<EntityConfig>,
    /// The Redis-protocol listener. See [`RespConfig`].
    pub resp: RespConfig,
    /// The sets (`[[set]]`). See [`SetConfig`].
    pub set: Vec<SetConfig>,
    /// The feeds (`[[feed]]`). See [`FeedConfig`].
    pub feed: Vec<FeedConfig>,
    /// The leaderboards (`[[leaderboard]]`). See [`BoardConfig`].
    pub leaderboard: Vec<BoardConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            file: "(defaults)".into(),
            listen: "127.0.0.1:7070".into(),
            body_limit: ByteSize(1 << 20),
            state_dir: None,
            shutdown_grace: Dur(Duration::from_secs(10)),
            store: StoreConfig::default(),
            source: SourceConfig::default(),
            near: None,
            auth: AuthConfig::default(),
            entity: Vec::new(),
            resp: RespConfig::default(),
            set: Vec::new(),
            feed: Vec::new(),
            leaderboard: Vec::new(),
        }
    }
}

/// `[store]`: where the cache lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redis://`, `rediss://`, `redis+cluster://host:port[,host:port...]`
    /// (Redis Cluster; `rediss+cluster://` with TLS) or `memory://`.
    /// Default: `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// The first segment of every key, `[a-z0-9_-]`. Default: `larder`.
    pub prefix: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            prefix: "larder".into(),
        }
    }
}

/// `[source]`: the database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `sqlite://FILE`, `postgres://…`, `postgresql://…` or `mysql://…`
    /// (MariaDB 10.6+). Default: `sqlite://larder.db`.
    pub url: String,
    /// Connections in the pool. Default: 8.
    pub pool: u32,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://larder.db".into(),
            pool: 8,
        }
    }
}

impl SourceConfig {
    /// Whether the database is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }

    /// Whether the database is MySQL/MariaDB.
    pub fn is_mysql(&self) -> bool {
        self.url.starts_with("mysql://") || self.url.starts_with("mariadb://")
    }
}

/// `[entity.near]`: a per-entity near cache override, or `near = false`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EntityNear {
    /// `near = false`: no near cache for this entity; `near = true`: the
    /// global `[near]` (or its defaults).
    Enabled(bool),
    /// `[entity.near]` with `capacity` and/or `ttl`.
    Override {
        /// Entries kept; absent: the global value.
        capacity: Option<u64>,
        /// How long an entry is kept; absent: the global value.
        ttl: Option<Dur>,
    },
}

impl<'de> Deserialize<'de> for EntityNear {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            capacity: Option<u64>,
            ttl: Option<Dur>,
        }
        let value = toml::Value::deserialize(d)?;
        match value {
            toml::Value::Boolean(b) => Ok(EntityNear::Enabled(b)),
            toml::Value::Table(t) => {
                let t: Table = toml::Value::Table(t)
                    .try_into()
                    .map_err(|e: toml::de::Error| serde::de::Error::custom(e.message()))?;
                Ok(EntityNear::Override {
                    capacity: t.capacity,
                    ttl: t.ttl,
                })
            }
            _ => Err(serde::de::Error::custom(
                "expected false, true or a table with capacity and ttl",
            )),
        }
    }
}

/// `[resp]`: the Redis-protocol listener (off unless `listen` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RespConfig {
    /// The address to listen on, e.g. `127.0.0.1:7379`; absent: no listener. Default: none.
    pub listen: Option<String>,
    /// The most connections served at once; more are refused. Default: 10,000.
    pub max_clients: usize,
    /// A connection idle this long is closed; `0s`: never. Default: `5m`.
    pub idle_timeout: Dur,
}

impl Default for RespConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_clients: 10_000,
            idle_timeout: Dur(Duration::from_secs(300)),
        }
    }
}

/// `[auth]`: who may call which route.
///
/// With a token set (the variable `token_env` names is set and not empty),
/// every route but `/health`, `/ready` and `/v1/openapi.json` needs
/// `Authorization: Bearer <token>`. The read token (`read_token_env`)
/// opens only the reads: row and multi-row GETs, `/v1/stats` and
/// `/metrics` (403 elsewhere). `public_reads` opens the row reads of every
/// entity to anyone; `[[entity]] public_reads` does so for one entity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The environment variable holding the (admin) bearer token. Default: `LARDER_TOKEN`.
    pub token_env: String,
    /// The environment variable holding the read-only bearer token. Default: `LARDER_READ_TOKEN`.
    pub read_token_env: String,
    /// Without a token, listen on a non-loopback address anyway. Default: false.
    pub allow_open: bool,
    /// Row reads of every entity need no token. Default: false.
    pub public_reads: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_env: "LARDER_TOKEN".into(),
            read_token_env: "LARDER_READ_TOKEN".into(),
            allow_open: false,
            public_reads: false,
        }
    }
}

/// An entity's write policy as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// Write-through: the database first, the stored row cached.
    Through,
    /// Write-around: the database, then the entry invalidated.
    Around,
    /// Write-back: cached and recorded dirty, flushed in batches.
    Back,
    /// Writes refused (405).
    ReadOnly,
}

impl WriteMode {
    /// The configured word.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Through => "through",
            WriteMode::Around => "around",
            WriteMode::Back => "back",
            WriteMode::ReadOnly => "read-only",
        }
    }
}

/// One `[[entity]]`: a table (or a read-only query) served under `/v1/{name}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntityConfig {
    /// `[a-z0-9_-]`, not `stats`, `tags` or `_admin`. Required.
    pub name: String,
    /// A table or view (`table` or `schema.table`). One of `table`, `query`.
    pub table: Option<String>,
    /// A read-only query whose rows include the key column (PostgreSQL only).
    pub query: Option<String>,
    /// The key column. Default: `id`.
    pub key: String,
    /// The columns served and written; empty: all. Default: empty.
    pub columns: Vec<String>,
    /// How long an entry is fresh. Default: [`larder::DEFAULT_TTL`] (`60s`).
    pub ttl: Dur,
    /// `fresh_for = ttl × (1 ± jitter)`, in [0, 1). Default:
    /// [`larder::DEFAULT_JITTER`] (0.1).
    pub jitter: f64,
    /// Stale-while-revalidate and fail-safe window; `0s`: off. Default:
    /// [`larder::DEFAULT_STALE`] (`5m`).
    pub stale: Dur,
    /// How long "not found" is remembered. Default:
    /// [`larder::DEFAULT_NEGATIVE_TTL`] (`10s`).
    pub negative_ttl: Dur,
    /// How long a loader owns a key. Default: [`larder::DEFAULT_LEASE_TTL`] (`5s`).
    pub lease_ttl: Dur,
    /// Hard limit of one load. Default: [`larder::DEFAULT_LOAD_TIMEOUT`] (`2s`).
    pub load_timeout: Dur,
    /// With a stale value: wait this long for the refresh; `0s`: off. Default: `0s`.
    pub soft_timeout: Dur,
    /// How long a caller waits for another caller's load. Default: `load_timeout`.
    pub wait_timeout: Option<Dur>,
    /// XFetch β; 0: off. Default: [`larder::DEFAULT_EARLY_REFRESH`] (1.0).
    pub early_refresh: f64,
    /// `through`, `around`, `back` or `read-only`. Default: `through` for a
    /// writable table, `read-only` for views and queries.
    pub write: Option<WriteMode>,
    /// Tag templates from row columns, e.g. `team:{team_id}`. Default: none.
    pub tags: Vec<String>,
    /// PostgreSQL change notifications (installs triggers). Default: false.
    pub cdc: bool,
    /// Shards of the entity's keys. Default: 64.
    pub shards: u16,
    /// Per-entity near cache: a table overriding `[near]`, or `false`. Default: `[near]`.
    pub near: Option<EntityNear>,
    /// Write-back settings (only with `write = "back"`), the library's own
    /// type with its defaults and limits. Default: [`WriteBackOptions::default`].
    pub write_back: Option<WriteBackOptions>,
    /// Row reads (`GET /v1/{name}/{id}`, `GET /v1/{name}?ids=`) need no
    /// token even when one is set. Default: false (or `[auth] public_reads`).
    pub public_reads: bool,
    /// Over the Redis protocol, `SET`/`HSET`/`DEL` write the row (PUT, PATCH,
    /// DELETE) instead of being refused (`SET`, `HSET`) or invalidating
    /// (`DEL`). Default: false.
    pub resp_writes: bool,
    /// How entries are held in Redis: `string` (one JSON envelope) or
    /// `hash` (a field per column; `?fields=` is one `HMGET`; under
    /// `write = "back"`, a PATCH sets just its fields and `incr` counts
    /// exactly once). Default: `string`.
    pub representation: larder::Representation,
}

impl Default for EntityConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            table: None,
            query: None,
            key: "id".into(),
            columns: Vec::new(),
            ttl: Dur(larder::DEFAULT_TTL),
            jitter: larder::DEFAULT_JITTER,
            stale: Dur(larder::DEFAULT_STALE),
            negative_ttl: Dur(larder::DEFAULT_NEGATIVE_TTL),
            lease_ttl: Dur(larder::DEFAULT_LEASE_TTL),
            load_timeout: Dur(larder::DEFAULT_LOAD_TIMEOUT),
            soft_timeout: Dur(Duration::ZERO),
            wait_timeout: None,
            early_refresh: larder::DEFAULT_EARLY_REFRESH,
            write: None,
            tags: Vec::new(),
            cdc: false,
            shards: larder::DEFAULT_SHARDS,
            near: None,
            write_back: None,
            public_reads: false,
            resp_writes: false,
            representation: larder::Representation::String,
        }
    }
}

impl EntityConfig {
    /// The near cache this entity gets, if any: `[entity.near]` over `[near]`.
    pub fn near_cache(&self, global: Option<NearOptions>) -> Option<NearOptions> {
        match self.near {
            Some(EntityNear::Enabled(false)) => None,
            Some(EntityNear::Enabled(true)) => Some(global.unwrap_or_default()),
            Some(EntityNear::Override { capacity, ttl }) => {
                let base = global.unwrap_or_default();
                Some(NearOptions {
                    capacity: capacity.unwrap_or(base.capacity),
                    ttl: ttl.map_or(base.ttl, |t| t.0),
                })
            }
            None => global,
        }
    }

    /// A cache builder with this entity's engine settings: freshness and
    /// timing, shards and its near cache (`global` is `[near]`). The
    /// store, source, codec and write policy are the caller's.
    /// [`CacheBuilder::validate`] on it is this entity's settings check.
    pub fn cache_builder(&self, global: Option<NearOptions>) -> CacheBuilder<str, RawJson> {
        let mut builder = Cache::<str, RawJson>::builder()
            .entity(&self.name)
            .shards(self.shards)
            .codec(PassThrough)
            .ttl(self.ttl.0)
            .jitter(self.jitter)
            .stale(self.stale.0)
            .negative_ttl(self.negative_ttl.0)
            .lease_ttl(self.lease_ttl.0)
            .load_timeout(self.load_timeout.0)
            .soft_timeout(self.soft_timeout.0)
            .early_refresh(self.early_refresh)
            .representation(self.representation);
        if let Some(wait) = self.wait_timeout {
            builder = builder.wait_timeout(wait.0);
        }
        if let Some(near) = self.near_cache(global) {
            builder = builder.near(near);
        }
        builder
    }

    /// The column names a tag template refers to (`team:{team_id}` → `team_id`).
    pub fn tag_columns(template: &str) -> Result<Vec<&str>, String> {
        let mut cols = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("tag template {template:?} has a `}}` without `{{`"));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("tag template {template:?} has a `{{` without `}}`"))?;
            let col = &after[..close];
            if !is_ident(col) {
                return Err(format!(
                    "tag template {template:?}: `{{{col}}}` is not a column name"
                ));
            }
            cols.push(col);
            rest = &after[close + 1..];
        }
        if cols.is_empty() {
            return Err(format!(
                "tag template {template:?} names no column: write e.g. \"team:{{team_id}}\""
            ));
        }
        Ok(cols)
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 63 characters (SQL identifiers larder accepts).
pub fn is_ident(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= 63
        && b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&file, "(file)", format!("cannot read it: {e}")))?;
        Config::parse(&text, &file)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let key = if path == "." || path.is_empty() {
                line_of(text, inner.span())
            } else {
                path
            };
            let message = inner.message().trim().to_owned();
            ConfigError::new(file, key, message)
        })?;
        file.clone_into(&mut config.file);
        config.validate()?;
        Ok(config)
    }

    /// The embedded defaults used without a config file: a SQLite file
    /// `larder.db` (in `db_dir`) with a sample `users` entity; `store_url`
    /// is the Redis that answered, or `memory://`.
    pub fn defaults(db_path: &Path, store_url: &str) -> Config {
        Config {
            file: "(defaults)".into(),
            store: StoreConfig {
                url: store_url.to_owned(),
                ..StoreConfig::default()
            },
            source: SourceConfig {
                url: format!("sqlite://{}", db_path.display()),
                ..SourceConfig::default()
            },
            entity: vec![EntityConfig {
                name: "users".into(),
                table: Some("users".into()),
                ..EntityConfig::default()
            }],
            ..Config::default()
        }
    }

    /// The listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            ConfigError::new(
                &self.file,
                "listen",
                format!(
                    "invalid address {:?}: {e} (write host:port, e.g. \"127.0.0.1:7070\")",
                    self.listen
                ),
            )
        })
    }

    /// The Redis-protocol listen address, if one is configured.
    pub fn resp_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(listen) = &self.resp.listen else {
            return Ok(None);
        };
        listen.parse().map(Some).map_err(|e| {
            ConfigError::new(
                &self.file,
                "resp.listen",
                format!(
                    "invalid address {listen:?}: {e} (write host:port, e.g. \"127.0.0.1:7379\")"
                ),
            )
        })
    }

    /// An error about `key` of this file.
    pub fn error(&self, key: impl Into<String>, problem: impl fmt::Display) -> ConfigError {
        ConfigError::new(&self.file, key, problem)
    }

    /// A library error about entity `i` (or, with `None`, the top level)
    /// at its key: a refused setting at the key its name maps to
    /// (`write_back.batch` → `entity[0].write_back.batch`; `near.ttl` of an
    /// entity → `entity[0].near.ttl`, of `[near]` → `near.ttl`), anything
    /// else at `fallback`.
    pub fn setting_error(
        &self,
        entity: Option<usize>,
        err: &larder::Error,
        fallback: &str,
    ) -> ConfigError {
        let at = |key: &str| match entity {
            Some(i) => format!("entity[{i}].{key}"),
            None => key.to_owned(),
        };
        match err {
            larder::Error::InvalidSetting { setting, reason } => self.error(at(setting), reason),
            other => self.error(at(fallback), other),
        }
    }

    /// Checks everything that can be checked without a database or store.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.resp_addr()?;
        if self.resp.max_clients == 0 {
            return Err(self.error("resp.max_clients", "must be at least 1"));
        }
        if self.body_limit.0 == 0 {
            return Err(self.error("body_limit", "must be more than 0 bytes"));
        }
        let scheme = self.store.url.split("://").next().unwrap_or_default();
        if !matches!(
            scheme,
            "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "memory"
        ) || !self.store.url.contains("://")
        {
            return Err(self.error(
                "store.url",
                format!(
                    "unsupported store URL {:?}: use redis://, rediss://, redis+cluster://host:port[,host:port...], rediss+cluster:// or memory://",
                    redact(&self.store.url)
                ),
            ));
        }
        larder::validate_name("prefix", &self.store.prefix)
            .map_err(|e| self.error("store.prefix", e))?;
        let src = &self.source.url;
        if !(self.source.is_postgres() || self.source.is_mysql() || src.starts_with("sqlite:")) {
            return Err(self.error(
                "source.url",
                format!(
                    "unsupported database URL {:?}: use sqlite://, postgres://, postgresql:// or mysql://",
                    redact(src)
                ),
            ));
        }
        if self.source.pool == 0 {
            return Err(self.error("source.pool", "must be at least 1"));
        }
        if let Some(near) = &self.near {
            near.validate()
                .map_err(|e| self.setting_error(None, &e, "near"))?;
        }
        if self.auth.token_env.trim().is_empty() {
            return Err(self.error(
                "auth.token_env",
                "must name an environment variable (default LARDER_TOKEN)",
            ));
        }
        if self.auth.read_token_env.trim().is_empty() {
            return Err(self.error(
                "auth.read_token_env",
                "must name an environment variable (default LARDER_READ_TOKEN)",
            ));
        }
        if self.auth.read_token_env == self.auth.token_env {
            return Err(self.error(
                "auth.read_token_env",
                "must name another variable than token_env: the read token opens fewer routes",
            ));
        }
        if self.entity.is_empty()
            && self.set.is_empty()
            && self.feed.is_empty()
            && self.leaderboard.is_empty()
        {
            return Err(self.error(
                "entity",
                "no [[entity]] configured: add at least one (see larder.example.toml)",
            ));
        }
        for (i, e) in self.entity.iter().enumerate() {
            self.validate_entity(i, e)?;
        }
        for (i, s) in self.set.iter().enumerate() {
            self.validate_set(i, s)?;
        }
        for (i, f) in self.feed.iter().enumerate() {
            self.validate_feed(i, f)?;
        }
        for (i, b) in self.leaderboard.iter().enumerate() {
            self.validate_board(i, b)?;
        }
        Ok(())
    }

    fn validate_entity(&self, i: usize, e: &EntityConfig) -> Result<(), ConfigError> {
        let at = |k: &str| format!("entity[{i}].{k}");
        if e.name.is_empty() {
            return Err(self.error(at("name"), "every [[entity]] needs a name"));
        }
        larder::validate_name("entity", &e.name).map_err(|err| self.error(at("name"), err))?;
        if RESERVED_NAMES.contains(&e.name.as_str()) {
            return Err(self.error(
                at("name"),
                format!(
                    "`{}` is reserved by the HTTP API (reserved: stats, tags, _admin)",
                    e.name
                ),
            ));
        }
        if let Some(j) = self.entity[..i].iter().position(|o| o.name == e.name) {
            return Err(self.error(
                at("name"),
                format!("entity `{}` is already defined by entity[{j}]", e.name),
            ));
        }
        match (&e.table, &e.query) {
            (None, None) => {
                return Err(self.error(
                    at("table"),
                    "give a `table` (or view), or a read-only `query`",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(self.error(at("query"), "give either `table` or `query`, not both"))
            }
            (Some(t), None) => {
                let ok = match t.split_once('.') {
                    Some((s, n)) => is_ident(s) && is_ident(n),
                    None => is_ident(t),
                };
                if !ok {
                    return Err(self.error(
                        at("table"),
                        format!("invalid table name {t:?}: use [A-Za-z0-9_] (or schema.table)"),
                    ));
                }
            }
            (None, Some(q)) => {
                if !self.source.is_postgres() {
                    return Err(self.error(
                        at("query"),
                        "query entities need PostgreSQL (source.url postgres://); on SQLite use a view as `table`",
                    ));
                }
                let head = q.trim_start().to_ascii_lowercase();
                if !(head.starts_with("select") || head.starts_with("with")) {
                    return Err(
                        self.error(at("query"), "a query must be a SELECT (or WITH … SELECT)")
                    );
                }
                if q.trim().trim_end_matches(';').contains(';') {
                    return Err(self.error(at("query"), "a query must be one statement"));
                }
                if matches!(e.write, Some(w) if w != WriteMode::ReadOnly) {
                    return Err(self.error(
                        at("write"),
                        "a query entity is read-only: remove `write` or set it to \"read-only\"",
                    ));
                }
                if e.cdc {
                    return Err(
                        self.error(at("cdc"), "change notifications need a table, not a query")
                    );
                }
            }
        }
        if !is_ident(&e.key) {
            return Err(self.error(at("key"), format!("invalid column name {:?}", e.key)));
        }
        for c in &e.columns {
            if !is_ident(c) {
                return Err(self.error(at("columns"), format!("invalid column name {c:?}")));
            }
        }
        e.cache_builder(self.near)
            .validate()
            .map_err(|err| self.setting_error(Some(i), &err, "name"))?;
        for t in &e.tags {
            EntityConfig::tag_columns(t).map_err(|p| self.error(at("tags"), p))?;
        }
        if e.cdc && self.source.is_mysql() {
            return Err(self.error(
                at("cdc"),
                "MySQL/MariaDB has no change notifications: set cdc = false and invalidate explicitly after writes that bypass larder (POST /v1/{entity}/{id}/invalidate)",
            ));
        }
        if e.cdc && !self.source.is_postgres() {
            return Err(self.error(
                at("cdc"),
                "change notifications need PostgreSQL (source.url postgres://)",
            ));
        }
        match (&e.write_back, e.write) {
            (Some(_), w) if w != Some(WriteMode::Back) => {
                return Err(self.error(
                    at("write_back"),
                    "[entity.write_back] is only for write = \"back\"",
                ))
            }
            (Some(wb), _) => wb
                .validate()
                .map_err(|err| self.setting_error(Some(i), &err, "write_back"))?,
            (None, _) => {}
        }
        if e.write == Some(WriteMode::Back) && self.store.url.starts_with("memory://") {
            return Err(self.error(
                at("write"),
                "write-back needs a durable Redis store: memory:// loses pending writes when the process ends",
            ));
        }
        Ok(())
    }
}

/// `line N` for a parse error without a key path (TOML syntax).
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let at = span.start.min(text.len());
            let line = text[..at].bytes().filter(|&b| b == b'\n').count() + 1;
            format!("line {line}")
        }
        None => "(toml)".into(),
    }
}

/// A URL without its password.
pub fn redact(url: &str) -> String {
    if url.contains("+cluster://") {
        return larder::store::redact_url(url);
    }
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A set's write policy as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetWriteMode {
    /// Write-through: the database first, then the cached set.
    Through,
    /// Write-back: acknowledged once a durable store holds the write,
    /// flushed to the database in batches.
    Back,
    /// Writes refused (405).
    ReadOnly,
}

/// One `[[set]]`: the rows of a table grouped by an owner column, one set
/// of members per owner, served under `/v1/{name}/{owner}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SetConfig {
    /// `[a-z0-9_-]`, one namespace with entities. Required.
    pub name: String,
    /// The table (`table` or `schema.table`); needs a unique index on
    /// (owner, member). Required.
    pub table: String,
    /// The column grouping members into sets. Required.
    pub owner: String,
    /// The member column. Required.
    pub member: String,
    /// An owner with more members is not cached (its count is). Default:
    /// [`larder::DEFAULT_MAX_MEMBERS`] (100,000).
    pub max_members: u64,
    /// `through`, `back` (adds and removals acknowledged once a durable
    /// Redis holds them, `202 {"queued": true}`, flushed in batches) or
    /// `read-only`. Default: `through`.
    pub write: SetWriteMode,
    /// Write-back's settings (`[set.write_back]`, only with `write =
    /// "back"`): the same table as `[entity.write_back]`, which *is*
    /// [`WriteBackOptions`]. Default: [`WriteBackOptions::default`].
    pub write_back: Option<WriteBackOptions>,
    /// How long a loaded set is fresh. Default: [`larder::DEFAULT_TTL`] (`60s`).
    pub ttl: Dur,
    /// How long past `ttl` the cached collection is still served (`X-Cache:
    /// stale`) while one refresh loads it again; `0s`: off. Default: `0s`.
    pub stale: Dur,
    /// How long a loader owns an owner's lease. Default: `5s`.
    pub lease_ttl: Dur,
    /// How long a reader waits for another's load. Default: `lease_ttl`.
    pub wait_timeout: Option<Dur>,
    /// Shards of the set's keys. Default: 64.
    pub shards: u16,
    /// Reads need no token even when one is set. Default: false.
    pub public_reads: bool,
    /// Install change triggers on the table (PostgreSQL) and invalidate an
    /// owner's set when one of its rows changes (both owners when a row
    /// moves); a TRUNCATE purges the set. Default: false.
    pub cdc: bool,
}

impl Default for SetConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            table: String::new(),
            owner: String::new(),
            member: String::new(),
            max_members: larder::DEFAULT_MAX_MEMBERS,
            write: SetWriteMode::Through,
            write_back: None,
            ttl: Dur(larder::DEFAULT_TTL),
            stale: Dur(Duration::ZERO),
            lease_ttl: Dur(larder::DEFAULT_LEASE_TTL),
            wait_timeout: None,
            shards: larder::DEFAULT_SHARDS,
            public_reads: false,
            cdc: false,
        }
    }
}

impl Config {
    fn validate_set(&self, i: usize, s: &SetConfig) -> Result<(), ConfigError> {
        let at = |k: &str| format!("set[{i}].{k}");
        if s.name.is_empty() {
            return Err(self.error(at("name"), "every [[set]] needs a name"));
        }
        larder::validate_name("set", &s.name).map_err(|err| self.error(at("name"), err))?;
        if RESERVED_NAMES.contains(&s.name.as_str()) {
            return Err(self.error(
                at("name"),
                format!(
                    "`{}` is reserved by the HTTP API (reserved: stats, tags, _admin)",
                    s.name
                ),
            ));
        }
        if let Some(j) = self.entity.iter().position(|o| o.name == s.name) {
            return Err(self.error(
                at("name"),
                format!(
                    "`{}` is already the name of entity[{j}] (one namespace)",
                    s.name
                ),
            ));
        }
        if let Some(j) = self.set[..i].iter().position(|o| o.name == s.name) {
            return Err(self.error(
                at("name"),
                format!("set `{}` is already defined by set[{j}]", s.name),
            ));
        }
        for (key, value) in [
            ("table", &s.table),
            ("owner", &s.owner),
            ("member", &s.member),
        ] {
            if value.is_empty() {
                return Err(self.error(at(key), format!("every [[set]] needs `{key}`")));
            }
        }
        if s.max_members == 0 {
            return Err(self.error(at("max_members"), "must be at least 1"));
        }
        self.validate_write_back(&at, "set", s.write, s.write_back.as_ref())?;
        if s.shards == 0 {
            return Err(self.error(at("shards"), "must be at least 1"));
        }
        for (key, d) in [("ttl", s.ttl.0), ("lease_ttl", s.lease_ttl.0)] {
            if d.is_zero() {
                return Err(self.error(at(key), "must be above 0"));
            }
        }
        Ok(())
    }
}

/// One `[[feed]]`: a table's rows grouped by an owner column, in `order`,
/// the first `max_len` of each owner cached as a list, served under
/// `/v1/{name}/{owner}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// `[a-z0-9_-]`, one namespace with entities and sets. Required.
    pub name: String,
    /// The table (`table` or `schema.table`; PostgreSQL). Required.
    pub table: String,
    /// The column grouping items into feeds. Required.
    pub owner: String,
    /// The column identifying an item. Default: `id`.
    pub item_key: String,
    /// `"column asc|desc"`, NOT NULL columns, ending with `item_key`.
    /// Default: `["<item_key> desc"]`.
    pub order: Vec<String>,
    /// Items cached per owner. Default: 1000.
    pub max_len: u64,
    /// The projection of each item; empty: all. Default: empty.
    pub columns: Vec<String>,
    /// `through` or `read-only`. Default: `through`.
    pub write: SetWriteMode,
    /// How long a loaded feed is fresh. Default: `60s`.
    pub ttl: Dur,
    /// How long past `ttl` the cached collection is still served (`X-Cache:
    /// stale`) while one refresh loads it again; `0s`: off. Default: `0s`.
    pub stale: Dur,
    /// How long a loader owns an owner's lease. Default: `5s`.
    pub lease_ttl: Dur,
    /// How long a reader waits for another's load. Default: `lease_ttl`.
    pub wait_timeout: Option<Dur>,
    /// Shards of the feed's keys. Default: 64.
    pub shards: u16,
    /// Reads need no token even when one is set. Default: false.
    pub public_reads: bool,
    /// Install change triggers on the table and invalidate an owner's feed
    /// when one of its rows changes (both owners when a row moves); a
    /// TRUNCATE purges the feed. Default: false.
    pub cdc: bool,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            table: String::new(),
            owner: String::new(),
            item_key: "id".into(),
            order: Vec::new(),
            max_len: 1000,
            columns: Vec::new(),
            write: SetWriteMode::Through,
            ttl: Dur(larder::DEFAULT_TTL),
            stale: Dur(Duration::ZERO),
            lease_ttl: Dur(larder::DEFAULT_LEASE_TTL),
            wait_timeout: None,
            shards: larder::DEFAULT_SHARDS,
            public_reads: false,
            cdc: false,
        }
    }
}

impl Config {
    fn validate_feed(&self, i: usize, f: &FeedConfig) -> Result<(), ConfigError> {
        let at = |k: &str| format!("feed[{i}].{k}");
        if f.name.is_empty() {
            return Err(self.error(at("name"), "every [[feed]] needs a name"));
        }
        larder::validate_name("feed", &f.name).map_err(|err| self.error(at("name"), err))?;
        let taken = RESERVED_NAMES.contains(&f.name.as_str())
            || self.entity.iter().any(|o| o.name == f.name)
            || self.set.iter().any(|o| o.name == f.name)
            || self.feed[..i].iter().any(|o| o.name == f.name);
        if taken {
            return Err(self.error(
                at("name"),
                format!(
                    "`{}` is reserved or already names an entity, set or feed (one namespace)",
                    f.name
                ),
            ));
        }
        for (key, value) in [("table", &f.table), ("owner", &f.owner)] {
            if value.is_empty() {
                return Err(self.error(at(key), format!("every [[feed]] needs `{key}`")));
            }
        }
        if f.max_len == 0 {
            return Err(self.error(at("max_len"), "must be at least 1"));
        }
        if f.write == SetWriteMode::Back {
            return Err(self.error(
                at("write"),
                "write-back feeds are not supported: use `through` or `read-only`",
            ));
        }
        if f.shards == 0 {
            return Err(self.error(at("shards"), "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        Config::parse(text, "t.toml").expect_err("should be refused")
    }

    const MIN: &str = "[[entity]]\nname = \"users\"\ntable = \"users\"\n";

    #[test]
    fn minimal_config_takes_every_default() {
        let c = Config::parse(MIN, "t.toml").expect("parse");
        assert_eq!(c.listen, "127.0.0.1:7070");
        assert_eq!(c.body_limit, ByteSize(1 << 20));
        assert_eq!(c.store.url, "redis://127.0.0.1:6379/0");
        assert_eq!(c.source.url, "sqlite://larder.db");
        assert_eq!(c.source.pool, 8);
        assert!(c.near.is_none());
        let e = &c.entity[0];
        assert_eq!(e.key, "id");
        assert_eq!(e.ttl.0, Duration::from_secs(60));
        assert_eq!(e.stale.0, Duration::from_secs(300));
        assert_eq!(e.shards, 64);
        assert_eq!(e.write, None);
    }

    #[test]
    fn unknown_keys_are_named_by_path() {
        let e = err(&format!("{MIN}ttl_typo = \"1s\"\n"));
        assert_eq!(e.key, "entity[0].ttl_typo", "{e}");
        assert!(e.problem.contains("unknown field"), "{e}");
        let e = err(&format!("colour = 1\n{MIN}"));
        assert_eq!(e.key, "colour", "{e}");
        let e = err(&format!("[store]\nurl = \"memory://\"\nsize = 3\n{MIN}"));
        assert_eq!(e.key, "store.size", "{e}");
        let e = err(&format!("{MIN}[entity.write_back]\nbatchh = 3\n"));
        assert!(e.key.starts_with("entity[0].write_back"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = err(&format!("{MIN}ttl = \"5x\"\n"));
        assert_eq!(e.key, "entity[0].ttl");
        assert!(e.problem.contains("invalid duration"), "{e}");
        let e = err(&format!("{MIN}write = \"sideways\"\n"));
        assert_eq!(e.key, "entity[0].write");
        assert!(e.problem.contains("unknown variant"), "{e}");
        let e = err("[[entity]]\nname = \"stats\"\ntable = \"t\"\n");
        assert!(e.problem.contains("reserved"), "{e}");
        let e = err("[[entity]]\nname = \"Users\"\ntable = \"t\"\n");
        assert_eq!(e.key, "entity[0].name");
        let e = err(&format!("{MIN}load_timeout = \"6s\"\n"));
        assert_eq!(e.key, "entity[0].load_timeout");
        let e = err(&format!("{MIN}tags = [\"team:{{team id}}\"]\n"));
        assert_eq!(e.key, "entity[0].tags");
        let e = err(&format!("{MIN}cdc = true\n"));
        assert_eq!(e.key, "entity[0].cdc");
        let e = err(&format!("{MIN}[entity.write_back]\nbatch = 3\n"));
        assert_eq!(e.key, "entity[0].write_back");
        let e = err("listen = \"nowhere\"\n");
        assert_eq!(e.key, "listen");
        let e = err(&format!("body_limit = \"1 parsec\"\n{MIN}"));
        assert_eq!(e.key, "body_limit");
        let e = err("[[entity\n");
        assert!(e.key.starts_with("line "), "{e}");
        assert_eq!(e.to_string().lines().count(), 1);
    }

    #[test]
    fn near_overrides() {
        let c = Config::parse(
            &format!("[near]\ncapacity = 5\nttl = \"1s\"\n{MIN}[entity.near]\nttl = \"3s\"\n"),
            "t.toml",
        )
        .expect("parse");
        let near = c.entity[0].near_cache(c.near).expect("near");
        assert_eq!((near.capacity, near.ttl), (5, Duration::from_secs(3)));
        let c = Config::parse(&format!("[near]\n{MIN}near = false\n"), "t.toml").expect("parse");
        assert!(c.entity[0].near_cache(c.near).is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("1MiB"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("2 KiB"), Ok(ByteSize(2048)));
        assert_eq!(ByteSize::parse("10"), Ok(ByteSize(10)));
        assert!(ByteSize::parse("MiB").is_err());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Lines that look like the config's own TOML, shuffled and mutated.
        fn tomlish() -> impl Strategy<Value = String> {
            let line = prop_oneof![
                Just("[[entity]]".to_owned()),
                Just("[store]".to_owned()),
                Just("[source]".to_owned()),
                Just("[near]".to_owned()),
                Just("[auth]".to_owned()),
                "(name|table|key|ttl|stale|shards|write|url|pool|listen|body_limit|columns|tags|capacity) = (\"[a-z0-9_ .:/-]{0,12}\"|[0-9-]{1,22}|true|\\[\"[a-z]{0,4}\"\\]|\\{\\}|[0-9]{1,6}(ms|s|m|h|KiB|MiB)?)",
                "(?s).{0,30}",
            ];
            proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            /// Never a panic, whatever the text.
            #[test]
            fn the_parser_never_panics(text in tomlish()) {
                let _ = Config::parse(&text, "fuzz.toml");
                let _ = Config::parse(&format!("{MIN}{text}"), "fuzz.toml");
            }
        }
    }
}

/// One `[[leaderboard]]`: a table of `(owner, member, score)` rows, one
/// leaderboard per owner (a Redis sorted set), served under
/// `/v1/{name}/{owner}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoardConfig {
    /// `[a-z0-9_-]`, one namespace with entities, sets and feeds. Required.
    pub name: String,
    /// The table (`table` or `schema.table`); needs a unique index on
    /// (owner, member). Required.
    pub table: String,
    /// The column grouping members into boards. Required.
    pub owner: String,
    /// The member column. Required.
    pub member: String,
    /// The score column: NOT NULL, an integer (scores within ±2^53) or
    /// double precision. Required.
    pub score: String,
    /// An owner with more members is not cached (its count is). Default:
    /// [`larder::DEFAULT_MAX_BOARD_MEMBERS`] (100,000).
    pub max_members: u64,
    /// `through`, `back` (increments, scores and removals acknowledged once
    /// a durable Redis holds them, flushed exactly once) or `read-only`.
    /// Default: `through`.
    pub write: SetWriteMode,
    /// Write-back's settings (`[leaderboard.write_back]`, only with
    /// `write = "back"`): the same table as `[entity.write_back]`, which
    /// *is* [`WriteBackOptions`]. Default: [`WriteBackOptions::default`].
    pub write_back: Option<WriteBackOptions>,
    /// How long a loaded board is fresh. Default: [`larder::DEFAULT_TTL`] (`60s`).
    pub ttl: Dur,
    /// How long past `ttl` the cached collection is still served (`X-Cache:
    /// stale`) while one refresh loads it again; `0s`: off. Default: `0s`.
    pub stale: Dur,
    /// How long a loader owns an owner's lease. Default: `5s`.
    pub lease_ttl: Dur,
    /// How long a reader waits for another's load. Default: `lease_ttl`.
    pub wait_timeout: Option<Dur>,
    /// Shards of the board's keys. Default: 64.
    pub shards: u16,
    /// Reads need no token even when one is set. Default: false.
    pub public_reads: bool,
    /// Install change triggers on the table (PostgreSQL) and invalidate an
    /// owner's board when one of its rows changes (both owners when a row
    /// moves); a TRUNCATE purges the board. Default: false.
    pub cdc: bool,
}

impl Default for BoardConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            table: String::new(),
            owner: String::new(),
            member: String::new(),
            score: String::new(),
            max_members: larder::DEFAULT_MAX_BOARD_MEMBERS,
            write: SetWriteMode::Through,
            write_back: None,
            ttl: Dur(larder::DEFAULT_TTL),
            stale: Dur(Duration::ZERO),
            lease_ttl: Dur(larder::DEFAULT_LEASE_TTL),
            wait_timeout: None,
            shards: larder::DEFAULT_SHARDS,
            public_reads: false,
            cdc: false,
        }
    }
}

impl Config {
    /// The write-back settings of a `[[set]]` or `[[leaderboard]]`
    /// (`kind`): only with `write = "back"`, valid, and never on the
    /// memory store.
    fn validate_write_back(
        &self,
        at: &dyn Fn(&str) -> String,
        kind: &str,
        write: SetWriteMode,
        options: Option<&WriteBackOptions>,
    ) -> Result<(), ConfigError> {
        match (options, write) {
            (Some(_), w) if w != SetWriteMode::Back => {
                return Err(self.error(
                    at("write_back"),
                    format!("[{kind}.write_back] is only for write = \"back\""),
                ))
            }
            (Some(wb), _) => wb.validate().map_err(|err| match err {
                larder::Error::InvalidSetting { setting, reason } => {
                    self.error(at(setting), reason)
                }
                other => self.error(at("write_back"), other),
            })?,
            (None, _) => {}
        }
        if write == SetWriteMode::Back && self.store.url.starts_with("memory://") {
            return Err(self.error(
                at("write"),
                "write-back needs a durable Redis store: memory:// loses pending writes when the process ends",
            ));
        }
        Ok(())
    }

    fn validate_board(&self, i: usize, b: &BoardConfig) -> Result<(), ConfigError> {
        let at = |k: &str| format!("leaderboard[{i}].{k}");
        if b.name.is_empty() {
            return Err(self.error(at("name"), "every [[leaderboard]] needs a name"));
        }
        larder::validate_name("leaderboard", &b.name).map_err(|err| self.error(at("name"), err))?;
        let taken = RESERVED_NAMES.contains(&b.name.as_str())
            || self.entity.iter().any(|o| o.name == b.name)
            || self.set.iter().any(|o| o.name == b.name)
            || self.feed.iter().any(|o| o.name == b.name)
            || self.leaderboard[..i].iter().any(|o| o.name == b.name);
        if taken {
            return Err(self.error(
                at("name"),
                format!(
                    "`{}` is reserved or already names an entity, set, feed or leaderboard \
                     (one namespace)",
                    b.name
                ),
            ));
        }
        for (key, value) in [
            ("table", &b.table),
            ("owner", &b.owner),
            ("member", &b.member),
            ("score", &b.score),
        ] {
            if value.is_empty() {
                return Err(self.error(at(key), format!("every [[leaderboard]] needs `{key}`")));
            }
        }
        if b.max_members == 0 {
            return Err(self.error(at("max_members"), "must be at least 1"));
        }
        self.validate_write_back(&at, "leaderboard", b.write, b.write_back.as_ref())?;
        if b.shards == 0 {
            return Err(self.error(at("shards"), "must be at least 1"));
        }
        for (key, d) in [("ttl", b.ttl.0), ("lease_ttl", b.lease_ttl.0)] {
            if d.is_zero() {
                return Err(self.error(at(key), "must be above 0"));
            }
        }
        Ok(())
    }
}
