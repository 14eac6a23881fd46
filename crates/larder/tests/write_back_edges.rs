//! Write-back at its edges, over a real PostgreSQL and a durable Redis of
//! the test's own: a row the database refuses (a trigger, row-level
//! security) is dead-lettered alone while the rest of its batch lands, and
//! no instance serves it any more; a row a trigger skipped is a dead
//! letter, not a cleared record; a table-wide refusal (a revoked
//! privilege, or every row refused alike) dead-letters nothing and lands
//! once lifted; `close` owns the flusher; a flush whose COMMIT reply is
//! lost is settled by its fence token, never applied twice.
//!
//! Every test runs on both representations: `string::<name>` and
//! `hash::<name>` (where patches are records of just their columns).

use larder_test_support as support;

use larder::store::Store;
use larder::{
    Cache, Error, NearOptions, Outcome, Representation, SqlPool, SqlSource, WriteBackOptions,
    WritePolicy,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::accounts::{account, Account, Db};
use support::eventually;
use support::RedisServer;

/// Runs each named test body once per representation: as
/// `string::<name>` on `string` entries and as `hash::<name>` on `hash`
/// entries.
macro_rules! on_both_representations {
    ($($name:ident),* $(,)?) => {
        mod string {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(larder::Representation::String).await;
                }
            )*
        }

        mod hash {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(larder::Representation::Hash).await;
                }
            )*
        }
    };
}

on_both_representations!(
    a_row_a_trigger_refuses_is_dead_lettered_alone_and_served_nowhere,
    a_row_refused_by_row_level_security_is_dead_lettered_alone_and_served_nowhere,
    a_row_a_trigger_skips_is_a_dead_letter_not_a_cleared_record,
    a_revoked_privilege_dead_letters_nothing_and_everything_lands_once_granted,
    an_error_every_row_fails_with_alike_dead_letters_nothing,
    writes_after_close_are_refused_and_close_twice_is_fine,
    close_while_the_flusher_commits_never_flushes_a_batch_twice,
    a_row_committed_but_not_read_back_is_cleared_not_refused_nor_applied_again,
    a_flush_whose_commit_reply_is_lost_is_cleared_by_its_fence_token_not_applied_again,
);

/// How long a write may wait to be flushed in these tests (long enough
/// that a few writes sent together are queued before their shard is due,
/// even on a loaded machine).
const MAX_DELAY: Duration = Duration::from_millis(500);

fn settings() -> WriteBackOptions {
    WriteBackOptions {
        max_delay: MAX_DELAY,
        flush_lease: Duration::from_secs(4),
        ..WriteBackOptions::default()
    }
}

async fn redis(url: &str) -> Arc<dyn Store> {
    larder::store::connect_checked(url).await.expect("redis")
}

/// An accounts schema, a durable Redis of the test's own, a unique prefix.
struct Fixture {
    db: Db,
    server: RedisServer,
    prefix: String,
    representation: Representation,
}

impl Fixture {
    async fn new(representation: Representation) -> Fixture {
        Fixture {
            db: Db::new().await,
            server: RedisServer::durable(),
            prefix: support::unique("wbe"),
            representation,
        }
    }

