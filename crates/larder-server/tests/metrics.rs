//! `/metrics` parses as Prometheus text (a strict parser below) and its
//! series count exactly the traffic sent; `/v1/stats` agrees with it.
//!
//! The recorder is global to the process: this binary holds one test, on
//! an entity name of its own.

mod support;

use larder_server::http::app;
use std::collections::{BTreeMap, HashMap};
use support::{get, unique, Pg};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text exposition format 0.0.4, strictly: every sample
/// belongs to a family whose `# TYPE` came first (once), names and label
/// names are valid, label values are quoted with valid escapes, values are
/// floats; histograms have cumulative `le` buckets ending at `+Inf` ==
/// `_count`, and a `_sum`.
fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: &str| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    valid_name(name).map_err(|e| at(&e))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at("unknown type"));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("TYPE given twice"));
                    }
                }
                (Some("HELP"), Some(name), _) => valid_name(name).map_err(|e| at(&e))?,
                _ => {} // a comment
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|e| at(&e))?;
        let family = family_of(&sample.name, &types).ok_or_else(|| at("no TYPE before it"))?;
        if types[&family] == "histogram" && sample.name.ends_with("_bucket") {
            sample
                .labels
                .get("le")
                .ok_or_else(|| at("a bucket without le"))?;
        }
        samples.push(sample);
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

fn valid_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        matches!(
            types.get(base).map(String::as_str),
            Some("histogram" | "summary")
        )
        .then(|| base.to_owned())
    })
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
    let name = &line[..name_end];
    valid_name(name)?;
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let close;
        loop {
            // label name
            let start = chars.peek().map(|(i, _)| *i).ok_or("unclosed labels")?;
            if body[start..].starts_with('}') {
                close = start;
                break;
            }
            let eq = body[start..].find('=').ok_or("a label without =")? + start;
            let label = &body[start..eq];
            if label.is_empty()
                || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || label.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(format!("bad label name {label:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("an unquoted label value".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("an unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().ok_or("a dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    '\n' => return Err("a raw newline in a label value".into()),
                    c => value.push(c),
                }
            }
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label:?} twice"));
            }
            match chars.next().ok_or("unclosed labels")? {
                (_, ',') => continue,
                (i, '}') => {
                    close = i;
                    break;
                }
                (_, c) => return Err(format!("unexpected {c:?} after a label")),
            }
        }
        rest = &body[close + 1..];
    }
    let mut parts = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = match parts.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A series' labels other than `le`, sorted.
type Labels = Vec<(String, String)>;

fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) -> Result<(), String> {
    for (family, kind) in types {
        if kind != "histogram" {
            continue;
        }
        // Group buckets by their labels other than `le`.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut labels = s.labels.clone();
            let le = labels.remove("le").unwrap_or_default();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().map_err(|_| format!("{family}: bad le {le:?}"))?
            };
            series
                .entry(labels.into_iter().collect())
                .or_default()
                .push((le, s.value));
        }
        for (labels, buckets) in series {
            let mut last = (f64::NEG_INFINITY, 0.0);
            for &(le, n) in &buckets {
                if le <= last.0 || n < last.1 {
                    return Err(format!("{family}{labels:?}: buckets not cumulative"));
                }
                last = (le, n);
            }
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{labels:?}: no +Inf bucket"));
            }
            let find = |suffix: &str| {
                samples.iter().find(|s| {
                    s.name == format!("{family}{suffix}")
                        && s.labels.clone().into_iter().collect::<Vec<_>>() == labels
                })
            };
            let count = find("_count").ok_or(format!("{family}{labels:?}: no _count"))?;
            if count.value != last.1 {
                return Err(format!("{family}{labels:?}: +Inf bucket != _count"));
            }
            find("_sum").ok_or(format!("{family}{labels:?}: no _sum"))?;
        }
    }
    Ok(())
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn the_parser_refuses_what_prometheus_refuses() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\"} 3\n";
    assert_eq!(parse(ok).expect("valid")[0].labels["x"], "1\"");
    for bad in [
        "a_total 1\n",                               // no TYPE
        "# TYPE a counter\na{x=1} 1\n",              // unquoted
        "# TYPE a counter\na 1 2 3\n",               // trailing
        "# TYPE a counter\n# TYPE a counter\na 1\n", // TYPE twice
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", // not cumulative
        "# TYPE 1a gauge\n", // bad name
    ] {
        assert!(parse(bad).is_err(), "{bad:?} parsed");
    }
}

