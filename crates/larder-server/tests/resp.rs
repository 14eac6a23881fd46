//! The Redis protocol against real Redis and PostgreSQL, with redis-rs
//! (RESP2 and RESP3) and raw sockets: a RESP listener on port 0 over the
//! same state `larder serve` builds.

mod support;

use larder_server::serve::AppState;
use redis::aio::MultiplexedConnection;
use redis::Value;
use std::time::{Duration, Instant};
use support::{unique, Pg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USERS: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, email text, \
                     team int NOT NULL DEFAULT 0, tags jsonb); \
                     INSERT INTO {t} (id, name, email, team, tags) \
                     SELECT i, 'user ' || i, 'u' || i || '@x', i % 10, '[\"a\"]' FROM generate_series(0, 99) i;";

/// A running RESP listener; stops when dropped.
struct Resp {
    port: u16,
    state: AppState,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Resp {
    async fn start(state: AppState) -> Resp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(larder_server::resp::run(
            listener,
            state.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Resp {
            port,
            state,
            _stop: stop,
        }
    }

    async fn client(&self, resp3: bool) -> MultiplexedConnection {
        let url = if resp3 {
            format!("redis://127.0.0.1:{}/?protocol=resp3", self.port)
        } else {
            format!("redis://127.0.0.1:{}/", self.port)
        };
        redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    /// Sends raw bytes on a fresh connection and reads until it closes or
    /// `want` bytes arrived (or 5 s passed).
    async fn raw(&self, bytes: &[u8], want: usize) -> (Vec<u8>, bool) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(0)) => return (got, true),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => return (got, true),
                Err(_) => return (got, false),
            }
            if got.len() >= want {
                return (got, false);
            }
        }
    }
}

async fn users(extra: &str) -> (Pg, String, Resp) {
    let mut pg = Pg::connect().await;
    let t = unique("resp_users");
    pg.exec(&t, USERS).await;
    let toml = support::pg_config(
        &unique("r"),
        &format!(
            "[[entity]]\nname = \"users\"\ntable = \"{t}\"\n\
             [[entity]]\nname = \"wusers\"\ntable = \"{t}\"\nresp_writes = true\n{extra}"
        ),
    );
    let state = support::state(&toml).await;
    (pg, t, Resp::start(state).await)
}

async fn query<T: redis::FromRedisValue>(
    con: &mut MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(con).await
}

fn row(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("json row")
}

#[tokio::test]
async fn rows_read_through_over_resp2_and_resp3() {
    let (_pg, _t, resp) = users("").await;
    for resp3 in [false, true] {
        let mut con = resp.client(resp3).await;
        let got: String = query(&mut con, &["GET", "users:000000000042"])
            .await
            .expect("an answer");
        assert_eq!(
            row(&got),
            serde_json::json!({"id": 42, "name": "user 42", "email": "u42@x", "team": 2, "tags": ["a"]})
        );
        let none: Option<String> = query(&mut con, &["GET", "users:4242"])
            .await
            .expect("an answer");
        assert_eq!(none, None, "no row is nil");
        let many: Vec<Option<String>> =
            query(&mut con, &["MGET", "users:1", "users:999", "wusers:2"])
                .await
                .expect("an answer");
        assert_eq!(many.len(), 3);
        assert_eq!(row(many[0].as_deref().expect("an answer"))["id"], 1);
        assert_eq!(many[1], None);
        assert_eq!(row(many[2].as_deref().expect("an answer"))["id"], 2);
        let all: std::collections::HashMap<String, String> =
            query(&mut con, &["HGETALL", "users:5"])
                .await
                .expect("an answer");
        assert_eq!(all["name"], "user 5", "text columns are plain text");
        assert_eq!(all["team"], "5");
        assert_eq!(all["tags"], "[\"a\"]", "other columns are JSON text");
        let empty: std::collections::HashMap<String, String> =
            query(&mut con, &["HGETALL", "users:555"])
                .await
                .expect("an answer");
        assert!(empty.is_empty());
        let name: Option<String> = query(&mut con, &["HGET", "users:5", "name"])
            .await
            .expect("an answer");
        assert_eq!(name.as_deref(), Some("user 5"));
        let fields: Vec<Option<String>> = query(&mut con, &["HMGET", "users:5", "email", "nope"])
            .await
            .expect("an answer");
        assert_eq!(fields, vec![Some("u5@x".to_owned()), None]);
        let n: i64 = query(&mut con, &["EXISTS", "users:1", "users:1", "users:777"])
            .await
            .expect("an answer");
        assert_eq!(n, 2);
        let n: i64 = query(
            &mut con,
            &["EXISTS", "users:1", "users:notanumber", "nobody:1", "nokey"],
        )
        .await
        .expect("a bad key counts 0, as a missing key does in Redis");
        assert_eq!(n, 1);
        let ttl: i64 = query(&mut con, &["TTL", "users:1"])
            .await
            .expect("an answer");
        let most = (larder::DEFAULT_TTL.as_secs_f64() * (1.0 + larder::DEFAULT_JITTER)).round();
        assert!(
            ttl > 0 && ttl as f64 <= most,
            "{ttl}: the default ttl with its jitter is at most {most} s"
        );
        let ttl: i64 = query(&mut con, &["PTTL", "users:777"])
            .await
            .expect("an answer");
        assert_eq!(ttl, -2);
        let hello: Value = query(&mut con, &["HELLO", if resp3 { "3" } else { "2" }])
            .await
            .expect("an answer");
        let is_map = matches!(hello, Value::Map(_));
        assert_eq!(is_map, resp3, "RESP3 answers maps: {hello:?}");
    }
    let stats = resp.state.entity("users").expect("an answer").cache.stats();
    assert!(stats.total_reads() >= 20, "reads are counted: {stats:?}");
}

