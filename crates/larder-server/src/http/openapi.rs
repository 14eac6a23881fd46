//! `GET /v1/openapi.json`: an OpenAPI 3.1 document typed per entity.
//!
//! Why built from the running configuration: a client generated from the
//! document should know the data. Every configured entity gets its own
//! paths (`/v1/users/{id}`, `/v1/_admin/users/purge`, …), the id's type
//! (an integer key is an integer within its column's range, a uuid key
//! `format: uuid`, a text key a string without NUL), and its row schema
//! from the table's columns ([`column_schema`]): integer ranges,
//! `maxLength` of varchar, NUL excluded from every string (PostgreSQL
//! refuses it in text and jsonb), dates and timestamps PostgreSQL accepts,
//! nullability, and which columns PUT requires (NOT NULL without a
//! default). Each operation lists every status it can answer, 401 and 403
//! where a token is needed. A test checks that every route of
//! [`super::ROUTES`] is documented with the security [`super::auth`] applies.

#[path = "openapi_boards.rs"]
mod boards;
pub use self::boards::{add_boards, BoardDoc};

use super::auth::{access, Access};
use crate::config::WriteMode;
use crate::serve::{AppState, Entity};
use axum::extract::State;
use axum::http::Method;
use axum::Json;
use larder::source::ColumnInfo;
use serde_json::{json, Map, Value};

/// A string without NUL (PostgreSQL text and jsonb refuse `\u0000`).
const NO_NUL: &str = "^[^\\u0000]*$";

/// The longest text id in characters: ids are at most
/// [`larder::MAX_ID_LEN`] bytes of UTF-8, so this many characters always fit.
const MAX_ID_CHARS: usize = larder::MAX_ID_LEN / 4;

/// The longest tag in characters ([`larder::MAX_TAG_LEN`] bytes of UTF-8).
const MAX_TAG_CHARS: usize = larder::MAX_TAG_LEN / 4;

/// The type of an entity's id, as the document describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDoc {
    /// An integer key column, with its range.
    Integer {
        /// The smallest id.
        min: i64,
        /// The largest id.
        max: i64,
    },
    /// A uuid key column.
    Uuid,
    /// Any other key: a string of at most `max_chars` characters, no NUL.
    Text {
        /// The longest id in characters.
        max_chars: usize,
    },
}

/// What the document needs to know about one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDoc {
    /// The column name.
    pub name: String,
    /// The SQL type, as [`ColumnInfo::sql_type`].
    pub sql_type: String,
    /// NOT NULL.
    pub not_null: bool,
    /// The database fills it when an insert leaves it out.
    pub has_default: bool,
    /// The key column.
    pub is_key: bool,
    /// The range of an integer column ([`ColumnInfo::int_range`]).
    pub int_range: Option<(i64, i64)>,
    /// The length limit of a varchar column ([`ColumnInfo::max_chars`]).
    pub max_chars: Option<usize>,
}

impl From<&ColumnInfo> for ColumnDoc {
    fn from(c: &ColumnInfo) -> Self {
        ColumnDoc {
            name: c.name.clone(),
            sql_type: c.sql_type.clone(),
            not_null: c.not_null,
            has_default: c.has_default,
            is_key: c.is_key,
            int_range: c.int_range(),
            max_chars: c.max_chars(),
        }
    }
}

/// What the document needs to know about one entity.
#[derive(Debug, Clone)]
pub struct EntityDoc<'a> {
    /// The entity's name (its path segment).
    pub name: &'a str,
    /// Its effective write policy.
    pub write: WriteMode,
    /// The key column's name.
    pub key: &'a str,
    /// The id's type.
    pub key_type: KeyDoc,
    /// The served columns (empty for a query entity: rows are untyped).
    pub columns: Vec<ColumnDoc>,
    /// Whether its row reads need no token.
    pub public_reads: bool,
    /// Whether it holds rows as Redis hashes (`representation = "hash"`):
    /// under write-back, its integer and numeric(p, s) columns take
    /// increments.
    pub hash: bool,
}

impl<'a> EntityDoc<'a> {
    /// The description of a served entity.
    pub fn of(state: &AppState, e: &'a Entity) -> Self {
        let columns: Vec<ColumnDoc> = e.columns().iter().map(ColumnDoc::from).collect();
        let key = e.key_column();
        let key_col = columns.iter().find(|c| c.name == key);
        // The canonicaliser is the truth about which ids are accepted (it
        // also covers query entities and keys outside `columns`); the
        // column's limits, when served, narrow integers to their range.
        let accepts = |raw: &str| e.cache.id_of(raw).is_ok();
        let key_type = if accepts("1") && !accepts("x") {
            let (min, max) = key_col
                .and_then(|c| c.int_range)
                .unwrap_or((i64::MIN, i64::MAX));
            KeyDoc::Integer { min, max }
        } else if accepts("00000000-0000-0000-0000-000000000000") && !accepts("x") {
            KeyDoc::Uuid
        } else {
            let max_chars = key_col
                .and_then(|c| c.max_chars)
                .map_or(MAX_ID_CHARS, |n| n.min(MAX_ID_CHARS));
            KeyDoc::Text { max_chars }
        };
        EntityDoc {
            name: e.name(),
            write: e.write,
            key,
            key_type,
            columns,
            public_reads: state.config().auth.public_reads || e.config.public_reads,
            hash: e.config.representation == larder::Representation::Hash,
        }
    }
}

/// The range of an array's element type, by name: PostgreSQL's
/// `smallint`, `integer`, `bigint` (and `oid`). Scalar columns use
/// [`ColumnInfo::int_range`]; the library does not describe elements.
pub fn element_int_range(sql_type: &str) -> Option<(i64, i64)> {
    let t = sql_type.trim();
    match t {
        "smallint" | "int2" => return Some((i16::MIN.into(), i16::MAX.into())),
        "integer" | "int" | "int4" => return Some((i32::MIN.into(), i32::MAX.into())),
        "bigint" | "int8" => return Some((i64::MIN, i64::MAX)),
        "oid" => return Some((0, u32::MAX.into())),
        _ => {}
    }
    let t = t.to_ascii_lowercase();
    let integer =
        t.contains("int") && !["interval", "point", "range"].iter().any(|x| t.contains(x));
    integer.then_some((i64::MIN, i64::MAX))
}

/// The length limit of an array's element type, by name: `character
/// varying(n)`, `character(n)` (characters). Scalar columns use
/// [`ColumnInfo::max_chars`].
pub fn element_max_chars(sql_type: &str) -> Option<usize> {
    let t = sql_type.trim().to_ascii_lowercase();
    let is_char = [
        "character varying(",
        "character(",
        "varchar(",
        "char(",
        "nvarchar(",
    ]
    .iter()
    .any(|p| t.starts_with(p));
    if !is_char {
        return None;
    }
    let inner = t.split_once('(')?.1.strip_suffix(')')?;
    inner.trim().parse().ok()
}

/// `POST /v1/_admin/{name}/purge` of a set or a feed (`kind`).
pub(crate) fn collection_purge(kind: &str, name: &str) -> Value {
    let mut purge = op(
        "POST",
        "/v1/_admin/{entity}/purge",
        false,
        &format!(
            "Drop every owner's cached {kind} `{name}`, on every instance (a scan of the store: \
             for rare events, not the request path)."
        ),
        vec![],
        responses(&[
            ("204", json!({ "description": "Done." })),
            ("503", error_response("unavailable: the store is down.")),
        ]),
    );
    purge["operationId"] = json!(format!("purge_{kind}_{name}"));
    purge
}

