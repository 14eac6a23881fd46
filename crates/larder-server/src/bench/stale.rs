//! The stale-read detector.
//!
//! A read is **stale** when it returns an older version than the newest
//! write acknowledged before the read began. The bench knows every write it
//! made, so it needs no extra database read to tell: each key has the
//! newest acknowledged version in an `AtomicU64`; a read loads it *before*
//! it starts (its floor) and compares the version it got against it.
//!
//! Writes to one key are serialised by a per-key lock held around the
//! write, so a key's versions are acknowledged in order and "newest
//! acknowledged" is well defined; without it two overlapping writes could
//! commit out of order in the database itself, which no cache pattern can
//! be blamed for. Reads never take the lock.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Mutex, MutexGuard};

/// Versions per key: what was acknowledged, and the writers' turns.
#[derive(Debug)]
pub(crate) struct Versions {
    /// The newest acknowledged version of each key (0: the seeded row).
    acked: Vec<AtomicU64>,
    /// Held by the key's writer; holds the last version handed out.
    writers: Vec<Mutex<u64>>,
}

/// A write in progress: holds the key's turn until it is acknowledged or dropped.
#[derive(Debug)]
pub(crate) struct WriteTurn<'a> {
    key: usize,
    version: u64,
    versions: &'a Versions,
    _turn: MutexGuard<'a, u64>,
}

impl Versions {
    /// `keys` keys, all at version 0.
    pub(crate) fn new(keys: u64) -> Versions {
        let n = usize::try_from(keys).unwrap_or(usize::MAX);
        Versions {
            acked: (0..n).map(|_| AtomicU64::new(0)).collect(),
            writers: (0..n).map(|_| Mutex::new(0)).collect(),
        }
    }

    /// The floor of a read of `key` that starts now.
    pub(crate) fn floor(&self, key: u64) -> u64 {
        self.acked[key as usize].load(Ordering::Acquire)
    }

    /// Waits for `key`'s turn and hands out its next version.
    pub(crate) async fn begin_write(&self, key: u64) -> WriteTurn<'_> {
        let mut turn = self.writers[key as usize].lock().await;
        *turn += 1;
        WriteTurn {
            key: key as usize,
            version: *turn,
            versions: self,
            _turn: turn,
        }
    }
}

impl WriteTurn<'_> {
    /// The version this write carries.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The write was acknowledged: reads that start from now on must see it.
    pub(crate) fn ack(self) {
        self.versions.acked[self.key].fetch_max(self.version, Ordering::AcqRel);
    }
}

/// Whether a read that started with `floor` and returned `got` is stale.
pub(crate) fn is_stale(floor: u64, got: u64) -> bool {
    got < floor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_older_than_an_acked_write_is_stale() {
        let v = Versions::new(2);
        assert_eq!(v.floor(1), 0);
        let w = v.begin_write(1).await;
        assert_eq!(w.version(), 1);
        // not acknowledged yet: reading version 0 is fine
        assert!(!is_stale(v.floor(1), 0));
        w.ack();
        assert!(is_stale(v.floor(1), 0));
        assert!(!is_stale(v.floor(1), 1));
        // a failed write (dropped turn) still uses up its version
        drop(v.begin_write(1).await);
        assert_eq!(v.begin_write(1).await.version(), 3);
        assert_eq!(v.floor(0), 0);
    }
}
