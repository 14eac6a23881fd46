//! Every HTTP error in one place: [`ApiError`] and its JSON body.
//!
//! Why one type: clients get the same shape on every error —
//! `{"error": {"code": "...", "message": "..."}}` — whether a handler
//! refused the request, the engine failed, or axum itself answered (a 405,
//! a 413 or an unknown route: [`json_errors`] rewrites those). Messages
//! say what the client can fix; internal details (SQL, driver errors) go to
//! the log only.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use larder::{ConstraintKind, Error, ErrorKind};

/// An error answer: status, stable code, a message for humans.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code clients match on (listed in the README).
    pub code: &'static str,
    /// What went wrong, safe to show to the client.
    pub message: String,
    /// Seconds for a `Retry-After` header (503s, 409 `busy`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `unknown_entity`.
    pub fn unknown_entity(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_entity",
            format!("no entity `{}` is configured", clip(name)),
        )
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    /// 503 `unavailable`, with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// 500 `internal`: the details are logged, not sent.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the details are in the service's log",
        )
    }

    /// The answer for an engine error of `entity`, by its
    /// [`kind`](Error::kind) (never its text or a database code). Bad
    /// input is the client's to fix (4xx, the library's message, which
    /// names the id, column or tag); a constraint the database enforced is
    /// 409 `conflict` (a missing NOT NULL value 400 `missing_column`); a
    /// lost compare-and-set is 409 `busy` with `Retry-After`; an
    /// unavailable store or database, a full backlog and a store that
    /// stopped being durable for write-back are 503; anything else is
    /// logged and answered 500 without details.
    pub fn from_engine(entity: &str, err: &Error) -> Self {
        match err.kind() {
            ErrorKind::InvalidId => Self::new(StatusCode::BAD_REQUEST, "bad_id", err.to_string()),
            ErrorKind::InvalidRow => {
                // The service checks unknown, missing and null columns itself
                // (http::validate); what the library still refuses is a value
                // of the wrong type (or a generated column).
                let reason = match err {
                    Error::InvalidRow { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                Self::new(StatusCode::BAD_REQUEST, "type_mismatch", reason)
            }
            ErrorKind::ReadOnly => Self::method_not_allowed(format!(
                "entity `{entity}` is read-only: writes are not allowed"
            )),
            ErrorKind::Unsupported => Self::method_not_allowed(err.to_string()),
            ErrorKind::InvalidName | ErrorKind::InvalidTag | ErrorKind::Encode => {
                Self::bad_request(err.to_string())
            }
            ErrorKind::Conflict(constraint) => constraint_answer(constraint),
            ErrorKind::InvalidValue => {
                tracing::info!(entity, error = %err, "the database refused a value");
                Self::bad_request("the database refused a value of the row (out of range or malformed for its column type)")
            }
            ErrorKind::SourceUnavailable | ErrorKind::Timeout => {
                tracing::warn!(entity, error = %err, "database unavailable");
                Self::unavailable(
                    "the database is unavailable and the cache has nothing to serve",
                    1,
                )
            }
            ErrorKind::StoreUnavailable => {
                tracing::warn!(entity, error = %err, "store unavailable");
                Self::unavailable("the cache store is unavailable", 1)
            }
            ErrorKind::Busy => {
                tracing::info!(entity, error = %err, "compare-and-set lost to concurrent writers");
                Self {
                    retry_after: Some(1),
                    ..Self::new(
                        StatusCode::CONFLICT,
                        "busy",
                        "the row kept changing under concurrent writers; nothing was written: retry",
                    )
                }
            }
            ErrorKind::NotDurable => {
                tracing::error!(entity, error = %err, "write-back store not durable");
                Self::unavailable(
                    "the cache store no longer keeps write-back writes durably; nothing was written",
                    5,
                )
            }
            ErrorKind::BacklogFull => {
                tracing::warn!(entity, error = %err, "write-back backlog full");
                Self::unavailable("the write-back backlog is full: retry after it drains", 1)
            }
            ErrorKind::Closed => {
                Self::unavailable("the entity is shutting down: retry on another instance", 1)
            }
            _ => {
                tracing::error!(entity, error = %err, "engine error");
                Self::internal()
            }
        }
    }
}

/// The answer for a row the database refused for a constraint.
fn constraint_answer(constraint: ConstraintKind) -> ApiError {
    let conflict = |message: &str| ApiError::new(StatusCode::CONFLICT, "conflict", message);
    match constraint {
        ConstraintKind::Unique => conflict("a row with the same unique value already exists"),
        ConstraintKind::ForeignKey => {
            conflict("a referenced row does not exist (or is still referenced)")
        }
        ConstraintKind::Check => conflict("a check constraint of the table refused the row"),
        ConstraintKind::NotNull => ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_column",
            "a NOT NULL column without a default was left out or set to null",
        ),
        _ => conflict("a constraint of the table refused the row"),
    }
}