    async fn exec(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.db.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn source(&self, url: &str) -> SqlSource {
        let pool = SqlPool::connect(url, 3).await.expect("pool");
        SqlSource::builder(pool, &self.db.table())
            .entity("accounts")
            .build()
            .await
            .expect("source")
    }

    /// A write-back cache of accounts in one shard, with a near cache,
    /// its source connected at `url`.
    async fn instance(&self, url: &str) -> Cache<i64, Account> {
        Cache::builder()
            .prefix(self.prefix.as_str())
            .entity("accounts")
            .shards(1)
            .representation(self.representation)
            .store(redis(&self.server.url()).await)
            .source(self.source(url).await)
            .write_policy(WritePolicy::Back(settings()))
            .near(NearOptions {
                capacity: 1_000,
                ttl: Duration::from_secs(60),
            })
            .ttl(Duration::from_secs(60))
            .early_refresh(0.0)
            .wait_timeout(Duration::from_millis(500))
            .build()
            .await
            .expect("cache")
    }

    /// A login role of the test's own that may write the accounts table
    /// (and the fence table): row-level security and privileges apply to
    /// it, as they do not to a superuser. Answers the URL to connect as it.
    async fn role(&self) -> (String, String) {
        let role = support::unique("wbe_role");
        let schema = &self.db.schema;
        // The fence table and its columns exist before the role uses them.
        let admin = self.source(&support::pg_url()).await;
        admin
            .prepare_fence(&format!("{}:accounts", self.prefix), 1)
            .await
            .expect("fence");
        for sql in [
            format!("CREATE ROLE {role} LOGIN"),
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.accounts TO {role}"),
            format!("GRANT CREATE ON SCHEMA public TO {role}"),
            format!("GRANT SELECT, INSERT, UPDATE ON larder_fence TO {role}"),
        ] {
            self.exec(&sql).await;
        }
        let mut url = url::Url::parse(&support::pg_url()).expect("pg url");
        url.set_username(&role).expect("user");
        let _ = url.set_password(None);
        (role, url.to_string())
    }

    /// Counts every row written to the accounts table: a table `writes`
    /// and a trigger that appends each written row's id to it.
    async fn count_writes(&self) {
        let schema = &self.db.schema;
        for sql in [
            format!("CREATE TABLE {schema}.writes (id bigint NOT NULL)"),
            format!(
                "CREATE FUNCTION {schema}.count_write() RETURNS trigger AS $$
                 BEGIN INSERT INTO {schema}.writes VALUES (NEW.id); RETURN NULL; END $$ LANGUAGE plpgsql"
            ),
            format!(
                "CREATE TRIGGER count_write AFTER INSERT OR UPDATE ON {schema}.accounts
                 FOR EACH ROW EXECUTE FUNCTION {schema}.count_write()"
            ),
        ] {
            self.exec(&sql).await;
        }
    }

    /// How many rows were written since [`Fixture::count_writes`].
    async fn writes(&self) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {}.writes", self.db.schema))
            .fetch_one(&self.db.admin)
            .await
            .expect("writes")
    }

    async fn drop_role(&self, role: &str) {
        self.exec(&format!("DROP OWNED BY {role}")).await;
        self.exec(&format!("DROP ROLE {role}")).await;
    }
}

/// Reads `id` on both instances until each has it in its near cache (the
/// value pending in the store).
async fn hold_in_both_near_caches(a: &Cache<i64, Account>, b: &Cache<i64, Account>, id: i64) {
    for cache in [a, b] {
        let first = cache.get(&id).await.expect("get");
        assert!(first.value.is_some(), "the pending write is served");
        let again = cache.get(&id).await.expect("get");
        assert_eq!(again.outcome, Outcome::L1, "held by the near cache");
    }
}

/// Both instances read `id` as the database has it (no row), once the
/// dead letter's announcement reached them.
async fn served_by_neither(a: &Cache<i64, Account>, b: &Cache<i64, Account>, id: i64) {
    for (name, cache) in [("a", a), ("b", b)] {
        eventually(&format!("instance {name} stops serving {id}"), || async {
            let read = cache.get(&id).await.expect("get");
            read.value.is_none()
        })
        .await;
        // Its near cache may hold the database's answer now, never the refused row.
        let read = cache.get(&id).await.expect("get");
        assert_eq!(read.value, None, "instance {name}");
    }
}