/// The schema of an increment's `by` for column `c`: an integer within
/// the column's range for an integer column; for `numeric(p, s)` an
/// integer within its bound (a `by` with up to `s` decimal places is
/// accepted too, but JSON Schema's `multipleOf` on binary floats would
/// describe it wrongly, so the document promises the whole numbers);
/// any number otherwise.
fn by_schema(c: &ColumnDoc) -> Value {
    let t = c.sql_type.trim().to_ascii_lowercase();
    if let Some((min, max)) = c.int_range {
        return json!({ "type": "integer", "minimum": min, "maximum": max, "description": "The amount to add (negative subtracts)." });
    }
    if let Some((p, s)) = numeric_limits(&t) {
        let digits = p.saturating_sub(s).min(300);
        let bound = 10f64.powi(i32::try_from(digits).unwrap_or(300)) - 1.0;
        return json!({
            "type": "integer", "minimum": -bound, "maximum": bound,
            "description": format!("The amount to add (negative subtracts); decimals with at most {s} places are accepted too.")
        });
    }
    json!({ "type": "number", "description": "The amount to add (negative subtracts)." })
}

/// Whether a column holds numbers an increment can add to: an integer
/// range, `numeric`/`decimal`, or a floating-point type.
fn is_numeric(c: &ColumnDoc) -> bool {
    let t = c.sql_type.trim().to_ascii_lowercase();
    c.int_range.is_some()
        || numeric_limits(&t).is_some()
        || matches!(
            t.as_str(),
            "numeric"
                | "decimal"
                | "double precision"
                | "float8"
                | "double"
                | "float"
                | "real"
                | "float4"
        )
}

/// `numeric(p, s)`: the precision and scale.
fn numeric_limits(t: &str) -> Option<(u32, u32)> {
    let inner = t
        .strip_prefix("numeric(")
        .or_else(|| t.strip_prefix("decimal("))?
        .strip_suffix(')')?;
    let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
    Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
}

/// A date and time without a zone (`2024-02-29 23:59:59.123456`, or with a
/// `T`), as PostgreSQL's `timestamp` and MariaDB's `datetime` take it: a
/// real calendar day (the 29th of February in leap years only: divisible
/// by 4, centuries by 400), years 0001–9999.
const LOCAL_DATE_TIME: &str = concat!(
    "^(?!0000)(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])",
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))",
    "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)",
    "[T ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?$",
);

/// The JSON Schema of one column's values (without nullability), from its
/// SQL type and the limits the database enforces.
///
/// Unknown types are left open (`{}`) with their SQL type in the
/// description: the database decides.
pub fn column_schema(
    sql_type: &str,
    int_range: Option<(i64, i64)>,
    max_chars: Option<usize>,
) -> Value {
    let t = sql_type.trim().to_ascii_lowercase();
    if let Some(element) = sql_type.trim().strip_suffix("[]") {
        let items = column_schema(
            element,
            element_int_range(element),
            element_max_chars(element),
        );
        return json!({ "type": "array", "items": nullable(items) });
    }
    if let Some((min, max)) = int_range {
        return json!({ "type": "integer", "minimum": min, "maximum": max });
    }
    if let Some(n) = max_chars {
        return json!({ "type": "string", "maxLength": n, "pattern": NO_NUL });
    }
    if let Some((p, s)) = numeric_limits(&t) {
        // Below 10^(p-s) once rounded to s digits: whole numbers up to
        // 10^(p-s) - 1 always fit.
        let digits = p.saturating_sub(s).min(300);
        let bound = 10f64.powi(i32::try_from(digits).unwrap_or(300)) - 1.0;
        return json!({ "type": "number", "minimum": -bound, "maximum": bound });
    }
    match t.as_str() {
        "numeric" | "decimal" | "double precision" | "float8" | "double" | "float" => {
            json!({ "type": "number" })
        }
        "real" | "float4" => {
            json!({ "type": "number", "minimum": -3.4e38, "maximum": 3.4e38 })
        }
        // MariaDB's BOOLEAN is tinyint(1), served as true/false.
        "boolean" | "bool" | "tinyint(1)" => json!({ "type": "boolean" }),
        "text" | "character varying" | "varchar" | "citext" | "name" | "tinytext"
        | "mediumtext" | "longtext" => {
            json!({ "type": "string", "pattern": NO_NUL })
        }
        "uuid" => json!({ "type": "string", "format": "uuid" }),
        "json" | "jsonb" => json!({ "$ref": "#/components/schemas/JsonDocument" }),
        // PostgreSQL has no year 0 and accepts offsets up to ±15:59.
        "timestamp with time zone" | "timestamptz" => json!({
            "type": "string",
            "format": "date-time",
            "pattern": "^(?!0000)[0-9]{4}-.*([Zz]|[+-](0[0-9]|1[0-5]):[0-5][0-9])$",
        }),
        // MariaDB: `datetime(3)`, `timestamp(6)` (TIMESTAMP served in UTC).
        t if t == "timestamp without time zone"
            || t == "timestamp"
            || t == "datetime"
            || t.starts_with("datetime(")
            || t.starts_with("timestamp(") && !t.contains("zone") =>
        {
            json!({ "type": "string", "pattern": LOCAL_DATE_TIME })
        }
        "date" => json!({ "type": "string", "format": "date", "pattern": "^(?!0000)" }),
        "time without time zone" | "time" => json!({
            "type": "string",
            "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?$",
        }),
        other => {
            json!({ "description": format!("SQL type `{other}`: any JSON value the database accepts") })
        }
    }
}

/// `schema` or null.
fn nullable(schema: Value) -> Value {
    let Some(obj) = schema.as_object() else {
        return schema;
    };
    match obj.get("type") {
        Some(Value::String(t)) if !obj.contains_key("$ref") => {
            let mut s = schema.clone();
            s["type"] = json!([t, "null"]);
            s
        }
        // No type and no reference: any value, null included.
        None if !obj.contains_key("$ref") && !obj.contains_key("anyOf") => schema,
        _ => json!({ "anyOf": [schema, { "type": "null" }] }),
    }
}

fn column(c: &ColumnDoc) -> Value {
    let mut s = column_schema(&c.sql_type, c.int_range, c.max_chars);
    if !c.not_null {
        s = nullable(s);
    }
    if let Some(o) = s.as_object_mut() {
        o.entry("description").or_insert_with(|| {
            let mut d = c.sql_type.clone();
            if c.not_null {
                d.push_str(" NOT NULL");
            }
            if c.has_default {
                d.push_str(" DEFAULT …");
            }
            Value::String(d)
        });
    }
    s
}

fn key_schema(key: KeyDoc) -> Value {
    match key {
        KeyDoc::Integer { min, max } => {
            json!({ "type": "integer", "minimum": min, "maximum": max })
        }
        KeyDoc::Uuid => json!({ "type": "string", "format": "uuid" }),
        KeyDoc::Text { max_chars } => json!({
            "type": "string", "minLength": 1, "maxLength": max_chars, "pattern": NO_NUL
        }),
    }
}

/// The `ids` query parameter of a multi-get: ids separated by `,`.
fn ids_schema(key: KeyDoc) -> Value {
    let one = match key {
        KeyDoc::Integer { min, .. } if min >= 0 => "[0-9]{1,9}",
        KeyDoc::Integer { .. } => "-?[0-9]{1,9}",
        KeyDoc::Uuid => {
            "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
        }
        KeyDoc::Text { .. } => "[^,\\u0000]{1,32}",
    };
    json!({
        "type": "string",
        "pattern": format!("^{one}(,{one}){{0,49}}$"),
        "description": "Comma-separated ids, at most 1000; duplicates collapse. A comma inside a text id is sent as %2C.",
    })
}

