//! Request and response types of the telemetry query API, and their validation.
//!
//! Validation turns caller strings (filter keys, `order_by`, granularity, label regexes) into
//! closed types, so the store never builds SQL from them.

use serde::{Deserialize, Serialize};

use crate::{AttrValue, Timestamp};

mod lines;
mod list;
mod metrics;
mod usage;

pub use list::{
    DEFAULT_PAGE, ListTracesQuery, ListTracesRequest, MAX_FEED, MAX_PAGE, MODEL_KEYS, SpanFeed,
    SpanFeedQuery, SpanFeedRequest, SqlAnswer, SqlRequest, TraceCursor, TracePage, TraceStatus,
    TraceSummary,
};

pub use lines::{EventLine, SpanLine, TraceDetail};
pub use metrics::{
    MetricDataPoint, MetricLabel, MetricLabelMatcher, MetricLabelOperator, MetricName,
    MetricQueryType, MetricSeries, QueryMetricsRequest, parse_granularity,
};
pub use usage::{
    MAX_LISTED, MAX_SESSIONS, PERCENTILE_SAMPLE, SessionRow, SessionsAnswer, SessionsQuery,
    SessionsRequest, UsageAnswer, UsageGroup, UsageQuery, UsageRequest, UsageRow,
};

/// Longest attribute key accepted in a filter.
pub const MAX_KEY_LEN: usize = 256;

/// Comparison of a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryConditionOp {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Greater than.
    Gt,
    /// Less than.
    Lt,
}

/// One attribute filter: `{key, op, value}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryCondition {
    /// Attribute key, or a span field (`name`, `span_id`, `trace_id`, `parent_span_id`, `status`, `start_time`, `end_time`).
    pub key: String,
    /// Comparison.
    pub op: QueryConditionOp,
    /// Value to compare with.
    pub value: AttrValue,
}

/// A span column a filter can name instead of an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanField {
    /// `name`.
    Name,
    /// `span_id`.
    SpanId,
    /// `trace_id`.
    TraceId,
    /// `parent_span_id`.
    ParentSpanId,
    /// `status`.
    Status,
    /// `start_time`.
    StartTime,
    /// `end_time`.
    EndTime,
}

impl SpanField {
    fn from_key(key: &str) -> Option<Self> {
        Some(match key {
            "name" => SpanField::Name,
            "span_id" => SpanField::SpanId,
            "trace_id" => SpanField::TraceId,
            "parent_span_id" => SpanField::ParentSpanId,
            "status" => SpanField::Status,
            "start_time" => SpanField::StartTime,
            "end_time" => SpanField::EndTime,
            _ => return None,
        })
    }
}

/// What a validated filter compares.
#[derive(Clone, Debug, PartialEq)]
pub enum FilterTarget {
    /// A span column.
    Field(SpanField),
    /// A span attribute, by key.
    Attribute(String),
}

/// A validated filter.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    /// What is compared.
    pub target: FilterTarget,
    /// Comparison.
    pub op: QueryConditionOp,
    /// Value, with timestamps of `start_time`/`end_time` filters already in the stored form.
    pub value: AttrValue,
}

/// A query argument the caller got wrong; the message says what and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidQuery(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, InvalidQuery> {
    Err(InvalidQuery(msg.into()))
}

/// Checks an attribute key named by a caller.
pub fn validate_attribute_key(key: &str) -> Result<(), InvalidQuery> {
    if key.is_empty() {
        return invalid("attribute key must not be empty");
    }
    if key.len() > MAX_KEY_LEN {
        return invalid(format!("attribute key longer than {MAX_KEY_LEN} bytes"));
    }
    if key.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return invalid(format!(
            "attribute key {key:?} must not contain quotes, backslashes or control characters"
        ));
    }
    Ok(())
}