/// Writes 20 accounts through `a`, `refused` among them (written first
/// and read through both instances' near caches), and checks that the
/// other 19 land within 2 × `max_delay` of the last write, that `refused`
/// is the one dead letter, with `code`, and that neither instance serves it.
async fn one_refused_among_twenty(
    f: &Fixture,
    a: &Cache<i64, Account>,
    b: &Cache<i64, Account>,
    refused: Account,
    code: &str,
) {
    let bad = refused.id;
    a.put(&bad, &refused).await.expect("acknowledged");
    hold_in_both_near_caches(a, b, bad).await;
    for id in 1..=20 {
        if id != bad {
            a.put(&id, &account(id, &format!("o{id}"), id))
                .await
                .expect("put");
        }
    }
    let last_write = Instant::now();
    while f.db.count().await < 19 {
        assert!(
            last_write.elapsed() < 2 * MAX_DELAY,
            "the 19 good rows land within 2 x max_delay ({} landed)",
            f.db.count().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("the refused row is dead-lettered", || async {
        a.dead_letters().await.expect("list").len() == 1
    })
    .await;
    let letters = b.dead_letters().await.expect("list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].id, bad.to_string());
    assert_eq!(letters[0].code.as_deref(), Some(code), "{letters:?}");
    assert_eq!(f.db.row(bad).await, None);
    served_by_neither(a, b, bad).await;
    for id in (1..=20).filter(|&id| id != bad) {
        assert_eq!(f.db.row(id).await.map(|r| r.1), Some(id), "row {id} landed");
    }
}

async fn a_row_a_trigger_refuses_is_dead_lettered_alone_and_served_nowhere(
    representation: Representation,
) {
    let f = Fixture::new(representation).await;
    let schema = &f.db.schema;
    f.exec(&format!(
        "CREATE FUNCTION {schema}.refuse() RETURNS trigger AS $$
         BEGIN IF NEW.owner = 'refused' THEN RAISE EXCEPTION 'owner % is refused', NEW.owner; END IF;
         RETURN NEW; END $$ LANGUAGE plpgsql"
    ))
    .await;
    f.exec(&format!(
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {schema}.accounts
         FOR EACH ROW EXECUTE FUNCTION {schema}.refuse()"
    ))
    .await;
    let a = f.instance(&support::pg_url()).await;
    let b = f.instance(&support::pg_url()).await;
    one_refused_among_twenty(&f, &a, &b, account(7, "refused", 7), "P0001").await;
    let letter = &a.dead_letters().await.expect("list")[0];
    assert!(
        letter.error.contains("owner refused is refused"),
        "the database's message: {}",
        letter.error
    );
    let stats = a.write_back_stats().expect("stats");
    assert_eq!(stats.alerts, 0, "{stats:?}");
    f.db.drop().await;
}

async fn a_row_refused_by_row_level_security_is_dead_lettered_alone_and_served_nowhere(
    representation: Representation,
) {
    let f = Fixture::new(representation).await;
    let (role, url) = f.role().await;
    let table = f.db.table();
    f.exec(&format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"))
        .await;
    f.exec(&format!(
        "CREATE POLICY no_refused ON {table} FOR ALL TO {role} USING (true) WITH CHECK (owner <> 'refused')"
    ))
    .await;
    let a = f.instance(&url).await;
    let b = f.instance(&url).await;
    one_refused_among_twenty(&f, &a, &b, account(13, "refused", 13), "42501").await;
    let stats = a.write_back_stats().expect("stats");
    assert_eq!(stats.alerts, 0, "{stats:?}");
    drop((a, b));
    f.drop_role(&role).await;
    f.db.drop().await;
}

async fn a_row_a_trigger_skips_is_a_dead_letter_not_a_cleared_record(
    representation: Representation,
) {
    let f = Fixture::new(representation).await;
    let schema = &f.db.schema;
    f.exec(&format!(
        "CREATE FUNCTION {schema}.skip() RETURNS trigger AS $$
         BEGIN IF NEW.owner = 'skipped' THEN RETURN NULL; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
    ))
    .await;
    f.exec(&format!(
        "CREATE TRIGGER a_skip BEFORE INSERT OR UPDATE ON {schema}.accounts
         FOR EACH ROW EXECUTE FUNCTION {schema}.skip()"
    ))
    .await;
    let a = f.instance(&support::pg_url()).await;
    let b = f.instance(&support::pg_url()).await;
    a.put(&5, &account(5, "skipped", 5)).await.expect("put");
    hold_in_both_near_caches(&a, &b, 5).await;
    for id in (1..=10).filter(|&id| id != 5) {
        a.put(&id, &account(id, "kept", id)).await.expect("put");
    }
    eventually("the other rows land", || async { f.db.count().await == 9 }).await;
    eventually("the skipped row is dead-lettered", || async {
        a.dead_letters().await.expect("list").len() == 1
    })
    .await;
    let letter = &a.dead_letters().await.expect("list")[0];
    assert_eq!(letter.id, "5");
    assert!(
        letter.error.contains("skipped by a trigger"),
        "{}",
        letter.error
    );
    assert_eq!(letter.code, None);
    assert_eq!(f.db.row(5).await, None, "the row is not in the database");
    served_by_neither(&a, &b, 5).await;
    eventually("nothing stays pending", || async {
        a.write_back_stats().expect("stats").backlog == 0
    })
    .await;
    f.db.drop().await;
}

async fn a_revoked_privilege_dead_letters_nothing_and_everything_lands_once_granted(
    representation: Representation,
) {
    let f = Fixture::new(representation).await;
    let (role, url) = f.role().await;
    let table = f.db.table();
    let a = f.instance(&url).await;
    for id in 1..=5 {
        a.put(&id, &account(id, "before", id)).await.expect("put");
    }
    eventually("the first rows land", || async { f.db.count().await == 5 }).await;

    f.exec(&format!("REVOKE INSERT, UPDATE ON {table} FROM {role}"))
        .await;
    // One row alone (a batch of one), then several at once.
    a.put(&6, &account(6, "alone", 6))
        .await
        .expect("acknowledged");
    eventually("the refusal of the table is counted", || async {
        a.write_back_stats().expect("stats").alerts >= 1
    })
    .await;
    // Patches of rows that exist (on a `hash` entity: records of just
    // those columns, flushed as UPDATEs), and new rows.
    for id in 1..=5 {
        let mut fields = serde_json::Map::new();
        fields.insert("balance".into(), (100 + id).into());
        a.patch(&id, &fields).await.expect("acknowledged");
    }
    for id in 7..=12 {
        a.put(&id, &account(id, "during", 100 + id))
            .await
            .expect("acknowledged");
    }
    let seen = a.write_back_stats().expect("stats").alerts;
    eventually("the table stays refused for a few rounds", || async {
        a.write_back_stats().expect("stats").alerts >= seen + 2
    })
    .await;
    assert!(a.dead_letters().await.expect("list").is_empty());
    assert_eq!(f.db.count().await, 5, "nothing lands while refused");

    f.exec(&format!("GRANT INSERT, UPDATE ON {table} TO {role}"))
        .await;
    eventually("everything lands once granted", || async {
        f.db.count().await == 12 && a.write_back_stats().expect("stats").backlog == 0
    })
    .await;
    for id in (1..=5).chain(7..=12) {
        assert_eq!(f.db.row(id).await.map(|r| r.1), Some(100 + id), "{id}");
    }
    assert_eq!(f.db.row(6).await.map(|r| r.0), Some("alone".into()));
    assert!(a.dead_letters().await.expect("list").is_empty());
    let stats = a.write_back_stats().expect("stats");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    a.close(Duration::from_secs(5)).await.expect("close");
    drop(a);
    f.drop_role(&role).await;
    f.db.drop().await;
}

async fn an_error_every_row_fails_with_alike_dead_letters_nothing(representation: Representation) {
    let f = Fixture::new(representation).await;
    let schema = &f.db.schema;
    f.exec(&format!(
        "CREATE TABLE {schema}.gate (closed boolean NOT NULL)"
    ))
    .await;
    f.exec(&format!("INSERT INTO {schema}.gate VALUES (true)"))
        .await;
    f.exec(&format!(
        "CREATE FUNCTION {schema}.gate() RETURNS trigger AS $$
         BEGIN IF (SELECT closed FROM {schema}.gate) THEN RAISE EXCEPTION 'the gate is closed'; END IF;
         RETURN NEW; END $$ LANGUAGE plpgsql"
    ))
    .await;
    f.exec(&format!(
        "CREATE TRIGGER gate BEFORE INSERT OR UPDATE ON {schema}.accounts
         FOR EACH ROW EXECUTE FUNCTION {schema}.gate()"
    ))
    .await;
    let a = f.instance(&support::pg_url()).await;
    // Sent together, so that the first flush finds a batch of all eight.
    let rows: Vec<Account> = (1..=8).map(|id| account(id, "gated", id)).collect();
    for put in futures_util::future::join_all(rows.iter().map(|r| a.put(&r.id, r))).await {
        put.expect("put");
    }
    eventually("every row refused alike is an alert", || async {
        a.write_back_stats().expect("stats").alerts >= 2
    })
    .await;
    assert!(a.dead_letters().await.expect("list").is_empty());
    f.exec(&format!("UPDATE {schema}.gate SET closed = false"))
        .await;
    eventually("everything lands once the gate opens", || async {
        f.db.count().await == 8
    })
    .await;
    assert!(a.dead_letters().await.expect("list").is_empty());
    f.db.drop().await;
}

async fn writes_after_close_are_refused_and_close_twice_is_fine(representation: Representation) {
    let f = Fixture::new(representation).await;
    let a = f.instance(&support::pg_url()).await;
    a.put(&1, &account(1, "ada", 1)).await.expect("put");
    let closed = a.close(Duration::from_secs(5)).await.expect("close");
    assert_eq!(closed.pending, 0);
    assert_eq!(f.db.count().await, 1);
    let e = a
        .put(&2, &account(2, "late", 2))
        .await
        .expect_err("a write after close");
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    let mut fields = serde_json::Map::new();
    fields.insert("balance".into(), 5.into());
    assert!(matches!(
        a.patch(&1, &fields).await,
        Err(Error::Closed { .. })
    ));
    assert!(matches!(a.delete(&1).await, Err(Error::Closed { .. })));
    let again = a.close(Duration::from_secs(5)).await.expect("close again");
    assert_eq!(again.pending, 0);
    // Reads go on.
    let read = a.get(&1).await.expect("get");
    assert_eq!(read.value.map(|v| v.owner.clone()), Some("ada".into()));
    assert_eq!(f.db.count().await, 1);
    f.db.drop().await;
}

/// How many sessions of `app` wait on a lock.
async fn waiting(f: &Fixture, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
    )
    .bind(app)
    .fetch_one(&f.db.admin)
    .await
    .expect("pg_stat_activity")
}

async fn close_while_the_flusher_commits_never_flushes_a_batch_twice(
    representation: Representation,
) {
    let f = Fixture::new(representation).await;
    let schema = &f.db.schema;
    let lock_key: i64 = rand::random::<i32>().into();
    // Every flush statement waits on an advisory lock the test holds, and
    // every row written is counted.
    f.exec(&format!(
        "CREATE FUNCTION {schema}.hold() RETURNS trigger AS $$
         BEGIN PERFORM pg_advisory_xact_lock_shared({lock_key}); RETURN NULL; END $$ LANGUAGE plpgsql"
    ))
    .await;
    f.exec(&format!(
        "CREATE TRIGGER hold BEFORE INSERT OR UPDATE ON {schema}.accounts
         FOR EACH STATEMENT EXECUTE FUNCTION {schema}.hold()"
    ))
    .await;
    f.count_writes().await;
    let app = support::unique("wbe_close");
    let mut url = url::Url::parse(&support::pg_url()).expect("pg url");
    url.query_pairs_mut().append_pair("application_name", &app);
    let mut gate = f.db.admin.acquire().await.expect("connection");
    for round in 0..3_i64 {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(lock_key)
            .execute(&mut *gate)
            .await
            .expect("lock");
        let cache = f.instance(url.as_str()).await;
        let ids: Vec<i64> = (1..=5).map(|i| round * 100 + i).collect();
        for &id in &ids {
            cache.put(&id, &account(id, "once", id)).await.expect("put");
        }
        eventually("the background flusher is committing", || async {
            waiting(&f, &app).await >= 1
        })
        .await;
        let closing = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.close(Duration::from_secs(10)).await })
        };
        // A second flush of the shard would queue behind the first one.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            assert!(
                waiting(&f, &app).await < 2,
                "round {round}: close flushes while the flusher does"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock_key)
            .execute(&mut *gate)
            .await
            .expect("unlock");
        let closed = closing.await.expect("join").expect("close");
        assert_eq!(closed.pending, 0, "round {round}");
        let writes: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {schema}.writes WHERE id / 100 = $1"
        ))
        .bind(round)
        .fetch_one(&f.db.admin)
        .await
        .expect("writes");
        assert_eq!(
            writes,
            ids.len() as i64,
            "round {round}: each row written once"
        );
        let stats = cache.write_back_stats().expect("stats");
        assert_eq!(stats.rows_written, ids.len() as u64, "{stats:?}");
    }
    drop(gate);
    f.db.drop().await;
}

