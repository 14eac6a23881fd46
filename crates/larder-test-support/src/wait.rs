//! Waiting on a condition with a deadline, instead of sleeping for a guess.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 10 ms until it holds; panics naming `what` after 20 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
