//! A `redis-server` of the test's own, on a free loopback port, that the test
//! may configure, kill and restart (the shared Redis on 6379 must never be
//! broken by a test).

use crate::resp::{self, Reply};
use crate::unique;
use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to answer `PING` after it is spawned
/// (including AOF replay on [`RedisServer::restart`]).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts at finding a free port: another process may grab the port between
/// our probe and the server's bind.
const PORT_ATTEMPTS: usize = 3;

/// Options for a [`RedisServer`]; see [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RedisServerBuilder {
    appendonly: bool,
    appendfsync_always: bool,
    maxmemory_policy: Option<String>,
    extra: Vec<String>,
    tls: Option<[PathBuf; 3]>,
}

impl RedisServerBuilder {
    /// `appendonly yes`: writes go to an AOF in the server's dir, replayed
    /// by [`RedisServer::restart`]. Without it the server persists nothing
    /// (`save ""`). Default: off.
    pub fn appendonly(mut self, on: bool) -> Self {
        self.appendonly = on;
        self
    }

    /// `appendfsync always`: every write is fsynced before Redis answers, the
    /// only setting larder calls durable. Only meaningful with
    /// [`appendonly`](Self::appendonly). Default: off (Redis' `everysec`).
    pub fn appendfsync_always(mut self, on: bool) -> Self {
        self.appendfsync_always = on;
        self
    }

    /// `maxmemory-policy <policy>`, e.g. `"allkeys-lru"`. Default: Redis'
    /// own (`noeviction`).
    pub fn maxmemory_policy(mut self, policy: &str) -> Self {
        self.maxmemory_policy = Some(policy.to_string());
        self
    }

    /// Any other config directive as on the command line, e.g.
    /// `"--maxmemory 10mb"`; split on whitespace into arguments (so no
    /// value with spaces: use [`raw_arg`](Self::raw_arg) for those). Passed
    /// after the builder's own, so it overrides them. Default: none.
    pub fn arg(mut self, directive: &str) -> Self {
        self.extra
            .extend(directive.split_whitespace().map(str::to_string));
        self
    }

    /// TLS only: the port is a TLS port (`--port 0`, `--tls-port`), with
    /// this certificate, key and CA (PEM files), clients not asked for
    /// certificates; [`RedisServer::url`] is `rediss://`. Readiness is
    /// the server's "Ready to accept connections" log line (a plain PING
    /// cannot reach a TLS port). Default: off.
    pub fn tls(mut self, cert: &Path, key: &Path, ca: &Path) -> Self {
        self.tls = Some([cert.to_owned(), key.to_owned(), ca.to_owned()]);
        self
    }

    /// One command-line argument exactly as given (`""` included).
    pub fn raw_arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_string());
        self
    }

    /// Spawns the server and waits until it answers `PING`.
    ///
    /// # Panics
    /// If `redis-server` cannot be spawned or does not answer within 10 s;
    /// the message includes the server's log and stderr.
    pub fn start(self) -> RedisServer {
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--daemonize".into(),
            "no".into(),
            // Tests may use DEBUG SLEEP / DEBUG RELOAD on their own server.
            "--enable-debug-command".into(),
            "local".into(),
        ];
        if self.appendonly {
            args.extend(["--appendonly".into(), "yes".into()]);
        } else {
            args.extend([
                "--appendonly".into(),
                "no".into(),
                "--save".into(),
                String::new(),
            ]);
        }
        if self.appendfsync_always {
            args.extend(["--appendfsync".into(), "always".into()]);
        }
        if let Some(policy) = self.maxmemory_policy {
            args.extend(["--maxmemory-policy".into(), policy]);
        }
        let tls = self.tls.is_some();
        if let Some([cert, key, ca]) = self.tls {
            for (flag, file) in [
                ("--tls-cert-file", cert),
                ("--tls-key-file", key),
                ("--tls-ca-cert-file", ca),
            ] {
                args.push(flag.into());
                args.push(file.display().to_string());
            }
            args.extend(["--tls-auth-clients".into(), "no".into()]);
        }
        args.extend(self.extra);

        let dir = std::env::temp_dir().join(unique("larder_redis"));
        let mut server = RedisServer {
            port: 0,
            dir,
            args,
            child: None,
            tls,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            server.reset_dir();
            server.port = free_port();
            server.spawn();
            match server.wait_ready() {
                Ok(()) => return server,
                Err(err) => {
                    server.kill();
                    let log = server.log();
                    let port_taken =
                        err.contains("another process") || log.contains("Address already in use");
                    if !port_taken || attempt == PORT_ATTEMPTS {
                        panic!(
                            "redis-server on port {} did not start: {err}\n{log}",
                            server.port
                        );
                    }
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }
}

/// A `redis-server` process of the test's own.
///
/// Behavior:
/// - listens on `127.0.0.1:<free port>`; data, AOF and log live in a fresh
///   directory under the system temp dir;
/// - [`kill`](Self::kill) is SIGKILL (a crash: no AOF rewrite, no save);
///   [`restart`](Self::restart) starts it again on the same port and dir, so
///   an AOF is replayed;
/// - dropping it kills the process and removes the directory; if the test is
///   panicking, the server's log is printed first (the test harness shows it
///   with the failure).
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// Everything but `--port`, `--dir` and `--logfile`; reused by restart.
    args: Vec<String>,
    child: Option<Child>,
    /// The port is a TLS port (see [`RedisServerBuilder::tls`]).
    tls: bool,
}