/// An account whose balance must fit a byte.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Small {
    id: i64,
    owner: String,
    balance: u8,
}

async fn a_row_committed_but_not_read_back_is_cleared_not_refused_nor_applied_again(
    representation: Representation,
) {
    let f = Fixture::new(representation).await;
    let schema = &f.db.schema;
    // The stored row no longer fits the cache's type: it decodes only
    // after the COMMIT, and fails.
    f.exec(&format!(
        "CREATE FUNCTION {schema}.grow() RETURNS trigger AS $$
         BEGIN NEW.balance := NEW.balance * 1000; RETURN NEW; END $$ LANGUAGE plpgsql"
    ))
    .await;
    f.exec(&format!(
        "CREATE TRIGGER grow BEFORE INSERT OR UPDATE ON {schema}.accounts
         FOR EACH ROW EXECUTE FUNCTION {schema}.grow()"
    ))
    .await;
    f.count_writes().await;
    let cache: Cache<i64, Small> = Cache::builder()
        .prefix(f.prefix.as_str())
        .entity("accounts")
        .shards(1)
        .representation(f.representation)
        .store(redis(&f.server.url()).await)
        .source(f.source(&support::pg_url()).await)
        .write_policy(WritePolicy::Back(settings()))
        .build()
        .await
        .expect("cache");
    for id in 1..=3 {
        let row = Small {
            id,
            owner: format!("o{id}"),
            balance: 5,
        };
        cache.put(&id, &row).await.expect("put");
    }
    eventually("the committed rows are cleared", || async {
        f.db.count().await == 3 && cache.write_back_stats().expect("stats").backlog == 0
    })
    .await;
    let closed = cache.close(Duration::from_secs(5)).await.expect("close");
    assert_eq!(closed.pending, 0);
    assert!(cache.dead_letters().await.expect("list").is_empty());
    let writes = f.writes().await;
    assert_eq!(writes, 3, "each row written once, never again");
    for id in 1..=3 {
        assert_eq!(f.db.row(id).await.map(|r| r.1), Some(5000));
        // The entry was invalidated: the pending value is not served.
        let read = cache.get(&id).await;
        assert!(
            !matches!(&read, Ok(l) if l.value.is_some()),
            "{id}: {read:?}"
        );
    }
    f.db.drop().await;
}

