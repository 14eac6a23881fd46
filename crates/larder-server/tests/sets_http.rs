//! Sets over HTTP (`[[set]]`): the issue's unique-visitors example, pages
//! with cursors, membership, add (201/200) and remove (204/404), invalidate,
//! bad input codes, `/v1/stats` and the OpenAPI document; an entity in the
//! same namespace keeps working.

mod support;

use larder_server::http::app;
use serde_json::json;
use support::{get, send, unique, write, Pg};

#[tokio::test]
async fn visitors_over_http() {
    let mut pg = Pg::connect().await;
    let visits = unique("visits");
    let likes = unique("likes");
    let users = unique("users");
    pg.exec(
        &visits,
        "CREATE TABLE {t} (page text NOT NULL, visitor text COLLATE \"C\" NOT NULL, UNIQUE (page, visitor))",
    )
    .await;
    pg.exec(
        &likes,
        "CREATE TABLE {t} (post bigint NOT NULL, user_id bigint NOT NULL, PRIMARY KEY (post, user_id))",
    )
    .await;
    pg.exec(
        &users,
        "CREATE TABLE {t} (id int PRIMARY KEY, name text NOT NULL); INSERT INTO {t} VALUES (1, 'ada')",
    )
    .await;
    let toml = support::pg_config(
        &unique("p"),
        &format!(
            "[[entity]]\nname = \"users\"\ntable = \"{users}\"\n\
             [[set]]\nname = \"visitors\"\ntable = \"{visits}\"\nowner = \"page\"\nmember = \"visitor\"\n\
             [[set]]\nname = \"likes\"\ntable = \"{likes}\"\nowner = \"post\"\nmember = \"user_id\"\nwrite = \"read-only\"\n"
        ),
    );
    let app = app(support::state(&toml).await);

    // One PUT per visit: 201 the first time, 200 after.
    let a = send(&app, "PUT", "/v1/visitors/home/members/ada", &[], None).await;
    assert_eq!(a.status.as_u16(), 201);
    assert_eq!(
        a.json(),
        json!({"owner": "home", "member": "ada", "added": true})
    );
    let a = send(&app, "PUT", "/v1/visitors/home/members/ada", &[], None).await;
    assert_eq!(
        (a.status.as_u16(), a.json()["added"].clone()),
        (200, json!(false))
    );
    let a = send(&app, "PUT", "/v1/visitors/home/members/bob", &[], None).await;
    assert_eq!(a.status.as_u16(), 201);

    // The count: limit=0.
    let a = get(&app, "/v1/visitors/home?limit=0").await;
    assert_eq!((a.status.as_u16(), a.x_cache()), (200, "miss"));
    assert_eq!(a.json(), json!({"count": 2, "members": [], "cursor": null}));
    let a = get(&app, "/v1/visitors/home?limit=0").await;
    assert_eq!(a.x_cache(), "hit");

    // Membership and pages.
    let a = get(&app, "/v1/visitors/home/members/ada").await;
    assert_eq!((a.json(), a.x_cache()), (json!({"member": true}), "hit"));
    let a = get(&app, "/v1/visitors/home/members/zed").await;
    assert_eq!(a.json(), json!({"member": false}));
    let a = get(&app, "/v1/visitors/home?limit=1").await;
    assert_eq!(
        a.json(),
        json!({"count": 2, "members": ["ada"], "cursor": "ada"})
    );
    let a = get(&app, "/v1/visitors/home?limit=1&cursor=ada").await;
    assert_eq!(
        a.json(),
        json!({"count": 2, "members": ["bob"], "cursor": null})
    );

    // A write keeps the cached set (hit), a remove answers 204 then 404.
    let a = send(&app, "DELETE", "/v1/visitors/home/members/ada", &[], None).await;
    assert_eq!(a.status.as_u16(), 204);
    let a = send(&app, "DELETE", "/v1/visitors/home/members/ada", &[], None).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));
    let a = get(&app, "/v1/visitors/home").await;
    assert_eq!(
        (a.json()["members"].clone(), a.x_cache()),
        (json!(["bob"]), "hit")
    );

    // Invalidate: the next read loads.
    let a = send(&app, "POST", "/v1/visitors/home/invalidate", &[], None).await;
    assert_eq!(a.status.as_u16(), 204);
    assert_eq!(get(&app, "/v1/visitors/home").await.x_cache(), "miss");

    // Bad input.
    let a = get(&app, "/v1/nope/home/members/x").await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (404, "unknown_entity")
    );
    let a = get(&app, "/v1/likes/abc").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_id"));
    let a = get(&app, "/v1/likes/1/members/x").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_id"));
    let a = get(&app, "/v1/visitors/home?limit=5000").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_request"));
    let a = get(&app, "/v1/visitors/home?limt=5").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_request"));
    let a = send(&app, "PUT", "/v1/likes/1/members/2", &[], None).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (405, "method_not_allowed")
    );
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {likes}"))
        .fetch_one(&pg.pool)
        .await
        .expect("count");
    assert_eq!(count, 0, "nothing written");

    // The entity in the same namespace still answers.
    let a = get(&app, "/v1/users/1").await;
    assert_eq!(
        (a.status.as_u16(), a.json()["name"].clone()),
        (200, json!("ada"))
    );
    let a = write(&app, "POST", "/v1/users/1/invalidate", "").await;
    assert_eq!(a.status.as_u16(), 204);

    // Stats and the document.
    let stats = get(&app, "/v1/stats").await.json();
    let v = &stats["sets"]["visitors"];
    assert_eq!(v["kind"], "set");
    assert!(v["reads"]["hit"].as_u64().unwrap_or(0) >= 5, "{v}");
    assert_eq!(v["loads"], 2);
    let doc = get(&app, "/v1/openapi.json").await.json();
    let member = &doc["paths"]["/v1/visitors/{owner}/members/{member}"];
    assert!(member["put"]["responses"]["201"].is_object(), "{member}");
    assert_eq!(
        doc["paths"]["/v1/likes/{owner}/members/{member}"]["get"]["parameters"][1]["schema"]
            ["type"],
        "integer"
    );
    assert!(doc["paths"]["/v1/users/{id}"]["get"].is_object());
}

