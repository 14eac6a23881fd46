//! The OpenAPI document of a running service, typed from real PostgreSQL
//! tables, and requests it calls valid that the service must accept.

mod support;

use larder_server::http::app;
use serde_json::json;
use support::{send, unique, write, Pg};

const ITEMS: &str =
    "CREATE TABLE {t} (id integer PRIMARY KEY, name varchar(12) NOT NULL, note text, \
                     qty smallint NOT NULL DEFAULT 0, big bigint, price numeric(6,2), attrs jsonb, \
                     at timestamptz, day date, nums integer[], flag boolean NOT NULL); \
                     INSERT INTO {t} (id, name, flag) VALUES (1, 'one', true), (2, 'two', false);";

async fn service() -> (Pg, axum::Router) {
    let mut pg = Pg::connect().await;
    let items = unique("oa_items");
    let tokens = unique("oa_tokens");
    let labels = unique("oa_labels");
    pg.exec(&items, ITEMS).await;
    pg.exec(
        &tokens,
        "CREATE TABLE {t} (id uuid PRIMARY KEY, owner text NOT NULL)",
    )
    .await;
    pg.exec(
        &labels,
        "CREATE TABLE {t} (code varchar(8) PRIMARY KEY, title text)",
    )
    .await;
    let toml = support::pg_config(
        &unique("oa"),
        &format!(
            "[[entity]]\nname = \"items\"\ntable = \"{items}\"\n\
             [[entity]]\nname = \"tokens\"\ntable = \"{tokens}\"\n\
             [[entity]]\nname = \"labels\"\ntable = \"{labels}\"\nkey = \"code\"\nwrite = \"read-only\"\n"
        ),
    );
    (pg, app(support::state(&toml).await))
}

#[tokio::test]
async fn the_document_is_typed_from_the_tables() {
    let (_pg, app) = service().await;
    let doc = send(&app, "GET", "/v1/openapi.json", &[], None)
        .await
        .json();
    assert_eq!(doc["openapi"], "3.1.0");
    let param = |path: &str| doc["paths"][path]["get"]["parameters"][0]["schema"].clone();
    assert_eq!(
        param("/v1/items/{id}"),
        json!({ "type": "integer", "minimum": i32::MIN, "maximum": i32::MAX })
    );
    assert_eq!(param("/v1/tokens/{id}")["format"], "uuid");
    let code = param("/v1/labels/{id}");
    assert_eq!(
        (code["type"].as_str(), code["maxLength"].as_u64()),
        (Some("string"), Some(8))
    );
    let schemas = &doc["components"]["schemas"];
    let put = &schemas["ItemsPut"];
    assert_eq!(put["required"], json!(["name", "flag"]));
    let p = &put["properties"];
    assert_eq!(p["name"]["maxLength"], 12);
    assert_eq!(p["name"]["pattern"], "^[^\\u0000]*$");
    assert_eq!(p["note"]["type"], json!(["string", "null"]));
    assert_eq!(
        (p["qty"]["minimum"].as_i64(), p["qty"]["maximum"].as_i64()),
        (Some(-32768), Some(32767))
    );
    assert_eq!(p["big"]["type"], json!(["integer", "null"]));
    assert_eq!(p["price"]["maximum"].as_f64(), Some(9999.0));
    assert_eq!(
        p["attrs"]["anyOf"][0]["$ref"],
        "#/components/schemas/JsonDocument"
    );
    assert_eq!(p["at"]["format"], "date-time");
    assert_eq!(p["day"]["format"], "date");
    assert_eq!(
        p["nums"]["items"]["maximum"].as_i64(),
        Some(i32::MAX.into())
    );
    assert_eq!(p["flag"]["type"], "boolean");
    assert_eq!(
        schemas["ItemsRow"]["required"].as_array().map(Vec::len),
        Some(11)
    );
    let statuses = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let put_statuses = statuses("/v1/items/{id}", "put");
    for s in [
        "200", "400", "401", "403", "404", "409", "413", "415", "503",
    ] {
        assert!(
            put_statuses.contains(&s.to_owned()),
            "PUT lacks {s}: {put_statuses:?}"
        );
    }
    assert!(statuses("/v1/labels/{id}", "put").contains(&"405".to_owned()));
    assert!(statuses("/v1/items/{id}", "get").contains(&"401".to_owned()));
    assert!(!statuses("/v1/items/{id}", "get").contains(&"403".to_owned()));
}

#[tokio::test]
async fn requests_the_document_calls_valid_are_accepted() {
    let (_pg, app) = service().await;
    // `7.0` is an integer to JSON Schema.
    let a = write(
        &app,
        "PUT",
        "/v1/items/3",
        r#"{"name": "three", "flag": true, "qty": 7.0, "nums": [1.0, null, 2]}"#,
    )
    .await;
    assert_eq!(
        a.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["qty"], 7);
    assert_eq!(a.json()["nums"], json!([1, null, 2]));
    // A client that percent-encodes the separators of an integer id list.
    let a = send(&app, "GET", "/v1/items?ids=1%2C2,3", &[], None).await;
    assert_eq!(
        a.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let j = a.json();
    assert_eq!(j["missing"], json!([]));
    assert_eq!(j["items"]["2"]["name"], "two");
    assert_eq!(j["items"]["3"]["name"], "three");
    // A text key keeps its commas: `a,b` is one id.
    let a = send(&app, "GET", "/v1/labels?ids=a%2Cb,c", &[], None).await;
    assert_eq!(a.json()["missing"], json!(["a,b", "c"]));
}
