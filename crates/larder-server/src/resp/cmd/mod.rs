//! The command table and the dispatcher.
//!
//! Why a table: arity, the auth class and the metric label of every
//! command live in one row, so the dispatcher checks them the same way for
//! all, `COMMAND` lists exactly what is served, and a new family (feeds,
//! sets, leaderboards) is a few rows and one file. Names are matched
//! case-insensitively without allocating.
//!
//! - [`connection`]: `PING`, `ECHO`, `HELLO`, `AUTH`, `SELECT`, `QUIT`,
//!   `RESET`, `CLIENT …`;
//! - [`info`]: `INFO`, `COMMAND …`, `CONFIG GET`;
//! - [`rows`]: the row commands (`GET`, `MGET`, `HGETALL`, `SET`, `DEL`, …).

pub mod connection;
pub mod info;
pub mod rows;

use super::conn::{Access, Conn};
use super::reply;
use super::Shared;
use crate::serve::AppState;
use bytes::BytesMut;
use std::ops::Range;

/// What a command is, for the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET key`.
    Get,
    /// `MGET key…`.
    Mget,
    /// `EXISTS key…`.
    Exists,
    /// `TTL key`.
    Ttl,
    /// `PTTL key`.
    Pttl,
    /// `HGET key field`.
    Hget,
    /// `HMGET key field…`.
    Hmget,
    /// `HGETALL key`.
    Hgetall,
    /// `DEL key…` / `UNLINK key…`.
    Del,
    /// `SET key value`.
    Set,
    /// `HSET key field value…`.
    Hset,
    /// `PING [message]`.
    Ping,
    /// `ECHO message`.
    Echo,
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    Hello,
    /// `AUTH [user] pass`.
    Auth,
    /// `SELECT db`.
    Select,
    /// `QUIT`.
    Quit,
    /// `RESET`.
    Reset,
    /// `CLIENT subcommand …`.
    Client,
    /// `COMMAND [subcommand …]`.
    Command,
    /// `INFO [section…]`.
    Info,
    /// `CONFIG GET pattern…`.
    Config,
    /// A collection command (feeds, sets, leaderboards): answered by the
    /// collection's module once that collection exists; until then the key
    /// names no collection.
    Collection,
    /// A Redis command larder does not serve: a clear error, nothing changed.
    Unsupported,
}

/// Whether a command needs a token, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Allowed before `AUTH` (`AUTH`, `HELLO`, `PING`, `QUIT`, …).
    Open,
    /// Needs the read token or the admin token.
    Read,
    /// Needs the admin token.
    Write,
}

/// One row of the command table.
#[derive(Debug)]
pub struct Spec {
    /// The name, lower case, as Redis' errors and `COMMAND` spell it.
    pub name: &'static str,
    /// Redis' arity: `n` exactly `n` words (name included), `-n` at least `n`.
    pub arity: i32,
    /// What it does.
    pub kind: Kind,
    /// Who may run it.
    pub class: Class,
    /// Its `COMMAND` flags.
    pub flags: &'static [&'static str],
}

const fn spec(
    name: &'static str,
    arity: i32,
    kind: Kind,
    class: Class,
    flags: &'static [&'static str],
) -> Spec {
    Spec {
        name,
        arity,
        kind,
        class,
        flags,
    }
}

const R: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write"];
const C: &[&str] = &["fast", "no-auth"];

