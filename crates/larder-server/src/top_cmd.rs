//! `larder top --url http://… [--token T]`: a live view of a running
//! service, redrawn each second: per entity reads/s, hit ratio, p99 load
//! time and write-back backlog; Redis memory and evictions; on a Redis
//! Cluster, a table of its nodes and the slot coverage.
//!
//! Why no TUI crate: the view is one table redrawn in place, which plain
//! ANSI (clear screen, cursor home) does; rates are differences of the
//! counters of two successive `/v1/stats` documents, so the service keeps
//! no per-client state. `--iterations N` (or `--once`) stops after N
//! frames, for scripts and tests; Ctrl-C stops it at any time.

use anyhow::{bail, Result};
use larder_server::client;
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// Options of `larder top`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    /// The service's base URL.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    url: String,
    /// The bearer token, if the service needs one.
    #[arg(long, env = "LARDER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds between frames.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many frames (default: until Ctrl-C).
    #[arg(long)]
    iterations: Option<u64>,
    /// One frame, then exit (same as `--iterations 1`).
    #[arg(long)]
    once: bool,
}

/// ANSI: clear the screen and put the cursor home.
const CLEAR: &str = "\x1b[2J\x1b[H";

pub(crate) async fn run(args: TopArgs) -> Result<()> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        bail!("--interval must be a positive number of seconds");
    }
    let url = format!("{}/v1/stats", args.url.trim_end_matches('/'));
    let auth = args.token.as_ref().map(|t| format!("Bearer {t}"));
    let frames = if args.once { Some(1) } else { args.iterations };
    let clear = std::io::stdout().is_terminal();
    let mut previous: Option<(Value, Instant)> = None;
    let mut drawn = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let doc = fetch(&url, auth.as_deref()).await?;
        let now = Instant::now();
        let frame = render(
            &doc,
            previous
                .as_ref()
                .map(|(d, at)| (d, now.duration_since(*at))),
            &args.url,
        );
        let mut out = std::io::stdout().lock();
        if clear {
            out.write_all(CLEAR.as_bytes())?;
        }
        out.write_all(frame.as_bytes())?;
        out.flush()?;
        drop(out);
        previous = Some((doc, now));
        drawn += 1;
        if frames.is_some_and(|n| drawn >= n) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(args.interval)) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

async fn fetch(url: &str, auth: Option<&str>) -> Result<Value> {
    let headers: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
    let res = client::request("GET", url, &headers, None, Duration::from_secs(5)).await?;
    let body = res.json().unwrap_or(Value::Null);
    if res.status != 200 {
        let message = body["error"]["message"].as_str().unwrap_or("no details");
        bail!("{url} answered {}: {message}", res.status);
    }
    Ok(body)
}