fn schema_names(name: &str) -> (String, String, String) {
    let camel: String = name
        .split(['_', '-'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    (
        format!("{camel}Row"),
        format!("{camel}Put"),
        format!("{camel}Patch"),
    )
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The row, PUT and PATCH schemas of an entity.
fn entity_schemas(e: &EntityDoc<'_>) -> (Value, Value, Value) {
    if e.columns.is_empty() {
        let open = json!({ "type": "object", "description": "A row: column name to value." });
        return (open.clone(), open.clone(), open);
    }
    let mut row_props = Map::new();
    let mut write_props = Map::new();
    let mut required = Vec::new();
    for c in &e.columns {
        let s = column(c);
        if c.is_key {
            // Any id the service accepted may come back: a text id of up
            // to MAX_ID_LEN bytes has at most that many characters.
            let key = match e.key_type {
                KeyDoc::Text { .. } => KeyDoc::Text {
                    max_chars: larder::MAX_ID_LEN,
                },
                other => other,
            };
            row_props.insert(c.name.clone(), key_schema(key));
            continue;
        }
        row_props.insert(c.name.clone(), s.clone());
        write_props.insert(c.name.clone(), s);
        if c.not_null && !c.has_default {
            required.push(c.name.clone());
        }
    }
    let row_required: Vec<&str> = if e.write == WriteMode::Back {
        // A write-back row is served as written until it is flushed and
        // read back: columns the database fills may be absent.
        Vec::new()
    } else {
        e.columns.iter().map(|c| c.name.as_str()).collect()
    };
    let row = json!({
        "type": "object",
        "properties": row_props,
        "required": row_required,
        "additionalProperties": false,
    });
    let key_note = format!(
        "The key column `{}` may be given only equal to the path's id.",
        e.key
    );
    let put = json!({
        "type": "object",
        "description": format!("The whole row: a nullable column left out without a default is set to NULL. {key_note}"),
        "properties": write_props,
        "required": required,
        "additionalProperties": false,
    });
    let patch = json!({
        "type": "object",
        "description": format!("The columns to change (null sets NULL). {key_note}"),
        "properties": write_props,
        "minProperties": 1,
        "additionalProperties": false,
    });
    (row, put, patch)
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": schema })
}

/// An operation on `route` (as in [`super::ROUTES`]): its security and
/// its 401/403 answers follow from [`access`]; `public` is the entity's
/// `public_reads`.
fn op(
    method: &str,
    route: &str,
    public: bool,
    summary: &str,
    params: Vec<Value>,
    mut responses: Map<String, Value>,
) -> Value {
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
    let need = access(&method, route);
    let mut o = json!({ "summary": summary, "parameters": params });
    match need {
        Access::Open => o["security"] = json!([]),
        Access::RowRead if public => o["security"] = json!([]),
        Access::RowRead | Access::Read => {
            responses.insert(
                "401".into(),
                error_response("unauthorized: no token, or neither the admin nor the read token."),
            );
        }
        Access::Admin => {
            responses.insert(
                "401".into(),
                error_response("unauthorized: no token, or a wrong one."),
            );
            responses.insert(
                "403".into(),
                error_response("forbidden: the read-only token cannot use this route."),
            );
        }
    }
    o["responses"] = Value::Object(responses);
    o
}

fn responses(items: &[(&str, Value)]) -> Map<String, Value> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn entity_paths(
    e: &EntityDoc<'_>,
    paths: &mut Map<String, Value>,
    schemas: &mut Map<String, Value>,
) {
    let (row_name, put_name, patch_name) = schema_names(e.name);
    let (row_schema, put_schema, patch_schema) = entity_schemas(e);
    schemas.insert(row_name.clone(), row_schema);
    schemas.insert(put_name.clone(), put_schema);
    schemas.insert(patch_name.clone(), patch_schema);
    let fields_name = format!("{}Fields", row_name.trim_end_matches("Row"));
    let fields_schema = fields_schema(&row_schema_of(schemas, &row_name));
    schemas.insert(fields_name.clone(), fields_schema);
    let full_row = reference(&row_name);
    let row = reference(&row_name);
    // A read answers the whole row, or with `fields=` just those columns.
    let read_row = json!({ "anyOf": [full_row, reference(&fields_name)] });
    let fields_param = fields_param(e);
    let id = || {
        path_param(
            "id",
            &format!("The `{}` of the row (canonicalised: 007 is 7).", e.key),
            key_schema(e.key_type),
        )
    };
    let writable = e.write != WriteMode::ReadOnly;
    let unavailable = error_response(
        "unavailable: the database (or, write-back, the store) is down; Retry-After.",
    );
    let x_cache = json!({
        "X-Cache": { "description": "Where the answer came from.", "schema": { "type": "string", "enum": ["l1", "hit", "stale", "negative", "miss", "bypass"] } }
    });
    let queued = json_response(
        "Write-back: recorded, flushed to the database later. `durable` is false when, on a Redis Cluster, not every replica of the key's master confirmed the write in time (visible, and very probably flushed, but a failover could lose it; do not retry on it).",
        json!({ "type": "object", "required": ["queued", "durable", "id"], "properties": { "queued": { "type": "boolean" }, "durable": { "type": "boolean" }, "id": { "type": "string" } } }),
    );
    let bad_write = error_response(
        "bad_request, bad_id, unknown_column, type_mismatch or missing_column: the row does not fit the table.",
    );
    let read_only = error_response("method_not_allowed: the entity is read-only.");
    let base = format!("/v1/{}", e.name);
    let item = format!("{base}/{{id}}");

    let mut get_row = op(
        "GET",
        "/v1/{entity}/{id}",
        e.public_reads,
        &format!("Read one `{}` row (read-through).", e.name),
        vec![
            id(),
            json!({ "name": "Cache-Control", "in": "header", "required": false, "description": "no-cache: read from the database and refresh the entry.", "schema": { "type": "string" } }),
            fields_param.clone(),
        ],
        responses(&[
            (
                "200",
                json!({ "description": "The row (with `fields`: just those columns, a NULL one as null).", "headers": x_cache, "content": { "application/json": { "schema": read_row } } }),
            ),
            (
                "400",
                error_response("bad_id: the id does not fit the key column; unknown_column or bad_request: `fields` names a column the entity lacks, or none."),
            ),
            ("404", error_response("not_found: no such row.")),
            ("503", unavailable.clone()),
        ]),
    );
    get_row["operationId"] = json!(format!("get_{}", e.name));
    let mut item_ops = Map::new();
    item_ops.insert("get".into(), get_row);
    let write_statuses = |ok: &str| {
        let mut r = vec![
            ("200", json_response(ok, row.clone())),
            ("400", bad_write.clone()),
            ("404", error_response("not_found: no such row (PATCH).")),
            (
                "409",
                error_response(
                    "conflict: a unique, foreign-key or check constraint refused the row; \
                     busy: concurrent writes to the row kept winning (write-back), retry after \
                     Retry-After.",
                ),
            ),
            (
                "413",
                error_response("payload_too_large: the body is over body_limit."),
            ),
            (
                "415",
                error_response("unsupported_media_type: send application/json."),
            ),
            ("503", unavailable.clone()),
        ];
        if e.write == WriteMode::Back {
            r.push(("202", queued.clone()));
        }
        if !writable {
            r.push(("405", read_only.clone()));
        }
        responses(&r)
    };
    let mut put = op(
        "PUT",
        "/v1/{entity}/{id}",
        e.public_reads,
        &format!("Replace (or create) a `{}` row.", e.name),
        vec![id()],
        write_statuses("The row as stored."),
    );
    put["operationId"] = json!(format!("put_{}", e.name));
    put["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": reference(&put_name) } } });
    let mut patch = op(
        "PATCH",
        "/v1/{entity}/{id}",
        e.public_reads,
        &format!("Change columns of an existing `{}` row.", e.name),
        vec![id()],
        write_statuses("The row as stored."),
    );
    patch["operationId"] = json!(format!("patch_{}", e.name));
    patch["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": reference(&patch_name) } } });
    let mut delete_statuses = vec![
        ("204", json!({ "description": "Deleted." })),
        ("400", error_response("bad_id.")),
        ("404", error_response("not_found: there was no row.")),
        (
            "409",
            error_response(
                "conflict: the row is still referenced; busy: concurrent writes to the row \
                 kept winning (write-back), retry after Retry-After.",
            ),
        ),
        ("503", unavailable.clone()),
    ];
    if e.write == WriteMode::Back {
        delete_statuses.push(("202", queued.clone()));
    }
    if !writable {
        delete_statuses.push(("405", read_only.clone()));
    }
    let mut delete = op(
        "DELETE",
        "/v1/{entity}/{id}",
        e.public_reads,
        &format!("Delete a `{}` row.", e.name),
        vec![id()],
        responses(&delete_statuses),
    );
    delete["operationId"] = json!(format!("delete_{}", e.name));
    item_ops.insert("put".into(), put);
    item_ops.insert("patch".into(), patch);
    item_ops.insert("delete".into(), delete);
    paths.insert(item.clone(), Value::Object(item_ops));

    let mut many = op(
        "GET",
        "/v1/{entity}",
        e.public_reads,
        &format!(
            "Read many `{}` rows: one MGET, at most one database query for the misses.",
            e.name
        ),
        vec![
            json!({ "name": "ids", "in": "query", "required": true, "schema": ids_schema(e.key_type) }),
            fields_param,
        ],
        responses(&[
            (
                "200",
                json_response(
                    "The rows found, by id, and the ids missing.",
                    json!({
                        "type": "object",
                        "required": ["items", "missing"],
                        "properties": {
                            "items": { "type": "object", "additionalProperties": read_row },
                            "missing": { "type": "array", "items": { "type": "string" } }
                        }
                    }),
                ),
            ),
            (
                "400",
                error_response(
                    "bad_request (no ids, more than 1000), bad_id or unknown_column (in `fields`).",
                ),
            ),
            ("503", unavailable.clone()),
        ]),
    );
    many["operationId"] = json!(format!("get_many_{}", e.name));
    paths.insert(base.clone(), json!({ "get": many }));

    let mut invalidate = op(
        "POST",
        "/v1/{entity}/{id}/invalidate",
        e.public_reads,
        "Drop the cached entry; the next read is a miss.",
        vec![id()],
        responses(&[
            ("204", json!({ "description": "Done." })),
            ("400", error_response("bad_id.")),
            ("503", error_response("unavailable: the store is down.")),
        ]),
    );
    invalidate["operationId"] = json!(format!("invalidate_{}", e.name));
    paths.insert(format!("{item}/invalidate"), json!({ "post": invalidate }));

    // Only where an increment can succeed: a writable entity with a
    // numeric column; under write-back, a hash entity's integer and
    // numeric(p, s) columns (a string entity refuses increments there;
    // floating-point and unconstrained numeric columns cannot be counted
    // exactly).
    let back = e.write == WriteMode::Back;
    let counters: Vec<&ColumnDoc> = e
        .columns
        .iter()
        .filter(|c| !c.is_key && is_numeric(c))
        .filter(|c| {
            !back
                || c.int_range.is_some()
                || numeric_limits(&c.sql_type.trim().to_ascii_lowercase()).is_some()
        })
        .collect();
    if writable && back && e.hash && !counters.is_empty() {
        let statuses = vec![
            (
                "202",
                json_response(
                    "Queued: the increment is durably recorded and counted in the cache; \
                     `value` is the column's new value. The database gets it at the next flush, \
                     exactly once.",
                    json!({
                        "type": "object",
                        "required": ["queued", "durable", "value"],
                        "properties": {
                            "queued": { "const": true },
                            "durable": { "type": "boolean" },
                            "value": { "type": "number", "description": "The column's new value (an integer for an integer column; a numeric(p, s) column's sum is exact)." }
                        }
                    }),
                ),
            ),
            (
                "400",
                error_response(
                    "bad_request (not {column, by}), bad_id, unknown_column, or type_mismatch: \
                     the column is not an integer or numeric(p, s) column, or `by` is not an \
                     integer (integer column) or has more than s decimal places.",
                ),
            ),
            (
                "404",
                error_response("not_found: no such row; nothing was recorded."),
            ),
            (
                "409",
                error_response(
                    "conflict: the sum is beyond the column's range; nothing was recorded.",
                ),
            ),
            ("503", unavailable.clone()),
        ];
        let mut incr = op(
            "POST",
            "/v1/{entity}/{id}/incr",
            e.public_reads,
            &format!(
                "Add `by` to an integer column of a `{}` row, written back: counted in the \
                 cache and recorded durably at once, added in the database by the flusher \
                 exactly once (NULL counting as 0).",
                e.name
            ),
            vec![id()],
            responses(&statuses),
        );
        incr["operationId"] = json!(format!("incr_{}", e.name));
        let bodies: Vec<Value> = counters
            .iter()
            .map(|c| {
                json!({
                    "type": "object",
                    "required": ["column", "by"],
                    "additionalProperties": false,
                    "properties": { "column": { "const": c.name }, "by": by_schema(c) }
                })
            })
            .collect();
        incr["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "oneOf": bodies } } } });
        paths.insert(format!("{item}/incr"), json!({ "post": incr }));
    }
    if writable && !back && !counters.is_empty() {
        let statuses = vec![
            (
                "200",
                json_response("The row as stored, with the sum.", row.clone()),
            ),
            (
                "400",
                error_response(
                    "bad_request (not {column, by}), bad_id, unknown_column, or type_mismatch: \
                     the column is not numeric, `by` is not a number, a fraction for an integer \
                     column, or more decimal places than the column keeps.",
                ),
            ),
            (
                "404",
                error_response("not_found: no such row; nothing was written."),
            ),
            (
                "409",
                error_response(
                    "conflict: the sum is beyond the column's range; nothing was written.",
                ),
            ),
            ("503", unavailable.clone()),
        ];
        let mut incr = op(
            "POST",
            "/v1/{entity}/{id}/incr",
            e.public_reads,
            &format!(
                "Add `by` to a numeric column of a `{}` row, in the database (one UPDATE, \
                 exact, NULL counting as 0); the stored row is cached as writes are.",
                e.name
            ),
            vec![id()],
            responses(&statuses),
        );
        incr["operationId"] = json!(format!("incr_{}", e.name));
        let bodies: Vec<Value> = counters
            .iter()
            .map(|c| {
                json!({
                    "type": "object",
                    "required": ["column", "by"],
                    "additionalProperties": false,
                    "properties": { "column": { "const": c.name }, "by": by_schema(c) }
                })
            })
            .collect();
        incr["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "oneOf": bodies } } } });
        paths.insert(format!("{item}/incr"), json!({ "post": incr }));
    }

    let admin = format!("/v1/_admin/{}", e.name);
    let mut purge = op(
        "POST",
        "/v1/_admin/{entity}/purge",
        false,
        &format!("Drop every cached `{}` entry, on every instance.", e.name),
        vec![],
        responses(&[
            ("204", json!({ "description": "Done." })),
            ("503", error_response("unavailable: the store is down.")),
        ]),
    );
    purge["operationId"] = json!(format!("purge_{}", e.name));
    paths.insert(format!("{admin}/purge"), json!({ "post": purge }));
    let mut warm = op(
        "POST",
        "/v1/_admin/{entity}/warm",
        false,
        &format!("Load every `{}` row into the cache.", e.name),
        vec![],
        responses(&[
            (
                "200",
                json_response(
                    "Entries written and skipped.",
                    json!({ "type": "object", "required": ["warmed", "skipped"], "properties": { "warmed": { "type": "integer", "minimum": 0 }, "skipped": { "type": "integer", "minimum": 0 } } }),
                ),
            ),
            ("503", unavailable.clone()),
        ]),
    );
    warm["operationId"] = json!(format!("warm_{}", e.name));
    paths.insert(format!("{admin}/warm"), json!({ "post": warm }));
    if e.write == WriteMode::Back {
        let mut letters = op(
            "GET",
            "/v1/_admin/{entity}/dead-letters",
            false,
            "The writes the database refused at flush time.",
            vec![],
            responses(&[
                (
                    "200",
                    json_response(
                        "Dead letters.",
                        json!({ "type": "object", "required": ["dead_letters"], "properties": { "dead_letters": { "type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "id": { "type": "string" },
                        "error": { "type": "string" },
                        "failed_at_ms": { "type": "integer" },
                        "delete": { "type": "boolean" },
                        "row": { "type": ["object", "null"] },
                        "deltas": { "type": ["object", "null"], "description": "An increment's dead letter: the deltas not applied, column to the sum as text (an integer, or a numeric(p, s) column's exact decimal; a retry puts them back among the pending increments)." }
                    }
                } } } }),
                    ),
                ),
                ("503", error_response("unavailable: the store is down.")),
            ]),
        );
        letters["operationId"] = json!(format!("dead_letters_{}", e.name));
        paths.insert(format!("{admin}/dead-letters"), json!({ "get": letters }));
        let mut retry = op(
            "POST",
            "/v1/_admin/{entity}/dead-letters/retry",
            false,
            "Record every dead letter again as a new write.",
            vec![],
            responses(&[
                (
                    "200",
                    json_response(
                        "Retried.",
                        json!({ "type": "object", "required": ["retried"], "properties": { "retried": { "type": "integer", "minimum": 0 } } }),
                    ),
                ),
                ("503", error_response("unavailable: the store is down.")),
            ]),
        );
        retry["operationId"] = json!(format!("retry_dead_letters_{}", e.name));
        paths.insert(
            format!("{admin}/dead-letters/retry"),
            json!({ "post": retry }),
        );
    }
}

