//! The write protocol at its edges, over the real PostgreSQL and Redis:
//! a caller that goes away after its write reached the database, an
//! invalidation that lands between a write's commit and its end step, a
//! write slower than the ticket's life, and a compare-and-set that keeps
//! losing.

use larder_test_support as support;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use larder::source::FlushBatch;
use larder::store::{MemoryStore, Store};
use larder::{
    Cache, Error, NearOptions, Source, SqlPool, SqlSource, WriteBackOptions, WritePolicy,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use support::accounts::{account, Account, Db};
use support::eventually;
use support::TcpProxy;
use tokio::sync::Notify;

/// What runs before every load of a [`Paused`] source.
type LoadHook = Box<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// A one-shot pause: once armed, the next source step that passes it
/// (after its commit) says so and waits until the test lets it go.
#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    reached: Notify,
    go: Notify,
}

impl Gate {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    async fn pass(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.go.notified().await;
        }
    }
}

/// A [`SqlSource`] whose writes (store, patch, flush) pause at the gate
/// after they committed; `on_load` runs before every load.
struct Paused {
    inner: SqlSource,
    gate: Arc<Gate>,
    on_load: Arc<OnceLock<LoadHook>>,
}

#[async_trait]
impl Source<Account> for Paused {
    fn canonical_id(&self, id: &str) -> larder::Result<String> {
        Source::<Account>::canonical_id(&self.inner, id)
    }

    async fn load(&self, id: &str) -> larder::Result<Option<Account>> {
        if let Some(hook) = self.on_load.get() {
            hook(id.to_owned()).await;
        }
        self.inner.load(id).await
    }

    async fn load_many(&self, ids: &[String]) -> larder::Result<HashMap<String, Account>> {
        self.inner.load_many(ids).await
    }

    async fn load_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> larder::Result<Vec<(String, Account)>> {
        self.inner.load_page(after, limit).await
    }

    fn is_writable(&self) -> bool {
        Source::<Account>::is_writable(&self.inner)
    }

    async fn store(&self, id: &str, value: &Account) -> larder::Result<Account> {
        let stored = self.inner.store(id, value).await;
        self.gate.pass().await;
        stored
    }

    async fn store_many(
        &self,
        rows: &[(String, Account)],
    ) -> larder::Result<Vec<(String, Account)>> {
        self.inner.store_many(rows).await
    }

    async fn patch(
        &self,
        id: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> larder::Result<Option<Account>> {
        let patched = self.inner.patch(id, fields).await;
        self.gate.pass().await;
        patched
    }

    async fn delete(&self, id: &str) -> larder::Result<bool> {
        Source::<Account>::delete(&self.inner, id).await
    }

    fn check(&self, id: &str, value: &Account) -> larder::Result<()> {
        self.inner.check(id, value)
    }

    fn check_patch(
        &self,
        id: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> larder::Result<()> {
        Source::<Account>::check_patch(&self.inner, id, fields)
    }

    fn fences_flushes(&self) -> bool {
        Source::<Account>::fences_flushes(&self.inner)
    }

    async fn prepare_write_back(&self, entity: &str, shards: u16) -> larder::Result<()> {
        Source::<Account>::prepare_write_back(&self.inner, entity, shards).await
    }

    async fn flush(
        &self,
        batch: FlushBatch<'_, Account>,
    ) -> larder::Result<larder::source::Flushed<Account>> {
        let flushed = self.inner.flush(batch).await;
        self.gate.pass().await;
        flushed
    }
}

/// Builds caches of the accounts fixture on the shared Redis.
struct Setup<'a> {
    db: &'a Db,
    prefix: &'a str,
    pg_url: String,
    policy: WritePolicy,
    lease_ttl: Duration,
    gate: Arc<Gate>,
    on_load: Arc<OnceLock<LoadHook>>,
    /// The store every instance shares (`None`: the shared Redis, each
    /// instance on its own connection).
    store: Option<Arc<dyn Store>>,
}

impl<'a> Setup<'a> {
    fn new(db: &'a Db, prefix: &'a str) -> Self {
        Setup {
            db,
            prefix,
            pg_url: support::pg_url(),
            policy: WritePolicy::Through,
            lease_ttl: Duration::from_secs(5),
            gate: Arc::default(),
            on_load: Arc::default(),
            store: None,
        }
    }

