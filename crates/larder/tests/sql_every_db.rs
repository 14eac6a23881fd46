//! One SQL source suite, every database: each body below runs against
//! SQLite (a temporary file), PostgreSQL (`LARDER_TEST_PG_URL`, a schema of
//! its own) and MariaDB (`LARDER_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`, a database of its own), over a table
//! with int, bigint, decimal, boolean, text, JSON and datetime columns and
//! NULLs. Rows must look the same from every database.
//!
//! MariaDB-only behaviour (key collations, binary columns, `cdc`, the
//! server check) is at the end.

use larder_test_support as support;

use larder::source::{Source, SqlPool, SqlSource};
use larder::{
    Cache, CacheWrite, Error, ErrorKind, Outcome, RawJson, SchemaPart, WarmOptions, WritePolicy,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::PathBuf;

use support::mysql_url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pg,
    Lite,
    Maria,
}

/// One isolated database: a PostgreSQL schema, a SQLite file or a MariaDB
/// database, dropped by [`Db::close`].
struct Db {
    kind: Kind,
    pool: SqlPool,
    /// The schema or database name, or the SQLite file.
    place: String,
}

impl Db {
    async fn open(kind: Kind) -> Db {
        match kind {
            Kind::Pg => {
                let pool = SqlPool::connect(&support::pg_url(), 2)
                    .await
                    .expect("PostgreSQL");
                let db = Db {
                    kind,
                    pool,
                    place: support::unique("every"),
                };
                db.exec(&format!("CREATE SCHEMA \"{}\"", db.place)).await;
                db
            }
            Kind::Lite => {
                let path = std::env::temp_dir().join(format!("{}.db", support::unique("every")));
                let pool = SqlPool::connect(&format!("sqlite://{}", path.display()), 2)
                    .await
                    .expect("SQLite");
                Db {
                    kind,
                    pool,
                    place: path.display().to_string(),
                }
            }
            Kind::Maria => {
                let pool = SqlPool::connect(&mysql_url(), 2).await.expect("MariaDB");
                let db = Db {
                    kind,
                    pool,
                    place: support::unique("every"),
                };
                db.exec(&format!("CREATE DATABASE `{}`", db.place)).await;
                db
            }
        }
    }

    /// A table name as the source builder takes it.
    fn t(&self, name: &str) -> String {
        match self.kind {
            Kind::Pg | Kind::Maria => format!("{}.{name}", self.place),
            Kind::Lite => name.to_owned(),
        }
    }