/// At most 80 characters of client input, for messages.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        });
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// Gives the JSON error shape to errors axum answers by itself (405 from
/// the method router, 413 from the body limit, a path that does not
/// decode): any 4xx/5xx whose body is not JSON is rewritten, keeping its
/// headers (`Allow` on a 405).
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let err = match status {
        StatusCode::NOT_FOUND => ApiError::not_found("no such route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::method_not_allowed("this method is not allowed on this route")
        }
        StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => unsupported_media_type(),
        StatusCode::UNAUTHORIZED => unauthorized(),
        s if s.is_client_error() => ApiError::new(s, "bad_request", "the request is malformed"),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::unavailable("the service is unavailable", 1),
        _ => ApiError::internal(),
    };
    let (mut parts, _) = res.into_parts();
    let mut fresh = err.into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in parts.headers.iter() {
        fresh.headers_mut().insert(name.clone(), value.clone());
    }
    *fresh.status_mut() = status;
    fresh
}

/// 413 `payload_too_large`.
pub fn payload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than body_limit",
    )
}

/// 415 `unsupported_media_type`.
pub fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as application/json",
    )
}

/// 401 `unauthorized`.
pub fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this route needs Authorization: Bearer <token>",
    )
}

/// 403 `forbidden`: the read-only token on a route it does not open.
pub fn forbidden() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "the read-only token opens row reads, /v1/stats and /metrics only: this route needs the admin token",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_compare_and_set_is_409_busy_with_retry_after() {
        let err = Error::Busy {
            entity: "e".into(),
            id: "1".into(),
            attempts: 32,
        };
        let api = ApiError::from_engine("e", &err);
        assert_eq!(api.status, StatusCode::CONFLICT);
        assert_eq!(api.code, "busy");
        let res = api.into_response();
        assert_eq!(
            res.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(1u32))
        );
    }

    #[test]
    fn a_bad_tag_is_400_bad_request() {
        let err = Error::InvalidTag {
            tag: String::new(),
            reason: "a tag cannot be empty".into(),
        };
        let api = ApiError::from_engine("e", &err);
        assert_eq!(api.status, StatusCode::BAD_REQUEST);
        assert_eq!(api.code, "bad_request");
        assert!(api.message.contains("tag"), "{}", api.message);
    }

    #[test]
    fn a_broken_invariant_is_500_without_details() {
        let err = Error::Internal {
            what: "secret detail".into(),
        };
        let api = ApiError::from_engine("e", &err);
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!api.message.contains("secret"), "{}", api.message);
    }

    #[test]
    fn a_store_that_is_not_durable_is_503() {
        let err = Error::NotDurable {
            entity: "e".into(),
            store: "redis://x".into(),
            reason: "appendonly is no".into(),
        };
        let api = ApiError::from_engine("e", &err);
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(api.code, "unavailable");
        assert!(api
            .into_response()
            .headers()
            .contains_key(header::RETRY_AFTER));
    }
}
