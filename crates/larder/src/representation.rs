//! How an entry is held in the store: one string (the envelope) or one
//! Redis hash (a field per column).
//!
//! Why a hash: reading two fields of a wide row should not move the whole
//! row. A `hash` entity's value key has the segment `h:` instead of `v:`
//! (an older binary never meets a hash where it expects a string), and
//! holds:
//!
//! ```text
//! field ""        the reserved field (no column can be named ""): the
//!                 envelope's header and stamp (envelope.rs), then the
//!                 directory of the row's columns, in the row's order:
//!                 u16 count, then per column: u8 kind (0 JSON text,
//!                 1 plain text), u16 name length, name
//! field <column>  text (a JSON string) as its plain text; any other
//!                 value as its JSON text; NULL: no field
//! ```
//!
//! The directory is what decodes a field: a column recorded as plain text
//! is turned back into a JSON string, any other is JSON already, and a
//! column in the directory without a field is `null`. So every value
//! round-trips exactly — `""` is not NULL, integers beyond 2^53 keep their
//! digits, `[]` stays `[]` — whatever the source (a SQL table, whose
//! text, timestamp and uuid columns are JSON strings, or any loader): the
//! kind is the value's JSON type, recorded by the fill, not guessed from
//! the text. `redis-cli HGET <key> name` shows the name.
//!
//! The cache above is unchanged: the store turns the envelope it is given
//! into fields ([`to_fields`]) and the fields it reads back into the same
//! envelope ([`from_fields`]), or, for a field read, into an envelope whose
//! payload holds only those fields ([`from_some_fields`]). A negative entry
//! is the reserved field alone.

use crate::envelope::HEADER_LEN;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// How an entity's entries are held in the store.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Representation {
    /// One string per entry: the envelope around the codec's bytes (the
    /// default).
    #[default]
    String,
    /// One Redis hash per entry: a field per column of a JSON-object
    /// value, so some fields are read with one `HMGET`
    /// ([`Cache::get_fields`](crate::Cache::get_fields)). Needs a JSON
    /// codec ([`Json`](crate::Json) or [`PassThrough`](crate::PassThrough)).
    Hash,
}

impl Representation {
    /// Its name in configuration: `string` or `hash`.
    pub fn as_str(self) -> &'static str {
        match self {
            Representation::String => "string",
            Representation::Hash => "hash",
        }
    }

    /// The representation named `name` (`string` or `hash`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "string" => Some(Representation::String),
            "hash" => Some(Representation::Hash),
            _ => None,
        }
    }
}

impl fmt::Display for Representation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reserved field: the envelope header and the directory.
pub(crate) const RESERVED: &str = "";

/// The most fields (columns) one hash entry holds: the scripts pass them
/// as arguments, and Lua unpacks at most ~8,000 values (PostgreSQL tables
/// have at most 1,600 columns).
pub(crate) const MAX_FIELDS: usize = 3000;

const KIND_JSON: u8 = 0;
const KIND_TEXT: u8 = 1;

/// Whether `key` is the value key of a hash entry: the segment after the
/// hash tag is `h:` (prefix and entity names hold no `}`).
pub(crate) fn is_hash_key(key: &str) -> bool {
    key.find('}')
        .is_some_and(|at| key[at..].starts_with("}:h:"))
}

/// Why an envelope cannot be a hash, or fields not an envelope.
pub(crate) type Problem = String;

/// A hash's fields: (name, value) pairs.
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Where the payload starts in envelope bytes (after header and stamp).
fn payload_offset(env: &[u8]) -> Result<usize, Problem> {
    if env.len() < HEADER_LEN {
        return Err(format!("an envelope of {} bytes", env.len()));
    }
    if env[2] & 0b1000_0000 == 0 {
        return Ok(HEADER_LEN);
    }
    if env.len() < HEADER_LEN + 2 {
        return Err("a stamped envelope without its stamp".into());
    }
    let len = usize::from(u16::from_be_bytes([env[HEADER_LEN], env[HEADER_LEN + 1]]));
    let end = HEADER_LEN + 2 + len;
    if env.len() < end {
        return Err("a stamped envelope shorter than its stamp".into());
    }
    Ok(end)
}