    /// Runs one statement; `@` stands for the schema or database prefix.
    async fn exec(&self, sql: &str) {
        let sql = sql.replace(
            '@',
            &match self.kind {
                Kind::Pg => format!("\"{}\".", self.place),
                Kind::Maria => format!("`{}`.", self.place),
                Kind::Lite => String::new(),
            },
        );
        match &self.pool {
            SqlPool::Postgres(p) => sqlx::query(&sql).execute(p).await.map(drop),
            SqlPool::Sqlite(p) => sqlx::query(&sql).execute(p).await.map(drop),
            SqlPool::MySql(p) => sqlx::query(&sql).execute(p).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn count(&self, table: &str) -> i64 {
        let sql = match self.kind {
            Kind::Pg => format!("SELECT count(*) FROM \"{}\".\"{table}\"", self.place),
            Kind::Maria => format!("SELECT count(*) FROM `{}`.`{table}`", self.place),
            Kind::Lite => format!("SELECT count(*) FROM \"{table}\""),
        };
        match &self.pool {
            SqlPool::Postgres(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
            SqlPool::Sqlite(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
            SqlPool::MySql(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
        }
        .expect("count")
    }

    async fn close(self) {
        match &self.pool {
            SqlPool::Postgres(p) => {
                sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", self.place))
                    .execute(p)
                    .await
                    .expect("drop schema");
                p.close().await;
            }
            SqlPool::MySql(p) => {
                sqlx::query(&format!("DROP DATABASE `{}`", self.place))
                    .execute(p)
                    .await
                    .expect("drop database");
                p.close().await;
            }
            SqlPool::Sqlite(p) => {
                p.close().await;
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", self.place)));
                }
            }
        }
    }

    /// The `items` table: a column of each type the suite covers, in each
    /// database's spelling.
    async fn items(&self) -> SqlSource {
        let (int, bigint, decimal, boolean, text, json, datetime, varchar) = match self.kind {
            Kind::Pg => (
                "int4",
                "int8",
                "numeric(10, 2)",
                "bool",
                "text",
                "jsonb",
                "timestamp",
                "varchar(20)",
            ),
            Kind::Lite => (
                "INTEGER",
                "BIGINT",
                "NUMERIC",
                "BOOLEAN",
                "TEXT",
                "JSON",
                "DATETIME",
                "VARCHAR(20)",
            ),
            Kind::Maria => (
                "int",
                "bigint",
                "decimal(10, 2)",
                "boolean",
                "text",
                "json",
                "datetime",
                "varchar(20)",
            ),
        };
        self.exec(&format!(
            "CREATE TABLE @items (
                id {int} PRIMARY KEY,
                n {int},
                big {bigint},
                price {decimal},
                flag {boolean} NOT NULL DEFAULT TRUE,
                name {varchar} NOT NULL,
                note {text},
                meta {json},
                at {datetime},
                label {text} DEFAULT 'fresh'
            )"
        ))
        .await;
        SqlSource::builder(self.pool.clone(), &self.t("items"))
            .entity("items")
            .build()
            .await
            .expect("build the items source")
    }
}

/// Generates a test per database from one async body.
macro_rules! every_db {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let db = super::Db::open(super::Kind::Lite).await;
                super::$name(&db).await;
                db.close().await;
            }

            #[tokio::test]
            async fn postgres() {
                let db = super::Db::open(super::Kind::Pg).await;
                super::$name(&db).await;
                db.close().await;
            }

            #[tokio::test]
            async fn mariadb() {
                let db = super::Db::open(super::Kind::Maria).await;
                super::$name(&db).await;
                db.close().await;
            }
        }
    )*};
}

every_db!(
    rows_read_alike_by_type,
    write_through_put_patch_delete,
    validation_refuses_before_any_sql,
    cache_patterns_over_the_source,
    writes_need_a_unique_key,
    increments_add_in_the_database,
    concurrent_increments_all_count_and_the_cache_converges,
);

fn obj(v: Value) -> RawJson {
    RawJson::from_bytes(v.to_string()).expect("json")
}

fn value(raw: &RawJson) -> Value {
    raw.to_value().expect("json")
}

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// Compares a row with what is expected, decimals as floats.
fn assert_row(got: &Value, want: &Value) {
    let (g, w) = (
        got.as_object().expect("row"),
        want.as_object().expect("want"),
    );
    assert_eq!(
        g.keys().collect::<Vec<_>>(),
        w.keys().collect::<Vec<_>>(),
        "{got}"
    );
    for (k, wv) in w {
        let gv = &g[k];
        if k == "price" && !wv.is_null() {
            assert_eq!(gv.as_f64(), wv.as_f64(), "{k} in {got}");
        } else {
            assert_eq!(gv, wv, "{k} in {got}");
        }
    }
}

const ROW_1: &str = "INSERT INTO @items (id, n, big, price, flag, name, note, meta, at)
     VALUES (1, 42, 9007199254740993, 12.34, FALSE, 'Zoë \"q\"', NULL,
             '{\"a\": [1, 2], \"b\": {\"c\": null}}', '2024-01-02T03:04:05')";

fn row_1() -> Value {
    json!({
        "id": 1, "n": 42, "big": 9_007_199_254_740_993_i64, "price": 12.34, "flag": false,
        "name": "Zoë \"q\"", "note": null, "meta": {"a": [1, 2], "b": {"c": null}},
        "at": "2024-01-02T03:04:05", "label": "fresh"
    })
}

