//! Keys as the database compares them, against real PostgreSQL and SQLite:
//! every spelling the database calls equal reads one cache entry (citext,
//! char(n), SQLite NOCASE and RTRIM), key types that cannot promise that are
//! refused at build naming the table, the column and its type, ids and
//! values the column cannot hold are refused before any SQL runs, and the
//! rule for absent columns on a write.

use larder_test_support as support;

use larder::source::{ChangeListener, Source, SqlPool, SqlSource};
use larder::{Cache, Error, NearOptions, WritePolicy};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn exec(db: &PgPool, sql: &str) {
    sqlx::query(sql).execute(db).await.expect(sql);
}

/// A fresh schema with the citext extension available.
async fn pg_schema(prefix: &str) -> (PgPool, String) {
    let db = support::pg_pool(2).await;
    let schema = support::unique(prefix);
    // Several tests may create the extension at once: one of them wins.
    for _ in 0..5 {
        if sqlx::query("CREATE EXTENSION IF NOT EXISTS citext")
            .execute(&db)
            .await
            .is_ok()
        {
            break;
        }
    }
    exec(&db, &format!("CREATE SCHEMA {schema}")).await;
    (db, schema)
}

async fn pg_source(table: &str) -> larder::Result<SqlSource> {
    let pool = SqlPool::connect(&support::pg_url(), 2).await?;
    SqlSource::builder(pool, table).build().await
}

async fn sqlite_db() -> SqlPool {
    let path = std::env::temp_dir().join(format!("{}.db", support::unique("larder_keys")));
    SqlPool::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .expect("open SQLite")
}

async fn lite_exec(pool: &SqlPool, sql: &str) {
    let SqlPool::Sqlite(p) = pool else {
        unreachable!("a SQLite pool")
    };
    sqlx::query(sql).execute(p).await.expect(sql);
}

async fn cache(source: SqlSource, prefix: &str) -> Cache<str, Value> {
    Cache::builder()
        .prefix(prefix)
        .entity("ci")
        .store(support::redis_store().await)
        .source(source)
        .near(NearOptions {
            capacity: 100,
            ttl: Duration::from_secs(60),
        })
        .ttl(Duration::from_secs(600))
        .early_refresh(0.0)
        .write_policy(WritePolicy::Through)
        .build()
        .await
        .expect("cache")
}

