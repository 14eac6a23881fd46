//! Codecs: how a value becomes the payload of an envelope and back.
//!
//! [`Json`] is the default; [`MessagePack`] is smaller and faster to decode;
//! [`PassThrough`] stores [`RawJson`] bytes as they are, so the service can
//! send a cached row's bytes to the socket with no parse and no re-encode.

use crate::error::{Error, Message, Result};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::sync::Arc;

/// Turns values into payload bytes and back.
pub trait Codec<V>: Debug + Send + Sync + 'static {
    /// Encodes a value. `entity` names it in errors.
    fn encode(&self, entity: &str, value: &V) -> Result<Vec<u8>>;
    /// Decodes a payload. `entity` and `id` name it in errors.
    fn decode(&self, entity: &str, id: &str, payload: Bytes) -> Result<V>;

    /// Merges `fields` into the object a payload holds (a write-back
    /// `patch`, done in Rust rather than in a Lua script, whose JSON turns
    /// `[]` into `{}` and rounds big integers). Default: unsupported.
    fn merge(
        &self,
        entity: &str,
        id: &str,
        payload: &[u8],
        fields: &JsonObject,
    ) -> Result<Vec<u8>> {
        let _ = (payload, fields);
        Err(Error::Config(format!(
            "entity `{entity}` (id {id:?}): this codec cannot merge fields; write-back patch needs the Json, MessagePack or PassThrough codec"
        )))
    }

    /// Whether its bytes are JSON text (a `hash` entity needs that: its
    /// fields are the JSON object's members). Default: `false`.
    fn is_json(&self) -> bool {
        false
    }
}

/// A JSON object: the fields of a patch.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Merges `fields` into `target`, which must be an object.
fn merge_object(
    entity: &str,
    id: &str,
    target: serde_json::Value,
    fields: &JsonObject,
) -> Result<serde_json::Value> {
    match target {
        serde_json::Value::Object(mut object) => {
            for (k, v) in fields {
                object.insert(k.clone(), v.clone());
            }
            Ok(serde_json::Value::Object(object))
        }
        _ => Err(decode_error(
            entity,
            id,
            Message::cause("a patch needs the stored value to be an object"),
        )),
    }
}

/// Merges `fields` into the JSON object `payload`, the members it keeps
/// copied as they are: a number is never parsed, so neither one beyond
/// `f64` (a `jsonb` or `numeric` value of 400 digits) nor a decimal past
/// 2^53 is refused or rounded by a patch of another column.
fn merge_json(entity: &str, id: &str, payload: &[u8], fields: &JsonObject) -> Result<Vec<u8>> {
    use serde_json::value::RawValue;
    let mut object: std::collections::BTreeMap<String, Box<RawValue>> =
        match serde_json::from_slice(payload) {
            Ok(object) => object,
            Err(e) if e.is_data() => {
                return Err(decode_error(
                    entity,
                    id,
                    Message::cause("a patch needs the stored value to be an object"),
                ))
            }
            Err(e) => return Err(decode_error(entity, id, Error::cause(e))),
        };
    for (k, v) in fields {
        let raw = serde_json::value::to_raw_value(v).map_err(|e| encode_error(entity, e))?;
        object.insert(k.clone(), raw);
    }
    serde_json::to_vec(&object).map_err(|e| encode_error(entity, e))
}

/// JSON through serde_json. The default codec.
#[derive(Debug, Default, Clone, Copy)]
pub struct Json;

impl<V: Serialize + DeserializeOwned> Codec<V> for Json {
    fn encode(&self, entity: &str, value: &V) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| encode_error(entity, e))
    }

    fn decode(&self, entity: &str, id: &str, payload: Bytes) -> Result<V> {
        serde_json::from_slice(&payload).map_err(|e| decode_error(entity, id, Error::cause(e)))
    }

    fn merge(
        &self,
        entity: &str,
        id: &str,
        payload: &[u8],
        fields: &JsonObject,
    ) -> Result<Vec<u8>> {
        merge_json(entity, id, payload, fields)
    }

    fn is_json(&self) -> bool {
        true
    }
}

/// MessagePack through rmp-serde (struct fields by name, so schemas can evolve).
#[derive(Debug, Default, Clone, Copy)]
pub struct MessagePack;

impl<V: Serialize + DeserializeOwned> Codec<V> for MessagePack {
    fn encode(&self, entity: &str, value: &V) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(value).map_err(|e| encode_error(entity, e))
    }

    fn decode(&self, entity: &str, id: &str, payload: Bytes) -> Result<V> {
        rmp_serde::from_slice(&payload).map_err(|e| decode_error(entity, id, Error::cause(e)))
    }

    fn merge(
        &self,
        entity: &str,
        id: &str,
        payload: &[u8],
        fields: &JsonObject,
    ) -> Result<Vec<u8>> {
        let target: serde_json::Value = rmp_serde::from_slice(payload)
            .map_err(|e| decode_error(entity, id, Error::cause(e)))?;
        let merged = merge_object(entity, id, target, fields)?;
        rmp_serde::to_vec_named(&merged).map_err(|e| encode_error(entity, e))
    }
}