/// The `/v1/stats` document (see [`super::stats`]).
fn stats_schema() -> Value {
    let count = json!({ "type": "integer", "minimum": 0 });
    let ms = |what: &str| json!({ "type": ["number", "null"], "description": what });
    let outcomes: Map<String, Value> = larder::Outcome::ALL
        .iter()
        .map(|o| (o.as_str().to_owned(), count.clone()))
        .collect();
    let entity = json!({
        "type": "object",
        "properties": {
            "write": { "type": "string", "enum": ["through", "around", "back", "read-only"], "description": "The write policy." },
            "reads": { "type": "object", "properties": outcomes, "description": "Reads by outcome since the start." },
            "reads_total": count,
            "hit_ratio": { "type": "number", "minimum": 0, "maximum": 1, "description": "(l1 + hit + stale + negative) / all reads." },
            "loads": count,
            "load_errors": count,
            "load_ms_mean": ms("Mean database load time, ms; null before the first load."),
            "load_ms_p50": ms("Median database load time, ms (within 25 %)."),
            "load_ms_p99": ms("99th percentile database load time, ms (within 25 %)."),
            "cache_ms_p50": ms("Median store read (GET/MGET) time, ms (within 25 %); near-cache hits are not in it."),
            "cache_ms_p99": ms("99th percentile store read time, ms (within 25 %)."),
            "fills": count,
            "fills_refused": count,
            "stale_on_error": count,
            "lease_waits": { "type": "integer", "minimum": 0, "description": "Reads that found another load in progress and waited for it." },
            "lease_takeovers": count,
            "refreshes": { "type": "integer", "minimum": 0, "description": "Background refreshes (stale-while-revalidate and early refresh)." },
            "l1_entries": { "type": "integer", "minimum": 0, "description": "Entries in the near cache." },
            "l1_evictions": { "type": "integer", "minimum": 0, "description": "Near-cache entries dropped for capacity or age." },
            "invalidations_sent": count,
            "invalidations_received": count,
            "write_back": {
                "type": ["object", "null"],
                "description": "Write-back entities only.",
                "properties": {
                    "acknowledged": count, "coalesced": count, "batches": count, "rows_written": count,
                    "conflicts": { "type": "integer", "minimum": 0, "description": "Compare-and-sets lost to another writer of the id (a string patch or delete read again and retried)." },
                    "retries": count, "dead_lettered": count,
                    "backlog": { "type": "integer", "minimum": 0, "description": "Dirty rows not yet in the database." },
                    "lag_ms": { "type": ["integer", "null"], "description": "Age of the oldest dirty row, ms." },
                    "dead_letters": { "type": "integer", "minimum": 0, "description": "Rows the database refused, waiting for a retry." }
                }
            }
        }
    });
    let figure = json!({ "type": ["integer", "null"] });
    json!({
        "type": "object",
        "required": ["uptime_s", "store", "entities"],
        "properties": {
            "uptime_s": count,
            "store": { "type": "string", "description": "The store's URL without credentials." },
            "entities": { "type": "object", "additionalProperties": entity },
            "resp": { "type": ["object", "null"] },
            "redis": {
                "type": ["object", "null"],
                "description": "Redis INFO figures; null for memory:// or when Redis does not answer in time.",
                "properties": {
                    "used_memory": figure,
                    "maxmemory": { "type": ["integer", "null"], "description": "0: no limit." },
                    "maxmemory_policy": { "type": ["string", "null"] },
                    "evicted_keys": figure,
                    "expired_keys": figure,
                    "keyspace_hits": figure,
                    "keyspace_misses": figure,
                    "connected_clients": figure
                }
            },
            "nodes": {
                "type": "array",
                "description": "Redis Cluster nodes, each master followed by its replicas; empty on a standalone Redis, memory://, or when the cluster does not answer in time.",
                "items": {
                    "type": "object",
                    "required": ["address", "role"],
                    "properties": {
                        "address": { "type": "string", "description": "host:port as the cluster announces it." },
                        "role": { "type": "string", "enum": ["master", "replica"] },
                        "master": { "type": ["string", "null"], "description": "The master a replica follows (host:port); null for a master." },
                        "used_memory": figure,
                        "evicted_keys": figure,
                        "keys": figure
                    }
                }
            },
            "slots": {
                "type": ["object", "null"],
                "description": "Redis Cluster slot coverage (CLUSTER INFO); null off a cluster.",
                "properties": {
                    "state": { "type": "string", "description": "cluster_state: ok or fail." },
                    "assigned": count,
                    "ok": count,
                    "pfail": count,
                    "fail": count,
                    "total": { "type": "integer", "const": 16384 }
                }
            }
        }
    })
}

