//! Attribute values: the primitives OpenTelemetry and Llama Stack allow, and arrays of them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Attributes of a span, log or metric, ordered by key.
pub type Attributes = BTreeMap<String, AttrValue>;

/// One attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// JSON `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A float (also integers beyond the i64 range).
    Float(f64),
    /// A string.
    String(String),
    /// A list of values.
    Array(Vec<AttrValue>),
}

impl AttrValue {
    /// The value as `serde_json::Value`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            AttrValue::Null => serde_json::Value::Null,
            AttrValue::Bool(b) => (*b).into(),
            AttrValue::Int(i) => (*i).into(),
            AttrValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            AttrValue::String(s) => s.clone().into(),
            AttrValue::Array(a) => a.iter().map(AttrValue::to_json).collect(),
        }
    }

    /// The value as a label string: strings as they are, everything else as JSON.
    pub fn to_label(&self) -> String {
        match self {
            AttrValue::String(s) => s.clone(),
            AttrValue::Null => String::new(),
            other => other.to_json().to_string(),
        }
    }

    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::String(s.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::String(s)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::Float(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

impl Serialize for AttrValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AttrValue::Null => s.serialize_unit(),
            AttrValue::Bool(b) => s.serialize_bool(*b),
            AttrValue::Int(i) => s.serialize_i64(*i),
            AttrValue::Float(f) if f.is_finite() => s.serialize_f64(*f),
            AttrValue::Float(_) => s.serialize_unit(),
            AttrValue::String(v) => s.serialize_str(v),
            AttrValue::Array(a) => a.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for AttrValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AttrValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean, null or array attribute value")
            }
            fn visit_unit<E>(self) -> Result<AttrValue, E> {
                Ok(AttrValue::Null)
            }
            fn visit_none<E>(self) -> Result<AttrValue, E> {
                Ok(AttrValue::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<AttrValue, E> {
                Ok(AttrValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<AttrValue, E> {
                Ok(AttrValue::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<AttrValue, E> {
                Ok(i64::try_from(v).map_or(AttrValue::Float(v as f64), AttrValue::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<AttrValue, E> {
                Ok(AttrValue::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<AttrValue, E> {
                Ok(AttrValue::String(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<AttrValue, E> {
                Ok(AttrValue::String(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AttrValue, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(AttrValue::Array(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_primitives_and_arrays() {
        let json = r#"{"a":1,"b":1.5,"c":"x","d":true,"e":null,"f":[1,"y"]}"#;
        let attrs: Attributes = serde_json::from_str(json).unwrap();
        assert_eq!(attrs["a"], AttrValue::Int(1));
        assert_eq!(serde_json::to_string(&attrs).unwrap(), json);
    }

    #[test]
    fn rejects_objects_with_a_clear_message() {
        let err = serde_json::from_str::<Attributes>(r#"{"a":{"b":1}}"#).unwrap_err();
        assert!(err.to_string().contains("attribute value"), "{err}");
    }
}