async fn rows_read_alike_by_type(db: &Db) {
    let src = db.items().await;
    db.exec(ROW_1).await;
    db.exec("INSERT INTO @items (id, name) VALUES (2, 'two')")
        .await;

    let one = value(&src.load_json("1").await.expect("load").expect("row 1"));
    assert_row(&one, &row_1());
    assert_eq!(one["big"].as_i64(), Some(9_007_199_254_740_993));
    let two = value(&src.load_json("002").await.expect("load").expect("row 2"));
    assert_row(
        &two,
        &json!({"id": 2, "n": null, "big": null, "price": null, "flag": true, "name": "two",
                "note": null, "meta": null, "at": null, "label": "fresh"}),
    );
    assert!(src.load_json("3").await.expect("load").is_none());

    let ids: Vec<String> = ["1", "2", "3", "01"].map(String::from).to_vec();
    let many = src.load_many_json(&ids).await.expect("multi-get");
    assert_eq!(many.len(), 2);
    assert_row(&value(&many["1"]), &row_1());
    assert_eq!(value(&many["2"])["name"], "two");

    let page = src.load_page_json(None, 10).await.expect("page");
    assert_eq!(
        page.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["1", "2"]
    );
    let after = src.load_page_json(Some("1"), 10).await.expect("page");
    assert_eq!(after.len(), 1);
}

async fn write_through_put_patch_delete(db: &Db) {
    let src = db.items().await;
    db.exec(ROW_1).await;

    // PUT of a new row: the given columns, defaults for the rest.
    let put = json!({"name": "new", "n": -7, "big": 5_000_000_000_i64, "price": 3.5,
                     "flag": true, "meta": {"x": ["y", 1, true]}, "at": "2020-05-06T07:08:09"});
    let stored = src
        .store_many_json(&[("5".into(), obj(put))])
        .await
        .expect("put");
    assert_eq!(stored[0].0, "5");
    let want = json!({"id": 5, "n": -7, "big": 5_000_000_000_i64, "price": 3.5, "flag": true,
                      "name": "new", "note": null, "meta": {"x": ["y", 1, true]},
                      "at": "2020-05-06T07:08:09", "label": "fresh"});
    assert_row(&value(&stored[0].1), &want);
    assert_row(
        &value(&src.load_json("5").await.expect("load").expect("row")),
        &want,
    );

    // PUT of an existing row: absent columns keep their stored value
    // (`name` is NOT NULL without a default: it comes from the stored row).
    let stored = src
        .store_many_json(&[("1".into(), obj(json!({"note": "hello", "label": null})))])
        .await
        .expect("put existing");
    let mut want = row_1();
    want["note"] = json!("hello");
    want["label"] = Value::Null;
    assert_row(&value(&stored[0].1), &want);

    // A JSON string and JSON null in a JSON column.
    let stored = src
        .store_many_json(&[("1".into(), obj(json!({"meta": "just text"})))])
        .await
        .expect("put json string");
    assert_eq!(value(&stored[0].1)["meta"], "just text");

    // PATCH: only the given columns; the row as stored comes back.
    let patched = src
        .patch_json(
            "1",
            &fields(json!({"flag": true, "price": 1.25, "at": "2021-01-01T00:00:00", "meta": [1]})),
        )
        .await
        .expect("patch")
        .expect("row 1 exists");
    let p = value(&patched);
    assert_eq!(p["flag"], true);
    assert_eq!(p["price"].as_f64(), Some(1.25));
    assert_eq!(p["at"], "2021-01-01T00:00:00");
    assert_eq!(p["meta"], json!([1]));
    assert_eq!(p["note"], "hello", "untouched column kept");
    assert_eq!(p["name"], "Zoë \"q\"");
    let patched = src
        .patch_json("1", &fields(json!({"note": null})))
        .await
        .expect("patch null")
        .expect("row");
    assert_eq!(value(&patched)["note"], Value::Null);
    assert!(src
        .patch_json("99", &fields(json!({"note": "x"})))
        .await
        .expect("patch of a missing row")
        .is_none());
    assert_eq!(
        db.count("items").await,
        2,
        "a patch of a missing id inserts nothing"
    );

    // Typed, through the Source trait.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Named {
        id: i64,
        name: String,
    }
    let typed: Named = Source::<Named>::store(
        &src,
        "6",
        &Named {
            id: 6,
            name: "six".into(),
        },
    )
    .await
    .expect("typed store");
    assert_eq!(typed.name, "six");

    // DELETE.
    assert!(src.delete_id("5").await.expect("delete"));
    assert!(!src.delete_id("5").await.expect("delete again"));
    assert!(src.load_json("5").await.expect("load").is_none());
    assert_eq!(db.count("items").await, 2);
}