/// The document for `entities`.
pub fn build(entities: &[EntityDoc<'_>]) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    paths.insert("/health".into(), json!({ "get": op("GET", "/health", false, "Liveness: 200 while the process runs.", vec![], responses(&[("200", json_response("Alive.", json!({ "type": "object" })))])) }));
    paths.insert("/ready".into(), json!({ "get": op("GET", "/ready", false, "Readiness.", vec![], responses(&[
        ("200", json_response("Reads can be served.", json!({ "type": "object", "properties": { "ready": { "type": "boolean" }, "degraded": { "type": "boolean" }, "store": { "type": "boolean" }, "database": { "type": "boolean" } } }))),
        ("503", json_response("Nothing can be served.", json!({ "type": "object" }))),
    ])) }));
    paths.insert("/metrics".into(), json!({ "get": op("GET", "/metrics", false, "Prometheus text format.", vec![], responses(&[("200", json!({ "description": "Metrics.", "content": { "text/plain": { "schema": { "type": "string" } } } }))])) }));
    paths.insert("/v1/openapi.json".into(), json!({ "get": op("GET", "/v1/openapi.json", false, "This document.", vec![], responses(&[("200", json_response("OpenAPI 3.1.", json!({ "type": "object" })))])) }));
    paths.insert("/v1/stats".into(), json!({ "get": op("GET", "/v1/stats", false, "Per-entity reads by outcome, hit ratio, loads, cache and database latency, lease waits, near cache, write-back; Redis memory, policy and evictions. The dashboard at / polls it.", vec![], responses(&[("200", json_response("Stats.", json!({ "$ref": "#/components/schemas/Stats" })))])) }));
    for (route, summary) in [
        ("/", "The dashboard: a page that polls /v1/stats every second (public; its data calls carry the token)."),
        ("/ui", "The dashboard, as at /."),
    ] {
        paths.insert(route.into(), json!({ "get": op("GET", route, false, summary, vec![], responses(&[("200", json!({ "description": "An HTML page.", "content": { "text/html": { "schema": { "type": "string" } } } }))])) }));
    }
    paths.insert("/v1/tags/{tag}/invalidate".into(), json!({ "post": op("POST", "/v1/tags/{tag}/invalidate", false, "Invalidate every entry carrying a tag, in every entity with tags.", vec![
        path_param("tag", &format!("A tag, e.g. team:7 (at most {} bytes).", larder::MAX_TAG_LEN), json!({ "type": "string", "minLength": 1, "maxLength": MAX_TAG_CHARS, "pattern": NO_NUL })),
    ], responses(&[
        ("204", json!({ "description": "Done." })),
        ("400", error_response("bad_request: the tag is empty or too long.")),
        ("503", error_response("unavailable: the store is down.")),
    ])) }));
    for e in entities {
        entity_paths(e, &mut paths, &mut schemas);
    }
    schemas.insert(
        "JsonValue".into(),
        json!({
            "description": "Any JSON value whose strings (object keys included) contain no NUL.",
            "anyOf": [
                { "type": "null" },
                { "$ref": "#/components/schemas/JsonDocument" }
            ]
        }),
    );
    schemas.insert("JsonDocument".into(), json!({
        "description": "Any JSON value but null whose strings (object keys included) contain no NUL.",
        "anyOf": [
            { "type": "string", "pattern": NO_NUL },
            { "type": "number" },
            { "type": "boolean" },
            { "type": "array", "items": { "$ref": "#/components/schemas/JsonValue" } },
            { "type": "object", "propertyNames": { "pattern": NO_NUL }, "additionalProperties": { "$ref": "#/components/schemas/JsonValue" } }
        ]
    }));
    schemas.insert("Stats".into(), stats_schema());
    schemas.insert("Error".into(), json!({ "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": {
        "code": { "type": "string", "enum": ["bad_request", "bad_id", "unknown_column", "type_mismatch", "missing_column", "unauthorized", "forbidden", "not_found", "unknown_entity", "method_not_allowed", "conflict", "payload_too_large", "unsupported_media_type", "unavailable", "internal"] },
        "message": { "type": "string" }
    } } } }));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "larder",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Read-through, write-through and write-back caching of database rows over HTTP. Every error is {\"error\": {\"code\", \"message\"}}. With a token configured, routes need Authorization: Bearer <token>: the admin token opens every route, the read-only token the row reads, /v1/stats and /metrics."
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "The admin token ([auth] token_env) or the read-only token ([auth] read_token_env)." } },
            "schemas": schemas,
        }
    })
}

