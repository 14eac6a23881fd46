//! The OpenAPI paths of the leaderboards (see [`super::super::boards`]):
//! a child of `openapi` so it shares that module's builders, kept apart
//! because a board's routes are a concept of their own.

use super::{error_response, json_response, op, path_param, responses, MAX_ID_CHARS, NO_NUL};
use crate::serve::AppState;
use serde_json::{json, Map, Value};

/// What the document says about one served leaderboard.
#[derive(Debug, Clone)]
pub struct BoardDoc<'a> {
    /// The board's name.
    pub name: &'a str,
    /// Whether scores are integers (else double precision).
    pub integer: bool,
    /// Whether writes are accepted.
    pub writable: bool,
    /// Whether writes are written back (answered 202 once queued).
    pub write_back: bool,
    /// Whether reads need no token.
    pub public_reads: bool,
}

impl<'a> BoardDoc<'a> {
    /// The document's view of a served leaderboard.
    pub fn of(state: &AppState, b: &'a crate::http::boards::BoardEntry) -> Self {
        BoardDoc {
            name: &b.config.name,
            integer: b.cache.score_kind() == larder::ScoreKind::Integer,
            writable: b.cache.is_writable(),
            write_back: b.cache.is_write_back(),
            public_reads: state.config().auth.public_reads || b.config.public_reads,
        }
    }
}