impl QueryCondition {
    /// Validates the key and the value.
    pub fn validate(&self) -> Result<Filter, InvalidQuery> {
        if let Some(field) = SpanField::from_key(&self.key) {
            let value = match (field, &self.value) {
                (SpanField::StartTime | SpanField::EndTime, AttrValue::String(s)) => {
                    match Timestamp::parse_iso(s) {
                        Ok(t) => AttrValue::String(t.to_sql()),
                        Err(e) => return invalid(format!("filter on {}: {e}", self.key)),
                    }
                }
                (
                    SpanField::StartTime | SpanField::EndTime,
                    AttrValue::Int(_) | AttrValue::Float(_),
                ) => {
                    let secs = match self.value {
                        AttrValue::Int(i) => i as f64,
                        AttrValue::Float(f) => f,
                        _ => 0.0,
                    };
                    match Timestamp::from_unix_seconds_f64(secs) {
                        Some(t) => AttrValue::String(t.to_sql()),
                        None => {
                            return invalid(format!(
                                "filter on {}: timestamp out of range",
                                self.key
                            ));
                        }
                    }
                }
                (_, AttrValue::Array(_)) => {
                    return invalid(format!(
                        "filter on {:?}: value must not be an array",
                        self.key
                    ));
                }
                (_, v) => v.clone(),
            };
            return Ok(Filter {
                target: FilterTarget::Field(field),
                op: self.op,
                value,
            });
        }
        validate_attribute_key(&self.key)?;
        if matches!(self.value, AttrValue::Array(_)) {
            return invalid(format!(
                "filter on {:?}: value must not be an array",
                self.key
            ));
        }
        Ok(Filter {
            target: FilterTarget::Attribute(self.key.clone()),
            op: self.op,
            value: self.value.clone(),
        })
    }
}

/// Most filters one query may carry (each becomes a condition of one SQL expression, whose size
/// SQLite bounds).
pub const MAX_FILTERS: usize = 64;

/// Validates a list of filters.
pub fn validate_filters(filters: &[QueryCondition]) -> Result<Vec<Filter>, InvalidQuery> {
    if filters.len() > MAX_FILTERS {
        return invalid(format!(
            "attribute_filters has {} filters; at most {MAX_FILTERS} are allowed",
            filters.len()
        ));
    }
    filters.iter().map(QueryCondition::validate).collect()
}

/// A trace column `order_by` may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceOrderField {
    /// `trace_id`.
    TraceId,
    /// `root_span_id`.
    RootSpanId,
    /// `start_time`.
    StartTime,
    /// `end_time`.
    EndTime,
}

/// One validated `order_by` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceOrder {
    /// Column.
    pub field: TraceOrderField,
    /// Descending (`-` prefix).
    pub descending: bool,
}

/// Parses `order_by` entries such as `start_time` or `-end_time`.
pub fn parse_order_by(entries: &[String]) -> Result<Vec<TraceOrder>, InvalidQuery> {
    entries
        .iter()
        .map(|e| {
            let (descending, name) = match e.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, e.strip_prefix('+').unwrap_or(e)),
            };
            let field = match name {
                "trace_id" => TraceOrderField::TraceId,
                "root_span_id" => TraceOrderField::RootSpanId,
                "start_time" => TraceOrderField::StartTime,
                "end_time" => TraceOrderField::EndTime,
                _ => {
                    return invalid(format!(
                        "order_by {e:?} is not a trace field: use trace_id, root_span_id, start_time or end_time, with a '-' prefix for descending order"
                    ));
                }
            };
            Ok(TraceOrder { field, descending })
        })
        .collect()
}

/// Body of `POST /v1/telemetry/traces`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryTracesRequest {
    /// Traces with a span that matches every filter.
    #[serde(default)]
    pub attribute_filters: Option<Vec<QueryCondition>>,
    /// At most this many (default 100).
    #[serde(default)]
    pub limit: Option<i64>,
    /// Skip this many.
    #[serde(default)]
    pub offset: Option<i64>,
    /// Sort order, e.g. `["-start_time"]` (default newest first).
    #[serde(default)]
    pub order_by: Option<Vec<String>>,
}

/// Largest `limit` a trace query may ask for.
pub const MAX_LIMIT: i64 = 10_000;

/// A validated trace query.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceQuery {
    /// Filters.
    pub filters: Vec<Filter>,
    /// Limit.
    pub limit: i64,
    /// Offset.
    pub offset: i64,
    /// Order.
    pub order: Vec<TraceOrder>,
}

