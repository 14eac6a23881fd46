//! One client connection: read, parse every complete command in the
//! buffer, answer them in order into one output buffer, write it, repeat.
//!
//! Why this shape: a pipelined burst is parsed in one pass and answered
//! with one write; consecutive `GET`s in it become one batched read (one
//! store round trip). Replies are encoded straight into the output buffer
//! (no reply values), and arguments are ranges into the read buffer.
//!
//! # Behavior
//! - Malformed input: `-ERR Protocol error: …`, after the answers of the
//!   commands before it, then the connection is closed.
//! - Idle for `idle_timeout`: closed. Shutdown: closed once the command in
//!   progress is answered (a command is never abandoned half-way).

use super::cmd::{self, rows, Args, Ctx, Flow, Kind};
use super::parse::{self, Parsed, ProtocolError};
use super::reply::{self, Proto};
use super::Shared;
use crate::serve::AppState;
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Room a command needs beyond its largest bulk (its name, key, headers).
const COMMAND_SLACK: usize = 64 * 1024;

/// What a connection is allowed to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Not authenticated: only `AUTH`, `HELLO`, `PING`, `QUIT`, `RESET`.
    None,
    /// The read-only token: reads.
    Read,
    /// The admin token, or no token configured: everything.
    Full,
}

/// A connection's state, as `CLIENT`, `HELLO` and `RESET` see it.
#[derive(Debug)]
pub struct Conn {
    /// `CLIENT ID`.
    pub id: u64,
    /// The peer.
    pub addr: SocketAddr,
    /// RESP2 until `HELLO 3`.
    pub proto: Proto,
    /// What it may run.
    pub access: Access,
    /// `CLIENT SETNAME`.
    pub name: Option<String>,
    /// `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Option<String>,
    /// `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Option<String>,
    /// When it connected.
    pub since: Instant,
    /// The last command run, for `CLIENT INFO`.
    pub last: &'static str,
}

impl Conn {
    /// The access a fresh (or `RESET`) connection starts with.
    pub fn initial_access(state: &AppState) -> Access {
        if state.token().is_some() || state.read_token().is_some() {
            Access::None
        } else {
            Access::Full
        }
    }
}

/// Serves one connection until it closes, errs, idles out or `shutdown` flips.
pub async fn serve(
    mut stream: TcpStream,
    addr: SocketAddr,
    state: AppState,
    shared: std::sync::Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let limit = state.config().body_limit.0;
    let idle = state.config().resp.idle_timeout.0;
    let mut conn = Conn {
        id: shared.next_id(),
        addr,
        proto: Proto::Resp2,
        access: Conn::initial_access(&state),
        name: None,
        lib_name: None,
        lib_ver: None,
        since: Instant::now(),
        last: "",
    };
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut ranges: Vec<Range<usize>> = Vec::with_capacity(64);
    let mut commands: Vec<Range<usize>> = Vec::with_capacity(16);
    loop {
        // Every complete command in the buffer, then at most one error.
        ranges.clear();
        commands.clear();
        let mut at = 0;
        let mut failure = None;
        loop {
            let first = ranges.len();
            match parse::parse(&input, at, limit, &mut ranges) {
                Ok(Parsed::Command { len }) => {
                    at += len;
                    if ranges.len() > first {
                        commands.push(first..ranges.len());
                    }
                }
                Ok(Parsed::Incomplete) => {
                    if input.len() - at > limit + COMMAND_SLACK {
                        failure = Some(ProtocolError::TooBig);
                    }
                    break;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut flow = Flow::Continue;
        let mut ctx = Ctx {
            state: &state,
            shared: &shared,
            conn: &mut conn,
            out: &mut out,
        };
        let mut i = 0;
        while i < commands.len() && flow == Flow::Continue {
            let args = Args::new(&input, &ranges[commands[i].clone()]);
            // A run of plain GETs: one batched read.
            let run = commands[i..]
                .iter()
                .take_while(|c| is_plain_get(Args::new(&input, &ranges[(*c).clone()]), ctx.conn))
                .count();
            if run > 1 {
                let keys: Vec<&[u8]> = commands[i..i + run]
                    .iter()
                    .map(|c| Args::new(&input, &ranges[c.clone()]).get(1))
                    .collect();
                rows::get_batch(&mut ctx, &keys).await;
                i += run;
                continue;
            }
            flow = cmd::execute(&mut ctx, args).await;
            i += 1;
        }
        input.advance(at);
        if flow == Flow::Continue {
            if let Some(e) = &failure {
                reply::error(&mut out, &format!("ERR Protocol error: {e}"));
                flow = Flow::Close;
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if flow == Flow::Close {
            let _ = stream.shutdown().await;
            return;
        }
        if *shutdown.borrow() {
            return;
        }
        // Keep the buffer from growing without bound across reads.
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
        let read = tokio::select! {
            r = read_idle(&mut stream, &mut input, idle) => r,
            _ = shutdown.changed() => return,
        };
        match read {
            Some(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// One read, or `None` after `idle` without bytes (`0`: no limit).
async fn read_idle(stream: &mut TcpStream, input: &mut BytesMut, idle: Duration) -> Option<usize> {
    if idle.is_zero() {
        return stream.read_buf(input).await.ok();
    }
    match tokio::time::timeout(idle, stream.read_buf(input)).await {
        Ok(r) => r.ok(),
        Err(_) => None,
    }
}

/// `GET key` that this connection may run: such runs are batched.
fn is_plain_get(args: Args<'_>, conn: &Conn) -> bool {
    args.len() == 2
        && args.get(0).eq_ignore_ascii_case(b"get")
        && cmd::lookup(b"get").is_some_and(|i| {
            let spec = &cmd::TABLE[i];
            spec.kind == Kind::Get && cmd::may(conn, spec)
        })
}
