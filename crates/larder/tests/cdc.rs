//! Database change notifications against a real PostgreSQL
//! (`LARDER_TEST_PG_URL`): triggers installed by larder, changes made by a
//! plain sqlx connection that knows nothing of larder, events recorded by a
//! handler. Each test works in its own schema.

use larder_test_support as support;

use async_trait::async_trait;
use larder::source::{
    mark_larder_origin, ChangeChannel, ChangeHandler, ChangeListener, SqlPool, SqlSource,
};
use larder::Error;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a test waits for an event before it fails.
const WAIT: Duration = Duration::from_secs(20);

/// What the handler was told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Changed(String, Vec<String>),
    Truncated(String),
    Gap(String),
}

impl Ev {
    fn has_id(&self, id: &str) -> bool {
        matches!(self, Ev::Changed(_, ids) if ids.iter().any(|i| i == id))
    }
}

/// Records every successful call; the first `fail` calls fail instead.
struct Recorder {
    tx: mpsc::UnboundedSender<Ev>,
    fail: AtomicU32,
}

impl Recorder {
    fn new(fail: u32) -> (Arc<Recorder>, Events) {
        let (tx, rx) = mpsc::unbounded_channel();
        let recorder = Arc::new(Recorder {
            tx,
            fail: AtomicU32::new(fail),
        });
        (
            recorder,
            Events {
                rx,
                seen: Vec::new(),
            },
        )
    }

    fn record(&self, ev: Ev) -> larder::Result<()> {
        let left = self.fail.load(Ordering::SeqCst);
        if left > 0 {
            self.fail.store(left - 1, Ordering::SeqCst);
            return Err(Error::Config(format!("test handler told to fail ({ev:?})")));
        }
        let _ = self.tx.send(ev);
        Ok(())
    }
}

#[async_trait]
impl ChangeHandler for Recorder {
    async fn changed(&self, entity: &str, ids: &[String]) -> larder::Result<()> {
        self.record(Ev::Changed(entity.to_owned(), ids.to_vec()))
    }

    async fn truncated(&self, entity: &str) -> larder::Result<()> {
        self.record(Ev::Truncated(entity.to_owned()))
    }

    async fn gap(&self, entity: &str) -> larder::Result<()> {
        self.record(Ev::Gap(entity.to_owned()))
    }
}

/// The receiving end of a [`Recorder`].
struct Events {
    rx: mpsc::UnboundedReceiver<Ev>,
    /// Everything received so far, in order.
    seen: Vec<Ev>,
}

impl Events {
    /// Waits for an event matching `pred` and returns it.
    async fn until(&mut self, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
        if let Some(ev) = self.seen.iter().find(|e| pred(e)) {
            return ev.clone();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    self.seen.push(ev.clone());
                    if pred(&ev) {
                        return ev;
                    }
                }
                Ok(None) => panic!(
                    "handler dropped while waiting for {what}; seen {:?}",
                    self.seen
                ),
                Err(_) => panic!("no {what} within {WAIT:?}; seen {:?}", self.seen),
            }
        }
    }

    /// Takes in whatever has arrived, without waiting.
    fn drain(&mut self) -> &[Ev] {
        while let Ok(ev) = self.rx.try_recv() {
            self.seen.push(ev);
        }
        &self.seen
    }

    async fn changed(&mut self, id: &str) -> Ev {
        self.until(&format!("change of {id:?}"), |e| e.has_id(id))
            .await
    }
}

/// One test's schema, a larder pool and a plain sqlx pool for the writes.
struct Db {
    schema: String,
    pool: SqlPool,
    plain: PgPool,
}

impl Db {
    async fn new(name: &str) -> Db {
        let schema = support::unique(name);
        let pool = SqlPool::connect(&support::pg_url(), 2)
            .await
            .expect("connect to PostgreSQL");
        let plain = PgPoolOptions::new()
            .max_connections(2)
            .connect(&support::pg_url())
            .await
            .expect("connect to PostgreSQL");
        let db = Db {
            schema,
            pool,
            plain,
        };
        db.exec(&format!("CREATE SCHEMA \"{}\"", db.schema)).await;
        db
    }