fn name_of(v: &Option<Arc<Value>>) -> Option<String> {
    v.as_ref()
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

async fn until_reads(cache: &Cache<str, Value>, spellings: &[&str], want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut all = true;
        for s in spellings {
            let got = cache.get(s).await.expect("get");
            all &= name_of(&got.value).as_deref() == Some(want);
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{spellings:?} never all read {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn citext_every_spelling_reads_the_row_and_a_plain_update_reaches_every_spelling() {
    let (db, schema) = pg_schema("keys_ci").await;
    let table = format!("{schema}.ci");
    exec(
        &db,
        &format!("CREATE TABLE {table} (id citext PRIMARY KEY, name text NOT NULL)"),
    )
    .await;
    exec(&db, &format!("INSERT INTO {table} VALUES ('Alice', 'one')")).await;
    let source = pg_source(&table).await.expect("citext keys are supported");
    assert_eq!(source.canonical_id("ALICE").expect("id"), "alice");
    assert!(
        matches!(source.canonical_id("Älice"), Err(Error::InvalidId { .. })),
        "non-ASCII citext ids are refused under a locale"
    );
    let prefix = support::unique("keys_ci");
    let c = cache(source.clone(), &prefix).await;

    let spellings = ["alice", "Alice", "ALICE", "aLiCe"];
    for s in spellings {
        let got = c.get(s).await.expect("get");
        assert_eq!(name_of(&got.value).as_deref(), Some("one"), "GET {s}");
    }

    // A plain-SQL UPDATE, announced by the trigger with the stored text
    // ('Alice'), reaches every spelling.
    let channel = source.install_change_triggers().await.expect("triggers");
    let listener = ChangeListener::builder()
        .subscribe(channel, Arc::new(c.clone()))
        .application_name(&support::unique("keys_ci"))
        .start()
        .await
        .expect("listener");
    exec(&db, &format!("UPDATE {table} SET name = 'two'")).await;
    until_reads(&c, &spellings, "two").await;

    // An explicit invalidation of any spelling too.
    sqlx::query(&format!("UPDATE {table} SET name = 'three'"))
        .execute(&db)
        .await
        .expect("update");
    c.invalidate("ALICE").await.expect("invalidate");
    until_reads(&c, &spellings, "three").await;

    // A write under another spelling updates the one row.
    let written = c
        .put("ALICE", &json!({"name": "four"}))
        .await
        .expect("a PUT under another spelling is not an error");
    assert_eq!(written.value["name"], "four");
    until_reads(&c, &spellings, "four").await;
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(rows, 1);
    listener.close().await;
}

#[tokio::test]
async fn char_n_keys_ignore_trailing_blanks_and_length_is_checked() {
    let (db, schema) = pg_schema("keys_bp").await;
    let table = format!("{schema}.bp");
    exec(
        &db,
        &format!("CREATE TABLE {table} (id char(5) PRIMARY KEY, name text, code varchar(3))"),
    )
    .await;
    exec(
        &db,
        &format!("INSERT INTO {table} VALUES ('ab', 'one', 'x')"),
    )
    .await;
    let source = pg_source(&table).await.expect("char(n) keys are supported");
    assert_eq!(source.canonical_id("ab   ").expect("id"), "ab");
    assert!(source.load_json("ab  ").await.expect("load").is_some());
    assert!(source.load_json("ab").await.expect("load").is_some());
    assert!(matches!(
        source.canonical_id("abcdef"),
        Err(Error::InvalidId { .. })
    ));
    let stored = Source::<Value>::store(&source, "ab ", &json!({"name": "two"}))
        .await
        .expect("a write under a padded spelling");
    assert_eq!(stored["name"], "two");
    let cols = source.columns();
    let code = cols.iter().find(|c| c.name == "code").expect("code");
    assert_eq!(code.max_chars(), Some(3));
    assert_eq!(cols[0].max_chars(), Some(5));
    assert_eq!(code.int_range(), None);
}

#[tokio::test]
async fn refused_key_types_name_the_table_the_column_and_the_type() {
    let (db, schema) = pg_schema("keys_no").await;
    let mut cases = vec![
        ("num", "numeric", "numeric"),
        ("day", "date", "date"),
        ("ts", "timestamp", "timestamp without time zone"),
        ("fl", "double precision", "double precision"),
    ];
    let icu = sqlx::query(&format!(
        "CREATE COLLATION {schema}.nd (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
    ))
    .execute(&db)
    .await
    .is_ok();
    if icu {
        cases.push((
            "nd",
            &*Box::leak(format!("text COLLATE {schema}.nd").into_boxed_str()),
            "text",
        ));
    } else {
        eprintln!("no ICU: the non-deterministic collation case is skipped");
    }
    for (t, ty, shown) in cases {
        let table = format!("{schema}.{t}");
        exec(
            &db,
            &format!("CREATE TABLE {table} (id {ty} PRIMARY KEY, v text)"),
        )
        .await;
        let err = pg_source(&table).await.expect_err("refused");
        let msg = err.to_string();
        assert!(matches!(err, Error::Schema { .. }), "{msg}");
        for part in [t, "`id`", shown] {
            assert!(msg.contains(part), "{msg:?} should name {part:?}");
        }
        if t == "nd" {
            assert!(msg.contains("non-deterministic"), "{msg}");
        }
    }

    let lite = sqlite_db().await;
    lite_exec(&lite, "CREATE TABLE r (id REAL PRIMARY KEY, v TEXT)").await;
    let err = SqlSource::builder(lite, "r")
        .build()
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("`r`") && err.contains("`id`") && err.contains("REAL"),
        "{err}"
    );
}

#[tokio::test]
async fn sqlite_nocase_and_rtrim_keys_read_one_row_under_every_spelling() {
    let lite = sqlite_db().await;
    lite_exec(
        &lite,
        "CREATE TABLE nc (id TEXT PRIMARY KEY COLLATE NOCASE, name TEXT)",
    )
    .await;
    lite_exec(
        &lite,
        "CREATE TABLE rt (id TEXT PRIMARY KEY COLLATE RTRIM, name TEXT)",
    )
    .await;
    lite_exec(&lite, "INSERT INTO nc VALUES ('Alice', 'one')").await;
    lite_exec(&lite, "INSERT INTO rt VALUES ('ab', 'one')").await;
    let nc = SqlSource::builder(lite.clone(), "nc")
        .build()
        .await
        .expect("nc");
    let rt = SqlSource::builder(lite.clone(), "rt")
        .build()
        .await
        .expect("rt");
    assert_eq!(nc.canonical_id("ALICE").expect("id"), "alice");
    assert_eq!(rt.canonical_id("ab  ").expect("id"), "ab");
    for s in ["alice", "ALICE", "Alice"] {
        assert!(nc.load_json(s).await.expect("load").is_some(), "{s}");
    }
    assert!(rt.load_json("ab   ").await.expect("load").is_some());
    Source::<Value>::store(&nc, "ALICE", &json!({"name": "two"}))
        .await
        .expect("a write under another spelling");
    Source::<Value>::store(&rt, "ab ", &json!({"name": "two"}))
        .await
        .expect("a write under a padded spelling");
}

/// Ids and values the column cannot hold: refused before any SQL, so the
/// table is unchanged.
#[tokio::test]
async fn ids_and_values_beyond_the_columns_are_refused_before_any_sql() {
    let (db, schema) = pg_schema("keys_val").await;
    let table = format!("{schema}.v");
    exec(
        &db,
        &format!(
            "CREATE TABLE {table} (id smallint PRIMARY KEY, n integer, s varchar(3), t text, j jsonb)"
        ),
    )
    .await;
    let source = pg_source(&table).await.expect("source");
    let cols = source.columns();
    assert_eq!(cols[0].int_range(), Some((-32768, 32767)));
    assert_eq!(
        cols[1].int_range(),
        Some((i32::MIN.into(), i32::MAX.into()))
    );
    assert_eq!(cols[2].max_chars(), Some(3));
    assert_eq!(cols[3].max_chars(), None);

    for id in ["40000", "-32769", "99999999999999999999"] {
        assert!(
            matches!(source.canonical_id(id), Err(Error::InvalidId { .. })),
            "{id}"
        );
        assert!(matches!(
            source.load_json(id).await,
            Err(Error::InvalidId { .. })
        ));
    }
    for bad in [
        json!({"n": 2_147_483_648_i64}),
        json!({"n": -2_147_483_649_i64}),
        json!({"s": "abcd"}),
        json!({"t": "a\u{0}b"}),
        json!({"j": {"k": ["x\u{0}"]}}),
    ] {
        let err = Source::<Value>::store(&source, "1", &bad)
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::InvalidRow { .. }), "{bad}: {err}");
    }
    // Characters, not bytes.
    Source::<Value>::store(&source, "1", &json!({"s": "äöü", "n": i32::MAX}))
        .await
        .expect("three characters fit varchar(3)");
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(rows, 1, "only the valid row was written");

    let text = format!("{schema}.tx");
    exec(&db, &format!("CREATE TABLE {text} (id text PRIMARY KEY)")).await;
    let tx = pg_source(&text).await.expect("source");
    assert!(matches!(
        tx.load_json("a\u{0}b").await,
        Err(Error::InvalidId { .. })
    ));
}

/// The rule for absent columns: they keep their stored value, with or
/// without a default; a new row gets the default (NULL without one).
async fn absent_columns_keep_their_stored_value(source: SqlSource) {
    let put = |id: &'static str, row: Value| {
        let source = source.clone();
        async move {
            Source::<Value>::store(&source, id, &row)
                .await
                .expect("store")
        }
    };
    let created = put("1", json!({"req": "r"})).await;
    assert_eq!(created["d"], json!(7), "a new row takes the default");
    assert_eq!(
        created["n"],
        Value::Null,
        "a new row: NULL without a default"
    );
    put("1", json!({"req": "r", "d": 8, "n": "x"})).await;
    let kept = put("1", json!({"req": "s"})).await;
    assert_eq!(
        kept["d"],
        json!(8),
        "a column with a default keeps its value"
    );
    assert_eq!(
        kept["n"],
        json!("x"),
        "a column without one keeps its value"
    );
    assert_eq!(kept["req"], json!("s"));
}

