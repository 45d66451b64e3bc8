//! Trace and span identifiers: W3C-sized, validated, printed as lowercase hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid trace or span id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id has the wrong number of characters.
    #[error("must be {expected} lowercase hex characters, got {got} characters")]
    Length {
        /// Characters required.
        expected: usize,
        /// Characters given.
        got: usize,
    },
    /// The id holds a character other than `0-9a-f`.
    #[error("must be lowercase hex (0-9, a-f)")]
    NotLowercaseHex,
    /// The id is all zeros, which W3C trace context reserves as invalid.
    #[error("must not be all zeros")]
    AllZero,
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], IdError> {
    if s.len() != N * 2 {
        return Err(IdError::Length {
            expected: N * 2,
            got: s.chars().count(),
        });
    }
    let mut out = [0u8; N];
    let bytes = s.as_bytes();
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = hex_val(bytes[2 * i])?;
        let lo = hex_val(bytes[2 * i + 1])?;
        *byte = (hi << 4) | lo;
    }
    if out.iter().all(|b| *b == 0) {
        return Err(IdError::AllZero);
    }
    Ok(out)
}

fn hex_val(c: u8) -> Result<u8, IdError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(IdError::NotLowercaseHex),
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Builds an id from raw bytes; `None` when they are all zero.
            pub fn from_bytes(bytes: [u8; $len]) -> Option<Self> {
                if bytes.iter().all(|b| *b == 0) { None } else { Some(Self(bytes)) }
            }

            /// Builds an id from a byte slice (as in OTLP); `None` unless it has the right length and is not all zero.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(bytes).ok().and_then(Self::from_bytes)
            }

            /// The raw bytes.
            pub fn to_bytes(self) -> [u8; $len] {
                self.0
            }

            /// A new random id.
            pub fn random() -> Self {
                loop {
                    let bytes: [u8; $len] = rand::random();
                    if let Some(id) = Self::from_bytes(bytes) {
                        return id;
                    }
                }
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex::<$len>(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                write_hex(f, &self.0)?;
                write!(f, ")")
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse()
                    .map_err(|e| serde::de::Error::custom(format_args!("invalid {} {:?}: {}", $what, s, e)))
            }
        }
    };
}

id_type!(
    /// A 16-byte trace id, printed as 32 lowercase hex characters.
    TraceId,
    16,
    "trace_id"
);
id_type!(
    /// An 8-byte span id, printed as 16 lowercase hex characters.
    SpanId,
    8,
    "span_id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_lowercase_hex() {
        let id: TraceId = "0af7651916cd43dd8448eb211c80319c".parse().unwrap();
        assert_eq!(id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        let span: SpanId = "b7ad6b7169203331".parse().unwrap();
        assert_eq!(span.to_bytes()[0], 0xb7);
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(
            "abc".parse::<SpanId>(),
            Err(IdError::Length {
                expected: 16,
                got: 3
            })
        );
        assert_eq!(
            "B7AD6B7169203331".parse::<SpanId>(),
            Err(IdError::NotLowercaseHex)
        );
        assert_eq!("0000000000000000".parse::<SpanId>(), Err(IdError::AllZero));
        assert!("é7ad6b716920333".parse::<SpanId>().is_err());
    }

    #[test]
    fn serde_reports_the_field() {
        let err = serde_json::from_str::<TraceId>("\"xyz\"").unwrap_err();
        assert!(err.to_string().contains("invalid trace_id"), "{err}");
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(SpanId::random(), SpanId::random());
    }
}
