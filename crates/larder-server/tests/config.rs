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

/// A write-back entity with `[entity.write_back]` lines.
fn write_back(lines: &str) -> String {
    format!("{MIN}write = \"back\"\n[entity.write_back]\n{lines}")
}

#[test]
fn library_limits_are_reported_at_their_key() {
    let e = refused(&write_back("batch = 10001\n"));
    assert_eq!(
        e.to_string(),
        "larder: bad.toml: entity[0].write_back.batch: must be at most 10000"
    );
    let e = refused(&write_back("batch = 0\n"));
    assert_eq!(e.key, "entity[0].write_back.batch");
    assert_eq!(e.problem, "must be at least 1");
    let e = refused(&write_back("flush_lease = \"50ms\"\n"));
    assert_eq!(e.key, "entity[0].write_back.flush_lease");
    assert!(e.problem.contains("at least 100ms"), "{e}");
    let e = refused(&write_back("max_delay = \"0s\"\n"));
    assert_eq!(e.key, "entity[0].write_back.max_delay");
    let e = refused(&write_back("max_backlog = 0\n"));
    assert_eq!(e.key, "entity[0].write_back.max_backlog");
    // The limits are the library's own constants, at their edges.
    let edge = format!(
        "batch = {}\nflush_lease = \"{}ms\"\n",
        larder::WriteBackOptions::MAX_BATCH,
        larder::WriteBackOptions::MIN_FLUSH_LEASE.as_millis()
    );
    let c = Config::parse(&write_back(&edge), "ok.toml").unwrap_or_else(|e| panic!("{e}"));
    let wb = c.entity[0].write_back.expect("write_back");
    assert_eq!(wb.batch, larder::WriteBackOptions::MAX_BATCH);
}

#[test]
fn near_settings_are_reported_at_their_key() {
    let e = refused(&format!("[near]\nttl = \"0s\"\n{MIN}"));
    assert_eq!(
        e.to_string(),
        "larder: bad.toml: near.ttl: must be longer than 0s"
    );
    let e = refused(&format!("[near]\ncapacity = 0\n{MIN}"));
    assert_eq!(e.key, "near.capacity");
    let e = refused(&format!("{MIN}[entity.near]\nttl = \"0s\"\n"));
    assert_eq!(e.key, "entity[0].near.ttl");
    let e = refused(&format!("{MIN}[entity.near]\ncapacity = 0\n"));
    assert_eq!(e.key, "entity[0].near.capacity");
    let e = refused(&format!("[near]\nsize = 3\n{MIN}"));
    assert_eq!(e.key, "near.size", "unknown keys of the library's type too");
}

#[test]
fn freshness_settings_are_reported_at_their_key() {
    for (line, key) in [
        ("ttl = \"0s\"", "entity[0].ttl"),
        ("jitter = 1.0", "entity[0].jitter"),
        ("early_refresh = -1.0", "entity[0].early_refresh"),
        ("load_timeout = \"0s\"", "entity[0].load_timeout"),
        ("wait_timeout = \"5s\"", "entity[0].wait_timeout"),
        ("soft_timeout = \"2s\"", "entity[0].soft_timeout"),
        ("shards = 0", "entity[0].shards"),
    ] {
        let e = refused(&format!("{MIN}{line}\n"));
        assert_eq!(e.key, key, "{line}: {e}");
    }
    let e = refused(&format!("{MIN}lease_ttl = \"1s\"\n"));
    assert_eq!(e.key, "entity[0].load_timeout", "2s does not fit in 1s");
    assert!(e.problem.contains("lease_ttl (1s)"), "{e}");
}

#[test]
fn defaults_are_the_librarys() {
    let c = Config::parse(&format!("[near]\n{MIN}"), "t.toml").expect("parse");
    let near = c.near.expect("[near]");
    assert_eq!(near, larder::NearOptions::default());
    assert_eq!(near.ttl, larder::NearOptions::DEFAULT_TTL);
    assert_eq!(near.ttl, std::time::Duration::from_secs(10));
    let c = Config::parse(&format!("{MIN}[entity.near]\ncapacity = 5\n"), "t.toml").expect("parse");
    let near = c.entity[0].near_cache(c.near).expect("near");
    assert_eq!(
        (near.capacity, near.ttl),
        (5, larder::NearOptions::DEFAULT_TTL)
    );
    let c = Config::parse(&write_back(""), "t.toml").expect("parse");
    assert_eq!(
        c.entity[0].write_back,
        Some(larder::WriteBackOptions::default())
    );
    let e = &Config::parse(MIN, "t.toml").expect("parse").entity[0];
    assert_eq!(e.ttl.0, larder::DEFAULT_TTL);
    assert_eq!(e.jitter, larder::DEFAULT_JITTER);
    assert_eq!(e.stale.0, larder::DEFAULT_STALE);
    assert_eq!(e.negative_ttl.0, larder::DEFAULT_NEGATIVE_TTL);
    assert_eq!(e.lease_ttl.0, larder::DEFAULT_LEASE_TTL);
    assert_eq!(e.load_timeout.0, larder::DEFAULT_LOAD_TIMEOUT);
    assert_eq!(e.early_refresh, larder::DEFAULT_EARLY_REFRESH);
    assert_eq!(e.shards, larder::DEFAULT_SHARDS);
}