/// One frame: `before` is the previous document and the time since it.
fn render(doc: &Value, before: Option<(&Value, Duration)>, url: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "larder top — {url} — store {} — up {}s",
        doc["store"].as_str().unwrap_or("?"),
        doc["uptime_s"].as_u64().unwrap_or(0)
    );
    let mut rows = vec![[
        "entity", "reads/s", "hit%", "p50 ms", "p99 ms", "loads/s", "errors", "backlog", "lag ms",
    ]
    .map(String::from)
    .to_vec()];
    let empty = serde_json::Map::new();
    let entities = doc["entities"].as_object().unwrap_or(&empty);
    for (name, e) in entities {
        let rate = |field: &str| match before {
            Some((prev, took)) if took.as_secs_f64() > 0.0 => {
                let now = e[field].as_u64().unwrap_or(0);
                let was = prev["entities"][name][field].as_u64().unwrap_or(0);
                format!("{:.1}", now.saturating_sub(was) as f64 / took.as_secs_f64())
            }
            _ => "-".into(),
        };
        let num = |v: &Value| v.as_f64().map_or("-".into(), |m| format!("{m:.2}"));
        let wb = &e["write_back"];
        rows.push(vec![
            name.clone(),
            rate("reads_total"),
            format!("{:.1}", e["hit_ratio"].as_f64().unwrap_or(0.0) * 100.0),
            num(&e["load_ms_p50"]),
            num(&e["load_ms_p99"]),
            rate("loads"),
            e["load_errors"].as_u64().unwrap_or(0).to_string(),
            wb["backlog"].as_u64().map_or("-".into(), |b| b.to_string()),
            wb["lag_ms"].as_u64().map_or("-".into(), |b| b.to_string()),
        ]);
    }
    out.push_str(&crate::stats_cmd::table(&rows));
    out.push_str(&sets_table(doc, before));
    let redis = &doc["redis"];
    if redis.is_object() {
        let (used, max) = crate::stats_cmd::memory(redis);
        let evicted = redis["evicted_keys"].as_u64().unwrap_or(0);
        let evicted_rate = match before {
            Some((prev, took)) if took.as_secs_f64() > 0.0 => {
                let was = prev["redis"]["evicted_keys"].as_u64().unwrap_or(evicted);
                format!(
                    " ({:.1}/s)",
                    evicted.saturating_sub(was) as f64 / took.as_secs_f64()
                )
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "\nredis: used {used} of {max} ({}), evicted keys {evicted}{evicted_rate}, clients {}",
            redis["maxmemory_policy"].as_str().unwrap_or("?"),
            redis["connected_clients"].as_u64().unwrap_or(0)
        );
    } else {
        out.push_str("\nno Redis figures\n");
    }
    out.push_str(&nodes_table(doc));
    let resp = &doc["resp"];
    let commands: u64 = resp["commands"]
        .as_object()
        .map_or(0, |c| c.values().filter_map(Value::as_u64).sum());
    if resp["connections_total"].as_u64().unwrap_or(0) > 0 {
        let was: u64 = before
            .and_then(|(prev, _)| prev["resp"]["commands"].as_object())
            .map_or(commands, |c| c.values().filter_map(Value::as_u64).sum());
        let rate = match before {
            Some((_, took)) if took.as_secs_f64() > 0.0 => format!(
                " ({:.1}/s)",
                commands.saturating_sub(was) as f64 / took.as_secs_f64()
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "resp: {} connections, {commands} commands{rate}",
            resp["connections"].as_i64().unwrap_or(0)
        );
        let by_name = busiest_commands(
            &resp["commands"],
            before.map(|(prev, took)| (&prev["resp"]["commands"], took)),
        );
        if !by_name.is_empty() {
            let _ = writeln!(out, "  by command: {by_name}");
        }
    }
    out
}

/// The sets, feeds and leaderboards of `/v1/stats` (`sets`, `feeds`,
/// `leaderboards`), one row each: reads/s, hit%, the
/// share answered from the database (owners above `max_members`),
/// loads/s, the last loaded size, the write mode and a write-back
/// board's backlog (owners with pending writes). Empty without sets.
fn sets_table(doc: &Value, before: Option<(&Value, Duration)>) -> String {
    let empty = serde_json::Map::new();
    let mut rows = vec![[
        "set/feed/board",
        "reads/s",
        "hit%",
        "db%",
        "loads/s",
        "size",
        "write",
        "backlog",
    ]
    .map(String::from)
    .to_vec()];
    let listed = ["sets", "feeds", "leaderboards"]
        .into_iter()
        .flat_map(|kind| {
            doc[kind]
                .as_object()
                .unwrap_or(&empty)
                .iter()
                .map(move |(n, s)| (kind, n, s))
        });
    for (kind, name, s) in listed {
        let rate = |field: &str| match before {
            Some((prev, took)) if took.as_secs_f64() > 0.0 => {
                let now = s[field].as_u64().unwrap_or(0);
                let was = prev[kind][name][field].as_u64().unwrap_or(0);
                format!("{:.1}", now.saturating_sub(was) as f64 / took.as_secs_f64())
            }
            _ => "-".into(),
        };
        let total = s["reads_total"].as_u64().unwrap_or(0);
        let db = s["reads"]["db"].as_u64().unwrap_or(0);
        let db_share = if total == 0 {
            0.0
        } else {
            db as f64 * 100.0 / total as f64
        };
        rows.push(vec![
            name.clone(),
            rate("reads_total"),
            format!("{:.1}", s["hit_ratio"].as_f64().unwrap_or(0.0) * 100.0),
            format!("{db_share:.1}"),
            rate("loads"),
            s["last_size"].as_u64().unwrap_or(0).to_string(),
            s["write"].as_str().unwrap_or("?").to_owned(),
            s["write_back"]["backlog"]
                .as_u64()
                .map_or("-".into(), |b| b.to_string()),
        ]);
    }
    if rows.len() == 1 {
        return String::new();
    }
    format!("\n{}", crate::stats_cmd::table(&rows))
}

/// A Redis Cluster's nodes (`/v1/stats`' `nodes`), one row each, and the
/// slot coverage; empty off a cluster.
fn nodes_table(doc: &Value) -> String {
    let mut out = String::new();
    if let Some(nodes) = doc["nodes"].as_array().filter(|n| !n.is_empty()) {
        let mut rows = vec![["node", "role", "master", "used", "evicted", "keys"]
            .map(String::from)
            .to_vec()];
        let figure = |v: &Value| v.as_u64().map_or("-".into(), |n| n.to_string());
        for n in nodes {
            rows.push(vec![
                n["address"].as_str().unwrap_or("?").to_owned(),
                n["role"].as_str().unwrap_or("?").to_owned(),
                n["master"].as_str().unwrap_or("-").to_owned(),
                n["used_memory"]
                    .as_u64()
                    .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1_048_576.0)),
                figure(&n["evicted_keys"]),
                figure(&n["keys"]),
            ]);
        }
        out.push('\n');
        out.push_str(&crate::stats_cmd::table(&rows));
    }
    let slots = &doc["slots"];
    if slots.is_object() {
        let _ = writeln!(
            out,
            "slots: {} ok, {} assigned of {} (cluster_state {})",
            slots["ok"].as_u64().unwrap_or(0),
            slots["assigned"].as_u64().unwrap_or(0),
            slots["total"].as_u64().unwrap_or(16384),
            slots["state"].as_str().unwrap_or("?")
        );
    }
    out
}

