//! The change triggers: their SQL, and installing them idempotently.
//!
//! One PL/pgSQL function per table (named like the channel, in the table's
//! schema) so the key column is read by name (`NEW."id"::text`), not by a
//! `to_jsonb(NEW)` of the whole row per change; and two triggers on the
//! table that call it: `larder_cdc` (AFTER INSERT OR UPDATE OR DELETE, FOR
//! EACH ROW) and `larder_cdc_truncate` (AFTER TRUNCATE, FOR EACH STATEMENT).
//! Identifiers are validated at build time and quoted, so they are safe to
//! splice into the SQL.

use super::{classify, ChangeChannel, ChannelIds};
use crate::error::{Error, Result};
use crate::source::sql::schema::quote;
use crate::source::sql::schema::Schema;
use crate::source::sql::Backend;
use sqlx::Row;

/// The largest payload a trigger sends; PostgreSQL refuses 8,000 bytes or
/// more. A key that would not fit sends the purge marker instead.
pub(super) const MAX_PAYLOAD: usize = 7900;

/// The row trigger's name (trigger names are per table).
const ROW_TRIGGER: &str = "larder_cdc";

/// The TRUNCATE trigger's name.
const TRUNCATE_TRIGGER: &str = "larder_cdc_truncate";

/// The names of one pair of triggers on a table.
#[derive(Debug)]
struct TriggerNames {
    row: String,
    truncate: String,
}

impl TriggerNames {
    /// An entity's: [`ROW_TRIGGER`], [`TRUNCATE_TRIGGER`].
    fn entity() -> Self {
        TriggerNames {
            row: ROW_TRIGGER.into(),
            truncate: TRUNCATE_TRIGGER.into(),
        }
    }

    /// A collection's: the entity's names with `_<suffix>`.
    fn suffixed(suffix: &str) -> Self {
        TriggerNames {
            row: format!("{ROW_TRIGGER}_{suffix}"),
            truncate: format!("{TRUNCATE_TRIGGER}_{suffix}"),
        }
    }
}

/// The PostgreSQL pool of an entity's source, or why it has no change
/// notifications (SQLite, MariaDB).
pub(super) fn postgres_pool(backend: &Backend, entity: &str) -> Result<sqlx::PgPool> {
    match backend {
        Backend::Postgres(pool, _) => Ok(pool.clone()),
        Backend::Sqlite(..) => Err(no_notifications_sqlite(entity)),
        Backend::MySql(..) => Err(no_notifications_mysql(entity)),
    }
}

/// SQLite has no change notifications.
pub(crate) fn no_notifications_sqlite(entity: &str) -> Error {
    Error::Config(format!(
        "entity `{entity}`: SQLite has no change notifications; \
         keep its cache right by writing through larder or invalidating after writes"
    ))
}

/// MySQL/MariaDB has no change notifications.
pub(crate) fn no_notifications_mysql(entity: &str) -> Error {
    Error::Config(format!(
        "entity `{entity}`: cdc: MySQL/MariaDB has no change notifications; \
         set cdc = false and invalidate explicitly after writes that bypass larder \
         (Cache::invalidate, POST /v1/{{entity}}/{{id}}/invalidate)"
    ))
}

/// Installs (or finds in place) the function and both triggers on
/// `schema`'s table, notifying the values of `column`.
///
/// An entity's triggers (`per_column` false) keep the names they always
/// had (`larder_cdc`, `larder_cdc_truncate`; channel per table). A
/// collection's (`per_column` true) are named, and notify a channel,
/// after the column too, so a table can carry an entity's triggers and
/// those of every collection grouped by one of its columns at once.
pub(crate) async fn install(
    pool: sqlx::PgPool,
    schema: &Schema,
    column: &str,
    per_column: bool,
    ids: ChannelIds,
) -> Result<ChangeChannel> {
    let entity = schema.entity.as_str();
    // describe() resolved the schema; "public" is only a fallback.
    let schema_name = schema.table.schema.as_deref().unwrap_or("public");
    let table_name = schema.table.name.as_str();
    let (channel, names) = if per_column {
        let (channel, suffix) = column_channel_name(schema_name, table_name, column);
        (channel, TriggerNames::suffixed(&suffix))
    } else {
        (
            channel_name(schema_name, table_name),
            TriggerNames::entity(),
        )
    };
    let sql = TriggerSql::new(schema_name, table_name, column, &channel, &names);

    let mut tx = pool.begin().await.map_err(|e| classify(entity, e))?;
    // Serialises concurrent installers (CREATE OR REPLACE FUNCTION from two
    // sessions at once fails with "tuple concurrently updated").
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('larder_cdc'), hashtext($1))")
        .bind(&channel)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(entity, e))?;
    let relkind: Option<String> = sqlx::query_scalar(
        "SELECT c.relkind::text FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(schema_name)
    .bind(table_name)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| classify(entity, e))?;
    match relkind.as_deref() {
        Some("r" | "p") => {}
        Some("v" | "m") => {
            return Err(Error::Config(format!(
                "entity `{entity}`: `{schema_name}.{table_name}` is a view, and views cannot \
                 carry change triggers; install them on the underlying tables and invalidate \
                 this entity from their handlers"
            )))
        }
        Some("f") => {
            return Err(Error::Config(format!(
                "entity `{entity}`: `{schema_name}.{table_name}` is a foreign table; changes on \
                 the remote server fire no trigger here"
            )))
        }
        _ => {
            return Err(Error::Config(format!(
                "entity `{entity}`: table `{schema_name}.{table_name}` not found"
            )))
        }
    }
    if !in_place(&mut tx, &sql, &names, schema_name, table_name, &channel)
        .await
        .map_err(|e| classify(entity, e))?
    {
        for stmt in [&sql.function, &sql.row_trigger, &sql.truncate_trigger] {
            sqlx::raw_sql(stmt)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(entity, e))?;
        }
    }
    tx.commit().await.map_err(|e| classify(entity, e))?;
    Ok(ChangeChannel {
        name: channel,
        ids,
        pool,
    })
}

