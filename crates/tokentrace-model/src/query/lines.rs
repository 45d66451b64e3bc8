//! A span as one JSON object with its events and links: a line of `tokentrace export --format
//! jsonl`, and the spans of `GET /v1/tokentrace/traces/{trace_id}` (the web UI's trace page).
//! Times are RFC 3339 with nanoseconds.

use serde::{Deserialize, Serialize};

use crate::{
    Attributes, LogSeverity, MetricValue, SpanEvent, SpanEventBody, SpanId, SpanKind, SpanLink,
    SpanRecord, SpanStatus, Timestamp, Trace, TraceId,
};

/// Answer of `GET /v1/tokentrace/traces/{trace_id}`: the trace and every span, in full.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceDetail {
    /// The trace.
    pub trace: Trace,
    /// Its spans by start time, each with kind, status message, links and events.
    pub spans: Vec<SpanLine>,
}

/// A span with everything stored of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanLine {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start_time: String,
    pub end_time: Option<String>,
    pub status: Option<SpanStatus>,
    pub status_message: Option<String>,
    pub service_name: Option<String>,
    pub attributes: Attributes,
    #[serde(default)]
    pub links: Vec<SpanLink>,
    #[serde(default)]
    pub events: Vec<EventLine>,
}

/// An event of a [`SpanLine`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLine {
    pub timestamp: String,
    pub name: String,
    /// `log`, `metric` or `event`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<LogSeverity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default)]
    pub attributes: Attributes,
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse_iso(s).map_err(|e| e.to_string())
}

impl SpanLine {
    /// The line of a span.
    pub fn from_record(s: &SpanRecord) -> Self {
        let events = s
            .events
            .iter()
            .map(|e| {
                let mut line = EventLine {
                    timestamp: Timestamp::to_iso_nanos(e.timestamp),
                    name: e.name.clone(),
                    kind: "event".into(),
                    severity: None,
                    message: None,
                    value: None,
                    unit: None,
                    attributes: e.attributes.clone(),
                };
                match &e.body {
                    SpanEventBody::Log { severity, message } => {
                        line.kind = "log".into();
                        line.severity = Some(*severity);
                        line.message = Some(message.clone());
                    }
                    SpanEventBody::Metric { value, unit } => {
                        line.kind = "metric".into();
                        line.value = Some(value.as_f64());
                        line.unit = Some(unit.clone());
                    }
                    SpanEventBody::Other => {}
                }
                line
            })
            .collect();
        Self {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            name: s.name.clone(),
            kind: s.kind,
            start_time: Timestamp::to_iso_nanos(s.start_time),
            end_time: s.end_time.map(Timestamp::to_iso_nanos),
            status: s.status,
            status_message: s.status_message.clone(),
            service_name: s.service_name.clone(),
            attributes: s.attributes.clone(),
            links: s.links.clone(),
            events,
        }
    }

    /// The span of a line; the message says what is wrong.
    pub fn into_record(self) -> Result<SpanRecord, String> {
        let events = self
            .events
            .into_iter()
            .map(|e| {
                let body = match e.kind.as_str() {
                    "log" => SpanEventBody::Log {
                        severity: e.severity.unwrap_or(LogSeverity::Info),
                        message: e.message.unwrap_or_default(),
                    },
                    "metric" => {
                        let v = e.value.ok_or("a metric event needs a value")?;
                        SpanEventBody::Metric {
                            value: if v.fract() == 0.0 && v.abs() < 9.0e15 {
                                MetricValue::Int(v as i64)
                            } else {
                                MetricValue::Float(v)
                            },
                            unit: e.unit.unwrap_or_default(),
                        }
                    }
                    "event" => SpanEventBody::Other,
                    other => {
                        return Err(format!(
                            "event kind {other:?}: expected log, metric or event"
                        ));
                    }
                };
                Ok(SpanEvent {
                    trace_id: Some(self.trace_id),
                    span_id: Some(self.span_id),
                    timestamp: parse_time(&e.timestamp)?,
                    name: e.name,
                    body,
                    attributes: e.attributes,
                    expires_at: None,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            name: self.name,
            kind: self.kind,
            start_time: parse_time(&self.start_time)?,
            end_time: self.end_time.as_deref().map(parse_time).transpose()?,
            status: self.status,
            status_message: self.status_message,
            attributes: self.attributes,
            events,
            links: self.links,
            service_name: self.service_name,
            expires_at: None,
        })
    }
}