impl RedisServer {
    /// A server larder calls durable: `appendonly yes` + `appendfsync always`.
    pub fn durable() -> RedisServer {
        RedisServer::builder()
            .appendonly(true)
            .appendfsync_always(true)
            .start()
    }

    /// A server with default options: no persistence, no eviction.
    pub fn start() -> RedisServer {
        RedisServer::builder().start()
    }

    /// Options for a server: AOF, fsync, eviction policy, any directive.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// `redis://127.0.0.1:<port>/0` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// [`url`](Self::url) with 200 ms connect and response timeouts, so
    /// that a client notices a killed server at once instead of after
    /// redis-rs's defaults.
    pub fn url_with_short_timeouts(&self) -> String {
        format!(
            "{}?connect_timeout=200ms&response_timeout=200ms",
            self.url()
        )
    }

    /// [`url`](Self::url) with a 10 s response timeout, for tests whose
    /// server fsyncs every write (`appendfsync always`) while the rest of
    /// the suite loads the same disk: one fsync can then take longer than
    /// the 1 s default, and a write script that is never re-sent (an
    /// increment) would report the store unavailable.
    pub fn url_with_long_timeouts(&self) -> String {
        format!("{}?connect_timeout=10s&response_timeout=10s", self.url())
    }

    /// The loopback address it listens on (e.g. a [`TcpProxy`](crate::TcpProxy) target).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its working directory (RDB/AOF files, `redis.log`, `stdout.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id while it runs; `None` after [`kill`](Self::kill).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOPs the server: it keeps its connections but answers nothing
    /// (a stalled node) until [`resume`](Self::resume).
    ///
    /// # Panics
    /// If it is not running or the signal cannot be sent.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONTs a [`pause`](Self::pause)d server.
    ///
    /// # Panics
    /// If it is not running or the signal cannot be sent.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("a running server").to_string();
        let sent = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {sig} {pid}");
    }

    /// SIGKILLs the server and waits for it to be gone: clients see their
    /// connections drop and new ones refused. No-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if it already exited; wait() reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (killing it first if it runs) on the same
    /// port, in the same dir and with the same options, and waits until it
    /// answers `PING` (after replaying its AOF, if it has one).
    ///
    /// # Panics
    /// If it does not come back within 10 s (e.g. the port was taken
    /// meanwhile), with the server's log in the message.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(err) = self.wait_ready() {
            self.kill();
            panic!(
                "redis-server on port {} did not restart: {err}\n{}",
                self.port,
                self.log()
            );
        }
    }

    /// Kills (`CLIENT KILL ID`) every client of this server subscribed to
    /// a pub/sub channel (`sub=` above 0 in `CLIENT LIST`); answers how
    /// many. Only ever on a test's own server: never `CLIENT KILL TYPE`.
    ///
    /// # Panics
    /// If the server does not answer.
    pub fn kill_subscribers(&self) -> usize {
        let mut conn = resp::Conn::connect(self.addr()).expect("connect to own redis-server");
        let list = conn.cmd(&["CLIENT", "LIST"]).expect("CLIENT LIST");
        let list = String::from_utf8_lossy(list.bulk().unwrap_or_default()).into_owned();
        let mut killed = 0;
        for line in list.lines() {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(name))
                    .map(str::to_owned)
            };
            let subscribed = field("sub=").is_some_and(|n| n != "0");
            if let (true, Some(id)) = (subscribed, field("id=")) {
                let reply = conn
                    .cmd(&["CLIENT", "KILL", "ID", &id])
                    .expect("CLIENT KILL");
                if reply == Reply::Int(1) {
                    killed += 1;
                }
            }
        }
        killed
    }

    /// The server's log file and its stdout/stderr (where config errors go),
    /// last 200 lines of each.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for name in ["redis.log", "stdout.log"] {
            let path = self.dir.join(name);
            let text = fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("(cannot read: {e})\n"));
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            out.push_str(&format!("--- {} ---\n", path.display()));
            for line in tail {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn reset_dir(&self) {
        let _ = fs::remove_dir_all(&self.dir);
        fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.dir.display()));
    }

    fn spawn(&mut self) {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))
            .unwrap_or_else(|e| panic!("cannot open stdout.log in {}: {e}", self.dir.display()));
        let err = out.try_clone().expect("clone of stdout.log handle");
        let bin = redis_server_bin();
        let port = self.port.to_string();
        let ports: Vec<&str> = if self.tls {
            vec!["--port", "0", "--tls-port", &port]
        } else {
            vec!["--port", &port]
        };
        let child = Command::new(&bin)
            .args(&ports)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin:?} ({e}); is Redis installed? (scripts/services.sh)")
            });
        self.child = Some(child);
    }

    /// Polls `PING` until PONG from *this* process (the port may have been
    /// taken by someone else), the process exits, or [`READY_TIMEOUT`].
    fn wait_ready(&mut self) -> Result<(), String> {
        if self.tls {
            return self.wait_ready_tls();
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = self.addr();
        loop {
            let pid = self.running_pid()?;
            match resp::Conn::connect(addr).and_then(|mut c| {
                let pong = c.cmd(&["PING"])?;
                Ok((pong, c))
            }) {
                Ok((Reply::Simple(pong), mut conn)) if pong == "PONG" => {
                    let info = conn.cmd(&["INFO", "server"]).map_err(|e| e.to_string())?;
                    let info = info
                        .bulk()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    return if info.contains(&format!("process_id:{pid}\r\n")) {
                        Ok(())
                    } else {
                        Err(format!("port {} is served by another process", self.port))
                    };
                }
                // -LOADING while the AOF replays: keep polling.
                Ok((Reply::Error(e), _)) if e.starts_with("LOADING") => {}
                // Something else took the port between free_port() and
                // the server's bind (and our server will fail to bind).
                Ok((other, _)) => {
                    return Err(format!(
                        "port {} is served by another process (PING got {other:?})",
                        self.port
                    ))
                }
                // Refused (not listening yet) or reset: keep polling.
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG within {READY_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl RedisServer {
    /// The process id of the server if it is still running; an error
    /// saying why not (never started, or exited and with what status).
    fn running_pid(&mut self) -> Result<u32, String> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| "not running".to_string())?;
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited: {status}"));
        }
        Ok(child.id())
    }

    /// Polls the log of *this* process (lines carry its pid) for "Ready to
    /// accept connections", until the process exits or [`READY_TIMEOUT`].
    fn wait_ready_tls(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mine = format!("{}:M", self.running_pid()?);
            let log = fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
            if log
                .lines()
                .any(|l| l.starts_with(&mine) && l.contains("Ready to accept connections"))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready within {READY_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if thread::panicking() && self.child.is_some() {
            eprintln!(
                "redis-server on port {} (test panicked):\n{}",
                self.port,
                self.log()
            );
        }
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `LARDER_TEST_REDIS_SERVER`, or `redis-server` from `PATH`.
fn redis_server_bin() -> String {
    std::env::var("LARDER_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A loopback port that was free a moment ago: the kernel picks it for a
/// listener we drop at once. A race with other processes is possible, hence
/// [`PORT_ATTEMPTS`].
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}