#[test]
fn set_config_is_checked() {
    use larder_server::config::Config;
    let base = "[[entity]]\nname = \"users\"\ntable = \"users\"\n";
    let err = |extra: &str| {
        Config::parse(&format!("{base}{extra}"), "t.toml")
            .expect_err("refused")
            .to_string()
    };
    let e = err("[[set]]\nname = \"users\"\ntable = \"t\"\nowner = \"o\"\nmember = \"m\"\n");
    assert!(e.contains("set[0].name") && e.contains("entity[0]"), "{e}");
    let e = err("[[set]]\nname = \"s\"\ntable = \"t\"\nowner = \"o\"\n");
    assert!(e.contains("set[0].member"), "{e}");
    let e = err(
        "[[set]]\nname = \"s\"\ntable = \"t\"\nowner = \"o\"\nmember = \"m\"\n[set.write_back]\nbatch = 3\n",
    );
    assert!(
        e.contains("set[0].write_back") && e.contains("only for write"),
        "{e}"
    );
    let e = err(
        "[[set]]\nname = \"s\"\ntable = \"t\"\nowner = \"o\"\nmember = \"m\"\nwrite = \"back\"\n[set.write_back]\nbatch = 0\n",
    );
    assert!(e.contains("set[0].write_back.batch"), "{e}");
    let e = err(
        "[[set]]\nname = \"s\"\ntable = \"t\"\nowner = \"o\"\nmember = \"m\"\nmax_members = 0\n",
    );
    assert!(e.contains("set[0].max_members"), "{e}");
    let only_sets = "[[set]]\nname = \"s\"\ntable = \"t\"\nowner = \"o\"\nmember = \"m\"\n";
    let c = Config::parse(only_sets, "t.toml").expect("a config of sets alone");
    assert_eq!(c.set[0].max_members, larder::DEFAULT_MAX_MEMBERS);
}

