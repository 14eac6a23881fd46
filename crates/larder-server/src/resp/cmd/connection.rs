//! Connection commands: `PING`, `HELLO`, `AUTH`, `SELECT`, `RESET`, `CLIENT …`.
//!
//! Their replies and errors are Redis' own, so that client libraries'
//! handshakes (redis-py, redis-rs, ioredis) pass unchanged.

use super::{Args, Ctx};
use crate::resp::conn::{Access, Conn};
use crate::resp::reply::{self, Proto};

/// The version larder answers to `HELLO` and `INFO` (the Redis command set
/// it follows).
pub const REDIS_VERSION: &str = "7.0.0";

/// `PING [message]`.
pub fn ping(ctx: &mut Ctx<'_>, args: Args<'_>) {
    match args.len() {
        1 => reply::simple(ctx.out, "PONG"),
        2 => reply::bulk(ctx.out, args.get(1)),
        _ => super::wrong_arity(ctx.out, "ping"),
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `user`/`pass` against the tokens; the access they give.
fn check(ctx: &Ctx<'_>, user: Option<&[u8]>, pass: &[u8]) -> Result<Access, &'static str> {
    let admin = ctx.state.token();
    let read = ctx.state.read_token();
    if admin.is_none() && read.is_none() {
        return Err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
    }
    const WRONG: &str = "WRONGPASS invalid username-password pair or user is disabled.";
    if user.is_some_and(|u| u != b"default") {
        return Err(WRONG);
    }
    if admin.is_some_and(|t| same(t.as_bytes(), pass)) {
        return Ok(Access::Full);
    }
    if read.is_some_and(|t| same(t.as_bytes(), pass)) {
        return Ok(Access::Read);
    }
    Err(WRONG)
}

/// `AUTH <token>` or `AUTH default <token>`.
pub fn auth(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let (user, pass) = match args.len() {
        2 => (None, args.get(1)),
        3 => (Some(args.get(1)), args.get(2)),
        _ => return reply::error(ctx.out, "ERR syntax error"),
    };
    match check(ctx, user, pass) {
        Ok(access) => {
            ctx.conn.access = access;
            reply::ok(ctx.out);
        }
        Err(line) => reply::error(ctx.out, line),
    }
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switches protocol
/// and answers the server's facts as a map.
pub fn hello(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let mut proto = ctx.conn.proto;
    let mut i = 1;
    if args.len() > 1 {
        proto = match args.get(1) {
            b"2" => Proto::Resp2,
            b"3" => Proto::Resp3,
            v if v.iter().all(u8::is_ascii_digit) && !v.is_empty() => {
                return reply::error(ctx.out, "NOPROTO unsupported protocol version")
            }
            _ => {
                return reply::error(
                    ctx.out,
                    "ERR Protocol version is not an integer or out of range",
                )
            }
        };
        i = 2;
    }
    let mut access = None;
    let mut name = None;
    while i < args.len() {
        let word = args.get(i);
        if word.eq_ignore_ascii_case(b"auth") && i + 2 < args.len() {
            match check(ctx, Some(args.get(i + 1)), args.get(i + 2)) {
                Ok(a) => access = Some(a),
                Err(line) => return reply::error(ctx.out, line),
            }
            i += 3;
        } else if word.eq_ignore_ascii_case(b"setname") && i + 1 < args.len() {
            name = Some(args.text(i + 1));
            i += 2;
        } else {
            return reply::error(
                ctx.out,
                &format!("ERR Syntax error in HELLO option '{}'", args.text(i)),
            );
        }
    }
    if let Some(a) = access {
        ctx.conn.access = a;
    }
    if ctx.conn.access == Access::None {
        return reply::error(ctx.out, "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    if let Some(n) = name {
        ctx.conn.name = Some(n);
    }
    ctx.conn.proto = proto;
    let out = &mut *ctx.out;
    reply::map(out, proto, 7);
    reply::bulk(out, b"server");
    reply::bulk(out, b"redis");
    reply::bulk(out, b"version");
    reply::bulk(out, REDIS_VERSION.as_bytes());
    reply::bulk(out, b"proto");
    reply::int(out, if proto == Proto::Resp3 { 3 } else { 2 });
    reply::bulk(out, b"id");
    reply::int(out, i64::try_from(ctx.conn.id).unwrap_or(i64::MAX));
    reply::bulk(out, b"mode");
    reply::bulk(out, b"standalone");
    reply::bulk(out, b"role");
    reply::bulk(out, b"master");
    reply::bulk(out, b"modules");
    reply::array(out, 0);
}

/// `SELECT 0`: larder has one database.
pub fn select(ctx: &mut Ctx<'_>, args: Args<'_>) {
    match std::str::from_utf8(args.get(1))
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    {
        Some(0) => reply::ok(ctx.out),
        Some(_) => reply::error(ctx.out, "ERR DB index is out of range"),
        None => reply::error(ctx.out, "ERR value is not an integer or out of range"),
    }
}

/// `RESET`: back to RESP2, no name, not authenticated (if a token is set).
pub fn reset(ctx: &mut Ctx<'_>) {
    ctx.conn.proto = Proto::Resp2;
    ctx.conn.name = None;
    ctx.conn.access = Conn::initial_access(ctx.state);
    reply::simple(ctx.out, "RESET");
}

/// The `CLIENT INFO` line of a connection.
pub fn client_line(conn: &Conn) -> String {
    format!(
        "id={} addr={} laddr= fd=0 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
        conn.id,
        conn.addr,
        conn.name.as_deref().unwrap_or(""),
        conn.since.elapsed().as_secs(),
        if conn.proto == Proto::Resp3 { 3 } else { 2 },
        conn.lib_name.as_deref().unwrap_or(""),
        conn.lib_ver.as_deref().unwrap_or(""),
    )
}

/// `CLIENT SETNAME/GETNAME/ID/SETINFO/INFO`.
pub fn client(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let sub = args.get(1).to_ascii_lowercase();
    let arity = |n: usize| args.len() == n;
    let fail = |ctx: &mut Ctx<'_>, sub: &str| super::wrong_arity(ctx.out, &format!("client|{sub}"));
    match sub.as_slice() {
        b"setname" if arity(3) => {
            let name = args.get(2);
            if name.iter().any(|&b| b <= b' ' || b > b'~') {
                return reply::error(
                    ctx.out,
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            ctx.conn.name = (!name.is_empty()).then(|| args.text(2));
            reply::ok(ctx.out);
        }
        b"setname" => fail(ctx, "setname"),
        b"getname" if arity(2) => match &ctx.conn.name {
            Some(n) => reply::bulk(ctx.out, n.as_bytes()),
            None => reply::nil(ctx.out, ctx.conn.proto),
        },
        b"getname" => fail(ctx, "getname"),
        b"id" if arity(2) => reply::int(ctx.out, i64::try_from(ctx.conn.id).unwrap_or(i64::MAX)),
        b"id" => fail(ctx, "id"),
        b"setinfo" if arity(4) => {
            let attr = args.get(2).to_ascii_lowercase();
            let value = args.text(3);
            match attr.as_slice() {
                b"lib-name" => ctx.conn.lib_name = Some(value),
                b"lib-ver" => ctx.conn.lib_ver = Some(value),
                _ => {
                    return reply::error(
                        ctx.out,
                        &format!("ERR Unrecognized option '{}'", args.text(2)),
                    )
                }
            }
            reply::ok(ctx.out);
        }
        b"setinfo" => fail(ctx, "setinfo"),
        b"info" if arity(2) => {
            let line = client_line(ctx.conn);
            reply::verbatim(ctx.out, ctx.conn.proto, &line);
        }
        b"info" => fail(ctx, "info"),
        _ => reply::error(
            ctx.out,
            &format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                super::clip(&args.text(1), 128)
            ),
        ),
    }
}