#[tokio::test]
async fn del_invalidates_and_set_is_refused_unless_resp_writes() {
    let (pg, t, resp) = users("").await;
    let mut con = resp.client(false).await;
    let before: String = query(&mut con, &["GET", "users:7"])
        .await
        .expect("an answer");
    assert_eq!(row(&before)["name"], "user 7");
    pg.scalar_text(&format!(
        "UPDATE {t} SET name = 'renamed' WHERE id = 7 RETURNING name"
    ))
    .await;
    let cached: String = query(&mut con, &["GET", "users:7"])
        .await
        .expect("an answer");
    assert_eq!(row(&cached)["name"], "user 7", "still cached");
    let n: i64 = query(&mut con, &["DEL", "users:7", "users:0007"])
        .await
        .expect("an answer");
    assert_eq!(n, 2, "each key invalidated counts");
    let fresh: String = query(&mut con, &["GET", "users:7"])
        .await
        .expect("an answer");
    assert_eq!(
        row(&fresh)["name"],
        "renamed",
        "DEL made the next GET fresh"
    );
    let err = query::<String>(&mut con, &["SET", "users:7", "{\"name\": \"x\"}"])
        .await
        .expect_err("an error answer");
    assert!(err.to_string().contains("read-through over RESP"), "{err}");
    let err = query::<i64>(&mut con, &["HSET", "users:7", "name", "x"])
        .await
        .expect_err("an error answer");
    assert!(err.to_string().contains("read-through over RESP"), "{err}");
    let name = pg
        .scalar_text(&format!("SELECT name FROM {t} WHERE id = 7"))
        .await;
    assert_eq!(name.as_deref(), Some("renamed"), "nothing was written");
    let unlink: i64 = query(&mut con, &["UNLINK", "users:8"])
        .await
        .expect("an answer");
    assert_eq!(unlink, 1);
}