    /// Runs SQL on the plain pool; `@` stands for `"schema".`.
    async fn exec(&self, sql: &str) {
        let sql = sql.replace('@', &format!("\"{}\".", self.schema));
        sqlx::raw_sql(&sql)
            .execute(&self.plain)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn source(&self, table: &str) -> SqlSource {
        SqlSource::builder(self.pool.clone(), &format!("{}.{table}", self.schema))
            .build()
            .await
            .expect("build source")
    }

    /// `items (id int8 primary key, name text)` and its installed channel.
    async fn items(&self) -> ChangeChannel {
        self.exec("CREATE TABLE @items (id int8 PRIMARY KEY, name text NOT NULL)")
            .await;
        self.source("items")
            .await
            .install_change_triggers()
            .await
            .expect("install triggers")
    }

    /// A listener on `channel` with its own application name, and its events.
    async fn listen(&self, channel: ChangeChannel, fail: u32) -> (ChangeListener, Events) {
        let (recorder, events) = Recorder::new(fail);
        let listener = ChangeListener::builder()
            .subscribe(channel, recorder)
            .application_name(&self.app_name())
            .start()
            .await
            .expect("start listener");
        (listener, events)
    }

    fn app_name(&self) -> String {
        format!("cdc-{}", self.schema)
    }

    async fn close(self) {
        self.exec(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema))
            .await;
        self.plain.close().await;
        if let SqlPool::Postgres(p) = &self.pool {
            p.close().await;
        }
    }
}

#[tokio::test]
async fn insert_update_delete_and_truncate_are_delivered() {
    let db = Db::new("cdc_basic").await;
    let channel = db.items().await;
    let entity = channel.entity().to_owned();
    assert_eq!(entity, "items");
    let (listener, mut events) = db.listen(channel, 0).await;

    db.exec("INSERT INTO @items VALUES (1, 'one')").await;
    let ev = events.changed("1").await;
    assert_eq!(ev, Ev::Changed(entity.clone(), vec!["1".into()]));

    db.exec("UPDATE @items SET name = 'uno' WHERE id = 1").await;
    events.seen.clear();
    events.changed("1").await;

    // A key change notifies the old and the new key, in one payload.
    db.exec("UPDATE @items SET id = 100 WHERE id = 1").await;
    events.seen.clear();
    let ev = events.changed("100").await;
    assert!(ev.has_id("1") && ev.has_id("100"), "{ev:?}");

    db.exec("DELETE FROM @items WHERE id = 100").await;
    events.seen.clear();
    events.changed("100").await;

    // Several rows in one statement: every id arrives (batched when together).
    db.exec("INSERT INTO @items VALUES (7, 'a'), (8, 'b'), (9, 'c')")
        .await;
    for id in ["7", "8", "9"] {
        events.changed(id).await;
    }

    db.exec("TRUNCATE @items").await;
    events
        .until("truncate", |e| *e == Ev::Truncated(entity.clone()))
        .await;

    let stats = listener.stats();
    assert!(stats.notifications >= 6, "{stats:?}");
    assert_eq!(stats.truncates, 1, "{stats:?}");
    assert_eq!(stats.gaps, 0, "{stats:?}");
    listener.close().await;
    db.close().await;
}

#[tokio::test]
async fn install_is_idempotent_and_safe_concurrently() {
    let db = Db::new("cdc_install").await;
    db.exec("CREATE TABLE @items (id int8 PRIMARY KEY, name text NOT NULL)")
        .await;
    let source = db.source("items").await;
    let first = source.install_change_triggers().await.expect("install");
    let function_version = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT p.xmin::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = $1 AND p.proname = $2",
        )
        .bind(&db.schema)
        .bind(first.name())
        .fetch_one(&db.plain)
        .await
        .expect("function")
    };
    let before = function_version().await;
    let again = source.install_change_triggers().await.expect("reinstall");
    assert_eq!(again.name(), first.name());
    // Already in place: nothing was rewritten.
    assert_eq!(function_version().await, before);

    // Two installers at once, on a table without triggers yet.
    db.exec("CREATE TABLE @other (id int8 PRIMARY KEY)").await;
    let other = db.source("other").await;
    let (a, b) = tokio::join!(
        other.install_change_triggers(),
        other.install_change_triggers()
    );
    assert_eq!(
        a.expect("installer a").name(),
        b.expect("installer b").name()
    );

    for table in ["items", "other"] {
        let triggers: Vec<String> = sqlx::query_scalar(
            "SELECT tgname::text FROM pg_trigger
              WHERE tgrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass
                AND NOT tgisinternal ORDER BY tgname",
        )
        .bind(&db.schema)
        .bind(table)
        .fetch_all(&db.plain)
        .await
        .expect("triggers");
        assert_eq!(triggers, ["larder_cdc", "larder_cdc_truncate"], "{table}");
    }
    let functions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = $1",
    )
    .bind(&db.schema)
    .fetch_one(&db.plain)
    .await
    .expect("functions");
    assert_eq!(functions, 2, "one function per table");

    let (listener, mut events) = db.listen(first, 0).await;
    db.exec("INSERT INTO @items VALUES (1, 'one')").await;
    events.changed("1").await;
    assert_eq!(listener.stats().notifications, 1);
    listener.close().await;
    db.close().await;
}

