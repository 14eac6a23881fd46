//! Bad configs stop startup with one line naming the file, the key and the
//! problem — one test per kind; and the example file stays true.

mod support;

use larder_server::config::{Config, ConfigError};
use support::{pg_config, unique, Pg};

const MIN: &str = "[[entity]]\nname = \"users\"\ntable = \"users\"\n";

fn refused(text: &str) -> ConfigError {
    let e = Config::parse(text, "bad.toml").expect_err("refused");
    check_line(&e);
    e
}

fn check_line(e: &ConfigError) {
    let line = e.to_string();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with(&format!("larder: {}: {}: ", e.file, e.key)),
        "{line}"
    );
    assert!(!e.problem.is_empty());
}

/// Startup against the database: the error must be a ConfigError too.
async fn refused_at_start(text: &str) -> ConfigError {
    let config = Config::parse(text, "bad.toml").unwrap_or_else(|e| panic!("parses: {e}"));
    let err = larder_server::serve::start(config)
        .await
        .expect_err("refused at start");
    let e = err
        .downcast_ref::<ConfigError>()
        .unwrap_or_else(|| panic!("not a config error: {err:#}"))
        .clone();
    check_line(&e);
    e
}

#[test]
fn the_example_file_parses_with_every_key() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../larder.example.toml");
    let text = std::fs::read_to_string(path).expect("larder.example.toml");
    let c = Config::parse(&text, "larder.example.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(c.near.is_some());
    assert_eq!(c.entity.len(), 1);
    // The commented write-back section is valid with write = "back".
    let back = text
        .replace("write = \"through\"", "write = \"back\"")
        .replace("# [entity.write_back]", "[entity.write_back]")
        .replace("# batch", "batch")
        .replace("# max_delay", "max_delay")
        .replace("# flush_lease", "flush_lease")
        .replace("# max_backlog", "max_backlog")
        .replace("# require_durable", "require_durable");
    let c = Config::parse(&back, "larder.example.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.entity[0].write_back.map(|w| w.batch), Some(500));
}

#[test]
fn unknown_key() {
    let e = refused(&format!("{MIN}colour = \"red\"\n"));
    assert_eq!(e.key, "entity[0].colour");
    assert!(e.problem.contains("unknown field"), "{e}");
    let e = refused(&format!("[cache]\nsize = 1\n{MIN}"));
    assert_eq!(e.key, "cache");
    assert_eq!(e.file, "bad.toml");
}

#[test]
fn unknown_policy() {
    let e = refused(&format!("{MIN}write = \"behind\"\n"));
    assert_eq!(e.key, "entity[0].write");
    assert!(e.problem.contains("behind"), "{e}");
}

#[test]
fn bad_duration() {
    let e = refused(&format!("{MIN}stale = \"5 fortnights\"\n"));
    assert_eq!(e.key, "entity[0].stale");
    assert!(e.problem.contains("invalid duration"), "{e}");
}

#[test]
fn reserved_or_invalid_name() {
    for name in ["stats", "tags", "_admin"] {
        let e = refused(&format!("[[entity]]\nname = \"{name}\"\ntable = \"t\"\n"));
        assert_eq!(e.key, "entity[0].name");
        assert!(e.problem.contains("reserved"), "{e}");
    }
    let e = refused("[[entity]]\nname = \"Bad Name\"\ntable = \"t\"\n");
    assert_eq!(e.key, "entity[0].name");
    let e = refused(&format!("{MIN}{MIN}"));
    assert_eq!(e.key, "entity[1].name");
}

#[test]
fn write_on_a_query_and_cdc_where_impossible() {
    let pg = "[source]\nurl = \"postgres://x@h/db\"\n";
    let e = refused(&format!(
        "{pg}[[entity]]\nname = \"q\"\nquery = \"SELECT 1 AS id\"\nwrite = \"through\"\n"
    ));
    assert_eq!(e.key, "entity[0].write");
    let e = refused("[[entity]]\nname = \"q\"\nquery = \"SELECT 1 AS id\"\n");
    assert_eq!(e.key, "entity[0].query", "query entities need PostgreSQL");
    let e = refused(&format!("{MIN}cdc = true\n"));
    assert_eq!(e.key, "entity[0].cdc", "cdc needs PostgreSQL");
    let e = refused(&format!("{MIN}[entity.write_back]\nbatch = 1\n"));
    assert_eq!(
        e.key, "entity[0].write_back",
        "write_back without write = back"
    );
}

#[tokio::test]
async fn missing_table_key_or_column() {
    let mut pg = Pg::connect().await;
    let t = unique("cfg");
    pg.exec(&t, "CREATE TABLE {t} (id int PRIMARY KEY, name text)")
        .await;
    let prefix = unique("t");
    let e = refused_at_start(&pg_config(
        &prefix,
        &format!("[[entity]]\nname = \"e\"\ntable = \"{t}_nope\"\n"),
    ))
    .await;
    assert_eq!(e.key, "entity[0].table");
    let e = refused_at_start(&pg_config(
        &prefix,
        &format!("[[entity]]\nname = \"e\"\ntable = \"{t}\"\nkey = \"uid\"\n"),
    ))
    .await;
    assert_eq!(e.key, "entity[0].key");
    let e = refused_at_start(&pg_config(
        &prefix,
        &format!("[[entity]]\nname = \"e\"\ntable = \"{t}\"\ncolumns = [\"id\", \"nope\"]\n"),
    ))
    .await;
    assert_eq!(e.key, "entity[0].columns");
    let e = refused_at_start(&pg_config(
        &prefix,
        "[[entity]]\nname = \"e\"\nquery = \"SELECT 1 AS nope\"\n",
    ))
    .await;
    assert_eq!(
        e.key, "entity[0].query",
        "the key column must be in the query"
    );
}

#[tokio::test]
async fn writes_on_a_view_tags_and_cdc_checked_against_the_database() {
    let mut pg = Pg::connect().await;
    let t = unique("cfgv");
    pg.exec(&t, "CREATE TABLE {t} (id int PRIMARY KEY, team int)")
        .await;
    let v = format!("{t}_v");
    pg.exec(&v, &format!("CREATE VIEW {{t}} AS SELECT * FROM {t}"))
        .await;
    let prefix = unique("t");
    let e = refused_at_start(&pg_config(
        &prefix,
        &format!("[[entity]]\nname = \"e\"\ntable = \"{v}\"\nwrite = \"through\"\n"),
    ))
    .await;
    assert_eq!(e.key, "entity[0].write");
    assert!(e.problem.contains("read-only"), "{e}");
    let e = refused_at_start(&pg_config(
        &prefix,
        &format!("[[entity]]\nname = \"e\"\ntable = \"{v}\"\ncdc = true\n"),
    ))
    .await;
    assert_eq!(e.key, "entity[0].cdc");
    let e = refused_at_start(&pg_config(
        &prefix,
        &format!("[[entity]]\nname = \"e\"\ntable = \"{t}\"\ntags = [\"org:{{org_id}}\"]\n"),
    ))
    .await;
    assert_eq!(e.key, "entity[0].tags");
    assert!(e.problem.contains("org_id"), "{e}");
    // Valid tags and cdc on a table start (applied once the library has them).
    let ok = Config::parse(
        &pg_config(&prefix, &format!("[[entity]]\nname = \"e\"\ntable = \"{t}\"\ntags = [\"team:{{team}}\"]\ncdc = true\n[near]\n")),
        "ok.toml",
    )
    .expect("parse");
    larder_server::serve::start(ok).await.expect("starts");
}

#[tokio::test]
async fn write_back_on_a_store_that_is_not_durable_is_refused() {
    let mut pg = Pg::connect().await;
    let t = unique("cfgb");
    pg.exec(&t, "CREATE TABLE {t} (id int PRIMARY KEY)").await;
    let e = refused_at_start(&pg_config(
        &unique("t"),
        &format!("[[entity]]\nname = \"e\"\ntable = \"{t}\"\nwrite = \"back\"\n[entity.write_back]\nmax_backlog = 10\n"),
    ))
    .await;
    // The shared Redis keeps nothing on disk.
    assert_eq!(e.key, "entity[0].write_back.require_durable");
    assert!(
        e.problem.contains("appendonly") && e.problem.contains("require_durable = false"),
        "{e}"
    );
}

#[tokio::test]
async fn an_unreachable_database_names_the_source_url() {
    let e = refused_at_start(&format!(
        "[store]\nurl = \"memory://\"\n[source]\nurl = \"postgres://postgres@127.0.0.1:1/test\"\n{MIN}"
    ))
    .await;
    assert_eq!(e.key, "source.url");
}