    /// An instance: its own pools and connections, a near cache, the bus.
    async fn cache(&self) -> Cache<i64, Account> {
        let pool = SqlPool::connect(&self.pg_url, 2).await.expect("pool");
        let inner = SqlSource::builder(pool, &self.db.table())
            .entity("accounts")
            .build()
            .await
            .expect("source");
        let source = Paused {
            inner,
            gate: self.gate.clone(),
            on_load: self.on_load.clone(),
        };
        let lease = self.lease_ttl;
        let store = match &self.store {
            Some(store) => store.clone(),
            None => support::redis_store().await,
        };
        Cache::builder()
            .prefix(self.prefix)
            .entity("accounts")
            .shards(4)
            .store(store)
            .source(source)
            .write_policy(self.policy)
            .ttl(Duration::from_secs(60))
            .early_refresh(0.0)
            .lease_ttl(lease)
            .load_timeout(lease / 3)
            .wait_timeout(lease / 3)
            .near(NearOptions {
                capacity: 1_000,
                ttl: Duration::from_secs(60),
            })
            .build()
            .await
            .expect("cache")
    }
}

/// The balance every instance reads for `id` (`None`: no row).
async fn balances(caches: &[&Cache<i64, Account>], id: i64) -> Vec<Option<i64>> {
    let mut seen = Vec::new();
    for cache in caches {
        let got = cache.get(&id).await.expect("get");
        seen.push(got.value.map(|v| v.balance));
    }
    seen
}

/// Sets a balance with plain SQL, as another application would.
async fn external_update(db: &Db, id: i64, balance: i64) {
    sqlx::query(&format!(
        "UPDATE {} SET balance = $1 WHERE id = $2",
        db.table()
    ))
    .bind(balance)
    .bind(id)
    .execute(&db.admin)
    .await
    .expect("external update");
}

/// A write-through put and a delete whose callers go away after
/// PostgreSQL committed but before the COMMIT answer reached larder (the
/// proxy holds it back): once the answer arrives, both instances (each
/// with a near cache that held the old row) read the committed state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_write_still_runs_its_end_step_on_every_instance() {
    let db = Db::new().await;
    let prefix = support::unique("we");
    let proxy = TcpProxy::start(support::pg_addr());
    let direct = Setup::new(&db, &prefix);
    let via_proxy = Setup {
        // In plain text: the proxy watches the protocol for COMMIT (sqlx
        // negotiates TLS by default when the server offers it).
        pg_url: support::pg_url_via(proxy.addr()),
        ..Setup::new(&db, &prefix)
    };
    let a = via_proxy.cache().await;
    let b = direct.cache().await;
    a.put(&1, &account(1, "ada", 10)).await.expect("first put");
    // Both near caches hold the row now.
    for _ in 0..2 {
        assert_eq!(balances(&[&a, &b], 1).await, [Some(10), Some(10)]);
    }

    // A put whose caller gives up while the COMMIT answer is held back.
    proxy.hold_after(b"COMMIT");
    let twenty = account(1, "ada", 20);
    let put = a.put(&1, &twenty);
    tokio::select! {
        answer = put => panic!("the put answered while its COMMIT was held: {answer:?}"),
        () = eventually("the put committed in PostgreSQL", || async {
            proxy.holds() == 1 && db.row(1).await.map(|r| r.1) == Some(20)
        }) => {}
    }
    // The caller is gone (its future dropped); the answer arrives late.
    proxy.release();
    eventually("every instance reads the committed put", || async {
        balances(&[&a, &b], 1).await == [Some(20), Some(20)]
    })
    .await;

