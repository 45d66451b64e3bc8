//! The trace list: a line per trace (root name, service, models, tokens, status), newest first,
//! paged by a cursor. The CLI's `tokentrace traces` and the web UI read it; it is tokentrace's
//! own (`POST /v1/tokentrace/traces`), not part of the Llama Stack API.

use serde::{Deserialize, Serialize};

use super::{Filter, FilterTarget, InvalidQuery, QueryCondition, QueryConditionOp, SpanField};
use crate::{AttrValue, SpanId, Timestamp, TraceId};

/// Traces one page holds when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 50;
/// Most traces one page may hold.
pub const MAX_PAGE: usize = 1_000;

/// Body of `POST /v1/tokentrace/traces`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListTracesRequest {
    /// Traces that started at or after this time (ISO 8601).
    #[serde(default)]
    pub since: Option<String>,
    /// Traces that started before this time (ISO 8601).
    #[serde(default)]
    pub until: Option<String>,
    /// Traces of this service (`service.name` of their spans' resource).
    #[serde(default)]
    pub service: Option<String>,
    /// Traces with a span whose `gen_ai.request.model`, `gen_ai.response.model` or `model_id`
    /// is this.
    #[serde(default)]
    pub model: Option<String>,
    /// Only traces with a span whose status is `error`.
    #[serde(default)]
    pub errors_only: bool,
    /// Each filter must be matched by some span of the trace (not necessarily the same one).
    #[serde(default)]
    pub filters: Vec<QueryCondition>,
    /// At most this many traces (default 50, at most 1,000).
    #[serde(default)]
    pub limit: Option<i64>,
    /// The `next` of the previous page: the traces that come after it.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Where a page ends: the start time and store key of its last trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceCursor {
    /// Start of the last trace, unix nanoseconds.
    pub start_ns: i64,
    /// Its key in the store.
    pub key: i64,
}

impl TraceCursor {
    /// The text form given to callers as `next`.
    pub fn encode(self) -> String {
        format!("{}.{}", self.start_ns, self.key)
    }

    /// Parses [`TraceCursor::encode`]'s form.
    pub fn decode(s: &str) -> Result<Self, InvalidQuery> {
        let bad = || InvalidQuery(format!("cursor {s:?} is not a `next` value of this API"));
        let (start, key) = s.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            start_ns: start.parse().map_err(|_| bad())?,
            key: key.parse().map_err(|_| bad())?,
        })
    }
}

/// A validated [`ListTracesRequest`].
#[derive(Clone, Debug, PartialEq)]
pub struct ListTracesQuery {
    /// Start at or after.
    pub since: Option<Timestamp>,
    /// Start before.
    pub until: Option<Timestamp>,
    /// Service.
    pub service: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Filters, each matched by some span (`errors_only` is one on `status`).
    pub filters: Vec<Filter>,
    /// Page size.
    pub limit: usize,
    /// Continue after.
    pub cursor: Option<TraceCursor>,
}

/// The attribute keys a span names its model by, in order of preference.
pub const MODEL_KEYS: [&str; 3] = ["gen_ai.response.model", "gen_ai.request.model", "model_id"];

fn time(name: &str, v: &Option<String>) -> Result<Option<Timestamp>, InvalidQuery> {
    v.as_deref()
        .map(|s| Timestamp::parse_iso(s).map_err(|e| InvalidQuery(format!("{name}: {e}"))))
        .transpose()
}

fn name(what: &str, v: &Option<String>) -> Result<Option<String>, InvalidQuery> {
    match v {
        Some(s) if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) => {
            Err(InvalidQuery(format!(
                "{what} must be 1 to 256 characters with no control characters"
            )))
        }
        other => Ok(other.clone()),
    }
}

impl ListTracesRequest {
    /// Validates every argument.
    pub fn validate(&self) -> Result<ListTracesQuery, InvalidQuery> {
        let limit = match self.limit {
            None => DEFAULT_PAGE,
            Some(l) if (1..=MAX_PAGE as i64).contains(&l) => l as usize,
            Some(l) => {
                return Err(InvalidQuery(format!(
                    "limit must be between 1 and {MAX_PAGE}, got {l}"
                )));
            }
        };
        let mut filters = super::validate_filters(&self.filters)?;
        if self.errors_only {
            filters.push(Filter {
                target: FilterTarget::Field(SpanField::Status),
                op: QueryConditionOp::Eq,
                value: AttrValue::String("error".into()),
            });
        }
        Ok(ListTracesQuery {
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            service: name("service", &self.service)?,
            model: name("model", &self.model)?,
            filters,
            limit,
            cursor: self
                .cursor
                .as_deref()
                .map(TraceCursor::decode)
                .transpose()?,
        })
    }
}

