//! What a database refused, as an [`ErrorKind`]: the constraint a row
//! broke, or a value the database would not take.
//!
//! Why here: the backend that raised the error is the one place that knows
//! what its codes mean. The constraint comes from the driver's own
//! classification (sqlx's `DatabaseError::kind()`, which every backend
//! implements: SQLSTATEs for PostgreSQL, extended result codes for
//! SQLite, error numbers for MySQL), so a new backend needs nothing more;
//! what the driver leaves as "other" is sorted by SQLSTATE class (`23`: a
//! constraint, `22`: a data exception) or, on SQLite, by primary result
//! code. Callers read [`Error::kind`](crate::Error::kind), never codes.

use super::Classified;
use crate::error::{ConstraintKind, ErrorKind};
use sqlx::error::{DatabaseError, ErrorKind as DriverKind};

/// The refusal a driver error stands for, if it is one.
pub(crate) fn refusal_of(e: &sqlx::Error) -> Option<ErrorKind> {
    match e {
        sqlx::Error::Database(db) => refusal_of_database(db.as_ref()),
        // Found by larder itself on MariaDB: an upsert that would have run
        // into another row through a unique index other than the key's.
        sqlx::Error::Decode(cause) if cause.is::<super::mysql::UniqueConflict>() => {
            Some(ErrorKind::Conflict(ConstraintKind::Unique))
        }
        _ => None,
    }
}

/// The refusal a database error stands for, if it is one.
pub(crate) fn refusal_of_database(db: &dyn DatabaseError) -> Option<ErrorKind> {
    let constraint = match db.kind() {
        DriverKind::UniqueViolation => ConstraintKind::Unique,
        DriverKind::ForeignKeyViolation => ConstraintKind::ForeignKey,
        DriverKind::NotNullViolation => ConstraintKind::NotNull,
        DriverKind::CheckViolation => ConstraintKind::Check,
        _ => {
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                return refusal_of_mysql(my.number());
            }
            let code = db.code().unwrap_or_default();
            return if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite: the primary result code is the low byte.
                match code.parse::<u32>().map(|c| c & 0xff) {
                    Ok(19) => Some(ErrorKind::Conflict(ConstraintKind::Other)),
                    // TOOBIG, MISMATCH, RANGE.
                    Ok(18 | 20 | 25) => Some(ErrorKind::InvalidValue),
                    _ => None,
                }
            } else if code.starts_with("23") {
                Some(ErrorKind::Conflict(ConstraintKind::Other))
            } else if code.starts_with("22") {
                Some(ErrorKind::InvalidValue)
            } else {
                None
            };
        }
    };
    Some(ErrorKind::Conflict(constraint))
}

/// MariaDB's error numbers the driver leaves as "other": its own CHECK
/// failure (4025; MySQL's 3819 is classified by the driver), and values a
/// column would not take (out of range, truncated, malformed: their
/// SQLSTATEs are too coarse to sort by class, `HY000` or `01000`).
fn refusal_of_mysql(number: u16) -> Option<ErrorKind> {
    match number {
        4025 | 3819 => Some(ErrorKind::Conflict(ConstraintKind::Check)),
        1264 | 1265 | 1292 | 1366 | 1406 | 3140 => Some(ErrorKind::InvalidValue),
        _ => None,
    }
}

/// The refusal recorded in an [`Error::Source`](crate::Error::Source)'s
/// cause: a classified driver error, or a driver error as it came.
pub(crate) fn refusal_of_cause(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    if let Some(c) = cause.downcast_ref::<Classified>() {
        return refusal_of(&c.error);
    }
    cause.downcast_ref::<sqlx::Error>().and_then(refusal_of)
}