/// Stores [`RawJson`] bytes unchanged.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl Codec<RawJson> for PassThrough {
    fn encode(&self, _entity: &str, value: &RawJson) -> Result<Vec<u8>> {
        Ok(value.0.to_vec())
    }

    fn decode(&self, _entity: &str, _id: &str, payload: Bytes) -> Result<RawJson> {
        Ok(RawJson(payload))
    }

    fn merge(
        &self,
        entity: &str,
        id: &str,
        payload: &[u8],
        fields: &JsonObject,
    ) -> Result<Vec<u8>> {
        merge_json(entity, id, payload, fields)
    }

    fn is_json(&self) -> bool {
        true
    }
}

fn encode_error<E: std::error::Error + Send + Sync + 'static>(entity: &str, e: E) -> Error {
    Error::Encode {
        entity: entity.to_owned(),
        cause: Error::cause(e),
    }
}

fn decode_error(entity: &str, id: &str, cause: crate::error::Cause) -> Error {
    Error::Decode {
        entity: entity.to_owned(),
        id: id.to_owned(),
        cause,
    }
}

/// A JSON document kept as its bytes (one JSON value, already validated).
///
/// Serializes as the JSON it holds and deserializes from any JSON value, so
/// it works with sources that produce JSON; with [`PassThrough`] a cache hit
/// is the stored bytes themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson(Bytes);

impl RawJson {
    /// Validates `bytes` as one JSON value.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Result<Self> {
        let bytes = bytes.into();
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| Error::Decode {
            entity: String::new(),
            id: String::new(),
            cause: Arc::new(Message(format!("not JSON: {e}"))),
        })?;
        Ok(RawJson(bytes))
    }

    /// Bytes larder itself built as JSON (a hash entry's fields), kept
    /// without a second parse.
    pub(crate) fn trusted(bytes: Bytes) -> Self {
        RawJson(bytes)
    }

    /// The JSON bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The JSON bytes, owned.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Parses the JSON into a `serde_json::Value`.
    pub fn to_value(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.0).map_err(|e| Error::Decode {
            entity: String::new(),
            id: String::new(),
            cause: Error::cause(e),
        })
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(&self.0).map_err(serde::ser::Error::custom)?;
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        Ok(RawJson(Bytes::from(raw.get().to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        id: i64,
        name: String,
        tags: Vec<String>,
    }

    proptest! {
        #[test]
        fn json_and_msgpack_round_trip(id in any::<i64>(), name in ".*", tags in proptest::collection::vec(".*", 0..4)) {
            let user = User { id, name, tags };
            let j = Json.encode("e", &user).expect("encode");
            prop_assert_eq!(Codec::<User>::decode(&Json, "e", "1", Bytes::from(j)).expect("decode"), User { ..user_clone(&user) });
            let m = MessagePack.encode("e", &user).expect("encode");
            prop_assert_eq!(Codec::<User>::decode(&MessagePack, "e", "1", Bytes::from(m)).expect("decode"), user);
        }

        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Codec::<User>::decode(&Json, "e", "1", Bytes::from(bytes.clone()));
            let _ = Codec::<User>::decode(&MessagePack, "e", "1", Bytes::from(bytes));
        }
    }

    fn user_clone(u: &User) -> User {
        User {
            id: u.id,
            name: u.name.clone(),
            tags: u.tags.clone(),
        }
    }

    #[test]
    fn a_json_merge_keeps_the_numbers_it_does_not_touch_exactly() {
        let huge = format!("1{}", "0".repeat(400));
        let payload = format!(
            "{{\"id\":1,\"payload\":{huge},\"price\":12345678901234567890.125,\"name\":\"a\"}}"
        );
        let mut fields = JsonObject::new();
        fields.insert("name".into(), serde_json::json!("b"));
        for codec in [&Json as &dyn Codec<RawJson>, &PassThrough] {
            let merged = codec
                .merge("e", "1", payload.as_bytes(), &fields)
                .expect("merge");
            let text = String::from_utf8(merged).expect("utf-8");
            assert!(text.contains(&format!("\"payload\":{huge}")), "{text}");
            assert!(
                text.contains("\"price\":12345678901234567890.125"),
                "{text}"
            );
            assert!(text.contains("\"name\":\"b\""), "{text}");
        }
        let err = Codec::<RawJson>::merge(&Json, "e", "1", b"[1,2]", &fields).expect_err("array");
        assert!(err.to_string().contains("an object"), "{err}");
        assert!(Codec::<RawJson>::merge(&Json, "e", "1", b"{nope", &fields).is_err());
    }

    #[test]
    fn raw_json_passes_through_and_serializes_as_json() {
        let raw = RawJson::from_bytes(&b"{\"a\":[1,2]}"[..]).expect("json");
        assert_eq!(
            PassThrough.encode("e", &raw).expect("encode"),
            b"{\"a\":[1,2]}"
        );
        assert_eq!(
            serde_json::to_string(&vec![raw.clone()]).expect("ser"),
            "[{\"a\":[1,2]}]"
        );
        let back: RawJson = serde_json::from_str(" {\"a\": [1, 2]} ").expect("de");
        assert_eq!(
            back.to_value().expect("value"),
            serde_json::json!({"a": [1, 2]})
        );
        assert!(RawJson::from_bytes(&b"{nope"[..]).is_err());
    }
}
