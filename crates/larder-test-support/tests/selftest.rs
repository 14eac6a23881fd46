//! The test support code tested: if these fail, every other integration test
//! is suspect. Plain std TCP and hand-written RESP, no larder, no runtime.

use larder_test_support as support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use support::resp::{self, Reply};
use support::{RedisServer, TcpProxy};

/// Polls `f` every 10 ms until it holds; panics after 10 s.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn ping(addr: SocketAddr) -> io::Result<Reply> {
    resp::cmd(addr, &["PING"])
}

fn pong() -> Reply {
    Reply::Simple("PONG".into())
}

fn config_get(addr: SocketAddr, name: &str) -> String {
    match resp::cmd(addr, &["CONFIG", "GET", name]).expect("CONFIG GET") {
        Reply::Array(Some(items)) if items.len() == 2 => {
            String::from_utf8(items[1].bulk().expect("bulk value").to_vec()).expect("utf-8")
        }
        other => panic!("CONFIG GET {name}: {other:?}"),
    }
}

/// A connection the peer has closed: a read gives EOF or a reset, not a
/// timeout and not data.
fn assert_closed(stream: &mut TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("expected a closed connection, read {:?}", &buf[..n]),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "expected a closed connection, the read timed out"
        ),
    }
}

/// An echo server on a free loopback port, for the lifetime of the test binary.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let addr = listener.local_addr().expect("echo addr");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = stream.try_clone().expect("clone");
                let mut writer = stream;
                let _ = io::copy(&mut reader, &mut writer);
            });
        }
    });
    addr
}

/// PostgreSQL answers an SSLRequest with one byte, 'S' or 'N'.
fn assert_postgres_answers(stream: &mut TcpStream) {
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .expect("SSLRequest");
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).expect("SSLRequest answer");
    assert!(matches!(&answer, b"S" | b"N"), "PostgreSQL said {answer:?}");
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
}

fn echo_roundtrip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).expect("write");
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf).expect("read echo");
    assert_eq!(buf, msg);
}

// ------------------------------------------------------------ names, URLs --

#[test]
fn unique_names_are_distinct_valid_identifiers() {
    let names: Vec<String> = (0..1000).map(|_| support::unique("My-Test")).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "duplicates in {names:?}");
    for name in names
        .iter()
        .chain([&support::unique(""), &support::unique("9lives")])
    {
        assert!(name.len() <= 63, "{name} is too long for PostgreSQL");
        assert!(
            name.starts_with(|c: char| c.is_ascii_lowercase()),
            "{name} must start with a letter"
        );
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name} has characters outside [a-z0-9_]"
        );
    }
    assert!(names[0].starts_with("my_test_"), "{}", names[0]);
    let long = support::unique(&"x".repeat(200));
    assert!(long.len() <= 63, "{long}");
}

