//! Timestamps with nanosecond precision, in the three forms tokentrace speaks:
//! ISO 8601 on the wire, `YYYY-MM-DD HH:MM:SS.fffffffff` in SQLite, and unix nanoseconds in OTLP.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, UTC, nanosecond precision (unix nanoseconds).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(i64);

/// Why a value is not a timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid timestamp {value:?}: expected ISO 8601 (e.g. 2025-01-31T12:00:00.123Z) or unix seconds, between 1677-09-21 and 2262-04-11 UTC (what nanoseconds in 64 bits hold)"
)]
pub struct TimestampError {
    /// The rejected text.
    pub value: String,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    /// From unix nanoseconds.
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// Unix nanoseconds.
    pub const fn unix_nanos(self) -> i64 {
        self.0
    }

    /// Whole unix seconds (rounded down).
    pub const fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }

    /// From fractional unix seconds, as in the seed's `timestamp=1703123456.789`. An f64 holds
    /// today's unix time to about a microsecond, so the value is rounded to whole microseconds.
    pub fn from_unix_seconds_f64(secs: f64) -> Option<Self> {
        let micros = (secs * 1e6).round();
        // `then`, not `then_some`: the product must not be computed when it would overflow.
        (micros.is_finite() && micros.abs() < (i64::MAX / 1000) as f64)
            .then(|| Self(micros as i64 * 1000))
    }

    /// From a chrono UTC time; times outside ±292 years of 1970 saturate.
    pub fn from_datetime(dt: DateTime<Utc>) -> Self {
        Self(dt.timestamp_nanos_opt().unwrap_or(if dt.timestamp() < 0 {
            i64::MIN
        } else {
            i64::MAX
        }))
    }

    /// As a chrono UTC time.
    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.0)
    }

    /// Parses ISO 8601 / RFC 3339. A time without an offset (Python's naive `isoformat()`) is UTC.
    /// Also accepts the SQLite form with a space instead of `T`.
    pub fn parse_iso(s: &str) -> Result<Self, TimestampError> {
        let err = || TimestampError {
            value: s.to_string(),
        };
        // A time that nanoseconds in 64 bits cannot hold is refused, never clamped.
        let checked = |dt: DateTime<Utc>| dt.timestamp_nanos_opt().map(Self).ok_or_else(err);
        let t = s.trim();
        if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
            return checked(dt.with_timezone(&Utc));
        }
        let normalized = t.replacen(' ', "T", 1);
        if let Ok(dt) = DateTime::parse_from_rfc3339(&normalized) {
            return checked(dt.with_timezone(&Utc));
        }
        for fmt in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M",
        ] {
            if let Ok(naive) = NaiveDateTime::parse_from_str(&normalized, fmt) {
                return checked(naive.and_utc());
            }
        }
        Err(err())
    }

    /// The SQLite storage form, `YYYY-MM-DD HH:MM:SS.fffffffff` (UTC). It sorts as text and
    /// compares correctly with SQLite's own `datetime('now', ...)`.
    pub fn to_sql(self) -> String {
        self.to_datetime()
            .format("%Y-%m-%d %H:%M:%S%.9f")
            .to_string()
    }

    /// RFC 3339 in UTC with nanoseconds, e.g. `2025-01-31T12:00:00.123456789Z` (exact).
    pub fn to_iso_nanos(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Nanos, true)
    }

    /// The JSON form, RFC 3339 in UTC with microseconds, e.g. `2025-01-31T12:00:00.123456Z`.
    pub fn to_iso(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.to_iso())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ISO 8601 timestamp string or unix seconds")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse_iso(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
                v.checked_mul(1_000_000_000)
                    .map(Timestamp)
                    .ok_or_else(|| E::custom("timestamp out of range"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(|v| v.checked_mul(1_000_000_000))
                    .map(Timestamp)
                    .ok_or_else(|| E::custom("timestamp out of range"))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Timestamp, E> {
                Timestamp::from_unix_seconds_f64(v)
                    .ok_or_else(|| E::custom("timestamp out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_forms() {
        let a = Timestamp::parse_iso("2025-01-31T12:00:00.123456+00:00").unwrap();
        let b = Timestamp::parse_iso("2025-01-31T12:00:00.123456").unwrap();
        let c = Timestamp::parse_iso("2025-01-31 13:00:00.123456+01:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.to_iso(), "2025-01-31T12:00:00.123456Z");
        assert_eq!(a.to_sql(), "2025-01-31 12:00:00.123456000");
        assert!(Timestamp::parse_iso("yesterday").is_err());
    }

    #[test]
    fn times_past_what_64_bit_nanoseconds_hold_are_refused_not_clamped() {
        let last = Timestamp::parse_iso("2262-04-11T23:47:16.854775807Z").unwrap();
        assert_eq!(last.unix_nanos(), i64::MAX);
        for t in [
            "9999-12-31T23:59:59Z",
            "2262-04-12T00:00:00Z",
            "1000-01-01 00:00:00",
        ] {
            let e = Timestamp::parse_iso(t).unwrap_err();
            assert!(e.to_string().contains("2262-04-11"), "{e}");
        }
    }

    #[test]
    fn nanoseconds_survive_sql_form() {
        let t = Timestamp::from_unix_nanos(1_703_123_456_789_012_345);
        assert_eq!(Timestamp::parse_iso(&t.to_sql()).unwrap(), t);
    }

    #[test]
    fn unix_seconds_json() {
        let t: Timestamp = serde_json::from_str("1703123456.789").unwrap();
        assert_eq!(t.unix_nanos(), 1_703_123_456_789_000_000);
        let t: Timestamp = serde_json::from_str("1703123456").unwrap();
        assert_eq!(t.unix_seconds(), 1_703_123_456);
    }
}