/// Whether the function has exactly the wanted body and both triggers exist
/// and call it.
async fn in_place(
    tx: &mut sqlx::PgConnection,
    sql: &TriggerSql,
    names: &TriggerNames,
    schema_name: &str,
    table_name: &str,
    function: &str,
) -> sqlx::Result<bool> {
    let row = sqlx::query(
        "SELECT p.prosrc,
                (SELECT count(*) FROM pg_catalog.pg_trigger t
                  WHERE t.tgfoid = p.oid AND t.tgname IN ($4, $5)
                    AND t.tgrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass)
           FROM pg_catalog.pg_proc p
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = $1 AND p.proname = $3 AND p.pronargs = 0",
    )
    .bind(schema_name)
    .bind(table_name)
    .bind(function)
    .bind(&names.row)
    .bind(&names.truncate)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let body: String = row.try_get(0)?;
    let triggers: i64 = row.try_get(1)?;
    Ok(body == sql.body && triggers == 2)
}

/// `larder_<table>_<xxh3 of schema.table, 8 hex digits>`, at most 63 bytes:
/// the channel and the function's name.
fn channel_name(schema_name: &str, table_name: &str) -> String {
    let hash = xxhash_rust::xxh3::xxh3_64(format!("{schema_name}.{table_name}").as_bytes());
    // Identifiers are ASCII, so any byte index is a char boundary.
    let short = &table_name[..table_name.len().min(46)];
    format!("larder_{short}_{:08x}", hash & 0xffff_ffff)
}

/// The channel of a collection's triggers on `column` of a table:
/// `larder_<table>_<8 hex digits>` hashing `schema.table.column`, and the
/// digits (the triggers' suffix).
fn column_channel_name(schema_name: &str, table_name: &str, column: &str) -> (String, String) {
    let hash =
        xxhash_rust::xxh3::xxh3_64(format!("{schema_name}.{table_name}.{column}").as_bytes());
    let digits = format!("{:08x}", hash & 0xffff_ffff);
    let short = &table_name[..table_name.len().min(46)];
    (format!("larder_{short}_{digits}"), digits)
}

/// The statements that install the triggers of one table.
#[derive(Debug)]
struct TriggerSql {
    /// The function's body (what `pg_proc.prosrc` holds).
    body: String,
    function: String,
    row_trigger: String,
    truncate_trigger: String,
}

impl TriggerSql {
    fn new(
        schema_name: &str,
        table_name: &str,
        key: &str,
        channel: &str,
        names: &TriggerNames,
    ) -> Self {
        let (row_trigger, truncate_trigger) = (&names.row, &names.truncate);
        let table = format!("{}.{}", quote(schema_name), quote(table_name));
        let func = format!("{}.{}", quote(schema_name), quote(channel));
        let key = quote(key);
        // Keys are rendered with ::text (what `SqlSource` ids are) and JSON
        // encoded by json_build_array; the key comparison is on text so any
        // key type works, even one without an equality operator.
        let body = format!(
            r#"
DECLARE
    payload text;
BEGIN
    IF current_setting('larder.origin', true) = 'larder' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        payload := '{{"purge":"truncate"}}';
    ELSIF TG_OP = 'INSERT' THEN
        payload := json_build_array(NEW.{key}::text)::text;
    ELSIF TG_OP = 'DELETE' THEN
        payload := json_build_array(OLD.{key}::text)::text;
    ELSIF OLD.{key}::text IS DISTINCT FROM NEW.{key}::text THEN
        payload := json_build_array(OLD.{key}::text, NEW.{key}::text)::text;
    ELSE
        payload := json_build_array(NEW.{key}::text)::text;
    END IF;
    IF octet_length(payload) > {MAX_PAYLOAD} THEN
        payload := '{{"purge":"long key"}}';
    END IF;
    PERFORM pg_notify('{channel}', payload);
    RETURN NULL;
END
"#
        );
        TriggerSql {
            function: format!(
                "CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $larder${body}$larder$"
            ),
            row_trigger: format!(
                "CREATE OR REPLACE TRIGGER {row_trigger} AFTER INSERT OR UPDATE OR DELETE ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION {func}()"
            ),
            truncate_trigger: format!(
                "CREATE OR REPLACE TRIGGER {truncate_trigger} AFTER TRUNCATE ON {table} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {func}()"
            ),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_fit_and_differ_by_schema() {
        let a = channel_name("public", "users");
        assert!(a.starts_with("larder_users_"), "{a}");
        assert_ne!(a, channel_name("other", "users"));
        let long = channel_name("public", &"t".repeat(63));
        assert!(long.len() <= 63, "{}", long.len());
        assert!(crate::source::sql::schema::ident("channel", &long).is_ok());
    }

    #[test]
    fn function_checks_origin_and_payload_size() {
        let sql = TriggerSql::new("s", "t", "id", "larder_t_0", &TriggerNames::entity());
        assert!(sql
            .function
            .contains("current_setting('larder.origin', true)"));
        assert!(sql.body.contains("octet_length(payload) > 7900"));
        assert!(sql.body.contains(r#"'{"purge":"truncate"}'"#));
        assert!(sql.row_trigger.contains(r#"ON "s"."t""#));
    }
}
