//! The SQL source against real databases: PostgreSQL (`LARDER_TEST_PG_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`), each test in its own
//! schema, and SQLite, each test in its own temporary file.

use larder::source::{Source, SqlPool, SqlSource};
use larder::{Error, RawJson};
use larder_test_support as support;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use support::unique;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pg,
    Lite,
}

/// One isolated database: a fresh PostgreSQL schema or a fresh SQLite file.
struct Db {
    kind: Kind,
    pool: SqlPool,
    /// The PostgreSQL schema, or the SQLite file.
    place: String,
}

impl Db {
    async fn pg() -> Db {
        let pool = SqlPool::connect(&support::pg_url(), 2)
            .await
            .expect("connect to PostgreSQL");
        let db = Db {
            kind: Kind::Pg,
            pool,
            place: unique("t"),
        };
        db.exec(&format!("CREATE SCHEMA \"{}\"", db.place)).await;
        db
    }

    async fn sqlite() -> Db {
        let path = std::env::temp_dir().join(format!("{}.db", unique("larder_sql")));
        let url = format!("sqlite://{}", path.display());
        let pool = SqlPool::connect(&url, 2).await.expect("open SQLite");
        Db {
            kind: Kind::Lite,
            pool,
            place: path.display().to_string(),
        }
    }

    /// A table name as the source builder takes it.
    fn t(&self, name: &str) -> String {
        match self.kind {
            Kind::Pg => format!("{}.{name}", self.place),
            Kind::Lite => name.to_owned(),
        }
    }

    /// Runs SQL (several statements allowed); `@` stands for the schema prefix.
    async fn exec(&self, sql: &str) {
        let prefix = match self.kind {
            Kind::Pg => format!("\"{}\".", self.place),
            Kind::Lite => String::new(),
        };
        let sql = sql.replace('@', &prefix);
        match &self.pool {
            SqlPool::Postgres(p) => sqlx::raw_sql(&sql).execute(p).await.map(|_| ()),
            SqlPool::Sqlite(p) => sqlx::raw_sql(&sql).execute(p).await.map(|_| ()),
            SqlPool::MySql(_) => unreachable!("MariaDB runs in tests/sql_every_db.rs"),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn count(&self, table: &str) -> i64 {
        let sql = match self.kind {
            Kind::Pg => format!("SELECT count(*) FROM \"{}\".\"{table}\"", self.place),
            Kind::Lite => format!("SELECT count(*) FROM \"{table}\""),
        };
        match &self.pool {
            SqlPool::Postgres(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
            SqlPool::Sqlite(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
            SqlPool::MySql(_) => unreachable!("MariaDB runs in tests/sql_every_db.rs"),
        }
        .expect("count")
    }

    async fn close(self) {
        match &self.pool {
            SqlPool::Postgres(p) => {
                sqlx::raw_sql(&format!("DROP SCHEMA \"{}\" CASCADE", self.place))
                    .execute(p)
                    .await
                    .expect("drop schema");
                p.close().await;
            }
            SqlPool::MySql(p) => p.close().await,
            SqlPool::Sqlite(p) => {
                p.close().await;
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", self.place)));
                }
            }
        }
    }

    /// The `users` table of most tests: a column of each common type.
    async fn users(&self) -> SqlSource {
        match self.kind {
            Kind::Pg => {
                self.exec(
                    "CREATE TABLE @users (
                        id int4 PRIMARY KEY,
                        name text NOT NULL,
                        age int4 CHECK (age >= 0),
                        big int8,
                        active bool NOT NULL DEFAULT true,
                        score float8,
                        price numeric(10, 2),
                        created timestamptz NOT NULL DEFAULT '2024-01-02T03:04:05Z',
                        meta jsonb,
                        note text,
                        touched text
                    );
                    CREATE FUNCTION @touch() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN NEW.touched := 'trigger:' || NEW.name; RETURN NEW; END $$;
                    CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON @users
                        FOR EACH ROW EXECUTE FUNCTION @touch();",
                )
                .await
            }
            Kind::Lite => {
                self.exec(
                    "CREATE TABLE users (
                        id INTEGER PRIMARY KEY,
                        name TEXT NOT NULL,
                        age INTEGER CHECK (age >= 0),
                        big BIGINT,
                        active BOOLEAN NOT NULL DEFAULT 1,
                        score REAL,
                        price NUMERIC,
                        created TEXT NOT NULL DEFAULT '2024-01-02T03:04:05Z',
                        meta JSON,
                        note TEXT,
                        touched TEXT
                    )",
                )
                .await
            }
        }
        SqlSource::builder(self.pool.clone(), &self.t("users"))
            .build()
            .await
            .expect("build users source")
    }
}

/// Generates a PostgreSQL and a SQLite test from one async body.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn postgres() {
                let db = super::Db::pg().await;
                super::$name(&db).await;
                db.close().await;
            }

            #[tokio::test]
            async fn sqlite() {
                let db = super::Db::sqlite().await;
                super::$name(&db).await;
                db.close().await;
            }
        }
    )*};
}