fn assert_refused<T: std::fmt::Debug>(r: larder::Result<T>, column: &str) {
    match r {
        Err(e @ Error::InvalidRow { .. }) => {
            assert!(e.is_bad_input(), "{e}");
            assert!(e.to_string().contains(column), "{column}: {e}");
        }
        other => panic!("expected a refused row naming `{column}`, got {other:?}"),
    }
}

async fn validation_refuses_before_any_sql(db: &Db) {
    let src = db.items().await;
    db.exec(ROW_1).await;
    let good = ("2".to_owned(), obj(json!({"name": "ok"})));
    let mut cases = vec![
        (json!({"name": "x", "nope": 1}), "nope"),
        (json!({"name": "x\u{0}y"}), "name"),
        (json!({"name": "x", "note": "a\u{0}"}), "note"),
        (json!({"name": null}), "name"),
        (json!({"name": "x", "flag": null}), "flag"),
        (json!({"name": "x", "n": "12"}), "n"),
        (json!({"name": "x", "n": 1.5}), "n"),
        (json!({"name": "x", "price": "cheap"}), "price"),
        (json!({"name": "x", "at": 5}), "at"),
    ];
    if db.kind != Kind::Lite {
        // SQLite stores 64-bit integers whatever the declared type, and does
        // not enforce declared lengths.
        cases.push((json!({"name": "x", "n": 2_147_483_648_i64}), "n"));
        cases.push((json!({"name": "x".repeat(21)}), "name"));
    }
    for (row, column) in cases {
        let r = src
            .store_many_json(&[good.clone(), ("3".into(), obj(row.clone()))])
            .await;
        assert_refused(r, column);
        let patch = src.patch_json("1", row.as_object().expect("object")).await;
        assert_refused(patch, column);
    }
    assert!(matches!(
        src.store_many_json(&[("2".into(), obj(json!({"id": 3, "name": "x"})))])
            .await,
        Err(Error::InvalidId { .. })
    ));
    assert_eq!(db.count("items").await, 1, "nothing was written");
    assert_row(
        &value(&src.load_json("1").await.expect("load").expect("row")),
        &row_1(),
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: i64,
    name: String,
    n: Option<i64>,
    flag: bool,
    meta: Option<Value>,
    at: Option<String>,
}

async fn cache_on(src: &SqlSource, policy: WritePolicy, prefix: &str) -> Cache<i64, Item> {
    Cache::builder()
        .prefix(prefix)
        .entity("items")
        .shards(4)
        .store(support::redis_store().await)
        .source(src.clone())
        .write_policy(policy)
        .build()
        .await
        .expect("cache")
}

async fn cache_patterns_over_the_source(db: &Db) {
    let _ = db.items().await;
    let src = SqlSource::builder(db.pool.clone(), &db.t("items"))
        .columns(["id", "name", "n", "flag", "meta", "at"])
        .entity("items")
        .build()
        .await
        .expect("a source of some columns");
    db.exec(ROW_1).await;
    let prefix = support::unique("every");
    let through = cache_on(&src, WritePolicy::Through, &prefix).await;

    // Read-through: a miss loads, the next read hits.
    let first = through.get(&1).await.expect("get");
    assert_eq!(first.outcome, Outcome::Miss);
    assert_eq!(first.value.as_ref().map(|v| v.n), Some(Some(42)));
    assert_eq!(through.get(&1).await.expect("get").outcome, Outcome::Hit);
    let many = through.get_many(&[&1, &2]).await.expect("get_many");
    assert_eq!(
        many[0].value.as_ref().map(|v| v.name.as_str()),
        Some("Zoë \"q\"")
    );
    assert!(many[1].value.is_none());

    // Write-through: the stored row is cached.
    let item = Item {
        id: 2,
        name: "two".into(),
        n: Some(2),
        flag: true,
        meta: Some(json!({"k": [true]})),
        at: Some("2022-02-02T02:02:02".into()),
    };
    let written = through.put(&2, &item).await.expect("put");
    assert_eq!(written.cache, CacheWrite::Updated);
    assert_eq!(*written.value, item);
    let read = through.get(&2).await.expect("get");
    assert_eq!(read.outcome, Outcome::Hit);
    assert_eq!(read.value.as_deref(), Some(&item));
    let patched = through
        .patch(&2, &fields(json!({"n": 3})))
        .await
        .expect("patch")
        .expect("row");
    assert_eq!(patched.value.n, Some(3));
    assert_eq!(
        through.get(&2).await.expect("get").value.map(|v| v.n),
        Some(Some(3))
    );

    // Write-around: the source is written, the entry invalidated.
    let around = cache_on(&src, WritePolicy::Around, &prefix).await;
    let mut changed = item.clone();
    changed.name = "around".into();
    let written = around.put(&2, &changed).await.expect("put around");
    assert_eq!(written.cache, CacheWrite::Invalidated);
    let read = through.get(&2).await.expect("get");
    assert_eq!(read.outcome, Outcome::Miss);
    assert_eq!(read.value.map(|v| v.name.clone()), Some("around".into()));

    // Delete: the row and the entry.
    assert!(through.delete(&2).await.expect("delete"));
    assert!(through.get(&2).await.expect("get").value.is_none());
    assert_eq!(db.count("items").await, 1);

    // Pre-warming: every row into the cache.
    through.invalidate(&1).await.expect("invalidate");
    let warmed = through
        .warm_all(WarmOptions::default().batch(10), |_| {})
        .await
        .expect("warm");
    assert_eq!(warmed.written, 1);
    assert_eq!(through.get(&1).await.expect("get").outcome, Outcome::Hit);
}

fn num(v: Value) -> serde_json::Number {
    match v {
        Value::Number(n) => n,
        other => panic!("not a number: {other}"),
    }
}

async fn increments_add_in_the_database(db: &Db) {
    let src = db.items().await;
    db.exec(ROW_1).await;
    db.exec("INSERT INTO @items (id, name) VALUES (2, 'two')")
        .await;
    let incr = |id: &'static str, column: &'static str, by: Value| {
        let src = src.clone();
        async move { src.incr_json(id, column, &num(by)).await }
    };

    let row = value(
        &incr("1", "n", json!(1))
            .await
            .expect("incr")
            .expect("row 1"),
    );
    assert_eq!(row["n"], 43, "the returned row carries the sum: {row}");
    let row = value(
        &incr("1", "n", json!(-50))
            .await
            .expect("incr")
            .expect("row"),
    );
    assert_eq!(row["n"], -7);
    // Beyond 2^53: the database adds exactly, no double in between.
    let row = value(
        &incr("1", "big", json!(1))
            .await
            .expect("incr")
            .expect("row"),
    );
    assert_eq!(row["big"].as_i64(), Some(9_007_199_254_740_994), "{row}");
    let row = value(
        &incr("1", "price", json!(0.01))
            .await
            .expect("incr")
            .expect("row"),
    );
    assert_eq!(row["price"].as_f64(), Some(12.35), "{row}");
    // NULL counts as 0.
    let row = value(
        &incr("2", "n", json!(5))
            .await
            .expect("incr")
            .expect("row 2"),
    );
    assert_eq!(row["n"], 5, "{row}");
    // The rest of the row is untouched.
    assert_eq!(row["name"], "two");
    let one = value(&src.load_json("1").await.expect("load").expect("row 1"));
    assert_eq!(
        (one["n"].clone(), one["name"].clone()),
        (json!(-7), json!("Zoë \"q\""))
    );

    // No row: nothing written, no row created.
    assert!(incr("9", "n", json!(1)).await.expect("incr").is_none());
    assert_eq!(db.count("items").await, 2);

    // Refused before any SQL: unknown, non-numeric, key and generated-free
    // columns; a fraction for an integer; more places than the scale.
    for (column, by) in [
        ("nope", json!(1)),
        ("name", json!(1)),
        ("flag", json!(1)),
        ("meta", json!(1)),
        ("id", json!(1)),
        ("n", json!(1.5)),
    ] {
        let err = incr("1", column, by.clone())
            .await
            .expect_err(&format!("{column} by {by}"));
        assert_eq!(err.kind(), ErrorKind::InvalidRow, "{column} by {by}: {err}");
    }
    if db.kind != Kind::Lite {
        // numeric(10, 2): two places at most. (SQLite's NUMERIC has no scale.)
        let err = incr("1", "price", json!(0.001))
            .await
            .expect_err("3 places");
        assert_eq!(err.kind(), ErrorKind::InvalidRow, "{err}");
        assert!(err.to_string().contains("2 decimal places"), "{err}");
        // A sum beyond the column's range: the database refuses, nothing changes.
        let err = incr("1", "n", json!(i64::MAX)).await.expect_err("overflow");
        assert_eq!(err.kind(), ErrorKind::InvalidValue, "{err}");
    }
    let err = incr("x", "n", json!(1)).await.expect_err("bad id");
    assert_eq!(err.kind(), ErrorKind::InvalidId);
    let one = value(&src.load_json("1").await.expect("load").expect("row 1"));
    assert_eq!(one["n"], -7, "refused increments changed nothing: {one}");
    assert_eq!(one["price"].as_f64(), Some(12.35));

    // Through a write-through cache: the returned row is cached.
    let prefix = support::unique("incr");
    let cache = cache_on(&src, WritePolicy::Through, &prefix).await;
    assert_eq!(cache.get(&1).await.expect("get").outcome, Outcome::Miss);
    let written = cache
        .incr(&1, "n", &num(json!(10)))
        .await
        .expect("incr")
        .expect("row");
    assert_eq!(written.cache, CacheWrite::Updated);
    assert_eq!(written.value.n, Some(3));
    let read = cache.get(&1).await.expect("get");
    assert_eq!(
        (read.outcome, read.value.and_then(|v| v.n)),
        (Outcome::Hit, Some(3))
    );
    assert!(cache
        .incr(&9, "n", &num(json!(1)))
        .await
        .expect("incr")
        .is_none());
    let err = cache
        .incr(&1, "name", &num(json!(1)))
        .await
        .expect_err("text column");
    assert!(err.is_bad_input(), "{err}");

    // A read-only entity refuses.
    let read_only = cache_on(&src, WritePolicy::ReadOnly, &prefix).await;
    let err = read_only
        .incr(&1, "n", &num(json!(1)))
        .await
        .expect_err("read-only");
    assert_eq!(err.kind(), ErrorKind::ReadOnly, "{err}");
}

/// Two instances (caches with their own connections) × 4 tasks increment
/// three rows while reading and invalidating them: every increment counts
/// in the database, and once the writers stop every cached row equals the
/// database's (no increment's stale row was cached over a newer one).
async fn concurrent_increments_all_count_and_the_cache_converges(db: &Db) {
    let src = db.items().await;
    for id in 1..=3 {
        db.exec(&format!(
            "INSERT INTO @items (id, name, n) VALUES ({id}, 'r', 0)"
        ))
        .await;
    }
    let prefix = support::unique("incr");
    let caches = [
        cache_on(&src, WritePolicy::Through, &prefix).await,
        cache_on(&src, WritePolicy::Through, &prefix).await,
    ];
    let rounds = 3;
    let per_task = 25i64;
    for _ in 0..rounds {
        let tasks: Vec<_> = (0..8usize)
            .map(|t| {
                let cache = caches[t % 2].clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let id = 1 + (i + t as i64) % 3;
                        cache
                            .incr(&id, "n", &serde_json::Number::from(1))
                            .await
                            .expect("incr")
                            .expect("row");
                        match i % 5 {
                            0 => drop(cache.get(&id).await.expect("get")),
                            3 => cache.invalidate(&id).await.expect("invalidate"),
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
    }
    let mut total = 0;
    for id in 1..=3i64 {
        let stored = value(
            &src.load_json(&id.to_string())
                .await
                .expect("load")
                .expect("row"),
        );
        let n = stored["n"].as_i64().expect("n");
        total += n;
        for cache in &caches {
            let cached = cache.get(&id).await.expect("get");
            assert_eq!(
                cached.value.and_then(|v| v.n),
                Some(n),
                "row {id}: the cache holds the database's count"
            );
        }
    }
    assert_eq!(total, rounds * 8 * per_task, "every increment counted once");
}

async fn writes_need_a_unique_key(db: &Db) {
    db.exec("CREATE TABLE @loose (id int NOT NULL, name text)")
        .await;
    let src = SqlSource::builder(db.pool.clone(), &db.t("loose"))
        .build()
        .await
        .expect("source");
    assert!(!src.is_writable());
    match src
        .store_many_json(&[("1".into(), obj(json!({"name": "x"})))])
        .await
    {
        Err(e @ Error::ReadOnly { .. }) => assert!(e.to_string().contains("unique index"), "{e}"),
        other => panic!("{other:?}"),
    }
    db.exec("CREATE VIEW @loose_view AS SELECT id, name FROM @loose")
        .await;
    let view = SqlSource::builder(db.pool.clone(), &db.t("loose_view"))
        .build()
        .await
        .expect("view");
    assert!(!view.is_writable());
}

// ------------------------------------------------------- MariaDB only ----

async fn maria() -> Db {
    Db::open(Kind::Maria).await
}

#[tokio::test]
async fn mariadb_text_keys_need_a_binary_collation() {
    let db = maria().await;
    db.exec("CREATE TABLE @ci (code varchar(16) PRIMARY KEY, v int)")
        .await;
    let e = SqlSource::builder(db.pool.clone(), &db.t("ci"))
        .key("code")
        .build()
        .await
        .expect_err("a _ci key is refused");
    let text = e.to_string();
    assert!(
        matches!(&e, Error::Schema { part: SchemaPart::Key, column: Some(c), .. } if c == "code"),
        "{e:?}"
    );
    assert!(text.contains("`code`"), "names the column: {text}");
    assert!(
        text.contains("utf8mb4_general_ci"),
        "names the collation: {text}"
    );
    assert!(text.contains("_bin"), "says what to do: {text}");

    db.exec("CREATE TABLE @bin (code varchar(16) COLLATE utf8mb4_bin PRIMARY KEY, v int)")
        .await;
    let src = SqlSource::builder(db.pool.clone(), &db.t("bin"))
        .key("code")
        .build()
        .await
        .expect("a _bin key is accepted");
    src.store_many_json(&[
        ("Alice".into(), obj(json!({"v": 1}))),
        ("alice".into(), obj(json!({"v": 2}))),
    ])
    .await
    .expect("two keys that differ in case are two rows");
    assert_eq!(db.count("bin").await, 2);
    assert_eq!(
        value(&src.load_json("Alice").await.expect("load").expect("row"))["v"],
        1
    );
    // utf8mb4_bin pads with spaces: trailing blanks are not part of an id.
    assert_eq!(src.canonical_id("alice  ").expect("id"), "alice");
    assert!(matches!(
        src.canonical_id(&"x".repeat(17)),
        Err(Error::InvalidId { .. })
    ));
    db.close().await;
}

#[tokio::test]
async fn mariadb_binary_columns_are_refused_at_build() {
    let db = maria().await;
    db.exec("CREATE TABLE @blobs (id int PRIMARY KEY, data blob, name text)")
        .await;
    let e = SqlSource::builder(db.pool.clone(), &db.t("blobs"))
        .build()
        .await
        .expect_err("a binary column is refused");
    assert!(e.to_string().contains("`data`"), "{e}");
    let src = SqlSource::builder(db.pool.clone(), &db.t("blobs"))
        .columns(["id", "name"])
        .build()
        .await
        .expect("left out, the table is served");
    assert!(src.is_writable());
    db.close().await;
}

#[tokio::test]
async fn mariadb_timestamps_are_utc_and_offsets_convert() {
    let db = maria().await;
    db.exec("CREATE TABLE @times (id int PRIMARY KEY, ts timestamp(3) NULL, dt datetime NULL)")
        .await;
    let src = SqlSource::builder(db.pool.clone(), &db.t("times"))
        .build()
        .await
        .expect("source");
    let stored = src
        .store_many_json(&[(
            "1".into(),
            obj(json!({"ts": "2024-03-04T05:06:07.250+02:00", "dt": "2024-03-04T05:06:07Z"})),
        )])
        .await
        .expect("store");
    let row = value(&stored[0].1);
    assert_eq!(row["ts"], "2024-03-04T03:06:07.250000");
    assert_eq!(row["dt"], "2024-03-04T05:06:07");
    db.close().await;
}

#[tokio::test]
async fn mariadb_has_no_change_notifications() {
    let db = maria().await;
    let src = db.items().await;
    let e = src
        .install_change_triggers()
        .await
        .expect_err("cdc is refused on MariaDB");
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("cdc") && text.contains("invalidate"),
        "{text}"
    );
    db.close().await;
}

#[tokio::test]
async fn mariadb_other_unique_index_conflicts_write_nothing() {
    let db = maria().await;
    db.exec("CREATE TABLE @people (id int PRIMARY KEY, email varchar(40) NOT NULL UNIQUE)")
        .await;
    let src = SqlSource::builder(db.pool.clone(), &db.t("people"))
        .build()
        .await
        .expect("source");
    src.store_many_json(&[("1".into(), obj(json!({"email": "a@x"})))])
        .await
        .expect("first");
    let e = src
        .store_many_json(&[("2".into(), obj(json!({"email": "a@x"})))])
        .await
        .expect_err("the email belongs to row 1");
    match &e {
        Error::Source { code, .. } => assert_eq!(code.as_deref(), Some("1062"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Two new rows of one batch that collide with each other.
    let e = src
        .store_many_json(&[
            ("3".into(), obj(json!({"email": "b@x"}))),
            ("4".into(), obj(json!({"email": "b@x"}))),
        ])
        .await
        .expect_err("rows 3 and 4 share an email");
    assert!(matches!(e, Error::Source { .. }), "{e:?}");
    assert_eq!(db.count("people").await, 1);
    assert_eq!(
        value(&src.load_json("1").await.expect("load").expect("row"))["email"],
        "a@x"
    );
    db.close().await;
}

#[tokio::test]
async fn mariadb_data_errors_carry_the_error_number() {
    let db = maria().await;
    db.exec("CREATE TABLE @checked (id int PRIMARY KEY, n int CHECK (n >= 0))")
        .await;
    let src = SqlSource::builder(db.pool.clone(), &db.t("checked"))
        .build()
        .await
        .expect("source");
    match src
        .store_many_json(&[("1".into(), obj(json!({"n": -1})))])
        .await
    {
        Err(Error::Source { code, .. }) => assert_eq!(code.as_deref(), Some("4025")),
        other => panic!("{other:?}"),
    }
    db.close().await;
}

#[tokio::test]
async fn mysql_urls_reach_mariadb_and_other_schemes_are_refused() {
    let pool = SqlPool::connect(&mysql_url().replacen("mysql://", "mariadb://", 1), 1)
        .await
        .expect("mariadb:// is an alias");
    assert!(matches!(pool, SqlPool::MySql(_)));
    assert!(matches!(
        SqlPool::connect("oracle://localhost/x", 1).await,
        Err(Error::Config(_))
    ));
    let unreachable = SqlPool::connect("mysql://root@127.0.0.1:1/test", 1).await;
    assert!(
        matches!(unreachable, Err(Error::SourceUnavailable { .. })),
        "{unreachable:?}"
    );
}
