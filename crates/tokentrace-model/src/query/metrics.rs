//! `query_metrics`: its request (time range, granularity, label matchers) and its answer.

use serde::{Deserialize, Serialize};

use super::InvalidQuery;

/// `range` (a series over time) or `instant` (one value per series).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricQueryType {
    /// A series of points over time.
    Range,
    /// One point per series for the whole window.
    Instant,
}

/// Label matcher operator, as in PromQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricLabelOperator {
    /// `=`.
    #[serde(rename = "=")]
    Equals,
    /// `!=`.
    #[serde(rename = "!=")]
    NotEquals,
    /// `=~` (fully anchored regex).
    #[serde(rename = "=~")]
    RegexMatch,
    /// `!~` (fully anchored regex).
    #[serde(rename = "!~")]
    RegexNotMatch,
}

/// One label matcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricLabelMatcher {
    /// Label name.
    pub name: String,
    /// Value or regex.
    pub value: String,
    /// Operator (default `=`).
    #[serde(default = "default_operator")]
    pub operator: MetricLabelOperator,
}

fn default_operator() -> MetricLabelOperator {
    MetricLabelOperator::Equals
}

/// Body of `POST /v1/telemetry/metrics/{metric_name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryMetricsRequest {
    /// Window start, unix seconds.
    pub start_time: i64,
    /// Window end, unix seconds (default now).
    #[serde(default)]
    pub end_time: Option<i64>,
    /// Bucket size for range queries: `<n>s`, `<n>m` (minutes), `<n>h`, `<n>d`, `<n>w`.
    #[serde(default)]
    pub granularity: Option<String>,
    /// Range or instant.
    #[serde(default = "default_query_type")]
    pub query_type: MetricQueryType,
    /// Label matchers (all must match).
    #[serde(default)]
    pub label_matchers: Option<Vec<MetricLabelMatcher>>,
}

fn default_query_type() -> MetricQueryType {
    MetricQueryType::Range
}

/// Parses a granularity such as `1m`, `5m`, `1h` or `1d` into seconds.
pub fn parse_granularity(g: &str) -> Result<i64, InvalidQuery> {
    let g = g.trim();
    let bad = || {
        InvalidQuery(format!(
            "granularity {g:?} must be a positive number followed by s, m (minutes), h, d or w, e.g. \"5m\""
        ))
    };
    let split = g.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = g.split_at(split);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    if n <= 0 {
        return Err(bad());
    }
    n.checked_mul(unit_secs).ok_or_else(bad)
}

/// A label of a metric series.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MetricLabel {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// One point of a series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricDataPoint {
    /// Unix seconds (bucket start for range queries with a granularity).
    pub timestamp: i64,
    /// Value (sum over the bucket).
    pub value: f64,
    /// Unit.
    pub unit: String,
}

/// A metric the store holds (`GET /v1/tokentrace/metrics`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricName {
    /// Name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// Label sets (series) seen.
    pub series: u64,
}

/// One series: a metric with one label set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSeries {
    /// Metric name.
    pub metric: String,
    /// Labels, sorted by name.
    pub labels: Vec<MetricLabel>,
    /// Points, oldest first.
    pub values: Vec<MetricDataPoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granularity_minutes_are_minutes() {
        assert_eq!(parse_granularity("1m").unwrap(), 60);
        assert_eq!(parse_granularity("5m").unwrap(), 300);
        assert_eq!(parse_granularity("1h").unwrap(), 3600);
        assert_eq!(parse_granularity("1d").unwrap(), 86400);
        for bad in ["", "m", "0m", "5", "5y", "-1m", "99999999999999999999d"] {
            assert!(parse_granularity(bad).is_err(), "{bad}");
        }
    }
}