/// Every command served (the most frequent first: lookup is a scan).
pub static TABLE: &[Spec] = &[
    spec("get", 2, Kind::Get, Class::Read, R),
    spec("mget", -2, Kind::Mget, Class::Read, R),
    spec("hgetall", 2, Kind::Hgetall, Class::Read, R),
    spec("hget", 3, Kind::Hget, Class::Read, R),
    spec("hmget", -3, Kind::Hmget, Class::Read, R),
    spec("exists", -2, Kind::Exists, Class::Read, R),
    spec("ttl", 2, Kind::Ttl, Class::Read, R),
    spec("pttl", 2, Kind::Pttl, Class::Read, R),
    spec("set", -3, Kind::Set, Class::Write, W),
    spec("hset", -4, Kind::Hset, Class::Write, W),
    spec("del", -2, Kind::Del, Class::Write, W),
    spec("unlink", -2, Kind::Del, Class::Write, W),
    spec("ping", -1, Kind::Ping, Class::Open, C),
    spec("echo", 2, Kind::Echo, Class::Read, &["fast"]),
    spec("hello", -1, Kind::Hello, Class::Open, C),
    spec("auth", -2, Kind::Auth, Class::Open, C),
    spec("select", 2, Kind::Select, Class::Read, &["fast"]),
    spec("quit", -1, Kind::Quit, Class::Open, C),
    spec("reset", 1, Kind::Reset, Class::Open, C),
    spec("client", -2, Kind::Client, Class::Read, &[]),
    spec("command", -1, Kind::Command, Class::Read, &[]),
    spec("info", -1, Kind::Info, Class::Read, &[]),
    spec("config", -2, Kind::Config, Class::Read, &[]),
    // Collections: feeds (lists), sets and leaderboards (sorted sets).
    spec("lrange", 4, Kind::Collection, Class::Read, R),
    spec("sismember", 3, Kind::Collection, Class::Read, R),
    spec("scard", 2, Kind::Collection, Class::Read, R),
    spec("sscan", -3, Kind::Collection, Class::Read, R),
    spec("sadd", -3, Kind::Collection, Class::Write, W),
    spec("srem", -3, Kind::Collection, Class::Write, W),
    spec("zrevrange", -4, Kind::Collection, Class::Read, R),
    spec("zscore", 3, Kind::Collection, Class::Read, R),
    spec("zrevrank", -3, Kind::Collection, Class::Read, R),
    spec("zincrby", 4, Kind::Collection, Class::Write, W),
    // Redis commands with no meaning over database rows.
    spec("multi", -1, Kind::Unsupported, Class::Read, &[]),
    spec("exec", -1, Kind::Unsupported, Class::Read, &[]),
    spec("discard", -1, Kind::Unsupported, Class::Read, &[]),
    spec("watch", -1, Kind::Unsupported, Class::Read, &[]),
    spec("subscribe", -1, Kind::Unsupported, Class::Read, &[]),
    spec("psubscribe", -1, Kind::Unsupported, Class::Read, &[]),
    spec("ssubscribe", -1, Kind::Unsupported, Class::Read, &[]),
    spec("publish", -1, Kind::Unsupported, Class::Read, &[]),
    spec("keys", -1, Kind::Unsupported, Class::Read, &[]),
    spec("scan", -1, Kind::Unsupported, Class::Read, &[]),
    spec("flushdb", -1, Kind::Unsupported, Class::Read, &[]),
    spec("flushall", -1, Kind::Unsupported, Class::Read, &[]),
    spec("expire", -1, Kind::Unsupported, Class::Read, &[]),
    spec("pexpire", -1, Kind::Unsupported, Class::Read, &[]),
    spec("persist", -1, Kind::Unsupported, Class::Read, &[]),
    spec("incr", -1, Kind::Unsupported, Class::Read, &[]),
    spec("incrby", -1, Kind::Unsupported, Class::Read, &[]),
    spec("decr", -1, Kind::Unsupported, Class::Read, &[]),
    spec("append", -1, Kind::Unsupported, Class::Read, &[]),
    spec("setex", -1, Kind::Unsupported, Class::Read, &[]),
    spec("psetex", -1, Kind::Unsupported, Class::Read, &[]),
    spec("setnx", -1, Kind::Unsupported, Class::Read, &[]),
    spec("getset", -1, Kind::Unsupported, Class::Read, &[]),
    spec("getdel", -1, Kind::Unsupported, Class::Read, &[]),
    spec("mset", -1, Kind::Unsupported, Class::Read, &[]),
    spec("rename", -1, Kind::Unsupported, Class::Read, &[]),
    spec("eval", -1, Kind::Unsupported, Class::Read, &[]),
    spec("evalsha", -1, Kind::Unsupported, Class::Read, &[]),
    spec("script", -1, Kind::Unsupported, Class::Read, &[]),
    spec("dbsize", -1, Kind::Unsupported, Class::Read, &[]),
    spec("shutdown", -1, Kind::Unsupported, Class::Read, &[]),
    spec("save", -1, Kind::Unsupported, Class::Read, &[]),
    spec("bgsave", -1, Kind::Unsupported, Class::Read, &[]),
    spec("monitor", -1, Kind::Unsupported, Class::Read, &[]),
];

/// The index in [`TABLE`] of the command called `name` (any case).
pub fn lookup(name: &[u8]) -> Option<usize> {
    TABLE
        .iter()
        .position(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// A command's words: ranges into the read buffer, read without copying.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    buf: &'a [u8],
    ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    /// The words of `ranges` in `buf`.
    pub fn new(buf: &'a [u8], ranges: &'a [Range<usize>]) -> Self {
        Self { buf, ranges }
    }

    /// How many words (the name included).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Word `i` (0 is the name).
    pub fn get(&self, i: usize) -> &'a [u8] {
        &self.buf[self.ranges[i].clone()]
    }

    /// Words `from..`.
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        self.ranges[from.min(self.ranges.len())..]
            .iter()
            .map(move |r| &buf[r.clone()])
    }

    /// Word `i` as text (lossy), for messages.
    pub fn text(&self, i: usize) -> String {
        String::from_utf8_lossy(self.get(i)).into_owned()
    }
}

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Send what was written, then close (`QUIT`).
    Close,
}

/// What a command runs with.
pub struct Ctx<'a> {
    /// The service.
    pub state: &'a AppState,
    /// The listener's shared counters.
    pub shared: &'a Shared,
    /// This connection.
    pub conn: &'a mut Conn,
    /// Where replies go.
    pub out: &'a mut BytesMut,
}