/// A flush whose `COMMIT` reached PostgreSQL but whose reply was lost (the
/// connection dropped while the proxy held it back): the fence row's batch
/// token says it committed, so the records are cleared and the entries
/// invalidated — the rows are neither written again nor dead-lettered.
async fn a_flush_whose_commit_reply_is_lost_is_cleared_by_its_fence_token_not_applied_again(
    representation: Representation,
) {
    let f = Fixture::new(representation).await;
    f.count_writes().await;
    let proxy = support::TcpProxy::start(support::pg_addr());
    // In plain text: the proxy watches the protocol for COMMIT.
    let cache = f.instance(&support::pg_url_via(proxy.addr())).await;
    // A first flush prepares the fence rows (a transaction of its own).
    cache.put(&0, &account(0, "o0", 7)).await.expect("put");
    eventually("the first write is flushed", || async {
        f.db.count().await == 1 && cache.write_back_stats().expect("stats").backlog == 0
    })
    .await;
    proxy.hold_after(b"COMMIT");
    for id in 1..=3 {
        cache
            .put(&id, &account(id, &format!("o{id}"), 7))
            .await
            .expect("put");
    }
    // Rows appear only once the held transaction committed (every answer
    // is held from then on, so no other flush commits meanwhile); the
    // writes may have been split into more than one batch.
    eventually(
        "a flush committed in PostgreSQL, its reply held",
        || async { proxy.holds() == 1 && f.db.count().await > 1 },
    )
    .await;
    // The reply is lost: the connection drops; new ones get through.
    proxy.cut();
    proxy.restore();
    eventually("the committed records are cleared", || async {
        cache.write_back_stats().expect("stats").backlog == 0
    })
    .await;
    let closed = cache.close(Duration::from_secs(5)).await.expect("close");
    assert_eq!(closed.pending, 0);
    assert!(cache.dead_letters().await.expect("list").is_empty());
    let writes = f.writes().await;
    assert_eq!(writes, 4, "each row written once, never again");
    for id in 1..=3 {
        assert_eq!(f.db.row(id).await.map(|r| r.1), Some(7));
        // Read back from the database (the entry was invalidated).
        let read = cache.get(&id).await.expect("read");
        assert_eq!(read.value.map(|a| a.balance), Some(7));
    }
    f.db.drop().await;
}
