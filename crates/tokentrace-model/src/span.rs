//! Spans and traces: what the query API returns and what the pipeline stores and exports.

use serde::{Deserialize, Serialize};

use crate::{Attributes, LogSeverity, MetricValue, SpanId, SpanStatus, Timestamp, TraceId};

/// A span as the query API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// The span's id.
    pub span_id: SpanId,
    /// Its trace.
    pub trace_id: TraceId,
    /// Its parent, if any.
    pub parent_span_id: Option<SpanId>,
    /// Operation name.
    pub name: String,
    /// Start time.
    pub start_time: Timestamp,
    /// End time; `null` for a span that never ended.
    pub end_time: Option<Timestamp>,
    /// Attributes (only the requested ones when the query names some).
    pub attributes: Attributes,
}

/// A span with its status, as in span trees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanWithStatus {
    /// The span.
    #[serde(flatten)]
    pub span: Span,
    /// `ok` or `error`; `null` for a span that never ended.
    pub status: Option<SpanStatus>,
}

/// A trace as the query API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The trace's id.
    pub trace_id: TraceId,
    /// Its root span: the span without a parent, or, until that arrives, the earliest span whose
    /// parent is not stored.
    pub root_span_id: SpanId,
    /// Start of the earliest span.
    pub start_time: Timestamp,
    /// End of the latest span.
    pub end_time: Option<Timestamp>,
}

/// OpenTelemetry span kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// An internal operation (the default).
    #[default]
    Internal,
    /// Handling of a remote request.
    Server,
    /// A request to a remote service.
    Client,
    /// Sending a message.
    Producer,
    /// Receiving a message.
    Consumer,
}

impl SpanKind {
    /// The lowercase name stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }

    /// Parses the stored name; unknown names are `internal`.
    pub fn from_name(s: &str) -> Self {
        match s {
            "server" => SpanKind::Server,
            "client" => SpanKind::Client,
            "producer" => SpanKind::Producer,
            "consumer" => SpanKind::Consumer,
            _ => SpanKind::Internal,
        }
    }
}

/// A link from a span to another span (OpenTelemetry links).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanLink {
    /// Linked trace.
    pub trace_id: TraceId,
    /// Linked span.
    pub span_id: SpanId,
    /// Link attributes.
    #[serde(default)]
    pub attributes: Attributes,
}

/// What an event attached to a span says.
#[derive(Clone, Debug, PartialEq)]
pub enum SpanEventBody {
    /// An unstructured log.
    Log {
        /// Severity.
        severity: LogSeverity,
        /// Message.
        message: String,
    },
    /// A metric event.
    Metric {
        /// Metric value.
        value: MetricValue,
        /// Unit.
        unit: String,
    },
    /// Any other named event (OpenTelemetry span events).
    Other,
}

/// A log, metric or OpenTelemetry event that belongs to a span (or to no span at all).
#[derive(Clone, Debug, PartialEq)]
pub struct SpanEvent {
    /// Trace, when known.
    pub trace_id: Option<TraceId>,
    /// Span, when known.
    pub span_id: Option<SpanId>,
    /// When it happened, as sent.
    pub timestamp: Timestamp,
    /// Event name: `log` for logs, the metric name for metrics, the OpenTelemetry event name otherwise.
    pub name: String,
    /// What it says.
    pub body: SpanEventBody,
    /// Its attributes.
    pub attributes: Attributes,
    /// When it may be deleted; `None` keeps it.
    pub expires_at: Option<Timestamp>,
}

/// A finished span (or one flushed unfinished) with everything the sinks need.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    /// Trace.
    pub trace_id: TraceId,
    /// Span.
    pub span_id: SpanId,
    /// Parent span, if any.
    pub parent_span_id: Option<SpanId>,
    /// Operation name.
    pub name: String,
    /// Span kind.
    pub kind: SpanKind,
    /// Start time, as sent.
    pub start_time: Timestamp,
    /// End time, as sent; `None` if the span never ended.
    pub end_time: Option<Timestamp>,
    /// Status; `None` if unset or never ended.
    pub status: Option<SpanStatus>,
    /// Status message (errors).
    pub status_message: Option<String>,
    /// Span attributes.
    pub attributes: Attributes,
    /// Events recorded while the span was open.
    pub events: Vec<SpanEvent>,
    /// Links to other spans.
    pub links: Vec<SpanLink>,
    /// The emitting service (`service.name`).
    pub service_name: Option<String>,
    /// When it may be deleted; `None` keeps it.
    pub expires_at: Option<Timestamp>,
}

impl SpanRecord {
    /// Duration in milliseconds, if the span ended.
    pub fn duration_ms(&self) -> Option<f64> {
        self.end_time
            .map(|end| (end.unix_nanos() - self.start_time.unix_nanos()) as f64 / 1e6)
    }
}

/// One metric data point, as stored in the `metrics` table.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricPoint {
    /// Metric name, e.g. `total_tokens`.
    pub name: String,
    /// When it was measured.
    pub timestamp: Timestamp,
    /// The value.
    pub value: f64,
    /// Unit.
    pub unit: String,
    /// Labels.
    pub labels: Attributes,
    /// Trace it was measured in, if any.
    pub trace_id: Option<TraceId>,
    /// Span it was measured in, if any.
    pub span_id: Option<SpanId>,
    /// When it may be deleted; `None` keeps it.
    pub expires_at: Option<Timestamp>,
}
