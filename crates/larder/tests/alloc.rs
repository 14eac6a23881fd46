//! A read the near cache answers makes no heap allocation: no id copy, no
//! boxed loader, no allocation inside the near cache — for cache-aside
//! (`get_or_load`, `try_get_or_load`) and read-through (`get`), with
//! integer and string keys.
//!
//! The test support's counting allocator counts the allocations made on
//! this test's thread while the read's future is polled (once, with a no-op waker: an
//! L1 answer is ready at the first poll). Against the real Redis (isolated
//! by a unique prefix), which the near cache stands in front of.

use larder_test_support as support;

use larder::{Cache, FnSource, Lookup, NearOptions, Outcome};
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: support::CountingAllocator = support::CountingAllocator;

/// Polls the future `read` makes once on this thread, counting its
/// allocations (the future's construction included).
fn first_poll<T>(read: impl FnOnce() -> T) -> (Poll<T::Output>, u64)
where
    T: Future,
{
    support::count_allocations(|| {
        let mut future = pin!(read());
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    })
}

/// [`first_poll`], which must be ready: a near-cache answer is.
fn allocations_of<T>(read: impl FnOnce() -> T) -> (T::Output, u64)
where
    T: Future,
{
    let (answer, allocations) = first_poll(read);
    let Poll::Ready(answer) = answer else {
        panic!("a near-cache answer is ready at the first poll");
    };
    (answer, allocations)
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn user(id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
    }
}

fn near() -> NearOptions {
    NearOptions {
        capacity: 1_000,
        ttl: Duration::from_secs(60),
    }
}

/// Reads `read` until the near cache answers it, so the counted read is
/// an L1 hit.
async fn until_l1<F, Fut>(mut read: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = larder::Result<Lookup<User>>>,
{
    for _ in 0..100 {
        if read().await.expect("read").outcome == Outcome::L1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the near cache never answered");
}

#[tokio::test(flavor = "current_thread")]
async fn a_near_cache_hit_of_get_or_load_allocates_nothing() {
    let cache: Cache<u64, User> = Cache::builder()
        .prefix(support::unique("alloc"))
        .entity("users")
        .store(support::redis_store().await)
        .near(near())
        .build()
        .await
        .expect("cache");
    let load = || async { Ok::<_, Infallible>(Some(user(7))) };
    until_l1(|| cache.get_or_load(&7, load)).await;
    for round in 0..20 {
        let (answer, allocations) = allocations_of(|| cache.get_or_load(&7, load));
        let lookup = answer.expect("read");
        assert_eq!(lookup.outcome, Outcome::L1);
        assert_eq!(lookup.value.as_deref(), Some(&user(7)));
        assert_eq!(allocations, 0, "round {round}: get_or_load on an L1 hit");
        let (answer, allocations) = allocations_of(|| cache.try_get_or_load(&7, load));
        assert_eq!(answer.expect("read").outcome, Outcome::L1);
        assert_eq!(
            allocations, 0,
            "round {round}: try_get_or_load on an L1 hit"
        );
    }
    // The counter counts: a miss allocates (the id, the boxed load, …)
    // before its first poll waits on Redis.
    let (_, allocations) = first_poll(|| cache.get_or_load(&8, load));
    assert!(allocations > 0, "a miss was counted as allocating nothing");
}

#[tokio::test(flavor = "current_thread")]
async fn a_near_cache_hit_of_get_with_a_string_key_allocates_nothing() {
    let cache: Cache<str, User> = Cache::builder()
        .prefix(support::unique("alloc"))
        .entity("users")
        .store(support::redis_store().await)
        .source(FnSource::new("users", |id: String| async move {
            Ok::<_, Infallible>(Some(User { id: 1, name: id }))
        }))
        .near(near())
        .build()
        .await
        .expect("cache");
    until_l1(|| cache.get("ada")).await;
    for round in 0..20 {
        let (answer, allocations) = allocations_of(|| cache.get("ada"));
        let lookup = answer.expect("read");
        assert_eq!(lookup.outcome, Outcome::L1);
        assert_eq!(allocations, 0, "round {round}: get on an L1 hit");
    }
}