/// `GET /v1/openapi.json`: the document of the running configuration.
pub async fn document(State(state): State<AppState>) -> Json<Value> {
    let docs: Vec<EntityDoc<'_>> = state
        .entities()
        .iter()
        .map(|e| EntityDoc::of(&state, e))
        .collect();
    let mut doc = build(&docs);
    let sets: Vec<SetDoc<'_>> = state.sets().iter().map(|s| SetDoc::of(&state, s)).collect();
    add_sets(&mut doc, &sets);
    let feeds: Vec<(&str, bool, bool)> = state
        .feeds()
        .iter()
        .map(|f| {
            (
                f.config.name.as_str(),
                f.config.write != crate::config::SetWriteMode::ReadOnly,
                state.config().auth.public_reads || f.config.public_reads,
            )
        })
        .collect();
    add_feeds(&mut doc, &feeds);
    let boards: Vec<BoardDoc<'_>> = state
        .boards()
        .iter()
        .map(|b| BoardDoc::of(&state, b))
        .collect();
    add_boards(&mut doc, &boards);
    Json(doc)
}

/// Adds the paths of every feed `(name, writable, public_reads)` to a
/// document made by [`build`]: a page, an append, a delete, invalidate.
pub fn add_feeds(doc: &mut Value, feeds: &[(&str, bool, bool)]) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for &(name, writable, public) in feeds {
        let owner = || {
            path_param(
                "owner",
                "The owner whose feed this is (canonicalised).",
                json!({ "type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": NO_NUL }),
            )
        };
        let base = format!("/v1/{name}/{{owner}}");
        let mut page = op(
            "GET",
            "/v1/{entity}/{id}",
            public,
            &format!("A page of the `{name}` feed of an owner, in the feed's order."),
            vec![
                owner(),
                json!({ "name": "offset", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0, "maximum": larder::MAX_FEED_OFFSET } }),
                json!({ "name": "limit", "in": "query", "required": false, "description": "Default 20.", "schema": { "type": "integer", "minimum": 0, "maximum": larder::MAX_FEED_PAGE } }),
            ],
            responses(&[
                (
                    "200",
                    json!({ "description": "The page.", "headers": { "X-Cache": { "description": "hit, miss, stale (past its ttl, inside the stale window, while one refresh runs), bypass, or db (a page past max_len, from the database).", "schema": { "type": "string", "enum": ["hit", "miss", "stale", "bypass", "db"] } } }, "content": { "application/json": { "schema": {
                "type": "object", "required": ["items", "offset", "limit", "more"],
                "properties": {
                    "items": { "type": "array", "items": { "type": "object" } },
                    "offset": { "type": "integer" }, "limit": { "type": "integer" }, "more": { "type": "boolean" }
                }
            } } } }),
                ),
                (
                    "400",
                    error_response("bad_request (offset, limit) or bad_id."),
                ),
                ("404", error_response("unknown_entity.")),
                ("503", error_response("unavailable: the database is down.")),
            ]),
        );
        page["operationId"] = json!(format!("get_feed_{name}"));
        let mut refusals = vec![
            (
                "400",
                error_response(
                    "bad_id, or a row that does not validate (its owner column another owner).",
                ),
            ),
            (
                "404",
                error_response("unknown_entity, or (DELETE) no such item."),
            ),
            (
                "503",
                error_response("unavailable: the store or the database is down."),
            ),
        ];
        if !writable {
            refusals.push((
                "405",
                error_response("method_not_allowed: the feed is read-only."),
            ));
        }
        let mut post_items = vec![(
            "201",
            json_response("The stored row.", json!({ "type": "object" })),
        )];
        post_items.extend(refusals.iter().cloned());
        let mut post = op(
            "POST",
            "/v1/{entity}/{id}",
            false,
            "Append a row (the database first, then the cached list).",
            vec![owner()],
            responses(&post_items),
        );
        post["operationId"] = json!(format!("append_{name}"));
        post["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "type": "object" } } } });
        paths.insert(base.clone(), json!({ "get": page, "post": post }));
        let mut del_items = vec![("204", json!({ "description": "Deleted." }))];
        del_items.extend(refusals.iter().cloned());
        let mut del = op(
            "DELETE",
            "/v1/{entity}/{id}/items/{item}",
            false,
            "Delete an item.",
            vec![
                owner(),
                path_param("item", "The item's key.", json!({ "type": "string" })),
            ],
            responses(&del_items),
        );
        del["operationId"] = json!(format!("delete_item_{name}"));
        paths.insert(format!("{base}/items/{{item}}"), json!({ "delete": del }));
        let mut invalidate = op(
            "POST",
            "/v1/{entity}/{id}/invalidate",
            false,
            "Drop the owner's cached feed.",
            vec![owner()],
            responses(&[
                ("204", json!({ "description": "Done." })),
                ("503", error_response("unavailable: the store is down.")),
            ]),
        );
        invalidate["operationId"] = json!(format!("invalidate_feed_{name}"));
        paths.insert(format!("{base}/invalidate"), json!({ "post": invalidate }));
        paths.insert(
            format!("/v1/_admin/{name}/purge"),
            json!({ "post": collection_purge("feed", name) }),
        );
    }
}

/// What the document needs to know about one `[[set]]`.
#[derive(Debug, Clone)]
pub struct SetDoc<'a> {
    /// The set's name.
    pub name: &'a str,
    /// Whether its members are integers (else strings).
    pub integer_members: bool,
    /// Whether writes are accepted.
    pub writable: bool,
    /// Whether writes are written back (answered 202 once queued).
    pub write_back: bool,
    /// Whether reads need no token.
    pub public_reads: bool,
}

impl<'a> SetDoc<'a> {
    /// The document's view of a served set.
    pub fn of(state: &AppState, s: &'a super::collections::SetEntry) -> Self {
        SetDoc {
            name: &s.config.name,
            integer_members: s.cache.order() == larder::SetOrder::Integer,
            writable: s.cache.is_writable(),
            write_back: s.cache.is_write_back(),
            public_reads: state.config().auth.public_reads || s.config.public_reads,
        }
    }
}

