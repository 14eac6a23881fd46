//! `Error::kind()` against real databases: every constraint a row can break
//! is classified where the error arises, from the driver's own
//! classification, the same on PostgreSQL, SQLite and MariaDB; schema problems name
//! the part of the table; refused settings name the setting.

use larder_test_support as support;

use larder::source::{SqlPool, SqlSource};
use larder::{
    Cache, ConstraintKind, Error, ErrorKind, NearOptions, RawJson, SchemaPart, WriteBackOptions,
    WritePolicy,
};
use std::time::Duration;

/// One isolated database: a fresh PostgreSQL schema or a fresh SQLite file.
struct Db {
    pool: SqlPool,
    /// The schema prefix of table names (`"s".`), empty on SQLite.
    prefix: String,
    /// The PostgreSQL schema, or the SQLite file.
    place: String,
}

impl Db {
    async fn pg() -> Db {
        let pool = SqlPool::connect(&support::pg_url(), 2)
            .await
            .expect("connect to PostgreSQL");
        let place = support::unique("kinds");
        let db = Db {
            pool,
            prefix: format!("{place}."),
            place,
        };
        db.exec(&format!("CREATE SCHEMA {}", db.place)).await;
        db
    }

    async fn sqlite() -> Db {
        let path = std::env::temp_dir().join(format!("{}.db", support::unique("kinds")));
        let pool = SqlPool::connect(&format!("sqlite://{}", path.display()), 2)
            .await
            .expect("open SQLite");
        Db {
            pool,
            prefix: String::new(),
            place: path.display().to_string(),
        }
    }

    /// A database of its own on the shared MariaDB.
    async fn maria() -> Db {
        let pool = SqlPool::connect(&support::mysql_url(), 2)
            .await
            .expect("connect to MariaDB");
        let place = support::unique("kinds");
        let db = Db {
            pool,
            prefix: format!("{place}."),
            place,
        };
        db.exec(&format!("CREATE DATABASE `{}`", db.place)).await;
        db
    }