#[tokio::test]
async fn larder_origin_writes_are_skipped() {
    let db = Db::new("cdc_origin").await;
    let channel = db.items().await;
    let (listener, mut events) = db.listen(channel, 0).await;

    let mut tx = db.plain.begin().await.expect("begin");
    mark_larder_origin(&mut tx).await.expect("mark origin");
    sqlx::query(&format!(
        "INSERT INTO \"{}\".items VALUES (1, 'mine')",
        db.schema
    ))
    .execute(&mut *tx)
    .await
    .expect("insert");
    tx.commit().await.expect("commit");
    // Notifications arrive in commit order: had the first been sent, it
    // would be seen before this one.
    db.exec("INSERT INTO @items VALUES (2, 'theirs')").await;
    events.changed("2").await;
    assert!(
        !events.seen.iter().any(|e| e.has_id("1")),
        "{:?}",
        events.seen
    );
    // The setting ended with the transaction.
    db.exec("UPDATE @items SET name = 'changed' WHERE id = 1")
        .await;
    events.changed("1").await;
    listener.close().await;
    db.close().await;
}

#[tokio::test]
async fn long_and_odd_text_keys() {
    let db = Db::new("cdc_text").await;
    db.exec("CREATE TABLE @tags (id text PRIMARY KEY, n int4)")
        .await;
    let channel = db
        .source("tags")
        .await
        .install_change_triggers()
        .await
        .expect("install");
    let (listener, mut events) = db.listen(channel, 0).await;

    // Quotes, backslashes and non-ASCII survive the JSON payload.
    let odd = "a\"b\\c é ✓ 'd'";
    sqlx::query(&format!(
        "INSERT INTO \"{}\".tags VALUES ($1, 1)",
        db.schema
    ))
    .bind(odd)
    .execute(&db.plain)
    .await
    .expect("insert odd key");
    events.changed(odd).await;

    // Too long for a notification: the writer's statement still succeeds and
    // the entity is purged instead.
    let long = "x".repeat(10_000);
    sqlx::query(&format!(
        "INSERT INTO \"{}\".tags VALUES ($1, 2)",
        db.schema
    ))
    .bind(&long)
    .execute(&db.plain)
    .await
    .expect("insert long key");
    events
        .until("purge for a long key", |e| matches!(e, Ev::Truncated(_)))
        .await;
    db.exec("UPDATE @tags SET n = 3 WHERE n = 1").await;
    events.seen.clear();
    events.changed(odd).await;
    listener.close().await;
    db.close().await;
}

#[tokio::test]
async fn lost_connection_is_a_gap_then_changes_flow_again() {
    let db = Db::new("cdc_gap").await;
    let channel = db.items().await;
    let entity = channel.entity().to_owned();
    let (listener, mut events) = db.listen(channel, 0).await;
    db.exec("INSERT INTO @items VALUES (1, 'one')").await;
    events.changed("1").await;

    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(db.app_name())
    .fetch_all(&db.plain)
    .await
    .expect("terminate");
    assert_eq!(killed, [true], "the listener's backend");
    // A change while the listener is away (it may or may not be heard).
    db.exec("INSERT INTO @items VALUES (2, 'two')").await;

    events.until("gap", |e| *e == Ev::Gap(entity.clone())).await;
    db.exec("INSERT INTO @items VALUES (3, 'three')").await;
    events.changed("3").await;
    let stats = listener.stats();
    assert!(stats.gaps >= 1 && stats.gaps_delivered >= 1, "{stats:?}");
    listener.close().await;
    db.close().await;
}