both!(
    load_one_and_many,
    column_types_survive_as_json,
    integer_ids_are_canonical,
    undeserializable_row_is_decode_error,
    store_many_upserts_and_returns_stored_rows,
    typed_store_and_remove,
    validation_refuses_before_any_sql,
    views_are_read_only,
    writes_need_a_unique_index_on_the_key,
    config_errors_name_what_is_wrong,
    pagination_visits_every_row_once,
    chosen_columns_only,
    data_errors_carry_their_code,
    patch_updates_only_the_given_columns,
    patch_of_a_missing_id_writes_nothing,
    patch_validation_leaves_the_row_unchanged,
    patches_of_different_columns_both_land,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: i64,
    name: String,
    age: Option<i64>,
}

fn obj(v: Value) -> RawJson {
    RawJson::from_bytes(v.to_string()).expect("json")
}

fn value(raw: &RawJson) -> Value {
    raw.to_value().expect("json")
}

async fn seed(db: &Db, ids: impl IntoIterator<Item = i64>) {
    for id in ids {
        db.exec(&format!(
            "INSERT INTO @users (id, name, age) VALUES ({id}, 'user{id}', {id})"
        ))
        .await;
    }
}

async fn load_one_and_many(db: &Db) {
    let src = db.users().await;
    seed(db, [1, 2, 3]).await;

    let one = src.load_json("2").await.expect("load").expect("row 2");
    assert_eq!(value(&one)["name"], "user2");
    assert!(src.load_json("99").await.expect("load").is_none());

    let typed: Option<User> = Source::<User>::load(&src, "1").await.expect("load");
    assert_eq!(
        typed,
        Some(User {
            id: 1,
            name: "user1".into(),
            age: Some(1)
        })
    );

    let ids: Vec<String> = ["1", "003", "99", "3"].map(String::from).to_vec();
    let many = src.load_many_json(&ids).await.expect("load_many");
    let mut keys: Vec<&String> = many.keys().collect();
    keys.sort();
    assert_eq!(keys, ["1", "3"]);
    assert_eq!(value(&many["3"])["name"], "user3");

    let typed: HashMap<String, User> = Source::<User>::load_many(&src, &ids)
        .await
        .expect("load_many");
    assert_eq!(typed["1"].name, "user1");
    assert_eq!(typed.len(), 2);
    assert!(src.load_many_json(&[]).await.expect("empty").is_empty());
}

async fn column_types_survive_as_json(db: &Db) {
    let src = db.users().await;
    let (active, meta) = match db.kind {
        Kind::Pg => ("false", "'{\"a\": [1, 2], \"b\": {\"c\": null}}'"),
        Kind::Lite => ("0", "'{\"a\": [1, 2], \"b\": {\"c\": null}}'"),
    };
    db.exec(&format!(
        "INSERT INTO @users (id, name, age, big, active, score, price, meta)
         VALUES (1, 'Zoë \"quoted\"', 42, 9007199254740993, {active}, 1.5, 12.34, {meta})"
    ))
    .await;
    let row = value(&src.load_json("1").await.expect("load").expect("row"));
    assert_eq!(row["id"], 1);
    assert_eq!(row["name"], "Zoë \"quoted\"");
    assert_eq!(row["age"], 42);
    assert_eq!(row["big"].as_i64(), Some(9_007_199_254_740_993));
    assert_eq!(row["active"], false);
    assert_eq!(row["score"], 1.5);
    assert_eq!(row["price"].as_f64(), Some(12.34));
    assert!(
        row["created"]
            .as_str()
            .is_some_and(|s| s.starts_with("2024-01-02")),
        "{row}"
    );
    assert_eq!(row["meta"], json!({"a": [1, 2], "b": {"c": null}}));
    assert_eq!(row["note"], Value::Null);
    // Every column, in table order.
    let names: Vec<&str> = row
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let expected: Vec<&str> = src.columns().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), expected.len());
    assert_eq!(src.key_column(), "id");
    assert!(src.columns()[0].is_key);
    assert!(src
        .columns()
        .iter()
        .any(|c| c.name == "active" && c.has_default && c.not_null));

    // Writing JSON values of each type back round-trips them.
    let stored = src
        .store_many_json(&[(
            "2".into(),
            obj(json!({"name": "two", "big": 5_000_000_000_i64, "active": true, "score": -0.25,
                       "price": 3.5, "created": "2020-05-06T07:08:09Z", "meta": {"x": ["y", 1, true]}})),
        )])
        .await
        .expect("store");
    let row = value(&stored[0].1);
    assert_eq!(row["big"].as_i64(), Some(5_000_000_000));
    assert_eq!(row["active"], true);
    assert_eq!(row["score"], -0.25);
    assert_eq!(row["price"].as_f64(), Some(3.5));
    assert!(row["created"]
        .as_str()
        .is_some_and(|s| s.starts_with("2020-05-06")));
    assert_eq!(row["meta"], json!({"x": ["y", 1, true]}));
    let again = value(&src.load_json("2").await.expect("load").expect("row"));
    assert_eq!(again, row);
}