#[tokio::test]
async fn metrics_parse_and_count_known_traffic() {
    let mut pg = Pg::connect().await;
    let t = unique("mt");
    pg.exec(
        &t,
        "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL); INSERT INTO {t} VALUES (1, 'ada');",
    )
    .await;
    let entity = unique("m");
    let toml = support::pg_config(
        &unique("p"),
        &format!("[[entity]]\nname = \"{entity}\"\ntable = \"{t}\"\n"),
    );
    let app = app(support::state(&toml).await);

    // 1 miss + 3 hits of a row; a missing row: 1 miss, then 1 negative.
    let path = |id: u32| format!("/v1/{entity}/{id}");
    let mut seen = Vec::new();
    for id in [1, 1, 1, 1, 99, 99] {
        seen.push(get(&app, &path(id)).await.x_cache().to_owned());
    }
    assert_eq!(seen, ["miss", "hit", "hit", "hit", "miss", "negative"]);

    let m = get(&app, "/metrics").await;
    assert_eq!(m.status.as_u16(), 200);
    assert!(m
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = String::from_utf8(m.body.clone()).expect("utf-8");
    let samples = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let e = entity.as_str();
    let reads = |outcome| {
        value(
            &samples,
            "larder_reads_total",
            &[("entity", e), ("outcome", outcome)],
        )
    };
    for (outcome, n) in [
        ("l1", 0.0),
        ("hit", 3.0),
        ("stale", 0.0),
        ("negative", 1.0),
        ("miss", 2.0),
        ("bypass", 0.0),
    ] {
        assert_eq!(reads(outcome), Some(n), "{outcome}\n{text}");
    }
    let one = |name| value(&samples, name, &[("entity", e)]);
    assert_eq!(one("larder_loads_total"), Some(2.0), "{text}");
    assert_eq!(one("larder_load_errors_total"), Some(0.0), "{text}");
    assert_eq!(one("larder_fills_total"), Some(2.0), "{text}");
    assert_eq!(one("larder_load_seconds_count"), Some(2.0), "{text}");
    assert_eq!(one("larder_cache_seconds_count"), Some(6.0), "{text}");
    assert_eq!(
        value(
            &samples,
            "larder_load_seconds_bucket",
            &[("entity", e), ("le", "+Inf")]
        ),
        Some(2.0)
    );
    assert_eq!(one("larder_hit_ratio"), Some(4.0 / 6.0), "{text}");
    assert!(
        text.contains("# TYPE larder_load_seconds histogram"),
        "{text}"
    );
    assert!(
        value(&samples, "larder_redis_used_memory_bytes", &[]).is_some_and(|b| b > 0.0),
        "{text}"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "larder_redis_maxmemory_policy_info"
                && s.labels.contains_key("policy")
                && s.value == 1.0),
        "{text}"
    );
    assert!(
        value(&samples, "larder_redis_evicted_keys_total", &[]).is_some(),
        "{text}"
    );

    // /v1/stats agrees.
    let s = get(&app, "/v1/stats").await.json();
    let u = &s["entities"][e];
    assert_eq!(u["reads"]["hit"], 3);
    assert_eq!(u["reads"]["miss"], 2);
    assert_eq!(u["reads"]["negative"], 1);
    assert_eq!(u["hit_ratio"].as_f64(), Some(4.0 / 6.0));
    assert!(u["load_ms_p50"].as_f64().is_some_and(|p| p > 0.0), "{u}");
    assert!(
        u["load_ms_p99"].as_f64() >= u["load_ms_p50"].as_f64(),
        "{u}"
    );
    assert!(
        s["redis"]["connected_clients"]
            .as_u64()
            .is_some_and(|c| c >= 1),
        "{s}"
    );
    // A standalone Redis: no Cluster nodes, no slot coverage.
    assert_eq!(s["nodes"], serde_json::json!([]), "{s}");
    assert!(s["slots"].is_null(), "{s}");
    assert!(!text.contains("larder_store_node_"), "{text}");
    assert!(!text.contains("larder_store_cluster_"), "{text}");
}