/// Adds the paths of every set to a document made by [`build`]: a page of
/// members, a membership, add, remove and invalidate (see
/// [`super::collections`]).
pub fn add_sets(doc: &mut Value, sets: &[SetDoc<'_>]) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for s in sets {
        let owner = || {
            path_param(
                "owner",
                "The owner whose set this is (canonicalised).",
                json!({ "type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": NO_NUL }),
            )
        };
        let member_schema = if s.integer_members {
            json!({ "type": "integer" })
        } else {
            json!({ "type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": NO_NUL })
        };
        let member = || path_param("member", "A member of the set.", member_schema.clone());
        let x_cache = json!({ "X-Cache": { "description": "hit, miss, stale (past its ttl, inside the stale window, while one refresh runs), bypass (the store is down) or db (above max_members: from the database).", "schema": { "type": "string", "enum": ["hit", "miss", "stale", "bypass", "db"] } } });
        let base = format!("/v1/{}/{{owner}}", s.name);
        let mut page = op(
            "GET",
            "/v1/{entity}/{id}",
            s.public_reads,
            &format!(
                "A page of the `{}` members of an owner, in the set's order, with the count.",
                s.name
            ),
            vec![
                owner(),
                json!({ "name": "limit", "in": "query", "required": false, "description": "Members per page (0: the count alone). Default 100.", "schema": { "type": "integer", "minimum": 0, "maximum": larder::MAX_SET_PAGE } }),
                json!({ "name": "cursor", "in": "query", "required": false, "description": "The cursor a previous page returned (its last member).", "schema": { "type": "string" } }),
            ],
            responses(&[
                (
                    "200",
                    json!({ "description": "The page.", "headers": x_cache.clone(), "content": { "application/json": { "schema": {
                "type": "object", "required": ["count", "members", "cursor"],
                "properties": {
                    "count": { "type": "integer", "minimum": 0 },
                    "members": { "type": "array", "items": { "type": "string" } },
                    "cursor": { "type": ["string", "null"] }
                }
            } } } }),
                ),
                (
                    "400",
                    error_response("bad_request (limit, cursor) or bad_id."),
                ),
                ("404", error_response("unknown_entity.")),
                ("503", error_response("unavailable: the database is down.")),
            ]),
        );
        page["operationId"] = json!(format!("get_set_{}", s.name));
        paths.insert(base.clone(), json!({ "get": page }));
        let mut invalidate = op(
            "POST",
            "/v1/{entity}/{id}/invalidate",
            s.public_reads,
            "Drop the owner's cached set; the next read loads it.",
            vec![owner()],
            responses(&[
                ("204", json!({ "description": "Done." })),
                ("400", error_response("bad_id.")),
                ("503", error_response("unavailable: the store is down.")),
            ]),
        );
        invalidate["operationId"] = json!(format!("invalidate_set_{}", s.name));
        paths.insert(format!("{base}/invalidate"), json!({ "post": invalidate }));
        paths.insert(
            format!("/v1/_admin/{}/purge", s.name),
            json!({ "post": collection_purge("set", s.name) }),
        );
        let route = "/v1/{entity}/{id}/members/{member}";
        let mut has = op(
            "GET",
            route,
            s.public_reads,
            "Whether a member belongs to the owner's set.",
            vec![owner(), member()],
            responses(&[
                (
                    "200",
                    json!({ "description": "The answer.", "headers": x_cache, "content": { "application/json": { "schema": { "type": "object", "required": ["member"], "properties": { "member": { "type": "boolean" } } } } } }),
                ),
                ("400", error_response("bad_id.")),
                ("404", error_response("unknown_entity.")),
                ("503", error_response("unavailable: the database is down.")),
            ]),
        );
        has["operationId"] = json!(format!("get_member_{}", s.name));
        let mut item = Map::new();
        item.insert("get".into(), has);
        let write_answer = json_response(
            "The owner, the member, and whether it was added.",
            json!({ "type": "object", "required": ["owner", "member", "added"], "properties": { "owner": { "type": "string" }, "member": { "type": "string" }, "added": { "type": "boolean" } } }),
        );
        let mut refusals = vec![
            ("400", error_response("bad_id.")),
            (
                "404",
                error_response("unknown_entity, or (DELETE) not a member."),
            ),
            (
                "503",
                error_response("unavailable: the store or the database is down."),
            ),
        ];
        if !s.writable {
            refusals.push((
                "405",
                error_response("method_not_allowed: the set is read-only."),
            ));
        }
        // Write-back: 202 once the durable store holds the write.
        let queued = json_response(
            "Queued: the durable store holds the write; the flusher applies it to the database.",
            json!({ "type": "object", "required": ["queued", "owner", "member"], "properties": {
                "queued": { "type": "boolean", "const": true },
                "owner": { "type": "string" },
                "member": { "type": "string" } } }),
        );
        let (mut put_items, put_what) = if s.write_back {
            (
                vec![("202", queued.clone())],
                "Add a member (written back: the cached set and a durable record, flushed later).",
            )
        } else {
            (
                vec![("201", write_answer.clone()), ("200", write_answer)],
                "Add a member (the database first, then the cached set).",
            )
        };
        put_items.extend(refusals.iter().cloned());
        let mut put = op(
            "PUT",
            route,
            false,
            put_what,
            vec![owner(), member()],
            responses(&put_items),
        );
        put["operationId"] = json!(format!("add_member_{}", s.name));
        item.insert("put".into(), put);
        let (mut del_items, del_what) = if s.write_back {
            (
                vec![("202", queued)],
                "Remove a member (written back: the cached set and a durable record, flushed later).",
            )
        } else {
            (
                vec![("204", json!({ "description": "Removed." }))],
                "Remove a member (the database first, then the cached set).",
            )
        };
        del_items.extend(refusals.iter().cloned());
        let mut del = op(
            "DELETE",
            route,
            false,
            del_what,
            vec![owner(), member()],
            responses(&del_items),
        );
        del["operationId"] = json!(format!("remove_member_{}", s.name));
        item.insert("delete".into(), del);
        paths.insert(format!("{base}/members/{{member}}"), Value::Object(item));
    }
}

/// The row schema registered under `name` (an empty object if none).
fn row_schema_of(schemas: &Map<String, Value>, name: &str) -> Value {
    schemas.get(name).cloned().unwrap_or_else(|| json!({}))
}

/// The answer to `fields=`: the row's columns, none required (only the
/// requested ones are present).
fn fields_schema(row: &Value) -> Value {
    let mut s = row.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("required");
        o.insert(
            "description".into(),
            json!("Some columns of the row: those `fields` named (a NULL one as null)."),
        );
    }
    s
}