/// A feed over HTTP: the issue's `user_posts`: pages with `more`, a POST
/// appends (201, the stored row; the owner column must be the path's),
/// DELETE an item (204/404), bad input, stats and the document.
#[tokio::test]
async fn a_feed_over_http() {
    let mut pg = Pg::connect().await;
    let posts = unique("posts");
    pg.exec(
        &posts,
        "CREATE TABLE {t} (id bigserial PRIMARY KEY, user_id bigint NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now(), body text NOT NULL);
         CREATE INDEX ON {t} (user_id, created_at DESC, id DESC);
         INSERT INTO {t} (user_id, created_at, body) VALUES
           (1, '2020-01-01', 'a'), (1, '2020-01-02', 'b'), (1, '2020-01-03', 'c')",
    )
    .await;
    let toml = support::pg_config(
        &unique("p"),
        &format!(
            "[[feed]]\nname = \"user_posts\"\ntable = \"{posts}\"\nowner = \"user_id\"\n\
             order = [\"created_at desc\", \"id desc\"]\nmax_len = 2\ncolumns = [\"id\", \"body\"]\n"
        ),
    );
    let app = app(support::state(&toml).await);
    let a = get(&app, "/v1/user_posts/1?limit=1").await;
    assert_eq!((a.status.as_u16(), a.x_cache()), (200, "miss"));
    assert_eq!(a.json()["items"][0]["body"], "c");
    assert_eq!(
        (a.json()["more"].clone(), a.json()["limit"].clone()),
        (json!(true), json!(1))
    );
    let a = get(&app, "/v1/user_posts/1?offset=1&limit=1").await;
    assert_eq!(
        (a.json()["items"][0]["body"].clone(), a.x_cache()),
        (json!("b"), "hit")
    );
    let a = get(&app, "/v1/user_posts/1?offset=1&limit=5").await;
    assert_eq!(a.x_cache(), "db", "past max_len of a longer feed");
    assert_eq!(a.json()["items"].as_array().map(Vec::len), Some(2));
    // The largest offset is an empty page; one past it, or u64::MAX (whose
    // sum with the limit overflowed), is refused.
    let a = get(
        &app,
        &format!(
            "/v1/user_posts/1?offset={}&limit=5",
            larder::MAX_FEED_OFFSET
        ),
    )
    .await;
    assert_eq!(
        (
            a.status.as_u16(),
            a.json()["items"].clone(),
            a.json()["more"].clone()
        ),
        (200, json!([]), json!(false))
    );
    for offset in [larder::MAX_FEED_OFFSET + 1, u64::MAX] {
        let a = get(&app, &format!("/v1/user_posts/1?offset={offset}&limit=5")).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (400, "bad_request"),
            "{offset}"
        );
    }

    let a = write(&app, "POST", "/v1/user_posts/1", r#"{"body": "d"}"#).await;
    assert_eq!(a.status.as_u16(), 201);
    assert_eq!(a.json()["body"], "d");
    let id = a.json()["id"].clone();
    let a = get(&app, "/v1/user_posts/1?limit=2").await;
    assert_eq!(a.x_cache(), "hit", "appended at the head");
    assert_eq!(a.json()["items"][0]["body"], "d");
    let a = write(
        &app,
        "POST",
        "/v1/user_posts/1",
        r#"{"body": "x", "user_id": 2}"#,
    )
    .await;
    assert_eq!(a.status.as_u16(), 400, "another owner");
    let a = write(&app, "POST", "/v1/user_posts/1", r#"{"nope": 1}"#).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "unknown_column")
    );
    let a = send(
        &app,
        "DELETE",
        &format!("/v1/user_posts/1/items/{id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(a.status.as_u16(), 204);
    let a = send(
        &app,
        "DELETE",
        &format!("/v1/user_posts/1/items/{id}"),
        &[],
        None,
    )
    .await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));
    let a = get(&app, "/v1/user_posts/1?limit=2").await;
    assert_eq!(a.json()["items"][0]["body"], "c");
    let a = get(&app, "/v1/user_posts/x").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_id"));
    let a = get(&app, "/v1/user_posts/1?limit=5000").await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_request"));
    let a = send(&app, "POST", "/v1/user_posts/1/invalidate", &[], None).await;
    assert_eq!(a.status.as_u16(), 204);
    assert_eq!(
        get(&app, "/v1/user_posts/1?limit=2").await.x_cache(),
        "miss"
    );
    let stats = get(&app, "/v1/stats").await.json();
    assert_eq!(stats["feeds"]["user_posts"]["kind"], "feed");
    let doc = get(&app, "/v1/openapi.json").await.json();
    assert!(doc["paths"]["/v1/user_posts/{owner}"]["post"]["responses"]["201"].is_object());
    assert!(doc["paths"]["/v1/user_posts/{owner}/items/{item}"]["delete"].is_object());
}

