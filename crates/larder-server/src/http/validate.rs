//! Request bodies checked before anything is written.
//!
//! Why in the service: the HTTP API promises distinct codes — `bad_request`,
//! `unknown_column`, `missing_column`, `type_mismatch` — while the library
//! reports every refused row as one `Error::InvalidRow` whose only
//! distinction is its message text. So the service decides unknown, absent
//! and null columns itself from `SqlSource::columns()` (names, NOT NULL,
//! defaults), and leaves only the JSON-type check to the library's
//! `validate_row`, whose remaining refusals are type mismatches: wrong JSON
//! types, NUL characters in strings, integers beyond their column's range
//! and strings longer than their `varchar(n)`. Ids are canonicalised by the
//! library before this runs, and refused (`bad_id`) if they cannot be keys.

use super::error::{clip, unsupported_media_type, ApiError};
use crate::serve::{Entity, EntitySource};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use serde_json::{Map, Value};

/// The body of a write: JSON object, within the body limit, and not sent
/// with a non-JSON content type (no content type is accepted as JSON).
pub fn json_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !(mime == "application/json" || mime.ends_with("+json")) {
            return Err(unsupported_media_type());
        }
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            super::error::payload_too_large()
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// Whether a write replaces the row (PUT) or merges into it (PATCH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// PUT: absent NOT NULL columns without a default are refused (a new
    /// row could not be created without them); other absent columns keep
    /// their stored value, or take their default (NULL without one) in a
    /// new row.
    Replace,
    /// PATCH: only the given columns are checked; at least one is needed.
    Merge,
}

/// Checks a row for `id` (canonical) of a table entity. See the module docs.
pub fn check_row(
    entity: &Entity,
    id: &str,
    row: &Map<String, Value>,
    write: Write,
) -> Result<(), ApiError> {
    let key = entity.key_column();
    let columns = entity.columns();
    let mut sets_something = false;
    for (name, value) in row {
        if name == key {
            let given = match value {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            let same = given
                .as_deref()
                .and_then(|g| entity.cache.id_of(g).ok())
                .is_some_and(|g| g == id);
            if !same {
                return Err(ApiError::bad_request(format!(
                    "the body's key column `{key}` is {}, but the path's id is {id:?}: they must be equal",
                    clip(&value.to_string())
                )));
            }
            continue;
        }
        let Some(col) = columns.iter().find(|c| c.name == *name) else {
            return Err(unknown_column(entity, name));
        };
        if value.is_null() && col.not_null {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "type_mismatch",
                format!("column `{name}` is NOT NULL: null is not allowed"),
            ));
        }
        sets_something = true;
    }
    match write {
        Write::Replace => {
            if let Some(c) = columns
                .iter()
                .find(|c| !c.is_key && c.not_null && !c.has_default && !row.contains_key(&c.name))
            {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "missing_column",
                    format!(
                        "column `{}` is NOT NULL and has no default: the body must give it",
                        c.name
                    ),
                ));
            }
        }
        Write::Merge if !sets_something => {
            return Err(ApiError::bad_request(
                "nothing to patch: give at least one column other than the key",
            ));
        }
        Write::Merge => {}
    }
    if let EntitySource::Table(source) = &entity.source {
        source
            .validate_row(id, row)
            .map_err(|e| ApiError::from_engine(entity.name(), &e))?;
    }
    Ok(())
}

/// Checks the body of an increment, `{"column": "views", "by": 1}`: both
/// present and nothing else; `column` names a column of the entity (else
/// 400 `unknown_column`); `by` is a JSON number (else 400
/// `type_mismatch`). A whole number written with a fraction or exponent
/// (`1.0`, `1e2`) for an integer column counts as that integer. Whether
/// the column is numeric, and `by` fits it, the library decides (400
/// `type_mismatch`).
pub fn check_incr(
    entity: &Entity,
    body: &Map<String, Value>,
) -> Result<(String, serde_json::Number), ApiError> {
    if let Some(other) = body.keys().find(|k| *k != "column" && *k != "by") {
        return Err(ApiError::bad_request(format!(
            "unknown field `{}`: an increment is {{\"column\": <name>, \"by\": <number>}}",
            clip(other)
        )));
    }
    let column = match body.get("column") {
        Some(Value::String(c)) => c.clone(),
        Some(_) => return Err(ApiError::bad_request("`column` must be a string")),
        None => {
            return Err(ApiError::bad_request(
                "`column` is missing: the column to increment",
            ))
        }
    };
    let columns = entity.columns();
    let Some(col) = columns.iter().find(|c| c.name == column) else {
        return Err(unknown_column(entity, &column));
    };
    let by = match body.get("by") {
        Some(Value::Number(n)) => n.clone(),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "type_mismatch",
                format!("`by` must be a number, got {}", clip(&other.to_string())),
            ))
        }
        None => return Err(ApiError::bad_request("`by` is missing: the amount to add")),
    };
    let by = match (col.int_range(), whole_number(&by)) {
        (Some(_), Some(i)) => serde_json::Number::from(i),
        _ => by,
    };
    Ok((column, by))
}

/// The integer a number stands for when it is written as a float with no
/// fractional part (`7.0`, `1e3`) within `i64`'s range: JSON Schema, and so
/// the OpenAPI document, calls it an integer. `None` for a number written
/// as an integer, a fraction, or a float beyond the range.
pub fn whole_number(n: &serde_json::Number) -> Option<i64> {
    // Exactly the f64 values inside i64's range.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if n.is_i64() || n.is_u64() {
        return None;
    }
    let f = n.as_f64()?;
    if f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f) {
        // In range and whole, so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        let i = f as i64;
        Some(i)
    } else {
        None
    }
}

/// 400 `unknown_column`, listing the entity's columns.
fn unknown_column(entity: &Entity, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unknown_column",
        format!(
            "unknown column `{}` (entity `{}` has: {})",
            clip(name),
            entity.name(),
            entity
                .columns()
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}
