//! Hash entities (`Representation::Hash`) against the real Redis and
//! PostgreSQL: every column type round-trips through fill, field read and
//! write-through patch; `redis-cli HGET` shows a column's plain value; the
//! read-path guarantees (one load per expiry across instances, stale,
//! negative, purge, tags, near cache) hold as for strings; writers
//! converge; the layout records the representation; non-JSON codecs (and
//! write-back on the memory store, as for strings) are refused; the memory
//! store answers the same. Write-back on hash entities: write_back_hash.rs.

use larder_test_support as support;

use larder::{
    Cache, CacheWrite, ErrorKind, FnSource, ManualClock, MessagePack, NearOptions, Outcome,
    PassThrough, RawJson, Representation, SqlPool, SqlSource, WriteBackOptions, WritePolicy,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::{Keyed, Table, TableSource};

const TYPES: &str = "CREATE TABLE {t} (
    id bigint PRIMARY KEY, name text NOT NULL, empty text, nothing text,
    big bigint, num numeric(24,6), flag boolean, doc jsonb, arr_doc jsonb,
    nums integer[], words text[], at timestamptz, day date, uid uuid,
    small smallint, f double precision, quoted text);
INSERT INTO {t} VALUES (1, 'ann', '', NULL, 9007199254740993, 123456789012345678.500000,
    true, '{\"a\": [], \"b\": {\"c\": [1, \"x\", null]}}', '[]', '{1,2,3}', '{\"a\",\"b c\"}',
    '2024-01-02 03:04:05.123456+00', '2024-02-29', '6f1c2a34-0000-4000-8000-000000000001',
    -7, 1.5, 'say \"hi\"\\n é');";

async fn pg(table: &str) -> sqlx::PgPool {
    let pool = support::pg_pool(2).await;
    sqlx::raw_sql(&TYPES.replace("{t}", table))
        .execute(&pool)
        .await
        .expect("create table");
    pool
}

async fn drop_table(pool: &sqlx::PgPool, table: &str) {
    let _ = sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(pool)
        .await;
}

async fn row_cache(prefix: &str, table: &str, rep: Representation) -> Cache<i64, RawJson> {
    let pool = SqlPool::connect(&support::pg_url(), 3).await.expect("pool");
    let source = SqlSource::builder(pool, table)
        .entity("people")
        .build()
        .await
        .expect("source");
    Cache::builder()
        .prefix(prefix)
        .entity("people")
        .codec(PassThrough)
        .representation(rep)
        .store(support::redis_store().await)
        .source(source)
        .early_refresh(0.0)
        .build()
        .await
        .expect("cache")
}

fn json_of(raw: &RawJson) -> Value {
    serde_json::from_slice(raw.bytes()).expect("json")
}

fn text(raw: &RawJson) -> String {
    String::from_utf8_lossy(raw.bytes()).into_owned()
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-u", &support::redis_url()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .trim_end_matches('\n')
        .to_owned()
}

/// The value key of `id` under `prefix`, found with `SCAN`.
fn hash_key(prefix: &str, id: &str) -> String {
    let pattern = format!("{prefix}:{{people:*}}:h:{id}");
    let found = redis_cli(&["--scan", "--pattern", &pattern]);
    let keys: Vec<&str> = found.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 1, "one hash key for {pattern}: {found:?}");
    keys[0].to_owned()
}