#[tokio::test]
async fn database_outage_is_a_gap_once_listening_again() {
    let db = Db::new("cdc_outage").await;
    db.exec("CREATE TABLE @items (id int8 PRIMARY KEY, name text NOT NULL)")
        .await;
    // The source (and so the listener) reaches PostgreSQL through a proxy
    // the test can cut; the writes go around it.
    let proxy = support::TcpProxy::start(support::pg_addr());
    let via = SqlPool::connect(&support::pg_url_via(proxy.addr()), 1)
        .await
        .expect("connect through the proxy");
    let channel = SqlSource::builder(via.clone(), &format!("{}.items", db.schema))
        .build()
        .await
        .expect("source")
        .install_change_triggers()
        .await
        .expect("install");
    let entity = channel.entity().to_owned();
    let (listener, mut events) = db.listen(channel, 0).await;
    db.exec("INSERT INTO @items VALUES (1, 'one')").await;
    events.changed("1").await;

    proxy.cut();
    let deadline = tokio::time::Instant::now() + WAIT;
    while listener.stats().gaps == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loss went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Missed: nobody is listening.
    db.exec("INSERT INTO @items VALUES (2, 'two')").await;
    let seen = events.drain();
    assert!(
        !seen.iter().any(|e| matches!(e, Ev::Gap(_))),
        "no gap before listening again: {seen:?}"
    );
    proxy.restore();

    events.until("gap", |e| *e == Ev::Gap(entity.clone())).await;
    db.exec("INSERT INTO @items VALUES (3, 'three')").await;
    events.changed("3").await;
    listener.close().await;
    if let SqlPool::Postgres(p) = &via {
        p.close().await;
    }
    db.close().await;
}

#[tokio::test]
async fn a_failing_handler_does_not_stop_the_listener() {
    let db = Db::new("cdc_fail").await;
    let channel = db.items().await;
    let entity = channel.entity().to_owned();
    // The first change and the first retried gap fail.
    let (listener, mut events) = db.listen(channel, 2).await;
    db.exec("INSERT INTO @items VALUES (1, 'one')").await;
    events
        .until("gap after failures", |e| *e == Ev::Gap(entity.clone()))
        .await;
    db.exec("INSERT INTO @items VALUES (2, 'two')").await;
    events.changed("2").await;
    let stats = listener.stats();
    assert_eq!(stats.handler_errors, 2, "{stats:?}");
    assert_eq!(stats.gaps_delivered, 1, "{stats:?}");
    listener.close().await;
    db.close().await;
}

#[tokio::test]
async fn one_listener_many_tables() {
    let db = Db::new("cdc_many").await;
    let items = db.items().await;
    db.exec("CREATE TABLE @users (id int8 PRIMARY KEY)").await;
    let users = db
        .source("users")
        .await
        .install_change_triggers()
        .await
        .expect("install");
    let (recorder, mut events) = Recorder::new(0);
    let listener = ChangeListener::start(vec![
        (items, recorder.clone() as Arc<dyn ChangeHandler>),
        (users, recorder),
    ])
    .await
    .expect("start");
    db.exec("INSERT INTO @items VALUES (1, 'one'); INSERT INTO @users VALUES (2)")
        .await;
    events
        .until(
            "items 1",
            |e| matches!(e, Ev::Changed(ent, ids) if ent == "items" && ids == &["1"]),
        )
        .await;
    events
        .until(
            "users 2",
            |e| matches!(e, Ev::Changed(ent, ids) if ent == "users" && ids == &["2"]),
        )
        .await;
    listener.close().await;
    db.close().await;
}

#[tokio::test]
async fn close_ends_the_connection() {
    let db = Db::new("cdc_close").await;
    let channel = db.items().await;
    let (listener, _events) = db.listen(channel, 0).await;
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(db.app_name())
        .fetch_one(&db.plain)
        .await
        .expect("count")
    };
    assert_eq!(count().await, 1, "listening when start returns");
    listener.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while count().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.close().await;
}

#[tokio::test]
async fn views_and_sqlite_are_refused_clearly() {
    let db = Db::new("cdc_view").await;
    db.exec("CREATE TABLE @items (id int8 PRIMARY KEY, name text NOT NULL); CREATE VIEW @names AS SELECT id, name FROM @items")
        .await;
    let view = db.source("names").await;
    match view.install_change_triggers().await {
        Err(Error::Config(msg)) => assert!(msg.contains("views cannot carry"), "{msg}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    db.close().await;

    let lite = SqlPool::connect("sqlite::memory:", 1)
        .await
        .expect("sqlite");
    if let SqlPool::Sqlite(p) = &lite {
        sqlx::query("CREATE TABLE items (id INTEGER PRIMARY KEY)")
            .execute(p)
            .await
            .expect("create");
    }
    let source = SqlSource::builder(lite, "items")
        .build()
        .await
        .expect("source");
    match source.install_change_triggers().await {
        Err(Error::Config(msg)) => {
            assert!(msg.contains("SQLite has no change notifications"), "{msg}")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_listener_needs_a_subscription() {
    match ChangeListener::builder().start().await {
        Err(Error::Config(msg)) => assert!(msg.contains("at least one"), "{msg}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}
