//! tokentrace's data model: events, spans, traces, ids, W3C trace context and the query types.
//! Pure data, no I/O.

mod attributes;
mod event;
mod ids;
mod project;
pub mod query;
mod recent;
mod span;
mod time;
mod traceparent;

pub use attributes::{AttrValue, Attributes};
pub use event::{
    Event, LogEventRequest, LogSeverity, MetricEvent, MetricValue, SpanEndPayload,
    SpanStartPayload, SpanStatus, StructuredLogEvent, StructuredLogPayload, UnstructuredLogEvent,
};
pub use ids::{IdError, SpanId, TraceId};
pub use project::{
    DEFAULT_PROJECT, MAX_PROJECT_LEN, PROJECT_ATTRIBUTE, project_of, stamp_event, stamp_project,
    stamp_span, validate_project,
};
pub use recent::RecentKeys;
pub use span::{
    MetricPoint, Span, SpanEvent, SpanEventBody, SpanKind, SpanLink, SpanRecord, SpanWithStatus,
    Trace,
};
pub use time::{Timestamp, TimestampError};
pub use traceparent::{TraceParent, TraceParentError};
