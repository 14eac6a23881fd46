//! Fault points of the exactly-once flushers (counters, leaderboards):
//! places where tests stop a flusher as a crash would, or stall it, to
//! prove that a batch committed but not cleared is never applied twice.
//!
//! Why a type: each flusher keeps its own points (armed by fence name,
//! `<prefix>:<name>`), and both must behave alike: a point armed `n` times
//! fires for the next `n` commits; a stall is taken once; an environment
//! variable set to `abort` aborts the whole process there (for crash
//! tests of child processes). Not part of the API.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// One flusher's fault points, by fence name.
#[derive(Debug)]
pub(crate) struct FaultPoints {
    /// The variable that, set to `abort`, aborts the process at the point.
    abort_env: &'static str,
    /// How many more commits stop before their clear.
    armed: Mutex<HashMap<String, u32>>,
    /// The stall of the next flush between its claim and its commit.
    stalls: Mutex<HashMap<String, Duration>>,
}

impl FaultPoints {
    /// Points that abort the process when `abort_env` is `abort`.
    pub(crate) fn new(abort_env: &'static str) -> Self {
        FaultPoints {
            abort_env,
            armed: Mutex::default(),
            stalls: Mutex::default(),
        }
    }

    /// Arms the point after the commit for the next `n` commits of `fence`.
    pub(crate) fn arm(&self, fence: &str, n: u32) {
        if let Ok(mut armed) = self.armed.lock() {
            armed.insert(fence.to_owned(), n);
        }
    }

    /// Whether the point fires for `fence` now (and aborts the process if
    /// the environment says so).
    pub(crate) fn fires(&self, fence: &str) -> bool {
        if std::env::var(self.abort_env).as_deref() == Ok("abort") {
            std::process::abort();
        }
        let Ok(mut armed) = self.armed.lock() else {
            return false;
        };
        match armed.get_mut(fence) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Arms a stall of the next flush of `fence` after its claim.
    pub(crate) fn arm_stall(&self, fence: &str, pause: Duration) {
        if let Ok(mut stalls) = self.stalls.lock() {
            stalls.insert(fence.to_owned(), pause);
        }
    }

    /// The armed stall of `fence`, taken.
    pub(crate) fn take_stall(&self, fence: &str) -> Option<Duration> {
        self.stalls.lock().ok()?.remove(fence)
    }
}