/// A JSON object's members in their order, values as their JSON text.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The hash fields (name, value) of envelope bytes; the reserved field first.
pub(crate) fn to_fields(env: &[u8]) -> Result<Fields, Problem> {
    let body = payload_offset(env)?;
    let mut reserved = env[..body].to_vec();
    let negative = env[2] & 1 != 0;
    let mut fields = Vec::new();
    if negative {
        reserved.extend_from_slice(&0u16.to_be_bytes());
        fields.push((RESERVED.as_bytes().to_vec(), reserved));
        return Ok(fields);
    }
    let members: Members<'_> = serde_json::from_slice(&env[body..])
        .map_err(|e| format!("a hash entry's value must be a JSON object: {e}"))?;
    if members.0.len() > MAX_FIELDS {
        return Err(format!(
            "a hash entry holds at most {MAX_FIELDS} fields, this value has {}",
            members.0.len()
        ));
    }
    let count = u16::try_from(members.0.len())
        .map_err(|_| format!("a hash entry holds at most {MAX_FIELDS} fields"))?;
    reserved.extend_from_slice(&count.to_be_bytes());
    fields.push((Vec::new(), Vec::new()));
    for (name, raw) in members.0 {
        if name.is_empty() {
            return Err("a hash entry cannot hold a field named \"\" (it is reserved)".into());
        }
        if fields.iter().skip(1).any(|(n, _)| n == name.as_bytes()) {
            return Err(format!("a hash entry names {name:?} twice"));
        }
        let len = u16::try_from(name.len())
            .map_err(|_| "a field name longer than 65535 bytes".to_owned())?;
        let text = raw.get();
        let (kind, value) = if text == "null" {
            (KIND_JSON, None)
        } else if text.starts_with('"') {
            match serde_json::from_str::<String>(text) {
                Ok(s) => (KIND_TEXT, Some(s.into_bytes())),
                // Not representable as plain text (a lone surrogate): JSON.
                Err(_) => (KIND_JSON, Some(text.as_bytes().to_vec())),
            }
        } else {
            (KIND_JSON, Some(text.as_bytes().to_vec()))
        };
        reserved.push(kind);
        reserved.extend_from_slice(&len.to_be_bytes());
        reserved.extend_from_slice(name.as_bytes());
        if let Some(value) = value {
            fields.push((name.into_bytes(), value));
        }
    }
    fields[0] = (RESERVED.as_bytes().to_vec(), reserved);
    Ok(fields)
}

/// The directory of a reserved field: its header part and the columns
/// (checked whole when read, walked without allocating: a field read
/// decodes it on every hit).
struct Directory<'a> {
    header: &'a [u8],
    negative: bool,
    /// The column entries: kind, length (two bytes), name; `count` of them.
    entries: &'a [u8],
    count: usize,
}

impl<'a> Directory<'a> {
    /// The columns in order: their kind and name.
    fn columns(&self) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
        let entries = self.entries;
        let mut at = 0;
        (0..self.count).map(move |_| {
            // In bounds: `directory` checked every entry.
            let len = usize::from(u16::from_be_bytes([entries[at + 1], entries[at + 2]]));
            let column = (entries[at], &entries[at + 3..at + 3 + len]);
            at += 3 + len;
            column
        })
    }
}

fn directory(reserved: &[u8]) -> Result<Directory<'_>, Problem> {
    let body = payload_offset(reserved)?;
    let bad = || "a hash entry's reserved field is truncated".to_owned();
    let rest = &reserved[body..];
    let count = rest.get(..2).ok_or_else(bad)?;
    let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
    let entries = &rest[2..];
    let mut at = 0;
    for _ in 0..count {
        let head = entries.get(at..at + 3).ok_or_else(bad)?;
        let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
        entries.get(at + 3..at + 3 + len).ok_or_else(bad)?;
        at += 3 + len;
    }
    Ok(Directory {
        header: &reserved[..body],
        negative: reserved[2] & 1 != 0,
        entries: &entries[..at],
        count,
    })
}

/// `text` as a JSON string, exactly as serde_json writes it. Text of
/// printable ASCII without `"` or `\` (most field values) is copied after
/// one cheap pass, rather than validated as UTF-8 and then escaped: a
/// field read does this for every field on every hit.
fn push_json_string(out: &mut Vec<u8>, text: &[u8], not_utf8: &str) -> Result<(), Problem> {
    // No early exit: a tight loop over the bytes.
    let escapes = text.iter().fold(false, |found, &b| {
        found | !(0x20..0x7f).contains(&b) | (b == b'"') | (b == b'\\')
    });
    if !escapes {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text);
        out.push(b'"');
        return Ok(());
    }
    let text = std::str::from_utf8(text).map_err(|_| not_utf8.to_owned())?;
    serde_json::to_writer(&mut *out, text).map_err(|e| e.to_string())
}