/// A trace's overall state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceStatus {
    /// Every span that has a status is `ok`.
    Ok,
    /// Some span's status is `error`.
    Error,
    /// The root span has not ended (or has not arrived).
    Open,
}

impl TraceStatus {
    /// `ok`, `error`, `open`.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceStatus::Ok => "ok",
            TraceStatus::Error => "error",
            TraceStatus::Open => "open",
        }
    }
}

/// One line of the trace list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    /// The trace.
    pub trace_id: TraceId,
    /// Its root span.
    pub root_span_id: SpanId,
    /// The root span's name, once it is stored.
    pub root_name: Option<String>,
    /// Service of the trace's spans, when they name one.
    pub service_name: Option<String>,
    /// Start of the earliest span.
    pub start_time: Timestamp,
    /// End of the latest span.
    pub end_time: Option<Timestamp>,
    /// `end_time - start_time` in milliseconds.
    pub duration_ms: Option<f64>,
    /// Spans stored.
    pub spans: u64,
    /// Spans whose status is `error`.
    pub errors: u64,
    /// Models its spans name ([`MODEL_KEYS`]), sorted.
    pub models: Vec<String>,
    /// Input tokens: `gen_ai.usage.input_tokens` summed over spans, or the trace's
    /// `prompt_tokens` metric events when no span has it.
    pub input_tokens: Option<i64>,
    /// Output tokens, likewise (`gen_ai.usage.output_tokens`, `completion_tokens`).
    pub output_tokens: Option<i64>,
    /// `user.id` (or `user_id`, `enduser.id`) of a span.
    pub user: Option<String>,
    /// `session.id` (or `session_id`, `gen_ai.conversation.id`) of a span.
    pub session: Option<String>,
    /// Overall state.
    pub status: TraceStatus,
}

/// Answer of `POST /v1/tokentrace/traces`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TracePage {
    /// Newest first.
    pub data: Vec<TraceSummary>,
    /// Give as `cursor` for the next page; `null` on the last.
    pub next: Option<String>,
}

/// Body of `POST /v1/tokentrace/spans/feed`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanFeedRequest {
    /// The `next` of the previous answer; absent: only the newest position (no spans).
    #[serde(default)]
    pub after: Option<i64>,
    /// At most this many spans (default and most: 1,000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only spans of this service.
    #[serde(default)]
    pub service: Option<String>,
    /// Only spans matching every filter.
    #[serde(default)]
    pub filters: Vec<QueryCondition>,
}

/// A validated [`SpanFeedRequest`].
#[derive(Clone, Debug, PartialEq)]
pub struct SpanFeedQuery {
    /// Continue after.
    pub after: Option<i64>,
    /// At most.
    pub limit: usize,
    /// Service.
    pub service: Option<String>,
    /// Filters, all on the span.
    pub filters: Vec<Filter>,
}

/// Most spans one feed answer holds.
pub const MAX_FEED: usize = 1_000;

impl SpanFeedRequest {
    /// Validates every argument.
    pub fn validate(&self) -> Result<SpanFeedQuery, InvalidQuery> {
        Ok(SpanFeedQuery {
            after: self.after.map(|a| a.max(0)),
            limit: self.limit.unwrap_or(MAX_FEED).clamp(1, MAX_FEED),
            service: name("service", &self.service)?,
            filters: super::validate_filters(&self.filters)?,
        })
    }
}

/// Answer of `POST /v1/tokentrace/spans/feed`: spans in the order they were stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanFeed {
    /// Spans stored after the `after` of the request, oldest first.
    pub data: Vec<crate::SpanWithStatus>,
    /// Give as `after` to get the spans stored later.
    pub next: i64,
}

/// Body of `POST /v1/tokentrace/sql`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One read-only statement.
    pub sql: String,
}

/// Answer of a read-only SQL statement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SqlAnswer {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; blobs (ids) as lowercase hex text.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Whether rows were left out past the answer limit.
    pub truncated: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_other_text() {
        let c = TraceCursor {
            start_ns: 1_700_000_000_000_000_000,
            key: 42,
        };
        assert_eq!(TraceCursor::decode(&c.encode()).unwrap(), c);
        assert!(TraceCursor::decode("42").is_err());
        assert!(TraceCursor::decode("a.b").is_err());
    }

    #[test]
    fn errors_only_is_a_status_filter_and_limits_are_checked() {
        let q = ListTracesRequest {
            errors_only: true,
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(q.limit, DEFAULT_PAGE);
        assert_eq!(q.filters[0].target, FilterTarget::Field(SpanField::Status));
        for limit in [0, MAX_PAGE as i64 + 1] {
            let r = ListTracesRequest {
                limit: Some(limit),
                ..Default::default()
            };
            assert!(r.validate().is_err());
        }
        let r = ListTracesRequest {
            since: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(r.validate().unwrap_err().0.starts_with("since:"));
    }
}