#[tokio::test]
async fn resp_writes_make_set_hset_and_del_write_the_database() {
    let (pg, t, resp) = users("").await;
    let mut con = resp.client(true).await;
    let ok: String = query(
        &mut con,
        &["SET", "wusers:500", r#"{"name": "new", "team": 4}"#],
    )
    .await
    .expect("an answer");
    assert_eq!(ok, "OK");
    let db = pg
        .scalar_text(&format!(
            "SELECT name || ':' || team FROM {t} WHERE id = 500"
        ))
        .await;
    assert_eq!(db.as_deref(), Some("new:4"));
    let got: String = query(&mut con, &["GET", "wusers:500"])
        .await
        .expect("an answer");
    assert_eq!(row(&got)["name"], "new");
    let err = query::<String>(
        &mut con,
        &["SET", "wusers:500", r#"{"name": "x"}"#, "NX", "EX", "10"],
    )
    .await
    .expect_err("an error answer");
    assert!(err.to_string().contains("NX EX 10"), "options named: {err}");
    let err = query::<String>(&mut con, &["SET", "wusers:500", r#"{"nope": 1}"#])
        .await
        .expect_err("an error answer");
    assert!(err.to_string().contains("unknown_column"), "{err}");
    let err = query::<String>(
        &mut con,
        &["SET", "wusers:500", r#"{"name": "x", "team": "t"}"#],
    )
    .await
    .expect_err("an error answer");
    assert!(err.to_string().contains("type_mismatch"), "{err}");
    let err = query::<String>(&mut con, &["SET", "wusers:abc", r#"{"name": "x"}"#])
        .await
        .expect_err("an error answer");
    assert!(err.to_string().contains("bad_id"), "{err}");
    let n: i64 = query(
        &mut con,
        &["HSET", "wusers:500", "team", "9", "email", "n@x"],
    )
    .await
    .expect("an answer");
    assert_eq!(n, 2);
    let db = pg
        .scalar_text(&format!(
            "SELECT team || ':' || email FROM {t} WHERE id = 500"
        ))
        .await;
    assert_eq!(db.as_deref(), Some("9:n@x"));
    let err = query::<i64>(&mut con, &["HSET", "wusers:9999", "team", "1"])
        .await
        .expect_err("an error answer");
    assert!(err.to_string().contains("not_found"), "{err}");
    let n: i64 = query(&mut con, &["DEL", "wusers:500"])
        .await
        .expect("an answer");
    assert_eq!(n, 1);
    let gone = pg
        .scalar_text(&format!("SELECT count(*)::text FROM {t} WHERE id = 500"))
        .await;
    assert_eq!(gone.as_deref(), Some("0"));
    let none: Option<String> = query(&mut con, &["GET", "wusers:500"])
        .await
        .expect("an answer");
    assert_eq!(none, None);
}

#[tokio::test]
async fn errors_are_worded_as_redis_words_them() {
    let (_pg, _t, resp) = users("").await;
    let mut con = resp.client(false).await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["FOO", "a", "b"],
            "unknown command 'FOO', with args beginning with: 'a' 'b'",
        ),
        (&["GET"], "wrong number of arguments for 'get' command"),
        (
            &["HGET", "users:1"],
            "wrong number of arguments for 'hget' command",
        ),
        (
            &["CLIENT", "SETNAME"],
            "wrong number of arguments for 'client|setname' command",
        ),
        (
            &["CLIENT", "FOO"],
            "unknown subcommand 'FOO'. Try CLIENT HELP.",
        ),
        (&["SELECT", "1"], "DB index is out of range"),
        (&["GET", "nobody:1"], "unknown_entity"),
        (&["GET", "nokey"], "unknown_entity"),
        (&["GET", "users:x1"], "bad_id"),
        (&["LRANGE", "users:1", "0", "1"], "wrong kind of value"),
        (&["MULTI"], "not supported"),
        (&["FLUSHDB"], "not supported"),
        (&["KEYS", "*"], "not supported"),
        (&["SUBSCRIBE", "x"], "not supported"),
        (&["AUTH", "x"], "without any password configured"),
    ];
    for (args, want) in cases {
        let err = query::<Value>(&mut con, args)
            .await
            .expect_err("an error answer");
        assert!(err.to_string().contains(want), "{args:?}: {err}");
    }
    let pong: String = query(&mut con, &["PING"]).await.expect("an answer");
    assert_eq!(pong, "PONG");
    let ok: String = query(&mut con, &["SELECT", "0"]).await.expect("an answer");
    assert_eq!(ok, "OK");
    // The exact bytes, as redis-cli would print them.
    let (got, _) = resp
        .raw(b"*3\r\n$3\r\nFOO\r\n$1\r\na\r\n$1\r\nb\r\n", 60)
        .await;
    assert_eq!(
        got,
        b"-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n".to_vec()
    );
}

#[tokio::test]
async fn malformed_input_answers_a_protocol_error_and_closes() {
    let (_pg, _t, resp) = users("").await;
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"*1\r\n+x\r\n",
            b"-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*x\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$x\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"get \"a\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        // Over body_limit (1 MiB): refused on the claimed length alone.
        (
            b"*2\r\n$3\r\nSET\r\n$2000000\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*99999999999\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        // Commands before the error are answered first.
        (
            b"PING\r\n*1\r\n+x\r\n",
            b"+PONG\r\n-ERR Protocol error: expected '$', got '+'\r\n",
        ),
    ];
    for (input, want) in cases {
        let (got, closed) = resp.raw(input, usize::MAX).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "{input:?}"
        );
        assert!(closed, "closed after {input:?}");
    }
    let (got, _) = resp.raw(b"PING\r\nECHO 'hi there'\r\n", 21).await;
    assert_eq!(
        got,
        b"+PONG\r\n$8\r\nhi there\r\n".to_vec(),
        "inline commands"
    );
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order_and_counted() {
    let (_pg, _t, resp) = users("").await;
    let mut con = resp.client(false).await;
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("GET").arg(format!("users:{i}"));
        if i % 10 == 0 {
            pipe.cmd("PING");
            pipe.cmd("GET").arg("users:5000");
        }
    }
    let answers: Vec<Value> = pipe.query_async(&mut con).await.expect("an answer");
    let mut k = 0;
    for i in 0..50 {
        let Value::BulkString(bytes) = &answers[k] else {
            panic!("answer {k}: {:?}", answers[k]);
        };
        assert_eq!(row(std::str::from_utf8(bytes).expect("an answer"))["id"], i);
        k += 1;
        if i % 10 == 0 {
            assert_eq!(answers[k], Value::SimpleString("PONG".into()));
            assert_eq!(answers[k + 1], Value::Nil);
            k += 2;
        }
    }
    let stats = resp.state.entity("users").expect("an answer").cache.stats();
    assert_eq!(stats.total_reads(), 55, "every GET is one read");
    let commands = larder_server::resp::stats_json(resp.state.resp());
    assert!(
        commands["commands"]["get"].as_u64().expect("an answer") >= 55,
        "{commands}"
    );
    assert_eq!(commands["commands"]["ping"].as_u64(), Some(5), "{commands}");
    assert!(
        commands["connections"].as_i64().expect("an answer") >= 1,
        "{commands}"
    );
    let metrics = larder_server::http::metrics::install().render();
    assert!(
        metrics.contains("larder_resp_commands_total{command=\"ping\"}"),
        "commands by name are on /metrics"
    );
    assert!(
        metrics.contains("larder_resp_connections"),
        "connections gauge"
    );
}

#[tokio::test]
async fn a_token_gates_every_command_but_auth_hello_ping_and_quit() {
    let var = unique("RESP_TOKEN").to_uppercase();
    std::env::set_var(&var, "s3cret");
    let (_pg, _t, resp) = users(&format!("[auth]\ntoken_env = \"{var}\"\n")).await;
    let (got, _) = resp
        .raw(b"GET users:1\r\nPING\r\nHELLO 3\r\nAUTH nope\r\n", 400)
        .await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with(
            "-NOAUTH Authentication required.\r\n+PONG\r\n-NOAUTH HELLO must be called"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
        "{text}"
    );
    let (got, _) = resp
        .raw(b"AUTH default s3cret\r\nGET users:404\r\n", 10)
        .await;
    assert_eq!(got, b"+OK\r\n$-1\r\n".to_vec());
    let url = format!("redis://:s3cret@127.0.0.1:{}/?protocol=resp3", resp.port);
    let mut con = redis::Client::open(url)
        .expect("an answer")
        .get_multiplexed_async_connection()
        .await
        .expect("redis-rs authenticates with HELLO 3 AUTH");
    let got: String = query(&mut con, &["GET", "users:3"])
        .await
        .expect("an answer");
    assert_eq!(row(&got)["id"], 3);
}

#[tokio::test]
async fn the_read_token_allows_read_commands_and_refuses_writes_with_noperm() {
    let admin = unique("RESP_ADMIN").to_uppercase();
    let read = unique("RESP_READ").to_uppercase();
    std::env::set_var(&admin, "adm1n");
    std::env::set_var(&read, "r3ad");
    let (pg, t, resp) = users(&format!(
        "[auth]\ntoken_env = \"{admin}\"\nread_token_env = \"{read}\"\n"
    ))
    .await;
    let (got, _) = resp
        .raw(
            b"AUTH r3ad\r\nEXISTS users:1\r\nDEL users:1\r\nSET wusers:1 {}\r\nHSET wusers:1 name x\r\n",
            usize::MAX,
        )
        .await;
    let text = String::from_utf8_lossy(&got);
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(&lines[..2], &["+OK", ":1"], "{text}");
    for (line, command) in lines[2..5].iter().zip(["del", "set", "hset"]) {
        assert_eq!(
            *line,
            format!(
                "-NOPERM User default has no permissions to run the '{command}' command \
                 (the read-only token allows reads only)"
            ),
            "{text}"
        );
    }
    // Nothing was written.
    let name = pg
        .scalar_text(&format!("SELECT name FROM {t} WHERE id = 1"))
        .await;
    assert_eq!(name.as_deref(), Some("user 1"));
    // The admin token may write.
    let (got, _) = resp
        .raw(b"AUTH adm1n\r\nHSET wusers:1 name ada\r\n", 9)
        .await;
    assert_eq!(got, b"+OK\r\n:1\r\n".to_vec());
    std::env::remove_var(&admin);
    std::env::remove_var(&read);
}

#[tokio::test]
async fn a_non_loopback_resp_listener_needs_a_token_or_allow_open() {
    let toml = support::pg_config(
        &unique("r"),
        "[resp]\nlisten = \"0.0.0.0:7379\"\n[[entity]]\nname = \"users\"\ntable = \"t\"\n",
    );
    let mut config = larder_server::config::Config::parse(&toml, "test.toml").expect("parse");
    let e = larder_server::resp::check_listen(&config, false).expect_err("refused");
    assert_eq!(e.key, "resp.listen");
    assert!(larder_server::resp::check_listen(&config, true).is_ok());
    config.auth.allow_open = true;
    assert!(larder_server::resp::check_listen(&config, false).is_ok());
    config.auth.allow_open = false;
    config.resp.listen = Some("127.0.0.1:7379".into());
    assert!(larder_server::resp::check_listen(&config, false).is_ok());
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_idle_timeout() {
    let (_pg, _t, resp) = users("[resp]\nidle_timeout = \"300ms\"\n").await;
    let started = Instant::now();
    // `raw` reads until the server closes the connection (or 5 s pass).
    let (got, closed) = resp.raw(b"PING\r\n", usize::MAX).await;
    assert_eq!(got, b"+PONG\r\n".to_vec());
    assert!(closed, "the idle connection was not closed within 5 s");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Without the setting (5 minutes), the same connection stays open.
    let (_pg, _t, resp) = users("").await;
    let (got, closed) = resp.raw(b"PING\r\n", usize::MAX).await;
    assert_eq!(got, b"+PONG\r\n".to_vec());
    assert!(!closed);
}

#[tokio::test]
async fn introspection_and_connection_commands_answer_as_redis_does() {
    let var = unique("RESP_TOKEN").to_uppercase();
    std::env::set_var(&var, "s3cret");
    let (_pg, _t, resp) = users(&format!(
        "[auth]\ntoken_env = \"{var}\"\n[resp]\nmax_clients = 77\n"
    ))
    .await;
    let mut con = redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/", resp.port))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let count: i64 = query(&mut con, &["COMMAND", "COUNT"]).await.expect("count");
    assert_eq!(
        count,
        larder_server::resp::cmd::TABLE.len() as i64,
        "COMMAND COUNT"
    );
    let config: Vec<String> = query(&mut con, &["CONFIG", "GET", "maxclients"])
        .await
        .expect("config get");
    assert_eq!(config, vec!["maxclients".to_owned(), "77".to_owned()]);
    let ok: String = query(&mut con, &["CLIENT", "SETNAME", "worker-1"])
        .await
        .expect("setname");
    assert_eq!(ok, "OK");
    let name: String = query(&mut con, &["CLIENT", "GETNAME"])
        .await
        .expect("getname");
    assert_eq!(name, "worker-1");
    let id: i64 = query(&mut con, &["CLIENT", "ID"]).await.expect("id");
    assert!(id > 0);
    // RESET forgets the name and the authentication; QUIT answers and closes.
    let (got, closed) = resp
        .raw(
            b"AUTH s3cret\r\nCLIENT SETNAME n\r\nRESET\r\nGET users:1\r\nQUIT\r\n",
            usize::MAX,
        )
        .await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+OK\r\n+OK\r\n+RESET\r\n-NOAUTH Authentication required.\r\n+OK\r\n"
    );
    assert!(closed, "QUIT closes the connection");
    std::env::remove_var(&var);
}

#[tokio::test]
async fn connections_over_max_clients_are_refused() {
    let (_pg, _t, resp) = users("").await;
    drop(resp);
    let mut pg = Pg::connect().await;
    let t = unique("resp_max");
    pg.exec(&t, USERS).await;
    let toml = support::pg_config(
        &unique("r"),
        &format!("[resp]\nmax_clients = 1\n[[entity]]\nname = \"users\"\ntable = \"{t}\"\n"),
    );
    let resp = Resp::start(support::state(&toml).await).await;
    let mut first = resp.client(false).await;
    let pong: String = query(&mut first, &["PING"]).await.expect("an answer");
    assert_eq!(pong, "PONG");
    let (got, closed) = resp.raw(b"PING\r\n", usize::MAX).await;
    assert_eq!(got, b"-ERR max number of clients reached\r\n".to_vec());
    assert!(closed);
    let info: String = query(&mut first, &["INFO", "clients"])
        .await
        .expect("an answer");
    assert!(info.contains("rejected_connections:1"), "{info}");
}

#[tokio::test]
async fn a_write_back_entity_with_its_store_down_answers_tryagain() {
    let mut redis = support::RedisServer::start();
    let mut pg = Pg::connect().await;
    let t = unique("resp_wb");
    pg.exec(&t, USERS).await;
    let toml = format!(
        "[store]\nurl = \"{}\"\nprefix = \"{}\"\n[source]\nurl = \"{}\"\npool = 2\n\
         [[entity]]\nname = \"users\"\ntable = \"{t}\"\nwrite = \"back\"\nresp_writes = true\n\
         [entity.write_back]\nrequire_durable = false\n",
        redis.url(),
        unique("r"),
        support::pg_url()
    );
    let resp = Resp::start(support::state(&toml).await).await;
    let mut con = resp.client(false).await;
    let ok: String = query(&mut con, &["SET", "users:1", r#"{"name": "queued"}"#])
        .await
        .expect("an answer");
    assert_eq!(ok, "OK");
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match query::<String>(&mut con, &["SET", "users:2", r#"{"name": "lost"}"#]).await {
            Err(e) if e.code() == Some("TRYAGAIN") => break,
            other => assert!(Instant::now() < deadline, "no TRYAGAIN: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = query::<Option<String>>(&mut con, &["GET", "users:1"])
        .await
        .expect_err("an error answer");
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
}

/// A service over one table with three entities: `fresh` (ttl 60 s, no
/// jitter, no early refresh), `short` (ttl 1 s and a stale window) and
/// `wfresh` (as `fresh`, written over RESP).
async fn freshness_entities() -> (Pg, String, Resp) {
    let mut pg = Pg::connect().await;
    let t = unique("resp_ttl");
    pg.exec(&t, USERS).await;
    let exact = "jitter = 0.0\nearly_refresh = 0.0\n";
    let toml = support::pg_config(
        &unique("r"),
        &format!(
            "[[entity]]\nname = \"fresh\"\ntable = \"{t}\"\nttl = \"60s\"\n{exact}\
             [[entity]]\nname = \"short\"\ntable = \"{t}\"\nttl = \"1s\"\nstale = \"5m\"\n{exact}\
             [[entity]]\nname = \"wfresh\"\ntable = \"{t}\"\nttl = \"60s\"\nresp_writes = true\n{exact}"
        ),
    );
    let state = support::state(&toml).await;
    (pg, t, Resp::start(state).await)
}

async fn ttl_of(con: &mut MultiplexedConnection, key: &str) -> (i64, i64) {
    let secs: i64 = query(con, &["TTL", key]).await.expect("TTL");
    let ms: i64 = query(con, &["PTTL", key]).await.expect("PTTL");
    (secs, ms)
}

#[tokio::test]
async fn ttl_and_pttl_answer_the_remaining_freshness() {
    let (_pg, _t, resp) = freshness_entities().await;
    for resp3 in [false, true] {
        let mut con = resp.client(resp3).await;
        // A miss fills the entry: fresh for the whole ttl.
        let (secs, ms) = ttl_of(&mut con, "fresh:1").await;
        assert!(secs == 59 || secs == 60, "TTL {secs}");
        assert!(ms > 59_000 && ms <= 60_000, "PTTL {ms}");
        // No row: -2, for a remembered "not found" too.
        for _ in 0..2 {
            assert_eq!(ttl_of(&mut con, "fresh:4242").await, (-2, -2));
        }
    }
    let mut con = resp.client(false).await;
    // The same entry counts down as time passes...
    let (_, first) = ttl_of(&mut con, "fresh:2").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let later = loop {
        let (_, ms) = ttl_of(&mut con, "fresh:2").await;
        assert!(ms <= first, "freshness only shrinks: {ms} after {first}");
        if ms <= first - 200 {
            break ms;
        }
        assert!(Instant::now() < deadline, "PTTL never moved from {first}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // ...and an invalidation makes the next read fill a new one.
    let n: i64 = query(&mut con, &["DEL", "fresh:2"]).await.expect("DEL");
    assert_eq!(n, 1);
    let (secs, ms) = ttl_of(&mut con, "fresh:2").await;
    assert!(ms > later && ms > 59_000 && ms <= 60_000, "PTTL {ms}");
    assert!(secs == 59 || secs == 60, "TTL {secs}");
    // A write caches the row it wrote: fresh for the whole ttl again.
    let ok: String = query(&mut con, &["SET", "wfresh:3", r#"{"name": "new"}"#])
        .await
        .expect("SET");
    assert_eq!(ok, "OK");
    let (secs, ms) = ttl_of(&mut con, "wfresh:3").await;
    assert!(ms > 59_000 && ms <= 60_000, "PTTL after a write {ms}");
    assert!(secs == 59 || secs == 60, "TTL after a write {secs}");
    // Errors stay errors.
    let err = query::<i64>(&mut con, &["TTL", "nobody:1"])
        .await
        .expect_err("an error answer");
    assert!(err.to_string().contains("unknown_entity"), "{err}");
}

#[tokio::test]
async fn a_stale_answer_has_no_freshness_left() {
    let (_pg, _t, resp) = freshness_entities().await;
    let mut con = resp.client(false).await;
    let (secs, ms) = ttl_of(&mut con, "short:1").await;
    assert!(secs == 1 && ms > 0 && ms <= 1_000, "TTL {secs}, PTTL {ms}");
    // Past its second of freshness the entry is served stale (and
    // refreshed in the background): no freshness left, never negative.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ms: i64 = query(&mut con, &["PTTL", "short:1"]).await.expect("PTTL");
        assert!(ms >= 0, "PTTL {ms}");
        if ms == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never served stale");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = resp.state.entity("short").expect("entity").cache.stats();
    assert!(stats.reads(larder::Outcome::Stale) >= 1, "{stats:?}");
    // The background refresh lands: fresh again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ms: i64 = query(&mut con, &["PTTL", "short:1"]).await.expect("PTTL");
        if ms > 0 {
            assert!(ms <= 1_000, "PTTL {ms}");
            break;
        }
        assert!(Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mget_answers_nil_for_a_bad_key_and_reads_the_others_in_one_go() {
    let (_pg, _t, resp) = freshness_entities().await;
    let cache = &resp.state.entity("fresh").expect("entity").cache;
    for resp3 in [false, true] {
        let mut con = resp.client(resp3).await;
        let (a, b) = if resp3 { ("10", "11") } else { ("20", "21") };
        let loads = cache.stats().loads;
        let many: Vec<Option<String>> = query(
            &mut con,
            &[
                "MGET",
                &format!("fresh:{a}"),
                "nobody:1",
                "fresh:x1",
                "nokey",
                &format!("fresh:{b}"),
                "fresh:4242",
            ],
        )
        .await
        .expect("an array, not an error");
        assert_eq!(many.len(), 6);
        assert_eq!(
            row(many[0].as_deref().expect("row a"))["id"],
            a.parse::<i64>().expect("a")
        );
        assert_eq!(many[1..4], [None, None, None], "bad keys answer nil");
        assert_eq!(
            row(many[4].as_deref().expect("row b"))["id"],
            b.parse::<i64>().expect("b")
        );
        assert_eq!(many[5], None, "no row");
        assert_eq!(
            cache.stats().loads - loads,
            1,
            "the misses of the good keys: one query, not one per key"
        );
    }
    // Only bad keys: an array of nils.
    let mut con = resp.client(false).await;
    let none: Vec<Option<String>> = query(&mut con, &["MGET", "nobody:1", "fresh:x"])
        .await
        .expect("an array");
    assert_eq!(none, vec![None, None]);
    // GET still names what is wrong with its key.
    let err = query::<Option<String>>(&mut con, &["GET", "fresh:x1"])
        .await
        .expect_err("an error answer");
    assert!(err.to_string().contains("bad_id"), "{err}");
}