#[tokio::test]
async fn every_column_type_round_trips_through_fill_field_read_and_patch() {
    let table = support::unique("hash_types");
    let pool = pg(&table).await;
    let strings = row_cache(&support::unique("hs"), &table, Representation::String).await;
    let prefix = support::unique("hh");
    let hashes = row_cache(&prefix, &table, Representation::Hash).await;

    // Fill: the whole object equals the string entity's, value for value,
    // in the row's order, and big numbers keep their digits.
    let want = strings.get(&1).await.expect("string read");
    let want = want.value.expect("row");
    let first = hashes.get(&1).await.expect("hash read");
    assert_eq!(first.outcome, Outcome::Miss);
    let got = first.value.expect("row");
    assert_eq!(json_of(&got), json_of(&want));
    assert!(
        text(&got).contains("\"big\":9007199254740993"),
        "{}",
        text(&got)
    );
    assert!(
        text(&got).contains("\"num\":123456789012345678.500000"),
        "{}",
        text(&got)
    );
    let order = |raw: &RawJson| -> Vec<String> {
        let t = text(raw);
        [
            "\"id\"",
            "\"name\"",
            "\"empty\"",
            "\"nothing\"",
            "\"quoted\"",
        ]
        .iter()
        .map(|k| t.find(k).unwrap_or(usize::MAX).to_string())
        .collect()
    };
    let positions = order(&got);
    let mut sorted = positions.clone();
    sorted.sort_by_key(|p| p.parse::<usize>().unwrap_or(usize::MAX));
    assert_eq!(positions, sorted, "the row's column order is kept");
    let hit = hashes.get(&1).await.expect("hash hit");
    assert_eq!(hit.outcome, Outcome::Hit);
    assert_eq!(json_of(&hit.value.expect("row")), json_of(&want));

    // redis-cli HGET shows plain values; NULL is no field; "" is a field.
    let key = hash_key(&prefix, "1");
    assert_eq!(redis_cli(&["HGET", &key, "name"]), "ann");
    assert_eq!(redis_cli(&["HGET", &key, "quoted"]), "say \"hi\"\\n é");
    assert_eq!(redis_cli(&["HGET", &key, "big"]), "9007199254740993");
    assert_eq!(redis_cli(&["HGET", &key, "arr_doc"]), "[]");
    assert_eq!(redis_cli(&["HGET", &key, "day"]), "2024-02-29");
    assert_eq!(redis_cli(&["HEXISTS", &key, "nothing"]), "0");
    assert_eq!(redis_cli(&["HEXISTS", &key, "empty"]), "1");
    assert_eq!(redis_cli(&["HGET", &key, "empty"]), "");
    assert_eq!(redis_cli(&["TYPE", &key]), "hash");

    // A field read: just those, in the order asked, NULL as null, a hit.
    let some = hashes
        .get_fields(
            &1,
            &["big", "nothing", "empty", "doc", "nums", "at", "nope"],
        )
        .await
        .expect("fields");
    assert_eq!(some.outcome, Outcome::Hit);
    let some = some.value.expect("row");
    assert!(
        text(&some).starts_with("{\"big\":9007199254740993,\"nothing\":null,\"empty\":\"\","),
        "{}",
        text(&some)
    );
    let all = json_of(&want);
    assert_eq!(
        json_of(&some),
        json!({ "big": all["big"], "nothing": null, "empty": "", "doc": all["doc"],
                "nums": all["nums"], "at": all["at"] })
    );
    // The string entity's field read answers the same object.
    let projected = strings
        .get_fields(
            &1,
            &["big", "nothing", "empty", "doc", "nums", "at", "nope"],
        )
        .await
        .expect("string fields");
    assert_eq!(json_of(&projected.value.expect("row")), json_of(&some));

    // Write-through patch: the database's RETURNING row is the hash.
    let mut fields = serde_json::Map::new();
    fields.insert("name".into(), json!("bob"));
    fields.insert("empty".into(), Value::Null);
    fields.insert("nothing".into(), json!(""));
    fields.insert("big".into(), json!(9_007_199_254_740_995_i64));
    fields.insert("doc".into(), json!({ "z": [], "y": { "x": [[]] } }));
    fields.insert("words".into(), json!(["", "two words"]));
    fields.insert("flag".into(), json!(false));
    let written = hashes
        .patch(&1, &fields)
        .await
        .expect("patch")
        .expect("row");
    assert_eq!(written.cache, CacheWrite::Updated);
    let after = hashes
        .get_fields(
            &1,
            &["name", "empty", "nothing", "big", "doc", "words", "flag"],
        )
        .await
        .expect("fields after patch");
    assert_eq!(after.outcome, Outcome::Hit, "the patch set the hash");
    let after = after.value.expect("row");
    assert_eq!(
        json_of(&after),
        json!({ "name": "bob", "empty": null, "nothing": "", "big": 9_007_199_254_740_995_i64,
                "doc": { "z": [], "y": { "x": [[]] } }, "words": ["", "two words"], "flag": false })
    );
    assert_eq!(redis_cli(&["HGET", &key, "name"]), "bob");
    assert_eq!(redis_cli(&["HEXISTS", &key, "empty"]), "0");
    assert_eq!(redis_cli(&["HGET", &key, "nothing"]), "");
    let in_db: String = sqlx::query_scalar(&format!(
        "SELECT row_to_json(t)::text FROM {table} t WHERE id = 1"
    ))
    .fetch_one(&pool)
    .await
    .expect("db row");
    let whole = hashes.get(&1).await.expect("read").value.expect("row");
    assert_eq!(
        json_of(&whole),
        serde_json::from_str::<Value>(&in_db).expect("json")
    );

    // Write-through put replaces the hash with the stored row.
    let mut row = json_of(&whole);
    row["name"] = json!("cat");
    row["uid"] = Value::Null;
    let raw = RawJson::from_bytes(row.to_string()).expect("raw");
    let put = hashes.put(&1, &raw).await.expect("put");
    assert_eq!(put.cache, CacheWrite::Updated);
    assert_eq!(redis_cli(&["HGET", &key, "name"]), "cat");
    assert_eq!(redis_cli(&["HEXISTS", &key, "uid"]), "0");
    let read = hashes.get_fields(&1, &["uid", "name"]).await.expect("read");
    assert_eq!(
        json_of(&read.value.expect("row")),
        json!({ "uid": null, "name": "cat" })
    );
    drop_table(&pool, &table).await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Person {
    id: u64,
    name: String,
    email: Option<String>,
    team: u32,
}

impl Keyed for Person {
    fn key(&self) -> u64 {
        self.id
    }
}

fn person(id: u64, name: &str) -> Person {
    Person {
        id,
        name: name.into(),
        email: None,
        team: 7,
    }
}

async fn person_cache(
    prefix: &str,
    table: &Arc<Table<Person>>,
    clock: Option<ManualClock>,
    near: bool,
) -> Cache<u64, Person> {
    let mut b = Cache::builder()
        .prefix(prefix)
        .entity("people")
        .representation(Representation::Hash)
        .store(support::redis_store().await)
        .source(TableSource(table.clone()))
        .ttl(Duration::from_secs(10))
        .stale(Duration::from_secs(60))
        .jitter(0.0)
        .early_refresh(0.0)
        .tagger(|p: &Person| vec![format!("team:{}", p.team)])
        .bus(true);
    if let Some(clock) = clock {
        b = b.clock(clock);
    }
    if near {
        b = b.near(NearOptions::default());
    }
    b.build().await.expect("cache")
}

#[tokio::test]
async fn stale_negative_purge_tags_and_near_cache_behave_as_for_strings() {
    let table = Table::named("people", [person(1, "ann"), person(2, "bob")]);
    let clock = ManualClock::new();
    let prefix = support::unique("hfresh");
    let cache = person_cache(&prefix, &table, Some(clock.clone()), false).await;
    let fields = |c: &Cache<u64, Person>, id: u64| {
        let c = c.clone();
        async move { c.get_fields(&id, &["name", "email"]).await.expect("read") }
    };

    let miss = fields(&cache, 1).await;
    assert_eq!(miss.outcome, Outcome::Miss);
    assert_eq!(
        json_of(&miss.value.expect("row")),
        json!({ "name": "ann", "email": null })
    );
    assert_eq!(fields(&cache, 1).await.outcome, Outcome::Hit);
    assert_eq!(table.loads(), 1);

    // Stale: served at once while one refresh runs.
    table.set(person(1, "ann2"));
    clock.advance(Duration::from_secs(11));
    let stale = fields(&cache, 1).await;
    assert_eq!(stale.outcome, Outcome::Stale);
    assert_eq!(json_of(&stale.value.expect("row"))["name"], "ann");
    support::eventually("the refresh lands", || {
        let cache = cache.clone();
        async move {
            let l = cache.get_fields(&1, &["name"]).await.expect("read");
            l.outcome == Outcome::Hit && l.value.is_some_and(|v| json_of(&v)["name"] == "ann2")
        }
    })
    .await;
    assert_eq!(table.loads(), 2);

    // Negative: "not found" is remembered, as for strings.
    assert_eq!(fields(&cache, 9).await.outcome, Outcome::Miss);
    let negative = fields(&cache, 9).await;
    assert_eq!(negative.outcome, Outcome::Negative);
    assert!(negative.value.is_none());
    assert_eq!(table.loads(), 3);

    // Purge and tags: the entry is a miss, never served.
    cache.purge().await.expect("purge");
    assert_eq!(fields(&cache, 1).await.outcome, Outcome::Miss);
    assert_eq!(fields(&cache, 1).await.outcome, Outcome::Hit);
    cache.invalidate_tag("team:7").await.expect("tag");
    assert_eq!(fields(&cache, 1).await.outcome, Outcome::Miss);
    assert_eq!(table.loads(), 5);

    // The decoded object is what the whole read answers.
    let whole = cache.get(&1).await.expect("get");
    assert_eq!(whole.outcome, Outcome::Hit);
    assert_eq!(
        whole.value.as_deref(),
        Some(&Person {
            name: "ann2".into(),
            ..person(1, "")
        })
    );

    // Near cache: a field read is served from the decoded object.
    let near = person_cache(&prefix, &table, Some(clock.clone()), true).await;
    assert_eq!(fields(&near, 2).await.outcome, Outcome::Miss);
    let l1 = fields(&near, 2).await;
    assert_eq!(l1.outcome, Outcome::L1);
    assert_eq!(
        json_of(&l1.value.expect("row")),
        json!({ "name": "bob", "email": null })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_per_expiry_across_four_instances() {
    let table = Table::named("people", [person(1, "ann")]);
    table.slow(Some(Duration::from_millis(100)));
    let prefix = support::unique("hstampede");
    let mut caches = Vec::new();
    for _ in 0..4 {
        // Each instance on its own connection.
        caches.push(person_cache(&prefix, &table, None, false).await);
    }
    for round in 0..10 {
        caches[0].invalidate(&1).await.expect("expire");
        let before = table.loads();
        let mut tasks = Vec::new();
        for (i, cache) in caches.iter().enumerate() {
            for t in 0..50 {
                let cache = cache.clone();
                tasks.push(tokio::spawn(async move {
                    if (i + t) % 2 == 0 {
                        cache
                            .get_fields(&1, &["name"])
                            .await
                            .map(|l| l.value.is_some())
                    } else {
                        cache.get(&1).await.map(|l| l.value.is_some())
                    }
                }));
            }
        }
        for t in tasks {
            assert!(t.await.expect("task").expect("read"), "round {round}");
        }
        assert_eq!(
            table.loads() - before,
            1,
            "round {round}: 200 readers, one load"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_converge_on_the_database_row() {
    let table = support::unique("hash_conv");
    let pool = pg(&table).await;
    let prefix = support::unique("hconv");
    let a = row_cache(&prefix, &table, Representation::Hash).await;
    let b = row_cache(&prefix, &table, Representation::Hash).await;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for (w, cache) in [a.clone(), b.clone(), a.clone(), b.clone()]
            .into_iter()
            .enumerate()
        {
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    let mut f = serde_json::Map::new();
                    f.insert("name".into(), json!(format!("w{w}-{i}")));
                    f.insert("big".into(), json!(i64::MAX - (w as i64) * 100 - i));
                    cache.patch(&1, &f).await.expect("patch");
                    let _ = cache.get_fields(&1, &["name"]).await.expect("read");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        let in_db: String = sqlx::query_scalar(&format!(
            "SELECT row_to_json(t)::text FROM {table} t WHERE id = 1"
        ))
        .fetch_one(&pool)
        .await
        .expect("db row");
        let db: Value = serde_json::from_str(&in_db).expect("json");
        for cache in [&a, &b] {
            let read = cache.get(&1).await.expect("read").value.expect("row");
            assert_eq!(
                json_of(&read),
                db,
                "round {round}: the cache holds the last row"
            );
        }
    }
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn the_layout_records_the_representation() {
    let table = Table::named("people", [person(1, "ann")]);
    let store = support::redis_store().await;
    let build = |prefix: String, rep: Representation| {
        let (store, table) = (store.clone(), table.clone());
        async move {
            Cache::<u64, Person>::builder()
                .prefix(prefix)
                .entity("people")
                .representation(rep)
                .store(store)
                .source(TableSource(table))
                .build()
                .await
        }
    };
    let p = support::unique("hlayout");
    build(p.clone(), Representation::String)
        .await
        .expect("string first");
    let e = build(p.clone(), Representation::Hash)
        .await
        .expect_err("a hash start over a string layout is refused");
    assert_eq!(e.kind(), ErrorKind::LayoutMismatch);
    assert!(e.to_string().contains("representation=hash"), "{e}");
    let q = support::unique("hlayout");
    build(q.clone(), Representation::Hash)
        .await
        .expect("hash first");
    build(q.clone(), Representation::Hash)
        .await
        .expect("hash again");
    let e = build(q, Representation::String)
        .await
        .expect_err("a string start over a hash layout is refused");
    assert_eq!(e.kind(), ErrorKind::LayoutMismatch);
}

#[tokio::test]
async fn write_back_on_the_memory_store_and_non_json_codecs_are_refused_for_hash_entities() {
    let table = Table::named("people", [person(1, "ann")]);
    // Write-back on a hash entity is refused where it is for strings: on
    // a store that cannot hold acknowledged writes (write_back_hash.rs
    // runs it on a durable Redis).
    let e = Cache::<u64, Person>::builder()
        .entity("people")
        .representation(Representation::Hash)
        .source(TableSource(table.clone()))
        .write_policy(WritePolicy::Back(WriteBackOptions::default()))
        .build()
        .await
        .expect_err("write-back on the memory store is refused");
    assert_eq!(e.kind(), ErrorKind::NotDurable);
    let e = Cache::<u64, Person>::builder()
        .entity("people")
        .representation(Representation::Hash)
        .codec(MessagePack)
        .source(TableSource(table))
        .build()
        .await
        .expect_err("MessagePack on hash is refused");
    assert_eq!(e.kind(), ErrorKind::InvalidSetting);
    assert_eq!(Representation::parse("hash"), Some(Representation::Hash));
    assert_eq!(Representation::default().as_str(), "string");
}

#[tokio::test]
async fn the_memory_store_answers_hash_entities_the_same() {
    let redis_prefix = support::unique("hmem");
    async fn load(id: String) -> larder::Result<Option<RawJson>> {
        RawJson::from_bytes(format!(
            r#"{{"id":{id},"name":"n{id}","empty":"","none":null,"big":9007199254740993,"doc":{{"a":[]}}}}"#
        ))
        .map(Some)
    }
    let build = |store: Arc<dyn larder::store::Store>, prefix: String| {
        let source = FnSource::new("people", load);
        async move {
            Cache::<u64, RawJson>::builder()
                .prefix(prefix)
                .entity("people")
                .codec(PassThrough)
                .representation(Representation::Hash)
                .store(store)
                .source(source)
                .build()
                .await
                .expect("cache")
        }
    };
    let memory = build(
        larder::store::connect("memory://").await.expect("memory"),
        "m".into(),
    )
    .await;
    let redis = build(support::redis_store().await, redis_prefix).await;
    for cache in [&memory, &redis] {
        assert_eq!(cache.get(&3).await.expect("miss").outcome, Outcome::Miss);
    }
    for names in [&["none", "big", "empty"][..], &["doc", "zzz", "id"][..]] {
        let m = memory.get_fields(&3, names).await.expect("memory");
        let r = redis.get_fields(&3, names).await.expect("redis");
        assert_eq!((m.outcome, r.outcome), (Outcome::Hit, Outcome::Hit));
        assert_eq!(
            text(&m.value.expect("row")),
            text(&r.value.expect("row")),
            "{names:?}"
        );
    }
    let m = memory.get(&3).await.expect("memory").value.expect("row");
    let r = redis.get(&3).await.expect("redis").value.expect("row");
    assert_eq!(json_of(&m), json_of(&r));
}

#[tokio::test]
async fn batch_reads_and_warming_fill_hashes() {
    let table = Table::named("people", (1..=5).map(|i| person(i, &format!("p{i}"))));
    let prefix = support::unique("hbatch");
    let cache = person_cache(&prefix, &table, None, false).await;
    // Cold keys: one acquire pipeline, one load_many, one fill pipeline.
    let ids = [1_u64, 2, 3, 99];
    let keys: Vec<&u64> = ids.iter().collect();
    let first = cache.get_many(&keys).await.expect("get_many");
    assert_eq!(
        first.iter().map(|l| l.outcome).collect::<Vec<_>>(),
        vec![Outcome::Miss; 4]
    );
    assert_eq!(first[1].value.as_deref(), Some(&person(2, "p2")));
    assert!(first[3].value.is_none());
    assert_eq!(table.batch_loads(), 1);
    let again = cache.get_many(&keys).await.expect("get_many");
    assert_eq!(
        again.iter().map(|l| l.outcome).collect::<Vec<_>>(),
        vec![Outcome::Hit, Outcome::Hit, Outcome::Hit, Outcome::Negative]
    );
    assert_eq!(again[2].value.as_deref(), Some(&person(3, "p3")));
    assert_eq!(redis_cli(&["TYPE", &hash_key(&prefix, "2")]), "hash");

    // Warming fills every row as a hash; a field read is then a hit.
    let warm = support::unique("hwarm");
    let warmed = person_cache(&warm, &table, None, false).await;
    let done = warmed
        .warm_all(larder::WarmOptions::default(), |_| {})
        .await
        .expect("warm");
    assert_eq!(done.written, 5);
    assert_eq!(redis_cli(&["HGET", &hash_key(&warm, "4"), "name"]), "p4");
    let read = warmed.get_fields(&4, &["team"]).await.expect("read");
    assert_eq!(read.outcome, Outcome::Hit);
    assert_eq!(json_of(&read.value.expect("row")), json!({ "team": 7 }));
}

#[tokio::test]
async fn a_damaged_hash_is_a_corrupt_entry_and_reloaded() {
    let table = Table::named("people", [person(1, "ann")]);
    let prefix = support::unique("hdamaged");
    let cache = person_cache(&prefix, &table, None, false).await;
    cache.get(&1).await.expect("fill");
    let key = hash_key(&prefix, "1");
    // Another program writes a reserved field larder cannot read.
    assert_eq!(redis_cli(&["HSET", &key, "", "junk"]), "0");
    let read = cache.get_fields(&1, &["name"]).await.expect("read");
    assert_eq!(
        read.outcome,
        Outcome::Miss,
        "treated as absent and reloaded"
    );
    assert_eq!(json_of(&read.value.expect("row")), json!({ "name": "ann" }));
    assert_eq!(table.loads(), 2);
    assert_eq!(cache.stats().corrupt_entries, 1);
    assert_eq!(
        cache.get_fields(&1, &["name"]).await.expect("read").outcome,
        Outcome::Hit,
        "the reload replaced the damaged hash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_increments_land_in_the_hash_and_all_count() {
    let table = support::unique("hash_incr");
    let pool = pg(&table).await;
    let prefix = support::unique("hincr");
    let a = row_cache(&prefix, &table, Representation::Hash).await;
    let b = row_cache(&prefix, &table, Representation::Hash).await;
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let cache = if t % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                for i in 0..20 {
                    cache
                        .incr(&1, "small", &serde_json::Number::from(1))
                        .await
                        .expect("incr")
                        .expect("row");
                    if i % 4 == 0 {
                        let _ = cache.get_fields(&1, &["small"]).await.expect("read");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let in_db: i64 = sqlx::query_scalar(&format!("SELECT small::int8 FROM {table} WHERE id = 1"))
        .fetch_one(&pool)
        .await
        .expect("db");
    assert_eq!(in_db, -7 + 80, "every increment counted once");
    // The hash field holds the database's count (or the entry is gone and
    // the next read loads it): never an older one.
    for cache in [&a, &b] {
        let read = cache.get_fields(&1, &["small"]).await.expect("read");
        let value = read.value.expect("row");
        assert_eq!(json_of(&value)["small"], json!(in_db));
    }
    let written = a
        .incr(&1, "num", &serde_json::Number::from_f64(0.25).expect("f64"))
        .await
        .expect("incr")
        .expect("row");
    let returned = text(&written.value);
    assert!(
        returned.contains(r#""num":123456789012345678.750000"#),
        "the exact sum comes back: {returned}"
    );
    assert_eq!(
        redis_cli(&["HGET", &hash_key(&prefix, "1"), "num"]),
        "123456789012345678.750000",
        "the hash field is the database's exact decimal"
    );
    drop_table(&pool, &table).await;
}
