//! `larder stats --url http://… [--token T]`: a running service's
//! `/v1/stats`, printed as a table.

use anyhow::{bail, Result};
use larder_server::client;
use serde_json::Value;
use std::time::Duration;

/// Options of `larder stats`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    /// The service's base URL.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    url: String,
    /// The bearer token, if the service needs one.
    #[arg(long, env = "LARDER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub(crate) async fn run(args: StatsArgs) -> Result<()> {
    let url = format!("{}/v1/stats", args.url.trim_end_matches('/'));
    let auth = args.token.as_ref().map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let res = client::request("GET", &url, &headers, None, Duration::from_secs(10)).await?;
    let body = res.json().unwrap_or(Value::Null);
    if res.status != 200 {
        let message = body["error"]["message"].as_str().unwrap_or("no details");
        let code = body["error"]["code"].as_str().unwrap_or("error");
        bail!("{url} answered {} {code}: {message}", res.status);
    }
    print!("{}", render(&body));
    Ok(())
}

/// Rows as aligned columns: the first left-aligned, the others right-aligned.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Redis' used memory and its limit, readable (`12.3 MiB`, `no limit`).
pub(crate) fn memory(redis: &Value) -> (String, String) {
    let mib = |v: &Value| {
        v.as_u64()
            .map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1_048_576.0))
    };
    let max = match redis["maxmemory"].as_u64() {
        Some(0) => "no limit".to_owned(),
        _ => mib(&redis["maxmemory"]),
    };
    (mib(&redis["used_memory"]), max)
}

/// Milliseconds with two decimals, `-` when absent.
fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |m| format!("{m:.2}"))
}

/// The stats document as a table.
fn render(stats: &Value) -> String {
    let mut out = String::new();
    let cols = [
        "entity", "reads", "l1", "hit", "stale", "negative", "miss", "bypass", "hit%", "loads",
        "errors", "load ms", "p50 ms", "p99 ms", "backlog",
    ];
    let mut rows: Vec<Vec<String>> = vec![cols.iter().map(|c| (*c).to_owned()).collect()];
    if let Some(entities) = stats["entities"].as_object() {
        for (name, e) in entities {
            let r = &e["reads"];
            let n = |v: &Value| v.as_u64().unwrap_or(0).to_string();
            rows.push(vec![
                name.clone(),
                n(&e["reads_total"]),
                n(&r["l1"]),
                n(&r["hit"]),
                n(&r["stale"]),
                n(&r["negative"]),
                n(&r["miss"]),
                n(&r["bypass"]),
                format!("{:.1}", e["hit_ratio"].as_f64().unwrap_or(0.0) * 100.0),
                n(&e["loads"]),
                n(&e["load_errors"]),
                ms(&e["load_ms_mean"]),
                ms(&e["load_ms_p50"]),
                ms(&e["load_ms_p99"]),
                e["write_back"]["backlog"]
                    .as_u64()
                    .map_or("-".into(), |b| b.to_string()),
            ]);
        }
    }
    out.push_str(&table(&rows));
    let redis = &stats["redis"];
    if redis.is_object() {
        let (used, max) = memory(redis);
        out.push_str(&format!(
            "\nredis: used {used}, maxmemory {max}, policy {}, evicted keys {}\n",
            redis["maxmemory_policy"].as_str().unwrap_or("?"),
            redis["evicted_keys"].as_u64().unwrap_or(0)
        ));
    } else {
        out.push_str(&format!(
            "\nstore: {} (no Redis figures)\n",
            stats["store"].as_str().unwrap_or("?")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_a_table() {
        let doc = serde_json::json!({
            "store": "memory://",
            "entities": { "users": { "reads_total": 4, "reads": { "hit": 3, "miss": 1 }, "hit_ratio": 0.75, "loads": 1, "load_errors": 0, "load_ms_mean": 1.5 } },
            "redis": null
        });
        let text = super::render(&doc);
        assert!(
            text.lines().next().is_some_and(|l| l.starts_with("entity")),
            "{text}"
        );
        assert!(
            text.contains("users") && text.contains("75.0") && text.contains("1.50"),
            "{text}"
        );
    }
}
