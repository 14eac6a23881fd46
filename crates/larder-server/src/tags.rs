//! Tag templates: `"team:{team_id}"` over a row's columns.
//!
//! An entity's `tags` become the cache's tagger: every row written or
//! loaded carries the tags its columns render to, and
//! `POST /v1/tags/{tag}/invalidate` makes every entry carrying one a miss.
//! A template whose column is null or absent in a row gives no tag for it.

use larder::RawJson;
use serde_json::{Map, Value};

/// Renders one template over a row; `None` when a named column is null or absent.
pub fn render(template: &str, row: &Map<String, Value>) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 8);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        match row.get(&after[..close])? {
            Value::Null => return None,
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// The tagger of an entity with these templates.
pub fn tagger(templates: Vec<String>) -> impl Fn(&RawJson) -> Vec<String> + Send + Sync + 'static {
    move |row: &RawJson| match serde_json::from_slice::<Value>(row.bytes()) {
        Ok(Value::Object(map)) => templates.iter().filter_map(|t| render(t, &map)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_columns_and_skips_nulls() {
        let row = serde_json::json!({"team_id": 7, "name": "ada", "org": null});
        let row = row.as_object().expect("object");
        assert_eq!(render("team:{team_id}", row).as_deref(), Some("team:7"));
        assert_eq!(render("{name}/{team_id}", row).as_deref(), Some("ada/7"));
        assert_eq!(render("org:{org}", row), None);
        assert_eq!(render("x:{missing}", row), None);
    }
}