/// Adds the paths of every leaderboard to a document made by
/// [`super::build`]: a top-N page, a member's score and rank, set, remove,
/// increment and invalidate.
pub fn add_boards(doc: &mut Value, boards: &[BoardDoc<'_>]) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for b in boards {
        let owner = || {
            path_param(
                "owner",
                "The owner whose leaderboard this is (canonicalised).",
                json!({ "type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": NO_NUL }),
            )
        };
        let member = || {
            path_param(
                "member",
                "A member of the leaderboard.",
                json!({ "type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": NO_NUL }),
            )
        };
        let score = if b.integer {
            json!({ "type": "integer", "minimum": -(1i64 << 53), "maximum": 1i64 << 53 })
        } else {
            json!({ "type": "number" })
        };
        let ranked = json!({
            "type": "object", "required": ["member", "score", "rank"],
            "properties": {
                "member": { "type": "string" },
                "score": score.clone(),
                "rank": { "type": "integer", "minimum": 1, "description": "1 for the highest score; ties in descending byte order of the member." }
            }
        });
        let x_cache = json!({ "X-Cache": { "description": "hit, miss, stale (past its ttl, inside the stale window, while one refresh runs), bypass (the store is down) or db (above max_members: from the database).", "schema": { "type": "string", "enum": ["hit", "miss", "stale", "bypass", "db"] } } });
        let base = format!("/v1/{}/{{owner}}", b.name);

        let mut page = op(
            "GET",
            "/v1/{entity}/{id}",
            b.public_reads,
            &format!(
                "The `{}` leaderboard of an owner: highest score first, ties in descending byte order of the member, with the count.",
                b.name
            ),
            vec![
                owner(),
                json!({ "name": "offset", "in": "query", "required": false, "description": "Members to skip. Default 0.", "schema": { "type": "integer", "minimum": 0, "maximum": larder::MAX_BOARD_OFFSET } }),
                json!({ "name": "limit", "in": "query", "required": false, "description": "Members per page. Default 10.", "schema": { "type": "integer", "minimum": 0, "maximum": larder::MAX_BOARD_PAGE } }),
            ],
            responses(&[
                (
                    "200",
                    json!({ "description": "The page.", "headers": x_cache.clone(), "content": { "application/json": { "schema": {
                        "type": "object", "required": ["count", "items"],
                        "properties": {
                            "count": { "type": "integer", "minimum": 0 },
                            "items": { "type": "array", "items": ranked.clone() }
                        }
                    } } } }),
                ),
                ("400", error_response("bad_request (offset, limit) or bad_id.")),
                ("404", error_response("unknown_entity.")),
                ("503", error_response("unavailable: the database is down.")),
            ]),
        );
        page["operationId"] = json!(format!("get_board_{}", b.name));
        paths.insert(base.clone(), json!({ "get": page }));

        let mut invalidate = op(
            "POST",
            "/v1/{entity}/{id}/invalidate",
            b.public_reads,
            "Drop the owner's cached leaderboard; the next read loads it.",
            vec![owner()],
            responses(&[
                ("204", json!({ "description": "Done." })),
                ("400", error_response("bad_id.")),
                ("503", error_response("unavailable: the store is down.")),
            ]),
        );
        invalidate["operationId"] = json!(format!("invalidate_board_{}", b.name));
        paths.insert(format!("{base}/invalidate"), json!({ "post": invalidate }));
        paths.insert(
            format!("/v1/_admin/{}/purge", b.name),
            json!({ "post": crate::http::openapi::collection_purge("leaderboard", b.name) }),
        );

        let route = "/v1/{entity}/{id}/members/{member}";
        let mut item = Map::new();
        let mut get = op(
            "GET",
            route,
            b.public_reads,
            "A member's score and rank.",
            vec![owner(), member()],
            responses(&[
                (
                    "200",
                    json!({ "description": "The member.", "headers": x_cache, "content": { "application/json": { "schema": ranked } } }),
                ),
                ("400", error_response("bad_id.")),
                (
                    "404",
                    error_response("unknown_entity, or not a member (not_found)."),
                ),
                ("503", error_response("unavailable: the database is down.")),
            ]),
        );
        get["operationId"] = json!(format!("get_board_member_{}", b.name));
        item.insert("get".into(), get);

        let written = json_response(
            "The member and its score as the database stored it.",
            json!({ "type": "object", "required": ["member", "score"], "properties": { "member": { "type": "string" }, "score": score.clone() } }),
        );
        let mut refusals = vec![
            (
                "400",
                error_response(
                    "bad_id; bad_request (not a JSON object), unknown_column, missing_column, or type_mismatch (not a number of the score column's type, or a result beyond ±2^53 on an integer column).",
                ),
            ),
            ("404", error_response("unknown_entity.")),
            (
                "503",
                error_response("unavailable: the store or the database is down."),
            ),
        ];
        if !b.writable {
            refusals.push((
                "405",
                error_response("method_not_allowed: the leaderboard is read-only."),
            ));
        }
        let body = |field: &str, what: &str| {
            json!({ "required": true, "description": what, "content": { "application/json": { "schema": {
                "type": "object", "required": [field], "additionalProperties": false,
                "properties": { field: score.clone() }
            } } } })
        };
        // Write-back: 202 once the durable store holds the write.
        let queued = json_response(
            "Queued (write-back): the member and its score as the cache holds it now (the flusher writes it to the database exactly once).",
            json!({ "type": "object", "required": ["queued", "member", "score"], "properties": {
                "queued": { "type": "boolean", "const": true },
                "member": { "type": "string" }, "score": score.clone() } }),
        );
        let (write_code, written) = if b.write_back {
            ("202", queued)
        } else {
            ("200", written)
        };
        let mut put_items = vec![(write_code, written.clone())];
        put_items.extend(refusals.iter().cloned());
        let mut put = op(
            "PUT",
            route,
            false,
            "Set a member's score, creating it (the database first, then ZADD of the stored score).",
            vec![owner(), member()],
            responses(&put_items),
        );
        put["requestBody"] = body("score", "The absolute score.");
        put["operationId"] = json!(format!("set_score_{}", b.name));
        item.insert("put".into(), put);
        let removed = if b.write_back {
            (
                "202",
                json_response(
                    "Queued (write-back): whether the member was there.",
                    json!({ "type": "object", "required": ["queued", "member", "removed"], "properties": {
                        "queued": { "type": "boolean", "const": true },
                        "member": { "type": "string" }, "removed": { "type": "boolean" } } }),
                ),
            )
        } else {
            ("204", json!({ "description": "Removed." }))
        };
        let mut del_items = vec![removed];
        del_items.extend(refusals.iter().cloned().map(|(code, v)| {
            if code == "404" {
                (
                    "404",
                    error_response("unknown_entity, or not a member (not_found)."),
                )
            } else {
                (code, v)
            }
        }));
        let mut del = op(
            "DELETE",
            route,
            false,
            "Remove a member (the database first, then ZREM).",
            vec![owner(), member()],
            responses(&del_items),
        );
        del["operationId"] = json!(format!("remove_board_member_{}", b.name));
        item.insert("delete".into(), del);
        paths.insert(format!("{base}/members/{{member}}"), Value::Object(item));

        let mut incr_items = vec![(write_code, written)];
        incr_items.extend(refusals.iter().cloned());
        let mut incr = op(
            "POST",
            "/v1/{entity}/{id}/members/{member}/incr",
            false,
            "Add `by` to a member's score (an absent member starts at `by`): one upsert in the database, then ZADD of the score it returned.",
            vec![owner(), member()],
            responses(&incr_items),
        );
        incr["requestBody"] = body("by", "The delta.");
        incr["operationId"] = json!(format!("incr_{}", b.name));
        paths.insert(
            format!("{base}/members/{{member}}/incr"),
            json!({ "post": incr }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{access, build, Access};
    use super::*;
    use axum::http::Method;

    #[test]
    fn board_routes_are_documented_with_their_security() {
        for public in [false, true] {
            let mut doc = build(&[]);
            add_boards(
                &mut doc,
                &[BoardDoc {
                    name: "scores",
                    integer: true,
                    writable: true,
                    write_back: false,
                    public_reads: public,
                }],
            );
            let served = [
                ("GET", "/v1/{entity}/{id}", "/v1/scores/{owner}"),
                (
                    "POST",
                    "/v1/{entity}/{id}/invalidate",
                    "/v1/scores/{owner}/invalidate",
                ),
                (
                    "GET",
                    "/v1/{entity}/{id}/members/{member}",
                    "/v1/scores/{owner}/members/{member}",
                ),
                (
                    "PUT",
                    "/v1/{entity}/{id}/members/{member}",
                    "/v1/scores/{owner}/members/{member}",
                ),
                (
                    "DELETE",
                    "/v1/{entity}/{id}/members/{member}",
                    "/v1/scores/{owner}/members/{member}",
                ),
                (
                    "POST",
                    "/v1/{entity}/{id}/members/{member}/incr",
                    "/v1/scores/{owner}/members/{member}/incr",
                ),
            ];
            for (method, route, path) in served {
                assert!(
                    crate::http::ROUTES.contains(&(method, route)),
                    "{method} {route} is routed"
                );
                let op = &doc["paths"][path][method.to_ascii_lowercase()];
                assert!(op.is_object(), "{method} {path} is documented");
                let m: Method = method.parse().expect("method");
                let need = access(&m, route);
                let open = need == Access::RowRead && public;
                assert_eq!(
                    op.get("security") == Some(&json!([])),
                    open,
                    "{method} {path}"
                );
                assert_eq!(
                    op["responses"].get("401").is_some(),
                    !open,
                    "{method} {path}"
                );
                assert_eq!(
                    op["responses"].get("403").is_some(),
                    need == Access::Admin,
                    "{method} {path}"
                );
            }
        }
    }
}