    // The same for a batch, abandoned through a timeout.
    assert_eq!(balances(&[&a, &b], 1).await, [Some(20), Some(20)]);
    proxy.hold_after(b"COMMIT");
    let (one, two) = (account(1, "ada", 30), account(2, "bo", 30));
    let batch = [(&1, &one), (&2, &two)];
    let timed_out = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            answer = a.put_many(&batch) => panic!("put_many answered while its COMMIT was held: {answer:?}"),
            () = eventually("put_many committed in PostgreSQL", || async {
                proxy.holds() == 2 && db.row(1).await.map(|r| r.1) == Some(30)
            }) => {}
        }
    })
    .await;
    assert!(timed_out.is_ok(), "put_many did not commit");
    proxy.release();
    eventually("every instance reads the committed batch", || async {
        balances(&[&a, &b], 1).await == [Some(30), Some(30)]
    })
    .await;
    db.drop().await;
}

/// 20 rounds: a write-through write commits and pauses before its end
/// step; meanwhile another application updates the row with plain SQL and
/// the key is invalidated (as its change notification would). The cache
/// ends at the external row or empty, never at the paused write's row —
/// in Redis and in both near caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_write_makes_its_end_step_delete() {
    invalidation_during_a_write(None).await;
}

/// [`an_invalidation_during_a_write_makes_its_end_step_delete`] on the
/// embedded memory store (two instances in one process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_write_makes_its_end_step_delete_in_memory() {
    invalidation_during_a_write(Some(Arc::new(MemoryStore::new(1_000)))).await;
}

async fn invalidation_during_a_write(store: Option<Arc<dyn Store>>) {
    let db = Db::new().await;
    let prefix = support::unique("we");
    let setup = Setup {
        store,
        ..Setup::new(&db, &prefix)
    };
    let a = setup.cache().await;
    let b = setup.cache().await;
    a.put(&1, &account(1, "ada", 0)).await.expect("first put");
    for round in 1..=20i64 {
        // Both near caches hold the current row.
        assert_eq!(balances(&[&a, &b], 1).await, [Some((round - 1) * 10); 2]);
        setup.gate.arm();
        let writer = {
            let a = a.clone();
            tokio::spawn(async move {
                if round % 2 == 0 {
                    a.put(&1, &account(1, "ada", round * 10 - 5))
                        .await
                        .map(drop)
                } else {
                    let mut fields = serde_json::Map::new();
                    fields.insert("balance".into(), (round * 10 - 5).into());
                    a.patch(&1, &fields).await.map(drop)
                }
            })
        };
        setup.gate.reached.notified().await;
        external_update(&db, 1, round * 10).await;
        // Either instance may hear of the update first.
        let by = if round % 4 < 2 { &a } else { &b };
        by.invalidate(&1).await.expect("invalidate");
        setup.gate.go.notify_one();
        writer.await.expect("writer task").expect("write");
        // Until then the announcements reach the near caches; the write's
        // older row, once set, would stay for the whole TTL.
        eventually(
            &format!("round {round}: the cache holds the external row, not the write's"),
            || async { balances(&[&a, &b], 1).await == [Some(round * 10); 2] },
        )
        .await;
    }
    db.drop().await;
}

/// A write-back flush commits and pauses before it refreshes the entry;
/// another application updates the row and the key is invalidated
/// meanwhile: the refresh must not set the flushed row over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_flush_is_not_overwritten_by_its_refresh() {
    let db = Db::new().await;
    let prefix = support::unique("we");
    let setup = Setup {
        policy: WritePolicy::Back(WriteBackOptions {
            max_delay: Duration::from_millis(20),
            flush_lease: Duration::from_millis(1000),
            require_durable: false,
            ..WriteBackOptions::default()
        }),
        ..Setup::new(&db, &prefix)
    };
    let a = setup.cache().await;
    let b = setup.cache().await;
    for round in 1..=5i64 {
        setup.gate.arm();
        a.put(&1, &account(1, "ada", round * 10 - 5))
            .await
            .expect("put");
        setup.gate.reached.notified().await;
        external_update(&db, 1, round * 10).await;
        b.invalidate(&1).await.expect("invalidate");
        setup.gate.go.notify_one();
        // Until the flush clears its record, reads answer the pending
        // write; after, the external row — unless the refresh set the
        // flushed row over the invalidation (then it stays for the TTL).
        eventually(
            &format!("round {round}: the flush refresh leaves the invalidation be"),
            || async { balances(&[&a, &b], 1).await == [Some(round * 10); 2] },
        )
        .await;
    }
    a.close(Duration::from_secs(5)).await.expect("close a");
    b.close(Duration::from_secs(5)).await.expect("close b");
    db.drop().await;
}