#[test]
fn urls_get_their_address_replaced() {
    let addr: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let cases = [
        (
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://postgres@127.0.0.1:40000/test",
        ),
        (
            "postgres://u:p%40ss@db.example:6000/app?sslmode=disable",
            "postgres://u:p%40ss@127.0.0.1:40000/app?sslmode=disable",
        ),
        ("postgres://localhost", "postgres://127.0.0.1:40000"),
        (
            "postgres://[::1]:5432/test",
            "postgres://127.0.0.1:40000/test",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:40000/0"),
    ];
    for (url, want) in cases {
        assert_eq!(support::url_with_addr(url, addr), want, "from {url}");
    }
    let v6: SocketAddr = "[::1]:5432".parse().expect("v6");
    assert_eq!(
        support::url_with_addr("postgres://root@127.0.0.1/test", v6),
        "postgres://root@[::1]:5432/test"
    );

    assert_eq!(
        support::url_addr("postgres://postgres@127.0.0.1/test", 5432),
        "127.0.0.1:5432".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(support::url_addr("postgres://[::1]/x", 5432), v6);
    assert_eq!(support::url_addr(&support::pg_url_via(addr), 1), addr);
}

// ------------------------------------------------------ shared services --

#[test]
fn shared_services_answer() {
    let redis = support::redis_addr();
    assert_eq!(
        ping(redis)
            .unwrap_or_else(|e| panic!("shared Redis at {redis} ({e}): run scripts/services.sh")),
        pong()
    );

    let pg = support::pg_addr();
    let mut stream = TcpStream::connect(pg)
        .unwrap_or_else(|e| panic!("shared PostgreSQL at {pg} ({e}): run scripts/services.sh"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    assert_postgres_answers(&mut stream);
}

// ------------------------------------------------------------- RedisServer --

#[test]
fn redis_server_answers_ping_and_stops_when_killed() {
    let mut server = RedisServer::start();
    assert_eq!(ping(server.addr()).expect("PING"), pong());
    assert!(server.pid().is_some());
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/0", server.port())
    );
    assert!(server.dir().join("redis.log").exists());
    // No persistence unless asked.
    assert_eq!(config_get(server.addr(), "save"), "");
    assert_eq!(config_get(server.addr(), "appendonly"), "no");

    server.kill();
    assert_eq!(server.pid(), None);
    // kill() waited for the process, so its socket is already gone.
    assert!(
        ping(server.addr()).is_err(),
        "a killed server still answers"
    );
    server.kill(); // idempotent
}

#[test]
fn redis_server_restart_replays_the_aof() {
    let mut server = RedisServer::builder()
        .appendonly(true)
        .appendfsync_always(true)
        .start();
    let addr = server.addr();
    assert_eq!(config_get(addr, "appendonly"), "yes");
    assert_eq!(config_get(addr, "appendfsync"), "always");
    let key = support::unique("aof");
    assert_eq!(
        resp::cmd(addr, &[b"SET".as_slice(), key.as_bytes(), b"durable"]).expect("SET"),
        Reply::Simple("OK".into())
    );
    let first_pid = server.pid();

    server.kill();
    assert!(ping(addr).is_err());
    server.restart();

    assert_eq!(server.addr(), addr, "same port after restart");
    assert_ne!(server.pid(), first_pid);
    assert_eq!(
        resp::cmd(addr, &[b"GET".as_slice(), key.as_bytes()]).expect("GET"),
        Reply::Bulk(Some(b"durable".to_vec()))
    );
    // restart() on a running server kills it first.
    server.restart();
    assert_eq!(ping(addr).expect("PING"), pong());
}

#[test]
fn redis_server_builder_options_reach_the_server() {
    let server = RedisServer::builder()
        .maxmemory_policy("allkeys-lru")
        .arg("--maxmemory 10mb")
        .start();
    let addr = server.addr();
    assert_eq!(config_get(addr, "maxmemory-policy"), "allkeys-lru");
    assert_eq!(
        config_get(addr, "maxmemory"),
        (10 * 1024 * 1024).to_string()
    );
}

#[test]
fn redis_server_start_failure_panics_with_the_log() {
    let panic =
        std::panic::catch_unwind(|| RedisServer::builder().arg("--no-such-directive 1").start())
            .expect_err("a server with a bad directive must not start");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("did not start"), "{msg}");
    // Config errors go to stderr, which the message must include.
    assert!(msg.contains("no-such-directive"), "{msg}");
}

#[test]
fn dropping_a_redis_server_kills_it_and_removes_its_dir() {
    let server = RedisServer::start();
    let (addr, dir) = (server.addr(), server.dir().to_path_buf());
    assert!(dir.exists());
    drop(server);
    assert!(ping(addr).is_err(), "server still answers after drop");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

// ---------------------------------------------------------------- TcpProxy --

#[test]
fn proxy_forwards_cuts_and_restores() {
    let echo = echo_server();
    let proxy = TcpProxy::start(echo);
    assert_eq!(proxy.target(), echo);

    let mut first = connect(proxy.addr());
    echo_roundtrip(&mut first, b"hello");
    assert_eq!(proxy.live_connections(), 1);

    proxy.cut();
    assert_eq!(proxy.live_connections(), 0);
    assert_closed(&mut first);
    // New connections are accepted and closed at once.
    let mut during = connect(proxy.addr());
    assert_closed(&mut during);

    proxy.restore();
    let mut after = connect(proxy.addr());
    echo_roundtrip(&mut after, b"back again");
    // A half-close is passed on: the echo server sees EOF and closes too.
    after
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    assert_closed(&mut after);
    wait_until("the finished connection to be forgotten", || {
        proxy.live_connections() == 0
    });
}

#[test]
fn proxy_in_front_of_a_redis_server() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.addr());

    let mut conn = resp::Conn::connect(proxy.addr()).expect("connect via proxy");
    assert_eq!(conn.cmd(&["PING"]).expect("PING via proxy"), pong());

    proxy.cut();
    assert!(conn.cmd(&["PING"]).is_err(), "cut connection still works");
    assert!(
        ping(proxy.addr()).is_err(),
        "new connection works while cut"
    );
    assert_eq!(ping(server.addr()).expect("direct PING"), pong());

    proxy.restore();
    assert_eq!(ping(proxy.addr()).expect("PING after restore"), pong());
}

#[test]
fn proxy_to_a_dead_target_closes_connections() {
    let mut server = RedisServer::start();
    let proxy = TcpProxy::start(server.addr());
    server.kill();
    let mut stream = connect(proxy.addr());
    assert_closed(&mut stream);
    server.restart();
    assert_eq!(ping(proxy.addr()).expect("PING after restart"), pong());
}

#[test]
fn dropping_a_proxy_closes_everything() {
    let proxy = TcpProxy::start(echo_server());
    let addr = proxy.addr();
    let mut stream = connect(addr);
    echo_roundtrip(&mut stream, b"x");
    drop(proxy);
    assert_closed(&mut stream);
    // Refused, normally. But a process another test is spawning at this very
    // moment may still hold a copy of the listener (between fork and exec),
    // so the kernel can complete a handshake that is then reset: what must
    // not happen is the connection being served.
    if let Ok(mut late) = TcpStream::connect(addr) {
        let _ = late.write_all(b"y");
        assert_closed(&mut late);
    }
}

#[test]
fn proxy_reaches_the_shared_postgres() {
    let proxy = TcpProxy::start(support::pg_addr());
    let mut stream = connect(proxy.addr());
    assert_postgres_answers(&mut stream);
    proxy.cut();
    assert_closed(&mut stream);
}
