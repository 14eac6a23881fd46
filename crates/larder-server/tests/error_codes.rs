//! HTTP statuses and codes come from the library's `Error::kind()`: a
//! unique violation is 409 `conflict`, a tag the library refuses is 400
//! `bad_request`, and no answer leaks the database's text.

mod support;

use larder_server::http::app;
use support::{get, unique, write, Pg};

#[tokio::test]
async fn a_unique_violation_is_409_conflict_and_a_bad_tag_400() {
    let mut pg = Pg::connect().await;
    let t = unique("codes");
    pg.exec(
        &t,
        "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, email text UNIQUE); \
         INSERT INTO {t} (id, name, email) VALUES (1, 'ada', 'ada@x');",
    )
    .await;
    let toml = support::pg_config(
        &unique("t"),
        &format!("[[entity]]\nname = \"people\"\ntable = \"{t}\"\ntags = [\"name:{{name}}\"]\n"),
    );
    let app = app(support::state(&toml).await);

    let a = write(
        &app,
        "PUT",
        "/v1/people/2",
        r#"{"name": "bo", "email": "ada@x"}"#,
    )
    .await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (409, "conflict"));
    let message = a.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(message.contains("unique"), "{message}");
    assert!(
        !message.contains(&t) && !message.contains("23505"),
        "no SQL details: {message}"
    );

    // A tag over the library's limit: refused when asked for, and the
    // engine's `InvalidTag` for a row whose `name:{name}` tag is too long
    // is 400 too (the row is stored, but cannot be cached).
    let long = "n".repeat(larder::MAX_TAG_LEN);
    let a = write(&app, "POST", &format!("/v1/tags/x{long}/invalidate"), "").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_request"));
    sqlx::query(&format!("INSERT INTO {t} (id, name) VALUES (3, '{long}')"))
        .execute(&pg.pool)
        .await
        .expect("insert");
    let a = get(&app, "/v1/people/3").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_request"));
    let message = a.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(message.contains("tag"), "{message}");

    // The refused write is not served.
    assert_eq!(get(&app, "/v1/people/2").await.status.as_u16(), 404);
    assert_eq!(get(&app, "/v1/people/1").await.json()["email"], "ada@x");
}
