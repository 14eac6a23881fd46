//! What only a real Redis can show: the exact key layout, isolation of
//! bookkeeping keys, corrupt entries, and reads that go on while Redis is down.

use larder_test_support as support;

use larder::store;
use larder::{Cache, Error, FnSource, Outcome};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(support::redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis on 127.0.0.1:6379")
}

fn echo_source() -> impl larder::Source<String> {
    FnSource::new("items", |id: String| {
        std::future::ready(Ok::<_, Infallible>(Some(format!("value of {id}"))))
    })
}

async fn cache(prefix: &str) -> Cache<str, String> {
    Cache::<str, String>::builder()
        .prefix(prefix)
        .entity("items")
        .shards(16)
        .store(support::redis_store().await)
        .source(echo_source())
        .build()
        .await
        .expect("build")
}

#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let prefix = support::unique("layout");
    let cache = cache(&prefix).await;
    cache.get("42").await.expect("get");
    let shard = xxh3_64(b"42") % 16;
    let mut conn = raw().await;
    let key = format!("{prefix}:{{items:{shard}}}:v:42");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert!(exists, "{key} missing");
    let layout: String = redis::cmd("GET")
        .arg(format!("{prefix}:{{items}}:meta"))
        .query_async(&mut conn)
        .await
        .expect("meta");
    assert_eq!(layout, "shards=16;hash=xxh3_64");
}

#[tokio::test]
async fn ids_never_reach_bookkeeping_keys() {
    let prefix = support::unique("collide");
    // No source: `put` only caches (cache-aside).
    let cache = Cache::<str, String>::builder()
        .prefix(&prefix)
        .entity("items")
        .shards(16)
        .store(support::redis_store().await)
        .build()
        .await
        .expect("build");
    let ids = ["42", "42:l", "l:42", "x:v:y", "}", "{", "}:l:42", "meta"];
    for id in ids {
        cache.put(id, &format!("put {id}")).await.expect("put");
    }
    for id in ids {
        let got = cache
            .get_or_load(id, || async { Ok::<_, Infallible>(None) })
            .await
            .expect("get");
        assert_eq!(
            (got.outcome, got.value.as_deref().map(String::as_str)),
            (Outcome::Hit, Some(format!("put {id}").as_str()))
        );
    }
    let mut conn = raw().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    let value_keys = keys.iter().filter(|k| k.contains("}:v:")).count();
    assert_eq!(value_keys, ids.len(), "one value key per id: {keys:?}");
    for key in keys.iter().filter(|k| !k.ends_with("}:meta")) {
        // Values, and the write bookkeeping the puts left: nothing else.
        let tag_end = key.find('}').expect("hash tag");
        assert!(
            key[tag_end..].starts_with("}:v:") || key[tag_end..].starts_with("}:w:"),
            "{key} is not a value or write key"
        );
    }
}

#[tokio::test]
async fn a_corrupt_entry_is_a_counted_miss() {
    let prefix = support::unique("corrupt");
    let cache = cache(&prefix).await;
    let shard = xxh3_64(b"7") % 16;
    let mut conn = raw().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:{{items:{shard}}}:v:7"))
        .arg("not an envelope")
        .query_async(&mut conn)
        .await
        .expect("set");
    let got = cache.get("7").await.expect("get");
    assert_eq!(
        (got.outcome, got.value.as_deref().map(String::as_str)),
        (Outcome::Miss, Some("value of 7"))
    );
    assert_eq!(cache.stats().corrupt_entries, 1);
    assert_eq!(
        cache.get("7").await.expect("get").outcome,
        Outcome::Hit,
        "the miss replaced the corrupt entry"
    );
}

#[tokio::test]
async fn reads_bypass_an_unreachable_redis_and_writes_fail() {
    let loads = Arc::new(AtomicUsize::new(0));
    let counted = loads.clone();
    let down = store::connect("redis://127.0.0.1:1/0?connect_timeout=200ms")
        .await
        .expect("lazy store");
    let cache = Cache::<str, String>::builder()
        .prefix(support::unique("down"))
        .entity("items")
        .store(down)
        .source(FnSource::new("items", move |id: String| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(Some(format!("db {id}"))))
        }))
        .build()
        .await
        .expect("a store that is down at start is not a build error");
    for _ in 0..3 {
        let got = cache.get("1").await.expect("bypass read");
        assert_eq!(
            (got.outcome, got.value.as_deref().map(String::as_str)),
            (Outcome::Bypass, Some("db 1"))
        );
    }
    let many = cache.get_many(&["1", "2"]).await.expect("bypass many");
    assert!(many.iter().all(|l| l.outcome == Outcome::Bypass));
    assert_eq!(many[1].value.as_deref().map(String::as_str), Some("db 2"));
    assert_eq!(loads.load(Ordering::SeqCst), 5);
    let err = cache
        .invalidate("1")
        .await
        .expect_err("an invalidation needs the store");
    assert!(err.is_store_unavailable(), "{err}");
    let err = store::connect_checked("redis://127.0.0.1:1/0?connect_timeout=200ms")
        .await
        .expect_err("checked");
    assert!(matches!(err, Error::StoreUnavailable { .. }), "{err}");
}

#[tokio::test]
async fn store_urls_are_checked() {
    for url in [
        "mysql://x",
        "redis://127.0.0.1/0?connect_timeout=soon",
        "memory://?capacity=0",
        "memory://?size=3",
    ] {
        let err = store::connect(url).await.expect_err(url);
        assert!(matches!(err, Error::Config(_)), "{url}: {err}");
    }
    let s = store::connect("redis://user:secret@127.0.0.1:6379/0")
        .await
        .expect("lazy");
    assert!(
        !larder::store::Store::name(s.as_ref()).contains("secret"),
        "{s:?}"
    );
}
