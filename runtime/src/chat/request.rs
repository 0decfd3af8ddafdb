//! JSON text to template values with object keys in document order (Python
//! dicts keep insertion order, and `tojson` of a tool schema shows it);
//! `serde_json::Map` would sort them.

use std::fmt;

use minijinja::Value;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Any JSON value as a template value.
pub(crate) struct Ordered(pub(crate) Value);

/// A JSON object's entries in document order (a repeated key keeps its
/// first position and its last value, like a Python dict).
pub(crate) struct Entries(pub(crate) Vec<(String, Value)>);

struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
        Ok(Ordered(Value::from(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
        Ok(Ordered(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
        Ok(Ordered(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
        Ok(Ordered(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
        Ok(Ordered(Value::from(v)))
    }

    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered(Value::from(())))
    }

    fn visit_none<E>(self) -> Result<Ordered, E> {
        Ok(Ordered(Value::from(())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
        let mut items = Vec::new();
        while let Some(Ordered(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Ordered(Value::from(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Ordered, A::Error> {
        let Entries(entries) = EntriesVisitor.visit_map(map)?;
        Ok(Ordered(Value::from_pairs(entries)))
    }
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut entries: Vec<(String, Value)> = Vec::new();
        while let Some((k, Ordered(v))) = map.next_entry::<String, Ordered>()? {
            match entries.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => entries.push((k, v)),
            }
        }
        Ok(Entries(entries))
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_keep_document_order() {
        let Ordered(v) = serde_json::from_str(
            r#"{"z": 1, "a": [true, null, 2.5, -3, "s"], "m": {"y": {}, "b": []}}"#,
        )
        .unwrap();
        let keys: Vec<String> = v.try_iter().unwrap().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["z", "a", "m"]);
        let m = v.get_attr("m").unwrap();
        let keys: Vec<String> = m.try_iter().unwrap().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["y", "b"]);
        assert_eq!(
            v.get_attr("a").unwrap().to_string(),
            "[True, None, 2.5, -3, 's']"
        );
    }

    #[test]
    fn repeated_keys_keep_first_position_last_value() {
        let Entries(e) = serde_json::from_str(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        let got: Vec<(String, String)> = e.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        assert_eq!(got, [("a".into(), "3".into()), ("b".into(), "2".into())]);
    }

    #[test]
    fn not_an_object_or_not_json_is_an_error() {
        assert!(serde_json::from_str::<Entries>("[1]").is_err());
        assert!(serde_json::from_str::<Entries>("{\"a\": }").is_err());
        assert!(serde_json::from_str::<Entries>("{} trailing").is_err());
        // serde_json's recursion limit stops hostile nesting.
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(serde_json::from_str::<Ordered>(&deep).is_err());
    }
}
