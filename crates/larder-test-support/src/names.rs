//! Names no other test is using: the servers are shared and never flushed,
//! so every key prefix, schema, database and temporary file a test makes
//! carries a name of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A name no other test (in this process or another) is using: `prefix`
/// lowercased with anything outside `[a-z0-9_]` turned into `_`, then the
/// process id, a per-process counter and a few bits of the clock, e.g.
/// `write_back_4711_3_k2x9`. Valid as a Redis key prefix, an entity name, a
/// file name and an unquoted PostgreSQL or MariaDB identifier (starts with a
/// letter, at most 63 bytes).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());

    let mut name: String = prefix
        .chars()
        .take(32)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert(0, 't');
    }
    format!(
        "{name}_{}_{}_{}",
        std::process::id(),
        n,
        base36(u64::from(nanos) % 36u64.pow(4))
    )
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// A fresh directory of the test's own under the system temp dir, named
/// [`unique`]`(name)`. The test removes it when it wants it gone.
///
/// # Panics
/// If the directory cannot be created.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}