fn push_value(out: &mut Vec<u8>, kind: u8, value: Option<&[u8]>) -> Result<(), Problem> {
    match value {
        None => out.extend_from_slice(b"null"),
        Some(v) if kind == KIND_TEXT => {
            push_json_string(out, v, "a text field of a hash entry is not UTF-8")?;
        }
        Some(v) => out.extend_from_slice(v),
    }
    Ok(())
}

fn push_name(out: &mut Vec<u8>, name: &[u8]) -> Result<(), Problem> {
    push_json_string(out, name, "a field name is not UTF-8")?;
    out.push(b':');
    Ok(())
}

/// The envelope of a whole hash (`HGETALL`'s pairs); `None` without the
/// reserved field (no entry).
pub(crate) fn from_fields(pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<Vec<u8>>, Problem> {
    let Some((_, reserved)) = pairs.iter().find(|(n, _)| n.is_empty()) else {
        return Ok(None);
    };
    let dir = directory(reserved)?;
    let mut out = Vec::with_capacity(dir.header.len() + 16 * pairs.len());
    out.extend_from_slice(dir.header);
    if dir.negative {
        return Ok(Some(out));
    }
    out.push(b'{');
    for (i, (kind, name)) in dir.columns().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_name(&mut out, name)?;
        let value = pairs
            .iter()
            .find(|(n, _)| n.as_slice() == name)
            .map(|(_, v)| v.as_slice());
        push_value(&mut out, kind, value)?;
    }
    out.push(b'}');
    Ok(Some(out))
}

/// The envelope of some fields (`HMGET`'s answer: the reserved field, then
/// `names`' values): its payload holds `names` in the order given, each
/// decoded by the directory; a name the directory lacks is left out.
/// `None` without the reserved field (no entry).
pub(crate) fn from_some_fields(
    reserved: Option<&[u8]>,
    names: &[&str],
    values: &[Option<Vec<u8>>],
) -> Result<Option<Vec<u8>>, Problem> {
    let Some(reserved) = reserved else {
        return Ok(None);
    };
    let dir = directory(reserved)?;
    let mut out = Vec::with_capacity(dir.header.len() + 32 * names.len());
    out.extend_from_slice(dir.header);
    if dir.negative {
        return Ok(Some(out));
    }
    out.push(b'{');
    let mut first = true;
    for (name, value) in names.iter().zip(values) {
        let Some((kind, _)) = dir.columns().find(|(_, n)| *n == name.as_bytes()) else {
            continue;
        };
        if !first {
            out.push(b',');
        }
        first = false;
        push_name(&mut out, name.as_bytes())?;
        push_value(&mut out, kind, value.as_deref())?;
    }
    out.push(b'}');
    Ok(Some(out))
}

