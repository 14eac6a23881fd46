//! What the benches share: the row type, the key count, the Redis URL and
//! the concurrent runner. Each bench uses a part of it.

#![allow(dead_code, unreachable_pub)]

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub team: u32,
}

/// The row the benches cache for `id`.
pub fn user(id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
        email: format!("user{id}@example.com"),
        team: (id % 17) as u32,
    }
}

pub const KEYS: u64 = 1000;

pub fn redis_url() -> String {
    std::env::var("LARDER_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// Runs `iters` operations split over `tasks` concurrent tasks; returns the wall time.
pub async fn run<F, Fut>(iters: u64, tasks: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < iters {
                    op(i % KEYS).await;
                    i += tasks;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task");
    }
    start.elapsed()
}