impl QueryTracesRequest {
    /// Validates every argument.
    pub fn validate(&self) -> Result<TraceQuery, InvalidQuery> {
        let limit = self.limit.unwrap_or(100);
        if !(0..=MAX_LIMIT).contains(&limit) {
            return invalid(format!(
                "limit must be between 0 and {MAX_LIMIT}, got {limit}"
            ));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return invalid(format!("offset must not be negative, got {offset}"));
        }
        let mut order = parse_order_by(self.order_by.as_deref().unwrap_or_default())?;
        if order.is_empty() {
            order.push(TraceOrder {
                field: TraceOrderField::StartTime,
                descending: true,
            });
        }
        Ok(TraceQuery {
            filters: validate_filters(self.attribute_filters.as_deref().unwrap_or_default())?,
            limit,
            offset,
            order,
        })
    }
}

/// Checks `max_depth` (absent: unlimited).
pub fn validate_max_depth(max_depth: Option<i64>) -> Result<Option<u32>, InvalidQuery> {
    match max_depth {
        None => Ok(None),
        Some(d) if (0..=10_000).contains(&d) => Ok(Some(d as u32)),
        Some(d) => invalid(format!("max_depth must be between 0 and 10000, got {d}")),
    }
}

/// Checks a list of attribute keys to return or save.
pub fn validate_keys(keys: &[String]) -> Result<(), InvalidQuery> {
    keys.iter().try_for_each(|k| validate_attribute_key(k))
}

/// Body of `POST /v1/telemetry/spans/{span_id}/tree`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetSpanTreeRequest {
    /// Return only these attributes.
    #[serde(default)]
    pub attributes_to_return: Option<Vec<String>>,
    /// Depth below the span (0: the span alone).
    #[serde(default)]
    pub max_depth: Option<i64>,
}

/// Body of `POST /v1/telemetry/spans`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpansRequest {
    /// Spans of traces with a span matching every filter.
    #[serde(default)]
    pub attribute_filters: Vec<QueryCondition>,
    /// Spans that have all these attributes; only these are returned.
    #[serde(default)]
    pub attributes_to_return: Vec<String>,
    /// Depth below each trace's root.
    #[serde(default)]
    pub max_depth: Option<i64>,
}

/// Body of `POST /v1/telemetry/spans/export`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveSpansToDatasetRequest {
    /// As in `query_spans`.
    #[serde(default)]
    pub attribute_filters: Vec<QueryCondition>,
    /// Attributes to keep in each row.
    #[serde(default)]
    pub attributes_to_save: Vec<String>,
    /// Dataset the rows are appended to.
    pub dataset_id: String,
    /// As in `query_spans`.
    #[serde(default)]
    pub max_depth: Option<i64>,
}

/// Checks a dataset id.
pub fn validate_dataset_id(id: &str) -> Result<(), InvalidQuery> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return invalid("dataset_id must be 1 to 256 characters with no control characters");
    }
    Ok(())
}

/// The `{"data": ...}` wrapper the SDK unwraps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Data<T> {
    /// The answer.
    pub data: T,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_is_a_closed_set() {
        let o = parse_order_by(&["-start_time".into(), "trace_id".into()]).unwrap();
        assert_eq!(o[0].field, TraceOrderField::StartTime);
        assert!(o[0].descending);
        assert!(parse_order_by(&["start_time; DROP TABLE spans".into()]).is_err());
    }

    #[test]
    fn filter_keys_are_checked() {
        let c = QueryCondition {
            key: "a\") OR 1=1 --".into(),
            op: QueryConditionOp::Eq,
            value: AttrValue::Int(1),
        };
        assert!(c.validate().is_err());
        let c = QueryCondition {
            key: "gen_ai.request.model".into(),
            op: QueryConditionOp::Eq,
            value: "m".into(),
        };
        assert_eq!(
            c.validate().unwrap().target,
            FilterTarget::Attribute("gen_ai.request.model".into())
        );
    }

    #[test]
    fn negative_limit_is_rejected() {
        let r = QueryTracesRequest {
            limit: Some(-1),
            ..Default::default()
        };
        assert!(r.validate().is_err());
    }
}