/// The `fields` query parameter: column names separated by `,`.
fn fields_param(e: &EntityDoc<'_>) -> Value {
    let item = if e.columns.is_empty() {
        json!({ "type": "string" })
    } else {
        let names: Vec<&str> = e.columns.iter().map(|c| c.name.as_str()).collect();
        json!({ "type": "string", "enum": names })
    };
    json!({
        "name": "fields",
        "in": "query",
        "required": false,
        "style": "form",
        "explode": false,
        "description": "Only these columns, comma-separated (an unknown one is 400 unknown_column); a requested NULL column is present as null.",
        "schema": { "type": "array", "items": item, "minItems": 1 }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Days in `month` of `year`, by the proleptic Gregorian calendar.
    fn days_in(year: u32, month: u32) -> u32 {
        let leap =
            year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
        match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    #[test]
    fn the_local_date_time_pattern_takes_every_real_day_and_no_other() {
        // The regex crate has no lookahead: the `(?!0000)` guard (no year 0)
        // is checked as text, the rest by matching every day of 1..=2401.
        let body = LOCAL_DATE_TIME
            .strip_prefix("^(?!0000)")
            .expect("the pattern refuses year 0000 first");
        let re = regex::Regex::new(&format!("^{body}")).expect("a valid pattern");
        for year in 1..=2401 {
            for month in 1..=12 {
                for day in 1..=31 {
                    let text = format!("{year:04}-{month:02}-{day:02}T23:59:59.5");
                    assert_eq!(re.is_match(&text), day <= days_in(year, month), "{text}");
                }
            }
        }
        assert!(re.is_match("9996-02-29 00:00:00"));
        assert!(!re.is_match("2024-02-29 24:00:00"));
    }

    fn col(
        name: &str,
        sql_type: &str,
        not_null: bool,
        has_default: bool,
        is_key: bool,
    ) -> ColumnDoc {
        // As the library describes PostgreSQL columns of these types.
        ColumnDoc {
            name: name.into(),
            sql_type: sql_type.into(),
            not_null,
            has_default,
            is_key,
            int_range: element_int_range(sql_type),
            max_chars: element_max_chars(sql_type),
        }
    }

    fn docs(columns: &[ColumnDoc], public_reads: bool) -> Value {
        build(&[
            EntityDoc {
                name: "users",
                write: WriteMode::Through,
                key: "id",
                key_type: KeyDoc::Integer {
                    min: i32::MIN.into(),
                    max: i32::MAX.into(),
                },
                columns: columns.to_vec(),
                public_reads,
                hash: false,
            },
            EntityDoc {
                name: "notes",
                write: WriteMode::Back,
                key: "id",
                key_type: KeyDoc::Text { max_chars: 20 },
                columns: Vec::new(),
                public_reads: false,
                hash: false,
            },
        ])
    }

    #[test]
    fn every_route_is_documented_with_the_security_auth_applies() {
        let columns = [col("id", "integer", true, false, true)];
        for public in [false, true] {
            let doc = docs(&columns, public);
            for (method, path) in super::super::ROUTES {
                if path.contains("/members/")
                    || path.contains("/items/")
                    || (*method == "POST" && *path == "/v1/{entity}/{id}")
                {
                    // A set's route: see `set_routes_are_documented_with_their_security`.
                    continue;
                }
                for entity in ["users", "notes"] {
                    let concrete = path.replace("{entity}", entity);
                    if path.ends_with("/incr") {
                        // Neither test entity can increment: `users` has no
                        // numeric column, `notes` is written back.
                        assert!(doc["paths"].get(&concrete).is_none(), "{concrete}");
                        continue;
                    }
                    if path.contains("dead-letters") && entity == "users" {
                        // Only write-back entities have dead letters.
                        assert!(doc["paths"].get(&concrete).is_none(), "{concrete}");
                        continue;
                    }
                    let op = &doc["paths"][&concrete][method.to_ascii_lowercase()];
                    assert!(op.is_object(), "{method} {concrete} is not in the document");
                    let m: Method = method.parse().expect("method");
                    let open = match access(&m, path) {
                        Access::Open => true,
                        Access::RowRead => public && entity == "users",
                        Access::Read | Access::Admin => false,
                    };
                    assert_eq!(
                        op.get("security") == Some(&json!([])),
                        open,
                        "{method} {concrete}"
                    );
                    assert_eq!(
                        op["responses"].get("401").is_some(),
                        !open,
                        "{method} {concrete}"
                    );
                    assert_eq!(
                        op["responses"].get("403").is_some(),
                        access(&m, path) == Access::Admin,
                        "{method} {concrete}"
                    );
                }
            }
        }
    }

    #[test]
    fn set_routes_are_documented_with_their_security() {
        for public in [false, true] {
            let mut doc = docs(&[], false);
            add_sets(
                &mut doc,
                &[SetDoc {
                    name: "followers",
                    integer_members: true,
                    writable: true,
                    write_back: false,
                    public_reads: public,
                }],
            );
            let member = "/v1/followers/{owner}/members/{member}";
            for (method, path, route) in [
                ("get", "/v1/followers/{owner}", "/v1/{entity}/{id}"),
                (
                    "post",
                    "/v1/followers/{owner}/invalidate",
                    "/v1/{entity}/{id}/invalidate",
                ),
                ("get", member, "/v1/{entity}/{id}/members/{member}"),
                ("put", member, "/v1/{entity}/{id}/members/{member}"),
                ("delete", member, "/v1/{entity}/{id}/members/{member}"),
            ] {
                let op = &doc["paths"][path][method];
                assert!(op.is_object(), "{method} {path} is not in the document");
                let m: Method = method.to_ascii_uppercase().parse().expect("method");
                let open = access(&m, route) == Access::RowRead && public;
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
            }
            assert!(super::super::ROUTES.contains(&("PUT", "/v1/{entity}/{id}/members/{member}")));
            assert_eq!(
                doc["paths"][member]["put"]["responses"]["201"]["description"]
                    .as_str()
                    .map(|d| d.starts_with("The owner")),
                Some(true)
            );
            assert_eq!(
                doc["paths"][member]["get"]["parameters"][1]["schema"]["type"],
                "integer"
            );
        }
    }

    #[test]
    fn rows_are_typed_from_their_columns() {
        let columns = [
            col("id", "integer", true, false, true),
            col("name", "character varying(20)", true, false, false),
            col("bio", "text", false, false, false),
            col("big", "bigint", false, false, false),
            col("price", "numeric(8,2)", true, true, false),
            col("doc", "jsonb", false, false, false),
            col("at", "timestamp with time zone", true, true, false),
            col("tags", "text[]", false, false, false),
            col("flag", "boolean", true, false, false),
        ];
        let doc = docs(&columns, false);
        let id = &doc["paths"]["/v1/users/{id}"]["get"]["parameters"][0]["schema"];
        assert_eq!(id["type"], "integer");
        assert_eq!(
            (id["minimum"].as_i64(), id["maximum"].as_i64()),
            (Some(-2147483648), Some(2147483647))
        );
        let put = &doc["components"]["schemas"]["UsersPut"];
        assert_eq!(put["required"], json!(["name", "flag"]));
        assert_eq!(put["additionalProperties"], false);
        assert!(
            put["properties"].get("id").is_none(),
            "the key is the path's"
        );
        let p = &put["properties"];
        assert_eq!(p["name"]["maxLength"], 20);
        assert_eq!(p["name"]["pattern"], NO_NUL);
        assert_eq!(p["bio"]["type"], json!(["string", "null"]));
        assert_eq!(p["big"]["maximum"].as_i64(), Some(i64::MAX));
        assert_eq!(p["price"]["maximum"].as_f64(), Some(999_999.0));
        assert_eq!(
            p["doc"]["anyOf"][0]["$ref"],
            "#/components/schemas/JsonDocument"
        );
        assert_eq!(p["at"]["format"], "date-time");
        assert_eq!(p["tags"]["items"]["type"], json!(["string", "null"]));
        assert_eq!(p["flag"]["type"], "boolean");
        let row = &doc["components"]["schemas"]["UsersRow"];
        assert_eq!(
            row["required"].as_array().map(Vec::len),
            Some(columns.len())
        );
        let text_id = &doc["paths"]["/v1/notes/{id}"]["get"]["parameters"][0]["schema"];
        assert_eq!(
            (text_id["type"].as_str(), text_id["maxLength"].as_u64()),
            (Some("string"), Some(20))
        );
        assert!(doc["paths"]["/v1/notes/{id}"]["put"]["responses"]
            .get("202")
            .is_some());
        assert!(doc["paths"]["/v1/users/{id}"]["put"]["responses"]
            .get("202")
            .is_none());
        assert!(doc["paths"].get("/v1/_admin/users/dead-letters").is_none());
    }

    #[test]
    fn sql_types_map_to_their_limits() {
        assert_eq!(element_int_range("smallint"), Some((-32768, 32767)));
        assert_eq!(
            element_int_range("integer"),
            Some((i32::MIN.into(), i32::MAX.into()))
        );
        assert_eq!(element_int_range("bigint"), Some((i64::MIN, i64::MAX)));
        assert_eq!(element_int_range("interval"), None);
        assert_eq!(element_max_chars("character varying(12)"), Some(12));
        assert_eq!(element_max_chars("character(3)"), Some(3));
        assert_eq!(element_max_chars("text"), None);
        let ints = column_schema("integer[]", None, None);
        assert_eq!(ints["items"]["maximum"].as_i64(), Some(i32::MAX.into()));
        // Scalar limits come from the library's description of the column.
        let s = column_schema("INTEGER", Some((i64::MIN, i64::MAX)), None);
        assert_eq!(s["maximum"].as_i64(), Some(i64::MAX));
        assert_eq!(column_schema("uuid", None, None)["format"], "uuid");
        assert_eq!(column_schema("date", None, None)["format"], "date");
        assert_eq!(column_schema("numeric", None, None)["type"], "number");
    }
}
