//! `?fields=a,b`: some columns of a row, on one read and on a multi-get,
//! against a real PostgreSQL table and the shared Redis.

mod support;

use larder_server::http::app;
use serde_json::json;
use support::{get, send, unique, Pg};

const TABLE: &str = "CREATE TABLE {t} (id integer PRIMARY KEY, name text NOT NULL, \
     email text, big bigint, attrs jsonb, price numeric(8,2)); \
     INSERT INTO {t} VALUES (1, 'ann', 'ann@x', 9007199254740993, '{\"a\": []}', 1.50), \
     (2, 'bob', NULL, NULL, NULL, NULL);";

async fn service(extra: &str) -> (Pg, axum::Router, String) {
    let mut pg = Pg::connect().await;
    let t = unique("fields");
    pg.exec(&t, TABLE).await;
    let toml = support::pg_config(
        &unique("fields"),
        &format!("[[entity]]\nname = \"people\"\ntable = \"{t}\"\n{extra}"),
    );
    (pg, app(support::state(&toml).await), t)
}

#[tokio::test]
async fn a_read_with_fields_answers_just_those_columns_in_order() {
    let (_pg, app, _t) = service("").await;
    // Miss then hit: both projected the same.
    for outcome in ["miss", "hit"] {
        let a = get(&app, "/v1/people/1?fields=email,name").await;
        assert_eq!(a.status.as_u16(), 200);
        assert_eq!(a.x_cache(), outcome);
        assert_eq!(
            String::from_utf8_lossy(&a.body),
            r#"{"email":"ann@x","name":"ann"}"#
        );
    }
    // Numbers are copied as their bytes: beyond 2^53 and numeric exactly.
    let a = get(&app, "/v1/people/1?fields=big,price,attrs").await;
    assert_eq!(
        String::from_utf8_lossy(&a.body),
        r#"{"big":9007199254740993,"price":1.50,"attrs":{"a": []}}"#
    );
    // A NULL column is present as null; duplicates collapse; the key may be asked.
    let a = get(&app, "/v1/people/2?fields=id,email,email,big").await;
    assert_eq!(a.json(), json!({ "id": 2, "email": null, "big": null }));
    assert_eq!(
        a.json().as_object().map(|o| o.len()),
        Some(3),
        "{:?}",
        a.body
    );
    // Without fields: the whole row, as before.
    let a = get(&app, "/v1/people/2").await;
    assert_eq!(a.json().as_object().map(|o| o.len()), Some(6));
    // An absent row is still 404.
    let a = get(&app, "/v1/people/3?fields=name").await;
    assert_eq!(a.status.as_u16(), 404);
}

#[tokio::test]
async fn an_unknown_or_empty_field_is_refused() {
    let (_pg, app, _t) = service("").await;
    let a = get(&app, "/v1/people/1?fields=name,nope").await;
    assert_eq!(a.status.as_u16(), 400);
    assert_eq!(a.code(), "unknown_column");
    assert!(a.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("nope")));
    for bad in ["fields=", "fields=name,", "fields", "fields=name&fields=id"] {
        let a = get(&app, &format!("/v1/people/1?{bad}")).await;
        assert_eq!(a.status.as_u16(), 400, "{bad}");
        assert_eq!(a.code(), "bad_request", "{bad}");
    }
    let a = get(&app, "/v1/people?ids=1,2&fields=nope").await;
    assert_eq!(a.status.as_u16(), 400);
    assert_eq!(a.code(), "unknown_column");
}

#[tokio::test]
async fn a_multi_get_with_fields_projects_every_row() {
    let (_pg, app, _t) = service("").await;
    let a = get(&app, "/v1/people?ids=1,2,3&fields=name,email").await;
    assert_eq!(
        a.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        a.json(),
        json!({
            "items": {
                "1": { "name": "ann", "email": "ann@x" },
                "2": { "name": "bob", "email": null }
            },
            "missing": ["3"]
        })
    );
}

#[tokio::test]
async fn a_query_entity_takes_fields_of_its_columns() {
    let mut pg = Pg::connect().await;
    let t = unique("fields_q");
    pg.exec(&t, TABLE).await;
    let toml = support::pg_config(
        &unique("fields_q"),
        &format!(
            "[[entity]]\nname = \"loud\"\nquery = \"SELECT id, upper(name) AS shout, email FROM {t}\"\n"
        ),
    );
    let app = app(support::state(&toml).await);
    let a = get(&app, "/v1/loud/1?fields=shout").await;
    assert_eq!(a.json(), json!({ "shout": "ANN" }));
    let a = get(&app, "/v1/loud/1?fields=name").await;
    assert_eq!(a.code(), "unknown_column");
}