/// How many RESP commands to list by name.
const TOP_COMMANDS: usize = 6;

/// The busiest commands by count, `get 30 (10.0/s), ping 2 (1.0/s)`, with
/// each one's rate since `before` (the previous snapshot and how long ago).
fn busiest_commands(now: &Value, before: Option<(&Value, Duration)>) -> String {
    let Some(counts) = now.as_object() else {
        return String::new();
    };
    let mut named: Vec<(&str, u64)> = counts
        .iter()
        .filter_map(|(name, n)| Some((name.as_str(), n.as_u64()?)))
        .filter(|(_, n)| *n > 0)
        .collect();
    named.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    named
        .iter()
        .take(TOP_COMMANDS)
        .map(|(name, n)| match before {
            Some((prev, took)) if took.as_secs_f64() > 0.0 => {
                let was = prev[*name].as_u64().unwrap_or(0);
                format!(
                    "{name} {n} ({:.1}/s)",
                    n.saturating_sub(was) as f64 / took.as_secs_f64()
                )
            }
            _ => format!("{name} {n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rates_are_differences_over_time() {
        let before = json!({ "entities": { "users": { "reads_total": 100, "loads": 10 } }, "redis": { "evicted_keys": 5 } });
        let now = json!({
            "store": "redis://x", "uptime_s": 9,
            "entities": { "users": { "reads_total": 300, "loads": 20, "hit_ratio": 0.95, "load_ms_p99": 4.0, "write_back": { "backlog": 7, "lag_ms": 120 } } },
            "redis": { "used_memory": 1_048_576, "maxmemory": 0, "maxmemory_policy": "noeviction", "evicted_keys": 9 }
        });
        let text = render(&now, Some((&before, Duration::from_secs(2))), "http://x");
        let row = text
            .lines()
            .find(|l| l.starts_with("users"))
            .expect("a row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["users", "100.0", "95.0", "-", "4.00", "5.0", "0", "7", "120"]
        );
        assert!(text.contains("evicted keys 9 (2.0/s)"), "{text}");
        assert!(text.contains("used 1.0 MiB of no limit"), "{text}");
        let first = render(&now, None, "http://x");
        assert!(first.contains("users"), "{first}");
    }

    #[test]
    fn sets_are_listed_with_their_rates() {
        let before = json!({ "sets": { "followers": { "reads_total": 10, "loads": 1 } } });
        let now = json!({
            "store": "redis://x", "uptime_s": 9, "entities": {},
            "sets": { "followers": { "reads_total": 30, "loads": 3, "hit_ratio": 0.5,
                "reads": { "hit": 15, "miss": 3, "db": 12, "bypass": 0 }, "last_size": 42, "write": "through" } }
        });
        let text = render(&now, Some((&before, Duration::from_secs(2))), "http://x");
        let row = text
            .lines()
            .find(|l| l.starts_with("followers"))
            .expect("a set row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "followers",
                "10.0",
                "50.0",
                "40.0",
                "1.0",
                "42",
                "through",
                "-"
            ]
        );
        let none = render(&json!({ "entities": {} }), None, "http://x");
        assert!(!none.contains("set/feed"), "{none}");
        let feeds = render(
            &json!({ "entities": {}, "feeds": { "posts": { "reads_total": 1, "last_size": 3, "write": "through" } } }),
            None,
            "http://x",
        );
        assert!(feeds.lines().any(|l| l.starts_with("posts")), "{feeds}");
        let boards = render(
            &json!({ "entities": {}, "leaderboards": { "scores": { "reads_total": 1, "last_size": 7, "write": "back", "write_back": { "backlog": 12 } } } }),
            None,
            "http://x",
        );
        let row = boards
            .lines()
            .find(|l| l.starts_with("scores"))
            .unwrap_or_else(|| panic!("{boards}"));
        assert!(
            row.split_whitespace().rev().take(2).eq(["12", "back"]),
            "{row}"
        );
    }

    #[test]
    fn cluster_nodes_are_a_table_with_the_slot_coverage() {
        let doc = json!({
            "entities": {},
            "nodes": [
                { "address": "h:7000", "role": "master", "master": null, "used_memory": 2_097_152, "evicted_keys": 3, "keys": 10 },
                { "address": "h:7003", "role": "replica", "master": "h:7000", "used_memory": 1_048_576, "evicted_keys": 0, "keys": 10 }
            ],
            "slots": { "state": "ok", "assigned": 16384, "ok": 16384, "pfail": 0, "fail": 0, "total": 16384 }
        });
        let text = render(&doc, None, "http://x");
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name}: {text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("h:7000"),
            ["h:7000", "master", "-", "2.0", "MiB", "3", "10"]
        );
        assert_eq!(
            row("h:7003"),
            ["h:7003", "replica", "h:7000", "1.0", "MiB", "0", "10"]
        );
        assert!(
            text.contains("slots: 16384 ok, 16384 assigned of 16384 (cluster_state ok)"),
            "{text}"
        );
        let alone = render(
            &json!({ "entities": {}, "nodes": [], "slots": null }),
            None,
            "http://x",
        );
        assert!(
            !alone.contains("role") && !alone.contains("slots:"),
            "{alone}"
        );
    }

    #[test]
    fn the_resp_line_shows_connections_and_the_command_rate() {
        let before = json!({ "resp": { "connections_total": 1, "commands": { "get": 10 } } });
        let now = json!({ "resp": { "connections": 3, "connections_total": 4, "commands": { "get": 30, "ping": 2 } } });
        let text = render(&now, Some((&before, Duration::from_secs(2))), "http://x");
        assert!(
            text.contains("resp: 3 connections, 32 commands (11.0/s)"),
            "{text}"
        );
        assert!(
            text.contains("  by command: get 30 (10.0/s), ping 2 (1.0/s)"),
            "{text}"
        );
        let quiet = render(
            &json!({ "resp": { "connections_total": 0 } }),
            None,
            "http://x",
        );
        assert!(!quiet.contains("resp:"), "{quiet}");
    }
}