/// [`from_some_fields`] of envelope bytes held whole (the memory store, or
/// any store without field reads): the same answer as Redis' `HMGET`.
pub(crate) fn project(env: &[u8], names: &[&str]) -> Result<Vec<u8>, Problem> {
    let fields = to_fields(env)?;
    let reserved = fields.first().map(|(_, v)| v.as_slice());
    let values: Vec<Option<Vec<u8>>> = names
        .iter()
        .map(|name| {
            fields
                .iter()
                .skip(1)
                .find(|(n, _)| n.as_slice() == name.as_bytes())
                .map(|(_, v)| v.clone())
        })
        .collect();
    Ok(from_some_fields(reserved, names, &values)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use bytes::Bytes;

    fn env(payload: Option<&str>, stamp: Option<&[u8]>) -> Vec<u8> {
        Envelope {
            fresh_until: 10,
            stale_until: 20,
            load_us: 3,
            payload: payload.map(|p| Bytes::from(p.as_bytes().to_vec())),
            stamp: stamp.map(|s| Bytes::from(s.to_vec())),
        }
        .encode()
    }

    #[test]
    fn text_is_written_as_serde_json_writes_it_on_either_path() {
        for text in [
            "",
            "plain ascii 123 ~",
            "a \"quote\"",
            "back\\slash",
            "tab\tand\nnewline",
            "\u{7f} delete",
            "\u{1} control",
            "ünïcödé ✓ 𝄞",
        ] {
            let mut out = Vec::new();
            push_json_string(&mut out, text.as_bytes(), "bad").expect("valid");
            let expected = serde_json::to_string(text).expect("json");
            assert_eq!(String::from_utf8(out).expect("utf-8"), expected, "{text:?}");
        }
        let mut out = Vec::new();
        assert_eq!(
            push_json_string(&mut out, &[0xff, 0xfe], "not UTF-8"),
            Err("not UTF-8".to_owned())
        );
    }

    #[test]
    fn every_json_value_round_trips_and_text_is_plain() {
        let row = r#"{"id":9007199254740993,"name":"ann","empty":"","gone":null,"n":1.50,"ok":false,"j":{"a":[],"b":{"c":[1,"x"]}},"arr":[1,null],"s":"\"quoted\" \u00e9","at":"2024-01-02T03:04:05.123456+00:00"}"#;
        for stamp in [None, Some(&b"gen7"[..])] {
            let e = env(Some(row), stamp);
            let fields = to_fields(&e).expect("fields");
            let get = |n: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == n.as_bytes())
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            };
            assert_eq!(get("name").as_deref(), Some("ann"));
            assert_eq!(get("empty").as_deref(), Some(""));
            assert_eq!(get("gone"), None, "NULL is no field");
            assert_eq!(get("id").as_deref(), Some("9007199254740993"));
            assert_eq!(get("j").as_deref(), Some(r#"{"a":[],"b":{"c":[1,"x"]}}"#));
            assert_eq!(get("s").as_deref(), Some("\"quoted\" é"));
            let back = from_fields(&fields).expect("decode").expect("entry");
            let decoded = Envelope::decode(Bytes::from(back)).expect("envelope");
            let original = Envelope::decode(Bytes::from(e)).expect("envelope");
            assert_eq!(decoded.stamp, original.stamp);
            assert_eq!(decoded.fresh_until, 10);
            let a: serde_json::Value =
                serde_json::from_slice(&decoded.payload.expect("payload")).expect("json");
            let b: serde_json::Value =
                serde_json::from_slice(&original.payload.expect("payload")).expect("json");
            assert_eq!(a, b);
            // The order of the row is kept, and big integers keep their digits.
            let text = String::from_utf8(
                from_fields(&fields)
                    .expect("decode")
                    .expect("entry")
                    .split_off(payload_offset(&env(Some(row), stamp)).expect("offset")),
            )
            .expect("utf8");
            assert!(
                text.starts_with(
                    r#"{"id":9007199254740993,"name":"ann","empty":"","gone":null,"n":1.50,"#
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn some_fields_are_decoded_by_the_directory() {
        let e = env(Some(r#"{"id":1,"name":"7","email":null,"n":7}"#), None);
        let got = project(&e, &["n", "name", "email", "nope"]).expect("project");
        let payload = Envelope::decode(Bytes::from(got))
            .expect("envelope")
            .payload
            .expect("payload");
        assert_eq!(&payload[..], br#"{"n":7,"name":"7","email":null}"#);
    }

    #[test]
    fn negative_entries_and_bad_values() {
        let e = env(None, Some(b"s"));
        let fields = to_fields(&e).expect("fields");
        assert_eq!(fields.len(), 1);
        let back = from_fields(&fields).expect("ok").expect("entry");
        assert_eq!(back, e);
        assert_eq!(from_fields(&[]).expect("ok"), None);
        assert!(to_fields(&env(Some("[1]"), None)).is_err());
        assert!(to_fields(&env(Some(r#"{"":1}"#), None)).is_err());
        let wide: String = (0..=MAX_FIELDS)
            .map(|i| format!("\"c{i}\":1"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(to_fields(&env(Some(&format!("{{{wide}}}")), None)).is_err());
        assert!(is_hash_key("p:{e:3}:h:42"));
        assert!(!is_hash_key("p:{e:3}:v:h:42"));
        assert!(!is_hash_key("p:{e}:meta"));
    }

    #[test]
    fn damaged_reserved_fields_are_errors_not_panics() {
        let e = env(Some(r#"{"a":"x","b":2}"#), None);
        let fields = to_fields(&e).expect("fields");
        let reserved = fields[0].1.clone();
        for cut in 0..reserved.len() {
            let mut f = fields.clone();
            f[0].1.truncate(cut);
            let _ = from_fields(&f);
        }
    }
}