#[tokio::test]
async fn cdc_and_purge_keep_sets_and_feeds_right() {
    let mut pg = Pg::connect().await;
    let visits = unique("visits");
    let posts = unique("posts");
    pg.exec(
        &visits,
        "CREATE TABLE {t} (page text NOT NULL, visitor text COLLATE \"C\" NOT NULL, UNIQUE (page, visitor));
         INSERT INTO {t} VALUES ('home', 'ada')",
    )
    .await;
    pg.exec(
        &posts,
        "CREATE TABLE {t} (id bigserial PRIMARY KEY, user_id bigint NOT NULL, body text NOT NULL);
         CREATE INDEX ON {t} (user_id, id DESC);
         INSERT INTO {t} (user_id, body) VALUES (1, 'a'), (2, 'b')",
    )
    .await;
    let scores = unique("scores");
    pg.exec(
        &scores,
        "CREATE TABLE {t} (game_id bigint NOT NULL, player_id text COLLATE \"C\" NOT NULL,
         points bigint NOT NULL, UNIQUE (game_id, player_id));
         INSERT INTO {t} VALUES (1, 'ann', 3)",
    )
    .await;
    let toml = support::pg_config(
        &unique("p"),
        &format!(
            "[[set]]\nname = \"visitors\"\ntable = \"{visits}\"\nowner = \"page\"\nmember = \"visitor\"\ncdc = true\n\
             [[feed]]\nname = \"user_posts\"\ntable = \"{posts}\"\nowner = \"user_id\"\ncdc = true\n\
             [[leaderboard]]\nname = \"scores\"\ntable = \"{scores}\"\nowner = \"game_id\"\nmember = \"player_id\"\nscore = \"points\"\ncdc = true\n"
        ),
    );
    let app = app(support::state(&toml).await);
    let count = |app: axum::Router, path: &'static str| async move {
        get(&app, path).await.json()["count"].clone()
    };
    assert_eq!(
        count(app.clone(), "/v1/visitors/home?limit=0").await,
        json!(1)
    );
    assert_eq!(
        get(&app, "/v1/visitors/home?limit=0").await.x_cache(),
        "hit"
    );
    let bodies = |app: axum::Router, path: &'static str| async move {
        get(&app, path).await.json()["items"]
            .as_array()
            .map(|items| items.iter().map(|i| i["body"].clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(bodies(app.clone(), "/v1/user_posts/1").await, [json!("a")]);

    // Writes that bypass larder reach the cache through the triggers.
    let ann = |app: axum::Router| async move {
        get(&app, "/v1/scores/1/members/ann").await.json()["score"].clone()
    };
    assert_eq!(ann(app.clone()).await, json!(3));
    sqlx::raw_sql(&format!(
        "INSERT INTO {visits} VALUES ('home', 'bob'); UPDATE {posts} SET user_id = 1 WHERE body = 'b';
         UPDATE {scores} SET points = 9 WHERE player_id = 'ann'"
    ))
    .execute(&pg.pool)
    .await
    .expect("plain SQL writes");
    larder_test_support::eventually("the set and the feed see the plain SQL writes", || async {
        count(app.clone(), "/v1/visitors/home?limit=0").await == json!(2)
            && bodies(app.clone(), "/v1/user_posts/1").await == [json!("b"), json!("a")]
            && bodies(app.clone(), "/v1/user_posts/2").await.is_empty()
            && ann(app.clone()).await == json!(9)
    })
    .await;

    // The admin purge drops every owner of a set and of a feed.
    assert_eq!(
        get(&app, "/v1/visitors/home?limit=0").await.x_cache(),
        "hit"
    );
    for name in ["visitors", "user_posts", "scores"] {
        let a = send(&app, "POST", &format!("/v1/_admin/{name}/purge"), &[], None).await;
        assert_eq!(a.status.as_u16(), 204, "{name}");
    }
    assert_eq!(
        get(&app, "/v1/visitors/home?limit=0").await.x_cache(),
        "miss"
    );
    assert_eq!(get(&app, "/v1/user_posts/1").await.x_cache(), "miss");
    assert_eq!(
        get(&app, "/v1/scores/1/members/ann").await.x_cache(),
        "miss"
    );
    let doc = get(&app, "/v1/openapi.json").await.json();
    for name in ["visitors", "user_posts", "scores"] {
        assert!(
            doc["paths"][format!("/v1/_admin/{name}/purge")]["post"].is_object(),
            "{name}"
        );
    }
}

/// `stale = "60s"` on a set and a feed: past the TTL the cached collection
/// answers at once (`X-Cache: stale`) while one refresh loads it again;
/// stats and metrics count those reads.
#[tokio::test]
async fn stale_sets_and_feeds_are_served_while_they_refresh() {
    let mut pg = Pg::connect().await;
    let visits = unique("visits");
    let posts = unique("posts");
    pg.exec(
        &visits,
        "CREATE TABLE {t} (page text NOT NULL, visitor text COLLATE \"C\" NOT NULL, UNIQUE (page, visitor)); \
         INSERT INTO {t} VALUES ('home', 'ada')",
    )
    .await;
    pg.exec(
        &posts,
        "CREATE TABLE {t} (id bigint PRIMARY KEY, user_id bigint NOT NULL, body text NOT NULL); \
         INSERT INTO {t} VALUES (1, 7, 'first')",
    )
    .await;
    let toml = support::pg_config(
        &unique("p"),
        &format!(
            "[[set]]\nname = \"visitors\"\ntable = \"{visits}\"\nowner = \"page\"\nmember = \"visitor\"\nttl = \"300ms\"\nstale = \"60s\"\n\
             [[feed]]\nname = \"user_posts\"\ntable = \"{posts}\"\nowner = \"user_id\"\nitem_key = \"id\"\norder = [\"id desc\"]\nttl = \"300ms\"\nstale = \"60s\"\n"
        ),
    );
    let app = app(support::state(&toml).await);
    let a = get(&app, "/v1/visitors/home/members/bob").await;
    assert_eq!((a.x_cache(), a.json()), ("miss", json!({"member": false})));
    let a = get(&app, "/v1/user_posts/7").await;
    assert_eq!(
        (a.x_cache(), a.json()["items"].as_array().map(Vec::len)),
        ("miss", Some(1))
    );
    // Behind the caches' backs, then past their TTL.
    pg.exec(&visits, "INSERT INTO {t} VALUES ('home', 'bob')")
        .await;
    pg.exec(&posts, "INSERT INTO {t} VALUES (2, 7, 'second')")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let a = get(&app, "/v1/visitors/home/members/bob").await;
    assert_eq!((a.x_cache(), a.json()), ("stale", json!({"member": false})));
    let a = get(&app, "/v1/user_posts/7").await;
    assert_eq!(
        (a.x_cache(), a.json()["items"].as_array().map(Vec::len)),
        ("stale", Some(1))
    );
    support::eventually("both refreshes land", || async {
        let set = get(&app, "/v1/visitors/home/members/bob").await;
        let feed = get(&app, "/v1/user_posts/7").await;
        set.json() == json!({"member": true})
            && feed.json()["items"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    let stats = get(&app, "/v1/stats").await.json();
    assert!(
        stats["sets"]["visitors"]["reads"]["stale"].as_u64() >= Some(1),
        "{stats}"
    );
    let metrics = String::from_utf8_lossy(&get(&app, "/metrics").await.body).into_owned();
    for line in [
        "larder_set_reads_total{set=\"visitors\",outcome=\"stale\"}",
        "larder_feed_reads_total{feed=\"user_posts\",outcome=\"stale\"}",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// `write = "back"` over a durable Redis of the test's own: adds and
/// removals answer 202 `{"queued": true, "owner", "member"}`, reads see
/// them at once, `/v1/stats` shows the write-back figures, the OpenAPI
/// document types the 202, a member the database refuses (a CHECK) is
/// listed as a dead letter, and the database gets the rest once flushed.
#[tokio::test]
async fn write_back_sets_answer_202() {
    let mut pg = Pg::connect().await;
    let follows = unique("wbfollows");
    pg.exec(
        &follows,
        "CREATE TABLE {t} (user_id bigint NOT NULL, follower text NOT NULL
         CHECK (follower <> 'bad'), UNIQUE (user_id, follower));
         CREATE INDEX ON {t} (user_id, follower COLLATE \"C\");
         INSERT INTO {t} VALUES (1, 'ann'), (1, 'bob')",
    )
    .await;
    let redis = support::RedisServer::durable();
    let toml = format!(
        "[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 3\n\
         [[set]]\nname = \"followers\"\ntable = \"{follows}\"\nowner = \"user_id\"\n\
         member = \"follower\"\nwrite = \"back\"\n[set.write_back]\nmax_delay = \"1h\"\n",
        redis.url(),
        unique("p"),
        support::pg_url()
    );
    let state = support::state(&toml).await;
    let app = app(state.clone());
    let a = get(&app, "/v1/followers/1").await;
    assert_eq!(a.json()["count"], 2);
    for (method, member) in [("PUT", "cat"), ("PUT", "bad"), ("DELETE", "bob")] {
        let a = send(
            &app,
            method,
            &format!("/v1/followers/1/members/{member}"),
            &[],
            None,
        )
        .await;
        assert_eq!(
            (a.status.as_u16(), a.json()),
            (202, json!({"queued": true, "owner": "1", "member": member})),
            "{method} {member}"
        );
    }
    let a = get(&app, "/v1/followers/1").await;
    assert_eq!(
        a.json(),
        json!({"count": 3, "members": ["ann", "bad", "cat"], "cursor": null})
    );
    let stats = get(&app, "/v1/stats").await.json();
    let set = &stats["sets"]["followers"];
    assert_eq!(set["write"], "back");
    assert_eq!(set["write_back"]["acknowledged"], 3, "{set}");
    let doc = get(&app, "/v1/openapi.json").await.json();
    let item = &doc["paths"]["/v1/followers/{owner}/members/{member}"];
    assert!(
        item["put"]["responses"]["202"].is_object() && item["put"]["responses"]["201"].is_null(),
        "{item}"
    );
    assert!(item["delete"]["responses"]["202"].is_object(), "{item}");
    let s = state.set("followers").expect("set");
    s.cache.flush().await.expect("flush");
    let letters = get(&app, "/v1/_admin/followers/dead-letters").await.json();
    let letter = &letters["dead_letters"][0];
    assert_eq!(
        (&letter["member"], &letter["code"], &letter["op"]),
        (&json!("bad"), &json!("23514"), &json!("add")),
        "{letters}"
    );
    let rows: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT follower FROM {follows} WHERE user_id = 1 ORDER BY follower"
    ))
    .fetch_all(&pg.pool)
    .await
    .expect("select");
    assert_eq!(rows, ["ann", "cat"]);
    let a = get(&app, "/v1/followers/1/members/bad").await;
    assert_eq!(a.json(), json!({"member": false}));
    s.cache.close().await.expect("close");
}