/// `ERR unknown command …`, exactly as Redis words it.
pub fn unknown_command(out: &mut BytesMut, args: Args<'_>) {
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        clip(&args.text(0), 128)
    );
    for i in 1..args.len() {
        msg.push('\'');
        msg.push_str(&clip(&args.text(i), 128));
        msg.push_str("' ");
    }
    reply::error(out, &msg);
}

/// `ERR wrong number of arguments for '…' command`.
pub fn wrong_arity(out: &mut BytesMut, name: &str) {
    reply::error(
        out,
        &format!("ERR wrong number of arguments for '{name}' command"),
    );
}

/// At most `n` characters of `s`.
pub fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Whether this connection may run `spec` now: the one place where tokens
/// meet commands. Before `AUTH` only [`Class::Open`] commands; a read-only
/// token allows [`Class::Open`] and [`Class::Read`].
pub fn may(conn: &Conn, spec: &Spec) -> bool {
    matches!(
        (conn.access, spec.class),
        (_, Class::Open) | (Access::Full, _) | (Access::Read, Class::Read)
    )
}

/// Runs one command (`args` is not empty): checks the name, the arity and
/// the connection's access, counts it, then dispatches.
pub async fn execute(ctx: &mut Ctx<'_>, args: Args<'_>) -> Flow {
    let Some(index) = lookup(args.get(0)) else {
        ctx.shared.count_unknown();
        unknown_command(ctx.out, args);
        return Flow::Continue;
    };
    let spec = &TABLE[index];
    ctx.shared.count(index);
    if !arity_ok(spec.arity, args.len()) {
        wrong_arity(ctx.out, spec.name);
        return Flow::Continue;
    }
    if !may(ctx.conn, spec) {
        refuse(ctx.out, ctx.conn, spec);
        return Flow::Continue;
    }
    ctx.conn.last = spec.name;
    match spec.kind {
        Kind::Get => rows::get(ctx, args.get(1)).await,
        Kind::Mget => rows::mget(ctx, args).await,
        Kind::Exists => rows::exists(ctx, args).await,
        Kind::Ttl => rows::ttl(ctx, args.get(1), false).await,
        Kind::Pttl => rows::ttl(ctx, args.get(1), true).await,
        Kind::Hget => rows::hget(ctx, args).await,
        Kind::Hmget => rows::hmget(ctx, args).await,
        Kind::Hgetall => rows::hgetall(ctx, args.get(1)).await,
        Kind::Del => rows::del(ctx, args).await,
        Kind::Set => rows::set(ctx, args).await,
        Kind::Hset => rows::hset(ctx, args).await,
        Kind::Collection => rows::collection(ctx, spec, args),
        Kind::Unsupported => unsupported(ctx.out, spec),
        Kind::Ping => connection::ping(ctx, args),
        Kind::Echo => reply::bulk(ctx.out, args.get(1)),
        Kind::Hello => connection::hello(ctx, args),
        Kind::Auth => connection::auth(ctx, args),
        Kind::Select => connection::select(ctx, args),
        Kind::Quit => {
            reply::ok(ctx.out);
            return Flow::Close;
        }
        Kind::Reset => connection::reset(ctx),
        Kind::Client => connection::client(ctx, args),
        Kind::Command => info::command(ctx, args),
        Kind::Info => info::info(ctx, args),
        Kind::Config => info::config(ctx, args),
    }
    Flow::Continue
}

/// Whether `n` words fit Redis' `arity`.
pub fn arity_ok(arity: i32, n: usize) -> bool {
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    if arity >= 0 {
        n == arity
    } else {
        n >= -arity
    }
}

fn refuse(out: &mut BytesMut, conn: &Conn, spec: &Spec) {
    match conn.access {
        Access::None => reply::error(out, "NOAUTH Authentication required."),
        _ => reply::error(
            out,
            &format!(
                "NOPERM User default has no permissions to run the '{}' command (the read-only token allows reads only)",
                spec.name
            ),
        ),
    }
}

fn unsupported(out: &mut BytesMut, spec: &Spec) {
    reply::error(
        out,
        &format!(
            "ERR '{}' is not supported by larder: it serves database rows as <entity>:<id> keys (GET, MGET, HGETALL, SET, DEL, ...); nothing was changed",
            spec.name
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_lower_case() {
        for (i, s) in TABLE.iter().enumerate() {
            assert_eq!(s.name, s.name.to_ascii_lowercase());
            assert_eq!(lookup(s.name.as_bytes()), Some(i), "{}", s.name);
            assert_eq!(lookup(s.name.to_ascii_uppercase().as_bytes()), Some(i));
        }
    }

    #[test]
    fn arity_follows_redis() {
        assert!(arity_ok(2, 2) && !arity_ok(2, 3) && !arity_ok(2, 1));
        assert!(arity_ok(-2, 2) && arity_ok(-2, 9) && !arity_ok(-2, 1));
    }
}
