//! The three event types of the Llama Stack telemetry API, serde-compatible with its JSON.

use serde::{Deserialize, Serialize};

use crate::{Attributes, SpanId, Timestamp, TraceId};

/// Severity of an unstructured log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSeverity {
    /// Most detailed.
    Verbose,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// An operation failed.
    Error,
    /// The service is in trouble.
    Critical,
}

impl LogSeverity {
    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogSeverity::Verbose => "verbose",
            LogSeverity::Debug => "debug",
            LogSeverity::Info => "info",
            LogSeverity::Warn => "warn",
            LogSeverity::Error => "error",
            LogSeverity::Critical => "critical",
        }
    }
}

/// How a span ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanStatus {
    /// Completed normally.
    Ok,
    /// Ended with an exception or an error.
    Error,
}

impl SpanStatus {
    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
        }
    }
}

/// A metric value as sent: JSON integers stay integers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricValue {
    /// An integer value.
    Int(i64),
    /// A float value.
    Float(f64),
}

impl MetricValue {
    /// The value as f64.
    pub fn as_f64(self) -> f64 {
        match self {
            MetricValue::Int(i) => i as f64,
            MetricValue::Float(f) => f,
        }
    }
}

/// A free-form log message with a severity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnstructuredLogEvent {
    /// Trace the log belongs to.
    pub trace_id: TraceId,
    /// Span the log belongs to.
    pub span_id: SpanId,
    /// When it happened, as sent.
    pub timestamp: Timestamp,
    /// Extra attributes.
    #[serde(default)]
    pub attributes: Attributes,
    /// The message.
    pub message: String,
    /// Its severity.
    pub severity: LogSeverity,
}

/// A numeric measurement with a unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricEvent {
    /// Trace the measurement belongs to.
    pub trace_id: TraceId,
    /// Span the measurement belongs to.
    pub span_id: SpanId,
    /// When it was taken, as sent.
    pub timestamp: Timestamp,
    /// Labels (for token metrics: `model_id`, `provider_id`).
    #[serde(default)]
    pub attributes: Attributes,
    /// Metric name, e.g. `prompt_tokens`.
    pub metric: String,
    /// The measured value.
    pub value: MetricValue,
    /// Unit, e.g. `tokens`.
    pub unit: String,
}

/// Payload of a structured log: a span starting or ending.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StructuredLogPayload {
    /// A span starts.
    SpanStart(SpanStartPayload),
    /// A span ends.
    SpanEnd(SpanEndPayload),
}

/// A span starts: its name and, when it has one, its parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanStartPayload {
    /// Span name.
    pub name: String,
    /// Parent span in the same trace, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
}

/// A span ends with a status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanEndPayload {
    /// How it ended.
    pub status: SpanStatus,
}

/// A structured event: span start or span end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StructuredLogEvent {
    /// Trace of the span.
    pub trace_id: TraceId,
    /// The span.
    pub span_id: SpanId,
    /// When the span started or ended, as sent.
    pub timestamp: Timestamp,
    /// Span attributes (on start) or attributes added at the end.
    #[serde(default)]
    pub attributes: Attributes,
    /// Start or end.
    pub payload: StructuredLogPayload,
}

/// Any telemetry event, tagged by `type` as on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// `unstructured_log`.
    UnstructuredLog(UnstructuredLogEvent),
    /// `metric`.
    Metric(MetricEvent),
    /// `structured_log`.
    StructuredLog(StructuredLogEvent),
}

impl Event {
    /// The event's trace.
    pub fn trace_id(&self) -> TraceId {
        match self {
            Event::UnstructuredLog(e) => e.trace_id,
            Event::Metric(e) => e.trace_id,
            Event::StructuredLog(e) => e.trace_id,
        }
    }

    /// The event's span.
    pub fn span_id(&self) -> SpanId {
        match self {
            Event::UnstructuredLog(e) => e.span_id,
            Event::Metric(e) => e.span_id,
            Event::StructuredLog(e) => e.span_id,
        }
    }

    /// The event's timestamp.
    pub fn timestamp(&self) -> Timestamp {
        match self {
            Event::UnstructuredLog(e) => e.timestamp,
            Event::Metric(e) => e.timestamp,
            Event::StructuredLog(e) => e.timestamp,
        }
    }
}

/// Body of `POST /v1/telemetry/events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEventRequest {
    /// The event.
    pub event: Event,
    /// How long to keep it, in seconds (Llama Stack's default is 604800, seven days).
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_json_of_each_type() {
        let start = r#"{"type":"structured_log","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","timestamp":"2025-01-31T12:00:00.123456Z","attributes":{"k":"v"},"payload":{"type":"span_start","name":"chat","parent_span_id":"00f067aa0ba902b7"}}"#;
        let ev: Event = serde_json::from_str(start).unwrap();
        match &ev {
            Event::StructuredLog(s) => match &s.payload {
                StructuredLogPayload::SpanStart(p) => {
                    assert_eq!(p.name, "chat");
                    assert_eq!(p.parent_span_id.unwrap().to_string(), "00f067aa0ba902b7");
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert_eq!(serde_json::to_string(&ev).unwrap(), start);

        let end = r#"{"type":"structured_log","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","timestamp":"2025-01-31T12:00:01Z","payload":{"type":"span_end","status":"error"}}"#;
        assert!(matches!(
            serde_json::from_str::<Event>(end).unwrap(),
            Event::StructuredLog(StructuredLogEvent {
                payload: StructuredLogPayload::SpanEnd(SpanEndPayload {
                    status: SpanStatus::Error
                }),
                ..
            })
        ));

        let metric = r#"{"type":"metric","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","timestamp":1703123456.789,"metric":"total_tokens","value":150,"unit":"tokens","attributes":{"model_id":"m","provider_id":"p"}}"#;
        let Event::Metric(m) = serde_json::from_str::<Event>(metric).unwrap() else {
            panic!()
        };
        assert_eq!(m.value, MetricValue::Int(150));

        let log = r#"{"type":"unstructured_log","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","timestamp":"2025-01-31T12:00:00Z","message":"hi","severity":"warn"}"#;
        assert!(matches!(
            serde_json::from_str::<Event>(log).unwrap(),
            Event::UnstructuredLog(UnstructuredLogEvent {
                severity: LogSeverity::Warn,
                ..
            })
        ));
    }

    #[test]
    fn unknown_type_is_an_error() {
        let err = serde_json::from_str::<Event>(r#"{"type":"nope"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }
}
