//! `?fields=a,b`: reading some columns of a row.
//!
//! Why here and not in the library: a `string` entity caches the whole row
//! as one JSON document, so its projection is done in process on the bytes
//! the cache answered (the row's values are copied as they are, no number
//! is re-encoded). The requested names are checked against the entity's
//! columns first — an unknown one is 400 `unknown_column`, so a typo is not
//! silently answered `null`.

use super::error::{clip, ApiError};
use crate::config::WriteMode;
use crate::serve::{Entity, EntitySource};
use axum::http::StatusCode;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// The most columns one `fields=` may name.
pub const MAX_FIELDS: usize = 1000;

/// The columns an entity's rows have: the table's, or the query's.
pub fn column_names(e: &Entity) -> Vec<&str> {
    match &e.source {
        EntitySource::Table(s) => s.columns().iter().map(|c| c.name.as_str()).collect(),
        EntitySource::Query(q) => q.column_names().iter().map(String::as_str).collect(),
    }
}

/// The columns `raw` (the value of `fields=`, not yet percent-decoded)
/// names, in the order given, duplicates collapsed. Empty, an unknown
/// column or too many: an error answer.
pub fn parse(e: &Entity, raw: &str) -> Result<Vec<String>, ApiError> {
    let known = column_names(e);
    let mut out: Vec<String> = Vec::new();
    for piece in raw.split(',') {
        let name = percent_encoding::percent_decode_str(piece)
            .decode_utf8()
            .map_err(|_| {
                ApiError::bad_request("a field is not valid UTF-8 once percent-decoded")
            })?;
        if name.is_empty() {
            return Err(ApiError::bad_request(
                "an empty field name: list the columns to read, ?fields=a,b",
            ));
        }
        if !known.contains(&name.as_ref()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_column",
                format!(
                    "unknown column `{}` (entity `{}` has: {})",
                    clip(&name),
                    e.name(),
                    known.join(", ")
                ),
            ));
        }
        if !out.iter().any(|o| *o == name) {
            out.push(name.into_owned());
        }
        if out.len() > MAX_FIELDS {
            return Err(ApiError::bad_request(format!(
                "too many fields: at most {MAX_FIELDS}"
            )));
        }
    }
    Ok(out)
}

/// The object of just `fields` of the JSON object `row`, in the order
/// given; each value is copied as its bytes. A column that is NULL is
/// `null`; a column the row lacks is `null` too, except under write-back,
/// where a row served as written may lack columns the database fills:
/// such a column is left out rather than claimed NULL.
pub fn project(e: &Entity, row: &[u8], fields: &[String]) -> Result<Vec<u8>, ApiError> {
    let map: HashMap<String, &RawValue> = serde_json::from_slice(row).map_err(|err| {
        tracing::error!(entity = e.name(), error = %err, "a cached row is not a JSON object");
        ApiError::internal()
    })?;
    let mut out = Vec::with_capacity(row.len().min(64 * fields.len() + 2));
    out.push(b'{');
    let mut first = true;
    for f in fields {
        let value = match map.get(f.as_str()) {
            Some(v) => v.get(),
            None if e.write == WriteMode::Back => continue,
            None => "null",
        };
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(
            serde_json::to_string(f)
                .unwrap_or_else(|_| "\"\"".into())
                .as_bytes(),
        );
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'}');
    Ok(out)
}
