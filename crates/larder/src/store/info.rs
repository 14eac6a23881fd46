//! What a store says about itself: Redis' own figures from `INFO`
//! (memory, evictions, keyspace hits, clients), for monitoring.
//!
//! Why in the store: the service and `larder top` show Redis memory and
//! evictions next to the cache's own counters (a falling hit ratio with
//! rising `evicted_keys` means Redis is too small, not that the cache is
//! wrong), and only the store knows its connection. See
//! [`Store::server_info`](super::Store::server_info).

/// A store's own figures; `None` where the store does not know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInfo {
    /// Bytes the store uses (`used_memory`; for `memory://`, keys and
    /// values only).
    pub used_memory: Option<u64>,
    /// The memory limit in bytes (`maxmemory`; 0: no limit).
    pub maxmemory: Option<u64>,
    /// What happens at the limit (`maxmemory-policy`: `noeviction`,
    /// `allkeys-lru`, ...).
    pub maxmemory_policy: Option<String>,
    /// Keys evicted for memory since the server started.
    pub evicted_keys: Option<u64>,
    /// Keys expired since the server started.
    pub expired_keys: Option<u64>,
    /// Successful key lookups since the server started.
    pub keyspace_hits: Option<u64>,
    /// Failed key lookups since the server started.
    pub keyspace_misses: Option<u64>,
    /// Client connections open now.
    pub connected_clients: Option<u64>,
    /// Keys held now (`memory://` only; Redis: see `INFO keyspace`).
    pub keys: Option<u64>,
}

impl ServerInfo {
    /// Parses the text of Redis' `INFO` (`field:value` lines, `#`
    /// section headers); unknown fields are ignored.
    ///
    /// ```
    /// let info = larder::store::ServerInfo::parse_info(
    ///     "# Memory\r\nused_memory:1024\r\nmaxmemory_policy:noeviction\r\n# Stats\r\nevicted_keys:3\r\n",
    /// );
    /// assert_eq!(info.used_memory, Some(1024));
    /// assert_eq!(info.maxmemory_policy.as_deref(), Some("noeviction"));
    /// assert_eq!(info.evicted_keys, Some(3));
    /// assert_eq!(info.maxmemory, None);
    /// ```
    pub fn parse_info(text: &str) -> ServerInfo {
        let mut info = ServerInfo::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            let n = || v.trim().parse().ok();
            match k {
                "used_memory" => info.used_memory = n(),
                "maxmemory" => info.maxmemory = n(),
                "maxmemory_policy" => info.maxmemory_policy = Some(v.trim().to_owned()),
                "evicted_keys" => info.evicted_keys = n(),
                "expired_keys" => info.expired_keys = n(),
                "keyspace_hits" => info.keyspace_hits = n(),
                "keyspace_misses" => info.keyspace_misses = n(),
                "connected_clients" => info.connected_clients = n(),
                _ => {}
            }
        }
        info
    }
}