async fn integer_ids_are_canonical(db: &Db) {
    let src = db.users().await;
    seed(db, [7]).await;
    assert_eq!(src.canonical_id("007").expect("007"), "7");
    assert_eq!(src.canonical_id("+7").expect("+7"), "7");
    assert_eq!(src.canonical_id("-12").expect("-12"), "-12");
    assert!(matches!(src.canonical_id(""), Err(Error::InvalidId { .. })));
    for bad in ["abc", "1.5", "-", " 7", "99999999999999999999"] {
        match src.canonical_id(bad) {
            Err(Error::InvalidId { reason, .. }) => assert!(reason.contains("integer"), "{reason}"),
            other => panic!("{bad:?}: {other:?}"),
        }
        assert!(matches!(
            src.load_json(bad).await,
            Err(Error::InvalidId { .. })
        ));
    }
    assert_eq!(Source::<User>::canonical_id(&src, "0007").expect("id"), "7");
    let row = src.load_json("007").await.expect("load").expect("row 7");
    assert_eq!(value(&row)["id"], 7);
}

async fn undeserializable_row_is_decode_error(db: &Db) {
    #[derive(Debug, Deserialize, Serialize)]
    struct Strict {
        id: i64,
        age: i64, // NULL in the row
    }
    let src = db.users().await;
    db.exec("INSERT INTO @users (id, name) VALUES (5, 'no age')")
        .await;
    match Source::<Strict>::load(&src, "5").await {
        Err(Error::Decode { entity, id, .. }) => {
            assert_eq!(entity, "users");
            assert_eq!(id, "5");
        }
        other => panic!("{other:?}"),
    }
    // A value that is not a JSON object cannot be a row.
    let r = Source::<Vec<i64>>::store(&src, "5", &vec![1]).await;
    assert!(matches!(r, Err(Error::Encode { .. })), "{r:?}");
}

async fn store_many_upserts_and_returns_stored_rows(db: &Db) {
    let src = db.users().await;
    assert!(src.is_writable());
    seed(db, [2]).await;
    let stored = src
        .store_many_json(&[
            ("1".into(), obj(json!({"name": "first", "age": 30}))),
            ("002".into(), obj(json!({"age": 20}))),
            ("3".into(), obj(json!({"id": 3, "name": "three"}))),
            ("1".into(), obj(json!({"name": "last"}))),
        ])
        .await
        .expect("store_many");
    let ids: Vec<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"]);
    let rows: HashMap<&str, Value> = stored
        .iter()
        .map(|(id, j)| (id.as_str(), value(j)))
        .collect();

    // Last write wins, whole: row 1 is {"name": "last"}, age never written.
    assert_eq!(rows["1"]["name"], "last");
    assert_eq!(rows["1"]["age"], Value::Null);
    // Absent columns take their defaults on insert...
    assert_eq!(rows["1"]["active"], true);
    assert!(rows["1"]["created"]
        .as_str()
        .is_some_and(|s| s.starts_with("2024-01-02")));
    // ...and keep their value on update.
    assert_eq!(rows["2"]["name"], "user2");
    assert_eq!(rows["2"]["age"], 20);
    assert_eq!(rows["3"]["name"], "three");
    if db.kind == Kind::Pg {
        assert_eq!(rows["1"]["touched"], "trigger:last");
        assert_eq!(rows["2"]["touched"], "trigger:user2");
    }
    assert_eq!(db.count("users").await, 3);
    let loaded = value(&src.load_json("1").await.expect("load").expect("row"));
    assert_eq!(loaded, rows["1"]);
    assert!(src.store_many_json(&[]).await.expect("empty").is_empty());

    // Only the key: inserts with defaults or leaves the row as it is.
    let only_key = src
        .store_many_json(&[("3".into(), obj(json!({})))])
        .await
        .expect("key only");
    assert_eq!(value(&only_key[0].1)["name"], "three");
}

async fn typed_store_and_remove(db: &Db) {
    let src = db.users().await;
    let mut user = User {
        id: 10,
        name: "ten".into(),
        age: None,
    };
    let stored = Source::<User>::store(&src, "10", &user)
        .await
        .expect("store");
    assert_eq!(stored, user);
    user.age = Some(11);
    let many = Source::<User>::store_many(&src, &[("10".into(), user.clone())])
        .await
        .expect("store_many");
    assert_eq!(many, vec![("10".to_owned(), user.clone())]);
    assert!(Source::<User>::is_writable(&src));

    assert!(Source::<User>::delete(&src, "010").await.expect("remove"));
    assert!(!src.delete_id("10").await.expect("remove again"));
    assert!(src.load_json("10").await.expect("load").is_none());
    assert_eq!(db.count("users").await, 0);
}

fn assert_refused(r: Result<Vec<(String, RawJson)>, Error>, column: &str) {
    match r {
        Err(e @ Error::InvalidRow { .. }) => {
            assert!(e.is_bad_input(), "{e}");
            assert!(e.to_string().contains(column), "{e}");
        }
        other => panic!("expected a refused row, got {other:?}"),
    }
}