#[tokio::test]
async fn absent_columns_keep_their_stored_value_on_postgres_and_sqlite() {
    let (db, schema) = pg_schema("keys_put").await;
    let table = format!("{schema}.p");
    exec(
        &db,
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, req text NOT NULL, d integer DEFAULT 7, n text)"
        ),
    )
    .await;
    absent_columns_keep_their_stored_value(pg_source(&table).await.expect("pg")).await;

    let lite = sqlite_db().await;
    lite_exec(
        &lite,
        "CREATE TABLE p (id INTEGER PRIMARY KEY, req TEXT NOT NULL, d INTEGER DEFAULT 7, n TEXT)",
    )
    .await;
    absent_columns_keep_their_stored_value(
        SqlSource::builder(lite, "p").build().await.expect("lite"),
    )
    .await;
}

#[tokio::test]
async fn identity_columns_other_than_the_key_are_never_written() {
    let (db, schema) = pg_schema("keys_identity").await;
    let table = format!("{schema}.ident");
    exec(
        &db,
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, name text NOT NULL,
               a bigint GENERATED ALWAYS AS IDENTITY,
               b bigint GENERATED BY DEFAULT AS IDENTITY (START WITH 100))"
        ),
    )
    .await;
    let source = pg_source(&table).await.expect("pg");
    let stored = Source::<Value>::store(&source, "1", &json!({"name": "n"}))
        .await
        .expect("a row without identity values is stored");
    assert_eq!(stored["a"], json!(1), "numbered by the database");
    assert_eq!(stored["b"], json!(100), "numbered by the database");
    for column in ["a", "b"] {
        let refused = Source::<Value>::store(&source, "1", &json!({"name": "m", column: 7})).await;
        assert!(
            matches!(&refused, Err(Error::InvalidRow { reason, .. }) if reason.contains("generated by the database")),
            "a value for identity column {column} is refused, got {refused:?}"
        );
    }
    let row: (String, i64, i64) =
        sqlx::query_as(&format!("SELECT name, a, b FROM {table} WHERE id = 1"))
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(row, ("n".to_owned(), 1, 100), "nothing refused was written");
}
