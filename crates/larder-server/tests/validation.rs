//! Validation before the database, through the real router against real
//! Redis and PostgreSQL: ids and values a column cannot hold, and tags over
//! the tag limit, are 400 with their code and nothing is written; and PUT's
//! rule for absent columns.

mod support;

use larder_server::http::app;
use support::{get, send, unique, write, Pg};

const LIMITS: &str =
    "CREATE TABLE {t} (id smallint PRIMARY KEY, n integer, s varchar(3), tx text, \
                      d int DEFAULT 7, j jsonb); \
                      INSERT INTO {t} (id, n, s, tx) VALUES (1, 1, 'abc', 'x');";

#[tokio::test]
async fn ids_values_and_tags_the_database_cannot_hold_are_refused_before_it() {
    let mut pg = Pg::connect().await;
    let t = unique("lim");
    pg.exec(&t, LIMITS).await;
    let k = unique("limk");
    pg.exec(&k, "CREATE TABLE {t} (id text PRIMARY KEY, v text)")
        .await;
    let toml = support::pg_config(
        &unique("v"),
        &format!(
            "[[entity]]\nname = \"lim\"\ntable = \"{t}\"\n[[entity]]\nname = \"tk\"\ntable = \"{k}\"\n"
        ),
    );
    let app = app(support::state(&toml).await);
    let snapshot = |table: String| {
        let pg = &pg;
        async move {
            pg.scalar_text(&format!(
                "SELECT json_agg(r ORDER BY id)::text FROM {table} r"
            ))
            .await
        }
    };
    let (before, before_k) = (snapshot(t.clone()).await, snapshot(k.clone()).await);

    let cases: &[(&str, &str, &str, &str)] = &[
        ("GET", "/v1/lim/40000", "", "bad_id"),
        ("GET", "/v1/lim/-32769", "", "bad_id"),
        ("PUT", "/v1/lim/40000", r#"{"n": 1}"#, "bad_id"),
        ("GET", "/v1/tk/a%00b", "", "bad_id"),
        ("PUT", "/v1/tk/a%00b", r#"{"v": "x"}"#, "bad_id"),
        ("PUT", "/v1/lim/1", r#"{"n": 2147483648}"#, "type_mismatch"),
        ("PUT", "/v1/lim/1", r#"{"n": -2147483649}"#, "type_mismatch"),
        (
            "PATCH",
            "/v1/lim/1",
            r#"{"n": 99999999999}"#,
            "type_mismatch",
        ),
        ("PUT", "/v1/lim/1", r#"{"s": "abcd"}"#, "type_mismatch"),
        ("PATCH", "/v1/lim/1", r#"{"s": "äöüß"}"#, "type_mismatch"),
        ("PUT", "/v1/lim/1", r#"{"tx": "a\u0000b"}"#, "type_mismatch"),
        (
            "PUT",
            "/v1/lim/2",
            r#"{"j": {"k": ["\u0000"]}}"#,
            "type_mismatch",
        ),
        ("PUT", "/v1/tk/a", r#"{"v": "\u0000"}"#, "type_mismatch"),
    ];
    for (method, path, body, code) in cases {
        let a = if *method == "GET" {
            get(&app, path).await
        } else {
            write(&app, method, path, body).await
        };
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (400, *code),
            "{method} {path} {body}: {:?}",
            a.json()
        );
        if *method == "GET" {
            let message = a.json()["error"]["message"].to_string();
            assert!(!message.contains("row"), "a GET is no row write: {message}");
        }
    }
    let long_tag = "t".repeat(larder::MAX_TAG_LEN + 1);
    let a = send(
        &app,
        "POST",
        &format!("/v1/tags/{long_tag}/invalidate"),
        &[],
        None,
    )
    .await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_request"));
    assert_eq!(
        snapshot(t.clone()).await,
        before,
        "nothing reached the table"
    );
    assert_eq!(
        snapshot(k.clone()).await,
        before_k,
        "nothing reached the table"
    );

    // Within the limits: characters, not bytes.
    let a = write(&app, "PUT", "/v1/lim/1", r#"{"s": "äöü", "n": 2147483647}"#).await;
    assert_eq!(a.status.as_u16(), 200, "{:?}", a.json());
}

#[tokio::test]
async fn put_keeps_the_stored_value_of_absent_columns_with_or_without_a_default() {
    let mut pg = Pg::connect().await;
    let t = unique("putr");
    pg.exec(&t, LIMITS).await;
    let toml = support::pg_config(
        &unique("p"),
        &format!("[[entity]]\nname = \"lim\"\ntable = \"{t}\"\n"),
    );
    let app = app(support::state(&toml).await);
    let a = write(&app, "PUT", "/v1/lim/2", r#"{"n": 5}"#).await;
    assert_eq!(a.status.as_u16(), 200, "{:?}", a.json());
    assert_eq!(a.json()["d"], 7, "a new row takes the default");
    assert!(
        a.json()["tx"].is_null(),
        "a new row: NULL without a default"
    );
    let a = write(&app, "PUT", "/v1/lim/2", r#"{"tx": "kept", "d": 8}"#).await;
    assert_eq!(a.status.as_u16(), 200);
    let a = write(&app, "PUT", "/v1/lim/2", r#"{"n": 6}"#).await;
    assert_eq!(a.status.as_u16(), 200, "{:?}", a.json());
    let row = a.json();
    assert_eq!(row["tx"], "kept", "no default: the stored value is kept");
    assert_eq!(row["d"], 8, "a default: the stored value is kept");
    assert_eq!(row["n"], 6);
    let stored = pg
        .scalar_text(&format!("SELECT tx || ',' || d FROM {t} WHERE id = 2"))
        .await;
    assert_eq!(stored.as_deref(), Some("kept,8"));
}
