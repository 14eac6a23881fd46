//! Leaderboards over HTTP (`[[leaderboard]]`): the issue's `scores`
//! board — top-N pages with ranks and ties, a member's score and rank,
//! increments, absolute scores and removals written through, invalidate,
//! the bad-input codes (nothing written), a read-only and a
//! double-precision board, `/v1/stats`, `/metrics`, the OpenAPI document,
//! and the config checks.

mod support;

use larder_server::http::app;
use serde_json::json;
use support::{get, send, unique, write, Pg};

#[tokio::test]
async fn scores_over_http() {
    let mut pg = Pg::connect().await;
    let scores = unique("scores");
    let times = unique("times");
    pg.exec(
        &scores,
        "CREATE TABLE {t} (game_id bigint NOT NULL, player_id text NOT NULL,
         points bigint NOT NULL, UNIQUE (game_id, player_id));
         INSERT INTO {t} VALUES (1, 'ann', 30), (1, 'bob', 20), (1, 'Bob', 20), (1, 'cat', 10)",
    )
    .await;
    pg.exec(
        &times,
        "CREATE TABLE {t} (track text NOT NULL, driver text NOT NULL,
         best double precision NOT NULL, PRIMARY KEY (track, driver));
         INSERT INTO {t} VALUES ('monza', 'x', 1.25), ('monza', 'y', 2.5)",
    )
    .await;
    let toml = support::pg_config(
        &unique("p"),
        &format!(
            "[[leaderboard]]\nname = \"scores\"\ntable = \"{scores}\"\nowner = \"game_id\"\n\
             member = \"player_id\"\nscore = \"points\"\nmax_members = 100000\nwrite = \"through\"\n\
             [[leaderboard]]\nname = \"times\"\ntable = \"{times}\"\nowner = \"track\"\n\
             member = \"driver\"\nscore = \"best\"\nwrite = \"read-only\"\n"
        ),
    );
    let app = app(support::state(&toml).await);

    // Top-N: highest first, ties in descending byte order ("bob" > "Bob").
    let a = get(&app, "/v1/scores/1?offset=0&limit=3").await;
    assert_eq!((a.status.as_u16(), a.x_cache()), (200, "miss"));
    assert_eq!(
        a.json(),
        json!({"count": 4, "items": [
            {"member": "ann", "score": 30, "rank": 1},
            {"member": "bob", "score": 20, "rank": 2},
            {"member": "Bob", "score": 20, "rank": 3},
        ]})
    );
    let a = get(&app, "/v1/scores/1?offset=2").await;
    assert_eq!(a.x_cache(), "hit");
    assert_eq!(
        a.json()["items"],
        json!([{"member": "Bob", "score": 20, "rank": 3}, {"member": "cat", "score": 10, "rank": 4}])
    );
    let a = get(&app, "/v1/scores/1/members/Bob").await;
    assert_eq!(
        (a.json(), a.x_cache()),
        (json!({"member": "Bob", "score": 20, "rank": 3}), "hit")
    );
    let a = get(&app, "/v1/scores/1/members/zed").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));

    // Writes go through and keep the cached board.
    let a = write(
        &app,
        "POST",
        "/v1/scores/1/members/cat/incr",
        r#"{"by": 25}"#,
    )
    .await;
    assert_eq!(a.status.as_u16(), 200);
    assert_eq!(a.json(), json!({"member": "cat", "score": 35}));
    let a = write(
        &app,
        "POST",
        "/v1/scores/1/members/dan/incr",
        r#"{"by": 5}"#,
    )
    .await;
    assert_eq!(a.json(), json!({"member": "dan", "score": 5}), "created");
    let a = write(&app, "PUT", "/v1/scores/1/members/ann", r#"{"score": 1}"#).await;
    assert_eq!(
        (a.status.as_u16(), a.json()),
        (200, json!({"member": "ann", "score": 1}))
    );
    let a = send(&app, "DELETE", "/v1/scores/1/members/Bob", &[], None).await;
    assert_eq!(a.status.as_u16(), 204);
    let a = send(&app, "DELETE", "/v1/scores/1/members/Bob", &[], None).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));
    let a = get(&app, "/v1/scores/1?limit=10").await;
    assert_eq!(a.x_cache(), "hit", "written in place");
    let members: Vec<(String, i64)> = a.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["member"].as_str().unwrap_or("").to_owned(),
                i["score"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        members,
        [
            ("cat".into(), 35),
            ("bob".into(), 20),
            ("dan".into(), 5),
            ("ann".into(), 1)
        ]
    );
    let db: i64 = sqlx::query_scalar(&format!(
        "SELECT points FROM {scores} WHERE game_id = 1 AND player_id = 'cat'"
    ))
    .fetch_one(&pg.pool)
    .await
    .expect("row");
    assert_eq!(db, 35);

    // Invalidate: the next read loads.
    let a = send(&app, "POST", "/v1/scores/1/invalidate", &[], None).await;
    assert_eq!(a.status.as_u16(), 204);
    assert_eq!(get(&app, "/v1/scores/1").await.x_cache(), "miss");

    // Bad input: the codes, and nothing written.
    let bad = |status: u16, code: &str, a: &support::Answer| {
        assert_eq!((a.status.as_u16(), a.code().as_str()), (status, code));
    };
    bad(
        404,
        "unknown_entity",
        &get(&app, "/v1/nope/1/members/x").await,
    );
    bad(
        404,
        "unknown_entity",
        &write(&app, "POST", "/v1/nope/1/members/x/incr", r#"{"by": 1}"#).await,
    );
    bad(400, "bad_id", &get(&app, "/v1/scores/abc").await);
    bad(
        400,
        "bad_id",
        &get(&app, "/v1/scores/abc/members/ann").await,
    );
    bad(
        400,
        "bad_request",
        &get(&app, "/v1/scores/1?limit=5000").await,
    );
    bad(400, "bad_request", &get(&app, "/v1/scores/1?limt=5").await);
    bad(
        400,
        "bad_request",
        &get(&app, "/v1/scores/1?offset=-1").await,
    );
    bad(
        400,
        "bad_request",
        &get(&app, "/v1/scores/1?offset=18446744073709551615").await,
    );
    let incr = "/v1/scores/1/members/ann/incr";
    bad(
        400,
        "type_mismatch",
        &write(&app, "POST", incr, r#"{"by": 1.5}"#).await,
    );
    bad(
        400,
        "type_mismatch",
        &write(&app, "POST", incr, r#"{"by": "1"}"#).await,
    );
    bad(
        400,
        "type_mismatch",
        &write(&app, "POST", incr, r#"{"by": 9007199254740993}"#).await,
    );
    bad(
        400,
        "type_mismatch",
        &write(&app, "POST", incr, r#"{"by": 9007199254740992}"#).await,
    );
    bad(
        400,
        "unknown_column",
        &write(&app, "POST", incr, r#"{"x": 1}"#).await,
    );
    bad(
        400,
        "missing_column",
        &write(&app, "POST", incr, "{}").await,
    );
    bad(400, "bad_request", &write(&app, "POST", incr, "[1]").await);
    bad(400, "bad_request", &write(&app, "POST", incr, "{").await);
    bad(
        400,
        "bad_id",
        &write(
            &app,
            "POST",
            "/v1/scores/x/members/ann/incr",
            r#"{"by": 1}"#,
        )
        .await,
    );
    let db: i64 = sqlx::query_scalar(&format!(
        "SELECT points FROM {scores} WHERE game_id = 1 AND player_id = 'ann'"
    ))
    .fetch_one(&pg.pool)
    .await
    .expect("row");
    assert_eq!(db, 1, "nothing written");

    // A read-only, double-precision board.
    let a = get(&app, "/v1/times/monza").await;
    assert_eq!(
        a.json()["items"],
        json!([{"member": "y", "score": 2.5, "rank": 1}, {"member": "x", "score": 1.25, "rank": 2}])
    );
    bad(
        405,
        "method_not_allowed",
        &write(
            &app,
            "POST",
            "/v1/times/monza/members/x/incr",
            r#"{"by": 1}"#,
        )
        .await,
    );
    bad(
        405,
        "method_not_allowed",
        &write(&app, "PUT", "/v1/times/monza/members/x", r#"{"score": 1}"#).await,
    );

    // Stats, metrics and the document.
    let stats = get(&app, "/v1/stats").await.json();
    let s = &stats["leaderboards"]["scores"];
    assert_eq!(s["kind"], "leaderboard");
    assert!(s["reads"]["hit"].as_u64().unwrap_or(0) >= 3, "{s}");
    assert_eq!(s["loads"], 2);
    assert_eq!(stats["leaderboards"]["times"]["write"], "read-only");
    let metrics = get(&app, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("larder_leaderboard_reads_total{leaderboard=\"scores\",outcome=\"hit\"}"),
        "{text}"
    );
    let doc = get(&app, "/v1/openapi.json").await.json();
    let paths = &doc["paths"];
    assert!(paths["/v1/scores/{owner}"]["get"]["responses"]["200"].is_object());
    assert!(paths["/v1/scores/{owner}/invalidate"]["post"].is_object());
    let member = &paths["/v1/scores/{owner}/members/{member}"];
    for m in ["get", "put", "delete"] {
        assert!(member[m].is_object(), "{m}");
    }
    let incr = &paths["/v1/scores/{owner}/members/{member}/incr"]["post"];
    assert_eq!(
        incr["requestBody"]["content"]["application/json"]["schema"]["properties"]["by"]["type"],
        "integer"
    );
    assert_eq!(
        paths["/v1/times/{owner}/members/{member}"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"]["properties"]["score"]["type"],
        "number"
    );
    assert!(
        paths["/v1/times/{owner}/members/{member}/incr"]["post"]["responses"]["405"].is_object()
    );
}

#[test]
fn leaderboard_config_is_checked() {
    use larder_server::config::Config;
    let base = "[[entity]]\nname = \"users\"\ntable = \"users\"\n";
    let board = "[[leaderboard]]\nname = \"b\"\ntable = \"t\"\nowner = \"o\"\nmember = \"m\"\nscore = \"s\"\n";
    let err = |extra: &str| {
        Config::parse(&format!("{base}{extra}"), "t.toml")
            .expect_err("refused")
            .to_string()
    };
    let e = err(&board.replace("name = \"b\"", "name = \"users\""));
    assert!(
        e.contains("leaderboard[0].name") && e.contains("one namespace"),
        "{e}"
    );
    let e = err(&board.replace("score = \"s\"\n", ""));
    assert!(e.contains("leaderboard[0].score"), "{e}");
    let e = err(&format!("{board}[leaderboard.write_back]\nbatch = 3\n"));
    assert!(
        e.contains("leaderboard[0].write_back") && e.contains("only for write"),
        "{e}"
    );
    let e = err(&format!(
        "{board}write = \"back\"\n[leaderboard.write_back]\nbatch = 0\n"
    ));
    assert!(e.contains("leaderboard[0].write_back.batch"), "{e}");
    let e = err(&format!("{board}max_members = 0\n"));
    assert!(e.contains("leaderboard[0].max_members"), "{e}");
    let c = Config::parse(board, "t.toml").expect("a config of a leaderboard alone");
    assert_eq!(
        c.leaderboard[0].max_members,
        larder::DEFAULT_MAX_BOARD_MEMBERS
    );
}

/// A table the board cannot serve is refused at start, naming the
/// setting: no unique index on (owner, member), a numeric score column.
#[tokio::test]
async fn leaderboard_tables_are_checked_at_start() {
    let mut pg = Pg::connect().await;
    let no_index = unique("noidx");
    let numeric = unique("numeric");
    pg.exec(
        &no_index,
        "CREATE TABLE {t} (game_id bigint NOT NULL, player_id text NOT NULL, points bigint NOT NULL)",
    )
    .await;
    pg.exec(
        &numeric,
        "CREATE TABLE {t} (game_id bigint NOT NULL, player_id text NOT NULL,
         points numeric(10, 2) NOT NULL, UNIQUE (game_id, player_id))",
    )
    .await;
    for (table, why) in [(&no_index, "unique index"), (&numeric, "double precision")] {
        let toml = support::pg_config(
            &unique("p"),
            &format!(
                "[[leaderboard]]\nname = \"scores\"\ntable = \"{table}\"\nowner = \"game_id\"\n\
                 member = \"player_id\"\nscore = \"points\"\n"
            ),
        );
        let config = larder_server::config::Config::parse(&toml, "t.toml").expect("parses");
        let e = larder_server::serve::start(config)
            .await
            .expect_err("refused at start")
            .to_string();
        assert!(e.contains("leaderboard[0].table") && e.contains(why), "{e}");
    }
}

/// `write = "back"` over a durable Redis of the test's own: increments,
/// absolute scores and removals answer 202 `{"queued": true, …}` with the
/// score the cache holds, reads see them at once, `/v1/stats` shows the
/// write-back figures, and the database gets them once flushed.
#[tokio::test]
async fn write_back_boards_answer_202() {
    let mut pg = Pg::connect().await;
    let scores = unique("wbscores");
    pg.exec(
        &scores,
        "CREATE TABLE {t} (game_id bigint NOT NULL, player_id text NOT NULL,
         points bigint NOT NULL CHECK (points <= 1000), UNIQUE (game_id, player_id));
         INSERT INTO {t} VALUES (1, 'ann', 30), (1, 'bob', 20)",
    )
    .await;
    let redis = support::RedisServer::durable();
    let toml = format!(
        "[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 3\n\
         [[leaderboard]]\nname = \"scores\"\ntable = \"{scores}\"\nowner = \"game_id\"\n\
         member = \"player_id\"\nscore = \"points\"\nwrite = \"back\"\n\
         [leaderboard.write_back]\nmax_delay = \"20ms\"\n",
        redis.url(),
        unique("p"),
        support::pg_url()
    );
    let state = support::state(&toml).await;
    let app = app(state.clone());
    let a = write(
        &app,
        "POST",
        "/v1/scores/1/members/bob/incr",
        r#"{"by": 15}"#,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json()),
        (202, json!({"queued": true, "member": "bob", "score": 35}))
    );
    let a = write(
        &app,
        "POST",
        "/v1/scores/1/members/cat/incr",
        r#"{"by": 5}"#,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json()),
        (202, json!({"queued": true, "member": "cat", "score": 5}))
    );
    let a = write(&app, "PUT", "/v1/scores/1/members/ann", r#"{"score": 1}"#).await;
    assert_eq!(
        (a.status.as_u16(), a.json()),
        (202, json!({"queued": true, "member": "ann", "score": 1}))
    );
    let a = send(&app, "DELETE", "/v1/scores/1/members/cat", &[], None).await;
    assert_eq!(
        (a.status.as_u16(), a.json()),
        (
            202,
            json!({"queued": true, "member": "cat", "removed": true})
        )
    );
    let a = write(
        &app,
        "POST",
        "/v1/scores/1/members/ann/incr",
        r#"{"by": 9007199254740992}"#,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "type_mismatch")
    );
    let a = get(&app, "/v1/scores/1").await;
    assert_eq!(
        a.json(),
        json!({"count": 2, "items": [
            {"member": "bob", "score": 35, "rank": 1},
            {"member": "ann", "score": 1, "rank": 2},
        ]})
    );
    let stats = get(&app, "/v1/stats").await.json();
    let board = &stats["leaderboards"]["scores"];
    assert_eq!(board["write"], "back");
    assert_eq!(board["write_back"]["acknowledged"], 4, "{board}");
    let doc = get(&app, "/v1/openapi.json").await.json();
    let incr = &doc["paths"]["/v1/scores/{owner}/members/{member}/incr"]["post"]["responses"];
    assert!(incr["202"].is_object() && incr["200"].is_null(), "{incr}");
    let del = &doc["paths"]["/v1/scores/{owner}/members/{member}"]["delete"]["responses"];
    assert!(del["202"].is_object(), "{del}");
    let a = write(
        &app,
        "POST",
        "/v1/scores/2/members/big/incr",
        r#"{"by": 5000}"#,
    )
    .await;
    assert_eq!(a.status.as_u16(), 202);
    let board = state.board("scores").expect("board");
    board.cache.flush().await.expect("flush");
    // The CHECK refused `big` alone: a dead letter, listed.
    let letters = get(&app, "/v1/_admin/scores/dead-letters").await;
    assert_eq!(letters.status.as_u16(), 200);
    let letters = letters.json();
    let letter = &letters["dead_letters"][0];
    assert_eq!(
        (
            &letter["owner"],
            &letter["member"],
            &letter["code"],
            &letter["op"]
        ),
        (
            &json!("2"),
            &json!("big"),
            &json!("23514"),
            &json!({"add": 5000.0})
        ),
        "{letters}"
    );
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT player_id, points FROM {scores} WHERE game_id = 1 ORDER BY player_id"
    ))
    .fetch_all(&pg.pool)
    .await
    .expect("select");
    assert_eq!(rows, vec![("ann".into(), 1), ("bob".into(), 35)]);
    board.cache.close().await.expect("close");
}
