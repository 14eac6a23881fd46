//! Introspection: `INFO`, `COMMAND …`, `CONFIG GET`.
//!
//! `INFO` has Redis' sections (server, clients, memory, stats) with the
//! fields monitoring tools read, and a `larder` section with each entity's
//! reads by outcome and hit ratio. `CONFIG GET` answers a few read-only
//! items; nothing can be set.

use super::connection::REDIS_VERSION;
use super::{Args, Ctx, TABLE};
use crate::resp::reply;
use larder::Outcome;
use std::fmt::Write as _;

/// The process' resident memory in bytes (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The text of `INFO` for `sections` (empty: all).
pub fn info_text(ctx: &Ctx<'_>, sections: &[String]) -> String {
    let want = |s: &str| {
        sections.is_empty()
            || sections
                .iter()
                .any(|w| w == s || w == "all" || w == "everything" || w == "default")
    };
    let state = ctx.state;
    let shared = ctx.shared;
    let mut t = String::new();
    if want("server") {
        let addr = state.config().resp.listen.clone().unwrap_or_default();
        let port = addr.rsplit(':').next().unwrap_or("");
        let _ = write!(
            t,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nlarder_version:{}\r\nredis_mode:standalone\r\nos:{}\r\nprocess_id:{}\r\ntcp_port:{port}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            state.uptime().as_secs(),
            state.uptime().as_secs() / 86_400,
        );
    }
    if want("clients") {
        let _ = write!(
            t,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nrejected_connections:{}\r\n\r\n",
            shared.connections(),
            state.config().resp.max_clients,
            shared.rejected(),
        );
    }
    if want("memory") {
        let rss = rss_bytes();
        let _ = write!(
            t,
            "# Memory\r\nused_memory:{rss}\r\nused_memory_rss:{rss}\r\nmaxmemory:0\r\n\r\n"
        );
    }
    let mut hits = 0;
    let mut misses = 0;
    let mut larder = String::new();
    for e in state.entities() {
        let s = e.cache.stats();
        let found = s.reads(Outcome::L1)
            + s.reads(Outcome::Hit)
            + s.reads(Outcome::Stale)
            + s.reads(Outcome::Negative);
        hits += found;
        misses += s.total_reads() - found;
        let _ = write!(larder, "entity_{}:", e.name());
        for o in Outcome::ALL {
            let _ = write!(larder, "{}={},", o.as_str(), s.reads(o));
        }
        let _ = write!(
            larder,
            "reads={},hit_ratio={:.4},write={},resp_writes={}\r\n",
            s.total_reads(),
            s.hit_ratio(),
            e.write.as_str(),
            u8::from(e.config.resp_writes)
        );
    }
    if want("stats") {
        let _ = write!(
            t,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\nkeyspace_hits:{hits}\r\nkeyspace_misses:{misses}\r\n\r\n",
            shared.connections_total(),
            shared.commands_total(),
            shared.rejected(),
        );
    }
    if want("larder") {
        let _ = write!(
            t,
            "# Larder\r\nstore:{}\r\nentities:{}\r\n{larder}\r\n",
            state.store().name(),
            state.entities().len()
        );
    }
    if t.ends_with("\r\n\r\n") {
        t.truncate(t.len() - 2);
    }
    t
}

/// `INFO [section…]`.
pub fn info(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let sections: Vec<String> = args
        .iter_from(1)
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let text = info_text(ctx, &sections);
    reply::verbatim(ctx.out, ctx.conn.proto, &text);
}

fn command_entry(ctx: &mut Ctx<'_>, i: usize) {
    let s = &TABLE[i];
    let keyed = matches!(
        s.kind,
        super::Kind::Get
            | super::Kind::Mget
            | super::Kind::Exists
            | super::Kind::Ttl
            | super::Kind::Pttl
            | super::Kind::Hget
            | super::Kind::Hmget
            | super::Kind::Hgetall
            | super::Kind::Del
            | super::Kind::Set
            | super::Kind::Hset
            | super::Kind::Collection
    );
    let many = s.arity < 0
        && matches!(
            s.kind,
            super::Kind::Mget | super::Kind::Exists | super::Kind::Del
        );
    let out = &mut *ctx.out;
    reply::array(out, 10);
    reply::bulk(out, s.name.as_bytes());
    reply::int(out, i64::from(s.arity));
    reply::array(out, s.flags.len());
    for f in s.flags {
        reply::simple(out, f);
    }
    reply::int(out, i64::from(keyed));
    reply::int(out, if many { -1 } else { i64::from(keyed) });
    reply::int(out, i64::from(keyed));
    reply::array(out, 0); // ACL categories
    reply::array(out, 0); // tips
    reply::array(out, 0); // key specs
    reply::array(out, 0); // subcommands
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name…`, `COMMAND DOCS […]`.
pub fn command(ctx: &mut Ctx<'_>, args: Args<'_>) {
    if args.len() == 1 {
        reply::array(ctx.out, TABLE.len());
        for i in 0..TABLE.len() {
            command_entry(ctx, i);
        }
        return;
    }
    let sub = args.get(1).to_ascii_lowercase();
    match sub.as_slice() {
        b"count" if args.len() == 2 => reply::int(ctx.out, TABLE.len() as i64),
        b"info" => {
            let names: Vec<&[u8]> = args.iter_from(2).collect();
            reply::array(ctx.out, names.len());
            for name in names {
                match super::lookup(name) {
                    Some(i) => command_entry(ctx, i),
                    None => reply::nil(ctx.out, ctx.conn.proto),
                }
            }
        }
        // No documentation is served: clients that ask get an empty map.
        b"docs" => reply::map(ctx.out, ctx.conn.proto, 0),
        b"count" => super::wrong_arity(ctx.out, "command|count"),
        _ => reply::error(
            ctx.out,
            &format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                super::clip(&args.text(1), 128)
            ),
        ),
    }
}

/// Whether `name` matches a `CONFIG GET` glob (`*` and `?` only).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            glob(rest, name) || (!name.is_empty() && glob(pattern, &name[1..]))
        }
        (Some((b'?', rest)), Some((_, n))) => glob(rest, n),
        (Some((p, rest)), Some((c, n))) if p.eq_ignore_ascii_case(c) => glob(rest, n),
        _ => false,
    }
}

/// `CONFIG GET pattern…`: read-only items; `CONFIG SET` and the rest are refused.
pub fn config(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let sub = args.get(1).to_ascii_lowercase();
    if sub.as_slice() != b"get" {
        return reply::error(
            ctx.out,
            &format!(
                "ERR CONFIG {} is not supported by larder: its settings come from its config file; CONFIG GET reads a few",
                super::clip(&args.text(1).to_ascii_uppercase(), 32)
            ),
        );
    }
    if args.len() < 3 {
        return super::wrong_arity(ctx.out, "config|get");
    }
    let config = ctx.state.config();
    let items: [(&str, String); 6] = [
        ("maxclients", config.resp.max_clients.to_string()),
        ("timeout", config.resp.idle_timeout.0.as_secs().to_string()),
        ("databases", "1".to_owned()),
        ("proto-max-bulk-len", config.body_limit.0.to_string()),
        ("appendonly", "no".to_owned()),
        ("save", String::new()),
    ];
    let hits: Vec<&(&str, String)> = items
        .iter()
        .filter(|(name, _)| args.iter_from(2).any(|p| glob(p, name.as_bytes())))
        .collect();
    reply::map(ctx.out, ctx.conn.proto, hits.len());
    for (name, value) in hits {
        reply::bulk(ctx.out, name.as_bytes());
        reply::bulk(ctx.out, value.as_bytes());
    }
}
