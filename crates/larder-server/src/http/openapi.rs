//! `GET /v1/openapi.json`: an OpenAPI 3 document of the API, written by hand.
//!
//! Why by hand: the API is small and its contract (codes, headers, which
//! routes are public) matters more than generated schemas; a test checks
//! that every route of [`super::ROUTES`] is documented.

use axum::Json;
use serde_json::{json, Map, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": { "type": "string" } })
}

fn op(summary: &str, public: bool, params: &[Value], responses: Value) -> Value {
    let mut o = json!({
        "summary": summary,
        "parameters": params,
        "responses": responses,
    });
    if public {
        o["security"] = json!([]);
    }
    o
}

/// The document.
pub fn build() -> Value {
    let entity = param("entity", "An entity name from the configuration.");
    let id = param(
        "id",
        "The row's id, canonicalised by the key column's type (007 is 7).",
    );
    let row = json!({ "$ref": "#/components/schemas/Row" });
    let body = json!({ "required": true, "content": { "application/json": { "schema": row } } });
    let x_cache = json!({
        "X-Cache": { "description": "Where the answer came from.", "schema": { "type": "string", "enum": ["l1", "hit", "stale", "negative", "miss", "bypass"] } }
    });
    let write_responses = json!({
        "200": json_response("The row as stored.", row.clone()),
        "202": json_response("Write-back: queued.", json!({ "type": "object", "properties": { "queued": { "type": "boolean" }, "id": { "type": "string" } } })),
        "400": error_response("bad_request, bad_id, unknown_column, type_mismatch or missing_column."),
        "401": error_response("unauthorized."),
        "404": error_response("unknown_entity, or (PATCH) not_found."),
        "405": error_response("method_not_allowed: a read-only entity."),
        "409": error_response("conflict: a unique, foreign-key or check constraint."),
        "413": error_response("payload_too_large."),
        "415": error_response("unsupported_media_type."),
        "503": error_response("unavailable."),
    });
    let mut put = op(
        "Replace (or create) a row.",
        false,
        &[entity.clone(), id.clone()],
        write_responses.clone(),
    );
    put["requestBody"] = body.clone();
    let mut patch = op(
        "Merge columns into an existing row (null sets NULL).",
        false,
        &[entity.clone(), id.clone()],
        write_responses,
    );
    patch["requestBody"] = body;
    let no_content = || json!({ "description": "Done." });
    let mut paths = Map::new();
    paths.insert("/health".into(), json!({ "get": op("Liveness: 200 while the process runs.", true, &[], json!({ "200": json_response("Alive.", json!({ "type": "object" })) })) }));
    paths.insert("/ready".into(), json!({ "get": op("Readiness.", true, &[], json!({
        "200": json_response("Reads can be served.", json!({ "type": "object", "properties": { "ready": { "type": "boolean" }, "degraded": { "type": "boolean" }, "store": { "type": "boolean" }, "database": { "type": "boolean" } } })),
        "503": json_response("Nothing can be served.", json!({ "type": "object" })),
    })) }));
    paths.insert("/metrics".into(), json!({ "get": op("Prometheus text format.", false, &[], json!({ "200": { "description": "Metrics.", "content": { "text/plain": { "schema": { "type": "string" } } } } })) }));
    paths.insert("/v1/openapi.json".into(), json!({ "get": op("This document.", true, &[], json!({ "200": json_response("OpenAPI 3.", json!({ "type": "object" })) })) }));
    paths.insert("/v1/stats".into(), json!({ "get": op("Per-entity reads by outcome, hit ratio, loads; Redis memory and evictions.", false, &[], json!({ "200": json_response("Stats.", json!({ "type": "object" })), "401": error_response("unauthorized.") })) }));
    paths.insert("/v1/{entity}".into(), json!({ "get": {
        "summary": "Read many rows: one MGET, at most one database query for the misses.",
        "security": [],
        "parameters": [entity.clone(), { "name": "ids", "in": "query", "required": true, "description": "Comma-separated ids (percent-encoded), at most 1000; duplicates collapse.", "schema": { "type": "string" } }],
        "responses": {
            "200": json_response("Rows found and ids missing.", json!({ "type": "object", "properties": { "items": { "type": "object", "additionalProperties": row.clone() }, "missing": { "type": "array", "items": { "type": "string" } } } })),
            "400": error_response("bad_request (no ids, more than 1000) or bad_id."),
            "404": error_response("unknown_entity."),
            "503": error_response("unavailable."),
        }
    } }));
    let mut get_row = op(
        "Read one row (read-through).",
        true,
        &[entity.clone(), id.clone()],
        json!({
            "200": { "description": "The row.", "headers": x_cache.clone(), "content": { "application/json": { "schema": row.clone() } } },
            "400": error_response("bad_id."),
            "404": error_response("not_found (remembered: negative) or unknown_entity."),
            "503": error_response("unavailable."),
        }),
    );
    if let Some(p) = get_row["parameters"].as_array_mut() {
        p.push(json!({ "name": "Cache-Control", "in": "header", "required": false, "description": "no-cache: read from the database and refresh the entry.", "schema": { "type": "string" } }));
    }
    paths.insert("/v1/{entity}/{id}".into(), json!({
        "get": get_row,
        "put": put,
        "patch": patch,
        "delete": op("Delete a row.", false, &[entity.clone(), id.clone()], json!({ "204": no_content(), "202": { "description": "Write-back: tombstone recorded." }, "404": error_response("not_found or unknown_entity."), "405": error_response("method_not_allowed: read-only.") })),
    }));
    paths.insert("/v1/{entity}/{id}/invalidate".into(), json!({ "post": op("Drop the cached entry; the next read is a miss.", false, &[entity.clone(), id], json!({ "204": no_content(), "404": error_response("unknown_entity."), "503": error_response("unavailable: the store is down.") })) }));
    paths.insert("/v1/tags/{tag}/invalidate".into(), json!({ "post": op("Invalidate every entry carrying a tag.", false, &[param("tag", "A tag, e.g. team:7.")], json!({ "204": no_content() })) }));
    paths.insert("/v1/_admin/{entity}/purge".into(), json!({ "post": op("Drop every entry of an entity.", false, std::slice::from_ref(&entity), json!({ "204": no_content(), "404": error_response("unknown_entity.") })) }));
    paths.insert("/v1/_admin/{entity}/warm".into(), json!({ "post": op("Load every row into the cache.", false, std::slice::from_ref(&entity), json!({ "200": json_response("Entries written.", json!({ "type": "object", "properties": { "warmed": { "type": "integer" }, "skipped": { "type": "integer" } } })), "404": error_response("unknown_entity.") })) }));
    paths.insert("/v1/_admin/{entity}/dead-letters".into(), json!({ "get": op("Dead letters of a write-back entity.", false, std::slice::from_ref(&entity), json!({ "200": json_response("Dead letters.", json!({ "type": "object" })), "404": error_response("unknown_entity, or not a write-back entity.") })) }));
    paths.insert("/v1/_admin/{entity}/dead-letters/retry".into(), json!({ "post": op("Retry the dead letters of a write-back entity.", false, &[entity], json!({ "200": json_response("Retried.", json!({ "type": "object" })), "404": error_response("unknown_entity, or not a write-back entity.") })) }));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "larder",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Read-through, write-through and write-back caching of database rows over HTTP. Every error is {\"error\": {\"code\", \"message\"}}."
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Row": { "type": "object", "description": "A row: column name to value.", "additionalProperties": true },
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": {
                    "code": { "type": "string", "enum": ["bad_request", "bad_id", "unknown_column", "type_mismatch", "missing_column", "unauthorized", "not_found", "unknown_entity", "method_not_allowed", "conflict", "payload_too_large", "unsupported_media_type", "unavailable", "internal"] },
                    "message": { "type": "string" }
                } } } }
            }
        }
    })
}

/// `GET /v1/openapi.json`.
pub async fn document() -> Json<Value> {
    Json(build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented() {
        let doc = super::build();
        for (method, path) in super::super::ROUTES {
            let op = &doc["paths"][*path][method.to_ascii_lowercase()];
            assert!(op.is_object(), "{method} {path} is not in the document");
            let public = op.get("security").is_some();
            assert_eq!(
                public,
                super::super::auth::is_public(&method.parse().expect("method"), path),
                "{method} {path}: public in the document and in auth differ"
            );
        }
    }
}