#[tokio::test]
async fn the_openapi_document_describes_fields() {
    let (_pg, app, _t) = service("").await;
    let doc = send(&app, "GET", "/v1/openapi.json", &[], None)
        .await
        .json();
    for path in ["/v1/people/{id}", "/v1/people"] {
        let params = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let f = params
            .iter()
            .find(|p| p["name"] == "fields")
            .unwrap_or_else(|| panic!("{path} lacks `fields`: {params:?}"));
        assert_eq!(f["in"], "query");
        assert_eq!(f["explode"], false);
        assert_eq!(
            f["schema"]["items"]["enum"],
            json!(["id", "name", "email", "big", "attrs", "price"])
        );
    }
    let schemas = &doc["components"]["schemas"];
    let fields = &schemas["PeopleFields"];
    assert!(fields["required"].is_null(), "{fields}");
    assert_eq!(fields["additionalProperties"], false);
    assert_eq!(
        fields["properties"]["email"],
        schemas["PeopleRow"]["properties"]["email"]
    );
    let ok = &doc["paths"]["/v1/people/{id}"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"]["anyOf"];
    assert_eq!(ok[1]["$ref"], "#/components/schemas/PeopleFields");
}

#[tokio::test]
async fn a_hash_entity_answers_fields_from_its_hash() {
    let (_pg, app, _t) = service("representation = \"hash\"\n").await;
    let whole = get(&app, "/v1/people/1").await;
    assert_eq!(whole.x_cache(), "miss");
    assert_eq!(
        whole.json(),
        json!({ "id": 1, "name": "ann", "email": "ann@x", "big": 9007199254740993_u64,
                "attrs": { "a": [] }, "price": 1.50 })
    );
    let a = get(&app, "/v1/people/1?fields=email,big,name").await;
    assert_eq!(a.x_cache(), "hit");
    assert_eq!(
        String::from_utf8_lossy(&a.body),
        r#"{"email":"ann@x","big":9007199254740993,"name":"ann"}"#
    );
    // NULL columns are null; a miss through fields loads the whole row once.
    let a = get(&app, "/v1/people/2?fields=email,attrs").await;
    assert_eq!(a.x_cache(), "miss");
    assert_eq!(a.json(), json!({ "email": null, "attrs": null }));
    let a = get(&app, "/v1/people/2?fields=name").await;
    assert_eq!((a.x_cache(), a.json()), ("hit", json!({ "name": "bob" })));
    let a = get(&app, "/v1/people?ids=1,2&fields=name").await;
    assert_eq!(
        a.json()["items"],
        json!({ "1": { "name": "ann" }, "2": { "name": "bob" } })
    );
    // A write-through PATCH sets the hash to the returned row.
    let w = support::write(&app, "PATCH", "/v1/people/2", r#"{"email": "b@x"}"#).await;
    assert_eq!(w.status.as_u16(), 200);
    let a = get(&app, "/v1/people/2?fields=email,name").await;
    assert_eq!(
        (a.x_cache(), a.json()),
        ("hit", json!({ "email": "b@x", "name": "bob" }))
    );
    let a = get(&app, "/v1/people/1?fields=nope").await;
    assert_eq!(a.code(), "unknown_column");
}

#[tokio::test]
async fn hash_with_write_back_parses_and_a_changed_representation_is_refused() {
    let toml = support::pg_config(
        &unique("fields_wb"),
        "[[entity]]\nname = \"p\"\ntable = \"t\"\nrepresentation = \"hash\"\nwrite = \"back\"\n",
    );
    larder_server::config::Config::parse(&toml, "test.toml")
        .expect("write-back on a hash entity is accepted");

    let mut pg = Pg::connect().await;
    let t = unique("fields_layout");
    pg.exec(&t, TABLE).await;
    let prefix = unique("fields_layout");
    let config = |rep: &str| {
        support::pg_config(
            &prefix,
            &format!(
                "[[entity]]\nname = \"people\"\ntable = \"{t}\"\nrepresentation = \"{rep}\"\n"
            ),
        )
    };
    drop(support::state(&config("string")).await);
    let parsed =
        larder_server::config::Config::parse(&config("hash"), "test.toml").expect("parses");
    let err = larder_server::serve::start(parsed)
        .await
        .expect_err("a hash start over a string layout is refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("entity[0].representation"),
        "the error names the setting: {text}"
    );
}
