//! What the benches share: the row type, the key count, the concurrent
//! runner and a Zipf sampler. Each bench uses a part of it. The Redis URL comes from the
//! workspace's test support (`larder_test_support::redis_url`,
//! `LARDER_TEST_REDIS_URL`), as in the tests.

#![allow(dead_code, unreachable_pub)]

pub mod collections;

use rand::Rng;
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

/// Benchmarks `op` from `tasks` concurrent tasks as `name/<tasks>` in
/// `group`: each call gets a clone of `state` and the operation's number.
pub fn concurrent<S, F, Fut>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    (name, tasks): (&str, u64),
    state: S,
    op: F,
) where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    group.bench_with_input(
        criterion::BenchmarkId::new(name, tasks),
        &tasks,
        |b, &tasks| {
            b.to_async(rt).iter_custom(|iters| {
                let (state, op) = (state.clone(), op.clone());
                run(iters, tasks, move |i| op(state.clone(), i))
            })
        },
    );
}

/// Ranks `0..n` with P(k) ∝ 1 / (k + 1)^s, sampled by inverse CDF.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution Zipf(`s`) over `n` ranks.
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Zipf { cdf }
    }

    /// One rank; the last one when rounding leaves `u` above the CDF's end.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u64
    }
}
