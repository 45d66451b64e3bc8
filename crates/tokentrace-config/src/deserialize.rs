//! Deserializers shared by the config sections: numbers that may arrive as strings (what
//! `${env.X}` substitution produces), and sink lists given as a list or a comma-separated string.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::Value;

use crate::{SINK_NAMES, SinkKind};

/// Accepts a number, or a string holding one (what `${env.X}` substitution produces).
pub(crate) fn number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr + TryFrom<u64> + TryFrom<i64>,
    <T as std::str::FromStr>::Err: fmt::Display,
{
    match Value::deserialize(d)? {
        Value::Number(n) => {
            let parsed = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => T::try_from(u).ok(),
                (None, Some(i)) => T::try_from(i).ok(),
                _ => None,
            };
            parsed.ok_or_else(|| de::Error::custom(format!("{n} is out of range")))
        }
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|e| de::Error::custom(format!("{s:?} is not a valid number: {e}"))),
        other => Err(de::Error::custom(format!("expected a number, got {other}"))),
    }
}

pub(crate) fn opt_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr + TryFrom<u64> + TryFrom<i64>,
    <T as std::str::FromStr>::Err: fmt::Display,
{
    number(d).map(Some)
}

/// `sinks`: a list, or a comma-separated string.
pub(crate) struct SinkList(pub Vec<SinkKind>);

impl<'de> Deserialize<'de> for SinkList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = match Value::deserialize(d)? {
            Value::String(s) => SinkKind::parse_list(&s),
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => SinkKind::parse(s.trim()),
                    other => Err(format!(
                        "expected a sink name, got {other}; valid sinks: {SINK_NAMES}"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|mut v| {
                    let mut seen = Vec::new();
                    v.retain(|s| {
                        if seen.contains(s) {
                            false
                        } else {
                            seen.push(*s);
                            true
                        }
                    });
                    v
                }),
            Value::Null => Ok(Vec::new()),
            other => Err(format!(
                "expected a list or a comma-separated string of sinks, got {other}"
            )),
        };
        list.map(SinkList).map_err(de::Error::custom)
    }
}