    async fn exec(&self, sql: &str) {
        let sql = sql.replace('@', &self.prefix);
        match &self.pool {
            SqlPool::Postgres(p) => sqlx::raw_sql(&sql).execute(p).await.map(drop),
            SqlPool::Sqlite(p) => sqlx::raw_sql(&sql).execute(p).await.map(drop),
            SqlPool::MySql(p) => sqlx::raw_sql(&sql).execute(p).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn source(
        &self,
        table: &str,
        key: &str,
        columns: Option<&[&str]>,
    ) -> larder::Result<SqlSource> {
        let mut b =
            SqlSource::builder(self.pool.clone(), &format!("{}{table}", self.prefix)).key(key);
        if let Some(columns) = columns {
            b = b.columns(columns.iter().copied());
        }
        b.build().await
    }

    async fn close(self) {
        match &self.pool {
            SqlPool::Postgres(p) => {
                let _ = sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", self.place))
                    .execute(p)
                    .await;
                p.close().await;
            }
            SqlPool::Sqlite(p) => {
                p.close().await;
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", self.place));
                }
            }
            SqlPool::MySql(p) => {
                let _ = sqlx::raw_sql(&format!("DROP DATABASE `{}`", self.place))
                    .execute(p)
                    .await;
                p.close().await;
            }
        }
    }
}

fn row(json: &str) -> RawJson {
    RawJson::from_bytes(json.as_bytes().to_vec()).expect("json")
}

/// Writes one row and returns the error's kind.
async fn refused(src: &SqlSource, id: &str, json: &str) -> ErrorKind {
    let err = src
        .store_many_json(&[(id.to_owned(), row(json))])
        .await
        .expect_err("refused by the database");
    assert!(err.to_string().len() > 10, "{err}");
    err.kind()
}

async fn every_constraint_has_its_kind(db: Db) {
    let maria = matches!(db.pool, SqlPool::MySql(_));
    // InnoDB ignores an inline REFERENCES: MariaDB needs the table clause.
    db.exec(if maria {
        "CREATE TABLE @parent (id integer PRIMARY KEY);
         INSERT INTO @parent (id) VALUES (1);
         CREATE TABLE @child (
             id integer PRIMARY KEY,
             email varchar(64) UNIQUE,
             n integer NOT NULL CHECK (n >= 0),
             parent_id integer,
             FOREIGN KEY (parent_id) REFERENCES @parent (id)
         );"
    } else {
        "CREATE TABLE @parent (id integer PRIMARY KEY);
         INSERT INTO @parent (id) VALUES (1);
         CREATE TABLE @child (
             id integer PRIMARY KEY,
             email text UNIQUE,
             n integer NOT NULL CHECK (n >= 0),
             parent_id integer REFERENCES @parent (id)
         );"
    })
    .await;
    let src = db.source("child", "id", None).await.expect("child");
    src.store_many_json(&[(
        "1".into(),
        row(r#"{"email": "a@x", "n": 1, "parent_id": 1}"#),
    )])
    .await
    .expect("a valid row");
    let unique = refused(&src, "2", r#"{"email": "a@x", "n": 1}"#).await;
    assert_eq!(unique, ErrorKind::Conflict(ConstraintKind::Unique));
    let fk = refused(&src, "3", r#"{"n": 1, "parent_id": 999}"#).await;
    assert_eq!(fk, ErrorKind::Conflict(ConstraintKind::ForeignKey));
    // Left out on insert: the database, not larder's validation, refuses it.
    let not_null = refused(&src, "4", r#"{"email": "b@x"}"#).await;
    assert_eq!(not_null, ErrorKind::Conflict(ConstraintKind::NotNull));
    let check = refused(&src, "5", r#"{"n": -1}"#).await;
    assert_eq!(check, ErrorKind::Conflict(ConstraintKind::Check));
    let err = src
        .store_many_json(&[("6".into(), row(r#"{"n": -1}"#))])
        .await
        .expect_err("check");
    assert_eq!(err.constraint(), Some(ConstraintKind::Check));
    assert!(err.is_source_error(), "{err}");
    db.close().await;
}

#[tokio::test]
async fn postgres_constraints_have_their_kind() {
    every_constraint_has_its_kind(Db::pg().await).await;
}

#[tokio::test]
async fn sqlite_constraints_have_their_kind() {
    every_constraint_has_its_kind(Db::sqlite().await).await;
}

#[tokio::test]
async fn mariadb_constraints_have_their_kind() {
    every_constraint_has_its_kind(Db::maria().await).await;
}

#[tokio::test]
async fn mariadb_refused_values_are_invalid_value() {
    let db = Db::maria().await;
    db.exec("CREATE TABLE @events (id integer PRIMARY KEY, at date)")
        .await;
    let src = db.source("events", "id", None).await.expect("events");
    let kind = refused(&src, "1", r#"{"at": "not a date"}"#).await;
    assert_eq!(kind, ErrorKind::InvalidValue);
    db.close().await;
}

#[tokio::test]
async fn mariadb_schema_errors_name_the_part() {
    schema_errors_name_the_part(Db::maria().await).await;
}

#[tokio::test]
async fn postgres_refused_values_are_invalid_value() {
    let db = Db::pg().await;
    db.exec("CREATE TABLE @events (id integer PRIMARY KEY, at date)")
        .await;
    let src = db.source("events", "id", None).await.expect("events");
    let kind = refused(&src, "1", r#"{"at": "not a date"}"#).await;
    assert_eq!(kind, ErrorKind::InvalidValue);
    db.close().await;
}

async fn schema_errors_name_the_part(db: Db) {
    db.exec("CREATE TABLE @users (id integer PRIMARY KEY, name text)")
        .await;
    let kind = |r: larder::Result<SqlSource>| r.expect_err("refused").kind();
    assert_eq!(
        kind(db.source("nope", "id", None).await),
        ErrorKind::Schema(SchemaPart::Table)
    );
    assert_eq!(
        kind(db.source("users", "uid", None).await),
        ErrorKind::Schema(SchemaPart::Key)
    );
    assert_eq!(
        kind(db.source("users", "id", Some(&["id", "nickname"])).await),
        ErrorKind::Schema(SchemaPart::Column)
    );
    assert_eq!(
        kind(db.source("users", "id", Some(&["na\"me"])).await),
        ErrorKind::Schema(SchemaPart::Column)
    );
    match db.source("users", "uid", None).await {
        Err(Error::Schema { column, .. }) => assert_eq!(column.as_deref(), Some("uid")),
        other => panic!("{other:?}"),
    }
    db.close().await;
}

#[tokio::test]
async fn postgres_schema_errors_name_the_part() {
    schema_errors_name_the_part(Db::pg().await).await;
}

#[tokio::test]
async fn sqlite_schema_errors_name_the_part() {
    schema_errors_name_the_part(Db::sqlite().await).await;
}

/// The setting a builder refuses, and why.
fn refused_setting(
    configure: impl FnOnce(larder::CacheBuilder<u64, String>) -> larder::CacheBuilder<u64, String>,
) -> (&'static str, String) {
    let err = configure(Cache::<u64, String>::builder().entity("e"))
        .validate()
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidSetting);
    match err {
        Error::InvalidSetting { setting, reason } => (setting, reason),
        other => panic!("{other:?}"),
    }
}

#[test]
fn refused_settings_name_the_setting() {
    let back = |wb: WriteBackOptions| {
        move |b: larder::CacheBuilder<u64, String>| b.write_policy(WritePolicy::Back(wb))
    };
    let (setting, reason) = refused_setting(back(WriteBackOptions {
        batch: WriteBackOptions::MAX_BATCH + 1,
        ..WriteBackOptions::default()
    }));
    assert_eq!(
        (setting, reason.as_str()),
        ("write_back.batch", "must be at most 10000")
    );
    let (setting, _) = refused_setting(back(WriteBackOptions {
        flush_lease: Duration::from_millis(99),
        ..WriteBackOptions::default()
    }));
    assert_eq!(setting, "write_back.flush_lease");
    let (setting, _) = refused_setting(|b| {
        b.near(NearOptions {
            ttl: Duration::ZERO,
            ..NearOptions::default()
        })
    });
    assert_eq!(setting, "near.ttl");
    assert_eq!(refused_setting(|b| b.ttl(Duration::ZERO)).0, "ttl");
    assert_eq!(refused_setting(|b| b.jitter(1.0)).0, "jitter");
    assert_eq!(refused_setting(|b| b.shards(0)).0, "shards");
    assert_eq!(
        refused_setting(|b| b.lease_ttl(Duration::from_secs(1))).0,
        "load_timeout",
        "the default load_timeout (2 s) does not fit in the lease"
    );
    assert_eq!(
        refused_setting(|b| b.wait_timeout(Duration::from_secs(9))).0,
        "wait_timeout"
    );
    // The limits themselves are accepted.
    Cache::<u64, String>::builder()
        .entity("e")
        .write_policy(WritePolicy::Back(WriteBackOptions {
            batch: WriteBackOptions::MAX_BATCH,
            flush_lease: WriteBackOptions::MIN_FLUSH_LEASE,
            ..WriteBackOptions::default()
        }))
        .near(NearOptions::default())
        .validate()
        .expect("every default and limit is valid");
}