async fn validation_refuses_before_any_sql(db: &Db) {
    let src = db.users().await;
    let good = ("1".to_owned(), obj(json!({"name": "ok"})));
    let cases = [
        (json!({"name": "x", "nope": 1}), "nope"),
        (json!({"name": "x", "age": "12"}), "age"),
        (json!({"name": "x", "age": 1.5}), "age"),
        (json!({"name": 5}), "name"),
        (json!({"name": {"a": 1}}), "name"),
        (json!({"name": null}), "name"),
        (json!({"name": "x", "active": null}), "active"),
        (json!({"name": "x", "score": "fast"}), "score"),
    ];
    for (row, column) in cases {
        let r = src
            .store_many_json(&[good.clone(), ("2".into(), obj(row))])
            .await;
        assert_refused(r, column);
    }
    match src
        .store_many_json(&[("1".into(), obj(json!({"id": 2, "name": "x"})))])
        .await
    {
        Err(Error::InvalidId { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        src.store_many_json(&[("1".into(), obj(json!([1])))]).await,
        Err(Error::InvalidRow { .. })
    ));
    assert!(src
        .validate_row(
            "1",
            json!({"name": "x", "meta": [1]}).as_object().expect("obj")
        )
        .is_ok());
    assert!(src
        .validate_row(
            "1",
            json!({"id": "001", "name": "x"}).as_object().expect("obj")
        )
        .is_ok());
    assert_eq!(db.count("users").await, 0, "nothing was written");
}

async fn views_are_read_only(db: &Db) {
    let _ = db.users().await;
    seed(db, [1, 2]).await;
    db.exec("CREATE VIEW @adults AS SELECT id, name FROM @users WHERE age >= 2")
        .await;
    let view = SqlSource::builder(db.pool.clone(), &db.t("adults"))
        .entity("adults")
        .build()
        .await
        .expect("view source");
    assert!(!view.is_writable());
    assert!(!Source::<User>::is_writable(&view));
    let row = view.load_json("2").await.expect("load").expect("row");
    assert_eq!(value(&row), json!({"id": 2, "name": "user2"}));
    assert!(view.load_json("1").await.expect("load").is_none());

    let refused = view
        .store_many_json(&[("3".into(), obj(json!({"name": "x"})))])
        .await;
    match refused {
        Err(Error::ReadOnly { entity, reason }) => {
            assert_eq!(entity, "adults");
            assert!(reason.contains("view"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        view.delete_id("2").await,
        Err(Error::ReadOnly { .. })
    ));
    let typed = User {
        id: 3,
        name: "x".into(),
        age: None,
    };
    assert!(matches!(
        Source::<User>::store(&view, "3", &typed).await,
        Err(Error::ReadOnly { .. })
    ));
    match view.patch_json("2", &fields(json!({"name": "x"}))).await {
        Err(Error::ReadOnly { entity, reason }) => {
            assert_eq!(entity, "adults");
            assert!(reason.contains("view"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Source::<User>::patch(&view, "2", &fields(json!({"name": "x"}))).await,
        Err(Error::ReadOnly { .. })
    ));
    assert_eq!(
        value(&view.load_json("2").await.expect("load").expect("row")),
        json!({"id": 2, "name": "user2"})
    );
    assert_eq!(db.count("users").await, 2);
}

async fn writes_need_a_unique_index_on_the_key(db: &Db) {
    db.exec(
        "CREATE TABLE @logs (id int, msg text);
         INSERT INTO @logs (id, msg) VALUES (1, 'hello');
         CREATE TABLE @pairs (a int NOT NULL, b int NOT NULL, note text, PRIMARY KEY (a, b));
         CREATE TABLE @tagged (id int, tag text NOT NULL, note text);
         CREATE UNIQUE INDEX tagged_tag ON @tagged (tag);",
    )
    .await;
    let logs = SqlSource::builder(db.pool.clone(), &db.t("logs"))
        .build()
        .await
        .expect("logs");
    assert!(!logs.is_writable());
    assert!(logs.load_json("1").await.expect("load").is_some());
    match logs
        .store_many_json(&[("2".into(), obj(json!({"msg": "x"})))])
        .await
    {
        Err(Error::ReadOnly { reason, .. }) => {
            assert!(reason.contains("add a unique index on id"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        logs.patch_json("1", &fields(json!({"msg": "x"}))).await,
        Err(Error::ReadOnly { .. })
    ));
    assert_eq!(
        value(&logs.load_json("1").await.expect("load").expect("row"))["msg"],
        "hello"
    );
    // A composite primary key does not cover exactly the key column.
    let pairs = SqlSource::builder(db.pool.clone(), &db.t("pairs"))
        .key("a")
        .build()
        .await
        .expect("pairs");
    assert!(!pairs.is_writable());
    // A unique index (not a primary key) on a text key is enough.
    let tagged = SqlSource::builder(db.pool.clone(), &db.t("tagged"))
        .key("tag")
        .build()
        .await
        .expect("tagged");
    assert!(tagged.is_writable());
    let stored = tagged
        .store_many_json(&[("Blue 01".into(), obj(json!({"note": "n"})))])
        .await
        .expect("store by tag");
    assert_eq!(stored[0].0, "Blue 01");
    assert_eq!(value(&stored[0].1)["tag"], "Blue 01");
    assert_eq!(tagged.canonical_id("007").expect("text id"), "007");
    assert!(matches!(
        tagged.canonical_id(""),
        Err(Error::InvalidId { .. })
    ));
}

async fn config_errors_name_what_is_wrong(db: &Db) {
    let _ = db.users().await;
    let build = |table: &str, key: &str, cols: Option<Vec<&str>>| {
        let mut b = SqlSource::builder(db.pool.clone(), table).key(key);
        if let Some(cols) = cols {
            b = b.columns(cols);
        }
        b.build()
    };
    let config = |r: Result<SqlSource, Error>| match r {
        Err(Error::Schema { reason, .. }) => reason,
        other => panic!("expected a schema error, got {other:?}"),
    };
    let msg = config(build(&db.t("nope"), "id", None).await);
    assert!(msg.contains("nope"), "{msg}");
    let msg = config(build(&db.t("users"), "uid", None).await);
    assert!(msg.contains("uid"), "{msg}");
    let msg = config(build(&db.t("users"), "id", Some(vec!["id", "nickname"])).await);
    assert!(msg.contains("nickname"), "{msg}");
    for table in [
        "users\"; DROP TABLE users; --",
        "users;",
        "1users",
        "",
        "a.b.c",
    ] {
        config(build(table, "id", None).await);
    }
    config(build(&db.t("users"), "id\"", None).await);
    config(build(&db.t("users"), "id", Some(vec!["name\" FROM users; --"])).await);
    assert_eq!(db.count("users").await, 0, "the table is still there");
}

async fn pagination_visits_every_row_once(db: &Db) {
    let src = db.users().await;
    let ids: Vec<i64> = (1..=25).map(|i| i * 3 - 40).collect(); // negatives too
    seed(db, ids.iter().copied().filter(|&i| i >= 0)).await;
    for &i in ids.iter().filter(|&&i| i < 0) {
        db.exec(&format!(
            "INSERT INTO @users (id, name) VALUES ({i}, 'neg')"
        ))
        .await;
    }
    let mut seen: Vec<i64> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = Source::<User>::load_page(&src, after.as_deref(), 7)
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        for (id, user) in &page {
            assert_eq!(id, &user.id.to_string());
            seen.push(user.id);
        }
        after = page.last().map(|(id, _)| id.clone());
    }
    assert_eq!(seen, ids, "every row once, in key order");
    assert!(src.load_page_json(None, 0).await.expect("empty").is_empty());
}

async fn chosen_columns_only(db: &Db) {
    let _ = db.users().await;
    seed(db, [1]).await;
    let src = SqlSource::builder(db.pool.clone(), &db.t("users"))
        .columns(["name", "id"])
        .entity("people")
        .build()
        .await
        .expect("build");
    let row = src.load_json("1").await.expect("load").expect("row");
    assert_eq!(row.bytes().as_ref(), br#"{"name":"user1","id":1}"#);
    assert_eq!(src.columns().len(), 2);
    match src
        .store_many_json(&[("1".into(), obj(json!({"age": 3})))])
        .await
    {
        Err(Error::InvalidRow { entity, reason, .. }) => {
            assert_eq!(entity, "people");
            assert!(reason.contains("age"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let stored = src
        .store_many_json(&[("1".into(), obj(json!({"name": "renamed"})))])
        .await
        .expect("store");
    assert_eq!(value(&stored[0].1), json!({"name": "renamed", "id": 1}));
}

async fn data_errors_carry_their_code(db: &Db) {
    let src = db.users().await;
    let check = src
        .store_many_json(&[("1".into(), obj(json!({"name": "x", "age": -1})))])
        .await;
    let (check_code, not_null_code) = match db.kind {
        Kind::Pg => ("23514", "23502"),
        Kind::Lite => ("275", "1299"), // SQLITE_CONSTRAINT_CHECK, _NOTNULL
    };
    match check {
        Err(Error::Source { code, .. }) => assert_eq!(code.as_deref(), Some(check_code)),
        other => panic!("{other:?}"),
    }
    // A NOT NULL column without default, missing on insert: left to the database.
    let missing = src
        .store_many_json(&[("1".into(), obj(json!({"age": 1})))])
        .await;
    match missing {
        Err(Error::Source { code, .. }) => assert_eq!(code.as_deref(), Some(not_null_code)),
        other => panic!("{other:?}"),
    }
    if db.kind == Kind::Pg {
        let bad_date = src
            .store_many_json(&[(
                "1".into(),
                obj(json!({"name": "x", "created": "not a date"})),
            )])
            .await;
        match bad_date {
            Err(Error::Source { code, .. }) => assert_eq!(code.as_deref(), Some("22007")),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(db.count("users").await, 0);
}

fn fields(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

async fn load_value(src: &SqlSource, id: &str) -> Value {
    value(&src.load_json(id).await.expect("load").expect("row"))
}

async fn patch_updates_only_the_given_columns(db: &Db) {
    let src = db.users().await;
    seed(db, [1, 2]).await;
    db.exec("UPDATE @users SET note = 'keep', meta = '{\"k\": 1}' WHERE id IN (1, 2)")
        .await;
    let before = load_value(&src, "1").await;
    let other = load_value(&src, "2").await;

    // One column: the returned row is the old one with that column changed.
    let patched = src
        .patch_json("001", &fields(json!({"age": 41})))
        .await
        .expect("patch")
        .expect("row 1");
    let mut expected = before.clone();
    expected["age"] = json!(41);
    assert_eq!(value(&patched), expected);
    assert_eq!(load_value(&src, "1").await, expected, "the database agrees");
    assert_eq!(load_value(&src, "2").await, other, "other rows untouched");

    // null sets NULL on a nullable column.
    let patched = src
        .patch_json("1", &fields(json!({"note": null})))
        .await
        .expect("patch")
        .expect("row 1");
    expected["note"] = Value::Null;
    assert_eq!(value(&patched), expected);
    assert_eq!(load_value(&src, "1").await, expected);

    // JSON, boolean and timestamp columns convert as in a store; the key may
    // be present with the id's value.
    let patched = src
        .patch_json(
            "1",
            &fields(
                json!({"id": "01", "meta": {"x": [1, null, "y"]}, "active": false,
                           "created": "2021-03-04T05:06:07Z"}),
            ),
        )
        .await
        .expect("patch")
        .expect("row 1");
    let row = value(&patched);
    assert_eq!(row["meta"], json!({"x": [1, null, "y"]}));
    assert_eq!(row["active"], false);
    assert!(
        row["created"]
            .as_str()
            .is_some_and(|s| s.starts_with("2021-03-04")),
        "{row}"
    );
    assert_eq!(row["name"], "user1");
    assert_eq!(row["age"], 41);
    assert_eq!(load_value(&src, "1").await, row);

    // A trigger-set column comes back as the trigger left it.
    let patched = value(
        &src.patch_json("1", &fields(json!({"name": "renamed"})))
            .await
            .expect("patch")
            .expect("row 1"),
    );
    assert_eq!(patched["name"], "renamed");
    if db.kind == Kind::Pg {
        assert_eq!(before["touched"], "trigger:user1");
        assert_eq!(patched["touched"], "trigger:renamed");
    }
    assert_eq!(load_value(&src, "1").await, patched);

    // Typed: the stored row as V.
    let typed = Source::<User>::patch(&src, "2", &fields(json!({"age": null})))
        .await
        .expect("typed patch");
    assert_eq!(
        typed,
        Some(User {
            id: 2,
            name: "user2".into(),
            age: None
        })
    );
    assert_eq!(load_value(&src, "2").await["note"], "keep");

    // A row that does not fit V is a decode error (the patch is written).
    #[derive(Debug, Deserialize, Serialize)]
    struct Strict {
        id: i64,
        age: i64,
    }
    let r = Source::<Strict>::patch(&src, "2", &fields(json!({"note": "n"}))).await;
    assert!(matches!(r, Err(Error::Decode { .. })), "{r:?}");
    assert_eq!(db.count("users").await, 2);
}

async fn patch_of_a_missing_id_writes_nothing(db: &Db) {
    let src = db.users().await;
    seed(db, [1]).await;
    let r = src
        .patch_json("99", &fields(json!({"name": "ghost", "age": 1})))
        .await
        .expect("patch");
    assert!(r.is_none());
    let typed = Source::<User>::patch(&src, "98", &fields(json!({"age": 1})))
        .await
        .expect("typed patch");
    assert_eq!(typed, None);
    assert!(src.load_json("99").await.expect("load").is_none());
    assert_eq!(db.count("users").await, 1, "no row created");
    // An invalid id is refused before any SQL.
    assert!(matches!(
        src.patch_json("abc", &fields(json!({"age": 1}))).await,
        Err(Error::InvalidId { .. })
    ));
}

async fn patch_validation_leaves_the_row_unchanged(db: &Db) {
    let src = db.users().await;
    seed(db, [1]).await;
    let before = load_value(&src, "1").await;
    let refused = |r: Result<Option<RawJson>, Error>, column: &str| match r {
        Err(e @ Error::InvalidRow { .. }) => {
            assert!(e.is_bad_input(), "{e}");
            assert!(e.to_string().contains(column), "{column}: {e}");
        }
        other => panic!("expected a refused patch naming {column}, got {other:?}"),
    };
    let cases = [
        (json!({}), "nothing to patch"),
        (json!({"id": 1}), "id"),
        (json!({"age": 2, "nope": 1}), "nope"),
        (json!({"age": "12"}), "age"),
        (json!({"age": 1.5}), "age"),
        (json!({"name": 5}), "name"),
        (json!({"name": {"a": 1}}), "name"),
        (json!({"age": 2, "name": null}), "name"),
        (json!({"active": null}), "active"),
        (json!({"score": "fast"}), "score"),
    ];
    for (patch, column) in cases {
        refused(src.patch_json("1", &fields(patch.clone())).await, column);
        let typed = Source::<User>::patch(&src, "1", &fields(patch)).await;
        assert!(matches!(typed, Err(Error::InvalidRow { .. })), "{typed:?}");
        assert_eq!(load_value(&src, "1").await, before);
    }
    // A key value other than the id.
    for patch in [json!({"id": 2, "age": 3}), json!({"id": "x", "age": 3})] {
        match src.patch_json("1", &fields(patch)).await {
            Err(Error::InvalidId { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(load_value(&src, "1").await, before);
    assert!(src.load_json("2").await.expect("load").is_none());

    // A column outside the configured ones.
    let narrow = SqlSource::builder(db.pool.clone(), &db.t("users"))
        .columns(["id", "name"])
        .build()
        .await
        .expect("narrow");
    refused(
        narrow.patch_json("1", &fields(json!({"age": 3}))).await,
        "age",
    );
    assert_eq!(load_value(&src, "1").await, before);
    let renamed = narrow
        .patch_json("1", &fields(json!({"name": "n"})))
        .await
        .expect("patch")
        .expect("row");
    assert_eq!(value(&renamed), json!({"id": 1, "name": "n"}));

    // A generated column (SQLite does not list them: an unknown column).
    db.exec(
        "CREATE TABLE @gen (id int PRIMARY KEY, a int,
                            twice int GENERATED ALWAYS AS (a * 2) STORED);
         INSERT INTO @gen (id, a) VALUES (1, 5);",
    )
    .await;
    let gen = SqlSource::builder(db.pool.clone(), &db.t("gen"))
        .build()
        .await
        .expect("gen");
    let gen_before = load_value(&gen, "1").await;
    // A store refuses it too, even as null.
    assert_refused(
        gen.store_many_json(&[("1".into(), obj(json!({"a": 1, "twice": null})))])
            .await,
        "twice",
    );
    for patch in [
        json!({"twice": 4}),
        json!({"twice": null}),
        json!({"a": 1, "twice": 2}),
    ] {
        refused(gen.patch_json("1", &fields(patch)).await, "twice");
        assert_eq!(load_value(&gen, "1").await, gen_before);
    }
    let patched = value(
        &gen.patch_json("1", &fields(json!({"a": 7})))
            .await
            .expect("patch")
            .expect("row"),
    );
    assert_eq!(patched["a"], 7);
    if db.kind == Kind::Pg {
        assert_eq!(gen_before["twice"], 10);
        assert_eq!(patched["twice"], 14, "RETURNING sees the generated value");
    }
}

async fn patches_of_different_columns_both_land(db: &Db) {
    let src = db.users().await;
    seed(db, [1]).await;
    src.patch_json("1", &fields(json!({"age": 50})))
        .await
        .expect("patch age")
        .expect("row");
    src.patch_json("1", &fields(json!({"note": "n"})))
        .await
        .expect("patch note")
        .expect("row");
    let row = load_value(&src, "1").await;
    assert_eq!(
        (row["age"].clone(), row["note"].clone()),
        (json!(50), json!("n"))
    );

    for round in 0..10 {
        let (age, note) = (
            fields(json!({"age": round})),
            fields(json!({"note": format!("r{round}")})),
        );
        let (a, b) = tokio::join!(
            src.patch_json("1", &age),
            Source::<User>::patch(&src, "1", &note),
        );
        assert_eq!(value(&a.expect("patch age").expect("row"))["age"], round);
        assert!(b.expect("patch note").is_some());
        let row = load_value(&src, "1").await;
        assert_eq!(row["age"], round, "{row}");
        assert_eq!(row["note"], format!("r{round}"), "{row}");
        assert_eq!(row["name"], "user1");
    }
}

#[tokio::test]
async fn postgres_uuid_keys() {
    let db = Db::pg().await;
    db.exec(
        "CREATE TABLE @docs (id uuid PRIMARY KEY, title text NOT NULL);
         INSERT INTO @docs VALUES ('123e4567-e89b-12d3-a456-426614174000', 'one'),
                                  ('00000000-0000-0000-0000-000000000002', 'two');",
    )
    .await;
    let src = SqlSource::builder(db.pool.clone(), &db.t("docs"))
        .build()
        .await
        .expect("docs");
    let canonical = "123e4567-e89b-12d3-a456-426614174000";
    assert_eq!(
        src.canonical_id("123E4567E89B12D3A456426614174000")
            .expect("uuid"),
        canonical
    );
    assert!(matches!(
        src.canonical_id("123e4567"),
        Err(Error::InvalidId { .. })
    ));
    let row = src
        .load_json("123E4567-E89B-12D3-A456-426614174000")
        .await
        .expect("load")
        .expect("row");
    assert_eq!(value(&row)["title"], "one");
    let many = src
        .load_many_json(&[
            canonical.to_uppercase(),
            "00000000000000000000000000000002".into(),
        ])
        .await
        .expect("many");
    assert_eq!(many.len(), 2);
    assert!(many.contains_key(canonical));
    assert!(many.contains_key("00000000-0000-0000-0000-000000000002"));
    let stored = src
        .store_many_json(&[(
            "AAAAAAAA-0000-0000-0000-000000000003".into(),
            obj(json!({"title": "three"})),
        )])
        .await
        .expect("store");
    assert_eq!(stored[0].0, "aaaaaaaa-0000-0000-0000-000000000003");
    let page = src.load_page_json(Some(canonical), 10).await.expect("page");
    assert_eq!(page.len(), 1);
    assert!(src
        .delete_id(&canonical.to_uppercase())
        .await
        .expect("remove"));
    db.close().await;
}

#[tokio::test]
async fn postgres_default_schema_and_several_column_sets() {
    let db = Db::pg().await;
    let _ = db.users().await;
    // Without a schema, the table is looked up in current_schema() (public).
    match SqlSource::builder(db.pool.clone(), "users").build().await {
        Err(Error::Schema { reason, .. }) => assert!(reason.contains("public"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let src = SqlSource::builder(db.pool.clone(), &db.t("users"))
        .build()
        .await
        .expect("users");
    // Two column sets in one batch: two statements, one transaction.
    let stored = src
        .store_many_json(&[
            ("1".into(), obj(json!({"name": "a"}))),
            ("2".into(), obj(json!({"name": "b", "age": 2}))),
            ("3".into(), obj(json!({"name": "c"}))),
        ])
        .await
        .expect("store");
    assert_eq!(stored.len(), 3);
    // A failure in the second statement rolls back the first.
    let r = src
        .store_many_json(&[
            ("4".into(), obj(json!({"name": "d"}))),
            ("5".into(), obj(json!({"name": "e", "age": -5}))),
        ])
        .await;
    assert!(matches!(r, Err(Error::Source { .. })));
    assert_eq!(db.count("users").await, 3);
    db.close().await;
}

#[tokio::test]
async fn unreachable_postgres_is_source_unavailable() {
    match SqlPool::connect("postgres://postgres@127.0.0.1:1/test", 1).await {
        Err(e @ Error::SourceUnavailable { .. }) => assert!(e.is_source_error()),
        other => panic!("{other:?}"),
    }
    // A lazily connecting pool: the build's schema read fails the same way.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .expect("lazy pool");
    match SqlSource::builder(SqlPool::Postgres(pool), "users")
        .build()
        .await
    {
        Err(Error::SourceUnavailable { entity, .. }) => assert_eq!(entity, "users"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unopenable_sqlite_is_source_unavailable() {
    let r = SqlPool::connect("sqlite:///nonexistent-dir-larder/x/y.db", 1).await;
    assert!(matches!(r, Err(Error::SourceUnavailable { .. })), "{r:?}");
    assert!(matches!(
        SqlPool::connect("oracle://localhost/x", 1).await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn sqlite_in_memory() {
    let pool = SqlPool::connect("sqlite::memory:", 4)
        .await
        .expect("memory");
    let SqlPool::Sqlite(p) = &pool else {
        panic!("not sqlite")
    };
    sqlx::raw_sql(
        "CREATE TABLE kv (k TEXT PRIMARY KEY, v JSON, flag BOOLEAN);
         INSERT INTO kv VALUES ('a', '[1,2]', 1), ('b', 'plain', NULL);",
    )
    .execute(p)
    .await
    .expect("ddl");
    let src = SqlSource::builder(pool.clone(), "kv")
        .key("k")
        .build()
        .await
        .expect("kv");
    let many = src
        .load_many_json(&["a".into(), "b".into(), "c".into()])
        .await
        .expect("many");
    assert_eq!(
        value(&many["a"]),
        json!({"k": "a", "v": [1, 2], "flag": true})
    );
    assert_eq!(
        value(&many["b"]),
        json!({"k": "b", "v": "plain", "flag": null})
    );
    let stored = src
        .store_many_json(&[(
            "c".into(),
            obj(json!({"v": {"deep": [null, "s"]}, "flag": false})),
        )])
        .await
        .expect("store");
    assert_eq!(
        value(&stored[0].1),
        json!({"k": "c", "v": {"deep": [null, "s"]}, "flag": false})
    );
    let stored = src
        .store_many_json(&[("d".into(), obj(json!({"v": "text", "flag": 1})))])
        .await
        .expect("store");
    assert_eq!(
        value(&stored[0].1),
        json!({"k": "d", "v": "text", "flag": true})
    );
}

#[tokio::test]
async fn sqlite_wide_table() {
    let db = Db::sqlite().await;
    let cols: Vec<String> = (0..150).map(|i| format!("c{i} INTEGER")).collect();
    db.exec(&format!(
        "CREATE TABLE wide (id INTEGER PRIMARY KEY, {})",
        cols.join(", ")
    ))
    .await;
    db.exec("INSERT INTO wide (id, c0, c149) VALUES (1, 10, 149)")
        .await;
    let src = SqlSource::builder(db.pool.clone(), "wide")
        .build()
        .await
        .expect("wide");
    let row = value(&src.load_json("1").await.expect("load").expect("row"));
    assert_eq!(row.as_object().expect("object").len(), 151);
    assert_eq!(row["c0"], 10);
    assert_eq!(row["c149"], 149);
    assert_eq!(row["c75"], Value::Null);
    db.close().await;
}