/// A write that is slower than `lease_ttl` (it committed first, then took
/// long to end) against a later, faster write of the same key: the later
/// one committed last, so the cache must end equal to the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_slower_than_lease_ttl_does_not_win_over_a_later_write() {
    slow_write_against_a_later_one(None).await;
}

/// [`a_write_slower_than_lease_ttl_does_not_win_over_a_later_write`] on
/// the embedded memory store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_slower_than_lease_ttl_does_not_win_over_a_later_write_in_memory() {
    slow_write_against_a_later_one(Some(Arc::new(MemoryStore::new(1_000)))).await;
}

async fn slow_write_against_a_later_one(store: Option<Arc<dyn Store>>) {
    let db = Db::new().await;
    let prefix = support::unique("we");
    let setup = Setup {
        lease_ttl: Duration::from_millis(300),
        store,
        ..Setup::new(&db, &prefix)
    };
    let a = setup.cache().await;
    let b = setup.cache().await;
    for round in 1..=3i64 {
        // A key of its own per round: its first write makes new bookkeeping.
        let id = 100 + round;
        setup.gate.arm();
        let slow = {
            let a = a.clone();
            tokio::spawn(async move { a.put(&id, &account(id, "slow", round * 10)).await })
        };
        setup.gate.reached.notified().await;
        // The slow write has committed and takes longer than its ticket's
        // life to end (the duration is the scenario, not a wait for a signal).
        tokio::time::sleep(setup.lease_ttl * 3).await;
        b.put(&id, &account(id, "fast", round * 10 + 1))
            .await
            .expect("fast put");
        setup.gate.go.notify_one();
        slow.await.expect("slow task").expect("slow put");
        assert_eq!(db.row(id).await.map(|r| r.1), Some(round * 10 + 1));
        eventually(
            &format!("round {round}: the cache equals the database"),
            || async { balances(&[&a, &b], id).await == [Some(round * 10 + 1); 2] },
        )
        .await;
    }
    db.drop().await;
}

/// A write-back patch whose compare-and-set loses every attempt (each read
/// of the current row is followed by an invalidation of the key, which
/// moves its write version) fails with the typed `Error::Busy`, and
/// writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_set_that_keeps_losing_is_busy() {
    let db = Db::new().await;
    let prefix = support::unique("we");
    let setup = Setup {
        policy: WritePolicy::Back(WriteBackOptions {
            max_delay: Duration::from_millis(20),
            require_durable: false,
            ..WriteBackOptions::default()
        }),
        ..Setup::new(&db, &prefix)
    };
    let a = setup.cache().await;
    a.put(&1, &account(1, "ada", 10)).await.expect("put");
    // Flushed and cleared: the entry is the stored row (trigger included).
    eventually("the put is flushed and its record cleared", || async {
        let got = a.get(&1).await.expect("get");
        got.value.and_then(|v| v.owner_upper.clone()) == Some("ADA".into())
    })
    .await;
    // Every load of the row (the patch's read of the current value) is
    // followed by another writer's invalidation before the patch commits.
    let rival = a.clone();
    let _ = setup.on_load.set(Box::new(move |id| {
        let rival = rival.clone();
        Box::pin(async move {
            let id: i64 = id.parse().expect("integer id");
            rival.invalidate(&id).await.expect("rival invalidation");
        })
    }));
    let mut fields = serde_json::Map::new();
    fields.insert("balance".into(), 99.into());
    let err = a.patch(&1, &fields).await.expect_err("patch");
    assert!(err.is_busy(), "{err}");
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    a.close(Duration::from_secs(5)).await.expect("close");
    assert_eq!(db.row(1).await.map(|r| r.1), Some(10));
    db.drop().await;
}
